/*
** sse_test.c: tests of src/sse.c, standalone (links only src/sse.c).
**
**   sse_test FIXTURES_DIR [--write-corpus DIR]
**
** Feeds the text/event-stream bodies of the captured llama-server
** responses (de-chunked here) whole, split in two at (nearly) every byte,
** one byte at a time, and with LF turned into CRLF and into CR, and checks
** that the events are the same every time; then hand-written cases.
** Prints one line per failed check and ends with "N passed, N failed".
*/
#define _POSIX_C_SOURCE 200809L  /* opendir */

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"

/* {====== checks ====== */

static int npass, nfail;

static void vfail (const char *fmt, va_list ap) {
  nfail++;
  printf("FAIL: ");
  vprintf(fmt, ap);
  printf("\n");
}

/* a failure found on the way, not counted as a pass otherwise */
static void fail (const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
  va_end(ap);
}

/* one counted check; the message says what went wrong */
static void check (int ok, const char *fmt, ...) {
  va_list ap;
  if (ok) { npass++; return; }
  va_start(ap, fmt);
  vfail(fmt, ap);
  va_end(ap);
}

/* }====== */


/* {====== byte buffers ====== */

typedef struct buf { char *p; size_t n, cap; } buf;

static void buf_add (buf *b, const void *s, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) cap *= 2;
    b->p = (char *)realloc(b->p, cap);
    if (b->p == NULL) { perror("realloc"); exit(2); }
    b->cap = cap;
  }
  if (n > 0) memcpy(b->p + b->n, s, n);
  b->n += n;
}

static void buf_free (buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

static int read_file (const char *path, buf *b) {
  char tmp[65536];
  size_t k;
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) return -1;
  while ((k = fread(tmp, 1, sizeof(tmp), fp)) > 0) buf_add(b, tmp, k);
  fclose(fp);
  return 0;
}

/* }====== */


/* {====== event recorder ====== */

/*
** Events are serialised as [size_t evlen][ev][size_t datalen][data].
** With `ref` set, events are compared with ref instead of stored: the
** split runs then cost no copying.
*/
typedef struct rec {
  buf out;
  size_t nev;
  size_t last;         /* offset in out of the last event */
  const buf *ref;      /* compare with this instead of storing */
  size_t pos;          /* read position in ref */
  int bad;             /* an event differed from ref */
  size_t abort_at;     /* return non-zero for event number abort_at */
} rec;

static int rec_cmp (rec *r, const void *s, size_t n) {
  if (r->bad || n > r->ref->n - r->pos ||
      memcmp(r->ref->p + r->pos, s, n) != 0) {
    r->bad = 1;
    return 0;
  }
  r->pos += n;
  return 1;
}

static int rec_emit (void *ud, const char *ev, size_t evlen,
                     const char *data, size_t dlen) {
  rec *r = (rec *)ud;
  r->nev++;
  if (r->ref != NULL) {
    if (rec_cmp(r, &evlen, sizeof(evlen)) && rec_cmp(r, ev, evlen) &&
        rec_cmp(r, &dlen, sizeof(dlen)))
      rec_cmp(r, data, dlen);
  }
  else {
    r->last = r->out.n;
    buf_add(&r->out, &evlen, sizeof(evlen));
    buf_add(&r->out, ev, evlen);
    buf_add(&r->out, &dlen, sizeof(dlen));
    buf_add(&r->out, data, dlen);
  }
  return r->abort_at != 0 && r->nev == r->abort_at;
}

static void rec_event (buf *b, const char *ev, size_t evlen,
                       const char *data, size_t dlen) {
  buf_add(b, &evlen, sizeof(evlen));
  buf_add(b, ev, evlen);
  buf_add(b, &dlen, sizeof(dlen));
  buf_add(b, data, dlen);
}

/* data of the event at offset off of a recording */
static const char *rec_data (const buf *b, size_t off, size_t *dlen) {
  size_t evlen;
  memcpy(&evlen, b->p + off, sizeof(evlen));
  off += sizeof(evlen) + evlen;
  memcpy(dlen, b->p + off, sizeof(*dlen));
  return b->p + off + sizeof(*dlen);
}

/* print a recording, escaped, to show what a failed case gave */
static void rec_print (const char *what, const buf *b) {
  size_t off = 0, len, i, k;
  printf("  %s:", what);
  while (off < b->n) {
    for (k = 0; k < 2; k++) {
      memcpy(&len, b->p + off, sizeof(len));
      off += sizeof(len);
      printf(k == 0 ? " [" : " | ");
      for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)b->p[off + i];
        if (c >= 32 && c < 127 && c != '\\') putchar(c);
        else printf("\\x%02x", c);
      }
      off += len;
    }
    printf("]");
  }
  printf("\n");
}

/* }====== */


/* {====== running the parser ====== */

typedef struct outcome { int rc, pending; } outcome;

