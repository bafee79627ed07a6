--- Text assembled from many small pieces (the tokens of a stream), in
-- one buffer of the C core (`core.text()`, src/text.c): a long stream
-- costs about the size of its text, outside the Lua heap (no string per
-- token, no collector's slack over them). With keep = false nothing is
-- kept (streams opened with assemble = false).
local core = require "llamacpp.core"

local M = {}

-- What a stream that keeps nothing has: the same methods, no text.
local NONE = {}
function NONE.add() end
function NONE.get() return nil end
function NONE.empty() return true end

--- A Text: `:add(s)`, `:get()` (the text so far: a string, or nil when
-- nothing is kept), `:empty()` (true when no piece was added, or nothing
-- is kept).
function M.new(keep)
  if keep == false then return NONE end
  return core.text()
end

--- Whether a stream opened with `opts` keeps its text (assemble ~= false).
function M.keep(opts)
  return not (opts and opts.assemble == false)
end

return M
