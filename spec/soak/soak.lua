-- Soak: many sequential requests and many streamed events through one
-- client, over loopback, with the process's memory and descriptors sampled.
--
--   lua5.4 spec/soak/soak.lua [--requests N] [--events N] [--streams N] [--every N]
--   make soak            100,000 requests and 1,000,000 events (Lua 5.4; LUA=luajit too)
--
-- From the repository root. As a module (spec/soak_spec.lua runs it smaller):
-- require("soak.soak").run{requests=, events=, streams=, every=} -> report.
-- The server is the fixture's tiny llama-server (/hostile/llama, quiet: it
-- keeps no log). RSS is read from /proc/self/status every `every` requests
-- and every stream, after a full collection (what stays) and before it (what
-- the process holds at that moment).
local M = {}

local function full_gc()
  for _ = 1, 3 do collectgarbage("collect") end
end

--- Runs the soak; returns the report (see the fields at the end).
function M.run(opts)
  opts = opts or {}
  local llamacpp = require "llamacpp"
  local fixture = require "fixture.control"
  local proc = require "soak.proc"
  local now = require("socket").gettime
  local nreq, nev = opts.requests or 100000, opts.events or 1000000
  local nstreams = opts.streams or 10
  local every = opts.every or math.max(1, math.floor(nreq / 100))
  local per_stream = math.floor(nev / nstreams)
  local log = opts.log or function() end
  local MSGS = { { role = "user", content = "Say hello." } }

  local srv = fixture.start{ quiet = true }
  local r = { requests = 0, events = 0, samples = {},
              lua = _VERSION .. (type(jit) == "table" and " (" .. jit.version .. ")" or "") }
  local ok, err = pcall(function()
    -- LuaJIT's compiled traces keep the objects they were recorded with as
    -- constants (clients of earlier specs, this one's later): drop them, or
    -- a client lives on after its last reference
    if type(jit) == "table" then jit.flush() end
    full_gc()
    r.fds_before = proc.nfds()
    r.rss_start_kb = proc.rss_kb()
    local function sample(label)
      local raw = proc.rss_kb()
      full_gc()
      local s = { label = label, requests = r.requests, events = r.events, rss_kb = raw,
                  rss_gc_kb = proc.rss_kb(), lua_kb = math.floor(collectgarbage("count")),
                  fds = proc.nfds(), t = now() - r.t0 }
      r.samples[#r.samples + 1] = s
      return s
    end
    local function run_client()
      local c = llamacpp.new{ endpoint = srv:hostile("llama", "n=" .. per_stream .. ",batch=256") }
      r.t0 = now()
      for i = 1, nreq do
        local res, e = c:chat{ messages = MSGS }
        if not res then error("request " .. i .. ": " .. tostring(e)) end
        if res.content ~= "Hello" then error("request " .. i .. ": content " .. tostring(res.content)) end
        r.requests = i
        if i == 1 or i % every == 0 then
          local s = sample("requests")
          if i % (every * 10) == 0 then log(("%7d requests  rss %6d KB (after gc %6d)  lua %5d KB  fds %d  %.1f s")
            :format(i, s.rss_kb, s.rss_gc_kb, s.lua_kb, s.fds, s.t)) end
        end
      end
      r.requests_s = now() - r.t0
      local t1 = now()
      for k = 1, nstreams do
        local n, last = 0, nil
        for ev in c:chat_stream{ messages = MSGS } do
          if ev.type == "content" then n = n + 1 end
          last = ev
        end
        if not last or last.type ~= "done" then
          error("stream " .. k .. " ended with " .. tostring(last and (last.error or last.type)))
        end
        if n ~= per_stream or #last.content ~= per_stream then
          error(("stream %d: %d content events, %d bytes of content, want %d"):format(k, n, #last.content, per_stream))
        end
        r.events = r.events + n
        local s = sample("events")
        log(("%7d events    rss %6d KB (after gc %6d)  lua %5d KB  fds %d  %.1f s")
          :format(r.events, s.rss_kb, s.rss_gc_kb, s.lua_kb, s.fds, s.t))
      end
      r.events_s = now() - t1
      r.fds_open = proc.nfds()          -- the client's session and its kept-alive connection
    end
    run_client()                        -- returns: nothing of it is on this stack
    if type(jit) == "table" then jit.flush() end
    full_gc()
    r.fds_after = proc.nfds()
    r.rss_end_kb = proc.rss_kb()
  end)
  srv:stop()
  if not ok then error(err, 0) end

  -- The bound: after the first tenth of the requests (warm-up: buffers,
  -- connection, Lua's own tables at their size), how far RSS after a
  -- collection rose above where it was then, and the highest RSS seen.
  local warm = r.samples[1]
  for _, s in ipairs(r.samples) do
    if s.label == "requests" and s.requests <= nreq / 10 then warm = s end
  end
  r.warm_kb = warm.rss_gc_kb
  r.max_gc_kb, r.max_kb, r.min_gc_kb = 0, 0, math.huge
  for _, s in ipairs(r.samples) do
    if s.requests >= warm.requests then
      r.max_gc_kb = math.max(r.max_gc_kb, s.rss_gc_kb)
      r.min_gc_kb = math.min(r.min_gc_kb, s.rss_gc_kb)
      r.max_kb = math.max(r.max_kb, s.rss_kb)
    end
  end
  r.growth_kb = r.max_gc_kb - r.warm_kb
  -- and per phase: the requests after warm-up; the streams after the first
  -- two (the first ones size the buffers of a 100,000-event stream)
  local first_ev, max_req, max_ev = nil, r.warm_kb, 0
  local nev_seen = 0
  for _, s in ipairs(r.samples) do
    if s.label == "requests" and s.requests >= warm.requests then max_req = math.max(max_req, s.rss_gc_kb) end
    if s.label == "events" then
      nev_seen = nev_seen + 1
      if nev_seen == math.min(2, nstreams) then first_ev = s.rss_gc_kb end
      if first_ev then max_ev = math.max(max_ev, s.rss_gc_kb) end
    end
  end
  r.growth_requests_kb = max_req - r.warm_kb
  r.growth_events_kb = first_ev and (max_ev - first_ev) or 0
  r.seconds = now() - r.t0
  return r
end

--- One paragraph for humans.
function M.summary(r)
  return table.concat({
    ("soak (%s): %d sequential requests in %.1f s (%.0f/s), %d streamed events in %.1f s (%.0f/s)")
      :format(r.lua, r.requests, r.requests_s, r.requests / r.requests_s, r.events, r.events_s,
              r.events / r.events_s),
    ("RSS after gc: %d KB after warm-up, at most %d KB, at least %d KB after it: grew by %d KB" ..
     " (%d KB over the requests after warm-up, %d KB over the streams after the second);" ..
     " highest RSS seen %d KB; %d samples")
      :format(r.warm_kb, r.max_gc_kb, r.min_gc_kb, r.growth_kb, r.growth_requests_kb,
              r.growth_events_kb, r.max_kb, #r.samples),
    ("file descriptors: %d before the client, %d while it was open, %d after it was collected")
      :format(r.fds_before, r.fds_open, r.fds_after),
  }, "\n")
end

-- As a script: parse the arguments, run, print, check the bounds.
if arg and arg[0] and arg[0]:find("soak%.lua$") and not package.loaded["soak.soak"] then
  package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
  local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
  package.cpath = "./build/" .. v .. "/?.so;" .. package.cpath
  package.loaded["soak.soak"] = M
  local o, i = { log = print }, 1
  while i <= #arg do
    local k, val = arg[i]:match("^%-%-(%a+)$"), tonumber(arg[i + 1])
    if not (k and val and (k == "requests" or k == "events" or k == "streams" or k == "every")) then
      io.stderr:write("usage: soak.lua [--requests N] [--events N] [--streams N] [--every N]\n")
      os.exit(2)
    end
    o[k] = val
    i = i + 2
  end
  local r = M.run(o)
  print(M.summary(r))
  -- the bounds of spec/soak_spec.lua
  local bound = tonumber(os.getenv("LLAMACPP_SOAK_BOUND_KB") or "") or 8192
  local fail = {}
  if r.growth_kb > bound then fail[#fail + 1] = ("RSS grew by %d KB (bound %d KB)"):format(r.growth_kb, bound) end
  if r.fds_after ~= r.fds_before then
    fail[#fail + 1] = ("%d file descriptors before, %d after"):format(r.fds_before, r.fds_after)
  end
  if #fail > 0 then
    print("soak: FAILED: " .. table.concat(fail, "; "))
    os.exit(1)
  end
  print(("soak: OK (RSS growth within %d KB, no descriptor left open)"):format(bound))
end

return M
