--- The prompt cache across servers (issue 18): what each balancing strategy
-- of llamacpp.router costs the servers in prompt evaluation.
--   lua5.4 bench/affinity.lua [--servers K] [--conversations C] [--turns T]
--     [--slots S] [--concurrency N] [--per-token SECONDS] [--system-words W]
--     [--turn-words W] [--answer-words W] [--smoke]
-- Run from the top of the tree after `make all` (mk/bench.mk does both).
--
-- K fake llama-servers that cache prompts as llama-server does
-- (llamacpp.testing's cache mode: S slots each, a slot chosen by the
-- longest common prefix, else least recently used; an answer waits
-- per_token x the prompt units it evaluates before its first byte) serve
-- C conversations of T turns. Each conversation has its own system prompt
-- (W words); each turn appends the previous answer and a new user message
-- (W words) to its history and sends the whole history. The same traffic
-- goes through a router tier of the K servers with each strategy:
-- round_robin, least_busy, affinity with `session` = the conversation's
-- id, and affinity without it (the key hashed from the request's prefix).
-- With --concurrency N > 1, N conversations are in flight at once, driven
-- by llamacpp.uv's router_stream on luv; else one request at a time
-- (router:chat_stream), the conversations taking turns in a seeded
-- pseudo-random order (the same for every row).
--
-- Printed per strategy (never asserted; exit 1 only when a request failed
-- or a case could not run):
--   evaluated  the prompt units (tokens on real servers) all servers
--              evaluated: the sum of timings.prompt_n over every answer
--   ideal      each conversation's history evaluated once: the sum over
--              conversations of the prompt length of its last turn, less
--              the units of the answers in it (generated into the cache,
--              never evaluated); what one server with a slot per
--              conversation would evaluate
--   ratio      evaluated / ideal (goal for affinity: <= 1.1; round robin
--              comes near K)
--   cached     cache_n / prompt tokens over all answers
--   ttft       mean and p90 time to first token (ms), the client's clock
--   spread     max / mean requests per server
--
-- Real llama-servers: LLAMACPP_BENCH_SERVERS="http://a:8080,http://b:8080"
-- runs the same against them instead of the fakes (their caches are not
-- reset between rows: each row's prompts start with a word of their own,
-- so one row cannot profit from another's; --per-token does not apply).
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath

local socket = require "socket"
local testing = require "llamacpp.testing"
local router_mod = require "llamacpp.router"

local USAGE = "usage: affinity.lua [--servers K] [--conversations C] [--turns T] [--slots S]" ..
  " [--concurrency N] [--per-token SECONDS] [--system-words W] [--turn-words W]" ..
  " [--answer-words W] [--smoke]"

local o = { servers = 3, conversations = 12, turns = 6, slots = 4, concurrency = 1,
            per_token = 0.0002, system_words = 300, turn_words = 40, answer_words = 20 }
do
  local names = { ["--servers"] = "servers", ["--conversations"] = "conversations",
                  ["--turns"] = "turns", ["--slots"] = "slots", ["--concurrency"] = "concurrency",
                  ["--per-token"] = "per_token", ["--system-words"] = "system_words",
                  ["--turn-words"] = "turn_words", ["--answer-words"] = "answer_words" }
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--smoke" then
      o.servers, o.conversations, o.turns, o.system_words, o.turn_words = 2, 4, 3, 60, 10
      o.per_token = 0.0001
      i = i + 1
    elseif names[a] and tonumber(arg[i + 1]) and tonumber(arg[i + 1]) >= 0 then
      o[names[a]] = tonumber(arg[i + 1])
      i = i + 2
    else
      io.stderr:write(USAGE, "\n")
      os.exit(2)
    end
  end
  for _, k in ipairs({ "servers", "conversations", "turns", "slots", "concurrency" }) do
    if o[k] < 1 or o[k] ~= math.floor(o[k]) then
      io.stderr:write("affinity.lua: --", k, " must be a whole number >= 1\n")
      os.exit(2)
    end
  end
end

local real = os.getenv("LLAMACPP_BENCH_SERVERS")
if real == "" then real = nil end
local failed = {}

local function words(prefix, n)
  local out = {}
  for i = 1, n do out[i] = prefix .. i end
  return table.concat(out, " ")
end

-- {====== the servers ======

-- K servers: {endpoints, totals() (nil on real servers), stop()}.
local function start_servers()
  if real then
    local list = {}
    for e in real:gmatch("[^,%s]+") do list[#list + 1] = e end
    return { endpoints = list, stop = function() end }
  end
  local fakes, list = {}, {}
  for i = 1, o.servers do
    fakes[i] = testing.start{ cache = { slots = o.slots, per_token = o.per_token, words = o.answer_words },
                              quiet = false }
    list[i] = fakes[i].endpoint
  end
  return {
    endpoints = list,
    -- the servers' own count of what they evaluated, to check the client's
    totals = function()
      local t = { prompt_n = 0, answers = 0, per = {} }
      for i, f in ipairs(fakes) do
        local x = f:cache_totals()
        t.prompt_n, t.answers, t.per[i] = t.prompt_n + x.prompt_n, t.answers + x.answers, x.answers
      end
      return t
    end,
    stop = function() for _, f in ipairs(fakes) do f:stop() end end,
  }
end

-- }======

-- {====== one row ======

-- The conversations of a row: a system prompt of their own, a first turn.
local function conversations(row)
  local list = {}
  for c = 1, o.conversations do
    list[c] = { id = "conv-" .. c, turn = 0, answers = 0, last_prompt = 0,
                system = row .. "-c" .. c .. ": " .. words("s" .. c .. "w", o.system_words),
                messages = {} }
  end
  return list
end

-- The next request of a conversation: its history and a new user message.
local function next_request(cv, with_session)
  cv.turn = cv.turn + 1
  cv.messages[#cv.messages + 1] = { role = "user",
                                    content = words("t" .. cv.turn .. "w", o.turn_words) }
  local req = { system = cv.system, messages = cv.messages, max_tokens = o.answer_words + 4 }
  if real then req.temperature, req.seed = 0, 1 end
  if with_session then req.session = cv.id end
  return req
end

-- Records a turn's answer (a done event) into the conversation and the row.
local function record(st, cv, done, t0)
  cv.messages[#cv.messages + 1] = { role = "assistant", content = done.content or "" }
  local t, u, s = done.timings or {}, done.usage or {}, done.stats or {}
  st.prompt_n = st.prompt_n + (t.prompt_n or 0)
  st.cache_n = st.cache_n + (t.cache_n or s.cached_tokens or 0)
  st.prompt_tokens = st.prompt_tokens + (u.input_tokens or 0)
  st.ttft[#st.ttft + 1] = s.first_token_ms or (socket.gettime() - t0) * 1000
  st.per[done.provider or "?"] = (st.per[done.provider or "?"] or 0) + 1
  st.requests = st.requests + 1
  if cv.turn == o.turns then
    -- the ideal: the last prompt less the answers' units (generated, not evaluated)
    st.ideal = st.ideal + (u.input_tokens or 0) - cv.answers
  end
  cv.answers = cv.answers + (u.output_tokens or 0)
end

local function new_stats()
  return { prompt_n = 0, cache_n = 0, prompt_tokens = 0, ideal = 0, ttft = {}, per = {},
           requests = 0, errors = 0 }
end

-- The order in which conversations speak: a seeded pseudo-random pick
-- (Park-Miller) among those with turns left, the same for every row.
-- Not turn by turn in lockstep: with C a multiple of K, round robin would
-- then send each conversation to the same server every time.
local function speaker_order()
  local left, order, x = {}, {}, 12345
  for c = 1, o.conversations do left[c] = o.turns end
  local alive = o.conversations
  while alive > 0 do
    x = (x * 16807) % 2147483647
    local pick = x % alive
    for c = 1, o.conversations do
      if left[c] > 0 then
        if pick == 0 then
          order[#order + 1] = c
          left[c] = left[c] - 1
          if left[c] == 0 then alive = alive - 1 end
          break
        end
        pick = pick - 1
      end
    end
  end
  return order
end

-- One request at a time, the conversations in speaker_order().
local function run_sequential(router, convs, with_session, st)
  for _, c in ipairs(speaker_order()) do
    local cv = convs[c]
    local req = next_request(cv, with_session)
    local t0 = socket.gettime()
    local done
    for ev in router:chat_stream(req) do
      if ev.type == "done" or ev.type == "error" then done = ev end
    end
    if not done or done.type ~= "done" then
      st.errors = st.errors + 1
      st.last_error = done and tostring(done.error) or "no end event"
      return
    end
    record(st, cv, done, t0)
  end
end

-- N conversations in flight on a luv loop (llamacpp.uv.router_stream): a
-- conversation's next turn starts when its answer is in; a free place
-- takes the next conversation that has turns left.
local function run_concurrent(router, convs, with_session, st)
  local uv = require "luv"
  local luv = require "llamacpp.uv"
  local queue, qi, inflight = {}, 1, 0
  for i = 1, #convs do queue[i] = convs[i] end
  local start
  start = function(cv)
    inflight = inflight + 1
    local req = next_request(cv, with_session)
    local t0 = socket.gettime()
    luv.router_stream(router, req, function(ev)
      if ev.type ~= "done" and ev.type ~= "error" then return end
      inflight = inflight - 1
      if ev.type == "error" then
        st.errors = st.errors + 1
        st.last_error = tostring(ev.error)
      else
        record(st, cv, ev, t0)
        if cv.turn < o.turns then queue[#queue + 1] = cv end
      end
      while inflight < o.concurrency and queue[qi] and st.errors == 0 do
        qi = qi + 1
        start(queue[qi - 1])
      end
    end, { uv = uv })
  end
  while inflight < o.concurrency and queue[qi] do
    qi = qi + 1
    start(queue[qi - 1])
  end
  uv.run("default")
end

-- A row: fresh servers, a router tier over them with `strategy`.
local function run_row(label, strategy, with_session, rowtag)
  local servers = start_servers()
  local tier = { strategy = strategy }
  for i, e in ipairs(servers.endpoints) do
    tier[i] = { provider = "llamacpp", endpoint = e, name = "s" .. i }
  end
  local ok, router = pcall(router_mod.new, { tiers = { pool = tier }, default_tier = "pool", retries = 0 })
  if not ok then
    servers.stop()
    return { label = label, unavailable = tostring(router) }
  end
  local st = new_stats()
  local convs = conversations(rowtag)
  local t0 = socket.gettime()
  if o.concurrency > 1 then
    run_concurrent(router, convs, with_session, st)
  else
    run_sequential(router, convs, with_session, st)
  end
  st.wall = socket.gettime() - t0
  st.label = label
  st.status = router:status()
  if servers.totals then st.server = servers.totals() end
  servers.stop()
  if st.errors > 0 then failed[#failed + 1] = label .. ": " .. tostring(st.last_error) end
  if st.server and st.errors == 0 and st.server.prompt_n ~= st.prompt_n then
    failed[#failed + 1] = label .. ": the servers counted " .. st.server.prompt_n ..
      " units evaluated, the client " .. st.prompt_n
  end
  return st
end

-- }======

-- {====== the table ======

local function mean(list)
  local s = 0
  for _, v in ipairs(list) do s = s + v end
  return #list > 0 and s / #list or 0
end

local function pct(list, p)
  local c = {}
  for i, v in ipairs(list) do c[i] = v end
  table.sort(c)
  return c[math.floor((#c - 1) * p) + 1] or 0
end

-- max / mean requests per server (servers that got none count as 0)
local function spread(st, k)
  local max, total = 0, 0
  for _, n in pairs(st.per) do
    total = total + n
    if n > max then max = n end
  end
  return total > 0 and max / (total / k) or 0
end

-- Counters of router:status() beyond the ones every strategy has (the
-- affinity ones, whatever their names), summed over the deployments.
local KNOWN = { name = true, provider = true, endpoint = true, model = true, inflight = true,
                failures = true, cooling = true, retry_after = true, healthy = true,
                health_error = true }
local function extra_counters(status)
  local sums, names = {}, {}
  for _, d in ipairs(status or {}) do
    for k, v in pairs(d) do
      if not KNOWN[k] and type(v) == "number" then
        if not sums[k] then names[#names + 1] = k end
        sums[k] = (sums[k] or 0) + v
      end
    end
  end
  table.sort(names)
  local out = {}
  for i, k in ipairs(names) do out[i] = k .. " " .. string.format("%g", sums[k]) end
  return table.concat(out, ", ")
end

local function per_server(st, k)
  local out = {}
  for i = 1, k do out[i] = tostring(st.per["s" .. i] or 0) end
  return table.concat(out, "/")
end

-- }======

local k = real and select(2, real:gsub("[^,%s]+", "")) or o.servers
print(("# Prompt cache across %d %s: %d conversations x %d turns, %s"):format(
  k, real and "real llama-servers" or ("fake llama-servers (" .. o.slots .. " slots each)"),
  o.conversations, o.turns,
  o.concurrency > 1 and (o.concurrency .. " in flight (llamacpp.uv on luv)") or "one request at a time"))
print(("system prompt %d words, each turn +%d words and the previous answer (%d words)%s"):format(
  o.system_words, o.turn_words, o.answer_words,
  real and "" or (", prompt evaluation " .. o.per_token * 1e6 .. " us per unit")))
print()

local rows = {
  { "round_robin", "round_robin", false },
  { "least_busy", "least_busy", false },
  { "affinity (session)", "affinity", true },
  { "affinity (prefix key)", "affinity", false },
}
-- Real servers keep their caches from row to row and run to run: a tag of
-- this run's in every system prompt. The fakes are fresh for each row, so
-- a fixed tag keeps their prefix keys (and the figures) the same every run.
local runtag = real and string.format("r%x", math.floor(socket.gettime() * 1000) % 0x100000) or "run"
local results = {}
for i, r in ipairs(rows) do
  results[i] = run_row(r[1], r[2], r[3], runtag .. "-" .. i)
end

print("| strategy | evaluated | ideal | ratio | cached | ttft mean ms | ttft p90 ms | requests per server" ..
      " | spread | wall s | router counters |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for _, st in ipairs(results) do
  if st.unavailable then
    print(("| %s | unavailable: %s |  |  |  |  |  |  |  |  |  |"):format(st.label,
      (st.unavailable:gsub("\n", " "):gsub("|", "/"))))
  elseif st.errors > 0 then
    print(("| %s | failed: %s |  |  |  |  |  |  |  |  |  |"):format(st.label, st.last_error))
  else
    print(("| %s | %d | %d | %.2fx | %.0f%% | %.1f | %.1f | %s | %.2f | %.1f | %s |"):format(
      st.label, st.prompt_n, st.ideal, st.ideal > 0 and st.prompt_n / st.ideal or 0,
      st.prompt_tokens > 0 and 100 * st.cache_n / st.prompt_tokens or 0,
      mean(st.ttft), pct(st.ttft, 0.9), per_server(st, k), spread(st, k), st.wall,
      extra_counters(st.status)))
  end
end
print()
print("evaluated: the sum of timings.prompt_n over every answer (prompt units the servers evaluated);")
print("ideal: the sum over conversations of the prompt length of its last turn less the answers in it")
print("(each conversation's history evaluated once); ratio = evaluated / ideal (affinity goal <= 1.1,")
print("round robin near the number of servers); cached = cache_n / prompt tokens; spread = max / mean")
print("requests per server. Figures printed, never asserted.")
print()
if real then
  print("real llama-servers: " .. real)
else
  local on_path = os.execute("command -v llama-server >/dev/null 2>&1")
  print("real llama-servers: skipped: LLAMACPP_BENCH_SERVERS is not set" ..
        ((on_path == true or on_path == 0) and " (llama-server is on PATH)" or " (no llama-server on PATH)") ..
        ". Start K llama-servers with a model (e.g. llama-server -m model.gguf --port 8081 -np 4),")
  print("then LLAMACPP_BENCH_SERVERS=http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083" ..
        " lua5.4 bench/affinity.lua")
end
if #failed > 0 then
  for _, f in ipairs(failed) do io.stderr:write("bench/affinity: ", f, "\n") end
  os.exit(1)
end
