-- What spec/nvim_spec.lua, spec/nvim_plugin_*_spec.lua and bench/loop.lua share: running
-- spec/nvim/driver.lua in a headless Neovim, the streams it is fed, and
-- the reading of what its probe recorded.
--
--   local harness = require "nvim.harness"
--   local res, stdout, stderr = harness.run(root, workdir, { scenario = "chat", ... })
--   local want = harness.big_stream(srv, "nvim_20k", 20000, 50)
--   local a = harness.analyse(res)       -- per tick gap: busy, wall; the callbacks
local cjson = require "cjson"

local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.q = q

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

M.TIMEOUT = 60        -- seconds; `timeout` kills a hung nvim

-- Runs `nvim --headless` with nvim_args in cwd, LLAMACPP_NVIM_ARGS = args
-- (args.out set here) and env; the caller's settings do not leak in.
-- Returns the decoded result, and nvim's stdout and stderr; raises when
-- nvim wrote no result or the script failed.
local function launch(cwd, args, env, nvim_args)
  local out = os.tmpname()
  local so, se = os.tmpname(), os.tmpname()
  args.out = out
  local vars = { "LLAMACPP_NVIM_ARGS=" .. q(cjson.encode(args)) }
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
  local cmd = table.concat({
    "cd", q(cwd), "&&",
    "env -u LLAMACPP_ENDPOINT -u LLAMA_API_KEY -u LUA_PATH -u LUA_CPATH -u LUA_INIT",
    "-u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy -u NVIM_APPNAME",
    table.concat(vars, " "),
    "timeout -k 5", tostring(M.TIMEOUT),
    "nvim --headless", nvim_args,
    "</dev/null >" .. q(so) .. " 2>" .. q(se),
  }, " ")
  os.execute(cmd)
  local res
  local s = slurp(out)
  if s ~= "" then res = cjson.decode(s) end
  local stdout, stderr = slurp(so), slurp(se)
  os.remove(out); os.remove(so); os.remove(se)
  assert(res, "nvim wrote no result (killed after " .. M.TIMEOUT .. " s?)\nstdout: " ..
              stdout .. "\nstderr: " .. stderr)
  assert(res.error == nil, "driver: " .. tostring(res.error) .. "\nstderr: " .. stderr)
  return res, stdout, stderr
end

--- Runs the driver in headless Neovim, in the directory cwd, with the
-- example plugin of the checkout root on 'runtimepath'. args: the
-- driver's (spec/nvim/driver.lua); env: extra environment {NAME = value}.
-- Returns the decoded result, and nvim's stdout and stderr; raises when
-- nvim wrote no result or the driver failed.
function M.run(root, cwd, args, env)
  return launch(cwd, args, env, table.concat({
    "--clean",
    "--cmd", q("set rtp+=" .. root .. "/examples/nvim"),
    "-c", q("lua dofile('" .. root .. "/spec/nvim/driver.lua')"),
  }, " "))
end

