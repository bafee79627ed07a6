--- llamacpp.nvim.fim: inline completion as you type, from llama-server's
-- /infill (fill-in-the-middle), shown as ghost text.
--
-- In insert mode, after fim.debounce_ms without a keystroke, the lines
-- around the cursor (input_prefix, prompt = the line up to the cursor,
-- input_suffix) and a ring of chunks from buffers recently opened, left or
-- written (input_extra) go to /infill as a stream on Neovim's loop
-- (llamacpp.uv.infill_stream): the suggestion grows as it arrives. The
-- next keystroke, leaving insert mode or the buffer clears it and cancels
-- the request (the server sees the disconnect and frees its slot).
-- fim.keys.accept takes it, accept_line its first line, dismiss drops it;
-- when nothing is shown these keys do what they did before.
-- luacheck: read globals vim
local M = {}

local api = vim.api
local uv = vim.uv or vim.loop
local appender = require "llamacpp.nvim.appender"

local NS = api.nvim_create_namespace("llamacpp_fim")
local plugin
local enabled = false
local timer                       -- the debounce timer
local req                         -- the request in flight: {handle, buf, row, col, parts}
local ghost                       -- shown: {buf, row, col, text, id}
local ring = {}                   -- {filename =, text =, buf =, first =, last =}, newest last
local mapped = {}                 -- insert-mode keys this module mapped: lhs -> true
local warned                      -- an error was notified; no more until one succeeds

M.stats = { requests = 0, cancelled = 0, shown = 0, accepted = 0 }

function M.attach(p) plugin = p end

local function cfg() return plugin.config().fim end

--- The suggestion shown now: {buf, row, col, text} (row 0-based), or nil.
function M.ghost() return ghost and { buf = ghost.buf, row = ghost.row, col = ghost.col, text = ghost.text } end

local function clear_ghost()
  if ghost and api.nvim_buf_is_valid(ghost.buf) then
    pcall(api.nvim_buf_del_extmark, ghost.buf, NS, ghost.id)
  end
  ghost = nil
end

local function cancel_request()
  if req then
    req.handle:cancel()
    M.stats.cancelled = M.stats.cancelled + 1
    req = nil
  end
end

local function stop_timer()
  if timer then timer:stop() end
end

--- Drops the suggestion and its request.
function M.dismiss()
  stop_timer()
  cancel_request()
  clear_ghost()
end

local function inline_ok() return vim.fn.has("nvim-0.10") == 1 end

