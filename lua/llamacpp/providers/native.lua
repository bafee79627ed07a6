--- llama-server's native endpoints /completion and /infill: their answers
-- and their streams (no [DONE]: the last event has "stop": true). Not a
-- chat provider (the client calls result and decoder for those methods),
-- but the same translation on providers/base.lua: only this wire's
-- differences are here.
local base = require "llamacpp.providers.base"

local M = {}

local type = type
local str, int, ints = base.str, base.int, base.ints

-- stop_type "eos" (end of generation) and "word" (a stop string) are a
-- normal stop; "limit" is n_predict or the context running out.
local stop_reason = base.stop_reasons{ eos = "stop", word = "stop", limit = "length", none = false }

local function usage_of(obj)
  return { input_tokens = int(obj.tokens_evaluated), output_tokens = int(obj.tokens_predicted) }
end

--- A non-streamed answer as a result table.
function M.result(obj)
  if type(obj) ~= "table" or type(obj.content) ~= "string" then
    return base.bad_answer("llama-server answer has no content", obj)
  end
  return {
    content = obj.content,
    stop_reason = stop_reason(obj.stop_type),
    stop_type = obj.stop_type,
    stopping_word = obj.stopping_word ~= "" and obj.stopping_word or nil,
    tokens_predicted = int(obj.tokens_predicted),
    tokens_evaluated = int(obj.tokens_evaluated),
    usage = usage_of(obj),
    timings = ints(obj.timings),
    probs = type(obj.completion_probabilities) == "table" and obj.completion_probabilities or nil,
    model = str(obj.model),
    raw = obj,
  }
end

--- Stream decoder: one SSE event per feed(); `finished` on the event with
-- "stop": true, which has the stop reason, counts and timings.
local Decoder = base.decoder_class("llama-server")
M.decoder = Decoder.new

function Decoder:feed(data, _, push)
  local obj, err = self:decode(data)
  if not obj then return err end
  base.progress(push, obj.prompt_progress)
  local probs = obj.completion_probabilities      -- n_probs
  self:text(push, "content", obj.content, "probs", type(probs) == "table" and probs or nil)
  if obj.stop == true then
    self.finished = true
    self.last = obj
  end
  return nil
end

-- The done event: what the last event says, with its stop_type, and that
-- event itself as `raw`.
function Decoder:done()
  local obj = self.last or {}
  self.stop_reason, self.usage = stop_reason(obj.stop_type), usage_of(obj)
  self.timings, self.model = ints(obj.timings), str(obj.model)
  local ev = base.Decoder.done(self)
  ev.stop_type = obj.stop_type
  ev.raw = self.last
  return ev
end

return M
