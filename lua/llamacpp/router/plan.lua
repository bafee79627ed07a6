-- The plan of one routed request: which deployment next, when, and what
-- an attempt's outcome means. Every entry point (router:chat,
-- router:chat_stream / open_stream, llamacpp.uv's router_chat and
-- router_stream) only drives a plan: it starts what next() names, waits
-- what it says, and hands each result, event or error to outcome() or
-- event(), which decide.
--
--   local plan = Plan.new(router, req, "chat")      -- bad requests raise here
--   local what, a, b = plan:next()
--     "attempt", it, request   start request on it.rec.client
--     "wait", seconds          then call next() again
--     "over", err              the request ends with err (no_provider)
--   plan:outcome(it, err, res)   after a whole answer: "done" | "next" | "final"
--   plan:event(it, ev)           each streamed event: "deliver" | "done" | "next" | "final"
--   plan:close()                 the caller gave up (cancel, close)
--
-- "next": the failure is recorded in the attempts and next() is asked
-- again; "final": the error (labelled with who failed) goes to the caller;
-- "done": the answer (labelled, with the attempts) goes to the caller.
local errors = require "llamacpp.errors"
local args = require "llamacpp.args"
local base = require "llamacpp.providers.base"
local json = require "llamacpp.json"
local hash = require("llamacpp.core").hash
local media = require "llamacpp.media"

local type, pairs, ipairs, next, tostring = type, pairs, ipairs, next, tostring
local setmetatable, pcall = setmetatable, pcall
local min, max, ceil = math.min, math.max, math.ceil
local concat, sort, fmt = table.concat, table.sort, string.format

local M = {}

