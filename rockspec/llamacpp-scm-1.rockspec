rockspec_format = "3.0"
package = "llamacpp"
version = "scm-1"
source = {
  url = "git+https://github.com/llamacpp-lua/llamacpp.git",
}
description = {
  summary = "A Lua client for llama.cpp's llama-server, with a C core on libcurl",
  detailed = [[
    Chat, streaming (SSE) with normalised events, clear errors and four
    separate timeouts, for Lua 5.1-5.4 and LuaJIT (Neovim). HTTP, SSE framing
    and error mapping are done in C on libcurl; requests and responses in Lua.
  ]],
  license = "MIT",
  labels = { "llm", "llama.cpp", "http", "sse", "neovim" },
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1.0",
}
external_dependencies = {
  -- the library only: on Debian/Ubuntu the header lives in a multiarch
  -- directory that the compiler searches by itself but LuaRocks does not
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["llamacpp.core"] = {
      sources = { "src/core.c", "src/session.c", "src/transfer.c", "src/multi.c",
                  "src/fastpath.c", "src/error.c", "src/clock.c", "src/sse.c",
                  "src/hash.c", "src/media.c", "src/text.c" },
      libraries = { "curl" },
      incdirs = { "$(CURL_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)" },
    },
    ["llamacpp"] = "lua/llamacpp/init.lua",
    ["llamacpp.args"] = "lua/llamacpp/args.lua",
    ["llamacpp.client"] = "lua/llamacpp/client.lua",
    ["llamacpp.errors"] = "lua/llamacpp/errors.lua",
    ["llamacpp.json"] = "lua/llamacpp/json.lua",
    ["llamacpp.providers.llamacpp"] = "lua/llamacpp/providers/llamacpp.lua",
    ["llamacpp.uv"] = "lua/llamacpp/uv.lua",
    ["llamacpp.providers.native"] = "lua/llamacpp/providers/native.lua",
    ["llamacpp.text"] = "lua/llamacpp/text.lua",
    ["llamacpp.agent"] = "lua/llamacpp/agent.lua",
    ["llamacpp.media"] = "lua/llamacpp/media.lua",
    ["llamacpp.context"] = "lua/llamacpp/context.lua",
    ["llamacpp.endpoints"] = "lua/llamacpp/endpoints.lua",
    ["llamacpp.testing"] = "lua/llamacpp/testing.lua",
    ["llamacpp.testing.render"] = "lua/llamacpp/testing/render.lua",
    ["llamacpp.testing.models"] = "lua/llamacpp/testing/models.lua",
    ["llamacpp.testing.cache"] = "lua/llamacpp/testing/cache.lua",
    ["llamacpp.testing.server"] = "lua/llamacpp/testing/server.lua",
    ["llamacpp.router"] = "lua/llamacpp/router.lua",
    ["llamacpp.router.config"] = "lua/llamacpp/router/config.lua",
    ["llamacpp.router.plan"] = "lua/llamacpp/router/plan.lua",
    ["llamacpp.providers.base"] = "lua/llamacpp/providers/base.lua",
    ["llamacpp.providers.openai"] = "lua/llamacpp/providers/openai.lua",
    ["llamacpp.providers.ollama"] = "lua/llamacpp/providers/ollama.lua",
    ["llamacpp.providers.anthropic"] = "lua/llamacpp/providers/anthropic.lua",
    ["llamacpp.nvim"] = "lua/llamacpp/nvim.lua",
    ["llamacpp.nvim.appender"] = "lua/llamacpp/nvim/appender.lua",
    ["llamacpp.nvim.chat"] = "lua/llamacpp/nvim/chat.lua",
    ["llamacpp.nvim.check"] = "lua/llamacpp/nvim/check.lua",
    ["llamacpp.nvim.config"] = "lua/llamacpp/nvim/config.lua",
    ["llamacpp.nvim.fim"] = "lua/llamacpp/nvim/fim.lua",
    ["llamacpp.nvim.highlights"] = "lua/llamacpp/nvim/highlights.lua",
    ["llamacpp.nvim.loader"] = "lua/llamacpp/nvim/loader.lua",
  },
  platforms = {
    windows = { modules = { ["llamacpp.core"] = { libraries = { "libcurl" } } } },
  },
}
test_dependencies = { "busted" }
test = { type = "busted" }
