-- The context window (issue 19, first slice): client:count_tokens(req),
-- client:context_size{model =}, on the loop too. Real HTTP: the captures
-- of llama-server's counting and /props answers, the test kit's caching
-- fake (whose units are its tokens: it counts, answers and refuses by the
-- same rule) and its router-mode fake.
local llamacpp = require "llamacpp"
local testing = require "llamacpp.testing"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local has_luv = pcall(require, "luv")

local MSGS = { { role = "system", content = "You are terse." }, { role = "user", content = "Say hello." } }
local TOOLS = { { type = "function", ["function"] = { name = "add", description = "Adds two numbers",
  parameters = { type = "object", properties = { a = { type = "number" }, b = { type = "number" } } } } } }

describe("the context window", function()
  local srv, fake
  setup(function()
    srv = fixture.start()
    fake = testing.start{ cache = { slots = 2, n_ctx = 60 } }
  end)
  teardown(function()
    srv:stop()
    fake:stop()
  end)

  local function last(s)
    local r = (s or srv):requests()
    return r[#r]
  end

  describe("count_tokens", function()
    it("asks llama-server's input_tokens endpoint with the chat body, without running it", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_input_tokens"), model = "tiny" }
      assert.equal(22, c:count_tokens{ messages = MSGS, max_tokens = 100, temperature = 0 })
      local r = last()
      assert.matches("/v1/chat/completions/input_tokens$", r.path)
      local body = cjson.decode(r.body)
      assert.same(MSGS, body.messages)
      assert.equal("tiny", body.model)
      assert.equal(0, body.temperature)                -- the request as chat would send it ...
      assert.is_nil(body.max_tokens)                   -- ... but for what counting has no use of
      assert.is_nil(body.stream)
    end)

    it("equals the prompt tokens the same request then costs", function()
      local c = llamacpp.new{ endpoint = fake.endpoint }
      for _, req in ipairs{
        { messages = MSGS },
        { system = "Be brief.", messages = { { role = "user", content = "one two three" } }, tools = TOOLS },
        { messages = { MSGS[2], { role = "assistant", content = "", tool_calls = { { id = "c1", type = "function",
          ["function"] = { name = "add", arguments = '{"a":1,"b":2}' } } } },
          { role = "tool", tool_call_id = "c1", content = "3" } }, tools = TOOLS },
      } do
        local n = assert(c:count_tokens(req))
        local res = assert(c:chat(req))
        assert.equal(res.stats.input_tokens, n)
        assert.is_true(n > 3)
      end
    end)

    it("asks Anthropic's count_tokens with only the fields it takes", function()
      local c = llamacpp.new{ provider = "anthropic", endpoint = srv:replay("messages_count_tokens"),
                              api_key = "k", model = "tiny" }
      assert.equal(22, c:count_tokens{ system = "You are terse.", messages = { MSGS[2] }, max_tokens = 16,
                                       temperature = 0.5, tools = TOOLS })
      local r = last()
      assert.matches("/v1/messages/count_tokens$", r.path)
      local body = cjson.decode(r.body)
      local keys = {}
      for k in pairs(body) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.same({ "messages", "model", "system", "tools" }, keys)
    end)

    it("raises for providers that cannot count, and for bad requests", function()
      for _, p in ipairs{ "openai", "ollama" } do
        local c = llamacpp.new{ provider = p, endpoint = srv.url }
        assert.error_matches(function() c:count_tokens{ messages = MSGS } end, "has no endpoint that counts")
      end
      local c = llamacpp.new{ endpoint = srv.url }
      assert.error_matches(function() c:count_tokens("hi") end, "table expected")
      assert.error_matches(function() c:count_tokens{ messages = MSGS, stream = true } end, "count_tokens")
    end)

    it("says what is wrong with an answer without input_tokens", function()
      local c = llamacpp.new{ endpoint = srv:replay("props") }
      local n, err = c:count_tokens{ messages = MSGS }
      assert.is_nil(n)
      assert.equal("protocol", err.kind)
      assert.matches("input_tokens", err.message)
    end)
  end)

  describe("context_size", function()
    it("reads n_ctx from /props once, then remembers it; refresh asks again", function()
      local c = llamacpp.new{ endpoint = srv:replay("props") }
      local since = #srv:log()
      assert.equal(1024, c:context_size())
      assert.equal(1024, c:context_size())
      assert.equal(1, util.hits(srv, "/props", "GET", since))
      assert.equal(1024, c:context_size{ refresh = true })
      assert.equal(2, util.hits(srv, "/props", "GET", since))
    end)

    it("learns a new window from the server's refusal", function()
      local f = testing.start()
      local c = llamacpp.new{ endpoint = f.endpoint }
      f:reply{ body = cjson.encode{ default_generation_settings = { n_ctx = 1024 }, total_slots = 1 } }
      assert.equal(1024, c:context_size())
      f:reply{ status = 400, body = util.body(util.fixture("err_context_exceeded")) }
      local res, err = c:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.equal("exceed_context_size_error", err.code)
      assert.equal(256, err.n_ctx)
      local n = #f:requests()
      assert.equal(256, c:context_size())                 -- no request: it was in the error
      assert.equal(n, #f:requests())
      f:stop()
    end)

    it("is per model on a router-mode server, and says to pass one without", function()
      local ep = srv:router{ models = { { name = "a", n_ctx = 512 }, { name = "b", n_ctx = 2048 } },
                             loaded = { "a", "b" } }
      local c = llamacpp.new{ endpoint = ep }
      assert.equal(512, c:context_size{ model = "a" })
      assert.equal(2048, c:context_size{ model = "b" })
      assert.equal(2048, llamacpp.new{ endpoint = ep, model = "b" }:context_size())
      local n, err = c:context_size()
      assert.is_nil(n)
      assert.equal("model_required", err.code)
      assert.matches("pass model = ", err.message)
    end)

    it("matches what the caching fake refuses", function()
      local c = llamacpp.new{ endpoint = fake.endpoint }
      assert.equal(60, c:context_size())
      local long = { { role = "user", content = ("word "):rep(80) } }
      assert.is_true(assert(c:count_tokens{ messages = long }) > 60)
      local res, err = c:chat{ messages = long }
      assert.is_nil(res)
      assert.equal("exceed_context_size_error", err.code)
      assert.equal(60, err.n_ctx)
    end)

    it("raises for providers without /props and bad options", function()
      assert.error_matches(function() llamacpp.new{ provider = "anthropic", api_key = "k" }:context_size() end,
                           "does not say its context size")
      local c = llamacpp.new{ endpoint = srv.url }
      assert.error_matches(function() c:context_size{ modle = "x" } end, "unknown option 'modle'")
      assert.error_matches(function() c:context_size{ refresh = 1 } end, "'refresh' must be a boolean")
    end)
  end)

  it("runs on the loop too", function()
    if not has_luv then return pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end
    local uv = require "llamacpp.uv"
    local luv = require "luv"
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local got = {}
    uv.request(c, "count_tokens", { { messages = MSGS } }, function(n, err) got.count = n or err end)
    uv.request(c, "context_size", {}, function(n, err) got.size = n or err end)
    local deadline = os.time() + 30                                    -- a hang guard
    while not (got.count and got.size) do
      luv.run("once")
      assert(os.time() < deadline, "the loop's requests did not end")
    end
    assert.equal(c:count_tokens{ messages = MSGS }, got.count)
    assert.equal(60, got.size)
  end)
end)
