-- Shared helpers for the specs: reading captures, an independent decoding
-- of their streams (the oracle the client is checked against), free ports.
local cjson = require "cjson"
local socket = require "socket"

local M = {}

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function M.fixture(name)
  return M.read("spec/fixtures/" .. name .. ".response")
end

-- The body of a raw HTTP response, de-chunked when chunked.
function M.body(raw)
  local head, body = raw:match("^(.-\r\n)\r\n(.*)$")
  if not head:lower():find("transfer%-encoding: chunked") then return body end
  local out, i = {}, 1
  while true do
    local size, j = body:match("^(%x+)[^\r\n]*\r\n()", i)
    size = tonumber(size, 16)
    if not size or size == 0 then break end
    out[#out + 1] = body:sub(j, j + size - 1)
    i = j + size + 2
  end
  return table.concat(out)
end

-- What a stream capture holds, read with plain patterns and cjson:
-- content, reasoning, finish reason, usage, whether it ends with [DONE].
function M.expected(name)
  local body = M.body(M.fixture(name))
  local r = { content = {}, ncontent = 0, done = false }
  for data in body:gmatch("data: ([^\n]*)\n\n") do
    if data == "[DONE]" then r.done = true
    else
      local o = cjson.decode(data)
      local c = o.choices and o.choices[1]
      if c and type(c.delta) == "table" and type(c.delta.content) == "string"
         and c.delta.content ~= "" then
        r.content[#r.content + 1] = c.delta.content
        r.ncontent = r.ncontent + 1
      end
      if c and type(c.finish_reason) == "string" then r.finish = c.finish_reason end
      if type(o.usage) == "table" then r.usage = o.usage end
    end
  end
  r.content = table.concat(r.content)
  return r
end

-- A port nothing listens on (bound, then closed).
function M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- The interpreter running the tests ($LLAMACPP_TEST_LUA, else luajit or
-- lua5.x), for child processes: the test kit's own choice.
M.lua = require("llamacpp.testing").interpreter

-- A URL where nothing listens.
function M.down()
  return "http://127.0.0.1:" .. M.closed_port()
end

-- The text of a list of events of one type (default "content"), joined.
function M.text_of(evs, kind)
  local out = {}
  for _, ev in ipairs(evs) do
    if ev.type == (kind or "content") then out[#out + 1] = ev.content end
  end
  return table.concat(out)
end

-- The seq of srv's last log record (0: none), for srv:log(since) and
-- srv:requests(since) later. Not #srv:log(): records of the connections
-- that poll the log are left out of it, so seqs have gaps.
function M.last_seq(srv)
  local l = srv:log()
  return l[#l] and l[#l].seq or 0
end

-- How many requests the fixture server srv logged with `part` in the path
-- (and, when given, this method, after log entry `since`).
function M.hits(srv, part, method, since)
  local n = 0
  for _, r in ipairs(srv:requests(since)) do
    if r.path:find(part, 1, true) and (method == nil or r.method == method) then n = n + 1 end
  end
  return n
end

-- Collects every event of a stream iterator.
function M.collect(iter, state, ctl, closing)
  local evs = {}
  for ev in iter, state, ctl, closing do evs[#evs + 1] = ev end
  return evs
end

function M.sleep(s) socket.sleep(s) end

-- Waits until something accepts connections on 127.0.0.1:port (a server
-- started in the background); true, or false after `seconds`.
function M.wait_listening(port, seconds)
  local deadline = socket.gettime() + seconds
  while true do
    local c = socket.connect("127.0.0.1", port)
    if c then
      c:close()
      return true
    end
    if socket.gettime() > deadline then return false end
    socket.sleep(0.05)
  end
end

-- The field of an error whose text holds `secret` ("tostring" for the
-- error's own line), or nil: nothing secret in it.
function M.secret_in(err, secret)
  for k, v in pairs(err) do
    if tostring(v):find(secret, 1, true) then return k end
  end
  if tostring(err):find(secret, 1, true) then return "tostring" end
end

-- The first lines of a child script: this tree's llamacpp and the core
-- built for this Lua (busted's cpath comes first), whatever LUA_PATH says.
function M.child_head()
  return ("package.path = %q .. package.path\npackage.cpath = %q .. package.cpath\n"):format(
    "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;", package.cpath:match("^[^;]*") .. ";")
end

-- A command prefix that runs a child without the caller's settings: the
-- endpoints, keys, hosts and limits the examples read (a user's real
-- ANTHROPIC_API_KEY must not send a spec's prompt to the Internet), proxies,
-- and Lua's own search paths and init code.
local UNSET = { "LLAMACPP_ENDPOINT", "LLAMA_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL",
                "OPENAI_API_KEY", "OLLAMA_HOST", "OLLAMA_MODEL", "MAX_TOKENS",
                "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "no_proxy", "NO_PROXY", "LUA_PATH", "LUA_CPATH", "LUA_INIT",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR" }
for _, v in ipairs { "5_1", "5_2", "5_3", "5_4" } do
  for _, n in ipairs { "LUA_PATH_", "LUA_CPATH_", "LUA_INIT_" } do UNSET[#UNSET + 1] = n .. v end
end
M.CLEAN_ENV = "env -u " .. table.concat(UNSET, " -u ")

-- Starts the Lua code `code` in a child process (M.lua(), with
-- M.child_head() first), killed after `limit` seconds (default 60)
-- whatever happens: a hang guard, not a measure; `env` (optional) sets
-- variables for it. Returns a function that waits for the child and
-- returns what it wrote on stdout and stderr.
function M.spawn(code, limit, env)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(M.child_head(), code)
  f:close()
  local vars = {}
  for k, v in pairs(env or {}) do vars[#vars + 1] = k .. "='" .. v .. "'" end
  table.sort(vars)
  local p = assert(io.popen("exec " .. M.CLEAN_ENV .. " " .. table.concat(vars, " ") .. " timeout -k 5 " ..
                            tostring(limit or 60) .. " " .. M.lua() .. " " .. script .. " 2>&1", "r"))
  return function()
    local out = p:read("*a")
    p:close()
    os.remove(script)
    return out
  end
end

return M
