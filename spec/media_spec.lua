-- Images and audio: parts made from files and bytes (base64 in the C core,
-- checked against coreutils' base64 over every byte value), what goes on
-- the wire, and llama-server's refusal without a projector, mapped from
-- the real captures (media_*_no_mmproj).
local llamacpp = require "llamacpp"
local core = require "llamacpp.core"
local cjson = require "cjson"
local fixture = require "fixture.control"
local util = require "spec.util"

local DIR = "spec/fixtures/media/"

local function tmpfile(bytes)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

-- coreutils' base64 of a file: the reference encoder
local function reference(path)
  local p = assert(io.popen("base64 -w0 < '" .. path .. "'"))
  local s = p:read("*a")
  p:close()
  return s
end

-- the body of a captured request
local function captured_body(name)
  local raw = util.read("spec/fixtures/" .. name .. ".request")
  return cjson.decode(raw:match("\r\n\r\n(.*)$"))
end

describe("base64 in the C core", function()
  it("matches coreutils for every byte value and every length mod 3", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    all = all .. all:reverse() .. all:sub(2)      -- 767 bytes: every value, every position mod 3
    for n = 0, 12 do
      local path = tmpfile(all:sub(1, n))
      assert.equal(reference(path), core.base64(all:sub(1, n)), "length " .. n)
      os.remove(path)
    end
    local path = tmpfile(all)
    assert.equal(reference(path), core.base64(all))
    os.remove(path)
  end)

  it("matches coreutils on 3 MB of random bytes, and puts the prefix in front", function()
    local p = assert(io.popen("head -c 3000001 /dev/urandom"))
    local bytes = p:read("*a")
    p:close()
    assert.equal(3000001, #bytes)
    local path = tmpfile(bytes)
    local ref = reference(path)
    os.remove(path)
    assert.equal(ref, core.base64(bytes))
    assert.equal("data:x;base64," .. ref, core.base64(bytes, "data:x;base64,"))
    assert.equal("pre", core.base64("", "pre"))
  end)

  it("raises on what is not a string", function()
    assert.has_error(function() core.base64({}) end)
  end)
end)

describe("llamacpp.image and llamacpp.audio", function()
  it("make the part llama-server was sent in the captures, from the file", function()
    local sent = captured_body("media_image_no_mmproj").messages[1].content[2]
    assert.same(sent, assert(llamacpp.image(DIR .. "pixel.png")))
    local heard = captured_body("media_audio_no_mmproj").messages[1].content[2]
    assert.same(heard, assert(llamacpp.audio(DIR .. "tone.wav")))
  end)

  it("take the bytes as well as a path, and find the type by the magic bytes", function()
    local png = util.read(DIR .. "gradient.png")
    local part = assert(llamacpp.image(png))
    assert.equal("data:image/png;base64," .. core.base64(png), part.image_url.url)
    assert.equal(reference(DIR .. "gradient.png"), part.image_url.url:match(",(.*)$"))
    assert.matches("^data:image/gif;base64,", assert(llamacpp.image(DIR .. "pixel.gif")).image_url.url)
    local jpeg = "\255\216\255\224\0\16JFIF\0" .. string.rep("\1", 40)
    assert.matches("^data:image/jpeg;base64,", assert(llamacpp.image(jpeg)).image_url.url)
    local webp = "RIFF\0\0\0\0WEBPVP8 " .. string.rep("\0", 20)
    assert.matches("^data:image/webp;base64,", assert(llamacpp.image(webp)).image_url.url)
    assert.equal("mp3", assert(llamacpp.audio("ID3\3\0\0\0\0\0\0" .. string.rep("\0", 30))).input_audio.format)
    assert.equal("mp3", assert(llamacpp.audio("\255\251\144\0" .. string.rep("\0", 30))).input_audio.format)
    assert.equal("flac", assert(llamacpp.audio("fLaC\0\0\0\34" .. string.rep("\0", 30))).input_audio.format)
  end)

  it("take the type given, and OpenAI's detail", function()
    local part = assert(llamacpp.image("\0\1\2", { mime = "image/x-raw", detail = "low" }))
    assert.equal("data:image/x-raw;base64,AAEC", part.image_url.url)
    assert.equal("low", part.image_url.detail)
    local a = assert(llamacpp.audio(DIR .. "pixel.png", { format = "wav" }))   -- the caller knows best
    assert.equal("wav", a.input_audio.format)
  end)

  it("return a media error for a file missing, empty, a directory, of unknown type or too large", function()
    local part, err = llamacpp.image("/nonexistent/cat.png")
    assert.is_nil(part)
    assert.equal("media", err.kind)
    assert.equal("UNREADABLE_FILE", err.code)
    assert.is_false(err.retryable)
    assert.matches("/nonexistent/cat.png", err.message, 1, true)

    local empty = tmpfile("")
    err = select(2, llamacpp.image(empty))
    assert.equal("UNREADABLE_FILE", err.code)
    assert.matches("is empty", err.message, 1, true)
    os.remove(empty)

    err = select(2, llamacpp.image("spec/fixtures"))
    assert.equal("UNREADABLE_FILE", err.code)

    local text = tmpfile("just some text, not an image\n")
    err = select(2, llamacpp.image(text))
    assert.equal("UNKNOWN_MEDIA_TYPE", err.code)
    assert.matches("mime", err.message, 1, true)
    err = select(2, llamacpp.audio(text))
    assert.equal("UNKNOWN_MEDIA_TYPE", err.code)
    assert.matches("format", err.message, 1, true)
    os.remove(text)

    err = select(2, llamacpp.image(DIR .. "gradient.png", { max_bytes = 100 }))
    assert.equal("MEDIA_TOO_LARGE", err.code)
    assert.matches("over max_bytes %(100%)", err.message)
    err = select(2, llamacpp.image(util.read(DIR .. "gradient.png"), { max_bytes = 100 }))
    assert.equal("MEDIA_TOO_LARGE", err.code)
    assert.is_nil(part)
    -- one line, even for a path with a newline in it
    err = select(2, llamacpp.image("/nonexistent/a\nb.png"))
    assert.is_nil(tostring(err):find("\n"))
  end)

  it("raise on bad arguments", function()
    assert.has_error(function() llamacpp.image(42) end)
    assert.has_error(function() llamacpp.image(DIR .. "pixel.png", { mimetype = "image/png" }) end,
                     "bad argument #2 to 'image' (unknown option 'mimetype')")
    assert.has_error(function() llamacpp.image(DIR .. "pixel.png", { mime = "png" }) end)
    assert.has_error(function() llamacpp.audio(DIR .. "tone.wav", { format = "WAV file" }) end)
    assert.has_error(function() llamacpp.audio(DIR .. "tone.wav", { max_bytes = 0 }) end)
  end)
end)

describe("media and llama-server", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function ask(part)
    return { messages = { { role = "user", content = { { type = "text", text = "What is in this image?" },
                                                     part } } }, max_tokens = 16 }
  end

  it("sends the parts as they are, byte for byte", function()
    local c = llamacpp.new{ endpoint = srv.endpoint }
    srv:reply{ content = "A pixel." }
    local since = util.last_seq and util.last_seq(srv) or 0
    local img, wav = assert(llamacpp.image(DIR .. "gradient.png")), assert(llamacpp.audio(DIR .. "tone.wav"))
    local req = ask(img)
    req.messages[1].content[3] = wav
    local res = assert(c:chat(req))
    assert.equal("A pixel.", res.content)
    local got = srv:requests(since)
    local body = got[#got].json
    assert.same(img, body.messages[1].content[2])
    assert.same(wav, body.messages[1].content[3])
    assert.equal(reference(DIR .. "gradient.png"), body.messages[1].content[2].image_url.url:match(",(.*)$"))
  end)

  it("maps the refusal without a projector to unsupported_media, not retryable, saying what to do", function()
    for _, case in ipairs{ { "media_image_no_mmproj", "image" }, { "media_audio_no_mmproj", "audio" },
                           { "media_image_bad_base64", "image" } } do
      local c = llamacpp.new{ endpoint = srv:replay(case[1]), api_key = "sk-secret-media-1234" }
      local res, err = c:chat(ask(llamacpp.image(DIR .. "pixel.png")))
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(500, err.status)
      assert.equal("unsupported_media", err.code)
      assert.equal(case[2], err.input)
      assert.is_false(err.retryable)
      local msg = tostring(err)
      assert.matches(case[2] .. " input is not supported", msg, 1, true)
      assert.matches("--mmproj", msg, 1, true)
      assert.is_nil(msg:find("\n"))
      assert.is_nil(msg:find("sk-secret", 1, true))
    end
  end)

  it("ends a stream with the same error before any event", function()
    local c = llamacpp.new{ endpoint = srv:replay("media_image_no_mmproj_stream") }
    local evs = {}
    for ev in c:chat_stream(ask(llamacpp.image(DIR .. "pixel.png"))) do evs[#evs + 1] = ev end
    assert.equal(1, #evs)
    assert.equal("error", evs[1].type)
    assert.equal("unsupported_media", evs[1].error.code)
    assert.is_false(evs[1].error.retryable)
  end)
end)

describe("media and the other providers", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function last_body()
    local got = srv:requests(0)
    return got[#got].json, #got
  end

  local function ask(...)
    return { messages = { { role = "user", content = { { type = "text", text = "Look." }, ... } } } }
  end

  it("Anthropic gets image blocks with the bytes, and a refusal before sending for audio or BMP", function()
    local c = llamacpp.new{ provider = "anthropic", endpoint = srv:replay("anthropic_message"), api_key = "k" }
    local img = assert(llamacpp.image(DIR .. "gradient.png"))
    assert(c:chat(ask(img)))
    local b, n = last_body()
    assert.same({ type = "image", source = { type = "base64", media_type = "image/png",
                  data = reference(DIR .. "gradient.png") } }, b.messages[1].content[2])
    assert.has_error(function() c:chat(ask(assert(llamacpp.audio(DIR .. "tone.wav")))) end,
                     "bad request: Anthropic's Messages API takes no audio ('input_audio' parts)")
    assert.has_error(function() c:chat(ask(assert(llamacpp.image("BM" .. string.rep("\0", 60))))) end,
                     "bad request: Anthropic takes JPEG, PNG, GIF and WebP images, not image/bmp")
    assert.equal(n, select(2, last_body()))         -- nothing more was sent
  end)

  it("Ollama gets the base64 in the message's images, and a refusal before sending for audio", function()
    local c = llamacpp.new{ provider = "ollama", endpoint = srv:replay("ollama_chat"), model = "llava" }
    assert(c:chat(ask(assert(llamacpp.image(DIR .. "pixel.png")), assert(llamacpp.image(DIR .. "pixel.gif")))))
    local b, n = last_body()
    assert.equal("Look.", b.messages[1].content)
    assert.same({ reference(DIR .. "pixel.png"), reference(DIR .. "pixel.gif") }, b.messages[1].images)
    assert.has_error(function() c:chat(ask(assert(llamacpp.audio(DIR .. "tone.wav")))) end,
                     "bad request: Ollama's /api/chat takes no audio ('input_audio' parts)")
    assert.equal(n, select(2, last_body()))
  end)
end)

describe("routing by what a model takes", function()
  local router = require "llamacpp.router"
  local text_srv, vision_srv, router_srv
  setup(function()
    text_srv = fixture.start{ inputs = { "text" } }
    vision_srv = fixture.start{ inputs = { "text", "image" } }
    router_srv = fixture.start()
  end)
  teardown(function()
    text_srv:stop()
    vision_srv:stop()
    router_srv:stop()
  end)

  local IMG = assert(llamacpp.image(DIR .. "pixel.png"))
  local function with_image()
    return { messages = { { role = "user", content = { { type = "text", text = "What is it?" }, IMG } } } }
  end
  local TEXT = { messages = { { role = "user", content = "Hi" } } }

  -- chats that reached srv's endpoint since `since`, and whether each had an image
  local function chats(srv, since)
    local out = {}
    for _, r in ipairs(srv:requests(since)) do
      if r.json and r.json.messages then
        out[#out + 1] = type(r.json.messages[1].content) == "table" and "image" or "text"
      end
    end
    return out
  end

  local function tiers(text_extra, vision_extra)
    local a = { name = "text", endpoint = text_srv.endpoint }
    local b = { name = "vision", endpoint = vision_srv.endpoint }
    for k, v in pairs(text_extra or {}) do a[k] = v end
    for k, v in pairs(vision_extra or {}) do b[k] = v end
    return { main = { a, b } }
  end

  it("learns from the refusal: the next image skips the text-only model, text still goes to it", function()
    local r = router.new{ tiers = tiers(), backoff = { base = 0.01, max = 0.02 } }
    local t0, v0 = util.last_seq(text_srv), util.last_seq(vision_srv)
    for i = 1, 3 do vision_srv:reply{ content = "a pixel " .. i } end
    text_srv:reply{ content = "hello" }
    local res = assert(r:chat(with_image()))
    assert.equal("vision", res.provider)
    assert.equal("unsupported_media", res.attempts[1].error.code)
    res = assert(r:chat(with_image()))
    assert.equal("vision", res.provider)
    assert.equal("unsupported", res.attempts[1].error.kind)       -- skipped, not asked
    assert.matches("takes no image input (learned from a refusal)", res.attempts[1].error.message, 1, true)
    assert.same({ "image" }, chats(text_srv, t0))             -- asked once, then never again
    res = assert(r:chat(TEXT))
    assert.equal("text", res.provider)
    assert.same({ "image", "text" }, chats(text_srv, t0))
    assert.same({ "image", "image" }, chats(vision_srv, v0))
    assert.same({ image = false }, r:status()[1].inputs)
    -- a stream the same way
    local evs = {}
    for ev in r:chat_stream(with_image()) do evs[#evs + 1] = ev end
    assert.equal("done", evs[#evs].type)
    assert.equal("vision", evs[#evs].provider)
    assert.same({ "image", "text" }, chats(text_srv, t0))
  end)

  it("never sends an image to a deployment declared without it, and says so when none takes it", function()
    local r = router.new{ tiers = tiers({ inputs = { "text" } }), backoff = { base = 0.01, max = 0.02 } }
    local t0 = util.last_seq(text_srv)
    vision_srv:reply{ content = "a pixel" }
    local res = assert(r:chat(with_image()))
    assert.equal("vision", res.provider)
    assert.equal("unsupported", res.attempts[1].error.kind)
    assert.same({}, chats(text_srv, t0))
    assert.same({ text = true }, r:status()[1].inputs)

    local only = router.new{ tiers = { main = { { name = "text", endpoint = text_srv.endpoint,
                                                  inputs = { "text" } } } } }
    local _, err = only:chat(with_image())
    assert.equal("no_provider", err.kind)
    assert.matches("it takes no image input", err.message, 1, true)
    assert.same({}, chats(text_srv, t0))
    assert.has_error(function() router.new{ tiers = { main = { { endpoint = text_srv.endpoint,
                                                                 inputs = { "video" } } } } } end)
  end)

  it("learns from a router-mode server's model list (architecture.input_modalities)", function()
    local ep = router_srv:router{ models = { "tiny", { name = "vis", inputs = { "text", "image" } } },
                                  load_time = 0 }
    local r = router.new{ health_check = { interval = 60 }, tiers = { main = {
      { name = "tiny", endpoint = ep, model = "tiny" }, { name = "vis", endpoint = ep, model = "vis" } } } }
    local s0 = util.last_seq(router_srv)
    local res = assert(r:chat(with_image()))
    assert.equal("vis", res.provider)
    assert.equal("model vis", res.content)
    assert.equal("unsupported", res.attempts[1].error.kind)
    assert.matches("learned from its model list", res.attempts[1].error.message, 1, true)
    for _, q in ipairs(router_srv:requests(s0)) do
      if q.json and q.json.messages then assert.equal("vis", q.json.model) end
    end
    assert.same({ text = true, image = false, audio = false }, r:status()[1].inputs)
    -- and the model without a projector refuses as llama-server does, when asked directly
    local _, err = llamacpp.new{ endpoint = ep, model = "tiny" }:chat(with_image())
    assert.equal("unsupported_media", err.code)
  end)
end)

describe("media on the event loop", function()
  local has_luv, luv = pcall(require, "luv")
  if not has_luv then
    it("needs luv", function() pending("luv is not installed for " .. _VERSION .. ": apt-get install lua-luv") end)
    return
  end
  local lu = require "llamacpp.uv"
  local router = require "llamacpp.router"
  local text_srv, vision_srv
  setup(function()
    text_srv = fixture.start{ inputs = { "text" } }
    vision_srv = fixture.start{ inputs = { "text", "image" } }
  end)
  teardown(function()
    text_srv:stop()
    vision_srv:stop()
  end)

  it("routes an image past the model that refused it, and maps the refusal", function()
    local req = { messages = { { role = "user", content = { assert(llamacpp.image(DIR .. "pixel.png")) } } } }
    local r = router.new{ tiers = { main = { { name = "text", endpoint = text_srv.endpoint },
                                             { name = "vision", endpoint = vision_srv.endpoint } } },
                          backoff = { base = 0.01, max = 0.02 } }
    vision_srv:reply{ content = "a pixel" }
    local res, err, direct
    lu.router_chat(r, req, function(a, b) res, err = a, b end, { uv = luv })
    lu.chat(llamacpp.new{ endpoint = text_srv.endpoint }, req, function(_, e) direct = e end, { uv = luv })
    luv.run()
    assert.is_nil(err)
    assert.equal("vision", res.provider)
    assert.equal("unsupported_media", res.attempts[1].error.code)
    assert.equal("unsupported_media", direct.code)
    assert.is_false(direct.retryable)
  end)
end)
