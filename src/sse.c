/*
** sse.c: incremental SSE / NDJSON framing (see sse.h for the contract).
**
** Lines that lie whole inside the input are parsed where they are; only
** the tail of a line cut by the end of a feed is copied into f->line.
** Every bound is checked on the content of a line, never on how it was
** split, so the output (events and errors) does not depend on the split.
*/
#include <stdlib.h>
#include <string.h>

#include "sse.h"

/* {====== limits and state ====== */

/*
** An SSE line may exceed max_event by this much: room for the field name
** of a "data: <value>" line, whose value alone counts against the bound.
*/
#define LCPP_SLACK      16
#define LCPP_MINCAP     256

/* bits of f->state */
#define LCPP_ST_BOMN    3   /* SSE: BOM bytes matched so far (0..2) */
#define LCPP_ST_BOMDONE 4   /* SSE: past the BOM check */
#define LCPP_ST_CR      8   /* SSE: last feed ended on CR; skip one LF */

static const char lcpp_bom[3] = { '\xEF', '\xBB', '\xBF' };

/* longest line kept in f->line: NDJSON keeps the CR of a CRLF there */
static size_t lcpp_linemax (const lcpp_frame *f) {
  return f->max_event + (f->mode == LCPP_NDJSON ? 1 : LCPP_SLACK);
}

/* }====== */


/* {====== buffers ====== */

/*
** Make room for `need` bytes. Geometric growth, but never past `limit`
** when `need` fits it, so memory stays within the bound, not 2x it.
*/
static int lcpp_reserve (char **buf, size_t *cap, size_t need,
                         size_t limit) {
  size_t ncap;
  char *nb;
  if (need <= *cap) return LCPP_FRAME_OK;
  ncap = *cap ? *cap * 2 : LCPP_MINCAP;
  if (ncap < need) ncap = need;
  if (ncap > limit && need <= limit) ncap = limit;
  nb = (char *)realloc(*buf, ncap);
  if (nb == NULL) return LCPP_FRAME_ENOMEM;
  *buf = nb;
  *cap = ncap;
  return LCPP_FRAME_OK;
}

/* append to the partial line; a partial line already too long is final */
static int lcpp_keep (lcpp_frame *f, const char *s, size_t n) {
  size_t max = lcpp_linemax(f);
  int rc;
  if (n == 0) return LCPP_FRAME_OK;
  if (n > max - f->linelen) return LCPP_FRAME_EOVERSIZE;
  rc = lcpp_reserve(&f->line, &f->linecap, f->linelen + n, max);
  if (rc != LCPP_FRAME_OK) return rc;
  memcpy(f->line + f->linelen, s, n);
  f->linelen += n;
  return LCPP_FRAME_OK;
}

/* }====== */


/* {====== SSE ====== */

static int lcpp_sse_dispatch (lcpp_frame *f, lcpp_emit_fn emit, void *ud) {
  size_t evlen = f->eventlen, dlen = f->datalen;
  f->eventlen = 0;  /* the name is reset even when nothing is dispatched */
  if (!f->hasdata) return LCPP_FRAME_OK;
  f->hasdata = 0;
  f->datalen = 0;
  f->nevents++;
  /* dlen >= 1: every data field appended an LF; the last one is dropped */
  if (emit != NULL &&
      emit(ud, evlen ? f->event : "", evlen, f->data, dlen - 1) != 0)
    return LCPP_FRAME_EABORT;
  return LCPP_FRAME_OK;
}