local function draw(r)
  local text = table.concat(r.parts)
  if text == "" then return end
  local lines = appender.lines(text)
  local virt_lines = {}
  for i = 2, #lines do virt_lines[#virt_lines + 1] = { { lines[i], "LlamaGhost" } } end
  local id = api.nvim_buf_set_extmark(r.buf, NS, r.row, r.col, {
    id = ghost and ghost.buf == r.buf and ghost.id or nil,
    virt_text = { { lines[1], "LlamaGhost" } },
    virt_text_pos = inline_ok() and "inline" or "overlay",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
  if not ghost then M.stats.shown = M.stats.shown + 1 end
  ghost = { buf = r.buf, row = r.row, col = r.col, text = text, id = id }
end

-- The cursor is still where the request was made from.
local function still_at(r)
  if api.nvim_get_current_buf() ~= r.buf then return false end
  local c = api.nvim_win_get_cursor(0)
  return c[1] - 1 == r.row and c[2] == r.col and api.nvim_get_mode().mode:sub(1, 1) == "i"
end

local function filename(buf)
  local n = api.nvim_buf_get_name(buf)
  return n ~= "" and vim.fn.fnamemodify(n, ":~:.") or ("[buffer " .. buf .. "]")
end

-- A buffer the suggestions are for: a normal file buffer of an allowed filetype.
local function eligible(buf)
  if vim.bo[buf].buftype ~= "" or not vim.bo[buf].modifiable then return false end
  local ft = cfg().filetypes
  local v = ft[vim.bo[buf].filetype]
  if v ~= nil then return v end
  return ft["*"] == true
end

--- Keeps the chunk of lines around the cursor of the current buffer in
-- the ring (input_extra for later requests).
function M.pick_chunk()
  local buf = api.nvim_get_current_buf()
  local c = cfg()
  if c.ring_chunks == 0 or not eligible(buf) then return end
  local n = api.nvim_buf_line_count(buf)
  local row = api.nvim_win_get_cursor(0)[1]
  local half = math.floor(c.chunk_lines / 2)
  local first = math.max(1, row - half)
  local last = math.min(n, first + c.chunk_lines - 1)
  local lines = api.nvim_buf_get_lines(buf, first - 1, last, false)
  local text = table.concat(lines, "\n") .. "\n"
  if text:match("^%s*$") then return end
  for i = #ring, 1, -1 do            -- the same place (or the same text) is kept once, newest
    local o = ring[i]
    if o.text == text or (o.buf == buf and o.first <= last and first <= o.last) then
      table.remove(ring, i)
    end
  end
  ring[#ring + 1] = { filename = filename(buf), text = text, buf = buf, first = first, last = last }
  while #ring > c.ring_chunks do table.remove(ring, 1) end
end

--- The ring's chunks (newest last): {{filename =, text =}, ...}.
function M.ring()
  local out = {}
  for i, o in ipairs(ring) do out[i] = { filename = o.filename, text = o.text } end
  return out
end

local function request()
  local buf = api.nvim_get_current_buf()
  if not enabled or not eligible(buf) or api.nvim_get_mode().mode:sub(1, 1) ~= "i" then return end
  local c = cfg()
  local cur = api.nvim_win_get_cursor(0)
  local row, col = cur[1] - 1, cur[2]
  local n = api.nvim_buf_line_count(buf)
  local first = math.max(0, row - c.prefix_lines)
  local before = api.nvim_buf_get_lines(buf, first, row, false)
  local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  local after = api.nvim_buf_get_lines(buf, row + 1, math.min(n, row + 1 + c.suffix_lines), false)
  local extra = {}
  for _, o in ipairs(ring) do       -- not the lines sent around the cursor anyway
    if not (o.buf == buf and o.first - 1 <= row + c.suffix_lines and first <= o.last - 1) then
      extra[#extra + 1] = { filename = o.filename, text = o.text }
    end
  end
  local body = {}
  for k, v in pairs(c.params or {}) do body[k] = v end
  body.input_prefix = #before > 0 and table.concat(before, "\n") .. "\n" or ""
  body.prompt = line:sub(1, col)
  body.input_suffix = line:sub(col + 1) .. "\n" .. (#after > 0 and table.concat(after, "\n") .. "\n" or "")
  body.input_extra = extra
  body.n_predict = body.n_predict or c.n_predict
  if body.cache_prompt == nil then body.cache_prompt = true end
  local client = plugin.client()
  local r = { buf = buf, row = row, col = col, parts = {} }
  local function on_event(ev)
    if req ~= r then return end
    if ev.type == "content" then
      if ev.content ~= "" then
        r.parts[#r.parts + 1] = ev.content
        if not r.scheduled then
          r.scheduled = true
          vim.schedule(function()
            r.scheduled = false
            if req == r or (r.over and not r.dropped) then
              if still_at(r) then draw(r) else M.dismiss() end
            end
          end)
        end
      end
    elseif ev.type == "done" then
      r.over = true
      req = nil
      warned = nil
      vim.schedule(function()
        if still_at(r) and not r.dropped then draw(r) end
      end)
    elseif ev.type == "error" then
      r.over = true
      req = nil
      local msg = tostring(ev.error):gsub("^llamacpp: ", "")
      if not warned then
        warned = true
        plugin.notify("inline completion: " .. msg, vim.log.levels.WARN)
      end
    end
  end
  M.stats.requests = M.stats.requests + 1
  req = r
  r.handle = require("llamacpp.uv").infill_stream(client, body, on_event, {
    on_error = function(msg) plugin.notify("inline completion: " .. msg, vim.log.levels.ERROR) end })
end

-- A keystroke or a move in insert mode: drop what is shown and asked,
-- ask again once typing pauses.
local function changed()
  if ghost then ghost.stale = true end
  cancel_request()
  clear_ghost()
  if not timer then timer = uv.new_timer() end
  timer:stop()
  timer:start(cfg().debounce_ms, 0, vim.schedule_wrap(function()
    local ok, err = pcall(request)
    if not ok then plugin.notify("inline completion: " .. tostring(err), vim.log.levels.ERROR) end
  end))
end

--- Takes the suggestion (kind "line": its first line only) into the
-- buffer at the cursor. True if there was one.
function M.accept(kind)
  local g = ghost
  if not g or not still_at(g) then return false end
  local text = g.text
  if kind == "line" then
    local nl = text:find("\n", 1, true)
    if nl == 1 then text = "\n" .. (text:sub(2):match("^[^\n]*") or "")
    elseif nl then text = text:sub(1, nl - 1) end
  end
  M.dismiss()
  local lines = appender.lines(text)
  api.nvim_buf_set_text(g.buf, g.row, g.col, g.row, g.col, lines)
  local row = g.row + #lines - 1
  local col = (#lines == 1 and g.col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { row + 1, col })
  M.stats.accepted = M.stats.accepted + 1
  return true
end

local ACTIONS = {
  accept = "<Plug>(LlamaFimAccept)", accept_line = "<Plug>(LlamaFimAcceptLine)",
  dismiss = "<Plug>(LlamaFimDismiss)",
}

local function map_keys()
  for what, lhs in pairs(cfg().keys) do
    if lhs and ACTIONS[what] then
      -- a suggestion shown: the action; else the key as it was
      vim.keymap.set("i", lhs, function()
        if ghost and still_at(ghost) then return ACTIONS[what] end
        return lhs
      end, { expr = true, remap = true, desc = "llamacpp: " .. what .. " the suggestion, if any" })
      mapped[lhs] = true
    end
  end
end

local function unmap_keys()
  for lhs in pairs(mapped) do pcall(vim.keymap.del, "i", lhs) end
  mapped = {}
end

--- Turns inline completion on.
function M.enable()
  if enabled then return end
  plugin.client()                    -- says now if the module cannot load
  enabled = true
  local group = api.nvim_create_augroup("llamacpp_fim", { clear = true })
  api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI", "InsertEnter" }, { group = group, callback = changed })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, callback = M.dismiss })
  api.nvim_create_autocmd({ "BufEnter", "BufWritePost", "InsertLeave" }, { group = group, callback = function()
    pcall(M.pick_chunk)
  end })
  api.nvim_create_autocmd({ "BufUnload" }, { group = group, callback = function(a)
    for i = #ring, 1, -1 do if ring[i].buf == a.buf then table.remove(ring, i) end end
    if (req and req.buf == a.buf) or (ghost and ghost.buf == a.buf) then M.dismiss() end
  end })
  map_keys()
end

--- Turns it off: what is shown and asked is dropped, the keys unmapped.
function M.disable()
  if not enabled then return end
  enabled = false
  M.dismiss()
  if timer then
    timer:close()
    timer = nil
  end
  pcall(api.nvim_del_augroup_by_name, "llamacpp_fim")
  unmap_keys()
end

function M.toggle()
  if enabled then M.disable() else M.enable() end
  plugin.notify("inline completion " .. (enabled and "on" or "off"), vim.log.levels.INFO)
end

function M.enabled() return enabled end

return M
