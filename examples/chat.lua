-- Streams a chat answer from llama-server.
--   lua5.4 examples/chat.lua ["your prompt"]
-- The server: LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), with
-- LLAMA_API_KEY if it was started with --api-key.

-- Run from a checkout: prefer its build tree (make / make LUA=luajit).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080"
local client = llamacpp.new{ endpoint = endpoint, api_key = os.getenv("LLAMA_API_KEY") }
local prompt = arg and arg[1] or "Write a haiku about Lua."

local function stats(ev)
  local u, t = ev.usage or {}, ev.timings or {}
  local rate = t.predicted_per_second and string.format(", %.0f tokens/s", t.predicted_per_second) or ""
  io.write(string.format("\n\n[%s: %s prompt + %s generated tokens%s]\n", tostring(ev.stop_reason),
                         tostring(u.input_tokens), tostring(u.output_tokens), rate))
end

for ev in client:chat_stream{ system = "You are concise.", messages = { { role = "user", content = prompt } },
                              max_tokens = tonumber(os.getenv("MAX_TOKENS")) or 512 } do
  if ev.type == "reasoning" then io.write("\27[2m", ev.content, "\27[0m")
  elseif ev.type == "content" then io.write(ev.content)
  elseif ev.type == "done" then stats(ev)
  elseif ev.type == "error" then
    local err = ev.error
    io.stderr:write("\n", tostring(err), "\n")
    if err.kind == "connection" then
      io.stderr:write([[

Start llama-server first, for example:
  llama-server -m /path/to/model.gguf --host 127.0.0.1 --port 8080
or point LLAMACPP_ENDPOINT at a running one. To see this client stream a
recorded llama-server reply over loopback instead, run:  make demo
]])
    end
    os.exit(1)
  end
  io.stdout:flush()
end
