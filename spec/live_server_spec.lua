-- Against a real llama-server, when one is available: router mode (issue
-- 16), a resumable stream (issue 20) and affinity's cache figures (issue
-- 18). The rest of the suite runs against fakes that answer as the
-- captures in ../shared/wire show; this spec checks the fakes' premises on
-- the real thing. It needs
--   LLAMACPP_TEST_SERVER   the llama-server binary (default: `llama-server` on PATH)
--   LLAMACPP_TEST_MODELS   a directory with at least one small GGUF (for --models-dir)
-- and says why it skips otherwise. The server listens on 127.0.0.1 only and
-- is stopped at the end (and killed by `timeout` after 600 s whatever happens).
local llamacpp = require "llamacpp"
local util = require "spec.util"
local socket = require "socket"

local function which(cmd)
  local h = io.popen("command -v " .. cmd .. " 2>/dev/null")
  local out = h:read("*l")
  h:close()
  return out
end

local bin = os.getenv("LLAMACPP_TEST_SERVER") or which("llama-server")
local dir = os.getenv("LLAMACPP_TEST_MODELS")
local why
if not bin then
  why = "no llama-server: set LLAMACPP_TEST_SERVER to the binary or put llama-server on PATH"
elseif not dir then
  why = "LLAMACPP_TEST_MODELS is not set (a directory with a small GGUF, for llama-server --models-dir)"
end

describe("a real llama-server", function()
  if why then
    it("is needed for these checks", function() pending(why) end)
    return
  end

  local port, proc, pid, c, names
  setup(function()
    port = util.closed_port()
    proc = io.popen(("echo $$; exec %s timeout 600 %q --models-dir %q --host 127.0.0.1 --port %d " ..
                     "--models-max 1 > /dev/null 2>&1"):format(util.CLEAN_ENV, bin, dir, port))
    pid = tonumber(proc:read("*l"))
    c = llamacpp.new{ endpoint = "http://127.0.0.1:" .. port }
    local deadline = socket.gettime() + 120            -- a hang guard
    while not c:health() do
      assert(socket.gettime() < deadline, "llama-server did not start on port " .. port)
      socket.sleep(0.2)
    end
    local list = assert(c:models())
    names = {}
    for i, m in ipairs(list.data) do names[i] = m.id end
    assert(#names > 0, "no models in " .. dir)
  end)
  teardown(function()
    if pid then os.execute("kill " .. pid .. " 2>/dev/null") end
    if proc then proc:close() end
  end)

  it("refuses a request without model, naming the models (router mode)", function()
    local res, err = c:tokenize("hello")
    assert.is_nil(res)
    assert.equal("model_required", err.code)
    assert.matches(names[1], err.message, 1, true)
  end)

  it("loads a model, answers with it, and unloads it", function()
    local m = llamacpp.new{ endpoint = c.endpoint, model = names[1] }
    assert(m:wait_ready{ model = names[1], timeout = 300 })
    local res = assert(m:chat{ messages = { { role = "user", content = "Say hi." } }, max_tokens = 8 })
    assert.is_string(res.content)
    assert.is_table(assert(m:tokenize("hello")))
    local found
    for _, e in ipairs(assert(c:models()).data) do
      if e.id == names[1] then found = e.state end
    end
    assert.equal("loaded", found)
    assert(c:unload_model(names[1]))
  end)

  it("resumes a stream it is told to leave, from an offset", function()
    local m = llamacpp.new{ endpoint = c.endpoint, model = names[1] }
    assert(m:wait_ready{ model = names[1], timeout = 300 })
    local s = m:open_stream{ messages = { { role = "user", content = "Count from 1 to 30." } },
                             max_tokens = 64, resumable = true }
    local first = {}
    for _ = 1, 3 do
      local ev = assert(s:next())
      if ev.type == "content" then first[#first + 1] = ev.content end
    end
    local id, at = s:detach()
    assert.is_string(id)
    local rest = {}
    local last
    for ev in m:resume_stream(id, { from = at }) do
      if ev.type == "content" then rest[#rest + 1] = ev.content end
      last = ev
    end
    assert.equal("done", last.type, last.error and last.error.message)
    assert.is_true(#table.concat(first) + #table.concat(rest) > 0)
  end)

  it("reports the cache figures affinity counts", function()
    local m = llamacpp.new{ endpoint = c.endpoint, model = names[1] }
    assert(m:wait_ready{ model = names[1], timeout = 300 })
    local msgs = { { role = "system", content = ("You are terse. "):rep(40) },
                   { role = "user", content = "Say hi." } }
    assert(m:chat{ messages = msgs, max_tokens = 4 })
    local res = assert(m:chat{ messages = msgs, max_tokens = 4 })
    assert.is_true(res.stats.cached_tokens > 0)
    assert.is_true(res.stats.input_tokens > res.stats.cached_tokens)
  end)
end)
