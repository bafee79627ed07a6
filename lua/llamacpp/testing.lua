--- llamacpp.testing: a real fake llama-server for your own specs.
--
-- Starts a server process on 127.0.0.1 (a free port; the project's own
-- fixture server) that answers with the replies you queue, in order,
-- streamed or not as each request asks, and logs every request:
--
--   local testing = require "llamacpp.testing"
--   local fake = testing.start()
--   fake:reply{ content = "Hello there." }
--   fake:reply{ tool_calls = { { name = "add", arguments = { a = 1, b = 2 } } } }
--   fake:reply{ status = 503, error = "Loading model" }
--   local client = require("llamacpp").new{ endpoint = fake.endpoint }
--   ... your code ...
--   fake:requests()[1].json.messages  -- what your code sent
--   fake:stop()
--
-- Needs LuaSocket and lua-cjson (Debian: lua-socket, lua-cjson).
-- It also replays raw response files and injects faults (below); the
-- project's specs use it through spec/fixture/control.lua:
--
--   local srv = testing.start{ dirs = { "spec/fixtures" } }
-- @module llamacpp.testing
--   local base = srv:replay("chat_stream", "pace=5")  -- http://127.0.0.1:P/replay/chat_stream/pace=5
--   ... requests to base .. "/v1/chat/completions" ...
--   srv:wait_for(function(r) return r.event == "abort" end, 5)
--   srv:stop()
--
-- Hostile servers: srv:hostile(name, opts) (generated answers: a header block
-- that never ends, a 100 MB line, ...), fixture.blackhole() (a port whose
-- connections are never accepted), fixture.https(opts) (openssl s_server with a
-- self-signed certificate made at run time). See README.md.

local socket = require "socket"
local cjson = require "cjson"
local args = require "llamacpp.args"

local M = {}

