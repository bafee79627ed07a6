--- llamacpp.nvim.appender: writes streamed text at a place in a buffer,
-- touching only the text it adds.
--
--   local a = appender.new(buf, ns, row, col)   -- 0-based, like extmarks
--   a:write("some text\nmore")                  -- inserted at the place, which moves past it
--   a:pos()                                     -- row, col of the place now
--
-- The place is an extmark with right gravity: text inserted there goes
-- before it, and edits elsewhere in the buffer (the user typing below,
-- lines added above) move it along. A write is one nvim_buf_set_text of
-- the new text at the mark: nothing is read back, and the line it lands on
-- is not rewritten by Lua, so a token costs the same on a long line as on a
-- short one (bench/nvim_append.lua measures it).
-- luacheck: read globals vim
local M = {}

local api = vim.api

local Appender = {}
Appender.__index = Appender

--- A writer at (row, col) of buf; ns is the namespace of its extmark.
function M.new(buf, ns, row, col)
  local id = api.nvim_buf_set_extmark(buf, ns, row, col, { right_gravity = true })
  return setmetatable({ buf = buf, ns = ns, id = id }, Appender)
end

--- Splits s at "\n" into a list of lines (a trailing "\n" gives a last "").
function M.lines(s)
  local out, pos = {}, 1
  while true do
    local nl = s:find("\n", pos, true)
    if not nl then
      out[#out + 1] = s:sub(pos)
      return out
    end
    out[#out + 1] = s:sub(pos, nl - 1)
    pos = nl + 1
  end
end

--- Where the next text goes: row, col (0-based).
function Appender:pos()
  local p = api.nvim_buf_get_extmark_by_id(self.buf, self.ns, self.id, {})
  return p[1], p[2]
end

--- Inserts text (which may hold newlines) at the place.
function Appender:write(text)
  if text == "" then return end
  local row, col = self:pos()
  api.nvim_buf_set_text(self.buf, row, col, row, col, M.lines(text))
end

--- The extmark stays in the buffer (for the caller's later use) or is
-- removed with drop().
function Appender:drop()
  pcall(api.nvim_buf_del_extmark, self.buf, self.ns, self.id)
end

return M
