--- llama-server's other endpoints, as Client methods: models, health,
-- props, slots, metrics, tokenize, detokenize, apply_template, the
-- context window (count_tokens, context_size, fit), embeddings, rerank,
-- native completion and infill.
-- A first chat runs none of this: llamacpp.client loads it on first use
-- (`require "llamacpp"` compiles less Lua), and hands it the helpers it
-- shares with the chat methods. Not for applications: the methods are
-- the Client's.
-- @submodule llamacpp.client
local core = require "llamacpp.core"
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local base = require "llamacpp.providers.base"
local openai = require "llamacpp.providers.openai"
local args = require "llamacpp.args"

local type, pairs, ipairs, tonumber, tostring = type, pairs, ipairs, tonumber, tostring

-- C: the client module's Client, steps, blocking io, private store and
-- the request helpers (client.lua's `later`, on the first look-up of one
-- of its LATER names).
return function(C)
local Client, steps, blocking, private = C.Client, C.steps, C.blocking, C.private
local request, explain, served_names = C.request, C.explain, C.served_names
local check_stream_flag, check_stream_opts, stats_of = C.check_stream_flag, C.check_stream_opts, C.stats_of
local native, native_stream, FIT_MARGIN = C.native, C.native_stream, C.FIT_MARGIN

-- The body of a POST with the model it is for: its own, else the client's.
local function with_model(self, body)
  if body.model == nil then body.model = self.model end
  return body
end

