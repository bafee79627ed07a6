-- A real Neovim (headless, LuaJIT) runs the example plugin examples/nvim
-- against the fixture server: :LlamaChat streams into a buffer in order,
-- :LlamaCancel closes the connection, and the editor's loop keeps turning
-- while 20,000 events arrive. Neovim runs spec/nvim/driver.lua, which
-- writes what it saw as JSON; the assertions are here (no timings: how
-- long the loop was busy is `make bench`, bench/loop.lua). Needs `nvim`
-- (Debian's neovim: LuaJIT, vim.loop) and the LuaJIT build of the core
-- (make LUA=luajit).
local fixture = require "fixture.control"
local util = require "spec.util"
local harness = require "nvim.harness"
local cjson = require "cjson"

local q = harness.q

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

-- nvim runs in an empty directory: "./?.so" & co. on its default paths
-- must not find anything (a stray ./llamacpp/core.so in the checkout).
local WORKDIR

-- Runs the driver in headless Neovim (nvim.harness.run). args: the
-- driver's (see spec/nvim/driver.lua); env: extra environment {NAME =
-- value}; cwd. Returns the decoded result, and nvim's stdout and stderr.
local function run_nvim(args, env, cwd)
  return harness.run(ROOT, cwd or WORKDIR, args, env)
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

local function stream_response(parts, per_chunk)
  return harness.stream_response(fixture, parts, per_chunk)
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

  -- 20,000 content events, 50 to an HTTP chunk (about 4.6 MB), paced or
  -- all at once, into the plugin's buffer. What "the loop is not blocked"
  -- means, asserted as behaviour, whatever the machine's speed or load:
  -- - a 1 ms timer started from inside the callback at the first event
  --   and at the 10,000th runs before the stream's last event (the loop
  --   turned in between; a libuv before 1.45 re-running a 0 ms timer in
  --   the same pass failed this), and a vim.schedule() callback started
  --   at the first event runs before the last one too;
  -- - the events come in many callbacks, never more than a quarter of
  --   them in one (llamacpp.uv hands out what a 2 ms budget allows per
  --   turn: a few hundred here);
  -- - no llamacpp callback slept in a syscall (a blocking call).
  -- How long the loop was busy per tick is measured by `make bench`.
  local N = 20000
  local PROBES = { 1, math.floor(N / 2) }

  local function streamed(name, opts)
    local want = harness.big_stream(fixture, srv, name, N, 50)
    local res = run_nvim{ scenario = "measure", warm = srv:replay("chat_stream"),
                          endpoint = srv:replay(name, opts), tick_ms = 1, idle_ms = 50,
                          events = N + 1, probe_at = PROBES,
                          wait_ms = 40000, timeout_ms = 50000 }
    assert.equal("done", res.last.status)
    local _, _, answer = split_buffer(res.lines)
    same_text(want, answer, "the answer in the buffer")   -- every event's text, in order
    assert.equal(N + 1, #res.event_times)                  -- the content events and done
    local a = harness.analyse(res)
    local what = name .. "/" .. opts .. ": " .. a.summary
    assert.equal(#PROBES, #res.probes, what)
    for _, p in ipairs(res.probes) do
      assert.is_number(p.timer, "the timer started at event " .. p.at .. " never ran: " .. what)
      assert.is_true(p.timer <= N, "the timer started at event " .. p.at ..
                     " ran only after the last event: " .. what)
    end
    assert.is_number(res.probes[1].scheduled, "vim.schedule at the first event never ran: " .. what)
    assert.is_true(res.probes[1].scheduled <= N, "vim.schedule at the first event ran only " ..
                   "after the last event: " .. what)
    assert.is_true(a.cb.delivering >= 2, what)
    assert.is_true(a.cb.most <= N / 4, "one callback handed out " .. a.cb.most .. " events: " .. what)
    assert.is_true(a.ticks_in >= 1, "the 1 ms timer never ran during the stream: " .. what)
    assert.equal(0, a.cb.slept, "a llamacpp callback slept in a syscall: " .. what)
    return res, a, what
  end

  it("keeps the main loop turning while 20,000 events stream in (50 every 2 ms)", function()
    -- 50 events every 2 ms: 20,000 events in about a second (a fast
    -- llama-server sends a few hundred a second)
    streamed("nvim_20k", "pace=2")
  end)

  -- What a backlog looks like after the editor was blocked for a while.
  it("keeps the main loop turning when 20,000 events arrive at once", function()
    streamed("nvim_20k_burst", "-")
  end)

  -- Neovim's own work (vim.schedule callbacks: the plugin's buffer
  -- writes) runs while a burst is handed out. Redrawing a markdown buffer
  -- with syntax on, Neovim calls os_breakcheck(), which runs a libuv pass;
  -- llamacpp.uv used to read the sockets and hand out events in each, so
  -- the redraw lasted as long as the burst (issue 22). In Neovim it now
  -- watches nothing after a read until the main loop has had a turn.
  it("runs Neovim's scheduled callbacks while a burst is handed out", function()
    local res, _, what = streamed("nvim_20k_burst", "-")
    for _, p in ipairs(res.probes) do
      assert.is_true(p.scheduled <= N, "vim.schedule at event " .. p.at ..
                     " ran only after the last event: " .. what)
    end
  end)
end)
