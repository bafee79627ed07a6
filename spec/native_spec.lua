-- llama-server's native /completion and /infill translation
-- (providers/native.lua), pure Lua: recorded answers and streams of
-- spec/fixtures fed to it by hand. Over HTTP, through client:completion
-- and client:completion_stream, they are in surface_spec.lua.
local native = require "llamacpp.providers.native"
local util = require "spec.util"
local cjson = require "cjson"

-- The data of every event of a recorded stream.
local function events(name)
  local out = {}
  for data in util.body(util.fixture(name)):gmatch("data: ([^\n]*)\n\n") do out[#out + 1] = data end
  return out
end

-- Feeds a stream's events to a new decoder: the decoder, the events it
-- pushed, and the first Error feed returned.
local function feed_all(datas, opts)
  local d, evs = native.decoder(opts), {}
  local function push(ev) evs[#evs + 1] = ev end
  for _, data in ipairs(datas) do
    local e, ev = d:feed(data, nil, push)
    if ev then push(ev) end
    if e then return d, evs, e end
  end
  return d, evs
end

describe("llamacpp.providers.native", function()
  it("reads a whole answer: content, stop reason, counts, timings", function()
    local raw = cjson.decode(util.body(util.fixture("completion_native_nonstream")))
    local res = assert(native.result(raw))
    assert.equal(raw.content, res.content)
    assert.equal("length", res.stop_reason)           -- stop_type "limit"
    assert.equal("limit", res.stop_type)
    assert.is_nil(res.stopping_word)                  -- "" in the answer
    assert.same({ input_tokens = 4, output_tokens = 8 }, res.usage)
    assert.equal(8, res.tokens_predicted)
    assert.equal(4, res.tokens_evaluated)
    assert.equal(8, res.timings.predicted_n)
    assert.equal("models/tiny.gguf", res.model)
    assert.equal(raw, res.raw)
  end)

  it("maps stop_type: eos and word are a stop, limit a length, none nothing", function()
    for st, want in pairs{ eos = "stop", word = "stop", limit = "length", none = false, other = "other" } do
      local res = native.result{ content = "", stop_type = st }
      assert.equal(want or nil, res.stop_reason)
    end
    assert.is_nil(native.result{ content = "" }.stop_reason)
  end)

  it("refuses an answer without content as a protocol error", function()
    local res, err = native.result{ error = "no" }
    assert.is_nil(res)
    assert.equal("protocol", err.kind)
    assert.equal("llama-server answer has no content", err.message)
    assert.equal('{"error":"no"}', err.body)
    assert.equal("protocol", select(2, native.result("text")).kind)
  end)

  it("streams content until the event with stop: true, then done from that event", function()
    local datas = events("completion_native_stream")
    local d, evs, e = feed_all(datas)
    assert.is_nil(e)
    assert.is_true(d.finished)
    local want = {}
    for _, data in ipairs(datas) do want[#want + 1] = cjson.decode(data).content end
    local got = {}
    for _, ev in ipairs(evs) do
      assert.equal("content", ev.type)
      assert.is_nil(ev.probs)
      got[#got + 1] = ev.content
    end
    assert.equal(table.concat(want), table.concat(got))
    local done = d:done()
    assert.equal("done", done.type)
    assert.equal(table.concat(want), done.content)
    assert.equal("length", done.stop_reason)
    assert.equal("limit", done.stop_type)
    assert.same({ input_tokens = 4, output_tokens = 8 }, done.usage)
    assert.equal(8, done.timings.predicted_n)
    assert.equal("models/tiny.gguf", done.model)
    assert.is_true(done.raw.stop)
    assert.is_nil(done.reasoning)
    assert.is_nil(done.tool_calls)
  end)

  it("gives each token's probabilities with n_probs", function()
    local _, evs = feed_all(events("completion_native_n_probs_stream"))
    assert.is_true(#evs > 0)
    for _, ev in ipairs(evs) do assert.is_number(ev.probs[1].logprob) end
  end)

  it("keeps the text so far for errors, or none with assemble = false", function()
    local datas = events("completion_native_stream")
    local d = feed_all({ datas[1], datas[2] })
    assert.is_false(d.finished)
    assert.equal(cjson.decode(datas[1]).content .. cjson.decode(datas[2]).content, d:partial())
    d = feed_all(datas, { assemble = false })
    assert.is_nil(d:partial())
    assert.is_nil(d:done().content)
  end)

  it("ends the stream on an error event or malformed JSON", function()
    local _, evs, e = feed_all{ '{"content":"a","stop":false}',
                                '{"error":{"code":500,"message":"boom","type":"server_error"}}' }
    assert.equal(1, #evs)
    assert.equal("http", e.kind)
    assert.equal(500, e.status)
    assert.equal("llama-server error (500): boom", e.message)
    _, _, e = feed_all{ "{not json" }
    assert.equal("protocol", e.kind)
  end)
end)
