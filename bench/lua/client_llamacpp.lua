--- The llamacpp module under test.
--   client_llamacpp.lua stream|lat|mem|seq|multi|multiq|startup ENDPOINT [N]
-- ENDPOINT carries the bench server's options as a path prefix.
local mode, endpoint, n = arg[1], arg[2], tonumber(arg[3] or "0")

-- CPU of this process since exec in µs, read from /proc/self/schedstat (the
-- same nanosecond count getrusage reports, without loading benchutil first)
local function cpu_since_exec()
  local f = io.open("/proc/self/schedstat")
  local ns = f and f:read("n")
  if f then f:close() end
  return ns and ns / 1e3
end

local startup
if mode == "startup" then
  -- require + new + the first (non-stream) request, all CPU from exec; only
  -- what a user's script would do is done before the CPU is read
  local c = require("llamacpp").new{ endpoint = endpoint }
  local res = c:chat{ messages = { { role = "user", content = "hi" } }, max_tokens = 16 }
  startup = { cpu_us = cpu_since_exec(), res = res }
end

local bu = require "benchutil"
local common = require "common"
local llamacpp = require "llamacpp"
local msgs = { { role = "user", content = "hi" } }
local R = { client = "llamacpp", mode = mode }

local function check(ok) R.ok = ok and 1 or 0 end

-- mem: a million events kept in memory would be megabytes of text by
-- design; that case measures the stream itself (assemble = false)
local function stream(client, on_content, opts)
  local events, bytes, done = 0, 0, nil
  for ev in client:chat_stream({ messages = msgs, max_tokens = 16 }, opts) do
    local ty = ev.type
    if ty == "content" then
      events = events + 1
      bytes = bytes + #ev.content
      if on_content then on_content(ev, events) end
    elseif ty == "done" then done = ev
    elseif ty == "error" then io.stderr:write("llamacpp: ", tostring(ev.error), "\n") end
  end
  return events, bytes, done
end

local function verify(events, bytes, done)
  R.events, R.bytes = events, bytes
  local tm = done and done.timings or {}
  R.want_events, R.want_bytes = tm.bench_events or -1, tm.bench_content_bytes or -1
  R.assembled = done and (done.content and #done.content or bytes) or -1
  check(done and bytes == R.want_bytes and events == R.want_events and
        R.assembled == bytes)
end

if mode == "startup" then
  local res = startup.res
  R.cpu_us = startup.cpu_us or bu.cpu_us()   -- (no /proc: benchutil's load counts too)
  check(res and #res.content == res.raw.timings.bench_content_bytes)
elseif mode == "stream" or mode == "lat" or mode == "mem" then
  local client = llamacpp.new{ endpoint = endpoint }
  local lats, rss10k, samples = {}, nil, {}
  local on
  if mode == "lat" then
    local now, tonumber, sub = bu.now_ns, tonumber, string.sub
    on = function(ev, i) lats[i] = now() - tonumber(sub(ev.content, 1, 20)) end
  elseif mode == "mem" then
    on = function(_, i)
      if i % 100000 == 0 or i == 10000 then
        local r = bu.rss_kb()
        if i == 10000 then rss10k = r end
        samples[#samples + 1] = string.format("%d:%d", i / 1000, r)
      end
    end
  end
  local c0, t0 = bu.cpu_us(), bu.now_ns()
  local events, bytes, done = stream(client, on, mode == "mem" and { assemble = false } or nil)
  R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
  verify(events, bytes, done)
  if mode == "lat" then
    R.lat_p50_us = common.pct(lats, 0.5) / 1e3
    R.lat_p99_us = common.pct(lats, 0.99) / 1e3
    R.lat_max_us = lats[#lats] / 1e3
  elseif mode == "mem" then
    R.rss_10k_kb = rss10k or -1
    R.rss_end_kb = bu.rss_kb()
    R.rss_samples = table.concat(samples, ",")
  end
elseif mode == "seq" then
  local client = llamacpp.new{ endpoint = endpoint }
  local bytes, want, conns, seen, failed = 0, 0, 0, {}, 0
  local c0, t0 = bu.cpu_us(), bu.now_ns()
  for _ = 1, n do
    local res, err = client:chat{ messages = msgs, max_tokens = 16 }
    if not res then
      failed = failed + 1
      io.stderr:write("llamacpp: ", tostring(err), "\n")
    else
      local tm = res.raw.timings
      bytes, want = bytes + #res.content, want + tm.bench_content_bytes
      if not seen[tm.bench_conn] then conns, seen[tm.bench_conn] = conns + 1, true end
    end
  end
  R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
  R.requests, R.failed, R.bytes, R.want_bytes, R.conns = n, failed, bytes, want, conns
  check(failed == 0 and bytes == want)
elseif mode == "multi" or mode == "multiq" then
  -- n streams on one client, one thread: round-robin with next(0), at most
  -- 64 events per stream per pass (fairness: next(0) drives the session
  -- whenever a stream's queue is empty, so one stream could be drained for
  -- ever while the others queue); when a whole pass got nothing, block
  -- briefly (1 ms) on one of them
  local client = llamacpp.new{ endpoint = endpoint }
  local c0, t0 = bu.cpu_us(), bu.now_ns()
  local open, bytes, events, want, failed = {}, {}, {}, {}, 0
  for i = 1, n do
    -- multiq: streams that keep no text for done.content (as the C client)
    open[i] = client:open_stream({ messages = msgs, max_tokens = 16 },
                                 mode == "multiq" and { assemble = false } or nil)
    bytes[i], events[i] = 0, 0
  end
  local function take(id, ev)
    local ty = ev.type
    if ty == "content" then
      events[id] = events[id] + 1
      bytes[id] = bytes[id] + #ev.content
    elseif ty == "done" then want[id] = ev.timings.bench_content_bytes
    elseif ty == "error" then
      failed = failed + 1
      io.stderr:write("llamacpp: ", tostring(ev.error), "\n")
    end
  end
  local live, ids = n, {}
  for i = 1, n do ids[i] = i end
  local passes, blocks = 0, 0
  while live > 0 do
    local got = false
    local i = 1
    passes = passes + 1
    while i <= live do
      local id = ids[i]
      local s = open[id]
      local ev, k = s:next(0), 0
      while ev do                            -- what is ready, up to a batch
        got = true
        take(id, ev)
        k = k + 1
        if k == 64 then break end
        ev = s:next(0)
      end
      if ev == nil then                      -- ended: drop it from the ring
        s:close()
        ids[i] = ids[live]
        live = live - 1
      else
        i = i + 1
      end
    end
    if not got and live > 0 then             -- nothing anywhere: wait a bit
      blocks = blocks + 1
      local ev = open[ids[1]]:next(1)        -- (nil: seen again next pass)
      if ev then take(ids[1], ev) end
    end
  end
  R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
  local tb, tw, te = 0, 0, 0
  for i = 1, n do
    tb, te, tw = tb + bytes[i], te + events[i], tw + (want[i] or -1)
    if want[i] ~= bytes[i] then failed = failed + 1 end
  end
  R.streams, R.failed, R.events, R.bytes, R.want_bytes = n, failed, te, tb, tw
  R.passes, R.blocks = passes, blocks
  check(failed == 0 and tb == tw)
else
  error("unknown mode " .. tostring(mode))
end
R.maxrss_kb = bu.maxrss_kb()
common.result(R)
os.exit(R.ok == 1 and 0 or 1)
