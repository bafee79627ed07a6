-- The repository is the plugin: installed the ways Neovim users install
-- plugins (a plugin manager's 'runtimepath' entry, a symlinked
-- pack/*/start clone, a relative 'runtimepath' and a :cd), it finds its
-- own files and its C core, and :LlamaChat {prompt} works; without the
-- build it says which command makes it. Each run in a real headless
-- Neovim with a scratch HOME (no user config, no user's plugins).
local fixture = require "fixture.control"
local harness = require "nvim.harness"
local util = require "spec.util"

describe("the Neovim plugin, installed", function()
  local root = harness.root()
  local why = harness.missing(root)
  if why then it("needs nvim and the LuaJIT build", function() pending(why) end) return end

  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function works(res)
    assert.equal("done", res.last.status)
    assert.equal(util.expected("chat_stream").content, res.reply)
    assert.equal(root .. "/build/luajit/llamacpp/core.so", res.core)
    assert.equal(root, res.root)
  end

  it("as a plugin manager's runtimepath entry (lazy.nvim, packer, vim-plug)", function()
    local res = harness.run_plugin(root, { scenario = "install", endpoint = srv:replay("chat_stream") },
                                   { layout = "rtp" })
    assert.equal(root .. "/plugin/llamacpp.lua", res.plugin_file)
    assert.is_true(res.commands)
    works(res)
  end)

  it("as a symlinked pack/*/start clone", function()
    local res, _, stderr = harness.run_plugin(root, { scenario = "install", endpoint = srv:replay("chat_stream") },
                                              { layout = "pack" })
    assert.matches("/pack/test/start/llamacpp/plugin/llamacpp.lua$", res.plugin_file)
    works(res)                             -- the root is the link's target, resolved
    assert.equal("", stderr)
  end)

  it("from a relative runtimepath, after a :cd elsewhere", function()
    local home = harness.home()
    local ok, res = pcall(harness.run_plugin, root,
                          { scenario = "install", endpoint = srv:replay("chat_stream"), cd = home .. "/work" },
                          { layout = "relative", home = home })
    harness.rm(home)
    assert(ok, res)
    works(res)
  end)

  it("without the C module built, says which command builds it", function()
    -- a copy of the plugin's files, no build/ directory
    local home = harness.home()
    local copy = harness.copy_plugin(root, home, false)
    local ok, res = pcall(harness.run_plugin, root, { scenario = "unloadable", endpoint = srv:replay("chat_stream") },
                          { layout = "rtp", root = copy, home = home })
    harness.rm(home)
    assert(ok, res)
    assert.is_false(res.busy)
    local msg = res.notes[#res.notes]
    assert.truthy(msg, "no message")
    if not msg.msg:find("cannot load", 1, true) then
      pending("a llamacpp core on Neovim's default paths loaded instead: " .. msg.msg)
      return
    end
    assert.matches("run `make nvim` in " .. copy:gsub("%p", "%%%0"), msg.msg)
    assert.equal(4, msg.level)            -- vim.log.levels.ERROR
  end)
end)
