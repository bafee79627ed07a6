-- TLS and proxies (issue 8): verification is on by default; ca_file /
-- ca_path trust a certificate; insecure = true is the explicit way out.
-- Against a local HTTPS server (openssl s_server) with a self-signed
-- certificate made now. Proxies from the environment work as libcurl's do,
-- the proxy option overrides them, and loopback endpoints ignore them.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local socket = require "socket"

local errors = llamacpp.errors
local MSGS = { { role = "user", content = "Say hello." } }

local HEALTH = fixture.http_response(200, { { "Content-Type", "application/json" },
                                            { "Connection", "close" } }, '{"status":"ok"}')

describe("TLS", function()
  local h, other, why
  setup(function()
    h, why = fixture.https()
    if h then
      h:write("health", HEALTH)
      h:write("v1/models", fixture.http_response(200, { { "Content-Type", "application/json" },
        { "Connection", "close" } }, '{"object":"list","data":[{"id":"tiny","object":"model"}]}'))
      other = fixture.https{ san = "DNS:other.invalid" }
      if other then other:write("health", HEALTH) end
    end
  end)
  teardown(function()
    if h then h:stop() end
    if other then other:stop() end
  end)

  local function needs_https()
    if not h then pending("no HTTPS fixture: " .. tostring(why)) end
  end

  local function client(extra, server)
    local o = { endpoint = (server or h).url }
    for k, v in pairs(extra or {}) do o[k] = v end
    return llamacpp.new(o)
  end

  local function tls_error(res, err, code)
    assert.is_nil(res)
    assert.truthy(errors.is(err, "tls"), "want a tls error, got " .. tostring(err))
    assert.is_false(err.retryable)
    if code then assert.equal(code, err.code, tostring(err)) end
    return err
  end

  it("verifies the certificate by default: a self-signed one is a tls error", function()
    needs_https()
    tls_error(client():health())
    tls_error(client():models())
    tls_error(client():chat{ messages = MSGS })
    -- a stream ends with the same error as its one event
    local evs = {}
    for ev in client():chat_stream{ messages = MSGS } do evs[#evs + 1] = ev end
    assert.equal(1, #evs)
    assert.equal("error", evs[1].type)
    tls_error(nil, evs[1].error)
  end)

  it("trusts the certificate given with ca_file", function()
    needs_https()
    local c = client{ ca_file = h.ca_file }
    local res, status = c:health()
    assert.equal(200, status, tostring(status))
    assert.equal("ok", res.status)
    res = assert(c:models())
    assert.equal("tiny", res.data[1].id)
  end)

  it("trusts the certificates of a hashed ca_path directory", function()
    needs_https()
    local res, status = client{ ca_path = h.ca_path }:health()
    assert.equal(200, status, tostring(status))
    assert.equal("ok", res.status)
  end)

  it("checks the host name: a trusted certificate for another name is a tls error", function()
    needs_https()
    if not other then pending("no second HTTPS fixture") end
    tls_error(client({ ca_file = other.ca_file }, other):health())
    -- and a certificate nobody vouches for is refused even with a CA file given
    tls_error(client({ ca_file = h.ca_file }, other):health())
  end)

  it("a CA file that does not exist is a tls error, not a silent fallback", function()
    needs_https()
    local res, err = client{ ca_file = "/nonexistent/ca.pem" }:health()
    tls_error(res, err, "SSL_CACERT_BADFILE")
  end)

  it("insecure = true is an explicit opt-in that skips verification", function()
    needs_https()
    local res, status = client{ insecure = true }:health()
    assert.equal(200, status, tostring(status))
    assert.equal("ok", res.status)
    if other then
      res, status = client({ insecure = true }, other):health()
      assert.equal(200, status, tostring(status))
      assert.equal("ok", res.status)
    end
    -- only the boolean true opts in
    assert.has_error(function() client{ insecure = "yes" } end)
    assert.has_error(function() client{ insecure = 1 } end)
    tls_error(client{ insecure = false }:health())
  end)

  it("https to a plain HTTP server, and http to a TLS server, fail cleanly", function()
    needs_https()
    -- the fixture server closes on a TLS hello, as llama-server's HTTP
    -- library does (after its read timeout): a tls error at once, saying why
    local srv = fixture.start()
    local res, err = llamacpp.new{ endpoint = srv:replay("health_ok"):gsub("^http:", "https:"),
                                   connect_timeout = 30 }:health()
    srv:stop()
    assert.is_nil(res)
    tls_error(res, err)
    assert.matches("^TLS with llama%-server at https://127%.0%.0%.1:%d+/replay/health_ok/%- failed: the server" ..
                   " closed the connection during the TLS handshake; if the server speaks plain HTTP", err.message)
    assert.matches("use http://", err.message, 1, true)
    assert.matches("SSL_ERROR_SYSCALL", err.detail, 1, true)
    -- a server that never answers the hello: the connect timeout, with the same hint
    local mute = assert(socket.bind("127.0.0.1", 0))
    local _, mport = mute:getsockname()
    res, err = llamacpp.new{ endpoint = "https://127.0.0.1:" .. mport, connect_timeout = 0.5 }:health()
    mute:close()
    assert.is_nil(res)
    assert.truthy(errors.is(err, "timeout"), tostring(err))
    assert.equal("connect", err.phase)
    assert.matches("no TLS answer: if the server speaks plain HTTP", err.message, 1, true)
    res, err = llamacpp.new{ endpoint = h.url:gsub("^https:", "http:"), idle_timeout = 5,
                             first_byte_timeout = 5 }:health()
    assert.is_nil(res)
    assert.truthy(errors.is(err), tostring(err))
    -- the server is still serving
    assert(client{ ca_file = h.ca_file }:health())
  end)
end)


-- A Lua child process with extra environment variables, running `code` with
-- this tree's llamacpp; returns what it wrote.
local function child(env, code)
  local lua = util.lua()
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(("package.path = %q .. package.path\npackage.cpath = %q .. package.cpath\n"):format(
    "./lua/?.lua;./lua/?/init.lua;", package.cpath:match("^[^;]*") .. ";"), code)
  f:close()
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "='" .. v .. "'" end
  table.sort(vars)
  -- every proxy variable libcurl reads is cleared first, then set as asked
  local p = io.popen("env -u http_proxy -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY" ..
                     " -u no_proxy -u NO_PROXY " .. table.concat(vars, " ") .. " " .. lua .. " " ..
                     script .. " 2>&1")
  local out = p:read("*a")
  p:close()
  os.remove(script)
  return out
end

-- chat with `opts` in a child: "OK <content>" or the error's kind and line.
local CHAT = [[
local o = %s
local c = require("llamacpp").new(o)
local res, err = c:chat{ messages = { { role = "user", content = "x" } } }
io.write(res and ("OK " .. res.content) or (err.kind .. " " .. tostring(err)))
]]

local function opts_lua(t)
  local out = {}
  for k, v in pairs(t) do out[#out + 1] = ("%s = %q"):format(k, v) end
  return "{ " .. table.concat(out, ", ") .. " }"
end

describe("proxies", function()
  local srv, dead
  setup(function()
    srv = fixture.start()
    dead = util.down()
  end)
  teardown(function() srv:stop() end)

  -- a host that does not resolve: only a proxy can reach it
  local function remote(name)
    return srv:replay(name):gsub("^http://127%.0%.0%.1:%d+", "http://llama.invalid:8080")
  end

  local function through_proxy_count(since)
    local n = 0
    for _, r in ipairs(srv:requests(since)) do
      if r.path:find("^http://llama%.invalid:8080/") then n = n + 1 end
    end
    return n
  end

  it("http_proxy from the environment is used, as libcurl does", function()
    local log = srv:log()
    local since = #log > 0 and log[#log].seq or 0
    local out = child({ http_proxy = srv.url },
                      CHAT:format(opts_lua{ endpoint = remote("chat_nonstream") }))
    assert.matches("^OK ", out)
    assert.equal(1, through_proxy_count(since))
    -- ALL_PROXY too
    out = child({ ALL_PROXY = srv.url }, CHAT:format(opts_lua{ endpoint = remote("chat_nonstream") }))
    assert.matches("^OK ", out)
  end)

  it("no_proxy in the environment is honoured", function()
    local out = child({ http_proxy = srv.url, no_proxy = "llama.invalid" },
                      CHAT:format(opts_lua{ endpoint = remote("chat_nonstream") }))
    assert.matches("^connection ", out)
  end)

  it("the proxy option overrides the environment", function()
    local out = child({ http_proxy = dead, ALL_PROXY = dead },
                      CHAT:format(opts_lua{ endpoint = remote("chat_nonstream"), proxy = srv.url }))
    assert.matches("^OK ", out)
    -- proxy = "" means no proxy at all, whatever the environment says
    out = child({ http_proxy = srv.url },
                CHAT:format(opts_lua{ endpoint = remote("chat_nonstream"), proxy = "" }))
    assert.matches("^connection ", out)
  end)

  it("a proxy that is down is a connection error", function()
    local out = child({}, CHAT:format(opts_lua{ endpoint = remote("chat_nonstream"), proxy = dead }))
    assert.matches("^connection ", out)
  end)

  it("loopback endpoints are reached directly whatever the environment names", function()
    for _, var in ipairs{ "http_proxy", "ALL_PROXY", "all_proxy" } do
      local out = child({ [var] = dead }, CHAT:format(opts_lua{ endpoint = srv:replay("chat_nonstream") }))
      assert.matches("^OK ", out, var)
      local localhost = srv:replay("chat_nonstream"):gsub("127%.0%.0%.1", "localhost")
      out = child({ [var] = dead }, CHAT:format(opts_lua{ endpoint = localhost }))
      assert.matches("^OK ", out, var .. " (localhost)")
    end
  end)
end)
