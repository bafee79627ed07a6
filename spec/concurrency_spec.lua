-- Many transfers at once in one Lua state, one thread: one libcurl multi
-- handle per client (session), driven by any stream's next() or by
-- client:poll(). Against the fixture server over loopback.
local llamacpp = require "llamacpp"
local core = require "llamacpp.core"
local fixture = require "fixture.control"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "hi" } }

local function chunk(text)
  return cjson.encode{ choices = { { index = 0, delta = { content = text } } } }
end

-- A chat stream whose every token names its stream: "s<i>t<j> ".
local function unique_stream(i, n)
  local evs, chunks = {}, {}
  for j = 1, n do
    evs[#evs + 1] = chunk(("s%dt%d "):format(i, j))
    if j % 7 == 0 or j == n then        -- several events per HTTP chunk
      chunks[#chunks + 1] = fixture.sse_body(evs)
      evs = {}
    end
  end
  chunks[#chunks + 1] = fixture.sse_body{ '{"choices":[{"index":0,"finish_reason":"stop","delta":{}}]}', "[DONE]" }
  return fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil, { chunks = chunks })
end

local function expected_text(i, n)
  local out = {}
  for j = 1, n do out[j] = ("s%dt%d "):format(i, j) end
  return table.concat(out)
end

describe("concurrency", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("256 transfers on one session, each receiving exactly its own events", function()
    local N, EV = 256, 40
    for i = 1, N do srv:write("u" .. i, unique_stream(i, EV)) end
    local s = core.session()
    local ts, got, ended = {}, {}, 0
    for i = 1, N do
      ts[i] = s:open{ url = srv:replay("u" .. i, i % 2 == 0 and "pace=1" or "-") .. "/v1/chat/completions",
                      method = "POST", body = "{}", framing = "sse", proxy = "" }
      got[i] = {}
    end
    local rounds = 0
    while ended < N and rounds < 200000 do
      rounds = rounds + 1
      local progressed = false
      for i = 1, N do
        local t = ts[i]
        if t then
          local data, err = t:next(0)
          while data do
            if data ~= "[DONE]" then
              local o = cjson.decode(data)
              local c = o.choices and o.choices[1] and o.choices[1].delta.content
              if c then got[i][#got[i] + 1] = c end
            end
            progressed = true
            data, err = t:next(0)
          end
          if data == nil then
            assert.is_nil(err, "transfer " .. i .. ": " .. tostring(err))
            assert.equal(200, t:response().status)
            t:close()
            ts[i] = nil
            ended = ended + 1
          end
        end
      end
      if not progressed then s:step(50) end
    end
    assert.equal(N, ended)
    for i = 1, N do
      assert.equal(expected_text(i, EV), table.concat(got[i]), "transfer " .. i)
    end
  end)

  it("256 streams of one client, driven by client:poll", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_usage", "pace=1") }
    local want = require("spec.util").expected("chat_stream_usage")
    local streams, text, done = {}, {}, 0
    for i = 1, 256 do
      local st = c:open_stream{ messages = MSGS }
      streams[st] = i
      text[i] = {}
    end
    local polls = 0
    while done < 256 and polls < 100000 do
      polls = polls + 1
      for _, st in ipairs(c:poll(1000)) do
        local i = streams[st]
        local ev = st:next(0)
        while ev do
          if ev.type == "content" then text[i][#text[i] + 1] = ev.content end
          if ev.type == "done" or ev.type == "error" then
            assert.equal("done", ev.type, tostring(ev.error))
            done = done + 1
          end
          ev = st:next(0)
        end
      end
    end
    assert.equal(256, done)
    for i = 1, 256 do assert.equal(want.content, table.concat(text[i]), "stream " .. i) end
    assert.same({}, c:poll(0))     -- nothing left
  end)

  it("a slow transfer does not hold back a fast one, and closing one leaves the others", function()
    local s = core.session()
    local function open(name, opts)
      return s:open{ url = srv:replay(name, opts) .. "/v1/chat/completions", method = "POST",
                     body = "{}", framing = "sse", proxy = "" }
    end
    local slow1 = open("chat_stream_midstream_error", "pace=100")
    local slow2 = open("chat_stream_midstream_error", "pace=101")
    -- both slow ones are mid-answer before the fast one starts
    assert.is_string((slow1:next(10000)))
    assert.is_string((slow2:next(10000)))
    local fast = open("chat_stream_usage")
    local n = 0
    while true do                         -- blocking reads of the fast one
      local data, err = fast:next()
      if data == nil then assert.is_nil(err); break end
      n = n + 1
    end
    assert.is_true(n > 10)
    -- meanwhile the slow ones got a few of their ~300 events, queued
    -- (take: what is queued, without driving the session further); the
    -- bound is a hang guard: 100 events are 10 s of the slow answer
    local queued = 0
    while slow1:take() do queued = queued + 1 end
    assert.is_true(queued < 100, "slow transfer had " .. queued .. " events")
    slow1:close()
    assert.truthy(srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("pace=100", 1, true)
    end, 5), "closing did not abort the slow transfer")
    local more = 0
    for _ = 1, 3 do
      local data = slow2:next(5000)
      if data then more = more + 1 end
    end
    assert.equal(3, more)                 -- the other goes on
    slow2:close()
  end)

  it("reuses one connection for sequential requests", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream") }
    local before = #srv:requests()
    for _ = 1, 5 do assert(c:chat{ messages = MSGS }) end
    local reqs = srv:requests()
    local conns = {}
    for k = before + 1, #reqs do conns[reqs[k].conn] = true end
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.equal(1, n)
    assert.equal(5, #reqs - before)
  end)
end)
