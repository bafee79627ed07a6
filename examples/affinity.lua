-- Several conversations over several llama-servers, each conversation kept
-- on one server (its prompt cache) by the router's affinity strategy; then
-- what each server did: answers at home or away, prompt tokens from the
-- cache against those evaluated.
--   LLAMACPP_ENDPOINTS=http://10.0.0.2:8080,http://10.0.0.3:8080 lua5.4 examples/affinity.lua
-- LLAMACPP_ENDPOINTS: comma-separated (default http://127.0.0.1:8080),
-- with LLAMA_API_KEY if the servers were started with --api-key.

-- Run from a checkout: prefer its build tree (make / make LUA=luajit).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local router = require "llamacpp.router"

local tier = { strategy = "affinity" }
for ep in (os.getenv("LLAMACPP_ENDPOINTS") or "http://127.0.0.1:8080"):gmatch("[^,%s]+") do
  -- the name places the server on the ring: keep it when the address changes
  tier[#tier + 1] = { endpoint = ep, name = "server" .. (#tier + 1), api_key = os.getenv("LLAMA_API_KEY") }
end
local r = router.new{ tiers = { ["local"] = tier } }

local topics = { "the Lua language", "prime numbers", "the moon", "tea" }
local turns = { "Tell me one fact about %s.", "Another one.", "And a last one, in five words." }

for _, topic in ipairs(topics) do
  local history = { { role = "system", content = "You are concise: one sentence per answer." } }
  for t, ask in ipairs(turns) do
    history[#history + 1] = { role = "user", content = ask:format(topic) }
    -- session: this conversation's key (never sent); without it the key is
    -- the opening messages, which is the same here
    local res, err = r:chat{ messages = history, session = topic, max_tokens = 64 }
    if not res then
      io.stderr:write(tostring(err), "\n")
      os.exit(1)
    end
    history[#history + 1] = { role = "assistant", content = res.content }
    print(string.format("[%s, turn %d, %s] %s", topic, t, res.provider, res.content))
  end
end

print("\nserver    answered  home  away  cached  evaluated  (prompt tokens)")
for _, s in ipairs(r:status()) do
  print(string.format("%-9s %8d %5d %5d %7d %10d", s.name, s.answered, s.home, s.away,
                      s.cached_tokens, s.evaluated_tokens))
end
