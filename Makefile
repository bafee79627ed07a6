# Development build; mirrors rockspec/llamacpp-scm-1.rockspec.
#   make deps         the Debian packages needed to build, test and run
#   make              Lua 5.4 -> build/5.4/llamacpp/core.so
#   make LUA=luajit   LuaJIT  -> build/luajit/llamacpp/core.so
#   make chat         build, then stream a chat from LLAMACPP_ENDPOINT
#   make demo         build, then stream a recorded reply over loopback
#   make LUA=lua5.1   (and lua5.2, lua5.3) -> build/5.1/llamacpp/core.so
#   make test         every build, the C tests, busted under lua5.4, luajit,
#                     lua5.3, lua5.2 and lua5.1
LUA ?= lua5.4
ifeq ($(LUA),luajit)
LUA_INCDIR ?= /usr/include/luajit-2.1
LUAV = luajit
else
LUAV = $(patsubst lua%,%,$(LUA))
LUA_INCDIR ?= /usr/include/lua$(LUAV)
endif
CURL_CFLAGS ?= $(shell curl-config --cflags)
CURL_LIBS ?= $(shell curl-config --libs)
# macOS: LIBFLAG = -bundle -undefined dynamic_lookup
LIBFLAG ?= -shared
CFLAGS ?= -O2 -g
WARN = -std=c99 -Wall -Wextra -pedantic -Wshadow -Wmissing-prototypes -Wstrict-prototypes
SRC = src/core.c src/session.c src/transfer.c src/multi.c src/fastpath.c src/error.c src/clock.c src/sse.c src/hash.c src/media.c src/text.c
HDR = src/compat.h src/lcpp.h src/sse.h
OUT = build/$(LUAV)/llamacpp/core.so

DEBS = make gcc libc6-dev pkg-config curl libcurl4-openssl-dev \
  lua5.4 liblua5.4-dev luajit libluajit-5.1-dev \
  lua5.3 liblua5.3-dev lua5.2 liblua5.2-dev lua5.1 liblua5.1-0-dev \
  coreutils lua-cjson lua-socket lua-busted luarocks lua-luv lua-check lua-ldoc neovim \
  valgrind openssl git clang libclang-rt-14-dev nginx-light squid
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

all: $(OUT)

deps:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBS)

chat: all
	$(LUA) examples/chat.lua $(PROMPT)

demo: all
	$(LUA) examples/demo.lua

$(OUT): $(SRC) $(HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fPIC -fvisibility=hidden $(WARN) -I$(LUA_INCDIR) $(CURL_CFLAGS) $(SRC) $(LIBFLAG) -o $@ $(CURL_LIBS)

build/sse_test: src/sse.c src/sse.h spec/c/sse_test.c
	@mkdir -p $(@D)
	$(CC) -O1 -g $(WARN) -Isrc src/sse.c spec/c/sse_test.c -o $@

check-c: build/sse_test
	build/sse_test spec/fixtures

test:
	sh spec/run.sh

lint:
	luacheck lua spec examples

# the API reference, from the --- comments (Debian's lua-ldoc)
docs:
	rm -rf docs/api && ldoc -q .

clean:
	rm -rf build

.PHONY: all deps chat demo check-c test lint docs clean

# mk/*.mk: further targets (bench, sanitizers, fuzzing), one file per area
-include mk/*.mk
