--- The Ollama provider: Ollama's native chat API (`POST /api/chat`),
-- streamed as NDJSON (one JSON object per line, the last with
-- `"done": true`). Pure translation, no I/O; the provider interface is
-- described in providers/llamacpp.lua.
--
-- Request: the common fields (OpenAI-style messages, `system`, tools,
-- max_tokens, temperature, stop, seed, ...) become Ollama's: sampling
-- fields go into `options` (max_tokens -> num_predict, default 2048),
-- `response_format`/`json_schema` -> `format`, assistant tool-call
-- arguments are sent as JSON objects, tool results get `tool_name`, and
-- content given as parts becomes text plus `images` (base64). Ollama's own
-- fields (`options`, `keep_alive`, `think`, `format`) pass through, as
-- does every other field.
-- Answer: `message.content` -> content, `message.thinking` -> reasoning,
-- `message.tool_calls` -> tool calls (arguments as JSON text),
-- `done_reason` -> stop_reason ("tool_calls" when the model called a
-- tool), `prompt_eval_count`/`eval_count` -> usage.
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local base = require "llamacpp.providers.base"
local media = require "llamacpp.media"
local args = require "llamacpp.args"

-- A key is sent as a bearer token: Ollama's API has one only behind a
-- proxy or on ollama.com.
local M = base.provider{
  name = "ollama",
  chat_path = "/api/chat",
  framing = "ndjson",
  default_endpoint = "http://localhost:11434",
}

local type, pairs, ipairs, next, concat = type, pairs, ipairs, next, table.concat
local str, int = base.str, base.int

-- Top-level request fields that are model options in Ollama.
local OPTION_FIELDS = {
  temperature = true, top_p = true, top_k = true, min_p = true, typical_p = true,
  seed = true, stop = true, presence_penalty = true, frequency_penalty = true,
  repeat_penalty = true, repeat_last_n = true, num_ctx = true, num_predict = true,
  num_keep = true, num_batch = true, num_gpu = true, num_thread = true,
  mirostat = true, mirostat_eta = true, mirostat_tau = true,
}
-- Ours or translated: not passed as they are.
local HANDLED = { system = true, messages = true, tier = true, max_tokens = true,
                  max_completion_tokens = true, options = true,
                  response_format = true, json_schema = true }

-- "data:image/png;base64,AAAA" -> "AAAA"; a bare base64 string as it is.
local function image_data(url)
  if type(url) ~= "string" then return nil end
  local b64 = url:match("^data:[^,]*;base64,(.*)$")
  if b64 then return b64 end
  if url:match("^https?://") then return nil end   -- Ollama takes no URLs
  return url
end

