-- A reply that survives a dropped connection, and a quit: the stream is
-- resumable, so a cut reattaches by itself, and the id and offset written
-- to a file as it goes let a new process go on where this one stopped.
--   lua5.4 examples/resume.lua ["your prompt"]   streams (STOP_AFTER=n: quit after n pieces)
--   lua5.4 examples/resume.lua --continue        goes on from the file
-- The server: LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), with
-- LLAMA_API_KEY if it was started with --api-key; it keeps a stream 300 s
-- after its end. The file: LLAMACPP_RESUME_FILE (default ./resume.state).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }
local state_file = os.getenv("LLAMACPP_RESUME_FILE") or "resume.state"
local stop_after = tonumber(os.getenv("STOP_AFTER"))

local function save(id, offset)
  local f = assert(io.open(state_file, "w"))
  f:write(id, " ", offset, "\n")
  f:close()
end

local stream
if arg[1] == "--continue" then
  local f = io.open(state_file, "r")
  local line = f and f:read("*l")
  if f then f:close() end
  local id, from = (line or ""):match("^(%S+) (%d+)$")
  if not id then
    io.stderr:write("nothing to continue: no stream in ", state_file, "\n")
    os.exit(1)
  end
  local _
  _, stream = client:resume_stream(id, { from = tonumber(from) })
else
  stream = client:open_stream{ messages = { { role = "user", content = arg[1] or "Tell me a long story." } },
                               max_tokens = tonumber(os.getenv("MAX_TOKENS")) or 512, resumable = true }
end

local pieces = 0
while true do
  local ev = stream:next()
  if ev == nil then break end
  if ev.type == "content" then
    io.write(ev.content)
    io.flush()
    pieces = pieces + 1
  end
  save(stream.conversation_id, stream:offset())
  if ev.type == "done" then
    io.write(ev.resumed > 0 and ("\n[resumed after " .. ev.resumed .. " cut(s)]\n") or "\n")
    os.remove(state_file)
  elseif ev.type == "error" then
    io.stderr:write("\n", tostring(ev.error), "\n")
    os.exit(1)
  end
  if stop_after and pieces >= stop_after then
    -- quit without close(): close would cancel the generation (DELETE)
    io.stderr:write("\n[stopped: lua examples/resume.lua --continue goes on]\n")
    os.exit(0)
  end
end
stream:close()
