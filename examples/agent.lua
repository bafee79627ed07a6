-- A tool-using agent loop: the model may call local Lua functions; their
-- results go back to it until it answers in text (at most 6 turns).
--   lua5.4 examples/agent.lua ["What is 12.5 + 30, and what time is it?"]
-- Needs a model with tool calling (llama-server --jinja, the default).
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }

-- The local functions the model may call, with their JSON schemas.
local functions = {
  add = { description = "Add two numbers",
          parameters = { type = "object", required = { "a", "b" },
                         properties = { a = { type = "number" }, b = { type = "number" } } },
          run = function(args) return { sum = (tonumber(args.a) or 0) + (tonumber(args.b) or 0) } end },
  get_time = { description = "The current local date and time",
               parameters = { type = "object", properties = {} },
               run = function() return { time = os.date("%Y-%m-%d %H:%M:%S") } end },
}
local tools = {}
for name, f in pairs(functions) do
  tools[#tools + 1] = { type = "function",
    ["function"] = { name = name, description = f.description, parameters = f.parameters } }
end

local messages = { { role = "user", content = arg and arg[1] or "What is 12.5 + 30, and what time is it?" } }
for turn = 1, 6 do
  local res, err = client:chat{ system = "Use the tools when they help.", messages = messages,
                                tools = tools, max_tokens = 512 }
  if not res then
    io.stderr:write(tostring(err), "\n")
    os.exit(1)
  end
  if not res.tool_calls then
    print(res.content)
    os.exit(0)
  end
  -- the assistant's turn goes back with its calls, as results give them
  messages[#messages + 1] = { role = "assistant", content = res.content, tool_calls = res.tool_calls }
  for _, call in ipairs(res.tool_calls) do
    local f = functions[call.name]
    local args, aerr = llamacpp.tool_arguments(call)
    local result
    if not f then result = { error = "no such function: " .. tostring(call.name) }
    elseif not args then result = { error = aerr.message }
    else result = f.run(args) end
    print(("[turn %d] %s(%s) -> %s"):format(turn, tostring(call.name), call.arguments,
                                            llamacpp.json.encode(result)))
    messages[#messages + 1] = { role = "tool", tool_call_id = call.id, content = llamacpp.json.encode(result) }
  end
end
io.stderr:write("no answer after 6 turns\n")
os.exit(1)
