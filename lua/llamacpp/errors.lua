--- Errors: one shape for every run-time failure (DESIGN.md section 3).
-- The metatable is created by the C core (`core.Error`, with `__tostring`),
-- so errors made in C and in Lua are the same kind of value.
-- @module llamacpp.errors
local Error = require("llamacpp.core").Error
local json = require "llamacpp.json"

local M = {}
M.Error = Error

local BODY_CAP = 4096

--- Makes an Error of `kind` (see DESIGN.md section 3) with `message`;
-- `fields` (optional) is used as the error table itself.
function M.new(kind, message, fields)
  local e = fields or {}
  e.kind, e.message = kind, message
  if e.retryable == nil then e.retryable = false end
  return setmetatable(e, Error)
end

--- True when `v` is an Error (of `kind`, when given).
function M.is(v, kind)
  return getmetatable(v) == Error and (kind == nil or v.kind == kind)
end

--- Whether an HTTP status is worth another try (DESIGN.md section 3).
-- 501 (not supported: llama-server without --embeddings) and 505 are
-- answers that another try will not change.
function M.retryable_status(status)
  return status == 408 or status == 409 or status == 429 or
         (status ~= nil and status >= 500 and status <= 599 and
          status ~= 501 and status ~= 505)
end

-- Retry-After: delay-seconds, or an HTTP-date (RFC 9110 IMF-fixdate).
local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

function M.parse_retry_after(v, now)
  if type(v) ~= "string" then return nil end
  local secs = tonumber(v:match("^%s*(%d+)%s*$"))
  if secs then return secs end
  local d, mon, y, h, mi, s = v:match("%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT")
  if not d or not MONTHS[mon] then return nil end
  -- os.time takes local time; correct by the zone offset it implies
  local t = { year = tonumber(y), month = MONTHS[mon], day = tonumber(d),
              hour = tonumber(h), min = tonumber(mi), sec = tonumber(s) }
  local at = os.time(t)
  local utc = os.time(os.date("!*t", at))
  at = at + (at - utc)
  local delta = at - (now or os.time())
  return delta > 0 and delta or 0
end

-- llama-server in router mode (several models behind one server,
-- tools/server/server-models.cpp): its refusals about the model, by their
-- wording, each with a code of its own (the server's type stays in
-- e.server.type). The client adds the model and what to do.
local MODEL_REFUSALS = {
  { "^model name is missing from the request$", "model_required" },
  { "^model '.*' not found$", "model_not_found" },
  { "^model is not found$", "model_not_found" },          -- /models/load, /models/unload
  { "^model is not loaded$", "model_not_loaded" },        -- autoload off
  { "^model name=.* failed to load$", "model_failed" },   -- its child process died
}

-- llama-swap's (proxy/proxymanager.go): a 400 with {"error": "..."} or the
-- text alone.
local SWAP_REFUSALS = {
  { "^missing or invalid 'model' key$", "model_required" },
  { "^could not find suitable inference handler for ", "model_not_found" },
  { "^could not find suitable handler for ", "model_not_found" },
  { "^model id required in path$", "model_not_found" },          -- /upstream/NAME/...
}

-- llama-server's refusal of an image or audio part when no projector
-- (--mmproj) is loaded: a 500 that no retry changes (media_*_no_mmproj
-- in ../shared/wire).
local MEDIA_REFUSAL = "^(%a+) input is not supported"

-- What a gateway's status usually means, and what to change.
local GATEWAY_HINTS = {
  [502] = "the gateway could not reach the server behind it (is it running? the gateway's upstream address?)",
  [503] = "the gateway has no server to send it to",
  [504] = "the gateway gave up waiting for the server (a long prompt is still being read?): raise its" ..
          " read timeout (nginx: proxy_read_timeout, Caddy: transport read_timeout)",
  [413] = "the gateway refused the request body as too large (nginx: client_max_body_size)",
  [407] = "the proxy wants credentials (proxy = \"http://user:password@host:port\")",
}

-- What a proxy's refusal of a tunnel (its answer to CONNECT) means.
local UNREACHABLE = "the proxy could not reach the server (is it running? is its address right from the" ..
                    " proxy's side?)"
local PROXY_HINTS = {
  [407] = GATEWAY_HINTS[407],
  [403] = "the proxy's rules refuse this destination (squid: http_access; CONNECT only to SSL_ports," ..
          " 443 by default)",
  [502] = UNREACHABLE,
  [503] = UNREACHABLE,
  [504] = "the proxy gave up reaching the server",
}

--- The error for a tunnel the proxy refused (CONNECT answered `status`):
-- kind `http` with the proxy's status, `code = "proxy_refused"`,
-- `gateway = true`, `proxy` (its URL without credentials); retryable as
-- that status is (407 and 403 are not).
function M.proxy_refused(status, proxy, label, endpoint)
  local hint = PROXY_HINTS[status]
  return M.new("http", "proxy " .. proxy .. " refused the tunnel to " .. label .. " at " .. endpoint ..
               " (" .. status .. ")" .. (hint and (": " .. hint) or ""),
               { status = status, code = "proxy_refused", gateway = true, proxy = proxy,
                 retryable = M.retryable_status(status) })
end

-- A gateway's own answer (nginx, squid, Caddy, a load balancer), not the
-- server's: no error object of the server's in the body, and a Server
-- header that is not llama-server's, or an HTML page. Its name, its page's
-- title (or first heading), one line; nil when it is the server's answer.
local function gateway_of(body, headers, decoded)
  if type(decoded) == "table" then return nil end
  local server = headers and headers.server
  local ctype = headers and headers["content-type"] or ""
  local html = ctype:lower():find("html", 1, true) or body:find("^%s*<")
  if not html and not (server and not server:find("^llama%.cpp")) then return nil end
  local title = body:match("<[Tt][Ii][Tt][Ll][Ee][^>]*>(.-)</[Tt][Ii][Tt][Ll][Ee]>")
                or body:match("<[Hh]1[^>]*>(.-)</[Hh]1>") or body:sub(1, 1000)
  title = title:gsub("<[^>]*>", " "):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #title > 200 then title = title:sub(1, 200) .. "..." end
  if title == "" then title = nil end
  return server or "no Server header", title
