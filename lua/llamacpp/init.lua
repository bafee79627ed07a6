--- llamacpp: a Lua client for llama.cpp's llama-server, on libcurl.
-- local llamacpp = require "llamacpp"
-- local client = llamacpp.new{ endpoint = "http://127.0.0.1:8080" }
local core = require "llamacpp.core"
local client = require "llamacpp.client"
local errors = require "llamacpp.errors"

local M = {
  _VERSION = "llamacpp " .. core.version,
  version = core.version,
  curl_version = core.curl_version,
  errors = errors,
  Error = errors.Error,
  json = require "llamacpp.json",
}

--- Creates a client: see DESIGN.md section 2 for the options.
M.new = client.new

return M
