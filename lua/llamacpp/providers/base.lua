--- What every provider shares, so that a provider file holds only its
-- wire's differences: the request check, the fields passed through, the
-- small readers of decoded JSON and the answer's protocol error; and the
-- stream decoder's scaffolding (the text kept for done.content and
-- err.partial, tool calls assembled from fragments, the first non-empty
-- model and id, the done event).
--
-- A wire's decoder class comes from decoder_class(label) and adds
-- feed(data, name, push), which sets self.finished, self.stop_reason,
-- self.usage and self.timings as the wire tells them; it overrides
-- done() (calling base.Decoder.done) only to add what its wire has and
-- others do not. The provider interface itself is described in
-- providers/llamacpp.lua.
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local text = require "llamacpp.text"
local args = require "llamacpp.args"

local M = {}

local type, pairs, setmetatable, concat = type, pairs, setmetatable, table.concat

--- v when it is a string, else nil (JSON null, numbers, tables).
function M.str(v) if type(v) == "string" then return v end end

M.int, M.ints = json.int, json.ints

-- Request fields that are ours, not the server's.
M.LOCAL_FIELDS = { system = true, messages = true, tier = true }

-- Our options of every request (check_options), never passed through.
local OPTIONS = { progress = true, thinking_budget = true, think_tags = true,
                  resumable = true, conversation_id = true, resume = true, session = true,
                  on_overflow = true }
M.OPTIONS = OPTIONS

--- Checks the fields every provider reads; raises at the caller's line
-- (of client:chat, router:chat, ...). The router checks a request with
-- this before any attempt, so no provider meets a request that fails it.
function M.check_request(req)
  local msgs = req.messages
  if msgs == nil and req.system == nil then
    args.raise("bad request: 'messages' is required")
  end
  if msgs ~= nil then
    if type(msgs) ~= "table" then
      args.raise("bad request: 'messages' must be a table (got " .. type(msgs) .. ")")
    end
    for i = 1, #msgs do
      if type(msgs[i]) ~= "table" then
        args.raise("bad request: messages[" .. i .. "] must be a table")
      end
    end
  end
  if req.system ~= nil and type(req.system) ~= "string" then
    args.raise("bad request: 'system' must be a string (got " .. type(req.system) .. ")")
  end
  M.check_options(req)
end

--- The fields of req that pass through to the server as they are: all
-- but those in `skip` (and in `also`, when given) and our own options
-- (check_options). A new table.
function M.passed(req, skip, also)
  local body = {}
  for k, v in pairs(req) do
    if not skip[k] and not (also and also[k]) and not OPTIONS[k]
       and not (k == "thinking" and type(v) == "boolean") then
      body[k] = v
    end
  end
  return body
end

--- Our request options, the same for every provider (each translates
-- them; none passes them through): checked here, raising at the
-- caller's line. `thinking` is ours when it is a boolean (a table is
-- Anthropic's own field and passes through).
--   progress         boolean: prompt-processing progress events (streams)
--   thinking         boolean: reasoning on or off
--   thinking_budget  integer >= 0: at most this many reasoning tokens
--   think_tags       "split" | "keep": a leading <think>...</think> in the
--                    content goes to reasoning ("split") or stays ("keep")
--   resumable        boolean: a stream that reattaches after a cut (llama-server)
--   conversation_id  string: the id of a resumable stream (implies resumable)
--   resume           {attempts =, within =}: how hard to try (implies resumable)
--   session          string: the conversation's key for the router's affinity
--                    strategy (never sent)
--   on_overflow      "error" (default) | "trim": a chat the server refuses as
--                    longer than its window is fitted (client:fit) and sent again
function M.check_options(req)
  local p = req.progress
  if p ~= nil and type(p) ~= "boolean" then
    args.raise("bad request: 'progress' must be a boolean (got " .. type(p) .. ")")
  end
  local t = req.thinking
  if t ~= nil and type(t) ~= "boolean" and type(t) ~= "table" then
    args.raise("bad request: 'thinking' must be a boolean (got " .. type(t) .. ")")
  end
  local b = req.thinking_budget
  if b ~= nil and (type(b) ~= "number" or b < 0 or b ~= math.floor(b)) then
    args.raise("bad request: 'thinking_budget' must be an integer >= 0 (got " .. tostring(b) .. ")")
  end
  if t == false and b and b > 0 then
    args.raise("bad request: 'thinking = false' contradicts 'thinking_budget = " .. b .. "'")
  end
  local tt = req.think_tags
  if tt ~= nil and tt ~= "split" and tt ~= "keep" then
    args.raise("bad request: 'think_tags' must be \"split\" or \"keep\" (got " .. tostring(tt) .. ")")
  end
  local of = req.on_overflow
  if of ~= nil and of ~= "error" and of ~= "trim" then
    args.raise("bad request: 'on_overflow' must be \"error\" or \"trim\" (got " .. tostring(of) .. ")")
  end
  local sk = req.session
  if sk ~= nil and (type(sk) ~= "string" or sk == "") then
    args.raise("bad request: 'session' must be a non-empty string (got " ..
               (type(sk) == "string" and '""' or type(sk)) .. ")")
  end
  M.resume_of(req)
