--- llamacpp.testing.cache: the prompt cache of a fake llama-server.
-- Pure state (no I/O), used by the fake server (llamacpp.testing.server)
-- when it was started with `testing.start{cache = {...}}`. It keeps, per
-- slot, the last prompt as a list of units (the fake's tokens: words of
-- the rendered conversation, see M.units) and chooses the slot of a new
-- request as llama-server does (tools/server/server-context.cpp,
-- get_available_slot):
--
-- 1. among the idle slots that hold a prompt, the one whose longest
--    common prefix with the new prompt, as a fraction of the new prompt's
--    length, is the largest and above `similarity` (llama-server's
--    --slot-prompt-similarity, 0.1 by default; the first slot wins a tie);
-- 2. else the least recently used idle slot (a slot never used counts as
--    the oldest; among equals the last one, as llama-server's `<=`).
--
-- The answer's figures are llama-server's: `cache_n` = the common prefix
-- with the chosen slot's prompt, but at least one unit is evaluated
-- (llama-server re-evaluates the last token of a prompt it holds whole,
-- for its logits: a repeated prompt of 22 gives cached 21), `prompt_n` =
-- the rest; with `cache_prompt = false` in the request nothing comes from
-- the cache. When the answer is sent the slot holds the prompt followed
-- by the answer's units. Not modelled: llama-server's RAM prompt cache
-- (--cache-ram, which can bring back a prompt a slot lost), context
-- limits and context shift.
-- @module llamacpp.testing.cache
local M = {}

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local concat, sort = table.concat, table.sort

-- {====== units ======

local function add_words(out, s)
  if type(s) ~= "string" then return end
  for w in s:gmatch("%S+") do out[#out + 1] = w end
end

-- A JSON-like text of v with sorted keys: the same value gives the same
-- units, whatever the order of a decoded table's keys.
local function canon(v)
  local t = type(v)
  if t == "string" then return '"' .. v .. '"' end
  if t ~= "table" then return tostring(v) end
  if #v > 0 or next(v) == nil then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = canon(x) end
    return "[" .. concat(parts, ", ") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = '"' .. k .. '": ' .. canon(v[k]) end
  return "{" .. concat(parts, ", ") .. "}"
end
M.canon = canon

-- The units of a message's content: a string's words; of a list of
-- parts, each text part's words and one unit per media part.
local function content_units(out, content)
  if type(content) == "string" then return add_words(out, content) end
  if type(content) ~= "table" then return end
  for _, part in ipairs(content) do
    if type(part) == "table" then
      if part.type == "text" or part.text then
        add_words(out, part.text)
      else
        out[#out + 1] = "<|" .. tostring(part.type or "media") .. "|>"
      end
    end
  end
end

-- The units of tool calls (an assistant message's, or an answer's):
-- "<|tool_call|>", the name, the words of the arguments.
local function call_units(out, calls)
  for _, c in ipairs(type(calls) == "table" and calls or {}) do
    local f = type(c) == "table" and (c["function"] or c) or {}
    out[#out + 1] = "<|tool_call|>"
    add_words(out, f.name)
    local a = f.arguments
    add_words(out, type(a) == "table" and canon(a) or a)
  end
end

--- The units of a request (its decoded body), in the order a chat
-- template puts them: with `tools`, "<|tools|>" then the words of each
-- tool's definition (as JSON with sorted keys); then each message:
-- "<|ROLE|>" (its role) then the words of its content (text parts'
-- words, one "<|TYPE|>" per media part) and of its tool calls
-- ("<|tool_call|>", name, arguments); last the generation prompt
-- "<|assistant|>". Words are runs of non-space characters. A native
-- request (/completion, /infill) without `messages`: the words of
-- `prompt` (a text, or one unit per token id), then of `input_prefix`,
-- `input_suffix`. A system prompt is the first message (the client
-- sends `system` so). Reasoning content is left out, as templates do.
function M.units(body)
  local out = {}
  if type(body) ~= "table" then return out end
  if type(body.messages) ~= "table" then
    local p = body.prompt
    if type(p) == "table" then
      for _, x in ipairs(p) do
        if type(x) == "string" then add_words(out, x) else out[#out + 1] = tostring(x) end
      end
    else
      add_words(out, p)
    end
    add_words(out, body.input_prefix)
    add_words(out, body.input_suffix)
    return out
  end
  if type(body.tools) == "table" and #body.tools > 0 then
    out[#out + 1] = "<|tools|>"
    for _, t in ipairs(body.tools) do add_words(out, canon(t)) end
  end
  for _, m in ipairs(body.messages) do
    if type(m) == "table" then
      out[#out + 1] = "<|" .. tostring(m.role) .. "|>"
      content_units(out, m.content)
      call_units(out, m.tool_calls)
    end
  end
  out[#out + 1] = "<|assistant|>"
  return out
end

--- The units of an answer: the words of its content, then its tool
-- calls' units (as in M.units).
function M.answer_units(content, tool_calls)
  local out = {}
  add_words(out, content)
  call_units(out, tool_calls)
  return out
end

--- The length of the longest common prefix of two lists of units.
function M.common_prefix(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    if a[i] ~= b[i] then return i - 1 end
  end
  return n
end

-- }======

-- {====== slots ======

local Cache = {}
Cache.__index = Cache

--- A cache of `opts.slots` slots (default 4, llama-server's default
-- --parallel), choosing by `opts.similarity` (default 0.1).
function M.new(opts)
  opts = opts or {}
  local c = setmetatable({ slots = {}, similarity = opts.similarity or 0.1, tick = 0 }, Cache)
  for i = 1, opts.slots or 4 do
    c.slots[i] = { id = i - 1, units = {}, last_used = -1, busy = false }
  end
  return c
end

--- Takes an idle slot for a prompt (a list of units): slot, figures; or
-- nil when every slot is busy (llama-server defers the task until one is
-- released). figures = {slot (its id, from 0), selected = "similarity" or
-- "lru", similarity (the common prefix / the prompt's length), cache_n,
-- prompt_n, prompt_tokens}. `no_cache`: the request said cache_prompt =
-- false.
function Cache:acquire(units, no_cache)
  local n = #units
  local best, best_sim, best_lcp = nil, 0, 0
  if self.similarity ~= 0 then
    for _, s in ipairs(self.slots) do
      if not s.busy and #s.units > 0 then
        local lcp = M.common_prefix(s.units, units)
        local sim = n > 0 and lcp / n or 0
        if sim > best_sim and sim > self.similarity then
          best, best_sim, best_lcp = s, sim, lcp
        end
      end
    end
  end
  local selected = "similarity"
  if not best then
    selected = "lru"
    for _, s in ipairs(self.slots) do
      if not s.busy and (not best or s.last_used <= best.last_used) then best = s end
    end
    if not best then return nil end
    best_lcp = M.common_prefix(best.units, units)
    best_sim = n > 0 and best_lcp / n or 0
  end
  best.busy = true
  local cache_n = no_cache and 0 or math.max(0, math.min(best_lcp, n - 1))
  return best, { slot = best.id, selected = selected, similarity = best_sim,
                 cache_n = cache_n, prompt_n = n - cache_n, prompt_tokens = n }
end

--- Releases a slot: it now holds `units` (the prompt and the answer's
-- units) and is the most recently used.
function Cache:release(slot, units)
  self.tick = self.tick + 1
  slot.units, slot.last_used, slot.busy = units, self.tick, false
end

--- The slots' state: {{id, units (count), busy, last_used}, ...}.
function Cache:state()
  local out = {}
  for i, s in ipairs(self.slots) do
    out[i] = { id = s.id, units = #s.units, busy = s.busy, last_used = s.last_used }
  end
  return out
end

-- }======

return M
