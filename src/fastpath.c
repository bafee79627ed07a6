/*
** fastpath.c: the hot path of a token stream. An event of the template's
** shape (Lua's policy, given at open) is handed to Lua as the text of its
** one JSON string, un-escaped here, so that Lua decodes no JSON for it.
*/
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "lcpp.h"


/* {====== JSON strings ====== */

static int lcpp_hex4 (const char *p, const char *end, unsigned *v) {
  int i;
  *v = 0;
  if (end - p < 4) return 0;
  for (i = 0; i < 4; i++) {
    char c = p[i];
    *v <<= 4;
    if (c >= '0' && c <= '9') *v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') *v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') *v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  return 1;
}


/* Decodes the JSON string body at p (up to its closing quote, before end)
   into b, and returns the position of that quote; NULL if malformed. */
static const char *lcpp_jstring (luaL_Buffer *b, const char *p,
                                 const char *end) {
  while (p < end) {
    const char *q = p;
    while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
    luaL_addlstring(b, p, (size_t)(q - p));
    if (q == end || (unsigned char)*q < 0x20) return NULL;
    if (*q == '"') return q;
    if (q + 1 >= end) return NULL;
    switch (q[1]) {                                  /* an escape */
      case '"': luaL_addchar(b, '"'); break;
      case '\\': luaL_addchar(b, '\\'); break;
      case '/': luaL_addchar(b, '/'); break;
      case 'b': luaL_addchar(b, '\b'); break;
      case 'f': luaL_addchar(b, '\f'); break;
      case 'n': luaL_addchar(b, '\n'); break;
      case 'r': luaL_addchar(b, '\r'); break;
      case 't': luaL_addchar(b, '\t'); break;
      case 'u': {
        unsigned u, lo;
        char utf[4];
        int n;
        if (!lcpp_hex4(q + 2, end, &u)) return NULL;
        q += 4;
        if (u >= 0xD800 && u <= 0xDBFF) {            /* a surrogate pair */
          if (end - q < 8 || q[2] != '\\' || q[3] != 'u' ||
              !lcpp_hex4(q + 4, end, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return NULL;
          u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
          q += 6;
        } else if (u >= 0xDC00 && u <= 0xDFFF)
          return NULL;
        if (u < 0x80) { utf[0] = (char)u; n = 1; }
        else if (u < 0x800) {
          utf[0] = (char)(0xC0 | (u >> 6)); utf[1] = (char)(0x80 | (u & 0x3F)); n = 2;
        } else if (u < 0x10000) {
          utf[0] = (char)(0xE0 | (u >> 12)); utf[1] = (char)(0x80 | ((u >> 6) & 0x3F));
          utf[2] = (char)(0x80 | (u & 0x3F)); n = 3;
        } else {
          utf[0] = (char)(0xF0 | (u >> 18)); utf[1] = (char)(0x80 | ((u >> 12) & 0x3F));
          utf[2] = (char)(0x80 | ((u >> 6) & 0x3F)); utf[3] = (char)(0x80 | (u & 0x3F)); n = 4;
        }
        luaL_addlstring(b, utf, (size_t)n);
        break;
      }
      default: return NULL;
    }
    p = q + 2;
  }
  return NULL;
}

/* }====== */


/* {====== The template ====== */

/*
** The template (Lua's policy, given at open): an event of the exact shape
** head <json string body> mid ... tail, where mid starts with the string's
** closing quote and the part after mid holds no '{' or '[', is pushed as
** the string's value alone: the hot path of a token stream is then one
** short string and no JSON decode in Lua. Returns 1 with the value pushed,
** 0 with the stack as it was when the event has another shape.
*/
int lcpp_plain (lua_State *L, const lcpp_template *tpl, const char *d,
                size_t n) {
  const char *body, *end, *q, *rest;
  size_t hl = tpl->len[0], ml = tpl->len[1], tl = tpl->len[2];
  luaL_Buffer b;
  if (n < hl + ml + tl || memcmp(d, tpl->part[0], hl) != 0 ||
      memcmp(d + n - tl, tpl->part[2], tl) != 0)
    return 0;
  body = d + hl;
  end = d + n - tl;
  q = (const char *)memchr(body, '"', (size_t)(end - body));
  if (q == NULL || (size_t)(end - q) < ml || memcmp(q, tpl->part[1], ml) != 0 ||
      memchr(body, '\\', (size_t)(q - body)) != NULL) {
    /* not the plain case: the text may hold escapes */
    luaL_buffinit(L, &b);
    q = lcpp_jstring(&b, body, end);
    if (q == NULL || (size_t)(end - q) < ml || memcmp(q, tpl->part[1], ml) != 0) {
      luaL_pushresult(&b);
      lua_pop(L, 1);
      return 0;
    }
  } else {
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, body, (size_t)(q - body));
  }
  rest = q + ml;
  if (memchr(rest, '{', (size_t)(end - rest)) || memchr(rest, '[', (size_t)(end - rest))) {
    luaL_pushresult(&b);
    lua_pop(L, 1);
    return 0;
  }
  luaL_pushresult(&b);
  return 1;
}

/* }====== */