-- {====== choosing ======

-- How many requests a deployment has under way: the plans running an
-- attempt on it (a plan dropped without close is collected: weak keys).
function M.inflight(rec)
  local n = 0
  for _ in pairs(rec.active) do n = n + 1 end
  return n
end

--- The affinity key of a request: its `session` when given, else its
-- stable prefix (model, system prompt, tools, the messages up to the
-- first user message), as canonical JSON: the same text in every process.
function M.affinity_key(req)
  if req.session ~= nil then return "session\0" .. req.session end
  local msgs, head = req.messages or {}, {}
  for i = 1, #msgs do
    head[i] = msgs[i]
    if msgs[i].role == "user" then break end
  end
  -- a request JSON cannot hold fails when it is sent, with its reason
  local ok, text = pcall(json.canonical, { model = req.model, system = req.system, tools = req.tools,
                                            messages = head })
  return "prefix\0" .. (ok and text or "")
end

-- Affinity: the tier's deployments by rendezvous hashing of the key (the
-- highest hash of key and deployment first: deterministic without shared
-- state; removing a deployment moves only its keys), then bounded load:
-- those carrying more than ceil((1 + epsilon) * mean) of the tier's
-- requests under way (the mean before this one) go after the others, in
-- ring order. The first before bounding is the key's home.
local function affinity(plan, tier, out)
  local list, n = tier.list, #tier.list
  plan.akey = plan.akey or fmt("%.0f", hash(M.affinity_key(plan.req)))
  local score, load, total = {}, {}, 0
  for i = 1, n do
    local rec = list[i]
    out[i] = rec
    score[rec] = hash(plan.akey .. "\0" .. rec.ring)
    load[rec] = M.inflight(rec)
    total = total + load[rec]
  end
  sort(out, function(a, b)
    if score[a] ~= score[b] then return score[a] > score[b] end
    return a.ring < b.ring
  end)
  if tier == plan.tier then plan.home = out[1] end
  local cap = ceil((1 + tier.epsilon) * total / n)
  local under, over = {}, {}
  for i = 1, n do
    local rec = out[i]
    if load[rec] <= cap then under[#under + 1] = rec else over[#over + 1] = rec end
  end
  for i = 1, #over do under[#under + 1] = over[i] end
  return under
end

-- The deployments of one tier in the order its strategy gives.
local function order(plan, tier)
  local router = plan.router
  local list, n = tier.list, #tier.list
  local out = {}
  local s = tier.strategy
  if s == "affinity" then return affinity(plan, tier, out) end
  if s == "round_robin" then
    local start = tier.rr % n
    tier.rr = tier.rr + 1
    for i = 1, n do out[i] = list[(start + i - 1) % n + 1] end
    return out
  end
  local key, pos = {}, {}
  for i = 1, n do
    local rec = list[i]
    out[i], pos[rec] = rec, i
    if s == "least_busy" then
      key[rec] = -M.inflight(rec)
    elseif s == "weighted" then
      -- weighted sampling without replacement (Efraimidis-Spirakis);
      -- weight 0: only after every other one
      key[rec] = rec.weight > 0 and router.random() ^ (1 / rec.weight) or -1
    else
      key[rec] = 0
    end
  end
  sort(out, function(a, b)
    if key[a] ~= key[b] then return key[a] > key[b] end
    return pos[a] < pos[b]
  end)
  return out
end

-- The tier and its fallbacks, in order, each deployment once:
-- array of { rec =, tier = name }.
local function chain(plan)
  local router = plan.router
  local out, seen_tier, seen = {}, {}, {}
  local function add(t)
    if seen_tier[t] then return end
    seen_tier[t] = true
    for _, rec in ipairs(order(plan, t)) do
      if not seen[rec] then
        seen[rec] = true
        out[#out + 1] = { rec = rec, tier = t.name }
      end
    end
    for _, f in ipairs(t.fallback) do add(router.tiers[f]) end
  end
  add(plan.tier)
  return out
end

-- A health check that waits for its answer (the blocking drivers').
-- llamacpp.uv gives plans one that starts a GET /health on its loop and
-- lets the pass go on with what is known.
function M.check_health(router, rec, now)
  if not (router.health and rec.health_client) then return end
  if rec.checked_at and now - rec.checked_at < router.health.interval then return end
  local obj, err = rec.health_client:health(M.health_opts(rec))
  M.health_answer(router, rec, obj, err)
end

--- What a deployment's health check asks: its model, when it names one
-- (on a router-mode server /health is the router's own: the model's
-- state is in its list of models).
function M.health_opts(rec)
  return rec.model and { model = rec.model } or nil
end

-- What a health check answered. A router-mode server's list says what
-- the model takes (architecture.input_modalities): learned, unless the
-- deployment declares its inputs.
function M.health_answer(router, rec, obj, err)
  rec.checked_at = router.clock()
  rec.healthy = obj ~= nil
  rec.health_error = err
  if obj and type(obj.inputs) == "table" then
    local set = { text = false, image = false, audio = false }
    for _, v in ipairs(obj.inputs) do set[v] = true end
    rec.learned, rec.learned_from = set, "its model list"
  end
end

-- Why rec's model cannot take a request carrying `inputs` (a set, from
-- llamacpp.media.inputs): what the deployment declares, else what was
-- learned (its model list, or a refusal of the same input). nil: it may.
local function refuses_inputs(rec, inputs)
  if not inputs then return nil end
  for _, what in ipairs{ "image", "audio" } do
    if inputs[what] then
      if rec.inputs then
        if not rec.inputs[what] then return "it takes no " .. what .. " input (its 'inputs')" end
      elseif rec.learned and rec.learned[what] == false then
        return "its model takes no " .. what .. " input (learned from " .. rec.learned_from .. ")"
      end
    end
  end
end

--- What a deployment takes, as status() shows it: the declared inputs,
-- else those learned (image = false after a refusal), else nil.
function M.inputs_of(rec)
  local set = rec.inputs or rec.learned
  if not set then return nil end
  local out = {}
  for _, what in ipairs{ "text", "image", "audio" } do
    if set[what] ~= nil then out[what] = set[what] end
  end
  return out
end

-- The deployments to try in one pass: those free to take a request;
-- when there are none, those cooling down or unhealthy (better than no
-- answer). Deployments asked to wait (Retry-After) are never included.
local function candidates(plan)
  local router, check = plan.router, plan.check
  local all = chain(plan)
  local now = router.clock()
  local ready, resort = {}, {}
  for _, it in ipairs(all) do
    local rec = it.rec
    if rec.retry_at <= now then
      check(router, rec, now)
      if rec.cool_until > now or rec.healthy == false then
        resort[#resort + 1] = it
      else
        ready[#ready + 1] = it
      end
    end
  end
  if #ready == 0 then return resort, all end
  return ready, all
end

-- Does this error say something about the deployment (rather than the
-- request)? Those count towards its cooldown.
local function deployment_fault(err)
  local k = err.kind
  if k == "connection" or k == "timeout" or k == "network" or k == "truncated" then return true end
  if k == "http" then return errors.retryable_status(err.status) or err.code == "overloaded_error" end
  return false
end

local function failed(router, rec, err)
  local now = router.clock()
  if type(err.retry_after) == "number" and err.retry_after > 0 then
    rec.retry_at = max(rec.retry_at, now + err.retry_after)
  end
  if deployment_fault(err) then
    rec.failures = rec.failures + 1
    if rec.failures >= router.cooldown.failures then
      rec.cool_until = now + router.cooldown.period
      rec.failures = 0
    end
  end
end

-- The request for one deployment: its params under the caller's fields.
-- A deployment that cannot resume a stream gets it without the resume
-- options of a resumable req (a mixed tier resumes where it can).
local function request_for(rec, req, resumable)
  local p = rec.params
  local strip = resumable and not rec.client.provider.resumable
  if not (p or strip) then return req end
  p = p or {}
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
  if strip then r.resumable, r.conversation_id, r.resume = nil, nil, nil end
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

-- }======


-- {====== the plan ======

local Plan = {}
Plan.__index = Plan

-- The tier a request goes to; a bad one raises at the caller's line.
local function tier_of(router, req)
  local name = req.tier
  if name == nil then
    name = router.default_tier
    if name == nil then args.raise("bad request: no 'tier', and the router has no default_tier") end
  end
  local tier = router.tiers[name]
  if not tier then args.raise("bad request: unknown tier '" .. tostring(name) .. "'") end
  return tier
end

local STREAMS = { open_stream = true, chat_stream = true, router_stream = true }

-- A plan for req through router; fname names the entry point in argument
-- errors. check(router, rec, now): the health check (M.check_health by
-- default). Errors in the request itself raise here, before any attempt.
function M.new(router, req, fname, check)
  args.check(type(req) == "table", 1, fname, args.expected("table", req))
  base.check_request(req)
  local resumable = base.resume_of(req) ~= nil
  if req.on_overflow == "trim" and STREAMS[fname] then
    args.check(false, 1, fname, "'on_overflow = \"trim\"' is for whole answers (router:chat): fit a" ..
               " stream's request first (client:fit)")
  end
  if resumable and not STREAMS[fname] then
    args.check(false, 1, fname, "'resumable' is for streams: use " ..
               (fname == "router_chat" and "router_stream" or "chat_stream"))
  end
  return setmetatable({ router = router, tier = tier_of(router, req), req = req, resumable = resumable,
                        inputs = media.inputs(req),
                        check = check or M.check_health,
                        pass = 0, queue = {}, qi = 1, attempts = {}, waited = false, spent = {},
                        running = nil, delivered = 0 }, Plan)
end

-- The next step: "attempt", it, request | "wait", seconds | "over", err.
function Plan:next()
  local r = self.router
  self:close()
  if self.over then return "over", self.over end
  while true do
    while self.qi <= #self.queue do
      local it = self.queue[self.qi]
      self.qi = self.qi + 1
      local rec = it.rec
      -- another request may have learnt meanwhile that it must wait
      if rec.retry_at <= r.clock() and not self.spent[rec] then
        local req = request_for(rec, self.req, self.resumable)
        local why = rec.client.provider.unsupported
        why = why and why(req)
        if not why and rec.model and req.model ~= nil and req.model ~= rec.model then
          why = "it serves model '" .. rec.model .. "', the request asks for '" .. tostring(req.model) .. "'"
        end
        why = why or refuses_inputs(rec, self.inputs)
        if why then
          -- this deployment's wire cannot carry the request: the next one may
          self:record(it, errors.new("unsupported", "deployment " .. rec.name ..
            " cannot take this request: " .. why,
            { code = "UNSUPPORTED_REQUEST", retryable = false, provider = rec.name,
              endpoint = rec.endpoint }))
        else
          self.running, self.delivered = it, 0
          rec.active[self] = true
          return "attempt", it, req
        end
      end
    end
    if self.pass > r.retries then return self:finish() end
    if self.pass > 0 and next(self.spent) then
      -- nothing left but deployments not to ask again: no waiting for them
      local left = false
      for _, it in ipairs(self.chain or {}) do
        if not self.spent[it.rec] then left = true break end
      end
      if not left then return self:finish() end
    end
    if self.pass > 0 and not self.waited then
      self.waited = true
      local d = self:delay()
      if d == nil then return self:finish() end
      if d > 0 then return "wait", d end
    end
    self.waited = false
    self.pass = self.pass + 1
    self.queue, self.chain = candidates(self)
    self.qi = 1
  end
end

-- The attempt under way is over (or abandoned): it no longer counts in
-- its deployment's inflight. Idempotent.
function Plan:close()
  local it = self.running
  if it then
    it.rec.active[self] = nil
    self.running = nil
  end
end

-- What the end of an attempt means: a whole answer res (err nil) or an
-- error. See the top of this file.
-- Answers that say this deployment cannot serve the request's model,
-- though another one may (router mode: not served there, not loaded, its
-- server process died): not retryable on it, but the next one is tried.
-- A model without a projector refusing an image or audio part
-- (unsupported_media) is one too: the deployment is not sent that input
-- again (it learns), another may take it.
local DEPLOYMENT_FAULTS = { model_not_found = true, model_not_loaded = true, model_failed = true,
                            unsupported_media = true }

-- An answer's figures, per deployment (router:status()): answered, and
-- for affinity tiers whether at the key's home; the prompt tokens the
-- server read from its cache and those it evaluated.
local function count(plan, rec, res)
  rec.answered = rec.answered + 1
  if plan.home then
    if rec == plan.home then rec.home = rec.home + 1 else rec.away = rec.away + 1 end
  end
  local st = res.stats
  if st and type(st.input_tokens) == "number" then
    local cached = type(st.cached_tokens) == "number" and st.cached_tokens or 0
    rec.cached_tokens = rec.cached_tokens + cached
    rec.evaluated_tokens = rec.evaluated_tokens + max(0, st.input_tokens - cached)
  end
end

function Plan:outcome(it, err, res)
  self:close()
  local rec = it.rec
  if err == nil then
    rec.failures = 0
    count(self, rec, res)
    label(res, it).attempts = self.attempts
    return "done"
  end
  label(err, it)
  failed(self.router, rec, err)
  if err.code == "unsupported_media" and not rec.inputs and (err.input == "image" or err.input == "audio") then
    rec.learned = rec.learned or {}
    rec.learned[err.input], rec.learned_from = false, "a refusal"
  end
  if self.delivered == 0 and (err.retryable or DEPLOYMENT_FAULTS[err.code]) then
    self:record(it, err)
    return "next"
  end
  if self.delivered == 0 and err.code == "gateway_timeout" then
    -- the server behind may still be reading the prompt: another deployment
    -- may answer, this one is not sent it again
    self.spent[rec] = true
    self:record(it, err)
    return "next"
  end
  return "final"
end

-- Each event of a streamed attempt: "deliver" (pass it on), "done" or
-- "final" (pass it on; it is the last), "next" (drop it; ask next()).
function Plan:event(it, ev)
  local t = ev.type
  if t == "error" then
    local o = self:outcome(it, ev.error)
    if o == "final" then ev.provider = it.rec.name end
    return o
  end
  ev.provider = it.rec.name
  if t == "done" then return self:outcome(it, nil, ev) end
  -- progress is not text: a deployment that fails after it may still pass
  -- the request on (the caller sees progress start again)
  if t ~= "progress" then self.delivered = self.delivered + 1 end
  return "deliver"
end

-- Seconds before the next pass: full jitter over an exponential cap, or
-- longer when every deployment asked to wait (Retry-After). nil when that
-- wait is longer than backoff.max_retry_after.
function Plan:delay()
  local r = self.router
  local b = r.backoff
  local d = r.random() * min(b.max, b.base * 2 ^ (self.pass - 1))
  local now = r.clock()
  local earliest
  for _, it in ipairs(self.chain or chain(self)) do
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

-- The request has run out of tries: "over" and the no_provider error,
-- with every attempt, who, where and what.
function Plan:finish()
  if self.over then return "over", self.over end
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
  self.over = errors.new("no_provider", msg, { attempts = self.attempts, tier = self.tier.name,
                                               retry_after = retry_after, retryable = false })
  return "over", self.over
end

-- }======

return M
