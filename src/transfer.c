/*
** transfer.c: one transfer's life. session:open builds it (options, the
** easy handle, attached to the session's multi), libcurl's write and header
** callbacks fill its queue or its body, our first-byte and idle deadlines
** and libcurl's result end it, and its Lua methods (next, take, ready,
** result, response, close) hand out what it got. multi.c waits on the
** sockets; this file decides what is due and what has ended.
**
** Callbacks never touch Lua (a Lua error would longjmp through libcurl):
** the write callback feeds the SSE/NDJSON parser, which appends events to
** the transfer's C queue; Lua sees them in next(), after libcurl returned.
*/
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "lcpp.h"
#include "sse.h"


#define MODE_UNDECIDED  0
#define MODE_FRAMED     1    /* 2xx with the expected framing: parse events */
#define MODE_RAW        2    /* anything else: keep the body whole */

#define FRAMING_NONE    (-1)

#define MAX_HEADERS     (256 * 1024)
#define DEFAULT_MAXBODY (64u * 1024u * 1024u)
/* a consumer that stops reading pauses its transfer instead of queueing
   without bound; it resumes once the queue is half drained */
#define QUEUE_HIGH      (64 * 1024)


/* {====== Buffers ====== */

static int lcpp_reserve (lcpp_buf *b, size_t extra) {
  size_t need = b->len + extra, cap;
  char *p;
  if (need <= b->cap) return 0;
  if (need < extra) return -1;                     /* overflow */
  cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  p = (char *)realloc(b->p, cap);
  if (p == NULL) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}


static int lcpp_append (lcpp_buf *b, const void *s, size_t n) {
  if (lcpp_reserve(b, n)) return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}


static void lcpp_buffree (lcpp_buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* }====== */


/* {====== libcurl callbacks: C only ====== */

/* A queued event: [namelen][datalen][end][name][data]; namelen PLAIN
   when the data is the text of an event of the template's shape. */
#define PLAIN  ((size_t)-1)

static int lcpp_onevent (void *ud, const char *ev, size_t evlen,
                         const char *data, size_t datalen) {
  Transfer *t = (Transfer *)ud;
  size_t h[3];
  h[0] = evlen;
  h[1] = datalen;
  h[2] = t->frame.evend;
  if (lcpp_reserve(&t->q, sizeof h + evlen + datalen)) return 1;
  if (evlen == 0 && t->tpl.part[0] != NULL) {
    long n = lcpp_plain(&t->tpl, data, datalen, t->q.p + t->q.len + sizeof h);
    if (n >= 0) {                          /* its text only: a few bytes */
      h[0] = PLAIN;
      h[1] = (size_t)n;
      memcpy(t->q.p + t->q.len, h, sizeof h);
      t->q.len += sizeof h + (size_t)n;
      return 0;
    }
  }
  memcpy(t->q.p + t->q.len, h, sizeof h);
  memcpy(t->q.p + t->q.len + sizeof h, ev, evlen);
  memcpy(t->q.p + t->q.len + sizeof h + evlen, data, datalen);
  t->q.len += sizeof h + evlen + datalen;
  return 0;
}


static int lcpp_prefix (const char *s, const char *prefix) {
  for (; *prefix; s++, prefix++) {
    char c = *s;
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (c != *prefix) return 0;
  }
  return 1;
}


/* At the first body byte (or the end): parse events only from a 2xx
   answer with the expected type; keep anything else whole for Lua. */
static void lcpp_decide (Transfer *t) {
  long status = 0;
  char *ct = NULL;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ct);
  t->status = status;
  t->mode = MODE_RAW;
  if (t->framing != FRAMING_NONE && status >= 200 && status < 300 &&
      (t->framing == LCPP_NDJSON ||
       (ct != NULL && lcpp_prefix(ct, "text/event-stream"))))
    t->mode = MODE_FRAMED;
}


