-- A conversation kept inside the context window: the window of a slot
-- (llama-server's /props), and before each turn the history fitted to it
-- (client:fit: counted by the server, the oldest turns left out).
--   lua5.4 examples/context.lua ["first prompt" "second prompt" ...]
-- LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), LLAMA_API_KEY if the
-- server was started with --api-key, LLAMACPP_MODEL on a router-mode server.

-- Run from a checkout: prefer its build tree (make / make LUA=luajit).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local c = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                        api_key = os.getenv("LLAMA_API_KEY"), model = os.getenv("LLAMACPP_MODEL") }

local function check(x, err)
  if x == nil then
    io.stderr:write(tostring(err), "\n")
    os.exit(1)
  end
  return x
end

local window = check(c:context_size())
print(string.format("window: %d tokens per slot", window))

-- Each argument is a turn of one conversation. The whole history is kept
-- here; what is sent is fitted to the window (oldest turns dropped, the
-- system prompt and the question kept), counted by the server.
local history = {}
local prompts = arg and #arg > 0 and arg or { "Write a haiku about Lua.", "Another, about C." }
for _, prompt in ipairs(prompts) do
  history[#history + 1] = { role = "user", content = prompt }
  local req = { system = "You are concise.", messages = history, max_tokens = 64 }
  local fitted, info = c:fit(req)
  check(fitted, info)
  print(string.format("[sending %d tokens of %d budget; %d of %d messages left out]",
                      info.input_tokens, info.budget, info.dropped, #history))
  local res = check(c:chat(fitted))
  print(res.content)
  history[#history + 1] = { role = "assistant", content = res.content }
end
