--- Router: named tiers of deployments (llama-server machines, OpenAI-
-- compatible servers, Ollama, Anthropic) behind the client's interface,
-- with failover, retries, cooldown and balancing. See docs/routing.md.
--
--   local router = require("llamacpp.router").new{
--     tiers = { fast = { { provider = "llamacpp", endpoint = "http://10.0.0.2:8080" },
--                        { provider = "llamacpp", endpoint = "http://10.0.0.3:8080" },
--                        strategy = "least_busy", fallback = "smart" },
--               smart = { { provider = "anthropic", api_key = key, model = "claude-..." } } },
--     default_tier = "fast",
--   }
--   for ev in router:chat_stream{ messages = msgs } do ... ev.provider ... end
--
-- Rules: a deployment is left for the next one only on a retryable error
-- (connection, timeout, network, 408/409/429/5xx, overloaded) that came
-- before the first event reached the caller; after that the stream's
-- error is final. When every deployment of a pass failed, the next pass
-- starts after an exponential backoff with full jitter, or after the
-- Retry-After the servers asked for. A deployment failing `failures`
-- times in a row cools down for `period` seconds (tried only when nothing
-- else is left). When nothing answers, the error is `no_provider`, with
-- every attempt in `err.attempts`.
-- @module llamacpp.router
local core = require "llamacpp.core"
local client_mod = require "llamacpp.client"
local errors = require "llamacpp.errors"
local base = require "llamacpp.providers.base"

local M = {}

local type, pairs, ipairs, tostring, setmetatable = type, pairs, ipairs, tostring, setmetatable
local floor, min, max, huge = math.floor, math.min, math.max, math.huge
local concat, sort = table.concat, table.sort

local PROVIDERS = { "llamacpp", "openai", "ollama", "anthropic" }

-- Deployment fields given to the client as they are.
local CLIENT_FIELDS = {
  endpoint = true, api_key = true, model = true, headers = true,
  connect_timeout = true, first_byte_timeout = true, idle_timeout = true,
  timeout = true, proxy = true, ca_file = true, ca_path = true, insecure = true,
  follow_redirects = true, max_event = true, max_body = true,
}
-- ... and the router's own.
local DEPLOYMENT_FIELDS = {
  provider = "string", name = "string", weight = "number", auth_token = "key",
  organization = "string", project = "string", params = "table",
}

local ROUTER_OPTIONS = {
  tiers = "table", default_tier = "string", retries = "number",
  backoff = "any", cooldown = "any", strategy = "string", health_check = "any",
  sleep = "callable", clock = "callable", random = "callable",
}

local STRATEGIES = { order = true, round_robin = true, least_busy = true, weighted = true }

local function callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

-- Configuration errors are raised as plain messages inside the builder
-- and positioned at the caller of new/from_config (see M.new).
local function fail(msg) error(msg, 0) end

-- Sleeping between passes: the core's sleep (this build has one), else
-- LuaSocket's, else sleep(1); never a busy wait.
local socket_sleep
if type(core.sleep) ~= "function" then
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and type(socket.sleep) == "function" then
    socket_sleep = socket.sleep
  end
end

local function default_sleep(s)
  if s <= 0 then return end
  if type(core.sleep) == "function" then return core.sleep(s * 1000) end
  if socket_sleep then return socket_sleep(s) end
  os.execute(string.format("sleep %.3f", s))
end

local function default_clock() return core.now() / 1000 end