end

local RESUME = { attempts = 5, within = 30 }

--- What req asks of resuming: nil (not resumable), or {id = (nil: the
-- client makes one), attempts =, within = (seconds)}. Raises on bad values.
function M.resume_of(req)
  local on, id, r = req.resumable, req.conversation_id, req.resume
  if on ~= nil and type(on) ~= "boolean" then
    args.raise("bad request: 'resumable' must be a boolean (got " .. type(on) .. ")")
  end
  if id ~= nil and (type(id) ~= "string" or #id < 1 or #id > 128 or id:find("[^%w._~-]")) then
    args.raise("bad request: 'conversation_id' must be 1 to 128 letters, digits or . _ ~ - (got " ..
               (type(id) == "string" and ("%q"):format(id:sub(1, 40)) or type(id)) .. ")")
  end
  if r ~= nil and type(r) ~= "table" then
    args.raise("bad request: 'resume' must be a table {attempts =, within =} (got " .. type(r) .. ")")
  end
  if on == false and (id or r) then
    args.raise("bad request: 'resumable = false' contradicts '" .. (id and "conversation_id" or "resume") .. "'")
  end
  if not (on or id or r) then return nil end
  local out = { id = id, attempts = RESUME.attempts, within = RESUME.within }
  for k, v in pairs(r or {}) do
    if RESUME[k] == nil then args.raise("bad request: unknown 'resume' field '" .. tostring(k) .. "'") end
    if type(v) ~= "number" or v ~= v or v < 0 or (k == "attempts" and v ~= math.floor(v)) then
      args.raise("bad request: 'resume." .. k .. "' must be a" .. (k == "attempts" and "n integer" or " number") ..
                 " >= 0 (got " .. tostring(v) .. ")")
    end
    out[k] = v
  end
  return out
end

--- What req asks of reasoning: false (off), true (on) or nil (the
-- server's default), and the budget (nil: none). thinking_budget = 0 is off.
function M.thinking(req)
  local on, budget = req.thinking, req.thinking_budget
  if type(on) ~= "boolean" then on = nil end
  if budget == 0 then on = false; budget = nil end
  if budget and on == nil then on = true end
  return on, budget
end

--- Header lines for an API key sent as `Authorization: Bearer <key>`.
function M.bearer(key)
  if key then return { "Authorization: Bearer " .. key } end
  return {}
end

--- A provider table from its wire's description (fields as in
-- providers/llamacpp.lua), with the defaults: `label` the name, `framing`
-- "sse", `headers` a bearer key. A new table.
function M.provider(spec)
  local P = {}
  for k, v in pairs(spec) do P[k] = v end
  P.label = P.label or P.name
  P.framing = P.framing or "sse"
  P.headers = P.headers or M.bearer
  return P
end

--- The protocol Error of an answer without what the wire promises
-- (`message` says what is missing); nil, Error.
function M.bad_answer(message, obj)
  return nil, errors.new("protocol", message, { body = json.encode(obj):sub(1, 4096) })
end

--- A function mapping a wire's stop reason to the common one: map[r]
-- where the map has r (false: no stop reason), else r as it is; nil for
-- anything but a string.
function M.stop_reasons(map)
  return function(r)
    if type(r) ~= "string" then return nil end
    local m = map[r]
    if m == nil then return r end
    return m or nil
  end
end


local function rate(n, ms)
  if type(n) == "number" and type(ms) == "number" and ms > 0 then return n * 1000 / ms end
end

--- The figures of an answer that read the same for every provider, from
-- what the server gave in r (a result or done event): `usage` (tokens)
-- and `timings` (llama-server's; Ollama's durations are given in the same
-- words). {input_tokens (the whole prompt, cached part included),
-- cached_tokens, output_tokens, prompt_ms, generation_ms,
-- prompt_tokens_per_s, generation_tokens_per_s}; a figure the server did
-- not give is absent. The client adds its own clock's first_token_ms and
-- total_ms. A provider whose usage counts otherwise has its own stats(r).
function M.stats(r)
  local u, t = r.usage or {}, r.timings or {}
  local s = {
    input_tokens = u.input_tokens,
    cached_tokens = u.cached_tokens or t.cache_n,
    output_tokens = u.output_tokens or t.predicted_n,
    prompt_ms = t.prompt_ms,
    generation_ms = t.predicted_ms,
    prompt_tokens_per_s = t.prompt_per_second or rate(t.prompt_n, t.prompt_ms),
    generation_tokens_per_s = t.predicted_per_second or rate(t.predicted_n, t.predicted_ms),
  }
  if s.input_tokens == nil and type(t.prompt_n) == "number" then
    s.input_tokens = t.prompt_n + (s.cached_tokens or 0)
  end
  return s
end


-- {====== think tags ======
-- Some templates (or reasoning_format = "none") leave the reasoning in the
-- content, as a leading <think>...</think>. A splitter moves that block
-- to reasoning, whatever the pieces the content comes in: the tags may be
-- cut anywhere. Only a leading block (after white space) counts; the
-- white space after it is dropped; the rest of the content is left as it
-- is.

local OPEN, CLOSE = "<think>", "</think>"

-- The length of the longest end of s that begins `tag` (a tag cut short).
local function cut_tag(s, tag)
  for n = math.min(#s, #tag - 1), 1, -1 do
    if s:sub(-n) == tag:sub(1, n) then return n end
  end
  return 0
end

--- A splitter: split(s, emit) takes the next piece of content and calls
-- emit(kind, text) with kind "reasoning" or "content"; flush(emit) at
-- the end gives what it still holds.
function M.think_splitter()
  local state, held = "start", ""
  local sp = {}
  function sp.split(s, emit)
    if state == "off" then return emit("content", s) end
    s = held .. s
    held = ""
    if state == "start" then
      local rest = s:match("^%s*(.*)$")
      if #rest < #OPEN and OPEN:sub(1, #rest) == rest then held = s; return end
      if rest:sub(1, #OPEN) ~= OPEN then state = "off"; return emit("content", s) end
      s, state = rest:sub(#OPEN + 1), "in"
    end
    if state == "in" then
      local i, j = s:find(CLOSE, 1, true)
      if not i then
        local n = cut_tag(s, CLOSE)
        if #s > n then emit("reasoning", s:sub(1, #s - n)) end
        held = s:sub(#s - n + 1)
        return
      end
      if i > 1 then emit("reasoning", s:sub(1, i - 1)) end
      s, state = s:sub(j + 1), "after"
    end
    s = s:match("^%s*(.*)$")                     -- state "after"
    if s ~= "" then state = "off"; emit("content", s) end
  end
  function sp.flush(emit)
    local h = held
    held = ""
    if h == "" then return end
    if state == "in" then emit("reasoning", h) elseif state == "start" then emit("content", h) end
  end
  return sp
end

--- The same on a whole answer (r.content and r.reasoning, in place).
function M.split_think(r)
  if type(r.content) ~= "string" then return end
  local out = { content = {}, reasoning = { r.reasoning } }
  local function emit(kind, s) out[kind][#out[kind] + 1] = s end
  local sp = M.think_splitter()
  sp.split(r.content, emit)
  sp.flush(emit)
  r.content = concat(out.content)
  if #out.reasoning > 0 then r.reasoning = concat(out.reasoning) end
end

-- }======


-- {====== decoder ======

--- The methods every decoder has; a provider's class (decoder_class)
-- starts as a copy of them.
local Decoder = {}
M.Decoder = Decoder

--- A new decoder class for a wire whose messages name it `label`:
-- Decoder's methods copied (no __index chain on the hot path) and
-- `new(opts)`, which makes one decoder for one stream. opts.assemble =
-- false: keep no text for done.content and err.partial.
function M.decoder_class(label)
  local D = { label = label }
  for k, v in pairs(Decoder) do D[k] = v end
  D.__index = D
  function D.new(opts)
    local keep = text.keep(opts)
    return setmetatable({ content = text.new(keep), reasoning = text.new(keep), tools = {},
                          finished = false }, D)
  end
  return D
end

--- An event's JSON object, or nil and the Error that ends the stream:
-- malformed JSON, or an error object the server sent inside the 200
-- stream ({"error": ...}). `what` names the event in the message.
function Decoder:decode(data, what)
  local obj, err = errors.decode_event(data, what)
  if not obj then return nil, err end
  if obj.error ~= nil then return nil, errors.in_stream(data, obj.error, self.label) end
  return obj
end

--- Keeps the stream's model and id: the first non-empty ones, as some
-- servers open with a chunk that has none (Azure's content-filter notice,
-- "model": "" and "id": ""); "" when no chunk has better.
function Decoder:identify(model, id)
  local m = self.model
  if (m == nil or m == "") and type(model) == "string" then self.model = model end
  local i = self.id
  if (i == nil or i == "") and type(id) == "string" then self.id = id end
end

--- Text s of `kind` ("content" or "reasoning"), when it is a non-empty
-- string: kept for done, and pushed as an event (with ev[key] = value
-- when key is given); content through the think splitter when the
-- decoder has one (split_think).
function Decoder:text(push, kind, s, key, value)
  if type(s) ~= "string" or s == "" then return end
  if kind == "content" and self.think then
    return self.think.split(s, function(k, t) self:emit(push, k, t, key, value) end)
  end
  self:emit(push, kind, s, key, value)
end

--- llama-server's `prompt_progress` object (when pp is one) pushed as a
-- progress event: {type = "progress", processed, total, cached, time_ms}.
-- `processed` counts the prompt tokens done, those from the cache included.
function M.progress(push, pp)
  if type(pp) ~= "table" then return end
  push({ type = "progress", processed = M.int(pp.processed), total = M.int(pp.total),
         cached = M.int(pp.cache), time_ms = M.int(pp.time_ms) })
end

-- Text s of `kind`, kept for done and pushed as an event (with ev[key] =
-- value when key is given).
function Decoder:emit(push, kind, s, key, value)
  self[kind]:add(s)
  local ev = { type = kind, content = s }
  if key then ev[key] = value end
  push(ev)
end

--- From now on, a leading <think>...</think> of the content goes to
-- reasoning events (the request's `think_tags = "split"`); push is the
-- stream's, for what the splitter still holds at the end.
function Decoder:split_think(push)
  self.think = M.think_splitter()
  self.think_push = push
end

--- The tool call at 0-based `index`, made on first sight: {index, id,
-- name, args (the argument fragments)}.
function Decoder:tool(index)
  local slot = self.tools[index + 1]
  if not slot then
    slot = { index = index, args = {} }
    self.tools[index + 1] = slot
  end
  return slot
end

--- A fragment of a tool call's arguments (slot from Decoder:tool): kept
-- for done, and pushed as a tool_call event.
function M.tool_args(push, slot, frag)
  slot.args[#slot.args + 1] = frag
  push({ type = "tool_call", index = slot.index, id = slot.id, name = slot.name,
         arguments = frag })
end

--- The tool calls assembled (nil when none); a call whose arguments are
-- empty gets the class's `empty_arguments` when it has one.
function Decoder:calls()
  local calls, tools = nil, self.tools
  for i = 1, #tools do
    local s = tools[i]
    if s then
      local a = concat(s.args)
      if a == "" and self.empty_arguments then a = self.empty_arguments end
      calls = calls or {}
      calls[#calls + 1] = { id = s.id, type = "function", name = s.name, arguments = a }
    end
  end
  return calls
end

--- The text received so far (for `partial` on errors).
function Decoder:partial()
  return self.content:get()
end

--- The `done` event: the text and tool calls assembled, and what feed()
-- kept of the stop reason, usage, timings, model and id.
function Decoder:done()
  if self.think then
    self.think.flush(function(k, t) self:emit(self.think_push, k, t) end)
  end
  return {
    type = "done",
    content = self.content:get(),
    reasoning = not self.reasoning:empty() and self.reasoning:get() or nil,
    tool_calls = self:calls(),
    stop_reason = self.stop_reason,
    usage = self.usage,
    timings = self.timings,
    model = self.model,
    id = self.id,
  }
end

-- }======

return M
