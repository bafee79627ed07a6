--- Agents: a tool loop with Lua functions as tools. The model is asked
-- with the tools; each call it makes runs its function with the decoded
-- arguments; the assistant message (with its `tool_calls`) and one `tool`
-- message per call, in the calls' order, go back; and the model is asked
-- again, until it answers without calls or `max_steps` is reached.
--
--   local agent = llamacpp.agent{ client = client, tools = {
--     add = { description = "Adds two numbers",
--             parameters = { type = "object", required = { "a", "b" },
--                            properties = { a = { type = "number" }, b = { type = "number" } } },
--             run = function(args) return { sum = args.a + args.b } end } } }
--   local res, err = agent:run("What is 12.5 + 30?")
--   print(res.content, res.stop_reason, #res.steps)
--
-- The loop is written once (@{loop}) and driven three ways: `agent:run`
-- and `agent:stream` here, and `llamacpp.uv.agent_run` / `agent_stream`
-- on an event loop. See docs/agents.md.
-- @module llamacpp.agent
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local args = require "llamacpp.args"
local core = require "llamacpp.core"
local client_mod = require "llamacpp.client"

local M = {}

local type, pairs, ipairs, tostring, select = type, pairs, ipairs, tostring, select
local floor, sort, concat = math.floor, table.sort, table.concat
local now = core.now
local unpack = rawget(table, "unpack") or rawget(_G, "unpack")
local callable = args.callable

local Agent = {}
Agent.__index = Agent
Agent.__name = "llamacpp.Agent"
M.Agent = Agent

local function pack(...) return { n = select("#", ...), ... } end

-- {====== construction ======

local OPTIONS = { client = true, router = true, tools = true, system = true, max_steps = true,
                  request = true, on_tool_error = true, parallel = true, on_overflow = true }
-- request fields the agent owns
local OWNED = { messages = true, tools = true, stream = true, system = true, on_overflow = true }

local function is_router(v)
  local ok, router = pcall(require, "llamacpp.router")
  return ok and getmetatable(v) == router.Router
end

--- Creates an agent. Unknown options raise.
-- @tparam table opts
--   `client` (a client) or `router` (a router), one of them;
--   `tools`: `{name = {description =, parameters = <JSON schema>, run = function(args, ctx)}}`
--   (or a list of such tables with `name`, sent in that order; a map's are sent sorted by name);
--   `system`: the system prompt of every step;
--   `max_steps`: requests at most (default 8);
--   `request`: other fields of every request (`max_tokens`, `temperature`, `model`, `tool_choice`, ...);
--   `on_tool_error`: `"feed"` (default: the failure goes back to the model as the call's result)
--   or `"raise"` (the run ends with an Error of kind `tool`);
--   `parallel`: on the loop, the calls of one step run together (default one after the other);
--   `on_overflow`: `"trim"`: the transcript is fitted to the context window before each step
--   (see @{llamacpp.client.Client:fit}).
-- @treturn Agent
function M.new(opts)
  args.check(type(opts) == "table", 1, "agent", args.expected("table", opts))
  for k in pairs(opts) do
    args.check(OPTIONS[k] ~= nil, 1, "agent", "unknown option '" .. tostring(k) .. "'")
  end
  local c, r = opts.client, opts.router
  args.check((c == nil) ~= (r == nil), 1, "agent", "one of 'client' and 'router' expected")
  args.check(c == nil or getmetatable(c) == client_mod.Client, 1, "agent", "'client' must be a llamacpp client")
  args.check(r == nil or is_router(r), 1, "agent", "'router' must be a llamacpp router")
  local max_steps = opts.max_steps or 8
  args.check(type(max_steps) == "number" and max_steps >= 1 and max_steps == floor(max_steps), 1, "agent",
             "'max_steps' must be a whole number >= 1")
  local ote = opts.on_tool_error or "feed"
  args.check(ote == "feed" or ote == "raise", 1, "agent", "'on_tool_error' must be \"feed\" or \"raise\"")
  args.check(opts.on_overflow == nil or opts.on_overflow == "trim", 1, "agent",
             "'on_overflow' must be \"trim\" or nil")
  args.check(opts.system == nil or type(opts.system) == "string", 1, "agent", "'system' must be a string")
  args.check(opts.parallel == nil or type(opts.parallel) == "boolean", 1, "agent", "'parallel' must be a boolean")
  local request = opts.request or {}
  args.check(type(request) == "table", 1, "agent", "'request' must be a table")
  for k in pairs(request) do
    args.check(not OWNED[k], 1, "agent", "'request." .. tostring(k) .. "' is the agent's to set" ..
               (k == "system" and ": use 'system'" or k == "on_overflow" and ": use 'on_overflow'" or ""))
  end
  local tools = opts.tools
  args.check(type(tools) == "table", 1, "agent", "'tools' must be a table")
  local names, by_name = {}, {}
  local listed = #tools > 0
  for k, t in pairs(tools) do
    args.check(type(t) == "table", 1, "agent", "tool " .. tostring(k) .. " must be a table")
    local name = listed and t.name or k
    args.check(type(name) == "string" and name:match("^[%w_%-%.]+$") ~= nil and #name <= 64, 1, "agent",
               "tool " .. tostring(k) .. ": a name of letters, digits, '_', '-' or '.' (at most 64) expected")
    args.check(not listed or type(k) == "number", 1, "agent", "'tools' must be a map of names or a list")
    args.check(by_name[name] == nil, 1, "agent", "tool '" .. name .. "' is given twice")
    args.check(callable(t.run), 1, "agent", "tool '" .. name .. "': 'run' must be a function")
    args.check(t.description == nil or type(t.description) == "string", 1, "agent",
               "tool '" .. name .. "': 'description' must be a string")
    args.check(t.parameters == nil or type(t.parameters) == "table", 1, "agent",
               "tool '" .. name .. "': 'parameters' must be a table (a JSON schema)")
    by_name[name] = t
    names[#names + 1] = name
  end
  if listed then
    local order = {}
    for i, t in ipairs(tools) do order[i] = t.name end
    names = order
  else
    sort(names)
  end
  local wire = json.array()
  for i, name in ipairs(names) do
    local t = by_name[name]
    wire[i] = { type = "function", ["function"] = { name = name, description = t.description,
                parameters = t.parameters or { type = "object", properties = json.object() } } }
  end
  return setmetatable({ client = c, router = r, tools = by_name, names = names, wire_tools = wire,
                        system = opts.system, max_steps = max_steps, request = request,
                        on_tool_error = ote, parallel = opts.parallel == true,
                        on_overflow = opts.on_overflow }, Agent)
end

function Agent:__tostring()
  return "llamacpp.Agent (" .. #self.names .. " tools: " .. concat(self.names, ", ") .. ")"
end

-- }======


-- {====== arguments ======

-- The JSON type of a decoded value; an empty table is both array and object.
local function json_type(v)
  if v == json.null then return "null" end
  local t = type(v)
  if t == "number" then return v == floor(v) and "integer" or "number" end
  if t == "table" then
    if next(v) == nil then return "empty" end
    return v[1] ~= nil and "array" or "object"
  end
  return t                       -- string, boolean
end

local function type_ok(want, got)
  if want == got then return true end
  if want == "number" and got == "integer" then return true end
  return got == "empty" and (want == "array" or want == "object")
end

local function shown(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

-- nil when v matches schema s (its keywords type, enum, required,
-- properties, additionalProperties = false and items), else what does not.
local function check_value(s, v, path)
  if type(s) ~= "table" then return nil end
  local got = json_type(v)
  local want = s.type
  if want ~= nil then
    local ok = false
    if type(want) == "table" then
      for _, w in ipairs(want) do ok = ok or type_ok(w, got) end
    else
      ok = type_ok(want, got)
    end
    if not ok then
      local w = type(want) == "table" and concat(want, " or ") or tostring(want)
      return path .. ": " .. w .. " expected, got " .. (got == "empty" and "{}" or got)
    end
  end
  if type(s.enum) == "table" then
    local ok = false
    for _, e in ipairs(s.enum) do ok = ok or e == v end
    if not ok then
      local list = {}
      for i, e in ipairs(s.enum) do list[i] = shown(e) end
      return path .. ": one of " .. concat(list, ", ") .. " expected, got " .. shown(v)
    end
  end
  if type(v) ~= "table" then return nil end
  if got ~= "array" then
    for _, k in ipairs(type(s.required) == "table" and s.required or {}) do
      if v[k] == nil then return path .. ": '" .. tostring(k) .. "' is required" end
    end
    local props = type(s.properties) == "table" and s.properties or {}
    for k, x in pairs(v) do
      local ps = props[k]
      if ps ~= nil then
        local e = check_value(ps, x, path .. "." .. tostring(k))
        if e then return e end
      elseif s.additionalProperties == false then
        return path .. ": '" .. tostring(k) .. "' is not a parameter"
      end
    end
  end
  if got ~= "object" and type(s.items) == "table" then
    for i = 1, #v do
      local e = check_value(s.items, v[i], path .. "[" .. i .. "]")
      if e then return e end
    end
  end
  return nil
end

--- Checks decoded arguments against a tool's `parameters`: the keywords
-- `type` (one or a list; an integer is a number; `{}` is an empty object or
-- array), `enum`, `required`, `properties`, `additionalProperties = false`
-- and `items`, at every depth. Other keywords are not checked.
-- @tparam table schema
-- @param value
-- @treturn[1] nil when it matches
-- @treturn[2] string what does not, e.g. `arguments.a: number expected, got string`
function M.check_arguments(schema, value)
  return check_value(schema, value, "arguments")
end

-- }======


-- {====== tools ======

local AWAIT = setmetatable({}, { __name = "llamacpp.agent.await" })
--- Resumed with this first (then a message), a tool's ctx.await raises
-- the message in the tool (for drivers).
-- @field FAILED
M.FAILED = setmetatable({}, { __name = "llamacpp.agent.failed" })
local FAILED = M.FAILED

-- ctx.await(start): yields to the driver, which calls start(done) and
-- resumes the tool with what done(...) gets.
local function await(start)
  args.check(callable(start), 1, "await", "function expected")
  local r = pack(coroutine.yield(AWAIT, start))
  if r[1] == FAILED then error(r[2], 0) end
  return unpack(r, 1, r.n)
end

local function message_of(e)
  if type(e) == "table" and type(e.message) == "string" then return e.message end
  return tostring(e)
end

--- Resumes a tool call's coroutine (a job of @{loop}, for drivers):
-- "done" when it ended (its outcome in the job), `"await", start` when it
-- waits for `start(done)` (resume it with what done got, or with
-- @{FAILED} and a message to raise in it), "yield" when it yielded
-- otherwise (resume it with nothing when the loop has turned). `job.ms`:
-- from its first resume to its end, the waits included.
-- @tparam table job
-- @return what the tool did
function M.resume(job, ...)
  job.t0 = job.t0 or now()
  local r = pack(coroutine.resume(job.co, ...))
  job.ms = now() - job.t0
  if coroutine.status(job.co) ~= "dead" then
    if r[2] == AWAIT then return "await", r[3] end
    return "yield"
  end
  if not r[1] then
    job.error = "the tool failed: " .. message_of(r[2])
    job.code = "TOOL_FAILED"
  elseif r[2] == nil and r.n >= 3 and r[3] ~= nil then     -- return nil, err
    job.error = "the tool failed: " .. message_of(r[3])
    job.code = "TOOL_FAILED"
  else
    job.result = r[2]
  end
  return "done"
end

-- The blocking drivers' io.tools: one job after the other; await works
-- when start calls done before it returns.
local function run_blocking(jobs, ended)
  for _, job in ipairs(jobs) do
    local what, start = M.resume(job)
    while what ~= "done" do
      if what == "await" then
        local got
        local ok, e = pcall(start, function(...) if not got then got = pack(...) end end)
        if not ok then
          what, start = M.resume(job, FAILED, e)
        elseif got then
          what, start = M.resume(job, unpack(got, 1, got.n))
        else
          what, start = M.resume(job, FAILED, "ctx.await: done was not called at once, and a blocking" ..
                                 " agent has no loop to wait on (use llamacpp.uv.agent_run)")
        end
      else
        what, start = M.resume(job)
      end
    end
    ended(job)
  end
end

-- The text a result goes back as.
local function result_text(v)
  if type(v) == "string" then return v end
  if v == nil then return "null" end
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  return tostring(v)
end

-- }======


-- {====== the loop ======

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

local SUMMED = { "input_tokens", "cached_tokens", "output_tokens", "prompt_ms", "generation_ms" }

local function add_stats(total, s)
  if type(s) ~= "table" then return end
  for _, k in ipairs(SUMMED) do
    if type(s[k]) == "number" then total[k] = (total[k] or 0) + s[k] end
  end
end

-- The assistant message of a step's answer, in the OpenAI wire shape
-- every provider converts (ids made up where the model gave none).
local function assistant_message(res, calls, step)
  local tcs = json.array()
  for i, c in ipairs(calls) do
    if c.id == nil or c.id == "" then c.id = "call_" .. step .. "_" .. i end
    local a = c.arguments
    if type(a) == "table" then a = json.encode(a) end
    tcs[i] = { id = c.id, type = "function", ["function"] = { name = c.name, arguments = a or "{}" } }
  end
  local m = { role = "assistant", content = type(res.content) == "string" and res.content or "",
              tool_calls = tcs }
  if res.thinking_blocks then m.thinking_blocks = res.thinking_blocks end
  return m
end

-- The job of one call: its arguments decoded and checked, or its failure.
local function job_of(agent, call, step, msgs, decode)
  local job = { id = call.id, name = call.name, arguments = call.arguments, step = step }
  local tool = agent.tools[call.name]
  if not tool then
    job.error = "there is no tool '" .. tostring(call.name) .. "'; the tools are: " .. concat(agent.names, ", ")
    job.code = "UNKNOWN_TOOL"
    return job
  end
  local a, err = decode(call)
  if not a then
    job.error = "the arguments are not valid JSON: " .. tostring(err and err.message)
    job.code = "BAD_TOOL_ARGUMENTS"
    return job
  end
  local bad = tool.parameters and M.check_arguments(tool.parameters, a)
  if bad then
    job.error = "the arguments do not match the parameters: " .. bad
    job.code = "TOOL_ARGUMENTS_INVALID"
    return job
  end
  local ctx = { step = step, id = call.id, name = call.name, messages = msgs, agent = agent, await = await }
  local run = tool.run
  job.co = coroutine.create(function() return run(a, ctx) end)
  return job
end

local function tool_error(job)
  return errors.new("tool", "tool '" .. tostring(job.name) .. "': " .. job.error,
                    { code = job.code, tool = job.name, step = job.step, retryable = false })
end

--- The input of a run as messages: a string is one user message; a list
-- of messages is copied (the list, not its messages). Raises on others.
local function messages_of(input, fname)
  if type(input) == "string" then return { { role = "user", content = input } } end
  args.check(type(input) == "table" and #input > 0, 1, fname, "a prompt or a list of messages expected")
  local out = {}
  for i = 1, #input do
    args.check(type(input[i]) == "table", 1, fname, "messages[" .. i .. "] must be a table")
    out[i] = input[i]
  end
  return out
end

--- Checks a run's input and options: the messages, and the options.
-- For drivers (llamacpp.uv); raises at the caller's line.
-- @treturn table messages
-- @treturn table options
function M.prepare(agent, input, opts, fname)
  args.check(getmetatable(agent) == Agent, 1, fname, "agent expected")
  local msgs = messages_of(input, fname)
  opts = opts or {}
  args.check(type(opts) == "table", 2, fname, args.expected("table", opts))
  for k, v in pairs(opts) do
    args.check(k == "max_steps", 2, fname, "unknown option '" .. tostring(k) .. "'")
    args.check(type(v) == "number" and v >= 1 and v == floor(v), 2, fname, "'max_steps' must be a whole number >= 1")
  end
  return msgs, opts
end

--- The loop, for drivers: asks, runs the tools, appends, asks again.
-- `io` does what waits: `io.ask(target, req, step)` (the step's answer,
-- or nil and an Error; streaming drivers deliver the events before the
-- last themselves), `io.fit(client, req)` (@{llamacpp.client.Client:fit}),
-- `io.tools(jobs, ended)` (runs each job with @{resume}, calls
-- ended(job) as each ends; the blocking form one after the other),
-- `io.emit(ev)` (the agent's own events; nil when nobody listens), and
-- `io.parallel` (whether tools may run together).
-- @return the result, or nil, Error, the run so far
function M.loop(io, agent, msgs, opts)
  local decode = require("llamacpp").tool_arguments
  local max_steps = opts.max_steps or agent.max_steps
  local emit = io.emit or function() end
  local target = agent.client or agent.router
  local t0 = now()
  local steps = {}
  local run = { messages = msgs, steps = steps, tool_calls = 0, tool_errors = 0,
                stats = { steps = 0, tool_calls = 0, tool_errors = 0, tool_ms = 0 } }
  local function totals()
    run.stats.total_ms = now() - t0
    return run
  end
  local function finish(stop_reason)
    run.stop_reason = stop_reason
    totals()
    if io.emit then
      local done = copy(run)
      done.type = "done"
      emit(done)
    end
    return run
  end
  local function fail(err, step)
    totals()
    emit{ type = "error", error = err, step = step, run = run }
    return nil, err, run
  end
  for step = 1, max_steps do
    local req = copy(agent.request)
    req.messages, req.tools, req.system = copy(msgs), agent.wire_tools, agent.system
    if agent.on_overflow then
      if io.streaming then
        local fitted, err = io.fit(target, req)
        if not fitted then return fail(err, step) end
        req = fitted
      else
        req.on_overflow = agent.on_overflow
      end
    end
    local res, err = io.ask(target, req, step)
    if not res then return fail(err, step) end
    local calls = type(res.tool_calls) == "table" and res.tool_calls or {}
    local rec = { step = step, content = res.content, reasoning = res.reasoning, stop_reason = res.stop_reason,
                  stats = res.stats, provider = res.provider, tool_calls = calls, tool_errors = 0 }
    steps[step] = rec
    add_stats(run.stats, res.stats)
    run.stats.steps = step
    run.content, run.reasoning, run.provider, run.usage = res.content, res.reasoning, res.provider, res.usage
    emit{ type = "step", step = step, content = res.content, reasoning = res.reasoning,
          stop_reason = res.stop_reason, stats = res.stats, provider = res.provider, tool_calls = calls }
    if #calls == 0 then return finish(res.stop_reason) end
    msgs[#msgs + 1] = assistant_message(res, calls, step)
    local jobs, failed = {}, nil
    for i, call in ipairs(calls) do jobs[i] = job_of(agent, call, step, msgs, decode) end
    local function ended(job)
      run.stats.tool_ms = run.stats.tool_ms + (job.ms or 0)
      if job.error then
        rec.tool_errors = rec.tool_errors + 1
        run.tool_errors = run.tool_errors + 1
        failed = failed or job
      end
      emit{ type = "tool_end", step = step, id = job.id, name = job.name, result = job.result,
            error = job.error, code = job.code, ms = job.ms or 0 }
    end
    local raise = agent.on_tool_error == "raise"
    local together = io.parallel and agent.parallel
    local batch = {}
    local function started(job)
      emit{ type = "tool_start", step = step, id = job.id, name = job.name, arguments = job.arguments }
    end
    for _, job in ipairs(jobs) do
      if failed and raise then break end
      if not job.co then
        started(job)
        ended(job)
      elseif together then
        batch[#batch + 1] = job
      else
        started(job)
        io.tools({ job }, ended)
      end
    end
    if #batch > 0 and not (failed and raise) then
      for _, job in ipairs(batch) do started(job) end
      io.tools(batch, ended)
    end
    run.tool_calls = run.tool_calls + #calls
    run.stats.tool_calls, run.stats.tool_errors = run.tool_calls, run.tool_errors
    for _, job in ipairs(jobs) do
      local text
      if job.error then
        text = "error: " .. job.error
      elseif job.co and coroutine.status(job.co) == "dead" then
        text = result_text(job.result)
      else
        text = "error: not run: an earlier call of this step failed"
      end
      msgs[#msgs + 1] = { role = "tool", tool_call_id = job.id, content = text }
    end
    if failed and raise then return fail(tool_error(failed), step) end
    if step == max_steps then return finish("max_steps") end
  end
end

-- }======


-- {====== the blocking drivers ======

local function whole_io()
  return {
    ask = function(target, req) return target:chat(req) end,
    fit = function(c, req) return c:fit(req) end,
    tools = run_blocking,
  }
end

--- An agent, from @{new} (or `llamacpp.agent`).
-- @type Agent

--- Runs the agent: asks, runs the tools, asks again, until the model
-- answers without tool calls or `max_steps` requests were made.
-- @param input a prompt (one user message) or a list of messages (not changed)
-- @tparam[opt] table opts `max_steps` (this run's)
-- @treturn table the result: `content`, `reasoning`, `stop_reason` (the last
--   answer's, or `"max_steps"`), `messages` (the transcript: the input, each
--   assistant message with its tool calls and their results, the last
--   answer not included; what to send next), `steps` (`{content, reasoning,
--   stop_reason, stats, provider, tool_calls, tool_errors}` each), `stats`
--   (the steps' tokens and server times summed, `tool_ms`, `steps`,
--   `tool_calls`, `tool_errors`, and `total_ms`, the whole run),
--   `tool_calls` and `tool_errors` (counts), `provider`, `usage` (the last answer's)
-- @return[2] nil, @{llamacpp.Error} (a request's, or kind `tool` with
--   `on_tool_error = "raise"`), and the run so far (`messages`, `steps`, `stats`)
function Agent:run(input, opts)
  local msgs, o = M.prepare(self, input, opts, "run")
  return M.loop(whole_io(), self, msgs, o)
end

--- A stream of a run: `for ev in agent:stream(prompt) do ... end`.
-- Events: those of each step's stream (with `ev.step`), its `done`
-- replaced by a `step` event (`step`, `content`, `reasoning`,
-- `stop_reason`, `stats`, `provider`, `tool_calls`); `tool_start` (`step`,
-- `id`, `name`, `arguments`) and `tool_end` (`step`, `id`, `name`, `result` or
-- `error` and `code`, `ms`) around each call; then one `done` (the fields
-- of @{Agent:run}'s result) or one `error` (`error`, `step`, `run`).
-- @param input as for @{Agent:run}
-- @tparam[opt] table opts as for @{Agent:run}
-- @return step, stream, nil, stream, as client:chat_stream (`stream:close()`
--   ends it early)
function Agent:stream(input, opts)
  local msgs, o = M.prepare(self, input, opts, "stream")
  local s = setmetatable({ ended = false, closed = false }, M.Stream)
  local OPENED = {}
  local io = {
    streaming = true,
    fit = function(c, req) return c:fit(req) end,
    tools = run_blocking,
    emit = function(ev) coroutine.yield(ev) end,
    ask = function(target, req, step)
      local cur = target:open_stream(req)
      s.cur = cur
      if step == 1 then coroutine.yield(OPENED) end
      while true do
        local ev = cur:next()
        if ev == nil or ev.type == "done" or ev.type == "error" then
          s.cur = nil
          cur:close()
          if ev == nil then return nil, errors.new("truncated", "the stream ended without done") end
          if ev.type == "error" then return nil, ev.error end
          return ev
        end
        ev.step = step
        coroutine.yield(ev)
      end
    end,
  }
  if self.on_overflow and self.router then
    args.raise("bad argument #1 to 'stream' (on_overflow = \"trim\" fits a stream with a client's" ..
               " count: a router's agent trims with run)")
  end
  s.co = coroutine.create(function() return M.loop(io, self, msgs, o) end)
  local ok, first = coroutine.resume(s.co)     -- up to the first request: a bad one raises here
  if not ok then args.raise(args.unplace(first)) end
  if first ~= OPENED then s.pending = first end
  return function() return s:next() end, s, nil, s
end

--- A run's stream (@{Agent:stream}).
-- @type Stream
M.Stream = client_mod.stream_class("llamacpp.AgentStream")

--- The next event; nil after the last.
function M.Stream:next()
  if self.closed then args.raise("stream is closed") end
  local p = self.pending
  if p then
    self.pending = nil
    return p
  end
  if self.ended then return nil end
  local ok, ev = coroutine.resume(self.co)
  if not ok then
    self.ended = true
    error(ev, 0)
  end
  if coroutine.status(self.co) == "dead" then
    self.ended = true
    return nil
  end
  return ev
end

--- Ends the run: the current request is aborted, no tool runs any more. Idempotent.
function M.Stream:close()
  if self.cur then self.cur:close() end
  self.cur = nil
  self.ended, self.closed = true, true
end

-- }======

return M
