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
      local since = util.last_seq(srv)
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

  describe("fit", function()
    local f, c
    before_each(function()
      f = testing.start{ cache = { slots = 2, n_ctx = 300 } }
      c = llamacpp.new{ endpoint = f.endpoint }
    end)
    after_each(function() f:stop() end)

    local function counts(since)
      local n = 0
      for _, r in ipairs(f:requests(since)) do
        if r.path:find("/input_tokens$") then n = n + 1 end
      end
      return n
    end

    -- turn i of a conversation with tools: every third asks for a tool
    local function add_turn(msgs, i)
      msgs[#msgs + 1] = { role = "user", content = "question " .. i .. (" about this"):rep(3) }
      if i % 3 == 0 then
        msgs[#msgs + 1] = { role = "assistant", content = "", tool_calls = { { id = "call" .. i, type = "function",
          ["function"] = { name = "add", arguments = '{"a":' .. i .. ',"b":1}' } } } }
        msgs[#msgs + 1] = { role = "tool", tool_call_id = "call" .. i, content = tostring(i + 1) }
      end
      msgs[#msgs + 1] = { role = "assistant", content = "answer " .. i .. (" indeed"):rep(4) }
    end

    -- the invariants of a fitted history
    local function check_fitted(msgs)
      assert.equal("system", msgs[1].role)
      assert.equal("user", msgs[2].role)                           -- turns start with the user
      for i, m in ipairs(msgs) do
        if m.role == "tool" then                                   -- its call is right before it
          local j = i - 1
          while msgs[j].role == "tool" do j = j - 1 end
          assert.equal("assistant", msgs[j].role)
          local ids = {}
          for _, tc in ipairs(msgs[j].tool_calls or {}) do ids[tc.id] = true end
          assert.is_true(ids[m.tool_call_id], "tool result " .. tostring(m.tool_call_id) .. " without its call")
        end
      end
    end

    it("keeps a 40-turn conversation with tool calls inside the window on every turn", function()
      local msgs = { { role = "system", content = "You are terse." } }
      local dropped_some = false
      for i = 1, 40 do
        add_turn(msgs, i)
        msgs[#msgs] = nil                                          -- the answer comes from the server
        local req = { messages = msgs, tools = TOOLS, max_tokens = 20 }
        local since = util.last_seq(f)
        local fitted, info = assert(c:fit(req))
        assert.is_true(info.input_tokens <= info.budget)
        assert.equal(300 - 20 - 16, info.budget)
        assert.is_true(counts(since) <= 3, "counted " .. counts(since) .. " times at turn " .. i)
        check_fitted(fitted.messages)
        assert.equal(msgs[#msgs], fitted.messages[#fitted.messages])  -- the question is kept
        if info.dropped > 0 then dropped_some = true end
        local res = assert(c:chat(fitted))                         -- the server takes it
        assert.equal(info.input_tokens, res.stats.input_tokens)
        msgs[#msgs + 1] = { role = "assistant", content = res.content }
      end
      assert.is_true(dropped_some)
      assert.equal(40, #(function() local q = {} for _, m in ipairs(msgs) do
        if m.role == "user" then q[#q + 1] = m end end return q end)())   -- the caller's history is untouched
    end)

    it("keeps the first turns when asked, and hands the dropped ones to summarize", function()
      local msgs = { { role = "system", content = "You are terse." } }
      for i = 1, 20 do add_turn(msgs, i) end
      msgs[#msgs + 1] = { role = "user", content = "and now?" }
      local seen
      local fitted, info = assert(c:fit({ messages = msgs, max_tokens = 20 }, { keep_first = 1,
        summarize = function(gone) seen = gone return "Earlier: " .. #gone .. " messages." end }))
      assert.equal("question 1 about this about this about this", fitted.messages[2].content)
      assert.equal(msgs[3], fitted.messages[3])
      assert.equal(info.dropped, #seen)
      assert.equal("question 2 about this about this about this", seen[1].content)
      assert.matches("^You are terse%.\n\nEarlier: %d+ messages%.$", fitted.messages[1].content)
      check_fitted(fitted.messages)
    end)

    it("says when what must be kept does not fit", function()
      local msgs = { { role = "system", content = "You are terse." },
                     { role = "user", content = "hi" }, { role = "assistant", content = "hello" },
                     { role = "user", content = ("long "):rep(400) } }
      local r, err = c:fit{ messages = msgs, max_tokens = 20 }
      assert.is_nil(r)
      assert.equal("context", err.kind)
      assert.equal("does_not_fit", err.code)
      assert.is_true(err.input_tokens > err.budget)
      assert.matches("does not fit", err.message)
    end)

    it("on_overflow = 'trim' fits a refused chat to the window and sends it once more", function()
      local msgs = { { role = "system", content = "You are terse." } }
      for i = 1, 30 do add_turn(msgs, i) end
      msgs[#msgs + 1] = { role = "user", content = "and now?" }
      local res, err = c:chat{ messages = msgs, max_tokens = 20 }
      assert.is_nil(res)
      assert.equal("exceed_context_size_error", err.code)
      local since = util.last_seq(f)
      res = assert(c:chat{ messages = msgs, max_tokens = 20, on_overflow = "trim" })
      assert.is_true(res.trimmed.dropped > 0)
      assert.is_true(res.trimmed.input_tokens <= 300 - 20 - 16)
      assert.equal(res.trimmed.input_tokens, res.stats.input_tokens)
      local posts = 0
      for _, r in ipairs(f:requests(since)) do
        if r.path:find("/chat/completions$") then posts = posts + 1 end
        assert.is_nil(cjson.decode(r.body).on_overflow)
      end
      assert.equal(2, posts)                                       -- refused, then fitted
      -- through a router (each deployment's own window), and on the loop
      local router = require "llamacpp.router"
      local r = router.new{ tiers = { x = { { endpoint = f.endpoint } } } }
      assert.is_true(assert(r:chat{ messages = msgs, max_tokens = 20, on_overflow = "trim" }).trimmed.dropped > 0)
      assert.error_matches(function() r:chat_stream{ messages = msgs, on_overflow = "trim" } end,
                           "is for whole answers")
      assert.error_matches(function() c:chat_stream{ messages = msgs, on_overflow = "trim" } end,
                           "is for whole answers %(chat%): fit a stream's request first")
      assert.error_matches(function() c:chat{ messages = msgs, on_overflow = "cut" } end,
                           "'on_overflow' must be \"error\" or \"trim\"")
      if has_luv then
        local luv, got = require "luv", nil
        require("llamacpp.uv").chat(c, { messages = msgs, max_tokens = 20, on_overflow = "trim" },
                                    function(x, e) got = x or e end)
        local deadline = os.time() + 30
        while not got do luv.run("once"); assert(os.time() < deadline, "the loop's chat did not end") end
        assert.is_true(got.trimmed.dropped > 0, tostring(got.message))
      end
    end)

    it("refuses bad options", function()
      assert.error_matches(function() c:fit({ messages = {} }, { keep = 1 }) end, "unknown option 'keep'")
      assert.error_matches(function() c:fit({ messages = {} }, { keep_first = -1 }) end, "whole number >= 0")
      assert.error_matches(function() c:fit({ messages = {} }, { budget = "x" }) end, "'budget' must be a number")
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
