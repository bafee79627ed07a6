--- llamacpp_nvim: a minimal Neovim plugin over llamacpp.uv.
--
--   require("llamacpp_nvim").setup{ endpoint = "http://127.0.0.1:8080" }
--   :LlamaChat Why is the sky blue?     streams the answer into a scratch buffer
--   :LlamaCancel                        stops it (the server sees the disconnect)
--
-- Nothing here blocks the editor: the transfer runs on Neovim's own loop
-- (vim.uv, or vim.loop before 0.10) through llamacpp.uv. Its callbacks run
-- in a "fast" context where the buffer API is off limits, so they only
-- collect text; one scheduled flush per loop turn writes it to the buffer.
local M = {}

local uv = vim.uv or vim.loop

local config = {}     -- what setup() was given
local client          -- made on first use, again after setup()
local active          -- the request streaming now, if any
local chat_buf        -- the scratch buffer

local function notify(msg, level)
  vim.notify("llamacpp: " .. msg, level or vim.log.levels.INFO)
end

-- The checkout this file lives in (examples/nvim/lua/llamacpp_nvim/init.lua).
local function checkout_root()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) ~= "@" then return nil end
  return vim.fn.fnamemodify(src:sub(2), ":p:h:h:h:h:h")
end

-- llamacpp from the usual package paths (a LuaRocks tree for Lua 5.1, the
-- repository on 'runtimepath'); else from a checkout's Lua sources and its
-- LuaJIT build (make LUA=luajit): setup{root=}, or the checkout this
-- plugin sits in. The checkout's paths go first, so its Lua files and its
-- core are used together, not with some other core.so found on the way
-- (./llamacpp/core.so in the current directory, say).
local function load_llamacpp()
  local ok, mod = pcall(require, "llamacpp")
  if ok then return mod end
  local first = mod
  local root = config.root or checkout_root()
  if root and vim.fn.filereadable(root .. "/lua/llamacpp/init.lua") == 1 then
    package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
    package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
    ok, mod = pcall(require, "llamacpp")
    if ok then return mod end
  end
  error("cannot load the llamacpp module: " .. tostring(mod ~= first and mod or first) ..
        "\n(install it with `luarocks --lua-version 5.1 install llamacpp`, or build a checkout" ..
        " with `make LUA=luajit` and pass setup{root = \"/path/to/checkout\"})", 0)
end

-- Keys of setup() that are the plugin's; the others go to llamacpp.new.
local OWN = { root = true, system = true, params = true }

local function get_client()
  if client then return client end
  local llamacpp = load_llamacpp()
  local opts = {}
  for k, v in pairs(config) do
    if not OWN[k] then opts[k] = v end
  end
  local env = os.getenv("LLAMACPP_ENDPOINT")
  if opts.endpoint == nil and env and env ~= "" then opts.endpoint = env end
  if opts.api_key == nil then
    local key = os.getenv("LLAMA_API_KEY")
    if key and key ~= "" then opts.api_key = key end
  end
  client = llamacpp.new(opts)
  return client
end

