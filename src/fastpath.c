/*
** fastpath.c: the hot path of a token stream. An event of the template's
** shape (Lua's policy, given at open) is queued as the text of its one
** JSON string, un-escaped here, so that Lua decodes no JSON for it and the
** queue holds a few bytes per token instead of the whole chunk.
*/
#include <string.h>

#include "lua.h"

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
   into o, which has room for end - p bytes (a decoded string is never
   longer than its JSON); returns the position of that quote and the
   length in *len; NULL if malformed. */
static const char *lcpp_jstring (char *o, size_t *len, const char *p,
                                 const char *end) {
  char *o0 = o;
  while (p < end) {
    const char *q = p;
    while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
    memcpy(o, p, (size_t)(q - p));
    o += q - p;
    if (q == end || (unsigned char)*q < 0x20) return NULL;
    if (*q == '"') { *len = (size_t)(o - o0); return q; }
    if (q + 1 >= end) return NULL;
    switch (q[1]) {                                  /* an escape */
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '/': *o++ = '/'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u': {                                    /* 6 or 12 bytes in, at most 4 out */
        unsigned u, lo;
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
        if (u < 0x80) *o++ = (char)u;
        else if (u < 0x800) {
          *o++ = (char)(0xC0 | (u >> 6)); *o++ = (char)(0x80 | (u & 0x3F));
        } else if (u < 0x10000) {
          *o++ = (char)(0xE0 | (u >> 12)); *o++ = (char)(0x80 | ((u >> 6) & 0x3F));
          *o++ = (char)(0x80 | (u & 0x3F));
        } else {
          *o++ = (char)(0xF0 | (u >> 18)); *o++ = (char)(0x80 | ((u >> 12) & 0x3F));
          *o++ = (char)(0x80 | ((u >> 6) & 0x3F)); *o++ = (char)(0x80 | (u & 0x3F));
        }
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
** closing quote and the part after mid holds no '{' or '[', is the
** string's value alone: the hot path of a token stream is then one short
** string and no JSON decode in Lua. Writes the value to out (room for n
** bytes) and returns its length; -1 when the event has another shape.
*/
long lcpp_plain (const lcpp_template *tpl, const char *d, size_t n, char *out) {
  const char *body, *end, *q, *rest;
  size_t hl = tpl->len[0], ml = tpl->len[1], tl = tpl->len[2], len;
  if (n < hl + ml + tl || memcmp(d, tpl->part[0], hl) != 0 ||
      memcmp(d + n - tl, tpl->part[2], tl) != 0)
    return -1;
  body = d + hl;
  end = d + n - tl;
  q = (const char *)memchr(body, '"', (size_t)(end - body));
  if (q == NULL || (size_t)(end - q) < ml || memcmp(q, tpl->part[1], ml) != 0 ||
      memchr(body, '\\', (size_t)(q - body)) != NULL) {
    /* not the plain case: the text may hold escapes */
    q = lcpp_jstring(out, &len, body, end);
    if (q == NULL || (size_t)(end - q) < ml || memcmp(q, tpl->part[1], ml) != 0)
      return -1;
  } else {
    len = (size_t)(q - body);
    memcpy(out, body, len);
  }
  rest = q + ml;
  if (memchr(rest, '{', (size_t)(end - rest)) || memchr(rest, '[', (size_t)(end - rest)))
    return -1;
  return (long)len;
}

/* }====== */
