-- llamacpp.uv running a router (llamacpp.router) on a standalone luv loop,
-- against the fixture server and closed ports: failover, a backoff that is
-- a timer (the router's own sleep must never be called), health checks
-- that are requests on the loop, cancel, and argument errors.
local router = require "llamacpp.router"
local fixture = require "fixture.control"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local MSGS = { { role = "user", content = "Say hello." } }

local down = util.down

local text_of = util.text_of

-- A router whose sleep raises: on a loop, waiting must be a timer.
local function new(opts)
  opts.sleep = function() error("the router slept on the loop's thread") end
  if opts.backoff == nil then opts.backoff = { base = 0.01, max = 0.05 } end
  return router.new(opts)
end

-- Calls f(stop) every ms milliseconds until stop() is called.
local function ticker(ms, f)
  local t = luv.new_timer()
  local function stop()
    if not t:is_closing() then t:stop(); t:close() end
  end
  t:start(ms, ms, function() f(stop) end)
  return stop
end

describe("llamacpp.uv with a router", function()
  if not has_luv then
    it("needs luv", function() pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end)
    return
  end
  local srv
  local O = { uv = luv }
  setup(function()
    srv = fixture.start()
    srv:write("ok", util.fixture("chat_nonstream"))
    srv:write("stream", util.fixture("chat_stream_usage"))
    srv:write("unauthorized", util.fixture("auth_missing_key"))
  end)
  teardown(function() srv:stop() end)

  local function hits(part) return util.hits(srv, part) end

  it("streams from the second deployment when the first is down", function()
    local r = new{ tiers = { fast = { { name = "one", endpoint = down() },
                                      { name = "two", endpoint = srv:replay("stream") } } } }
    local evs, busy = {}, {}
    lu.router_stream(r, { messages = MSGS }, function(ev)
      evs[#evs + 1] = ev
      if #evs == 1 then busy = { r:status()[1].inflight, r:status()[2].inflight } end
    end, O)
    assert.equal(0, #evs)              -- nothing is called back inside the call
    luv.run()                          -- returns when nothing is watched any more
    assert.same({ 0, 1 }, busy)        -- least_busy sees the stream while it runs
    local last = evs[#evs]
    assert.equal("done", last.type)
    assert.equal(util.expected("chat_stream_usage").content, text_of(evs))
    for _, ev in ipairs(evs) do assert.equal("two", ev.provider) end
    assert.equal(1, #last.attempts)
    assert.equal("one", last.attempts[1].provider)
    assert.equal("connection", last.attempts[1].error.kind)
    assert.equal(0, r:status()[2].inflight)
  end)

  it("chats through the second deployment when the first is down", function()
    local r = new{ tiers = { fast = { { name = "one", endpoint = down() },
                                      { name = "two", endpoint = srv:replay("ok") } } } }
    local calls, res, err = 0, nil, nil
    lu.router_chat(r, { messages = MSGS }, function(a, b) calls, res, err = calls + 1, a, b end, O)
    luv.run()
    assert.equal(1, calls)
    assert.is_nil(err)
    assert.equal("two", res.provider)
    assert.equal("fast", res.tier)
    assert.is_string(res.content)
    assert.equal("one", res.attempts[1].provider)
  end)

  it("ends with the error, untried deployments untouched, when it is not retryable", function()
    local before = hits("/replay/ok/")
    local r = new{ tiers = { fast = { { name = "locked", endpoint = srv:replay("unauthorized") },
                                      { name = "open", endpoint = srv:replay("ok") } } } }
    local res, err
    lu.router_chat(r, { messages = MSGS }, function(a, b) res, err = a, b end, O)
    luv.run()
    assert.is_nil(res)
    assert.equal(401, err.status)
    assert.equal("locked", err.provider)
    local evs = {}
    lu.router_stream(r, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    luv.run()
    assert.equal(1, #evs)
    assert.equal("error", evs[1].type)
    assert.equal(401, evs[1].error.status)
    assert.equal(before, hits("/replay/ok/"))
  end)

  it("waits out a backoff on a timer: the loop runs meanwhile, the router never sleeps", function()
    srv:write("flaky", util.fixture("health_loading"))            -- 503 Loading model
    local r = new{ retries = 1, backoff = { base = 0.3, max = 0.3 }, random = function() return 1 end,
                   tiers = { only = { { name = "busy", endpoint = srv:replay("flaky") } } } }
    local evs, h, ticks_waiting = {}, nil, 0
    local stop = ticker(5, function(stop)
      if h and h.waiting then
        ticks_waiting = ticks_waiting + 1
        srv:write("flaky", util.fixture("chat_stream_usage"))     -- up again
      end
      if h and h.ended then stop() end
    end)
    h = lu.router_stream(r, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    luv.run()
    stop()
    assert.is_true(ticks_waiting > 0, "the loop never ran during the backoff")
    local last = evs[#evs]
    assert.equal("done", last.type, last.error and tostring(last.error))
    assert.equal("busy", last.provider)
    assert.equal(503, last.attempts[1].error.status)
    assert.equal(util.expected("chat_stream_usage").content, last.content)
  end)

  it("checks health with a request on the loop, not a blocking call", function()
    -- /health and the chat both answer after 1.5 s: a blocking check would
    -- hold the loop (and the router_stream call) that long
    local r = new{ health_check = { interval = 60, timeout = 10 },
                   tiers = { only = { { name = "slow", endpoint = srv:replay("stream", "delay=1500") } } } }
    local evs, h, unknown_at_tick = {}, nil, false
    local stop = ticker(10, function(stop)
      if h and not h.ended and r:status()[1].healthy == nil then unknown_at_tick = true end
      if h and h.ended then stop() end
    end)
    h = lu.router_stream(r, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    luv.run()
    stop()
    assert.is_true(unknown_at_tick, "the health check was over before the loop ran")
    assert.is_boolean(r:status()[1].healthy)        -- it was answered on the loop
    assert.equal("done", evs[#evs].type)
    assert.equal(1, hits("/replay/stream/delay=1500/health"))
  end)

  it("cancels during a backoff: no callback, the timer gone, the loop ends", function()
    srv:write("down503", util.fixture("health_loading"))
    local r = new{ retries = 3, backoff = { base = 5, max = 5 }, random = function() return 1 end,
                   tiers = { only = { { name = "x", endpoint = srv:replay("down503") } } } }
    local evs, h, left = {}, nil, nil
    local stop = ticker(5, function(stop)
      if h and h.waiting then
        h:cancel(); h:cancel()
        stop()
        left = {}                     -- what the loop would still wait for
        luv.walk(function(hd)
          if hd:is_active() and not hd:is_closing() then left[#left + 1] = tostring(hd) end
        end)
      end
    end)
    h = lu.router_stream(r, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    luv.run()
    stop()
    assert.equal(0, #evs)
    assert.is_true(h.cancelled)
    assert.same({}, left)             -- the 5 s backoff timer is gone with the cancel
    assert.equal(0, r:status()[1].inflight)
  end)

  it("calls back from the loop even when the router has nothing to try at once", function()
    srv:write("limited", fixture.http_response(429, { { "Retry-After", "3600" },
      { "Content-Type", "application/json" } },
      '{"error":{"code":429,"message":"slow down","type":"rate_limit_error"}}'))
    local r = new{ retries = 0, tiers = { x = { { name = "limited", endpoint = srv:replay("limited") } } } }
    local _, err = r:chat{ messages = MSGS }           -- the deployment now says: in an hour
    assert.equal("no_provider", err.kind)
    assert.equal(429, err.attempts[1].error.status)
    local before = hits("/replay/limited/")
    local evs, calls = {}, {}
    lu.router_stream(r, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    lu.router_chat(r, { messages = MSGS }, function(res, e) calls[#calls + 1] = { res, e } end, O)
    assert.equal(0, #evs)                    -- not inside the calls
    assert.equal(0, #calls)
    luv.run()
    assert.equal(1, #evs)
    assert.equal("no_provider", evs[1].error.kind)
    assert.equal(1, #calls)
    assert.is_nil(calls[1][1])
    assert.equal("no_provider", calls[1][2].kind)
    assert.equal(before, hits("/replay/limited/"))     -- nothing was sent
  end)

  it("cancels a request in flight: the server sees the disconnect, no callback comes", function()
    local r = new{ tiers = { x = { { name = "x", endpoint = srv:replay("ok", "delay=1000") } } } }
    local calls, h = 0, nil
    local stop = ticker(5, function(stop)
      if h and util.hits(srv, "/replay/ok/delay=1000/") > 0 then h:cancel(); stop() end
    end)
    h = lu.router_chat(r, { messages = MSGS }, function() calls = calls + 1 end, O)
    luv.run()
    stop()
    assert.equal(0, calls)
    assert.truthy(srv:wait_for(function(rec)
      return rec.event == "abort" and rec.path:find("/replay/ok/delay=1000/", 1, true)
    end, 5), "no abort in the server log")
    assert.equal(0, r:status()[1].inflight)
  end)

  it("reports a callback that raises to the request's on_error and cancels it", function()
    local r = new{ tiers = { x = { { name = "x", endpoint = srv:replay("stream", "pace=5") } } } }
    local reported, seen = {}, 0
    local h = lu.router_stream(r, { messages = MSGS }, function()
      seen = seen + 1
      error("boom in a routed callback")
    end, { uv = luv, on_error = function(msg) reported[#reported + 1] = msg end })
    luv.run()
    assert.equal(1, seen)
    assert.equal(1, #reported)
    assert.matches("boom in a routed callback", reported[1])
    assert.is_true(h.cancelled)
    assert.equal(0, r:status()[1].inflight)
  end)

  it("raises at the caller's line for bad arguments", function()
    local r = new{ tiers = { x = { { endpoint = srv:replay("ok") } } } }
    local f = function() end
    local ok, msg = pcall(lu.router_stream, r, "hi", f, O)
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'router_stream'", msg)
    ok, msg = pcall(function() local h = lu.router_chat(r, { messages = MSGS }, 5, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_router_spec%.lua:%d+: bad argument #3 to 'router_chat'", msg)
    ok, msg = pcall(function() local h = lu.router_stream(r, {}, f, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_router_spec%.lua:%d+: bad request: 'messages' is required", msg)
    ok, msg = pcall(function() local h = lu.router_stream(r, { messages = MSGS, tier = "nope" }, f, O); return h end)
    assert.is_false(ok)
    assert.matches("^spec/uv_router_spec%.lua:%d+: bad request: unknown tier 'nope'", msg)
    ok, msg = pcall(lu.router_chat, {}, { messages = MSGS }, f, O)
    assert.is_false(ok)
    assert.matches("router expected", msg)
  end)
end)