static size_t lcpp_onwrite (char *p, size_t size, size_t n, void *ud) {
  Transfer *t = (Transfer *)ud;
  size_t len = size * n;
  t->gotbyte = 1;
  t->tlast = lcpp_now();
  if (t->mode == MODE_UNDECIDED) lcpp_decide(t);
  if (t->mode == MODE_RAW) {
    if (t->raw.len + len > t->maxbody) { t->fail = FAIL_BODY; return 0; }
    if (lcpp_append(&t->raw, p, len)) { t->fail = FAIL_NOMEM; return 0; }
    return len;
  }
  if (t->q.len - t->qhead > QUEUE_HIGH) {          /* nobody is reading */
    t->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (lcpp_frame_feed(&t->frame, p, len, lcpp_onevent, t) != LCPP_FRAME_OK) {
    t->fail = FAIL_FRAME;
    return 0;                                      /* -> CURLE_WRITE_ERROR */
  }
  return len;
}


static size_t lcpp_onheader (char *p, size_t size, size_t n, void *ud) {
  Transfer *t = (Transfer *)ud;
  size_t len = size * n;
  t->gotbyte = 1;
  t->tlast = lcpp_now();
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    t->hdr.len = 0;                 /* a new response: 1xx or a redirect */
    t->headend = 0;
  } else if (len <= 2 && (p[0] == '\r' || p[0] == '\n'))
    t->headend = 1;
  if (t->hdr.len + len > MAX_HEADERS) { t->fail = FAIL_HEADERS; return 0; }
  if (lcpp_append(&t->hdr, p, len)) { t->fail = FAIL_NOMEM; return 0; }
  return len;
}


/* }====== */


/* {====== Its end, and what is due ====== */

/* The transfer is over, well or not: stop it and flush the parser. */
void lcpp_finish (Transfer *t, CURLcode result, int fail) {
  if (t->done) return;
  t->done = 1;
  t->result = result;
  if (t->fail == FAIL_NONE) t->fail = fail;
  /* libcurl takes a connection closed inside the header block for the
     end of a bodiless answer; it is a lost connection */
  if (result == CURLE_OK && t->fail == FAIL_NONE && !t->headend)
    t->fail = FAIL_HEADCUT;
  if (t->mode == MODE_UNDECIDED) lcpp_decide(t);
  lcpp_detach(t);
  if (t->mode == MODE_FRAMED && t->fail == FAIL_NONE && result == CURLE_OK &&
      lcpp_frame_finish(&t->frame, lcpp_onevent, t, NULL) != LCPP_FRAME_OK)
    t->fail = FAIL_FRAME;
}


static void lcpp_reap (Session *s) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
    char *p = NULL;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &p);
    lcpp_finish((Transfer *)(void *)p, m->data.result, FAIL_NONE);
  }
}


/* Our own two timeouts; libcurl keeps connect and total. */
static double lcpp_deadline (Transfer *t) {
  if (t->paused) return -1;               /* silence is the reader's doing */
  if (!t->gotbyte) return t->first_byte_ms > 0 ? t->t0 + t->first_byte_ms : -1;
  return t->idle_ms > 0 ? t->tlast + t->idle_ms : -1;
}


double lcpp_earliest (Session *s) {
  double at = s->timer_at;
  Transfer *t;
  for (t = s->head; t != NULL; t = t->next) {
    double d = lcpp_deadline(t);
    if (d >= 0 && (at < 0 || d < at)) at = d;
  }
  return at;
}


static void lcpp_expire (Session *s, double now) {
  Transfer *t = s->head;
  while (t != NULL) {
    Transfer *next = t->next;
    double d = lcpp_deadline(t);
    if (d >= 0 && now >= d)
      lcpp_finish(t, CURLE_OK, t->gotbyte ? FAIL_IDLE : FAIL_FIRSTBYTE);
    t = next;
  }
}


/* What is due once sockets were served: libcurl's timer, our timeouts,
   and the transfers libcurl finished. */
void lcpp_timers (Session *s) {
  lcpp_multi_timer(s);
  lcpp_reap(s);
  lcpp_expire(s, lcpp_now());
}


