#!/bin/sh
# make test-busy: the whole suite (make test) on a busy machine. Beside it,
# for as long as it runs, per core (BUSY_JOBS, default: the number of cores):
#   - a compile loop: the C core built again and again, one object per
#     source file with make -j2, -O2 and ASan+UBSan, into a scratch
#     directory (a parallel compile: what made the suite fail in issue 14)
#   - a memory loop: a Lua process filling and dropping a 64 MB table
# Each runs in a session of its own (setsid) and is stopped by its process
# group id when the suite ends, fails or is interrupted (trap): nothing is
# left behind. Prints the suite's last line ("N passed, N failed, N
# skipped") again at the end, and exits with the suite's status.
set -u
cd "$(dirname "$0")/.." || exit 2
MAKE=${MAKE:-make}
JOBS=${BUSY_JOBS:-$(nproc 2>/dev/null || echo 2)}
CC=${CC:-cc}
command -v setsid >/dev/null 2>&1 || { echo "test-busy: needs setsid (util-linux)"; exit 2; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-busy.XXXXXX") || exit 2
log="$scratch/suite.log"
pids=""
cleanup() {
  for p in $pids; do kill -TERM "-$p" 2>/dev/null; done
  for p in $pids; do
    n=0                       # bounded: then KILL what did not stop
    while kill -0 "-$p" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    kill -KILL "-$p" 2>/dev/null
  done
  wait 2>/dev/null
  pids=""
  rm -rf "$scratch"
}
trap 'cleanup' EXIT
trap 'cleanup; trap - EXIT; exit 130' INT
trap 'cleanup; trap - EXIT; exit 143' TERM HUP

# The compile loop's makefile: the core, one object per file.
cat >"$scratch/hog.mk" <<EOF
SRC = $(pwd)/src
OBJ = core.o transfer.o sse.o error.o
FLAGS = -O2 -g -fPIC -fsanitize=address,undefined -std=c99 -Wall -Wextra -I/usr/include/lua5.4 \
  $(curl-config --cflags)
core.so: \$(OBJ)
	\$(CC) -shared -fsanitize=address,undefined -o \$@ \$(OBJ) $(curl-config --libs)
%.o: \$(SRC)/%.c \$(SRC)/*.h
	\$(CC) \$(FLAGS) -c \$< -o \$@
EOF

i=0
while [ $i -lt "$JOBS" ]; do
  i=$((i + 1))
  d="$scratch/cc$i"
  mkdir -p "$d"
  setsid sh -c 'd=$1; mk=$2; cc=$3; n=0
    while :; do
      rm -f "$d"/*.o "$d"/core.so
      make -s -j2 -C "$d" -f "$mk" CC="$cc" core.so >/dev/null 2>&1 || sleep 1
      n=$((n + 1)); echo $n >"$d/rounds"
    done' busy-cc "$d" "$scratch/hog.mk" "$CC" </dev/null &
  pids="$pids $!"
  setsid lua5.4 -e '
    local n = 0
    while true do
      local t = {}
      for k = 1, 4e6 do t[k] = k * 0.5 end   -- 64 MB, touched
      n = n + 1
      if n % 10 == 0 then collectgarbage() end
    end' </dev/null >/dev/null 2>&1 &
  pids="$pids $!"
done
echo "test-busy: $JOBS compile loop(s) and $JOBS memory loop(s) beside the suite (pids:$pids)"
echo "test-busy: load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"

status=0
$MAKE -s test >"$log" 2>&1 || status=$?
cat "$log"
rounds=0
for f in "$scratch"/cc*/rounds; do [ -f "$f" ] && rounds=$((rounds + $(cat "$f"))); done
echo "test-busy: load average at the end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null);" \
     "$rounds builds of the core done beside the suite"
last=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n 1)
echo "${last:-test-busy: the suite printed no summary line (status $status)}"
exit $status
