/*
** media.c: core.base64(s [, prefix]) -> prefix .. base64(s), RFC 4648
** with padding, no line breaks (a data URI's payload). Images are
** megabytes: the result is written once into a scratch userdata (freed by
** the GC, so an allocation error in between leaks nothing) and made a
** string in one copy, the prefix ("data:image/png;base64,") included, so
** Lua never concatenates the large string.
*/
#include <stddef.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcpp.h"


static const char b64[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";


/* core.base64(s [, prefix]) -> string */
int lcpp_core_base64 (lua_State *L) {
  size_t n, np = 0, out, i;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  const char *prefix = luaL_optlstring(L, 2, "", &np);
  char *buf, *w;
  if (n / 3 >= ((size_t)-1 - np) / 4 - 1)
    return luaL_error(L, "base64: input too large");
  out = np + (n + 2) / 3 * 4;
  buf = (char *)lua_newuserdata(L, out > 0 ? out : 1);
  memcpy(buf, prefix, np);
  w = buf + np;
  for (i = 0; i + 2 < n; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    *w++ = b64[v >> 18];
    *w++ = b64[v >> 12 & 63];
    *w++ = b64[v >> 6 & 63];
    *w++ = b64[v & 63];
  }
  if (i < n) {                          /* 1 or 2 bytes left: padding */
    unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0u);
    *w++ = b64[v >> 18];
    *w++ = b64[v >> 12 & 63];
    *w++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
    *w++ = '=';
  }
  lua_pushlstring(L, buf, out);
  return 1;
}
