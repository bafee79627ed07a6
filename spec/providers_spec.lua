-- The openai, ollama and anthropic providers (and llamacpp as the variant
-- of openai), through real clients talking HTTP to the fixture server.
--
-- Where the recorded exchanges come from: spec/fixtures/{openai,ollama,
-- anthropic}_*.response are not captures (no such server here); they were
-- written by hand from each provider's public API reference, byte for
-- byte as the reference shows the wire format:
-- - openai_*: OpenAI API reference, "Chat Completions" (create; the chat
--   completion object; the chat completion chunk object, with
--   stream_options.include_usage giving a last chunk with `choices: []`;
--   streamed tool_calls deltas keyed by `index`) and "Error codes" (429
--   with Retry-After, 401 invalid_api_key).
--   openai_azure_filter_stream is Azure OpenAI's variant of that stream,
--   as its "Content filtering" docs and public recordings show it: a first
--   chunk that is only the prompt's filter verdicts (`prompt_filter_results`,
--   `"choices":[]`, `"id":""`, `"model":""`, `"created":0`), then the usual
--   chunks, each with its `content_filter_results`.
-- - ollama_*: Ollama's docs/api.md, "Generate a chat completion"
--   (`POST /api/chat`, application/x-ndjson stream, one object per line,
--   the last with done/done_reason/prompt_eval_count/eval_count; thinking
--   in message.thinking; tool_calls with arguments as objects; errors as
--   {"error": "..."}).
-- - anthropic_*: Anthropic's Messages API reference and "Streaming
--   Messages" (event: message_start / content_block_start / ping /
--   content_block_delta with text_delta, input_json_delta, thinking_delta,
--   signature_delta / content_block_stop / message_delta / message_stop;
--   error events; "Errors": 429 rate_limit_error, 529 overloaded_error).
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }
local KINDS = { content = true, reasoning = true, tool_call = true, done = true, error = true }

local text_of = util.text_of

local function count(evs, kind)
  local n = 0
  for _, ev in ipairs(evs) do if ev.type == kind then n = n + 1 end end
  return n
end

