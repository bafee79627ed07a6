-- One prompt fanned out to several requests on one client (one libcurl
-- multi handle, one thread); answers are printed as they finish.
--   lua5.4 examples/parallel.lua ["prompt"] [n]
-- llama-server serves them in parallel up to its --parallel (-np) slots.
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }
local prompt = arg and arg[1] or "Name a colour."
local n = tonumber(arg and arg[2]) or 4

local streams, texts, left = {}, {}, n
for i = 1, n do
  local s = client:open_stream{ messages = { { role = "user", content = prompt } },
                                seed = i, max_tokens = 64 }
  streams[s], texts[i] = i, {}
end
local failed = false
while left > 0 do
  for _, s in ipairs(client:poll(1000)) do
    local i = streams[s]
    local ev = s:next(0)
    while ev do
      if ev.type == "content" then texts[i][#texts[i] + 1] = ev.content
      elseif ev.type == "done" then
        print(("[%d] %s"):format(i, table.concat(texts[i])))
        left = left - 1
      elseif ev.type == "error" then
        io.stderr:write(("[%d] %s\n"):format(i, tostring(ev.error)))
        left, failed = left - 1, true
      end
      ev = s:next(0)
    end
  end
end
os.exit(failed and 1 or 0)
