--- llamacpp.testing.render: a scripted reply as llama-server would send it.
-- Pure functions (no I/O), used by the fake server (llamacpp.testing.server)
-- to answer a request with the reply a test queued. The shapes follow the
-- captures in spec/fixtures (chat_nonstream, chat_stream_usage, tc_*).
-- @module llamacpp.testing.render
local cjson = require "cjson"

local M = {}

local concat, fmt, floor = table.concat, string.format, math.floor
local null = cjson.null

local REASONS = { [200] = "OK", [400] = "Bad Request", [401] = "Unauthorized",
                  [404] = "Not Found", [429] = "Too Many Requests",
                  [500] = "Internal Server Error", [501] = "Not Implemented",
                  [503] = "Service Unavailable" }

local ERROR_TYPES = { [400] = "invalid_request_error", [401] = "authentication_error",
                      [404] = "not_found_error", [429] = "rate_limit_error",
                      [500] = "server_error", [501] = "not_supported_error",
                      [503] = "unavailable_error" }

-- " Hello world, again" -> {" Hello", " world,", " again"}
local function words(s)
  local out = {}
  for w in s:gmatch("%s*%S+") do out[#out + 1] = w end
  local tail = s:match("%s+$")
  if tail then out[#out + 1] = tail end
  return out
end
M.words = words

local function head(status, headers)
  local out = { fmt("HTTP/1.1 %d %s\r\n", status, REASONS[status] or "Status") }
  for _, h in ipairs(headers) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  out[#out + 1] = "\r\n"
  return concat(out)
end

local function chunk(s)
  return fmt("%x\r\n%s\r\n", #s, s)
end

local function args_text(a)
  if type(a) == "table" then return cjson.encode(a) end
  return a or "{}"
end

--- The raw HTTP response for `reply` given the decoded request body
-- (`req`, may be nil) and a serial number `n` (for ids). Returns the
-- header block and an array of body pieces (one per HTTP chunk for
-- streams), and the index of the last piece to send before a scripted
-- disconnect (nil: all), and for streams the body de-chunked.
function M.response(reply, req, n)
  req = type(req) == "table" and req or {}
  local status = reply.status or 200
  local extra = {}
  for name, value in pairs(reply.headers or {}) do extra[#extra + 1] = { name, tostring(value) } end
  table.sort(extra, function(a, b) return a[1] < b[1] end)

  if reply.body ~= nil or status >= 400 then
    local body = reply.body
    if body == nil then
      body = cjson.encode{ error = { code = status, type = reply.error_type or ERROR_TYPES[status] or "server_error",
                                     message = reply.error or REASONS[status] or "error" } }
    end
    local h = { { "Content-Type", reply.content_type or "application/json; charset=utf-8" },
                { "Content-Length", tostring(#body) } }
    if status >= 400 then h[#h + 1] = { "Connection", "close" } end
    for _, x in ipairs(extra) do h[#h + 1] = x end
    return head(status, h), { body }
  end

  local model = reply.model or req.model or "testing.gguf"
  local id = "chatcmpl-testing-" .. tostring(n or 1)
  local created = 1795628704 + (n or 1)
  local tokens = reply.tokens or words(reply.content or "")
  local reasoning = reply.reasoning and (reply.reasoning_tokens or words(reply.reasoning)) or {}
  local calls = reply.tool_calls or {}
  local finish = reply.finish_reason or (#calls > 0 and "tool_calls" or "stop")
  local cached = reply.cached_tokens or 0
  local usage = { prompt_tokens = reply.prompt_tokens or 10,
                  completion_tokens = reply.completion_tokens or (#tokens + #reasoning + #calls),
                  prompt_tokens_details = { cached_tokens = cached } }
  usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
  local timings = { cache_n = cached, prompt_n = usage.prompt_tokens - cached,
                    prompt_ms = reply.prompt_ms or 1.0,
                    predicted_n = usage.completion_tokens, predicted_ms = 1.0 }
  timings.prompt_per_second = timings.prompt_n * 1000 / timings.prompt_ms
  timings.predicted_per_second = timings.predicted_n * 1000 / timings.predicted_ms

  if not req.stream then
    local msg = { role = "assistant", content = reply.content or (#calls > 0 and "" or concat(tokens)) }
    if reply.reasoning then msg.reasoning_content = reply.reasoning end
    if #calls > 0 then
      msg.tool_calls = {}
      for i, c in ipairs(calls) do
        msg.tool_calls[i] = { type = "function", id = c.id or ("call_" .. i),
                              ["function"] = { name = c.name, arguments = args_text(c.arguments) } }
      end
    end
    local body = cjson.encode{ choices = { { finish_reason = finish, index = 0, message = msg } },
                               created = created, model = model, system_fingerprint = "b0-testing",
                               object = "chat.completion", usage = usage, id = id, timings = timings }
    local h = { { "Keep-Alive", "timeout=5, max=100" },
                { "Content-Type", "application/json; charset=utf-8" },
                { "Content-Length", tostring(#body) } }
    for _, x in ipairs(extra) do h[#h + 1] = x end
    return head(status, h), { body }
  end

  local function ev(delta, fin, progress)
    return "data: " .. cjson.encode{ choices = { { finish_reason = fin or null, index = 0, delta = delta } },
                                    created = created, id = id, model = model,
                                    system_fingerprint = "b0-testing", object = "chat.completion.chunk",
                                    prompt_progress = progress } .. "\n\n"
  end
  local pieces, before, events = {}, 0, 0
  local native = req.prompt ~= nil and req.messages == nil
  if native then                     -- /completion, /infill: no role chunk, no [DONE]
    for i, t in ipairs(tokens) do
      pieces[i] = "data: " .. cjson.encode{ index = 0, content = t, stop = false, id_slot = 0,
                                            tokens_predicted = i, tokens_evaluated = usage.prompt_tokens } .. "\n\n"
    end
    pieces[#pieces + 1] = "data: " .. cjson.encode{ index = 0, content = "", stop = true, id_slot = 0,
                                                    model = model, stop_type = finish == "length" and "limit" or "eos",
                                                    tokens_predicted = #tokens, tokens_evaluated = usage.prompt_tokens,
                                                    tokens_cached = cached, timings = timings } .. "\n\n"
  else
    if req.return_progress then    -- as llama-server: from the cache on, one chunk per batch
      local total, batch, done, t = usage.prompt_tokens, reply.batch or 64, cached, 0
      while true do
        pieces[#pieces + 1] = ev({ role = "assistant", content = null }, nil,
                                 { total = total, cache = cached, processed = done, time_ms = t })
        if done >= total then break end
        done, t = math.min(done + batch, total), t + 1
      end
    end
    before = #pieces                        -- progress chunks
    pieces[#pieces + 1] = ev{ role = "assistant", content = null }
    for _, r in ipairs(reasoning) do pieces[#pieces + 1] = ev{ reasoning_content = r } end
    for _, t in ipairs(tokens) do pieces[#pieces + 1] = ev{ content = t } end
    for i, c in ipairs(calls) do
      local a = args_text(c.arguments)
      pieces[#pieces + 1] = ev{ tool_calls = { { index = i - 1, id = c.id or ("call_" .. i), type = "function",
                                                   ["function"] = { name = c.name, arguments = "" } } } }
      for _, frag in ipairs(words(a)) do
        pieces[#pieces + 1] = ev{ tool_calls = { { index = i - 1, ["function"] = { arguments = frag } } } }
      end
    end
    events = #pieces - 1                    -- reply events after the role chunk (and progress)
    pieces[#pieces + 1] = ev({}, finish)
    pieces[#pieces + 1] = "data: " .. cjson.encode{ choices = {}, created = created, id = id, model = model,
                                                    system_fingerprint = "b0-testing",
                                                    object = "chat.completion.chunk", usage = usage,
                                                    timings = timings } .. "\n\n"
    if reply.error_after then               -- llama-server's error inside a 200 stream
      local cut = math.min(before + floor(reply.error_after) + 1, #pieces)
      for i = #pieces, cut + 1, -1 do pieces[i] = nil end
      pieces[#pieces + 1] = "data: " .. cjson.encode{ error = { code = 500, type = "server_error",
                                                      message = reply.error or "error during generation" } } .. "\n\n"
    elseif not reply.no_done then
      pieces[#pieces + 1] = "data: [DONE]\n\n"
    end
  end
  local sse = concat(pieces)                    -- the body, de-chunked
  for i = 1, #pieces do pieces[i] = chunk(pieces[i]) end
  pieces[#pieces + 1] = "0\r\n\r\n"
  local h = { { "Keep-Alive", "timeout=5, max=100" }, { "Transfer-Encoding", "chunked" },
              { "Access-Control-Allow-Origin", "" }, { "X-Accel-Buffering", "no" },
              { "Server", "llamacpp.testing" }, { "Content-Type", "text/event-stream" } }
  for _, x in ipairs(extra) do h[#h + 1] = x end
  local stop_at
  if reply.disconnect_after and native then
    stop_at = math.min(floor(reply.disconnect_after), #pieces - 1)
  elseif reply.disconnect_after then
    stop_at = before + math.min(1 + floor(reply.disconnect_after), events - before + 1)
  end
  return head(status, h), pieces, stop_at, sse
end

--- The head of a chunked SSE answer (as llama-server's streams), for a
-- body sent in pieces of the caller's choosing.
function M.sse_head()
  return head(200, { { "Keep-Alive", "timeout=5, max=100" }, { "Transfer-Encoding", "chunked" },
                     { "Server", "llamacpp.testing" }, { "Content-Type", "text/event-stream" } })
end
M.chunk = chunk

--- llama-server's refusal of a request with an image or audio part that
-- its model does not take (no --mmproj: the media_*_no_mmproj captures),
-- as a reply; nil when `inputs` (a set: {text = true, image = true})
-- takes every part of body's messages.
function M.media_refusal(body, inputs)
  local msgs = type(body) == "table" and body.messages
  for _, m in ipairs(type(msgs) == "table" and msgs or {}) do
    local content = type(m) == "table" and m.content
    for _, part in ipairs(type(content) == "table" and content or {}) do
      local t = type(part) == "table" and part.type
      local what = (t == "image_url" and "image") or (t == "input_audio" and "audio") or nil
      if what and not inputs[what] then
        return { status = 500, error_type = "server_error", error = what ..
                 " input is not supported - hint: if this is unexpected, you may need to provide the mmproj" }
      end
    end
  end
end

--- llama-server's error answer: status, headers and JSON body.
function M.error_response(status, message, etype)
  local body = cjson.encode{ error = { code = status, type = etype or ERROR_TYPES[status] or "server_error",
                                       message = message } }
  return head(status, { { "Content-Type", "application/json; charset=utf-8" },
                        { "Content-Length", tostring(#body) }, { "Connection", "close" } }) .. body
end

return M
