-- client:chat_stream / open_stream against the fixture server: real
-- llama-server streams replayed byte for byte, and injected faults.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Say hello." } }
local LUA54 = _VERSION == "Lua 5.4" and type(jit) ~= "table"

local function chunk(delta, extra)
  local o = { choices = { { index = 0, finish_reason = cjson.null, delta = delta } },
              object = "chat.completion.chunk", id = "chatcmpl-x", model = "m" }
  for k, v in pairs(extra or {}) do o[k] = v end
  return cjson.encode(o)
end

local SSE = { { "Content-Type", "text/event-stream" } }

local function stream_fixture(events, opts)
  return fixture.http_response(200, SSE, nil,
    { chunks = { fixture.sse_body(events) .. ((opts and opts.tail) or "") } })
end

local text_of = util.text_of

describe("llamacpp.Stream", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function client(name, opts, extra)
    local o = { endpoint = srv:replay(name, opts) }
    for k, v in pairs(extra or {}) do o[k] = v end
    return llamacpp.new(o)
  end

  it("delivers every token of real captures, then one done with usage", function()
    for _, name in ipairs{ "chat_stream_usage", "chat_stream", "chat_stream_length",
                           "chat_unicode_stream", "chat_stream_stopword",
                           "chat_json_schema_stream", "chat_max_tokens_0_stream",
                           "chat_ctx_shift_or_limit_stream", "auth_ok_stream" } do
      local want = util.expected(name)
      local evs = util.collect(client(name):chat_stream{ messages = MSGS })
      local last = evs[#evs]
      assert.equal("done", last.type, name)
      assert.equal(want.content, text_of(evs), name)
      assert.equal(want.content, last.content, name)
      assert.equal(want.finish, last.stop_reason, name)
      local n = 0
      for _, ev in ipairs(evs) do if ev.type == "content" then n = n + 1 end end
      assert.equal(want.ncontent, n, name)
      if want.usage then
        assert.equal(want.usage.prompt_tokens, last.usage.input_tokens, name)
        assert.equal(want.usage.completion_tokens, last.usage.output_tokens, name)
      end
      assert.is_table(last.timings, name)
    end
  end)

  it("keeps no text with assemble = false, the events unchanged", function()
    local want = util.expected("chat_stream_usage")
    local evs = util.collect(client("chat_stream_usage"):chat_stream({ messages = MSGS }, { assemble = false }))
    assert.equal(want.content, text_of(evs))
    assert.equal("done", evs[#evs].type)
    assert.is_nil(evs[#evs].content)
    assert.equal(want.usage.completion_tokens, evs[#evs].usage.output_tokens)
    local s = client("chat_stream", "cut=1200"):open_stream({ messages = MSGS }, { assemble = false })
    local last
    repeat last = s:next() until last.type == "error"
    assert.equal("network", last.error.kind)
    assert.is_nil(last.error.partial)
    assert.has_error(function() client("x"):chat_stream({ messages = MSGS }, { assmble = false }) end)
    assert.has_error(function() client("x"):open_stream({ messages = MSGS }, { assemble = 1 }) end)
  end)

  it("assembles long streams exactly (more than 256 tokens)", function()
    local want = util.expected("speed_stream_512")
    local evs = util.collect(client("speed_stream_512"):chat_stream{ messages = MSGS })
    assert.equal(512, want.ncontent)
    assert.equal(want.content, text_of(evs))
    assert.equal(want.content, evs[#evs].content)
  end)

  it("reads llama-server's plain token chunks exactly as a JSON decoder does", function()
    -- the C template path (escapes undone in C) against cjson, the oracle
    local texts = { [[plain]], [[ caf\u00e9]], [[a\nb]], [[q\"uote]], [[back\\slash]], [[sl\/ash]],
                    [[\ud83d\ude00 smile]], [[tab\tcr\r]], [[\u0011ctl]], "日本語", "",
                    [[\b\f]], [[x\u00]], [[bad\xescape]], [[lone\ud800]], [[end\]],
                    "raw\ttab", "ctl\1x", "esc\\n then raw\tab", "del\127ok" }
    local evs, want = {}, {}
    for i, t in ipairs(texts) do
      local data = '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"' .. t ..
                   '"}}],"created":1795628704,"id":"chatcmpl-x","model":"m","system_fingerprint":"b0",' ..
                   '"object":"chat.completion.chunk"}'
      evs[i] = data
      local ok, o = pcall(cjson.decode, data)
      want[i] = ok and o.choices[1].delta.content or false
    end
    for i, data in ipairs(evs) do
      srv:write("tpl" .. i, stream_fixture{ chunk{ role = "assistant", content = cjson.null }, data, "[DONE]" })
      local got = util.collect(client("tpl" .. i):chat_stream{ messages = MSGS })
      if want[i] == false then                -- malformed: the same protocol error
        assert.equal("protocol", got[#got].error and got[#got].error.kind, texts[i])
      elseif want[i] == "" then
        assert.equal("done", got[1].type, texts[i])
      else
        assert.equal("content", got[1].type, texts[i])
        assert.equal(want[i], got[1].content, texts[i])
        assert.equal(want[i], got[2].content, texts[i])
      end
    end
  end)

  it("gives the same events when the bytes arrive one at a time", function()
    local want = util.expected("chat_stream_usage")
    local evs = util.collect(client("chat_stream_usage", "drip"):chat_stream{ messages = MSGS })
    assert.equal("done", evs[#evs].type)
    assert.equal(want.content, evs[#evs].content)
    assert.equal(want.usage.completion_tokens, evs[#evs].usage.output_tokens)
  end)

  it("asks for a stream with usage", function()
    util.collect(client("chat_stream_usage"):chat_stream{ messages = MSGS,
      stream_options = { foo = 1 } })
    local reqs = srv:requests()
    local r = reqs[#reqs]
    local b = cjson.decode(r.body)
    assert.equal(true, b.stream)
    assert.equal(true, b.stream_options.include_usage)
    assert.equal(1, b.stream_options.foo)
    assert.equal(2048, b.max_tokens)
    assert.equal("text/event-stream", r.headers.accept)
  end)

  it("turns reasoning_content deltas into reasoning events", function()
    srv:write("reason", stream_fixture{
      chunk{ role = "assistant", content = cjson.null },
      chunk{ reasoning_content = "Let me " }, chunk{ reasoning_content = "think." },
      chunk{ content = "Hi" },
      chunk({}, { choices = { { index = 0, finish_reason = "stop", delta = {} } } }),
      "[DONE]" })
    local evs = util.collect(client("reason"):chat_stream{ messages = MSGS })
    assert.same({ type = "reasoning", content = "Let me " }, evs[1])
    assert.same({ type = "reasoning", content = "think." }, evs[2])
    assert.same({ type = "content", content = "Hi" }, evs[3])
    assert.equal("done", evs[4].type)
    assert.equal("Let me think.", evs[4].reasoning)
    assert.equal("Hi", evs[4].content)
    assert.equal("stop", evs[4].stop_reason)
    assert.equal(4, #evs)
  end)

  it("streams tool-call fragments and assembles them on done", function()
    local evs = util.collect(client("tc_auto_stream_usage"):chat_stream{ messages = MSGS })
    local last = evs[#evs]
    assert.equal("done", last.type)
    assert.equal("tool_calls", last.stop_reason)
    assert.is_table(last.tool_calls)
    local args = {}
    for _, ev in ipairs(evs) do
      if ev.type == "tool_call" then
        args[ev.index + 1] = (args[ev.index + 1] or "") .. ev.arguments
        assert.is_string(ev.id)
        assert.is_string(ev.name)
      end
    end
    assert.equal(#args, #last.tool_calls)
    for i, tc in ipairs(last.tool_calls) do
      assert.equal(args[i], tc.arguments)
      assert.is_table(cjson.decode(tc.arguments))
    end
  end)

  it("ends with a protocol error on a malformed JSON event, keeping the text", function()
    srv:write("badjson", stream_fixture{ chunk{ content = "Hello" }, '{"choices":[', "[DONE]" })
    local evs = util.collect(client("badjson"):chat_stream{ messages = MSGS })
    assert.equal(2, #evs)
    assert.equal("Hello", evs[1].content)
    local e = evs[2].error
    assert.equal("error", evs[2].type)
    assert.equal("protocol", e.kind)
    assert.equal("Hello", e.partial)
    assert.is_false(e.retryable)
  end)

  it("reports a stream without [DONE] as truncated, with the partial text", function()
    srv:write("nodone", stream_fixture{ chunk{ content = "Hel" }, chunk{ content = "lo" } })
    local evs = util.collect(client("nodone"):chat_stream{ messages = MSGS })
    assert.equal(3, #evs)
    local e = evs[3].error
    assert.equal("truncated", e.kind)
    assert.equal("Hello", e.partial)
    assert.is_false(e.retryable)
  end)

  it("reports an error object inside a 200 stream as an http error (real capture)", function()
    local want = util.expected("chat_stream_midstream_error")
    local evs = util.collect(client("chat_stream_midstream_error"):chat_stream{ messages = MSGS })
    local last = evs[#evs]
    assert.equal("error", last.type)
    assert.equal("http", last.error.kind)
    assert.equal(500, last.error.status)
    assert.equal("server_error", last.error.code)
    assert.equal(want.content, last.error.partial)
    assert.matches("^llama%-server error %(500%): The model produced output", last.error.message)
  end)

  it("reports a connection cut mid-stream as a network error, keeping the text", function()
    local evs = util.collect(client("chat_stream", "cut=1200"):chat_stream{ messages = MSGS })
    local last = evs[#evs]
    assert.equal("error", last.type)
    assert.equal("network", last.error.kind)
    assert.is_true(#last.error.partial > 0)
    assert.equal(text_of(evs), last.error.partial)
    assert.is_false(last.error.retryable)     -- events already reached the caller
  end)

  it("reports a cut before any event as a retryable network error", function()
    local evs = util.collect(client("chat_stream", "cut=60"):chat_stream{ messages = MSGS })
    assert.equal(1, #evs)
    assert.equal("network", evs[1].error.kind)
    assert.is_true(evs[1].error.retryable)
    assert.equal("", evs[1].error.partial)
  end)

  it("times out when the server stalls past idle_timeout", function()
    local c = client("chat_stream", "stall=1200", { idle_timeout = 0.3 })
    local evs = util.collect(c:chat_stream{ messages = MSGS })
    local e = evs[#evs].error
    assert.equal("timeout", e.kind)
    assert.equal("idle", e.phase)
    assert.is_true(#e.partial > 0)
    assert.matches("timed out %(idle%)", e.message)
  end)

  it("times out before the first byte only when first_byte_timeout is set", function()
    local c = client("chat_stream", "delay=1500", { first_byte_timeout = 0.2 })
    local evs = util.collect(c:chat_stream{ messages = MSGS })
    assert.equal(1, #evs)
    assert.equal("timeout", evs[1].error.kind)
    assert.equal("first_byte", evs[1].error.phase)
    assert.is_true(evs[1].error.retryable)
    -- a short idle timeout does not apply before the reply starts
    c = client("chat_stream", "delay=500", { idle_timeout = 0.1 })
    evs = util.collect(c:chat_stream{ messages = MSGS })
    assert.equal("done", evs[#evs].type)
  end)

  it("times out with phase total under timeout", function()
    local c = client("chat_stream", "pace=200", { timeout = 0.3 })
    local evs = util.collect(c:chat_stream{ messages = MSGS })
    assert.equal("timeout", evs[#evs].error.kind)
    assert.equal("total", evs[#evs].error.phase)
  end)

  it("refuses an event larger than max_event with bounded memory", function()
    srv:write("huge", stream_fixture{ chunk{ content = "a" }, chunk{ content = string.rep("x", 200000) },
                                      "[DONE]" })
    local evs = util.collect(client("huge", nil, { max_event = 65536 }):chat_stream{ messages = MSGS })
    local e = evs[#evs].error
    assert.equal("protocol", e.kind)
    assert.equal("EVENT_TOO_LARGE", e.code)
    assert.equal("a", e.partial)
  end)

  it("reports HTTP errors before the stream as error events", function()
    local evs = util.collect(client("auth_missing_key"):chat_stream{ messages = MSGS })
    assert.equal(1, #evs)
    assert.equal(401, evs[1].error.status)
    assert.equal("authentication_error", evs[1].error.code)
    evs = util.collect(client("err_context_exceeded_stream"):chat_stream{ messages = MSGS })
    assert.equal(400, evs[1].error.status)
    assert.equal(256, evs[1].error.n_ctx)
  end)

  it("reports a 200 that is not an event stream as a protocol error", function()
    local evs = util.collect(client("chat_nonstream"):chat_stream{ messages = MSGS })
    assert.equal(1, #evs)
    assert.equal("protocol", evs[1].error.kind)
    assert.equal("BAD_CONTENT_TYPE", evs[1].error.code)
  end)

  it("reports nothing listening as an error event", function()
    local c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. util.closed_port() }
    local evs = util.collect(c:chat_stream{ messages = MSGS })
    assert.equal(1, #evs)
    assert.equal("connection", evs[1].error.kind)
    assert.matches("^llama%-server not running at", evs[1].error.message)
  end)

  it("works when only the first value is kept", function()
    local it_ = client("chat_stream"):chat_stream{ messages = MSGS }
    local n, last = 0, nil
    for ev in it_ do n = n + 1; last = ev end
    assert.equal("done", last.type)
    assert.is_nil(it_())   -- and stays ended
  end)

  -- next(0) on a stalled stream whose session has no timer due (no
  -- timeouts set) must return false at once, every time. In a child, with
  -- a hang guard: a blocking next(0) would never return there.
  it("next(0) never blocks, also when no timer of the session is due", function()
    local wait = util.spawn(([[
local c = require("llamacpp").new{ endpoint = %q, connect_timeout = 0, idle_timeout = 0 }
local s = c:open_stream{ messages = { { role = "user", content = "x" } } }
io.stdout:setvbuf("no")
for i = 1, 20 do
  assert(s:next(0) == false)
  require("socket").sleep(0.05)
  io.write("RETURNED ", i, "\n")
end
s:close()
]]):format(srv:replay("chat_stream", "stall=0")), 30)
    local out = wait()
    assert.matches("RETURNED 20\n", out, 1, true)
  end)

  it("next(0) returns false while nothing is ready, then the events", function()
    local s = client("chat_stream", "delay=300"):open_stream{ messages = MSGS }
    assert.is_false(s:next(0))
    assert.is_false(s:next(50))
    local ev
    repeat ev = s:next(100) until ev ~= false
    assert.equal("content", ev.type)
    repeat ev = s:next() until ev.type == "done"
    assert.is_nil(s:next())
    assert.is_nil(s:next(0))
    s:close()
  end)

  it("close is idempotent, and next after close raises", function()
    local s = client("chat_stream"):open_stream{ messages = MSGS }
    assert.equal("content", s:next().type)
    s:close()
    s:close()
    assert.has_error(function() s:next() end, "stream is closed")
    assert.matches("closed", tostring(s))
  end)

  it("close aborts the transfer: the server sees the disconnect", function()
    local s = client("chat_stream_midstream_error", "pace=20"):open_stream{ messages = MSGS }
    assert.equal("content", s:next().type)
    s:close()
    local rec = srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("chat_stream_midstream_error/pace=20", 1, true)
    end, 5)
    assert.truthy(rec, "no abort in the server log")
  end)

  it("a dropped stream is aborted by the garbage collector", function()
    local s = client("chat_stream_midstream_error", "pace=21"):open_stream{ messages = MSGS }
    assert.equal("content", s:next().type)
    s = nil  -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.truthy(srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("pace=21", 1, true)
    end, 5), "no abort in the server log")
  end)

  it("break out of the for loop closes the transfer on Lua 5.4", function()
    if not LUA54 then
      pending("not on " .. _VERSION .. (type(jit) == "table" and " (LuaJIT)" or "") ..
              ": the generic for closes its 4th value only on Lua 5.4")
      return
    end
    local c = client("chat_stream_midstream_error", "pace=22")
    local f = assert(load([[
      local c, msgs = ...
      local n = 0
      for ev in c:chat_stream{ messages = msgs } do
        n = n + 1
        if n == 2 then break end
      end
      return n
    ]]))
    assert.equal(2, f(c, MSGS))
    -- no collectgarbage: the close must come from the loop itself
    assert.truthy(srv:wait_for(function(r)
      return r.event == "abort" and r.path:find("pace=22", 1, true)
    end, 5), "no abort in the server log")
  end)

  it("reuses the connection for sequential streams", function()
    local c = client("chat_stream_usage")
    util.collect(c:chat_stream{ messages = MSGS })
    util.collect(c:chat_stream{ messages = MSGS })
    local reqs = srv:requests()
    local a, b = reqs[#reqs - 1], reqs[#reqs]
    assert.equal(a.conn, b.conn)
    assert.equal(a.n + 1, b.n)
  end)
end)
