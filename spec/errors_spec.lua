-- llamacpp.errors, pure Lua: the one error shape, HTTP answers mapped to
-- it (status, the server's error object, Retry-After), stream errors,
-- and scrubbing a secret out of every string an error holds.
local errors = require "llamacpp.errors"

describe("llamacpp.errors", function()
  it("makes errors on the C core's metatable, not retryable unless said", function()
    local e = errors.new("timeout", "slow", { phase = "idle" })
    assert.equal(require("llamacpp.core").Error, getmetatable(e))
    assert.is_true(errors.is(e))
    assert.is_true(errors.is(e, "timeout"))
    assert.is_false(errors.is(e, "http"))
    assert.is_false(errors.is({ kind = "timeout" }))
    assert.is_false(e.retryable)
    assert.equal("idle", e.phase)
    assert.matches("slow", tostring(e), 1, true)
  end)

  it("retries 408, 409, 429 and 5xx but 501 and 505", function()
    for _, s in ipairs{ 408, 409, 429, 500, 502, 503, 504, 529, 599 } do
      assert.is_true(errors.retryable_status(s), tostring(s))
    end
    for _, s in ipairs{ 200, 400, 401, 403, 404, 422, 501, 505, 600 } do
      assert.is_false(errors.retryable_status(s), tostring(s))
    end
    assert.is_false(errors.retryable_status(nil))
  end)

  it("reads Retry-After as seconds or as an HTTP date", function()
    assert.equal(30, errors.parse_retry_after("30"))
    assert.equal(7, errors.parse_retry_after(" 7 "))
    local now = os.time{ year = 2026, month = 12, day = 4, hour = 12, min = 0, sec = 0 }
    local later = os.date("!%a, %d %b %Y %H:%M:%S GMT", now + 90)
    assert.equal(90, errors.parse_retry_after(later, now))
    assert.equal(0, errors.parse_retry_after(os.date("!%a, %d %b %Y %H:%M:%S GMT", now - 5), now))
    assert.is_nil(errors.parse_retry_after("soon"))
    assert.is_nil(errors.parse_retry_after(nil))
  end)

  it("maps llama-server's error object: message, type as code, context numbers", function()
    local body = '{"error":{"code":400,"message":"request (623 tokens) exceeds the available context size' ..
                 ' (256 tokens)","type":"exceed_context_size_error","n_prompt_tokens":623,"n_ctx":256}}'
    local e = errors.http(400, body, { ["x-request-id"] = "r1" }, "llama-server")
    assert.equal("http", e.kind)
    assert.equal(400, e.status)
    assert.equal("exceed_context_size_error", e.code)
    assert.equal(623, e.n_prompt_tokens)
    assert.equal(256, e.n_ctx)
    assert.equal("r1", e.request_id)
    assert.is_false(e.retryable)
    assert.matches("^llama%-server error %(400%): request %(623 tokens%)", e.message)
  end)

  it("says a gateway answered: who, its page's title, what to do, in one line", function()
    local page = "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 " ..
                 "Gateway Time-out</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
    local e = errors.http(504, page, { server = "nginx/1.22.1", ["content-type"] = "text/html" }, "llama-server")
    assert.equal("gateway error (504, nginx/1.22.1) in front of llama-server: 504 Gateway Time-out; the gateway " ..
                 "gave up waiting for the server (a long prompt is still being read?): raise its read timeout " ..
                 "(nginx: proxy_read_timeout, Caddy: transport read_timeout)", e.message)
    assert.is_true(e.gateway)
    assert.equal("nginx/1.22.1", e.gateway_server)
    assert.equal("gateway_timeout", e.code)
    assert.is_false(e.retryable)
    assert.equal(page, e.body)
    local b = errors.http(502, page:gsub("504 Gateway Time%-out", "502 Bad Gateway"), { server = "nginx" })
    assert.is_true(b.retryable)                                        -- another try may find it up
    assert.matches("^server error %(502%)", errors.http(502, "", { server = "llama.cpp" }).message)
    assert.matches("^gateway error %(502, Caddy%) in front of the server: HTTP 502",
                   errors.http(502, "", { server = "Caddy" }).message)
    local sq = errors.http(407, "<html><head><title>ERROR: Cache Access Denied</title></head><body>...</body></html>",
                           { server = "squid/5.7", ["content-type"] = "text/html;charset=utf-8" })
    assert.matches("^gateway error %(407, squid/5.7%) in front of the server: ERROR: Cache Access Denied; " ..
                   "the proxy wants credentials", sq.message)
    local big = errors.http(413, "<html><body><h1>413 Request Entity Too Large</h1></body></html>", {})
    assert.matches("%(413, no Server header%).*413 Request Entity Too Large; .*client_max_body_size", big.message)
    -- the server's own JSON error from behind a gateway stays the server's
    local j = errors.http(503, '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
                          { server = "nginx" }, "llama-server")
    assert.equal("llama-server error (503): Loading model", j.message)
    assert.is_nil(j.gateway)
  end)

  it("maps Ollama's string error, Anthropic's overloaded type, and bodies that are not JSON", function()
    assert.equal("server error (404): model 'x' not found",
                 errors.http(404, '{"error":"model \'x\' not found"}').message)
    local o = errors.http(529, '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert.is_true(o.retryable)
    assert.equal("overloaded_error", o.code)
    local t = errors.http(503, "busy, try later\n", { ["retry-after"] = "3" })
    assert.equal("server error (503): busy, try later", t.message)
    assert.equal(3, t.retry_after)
    assert.is_true(t.retryable)
    assert.equal("server error (502): HTTP 502", errors.http(502, "").message)
  end)

  it("caps the body at 4 KiB and the message's detail at 512 bytes", function()
    local e = errors.http(500, string.rep("x", 10000))
    assert.equal(4096, #e.body)
    assert.equal(#"server error (500): " + 512 + 3, #e.message)
  end)

  it("decodes a stream event or names it a protocol error", function()
    assert.same({ a = 1 }, errors.decode_event('{"a":1}'))
    local obj, e = errors.decode_event("{nope", "line")
    assert.is_nil(obj)
    assert.equal("protocol", e.kind)
    assert.equal("BAD_JSON", e.code)
    assert.matches("malformed JSON in stream line", e.message, 1, true)
  end)

  it("gives an error inside a 200 stream the status of its code, else 500", function()
    local data = '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    local e = errors.in_stream(data, { code = 503 }, "llama-server")
    assert.equal(503, e.status)
    assert.is_true(e.in_stream)
    assert.is_true(e.retryable)
    assert.equal(500, errors.in_stream('{"error":"x"}', "x").status)
  end)

  it("scrubs a secret from every string, nested tables and keys, repeats included", function()
    local key = "sk-secret-123"
    local e = errors.new("http", "bad key " .. key .. " and " .. key,
                         { body = '{"echo":"' .. key .. '"}', server = { headers = { auth = "Bearer " .. key } } })
    e.server[key] = "x"
    e.server.self = e.server                        -- a cycle is fine
    errors.scrub(e, key)
    assert.equal("bad key <redacted> and <redacted>", e.message)
    assert.equal('{"echo":"<redacted>"}', e.body)
    assert.equal("Bearer <redacted>", e.server.headers.auth)
    assert.is_nil(e.server[key])
    assert.equal("x", e.server["<redacted>"])
    -- keys shorter than 4 bytes are not scrubbed (they would eat the text)
    assert.equal("abc", errors.scrub(errors.new("http", "abc"), "b").message)
  end)
end)
