#!/bin/sh
# The whole test suite: the C tests, then busted under Lua 5.4, LuaJIT,
# 5.3, 5.2 and 5.1 (each with the core built for it).
# Ends with one line "N passed, N failed, N skipped" summing them all.
set -u
cd "$(dirname "$0")/.." || exit 2
# The caller's Lua settings must not change what is tested: busted and the
# modules come from the system's paths and this tree (.busted), nothing else.
for v in "" _5_1 _5_2 _5_3 _5_4; do unset "LUA_PATH$v" "LUA_CPATH$v" "LUA_INIT$v"; done
LUAS="lua5.4 luajit lua5.3 lua5.2 lua5.1"
for lua in $LUAS; do make -s all LUA=$lua || exit 2; done
make -s build/sse_test || exit 2
log=$(mktemp)
status=0
echo "== C: SSE/NDJSON parser"
out=$(mktemp)
trap 'rm -f "$log" "$out"' EXIT
build/sse_test spec/fixtures >"$out" 2>&1 || status=1
cat "$out"; cat "$out" >>"$log"
for lua in $LUAS; do
  echo "== busted under $lua"
  "$lua" /usr/bin/busted -o utfTerminal "$@" >"$out" 2>&1 || status=1
  cat "$out"; cat "$out" >>"$log"
done
# busted: "N successes / N failures / N errors / N pending"; C: "N passed, N failed"
awk '
  /success(es)? \/ .* failures? \/ .* errors? \/ .* pending/ {
    for (i = 1; i < NF; i++) {
      if ($(i+1) ~ /^success/) p += $i
      if ($(i+1) ~ /^failure/ || $(i+1) ~ /^error/) f += $i
      if ($(i+1) ~ /^pending/) s += $i
    }
  }
  /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
  END { printf "%d passed, %d failed, %d skipped\n", p, f, s }
' "$log"
exit $status
