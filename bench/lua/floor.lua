--- The start-up floor of any Lua binding of libcurl: the interpreter, plus
-- the system's libcurl and its libraries loaded, and nothing else (no
-- module, no curl_global_init, no request). CPU from exec, in µs.
--   floor.lua startup LIBCURL_PATH
local path = arg[2]
local f = assert(package.loadlib(path, "*"))   -- "*": only load and link it
local s = io.open("/proc/self/schedstat")
local ns = s and s:read("n")
if s then s:close() end
local st = io.open("/proc/self/status")
local hwm = st and st:read("a"):match("VmHWM:%s*(%d+)")
if st then st:close() end
io.write(("RESULT client=floor ok=%d cpu_us=%d maxrss_kb=%d\n"):format(
  (f and ns) and 1 or 0, ns and math.floor(ns / 1000) or -1, tonumber(hwm) or -1))
