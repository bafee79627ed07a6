-- llamacpp.uv on a standalone luv loop (Debian's lua-luv), against the
-- fixture server: events in order, many streams at once, cancel, errors
-- in callbacks, and a loop that has nothing to do when nothing runs.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local MSGS = { { role = "user", content = "Say hello." } }

local text_of = util.text_of
local unpack = rawget(table, "unpack") or rawget(_G, "unpack")

describe("llamacpp.uv", function()
  if not has_luv then
    it("needs luv", function() pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end)
    return
  end
  local srv
  local O = { uv = luv }
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("streams every event in order, and the loop then ends by itself", function()
    local want = util.expected("chat_stream_usage")
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage", "pace=2") }
    local evs = {}
    lu.chat_stream(c, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    assert.equal(0, #evs)            -- nothing is called back inside the call
    luv.run()                        -- returns only when nothing is watched
    assert.equal("done", evs[#evs].type)
    assert.equal(want.content, text_of(evs))
    assert.equal(want.usage.completion_tokens, evs[#evs].usage.output_tokens)
  end)

  it("runs many streams at once on one loop, each getting its own bytes", function()
    local names = { "chat_stream", "chat_unicode_stream", "chat_stream_usage",
                    "chat_json_schema_stream", "chat_stream_length" }
    local clients = {}
    for i, name in ipairs(names) do
      clients[i] = llamacpp.new{ endpoint = srv:replay(name, i % 2 == 0 and "drip" or "pace=1") }
    end
    local results = {}
    for i = 1, 40 do            -- 8 streams on each of 5 clients
      local k = (i - 1) % #names + 1
      local evs = {}
      results[i] = { name = names[k], evs = evs }
      lu.chat_stream(clients[k], { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    end
    luv.run()
    for i, r in ipairs(results) do
      local last = r.evs[#r.evs]
      assert.equal("done", last and last.type, "stream " .. i)
      assert.equal(util.expected(r.name).content, text_of(r.evs), "stream " .. i)
    end
  end)

  it("cancel aborts the transfer and stops the callbacks", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_midstream_error", "pace=30") }
    local n, h = 0, nil
    h = lu.chat_stream(c, { messages = MSGS }, function()
      n = n + 1
      if n == 3 then h:cancel() end
    end, O)
    luv.run()
    assert.equal(3, n)
    assert.truthy(srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("chat_stream_midstream_error/pace=30", 1, true)
    end, 5), "no abort in the server log")
    h:cancel()                       -- idempotent
  end)

  it("reports a callback that raises, cancels its request, and lets the others finish", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream", "pace=5") }
    local reported, mine, other = {}, {}, {}
    local opts = { uv = luv, on_error = function(msg) reported[#reported + 1] = msg end }
    -- on_error is each request's own: the first request on this client and
    -- loop (here, one that never fails) does not catch the others' reports
    lu.chat_stream(c, { messages = MSGS }, function(ev) other[#other + 1] = ev end,
                   { uv = luv, on_error = function(msg) mine[#mine + 1] = msg end })
    lu.chat_stream(c, { messages = MSGS }, function() error("boom in callback") end, opts)
    lu.chat_stream(c, { messages = MSGS }, function(ev) other[#other + 1] = ev end, opts)
    luv.run()
    assert.equal(1, #reported)
    assert.matches("boom in callback", reported[1])
    assert.equal(0, #mine)
    assert.equal("done", other[#other].type)
  end)

  it("raises at the caller's line, before sending anything, when there is no loop", function()
    local loaded, preload = package.loaded.luv, package.preload.luv
    package.loaded.luv, package.preload.luv = nil, function() error("luv hidden by the spec") end
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream", "stall=0,noloop") }
    local ok1, msg1 = pcall(function() local h = lu.chat_stream(c, { messages = MSGS }, print); return h end)
    local ok2, msg2 = pcall(function() local h = lu.chat(c, { messages = MSGS }, print); return h end)
    package.loaded.luv, package.preload.luv = loaded, preload
    assert.is_false(ok1)
    assert.matches("^spec/uv_spec%.lua:%d+: llamacpp.uv needs vim.uv, vim.loop or the luv module", msg1)
    assert.is_false(ok2)
    assert.matches("^spec/uv_spec%.lua:%d+: llamacpp.uv needs", msg2)
    assert.equal(0, util.hits(srv, "noloop"))
  end)

  it("chat calls back once with the result, or with the error", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream", "delay=50") }
    local calls = {}
    lu.chat(c, { messages = MSGS }, function(res, err) calls[#calls + 1] = { res, err } end, O)
    local down = llamacpp.new{ endpoint = "http://127.0.0.1:" .. util.closed_port() }
    lu.chat(down, { messages = MSGS }, function(res, err) calls[#calls + 1] = { res, err } end, O)
    luv.run()
    assert.equal(2, #calls)
    local ok, bad = calls[1][1] and calls[1] or calls[2], calls[1][1] and calls[2] or calls[1]
    assert.matches("^ Eight", ok[1].content)
    assert.is_nil(bad[1])
    assert.equal("connection", bad[2].kind)
  end)

  it("an error event ends the stream: nothing listening", function()
    local c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. util.closed_port() }
    local evs = {}
    lu.chat_stream(c, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, O)
    luv.run()
    assert.equal(1, #evs)
    assert.equal("connection", evs[1].error.kind)
  end)

  -- A uv whose handles count the calls of their callbacks (how often the
  -- loop woke llamacpp.uv up), noting how many events had been delivered.
  local function counting_uv(evs)
    local wakes = {}
    local function wrap(h)
      return setmetatable({}, { __index = function(_, k)
        local v = h[k]
        if type(v) ~= "function" then return v end
        return function(_, ...)
          if k ~= "start" then return v(h, ...) end
          local args, n = { ... }, select("#", ...)
          local f = args[n]                -- the callback is the last argument
          args[n] = function(...)
            wakes[#wakes + 1] = #evs
            return f(...)
          end
          return v(h, unpack(args, 1, n))
        end
      end })
    end
    return setmetatable({
      new_timer = function() return wrap(luv.new_timer()) end,
      new_poll = function(fd) return wrap(luv.new_poll(fd)) end,
      new_socket_poll = function(fd) return wrap(luv.new_socket_poll(fd)) end,
      new_idle = function() return wrap(luv.new_idle()) end,
      new_check = function() return wrap(luv.new_check()) end,
      new_prepare = function() return wrap(luv.new_prepare()) end,
    }, { __index = luv }), wakes
  end

  it("waits on sockets and timers, not by spinning: a stalled stream wakes the loop a few times", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream", "stall=1200"), idle_timeout = 2 }
    local evs = {}
    local uv, wakes = counting_uv(evs)
    lu.chat_stream(c, { messages = MSGS }, function(ev) evs[#evs + 1] = ev end, { uv = uv })
    luv.run()
    local last = evs[#evs]
    assert.equal("timeout", last.error.kind)
    assert.equal("idle", last.error.phase)
    assert.is_true(#evs >= 2, "no content before the stall")
    -- wake-ups once every event but the error was delivered: the stall.
    -- Today 2 (a timer of libcurl's, then the idle deadline); a loop
    -- polling every 10 ms would wake 200 times in these 2 s.
    local stalled = 0
    for _, n in ipairs(wakes) do
      if n == #evs - 1 then stalled = stalled + 1 end
    end
    assert.is_true(stalled >= 1, "the idle timeout did not come from a timer")
    assert.is_true(stalled <= 10, "woken " .. stalled .. " times during a 2 s stall")
    assert.is_true(#wakes <= 30, "woken " .. #wakes .. " times for one short stream")
  end)
end)
