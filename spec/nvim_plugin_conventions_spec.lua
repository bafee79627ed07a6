-- The plugin's conventions, in a real headless Neovim: :help llamacpp,
-- :checkhealth llamacpp against the fixture server, setup() that says
-- which option is wrong.
local fixture = require "fixture.control"
local harness = require "nvim.harness"

describe("the Neovim plugin's conventions", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end

  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  it(":help llamacpp (doc/llamacpp.txt, tags made as a plugin manager makes them)", function()
    -- a copy of the plugin, so that :helptags writes doc/tags there
    local home = harness.home()
    local copy = harness.copy_plugin(root, home, true)
    local ok, res = pcall(harness.run_plugin, root,
                          { scenario = "install", endpoint = srv:replay("chat_stream"), help = true },
                          { layout = "rtp", root = copy, home = home })
    harness.rm(home)
    assert(ok, res)
    assert.equal("done", res.last.status)
    assert.equal("llamacpp.txt", res.help_file)
    assert.matches("%*llamacpp%.txt%*", res.help_line)
    assert.matches("%*llamacpp%-setup%*", res.help_setup)
  end)

  it(":checkhealth llamacpp reports the module, libcurl, the server, its model and context", function()
    local res = harness.run_plugin(root, { scenario = "health", endpoint = srv:replay("props") })
    local report = table.concat(res.report, "\n")
    assert.matches("llamacpp: the module", report, 1, true)
    assert.matches("OK:? llamacpp %d", report)
    assert.matches(root:gsub("%p", "%%%0") .. "/build/luajit/llamacpp/core%.so", report)
    assert.matches("OK:? libcurl: libcurl/%d", report)
    assert.matches("OK:? llama%-server answers /health", report)
    assert.matches("model: models/tiny%.gguf, context: 1024 tokens", report)
    assert.not_matches("ERROR", report)
  end)

  it(":checkhealth llamacpp says when nothing listens", function()
    local port = require("spec.util").closed_port()
    local res = harness.run_plugin(root, { scenario = "health", endpoint = "http://127.0.0.1:" .. port })
    local report = table.concat(res.report, "\n")
    assert.matches("ERROR:? llama%-server not running at http://127%.0%.0%.1:" .. port, report)
  end)

  local function setup_error(opts)
    local res = harness.run_plugin(root, { scenario = "setup", opts = opts })
    assert.is_false(res.ok)
    return res.message
  end

  it("setup() names the option that is wrong, and takes good ones", function()
    -- several setups in one Neovim would be quicker; one each keeps them apart
    assert.equal("llamacpp.setup: unknown option 'endpont'", setup_error{ endpont = "x" })
    assert.matches("^llamacpp%.setup: fim%.debounce_ms: expected a whole number >= 0, got %-1",
                   setup_error{ fim = { debounce_ms = -1 } })
    assert.matches("^llamacpp%.setup: reasoning: expected \"fold\", \"show\" or \"hide\"",
                   setup_error{ reasoning = "folded" })
    assert.equal("llamacpp.setup: unknown option 'fim.keys.acept'", setup_error{ fim = { keys = { acept = "x" } } })
    assert.matches("^llamacpp%.setup: system: expected string, got number", setup_error{ system = 1 })
    assert.matches("^llamacpp%.setup: fit: expected boolean, got string", setup_error{ fit = "yes" })
    local res = harness.run_plugin(root, { scenario = "setup", opts = { system = "ok", fim = { n_predict = 64 } } })
    assert.is_true(res.ok)
  end)
end)
