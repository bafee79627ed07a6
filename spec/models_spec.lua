-- Many models behind one server (issue 16): llama-server's router mode,
-- against the test kit's fake router (llamacpp.testing: srv:router{}),
-- which answers as the router_* captures in ../shared/wire show. Every
-- endpoint method names its model, blocking and on the loop; the router's
-- refusals say what to do; models have states, load and unload; ready
-- means this model is ready; a router of deployments knows models.
local llamacpp = require "llamacpp"
local testing = require "llamacpp.testing"
local cjson = require "cjson"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"
local router = require "llamacpp.router"

describe("router mode (many models behind one server)", function()
  local srv
  setup(function() srv = testing.start{ dirs = { "spec/fixtures" } } end)
  teardown(function() srv:stop() end)

  -- The requests the server saw since `since`, with the path relative to
  -- the router's endpoint and the decoded body.
  local function seen(since)
    local out = {}
    for _, r in ipairs(srv:requests(since)) do
      r.rel = r.path:gsub("^/router/%w+", "")
      local ok, b = pcall(cjson.decode, r.body or "")
      r.json = ok and b or nil
      out[#out + 1] = r
    end
    return out
  end
  local function last_seq()
    local log = srv:log()
    return log[#log] and log[#log].seq or 0
  end

  describe("a model on every request", function()
    local ep, c
    setup(function()
      ep = srv:router{ models = { "tiny", "tiny-tools" }, loaded = { "tiny", "tiny-tools" },
                       metrics = true, embeddings = true }
      c = llamacpp.new{ endpoint = ep, model = "tiny" }
    end)

    -- Each endpoint method: its call, and how its answer names the model
    -- that served it.
    local CALLS = {
      { "tokenize", function(cl, m) return cl:tokenize("a bc", m and { model = m }) end,
        function(r) return type(r) == "table" and #r == 2 end },
      { "detokenize", function(cl, m) return cl:detokenize({ 1, 2 }, m and { model = m }) end,
        function(r, m) return r == "model " .. m end },
      { "apply_template", function(cl, m)
          return cl:apply_template{ model = m, messages = { { role = "user", content = "x" } } } end,
        function(r, m) return r == "<|" .. m .. "|>" end },
      { "completion", function(cl, m) return cl:completion{ model = m, prompt = "x" } end,
        function(r, m) return r.content == "model " .. m end },
      { "infill", function(cl, m) return cl:infill{ model = m, input_prefix = "x" } end,
        function(r, m) return r.content == "model " .. m end },
      { "chat", function(cl, m) return cl:chat{ model = m, messages = { { role = "user", content = "x" } } } end,
        function(r, m) return r.content == "model " .. m and r.model == m end },
      { "embeddings", function(cl, m) return cl:embeddings("x", m and { model = m }) end,
        function(r, m) return r.model == m end },
      { "props", function(cl, m) return cl:props(m and { model = m }) end,
        function(r, m) return r.model_alias == m end },
      { "slots", function(cl, m) return cl:slots(m and { model = m }) end,
        function(r) return type(r) == "table" and r[1].n_ctx == 1024 end },
      { "metrics", function(cl, m) return cl:metrics(m and { model = m }) end,
        function(r, m) return type(r) == "string" and r:find("# model " .. m, 1, true) ~= nil end },
    }

    for _, case in ipairs(CALLS) do
      local name, call, check = case[1], case[2], case[3]
      it(name .. " sends the client's model, or the call's", function()
        for _, m in ipairs{ false, "tiny-tools" } do
          local since = last_seq()
          local res, err = call(c, m or nil)
          assert.is_truthy(res, tostring(err))
          assert.is_true(check(res, m or "tiny"), name .. " for " .. tostring(m))
          local r = seen(since)
          assert.equal(1, #r)
          if r[1].method == "GET" then
            assert.matches("?model=" .. (m or "tiny"):gsub("%-", "%%-") .. "$", r[1].rel)
            assert.is_nil(r[1].headers["content-length"], name .. ": a GET has no body")
            assert.equal("", r[1].body or "")
          else
            assert.equal(m or "tiny", r[1].json.model)
          end
        end
      end)
    end

    it("streams name their model too (chat, completion, infill)", function()
      for _, fname in ipairs{ "chat_stream", "completion_stream", "infill_stream" } do
        local since = last_seq()
        local req = { messages = { { role = "user", content = "x" } }, prompt = "x", input_prefix = "x" }
        local text = {}
        for ev in c[fname](c, req) do
          if ev.type == "content" then text[#text + 1] = ev.content end
          assert.are_not.equal("error", ev.type)
        end
        assert.equal("tiny", seen(since)[1].json.model, fname)
        if fname == "chat_stream" then assert.equal("model tiny", table.concat(text)) end
      end
    end)

    it("on the loop, every method sends the same", function()
      if not has_luv then return pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end
      local runs = {
        { "tokenize", { "a bc", { model = "tiny-tools" } } },
        { "detokenize", { { 1 }, { model = "tiny-tools" } } },
        { "props", { { model = "tiny-tools" } } },
        { "metrics", { { model = "tiny-tools" } } },
        { "completion", { { model = "tiny-tools", prompt = "x" } } },
        { "load_model", { "tiny-tools" } },
        { "wait_ready", { { model = "tiny-tools", timeout = 20 } } },
      }
      for _, run in ipairs(runs) do
        local since = last_seq()
        local got
        lu.request(c, run[1], run[2], function(...) got = { ... } end, { uv = luv })
        luv.run()
        assert.is_not_nil(got, run[1])
        assert.is_truthy(got[1], run[1] .. ": " .. tostring(got[2]))
        local r = seen(since)[1]
        if run[1] == "wait_ready" then
          assert.equal("/v1/models", r.rel)
        elseif r.method == "GET" then
          assert.matches("model=tiny%-tools", r.rel, nil, run[1])
        else
          assert.equal("tiny-tools", r.json.model, run[1])
        end
      end
    end)

    it("a client without a model sends none (nothing changes for one-model servers)", function()
      local plain = llamacpp.new{ endpoint = ep }
      local since = last_seq()
      plain:tokenize("x")
      plain:props()
      plain:completion{ prompt = "x" }
      local r = {}
      for _, q in ipairs(seen(since)) do
        if q.rel ~= "/v1/models" then r[#r + 1] = q end    -- asked when a refusal is explained
      end
      assert.equal(3, #r)
      assert.is_nil(r[1].json.model)
      assert.equal("/props", r[2].rel)
      assert.is_nil(r[3].json.model)
    end)
  end)

  describe("errors that say what to do", function()
    it("no model: code model_required, the fix and the models it serves", function()
      local ep = srv:router{ models = { "tiny", "tiny-tools" }, loaded = { "tiny" } }
      local c = llamacpp.new{ endpoint = ep }
      for _, call in ipairs{
        function() return c:tokenize("x") end,
        function() return c:slots() end,
        function() return c:chat{ messages = { { role = "user", content = "x" } } } end,
      } do
        local res, err = call()
        assert.is_nil(res)
        assert.equal("http", err.kind)
        assert.equal(400, err.status)
        assert.equal("model_required", err.code)
        assert.equal("invalid_request_error", err.server.type)
        assert.is_false(err.retryable)
        assert.matches("model name is missing from the request", err.message, 1, true)
        assert.matches('pass model = "NAME" to llamacpp.new or to this call', err.message, 1, true)
        assert.matches("it serves: tiny, tiny-tools", err.message, 1, true)
      end
      -- a stream says the same (with the list once it is known)
      local evs = {}
      for ev in c:chat_stream{ messages = { { role = "user", content = "x" } } } do evs[#evs + 1] = ev end
      assert.equal(1, #evs)
      assert.equal("model_required", evs[1].error.code)
      assert.matches("it serves: tiny, tiny-tools", evs[1].error.message, 1, true)
    end)

    it("an unknown model: model_not_found, with the list", function()
      local c = llamacpp.new{ endpoint = srv:router{ models = { "tiny" } }, model = "nope" }
      local res, err = c:tokenize("x")
      assert.is_nil(res)
      assert.equal("model_not_found", err.code)
      assert.equal("nope", err.model)
      assert.matches("model 'nope' not found; it serves: tiny", err.message, 1, true)
      local ok, lerr = c:load_model("nope")
      assert.is_nil(ok)
      assert.equal("model_not_found", lerr.code)
      assert.equal(404, lerr.status)
      ok, lerr = c:unload_model("nope")
      assert.is_nil(ok)
      assert.equal("model_not_found", lerr.code)
    end)

    it("autoload off: model_not_loaded names load_model", function()
      local c = llamacpp.new{ endpoint = srv:router{ models = { "tiny" }, autoload = false }, model = "tiny" }
      local res, err = c:completion{ prompt = "x" }
      assert.is_nil(res)
      assert.equal("model_not_loaded", err.code)
      assert.matches('call client:load_model("tiny")', err.message, 1, true)
      -- a GET can ask for no autoload itself
      local c2 = llamacpp.new{ endpoint = srv:router{ models = { "tiny" } }, model = "tiny" }
      res, err = c2:props{ autoload = false }
      assert.is_nil(res)
      assert.equal("model_not_loaded", err.code)
      assert.truthy(c2:props())                        -- autoload: waits for the load
    end)

    it("a model whose server process dies: model_failed, not retryable", function()
      local c = llamacpp.new{ endpoint = srv:router{ models = { { name = "bad", fail = 3 } }, load_time = 0.05 },
                              model = "bad" }
      local res, err = c:chat{ messages = { { role = "user", content = "x" } } }
      assert.is_nil(res)
      assert.equal(500, err.status)
      assert.equal("model_failed", err.code)
      assert.is_false(err.retryable)
      assert.matches("exited while loading", err.message, 1, true)
    end)

    it("methods refuse a stream flag that contradicts them", function()
      local c = llamacpp.new{ endpoint = srv:router{}, model = "tiny" }
      local msgs = { { role = "user", content = "x" } }
      local cases = {
        { function() c:chat{ messages = msgs, stream = true } end,
          "'stream = true' contradicts chat.*use chat_stream" },
        { function() c:completion{ prompt = "x", stream = true } end, "contradicts completion.*use completion_stream" },
        { function() c:infill{ input_prefix = "x", stream = true } end, "contradicts infill.*use infill_stream" },
        { function() c:chat_stream{ messages = msgs, stream = false } end, "contradicts chat_stream.*use chat%)" },
        { function() c:completion_stream{ prompt = "x", stream = false } end, "use completion%)" },
        { function() c:apply_template{ messages = msgs, stream = true } end, "contradicts apply_template" },
      }
      for i, case in ipairs(cases) do
        local ok, msg = pcall(case[1])
        assert.is_false(ok, "case " .. i)
        assert.matches(case[2], msg)
        assert.matches("models_spec.lua:%d+: bad argument #1", msg)   -- at the caller's line
      end
    end)
  end)

  describe("models as data", function()
    it("lists states, loads, waits, unloads", function()
      local c = llamacpp.new{ endpoint = srv:router{ models = { "tiny", "tiny-tools", { name = "bad", fail = 7 } },
                                                     loaded = { "tiny" }, load_time = 0.3 } }
      local function states()
        local obj = assert(c:models())
        local out = {}
        for _, d in ipairs(obj.data) do out[d.id] = d.state end
        return out
      end
      assert.same({ tiny = "loaded", ["tiny-tools"] = "unloaded", bad = "unloaded" }, states())
      assert.is_true(c:load_model("tiny-tools"))
      assert.equal("loading", states()["tiny-tools"])
      assert.is_true(c:load_model("tiny-tools"))          -- already running: no error
      assert.is_true(c:wait_ready{ model = "tiny-tools", timeout = 30, interval = 0.05 })
      assert.equal("loaded", states()["tiny-tools"])
      assert.is_true(c:unload_model("tiny-tools"))
      assert.is_true(c:unload_model("tiny-tools"))        -- not running: no error
      assert.equal("unloaded", states()["tiny-tools"])
      -- wait_ready loads an unloaded model first
      assert.is_true(c:wait_ready{ model = "tiny-tools", timeout = 30, interval = 0.05 })
      -- a child that dies: failed, with its exit code; wait_ready ends at once
      assert.is_true(c:load_model("bad"))
      local ok, err = c:wait_ready{ model = "bad", timeout = 30, interval = 0.05 }
      assert.is_nil(ok)
      assert.equal("model", err.kind)
      assert.equal("model_failed", err.code)
      assert.equal(7, err.exit_code)
      assert.equal("failed", states().bad)
      ok, err = c:wait_ready{ model = "nope", timeout = 30 }
      assert.is_nil(ok)
      assert.equal("model_not_found", err.code)
      assert.matches("it serves: tiny, tiny%-tools, bad", err.message)
    end)

    it("wait_ready with load = false waits for someone else's load, up to its timeout", function()
      local c = llamacpp.new{ endpoint = srv:router{ models = { "tiny" }, load_time = 0.2 } }
      local ok, err = c:wait_ready{ model = "tiny", load = false, timeout = 0.3, interval = 0.05 }
      assert.is_nil(ok)
      assert.equal("model_not_ready", err.code)
      assert.matches("model 'tiny' is still unloaded", err.message, 1, true)
      assert.equal("unloaded", c:models().data[1].state)      -- nothing was loaded
    end)

    it("a one-model server's model is loaded, and wait_ready{model} is its health", function()
      local c = llamacpp.new{ endpoint = srv:replay("models") }
      local obj = assert(c:models())
      assert.equal("loaded", obj.data[1].state)
      assert.is_true(c:wait_ready{ model = "whatever", timeout = 5 })
    end)

    it("props without a model is the router's own", function()
      local c = llamacpp.new{ endpoint = srv:router{} }
      assert.equal("router", c:props().role)
      assert.equal("tiny", c:props{ model = "tiny" }.model_alias)
    end)
  end)

  describe("the router knows models", function()
    it("two deployments on one router-mode server, one model each", function()
      local ep = srv:router{ models = { "tiny", "tiny-tools" } }
      local r = router.new{ tiers = { main = {
        { name = "a", endpoint = ep, model = "tiny" },
        { name = "b", endpoint = ep, model = "tiny-tools" } } }, strategy = "round_robin" }
      local seen_models = {}
      for _ = 1, 4 do
        local res = assert(r:chat{ messages = { { role = "user", content = "x" } } })
        seen_models[res.content] = (seen_models[res.content] or 0) + 1
      end
      assert.same({ ["model tiny"] = 2, ["model tiny-tools"] = 2 }, seen_models)
    end)

    it("from_config: one tier per model on one endpoint (the seed's shape)", function()
      local ep = srv:router{ models = { "tiny", "tiny-tools" } }
      local r = router.from_config{ models = {
        fast = { endpoint = ep, model = "tiny" },
        tools = { endpoint = ep, model = "tiny-tools", fallback = "fast" } }, default = "fast" }
      local msgs = { { role = "user", content = "x" } }
      assert.equal("model tiny", assert(r:chat{ messages = msgs }).content)
      assert.equal("model tiny-tools", assert(r:chat{ tier = "tools", messages = msgs }).content)
    end)

    it("a deployment whose model is not served, or died, is passed over", function()
      local ep = srv:router{ models = { "tiny", { name = "bad", fail = 2 } }, load_time = 0.05 }
      for _, first in ipairs{ "nope", "bad" } do
        local r = router.new{ tiers = { main = {
          { name = "first", endpoint = ep, model = first },
          { name = "second", endpoint = ep, model = "tiny" } } } }
        local res = assert(r:chat{ messages = { { role = "user", content = "x" } } })
        assert.equal("model tiny", res.content)
        assert.equal("second", res.provider)
        assert.equal(first == "nope" and "model_not_found" or "model_failed", res.attempts[1].error.code)
      end
    end)

    it("health checks ask about the deployment's model, not the router's /health", function()
      local ep = srv:router{ models = { "tiny", { name = "bad", fail = 2 } }, load_time = 0.05 }
      local c = llamacpp.new{ endpoint = ep }
      assert.is_true(c:load_model("bad"))
      assert.is_nil(c:wait_ready{ model = "bad", timeout = 20, interval = 0.05 })   -- now failed
      local r = router.new{ tiers = { main = {
        { name = "bad", endpoint = ep, model = "bad" },
        { name = "gone", endpoint = ep, model = "nope" },
        { name = "good", endpoint = ep, model = "tiny" } } }, health_check = { interval = 60 } }
      local by = {}
      for _, s in ipairs(r:check_health()) do by[s.name] = s end
      assert.is_false(by.bad.healthy)
      assert.equal("model_failed", by.bad.health_error.code)
      assert.is_false(by.gone.healthy)
      assert.equal("model_not_found", by.gone.health_error.code)
      assert.is_true(by.good.healthy)
      local since = last_seq()
      r:check_health()
      for _, q in ipairs(seen(since)) do assert.equal("/v1/models", q.rel) end
    end)

    it("a request's model picks the deployments that serve it; others are skipped, not sent it", function()
      local ep = srv:router{ models = { "tiny", "tiny-tools" }, loaded = { "tiny", "tiny-tools" } }
      local r = router.new{ tiers = { main = {
        { name = "small", endpoint = ep, model = "tiny" },
        { name = "tools", endpoint = ep, model = "tiny-tools" } } } }
      local msgs = { { role = "user", content = "x" } }
      local since = last_seq()
      local res = assert(r:chat{ model = "tiny-tools", messages = msgs })
      assert.equal("model tiny-tools", res.content)
      assert.equal("tools", res.provider)
      assert.equal("UNSUPPORTED_REQUEST", res.attempts[1].error.code)
      assert.matches("serves model 'tiny', the request asks for 'tiny%-tools'", res.attempts[1].error.message)
      local chats = 0
      for _, q in ipairs(seen(since)) do
        if q.rel == "/v1/chat/completions" then
          chats = chats + 1
          assert.equal("tiny-tools", q.json.model)
        end
      end
      assert.equal(1, chats)
      -- a model no deployment serves: no_provider, nothing sent
      since = last_seq()
      local none, err = r:chat{ model = "big", messages = msgs }
      assert.is_nil(none)
      assert.equal("no_provider", err.kind)
      assert.same({}, seen(since))
      -- a deployment that names no model gets the request's
      local open = router.new{ tiers = { main = { { name = "any", endpoint = ep } } } }
      assert.equal("model tiny-tools", assert(open:chat{ model = "tiny-tools", messages = msgs }).content)
    end)

    it("on the loop, the health check asks about the model too, and the request goes round the failed one", function()
      if not has_luv then return pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end
      local ep = srv:router{ models = { "tiny", { name = "bad", fail = 2 } }, load_time = 0.05 }
      local c = llamacpp.new{ endpoint = ep }
      assert.is_true(c:load_model("bad"))
      assert.is_nil(c:wait_ready{ model = "bad", timeout = 20, interval = 0.05 })
      local r = router.new{ health_check = { interval = 60 }, tiers = { main = {
        { name = "bad", endpoint = ep, model = "bad" },
        { name = "good", endpoint = ep, model = "tiny" } } } }
      local since = last_seq()
      local got
      lu.router_chat(r, { messages = { { role = "user", content = "x" } } },
                     function(res, err) got = { res, err } end, { uv = luv })
      luv.run()
      assert.is_truthy(got[1], tostring(got[2]))
      assert.equal("model tiny", got[1].content)
      local models_asked = 0
      for _, q in ipairs(seen(since)) do
        assert.are_not.equal("/health", q.rel)
        if q.rel == "/v1/models" then models_asked = models_asked + 1 end
      end
      assert.equal(2, models_asked)                      -- one check per deployment
      -- (the chat's attempt at "bad" started its load again: the check may
      -- have seen it loading; the blocking case above asserts the verdict)
      assert.equal("model_failed", got[1].attempts[1].error.code)
    end)
  end)
  describe("behind llama-swap (the test kit's stand-in)", function()
    local msgs = { { role = "user", content = "x" } }
    local function swap(conf)
      conf = conf or {}
      conf.swap = true
      conf.models = conf.models or { "a", "b" }
      conf.embeddings = true
      conf.load_time = conf.load_time or 0.05
      return srv:router(conf)
    end

    it("the POSTs it routes by model work, each model started on demand", function()
      local ep = swap()
      local c = llamacpp.new{ endpoint = ep, model = "a" }
      assert.equal("model a", assert(c:chat{ messages = msgs }).content)
      assert.equal("model b", assert(c:chat{ model = "b", messages = msgs }).content)
      assert.equal("model a", assert(c:completion{ prompt = "x" }).content)
      assert.equal("model b", assert(c:infill{ model = "b", input_prefix = "x" }).content)
      assert.is_table(assert(c:embeddings("x")))
      local text = {}
      for ev in c:chat_stream{ messages = msgs, model = "b" } do
        if ev.type == "content" then text[#text + 1] = ev.content end
        assert.are_not.equal("error", ev.type)
      end
      assert.equal("model b", table.concat(text))
    end)

    it("models() tells the running model from the others (GET /running)", function()
      local ep = swap()
      local c = llamacpp.new{ endpoint = ep }
      local function states()
        local out = {}
        for _, d in ipairs(assert(c:models()).data) do out[d.id] = d.state end
        return out
      end
      assert.same({ a = "unloaded", b = "unloaded" }, states())
      assert(c:chat{ model = "b", messages = msgs })
      assert.same({ a = "unloaded", b = "loaded" }, states())
      assert(c:chat{ model = "a", messages = msgs })      -- one at a time: b stopped
      assert.same({ a = "loaded", b = "unloaded" }, states())
    end)

    it("its refusals get the router-mode codes, with the models it serves", function()
      local c = llamacpp.new{ endpoint = swap() }
      local res, err = c:chat{ messages = msgs }
      assert.is_nil(res)
      assert.equal("model_required", err.code)
      assert.is_false(err.retryable)
      assert.matches("missing or invalid 'model' key", err.message)
      assert.matches("it serves: a, b", err.message)
      res, err = c:chat{ model = "zzz", messages = msgs }
      assert.is_nil(res)
      assert.equal("model_not_found", err.code)
      assert.matches("zzz", err.message)
      -- the same words in the text alone (a stream asks for text/event-stream)
      local evs = {}
      for ev in c:chat_stream{ model = "zzz", messages = msgs } do evs[#evs + 1] = ev end
      assert.equal("error", evs[#evs].type)
      assert.equal("model_not_found", evs[#evs].error.code)
    end)

    it("what it does not route answers 404; a client on /upstream/NAME reaches the model", function()
      local ep = swap()
      local c = llamacpp.new{ endpoint = ep, model = "a" }
      local toks, err = c:tokenize("a bc")
      assert.is_nil(toks)
      assert.equal(404, err.status)
      local up = llamacpp.new{ endpoint = ep .. "/upstream/b" }
      assert.same({ 1, 2 }, assert(up:tokenize("a bc")))
      assert.equal("b", assert(up:props()).model_alias)
      assert.is_table(assert(up:slots()))
    end)

    it("wait_ready{model} is ready once it lists the model; an unknown one fails at once", function()
      local c = llamacpp.new{ endpoint = swap() }
      assert.is_true(c:wait_ready{ model = "a", timeout = 10 })
      local ok, err = c:wait_ready{ model = "zzz", timeout = 10 }
      assert.is_nil(ok)
      assert.equal("model_not_found", err.code)
      if not has_luv then return pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end
      local got
      lu.chat_stream(c, { model = "b", messages = msgs }, function(ev)
        if ev.type == "done" then got = ev.content end
      end, { uv = luv })
      luv.run()
      assert.equal("model b", got)
    end)
  end)
end)
