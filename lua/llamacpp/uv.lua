--- llamacpp.uv: drive a client or a router from a libuv loop (Neovim's
-- vim.uv, the older vim.loop, or standalone luv), never blocking it.
--
--   local luv = require "llamacpp.uv"
--   local h = luv.chat_stream(client, { messages = msgs }, function(ev) ... end)
--   h:cancel()
--   luv.router_stream(router, { messages = msgs }, function(ev) ... end)
--
-- The loop watches the sockets libcurl asks for (uv poll handles) and one
-- timer set to the moment libcurl or a timeout next needs attention: no
-- fixed polling tick, and nothing at all while no transfer runs.
-- Callbacks run on the loop's thread. One that raises is reported (to
-- opts.on_error, else stderr / vim.notify) and its request is cancelled;
-- the loop and the other requests go on.
-- @module llamacpp.uv
local client_mod = require "llamacpp.client"
local args = require "llamacpp.args"

local M = {}
local callable = args.callable

-- The loop: opts.uv, else vim.uv / vim.loop, else luv.
local function loop_of(opts)
  if opts and opts.uv then return opts.uv end
  local vim = rawget(_G, "vim")
  if type(vim) == "table" then
    local uv = vim.uv or vim.loop
    if uv then return uv end
  end
  local ok, luv = pcall(require, "luv")
  if ok then return luv end
  args.raise("llamacpp.uv needs vim.uv, vim.loop or the luv module")
end

local function report(h, msg)
  if h.on_error then
    local ok = pcall(h.on_error, msg)
    if ok then return end
  end
  local vim = rawget(_G, "vim")
  if type(vim) == "table" and vim.schedule and vim.notify then
    vim.schedule(function() vim.notify("llamacpp: " .. msg, vim.log.levels.ERROR) end)
  else
    io.stderr:write("llamacpp.uv: ", msg, "\n")
  end
end

local traceback = debug.traceback

-- xpcall(f, handler, ...): PUC Lua 5.1's xpcall passes f no arguments
-- (LuaJIT's and 5.2+'s do); there, a closure carries them.
local xpcall_args = xpcall
if not select(2, xpcall(function(a) return a end, traceback, true)) then
  local unpack = rawget(table, "unpack") or rawget(_G, "unpack")
  xpcall_args = function(f, handler, ...)
    local packed = { n = select("#", ...), ... }
    return xpcall(function() return f(unpack(packed, 1, packed.n)) end, handler)
  end
end

-- One driver per (client, loop): the client's libcurl multi handle is
-- served by this loop.
local drivers = setmetatable({}, { __mode = "k" })

local Driver = {}
Driver.__index = Driver

local function driver(client, uv)
  local by_loop = drivers[client]
  if not by_loop then
    by_loop = {}
    drivers[client] = by_loop
  end
  local d = by_loop[uv]
  if d then return d end
  d = setmetatable({ client = client, session = client.session, uv = uv,
                     polls = {}, serials = {}, active = {}, nactive = 0,
                     timer = nil, idle = true }, Driver)
  d.epfd = d.session:fd()
  if d.epfd then d.epoll = uv.new_poll(d.epfd) end
  -- in Neovim (whose loop this is: it runs no other): a backlog waits for
  -- a turn of its main loop (Driver:gate)
  local vim = rawget(_G, "vim")
  if type(vim) == "table" and type(vim.schedule) == "function" and type(vim.api) == "table" then
    d.defer = function(f) return vim.schedule(f) end
  end
  by_loop[uv] = d
  return d
end

local now = require("llamacpp.core").now
local take = client_mod.take
local leave = client_mod.leave

-- How long one loop turn may spend handing out events before it lets the
-- editor run (keys, redraws, other timers); the rest comes next turn.
local BUDGET_MS = 2

