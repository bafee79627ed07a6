--- llamacpp.nvim.loader: where the plugin is installed, and the llamacpp
-- module (its Lua files and its C core built for LuaJIT) loaded from there.
--
-- The repository is the plugin: a plugin manager (lazy.nvim, packer,
-- vim-plug, a pack/*/start clone) puts its root on 'runtimepath', so
-- lua/llamacpp/*.lua are found by Neovim's own loader; the C core is
-- build/luajit/llamacpp/core.so, which `make nvim` builds. This file finds
-- the root from its own path, resolved once at load time (symlinks
-- followed, a relative 'runtimepath' made absolute before any :cd).
-- luacheck: read globals vim
local M = {}

local uv = vim.uv or vim.loop

-- The root of the checkout this file lives in
-- (ROOT/lua/llamacpp/nvim/loader.lua), absolute and with symlinks resolved.
local function own_root()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) ~= "@" then return nil end
  local file = vim.fn.fnamemodify(src:sub(2), ":p")
  file = uv.fs_realpath(file) or file
  return vim.fn.fnamemodify(file, ":h:h:h:h")
end

M.root = own_root()

-- This root's Lua files on package.path too, so that they are found even
-- when 'runtimepath' holds the root as a relative path and the user
-- :cd's away (Neovim's own loader then misses them).
if M.root and vim.fn.filereadable(M.root .. "/lua/llamacpp/nvim.lua") == 1 then
  package.path = M.root .. "/lua/?.lua;" .. M.root .. "/lua/?/init.lua;" .. package.path
end

--- The C core this checkout builds for LuaJIT (may not exist).
function M.core_path(root)
  return (root or M.root) .. "/build/luajit/llamacpp/core.so"
end

local added = {}

-- Puts root's Lua files and LuaJIT build first on the package paths.
local function use_root(root)
  if added[root] then return end
  added[root] = true
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  package.cpath = root .. "/build/luajit/?.so;" .. package.cpath
end

--- The llamacpp module, or raises with what to do. `root` (setup{root=})
-- is a checkout to use instead of this plugin's own.
function M.load(root)
  root = root and vim.fn.fnamemodify(root, ":p"):gsub("/$", "") or M.root
  if root and vim.fn.filereadable(root .. "/lua/llamacpp/init.lua") == 1 then
    -- the core next to these Lua files, when built, before any other
    if vim.fn.filereadable(M.core_path(root)) == 1 or root ~= M.root then use_root(root) end
  end
  local ok, mod = pcall(require, "llamacpp")
  if ok then return mod end
  local hint
  if root and vim.fn.filereadable(M.core_path(root)) == 0 then
    hint = "the C module is not built: run `make nvim` in " .. root ..
           " (it needs libcurl's and LuaJIT's headers: `make deps` on Debian)"
  else
    hint = "install it with `luarocks --lua-version 5.1 install llamacpp`, or build a checkout" ..
           " with `make nvim` and pass setup{root = \"/path/to/checkout\"}"
  end
  error("llamacpp: cannot load the llamacpp module: " .. tostring(mod) .. "\n" .. hint, 0)
end

return M
