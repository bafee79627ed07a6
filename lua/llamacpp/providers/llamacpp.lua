--- The llama.cpp provider: llama-server's OpenAI-compatible Chat Completions
-- (`/v1/chat/completions`), as the captures in spec/fixtures show it. The
-- translation is the one of providers/openai.lua, with llama-server's
-- defaults: endpoint http://127.0.0.1:8080 (without /v1), max_tokens 2048.
-- Pure translation: request tables in, response tables and events out;
-- no I/O here.
--
-- Every provider module has the same shape (the client uses nothing else):
--   name, label              "llamacpp", "llama-server" (label: in messages)
--   default_endpoint         used when the client has none
--   chat_path, framing       "/v1/chat/completions", "sse" | "ndjson"
--   template                 optional {head, mid, tail}: events of that exact
--                            shape reach feed() as their text, name == true
--   headers(key)             -> array of "Name: value" lines (auth & co.)
--   chat_body(req, stream, model) -> the JSON body as a table
--   count_path, count_fields optional: where a chat body is sent to count its
--                            input tokens ({"input_tokens": n}), and the body
--                            fields that endpoint takes (nil: all but
--                            max_tokens and stream)
--   parse_chat(obj)          -> result table | nil, Error
--   decoder(opts)            -> d with d:feed(data, event_name, push) -> Error|nil,
--                               d.finished (terminator seen), d:partial(), d:done();
--                               opts.assemble == false: keep no text (partial()
--                               and done().content are nil). feed may return
--                               nil, ev for a single event instead of push(ev).
-- The framing decides what feed() gets: "sse" gives each event's data and
-- its `event:` name (nil for the default); "ndjson" one line, name nil.
-- When the transfer ends the client emits d:done() if d.finished, else a
-- `truncated` error. Request fields that are not the server's (`system`,
-- `tier`) are the provider's to remove; the others pass through. What
-- providers share (the request check, the decoder's scaffolding) is in
-- providers/base.lua.

-- llama-server's plain token chunk:
--   {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"<text>"}}],
--    "created":<n>,"id":"...","model":"...","system_fingerprint":"...",
--    "object":"chat.completion.chunk"}
-- given to the C core as a template: such an event (nothing after the
-- delta, no object or array after "created") reaches feed() as its text
-- alone, JSON escapes undone, with name == true: no JSON decode in Lua.
local LLAMA_TEMPLATE = {
  '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"',
  '"}}],"created":',
  '"object":"chat.completion.chunk"}',
}

return require("llamacpp.providers.openai").variant{
  name = "llamacpp",
  label = "llama-server",
  default_endpoint = "http://127.0.0.1:8080",
  chat_path = "/v1/chat/completions",
  default_max_tokens = 2048,
  template = LLAMA_TEMPLATE,
  llama = true,             -- our options in llama-server's fields (openai.llama_options)
}
