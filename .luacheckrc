-- luacheck (Debian's lua-check): no globals anywhere; busted's in spec/.
std = "min"
max_line_length = 120
exclude_files = { "build/**", "bench/node/**" }
files["spec/**/*_spec.lua"] = { std = "+busted" }
files["examples/nvim/**"] = { read_globals = { "vim" } }
files["lua/llamacpp/uv.lua"] = { read_globals = { "jit" } }
read_globals = { "jit" }
