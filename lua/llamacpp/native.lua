--- llama-server's native endpoints /completion and /infill: their answers
-- and their streams (no [DONE]: the last event has "stop": true).
local json = require "llamacpp.json"
local errors = require "llamacpp.errors"
local text = require "llamacpp.text"

local M = {}

local type = type

local int, ints = json.int, json.ints

-- stop_type "eos" (end of generation) and "word" (a stop string) are a
-- normal stop; "limit" is n_predict or the context running out.
local STOP = { eos = "stop", word = "stop", limit = "length" }

local function stop_reason(obj)
  local st = obj.stop_type
  if type(st) ~= "string" or st == "none" then return nil end
  return STOP[st] or st
end

--- A non-streamed answer as a result table.
function M.result(obj)
  if type(obj) ~= "table" or type(obj.content) ~= "string" then
    return nil, errors.new("protocol", "llama-server answer has no content",
                           { body = json.encode(obj):sub(1, 4096) })
  end
  return {
    content = obj.content,
    stop_reason = stop_reason(obj),
    stop_type = obj.stop_type,
    stopping_word = obj.stopping_word ~= "" and obj.stopping_word or nil,
    tokens_predicted = int(obj.tokens_predicted),
    tokens_evaluated = int(obj.tokens_evaluated),
    usage = { input_tokens = int(obj.tokens_evaluated), output_tokens = int(obj.tokens_predicted) },
    timings = ints(obj.timings),
    probs = type(obj.completion_probabilities) == "table" and obj.completion_probabilities or nil,
    model = type(obj.model) == "string" and obj.model or nil,
    raw = obj,
  }
end

local Decoder = {}
Decoder.__index = Decoder

function M.decoder(opts)
  return setmetatable({ content = text.new(text.keep(opts)),
                        finished = false }, Decoder)
end

function Decoder:feed(data, _, push)
  local obj, err = errors.decode_event(data)
  if not obj then return err end
  if obj.error ~= nil then return errors.in_stream(data, obj.error, "llama-server") end
  local c = obj.content
  if type(c) == "string" and c ~= "" then
    self.content:add(c)
    local ev = { type = "content", content = c }
    if type(obj.completion_probabilities) == "table" then ev.probs = obj.completion_probabilities end
    push(ev)
  end
  if obj.stop == true then
    self.finished = true
    self.last = obj
  end
  return nil
end

function Decoder:partial()
  return self.content:get()
end

function Decoder:done()
  local obj = self.last or {}
  return {
    type = "done",
    content = self.content:get(),
    stop_reason = stop_reason(obj),
    stop_type = obj.stop_type,
    usage = { input_tokens = int(obj.tokens_evaluated), output_tokens = int(obj.tokens_predicted) },
    timings = ints(obj.timings),
    model = type(obj.model) == "string" and obj.model or nil,
    raw = self.last,
  }
end

return M
