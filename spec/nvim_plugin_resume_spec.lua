-- The plugin in a real headless Neovim against the fixture server: a reply
-- that is streaming when Neovim quits goes on on the server (resumable
-- stream, no cancel); the next Neovim offers it, and :LlamaResume shows
-- the conversation, the part seen before, and the rest, read from the
-- offset where the first Neovim stopped.
local fixture = require "fixture.control"
local harness = require "nvim.harness"
local util = require "spec.util"
local cjson = require "cjson"

local function words(n)
  local w = {}
  for i = 1, n do w[i] = string.format("w%03d", i) end
  return table.concat(w, " ")
end

local function chat_posts(srv)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if r.method == "POST" and r.path:find("/chat/completions$") then out[#out + 1] = r end
  end
  return out
end

local function events(srv, name)
  local out = {}
  for _, e in ipairs(srv:log()) do
    if e.event == name then out[#out + 1] = e end
  end
  return out
end

local function saved_files(home)
  local p = io.popen("ls " .. harness.q(home .. "/data/nvim/llamacpp/resume") .. " 2>/dev/null")
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

describe("the Neovim plugin's replies across a restart", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end
  local srv, home
  before_each(function()
    srv = fixture.start()
    home = harness.home()
  end)
  after_each(function()
    srv:stop()
    harness.rm(home)
  end)

  local function run(args, setup)
    args.endpoint = srv.endpoint
    args.setup = setup
    return harness.run_plugin(root, args, { home = home })
  end

  -- First Neovim: one answered turn, then a slow reply left mid-way.
  local function quit_mid_reply(reply)
    srv:reply{ content = "First answer." }
    srv:reply(reply or { content = words(200), pace = 0.05 })
    local res = run{ scenario = "quit_streaming", turns = { "first question" }, prompt = "second question",
                     after = 40 }
    assert.is_true(res.quit)
    assert.truthy(srv:wait_for(function(e) return e.event == "abort" end, 10), "the server saw no disconnect")
    return res
  end

  it("quitting mid-reply leaves it to the server; the next Neovim offers it; :LlamaResume shows it whole", function()
    local first = quit_mid_reply()
    local posts = chat_posts(srv)
    assert.equal(2, #posts)
    local id = posts[2].headers["x-conversation-id"]
    assert.is_string(id, "the reply was not asked for as resumable")
    assert.same({}, events(srv, "cancel"))          -- no DELETE: the generation goes on
    assert.equal(1, #saved_files(home))
    assert.matches("^w001 w002", first.before)

    srv:reply{ content = "Third answer." }
    local res = run{ scenario = "resumed", second = "third question" }
    assert.equal(1, #res.offers, cjson.encode(res.offers))
    assert.matches("a reply was streaming when Neovim quit.*:LlamaResume shows it", res.offers[1])
    assert.equal(1, res.saved_before)
    assert.is_true(res.busy_after_action)
    assert.equal("done", res.last.status)
    assert.equal(words(200), res.reply)             -- what was shown, then the rest: no gap, no repeat
    assert.matches("^%[stop", res.footer)
    assert.equal(0, res.saved_after)
    assert.same({}, saved_files(home))
    -- the conversation came back with it
    local text = table.concat(res.lines, "\n")
    assert.matches("first question", text, 1, true)
    assert.matches("First answer.", text, 1, true)
    assert.same({ "first question", "First answer.", "second question", words(200) },
                { res.history[1].content, res.history[2].content, res.history[3].content,
                  res.history[4].content })
    -- read on from where the first Neovim stopped, by the same id; no new generation
    local resumes = events(srv, "resume")
    assert.equal(1, #resumes)
    assert.equal(id, resumes[1].id)
    assert.is_true(resumes[1].from > 0)
    assert.equal(1, util.hits(srv, "/v1/stream/" .. id, "GET"))
    -- and the next message carries the whole conversation
    assert.equal("done", res.second.last.status, tostring(res.second.last.error))
    assert.equal("Third answer.", res.second.reply)
    local msgs = cjson.decode(chat_posts(srv)[3].body).messages
    assert.equal(5, #msgs)
    assert.equal(words(200), msgs[4].content)
  end)

  it("a server that no longer has the reply: the part seen before stays, and the error says why", function()
    quit_mid_reply{ content = words(200), pace = 0.05, forget = true }
    local res = run{ scenario = "resumed" }
    assert.equal("error", res.last.status)
    assert.matches("not resumed", res.last.error)
    assert.matches("^%[error%] ", res.footer)
    assert.matches("^w001 w002", res.reply)
    assert.equal(words(200):sub(1, #res.reply), res.reply)
    assert.equal(0, res.saved_after)
  end)

  it(":LlamaResume! forgets the reply; nothing is asked of the server", function()
    quit_mid_reply()
    local n = #srv:requests()
    local res = run{ scenario = "resumed", bang = true }
    assert.equal(1, res.saved_before)
    assert.equal(0, res.saved_after)
    assert.is_false(res.busy_after_action)
    assert.equal(n, #srv:requests())
    assert.matches("forgot 1 reply", res.notes[#res.notes].msg)
  end)

  it(":LlamaResume with nothing left says so", function()
    local res = run{ scenario = "resumed" }
    assert.same({}, res.offers)
    assert.equal(0, res.saved_before)
    assert.matches("no reply was left streaming", res.notes[#res.notes].msg)
    assert.same({}, srv:requests())
  end)

  it("with resume = false, quitting cancels as before: no id sent, nothing kept", function()
    srv:reply{ content = words(200), pace = 0.05 }
    local res = run({ scenario = "quit_streaming", after = 40 }, { resume = false })
    assert.is_true(res.quit)
    assert.truthy(srv:wait_for(function(e) return e.event == "abort" end, 10), "the server saw no disconnect")
    assert.is_nil(chat_posts(srv)[1].headers["x-conversation-id"])
    assert.same({}, saved_files(home))
  end)
end)
