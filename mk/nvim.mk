# The Neovim plugin (docs/neovim.md). The repository root is the plugin;
# its C core for Neovim's LuaJIT goes where the plugin looks for it:
#   make nvim         build/luajit/llamacpp/core.so (a plugin manager's build step)
nvim:
	@$(MAKE) -s all LUA=luajit
	@echo "llamacpp: built build/luajit/llamacpp/core.so for Neovim (LuaJIT)"

.PHONY: nvim