-- Watch what libcurl wants watched; arm the timer for what is due next.
-- With no request in flight nothing is watched (idle keep-alive sockets
-- included), so a standalone loop can end and an editor's costs nothing.
function Driver:sync()
  local uv = self.uv
  if self.nactive == 0 or self.gated then
    if not self.idle then
      if self.epoll then self.epoll:stop() end
      for _, p in pairs(self.polls) do p:stop() end
      if self.timer then self.timer:stop() end
      if self.soon then self.soon:stop() end
      self.idle = true
    end
    return
  end
  if self.epfd then
    -- one watch for the whole session: its epoll set (Linux)
    if self.idle then
      self.epoll:start("r", function() self:act(nil, nil, true) end)
    end
  else
    self:sync_sockets()
  end
  self.idle = false
  local ms = self.more and 0 or self.session:timeout()
  local due = client_mod.due(self.client)      -- a cut stream's reattach
  if due and (not ms or due < ms) then ms = due end
  if not self.timer then self.timer = uv.new_timer() end
  self.timer:stop()
  if ms and ms <= 0 then
    -- due now: on the next loop turn (an idle handle), not in this one:
    -- libuv before 1.45 runs a 0 ms timer started in a timer callback
    -- again in the same pass, starving everything else
    if not self.soon then self.soon = uv.new_idle() end
    self.soon:start(function()
      self.soon:stop()
      self:act(nil)
    end)
  elseif ms then
    self.timer:start(math.ceil(ms), 0, function() self:act(nil) end)
  end
end

-- Without an epoll set: one uv poll per socket libcurl uses.
function Driver:sync_sockets()
  local uv = self.uv
  local socks, serials = self.session:sockets(self.idle)
  if not socks then return end
  for fd, p in pairs(self.polls) do
    if socks[fd] == nil or serials[fd] ~= self.serials[fd] then
      p:stop()
      p:close()
      self.polls[fd], self.serials[fd] = nil, nil
    end
  end
  for fd, ev in pairs(socks) do
    local p = self.polls[fd]
    if not p then
      p = (uv.new_socket_poll or uv.new_poll)(fd)
      self.polls[fd], self.serials[fd] = p, serials[fd]
    end
    p:start(ev, function(err, events)
      self:act(fd, err and "e" or events, true)
    end)
  end
end

-- A socket is ready (fd), or the session's epoll set or the timer (nil):
-- let libcurl work, hand out the events, and watch again.
function Driver:act(fd, events, readable)
  self.session:act(fd, events)
  self:dispatch()
  if (self.more or readable) and self.defer and not self.gated then self:gate() end
  self:sync()
end

