--- Images and audio in messages: content parts made from files or bytes,
-- in the OpenAI shape every provider takes from the caller (the Anthropic
-- and Ollama providers translate them). See docs/media.md.
--
--    local img = assert(llamacpp.image("cat.png"))
--    client:chat{ messages = { { role = "user", content = {
--      { type = "text", text = "What is in this picture?" }, img } } } }
--
-- @module llamacpp.media
local core = require "llamacpp.core"
local errors = require "llamacpp.errors"
local args = require "llamacpp.args"

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local open = io.open
local base64 = core.base64

local M = {}

--- Default of the `max_bytes` option: 20 MiB of file (the request carries
-- a third more, as base64).
M.MAX_BYTES = 20 * 1024 * 1024

-- Magic bytes: what a file's first bytes say it is.
local IMAGES = {
  { "^\137PNG\r\n\26\n", "image/png" },
  { "^\255\216\255", "image/jpeg" },
  { "^GIF8[79]a", "image/gif" },
  { "^RIFF....WEBP", "image/webp" },
  { "^BM", "image/bmp" },
}
local AUDIO = {
  { "^RIFF....WAVE", "wav" },
  { "^ID3", "mp3" },
  { "^\255[\224-\255]", "mp3" },          -- an MPEG audio frame's sync bits
  { "^fLaC", "flac" },
}

local function sniff(list, bytes)
  for _, m in ipairs(list) do
    if bytes:find(m[1]) then return m[2] end
  end
end

-- A name fit for a message: one line, not too long.
local function shown(s)
  s = s:gsub("[%c]", "?")
  return #s > 200 and s:sub(1, 200) .. "..." or s
end

local function fail(code, msg, fields)
  fields = fields or {}
  fields.code = code
  return nil, errors.new("media", msg, fields)
end

local OPTS = {
  image = { mime = "string", max_bytes = "number", detail = "string" },
  audio = { format = "string", max_bytes = "number" },
}

