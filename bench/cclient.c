/*
** cclient.c: the floor for any libcurl-based client. It does only what
** every client must: split the event stream into events, find each
** delta's "content" string and count its decoded UTF-8 bytes, and check
** the total against what the bench server says it sent. No JSON tree,
** no per-event allocation.
**
**   cclient stream URL           one stream (curl_easy_perform)
**   cclient lat URL              one stream in latency mode: write->seen
**   cclient seq URL N            N non-stream requests on one easy handle
**   cclient startup URL          one non-stream request; CPU since exec
**   cclient multi URL M          M concurrent streams, curl multi-socket
**                                API on epoll, one thread
**
** URL is the chat completions URL (http://127.0.0.1:P/n.../v1/chat/completions).
** Prints one line: RESULT key=value ...; exits 1 if any byte was missing.
*/
#define _GNU_SOURCE

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>

#include <curl/curl.h>

static const char stream_body[] =
  "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16,"
  "\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
static const char plain_body[] =
  "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16,"
  "\"stream\":false}";


static long long now_ns (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}


static long long cpu_us (void) {
  struct rusage s, c;
  getrusage(RUSAGE_SELF, &s);
  getrusage(RUSAGE_CHILDREN, &c);
  return (long long)(s.ru_utime.tv_sec + s.ru_stime.tv_sec + c.ru_utime.tv_sec +
                     c.ru_stime.tv_sec) * 1000000LL + s.ru_utime.tv_usec +
         s.ru_stime.tv_usec + c.ru_utime.tv_usec + c.ru_stime.tv_usec;
}


static long maxrss_kb (void) {
  struct rusage s;
  getrusage(RUSAGE_SELF, &s);
  return s.ru_maxrss;
}


/* {====== counting ====== */

typedef struct {
  char *buf; size_t len, cap;     /* a partial event carried between writes */
  long long events, bytes;        /* content events, decoded content bytes */
  long long want_bytes, want_events;
  int done;                       /* [DONE] seen */
  int lat;                        /* latency mode */
  long long *lats; size_t nlat, caplat;
} Count;


/* decoded UTF-8 length of the JSON string starting at p (after its
   opening quote); *end is set past the closing quote */
static long long strbytes (const char *p, const char *lim, const char **end) {
  long long n = 0;
  while (p < lim && *p != '"') {
    if (*p != '\\') { n++; p++; continue; }
    if (p + 1 < lim && p[1] == 'u' && p + 6 <= lim) {
      unsigned cp = (unsigned)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
      if (cp >= 0xD800 && cp < 0xDC00) { n += 4; p += 12; continue; }  /* pair */
      n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
      p += 6;
      continue;
    }
    n++;
    p += 2;
  }
  *end = p;
  return n;
}


static long long numafter (const char *p, const char *lim, const char *key) {
  const char *q = (const char *)memmem(p, (size_t)(lim - p), key, strlen(key));
  return q ? strtoll(q + strlen(key), NULL, 10) : -1;
}


static void on_event (Count *c, const char *p, size_t n, long long t) {
  static const char key[] = "\"content\":\"";
  const char *lim = p + n, *q, *e;
  if (n < 6 || memcmp(p, "data: ", 6) != 0) return;
  if (n == 12 && memcmp(p + 6, "[DONE]", 6) == 0) { c->done = 1; return; }
  q = (const char *)memmem(p, n, key, sizeof key - 1);
  if (q != NULL) {
    c->events++;
    c->bytes += strbytes(q + sizeof key - 1, lim, &e);
    if (c->lat) {
      if (c->nlat == c->caplat) {
        c->caplat = c->caplat ? 2 * c->caplat : 4096;
        c->lats = (long long *)realloc(c->lats, c->caplat * sizeof *c->lats);
        if (c->lats == NULL) abort();
      }
      c->lats[c->nlat++] = t - strtoll(q + sizeof key - 1, NULL, 10);
    }
    return;
  }
  if (memmem(p, n, "\"usage\"", 7) != NULL) {
    c->want_bytes = numafter(p, lim, "\"bench_content_bytes\":");
    c->want_events = numafter(p, lim, "\"bench_events\":");
  }
}


