--- Client and Stream: requests to one server over the C core.
-- Created by @{llamacpp.new}.
-- @module llamacpp.client
local core = require "llamacpp.core"
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local native = require "llamacpp.providers.native"

local M = {}

local type, pairs, next, setmetatable, tostring = type, pairs, next, setmetatable, tostring

-- A provider is a module llamacpp.providers.<name>; see
-- providers/llamacpp.lua for the fields and functions it has.
local function load_provider(name)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil end
  local ok, p = pcall(require, "llamacpp.providers." .. name)
  if ok and type(p) == "table" then return p end
  if not ok and not tostring(p):find("module 'llamacpp.providers." .. name .. "' not found", 1, true) then
    error(p, 0)          -- the provider exists but is broken: say so
  end
  return nil
end
M.load_provider = load_provider

-- API keys live here, not on the client, transfer or stream tables: a
-- client or stream printed with vim.inspect() or serialised by a
-- debugger shows no key. Keyed by client (its api_key option), and by
-- transfer and stream (the key a request used, for scrubbing errors).
local secrets = setmetatable({}, { __mode = "k" })
-- The same for what else may carry credentials: the endpoint as given
-- (user:password@), the caller's header lines (Authorization), the proxy.
local private = setmetatable({}, { __mode = "k" })

local OPTIONS = {
  endpoint = "string", api_key = "key", model = "string", headers = "table",
  connect_timeout = "number", first_byte_timeout = "number",
  idle_timeout = "number", timeout = "number", provider = "string",
  proxy = "string", ca_file = "string", ca_path = "string",
  insecure = "boolean", follow_redirects = "boolean",
  max_event = "number", max_body = "number",
}

local DEFAULTS = { connect_timeout = 10, idle_timeout = 300 }
local GRACE_MS = 1000   -- how long the end of a transfer may lag its terminator

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

local function checkheader(name, value, level)
  if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    error("bad header name " .. tostring(name), level + 1)
  end
  if type(value) ~= "string" then
    error("header '" .. name .. "' must be a string (got " .. type(value) .. ")", level + 1)
  end
  if value:find("[\r\n%z]") then
    error("header '" .. name .. "' contains CR, LF or NUL", level + 1)
  end
end

-- "http://user:pw@host:port/prefix/" -> the URL without userinfo and
-- without trailing slashes (used in messages), and the host.
local function parse_endpoint(url)
  local scheme, rest = url:match("^(https?)://(.+)$")
  if not scheme then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "")
  if authority == "" or path:find("[?#]") then return nil end
  path = path:gsub("/+$", "")
  local host = authority:match("^%[(.-)%]") or authority:match("^([^:]+)")
  return scheme .. "://" .. authority .. path, host
end

local function is_loopback(host)
  host = host and host:lower()
  return host == "localhost" or host == "::1" or
         (host ~= nil and host:match("^127%.%d+%.%d+%.%d+$") ~= nil)
end


--- A client of one server: `llamacpp.new(opts)`.
-- @type Client
local Client = {}
Client.__index = Client
Client.__name = "llamacpp.Client"
M.Client = Client

