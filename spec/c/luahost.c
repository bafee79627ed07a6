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
** It takes what the specs and their tools (luarocks) give an interpreter:
** `-e STAT`, `-l MOD`, `-v`, `-E` (ignored), `--`, then SCRIPT (or `-`,
** stdin) and its ARGS. For a script it does what `lua SCRIPT ARGS` does:
** the global `arg`
** (arg[0] = SCRIPT, arg[-1] = the host, arg[1..] = ARGS, also passed as
** `...`), a traceback on error, lua_close at the end (so every __gc runs
** before LeakSanitizer looks). os.exit(code, true) closes the state too.
** One difference: after os.exit(code) without `true` the state is closed
** all the same, by an atexit handler. The objects it holds are not leaked,
** only not freed; and LuaJIT keeps them in memory of its own that
** LeakSanitizer does not scan, so what they point to would look leaked.
** Closing runs every __gc at exit, which is one more thing checked.
** Links against liblua5.4 or libluajit-5.1; the module then finds the Lua
** API in this executable, as it does in the stock interpreters.
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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


/* {====== closing the state at exit ====== */

static lua_State *state;        /* the state, until it is closed */
static int closed;              /* the sentinel below was collected */


/* The sentinel's __gc: lua_close finalizes every object, so this runs
   whoever closes the state (main, os.exit(code, true) or atexit). */
static int sentinel_gc (lua_State *L) {
  (void)L;
  closed = 1;
  return 0;
}


/* Registered after the sanitizers' own handlers, so it runs before them. */
static void close_at_exit (void) {
  lua_State *L = state;
  state = NULL;
  if (L != NULL && !closed) lua_close(L);
}


static void sentinel (lua_State *L) {
  lua_newuserdata(L, 1);                                   /* u */
  lua_createtable(L, 0, 1);                                /* u, mt */
  lua_pushcfunction(L, sentinel_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);                                 /* u */
  lua_setfield(L, LUA_REGISTRYINDEX, "luahost.sentinel");  /* reachable to the end */
}

/* }====== */


static int traceback (lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = "(error object is not a string)";
#if LUA_VERSION_NUM == 501 && !defined(LUA_JITLIBNAME)
  lua_getglobal(L, "debug");          /* PUC 5.1 has no luaL_traceback */
  lua_getfield(L, -1, "traceback");
  lua_pushstring(L, msg);
  lua_pushinteger(L, 2);
  lua_call(L, 2, 1);
#else
  luaL_traceback(L, L, msg, 1);
#endif
  return 1;
}


/* lua.c's collectargs and runargs, in short: -e and -l run in order */
static int options (lua_State *L, int argc, char **argv, int *script) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    int status = 0;
    if (a[0] != '-' || a[1] == '\0') break;          /* SCRIPT or "-" */
    if (a[1] == '-' && a[2] == '\0') { i++; break; }  /* "--" */
    if ((a[1] == 'e' || a[1] == 'l') && a[2] == '\0') {
      const char *v = argv[++i];
      if (v == NULL) {
        fprintf(stderr, "%s: '%s' needs an argument\n", argv[0], a);
        return -1;
      }
      if (a[1] == 'e')
        status = luaL_loadbuffer(L, v, strlen(v), "=(command line)");
      else {
        lua_getglobal(L, "require");
        lua_pushstring(L, v);
      }
      if (status == 0) status = lua_pcall(L, a[1] == 'l', a[1] == 'l', 1);
      if (status == 0 && a[1] == 'l') lua_setglobal(L, v);
      if (status != 0) {
        fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
        return -1;
      }
    }
    else if (a[1] == 'v' && a[2] == '\0')
      printf("%s (luahost)\n", LUA_RELEASE);
    else if (a[1] == 'E' && a[2] == '\0')
      ;
    else {
      fprintf(stderr, "%s: unrecognized option '%s'\n", argv[0], a);
      return -1;
    }
  }
  *script = i;
  return 0;
}


int main (int argc, char **argv) {
  lua_State *L;
  int i, status, script;
  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create a Lua state\n", argv[0]);
    return 1;
  }
  luaL_openlibs(L);
  sentinel(L);
  state = L;
  atexit(close_at_exit);
  lua_pushcfunction(L, traceback);                         /* tb */
  if (options(L, argc, argv, &script) != 0) {
    state = NULL;
    lua_close(L);
    return 1;
  }
  if (script == argc) {                       /* only options: done */
    state = NULL;
    lua_close(L);
    return 0;
  }
  lua_createtable(L, argc - script - 1, script + 1);       /* tb, arg */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");                                 /* tb */
  status = luaL_loadfile(L, strcmp(argv[script], "-") == 0 ? NULL : argv[script]);
  if (status == 0) {                                       /* tb, chunk */
    luaL_checkstack(L, argc, "too many arguments");
    for (i = script + 1; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - script - 1, 0, 1);
  }
  if (status != 0) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s: %s\n", argv[0], msg ? msg : "(error object is not a string)");
  }
  state = NULL;
  lua_close(L);
  return status == 0 ? 0 : 1;
}
