-- Many models behind one llama-server (router mode): list them, load one,
-- ask each, unload.
--   lua5.4 examples/models.lua [model ...]
-- The server: llama-server --models-dir DIR (each GGUF in DIR is a model),
-- at LLAMACPP_ENDPOINT (default http://127.0.0.1:8080), with LLAMA_API_KEY
-- if it was started with --api-key. Without names, every model it lists.
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }

local function fail(err)
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

local list, lerr = client:models()
if not list then fail(lerr) end
local names = {}
for _, d in ipairs(list.data) do
  print(("%-24s %s"):format(d.id, d.state))
  names[#names + 1] = d.id
end
if arg and arg[1] then
  names = {}
  for i = 1, #arg do names[i] = arg[i] end
end

for _, name in ipairs(names) do
  -- loads it when it is unloaded, and waits until it is loaded (or failed)
  local ok, err = client:wait_ready{ model = name, timeout = 300 }
  if not ok then fail(err) end
  local res, cerr = client:chat{ model = name, max_tokens = 32,
                                 messages = { { role = "user", content = "Say hello in five words." } } }
  if not res then fail(cerr) end
  print(("[%s] %s"):format(name, res.content))
end

-- free the memory of the last one
local last = names[#names]
if last then
  local ok, err = client:unload_model(last)
  if not ok then fail(err) end
  print(("unloaded %s"):format(last))
end
