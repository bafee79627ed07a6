/*
** clock.c: time for the core: a monotonic clock in milliseconds (every
** deadline is measured on it) and a sleep that survives signals, with
** their Lua faces core.now() and core.sleep().
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcpp.h"


double lcpp_now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}


static void lcpp_sleep (double ms) {
  struct timespec ts;
  if (!(ms > 0)) return;                 /* NaN too */
  if (ms > 1e12) ms = 1e12;              /* ~31 years: time_t holds it */
  ts.tv_sec = (time_t)(ms / 1e3);
  ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) ;
}


/* core.now() -> monotonic ms */
int lcpp_core_now (lua_State *L) {
  lua_pushnumber(L, (lua_Number)lcpp_now());
  return 1;
}


/* core.sleep(ms): without a busy loop, for retries and polling in Lua. */
int lcpp_core_sleep (lua_State *L) {
  lua_Number ms = luaL_checknumber(L, 1);
  lcpp_sleep(ms > 0 ? (double)ms : 0);
  return 0;
}
