" :checkhealth llamacpp (Neovim 0.7 and later): lua/llamacpp/nvim/check.lua.
" A Vim autoload file, so that the check is named `llamacpp` without a
" lua/llamacpp/health.lua in the library's own namespace.
function! health#llamacpp#check() abort
  lua require("llamacpp.nvim.check").check()
endfunction