-- The server script, the module llamacpp.testing.server: run as a
-- script of its own, found beside this file.
local HERE = (debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./")
local SERVER = HERE .. "testing/server.lua"

--- The Lua interpreter the test kit starts its servers with: the one
-- running the tests (`luajit`, or `lua5.x` from `_VERSION`), or
-- `$LLAMACPP_TEST_LUA`. Use it for child processes of your own specs.
-- @treturn string a command name
local function interpreter()
  local env = os.getenv("LLAMACPP_TEST_LUA")
  if env and env ~= "" then return env end
  if type(jit) == "table" then return "luajit" end
  return "lua" .. (_VERSION:match("%d+%.%d+") or "5.4")
end

M.interpreter = interpreter

local function q(s) -- shell quoting
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- GET target on 127.0.0.1:port with a raw socket (so no proxy settings apply).
-- Returns body, status (number); nil, message on failure.
local function get(port, target, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 5)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then
    c:close()
    return nil, err
  end
  c:send("GET " .. target .. " HTTP/1.1\r\nHost: 127.0.0.1:" .. port ..
         "\r\nConnection: close\r\n\r\n")
  local data, rerr, partial = c:receive("*a") -- the server closes after answering
  c:close()
  data = data or partial
  local status = tonumber(data:match("^HTTP/1%.%d (%d+)") or "")
  local s, e = data:find("\r\n\r\n", 1, true)
  if not (status and s) then return nil, "bad answer (" .. tostring(rerr) .. "): " .. data end
  return data:sub(e + 1), status
end

local Server = {}
Server.__index = Server

-- The options of a caching server, checked: a JSON text for --cache.
local CACHE_KEYS = { slots = true, per_token = true, similarity = true, words = true, n_ctx = true }
local function cache_arg(c)
  args.check(type(c) == "table", 1, "start", "'cache' must be a table")
  for k in pairs(c) do
    args.check(CACHE_KEYS[k], 1, "start", "unknown cache option '" .. tostring(k) ..
               "' (slots, per_token, similarity, words, n_ctx)")
  end
  local function int(name, v)
    args.check(v == nil or (type(v) == "number" and v >= 1 and v == math.floor(v)), 1, "start",
               "cache." .. name .. " must be a whole number >= 1")
  end
  int("slots", c.slots)
  int("words", c.words)
  int("n_ctx", c.n_ctx)
  args.check(c.per_token == nil or (type(c.per_token) == "number" and c.per_token >= 0), 1, "start",
             "cache.per_token must be a number >= 0 (seconds)")
  args.check(c.similarity == nil or (type(c.similarity) == "number" and c.similarity >= 0
             and c.similarity <= 1), 1, "start", "cache.similarity must be a number from 0 to 1")
  return cjson.encode{ slots = c.slots or 4, per_token = c.per_token or 0,
                       similarity = c.similarity or 0.1, words = c.words or 2, n_ctx = c.n_ctx or 4096 }
end

-- The --inputs list of start's `inputs` option, checked.
local INPUTS = { text = true, image = true, audio = true }
local function inputs_arg(list)
  args.check(type(list) == "table" and #list > 0, 1, "start", "'inputs' must be a list like {\"text\", \"image\"}")
  for _, v in ipairs(list) do
    args.check(INPUTS[v] == true, 1, "start", "'inputs': unknown input '" .. tostring(v) ..
               "' (text, image or audio)")
  end
  return table.concat(list, ",")
end

--- Starts a server.
-- opts.dirs: directories of NAME.response files searched after the scratch directory;
-- opts.idle: seconds without activity after which the server exits (default 120);
-- opts.quiet: log only aborts and missing fixtures (for soak runs);
-- opts.cache: the server keeps a prompt cache as llama-server does (below);
-- opts.inputs: what its model takes, e.g. {"text", "image"}: a chat with an
-- image or audio part it does not take is refused under `srv.endpoint` as
-- llama-server without --mmproj refuses it (500 "image input is not
-- supported - hint: ..."), never with a queued reply, and a caching
-- server's /props says them (`modalities`). Without it every part is taken.
-- opts.unix: true (a socket in its scratch directory) or a path: the server
-- listens on that unix socket too, as `llama-server --host PATH.sock` does,
-- answering there as on its port; `srv.socket` is the path and
-- `srv.endpoint` reaches the queued replies through it
-- ("unix:PATH:http://localhost/script"). Control (log, stop) stays on the port.
--
-- With `cache = {slots =, per_token =, similarity =, words =, n_ctx =}` (all
-- optional) the server caches prompts like llama-server
-- (llamacpp.testing.cache says exactly how): it has `slots` slots
-- (default 4), each holding the last prompt it served as a list of units
-- (the fake's tokens: the words of the rendered conversation, "<|ROLE|>"
-- before each message, "<|tools|>" and the tools' JSON words first,
-- "<|assistant|>" last). A chat or completion takes the idle slot whose
-- prompt shares the longest common prefix with it, as a fraction of its
-- length above `similarity` (llama-server's --slot-prompt-similarity,
-- default 0.1), else the least recently used idle one (waiting while
-- all are busy); its answer reports `timings.cache_n` = that common
-- prefix (less one when the whole prompt is cached: the last unit is
-- always evaluated), `prompt_n` = the rest, `usage.prompt_tokens` = the
-- whole prompt and `usage.prompt_tokens_details.cached_tokens` =
-- cache_n, streamed or not; `cache_prompt = false` in the request: no
-- cache. Then the slot holds the prompt followed by the answer's words.
-- The answer waits `per_token` × prompt_n seconds before its first byte
-- (default 0: the cost of evaluating the prompt; timings.prompt_ms says
-- the same). A request with no reply queued gets a default answer
-- instead of the 500: content "ok N" (N: the request's number on
-- `srv.endpoint`), padded with filler words to `words` words (default
-- 2), and `{"status":"ok"}` on .../health. Queued replies still come
-- first and get the cache figures too (unless they give prompt_tokens
-- or cached_tokens themselves). The figures of each answer are in the
-- log (records with event "cache": slot, selected = "similarity" or
-- "lru", similarity, cache_n, prompt_n, prompt_tokens, waited, request =
-- the seq of its request record), on `srv:requests()` as `r.cache`, and
-- summed by `srv:cache_totals()`.
-- Its window is `n_ctx` units per slot (default 4096): `/props` says so
-- (`default_generation_settings.n_ctx`, `total_slots`), a generation
-- whose prompt has more units is refused as llama-server refuses it (400
-- `exceed_context_size_error` with `n_prompt_tokens` and `n_ctx`), and
-- `POST /v1/chat/completions/input_tokens` (and Anthropic's
-- `/v1/messages/count_tokens`) answers `{"input_tokens": N}`, N the units
-- the same request would have as a prompt. These answers (and /health's)
-- are the server's own: they never take a queued reply, which waits for
-- the next generation it lets through.
function M.start(opts)
  opts = opts or {}
  local cache_json = opts.cache ~= nil and cache_arg(opts.cache) or nil
  local sock = opts.unix or nil
  args.check(sock == nil or sock == true or (type(sock) == "string" and sock ~= ""), 1, "start",
             "'unix' must be true, false or a socket path")
  -- A fresh scratch directory for srv:write(), searched first.
  local scratch = os.tmpname()
  os.remove(scratch)
  scratch = scratch .. ".fixture"
  assert(os.execute("mkdir -p " .. q(scratch)))

  local cmd = { "exec", q(interpreter()), q(SERVER), "--dir", q(scratch) }
  for _, d in ipairs(opts.dirs or {}) do
    cmd[#cmd + 1] = "--dir " .. q(d)
  end
  if opts.idle then cmd[#cmd + 1] = "--idle " .. q(opts.idle) end
  if opts.quiet then cmd[#cmd + 1] = "--quiet" end
  if cache_json then cmd[#cmd + 1] = "--cache " .. q(cache_json) end
  if opts.inputs ~= nil then cmd[#cmd + 1] = "--inputs " .. q(inputs_arg(opts.inputs)) end
  if sock == true then sock = scratch .. "/llama.sock" end
  if sock then cmd[#cmd + 1] = "--unix " .. q(sock) end
  local proc = assert(io.popen(table.concat(cmd, " "), "r"))
  local line = proc:read("*l")
  local port = tonumber(line and line:match("^PORT (%d+)") or "")
  if not port then
    proc:close()
    os.execute("rm -rf " .. q(scratch))
    error("fixture server did not start: " .. tostring(line) .. " (" .. table.concat(cmd, " ") .. ")")
  end
  return setmetatable({
    port = port,
    url = "http://127.0.0.1:" .. port,
    -- answers with the queued replies
    endpoint = sock and ("unix:" .. sock .. ":http://localhost/script") or
               "http://127.0.0.1:" .. port .. "/script",
    socket = sock,
    scratch = scratch,
    proc = proc,
    nreplies = 0,
  }, Server)
end

--- Queues the answer to the next request made to `srv.endpoint` (any
-- path under it); requests take the queued replies in order, and one
-- with none left gets a 500 saying so. Chat answers come streamed or not
-- as the request asks (`stream`), in llama-server's exact shapes; a
-- streamed request with `prompt` and no `messages` gets /completion's
-- native stream (no role chunk, a last event with `stop`, no [DONE]).
-- reply fields (all optional):
--   content          the answer's text ("" by default)
--   tokens           the stream's pieces (default: content split at words)
--   reasoning        reasoning_content
--   tool_calls       {{name =, arguments = table or JSON text, id =}, ...}
--   finish_reason    default "stop" ("tool_calls" with tool calls)
--   prompt_tokens, completion_tokens   usage (default 10, one per piece)
--   cached_tokens    prompt tokens from the cache (default 0)
--   batch            with return_progress (`progress = true`): progress
--                    chunks from cached_tokens to prompt_tokens, batch
--                    tokens apart (default 64), before the first token
--   model            default: the request's model
--   status, error, error_type   an HTTP error (e.g. 503, "Loading model")
--   body, content_type, headers  any other answer, as given
--   delay            seconds before the first byte
--   pace             seconds between the pieces of a stream
--   disconnect_after N: the connection is cut after N pieces of a stream
--   error_after      N: an error object inside the 200 stream after N pieces
--   no_done          true: the stream ends without [DONE] (a truncated stream)
-- A stream sent with X-Conversation-Id is kept, as llama-server keeps it:
-- `GET <endpoint>/v1/stream/ID?from=N` sends its body from byte N (404
-- unknown or deleted, 400 a bad or lost offset), `DELETE` cancels (log
-- event "cancel"), `POST <endpoint>/v1/streams/lookup` answers for it.
--   cuts             {N1, N2, ...}: the first connection is cut after N1
--                    body bytes (de-chunked, as the server counts them),
--                    the next read of it (GET /v1/stream/ID) after N2, ...
--   cut_clean        true: a cut ends the chunked body properly (0 chunk)
--                    instead of dropping the connection
--   buffer           the server keeps only the last N body bytes (older
--                    offsets: 400 "Stream offset lost, please restart")
--   forget           true: the stream is not kept (a restarted server: 404)
function Server:reply(reply)
  args.check(type(reply) == "table", 1, "reply", args.expected("table", reply))
  self.nreplies = self.nreplies + 1
  local f = assert(io.open(self.scratch .. "/script." .. self.nreplies .. ".json", "wb"))
  f:write(cjson.encode(reply))
  f:close()
  return self
end

--- A fake llama-server in router mode (several models behind one server,
-- as `llama-server --models-dir DIR`), on this server: returns its
-- endpoint (a URL prefix; each call makes a new router with its own state).
-- It routes POSTs by the body's `model` and GETs by `?model=`, answers the
-- router's 400s (no model, an unknown one, one not loaded with autoload
-- off), lists the models with their status on `GET /models`, loads and
-- unloads them (`POST /models/load`, `/models/unload`), and names the
-- model that served each answer (chat content "model NAME", props'
-- `model_alias`, ...). conf fields (all optional):
--   models     {"a", {name = "b", fail = 1, n_ctx = 2048, aliases = {"c"}, inputs = {"text", "image"}}, ...}
--              (default {"tiny", "tiny-tools"}); `fail` = the exit code of a
--              child that dies while loading; `inputs` what it takes (default
--              {"text"}: image and audio parts are refused as without --mmproj)
--   loaded     names running at the start (default none)
--   load_time  seconds a load takes (default 0.2)
--   autoload   false: a request to a model not running is refused (default true)
--   metrics, embeddings   true: the router was started with these flags
--              (else the child answers 501)
--   swap       true: answer as llama-swap instead (POSTs routed by `model`,
--              `/upstream/NAME/...`, `/running`, `/unload`; see
--              llamacpp.testing.models)
function Server:router(conf)
  conf = conf or {}
  args.check(type(conf) == "table", 1, "router", args.expected("table", conf))
  if conf.models == nil then conf.models = { "tiny", "tiny-tools" } end
  args.check(type(conf.models) == "table" and #conf.models > 0, 1, "router",
             "'models' must be a non-empty list")
  self.nrouters = (self.nrouters or 0) + 1
  local id = "r" .. self.nrouters
  local f = assert(io.open(self.scratch .. "/router." .. id .. ".json", "wb"))
  f:write(cjson.encode(conf))
  f:close()
  return self.url .. "/router/" .. id
end

-- URL prefix that replays NAME.response with the given options ("-" for none).
function Server:replay(name, opts)
  return self.url .. "/replay/" .. name .. "/" .. (opts or "-")
end

-- URL prefix of a generated hostile answer (testing/README.md, "Hostile routes").
function Server:hostile(name, opts)
  return self.url .. "/hostile/" .. name .. "/" .. (opts or "-")
end

-- Log records (all, or those with seq > since), decoded.
function Server:log(since)
  local body, status = get(self.port, "/__log?since=" .. (since or 0))
  assert(body and status == 200, "fixture log: " .. tostring(status))
  return cjson.decode(body)
end

--- The requests received (after log record `since`), in order: {method,
-- path, headers, body, json, cache}, `json` being the body decoded when
-- it is JSON (else nil), `cache` the cache figures of its answer on a
-- caching server (see start: {slot, selected, similarity, cache_n,
-- prompt_n, prompt_tokens, waited}; nil for other answers).
function Server:requests(since)
  local out, by_seq = {}, {}
  for _, r in ipairs(self:log(since)) do
    if r.event == "request" then
      if type(r.body) == "string" and r.body ~= "" then
        local ok, v = pcall(cjson.decode, r.body)
        if ok then r.json = v end
      end
      out[#out + 1] = r
      by_seq[r.seq] = r
    elseif r.event == "cache" and by_seq[r.request] then
      by_seq[r.request].cache = r
    end
  end
  return out
end

--- The cache figures of a caching server's answers (after log record
-- `since`), summed: {answers, prompt_tokens, cache_n, prompt_n, lru
-- (answers whose slot was chosen as least recently used)}.
function Server:cache_totals(since)
  local t = { answers = 0, prompt_tokens = 0, cache_n = 0, prompt_n = 0, lru = 0 }
  for _, r in ipairs(self:log(since)) do
    if r.event == "cache" then
      t.answers = t.answers + 1
      t.prompt_tokens = t.prompt_tokens + r.prompt_tokens
      t.cache_n = t.cache_n + r.cache_n
      t.prompt_n = t.prompt_n + r.prompt_n
      if r.selected == "lru" then t.lru = t.lru + 1 end
    end
  end
  return t
end

-- Write NAME.response into the scratch directory (the server re-reads it per request).
function Server:write(name, bytes)
  local f = assert(io.open(self.scratch .. "/" .. name .. ".response", "wb"))
  f:write(bytes)
  f:close()
end

-- Poll the log until pred(record) is true for a record; returns it, or nil after
-- timeout_s seconds (default 5).
function Server:wait_for(pred, timeout_s)
  local deadline = socket.gettime() + (timeout_s or 5)
  local since = 0
  while true do
    for _, r in ipairs(self:log(since)) do
      if pred(r) then return r end
      since = r.seq
    end
    if socket.gettime() > deadline then return nil end
    socket.sleep(0.02)
  end
end

-- Stop the server and remove the scratch directory. Idempotent.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  get(self.port, "/__quit", 2)
  self.proc:close() -- waits for the process to exit
  os.execute("rm -rf " .. q(self.scratch))
end

---------------------------------------------------------------- building fixtures

local REASONS = {
  [200] = "OK", [400] = "Bad Request", [401] = "Unauthorized", [404] = "Not Found",
  [500] = "Internal Server Error", [501] = "Not Implemented", [503] = "Service Unavailable",
}

local function has_header(headers, name)
  for _, h in ipairs(headers) do
    if h[1]:lower() == name then return true end
  end
end

-- Raw HTTP/1.1 response bytes. status: a number (200) or a status text ("200 OK");
-- headers: array of {name, value}, in order. With opts.chunks (array of strings) the
-- body is chunked, one HTTP chunk per non-empty string (an empty one would end the
-- body) and Transfer-Encoding: chunked is added; else Content-Length is added. A
-- header given in `headers` is not added again (so a wrong one can be forced).
function M.http_response(status, headers, body, opts)
  headers, body, opts = headers or {}, body or "", opts or {}
  if type(status) == "number" then status = status .. " " .. (REASONS[status] or "Unknown") end
  local out = { "HTTP/1.1 " .. status .. "\r\n" }
  for _, h in ipairs(headers) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  if opts.chunks then
    if not has_header(headers, "transfer-encoding") then
      out[#out + 1] = "Transfer-Encoding: chunked\r\n"
    end
    out[#out + 1] = "\r\n"
    for _, c in ipairs(opts.chunks) do
      if #c > 0 then out[#out + 1] = string.format("%x\r\n%s\r\n", #c, c) end
    end
    out[#out + 1] = "0\r\n\r\n"
  else
    if not has_header(headers, "content-length") then
      out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
    end
    out[#out + 1] = "\r\n" .. body
  end
  return table.concat(out)
end

-- SSE body: "data: <e>\n\n" for each event string.
function M.sse_body(events)
  local out = {}
  for i, e in ipairs(events) do out[i] = "data: " .. e .. "\n\n" end
  return table.concat(out)
end

---------------------------------------------------------------- hostile peers

-- A port on 127.0.0.1 that never completes a TCP handshake: a listening socket
-- whose accept queue is full (backlog 0, never accepted, filled by our own
-- connections), so the kernel drops further SYNs and a client's connect hangs
-- until its connect timeout. bh.port, bh.url, bh:close().
function M.blackhole()
  local srv = assert(socket.tcp())
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(0))
  local _, port = srv:getsockname()
  local fill = {}
  for i = 1, 4 do
    local c = socket.tcp()
    c:settimeout(0)
    c:connect("127.0.0.1", port)
    fill[i] = c
  end
  socket.sleep(0.05)
  return {
    port = tonumber(port),
    url = "http://127.0.0.1:" .. port,
    close = function()
      for _, c in ipairs(fill) do c:close() end
      srv:close()
    end,
  }
end

local function sh_ok(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local Https = {}
Https.__index = Https

-- An HTTPS server on 127.0.0.1: `openssl s_server -HTTP` with a self-signed
-- certificate generated now. opts.san: the certificate's subjectAltName
-- (default "IP:127.0.0.1,DNS:localhost"). It serves GET /PATH with the file
-- written by h:write(PATH, bytes), which must be a complete HTTP response with
-- "Connection: close" (s_server handles one connection at a time). Fields: url,
-- port, ca_file (the certificate, to trust), ca_path (a hashed directory with
-- it). Returns nil, reason when the openssl command is missing or fails.
function M.https(opts)
  opts = opts or {}
  if not sh_ok("command -v openssl >/dev/null 2>&1") then
    return nil, "the openssl command is not installed (apt-get install openssl)"
  end
  local dir = os.tmpname()
  os.remove(dir)
  dir = dir .. ".https"
  local san = opts.san or "IP:127.0.0.1,DNS:localhost"
  local gen = "mkdir -p " .. q(dir .. "/www") .. " " .. q(dir .. "/cadir") .. " && cd " .. q(dir) ..
    " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes" ..
    " -keyout key.pem -out cert.pem -days 2 -subj /CN=llamacpp-test" ..
    " -addext " .. q("subjectAltName=" .. san) .. " >gen.log 2>&1" ..
    " && cp cert.pem cadir/ && openssl rehash cadir >>gen.log 2>&1"
  if not sh_ok(gen) then
    os.execute("rm -rf " .. q(dir))
    return nil, "openssl could not make a certificate"
  end
  -- `timeout` ends the server if the tests die without stopping it
  local proc = assert(io.popen("cd " .. q(dir .. "/www") .. " && echo PID $$ &&" ..
    " exec timeout 900 openssl s_server -accept 127.0.0.1:0 -HTTP" ..
    " -cert ../cert.pem -key ../key.pem >../server.log 2>&1", "r"))
  local pid = tonumber((proc:read("*l") or ""):match("^PID (%d+)") or "")
  local port
  local deadline = socket.gettime() + 10
  while pid and not port and socket.gettime() < deadline do
    local f = io.open(dir .. "/server.log", "rb")
    local log = f and f:read("*a") or ""
    if f then f:close() end
    port = tonumber(log:match("ACCEPT [^\n]*:(%d+)") or "")
    if not port then socket.sleep(0.02) end
  end
  local h = setmetatable({ dir = dir, proc = proc, pid = pid, port = port,
                           ca_file = dir .. "/cert.pem", ca_path = dir .. "/cadir",
                           url = "https://127.0.0.1:" .. tostring(port) }, Https)
  if not port then
    h:stop()
    return nil, "openssl s_server did not start"
  end
  return h
end

-- Serve bytes (a complete HTTP response) at GET /path.
function Https:write(path, bytes)
  assert(not path:find("..", 1, true) and not path:find("^/"), "bad path " .. path)
  local d = path:match("^(.*)/[^/]*$")
  if d then os.execute("mkdir -p " .. q(self.dir .. "/www/" .. d)) end
  local f = assert(io.open(self.dir .. "/www/" .. path, "wb"))
  f:write(bytes)
  f:close()
end

-- Stop the server (the process this module started, by its id). Idempotent.
function Https:stop()
  if self.stopped then return end
  self.stopped = true
  if self.pid then os.execute("kill " .. self.pid .. " 2>/dev/null") end
  self.proc:close()
  os.execute("rm -rf " .. q(self.dir))
end

return M