/* events end with "\n\n" (the server writes LF only, as llama-server) */
static size_t on_write (char *p, size_t size, size_t nm, void *ud) {
  Count *c = (Count *)ud;
  size_t n = size * nm, i = 0;
  long long t = c->lat ? now_ns() : 0;
  const char *q, *lim = p + n;
  if (c->len > 0) {                      /* finish the carried event */
    for (; i < n; i++) {
      if (p[i] == '\n' && ((i > 0 && p[i - 1] == '\n') ||
                           (i == 0 && c->buf[c->len - 1] == '\n'))) break;
    }
    if (c->len + i + 1 > c->cap) {
      c->cap = (c->len + i + 1) * 2;
      c->buf = (char *)realloc(c->buf, c->cap);
      if (c->buf == NULL) abort();
    }
    memcpy(c->buf + c->len, p, i < n ? i + 1 : n);
    c->len += i < n ? i + 1 : n;
    if (i == n) return n;
    on_event(c, c->buf, c->len - 2, t);
    c->len = 0;
    i++;
  }
  while (i < n && (q = (const char *)memmem(p + i, n - i, "\n\n", 2)) != NULL) {
    on_event(c, p + i, (size_t)(q - (p + i)), t);
    i = (size_t)(q - p) + 2;
  }
  if (i < n) {                           /* keep the tail */
    size_t r = (size_t)(lim - (p + i));
    if (r > c->cap) {
      c->cap = r * 2;
      c->buf = (char *)realloc(c->buf, c->cap);
      if (c->buf == NULL) abort();
    }
    memcpy(c->buf, p + i, r);
    c->len = r;
  }
  return n;
}


static struct curl_slist *hdrs;

static CURL *mkeasy (const char *url, const char *body, Count *c) {
  CURL *e = curl_easy_init();
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
  curl_easy_setopt(e, CURLOPT_PRIVATE, c);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  return e;
}


static int cmp (const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return x < y ? -1 : x > y;
}

/* }====== */


/* {====== modes ====== */

static int run_stream (const char *url, int lat) {
  Count c;
  CURL *e;
  CURLcode rc;
  long long c0 = cpu_us(), t0 = now_ns();
  memset(&c, 0, sizeof c);
  c.want_bytes = c.want_events = -1;
  c.lat = lat;
  e = mkeasy(url, stream_body, &c);
  rc = curl_easy_perform(e);
  int ok = rc == CURLE_OK && c.done && c.bytes == c.want_bytes &&
           c.events == c.want_events;
  printf("RESULT client=c-libcurl ok=%d events=%lld bytes=%lld want_events=%lld "
         "want_bytes=%lld cpu_us=%lld wall_us=%lld maxrss_kb=%ld curl=%d done=%d",
         ok, c.events, c.bytes, c.want_events, c.want_bytes, cpu_us() - c0,
         (now_ns() - t0) / 1000, maxrss_kb(), (int)rc, c.done);
  if (lat && c.nlat > 0) {
    qsort(c.lats, c.nlat, sizeof *c.lats, cmp);
    printf(" lat_p50_us=%.1f lat_p99_us=%.1f lat_max_us=%.1f",
           c.lats[c.nlat / 2] / 1e3, c.lats[(c.nlat * 99) / 100] / 1e3,
           c.lats[c.nlat - 1] / 1e3);
  }
  printf("\n");
  curl_easy_cleanup(e);
  return !ok;
}


typedef struct { char *p; size_t len, cap; } Buf;

static size_t on_body (char *p, size_t size, size_t nm, void *ud) {
  Buf *b = (Buf *)ud;
  size_t n = size * nm;
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2;
    b->p = (char *)realloc(b->p, b->cap);
    if (b->p == NULL) abort();
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return n;
}


static int run_seq (const char *url, long n) {
  static const char key[] = "\"content\":\"";
  Buf b = {NULL, 0, 0};
  CURL *e = curl_easy_init();
  long i, conns = 0, lastconn = -1, bad = 0;
  long long bytes = 0, want = 0, c0 = cpu_us(), t0 = now_ns();
  int startup = n < 0;             /* one request; CPU counted from exec */
  if (startup) { n = 1; c0 = 0; }
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, plain_body);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  for (i = 0; i < n; i++) {
    const char *q, *end;
    long conn;
    b.len = 0;
    if (curl_easy_perform(e) != CURLE_OK) { bad++; continue; }
    q = (const char *)memmem(b.p, b.len, key, sizeof key - 1);
    if (q == NULL) { bad++; continue; }
    bytes += strbytes(q + sizeof key - 1, b.p + b.len, &end);
    want += numafter(b.p, b.p + b.len, "\"bench_content_bytes\":");
    conn = (long)numafter(b.p, b.p + b.len, "\"bench_conn\":");
    if (conn != lastconn) { conns++; lastconn = conn; }
  }
  printf("RESULT client=c-libcurl ok=%d requests=%ld failed=%ld bytes=%lld "
         "want_bytes=%lld conns=%ld cpu_us=%lld wall_us=%lld maxrss_kb=%ld\n",
         bad == 0 && bytes == want, n, bad, bytes, want, conns, cpu_us() - c0,
         (now_ns() - t0) / 1000, maxrss_kb());
  curl_easy_cleanup(e);
  free(b.p);
  return !(bad == 0 && bytes == want);
}


