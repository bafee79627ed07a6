--- The Anthropic provider: the Messages API (`POST /v1/messages`), its
-- answers and its SSE stream of named events. Pure translation, no I/O;
-- the provider interface is described in providers/llamacpp.lua.
--
-- Request: the common (OpenAI-style) request becomes a Messages request:
-- `system` and system messages -> the top-level `system`; max_tokens
-- (required there) defaults to 2048; `stop` -> `stop_sequences`; tools
-- `{type="function", function={name, description, parameters}}` ->
-- `{name, description, input_schema}`; tool_choice "auto"/"required"/
-- "none"/{function=...} -> {type="auto"|"any"|"none"|"tool"}; an
-- assistant message's tool_calls -> `tool_use` blocks (arguments decoded),
-- and consecutive `role = "tool"` messages -> one user message of
-- `tool_result` blocks; image_url parts -> image blocks. Messages and
-- blocks already in Anthropic's shape pass as they are, and so does every
-- other field (temperature, top_p, top_k, metadata, thinking, ...).
-- Answer: text blocks -> content, thinking blocks -> reasoning (and
-- `thinking_blocks`, with their signatures, to send back in a later turn),
-- tool_use blocks -> tool calls with the input as JSON text; stop_reason
-- end_turn/stop_sequence -> "stop", max_tokens -> "length", tool_use ->
-- "tool_calls" (others as they are); usage input/output tokens.
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local args = require "llamacpp.args"
local base = require "llamacpp.providers.base"
local media = require "llamacpp.media"

local M = base.provider{
  name = "anthropic", chat_path = "/v1/messages", default_endpoint = "https://api.anthropic.com",
  version = "2023-06-01",     -- the anthropic-version header
  -- counts a request's input tokens; takes only these fields of the body
  count_path = "/v1/messages/count_tokens",
  count_fields = { model = true, messages = true, system = true, tools = true, tool_choice = true,
                   thinking = true, mcp_servers = true },
}

local type, pairs, ipairs, next, concat = type, pairs, ipairs, next, table.concat
local str, int, tool_args = base.str, base.int, base.tool_args

