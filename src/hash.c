/*
** hash.c: core.hash(s) -> a number in [0, 2^53), the same for the same
** bytes in every process, Lua version and machine (so two routers agree on
** where a conversation goes without talking to each other). FNV-1a over
** the bytes, then MurmurHash3's 64-bit finaliser (FNV alone mixes its last
** bytes poorly), keeping the top 53 bits: exact in a double. Fixed: a
** change would move every conversation to another server.
*/
#include <stddef.h>
#include <stdint.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcpp.h"


static uint64_t lcpp_hash (const unsigned char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325u;                    /* FNV-1a 64 */
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3u;
  }
  h ^= h >> 33;                                         /* fmix64 */
  h *= 0xff51afd7ed558ccdu;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53u;
  h ^= h >> 33;
  return h >> 11;
}


/* core.hash(s) -> number */
int lcpp_core_hash (lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_pushnumber(L, (lua_Number)lcpp_hash((const unsigned char *)s, n));
  return 1;
}