-- {====== deployments ======

-- A deployment record: the client, and the state the router keeps about
-- it. The API key is only inside the client (never on this table).
local function make_deployment(d, where, health)
  if type(d) ~= "table" then fail(where .. ": a deployment must be a table (got " .. type(d) .. ")") end
  local copts = {}
  for k, v in pairs(d) do
    local want = DEPLOYMENT_FIELDS[k]
    if CLIENT_FIELDS[k] then
      copts[k] = v
    elseif not want then
      fail(where .. ": unknown field '" .. tostring(k) .. "'")
    elseif want == "key" then
      if type(v) ~= "string" and not callable(v) then
        fail(where .. ": 'auth_token' must be a string or a function")
      end
    elseif type(v) ~= want then
      fail(where .. ": '" .. k .. "' must be a " .. want .. " (got " .. type(v) .. ")")
    end
  end
  local kind = d.provider or "llamacpp"
  if not client_mod.load_provider(kind) then
    fail(where .. ": unknown provider '" .. tostring(kind) .. "' (known: " .. concat(PROVIDERS, ", ") .. ")")
  end
  copts.provider = kind
  if copts.api_key == nil then copts.api_key = d.auth_token end
  if d.organization or d.project then
    local headers = {}
    for k, v in pairs(d.headers or {}) do headers[k] = v end
    if d.organization then headers["OpenAI-Organization"] = d.organization end
    if d.project then headers["OpenAI-Project"] = d.project end
    copts.headers = headers
  end
  local ok, c = pcall(client_mod.new, copts)
  if not ok then fail(where .. ": " .. tostring(c)) end
  if d.weight ~= nil and d.weight < 0 then fail(where .. ": 'weight' must not be negative") end
  local rec = {
    name = d.name or (kind .. "@" .. c.endpoint),
    kind = kind,
    endpoint = c.endpoint,
    model = d.model,
    client = c,
    weight = d.weight or 1,
    params = d.params,
    active = setmetatable({}, { __mode = "k" }),   -- open streams (collected ones drop out)
    busy = 0,                                      -- chat calls under way
    failures = 0, cool_until = -huge, retry_at = -huge,
  }
  -- llama-server answers GET /health with 200 once the model is loaded
  if health and kind == "llamacpp" then
    local hopts = { provider = "llamacpp", timeout = health.timeout,
                    connect_timeout = health.timeout }
    for _, k in ipairs{ "endpoint", "api_key", "headers", "proxy", "ca_file", "ca_path", "insecure" } do
      hopts[k] = copts[k]
    end
    local hok, hc = pcall(client_mod.new, hopts)
    if not hok then fail(where .. ": " .. tostring(hc)) end
    rec.health_client = hc
  end
  return rec
end

local function inflight(rec)
  local n = rec.busy
  for s in pairs(rec.active) do
    if not s.ended then n = n + 1 end
  end
  return n
end

-- }======


local Router = {}
Router.__index = Router
Router.__name = "llamacpp.Router"
M.Router = Router

local function number_or_table(v, name, defaults, key)
  local t = {}
  for k, dv in pairs(defaults) do t[k] = dv end
  if type(v) == "number" then
    t[key] = v
  elseif type(v) == "table" then
    for k, x in pairs(v) do
      if defaults[k] == nil then fail("option '" .. name .. "': unknown field '" .. tostring(k) .. "'") end
      if type(x) ~= "number" or x < 0 then
        fail("option '" .. name .. "." .. tostring(k) .. "' must be a non-negative number")
      end
      t[k] = x
    end
  elseif v ~= nil and v ~= true then
    fail("option '" .. name .. "' must be a number or a table (got " .. type(v) .. ")")
  end
  return t
end