-- Creates a client (llamacpp.new). See llamacpp's options table.
function M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then error("unknown option '" .. tostring(k) .. "'", 2) end
    if want == "key" then
      if type(v) ~= "string" and not callable(v) then
        error("option 'api_key' must be a string or a function", 2)
      end
    elseif type(v) ~= want then
      error("option '" .. k .. "' must be a " .. want .. " (got " .. type(v) .. ")", 2)
    end
    if want == "number" and (v ~= v or v < 0) then    -- NaN, negative
      error("option '" .. k .. "' must be a number >= 0 (got " .. tostring(v) .. ")", 2)
    end
  end
  local pname = opts.provider or "llamacpp"
  local provider = load_provider(pname)
  if not provider then error("unknown provider '" .. tostring(pname) .. "'", 2) end
  local raw = opts.endpoint or provider.default_endpoint
  if raw:find("[%s%c]") then error("bad endpoint (contains white space or control characters)", 2) end
  local endpoint, host = parse_endpoint(raw)
  if not endpoint then
    error("bad endpoint '" .. raw:gsub("//[^/]*@", "//") .. "' (want http[s]://host[:port][/prefix])", 2)
  end
  local self = setmetatable({
    provider = provider,
    endpoint = endpoint,               -- without userinfo: safe to print
    model = opts.model,
    session = core.session(),
    streams = setmetatable({}, { __mode = "k" }),   -- open streams, for poll()
  }, Client)
  local names = {}
  for name, value in pairs(opts.headers or {}) do
    checkheader(name, value, 2)
    names[#names + 1] = name
  end
  table.sort(names)
  local lines = {}
  self.header_names = {}
  for _, name in ipairs(names) do
    lines[#lines + 1] = name .. ": " .. opts.headers[name]
    self.header_names[name:lower()] = true
  end
  local t = {}
  for _, k in ipairs{ "connect_timeout", "first_byte_timeout", "idle_timeout", "timeout" } do
    local v = opts[k]
    if v == nil then v = DEFAULTS[k] end
    if v and v > 0 then t[k] = v * 1000 end
  end
  t.max_event, t.max_body = opts.max_event, opts.max_body
  t.ca_file, t.ca_path, t.insecure = opts.ca_file, opts.ca_path, opts.insecure
  t.follow = opts.follow_redirects
  -- libcurl takes http_proxy & co. from the environment; a loopback server
  -- is never reached through them unless a proxy is given explicitly (below)
  private[self] = { url = (raw:gsub("/+$", "")), header_lines = lines,
                    proxy = opts.proxy or (is_loopback(host) and "" or nil) }
  self.transfer_opts = t
  secrets[self] = opts.api_key
  return self
end

function Client:__tostring()
  return "llamacpp.Client (" .. self.provider.name .. " at " .. self.endpoint .. ")"
end

-- The key for this request (a function is called each time: rotation).
function Client:_key()
  local k = secrets[self]
  if callable(k) then k = k() end
  if k == nil or k == "" then return nil end
  if type(k) ~= "string" then error("api_key function must return a string", 3) end
  if k:find("[\r\n%z]") then error("api_key contains CR, LF or NUL", 3) end
  return k
end

-- Starts a transfer: method, path, body (string or nil), framing.
function Client:_open(method, path, body, framing, template)
  local key = self:_key()
  local h = { "Accept: " .. (framing == "sse" and "text/event-stream" or "application/json"),
              "Expect:" }
  if body then h[#h + 1] = "Content-Type: application/json" end
  -- the caller's headers win over the provider's of the same name
  local ph = self.provider.headers(key)
  for i = 1, #ph do
    if not self.header_names[ph[i]:match("^([^:]*)"):lower()] then h[#h + 1] = ph[i] end
  end
  local priv = private[self]
  local lines = priv.header_lines
  for i = 1, #lines do h[#h + 1] = lines[i] end
  local o = { url = priv.url .. path, method = method, body = body, proxy = priv.proxy,
              headers = h, framing = framing, template = template }
  for k, v in pairs(self.transfer_opts) do o[k] = v end
  local t = self.session:open(o)
  secrets[t] = key
  return t
end

-- Completes an Error from the core or a provider: who, where, the
-- provider's wording, and never the key.
function Client:_error(e, key, partial, nevents)
  local label = self.provider.label
  e.provider = e.provider or self.provider.name
  e.endpoint = self.endpoint
  if e.kind == "connection" then
    e.detail = e.message
    e.message = label .. " not running at " .. self.endpoint
  elseif e.kind == "network" then
    e.detail = e.message
    e.message = "connection to " .. label .. " at " .. self.endpoint .. " lost: " .. e.message
  elseif e.kind == "timeout" then
    e.detail = e.message
    e.message = label .. " at " .. self.endpoint .. " timed out (" ..
                tostring(e.phase) .. "): " .. e.message
  end
  if partial ~= nil then e.partial = partial end
  -- after the first event a retry would repeat what the caller has seen
  if nevents and nevents > 0 then e.retryable = false end
  return errors.scrub(e, key)
end

-- Starts a request whose answer is read whole: the transfer, for
-- _complete once it has ended.
function Client:_begin(method, path, body_table)
  local body = body_table ~= nil and json.encode(body_table) or nil
  return self:_open(method, path, body, nil)
end

-- The end of a _begin transfer: decoded JSON (or the raw body when
-- `raw`; or what parse(obj) makes of the JSON) and the status; or nil,
-- Error. `err` is what the transfer ended with, if anything.
function Client:_complete(t, err, raw, parse)
  local key = secrets[t]
  if err then
    t:close()
    return nil, self:_error(err, key)
  end
  local status, body = t:result()
  if status >= 300 and status < 400 then
    local headers = t:response().headers
    t:close()
    return nil, self:_error(self:_redirect(status, headers), key)
  end
  if status >= 400 then
    local headers = t:response().headers      -- Retry-After, request id
    t:close()
    return nil, self:_error(errors.http(status, body, headers, self.provider.label), key)
  end
  t:close()
  if raw then return body, status end
  local obj, msg = json.decode(body)
  if obj == nil then
    return nil, self:_error(errors.new("protocol", "invalid JSON in the answer: " .. msg,
                                       { status = status, body = body:sub(1, 4096) }), key)
  end
  if parse then
    local res, perr = parse(obj)
    if not res then return nil, self:_error(perr, key) end
    return res, status
  end
  return obj, status
end

-- A 3xx answer: redirects are not followed unless asked for.
function Client:_redirect(status, headers)
  return errors.new("protocol", self.provider.label .. " answered with a redirect (" .. status .. ") to " ..
                    tostring(headers.location) .. "; redirects are not followed (follow_redirects = true)",
                    { status = status, code = "REDIRECT" })
end

-- Coroutines of llamacpp.uv: a method running in one does not block; it
-- yields what it would wait for ("request" or "sleep"), and the loop
-- resumes it with the answer.
local deferred = setmetatable({}, { __mode = "k" })
M._deferred = deferred

local function deferring()
  local co = coroutine.running()
  return co ~= nil and deferred[co] ~= nil
end

-- Runs a request to its end (blocking): see _complete.
function Client:_request(method, path, body_table, raw, parse)
  if deferring() then
    return coroutine.yield("request", self, method, path, body_table, raw, parse)
  end
  local t = self:_begin(method, path, body_table)
  local more, err
  repeat more, err = t:next() until more == nil
  return self:_complete(t, err, raw, parse)
end

--- One chat completion.
-- @tparam table req `messages`, optional `system` (sent as the first
--   message), `max_tokens` (default 2048) and any field the server knows
--   (temperature, seed, stop, grammar, json_schema, response_format, tools,
--   tool_choice, logprobs, ...), passed through
-- @treturn table `{content, reasoning, tool_calls, stop_reason, usage =
--   {input_tokens, output_tokens}, timings, logprobs, model, id, provider, raw}`
-- @return[2] nil
-- @return[2] @{llamacpp.Error}
-- @within Client
function Client:chat(req)
  if type(req) ~= "table" then
    error("bad argument #1 to 'chat' (table expected, got " .. type(req) .. ")", 2)
  end
  local p = self.provider
  local res, err = self:_request("POST", p.chat_path, p.chat_body(req, false, self.model), false, p.parse_chat)
  if not res then return nil, err end
  res.provider = p.name
  return res
end


--- Options of the streaming methods (`open_stream`, `chat_stream`,
-- `completion_stream`, `infill_stream`).
-- @table stream_options
-- @field assemble `false`: keep no text for `done.content`, `done.reasoning`
--   and `err.partial` (they are nil), so a very long stream costs constant
--   memory; the events carry the text as usual. Default `true`.

local STREAM_OPTIONS = { assemble = "boolean" }

local function check_stream_opts(opts, fname)
  if opts == nil then return nil end
  if type(opts) ~= "table" then
    error("bad argument #2 to '" .. fname .. "' (table expected, got " .. type(opts) .. ")", 3)
  end
  for k, v in pairs(opts) do
    if not STREAM_OPTIONS[k] then error("unknown stream option '" .. tostring(k) .. "'", 3) end
    if type(v) ~= STREAM_OPTIONS[k] then
      error("stream option '" .. k .. "' must be a " .. STREAM_OPTIONS[k], 3)
    end
  end
  return opts
end
M.check_stream_opts = check_stream_opts

--- A stream of normalised events over one transfer, from
-- @{Client:open_stream}, @{Client:chat_stream} and the other streaming methods.
-- @type Stream
local Stream = {}
Stream.__index = Stream
Stream.__name = "llamacpp.Stream"
M.Stream = Stream

function Stream.__close(s) s:close() end      -- Lua 5.4's generic for

function Stream:__tostring()
  return "llamacpp.Stream (" .. (self.closed and "closed" or self.ended and "ended" or "open") .. ")"
end

function Stream:_push(ev)
  local n = self.qt + 1
  self.q[n] = ev
  self.qt = n
end

function Stream:_pop()
  local h = self.qh
  local ev = self.q[h]
  self.q[h] = nil
  if h == self.qt then self.qh, self.qt = 1, 0 else self.qh = h + 1 end
  self.nevents = self.nevents + 1
  return ev
end

-- The last event: done or error. Releases the transfer.
function Stream:_finish(ev)
  self.ended = true
  if self.t then self.t:close() end
  self.t = nil
  self:_push(ev)
end

function Stream:_fail(e)
  local c = self.client
  self:_finish({ type = "error",
                 error = c:_error(e, secrets[self], self.dec:partial(), self.nevents) })
end

-- The transfer ended without a transport error: judge what came.
function Stream:_eof()
  local r = self.t:response()
  local label = self.client.provider.label
  if self.dec.finished then
    return self:_finish(self.dec:done())
  end
  if not r.framed then
    if r.status and r.status >= 300 and r.status < 400 then
      return self:_fail(self.client:_redirect(r.status, r.headers))
    end
    if r.status and r.status >= 400 then
      return self:_fail(errors.http(r.status, r.body, r.headers, label))
    end
    return self:_fail(errors.new("protocol", "expected an event stream, got " ..
      tostring(r.headers["content-type"]) .. " (status " .. tostring(r.status) .. ")",
      { status = r.status, body = r.body:sub(1, 4096), code = "BAD_CONTENT_TYPE" }))
  end
  self:_fail(errors.new("truncated", label .. " stream ended without its terminator",
                        { status = r.status }))
end

--- The next event; nil after the last one (done or error); false when
-- timeout_ms (0: do not block) passed with nothing ready.
-- @tparam[opt] number timeout_ms wait at most this long; none: until an event
-- @treturn table|nil|false an @{llamacpp.event}, `nil` at the end, `false` on timeout
function Stream:next(timeout_ms)
  local ev = self:_next(timeout_ms, false)   -- not a tail call: error levels
  return ev                                  -- count this frame on every Lua
end

--- True when next(0) would return an event (or the end) at once.
-- @treturn boolean
function Stream:ready()
  if self.qh <= self.qt then return true end
  if self.ended then return false end
  return self.t:ready()
end

-- take: only what the C queue holds; never drive the session (an event
-- loop drives it: llamacpp.uv).
function Stream:_next(timeout_ms, take)
  if self.qh <= self.qt then return self:_pop() end
  if self.closed then error("stream is closed", 3) end
  if self.ended then return nil end
  local deadline = timeout_ms and timeout_ms > 0 and core.now() + timeout_ms
  local t, dec, push = self.t, self.dec, self.push
  while true do
    local data, name
    if take then
      data, name = t:take()
    else
      local wait = timeout_ms
      if deadline then
        wait = deadline - core.now()
        if wait < 0 then wait = 0 end
      end
      -- after the terminator only the transfer's end is due: a server
      -- that sends neither it nor more gets a second, not the idle timeout
      if dec.finished and (wait == nil or wait > GRACE_MS) then wait = GRACE_MS end
      data, name = t:next(wait)
    end
    if data then
      if not dec.finished then           -- nothing counts after [DONE]
        local e, ev = dec:feed(data, name, push)
        if ev then                       -- one event: no queueing
          self.nevents = self.nevents + 1
          return ev
        end
        if e then self:_fail(e)
        elseif dec.finished then self.finished_at = core.now() end
      end
      if self.qh <= self.qt then return self:_pop() end
    elseif data == false then
      if dec.finished and core.now() - self.finished_at >= GRACE_MS then
        self:_finish(dec:done())
        return self:_pop()
      end
      if take or (timeout_ms ~= nil and (not deadline or core.now() >= deadline)) then
        return false
      end
    elseif name then                     -- transport error or timeout
      if dec.finished then self:_finish(dec:done()) else self:_fail(name) end
      return self:_pop()
    else
      self:_eof()
      return self:_pop()
    end
  end
end

--- Aborts the transfer (the server sees the disconnect). Idempotent.
function Stream:close()
  if self.t then self.t:close() end
  self.t = nil
  self.ended = true
  self.closed = true
  self.qh, self.qt, self.q = 1, 0, {}
end

--- A stream for a chat request, to be read with :next() and :close().
-- On Lua 5.1 and LuaJIT use this rather than @{chat_stream} when a loop may
-- end early, and close the stream.
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @tparam[opt] table opts @{stream_options}
-- @treturn Stream
function Client:open_stream(req, opts)
  if type(req) ~= "table" then
    error("bad argument #1 to 'open_stream' (table expected, got " .. type(req) .. ")", 2)
  end
  opts = check_stream_opts(opts, "open_stream")
  local p = self.provider
  local body = json.encode(p.chat_body(req, true, self.model))
  local t = self:_open("POST", p.chat_path, body, p.framing, p.template)
  return self:_stream(t, p.decoder(opts))
end

-- A Stream over transfer t, read with decoder dec.
function Client:_stream(t, dec)
  local s = setmetatable({ client = self, t = t, dec = dec,
                           q = {}, qh = 1, qt = 0, nevents = 0,
                           ended = false, closed = false }, Stream)
  s.push = function(ev) s:_push(ev) end
  secrets[s] = secrets[t]
  self.streams[s] = true
  return s
end

--- Drives every transfer of this client, waiting at most timeout_ms
-- (default 0; negative: no limit) until some stream has an event ready.
-- @within Client
-- @tparam[opt=0] number timeout_ms
-- @treturn {Stream,...} the streams with an event (possibly none)
function Client:poll(timeout_ms)
  timeout_ms = timeout_ms or 0
  local deadline = timeout_ms >= 0 and core.now() + timeout_ms
  local ready = {}
  while true do
    for s in pairs(self.streams) do
      if s:ready() then ready[#ready + 1] = s
      elseif s.ended then self.streams[s] = nil end
    end
    if #ready > 0 then return ready end
    local wait = deadline and deadline - core.now() or -1
    if deadline and wait <= 0 then return ready end
    if self.session:step(wait) == 0 and next(self.streams) == nil then return ready end
  end
end

-- {= llama-server's other endpoints ==================================

local function argcheck(cond, n, fname, msg)
  if not cond then error("bad argument #" .. n .. " to '" .. fname .. "' (" .. msg .. ")", 3) end
end

local function copy(t, into)
  into = into or {}
  for k, v in pairs(t or {}) do into[k] = v end
  return into
end

--- GET /health: {status = "ok"}, or nil, Error (503 "Loading model" is an
-- http error with retryable = true).
-- @within Client
function Client:health()
  return self:_request("GET", "/health")
end

--- Polls /health until the server is ready (through the 503 "Loading
-- model" phase and a server still starting). opts.timeout (seconds,
-- default 60), opts.interval (seconds, default 0.25). true, or nil and
-- the last Error.
-- @within Client
function Client:wait_ready(opts)
  opts = opts or {}
  argcheck(type(opts) == "table", 1, "wait_ready", "table expected")
  local timeout, interval = opts.timeout or 60, opts.interval or 0.25
  local deadline = core.now() + timeout * 1000
  while true do
    local ok, err = self:health()
    if ok then return true end
    if not err.retryable or core.now() + interval * 1000 > deadline then
      return nil, err
    end
    if deferring() then coroutine.yield("sleep", interval * 1000)
    else core.sleep(interval * 1000) end
  end
end

--- GET /v1/models: the decoded answer (`data` and `models` lists).
-- @within Client
function Client:models() return self:_request("GET", "/v1/models") end

--- GET /props: server and model properties (chat template, n_ctx, ...).
-- @within Client
function Client:props() return self:_request("GET", "/props") end

--- GET /slots (on by default; off with the server flag no-slots): array of slots.
-- @within Client
function Client:slots() return self:_request("GET", "/slots") end

--- GET /metrics (needs the server flag metrics): Prometheus text.
-- @within Client
function Client:metrics() return self:_request("GET", "/metrics", nil, true) end

--- POST /tokenize: the tokens of `text` (ids, or {id, piece} with
-- opts.with_pieces; a piece that is not valid UTF-8 comes as a byte array).
-- @within Client
function Client:tokenize(text, opts)
  argcheck(type(text) == "string", 1, "tokenize", "string expected, got " .. type(text))
  local body = copy(opts, { content = text })
  local obj, err = self:_request("POST", "/tokenize", body)
  if not obj then return nil, err end
  return obj.tokens
end

--- POST /detokenize: the text of an array of token ids.
-- @within Client
function Client:detokenize(tokens)
  argcheck(type(tokens) == "table", 1, "detokenize", "table expected, got " .. type(tokens))
  local obj, err = self:_request("POST", "/detokenize", { tokens = json.array(copy(tokens)) })
  if not obj then return nil, err end
  return obj.content
end

--- POST /apply-template: the prompt the chat template makes of a chat
-- request (system first, as in chat).
-- @within Client
function Client:apply_template(req)
  argcheck(type(req) == "table", 1, "apply_template", "table expected, got " .. type(req))
  local body = self.provider.chat_body(req, false, self.model)
  body.max_tokens, body.stream, body.model = nil, nil, nil
  local obj, err = self:_request("POST", "/apply-template", body)
  if not obj then return nil, err end
  return obj.prompt
end

--- POST /v1/embeddings (needs the server flag embeddings): one input or
-- an array of them. {embeddings = {vector, ...} in input order, usage,
-- model, raw}.
-- @within Client
function Client:embeddings(input, opts)
  argcheck(type(input) == "string" or type(input) == "table", 1, "embeddings",
           "string or table expected, got " .. type(input))
  local body = copy(opts, { input = input })
  if body.model == nil then body.model = self.model end
  local obj, err = self:_request("POST", "/v1/embeddings", body)
  if not obj then return nil, err end
  local out = {}
  for i, d in ipairs(type(obj.data) == "table" and obj.data or {}) do
    out[(tonumber(d.index) or (i - 1)) + 1] = d.embedding
  end
  local u = type(obj.usage) == "table" and obj.usage or {}
  return { embeddings = out, model = obj.model, raw = obj,
           usage = { input_tokens = u.prompt_tokens and math.floor(u.prompt_tokens) } }
end

--- POST /v1/rerank (needs the server flag reranking): documents scored
-- against query, best first: {{index =, relevance_score =}, ...}.
-- @within Client
function Client:rerank(query, documents, opts)
  argcheck(type(query) == "string", 1, "rerank", "string expected, got " .. type(query))
  argcheck(type(documents) == "table", 2, "rerank", "table expected, got " .. type(documents))
  local body = copy(opts, { query = query, documents = json.array(copy(documents)) })
  if body.model == nil then body.model = self.model end
  local obj, err = self:_request("POST", "/v1/rerank", body)
  if not obj then return nil, err end
  local results = type(obj.results) == "table" and obj.results or {}
  for _, r in ipairs(results) do
    if type(r.index) == "number" then r.index = math.floor(r.index) end
  end
  table.sort(results, function(a, b) return (a.relevance_score or 0) > (b.relevance_score or 0) end)
  return results
end

local function native_body(fname, req, stream, need)
  argcheck(type(req) == "table", 1, fname, "table expected, got " .. type(req))
  if need then
    argcheck(req[need] ~= nil, 1, fname, "'" .. need .. "' is required")
  end
  local body = copy(req)
  body.stream = stream
  return body
end

function Client:_native(path, body)
  local res, err = self:_request("POST", path, body, false, native.result)
  if not res then return nil, err end
  return res
end

function Client:_native_stream(path, body, opts)
  local t = self:_open("POST", path, json.encode(body), "sse")
  local s = self:_stream(t, native.decoder(opts))
  return function() return s:next() end, s, nil, s
end

--- POST /completion (native): a prompt (string, tokens, or mixed) and
-- llama-server's sampling fields. {content, stop_reason, usage, timings,
-- probs (n_probs), raw}.
-- @within Client
function Client:completion(req)
  return self:_native("/completion", native_body("completion", req, false, "prompt"))
end

--- The same, streamed: the iterator of chat_stream (content events with
-- `probs` when n_probs is set; done; error).
-- @within Client
function Client:completion_stream(req, opts)
  return self:_native_stream("/completion", native_body("completion_stream", req, true, "prompt"),
                             check_stream_opts(opts, "completion_stream"))
end

--- POST /infill: fill-in-the-middle for editors (input_prefix,
-- input_suffix, input_extra = {{filename =, text =}, ...}, prompt).
-- @within Client
function Client:infill(req)
  return self:_native("/infill", native_body("infill", req, false, "input_prefix"))
end

--- The same, streamed.
-- @within Client
function Client:infill_stream(req, opts)
  return self:_native_stream("/infill", native_body("infill_stream", req, true, "input_prefix"),
                             check_stream_opts(opts, "infill_stream"))
end

-- }=====================================================================

--- Streams a chat: `for ev in client:chat_stream(req) do ... end`.
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @return step, stream, nil, stream: a generic-for iterator whose 4th value
--   Lua 5.4 closes however the loop ends
-- Returns step, stream, nil, stream: Lua 5.4 closes the stream however
-- the loop ends; elsewhere use open_stream and :close() on early exit.
function Client:chat_stream(req, opts)
  if type(req) ~= "table" then
    error("bad argument #1 to 'chat_stream' (table expected, got " .. type(req) .. ")", 2)
  end
  local s = self:open_stream(req, check_stream_opts(opts, "chat_stream"))
  return function() return s:next() end, s, nil, s
end

return M
