-- Prompt progress: the request option `progress = true` (llama-server's
-- return_progress) and the progress events it brings, against real
-- llama-server captures (a 1450-token prompt read in batches of 64)
-- replayed over loopback, and the fake server's scripted progress.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local testing = require "llamacpp.testing"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local MSGS = { { role = "user", content = "Read this long text." } }

-- The progress events of evs, and the index of the first other event.
local function progress_of(evs)
  local out, first_other = {}, nil
  for i, ev in ipairs(evs) do
    if ev.type == "progress" then
      out[#out + 1] = ev
      assert.is_nil(first_other, "a progress event after event " .. tostring(first_other))
    elseif not first_other then
      first_other = i
    end
  end
  return out, first_other
end

-- What the capture holds: its prompt_progress objects, read with patterns.
local function captured(name)
  local out = {}
  for obj in util.body(util.fixture(name)):gmatch('"prompt_progress":(%b{})') do
    out[#out + 1] = require("cjson").decode(obj)
  end
  return out
end

local function check_sequence(ps, want)
  assert.equal(#want, #ps)
  for i, p in ipairs(ps) do
    assert.equal(want[i].processed, p.processed)
    assert.equal(want[i].total, p.total)
    assert.equal(want[i].cache, p.cached)
    assert.equal(want[i].time_ms, p.time_ms)
    assert.equal(ps[1].total, p.total)                       -- total is constant
    if i > 1 then assert.is_true(p.processed >= ps[i - 1].processed) end
  end
  assert.equal(ps[#ps].total, ps[#ps].processed)              -- read to the end
end

describe("progress", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function last_request()
    local reqs = srv:requests()
    return reqs[#reqs]
  end

  it("chat_stream{progress = true} yields the server's progress before the first token", function()
    local want = captured("chat_stream_progress")
    assert.equal(25, #want)
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_progress") }
    local evs = util.collect(c:chat_stream{ messages = MSGS, progress = true })
    local ps, first = progress_of(evs)
    check_sequence(ps, want)
    assert.same({ type = "progress", processed = 0, total = 1450, cached = 0, time_ms = 0 }, ps[1])
    assert.equal("content", evs[first].type)
    assert.equal("done", evs[#evs].type)
    assert.equal(util.expected("chat_stream_progress").content, evs[#evs].content)
    -- on the wire: llama-server's own field, and not ours
    local body = last_request().json
    assert.is_true(body.return_progress)
    assert.is_nil(body.progress)
  end)

  it("counts the cached part of the prompt", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_progress_cached") }
    local ps = progress_of(util.collect(c:chat_stream{ messages = MSGS, progress = true }))
    check_sequence(ps, captured("chat_stream_progress_cached"))
    assert.equal(1449, ps[1].cached)
    assert.equal(1449, ps[1].processed)
  end)

  it("completion_stream{progress = true}: the native stream's progress", function()
    local want = captured("completion_stream_progress")
    assert.equal(24, #want)
    local c = llamacpp.new{ endpoint = srv:replay("completion_stream_progress") }
    local evs = util.collect(c:completion_stream{ prompt = "word0 word1", progress = true })
    local ps, first = progress_of(evs)
    check_sequence(ps, want)
    assert.equal("content", evs[first].type)
    assert.equal("done", evs[#evs].type)
    local body = last_request().json
    assert.is_true(body.return_progress)
    assert.is_nil(body.progress)
  end)

  it("without the option nothing changes on the wire; whole answers never ask", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream") }
    util.collect(c:chat_stream{ messages = MSGS })
    local body = last_request().json
    assert.is_nil(body.return_progress)
    assert.is_nil(body.progress)
    c = llamacpp.new{ endpoint = srv:replay("chat_nonstream_progress_ignored") }
    assert.truthy(c:chat{ messages = MSGS, progress = true })
    body = last_request().json
    assert.is_nil(body.return_progress)   -- llama-server ignores it there: not sent
    assert.is_nil(body.progress)
    util.collect(c:chat_stream{ messages = MSGS, progress = false })
    assert.is_nil(last_request().json.return_progress)
  end)

  it("a stream cut after progress only is still retryable, with nothing partial", function()
    local data = util.fixture("chat_stream_progress")
    local last
    for i in data:gmatch("()prompt_progress") do last = i end
    local cut = data:find("\n\n\r\n", last, true) + 3            -- after the last progress chunk
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream_progress", "cut=" .. cut) }
    local evs = util.collect(c:chat_stream{ messages = MSGS, progress = true })
    local ps = progress_of(evs)
    assert.equal(25, #ps)
    local err = evs[#evs].error
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
    assert.equal("", err.partial)
  end)

  it("refuses a progress option that is not a boolean, at the caller's line", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream") }
    local ok, msg = pcall(c.chat_stream, c, { messages = MSGS, progress = 1 })
    assert.is_false(ok)
    assert.matches("progress_spec.lua:%d+: bad request: 'progress' must be a boolean", msg)
    ok, msg = pcall(c.completion_stream, c, { prompt = "x", progress = "yes" })
    assert.is_false(ok)
    assert.matches("'progress' must be a boolean", msg)
  end)

  it("the OpenAI provider sends no return_progress, and decodes it when the server sends it", function()
    local c = llamacpp.new{ provider = "openai", endpoint = srv:replay("chat_stream_progress") .. "/v1" }
    local evs = util.collect(c:chat_stream{ messages = MSGS, progress = true })
    assert.is_nil(last_request().json.return_progress)
    assert.equal(25, #progress_of(evs))   -- the replay answers with progress all the same
  end)

  describe("the fake server", function()
    local fake
    setup(function() fake = testing.start() end)
    teardown(function() fake:stop() end)

    it("scripts progress: prompt_tokens read in batches, from the cache on", function()
      fake:reply{ content = "Hi there.", prompt_tokens = 150, cached_tokens = 20, batch = 64 }
      local c = llamacpp.new{ endpoint = fake.endpoint }
      local evs = util.collect(c:chat_stream{ messages = MSGS, progress = true })
      local ps, first = progress_of(evs)
      local got = {}
      for i, p in ipairs(ps) do got[i] = p.processed; assert.equal(150, p.total); assert.equal(20, p.cached) end
      assert.same({ 20, 84, 148, 150 }, got)
      assert.equal("content", evs[first].type)
      assert.equal("Hi there.", evs[#evs].content)
      fake:reply{ content = "Hi." }                          -- no option: no progress
      assert.equal(0, #progress_of(util.collect(c:chat_stream{ messages = MSGS })))
    end)

    it("progress keeps a long prompt's stream alive past idle_timeout", function()
      -- 21 progress chunks 0.1 s apart: 2 s of prompt reading, idle_timeout 1 s
      fake:reply{ content = "Read.", prompt_tokens = 1280, batch = 64, pace = 0.1 }
      local c = llamacpp.new{ endpoint = fake.endpoint, idle_timeout = 1 }
      local evs = util.collect(c:chat_stream{ messages = MSGS, progress = true })
      assert.equal(21, #progress_of(evs))
      assert.equal("done", evs[#evs].type)
      assert.equal("Read.", evs[#evs].content)
    end)
  end)

  if has_luv then
    it("llamacpp.uv passes progress on, in order", function()
      local c = llamacpp.new{ endpoint = srv:replay("chat_stream_progress", "pace=1") }
      local evs = {}
      lu.chat_stream(c, { messages = MSGS, progress = true }, function(ev) evs[#evs + 1] = ev end,
                     { uv = luv })
      luv.run()
      check_sequence(progress_of(evs), captured("chat_stream_progress"))
      assert.equal("done", evs[#evs].type)
      local nevs = {}
      c = llamacpp.new{ endpoint = srv:replay("completion_stream_progress") }
      lu.completion_stream(c, { prompt = "x", progress = true }, function(ev) nevs[#nevs + 1] = ev end,
                           { uv = luv })
      luv.run()
      check_sequence(progress_of(nevs), captured("completion_stream_progress"))
    end)
  else
    it("llamacpp.uv passes progress on", function()
      pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv")
    end)
  end
end)