local function url_escape(s)
  return (s:gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

-- A GET of `path` with `?model=` (opts.model, else the client's) and
-- `autoload=` (opts.autoload), which a single-model server ignores; raw
-- as for io.request.
local function get(io, self, path, opts, fname, raw)
  if opts == nil then opts = {} end
  args.check(type(opts) == "table", 1, fname, args.expected("table", opts))
  local model = opts.model
  if model == nil then model = self.model end
  args.check(model == nil or type(model) == "string", 1, fname, "'model' must be a string")
  args.check(opts.autoload == nil or type(opts.autoload) == "boolean", 1, fname, "'autoload' must be a boolean")
  local q = {}
  if model ~= nil then q[#q + 1] = "model=" .. url_escape(model) end
  if opts.autoload ~= nil then q[#q + 1] = "autoload=" .. tostring(opts.autoload) end
  if #q > 0 then path = path .. "?" .. table.concat(q, "&") end
  return request(io, self, "GET", path, nil, raw, nil, model)
end

local function copy(t, into)
  into = into or {}
  for k, v in pairs(t or {}) do into[k] = v end
  return into
end

-- {=== models: status, load, unload ===

-- The state of one entry of /v1/models: router mode's status.value
-- ("loaded", "loading", "unloaded", "sleeping", "downloading", ...),
-- "failed" when its server process died; a single-model server's entries
-- have no status: the model it serves is "loaded".
local function model_state(d)
  local st = d.status
  if type(st) ~= "table" then return "loaded" end
  if st.failed == true then return "failed" end
  return type(st.value) == "string" and st.value or "unknown"
end

-- The entry of `name` (its id or one of its aliases) in a decoded
-- /v1/models answer (states added), and whether the server routes by
-- model (its entries have a status).
local function find_model(obj, name)
  local routed = false
  for _, d in ipairs(obj.data) do
    if type(d.status) == "table" or d.owned_by == "llama-swap" then routed = true end
    if d.id == name then return d, true end
    for _, a in ipairs(type(d.aliases) == "table" and d.aliases or {}) do
      if a == name then return d, true end
    end
  end
  return nil, routed
end

function steps.models(io, self)
  local obj, err = request(io, self, "GET", "/v1/models")
  if not obj then return nil, err end
  if type(obj.data) ~= "table" then obj.data = {} end
  local swap = false
  for _, d in ipairs(obj.data) do
    if type(d) == "table" then
      d.state = model_state(d)
      if d.owned_by == "llama-swap" then swap = true end
    end
  end
  if swap then          -- llama-swap keeps no status per model: /running lists those running
    local run = io.request(self, "GET", "/running")
    local up = {}
    for _, p in ipairs(type(run) == "table" and type(run.running) == "table" and run.running or {}) do
      if type(p) == "table" and type(p.model) == "string" then up[p.model] = p.state end
    end
    for _, d in ipairs(obj.data) do
      if type(d) == "table" and d.owned_by == "llama-swap" then
        d.state = not run and "unknown" or up[d.id] == "ready" and "loaded" or up[d.id] and "loading"
                  or "unloaded"
      end
    end
  end
  private[self].served = served_names(obj)
  return obj
end

--- GET /v1/models: the server's answer, each entry of `data` with a
-- normalised `state`: `"loaded"`, `"loading"`, `"unloaded"`, `"sleeping"`,
-- `"downloading"`, ... as a router-mode server says (`status.value`),
-- `"failed"` when the model's server process died (`status.failed`,
-- `status.exit_code`); a single-model server's model is `"loaded"`; behind
-- llama-swap (`owned_by = "llama-swap"`), `"loaded"` for the models its
-- `GET /running` lists, else `"unloaded"`.
-- @within Client
function Client:models() return steps.models(blocking, self) end

-- The Error for model `name` as the server's list shows it: not served,
-- or its server process died (kind "model").
local function model_error(self, name, d, served)
  local label = self.provider.label
  if not d then
    return explain(errors.new("model", label .. " at " .. self.endpoint .. ": model '" .. name ..
                              "' not found", { code = "model_not_found" }), name, served)
  end
  local code = type(d.status) == "table" and tonumber(d.status.exit_code)
  return explain(errors.new("model", label .. " at " .. self.endpoint .. ": model '" .. name ..
                            "' failed to load (exit code " .. tostring(code) .. ")",
                            { code = "model_failed", exit_code = code }), name, nil)
end

local function load_request(io, self, what, name, fname)
  args.check(type(name) == "string" and name ~= "", 1, fname, "a model name (string) expected")
  local obj, err = request(io, self, "POST", "/models/" .. what, { model = name })
  if obj then return true end
  -- the state the caller asked for is already there
  local words = err.server and err.server.message
  if words == (what == "load" and "model is already running" or "model is not running") then
    return true
  end
  if err.status == 404 and err.code ~= "model_not_found" then
    err.message = err.message .. " (POST /models/" .. what .. ": the server does not manage models;" ..
                  " only llama-server in router mode, --models-dir or --models-preset, does)"
  end
  return nil, err
end

function steps.load_model(io, self, name) return load_request(io, self, "load", name, "load_model") end
function steps.unload_model(io, self, name) return load_request(io, self, "unload", name, "unload_model") end

--- Asks a router-mode server to start model `name` (POST /models/load).
-- The server answers at once and loads afterwards: see
-- @{Client:wait_ready} with `model`. A model already running is no error.
-- true, or nil and the Error (`code = "model_not_found"` for a name it
-- does not serve).
-- @within Client
function Client:load_model(name) return steps.load_model(blocking, self, name) end

--- Asks a router-mode server to stop model `name` (POST /models/unload);
-- one not running is no error. true, or nil and the Error.
-- @within Client
function Client:unload_model(name) return steps.unload_model(blocking, self, name) end

-- }===

function steps.health(io, self, opts)
  args.check(opts == nil or type(opts) == "table", 1, "health", args.expected("table", opts))
  local name = opts and opts.model
  if name == nil then return io.request(self, "GET", "/health") end
  args.check(type(name) == "string", 1, "health", "'model' must be a string")
  local obj, err = steps.models(io, self)
  if not obj then return nil, err end
  local d, routed = find_model(obj, name)
  if not routed then return { status = "ok", model = name, state = "loaded" } end
  if not d or d.state == "failed" then return nil, model_error(self, name, d, private[self].served) end
  -- llama-swap starts a model on its first request, and holds the request until it runs
  local arch = type(d.architecture) == "table" and d.architecture
  return { status = "ok", model = name, state = d.state, on_demand = d.owned_by == "llama-swap" or nil,
           inputs = arch and type(arch.input_modalities) == "table" and arch.input_modalities or nil }
end

--- GET /health: {status = "ok"}, or nil, Error (503 "Loading model" is an
-- http error with retryable = true). With opts.model, that model on a
-- router-mode server (whose own /health says nothing of its models):
-- {status = "ok", model =, state =, inputs =} (inputs: what the model
-- takes, {"text", "image", ...}, when the list says) while the server lists it and it has
-- not failed (an unloaded one loads on demand), else an Error of kind
-- `model` (code `model_not_found`, or `model_failed` with `exit_code`).
-- @within Client
function Client:health(opts) return steps.health(blocking, self, opts) end

function steps.wait_ready(io, self, opts)
  if opts == nil then opts = {} end
  args.check(type(opts) == "table", 1, "wait_ready", args.expected("table", opts))
  args.check(opts.model == nil or type(opts.model) == "string", 1, "wait_ready", "'model' must be a string")
  local timeout, interval = opts.timeout or 60, opts.interval or 0.25
  local deadline = core.now() + timeout * 1000
  local name, asked = opts.model, opts.load == false
  local hopts = name and { model = name }
  while true do
    -- with a model: its state (a model not served or failed is an Error
    -- of kind "model", not retryable: the wait ends at once)
    local h, err = steps.health(io, self, hopts)
    if h and h.on_demand then return true end
    local state = h and h.state
    if state and state ~= "loaded" and state ~= "sleeping" then   -- unloaded, loading, ...
      if state == "unloaded" and not asked then
        asked = true
        local lok, lerr = steps.load_model(io, self, name)
        if not lok then return nil, lerr end
      end
      h, err = nil, errors.new("timeout", "model '" .. name .. "' is still " .. state .. " at " .. self.endpoint,
                               { phase = "total", retryable = true, code = "model_not_ready" })
    end
    if h then return true end                -- loaded, or sleeping: the next request wakes it
    if not err.retryable or core.now() + interval * 1000 > deadline then
      return nil, err
    end
    io.sleep(interval * 1000)
  end
end

--- Polls until the server is ready: /health (through the 503 "Loading
-- model" phase and a server still starting), or with opts.model, until
-- that model is loaded on a router-mode server (GET /v1/models), loading
-- it first when it is unloaded unless opts.load is false (behind
-- llama-swap, which starts a model on its first request: once it lists
-- the model); a model that
-- failed, or that the server does not serve, ends the wait at once (kind
-- `model`). opts.timeout (seconds, default 60), opts.interval (seconds,
-- default 0.25). true, or nil and the last Error.
-- @within Client
function Client:wait_ready(opts) return steps.wait_ready(blocking, self, opts) end

function steps.props(io, self, opts) return get(io, self, "/props", opts, "props") end
function steps.slots(io, self, opts) return get(io, self, "/slots", opts, "slots") end
function steps.metrics(io, self, opts) return get(io, self, "/metrics", opts, "metrics", true) end

--- GET /props: server and model properties (chat template, n_ctx, ...);
-- on a router-mode server, those of opts.model (else the client's model;
-- without one, the router's own `{role = "router", ...}`).
-- opts.autoload = false: do not start the model for this.
-- @within Client
function Client:props(opts) return steps.props(blocking, self, opts) end

--- GET /slots (on by default; off with the server flag no-slots): array
-- of slots (opts.model, opts.autoload as for props).
-- @within Client
function Client:slots(opts) return steps.slots(blocking, self, opts) end

--- GET /metrics (needs the server flag metrics): Prometheus text
-- (opts.model, opts.autoload as for props).
-- @within Client
function Client:metrics(opts) return steps.metrics(blocking, self, opts) end

function steps.tokenize(io, self, text, opts)
  args.check(type(text) == "string", 1, "tokenize", args.expected("string", text))
  local obj, err = request(io, self, "POST", "/tokenize", with_model(self, copy(opts, { content = text })))
  if not obj then return nil, err end
  return obj.tokens
end

--- POST /tokenize: the tokens of `text` (ids, or {id, piece} with
-- opts.with_pieces; a piece that is not valid UTF-8 comes as a byte array).
-- @within Client
function Client:tokenize(text, opts) return steps.tokenize(blocking, self, text, opts) end

function steps.detokenize(io, self, tokens, opts)
  args.check(type(tokens) == "table", 1, "detokenize", args.expected("table", tokens))
  args.check(opts == nil or type(opts) == "table", 2, "detokenize", args.expected("table", opts))
  local body = with_model(self, copy(opts, { tokens = json.array(copy(tokens)) }))
  local obj, err = request(io, self, "POST", "/detokenize", body)
  if not obj then return nil, err end
  return obj.content
end

--- POST /detokenize: the text of an array of token ids (opts.model: for
-- that model).
-- @within Client
function Client:detokenize(tokens, opts) return steps.detokenize(blocking, self, tokens, opts) end

function steps.apply_template(io, self, req)
  args.check(type(req) == "table", 1, "apply_template", args.expected("table", req))
  check_stream_flag(req, "apply_template", false)
  local body = self.provider.chat_body(req, false, self.model)
  body.max_tokens, body.stream = nil, nil
  local obj, err = request(io, self, "POST", "/apply-template", body)
  if not obj then return nil, err end
  return obj.prompt
end

--- POST /apply-template: the prompt the chat template makes of a chat
-- request (system first, as in chat).
-- @within Client
function Client:apply_template(req) return steps.apply_template(blocking, self, req) end

-- {=== the context window ===


function steps.count_tokens(io, self, req)
  args.check(type(req) == "table", 1, "count_tokens", args.expected("table", req))
  check_stream_flag(req, "count_tokens", false)
  local p = self.provider
  if not p.count_path then
    args.check(false, 1, "count_tokens", p.label .. " has no endpoint that counts a request's tokens" ..
               " (llama-server and Anthropic have one)")
  end
  local body = p.chat_body(req, false, self.model)
  body.max_tokens, body.stream = nil, nil
  if p.count_fields then
    for k in pairs(body) do if not p.count_fields[k] then body[k] = nil end end
  end
  local obj, err = request(io, self, "POST", p.count_path, body)
  if not obj then return nil, err end
  if type(obj) ~= "table" or type(obj.input_tokens) ~= "number" then
    return base.bad_answer("no input_tokens in the answer", obj)
  end
  return math.floor(obj.input_tokens)
end

--- The input tokens of a chat request (messages, system, tools; the chat
-- template's own tokens included), counted by the server without running
-- it: llama-server's `POST /v1/chat/completions/input_tokens`, Anthropic's
-- `POST /v1/messages/count_tokens`. Other providers have no such endpoint:
-- this raises rather than guess.
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @treturn integer|nil
-- @return[2] nil, Error
function Client:count_tokens(req) return steps.count_tokens(blocking, self, req) end

local CONTEXT_OPTS = { model = "string", refresh = "boolean", autoload = "boolean" }

function steps.context_size(io, self, opts)
  if opts == nil then opts = {} end
  args.check(type(opts) == "table", 1, "context_size", args.expected("table", opts))
  for k, v in pairs(opts) do
    args.check(CONTEXT_OPTS[k] ~= nil, 1, "context_size", "unknown option '" .. tostring(k) .. "'")
    args.check(type(v) == CONTEXT_OPTS[k], 1, "context_size",
               "'" .. k .. "' must be a " .. CONTEXT_OPTS[k] .. " (got " .. type(v) .. ")")
  end
  if self.provider.name ~= "llamacpp" then
    args.check(false, 1, "context_size", self.provider.label .. " does not say its context size" ..
               " (llama-server's /props does)")
  end
  local model = opts.model
  if model == nil then model = self.model end
  local priv = private[self]
  local known = priv.n_ctx
  if not known then
    known = {}
    priv.n_ctx = known
  end
  local key = model or ""
  if known[key] and not opts.refresh then return known[key] end
  local obj, err = get(io, self, "/props", { model = model, autoload = opts.autoload }, "context_size")
  if not obj then return nil, err end
  local dgs = type(obj) == "table" and obj.default_generation_settings
  local n = type(dgs) == "table" and dgs.n_ctx
  if type(obj) == "table" and obj.role == "router" then
    return nil, explain(errors.new("http", "llama-server answered /props as a router, not as a model",
                                   { code = "model_required", retryable = false }), nil, priv.served)
  end
  if type(n) ~= "number" or n <= 0 then
    return base.bad_answer("no default_generation_settings.n_ctx in /props", obj)
  end
  known[key] = math.floor(n)
  return known[key]
end

--- The context window of a slot, in tokens: llama-server's /props
-- `default_generation_settings.n_ctx` (on a router-mode server, that of
-- opts.model, else the client's model). Asked once per client and model,
-- then remembered; `refresh = true` asks again (a server restarted with
-- another `-c`). opts: model, refresh, autoload (as for @{Client:props}).
-- @within Client
-- @tparam[opt] table opts
-- @treturn integer|nil
-- @return[2] nil, Error
function Client:context_size(opts) return steps.context_size(blocking, self, opts) end

local FIT_OPTS = { budget = "number", margin = "number", keep_first = "number", summarize = "function" }

function steps.fit(io, self, req, opts)
  args.check(type(req) == "table", 1, "fit", args.expected("table", req))
  if opts == nil then opts = {} end
  args.check(type(opts) == "table", 2, "fit", args.expected("table", opts))
  for k, v in pairs(opts) do
    args.check(FIT_OPTS[k] ~= nil, 2, "fit", "unknown option '" .. tostring(k) .. "'")
    args.check(type(v) == FIT_OPTS[k], 2, "fit", "'" .. k .. "' must be a " .. FIT_OPTS[k] ..
               " (got " .. type(v) .. ")")
  end
  local kf = opts.keep_first
  args.check(kf == nil or (kf >= 0 and kf == math.floor(kf)), 2, "fit", "'keep_first' must be a whole number >= 0")
  args.check(req.messages == nil or type(req.messages) == "table", 1, "fit", "'messages' must be a table")
  local budget = opts.budget
  if budget == nil then
    local window, err = steps.context_size(io, self, { model = req.model })
    if not window then return nil, err end
    local body = self.provider.chat_body(req, false, self.model)
    budget = window - (body.max_tokens or 0) - (opts.margin or FIT_MARGIN)
  end
  local total, err = steps.count_tokens(io, self, req)
  if not total then return nil, err end
  if total <= budget then return copy(req), { dropped = 0, input_tokens = total, budget = budget } end
  local context = require "llamacpp.context"
  local turns, all = context.turns(req.messages or {})
  local drop = context.droppable(turns, kf)
  local n = context.estimate(total, budget, drop, all)
  while true do
    local r, dropped = context.without(req, drop, n)
    if opts.summarize and n > 0 then
      local summary = opts.summarize(dropped)
      args.check(summary == nil or type(summary) == "string", 2, "fit", "'summarize' must return a string or nil")
      if summary then r = context.without(req, drop, n, summary) end
    end
    local got, e = steps.count_tokens(io, self, r)
    if not got then return nil, e end
    if got <= budget then return r, { dropped = #dropped, input_tokens = got, budget = budget } end
    if n >= #drop then
      return nil, errors.new("context", "the request does not fit: " .. got .. " tokens with every turn" ..
        " that may go dropped (" .. #dropped .. "), for a budget of " .. budget .. " (the system prompt," ..
        " the last turn" .. (kf and kf > 0 and (" and the first " .. kf) or "") .. " are kept)",
        { code = "does_not_fit", input_tokens = got, budget = budget, retryable = false })
    end
    n = n + math.max(1, context.estimate(got, budget, drop, all, n))
  end
end

--- A copy of a chat request whose input fits a token budget: the oldest
-- turns dropped first (a turn: a user message and what follows it up to
-- the next: the answer, tool calls and their results, never split), the
-- system prompt, the first `keep_first` turns and the last turn kept.
-- Counted with the server (@{Client:count_tokens}): once, then once per
-- try after dropping what the turns' sizes say is needed (usually one).
-- opts: `budget` (tokens; default the window of @{Client:context_size}
-- less the request's max_tokens less `margin`, default 16),
-- `keep_first`, `summarize` (a function of the dropped messages
-- returning a string appended to the system prompt, or nil).
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @tparam[opt] table opts
-- @treturn table the request to send (a new table; `req` is untouched)
-- @treturn table `{dropped = messages dropped, input_tokens =, budget =}`
-- @return[2] nil, Error (kind `context`, code `does_not_fit`: what must be
--   kept is over the budget; or the count's error)
function Client:fit(req, opts) return steps.fit(blocking, self, req, opts) end

-- }===

function steps.embeddings(io, self, input, opts)
  args.check(type(input) == "string" or type(input) == "table", 1, "embeddings",
             args.expected("string or table", input))
  local obj, err = request(io, self, "POST", "/v1/embeddings", with_model(self, copy(opts, { input = input })))
  if not obj then return nil, err end
  local out = {}
  for i, d in ipairs(type(obj.data) == "table" and obj.data or {}) do
    out[(tonumber(d.index) or (i - 1)) + 1] = d.embedding
  end
  local u = type(obj.usage) == "table" and obj.usage or {}
  return { embeddings = out, model = obj.model, raw = obj,
           usage = { input_tokens = u.prompt_tokens and math.floor(u.prompt_tokens) } }
end

--- POST /v1/embeddings (needs the server flag embeddings): one input or
-- an array of them. {embeddings = {vector, ...} in input order, usage,
-- model, raw}.
-- @within Client
function Client:embeddings(input, opts) return steps.embeddings(blocking, self, input, opts) end

function steps.rerank(io, self, query, documents, opts)
  args.check(type(query) == "string", 1, "rerank", args.expected("string", query))
  args.check(type(documents) == "table", 2, "rerank", args.expected("table", documents))
  local body = with_model(self, copy(opts, { query = query, documents = json.array(copy(documents)) }))
  local obj, err = request(io, self, "POST", "/v1/rerank", body)
  if not obj then return nil, err end
  local results = type(obj.results) == "table" and obj.results or {}
  for _, r in ipairs(results) do
    if type(r.index) == "number" then r.index = math.floor(r.index) end
  end
  table.sort(results, function(a, b) return (a.relevance_score or 0) > (b.relevance_score or 0) end)
  return results
end

--- POST /v1/rerank (needs the server flag reranking): documents scored
-- against query, best first: {{index =, relevance_score =}, ...}.
-- @within Client
function Client:rerank(query, documents, opts) return steps.rerank(blocking, self, query, documents, opts) end

local NONE = {}

local function native_body(self, fname, req, stream, need)
  args.check(type(req) == "table", 1, fname, args.expected("table", req))
  if need then
    args.check(req[need] ~= nil, 1, fname, "'" .. need .. "' is required")
  end
  check_stream_flag(req, fname, stream)
  base.check_options(req)
  if type(req.thinking) == "boolean" or req.thinking_budget ~= nil then
    args.check(false, 1, fname, "'thinking' and 'thinking_budget' are chat options" ..
               " (the chat template switches reasoning; " .. fname .. " sends the prompt as it is)")
  end
  if not stream and base.resume_of(req) then
    args.check(false, 1, fname, "'resumable' is for streams: use " .. fname .. "_stream")
  end
  local body = with_model(self, base.passed(req, NONE))
  openai.llama_options(body, req, stream)
  body.stream = stream
  return body
end


-- A native answer read whole, with its stats.
local function native_whole(io, self, path, body, req)
  local t0 = core.now()
  local res, err = request(io, self, "POST", path, body, false, native().result)
  if not res then return nil, err end
  if req.think_tags == "split" then base.split_think(res) end
  res.stats = stats_of(base.stats, res, t0)
  return res
end

function steps.completion(io, self, req)
  return native_whole(io, self, "/completion", native_body(self, "completion", req, false, "prompt"), req)
end

--- POST /completion (native): a prompt (string, tokens, or mixed) and
-- llama-server's sampling fields. {content, stop_reason, usage, timings,
-- probs (n_probs), raw}.
-- @within Client
function Client:completion(req) return steps.completion(blocking, self, req) end

--- The same, streamed: the iterator of chat_stream (content events with
-- `probs` when n_probs is set; done; error).
-- @within Client
function Client:completion_stream(req, opts)
  return native_stream(self, "completion_stream", "/completion",
                       native_body(self, "completion_stream", req, true, "prompt"),
                       check_stream_opts(opts, "completion_stream"), req)
end

function steps.infill(io, self, req)
  return native_whole(io, self, "/infill", native_body(self, "infill", req, false, "input_prefix"), req)
end

--- POST /infill: fill-in-the-middle for editors (input_prefix,
-- input_suffix, input_extra = {{filename =, text =}, ...}, prompt).
-- @within Client
function Client:infill(req) return steps.infill(blocking, self, req) end

--- The same, streamed.
-- @within Client
function Client:infill_stream(req, opts)
  return native_stream(self, "infill_stream", "/infill", native_body(self, "infill_stream", req, true, "input_prefix"),
                       check_stream_opts(opts, "infill_stream"), req)
end

end
