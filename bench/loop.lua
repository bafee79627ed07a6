--- make bench (after run.lua): the event-loop figures, which the specs no
-- longer assert (issue 14: a spec asserts behaviour, a bench measures).
--   lua5.4 bench/loop.lua [--smoke] [--reps N] [--out FILE]
-- Run from the top of the tree after the builds (mk/bench.mk does both).
--
-- Cases, each with its goal and "met" / "not met" (never an exit status):
--   nvim paced, nvim burst: a real headless Neovim streams N events into
--     the example plugin's buffer (spec/nvim/driver.lua, scenario
--     "measure") while a 1 ms timer probes the loop: busy (main thread
--     CPU) and wall time per gap between two ticks, p50/p99/max, beside
--     the same Neovim's gaps while idle, measured in the same run just
--     before the chat; and how many events went by before a vim.schedule
--     callback started at event N/2 ran.
--   luv stall: CPU and wake-ups of a stream stalled for 2 s on a luv loop.
--   fixture server: 300 concurrent paced streams; an answer while another
--     connection drips.
-- Exits 1 only when a case could not be run (no result, wrong text).
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath

local smoke, reps, outfile = false, 3, "build/bench/loop.md"
do
  local i = 1
  while arg[i] do
    if arg[i] == "--smoke" then smoke, reps = true, 1
    elseif arg[i] == "--reps" then i = i + 1; reps = tonumber(arg[i])
    elseif arg[i] == "--out" then i = i + 1; outfile = arg[i]
    else error("usage: loop.lua [--smoke] [--reps N] [--out FILE]") end
    i = i + 1
  end
end

local socket = require "socket"
local fixture = require "fixture.control"
local harness = require "nvim.harness"

local N = smoke and 5000 or 20000          -- events per Neovim stream
local HALF = math.floor(N / 2)
local unpack = rawget(table, "unpack") or rawget(_G, "unpack")
local IDLE_MS = smoke and 300 or 1000      -- the idle Neovim's baseline
local BUSY_GOAL_MS = 5                     -- p99 busy per 1 ms tick gap
local WALL_RATIO_GOAL = 2                  -- p99 wall per gap / the idle Neovim's