/*
** Waits at most wait_ms (< 0: until something happens) for a socket, a
** timer or a deadline of ours, and lets libcurl do what is ready. Returns
** 0, or -1 when poll() failed (errno set).
*/
int lcpp_step (Session *s, double wait_ms) {
  double at = lcpp_earliest(s), now = lcpp_now();
  if (at >= 0) {
    double d = at > now ? at - now : 0;
    if (wait_ms < 0 || d < wait_ms) wait_ms = d;
  }
  if (lcpp_multi_wait(s, wait_ms) < 0) return -1;
  lcpp_timers(s);
  return 0;
}

/* }====== */


/* {====== Opening ====== */

/* Above any timeout (about 31 years in ms) or size we can honour, and
   below LONG_MAX of 64-bit longs and SIZE_MAX: see lcpp_tolong. */
#define LCPP_MAXOPT 1e12


static long lcpp_tolong (double v) {
  return v >= (double)LONG_MAX ? LONG_MAX : (long)v;
}


static size_t lcpp_tosize (double v) {
  return v >= (double)SIZE_MAX ? SIZE_MAX : (size_t)v;
}


/* Reads opts[k] as a number of milliseconds; 0 or absent means none. */
static double lcpp_optms (lua_State *L, int opts, const char *k) {
  double v;
  lua_getfield(L, opts, k);
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return 0; }
  if (!lua_isnumber(L, -1)) luaL_error(L, "option '%s' must be a number", k);
  v = (double)lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (v != v) luaL_error(L, "option '%s' is NaN", k);
  if (v < 0) luaL_error(L, "option '%s' must not be negative", k);
  /* huge values (math.huge too) mean no limit in practice: clamp them
     where a conversion to an integer type would overflow */
  return v > LCPP_MAXOPT ? LCPP_MAXOPT : v;
}


static const char *lcpp_optstr (lua_State *L, int opts, const char *k,
                                size_t *len) {
  const char *s = NULL;
  lua_getfield(L, opts, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "option '%s' must be a string", k);
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1);   /* still referenced by opts */
  return s;
}


static int lcpp_optbool (lua_State *L, int opts, const char *k) {
  int b;
  lua_getfield(L, opts, k);
  b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}


/* A header line is refused if it carries CR, LF or NUL: those would let
   a value smuggle another header or request into the connection. */