local function build(opts)
  if type(opts) ~= "table" then fail("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")") end
  for k, v in pairs(opts) do
    local want = ROUTER_OPTIONS[k]
    if not want then fail("unknown option '" .. tostring(k) .. "'") end
    if want == "callable" then
      if not callable(v) then fail("option '" .. k .. "' must be a function") end
    elseif want ~= "any" and type(v) ~= want then
      fail("option '" .. k .. "' must be a " .. want .. " (got " .. type(v) .. ")")
    end
  end
  if type(opts.tiers) ~= "table" or next(opts.tiers) == nil then
    fail("option 'tiers' is required: { name = { deployment, ... }, ... }")
  end
  local self = setmetatable({
    tiers = {},
    retries = opts.retries or 2,
    backoff = number_or_table(opts.backoff, "backoff", { base = 0.5, max = 8, max_retry_after = 60 }, "base"),
    cooldown = number_or_table(opts.cooldown, "cooldown", { failures = 3, period = 30 }, "period"),
    strategy = opts.strategy or "order",
    sleep = opts.sleep or default_sleep,
    clock = opts.clock or default_clock,
    random = opts.random or math.random,
    deployments = {},           -- every record, in a stable order
  }, Router)
  if self.retries < 0 or self.retries ~= floor(self.retries) then
    fail("option 'retries' must be a whole number >= 0")
  end
  if not STRATEGIES[self.strategy] then
    fail("unknown strategy '" .. self.strategy .. "' (order, round_robin, least_busy, weighted)")
  end
  if opts.health_check then
    self.health = number_or_table(opts.health_check, "health_check", { interval = 10, timeout = 2 }, "interval")
  end
  -- the same deployment table in two tiers is one deployment (one state)
  local by_table = {}
  local names = {}
  for name in pairs(opts.tiers) do
    if type(name) ~= "string" then fail("tier names must be strings") end
    names[#names + 1] = name
  end
  sort(names)
  for _, name in ipairs(names) do
    local spec = opts.tiers[name]
    local where = "tiers." .. name
    if type(spec) ~= "table" then fail(where .. " must be a table of deployments") end
    local list = spec.deployments or spec
    if type(list) ~= "table" or #list == 0 then fail(where .. " has no deployments") end
    for k in pairs(spec) do
      if type(k) ~= "number" and k ~= "deployments" and k ~= "strategy" and k ~= "fallback" then
        fail(where .. ": unknown field '" .. tostring(k) .. "'")
      end
    end
    local strategy = spec.strategy or self.strategy
    if not STRATEGIES[strategy] then
      fail(where .. ": unknown strategy '" .. tostring(strategy) .. "' (order, round_robin, least_busy, weighted)")
    end
    local fb = spec.fallback
    if type(fb) == "string" then fb = { fb } end
    if fb ~= nil and type(fb) ~= "table" then fail(where .. ".fallback must be a tier name or a list of them") end
    local tier = { name = name, list = {}, strategy = strategy, fallback = fb or {}, rr = 0 }
    for i = 1, #list do
      local d = list[i]
      local rec = type(d) == "table" and by_table[d]
      if not rec then
        rec = make_deployment(d, where .. "[" .. i .. "]", self.health)
        by_table[d] = rec
        self.deployments[#self.deployments + 1] = rec
      end
      tier.list[#tier.list + 1] = rec
    end
    self.tiers[name] = tier
  end
  for _, name in ipairs(names) do
    for _, f in ipairs(self.tiers[name].fallback) do
      if not self.tiers[f] then fail("tiers." .. name .. ".fallback: unknown tier '" .. tostring(f) .. "'") end
    end
  end
  self.default_tier = opts.default_tier
  if self.default_tier and not self.tiers[self.default_tier] then
    fail("default_tier '" .. self.default_tier .. "' is not a tier")
  end
  if not self.default_tier and #names == 1 then self.default_tier = names[1] end
  return self
end

--- Creates a router. Options: tiers (required), default_tier, retries,
-- backoff, cooldown, strategy, health_check, sleep, clock, random; see
-- docs/routing.md. A bad configuration raises here, not at the first
-- request.
function M.new(opts)
  local ok, r = pcall(build, opts)
  if not ok then error(tostring(r), 2) end
  return r
end

local CONFIG_KEYS = {
  models = true, default = true, default_tier = true, retries = true, backoff = true,
  cooldown = true, strategy = true, health_check = true, sleep = true, clock = true,
  random = true,
}

local function from_config(cfg)
  if type(cfg) ~= "table" then fail("bad argument #1 to 'from_config' (table expected, got " .. type(cfg) .. ")") end
  for k in pairs(cfg) do
    if not CONFIG_KEYS[k] then fail("config: unknown field '" .. tostring(k) .. "'") end
  end
  if type(cfg.models) ~= "table" or next(cfg.models) == nil then
    fail("config: 'models' is required: { name = { provider = ..., endpoint = ... }, ... }")
  end
  local tiers = {}
  for name, m in pairs(cfg.models) do
    local where = "models." .. tostring(name)
    if type(m) ~= "table" then fail(where .. " must be a table") end
    local kind = m.provider or "llamacpp"
    if type(kind) ~= "string" or not client_mod.load_provider(kind) then
      fail(where .. ": unknown provider '" .. tostring(kind) .. "' (known: " .. concat(PROVIDERS, ", ") .. ")")
    end
    local eps = m.endpoint
    if eps == nil then
      -- the original plan's default for a local llama-server
      eps = kind == "llamacpp" and "http://localhost:8080" or client_mod.load_provider(kind).default_endpoint
    end
    if type(eps) == "string" then eps = { eps } end
    if type(eps) ~= "table" or #eps == 0 then fail(where .. ".endpoint must be a URL or a list of URLs") end
    local list = {}
    for i, ep in ipairs(eps) do
      local d = {}
      for k, v in pairs(m) do
        if k ~= "endpoint" and k ~= "fallback" and k ~= "strategy" then d[k] = v end
      end
      d.provider, d.endpoint = kind, ep
      if d.name == nil then d.name = #eps > 1 and (tostring(name) .. "#" .. i) or tostring(name) end
      list[i] = d
    end
    tiers[name] = { deployments = list, fallback = m.fallback, strategy = m.strategy }
  end
  local opts = { tiers = tiers }
  for k in pairs(CONFIG_KEYS) do
    if k ~= "models" and k ~= "default" then opts[k] = cfg[k] end
  end
  opts.default_tier = cfg.default_tier or cfg.default
  return build(opts)
end

--- A router from the original plan's configuration:
-- `{ models = { ["local"] = { provider = "llamacpp" | "ollama" | ..., endpoint =,
-- auth_token =, model =, fallback = "other" }, ... }, default = "local" }`.
-- Each model is a tier of that name (several deployments when `endpoint`
-- is a list); a llamacpp endpoint defaults to http://localhost:8080.
function M.from_config(cfg)
  local ok, r = pcall(from_config, cfg)
  if not ok then error(tostring(r), 2) end
  return r
end

function Router:__tostring()
  local names = {}
  for name in pairs(self.tiers) do names[#names + 1] = name end
  sort(names)
  return "llamacpp.Router (tiers: " .. concat(names, ", ") .. ")"
end


-- {====== choosing ======

-- The deployments of one tier in the order its strategy gives.
function Router:_order(tier)
  local list, n = tier.list, #tier.list
  local out = {}
  local s = tier.strategy
  if s == "round_robin" then
    local start = tier.rr % n
    tier.rr = tier.rr + 1
    for i = 1, n do out[i] = list[(start + i - 1) % n + 1] end
    return out
  end
  local key = {}
  for i = 1, n do
    out[i] = list[i]
    if s == "least_busy" then
      key[list[i]] = -inflight(list[i])
    elseif s == "weighted" then
      -- weighted sampling without replacement (Efraimidis-Spirakis);
      -- weight 0: only after every other one
      local w = list[i].weight
      key[list[i]] = w > 0 and self.random() ^ (1 / w) or -1
    else
      key[list[i]] = 0
    end
  end
  local pos = {}
  for i = 1, n do pos[list[i]] = i end
  sort(out, function(a, b)
    if key[a] ~= key[b] then return key[a] > key[b] end
    return pos[a] < pos[b]
  end)
  return out
end

-- The tier and its fallbacks, in order, each deployment once:
-- array of { rec =, tier = name }.
function Router:_chain(tier)
  local chain, seen_tier, seen = {}, {}, {}
  local function add(t)
    if seen_tier[t] then return end
    seen_tier[t] = true
    for _, rec in ipairs(self:_order(t)) do
      if not seen[rec] then
        seen[rec] = true
        chain[#chain + 1] = { rec = rec, tier = t.name }
      end
    end
    for _, f in ipairs(t.fallback) do add(self.tiers[f]) end
  end
  add(tier)
  return chain
end

function Router:_check_health(rec, now)
  if not (self.health and rec.health_client) then return end
  if rec.checked_at and now - rec.checked_at < self.health.interval then return end
  local obj, err = rec.health_client:health()
  rec.checked_at = self.clock()
  rec.healthy = obj ~= nil
  rec.health_error = err
end

-- The deployments to try in one pass: those free to take a request;
-- when there are none, those cooling down or unhealthy (better than no
-- answer). Deployments asked to wait (Retry-After) are never included.
-- check(router, rec, now), when given, replaces the blocking health check:
-- llamacpp.uv starts the GET /health on its loop, and the pass goes on
-- with what is known.
function Router:_candidates(tier, check)
  local chain = self:_chain(tier)
  check = check or self._check_health
  local now = self.clock()
  local ready, resort = {}, {}
  for _, it in ipairs(chain) do
    local rec = it.rec
    if rec.retry_at <= now then
      check(self, rec, now)
      if rec.cool_until > now or rec.healthy == false then
        resort[#resort + 1] = it
      else
        ready[#ready + 1] = it
      end
    end
  end
  if #ready == 0 then return resort, chain end
  return ready, chain
end

-- Does this error say something about the deployment (rather than the
-- request)? Those count towards its cooldown.
local function deployment_fault(err)
  local k = err.kind
  if k == "connection" or k == "timeout" or k == "network" or k == "truncated" then return true end
  if k == "http" then return errors.retryable_status(err.status) or err.code == "overloaded_error" end
  return false
end

function Router:_failed(rec, err)
  local now = self.clock()
  if type(err.retry_after) == "number" and err.retry_after > 0 then
    rec.retry_at = max(rec.retry_at, now + err.retry_after)
  end
  if deployment_fault(err) then
    rec.failures = rec.failures + 1
    if rec.failures >= self.cooldown.failures then
      rec.cool_until = now + self.cooldown.period
      rec.failures = 0
    end
  end
end

function Router._succeeded(_, rec)
  rec.failures = 0
end

-- The request for one deployment: its params under the caller's fields.
local function request_for(rec, req)
  local p = rec.params
  if not p then return req end
  local r = {}
  for k, v in pairs(p) do r[k] = v end
  for k, v in pairs(req) do
    if type(v) == "table" and type(p[k]) == "table" and k ~= "messages" then
      local m = {}                       -- e.g. Ollama's options: merged, the caller's win
      for k2, v2 in pairs(p[k]) do m[k2] = v2 end
      for k2, v2 in pairs(v) do m[k2] = v2 end
      r[k] = m
    else
      r[k] = v
    end
  end
  return r
end

-- Who answered (or failed): on results, done events and errors.
local function label(t, it)
  t.provider = it.rec.name
  t.provider_type = it.rec.kind
  t.endpoint = it.rec.endpoint
  t.tier = it.tier
  return t
end

function Router:_tier_of(req, level)
  local name = req.tier
  if name == nil then
    name = self.default_tier
    if name == nil then
      error("bad request: no 'tier', and the router has no default_tier", level + 1)
    end
  end
  local tier = self.tiers[name]
  if not tier then error("bad request: unknown tier '" .. tostring(name) .. "'", level + 1) end
  return tier
end

-- }======


-- {====== plans: the attempts of one request ======

local Plan = {}
Plan.__index = Plan

function Router:_plan(tier, check)
  return setmetatable({ router = self, tier = tier, pass = 0, queue = {}, qi = 1,
                        attempts = {}, waited = false, check = check }, Plan)
end

-- The next deployment to try: an item { rec, tier }; or false, seconds to
-- wait first; or nil when the request has run out of tries.
function Plan:next()
  local r = self.router
  if self.over then return nil end
  while true do
    while self.qi <= #self.queue do
      local it = self.queue[self.qi]
      self.qi = self.qi + 1
      -- another request may have learnt meanwhile that it must wait
      if it.rec.retry_at <= r.clock() then return it end
    end
    if self.pass > r.retries then
      self.over = true
      return nil
    end
    if self.pass > 0 and not self.waited then
      self.waited = true
      local d = self:_delay()
      if d == nil then
        self.over = true
        return nil
      end
      if d > 0 then return false, d end
    end
    self.waited = false
    self.pass = self.pass + 1
    self.queue, self.chain = r:_candidates(self.tier, self.check)
    self.qi = 1
  end
end

-- Seconds before the next pass: full jitter over an exponential cap, or
-- longer when every deployment asked to wait (Retry-After). nil when that
-- wait is longer than backoff.max_retry_after.
function Plan:_delay()
  local r = self.router
  local b = r.backoff
  local d = r.random() * min(b.max, b.base * 2 ^ (self.pass - 1))
  local now = r.clock()
  local earliest
  for _, it in ipairs(self.chain or r:_chain(self.tier)) do
    local at = it.rec.retry_at
    if at <= now then return d end
    earliest = earliest and min(earliest, at) or at
  end
  if earliest then
    local need = earliest - now
    if need > b.max_retry_after then
      self.retry_after = need
      return nil
    end
    d = max(d, need)
  end
  return d
end

function Plan:record(it, err)
  self.attempts[#self.attempts + 1] = { provider = it.rec.name, type = it.rec.kind,
                                        endpoint = it.rec.endpoint, tier = it.tier,
                                        pass = self.pass, error = err }
end

local function short(s, n)
  s = tostring(s)
  if #s > n then return s:sub(1, n) .. "..." end
  return s
end

-- The no_provider error: every attempt, with who, where and what.
function Plan:error()
  -- one line per deployment and message, however many passes repeated it
  local parts, seen = {}, {}
  for _, a in ipairs(self.attempts) do
    local line = a.provider .. " (" .. a.endpoint .. "): " .. short(a.error.message or a.error.kind, 200)
    if seen[line] then
      seen[line].n = seen[line].n + 1
    else
      seen[line] = { n = 1 }
      parts[#parts + 1] = line
    end
  end
  for i, line in ipairs(parts) do
    local n = seen[line].n
    if n > 1 then parts[i] = line .. " (" .. n .. " times)" end
  end
  local n = #self.attempts
  local msg = "no provider answered for tier '" .. self.tier.name .. "'"
  if n > 0 then
    msg = msg .. " after " .. n .. (n == 1 and " attempt: " or " attempts: ") .. concat(parts, "; ")
  else
    msg = msg .. ": every deployment asked to wait"
  end
  local retry_after = self.retry_after
  if retry_after == nil then
    local now, earliest = self.router.clock(), nil
    for _, it in ipairs(self.chain or {}) do
      if it.rec.retry_at > now then earliest = earliest and min(earliest, it.rec.retry_at) or it.rec.retry_at end
    end
    retry_after = earliest and (earliest - now) or nil
  end
  if retry_after then
    retry_after = math.ceil(retry_after)
    msg = msg .. " (retry after " .. retry_after .. " s)"
  end
  return errors.new("no_provider", msg, { attempts = self.attempts, tier = self.tier.name,
                                          retry_after = retry_after, retryable = false })
end

-- }======


-- {====== chat ======

local function check_req(req, fname)
  if type(req) ~= "table" then
    error("bad argument #1 to '" .. fname .. "' (table expected, got " .. type(req) .. ")", 3)
  end
  base.check_request(req, 4)
end

--- One chat completion through the router: res (with res.provider, the
-- deployment that answered), or nil, Error.
function Router:chat(req)
  check_req(req, "chat")
  local plan = self:_plan(self:_tier_of(req, 2))
  while true do
    local it, delay = plan:next()
    if it == nil then return nil, plan:error() end
    if it == false then
      self.sleep(delay)
    else
      local rec = it.rec
      rec.busy = rec.busy + 1
      local ok, res, err = pcall(rec.client.chat, rec.client, request_for(rec, req))
      rec.busy = rec.busy - 1
      if not ok then error(res, 0) end     -- a programmer error from the provider
      if res then
        self:_succeeded(rec)
        label(res, it).attempts = plan.attempts
        return res
      end
      label(err, it)
      self:_failed(rec, err)
      if not err.retryable then return nil, err end
      plan:record(it, err)
    end
  end
end


--- A routed stream: the events of one deployment's stream, after the
-- failed attempts that produced none.
local Stream = {}
Stream.__index = Stream
Stream.__name = "llamacpp.RouterStream"
M.Stream = Stream

function Stream.__close(s) s:close() end      -- Lua 5.4's generic for

function Stream:__tostring()
  local who = self.it and (" via " .. self.it.rec.name) or ""
  return "llamacpp.RouterStream (" .. (self.closed and "closed" or self.ended and "ended" or "open") .. who .. ")"
end

function Stream:_drop()
  if self.cur then
    self.cur:close()
    self.it.rec.active[self] = nil
  end
  self.cur = nil
end

function Stream:_finish(ev)
  self.ended = true
  if self.cur then
    self.it.rec.active[self] = nil
    self.cur:close()
    self.cur = nil
  end
  return ev
end

function Stream:_start(it)
  local rec = it.rec
  self.it = it
  self.cur = rec.client:open_stream(request_for(rec, self.req))
  rec.active[self] = true
end

--- The next event (with ev.provider); nil after the last one; false when
-- timeout_ms (0: do not block) passed with nothing ready.
function Stream:next(timeout_ms)
  if self.closed then error("stream is closed", 2) end
  if self.ended then return nil end
  local r = self.router
  local deadline = timeout_ms and timeout_ms > 0 and core.now() + timeout_ms
  while true do
    if not self.cur then
      if self.resume_at then
        local left = self.resume_at - r.clock()
        if left > 0 then
          if timeout_ms == nil then
            r.sleep(left)
          else
            local budget = deadline and (deadline - core.now()) / 1000 or 0
            if budget <= 0 then return false end
            r.sleep(min(left, budget))
            if r.clock() < self.resume_at then return false end
          end
        end
        self.resume_at = nil
      end
      local it, delay = self.plan:next()
      if it == nil then
        return self:_finish({ type = "error", error = self.plan:error() })
      elseif it == false then
        self.resume_at = r.clock() + delay
      else
        self:_start(it)
      end
    else
      local wait = timeout_ms
      if deadline then wait = max(0, deadline - core.now()) end
      local ev = self.cur:next(wait)
      if ev == false then return false end
      local it = self.it
      if ev == nil then                  -- the client ends with done or error; be safe
        return self:_finish(nil)
      end
      if ev.type == "error" then
        local err = label(ev.error, it)
        r:_failed(it.rec, err)
        if self.delivered == 0 and err.retryable then
          self.plan:record(it, err)
          self:_drop()
        else
          ev.provider = it.rec.name
          return self:_finish(ev)
        end
      else
        self.delivered = self.delivered + 1
        ev.provider = it.rec.name
        if ev.type == "done" then
          r:_succeeded(it.rec)
          label(ev, it).attempts = self.plan.attempts
          return self:_finish(ev)
        end
        return ev
      end
    end
  end
end

--- Aborts the current transfer. Idempotent.
function Stream:close()
  self:_drop()
  self.ended = true
  self.closed = true
end

-- The first attempt starts at once, so that least_busy counts the
-- stream from its opening.
local function new_stream(self, req, tier)
  local s = setmetatable({ router = self, req = req, plan = self:_plan(tier),
                           delivered = 0, ended = false, closed = false }, Stream)
  local it, delay = s.plan:next()
  if it then
    s:_start(it)
  elseif it == false then
    s.resume_at = self.clock() + delay
  end
  return s
end

--- A routed stream for a chat request, read with :next() and :close().
function Router:open_stream(req)
  check_req(req, "open_stream")
  return new_stream(self, req, self:_tier_of(req, 2))
end

--- Streams a chat: for ev in router:chat_stream(req) do ... end, each
-- event with ev.provider. Returns step, stream, nil, stream as the client.
function Router:chat_stream(req)
  check_req(req, "chat_stream")
  local s = new_stream(self, req, self:_tier_of(req, 2))
  return function() return s:next() end, s, nil, s
end

-- }======


--- The state of every deployment: name, provider, endpoint, inflight,
-- failures, cooling (seconds left), retry_after (seconds left), healthy.
function Router:status()
  local now = self.clock()
  local out = {}
  for i, rec in ipairs(self.deployments) do
    out[i] = {
      name = rec.name, provider = rec.kind, endpoint = rec.endpoint, model = rec.model,
      inflight = inflight(rec), failures = rec.failures,
      cooling = rec.cool_until > now and rec.cool_until - now or nil,
      retry_after = rec.retry_at > now and rec.retry_at - now or nil,
      healthy = rec.healthy, health_error = rec.health_error,
    }
  end
  return out
end

--- Checks the health of every llamacpp deployment now (GET /health),
-- when the router has health_check; returns status().
function Router:check_health()
  for _, rec in ipairs(self.deployments) do
    rec.checked_at = nil
    self:_check_health(rec, self.clock())
  end
  return self:status()
end

-- for llamacpp.uv, which runs the same plans on an event loop
M._label, M._request_for = label, request_for

return M