--- setup{endpoint=, model=, api_key=, system=, params=, root=, ...}.
-- endpoint defaults to $LLAMACPP_ENDPOINT, then http://127.0.0.1:8080;
-- api_key to $LLAMA_API_KEY. `system` is the system prompt, `params` more
-- request fields (max_tokens, temperature, ...); `root` a llamacpp checkout
-- to load the module from. Other keys are llamacpp.new options (timeouts...).
function M.setup(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("llamacpp_nvim.setup: a table expected, got " .. type(opts), 2)
  end
  config = vim.deepcopy(opts or {})
  client = nil
end

---------------------------------------------------------------- the buffer

local function get_buf()
  if chat_buf and vim.api.nvim_buf_is_valid(chat_buf) then return chat_buf end
  chat_buf = vim.api.nvim_create_buf(true, true)     -- listed, scratch
  vim.api.nvim_buf_set_name(chat_buf, "llamacpp://chat")
  vim.api.nvim_buf_set_option(chat_buf, "filetype", "markdown")
  vim.api.nvim_buf_set_option(chat_buf, "bufhidden", "hide")
  return chat_buf
end

-- Shows buf in a split unless a window of this tab shows it already; the
-- cursor stays where it was.
local function show(buf)
  for _, w in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    if vim.api.nvim_win_get_buf(w) == buf then return end
  end
  local here = vim.api.nvim_get_current_win()
  vim.cmd("botright split")
  vim.api.nvim_win_set_buf(0, buf)
  vim.api.nvim_set_current_win(here)
end

local function split_lines(s)
  local out, pos = {}, 1
  while true do
    local nl = s:find("\n", pos, true)
    if not nl then
      out[#out + 1] = s:sub(pos)
      return out
    end
    out[#out + 1] = s:sub(pos, nl - 1)
    pos = nl + 1
  end
end

-- Appends text at the very end of buf (it may hold newlines). Windows
-- whose cursor was on the last line follow the text.
local function append(buf, text)
  if text == "" or not vim.api.nvim_buf_is_valid(buf) then return end
  local n = vim.api.nvim_buf_line_count(buf)
  local last = vim.api.nvim_buf_get_lines(buf, n - 1, n, true)[1]
  local follow = {}
  for _, w in ipairs(vim.fn.win_findbuf(buf)) do
    if vim.api.nvim_win_get_cursor(w)[1] == n then follow[#follow + 1] = w end
  end
  vim.api.nvim_buf_set_text(buf, n - 1, #last, n - 1, #last, split_lines(text))
  local n2 = vim.api.nvim_buf_line_count(buf)
  for _, w in ipairs(follow) do vim.api.nvim_win_set_cursor(w, { n2, 0 }) end
end

---------------------------------------------------------------- requests

local schedule_flush

-- At most this much text goes into the buffer per turn of the main loop:
-- after the editor was busy, a backlog is written in slices, with the
-- loop running (keys, timers, redraws) in between.
local FLUSH_BYTES = 16384

-- Writes what the callbacks collected (FLUSH_BYTES of it, or all of it);
-- once the request has ended and all is written, its closing line too.
-- Runs in the main loop, never in a fast callback.
local function flush(r, all)
  r.scheduled = false
  local pending, head, last = r.pending, r.head, #r.pending
  if head <= last then
    local n, bytes = last, 0
    if not all then
      n = head - 1
      repeat
        n = n + 1
        bytes = bytes + #pending[n]
      until n == last or bytes >= FLUSH_BYTES
    end
    append(r.buf, table.concat(pending, "", head, n))
    if n < last then
      r.head = n + 1
      schedule_flush(r)
      return
    end
    r.pending, r.head = {}, 1
  end
  if r.final and not r.closed then
    r.closed = true
    local f = r.final
    local line
    if f.status == "error" then line = "[error] " .. f.message
    elseif f.status == "cancelled" then line = "[cancelled]" end
    if vim.api.nvim_buf_is_valid(r.buf) then
      local n = vim.api.nvim_buf_line_count(r.buf)
      local text = ""
      if vim.api.nvim_buf_get_lines(r.buf, n - 1, n, true)[1] ~= "" then text = "\n" end
      if line then text = text .. line .. "\n" end
      append(r.buf, text)             -- the buffer ends with an empty line
    end
    if active == r then active = nil end
    M.last = { status = f.status, error = f.message, stop_reason = f.stop_reason,
               usage = f.usage, buf = r.buf }
    -- the buffer says it; a notice only when no window shows the buffer
    -- (a long one would wait for Enter)
    if f.status == "error" and #vim.fn.win_findbuf(r.buf) == 0 then
      notify(f.message, vim.log.levels.WARN)
    end
    vim.api.nvim_exec_autocmds("User", { pattern = "LlamaChatDone", modeline = false })
  end
end

function schedule_flush(r)
  if not r.scheduled then
    r.scheduled = true
    vim.schedule(function() flush(r) end)
  end
end

--- Streams the answer to `prompt` into the chat buffer. Returns the
-- buffer number; raises when a reply is still streaming.
function M.chat(prompt)
  if type(prompt) ~= "string" or prompt:match("^%s*$") then
    error("llamacpp: say something, e.g. :LlamaChat Why is the sky blue?", 0)
  end
  if active then
    error("llamacpp: a reply is still streaming (:LlamaCancel stops it)", 0)
  end
  local c = get_client()
  local buf = get_buf()
  show(buf)
  local n = vim.api.nvim_buf_line_count(buf)
  local empty = n == 1 and vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1] == ""
  local head = {}
  for _, l in ipairs(split_lines(prompt)) do head[#head + 1] = "> " .. l end
  head[#head + 1] = ""
  head[#head + 1] = ""
  vim.api.nvim_buf_set_lines(buf, empty and 0 or n, -1, true, head)
  for _, w in ipairs(vim.fn.win_findbuf(buf)) do
    vim.api.nvim_win_set_cursor(w, { vim.api.nvim_buf_line_count(buf), 0 })
  end

  local req = {}
  for k, v in pairs(config.params or {}) do req[k] = v end
  req.system = req.system or config.system
  req.messages = { { role = "user", content = prompt } }

  -- pending[head..]: text from the callbacks, not yet in the buffer
  local r = { buf = buf, pending = {}, head = 1, scheduled = false }
  active = r
  M.last = nil
  local function on_event(ev)
    if r.final then return end
    local t = ev.type
    if t == "content" then
      r.pending[#r.pending + 1] = ev.content
    elseif t == "done" then
      r.final = { status = "done", stop_reason = ev.stop_reason, usage = ev.usage }
    elseif t == "error" then
      r.final = { status = "error", message = (tostring(ev.error):gsub("^llamacpp: ", "")) }
    else
      return
    end
    schedule_flush(r)
  end
  local function on_error(msg)      -- on_event raised: uv.lua has cancelled the request
    r.final = r.final or { status = "error", message = msg }
    schedule_flush(r)
  end
  local ok, h = pcall(require("llamacpp.uv").chat_stream, c, req, on_event,
                      { uv = uv, on_error = on_error })
  if not ok then
    active = nil
    error(h, 0)
  end
  r.handle = h
  return buf
end

--- Stops the reply that is streaming, if any: the transfer is aborted at
-- once and "[cancelled]" ends the text. Returns true if one was running.
function M.cancel()
  local r = active
  if not r then return false end
  r.handle:cancel()
  r.final = r.final or { status = "cancelled" }
  flush(r, true)
  return true
end

--- True while a reply streams.
function M.busy() return active ~= nil end

--- The chat buffer (nil before the first :LlamaChat).
function M.buf() return chat_buf and vim.api.nvim_buf_is_valid(chat_buf) and chat_buf or nil end

return M
