--- Client and Stream: requests to one server over the C core.
-- Created by @{llamacpp.new}.
-- @module llamacpp.client
local core = require "llamacpp.core"
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local base = require "llamacpp.providers.base"
local args = require "llamacpp.args"
-- Loaded on first use (a chat runs neither; start-up compiles less Lua):
-- llamacpp.providers.native here, llamacpp.context in fit.
local function native() return require "llamacpp.providers.native" end

local M = {}

local type, pairs, next, setmetatable, tostring = type, pairs, next, setmetatable, tostring

-- A provider is a module llamacpp.providers.<name>; see
-- providers/llamacpp.lua for the fields and functions it has.
local function load_provider(name)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil end
  local ok, p = pcall(require, "llamacpp.providers." .. name)
  -- a provider has chat_body (providers/base.lua and native.lua are not ones)
  if ok and type(p) == "table" and p.chat_body then return p end
  if not ok and not tostring(p):find("module 'llamacpp.providers." .. name .. "' not found", 1, true) then
    error(p, 0)          -- the provider exists but is broken: say so
  end
  return nil
end
M.load_provider = load_provider

-- API keys live here, not on the client, transfer or stream tables: a
-- client or stream printed with vim.inspect() or serialised by a
-- debugger shows no key. Keyed by client (its api_key option), and by
-- transfer and stream (the key a request used, for scrubbing errors).
local secrets = setmetatable({}, { __mode = "k" })
-- The same for what else may carry credentials: the endpoint as given
-- (user:password@), the caller's header lines (Authorization), the proxy.
local private = setmetatable({}, { __mode = "k" })

local OPTIONS = {
  endpoint = "string", api_key = "key", model = "string", headers = "table",
  connect_timeout = "number", first_byte_timeout = "number",
  idle_timeout = "number", timeout = "number", provider = "string",
  proxy = "string", ca_file = "string", ca_path = "string",
  insecure = "boolean", follow_redirects = "boolean",
  max_event = "number", max_body = "number", session_header = "string",
  warn = "warn",
}

-- Warnings (an API key sent in the clear): a client's `warn` hook (false:
-- none), else this; each hook hears of an endpoint once per process.
local function default_warn(msg) io.stderr:write("llamacpp: warning: ", msg, "\n") end
local warned = setmetatable({}, { __mode = "k" })    -- hook -> {endpoint = true}

local function warn_once(hook, endpoint, msg)
  if hook == false then return end
  hook = hook or default_warn
  local seen = warned[hook] or {}
  warned[hook] = seen
  if seen[endpoint] then return end
  seen[endpoint] = true
  hook(msg)
end

-- The CA bundle and directory of the environment, as curl's own tool
-- reads them (libcurl does not): CURL_CA_BUNDLE or SSL_CERT_FILE, SSL_CERT_DIR.
local function env_path(...)
  for i = 1, select("#", ...) do
    local v = os.getenv((select(i, ...)))
    if v and v ~= "" then return v end
  end
end

local DEFAULTS = { connect_timeout = 10, idle_timeout = 300 }
local GRACE_MS = 1000   -- how long the end of a transfer may lag its terminator
local FIT_MARGIN = 16   -- tokens client:fit keeps free besides max_tokens (templates differ a little)

local callable, raise = args.callable, args.raise

local function checkheader(name, value)
  if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    raise("bad header name " .. tostring(name))
  end
  if type(value) ~= "string" then
    raise("header '" .. name .. "' must be a string (got " .. type(value) .. ")")
  end
  if value:find("[\r\n%z]") then
    raise("header '" .. name .. "' contains CR, LF or NUL")
  end
end

-- "http://user:pw@host:port/prefix/" -> the URL without userinfo and
-- without trailing slashes (used in messages), and the host.
local function parse_url(url)
  local scheme, rest = url:match("^(https?)://(.+)$")
  if not scheme then return nil end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  authority = authority:gsub("^.*@", "")
  if authority == "" or path:find("[?#]") then return nil end
  path = path:gsub("/+$", "")
  local host = authority:match("^%[(.-)%]") or authority:match("^([^:]+)")
  return scheme .. "://" .. authority .. path, host
end

