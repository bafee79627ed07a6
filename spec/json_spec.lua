-- llamacpp.json: the encoder (lua-cjson when it writes the same, else
-- our own) and the [] / {} rule for empty tables.
local json = require "llamacpp.json"
local cjson = require "cjson"

describe("llamacpp.json", function()
  local function roundtrip(v)
    return cjson.decode(json.encode(v))
  end

  it("writes values exactly, by either path", function()
    local values = {
      { messages = { { role = "user", content = "hi \"there\"\n\0\1 é 日本 \127" } }, max_tokens = 16,
        stream = false, temperature = 0.8, seed = 42, top_p = 0.95 },
      { a = 0.1 + 0.2, b = 1 / 3, c = -2 ^ 53 + 1, d = 2 ^ 60, e = 1e300, f = -0.0 },
      { 1, 2, 3, { x = { y = { z = "deep" } } } },
      { s = string.rep("x", 10000) },
      { null = json.null, t = true, f = false },
    }
    for _, v in ipairs(values) do
      local back = roundtrip(v)
      if v.a then
        assert.equal(0.1 + 0.2, back.a)          -- not rounded to 0.3
        assert.equal(1 / 3, back.b)
        assert.equal(-2 ^ 53 + 1, back.c)
        assert.equal(2 ^ 60, back.d)
        assert.equal(1e300, back.e)
      elseif v.null then
        assert.equal(cjson.null, back.null)
      else
        assert.same(v, back)
      end
    end
  end)

  it("writes empty tables under array keys as [] and others as {}", function()
    local s = json.encode{ tools = {}, stop = {}, messages = {}, options = {},
                           response_format = { json_schema = { schema = { enum = {}, required = {},
                                                                          properties = {} } } } }
    assert.matches('"tools":%[%]', s)
    assert.matches('"stop":%[%]', s)
    assert.matches('"messages":%[%]', s)
    assert.matches('"options":{}', s)
    assert.matches('"enum":%[%]', s)
    assert.matches('"required":%[%]', s)
    assert.matches('"properties":{}', s)
  end)

  it("honours the array and object markers", function()
    assert.equal("[]", json.encode(json.array()))
    assert.equal("{}", json.encode(json.object()))
    assert.equal('{"x":[]}', json.encode{ x = json.array() })
    assert.equal('{"tools":{}}', json.encode{ tools = json.object() })
    assert.equal("[1,2]", json.encode(json.array{ 1, 2 }))
  end)

  it("writes mixed and sparse tables as objects, and refuses what JSON cannot hold", function()
    assert.same({ ["1"] = "a", x = "b" }, roundtrip{ "a", x = "b" })
    assert.same({ ["1"] = "a", ["3"] = "c" }, roundtrip{ [1] = "a", [3] = "c" })
    assert.has_error(function() json.encode{ f = function() end } end)
    assert.has_error(function() json.encode{ n = 0 / 0 } end)
    assert.has_error(function() json.encode{ n = math.huge } end)
    local deep = {}
    local cur = deep
    for _ = 1, 150 do cur.x = {}; cur = cur.x end
    assert.has_error(function() json.encode(deep) end)
  end)

  it("canonical: sorted keys at every depth, the same text whatever the table's history", function()
    assert.equal('{"a":1,"b":{"x":[1,{"m":true,"n":null}],"y":"s"},"c":{}}',
                 json.canonical{ c = {}, b = { y = "s", x = { 1, { n = json.null, m = true } } }, a = 1 })
    -- the same keys inserted in other orders (and after deletions) give the same text
    local t1, t2 = {}, {}
    for i = 1, 50 do t1["k" .. i] = i end
    for i = 50, 1, -1 do t2["k" .. i] = i end
    t2.extra = 1
    t2.extra = nil
    assert.equal(json.canonical(t1), json.canonical(t2))
    assert.same(t1, json.decode(json.canonical(t1)))
    assert.equal('{"1.5":1,"x":2}', json.canonical{ [1.5] = 1, x = 2 })
    assert.has_error(function() json.canonical{ f = function() end } end)
  end)

  it("decodes, with nil and a message on bad input", function()
    assert.same({ a = { 1, 2 } }, json.decode('{"a":[1,2]}'))
    local v, msg = json.decode("{bad")
    assert.is_nil(v)
    assert.is_string(msg)
  end)
end)