function M.headers(key)
  local h = { "anthropic-version: " .. M.version }
  if key then h[#h + 1] = "x-api-key: " .. key end
  return h
end

-- Translated or ours: not passed through as they are.
local HANDLED = { system = true, messages = true, tier = true, stop = true,
                  tools = true, tool_choice = true, max_completion_tokens = true,
                  parallel_tool_calls = true }

local STOP_REASONS = { end_turn = "stop", stop_sequence = "stop",
                       max_tokens = "length", tool_use = "tool_calls" }
M.STOP_REASONS = STOP_REASONS

-- The HTTP status an error type of the API goes with (for error events
-- inside a 200 stream, which carry only the type).
local ERROR_STATUS = {
  invalid_request_error = 400, authentication_error = 401, billing_error = 402,
  permission_error = 403, not_found_error = 404, request_too_large = 413,
  rate_limit_error = 429, api_error = 500, timeout_error = 504,
  overloaded_error = 529,
}

local function object(t)
  if type(t) ~= "table" or next(t) == nil then return json.object() end
  return t
end

-- JSON text of tool arguments -> the object Anthropic's `input` wants.
local function input_of(a)
  if type(a) == "table" then return object(a) end
  if type(a) == "string" and a ~= "" then
    local obj = json.decode(a)
    if type(obj) == "table" then return object(obj) end
  end
  return json.object()
end

-- One OpenAI-style content part -> an Anthropic block.
local function block_of(part)
  if type(part) == "string" then return { type = "text", text = part } end
  if type(part) ~= "table" then return part end
  if part.type == "image_url" then
    local u = type(part.image_url) == "table" and part.image_url.url or part.image_url
    if type(u) == "string" then
      local mtype, data = u:match("^data:([^;,]+);base64,(.*)$")
      if mtype then
        return { type = "image", source = { type = "base64", media_type = mtype, data = data } }
      end
      return { type = "image", source = { type = "url", url = u } }
    end
  end
  return part                         -- text, image, document, tool_result...
end

local function blocks_of(content)
  if content == nil or content == json.null then return json.array() end
  if type(content) == "string" then
    local out = json.array()
    if content ~= "" then out[1] = { type = "text", text = content } end
    return out
  end
  local out = json.array()
  for i = 1, #content do out[#out + 1] = block_of(content[i]) end
  return out
end

local function content_of(content)
  if type(content) == "table" then return blocks_of(content) end
  return content
end

-- OpenAI-style messages -> Anthropic messages, and the system text found
-- among them (role "system"/"developer").
local function convert_messages(msgs)
  local out, system = json.array(), {}
  local pending                       -- the user message collecting tool results
  for i = 1, #msgs do
    local m = msgs[i]                 -- a table: base.check_request
    local role = m.role
    if role == "system" or role == "developer" then
      local c = m.content
      if type(c) == "table" then
        for _, b in ipairs(c) do
          if type(b) == "table" and type(b.text) == "string" then system[#system + 1] = b.text end
        end
      elseif type(c) == "string" then
        system[#system + 1] = c
      end
      pending = nil
    elseif role == "tool" then
      local r = { type = "tool_result", tool_use_id = m.tool_call_id,
                  content = content_of(m.content) }
      if m.is_error then r.is_error = true end
      if pending then
        pending.content[#pending.content + 1] = r
      else
        pending = { role = "user", content = json.array{ r } }
        out[#out + 1] = pending
      end
    elseif role == "assistant" and (type(m.tool_calls) == "table" or type(m.thinking_blocks) == "table") then
      local content = json.array()
      for _, b in ipairs(type(m.thinking_blocks) == "table" and m.thinking_blocks or {}) do
        content[#content + 1] = b
      end
      for _, b in ipairs(blocks_of(m.content)) do content[#content + 1] = b end
      for _, tc in ipairs(type(m.tool_calls) == "table" and m.tool_calls or {}) do
        local fn = type(tc) == "table" and tc["function"]
        if type(fn) == "table" then
          content[#content + 1] = { type = "tool_use", id = tc.id, name = fn.name,
                                    input = input_of(fn.arguments) }
        elseif type(tc) == "table" then
          content[#content + 1] = tc
        end
      end
      out[#out + 1] = { role = "assistant", content = content }
      pending = nil
    else
      local o = {}
      for k, v in pairs(m) do
        if k ~= "name" then o[k] = v end    -- OpenAI's participant name has no place here
      end
      o.content = content_of(m.content)
      out[#out + 1] = o
      pending = nil
    end
  end
  return out, system
end

local function convert_tools(tools)
  if type(tools) ~= "table" then return tools end
  local out = json.array()
  for i = 1, #tools do
    local t = tools[i]
    local fn = type(t) == "table" and t.type == "function" and t["function"]
    if type(fn) == "table" then
      out[#out + 1] = { name = fn.name, description = fn.description,
                        input_schema = object(fn.parameters or { type = "object" }) }
    else
      out[#out + 1] = t               -- already Anthropic's (or a server tool)
    end
  end
  return out
end

local function convert_tool_choice(tc, parallel)
  local out
  if tc == "auto" then out = { type = "auto" }
  elseif tc == "required" or tc == "any" then out = { type = "any" }
  elseif tc == "none" then out = { type = "none" }
  elseif type(tc) == "table" and tc.type == "function" then
    local fn = type(tc["function"]) == "table" and tc["function"] or {}
    out = { type = "tool", name = fn.name or tc.name }
  elseif type(tc) == "table" then
    out = {}
    for k, v in pairs(tc) do out[k] = v end
  elseif tc ~= nil then
    out = tc
  end
  if parallel == false then
    out = out or { type = "auto" }
    if type(out) == "table" then out.disable_parallel_tool_use = true end
  end
  return out
end

--- The common figures (providers/base.lua stats): Anthropic's
-- input_tokens leaves out what was read from or written to the cache, so
-- the whole prompt is their sum.
function M.stats(r)
  local s = base.stats(r)
  local u = r.usage
  if type(u) == "table" and type(u.input_tokens) == "number" then
    s.input_tokens = u.input_tokens + (u.cached_tokens or 0) + (u.cache_creation_tokens or 0)
  end
  return s
end

-- Anthropic's smallest thinking budget (its API refuses less).
local MIN_BUDGET = 1024

-- The image types the Messages API takes.
local IMAGE_TYPES = { ["image/jpeg"] = true, ["image/png"] = true, ["image/gif"] = true, ["image/webp"] = true }

--- Why the Messages API cannot take req (nil when it can): a thinking
-- budget under its smallest, audio, an image type it does not take.
function M.unsupported(req)
  local _, budget = base.thinking(req)
  if budget and budget < MIN_BUDGET then
    return "Anthropic's smallest thinking budget is " .. MIN_BUDGET .. " tokens (thinking_budget = " ..
           budget .. ")"
  end
  local inputs = media.inputs(req)
  if not inputs then return nil end
  if inputs.audio then return "Anthropic's Messages API takes no audio ('input_audio' parts)" end
  for _, m in ipairs(req.messages) do
    for _, part in ipairs(type(m) == "table" and type(m.content) == "table" and m.content or {}) do
      local u = type(part) == "table" and part.type == "image_url" and
                (type(part.image_url) == "table" and part.image_url.url or part.image_url)
      local mime = type(u) == "string" and u:match("^data:([^;,]+);base64,")
      if mime and not IMAGE_TYPES[mime] then
        return "Anthropic takes JPEG, PNG, GIF and WebP images, not " .. mime
      end
    end
  end
end

--- The JSON body (a table) of a chat request. Our `thinking = true` or
-- `thinking_budget = N` becomes {type = "enabled", budget_tokens = N
-- (default 1024)}; `thinking = false` sends no thinking field. A table
-- `thinking` is Anthropic's own and passes as it is.
function M.chat_body(req, stream, model)
  base.check_request(req)
  local why = M.unsupported(req)
  if why then args.raise("bad request: " .. why) end
  local body = base.passed(req, HANDLED)
  local on, budget = base.thinking(req)
  if on then body.thinking = { type = "enabled", budget_tokens = budget or MIN_BUDGET } end
  local msgs, system = convert_messages(req.messages or {})
  if req.system then table.insert(system, 1, req.system) end
  if #system > 0 then body.system = concat(system, "\n\n") end
  body.messages = msgs
  body.max_tokens = req.max_tokens or req.max_completion_tokens or 2048
  if req.stop ~= nil and body.stop_sequences == nil then
    body.stop_sequences = type(req.stop) == "string" and json.array{ req.stop } or req.stop
  end
  if req.tools ~= nil then body.tools = convert_tools(req.tools) end
  body.tool_choice = convert_tool_choice(req.tool_choice, req.parallel_tool_calls)
  if body.model == nil then body.model = model end
  body.stream = stream and true or nil
  return body
end

local function usage_of(u, into)
  if type(u) ~= "table" then return into end
  into = into or {}
  if u.input_tokens ~= nil then into.input_tokens = int(u.input_tokens) end
  if u.output_tokens ~= nil then into.output_tokens = int(u.output_tokens) end
  if u.cache_read_input_tokens ~= nil then into.cached_tokens = int(u.cache_read_input_tokens) end
  if u.cache_creation_input_tokens ~= nil then
    into.cache_creation_tokens = int(u.cache_creation_input_tokens)
  end
  if type(into.input_tokens) == "number" and type(into.output_tokens) == "number" then
    into.total_tokens = into.input_tokens + into.output_tokens
  end
  return into
end

local stop_reason_of = base.stop_reasons(STOP_REASONS)

--- A non-streamed answer as a result table, or nil, Error.
function M.parse_chat(obj)
  if type(obj.content) ~= "table" then return base.bad_answer("anthropic answer has no content", obj) end
  local text, reasoning, calls, thinking = {}, {}, nil, nil
  for _, b in ipairs(obj.content) do
    if type(b) == "table" then
      if b.type == "text" then
        text[#text + 1] = str(b.text) or ""
      elseif b.type == "thinking" then
        reasoning[#reasoning + 1] = str(b.thinking) or ""
        thinking = thinking or {}
        thinking[#thinking + 1] = b
      elseif b.type == "redacted_thinking" then
        thinking = thinking or {}
        thinking[#thinking + 1] = b
      elseif b.type == "tool_use" then
        calls = calls or {}
        local input = b.input
        calls[#calls + 1] = { id = str(b.id), type = "function", name = str(b.name),
                              arguments = (type(input) ~= "table" or next(input) == nil)
                                          and "{}" or json.encode(input) }
      end
    end
  end
  return {
    content = concat(text),
    reasoning = #reasoning > 0 and concat(reasoning) or nil,
    thinking_blocks = thinking,
    tool_calls = calls,
    stop_reason = stop_reason_of(obj.stop_reason),
    stop_sequence = str(obj.stop_sequence),
    usage = usage_of(obj.usage),
    model = str(obj.model),
    id = str(obj.id),
    raw = obj,
  }
end


--- Stream decoder: one SSE event per feed(), dispatched on its `type`
-- (the same as its `event:` name). `finished` on `message_stop`.
local Decoder = base.decoder_class(M.label)
Decoder.empty_arguments = "{}"        -- a tool without input

function M.decoder(opts)
  local d = Decoder.new(opts)
  d.blocks = {}                       -- content blocks by their index
  return d
end

function Decoder:feed(data, name, push)
  local obj, err = errors.decode_event(data)
  if not obj then return err end
  local t = str(obj.type) or name
  if t == "ping" then return nil end
  if t == "error" then
    local eo = type(obj.error) == "table" and obj.error or {}
    return errors.in_stream(data, nil, M.label, ERROR_STATUS[eo.type])
  end
  if t == "message_start" then
    local m = type(obj.message) == "table" and obj.message or {}
    self:identify(m.model, m.id)
    self.usage = usage_of(m.usage, self.usage)
  elseif t == "content_block_start" then
    local cb = type(obj.content_block) == "table" and obj.content_block or {}
    local blk = { type = cb.type }
    self.blocks[int(obj.index) or #self.blocks] = blk
    if cb.type == "tool_use" then
      local tool = self:tool(#self.tools)
      tool.id, tool.name = str(cb.id), str(cb.name)
      blk.tool = tool
      tool_args(push, tool, "")       -- the call is known: an event at once
    elseif cb.type == "thinking" then
      blk.thinking = { type = "thinking", parts = {}, signature = str(cb.signature) }
      self.thinking = self.thinking or {}
      self.thinking[#self.thinking + 1] = blk.thinking
      local r = str(cb.thinking)
      if r and r ~= "" then blk.thinking.parts[1] = r end
      self:text(push, "reasoning", r)
    elseif cb.type == "redacted_thinking" then
      -- encrypted: nothing to show, but it must go back in the next turn
      self.thinking = self.thinking or {}
      self.thinking[#self.thinking + 1] = { type = "redacted_thinking", data = cb.data }
    elseif cb.type == "text" then
      self:text(push, "content", str(cb.text))
    end
  elseif t == "content_block_delta" then
    local d = type(obj.delta) == "table" and obj.delta or {}
    local blk = self.blocks[int(obj.index)] or {}
    if d.type == "text_delta" then
      self:text(push, "content", str(d.text))
    elseif d.type == "thinking_delta" then
      local r = str(d.thinking)
      if r and r ~= "" and blk.thinking then blk.thinking.parts[#blk.thinking.parts + 1] = r end
      self:text(push, "reasoning", r)
    elseif d.type == "signature_delta" then
      if blk.thinking then blk.thinking.signature = (blk.thinking.signature or "") .. (str(d.signature) or "") end
    elseif d.type == "input_json_delta" then
      local tool = blk.tool
      local frag = str(d.partial_json) or ""
      if tool and frag ~= "" then tool_args(push, tool, frag) end
    end
  elseif t == "message_delta" then
    local d = type(obj.delta) == "table" and obj.delta or {}
    if d.stop_reason ~= nil then
      self.raw_stop_reason = str(d.stop_reason)
      self.stop_reason = stop_reason_of(d.stop_reason)
    end
    if str(d.stop_sequence) then self.stop_sequence = d.stop_sequence end
    self.usage = usage_of(obj.usage, self.usage)
  elseif t == "message_stop" then
    self.finished = true
  end
  -- content_block_stop and event types added later need nothing
  return nil
end

-- The done event has the thinking blocks (to send back in the next turn)
-- and the stop sequence that ended the answer.
function Decoder:done()
  local ev = base.Decoder.done(self)
  local thinking
  for i, b in ipairs(self.thinking or {}) do
    thinking = thinking or {}
    if b.type == "thinking" then
      thinking[i] = { type = "thinking", thinking = concat(b.parts), signature = b.signature }
    else
      thinking[i] = b
    end
  end
  ev.thinking_blocks = thinking
  ev.stop_sequence = self.stop_sequence
  return ev
end

return M