-- An endpoint: a URL, or a unix socket "unix:PATH" (http://localhost
-- over PATH) or "unix:PATH:URL" (that URL's Host and prefix over PATH).
-- Returns the endpoint to print, the host, the URL to request (with its
-- userinfo, without trailing slashes) and the socket's path (or nil).
local function parse_endpoint(raw)
  local sock, url = raw:match("^unix:(.-):(https?://.*)$")
  local given = url ~= nil
  if not sock then
    sock = raw:match("^unix:(.*)$")
    url = sock and "http://localhost"
  end
  if sock and (sock == "" or sock:find("://", 1, true)) then return nil end
  url = url or raw
  local shown, host = parse_url(url)
  if not shown then return nil end
  if sock then shown = "unix:" .. sock .. (given and ":" .. shown or "") end
  return shown, host, (url:gsub("/+$", "")), sock
end

local UNIX_PATH_MAX = 107   -- sockaddr_un.sun_path: 108 bytes with the NUL (Linux; 103 on BSDs)

-- Why a unix socket cannot be reached, from what opening its path says
-- (libcurl only says "Couldn't connect to server" on "port 80").
local function socket_cause(path)
  local f, msg, code = io.open(path, "rb")
  if f then
    f:close()
    return path .. " is not a socket"
  elseif code == 2 then        -- ENOENT
    return "no socket at " .. path .. " (is llama-server started with --host " .. path .. "?)"
  elseif code == 6 then        -- ENXIO: a socket, and nothing accepts on it
    return "nothing listens on " .. path .. " (a socket left behind by a server that stopped?)"
  end
  return msg                   -- EACCES & co., with the path
end

-- This machine, in every spelling a resolver or libc takes: localhost
-- (and "localhost.", *.localhost, ip6-localhost), 127.0.0.0/8 in dotted
-- forms (127.1 included), ::1, IPv4-mapped ::ffff:127.x, and 0.0.0.0
-- (connecting to it reaches this host).
local function is_loopback(host)
  if host == nil then return false end
  host = host:lower():gsub("%.$", "")
  if host == "localhost" or host == "ip6-localhost" or host == "ip6-loopback" or
     host:find("%.localhost$") or host == "::1" or host == "0:0:0:0:0:0:0:1" then
    return true
  end
  local v4 = host:match("^::ffff:(.+)$") or host
  local first = v4:match("^(%d+)%.[%d.]*%d$")
  return tonumber(first) == 127 or v4 == "0.0.0.0"
end


--- A client of one server: `llamacpp.new(opts)`.
-- @type Client
local Client = {}
Client.__index = Client
Client.__name = "llamacpp.Client"
M.Client = Client

-- Creates a client (llamacpp.new). See llamacpp's options table.
function M.new(opts)
  if opts == nil then opts = {} end
  args.check(type(opts) == "table", 1, "new", args.expected("table", opts))
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then raise("unknown option '" .. tostring(k) .. "'") end
    if want == "key" then
      if type(v) ~= "string" and not callable(v) then
        raise("option 'api_key' must be a string or a function")
      end
    elseif want == "warn" then
      if v ~= false and not callable(v) then raise("option 'warn' must be a function or false") end
    elseif type(v) ~= want then
      raise("option '" .. k .. "' must be a " .. want .. " (got " .. type(v) .. ")")
    end
    if want == "number" and (v ~= v or v < 0) then    -- NaN, negative
      raise("option '" .. k .. "' must be a number >= 0 (got " .. tostring(v) .. ")")
    end
  end
  local pname = opts.provider or "llamacpp"
  local provider = load_provider(pname)
  if not provider then raise("unknown provider '" .. tostring(pname) .. "'") end
  local raw = opts.endpoint or provider.default_endpoint
  if raw:find("[%s%c]") then raise("bad endpoint (contains white space or control characters)") end
  if raw:find("^https?://unix:/") then
    raise("bad endpoint '" .. raw .. "': a unix socket is written unix:/path/to.sock[:http://host/prefix]")
  end
  local endpoint, host, url, sock = parse_endpoint(raw)
  if not endpoint then
    raise("bad endpoint '" .. raw:gsub("//[^/]*@", "//") ..
          "' (want http[s]://host[:port][/prefix] or unix:/path/to.sock[:http://host/prefix])")
  end
  if sock and #sock > UNIX_PATH_MAX then
    raise("bad endpoint: the unix socket path is too long (" .. #sock .. " bytes; at most " .. UNIX_PATH_MAX .. ")")
  end
  if sock and opts.proxy ~= nil then raise("option 'proxy' has no effect on a unix socket endpoint") end
  if opts.session_header ~= nil then checkheader(opts.session_header, "") end
  local self = setmetatable({
    provider = provider,
    endpoint = endpoint,               -- without userinfo: safe to print
    model = opts.model,
    session_header = opts.session_header,
    session = core.session(),
    streams = setmetatable({}, { __mode = "k" }),   -- open streams, for poll()
  }, Client)
  local names = {}
  for name, value in pairs(opts.headers or {}) do
    checkheader(name, value)
    names[#names + 1] = name
  end
  table.sort(names)
  local lines = {}
  self.header_names = {}
  local t = {}
  for _, name in ipairs(names) do
    if name:lower() == "accept-encoding" then
      -- asked for compression: libcurl sends it and decodes the answer
      -- (gzip, deflate, br, zstd as built), events and errors see plain text
      t.accept_encoding = opts.headers[name]
    else
      lines[#lines + 1] = name .. ": " .. opts.headers[name]
    end
    self.header_names[name:lower()] = true
  end
  for _, k in ipairs{ "connect_timeout", "first_byte_timeout", "idle_timeout", "timeout" } do
    local v = opts[k]
    if v == nil then v = DEFAULTS[k] end
    if v and v > 0 then t[k] = v * 1000 end
  end
  t.max_event, t.max_body = opts.max_event, opts.max_body
  t.ca_file = opts.ca_file or env_path("CURL_CA_BUNDLE", "SSL_CERT_FILE")
  t.ca_path = opts.ca_path or env_path("SSL_CERT_DIR")
  t.insecure = opts.insecure
  t.follow = opts.follow_redirects
  t.unix_socket = sock
  -- libcurl takes http_proxy & co. from the environment; a loopback server
  -- (or a unix socket) is never reached through them unless a proxy is given explicitly
  private[self] = { url = url, host = host, header_lines = lines, unix_socket = sock,
                    waiting = setmetatable({}, { __mode = "k" }),   -- stream -> when it reattaches
                    proxy = opts.proxy or ((sock or is_loopback(host)) and "" or nil) }
  self.transfer_opts = t
  secrets[self] = opts.api_key
  if opts.api_key ~= nil and not sock and endpoint:find("^http://") and not is_loopback(host) then
    warn_once(opts.warn, endpoint, "the API key is sent to " .. endpoint .. " in the clear (http://, not" ..
              " https://): anyone on the network between can read it (silence: option warn = false)")
  end
  return self
end

function Client:__tostring()
  return "llamacpp.Client (" .. self.provider.name .. " at " .. self.endpoint .. ")"
end

-- The key for this request (a function is called each time: rotation).
function Client:_key()
  local k = secrets[self]
  if callable(k) then k = k() end
  if k == nil or k == "" then return nil end
  if type(k) ~= "string" then raise("api_key function must return a string") end
  if k:find("[\r\n%z]") then raise("api_key contains CR, LF or NUL") end
  return k
end

-- Starts a transfer: method, path, body (string or nil), framing; extra:
-- a header line of ours (X-Conversation-Id) or a list of them, or nil; o:
-- transfer options over the client's (a short timeout), or nil.
function Client:_open(method, path, body, framing, template, extra, o2)
  local key = self:_key()
  local h = { "Accept: " .. (framing == "sse" and "text/event-stream" or "application/json"),
              "Expect:" }
  if body then h[#h + 1] = "Content-Type: application/json" end
  -- the caller's headers win over the provider's of the same name
  local ph = self.provider.headers(key)
  for i = 1, #ph do
    if not self.header_names[ph[i]:match("^([^:]*)"):lower()] then h[#h + 1] = ph[i] end
  end
  local priv = private[self]
  local lines = priv.header_lines
  for i = 1, #lines do h[#h + 1] = lines[i] end
  if type(extra) == "table" then
    for i = 1, #extra do h[#h + 1] = extra[i] end
  elseif extra then
    h[#h + 1] = extra
  end
  local o = { url = priv.url .. path, method = method, body = body, proxy = priv.proxy,
              headers = h, framing = framing, template = template }
  for k, v in pairs(self.transfer_opts) do o[k] = v end
  if o2 then for k, v in pairs(o2) do o[k] = v end end
  local t = self.session:open(o)
  secrets[t] = key
  return t
end

-- Whether no_proxy (or NO_PROXY) exempts host, as libcurl reads it (for
-- the option's proxy too): "*", the host, or a domain it is in; CIDR
-- ranges (libcurl 7.86+) are not read here.
local function no_proxy(host)
  local list = env_path("no_proxy", "NO_PROXY")
  if not (list and host) then return false end
  host = host:lower():gsub("%.$", "")
  for entry in list:gmatch("[^,%s]+") do
    entry = entry:lower():gsub("^%.", ""):gsub("%.$", "")
    if entry == "*" or entry == host or host:sub(-#entry - 1) == "." .. entry then return true end
  end
  return false
end

-- The proxy a request of this client goes through, as libcurl picks it:
-- the option, else http_proxy (for http://; never HTTP_PROXY), https_proxy
-- or HTTPS_PROXY (for https://), all_proxy or ALL_PROXY; none for a host
-- no_proxy names. Returns it without credentials (a scheme added when it
-- has none, as libcurl does), its host and its port; nil when there is none.
function Client:_proxy()
  local priv = private[self]
  local p = priv.proxy
  if p ~= "" and no_proxy(priv.host) then return nil end
  if p == nil then
    p = self.endpoint:find("^https:") and env_path("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
        or env_path("http_proxy", "all_proxy", "ALL_PROXY")
  end
  if p == nil or p == "" then return nil end
  if not p:find("^%a[%w+.-]*://") then p = "http://" .. p end
  local scheme = p:match("^(%a[%w+.-]*)://")
  local shown, host = parse_url("http" .. p:sub(#scheme + 1))     -- socks5:// & co. parse alike
  if not shown then return nil end
  shown = scheme .. shown:sub(5):gsub("^(://[^/]*).*$", "%1")
  local port = tonumber(shown:match(":(%d+)$")) or (scheme == "https" and 443 or 1080)
  return shown, host, port
end

-- A connection failure at the proxy rather than the server (libcurl names
-- the address it could not reach): its message, or nil.
function Client:_proxy_failure(e, connect_us)
  local proxy, host, port = self:_proxy()
  if not proxy then return nil end
  local label, where = self.provider.label, self.endpoint
  local lead = "proxy " .. proxy .. " not reachable (on the way to " .. label .. " at " .. where .. "): "
  if e.code == "COULDNT_RESOLVE_PROXY" then
    return proxy, lead .. "its name does not resolve"
  end
  -- with a proxy, the first TCP connection is to the proxy
  if e.kind == "timeout" then
    if connect_us == 0 then return proxy, lead .. "no answer within the connect timeout" end
    return nil
  end
  local h, p = e.detail:match("^Failed to connect to (%S+) port (%d+)")
  if h and h:gsub("^%[(.*)%]$", "%1") == host and tonumber(p) == port then
    return proxy, lead .. "nothing listens there"
  end
end

-- https:// to a server that speaks plain HTTP (llama-server built without
-- OpenSSL, or started without --ssl-key-file): what OpenSSL says of it.
local PLAIN_HINT = "if the server speaks plain HTTP (llama-server without --ssl-key-file does), use http://"
local function tls_cause(msg)
  if msg:find("wrong version number", 1, true) or msg:find("packet length too long", 1, true) then
    return "the server answered in plain HTTP, not TLS: use http://"
  end
  if msg:find("SSL_ERROR_SYSCALL", 1, true) or msg:find("unexpected eof", 1, true) then
    return "the server closed the connection during the TLS handshake; " .. PLAIN_HINT
  end
end

-- Completes an Error from the core or a provider: who, where, the
-- provider's wording, and never the key.
function Client:_error(e, key, partial, nevents)
  local label, where = self.provider.label, self.endpoint
  if e.proxy_status then          -- the proxy refused the tunnel: its error, not the server's
    local p = errors.proxy_refused(e.proxy_status, self:_proxy() or "(from the environment)", label, where)
    p.detail = e.message
    e = p
  end
  e.provider = e.provider or self.provider.name
  e.endpoint = where
  local k, connect_us = e.kind, e.connect_us
  e.connect_us = nil              -- the core's, for _proxy_failure
  if k == "connection" or k == "network" or k == "timeout" or k == "tls" then e.detail = e.message end
  local proxy, msg
  if k == "connection" or (k == "timeout" and e.phase == "connect") then
    proxy, msg = self:_proxy_failure(e, connect_us)
  end
  if proxy then
    e.proxy, e.message = proxy, msg
  elseif k == "connection" then
    e.message = label .. " not running at " .. where
    local sock = private[self].unix_socket
    if sock then e.message = e.message .. ": " .. socket_cause(sock) end
  elseif k == "network" then
    e.message = "connection to " .. label .. " at " .. where .. " lost: " .. e.message
  elseif k == "timeout" then
    e.message = label .. " at " .. where .. " timed out (" .. tostring(e.phase) .. "): " .. e.message
    if e.phase == "connect" and e.detail:find("SSL", 1, true) then
      e.message = e.message .. "; no TLS answer: " .. PLAIN_HINT
    end
  elseif k == "tls" then
    e.message = "TLS with " .. label .. " at " .. where .. " failed: " .. (tls_cause(e.message) or e.message)
  end
  if partial ~= nil then e.partial = partial end
  -- after the first event a retry would repeat what the caller has seen
  if nevents and nevents > 0 then e.retryable = false end
  return errors.scrub(e, key)
end

-- Starts a request whose answer is read whole: the transfer, for
-- _complete once it has ended.
function Client:_begin(method, path, body_table, extra)
  local body = body_table ~= nil and json.encode(body_table) or nil
  return self:_open(method, path, body, nil, nil, extra)
end

-- The header line that carries req.session, when the client has a
-- session_header (for gateways that route by it), else nil.
local function session_line(self, req)
  local name, v = self.session_header, req.session
  if not (name and v) then return nil end
  if v:find("[\r\n%z]") then raise("bad request: 'session' contains CR, LF or NUL") end
  return name .. ": " .. v
end

-- The end of a _begin transfer: decoded JSON (or the raw body when
-- `raw`; or what parse(obj) makes of the JSON) and the status; or nil,
-- Error. `err` is what the transfer ended with, if anything.
function Client:_complete(t, err, raw, parse)
  local key = secrets[t]
  if err then
    t:close()
    return nil, self:_error(err, key)
  end
  local status, body = t:result()
  if status >= 300 and status < 400 then
    local headers = t:response().headers
    t:close()
    return nil, self:_error(self:_redirect(status, headers), key)
  end
  if status >= 400 then
    local headers = t:response().headers      -- Retry-After, request id
    t:close()
    return nil, self:_error(errors.http(status, body, headers, self.provider.label), key)
  end
  t:close()
  if raw then return body, status end
  local obj, msg = json.decode(body)
  if obj == nil then
    return nil, self:_error(errors.new("protocol", "invalid JSON in the answer: " .. msg,
                                       { status = status, body = body:sub(1, 4096) }), key)
  end
  if parse then
    local res, perr = parse(obj)
    if not res then return nil, self:_error(perr, key) end
    return res, status
  end
  return obj, status
end

-- A 3xx answer: redirects are not followed unless asked for.
function Client:_redirect(status, headers)
  return errors.new("protocol", self.provider.label .. " answered with a redirect (" .. status .. ") to " ..
                    tostring(headers.location) .. "; redirects are not followed (follow_redirects = true)",
                    { status = status, code = "REDIRECT" })
end

-- {====== requests read whole ======
-- A whole-answer method is written once, as steps(io, client, ...) in
-- M.steps: io.request(client, method, path, body, raw, parse, extra) runs one
-- request (begin, wait, complete) and io.sleep(ms) waits. The Client
-- method runs its steps with `blocking`, in which the core waits;
-- llamacpp.uv runs the same steps with an io whose request and sleep are
-- the loop's.

local steps = {}

local blocking = {}

function blocking.request(c, method, path, body_table, raw, parse, extra)
  local t = c:_begin(method, path, body_table, extra)
  local more, err
  repeat more, err = t:next() until more == nil
  return c:_complete(t, err, raw, parse)
end

function blocking.sleep(ms) core.sleep(ms) end

-- For drivers (llamacpp.uv), not applications: a request read whole is
-- begun (the transfer, which the driver waits on) and completed (the
-- transfer ended, with err if it failed: res, or nil and the Error).
M.steps = steps
function M.begin(c, method, path, body_table, extra) return c:_begin(method, path, body_table, extra) end
function M.complete(c, t, err, raw, parse) return c:_complete(t, err, raw, parse) end

-- {=== router mode: one server, many models ===
-- llama-server started with --models-dir (or llama-swap) routes every
-- request by its model: POSTs by the body's `model`, GETs by `?model=`.

-- The router-mode refusals (errors.lua gives them their codes).
local MODEL_CODES = { model_required = true, model_not_found = true, model_not_loaded = true,
                      model_failed = true }

-- The model ids a /v1/models answer lists.
local function served_names(obj)
  local out = {}
  for _, d in ipairs(type(obj) == "table" and type(obj.data) == "table" and obj.data or {}) do
    if type(d) == "table" and type(d.id) == "string" then out[#out + 1] = d.id end
  end
  return out
end

-- Completes a router-mode refusal: the model asked for, what to do, and
-- what the server serves (`served`, the names of its last /v1/models).
local function explain(e, model, served)
  e.model = model
  local list = served and #served > 0 and ("; it serves: " .. table.concat(served, ", ")) or ""
  local q = model and ("'" .. tostring(model) .. "'") or "(none)"
  local code = e.code
  if code == "model_required" then
    e.message = e.message .. ": the server routes by model (router mode): pass model = \"NAME\"" ..
                " to llamacpp.new or to this call" .. list
  elseif code == "model_not_found" then
    e.message = e.message .. (e.message:find("'", 1, true) and "" or (" (" .. q .. ")")) .. list
  elseif code == "model_not_loaded" then
    e.message = e.message .. ": model " .. q .. " is not loaded and the server does not autoload:" ..
                " call client:load_model(" .. q:gsub("'", '"') .. ") or client:wait_ready{model = " ..
                q:gsub("'", '"') .. "}"
  elseif code == "model_failed" then
    e.message = e.message .. ": the server process of model " .. q .. " exited while loading;" ..
                " its log says why (GET /models shows status.exit_code)"
  end
  return e
end

-- One request of a step, through io. A router-mode refusal is explained,
-- with the list of models (one GET /v1/models when none is known yet).
local function request(io, self, method, path, body, raw, parse, model, extra)
  local res, err = io.request(self, method, path, body, raw, parse, extra)
  if res == nil and err and err.code == "exceed_context_size_error" and err.n_ctx then
    -- the window the server has now (restarted with another -c?)
    local known = private[self].n_ctx
    if known then known[type(body) == "table" and body.model or self.model or ""] = err.n_ctx end
  end
  if res == nil and err and MODEL_CODES[err.code] then
    local priv = private[self]
    if not priv.served and (err.code == "model_required" or err.code == "model_not_found") then
      local obj = io.request(self, "GET", "/v1/models")
      if obj then priv.served = served_names(obj) end
    end
    if model == nil and type(body) == "table" then model = body.model end
    explain(err, model, priv.served)
  end
  return res, err
end

-- `stream` in a request is the method's to set: a call that answers
-- whole refuses `stream = true`, a streaming one `stream = false`.
local function check_stream_flag(req, fname, streaming)
  if streaming and req.on_overflow == "trim" then
    args.check(false, 1, fname, "'on_overflow = \"trim\"' is for whole answers (chat): fit a stream's" ..
               " request first (client:fit)")
  end
  local v = req.stream
  if v == nil or v == streaming then return end
  local twin = streaming and fname:gsub("_stream$", ""):gsub("^open$", "chat") or fname .. "_stream"
  args.check(false, 1, fname, "'stream = " .. tostring(v) .. "' contradicts " .. fname ..
             " (" .. (streaming and "it streams" or "it answers whole") .. "): use " .. twin)
end

-- }===

-- The events that end the wait for the first token (first_token_ms).
local FIRST = { content = true, reasoning = true, tool_call = true }

-- stats (a function: providers/base.lua stats) of result or done event r,
-- with the client's clock: t0 the request's start, first the first
-- token's arrival (nil: unknown), now the end.
local function stats_of(stats, r, t0, first)
  local s = stats(r)
  local now = core.now()
  s.total_ms = now - t0
  if first then s.first_token_ms = first - t0 end
  return s
end

function steps.chat(io, self, req)
  args.check(type(req) == "table", 1, "chat", args.expected("table", req))
  check_stream_flag(req, "chat", false)
  local p = self.provider
  local body = p.chat_body(req, false, self.model)
  if base.resume_of(req) then
    args.check(false, 1, "chat", "'resumable' is for streams: use chat_stream")
  end
  local t0 = core.now()
  local res, err = request(io, self, "POST", p.chat_path, body, false, p.parse_chat, nil, session_line(self, req))
  if not res and req.on_overflow == "trim" and err.code == "exceed_context_size_error" and err.n_ctx then
    -- fitted to the window the refusal gives, and sent once more
    local r = {}
    for k, v in pairs(req) do r[k] = v end
    r.on_overflow = nil
    local fitted, info = steps.fit(io, self, r, { budget = err.n_ctx - (body.max_tokens or 0) - FIT_MARGIN })
    if not fitted then return nil, info end
    res, err = steps.chat(io, self, fitted)
    if res then res.trimmed = info end
    return res, err
  end
  if not res then return nil, err end
  res.provider = p.name
  if req.think_tags == "split" then base.split_think(res) end
  res.stats = stats_of(p.stats or base.stats, res, t0)
  return res
end

--- One chat completion.
-- @tparam table req `messages`, optional `system` (sent as the first
--   message), `max_tokens` (default 2048) and any field the server knows
--   (temperature, seed, stop, grammar, json_schema, response_format, tools,
--   tool_choice, logprobs, ...), passed through
-- @treturn table `{content, reasoning, tool_calls, stop_reason, usage =
--   {input_tokens, output_tokens}, timings, stats, logprobs, model, id,
--   provider, raw}` (`stats`: @{llamacpp.stats})
-- @return[2] nil
-- @return[2] @{llamacpp.Error}
-- @within Client
function Client:chat(req) return steps.chat(blocking, self, req) end


--- Options of the streaming methods (`open_stream`, `chat_stream`,
-- `completion_stream`, `infill_stream`).
-- @table stream_options
-- @field assemble `false`: keep no text for `done.content`, `done.reasoning`
--   and `err.partial` (they are nil), so a very long stream costs constant
--   memory; the events carry the text as usual. Default `true`.

local STREAM_OPTIONS = { assemble = "boolean" }

local function check_stream_opts(opts, fname)
  if opts == nil then return nil end
  args.check(type(opts) == "table", 2, fname, args.expected("table", opts))
  for k, v in pairs(opts) do
    if not STREAM_OPTIONS[k] then raise("unknown stream option '" .. tostring(k) .. "'") end
    if type(v) ~= STREAM_OPTIONS[k] then
      raise("stream option '" .. k .. "' must be a " .. STREAM_OPTIONS[k])
    end
  end
  return opts
end

-- A stream class (this one, the router's): closed by Lua 5.4's generic
-- for, printed with its state and what who(s) adds.
function M.stream_class(name, who)
  local class = { __name = name }
  class.__index = class
  function class.__close(s) s:close() end
  function class.__tostring(s)
    return name .. " (" .. (s.closed and "closed" or s.ended and "ended" or "open") ..
           (who and who(s) or "") .. ")"
  end
  return class
end


--- A stream of normalised events over one transfer, from
-- @{Client:open_stream}, @{Client:chat_stream} and the other streaming methods.
-- @type Stream
local Stream = M.stream_class("llamacpp.Stream")
M.Stream = Stream

function Stream:_push(ev)
  local n = self.qt + 1
  self.q[n] = ev
  self.qt = n
end

function Stream:_pop()
  local h = self.qh
  local ev = self.q[h]
  self.q[h] = nil
  local ends = self.ends
  if ends and ends[h] then self.at, ends[h] = ends[h], nil end
  if h == self.qt then self.qh, self.qt = 1, 0 else self.qh = h + 1 end
  local t = ev.type
  -- progress is not text: after it alone a retry repeats nothing seen
  if t ~= "progress" then
    self.nevents = self.nevents + 1
    if not self.first_at and FIRST[t] then self.first_at = core.now() end
  end
  return ev
end

-- The last event: done (with its stats) or error. Releases the transfer.
function Stream:_finish(ev)
  local rs = self.rs
  if ev.type == "done" then
    ev.stats = stats_of(self.stats_of, ev, self.t0, self.first_at)
    if rs then ev.resumed, ev.stats.resumed = rs.n, rs.n end
  end
  if rs then
    rs.over = true
    private[self.client].waiting[self] = nil
  end
  self.ended = true
  if self.t then self.t:close() end
  self.t = nil
  self:_push(ev)
end

function Stream:_fail(e)
  local c = self.client
  e = c:_error(e, secrets[self], self.dec:partial(), self.nevents)
  if MODEL_CODES[e.code] then explain(e, self.model, private[c].served) end
  self:_finish({ type = "error", error = e })
end

-- The transfer ended without a transport error: judge what came.
function Stream:_eof()
  local r = self.t:response()
  local label = self.client.provider.label
  if self.dec.finished then
    return self:_finish(self.dec:done())
  end
  local rs = self.rs
  if not r.framed and rs and rs.again and r.status then   -- GET /v1/stream/ID refused
    local e = errors.http(r.status, r.body, r.headers, label)
    if r.status == 404 then
      return self:_give_up("the server no longer has stream " .. rs.id ..
                           " (it expired, was cancelled, or the server restarted)", e)
    elseif r.status == 400 then
      return self:_give_up("the server no longer holds byte " .. rs.base .. " of stream " ..
                           rs.id .. " (" .. tostring(e.detail or e.message) .. ")", e)
    end
    return self:_broken(e)
  end
  if not r.framed then
    if r.status and r.status >= 300 and r.status < 400 then
      return self:_fail(self.client:_redirect(r.status, r.headers))
    end
    if r.status and r.status >= 400 then
      return self:_fail(errors.http(r.status, r.body, r.headers, label))
    end
    return self:_fail(errors.new("protocol", "expected an event stream, got " ..
      tostring(r.headers["content-type"]) .. " (status " .. tostring(r.status) .. ")",
      { status = r.status, body = r.body:sub(1, 4096), code = "BAD_CONTENT_TYPE" }))
  end
  self:_broken(errors.new("truncated", label .. " stream ended without its terminator",
                          { status = r.status }))
end

-- {=== resumable streams ===
-- A stream sent with X-Conversation-Id: ID is kept by llama-server, which
-- serves its body again from any byte (GET /v1/stream/ID?from=N). When the
-- connection fails mid-stream (network, a body cut short, an idle or
-- connect timeout; never an error event of the server's) the stream
-- reattaches from the end of the last event it parsed (transfer:mark()),
-- so the caller sees one stream: nothing lost, nothing repeated.

-- What may have cut a stream that the server still has.
local function cut(e)
  local k = e.kind
  return k == "network" or k == "connection" or k == "truncated" or k == "http"
         or (k == "timeout" and e.phase ~= "total")
end

-- Waits before reattach number n of one outage (ms): at once, then doubling.
local function backoff(n)
  if n <= 1 then return 0 end
  return math.min(2000, 100 * 2 ^ (n - 2))
end

-- The transfer failed with e (or was cut short: a truncated e).
function Stream:_broken(e)
  local rs = self.rs
  local t = self.t
  -- the server has the stream once it began answering with one
  if not rs or not cut(e) or not (rs.again or t:response().framed) then return self:_fail(e) end
  rs.base = rs.base + t:mark()
  t:close()
  self.t = nil
  local now = core.now()
  rs.since = rs.since or now
  rs.tries = rs.tries + 1
  rs.last = e
  local at = now + backoff(rs.tries)
  if rs.tries > rs.attempts or at > rs.since + rs.within * 1000 then
    return self:_give_up(rs.attempts == 0 and "resuming is off (resume.attempts = 0)" or
                         (rs.tries - 1) .. " attempts in " .. ("%.1f"):format((now - rs.since) / 1000) ..
                         " s failed", e)
  end
  rs.retry_at = at
  private[self.client].waiting[self] = at
end

-- Resuming failed: a truncated error saying why, with what came.
function Stream:_give_up(why, last)
  local rs = self.rs
  if self.t then self.t:close() end
  self.t = nil
  local label = self.client.provider.label
  local e = errors.new("truncated", label .. " stream cut at byte " .. rs.base ..
                       " and not resumed: " .. why, { status = last.status, code = "NOT_RESUMED" })
  local c = self.client
  e.detail = c:_error(last, secrets[self]).message
  e.conversation_id = rs.id
  self:_fail(e)
end

-- The reattach that is due: GET /v1/stream/ID?from=<bytes parsed>.
function Stream:_reattach()
  local rs = self.rs
  rs.retry_at = nil
  private[self.client].waiting[self] = nil
  rs.again, rs.fresh = true, true
  self.t = self.client:_open("GET", "/v1/stream/" .. rs.id .. "?from=" .. rs.base, nil,
                             rs.framing, rs.template)
  secrets[self] = secrets[self.t]
end

-- For drivers (llamacpp.uv): ms until a stream of client c is due to
-- reattach (0: now), nil when none waits.
function M.due(c)
  local soonest
  for _, at in pairs(private[c].waiting) do
    if not soonest or at < soonest then soonest = at end
  end
  if soonest then return math.max(0, soonest - core.now()) end
end

local urandom = "/dev/urandom"

-- An unguessable conversation id (128 bits, hex).
local function new_id()
  local f = io.open(urandom, "rb")
  local b = f and f:read(16)
  if f then f:close() end
  if not b or #b ~= 16 then
    raise("bad request: no " .. urandom .. " to make an unguessable id: give 'conversation_id'")
  end
  return (b:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
end

-- The resume state of a new stream for req (nil: not resumable), and its
-- header line. Raises when the provider cannot resume.
local function resume_plan(self, req, fname)
  local r = base.resume_of(req)
  if not r then return nil end
  if not self.provider.resumable then
    args.check(false, 1, fname, "'resumable': " .. self.provider.label ..
               " cannot resume a stream (only llama-server can)")
  end
  r.id = r.id or new_id()
  r.base, r.n, r.tries = 0, 0, 0
  return r, "X-Conversation-Id: " .. r.id
end

-- }===

--- The next event; nil after the last one (done or error); false when
-- timeout_ms (0: do not block) passed with nothing ready.
-- @tparam[opt] number timeout_ms wait at most this long; none: until an event
-- @treturn table|nil|false an @{llamacpp.event}, `nil` at the end, `false` on timeout
function Stream:next(timeout_ms)
  return self:_next(timeout_ms, false)
end

--- A resumable stream's offset: the body bytes of the events taken so
-- far, so that `client:resume_stream(s.conversation_id, {from = s:offset()})`
-- (in this process or another) goes on with the next one; nil when the
-- stream is not resumable.
-- @treturn integer|nil
function Stream:offset()
  return self.at
end

--- True when next(0) would return an event (or the end) at once.
-- @treturn boolean
function Stream:ready()
  if self.qh <= self.qt then return true end
  if self.ended then return false end
  if not self.t then return core.now() >= self.rs.retry_at end
  return self.t:ready()
end

-- take: only what the C queue holds; never drive the session (an event
-- loop drives it: llamacpp.uv, through M.take).
function Stream:_next(timeout_ms, take)
  if self.qh <= self.qt then return self:_pop() end
  if self.closed then raise("stream is closed") end
  if self.ended then return nil end
  local deadline = timeout_ms and timeout_ms > 0 and core.now() + timeout_ms
  local t, dec, push = self.t, self.dec, self.push
  while true do
    if not t then                        -- cut: reattach when due
      local wait = self.rs.retry_at - core.now()
      if wait > 0 then
        local left = deadline and deadline - core.now() or timeout_ms
        if take or left == 0 then return false end
        if left and left < wait then
          if left > 0 then core.sleep(left) end
          return false
        end
        core.sleep(wait)
      end
      self:_reattach()
      t = self.t
    end
    local data, name, ends
    if take then
      data, name, ends = t:take()
    else
      local wait = timeout_ms
      if deadline then
        wait = deadline - core.now()
        if wait < 0 then wait = 0 end
      end
      -- after the terminator only the transfer's end is due: a server
      -- that sends neither it nor more gets a second, not the idle timeout
      if dec.finished and (wait == nil or wait > GRACE_MS) then wait = GRACE_MS end
      data, name, ends = t:next(wait)
    end
    if data then
      local rs = self.rs
      if rs then
        if rs.fresh then                 -- a reattach that works
          rs.fresh, rs.tries, rs.since = false, 0, nil
          rs.n = rs.n + 1
        end
        ends = rs.base + ends
      end
      if not dec.finished then           -- nothing counts after [DONE]
        local e, ev = dec:feed(data, name, push)
        if ev then                       -- one event (content): no queueing
          self.nevents = self.nevents + 1
          if not self.first_at then self.first_at = core.now() end
          if rs then self.at = ends end
          return ev
        end
        if e then self:_fail(e)
        elseif dec.finished then self.finished_at = core.now() end
      end
      if self.qh <= self.qt then
        if rs then self.ends[self.qt] = ends end   -- taken with the last event it gave
        return self:_pop()
      end
      if rs then self.at = ends end
    elseif data == false then
      if dec.finished and core.now() - self.finished_at >= GRACE_MS then
        self:_finish(dec:done())
        return self:_pop()
      end
      if take or (timeout_ms ~= nil and (not deadline or core.now() >= deadline)) then
        return false
      end
    elseif name then                     -- transport error or timeout
      if dec.finished then self:_finish(dec:done()) else self:_broken(name) end
      if self.ended then return self:_pop() end
      t = nil
    else
      self:_eof()
      if self.ended then return self:_pop() end
      t = nil
    end
  end
end

-- For drivers (llamacpp.uv): the next event of stream s among the bytes
-- already received, never driving the transfer (the driver's loop does);
-- false when none is ready, nil after the last.
function M.take(s) return s:_next(0, true) end

-- For drivers (llamacpp.uv): closes stream s as :close() does, but leaves
-- the cancel of a resumable generation to the caller: the path to DELETE,
-- or nil when there is nothing to cancel.
function M.leave(s)
  if s.t then s.t:close() end
  s.t = nil
  s.ended = true
  s.closed = true
  s.qh, s.qt, s.q = 1, 0, {}
  local rs = s.rs
  if not rs or rs.over then return nil end
  rs.over = true
  private[s.client].waiting[s] = nil
  return "/v1/stream/" .. rs.id
end

-- A cancel waits this long at most (ms): the caller is leaving.
local CANCEL_OPTS = { connect_timeout = 2000, timeout = 3000 }

--- Aborts the transfer (the server sees the disconnect); a resumable
-- stream still generating is cancelled (DELETE /v1/stream/ID, a few
-- seconds at most), as the server does not stop when its reader leaves.
-- Idempotent.
function Stream:close()
  local path = M.leave(self)
  if not path then return end
  local t = self.client:_open("DELETE", path, nil, nil, nil, nil, CANCEL_OPTS)
  repeat local more = t:next() until more == nil
  t:close()
end

--- Leaves a resumable stream without cancelling it: the connection is
-- closed, no event comes any more, and the generation goes on on the
-- server, to be read later (here or in another process) with
-- `client:resume_stream(id, {from = offset})`. A stream that is not
-- resumable, or already over, is closed as by :close().
-- @treturn string|nil the conversation_id (nil: nothing to resume)
-- @treturn integer|nil the offset to resume from (@{Stream:offset})
function Stream:detach()
  local id, at = self.conversation_id, self.at
  if not M.leave(self) then return nil end
  return id, at
end

--- A stream for a chat request, to be read with :next() and :close().
-- On Lua 5.1 and LuaJIT use this rather than @{chat_stream} when a loop may
-- end early, and close the stream.
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @tparam[opt] table opts @{stream_options}
-- @treturn Stream
function Client:open_stream(req, opts)
  args.check(type(req) == "table", 1, "open_stream", args.expected("table", req))
  check_stream_flag(req, "open_stream", true)
  opts = check_stream_opts(opts, "open_stream")
  local p = self.provider
  local body = p.chat_body(req, true, self.model)
  local rs, header = resume_plan(self, req, "open_stream")
  local sl = session_line(self, req)
  if sl then header = header and { header, sl } or sl end
  local t = self:_open("POST", p.chat_path, json.encode(body), p.framing, p.template, header)
  return self:_stream(t, p.decoder(opts), body.model, p.stats, req.think_tags, rs, p.framing, p.template)
end

-- A Stream over transfer t, read with decoder dec, for `model`; its done
-- event's server figures from `stats` (a provider's, else base.stats);
-- think_tags: the request's option; rs: its resume state (resume_plan),
-- with the framing and template to read the stream again with.
function Client:_stream(t, dec, model, stats, think_tags, rs, framing, template)
  local s = setmetatable({ client = self, t = t, dec = dec, model = model,
                           q = {}, qh = 1, qt = 0, nevents = 0, t0 = core.now(),
                           stats_of = stats or base.stats, rs = rs,
                           conversation_id = rs and rs.id, ends = rs and {}, at = rs and rs.base,
                           ended = false, closed = false }, Stream)
  if rs then rs.framing, rs.template = framing, template end
  s.push = function(ev) s:_push(ev) end
  if think_tags == "split" then dec:split_think(s.push) end
  secrets[s] = secrets[t]
  self.streams[s] = true
  return s
end

--- A stream that is still on the server (a generation started with
-- `resumable`, by this process or another), read from byte `opts.from`
-- (default 0: the whole stream again) on: `for ev in c:resume_stream(id) do`.
-- It resumes after a cut as the original would; an id the server does not
-- have ends in a `truncated` error (code `NOT_RESUMED`).
-- @within Client
-- @tparam string id the stream's conversation_id
-- @tparam[opt] table opts `from` (bytes), `native = true` for a
--   completion or infill stream, `resume` ({attempts =, within =}), and the
--   @{stream_options}
-- @return step, stream, nil, stream as @{Client:chat_stream}
function Client:resume_stream(id, opts)
  args.check(type(id) == "string", 1, "resume_stream", args.expected("string", id))
  args.check(opts == nil or type(opts) == "table", 2, "resume_stream", args.expected("table", opts))
  opts = opts or {}
  local from, so = opts.from or 0, {}
  args.check(type(from) == "number" and from >= 0 and from == math.floor(from), 2, "resume_stream",
             "'from' must be an integer >= 0")
  for k, v in pairs(opts) do
    if k ~= "from" and k ~= "native" and k ~= "resume" then so[k] = v end
  end
  so = check_stream_opts(so, "resume_stream")
  local p = self.provider
  local rs = resume_plan(self, { conversation_id = id, resume = opts.resume }, "resume_stream")
  rs.base, rs.again, rs.fresh = from, true, false
  local framing, template, dec = p.framing, p.template, p.decoder(so)
  if opts.native then framing, template, dec = "sse", nil, native().decoder(so) end
  rs.framing, rs.template = framing, template
  local s = self:_stream(nil, dec, self.model, opts.native and base.stats or p.stats, nil, rs,
                         framing, template)
  s:_reattach()
  s.rs.fresh = false
  return function() return s:next() end, s, nil, s
end

--- True when this client's provider can resume a stream after a cut
-- (llama-server): streaming requests then take `resumable = true`.
-- @within Client
-- @treturn boolean
function Client:can_resume() return self.provider.resumable == true end

function steps.live_streams(io, self, ids)
  args.check(type(ids) == "table", 1, "live_streams", args.expected("table", ids))
  local list = json.array()
  for i, id in ipairs(ids) do
    args.check(type(id) == "string", 1, "live_streams", "ids must be strings (item " .. i .. ")")
    list[i] = id
  end
  local res, err = request(io, self, "POST", "/v1/streams/lookup", { conversation_ids = list })
  if not res then return nil, err end
  local out = {}
  for _, r in ipairs(type(res) == "table" and res or {}) do
    if type(r) == "table" and type(r.conversation_id) == "string" then
      out[r.conversation_id] = { done = r.is_done == true, bytes = tonumber(r.total_bytes),
                                 started_at = tonumber(r.started_at),
                                 completed_at = tonumber(r.completed_at) }
    end
  end
  return out
end

--- Which of these resumable streams the server still has (POST
-- /v1/streams/lookup; it names only ids it is asked about).
-- @within Client
-- @tparam {string,...} ids conversation ids
-- @treturn table `{[id] = {done =, bytes =, started_at =, completed_at =}}`
--   for the ids it has (`bytes`: the body so far, for `resume_stream`'s `from`)
-- @return[2] nil
-- @return[2] @{llamacpp.Error}
function Client:live_streams(ids) return steps.live_streams(blocking, self, ids) end

--- Drives every transfer of this client, waiting at most timeout_ms
-- (default 0; negative: no limit) until some stream has an event ready.
-- @within Client
-- @tparam[opt=0] number timeout_ms
-- @treturn {Stream,...} the streams with an event (possibly none)
function Client:poll(timeout_ms)
  timeout_ms = timeout_ms or 0
  local deadline = timeout_ms >= 0 and core.now() + timeout_ms
  local ready = {}
  while true do
    for s in pairs(self.streams) do
      if s:ready() then ready[#ready + 1] = s
      elseif s.ended then self.streams[s] = nil end
    end
    if #ready > 0 then return ready end
    local wait = deadline and deadline - core.now() or -1
    if deadline and wait <= 0 then return ready end
    local due = M.due(self)                  -- a cut stream waiting to reattach
    if due and (wait < 0 or due < wait) then wait = due end
    if self.session:step(wait) == 0 then
      if due then core.sleep(wait)
      elseif next(self.streams) == nil then return ready end
    end
  end
end

-- {= llama-server's other endpoints ==================================
-- Models, health, props, slots, metrics, tokenize, the context window,
-- embeddings, rerank, native completion: a first chat runs none of them,
-- so they live in llamacpp.endpoints, compiled when a program first
-- looks one up (in Client or in steps). Only these names load it: any
-- other missing field stays a plain nil.

-- A native stream (completion_stream, infill_stream): the transfer and
-- the Stream are this module's.
local function native_stream(self, fname, path, body, opts, req)
  local rs, header = resume_plan(self, req, fname)
  local t = self:_open("POST", path, json.encode(body), "sse", nil, header)
  local s = self:_stream(t, native().decoder(opts), body.model, nil, req.think_tags, rs, "sse")
  return function() return s:next() end, s, nil, s
end

local LATER = {}
for name in ("models load_model unload_model health wait_ready props slots metrics tokenize detokenize " ..
             "apply_template count_tokens context_size fit embeddings rerank completion infill"):gmatch("%S+") do
  LATER[name] = "step"
end
LATER.completion_stream, LATER.infill_stream = "method", "method"

local function later(t, k)
  if not LATER[k] then return nil end
  require("llamacpp.endpoints"){
    Client = Client, steps = steps, blocking = blocking, private = private, request = request,
    explain = explain, served_names = served_names, check_stream_flag = check_stream_flag,
    check_stream_opts = check_stream_opts, stats_of = stats_of, native = native,
    native_stream = native_stream, FIT_MARGIN = FIT_MARGIN }
  for name, kind in pairs(LATER) do
    assert(rawget(Client, name) and (kind == "method" or rawget(steps, name)), "llamacpp.endpoints: no " .. name)
  end
  setmetatable(Client, nil)          -- (a failed load leaves them: the next look-up tries again)
  setmetatable(steps, nil)
  return rawget(t, k)
end
setmetatable(Client, { __index = later })
setmetatable(steps, { __index = later })

-- }=====================================================================

--- Streams a chat: `for ev in client:chat_stream(req) do ... end`.
-- @within Client
-- @tparam table req as for @{Client:chat}
-- @return step, stream, nil, stream: a generic-for iterator whose 4th value
--   Lua 5.4 closes however the loop ends
-- Returns step, stream, nil, stream: Lua 5.4 closes the stream however
-- the loop ends; elsewhere use open_stream and :close() on early exit.
function Client:chat_stream(req, opts)
  args.check(type(req) == "table", 1, "chat_stream", args.expected("table", req))
  check_stream_flag(req, "chat_stream", true)
  local s = self:open_stream(req, check_stream_opts(opts, "chat_stream"))
  return function() return s:next() end, s, nil, s
end

return M
