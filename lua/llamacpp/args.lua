-- Programmer errors (DESIGN.md section 3): raised at the line of the
-- caller's code, however deep inside llamacpp they are found. The level
-- is not counted by hand: raise() walks up the stack past every frame of
-- llamacpp's own modules (the files beside this one and below) and past
-- C frames, to the first frame of the caller's code.
local M = {}

local getinfo, error, type, getmetatable = debug.getinfo, error, type, getmetatable

-- "@/usr/share/lua/5.4/llamacpp/": the chunk names of llamacpp's modules
-- start with this file's directory, wherever the rock is installed
local prefix = getinfo(1, "S").source:match("^(@.*[/\\])[^/\\]+$") or "\0"
local sub = string.sub

-- The error() level, counted from raise(), of the caller's frame; 0 (no
-- position) when the stack has no frame outside llamacpp (a coroutine of
-- llamacpp.uv: it raises the message again at its own caller).
local function caller_level()
  local level = 3                -- 1: this function, 2: raise, 3: raise's caller
  while true do
    local info = getinfo(level, "S")
    if not info then return 0 end
    -- "tail": Lua 5.1's placeholder for a frame a tail call replaced
    if sub(info.source, 1, #prefix) ~= prefix and info.what ~= "C" and info.what ~= "tail" then
      return level - 1
    end
    level = level + 1
  end
end

--- Raises msg at the caller's line.
function M.raise(msg)
  error(msg, caller_level())
end

--- Raises "bad argument #n to 'fname' (msg)" at the caller's line unless cond.
function M.check(cond, n, fname, msg)
  if not cond then
    error("bad argument #" .. n .. " to '" .. fname .. "' (" .. msg .. ")", caller_level())
  end
end

--- "table expected, got nil" and the like.
function M.expected(what, v)
  return what .. " expected, got " .. type(v)
end

--- Functions, and tables or userdata with __call (luv takes both).
function M.callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

-- A message without the position error() put in front of it (one raised
-- inside a coroutine or a pcall, to be raised again at the caller's line).
function M.unplace(msg)
  if type(msg) ~= "string" then return msg end
  return (msg:gsub("^[^\n]-:%d+: ", "", 1))
end

return M
