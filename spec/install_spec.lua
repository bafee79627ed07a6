-- The rockspec installs with LuaRocks (offline: --deps-mode=none, lua-cjson
-- from the system) into a temporary tree, and that installed copy chats
-- with the fixture server from another directory.
local fixture = require "fixture.control"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok, _, code = p:close()
  if type(ok) == "number" then code = ok; ok = code == 0 end  -- Lua 5.1
  return ok, out, code
end

local LUAJIT = type(jit) == "table"
local LUAV = LUAJIT and "5.1" or _VERSION:match("%d+%.%d+")
local LUA = LUAJIT and "luajit" or "lua" .. LUAV

describe("rockspec", function()
  local srv, tree
  setup(function()
    srv = fixture.start()
    tree = os.tmpname()
    os.remove(tree)
  end)
  teardown(function()
    srv:stop()
    os.execute("rm -rf '" .. tree .. "'")
  end)

  it("installs with luarocks make and chats from the installed copy", function()
    -- luarocks make builds in its working directory (objects, and a
    -- llamacpp/core.so that ./?.so would find): build in a copy
    local src = tree .. "/src-copy"
    assert(sh("mkdir -p '" .. src .. "' && cp -r lua src rockspec '" .. src .. "'/"))
    local cmd = "cd '" .. src .. "' && luarocks --lua-version=" .. LUAV .. " --tree='" .. tree ..
                "' make --deps-mode=none rockspec/llamacpp-scm-1.rockspec"
    if LUAJIT then cmd = cmd .. " LUA_INCDIR=/usr/include/luajit-2.1" end
    local ok, out = sh(cmd)
    assert(ok, out)
    assert.matches("llamacpp scm%-1 is now installed", out)
    local script = tree .. "/chat.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
      local tree = %q
      package.path = tree .. "/share/lua/%s/?.lua;" .. tree .. "/share/lua/%s/?/init.lua;" .. package.path
      package.cpath = tree .. "/lib/lua/%s/?.so;" .. package.cpath
      local llamacpp = require "llamacpp"
      local where = package.searchpath and package.searchpath("llamacpp.core", package.cpath) or "?"
      local c = llamacpp.new{ endpoint = %q }
      local res, err = c:chat{ messages = { { role = "user", content = "hi" } } }
      io.write(where, "\n", res and res.content or tostring(err), "\n")
      c = llamacpp.new{ endpoint = %q }
      for ev in c:chat_stream{ messages = { { role = "user", content = "hi" } } } do
        if ev.type ~= "content" then io.write(ev.type, "\n") end
      end
      -- the installed test kit: its fake server runs from the tree too
      local fake = require("llamacpp.testing").start()
      fake:reply{ content = "from the installed fake" }
      local r2, e2 = llamacpp.new{ endpoint = fake.endpoint }:chat{ messages = { { role = "user", content = "x" } } }
      fake:stop()
      io.write(r2 and r2.content or tostring(e2), "\n")
    ]]):format(tree, LUAV, LUAV, LUAV, srv:replay("chat_nonstream"), srv:replay("chat_stream")))
    f:close()
    -- from /: nothing of the work tree on the paths
    ok, out = sh("cd / && " .. LUA .. " '" .. script .. "'")
    assert(ok, out)
    local where, content, last, fake = out:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n$")
    if where ~= "?" then assert.equal(tree .. "/lib/lua/" .. LUAV .. "/llamacpp/core.so", where) end
    assert.matches("^ Eight", content)
    assert.equal("done", last)
    assert.equal("from the installed fake", fake)
  end)
end)
