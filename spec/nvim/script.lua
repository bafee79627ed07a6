-- What the scripts run in headless Neovim share (spec/nvim/driver.lua,
-- spec/nvim/plugin_driver.lua): the arguments (JSON in
-- $LLAMACPP_NVIM_ARGS), the result (JSON written to args.out, then :qa!),
-- a watchdog, and a script run as a coroutine resumed from Neovim's main
-- loop, so the loop turns between its steps as it would between a user's
-- keystrokes (not a vim.wait() nested in a command).
--
--   local S = dofile(root .. "/spec/nvim/script.lua")
--   local A, R = S.A, S.R
--   S.run(function() ... S.wait(cond, ms) ... S.sleep(ms) ... end)
-- luacheck: globals vim
local M = {}

local uv = vim.uv or vim.loop
local A = vim.fn.json_decode(os.getenv("LLAMACPP_NVIM_ARGS") or "{}")
local R = { scenario = A.scenario, steps = {} }
M.A, M.R, M.uv = A, R, uv

local function now_ms() return uv.hrtime() / 1e6 end
M.now_ms = now_ms
local T0 = now_ms()
M.T0 = T0
function M.note(what) R.steps[#R.steps + 1] = { what, now_ms() - T0 } end

local finished = false
function M.finish()
  if finished then return end
  finished = true
  local f = io.open(A.out, "wb")
  f:write(vim.fn.json_encode(R))
  f:close()
  vim.cmd("qa!")
end
local finish = M.finish

-- A bound on the whole run, whatever happens (the spec also runs nvim
-- under `timeout`): the result says why it stopped.
local watchdog = uv.new_timer()
watchdog:start(A.timeout_ms or 20000, 0, function()
  R.error = R.error or "driver watchdog fired"
  vim.schedule(finish)
end)

local co
local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    R.error = debug.traceback(co, tostring(err))
    finish()
  elseif coroutine.status(co) == "dead" then
    finish()
  end
end

-- Yields to the main loop until cond() holds, checking every `every` ms
-- from the main loop (vim.schedule), as a user's next keystroke would.
function M.wait(cond, ms, every)
  local deadline = now_ms() + (ms or 10000)
  while not cond() do
    if now_ms() > deadline then error("timed out waiting", 2) end
    local t = uv.new_timer()
    t:start(every or 10, 0, function()
      t:close()
      vim.schedule(resume)
    end)
    coroutine.yield()
  end
end

function M.sleep(ms)
  local t = now_ms()
  M.wait(function() return now_ms() - t >= ms end, ms + 1000)
end

function M.lines(buf)
  return vim.api.nvim_buf_get_lines(buf, 0, -1, true)
end

--- Runs f as the script, once startup is over (from the main loop).
function M.run(f)
  co = coroutine.create(f)
  vim.schedule(resume)
end

return M
