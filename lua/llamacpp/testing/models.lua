--- llamacpp.testing.models: a fake llama-server in router mode.
-- Pure state and answers (no I/O), used by the fake server
-- (llamacpp.testing.server) for the routes `srv:router{...}` gives. It
-- answers as a router-mode llama-server does (`--models-dir`, see the
-- router_* captures in ../shared/wire and tools/server/server-models.cpp):
-- POSTs are routed by the body's `model`, GETs by `?model=`; without one,
-- 400 "model name is missing from the request"; an unknown one, 400
-- "model 'x' not found"; with autoload off and the model not running, 400
-- "model is not loaded". `GET /models` lists each model with
-- `status.value` moving from `unloaded` through `loading` to `loaded`; a
-- model whose child fails shows `unloaded` with `failed = true` and its
-- `exit_code`, and a request that autoloads it gets 500 "model name=x
-- failed to load". Each answer names the model that served it.
--
-- With `swap = true` it answers as llama-swap does instead (its
-- proxy/proxymanager.go): the inference POSTs (chat, completions,
-- /completion, /infill, embeddings, rerank, /v1/messages and its
-- count_tokens) are routed by the body's `model` and wait for that model
-- to start (one model runs at a time: starting one stops the others);
-- `/upstream/NAME/PATH` passes any request to model NAME; `/v1/models`
-- lists the models (`owned_by = "llama-swap"`, no status), `/running` the
-- ones running, `GET /unload` stops them all, `/health` is its own "OK";
-- every other path is a 404 with no body. Its refusals are 400s with
-- `{"error": "..."}` (JSON when asked for, else the text alone).
-- @module llamacpp.testing.models
local cjson = require "cjson"
local render = require "llamacpp.testing.render"

local M = {}

local Router = {}
Router.__index = Router

local function err(status, message, etype)
  return { status = status, json = { error = { code = status, message = message,
                                              type = etype or "invalid_request_error" } } }
end

local function ok(obj) return { status = 200, json = obj } end

