-- Soak (issue 8): sequential requests and streamed events through one
-- client, loopback only, memory sampled from /proc/self/status and open
-- descriptors counted before and after. By default a reduced run (10,000
-- requests, 200,000 events, a few seconds); the full size (100,000 requests,
-- 1,000,000 events) with LLAMACPP_SOAK=full, or `make soak` (the script
-- spec/soak/soak.lua). `--tags=soak` selects these, `--exclude-tags=soak`
-- leaves them out.
local soak = require "soak.soak"
local proc = require "soak.proc"

local FULL = os.getenv("LLAMACPP_SOAK") == "full"
local SIZE = FULL and { requests = 100000, events = 1000000, streams = 10 }
                   or { requests = 10000, events = 200000, streams = 4 }
-- Measured on the 2-core CI machine (Lua 5.4 and LuaJIT, full size): the
-- RSS after a collection grew by about 0.85 MB in all, all of it while the
-- first stream sized its buffers; 0 KB over the 90,000 requests after
-- warm-up and under 100 KB over the last 8 streams. The bounds leave room.
local BOUND_KB = 8192          -- in all, after warm-up
local PHASE_BOUND_KB = 2048    -- over the requests after warm-up; over the later streams

describe("soak #soak", function()
  if not proc.available() then
    it("needs /proc", function() pending("no /proc/self/status: not Linux") end)
    return
  end

  it(("%d requests and %d streamed events through one client: flat memory, no descriptor left #soak")
     :format(SIZE.requests, SIZE.events), function()
    local r = soak.run(SIZE)
    local summary = soak.summary(r)
    if FULL then print("\n" .. summary) end
    assert.equal(SIZE.requests, r.requests)
    assert.equal(SIZE.events, r.events)
    assert.equal(r.fds_before, r.fds_after, summary)
    if not proc.measurable() then return end    -- valgrind, sanitizers: their allocators
    assert.truthy(r.growth_kb <= BOUND_KB, summary)
    assert.truthy(r.growth_requests_kb <= PHASE_BOUND_KB, summary)
    assert.truthy(r.growth_events_kb <= PHASE_BOUND_KB, summary)
  end)
end)
