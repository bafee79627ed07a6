-- llamacpp.args: argument errors at the caller's line, found by walking
-- past llamacpp's own frames (however many) and C frames.
local args = require "llamacpp.args"
local llamacpp = require "llamacpp"

describe("llamacpp.args", function()
  it("names the line of the caller's code, not a line of llamacpp", function()
    local ok, msg = pcall(function() llamacpp.new{ nope = 1 } end)
    assert.is_false(ok)
    assert.matches("args_spec%.lua:%d+: unknown option 'nope'$", msg)
    -- deeper: the router builds clients inside its configuration code
    ok, msg = pcall(function()
      require("llamacpp.router").new{ tiers = { t = { { endpoint = "ftp://x" } } } }
    end)
    assert.is_false(ok)
    assert.matches("args_spec%.lua:%d+: tiers%.t%[1%]: bad endpoint 'ftp://x'", msg)
  end)

  it("says bad argument #n to 'fname'", function()
    local ok, msg = pcall(function() args.check(false, 2, "f", args.expected("table", 5)) end)
    assert.is_false(ok)
    assert.matches("args_spec%.lua:%d+: bad argument #2 to 'f' %(table expected, got number%)$", msg)
    args.check(true, 1, "f", "never")
  end)

  it("gives no position when no frame is the caller's (a coroutine of llamacpp's own)", function()
    local co = coroutine.create(args.raise)
    local ok, msg = coroutine.resume(co, "plain")
    assert.is_false(ok)
    assert.equal("plain", msg)
  end)

  it("takes functions and tables with __call as callable", function()
    assert.is_true(args.callable(print))
    assert.is_true(args.callable(setmetatable({}, { __call = function() end })))
    assert.is_false(args.callable({}))
    assert.is_false(args.callable("f"))
  end)

  it("takes the position off a message raised again", function()
    assert.equal("bad request: x", args.unplace("./lua/llamacpp/client.lua:12: bad request: x"))
    assert.equal("stdin:1: x", args.unplace("stdin:1: stdin:1: x"))
    assert.equal(5, args.unplace(5))
  end)
end)
