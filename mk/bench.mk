# Benchmarks (bench/README.md). Not part of `make test` or .ci/run's timing:
#   make bench        build everything, npm ci the Node SDK when node exists,
#                     run every case against every alternative, print the table;
#                     then bench/loop.lua: the event-loop figures (Neovim's loop
#                     while a stream arrives, beside an idle Neovim; a stalled
#                     stream on luv; the fixture server), each with its goal;
#                     then bench/affinity.lua: the prompt units K caching fake
#                     servers evaluate under each router strategy (issue 18)
#   make bench-smoke  the same harnesses at small sizes (a few seconds); fails
#                     only if a client lost bytes, a request failed or a case
#                     could not run, never on a missed goal
BENCH_OUT = build/bench
BENCH_WARN = -std=c99 -Wall -Wextra -pedantic -Wshadow -Wmissing-prototypes -Wstrict-prototypes
BENCH_BIN = $(BENCH_OUT)/server $(BENCH_OUT)/cclient \
  $(BENCH_OUT)/5.4/benchutil.so $(BENCH_OUT)/luajit/benchutil.so

$(BENCH_OUT)/server: bench/server.c
	@mkdir -p $(@D)
	$(CC) -O2 $(BENCH_WARN) bench/server.c -o $@

$(BENCH_OUT)/cclient: bench/cclient.c
	@mkdir -p $(@D)
	$(CC) -O2 $(BENCH_WARN) $(CURL_CFLAGS) bench/cclient.c -o $@ $(CURL_LIBS)

$(BENCH_OUT)/5.4/benchutil.so: bench/benchutil.c
	@mkdir -p $(@D)
	$(CC) -O2 -fPIC $(BENCH_WARN) -I/usr/include/lua5.4 bench/benchutil.c $(LIBFLAG) -o $@

$(BENCH_OUT)/luajit/benchutil.so: bench/benchutil.c
	@mkdir -p $(@D)
	$(CC) -O2 -fPIC $(BENCH_WARN) -I/usr/include/luajit-2.1 bench/benchutil.c $(LIBFLAG) -o $@

bench-build: $(BENCH_BIN)
	@$(MAKE) -s all LUA=lua5.4
	@$(MAKE) -s all LUA=luajit

# the Node column: OpenAI's SDK at the version pinned in bench/node/package-lock.json
bench-node:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "bench: node/npm not installed: the Node column will be skipped"; \
	elif [ bench/node/node_modules/.package-lock.json -nt bench/node/package-lock.json ]; then :; \
	else (cd bench/node && npm ci --no-audit --no-fund --loglevel=error) || \
	  echo "bench: npm ci failed: the Node column will be skipped"; fi

bench: bench-build bench-node
	@s=0; lua5.4 bench/run.lua || s=1; lua5.4 bench/loop.lua || s=1; \
	lua5.4 bench/affinity.lua || s=1; exit $$s

bench-smoke: bench-build
	@s=0; lua5.4 bench/run.lua --smoke --out $(BENCH_OUT)/smoke.md || s=1; \
	lua5.4 bench/loop.lua --smoke --out $(BENCH_OUT)/loop-smoke.md || s=1; \
	lua5.4 bench/affinity.lua --smoke || s=1; exit $$s

.PHONY: bench bench-build bench-node bench-smoke
