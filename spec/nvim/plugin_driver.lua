-- Runs inside headless Neovim for spec/nvim_plugin_*_spec.lua (through
-- nvim.harness.run_plugin): the plugin at the repository root, installed
-- as a user installs it, driven the way a user drives it (commands, keys
-- typed with nvim_input, the main loop running between steps). It writes
-- what it saw as JSON to args.out, then quits.
--
-- args: scenario, work (a scratch directory), endpoint, setup (more
-- setup{} options), and the scenario's own (see each below).
-- luacheck: globals vim
local script = dofile((debug.getinfo(1, "S").source:sub(2):gsub("plugin_driver%.lua$", "script.lua")))
local A, R, wait, sleep, lines = script.A, script.R, script.wait, script.sleep, script.lines
local api = vim.api
local searchpath = rawget(package, "searchpath")

-- What the plugin tells the user (vim.notify), recorded as a notifier
-- plugin (nvim-notify, fidget) would receive it.
R.notes = {}
vim.notify = function(msg, level)
  R.notes[#R.notes + 1] = { msg = tostring(msg), level = level }
end

local P                           -- require("llamacpp.nvim"), after the install checks

local function plugin()
  P = P or require("llamacpp.nvim")
  return P
end

-- The scenarios script every request the server gets, in order: fitting
-- the history (a /props and a count before each chat) is off unless a
-- spec turns it on (setup = {fit = true}).
local function setup(extra)
  local o = { endpoint = A.endpoint, fit = false }
  for k, v in pairs(A.setup or {}) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  plugin().setup(o)
end

local function not_busy(ms) wait(function() return not plugin().busy() end, ms or A.wait_ms or 10000) end

-- The chat buffer's lines, how the last reply ended, the history.
local function snapshot(into)
  into = into or {}
  local b = plugin().buf()
  into.lines = b and lines(b) or vim.NIL
  into.last = plugin().last() or vim.NIL
  into.busy = plugin().busy()
  into.history = plugin().history()
  return into
end

-- The text of the reply being written (the lines after the last
-- assistant header, up to the next header), and its footer line
-- ("[stop · ...]", "[error] ...", "[cancelled]"), if it has one yet.
local function reply_text()
  local b = plugin().buf()
  if not b then return "" end
  local ls = lines(b)
  local h
  for i = #ls, 1, -1 do
    if ls[i]:match("^## llama") then h = i break end
  end
  if not h then return "" end
  local out = {}
  for i = h + 2, #ls do
    if ls[i]:match("^## ") then break end
    out[#out + 1] = ls[i]
  end
  local text = table.concat(out, "\n"):gsub("%s+$", "")
  local body, foot = text:match("^(.-)\n?\n?(%[[^\n]*)$")
  if body then return body, foot end
  return text
end

-- reply and footer into t.reply, t.footer.
local function reply_into(t)
  local text, foot = reply_text()
  t.reply, t.footer = text, foot or vim.NIL
  return t
end

local function chat_window()
  local b = plugin().buf()
  for _, w in ipairs(api.nvim_tabpage_list_wins(0)) do
    if api.nvim_win_get_buf(w) == b then return w end
  end
end

-- Keys typed by the user, and the loop left to handle them.
local function type_keys(keys)
  api.nvim_input(keys)
  wait(function() return api.nvim_get_mode().blocking == false and vim.fn.getchar(1) == 0 end, 5000)
  sleep(20)
end

local scenarios = {}

-- Where the plugin's files and module were found, then one chat.
-- args.cd: a directory to :cd to before the first use.
function scenarios.install()
  R.plugin_file = api.nvim_get_runtime_file("plugin/llamacpp.lua", false)[1] or vim.NIL
  R.commands = vim.fn.exists(":LlamaChat") == 2
  if A.cd then vim.cmd("cd " .. vim.fn.fnameescape(A.cd)) end
  R.module_file = api.nvim_get_runtime_file("lua/llamacpp/init.lua", false)[1] or vim.NIL
  setup()
  R.root = require("llamacpp.nvim.loader").root
  vim.cmd("LlamaChat " .. (A.prompt or "hello"))
  not_busy()
  R.core = searchpath("llamacpp.core", package.cpath) or vim.NIL
  reply_into(R)
  snapshot(R)
  if A.help then
    vim.cmd("helptags " .. vim.fn.fnameescape(R.root .. "/doc"))
    vim.cmd("help llamacpp")
    R.help_file = vim.fn.expand("%:t")
    R.help_line = api.nvim_get_current_line()
    vim.cmd("help llamacpp-setup")
    R.help_setup = api.nvim_get_current_line()
  end
end

-- A chat that cannot start: what the user is told.
function scenarios.unloadable()
  setup()
  vim.cmd("LlamaChat hello")
  sleep(50)
  R.busy = plugin().busy()
end

-- A reply that streams, then args.action while it does: "bd", "bw",
-- "close" (the window), "cancel", "qa" (quit Neovim), or none (the
-- stream ends by itself: error, cut). Then, unless Neovim quit, a second
-- message (args.second) and how it went.
function scenarios.lifetime()
  setup()
  vim.cmd("LlamaChat " .. (A.prompt or "first question"))
  R.first_buf = plugin().buf()
  if A.action then
    wait(function() return #reply_text() >= (A.after or 1) end)
    R.before_action = reply_text()
  end
  local act = A.action
  if act == "bd" then vim.cmd("bdelete! " .. R.first_buf)
  elseif act == "bw" then vim.cmd("bwipeout! " .. R.first_buf)
  elseif act == "close" then
    api.nvim_win_close(chat_window(), false)
  elseif act == "cancel" then vim.cmd("LlamaCancel")
  elseif act == "qa" then
    R.quit = true
    return                          -- finish() writes the result and runs :qa!
  end
  R.busy_after_action = plugin().busy()
  R.first_buf_loaded = api.nvim_buf_is_loaded(R.first_buf)
  not_busy()
  R.first = reply_into(snapshot())
  if act == "close" then
    R.shown_before = chat_window() ~= nil
    vim.cmd("LlamaChat")             -- toggles the window back
    R.shown_after = chat_window() ~= nil
  end
  vim.cmd("LlamaChat " .. (A.second or "second question"))
  not_busy()
  R.second = reply_into(snapshot())
  R.second.buf = plugin().buf()
end

-- Leaving mid-reply: args.turns (questions answered first, each to its
-- end), then args.prompt, whose reply streams; once args.after bytes of it
-- show, Neovim quits (VimLeavePre). A next run in the same HOME:
-- scenario "resumed".
function scenarios.quit_streaming()
  setup()
  for _, q in ipairs(A.turns or {}) do
    vim.cmd("LlamaChat " .. q)
    not_busy()
  end
  vim.cmd("LlamaChat " .. (A.prompt or "first question"))
  wait(function() return #reply_text() >= (A.after or 1) end)
  R.before = reply_text()
  R.quit = true                     -- finish() writes the result and runs :qa!
end

-- Neovim started again: what it offered (R.offers, the notes so far),
-- then :LlamaResume (args.bang: :LlamaResume!) and how the reply ended;
-- then args.second, if given, as the next message.
function scenarios.resumed()
  R.offers = {}
  for i, n in ipairs(R.notes) do R.offers[i] = n.msg end
  setup()
  R.saved_before = plugin().saved_count()
  vim.cmd(A.bang and "LlamaResume!" or "LlamaResume")
  R.busy_after_action = plugin().busy()
  not_busy()
  reply_into(snapshot(R))
  R.saved_after = plugin().saved_count()
  if A.second then
    vim.cmd("LlamaChat " .. A.second)
    not_busy()
    R.second = reply_into(snapshot())
  end
end

-- Typed turns: the chat window focused, text typed below the last
-- header, <CR> in normal mode. args.turns: the messages; args.during: text
-- typed into the input while the first reply streams.
function scenarios.conversation()
  setup()
  vim.cmd("LlamaChat")               -- opens the chat, focused
  R.focused = api.nvim_get_current_buf() == plugin().buf()
  R.replies = {}
  for i, msg in ipairs(A.turns) do
    if i == 1 or not A.during then type_keys("i" .. msg .. "<Esc>") end
    type_keys("<CR>")
    if i == 1 and A.during then
      wait(function() return #reply_text() > 0 end)
      type_keys("Go" .. A.during .. "<Esc>")
      R.busy_while_typing = plugin().busy()
      type_keys("<CR>")              -- refused while the reply streams: the text stays
      R.busy_after_cr = plugin().busy()
    end
    not_busy()
    R.replies[i] = reply_into({})
    if i == 1 and A.during then
      R.input_after_first = api.nvim_buf_get_lines(plugin().buf(), -2, -1, true)[1]
    end
  end
  snapshot(R)
  -- the chat's notices: virtual text of its namespace ({row (0-based), text})
  R.notices = {}
  local ns = api.nvim_create_namespace("llamacpp_chat")
  for _, m in ipairs(api.nvim_buf_get_extmarks(plugin().buf(), ns, 0, -1, { details = true })) do
    local t = {}
    for _, chunk in ipairs(m[4].virt_text or {}) do t[#t + 1] = chunk[1] end
    if #t > 0 then R.notices[#R.notices + 1] = { row = m[2], text = table.concat(t) } end
  end
end

-- One reply; while it streams, args.probe_ms after the start, the
-- waiting indicator's text (virtual text of the chat buffer).
function scenarios.reply()
  setup()
  vim.cmd("LlamaChat " .. (A.prompt or "hello"))
  if A.probe_ms then
    sleep(A.probe_ms)
    local ns = api.nvim_create_namespace("llamacpp_chat_wait")
    local marks = api.nvim_buf_get_extmarks(plugin().buf(), ns, 0, -1, { details = true })
    R.indicator = {}
    for _, m in ipairs(marks) do
      for _, chunk in ipairs(m[4].virt_text or {}) do R.indicator[#R.indicator + 1] = chunk[1] end
    end
    R.indicator = table.concat(R.indicator, " ")
  end
  not_busy(A.wait_ms)
  reply_into(R)
  snapshot(R)
  -- folds of the reasoning, in the chat's window
  local w = chat_window()
  if w then
    R.closed_folds = api.nvim_win_call(w, function()
      local n, l = 0, 1
      while l <= vim.fn.line("$") do
        if vim.fn.foldclosed(l) ~= -1 then
          n = n + 1
          l = vim.fn.foldclosedend(l) + 1
        else
          l = l + 1
        end
      end
      return n
    end)
  end
end

-- A long reply in the chat window: does the window follow it? args.scroll:
-- the user goes to the top of the chat window mid-stream.
function scenarios.follow()
  setup()
  vim.cmd("LlamaChat")
  vim.cmd("LlamaChat " .. (A.prompt or "tell me a long story"))
  local w = chat_window()
  api.nvim_set_current_win(w)
  if A.scroll then
    wait(function() return #reply_text() > 0 end)
    type_keys("gg")
  end
  not_busy(A.wait_ms)
  R.line_count = api.nvim_buf_line_count(plugin().buf())
  R.cursor = api.nvim_win_get_cursor(w)[1]
  local view = api.nvim_win_call(w, function() return { vim.fn.line("w0"), vim.fn.line("w$") } end)
  R.top, R.bottom = view[1], view[2]
  snapshot(R)
end

-- Inline completion in a file buffer. args.text: the file's lines; the
-- cursor goes to the end of its last line in insert mode (A). Steps:
-- the first suggestion; args.type: keys typed next (the old request is
-- cancelled, a new suggestion comes); then args.accept: the key that takes it.
function scenarios.fim()
  setup{ fim = vim.tbl_extend("force", { enabled = true, debounce_ms = 20 }, A.fim or {}) }
  local fim = require("llamacpp.nvim.fim")
  for i, other in ipairs(A.others or {}) do       -- files opened before: the ring's chunks
    local f = io.open(A.work .. "/other" .. i .. ".txt", "wb")
    f:write(other)
    f:close()
    vim.cmd("edit " .. vim.fn.fnameescape(A.work .. "/other" .. i .. ".txt"))
  end
  vim.cmd("edit " .. vim.fn.fnameescape(A.work .. "/main.lua"))
  api.nvim_buf_set_lines(0, 0, -1, true, A.text)
  api.nvim_win_set_cursor(0, { #A.text, 0 })
  type_keys("A")
  wait(function() local g = fim.ghost(); return g and #g.text >= (A.first_len or 1) end)
  sleep(A.settle_ms or 0)
  R.first = fim.ghost()
  R.stats_first = vim.deepcopy(fim.stats)
  if A.type then
    type_keys(A.type)
    R.after_type_line = api.nvim_get_current_line()
    wait(function() local g = fim.ghost(); return g and #g.text >= (A.first_len or 1) end)
    R.second = fim.ghost()
  end
  if A.accept then
    type_keys(A.accept)
    R.after_accept = lines(0)
    R.ghost_after_accept = fim.ghost() or vim.NIL
  end
  if A.plain then
    fim.dismiss()
    type_keys(A.plain)
    R.after_plain = lines(0)
  end
  R.stats = vim.deepcopy(fim.stats)
  R.ring = fim.ring()
  type_keys("<Esc>")
  R.ghost_after_esc = fim.ghost() or vim.NIL
end

-- setup() with args.opts: the message it raises, if any.
function scenarios.setup()
  local ok, err = pcall(plugin().setup, A.opts)
  R.ok, R.message = ok, not ok and tostring(err) or vim.NIL
end

-- :LlamaImage with the cursor on a file name (args.file, in a buffer of
-- its own), or with args.cmd as the command line.
function scenarios.image()
  setup()
  vim.cmd("enew")
  api.nvim_buf_set_lines(0, 0, -1, false, { "see " .. A.file .. " here" })
  api.nvim_win_set_cursor(0, { 1, 5 })
  vim.cmd(A.cmd or "LlamaImage What is it?")
  not_busy(A.wait_ms)
  reply_into(R)
  snapshot(R)
end

-- :checkhealth llamacpp: the report's lines.
function scenarios.health()
  setup()
  vim.cmd("checkhealth llamacpp")
  R.report = lines(0)
end

script.run(function()
  local f = scenarios[A.scenario]
  if not f then error("unknown scenario " .. tostring(A.scenario)) end
  f()
end)