/*
** Feed s[0..n) cut at cuts[0..ncut) (ascending), then finish. Checks on
** the way that errors are sticky, that nevents counts the emits and that
** the buffers stay within the bound.
*/
static outcome run (int mode, size_t max, const char *s, size_t n,
                    const size_t *cuts, size_t ncut, rec *r) {
  lcpp_frame f;
  outcome o;
  size_t i, from = 0, to, bound;
  int rc, first = LCPP_FRAME_OK;
  lcpp_frame_init(&f, mode, max);
  bound = f.max_event + 64;
  for (i = 0; i <= ncut; i++) {
    size_t before = r->nev;
    to = i < ncut ? cuts[i] : n;
    rc = lcpp_frame_feed(&f, s + from, to - from, rec_emit, r);
    if (first != LCPP_FRAME_OK && (rc != first || r->nev != before))
      fail("error %d not sticky: feed gave %d", first, rc);
    if (first == LCPP_FRAME_OK) first = rc;
    if (f.linecap > bound || f.datacap > bound || f.eventcap > bound)
      fail("buffers past the bound: line %zu data %zu event %zu",
           f.linecap, f.datacap, f.eventcap);
    from = to;
  }
  o.rc = lcpp_frame_finish(&f, rec_emit, r, &o.pending);
  if (first != LCPP_FRAME_OK && o.rc != first)
    fail("error %d not sticky: finish gave %d", first, o.rc);
  if (f.nevents != r->nev)
    fail("nevents %zu, emitted %zu", f.nevents, r->nev);
  lcpp_frame_free(&f);
  return o;
}

/* run and compare with a reference recording; 1 when all is the same */
static int same (int mode, size_t max, const char *s, size_t n,
                 const size_t *cuts, size_t ncut, const buf *ref,
                 size_t refn, outcome want) {
  rec r;
  outcome o;
  memset(&r, 0, sizeof(r));
  r.ref = ref;
  o = run(mode, max, s, n, cuts, ncut, &r);
  return !r.bad && r.pos == ref->n && r.nev == refn && o.rc == want.rc &&
         o.pending == want.pending;
}

/* every piece of size `step` */
static int same_step (int mode, size_t max, const char *s, size_t n,
                      size_t step, const buf *ref, size_t refn,
                      outcome want) {
  size_t *cuts, ncut = 0, k;
  int ok;
  cuts = (size_t *)malloc((n / step + 1) * sizeof(size_t));
  if (cuts == NULL) exit(2);
  for (k = step; k < n; k += step) cuts[ncut++] = k;
  ok = same(mode, max, s, n, cuts, ncut, ref, refn, want);
  free(cuts);
  return ok;
}

/*
** Split in two at every position (for bodies over 16 KB: every position
** in the first and last 4 KB and every 7th one). Returns the number of
** positions that differed; *first gets the first of them.
*/
static size_t same_splits (int mode, size_t max, const char *s, size_t n,
                           const buf *ref, size_t refn, outcome want,
                           size_t *first) {
  size_t k, bad = 0;
  for (k = 1; k < n; k++) {
    if (n > 16384 && k > 4096 && k < n - 4096 && k % 7 != 0) continue;
    if (!same(mode, max, s, n, &k, 1, ref, refn, want)) {
      if (bad++ == 0) *first = k;
    }
  }
  return bad;
}

/* }====== */


/* {====== fuzz regressions ====== */

/*
** spec/c/fuzz_regress/: inputs the fuzzer made fail once (or that look
** for the same trouble). Each is fed in both modes with the default bound
** and a tiny one: whole, split at every position, byte by byte; the
** events and the result must not depend on the split (run() checks the
** memory bound on the way). The fuzz target's own checks replay them too:
** make fuzz-regress.
*/
static void test_regress (const char *dir) {
  static const size_t maxes[] = { 0, 7 };
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[4096 + 260];             /* dir, '/', a name of up to 255 */
  size_t nfiles = 0;
  if (d == NULL) return;             /* none: nothing to replay */
  while ((e = readdir(d)) != NULL) {
    buf in = { NULL, 0, 0 };
    int mode;
    size_t m;
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if (read_file(path, &in) != 0) { fail("cannot read %s", path); continue; }
    nfiles++;
    for (mode = LCPP_SSE; mode <= LCPP_NDJSON; mode++) {
      for (m = 0; m < sizeof(maxes) / sizeof(maxes[0]); m++) {
        rec r;
        outcome o;
        size_t bad, first = 0;
        memset(&r, 0, sizeof(r));
        o = run(mode, maxes[m], in.p, in.n, NULL, 0, &r);
        bad = in.n > 1 ? same_splits(mode, maxes[m], in.p, in.n, &r.out, r.nev,
                                     o, &first) : 0;
        check(bad == 0, "regression %s (mode %d, max %zu): %zu split "
              "positions differ, first at %zu", e->d_name, mode, maxes[m],
              bad, first);
        check(same_step(mode, maxes[m], in.p, in.n, 1, &r.out, r.nev, o),
              "regression %s (mode %d, max %zu): byte-at-a-time differs",
              e->d_name, mode, maxes[m]);
        buf_free(&r.out);
      }
    }
    buf_free(&in);
  }
  closedir(d);
  check(nfiles > 0, "no regression inputs in %s", dir);
}

/* }====== */


/* {====== fixtures ====== */

static int lc_prefix (const char *s, size_t n, const char *pre) {
  size_t i, k = strlen(pre);
  if (n < k) return 0;
  for (i = 0; i < k; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (c != pre[i]) return 0;
  }
  return 1;
}

