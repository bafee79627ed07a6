--- llamacpp.nvim: the Neovim plugin (chat with history, inline completion
-- from /infill, :checkhealth llamacpp), on llamacpp.uv.
--
--   require("llamacpp.nvim").setup{ endpoint = "http://127.0.0.1:8080", fim = { enabled = true } }
--
-- plugin/llamacpp.lua defines the commands and <Plug> mappings; this
-- module is loaded on first use. Everything runs on Neovim's own loop
-- (vim.uv, or vim.loop before 0.10): no child process, no blocking call.
-- See :help llamacpp (doc/llamacpp.txt).
-- luacheck: read globals vim
local M = {}

local config_mod = require "llamacpp.nvim.config"
local loader = require "llamacpp.nvim.loader"

local cfg = config_mod.resolve(nil)
local client

--- vim.notify with the plugin's prefix (from any context).
function M.notify(msg, level)
  local function go() vim.notify("llamacpp: " .. tostring(msg), level or vim.log.levels.INFO) end
  if vim.in_fast_event() then vim.schedule(go) else go() end
end

--- The config setup() made (defaults when setup() was not called).
function M.config() return cfg end

--- The llamacpp client for the configured server (made on first use).
function M.client()
  if client then return client end
  local llamacpp = loader.load(cfg.root)
  local o = config_mod.client_options(cfg)
  -- warnings (a key over plain http) as notifications, not on the terminal
  o.warn = function(msg) M.notify(msg, vim.log.levels.WARN) end
  client = llamacpp.new(o)
  return client
end

--- Links the plugin's highlight groups to their defaults.
M.highlights = require("llamacpp.nvim.highlights").apply

local function chat() return require("llamacpp.nvim.chat") end
local function fim()
  local f = require("llamacpp.nvim.fim")
  f.attach(M)
  return f
end

--- setup{...}: checks the options (an unknown or mistyped one raises with
-- its name) and applies them. See :help llamacpp-setup.
function M.setup(opts)
  local c = config_mod.resolve(opts)
  if c.root and vim.fn.isdirectory(c.root) == 0 then
    error("llamacpp.setup: root: no such directory: " .. c.root, 0)
  end
  cfg = c
  client = nil
  M.highlights()
  if cfg.fim.enabled then fim().enable() else
    if package.loaded["llamacpp.nvim.fim"] then fim().disable() end
  end
  return M
end

--- :LlamaChat {prompt}: opens or reuses the chat and sends the prompt
-- (with ctx, a range, as context). Returns the chat buffer.
function M.chat(prompt, ctx) return chat().chat(prompt, ctx) end
--- :LlamaImage: sends an image file (default: the file name under the
-- cursor) with a prompt (default "Describe this image.").
function M.image(path, prompt) return chat().image(path, prompt) end
--- Shows or hides the chat window.
function M.toggle() return chat().toggle() end
--- Sends what is typed in the chat's input.
function M.send() return chat().send_input() end
--- Stops the reply that is streaming; true if one was.
function M.cancel() return chat().cancel() end
--- True while a reply streams.
function M.busy() return package.loaded["llamacpp.nvim.chat"] ~= nil and chat().busy() end
--- The chat buffer, or nil.
function M.buf() return package.loaded["llamacpp.nvim.chat"] and chat().buf() or nil end
--- The conversation: {{role =, content =}, ...}.
function M.history() return chat().history() end
--- How the last reply ended: {status = "done" | "error" | "cancelled", error, stop_reason, usage, buf}.
function M.last() return package.loaded["llamacpp.nvim.chat"] and chat().last or nil end
--- The newest reply left streaming when Neovim quit, shown and read on
-- (forget: drop them all). See :help :LlamaResume.
function M.resume(forget) return chat().resume(forget) end
--- How many replies were left streaming when Neovim quit.
function M.saved_count() return chat().saved_count() end
--- A new conversation.
function M.reset() return chat().reset() end

--- Inline completion: on, off, or toggled.
function M.fim_enable() return fim().enable() end
function M.fim_disable() return fim().disable() end
function M.fim_toggle() return fim().toggle() end
--- Takes the suggestion shown (kind "line": its first line); drops it.
function M.fim_accept(kind) return fim().accept(kind) end
function M.fim_dismiss() return fim().dismiss() end

--- Ends every request (VimLeavePre): the server sees the disconnects.
function M.shutdown()
  if package.loaded["llamacpp.nvim.chat"] then chat().shutdown() end
  if package.loaded["llamacpp.nvim.fim"] then fim().disable() end
end

chat().attach(M)

return M
