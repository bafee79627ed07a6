-- What appending a streamed token to a Neovim buffer costs against the
-- length of the line it lands on: the plugin's way (llamacpp.nvim.appender:
-- one nvim_buf_set_text at an extmark) and the way the guide's first
-- example did it (read the last line back, rewrite it with
-- nvim_buf_set_lines). CPU per token on a line that starts L bytes long,
-- as a ratio to the same method on an empty line, measured in the same
-- run: flat (about 1.0x) is the goal. No absolute times are claimed.
--
--   lua5.4 bench/nvim_append.lua [--tokens N]     (runs headless nvim itself)
--
-- Headless Neovim has no UI, so this is the buffer's cost alone; a UI
-- adds drawing the line. Measured here (Neovim 0.7): both flat to 10 KB
-- lines; past that both grow, because Neovim's memline stores a changed
-- line anew (ml_replace copies it) whatever API makes the change, so no
-- plugin can append to a 100 KB line at the cost of a short one. The
-- plugin writes once per loop turn, not once per token, which divides that
-- cost by the tokens a turn brings.
-- luacheck: globals vim
local N = 1000
local argv = rawget(_G, "arg") or {}
for i = 1, #argv do
  if argv[i] == "--tokens" then N = tonumber(argv[i + 1]) or N end
end

if not rawget(_G, "vim") then           -- the outer run: start Neovim on this file
  local here = debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$") or "."
  local cmd = string.format("cd %q && NVIM_APPEND_TOKENS=%d nvim --headless --clean -i NONE " ..
                            "--cmd 'set rtp^=%s' -c 'luafile bench/nvim_append.lua' </dev/null 2>&1",
                            here, N, here)
  local ok = os.execute(cmd)
  os.exit((ok == true or ok == 0) and 0 or 1)
end

local api = vim.api
N = tonumber(os.getenv("NVIM_APPEND_TOKENS")) or N
local appender = require "llamacpp.nvim.appender"
local ns = api.nvim_create_namespace("bench_append")
local TOKEN = "tok, "

local function fresh(len)
  local b = api.nvim_create_buf(false, true)
  vim.bo[b].undolevels = -1            -- as the chat has while a reply streams
  api.nvim_buf_set_lines(b, 0, -1, true, { "## llama", "", string.rep("x", len) })
  return b
end

local methods = {
  { "appender (set_text at an extmark)", function(b)
    local a = appender.new(b, ns, 2, #api.nvim_buf_get_lines(b, 2, 3, true)[1])
    return function(t) a:write(t) end
  end },
  { "read back + set_lines (old guide)", function(b)
    return function(t)
      local last = api.nvim_buf_line_count(b)
      local line = api.nvim_buf_get_lines(b, last - 1, last, false)[1]
      api.nvim_buf_set_lines(b, last - 1, last, false, vim.split(line .. t, "\n", { plain = true }))
    end
  end },
}

local function cost(method, len)
  local best
  for _ = 1, 3 do                      -- the least of three: the machine is shared
    local b = fresh(len)
    local put = method(b)
    collectgarbage()
    local t0 = os.clock()
    for _ = 1, N do put(TOKEN) end
    local t = (os.clock() - t0) / N
    api.nvim_buf_delete(b, { force = true })
    if not best or t < best then best = t end
  end
  return best
end

local LENGTHS = { 0, 1000, 10000, 100000 }
local out = { string.format("## appending a token (%d tokens of %q) vs the length of its line", N, TOKEN),
              "", "| method | " .. table.concat((function()
                local h = {}
                for i, l in ipairs(LENGTHS) do h[i] = "line " .. l .. " B" end
                return h
              end)(), " | ") .. " |",
              "|---|" .. string.rep("---|", #LENGTHS) }
for _, m in ipairs(methods) do
  local base = cost(m[2], LENGTHS[1])
  local row = { m[1] }
  for i, l in ipairs(LENGTHS) do
    row[i + 1] = i == 1 and "1.0x (baseline)" or string.format("%.1fx", cost(m[2], l) / base)
  end
  out[#out + 1] = "| " .. table.concat(row, " | ") .. " |"
end
out[#out + 1] = ""
out[#out + 1] = "goal: the appender's row flat (about 1x); CPU per token relative to an empty line"
io.stdout:write(table.concat(out, "\n"), "\n")
vim.cmd("qa!")
