-- A router's configuration: the options of router.new and the original
-- plan's config shape (from_config), checked and turned into the state a
-- router keeps: tiers, deployments (each with its client) and the
-- settings of retries, backoff, cooldown and health checks. A bad
-- configuration raises at the caller's line, before any request.
local core = require "llamacpp.core"
local client_mod = require "llamacpp.client"
local args = require "llamacpp.args"

local M = {}

local type, pairs, ipairs, tostring, setmetatable, next = type, pairs, ipairs, tostring, setmetatable, next
local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort

local PROVIDERS = { "llamacpp", "openai", "ollama", "anthropic" }

-- Deployment fields given to the client as they are.
local CLIENT_FIELDS = {
  endpoint = true, api_key = true, model = true, headers = true,
  connect_timeout = true, first_byte_timeout = true, idle_timeout = true,
  timeout = true, proxy = true, ca_file = true, ca_path = true, insecure = true,
  follow_redirects = true, max_event = true, max_body = true, session_header = true, warn = true,
}
-- ... and the router's own.
local DEPLOYMENT_FIELDS = {
  provider = "string", name = "string", weight = "number", auth_token = "key",
  organization = "string", project = "string", params = "table", inputs = "table",
}


local ROUTER_OPTIONS = {
  tiers = "table", default_tier = "string", retries = "number",
  backoff = "any", cooldown = "any", strategy = "string", epsilon = "number", health_check = "any",
  sleep = "callable", clock = "callable", random = "callable",
}

local STRATEGIES = { order = true, round_robin = true, least_busy = true, weighted = true, affinity = true }
local STRATEGY_NAMES = "order, round_robin, least_busy, weighted, affinity"


local callable, fail = args.callable, args.raise

-- Bounded load's epsilon (affinity): a number >= 0.
local function check_epsilon(v, where)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or v == math.huge) then
    fail(where .. "'epsilon' must be a number >= 0 (got " .. tostring(v) .. ")")
  end
end

local function default_sleep(s)
  if s > 0 then core.sleep(s * 1000) end
end

local function default_clock() return core.now() / 1000 end


-- {====== deployments ======

local INPUTS = { text = true, image = true, audio = true }

-- A deployment's `inputs` list -> the set of what its model takes.
local function inputs_set(list, where)
  local set = {}
  if #list == 0 then fail(where .. ": 'inputs' must be a list like {\"text\", \"image\"}") end
  for i, v in ipairs(list) do
    if not INPUTS[v] then
      fail(where .. ": 'inputs' [" .. i .. "]: unknown input '" .. tostring(v) .. "' (text, image or audio)")
    end
    set[v] = true
  end
  return set
end

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
  if not ok then fail(where .. ": " .. args.unplace(tostring(c))) end
  if d.weight ~= nil and d.weight < 0 then fail(where .. ": 'weight' must not be negative") end
  local name = d.name or (kind .. "@" .. c.endpoint)
  local rec = {
    name = name,
    ring = name .. "\0" .. (d.model or ""),
    kind = kind,
    endpoint = c.endpoint,
    model = d.model,
    client = c,
    weight = d.weight or 1,
    params = d.params,
    inputs = d.inputs and inputs_set(d.inputs, where),   -- declared; else learned (router/plan.lua)
    answered = 0, home = 0, away = 0, cached_tokens = 0, evaluated_tokens = 0,
    active = setmetatable({}, { __mode = "k" }),   -- plans with an attempt here (router/plan.lua)
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
    if not hok then fail(where .. ": " .. args.unplace(tostring(hc))) end
    rec.health_client = hc
  end
  return rec
end

-- }======


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

function M.build(opts)
  args.check(type(opts) == "table", 1, "new", args.expected("table", opts))
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
  local self = {
    tiers = {},
    retries = opts.retries or 2,
    backoff = number_or_table(opts.backoff, "backoff", { base = 0.5, max = 8, max_retry_after = 60 }, "base"),
    cooldown = number_or_table(opts.cooldown, "cooldown", { failures = 3, period = 30 }, "period"),
    strategy = opts.strategy or "order",
    epsilon = opts.epsilon or 0.25,
    sleep = opts.sleep or default_sleep,
    clock = opts.clock or default_clock,
    random = opts.random or math.random,
    deployments = {},           -- every record, in a stable order
  }
  if self.retries < 0 or self.retries ~= floor(self.retries) then
    fail("option 'retries' must be a whole number >= 0")
  end
  if not STRATEGIES[self.strategy] then
    fail("unknown strategy '" .. self.strategy .. "' (" .. STRATEGY_NAMES .. ")")
  end
  check_epsilon(opts.epsilon, "option ")
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
      if type(k) ~= "number" and k ~= "deployments" and k ~= "strategy" and k ~= "fallback"
         and k ~= "epsilon" then
        fail(where .. ": unknown field '" .. tostring(k) .. "'")
      end
    end
    local strategy = spec.strategy or self.strategy
    if not STRATEGIES[strategy] then
      fail(where .. ": unknown strategy '" .. tostring(strategy) .. "' (" .. STRATEGY_NAMES .. ")")
    end
    check_epsilon(spec.epsilon, where .. ": ")
    local fb = spec.fallback
    if type(fb) == "string" then fb = { fb } end
    if fb ~= nil and type(fb) ~= "table" then fail(where .. ".fallback must be a tier name or a list of them") end
    local tier = { name = name, list = {}, strategy = strategy, fallback = fb or {}, rr = 0,
                   epsilon = spec.epsilon or self.epsilon }
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
    if strategy == "affinity" then
      -- a deployment's place on the ring is its name and model: the same in
      -- every router made from the same configuration
      local seen = {}
      for i, rec in ipairs(tier.list) do
        if seen[rec.ring] and seen[rec.ring] ~= rec then
          fail(where .. "[" .. i .. "]: two deployments are named '" .. rec.name .. "'" ..
               (rec.model and (" with model '" .. rec.model .. "'") or "") ..
               ": affinity places deployments by name; give each a 'name'")
        end
        seen[rec.ring] = rec
      end
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

local CONFIG_KEYS = {
  models = true, default = true, default_tier = true, retries = true, backoff = true,
  cooldown = true, strategy = true, health_check = true, sleep = true, clock = true,
  random = true,
}

function M.from_config(cfg)
  args.check(type(cfg) == "table", 1, "from_config", args.expected("table", cfg))
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
  return M.build(opts)
end

return M
