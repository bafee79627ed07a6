-- llamacpp.agent (issue 25): the tool loop, against the test kit's fake
-- llama-server scripted to call tools (real HTTP on 127.0.0.1): what runs,
-- what goes back (the transcript in the shape the real server took in
-- ../shared/wire/tc_after_tool_result_nonstream.request), failures fed
-- back, max_steps; blocking, streaming, on the loop, through a router and
-- in the Anthropic and Ollama wire shapes.
local llamacpp = require "llamacpp"
local testing = require "llamacpp.testing"
local router = require "llamacpp.router"
local cjson = require "cjson"
local util = require "spec.util"

local has_luv, luv = pcall(require, "luv")
local lu = require "llamacpp.uv"

local ADD = { description = "Adds two numbers",
              parameters = { type = "object", required = { "a", "b" },
                             properties = { a = { type = "number" }, b = { type = "number" } } },
              run = function(a) return { sum = a.a + a.b } end }

local function calls(...) return { tool_calls = { ... } } end

describe("llamacpp.agent", function()
  local srv
  setup(function() srv = testing.start() end)
  teardown(function() srv:stop() end)

  local since = 0
  before_each(function() since = util.last_seq(srv) end)
  local function bodies()
    local out = {}
    for _, r in ipairs(srv:requests(since)) do out[#out + 1] = r.json end
    return out
  end

  local function agent(opts)
    opts.client = opts.client or llamacpp.new{ endpoint = srv.endpoint, model = "tiny" }
    if opts.router then opts.client = nil end
    return llamacpp.agent(opts)
  end

  describe("run", function()
    it("runs a call, sends the assistant message and the result back, and returns the answer", function()
      srv:reply(calls{ name = "add", arguments = { a = 2, b = 3 }, id = "call_abc123" })
      srv:reply{ content = "It is 5." }
      local a = agent{ tools = { add = ADD }, system = "Use the tools.", request = { max_tokens = 80 } }
      local res = assert(a:run("What is 2 + 3?"))
      assert.equal("It is 5.", res.content)
      assert.equal("stop", res.stop_reason)
      assert.equal(2, #res.steps)
      assert.equal("tool_calls", res.steps[1].stop_reason)
      assert.equal(1, res.tool_calls)
      assert.equal(0, res.tool_errors)
      assert.same({ role = "user", content = "What is 2 + 3?" }, res.messages[1])
      assert.equal(3, #res.messages)
      local sent = bodies()
      assert.equal(2, #sent)
      -- what the tools look like on the wire
      assert.same({ { type = "function", ["function"] = { name = "add", description = "Adds two numbers",
                      parameters = ADD.parameters } } }, sent[1].tools)
      assert.equal(80, sent[2].max_tokens)
      -- the second request: the system prompt, the question, the call, its result (the capture's shape)
      local m = sent[2].messages
      assert.same({ role = "system", content = "Use the tools." }, m[1])
      assert.same({ role = "user", content = "What is 2 + 3?" }, m[2])
      assert.equal("assistant", m[3].role)
      assert.equal("", m[3].content)
      assert.equal(1, #m[3].tool_calls)
      local tc = m[3].tool_calls[1]
      assert.equal("call_abc123", tc.id)
      assert.equal("function", tc.type)
      assert.equal("add", tc["function"].name)
      assert.same({ a = 2, b = 3 }, cjson.decode(tc["function"].arguments))
      assert.same({ role = "tool", tool_call_id = "call_abc123", content = '{"sum":5}' }, m[4])
      assert.equal(4, #m)
      -- the transcript is what was sent, without the system prompt
      assert.same({ m[2], m[3], m[4] }, cjson.decode(cjson.encode(res.messages)))
      -- stats of every step, summed
      assert.equal(res.steps[1].stats.input_tokens + res.steps[2].stats.input_tokens, res.stats.input_tokens)
      assert.equal(2, res.stats.steps)
      assert.is_number(res.stats.total_ms)
    end)

    it("answers parallel calls in the calls' order, each with its id", function()
      local order = {}
      local function tool(name)
        return { parameters = { type = "object", properties = { x = { type = "string" } } },
                 run = function(a) order[#order + 1] = name; return name .. ":" .. a.x end }
      end
      srv:reply(calls({ name = "b", arguments = { x = "1" }, id = "c1" },
                      { name = "a", arguments = { x = "2" }, id = "c2" },
                      { name = "b", arguments = '{"x":"3"}', id = "c3" }))
      srv:reply{ content = "done" }
      local res = assert(agent{ tools = { a = tool("a"), b = tool("b") } }:run("go"))
      assert.same({ "b", "a", "b" }, order)
      local m = bodies()[2].messages
      assert.equal(3, #m[2].tool_calls)
      for i, want in ipairs{ { "c1", "b:1" }, { "c2", "a:2" }, { "c3", "b:3" } } do
        assert.equal(want[1], m[2].tool_calls[i].id)
        assert.same({ role = "tool", tool_call_id = want[1], content = want[2] }, m[2 + i])
      end
      assert.equal(3, res.tool_calls)
    end)

    it("continues a conversation from res.messages, and leaves the input list alone", function()
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 1 }, id = "x" })
      srv:reply{ content = "2" }
      srv:reply{ content = "fine" }
      local a = agent{ tools = { add = ADD } }
      local input = { { role = "user", content = "1+1?" } }
      local res = assert(a:run(input))
      assert.equal(1, #input)
      local msgs = res.messages
      msgs[#msgs + 1] = { role = "assistant", content = res.content }
      msgs[#msgs + 1] = { role = "user", content = "thanks" }
      local res2 = assert(a:run(msgs))
      assert.equal("fine", res2.content)
      local m = bodies()[3].messages
      assert.equal(5, #m)
      assert.equal("tool", m[3].role)
      assert.equal("thanks", m[5].content)
    end)

    it("feeds back arguments that do not parse or do not match, and an unknown tool, and counts them", function()
      local ran = 0
      local t = { parameters = { type = "object", required = { "n" },
                                 properties = { n = { type = "integer" },
                                                unit = { type = "string", enum = { "c", "f" } },
                                                tags = { type = "array", items = { type = "string" } } } },
                  run = function() ran = ran + 1; return "ok" end }
      srv:reply(calls({ name = "t", arguments = '{"n": 1', id = "p" },
                      { name = "t", arguments = { unit = "c" }, id = "r" },
                      { name = "t", arguments = { n = 1.5 }, id = "i" },
                      { name = "t", arguments = { n = 1, unit = "k" }, id = "e" },
                      { name = "t", arguments = { n = 1, tags = { "a", 2 } }, id = "a" },
                      { name = "nope", arguments = {}, id = "u" },
                      { name = "t", arguments = { n = 2, tags = {} }, id = "ok" }))
      srv:reply{ content = "sorry" }
      local res = assert(agent{ tools = { t = t, other = ADD } }:run("go"))
      assert.equal(1, ran)
      assert.equal(6, res.tool_errors)
      assert.equal(6, res.stats.tool_errors)
      assert.equal(6, res.steps[1].tool_errors)
      local m = bodies()[2].messages
      local got = {}
      for i = 3, #m do got[m[i].tool_call_id] = m[i].content end
      assert.matches("^error: the arguments are not valid JSON", got.p)
      assert.equal("error: the arguments do not match the parameters: arguments: 'n' is required", got.r)
      assert.equal("error: the arguments do not match the parameters: arguments.n: integer expected, got number",
                   got.i)
      assert.equal('error: the arguments do not match the parameters: arguments.unit: one of "c", "f" expected,' ..
                   ' got "k"', got.e)
      assert.equal("error: the arguments do not match the parameters: arguments.tags[2]: string expected," ..
                   " got integer", got.a)
      assert.equal("error: there is no tool 'nope'; the tools are: other, t", got.u)
      assert.equal("ok", got.ok)
    end)

    it("feeds back a tool that raises or returns nil, err; on_tool_error = 'raise' stops, with the run", function()
      local tools = {
        boom = { run = function() error("disk on fire") end },
        soft = { run = function() return nil, "no such file" end },
        fine = { run = function() return 42 end },
      }
      srv:reply(calls({ name = "boom", id = "b" }, { name = "soft", id = "s" }, { name = "fine", id = "f" }))
      srv:reply{ content = "ok" }
      assert(agent{ tools = tools }:run("go"))
      local m = bodies()[2].messages
      assert.matches("^error: the tool failed: .*disk on fire$", m[3].content)
      assert.equal("error: the tool failed: no such file", m[4].content)
      assert.equal("42", m[5].content)

      srv:reply(calls({ name = "fine", id = "f" }, { name = "boom", id = "b" }, { name = "fine", id = "g" }))
      local ran = 0
      tools.fine.run = function() ran = ran + 1; return "x" end
      local res, err, so_far = agent{ tools = tools, on_tool_error = "raise" }:run("go")
      assert.is_nil(res)
      assert.equal("tool", err.kind)
      assert.equal("TOOL_FAILED", err.code)
      assert.equal("boom", err.tool)
      assert.equal(1, err.step)
      assert.matches("tool 'boom': the tool failed: .*disk on fire", tostring(err))
      assert.equal(1, ran)                       -- the call after the failure did not run
      -- the transcript stays well formed: every call has its result
      local sm = so_far.messages
      assert.equal(5, #sm)
      assert.equal("x", sm[3].content)
      assert.equal("error: not run: an earlier call of this step failed", sm[5].content)
    end)

    it("stops after max_steps with stop_reason 'max_steps', the last step's calls answered", function()
      for i = 1, 3 do srv:reply(calls{ name = "add", arguments = { a = i, b = 0 }, id = "c" .. i }) end
      local res = assert(agent{ tools = { add = ADD }, max_steps = 5 }:run("loop", { max_steps = 3 }))
      assert.equal("max_steps", res.stop_reason)
      assert.equal(3, #res.steps)
      assert.equal(3, #bodies())
      assert.equal(7, #res.messages)
      assert.same({ role = "tool", tool_call_id = "c3", content = '{"sum":3}' }, res.messages[7])
    end)

    it("gives a request's failure with the run so far", function()
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 2 }, id = "c" })
      srv:reply{ status = 500, error = "boom" }
      local res, err, so_far = agent{ tools = { add = ADD } }:run("go")
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(3, #so_far.messages)
      assert.equal(1, #so_far.steps)
    end)

    it("makes up ids the model did not give, and hands tools their context", function()
      srv:reply(calls{ name = "who", arguments = {}, id = "" })
      srv:reply{ content = "ok" }
      local seen
      local a = agent{ tools = { who = { run = function(_, ctx) seen = ctx; return ctx.name end } } }
      local res = assert(a:run("go"))
      assert.equal("call_1_1", res.messages[2].tool_calls[1].id)
      assert.equal("call_1_1", res.messages[3].tool_call_id)
      assert.equal(1, seen.step)
      assert.equal("who", seen.name)
      assert.equal(a, seen.agent)
      assert.is_function(seen.await)
    end)

    it("tells a blocking tool that ctx.await needs the loop, unless done is called at once", function()
      srv:reply(calls({ name = "later", id = "l" }, { name = "now", id = "n" }))
      srv:reply{ content = "ok" }
      local tools = {
        later = { run = function(_, ctx) return ctx.await(function() end) end },
        now = { run = function(_, ctx) return ctx.await(function(done) done("at once") end) end },
      }
      assert(agent{ tools = tools }:run("go"))
      local m = bodies()[2].messages
      assert.matches("ctx.await: done was not called at once", m[3].content)
      assert.equal("at once", m[4].content)
    end)

    it("raises on bad options and input at the caller's line", function()
      local c = llamacpp.new{ endpoint = srv.endpoint }
      local cases = {
        { {}, "one of 'client' and 'router' expected" },
        { { client = c, tools = {}, bogus = 1 }, "unknown option 'bogus'" },
        { { client = c, tools = { f = { run = 1 } } }, "'run' must be a function" },
        { { client = c, tools = { ["a b"] = { run = print } } }, "a name of letters" },
        { { client = c, tools = {}, max_steps = 0 }, "'max_steps' must be a whole number >= 1" },
        { { client = c, tools = {}, request = { messages = {} } }, "'request.messages' is the agent's" },
        { { client = c, tools = {}, on_tool_error = "ignore" }, "'on_tool_error' must be" },
        { { client = {}, tools = {} }, "'client' must be a llamacpp client" },
      }
      for _, case in ipairs(cases) do
        local ok, msg = pcall(llamacpp.agent, case[1])
        assert.is_false(ok)
        assert.matches("agent_spec.lua:%d+: bad argument #1 to 'agent' %(.*" .. case[2]:gsub("%p", "%%%0"), msg)
      end
      local r = router.new{ tiers = { main = { { provider = "llamacpp", endpoint = srv.endpoint } } } }
      local ra = llamacpp.agent{ router = r, tools = {}, on_overflow = "trim" }
      assert.error_matches(function() ra:stream("go") end, "a router's agent trims with run")
      if has_luv then
        assert.error_matches(function() lu.agent_stream(ra, "go", print, { uv = luv }) end,
                             "a router's agent trims with agent_run")
      end
      local a = llamacpp.agent{ client = c, tools = {} }
      local ok, msg = pcall(a.run, a, {})
      assert.is_false(ok)
      assert.matches("agent_spec.lua:%d+: .*a prompt or a list of messages expected", msg)
      assert.equal(0, #bodies())
    end)
  end)

  describe("stream", function()
    it("gives each step's events, tool_start and tool_end, step events and one done", function()
      srv:reply(calls({ name = "add", arguments = { a = 1, b = 2 }, id = "c1" },
                      { name = "nope", arguments = {}, id = "c2" }))
      srv:reply{ content = "three", reasoning = "easy" }
      local a = agent{ tools = { add = ADD } }
      local evs = {}
      for ev in a:stream("1+2?") do evs[#evs + 1] = ev end
      local kinds = {}
      for _, ev in ipairs(evs) do
        if kinds[#kinds] ~= ev.type then kinds[#kinds + 1] = ev.type end
      end
      assert.same({ "tool_call", "step", "tool_start", "tool_end", "tool_start", "tool_end",
                    "reasoning", "content", "step", "done" }, kinds)
      local by = {}
      for _, ev in ipairs(evs) do by[ev.type] = by[ev.type] or {}; table.insert(by[ev.type], ev) end
      assert.equal(1, by.tool_call[1].step)
      assert.equal(2, by.content[1].step)
      assert.same({ "c1", "c2" }, { by.tool_start[1].id, by.tool_start[2].id })
      assert.equal("add", by.tool_start[1].name)
      assert.same({ a = 1, b = 2 }, cjson.decode(by.tool_start[1].arguments))
      assert.same({ sum = 3 }, by.tool_end[1].result)
      assert.is_nil(by.tool_end[1].error)
      assert.is_number(by.tool_end[1].ms)
      assert.equal("UNKNOWN_TOOL", by.tool_end[2].code)
      assert.matches("no tool 'nope'", by.tool_end[2].error)
      assert.equal("tool_calls", by.step[1].stop_reason)
      assert.equal(2, #by.step[1].tool_calls)
      local done = by.done[1]
      assert.equal(evs[#evs], done)
      assert.equal("three", done.content)
      assert.equal("easy", done.reasoning)
      assert.equal("stop", done.stop_reason)
      assert.equal(2, #done.steps)
      assert.equal(4, #done.messages)
      assert.equal(1, done.tool_errors)
      local sent = bodies()
      assert.is_true(sent[1].stream)
      assert.equal(4, #sent[2].messages)
      assert.same({ role = "tool", tool_call_id = "c1", content = '{"sum":3}' }, sent[2].messages[3])
    end)

    it("ends with one error event carrying the run so far", function()
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 2 }, id = "c" })
      srv:reply{ content = "a b c", disconnect_after = 1 }
      local evs = {}
      for ev in agent{ tools = { add = ADD } }:stream("go") do evs[#evs + 1] = ev end
      local last = evs[#evs]
      assert.equal("error", last.type)
      assert.equal(2, last.step)
      assert.equal(3, #last.run.messages)
      for i = 1, #evs - 1 do assert.is_not.equal("error", evs[i].type) end
    end)

    it("raises a bad request at the caller's line, before any request; close() ends it early", function()
      local a = agent{ tools = { add = ADD }, request = { progress = "yes" } }
      local ok, msg = pcall(function() return a:stream("go") end)
      assert.is_false(ok)
      assert.matches("^spec/agent_spec.lua:%d+: bad request: 'progress' must be a boolean", msg)
      ok, msg = pcall(function() return a:run("go") end)
      assert.is_false(ok)
      assert.matches("^spec/agent_spec.lua:%d+: bad request: 'progress' must be a boolean", msg)
      if has_luv then
        ok, msg = pcall(function() return lu.agent_run(a, "go", function() end, { uv = luv }) end)
        assert.is_false(ok)
        assert.matches("^spec/agent_spec.lua:%d+: bad request: 'progress' must be a boolean", msg)
      end
      assert.equal(0, #bodies())
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 2 }, id = "c" })
      local ran = false
      local b = agent{ tools = { add = { run = function() ran = true end } } }
      local step, s = b:stream("go")
      local first = step()
      assert.equal("tool_call", first.type)
      s:close()
      assert.is_false(ran)
      assert.has_error(function() step() end, "stream is closed")
    end)
  end)

  describe("through a router", function()
    it("runs and streams the loop on the router's deployments", function()
      local r = router.new{ tiers = { main = { { provider = "llamacpp", endpoint = srv.endpoint, model = "tiny" } } } }
      srv:reply(calls{ name = "add", arguments = { a = 4, b = 4 }, id = "c" })
      srv:reply{ content = "8" }
      local res = assert(agent{ router = r, tools = { add = ADD } }:run("4+4?"))
      assert.equal("8", res.content)
      assert.is_string(res.provider)
      srv:reply(calls{ name = "add", arguments = { a = 4, b = 4 }, id = "c" })
      srv:reply{ content = "8" }
      local last
      for ev in agent{ router = r, tools = { add = ADD } }:stream("4+4?") do last = ev end
      assert.equal("done", last.type)
      assert.equal("8", last.content)
      assert.equal(4, #bodies())
    end)
  end)

  describe("other providers' shapes", function()
    it("Anthropic: tool_use blocks go back with their tool_result", function()
      srv:reply{ content_type = "application/json", body = cjson.encode{
        id = "msg_1", type = "message", role = "assistant", model = "claude", stop_reason = "tool_use",
        content = { { type = "text", text = "Let me add." },
                    { type = "tool_use", id = "toolu_1", name = "add", input = { a = 2, b = 2 } } },
        usage = { input_tokens = 10, output_tokens = 5 } } }
      srv:reply{ content_type = "application/json", body = cjson.encode{
        id = "msg_2", type = "message", role = "assistant", model = "claude", stop_reason = "end_turn",
        content = { { type = "text", text = "4" } }, usage = { input_tokens = 20, output_tokens = 1 } } }
      local c = llamacpp.new{ endpoint = srv.endpoint, provider = "anthropic", api_key = "k", model = "claude" }
      local res = assert(llamacpp.agent{ client = c, tools = { add = ADD }, request = { max_tokens = 50 } }:run("2+2?"))
      assert.equal("4", res.content)
      local m = bodies()[2].messages
      assert.equal("assistant", m[2].role)
      assert.same({ type = "text", text = "Let me add." }, m[2].content[1])
      assert.same({ type = "tool_use", id = "toolu_1", name = "add", input = { a = 2, b = 2 } }, m[2].content[2])
      assert.same({ role = "user", content = { { type = "tool_result", tool_use_id = "toolu_1",
                                                 content = '{"sum":4}' } } }, m[3])
      assert.equal("add", bodies()[1].tools[1].name)
    end)

    it("Ollama: tool calls go back with object arguments, results with tool_name", function()
      srv:reply{ content_type = "application/json", body = cjson.encode{
        model = "tiny", done = true, done_reason = "stop",
        message = { role = "assistant", content = "",
                    tool_calls = { { ["function"] = { name = "add", arguments = { a = 5, b = 1 } } } } },
        prompt_eval_count = 10, eval_count = 3 } }
      srv:reply{ content_type = "application/json", body = cjson.encode{
        model = "tiny", done = true, done_reason = "stop", message = { role = "assistant", content = "6" },
        prompt_eval_count = 20, eval_count = 1 } }
      local c = llamacpp.new{ endpoint = srv.endpoint, provider = "ollama", model = "tiny" }
      local res = assert(llamacpp.agent{ client = c, tools = { add = ADD } }:run("5+1?"))
      assert.equal("6", res.content)
      local m = bodies()[2].messages
      assert.equal("add", m[2].tool_calls[1]["function"].name)
      assert.same({ a = 5, b = 1 }, m[2].tool_calls[1]["function"].arguments)
      assert.equal("tool", m[3].role)
      assert.equal("add", m[3].tool_name)
      assert.equal('{"sum":6}', m[3].content)
    end)

    -- streamed, from captures of the real services: blocking and on the loop
    local function replay(name, ctype)
      srv:reply{ content_type = ctype, body = util.body(util.fixture(name)) }
    end
    local CITY = { parameters = { type = "object", properties = { city = { type = "string" },
                                                                  location = { type = "string" } } },
                   run = function(a) return "sunny in " .. (a.city or a.location) end }
    local function streamed(c, tools, on_loop)
      local a = llamacpp.agent{ client = c, tools = tools, request = { max_tokens = 50 } }
      local last
      if on_loop then
        lu.agent_stream(a, "weather?", function(ev) last = ev end, { uv = luv })
        luv.run()
      else
        for ev in a:stream("weather?") do last = ev end
      end
      assert.equal("done", last.type, tostring(last.error))
      return last, bodies()[2].messages
    end
    for _, on_loop in ipairs{ false, true } do
      local how = on_loop and " on the loop" or ""
      it("Anthropic, streamed" .. how .. ": the assembled tool_use goes back with its result", function()
        if on_loop and not has_luv then return pending("luv is not installed for " .. _VERSION) end
        replay("anthropic_tools_stream", "text/event-stream")
        replay("anthropic_stream", "text/event-stream")
        local c = llamacpp.new{ endpoint = srv.endpoint, provider = "anthropic", api_key = "k", model = "claude" }
        local done, m = streamed(c, { get_weather = CITY, get_time = { run = function() return "noon" end } },
                                 on_loop)
        assert.equal(2, #done.steps)
        assert.equal(0, done.tool_errors)
        local uses = {}
        for _, b in ipairs(m[2].content) do if b.type == "tool_use" then uses[#uses + 1] = b end end
        assert.equal(2, #uses)
        assert.equal("toolu_01T1x1fJ34qAmk2tNTrN7Up6", uses[1].id)
        assert.equal("San Francisco, CA", uses[1].input.location)
        assert.equal("get_time", uses[2].name)
        -- both results in one user message, in the calls' order
        assert.equal("user", m[3].role)
        assert.same({ { type = "tool_result", tool_use_id = uses[1].id, content = "sunny in San Francisco, CA" },
                      { type = "tool_result", tool_use_id = uses[2].id, content = "noon" } }, m[3].content)
      end)
      it("Ollama, streamed" .. how .. ": both calls go back, each result with its tool_name", function()
        if on_loop and not has_luv then return pending("luv is not installed for " .. _VERSION) end
        replay("ollama_tools_stream", "application/x-ndjson")
        replay("ollama_chat_stream", "application/x-ndjson")
        local c = llamacpp.new{ endpoint = srv.endpoint, provider = "ollama", model = "llama3.2" }
        local done, m = streamed(c, { get_temperature = CITY, get_conditions = CITY }, on_loop)
        assert.equal(2, done.tool_calls)
        assert.equal(2, #m[2].tool_calls)
        assert.same({ city = "New York" }, m[2].tool_calls[1]["function"].arguments)
        assert.same({ role = "tool", tool_name = "get_temperature", content = "sunny in New York",
                      tool_call_id = m[2].tool_calls[1].id }, m[3])
        assert.equal("get_conditions", m[4].tool_name)
      end)
    end
  end)

  describe("with on_overflow = 'trim'", function()
    local f
    setup(function() f = testing.start{ cache = { n_ctx = 300 } } end)
    teardown(function() f:stop() end)

    local function history()
      local msgs = {}
      for i = 1, 30 do
        msgs[#msgs + 1] = { role = "user", content = "question " .. i .. (" about this"):rep(3) }
        msgs[#msgs + 1] = { role = "assistant", content = "answer " .. i .. (" indeed"):rep(4) }
      end
      msgs[#msgs + 1] = { role = "user", content = "and now?" }
      return msgs
    end

    -- the generations f answered since seq: their prompts' sizes
    local function prompts(from)
      local out = {}
      for _, r in ipairs(f:requests(from)) do
        if r.cache then out[#out + 1] = r.cache.prompt_tokens end
      end
      return out
    end

    for _, mode in ipairs{ "run", "stream" } do
      it(mode .. ": each step's request fits the window; the transcript keeps everything", function()
        local from = util.last_seq(f)
        f:reply(calls{ name = "add", arguments = { a = 1, b = 2 }, id = "c" })
        f:reply{ content = "done" }
        local c = llamacpp.new{ endpoint = f.endpoint, model = "tiny" }
        local a = llamacpp.agent{ client = c, tools = { add = ADD }, on_overflow = "trim",
                                  request = { max_tokens = 20 } }
        local res
        if mode == "run" then
          res = assert(a:run(history()))
        else
          for ev in a:stream(history()) do res = ev end
          assert.equal("done", res.type, tostring(res.error))
        end
        assert.equal("done", res.content)
        assert.equal(63, #res.messages)            -- the 61 given, the call and its result
        local sizes = prompts(from)
        assert.is_true(#sizes >= 2)
        for _, n in ipairs(sizes) do assert.is_true(n <= 300, "a prompt of " .. n) end
        -- the call and its result went together in the second step's request
        local reqs = f:requests(from)
        local m = reqs[#reqs].json.messages
        assert.equal("tool", m[#m].role)
        assert.equal("c", m[#m - 1].tool_calls[1].id)
      end)
    end
  end)

  describe("on the loop", function()
    if not has_luv then
      it("needs luv", function() pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end)
      return
    end

    -- runs the loop until nothing is watched; a guard timer (unref'd) fails a hang
    local function spin()
      local guard = luv.new_timer()
      local hung = false
      guard:start(30000, 0, function() hung = true; luv.stop() end)
      guard:unref()
      luv.run()
      guard:close()
      assert.is_false(hung, "the loop did not finish")
    end

    it("agent_run: a tool awaits a timer without blocking the loop", function()
      srv:reply(calls{ name = "slow", arguments = {}, id = "s" })
      srv:reply{ content = "waited" }
      local ticks = 0
      local tk = luv.new_timer()
      tk:start(1, 1, function() ticks = ticks + 1 end)
      local at_start
      local tools = { slow = { run = function(_, ctx)
        at_start = ticks
        local v = ctx.await(function(done)
          local t = luv.new_timer()
          t:start(50, 0, function() t:close(); done("slept") end)
        end)
        return v .. " " .. tostring(ticks > at_start)
      end } }
      local got, gerr
      lu.agent_run(agent{ tools = tools }, "go", function(res, err)
        got, gerr = res, err
        tk:stop(); tk:close()
      end, { uv = luv })
      spin()
      assert.is_nil(gerr)
      assert.equal("waited", got.content)
      assert.equal("slept true", got.messages[3].content)
    end)

    it("a tool that calls coroutine.yield() goes on when the loop has turned", function()
      srv:reply(calls{ name = "busy", arguments = {}, id = "b" })
      srv:reply{ content = "ok" }
      local ticks, seen = 0, {}
      local tk = luv.new_timer()
      tk:start(0, 1, function() ticks = ticks + 1 end)
      local tools = { busy = { run = function()
        for i = 1, 3 do
          local before = ticks
          repeat coroutine.yield() until ticks > before    -- the timer ran between two resumes
          seen[i] = ticks
        end
        return "worked"
      end } }
      local got
      lu.agent_run(agent{ tools = tools }, "go", function(res) got = res; tk:stop(); tk:close() end, { uv = luv })
      spin()
      assert.equal(3, #seen)
      assert.equal("worked", got.messages[3].content)
    end)

    it("agent_run with parallel = true runs a step's calls together, results in the calls' order", function()
      srv:reply(calls({ name = "wait", arguments = { ms = 80, tag = "first" }, id = "a" },
                      { name = "wait", arguments = { ms = 5, tag = "second" }, id = "b" }))
      srv:reply{ content = "ok" }
      local finished = {}
      local tools = { wait = { run = function(a, ctx)
        ctx.await(function(done)
          local t = luv.new_timer()
          t:start(a.ms, 0, function() t:close(); done() end)
        end)
        finished[#finished + 1] = a.tag
        return a.tag
      end } }
      local got
      lu.agent_run(agent{ tools = tools, parallel = true }, "go", function(res) got = res end, { uv = luv })
      spin()
      assert.same({ "second", "first" }, finished)     -- the short wait ended first: they ran together
      assert.equal("first", got.messages[3].content)
      assert.equal("a", got.messages[3].tool_call_id)
      assert.equal("second", got.messages[4].content)
    end)

    it("agent_stream: the events of the blocking stream, ending with done", function()
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 2 }, id = "c1" })
      srv:reply{ content = "three" }
      local kinds = {}
      local last
      lu.agent_stream(agent{ tools = { add = ADD } }, "go", function(ev)
        if kinds[#kinds] ~= ev.type then kinds[#kinds + 1] = ev.type end
        last = ev
      end, { uv = luv })
      spin()
      assert.same({ "tool_call", "step", "tool_start", "tool_end", "content", "step", "done" }, kinds)
      assert.equal("three", last.content)
      assert.equal(3, #last.messages)
    end)

    it("through a router, and cancel stops the run", function()
      local r = router.new{ tiers = { main = { { provider = "llamacpp", endpoint = srv.endpoint, model = "tiny" } } } }
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 1 }, id = "c" })
      srv:reply{ content = "2" }
      local got
      lu.agent_run(agent{ router = r, tools = { add = ADD } }, "1+1?", function(res) got = res end, { uv = luv })
      spin()
      assert.equal("2", got.content)
      srv:reply(calls{ name = "add", arguments = { a = 1, b = 1 }, id = "c" })
      local ran, called = false, false
      local h
      h = lu.agent_stream(agent{ router = r, tools = { add = { run = function() ran = true end } } }, "go",
        function(ev)
          if ev.type == "tool_call" then h:cancel() else called = true end
        end, { uv = luv })
      spin()
      assert.is_false(ran)
      assert.is_false(called)
    end)
  end)
end)
