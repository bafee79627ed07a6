--- llamacpp.nvim.chat: a conversation in a buffer.
--
-- The buffer `llamacpp://chat` holds the turns, each under a header line
-- (`## You`, `## llama`); the last `## You` is the input: what is typed
-- below it is sent by <CR> in normal mode (or :LlamaSend), with the whole
-- history. The history itself is kept here, as messages, not read back
-- from the buffer: editing old turns changes what you see, not what was said.
--
-- A reply is written at an extmark that sits between the reply and the
-- input (llamacpp.nvim.appender), so typing in the input while a reply
-- streams stays in the input. The stream's callbacks run in libuv's fast
-- context: they only collect; one vim.schedule'd flush per loop turn writes.
--
-- Lifetimes: the request ends, and nothing is left waiting, whatever
-- happens first: done, error, :LlamaCancel, the buffer unloaded or wiped
-- (:bd, :bw!: the request is cancelled and the conversation dropped),
-- Neovim quitting (VimLeavePre: a resumable reply is left to the server
-- and remembered for :LlamaResume; any other is cancelled). Closing the
-- window only hides the buffer: the reply goes on, and :LlamaChat shows
-- it again.
-- luacheck: globals vim (vim.bo fields are set)
local M = {}

local api = vim.api
local uv = vim.uv or vim.loop
local appender = require "llamacpp.nvim.appender"
local config_mod = require "llamacpp.nvim.config"

local plugin                      -- llamacpp.nvim (config, client, notify), set by attach()
local S                           -- the session: {buf, messages, input, req}
local NS = api.nvim_create_namespace("llamacpp_chat")
local NS_WAIT = api.nvim_create_namespace("llamacpp_chat_wait")

M.last = nil                      -- the last request's end: {status, error, stop_reason, usage, buf}

function M.attach(p) plugin = p end

local function now_ms() return uv.hrtime() / 1e6 end

local function loaded(buf) return buf and api.nvim_buf_is_loaded(buf) end

local function fire_done()
  pcall(api.nvim_exec_autocmds, "User", { pattern = "LlamaChatDone", modeline = false })
end

---------------------------------------------------------------- the buffer

local function header(name) return "## " .. name end

