-- llamacpp.new and client:chat against the fixture server, which replays
-- real llama-server answers (spec/fixtures) over loopback HTTP.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }

describe("llamacpp.client", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function last_request()
    local reqs = srv:requests()
    return reqs[#reqs]
  end

  describe("new", function()
    it("refuses bad options at once, with a positioned message", function()
      assert.has_error(function() llamacpp.new{ endpoint = "ftp://x" } end)
      assert.has_error(function() llamacpp.new{ endpoint = "http://" } end)
      assert.has_error(function() llamacpp.new{ endpoint = "http://h/a b" } end)
      assert.has_error(function() llamacpp.new{ endpiont = "http://x" } end,
                       nil)
      local ok, msg = pcall(llamacpp.new, { idle_timout = 3 })
      assert.is_false(ok)
      assert.matches("unknown option 'idle_timout'", msg)
      assert.has_error(function() llamacpp.new{ timeout = "3" } end)
      assert.has_error(function() llamacpp.new{ timeout = -1 } end)
      assert.has_error(function() llamacpp.new{ api_key = 42 } end)
      assert.has_error(function() llamacpp.new{ provider = "nope" } end)
      assert.has_error(function() llamacpp.new(5) end)
    end)

    it("refuses header names and values that could split a request", function()
      for _, v in ipairs{ "a\r\nX-Evil: 1", "a\nb", "a\0b" } do
        assert.has_error(function() llamacpp.new{ headers = { ["X-A"] = v } } end)
      end
      assert.has_error(function() llamacpp.new{ headers = { ["X A"] = "v" } } end)
      local c = llamacpp.new{ endpoint = srv.url, api_key = function() return "k\r\nX: y" end }
      assert.has_error(function() c:chat{ messages = MSGS } end)
    end)

    it("never shows the API key in tostring or in the client table", function()
      local key = "sk-SECRET-key-1234567890"
      local c = llamacpp.new{ endpoint = "http://user:pw@127.0.0.1:1/x", api_key = key }
      local s = tostring(c)
      assert.matches("llamacpp.Client", s)
      assert.is_nil(s:find(key, 1, true))
      assert.is_nil(s:find("pw", 1, true))
      for k, v in pairs(c) do
        assert.are_not.equal(key, v, "field " .. tostring(k))
      end
    end)

    it("keeps endpoint passwords, header secrets and proxy credentials out of the client's tables", function()
      local c = llamacpp.new{ endpoint = "http://user:pw-SECRET-1@127.0.0.1:1/x",
                              headers = { Authorization = "Basic SECRET-2" },
                              proxy = "http://u:SECRET-3@127.0.0.1:9" }
      local function scan(t, seen)
        seen = seen or {}
        if seen[t] then return end
        seen[t] = true
        for k, v in pairs(t) do
          for _, x in ipairs{ k, v } do
            if type(x) == "string" then assert.is_nil(x:find("SECRET", 1, true), tostring(k)) end
            if type(x) == "table" then scan(x, seen) end
          end
        end
      end
      scan(c)
      assert.is_nil(tostring(c):find("SECRET", 1, true))
    end)
  end)

  describe("chat", function()
    it("returns the answer of a real llama-server capture", function()
      local raw = cjson.decode(util.body(util.fixture("chat_nonstream")))
      local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream") }
      local res, err = c:chat{ messages = MSGS }
      assert.is_nil(err)
      assert.equal(raw.choices[1].message.content, res.content)
      assert.equal(raw.choices[1].finish_reason, res.stop_reason)
      assert.equal(raw.usage.prompt_tokens, res.usage.input_tokens)
      assert.equal(raw.usage.completion_tokens, res.usage.output_tokens)
      assert.equal(raw.model, res.model)
      assert.equal(raw.id, res.id)
      assert.equal(raw.timings.predicted_n, res.timings.predicted_n)
      assert.equal("llamacpp", res.provider)
      assert.same(raw, res.raw)
    end)

    it("sends system first, max_tokens 2048 by default, and passes every other field through", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream"), model = "tiny" }
      assert(c:chat{ system = "Be brief.", messages = MSGS, temperature = 0.5, seed = 42,
                     top_k = 40, min_p = 0.05, grammar = "root ::= \"x\"", cache_prompt = true,
                     stop = {}, tools = {}, chat_template_kwargs = { enable_thinking = false } })
      local r = last_request()
      assert.equal("POST", r.method)
      assert.equal("/replay/chat_nonstream/-/v1/chat/completions", r.path)
      assert.matches("^application/json", r.headers["content-type"])
      assert.is_nil(r.headers.authorization)
      local b = cjson.decode(r.body)
      assert.same({ role = "system", content = "Be brief." }, b.messages[1])
      assert.same(MSGS[1], b.messages[2])
      assert.equal(2048, b.max_tokens)
      assert.equal(false, b.stream)
      assert.is_nil(b.stream_options)
      assert.equal("tiny", b.model)
      assert.equal(0.5, b.temperature)
      assert.equal(42, b.seed)
      assert.equal(40, b.top_k)
      assert.equal(0.05, b.min_p)
      assert.equal("root ::= \"x\"", b.grammar)
      assert.equal(true, b.cache_prompt)
      assert.equal(false, b.chat_template_kwargs.enable_thinking)
      -- empty Lua tables meant as JSON arrays go out as []
      assert.matches('"stop":%[%]', r.body)
      assert.matches('"tools":%[%]', r.body)
      assert.is_nil(b.system)
    end)

    it("keeps the caller's max_tokens and model", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream"), model = "a" }
      assert(c:chat{ messages = MSGS, max_tokens = 7, model = "b" })
      local b = cjson.decode(last_request().body)
      assert.equal(7, b.max_tokens)
      assert.equal("b", b.model)
    end)

    it("sends Authorization: Bearer, asking a key function on every request", function()
      local n = 0
      local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream"),
                              api_key = function() n = n + 1; return "key" .. n end }
      assert(c:chat{ messages = MSGS })
      assert.equal("Bearer key1", last_request().headers.authorization)
      assert(c:chat{ messages = MSGS })
      assert.equal("Bearer key2", last_request().headers.authorization)
      c = llamacpp.new{ endpoint = srv:replay("chat_nonstream"), api_key = "secret123",
                        headers = { ["X-Trace"] = "t1" } }
      assert(c:chat{ messages = MSGS })
      assert.equal("Bearer secret123", last_request().headers.authorization)
      assert.equal("t1", last_request().headers["x-trace"])
    end)

    it("lets the caller's headers replace the provider's of the same name", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream"), api_key = "k1",
                              headers = { authorization = "Basic dTpw" } }
      assert(c:chat{ messages = MSGS })
      assert.equal("Basic dTpw", last_request().headers.authorization)
    end)

    it("appends paths to an endpoint with a path prefix, with or without trailing slashes", function()
      for _, suffix in ipairs{ "", "/", "//" } do
        local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream") .. suffix }
        assert(c:chat{ messages = MSGS })
        assert.equal("/replay/chat_nonstream/-/v1/chat/completions", last_request().path)
      end
    end)

    it("sends content given as an array of parts as it is", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_content_parts") }
      local parts = { { type = "text", text = "Say" }, { type = "text", text = " hello." } }
      assert(c:chat{ messages = { { role = "user", content = parts } } })
      local b = cjson.decode(last_request().body)
      assert.same(parts, b.messages[1].content)
    end)

    it("reports 401 with the server's error fields", function()
      local c = llamacpp.new{ endpoint = srv:replay("auth_missing_key") }
      local res, err = c:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.truthy(llamacpp.errors.is(err, "http"))
      assert.equal(401, err.status)
      assert.equal("authentication_error", err.code)
      assert.equal("llama-server error (401): Invalid API Key", err.message)
      assert.is_false(err.retryable)
      assert.equal("llamacpp", err.provider)
      assert.matches('"authentication_error"', err.body)
      assert.matches("^llamacpp: llama%-server error %(401%): Invalid API Key %(http 401", tostring(err))
    end)

    it("reports 503 Loading model as retryable", function()
      srv:write("chat_loading", util.fixture("health_loading"))
      local c = llamacpp.new{ endpoint = srv:replay("chat_loading") }
      local _, err = c:chat{ messages = MSGS }
      assert.equal(503, err.status)
      assert.equal("unavailable_error", err.code)
      assert.equal("llama-server error (503): Loading model", err.message)
      assert.is_true(err.retryable)
    end)

    it("keeps n_prompt_tokens and n_ctx of the context-size error", function()
      local c = llamacpp.new{ endpoint = srv:replay("err_context_exceeded") }
      local _, err = c:chat{ messages = MSGS }
      assert.equal(400, err.status)
      assert.equal("exceed_context_size_error", err.code)
      assert.equal(623, err.n_prompt_tokens)
      assert.equal(256, err.n_ctx)
      assert.is_false(err.retryable)
    end)

    it("maps 500 and 429 with Retry-After", function()
      local c = llamacpp.new{ endpoint = srv:replay("err_invalid_json") }
      local _, err = c:chat{ messages = MSGS }
      assert.equal(500, err.status)
      assert.equal("server_error", err.code)
      assert.is_true(err.retryable)
      srv:write("busy", fixture.http_response(429, { { "Retry-After", "7" },
        { "Content-Type", "application/json" } },
        '{"error":{"code":429,"message":"slow down","type":"rate_limit_error"}}'))
      c = llamacpp.new{ endpoint = srv:replay("busy") }
      _, err = c:chat{ messages = MSGS }
      assert.equal(429, err.status)
      assert.equal(7, err.retry_after)
      assert.is_true(err.retryable)
      assert.equal("llama-server error (429): slow down", err.message)
    end)

    it("says a gateway's HTML page is a gateway's, in one line, and keeps the body, capped", function()
      srv:write("proxy502", fixture.http_response(502, { { "Content-Type", "text/html" } },
        "<html>bad gateway</html>" .. string.rep("x", 10000)))
      local c = llamacpp.new{ endpoint = srv:replay("proxy502") }
      local _, err = c:chat{ messages = MSGS }
      assert.equal(502, err.status)
      assert.is_true(err.retryable)
      assert.matches("^gateway error %(502, no Server header%) in front of llama%-server: bad gateway x+%.%.%.; " ..
                     "the gateway could not reach", err.message)
      assert.is_nil(err.message:find("\n"))
      assert.is_true(#err.message < 600)
      assert.is_true(err.gateway)
      assert.equal(4096, #err.body)
    end)

    it("says llama-server is not running when nothing listens", function()
      local port = util.closed_port()
      local c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. port }
      local res, err = c:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.equal("connection", err.kind)
      assert.equal("COULDNT_CONNECT", err.code)
      assert.equal("llama-server not running at http://127.0.0.1:" .. port, err.message)
      assert.is_true(err.retryable)
      assert.equal("http://127.0.0.1:" .. port, err.endpoint)
      assert.matches("not running at", tostring(err))
    end)

    it("reports a 200 that is not JSON as a protocol error", function()
      srv:write("notjson", fixture.http_response(200, { { "Content-Type", "application/json" } },
                                                 "<html>"))
      local c = llamacpp.new{ endpoint = srv:replay("notjson") }
      local _, err = c:chat{ messages = MSGS }
      assert.equal("protocol", err.kind)
      assert.equal(200, err.status)
    end)

    it("raises on programmer errors", function()
      local c = llamacpp.new{ endpoint = srv.url }
      assert.has_error(function() c:chat("hi") end)
      assert.has_error(function() c:chat{} end)
      assert.has_error(function() c:chat{ messages = "hi" } end)
      assert.has_error(function() c:chat{ messages = MSGS, system = 5 } end)
      assert.has_error(function() c:chat{ messages = MSGS, temperature = function() end } end)
    end)

    it("never lets the API key into an error, even when the server echoes it", function()
      local key = "sk-ECHOED-0123456789"
      srv:write("echo401", fixture.http_response(401, { { "Content-Type", "application/json" } },
        '{"error":{"code":401,"message":"bad key Bearer ' .. key .. '","type":"authentication_error"}}'))
      local c = llamacpp.new{ endpoint = srv:replay("echo401"), api_key = key }
      local _, err = c:chat{ messages = MSGS }
      assert.equal(401, err.status)
      local function scan(t, seen)
        seen = seen or {}
        if seen[t] then return end
        seen[t] = true
        for k, v in pairs(t) do
          if type(v) == "string" then assert.is_nil(v:find(key, 1, true), "field " .. tostring(k)) end
          if type(v) == "table" then scan(v, seen) end
        end
      end
      scan(err)
      assert.is_nil(tostring(err):find(key, 1, true))
      assert.matches("<redacted>", err.message)
    end)

    it("reaches a loopback server whatever proxy the environment names", function()
      local lua = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
      local cpath = package.cpath:match("^[^;]*")
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
        package.cpath = %q .. ";" .. package.cpath
        local c = require("llamacpp").new{ endpoint = %q }
        local res, err = c:chat{ messages = { { role = "user", content = "x" } } }
        io.write(res and "OK" or tostring(err))
      ]]):format(cpath, srv:replay("chat_nonstream")))
      f:close()
      local p = io.popen("http_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 " ..
                         "all_proxy=http://127.0.0.1:9 no_proxy= " .. lua .. " " .. script)
      local out = p:read("*a")
      p:close()
      os.remove(script)
      assert.equal("OK", out)
    end)
  end)
end)
