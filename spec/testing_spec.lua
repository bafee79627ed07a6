-- llamacpp.testing: the fake llama-server users start in their own specs,
-- with replies queued in order and a log of what their code sent.
local llamacpp = require "llamacpp"
local testing = require "llamacpp.testing"
local util = require "spec.util"

local MSGS = { { role = "user", content = "hi" } }

describe("llamacpp.testing", function()
  local fake
  before_each(function() fake = testing.start() end)
  after_each(function() fake:stop() end)

  local function collect(c, req)
    local evs = {}
    for ev in c:chat_stream(req) do evs[#evs + 1] = ev end
    return evs
  end

  it("answers chats in order, streamed or not as asked, and logs the requests", function()
    fake:reply{ content = "Hello there, friend." }
    fake:reply{ content = "Streamed reply.", prompt_tokens = 7 }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local res = assert(c:chat{ system = "Be brief.", messages = MSGS })
    assert.equal("Hello there, friend.", res.content)
    assert.equal("stop", res.stop_reason)
    local evs = collect(c, { messages = MSGS })
    local text = {}
    for _, ev in ipairs(evs) do if ev.type == "content" then text[#text + 1] = ev.content end end
    assert.same({ "Streamed", " reply." }, text)
    local done = evs[#evs]
    assert.equal("done", done.type)
    assert.equal("Streamed reply.", done.content)
    assert.equal(7, done.usage.input_tokens)
    assert.equal(2, done.usage.output_tokens)
    local reqs = fake:requests()
    assert.equal(2, #reqs)
    assert.equal("/script/v1/chat/completions", reqs[1].path)
    local body = require("cjson").decode(reqs[1].body)
    assert.equal("Be brief.", body.messages[1].content)
    assert.equal(true, require("cjson").decode(reqs[2].body).stream)
    -- nothing queued: a clear 500
    local _, err = c:chat{ messages = MSGS }
    assert.equal(500, err.status)
    assert.matches("no reply queued", err.message)
  end)

  it("scripts tool calls, streamed and not", function()
    fake:reply{ tool_calls = { { name = "add", arguments = { a = 1, b = 2 }, id = "c1" } } }
    fake:reply{ tool_calls = { { name = "add", arguments = '{"a": 3, "b": 4}' } } }
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local res = assert(c:chat{ messages = MSGS, tools = {} })
    assert.equal("tool_calls", res.stop_reason)
    assert.equal("add", res.tool_calls[1].name)
    assert.equal("c1", res.tool_calls[1].id)
    assert.same({ a = 1, b = 2 }, llamacpp.tool_arguments(res.tool_calls[1]))
    local evs = collect(c, { messages = MSGS, tools = {} })
    local done = evs[#evs]
    assert.equal("tool_calls", done.stop_reason)
    assert.same({ a = 3, b = 4 }, llamacpp.tool_arguments(done.tool_calls[1]))
  end)

  it("scripts HTTP errors, delays, disconnects, errors inside a stream, and missing [DONE]", function()
    fake:reply{ status = 503, error = "Loading model" }
    fake:reply{ content = "one two three four", disconnect_after = 2 }
    fake:reply{ content = "one two three", error_after = 1, error = "boom" }
    fake:reply{ content = "one two", no_done = true }
    -- far later than the first byte timeout of the client that asks for it
    fake:reply{ content = "late", delay = 30 }
    -- no first byte timeout here: on a busy machine a reply the fake
    -- server sends at once may still take more than a moment to arrive
    local c = llamacpp.new{ endpoint = fake.endpoint }
    local _, err = c:chat{ messages = MSGS }
    assert.equal(503, err.status)
    assert.equal("unavailable_error", err.code)
    assert.is_true(err.retryable)
    local evs = collect(c, { messages = MSGS })
    assert.equal("network", evs[#evs].error.kind)
    assert.equal("one two", evs[#evs].error.partial)
    evs = collect(c, { messages = MSGS })
    assert.equal("http", evs[#evs].error.kind)
    assert.equal("one", evs[#evs].error.partial)
    evs = collect(c, { messages = MSGS })
    assert.equal("truncated", evs[#evs].error.kind)
    evs = collect(llamacpp.new{ endpoint = fake.endpoint, first_byte_timeout = 0.3 }, { messages = MSGS })
    assert.equal("timeout", evs[#evs].error.kind)
    assert.equal("first_byte", evs[#evs].error.phase)
  end)

  it("drives an agent loop end to end (examples/agent.lua)", function()
    fake:reply{ tool_calls = { { name = "calc", arguments = { expression = "12.5 + 30" } } } }
    fake:reply{ content = "12.5 + 30 = 42.5." }
    local lua = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
    local p = io.popen(util.CLEAN_ENV .. " LLAMACPP_ENDPOINT=" .. fake.endpoint ..
                       " timeout 60 " .. lua .. " examples/agent.lua 'What is 12.5 + 30?' 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("rc=0", out)
    assert.matches("%[step 1%] calc%(", out)
    assert.matches("12%.5 %+ 30 = 42%.5%.", out)
    local reqs = fake:requests()
    assert.equal(2, #reqs)
    local second = require("cjson").decode(reqs[2].body)
    local last = second.messages[#second.messages]
    assert.equal("tool", last.role)
    assert.equal('{"value":42.5}', last.content)
  end)

  it("refuses a reply that is not a table", function()
    assert.has_error(function() fake:reply("hello") end)
  end)
end)
