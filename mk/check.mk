# Memory checks, fuzzing and the soak run (DESIGN.md section 6; issue 8).
#   make asan          llamacpp.core with AddressSanitizer + UBSan, and the whole
#                      spec suite under Lua 5.4, LuaJIT and 5.1 on it; fails on any report
#   make valgrind      the spec suite (VALGRIND_SPECS) under valgrind, Lua 5.4,
#                      on the normal build; fails on a leak or an invalid access
#   make fuzz          libFuzzer over the SSE/NDJSON parser for FUZZ_TIME seconds,
#                      seeded with the fixtures and the regression cases
#   make fuzz-regress  replays spec/c/fuzz_regress/* (what the fuzzer ever made
#                      fail, and hand-written inputs of that kind) through the
#                      fuzz target's checks, with ASan+UBSan, without clang
#   make check-c-asan  the parser's C test (spec/c/sse_test.c) with ASan+UBSan
#   make soak          the full-size soak (spec/soak/soak.lua): 100,000 requests
#                      and 1,000,000 streamed events through one client
#   make memcheck      asan, valgrind, check-c-asan and fuzz-regress
#   make test-busy     make test with CPU- and memory-heavy loops beside it
#
# Needs: gcc (the sanitizers' runtimes come with it), valgrind, clang and
# libclang-rt-14-dev (libFuzzer, for make fuzz only), openssl (tls_spec).
#
# Why a host program for ASan: Debian's lua5.4 and luajit are not instrumented,
# and an instrumented module needs the ASan runtime loaded first. LD_PRELOAD
# would do, but every child process would inherit it (fixture servers, Neovim,
# luarocks). spec/c/luahost.c is a plain `lua SCRIPT ARGS` linked with
# -fsanitize=address against the system's liblua5.4 / libluajit / liblua5.1: the runtime is
# in the executable, only the process running busted is checked, LeakSanitizer
# runs at its exit (after lua_close has run every __gc).

ASAN_LUAS ?= lua5.4 luajit lua5.1
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow \
  -fno-sanitize-recover=all
# leaks are checked at exit; a report makes busted's exit status non-zero
ASAN_LOG = $(CURDIR)/build/asan/log
ASAN_ENV = LLAMACPP_UNDER_ASAN=1 ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:log_path=$(ASAN_LOG)/asan \
  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/c/lsan.supp:print_suppressions=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=24
# for the C programs: reports on stderr, a non-zero exit
ASAN_C_ENV = ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# lua5.4 -> 5.4, luajit -> luajit: the build directory names of the Makefile
luav = $(if $(filter luajit,$(1)),luajit,$(patsubst lua%,%,$(1)))
luainc = $(if $(filter luajit,$(1)),/usr/include/luajit-2.1,/usr/include/$(1))
lualib = $(if $(filter luajit,$(1)),-lluajit-5.1,-l$(1))

build/asan/%/llamacpp/core.so: $(SRC) $(HDR) mk/check.mk
	@mkdir -p $(@D)
	$(CC) $(ASAN_FLAGS) -fPIC -fvisibility=hidden $(WARN) \
	  -I$(call luainc,$(if $(filter luajit,$*),luajit,lua$*)) $(CURL_CFLAGS) \
	  $(SRC) $(LIBFLAG) -o $@ $(CURL_LIBS)

build/asan/luahost-%: spec/c/luahost.c mk/check.mk
	@mkdir -p $(@D)
	$(CC) $(ASAN_FLAGS) $(WARN) -I$(call luainc,$*) $< -o $@ $(call lualib,$*)

# build/asan/bin: `lua5.4` and `luajit` for the child processes the specs start
# (fixture servers, scripts that load the module): they run checked too, and a
# plain interpreter never meets the instrumented module.
asan-build: $(foreach l,$(ASAN_LUAS),build/asan/luahost-$(l) build/asan/$(call luav,$(l))/llamacpp/core.so)
	@for l in $(ASAN_LUAS); do $(MAKE) -s all LUA=$$l || exit 1; done
	@mkdir -p build/asan/bin
	@for l in $(ASAN_LUAS); do ln -sf ../luahost-$$l build/asan/bin/$$l; done
	@# luarocks (install_spec) takes the Lua it finds on PATH for an installed
	@# one and looks for its headers in ../include
	@ln -sfn /usr/include build/asan/include