/* one complete line, without its line end */
static int lcpp_sse_line (lcpp_frame *f, const char *s, size_t len,
                          lcpp_emit_fn emit, void *ud) {
  const char *colon, *v;
  size_t nlen, vlen;
  int rc;
  if (len == 0) return lcpp_sse_dispatch(f, emit, ud);
  if (len > f->max_event + LCPP_SLACK) return LCPP_FRAME_EOVERSIZE;
  if (s[0] == ':') return LCPP_FRAME_OK;  /* comment */
  colon = (const char *)memchr(s, ':', len);
  if (colon != NULL) {
    nlen = (size_t)(colon - s);
    v = colon + 1;
    vlen = len - nlen - 1;
    if (vlen > 0 && *v == ' ') { v++; vlen--; }
  }
  else {  /* the whole line is the field name, the value is empty */
    nlen = len;
    v = s + len;
    vlen = 0;
  }
  if (nlen == 4 && memcmp(s, "data", 4) == 0) {
    /* the event's data would be datalen + vlen bytes if it ended here */
    if (f->datalen + vlen > f->max_event) return LCPP_FRAME_EOVERSIZE;
    rc = lcpp_reserve(&f->data, &f->datacap, f->datalen + vlen + 1,
                      f->max_event + 1);
    if (rc != LCPP_FRAME_OK) return rc;
    memcpy(f->data + f->datalen, v, vlen);
    f->datalen += vlen;
    f->data[f->datalen++] = '\n';
    f->hasdata = 1;
  }
  else if (nlen == 5 && memcmp(s, "event", 5) == 0) {
    rc = lcpp_reserve(&f->event, &f->eventcap, vlen, lcpp_linemax(f));
    if (rc != LCPP_FRAME_OK) return rc;
    if (vlen > 0) memcpy(f->event, v, vlen);
    f->eventlen = vlen;
  }
  /* id, retry and unknown fields are ignored */
  return LCPP_FRAME_OK;
}

/*
** Skip a UTF-8 BOM at the start of the stream, also when split across
** feeds; *pp is moved past the bytes looked at. On a mismatch the bytes
** matched so far were not a BOM and go back into the line.
*/
static int lcpp_sse_bom (lcpp_frame *f, const char **pp, const char *end) {
  const char *p = *pp;
  int k = f->state & LCPP_ST_BOMN;
  while (p < end && k < 3 && *p == lcpp_bom[k]) { p++; k++; }
  *pp = p;
  if (k < 3 && p == end) {  /* undecided: wait for more input */
    f->state = (f->state & ~LCPP_ST_BOMN) | k;
    return LCPP_FRAME_OK;
  }
  f->state = (f->state & ~LCPP_ST_BOMN) | LCPP_ST_BOMDONE;
  return k < 3 ? lcpp_keep(f, lcpp_bom, (size_t)k) : LCPP_FRAME_OK;
}

static int lcpp_sse_feed (lcpp_frame *f, const char *p, const char *end,
                          lcpp_emit_fn emit, void *ud) {
  const char *nl, *cr, *q, *buf = p;
  int rc, empty;
  if (!(f->state & LCPP_ST_BOMDONE)) {
    rc = lcpp_sse_bom(f, &p, end);
    if (rc != LCPP_FRAME_OK || p == end) return rc;
  }
  if (f->state & LCPP_ST_CR) {  /* the LF of a CRLF cut by the feed */
    if (p == end) return LCPP_FRAME_OK;
    f->state &= ~LCPP_ST_CR;
    if (*p == '\n') p++;
  }
  if (p == end) return LCPP_FRAME_OK;
  /*
  ** Next LF and next CR, each searched again only once passed: a stream
  ** without CR costs one memchr for CR per feed, not one per line.
  */
  nl = (const char *)memchr(p, '\n', (size_t)(end - p));
  if (nl == NULL) nl = end;
  cr = (const char *)memchr(p, '\r', (size_t)(end - p));
  if (cr == NULL) cr = end;
  while (p < end) {
    if (nl < p) {
      nl = (const char *)memchr(p, '\n', (size_t)(end - p));
      if (nl == NULL) nl = end;
    }
    if (cr < p) {
      cr = (const char *)memchr(p, '\r', (size_t)(end - p));
      if (cr == NULL) cr = end;
    }
    q = nl < cr ? nl : cr;
    if (q == end) return lcpp_keep(f, p, (size_t)(end - p));
    empty = f->linelen == 0 && q == p;
    if (empty)  /* the event it ends (if any) ends past its terminator */
      f->evend = f->fed + (size_t)(q + 1 - buf) +
                 (*q == '\r' && q + 1 < end && q[1] == '\n');
    if (f->linelen > 0) {  /* finish the line begun in an earlier feed */
      rc = lcpp_keep(f, p, (size_t)(q - p));
      if (rc == LCPP_FRAME_OK)
        rc = lcpp_sse_line(f, f->line, f->linelen, emit, ud);
      f->linelen = 0;
    }
    else
      rc = lcpp_sse_line(f, p, (size_t)(q - p), emit, ud);
    if (rc != LCPP_FRAME_OK) return rc;
    p = q + 1;
    if (*q == '\r') {
      if (p == end) f->state |= LCPP_ST_CR;
      else if (*p == '\n') p++;
    }
    /* after an empty line no event is half built: a restart point (the LF
       of a CRLF cut by the feed, if it comes, is an empty line again) */
    if (empty) f->mark = f->fed + (size_t)(p - buf);
  }
  return LCPP_FRAME_OK;
}

