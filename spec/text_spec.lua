-- llamacpp.text, pure Lua: the text of a stream assembled from its
-- pieces, 256 at a time, or nothing kept when the caller asked so.
local text = require "llamacpp.text"

describe("llamacpp.text", function()
  it("joins pieces in order, across its 256-piece chunks", function()
    for _, n in ipairs{ 0, 1, 255, 256, 257, 1000 } do
      local t, want = text.new(), {}
      for i = 1, n do
        t:add(tostring(i) .. ",")
        want[i] = tostring(i) .. ","
      end
      assert.equal(table.concat(want), t:get(), "n = " .. n)
      assert.equal(n == 0, t:empty())
    end
  end)

  it("keeps nothing when keep is false", function()
    local t = text.new(false)
    t:add("a")
    assert.is_nil(t:get())
    assert.is_true(t:empty())
  end)

  it("keeps the text unless a stream was opened with assemble = false", function()
    assert.is_true(text.keep(nil))
    assert.is_true(text.keep{})
    assert.is_true(text.keep{ assemble = true })
    assert.is_false(text.keep{ assemble = false })
  end)
end)