/* value of header `name` (lower case, with the colon), or NULL */
static const char *header (const char *h, size_t hn, const char *name,
                           size_t *vlen) {
  const char *p = h, *end = h + hn, *eol;
  while (p < end) {
    eol = (const char *)memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    if (lc_prefix(p, (size_t)(eol - p), name)) {
      const char *v = p + strlen(name), *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    p = eol + 1;
  }
  return NULL;
}

/* de-chunk; a body cut short (client abort) keeps what arrived */
static void dechunk (const char *s, size_t n, buf *out) {
  size_t pos = 0;
  while (pos < n) {
    size_t size = 0, take;
    int digits = 0;
    while (pos < n) {
      char c = s[pos];
      int d = c >= '0' && c <= '9' ? c - '0' :
              c >= 'a' && c <= 'f' ? c - 'a' + 10 :
              c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) break;
      size = size * 16 + (size_t)d;
      digits++;
      pos++;
    }
    while (pos < n && s[pos] != '\n') pos++;  /* extensions, CRLF */
    pos++;
    if (digits == 0 || size == 0 || pos > n) return;
    take = size < n - pos ? size : n - pos;
    buf_add(out, s + pos, take);
    pos += take + 2;  /* the CRLF after the data */
  }
}

static size_t count_lines (const char *s, size_t n, const char *pre,
                           int nonempty) {
  size_t count = 0, k = strlen(pre);
  const char *p = s, *end = s + n, *eol;
  while (p < end) {
    eol = (const char *)memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    if (nonempty ? eol > p : ((size_t)(eol - p) >= k &&
                               memcmp(p, pre, k) == 0))
      count++;
    p = eol + 1;
  }
  return count;
}

/* every LF of s becomes `with` */
static void relf (const char *s, size_t n, const char *with, buf *out) {
  size_t i, k = strlen(with);
  for (i = 0; i < n; i++) {
    if (s[i] == '\n') buf_add(out, with, k);
    else buf_add(out, s + i, 1);
  }
}

/* was NAME.request a POST to /v1/chat/completions? */
static int is_chat (const char *dir, const char *name) {
  char path[4096], line[512], method[32], target[400];
  FILE *fp;
  int chat = 0;
  snprintf(path, sizeof(path), "%s/%s.request", dir, name);
  fp = fopen(path, "rb");
  if (fp == NULL) return 0;
  if (fgets(line, sizeof(line), fp) != NULL &&
      sscanf(line, "%31s %399s", method, target) == 2)
    chat = strcmp(target, "/v1/chat/completions") == 0;
  fclose(fp);
  return chat;
}

static void test_body (const char *name, const char *s, size_t n,
                       int chat) {
  rec r;
  outcome o;
  buf alt = { NULL, 0, 0 };
  size_t bad, first = 0, ndata, nlines;
  memset(&r, 0, sizeof(r));
  o = run(LCPP_SSE, 0, s, n, NULL, 0, &r);
  check(o.rc == LCPP_FRAME_OK && o.pending == 0,
        "%s: whole feed gives rc %d pending %d", name, o.rc, o.pending);
  ndata = count_lines(s, n, "data:", 0);
  check(r.nev == ndata && ndata > 0, "%s: %zu events, %zu data: lines",
        name, r.nev, ndata);
  if (chat && strstr(s, "data: [DONE]") != NULL) {
    size_t dlen = 0;
    const char *d = r.nev ? rec_data(&r.out, r.last, &dlen) : "";
    check(dlen == 6 && memcmp(d, "[DONE]", 6) == 0,
          "%s: last event is not [DONE]", name);
  }
  bad = same_splits(LCPP_SSE, 0, s, n, &r.out, r.nev, o, &first);
  check(bad == 0, "%s: %zu split positions differ, first at %zu",
        name, bad, first);
  check(same_step(LCPP_SSE, 0, s, n, 1, &r.out, r.nev, o),
        "%s: byte-at-a-time feed differs", name);
  relf(s, n, "\r\n", &alt);
  check(same(LCPP_SSE, 0, alt.p, alt.n, NULL, 0, &r.out, r.nev, o),
        "%s: CRLF body differs", name);
  check(same_step(LCPP_SSE, 0, alt.p, alt.n, 1, &r.out, r.nev, o),
        "%s: CRLF body byte-at-a-time differs", name);
  if (alt.n <= 16384) {
    bad = same_splits(LCPP_SSE, 0, alt.p, alt.n, &r.out, r.nev, o, &first);
    check(bad == 0, "%s: CRLF body: %zu split positions differ, first %zu",
          name, bad, first);
  }
  alt.n = 0;
  relf(s, n, "\r", &alt);
  check(same(LCPP_SSE, 0, alt.p, alt.n, NULL, 0, &r.out, r.nev, o),
        "%s: CR body differs", name);
  check(same_step(LCPP_SSE, 0, alt.p, alt.n, 1, &r.out, r.nev, o),
        "%s: CR body byte-at-a-time differs", name);
  buf_free(&r.out);
  /* the same bodies as NDJSON: one event per non-empty line */
  memset(&r, 0, sizeof(r));
  o = run(LCPP_NDJSON, 0, s, n, NULL, 0, &r);
  nlines = count_lines(s, n, "", 1);
  check(o.rc == LCPP_FRAME_OK && r.nev == nlines,
        "%s: NDJSON gives rc %d, %zu events for %zu lines", name, o.rc,
        r.nev, nlines);
  check(same_step(LCPP_NDJSON, 0, s, n, 1, &r.out, r.nev, o),
        "%s: NDJSON byte-at-a-time differs", name);
  alt.n = 0;
  relf(s, n, "\r\n", &alt);
  check(same(LCPP_NDJSON, 0, alt.p, alt.n, NULL, 0, &r.out, r.nev, o) &&
        same_step(LCPP_NDJSON, 0, alt.p, alt.n, 1, &r.out, r.nev, o),
        "%s: NDJSON CRLF body differs", name);
  buf_free(&r.out);
  buf_free(&alt);
}

