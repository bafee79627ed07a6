--- A Lua client for llama.cpp's llama-server, on libcurl.
--
--    local llamacpp = require "llamacpp"
--    local client = llamacpp.new{ endpoint = "http://127.0.0.1:8080" }
--    local res, err = client:chat{ messages = { { role = "user", content = "Hi" } } }
--
-- Programmer errors raise; everything that can fail at run time returns
-- `nil, err` (or ends a stream with an `error` event), `err` being an
-- @{Error}. See @{llamacpp.client} for the client and its streams.
-- @module llamacpp
local core = require "llamacpp.core"
local client = require "llamacpp.client"
local errors = require "llamacpp.errors"
local args = require "llamacpp.args"

local M = {
  _VERSION = "llamacpp " .. core.version,
  version = core.version,
  errors = errors,
  Error = errors.Error,
  json = require "llamacpp.json",
}

--- Options of @{new}. Unknown options raise. Times are in seconds.
-- @table options
-- @field endpoint base URL, default `http://127.0.0.1:8080`; may carry a path
--   prefix (a reverse proxy's `http://host/llama/`); trailing slashes tolerated;
--   or a unix socket (`llama-server --host /run/llama.sock`): `unix:PATH`
--   (requests to `http://localhost` over PATH) or `unix:PATH:URL` (that URL's
--   Host and prefix over PATH, e.g. `unix:/run/llama.sock:http://llm/v1`)
-- @field api_key string, or a function returning one (called per request);
--   sent as `Authorization: Bearer`; never printed
-- @field model default `model` of requests
-- @field headers extra headers `{name = value}`; CR, LF or NUL raise
-- @field session_header a header name (`"X-Session-Id"`): a chat request's
--   `session` is sent in it, for gateways that route by it; by default a
--   session is never sent
-- @field provider `"llamacpp"` (default), `"openai"`, `"ollama"` or `"anthropic"`
-- @field connect_timeout default 10
-- @field first_byte_timeout from the start of a request to the answer's first
--   byte; none by default (prompt processing can take minutes)
-- @field idle_timeout longest silence between bytes once the answer started; 300
-- @field timeout total; none by default
-- @field max_event bytes of one stream event, default 16 MiB
-- @field max_body bytes of a whole answer, default 64 MiB
-- @field proxy proxy URL; otherwise libcurl's `http_proxy` & co. apply, except
--   to loopback endpoints
-- @field ca_file CA bundle for TLS verification (on by default); default
--   `$CURL_CA_BUNDLE` or `$SSL_CERT_FILE` when set, as curl's tool reads them
-- @field ca_path CA directory; default `$SSL_CERT_DIR` when set
-- @field insecure `true` turns TLS verification off
-- @field warn `function(message)` hearing warnings (an API key sent over
--   plain `http://` to a host that is not loopback), once per endpoint;
--   default: written to stderr; `false`: none
-- @field follow_redirects follow redirects (off by default; credentials are
--   not sent to another host)

--- Stream events, in order: with `progress = true`, `progress` events
-- while the server reads the prompt; any number of `content`, `reasoning`
-- and `tool_call`, then exactly one `done` or `error`, then the end.
-- @table event
-- @field type `"progress"`, `"content"`, `"reasoning"`, `"tool_call"`,
--   `"done"` or `"error"`
-- @field processed progress: prompt tokens read so far, the cached ones included
-- @field total progress: the prompt's tokens
-- @field cached progress: prompt tokens taken from the server's cache
-- @field time_ms progress: the server's time spent on the prompt so far
-- @field content text of a content or reasoning event; on `done`, all the text
-- @field logprobs on content events when asked (`logprobs = true`)
-- @field probs on content events of completion streams with `n_probs`
-- @field index tool_call: which call (0-based)
-- @field id tool_call: the call's id
-- @field name tool_call: the function's name
-- @field arguments tool_call: a fragment of the JSON arguments
-- @field reasoning done: all the reasoning text, if any
-- @field tool_calls done: `{{id =, name =, arguments = "<json>"}, ...}`, if any
-- @field stop_reason done: `"stop"`, `"length"`, `"tool_calls"`, ...
-- @field usage done: `{input_tokens =, output_tokens =, ...}`
-- @field timings done: llama-server's timings (prompt_n, predicted_per_second, ...)
-- @field stats done: the figures of @{stats}
-- @field error error: the @{Error}
-- @field provider with the router: the deployment that answered
-- @field resumed done of a resumable stream: how many times it reattached
--   after a cut (0: never cut)

--- The figures of one answer, the same for every provider: `done.stats`
-- and the `stats` of whole results. From the server's own numbers where
-- it gives them (llama-server's usage and timings, Ollama's counts and
-- durations, Anthropic's usage), and from the client's monotonic clock.
-- A figure the server does not give is absent, never made up.
-- @table stats
-- @field input_tokens the whole prompt, the part from the cache included
-- @field cached_tokens prompt tokens taken from the cache
-- @field output_tokens tokens generated
-- @field prompt_ms the server's time reading the prompt
-- @field generation_ms the server's time generating
-- @field prompt_tokens_per_s prompt tokens read per second
-- @field generation_tokens_per_s tokens generated per second
-- @field first_token_ms streams: from the request's start to the first
--   content, reasoning or tool-call event (progress does not count)
-- @field total_ms from the request's start to its end (of the attempt that
--   answered, with the router)
-- @field resumed resumable streams: the reattaches after a cut, as `done.resumed`

--- Run-time failures: `nil, err` from calls, the `error` of a last event.
-- A table whose metatable is `llamacpp.Error` (also `llamacpp.Error`);
-- `tostring(err)` gives one line, never with the API key.
-- @table Error
-- @field kind `connection`, `timeout`, `tls`, `network`, `truncated`, `http`,
--   `protocol`, `cancelled`, `no_provider`, `model` (router-mode models) or
--   `context` (client:fit: what must be kept is over the budget), `tool` (an
--   agent's failed tool call, with `on_tool_error = "raise"`), `media`
--   (@{image} and @{audio}: a file unreadable, of unknown type or too large) (and, in a
--   router's `attempts` only, `unsupported`: that deployment cannot express
--   the request)
-- @field message what happened, e.g. `llama-server not running at <endpoint>`
-- @field retryable whether another try may succeed
-- @field status HTTP status
-- @field code libcurl's name (`COULDNT_CONNECT`) or the server's error type
-- @field phase timeouts: `connect`, `first_byte`, `idle` or `total`
-- @field retry_after seconds, from `Retry-After`
-- @field provider provider (or, with the router, deployment) name
-- @field endpoint the endpoint, without credentials
-- @field request_id the server's request id header, if any
-- @field body the server's answer, at most 4 KiB
-- @field partial text received before a mid-stream failure
-- @field detail libcurl's own message
-- @field gateway `true` when a gateway or proxy answered instead of the server
-- @field proxy the proxy (URL without credentials) whose failure this is
-- @field n_prompt_tokens llama-server's context-size error
-- @field n_ctx llama-server's context-size error
-- @field input_tokens, budget `context` errors: the request's size and its budget
-- @field attempts no_provider: `{{provider =, endpoint =, error =}, ...}`

--- Creates a client.
-- @function new
-- @tparam[opt] table opts @{options}
-- @treturn llamacpp.client.Client
M.new = client.new

--- Creates an agent: a tool loop with Lua functions as tools, over a
-- client or a router (see @{llamacpp.agent.new} for its options and
-- docs/agents.md).
-- @usage local agent = llamacpp.agent{ client = client, tools = { add = { ..., run = function(args) end } } }
-- local res, err = agent:run("What is 12.5 + 30?")
-- @function agent
-- @tparam table opts
-- @treturn llamacpp.agent.Agent
function M.agent(opts) return require("llamacpp.agent").new(opts) end

--- An image content part from a file or its bytes (base64 in the C
-- core): see @{llamacpp.media.image}.
-- @usage content = { { type = "text", text = "Describe it." }, assert(llamacpp.image("cat.png")) }
-- @function image
-- @tparam string src a file path or the bytes
-- @tparam[opt] table opts `mime`, `max_bytes`, `detail`
-- @treturn table the part, or nil and an @{Error} of kind `media`
function M.image(src, opts) return require("llamacpp.media").image(src, opts) end

--- An audio content part from a file or its bytes: see @{llamacpp.media.audio}.
-- @function audio
-- @tparam string src a file path or the bytes
-- @tparam[opt] table opts `format`, `max_bytes`
-- @treturn table the part, or nil and an @{Error} of kind `media`
function M.audio(src, opts) return require("llamacpp.media").audio(src, opts) end

--- libcurl's version and those of its libraries, as `curl --version` names
-- them ("libcurl/7.88.1 OpenSSL/3.0.15 zlib/1.2.13 ..."). Made when called:
-- making it loads parts of all those libraries.
-- @treturn string
M.curl_version = core.curl_version

--- The arguments of a tool call (from res.tool_calls or a done event) as
-- a table, or nil and a protocol Error when the model wrote invalid JSON.
-- @tparam table call `{name =, arguments = "<json text>"}`
-- @treturn table the arguments
-- @return[2] nil
-- @return[2] @{Error} of kind `protocol`, code `BAD_TOOL_ARGUMENTS`
function M.tool_arguments(call)
  args.check(type(call) == "table", 1, "tool_arguments", args.expected("table", call))
  local text = call.arguments
  if type(text) == "table" then return text end       -- already decoded (Ollama)
  if text == nil or text:match("^%s*$") then return {} end
  local v, msg = M.json.decode(text)
  if type(v) ~= "table" then
    return nil, errors.new("protocol", "tool call '" .. tostring(call.name) ..
      "' has invalid JSON arguments: " .. tostring(msg or "not an object"),
      { code = "BAD_TOOL_ARGUMENTS", body = text:sub(1, 4096) })
  end
  return v
end

return M