local function sh(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end        -- Lua 5.1 / LuaJIT
  return a == true and (c == nil or c == 0)
end
M.sh = sh

--- A scratch HOME for a Neovim run: HOME and the XDG directories under
-- it (no user's config, plugins or data), and `work`, a directory to run
-- in. Returns its path; remove it with M.rm(home).
function M.home()
  local home = os.tmpname()
  os.remove(home)
  assert(sh("mkdir -p " .. q(home .. "/config/nvim") .. " " .. q(home .. "/data/nvim/site") ..
            " " .. q(home .. "/state") .. " " .. q(home .. "/cache") .. " " .. q(home .. "/work")))
  return home
end

function M.rm(path) os.execute("rm -rf " .. q(path)) end

--- A copy of the plugin's files (lua, plugin, doc, autoload) at
-- home/plugin-copy; with_build: its build/ a link to root's. Returns its path.
function M.copy_plugin(root, home, with_build)
  local copy = home .. "/plugin-copy"
  local src = {}
  for i, d in ipairs{ "lua", "plugin", "doc", "autoload" } do src[i] = q(root .. "/" .. d) end
  assert(sh("mkdir -p " .. q(copy) .. " && cp -r " .. table.concat(src, " ") .. " " .. q(copy)))
  if with_build then assert(sh("ln -s " .. q(root .. "/build") .. " " .. q(copy .. "/build"))) end
  return copy
end

--- Runs spec/nvim/plugin_driver.lua in headless Neovim with the plugin at
-- the repository root installed as opts.layout says, in a scratch HOME:
--   "rtp"       init.lua prepends the root to 'runtimepath' (lazy.nvim, packer, vim-plug)
--   "pack"      a symlink HOME/data/nvim/site/pack/test/start/llamacpp -> root
--   "relative"  'runtimepath' gets root as a path relative to the start
--               directory, and the script :cd's elsewhere before the first use
-- opts.root: the plugin's root (default root); opts.home: a HOME from
-- M.home() (default: a new one, removed after); opts.env: more environment;
-- opts.init: more lines for init.lua.
function M.run_plugin(root, args, opts)
  opts = opts or {}
  local home = opts.home or M.home()
  local plugin_root = opts.root or root
  local layout = opts.layout or "rtp"
  local init = {}
  local cwd = home .. "/work"
  if layout == "rtp" then
    init[#init + 1] = "vim.opt.rtp:prepend(" .. string.format("%q", plugin_root) .. ")"
  elseif layout == "pack" then
    assert(sh("mkdir -p " .. q(home .. "/data/nvim/site/pack/test/start") .. " && ln -s " ..
              q(plugin_root) .. " " .. q(home .. "/data/nvim/site/pack/test/start/llamacpp")))
  elseif layout == "relative" then
    -- start in the root's parent; 'runtimepath' gets the root's own name
    cwd = plugin_root:match("^(.*)/[^/]+$")
    init[#init + 1] = "vim.opt.rtp:prepend(" .. string.format("%q", plugin_root:match("[^/]+$")) .. ")"
  else
    error("unknown layout " .. tostring(layout))
  end
  for _, l in ipairs(opts.init or {}) do init[#init + 1] = l end
  local f = assert(io.open(home .. "/config/nvim/init.lua", "wb"))
  f:write(table.concat(init, "\n"), "\n")
  f:close()
  args.work = home .. "/work"
  local env = { HOME = home, XDG_CONFIG_HOME = home .. "/config", XDG_DATA_HOME = home .. "/data",
                XDG_STATE_HOME = home .. "/state", XDG_CACHE_HOME = home .. "/cache",
                XDG_CONFIG_DIRS = home .. "/none", XDG_DATA_DIRS = home .. "/none" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local ok, res, stdout, stderr = pcall(launch, cwd, args, env, table.concat({
    "-i NONE", "-u", q(home .. "/config/nvim/init.lua"),
    "-c", q("lua dofile('" .. root .. "/spec/nvim/plugin_driver.lua')"),
  }, " "))
  if not opts.home then M.rm(home) end
  if not ok then error(res, 0) end
  return res, stdout, stderr
end

--- The checkout the specs run in (busted's working directory).
function M.root()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end

--- Why the Neovim specs cannot run here (nil: they can): no nvim, or no
-- LuaJIT build of the core.
function M.missing(root)
  if not sh("command -v nvim >/dev/null 2>&1") then
    return "nvim is not installed: apt-get install neovim"
  end
  local f = io.open(root .. "/build/luajit/llamacpp/core.so", "rb")
  if not f then return "build/luajit/llamacpp/core.so is missing: make nvim" end
  f:close()
end

--- An llama-server-like stream: one content event per string in `parts`
-- (HTTP chunks of `per_chunk` events), then finish_reason and [DONE].
function M.stream_response(fixture, parts, per_chunk)
  local head = '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":'
  local tail = '}}],"created":1795628704,"id":"chatcmpl-nvim","model":"models/tiny.gguf",' ..
               '"system_fingerprint":"b0-81ff7ab","object":"chat.completion.chunk"}'
  local chunks, cur = {}, {}
  for i, p in ipairs(parts) do
    cur[#cur + 1] = "data: " .. head .. cjson.encode(p) .. tail .. "\n\n"
    if #cur == per_chunk or i == #parts then
      chunks[#chunks + 1] = table.concat(cur)
      cur = {}
    end
  end
  chunks[#chunks + 1] = fixture.sse_body{
    '{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1795628704,' ..
    '"id":"chatcmpl-nvim","model":"models/tiny.gguf","object":"chat.completion.chunk",' ..
    '"usage":{"completion_tokens":' .. #parts .. ',"prompt_tokens":5,"total_tokens":' ..
    (#parts + 5) .. '}}',
    "[DONE]" }
  return fixture.http_response(200, { { "Content-Type", "text/event-stream" } }, nil,
                               { chunks = chunks })
end

--- Writes NAME.response on the fixture server srv: n content events,
-- every 25th ending a line, as llama-server sends them (one JSON object
-- per event), per_chunk to an HTTP chunk. Returns the answer's text as
-- the chat buffer shows it.
function M.big_stream(fixture, srv, name, n, per_chunk)
  local parts = {}
  for i = 1, n do
    parts[i] = string.format("e%05d", i) .. (i % 25 == 0 and "\n" or " ")
  end
  srv:write(name, M.stream_response(fixture, parts, per_chunk))
  return (table.concat(parts):gsub("\n$", ""))
end

-- Sorted copy.
local function sorted(t)
  local c = {}
  for i = 1, #t do c[i] = t[i] end
  table.sort(c)
  return c
end

local function percentile(s, p)       -- s sorted
  if #s == 0 then return 0 end
  return s[math.max(1, math.ceil(#s * p))]
end

--- p50, p99 and max of a list of numbers.
function M.stats(list)
  local s = sorted(list)
  return { p50 = percentile(s, 0.5), p99 = percentile(s, 0.99), max = s[#s] or 0, n = #s }
end

--- Reads the probe's record of a "measure" run: from the first event to
-- the buffer's last write, per gap between two ticks: wall time, the main
-- thread's CPU time ("busy": the loop was running code, ours or
-- Neovim's) and its run-queue wait (runnable, but the kernel ran another
-- process); the same for the idle Neovim before the chat. And llamacpp's
-- callbacks: how many, how many events each handed out, whether one
-- slept in a syscall; the most that ran between two ticks.
function M.analyse(res)
  local t0, t1 = res.event_times[1], res.done_at
  local a = { t0 = t0, t1 = t1, wall = {}, busy = {}, worst_wall = { 0, 0, 0 },
              worst_busy = { 0, 0, 0 }, idle_walls = {}, idle_busys = {}, ticks_in = 0 }
  for i = 2, #res.ticks do
    local w = res.ticks[i] - res.ticks[i - 1]
    local c = res.cpu[i] - res.cpu[i - 1]
    local rq = res.runq[i] - res.runq[i - 1]
    if res.ticks[i] <= res.idle_end then
      a.idle_walls[#a.idle_walls + 1], a.idle_busys[#a.idle_busys + 1] = w, c
    elseif res.ticks[i] >= t0 and res.ticks[i - 1] <= t1 then
      a.wall[#a.wall + 1], a.busy[#a.busy + 1] = w, c
      if w > a.worst_wall[1] then a.worst_wall = { w, c, rq } end
      if c > a.worst_busy[1] then a.worst_busy = { c, w, rq } end
    end
    if res.ticks[i] > t0 and res.ticks[i] < t1 then a.ticks_in = a.ticks_in + 1 end
  end
  a.idle_wall, a.idle_busy = M.stats(a.idle_walls), M.stats(a.idle_busys)
  a.wall_s, a.busy_s = M.stats(a.wall), M.stats(a.busy)
  local ev, j = res.event_times, 1
  a.cb = { n = 0, delivering = 0, cpu = 0, events = 0, most = 0, slept = 0, at = 0 }
  for _, h in ipairs(res.held.llamacpp) do
    local n = 0
    while ev[j] and ev[j] < h[1] do j = j + 1 end
    while ev[j] and ev[j] <= h[1] + h[2] do n, j = n + 1, j + 1 end
    if h[1] + h[2] >= t0 and h[1] <= t1 then
      a.cb.n = a.cb.n + 1
      if n > 0 then a.cb.delivering = a.cb.delivering + 1 end
      a.cb.most = math.max(a.cb.most, n)
      if h[5] ~= cjson.null and h[5] > 0 then a.cb.slept = a.cb.slept + 1 end
      if h[3] > a.cb.cpu then
        a.cb.cpu, a.cb.events, a.cb.at = h[3], n, h[1] - t0
        a.cb.gc = h[7] < h[6]                 -- a GC cycle ended inside it
      end
    end
  end
  -- the most llamacpp callbacks that ran between two ticks, and what they were
  a.chain, a.chain_kinds = 0, ""
  local k = 1
  local cbs = res.held.llamacpp
  for i = 2, #res.ticks do
    local lo, hi = res.ticks[i - 1], res.ticks[i]
    if hi >= t0 and lo <= t1 then
      while cbs[k] and cbs[k][1] < lo do k = k + 1 end
      local n, kinds, m = 0, {}, k
      while cbs[m] and cbs[m][1] < hi do
        n = n + 1
        kinds[cbs[m][8]] = (kinds[cbs[m][8]] or 0) + 1
        m = m + 1
      end
      if n > a.chain then
        local ks = {}
        for what, c in pairs(kinds) do ks[#ks + 1] = what .. " x" .. c end
        table.sort(ks)
        a.chain, a.chain_kinds = n, table.concat(ks, ", ")
      end
    end
  end
  a.flush = 0
  for _, h in ipairs(res.held.scheduled) do
    if h[1] >= t0 and h[1] <= t1 then a.flush = math.max(a.flush, h[3]) end
  end
  a.summary = string.format(
    "%d events in %.0f ms (%s), %d tick gaps:\n" ..
    "  busy (main thread CPU) per gap: p50 %.2f, p99 %.2f, max %.2f ms (wall %.2f, run queue %.2f)\n" ..
    "  wall per gap: p50 %.2f, p99 %.2f, max %.2f ms (busy %.2f, run queue %.2f)\n" ..
    "  idle Neovim before, %d gaps: wall p50 %.2f, p99 %.2f, max %.2f; busy p99 %.2f, max %.2f ms\n" ..
    "  llamacpp callbacks: %d (%d handing out events), most events in one %d, longest %.2f ms CPU " ..
    "at +%.0f ms (%d events%s), %s slept; at most %d between two ticks (%s); " ..
    "longest buffer write %.2f ms CPU",
    #ev, t1 - t0, res.linux and "Linux" or "no FFI/schedstat: CPU = os.clock, run queue = 0",
    #a.wall,
    a.busy_s.p50, a.busy_s.p99, a.worst_busy[1], a.worst_busy[2], a.worst_busy[3],
    a.wall_s.p50, a.wall_s.p99, a.worst_wall[1], a.worst_wall[2], a.worst_wall[3],
    a.idle_wall.n, a.idle_wall.p50, a.idle_wall.p99, a.idle_wall.max, a.idle_busy.p99, a.idle_busy.max,
    a.cb.n, a.cb.delivering, a.cb.most, a.cb.cpu, a.cb.at, a.cb.events,
    a.cb.gc and ", a GC cycle ended in it" or "",
    res.linux and tostring(a.cb.slept) or "unknown if any", a.chain, a.chain_kinds, a.flush)
  return a
end

return M
