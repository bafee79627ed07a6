-- The proxy's own failures are the proxy's (issue 21, point 3): a proxy
-- that is down is not "llama-server not running"; a CONNECT it refuses
-- (407 credentials, 403 its rules, 502 the destination) is an `http` error
-- with the proxy's status, naming the proxy without its credentials, not a
-- retryable `network` one. Every server here is on 127.0.0.1: a request
-- for 192.0.2.7 (TEST-NET) only ever reaches the proxy.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"

local MSGS = { { role = "user", content = "Say hello." } }
local SECRET = "pw-proxy-secret-9"

local function no_secret(err) assert.is_nil(util.secret_in(err, SECRET)) end

describe("a proxy that is down", function()
  it("is named, without its credentials, and not blamed on llama-server", function()
    local port = util.closed_port()
    for _, ep in ipairs{ "http://192.0.2.7:8080", "https://192.0.2.7:8443" } do
      local c = llamacpp.new{ endpoint = ep, proxy = "http://user:" .. SECRET .. "@127.0.0.1:" .. port }
      local res, err = c:chat{ messages = MSGS }
      assert.is_nil(res)
      assert.equal("connection", err.kind)
      assert.is_true(err.retryable)
      assert.equal("http://127.0.0.1:" .. port, err.proxy)
      assert.equal("proxy http://127.0.0.1:" .. port .. " not reachable (on the way to llama-server at " ..
                   ep .. "): nothing listens there", err.message)
      assert.is_nil(err.message:find("not running", 1, true))
      no_secret(err)
    end
    local c = llamacpp.new{ endpoint = "http://192.0.2.7:8080",
                            proxy = "socks5h://u:" .. SECRET .. "@127.0.0.1:" .. port }
    local _, err = c:health()
    assert.equal("socks5h://127.0.0.1:" .. port, err.proxy)
    assert.matches("^proxy socks5h://127%.0%.0%.1:%d+ not reachable", err.message)
    no_secret(err)
  end)

  it("is named when it comes from the environment (http_proxy, https_proxy)", function()
    local port = util.closed_port()
    local out = util.spawn([[
      local llamacpp = require "llamacpp"
      for _, ep in ipairs{ "http://192.0.2.7:8080", "https://192.0.2.7:8443" } do
        local _, err = llamacpp.new{ endpoint = ep }:health()
        io.write(err.kind, " | ", tostring(err.proxy), " | ", err.message, "\n")
      end
      io.write("END\n")
    ]], 30, { http_proxy = "http://u:" .. SECRET .. "@127.0.0.1:" .. port,
              https_proxy = "127.0.0.1:" .. port })     -- no scheme: libcurl takes http://
    local text = out()
    assert.matches("END", text, 1, true)
    assert.is_nil(text:find(SECRET, 1, true), text)
    local p = "http://127.0.0.1:" .. port
    assert.matches("connection | " .. p .. " | proxy " .. p .. " not reachable (on the way to llama-server at " ..
                   "http://192.0.2.7:8080)", text, 1, true)
    assert.matches("connection | " .. p .. " | proxy " .. p .. " not reachable (on the way to llama-server at " ..
                   "https://192.0.2.7:8443)", text, 1, true)
  end)

  it("that never answers is named in the connect timeout", function()
    local hole = fixture.blackhole()
    local c = llamacpp.new{ endpoint = "http://192.0.2.7:8080", proxy = "http://127.0.0.1:" .. hole.port,
                            connect_timeout = 0.3 }
    local _, err = c:health()
    hole.close()
    assert.equal("timeout", err.kind)
    assert.equal("connect", err.phase)
    assert.equal("http://127.0.0.1:" .. hole.port, err.proxy, err.detail)
    assert.matches("^proxy http://127%.0%.0%.1:%d+ not reachable %(on the way to llama%-server at " ..
                   "http://192%.0%.2%.7:8080%): no answer within the connect timeout", err.message)
  end)

  it("is not blamed for a server that no_proxy sends to directly", function()
    local hole = fixture.blackhole()
    local closed, proxy_port = util.closed_port(), util.closed_port()
    local out = util.spawn(([[
      local llamacpp = require "llamacpp"
      for _, ep in ipairs{ "http://127.0.0.1:%d", "http://127.0.0.1:%d" } do
        local _, err = llamacpp.new{ endpoint = ep, proxy = "http://127.0.0.1:%d", connect_timeout = 0.3 }:health()
        io.write(err.kind, " | ", tostring(err.proxy), " | ", err.message, "\n")
      end
      io.write("END\n")
    ]]):format(closed, hole.port, proxy_port), 30, { no_proxy = "localhost,127.0.0.1" })
    local text = out()
    hole.close()
    assert.matches("END", text, 1, true)
    assert.matches("connection | nil | llama-server not running at http://127.0.0.1:" .. closed, text, 1, true)
    assert.matches("timeout | nil | llama-server at http://127.0.0.1:" .. hole.port .. " timed out (connect)",
                   text, 1, true)
  end)

  it("leaves llama-server's own refusal as it was when no proxy is in the way", function()
    local ep = util.down()
    local _, err = llamacpp.new{ endpoint = ep }:health()
    assert.equal("llama-server not running at " .. ep, err.message)
    assert.is_nil(err.proxy)
  end)
end)