/* }====== */


/* {====== NDJSON ====== */

static int lcpp_nd_line (lcpp_frame *f, const char *s, size_t len,
                         lcpp_emit_fn emit, void *ud) {
  if (len > 0 && s[len - 1] == '\r') len--;
  if (len > f->max_event) return LCPP_FRAME_EOVERSIZE;
  if (len == 0) return LCPP_FRAME_OK;
  f->nevents++;
  if (emit != NULL && emit(ud, "", 0, s, len) != 0)
    return LCPP_FRAME_EABORT;
  return LCPP_FRAME_OK;
}

static int lcpp_nd_feed (lcpp_frame *f, const char *p, const char *end,
                         lcpp_emit_fn emit, void *ud) {
  const char *q;
  int rc;
  while (p < end) {
    q = (const char *)memchr(p, '\n', (size_t)(end - p));
    if (q == NULL) return lcpp_keep(f, p, (size_t)(end - p));
    if (f->linelen > 0) {
      rc = lcpp_keep(f, p, (size_t)(q - p));
      if (rc == LCPP_FRAME_OK)
        rc = lcpp_nd_line(f, f->line, f->linelen, emit, ud);
      f->linelen = 0;
    }
    else
      rc = lcpp_nd_line(f, p, (size_t)(q - p), emit, ud);
    if (rc != LCPP_FRAME_OK) return rc;
    p = q + 1;
  }
  return LCPP_FRAME_OK;
}

/* }====== */


/* {====== API ====== */

void lcpp_frame_init (lcpp_frame *f, int mode, size_t max_event) {
  memset(f, 0, sizeof(*f));
  f->mode = mode == LCPP_NDJSON ? LCPP_NDJSON : LCPP_SSE;
  if (max_event == 0) max_event = LCPP_FRAME_DEFAULT_MAX;
  /* keep max_event + slack and datalen + vlen far from overflow */
  if (max_event > ((size_t)-1) / 4) max_event = ((size_t)-1) / 4;
  f->max_event = max_event;
  if (f->mode == LCPP_NDJSON) f->state = LCPP_ST_BOMDONE;
}

void lcpp_frame_free (lcpp_frame *f) {
  free(f->line);
  free(f->data);
  free(f->event);
  f->line = f->data = f->event = NULL;
  f->linelen = f->linecap = 0;
  f->datalen = f->datacap = 0;
  f->eventlen = f->eventcap = 0;
  f->hasdata = 0;
}

int lcpp_frame_feed (lcpp_frame *f, const char *buf, size_t n,
                     lcpp_emit_fn emit, void *ud) {
  int rc;
  if (f->error != LCPP_FRAME_OK) return f->error;
  if (n == 0) return LCPP_FRAME_OK;
  if (f->mode == LCPP_NDJSON) rc = lcpp_nd_feed(f, buf, buf + n, emit, ud);
  else rc = lcpp_sse_feed(f, buf, buf + n, emit, ud);
  f->fed += n;
  if (rc != LCPP_FRAME_OK) f->error = rc;
  return rc;
}

int lcpp_frame_finish (lcpp_frame *f, lcpp_emit_fn emit, void *ud,
                       int *pending) {
  int rc = f->error;
  /* after an error the rest of the stream was not consumed: pending */
  int left = rc != LCPP_FRAME_OK || f->linelen > 0 || f->hasdata ||
             f->eventlen > 0 || (f->state & LCPP_ST_BOMN) != 0;
  if (pending != NULL) *pending = left;
  if (rc != LCPP_FRAME_OK) return rc;
  if (f->mode == LCPP_NDJSON && f->linelen > 0)
    rc = lcpp_nd_line(f, f->line, f->linelen, emit, ud);
  /* SSE: an event not closed by an empty line is discarded */
  f->linelen = 0;
  f->datalen = 0;
  f->hasdata = 0;
  f->eventlen = 0;
  f->state &= ~(LCPP_ST_CR | LCPP_ST_BOMN);
  if (rc != LCPP_FRAME_OK) f->error = rc;
  return rc;
}

/* }====== */