-- In Neovim, after the sockets were read (or a backlog's budget spent):
-- nothing is watched until its main loop has had a turn (vim.schedule),
-- then all is watched again (the callbacks stay in libuv's callbacks).
-- Neovim runs libuv passes of its own inside long work (os_breakcheck()
-- in a syntax redraw): without this each of them read the sockets and
-- handed out another turn of events, and the main loop's queue
-- (vim.schedule'd callbacks: the plugins' buffer writes) waited for the
-- whole of a burst. Between two reads the main loop turns at least once.
function Driver:gate()
  self.gated = true
  self.defer(function()
    self.gated = false
    self:sync()
  end)
end

function Driver:dispatch()
  local list = {}
  for h in pairs(self.active) do list[#list + 1] = h end
  local deadline = now() + BUDGET_MS
  self.more = false
  for i = 1, #list do
    local h = list[i]
    if self.active[h] and h:pump(deadline) then self.more = true end
  end
end

function Driver:add(h)
  self.active[h] = true
  self.nactive = self.nactive + 1
end

function Driver:remove(h)
  if self.active[h] then
    self.active[h] = nil
    self.nactive = self.nactive - 1
  end
end


--- A request in flight on a loop.
local Handle = {}
Handle.__index = Handle
Handle.__name = "llamacpp.uv.Handle"

-- Calls the user's callback; an error in it is reported and ends this
-- request (h), never the loop.
local function call(h, f, ...)
  local ok, err = xpcall_args(f, traceback, ...)
  if not ok then
    report(h, "callback failed: " .. tostring(err))
    h:cancel()
  end
  return ok
end
Handle.call = call

function Handle:finish()
  self.finished = true
  self.driver:remove(self)
end

-- Stream: hand out the events that are ready, until the turn's deadline;
-- true when some were left for the next turn.
local function pump_stream(h, deadline)
  local n = 0
  while not h.finished do
    local ev = take(h.stream)
    if not ev then
      if ev == nil then h:finish() end
      return false
    end
    local last = ev.type == "done" or ev.type == "error"
    if last then h:finish() end
    if not h:call(h.on_event, ev) then return false end
    n = n + 1
    if n % 16 == 0 and now() > deadline then return not h.finished end
  end
  return false
end

-- Whole answer: when the transfer has ended, decode and call back once.
local function pump_whole(h)
  local t = h.t
  local more, err = t:take()
  if more == false then return end
  while more do more, err = t:take() end     -- a whole answer has no events
  h:finish()
  local res, e = h.complete(t, err)
  h:call(h.on_done, res, e)
end

local start

--- A resumable stream's offset (Stream:offset): the body bytes of the
-- events handed to on_event so far; with `h.conversation_id`, what
-- resume_stream needs to go on after them. nil for other requests.
function Handle:offset()
  return self.stream and self.stream:offset()
end

--- Cancels the request: the transfer is aborted (the server sees the
-- disconnect) and no callback is called any more. Idempotent.
function Handle:cancel()
  if self.cancelled then return end
  self.cancelled = true
  local was_active = not self.finished
  self:finish()
  if self.stream then
    -- a resumable generation goes on without its reader: cancel it, on the loop
    local path = leave(self.stream)
    if path then
      local c = self.driver.client
      start(c, self.driver.uv, nil, { t = client_mod.begin(c, "DELETE", path), pump = pump_whole,
                                      complete = function(t) t:close() end, on_done = function() end })
    end
  end
  if self.t then self.t:close() end
  if was_active then self.driver:sync() end
end

--- Leaves a resumable stream without cancelling it (Stream:detach): no
-- callback is called any more, the connection is closed, and the
-- generation goes on on the server, for resume_stream(client, id,
-- {from = offset}) here or in another process. Other requests are
-- cancelled. Returns the id and offset, or nil when there is nothing to
-- resume.
function Handle:detach()
  if self.cancelled then return nil end
  local s = self.stream
  local id, at = s and s.conversation_id, s and s:offset()
  if not (id and not self.finished and leave(s)) then
    self:cancel()
    return nil
  end
  self.stream = nil                      -- left: cancel() sends no DELETE
  self:cancel()
  return id, at
end

function start(client, uv, opts, h)
  h.driver = driver(client, uv)
  h.on_error = opts and opts.on_error        -- this request's, not the loop's
  setmetatable(h, Handle)
  h.driver:add(h)
  -- libcurl wants its timer at once to start the transfer: callbacks
  -- come from the loop, never from inside this call
  h.driver:sync()
  return h
end

-- A request whose answer is read whole: on_done(res) or on_done(nil, err),
-- as the client's requests give them (client.begin / client.complete).
local function whole(client, uv, method, path, body, raw, parse, on_done, opts, extra)
  local t = client_mod.begin(client, method, path, body, extra)
  local function complete(tt, err) return client_mod.complete(client, tt, err, raw, parse) end
  return start(client, uv, opts, { t = t, on_done = on_done,
                                   complete = complete, pump = pump_whole })
end

-- Calls f from the loop in ms milliseconds, on h's timer (h.uv's);
-- drop_timer(h) takes it back.
local function later(h, ms, f)
  local t = h.uv.new_timer()
  h.timer = t
  t:start(ms, 0, function()
    t:close()
    if h.timer == t then h.timer = nil end
    f()
  end)
end

local function drop_timer(h)
  local t = h.timer
  if t then
    h.timer = nil
    t:stop()
    t:close()
  end
end

-- Cancels a handle made of other handles (Call, Routed): the current
-- request and the pending timer. True the first time.
local function abort(h)
  if h.cancelled then return false end
  h.cancelled = true
  if h.cur then h.cur:cancel() end
  h.cur = nil
  drop_timer(h)
  return true
end


-- {====== the other endpoints ======

local unpack = rawget(table, "unpack") or rawget(_G, "unpack")
local function pack(...) return { n = select("#", ...), ... } end

--- A call of a client method on the loop.
local Call = {}
Call.__index = Call
Call.__name = "llamacpp.uv.CallHandle"
Call.call = call

--- Cancels the call: its request is aborted (or its wait dropped) and
-- on_done is not called. Idempotent.
function Call:cancel() abort(self) end

-- The io of a method's steps run in a coroutine (client.steps): what it
-- would wait for is yielded to run_method, which does it on the loop and
-- resumes the coroutine with the answer.
local loop_io = {
  request = function(...) return coroutine.yield("request", ...) end,
  sleep = function(ms) return coroutine.yield("sleep", ms) end,
}

-- Runs the steps of client method `name` in a coroutine on the loop;
-- on_done gets what they return. The handle, or nil and the message of
-- what the steps raised at once (bad arguments).
local function run_method(client, name, args_, on_done, uv, on_error)
  local h = setmetatable({ uv = uv, on_error = on_error, cancelled = false }, Call)
  local wopts = { uv = uv, on_error = on_error }
  local n = args_ and (args_.n or #args_) or 0
  local steps = client_mod.steps[name]
  local co = coroutine.create(function()
    return pack(steps(loop_io, client, unpack(args_ or {}, 1, n)))
  end)
  local starting = true
  local resume
  local function finish(r)
    local function deliver() if not h.cancelled then h:call(on_done, unpack(r, 1, r.n)) end end
    if not starting then return deliver() end
    later(h, 0, deliver)                -- over at once: still from the loop
  end
  function resume(...)
    local ok, what, a, b, c, d, e, f, g = coroutine.resume(co, ...)
    if not ok then
      if starting then return args.unplace(what) end
      report(h, "llamacpp.uv.request " .. name .. ": " .. tostring(what))
      return
    end
    if coroutine.status(co) == "dead" then return finish(what) end
    if what == "request" then      -- a: client, b: method, c: path, d: body, e: raw, f: parse, g: extra
      h.cur = whole(a, uv, b, c, d, e, f, function(res, x)
        h.cur = nil
        if not h.cancelled then resume(res, x) end
      end, wopts, g)
    elseif what == "sleep" then
      later(h, math.max(0, math.ceil(a)), resume)
    end
  end
  local msg = resume()
  starting = false
  if msg ~= nil then return nil, msg end
  return h
end

--- Calls a client method on the loop, the same method the client has:
-- `health`, `wait_ready`, `models`, `load_model`, `unload_model`, `props`, `slots`, `metrics`,
-- `tokenize`, `detokenize`, `apply_template`, `count_tokens`, `context_size`, `fit`, `embeddings`, `rerank`,
-- `completion`, `infill` or `chat`. `args` are its arguments, in a list
-- (`{ "some text", { with_pieces = true } }`); on_done gets what it
-- returns (`res`, or `nil, err`), once, from the loop. `wait_ready` polls
-- on a timer. Bad arguments raise here, as the method would.
-- opts: uv, on_error (as for chat). Returns a handle with :cancel().
-- @usage luv.request(client, "tokenize", { "Hello" }, function(tokens, err) end)
function M.request(client, name, list, on_done, opts)
  args.check(type(name) == "string" and client_mod.steps[name] ~= nil and
             getmetatable(client) == client_mod.Client, 2, "request",
             "a client method that answers whole expected, got " .. tostring(name))
  args.check(list == nil or type(list) == "table", 3, "request", args.expected("table", list))
  args.check(callable(on_done), 4, "request", "function expected")
  local h, msg = run_method(client, name, list, on_done, loop_of(opts), opts and opts.on_error)
  if not h then args.raise(msg) end
  return h
end

--- A chat on the loop: on_done(res) or on_done(nil, err) once, as
-- client:chat answers.
function M.chat(client, req, on_done, opts)
  args.check(callable(on_done), 3, "chat", "function expected")
  args.check(type(req) == "table", 2, "chat", args.expected("table", req))
  local h, msg = run_method(client, "chat", { req }, on_done, loop_of(opts), opts and opts.on_error)
  if not h then args.raise(msg) end
  return h
end

-- A streaming client method on the loop, as chat_stream.
local function stream_call(fname, client, req, on_event, opts)
  args.check(callable(on_event), 3, fname, "function expected")
  local uv = loop_of(opts)
  local so
  if opts and opts.assemble ~= nil then so = { assemble = opts.assemble } end
  local _, stream = client[fname](client, req, so)
  return start(client, uv, opts, { stream = stream, on_event = on_event, pump = pump_stream,
                                   conversation_id = stream.conversation_id })
end

--- Streams a chat on the loop: on_event(ev) for every event (the last is
-- done or error). Returns a handle with :cancel().
-- opts: uv (a luv-compatible module; default vim.uv / vim.loop / luv),
-- on_error(msg) for errors raised by on_event, assemble (false: no
-- done.content, constant memory; see the stream options).
function M.chat_stream(client, req, on_event, opts)
  return stream_call("chat_stream", client, req, on_event, opts)
end

--- Reads a resumable stream again on the loop (`client:resume_stream`):
-- on_event(ev) for every event from byte `ropts.from` on. ropts as for
-- client:resume_stream; opts as for chat_stream. Returns a handle with
-- :cancel() (which cancels the generation, as for any resumable stream).
function M.resume_stream(client, id, ropts, on_event, opts)
  args.check(callable(on_event), 4, "resume_stream", "function expected")
  args.check(ropts == nil or type(ropts) == "table", 3, "resume_stream", args.expected("table", ropts))
  local uv = loop_of(opts)
  local ro = {}
  for k, v in pairs(ropts or {}) do ro[k] = v end
  if opts and opts.assemble ~= nil then ro.assemble = opts.assemble end
  local _, stream = client:resume_stream(id, ro)
  return start(client, uv, opts, { stream = stream, on_event = on_event, pump = pump_stream,
                                   conversation_id = id })
end

--- Streams a native completion on the loop (`client:completion_stream`):
-- on_event(ev) for every event. Returns a handle with :cancel().
function M.completion_stream(client, req, on_event, opts)
  return stream_call("completion_stream", client, req, on_event, opts)
end

--- Streams a fill-in-the-middle completion on the loop
-- (`client:infill_stream`), as an editor's completion plugin would.
function M.infill_stream(client, req, on_event, opts)
  return stream_call("infill_stream", client, req, on_event, opts)
end

-- }======


-- {====== routers ======
-- A routed request's plan (llamacpp.router.plan) driven on the loop: each
-- attempt is a request of the deployment's client on this loop, a wait
-- a timer, a health check a request of its own whose answer the next
-- pass uses. Nothing here sleeps or waits on a socket.

local function health_check(uv, opts)
  local Plan = require "llamacpp.router.plan"
  local on_error = opts and opts.on_error
  return function(router, rec, at)
    if not (router.health and rec.health_client) or rec.health_pending then return end
    if rec.checked_at and at - rec.checked_at < router.health.interval then return end
    rec.health_pending = true
    run_method(rec.health_client, "health", { Plan.health_opts(rec) }, function(obj, err)
      rec.health_pending = nil
      Plan.health_answer(router, rec, obj, err)
    end, uv, on_error)
  end
end

--- A request through a router, on a loop.
local Routed = {}
Routed.__index = Routed
Routed.__name = "llamacpp.uv.RoutedHandle"

Routed.call = call

--- Cancels the request: the current attempt is aborted, a pending backoff
-- dropped, and no callback is called any more. Idempotent.
function Routed:cancel()
  if not abort(self) then return end
  self.ended, self.waiting = true, false
  self.plan:close()
end

-- The routed request is over (its last event or answer is being given).
function Routed:over()
  self.ended = true
  self.cur = nil
end

-- Drives h.plan: attempt(it, request, again) starts the request of one
-- deployment and returns its uv handle; it calls again() when the plan
-- said "next". finish(err) ends the request with the plan's error.
local function run_plan(h, attempt, finish)
  local plan = h.plan
  local starting = true
  local function step()
    if h.cancelled then return end
    h.cur = nil
    local what, a, b = plan:next()
    if what == "over" then
      h:over()
      if not starting then return finish(a) end
      -- over before the first attempt: call back from the loop all the same,
      -- never inside router_stream / router_chat (cancel() drops the timer)
      return later(h, 0, function() finish(a) end)
    end
    if what == "wait" then
      h.waiting = true
      return later(h, math.max(0, math.ceil(a * 1000)), function()
        h.waiting = false
        step()
      end)
    end
    if starting then
      h.cur = attempt(a, b, step)
      return
    end
    -- a later attempt starts from a callback: what it raises (a bug, not
    -- a bad request: those raised before the first) ends this request
    local ok, cur = pcall(attempt, a, b, step)
    if ok then
      h.cur = cur
    else
      report(h, "router request: " .. tostring(cur))
      h:cancel()
    end
  end
  step()
  starting = false
end

local function routed(router, req, fname, cb, opts)
  args.check(type(req) == "table", 2, fname, args.expected("table", req))
  args.check(callable(cb), 3, fname, "function expected")
  local uv = loop_of(opts)
  return setmetatable({ uv = uv, on_error = opts and opts.on_error,
                        plan = require("llamacpp.router").plan(router, req, fname, health_check(uv, opts)),
                        ended = false, cancelled = false, waiting = false }, Routed), uv
end

--- Streams a chat through a router on the loop: on_event(ev) for every
-- event, each with ev.provider (the last is done, with attempts, or
-- error). A deployment that fails before its first event is retried or
-- left for the next as the router's rules say; backoff waits are timers
-- and health checks requests on the loop, so the loop never blocks.
-- opts as for chat_stream. Returns a handle with :cancel().
function M.router_stream(router, req, on_event, opts)
  local h, uv = routed(router, req, "router_stream", on_event, opts)
  local plan = h.plan
  local so = { uv = uv, on_error = opts and opts.on_error }
  if opts and opts.assemble ~= nil then so.assemble = opts.assemble end
  run_plan(h, function(it, r, again)
    return M.chat_stream(it.rec.client, r, function(ev)
      if h.cancelled then return end
      local o = plan:event(it, ev)
      if o == "next" then return again() end
      if o ~= "deliver" then h:over() end
      h:call(on_event, ev)
    end, so)
  end, function(err)
    h:call(on_event, { type = "error", error = err })
  end)
  return h
end

--- A chat through a router on the loop: on_done(res) (res.provider, the
-- deployment that answered, and res.attempts) or on_done(nil, err) once.
-- opts as for chat. Returns a handle with :cancel().
function M.router_chat(router, req, on_done, opts)
  local h, uv = routed(router, req, "router_chat", on_done, opts)
  local plan = h.plan
  local co = { uv = uv, on_error = opts and opts.on_error }
  run_plan(h, function(it, r, again)
    return M.chat(it.rec.client, r, function(res, err)
      if h.cancelled then return end
      local o = plan:outcome(it, err, res)
      if o == "next" then return again() end
      h:over()
      if o == "done" then return h:call(on_done, res) end
      h:call(on_done, nil, err)
    end, co)
  end, function(err)
    h:call(on_done, nil, err)
  end)
  return h
end

-- }======


-- {====== agents ======
-- An agent's loop (llamacpp.agent.loop) in a coroutine: each request is
-- a chat (or stream) of the client or router on this loop, each tool call
-- a coroutine of its own, resumed when what it awaits is done; with
-- parallel = true the calls of a step run together.

local Agentic = {}
Agentic.__index = Agentic
Agentic.__name = "llamacpp.uv.AgentHandle"
Agentic.call = call

--- Cancels the run: the current request is aborted, no tool is resumed
-- and no callback is called any more. Idempotent.
function Agentic:cancel()
  if self.cancelled then return end
  self.cancelled = true
  if self.cur then self.cur:cancel() end
  self.cur = nil
end

local function agent_run(agent, input, cb, opts, streaming, fname)
  local agents = require "llamacpp.agent"
  local msgs, ro = agents.prepare(agent, input, opts and { max_steps = opts.max_steps }, fname)
  args.check(callable(cb), 3, fname, "function expected")
  if streaming and agent.on_overflow and agent.router then
    args.check(false, 1, fname, "on_overflow = \"trim\" fits a stream with a client's count:" ..
               " a router's agent trims with agent_run")
  end
  local uv = loop_of(opts)
  local h = setmetatable({ uv = uv, on_error = opts and opts.on_error, cancelled = false }, Agentic)
  local o = { uv = uv, on_error = h.on_error }
  local routed_ = agent.router ~= nil
  local io = {
    streaming = streaming, parallel = true,
    ask = function(target, req, step) return coroutine.yield("ask", target, req, step) end,
    fit = function(c, req) return coroutine.yield("fit", c, req) end,
    tools = function(jobs, ended) return coroutine.yield("tools", jobs, ended) end,
  }
  if streaming then
    io.emit = function(ev) if not h.cancelled then h:call(cb, ev) end end
  end
  local co = coroutine.create(function() return pack(agents.loop(io, agent, msgs, ro)) end)
  local starting = true
  local resume, dispatch
  -- runs jobs together; then() once all have ended
  local function run_jobs(jobs, ended, after)
    local left = #jobs
    local function go(job, ...)
      if h.cancelled then return end
      local what, begin = agents.resume(job, ...)
      if what == "done" then
        ended(job)
        left = left - 1
        if left == 0 then return after() end
      elseif what == "await" then
        local answered = false
        local ok, e = pcall(begin, function(...)
          if answered or h.cancelled then return end
          answered = true
          go(job, ...)
        end)
        if not ok and not answered then
          answered = true
          go(job, agents.FAILED, e)
        end
      else                                  -- yielded: again when the loop has turned
        -- an idle handle, not a 0 ms timer: libuv runs a timer started from a
        -- timer callback in the same pass, and would never poll the sockets
        local idle = uv.new_idle()
        idle:start(function()
          idle:stop()
          idle:close()
          go(job)
        end)
      end
    end
    for _, job in ipairs(jobs) do go(job) end
  end
  function resume(...)
    if h.cancelled then return end
    local ok, what, a, b, c = coroutine.resume(co, ...)
    if not ok then
      if starting then return args.raise(args.unplace(what)) end
      report(h, fname .. ": " .. tostring(what))
      return h:cancel()
    end
    if coroutine.status(co) == "dead" then
      if not streaming then h:call(cb, unpack(what, 1, what.n)) end
      return
    end
    if h.cancelled then return end
    if starting then return dispatch(what, a, b, c) end
    local okd, e = pcall(dispatch, what, a, b, c)
    if not okd then
      report(h, fname .. ": " .. tostring(e))
      h:cancel()
    end
  end
  function dispatch(what, a, b, c)
    if what == "ask" then               -- a: target, b: request, c: step
      if streaming then
        local f = routed_ and M.router_stream or M.chat_stream
        h.cur = f(a, b, function(ev)
          if h.cancelled then return end
          local t = ev.type
          if t == "done" then
            h.cur = nil
            return resume(ev)
          elseif t == "error" then
            h.cur = nil
            return resume(nil, ev.error)
          end
          ev.step = c
          h:call(cb, ev)
        end, o)
      else
        local f = routed_ and M.router_chat or M.chat
        h.cur = f(a, b, function(res, err)
          h.cur = nil
          resume(res, err)
        end, o)
      end
    elseif what == "fit" then
      h.cur = M.request(a, "fit", { b }, function(r, e)
        h.cur = nil
        resume(r, e)
      end, o)
    elseif what == "tools" then
      run_jobs(a, b, function() resume() end)
    end
  end
  resume()
  starting = false
  return h
end

--- Runs an agent (@{llamacpp.agent.Agent:run}) on the loop: on_done(res)
-- or on_done(nil, err, run) once. Its requests are chats on the loop; a
-- tool may wait without blocking it: `ctx.await(function(done) ... end)`
-- returns what `done(...)` is given (from any later callback), and a
-- tool that calls `coroutine.yield()` goes on when the loop has turned.
-- With the agent's `parallel = true` the calls of one step run together
-- (their results go back in the calls' order all the same).
-- opts: uv, on_error (as for chat), max_steps. Returns a handle with :cancel().
function M.agent_run(agent, input, on_done, opts)
  return agent_run(agent, input, on_done, opts, false, "agent_run")
end

--- Streams an agent's run on the loop: on_event(ev) for every event of
-- @{llamacpp.agent.Agent:stream} (the last is done or error). opts as for
-- agent_run. Returns a handle with :cancel().
function M.agent_stream(agent, input, on_event, opts)
  return agent_run(agent, input, on_event, opts, true, "agent_stream")
end

-- }======

return M
