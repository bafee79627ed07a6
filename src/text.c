/*
** text.c: core.text() -> a llamacpp.Text, the text of a stream assembled
** from its pieces (done.content, done.reasoning, err.partial) in a list
** of malloc'd chunks: a stream of N bytes of tokens keeps about N bytes,
** not a Lua string per token and the collector's slack over them (with
** 256 streams at once that slack was most of what each stream cost).
**   t:add(s)    appends s
**   t:get()     the text so far, a string ("" when nothing was added)
**   t:empty()   true when nothing was added
** The chunks are freed by __gc; lua/llamacpp/text.lua is the module
** streams use.
*/
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "lcpp.h"


/* The text is a list of chunks, filled in turn and never moved: 256
   bytes, then 512, then 1 KiB each (a piece longer than that gets a chunk
   of its own size). No realloc, so no copies while a stream grows and no
   holes of every size in the heap when hundreds of streams grow side by
   side; only the last chunk is part-used (1 KiB chunks: 1.4 kB less per
   stream than 4 KiB ones with 256 streams of 10 KB each). */
#define CHUNK_MIN  256
#define CHUNK_MAX  1024

typedef struct Chunk {
  struct Chunk *next;
  size_t len, cap;
  char data[1];
} Chunk;

typedef struct {
  Chunk *head, *tail;
  size_t len;
} Text;


static Text *checktext (lua_State *L) {
  return (Text *)luaL_checkudata(L, 1, LCPP_TEXT_MT);
}


int lcpp_text_new (lua_State *L) {
  Text *t = (Text *)lua_newuserdata(L, sizeof *t);
  t->head = t->tail = NULL;
  t->len = 0;
  luaL_getmetatable(L, LCPP_TEXT_MT);
  lua_setmetatable(L, -2);
  return 1;
}


static int text_add (lua_State *L) {
  Text *t = checktext(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  while (n > 0) {
    Chunk *c = t->tail;
    size_t k;
    if (c == NULL || c->len == c->cap) {
      size_t cap = c == NULL ? CHUNK_MIN : c->cap < CHUNK_MAX ? c->cap * 2 : CHUNK_MAX;
      if (cap < n && n > CHUNK_MAX) cap = n;
      c = (Chunk *)malloc(offsetof(Chunk, data) + cap);
      if (c == NULL) return luaL_error(L, "not enough memory");
      c->next = NULL;
      c->len = 0;
      c->cap = cap;
      if (t->tail) t->tail->next = c; else t->head = c;
      t->tail = c;
    }
    k = c->cap - c->len < n ? c->cap - c->len : n;
    memcpy(c->data + c->len, s, k);
    c->len += k;
    t->len += k;
    s += k;
    n -= k;
  }
  return 0;
}


static int text_get (lua_State *L) {
  Text *t = checktext(L);
  const Chunk *c;
  luaL_Buffer b;
  if (t->head == t->tail) {                 /* none or one chunk: no copy */
    lua_pushlstring(L, t->head ? t->head->data : "", t->len);
    return 1;
  }
  luaL_buffinit(L, &b);
  for (c = t->head; c; c = c->next) luaL_addlstring(&b, c->data, c->len);
  luaL_pushresult(&b);
  return 1;
}


static int text_empty (lua_State *L) {
  lua_pushboolean(L, checktext(L)->len == 0);
  return 1;
}


static int text_gc (lua_State *L) {
  Text *t = checktext(L);
  Chunk *c = t->head;
  while (c) {
    Chunk *next = c->next;
    free(c);
    c = next;
  }
  t->head = t->tail = NULL;
  t->len = 0;
  return 0;
}


const luaL_Reg lcpp_text_methods[] = {
  {"add", text_add},
  {"get", text_get},
  {"empty", text_empty},
  {NULL, NULL}
};

const luaL_Reg lcpp_text_metas[] = {
  {"__gc", text_gc},
  {NULL, NULL}
};
