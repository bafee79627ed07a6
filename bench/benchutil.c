/*
** benchutil.c: what the Lua clients of the benchmark need to measure
** themselves and Lua cannot do alone. Bench harness only; not part of
** the llamacpp module.
**   cpu_us()    user + system CPU of this process and its waited-for
**               children (popen'd curl), microseconds
**   now_ns()    CLOCK_MONOTONIC in ns (the bench server's clock)
**   rss_kb()    resident set size now, from /proc/self/statm
**   maxrss_kb() peak RSS of this process
*/
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

int luaopen_benchutil (lua_State *L);


static int cpu_us (lua_State *L) {
  struct rusage s, c;
  getrusage(RUSAGE_SELF, &s);
  getrusage(RUSAGE_CHILDREN, &c);
  lua_pushnumber(L, (lua_Number)(s.ru_utime.tv_sec + s.ru_stime.tv_sec +
                                 c.ru_utime.tv_sec + c.ru_stime.tv_sec) * 1e6 +
                    (lua_Number)(s.ru_utime.tv_usec + s.ru_stime.tv_usec +
                                 c.ru_utime.tv_usec + c.ru_stime.tv_usec));
  return 1;
}


static int now_ns (lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec * 1e9 + (lua_Number)ts.tv_nsec);
  return 1;
}


static int rss_kb (lua_State *L) {
  long pages = 0, rss = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f != NULL) {
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
  }
  lua_pushnumber(L, (lua_Number)rss * (lua_Number)sysconf(_SC_PAGESIZE) / 1024);
  return 1;
}


static int maxrss_kb (lua_State *L) {
  struct rusage s;
  getrusage(RUSAGE_SELF, &s);
  lua_pushnumber(L, (lua_Number)s.ru_maxrss);
  return 1;
}


int luaopen_benchutil (lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, cpu_us); lua_setfield(L, -2, "cpu_us");
  lua_pushcfunction(L, now_ns); lua_setfield(L, -2, "now_ns");
  lua_pushcfunction(L, rss_kb); lua_setfield(L, -2, "rss_kb");
  lua_pushcfunction(L, maxrss_kb); lua_setfield(L, -2, "maxrss_kb");
  return 1;
}
