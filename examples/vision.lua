-- Describe an image file (or transcribe an audio file) with a model that
-- takes it: llama-server started with the model's projector, e.g.
--   llama-server -m gemma-3-4b-it.gguf --mmproj mmproj-gemma-3-4b-it.gguf
-- Usage:
--   lua5.4 examples/vision.lua cat.png ["What is in this picture?"]
--   lua5.4 examples/vision.lua note.wav "Transcribe this."
-- LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), LLAMA_API_KEY if the
-- server was started with --api-key, LLAMACPP_MODEL on a router-mode server.

-- Run from a checkout: prefer its build tree (make / make LUA=luajit).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local function check(x, err)
  if x == nil then
    io.stderr:write(tostring(err), "\n")
    os.exit(1)
  end
  return x
end

local path = arg and arg[1]
if not path then
  io.stderr:write("usage: vision.lua FILE [question]  (an image: PNG, JPEG, GIF, WebP, BMP; audio: WAV, MP3)\n")
  os.exit(2)
end

-- The file becomes a content part (base64 in the C core); its type comes
-- from its first bytes. An image first; if it is none, audio.
local part, err = llamacpp.image(path)
local audio = false
if not part and err.code == "UNKNOWN_MEDIA_TYPE" then
  part, err = llamacpp.audio(path)
  audio = true
end
check(part, err)

local question = arg[2] or (audio and "Transcribe this." or "Describe this image in one paragraph.")
local c = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                        api_key = os.getenv("LLAMA_API_KEY"), model = os.getenv("LLAMACPP_MODEL") }

-- Streamed; a model without a projector ends the stream with an error of
-- code "unsupported_media" that says what to start the server with.
for ev in c:chat_stream{ messages = { { role = "user", content = {
                           { type = "text", text = question }, part } } }, max_tokens = 512 } do
  if ev.type == "content" then
    io.write(ev.content)
    io.flush()
  elseif ev.type == "done" then
    io.write("\n")
  elseif ev.type == "error" then
    io.stderr:write(tostring(ev.error), "\n")
    os.exit(1)
  end
end