-- Content parts (OpenAI style) -> text and a list of base64 images.
local function flatten(content)
  if type(content) ~= "table" then return content, nil end
  local text, images = {}, nil
  for i = 1, #content do
    local part = content[i]
    if type(part) == "string" then
      text[#text + 1] = part
    elseif type(part) == "table" then
      if part.type == "text" or (part.type == nil and type(part.text) == "string") then
        text[#text + 1] = part.text
      elseif part.type == "image_url" then
        local u = type(part.image_url) == "table" and part.image_url.url or part.image_url
        images = images or json.array()
        images[#images + 1] = image_data(u)     -- a URL: refused by unsupported()
      elseif part.type == "image" and type(part.source) == "table" then
        images = images or json.array()       -- an Anthropic-style image block
        images[#images + 1] = part.source.data
      end
    end
  end
  return concat(text), images
end

-- Arguments as Ollama wants them: a JSON object, not JSON text.
local function args_object(a)
  if type(a) == "table" then return a end
  if type(a) ~= "string" or a == "" then return json.object() end
  local obj = json.decode(a)
  if type(obj) == "table" then
    if next(obj) == nil then return json.object() end
    return obj
  end
  return json.object()
end

local function convert_messages(req)
  local out = json.array()
  if req.system then out[1] = { role = "system", content = req.system } end
  local names = {}              -- tool_call_id -> function name
  local msgs = req.messages or {}
  for i = 1, #msgs do
    local m = msgs[i]                 -- a table: base.check_request
    local o = {}
    for k, v in pairs(m) do o[k] = v end
    if type(m.content) == "table" then
      local text, images = flatten(m.content)
      o.content = text
      if images then
        local all = json.array()
        for _, b in ipairs(type(m.images) == "table" and m.images or {}) do all[#all + 1] = b end
        for _, b in ipairs(images) do all[#all + 1] = b end
        o.images = all
      end
    elseif m.content == nil or m.content == json.null then
      o.content = ""
    end
    if type(m.tool_calls) == "table" then
      local calls = json.array()
      for j = 1, #m.tool_calls do
        local tc = m.tool_calls[j]
        local fn = type(tc) == "table" and tc["function"] or nil
        if type(fn) == "table" then
          if tc.id then names[tc.id] = fn.name end
          calls[#calls + 1] = { id = tc.id, type = tc.type,
                                ["function"] = { name = fn.name, arguments = args_object(fn.arguments) } }
        else
          calls[#calls + 1] = tc
        end
      end
      o.tool_calls = calls
    end
    if m.role == "tool" and o.tool_name == nil then
      o.tool_name = m.name or names[m.tool_call_id]
    end
    out[#out + 1] = o
  end
  return out
end

--- The JSON body (a table) of a chat request.
-- What of req this wire cannot carry, in words; nil when it carries it
-- all. The router skips a deployment for it; a client raises it.
function M.unsupported(req)
  local _, budget = base.thinking(req)
  if budget then
    return "Ollama has no thinking budget ('thinking_budget'): only thinking on or off"
  end
  local inputs = media.inputs(req)
  if not inputs then return nil end
  if inputs.audio then return "Ollama's /api/chat takes no audio ('input_audio' parts)" end
  local msgs = req.messages or {}
  for i = 1, #msgs do
    local content = type(msgs[i]) == "table" and msgs[i].content
    for j = 1, type(content) == "table" and #content or 0 do
      local part = content[j]
      if type(part) == "table" and part.type == "image_url" then
        local u = type(part.image_url) == "table" and part.image_url.url or part.image_url
        if image_data(u) == nil then return "Ollama takes images as base64 data, not URLs" end
      end
    end
  end
end

function M.chat_body(req, stream, model)
  base.check_request(req)
  local why = M.unsupported(req)
  if why then args.raise("bad request: " .. why) end
  local body = base.passed(req, HANDLED, OPTION_FIELDS)
  local options = {}
  for k in pairs(OPTION_FIELDS) do
    if req[k] ~= nil then options[k] = req[k] end
  end
  options.num_predict = req.max_tokens or req.max_completion_tokens or options.num_predict or 2048
  if type(req.options) == "table" then
    for k, v in pairs(req.options) do options[k] = v end   -- Ollama's own spelling wins
  end
  if type(options.stop) == "string" then options.stop = { options.stop } end
  body.options = options
  local rf = req.response_format
  if body.format == nil then
    if req.json_schema ~= nil then
      body.format = req.json_schema
    elseif type(rf) == "table" and rf.type == "json_object" then
      body.format = "json"
    elseif type(rf) == "table" and rf.type == "json_schema" then
      local js = rf.json_schema
      body.format = type(js) == "table" and (js.schema or js) or nil
    end
  end
  body.messages = convert_messages(req)
  local on = base.thinking(req)
  if on ~= nil and body.think == nil then body.think = on end
  if body.model == nil then body.model = model end
  body.stream = stream and true or false
  return body
end

local function usage_of(obj)
  local i, o = int(obj.prompt_eval_count), int(obj.eval_count)
  if i == nil and o == nil then return nil end
  return { input_tokens = i, output_tokens = o,
           total_tokens = (i and o) and i + o or nil }
end

-- Durations (nanoseconds) in llama-server's timings vocabulary.
local function timings_of(obj)
  local function ms(v) return type(v) == "number" and v / 1e6 or nil end
  if obj.total_duration == nil and obj.eval_duration == nil then return nil end
  local t = {
    prompt_n = int(obj.prompt_eval_count), prompt_ms = ms(obj.prompt_eval_duration),
    predicted_n = int(obj.eval_count), predicted_ms = ms(obj.eval_duration),
    load_ms = ms(obj.load_duration), total_ms = ms(obj.total_duration),
  }
  if t.predicted_n and t.predicted_ms and t.predicted_ms > 0 then
    t.predicted_per_second = t.predicted_n * 1000 / t.predicted_ms
  end
  if t.prompt_n and t.prompt_ms and t.prompt_ms > 0 then
    t.prompt_per_second = t.prompt_n * 1000 / t.prompt_ms
  end
  return t
end

-- One tool call of Ollama's answer in the common shape.
local function tool_call_of(tc, index)
  local fn = type(tc) == "table" and tc["function"]
  if type(fn) ~= "table" then return nil end
  local a = fn.arguments
  if type(a) == "table" then
    a = next(a) == nil and "{}" or json.encode(a)
  elseif type(a) ~= "string" then
    a = "{}"
  end
  return { id = str(tc.id) or ("call_" .. index), type = "function",
           name = str(fn.name), arguments = a,
           index = int(tonumber(fn.index)) }
end

local function stop_reason(obj, has_tools)
  local r = str(obj.done_reason)
  if has_tools and (r == nil or r == "stop") then return "tool_calls" end
  return r
end

--- A non-streamed answer as a result table, or nil, Error.
function M.parse_chat(obj)
  local msg = obj.message
  if type(msg) ~= "table" then
    if obj.error ~= nil then
      return nil, errors.http(500, json.encode(obj), nil, M.label)
    end
    return base.bad_answer("ollama answer has no message", obj)
  end
  local calls
  if type(msg.tool_calls) == "table" then
    for i = 1, #msg.tool_calls do
      local tc = tool_call_of(msg.tool_calls[i], i - 1)
      if tc then
        tc.index = nil
        calls = calls or {}
        calls[#calls + 1] = tc
      end
    end
  end
  local thinking = str(msg.thinking)
  return {
    content = str(msg.content) or "",
    reasoning = thinking ~= "" and thinking or nil,
    tool_calls = calls,
    stop_reason = stop_reason(obj, calls ~= nil),
    usage = usage_of(obj),
    timings = timings_of(obj),
    model = str(obj.model),
    raw = obj,
  }
end


-- Stream decoder: one line of NDJSON per feed(); `finished` on the line
-- with `"done": true`.
local Decoder = base.decoder_class(M.label)
M.decoder = Decoder.new

function Decoder:feed(data, _, push)
  -- a failure after the headers is {"error":"..."} on a line of its own
  local obj, err = self:decode(data, "line")
  if not obj then return err end
  self:identify(obj.model)
  local m = obj.message
  if type(m) == "table" then
    self:text(push, "reasoning", str(m.thinking))
    self:text(push, "content", str(m.content))
    if type(m.tool_calls) == "table" then
      -- Ollama sends each call whole, in one line
      for i = 1, #m.tool_calls do
        local n = #self.tools
        local tc = tool_call_of(m.tool_calls[i], n)
        if tc then
          local slot = self:tool(n)
          slot.id, slot.name = tc.id, tc.name
          base.tool_args(push, slot, tc.arguments)
        end
      end
    end
  end
  if obj.done == true then
    self.finished = true
    self.stop_reason = stop_reason(obj, #self.tools > 0)
    self.usage = usage_of(obj)
    self.timings = timings_of(obj)
  end
  return nil
end

return M
