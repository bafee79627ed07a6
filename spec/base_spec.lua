-- What the providers share (providers/base.lua), pure Lua, no network:
-- the request check and its positions, the helpers of the translation.
-- The providers themselves, over HTTP, are in providers_spec.lua.
local base = require "llamacpp.providers.base"
local errors = require "llamacpp.errors"

describe("llamacpp.providers.base", function()
  describe("check_request", function()
    -- level 3: the caller of check(), the function in raised()
    local function check(req) base.check_request(req, 3) end

    local function raised(req)
      local ok, msg = pcall(function() check(req) end)   -- this line is the position
      assert.is_false(ok)
      return msg
    end

    it("takes messages, a system text, or both", function()
      check{ messages = {} }
      check{ system = "Be brief." }
      check{ system = "Be brief.", messages = { { role = "user", content = "Hi" } } }
    end)

    it("refuses a request without messages, or with fields of the wrong type, at the caller's line", function()
      local here = "base_spec%.lua:%d+: "
      assert.matches(here .. "bad request: 'messages' is required$", raised{})
      assert.matches(here .. "bad request: 'messages' must be a table %(got string%)$",
                     raised{ messages = "Hi" })
      assert.matches(here .. "bad request: 'system' must be a string %(got number%)$",
                     raised{ system = 1, messages = {} })
    end)

    it("defaults to 4 frames up: the caller of client:chat, through chat_body", function()
      local function chat_body(req) base.check_request(req) end
      local function chat(req) chat_body(req) end
      local ok, msg = pcall(function() chat{} end)
      assert.is_false(ok)
      assert.matches("base_spec%.lua:%d+: bad request", msg)
    end)
  end)

  it("passes every field but those skipped, in a new table", function()
    local req = { system = "s", messages = {}, tier = "fast", temperature = 0.2, seed = 7 }
    local body = base.passed(req, base.LOCAL_FIELDS)
    assert.same({ temperature = 0.2, seed = 7 }, body)
    assert.same({ seed = 7 }, base.passed(req, base.LOCAL_FIELDS, { temperature = true }))
    assert.equal("s", req.system)
    assert.are_not.equal(req, body)
  end)

  it("sends a key as a bearer token, and nothing without one", function()
    assert.same({ "Authorization: Bearer sk-1" }, base.bearer("sk-1"))
    assert.same({}, base.bearer(nil))
  end)

  it("reads JSON values: strings as they are, whole numbers as integers", function()
    assert.equal("x", base.str("x"))
    assert.is_nil(base.str(1))
    assert.is_nil(base.str(require("llamacpp.json").null))
    assert.equal(3, base.int(3.0))
    assert.equal(2.5, base.int(2.5))
    assert.same({ n = 1, ms = 1.5 }, base.ints{ n = 1.0, ms = 1.5 })
  end)

  it("maps a wire's stop reasons, keeps unknown ones and drops those mapped to false", function()
    local map = base.stop_reasons{ end_turn = "stop", max_tokens = "length", none = false }
    assert.equal("stop", map("end_turn"))
    assert.equal("length", map("max_tokens"))
    assert.equal("refusal", map("refusal"))
    assert.is_nil(map("none"))
    assert.is_nil(map(nil))
    assert.is_nil(map(7))
  end)

  it("makes an answer without what the wire promises a protocol error, with the body capped", function()
    local res, err = base.bad_answer("x answer has no content", { blob = ("a"):rep(5000) })
    assert.is_nil(res)
    assert.is_true(errors.is(err, "protocol"))
    assert.equal("x answer has no content", err.message)
    assert.equal(4096, #err.body)
  end)
end)