-- Every event is one of the vocabulary, exactly one done or error, last.
local function check_vocabulary(evs)
  assert.is_true(#evs >= 1)
  for i, ev in ipairs(evs) do
    assert.is_true(KINDS[ev.type] == true, "unknown event type " .. tostring(ev.type))
    if i < #evs then assert.is_true(ev.type ~= "done" and ev.type ~= "error") end
  end
  local last = evs[#evs].type
  assert.is_true(last == "done" or last == "error")
end

describe("llamacpp.providers", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function last_request()
    local reqs = srv:requests()
    return reqs[#reqs]
  end

  local function client(provider, name, opts, extra)
    local o = { provider = provider, endpoint = srv:replay(name, opts) }
    for k, v in pairs(extra or {}) do o[k] = v end
    return llamacpp.new(o)
  end

  describe("openai", function()
    local P = require "llamacpp.providers.openai"

    it("defaults to api.openai.com/v1 and llamacpp keeps llama-server's defaults", function()
      assert.equal("https://api.openai.com/v1", P.default_endpoint)
      assert.equal("/chat/completions", P.chat_path)
      local c = llamacpp.new{ provider = "openai", api_key = "sk-xyz-123456" }
      assert.matches("openai at https://api%.openai%.com/v1", tostring(c))
      local L = require "llamacpp.providers.llamacpp"
      assert.equal("llamacpp", L.name)
      assert.equal("llama-server", L.label)
      assert.equal("/v1/chat/completions", L.chat_path)
      assert.equal("http://127.0.0.1:8080", L.default_endpoint)
    end)

    it("posts to <endpoint>/chat/completions with a bearer key and reads the answer", function()
      local c = client("openai", "openai_chat", nil, { api_key = "sk-test-0001", model = "gpt-4o-mini",
        headers = { ["OpenAI-Organization"] = "org-1" } })
      local res, err = c:chat{ system = "Be brief.", messages = MSGS, temperature = 0.2 }
      assert.is_nil(err)
      assert.equal("Hello! How can I assist you today?", res.content)
      assert.equal("stop", res.stop_reason)
      assert.same({ input_tokens = 19, output_tokens = 10, total_tokens = 29,
                    cached_tokens = 0, reasoning_tokens = 0 }, res.usage)
      assert.equal("gpt-4.1-2025-04-14", res.model)
      assert.equal("chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", res.id)
      assert.equal("openai", res.provider)
      local r = last_request()
      assert.equal("/replay/openai_chat/-/chat/completions", r.path)
      assert.equal("Bearer sk-test-0001", r.headers.authorization)
      assert.equal("org-1", r.headers["openai-organization"])
      local b = cjson.decode(r.body)
      assert.equal("gpt-4o-mini", b.model)
      assert.same({ role = "system", content = "Be brief." }, b.messages[1])
      assert.equal(0.2, b.temperature)
      assert.equal(false, b.stream)
      -- OpenAI has its own limits (and refuses max_tokens on reasoning models)
      assert.is_nil(b.max_tokens)
      assert(c:chat{ messages = MSGS, max_completion_tokens = 50 })
      b = cjson.decode(last_request().body)
      assert.equal(50, b.max_completion_tokens)
      assert.is_nil(b.max_tokens)
    end)

    it("streams content, then done with the usage of the last chunk", function()
      local evs = util.collect(client("openai", "openai_chat_stream"):chat_stream{ messages = MSGS })
      check_vocabulary(evs)
      local last = evs[#evs]
      assert.equal("done", last.type)
      assert.equal("Hello! How can I help you today?", text_of(evs))
      assert.equal(text_of(evs), last.content)
      assert.equal(9, count(evs, "content"))
      assert.equal("stop", last.stop_reason)
      assert.equal(19, last.usage.input_tokens)
      assert.equal(10, last.usage.output_tokens)
      assert.equal("gpt-4o-mini", last.model)
      local b = cjson.decode(last_request().body)
      assert.equal(true, b.stream)
      assert.equal(true, b.stream_options.include_usage)
      assert.equal("text/event-stream", last_request().headers.accept)
    end)

    it("takes done.model and done.id from the first chunk that has them (Azure's filter notice has none)", function()
      local evs = util.collect(client("openai", "openai_azure_filter_stream"):chat_stream{ messages = MSGS })
      check_vocabulary(evs)
      local last = evs[#evs]
      assert.equal("done", last.type)
      assert.equal("The capital of France is Paris.", last.content)
      assert.equal(7, count(evs, "content"))
      assert.equal("stop", last.stop_reason)
      assert.equal("gpt-4o-2024-11-20", last.model)
      assert.equal("chatcmpl-B0fQm2Xk8vR4nT7pL9cJ3sW6yZ1aD", last.id)
      assert.equal(21, last.usage.total_tokens)
    end)

    it("streams tool-call deltas by index and assembles them", function()
      local evs = util.collect(client("openai", "openai_tools_stream", "drip"):chat_stream{ messages = MSGS })
      check_vocabulary(evs)
      local last = evs[#evs]
      assert.equal("tool_calls", last.stop_reason)
      assert.equal(2, #last.tool_calls)
      assert.same({ id = "call_DdmO9pD3xa9XTPNJ32zg2hcA", type = "function", name = "get_weather",
                    arguments = '{"location":"Paris, France"}' }, last.tool_calls[1])
      assert.same({ tz = "CET" }, cjson.decode(last.tool_calls[2].arguments))
      local frags = {}
      for _, ev in ipairs(evs) do
        if ev.type == "tool_call" then
          frags[ev.index + 1] = (frags[ev.index + 1] or "") .. ev.arguments
          assert.equal(ev.index == 0 and "get_weather" or "get_time", ev.name)
        end
      end
      assert.equal(last.tool_calls[1].arguments, frags[1])
      assert.equal(last.tool_calls[2].arguments, frags[2])
      assert.equal(64, last.usage.input_tokens)
    end)

    it("reads tool calls of a whole answer", function()
      local res = assert(client("openai", "openai_chat_tools"):chat{ messages = MSGS })
      assert.equal("tool_calls", res.stop_reason)
      assert.equal("", res.content)
      assert.equal("get_current_weather", res.tool_calls[1].name)
      assert.same({ location = "Boston, MA" }, cjson.decode(res.tool_calls[1].arguments))
    end)

    it("maps 429 with Retry-After as retryable and 401 as final", function()
      local _, err = client("openai", "openai_rate_limited"):chat{ messages = MSGS }
      assert.equal("http", err.kind)
      assert.equal(429, err.status)
      assert.equal(2, err.retry_after)
      assert.is_true(err.retryable)
      assert.equal("req_0b8ef7a3c2d44e1f9a1b2c3d4e5f6a7b", err.request_id)
      assert.matches("^OpenAI%-compatible server error %(429%): Rate limit reached", err.message)
      local evs = util.collect(client("openai", "openai_bad_key"):chat_stream{ messages = MSGS })
      assert.equal(1, #evs)
      assert.equal(401, evs[1].error.status)
      assert.equal("invalid_request_error", evs[1].error.code)
      assert.is_false(evs[1].error.retryable)
      assert.equal("openai", evs[1].error.provider)
    end)
  end)

  describe("ollama", function()
    local P = require "llamacpp.providers.ollama"

    it("defaults to localhost:11434 and NDJSON framing", function()
      assert.equal("http://localhost:11434", P.default_endpoint)
      assert.equal("/api/chat", P.chat_path)
      assert.equal("ndjson", P.framing)
    end)

    it("posts to /api/chat with sampling fields in options and reads the answer", function()
      local c = client("ollama", "ollama_chat", nil, { model = "llama3.2" })
      local res, err = c:chat{ system = "Be brief.", messages = MSGS, temperature = 0.1, seed = 7,
                               stop = "END", keep_alive = "10m", think = false,
                               options = { num_ctx = 8192, temperature = 0.3 },
                               response_format = { type = "json_object" } }
      assert.is_nil(err)
      assert.equal("Hello! How are you today?", res.content)
      assert.equal("stop", res.stop_reason)
      assert.same({ input_tokens = 26, output_tokens = 298, total_tokens = 324 }, res.usage)
      assert.equal(298, res.timings.predicted_n)
      assert.is_true(math.abs(res.timings.predicted_ms - 4799.921) < 1e-6)
      assert.equal("llama3.2", res.model)
      assert.equal("ollama", res.provider)
      local r = last_request()
      assert.equal("/replay/ollama_chat/-/api/chat", r.path)
      assert.is_nil(r.headers.authorization)
      local b = cjson.decode(r.body)
      assert.equal("llama3.2", b.model)
      assert.equal(false, b.stream)
      assert.same({ role = "system", content = "Be brief." }, b.messages[1])
      assert.same(MSGS[1], b.messages[2])
      assert.same({ num_predict = 2048, seed = 7, stop = { "END" }, num_ctx = 8192,
                    temperature = 0.3 }, b.options)        -- Ollama's own spelling wins
      assert.equal("10m", b.keep_alive)
      assert.equal(false, b.think)
      assert.equal("json", b.format)
      assert.is_nil(b.temperature)
      assert.is_nil(b.max_tokens)
      assert.is_nil(b.response_format)
      assert.is_nil(b.system)
    end)

    it("streams NDJSON lines: content, then done with the counts as usage", function()
      for _, opts in ipairs{ "-", "drip" } do
        local evs = util.collect(client("ollama", "ollama_chat_stream", opts):chat_stream{ messages = MSGS,
                                                                                       max_tokens = 64 })
        check_vocabulary(evs)
        local last = evs[#evs]
        assert.equal("done", last.type)
        assert.equal("The sky is blue because of Rayleigh scattering.", text_of(evs))
        assert.equal(9, count(evs, "content"))
        assert.equal(text_of(evs), last.content)
        assert.equal("stop", last.stop_reason)
        assert.equal(26, last.usage.input_tokens)
        assert.equal(9, last.usage.output_tokens)
        assert.equal("llama3.2", last.model)
      end
      local b = cjson.decode(last_request().body)
      assert.equal(true, b.stream)
      assert.equal(64, b.options.num_predict)
    end)

    it("turns message.thinking into reasoning events, done_reason length into length", function()
      local evs = util.collect(client("ollama", "ollama_think_stream"):chat_stream{ messages = MSGS, think = true })
      check_vocabulary(evs)
      assert.equal("Okay, the user greets me.", text_of(evs, "reasoning"))
      assert.equal("reasoning", evs[1].type)
      assert.equal("Hello!", text_of(evs))
      assert.equal("length", evs[#evs].stop_reason)
      assert.equal("Okay, the user greets me.", evs[#evs].reasoning)
      assert.is_true(cjson.decode(last_request().body).think)
    end)

    it("streams whole tool calls as tool_call events with JSON arguments", function()
      local evs = util.collect(client("ollama", "ollama_tools_stream"):chat_stream{ messages = MSGS,
        tools = { { type = "function", ["function"] = { name = "get_temperature",
                    parameters = { type = "object", properties = {} } } } } })
      check_vocabulary(evs)
      local calls = {}
      for _, ev in ipairs(evs) do
        if ev.type == "tool_call" then calls[#calls + 1] = ev end
      end
      assert.equal(2, #calls)
      assert.equal(0, calls[1].index)
      assert.equal(1, calls[2].index)
      assert.equal("get_temperature", calls[1].name)
      assert.same({ city = "New York" }, cjson.decode(calls[1].arguments))
      assert.is_string(calls[1].id)
      local last = evs[#evs]
      assert.equal("tool_calls", last.stop_reason)    -- Ollama says "stop"
      assert.same({ city = "New York", unit = "celsius" }, cjson.decode(last.tool_calls[2].arguments))
      assert.equal(140, last.usage.input_tokens)
      local b = cjson.decode(last_request().body)
      assert.equal("get_temperature", b.tools[1]["function"].name)
    end)

    it("reads tool calls of a whole answer", function()
      local res = assert(client("ollama", "ollama_chat_tools"):chat{ messages = MSGS })
      assert.equal("tool_calls", res.stop_reason)
      assert.equal("get_current_weather", res.tool_calls[1].name)
      assert.same({ format = "celsius", location = "Paris, FR" }, cjson.decode(res.tool_calls[1].arguments))
    end)

    it("sends tool history as Ollama wants it: argument objects, tool_name, images", function()
      local c = client("ollama", "ollama_chat")
      assert(c:chat{ messages = {
        { role = "user", content = {
          { type = "text", text = "What is this? " },
          { type = "image_url", image_url = { url = "data:image/png;base64,iVBORw0KGgo=" } } } },
        { role = "assistant", content = cjson.null, tool_calls = { { id = "call_1", type = "function",
          ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } } } },
        { role = "tool", tool_call_id = "call_1", content = "18 C" } } })
      local b = cjson.decode(last_request().body)
      assert.equal("What is this? ", b.messages[1].content)
      assert.same({ "iVBORw0KGgo=" }, b.messages[1].images)
      assert.equal("", b.messages[2].content)
      assert.same({ city = "Paris" }, b.messages[2].tool_calls[1]["function"].arguments)
      assert.equal("get_weather", b.messages[3].tool_name)
      assert.equal("18 C", b.messages[3].content)
      assert.has_error(function()
        c:chat{ messages = { { role = "user", content = { { type = "image_url",
                image_url = { url = "https://example.com/cat.png" } } } } } }
      end)
    end)

    it("reports a missing model, an error line and a stream cut short", function()
      local _, err = client("ollama", "ollama_model_not_found"):chat{ messages = MSGS }
      assert.equal(404, err.status)
      assert.equal('ollama error (404): model "llama9" not found, try pulling it first', err.message)
      assert.is_false(err.retryable)
      assert.equal("ollama", err.provider)
      local evs = util.collect(client("ollama", "ollama_stream_error"):chat_stream{ messages = MSGS })
      local last = evs[#evs]
      assert.equal("error", last.type)
      assert.equal("http", last.error.kind)
      assert.matches("unexpected EOF", last.error.message)
      assert.equal("The sky", last.error.partial)
      assert.is_false(last.error.retryable)          -- events had reached the caller
      local body = util.body(util.fixture("ollama_chat_stream"))
      local nodone = body:gsub('[^\n]*"done":true[^\n]*\n$', "")
      srv:write("ollama_nodone", fixture.http_response(200, { { "Content-Type", "application/x-ndjson" } },
                                                      nil, { chunks = { nodone } }))
      evs = util.collect(client("ollama", "ollama_nodone"):chat_stream{ messages = MSGS })
      assert.equal("truncated", evs[#evs].error.kind)
      assert.equal("The sky is blue because of Rayleigh scattering.", evs[#evs].error.partial)
    end)

    it("says ollama is not running when nothing listens", function()
      local c = llamacpp.new{ provider = "ollama", endpoint = "http://127.0.0.1:" .. util.closed_port() }
      local evs = util.collect(c:chat_stream{ messages = MSGS })
      assert.equal("connection", evs[1].error.kind)
      assert.matches("^ollama not running at http://127%.0%.0%.1:%d+$", evs[1].error.message)
      assert.is_true(evs[1].error.retryable)
    end)
  end)

  describe("anthropic", function()
    local P = require "llamacpp.providers.anthropic"
    local KEY = "sk-ant-test-000111"

    it("defaults to api.anthropic.com and /v1/messages", function()
      assert.equal("https://api.anthropic.com", P.default_endpoint)
      assert.equal("/v1/messages", P.chat_path)
    end)

    it("posts to /v1/messages with x-api-key, anthropic-version and a top-level system", function()
      local c = client("anthropic", "anthropic_message", nil, { api_key = KEY, model = "claude-sonnet-4-20250514" })
      local res, err = c:chat{ system = "Be brief.", messages = {
        { role = "system", content = "Answer in English." }, MSGS[1] }, stop = "\n\nHuman:", temperature = 0.5 }
      assert.is_nil(err)
      assert.equal("Hi! My name is Claude.", res.content)
      assert.equal("stop", res.stop_reason)                 -- end_turn
      assert.equal(2095, res.usage.input_tokens)
      assert.equal(503, res.usage.output_tokens)
      assert.equal("claude-sonnet-4-20250514", res.model)
      assert.equal("anthropic", res.provider)
      local r = last_request()
      assert.equal("/replay/anthropic_message/-/v1/messages", r.path)
      assert.equal(KEY, r.headers["x-api-key"])
      assert.equal("2023-06-01", r.headers["anthropic-version"])
      assert.is_nil(r.headers.authorization)
      local b = cjson.decode(r.body)
      assert.equal("Be brief.\n\nAnswer in English.", b.system)
      assert.same({ MSGS[1] }, b.messages)
      assert.equal(2048, b.max_tokens)
      assert.same({ "\n\nHuman:" }, b.stop_sequences)
      assert.is_nil(b.stop)
      assert.equal(0.5, b.temperature)
      assert.equal("claude-sonnet-4-20250514", b.model)
      assert.is_nil(b.stream)
    end)

    it("streams named SSE events into content, then done with usage and the mapped stop reason", function()
      for _, opts in ipairs{ "-", "drip" } do
        local evs = util.collect(client("anthropic", "anthropic_stream", opts, { api_key = KEY })
                                 :chat_stream{ messages = MSGS, max_tokens = 100 })
        check_vocabulary(evs)
        local last = evs[#evs]
        assert.equal("done", last.type)
        assert.equal("Hello! How can I help you today?", text_of(evs))
        assert.equal(3, count(evs, "content"))          -- ping gives nothing
        assert.equal(text_of(evs), last.content)
        assert.equal("stop", last.stop_reason)
        assert.equal(25, last.usage.input_tokens)
        assert.equal(15, last.usage.output_tokens)
        assert.equal("msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", last.id)
      end
      local b = cjson.decode(last_request().body)
      assert.equal(true, b.stream)
      assert.equal(100, b.max_tokens)
      assert.is_nil(b.stream_options)
    end)

    it("streams tool_use blocks as tool_call events (input_json_delta fragments)", function()
      local evs = util.collect(client("anthropic", "anthropic_tools_stream"):chat_stream{ messages = MSGS })
      check_vocabulary(evs)
      assert.equal("Okay, let's check the weather.", text_of(evs))
      local frags, first = {}, {}
      for _, ev in ipairs(evs) do
        if ev.type == "tool_call" then
          frags[ev.index + 1] = (frags[ev.index + 1] or "") .. ev.arguments
          first[ev.index + 1] = first[ev.index + 1] or ev
        end
      end
      assert.equal("toolu_01T1x1fJ34qAmk2tNTrN7Up6", first[1].id)
      assert.equal("get_weather", first[1].name)
      assert.equal("get_time", first[2].name)
      local last = evs[#evs]
      assert.equal("tool_calls", last.stop_reason)            -- tool_use
      assert.equal(frags[1], last.tool_calls[1].arguments)
      assert.same({ location = "San Francisco, CA", unit = "fahrenheit" }, cjson.decode(last.tool_calls[1].arguments))
      assert.equal("{}", last.tool_calls[2].arguments)          -- a tool without input
      assert.equal(89, last.usage.output_tokens)
    end)

    it("streams thinking_delta as reasoning, keeps the signature, maps max_tokens to length", function()
      local evs = util.collect(client("anthropic", "anthropic_thinking_stream"):chat_stream{ messages = MSGS,
        thinking = { type = "enabled", budget_tokens = 1024 } })
      check_vocabulary(evs)
      assert.equal("reasoning", evs[1].type)
      local reasoning = text_of(evs, "reasoning")
      assert.matches("^I need to find the GCD", reasoning)
      assert.matches("147 = 7 \195\151 21 %+ 0$", reasoning)
      assert.equal("The greatest common divisor of 1071 and 462 is **21**.", text_of(evs))
      local last = evs[#evs]
      assert.equal("length", last.stop_reason)
      assert.equal(reasoning, last.reasoning)
      assert.equal(1, #last.thinking_blocks)
      assert.equal(reasoning, last.thinking_blocks[1].thinking)
      assert.equal("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds", last.thinking_blocks[1].signature)
      assert.equal(32, last.usage.cached_tokens)
      assert.same({ type = "enabled", budget_tokens = 1024 }, cjson.decode(last_request().body).thinking)
    end)

    it("reads thinking, text and tool_use blocks of a whole answer", function()
      local res = assert(client("anthropic", "anthropic_message_tools"):chat{ messages = MSGS })
      assert.equal("I'll check the current weather in San Francisco for you.", res.content)
      assert.equal("The user wants the weather in San Francisco.", res.reasoning)
      assert.equal("tool_calls", res.stop_reason)
      assert.equal("toolu_01A09q90qw90lq917835lq9", res.tool_calls[1].id)
      assert.same({ location = "San Francisco, CA", unit = "celsius" }, cjson.decode(res.tool_calls[1].arguments))
      assert.equal("thinking", res.thinking_blocks[1].type)
      assert.equal(120, res.usage.cached_tokens)
    end)

    it("translates tools, tool_choice, tool calls and tool results both ways", function()
      -- a tool call streamed by Anthropic, sent back as the common history
      local evs = util.collect(client("anthropic", "anthropic_tools_stream"):chat_stream{ messages = MSGS })
      local done = evs[#evs]
      local history = { MSGS[1],
        { role = "assistant", content = done.content, tool_calls = {
          { id = done.tool_calls[1].id, type = "function",
            ["function"] = { name = done.tool_calls[1].name, arguments = done.tool_calls[1].arguments } },
          { id = done.tool_calls[2].id, type = "function",
            ["function"] = { name = done.tool_calls[2].name, arguments = done.tool_calls[2].arguments } } } },
        { role = "tool", tool_call_id = done.tool_calls[1].id, content = "15 degrees" },
        { role = "tool", tool_call_id = done.tool_calls[2].id, content = "10:42" },
        { role = "user", content = { { type = "text", text = "And this?" },
          { type = "image_url", image_url = { url = "data:image/jpeg;base64,/9j/4AAQ" } } } } }
      local c = client("anthropic", "anthropic_message")
      assert(c:chat{ messages = history, tool_choice = "required", parallel_tool_calls = false,
        tools = { { type = "function", ["function"] = { name = "get_weather", description = "Weather",
                    parameters = { type = "object", properties = { location = { type = "string" } },
                                   required = { "location" } } } },
                  { type = "function", ["function"] = { name = "get_time" } } } })
      local b = cjson.decode(last_request().body)
      assert.same({ name = "get_weather", description = "Weather", input_schema = { type = "object",
        properties = { location = { type = "string" } }, required = { "location" } } }, b.tools[1])
      assert.same({ name = "get_time", input_schema = { type = "object" } }, b.tools[2])
      assert.same({ type = "any", disable_parallel_tool_use = true }, b.tool_choice)
      assert.equal(4, #b.messages)
      local a = b.messages[2]
      assert.equal("assistant", a.role)
      assert.same({ type = "text", text = "Okay, let's check the weather." }, a.content[1])
      assert.same({ type = "tool_use", id = "toolu_01T1x1fJ34qAmk2tNTrN7Up6", name = "get_weather",
                    input = { location = "San Francisco, CA", unit = "fahrenheit" } }, a.content[2])
      assert.equal("get_time", a.content[3].name)
      assert.matches('"input":{}', last_request().body)      -- an object, not []
      local u = b.messages[3]
      assert.equal("user", u.role)
      assert.same({ { type = "tool_result", tool_use_id = "toolu_01T1x1fJ34qAmk2tNTrN7Up6", content = "15 degrees" },
                    { type = "tool_result", tool_use_id = "toolu_01Qm3rTnV8x4Kp2sWb5dYf9H", content = "10:42" } },
                  u.content)
      assert.same({ { type = "text", text = "And this?" },
                    { type = "image", source = { type = "base64", media_type = "image/jpeg", data = "/9j/4AAQ" } } },
                  b.messages[4].content)
      assert.is_nil(b.parallel_tool_calls)
      -- a named tool
      assert(c:chat{ messages = MSGS, tool_choice = { type = "function", ["function"] = { name = "get_time" } } })
      assert.same({ type = "tool", name = "get_time" }, cjson.decode(last_request().body).tool_choice)
    end)

    it("maps 529 overloaded and 429 as retryable, 401 as final", function()
      local _, err = client("anthropic", "anthropic_overloaded"):chat{ messages = MSGS }
      assert.equal(529, err.status)
      assert.equal("overloaded_error", err.code)
      assert.is_true(err.retryable)
      assert.equal("anthropic error (529): Overloaded", err.message)
      assert.equal("req_011CPLqNn1Yjgz5a8vYqXzVb", err.request_id)
      _, err = client("anthropic", "anthropic_rate_limited"):chat{ messages = MSGS }
      assert.equal(429, err.status)
      assert.equal("rate_limit_error", err.code)
      assert.equal(3, err.retry_after)
      assert.is_true(err.retryable)
      _, err = client("anthropic", "anthropic_bad_key", nil, { api_key = KEY }):chat{ messages = MSGS }
      assert.equal(401, err.status)
      assert.equal("authentication_error", err.code)
      assert.is_false(err.retryable)
      assert.is_nil(tostring(err):find(KEY, 1, true))
    end)

    it("reports an error event in a 200 stream; overloaded before any event is retryable", function()
      local evs = util.collect(client("anthropic", "anthropic_stream_overloaded"):chat_stream{ messages = MSGS })
      assert.equal(1, #evs)
      local e = evs[1].error
      assert.equal("http", e.kind)
      assert.equal(529, e.status)
      assert.equal("overloaded_error", e.code)
      assert.is_true(e.retryable)
      assert.equal("anthropic error (529): Overloaded", e.message)
    end)

    it("reports a stream without message_stop as truncated", function()
      local body = util.body(util.fixture("anthropic_stream"))
      local cut = body:gsub("event: message_stop\ndata: [^\n]*\n\n$", "")
      srv:write("anthropic_nostop", fixture.http_response(200, { { "Content-Type", "text/event-stream" } },
                                                         nil, { chunks = { cut } }))
      local evs = util.collect(client("anthropic", "anthropic_nostop"):chat_stream{ messages = MSGS })
      assert.equal("truncated", evs[#evs].error.kind)
      assert.equal("Hello! How can I help you today?", evs[#evs].error.partial)
    end)
  end)
end)
