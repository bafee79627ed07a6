-- The router's affinity strategy (issue 18): a conversation stays on one
-- deployment (its prompt cache), decided by rendezvous hashing of its key,
-- the same in every process, with bounded load, health and cooldown.
-- Real HTTP to the fixture server (one replay path per deployment, so its
-- log tells who was asked) and, for "another process", a child process.
local router = require "llamacpp.router"
local plan = require "llamacpp.router.plan"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local has_luv = pcall(require, "luv")

local function msgs(first, ...)
  local m = { { role = "system", content = "You are terse." }, { role = "user", content = first } }
  for i, t in ipairs{ ... } do
    m[#m + 1] = { role = i % 2 == 1 and "assistant" or "user", content = t }
  end
  return m
end

local function fake_time()
  local t = { now = 1000 }
  t.clock = function() return t.now end
  t.sleep = function(s) t.now = t.now + s end
  return t
end

describe("router strategy affinity", function()
  local srv
  setup(function()
    srv = fixture.start()
    for _, n in ipairs{ "a", "b", "c", "d" } do
      srv:write("ok_" .. n, util.fixture("cache_turn2_nonstream"))
      srv:write("stream_" .. n, util.fixture("chat_stream_usage"))
    end
  end)
  teardown(function() srv:stop() end)

  local function deps(names, kind)
    local list = {}
    for i, n in ipairs(names) do
      list[i] = { name = n, endpoint = srv:replay((kind or "ok_") .. n) }
    end
    return list
  end

  local function new(names, extra)
    local t = fake_time()
    local tier = deps(names, extra and extra.kind)
    tier.strategy = "affinity"
    local opts = { tiers = { x = tier }, clock = t.clock, sleep = t.sleep,
                   backoff = { base = 0.01, max = 0.02 } }
    for k, v in pairs(extra or {}) do if k ~= "kind" then opts[k] = v end end
    return router.new(opts), t
  end

  -- which deployment answered each of sessions s1..sN (blocking chat)
  local function homes(r, n)
    local out = {}
    for i = 1, n do
      local res, err = r:chat{ messages = msgs("hi"), session = "s" .. i }
      assert.is_nil(err)
      out["s" .. i] = res.provider
    end
    return out
  end

  it("sends every turn of a session to the same deployment, and spreads sessions", function()
    local r = new{ "a", "b", "c" }
    local first = homes(r, 30)
    local used = {}
    for _, p in pairs(first) do used[p] = (used[p] or 0) + 1 end
    assert.equal(3, (used.a and 1 or 0) + (used.b and 1 or 0) + (used.c and 1 or 0))
    for turn = 2, 3 do
      for s, p in pairs(first) do
        local res = assert(r:chat{ messages = msgs("hi", "hello", "turn " .. turn), session = s })
        assert.equal(p, res.provider)
      end
    end
    -- every answer was at home: nothing was in flight, nothing down
    local home, away = 0, 0
    for _, st in ipairs(r:status()) do home, away = home + st.home, away + st.away end
    assert.equal(90, home)
    assert.equal(0, away)
  end)

  it("never sends the session to the server", function()
    local r = new{ "a", "b" }
    local since = util.last_seq(srv)
    assert(r:chat{ messages = msgs("hi"), session = "secret-session" })
    local reqs = srv:requests(since)
    assert.equal(1, #reqs)
    local body = cjson.decode(reqs[1].body)
    assert.is_nil(body.session)
    assert.is_nil(reqs[1].body:find("secret-session", 1, true))
  end)

  it("sends the session in the header session_header names, and only there", function()
    local llamacpp = require "llamacpp"
    local c = llamacpp.new{ endpoint = srv:replay("ok_a"), session_header = "X-Session-Id" }
    local function last() local r = srv:requests(); return r[#r] end
    assert(c:chat{ messages = msgs("hi"), session = "conv-42" })
    assert.equal("conv-42", last().headers["x-session-id"])
    assert.is_nil(cjson.decode(last().body).session)
    assert(c:chat{ messages = msgs("hi") })
    assert.is_nil(last().headers["x-session-id"])
    local s = llamacpp.new{ endpoint = srv:replay("stream_a"), session_header = "X-Session-Id" }
    local evs = util.collect(s:chat_stream{ messages = msgs("hi"), session = "conv-43", resumable = true })
    assert.equal("done", evs[#evs].type)
    assert.equal("conv-43", last().headers["x-session-id"])
    assert.is_string(last().headers["x-conversation-id"])          -- both lines
    -- through the router, from a deployment's options; on the loop too
    local r = router.new{ tiers = { x = { strategy = "affinity",
      { name = "g", endpoint = srv:replay("ok_b"), session_header = "X-Affinity" } } } }
    assert(r:chat{ messages = msgs("hi"), session = "conv-44" })
    assert.equal("conv-44", last().headers["x-affinity"])
    if has_luv then
      local luv, done = require "luv", nil
      require("llamacpp.uv").chat(c, { messages = msgs("hi"), session = "conv-45" }, function(res) done = res end)
      local deadline = os.time() + 30
      while not done do luv.run("once"); assert(os.time() < deadline, "the loop's chat did not end") end
      assert.equal("conv-45", last().headers["x-session-id"])
    end
    assert.error_matches(function() c:chat{ messages = msgs("hi"), session = "a\r\nX-Evil: 1" } end,
                         "'session' contains CR, LF or NUL")
    assert.error_matches(function() llamacpp.new{ session_header = "bad name" } end, "bad header name")
  end)

  it("maps keys the same in another process made from the same configuration", function()
    local names = { "a", "b", "c" }
    local here = homes(new(names), 25)
    local list = deps(names)
    local wait = util.spawn(([[
local router = require "llamacpp.router"
local list = %s
list.strategy = "affinity"
local r = router.new{ tiers = { x = list } }
for i = 1, 25 do
  local res = assert(r:chat{ messages = { { role = "system", content = "You are terse." },
                                          { role = "user", content = "hi" } }, session = "s" .. i })
  print("s" .. i, res.provider)
end
]]):format(("{ %s }"):format(table.concat((function()
      local t = {}
      for i, d in ipairs(list) do t[i] = ("{ name = %q, endpoint = %q }"):format(d.name, d.endpoint) end
      return t
    end)(), ", "))))
    local out = wait()
    local there, n = {}, 0
    for s, p in out:gmatch("(s%d+)\t(%a)\n") do there[s], n = p, n + 1 end
    assert.equal(25, n, out)
    assert.same(here, there)
  end)

  it("moves only the removed deployment's keys, and about 1/N to an added one", function()
    local three = homes(new{ "a", "b", "c" }, 40)
    local two = homes(new{ "a", "b" }, 40)
    for s, p in pairs(three) do
      if p ~= "c" then assert.equal(p, two[s]) end
    end
    local four = homes(new{ "a", "b", "c", "d" }, 40)
    local moved = 0
    for s, p in pairs(three) do
      if four[s] ~= p then
        assert.equal("d", four[s])                 -- a key moves only to the new one
        moved = moved + 1
      end
    end
    assert.is_true(moved > 0 and moved < 40)
  end)

  it("keys a request without a session by its stable prefix", function()
    local r = new{ "a", "b", "c" }
    local used = {}
    for i = 1, 20 do
      local q = "question " .. i
      local res1 = assert(r:chat{ messages = msgs(q) })
      local res2 = assert(r:chat{ messages = msgs(q, "an answer", "a follow-up") })
      assert.equal(res1.provider, res2.provider)
      used[res1.provider] = true
    end
    assert.is_true(next(used, next(used)) ~= nil)  -- at least two deployments
    -- the key: model, system, tools, messages up to the first user one;
    -- the same in any key order (canonical JSON)
    local k1 = plan.affinity_key{ model = "m", tools = { { type = "function", ["function"] = { name = "f",
      parameters = { type = "object", properties = { a = { type = "string" }, b = { type = "number" } } } } } },
      messages = msgs("x", "y") }
    local k2 = plan.affinity_key{ messages = msgs("x"), model = "m", tools = { { ["function"] = {
      parameters = { properties = { b = { type = "number" }, a = { type = "string" } }, type = "object" },
      name = "f" }, type = "function" } } }
    assert.equal(k1, k2)
    assert.are_not.equal(k1, plan.affinity_key{ model = "n", messages = msgs("x") })
    assert.are_not.equal(k1, plan.affinity_key{ model = "m", messages = msgs("z") })
    assert.equal("session\0abc", plan.affinity_key{ session = "abc", messages = msgs("x") })
  end)

  it("bounds the load: a hot session's concurrent streams spread, then go home again", function()
    local r = new({ "a", "b", "c" }, { kind = "stream_" })
    local home = util.collect(r:chat_stream{ messages = msgs("hi"), session = "s1" })[1].provider
    -- bounded load: the n-th request is not sent where more than
    -- ceil(1.25 * (n - 1) / 3) are under way (0, 1, 1, 2, 2 for n = 1..5)
    local streams, at = {}, {}
    for i = 1, 5 do
      streams[i] = r:open_stream{ messages = msgs("hi"), session = "s1" }   -- in flight from here
      local ev = assert(streams[i]:next())
      at[i] = ev.provider
    end
    assert.equal(home, at[1])
    assert.equal(home, at[2])                     -- one under way is not more than 1
    assert.are_not.equal(home, at[3])             -- two are
    assert.same({ home, home, at[3], home, at[3] }, at)
    for i = 1, 5 do
      local last
      repeat
        local ev = streams[i]:next()
        last = ev or last
      until ev == nil
      assert.equal("done", last.type)
    end
    assert.equal(home, util.collect(r:chat_stream{ messages = msgs("hi"), session = "s1" })[1].provider)
    local away = 0
    for _, st in ipairs(r:status()) do away = away + st.away end
    assert.equal(2, away)
  end)

  it("epsilon: a larger bound keeps more of a hot session at home", function()
    local r = new({ "a", "b", "c" }, { kind = "stream_", epsilon = 3 })
    local streams, at = {}, {}
    for i = 1, 3 do
      streams[i] = r:open_stream{ messages = msgs("hi"), session = "s1" }
      at[i] = assert(streams[i]:next()).provider
    end
    -- cap = ceil(4 * inflight / 3): 2 for the second, 3 for the third
    assert.equal(at[1], at[2])
    assert.equal(at[1], at[3])
    for i = 1, 3 do streams[i]:close() end
  end)

  it("sends a key whose deployment is down to the next on the ring, and back after cooldown", function()
    srv:write("flaky", util.fixture("health_loading"))          -- 503 Loading model
    local t = fake_time()
    local list = deps{ "a", "b" }
    table.insert(list, 1, { name = "c", endpoint = srv:replay("flaky") })
    list.strategy = "affinity"
    local r = router.new{ tiers = { x = list }, clock = t.clock, sleep = t.sleep, retries = 0,
                          cooldown = { failures = 1, period = 30 } }
    -- the sessions whose home is c
    local mine = {}
    for i = 1, 40 do
      local res = assert(r:chat{ messages = msgs("hi"), session = "s" .. i })
      if #res.attempts > 0 then
        assert.equal("c", res.attempts[1].provider)
        mine[#mine + 1] = { s = "s" .. i, next = res.provider }
      end
      t.now = t.now + 31                                           -- c's cooldown over each time
    end
    assert.is_true(#mine > 0)
    for _, m in ipairs(mine) do
      local res = assert(r:chat{ messages = msgs("hi"), session = m.s })
      assert.equal(m.next, res.provider)                          -- the same next one
      t.now = t.now + 31
    end
    srv:write("flaky", util.fixture("cache_turn2_nonstream"))    -- c is back
    for _, m in ipairs(mine) do
      local res = assert(r:chat{ messages = msgs("hi"), session = m.s })
      assert.equal("c", res.provider)
      assert.equal(0, #res.attempts)
    end
  end)

  it("counts the cache figures of the answers in status()", function()
    local r = new{ "a", "b" }
    for i = 1, 4 do assert(r:chat{ messages = msgs("hi"), session = "s" .. i }) end
    local answered, cached, evaluated = 0, 0, 0
    for _, st in ipairs(r:status()) do
      answered = answered + st.answered
      cached, evaluated = cached + st.cached_tokens, evaluated + st.evaluated_tokens
    end
    assert.equal(4, answered)
    assert.equal(4 * 441, cached)         -- cache_turn2_nonstream: 442 prompt tokens, 441 cached
    assert.equal(4 * 1, evaluated)
  end)

  it("streams and the event loop go where blocking chat goes, through the one plan", function()
    local names = { "a", "b", "c" }
    local blocking = homes(new(names), 10)
    local r = new({ "a", "b", "c" }, { kind = "stream_" })
    for i = 1, 10 do
      local s = "s" .. i
      local evs = util.collect(r:chat_stream{ messages = msgs("hi"), session = s })
      assert.equal("done", evs[#evs].type)
      assert.equal(blocking[s], evs[#evs].provider)
    end
    if not has_luv then return pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end
    local uv = require "llamacpp.uv"
    local luv = require "luv"
    local got, ended = {}, 0
    for i = 1, 10 do
      local s = "s" .. i
      uv.router_stream(r, { messages = msgs("hi"), session = s }, function(ev)
        if ev.type == "done" or ev.type == "error" then got[s], ended = ev, ended + 1 end
      end)
    end
    local deadline = os.time() + 30                               -- a hang guard
    while ended < 10 do
      luv.run("once")
      assert(os.time() < deadline, "the loop's streams did not end")
    end
    for s, ev in pairs(got) do
      assert.equal("done", ev.type)
      assert.equal(blocking[s], ev.provider)
    end
  end)

  it("refuses bad configuration and bad sessions with clear errors", function()
    assert.error_matches(function() new({ "a" }, { epsilon = -1 }) end, "'epsilon' must be a number >= 0")
    assert.error_matches(function()
      router.new{ tiers = { x = { strategy = "affinity", epsilon = "x", { endpoint = srv.url } } } }
    end, "tiers.x: 'epsilon' must be a number >= 0")
    assert.error_matches(function()
      router.new{ tiers = { x = { strategy = "affinity", { endpoint = srv.url }, { endpoint = srv.url } } } }
    end, "two deployments are named 'llamacpp@.*give each a 'name'")
    local r = new{ "a", "b" }
    assert.error_matches(function() r:chat{ messages = msgs("hi"), session = 7 } end,
                         "'session' must be a non%-empty string %(got number%)")
    assert.error_matches(function() r:chat{ messages = msgs("hi"), session = "" } end,
                         "'session' must be a non%-empty string")
    assert.error_matches(function() router.new{ strategy = "sticky", tiers = { x = { { endpoint = srv.url } } } } end,
                         "unknown strategy 'sticky' %(order, round_robin, least_busy, weighted, affinity%)")
  end)
end)
