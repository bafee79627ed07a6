-- The plugin (the repository root on 'runtimepath') in a real headless
-- Neovim against the fixture server: every way a request's life can end
-- leaves the plugin ready for the next one, and a request whose buffer or
-- editor is gone is cancelled (the server logs the disconnect).
local fixture = require "fixture.control"
local harness = require "nvim.harness"
local util = require "spec.util"
local cjson = require "cjson"

-- A reply of `n` words, one piece every `pace` seconds.
local function slow_reply(n, pace)
  local words = {}
  for i = 1, n do words[i] = string.format("w%03d", i) end
  return { content = table.concat(words, " "), pace = pace }
end

local function chat_requests(srv)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if r.path:find("/chat/completions$") then out[#out + 1] = cjson.decode(r.body) end
  end
  return out
end

local function aborted(srv)
  return srv:wait_for(function(r) return r.event == "abort" end, 10)
end

-- The second exchange went through: its reply is in the buffer, its
-- request carried `history` messages before it.
local function second_ok(res, srv, nmsgs)
  assert.equal("done", res.second.last.status)
  assert.equal("Second answer.", res.second.reply)
  assert.matches("^%[stop · 2 tokens", res.second.footer)
  assert.is_false(res.second.busy)
  local reqs = chat_requests(srv)
  local msgs = reqs[#reqs].messages
  assert.equal(nmsgs, #msgs, cjson.encode(msgs))
  assert.equal("second question", msgs[#msgs].content)
end

describe("the Neovim plugin's lifetimes", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end
  local srv
  before_each(function() srv = fixture.start() end)
  after_each(function() srv:stop() end)

  local function run(args)
    args.scenario = "lifetime"
    args.endpoint = args.endpoint or srv.endpoint
    return harness.run_plugin(root, args)
  end

  it(":bd of the chat buffer mid-stream cancels the request; the next :LlamaChat starts afresh", function()
    srv:reply(slow_reply(200, 0.05))
    srv:reply{ content = "Second answer." }
    local res = run{ action = "bd", after = 8 }
    assert.truthy(aborted(srv), "the server saw no disconnect")
    assert.is_false(res.busy_after_action)
    assert.is_false(res.first_buf_loaded)
    assert.equal("cancelled", res.first.last.status)
    second_ok(res, srv, 1)                 -- the conversation went with its buffer
  end)

  it(":bwipeout! mid-stream cancels the request; the next :LlamaChat works", function()
    srv:reply(slow_reply(200, 0.05))
    srv:reply{ content = "Second answer." }
    local res = run{ action = "bw", after = 8 }
    assert.truthy(aborted(srv), "the server saw no disconnect")
    assert.is_false(res.busy_after_action)
    second_ok(res, srv, 1)
  end)

  it("closing the chat window only hides it: the reply ends in the buffer, :LlamaChat shows it again", function()
    srv:reply(slow_reply(30, 0.02))
    srv:reply{ content = "Second answer." }
    local res = run{ action = "close", after = 8 }
    assert.equal("done", res.first.last.status)
    assert.equal(slow_reply(30).content, res.first.reply)
    assert.is_false(res.shown_before)
    assert.is_true(res.shown_after)
    second_ok(res, srv, 3)                 -- first question, its reply, the second
  end)

  it(":LlamaCancel mid-stream closes the connection, keeps the partial reply and the history", function()
    srv:reply(slow_reply(200, 0.05))
    srv:reply{ content = "Second answer." }
    local res = run{ action = "cancel", after = 8 }
    assert.truthy(aborted(srv), "the server saw no disconnect")
    assert.is_false(res.busy_after_action)
    assert.equal("cancelled", res.first.last.status)
    assert.equal("[cancelled]", res.first.footer)
    local partial = res.first.reply
    assert.equal(slow_reply(200).content:sub(1, #partial), partial)
    second_ok(res, srv, 3)
    assert.equal(partial, chat_requests(srv)[2].messages[2].content)
  end)

  it(":qa! mid-stream quits at once, and the server sees the disconnect", function()
    srv:reply(slow_reply(200, 0.05))
    local res = run{ action = "qa", after = 8 }
    assert.is_true(res.quit)
    assert.truthy(aborted(srv), "the server saw no disconnect")
  end)

  it("a connection that drops mid-stream is resumed: the whole reply, from one generation", function()
    srv:reply{ content = "one two three four five six seven eight", disconnect_after = 3 }
    srv:reply{ content = "Second answer." }
    local res = run{}
    assert.equal("done", res.first.last.status)
    assert.equal("one two three four five six seven eight", res.first.reply)
    assert.truthy(srv:wait_for(function(e) return e.event == "resume" end, 10), "the plugin did not resume")
    second_ok(res, srv, 3)
    assert.equal(2, #chat_requests(srv))
  end)

  it("without resume, a server that dies mid-stream: the error and the partial reply shown, the next goes", function()
    srv:reply{ content = "one two three four five six seven eight", disconnect_after = 3 }
    srv:reply{ content = "Second answer." }
    local res = run{ setup = { resume = false } }
    assert.equal("error", res.first.last.status)
    assert.matches("^%[error%] ", res.first.footer)
    assert.matches("^one two", res.first.reply)
    second_ok(res, srv, 3)
  end)

  it("a stream cut without its terminator is an error, not a finished reply", function()
    srv:reply{ content = "cut short here", no_done = true }
    srv:reply{ content = "Second answer." }
    local res = run{}
    assert.equal("error", res.first.last.status)
    assert.matches("truncated", res.first.last.error)
    assert.matches("^%[error%] .*truncated", res.first.footer)
    assert.equal("cut short here", res.first.reply)
    second_ok(res, srv, 3)
  end)

  it("nothing listening: the error in the chat; the next message goes once the server is up", function()
    local port = util.closed_port()
    local res = harness.run_plugin(root, { scenario = "lifetime", endpoint = "http://127.0.0.1:" .. port })
    assert.equal("error", res.first.last.status)
    assert.matches("^%[error%] llama%-server not running at http://127.0.0.1:" .. port, res.first.footer)
    assert.equal("", res.first.reply)
    assert.equal("error", res.second.last.status)   -- still down: refused again, not jammed
    assert.is_false(res.second.busy)
    assert.same({}, res.second.history)             -- unanswered questions are not resent
  end)

  it("waits through llama-server's 503 Loading model, with a message, then sends", function()
    srv:reply{ status = 503, error = "Loading model", error_type = "unavailable_error" }   -- the chat
    srv:reply{ status = 503, error = "Loading model", error_type = "unavailable_error" }   -- /health
    srv:reply{ content = "ok" }                                                           -- /health
    srv:reply{ content = "Loaded and answering." }                                        -- the chat again
    srv:reply{ content = "Second answer." }
    local res = run{}
    assert.equal("done", res.first.last.status)
    assert.equal("Loaded and answering.", res.first.reply)
    local paths = {}
    for _, r in ipairs(srv:requests()) do paths[#paths + 1] = r.path end
    assert.same({ "/script/v1/chat/completions", "/script/health", "/script/health",
                  "/script/v1/chat/completions", "/script/v1/chat/completions" }, paths)
    local told = false
    for _, n in ipairs(res.notes) do if n.msg:find("loading the model", 1, true) then told = true end end
    assert.is_true(told, "no message about the loading model: " .. cjson.encode(res.notes))
    second_ok(res, srv, 3)
  end)
end)
