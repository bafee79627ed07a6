-- llamacpp: chat with llama-server and inline completion (:help llamacpp).
-- Commands, <Plug> mappings and highlight groups only: the plugin's
-- modules (lua/llamacpp/nvim*.lua) and the llamacpp module are loaded on
-- first use, so a missing build costs nothing at startup and is reported
-- (with the command that builds it) when used.
-- luacheck: read globals vim
if vim.g.loaded_llamacpp then return end
vim.g.loaded_llamacpp = true   -- luacheck: ignore 122 (vim.g is meant to be set)

-- where this plugin is, resolved now (before any :cd; symlinks followed)
require("llamacpp.nvim.loader")

local function plugin() return require("llamacpp.nvim") end

local function run(f, ...)
  local ok, err = pcall(f, ...)
  if not ok then
    vim.notify((tostring(err):gsub("^llamacpp: ", "llamacpp: ")), vim.log.levels.ERROR)
  end
  return ok
end

local command = vim.api.nvim_create_user_command

command("LlamaChat", function(a)
  local ctx
  if a.range > 0 then
    ctx = { lines = vim.api.nvim_buf_get_lines(0, a.line1 - 1, a.line2, false),
            filetype = vim.bo.filetype, name = vim.fn.expand("%:~:.") }
  end
  run(function() plugin().chat(a.args, ctx) end)
end, { nargs = "*", range = true,
       desc = "Send {prompt} (and the range, as context) to the chat; no argument: show/hide it" })

command("LlamaImage", function(a)
  -- the first word is the file when it names one, else the file is the name under the cursor
  local first, rest = a.args:match("^(%S+)%s*(.*)$")
  local path, prompt
  if first and vim.fn.filereadable(vim.fn.expand(first)) == 1 then
    path, prompt = vim.fn.expand(first), rest
  else
    path, prompt = nil, a.args
  end
  run(function() plugin().image(path, prompt) end)
end, { nargs = "*", complete = "file",
       desc = "Send an image file ({file}, else the name under the cursor) with [prompt] to the chat" })

command("LlamaSend", function() run(function() plugin().send() end) end,
        { nargs = 0, desc = "Send what is typed in the chat's input" })

command("LlamaCancel", function()
  run(function()
    if not plugin().cancel() then vim.notify("llamacpp: nothing is streaming", vim.log.levels.INFO) end
  end)
end, { nargs = 0, desc = "Stop the reply that is streaming" })

command("LlamaReset", function() run(function() plugin().reset() end) end,
        { nargs = 0, desc = "Start a new conversation" })

command("LlamaResume", function(a) run(function() plugin().resume(a.bang) end) end,
        { nargs = 0, bang = true,
          desc = "Show the reply that was streaming when Neovim quit, and the rest of it; !: forget them" })

command("LlamaFim", function(a)
  local what = a.args ~= "" and a.args or "toggle"
  local f = ({ on = "fim_enable", off = "fim_disable", toggle = "fim_toggle" })[what]
  if not f then
    vim.notify("llamacpp: :LlamaFim on|off|toggle", vim.log.levels.ERROR)
    return
  end
  run(function() plugin()[f]() end)
end, { nargs = "?", complete = function() return { "on", "off", "toggle" } end,
       desc = "Inline completion (fill-in-the-middle) as you type: on, off, toggle" })

local map = vim.keymap.set
map("n", "<Plug>(LlamaSend)", function() run(function() plugin().send() end) end,
    { desc = "llamacpp: send the chat's input" })
map("n", "<Plug>(LlamaCancel)", function() run(function() plugin().cancel() end) end,
    { desc = "llamacpp: stop the reply" })
map("n", "<Plug>(LlamaChatToggle)", function() run(function() plugin().toggle() end) end,
    { desc = "llamacpp: show or hide the chat" })
map("i", "<Plug>(LlamaFimAccept)", function() run(function() plugin().fim_accept() end) end,
    { desc = "llamacpp: accept the suggestion" })
map("i", "<Plug>(LlamaFimAcceptLine)", function()
  run(function() plugin().fim_accept("line") end)
end, { desc = "llamacpp: accept the suggestion's first line" })
map("i", "<Plug>(LlamaFimDismiss)", function() run(function() plugin().fim_dismiss() end) end,
    { desc = "llamacpp: dismiss the suggestion" })

local group = vim.api.nvim_create_augroup("llamacpp", { clear = true })
vim.api.nvim_create_autocmd("VimLeavePre", { group = group, callback = function()
  if package.loaded["llamacpp.nvim"] then pcall(plugin().shutdown) end
end })
-- A reply was streaming when Neovim last quit and the server went on with
-- it: say how to see it (a glob at startup; the plugin loads only then).
local function offer_resume()
  local dir = require("llamacpp.nvim.config").resume_dir()
  if #vim.fn.glob(dir .. "/*.json", true, true) == 0 then return end
  if not plugin().config().resume then return end
  local n = plugin().saved_count()
  if n == 0 then return end
  vim.notify("llamacpp: " .. (n == 1 and "a reply was" or n .. " replies were") ..
             " streaming when Neovim quit, and llama-server went on: :LlamaResume shows " ..
             (n == 1 and "it" or "the newest") .. " (:LlamaResume! forgets " ..
             (n == 1 and "it" or "them") .. ")", vim.log.levels.INFO)
end
if vim.v.vim_did_enter == 1 then
  vim.schedule(function() pcall(offer_resume) end)
else
  vim.api.nvim_create_autocmd("VimEnter", { group = group, once = true, callback = function()
    pcall(offer_resume)
  end })
end
vim.api.nvim_create_autocmd("ColorScheme", { group = group, callback = function()
  require("llamacpp.nvim.highlights").apply()
end })
require("llamacpp.nvim.highlights").apply()
