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
local nginx = io.popen("command -v nginx || ls /usr/sbin/nginx 2>/dev/null"):read("*l")

describe("a real nginx in front", function()
  if not nginx then
    it("is needed for these checks", function()
      pending("nginx is not installed (apt-get install nginx-light; make deps installs it)")
    end)
    return
  end

  local fake, dir, port, pid
  local function read(name)                          -- a file of nginx's directory, "" if none
    local h = io.open(dir .. "/" .. name)
    local text = h and h:read("*a") or ""
    if h then h:close() end
    return text
  end
  setup(function()
    fake = testing.start()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
    port = util.closed_port()
    local closed = util.closed_port()
    local up = fake.endpoint:match("^http://([^/]+)")
    local prefix = fake.endpoint:match("^http://[^/]+(/.*)$") or ""
    local conf = ([[
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/body; proxy_temp_path %s/proxy; fastcgi_temp_path %s/fcgi;
  uwsgi_temp_path %s/uwsgi; scgi_temp_path %s/scgi;
  server {
    listen 127.0.0.1:%d;
    location /llama/ { proxy_pass http://%s%s/; proxy_buffering off; proxy_read_timeout 1s; }
    location /small/ { proxy_pass http://%s%s/; client_max_body_size 1k; }
    location /down/  { proxy_pass http://127.0.0.1:%d/; }
  }
}
]]):format(dir, dir, dir, dir, dir, dir, dir, port, up, prefix, up, prefix, closed)
    local f = assert(io.open(dir .. "/nginx.conf", "w"))
    f:write(conf)
    f:close()
    -- in the background under a hang guard; it writes its pid file once listening
    os.execute(("timeout 300 %s -p '%s' -c '%s/nginx.conf' -g 'daemon off;' >'%s/out.log' 2>&1 &")
               :format(nginx, dir, dir, dir))
    local deadline = socket.gettime() + 20
    while true do
      local c = socket.connect("127.0.0.1", port)
      if c then c:close() break end
      if socket.gettime() > deadline then error("nginx did not start: " .. read("out.log") .. read("error.log")) end
      socket.sleep(0.05)
    end
    pid = tonumber(read("nginx.pid"):match("%d+") or "")
  end)
  teardown(function()
    pid = pid or tonumber(read("nginx.pid"):match("%d+") or "")
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    socket.sleep(0.2)
    os.execute("rm -rf '" .. dir .. "'")
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