local failed = {}
local out = {}
local function p(...) out[#out + 1] = table.concat({ ... }) end
local function log(...) io.stderr:write("bench/loop: ", table.concat({ ... }), "\n") end
local function verdict(ok) return ok and "met" or "**not met**" end
local function f2(v) return v and ("%.2f"):format(v) or "–" end

local function sh_ok(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and (c == nil or c == 0)
end

local function median(list)
  local s = {}
  for i = 1, #list do s[i] = list[i] end
  table.sort(s)
  return s[math.max(1, math.ceil(#s / 2))]
end

local ROOT = (function()
  local h = io.popen("pwd")
  local d = h:read("*l")
  h:close()
  return d
end)()

local srv = fixture.start()

-- {====== Neovim ======

local function nvim_case(title, name, opts)
  local runs = {}
  local want = harness.big_stream(fixture, srv, name, N, 50)
  local workdir = os.tmpname()
  os.remove(workdir)
  assert(sh_ok("mkdir " .. harness.q(workdir)))
  for rep = 1, reps do
    local ok, res = pcall(harness.run, ROOT, workdir, {
      scenario = "measure", warm = srv:replay("chat_stream"), endpoint = srv:replay(name, opts),
      tick_ms = 1, idle_ms = IDLE_MS, events = N + 1, probe_at = { HALF },
      wait_ms = 40000, timeout_ms = 50000 })
    local text
    if ok then
      local lines = res.lines
      local h = #lines
      while h > 0 and not lines[h]:find("^> ") do h = h - 1 end
      text = table.concat(lines, "\n", h + 2, #lines - 1)
    end
    if not ok or res.last.status ~= "done" or text ~= want or #res.event_times ~= N + 1 then
      failed[#failed + 1] = ("%s, run %d: %s"):format(title, rep,
        not ok and tostring(res) or "the stream did not arrive whole")
      log("FAILED ", failed[#failed])
    else
      local a = harness.analyse(res)
      log(title, ", run ", rep, ": ", a.summary)
      local pr = res.probes[1]
      a.sched_after = pr and pr.scheduled and pr.scheduled - pr.at
      runs[#runs + 1] = a
    end
  end
  os.execute("rm -rf " .. harness.q(workdir))
  if #runs == 0 then return end
  local function med(f)
    local l = {}
    for _, a in ipairs(runs) do l[#l + 1] = f(a) end
    return median(l)
  end
  local busy = { med(function(a) return a.busy_s.p50 end), med(function(a) return a.busy_s.p99 end),
                 med(function(a) return a.busy_s.max end) }
  local wall = { med(function(a) return a.wall_s.p50 end), med(function(a) return a.wall_s.p99 end),
                 med(function(a) return a.wall_s.max end) }
  local idle = { med(function(a) return a.idle_wall.p50 end), med(function(a) return a.idle_wall.p99 end),
                 med(function(a) return a.idle_wall.max end), med(function(a) return a.idle_busy.p99 end) }
  local ratio = idle[2] > 0 and wall[2] / idle[2] or nil
  local after = med(function(a) return a.sched_after or (N + 1) end)
  local cbs = med(function(a) return a.cb.n end)
  local most = med(function(a) return a.cb.most end)
  p("| ", title, " | ", f2(busy[1]), " / ", f2(busy[2]), " / ", f2(busy[3]), " | ",
    f2(wall[1]), " / ", f2(wall[2]), " / ", f2(wall[3]), " | ",
    f2(idle[1]), " / ", f2(idle[2]), " / ", f2(idle[3]), " (busy p99 ", f2(idle[4]), ") | ",
    ("%d / %d | %d | "):format(cbs, most, after),
    "p99 busy ≤ ", BUSY_GOAL_MS, " ms: ", f2(busy[2]), ", ", verdict(busy[2] <= BUSY_GOAL_MS),
    "; p99 wall ≤ ", WALL_RATIO_GOAL, "x idle: ", ratio and ("%.2fx"):format(ratio) or "–", ", ",
    verdict(ratio and ratio <= WALL_RATIO_GOAL),
    "; vim.schedule at event ", HALF, " before the end: ", verdict(after <= N - HALF), " |")
end

local have_nvim = sh_ok("command -v nvim >/dev/null 2>&1")
local have_build = io.open("build/luajit/llamacpp/core.so", "rb")
if have_build then have_build:close() end
p("### The editor's loop while a stream arrives (headless Neovim, ", N, " events, 1 ms probe timer)")
p("")
if not (have_nvim and have_build) then
  p(not have_nvim and "Skipped: nvim is not installed (apt-get install neovim)."
    or "Skipped: build/luajit/llamacpp/core.so is missing (make LUA=luajit).")
else
  p("| case | busy ms per tick gap p50 / p99 / max | wall ms per gap p50 / p99 / max | " ..
    "idle Neovim, same run: wall p50 / p99 / max | llamacpp callbacks / most events in one | " ..
    "events before a vim.schedule from event ", HALF, " ran | goals |")
  p("|---|---|---|---|---|---|---|")
  log("nvim: paced")
  nvim_case(("paced, 50 events every 2 ms"), "loop_paced", "pace=2")
  log("nvim: burst")
  nvim_case(("burst, all at once"), "loop_burst", "-")
  p("")
  p("Busy: the main thread's CPU time between two ticks of the 1 ms timer (ours and Neovim's work); ",
    "wall: the time between the ticks (also the kernel running other processes, and late timer ",
    "wake-ups). Medians of ", reps, " run(s).")
end

-- }======

-- {====== luv: a stalled stream ======

p("")
p("### A stalled stream on a luv loop (llamacpp.uv), Lua 5.4")
p("")
local has_luv, luv = pcall(require, "luv")
if not has_luv then
  p("Skipped: luv is not installed for Lua 5.4 (apt-get install lua-luv).")
else
  local llamacpp = require "llamacpp"
  local lu = require "llamacpp.uv"
  local STALL_S = smoke and 1 or 2
  local cpus, wakes_l = {}, {}
  for _ = 1, reps do
    local c = llamacpp.new{ endpoint = srv:replay("chat_stream", "stall=1200"), idle_timeout = STALL_S }
    local evs, wakes = {}, 0
    local function wrap(h)
      return setmetatable({}, { __index = function(_, k)
        local v = h[k]
        if type(v) ~= "function" then return v end
        return function(_, ...)
          if k ~= "start" then return v(h, ...) end
          local args, n = { ... }, select("#", ...)
          local f = args[n]
          args[n] = function(...) wakes = wakes + 1; return f(...) end
          return v(h, unpack(args, 1, n))
        end
      end })
    end
    local uv = setmetatable({
      new_timer = function() return wrap(luv.new_timer()) end,
      new_poll = function(fd) return wrap(luv.new_poll(fd)) end,
      new_socket_poll = function(fd) return wrap(luv.new_socket_poll(fd)) end,
      new_idle = function() return wrap(luv.new_idle()) end,
    }, { __index = luv })
    local cpu0 = os.clock()
    lu.chat_stream(c, { messages = { { role = "user", content = "x" } } },
                   function(ev) evs[#evs + 1] = ev end, { uv = uv })
    luv.run()
    local last = evs[#evs]
    if not (last and last.error and last.error.phase == "idle") then
      failed[#failed + 1] = "luv stall: did not end in an idle timeout"
    end
    cpus[#cpus + 1], wakes_l[#wakes_l + 1] = (os.clock() - cpu0) * 1000, wakes
  end
  local cpu = median(cpus)
  local limit = STALL_S * 1000 * 0.01
  p("| case | CPU ms | wake-ups | goal |")
  p("|---|---|---|---|")
  p("| ", STALL_S, " s stall, then the idle timeout | ", f2(cpu), " | ", ("%d"):format(median(wakes_l)),
    " | CPU ≤ 1% of the stall (", f2(limit), " ms): ", verdict(cpu <= limit), " |")
end

-- }======

-- {====== the fixture server ======

p("")
p("### The fixture server (lua/llamacpp/testing/server.lua) under ", _VERSION)
p("")
do
  local function connect()
    local c = socket.tcp()
    c:settimeout(30)
    assert(c:connect("127.0.0.1", srv.port))
    return c
  end
  local function req(target) return "GET " .. target .. " HTTP/1.1\r\nHost: x\r\n\r\n" end
  -- 300 streams of 20 pieces 50 ms apart: 1 s each if served side by side
  local t0 = socket.gettime()
  local socks, open = {}, 300
  for i = 1, 300 do
    local c = connect()
    c:send(req("/replay/chat_stream/pace=50,close/bench-" .. i))
    c:settimeout(0)
    socks[i] = c
  end
  local pending = {}
  for i = 1, 300 do pending[i] = socks[i] end
  local deadline = socket.gettime() + 120
  while open > 0 and socket.gettime() < deadline do
    local readable = socket.select(pending, nil, 1)
    for _, c in ipairs(readable) do
      local _, err = c:receive(65536)
      if err == "closed" then
        open = open - 1
        for k, s in ipairs(pending) do
          if s == c then table.remove(pending, k) break end
        end
      end
    end
  end
  local many = socket.gettime() - t0
  for i = 1, 300 do socks[i]:close() end
  if open > 0 then failed[#failed + 1] = "fixture server: " .. open .. " of 300 streams did not end" end
  -- an answer while another connection drips (drip=20 on 183 bytes: 3.7 s)
  local slow = connect()
  slow:send(req("/replay/health_ok/drip=20,close/bench-slow"))
  slow:receive(1)
  local t1 = socket.gettime()
  local fast = connect()
  fast:send(req("/replay/health_ok/close/bench-fast"))
  fast:receive("*a")
  fast:close()
  local latency = socket.gettime() - t1
  slow:close()
  p("| case | wall | goal |")
  p("|---|---|---|")
  p("| 300 concurrent streams, 20 pieces 50 ms apart (1 s each) | ", f2(many), " s | ≤ 10 s: ",
    verdict(many <= 10), " |")
  p("| a whole answer while another connection drips | ", f2(latency * 1000), " ms | < 500 ms: ",
    verdict(latency < 0.5), " |")
end

-- }======

srv:stop()
if #failed > 0 then
  p("")
  p("**Could not be measured:**")
  for _, l in ipairs(failed) do p("- ", l) end
end
local text = table.concat(out, "\n") .. "\n"
io.write("\n", text)
local f = io.open(outfile, "w")
if f then f:write(text); f:close() end
os.exit(#failed == 0 and 0 or 1)
