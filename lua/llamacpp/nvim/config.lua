--- llamacpp.nvim.config: the plugin's options, their defaults, and the
-- checks setup() runs on them (vim.validate, with the option's full name
-- in the message).
-- luacheck: read globals vim
local M = {}

-- Options that go to llamacpp.new (it checks their values itself).
M.CLIENT = {
  endpoint = "string", api_key = { "string", "function" }, model = "string", headers = "table",
  connect_timeout = "number", first_byte_timeout = "number", idle_timeout = "number",
  timeout = "number", provider = "string", ca_file = "string", ca_path = "string",
  proxy = "string",
}

M.DEFAULTS = {
  root = nil,                -- a llamacpp checkout to load the module from (default: this plugin's)
  system = nil,              -- the chat's system prompt
  params = {},               -- more request fields for the chat (max_tokens, temperature, ...)
  fit = true,                -- fit the history to the context window before each send (client:fit):
                             -- the oldest turns are left out (and the chat says so)
  progress = true,           -- ask for prompt-processing progress events (shown while waiting)
  wait_loading = 300,        -- seconds to wait through llama-server's 503 "Loading model"
  resume = true,             -- resumable replies: a cut is resumed, and a reply streaming when
                             -- Neovim quits goes on on the server, for :LlamaResume after a restart
  reasoning = "fold",        -- "fold" | "show" | "hide"
  split = "botright vsplit", -- how the chat window opens
  names = { user = "You", assistant = "llama" },   -- the turns' headers
  mappings = true,           -- <CR> (send), q (close) in the chat buffer
  fim = {
    enabled = false,         -- inline completion as you type (:LlamaFimToggle)
    debounce_ms = 150,       -- quiet time after a keystroke before asking
    prefix_lines = 256,      -- lines above the cursor sent as input_prefix
    suffix_lines = 64,       -- lines below the cursor sent as input_suffix
    n_predict = 128,         -- most tokens a suggestion has
    ring_chunks = 16,        -- chunks of other buffers kept as input_extra
    chunk_lines = 64,        -- lines in one such chunk
    filetypes = { ["*"] = true },
    keys = { accept = "<Tab>", accept_line = "<S-Tab>", dismiss = "<C-]>" },
    params = {},             -- more /infill fields (t_max_predict_ms, samplers, ...)
  },
}

local function kinds(want)
  return type(want) == "table" and want or { want }
end

-- vim.validate{ name = {value, types, optional} } with `prefix` before
-- the name; raises "llamacpp.setup: <prefix><name>: expected ..., got ..."
local function check(prefix, spec)
  local full = {}
  for k, v in pairs(spec) do full[prefix .. k] = v end
  local ok, err = pcall(vim.validate, full)
  if not ok then error("llamacpp.setup: " .. tostring(err):gsub("^.-:%d+: ", ""), 0) end
end

-- Options whose default is nil (not in DEFAULTS as keys).
local OPTIONAL = { root = true, system = true }

local function unknown(prefix, t, known, also)
  for k in pairs(t) do
    if known[k] == nil and not (also and also[k] ~= nil) then
      error("llamacpp.setup: unknown option '" .. prefix .. tostring(k) .. "'", 0)
    end
  end
end

local function is_key_table(t)
  if type(t) ~= "table" then return false end
  for k, v in pairs(t) do
    if type(k) ~= "string" or (type(v) ~= "string" and v ~= false) then return false end
  end
  return true
end

--- Checks `opts` (what setup() was given) and returns the full config:
-- defaults filled in, user tables copied.
function M.resolve(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error("llamacpp.setup: a table expected, got " .. type(opts), 0)
  end
  local D = M.DEFAULTS
  unknown("", opts, D, setmetatable({}, { __index = function(_, k) return M.CLIENT[k] or OPTIONAL[k] end }))
  local spec = {}
  for k, want in pairs(M.CLIENT) do spec[k] = { opts[k], kinds(want), true } end
  spec.root = { opts.root, "string", true }
  spec.system = { opts.system, "string", true }
  spec.params = { opts.params, "table", true }
  spec.fit = { opts.fit, "boolean", true }
  spec.progress = { opts.progress, "boolean", true }
  spec.resume = { opts.resume, "boolean", true }
  spec.wait_loading = { opts.wait_loading, function(v)
    return v == nil or (type(v) == "number" and v >= 0)
  end, "a number of seconds >= 0" }
  spec.reasoning = { opts.reasoning, function(v)
    return v == nil or v == "fold" or v == "show" or v == "hide"
  end, '"fold", "show" or "hide"' }
  spec.split = { opts.split, "string", true }
  spec.names = { opts.names, "table", true }
  spec.mappings = { opts.mappings, "boolean", true }
  spec.fim = { opts.fim, "table", true }
  check("", spec)
  local c = vim.deepcopy(D)
  for k, v in pairs(opts) do
    if k ~= "fim" and k ~= "names" then c[k] = vim.deepcopy(v) end
  end
  if opts.names then
    unknown("names.", opts.names, D.names)
    check("names.", { user = { opts.names.user, "string", true },
                      assistant = { opts.names.assistant, "string", true } })
    for k, v in pairs(opts.names) do c.names[k] = v end
  end
  local f = opts.fim
  if f then
    unknown("fim.", f, D.fim)
    local function count(v) return v == nil or (type(v) == "number" and v >= 0 and v % 1 == 0) end
    local n = "a whole number >= 0"
    check("fim.", {
      enabled = { f.enabled, "boolean", true },
      debounce_ms = { f.debounce_ms, count, n },
      prefix_lines = { f.prefix_lines, count, n },
      suffix_lines = { f.suffix_lines, count, n },
      n_predict = { f.n_predict, count, n },
      ring_chunks = { f.ring_chunks, count, n },
      chunk_lines = { f.chunk_lines, count, n },
      filetypes = { f.filetypes, "table", true },
      keys = { f.keys, function(v) return v == nil or is_key_table(v) end,
               "a table of key names (or false)" },
      params = { f.params, "table", true },
    })
    if f.keys then unknown("fim.keys.", f.keys, D.fim.keys) end
    for k, v in pairs(f) do
      if k == "keys" then
        for kk, vv in pairs(v) do c.fim.keys[kk] = vv end
      else
        c.fim[k] = vim.deepcopy(v)
      end
    end
  end
  return c
end

--- Where the chat remembers the replies that were streaming when Neovim
-- quit (one JSON file per reply), for :LlamaResume.
function M.resume_dir() return vim.fn.stdpath("data") .. "/llamacpp/resume" end

--- The llamacpp.new options of a config.
function M.client_options(c)
  local o = {}
  for k in pairs(M.CLIENT) do o[k] = c[k] end
  local env = os.getenv("LLAMACPP_ENDPOINT")
  if o.endpoint == nil and env and env ~= "" then o.endpoint = env end
  if o.api_key == nil then
    local key = os.getenv("LLAMA_API_KEY")
    if key and key ~= "" then o.api_key = key end
  end
  return o
end

return M
