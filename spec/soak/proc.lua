-- What /proc says about this process (Linux): resident memory, its peak, and
-- the number of open file descriptors. Used by the soak and the hostile specs.
local M = {}

local function status()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- True when /proc/self is readable (Linux).
function M.available()
  return status() ~= nil
end

--- True when memory measures mean something: /proc is there and the
-- process runs neither under valgrind nor with the sanitizers (make valgrind,
-- make asan set these variables; their allocators keep freed memory).
function M.measurable()
  return status() ~= nil and not os.getenv("LLAMACPP_UNDER_VALGRIND")
         and not os.getenv("LLAMACPP_UNDER_ASAN")
end

--- Resident set size, KiB.
function M.rss_kb()
  local s = status()
  return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end

--- Peak resident set size since the start or the last reset_peak(), KiB.
function M.peak_kb()
  local s = status()
  return s and tonumber(s:match("VmHWM:%s*(%d+)"))
end

--- Resets the peak to the current RSS (Linux >= 4.0: clear_refs 5). Returns
-- false when the kernel refuses.
function M.reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  ok = f:close() and ok
  return ok and true or false
end

local function pid()
  local f = io.open("/proc/self/stat", "r")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return s and s:match("^(%d+)")
end

--- Open file descriptors of this process (those of /proc/self/fd, less the
-- one used to list them).
function M.nfds()
  local ok, lfs = pcall(require, "lfs")
  if ok then
    local n = 0
    for name in lfs.dir("/proc/self/fd") do
      if name ~= "." and name ~= ".." then n = n + 1 end
    end
    return n - 1                          -- lfs.dir's own descriptor
  end
  local p = io.popen("ls /proc/" .. pid() .. "/fd")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n - 1                            -- the pipe of this popen
end

--- The open descriptors as {fd = target}, for a message when counts differ.
function M.fds()
  local out = {}
  local p = io.popen("ls -l /proc/" .. pid() .. "/fd 2>/dev/null")
  for line in p:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then out[tonumber(fd)] = target end
  end
  p:close()
  return out
end

return M
