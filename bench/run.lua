--- make bench: every case against every alternative, in one run, one table.
--   lua5.4 bench/run.lua [--smoke] [--reps N] [--out FILE]
-- Run from the top of the tree after the builds (mk/bench.mk does both).
-- Exits 1 if any client lost a byte or failed a request; never because a
-- speed target was missed (the table says which were).
local smoke, reps, outfile = false, 3, "build/bench/results.md"
do
  local i = 1
  while arg[i] do
    if arg[i] == "--smoke" then smoke, reps = true, 1
    elseif arg[i] == "--reps" then i = i + 1; reps = tonumber(arg[i])
    elseif arg[i] == "--out" then i = i + 1; outfile = arg[i]
    else error("usage: run.lua [--smoke] [--reps N] [--out FILE]") end
    i = i + 1
  end
end

-- sizes: the issue's, or a few seconds' worth for the smoke run
local S = smoke and {
  paced = 200, bulk = 5000, framing = 5000, seq = 50, seq_popen = 5,
  multi_streams = { 4, 8, 16 }, multi_events = 200, mem = 20000, lat = 200,
  paced_reps = 1, startup_reps = 1,
} or {
  paced = 10000, bulk = 100000, framing = 100000, seq = 2000, seq_popen = 200,
  multi_streams = { 16, 64, 256 }, multi_events = 2000, mem = 1000000, lat = 4000,
  -- the two cases whose figures move most from run to run (a wake-up per
  -- event; page faults at exec) take the median of more runs
  paced_reps = 7, startup_reps = 9,
}
local BULK_K = 64                -- events per HTTP chunk in the bulk case
local PACE_US = 250

local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("a")
  f:close()
  return out
end

local function have(cmd) return sh("command -v " .. cmd) ~= "" end

-- {====== the server ====== -----------------------------------------------

local server = assert(io.popen("exec build/bench/server -i 60 -T 3600 -q", "r"))
local port = assert(tonumber(server:read("l")), "bench server did not start")
local BASE = "http://127.0.0.1:" .. port

local function stats()
  local s = sh("curl -s --noproxy '*' " .. BASE .. "/bench/stats")
  return tonumber(s:match('"connections":(%d+)')) or -1
end

-- }======

-- {====== clients ====== ---------------------------------------------------

local LUAS = { { tag = "5.4", exe = "lua5.4" }, { tag = "LuaJIT", exe = "luajit" } }
-- Variables on the command line, not `env`: `env` would exec the
-- interpreter in its own process and add its start-up to the client's CPU.
local function luaenv(tag)
  local d = tag == "LuaJIT" and "luajit" or "5.4"
  return "LUA_PATH='./lua/?.lua;./lua/?/init.lua;./bench/lua/?.lua;;' " ..
         "LUA_CPATH='./build/" .. d .. "/?.so;./build/bench/" .. d .. "/?.so;;' "
end

local node_ok, node_why = have("node"), nil
if not node_ok then node_why = "node is not installed"
else
  local f = io.open("bench/node/node_modules/openai/package.json")
  if f then f:close() else
    node_ok, node_why = false, "bench/node/node_modules has no openai (npm ci failed or was skipped)"
  end
end

-- A client is a name and a function (mode, endpoint, n) -> shell command.
local clients = {}
for _, l in ipairs(LUAS) do
  clients["llamacpp " .. l.tag] = function(mode, ep, n)
    return luaenv(l.tag) .. l.exe .. " bench/lua/client_llamacpp.lua " .. mode .. " " .. ep .. " " .. (n or "")
  end
  clients["popen-curl " .. l.tag] = function(mode, ep, n)
    return luaenv(l.tag) .. l.exe .. " bench/lua/client_popen.lua " .. mode .. " " .. ep .. " " .. (n or "")
  end
  clients["luasocket " .. l.tag] = function(mode, ep, n)
    return luaenv(l.tag) .. l.exe .. " bench/lua/client_luasocket.lua " .. mode .. " " .. ep .. " " .. (n or "")
  end
end
-- the start-up floor: the interpreter with libcurl loaded and nothing else
local libcurl = sh("ldd build/5.4/llamacpp/core.so"):match("=>%s*(%S*libcurl%S*)")
for _, l in ipairs(LUAS) do
  clients["Lua+libcurl " .. l.tag] = function(_, _, _)
    return l.exe .. " bench/lua/floor.lua startup " .. (libcurl or "libcurl.so.4")
  end
end
clients["C libcurl"] = function(mode, ep, n)
  return "build/bench/cclient " .. mode .. " " .. ep .. "/v1/chat/completions " .. (n or "")
end
clients["Node openai"] = function(mode, ep, n)
  return "node bench/node/client.mjs " .. mode .. " " .. ep .. " " .. (n or "")
end

local function parse(out)
  local line = out:match("RESULT ([^\n]*)")
  if not line then return nil end
  local r = {}
  for k, v in line:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
  return r
end

-- }======

