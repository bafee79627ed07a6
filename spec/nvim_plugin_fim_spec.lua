-- Inline completion (fill-in-the-middle) in a real headless Neovim
-- against the fixture server answering /infill as llama-server streams it
-- (the native shape of spec/fixtures/completion_native_stream): ghost
-- text appears after a pause in typing, the next keystroke replaces it
-- (the old request is cancelled: the server logs the disconnect), the
-- accept key takes it, and with nothing shown the key is itself.
local fixture = require "fixture.control"
local harness = require "nvim.harness"
local cjson = require "cjson"

-- llama-server's /infill stream: one event per piece, then the stop event.
local function infill_response(pieces)
  local chunks = {}
  for i, p in ipairs(pieces) do
    chunks[i] = "data: " .. cjson.encode{ index = 0, content = p, tokens = { i }, stop = false, id_slot = -1,
                                          tokens_predicted = i, tokens_evaluated = 16 } .. "\n\n"
  end
  chunks[#chunks + 1] = "data: " .. cjson.encode{ index = 0, content = "", tokens = {}, id_slot = 0, stop = true,
    model = "models/tiny.gguf", tokens_predicted = #pieces, tokens_evaluated = 16, stop_type = "eos",
    timings = { prompt_n = 16, predicted_n = #pieces } } .. "\n\n"
  local bytes = fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil, { chunks = chunks })
  local _, e = bytes:find(chunks[1], 1, true)
  return bytes, e + 2                       -- and where the first piece's HTTP chunk ends
end

-- A Lua file (python's ftplugin starts the python3 provider: seconds of
-- startup that have nothing to do with the plugin).
local TEXT = { "local x = 1", "", "local function add(a, b)", "    " }

describe("the Neovim plugin's inline completion", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end

  local srv
  before_each(function() srv = fixture.start() end)
  after_each(function() srv:stop() end)

  local function infills()
    local out = {}
    for _, r in ipairs(srv:requests()) do
      if r.path:find("/infill$") then out[#out + 1] = cjson.decode(r.body) end
    end
    return out
  end

  it("shows ghost text from /infill with the context around the cursor; <Tab> takes it", function()
    srv:write("fim_whole", (infill_response{ "return", " a + b", "\n" }))
    local res = harness.run_plugin(root, { scenario = "fim", endpoint = srv:replay("fim_whole"), text = TEXT,
                                           others = { "def helper():\n    return 42\n" },
                                           first_len = #"return a + b\n", accept = "<Tab>" })
    assert.equal("return a + b\n", res.first.text)
    assert.equal(3, res.first.row)
    assert.equal(4, res.first.col)
    assert.same({ "local x = 1", "", "local function add(a, b)", "    return a + b", "" }, res.after_accept)
    assert.equal(1, res.stats.accepted)
    assert.equal(cjson.null, res.ghost_after_esc)
    local body = infills()[1]
    assert.equal("local x = 1\n\nlocal function add(a, b)\n", body.input_prefix)
    assert.equal("    ", body.prompt)
    assert.equal("\n", body.input_suffix)
    assert.equal(128, body.n_predict)
    assert.is_true(body.stream)
    assert.equal(1, #body.input_extra)
    assert.matches("other1%.txt$", body.input_extra[1].filename)
    assert.equal("def helper():\n    return 42\n", body.input_extra[1].text)
  end)

  it("the next keystroke replaces the suggestion and cancels its request", function()
    local bytes, first = infill_response{ "total", " = a + b" }
    srv:write("fim_stall", bytes)
    local res = harness.run_plugin(root, { scenario = "fim", endpoint = srv:replay("fim_stall", "stall=" .. first),
                                           text = TEXT, type = "r", accept = "<Tab>" })
    assert.equal("total", res.first.text)
    assert.equal("    r", res.after_type_line)     -- the key went into the buffer, not the ghost
    assert.equal(5, res.second.col)
    assert.truthy(srv:wait_for(function(r) return r.event == "abort" end, 10),
                  "the first request was not cancelled")
    local reqs = infills()
    assert.is_true(#reqs >= 2)
    assert.equal("    ", reqs[1].prompt)
    assert.equal("    r", reqs[2].prompt)
    assert.equal("    rtotal", res.after_accept[4])
    assert.is_true(res.stats.cancelled >= 1)
  end)

  it("with no suggestion shown, the accept key is an ordinary key", function()
    local bytes, first = infill_response{ "x" }
    srv:write("fim_plain", bytes)
    local res = harness.run_plugin(root, { scenario = "fim", endpoint = srv:replay("fim_plain", "stall=" .. first),
                                           text = TEXT, plain = "<Tab>" })
    assert.equal("    \t", res.after_plain[4])
  end)
end)
