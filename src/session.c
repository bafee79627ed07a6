/*
** session.c: the llamacpp.Session type, Lua's handle on one CURLM: new,
** open (a Transfer on it), and the driving an event loop does itself
** (step, sockets, fd, timeout, act), close. It sits on top: multi.c
** waits and hands readiness to libcurl, transfer.c decides what is due
** and what has ended.
*/
#include <poll.h>
#include <string.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcpp.h"


/* {====== Session ====== */

static Session *checksession (lua_State *L, int i) {
  Session *s = (Session *)luaL_checkudata(L, i, LCPP_SESSION_MT);
  luaL_argcheck(L, s->multi != NULL, i, "session is closed");
  return s;
}


int lcpp_session_new (lua_State *L) {
  Session *s = (Session *)lua_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  s->timer_at = -1;
  s->epfd = -1;
  luaL_getmetatable(L, LCPP_SESSION_MT);
  lua_setmetatable(L, -2);
  if (lcpp_multi_open(s) != 0) return luaL_error(L, "curl_multi_init failed");
  return 1;
}


/* close and __gc: transfers still running end with a "cancelled" error. */
static int session_close (lua_State *L) {
  Session *s = (Session *)luaL_checkudata(L, 1, LCPP_SESSION_MT);
  if (s->multi == NULL) return 0;
  while (s->head != NULL)
    lcpp_finish(s->head, CURLE_OK, FAIL_CANCEL);
  lcpp_multi_close(s);
  return 0;
}


/* session:open{...} -> Transfer: the options are read, and the transfer
   built, by lcpp_transfer_new (transfer.c). */
static int session_open (lua_State *L) {
  return lcpp_transfer_new(L, checksession(L, 1));
}


/* session:step([timeout_ms]): drive every transfer once, waiting at most
   timeout_ms (default 0) for something to happen. Returns the number of
   transfers still running. */
static int session_step (lua_State *L) {
  Session *s = checksession(L, 1);
  lua_Number tmo = luaL_optnumber(L, 2, 0);
  luaL_argcheck(L, tmo == tmo, 2, "timeout is NaN");
  int n = 0;
  Transfer *t;
  if (s->head != NULL) lcpp_step(s, (double)tmo);
  for (t = s->head; t != NULL; t = t->next) n++;
  lua_pushinteger(L, n);
  return 1;
}


/* session:sockets([all]) -> events, serials when the set of sockets
   libcurl wants watched changed since the last call (or when `all`),
   else nil. events: {[fd] = "r" | "w" | "rw"}; serials: {[fd] = n}, n
   new whenever fd is a new socket. For event loops (llamacpp.uv). */
static int session_sockets (lua_State *L) {
  Session *s = checksession(L, 1);
  int i;
  if (!s->changed && !lua_toboolean(L, 2)) return 0;
  s->changed = 0;
  lua_createtable(L, 0, s->nfds);                    /* events */
  lua_createtable(L, 0, s->nfds);                    /* events, serials */
  for (i = 0; i < s->nfds; i++) {
    short e = s->fds[i].events;
    lua_pushstring(L, (e & POLLIN) && (e & POLLOUT) ? "rw"
                      : (e & POLLOUT) ? "w" : "r");
    lua_rawseti(L, -3, (int)s->fds[i].fd);
    lua_pushinteger(L, (lua_Integer)s->serials[i]);
    lua_rawseti(L, -2, (int)s->fds[i].fd);
  }
  return 2;
}


/* session:timeout() -> ms until something is due (libcurl's timer or a
   first-byte/idle deadline), 0 if overdue, nil when nothing is. */
static int session_timeout (lua_State *L) {
  Session *s = checksession(L, 1);
  double at = lcpp_earliest(s), now;
  if (at < 0) return 0;
  now = lcpp_now();
  lua_pushnumber(L, at > now ? at - now : 0);
  return 1;
}


/* session:fd() -> one fd that is readable whenever a socket of the
   session is ready (an epoll set, Linux), or nil where there is none.
   An event loop watches it and calls act() with no argument: one watch
   per session, and the sockets' own errors never reach the loop. */
static int session_fd (lua_State *L) {
  int fd = lcpp_multi_fd(checksession(L, 1));
  if (fd < 0) return 0;
  lua_pushinteger(L, fd);
  return 1;
}


/* session:act([fd, events]): the event loop says socket fd is ready
   ("r", "w", "rw", or "e" for an error); without fd, that the session's
   fd() is readable or the time from timeout() passed. Then runs whatever
   is due. */
static int session_act (lua_State *L) {
  Session *s = checksession(L, 1);
  if (lua_isnoneornil(L, 2))
    lcpp_multi_ready(s);
  else {
    curl_socket_t fd = (curl_socket_t)luaL_checkinteger(L, 2);
    const char *ev = luaL_optstring(L, 3, "r");
    int flags = 0;
    if (strchr(ev, 'r')) flags |= CURL_CSELECT_IN;
    if (strchr(ev, 'w')) flags |= CURL_CSELECT_OUT;
    if (strchr(ev, 'e')) flags |= CURL_CSELECT_ERR;
    lcpp_multi_act(s, fd, flags);
  }
  lcpp_timers(s);
  return 0;
}


static int session_tostring (lua_State *L) {
  Session *s = (Session *)luaL_checkudata(L, 1, LCPP_SESSION_MT);
  lua_pushfstring(L, "llamacpp.Session (%s)", s->multi ? "open" : "closed");
  return 1;
}

/* }====== */


/* registered by core.c */
const luaL_Reg lcpp_session_methods[] = {
  {"open", session_open},
  {"step", session_step},
  {"sockets", session_sockets},
  {"fd", session_fd},
  {"timeout", session_timeout},
  {"act", session_act},
  {"close", session_close},
  {NULL, NULL}
};

const luaL_Reg lcpp_session_metas[] = {
  {"__gc", session_close},
  {"__tostring", session_tostring},
  {NULL, NULL}
};