static int cmp_names (const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_fixtures (const char *dir, const char *corpus) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char **names = NULL, path[4096];
  size_t nn = 0, i, nstreams = 0;
  if (d == NULL) { fail("cannot open %s", dir); return; }
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len > 9 && strcmp(e->d_name + len - 9, ".response") == 0) {
      names = (char **)realloc(names, (nn + 1) * sizeof(*names));
      if (names == NULL || (names[nn] = malloc(len + 1)) == NULL) exit(2);
      memcpy(names[nn++], e->d_name, len + 1);
    }
  }
  closedir(d);
  qsort(names, nn, sizeof(*names), cmp_names);
  for (i = 0; i < nn; i++) {
    buf raw = { NULL, 0, 0 }, body = { NULL, 0, 0 };
    const char *hend, *v;
    size_t hn, vlen;
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
    if (read_file(path, &raw) != 0) { fail("cannot read %s", path); continue; }
    buf_add(&raw, "", 1);  /* NUL for strstr; not part of the response */
    raw.n--;
    hend = strstr(raw.p, "\r\n\r\n");
    v = hend ? header(raw.p, hn = (size_t)(hend - raw.p), "content-type:",
                      &vlen) : NULL;
    if (v != NULL && lc_prefix(v, vlen, "text/event-stream")) {
      const char *b = hend + 4;
      size_t bn = raw.n - (size_t)(b - raw.p);
      v = header(raw.p, hn, "transfer-encoding:", &vlen);
      if (v != NULL && lc_prefix(v, vlen, "chunked")) dechunk(b, bn, &body);
      else {
        v = header(raw.p, hn, "content-length:", &vlen);
        if (v != NULL && (size_t)strtoul(v, NULL, 10) < bn)
          bn = (size_t)strtoul(v, NULL, 10);
        buf_add(&body, b, bn);
      }
      buf_add(&body, "", 1);
      body.n--;
      names[i][strlen(names[i]) - 9] = '\0';  /* NAME.response -> NAME */
      test_body(names[i], body.p, body.n, is_chat(dir, names[i]));
      nstreams++;
      if (corpus != NULL) {
        FILE *fp;
        snprintf(path, sizeof(path), "%s/%s.sse", corpus, names[i]);
        fp = fopen(path, "wb");
        if (fp == NULL || fwrite(body.p, 1, body.n, fp) != body.n)
          fail("cannot write %s", path);
        if (fp != NULL) fclose(fp);
      }
    }
    buf_free(&raw);
    buf_free(&body);
    free(names[i]);
  }
  free(names);
  check(nstreams > 0, "no text/event-stream fixture in %s", dir);
}

/* }====== */


/* {====== hand-written cases ====== */

/*
** `in` fed whole, cut in three at every pair of positions (an empty
** middle piece included) and one byte at a time must give the events
** `exp` (pairs of event name and data, ended by NULL; data only for
** NDJSON), the result rc and the pending flag of finish.
*/
static void tcase (const char *name, int mode, size_t max, const char *in,
                   size_t n, int rc, int pending, const char *const *exp) {
  buf want = { NULL, 0, 0 };
  size_t nwant = 0, i, j = 0, cuts[2];
  outcome o, w;
  rec r;
  int ok;
  for (i = 0; exp[i] != NULL; nwant++) {
    const char *ev = mode == LCPP_SSE ? exp[i++] : "", *data = exp[i++];
    rec_event(&want, ev, strlen(ev), data, strlen(data));
  }
  w.rc = rc;
  w.pending = pending;
  memset(&r, 0, sizeof(r));
  o = run(mode, max, in, n, NULL, 0, &r);
  ok = o.rc == rc && o.pending == pending && r.nev == nwant &&
       r.out.n == want.n && (want.n == 0 ||
                             memcmp(r.out.p, want.p, want.n) == 0);
  check(ok, "%s: whole: rc %d pending %d %zu events, want %d %d %zu",
        name, o.rc, o.pending, r.nev, rc, pending, nwant);
  if (!ok) { rec_print("got", &r.out); rec_print("want", &want); }
  ok = 1;
  for (i = 1; i < n && ok; i++)
    for (j = i; j < n && ok; j++) {
      cuts[0] = i;
      cuts[1] = j;
      ok = same(mode, max, in, n, cuts, 2, &want, nwant, w);
    }
  check(ok, "%s: differs when cut at %zu and %zu", name, i - 1, j - 1);
  check(same_step(mode, max, in, n, 1, &want, nwant, w),
        "%s: byte-at-a-time differs", name);
  buf_free(&r.out);
  buf_free(&want);
}

#define OK         LCPP_FRAME_OK
#define OVERSIZE   LCPP_FRAME_EOVERSIZE
#define EVS(...)   ((const char *const[]){ __VA_ARGS__, NULL })
/* S(name, input, rc, pending, event, data, event, data, ...) */
#define S(nm, in, rc, pend, ...) \
  tcase(nm, LCPP_SSE, 0, in, sizeof(in) - 1, rc, pend, EVS(__VA_ARGS__))
#define SM(nm, max, in, rc, pend, ...) \
  tcase(nm, LCPP_SSE, max, in, sizeof(in) - 1, rc, pend, EVS(__VA_ARGS__))