static void lcpp_setheaders (lua_State *L, int opts, Transfer *t) {
  int i, n;
  lua_getfield(L, opts, "headers");
  if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
  luaL_argcheck(L, lua_istable(L, -1), 2, "option 'headers' must be a table");
  n = (int)lua_rawlen(L, -1);
  for (i = 1; i <= n; i++) {
    size_t len, j;
    const char *h;
    struct curl_slist *l;
    lua_rawgeti(L, -1, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "header %d must be a string", i);
    h = lua_tolstring(L, -1, &len);
    for (j = 0; j < len; j++)
      if (h[j] == '\r' || h[j] == '\n' || h[j] == '\0')
        luaL_error(L, "header %d contains CR, LF or NUL", i);
    l = curl_slist_append(t->headers, h);
    if (l == NULL) luaL_error(L, "out of memory");
    t->headers = l;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}


#define SETOPT(o, v)  if (curl_easy_setopt(t->easy, o, v) != CURLE_OK) \
                        return luaL_error(L, "cannot set " #o)

/*
** session:open{url=, method=, headers={"Name: value", ...}, body=,
** framing="sse"|"ndjson"|nil, connect_timeout=, first_byte_timeout=,
** idle_timeout=, timeout= (ms), max_event=, max_body= (bytes), proxy=,
** ca_file=, ca_path=, insecure=, follow=, accept_encoding=, user_agent=,
** unix_socket=, template={head, mid, tail}}
** -> Transfer (already started). See lcpp_plain (fastpath.c) for the template.
** s is the open Session at index 1 (session.c checked it).
*/
int lcpp_transfer_new (lua_State *L, Session *s) {
  Transfer *t;
  const char *url, *method, *fr, *str;
  size_t bodylen = 0;
  double v;
  luaL_checktype(L, 2, LUA_TTABLE);
  t = (Transfer *)lua_newuserdata(L, sizeof *t);   /* s, opts, t */
  memset(t, 0, sizeof *t);
  t->sref = LUA_NOREF;
  t->framing = FRAMING_NONE;
  t->t0 = t->tlast = lcpp_now();
  luaL_getmetatable(L, LCPP_TRANSFER_MT);
  lua_setmetatable(L, -2);
  url = lcpp_optstr(L, 2, "url", NULL);
  luaL_argcheck(L, url != NULL, 2, "option 'url' is required");
  fr = lcpp_optstr(L, 2, "framing", NULL);
  if (fr != NULL) {
    if (strcmp(fr, "sse") == 0) t->framing = LCPP_SSE;
    else if (strcmp(fr, "ndjson") == 0) t->framing = LCPP_NDJSON;
    else luaL_argerror(L, 2, "option 'framing' must be \"sse\" or \"ndjson\"");
  }
  v = lcpp_optms(L, 2, "max_event");
  lcpp_frame_init(&t->frame, t->framing == LCPP_NDJSON ? LCPP_NDJSON : LCPP_SSE,
                  lcpp_tosize(v));
  v = lcpp_optms(L, 2, "max_body");
  t->maxbody = v > 0 ? lcpp_tosize(v) : DEFAULT_MAXBODY;
  t->first_byte_ms = lcpp_optms(L, 2, "first_byte_timeout");
  t->idle_ms = lcpp_optms(L, 2, "idle_timeout");
  t->total_ms = lcpp_optms(L, 2, "timeout");
  lcpp_setheaders(L, 2, t);
  str = lcpp_optstr(L, 2, "body", &bodylen);
  if (str != NULL) {
    t->body = (char *)malloc(bodylen ? bodylen : 1);
    if (t->body == NULL) return luaL_error(L, "out of memory");
    memcpy(t->body, str, bodylen);
  }
  lua_getfield(L, 2, "template");
  if (!lua_isnil(L, -1)) {
    int i;
    luaL_argcheck(L, lua_istable(L, -1), 2, "option 'template' must be a table");
    for (i = 0; i < 3; i++) {
      size_t len;
      const char *part;
      lua_rawgeti(L, -1, i + 1);
      part = lua_tolstring(L, -1, &len);
      if (part == NULL || len == 0)
        luaL_argerror(L, 2, "option 'template' must hold 3 non-empty strings");
      t->tpl.part[i] = (char *)malloc(len);
      if (t->tpl.part[i] == NULL) return luaL_error(L, "out of memory");
      memcpy(t->tpl.part[i], part, len);
      t->tpl.len[i] = len;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  method = lcpp_optstr(L, 2, "method", NULL);
  t->easy = s->npool > 0 ? s->pool[--s->npool] : curl_easy_init();
  if (t->easy == NULL) return luaL_error(L, "curl_easy_init failed");
  t->home = s;
  SETOPT(CURLOPT_URL, url);
  SETOPT(CURLOPT_PRIVATE, (void *)t);
  SETOPT(CURLOPT_ERRORBUFFER, t->errbuf);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_WRITEFUNCTION, lcpp_onwrite);
  SETOPT(CURLOPT_WRITEDATA, (void *)t);
  SETOPT(CURLOPT_HEADERFUNCTION, lcpp_onheader);
  SETOPT(CURLOPT_HEADERDATA, (void *)t);
  SETOPT(CURLOPT_CLOSESOCKETFUNCTION, lcpp_onclose);
  SETOPT(CURLOPT_CLOSESOCKETDATA, (void *)s);
  SETOPT(CURLOPT_TCP_NODELAY, 1L);
  SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
  /* a proxy's CONNECT answer is not the server's: its headers stay out of
     the response (a refusal comes back as CURLINFO_HTTP_CONNECTCODE) */
  SETOPT(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  /* HTTP/2 (https, by ALPN): a transfer started while a connection to the
     same host is still being set up waits to multiplex on it instead of
     opening its own (20 streams from a cold start: one connection, not
     20). Not for http://: libcurl 7.88 then waits for a busy HTTP/1.1
     connection to be free, and a second stream would wait for the first */
  if (strncmp(url, "https:", 6) == 0) SETOPT(CURLOPT_PIPEWAIT, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  SETOPT(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  SETOPT(CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  if (t->headers) SETOPT(CURLOPT_HTTPHEADER, t->headers);
  if (t->body != NULL) {
    SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen);
    SETOPT(CURLOPT_POSTFIELDS, t->body);
  }
  if (method != NULL && strcmp(method, t->body ? "POST" : "GET") != 0)
    SETOPT(CURLOPT_CUSTOMREQUEST, method);
  if (t->total_ms > 0) SETOPT(CURLOPT_TIMEOUT_MS, lcpp_tolong(t->total_ms));
  v = lcpp_optms(L, 2, "connect_timeout");
  if (v > 0) SETOPT(CURLOPT_CONNECTTIMEOUT_MS, lcpp_tolong(v));
  if ((str = lcpp_optstr(L, 2, "proxy", NULL)) != NULL) SETOPT(CURLOPT_PROXY, str);
  if ((str = lcpp_optstr(L, 2, "unix_socket", NULL)) != NULL)
    SETOPT(CURLOPT_UNIX_SOCKET_PATH, str);         /* libcurl copies it */
  if ((str = lcpp_optstr(L, 2, "ca_file", NULL)) != NULL) SETOPT(CURLOPT_CAINFO, str);
  if ((str = lcpp_optstr(L, 2, "ca_path", NULL)) != NULL) SETOPT(CURLOPT_CAPATH, str);
  if (lcpp_optbool(L, 2, "insecure")) {
    SETOPT(CURLOPT_SSL_VERIFYPEER, 0L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (lcpp_optbool(L, 2, "follow")) {
    SETOPT(CURLOPT_FOLLOWLOCATION, 1L);
    SETOPT(CURLOPT_MAXREDIRS, 5L);
    /* a chat is a POST: keep it one after 301/302/303 (libcurl's default
       turns it into a body-less GET, as old browsers did) */
    SETOPT(CURLOPT_POSTREDIR, (long)CURL_REDIR_POST_ALL);
  }
  if ((str = lcpp_optstr(L, 2, "accept_encoding", NULL)) != NULL)
    SETOPT(CURLOPT_ACCEPT_ENCODING, str);
  if ((str = lcpp_optstr(L, 2, "user_agent", NULL)) != NULL)
    SETOPT(CURLOPT_USERAGENT, str);
  if (lcpp_attach(s, t) != 0)
    return luaL_error(L, "curl_multi_add_handle failed");
  lua_pushvalue(L, 1);                   /* s, opts, t, s */
  t->sref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* }====== */


/* {====== Transfer ====== */

static Transfer *checktransfer (lua_State *L, int i) {
  return (Transfer *)luaL_checkudata(L, i, LCPP_TRANSFER_MT);
}


static Transfer *checkopen (lua_State *L, int i) {
  Transfer *t = checktransfer(L, i);
  luaL_argcheck(L, !t->closed, i, "transfer is closed");
  return t;
}


/* Frees what libcurl and the parser hold; keeps status, headers, body. */
static void lcpp_release (Transfer *t) {
  int i;
  if (t->easy != NULL) {
    Session *s = t->home;
    lcpp_detach(t);
    /* a reset handle starts the next request of the session cheaper than
       a new one; its connection, if kept, is in the session's cache */
    if (s != NULL && s->multi != NULL && s->npool < (int)(sizeof s->pool / sizeof s->pool[0])) {
      curl_easy_reset(t->easy);
      s->pool[s->npool++] = t->easy;
    } else
      curl_easy_cleanup(t->easy);
    t->easy = NULL;
  }
  curl_slist_free_all(t->headers);
  t->headers = NULL;
  free(t->body);
  t->body = NULL;
  lcpp_frame_free(&t->frame);
  lcpp_buffree(&t->q);
  t->qhead = 0;
  for (i = 0; i < 3; i++) {
    free(t->tpl.part[i]);
    t->tpl.part[i] = NULL;
  }
}


/* close, __gc and __close. Aborting a running transfer closes its
   connection, so the server sees the client go. Tolerates half-built
   userdata: every field starts zeroed. */
static int transfer_close (lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  if (t->closed) return 0;
  t->closed = 1;
  t->done = t->ended = 1;
  lcpp_release(t);
  lcpp_buffree(&t->raw);
  lcpp_buffree(&t->hdr);
  if (t->sref != LUA_NOREF && t->sref != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->sref);
    t->sref = LUA_NOREF;
  }
  return 0;
}


/* Pushes the next queued event: data, name (nil for the default), or for
   an event matching the template: its text, true; then the body bytes up
   to the event's end (SSE: a body read again from there begins with the
   next event; resumable streams). */
static int lcpp_pop (lua_State *L, Transfer *t) {
  size_t h[3];
  const char *p = t->q.p + t->qhead;
  memcpy(h, p, sizeof h);
  if (h[0] == PLAIN) {
    lua_pushlstring(L, p + sizeof h, h[1]);                  /* text */
    lua_pushboolean(L, 1);
    h[0] = 0;
  } else {
    lua_pushlstring(L, p + sizeof h + h[0], h[1]);           /* data */
    if (h[0] > 0) lua_pushlstring(L, p + sizeof h, h[0]);    /* name */
    else lua_pushnil(L);
  }
  lua_pushinteger(L, (lua_Integer)h[2]);
  t->qhead += sizeof h + h[0] + h[1];
  if (t->qhead == t->q.len)
    t->qhead = t->q.len = 0;
  else if (t->qhead > 65536 && t->qhead > t->q.len / 2) {
    memmove(t->q.p, t->q.p + t->qhead, t->q.len - t->qhead);
    t->q.len -= t->qhead;
    t->qhead = 0;
  }
  if (t->paused && t->easy != NULL && t->q.len - t->qhead < QUEUE_HIGH / 2) {
    t->paused = 0;
    t->tlast = lcpp_now();
    curl_easy_pause(t->easy, CURLPAUSE_CONT);
  }
  return 3;
}


/* The transfer is done and its queue empty: push the end (nothing) or
   the error, and release what libcurl held. */
static int lcpp_end (lua_State *L, Transfer *t) {
  t->ended = 1;
  if (t->fail == FAIL_NONE && t->result == CURLE_OK) {
    lcpp_release(t);
    return 0;
  }
  lcpp_pushfailure(L, t);                                 /* err */
  lcpp_release(t);
  lua_pushnil(L);
  lua_insert(L, -2);                                      /* nil, err */
  return 2;
}


/*
** transfer:next([timeout_ms]) -> data, name, ends | nil (end) | nil, err |
** false (timeout_ms passed with nothing ready; 0 = never block).
** For a framed stream each result is one event's data and name (nil for
** the default) and the body bytes up to its end (see lcpp_pop). A raw
** (unframed) transfer yields nothing but its end.
*/
static int transfer_next (lua_State *L) {
  Transfer *t = checkopen(L, 1);
  lua_Number tmo = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, tmo == tmo, 2, "timeout is NaN");
  double deadline = tmo < 0 ? -1 : lcpp_now() + (double)tmo;
  for (;;) {
    if (t->qhead < t->q.len) return lcpp_pop(L, t);
    if (t->ended) return 0;
    if (t->done) return lcpp_end(L, t);
    /* a negative wait is lcpp_step's "no limit": a deadline already
       passed (next(0) is one at once) must wait 0, never forever */
    double left = deadline < 0 ? -1 : deadline - lcpp_now();
    if (deadline >= 0 && left < 0) left = 0;
    if (lcpp_step(t->session, left) < 0)
      lcpp_finish(t, CURLE_OK, FAIL_POLL);
    if (deadline >= 0 && !t->done && t->qhead == t->q.len &&
        lcpp_now() >= deadline) {
      lua_pushboolean(L, 0);
      return 1;
    }
  }
}


static void lcpp_pushlower (lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  size_t i;
  luaL_buffinit(L, &b);
  for (i = 0; i < n; i++) {
    char c = s[i];
    luaL_addchar(&b, (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c);
  }
  luaL_pushresult(&b);
}


/* transfer:take() -> like next(0), but only what is already queued:
   it never drives the session (an event loop does that, see act()). */
static int transfer_take (lua_State *L) {
  Transfer *t = checkopen(L, 1);
  if (t->qhead < t->q.len) return lcpp_pop(L, t);
  if (t->ended) return 0;
  if (t->done) return lcpp_end(L, t);
  lua_pushboolean(L, 0);
  return 1;
}


/* transfer:ready() -> true when take() would return something other
   than false. */
static int transfer_ready (lua_State *L) {
  Transfer *t = checkopen(L, 1);
  lua_pushboolean(L, t->qhead < t->q.len || t->done);
  return 1;
}


/* transfer:mark() -> the body bytes up to the end of the last complete
   event (SSE: the last empty line): the events parsed from them are all
   queued or taken, so the body read again from there repeats none and
   misses none (resumable streams). */
static int transfer_mark (lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  lua_pushinteger(L, (lua_Integer)t->frame.mark);
  return 1;
}


/* transfer:result() -> status, body, framed: response() without the
   header table, for the common case that needs no header. */
static int transfer_result (lua_State *L) {
  Transfer *t = checkopen(L, 1);
  if (t->status > 0) lua_pushinteger(L, (lua_Integer)t->status);
  else lua_pushnil(L);
  lua_pushlstring(L, t->raw.p ? t->raw.p : "", t->raw.len);
  lua_pushboolean(L, t->mode == MODE_FRAMED);
  return 3;
}


/* transfer:response() -> {status=, headers={lowercase name=value}, body=,
   framed=}: what is known so far (complete once next() returned the end). */
static int transfer_response (lua_State *L) {
  Transfer *t = checkopen(L, 1);
  size_t i = 0;
  if (t->easy != NULL && t->mode == MODE_UNDECIDED && t->gotbyte) {
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    t->status = status;
  }
  lua_createtable(L, 0, 4);
  if (t->status > 0) lcpp_setinteger(L, "status", (lua_Integer)t->status);
  lua_pushboolean(L, t->mode == MODE_FRAMED);
  lua_setfield(L, -2, "framed");
  lua_pushlstring(L, t->raw.p ? t->raw.p : "", t->raw.len);
  lua_setfield(L, -2, "body");
  lua_newtable(L);                                      /* res, headers */
  while (i < t->hdr.len) {                /* "Name: value\r\n" lines */
    const char *line = t->hdr.p + i, *end, *colon, *v, *ve;
    end = (const char *)memchr(line, '\n', t->hdr.len - i);
    if (end == NULL) end = t->hdr.p + t->hdr.len;
    i = (size_t)(end - t->hdr.p) + 1;
    colon = (const char *)memchr(line, ':', (size_t)(end - line));
    if (colon == NULL || colon == line) continue;   /* status line, blank */
    for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++) ;
    for (ve = end; ve > v && (ve[-1] == '\r' || ve[-1] == ' '); ve--) ;
    lcpp_pushlower(L, line, (size_t)(colon - line));  /* res, headers, name */
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);                          /* res, headers, name, old */
    if (lua_isstring(L, -1)) {                  /* repeated: join with ", " */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, (size_t)(ve - v));
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, v, (size_t)(ve - v));
    }
    lua_rawset(L, -3);                          /* res, headers */
  }
  lua_setfield(L, -2, "headers");
  return 1;
}


static int transfer_tostring (lua_State *L) {
  Transfer *t = checktransfer(L, 1);
  lua_pushfstring(L, "llamacpp.Transfer (%s)", t->closed ? "closed"
                  : t->ended ? "ended" : t->done ? "done" : "running");
  return 1;
}

/* }====== */


/* registered by core.c */
const luaL_Reg lcpp_transfer_methods[] = {
  {"next", transfer_next},
  {"take", transfer_take},
  {"ready", transfer_ready},
  {"mark", transfer_mark},
  {"response", transfer_response},
  {"result", transfer_result},
  {"close", transfer_close},
  {NULL, NULL}
};

const luaL_Reg lcpp_transfer_metas[] = {
  {"__gc", transfer_close},
  {"__tostring", transfer_tostring},
#if LUA_VERSION_NUM >= 504
  {"__close", transfer_close},
#endif
  {NULL, NULL}
};
