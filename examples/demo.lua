-- make demo: a REPLAY, not a live model. Starts the project's fixture
-- server on 127.0.0.1, which sends a llama-server reply recorded byte for
-- byte (spec/fixtures/speed_stream_512.response) at a model's pace, and
-- streams it through the real client, exactly as examples/chat.lua does.
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. root .. "/spec/?.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"
local fixture = require "fixture.control"

local srv = fixture.start()
local endpoint = srv:replay("speed_stream_512", "pace=" .. (os.getenv("LLAMACPP_DEMO_PACE") or "8"))
io.write(([[
=== REPLAY: not a live model ===
A llama-server reply recorded byte for byte (spec/fixtures/speed_stream_512.response;
a tiny random-weight test model, so the text is gibberish) is served by a local
fixture server at %s and streamed through the real client.
=================================

]]):format(srv.url))

local client = llamacpp.new{ endpoint = endpoint }
local ok = true
for ev in client:chat_stream{ messages = { { role = "user", content = "Hello" } } } do
  if ev.type == "content" then io.write(ev.content); io.stdout:flush()
  elseif ev.type == "done" then
    io.write(("\n\n[%s: %d prompt + %d generated tokens; replayed]\n"):format(
      ev.stop_reason, ev.usage.input_tokens, ev.usage.output_tokens))
  elseif ev.type == "error" then
    io.stderr:write("\n", tostring(ev.error), "\n")
    ok = false
  end
end
srv:stop()
os.exit(ok and 0 or 1)
