-- llamacpp.testing's caching server (testing.start{cache = ...}): real
-- HTTP to a fake llama-server that keeps a prompt per slot and chooses
-- slots as llama-server does (llamacpp.testing.cache). The unit counts
-- below are worked out by hand from the rendering the docs give
-- ("<|ROLE|>" before each message's words, "<|assistant|>" last).
local llamacpp = require "llamacpp"
local testing = require "llamacpp.testing"
local cache = require "llamacpp.testing.cache"
local socket = require "socket"

-- A conversation: its system prompt, its messages so far.
local function conv(system, first)
  return { system = system, messages = { { role = "user", content = first } } }
end

-- One turn: sends the conversation (chat, or chat_stream when streamed),
-- appends the answer, and returns the figures the client read.
local function turn(c, cv, streamed, extra)
  local req = { system = cv.system, messages = cv.messages }
  for k, v in pairs(extra or {}) do req[k] = v end
  local r
  if streamed then
    for ev in c:chat_stream(req) do r = ev end
    assert.equal("done", r.type, r.error and tostring(r.error))
  else
    r = assert(c:chat(req))
  end
  cv.messages[#cv.messages + 1] = { role = "assistant", content = r.content }
  return { content = r.content, cached = r.stats.cached_tokens, input = r.usage.input_tokens,
           prompt_n = r.timings.prompt_n, cache_n = r.timings.cache_n }
end

-- "p1 p2 ... pn": a first message long enough that two conversations'
-- common "<|system|>" marker stays under the similarity threshold (0.1).
local function words(p, n)
  local out = {}
  for i = 1, n do out[i] = p .. i end
  return table.concat(out, " ")
end

local function say(cv, text) cv.messages[#cv.messages + 1] = { role = "user", content = text } end

describe("llamacpp.testing cache server", function()
  local fake
  after_each(function() if fake then fake:stop() end fake = nil end)

  it("reports cache_n = the common prefix with the slot's prompt, prompt_n = the rest", function()
    fake = testing.start{ cache = { slots = 2 } }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    -- <|system|> You are terse. <|user|> one two three <|assistant|>: 9 units
    local a = conv("You are terse.", "one two three")
    local t1 = turn(c, a)
    assert.same({ content = "ok 1", cached = 0, input = 9, prompt_n = 9, cache_n = 0 }, t1)
    -- the slot holds the 9 units and "ok 1": 11; the next prompt is those
    -- 11, <|user|> four five, <|assistant|>: 15, of which 11 cached
    say(a, "four five")
    local t2 = turn(c, a)
    assert.same({ content = "ok 2", cached = 11, input = 15, prompt_n = 4, cache_n = 11 }, t2)
    -- what the server logged agrees with the prefix computed from the bodies
    local reqs = fake:requests()
    assert.equal(2, #reqs)
    local slot_prompt = cache.units(reqs[1].json)
    for _, u in ipairs(cache.answer_units("ok 1")) do slot_prompt[#slot_prompt + 1] = u end
    assert.equal(cache.common_prefix(slot_prompt, cache.units(reqs[2].json)), reqs[2].cache.cache_n)
    assert.equal(4, reqs[2].cache.prompt_n)
    assert.equal(15, reqs[2].cache.prompt_tokens)
    assert.equal(reqs[1].cache.slot, reqs[2].cache.slot)
    assert.equal("similarity", reqs[2].cache.selected)
    local totals = fake:cache_totals()
    assert.same({ answers = 2, prompt_tokens = 24, cache_n = 11, prompt_n = 13, lru = 1 }, totals)
  end)

  it("evaluates the last unit of a prompt it holds whole, as llama-server", function()
    fake = testing.start{ cache = {} }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local req = { messages = { { role = "user", content = "same prompt twice" } } }
    assert(c:chat(req))
    local r = assert(c:chat(req))
    assert.equal(5, r.usage.input_tokens)
    assert.equal(4, r.stats.cached_tokens)
    assert.equal(1, r.timings.prompt_n)
    -- cache_prompt = false: nothing from the cache
    req.cache_prompt = false
    r = assert(c:chat(req))
    assert.equal(0, r.stats.cached_tokens)
    assert.equal(5, r.timings.prompt_n)
  end)

  it("sends a new conversation to the least recently used slot", function()
    fake = testing.start{ cache = { slots = 2 } }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    turn(c, conv("alpha", words("a", 10)))
    turn(c, conv("beta", words("b", 10)))
    turn(c, conv("gamma", words("g", 10)))
    local reqs = fake:requests()
    -- slots never used tie; llama-server takes the last of equals (`<=`)
    assert.same({ 1, 0, 1 }, { reqs[1].cache.slot, reqs[2].cache.slot, reqs[3].cache.slot })
    for i = 1, 3 do assert.equal("lru", reqs[i].cache.selected) end
    -- gamma took alpha's slot: only the "<|system|>" marker in common
    assert.equal(1, reqs[3].cache.cache_n)
    assert.equal(0, reqs[1].cache.cache_n)
  end)

  it("keeps the caches of two conversations alternating on two slots", function()
    fake = testing.start{ cache = { slots = 2 } }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local a, b = conv("alpha system", words("a", 10)), conv("beta system", words("b", 10))
    local last = {}
    for round = 1, 3 do
      for name, cv in pairs({ a = a, b = b }) do
        local t = turn(c, cv)
        if round > 1 then
          -- the previous prompt of this conversation and its answer's two words
          assert.equal(last[name] + 2, t.cached)
          assert.equal(t.input - t.cached, t.prompt_n)
        end
        last[name] = t.input
        say(cv, "more words " .. round)
      end
    end
    local slot_of = {}
    for i, r in ipairs(fake:requests()) do
      local who = r.json.messages[1].content
      if i > 2 then assert.equal("similarity", r.cache.selected) end
      slot_of[who] = slot_of[who] or r.cache.slot
      assert.equal(slot_of[who], r.cache.slot)
    end
    assert.are_not.equal(slot_of["alpha system"], slot_of["beta system"])
  end)

  it("evicts when three conversations share two slots", function()
    fake = testing.start{ cache = { slots = 2 } }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local a, b, g = conv("alpha", words("a", 10)), conv("beta", words("b", 10)), conv("gamma", words("g", 10))
    for _, cv in ipairs({ a, b, g }) do turn(c, cv) end
    for _, cv in ipairs({ a, b, g }) do
      say(cv, "next")
      local t = turn(c, cv)
      -- each second turn finds its slot taken by another conversation
      assert.equal(1, t.cached)
      assert.equal(t.input - 1, t.prompt_n)
    end
    assert.equal(6, fake:cache_totals().lru)
  end)

  it("chooses by similarity only above the threshold", function()
    -- a prompt sharing 3 of its 44 units with slot 1's prompt: 0.068
    local function run(similarity)
      fake = testing.start{ cache = { slots = 2, similarity = similarity } }
      local c = llamacpp.new{ endpoint = fake.endpoint }
      turn(c, conv("S", "x y z"))
      turn(c, conv("S", words("w", 40)))
      local r = fake:requests()[2].cache
      fake:stop()
      fake = nil
      return r
    end
    local r = run(0.1)
    assert.same({ 0, "lru", 0 }, { r.slot, r.selected, r.cache_n })
    r = run(0.05)
    assert.same({ 1, "similarity", 3 }, { r.slot, r.selected, r.cache_n })
    assert.near(3 / 44, r.similarity, 1e-9)
  end)

  it("gives the same figures streamed and blocking", function()
    local function run(streamed)
      fake = testing.start{ cache = { slots = 2, words = 5 } }
      local c = llamacpp.new{ endpoint = fake.endpoint }
      local a, b = conv("alpha", words("a", 10)), conv("beta", words("b", 10))
      local out = {}
      for i = 1, 3 do
        out[#out + 1] = turn(c, a, streamed)
        out[#out + 1] = turn(c, b, streamed)
        say(a, "turn " .. i)
        say(b, "turn " .. i)
      end
      out[#out + 1] = fake:cache_totals()
      fake:stop()
      fake = nil
      return out
    end
    local blocking, streamed = run(false), run(true)
    assert.same(blocking, streamed)
    assert.equal("ok 6 word3 word4 word5", blocking[6].content)
    -- a's second turn: its first prompt (14 units) and the 5 words answered
    assert.equal(14, blocking[1].input)
    assert.equal(19, blocking[3].cached)
  end)

  it("gives queued replies the cache figures, answers the rest with 'ok N', and reports prompt_ms", function()
    fake = testing.start{ cache = { per_token = 0.001 } }
    fake:reply{ content = "queued answer here" }
    fake:reply{ content = "own figures", prompt_tokens = 50, cached_tokens = 7 }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local a = conv(nil, "hello")            -- <|user|> hello <|assistant|>
    local t = turn(c, a)
    assert.same({ "queued answer here", 0, 3 }, { t.content, t.cached, t.prompt_n })
    say(a, "again")
    t = turn(c, a)
    assert.same({ "own figures", 7, 50 }, { t.content, t.cached, t.input })
    say(a, "and again")
    local r = assert(c:chat{ messages = a.messages })
    assert.equal("ok 3", r.content)
    -- 3 + 3 ("queued answer here") + 3 + 2 ("own figures") + 4 = 15 units,
    -- the slot held 3 + 3 + 3 + 2 = 11 (the reply's own figures do not
    -- change what the slot holds)
    assert.equal(11, r.stats.cached_tokens)
    assert.near(4 * 0.001 * 1000, r.timings.prompt_ms, 1e-9)
    local h = c:health()
    assert.equal("ok", h and h.status)
  end)

  it("makes a request wait while every slot is busy, and frees the slot of an aborted answer", function()
    fake = testing.start{ cache = { slots = 1 } }
    fake:reply{ content = "never sent", delay = 60 }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local s1 = c:open_stream{ messages = { { role = "user", content = "first request" } } }
    -- drive s1 until the server has given it the slot (its answer then waits 60 s)
    local taken
    for _ = 1, 500 do
      assert.is_false(s1:next(0))
      taken = fake:cache_totals().answers == 1
      if taken then break end
      socket.sleep(0.01)
    end
    assert.is_true(taken, "first request not received")
    local s2 = c:open_stream{ messages = { { role = "user", content = "first request too" } } }
    -- drive s2 until the server has its request (it then waits for the slot)
    local seen
    for _ = 1, 500 do
      assert.is_false(s2:next(0))
      seen = #fake:requests() >= 2
      if seen then break end
      socket.sleep(0.01)
    end
    assert.is_true(seen, "second request not received")
    assert.is_false(s2:next(0))
    s1:close()
    local done
    for _ = 1, 1000 do
      local ev = s2:next(100)
      if ev == nil then break end
      if ev then done = ev end
      if done and (done.type == "done" or done.type == "error") then break end
    end
    s2:close()
    assert.equal("done", done.type, done.error and tostring(done.error))
    local recs = fake:requests()
    assert.equal(2, #recs)
    assert.is_true(recs[2].cache.waited)
    -- the aborted answer left its prompt in the slot: <|user|> first request
    assert.equal(3, recs[2].cache.cache_n)
    assert.equal(0, recs[2].cache.slot)
  end)

  it("checks its options", function()
    assert.has_error(function() testing.start{ cache = { slot = 2 } } end)
    assert.has_error(function() testing.start{ cache = { slots = 0 } } end)
    assert.has_error(function() testing.start{ cache = { per_token = -1 } } end)
    assert.has_error(function() testing.start{ cache = { similarity = 2 } } end)
    assert.has_error(function() testing.start{ cache = 4 } end)
  end)
end)
