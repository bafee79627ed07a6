-- An agent with two tools, a calculator and a file reader: the model calls
-- them, their results go back, until it answers (at most 6 requests).
--   lua5.4 examples/agent.lua ["How many lines has README.md, times 3?"]
-- Needs a model with tool calling (llama-server --jinja, the default).
-- Each call is shown on stderr as it runs; the answer streams to stdout.
local root = (arg and arg[0] or ""):match("^(.-)/?examples/[^/]*$") or "."
if root == "" then root = "." end
local v = type(jit) == "table" and "luajit" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. v .. "/?.so;" .. package.cpath

local llamacpp = require "llamacpp"

local client = llamacpp.new{ endpoint = os.getenv("LLAMACPP_ENDPOINT") or "http://127.0.0.1:8080",
                             api_key = os.getenv("LLAMA_API_KEY") }

-- Arithmetic on numbers only: digits, + - * / ^ % ( ) . and spaces.
local function calc(args)
  local e = args.expression
  if e:find("[^%d%s%.%+%-%*/%^%%%(%)eE]") then return nil, "only numbers and + - * / ^ % ( ) are allowed" end
  local f = (rawget(_G, "loadstring") or load)("return " .. e)   -- 5.1: loadstring
  local ok, value = pcall(f or error)
  if not ok or type(value) ~= "number" then return nil, "not an arithmetic expression: " .. e end
  return { value = value }
end

-- A file under the current directory: its first 4 KiB and its line count.
local function read_file(args)
  local path = args.path
  if path:find("^/") or path:find("%.%.") then return nil, "only files under the current directory" end
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  local _, lines = text:gsub("\n", "")
  return { lines = lines, bytes = #text, text = text:sub(1, 4096) }
end

local agent = llamacpp.agent{
  client = client,
  system = "Use the tools when they help. Answer briefly.",
  max_steps = 6,
  request = { max_tokens = 512 },
  tools = {
    calc = { description = "Evaluates an arithmetic expression such as (12.5 + 30) * 2",
             parameters = { type = "object", required = { "expression" },
                            properties = { expression = { type = "string" } } },
             run = calc },
    read_file = { description = "Reads a text file under the current directory",
                  parameters = { type = "object", required = { "path" },
                                 properties = { path = { type = "string", description = "a relative path" } } },
                  run = read_file },
  },
}

local question = arg and arg[1] or "How many lines has README.md, times 3?"
for ev in agent:stream(question) do
  if ev.type == "content" then
    io.write(ev.content)
    io.flush()
  elseif ev.type == "tool_start" then
    io.stderr:write(("[step %d] %s(%s)"):format(ev.step, ev.name, ev.arguments or ""))
  elseif ev.type == "tool_end" then
    io.stderr:write(ev.error and (" failed: " .. ev.error) or "", (" %.1f ms\n"):format(ev.ms))
  elseif ev.type == "done" then
    io.write("\n")
    io.stderr:write(("[%s after %d steps, %d tool calls (%d failed), %d+%d tokens]\n"):format(
      ev.stop_reason, #ev.steps, ev.tool_calls, ev.tool_errors,
      ev.stats.input_tokens or 0, ev.stats.output_tokens or 0))
    os.exit(ev.stop_reason == "max_steps" and 1 or 0)
  elseif ev.type == "error" then
    io.stderr:write(tostring(ev.error), "\n")
    os.exit(1)
  end
end
