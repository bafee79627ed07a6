--- What every provider shares, so that a provider file holds only its
-- wire's differences: the request check, the fields passed through, the
-- small readers of decoded JSON and the answer's protocol error. The
-- provider interface itself is described in providers/llamacpp.lua.
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"

local M = {}

local type, pairs = type, pairs

--- v when it is a string, else nil (JSON null, numbers, tables).
function M.str(v) if type(v) == "string" then return v end end

M.int, M.ints = json.int, json.ints

-- Request fields that are ours, not the server's.
M.LOCAL_FIELDS = { system = true, messages = true, tier = true }

--- Checks the fields every provider reads; raises a positioned error
-- `level` frames up (default 4: the caller of client:chat, which calls
-- chat_body, which calls this).
function M.check_request(req, level)
  level = level or 4
  local msgs = req.messages
  if msgs == nil and req.system == nil then
    error("bad request: 'messages' is required", level)
  end
  if msgs ~= nil and type(msgs) ~= "table" then
    error("bad request: 'messages' must be a table (got " .. type(msgs) .. ")", level)
  end
  if req.system ~= nil and type(req.system) ~= "string" then
    error("bad request: 'system' must be a string (got " .. type(req.system) .. ")", level)
  end
end

--- The fields of req that pass through to the server as they are: all
-- but those in `skip` (and in `also`, when given). A new table.
function M.passed(req, skip, also)
  local body = {}
  for k, v in pairs(req) do
    if not skip[k] and not (also and also[k]) then body[k] = v end
  end
  return body
end

--- Header lines for an API key sent as `Authorization: Bearer <key>`.
function M.bearer(key)
  if key then return { "Authorization: Bearer " .. key } end
  return {}
end

--- The protocol Error of an answer without what the wire promises
-- (`message` says what is missing); nil, Error.
function M.bad_answer(message, obj)
  return nil, errors.new("protocol", message, { body = json.encode(obj):sub(1, 4096) })
end

--- A function mapping a wire's stop reason to the common one: map[r]
-- where the map has r (false: no stop reason), else r as it is; nil for
-- anything but a string.
function M.stop_reasons(map)
  return function(r)
    if type(r) ~= "string" then return nil end
    local m = map[r]
    if m == nil then return r end
    return m or nil
  end
end

return M