/* N(name, input, rc, pending, data, data, ...) */
#define N(nm, in, rc, pend, ...) \
  tcase(nm, LCPP_NDJSON, 0, in, sizeof(in) - 1, rc, pend, EVS(__VA_ARGS__))
#define NM(nm, max, in, rc, pend, ...) \
  tcase(nm, LCPP_NDJSON, max, in, sizeof(in) - 1, rc, pend, \
        EVS(__VA_ARGS__))

static void test_cases (void) {
  S("multi-line data", "data: a\ndata: b\ndata: c\n\n", OK, 0,
    "", "a\nb\nc");
  S("event name, reset after dispatch",
    "event: add\ndata: 1\n\ndata: 2\n\n", OK, 0, "add", "1", "", "2");
  S("last event name wins", "event: a\nevent: b\ndata: x\n\n", OK, 0,
    "b", "x");
  S("empty event name", "event:\ndata: x\n\n", OK, 0, "", "x");
  S("comments", ": ping\n:\ndata: x\n: in the middle\n\n:tail\n", OK, 0,
    "", "x");
  S("id, retry, unknown fields",
    "id: 7\nretry: 100\ndata: y\nfoo: bar\nid\n\n", OK, 0, "", "y");
  S("field without colon", "data\n\nevent\ndata: z\n\nfoo\ndata: q\n\n",
    OK, 0, "", "", "", "z", "", "q");
  S("data: with no space", "data:x\n\n", OK, 0, "", "x");
  S("only one space stripped", "data:  x \n\n", OK, 0, "", " x ");
  S("tab not stripped", "data:\tx\n\n", OK, 0, "", "\tx");
  S("colon in value", "data: a: b\n\n", OK, 0, "", "a: b");
  S("field names are case-sensitive", "Data: x\nEVENT: e\n\n", OK, 0,
    NULL);
  S("leading space is part of the name", " data: x\n\n", OK, 0, NULL);
  S("BOM skipped", "\xEF\xBB\xBF" "data: b\n\n", OK, 0, "", "b");
  S("BOM before a comment", "\xEF\xBB\xBF: c\ndata: b\n\n", OK, 0,
    "", "b");
  S("only the first BOM", "\xEF\xBB\xBF\xEF\xBB\xBF" "data: c\n\n", OK, 0,
    NULL);
  S("BOM later is not skipped", "data: a\n\n\xEF\xBB\xBF" "data: b\n\n",
    OK, 0, "", "a");
  S("partial BOM is data of the line", "\xEF\xBB" "data: x\n\n", OK, 0,
    NULL);
  S("partial BOM then colon", "\xEF: x\ndata: y\n\n", OK, 0, "", "y");
  S("BOM alone", "\xEF\xBB\xBF", OK, 0, NULL);
  S("partial BOM alone is pending", "\xEF\xBB", OK, 1, NULL);
  S("empty data dispatches", "data:\n\ndata\n\n", OK, 0, "", "", "", "");
  S("two empty data lines", "data:\ndata:\n\n", OK, 0, "", "\n");
  S("blank lines alone dispatch nothing", "\n\n\r\n\r\r", OK, 0, NULL);
  S("name reset without dispatch", "event: x\n\ndata: y\n\n", OK, 0,
    "", "y");
  S("CRLF", "data: a\r\ndata: b\r\n\r\n", OK, 0, "", "a\nb");
  S("CR", "data: a\rdata: b\r\rdata: c\r\r", OK, 0, "", "a\nb", "", "c");
  S("mixed line ends", "data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", OK, 0,
    "", "a", "", "b", "", "c");
  S("CR CR LF is two line ends", "data: a\r\r\ndata: b\n\n", OK, 0,
    "", "a", "", "b");
  S("LF CR is two line ends", "data: a\n\rdata: b\n\n", OK, 0,
    "", "a", "", "b");
  S("CR in the middle ends the line", "data: a\rb\n\n", OK, 0, "", "a");
  S("unterminated event discarded", "data: a\n\ndata: b\n", OK, 1,
    "", "a");
  S("unterminated line discarded", "data: a\n\ndata: b", OK, 1, "", "a");
  S("pending event name", "event: x\n", OK, 1, NULL);
  S("comment is not pending", "data: a\n\n: c\n", OK, 0, "", "a");
  S("trailing CR is not pending", "data: a\n\r", OK, 0, "", "a");
  S("UTF-8 data", "data: \xe3\x82\xbf\n\n", OK, 0, "", "\xe3\x82\xbf");
  SM("data exactly max", 4, "data: abcd\n\n", OK, 0, "", "abcd");
  SM("data over max", 4, "data: a\n\ndata: abcde\n\ndata: b\n\n",
     OVERSIZE, 1, "", "a");
  SM("joined data exactly max", 4, "data: ab\ndata: c\n\n", OK, 0,
     "", "ab\nc");
  SM("joined data over max", 4, "data: ab\ndata: cd\n\n", OVERSIZE, 1,
     NULL);
  SM("empty data lines count", 2, "data:\ndata:\ndata:\n\n", OK, 0,
     "", "\n\n");
  SM("empty data lines over max", 2, "data:\ndata:\ndata:\ndata:\n\n",
     OVERSIZE, 1, NULL);
  SM("long comment over max", 4,
     "data: a\n\n: 0123456789012345678901234567890123456789\n",
     OVERSIZE, 1, "", "a");
  SM("long unterminated line", 4, "data: 0123456789012345678901234567",
     OVERSIZE, 1, NULL);
  SM("max 1", 1, "data: x\n\ndata:\n\ndata: xy\n\n", OVERSIZE, 1,
     "", "x", "", "");
  N("NDJSON LF", "{\"a\":1}\n{\"b\":2}\n", OK, 0, "{\"a\":1}", "{\"b\":2}");
  N("NDJSON CRLF", "{\"a\":1}\r\n{\"b\":2}\r\n", OK, 0,
    "{\"a\":1}", "{\"b\":2}");
  N("NDJSON empty lines skipped", "\n\r\na\n\n\r\nb\n", OK, 0, "a", "b");
  N("NDJSON lone CR is data", "a\rb\n\r\r\n", OK, 0, "a\rb", "\r");
  N("NDJSON final unterminated line", "a\nb", OK, 1, "a", "b");
  N("NDJSON final line with CR", "a\r\nb\r", OK, 1, "a", "b");
  N("NDJSON BOM is data", "\xEF\xBB\xBF{}\n", OK, 0, "\xEF\xBB\xBF{}");
  N("NDJSON nothing", "", OK, 0, NULL);
  NM("NDJSON line exactly max", 4, "abcd\r\nabcd\nabcd", OK, 1,
     "abcd", "abcd", "abcd");
  NM("NDJSON line over max", 4, "ab\nabcde\nc\n", OVERSIZE, 1, "ab");
  NM("NDJSON CRLF line over max", 4, "abcde\r\n", OVERSIZE, 1, NULL);
  NM("NDJSON final line over max", 4, "ab\nabcde", OVERSIZE, 1, "ab");
}