-- {====== cases ====== -----------------------------------------------------

-- kind "cpu": the target is CPU per event (lower is better);
-- "rate": events/s or requests/s (higher is better).
local STREAM_CLIENTS = { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl", "popen-curl 5.4",
  "popen-curl LuaJIT", "luasocket 5.4", "luasocket LuaJIT", "Node openai" }
-- multi<i><q>: S.multi_streams[i] concurrent streams; q = "q": opened with
-- assemble = false (client mode multiq)
local function multi_case(i, q, clients, targets)
  return { id = "multi" .. i .. q, title = ("%d concurrent streams of %d events%s"):format(S.multi_streams[i],
             S.multi_events, q == "q" and ", assemble = false" or ""),
           kind = "rate", unit = "event", mode = "multi" .. q, prefix = ("/n%d"):format(S.multi_events),
           n = S.multi_streams[i], clients = clients, targets = targets }
end
local cases = {
  { id = "paced", title = ("paced stream, %d events at %d µs"):format(S.paced, PACE_US),
    kind = "cpu", unit = "event", mode = "stream", reps = S.paced_reps,
    prefix = ("/n%d/d%d"):format(S.paced, PACE_US), clients = STREAM_CLIENTS,
    targets = { { "C libcurl", 1.1 }, { "Node openai", 0.4 } } },
  { id = "bulk", title = ("bulk stream, %d events, %d per chunk"):format(S.bulk, BULK_K),
    kind = "cpu", unit = "event", mode = "stream",
    prefix = ("/n%d/k%d"):format(S.bulk, BULK_K), clients = STREAM_CLIENTS,
    targets = { { "luasocket", 0.6 }, { "Node openai", 0.1 } } },
  { id = "framing", title = ("llama-server framing, %d events"):format(S.framing),
    kind = "rate", unit = "event", mode = "stream",
    prefix = ("/n%d"):format(S.framing), clients = STREAM_CLIENTS,
    targets = { { "C libcurl", 1.0 }, { "Node openai", 2.0 } } },
  { id = "seq", title = ("%d sequential non-stream chat calls"):format(S.seq),
    kind = "rate", unit = "request", mode = "seq", prefix = "/n16",
    n = S.seq, n_for = { ["popen-curl 5.4"] = S.seq_popen, ["popen-curl LuaJIT"] = S.seq_popen },
    clients = { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl", "popen-curl 5.4",
                "popen-curl LuaJIT", "Node openai" },
    targets = { { "C libcurl", 0.7 }, { "popen-curl", 50 } } },
  -- concurrent streams at three counts: events/s and peak RSS against the
  -- C curl-multi client, and the RSS each stream adds (issue 23's goals)
  multi_case(1, "", { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl" }),
  multi_case(2, "", { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl" },
             { { "C libcurl", 1.0 }, { "C libcurl", 1.3, "rss" } }),
  multi_case(3, "", { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl", "Node openai" }, { { "C libcurl", 1.0 } }),
  -- the same with assemble = false: no text kept for done.content, the
  -- work the C client does (its figures are those of multi1 and multi3)
  multi_case(1, "q", { "llamacpp 5.4", "llamacpp LuaJIT" }),
  multi_case(3, "q", { "llamacpp 5.4", "llamacpp LuaJIT" }),
  { id = "mem", title = ("%d events in one stream"):format(S.mem), kind = "mem", unit = "event",
    mode = "mem", prefix = ("/n%d"):format(S.mem), reps = 1,
    clients = { "llamacpp 5.4", "llamacpp LuaJIT" } },
  { id = "lat", title = ("latency added, %d events at %d µs"):format(S.lat, PACE_US),
    kind = "lat", unit = "event", mode = "lat", prefix = ("/n%d/d%d/t1"):format(S.lat, PACE_US),
    clients = { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl" } },
  { id = "startup", title = "start-up: require + first request", kind = "startup",
    unit = "process", mode = "startup", prefix = "/n16", reps = S.startup_reps,
    clients = { "llamacpp 5.4", "llamacpp LuaJIT", "C libcurl", "Lua+libcurl 5.4",
                "Lua+libcurl LuaJIT", "Node openai" } },
}

local cases_by_id = {}
for _, c in ipairs(cases) do cases_by_id[c.id] = c end

-- }======

-- {====== running ====== ---------------------------------------------------

local lost = {}
local results = {}      -- results[case.id][client] = list of RESULT tables

local function median(list, key)
  local v = {}
  for _, r in ipairs(list) do v[#v + 1] = r[key] end
  table.sort(v)
  if #v == 0 then return nil end
  return v[(#v + 1) // 2]
end

io.stderr:write(("bench: server on port %d, %s run, %d rep(s)%s\n"):format(port,
  smoke and "smoke" or "full", reps, node_ok and "" or ("; Node column skipped: " .. node_why)))
for _, c in ipairs(cases) do
  io.stderr:write("bench: ", c.title, "\n")
  results[c.id] = {}
  for _, name in ipairs(c.clients) do results[c.id][name] = {} end
  c.reps = c.id == "mem" and 1 or math.max(c.reps or reps, reps)
  for rep = 1, c.reps do
    for _, name in ipairs(c.clients) do
      if name ~= "Node openai" or node_ok then
        local n = c.n_for and c.n_for[name] or c.n
        local mode = c.mode
        if name == "C libcurl" and mode == "mem" then mode = "stream" end
        local before = c.id == "seq" and stats()
        local cmd = clients[name](mode, BASE .. c.prefix, n)
        local vars, exe = cmd:match("^(LUA_PATH=%S+ LUA_CPATH=%S+ )(.*)$")
        local out = sh((vars or "") .. "timeout 600 " .. (exe or cmd))
        local r = parse(out)
        if c.id == "seq" and r then r.server_conns = stats() - before - 1 end
        if not r or r.ok ~= 1 then
          lost[#lost + 1] = ("%s / %s: %s"):format(c.id, name,
            r and "lost bytes or failed requests" or ("no result: " .. out:sub(1, 300)))
          io.stderr:write("\nbench: FAILED ", lost[#lost], "\n", out, "\n")
        end
        if r then table.insert(results[c.id][name], r) end
      end
    end
  end
end
-- Start-up in instructions (valgrind's callgrind), for each interpreter:
-- the same count every run, where CPU time on a shared VM moves by ±30 %.
local startup_ir = {}
if have("valgrind") then
  local function ir(cmd)
    local vars, exe = cmd:match("^(LUA_PATH=%S+ LUA_CPATH=%S+ )(.*)$")
    local out = sh((vars or "") .. "timeout 300 valgrind --tool=callgrind --callgrind-out-file=/dev/null " ..
                   (exe or cmd))
    return tonumber(out:match("Collected : (%d+)"))
  end
  io.stderr:write("bench: start-up instructions (callgrind)\n")
  for _, l in ipairs(LUAS) do
    startup_ir[l.tag] = { ours = ir(clients["llamacpp " .. l.tag]("startup", BASE .. "/n16")),
                          floor = ir(clients["Lua+libcurl " .. l.tag]()) }
  end
end
sh("curl -s --noproxy '*' " .. BASE .. "/bench/quit")
server:close()

-- }======

-- {====== the table ====== -------------------------------------------------

local out = {}
local function p(...) out[#out + 1] = table.concat({ ... }) end
local function fmt(v, d) if v == nil then return "–" end return (("%." .. (d or 1) .. "f"):format(v)) end
local function si(v)
  if v == nil then return "–" end
  if v >= 1e6 then return ("%.2f M"):format(v / 1e6) end
  if v >= 1e3 then return ("%.1f k"):format(v / 1e3) end
  return ("%.1f"):format(v)
end

-- per client of a case: rate, cpu per unit, peak RSS (medians)
local function summary(c, name)
  local list = results[c.id][name]
  if not list or #list == 0 then return nil end
  local units = c.unit == "request" and "requests" or "events"
  local s = { n = #list }
  local rates, cpus = {}, {}
  for _, r in ipairs(list) do
    local count = r[units] or r.events or 1
    if r.wall_us then rates[#rates + 1] = { v = count / (r.wall_us / 1e6) } end
    cpus[#cpus + 1] = { v = r.cpu_us / (c.kind == "startup" and 1 or count) }
  end
  s.rate = median(rates, "v")
  s.cpu = median(cpus, "v")
  s.rss = median(list, "maxrss_kb")
  s.conns = median(list, "conns")
  s.server_conns = median(list, "server_conns")
  s.lat50, s.lat99 = median(list, "lat_p50_us"), median(list, "lat_p99_us")
  s.rss10k, s.rssend = median(list, "rss_10k_kb"), median(list, "rss_end_kb")
  s.samples = list[1].rss_samples
  return s
end

local function metric(c, s)
  if not s then return nil end
  if c.kind == "rate" then return s.rate end
  return s.cpu
end

local stamp = os.date("!%Y-%m-%d %H:%M UTC")
p("Measured ", stamp, " on ", (sh("uname -m"):gsub("%s+$", "")), ", ",
  (sh("nproc"):gsub("%s+$", "")), " CPUs; ", smoke and "smoke run (small sizes)" or "full run",
  ", median of ", reps, " run(s) per client (paced: ", cases[1].reps, ", start-up: ",
  cases[#cases].reps, ", the 1,000,000-event case: 1).")
p("")
p("| case | client | events/s or req/s | CPU µs per event/req | peak RSS MiB | llamacpp 5.4 ÷ this | llamacpp LuaJIT ÷ this |")
p("|---|---|---:|---:|---:|---:|---:|")
for _, c in ipairs(cases) do
  local ours = { summary(c, "llamacpp 5.4"), summary(c, "llamacpp LuaJIT") }
  local first = true
  for _, name in ipairs(c.clients) do
    local s = summary(c, name)
    if s then
      local ratio = {}
      for i = 1, 2 do
        local a, b = metric(c, ours[i]), metric(c, s)
        ratio[i] = (a and b and b > 0 and not name:match("^llamacpp")) and
                   (("%.2fx"):format(a / b)) or ""
      end
      local extra = ""
      if c.id == "seq" and s.server_conns then
        extra = (" (%d conn)"):format(s.server_conns)
      elseif c.kind == "lat" then
        extra = (" p50 %s / p99 %s µs"):format(fmt(s.lat50), fmt(s.lat99))
      elseif c.kind == "mem" and s.rss10k then
        extra = (" RSS %+.2f MiB after the 10,000th"):format((s.rssend - s.rss10k) / 1024)
      end
      p("| ", first and c.title or "", " | ", name, " | ",
        c.kind == "startup" and "–" or si(s.rate), extra, " | ",
        fmt(s.cpu, c.kind == "startup" and 0 or 2), c.kind == "startup" and " (whole process)" or "",
        " | ", fmt(s.rss and s.rss / 1024), " | ", ratio[1], " | ", ratio[2], " |")
      first = false
    end
  end
end
if not node_ok then p(""); p("Node column skipped: ", node_why, ".") end

-- targets
p("")
p("| target | llamacpp 5.4 | llamacpp LuaJIT |")
p("|---|---|---|")
local function verdict(ok) return ok and "met" or "**missed**" end
for _, c in ipairs(cases) do
  local ours = { summary(c, "llamacpp 5.4"), summary(c, "llamacpp LuaJIT") }
  for _, t in ipairs(c.targets or {}) do
    local cells = {}
    for i = 1, 2 do
      local tag = i == 1 and "5.4" or "LuaJIT"
      local other = summary(c, t[1]) or summary(c, t[1] .. " " .. tag)
      local a, b = metric(c, ours[i]), metric(c, other)
      if t[3] == "rss" then a, b = ours[i] and ours[i].rss, other and other.rss end
      if a and b then
        local r = a / b
        local higher = c.kind == "rate" and t[3] ~= "rss"     -- else lower is better
        local ok = higher and r >= t[2] or (not higher and r <= t[2])
        cells[i] = ("%.2fx: %s"):format(r, verdict(ok))
      else cells[i] = "not measured" end
    end
    local what = t[3] == "rss" and "peak RSS" or c.kind == "rate" and "rate" or "CPU/event"
    p("| ", c.id, " (", c.title, "): ", what, " ", (c.kind == "rate" and t[3] ~= "rss") and "≥ " or "≤ ", t[2],
      "x ", t[1], " | ", cells[1], " | ", cells[2], " |")
  end
  if c.id == "multi3" or c.id == "multi3q" then
    -- the RSS one more stream costs, from the smallest count to the largest
    local lo, hi = c.id == "multi3" and cases_by_id.multi1 or cases_by_id.multi1q, c
    local dn = hi.n - lo.n
    local function per(case_lo, case_hi, name)
      local a, b = summary(case_lo, name), summary(case_hi, name)
      return a and b and a.rss and b.rss and (b.rss - a.rss) / dn
    end
    local cells = {}
    local base = per(cases_by_id.multi1, cases_by_id.multi3, "C libcurl")
    local r = results[hi.id]["llamacpp 5.4"][1]
    local text = c.id == "multi3" and r and r.bytes and r.streams and
                 (" (the text each keeps for done.content: %.1f kB)"):format(r.bytes / r.streams / 1024) or ""
    for i = 1, 2 do
      local mine = per(lo, hi, "llamacpp " .. LUAS[i].tag)
      cells[i] = (mine and base and base > 0) and ("%.1f kB against %.1f kB: %.2fx: %s%s"):format(mine, base,
        mine / base, verdict(mine / base <= 1.5), text) or "not measured"
    end
    p("| multi", c.id == "multi3q" and " (assemble = false, no text kept: what the C client does)" or "",
      ": RSS per extra stream (", lo.n, " to ", hi.n, " streams) ≤ 1.5x C libcurl | ", cells[1], " | ",
      cells[2], " |")
  end
  if c.id == "seq" then
    local cells = {}
    for i = 1, 2 do
      local s = ours[i]
      cells[i] = s and (("%s connection(s): %s"):format(tostring(s.server_conns), verdict(s.server_conns == 1))) or "–"
    end
    p("| seq: one connection reused | ", cells[1], " | ", cells[2], " |")
  elseif c.kind == "mem" then
    local cells = {}
    for i = 1, 2 do
      local s = ours[i]
      if s and s.rss10k then
        local g = (s.rssend - s.rss10k) / 1024
        cells[i] = ("%+.2f MiB: %s; peak %.1f MB: %s"):format(g, verdict(g < 1),
          s.rss * 1024 / 1e6, verdict(s.rss * 1024 < 16e6))
      else cells[i] = "–" end
    end
    p("| mem: RSS growth < 1 MiB after the 10,000th event; peak < 16 MB | ", cells[1], " | ", cells[2], " |")
  elseif c.kind == "lat" then
    local cells = {}
    for i = 1, 2 do
      local s = ours[i]
      cells[i] = s and (("p50 %.0f µs, p99 %.0f µs: %s"):format(s.lat50, s.lat99,
        verdict(s.lat50 < 1000 and s.lat99 < 1000))) or "–"
    end
    p("| latency: p50 and p99 < 1 ms | ", cells[1], " | ", cells[2], " |")
  elseif c.kind == "startup" then
    local cells = {}
    local cc = summary(c, "C libcurl")
    for i = 1, 2 do
      local s, floor = ours[i], summary(c, "Lua+libcurl " .. LUAS[i].tag)
      local r = s and floor and s.cpu / floor.cpu
      cells[i] = r and (("%.2fx: %s (%.1f ms; %s with libcurl loaded, nothing else: %s ms; C libcurl client: %s ms)")
        :format(r, verdict(r <= 1.2), s.cpu / 1e3, LUAS[i].exe, fmt(floor.cpu / 1e3),
          cc and fmt(cc.cpu / 1e3) or "–")) or "not measured"
    end
    p("| start-up CPU ≤ 1.2x the interpreter with libcurl loaded | ", cells[1], " | ", cells[2], " |")
    for i = 1, 2 do
      local r = startup_ir[LUAS[i].tag]
      cells[i] = (r and r.ours and r.floor) and ("%.2fx: %s (%.1f M against %.1f M)"):format(r.ours / r.floor,
        verdict(r.ours / r.floor <= 1.2), r.ours / 1e6, r.floor / 1e6) or "not measured (valgrind is not installed)"
    end
    p("| start-up instructions (callgrind) ≤ 1.2x the same floor | ", cells[1], " | ", cells[2], " |")
  end
end
if #lost > 0 then
  p("")
  p("**Lost data or failed requests:**")
  for _, l in ipairs(lost) do p("- ", l) end
end

local text = table.concat(out, "\n") .. "\n"
io.write(text)
local f = io.open(outfile, "w")
if f then f:write(text); f:close() end
for _, c in ipairs(cases) do
  local s = summary(c, "llamacpp 5.4")
  if c.kind == "mem" and s and s.samples then
    io.write("\nRSS (kB) along the mem stream, llamacpp 5.4, thousands of events:RSS: ", s.samples, "\n")
  end
end
os.exit(#lost == 0 and 0 or 1)
