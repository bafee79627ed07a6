--- Text assembled from many small pieces (the tokens of a stream).
-- Pieces are joined 256 at a time, so a long stream costs about the size
-- of its text rather than a table slot per token. With keep = false
-- nothing is kept (streams opened with assemble = false).
local M = {}

local concat = table.concat

local Text = {}
Text.__index = Text

function M.new(keep)
  return setmetatable({ keep = keep ~= false, parts = {}, n = 0, chunks = {} }, Text)
end

function Text:add(s)
  if not self.keep then return end
  local n = self.n + 1
  self.parts[n] = s
  if n == 256 then
    self.chunks[#self.chunks + 1] = concat(self.parts, "", 1, 256)
    n = 0
  end
  self.n = n
end

--- Whether a stream opened with `opts` keeps its text (assemble ~= false).
function M.keep(opts)
  return not (opts and opts.assemble == false)
end

--- The text so far: a string, or nil when nothing is kept.
function Text:get()
  if not self.keep then return nil end
  if #self.chunks == 0 then return concat(self.parts, "", 1, self.n) end
  return concat(self.chunks) .. concat(self.parts, "", 1, self.n)
end

--- True when no piece was added (or nothing is kept).
function Text:empty()
  return self.n == 0 and #self.chunks == 0
end

return M
