-- Specs of the fixture server itself (lua/llamacpp/testing/server.lua), with raw luasocket clients.
local socket = require "socket"
local fixture = require "fixture.control"
local util = require "spec.util"

local function read_file(name)
  local f = assert(io.open("spec/fixtures/" .. name .. ".response", "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Open a connection to the server, every operation bounded by `timeout` seconds.
local function connect(srv, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 5)
  assert(c:connect("127.0.0.1", srv.port))
  return c
end

local function request(target, extra)
  return "GET " .. target .. " HTTP/1.1\r\nHost: x\r\n" .. (extra or "") .. "\r\n"
end

-- Send a request on a fresh connection and read until the server closes it.
local function fetch(srv, target)
  local c = connect(srv)
  assert(c:send(request(target)))
  local data, err, partial = c:receive("*a")
  c:close()
  return data or partial, err
end

local function path_of(url) return url:match("^http://[^/]+(/.*)$") end

describe("fixture server", function()
  local srv

  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("replays a capture byte for byte", function()
    for _, name in ipairs({ "chat_stream", "health_ok", "err_404", "speed_stream_512" }) do
      local got = fetch(srv, path_of(srv:replay(name, "close")) .. "/v1/chat/completions")
      assert.are.equal(read_file(name), got)
    end
  end)

  it("keeps a connection alive across requests", function()
    local a, b = read_file("health_ok"), read_file("chat_stream")
    local c = connect(srv)
    assert(c:send(request("/replay/health_ok/-/ka-one")))
    assert.are.equal(a, c:receive(#a))
    assert(c:send(request("/replay/chat_stream/-/ka-two")))
    assert.are.equal(b, c:receive(#b))
    c:close()
    local one = srv:wait_for(function(r) return r.event == "request" and r.path:find("ka%-one") end)
    local two = srv:wait_for(function(r) return r.event == "request" and r.path:find("ka%-two") end)
    assert.are.equal(1, one.n)
    assert.are.equal(2, two.n)
    assert.are.equal(one.conn, two.conn)
    local closed = srv:wait_for(function(r) return r.event == "close" and r.conn == one.conn end)
    assert.are.equal("peer", closed.by)
  end)

  it("logs requests: headers lowercased and joined, bodies by length and chunked", function()
    local c = connect(srv)
    assert(c:send("POST /replay/health_ok/-/post-len HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\n" ..
                  "x-dup: 2\r\nContent-Length: 5\r\n\r\nhello"))
    c:receive(#read_file("health_ok"))
    assert(c:send("POST /replay/health_ok/-/post-chunked HTTP/1.1\r\nHost: x\r\n" ..
                  "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"))
    c:receive(#read_file("health_ok"))
    -- Expect: 100-continue: the interim answer comes before the body is sent.
    assert(c:send("POST /replay/health_ok/-/post-expect HTTP/1.1\r\nHost: x\r\n" ..
                  "Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"))
    assert.are.equal("HTTP/1.1 100 Continue\r\n\r\n", c:receive(25))
    assert(c:send("hi"))
    assert.are.equal(read_file("health_ok"), c:receive(#read_file("health_ok")))
    c:close()
    local reqs = {}
    srv:wait_for(function(r)
      if r.event == "request" then reqs[r.path:match("[^/]+$")] = r end
      return reqs["post-expect"] ~= nil
    end)
    assert.are.equal("hello", reqs["post-len"].body)
    assert.are.equal("POST", reqs["post-len"].method)
    assert.are.equal("1, 2", reqs["post-len"].headers["x-dup"])
    assert.are.equal("abcdefg", reqs["post-chunked"].body)
    assert.are.equal("hi", reqs["post-expect"].body)
    assert.are.equal(3, reqs["post-expect"].n)
  end)

  it("cut=N sends N bytes and closes", function()
    local c = connect(srv)
    assert(c:send(request("/replay/chat_stream/cut=100/x")))
    assert.are.equal(read_file("chat_stream"):sub(1, 100), c:receive(100))
    local _, err = c:receive(1)
    assert.are.equal("closed", err)
    c:close()
    local req = srv:wait_for(function(r) return r.event == "request" and r.path:find("cut=100") end)
    local closed = srv:wait_for(function(r) return r.event == "close" and r.conn == req.conn end)
    assert.are.equal("server", closed.by)
  end)

  it("stall=N keeps the connection open; a client close is logged as abort", function()
    local c = connect(srv)
    assert(c:send(request("/replay/chat_stream/stall=200/x")))
    assert.are.equal(read_file("chat_stream"):sub(1, 200), c:receive(200))
    c:settimeout(0.3)
    local data, err = c:receive(1)
    assert.is_nil(data)
    assert.are.equal("timeout", err)
    c:close()
    -- seen while stalling, with nothing else going on (10 s: a hang guard,
    -- far below the server's 120 s idle exit)
    local abort = srv:wait_for(function(r) return r.event == "abort" and r.path:find("stall=200") end, 10)
    assert.is_truthy(abort)
    assert.are.equal(200, abort.bytes)
  end)

  it("a client close during pace is an abort too", function()
    local c = connect(srv)
    assert(c:send(request("/replay/chat_stream/pace=200/paced-abort")))
    c:receive(10)
    c:close()
    local abort = srv:wait_for(function(r) return r.event == "abort" and r.path:find("paced%-abort") end, 3)
    assert.is_truthy(abort)
    assert.is_true(abort.bytes < #read_file("chat_stream"))
  end)

  it("drip delivers every byte, without holding up other connections", function()
    local whole = read_file("health_ok")
    assert.are.equal(whole, fetch(srv, "/replay/health_ok/drip,close/x"))

    -- drip=50 on 183 bytes takes 9 s; meanwhile another request is served
    -- whole: the server logs its end while the slow one is still sending.
    local since = util.last_seq(srv)
    local t0 = socket.gettime()
    local slow = connect(srv)
    assert(slow:send(request("/replay/health_ok/drip=50,close/slow")))
    assert.are.equal(whole:sub(1, 5), slow:receive(5))
    assert.is_true(socket.gettime() - t0 >= 4 * 0.05)   -- four gaps between five bytes
    assert.are.equal(whole, fetch(srv, "/replay/health_ok/close/fast"))
    local fast = srv:wait_for(function(r) return r.event == "done" and r.path:find("/fast", 1, true) end, 10)
    assert.is_truthy(fast)
    slow:close()
    local ended = srv:wait_for(function(r)
      return (r.event == "abort" or r.event == "done") and r.path:find("/slow", 1, true)
    end, 10)
    assert.are.equal("abort", ended.event)           -- the slow one was still dripping
    assert.is_true(ended.seq > fast.seq and fast.seq > since)
    assert.is_true(ended.bytes < #whole)
  end)

  it("pace and delay space the response out in time", function()
    local t0 = socket.gettime()
    assert.are.equal(read_file("health_ok"), fetch(srv, "/replay/health_ok/delay=300,close/x"))
    assert.is_true(socket.gettime() - t0 >= 0.3)

    -- The header block, then each HTTP chunk, 20 ms apart.
    local whole = read_file("chat_stream")
    local _, chunks = whole:gsub("\r\n%x+\r\n", "") -- the chunk size lines
    assert.is_true(chunks > 10)
    t0 = socket.gettime()
    assert.are.equal(whole, fetch(srv, "/replay/chat_stream/pace=20,close/x"))
    assert.is_true(socket.gettime() - t0 >= chunks * 0.02)

    -- The header block arrives on its own before the first chunk (3 s
    -- later: far more than the 0.1 s this waits, however busy the machine).
    local c = connect(srv)
    assert(c:send(request("/replay/chat_stream/pace=3000/x")))
    local head = read_file("chat_stream"):match("^(.-\r\n\r\n)")
    assert.are.equal(head, c:receive(#head))
    c:settimeout(0.1)
    local _, err, partial = c:receive(1)
    assert.are.equal("timeout", err)
    assert.are.equal("", partial)
    c:close()
  end)

  it("serves 300 concurrent streaming connections", function()
    local whole = read_file("chat_stream")
    local socks, got, open = {}, {}, 300
    local since = util.last_seq(srv)
    -- 20 pieces 50 ms apart: about 1 s each, so one at a time would take
    -- five minutes; the 30 s below is a hang guard
    for i = 1, 300 do
      local c = connect(srv)
      assert(c:send(request("/replay/chat_stream/pace=50,close/many-" .. i)))
      c:settimeout(0)
      socks[i], got[c] = c, {}
    end
    local deadline = socket.gettime() + 30
    local pending = {}
    for i = 1, 300 do pending[i] = socks[i] end
    while open > 0 and socket.gettime() < deadline do
      local readable = socket.select(pending, nil, 1)
      for _, c in ipairs(readable) do
        local data, err, partial = c:receive(65536)
        local t = got[c]
        t[#t + 1] = data or partial
        if err == "closed" then
          open = open - 1
          for k, s in ipairs(pending) do
            if s == c then table.remove(pending, k) break end
          end
        end
      end
    end
    assert.are.equal(0, open)
    for i = 1, 300 do
      assert.are.equal(whole, table.concat(got[socks[i]]))
      socks[i]:close()
    end
    -- how many were being answered at once, by the server's own log (300
    -- here; one at a time would be 1)
    local inflight, most = 0, 0
    for _, r in ipairs(srv:log(since)) do
      if r.path and r.path:find("/many-", 1, true) then
        if r.event == "request" then inflight = inflight + 1
        elseif r.event == "done" then inflight = inflight - 1 end
        most = math.max(most, inflight)
      end
    end
    assert.is_true(most >= 10, "at most " .. most .. " answered at once")
  end)

  it("replays files written while it runs", function()
    local body1 = fixture.sse_body({ '{"n":1}', "[DONE]" })
    local v1 = fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil,
                                     { chunks = { body1, "" } })
    assert.are.equal("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" ..
                     "Transfer-Encoding: chunked\r\n\r\n" ..
                     "1d\r\ndata: {\"n\":1}\n\ndata: [DONE]\n\n\r\n0\r\n\r\n", v1)
    srv:write("generated", v1)
    assert.are.equal(v1, fetch(srv, "/replay/generated/close/x"))

    local v2 = fixture.http_response(503, { { "Connection", "close" } }, "busy")
    assert.are.equal("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n" ..
                     "Content-Length: 4\r\n\r\nbusy", v2)
    srv:write("generated", v2)
    -- No `close` option: the Connection: close of the file closes the connection.
    assert.are.equal(v2, fetch(srv, "/replay/generated/-/x"))
  end)

  it("answers 404 to unknown paths and unknown fixtures", function()
    local got = fetch(srv, "/v1/nope")
    assert.is_truthy(got:find("^HTTP/1.1 404 Not Found\r\n"))
    assert.is_truthy(got:find("\r\nConnection: close\r\n", 1, true))
    assert.is_truthy(got:find("\r\nContent-Type: application/json; charset=utf-8\r\n", 1, true))
    assert.are.equal('{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}',
                     got:match("\r\n\r\n(.*)$"))

    got = fetch(srv, "/replay/no_such_capture/-/x")
    assert.is_truthy(got:find("^HTTP/1.1 404 "))
    assert.are.equal("no fixture no_such_capture", got:match("\r\n\r\n(.*)$"))
    assert.is_truthy(srv:wait_for(function(r)
      return r.event == "missing" and r.name == "no_such_capture"
    end))
  end)

  it("log?since=N returns only later records, and hides its own requests", function()
    local all = srv:log()
    local last = all[#all].seq
    fetch(srv, "/replay/health_ok/close/since-test")
    local newer = srv:log(last)
    assert.is_true(#newer >= 4) -- accept, request, done, close
    for _, r in ipairs(newer) do
      assert.is_true(r.seq > last)
      assert.are_not.equal("/__log", (r.path or ""):match("^[^?]*"))
    end
    assert.are.equal(1, #srv:requests(last))
  end)
end)

describe("fixture server process", function()
  local function refused(port)
    local c = socket.tcp()
    c:settimeout(1)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return not ok
  end

  it("ends on /__quit (stop), and stop is idempotent", function()
    local srv = fixture.start()
    assert.is_false(refused(srv.port))
    srv:stop()
    assert.is_true(refused(srv.port))
    srv:stop()
  end)

  it("ends by itself after --idle seconds", function()
    local srv = fixture.start { idle = 1 }
    -- Each look is a connection, which the server counts as activity: look
    -- every 3 s (idle 1 s, plus the up to 1 s its loop sleeps), 30 s in all.
    local gone = false
    for _ = 1, 10 do
      socket.sleep(3)
      gone = refused(srv.port)
      if gone then break end
    end
    assert.is_true(gone)
    srv:stop()
  end)
end)
