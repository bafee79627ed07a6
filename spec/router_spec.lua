-- llamacpp.router against fixture servers that fail on purpose: real HTTP
-- to a local process (lua/llamacpp/testing/server.lua) and closed ports, never
-- mocked functions. Time is the router's injectable clock where a rule
-- depends on it (cooldown, Retry-After), so nothing here races the
-- machine's load. The llama-server answers are the captures of
-- spec/fixtures; the Anthropic and Ollama ones are written from their
-- public API references (see spec/providers_spec.lua).
local llamacpp = require "llamacpp"
local router = require "llamacpp.router"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }

-- A clock that only moves when the router sleeps (or the spec says so).
local function fake_time()
  local t = { now = 1000, slept = {} }
  t.clock = function() return t.now end
  t.sleep = function(s)
    t.slept[#t.slept + 1] = s
    if t.on_sleep then t.on_sleep(s) end
    t.now = t.now + s
  end
  return t
end

local down = util.down

local function types_of(evs)
  local out = {}
  for i, ev in ipairs(evs) do out[i] = ev.type end
  return out
end

describe("llamacpp.router", function()
  local srv
  setup(function()
    srv = fixture.start()
    -- one fixture name per deployment, so the log tells who was asked
    for _, n in ipairs{ "a", "b", "c" } do
      srv:write("ok_" .. n, util.fixture("chat_nonstream"))
      srv:write("stream_" .. n, util.fixture("chat_stream_usage"))
    end
    srv:write("loading", util.fixture("health_loading"))
    srv:write("unauthorized", util.fixture("auth_missing_key"))
  end)
  teardown(function() srv:stop() end)

  -- requests whose path contains `part`
  local function hits(part) return util.hits(srv, part) end

  local function new(opts)
    local t = opts.time or fake_time()
    opts.time = nil
    opts.sleep = opts.sleep or t.sleep
    opts.clock = opts.clock or t.clock
    if opts.backoff == nil then opts.backoff = { base = 0.01, max = 0.05 } end
    return router.new(opts), t
  end

  describe("failover", function()
    it("first deployment down, the second answers (chat and stream)", function()
      local r = new{ tiers = { fast = { { name = "one", endpoint = down() },
                                        { name = "two", endpoint = srv:replay("ok_a") } } } }
      local res, err = r:chat{ messages = MSGS }
      assert.is_nil(err)
      assert.equal("two", res.provider)
      assert.equal("llamacpp", res.provider_type)
      assert.equal("fast", res.tier)
      assert.matches("/replay/ok_a/%-$", res.endpoint)
      assert.is_string(res.content)
      assert.equal(1, #res.attempts)
      assert.equal("one", res.attempts[1].provider)
      assert.equal("connection", res.attempts[1].error.kind)

      r = new{ tiers = { fast = { { name = "one", endpoint = down() },
                                  { name = "two", endpoint = srv:replay("stream_a") } } } }
      local evs = util.collect(r:chat_stream{ messages = MSGS })
      local last = evs[#evs]
      assert.equal("done", last.type)
      for _, ev in ipairs(evs) do assert.equal("two", ev.provider) end
      assert.equal(util.expected("chat_stream_usage").content, last.content)
      assert.equal("one", last.attempts[1].provider)
    end)

    it("fails over on a 503 and on Anthropic's overloaded error event before any token", function()
      local before = hits("/replay/stream_b/")
      local r = new{ tiers = { fast = {
        { name = "loading", endpoint = srv:replay("loading") },
        { name = "claude", provider = "anthropic", api_key = "sk-ant-1234567",
          endpoint = srv:replay("anthropic_stream_overloaded") },
        { name = "local2", endpoint = srv:replay("stream_b") } } } }
      local evs = util.collect(r:chat_stream{ messages = MSGS })
      assert.equal("done", evs[#evs].type)
      assert.equal("local2", evs[1].provider)
      local a = evs[#evs].attempts
      assert.equal(2, #a)
      assert.equal(503, a[1].error.status)
      assert.equal("overloaded_error", a[2].error.code)
      assert.equal("claude", a[2].provider)
      assert.equal(before + 1, hits("/replay/stream_b/"))
    end)

    it("does not fail over on an error that is not retryable", function()
      local before = hits("/replay/ok_b/")
      local r = new{ tiers = { fast = { { name = "locked", endpoint = srv:replay("unauthorized") },
                                        { name = "open", endpoint = srv:replay("ok_b") } } } }
      local res, err = r:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(401, err.status)
      assert.equal("locked", err.provider)
      assert.equal(before, hits("/replay/ok_b/"))
    end)

    it("does not retry a failure after the first event: the stream's error is final", function()
      local before = hits("/replay/stream_c/")
      local r = new{ tiers = { fast = { { name = "dies", endpoint = srv:replay("chat_stream", "cut=1200") },
                                        { name = "spare", endpoint = srv:replay("stream_c") } } } }
      local evs = util.collect(r:chat_stream{ messages = MSGS })
      local last = evs[#evs]
      assert.equal("error", last.type)
      assert.is_true(#evs > 1)
      assert.equal("content", evs[1].type)
      assert.equal("network", last.error.kind)
      assert.is_false(last.error.retryable)
      assert.equal("dies", last.error.provider)
      assert.equal("dies", last.provider)
      assert.is_true(#last.error.partial > 0)
      for _, ev in ipairs(evs) do assert.equal("dies", ev.provider) end
      assert.equal(before, hits("/replay/stream_c/"))      -- the spare was never asked
    end)

    it("falls back to the tier's fallback tier, whatever its provider", function()
      local r = new{ tiers = {
        ["local"] = { { name = "laptop", endpoint = down() }, fallback = "cloud" },
        cloud = { { name = "claude", provider = "anthropic", endpoint = srv:replay("anthropic_stream"),
                    api_key = "sk-ant-999999", model = "claude-sonnet-4-20250514" } } },
        default_tier = "local" }
      local evs = util.collect(r:chat_stream{ messages = MSGS })
      local last = evs[#evs]
      assert.equal("done", last.type)
      assert.equal("claude", last.provider)
      assert.equal("anthropic", last.provider_type)
      assert.equal("cloud", last.tier)
      assert.equal("Hello! How can I help you today?", last.content)
      assert.equal("laptop", last.attempts[1].provider)
      -- asking the cloud tier directly never touches the local one
      evs = util.collect(r:chat_stream{ messages = MSGS, tier = "cloud" })
      assert.equal(0, #evs[#evs].attempts)
    end)
  end)

  describe("retries", function()
    it("honours Retry-After on 429 before trying again", function()
      srv:write("flaky", fixture.http_response(429, { { "Retry-After", "2" },
        { "Content-Type", "application/json" } },
        '{"error":{"code":429,"message":"slow down","type":"rate_limit_error"}}'))
      local t = fake_time()
      t.on_sleep = function() srv:write("flaky", util.fixture("chat_nonstream")) end
      local r = new{ time = t, retries = 1, tiers = { only = { { name = "busy", endpoint = srv:replay("flaky") } } } }
      local res, err = r:chat{ messages = MSGS }
      assert.is_nil(err)
      assert.equal("busy", res.provider)
      assert.equal(1, #t.slept)
      assert.is_true(t.slept[1] >= 2, "slept " .. t.slept[1])    -- not the tiny backoff
      assert.is_true(t.slept[1] < 2.1)
      assert.equal(429, res.attempts[1].error.status)
    end)

    it("goes to the next deployment at once on 429, and skips the first until Retry-After passed", function()
      srv:write("limited", fixture.http_response(429, { { "Retry-After", "30" },
        { "Content-Type", "application/json" } },
        '{"error":{"code":429,"message":"slow down","type":"rate_limit_error"}}'))
      local r, t = new{ tiers = { fast = { { name = "limited", endpoint = srv:replay("limited") },
                                           { name = "free", endpoint = srv:replay("ok_c") } } } }
      local n = hits("/replay/limited/")
      local res = assert(r:chat{ messages = MSGS })
      assert.equal("free", res.provider)
      assert.equal(0, #t.slept)
      assert.equal(n + 1, hits("/replay/limited/"))
      res = assert(r:chat{ messages = MSGS })
      assert.equal("free", res.provider)
      assert.equal(0, #res.attempts)
      assert.equal(n + 1, hits("/replay/limited/"))           -- not asked again
      local st = r:status()
      assert.equal("limited", st[1].name)
      assert.is_true(st[1].retry_after > 29 and st[1].retry_after <= 30)
      t.now = t.now + 31
      assert.equal("free", assert(r:chat{ messages = MSGS }).provider)
      assert.equal(n + 2, hits("/replay/limited/"))
    end)

    it("backs off exponentially with full jitter between passes", function()
      local seq = { 1, 1, 1, 0.5 }
      local i = 0
      local r, t = new{ retries = 3, backoff = { base = 0.1, max = 0.3 },
                        random = function() i = i + 1; return seq[i] or 0 end,
                        tiers = { x = { { endpoint = down() } } } }
      local _, err = r:chat{ messages = MSGS }
      assert.equal("no_provider", err.kind)
      assert.equal(4, #err.attempts)
      assert.equal(3, #t.slept)
      assert.is_true(math.abs(t.slept[1] - 0.1) < 1e-9)        -- 1 * min(0.3, 0.1)
      assert.is_true(math.abs(t.slept[2] - 0.2) < 1e-9)        -- 1 * min(0.3, 0.2)
      assert.is_true(math.abs(t.slept[3] - 0.3) < 1e-9)        -- capped at max
    end)

    it("gives up at once when every deployment asks to wait longer than max_retry_after", function()
      srv:write("later", fixture.http_response(429, { { "Retry-After", "600" },
        { "Content-Type", "application/json" } },
        '{"error":{"code":429,"message":"come back later","type":"rate_limit_error"}}'))
      local r, t = new{ retries = 5, tiers = { x = { { name = "later", endpoint = srv:replay("later") } } } }
      local _, err = r:chat{ messages = MSGS }
      assert.equal("no_provider", err.kind)
      assert.equal(1, #err.attempts)
      assert.equal(0, #t.slept)
      assert.equal(600, err.retry_after)
      assert.matches("retry after 600 s", err.message)
    end)
  end)

  describe("cooldown", function()
    it("cools a failing deployment down, then tries it again once the period is over", function()
      local r, t = new{ cooldown = { failures = 2, period = 30 },
                        tiers = { fast = { { name = "sick", endpoint = srv:replay("loading") },
                                           { name = "well", endpoint = srv:replay("ok_a") } } } }
      local n = hits("/replay/loading/")
      for _ = 1, 2 do
        local res = assert(r:chat{ messages = MSGS })
        assert.equal("well", res.provider)
        assert.equal("sick", res.attempts[1].provider)
      end
      assert.equal(n + 2, hits("/replay/loading/"))
      assert.is_true(r:status()[1].cooling > 29)
      -- cooling: not asked
      t.now = t.now + 29
      local res = assert(r:chat{ messages = MSGS })
      assert.equal(0, #res.attempts)
      assert.equal(n + 2, hits("/replay/loading/"))
      -- the period is over: asked again
      t.now = t.now + 2
      assert.is_nil(r:status()[1].cooling)
      res = assert(r:chat{ messages = MSGS })
      assert.equal("sick", res.attempts[1].provider)
      assert.equal(n + 3, hits("/replay/loading/"))
    end)

    it("still tries a cooling deployment when nothing else is left", function()
      local r = new{ cooldown = { failures = 1, period = 60 }, retries = 0,
                     tiers = { x = { { name = "sick", endpoint = srv:replay("loading") } } } }
      local n = hits("/replay/loading/")
      local _, err = r:chat{ messages = MSGS }
      assert.equal("no_provider", err.kind)
      _, err = r:chat{ messages = MSGS }
      assert.equal("no_provider", err.kind)
      assert.equal(1, #err.attempts)
      assert.equal(n + 2, hits("/replay/loading/"))
    end)
  end)

  describe("all down", function()
    it("ends with no_provider listing every attempt, without the keys", function()
      local key1, key2 = "sk-SECRET-one-123456", "sk-SECRET-two-654321"
      local e1, e2 = down(), down()
      local r = new{ retries = 1, tiers = { fast = {
        { name = "a", endpoint = e1, api_key = key1 },
        { name = "b", provider = "openai", endpoint = e2 .. "/v1", api_key = function() return key2 end } } } }
      local res, err = r:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.truthy(llamacpp.errors.is(err, "no_provider"))
      assert.is_false(err.retryable)
      assert.equal("fast", err.tier)
      assert.equal(4, #err.attempts)
      assert.same({ "a", "b", "a", "b" }, { err.attempts[1].provider, err.attempts[2].provider,
                                            err.attempts[3].provider, err.attempts[4].provider })
      assert.equal(e1, err.attempts[1].endpoint)
      assert.equal(e2 .. "/v1", err.attempts[2].endpoint)
      assert.equal("openai", err.attempts[2].type)
      assert.equal("connection", err.attempts[2].error.kind)
      assert.matches("a %(" .. e1:gsub("%p", "%%%0") .. "%): llama%-server not running", err.message)
      assert.matches("OpenAI%-compatible server not running", err.message)
      assert.matches("2 times", err.message)
      local function scan(v, seen)
        if type(v) == "string" then
          assert.is_nil(v:find(key1, 1, true))
          assert.is_nil(v:find(key2, 1, true))
        elseif type(v) == "table" and not seen[v] then
          seen[v] = true
          for k, x in pairs(v) do scan(k, seen); scan(x, seen) end
        end
      end
      scan(err, {})
      scan(tostring(err), {})
      assert.matches("^llamacpp: no provider answered for tier 'fast'", tostring(err))
      assert.is_nil(tostring(r):find(key1, 1, true))

      local evs = util.collect(r:chat_stream{ messages = MSGS })
      assert.equal(1, #evs)
      assert.equal("error", evs[1].type)
      assert.equal("no_provider", evs[1].error.kind)
      assert.equal(4, #evs[1].error.attempts)
    end)
    it("works with the default clock and sleep (tiny backoff)", function()
      local r = router.new{ retries = 2, backoff = { base = 0.02, max = 0.05 },
                            tiers = { x = { { name = "gone", endpoint = down() } } } }
      local _, err = r:chat{ messages = MSGS }
      assert.equal("no_provider", err.kind)
      assert.equal(3, #err.attempts)
      assert.equal(3, err.attempts[3].pass)
    end)
  end)

  describe("balancing", function()
    local function three(strategy, extra)
      local tier = { { name = "a", endpoint = srv:replay("ok_a") },
                     { name = "b", endpoint = srv:replay("ok_b") },
                     { name = "c", endpoint = srv:replay("ok_c") }, strategy = strategy }
      for i, w in ipairs(extra or {}) do tier[i].weight = w end
      return tier
    end

    it("order: always the first that works", function()
      local r = new{ tiers = { x = three("order") } }
      for _ = 1, 3 do assert.equal("a", assert(r:chat{ messages = MSGS }).provider) end
    end)

    it("round_robin: each deployment in turn", function()
      local r = new{ tiers = { x = three("round_robin") } }
      local got = {}
      for i = 1, 6 do got[i] = assert(r:chat{ messages = MSGS }).provider end
      assert.same({ "a", "b", "c", "a", "b", "c" }, got)
    end)

    it("weighted: drawn by weight, weight 0 only as a standby", function()
      local draws = { 0.9, 0.1, 0.5, 0.2, 0.95, 0.99 }
      local i = 0
      local r = new{ random = function() i = i + 1; return draws[(i - 1) % #draws + 1] end,
                     tiers = { x = three("weighted", { 1, 3, 0 }) } }
      -- keys r^(1/w): a 0.9 vs b 0.1^(1/3)=0.46 -> a; a 0.5 vs b 0.2^(1/3)=0.58 -> b
      assert.equal("a", assert(r:chat{ messages = MSGS }).provider)
      assert.equal("b", assert(r:chat{ messages = MSGS }).provider)
      local counts = { a = 0, b = 0, c = 0 }
      r = new{ tiers = { x = three("weighted", { 1, 3, 0 }) } }    -- math.random
      for _ = 1, 40 do
        local p = assert(r:chat{ messages = MSGS }).provider
        counts[p] = counts[p] + 1
      end
      assert.equal(0, counts.c)
      assert.equal(40, counts.a + counts.b)
      -- the standby answers when the others are down
      r = new{ tiers = { x = { { name = "a", endpoint = down(), weight = 5 },
                               { name = "c", endpoint = srv:replay("ok_c"), weight = 0 },
                               strategy = "weighted" } } }
      assert.equal("c", assert(r:chat{ messages = MSGS }).provider)
    end)

    it("least_busy: concurrent streams go where fewest are in flight", function()
      local r = new{ strategy = "least_busy", tiers = { x = {
        { name = "m1", endpoint = srv:replay("chat_stream", "pace=40") },
        { name = "m2", endpoint = srv:replay("chat_stream", "pace=41") } } } }
      local s1 = r:open_stream{ messages = MSGS }
      local s2 = r:open_stream{ messages = MSGS }
      local e1, e2 = s1:next(), s2:next()
      assert.equal("content", e1.type)
      assert.equal("content", e2.type)
      assert.equal("m1", e1.provider)
      assert.equal("m2", e2.provider)
      local st = r:status()
      assert.equal(1, st[1].inflight)
      assert.equal(1, st[2].inflight)
      s1:close()                                  -- m1 is free again
      assert.equal(0, r:status()[1].inflight)
      local s3 = r:open_stream{ messages = MSGS }
      assert.equal("m1", s3:next().provider)
      local s4 = r:open_stream{ messages = MSGS }  -- both busy: the first in order
      assert.equal("m1", s4:next().provider)
      assert.equal(2, r:status()[1].inflight)
      -- a finished stream no longer counts
      local evs = util.collect(function() return s2:next() end)
      assert.equal("done", evs[#evs].type)
      assert.equal(0, r:status()[2].inflight)
      local s5 = r:open_stream{ messages = MSGS }
      assert.equal("m2", s5:next().provider)
      s3:close(); s4:close(); s5:close()
      s5:close()                                  -- idempotent
      assert.has_error(function() s5:next() end, "stream is closed")
      for _, s in ipairs(r:status()) do assert.equal(0, s.inflight) end
    end)
  end)

  describe("health checks", function()
    it("skips a llama-server whose /health is not 200, without sending it the chat", function()
      local r = new{ health_check = { interval = 10, timeout = 2 }, tiers = { x = {
        { name = "loading", endpoint = srv:replay("loading") },
        { name = "ready", endpoint = srv:replay("ok_b") } } } }
      local since = srv:log()
      since = since[#since] and since[#since].seq or 0
      local function asked()
        local out = {}
        for _, q in ipairs(srv:requests(since)) do
          if q.path:find("/replay/loading/", 1, true) then out[#out + 1] = q.method .. " " .. q.path end
        end
        return out
      end
      local res = assert(r:chat{ messages = MSGS })
      assert.equal("ready", res.provider)
      assert.equal(0, #res.attempts)
      assert.same({ "GET /replay/loading/-/health" }, asked())
      assert.is_false(r:status()[1].healthy)
      assert.equal(503, r:status()[1].health_error.status)
      -- within the interval: no new check, and still not asked
      assert.equal("ready", assert(r:chat{ messages = MSGS }).provider)
      assert.equal(1, #asked())
      local st = r:check_health()
      assert.equal(2, #asked())
      assert.is_false(st[1].healthy)
      assert.is_true(st[2].healthy)
    end)
  end)

  describe("configuration", function()
    it("from_config takes the original plan's shape, each model a tier", function()
      local r = router.from_config{
        models = {
          ["local"] = { provider = "llamacpp", endpoint = srv:replay("ok_a"), auth_token = "tok-12345",
                        fallback = "backup" },
          backup = { provider = "ollama", endpoint = srv:replay("ollama_chat"), model = "llama3.2" },
          plain = { provider = "llamacpp" },
          farm = { endpoint = { srv:replay("ok_b"), srv:replay("ok_c") }, strategy = "round_robin" },
        },
        default = "local", retries = 0,
      }
      local res = assert(r:chat{ messages = MSGS })
      assert.equal("local", res.provider)
      local reqs = srv:requests()
      assert.equal("Bearer tok-12345", reqs[#reqs].headers.authorization)
      res = assert(r:chat{ messages = MSGS, tier = "backup" })
      assert.equal("backup", res.provider)
      assert.equal("Hello! How are you today?", res.content)
      assert.equal("llama3.2", cjson.decode(srv:requests()[#srv:requests()].body).model)
      assert.equal("farm#1", assert(r:chat{ messages = MSGS, tier = "farm" }).provider)
      assert.equal("farm#2", assert(r:chat{ messages = MSGS, tier = "farm" }).provider)
      local ep
      for _, s in ipairs(r:status()) do if s.name == "plain" then ep = s.endpoint end end
      assert.equal("http://localhost:8080", ep)
    end)

    it("refuses an unknown provider at construction, with a clear message", function()
      local ok, msg = pcall(router.from_config, { models = { ["local"] = { provider = "llama.cpp" } } })
      assert.is_false(ok)
      assert.matches("models%.local: unknown provider 'llama%.cpp' %(known: llamacpp, openai, ollama, anthropic%)", msg)
      ok, msg = pcall(router.new, { tiers = { x = { { provider = "nope" } } } })
      assert.is_false(ok)
      assert.matches("tiers%.x%[1%]: unknown provider 'nope'", msg)
    end)

    it("refuses other bad configurations at construction", function()
      local function bad(opts, pat)
        local ok, msg = pcall(router.new, opts)
        assert.is_false(ok)
        assert.matches(pat, msg)
      end
      local d = { endpoint = "http://127.0.0.1:1" }
      bad({}, "'tiers' is required")
      bad({ tiers = { x = {} } }, "tiers%.x has no deployments")
      bad({ tiers = { x = { d } }, strategy = "fastest" }, "unknown strategy 'fastest'")
      bad({ tiers = { x = { d, fallback = "y" } } }, "unknown tier 'y'")
      bad({ tiers = { x = { d } }, default_tier = "y" }, "default_tier 'y' is not a tier")
      bad({ tiers = { x = { { endpoint = "ftp://x" } } } }, "tiers%.x%[1%]: .*bad endpoint")
      bad({ tiers = { x = { { endpiont = "http://x" } } } }, "unknown field 'endpiont'")
      bad({ tiers = { x = { d } }, retrys = 1 }, "unknown option 'retrys'")
      bad({ tiers = { x = { d } }, cooldown = { period = -1 } }, "cooldown%.period")
      bad({ tiers = { x = { { endpoint = "http://127.0.0.1:1", weight = -1 } } } }, "weight")
      local ok, msg = pcall(router.from_config, { models = { a = { endpoint = 5 } } })
      assert.is_false(ok)
      assert.matches("models%.a%.endpoint", msg)
    end)

    it("raises on bad requests: unknown tier, no tier without a default, bad messages", function()
      local d = { endpoint = "http://127.0.0.1:1" }
      local r = new{ tiers = { x = { d }, y = { d } } }
      assert.has_error(function() r:chat{ messages = MSGS } end,
                       nil)
      local ok, msg = pcall(r.chat, r, { messages = MSGS })
      assert.is_false(ok)
      assert.matches("no 'tier'", msg)
      ok, msg = pcall(r.chat_stream, r, { messages = MSGS, tier = "z" })
      assert.is_false(ok)
      assert.matches("unknown tier 'z'", msg)
      assert.has_error(function() r:chat("hi") end)
      assert.has_error(function() r:open_stream{ tier = "x" } end)
      assert.has_error(function() r:chat{ tier = "x", messages = "hi" } end)
    end)

    it("merges a deployment's params under the request, for that deployment only", function()
      local r = new{ tiers = { x = {
        { name = "a", endpoint = down(), params = { cache_prompt = true } },
        { name = "o", provider = "ollama", endpoint = srv:replay("ollama_chat"),
          params = { keep_alive = "1h", options = { num_ctx = 4096, seed = 1 } } } } } }
      assert(r:chat{ messages = MSGS, options = { seed = 2 } })
      local b = cjson.decode(srv:requests()[#srv:requests()].body)
      assert.equal("1h", b.keep_alive)
      assert.same({ num_ctx = 4096, seed = 2, num_predict = 2048 }, b.options)
      assert.is_nil(b.cache_prompt)
      assert.is_nil(b.tier)
    end)

    it("sends OpenAI organization and project headers", function()
      local r = new{ tiers = { x = { { provider = "openai", endpoint = srv:replay("openai_chat"),
        organization = "org-abc", project = "proj_def", api_key = "sk-proj-123456" } } } }
      assert(r:chat{ messages = MSGS })
      local h = srv:requests()[#srv:requests()].headers
      assert.equal("org-abc", h["openai-organization"])
      assert.equal("proj_def", h["openai-project"])
      assert.equal("Bearer sk-proj-123456", h.authorization)
    end)
  end)

  describe("streams", function()
    it("next(0) never blocks, across a failover and a backoff", function()
      local t = fake_time()
      local r = new{ time = t, retries = 1, tiers = { x = {
        { name = "gone", endpoint = down() },
        { name = "slow", endpoint = srv:replay("chat_stream", "delay=200") } } } }
      local s = r:open_stream{ messages = MSGS }
      local seen_false, evs = false, {}
      local deadline = os.time() + 20
      while os.time() < deadline do
        local ev = s:next(0)
        if ev == false then
          seen_false = true
          util.sleep(0.01)
        elseif ev == nil then
          break
        else
          evs[#evs + 1] = ev
        end
      end
      assert.is_true(seen_false)
      assert.equal("done", evs[#evs].type)
      assert.equal("slow", evs[#evs].provider)
      assert.equal(0, #t.slept)
      s:close()
    end)

    it("works as a generic for with the stream as 4th value, and says where it is", function()
      local r = new{ tiers = { x = { { name = "one", endpoint = srv:replay("stream_a") } } } }
      local f, s, ctl, closing = r:chat_stream{ messages = MSGS }
      assert.equal(s, closing)
      assert.is_nil(ctl)
      local evs = util.collect(f, s, ctl, closing)
      assert.equal("done", evs[#evs].type)
      -- Lua 5.4's for closed it; elsewhere it just ended
      local state = tostring(s):match("^llamacpp%.RouterStream %((%a+) via one%)$")
      if _VERSION == "Lua 5.4" and type(jit) ~= "table" then
        assert.equal("closed", state)
      else
        assert.equal("ended", state)
        assert.is_nil(s:next())
      end
      assert.same({ "content", "done" }, { types_of(evs)[1], types_of(evs)[#evs] })
    end)
  end)
end)
