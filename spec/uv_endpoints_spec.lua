-- llamacpp.uv beyond chat: every other client method on a standalone luv
-- loop (tokenize, embeddings, infill, wait_ready, ...), the same answers
-- as the blocking methods give, from the loop, cancellable; and the
-- streaming completion and infill.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local function answer(name) return cjson.decode(util.body(util.fixture(name))) end

describe("llamacpp.uv requests", function()
  if not has_luv then
    it("needs luv", function() pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end)
    return
  end
  local srv
  local O = { uv = luv }
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function client(name, opts)
    return llamacpp.new{ endpoint = srv:replay(name, opts) }
  end

  -- Runs client:name(args...) on the loop; the values on_done got.
  local function on_loop(c, name, args, opts)
    local got, calls = nil, 0
    lu.request(c, name, args, function(...) calls, got = calls + 1, { n = select("#", ...), ... } end,
               opts or O)
    assert.equal(0, calls)              -- never inside the call
    luv.run()
    assert.equal(1, calls)
    return got
  end

  it("answers as the blocking methods do", function()
    local toks = on_loop(client("tokenize"), "tokenize", { "Hello world 👋", { with_pieces = true } })
    assert.same(answer("tokenize").tokens, toks[1])
    assert.same({ client("tokenize"):tokenize("Hello world 👋", { with_pieces = true }) }, { toks[1] })
    local emb = on_loop(client("embeddings_v1_batch"), "embeddings", { { "a", "b" } })
    assert.same(client("embeddings_v1_batch"):embeddings{ "a", "b" }, emb[1])
    local inf = on_loop(client("infill_ok"), "infill", { { input_prefix = "def add(a, b):\n    ",
                                                             input_suffix = "\n" } })
    assert.equal(answer("infill_ok").content, inf[1].content)
    local metrics = on_loop(client("health_ok"), "metrics", {})      -- raw text: the body as is
    assert.equal(util.body(util.fixture("health_ok")), metrics[1])
  end)

  it("gives nil, err as the blocking methods do", function()
    local got = on_loop(client("infill_no_fim_tokens"), "infill", { { input_prefix = "a", input_suffix = "b" } })
    assert.equal(2, got.n)
    assert.is_nil(got[1])
    assert.equal(501, got[2].status)
    got = on_loop(llamacpp.new{ endpoint = util.down() }, "health", nil)
    assert.is_nil(got[1])
    assert.equal("connection", got[2].kind)
  end)

  it("waits until ready on a timer, through 503 Loading model", function()
    srv:write("warming", util.fixture("health_loading"))
    local c = client("warming")
    local done, ticks_before_ready = nil, 0
    local t = luv.new_timer()
    t:start(5, 5, function()
      if done == nil then ticks_before_ready = ticks_before_ready + 1 end
      if ticks_before_ready == 20 then srv:write("warming", util.fixture("health_ok")) end
      if done ~= nil then t:stop(); t:close() end
    end)
    lu.request(c, "wait_ready", { { timeout = 30, interval = 0.02 } }, function(ok, err)
      done = { ok, err }
    end, O)
    luv.run()
    assert.is_true(done[1], tostring(done[2]))
    assert.is_true(ticks_before_ready >= 20)        -- the loop ran while it waited
    assert.is_true(util.hits(srv, "/replay/warming/") >= 2)
  end)

  it("cancels: the request aborted, on_done never called", function()
    srv:write("tok_slow", util.fixture("tokenize"))
    local calls = 0
    local h = lu.request(client("tok_slow", "delay=1000"), "tokenize", { "x" },
                         function() calls = calls + 1 end, O)
    local t = luv.new_timer()
    t:start(5, 5, function()            -- once the server has the request
      if util.hits(srv, "/replay/tok_slow/") > 0 then t:stop(); t:close(); h:cancel(); h:cancel() end
    end)
    luv.run()
    assert.equal(0, calls)
    assert.truthy(srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("/replay/tok_slow/", 1, true)
    end, 5), "no abort in the server log")
  end)

  it("raises at the caller's line for a bad method or bad arguments", function()
    local c = client("tokenize")
    local f = function() end
    local ok, msg = pcall(function() local h = lu.request(c, "close", {}, f, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_endpoints_spec%.lua:%d+: bad argument #2 to 'request'", msg)
    ok, msg = pcall(function() local h = lu.request(c, "tokenize", { 42 }, f, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_endpoints_spec%.lua:%d+: bad argument #1 to 'tokenize'", msg)
    ok, msg = pcall(function() local h = lu.request(c, "tokenize", { "x" }, nil, O); return h end)
    assert.is_false(ok)
    assert.matches("bad argument #4 to 'request'", msg)
    ok, msg = pcall(function() local h = lu.infill_stream(c, { input_suffix = "x" }, f, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_endpoints_spec%.lua:%d+: .*'input_prefix' is required", msg)
  end)

  it("streams completion and infill on the loop", function()
    srv:write("infill_stream", fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil,
      { chunks = { fixture.sse_body{ '{"index":0,"content":"return","stop":false}',
                                     '{"index":0,"content":" a + b","stop":false}',
                                     '{"index":0,"content":"","stop":true,"stop_type":"eos",' ..
                                     '"tokens_predicted":2,"tokens_evaluated":9}' } } }))
    local evs = {}
    lu.infill_stream(client("infill_stream", "pace=5"), { input_prefix = "def add(a, b):\n    ",
                                                          input_suffix = "\n" },
                     function(ev) evs[#evs + 1] = ev end, O)
    assert.equal(0, #evs)
    luv.run()
    assert.equal(3, #evs)
    assert.equal("return a + b", evs[3].content)
    assert.equal("stop", evs[3].stop_reason)
    local want = util.collect(client("completion_native_stream"):completion_stream{ prompt = "x" })
    local got = {}
    lu.completion_stream(client("completion_native_stream"), { prompt = "x" },
                         function(ev) got[#got + 1] = ev end, O)
    luv.run()
    -- the same events, but for the clock's figures of each run
    for _, evs_ in ipairs{ want, got } do
      local st = evs_[#evs_].stats
      assert.is_true(st.first_token_ms <= st.total_ms)
      st.first_token_ms, st.total_ms = nil, nil
    end
    assert.same(want, got)
  end)
end)
