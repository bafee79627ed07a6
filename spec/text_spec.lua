-- llamacpp.text: the text of a stream assembled from its pieces in the C
-- core's chunks (256 bytes, 512, then 1 KiB each; a longer
-- piece gets a chunk of its own), or nothing kept when the caller asked so.
local text = require "llamacpp.text"

describe("llamacpp.text", function()
  it("joins pieces in order, across its chunks", function()
    for _, n in ipairs{ 0, 1, 255, 256, 257, 1000, 5000 } do
      local t, want = text.new(), {}
      for i = 1, n do
        t:add(tostring(i) .. ",")
        want[i] = tostring(i) .. ","
      end
      assert.equal(table.concat(want), t:get(), "n = " .. n)
      assert.equal(n == 0, t:empty())
    end
  end)

  it("keeps every byte of pieces of any size, empty ones and NULs too", function()
    -- sizes around each chunk's edge and past the largest chunk
    local sizes = { 0, 1, 255, 1, 256, 511, 0, 513, 1024, 2047, 4095, 4096, 4097, 10000, 3, 70000, 1 }
    local t, want = text.new(), {}
    for i, n in ipairs(sizes) do
      local piece = string.rep(string.char(i % 3 == 0 and 0 or 64 + i), n)
      t:add(piece)
      want[#want + 1] = piece
    end
    local got = t:get()
    assert.equal(#table.concat(want), #got)
    assert.is_true(table.concat(want) == got)
    assert.equal(got, t:get())             -- get does not consume
    t:add("end")
    assert.equal(table.concat(want) .. "end", t:get())
  end)

  it("gives the empty string, not nil, when nothing was added", function()
    local t = text.new()
    assert.equal("", t:get())
    assert.is_true(t:empty())
    t:add("")
    assert.is_true(t:empty())
  end)

  it("refuses what is not a string", function()
    local t = text.new()
    assert.has_error(function() t:add({}) end)
    assert.has_error(function() t.add({}, "x") end)
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
