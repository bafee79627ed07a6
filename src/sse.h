/*
** sse.h: incremental framing of event streams, in plain C (no lua.h).
**
** Two framings share one parser object:
**   LCPP_SSE     the WHATWG text/event-stream rules: LF, CRLF and CR line
**                ends, "field: value" lines (one leading space stripped),
**                multi-line data joined with LF, "event:" names, ":" comment
**                lines ignored, "id:"/"retry:"/unknown fields ignored, an
**                empty line dispatches, an event with no data is not
**                dispatched, a leading UTF-8 BOM is skipped.
**   LCPP_NDJSON  one event per non-empty line (Ollama); LF or CRLF ends a
**                line; the CR of a CRLF is not part of the data.
**
** Input may be split at any byte; output does not depend on the split.
** One event (its data, or one line) is bounded by max_event bytes; past
** that the parser stops with LCPP_FRAME_EOVERSIZE and its memory stays
** bounded, whatever the input.
*/
#ifndef LCPP_SSE_H
#define LCPP_SSE_H

#include <stddef.h>

/* Not exported from llamacpp.core even where the build does not pass
   -fvisibility=hidden (LuaRocks' builtin build): only luaopen_ is. */
#if defined(__GNUC__) && !defined(_WIN32)
#define LCPP_FRAME_API  __attribute__((visibility("hidden")))
#else
#define LCPP_FRAME_API
#endif

#define LCPP_SSE     0
#define LCPP_NDJSON  1

/* results of lcpp_frame_feed / lcpp_frame_finish */
#define LCPP_FRAME_OK         0
#define LCPP_FRAME_EOVERSIZE  1   /* an event or a line exceeded max_event */
#define LCPP_FRAME_ENOMEM     2   /* malloc/realloc failed */
#define LCPP_FRAME_EABORT     3   /* the emit callback returned non-zero */

/*
** Called once per complete event. `event` is the event name ("" when the
** stream gave none, i.e. the default "message"; always "" for NDJSON),
** `data` the event's data without its final LF. Neither is NUL-terminated
** and neither outlives the call. Return 0 to go on, non-zero to abort.
*/
typedef int (*lcpp_emit_fn) (void *ud, const char *event, size_t eventlen,
                             const char *data, size_t datalen);

typedef struct lcpp_frame {
  int mode;              /* LCPP_SSE or LCPP_NDJSON */
  size_t max_event;      /* bound on one event's data / one line */
  int state;             /* internal: BOM check, pending CR, ... */
  int error;             /* sticky: first error returned, 0 if none */
  char *line;            /* partial line carried between feeds */
  size_t linelen, linecap;
  char *data;            /* data of the event being built (SSE) */
  size_t datalen, datacap;
  int hasdata;           /* at least one data field seen */
  char *event;           /* name of the event being built (SSE) */
  size_t eventlen, eventcap;
  size_t nevents;        /* events emitted so far */
  size_t fed;            /* bytes fed so far */
  size_t mark;           /* bytes up to the end of the last empty line (SSE):
                            a parser fed the input from there on emits
                            exactly the events that follow */
  size_t evend;          /* in emit (SSE): bytes up to the end of the empty
                            line that ends the event being emitted, i.e.
                            the mark once that line is passed */
} lcpp_frame;

/* Initialise; max_event == 0 means the default (LCPP_FRAME_DEFAULT_MAX). */
#define LCPP_FRAME_DEFAULT_MAX  (16u * 1024u * 1024u)
LCPP_FRAME_API void lcpp_frame_init (lcpp_frame *f, int mode, size_t max_event);

/* Release the buffers; the object may be initialised again afterwards. */
LCPP_FRAME_API void lcpp_frame_free (lcpp_frame *f);

/*
** Feed n bytes. Calls emit for each event completed by these bytes, in
** order. Returns LCPP_FRAME_OK or an error; after an error every further
** call returns the same error without emitting.
*/
LCPP_FRAME_API int lcpp_frame_feed (lcpp_frame *f, const char *buf, size_t n,
                                    lcpp_emit_fn emit, void *ud);

/*
** End of input. NDJSON: a last line without its newline is emitted. SSE:
** an event not closed by an empty line is discarded (WHATWG); returns
** LCPP_FRAME_OK. *pending (if not NULL) is set to 1 when bytes of an
** unfinished line or event were left over, else 0.
*/
LCPP_FRAME_API int lcpp_frame_finish (lcpp_frame *f, lcpp_emit_fn emit,
                                      void *ud, int *pending);

#endif
