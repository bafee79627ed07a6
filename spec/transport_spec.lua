-- Smaller things of real deployments (issue 21, point 6): an API key sent
-- in the clear is warned of once, through a hook; the CA bundle of the
-- environment (as curl's tool reads it); a caller's Accept-Encoding makes
-- libcurl decode the compressed answer.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }
local KEY = "sk-transport-secret-42"

describe("a key in the clear", function()
  it("is warned of once per endpoint and hook, never for https or loopback, never with the key", function()
    local heard = {}
    local function hook(msg) heard[#heard + 1] = msg end
    llamacpp.new{ endpoint = "http://192.0.2.7:8080", api_key = KEY, warn = hook }    -- TEST-NET: nothing is sent
    llamacpp.new{ endpoint = "http://192.0.2.7:8080/", api_key = KEY, warn = hook }
    assert.equal(1, #heard)
    assert.matches("the API key is sent to http://192.0.2.7:8080 in the clear", heard[1], 1, true)
    assert.is_nil(heard[1]:find(KEY, 1, true))
    llamacpp.new{ endpoint = "https://192.0.2.7:8080", api_key = KEY, warn = hook }
    llamacpp.new{ endpoint = "http://127.0.0.1:8080", api_key = KEY, warn = hook }
    llamacpp.new{ endpoint = "http://localhost:8080", api_key = KEY, warn = hook }
    llamacpp.new{ endpoint = "http://192.0.2.8:8080", warn = hook }                    -- no key
    assert.equal(1, #heard)
    llamacpp.new{ endpoint = "http://192.0.2.9:8080", api_key = function() return KEY end, warn = hook }
    assert.equal(2, #heard)
    llamacpp.new{ endpoint = "http://192.0.2.10:8080", api_key = KEY, warn = false }
    assert.equal(2, #heard)
    assert.has_error(function() llamacpp.new{ warn = "yes" } end)
    -- a router's deployments take the option too
    require("llamacpp.router").new{ tiers = { x = { { endpoint = "http://192.0.2.11:8080", api_key = KEY,
                                                       warn = hook } } } }
    assert.equal(3, #heard)
  end)

  it("is not warned of for any spelling of this machine", function()
    local heard = {}
    local function hook(msg) heard[#heard + 1] = msg end
    for _, host in ipairs{ "localhost", "LOCALHOST", "localhost.", "ip6-localhost", "app.localhost", "127.0.0.1",
                           "127.1", "127.0.1", "127.9.8.7", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0" } do
      llamacpp.new{ endpoint = "http://" .. host .. ":8080", api_key = KEY, warn = hook }
    end
    assert.same({}, heard)
    for _, host in ipairs{ "127.example.com", "128.0.0.1", "10.0.0.1", "[::2]", "localhost.example.com" } do
      llamacpp.new{ endpoint = "http://" .. host .. ":8080", api_key = KEY, warn = hook }
    end
    assert.equal(5, #heard)
  end)

  it("goes to stderr by default, once", function()
    local out = util.spawn([[
      local llamacpp = require "llamacpp"
      llamacpp.new{ endpoint = "http://192.0.2.7:8080", api_key = "sk-child-secret-1" }
      llamacpp.new{ endpoint = "http://192.0.2.7:8080", api_key = "sk-child-secret-1" }
      io.write("END\n")
    ]], 30)()
    local _, n = out:gsub("llamacpp: warning: the API key is sent to http://192%.0%.2%.7:8080 in the clear", "")
    assert.equal(1, n, out)
    assert.is_nil(out:find("sk-child-secret", 1, true))
    assert.matches("END", out)
  end)
end)

describe("the CA bundle of the environment", function()
  local h, why
  setup(function()
    h, why = fixture.https()
    if h then
      h:write("health", fixture.http_response(200, { { "Content-Type", "application/json" },
                                                     { "Connection", "close" } }, '{"status":"ok"}'))
    end
  end)
  teardown(function() if h then h:stop() end end)

  it("SSL_CERT_FILE, CURL_CA_BUNDLE and SSL_CERT_DIR are read as curl's tool reads them", function()
    if not h then pending("no HTTPS fixture: " .. tostring(why)) return end
    local code = ([[
      local c = require("llamacpp").new{ endpoint = %q }
      local ok, err = c:health()
      io.write(ok and "OK" or ("ERR " .. err.kind))
    ]]):format(h.url)
    assert.equal("ERR tls", util.spawn(code, 30)())
    assert.equal("OK", util.spawn(code, 30, { SSL_CERT_FILE = h.ca_file })())
    assert.equal("OK", util.spawn(code, 30, { CURL_CA_BUNDLE = h.ca_file })())
    assert.equal("OK", util.spawn(code, 30, { SSL_CERT_DIR = h.ca_path })())
    -- the option wins over the environment
    local explicit = code:gsub("endpoint = ", "ca_file = '/nonexistent.pem', endpoint = ")
    assert.matches("^ERR ", util.spawn(explicit, 30, { SSL_CERT_FILE = h.ca_file })())
  end)
end)

describe("Accept-Encoding", function()
  local srv
  local function gzip(s)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(s)
    f:close()
    local p = assert(io.popen("gzip -c < '" .. path .. "'"))
    local z = p:read("*a")
    p:close()
    os.remove(path)
    return z
  end
  setup(function()
    srv = fixture.start()
    local body = util.body(util.fixture("chat_nonstream"))
    srv:write("gz_chat", fixture.http_response(200, { { "Content-Type", "application/json" },
                                                      { "Content-Encoding", "gzip" } }, gzip(body)))
    local sse = util.body(util.fixture("chat_stream_usage"))
    local z = gzip(sse)
    srv:write("gz_stream", fixture.http_response(200, { { "Content-Type", "text/event-stream" },
      { "Content-Encoding", "gzip" } }, nil, { chunks = { z:sub(1, 100), z:sub(101, 400), z:sub(401) } }))
  end)
  teardown(function() srv:stop() end)

  it("asked for by the caller, is sent once and the answer decoded, whole or streamed", function()
    local since = util.last_seq(srv)
    local c = llamacpp.new{ endpoint = srv:replay("gz_chat"), headers = { ["Accept-Encoding"] = "gzip" } }
    local res = assert(c:chat{ messages = MSGS })
    local want = cjson.decode(util.body(util.fixture("chat_nonstream")))
    assert.equal(want.choices[1].message.content, res.content)
    local r = srv:requests(since)[1]
    assert.equal("gzip", r.headers["accept-encoding"])
    local s = llamacpp.new{ endpoint = srv:replay("gz_stream"), headers = { ["accept-encoding"] = "gzip" } }
    local evs = util.collect(s:chat_stream{ messages = MSGS })
    assert.equal("done", evs[#evs].type, tostring(evs[#evs].error))
    assert.equal(util.expected("chat_stream_usage").content, util.text_of(evs))
  end)

  it("is not sent unless asked", function()
    local since = util.last_seq(srv)
    assert(llamacpp.new{ endpoint = srv:replay("chat_nonstream") }:chat{ messages = MSGS })
    assert.is_nil(srv:requests(since)[1].headers["accept-encoding"])
  end)
end)

describe("proxies and this machine", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("127.1 and 0.0.0.0 are reached directly whatever http_proxy names", function()
    local dead = util.down()
    for _, host in ipairs{ "127.1", "0.0.0.0", "127.0.0.1" } do
      local url = srv:replay("chat_nonstream"):gsub("127%.0%.0%.1", host)
      local out = util.spawn(([[
        local c = require("llamacpp").new{ endpoint = %q }
        local res, err = c:chat{ messages = { { role = "user", content = "x" } } }
        io.write(res and "OK" or ("ERR " .. tostring(err)))
      ]]):format(url), 30, { http_proxy = dead, ALL_PROXY = dead })()
      assert.equal("OK", out, host)
    end
  end)
end)
