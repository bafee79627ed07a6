-- Streams an answer through a router: a local llama-server tier, and a
-- fallback tier used only when the local one cannot answer (not running,
-- loading, overloaded) before its first token. Prints who answered.
--   lua5.4 examples/router.lua ["your prompt"]
-- The local tier: LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), with
-- LLAMA_API_KEY if llama-server was started with --api-key.
-- The fallback tier: Anthropic when ANTHROPIC_API_KEY is set (model
-- ANTHROPIC_MODEL), else Ollama at OLLAMA_HOST (default
-- http://127.0.0.1:11434, model OLLAMA_MODEL, default llama3.2).

-- Run from a checkout: prefer its build tree (make / make LUA=luajit).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local router = require "llamacpp.router"

local fallback
if os.getenv("ANTHROPIC_API_KEY") then
  fallback = { provider = "anthropic", api_key = os.getenv("ANTHROPIC_API_KEY"),
               model = os.getenv("ANTHROPIC_MODEL") or "claude-sonnet-4-20250514" }
else
  fallback = { provider = "ollama", endpoint = os.getenv("OLLAMA_HOST") or "http://127.0.0.1:11434",
               model = os.getenv("OLLAMA_MODEL") or "llama3.2" }
end

-- The original plan's configuration shape: each model is a tier.
local r = router.from_config{
  models = {
    ["local"] = { provider = "llamacpp",
                  endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                  auth_token = os.getenv("LLAMA_API_KEY"),
                  fallback = "fallback" },       -- the tier to fall back to
    fallback = fallback,
  },
  default = "local",
  retries = 1,                                  -- one more pass after a failed one
  backoff = { base = 0.25, max = 2 },           -- seconds, full jitter; Retry-After wins
}

local prompt = arg and arg[1] or "Write a haiku about Lua."
local who
for ev in r:chat_stream{ system = "You are concise.", messages = { { role = "user", content = prompt } },
                         max_tokens = tonumber(os.getenv("MAX_TOKENS")) or 512 } do
  if ev.provider ~= who and ev.type ~= "error" then
    who = ev.provider
    io.stderr:write("[answered by ", who, "]\n")
  end
  if ev.type == "reasoning" then io.write("\27[2m", ev.content, "\27[0m")
  elseif ev.type == "content" then io.write(ev.content)
  elseif ev.type == "done" then
    local u = ev.usage or {}
    io.write(string.format("\n\n[%s via %s (%s at %s, tier %s): %s prompt + %s generated tokens]\n",
      tostring(ev.stop_reason), ev.provider, ev.provider_type, ev.endpoint, ev.tier,
      tostring(u.input_tokens), tostring(u.output_tokens)))
    for _, a in ipairs(ev.attempts) do
      io.stderr:write("  (first tried ", a.provider, ": ", a.error.message, ")\n")
    end
  elseif ev.type == "error" then
    local err = ev.error
    io.stderr:write("\n", tostring(err), "\n")
    os.exit(1)
  end
  io.stdout:flush()
end
