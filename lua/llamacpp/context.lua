-- Fitting a chat history to a token budget: which messages may go, in
-- what order, and the request without them. Pure (no I/O): the client
-- counts with the server (client:fit, in client.lua) and asks this module
-- what to drop next.
--
-- A history is cut in turns: a user message and everything after it up to
-- the next user message (the assistant's answer, its tool calls and their
-- results). Dropping whole turns keeps a tool result with the call that
-- asked for it and the user/assistant alternation templates insist on.
-- Never dropped: the system prompt (`system`, and system messages before
-- the first user message), the first `keep_first` turns and the last turn
-- (the question being asked). The oldest droppable turns go first.
local json = require "llamacpp.json"

local type, pairs, ipairs = type, pairs, ipairs

local M = {}

-- The turns of msgs: {first = i, last = j, size = bytes} in order, after
-- the head (the messages before the first user message, kept); and the
-- bytes of all messages.
function M.turns(msgs)
  local out, cur = {}, nil
  local head = 0
  for i = 1, #msgs do
    local m = msgs[i]
    if type(m) == "table" and m.role == "user" then
      cur = { first = i, last = i }
      out[#out + 1] = cur
    elseif cur then
      cur.last = i
    else
      head = i
    end
  end
  local function size(i)
    local ok, text = pcall(json.encode, msgs[i])
    return ok and #text or 0
  end
  local all = 0
  for i = 1, head do all = all + size(i) end
  for _, t in ipairs(out) do
    local n = 0
    for i = t.first, t.last do n = n + size(i) end
    t.size = n
    all = all + n
  end
  return out, all
end

-- The turns that may be dropped, oldest first: all but the first
-- keep_first and the last.
function M.droppable(turns, keep_first)
  local out = {}
  for i = (keep_first or 0) + 1, #turns - 1 do out[#out + 1] = turns[i] end
  return out
end

-- How many more droppable turns (after the first `from`, already gone)
-- to drop so that `total` tokens (the request without those, counted)
-- comes under `budget`, estimating each turn's share of the tokens by its
-- share of the bytes of the messages left (`all_size`: the bytes of all).
function M.estimate(total, budget, drop, all_size, from)
  from = from or 0
  if total <= budget then return 0 end
  for i = 1, from do all_size = all_size - drop[i].size end
  if all_size <= 0 then return #drop - from end
  local over = total - budget
  local per_byte = total / all_size
  local n, freed = from, 0
  while n < #drop and freed < over do
    n = n + 1
    freed = freed + drop[n].size * per_byte
  end
  return n - from
end

-- A copy of req without the first n droppable turns (and the messages
-- dropped, in order); summary, when given, is appended to the system
-- prompt.
function M.without(req, drop, n, summary)
  local gone = {}
  for i = 1, n do
    for j = drop[i].first, drop[i].last do gone[j] = true end
  end
  local r = {}
  for k, v in pairs(req) do r[k] = v end
  local msgs, kept, dropped = req.messages, {}, {}
  for i = 1, #msgs do
    if gone[i] then dropped[#dropped + 1] = msgs[i] else kept[#kept + 1] = msgs[i] end
  end
  r.messages = kept
  if summary then
    if type(req.system) == "string" then
      r.system = req.system .. "\n\n" .. summary
    elseif kept[1] and kept[1].role == "system" and type(kept[1].content) == "string" then
      local s = {}
      for k, v in pairs(kept[1]) do s[k] = v end
      s.content = s.content .. "\n\n" .. summary
      kept[1] = s
    else
      r.system = summary
    end
  end
  return r, dropped
end

return M
