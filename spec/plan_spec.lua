-- llamacpp.router.plan: one fault matrix through the four entry points
-- that drive a routed request's plan (router:chat, router:chat_stream,
-- router:open_stream; llamacpp.uv's router_chat and router_stream), each
-- against the fixture server and closed ports. Same fault, same result:
-- the same err.kind and retryable, the same attempts (names and kinds, in
-- order), the same provider on success, and, where it streams, the same
-- event sequence. A whole answer and a stream may differ where the wire
-- does (a cut body has no "first event"): each case says what each mode
-- gives, and every driver of a mode must give exactly that.
local router = require "llamacpp.router"
local fixture = require "fixture.control"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local MSGS = { { role = "user", content = "Say hello." } }
-- an image by URL: the Ollama wire cannot carry it (base64 only)
local IMAGE_URL = { { role = "user", content = { { type = "text", text = "What is this?" },
  { type = "image_url", image_url = { url = "http://127.0.0.1:1/cat.png" } } } } }

-- What a driver's run came to, in one comparable table.
local function summary(res, err, evs)
  local out = { types = {} }
  for i, ev in ipairs(evs or {}) do
    out.types[i] = ev.type
    if ev.type == "done" then res = ev end
    if ev.type == "error" then err = ev.error end
    if ev.type ~= "done" and ev.type ~= "error" then
      out.provider_of_events = ev.provider
      out.first_provider = out.first_provider or ev.provider
    end
  end
  local attempts = (res or err or {}).attempts or {}
  out.attempts = {}
  for i, a in ipairs(attempts) do out.attempts[i] = a.provider .. ":" .. a.error.kind end
  if res then
    out.ok, out.provider = true, res.provider
  else
    out.ok, out.kind, out.retryable, out.provider = false, err.kind, err.retryable, err.provider
    out.message = err.message
  end
  if not evs then out.types = nil end
  return out
end

