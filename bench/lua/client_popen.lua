--- What Neovim plugins do: io.popen of curl, split lines, cjson.decode.
--   client_popen.lua stream|seq ENDPOINT [N]
local bu = require "benchutil"
local common = require "common"
local cjson = require "cjson"
local mode, endpoint, n = arg[1], arg[2], tonumber(arg[3] or "0")
local url = endpoint .. "/v1/chat/completions"
local R = { client = "popen-curl", mode = mode }
local decode, type, sub = cjson.decode, type, string.sub

local function curl(body, stream)
  return io.popen("curl -s" .. (stream and "N" or "") ..
                  " --noproxy '*' -H 'Content-Type: application/json' -d '" ..
                  body .. "' " .. url)
end

if mode == "stream" then
  local events, bytes, want, wantev, done = 0, 0, -1, -1, false
  local c0, t0 = bu.cpu_us(), bu.now_ns()
  local f = curl('{"messages":[{"role":"user","content":"hi"}],"max_tokens":16,' ..
                 '"stream":true,"stream_options":{"include_usage":true}}', true)
  for line in f:lines() do
    if sub(line, 1, 6) == "data: " then
      local data = sub(line, 7)
      if data == "[DONE]" then done = true
      else
        local obj = decode(data)
        local ch = obj.choices[1]
        local d = ch and ch.delta
        local c = d and d.content
        if type(c) == "string" and c ~= "" then
          events = events + 1
          bytes = bytes + #c
        end
        if type(obj.usage) == "table" then
          want, wantev = obj.timings.bench_content_bytes, obj.timings.bench_events
        end
      end
    end
  end
  f:close()
  R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
  R.events, R.bytes, R.want_bytes, R.want_events = events, bytes, want, wantev
  R.ok = (done and bytes == want and events == wantev) and 1 or 0
elseif mode == "seq" then
  local bytes, want, failed = 0, 0, 0
  local c0, t0 = bu.cpu_us(), bu.now_ns()
  for _ = 1, n do
    local f = curl('{"messages":[{"role":"user","content":"hi"}],"max_tokens":16,' ..
                   '"stream":false}', false)
    local obj = decode(f:read("*a"))
    f:close()
    local c = obj.choices[1].message.content
    bytes, want = bytes + #c, want + obj.timings.bench_content_bytes
  end
  R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
  R.requests, R.failed, R.bytes, R.want_bytes = n, failed, bytes, want
  R.conns = n            -- one curl process, one connection, per request
  R.ok = (bytes == want) and 1 or 0
end
R.maxrss_kb = bu.maxrss_kb()       -- the Lua process; each curl child is apart
common.result(R)
os.exit(R.ok == 1 and 0 or 1)
