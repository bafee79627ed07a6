--- The OpenAI provider: any server speaking OpenAI's Chat Completions
-- (`POST <endpoint>/chat/completions`, the endpoint being the base URL as
-- OpenAI's SDKs take it, ending in `/v1`): OpenAI itself, vLLM, OpenRouter,
-- LM Studio, llama-server... Pure translation, no I/O; the provider
-- interface is described in providers/llamacpp.lua, which is this same
-- translation with llama-server's defaults (see M.variant).
local json = require "llamacpp.json"
local args = require "llamacpp.args"
local base = require "llamacpp.providers.base"

local M = {}

local type, pairs = type, pairs
local str, int, ints = base.str, base.int, base.ints

local function usage_of(u)
  if type(u) ~= "table" then return nil end
  local d = u.prompt_tokens_details
  local c = u.completion_tokens_details
  return {
    input_tokens = int(u.prompt_tokens),
    output_tokens = int(u.completion_tokens),
    total_tokens = int(u.total_tokens),
    cached_tokens = type(d) == "table" and int(d.cached_tokens) or nil,
    reasoning_tokens = type(c) == "table" and int(c.reasoning_tokens) or nil,
  }
end

local function tool_calls_of(list)
  if type(list) ~= "table" or #list == 0 then return nil end
  local out = {}
  for i = 1, #list do
    local tc = list[i]
    local fn = type(tc) == "table" and tc["function"] or nil
    if type(fn) == "table" then
      out[#out + 1] = { id = str(tc.id), type = str(tc.type) or "function",
                        name = str(fn.name), arguments = str(fn.arguments) or "" }
    end
  end
  return out
end


--- A message as the server takes it. Assistant tool calls may be given in
-- the shape results have ({id =, name =, arguments =}, as in res.tool_calls
-- or a done event): they are sent as {id, type = "function", function =
-- {name, arguments}}. Other messages go as they are (not copied).
function M.wire_message(m)
  local tcs = type(m) == "table" and m.tool_calls
  if type(tcs) ~= "table" then return m end
  local plain = true
  for i = 1, #tcs do
    if type(tcs[i]) == "table" and tcs[i]["function"] == nil and tcs[i].name ~= nil then plain = false end
  end
  if plain then return m end
  local out = {}
  for k, v in pairs(m) do out[k] = v end
  out.tool_calls = json.array()
  for i = 1, #tcs do
    local tc = tcs[i]
    if type(tc) == "table" and tc["function"] == nil and tc.name ~= nil then
      local a = tc.arguments
      if type(a) == "table" then a = json.encode(a) end
      tc = { id = tc.id, type = "function", ["function"] = { name = tc.name, arguments = a or "{}" } }
    end
    out.tool_calls[i] = tc
  end
  return out
end


--- Our options (providers/base.lua check_options) as llama-server takes
-- them, into body (its /v1/chat/completions and native /completion and
-- /infill alike).
function M.llama_options(body, req, stream)
  if req.progress and stream then body.return_progress = true end
  local on, budget = base.thinking(req)
  if on ~= nil then
    local kw = {}
    if type(req.chat_template_kwargs) == "table" then
      for k, v in pairs(req.chat_template_kwargs) do kw[k] = v end
    end
    kw.enable_thinking = on
    body.chat_template_kwargs = kw
    if not on then budget = 0 end
  end
  if budget then body.thinking_budget_tokens = budget end
end


-- {====== stream decoder ======
-- One per stream (the class is made per variant, for its label). feed()
-- turns one SSE event into normalised events via push(ev); it returns an
-- Error to end the stream with, or nil. `finished` is set by the `[DONE]`
-- terminator.

local tool_args = base.tool_args

local function feed(self, data, name, push)
  if name == true then                 -- the template's plain token
    if data == "" then return nil end
    if self.think then return self:text(push, "content", data) end
    self.content:add(data)
    return nil, { type = "content", content = data }
  end
  if data == "[DONE]" then
    self.finished = true
    return nil
  end
  local obj, err = self:decode(data)
  if not obj then return err end
  self:identify(obj.model, obj.id)
  base.progress(push, obj.prompt_progress)
  local choice = type(obj.choices) == "table" and obj.choices[1]
  if type(choice) == "table" then
    local d = choice.delta
    if type(d) == "table" then
      self:text(push, "reasoning", str(d.reasoning_content) or str(d.reasoning))
      local lp = choice.logprobs
      self:text(push, "content", d.content, "logprobs",
                type(lp) == "table" and type(lp.content) == "table" and lp.content or nil)
      local rf = str(d.refusal)
      if rf and rf ~= "" then self.refusal = (self.refusal or "") .. rf end
      local tcs = d.tool_calls
      if type(tcs) == "table" then
        for i = 1, #tcs do
          local tc = tcs[i]
          if type(tc) == "table" then
            local slot = self:tool(int(tonumber(tc.index)) or (i - 1))
            local fn = type(tc["function"]) == "table" and tc["function"] or {}
            slot.id = str(tc.id) or slot.id
            slot.name = str(fn.name) or slot.name
            tool_args(push, slot, str(fn.arguments) or "")
          end
        end
      end
    end
    local fr = str(choice.finish_reason)
    if fr then self.stop_reason = fr end
  end
  if obj.usage ~= nil then self.usage = usage_of(obj.usage) end
  if type(obj.timings) == "table" then self.timings = obj.timings end  -- ints() at done
  return nil
end

-- The done event has the refusal text, if any, and integer timings.
local function done(self)
  local ev = base.Decoder.done(self)
  ev.refusal = self.refusal
  ev.timings = ints(self.timings)
  return ev
end

-- }======


--- A provider for one flavour of Chat Completions server. `spec` has
-- name, label, default_endpoint, chat_path and default_max_tokens (nil:
-- send max_tokens only when the caller sets it).
function M.variant(spec)
  local P = base.provider{
    name = spec.name,
    label = spec.label,
    chat_path = spec.chat_path,
    default_endpoint = spec.default_endpoint,
    template = spec.template,
  }
  local label = spec.label
  local llama = spec.llama
  -- llama-server keeps a stream sent with X-Conversation-Id and serves it
  -- again from any byte (GET /v1/stream/ID?from=N): client.lua resumes
  P.resumable = llama or nil
  -- llama-server counts a chat request's prompt tokens (template and tools
  -- included) without running it
  P.count_path = llama and "/v1/chat/completions/input_tokens" or nil

  --- Why this server cannot take req (nil when it can): only llama-server
  -- has a standard switch and budget for reasoning.
  function P.unsupported(req)
    if not llama and (type(req.thinking) == "boolean" or req.thinking_budget ~= nil) then
      return label .. " has no standard switch for thinking ('thinking', 'thinking_budget'):" ..
             " send the server's own field (reasoning_effort, chat_template_kwargs, ...)"
    end
  end

  --- The JSON body (a table) of a chat request. Every field the caller set
  -- passes through, except `system` (the first message), `tier` and our
  -- options (providers/base.lua check_options), which llama-server's
  -- variant translates: progress -> return_progress (streams only),
  -- thinking -> chat_template_kwargs.enable_thinking (false: and
  -- thinking_budget_tokens 0), thinking_budget -> thinking_budget_tokens.
  function P.chat_body(req, stream, model)
    base.check_request(req)
    local why = P.unsupported(req)
    if why then args.raise("bad request: " .. why) end
    local msgs = req.messages
    local body = base.passed(req, base.LOCAL_FIELDS)
    local out = json.array()
    if req.system then out[1] = { role = "system", content = req.system } end
    if msgs then
      for i = 1, #msgs do out[#out + 1] = M.wire_message(msgs[i]) end
    end
    body.messages = out
    if body.max_tokens == nil and body.max_completion_tokens == nil then
      body.max_tokens = spec.default_max_tokens
    end
    if body.model == nil then body.model = model end
    if llama then M.llama_options(body, req, stream) end
    body.stream = stream and true or false
    if stream then
      local so = {}
      if type(req.stream_options) == "table" then
        for k, v in pairs(req.stream_options) do so[k] = v end
      end
      so.include_usage = true
      body.stream_options = so
    else
      body.stream_options = nil
    end
    return body
  end

  --- A non-streamed answer (decoded JSON) as a result table, or nil, Error.
  function P.parse_chat(obj)
    local choice = type(obj.choices) == "table" and obj.choices[1]
    local msg = type(choice) == "table" and choice.message
    if type(msg) ~= "table" then return base.bad_answer(label .. " answer has no choices[1].message", obj) end
    local lp = type(choice.logprobs) == "table" and choice.logprobs.content
    return {
      content = str(msg.content) or "",
      reasoning = str(msg.reasoning_content) or str(msg.reasoning),
      tool_calls = tool_calls_of(msg.tool_calls),
      refusal = str(msg.refusal),
      stop_reason = str(choice.finish_reason),
      usage = usage_of(obj.usage),
      timings = ints(obj.timings),
      logprobs = type(lp) == "table" and lp or nil,
      model = str(obj.model),
      id = str(obj.id),
      raw = obj,
    }
  end

  -- the stream decoder: feed and done above, with this variant's label
  local Decoder = base.decoder_class(label)
  Decoder.feed, Decoder.done = feed, done
  P.decoder = Decoder.new

  return P
end


-- This module is itself the "openai" provider. OpenAI deprecates
-- `max_tokens` (its reasoning models refuse it) and has its own limits, so
-- nothing is added when the caller sets neither it nor
-- `max_completion_tokens`.
local P = M.variant{
  name = "openai",
  label = "OpenAI-compatible server",
  default_endpoint = "https://api.openai.com/v1",
  chat_path = "/chat/completions",
  default_max_tokens = nil,
}
for k, v in pairs(P) do M[k] = v end

return M