static int g_ep;
static CURLM *g_multi;

static int on_socket (CURL *e, curl_socket_t fd, int what, void *ud, void *sp) {
  int ep = g_ep;
  struct epoll_event ev;
  (void)e; (void)ud;
  memset(&ev, 0, sizeof ev);
  ev.data.fd = fd;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    return 0;
  }
  ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
              ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
  if (sp == NULL) {
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    curl_multi_assign(g_multi, fd, (void *)1);   /* known from now on */
  } else
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
  return 0;
}


static long timer_ms = -1;

static int on_timer (CURLM *m, long ms, void *ud) {
  (void)m; (void)ud;
  timer_ms = ms;
  return 0;
}


static int run_multi (const char *url, int m) {
  Count *cs = (Count *)calloc((size_t)m, sizeof *cs);
  CURLM *multi = curl_multi_init();
  struct epoll_event evs[64];
  int i, running = 0, left, ok = 0, failed = 0;
  long long events = 0, bytes = 0, want = 0, c0 = cpu_us(), t0 = now_ns();
  CURLMsg *msg;
  g_ep = epoll_create1(0);
  g_multi = multi;
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
  for (i = 0; i < m; i++) {
    cs[i].want_bytes = cs[i].want_events = -1;
    curl_multi_add_handle(multi, mkeasy(url, stream_body, &cs[i]));
  }
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  while (running > 0) {
    int n = epoll_wait(g_ep, evs, 64, timer_ms < 0 ? 1000 : (int)timer_ms);
    if (n == 0) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    for (i = 0; i < n; i++) {
      int f = ((evs[i].events & (EPOLLIN | EPOLLHUP)) ? CURL_CSELECT_IN : 0) |
              ((evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
              ((evs[i].events & EPOLLERR) ? CURL_CSELECT_ERR : 0);
      curl_multi_socket_action(multi, evs[i].data.fd, f, &running);
    }
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE) continue;
      if (msg->data.result == CURLE_OK) ok++; else failed++;
      curl_multi_remove_handle(multi, msg->easy_handle);
      curl_easy_cleanup(msg->easy_handle);
    }
  }
  for (i = 0; i < m; i++) {
    events += cs[i].events;
    bytes += cs[i].bytes;
    want += cs[i].want_bytes;
    if (!cs[i].done || cs[i].bytes != cs[i].want_bytes) failed++;
  }
  printf("RESULT client=c-libcurl ok=%d streams=%d failed=%d events=%lld "
         "bytes=%lld want_bytes=%lld cpu_us=%lld wall_us=%lld maxrss_kb=%ld\n",
         failed == 0 && bytes == want, m, failed, events, bytes, want,
         cpu_us() - c0, (now_ns() - t0) / 1000, maxrss_kb());
  curl_multi_cleanup(multi);
  return failed != 0 || bytes != want;
}

/* }====== */


int main (int argc, char **argv) {
  int rc;
  if (argc < 3) {
    fprintf(stderr, "usage: cclient stream|lat|seq|startup|multi URL [N]\n");
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  hdrs = curl_slist_append(hdrs, "Accept: text/event-stream");
  hdrs = curl_slist_append(hdrs, "Expect:");
  if (strcmp(argv[1], "stream") == 0) rc = run_stream(argv[2], 0);
  else if (strcmp(argv[1], "lat") == 0) rc = run_stream(argv[2], 1);
  else if (strcmp(argv[1], "seq") == 0 && argc > 3) rc = run_seq(argv[2], atol(argv[3]));
  else if (strcmp(argv[1], "startup") == 0) rc = run_seq(argv[2], -1);
  else if (strcmp(argv[1], "multi") == 0 && argc > 3) rc = run_multi(argv[2], atoi(argv[3]));
  else { fprintf(stderr, "cclient: bad arguments\n"); return 2; }
  curl_slist_free_all(hdrs);
  curl_global_cleanup();
  return rc;
}
