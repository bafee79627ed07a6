-- Runs inside headless Neovim for spec/nvim_spec.lua:
--
--   LLAMACPP_NVIM_ARGS='{"scenario":"chat","out":"/tmp/x.json",...}' \
--   nvim --headless --clean --cmd 'set rtp+=examples/nvim' -c "lua dofile('spec/nvim/driver.lua')"
--
-- It works the way a user would: :LlamaChat and :LlamaCancel typed as
-- commands, with Neovim's own main loop running between steps (the script
-- is a coroutine resumed from the loop, not a vim.wait() nested in a
-- command). It writes what it saw as JSON to args.out, then quits.
--
-- args: scenario ("chat", "cancel", "measure", "router", "guide"), out, endpoint (nil: leave
-- setup() alone so $LLAMACPP_ENDPOINT is used), prompt, timeout_ms (the
-- whole run), wait_ms (one wait), cancel_after (answer bytes to wait for
-- before :LlamaCancel), warm (an endpoint for a first, unmeasured chat),
-- tick_ms (the probe timer's period), idle_ms (a baseline before the chat),
-- root (setup{root=}: a llamacpp checkout to load the module from),
-- events (how many events the measured chat will bring), probe_at (event
-- numbers at which to start a timer and a vim.schedule callback), down (a
-- URL where nothing listens).
-- luacheck: globals vim
local unpack = rawget(table, "unpack") or _G.unpack
local searchpath = rawget(package, "searchpath")   -- 5.2+, LuaJIT
local script = dofile((debug.getinfo(1, "S").source:sub(2):gsub("driver%.lua$", "script.lua")))
local uv, A, R, T0 = script.uv, script.A, script.R, script.T0
local now_ms, note, wait, sleep, lines = script.now_ms, script.note, script.wait, script.sleep, script.lines

-- Everything after the "> prompt" header and its blank line.
local function answer_bytes(buf)
  local n = 0
  for i, l in ipairs(lines(buf)) do
    if i > 2 then n = n + #l + 1 end
  end
  return n
end

local plugin = require("llamacpp_nvim")

local function chat(prompt)
  vim.cmd("LlamaChat " .. prompt)
  if not plugin.busy() and not plugin.last then error("LlamaChat did not start", 2) end
end

---------------------------------------------------------------- measuring

-- usage() -> the main thread's CPU time, its time spent runnable but
-- waiting for a CPU (the kernel ran another process), both in ms, and its
-- count of voluntary context switches (it slept: waited in a syscall).
-- Linux, through LuaJIT's FFI and /proc/thread-self/schedstat; elsewhere
-- the process's os.clock(), no wait and no count.
local usage = (function()
  local clock = os.clock
  local ok, ffi = pcall(require, "ffi")
  local f = io.open("/proc/thread-self/schedstat", "r")
  if not (ok and ffi.os == "Linux" and f and f:read("*l")) then
    if f then f:close() end
    return function() return clock() * 1000, 0, nil end
  end
  ffi.cdef [[
    struct llamacpp_spec_timespec { long sec, nsec; };
    struct llamacpp_spec_rusage {
      long utime[2], stime[2];
      long maxrss, ixrss, idrss, isrss, minflt, majflt, nswap, inblock, oublock,
           msgsnd, msgrcv, nsignals, nvcsw, nivcsw;
    };
    int clock_gettime(int clk, struct llamacpp_spec_timespec *ts);
    int getrusage(int who, struct llamacpp_spec_rusage *usage);
  ]]
  local C = ffi.C
  local ts = ffi.new("struct llamacpp_spec_timespec")
  local ru = ffi.new("struct llamacpp_spec_rusage")
  local CLOCK_THREAD_CPUTIME_ID, RUSAGE_THREAD = 3, 1
  f:setvbuf("no")
  R.linux = true
  return function()
    C.clock_gettime(CLOCK_THREAD_CPUTIME_ID, ts)
    C.getrusage(RUSAGE_THREAD, ru)
    f:seek("set", 0)
    local queued = f:read("*l"):match("^%d+ (%d+)")
    return tonumber(ts.sec) * 1000 + tonumber(ts.nsec) / 1e6, tonumber(queued) / 1e6,
           tonumber(ru.nvcsw)
  end
end)()

-- The probe: a timer every tick_ms that records when it ran (wall clock),
-- and the main thread's CPU and run-queue time so far (all ms). Between
-- two ticks the loop was either busy (CPU), kept off a CPU by the kernel
-- (run queue), or asleep waiting for the timer, which the kernel or the
-- hypervisor may deliver late.
-- Arrays for the records, made big enough up front (LuaJIT's table.new):
-- growing one means copying it and touching new memory, which would show
-- up in the very gaps being measured.
local new_array = (function()
  local ok, tnew = pcall(require, "table.new")
  if ok then return function(n) return tnew(n, 0) end end
  return function() return {} end
end)()

local ticks, cpu, runq = new_array(8192), new_array(8192), new_array(8192)
local probe
local function probe_start()
  probe = uv.new_timer()
  probe:start(A.tick_ms or 1, A.tick_ms or 1, function()
    local n = #ticks + 1
    ticks[n] = now_ms() - T0
    cpu[n], runq[n] = usage()
  end)
end
local function probe_stop()
  probe:stop()
  probe:close()
  R.ticks, R.cpu, R.runq = ticks, cpu, runq
end

-- Each run of llamacpp's callbacks (its uv poll and timer handles) and of
-- the main loop's scheduled callbacks (the plugin's buffer writes), timed:
-- { start, wall, CPU, run-queue wait, voluntary switches, Lua heap KB
-- before, after, what }; `what` is "poll r" (a socket was ready) or
-- "timer 0" (the timer, started with that timeout). llamacpp.uv is handed
-- a uv whose handles wrap the callbacks; it is otherwise the real vim.loop.
local held = { llamacpp = new_array(4096), scheduled = new_array(4096) }
local function timed(list, f, what)
  return function(...)
    local w0 = now_ms()
    local c0, q0, v0 = usage()
    local k0 = collectgarbage("count")
    f(...)
    local c1, q1, v1 = usage()
    list[#list + 1] = { w0 - T0, now_ms() - w0, c1 - c0, q1 - q0,
                        v0 and v1 - v0 or vim.NIL, k0, collectgarbage("count"), what or "" }
  end
end
local function wrap_handle(h, kind)
  return setmetatable({}, { __index = function(_, k)
    local v = h[k]
    if type(v) ~= "function" then return v end
    return function(_, ...)
      if k == "start" then                 -- the callback is the last argument
        local args, n = { ... }, select("#", ...)
        args[n] = timed(held.llamacpp, args[n], n > 1 and kind .. " " .. tostring(args[1]) or kind)
        return v(h, unpack(args, 1, n))
      end
      return v(h, ...)
    end
  end })
end
local timed_uv = setmetatable({
  new_timer = function() return wrap_handle(uv.new_timer(), "timer") end,
  new_poll = function(fd) return wrap_handle(uv.new_poll(fd), "poll") end,
  new_socket_poll = function(fd) return wrap_handle(uv.new_socket_poll(fd), "poll") end,
  new_idle = function() return wrap_handle(uv.new_idle(), "idle") end,
  new_check = function() return wrap_handle(uv.new_check(), "check") end,
}, { __index = uv })

-- From here on: every event's arrival time at the plugin's callback, and
-- the timings above. Wraps llamacpp.uv.chat_stream (its on_event and its
-- uv) and vim.schedule; the plugin and the library are unchanged.
-- Probes (args.probe_at, a list of event numbers): when event k arrives,
-- a 1 ms timer and a vim.schedule() callback are started from inside
-- the callback; each notes how many events had arrived when it ran
-- (R.probes[i] = {at = k, timer = n, scheduled = n}).
local function instrument()
  local luv_mod = package.loaded["llamacpp.uv"]
  local orig = luv_mod.chat_stream
  local times = new_array((A.events or 0) + 16)
  R.event_times, R.held = times, held
  local schedule = vim.schedule
  local probe_at, probes = {}, {}
  for _, k in ipairs(A.probe_at or {}) do probe_at[k] = true end
  R.probes = probes
  luv_mod.chat_stream = function(c, req, on_event, opts)
    opts = setmetatable({ uv = timed_uv }, { __index = opts })
    return orig(c, req, function(ev)
      local n = #times + 1
      times[n] = now_ms() - T0
      if probe_at[n] then
        local p = { at = n }
        probes[#probes + 1] = p
        local t = uv.new_timer()
        t:start(1, 0, function()
          t:close()
          p.timer = #times
        end)
        schedule(function() p.scheduled = #times end)
      end
      return on_event(ev)
    end, opts)
  end
  vim.schedule = function(f) return schedule(timed(held.scheduled, f)) end
end

---------------------------------------------------------------- scenarios

local scenarios = {}

function scenarios.chat()
  if A.endpoint then plugin.setup{ endpoint = A.endpoint, root = A.root } end
  note("chat")
  chat(A.prompt or "hello")
  wait(function() return not plugin.busy() end, A.wait_ms)
  note("done")
  R.lines, R.last = lines(plugin.buf()), plugin.last
  R.buftype = vim.api.nvim_buf_get_option(plugin.buf(), "buftype")
  -- where require found the module (the plugin may have extended the paths)
  R.module = searchpath("llamacpp", package.path)
  R.core = searchpath("llamacpp.core", package.cpath)
end

function scenarios.cancel()
  plugin.setup{ endpoint = A.endpoint, root = A.root }
  chat(A.prompt or "hello")
  local buf = plugin.buf()
  wait(function() return answer_bytes(buf) >= (A.cancel_after or 1) end, A.wait_ms, 5)
  note("cancel")
  vim.cmd("LlamaCancel")
  R.busy_after_cancel = plugin.busy()
  R.lines_at_cancel = lines(buf)
  -- the request is over: nothing may be added after "[cancelled]"
  sleep(A.linger_ms or 300)
  R.lines, R.last = lines(buf), plugin.last
  R.cancel_again = plugin.cancel()        -- nothing left to cancel: false
end

function scenarios.measure()
  -- a first chat loads the module and warms libcurl up: not measured
  plugin.setup{ endpoint = A.warm, root = A.root }
  chat("warm up")
  wait(function() return not plugin.busy() end, A.wait_ms)
  R.warm_last = plugin.last
  instrument()
  plugin.setup{ endpoint = A.endpoint, root = A.root }
  probe_start()
  sleep(A.idle_ms or 300)              -- a baseline: the loop with nothing to do
  R.idle_end = now_ms() - T0
  note("chat")
  local done_at
  vim.api.nvim_create_autocmd("User", { pattern = "LlamaChatDone", once = true,
                                         callback = function() done_at = now_ms() - T0 end })
  chat(A.prompt or "hello")
  wait(function() return done_at ~= nil end, A.wait_ms, 20)
  R.done_at = done_at
  note("done")
  probe_stop()
  R.lines, R.last = lines(plugin.buf()), plugin.last
end

-- Loads llamacpp from the checkout args.root (and its LuaJIT build); the root.
local function use_checkout()
  local root = A.root
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
  return root
end

-- A router on Neovim's loop through llamacpp.uv: a failover (a closed
-- port, then args.endpoint) and a backoff between two passes over a closed
-- port. args.down: the closed port's URL. The router's sleep raises: on
-- the loop a backoff must be a timer.
function scenarios.router()
  use_checkout()
  local lu = require "llamacpp.uv"
  local router = require "llamacpp.router"
  local function new(tier, retries)
    return router.new{ retries = retries, backoff = { base = 0.2, max = 0.2 },
                       random = function() return 1 end,
                       sleep = function() error("the router slept") end,
                       tiers = { t = tier } }
  end
  local msgs = { { role = "user", content = "hello" } }
  -- failover
  local evs = {}
  lu.router_stream(new({ { name = "down", endpoint = A.down },
                         { name = "up", endpoint = A.endpoint } }, 0),
                   { messages = msgs }, function(ev) evs[#evs + 1] = ev end)
  wait(function() local l = evs[#evs]; return l and (l.type == "done" or l.type == "error") end, A.wait_ms)
  local text = {}
  for _, ev in ipairs(evs) do if ev.type == "content" then text[#text + 1] = ev.content end end
  local last = evs[#evs]
  R.failover = { type = last.type, provider = last.provider, content = table.concat(text),
                 attempts = #(last.attempts or {}),
                 first = last.attempts and last.attempts[1] and last.attempts[1].provider }
  -- backoff: two passes over a closed port, a timer between them
  local ticks_waiting, res, err = 0, nil, nil
  local ticker = uv.new_timer()
  local h
  ticker:start(5, 5, function() if h and h.waiting then ticks_waiting = ticks_waiting + 1 end end)
  h = lu.router_chat(new({ { name = "down", endpoint = A.down } }, 1), { messages = msgs },
                     function(a, b) res, err = a or false, b end)
  wait(function() return res ~= nil end, A.wait_ms)
  ticker:stop(); ticker:close()
  R.backoff = { ok = res ~= false, kind = err and err.kind, attempts = err and #err.attempts,
                ticks_waiting = ticks_waiting }
end

-- The example of docs/neovim.md ("Never block the editor"), run as written
-- (with `return buf, handle` added), against $LLAMACPP_ENDPOINT; the text
-- its buffer holds once the chat is over.
function scenarios.guide()
  local root = use_checkout()
  local f = assert(io.open(root .. "/docs/neovim.md", "rb"))
  local doc = f:read("*a")
  f:close()
  local section = assert(doc:find("## Never block the editor", 1, true), "no such section")
  local code = assert(doc:match("```lua\n(.-)```", section), "no example in the section")
  local buf = assert((rawget(_G, "loadstring") or load)(code .. "\nreturn buf, handle", "=docs/neovim.md"))()
  local errors = {}
  local notify = vim.notify
  vim.notify = function(msg) errors[#errors + 1] = tostring(msg) end
  local before, still = nil, 0
  wait(function()                      -- done when the text stopped growing
    local text = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
    if text ~= "" and text == before then still = still + 1 else still = 0 end
    before = text
    return still >= 10 or #errors > 0
  end, A.wait_ms, 20)
  vim.notify = notify
  R.text, R.errors = before, errors
end

script.run(function()
  local f = scenarios[A.scenario]
  if not f then error("unknown scenario " .. tostring(A.scenario)) end
  f()
end)
