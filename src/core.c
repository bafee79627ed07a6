/*
** core.c: luaopen_llamacpp_core, registration only. The classes
** llamacpp.Session and llamacpp.Transfer (their methods: session.c,
** transfer.c), and the module table: session() -> Session, now() ->
** monotonic ms, sleep(ms) (clock.c), hash(s) (hash.c), base64(s [, prefix])
** (media.c), text() -> Text (text.c), Error (the
** llamacpp.Error metatable, error.c), version strings. No other file uses anything of this one.
*/
#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "lcpp.h"

#define LCPP_VERSION  "0.1.0"


/* One class: its metatable, with the methods as __index and the name as
   __name. The method arrays are session.c's and transfer.c's. */
static void lcpp_newclass (lua_State *L, const char *tname,
                           const luaL_Reg *methods, const luaL_Reg *metas) {
  luaL_newmetatable(L, tname);                            /* mt */
  luaL_setfuncs(L, metas, 0);
  lua_newtable(L);                                        /* mt, methods */
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");                         /* mt */
  lua_pushstring(L, tname);          /* 5.1 sets no __name itself */
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}


/* libcurl's version string with its libraries' versions; made on demand:
   making it calls into each of them and initialises libldap, about 90 page
   faults and 15% of what loading this module costs */
static int core_curl_version (lua_State *L) {
  lua_pushstring(L, curl_version());
  return 1;
}


static const luaL_Reg core_funcs[] = {
  {"curl_version", core_curl_version},
  {"sleep", lcpp_core_sleep},
  {"session", lcpp_session_new},
  {"now", lcpp_core_now},
  {"hash", lcpp_core_hash},
  {"base64", lcpp_core_base64},
  {"text", lcpp_text_new},
  {NULL, NULL}
};


LCPP_EXPORT int luaopen_llamacpp_core (lua_State *L);

int luaopen_llamacpp_core (lua_State *L) {
  static int initialized = 0;
  if (!initialized) {   /* once per process; never curl_global_cleanup:
                           other modules in the host may use libcurl */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return luaL_error(L, "curl_global_init failed");
    initialized = 1;
  }
  lcpp_newclass(L, LCPP_SESSION_MT, lcpp_session_methods, lcpp_session_metas);
  lcpp_newclass(L, LCPP_TRANSFER_MT, lcpp_transfer_methods,
                lcpp_transfer_metas);
  lcpp_newclass(L, LCPP_TEXT_MT, lcpp_text_methods, lcpp_text_metas);
  luaL_newlib(L, core_funcs);                             /* M */
  lcpp_error_open(L);                                     /* M, Error */
  lua_setfield(L, -2, "Error");                           /* M */
  lua_pushliteral(L, LCPP_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
