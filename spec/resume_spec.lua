-- Resumable streams: `resumable = true` sends X-Conversation-Id, and a
-- stream cut mid-way reattaches with GET /v1/stream/ID?from=<bytes parsed>
-- (llama-server's server-stream.cpp; captures resume_* in ../shared/wire).
-- The fake server keeps each such stream and cuts its connections where a
-- test says (reply `cuts`): after every byte of a stream the caller gets
-- the uncut stream's text, one done, nothing repeated.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local MSGS = { { role = "user", content = "Say hello." } }
-- a multi-byte character, an escaped quote and a newline in the tokens
local TOKENS = { "Hé", "llo ", "wörld", " \"q\"\n", "タ!" }
local TEXT = table.concat(TOKENS)

local function texts(evs)
  local c, n = {}, { content = 0, done = 0, error = 0 }
  for _, ev in ipairs(evs) do
    n[ev.type] = (n[ev.type] or 0) + 1
    if ev.type == "content" then c[#c + 1] = ev.content end
  end
  return table.concat(c), n
end

describe("resumable streams", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function seq()
    local l = srv:log()
    return l[#l] and l[#l].seq or 0
  end

  local function client(o)
    o = o or {}
    o.endpoint = srv.endpoint
    return llamacpp.new(o)
  end

  -- The body length of the scripted stream (the server counts its bytes).
  local function body_length()
    local c = client()
    srv:reply{ tokens = TOKENS }
    local evs = util.collect(c:chat_stream{ messages = MSGS, conversation_id = "measure" })
    assert.equal(TEXT, (texts(evs)))
    local live = assert(c:live_streams{ "measure", "nope" })
    assert.is_nil(live.nope)
    assert.is_true(live.measure.done)
    return live.measure.bytes
  end

  it("sends X-Conversation-Id only when asked, never our options", function()
    local c = client()
    srv:reply{ tokens = TOKENS }
    util.collect(c:chat_stream{ messages = MSGS })
    local reqs = srv:requests()
    assert.is_nil(reqs[#reqs].headers["x-conversation-id"])
    srv:reply{ tokens = TOKENS }
    local it, s = c:chat_stream{ messages = MSGS, resumable = true }
    local evs = util.collect(it, s)
    reqs = srv:requests()
    local id = reqs[#reqs].headers["x-conversation-id"]
    assert.matches("^%x+$", id)
    assert.equal(32, #id)
    assert.equal(id, s.conversation_id)
    assert.equal(0, evs[#evs].resumed)
    for _, k in ipairs{ "resumable", "conversation_id", "resume" } do
      assert.is_nil(reqs[#reqs].json[k])
    end
  end)

  it("a cut after any byte: the same text, one done, nothing repeated", function()
    local n = body_length()
    assert.is_true(n > 500)
    local c = client()
    for cut = 1, n - 1 do
      srv:reply{ tokens = TOKENS, cuts = { cut } }
      local evs = util.collect(c:chat_stream{ messages = MSGS, conversation_id = "c" .. cut })
      local text, count = texts(evs)
      assert.equal(TEXT, text, "cut at byte " .. cut)
      assert.equal(1, count.done, "cut at byte " .. cut)
      assert.equal(#TOKENS, count.content, "cut at byte " .. cut)
      assert.equal(TEXT, evs[#evs].content)
      assert.equal(1, evs[#evs].resumed, "cut at byte " .. cut)
      assert.equal(1, evs[#evs].stats.resumed)
    end
  end)

  it("resumes again and again, also after a clean end of a cut body", function()
    local n = body_length()
    for _, clean in ipairs{ false, true } do
      srv:reply{ tokens = TOKENS, cuts = { 100, 300, 600, n - 10 }, cut_clean = clean }
      local evs = util.collect(client():chat_stream{ messages = MSGS, resumable = true })
      assert.equal(TEXT, (texts(evs)))
      assert.equal(4, evs[#evs].resumed)
      assert.is_true(util.hits(srv, "/v1/stream/", "GET") >= 4)
    end
  end)

  it("a reattach from the byte after the last whole event", function()
    srv:reply{ tokens = TOKENS, cuts = { 400 } }
    local since = seq()
    util.collect(client():chat_stream{ messages = MSGS, conversation_id = "offset" })
    local get
    for _, r in ipairs(srv:requests(since)) do
      if r.method == "GET" then get = r end
    end
    local from = tonumber(get.path:match("from=(%d+)"))
    assert.equal("/script/v1/stream/offset?from=" .. from, get.path)
    assert.is_true(from <= 400 and from > 0)
  end)

  it("an idle timeout is a cut too", function()
    srv:reply{ tokens = TOKENS, pace = 1 }   -- 1 s between pieces, idle_timeout 0.2 s
    local evs = util.collect(client{ idle_timeout = 0.2 }:chat_stream{ messages = MSGS, resumable = true })
    assert.equal(TEXT, (texts(evs)))
    assert.is_true(evs[#evs].resumed >= 1)
  end)

  it("a stream the server no longer has ends truncated, saying why, with what came", function()
    srv:reply{ tokens = TOKENS, cuts = { 600 }, forget = true }
    local evs = util.collect(client():chat_stream{ messages = MSGS, conversation_id = "gone" })
    local last = evs[#evs]
    assert.equal("error", last.type)
    local e = last.error
    assert.equal("truncated", e.kind)
    assert.equal("NOT_RESUMED", e.code)
    assert.matches("no longer has stream gone", e.message)
    assert.equal((texts(evs)), e.partial)
    assert.is_true(#e.partial > 0)
    assert.equal("gone", e.conversation_id)
  end)

  it("an offset the buffer lost ends truncated with the server's words", function()
    srv:reply{ tokens = TOKENS, cuts = { 600 }, buffer = 10 }
    local evs = util.collect(client():chat_stream{ messages = MSGS, resumable = true })
    local e = evs[#evs].error
    assert.equal("NOT_RESUMED", e.code)
    assert.matches("Stream offset lost", e.message)
  end)

  it("gives up after resume.attempts reattaches that bring nothing", function()
    -- every read of the stream is cut before its next event is whole
    srv:reply{ tokens = TOKENS, cuts = { 500, 501, 502, 503, 504, 505 } }
    local c = client()
    local evs = util.collect(c:chat_stream{ messages = MSGS, resume = { attempts = 2 } })
    local e = evs[#evs].error
    assert.equal("truncated", e.kind)
    assert.matches("2 attempts in [%d.]+ s failed", e.message)
    srv:reply{ tokens = TOKENS, cuts = { 500 } }
    evs = util.collect(c:chat_stream{ messages = MSGS, resume = { attempts = 0 } })
    assert.matches("resuming is off", evs[#evs].error.message)
  end)

  it("a server that is down before the stream began: not resumed, as before", function()
    local c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. util.closed_port() }
    local evs = util.collect(c:chat_stream{ messages = MSGS, resumable = true })
    assert.equal("connection", evs[#evs].error.kind)
  end)

  it("closing a stream still generating cancels it (DELETE); an ended one not", function()
    srv:reply{ tokens = TOKENS, pace = 0.2 }
    local s = client():open_stream{ messages = MSGS, conversation_id = "leave" }
    assert.equal("content", s:next().type)
    s:close()
    assert.truthy(srv:wait_for(function(r) return r.event == "cancel" and r.id == "leave" end, 5))
    srv:reply{ tokens = TOKENS }
    local since = seq()
    s = client():open_stream{ messages = MSGS, conversation_id = "ended" }
    repeat local ev = s:next() until ev == nil
    s:close()
    for _, r in ipairs(srv:log(since)) do assert.is_not.equal("cancel", r.event) end
  end)

  it("detach() leaves a stream without cancelling it: its id and offset go on elsewhere", function()
    srv:reply{ tokens = TOKENS, pace = 0.1 }
    local c = client()
    local s = c:open_stream{ messages = MSGS, conversation_id = "detached" }
    local first = s:next()
    assert.equal("content", first.type)
    local since = seq()
    local id, from = s:detach()
    assert.equal("detached", id)
    assert.equal(s:offset(), from)
    assert.is_true(from > 0)
    local ok, err = pcall(s.next, s)
    assert.is_false(ok)
    assert.matches("stream is closed", err)
    s:close()                                   -- already left: no DELETE either
    local rest = util.collect(c:resume_stream(id, { from = from }))
    assert.equal(TEXT, first.content .. texts(rest))
    for _, r in ipairs(srv:log(since)) do assert.is_not.equal("cancel", r.event) end
    -- nothing to resume: closed as by close()
    local plain = c:open_stream{ messages = MSGS }
    assert.is_nil(plain:detach())
    srv:reply{ tokens = TOKENS }
    local done = c:open_stream{ messages = MSGS, conversation_id = "over" }
    repeat local ev = done:next() until ev == nil
    assert.is_nil(done:detach())
  end)

  it("can_resume(): llama-server can, the other providers cannot", function()
    assert.is_true(client():can_resume())
    for _, p in ipairs{ "openai", "ollama", "anthropic" } do
      assert.is_false(llamacpp.new{ provider = p, endpoint = srv.endpoint }:can_resume(), p)
    end
  end)

  it("resume_stream reads a stream again from a byte; live_streams says what is there", function()
    srv:reply{ tokens = TOKENS }
    local c = client()
    util.collect(c:chat_stream{ messages = MSGS, conversation_id = "again" })
    local all = util.collect(c:resume_stream("again"))
    assert.equal(TEXT, (texts(all)))
    assert.equal("done", all[#all].type)
    local evs = util.collect(c:resume_stream("nothing-here"))
    assert.equal("NOT_RESUMED", evs[#evs].error.code)
    assert.same({}, (c:live_streams{ "nothing-here" }))
  end)

  it("offset(): the bytes of the events taken; resume_stream from there gives the rest", function()
    local c = client()
    for _, cuts in ipairs{ {}, { 350 } } do
      for k = 1, #TOKENS do              -- k content events taken
        srv:reply{ tokens = TOKENS, cuts = cuts }
        local id = "off" .. #cuts .. "-" .. k
        local s = c:open_stream{ messages = MSGS, conversation_id = id }
        assert.equal(0, s:offset())        -- nothing taken yet
        local got, prev = {}, 0
        for _ = 1, k do
          local ev = s:next()
          if ev.type == "content" then got[#got + 1] = ev.content end
          assert.is_true(s:offset() > prev)
          prev = s:offset()
        end
        local from = s:offset()
        -- this reader goes away without a word (a process that died)
        local rest = util.collect(c:resume_stream(id, { from = from }))
        assert.equal("done", rest[#rest].type, id)
        local text = table.concat(got) .. texts(rest)
        assert.equal(TEXT, text, id)
      end
    end
    local plain = client():open_stream{ messages = MSGS }
    assert.is_nil(plain:offset())
    plain:close()
  end)

  it("on the loop: resume_stream goes on from a handle's offset", function()
    if not has_luv then
      print("skipped: luv is not installed for this Lua")
      return
    end
    local c = client()
    srv:reply{ tokens = TOKENS, pace = 0.05 }
    local got, h, id, from = {}, nil, nil, nil
    h = lu.chat_stream(c, { messages = MSGS, resumable = true }, function(ev)
      if ev.type == "content" and not from then got[#got + 1] = ev.content end
      if #got == 2 and not from then id, from = h.conversation_id, h:offset() end
    end, { uv = luv })
    luv.run()
    assert.is_string(id)
    assert.is_true(from > 0)
    local rest = {}
    lu.resume_stream(c, id, { from = from }, function(ev) rest[#rest + 1] = ev end, { uv = luv })
    luv.run()
    assert.equal("done", rest[#rest].type)
    assert.equal(TEXT, table.concat(got) .. texts(rest))
  end)

  it("on the loop: detach() leaves the generation to the server, no callback after it", function()
    if not has_luv then
      print("skipped: luv is not installed for this Lua")
      return
    end
    local c = client()
    srv:reply{ tokens = TOKENS, pace = 0.1 }
    local got, h, id, from, after = {}, nil, nil, nil, 0
    h = lu.chat_stream(c, { messages = MSGS, resumable = true }, function(ev)
      if id then after = after + 1 return end
      if ev.type == "content" then got[#got + 1] = ev.content end
      if #got == 2 then id, from = h:detach() end
    end, { uv = luv })
    local since = seq()
    luv.run()
    assert.equal(0, after)
    assert.is_string(id)
    assert.equal(h.conversation_id, id)
    assert.is_true(from > 0)
    local rest = {}
    lu.resume_stream(c, id, { from = from }, function(ev) rest[#rest + 1] = ev end, { uv = luv })
    luv.run()
    assert.equal(TEXT, table.concat(got) .. texts(rest))
    for _, r in ipairs(srv:log(since)) do assert.is_not.equal("cancel", r.event) end
    -- not resumable: cancelled as by cancel()
    srv:reply{ tokens = TOKENS, pace = 0.1 }
    local h2
    h2 = lu.chat_stream(c, { messages = MSGS }, function() assert.is_nil(h2:detach()) end, { uv = luv })
    luv.run()
    assert.is_true(h2.cancelled)
  end)

  it("bad options are refused at the caller's line; other providers cannot resume", function()
    local c = client()
    local function raises(req, pat, f)
      local ok, err = pcall(f or c.chat_stream, c, req)
      assert.is_false(ok)
      assert.matches(pat, err)
    end
    raises({ messages = MSGS, resumable = "yes" }, "'resumable' must be a boolean")
    raises({ messages = MSGS, conversation_id = "a b" }, "'conversation_id' must be")
    raises({ messages = MSGS, resume = { attempts = 1.5 } }, "'resume.attempts' must be an integer")
    raises({ messages = MSGS, resume = { tries = 1 } }, "unknown 'resume' field 'tries'")
    raises({ messages = MSGS, resumable = false, conversation_id = "x" }, "contradicts")
    raises({ messages = MSGS, resumable = true }, "'resumable' is for streams", c.chat)
    raises({ prompt = "x", resumable = true }, "'resumable' is for streams", c.completion)
    for _, p in ipairs{ "openai", "ollama", "anthropic" } do
      local o = llamacpp.new{ provider = p, endpoint = srv.endpoint }
      local ok, err = pcall(o.chat_stream, o, { messages = MSGS, resumable = true })
      assert.is_false(ok)
      assert.matches("cannot resume a stream", err)
    end
  end)

  it("completion_stream resumes too (native stream, no [DONE])", function()
    srv:reply{ tokens = TOKENS, cuts = { 300 } }
    local evs = util.collect(client():completion_stream{ prompt = "x", resumable = true })
    assert.equal(TEXT, (texts(evs)))
    assert.equal(1, evs[#evs].resumed)
  end)

  it("on the loop: resumes without blocking it", function()
    if not has_luv then
      print("skipped: luv is not installed for this Lua")
      return
    end
    local n = body_length()
    srv:reply{ tokens = TOKENS, cuts = { 200, n - 5 } }
    local evs, ticks = {}, 0
    local timer = luv.new_timer()
    timer:start(1, 1, function() ticks = ticks + 1 end)
    lu.chat_stream(client(), { messages = MSGS, resumable = true }, function(ev)
      evs[#evs + 1] = ev
      if ev.type == "done" or ev.type == "error" then timer:stop(); timer:close() end
    end, { uv = luv })
    luv.run()
    assert.equal(TEXT, (texts(evs)))
    assert.equal(2, evs[#evs].resumed)
  end)

  it("on the loop: a reattach that waits (backoff) wakes the loop; cancel sends DELETE", function()
    if not has_luv then
      print("skipped: luv is not installed for this Lua")
      return
    end
    -- two reads that bring nothing: the third reattach waits 200 ms
    srv:reply{ tokens = TOKENS, cuts = { 500, 501, 502 } }
    local evs = {}
    lu.chat_stream(client(), { messages = MSGS, resumable = true }, function(ev)
      evs[#evs + 1] = ev
    end, { uv = luv })
    luv.run()
    assert.equal(TEXT, (texts(evs)))
    assert.equal("done", evs[#evs].type)
    srv:reply{ tokens = TOKENS, pace = 0.2 }
    local h
    h = lu.chat_stream(client(), { messages = MSGS, conversation_id = "loop-leave" }, function(ev)
      if ev.type == "content" then h:cancel() end
    end, { uv = luv })
    luv.run()
    assert.truthy(srv:wait_for(function(r) return r.event == "cancel" and r.id == "loop-leave" end, 5))
  end)
  describe("through a router", function()
    local router = require "llamacpp.router"

    it("a stream cut after its first events reattaches to the same deployment", function()
      local r = router.new{ tiers = { t = { { name = "one", endpoint = srv.endpoint },
                                            { name = "two", endpoint = srv.endpoint } } } }
      srv:reply{ tokens = TOKENS, cuts = { 400 } }
      local since = seq()
      local evs = util.collect(r:chat_stream{ tier = "t", messages = MSGS, resumable = true })
      local text, n = texts(evs)
      assert.equal(TEXT, text)
      assert.equal(1, n.done)
      local done = evs[#evs]
      assert.equal("one", done.provider)
      assert.equal(1, done.resumed)
      assert.equal(1, done.stats.resumed)
      assert.equal(0, #done.attempts)
      assert.equal(1, util.hits(srv, "/v1/stream/", "GET", since))
      -- no second generation: the same one, resumed
      assert.equal(1, util.hits(srv, "/chat/completions", "POST", since))
    end)

    it("a stream that cannot resume after its first event ends there, never fails over", function()
      local r = router.new{ tiers = { t = { { name = "one", endpoint = srv.endpoint },
                                            { name = "two", endpoint = srv.endpoint } } } }
      srv:reply{ tokens = TOKENS, cuts = { 600 }, forget = true }
      local evs = util.collect(r:chat_stream{ tier = "t", messages = MSGS, conversation_id = "r-gone" })
      local last = evs[#evs]
      assert.equal("error", last.type)
      assert.equal("NOT_RESUMED", last.error.code)
      assert.equal("one", last.provider)
      assert.equal((texts(evs)), last.error.partial)
    end)

    it("a mixed tier resumes where it can: the others get the request without it", function()
      local r = router.new{ tiers = {
        t = { { name = "down", endpoint = "http://127.0.0.1:" .. util.closed_port() },
              { name = "compat", provider = "openai", endpoint = srv.endpoint, model = "m" } },
        l = { { name = "gone", endpoint = "http://127.0.0.1:" .. util.closed_port() },
              { name = "llama", endpoint = srv.endpoint } } } }
      srv:reply{ tokens = TOKENS }
      local evs = util.collect(r:chat_stream{ tier = "t", messages = MSGS, conversation_id = "mixed" })
      assert.equal(TEXT, (texts(evs)))
      assert.equal("compat", evs[#evs].provider)
      local reqs = srv:requests()
      assert.is_nil(reqs[#reqs].headers["x-conversation-id"])
      assert.is_nil(reqs[#reqs].json.conversation_id)
      srv:reply{ tokens = TOKENS, cuts = { 300 } }
      evs = util.collect(r:chat_stream{ tier = "l", messages = MSGS, conversation_id = "mixed2" })
      assert.equal(TEXT, (texts(evs)))
      assert.equal("llama", evs[#evs].provider)
      assert.equal(1, evs[#evs].resumed)
      local ok, err = pcall(r.chat, r, { tier = "l", messages = MSGS, resumable = true })
      assert.is_false(ok)
      assert.matches("'resumable' is for streams: use chat_stream", err)
    end)

    it("on the loop: router_stream resumes too", function()
      if not has_luv then
        print("skipped: luv is not installed for this Lua")
        return
      end
      local r = router.new{ tiers = { t = { { name = "one", endpoint = srv.endpoint } } } }
      srv:reply{ tokens = TOKENS, cuts = { 250 } }
      local evs = {}
      lu.router_stream(r, { tier = "t", messages = MSGS, resumable = true }, function(ev)
        evs[#evs + 1] = ev
      end, { uv = luv })
      luv.run()
      assert.equal(TEXT, (texts(evs)))
      assert.equal(1, evs[#evs].resumed)
      assert.equal("one", evs[#evs].provider)
    end)
  end)
end)