end

--- The error for an HTTP answer with status >= 400 (or an error object in
-- a 200 stream). Parses `{"error":{"code","message","type",...}}` and
-- OpenAI/Anthropic-style variants; keeps the body, capped.
function M.http(status, body, headers, label)
  body = body or ""
  status = math.floor(tonumber(status) or 0)
  local e = { status = status, retryable = M.retryable_status(status) }
  local decoded = body ~= "" and json.decode(body)
  local detail
  if type(decoded) == "table" then
    local eo = decoded.error
    if type(eo) == "table" then
      detail = type(eo.message) == "string" and eo.message or nil
      e.code = type(eo.type) == "string" and eo.type or
               (type(eo.code) == "string" and eo.code or nil)
      e.server = eo
      -- llama-server's context error: keep its numbers
      if type(eo.n_prompt_tokens) == "number" then e.n_prompt_tokens = math.floor(eo.n_prompt_tokens) end
      if type(eo.n_ctx) == "number" then e.n_ctx = math.floor(eo.n_ctx) end
    elseif type(eo) == "string" then          -- Ollama: {"error":"..."}
      detail = eo
    elseif type(decoded.message) == "string" then
      detail = decoded.message
    end
  end
  e.body = #body > BODY_CAP and body:sub(1, BODY_CAP) or body
  if headers then
    e.retry_after = M.parse_retry_after(headers["retry-after"])
    e.request_id = headers["x-request-id"] or headers["request-id"]
  end
  local gw, title
  if not detail then gw, title = gateway_of(body, headers, decoded) end
  if gw then
    -- one line: who answered, what its page says, what to do
    e.gateway, e.gateway_server = true, gw
    local hint = GATEWAY_HINTS[status]
    if status == 504 then
      e.retryable = false     -- the server may still be at it: the same one is not asked again
      e.code = "gateway_timeout"
    end
    return M.new("http", "gateway error (" .. status .. ", " .. gw .. ") in front of " .. (label or "the server") ..
                 ": " .. (title or ("HTTP " .. status)) .. (hint and ("; " .. hint) or ""), e)
  end
  if not detail then
    detail = body:gsub("%s+$", "")
    if #detail > 512 then detail = detail:sub(1, 512) .. "..." end
    if detail == "" then detail = "HTTP " .. tostring(status) end
  end
  if e.code == "overloaded_error" then e.retryable = true end
  local refusals = e.server and MODEL_REFUSALS or (status == 400 and SWAP_REFUSALS)
  if refusals then
    for _, r in ipairs(refusals) do
      if detail:find(r[1]) then
        e.code = r[2]
        e.retryable = false       -- the same request gets the same answer
        break
      end
    end
  end
  local input = e.server and detail:match(MEDIA_REFUSAL)
  if input then
    -- a model without a projector: the same request gets the same answer
    -- here, though another server (a vision model) may take it
    e.code, e.retryable, e.input = "unsupported_media", false, input
    detail = detail:gsub(" %- hint: .*$", "") .. " (the model has no " .. input .. " projector: start" ..
             " llama-server with the model's --mmproj FILE, or send it to a model that takes " .. input .. " input)"
  end
  return M.new("http", (label or "server") .. " error (" .. tostring(status) .. "): " .. detail, e)
end

--- One stream event's JSON: the decoded object, or nil and the protocol
-- Error that ends the stream (`what` names the unit: "event", "line").
function M.decode_event(data, what)
  local obj, msg = json.decode(data)
  if type(obj) == "table" then return obj end
  return nil, M.new("protocol", "malformed JSON in stream " .. (what or "event") .. ": " .. tostring(msg),
                    { body = data:sub(1, BODY_CAP), code = "BAD_JSON" })
end

--- The http Error for an error object that arrives inside a 200 stream;
-- the status is the object's numeric `code`, else `status` (default 500).
function M.in_stream(data, eo, label, status)
  local code = type(eo) == "table" and tonumber(eo.code)
  local e = M.http(code and math.floor(code) or status or 500, data, nil, label)
  e.in_stream = true
  return e
end

local function scrub_string(s, secret)
  if type(s) ~= "string" then return s end
  local i, j = s:find(secret, 1, true)
  while i do
    s = s:sub(1, i - 1) .. "<redacted>" .. s:sub(j + 1)
    i, j = s:find(secret, i + 10, true)
  end
  return s
end

local function scrub_table(t, secret, seen)
  if seen[t] then return end
  seen[t] = true
  local renamed
  for k, v in pairs(t) do
    if type(v) == "string" then t[k] = scrub_string(v, secret)
    elseif type(v) == "table" then scrub_table(v, secret, seen) end
    if type(k) == "string" and k:find(secret, 1, true) then   -- a key holding the secret
      renamed = renamed or {}
      renamed[k] = true
    end
  end
  for k in pairs(renamed or {}) do     -- no new keys during the traversal above
    t[scrub_string(k, secret)], t[k] = t[k], nil
  end
end

--- Removes every occurrence of `secret` from the strings of `e`, nested
-- tables too (a server may echo a request header back in its error body,
-- anywhere in its JSON).
function M.scrub(e, secret)
  if type(secret) ~= "string" or #secret < 4 then return e end
  scrub_table(e, secret, {})
  return e
end

return M
