/*
** lcpp.h: what the C files of llamacpp.core share. Nothing here is
** exported from the shared object: only luaopen_llamacpp_core is.
**
** The files, each using only those above it (none imports one that
** imports it back):
**   clock.c fastpath.c sse.c   time; the template fast path; framing
**   error.c                    the Error metatable, failures -> Error
**   multi.c                    a session's CURLM: sockets, timer, waiting
**   transfer.c                 one transfer's life, what is due and ended
**   session.c                  the llamacpp.Session type
**   core.c                     luaopen_llamacpp_core: registration only
*/
#ifndef LCPP_H
#define LCPP_H

#include <stddef.h>

#include <curl/curl.h>
#include "lua.h"
#include "lauxlib.h"

#include "sse.h"

#if defined(__GNUC__) && !defined(_WIN32)
#define LCPP_HIDDEN  __attribute__((visibility("hidden")))
#define LCPP_EXPORT  __attribute__((visibility("default")))
#else
#define LCPP_HIDDEN
#define LCPP_EXPORT
#endif

#define LCPP_ERROR_MT     "llamacpp.Error"
#define LCPP_SESSION_MT   "llamacpp.Session"
#define LCPP_TRANSFER_MT  "llamacpp.Transfer"
#define LCPP_TEXT_MT      "llamacpp.Text"


/* the template of a plain event: head, mid, tail; part[0] == NULL: none */
typedef struct { char *part[3]; size_t len[3]; } lcpp_template;

/* failures found by us rather than by libcurl */
#define FAIL_NONE       0
#define FAIL_CANCEL     1    /* session closed under the transfer */
#define FAIL_FRAME      2    /* parser error (oversized event, no memory) */
#define FAIL_BODY       3    /* body over max_body */
#define FAIL_HEADERS    4    /* header block over MAX_HEADERS (transfer.c) */
#define FAIL_FIRSTBYTE  5    /* first_byte_timeout */
#define FAIL_IDLE       6    /* idle_timeout */
#define FAIL_NOMEM      7
#define FAIL_POLL       8
#define FAIL_HEADCUT    9    /* closed before the header block ended */


typedef struct { char *p; size_t len, cap; } lcpp_buf;

typedef struct Session Session;
typedef struct Transfer Transfer;

/* multi.c keeps the socket arrays, timer_at and epfd; transfer.c the
   list of attached transfers and the pool. */
struct Session {
  CURLM *multi;            /* NULL: closed */
  Transfer *head;          /* transfers attached to multi */
  struct pollfd *fds;      /* sockets libcurl asked us to watch */
  unsigned *serials;       /* per fds[i]: changes when the socket is new */
  Transfer **owners;       /* per fds[i]: the transfer using it, or NULL */
  unsigned nextserial;
  int nfds, capfds;
  double timer_at;         /* libcurl's timer, monotonic ms; < 0: none */
  int changed;             /* the socket set changed since sockets() */
  CURL *pool[8];           /* easy handles of ended transfers, for reuse */
  int npool;
  int epfd;                /* epoll set mirroring fds, for event loops; -1 */
};

/* transfer.c's; multi.c only links it (prev, next, session) and marks
   activity (tlast); error.c reads its failure. */
struct Transfer {
  CURL *easy;              /* NULL: finished or closed */
  Session *session;        /* non-NULL while attached to session->multi */
  Session *home;           /* its session; alive while sref holds it */
  Transfer *prev, *next;
  int sref;                /* registry ref keeping the session alive */
  int closed;              /* closed by the caller: next() raises */
  int done;                /* libcurl (or we) ended the transfer */
  int ended;               /* next() has returned the end or the error */
  int paused;
  int framing, mode, fail, gotbyte;
  int headend;             /* the blank line closing the headers was seen */
  CURLcode result;
  long status;
  struct curl_slist *headers;
  char *body;              /* request body: CURLOPT_POSTFIELDS does not copy */
  lcpp_frame frame;
  lcpp_buf q;              /* queued events: [namelen][datalen][name][data] */
  size_t qhead;
  lcpp_buf raw;            /* body, when not framed */
  lcpp_buf hdr;            /* header lines of the last response */
  size_t maxbody;
  lcpp_template tpl;       /* of a plain event (fastpath.c) */
  double t0, tlast;        /* start, last byte (monotonic ms) */
  double first_byte_ms, idle_ms, total_ms;
  char errbuf[CURL_ERROR_SIZE];
};


/* clock.c */
LCPP_HIDDEN double lcpp_now (void);
LCPP_HIDDEN int lcpp_core_now (lua_State *L);
LCPP_HIDDEN int lcpp_core_sleep (lua_State *L);
LCPP_HIDDEN int lcpp_core_hash (lua_State *L);

/* media.c */
LCPP_HIDDEN int lcpp_core_base64 (lua_State *L);

/* error.c */
LCPP_HIDDEN void lcpp_error_open (lua_State *L);
LCPP_HIDDEN void lcpp_pushfailure (lua_State *L, const Transfer *t);
LCPP_HIDDEN void lcpp_setinteger (lua_State *L, const char *k, lua_Integer v);

/* fastpath.c */
LCPP_HIDDEN long lcpp_plain (const lcpp_template *tpl, const char *d,
                             size_t n, char *out);

/* multi.c */
LCPP_HIDDEN int lcpp_multi_open (Session *s);
LCPP_HIDDEN void lcpp_multi_close (Session *s);
LCPP_HIDDEN int lcpp_attach (Session *s, Transfer *t);
LCPP_HIDDEN void lcpp_detach (Transfer *t);
LCPP_HIDDEN int lcpp_onclose (void *ud, curl_socket_t fd);
LCPP_HIDDEN void lcpp_multi_act (Session *s, curl_socket_t fd, int flags);
LCPP_HIDDEN void lcpp_multi_timer (Session *s);
LCPP_HIDDEN int lcpp_multi_wait (Session *s, double wait_ms);
LCPP_HIDDEN int lcpp_multi_fd (Session *s);
LCPP_HIDDEN void lcpp_multi_ready (Session *s);

/* transfer.c */
LCPP_HIDDEN int lcpp_transfer_new (lua_State *L, Session *s);
LCPP_HIDDEN void lcpp_finish (Transfer *t, CURLcode result, int fail);
LCPP_HIDDEN double lcpp_earliest (Session *s);
LCPP_HIDDEN void lcpp_timers (Session *s);
LCPP_HIDDEN int lcpp_step (Session *s, double wait_ms);
LCPP_HIDDEN extern const luaL_Reg lcpp_transfer_methods[];
LCPP_HIDDEN extern const luaL_Reg lcpp_transfer_metas[];

/* text.c */
LCPP_HIDDEN int lcpp_text_new (lua_State *L);
LCPP_HIDDEN extern const luaL_Reg lcpp_text_methods[];
LCPP_HIDDEN extern const luaL_Reg lcpp_text_metas[];

/* session.c */
LCPP_HIDDEN int lcpp_session_new (lua_State *L);
LCPP_HIDDEN extern const luaL_Reg lcpp_session_methods[];
LCPP_HIDDEN extern const luaL_Reg lcpp_session_metas[];

#endif
