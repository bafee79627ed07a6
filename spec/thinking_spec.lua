-- Reasoning under control: the request options thinking = true/false and
-- thinking_budget = N, as each provider puts them on the wire (read back
-- from the fixture server's request log), and the clear errors of those
-- that cannot express them.
local llamacpp = require "llamacpp"
local fixture = require "fixture.control"

local MSGS = { { role = "user", content = "Say hello." } }

describe("thinking options", function()
  local srv
  setup(function() srv = fixture.start() end)
  teardown(function() srv:stop() end)

  local function sent(provider, fixture_name, req, stream, path)
    local c = llamacpp.new{ provider = provider, endpoint = srv:replay(fixture_name) .. (path or "") }
    if stream then
      for _ in c:chat_stream(req) do end
    else
      assert(c:chat(req))
    end
    local reqs = srv:requests()
    return reqs[#reqs].json
  end

  it("llama-server: chat_template_kwargs.enable_thinking and thinking_budget_tokens", function()
    local b = sent("llamacpp", "chat_nonstream", { messages = MSGS, thinking = false })
    assert.same({ enable_thinking = false }, b.chat_template_kwargs)
    assert.equal(0, b.thinking_budget_tokens)             -- also for templates without the switch
    assert.is_nil(b.thinking)
    b = sent("llamacpp", "chat_nonstream", { messages = MSGS, thinking = true,
                                              chat_template_kwargs = { other = 1 } })
    assert.same({ enable_thinking = true, other = 1 }, b.chat_template_kwargs)
    assert.is_nil(b.thinking_budget_tokens)
    b = sent("llamacpp", "chat_stream", { messages = MSGS, thinking_budget = 256 }, true)
    assert.same({ enable_thinking = true }, b.chat_template_kwargs)
    assert.equal(256, b.thinking_budget_tokens)
    assert.is_nil(b.thinking_budget)
    b = sent("llamacpp", "chat_nonstream", { messages = MSGS, thinking_budget = 0 })
    assert.same({ enable_thinking = false }, b.chat_template_kwargs)
    assert.equal(0, b.thinking_budget_tokens)
    b = sent("llamacpp", "chat_nonstream", { messages = MSGS })
    assert.is_nil(b.chat_template_kwargs)                 -- nothing asked, nothing sent
    assert.is_nil(b.thinking_budget_tokens)
  end)

  it("Ollama: think, and no budget", function()
    local b = sent("ollama", "ollama_chat", { messages = MSGS, thinking = false })
    assert.is_false(b.think)
    b = sent("ollama", "ollama_chat", { messages = MSGS, thinking = true })
    assert.is_true(b.think)
    b = sent("ollama", "ollama_chat", { messages = MSGS, thinking_budget = 0 })
    assert.is_false(b.think)
    local c = llamacpp.new{ provider = "ollama", endpoint = srv:replay("ollama_chat") }
    local ok, msg = pcall(c.chat, c, { messages = MSGS, thinking_budget = 500 })
    assert.is_false(ok)
    assert.matches("thinking_spec.lua:%d+: bad request: Ollama has no thinking budget", msg)
  end)

  it("Anthropic: a thinking block with its budget, none when off, its own table as it is", function()
    local b = sent("anthropic", "anthropic_message", { messages = MSGS, thinking = true })
    assert.same({ type = "enabled", budget_tokens = 1024 }, b.thinking)
    b = sent("anthropic", "anthropic_message", { messages = MSGS, thinking_budget = 4000, max_tokens = 8000 })
    assert.same({ type = "enabled", budget_tokens = 4000 }, b.thinking)
    b = sent("anthropic", "anthropic_message", { messages = MSGS, thinking = false })
    assert.is_nil(b.thinking)
    b = sent("anthropic", "anthropic_message", { messages = MSGS,
                                                  thinking = { type = "enabled", budget_tokens = 2048 } })
    assert.same({ type = "enabled", budget_tokens = 2048 }, b.thinking)
    local c = llamacpp.new{ provider = "anthropic", endpoint = srv:replay("anthropic_message") }
    local ok, msg = pcall(c.chat, c, { messages = MSGS, thinking_budget = 100 })
    assert.is_false(ok)
    assert.matches("bad request: Anthropic's smallest thinking budget is 1024 tokens", msg)
  end)

  it("an OpenAI-compatible server has no standard switch: a clear error", function()
    local c = llamacpp.new{ provider = "openai", endpoint = srv:replay("chat_nonstream") .. "/v1" }
    local ok, msg = pcall(c.chat, c, { messages = MSGS, thinking = false })
    assert.is_false(ok)
    assert.matches("thinking_spec.lua:%d+: bad request: OpenAI%-compatible server has no standard switch", msg)
    -- the server's own field passes as it is
    local b = sent("openai", "chat_nonstream", { messages = MSGS, reasoning_effort = "low" }, false, "/v1")
    assert.equal("low", b.reasoning_effort)
  end)

  it("refuses bad values at the caller's line", function()
    local c = llamacpp.new{ endpoint = srv:replay("chat_nonstream") }
    for _, case in ipairs{
      { { thinking = "no" }, "'thinking' must be a boolean" },
      { { thinking_budget = -1 }, "'thinking_budget' must be an integer >= 0" },
      { { thinking_budget = 1.5 }, "'thinking_budget' must be an integer >= 0" },
      { { thinking = false, thinking_budget = 10 }, "'thinking = false' contradicts 'thinking_budget = 10'" },
      { { think_tags = "drop" }, "'think_tags' must be \"split\" or \"keep\"" },
    } do
      local req = { messages = MSGS }
      for k, v in pairs(case[1]) do req[k] = v end
      local ok, msg = pcall(c.chat, c, req)
      assert.is_false(ok)
      assert.matches("thinking_spec.lua:%d+: bad request: " .. case[2]:gsub("%p", "%%%0"), msg)
    end
    local ok, msg = pcall(c.completion, c, { prompt = "x", thinking = false })
    assert.is_false(ok)
    assert.matches("'thinking' and 'thinking_budget' are chat options", msg)
  end)
end)
