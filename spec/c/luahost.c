/*
** luahost.c: a minimal stand-alone Lua interpreter, `luahost SCRIPT [ARGS]`,
** for running busted with a sanitized llamacpp.core (make asan).
**
** Why: Debian's lua5.4 and luajit are not built with AddressSanitizer, and
** an instrumented shared object cannot be loaded into them unless the ASan
** runtime is preloaded (LD_PRELOAD), which every child process then
** inherits (the fixture server, Neovim, luarocks). Linking this host with
** -fsanitize=address puts the runtime in the executable itself: only this
** process is checked, and LeakSanitizer runs when it exits.
**
** It does what `lua SCRIPT ARGS` does for a script: the global `arg`
** (arg[0] = SCRIPT, arg[-1] = the host, arg[1..] = ARGS, also passed as
** `...`), a traceback on error, lua_close at the end (so every __gc runs
** before LeakSanitizer looks). os.exit(code, true) closes the state too.
** Links against liblua5.4 or libluajit-5.1; the module then finds the Lua
** API in this executable, as it does in the stock interpreters.
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"


/*
** lua_close unloads the C modules (dlclose), and LeakSanitizer runs after
** it: the frames of a leak in an unloaded module would have no names. This
** definition takes the place of libc's for liblua (the executable comes
** first in symbol lookup): modules stay loaded until the process exits.
*/
int dlclose (void *handle) {
  (void)handle;
  return 0;
}


static int traceback (lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}


int main (int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create a Lua state\n", argv[0]);
    return 1;
  }
  luaL_openlibs(L);
  lua_createtable(L, argc - 2, 2);                         /* arg */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);                         /* tb */
  status = luaL_loadfile(L, argv[1]);                      /* tb, chunk */
  if (status == 0) {
    luaL_checkstack(L, argc, "too many arguments");
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 1);
  }
  if (status != 0) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", argv[0], msg ? msg : "(error object is not a string)");
  }
  lua_close(L);
  return status == 0 ? 0 : 1;
}