/* }====== */


/* {====== bounds, abort, lifetime ====== */

static int count_emit (void *ud, const char *ev, size_t evlen,
                       const char *data, size_t dlen) {
  (void)ev; (void)evlen; (void)data; (void)dlen;
  (*(size_t *)ud)++;
  return 0;
}

/*
** Feed `head` then up to 100 MB of `piece` (64 KB) repeated: must stop
** with EOVERSIZE soon after max bytes, buffers under 2 * max.
*/
static void oversize_stream (const char *name, int mode, size_t max,
                             const char *head, const char *piece) {
  lcpp_frame f;
  size_t fed = 0, nev = 0, at = 0, maxcap = 0, plen = strlen(piece);
  int rc = LCPP_FRAME_OK, first = LCPP_FRAME_OK, pend = 0;
  lcpp_frame_init(&f, mode, max);
  max = f.max_event;
  first = lcpp_frame_feed(&f, head, strlen(head), count_emit, &nev);
  fed = strlen(head);
  while (fed < 100u * 1024 * 1024) {
    rc = lcpp_frame_feed(&f, piece, plen, count_emit, &nev);
    fed += plen;
    if (first == LCPP_FRAME_OK && rc != LCPP_FRAME_OK) {
      first = rc;
      at = fed;
    }
    if (f.linecap > maxcap) maxcap = f.linecap;
    if (f.datacap > maxcap) maxcap = f.datacap;
  }
  check(first == LCPP_FRAME_EOVERSIZE && rc == first,
        "%s: feed gives %d then %d, want EOVERSIZE", name, first, rc);
  check(at <= max + 2 * plen, "%s: error only after %zu bytes", name, at);
  check(maxcap < 2 * max && f.linecap < 2 * max && f.datacap < 2 * max,
        "%s: linecap %zu datacap %zu for max_event %zu", name, f.linecap,
        f.datacap, max);
  check(nev == 0 && lcpp_frame_finish(&f, count_emit, &nev, &pend) ==
        LCPP_FRAME_EOVERSIZE && pend == 1 && nev == 0,
        "%s: finish after the error", name);
  lcpp_frame_free(&f);
}

static void test_oversize (void) {
  static char piece[65536], lines[65536];
  size_t i, n, max = 1024 * 1024, nev;
  char *big;
  lcpp_frame f;
  int rc;
  memset(piece, 'x', sizeof(piece) - 1);
  /* 64-byte lines "data: xxx...\n" */
  for (i = 0; i + 64 < sizeof(lines); i += 64) {
    memcpy(lines + i, "data: ", 6);
    memset(lines + i + 6, 'y', 57);
    lines[i + 63] = '\n';
  }
  oversize_stream("100 MB data line", LCPP_SSE, max, "data: ", piece);
  oversize_stream("100 MB data line, default max", LCPP_SSE, 0, "data: ",
                  piece);
  oversize_stream("100 MB comment", LCPP_SSE, max, ":", piece);
  oversize_stream("100 MB field name", LCPP_SSE, max, "", piece);
  oversize_stream("100 MB of data lines, no blank line", LCPP_SSE, max,
                  "", lines);
  oversize_stream("100 MB NDJSON line", LCPP_NDJSON, max, "", piece);
  /* a whole oversize line inside one feed is refused without copying */
  n = 6 + max + 3;
  big = (char *)malloc(n);
  if (big == NULL) exit(2);
  memcpy(big, "data: ", 6);
  memset(big + 6, 'z', max + 1);
  memcpy(big + 6 + max + 1, "\n\n", 2);
  nev = 0;
  lcpp_frame_init(&f, LCPP_SSE, max);
  rc = lcpp_frame_feed(&f, big, n - 1, count_emit, &nev);
  check(rc == LCPP_FRAME_EOVERSIZE && nev == 0 && f.datacap == 0 &&
        f.linecap == 0, "one feed, data max+1: rc %d datacap %zu", rc,
        f.datacap);
  lcpp_frame_free(&f);
  /* exactly max_event bytes of data go through, whole and cut */
  memcpy(big + 6 + max, "\n\n", 2);
  for (i = 0; i < 3; i++) {
    size_t cut = i == 0 ? n - 1 : i == 1 ? 3 : 6 + max / 2;  /* i 0: whole */
    nev = 0;
    lcpp_frame_init(&f, LCPP_SSE, max);
    rc = lcpp_frame_feed(&f, big, cut, count_emit, &nev);
    if (rc == LCPP_FRAME_OK)
      rc = lcpp_frame_feed(&f, big + cut, n - 1 - cut, count_emit, &nev);
    check(rc == LCPP_FRAME_OK && nev == 1 && f.datacap <= max + 1,
          "data of exactly max_event, cut at %zu: rc %d, %zu events, "
          "datacap %zu", cut, rc, nev, f.datacap);
    lcpp_frame_free(&f);
  }
  free(big);
}

