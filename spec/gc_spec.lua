-- Lifetimes (issue 8): a stream collected mid-transfer, a client collected
-- with streams open, close twice, next after close, half-built objects, a
-- Lua state closed with transfers running. No crash, no descriptor left
-- open, a clear error where the caller misused an object. (Leaks and invalid
-- accesses are for `make asan` and `make valgrind`, which run this file.)
local llamacpp = require "llamacpp"
local core = require "llamacpp.core"
local fixture = require "fixture.control"
local util = require "spec.util"
local proc = require "soak.proc"
local socket = require "socket"

local MSGS = { { role = "user", content = "Say hello." } }

local function full_gc()
  for _ = 1, 4 do collectgarbage("collect") end
end

-- Replay options for a stream that gives its first content at once, then
-- the rest 1 s a piece (17 more pieces): however busy the machine, it is
-- still running when the spec collects or closes it.
local SLOW = (function()
  local raw = util.fixture("chat_stream_usage")
  local _, he = raw:find("\r\n\r\n", 1, true)
  local pos = he + 1
  for _ = 1, 2 do                      -- the role chunk, then the first content
    local ls, le = raw:find("\r\n", pos, true)
    pos = le + tonumber(raw:sub(pos, ls - 1):match("^%x+"), 16) + 3
  end
  return "from=" .. (pos - 1) .. ",pace=1000"
end)()

