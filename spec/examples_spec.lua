-- Every example in examples/ runs against the fixture server (a smoke run
-- that checks its output), so no example can rot.
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local LUA = type(jit) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

-- Runs an example with env vars; returns exit code, stdout, stderr.
local function run(script, env, args)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = {}
  for k, v in pairs(env or {}) do cmd[#cmd + 1] = k .. "='" .. v .. "'" end
  cmd[#cmd + 1] = "timeout 60 " .. LUA .. " " .. script
  for _, a in ipairs(args or {}) do cmd[#cmd + 1] = "'" .. a .. "'" end
  cmd[#cmd + 1] = ">" .. out .. " 2>" .. err .. "; echo $?"
  local h = io.popen(util.CLEAN_ENV .. " " .. table.concat(cmd, " "))
  local code = tonumber(h:read("*a"))
  h:close()
  local o, e = util.read(out), util.read(err)
  os.remove(out)
  os.remove(err)
  return code, o, e
end

describe("examples", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it("chat.lua streams a reply with its stats", function()
    local want = util.expected("chat_stream_usage")
    local code, out = run("examples/chat.lua", { LLAMACPP_ENDPOINT = srv:replay("chat_stream_usage") }, { "Hi" })
    assert.equal(0, code)
    assert.equal(1, select(2, out:gsub(want.content:gsub("%p", "%%%0"), "")))
    assert.matches("%[length: %d+ prompt %(%d+ cached%) %+ 16 generated tokens", out)
  end)

  it("chat.lua shows the prompt's progress, then the stats line", function()
    local code, out, err = run("examples/chat.lua", { LLAMACPP_ENDPOINT = srv:replay("chat_stream_progress_cached") },
                               { "Hi" })
    assert.equal(0, code, err)
    assert.matches("\rreading prompt 1449/1450 %(99%% cached%)", err)
    assert.matches("\rreading prompt 1450/1450 %(99%% cached%)", err)
    assert.matches("%[length: 1450 prompt %(1449 cached%) %+ 4 generated tokens, %d+ tokens/s, " ..
                   "first token [%d.]+ s, [%d.]+ s%]", out)
  end)

  it("chat.lua talks to a server on a unix socket (LLAMACPP_ENDPOINT=unix:PATH)", function()
    local usrv = fixture.start{ unix = true }
    usrv:reply{ content = "Hello from a socket.", tokens = { "Hello", " from", " a socket." } }
    local code, out, err = run("examples/chat.lua", { LLAMACPP_ENDPOINT = usrv.endpoint }, { "Hi" })
    usrv:stop()
    assert.equal(0, code, err)
    assert.matches("Hello from a socket.", out, 1, true)
  end)

  it("chat.lua explains what to do when nothing listens", function()
    local code, _, err = run("examples/chat.lua",
                             { LLAMACPP_ENDPOINT = "http://127.0.0.1:" .. util.closed_port() })
    assert.equal(1, code)
    assert.matches("llama%-server not running at http://127%.0%.0%.1:%d+", err)
    assert.matches("llama%-server %-m", err)
    assert.matches("make demo", err)
  end)

  it("resume.lua stops, and a new process goes on from the file, nothing lost or repeated", function()
    local tokens = { "Once ", "upon ", "a ", "tïme ", "there ", "was ", "Lua." }
    local state = os.tmpname()
    srv:reply{ tokens = tokens }
    local env = { LLAMACPP_ENDPOINT = srv.endpoint, LLAMACPP_RESUME_FILE = state, STOP_AFTER = "3" }
    local code, first, err = run("examples/resume.lua", env, { "Tell me a story." })
    assert.equal(0, code, err)
    assert.equal("Once upon a ", first)
    assert.matches("%-%-continue goes on", err)
    env.STOP_AFTER = nil
    local rest
    code, rest, err = run("examples/resume.lua", env, { "--continue" })
    assert.equal(0, code, err)
    assert.equal("tïme there was Lua.\n", rest)
    assert.is_nil(io.open(state, "r"))     -- the file goes once the reply is whole
    local again, _, why = run("examples/resume.lua", env, { "--continue" })
    assert.equal(1, again)
    assert.matches("nothing to continue", why)
  end)

  it("demo.lua replays a recorded reply, labelled as such", function()
    local code, out = run("examples/demo.lua", { LLAMACPP_DEMO_PACE = "0" })
    assert.equal(0, code)
    assert.matches("REPLAY: not a live model", out)
    assert.matches("512 generated tokens; replayed", out)
  end)

  it("models.lua lists the models, loads, asks each and unloads (router mode)", function()
    local ep = srv:router{ models = { "tiny", "tiny-tools" }, loaded = { "tiny" }, load_time = 0.05 }
    local code, out, err = run("examples/models.lua", { LLAMACPP_ENDPOINT = ep })
    assert.equal(0, code, err)
    assert.matches("tiny%s+loaded\n", out)
    assert.matches("tiny%-tools%s+unloaded\n", out)
    assert.matches("%[tiny%] model tiny\n", out)
    assert.matches("%[tiny%-tools%] model tiny%-tools\n", out)
    assert.matches("unloaded tiny%-tools\n", out)
    local loads = 0
    for _, r in ipairs(srv:requests()) do
      if r.path:find("/models/load", 1, true) then loads = loads + 1 end
    end
    assert.equal(1, loads)                       -- only the unloaded one
  end)

  it("parallel.lua prints every answer", function()
    local want = util.expected("chat_stream_usage").content
    local code, out = run("examples/parallel.lua", { LLAMACPP_ENDPOINT = srv:replay("chat_stream_usage", "pace=1") },
                          { "Hi", "3" })
    assert.equal(0, code)
    for i = 1, 3 do
      assert.truthy(out:find("[" .. i .. "] " .. want, 1, true), "answer " .. i)
    end
  end)

  it("embeddings.lua names the nearest sentence", function()
    -- five inputs (the query and four sentences); the fourth sentence is made nearest
    local vecs = { { 1, 0, 0 }, { 0.2, 0.9, 0 }, { 0, 0, 1 }, { 0, 1, 0.1 }, { 0.9, 0.1, 0 } }
    local data = {}
    for i, v in ipairs(vecs) do data[i] = { object = "embedding", index = i - 1, embedding = v } end
    srv:write("emb5", fixture.http_response(200, { { "Content-Type", "application/json" } },
      cjson.encode{ model = "m", object = "list", data = data, usage = { prompt_tokens = 20, total_tokens = 20 } }))
    local code, out = run("examples/embeddings.lua", { LLAMACPP_ENDPOINT = srv:replay("emb5") })
    assert.equal(0, code)
    assert.matches("nearest: A kitten naps in the sun%.", out)
  end)

  it("affinity.lua keeps each conversation on one server and counts the cache", function()
    local eps = {}
    for i, n in ipairs{ "a", "b", "c" } do
      srv:write("aff_" .. n, util.fixture("cache_turn2_nonstream"))
      eps[i] = srv:replay("aff_" .. n)
    end
    local code, out, err = run("examples/affinity.lua", { LLAMACPP_ENDPOINTS = table.concat(eps, ",") })
    assert.equal(0, code, err)
    for _, topic in ipairs{ "the Lua language", "prime numbers", "the moon", "tea" } do
      local at = {}
      for who in out:gmatch("%[" .. topic:gsub("%p", "%%%0") .. ", turn %d, (server%d)%]") do at[#at + 1] = who end
      assert.equal(3, #at)
      assert.equal(at[1], at[2])
      assert.equal(at[1], at[3])
    end
    -- 12 answers, all at home; cache_turn2_nonstream: 441 cached, 1 evaluated each
    local answered, home, cached = 0, 0, 0
    for a, h, c in out:gmatch("server%d +(%d+) +(%d+) +%d+ +(%d+) +%d+") do
      answered, home, cached = answered + a, home + h, cached + c
    end
    assert.equal(12, answered)
    assert.equal(12, home)
    assert.equal(12 * 441, cached)
  end)

  it("context.lua keeps a conversation inside the window", function()
    local fake = require("llamacpp.testing").start{ cache = { n_ctx = 150, words = 10 } }
    local prompts = {}
    for i = 1, 12 do prompts[i] = "question " .. i .. (" padding"):rep(8) end
    local code, out, err = run("examples/context.lua", { LLAMACPP_ENDPOINT = fake.endpoint }, prompts)
    assert.equal(0, code, err)
    assert.matches("window: 150 tokens per slot", out)
    local n, left_out = 0, 0
    local line = "%[sending (%d+) tokens of (%d+) budget; (%d+) of %d+ messages left out%]"
    for used, budget, dropped in out:gmatch(line) do
      n = n + 1
      assert.equal("70", budget)                         -- 150 - max_tokens 64 - margin 16
      assert.is_true(tonumber(used) <= 70)
      left_out = math.max(left_out, tonumber(dropped))
    end
    assert.equal(12, n)
    assert.is_true(left_out > 0)
    fake:stop()
  end)

  it("vision.lua sends the file's image and streams the description; a model without one says what to do", function()
    local fake = require("llamacpp.testing").start{ inputs = { "text", "image" } }
    fake:reply{ content = "A single pixel." }
    local code, out, err = run("examples/vision.lua", { LLAMACPP_ENDPOINT = fake.endpoint },
                               { "spec/fixtures/media/pixel.png" })
    assert.equal(0, code, err)
    assert.equal("A single pixel.\n", out)
    local reqs = fake:requests()
    local part = reqs[#reqs].json.messages[1].content[2]
    assert.matches("^data:image/png;base64,iVBORw0KGgo", part.image_url.url)
    fake:stop()
    local blind = require("llamacpp.testing").start{ inputs = { "text" } }
    local _
    code, _, err = run("examples/vision.lua", { LLAMACPP_ENDPOINT = blind.endpoint },
                       { "spec/fixtures/media/tone.wav" })
    assert.equal(1, code)
    assert.matches("audio input is not supported", err, 1, true)
    assert.matches("--mmproj", err, 1, true)
    code, _, err = run("examples/vision.lua", { LLAMACPP_ENDPOINT = blind.endpoint }, { "README.md" })
    assert.equal(1, code)
    assert.matches("unknown audio type", err, 1, true)
    blind:stop()
  end)

  it("agent.lua runs its tools on the model's calls and streams the answer", function()
    local fake = require("llamacpp.testing").start()
    fake:reply{ tool_calls = { { name = "read_file", arguments = { path = "README.md" }, id = "r" },
                               { name = "calc", arguments = { expression = "(2 + 1) * 7" }, id = "c" },
                               { name = "read_file", arguments = { path = "/etc/passwd" }, id = "p" } } }
    fake:reply{ content = "README.md has many lines; times 3 is more." }
    local code, out, err = run("examples/agent.lua", { LLAMACPP_ENDPOINT = fake.endpoint }, { "Count the lines" })
    local reqs = fake:requests()
    fake:stop()
    assert.equal(0, code, err)
    assert.equal("README.md has many lines; times 3 is more.\n", out)
    assert.matches("%[step 1%] read_file%(.*README%.md.*%) [%d.]+ ms\n", err)
    assert.matches("%[step 1%] calc%(.*%) [%d.]+ ms\n", err)
    assert.matches("read_file%(.*passwd.*%) failed: the tool failed: only files under the current directory", err)
    assert.matches("%[stop after 2 steps, 3 tool calls %(1 failed%), %d+%+%d+ tokens%]", err)
    assert.equal(2, #reqs)
    local m = reqs[2].json.messages
    local _, lines = util.read("README.md"):gsub("\n", "")
    assert.equal(lines, cjson.decode(m[4].content).lines)
    assert.equal(21, cjson.decode(m[5].content).value)
    assert.matches("^error: ", m[6].content)
  end)

  it("router.lua falls back and says who answered", function()
    local code, out = run("examples/router.lua", {
      LLAMACPP_ENDPOINT = "http://127.0.0.1:" .. util.closed_port(),
      OLLAMA_HOST = srv:replay("ollama_chat_stream"),
    })
    assert.equal(0, code)
    assert.matches("ollama", out)
  end)
end)
