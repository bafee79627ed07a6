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
local config = require "llamacpp.router.config"
local Plan = require "llamacpp.router.plan"
local args = require "llamacpp.args"

local M = {}

local setmetatable, getmetatable, min, max = setmetatable, getmetatable, math.min, math.max
local core_now = require("llamacpp.core").now
local concat, sort = table.concat, table.sort

local Router = {}
Router.__index = Router
Router.__name = "llamacpp.Router"
M.Router = Router

--- Creates a router. Options: tiers (required), default_tier, retries,
-- backoff, cooldown, strategy, health_check, sleep, clock, random; see
-- docs/routing.md. A bad configuration raises here, not at the first
-- request.
function M.new(opts)
  return setmetatable(config.build(opts), Router)
end

--- A router from the original plan's configuration:
-- `{ models = { ["local"] = { provider = "llamacpp" | "ollama" | ..., endpoint =,
-- auth_token =, model =, fallback = "other" }, ... }, default = "local" }`.
-- Each model is a tier of that name (several deployments when `endpoint`
-- is a list); a llamacpp endpoint defaults to http://localhost:8080.
function M.from_config(cfg)
  return setmetatable(config.from_config(cfg), Router)
end

-- For drivers (llamacpp.uv), not applications: the plan of a request
-- (router/plan.lua), whose health checks are check's.
function M.plan(router, req, fname, check)
  args.check(getmetatable(router) == Router, 1, fname, "router expected")
  return Plan.new(router, req, fname, check)
end

function Router:__tostring()
  local names = {}
  for name in pairs(self.tiers) do names[#names + 1] = name end
  sort(names)
  return "llamacpp.Router (tiers: " .. concat(names, ", ") .. ")"
end



-- {====== the blocking drivers ======

--- One chat completion through the router: res (with res.provider, the
-- deployment that answered, and res.attempts), or nil, Error.
function Router:chat(req)
  local plan = Plan.new(self, req, "chat")
  while true do
    local what, it, r = plan:next()
    if what == "over" then return nil, it end
    if what == "wait" then
      self.sleep(it)
    else
      local res, err = it.rec.client:chat(r)
      local o = plan:outcome(it, err, res)
      if o == "done" then return res end
      if o == "final" then return nil, err end
    end
  end
end


--- A routed stream: the events of one deployment's stream, after the
-- failed attempts that produced none.
local Stream = require("llamacpp.client").stream_class("llamacpp.RouterStream", function(s)
  return s.it and (" via " .. s.it.rec.name)
end)
M.Stream = Stream

-- Ends the current attempt's transfer.
function Stream:_drop()
  if self.cur then self.cur:close() end
  self.cur = nil
  self.plan:close()
end

-- Asks the plan what to do next: start an attempt, or note when to.
function Stream:_advance()
  local what, a, b = self.plan:next()
  if what == "over" then
    self.ended = true
    return { type = "error", error = a }
  elseif what == "wait" then
    self.resume_at = self.router.clock() + a
  else
    self.it = a
    self.cur = a.rec.client:open_stream(b)
  end
end

--- The next event (with ev.provider); nil after the last one; false when
-- timeout_ms (0: do not block) passed with nothing ready.
function Stream:next(timeout_ms)
  if self.closed then args.raise("stream is closed") end
  local pending = self.pending
  if pending then
    self.pending = nil
    return pending
  end
  if self.ended then return nil end
  local r = self.router
  local deadline = timeout_ms and timeout_ms > 0 and core_now() + timeout_ms
  while true do
    if not self.cur then
      if self.resume_at then
        local left = self.resume_at - r.clock()
        if left > 0 then
          if timeout_ms == nil then
            r.sleep(left)
          else
            local budget = deadline and (deadline - core_now()) / 1000 or 0
            if budget <= 0 then return false end
            r.sleep(min(left, budget))
            if r.clock() < self.resume_at then return false end
          end
        end
        self.resume_at = nil
      end
      local last = self:_advance()
      if last then return last end
    else
      local ev = self.cur:next(deadline and max(0, deadline - core_now()) or timeout_ms)
      if ev == false then return false end
      if ev == nil then                  -- the client ends with done or error; be safe
        self.ended = true
        self:_drop()
        return nil
      end
      local o = self.plan:event(self.it, ev)
      if o == "deliver" then return ev end
      self:_drop()
      if o ~= "next" then
        self.ended = true
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
local function new_stream(self, req, fname)
  local s = setmetatable({ router = self, plan = Plan.new(self, req, fname),
                           ended = false, closed = false }, Stream)
  s.pending = s:_advance()    -- over at once: every deployment waits past max_retry_after
  return s
end

--- A routed stream for a chat request, read with :next() and :close().
function Router:open_stream(req)
  return new_stream(self, req, "open_stream")
end

--- Streams a chat: for ev in router:chat_stream(req) do ... end, each
-- event with ev.provider. Returns step, stream, nil, stream as the client.
function Router:chat_stream(req)
  local s = new_stream(self, req, "chat_stream")
  return function() return s:next() end, s, nil, s
end

-- }======


--- The state of every deployment: name, provider, endpoint, inflight,
-- failures, cooling (seconds left), retry_after (seconds left), healthy;
-- and what it answered: answered (requests), home and away (those of
-- affinity tiers answered at the key's own deployment, or elsewhere:
-- its home was down, cooling or full), cached_tokens and
-- evaluated_tokens (prompt tokens the server read from its cache, and
-- those it evaluated, as its answers said); inputs, what its model takes
-- (`{text = true, image = false, ...}`: declared, or learned from a
-- router-mode server's model list or a refusal; nil when unknown).
function Router:status()
  local now = self.clock()
  local out = {}
  for i, rec in ipairs(self.deployments) do
    out[i] = {
      name = rec.name, provider = rec.kind, endpoint = rec.endpoint, model = rec.model,
      inflight = Plan.inflight(rec), failures = rec.failures,
      cooling = rec.cool_until > now and rec.cool_until - now or nil,
      retry_after = rec.retry_at > now and rec.retry_at - now or nil,
      healthy = rec.healthy, health_error = rec.health_error,
      answered = rec.answered, home = rec.home, away = rec.away,
      cached_tokens = rec.cached_tokens, evaluated_tokens = rec.evaluated_tokens,
      inputs = Plan.inputs_of(rec),
    }
  end
  return out
end

--- Checks the health of every llamacpp deployment now (GET /health),
-- when the router has health_check; returns status().
function Router:check_health()
  for _, rec in ipairs(self.deployments) do
    rec.checked_at = nil
    Plan.check_health(self, rec, self.clock())
  end
  return self:status()
end

return M
