-- One set of figures after every request: `stats` on done events and on
-- whole results, from each provider's own numbers (llama-server's usage
-- and timings, Ollama's durations, Anthropic's usage) read independently
-- from the captures here, and the client's clock for first_token_ms and
-- total_ms.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"
local core = require "llamacpp.core"

local MSGS = { { role = "user", content = "Say hello." } }

-- The last JSON object of a capture's body holding `key`.
local function last_with(name, key)
  local found
  local body = util.body(util.fixture(name))
  for data in (body .. "\n\n"):gmatch("data: ([^\n]*)\n\n") do
    if data:find('"' .. key .. '"', 1, true) then found = cjson.decode(data) end
  end
  return found or cjson.decode(body)
end

local function check_llama(st, obj)
  local t, u = obj.timings, obj.usage
  assert.equal(u and u.prompt_tokens or obj.tokens_evaluated, st.input_tokens)
  assert.equal(u and u.completion_tokens or obj.tokens_predicted, st.output_tokens)
  assert.equal(u and u.prompt_tokens_details.cached_tokens or t.cache_n, st.cached_tokens)
  assert.equal(t.prompt_ms, st.prompt_ms)
  assert.equal(t.predicted_ms, st.generation_ms)
  assert.equal(t.prompt_per_second, st.prompt_tokens_per_s)
  assert.equal(t.predicted_per_second, st.generation_tokens_per_s)
  assert.is_true(st.total_ms >= 0)
end

describe("stats", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function client(name, extra)
    local o = { endpoint = srv:replay(name) }
    for k, v in pairs(extra or {}) do o[k] = v end
    return llamacpp.new(o)
  end

  it("llama-server stream: usage and timings, 425 of 442 prompt tokens from the cache", function()
    local evs = util.collect(client("cache_turn2"):chat_stream{ messages = MSGS })
    local st = evs[#evs].stats
    check_llama(st, last_with("cache_turn2", "usage"))
    assert.equal(442, st.input_tokens)
    assert.equal(425, st.cached_tokens)
    assert.is_number(st.first_token_ms)
    assert.is_true(st.first_token_ms >= 0 and st.first_token_ms <= st.total_ms)
  end)

  it("llama-server whole answer: the same figures, and no first token it cannot know", function()
    local res = assert(client("cache_turn2_nonstream"):chat{ messages = MSGS })
    check_llama(res.stats, last_with("cache_turn2_nonstream", "usage"))
    assert.is_nil(res.stats.first_token_ms)
  end)

  it("native /completion, streamed and whole", function()
    local evs = util.collect(client("completion_stream_progress"):completion_stream{ prompt = "x" })
    local st = evs[#evs].stats
    check_llama(st, last_with("completion_stream_progress", "timings"))
    assert.equal(1428, st.input_tokens)
    assert.is_true(st.first_token_ms <= st.total_ms)
    local res = assert(client("completion_native_nonstream"):completion{ prompt = "x" })
    check_llama(res.stats, last_with("completion_native_nonstream", "timings"))
  end)

  it("first_token_ms runs to the first token, not to the progress before it", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_progress", "pace=20") }
    local before = core.now()
    local s = c:open_stream{ messages = MSGS, progress = true }
    local opened = core.now()
    local last_progress
    local done
    while true do
      local ev = s:next()
      if not ev then break end
      if ev.type == "progress" then last_progress = core.now() end
      if ev.type == "done" then done = ev end
    end
    assert.truthy(done and last_progress)
    -- first token at t0 + first_token_ms, t0 between `before` and `opened`
    assert.is_true(done.stats.first_token_ms + opened >= last_progress)
    assert.is_true(done.stats.total_ms >= done.stats.first_token_ms)
    assert.is_true(before <= opened)
  end)

  it("Ollama: its durations and counts", function()
    local obj = cjson.decode(util.body(util.fixture("ollama_chat")))
    local res = assert(client("ollama_chat", { provider = "ollama" }):chat{ messages = MSGS })
    local st = res.stats
    assert.equal(obj.prompt_eval_count, st.input_tokens)
    assert.equal(obj.eval_count, st.output_tokens)
    assert.equal(obj.prompt_eval_duration / 1e6, st.prompt_ms)
    assert.equal(obj.eval_duration / 1e6, st.generation_ms)
    assert.near(obj.eval_count / (obj.eval_duration / 1e9), st.generation_tokens_per_s, 1e-6)
    assert.near(obj.prompt_eval_count / (obj.prompt_eval_duration / 1e9), st.prompt_tokens_per_s, 1e-6)
    assert.is_nil(st.cached_tokens)                         -- Ollama does not say
  end)

  it("Anthropic: the whole prompt is input plus cache reads and writes; no timings made up", function()
    local raw = util.fixture("anthropic_message")          -- a cache read of 9 (same length)
      :gsub('"cache_read_input_tokens":0', '"cache_read_input_tokens":9')
    srv:write("anthropic_cached", raw)
    local res = assert(client("anthropic_cached", { provider = "anthropic" }):chat{ messages = MSGS })
    local u = cjson.decode(util.body(raw)).usage
    assert.equal(u.input_tokens + 9 + u.cache_creation_input_tokens, res.stats.input_tokens)
    assert.equal(9, res.stats.cached_tokens)
    assert.equal(u.output_tokens, res.stats.output_tokens)
    assert.is_nil(res.stats.prompt_ms)
    assert.is_nil(res.stats.generation_tokens_per_s)
    local evs = util.collect(client("anthropic_stream", { provider = "anthropic" }):chat_stream{ messages = MSGS })
    local st = evs[#evs].stats
    assert.equal(evs[#evs].usage.output_tokens, st.output_tokens)
    assert.is_true(st.first_token_ms <= st.total_ms)
  end)

  it("a routed stream's done carries the answering deployment's stats", function()
    local r = require("llamacpp.router").new{ tiers = { t = {
      { name = "one", endpoint = util.down() },
      { name = "two", endpoint = srv:replay("cache_turn2") } } } }
    local evs = util.collect(r:chat_stream{ messages = MSGS })
    assert.equal("two", evs[#evs].provider)
    check_llama(evs[#evs].stats, last_with("cache_turn2", "usage"))
  end)
end)
