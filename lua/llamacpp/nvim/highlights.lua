--- llamacpp.nvim.highlights: the plugin's highlight groups and the groups
-- they link to by default (`:highlight default link`: a user's own
-- :highlight of a group wins, before or after).
-- luacheck: read globals vim
local M = {}

M.LINKS = {
  LlamaUser = "Title",          -- the chat's "## You" headers
  LlamaAssistant = "Identifier", -- the chat's "## llama" headers
  LlamaReasoning = "Comment",   -- reasoning text
  LlamaFooter = "Comment",      -- "[stop · 12 tokens · ...]" after a reply
  LlamaLength = "WarningMsg",   -- the footer of a reply cut short by max_tokens
  LlamaError = "ErrorMsg",      -- "[error] ..."
  LlamaWaiting = "Comment",     -- the waiting indicator
  LlamaNotice = "WarningMsg",   -- "N earlier turns left out to fit the context window"
  LlamaGhost = "Comment",       -- inline completion's ghost text
}

--- Links the groups (again, after a :colorscheme).
function M.apply()
  for name, to in pairs(M.LINKS) do vim.cmd("highlight default link " .. name .. " " .. to) end
end

return M
