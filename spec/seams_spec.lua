-- The seams between llamacpp's modules: no module reads another's
-- private (_underscored) members. A member `x._name` or `x:_name(` used
-- in a file must be defined in that same file; what modules need from
-- each other has a public name and a doc comment (client.steps,
-- client.begin/complete/take, router.plan, router.plan's Plan methods).
local util = require "spec.util"

-- The Lua files of lua/ and examples/, with comments and strings blanked
-- (so a "._name" in prose does not count).
local function sources()
  local out = {}
  local p = assert(io.popen("find lua examples -name '*.lua' | sort"))
  for path in p:lines() do out[#out + 1] = path end
  p:close()
  return out
end

local function code_of(text)
  text = text:gsub("%-%-%[(=*)%[.-%]%1%]", "")     -- long comments
  text = text:gsub("%[(=*)%[.-%]%1%]", '""')       -- long strings
  text = text:gsub("\\.", "")                       -- escapes, before strings
  text = text:gsub('"[^"\n]*"', '""'):gsub("'[^'\n]*'", "''")
  text = text:gsub("%-%-[^\n]*", "")                -- line comments
  return text
end

-- Private names a file defines (function X:_n, function X._n, X._n =) and uses.
local function privates(code)
  local defined, used = {}, {}
  for name in code:gmatch("function%s+[%w_.]+[.:](_[%w_]+)%s*%(") do defined[name] = true end
  for name in code:gmatch("[%w_]+%.(_[%w_]+)%s*=[^=]") do defined[name] = true end
  for name in code:gmatch("[%w_%)%]][.:](_[%w_]+)") do
    if not name:match("^__") and name ~= "_VERSION" and name ~= "_G" and name ~= "_ENV" then
      used[name] = true
    end
  end
  return defined, used
end

describe("llamacpp's module seams", function()
  it("finds the rule's cases (the checker itself)", function()
    local d, u = privates(code_of('local x = other:_begin(1) -- c:_not_this\nfunction M._mine() end\nM._mine()\n' ..
                                   'local s = "y._nor_this"\nfunction S:_own() end\nself:_own()'))
    assert.same({ _mine = true, _own = true }, d)
    assert.same({ _begin = true, _mine = true, _own = true }, u)
  end)

  it("no file uses a private member that another file defines", function()
    local bad = {}
    for _, path in ipairs(sources()) do
      local defined, used = privates(code_of(util.read(path)))
      for name in pairs(used) do
        if not defined[name] then bad[#bad + 1] = path .. ": " .. name end
      end
    end
    table.sort(bad)
    assert.same({}, bad)
  end)
end)
