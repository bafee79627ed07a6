--- llamacpp: a Lua client for llama.cpp's llama-server, on libcurl.
-- local llamacpp = require "llamacpp"
-- local client = llamacpp.new{ endpoint = "http://127.0.0.1:8080" }
local core = require "llamacpp.core"
local client = require "llamacpp.client"
local errors = require "llamacpp.errors"

local M = {
  _VERSION = "llamacpp " .. core.version,
  version = core.version,
  curl_version = core.curl_version,
  errors = errors,
  Error = errors.Error,
  json = require "llamacpp.json",
}

--- Creates a client: see DESIGN.md section 2 for the options.
M.new = client.new

--- The arguments of a tool call (from res.tool_calls or a done event) as
-- a table, or nil and a protocol Error when the model wrote invalid JSON.
function M.tool_arguments(call)
  if type(call) ~= "table" then
    error("bad argument #1 to 'tool_arguments' (table expected, got " .. type(call) .. ")", 2)
  end
  local text = call.arguments
  if type(text) == "table" then return text end       -- already decoded (Ollama)
  if text == nil or text:match("^%s*$") then return {} end
  local v, msg = M.json.decode(text)
  if type(v) ~= "table" then
    return nil, errors.new("protocol", "tool call '" .. tostring(call.name) ..
      "' has invalid JSON arguments: " .. tostring(msg or "not an object"),
      { code = "BAD_TOOL_ARGUMENTS", body = text:sub(1, 4096) })
  end
  return v
end

return M
