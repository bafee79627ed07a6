--- JSON for llamacpp: lua-cjson decodes; this module encodes.
-- Lua has one table type for JSON's two containers, and lua-cjson 2.1.0
-- (Debian's) writes every empty table as `{}`. Requests need `[]` for
-- `tools = {}`, `stop = {}`, `enum = {}`, so the encoder here writes an
-- empty table as an array when its key names a JSON array, or when it
-- carries the `json.array` marker, and as an object otherwise (or with
-- the `json.object` marker).
-- @module llamacpp.json
local cjson = require "cjson"

local M = {}

local decoder = cjson.new()   -- our own instance: no global settings shared
M.null = cjson.null

local array_mt = { __name = "llamacpp.json.array" }
local object_mt = { __name = "llamacpp.json.object" }

--- Marks `t` (default a new table) to be encoded as a JSON array.
function M.array(t) return setmetatable(t or {}, array_mt) end
--- Marks `t` (default a new table) to be encoded as a JSON object.
function M.object(t) return setmetatable(t or {}, object_mt) end

-- Keys whose values are JSON arrays in the APIs we speak: an empty table
-- under one of these is `[]`.
local ARRAY_KEYS = {
  messages = true, tools = true, stop = true, enum = true, required = true,
  tool_calls = true, content = true, input = true, input_extra = true,
  prefixItems = true, anyOf = true, oneOf = true, allOf = true,
  documents = true, tokens = true, images = true,
  stop_sequences = true, samplers = true, dry_sequence_breakers = true,
}

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\127"] = "\\u007f",
}
for i = 0, 31 do
  local c = string.char(i)
  if not escapes[c] then escapes[c] = string.format("\\u%04x", i) end
end

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', escapes) .. '"'
end

local floor, huge = math.floor, math.huge
local concat, sort, fmt, type, pairs, next = table.concat, table.sort, string.format, type, pairs, next

local function number(v)
  if v ~= v or v == huge or v == -huge then
    error("cannot encode " .. tostring(v) .. " as JSON", 0)
  end
  if v == floor(v) and v > -2^53 and v < 2^53 then return fmt("%d", v) end
  local s = fmt("%.14g", v)
  if tonumber(s) ~= v then s = fmt("%.17g", v) end
  return s
end

local encode_value

-- An array when the keys are exactly 1..n; n = 0 is decided by the caller.
local function arraylen(t)
  local n = #t
  local count = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= floor(k) then return nil end
    count = count + 1
  end
  if count ~= n then return nil end
  return n
end

local function encode_table(t, key, out, depth, sorted)
  if depth > 100 then error("cannot encode JSON nested deeper than 100", 0) end
  local mt = getmetatable(t)
  local empty = next(t) == nil
  local n
  if mt == array_mt then
    n = arraylen(t)
    if not n then error("json.array table has non-array keys", 0) end
  elseif mt == object_mt then
    n = nil
  elseif empty then
    n = ARRAY_KEYS[key] and 0 or nil
  else
    n = arraylen(t)
  end
  if n then
    out[#out + 1] = "["
    for i = 1, n do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[i], nil, out, depth + 1, sorted)
    end
    out[#out + 1] = "]"
    return
  end
  out[#out + 1] = "{"
  local keys, names = {}, {}       -- the keys, and their JSON names
  for k in pairs(t) do
    local tk = type(k)
    if tk ~= "number" and tk ~= "string" then
      error("cannot encode a " .. tk .. " key as JSON", 0)
    end
    keys[#keys + 1] = k
    names[k] = tk == "number" and number(k) or k
  end
  if sorted then sort(keys, function(x, y) return names[x] < names[y] end) end
  for i = 1, #keys do
    local k = keys[i]
    if i > 1 then out[#out + 1] = "," end
    out[#out + 1] = quote(names[k])
    out[#out + 1] = ":"
    encode_value(t[k], names[k], out, depth + 1, sorted)
  end
  out[#out + 1] = "}"
end

encode_value = function(v, key, out, depth, sorted)
  local tv = type(v)
  if tv == "string" then out[#out + 1] = quote(v)
  elseif tv == "number" then out[#out + 1] = number(v)
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif tv == "table" then encode_table(v, key, out, depth, sorted)
  elseif v == nil or v == cjson.null then out[#out + 1] = "null"
  else
    error("cannot encode a " .. tv .. " as JSON" ..
          (key and (" (key '" .. tostring(key) .. "')") or ""), 0)
  end
end

-- Whether lua-cjson writes v exactly as encode_value would: no empty or
-- marked table (the [] / {} question), arrays dense, object keys strings,
-- numbers that "%.14g" (cjson's format) keeps exact. Most request bodies
-- are; lua-cjson then does the work ten times faster.
local fmt14 = "%.14g"
local function cjson_safe(v, depth)
  local tv = type(v)
  if tv == "string" or tv == "boolean" then return true end
  if tv == "number" then
    if v ~= v or v == huge or v == -huge then return false end
    if v == floor(v) then return v > -1e14 and v < 1e14 end
    return tonumber(fmt(fmt14, v)) == v
  end
  if tv ~= "table" then return v == cjson.null end
  local mt = getmetatable(v)
  if depth > 100 or next(v) == nil or (mt ~= nil and mt ~= array_mt and mt ~= object_mt) then
    return false
  end
  local n = #v
  if mt == object_mt and n > 0 then return false end
  if n > 0 then
    local count = 0
    for k, x in pairs(v) do
      if type(k) ~= "number" or k < 1 or k > n or k ~= floor(k) or not cjson_safe(x, depth + 1) then
        return false
      end
      count = count + 1
    end
    return count == n
  end
  for k, x in pairs(v) do
    if type(k) ~= "string" or not cjson_safe(x, depth + 1) then return false end
  end
  return true
end

local encoder = cjson.new()
encoder.encode_keep_buffer(false)     -- no buffer kept between calls

--- Encodes a Lua value as JSON text. Raises on values JSON cannot hold
-- (functions, NaN, mixed tables).
function M.encode(v)
  if cjson_safe(v, 0) then return encoder.encode(v) end
  local out = {}
  encode_value(v, nil, out, 0)
  return concat(out)
end

--- The same JSON text for the same value in every process: `encode`
-- with each object's keys in sorted order (lua-cjson writes them in its
-- table's order, which differs from one process to the next). For
-- hashing, not for the wire.
function M.canonical(v)
  local out = {}
  encode_value(v, nil, out, 0, true)
  return concat(out)
end

--- lua-cjson decodes every number as a float: a count reads better as an
-- integer. `v` as an integer when it is integral, else unchanged.
function M.int(v)
  if type(v) == "number" and v == floor(v) then return floor(v) end
  return v
end

--- The same for every field of a table (in place); nil for a non-table.
function M.ints(t)
  if type(t) ~= "table" then return nil end
  for k, v in pairs(t) do t[k] = M.int(v) end
  return t
end

--- Decodes JSON text: `value` or `nil, message`. JSON null is `json.null`.
function M.decode(s)
  local ok, v = pcall(decoder.decode, s)
  if ok then return v end
  return nil, tostring(v)
end

return M
