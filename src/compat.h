/*
** compat.h: the few Lua 5.2+ functions the core calls, for PUC Lua 5.1.
** LuaJIT 2.1 and Lua 5.2-5.4 bring their own, so the shims are only
** compiled where luaL_newlibtable is missing (PUC 5.1, old LuaJIT); inline,
** so that a file using only one of them builds without a warning.
*/
#ifndef LCPP_COMPAT_H
#define LCPP_COMPAT_H

#include "lua.h"
#include "lauxlib.h"

#if LUA_VERSION_NUM == 501 && !defined(luaL_newlibtable)
static inline void lcpp_setfuncs (lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++)               /* copy the upvalues on top */
      lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#define luaL_setfuncs(L, l, n)  lcpp_setfuncs(L, l, n)

static inline void *lcpp_testudata (lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (p == NULL || !lua_getmetatable(L, i)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}
#define luaL_testudata(L, i, t)  lcpp_testudata(L, i, t)
#define luaL_newlib(L, l)  (lua_newtable(L), luaL_setfuncs(L, l, 0))
#endif

#if LUA_VERSION_NUM == 501
#define lua_rawlen(L, i)  lua_objlen(L, i)
#endif

#endif
