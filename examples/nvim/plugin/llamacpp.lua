-- :LlamaChat {prompt} and :LlamaCancel (see lua/llamacpp_nvim/init.lua).
-- The llamacpp module itself is loaded on the first :LlamaChat, so a
-- missing module costs nothing at startup and is reported when used.
if vim.g.loaded_llamacpp_nvim then return end
vim.g.loaded_llamacpp_nvim = true   -- luacheck: ignore 122 (vim.g is meant to be set)

local function run(f, ...)
  local ok, err = pcall(f, ...)
  if not ok then
    vim.api.nvim_err_writeln(tostring(err))
  end
end

vim.api.nvim_create_user_command("LlamaChat", function(a)
  run(require("llamacpp_nvim").chat, a.args)
end, { nargs = "+", desc = "Stream llama-server's answer into the chat buffer" })

vim.api.nvim_create_user_command("LlamaCancel", function()
  run(function()
    if not require("llamacpp_nvim").cancel() then
      vim.notify("llamacpp: nothing is streaming", vim.log.levels.INFO)
    end
  end)
end, { nargs = 0, desc = "Stop the reply that is streaming" })