-- Highlights the whole of line `row` (0-based) with group.
local function hl_line(buf, row, group)
  local text = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  api.nvim_buf_set_extmark(buf, NS, row, 0, { end_row = row, end_col = #text, hl_group = group })
end

-- The row of the input's header (`## You`), 0-based.
local function input_row(s)
  return api.nvim_buf_get_extmark_by_id(s.buf, NS, s.input, {})[1]
end

local function set_input_header(s, row)
  if s.input then pcall(api.nvim_buf_del_extmark, s.buf, NS, s.input) end
  s.input = api.nvim_buf_set_extmark(s.buf, NS, row, 0, {})
  hl_line(s.buf, row, "LlamaUser")
end

local on_gone

local function new_session()
  local cfg = plugin.config()
  local buf = api.nvim_create_buf(true, true)          -- listed, scratch
  pcall(api.nvim_buf_set_name, buf, "llamacpp://chat")
  vim.bo[buf].bufhidden = "hide"
  vim.bo[buf].swapfile = false
  vim.bo[buf].filetype = "markdown"
  local s = { buf = buf, messages = {} }
  api.nvim_buf_set_lines(buf, 0, -1, true, { header(cfg.names.user), "" })
  set_input_header(s, 0)
  local group = api.nvim_create_augroup("llamacpp_chat_" .. buf, { clear = true })
  api.nvim_create_autocmd({ "BufUnload", "BufWipeout" }, {
    group = group, buffer = buf,
    callback = function() on_gone(s) end,
  })
  if cfg.mappings then
    local o = { buffer = buf, silent = true }
    vim.keymap.set("n", "<CR>", "<Plug>(LlamaSend)", o)
    vim.keymap.set("n", "<C-c>", "<Plug>(LlamaCancel)", o)
  end
  S = s
  return s
end

local function session()
  if S and loaded(S.buf) then return S end
  return new_session()
end

local function windows(buf)
  return vim.fn.win_findbuf(buf)
end

local function tab_window(buf)
  for _, w in ipairs(api.nvim_tabpage_list_wins(0)) do
    if api.nvim_win_get_buf(w) == buf then return w end
  end
end

-- Opens a window on the chat (config.split) unless this tab has one;
-- focus: go there, else the cursor stays where it was. Returns the window.
local function show(s, focus)
  local w = tab_window(s.buf)
  if not w then
    local here = api.nvim_get_current_win()
    vim.cmd(plugin.config().split)
    w = api.nvim_get_current_win()
    api.nvim_win_set_buf(w, s.buf)
    local n = api.nvim_buf_line_count(s.buf)
    api.nvim_win_set_cursor(w, { n, 0 })
    if not focus then api.nvim_set_current_win(here) end
  elseif focus then
    api.nvim_set_current_win(w)
  end
  return w
end

--- Shows the chat window, or closes it when this tab shows it.
function M.toggle()
  local w = S and loaded(S.buf) and tab_window(S.buf)
  if w then
    if #api.nvim_tabpage_list_wins(0) > 1 then
      api.nvim_win_close(w, false)
    else
      plugin.notify("the chat is the only window", vim.log.levels.INFO)
    end
    return
  end
  local s = session()
  w = show(s, true)
  api.nvim_win_set_cursor(w, { api.nvim_buf_line_count(s.buf), 0 })
end

--- The chat buffer (nil when there is none).
function M.buf() return S and loaded(S.buf) and S.buf or nil end

--- The conversation so far (a copy): {{role =, content =}, ...}.
function M.history() return S and vim.deepcopy(S.messages) or {} end

--- True while a reply streams (or waits for the server).
function M.busy() return S ~= nil and S.req ~= nil end

---------------------------------------------------------------- the indicator

local SPIN = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" }

local function wait_text(r)
  local t = string.format("%.1f s", (now_ms() - r.t0) / 1000)
  if r.loading then return "llama-server is loading the model, waiting " .. t end
  local p = r.progress
  if p and tonumber(p.total) and tonumber(p.total) > 0 and tonumber(p.processed) then
    local s = string.format("reading the prompt %d%% (%d/%d", math.floor(100 * p.processed / p.total),
                            p.processed, p.total)
    if tonumber(p.cached) and p.cached > 0 then s = s .. string.format(", %d cached", p.cached) end
    return s .. ") " .. t
  end
  if r.thinking then return "thinking (" .. r.thinking .. " bytes) " .. t end
  return "waiting for llama-server " .. t
end

local function draw_wait(r)
  if not r.waiting or not loaded(r.s.buf) then return end
  r.spin = r.spin % #SPIN + 1
  local row = r.out:pos()
  r.wait_id = api.nvim_buf_set_extmark(r.s.buf, NS_WAIT, row, 0, {
    id = r.wait_id, virt_text = { { SPIN[r.spin] .. " " .. wait_text(r), "LlamaWaiting" } },
    virt_text_pos = "eol" })
end

local function stop_timer(r)
  if r.timer then
    r.timer:stop()
    r.timer:close()
    r.timer = nil
  end
end

local function stop_wait(r)
  r.waiting = false
  stop_timer(r)
  if r.wait_id and loaded(r.s.buf) then pcall(api.nvim_buf_del_extmark, r.s.buf, NS_WAIT, r.wait_id) end
  r.wait_id = nil
end

local function start_wait(r)
  r.waiting, r.spin = true, 0
  draw_wait(r)
  r.timer = uv.new_timer()
  r.timer:start(100, 100, vim.schedule_wrap(function()
    if r.waiting then pcall(draw_wait, r) end
  end))
end

---------------------------------------------------------------- writing

-- At most this much text goes into the buffer per turn of the main loop.
local FLUSH_BYTES = 16384

-- Windows that follow the reply: their cursor is on the reply's last
-- line or below it (the input). Returns {win = "end" | "stay"}.
local function followers(r)
  local row = r.out:pos()
  local f = {}
  for _, w in ipairs(windows(r.s.buf)) do
    local c = api.nvim_win_get_cursor(w)[1] - 1
    if c == row then f[w] = "end" elseif c > row then f[w] = "stay" end
  end
  return f
end

local function follow(r, f)
  local row = r.out:pos()
  for w, how in pairs(f) do
    if api.nvim_win_is_valid(w) and api.nvim_win_get_buf(w) == r.s.buf then
      if how == "end" then
        api.nvim_win_set_cursor(w, { row + 1, 0 })
      else                           -- moved down with the text: scroll to it
        api.nvim_win_set_cursor(w, api.nvim_win_get_cursor(w))
      end
    end
  end
end

-- The reasoning block is over: "fold" folds it in the windows showing it.
local function end_reasoning(r)
  local buf = r.s.buf
  local last = r.out:pos()
  if r.reasoning_row and last >= r.reasoning_row then
    api.nvim_buf_set_extmark(buf, NS, r.reasoning_row, 0,
                             { end_row = last + 1, end_col = 0, hl_group = "LlamaReasoning", hl_eol = true })
    if plugin.config().reasoning == "fold" then
      for _, w in ipairs(windows(buf)) do
        pcall(api.nvim_win_call, w, function()
          vim.cmd(string.format("%d,%dfold", r.reasoning_row + 1, last + 1))
        end)
      end
    end
  end
  r.out:write("\n\n")
end

local function write(r, kind, text)
  local hide = plugin.config().reasoning == "hide"
  if kind == "r" then
    r.reasoning[#r.reasoning + 1] = text
    if hide then
      r.thinking = (r.thinking or 0) + #text
      return
    end
    if r.mode ~= "r" then
      r.mode = "r"
      r.reasoning_row = r.out:pos()
      r.out:write("> ")
    end
    r.out:write((text:gsub("\n", "\n> ")))
    return
  end
  if r.mode == "r" then end_reasoning(r) end
  r.mode = "c"
  r.content[#r.content + 1] = text
  r.out:write(text)
end

local function footer(r, f)
  if f.status == "cancelled" then return "[cancelled]", "LlamaFooter" end
  if f.status == "error" then return "[error] " .. f.message, "LlamaError" end
  local parts = {}
  local stats, timings, usage = f.stats or {}, f.timings or {}, f.usage or {}
  local n = usage.output_tokens
  if n then parts[#parts + 1] = n .. " tokens" end
  local speed = stats.generation_tokens_per_s or timings.predicted_per_second
  if not speed and n and r.first_at and f.at > r.first_at then
    speed = n / ((f.at - r.first_at) / 1000)
  end
  if speed then parts[#parts + 1] = string.format("%.1f tok/s", speed) end
  if stats.first_token_ms then parts[#parts + 1] = string.format("first token %.1f s", stats.first_token_ms / 1000) end
  parts[#parts + 1] = string.format("%.1f s", (stats.total_ms or (f.at - r.t0)) / 1000)
  local reason = f.stop_reason or "stop"
  local tail = #parts > 0 and " · " .. table.concat(parts, " · ") or ""
  if reason == "length" then
    return "[length: cut short at the token limit (max_tokens)" .. tail .. "]", "LlamaLength"
  end
  return "[" .. reason .. tail .. "]", "LlamaFooter"
end

-- The request is over: the footer, the history, M.last, the autocmd.
local function finish(r)
  if r.closed then return end
  r.closed = true
  stop_wait(r)
  local s, f = r.s, r.final
  local text = table.concat(r.content)
  if loaded(s.buf) then
    if r.mode == "r" then end_reasoning(r) end
    local calls = f.tool_calls or {}
    for _, c in ipairs(calls) do             -- shown; this plugin runs no tools
      local _, col = r.out:pos()
      if col > 0 then r.out:write("\n") end
      r.out:write("[tool call] " .. tostring(c.name) .. "(" .. tostring(c.arguments or "") .. ")")
    end
    local fl = followers(r)
    local row, col = r.out:pos()
    if col > 0 then r.out:write("\n") end
    if row > r.reply_row or col > 0 then r.out:write("\n") end
    local line, group = footer(r, f)
    r.out:write(line)
    hl_line(s.buf, r.out:pos(), group)
    follow(r, fl)
    vim.bo[s.buf].undolevels = r.undolevels
  end
  r.out:drop()
  if text ~= "" then
    s.messages[#s.messages + 1] = { role = "assistant", content = text }
  elseif s.messages[#s.messages] == r.user then
    s.messages[#s.messages] = nil        -- unanswered: the next request does not repeat it
  end
  if s.req == r then s.req = nil end
  M.last = { status = f.status, error = f.message, stop_reason = f.stop_reason, usage = f.usage,
             buf = s.buf, fit = r.fit }
  if f.status == "error" and #windows(s.buf) == 0 then
    plugin.notify(f.message, vim.log.levels.WARN)
  end
  fire_done()
end

local schedule_flush

-- Writes what the callbacks collected (FLUSH_BYTES of it, or all);
-- when the request has ended and all is written, finishes it.
local function flush(r, all)
  r.scheduled = false
  if r.closed or r.gone then return end
  if not loaded(r.s.buf) then return on_gone(r.s) end
  local pending, head, last = r.pending, r.head, #r.pending
  if head <= last then
    if r.waiting then stop_wait(r) end
    local fl = followers(r)
    local n, bytes = head - 1, 0
    repeat
      n = n + 1
      bytes = bytes + #pending[n][2]
    until n == last or (bytes >= FLUSH_BYTES and not all)
    -- consecutive pieces of one kind go in one write
    local i = head
    while i <= n do
      local kind, j = pending[i][1], i
      local buf = {}
      while j <= n and pending[j][1] == kind do
        buf[#buf + 1] = pending[j][2]
        j = j + 1
      end
      write(r, kind, table.concat(buf))
      i = j
    end
    follow(r, fl)
    if r.thinking and not r.waiting and r.mode ~= "c" then start_wait(r) end
    if n < last then
      r.head = n + 1
      schedule_flush(r)
      return
    end
    r.pending, r.head = {}, 1
  end
  if r.final then finish(r) end
end

local function safe_flush(r, all)
  local ok, err = pcall(flush, r, all)
  if not ok and not r.closed then
    -- never leave a request hanging on a failed write
    if r.handle then r.handle:cancel() end
    r.final = r.final or {}
    r.final.status, r.final.message = "error", "writing the reply failed: " .. tostring(err)
    r.final.at = now_ms()
    r.pending, r.head = {}, 1
    local ok2, err2 = pcall(finish, r)
    if not ok2 then
      if r.s.req == r then r.s.req = nil end
      plugin.notify(tostring(err2), vim.log.levels.ERROR)
    end
  end
end

function schedule_flush(r)
  if not r.scheduled then
    r.scheduled = true
    vim.schedule(function() safe_flush(r) end)
  end
end

-- The buffer was unloaded or wiped: cancel, and drop the conversation.
-- Neovim unloads every buffer when it quits, before VimLeavePre: then
-- the reply is ended as VimLeavePre ends it (M.shutdown).
function on_gone(s)
  if vim.v.exiting ~= vim.NIL then
    if S == s then M.shutdown() end
    return
  end
  local r = s.req
  s.req = nil
  if S == s then S = nil end
  if r and not r.closed then
    r.gone, r.closed = true, true
    if r.handle then r.handle:cancel() end
    stop_timer(r)
    r.waiting = false
    M.last = { status = "cancelled", error = "the chat buffer was closed", buf = s.buf }
    fire_done()
  end
  pcall(api.nvim_del_augroup_by_name, "llamacpp_chat_" .. s.buf)
end

---------------------------------------------------------------- requests

local function request_of(s)
  local cfg = plugin.config()
  local req = {}
  for k, v in pairs(cfg.params or {}) do req[k] = v end
  req.system = req.system or cfg.system
  if cfg.progress and req.progress == nil then req.progress = true end
  if cfg.resume and req.resumable == nil and req.conversation_id == nil then
    local c = plugin.client()
    req.resumable = c.can_resume ~= nil and c:can_resume() or nil
  end
  req.messages = {}
  for i, m in ipairs(s.messages) do req.messages[i] = { role = m.role, content = m.content } end
  return req
end

local start_stream

-- llama-server answers 503 while it loads the model: wait for /health on
-- the loop (llamacpp.uv's wait_ready), then send again.
local function wait_loading(r)
  local cfg = plugin.config()
  local left = cfg.wait_loading - (now_ms() - r.t0) / 1000
  if left <= 0 then return false end
  r.loading = true
  if not r.told then
    r.told = true
    plugin.notify("llama-server is loading the model; the message goes when it is ready",
                  vim.log.levels.INFO)
  end
  r.handle = require("llamacpp.uv").request(plugin.client(), "wait_ready",
    { { timeout = left, interval = 0.5 } }, function(ok, err)
      vim.schedule(function()
        if r.closed or r.gone then return end
        r.loading = false
        if ok then return start_stream(r) end
        r.final = { status = "error", message = (tostring(err):gsub("^llamacpp: ", "")), at = now_ms() }
        safe_flush(r)
      end)
    end, { on_error = function(msg)
      vim.schedule(function()
        r.final = r.final or { status = "error", message = msg, at = now_ms() }
        safe_flush(r)
      end)
    end })
  return true
end

-- Streams r's request as it is (req: the fitted copy, else r.req).
local function stream_now(r, req)
  local function on_event(ev)
    if r.final or r.closed then return end
    local t = ev.type
    if t == "content" or t == "reasoning" then
      if ev.content == "" then return end
      r.delivered = true
      r.first_at = r.first_at or now_ms()
      r.pending[#r.pending + 1] = { t == "content" and "c" or "r", ev.content }
    elseif t == "progress" then
      r.progress = ev                    -- the indicator shows it on its next tick
      return
    elseif t == "tool_call" then
      r.delivered = true
      return
    elseif t == "done" then
      r.final = { status = "done", stop_reason = ev.stop_reason, usage = ev.usage, timings = ev.timings,
                  stats = ev.stats, tool_calls = ev.tool_calls, at = now_ms() }
    elseif t == "error" then
      local e = ev.error
      if type(e) == "table" and e.status == 503 and not r.delivered then
        vim.schedule(function()
          if r.closed or r.gone then return end
          if not wait_loading(r) then
            r.final = { status = "error", message = (tostring(e):gsub("^llamacpp: ", "")), at = now_ms() }
            safe_flush(r)
          end
        end)
        return
      end
      r.final = { status = "error", message = (tostring(e):gsub("^llamacpp: ", "")), at = now_ms() }
    else
      return                             -- an event type this plugin does not know
    end
    schedule_flush(r)
  end
  local function on_error(msg)           -- on_event raised: llamacpp.uv cancelled the request
    r.final = r.final or { status = "error", message = msg, at = now_ms() }
    schedule_flush(r)
  end
  local luv, o = require("llamacpp.uv"), { on_error = on_error }
  if r.resume then
    r.handle = luv.resume_stream(plugin.client(), r.resume.id, { from = r.resume.from }, on_event, o)
  else
    r.handle = luv.chat_stream(plugin.client(), req or r.req, on_event, o)
  end
end

local function user_turns(msgs)
  local n = 0
  for _, m in ipairs(msgs or {}) do if m.role == "user" then n = n + 1 end end
  return n
end

-- "N earlier turns left out ...": virtual text at the end of the reply's header.
local function show_dropped(r, n)
  if not loaded(r.s.buf) then return end
  local row = r.out:pos() - 2
  if row < 0 then return end
  pcall(api.nvim_buf_set_extmark, r.s.buf, NS, row, 0, {
    virt_text = { { "  " .. n .. " earlier turn" .. (n == 1 and "" or "s") ..
                    " left out to fit the context window", "LlamaNotice" } },
    virt_text_pos = "eol" })
end

-- The fit failed (err): the request goes whole, as without fitting. A
-- server that cannot count (an older llama-server: 404), or a history
-- whose last turn alone is over the budget, is said once per chat; a
-- server down or loading is not (the chat's own request says so).
local function fit_failed(r, err)
  if type(err) == "table" and err.retryable then return end
  local s = r.s
  local what = type(err) == "table" and err.code == "does_not_fit" and "does_not_fit" or "count"
  s.fit_told = s.fit_told or {}
  if s.fit_told[what] then return end
  s.fit_told[what] = true
  local msg = (tostring(err):gsub("^llamacpp: ", ""))
  if what == "does_not_fit" then
    plugin.notify("the conversation does not fit the context window even with the earlier turns left out (" ..
                  msg .. "): sent whole", vim.log.levels.WARN)
  else
    plugin.notify("the server cannot count tokens (" .. msg .. "): the history is sent whole, not fitted" ..
                  " to the context window", vim.log.levels.INFO)
  end
end

-- Fits the history to the context window (config fit: client:fit on the
-- loop, /props once and a count or two per send), then streams it; when
-- the fit cannot be made, streams the whole history.
function start_stream(r)
  local c = plugin.client()
  if r.resume or not plugin.config().fit or not (c.provider and c.provider.name == "llamacpp") then
    return stream_now(r)
  end
  local done = false
  local function go(fitted, info)
    vim.schedule(function()
      if done or r.closed or r.gone or r.final then return end
      done = true
      r.handle = nil
      if fitted then
        local n = user_turns(r.req.messages) - user_turns(fitted.messages)
        r.fit = { dropped_turns = n, dropped = info.dropped, input_tokens = info.input_tokens,
                  budget = info.budget }
        if n > 0 then show_dropped(r, n) end
      else
        fit_failed(r, info)
      end
      local ok, err = pcall(stream_now, r, fitted)
      if not ok then
        r.final = { status = "error", message = tostring(err), at = now_ms() }
        safe_flush(r)
      end
    end)
  end
  local ok, h = pcall(require("llamacpp.uv").request, c, "fit", { r.req }, go,
                      { on_error = function(msg) go(nil, msg) end })
  if not ok then return stream_now(r) end
  r.handle = h
end

-- Adds the user's turn (text) after the input header and a reply place
-- after it; `replace_input`: the typed input is the turn (it is replaced),
-- else it stays as the next input. Returns the reply's row.
local function add_turn(s, text, replace_input)
  local cfg = plugin.config()
  local buf = s.buf
  local h = input_row(s)
  local n = api.nvim_buf_line_count(buf)
  local lines = appender.lines(text)
  local user_row = h
  lines[#lines + 1] = ""
  lines[#lines + 1] = header(cfg.names.assistant)
  lines[#lines + 1] = ""
  local reply_row = h + #lines + 1
  lines[#lines + 1] = ""                  -- the reply
  lines[#lines + 1] = ""
  lines[#lines + 1] = header(cfg.names.user)
  local input_header = h + #lines
  if replace_input or h + 1 >= n then lines[#lines + 1] = "" end
  api.nvim_buf_set_lines(buf, h + 1, replace_input and -1 or h + 1, false, lines)
  hl_line(buf, user_row, "LlamaUser")
  hl_line(buf, reply_row - 2, "LlamaAssistant")
  set_input_header(s, input_header)
  return reply_row
end

-- Sends `text` as the next user message, with the history; resume
-- ({id, from, content, reasoning}): instead, shows the part of its reply
-- that was shown before and reads the rest from the server.
-- parts (optional): image or audio parts sent after the text (the
-- message's content is then a list of parts); the buffer shows `text`.
local function send(s, text, replace_input, resume, parts)
  if s.req then
    error("llamacpp: a reply is still streaming (:LlamaCancel stops it)", 0)
  end
  local c = plugin.client()                 -- raises (module missing) before the buffer changes
  local user = { role = "user", content = text }
  if parts then
    user.content = { { type = "text", text = text } }
    for _, p in ipairs(parts) do user.content[#user.content + 1] = p end
  end
  local ul = vim.bo[s.buf].undolevels
  local reply_row = add_turn(s, text, replace_input)
  s.messages[#s.messages + 1] = user
  local r = { s = s, user = user, pending = {}, head = 1, content = {}, reasoning = {},
              t0 = now_ms(), reply_row = reply_row, undolevels = ul }
  r.out = appender.new(s.buf, NS, reply_row, 0)
  if resume then
    r.resume = { id = resume.id, from = resume.from }
    if resume.reasoning ~= "" then write(r, "r", resume.reasoning) end
    if resume.content ~= "" then write(r, "c", resume.content) end
    r.delivered = resume.content ~= "" or nil
  end
  r.req = request_of(s)
  s.req = r
  M.last = nil
  -- a reply is not undone key by key (and each token saved for undo would
  -- cost the length of its line): no undo while it streams
  vim.bo[s.buf].undolevels = -1
  for _, w in ipairs(windows(s.buf)) do
    local cur = api.nvim_win_get_cursor(w)[1] - 1
    if cur >= reply_row - 4 then
      api.nvim_win_set_cursor(w, { api.nvim_buf_line_count(s.buf), 0 })
    end
  end
  start_wait(r)
  local ok, err = pcall(start_stream, r)
  if not ok then
    r.final = { status = "error", message = tostring(err), at = now_ms() }
    finish(r)
    error(err, 0)
  end
  assert(c)
  return s.buf
end

-- The prompt with a range of a buffer as context (a fenced block).
local function with_context(prompt, ctx)
  if not ctx then return prompt end
  local block = "```" .. (ctx.filetype or "") .. "\n" .. table.concat(ctx.lines, "\n") .. "\n```"
  if ctx.name and ctx.name ~= "" then block = ctx.name .. ":\n" .. block end
  if prompt == "" then return block end
  return prompt .. "\n\n" .. block
end

--- :LlamaChat {prompt}: opens (or reuses) the chat and sends the prompt;
-- ctx {lines, filetype, name}: a range sent with it as context. Without
-- a prompt, the context goes into the input to be asked about.
function M.chat(prompt, ctx)
  prompt = prompt or ""
  local s = session()
  if prompt:match("^%s*$") then
    if not ctx then return M.toggle() end
    local h = input_row(s)
    api.nvim_buf_set_lines(s.buf, h + 1, -1, false, appender.lines(with_context("", ctx) .. "\n\n"))
    local w = show(s, true)
    api.nvim_win_set_cursor(w, { api.nvim_buf_line_count(s.buf), 0 })
    return s.buf
  end
  show(s, false)
  return send(s, with_context(prompt, ctx), false)
end

--- What a user message shows in the chat: its text, "[image]" or
-- "[audio]" for each media part.
function M.shown(content)
  if type(content) ~= "table" then return content end
  local out = {}
  for _, p in ipairs(content) do
    local t = type(p) == "table" and p.type
    if t == "text" then out[#out + 1] = p.text
    elseif t == "image_url" then out[#out + 1] = "[image]"
    elseif t == "input_audio" then out[#out + 1] = "[audio]" end
  end
  return table.concat(out, "\n")
end

--- :LlamaImage [file] [prompt]: sends an image file (default: the file
-- name under the cursor) with the prompt, to a model that takes images
-- (llama-server with the model's --mmproj). An unreadable file or one of
-- unknown type is a notification, and nothing is sent.
function M.image(path, prompt)
  if path == nil or path == "" then path = vim.fn.expand("<cfile>") end
  if path == "" then
    plugin.notify("no file name under the cursor: :LlamaImage {file} [prompt]", vim.log.levels.ERROR)
    return
  end
  local full = vim.fn.fnamemodify(path, ":p")
  plugin.client()                  -- the module found (or the error saying how to build it)
  local part, err = require("llamacpp").image(full)
  if not part then
    plugin.notify(tostring(err), vim.log.levels.ERROR)
    return
  end
  local s = session()
  show(s, false)
  prompt = (prompt and not prompt:match("^%s*$")) and prompt or "Describe this image."
  return send(s, prompt .. "\n[image: " .. vim.fn.fnamemodify(full, ":~:.") .. "]", false, nil, { part })
end

--- <CR> in the chat / :LlamaSend: sends what is typed below the last header.
function M.send_input()
  local s = session()
  local h = input_row(s)
  local text = table.concat(api.nvim_buf_get_lines(s.buf, h + 1, -1, false), "\n")
  text = text:gsub("^%s+", ""):gsub("%s+$", "")
  if text == "" then
    plugin.notify("type a message below the last header first", vim.log.levels.INFO)
    return
  end
  if s.req then
    plugin.notify("a reply is still streaming; your message stays there (:LlamaCancel stops the reply)",
                  vim.log.levels.INFO)
    return
  end
  return send(s, text, true)
end

--- Stops the reply that is streaming (or waiting): "[cancelled]" ends it.
-- True if one was running.
function M.cancel()
  local r = S and S.req
  if not r then return false end
  if r.handle then r.handle:cancel() end
  r.final = r.final or { status = "cancelled", at = now_ms() }
  r.final.status = "cancelled"
  safe_flush(r, true)
  return true
end

---------------------------------------------------------------- after a restart

-- The text of one kind ("c", "r") the stream handed over so far, written
-- or still to be written.
local function collected(r, kind)
  local out = {}
  for _, t in ipairs(kind == "c" and r.content or r.reasoning) do out[#out + 1] = t end
  for i = r.head, #r.pending do
    if r.pending[i][1] == kind then out[#out + 1] = r.pending[i][2] end
  end
  return table.concat(out)
end

local function write_file(path, data)
  local tmp = path .. ".tmp"
  local f = io.open(tmp, "wb")
  if not f then return false end
  local ok = f:write(data)
  f:close()
  return ok and os.rename(tmp, path) and true or false
end

-- Leaves r's reply to the server (it goes on generating) and remembers
-- where it was, for M.resume. False when it cannot be resumed.
local function leave_for_later(r)
  if not (r.handle and r.handle.detach and r.handle.conversation_id) or r.final then return false end
  local content, reasoning = collected(r, "c"), collected(r, "r")
  local id, from = r.handle:detach()
  if not id then return false end
  local msgs = {}
  for i, m in ipairs(r.s.messages) do msgs[i] = { role = m.role, content = m.content } end
  local dir = config_mod.resume_dir()
  vim.fn.mkdir(dir, "p")
  return write_file(dir .. "/" .. id:gsub("[^%w_-]", "_") .. ".json", vim.fn.json_encode{
    id = id, from = from, messages = msgs, content = content, reasoning = reasoning, saved = os.time() })
end

-- The saved replies, newest first: {{path =, state =}, ...}; unreadable
-- files are removed.
local function saved()
  local out = {}
  for _, path in ipairs(vim.fn.glob(config_mod.resume_dir() .. "/*.json", true, true)) do
    local f = io.open(path, "rb")
    local ok, st = false, nil
    if f then
      ok, st = pcall(vim.fn.json_decode, f:read("*a"))
      f:close()
    end
    local good = ok and type(st) == "table" and type(st.id) == "string" and type(st.from) == "number"
                 and type(st.messages) == "table" and #st.messages > 0
                 and type(st.content) == "string" and type(st.reasoning) == "string"
    for _, m in ipairs(good and st.messages or {}) do
      good = good and type(m) == "table" and type(m.content) == "string"
             and (m.role == "user" or m.role == "assistant")
    end
    if good and st.messages[#st.messages].role == "user" then
      out[#out + 1] = { path = path, state = st }
    else
      os.remove(path)
    end
  end
  table.sort(out, function(a, b) return (tonumber(a.state.saved) or 0) > (tonumber(b.state.saved) or 0) end)
  return out
end

--- How many replies were left streaming when Neovim quit (for :LlamaResume).
function M.saved_count() return #saved() end

--- :LlamaResume: the newest reply that was streaming when Neovim quit,
-- in the chat with its conversation: what was shown, then the rest
-- from the server (which kept generating). forget (:LlamaResume!): drop
-- them all instead. Returns the chat buffer (nil when there was none).
function M.resume(forget)
  local list = saved()
  if forget then
    for _, e in ipairs(list) do os.remove(e.path) end
    plugin.notify(#list == 0 and "no reply to forget" or ("forgot " .. #list .. " repl" ..
                  (#list == 1 and "y" or "ies")), vim.log.levels.INFO)
    return nil
  end
  if #list == 0 then
    plugin.notify("no reply was left streaming when Neovim quit", vim.log.levels.INFO)
    return nil
  end
  if S and loaded(S.buf) and (S.req or #S.messages > 0) then
    error("llamacpp: the chat holds a conversation: :LlamaReset first, then :LlamaResume", 0)
  end
  plugin.client()                             -- raises (module missing) before anything changes
  local e = list[1]
  local st, s = e.state, session()
  local msgs, reply_row = st.messages, nil
  for i = 1, #msgs - 1 do
    local m = msgs[i]
    if m.role == "user" then
      reply_row = add_turn(s, M.shown(m.content), true)
    elseif reply_row then
      local out = appender.new(s.buf, NS, reply_row, 0)
      out:write(m.content)
      out:drop()
    end
    s.messages[#s.messages + 1] = { role = m.role, content = m.content }
  end
  show(s, false)
  local buf = send(s, msgs[#msgs].content, true, st)
  os.remove(e.path)                           -- taken: quitting again saves it again
  return buf
end

--- VimLeavePre: a resumable reply is left to the server and remembered
-- (config resume); any other request is cancelled (the server sees the
-- disconnect).
function M.shutdown()
  local r = S and S.req
  if not r then return end
  S.req = nil
  stop_timer(r)
  if plugin.config().resume and leave_for_later(r) then return end
  if r.handle then r.handle:cancel() end
end

--- Starts a new conversation (the old buffer is wiped).
function M.reset()
  if S and loaded(S.buf) then
    api.nvim_buf_delete(S.buf, { force = true })
  end
  S = nil
end

return M
