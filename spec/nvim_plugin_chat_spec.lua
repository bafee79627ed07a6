-- The plugin's chat is a conversation, in a real headless Neovim against
-- the fixture server's scripted replies: <CR> sends what is typed with the
-- whole history, text typed while a reply streams stays for the next
-- message, the footer says why a reply ended (a `length` stop visibly),
-- reasoning is folded, the window follows the reply unless the user
-- moved away, and a waiting indicator shows while the prompt is read.
local fixture = require "fixture.control"
local harness = require "nvim.harness"
local cjson = require "cjson"

local function chat_bodies(srv)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if r.path:find("/chat/completions$") then out[#out + 1] = cjson.decode(r.body) end
  end
  return out
end

describe("the Neovim plugin's chat", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end

  local srv
  before_each(function() srv = fixture.start() end)
  after_each(function() srv:stop() end)

  local function run(args)
    args.endpoint = args.endpoint or srv.endpoint
    return harness.run_plugin(root, args)
  end

  it("sends typed turns with <CR>; the second request carries the first turn", function()
    srv:reply{ content = "Paris is the capital." }
    srv:reply{ content = "About two million people." }
    local res = run{ scenario = "conversation", turns = { "Capital of France?", "How many live there?" },
                     setup = { system = "Be brief." } }
    assert.is_true(res.focused)
    assert.equal("Paris is the capital.", res.replies[1].reply)
    assert.equal("About two million people.", res.replies[2].reply)
    local bodies = chat_bodies(srv)
    assert.equal(2, #bodies)
    assert.same({ { role = "system", content = "Be brief." },
                  { role = "user", content = "Capital of France?" },
                  { role = "assistant", content = "Paris is the capital." },
                  { role = "user", content = "How many live there?" } }, bodies[2].messages)
    assert.is_true(bodies[2].stream)
    -- the buffer: each turn under its header, the input last
    assert.same({ "## You", "Capital of France?", "", "## llama", "", "Paris is the capital." },
                { (rawget(table, "unpack") or rawget(_G, "unpack"))(res.lines, 1, 6) })
    assert.equal("## You", res.lines[#res.lines - 1])
    assert.equal("", res.lines[#res.lines])
  end)

  it("keeps what is typed during a reply out of the reply; it is the next message", function()
    local words = {}
    for i = 1, 40 do words[i] = "r" .. i end
    srv:reply{ content = table.concat(words, " "), pace = 0.03 }
    srv:reply{ content = "Noted." }
    local res = run{ scenario = "conversation", turns = { "Start", "unused" }, during = "typed meanwhile" }
    assert.is_true(res.busy_while_typing)
    assert.is_true(res.busy_after_cr, "<CR> during the reply must not send")
    assert.equal(table.concat(words, " "), res.replies[1].reply)   -- not a character of the typing in it
    assert.equal("typed meanwhile", res.input_after_first)
    assert.equal("Noted.", res.replies[2].reply)
    local bodies = chat_bodies(srv)
    assert.equal("typed meanwhile", bodies[2].messages[#bodies[2].messages].content)
  end)

  it(":LlamaImage sends the image under the cursor with the prompt; a bad file is a notice", function()
    local pixel = harness.root() .. "/spec/fixtures/media/pixel.png"
    srv:reply{ content = "One pixel." }
    local res = run{ scenario = "image", file = pixel }
    assert.equal("One pixel.", res.reply)
    local body = chat_bodies(srv)[1]
    local content = body.messages[#body.messages].content
    assert.equal("text", content[1].type)
    assert.matches("^What is it%?\n%[image: [^%]]*spec/fixtures/media/pixel%.png%]$", content[1].text)
    assert.matches("^data:image/png;base64,iVBORw0KGgo", content[2].image_url.url)
    assert.equal("image_url", res.history[1].content[2].type)     -- the history keeps the part
    -- a file given that is not an image: a notice, nothing sent
    local n = #chat_bodies(srv)
    res = run{ scenario = "image", file = pixel, cmd = "LlamaImage " .. harness.root() .. "/README.md Look" }
    assert.equal(n, #chat_bodies(srv))
    local notes = {}
    for _, x in ipairs(res.notes or {}) do notes[#notes + 1] = x.msg end
    assert.matches("unknown image type", table.concat(notes, "\n"), 1, true)
  end)

  it("marks a reply cut by max_tokens in its footer", function()
    srv:reply{ content = "This answer stops in the mid", finish_reason = "length" }
    local res = run{ scenario = "reply", setup = { params = { max_tokens = 7 } } }
    assert.equal("This answer stops in the mid", res.reply)
    assert.matches("^%[length: cut short at the token limit", res.footer)
    assert.equal("length", res.last.stop_reason)
    assert.equal(7, chat_bodies(srv)[1].max_tokens)
  end)

  it("shows reasoning as a folded quote, and sends back only the answer", function()
    srv:reply{ reasoning = "First think.\nThen answer.", content = "The answer." }
    srv:reply{ content = "ok" }
    local res = run{ scenario = "reply" }
    assert.equal("> First think.\n> Then answer.\n\nThe answer.", res.reply)
    assert.equal(1, res.closed_folds, cjson.encode(res.notes) .. table.concat(res.lines, "\n"))
    assert.same({ { role = "user", content = "hello" }, { role = "assistant", content = "The answer." } },
                res.history)
  end)

  it("shows a waiting indicator while the server reads the prompt", function()
    srv:reply{ content = "Late answer.", delay = 1.5 }
    local res = run{ scenario = "reply", probe_ms = 400 }
    assert.matches("waiting for llama%-server %d+%.%d s", res.indicator)
    assert.equal("Late answer.", res.reply)
  end)

  it("shows how far the server read the prompt, from its progress", function()
    srv:reply{ content = "Read it.", prompt_tokens = 640, batch = 64, pace = 0.15 }
    local res = run{ scenario = "reply", probe_ms = 800 }
    assert.matches("reading the prompt %d+%% %(%d+/640%) %d+%.%d s", res.indicator)
    assert.equal("Read it.", res.reply)
    assert.is_true(chat_bodies(srv)[1].return_progress)
    assert.is_nil(chat_bodies(srv)[1].progress)
  end)

  local function long_reply()
    local parts = {}
    for i = 1, 120 do parts[i] = "line " .. i .. "\n" end
    return { content = table.concat(parts), tokens = parts, pace = 0.01 }
  end

  it("follows a long reply in its window", function()
    srv:reply(long_reply())
    local res = run{ scenario = "follow" }
    assert.equal("done", res.last.status)
    assert.is_true(res.line_count > 120)
    assert.equal(res.line_count, res.bottom)       -- the end, and the input below it, in view
  end)

  it("does not follow when the user went to the top", function()
    srv:reply(long_reply())
    local res = run{ scenario = "follow", scroll = true }
    assert.equal("done", res.last.status)
    assert.equal(1, res.top)
    assert.equal(1, res.cursor)
  end)
end)

-- Fitting the history to the context window before each send
-- (client:fit on the loop): against the caching fake, which answers
-- /props (its n_ctx) and the counts itself, so the queued replies are
-- the chats'; and against a server that cannot count (an older
-- llama-server: 404 on /v1/chat/completions/input_tokens).
describe("the Neovim plugin's chat fitted to the context window", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end

  local srv
  after_each(function() if srv then srv:stop() end end)

  local function paths(s)
    local out = {}
    for _, r in ipairs(s:requests()) do out[#out + 1] = r.path end
    return out
  end

  it("leaves the earliest turn out when the history outgrows the window, and says so", function()
    -- the fake's tokens: "<|role|>" and the words of each message, "<|assistant|>" last;
    -- window 44 less max_tokens 4 less the margin 16: 24 for the prompt. The second
    -- request (22) fits; the third (27 whole, 13 without the first turn) does not.
    srv = fixture.start{ cache = { n_ctx = 44 } }
    srv:reply{ content = "alpha beta gamma delta epsilon zeta" }
    srv:reply{ content = "second answer" }
    srv:reply{ content = "third answer" }
    local res = harness.run_plugin(root, {
      scenario = "conversation", endpoint = srv.endpoint,
      turns = { "one two three four five six", "second question here", "third" },
      setup = { fit = true, system = "Be brief.", params = { max_tokens = 4 } } })
    assert.equal("third answer", res.replies[3].reply)
    local bodies = chat_bodies(srv)
    assert.equal(3, #bodies)
    assert.equal(4, #bodies[2].messages)                     -- system, turn 1, question 2: whole
    assert.same({ { role = "system", content = "Be brief." },
                  { role = "user", content = "second question here" },
                  { role = "assistant", content = "second answer" },
                  { role = "user", content = "third" } }, bodies[3].messages)
    -- the window was asked once, each chat counted first
    local p = paths(srv)
    local props, counts = 0, 0
    for _, x in ipairs(p) do
      if x:find("/props$") then props = props + 1 end
      if x:find("/input_tokens$") then counts = counts + 1 end
    end
    assert.equal(1, props, cjson.encode(p))
    assert.is_true(counts >= 4, cjson.encode(p))              -- 1, 1, then 2 (whole, then fitted)
    -- the notice, on the third reply's header; none before
    assert.equal(1, #res.notices, cjson.encode(res.notices))
    assert.matches("1 earlier turn left out to fit the context window", res.notices[1].text)
    assert.equal("## llama", res.lines[res.notices[1].row + 1])
    assert.is_true(res.notices[1].row > 8)                   -- the third reply's, not an earlier one
    -- the history keeps every turn; the buffer shows them all
    assert.equal(6, #res.history)
    assert.equal("one two three four five six", res.history[1].content)
    assert.equal(1, res.last.fit.dropped_turns)
  end)

  it("sends the whole history when the server cannot count tokens, and says why once", function()
    srv = fixture.start()
    srv:reply{ body = cjson.encode{ default_generation_settings = { n_ctx = 4096 } } }   -- /props
    srv:reply{ status = 404, error = "File Not Found", error_type = "not_found_error" }  -- the count
    srv:reply{ content = "First answer." }
    srv:reply{ status = 404, error = "File Not Found", error_type = "not_found_error" }  -- the count
    srv:reply{ content = "Second answer." }
    local res = harness.run_plugin(root, {
      scenario = "conversation", endpoint = srv.endpoint,
      turns = { "first question", "second question" }, setup = { fit = true } })
    assert.same({ "/script/props", "/script/v1/chat/completions/input_tokens", "/script/v1/chat/completions",
                  "/script/v1/chat/completions/input_tokens", "/script/v1/chat/completions" }, paths(srv))
    assert.equal("First answer.", res.replies[1].reply)
    assert.equal("Second answer.", res.replies[2].reply)
    assert.equal("done", res.last.status)
    local bodies = chat_bodies(srv)
    assert.same({ { role = "user", content = "first question" },
                  { role = "assistant", content = "First answer." },
                  { role = "user", content = "second question" } }, bodies[2].messages)
    local told = {}
    for _, n in ipairs(res.notes) do
      if n.msg:find("cannot count", 1, true) then told[#told + 1] = n.msg end
    end
    assert.equal(1, #told, cjson.encode(res.notes))
    assert.matches("sent whole", told[1])
    assert.same({}, res.notices)
  end)
end)
