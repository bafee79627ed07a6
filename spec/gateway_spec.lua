-- Gateways in front of llama-server (issue 21, points 1 and 2): their
-- error pages say a gateway answered, in one line, with what to change; a
-- gateway's 504 (the server behind may still be reading the prompt) is not
-- sent again to the same deployment, but the router tries another. First
-- against pages served by the fixture server, then through a real nginx
-- when it is installed (apt-get install nginx-light; the spec says why it
-- skips otherwise).
local llamacpp = require "llamacpp"
local router = require "llamacpp.router"
local testing = require "llamacpp.testing"
local fixture = require "fixture.control"
local util = require "spec.util"
local socket = require "socket"

local MSGS = { { role = "user", content = "Say hello." } }
local KEY = "sk-gateway-secret-123"

local PAGE504 = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 " ..
                "Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"

local function fake_time()
  local t = { now = 1000, slept = {} }
  t.clock = function() return t.now end
  t.sleep = function(s) t.slept[#t.slept + 1] = s; t.now = t.now + s end
  return t
end

describe("gateways", function()
  local srv
  setup(function()
    srv = fixture.start()
    local h = { { "Server", "nginx/1.22.1" }, { "Content-Type", "text/html" } }
    srv:write("gw504", fixture.http_response(504, h, PAGE504))
    srv:write("gw502", fixture.http_response(502, h, (PAGE504:gsub("504 Gateway Time%-out", "502 Bad Gateway"))))
    srv:write("ok", util.fixture("chat_nonstream"))
  end)
  teardown(function() srv:stop() end)

  it("a gateway's page is a one-line error naming the gateway, its title and the fix, with the body kept", function()
    local c = llamacpp.new{ endpoint = srv:replay("gw504"), api_key = KEY }
    local res, err = c:chat{ messages = MSGS }
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(504, err.status)
    assert.equal("gateway_timeout", err.code)
    assert.is_true(err.gateway)
    assert.equal("nginx/1.22.1", err.gateway_server)
    assert.is_false(err.retryable)
    assert.matches("^gateway error %(504, nginx/1%.22%.1%) in front of llama%-server: 504 Gateway Time%-out; " ..
                   ".*proxy_read_timeout", err.message)
    assert.is_nil(err.message:find("[\r\n]"))
    assert.equal(PAGE504, err.body)
    assert.is_nil(tostring(err):find(KEY, 1, true))
    local s = c:open_stream{ messages = MSGS }            -- streams say the same
    local ev = s:next()
    assert.equal("error", ev.type)
    assert.equal("gateway_timeout", ev.error.code)
  end)

  it("the router passes a gateway timeout to another deployment and never resends it to the same", function()
    local t = fake_time()
    local since = util.last_seq(srv)
    local r = router.new{ tiers = { x = { { name = "behind-nginx", endpoint = srv:replay("gw504") },
                                          { name = "direct", endpoint = srv:replay("ok") } } },
                          clock = t.clock, sleep = t.sleep, retries = 2 }
    local res = assert(r:chat{ messages = MSGS })
    assert.equal("direct", res.provider)
    assert.equal("gateway_timeout", res.attempts[1].error.code)
    assert.equal(1, util.hits(srv, "/gw504/", nil, since))
    -- alone in its tier: one try, no backoff, the error says why
    since = util.last_seq(srv)
    local one = router.new{ tiers = { x = { { name = "behind-nginx", endpoint = srv:replay("gw504") } } },
                            clock = t.clock, sleep = t.sleep, retries = 2 }
    t.slept = {}
    local none, err = one:chat{ messages = MSGS }
    assert.is_nil(none)
    assert.equal("no_provider", err.kind)
    assert.matches("504 Gateway Time%-out", err.message)
    assert.equal(1, util.hits(srv, "/gw504/", nil, since))
    assert.same({}, t.slept)
    -- beside one that fails for good: only the other is tried again
    since = util.last_seq(srv)
    local mixed = router.new{ tiers = { x = { { name = "behind-nginx", endpoint = srv:replay("gw504") },
                                              { name = "down", endpoint = util.down() } } },
                              clock = t.clock, sleep = t.sleep, retries = 2 }
    local _, merr = mixed:chat{ messages = MSGS }
    assert.equal("no_provider", merr.kind)
    assert.equal(4, #merr.attempts)                      -- gw504 once, down three times
    assert.equal(1, util.hits(srv, "/gw504/", nil, since))
    -- a 502 may be a server restarting: it is tried again after a backoff
    since = util.last_seq(srv)
    local b = router.new{ tiers = { x = { { name = "n", endpoint = srv:replay("gw502") } } },
                          clock = t.clock, sleep = t.sleep, retries = 2 }
    assert.is_nil(b:chat{ messages = MSGS })
    assert.equal(3, util.hits(srv, "/gw502/", nil, since))
  end)
end)

-- A real nginx, as people run it in front of llama-server.
local function sh_out(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end
local nginx = sh_out("command -v nginx || ls /usr/sbin/nginx 2>/dev/null"):match("[^\n]+")

-- Starts nginx with `servers` (its server blocks; %{dir} is its directory)
-- in the background under a hang guard: {dir =, read(name), stop()}.
local function start_nginx(servers)
  local n = { dir = os.tmpname() }
  os.remove(n.dir)
  assert(os.execute("mkdir -p '" .. n.dir .. "'"))
  function n.read(name)                            -- a file of nginx's directory, "" if none
    local h = io.open(n.dir .. "/" .. name)
    local text = h and h:read("*a") or ""
    if h then h:close() end
    return text
  end
  local dir = n.dir
  local conf = ([[
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fcgi;
  uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;
]]):format(dir, dir, dir, dir, dir, dir, dir) .. servers:gsub("%%{dir}", dir) .. "\n}\n"
  local f = assert(io.open(dir .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local port = tonumber(servers:match("listen 127%.0%.0%.1:(%d+)"))
  -- it writes its pid file once listening
  os.execute(("timeout 300 %s -p '%s' -c '%s/nginx.conf' -g 'daemon off;' >'%s/out.log' 2>&1 &")
             :format(nginx, dir, dir, dir))
  if not util.wait_listening(port, 20) then
    error("nginx did not start: " .. n.read("out.log") .. n.read("error.log"))
  end
  function n.stop()
    local pid = tonumber(n.read("nginx.pid"):match("%d+") or "")
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    socket.sleep(0.2)
    os.execute("rm -rf '" .. dir .. "'")
  end
  return n
end

describe("a real nginx in front", function()
  if not nginx then
    it("is needed for these checks", function()
      pending("nginx is not installed (apt-get install nginx-light; make deps installs it)")
    end)
    return
  end

  local fake, port, ngx
  setup(function()
    fake = testing.start()
    port = util.closed_port()
    local closed = util.closed_port()
    while closed == port do closed = util.closed_port() end   -- the kernel may give the same one twice
    local up = fake.endpoint:match("^http://([^/]+)")
    local prefix = fake.endpoint:match("^http://[^/]+(/.*)$") or ""
    ngx = start_nginx(([[
  server {
    listen 127.0.0.1:%d;
    location /llama/ { proxy_pass http://%s%s/; proxy_buffering off; proxy_read_timeout 1s; }
    location /small/ { proxy_pass http://%s%s/; client_max_body_size 1k; }
    location /down/  { proxy_pass http://127.0.0.1:%d/; }
  }]]):format(port, up, prefix, up, prefix, closed))
  end)
  teardown(function()
    ngx.stop()
    fake:stop()
  end)

  local function client(path) return llamacpp.new{ endpoint = "http://127.0.0.1:" .. port .. path, api_key = KEY } end

  it("streams through its path prefix", function()
    fake:reply{ content = "Hello through nginx.", pace = 0.01 }
    local evs = util.collect(client("/llama"):chat_stream{ messages = MSGS })
    assert.equal("done", evs[#evs].type)
    assert.equal("Hello through nginx.", util.text_of(evs))
  end)

  it("its 504 (proxy_read_timeout) says so, and is not retried on the same deployment", function()
    fake:reply{ content = "too late", delay = 3 }
    local _, err = client("/llama"):chat{ messages = MSGS }
    assert.equal(504, err.status)
    assert.equal("gateway_timeout", err.code)
    assert.is_false(err.retryable)
    assert.matches("^gateway error %(504, nginx/[%d.]+%) in front of llama%-server: 504 Gateway Time%-out; " ..
                   ".*proxy_read_timeout", err.message)
    assert.is_nil(err.message:find("[\r\n]"))
    assert.is_nil(tostring(err):find(KEY, 1, true))
  end)

  it("https:// to its plain-HTTP port fails at once, saying the server answered in plain HTTP", function()
    local _, err = llamacpp.new{ endpoint = "https://127.0.0.1:" .. port .. "/llama", api_key = KEY }:health()
    assert.equal("tls", err.kind)
    assert.is_false(err.retryable)
    assert.matches("failed: the server answered in plain HTTP, not TLS: use http://", err.message, 1, true)
    assert.is_nil(tostring(err):find(KEY, 1, true))
  end)

  it("its 502 (nothing behind it) and 413 (client_max_body_size) say what they are", function()
    local _, e502 = client("/down"):chat{ messages = MSGS }
    assert.equal(502, e502.status)
    assert.is_true(e502.retryable)
    assert.matches("^gateway error %(502, nginx/[%d.]+%) in front of llama%-server: 502 Bad Gateway; ", e502.message)
    local big = { { role = "user", content = ("x"):rep(4000) } }
    local _, e413 = client("/small"):chat{ messages = big }
    assert.equal(413, e413.status)
    assert.is_false(e413.retryable)
    assert.matches("413 Request Entity Too Large; .*client_max_body_size", e413.message)
  end)
end)

-- HTTP/2 (issue 21, point 4): concurrent streams to an HTTP/2 endpoint share
-- one connection from a cold start (CURLOPT_PIPEWAIT), up to the server's
-- stream limit, instead of one connection each.
describe("HTTP/2 through a real nginx", function()
  local v = nginx and sh_out(nginx .. " -V 2>&1") or ""
  local has_luv, luv = pcall(require, "luv")
  local why = (not nginx and "nginx is not installed (apt-get install nginx-light)")
    or (not v:find("http_v2_module", 1, true) and "this nginx has no HTTP/2 module")
    or (not has_luv and "luv is not installed for " .. _VERSION .. " (apt-get install lua-luv)")
    or (not llamacpp.curl_version():find("nghttp2", 1, true) and "this libcurl has no HTTP/2 (nghttp2)")
    or (os.execute("command -v openssl >/dev/null 2>&1") ~= true and
        os.execute("command -v openssl >/dev/null 2>&1") ~= 0 and "the openssl command is not installed")
  if why then
    it("is needed for these checks", function() pending(why) end)
    return
  end
  local lu = require "llamacpp.uv"

  local fake, port, port1, ngx
  setup(function()
    fake = testing.start()
    port = util.closed_port()
    port1 = util.closed_port()
    while port1 == port do port1 = util.closed_port() end
    local up = fake.endpoint:match("^http://([^/]+)")
    local prefix = fake.endpoint:match("^http://[^/]+(/.*)$") or ""
    local certdir = os.tmpname()
    os.remove(certdir)
    assert(os.execute("mkdir -p '" .. certdir .. "' && cd '" .. certdir .. "' && openssl req -x509 -newkey ec" ..
      " -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=llamacpp-test" ..
      " -addext subjectAltName=IP:127.0.0.1 >gen.log 2>&1"))
    ngx = start_nginx(([[
  log_format conns '$connection $server_protocol $status';
  server {
    listen 127.0.0.1:%d ssl http2;
    ssl_certificate %s/cert.pem; ssl_certificate_key %s/key.pem;
    access_log %%{dir}/access.log conns;
    location /llama/ { proxy_pass http://%s%s/; proxy_buffering off; }
  }
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate %s/cert.pem; ssl_certificate_key %s/key.pem;
    location /llama/ { proxy_pass http://%s%s/; proxy_buffering off; }
  }]]):format(port, certdir, certdir, up, prefix, port1, certdir, certdir, up, prefix))
    ngx.certdir = certdir
  end)
  teardown(function()
    ngx.stop()
    os.execute("rm -rf '" .. ngx.certdir .. "'")
    fake:stop()
  end)

  it("20 concurrent streams from a cold start share one connection, not 20", function()
    local c = llamacpp.new{ endpoint = "https://127.0.0.1:" .. port .. "/llama", ca_file = ngx.certdir .. "/cert.pem",
                            api_key = KEY }
    for i = 1, 20 do fake:reply{ content = "stream " .. i .. " done", pace = 0.01 } end
    local texts, ends = {}, 0
    for i = 1, 20 do
      local parts = {}
      lu.chat_stream(c, { messages = MSGS }, function(ev)
        if ev.type == "content" then parts[#parts + 1] = ev.content end
        if ev.type == "done" or ev.type == "error" then
          ends = ends + 1
          texts[i] = ev.type == "done" and table.concat(parts) or tostring(ev.error)
        end
      end, { uv = luv })
    end
    luv.run()
    assert.equal(20, ends)
    local seen = {}
    for i = 1, 20 do
      assert.matches("^stream %d+ done$", texts[i])
      assert.is_nil(seen[texts[i]])
      seen[texts[i]] = true
    end
    -- nginx writes a request's log line after its last byte: wait for all
    -- 20 (the bound is a hang guard)
    local log
    local deadline = socket.gettime() + 20
    repeat
      log = ngx.read("access.log")
      local _, lines = log:gsub("\n", "")
      if lines < 20 then socket.sleep(0.05) end
    until lines >= 20 or socket.gettime() > deadline
    local conns, n = {}, 0
    for conn, proto, status in log:gmatch("(%d+) (%S+) (%d+)\n") do
      assert.equal("HTTP/2.0", proto)
      assert.equal("200", status)
      n = n + 1
      conns[conn] = true
    end
    assert.equal(20, n)
    local distinct = 0
    for _ in pairs(conns) do distinct = distinct + 1 end
    -- nginx takes 128 streams at once on a connection (http2_max_concurrent_streams)
    assert.equal(1, distinct, distinct .. " connections for 20 streams")
  end)

  it("over HTTPS with HTTP/1.1 only, a second stream does not wait for the first to end", function()
    local c = llamacpp.new{ endpoint = "https://127.0.0.1:" .. port1 .. "/llama", ca_file = ngx.certdir .. "/cert.pem" }
    local words = {}
    for i = 1, 20 do words[i] = "w" .. i .. " " end
    fake:reply{ tokens = words, pace = 0.05 }       -- 1 s, to whichever request comes first
    fake:reply{ content = "quick", pace = 0.01 }
    local order = {}
    local function on(ev)
      if ev.type == "done" then order[#order + 1] = ev.content == "quick" and "quick" or "slow" end
      if ev.type == "error" then order[#order + 1] = tostring(ev.error) end
    end
    lu.chat_stream(c, { messages = MSGS }, on, { uv = luv })
    lu.chat_stream(c, { messages = MSGS }, on, { uv = luv })
    luv.run()
    -- had the second waited for the first connection, the quick one would end last
    assert.same({ "quick", "slow" }, order)
  end)
end)