describe("object lifetimes", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function last_seq()
    local log = srv:log()
    return #log > 0 and log[#log].seq or 0
  end

  local function aborts_since(seq, timeout_s, want)
    local n, deadline
    deadline = os.time() + (timeout_s or 5)
    repeat
      n = 0
      for _, r in ipairs(srv:log(seq)) do
        if r.event == "abort" then n = n + 1 end
      end
      if n >= want then return n end
      socket.sleep(0.05)
    until os.time() > deadline
    return n
  end

  it("a stream collected mid-transfer aborts it: the server sees the client go", function()
    full_gc()
    local fds = proc.nfds()
    local seq = last_seq()
    -- in a function of its own: no register of this one keeps them alive
    local function open_one()
      local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage", SLOW) }
      local s = c:open_stream{ messages = MSGS }
      assert.equal("content", s:next().type)
    end
    open_one()
    full_gc()
    assert.equal(1, aborts_since(seq, 5, 1))
    full_gc()
    -- none of these left (an earlier spec's idle connection or loop, let go
    -- meanwhile, may make it fewer: seen under ASan with LuaJIT)
    assert.is_true(proc.nfds() <= fds, proc.nfds() .. " descriptors, " .. fds .. " before")
  end)

  it("a client dropped by its caller lives on with its open stream, to the end", function()
    local function open()
      return llamacpp.new{ endpoint = srv:replay("chat_stream_usage", "pace=5") }:open_stream{ messages = MSGS }
    end
    local s = open()
    full_gc()
    local last, n = nil, 0
    while true do
      local ev = s:next()
      if ev == nil then break end
      last, n = ev, n + 1
      if n % 5 == 0 then full_gc() end
    end
    assert.equal("done", last.type)
  end)

  it("a client collected with many streams open: every transfer ends, no descriptor left", function()
    full_gc()
    local fds = proc.nfds()
    local seq = last_seq()
    local function open_many()
      -- all open before any is read: none can end (SLOW) before the
      -- collector runs
      local streams = {}
      for _ = 1, 10 do
        local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage", SLOW) }
        for _ = 1, 3 do streams[#streams + 1] = c:open_stream{ messages = MSGS } end
      end
      for _, s in ipairs(streams) do assert.equal("content", s:next().type) end
    end
    open_many()
    full_gc()
    assert.equal(30, aborts_since(seq, 10, 30))
    full_gc()
    -- none of these left (an earlier spec's idle connection or loop, let go
    -- meanwhile, may make it fewer: seen under ASan with LuaJIT)
    assert.is_true(proc.nfds() <= fds, proc.nfds() .. " descriptors, " .. fds .. " before")
  end)

  it("close is idempotent; next after close is a clear error at the caller's line", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage", "pace=20") }
    local s = c:open_stream{ messages = MSGS }
    assert.equal("content", s:next().type)
    s:close()
    s:close()
    assert.matches("closed", tostring(s))
    -- (no tail call: Lua 5.1 counts a "(tail call)" level and names no line)
    local ok, msg = pcall(function() local ev = s:next(); return ev end)
    assert.is_false(ok)
    assert.matches("^spec/gc_spec%.lua:%d+: stream is closed", msg)
    ok, msg = pcall(function() return s:next(0) end)
    assert.is_false(ok)
    assert.matches("stream is closed", msg)
    assert.is_false(s:ready())
    s:close()
    -- a stream that ended by itself: next gives nil, then close is fine, then next raises
    s = llamacpp.new{ endpoint = srv:replay("chat_stream_usage") }:open_stream{ messages = MSGS }
    repeat local ev = s:next() until ev == nil
    assert.is_nil(s:next())
    s:close()
    s:close()
    assert.has_error(function() s:next() end)
    -- the chat_stream iterator after its stream was closed
    local step, st = c:chat_stream{ messages = MSGS }
    st:close()
    assert.has_error(function() step() end)
  end)

  it("transfers and sessions of the core: close twice, use after close raises", function()
    local session = core.session()
    local t = session:open{ url = srv:replay("chat_stream_usage", "pace=20") .. "/v1/chat/completions",
                            method = "POST", body = "{}", framing = "sse", proxy = "" }
    assert.truthy(t:next())
    t:close()
    t:close()
    assert.matches("closed", tostring(t))
    local ok, msg = pcall(function() return t:next() end)
    assert.is_false(ok)
    assert.matches("transfer is closed", msg)
    assert.has_error(function() t:response() end)
    assert.has_error(function() t:take() end)
    -- a session closed under a running transfer: the transfer ends "cancelled"
    -- (SLOW: still running when the session closes)
    local t2 = session:open{ url = srv:replay("chat_stream_usage", SLOW) .. "/x",
                             method = "POST", body = "{}", framing = "sse", proxy = "" }
    assert.truthy(t2:next())
    session:close()
    session:close()
    local data, err
    repeat data, err = t2:next() until not data
    assert.is_nil(data)
    assert.equal("cancelled", err.kind)
    t2:close()
    ok, msg = pcall(function() return session:open{ url = srv.url } end)
    assert.is_false(ok)
    assert.matches("session is closed", msg)
    assert.matches("closed", tostring(session))
  end)

  it("half-built transfers (an option refused mid-way) are collected without harm", function()
    local session = core.session()
    local bad = {
      {},                                                -- no url
      { url = srv.url, framing = "xml" },
      { url = srv.url, headers = { "A: 1", "B: 2\r\nC: 3" } },   -- after the first header is kept
      { url = srv.url, headers = { "A: 1", 42 } },
      { url = srv.url, headers = "A: 1" },
      { url = srv.url, body = "{}", timeout = -1 },
      { url = srv.url, body = "{}", idle_timeout = "soon" },
      { url = srv.url, body = "{}", proxy = 1 },
      { url = srv.url, body = string.rep("x", 100000), headers = { "A: 1" }, ca_file = {} },
    }
    for _ = 1, 20 do
      for i, o in ipairs(bad) do
        local ok = pcall(session.open, session, o)
        assert.is_false(ok, "option set " .. i)
      end
    end
    full_gc()
    -- the session still works
    local t = session:open{ url = srv:replay("chat_nonstream") .. "/x", proxy = "" }
    repeat local more = t:next() until more == nil
    assert.equal(200, t:response().status)
    t:close()
    session:close()
  end)

  it("survives a collector running all the time", function()
    local pause = collectgarbage("setpause", 0)
    local ok, err = pcall(function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage") }
      for _ = 1, 3 do
        local n = 0
        for ev in c:chat_stream{ messages = MSGS } do n = n + 1; assert.truthy(ev.type) end
        assert.truthy(n > 2)
        assert(llamacpp.new{ endpoint = srv:replay("chat_nonstream") }:chat{ messages = MSGS })
      end
    end)
    collectgarbage("setpause", pause)
    assert(ok, err)
  end)

  it("a Lua state closed with transfers running (process exit) ends cleanly", function()
    local lua = util.lua()
    local head = ("package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path\n" ..
                  "package.cpath = %q .. ';' .. package.cpath\n"):format(package.cpath:match("^[^;]*")) ..
      ([[
local llamacpp = require "llamacpp"
local keep = {}
for i = 1, 3 do
  local c = llamacpp.new{ endpoint = %q }
  for j = 1, 2 do
    keep[#keep + 1] = c:open_stream{ messages = { { role = "user", content = "x" } } }
  end
end
for _, s in ipairs(keep) do s:next() end
keep.session = require("llamacpp.core").session()     -- one with nothing in it
]]):format(srv:replay("chat_stream_usage", SLOW))
    local endings = {
      "io.write('end')",                                  -- lua_close at the end of the script
      "io.write('end') os.exit(0, true)",                 -- closes the state too
      "io.write('end') os.exit(0)",                       -- does not close it
      "io.write('end') error('boom')",                    -- an error ends the script
    }
    local seq = last_seq()
    for _, ending in ipairs(endings) do
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(head, ending, "\n")
      f:close()
      local p = io.popen(lua .. " " .. script .. " 2>&1")
      local out = p:read("*a")
      local ok, how, code = p:close()
      os.remove(script)
      if type(ok) == "number" then code = ok end        -- Lua 5.1's close
      assert.truthy(out:find("end", 1, true), ending .. ": " .. out)
      assert.is_nil(out:find("Segmentation"), out)
      assert.is_nil(out:find("Sanitizer", 1, true), out)
      if ending:find("boom") then
        assert.matches("boom", out)
      else
        assert.equal("end", out, ending)
        if how then assert.equal(0, code, ending .. ": exit " .. tostring(code)) end
      end
    end
    -- every one of the 4 x 6 streams was seen to go
    assert.equal(24, aborts_since(seq, 10, 24))
  end)
end)
