-- A real Neovim (headless, LuaJIT) runs the example plugin examples/nvim
-- against the fixture server: :LlamaChat streams into a buffer in order,
-- :LlamaCancel closes the connection, and the editor's loop keeps running
-- while 20,000 events arrive. Neovim runs spec/nvim/driver.lua, which
-- writes what it saw as JSON; the assertions are here. Needs `nvim`
-- (Debian's neovim: LuaJIT, vim.loop) and the LuaJIT build of the core
-- (make LUA=luajit).
local fixture = require "fixture.control"
local util = require "spec.util"
local cjson = require "cjson"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh_ok(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end        -- Lua 5.1 / LuaJIT
  return a == true and (c == nil or c == 0)
end

local ROOT = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()

local HAS_NVIM = sh_ok("command -v nvim >/dev/null 2>&1")
local HAS_BUILD = io.open(ROOT .. "/build/luajit/llamacpp/core.so", "rb")
if HAS_BUILD then HAS_BUILD:close() end

local NVIM_TIMEOUT = 60        -- seconds; `timeout` kills a hung nvim

-- nvim runs in an empty directory: "./?.so" & co. on its default paths
-- must not find anything (a stray ./llamacpp/core.so in the checkout).
local WORKDIR

-- Runs the driver in headless Neovim. args: the driver's (see
-- spec/nvim/driver.lua); env: extra environment {NAME = value}; cwd.
-- Returns the decoded result, and nvim's stdout and stderr.
local function run_nvim(args, env, cwd)
  local out = os.tmpname()
  local so, se = os.tmpname(), os.tmpname()
  args.out = out
  local vars = { "LLAMACPP_NVIM_ARGS=" .. q(cjson.encode(args)) }
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "=" .. q(v) end
  local cmd = table.concat({
    "cd", q(cwd or WORKDIR), "&&",
    -- the caller's settings must not leak in
    "env -u LLAMACPP_ENDPOINT -u LLAMA_API_KEY -u LUA_PATH -u LUA_CPATH",
    table.concat(vars, " "),
    "timeout -k 5", tostring(NVIM_TIMEOUT),
    "nvim --headless --clean",
    "--cmd", q("set rtp+=" .. ROOT .. "/examples/nvim"),
    "-c", q("lua dofile('" .. ROOT .. "/spec/nvim/driver.lua')"),
    "</dev/null >" .. q(so) .. " 2>" .. q(se),
  }, " ")
  os.execute(cmd)
  local res
  local f = io.open(out, "rb")
  if f then
    local s = f:read("*a")
    f:close()
    if s ~= "" then res = cjson.decode(s) end
  end
  local stdout, stderr = util.read(so), util.read(se)
  os.remove(out); os.remove(so); os.remove(se)
  assert(res, "nvim wrote no result (killed after " .. NVIM_TIMEOUT .. " s?)\nstdout: " ..
              stdout .. "\nstderr: " .. stderr)
  assert(res.error == nil, "driver: " .. tostring(res.error) .. "\nstderr: " .. stderr)
  return res, stdout, stderr
end

-- The last exchange in the chat buffer: "> prompt", "", the answer, then
-- one empty line. Returns the prompt line, the blank line, the answer
-- and the last line.
local function split_buffer(lines)
  local h = #lines
  while h > 0 and not lines[h]:find("^> ") do h = h - 1 end
  assert.is_true(h > 0 and #lines >= h + 3, "buffer: " .. table.concat(lines, "\n"))
  local answer = {}
  for i = h + 2, #lines - 1 do answer[#answer + 1] = lines[i] end
  return lines[h], lines[h + 1], table.concat(answer, "\n"), lines[#lines]
end

-- assert.equal for long strings: says where they differ, not all of them.
local function same_text(want, got, what)
  if want == got then return end
  local i = 1
  while want:sub(i, i) == got:sub(i, i) do i = i + 1 end
  error(string.format("%s differs at byte %d of %d (got %d bytes): want %q, got %q", what, i,
                      #want, #got, want:sub(i, i + 40), got:sub(i, i + 40)), 2)
end

-- The module Neovim loaded came from this checkout (not a system copy).
local function from_checkout(res)
  assert.equal(ROOT .. "/lua/llamacpp/init.lua", res.module)
  assert.equal(ROOT .. "/build/luajit/llamacpp/core.so", res.core)
end

-- An llama-server-like stream: one content event per string in `parts`
-- (HTTP chunks of `per_chunk` events), then finish_reason and [DONE].
local function stream_response(parts, per_chunk)
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

describe("examples/nvim in a real Neovim", function()
  if not HAS_NVIM then
    it("needs nvim", function() pending("nvim is not installed: apt-get install neovim") end)
    return
  end
  if not HAS_BUILD then
    it("needs the LuaJIT build", function()
      pending("build/luajit/llamacpp/core.so is missing: make LUA=luajit")
    end)
    return
  end

  local srv
  setup(function()
    srv = fixture.start()
    WORKDIR = os.tmpname()
    os.remove(WORKDIR)
    assert(sh_ok("mkdir " .. q(WORKDIR)))
  end)
  teardown(function()
    srv:stop()
    os.execute("rm -rf " .. q(WORKDIR))
  end)

  it(":LlamaChat streams the answer into a scratch buffer, in order", function()
    local want = util.expected("chat_stream_usage")
    local res, _, stderr = run_nvim{ scenario = "chat", prompt = "hello there",
                                     endpoint = srv:replay("chat_stream_usage", "pace=2") }
    from_checkout(res)
    local prompt, blank, answer, last = split_buffer(res.lines)
    assert.equal("> hello there", prompt)
    assert.equal("", blank)
    assert.equal(want.content, answer)
    assert.equal("", last)
    assert.equal("done", res.last.status)
    assert.equal(want.usage.completion_tokens, res.last.usage.output_tokens)
    assert.equal("nofile", res.buftype)
    assert.equal("", stderr)
    -- what the server was asked
    local reqs = srv:requests()
    local r = reqs[#reqs]
    assert.equal("/replay/chat_stream_usage/pace=2/v1/chat/completions", r.path)
    local body = cjson.decode(r.body)
    assert.is_true(body.stream)
    assert.equal("hello there", body.messages[#body.messages].content)
  end)

  it("runs a router on Neovim's loop: failover, and a backoff that is a timer", function()
    local want = util.expected("chat_stream_usage")
    local res, _, stderr = run_nvim{ scenario = "router", root = ROOT, down = util.down(),
                                     endpoint = srv:replay("chat_stream_usage", "pace=2") }
    assert.is_nil(res.error)
    assert.equal("done", res.failover.type)
    assert.equal("up", res.failover.provider)
    assert.equal(want.content, res.failover.content)
    assert.equal(1, res.failover.attempts)
    assert.equal("down", res.failover.first)
    assert.is_false(res.backoff.ok)
    assert.equal("no_provider", res.backoff.kind)
    assert.equal(2, res.backoff.attempts)             -- two passes ...
    assert.is_true(res.backoff.ticks_waiting > 0)     -- ... and the loop ran between them
    assert.equal("", stderr)
  end)

  it("runs the Neovim guide's example as written (docs/neovim.md)", function()
    local want = util.expected("chat_stream_usage")
    local res, _, stderr = run_nvim({ scenario = "guide", root = ROOT },
                                    { LLAMACPP_ENDPOINT = srv:replay("chat_stream_usage", "pace=2") })
    assert.same({}, res.errors)
    assert.equal(want.content, res.text)
    assert.equal("", stderr)
  end)

  it("takes the endpoint from LLAMACPP_ENDPOINT when setup() gives none", function()
    local want = util.expected("chat_stream")
    local ep = srv:replay("chat_stream", "drip")
    local res = run_nvim({ scenario = "chat" }, { LLAMACPP_ENDPOINT = ep })
    local _, _, answer = split_buffer(res.lines)
    assert.equal(want.content, answer)
    assert.equal("done", res.last.status)
    assert.truthy(srv:wait_for(function(r)
      return r.event == "request" and r.path == "/replay/chat_stream/drip/v1/chat/completions"
    end, 1))
  end)

  it(":LlamaCancel closes the connection (the server logs the abort) and ends the text", function()
    local parts = {}
    for i = 1, 200 do parts[i] = string.format("w%03d ", i) end
    srv:write("nvim_slow", stream_response(parts, 1))
    local res = run_nvim{ scenario = "cancel", endpoint = srv:replay("nvim_slow", "pace=20"),
                          cancel_after = 20 }
    -- the abort is logged by the server: libcurl closed the socket
    local abort = srv:wait_for(function(r)
      return r.event == "abort" and r.path == "/replay/nvim_slow/pace=20/v1/chat/completions"
    end, 5)
    assert.truthy(abort, "no abort in the server log")
    assert.is_false(res.busy_after_cancel)
    assert.is_false(res.cancel_again)
    assert.equal("cancelled", res.last.status)
    -- nothing came after "[cancelled]", and what came before is the start of the answer
    assert.same(res.lines_at_cancel, res.lines)
    assert.equal("[cancelled]", res.lines[#res.lines - 1])
    assert.equal("", res.lines[#res.lines])
    local got = res.lines[3]
    assert.is_true(#got >= 20, got)
    assert.equal(table.concat(parts):sub(1, #got), got)
    assert.is_true(#got < #table.concat(parts), "the whole answer arrived before the cancel")
  end)

  it("uses llamacpp from a LuaRocks tree (Lua 5.1) found through LUA_PATH/LUA_CPATH", function()
    -- luarocks make builds in its working directory: work on a copy
    local tmp = os.tmpname()
    os.remove(tmp)
    local src, tree = tmp .. "/src", tmp .. "/tree"
    assert(sh_ok(table.concat({ "mkdir -p", q(src .. "/src"), "&& cp -r",
                                q(ROOT .. "/rockspec"), q(ROOT .. "/lua"), q(src), "&& cp", q(ROOT) .. "/src/*.c",
                                q(ROOT) .. "/src/*.h", q(src .. "/src") }, " ")))
    local log = tmp .. "/luarocks.log"
    local built = sh_ok("cd " .. q(src) .. " && luarocks --lua-version=5.1 --tree=" .. q(tree) ..
                        " make --deps-mode=none rockspec/llamacpp-scm-1.rockspec" ..
                        " LUA_INCDIR=/usr/include/luajit-2.1 >" .. q(log) .. " 2>&1")
    local out = util.read(log)
    if not built then os.execute("rm -rf " .. q(tmp)) end
    assert(built, "luarocks make failed:\n" .. out)
    local want = util.expected("chat_stream")
    local ok, res = pcall(run_nvim, { scenario = "chat", endpoint = srv:replay("chat_stream") }, {
      LUA_PATH = tree .. "/share/lua/5.1/?.lua;" .. tree .. "/share/lua/5.1/?/init.lua;;",
      LUA_CPATH = tree .. "/lib/lua/5.1/?.so;;",
    })
    os.execute("rm -rf " .. q(tmp))
    assert(ok, res)
    assert.equal(tree .. "/share/lua/5.1/llamacpp/init.lua", res.module)
    assert.equal(tree .. "/lib/lua/5.1/llamacpp/core.so", res.core)
    local _, _, answer = split_buffer(res.lines)
    assert.equal(want.content, answer)
    assert.equal("done", res.last.status)
  end)

  it("shows a failed request in the buffer: nothing listening", function()
    local port = util.closed_port()
    local res = run_nvim{ scenario = "chat", endpoint = "http://127.0.0.1:" .. port }
    assert.equal("error", res.last.status)
    assert.equal("[error] llama-server not running at http://127.0.0.1:" .. port ..
                 " (connection, COULDNT_CONNECT, provider=llamacpp)", res.lines[3])
    assert.equal("", res.lines[4])
  end)

  -- Fails today: luv's poll callback prints uv's error name to the
  -- process's stderr ("EBADF: bad file descriptor") when a watched socket
  -- reports POLLERR, as a refused connection does (libuv then passes
  -- UV_EBADF). In Neovim's TUI that text lands on the screen; headless,
  -- among the messages. A way out: the core watches its sockets in one
  -- epoll (kqueue) fd per session and llamacpp.uv polls only that fd, which
  -- never errors; the sockets' errors reach libcurl as CURL_CSELECT_ERR.
  it("prints nothing of its own on Neovim's stderr when a connection is refused", function()
    local port = util.closed_port()
    local _, stdout, stderr = run_nvim{ scenario = "chat", endpoint = "http://127.0.0.1:" .. port }
    assert.equal("", stdout)
    assert.equal("", stderr, "stray output on Neovim's stderr (luv's poll callback)")
  end)

  -- 20,000 content events, every 25th ending a line, as llama-server
  -- sends them (one JSON object per event), PER_CHUNK to an HTTP chunk.
  local N = 20000
  local function big_stream(name, per_chunk)
    local parts = {}
    for i = 1, N do
      parts[i] = string.format("e%05d", i) .. (i % 25 == 0 and "\n" or " ")
    end
    srv:write(name, stream_response(parts, per_chunk))
    return (table.concat(parts):gsub("\n$", ""))
  end

  -- The probe's record while the events were delivered: from the first
  -- event to the buffer's last write. Per gap between two ticks: wall
  -- time, the main thread's CPU time ("busy": the loop was running code,
  -- ours or Neovim's) and its run-queue wait (runnable, but the kernel ran
  -- another process). Wall time beyond those two is the thread asleep
  -- until its timer fired; an idle Neovim here shows how late that can be.
  local function analyse(res)
    local t0, t1 = res.event_times[1], res.done_at
    local a = { t0 = t0, t1 = t1, wall = {}, busy = {}, worst_wall = { 0, 0, 0 },
                worst_busy = { 0, 0, 0 }, idle_wall = 0, idle_busy = 0 }
    for i = 2, #res.ticks do
      local w = res.ticks[i] - res.ticks[i - 1]
      local c = res.cpu[i] - res.cpu[i - 1]
      local rq = res.runq[i] - res.runq[i - 1]
      if res.ticks[i] <= res.idle_end then
        a.idle_wall = math.max(a.idle_wall, w)
        a.idle_busy = math.max(a.idle_busy, c)
      elseif res.ticks[i] >= t0 and res.ticks[i - 1] <= t1 then
        a.wall[#a.wall + 1], a.busy[#a.busy + 1] = w, c
        if w > a.worst_wall[1] then a.worst_wall = { w, c, rq } end
        if c > a.worst_busy[1] then a.worst_busy = { c, w, rq } end
      end
    end
    -- llamacpp's callbacks: the longest (CPU), how many events it handed
    -- out, and whether any slept in a syscall
    local ev, j = res.event_times, 1
    a.cb = { n = 0, cpu = 0, events = 0, most = 0, slept = 0, at = 0 }
    for _, h in ipairs(res.held.llamacpp) do
      local n = 0
      while ev[j] and ev[j] < h[1] do j = j + 1 end
      while ev[j] and ev[j] <= h[1] + h[2] do n, j = n + 1, j + 1 end
      if h[1] + h[2] >= t0 and h[1] <= t1 then
        a.cb.n = a.cb.n + 1
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
    local sw, sb = sorted(a.wall), sorted(a.busy)
    a.summary = string.format(
      "%d events in %.0f ms (%s), %d tick gaps:\n" ..
      "  busy (main thread CPU) per gap: p50 %.2f, p99 %.2f, max %.2f ms (wall %.2f, run queue %.2f)\n" ..
      "  wall per gap: p50 %.2f, p99 %.2f, max %.2f ms (busy %.2f, run queue %.2f); " ..
      "idle Neovim before: max wall %.2f, busy %.2f ms\n" ..
      "  llamacpp callbacks: %d, most events in one %d, longest %.2f ms CPU at +%.0f ms " ..
      "(%d events%s), %s slept; at most %d between two ticks (%s); " ..
      "longest buffer write %.2f ms CPU",
      #ev, t1 - t0, res.linux and "Linux" or "no FFI/schedstat: CPU = os.clock, run queue = 0",
      #a.wall,
      percentile(sb, 0.5), percentile(sb, 0.99), a.worst_busy[1], a.worst_busy[2], a.worst_busy[3],
      percentile(sw, 0.5), percentile(sw, 0.99), a.worst_wall[1], a.worst_wall[2], a.worst_wall[3],
      a.idle_wall, a.idle_busy,
      a.cb.n, a.cb.most, a.cb.cpu, a.cb.at, a.cb.events, a.cb.gc and ", a GC cycle ended in it" or "",
      res.linux and tostring(a.cb.slept) or "unknown if any", a.chain, a.chain_kinds, a.flush)
    return a
  end

  local function measure(name, opts, want)
    local res = run_nvim{ scenario = "measure", warm = srv:replay("chat_stream"),
                          endpoint = srv:replay(name, opts), tick_ms = 1, idle_ms = 300,
                          events = N + 1,
                          wait_ms = 40000, timeout_ms = 50000 }
    assert.equal("done", res.last.status)
    local _, _, answer = split_buffer(res.lines)
    same_text(want, answer, "the answer in the buffer")   -- every event's text, in order
    assert.equal(N + 1, #res.event_times)                  -- the content events and done
    local a = analyse(res)
    io.stderr:write("\n[nvim_spec] ", name, "/", opts, ": ", a.summary, "\n")
    return a
  end

  -- What is asserted is the busy time between two ticks of the 1 ms
  -- timer, not the wall time: on a shared machine the wall time also holds
  -- the kernel running other processes and timer wake-ups that come late,
  -- which no code in Neovim controls (on the 2-core VM this was written on,
  -- an idle Neovim, and a bare C loop of epoll_wait(1 ms), see gaps of 5 to
  -- 8 ms). Both are reported. That the loop never sleeps inside llamacpp's
  -- callbacks (a blocking call would not show as CPU) is asserted apart.
  it("keeps the main loop free (<= 5 ms busy between 1 ms ticks) while 20,000 events stream in",
     function()
    -- 50 events every 2 ms: 20,000 events in about a second (a fast
    -- llama-server sends a few hundred a second)
    local want = big_stream("nvim_20k", 50)
    local a = measure("nvim_20k", "pace=2", want)
    assert.is_true(a.t1 - a.t0 >= 300, "the stream was too short to mean anything: " .. a.summary)
    assert.is_true(#a.wall >= 100, a.summary)
    assert.is_true(a.worst_busy[1] <= 5, "the loop was busy for more than 5 ms: " .. a.summary)
    assert.equal(0, a.cb.slept, "a llamacpp callback slept in a syscall: " .. a.summary)
  end)

  -- The same 20,000 events at once (about 4.6 MB, unpaced): what a
  -- backlog looks like after the editor was blocked for a while. Fails
  -- today: while data is waiting libcurl asks for a 0 ms timeout,
  -- llamacpp.uv restarts its timer with 0 from inside the timer callback,
  -- and libuv before 1.45 (Neovim 0.7's) runs such a timer again in the
  -- same pass: the whole backlog goes through before any other timer, I/O
  -- or Neovim event gets a turn ("timer 0 x59" in the summary).
  it("keeps the main loop free (<= 5 ms busy between 1 ms ticks) when 20,000 events arrive at once",
     function()
    local want = big_stream("nvim_20k_burst", 50)
    local a = measure("nvim_20k_burst", "-", want)
    assert.is_true(a.worst_busy[1] <= 5, "the loop was busy for more than 5 ms: " .. a.summary)
    assert.equal(0, a.cb.slept, "a llamacpp callback slept in a syscall: " .. a.summary)
  end)
end)
