-- What the providers share (providers/base.lua), pure Lua, no network:
-- the request check and its positions, the helpers of the translation,
-- and the stream decoder's scaffolding driven by hand. The providers
-- themselves, over HTTP, are in providers_spec.lua.
local base = require "llamacpp.providers.base"
local errors = require "llamacpp.errors"

describe("llamacpp.providers.base", function()
  describe("check_request", function()
    local function check(req) base.check_request(req) end

    local function raised(req)
      local ok, msg = pcall(function() check(req) end)   -- this file is the position
      assert.is_false(ok)
      return msg
    end

    it("takes messages, a system text, or both", function()
      check{ messages = {} }
      check{ system = "Be brief." }
      check{ system = "Be brief.", messages = { { role = "user", content = "Hi" } } }
    end)

    it("refuses a request without messages, or with fields of the wrong type, at the caller's line", function()
      local here = "base_spec%.lua:%d+: "
      assert.matches(here .. "bad request: 'messages' is required$", raised{})
      assert.matches(here .. "bad request: 'messages' must be a table %(got string%)$",
                     raised{ messages = "Hi" })
      assert.matches(here .. "bad request: messages%[2%] must be a table$",
                     raised{ messages = { { role = "user", content = "Hi" }, "Hi" } })
      assert.matches(here .. "bad request: 'system' must be a string %(got number%)$",
                     raised{ system = 1, messages = {} })
    end)

    it("names the caller's line however deep inside llamacpp it is found (client:chat)", function()
      local client = require("llamacpp").new{ endpoint = "http://127.0.0.1:1" }
      local ok, msg = pcall(function() client:chat{} end)
      assert.is_false(ok)
      assert.matches("base_spec%.lua:%d+: bad request", msg)
    end)
  end)

  it("is not a provider, nor is native: llamacpp.new refuses them by name", function()
    local llamacpp = require "llamacpp"
    for _, name in ipairs{ "base", "native" } do
      local ok, msg = pcall(llamacpp.new, { provider = name })
      assert.is_false(ok)
      assert.matches("unknown provider '" .. name .. "'", msg, 1, true)
    end
  end)

  it("passes every field but those skipped, in a new table", function()
    local req = { system = "s", messages = {}, tier = "fast", temperature = 0.2, seed = 7 }
    local body = base.passed(req, base.LOCAL_FIELDS)
    assert.same({ temperature = 0.2, seed = 7 }, body)
    assert.same({ seed = 7 }, base.passed(req, base.LOCAL_FIELDS, { temperature = true }))
    assert.equal("s", req.system)
    assert.are_not.equal(req, body)
  end)

  it("sends a key as a bearer token, and nothing without one", function()
    assert.same({ "Authorization: Bearer sk-1" }, base.bearer("sk-1"))
    assert.same({}, base.bearer(nil))
  end)

  it("makes a provider table with the defaults: label the name, SSE, a bearer key", function()
    local spec = { name = "x", chat_path = "/chat", default_endpoint = "http://h" }
    local P = base.provider(spec)
    assert.equal("x", P.label)
    assert.equal("sse", P.framing)
    assert.equal(base.bearer, P.headers)
    assert.equal("/chat", P.chat_path)
    assert.is_nil(spec.label)
    P = base.provider{ name = "y", label = "Y server", framing = "ndjson" }
    assert.equal("Y server", P.label)
    assert.equal("ndjson", P.framing)
  end)

  it("reads JSON values: strings as they are, whole numbers as integers", function()
    assert.equal("x", base.str("x"))
    assert.is_nil(base.str(1))
    assert.is_nil(base.str(require("llamacpp.json").null))
    assert.equal(3, base.int(3.0))
    assert.equal(2.5, base.int(2.5))
    assert.same({ n = 1, ms = 1.5 }, base.ints{ n = 1.0, ms = 1.5 })
  end)

  it("maps a wire's stop reasons, keeps unknown ones and drops those mapped to false", function()
    local map = base.stop_reasons{ end_turn = "stop", max_tokens = "length", none = false }
    assert.equal("stop", map("end_turn"))
    assert.equal("length", map("max_tokens"))
    assert.equal("refusal", map("refusal"))
    assert.is_nil(map("none"))
    assert.is_nil(map(nil))
    assert.is_nil(map(7))
  end)

  it("makes an answer without what the wire promises a protocol error, with the body capped", function()
    local res, err = base.bad_answer("x answer has no content", { blob = ("a"):rep(5000) })
    assert.is_nil(res)
    assert.is_true(errors.is(err, "protocol"))
    assert.equal("x answer has no content", err.message)
    assert.equal(4096, #err.body)
  end)

  describe("decoder", function()
    local D = base.decoder_class("x server")

    -- a decoder and the events it pushed
    local function new(opts)
      local evs = {}
      return D.new(opts), evs, function(ev) evs[#evs + 1] = ev end
    end

    it("has the base methods copied, its label, and nothing kept between streams", function()
      assert.equal(base.Decoder.done, D.done)
      assert.equal(D, getmetatable(D.new()))
      assert.equal("x server", D.label)
      assert.is_false(D.new().finished)
      assert.are_not.equal(D.new().tools, D.new().tools)
      assert.are_not.equal(D, base.decoder_class("x server"))
    end)

    it("decodes an event; malformed JSON and an error object end the stream", function()
      local d = new()
      assert.same({ a = 1 }, d:decode('{"a":1}'))
      local obj, err = d:decode("{nope", "line")
      assert.is_nil(obj)
      assert.equal("protocol", err.kind)
      assert.equal("BAD_JSON", err.code)
      assert.matches("malformed JSON in stream line", err.message)
      obj, err = d:decode('{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
      assert.is_nil(obj)
      assert.equal("http", err.kind)
      assert.equal(503, err.status)
      assert.is_true(err.in_stream)
      assert.matches("^x server error %(503%)", err.message)
      obj, err = d:decode('{"error":"unexpected EOF"}')   -- Ollama's: a string
      assert.is_nil(obj)
      assert.equal(500, err.status)
    end)

    it("keeps the first non-empty model and id, each on its own", function()
      local d = new()
      d:identify("", "")
      assert.equal("", d.model)
      d:identify(nil, "chatcmpl-1")
      d:identify("gpt-4o", "chatcmpl-2")
      d:identify("other", "")
      assert.equal("gpt-4o", d.model)
      assert.equal("chatcmpl-1", d.id)
      d = new()
      d:identify(require("llamacpp.json").null, 7)
      assert.is_nil(d.model)
      assert.is_nil(d.id)
    end)

    it("pushes and keeps non-empty text only, with an extra field when given", function()
      local d, evs, push = new()
      d:text(push, "content", "")
      d:text(push, "content", nil)
      d:text(push, "reasoning", 3)
      assert.equal(0, #evs)
      d:text(push, "reasoning", "hm")
      d:text(push, "content", "Hel", "logprobs", { 1 })
      d:text(push, "content", "lo", "logprobs", nil)
      assert.same({ { type = "reasoning", content = "hm" },
                    { type = "content", content = "Hel", logprobs = { 1 } },
                    { type = "content", content = "lo" } }, evs)
      assert.equal("Hello", d:partial())
      local done = d:done()
      assert.equal("Hello", done.content)
      assert.equal("hm", done.reasoning)
    end)

    it("assembles tool calls from fragments by index, in index order", function()
      local d, evs, push = new()
      local b = d:tool(1)
      b.id, b.name = "call_b", "get_time"
      base.tool_args(push, b, "{}")
      local a = d:tool(0)
      a.id, a.name = "call_a", "get_weather"
      base.tool_args(push, a, '{"city":')
      base.tool_args(push, d:tool(0), '"Paris"}')
      assert.equal(a, d:tool(0))
      assert.same({ type = "tool_call", index = 1, id = "call_b", name = "get_time", arguments = "{}" }, evs[1])
      assert.same({ type = "tool_call", index = 0, id = "call_a", name = "get_weather", arguments = '"Paris"}' },
                  evs[3])
      assert.same({ { id = "call_a", type = "function", name = "get_weather", arguments = '{"city":"Paris"}' },
                    { id = "call_b", type = "function", name = "get_time", arguments = "{}" } }, d:done().tool_calls)
    end)

    it("gives a call without arguments the class's empty_arguments, else leaves them empty", function()
      local d, _, push = new()
      base.tool_args(push, d:tool(0), "")
      assert.equal("", d:done().tool_calls[1].arguments)
      local E = base.decoder_class("e")
      E.empty_arguments = "{}"
      d = E.new()
      base.tool_args(push, d:tool(0), "")
      assert.equal("{}", d:done().tool_calls[1].arguments)
    end)

    it("ends with a done event of what feed() kept", function()
      local d = new()
      d.stop_reason, d.usage, d.timings = "stop", { input_tokens = 3 }, { predicted_n = 2 }
      d:identify("m", "id-1")
      assert.same({ type = "done", content = "", stop_reason = "stop", usage = { input_tokens = 3 },
                    timings = { predicted_n = 2 }, model = "m", id = "id-1" }, d:done())
    end)

    it("keeps no text with assemble = false, and still pushes it", function()
      local d, evs, push = new{ assemble = false }
      d:text(push, "content", "Hi")
      d:text(push, "reasoning", "hm")
      assert.equal(2, #evs)
      assert.is_nil(d:partial())
      local done = d:done()
      assert.is_nil(done.content)
      assert.is_nil(done.reasoning)
    end)
  end)
end)