-- The bytes of src (a path, or the bytes themselves), checked against
-- the limit: bytes, path (nil for bytes) | nil, err.
local function load(fname, src, opts, list)
  args.check(type(src) == "string", 1, fname, "a file path or the file's bytes (string) expected, got " .. type(src))
  args.check(opts == nil or type(opts) == "table", 2, fname, args.expected("table", opts))
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = OPTS[fname][k]
    args.check(want ~= nil, 2, fname, "unknown option '" .. tostring(k) .. "'")
    args.check(type(v) == want, 2, fname, "'" .. k .. "' must be a " .. want)
  end
  local limit = opts.max_bytes or M.MAX_BYTES
  args.check(limit > 0, 2, fname, "'max_bytes' must be positive")
  -- bytes: a known signature, a NUL, or longer than any path
  local path
  if not (sniff(list, src) or src:find("\0", 1, true) or #src > 4096) then path = src end
  local bytes = src
  if path then
    local f, msg = open(path, "rb")
    if not f then
      return fail("UNREADABLE_FILE", "cannot read " .. fname .. " file: " .. shown(msg or path), { path = path })
    end
    local _, rerr = f:read(0)             -- a directory opens, and fails here
    if rerr then
      f:close()
      return fail("UNREADABLE_FILE", "cannot read " .. fname .. " file " .. shown(path) .. ": " .. rerr,
                  { path = path })
    end
    local size = f:seek("end")
    if size and size > limit then
      f:close()
      return fail("MEDIA_TOO_LARGE", fname .. " file " .. shown(path) .. " is " .. size ..
                  " bytes, over max_bytes (" .. limit .. ")", { path = path, size = size })
    end
    f:seek("set")
    bytes = f:read(limit + 1) or ""      -- nil: at the end already (empty)
    f:close()
  end
  if #bytes > limit then
    return fail("MEDIA_TOO_LARGE", fname .. (path and " file " .. shown(path) or "") .. " is " .. #bytes ..
                " bytes, over max_bytes (" .. limit .. ")", { path = path, size = #bytes })
  end
  if #bytes == 0 then
    return fail("UNREADABLE_FILE", fname .. (path and " file " .. shown(path) or "") .. " is empty", { path = path })
  end
  return bytes, path
end

local function unknown(fname, path, what)
  return fail("UNKNOWN_MEDIA_TYPE", "unknown " .. fname .. " type" .. (path and " of " .. shown(path) or "") ..
              " (not " .. what .. " by its first bytes): give its " ..
              (fname == "image" and "mime (e.g. mime = \"image/png\")" or "format (format = \"wav\" or \"mp3\")"),
              { path = path })
end

--- An image content part: `{type = "image_url", image_url = {url =
-- "data:<mime>;base64,<...>"}}`, the bytes base64-encoded by the C core.
-- `src` is a file path or the image's bytes (a string with a PNG, JPEG,
-- GIF, WebP or BMP signature, or a NUL byte, or longer than 4096 bytes is
-- bytes; any other string is a path).
-- @tparam string src a path or the bytes
-- @tparam[opt] table opts `mime` (default: from the magic bytes),
--   `max_bytes` (default @{MAX_BYTES}), `detail` (OpenAI's "low", "high", "auto")
-- @treturn table the part
-- @return[2] nil
-- @return[2] @{llamacpp.Error} of kind `media`: code `UNREADABLE_FILE`,
--   `UNKNOWN_MEDIA_TYPE` or `MEDIA_TOO_LARGE`
function M.image(src, opts)
  local bytes, path = load("image", src, opts, IMAGES)
  if not bytes then return nil, path end
  local mime = opts and opts.mime
  if mime then
    args.check(mime:find("^image/[%w.+-]+$") ~= nil, 2, "image", "'mime' must be an image type like 'image/png'")
  else
    mime = sniff(IMAGES, bytes)
    if not mime then return unknown("image", path, "PNG, JPEG, GIF, WebP or BMP") end
  end
  local part = { type = "image_url", image_url = { url = base64(bytes, "data:" .. mime .. ";base64,") } }
  if opts and opts.detail then part.image_url.detail = opts.detail end
  return part
end

--- An audio content part: `{type = "input_audio", input_audio = {data =
-- "<base64>", format = "wav"}}`. `src` as for @{image} (WAV, MP3 and FLAC
-- signatures are bytes).
-- @tparam string src a path or the bytes
-- @tparam[opt] table opts `format` ("wav", "mp3"; default: from the
--   magic bytes), `max_bytes` (default @{MAX_BYTES})
-- @treturn table the part
-- @return[2] nil
-- @return[2] @{llamacpp.Error} of kind `media` (codes as for @{image})
function M.audio(src, opts)
  local bytes, path = load("audio", src, opts, AUDIO)
  if not bytes then return nil, path end
  local format = opts and opts.format
  if format then
    args.check(format:find("^%l[%l%d]*$") ~= nil, 2, "audio", "'format' must be a name like 'wav' or 'mp3'")
  else
    format = sniff(AUDIO, bytes)
    if not format then return unknown("audio", path, "WAV, MP3 or FLAC") end
  end
  return { type = "input_audio", input_audio = { data = base64(bytes), format = format } }
end

-- What a content part is, for the media it carries: "image", "audio" or nil.
local function part_input(part)
  if type(part) ~= "table" then return nil end
  local t = part.type
  if t == "image_url" or t == "image" then return "image" end   -- OpenAI's; Anthropic's block
  if t == "input_audio" then return "audio" end
end

--- The inputs other than text a request's messages carry: `{image = true,
-- audio = true}` (the ones present), or nil when it is text only.
function M.inputs(req)
  local found
  local msgs = type(req) == "table" and req.messages
  for i = 1, type(msgs) == "table" and #msgs or 0 do
    local content = type(msgs[i]) == "table" and msgs[i].content
    for j = 1, type(content) == "table" and #content or 0 do
      local what = part_input(content[j])
      if what then
        found = found or {}
        found[what] = true
      end
    end
    if type(msgs[i]) == "table" and type(msgs[i].images) == "table" and #msgs[i].images > 0 then
      found = found or {}                         -- Ollama's own field
      found.image = true
    end
  end
  return found
end

return M
