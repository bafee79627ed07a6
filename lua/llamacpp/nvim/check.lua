--- llamacpp.nvim.check: `:checkhealth llamacpp` (autoload/health/llamacpp.vim
-- calls check()). The C module and its Lua ABI, libcurl, the server, its
-- model and context size, the options. The server is asked on Neovim's
-- loop (vim.wait runs it), a few seconds at most.
-- luacheck: read globals vim
local M = {}

-- vim.health (0.10+) or the health#report_* functions (0.7 - 0.9).
local function reporter()
  local h = vim.health
  if h and h.start and h.ok then
    return { start = h.start, ok = h.ok, warn = h.warn, error = h.error, info = h.info }
  end
  local f = vim.fn
  return {
    start = function(s) f["health#report_start"](s) end,
    ok = function(s) f["health#report_ok"](s) end,
    warn = function(s, a) f["health#report_warn"](s, a or {}) end,
    error = function(s, a) f["health#report_error"](s, a or {}) end,
    info = function(s) f["health#report_info"](s) end,
  }
end

-- llamacpp.uv.request(client, name) on the loop, waited for with vim.wait.
local function ask(client, name, ms)
  local res, err, over
  local h = require("llamacpp.uv").request(client, name, {}, function(a, b)
    res, err, over = a, b, true
  end)
  vim.wait(ms, function() return over end, 20)
  if not over then
    h:cancel()
    return nil, "no answer in " .. ms / 1000 .. " s"
  end
  return res, err
end

function M.check()
  local R = reporter()
  local plugin = require("llamacpp.nvim")
  local loader = require("llamacpp.nvim.loader")
  local cfg = plugin.config()

  R.start("llamacpp: Neovim")
  local v = vim.version()
  R.ok(string.format("Neovim %d.%d.%d, %s, event loop vim.%s", v.major, v.minor, v.patch,
                     jit and jit.version or _VERSION, vim.uv and "uv" or "loop"))
  R.info("plugin root: " .. tostring(loader.root))

  R.start("llamacpp: the module")
  local ok, llamacpp = pcall(loader.load, cfg.root)
  if not ok then
    R.error(tostring(llamacpp), { "run `make nvim` in " .. tostring(cfg.root or loader.root) })
    return
  end
  local searchpath = rawget(package, "searchpath")
  local core = searchpath and searchpath("llamacpp.core", package.cpath) or "?"
  R.ok(llamacpp._VERSION .. ", C core " .. tostring(core) .. " (loaded by " ..
       (jit and jit.version or _VERSION) .. ": its Lua ABI matches)")
  local built = loader.core_path(cfg.root)
  if core ~= "?" and vim.fn.filereadable(built) == 1 and vim.fn.resolve(core) ~= vim.fn.resolve(built) then
    R.warn("the core in use is not this checkout's build (" .. built .. ")")
  end
  R.ok("libcurl: " .. tostring(llamacpp.curl_version()))
  ok = pcall(require, "cjson")
  if ok then R.ok("lua-cjson found") else R.error("lua-cjson is missing", { "apt install lua-cjson" }) end

  R.start("llamacpp: the server")
  local cok, client = pcall(plugin.client)
  if not cok then
    R.error("bad options: " .. tostring(client))
    return
  end
  R.info("endpoint: " .. tostring(client.endpoint))
  local health, herr = ask(client, "health", 5000)
  if not health then
    local e = tostring(herr):gsub("^llamacpp: ", "")
    if type(herr) == "table" and herr.status == 503 then
      R.warn("llama-server is loading its model: " .. e)
    else
      R.error(e, { "start llama-server (llama-server -m model.gguf --port 8080)",
                   "or set the endpoint: setup{ endpoint = ... } or $LLAMACPP_ENDPOINT" })
    end
    return
  end
  R.ok("llama-server answers /health")
  local props, perr = ask(client, "props", 5000)
  if not props then
    R.warn("GET /props failed: " .. tostring(perr))
  else
    local gen = type(props.default_generation_settings) == "table" and props.default_generation_settings or {}
    R.ok("model: " .. tostring(props.model_alias or props.model_path or "?") ..
         ", context: " .. tostring(gen.n_ctx or "?") .. " tokens" ..
         (props.total_slots and (", " .. props.total_slots .. " slots") or ""))
  end

  R.start("llamacpp: options")
  R.ok("inline completion " .. ((package.loaded["llamacpp.nvim.fim"] and
       require("llamacpp.nvim.fim").enabled()) and "on" or "off") ..
       ", reasoning " .. cfg.reasoning .. ", wait through loading " .. cfg.wait_loading .. " s")
end

return M
