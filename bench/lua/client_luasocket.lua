--- What a pure-Lua user writes: LuaSocket, HTTP/1.1 chunked decoding and
-- SSE splitting in Lua, cjson.decode per event.
--   client_luasocket.lua stream ENDPOINT
local bu = require "benchutil"
local common = require "common"
local socket = require "socket"
local cjson = require "cjson"
local mode, endpoint = arg[1], arg[2]
local host, port, prefix = endpoint:match("^http://([^:/]+):(%d+)(.*)$")
local R = { client = "luasocket", mode = mode }
local decode, type, sub, find, tonumber = cjson.decode, type, string.sub, string.find, tonumber

assert(mode == "stream", "luasocket client: only 'stream'")
local body = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":16,' ..
             '"stream":true,"stream_options":{"include_usage":true}}'
local c0, t0 = bu.cpu_us(), bu.now_ns()
local sock = assert(socket.tcp())
assert(sock:connect(host, tonumber(port)))
sock:setoption("tcp-nodelay", true)
assert(sock:send("POST " .. prefix .. "/v1/chat/completions HTTP/1.1\r\nHost: " ..
                 host .. ":" .. port .. "\r\nContent-Type: application/json\r\n" ..
                 "Accept: text/event-stream\r\nContent-Length: " .. #body ..
                 "\r\n\r\n" .. body))
local status = assert(sock:receive("*l"))
assert(status:match("^HTTP/1%.1 200"), status)
local chunked = false
while true do
  local h = assert(sock:receive("*l"))
  if h == "" then break end
  if h:lower():match("^transfer%-encoding:%s*chunked") then chunked = true end
end
assert(chunked, "expected a chunked answer")

local events, bytes, want, wantev, done = 0, 0, -1, -1, false
local function on_event(ev)
  if sub(ev, 1, 6) ~= "data: " then return end
  local data = sub(ev, 7)
  if data == "[DONE]" then done = true return end
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

local buf = ""
while true do
  local size = tonumber(assert(sock:receive("*l")), 16)
  if size == 0 then assert(sock:receive("*l")) break end
  local data = assert(sock:receive(size))
  assert(sock:receive("*l"))
  if buf ~= "" then data = buf .. data end
  local pos = 1
  while true do
    local s, e = find(data, "\n\n", pos, true)
    if not s then break end
    on_event(sub(data, pos, s - 1))
    pos = e + 1
  end
  buf = pos > #data and "" or sub(data, pos)
end
sock:close()
R.cpu_us, R.wall_us = bu.cpu_us() - c0, (bu.now_ns() - t0) / 1e3
R.events, R.bytes, R.want_bytes, R.want_events = events, bytes, want, wantev
R.ok = (done and bytes == want and events == wantev) and 1 or 0
R.maxrss_kb = bu.maxrss_kb()
common.result(R)
os.exit(R.ok == 1 and 0 or 1)