describe("a proxy that refuses the tunnel (CONNECT)", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("asking for credentials (407) is an http error that another try cannot fix", function()
    local c = llamacpp.new{ endpoint = "https://192.0.2.7:8443", proxy = srv.url }
    local res, err = c:chat{ messages = MSGS }
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(407, err.status)
    assert.is_false(err.retryable)
    assert.is_true(err.gateway)
    assert.equal("proxy_refused", err.code)
    assert.equal(srv.url, err.proxy)
    assert.equal("proxy " .. srv.url .. " refused the tunnel to llama-server at https://192.0.2.7:8443 (407): " ..
                 "the proxy wants credentials (proxy = \"http://user:password@host:port\")", err.message)
    local reqs = srv:requests(util.last_seq(srv) - 10)
    assert.equal("CONNECT", reqs[#reqs].method)
    assert.equal("192.0.2.7:8443", reqs[#reqs].path)
  end)

  it("that cannot reach the server (502) is retryable, and the credentials stay out", function()
    local c = llamacpp.new{ endpoint = "https://192.0.2.7:8443", proxy = "http://me:" .. SECRET .. "@" ..
                            srv.url:gsub("^http://", "") }
    local res, err = c:chat{ messages = MSGS }
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(502, err.status)
    assert.is_true(err.retryable)
    assert.equal(srv.url, err.proxy)
    assert.matches("^proxy " .. srv.url:gsub("%p", "%%%0") .. " refused the tunnel to llama%-server at " ..
                   "https://192%.0%.2%.7:8443 %(502%): the proxy could not reach", err.message)
    no_secret(err)
    local reqs = srv:requests(util.last_seq(srv) - 10)
    assert.truthy(reqs[#reqs].headers["proxy-authorization"])
  end)

  it("is not asked again by a router with retries", function()
    local since = util.last_seq(srv)
    local r = require("llamacpp.router").new{ retries = 3, backoff = 0,
      tiers = { t = { { endpoint = "https://192.0.2.7:8443", proxy = srv.url } } } }
    local res, err = r:chat{ messages = MSGS }
    assert.is_nil(res)
    assert.equal(1, util.hits(srv, "192.0.2.7:8443", "CONNECT", since))
    assert.matches("refused the tunnel", err.message, 1, true)
  end)

  it("streams fail the same way", function()
    local c = llamacpp.new{ endpoint = "https://192.0.2.7:8443", proxy = srv.url }
    local evs = util.collect(c:chat_stream{ messages = MSGS })
    local last = evs[#evs]
    assert.equal("error", last.type)
    assert.equal(407, last.error.status)
    assert.equal(srv.url, last.error.proxy)
  end)
end)

-- A real squid, when installed (CI installs it): its CONNECT refusals.
local squid = (io.popen("command -v squid || ls /usr/sbin/squid 2>/dev/null"):read("*l"))
local FAKE_AUTH = "/usr/lib/squid/basic_fake_auth"
describe("a real squid", function()
  if not squid or squid == "" or not io.open(FAKE_AUTH) then
    it("needs squid", function()
      pending("squid (with " .. FAKE_AUTH .. ") is not installed (apt-get install squid): the real-proxy cases")
    end)
    return
  end
  local dir, port, pid
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "' && chmod 777 '" .. dir .. "'"))
    port = util.closed_port()
    local f = assert(io.open(dir .. "/squid.conf", "w"))
    f:write(([[
http_port 127.0.0.1:%d
pid_filename %s/squid.pid
cache_log %s/cache.log
access_log none
cache deny all
shutdown_lifetime 0 seconds
auth_param basic program %s
acl authed proxy_auth REQUIRED
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny !authed
http_access deny CONNECT !SSL_ports
http_access allow all
]]):format(port, dir, dir, FAKE_AUTH))
    f:close()
    os.execute(("timeout 300 %s -N -f '%s/squid.conf' >'%s/out.log' 2>&1 &"):format(squid, dir, dir))
    if not util.wait_listening(port, 30) then
      error("squid did not start: " .. (io.open(dir .. "/out.log"):read("*a") or ""))
    end
    local h = io.open(dir .. "/squid.pid")
    pid = h and tonumber(h:read("*a"):match("%d+"))
    if h then h:close() end
  end)
  teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    os.execute("pkill -f '" .. dir .. "/squid.conf' 2>/dev/null; sleep 0.3; rm -rf '" .. dir .. "'")
  end)

  local function via(scheme, creds)
    local ep = scheme .. "://127.0.0.1:" .. util.closed_port()
    local _, err = llamacpp.new{ endpoint = ep, proxy = "http://" .. (creds or "") .. "127.0.0.1:" .. port }:health()
    assert.equal("http", err.kind)
    assert.is_true(err.gateway)
    assert.is_nil(err.message:find("\n", 1, true))
    no_secret(err)
    return err, ep
  end

  it("asking for credentials for a tunnel is a 407 that another try cannot fix", function()
    local err = via("https")
    assert.equal(407, err.status)
    assert.is_false(err.retryable)
    assert.equal("http://127.0.0.1:" .. port, err.proxy)
    assert.matches("refused the tunnel to llama%-server at https://127%.0%.0%.1:%d+ %(407%): the proxy wants " ..
                   "credentials", err.message)
  end)

  it("denying CONNECT to a port that is not 443 is a 403 that names the proxy and its rules", function()
    local err = via("https", "me:" .. SECRET .. "@")
    assert.equal(403, err.status)
    assert.is_false(err.retryable)
    assert.equal("http://127.0.0.1:" .. port, err.proxy)
    assert.matches("refused the tunnel to llama%-server at https://127%.0%.0%.1:%d+ %(403%): the proxy's rules",
                   err.message)
  end)

  it("answering a plain http:// request with its own page is a gateway error in one line", function()
    local err = via("http")
    assert.equal(407, err.status)
    assert.is_false(err.retryable)
    assert.matches("^gateway error %(407, squid/[%d.]+%) in front of llama%-server: .*the proxy wants credentials",
                   err.message)
    err = via("http", "me:" .. SECRET .. "@")
    assert.equal(503, err.status)                     -- squid could not connect to the server
    assert.is_true(err.retryable)
    assert.matches("^gateway error %(503, squid/[%d.]+%) in front of llama%-server: ", err.message)
    assert.matches("<html", err.body, 1, true)
  end)
end)
