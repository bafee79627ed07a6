-- Streams a chat answer from llama-server.
--   lua5.4 examples/chat.lua ["your prompt"]
-- The server: LLAMACPP_ENDPOINT (default http://127.0.0.1:8080; a server
-- started with --host /run/llama.sock: unix:/run/llama.sock), with
-- LLAMA_API_KEY if it was started with --api-key. While the server reads
-- a long prompt, a progress line on stderr; at the end, the stats line.

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

-- "[stop: 26 prompt (20 cached) + 16 generated tokens, 52 tokens/s, first token 0.3 s, 0.6 s]"
local function stats_line(ev)
  local st = ev.stats or {}
  local parts = { string.format("%s prompt", tostring(st.input_tokens)) }
  if st.cached_tokens and st.cached_tokens > 0 then
    parts[1] = parts[1] .. string.format(" (%d cached)", st.cached_tokens)
  end
  parts[1] = parts[1] .. string.format(" + %s generated tokens", tostring(st.output_tokens))
  if st.generation_tokens_per_s then parts[#parts + 1] = string.format("%.0f tokens/s", st.generation_tokens_per_s) end
  if st.first_token_ms then parts[#parts + 1] = string.format("first token %.1f s", st.first_token_ms / 1000) end
  parts[#parts + 1] = string.format("%.1f s", st.total_ms / 1000)
  io.write(string.format("\n\n[%s: %s]\n", tostring(ev.stop_reason), table.concat(parts, ", ")))
end

-- One line, rewritten in place, while llama-server reads a long prompt.
local progress_shown = false
local function progress(ev)
  if not (ev.total and ev.total > 0) then return end
  io.stderr:write(string.format("\rreading prompt %d/%d (%d%% cached)", ev.processed, ev.total,
                                math.floor(100 * (ev.cached or 0) / ev.total)))
  progress_shown = true
end
local function end_progress()
  if progress_shown then io.stderr:write("\r\27[K") end
  progress_shown = false
end

for ev in client:chat_stream{ system = "You are concise.", messages = { { role = "user", content = prompt } },
                              max_tokens = tonumber(os.getenv("MAX_TOKENS")) or 512, progress = true } do
  if ev.type == "progress" then progress(ev)
  elseif ev.type == "reasoning" then end_progress(); io.write("\27[2m", ev.content, "\27[0m")
  elseif ev.type == "content" then end_progress(); io.write(ev.content)
  elseif ev.type == "done" then end_progress(); stats_line(ev)
  elseif ev.type == "error" then
    end_progress()
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
