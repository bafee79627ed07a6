-- Release hygiene: the rockspecs, the module's version and the files in
-- lua/ agree, and the rockspecs pass `luarocks lint`.
local llamacpp = require "llamacpp"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function rockspec(path)
  local env = {}
  local loadstring, setfenv = rawget(_G, "loadstring"), rawget(_G, "setfenv")   -- Lua 5.1
  local chunk = assert((loadstring or load)(read(path), "@" .. path, "t", env))
  if setfenv then setfenv(chunk, env) end
  chunk()
  return env
end

describe("release", function()
  it("has _VERSION matching the versioned rockspec", function()
    local spec = rockspec("rockspec/llamacpp-0.1.0-1.rockspec")
    assert.equal("0.1.0-1", spec.version)
    assert.equal("llamacpp 0.1.0", llamacpp._VERSION)
    assert.equal(spec.version:match("^(.-)%-%d+$"), llamacpp.version)
  end)

  it("names libcurl's version on demand, as curl --version does", function()
    local v = llamacpp.curl_version()
    assert.is_string(v)
    assert.truthy(v:match("^libcurl/%d+%.%d+%.%d+"), v)
    local p = io.popen("curl --version 2>/dev/null")
    local cli = p and p:read("*l")
    if p then p:close() end
    if cli then     -- same library as the curl tool on this machine
      assert.equal(cli:match("libcurl/(%S+)"), v:match("^libcurl/(%S+)"))
    end
  end)

  it("lists every Lua module of lua/ in both rockspecs, with the same modules", function()
    local p = io.popen("cd lua && find . -name '*.lua' | sort")
    local files = {}
    for line in p:lines() do files[#files + 1] = line:gsub("^%./", "") end
    p:close()
    local scm = rockspec("rockspec/llamacpp-scm-1.rockspec").build.modules
    local rel = rockspec("rockspec/llamacpp-0.1.0-1.rockspec").build.modules
    assert.same(scm, rel)
    local listed = {}
    for _, v in pairs(scm) do
      if type(v) == "string" then listed[v:gsub("^lua/", "")] = true end
    end
    for _, f in ipairs(files) do
      assert.is_true(listed[f] == true, "lua/" .. f .. " is not in the rockspec")
    end
    -- installed only from lua/ and src/: the test kit is not in the test tree
    for name, v in pairs(scm) do
      if type(v) == "string" then
        local want = "lua/" .. name:gsub("%.", "/") .. ".lua"
        if name == "llamacpp" then want = "lua/llamacpp/init.lua" end
        assert.equal(want, v)
      else
        for _, src in ipairs(v.sources) do assert.matches("^src/[%w_]+%.c$", src) end
      end
    end
  end)

  it("packs a source rock that builds (luarocks pack, then build from the .src.rock)", function()
    local dir = os.tmpname()
    os.remove(dir)
    local function sh(cmd)
      local h = io.popen(cmd .. " 2>&1; echo rc=$?")
      local out = h:read("*a")
      h:close()
      return out
    end
    -- offline: the source is this checkout's HEAD as a local tarball
    local out = sh("mkdir -p " .. dir .. " && git archive --format=tar.gz --prefix=llamacpp/ -o " .. dir ..
                   "/llamacpp.tar.gz HEAD")
    assert.matches("rc=0", out, out)
    local spec = read("rockspec/llamacpp-scm-1.rockspec"):gsub('url = "git%+https://[^"]*",',
      'url = "file://' .. dir .. '/llamacpp.tar.gz", dir = "llamacpp",')
    local f = assert(io.open(dir .. "/llamacpp-scm-1.rockspec", "w"))
    f:write(spec)
    f:close()
    out = sh("cd " .. dir .. " && luarocks pack llamacpp-scm-1.rockspec")
    assert.matches("Packed: .*llamacpp%-scm%-1%.src%.rock", out)
    local luav = type(jit) == "table" and "5.1" or _VERSION:match("%d+%.%d+")
    local inc = type(jit) == "table" and " LUA_INCDIR=/usr/include/luajit-2.1" or ""
    out = sh("cd " .. dir .. " && luarocks --lua-version=" .. luav .. " --tree=" .. dir ..
             "/tree build --deps-mode=none llamacpp-scm-1.src.rock" .. inc)
    assert.matches("llamacpp scm%-1 is now installed", out)
    assert.matches("rc=0", out)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("passes luarocks lint", function()
    for _, f in ipairs{ "rockspec/llamacpp-scm-1.rockspec", "rockspec/llamacpp-0.1.0-1.rockspec" } do
      local h = io.popen("luarocks lint " .. f .. " 2>&1; echo rc=$?")
      local out = h:read("*a")
      h:close()
      assert.matches("rc=0", out, out)
    end
  end)
end)
