-- The rest of llama-server's surface: tool calls, logprobs, and the
-- endpoints as client methods, against replayed real captures.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }

local function answer(name) return cjson.decode(util.body(util.fixture(name))) end

describe("llamacpp.client surface", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function client(name, opts)
    return llamacpp.new{ endpoint = srv:replay(name, opts) }
  end
  local function last_request()
    local reqs = srv:requests()
    return reqs[#reqs]
  end

  describe("chat features", function()
    it("returns non-streamed tool calls, with arguments decodable by tool_arguments", function()
      local raws = answer("tc_auto_nonstream").choices[1].message.tool_calls
      local tools = { { type = "function", ["function"] = { name = "get_weather",
        parameters = { type = "object", properties = { city = { type = "string" } },
                       required = { "city" } } } } }
      local res = assert(client("tc_auto_nonstream"):chat{ messages = MSGS, tools = tools,
                                                             tool_choice = "auto", parallel_tool_calls = false })
      assert.equal("tool_calls", res.stop_reason)
      assert.equal("", res.content)
      assert.equal(#raws, #res.tool_calls)
      for i, raw in ipairs(raws) do
        local tc = res.tool_calls[i]
        assert.equal(raw.id, tc.id)
        assert.equal(raw["function"].name, tc.name)
        assert.equal(raw["function"].arguments, tc.arguments)
        assert.same(cjson.decode(raw["function"].arguments), llamacpp.tool_arguments(tc))
      end
      local b = cjson.decode(last_request().body)
      assert.same(tools, b.tools)
      assert.equal("auto", b.tool_choice)
      assert.equal(false, b.parallel_tool_calls)
    end)

    it("tool_arguments reports invalid JSON as a protocol error", function()
      local v, err = llamacpp.tool_arguments{ name = "f", arguments = '{"city": "Par' }
      assert.is_nil(v)
      assert.equal("protocol", err.kind)
      assert.equal("BAD_TOOL_ARGUMENTS", err.code)
      assert.matches("tool call 'f' has invalid JSON arguments", err.message)
      assert.same({}, llamacpp.tool_arguments{ name = "f", arguments = "" })
      assert.has_error(function() llamacpp.tool_arguments("x") end)
    end)

    it("sends tool results and assistant tool calls back", function()
      local msgs = {
        { role = "user", content = "Weather in Paris?" },
        { role = "assistant", tool_calls = { { id = "call1", type = "function",
            ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } } } },
        { role = "tool", tool_call_id = "call1", content = '{"temp":21}' },
      }
      assert(client("tc_after_tool_result_nonstream"):chat{ messages = msgs })
      local b = cjson.decode(last_request().body)
      assert.same(msgs, b.messages)
      assert.is_nil(b.messages[2].content)
    end)

    it("sends back assistant tool calls given in the shape results have", function()
      local res = assert(client("tc_auto_nonstream"):chat{ messages = MSGS, tools = {} })
      local msgs = { MSGS[1], { role = "assistant", content = res.content, tool_calls = res.tool_calls } }
      for _, tc in ipairs(res.tool_calls) do
        msgs[#msgs + 1] = { role = "tool", tool_call_id = tc.id, content = "21 C" }
      end
      assert(client("tc_after_tool_result_nonstream"):chat{ messages = msgs })
      local b = cjson.decode(last_request().body)
      local sent = b.messages[2].tool_calls
      assert.equal(#res.tool_calls, #sent)
      for i, tc in ipairs(res.tool_calls) do
        assert.same({ id = tc.id, type = "function", ["function"] = { name = tc.name, arguments = tc.arguments } },
                    sent[i])
      end
      assert.equal(res.tool_calls[1].id, b.messages[3].tool_call_id)
      assert.is_nil(msgs[2].tool_calls[1]["function"])     -- the caller's table is not changed
    end)

    it("returns logprobs, non-streamed and streamed", function()
      local raw = answer("chat_logprobs_nonstream")
      local res = assert(client("chat_logprobs_nonstream"):chat{ messages = MSGS, logprobs = true,
                                                                   top_logprobs = 2 })
      assert.same(raw.choices[1].logprobs.content, res.logprobs)
      local n = 0
      for ev in client("chat_logprobs_stream"):chat_stream{ messages = MSGS, logprobs = true } do
        if ev.type == "content" then
          n = n + 1
          assert.is_table(ev.logprobs)
          assert.is_number(ev.logprobs[1].logprob)
        end
      end
      assert.is_true(n > 0)
    end)

    it("passes structured-output fields through and encodes empty arrays as []", function()
      local schema = { type = "object", properties = { a = { type = "string", enum = {} } },
                       required = {} }
      assert(client("chat_json_schema_nonstream"):chat{ messages = MSGS,
        response_format = { type = "json_schema", json_schema = { schema = schema } } })
      local r = last_request()
      local b = cjson.decode(r.body)
      assert.equal("json_schema", b.response_format.type)
      assert.matches('"enum":%[%]', r.body)
      assert.matches('"required":%[%]', r.body)
    end)

    it("keeps every choice of n = 2 in raw", function()
      local res = assert(client("chat_n2"):chat{ messages = MSGS, n = 2 })
      assert.equal(2, #res.raw.choices)
      assert.equal(res.raw.choices[1].message.content, res.content)
    end)
  end)

  describe("endpoints", function()
    it("health, and 503 while loading", function()
      assert.same({ status = "ok" }, client("health_ok"):health())
      local res, err = client("health_loading"):health()
      assert.is_nil(res)
      assert.equal(503, err.status)
      assert.is_true(err.retryable)
      assert.equal("GET", last_request().method)
      assert.matches("/health$", last_request().path)
    end)

    it("wait_ready polls through the loading phase", function()
      srv:write("warming", util.fixture("health_loading"))
      -- a second process turns the server ready a second later (the first
      -- poll, at once, sees it loading even on a busy machine)
      local dst = srv.scratch .. "/warming.response"
      local src = "spec/fixtures/health_loading_first_ok.response"
      os.execute("(sleep 1 && cp '" .. src .. "' '" .. dst .. "') >/dev/null 2>&1 &")
      local c = client("warming")
      local ok, err = c:wait_ready{ timeout = 20, interval = 0.05 }
      assert.is_nil(err)
      assert.is_true(ok)
      local polls = 0
      for _, r in ipairs(srv:requests()) do
        if r.path:find("/replay/warming/", 1, true) then polls = polls + 1 end
      end
      assert.is_true(polls >= 2, "polled " .. polls .. " times")
    end)

    it("wait_ready gives up after its timeout with the last error", function()
      local c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. util.closed_port() }
      local ok, err = c:wait_ready{ timeout = 0.3, interval = 0.05 }
      assert.is_nil(ok)
      assert.equal("connection", err.kind)
      local _, e2 = client("err_embeddings_disabled"):wait_ready{ timeout = 5 }
      assert.equal(501, e2.status)      -- not retryable: no waiting on it
    end)

    it("models, props and slots", function()
      local m = assert(client("v1_models"):models())
      assert.equal(answer("v1_models").data[1].id, m.data[1].id)
      assert.matches("/v1/models$", last_request().path)
      local p = assert(client("props"):props())
      assert.equal(answer("props").build_info, p.build_info)
      local sl = assert(client("slots"):slots())
      assert.equal(#answer("slots"), #sl)
    end)

    it("metrics as Prometheus text", function()
      local text = assert(client("metrics"):metrics())
      assert.equal(util.body(util.fixture("metrics")), text)
      assert.matches("llamacpp:", text)
    end)

    it("tokenize and detokenize", function()
      local toks = assert(client("tokenize"):tokenize("Hello world 👋", { with_pieces = true }))
      assert.same(answer("tokenize").tokens, toks)
      local b = cjson.decode(last_request().body)
      assert.equal("Hello world 👋", b.content)
      assert.equal(true, b.with_pieces)
      assert.equal("Hello world", client("detokenize"):detokenize{ 15496, 995 })
      assert.same({ tokens = { 15496, 995 } }, cjson.decode(last_request().body))
      assert.matches('"tokens":%[%]', (function()
        client("detokenize"):detokenize{}
        return last_request().body
      end)())
      assert.has_error(function() client("tokenize"):tokenize(42) end)
    end)

    it("apply_template renders the chat request", function()
      local prompt = assert(client("apply_template"):apply_template{ system = "You are terse.", messages = MSGS })
      assert.equal(answer("apply_template").prompt, prompt)
      local b = cjson.decode(last_request().body)
      assert.equal("system", b.messages[1].role)
      assert.is_nil(b.max_tokens)
      assert.is_nil(b.stream)
    end)

    it("embeddings for one input and for many, in input order", function()
      local one = assert(client("embeddings_v1_single"):embeddings("hello"))
      assert.equal(1, #one.embeddings)
      assert.same(answer("embeddings_v1_single").data[1].embedding, one.embeddings[1])
      local many = assert(client("embeddings_v1_batch"):embeddings({ "hello", "world" }, { model = "tiny" }))
      assert.equal(2, #many.embeddings)
      assert.equal(2, many.usage.input_tokens)
      assert.same({ "hello", "world" }, cjson.decode(last_request().body).input)
      local _, err = client("err_embeddings_disabled"):embeddings("x")
      assert.equal(501, err.status)
      assert.equal("not_supported_error", err.code)
      assert.is_false(err.retryable)
    end)

    it("rerank sorts documents best first", function()
      srv:write("rerank", fixture.http_response(200, { { "Content-Type", "application/json" } },
        '{"model":"m","object":"list","usage":{"prompt_tokens":9,"total_tokens":9},"results":' ..
        '[{"index":0,"relevance_score":-2.5},{"index":1,"relevance_score":7.25},{"index":2,"relevance_score":0.5}]}'))
      local res = assert(client("rerank"):rerank("what is a panda?", { "hi", "a bear", "it is" }, { top_n = 3 }))
      assert.same({ 1, 2, 0 }, { res[1].index, res[2].index, res[3].index })
      local b = cjson.decode(last_request().body)
      assert.equal("what is a panda?", b.query)
      assert.equal(3, #b.documents)
      assert.equal(3, b.top_n)
    end)

    it("completion (native), non-streamed", function()
      local raw = answer("completion_native_nonstream")
      local res = assert(client("completion_native_nonstream"):completion{ prompt = "Once upon a time", n_predict = 8 })
      assert.equal(raw.content, res.content)
      assert.equal("length", res.stop_reason)
      assert.equal(raw.tokens_predicted, res.usage.output_tokens)
      assert.equal(raw.timings.predicted_n, res.timings.predicted_n)
      local b = cjson.decode(last_request().body)
      assert.equal("/replay/completion_native_nonstream/-/completion", last_request().path)
      assert.equal(false, b.stream)
      assert.equal(8, b.n_predict)
      assert.has_error(function() client("x"):completion{ n_predict = 1 } end)
    end)

    it("completion_stream ends on stop:true (no [DONE]), with probs when asked", function()
      local body = util.body(util.fixture("completion_native_stream"))
      local want = {}
      for data in body:gmatch("data: ([^\n]*)") do want[#want + 1] = cjson.decode(data).content end
      local got, last = {}, nil
      for ev in client("completion_native_stream", "drip"):completion_stream{ prompt = "Once upon a time" } do
        if ev.type == "content" then got[#got + 1] = ev.content end
        last = ev
      end
      assert.equal(table.concat(want), table.concat(got))
      assert.equal("done", last.type)
      assert.equal("length", last.stop_reason)
      assert.equal(8, last.usage.output_tokens)
      assert.equal(true, cjson.decode(last_request().body).stream)
      local probs = 0
      for ev in client("completion_native_n_probs_stream"):completion_stream{ prompt = "Hi", n_probs = 2 } do
        if ev.type == "content" then
          probs = probs + 1
          assert.is_number(ev.probs[1].logprob)
        end
      end
      assert.is_true(probs > 0)
      -- cut before stop:true: truncated, with the text so far
      local evs = util.collect(client("completion_native_stream", "cut=500"):completion_stream{ prompt = "x" })
      assert.equal("error", evs[#evs].type)
    end)

    it("infill, and 501 without FIM tokens", function()
      local raw = answer("infill_ok")
      local res = assert(client("infill_ok"):infill{ input_prefix = "def add(a, b):\n    ", input_suffix = "\n",
                                                    input_extra = {}, n_predict = 8 })
      assert.equal(raw.content, res.content)
      assert.matches('"input_extra":%[%]', last_request().body)
      assert.matches("/infill$", last_request().path)
      local _, err = client("infill_no_fim_tokens"):infill{ input_prefix = "a", input_suffix = "b" }
      assert.equal(501, err.status)
      assert.equal("not_supported_error", err.code)
    end)

    it("infill_stream streams like completion_stream", function()
      srv:write("infill_stream", fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil,
        { chunks = { fixture.sse_body{ '{"index":0,"content":"return","stop":false}',
                                       '{"index":0,"content":" a + b","stop":false}',
                                       '{"index":0,"content":"","stop":true,"stop_type":"eos",' ..
                                       '"tokens_predicted":2,"tokens_evaluated":9}' } } }))
      local evs = util.collect(client("infill_stream"):infill_stream{ input_prefix = "def add(a, b):\n    ",
                                                                      input_suffix = "\n" })
      assert.equal(3, #evs)
      assert.equal("return a + b", evs[3].content)
      assert.equal("stop", evs[3].stop_reason)
      assert.equal(2, evs[3].usage.output_tokens)
    end)
  end)

  -- A chat compiles none of the other endpoints: llamacpp.endpoints loads
  -- when one is first looked up, on the Client or in client.steps (which
  -- llamacpp.uv runs). In a child: this process has loaded everything.
  it("loads the other endpoints when one is first looked up, not at require", function()
    local fake = require("llamacpp.testing").start{ cache = {} }
    finally(function() fake:stop() end)
    local out = util.spawn(([[
      local llamacpp = require "llamacpp"
      local function loaded() return package.loaded["llamacpp.endpoints"] and "yes" or "no" end
      local c = llamacpp.new{ endpoint = %q }
      local res = assert(c:chat{ messages = { { role = "user", content = "hi" } } })
      io.write("after chat: ", loaded(), " (", res.content, ")\n")
      io.write("a missing field: ", tostring(c.no_such_field), " ", tostring(c.model), " ", loaded(), "\n")
      local steps = require("llamacpp.client").steps
      io.write("steps.chat: ", type(steps.chat), " ", loaded(), "\n")
      io.write("steps.props: ", type(steps.props), " ", loaded(), "\n")
      local n = 0
      for _, m in ipairs { "models", "health", "props", "tokenize", "count_tokens", "fit", "embeddings",
                           "completion", "completion_stream", "infill_stream", "wait_ready" } do
        if type(c[m]) == "function" then n = n + 1 end
      end
      io.write("methods: ", n, "\n")
      local h = assert(c:health())
      io.write("health: ", h.status, ", tokens: ", assert(c:count_tokens{ messages = { { role = "user",
               content = "one two three" } } }) > 0 and "some" or "none", "\n")
    ]]):format(fake.endpoint))()
    assert.equal("after chat: no (ok 1)\n" ..
                 "a missing field: nil nil no\nsteps.chat: function no\nsteps.props: function yes\n" ..
                 "methods: 11\nhealth: ok, tokens: some\n", out)
  end)
end)
