/*
** sse_fuzz.c: libFuzzer target for src/sse.c.
**
** The input is fed in both modes, whole and cut at positions drawn from a
** seed made of its first bytes (the bytes are fed too, not eaten), and
** the events, the result and the pending flag must be the same; likewise
** one byte at a time, with LF turned into CRLF / CR when the input has no
** CR, and with an abort at an event drawn from the seed. Also checks the
** memory bound. Any difference calls abort().
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* {====== recording ====== */

typedef struct out {
  char *p;
  size_t n, cap;
  size_t nev;
  size_t max;        /* max_event: no event may be longer */
  size_t abort_at;   /* return non-zero for this event (1-based) */
  int rc, pending;
} out;

static void out_add (out *o, const void *s, size_t n) {
  if (o->n + n > o->cap) {
    size_t cap = o->cap ? o->cap : 1024;
    while (cap < o->n + n) cap *= 2;
    o->p = (char *)realloc(o->p, cap);
    if (o->p == NULL) abort();
    o->cap = cap;
  }
  if (n > 0) memcpy(o->p + o->n, s, n);
  o->n += n;
}

static int emit (void *ud, const char *ev, size_t evlen, const char *data,
                 size_t dlen) {
  out *o = (out *)ud;
  if (dlen > o->max) abort();
  o->nev++;
  out_add(o, &evlen, sizeof(evlen));
  out_add(o, ev, evlen);
  out_add(o, &dlen, sizeof(dlen));
  out_add(o, data, dlen);
  return o->abort_at != 0 && o->nev == o->abort_at;
}

/* }====== */


/* {====== running ====== */

static void run (int mode, size_t max, const char *s, size_t n,
                 const size_t *cuts, size_t ncut, out *o) {
  lcpp_frame f;
  size_t i, from = 0, to, bound;
  int rc, first = LCPP_FRAME_OK;
  lcpp_frame_init(&f, mode, max);
  bound = max + 64;
  o->n = o->nev = 0;
  o->max = max;
  for (i = 0; i <= ncut; i++) {
    to = i < ncut ? cuts[i] : n;
    rc = lcpp_frame_feed(&f, s + from, to - from, emit, o);
    if (first != LCPP_FRAME_OK && rc != first) abort();  /* sticky */
    if (first == LCPP_FRAME_OK) first = rc;
    if (f.linecap > bound || f.datacap > bound || f.eventcap > bound)
      abort();
    from = to;
  }
  o->rc = lcpp_frame_finish(&f, emit, o, &o->pending);
  if (first != LCPP_FRAME_OK && o->rc != first) abort();
  if (f.nevents != o->nev) abort();
  lcpp_frame_free(&f);
}

static void same (const out *a, const out *b) {
  if (a->rc != b->rc || a->pending != b->pending || a->nev != b->nev ||
      a->n != b->n || (a->n > 0 && memcmp(a->p, b->p, a->n) != 0))
    abort();
}

static uint64_t next (uint64_t *x) {  /* xorshift64* */
  *x ^= *x >> 12;
  *x ^= *x << 25;
  *x ^= *x >> 27;
  return *x * 2685821657736338717ull;
}

/* ascending cuts: mostly short pieces, some long ones, some empty */
static size_t draw_cuts (uint64_t *x, size_t n, size_t *cuts, size_t cap) {
  size_t k = 0, pos = 0;
  while (k < cap) {
    uint64_t r = next(x);
    pos += (r & 3) == 0 ? (size_t)(r >> 8) % (n + 1) : (size_t)(r >> 8) % 9;
    if (pos >= n) break;
    cuts[k++] = pos;
  }
  return k;
}

/* every LF becomes `with` (1 or 2 bytes) */
static char *relf (const char *s, size_t n, const char *with, size_t *m) {
  size_t i, k = strlen(with), j = 0;
  char *t = (char *)malloc(2 * n + 1);
  if (t == NULL) abort();
  for (i = 0; i < n; i++) {
    if (s[i] == '\n') { memcpy(t + j, with, k); j += k; }
    else t[j++] = s[i];
  }
  *m = j;
  return t;
}

/* }====== */


int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  static out whole, other;
  static size_t cuts[256], steps[4096];
  const char *s = (const char *)data;
  uint64_t seed = 1469598103934665603ull ^ size, x;
  size_t i, ncut, max;
  int mode;
  for (i = 0; i < size && i < 8; i++)  /* FNV-1a of the first bytes */
    seed = (seed ^ data[i]) * 1099511628211ull;
  x = seed | 1;
  max = (seed & 1) ? 4096 : 1 + (size_t)(seed >> 1) % 64;
  for (mode = LCPP_SSE; mode <= LCPP_NDJSON; mode++) {
    run(mode, max, s, size, NULL, 0, &whole);
    ncut = draw_cuts(&x, size, cuts, sizeof(cuts) / sizeof(cuts[0]));
    run(mode, max, s, size, cuts, ncut, &other);
    same(&whole, &other);
    if (size <= sizeof(steps) / sizeof(steps[0])) {  /* byte at a time */
      for (i = 1; i < size; i++) steps[i - 1] = i;
      run(mode, max, s, size, steps, size ? size - 1 : 0, &other);
      same(&whole, &other);
    }
    if (memchr(s, '\r', size) == NULL) {
      size_t m;
      char *t = relf(s, size, "\r\n", &m);
      ncut = draw_cuts(&x, m, cuts, sizeof(cuts) / sizeof(cuts[0]));
      run(mode, max, t, m, cuts, ncut, &other);
      same(&whole, &other);
      free(t);
      if (mode == LCPP_SSE) {
        t = relf(s, size, "\r", &m);
        ncut = draw_cuts(&x, m, cuts, sizeof(cuts) / sizeof(cuts[0]));
        run(mode, max, t, m, cuts, ncut, &other);
        same(&whole, &other);
        free(t);
      }
    }
    if (whole.nev > 0) {  /* abort at an event: the events up to it */
      other.abort_at = 1 + (size_t)(seed >> 7) % whole.nev;
      ncut = draw_cuts(&x, size, cuts, sizeof(cuts) / sizeof(cuts[0]));
      run(mode, max, s, size, cuts, ncut, &other);
      if (other.rc != LCPP_FRAME_EABORT || !other.pending ||
          other.nev != other.abort_at || other.n > whole.n ||
          memcmp(other.p, whole.p, other.n) != 0)
        abort();
      other.abort_at = 0;
    }
  }
  return 0;
}