--- A router from its configuration (what `srv:router{}` wrote):
-- `models` = {"a", {name = "b", fail = 1, n_ctx = 2048, aliases = {...},
-- inputs = {"text", "image"}}, ...} (inputs: default {"text"}; the others
-- are refused as without --mmproj),
-- `loaded` = names running at the start, `load_time` (seconds, default
-- 0.2), `autoload` (default true), `metrics`/`embeddings` (the router's
-- flags: else the child's 501).
function M.new(conf)
  local r = setmetatable({ conf = conf, models = {}, order = {}, by_alias = {} }, Router)
  r.load_time = tonumber(conf.load_time) or 0.2
  r.autoload = conf.autoload ~= false
  r.swap = conf.swap == true
  local loaded = {}
  for _, n in ipairs(conf.loaded or {}) do loaded[n] = true end
  for _, m in ipairs(conf.models or {}) do
    if type(m) == "string" then m = { name = m } end
    local inputs = {}
    for _, v in ipairs(m.inputs or { "text" }) do inputs[v] = true end
    local st = { name = m.name, fail = m.fail, n_ctx = m.n_ctx or 1024, aliases = m.aliases or {},
                 input_list = m.inputs or { "text" }, inputs = inputs,
                 state = loaded[m.name] and "loaded" or "unloaded", exit_code = 0 }
    r.models[m.name] = st
    r.order[#r.order + 1] = st
    for _, a in ipairs(st.aliases) do r.by_alias[a] = st end
  end
  return r
end

-- The state of a model at time `now`: a load ends after load_time.
function Router.status(_, m, now)
  if m.state == "loading" and now >= m.ready_at then
    if m.fail then m.state, m.exit_code = "unloaded", m.fail else m.state = "loaded" end
  end
  return m.state
end

function Router:start_load(m, now)
  m.state, m.ready_at, m.exit_code = "loading", now + self.load_time, 0
end

local function entry(m, state)
  local status = { value = state, args = { "/opt/llama.cpp/bin/llama-server", "--alias", m.name } }
  if state == "unloaded" and m.exit_code ~= 0 then
    status.failed, status.exit_code = true, m.exit_code
  end
  local e = { id = m.name, aliases = m.aliases, tags = {}, object = "model", owned_by = "llamacpp",
              created = 1796407375, status = status, source = "models_dir", can_remove = false,
              architecture = { input_modalities = m.input_list, output_modalities = { "text" } } }
  if state == "loaded" then e.meta = { n_ctx = m.n_ctx, n_ctx_train = 2048 } end
  return e
end

local function query_param(query, name)
  local v = (query or ""):match("[?&]" .. name .. "=([^&]*)")
  return v and (v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Validates the model of a request (router_validate_model): the model
-- record, or nil and the error answer; `wait` (seconds) when the answer
-- must wait for a load to end first.
function Router:validate(name, query, now)
  if name == nil or name == "" then return nil, err(400, "model name is missing from the request") end
  local m = self.models[name] or self.by_alias[name]
  if not m then return nil, err(400, "model '" .. name .. "' not found") end
  local autoload = self.autoload
  local q = query_param(query, "autoload")
  if q then autoload = q == "true" or q == "1" end
  local state = self:status(m, now)
  if state == "loaded" then return m end
  if not autoload then
    if state == "loading" then return m, nil, m.ready_at - now end
    return nil, err(400, "model is not loaded")
  end
  if state == "unloaded" then self:start_load(m, now) end
  return m, nil, m.ready_at - now
end

-- The failure of a load that was waited for, if it failed.
function Router:after_wait(m, now)
  if self:status(m, now) ~= "loaded" then
    return err(500, "model name=" .. m.name .. " failed to load", "server_error")
  end
end

--- The answer to one request: {status =, json = table}, {status =, body
-- = string, ctype =}, {status = 200, events = {table, ...}} (a native
-- event stream) or {chat = reply}
-- (a chat answer for llamacpp.testing.render), and the seconds to wait
-- before it (a load), then call `finish(now)` for the answer after the
-- wait. Returns answer, wait, finish.
function Router:answer(method, path, query, body, now, accept)
  if self.swap then return self:swap_answer(method, path, body, now, accept) end
  if path == "/health" then return ok{ status = "ok" } end
  if path == "/models" or path == "/v1/models" then
    local data = {}
    for i, m in ipairs(self.order) do data[i] = entry(m, self:status(m, now)) end
    return ok{ data = data, object = "list" }
  end
  if path == "/models/load" or path == "/models/unload" then
    local name = type(body) == "table" and body.model or nil
    local m = type(name) == "string" and (self.models[name] or self.by_alias[name])
    local load = path == "/models/load"
    if not m then return err(load and 404 or 400, "model is not found", load and "not_found_error" or nil) end
    local state = self:status(m, now)
    local running = state == "loaded" or state == "loading"
    if load then
      if running then return err(400, "model is already running") end
      self:start_load(m, now)
    else
      if not running then return err(400, "model is not running") end
      m.state, m.exit_code = "unloaded", 0
    end
    return ok{ success = true }
  end
  if method == "GET" and path == "/props" and not query_param(query, "model") then
    return ok{ role = "router", max_instances = #self.order, models_autoload = self.autoload,
               model_alias = "llama-server", model_path = "none",
               default_generation_settings = { params = cjson.null, n_ctx = 0 },
               build_info = "b0-testing" }
  end

  local name
  if method == "GET" then name = query_param(query, "model")
  elseif type(body) == "table" and type(body.model) == "string" then name = body.model end
  local m, e, wait = self:validate(name, query, now)
  if not m then return e end
  local function child(at)
    local failed = self:after_wait(m, at)
    if failed then return failed end
    return self:child(m, path, body)
  end
  if wait and wait > 0 then return nil, wait, child end
  return child(now)
end

-- llama-swap's inference routes (the POSTs it routes by the body's model).
local SWAP_POSTS = {}
for _, p in ipairs{ "/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages",
                    "/v1/messages/count_tokens", "/v1/embeddings", "/reranking", "/rerank", "/v1/rerank",
                    "/v1/reranking", "/infill", "/completion" } do
  SWAP_POSTS[p] = true
end

-- llama-swap's answers: JSON {"error": msg} when the request accepts JSON, else the text.
local function swap_error(status, message, accept)
  if tostring(accept or ""):find("application/json", 1, true) then
    return { status = status, json = { error = message } }
  end
  return { status = status, body = message, ctype = "text/plain; charset=utf-8" }
end

-- llama-swap: `m` answers `path` once it runs (starting it stops the others).
function Router:swap_to(m, path, body, now)
  for _, o in ipairs(self.order) do
    if o ~= m and self:status(o, now) ~= "unloaded" then o.state = "unloaded" end
  end
  local state = self:status(m, now)
  if state == "loaded" then return self:child(m, path, body) end
  if state == "unloaded" then self:start_load(m, now) end
  return nil, m.ready_at - now, function(at)
    if self:status(m, at) ~= "loaded" then
      return { status = 502, body = "upstream command exited prematurely", ctype = "text/plain" }
    end
    return self:child(m, path, body)
  end
end

function Router:swap_answer(method, path, body, now, accept)
  if path == "/health" then return { status = 200, body = "OK", ctype = "text/plain; charset=utf-8" } end
  if method == "GET" and path == "/v1/models" then
    local data = {}
    for i, m in ipairs(self.order) do
      data[i] = { id = m.name, object = "model", created = 1796407375, owned_by = "llama-swap" }
    end
    table.sort(data, function(a, b) return a.id < b.id end)
    return ok{ object = "list", data = data }
  end
  if method == "GET" and path == "/running" then
    local run = {}
    for _, m in ipairs(self.order) do
      if self:status(m, now) == "loaded" then run[#run + 1] = { model = m.name, state = "ready" } end
    end
    if #run == 0 then return { status = 200, body = '{"running":[]}' } end   -- cjson 2.1.0: {} otherwise
    return ok{ running = run }
  end
  if method == "GET" and path == "/unload" then
    for _, m in ipairs(self.order) do m.state = "unloaded" end
    return { status = 200, body = "OK", ctype = "text/plain; charset=utf-8" }
  end
  local up, rest = path:match("^/upstream/([^/]+)(/.*)$")
  if up then
    local m = self.models[up] or self.by_alias[up]
    if not m then return swap_error(400, "model id required in path", accept) end
    return self:swap_to(m, rest, body, now)
  end
  if method == "POST" and SWAP_POSTS[path] then
    local name = type(body) == "table" and type(body.model) == "string" and body.model or ""
    if name == "" then return swap_error(400, "missing or invalid 'model' key", accept) end
    local m = self.models[name] or self.by_alias[name]
    if not m then return swap_error(400, "could not find suitable inference handler for " .. name, accept) end
    return self:swap_to(m, path, body, now)
  end
  return { status = 404, body = "", ctype = "text/plain" }
end

-- What the model's own server (the child) answers.
function Router:child(m, path, body)
  body = type(body) == "table" and body or {}
  local text = "model " .. m.name
  local n = 0
  for _ in text:gmatch("%S+") do n = n + 1 end
  if path == "/props" then
    return ok{ model_alias = m.name, model_path = "models/" .. m.name .. ".gguf",
               default_generation_settings = { n_ctx = m.n_ctx }, total_slots = 1,
               build_info = "b0-testing", is_sleeping = false,
               modalities = { vision = m.inputs.image == true, video = false, audio = m.inputs.audio == true } }
  elseif path == "/slots" then
    return ok{ { id = 0, n_ctx = m.n_ctx, is_processing = false } }
  elseif path == "/metrics" then
    if not self.conf.metrics then
      return err(501, "This server does not support metrics endpoint. Start it with `--metrics`",
                 "not_supported_error")
    end
    return { status = 200, ctype = "text/plain; version=0.0.4",
             body = "# model " .. m.name .. "\nllamacpp:prompt_tokens_total 0\n" }
  elseif path == "/tokenize" then
    local toks = {}
    for w in tostring(body.content or ""):gmatch("%S+") do toks[#toks + 1] = #w end
    if #toks == 0 then return { status = 200, body = '{"tokens":[]}' } end   -- cjson 2.1.0: {} otherwise
    return ok{ tokens = toks }
  elseif path == "/detokenize" then
    return ok{ content = text }
  elseif path == "/apply-template" then
    return ok{ prompt = "<|" .. m.name .. "|>" }
  elseif (path == "/completion" or path == "/infill") and body.stream == true then
    local evs = {}
    for w in text:gmatch("%s*%S+") do
      evs[#evs + 1] = { index = 0, content = w, stop = false, tokens_predicted = #evs + 1 }
    end
    evs[#evs + 1] = { index = 0, content = "", stop = true, model = m.name, stop_type = "eos",
                      tokens_predicted = n, tokens_evaluated = 3, timings = { prompt_n = 3, predicted_n = n } }
    return { status = 200, events = evs }
  elseif path == "/completion" or path == "/infill" then
    return ok{ content = text, model = m.name, stop = true, stop_type = "eos", tokens_predicted = n,
               tokens_evaluated = 3, timings = { prompt_n = 3, predicted_n = n } }
  elseif path == "/v1/chat/completions/input_tokens" then
    return ok{ input_tokens = 22 }
  elseif path == "/v1/embeddings" or path == "/embeddings" then
    if not self.conf.embeddings then
      return err(501, "This server does not support embeddings. Start it with `--embeddings`",
                 "not_supported_error")
    end
    return ok{ model = m.name, object = "list", data = { { index = 0, object = "embedding",
               embedding = { 0.5, 0.25 } } }, usage = { prompt_tokens = 2, total_tokens = 2 } }
  elseif path == "/v1/chat/completions" or path == "/chat/completions" then
    local refusal = render.media_refusal(body, m.inputs)     -- a model without --mmproj
    if refusal then return err(refusal.status, refusal.error, refusal.error_type) end
    return { chat = { content = text, model = m.name } }
  end
  return err(404, "File Not Found", "not_found_error")
end

return M
