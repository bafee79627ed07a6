-- think_tags = "split": a leading <think>...</think> that a template left
-- in the content goes to reasoning, with the tags cut at every byte, on
-- llama-server's plain-token fast path and on decoded chunks, streamed
-- and whole; the default leaves the content as it is.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"
local testing = require "llamacpp.testing"
local util = require "spec.util"
local cjson = require "cjson"

local MSGS = { { role = "user", content = "Think, then answer." } }
local TEXT = "  <think>Let me think: a <b> tag, a </thin slip.</think>\n\nHello <think>x</think> world."
local REASONING = "Let me think: a <b> tag, a </thin slip."
local CONTENT = "Hello <think>x</think> world."

-- llama-server's exact token chunk (the C core's template fast path).
local function token_chunk(piece)
  return '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":' .. cjson.encode(piece) ..
         '}}],"created":1,"id":"chatcmpl-t","model":"m","system_fingerprint":"b0","object":"chat.completion.chunk"}'
end
local LAST = '{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,"id":"chatcmpl-t",' ..
             '"model":"m","system_fingerprint":"b0","object":"chat.completion.chunk"}'

local function stream_of(pieces)
  local events = {}
  for i, p in ipairs(pieces) do events[i] = token_chunk(p) end
  events[#events + 1] = LAST
  events[#events + 1] = "[DONE]"
  return fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, fixture.sse_body(events))
end

local function texts(evs)
  return util.text_of(evs, "reasoning"), util.text_of(evs, "content")
end

describe("think_tags", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function run(pieces, req_extra)
    srv:write("think", stream_of(pieces))
    local c = llamacpp.new{ endpoint = srv:replay("think") }
    local req = { messages = MSGS }
    for k, v in pairs(req_extra or {}) do req[k] = v end
    return util.collect(c:chat_stream(req))
  end

  it("splits a leading block, the text cut in two at every byte", function()
    for k = 1, #TEXT - 1 do
      local evs = run({ TEXT:sub(1, k), TEXT:sub(k + 1) }, { think_tags = "split" })
      local r, c = texts(evs)
      local done = evs[#evs]
      assert.equal(REASONING, r, "cut at " .. k)
      assert.equal(CONTENT, c, "cut at " .. k)
      assert.equal(CONTENT, done.content, "cut at " .. k)
      assert.equal(REASONING, done.reasoning, "cut at " .. k)
    end
  end)

  it("splits it when every byte is its own token, events in order", function()
    local pieces = {}
    for i = 1, #TEXT do pieces[i] = TEXT:sub(i, i) end
    local evs = run(pieces, { think_tags = "split" })
    local seen_content = false
    for _, ev in ipairs(evs) do
      if ev.type == "content" then seen_content = true end
      if ev.type == "reasoning" then assert.is_false(seen_content, "reasoning after content") end
    end
    assert.same({ REASONING, CONTENT }, { texts(evs) })
  end)

  it("leaves the content as it is by default, with keep, and without a leading block", function()
    local evs = run({ TEXT })
    assert.equal(TEXT, evs[#evs].content)
    assert.is_nil(evs[#evs].reasoning)
    evs = run({ TEXT }, { think_tags = "keep" })
    assert.equal(TEXT, evs[#evs].content)
    for _, t in ipairs{ "Hi <think>no</think>", "<thinking>no</thinking> x", "<thin", " " } do
      evs = run({ t:sub(1, 3), t:sub(4) }, { think_tags = "split" })
      assert.equal(t, evs[#evs].content, t)
      assert.equal("", (texts(evs)), t)
    end
  end)

  it("a block that never closes (the length limit) is all reasoning", function()
    local evs = run({ "<think>still thin", "king </th" }, { think_tags = "split" })
    assert.same({ "still thinking </th", "" }, { texts(evs) })
    assert.equal("", evs[#evs].content)
  end)

  describe("on decoded chunks and whole answers (the fake server)", function()
    local fake
    setup(function() fake = testing.start() end)
    teardown(function() fake:stop() end)

    it("streams and whole answers alike", function()
      local pieces = {}
      for i = 1, #TEXT, 3 do pieces[#pieces + 1] = TEXT:sub(i, i + 2) end
      local c = llamacpp.new{ endpoint = fake.endpoint }
      fake:reply{ tokens = pieces }
      local evs = util.collect(c:chat_stream{ messages = MSGS, think_tags = "split" })
      assert.same({ REASONING, CONTENT }, { texts(evs) })
      fake:reply{ content = TEXT }
      local res = assert(c:chat{ messages = MSGS, think_tags = "split" })
      assert.equal(CONTENT, res.content)
      assert.equal(REASONING, res.reasoning)
      fake:reply{ content = TEXT }
      res = assert(c:chat{ messages = MSGS })
      assert.equal(TEXT, res.content)
      -- and on the wire, nothing of ours
      local reqs = fake:requests()
      for _, r in ipairs(reqs) do assert.is_nil(r.json.think_tags) end
    end)
  end)
end)
