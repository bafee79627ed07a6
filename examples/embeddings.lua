-- Nearest neighbour over a few sentences with llama-server's embeddings.
--   lua5.4 examples/embeddings.lua ["a query"]
-- Needs llama-server started with --embeddings (and an embedding model).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }
local sentences = {
  "The cat sleeps on the warm windowsill.",
  "Stock markets fell sharply on Monday.",
  "Lua is a small, fast scripting language.",
  "A kitten naps in the sun.",
}
local query = arg and arg[1] or "Which one is about a sleeping pet?"

local inputs = { query }
for i, s in ipairs(sentences) do inputs[i + 1] = s end
local res, err = client:embeddings(inputs)
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

if #res.embeddings ~= #inputs then
  io.stderr:write(("asked for %d embeddings, got %d\n"):format(#inputs, #res.embeddings))
  os.exit(1)
end

local function cosine(a, b)
  local dot, na, nb = 0, 0, 0
  for i = 1, #a do
    dot, na, nb = dot + a[i] * b[i], na + a[i] * a[i], nb + b[i] * b[i]
  end
  return dot / math.sqrt(na * nb)
end

local q = res.embeddings[1]
local best, best_score = nil, -2
print("query: " .. query)
for i, s in ipairs(sentences) do
  local score = cosine(q, res.embeddings[i + 1])
  print(("  %.4f  %s"):format(score, s))
  if score > best_score then best, best_score = s, score end
end
print("nearest: " .. best)