local function collect(s)
  local evs = {}
  while true do
    local ev = s:next()
    if ev == nil then break end
    evs[#evs + 1] = ev
  end
  s:close()
  return evs
end

-- The drivers: each runs req through a router made by make() and sums up.
local WHOLE = {
  chat = function(r, req) return summary(r:chat(req)) end,
  uv_router_chat = has_luv and function(r, req)
    local got
    lu.router_chat(r, req, function(res, err) got = summary(res, err) end, { uv = luv })
    luv.run()
    return got
  end,
}
local STREAM = {
  chat_stream = function(r, req)
    local evs = {}
    for ev in r:chat_stream(req) do evs[#evs + 1] = ev end
    return summary(nil, nil, evs)
  end,
  open_stream = function(r, req) return summary(nil, nil, collect(r:open_stream(req))) end,
  uv_router_stream = has_luv and function(r, req)
    local evs = {}
    lu.router_stream(r, req, function(ev) evs[#evs + 1] = ev end, { uv = luv })
    luv.run()
    return summary(nil, nil, evs)
  end,
}

describe("llamacpp.router.plan", function()
  if not has_luv then
    it("runs the uv drivers too", function()
      pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv (the blocking drivers still run)")
    end)
  end
  local srv
  setup(function()
    srv = fixture.start()
    srv:write("ok", util.fixture("chat_nonstream"))
    srv:write("stream", util.fixture("chat_stream_usage"))
    srv:write("loading", fixture.http_response(503, { { "Content-Type", "application/json" } },
      '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'))
    srv:write("limited", fixture.http_response(429, { { "Retry-After", "30" },
      { "Content-Type", "application/json" } },
      '{"error":{"code":429,"message":"slow down","type":"rate_limit_error"}}'))
    srv:write("broken", fixture.http_response(500, { { "Content-Type", "application/json" } },
      '{"error":{"code":500,"message":"boom","type":"server_error"}}'))
    srv:write("bad", util.fixture("err_context_exceeded"))
    -- a stream without its [DONE]: the server closed after the last chunk
    local events = util.body(util.fixture("chat_stream_usage")):gsub("data: %[DONE%]\n\n", "")
    srv:write("truncated", fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, events))
  end)
  -- the progress capture, cut after its last progress chunk (before any text)
  local function progress_cut()
    local data, last = util.fixture("chat_stream_progress"), nil
    for i in data:gmatch("()prompt_progress") do last = i end
    return srv:replay("chat_stream_progress", "cut=" .. (data:find("\n\n\r\n", last, true) + 3))
  end
  teardown(function() srv:stop() end)

  local function answers(mode) return srv:replay(mode == "whole" and "ok" or "stream") end

  -- Each case: deployments(mode) -> the tier's list; what each mode gives.
  local CASES = {
    { name = "connection refused, then the next deployment",
      deployments = function(mode) return { { name = "one", endpoint = util.down() },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = { "one:connection" } },
      stream = { ok = true, provider = "two", attempts = { "one:connection" } } },
    { name = "503 loading, then the next deployment",
      deployments = function(mode) return { { name = "one", endpoint = srv:replay("loading") },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = { "one:http" } },
      stream = { ok = true, provider = "two", attempts = { "one:http" } } },
    { name = "429 with Retry-After, then the next deployment",
      deployments = function(mode) return { { name = "one", endpoint = srv:replay("limited") },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = { "one:http" } },
      stream = { ok = true, provider = "two", attempts = { "one:http" } },
      after = function(r) assert.is_true(r:status()[1].retry_after > 0) end },
    { name = "500 before the first event, then the next deployment",
      deployments = function(mode) return { { name = "one", endpoint = srv:replay("broken") },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = { "one:http" } },
      stream = { ok = true, provider = "two", attempts = { "one:http" } } },
    { name = "a failure after the first event is final (a cut whole answer is not an event)",
      deployments = function(mode)
        local cut = mode == "whole" and "cut=400" or "cut=1200"
        return { { name = "one", endpoint = srv:replay(mode == "whole" and "ok" or "stream", cut) },
                 { name = "two", endpoint = answers(mode) } }
      end,
      whole = { ok = true, provider = "two", attempts = { "one:network" } },
      stream = { ok = false, kind = "network", retryable = false, provider = "one", attempts = {} } },
    { name = "a failure after progress alone passes on (progress is not text)",
      req = { messages = MSGS, progress = true },
      deployments = function(mode)
        return { { name = "one", endpoint = mode == "whole" and util.down() or progress_cut() },
                 { name = "two", endpoint = answers(mode) } }
      end,
      whole = { ok = true, provider = "two", attempts = { "one:connection" } },
      stream = { ok = true, provider = "two", attempts = { "one:network" } },
      progress_from = "one" },
    { name = "a deployment that cannot switch thinking is skipped",
      req = { messages = MSGS, thinking = false },
      deployments = function(mode)
        return { { name = "openai", provider = "openai", endpoint = util.down() },
                 { name = "two", endpoint = answers(mode) } }
      end,
      whole = { ok = true, provider = "two", attempts = { "openai:unsupported" } },
      stream = { ok = true, provider = "two", attempts = { "openai:unsupported" } } },
    { name = "a truncated stream is final",
      deployments = function(mode)
        return { { name = "one", endpoint = srv:replay(mode == "whole" and "ok" or "truncated") },
                 { name = "two", endpoint = answers(mode) } }
      end,
      whole = { ok = true, provider = "one", attempts = {} },
      stream = { ok = false, kind = "truncated", retryable = false, provider = "one", attempts = {} } },
    { name = "a 400 is final: no failover",
      deployments = function(mode) return { { name = "one", endpoint = srv:replay("bad") },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = false, kind = "http", retryable = false, provider = "one", attempts = {} },
      stream = { ok = false, kind = "http", retryable = false, provider = "one", attempts = {} } },
    { name = "every deployment down: no_provider with every attempt",
      deployments = function() return { { name = "one", endpoint = util.down() },
                                        { name = "two", endpoint = util.down() } } end,
      whole = { ok = false, kind = "no_provider", retryable = false,
                attempts = { "one:connection", "two:connection" } },
      stream = { ok = false, kind = "no_provider", retryable = false,
                 attempts = { "one:connection", "two:connection" } } },
    { name = "a deployment in cooldown is left for the others",
      options = { cooldown = { failures = 1, period = 600 } },
      before = function(r) r:chat{ messages = MSGS } end,    -- "one" fails once: it cools down
      deployments = function(mode) return { { name = "one", endpoint = util.down() },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = {} },
      stream = { ok = true, provider = "two", attempts = {} } },
    { name = "a deployment whose wire cannot carry the request is skipped",
      req = { messages = IMAGE_URL },
      deployments = function(mode) return { { name = "ollama", provider = "ollama", endpoint = util.down() },
                                            { name = "two", endpoint = answers(mode) } } end,
      whole = { ok = true, provider = "two", attempts = { "ollama:unsupported" } },
      stream = { ok = true, provider = "two", attempts = { "ollama:unsupported" } } },
    { name = "no deployment can carry the request: no_provider, saying why",
      req = { messages = IMAGE_URL },
      deployments = function() return { { name = "ollama", provider = "ollama", endpoint = util.down() } } end,
      whole = { ok = false, kind = "no_provider", retryable = false, attempts = { "ollama:unsupported" } },
      stream = { ok = false, kind = "no_provider", retryable = false, attempts = { "ollama:unsupported" } },
      message = "ollama .*cannot take this request: Ollama takes images as base64 data, not URLs" },
  }

  local function make(case, mode)
    local opts = { retries = 0, sleep = function() error("no case here waits between passes") end,
                   tiers = { t = case.deployments(mode) } }
    for k, v in pairs(case.options or {}) do opts[k] = v end
    local r = router.new(opts)
    -- "before" runs with a deployment that answers whole, whatever the mode
    if case.before then case.before(r) end
    return r
  end

  for _, case in ipairs(CASES) do
    for mode, drivers in pairs{ whole = WHOLE, stream = STREAM } do
      local want = case[mode]
      it(case.name .. " (" .. mode .. ")", function()
        local seen = {}
        for dname, drive in pairs(drivers) do
          local r = make(case, mode)
          local got = drive(r, case.req or { messages = MSGS })
          if case.after then case.after(r) end
          for k, v in pairs(want) do
            assert.same(v, got[k], dname .. ": " .. k)
          end
          if case.message then assert.matches(case.message, got.message) end
          got.message = nil           -- it names each run's own closed ports
          if mode == "stream" and case.progress_from then
            assert.equal("progress", got.types[1], dname)
            assert.equal(case.progress_from, got.first_provider, dname .. ": progress of the first try")
          end
          if mode == "stream" then
            if got.ok then
              assert.equal("done", got.types[#got.types], dname)
              assert.equal(got.provider, got.provider_of_events, dname .. ": events carry ev.provider")
            else
              assert.equal("error", got.types[#got.types], dname)
            end
          end
          seen[#seen + 1] = { dname, got }
        end
        -- and every driver of the mode saw the same events
        for i = 2, #seen do
          assert.same(seen[1][2], seen[i][2], seen[1][1] .. " vs " .. seen[i][1])
        end
      end)
    end
  end

  it("prints a routed stream with its state and deployment", function()
    local r = router.new{ tiers = { t = { { name = "one", endpoint = srv:replay("stream") } } } }
    local s = r:open_stream{ messages = MSGS }
    assert.equal("llamacpp.RouterStream (open via one)", tostring(s))
    s:close()
    assert.equal("llamacpp.RouterStream (closed via one)", tostring(s))
  end)

  describe("a bad request raises at the caller's line before any attempt", function()
    local r
    before_each(function()
      r = router.new{ tiers = { t = { { name = "one", endpoint = srv:replay("ok") } } } }
    end)
    local calls = {
      chat = function(req) return r:chat(req) end,
      chat_stream = function(req) return r:chat_stream(req) end,
      open_stream = function(req) return r:open_stream(req) end,
    }
    if has_luv then
      calls.uv_router_chat = function(req) return lu.router_chat(r, req, function() end, { uv = luv }) end
      calls.uv_router_stream = function(req) return lu.router_stream(r, req, function() end, { uv = luv }) end
    end
    for name, call in pairs(calls) do
      it(name, function()
        local before = #srv:requests()
        for _, req in ipairs{ { messages = "hello" }, { system = 5, messages = MSGS }, {},
                              { messages = MSGS, tier = "nope" } } do
          local ok, msg = pcall(call, req)
          assert.is_false(ok)
          assert.matches("plan_spec%.lua:%d+: bad request: ", msg)
        end
        assert.equal(before, #srv:requests(), "no request reached a server")
      end)
    end
  end)
end)