# ASAN_SPECS: which spec files. Every spec but nvim_spec, which tests a
# Neovim process with the normal build, with latency bounds that a machine
# busy with sanitized processes does not keep. Every report of any process
# (busted or a child) lands in build/asan/log/ and fails the run.
ASAN_SPECS ?= $(filter-out spec/nvim_spec.lua,$(wildcard spec/*_spec.lua))
asan: asan-build
	@rm -rf $(ASAN_LOG); mkdir -p $(ASAN_LOG)
	@fail=; for l in $(ASAN_LUAS); do \
	  v=$$(echo $$l | sed 's/^lua\([0-9]\)/\1/'); \
	  echo "== busted under $$l, llamacpp.core with ASan+UBSan (build/asan/$$v)"; \
	  PATH=$(CURDIR)/build/asan/bin:$$PATH $(ASAN_ENV) \
	    build/asan/bin/$$l /usr/bin/busted --cpath="./build/asan/$$v/?.so" \
	    -o utfTerminal $(ASAN_SPECS) || fail="$$fail busted-$$l"; \
	  if ls $(ASAN_LOG)/asan.* >/dev/null 2>&1; then cat $(ASAN_LOG)/asan.*; \
	    mkdir -p $(ASAN_LOG)/$$l; mv $(ASAN_LOG)/asan.* $(ASAN_LOG)/$$l/; \
	    fail="$$fail sanitizer-$$l"; fi; \
	done; \
	if [ -n "$$fail" ]; then echo "asan: FAILED:$$fail (reports in $(ASAN_LOG))"; exit 1; fi; \
	echo "asan: no sanitizer report, every spec passed"

# Valgrind on the normal -O2 -g build, Lua 5.4 only (LuaJIT's JIT and its own
# allocator need a valgrind-aware LuaJIT build; the ASan run covers LuaJIT).
# Left out: nvim_spec (tests a Neovim process, with latency bounds that do not
# hold under valgrind), install_spec (luarocks and gcc, other processes),
# soak_spec (measures RSS: meaningless under valgrind). Everything else runs.
VALGRIND_SPECS ?= $(filter-out spec/nvim_spec.lua spec/install_spec.lua spec/soak_spec.lua,$(wildcard spec/*_spec.lua))
VALGRIND = valgrind --quiet --error-exitcode=25 --leak-check=full \
  --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
  --track-origins=yes --keep-debuginfo=yes --suppressions=$(CURDIR)/spec/c/valgrind.supp
valgrind:
	$(MAKE) -s all LUA=lua5.4
	LLAMACPP_UNDER_VALGRIND=1 $(VALGRIND) lua5.4 /usr/bin/busted -o utfTerminal $(VALGRIND_SPECS)

# The parser's C test under ASan+UBSan.
build/asan/sse_test: src/sse.c src/sse.h spec/c/sse_test.c mk/check.mk
	@mkdir -p $(@D)
	$(CC) $(ASAN_FLAGS) $(WARN) -Isrc src/sse.c spec/c/sse_test.c -o $@

check-c-asan: build/asan/sse_test
	$(ASAN_C_ENV) build/asan/sse_test spec/fixtures

# {------ fuzzing ------
FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined,float-cast-overflow -fno-sanitize-recover=all
FUZZ_REGRESS = spec/c/fuzz_regress

build/fuzz/sse_fuzz: src/sse.c src/sse.h spec/c/sse_fuzz.c mk/check.mk
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -Isrc src/sse.c spec/c/sse_fuzz.c -o $@

# the same target without libFuzzer: a main() that runs files through it
build/asan/sse_fuzz_replay: src/sse.c src/sse.h spec/c/sse_fuzz.c spec/c/fuzz_replay.c mk/check.mk
	@mkdir -p $(@D)
	$(CC) $(ASAN_FLAGS) $(WARN) -Isrc src/sse.c spec/c/sse_fuzz.c spec/c/fuzz_replay.c -o $@

fuzz-regress: build/asan/sse_fuzz_replay
	$(ASAN_C_ENV) build/asan/sse_fuzz_replay $(FUZZ_REGRESS)/*

# New inputs go to build/fuzz/corpus (kept between runs); a crash is written to
# build/fuzz/crash-* and the run fails: copy it to spec/c/fuzz_regress/.
fuzz: build/fuzz/sse_fuzz build/sse_test fuzz-regress
	@mkdir -p build/fuzz/corpus build/fuzz/seed
	build/sse_test spec/fixtures --write-corpus build/fuzz/seed >/dev/null
	build/fuzz/sse_fuzz -max_total_time=$(FUZZ_TIME) -max_len=16384 -timeout=10 \
	  -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build/fuzz/ \
	  build/fuzz/corpus build/fuzz/seed $(FUZZ_REGRESS)
# }------

# The full-size soak: 100,000 sequential requests, 1,000,000 streamed events
# through one client, RSS and /proc/self/fd sampled (spec/soak/README.md).
soak: all
	$(LUA) spec/soak/soak.lua --requests 100000 --events 1000000

memcheck: asan valgrind check-c-asan fuzz-regress

# The whole suite (make test) while, per core (BUSY_JOBS), a loop rebuilds
# the C core with make -j2 and ASan into a scratch directory and another
# fills and drops 64 MB tables (spec/busy.sh). They are stopped by process
# group when the suite ends or is interrupted. Ends with the suite's
# "N passed, N failed, N skipped" line and exits with its status.
test-busy:
	@MAKE="$(MAKE)" sh spec/busy.sh

.PHONY: asan asan-build valgrind check-c-asan fuzz fuzz-regress soak memcheck test-busy
