--- Shared bits of the bench clients: RESULT lines and percentiles.
local M = {}

--- Prints "RESULT k=v ..." (sorted keys) on stdout.
function M.result(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "number" and v == math.floor(v) and math.abs(v) < 2^53 then
      v = string.format("%d", v)
    elseif type(v) == "number" then
      v = string.format("%.3f", v)
    end
    out[#out + 1] = k .. "=" .. tostring(v)
  end
  io.write("RESULT ", table.concat(out, " "), "\n")
end

--- p in [0, 1] of a list of numbers (sorts it).
function M.pct(list, p)
  if #list == 0 then return -1 end
  table.sort(list)
  return list[math.floor((#list - 1) * p) + 1]
end

return M
