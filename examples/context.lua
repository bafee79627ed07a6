-- How much of the context window a conversation uses: the window of a slot
-- (llama-server's /props), the exact size of a request (counted by the
-- server without running it), and what is left for the answer.
--   lua5.4 examples/context.lua ["your prompt"]
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
local req = { system = "You are concise.",
              messages = { { role = "user", content = arg and arg[1] or "Write a haiku about Lua." } },
              max_tokens = 256 }
local used = check(c:count_tokens(req))
print(string.format("window %d tokens; this request %d; left for the answer %d (max_tokens %d)",
                    window, used, window - used, req.max_tokens))
if used + req.max_tokens > window then
  print("too long: drop old turns before sending it")
  os.exit(2)
end
local res = check(c:chat(req))
print(res.content)
print(string.format("[the server read %d prompt tokens]", res.usage.input_tokens))