static void test_abort (void) {
  static const char sse[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
  static const char nd[] = "1\n2\n3\n";
  buf want = { NULL, 0, 0 };
  size_t k, bad = 0;
  int m;
  rec_event(&want, "", 0, "1", 1);
  rec_event(&want, "", 0, "2", 1);
  for (m = 0; m < 2; m++) {
    const char *in = m == 0 ? sse : nd;
    size_t n = m == 0 ? sizeof(sse) - 1 : sizeof(nd) - 1;
    for (k = 0; k < n; k++) {  /* k == 0: whole */
      rec r;
      outcome o;
      memset(&r, 0, sizeof(r));
      r.ref = &want;
      r.abort_at = 2;
      o = run(m == 0 ? LCPP_SSE : LCPP_NDJSON, 0, in, n, &k, k > 0, &r);
      if (r.bad || r.nev != 2 || o.rc != LCPP_FRAME_EABORT || !o.pending)
        bad++;
    }
    check(bad == 0, "%s: abort at the 2nd event: %zu splits wrong",
          m == 0 ? "SSE" : "NDJSON", bad);
  }
  buf_free(&want);
}

static void test_lifetime (void) {
  static const char ev[] = "event: e\ndata: some data\ndata: more\n\n";
  lcpp_frame f, z;
  size_t nev = 0, i, cap[3];
  char *p[3];
  int ok = 1, pend;
  memset(&z, 0, sizeof(z));
  lcpp_frame_free(&z);  /* zeroed struct */
  lcpp_frame_init(&f, LCPP_SSE, 0);
  check(f.max_event == LCPP_FRAME_DEFAULT_MAX && f.nevents == 0,
        "init: max_event 0 gives %zu", f.max_event);
  lcpp_frame_feed(&f, ev, sizeof(ev) - 1, count_emit, &nev);
  lcpp_frame_feed(&f, "data: par", 9, count_emit, &nev);  /* line kept */
  lcpp_frame_free(&f);
  check(f.line == NULL && f.data == NULL && f.event == NULL &&
        f.linecap == 0 && f.datacap == 0 && f.eventcap == 0,
        "free leaves pointers set");
  lcpp_frame_free(&f);  /* twice */
  lcpp_frame_init(&f, LCPP_SSE, 0);
  nev = 0;
  check(lcpp_frame_feed(&f, ev, sizeof(ev) - 1, count_emit, &nev) ==
        LCPP_FRAME_OK && nev == 1 && f.nevents == 1,
        "init after free: %zu events", nev);
  /* once grown, the buffers are not reallocated per event */
  lcpp_frame_feed(&f, ev, 20, count_emit, &nev);
  lcpp_frame_feed(&f, ev + 20, sizeof(ev) - 21, count_emit, &nev);
  p[0] = f.line; p[1] = f.data; p[2] = f.event;
  cap[0] = f.linecap; cap[1] = f.datacap; cap[2] = f.eventcap;
  for (i = 0; i < 1000; i++) {
    size_t cut = 1 + i % (sizeof(ev) - 2);
    lcpp_frame_feed(&f, ev, cut, count_emit, &nev);
    lcpp_frame_feed(&f, ev + cut, sizeof(ev) - 1 - cut, count_emit, &nev);
    if (p[0] != f.line || p[1] != f.data || p[2] != f.event ||
        cap[0] != f.linecap || cap[1] != f.datacap || cap[2] != f.eventcap)
      ok = 0;
  }
  check(ok && nev == 1002, "buffers reallocated after warm-up (%zu events)",
        nev);
  check(lcpp_frame_finish(&f, count_emit, &nev, &pend) == LCPP_FRAME_OK &&
        pend == 0, "finish after whole events: pending %d", pend);
  lcpp_frame_free(&f);
  /* emit may be NULL at finish (SSE never emits there) */
  lcpp_frame_init(&f, LCPP_SSE, 0);
  lcpp_frame_feed(&f, "data: x\n", 8, count_emit, &nev);
  check(lcpp_frame_finish(&f, NULL, NULL, NULL) == LCPP_FRAME_OK,
        "finish with NULL emit and pending");
  lcpp_frame_free(&f);
}

/* }====== */


/*
** mark: cut a stream after every byte k; a fresh parser fed the bytes
** from the first one's mark on gives exactly the events the first one
** had not emitted (resumable streams read the body again from there).
*/
static void test_mark (void) {
  static const char *cases[] = {
    "data: a\n\ndata: b\n\n",
    "data: one\r\n\r\ndata: two\r\ndata: more\r\n\r\n",
    "data: x\r\rdata: y\r\r: comment\r\revent: e\rdata: z\r\r",
    ": hi\n\nevent: tick\ndata: {\"k\":1}\n\n\n\ndata: [DONE]\n\n",
    "\xef\xbb\xbf" "data: bom\n\ndata: \xc3\xa9t\xc3\xa9\n\n",
  };
  size_t c, k;
  for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const char *s = cases[c];
    size_t n = strlen(s);
    rec whole;
    memset(&whole, 0, sizeof(whole));
    run(LCPP_SSE, 0, s, n, NULL, 0, &whole);
    for (k = 0; k <= n; k++) {
      lcpp_frame f;
      rec a, b;
      size_t m;
      memset(&a, 0, sizeof(a));
      memset(&b, 0, sizeof(b));
      lcpp_frame_init(&f, LCPP_SSE, 0);
      if (k > 0) {                               /* two feeds: 1, then the rest */
        lcpp_frame_feed(&f, s, 1, rec_emit, &a);
        lcpp_frame_feed(&f, s + 1, k - 1, rec_emit, &a);
      }
      m = f.mark;
      lcpp_frame_free(&f);
      check(m <= k, "mark: case %zu cut %zu: mark %zu past the cut", c, k, m);
      run(LCPP_SSE, 0, s + m, n - m, NULL, 0, &b);
      buf_add(&a.out, b.out.p, b.out.n);
      check(a.nev + b.nev == whole.nev && a.out.n == whole.out.n &&
            (whole.out.n == 0 || memcmp(a.out.p, whole.out.p, whole.out.n) == 0),
            "mark: case %zu cut %zu (mark %zu): events lost or repeated", c, k, m);
      buf_free(&a.out);
      buf_free(&b.out);
    }
    buf_free(&whole.out);
  }
}

