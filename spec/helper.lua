-- Loaded by busted before the specs (.busted: helper).
local ok, err = pcall(require, "llamacpp.core")
if not ok then
  error("llamacpp.core did not load; build it first (make, or make LUA=luajit): " .. tostring(err), 0)
end
