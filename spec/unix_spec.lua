-- llama-server on a unix socket (`--host /path/to.sock`; issue 21, point 5):
-- the endpoint `unix:PATH` (requests go to http://localhost over PATH) or
-- `unix:PATH:http://host/prefix` (that Host and path prefix), through the
-- client, the router and llamacpp.uv; errors that say what is wrong with
-- the socket instead of libcurl's "port 80".
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"

local MSGS = { { role = "user", content = "Say hello." } }

-- A socket file nobody listens on (the server that made it is gone).
local function stale_socket(path)
  local unix = require "socket.unix"
  os.remove(path)
  local s = assert(unix.stream())
  assert(s:bind(path))
  s:close()
  return path
end

local function tmp(suffix)
  local p = os.tmpname()
  os.remove(p)
  return p .. suffix
end

describe("a unix socket endpoint", function()
  local srv
  setup(function() srv = fixture.start{ unix = true } end)
  teardown(function() srv:stop() end)

  it("answers a chat, blocking and streamed, with Host localhost", function()
    assert.matches("^unix:/.+%.sock:http://localhost/script$", srv.endpoint)
    local c = llamacpp.new{ endpoint = srv.endpoint }
    srv:reply{ content = "Hello over a socket." }
    local res = assert(c:chat{ messages = MSGS })
    assert.equal("Hello over a socket.", res.content)
    srv:reply{ content = "Streamed over a socket.", tokens = { "Streamed", " over", " a socket." } }
    local text, last = {}, nil
    for ev in c:chat_stream{ messages = MSGS } do
      if ev.type == "content" then text[#text + 1] = ev.content end
      last = ev
    end
    assert.equal("done", last.type)
    assert.equal("Streamed over a socket.", table.concat(text))
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    for _, r in ipairs(reqs) do
      assert.equal("/script/v1/chat/completions", r.path)
      assert.equal("localhost", r.headers.host)
    end
  end)

  it("takes unix:PATH alone (http://localhost, no prefix) and a URL after the path", function()
    local plain = llamacpp.new{ endpoint = "unix:" .. srv.socket }
    assert.equal("unix:" .. srv.socket, plain.endpoint)
    local _, e = plain:health()        -- GET http://localhost/health: the fake has no such page
    assert.equal(404, e.status)
    local c = llamacpp.new{ endpoint = "unix:" .. srv.socket .. ":http://llm.internal:9000/script/" }
    assert.equal("unix:" .. srv.socket .. ":http://llm.internal:9000/script", c.endpoint)
    assert.equal("llamacpp.Client (llamacpp at unix:" .. srv.socket .. ":http://llm.internal:9000/script)",
                 tostring(c))
    srv:reply{ content = "prefixed" }
    assert.equal("prefixed", assert(c:chat{ messages = MSGS }).content)
    local reqs = srv:requests()
    local r = reqs[#reqs]
    assert.equal("/script/v1/chat/completions", r.path)
    assert.equal("llm.internal:9000", r.headers.host)
  end)

  it("is not sent through a proxy of the environment, and a proxy option is refused", function()
    srv:reply{ content = "direct" }
    local out = util.spawn([[
      local llamacpp = require "llamacpp"
      local c = llamacpp.new{ endpoint = ]] .. string.format("%q", srv.endpoint) .. [[ }
      local res, err = c:chat{ messages = { { role = "user", content = "hi" } } }
      io.write(res and ("CONTENT " .. res.content) or ("ERROR " .. err.message), "\nEND\n")
    ]], 30, { http_proxy = "http://127.0.0.1:1", HTTPS_PROXY = "http://127.0.0.1:1", all_proxy = "http://127.0.0.1:1" })
    local text = out()
    assert.matches("CONTENT direct", text, 1, true)
    local ok, err = pcall(llamacpp.new, { endpoint = srv.endpoint, proxy = "http://127.0.0.1:3128" })
    assert.is_false(ok)
    assert.matches("option 'proxy' has no effect on a unix socket endpoint", err, 1, true)
  end)

  it("sends the key without a warning (it does not cross a network)", function()
    local heard = {}
    local c = llamacpp.new{ endpoint = "unix:" .. srv.socket .. ":http://10.1.2.3/script", api_key = "sk-unix-1",
                            warn = function(m) heard[#heard + 1] = m end }
    srv:reply{ content = "keyed" }
    assert.equal("keyed", assert(c:chat{ messages = MSGS }).content)
    assert.same({}, heard)
    local reqs = srv:requests()
    assert.equal("Bearer sk-unix-1", reqs[#reqs].headers.authorization)
  end)

  it("serves a router deployment and llamacpp.uv", function()
    local router = require("llamacpp.router").new{ tiers = { here = { { endpoint = srv.endpoint } } } }
    srv:reply{ content = "routed" }
    local res = assert(router:chat{ tier = "here", messages = MSGS })
    assert.equal("routed", res.content)
    assert.equal(srv.endpoint, router:status()[1].endpoint)
    local has_luv, luv = pcall(require, "luv")
    if not has_luv then
      pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv (the uv half is not run)")
      return
    end
    local lu = require "llamacpp.uv"
    srv:reply{ content = "on the loop", tokens = { "on", " the", " loop" } }
    local got, last = {}, nil
    lu.chat_stream(llamacpp.new{ endpoint = srv.endpoint }, { messages = MSGS }, function(ev)
      if ev.type == "content" then got[#got + 1] = ev.content end
      last = ev
    end, { uv = luv })
    luv.run()
    assert.equal("done", last.type)
    assert.equal("on the loop", table.concat(got))
  end)
end)

describe("a unix socket that cannot be reached", function()
  local function fails(endpoint, pattern)
    local c = llamacpp.new{ endpoint = endpoint }
    local res, err = c:chat{ messages = MSGS }
    assert.is_nil(res)
    assert.equal("connection", err.kind)
    assert.equal(endpoint, err.endpoint)
    assert.matches(pattern, err.message)
    assert.is_nil(err.message:find("port 80", 1, true))
    assert.is_nil(err.message:find("\n", 1, true))
    return err
  end

  it("says there is no socket at the path", function()
    local p = tmp(".sock")
    local err = fails("unix:" .. p, "^llama%-server not running at unix:.-: no socket at ")
    assert.matches(p, err.message, 1, true)
    assert.matches("--host " .. p, err.message, 1, true)
    assert.is_true(err.retryable)           -- a server may be starting
  end)

  it("says nothing listens on a socket left behind", function()
    local p = stale_socket(tmp(".sock"))
    fails("unix:" .. p, "^llama%-server not running at unix:.-: nothing listens on " .. p:gsub("%p", "%%%0"))
    os.remove(p)
  end)

  it("says a file that is no socket is not one", function()
    local p = tmp(".txt")
    local f = assert(io.open(p, "w"))
    f:write("x")
    f:close()
    fails("unix:" .. p, ": " .. p:gsub("%p", "%%%0") .. " is not a socket$")
    os.remove(p)
  end)
end)

describe("unix socket endpoints that are malformed", function()
  local function bad(endpoint, pattern)
    local ok, err = pcall(llamacpp.new, { endpoint = endpoint })
    assert.is_false(ok, endpoint)
    assert.matches(pattern, err, 1, true)
  end

  it("are refused with the form to write", function()
    bad("unix:", "bad endpoint 'unix:' (want http[s]://host[:port][/prefix] or unix:/path/to.sock")
    bad("unix::http://localhost", "bad endpoint")
    bad("unix:/x.sock:ftp://host", "bad endpoint")
    bad("unix:/x.sock:http://", "bad endpoint")
    bad("http+unix://%2Ftmp%2Fx.sock/v1", "unix:/path/to.sock")
    bad("http://unix:/tmp/x.sock", "a unix socket is written unix:/path/to.sock")
    bad("unix:/" .. string.rep("d", 120) .. ".sock", "unix socket path is too long (126 bytes; at most 107)")
  end)

  it("are refused by the router's config too", function()
    local ok, err = pcall(require("llamacpp.router").new, { tiers = { x = { { endpoint = "unix:" } } } })
    assert.is_false(ok)
    assert.matches("bad endpoint 'unix:'", tostring(err), 1, true)
  end)

  it("keep credentials of the URL out of messages", function()
    local c = llamacpp.new{ endpoint = "unix:/nonexistent/x.sock:http://user:pw-secret@host/p" }
    assert.equal("unix:/nonexistent/x.sock:http://host/p", c.endpoint)
    local _, err = c:chat{ messages = MSGS }
    assert.is_nil(util.secret_in(err, "pw-secret"))
  end)
end)