/*
** evend: in emit, where the event ends; a fresh parser fed the stream
** from there gives exactly the events after it (the offset a reader that
** took that event reattaches from), however the stream was fed.
*/
typedef struct { lcpp_frame *f; size_t nev; size_t ends[16]; } ends_rec;

static int ends_emit (void *ud, const char *ev, size_t evlen,
                      const char *data, size_t datalen) {
  ends_rec *r = (ends_rec *)ud;
  (void)ev; (void)evlen; (void)data; (void)datalen;
  if (r->nev < 16) r->ends[r->nev] = r->f->evend;
  r->nev++;
  return 0;
}

static void test_evend (void) {
  static const char *cases[] = {
    "data: a\n\ndata: b\n\n",
    "data: one\r\n\r\ndata: two\r\ndata: more\r\n\r\n",
    "data: x\r\rdata: y\r\r: comment\r\revent: e\rdata: z\r\r",
    ": hi\n\nevent: tick\ndata: {\"k\":1}\n\n\n\ndata: [DONE]\n\n",
    "\xef\xbb\xbf" "data: bom\n\ndata: \xc3\xa9t\xc3\xa9\n\n",
  };
  size_t c, k, i;
  for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const char *s = cases[c];
    size_t n = strlen(s);
    for (k = 0; k <= n; k++) {                  /* fed in two parts: k, rest */
      lcpp_frame f;
      ends_rec r;
      rec whole;
      memset(&r, 0, sizeof(r));
      memset(&whole, 0, sizeof(whole));
      run(LCPP_SSE, 0, s, n, NULL, 0, &whole);
      r.f = &f;
      lcpp_frame_init(&f, LCPP_SSE, 0);
      lcpp_frame_feed(&f, s, k, ends_emit, &r);
      lcpp_frame_feed(&f, s + k, n - k, ends_emit, &r);
      lcpp_frame_free(&f);
      check(r.nev == whole.nev, "evend: case %zu split %zu: %zu events", c, k, r.nev);
      for (i = 0; i < r.nev && i < 16; i++) {
        rec rest;
        size_t e = r.ends[i];
        memset(&rest, 0, sizeof(rest));
        check(e <= n && (i == 0 || e > r.ends[i - 1]),
              "evend: case %zu split %zu event %zu: end %zu", c, k, i, e);
        if (e > n) continue;
        run(LCPP_SSE, 0, s + e, n - e, NULL, 0, &rest);
        check(rest.nev == whole.nev - i - 1,
              "evend: case %zu split %zu event %zu (end %zu): %zu events after it",
              c, k, i, e, rest.nev);
        buf_free(&rest.out);
      }
      buf_free(&whole.out);
    }
  }
}


int main (int argc, char **argv) {
  const char *corpus = NULL;
  if (argc == 4 && strcmp(argv[2], "--write-corpus") == 0)
    corpus = argv[3];
  else if (argc != 2) {
    fprintf(stderr, "usage: %s FIXTURES_DIR [--write-corpus DIR]\n",
            argv[0]);
    return 2;
  }
  test_fixtures(argv[1], corpus);
  {   /* FIXTURES_DIR/../c/fuzz_regress, i.e. spec/c/fuzz_regress */
    char rdir[4096];
    snprintf(rdir, sizeof(rdir), "%s/../c/fuzz_regress", argv[1]);
    test_regress(rdir);
  }
  test_cases();
  test_oversize();
  test_abort();
  test_lifetime();
  test_mark();
  test_evend();
  printf("%d passed, %d failed\n", npass, nfail);
  return nfail != 0;
}
