/*
** server.c: a small, fast local server for benchmarks. It speaks
** llama-server's POST /v1/chat/completions as the captures in
** ../shared/wire/ show it: HTTP/1.1 keep-alive; streams are chunked
** text/event-stream with a role chunk (sharing its HTTP chunk with the
** first token), one content delta per token (some of them multi-byte
** UTF-8 or JSON escapes), a finish chunk plus a usage chunk, then
** "data: [DONE]" and the last chunk; non-stream answers are one JSON
** object with Content-Length.
**
** One thread, one poll() loop, non-blocking sockets: hundreds of
** connections at once, each with its own pace. Listens on 127.0.0.1 only
** and exits by itself (GET /bench/quit, idle time, or a hard limit).
**
** What a request gets is set by path segments before /v1 (or before
** /chat/completions), each a letter and a number:
**   n<events>   content events (tokens) in the answer      (default -n)
**   k<count>    events per HTTP chunk                      (default 1)
**   d<usec>     delay between chunks, in microseconds      (default 0)
**   t1          latency mode: each content is the server's CLOCK_MONOTONIC
**               time in ns, taken just before the write(), zero-padded to
**               20 digits, then " é"
** e.g. POST /n100000/k64/v1/chat/completions.
**
** So that no client can buy speed by dropping data, every answer says
** what it sent: headers X-Bench-Events, X-Bench-Content-Bytes (decoded
** UTF-8 bytes of all contents), X-Bench-Conn (the connection's number),
** and the same in "timings" of the usage chunk (bench_events,
** bench_content_bytes, bench_conn). GET /bench/stats answers
** {"connections":N,"requests":N,"streams":N,"open":N}.
**
** usage: server [-p port] [-n events] [-i idle_s] [-T max_s] [-q]
** prints the port on the first line of stdout, then serves.
*/
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXCONN     1024
#define MAXREQ      (1024 * 1024)       /* request head + body */
#define TURN_CHUNKS 64                  /* chunks per connection per turn */

/* tokens as JSON string text, and their decoded UTF-8 length */
static const struct { const char *json; int bytes; } tokens[] = {
  {" The", 4}, {" model", 6}, {" said", 5}, {" h\xc3\xa9llo", 7},
  {" \xe6\x97\xa5\xe6\x9c\xac", 7}, {"\xe8\xaa\x9e", 3}, {" na\xc3\xafve", 7},
  {"\\n", 1}, {" tokens", 7}, {" \xc3\xbc", 3}, {"\xe3\x82\xbf", 3},
  {" \xf0\x9f\x99\x82", 5}, {" \\\"quoted\\\"", 9}, {" per", 4},
  {" second", 7}, {",", 1},
};
#define NTOK ((long)(sizeof tokens / sizeof tokens[0]))

#define ST_READ   0
#define ST_STREAM 1      /* writing a stream: generate as it drains */
#define ST_FLUSH  2      /* writing what is buffered, then read again */

typedef struct {
  int fd, id, state, close_after;
  char *in; size_t inlen, incap;
  char *out; size_t outlen, outoff, outcap;
  /* the stream being written */
  long n, k, d_us, lat, next;      /* next: index of the next token */
  int phase;                       /* 0 head, 1 contents, 2 tail, 3 done */
  long long due;                   /* ns: when the next chunk may go */
  long long bytes;                 /* content bytes announced */
} Conn;

static Conn *conns[MAXCONN];
static int nconns;
static long n_default = 16;
static long stat_conns, stat_reqs, stat_streams;
static int quiet;
static const char idpart[] = "chatcmpl-BenchBenchBenchBenchBenchBench";


static long long now_ns (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}


static void die (const char *what) {
  perror(what);
  exit(2);
}


/* {====== buffers ====== */

static void reserve (char **p, size_t *cap, size_t need) {
  size_t c = *cap ? *cap : 4096;
  if (need <= *cap) return;
  while (c < need) c *= 2;
  *p = (char *)realloc(*p, c);
  if (*p == NULL) die("realloc");
  *cap = c;
}


static void out_add (Conn *c, const char *s, size_t n) {
  reserve(&c->out, &c->outcap, c->outlen + n);
  memcpy(c->out + c->outlen, s, n);
  c->outlen += n;
}


static void out_str (Conn *c, const char *s) {
  out_add(c, s, strlen(s));
}

/* }====== */


/* {====== what is sent ====== */

static long long content_bytes (long n, int lat) {
  long long b = 0, full = 0;
  long i;
  if (lat) return (long long)n * 23;          /* 20 digits, " é" */
  for (i = 0; i < NTOK; i++) full += tokens[i].bytes;
  b = full * (n / NTOK);
  for (i = 0; i < n % NTOK; i++) b += tokens[i].bytes;
  return b;
}


/* one "data: ...\n\n" content event for token i */
static void ev_content (Conn *c, long i) {
  char ts[40];
  const char *tok = tokens[i % NTOK].json;
  out_str(c, "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,"
             "\"delta\":{\"content\":\"");
  if (c->lat) {
    snprintf(ts, sizeof ts, "%020lld \xc3\xa9", now_ns());
    tok = ts;
  }
  out_str(c, tok);
  out_str(c, "\"}}],\"created\":1795628704,\"id\":\"");
  out_str(c, idpart);
  out_str(c, "\",\"model\":\"models/tiny.gguf\",\"system_fingerprint\":"
             "\"b0-81ff7ab\",\"object\":\"chat.completion.chunk\"}\n\n");
}


static void ev_role (Conn *c) {
  out_str(c, "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,"
             "\"delta\":{\"role\":\"assistant\",\"content\":null}}],"
             "\"created\":1795628704,\"id\":\"");
  out_str(c, idpart);
  out_str(c, "\",\"model\":\"models/tiny.gguf\",\"system_fingerprint\":"
             "\"b0-81ff7ab\",\"object\":\"chat.completion.chunk\"}\n\n");
}


static void timings (Conn *c, char *buf, size_t size) {
  snprintf(buf, size, "\"timings\":{\"cache_n\":0,\"prompt_n\":1,"
           "\"prompt_ms\":0.9,\"prompt_per_token_ms\":0.9,"
           "\"prompt_per_second\":1111.1,\"predicted_n\":%ld,"
           "\"predicted_ms\":1.0,\"predicted_per_token_ms\":0.1,"
           "\"predicted_per_second\":10000.0,\"bench_events\":%ld,"
           "\"bench_content_bytes\":%lld,\"bench_conn\":%d}",
           c->n, c->n, c->bytes, c->id);
}


static void ev_tail (Conn *c) {
  char tm[512], buf[1024];
  out_str(c, "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,"
             "\"delta\":{}}],\"created\":1795628704,\"id\":\"");
  out_str(c, idpart);
  out_str(c, "\",\"model\":\"models/tiny.gguf\",\"system_fingerprint\":"
             "\"b0-81ff7ab\",\"object\":\"chat.completion.chunk\"}\n\n");
  timings(c, tm, sizeof tm);
  snprintf(buf, sizeof buf, "data: {\"choices\":[],\"created\":1795628704,"
           "\"id\":\"%s\",\"model\":\"models/tiny.gguf\",\"system_fingerprint\":"
           "\"b0-81ff7ab\",\"object\":\"chat.completion.chunk\",\"usage\":"
           "{\"completion_tokens\":%ld,\"prompt_tokens\":22,\"total_tokens\":%ld,"
           "\"prompt_tokens_details\":{\"cached_tokens\":21}},%s}\n\n",
           idpart, c->n, c->n + 22, tm);
  out_str(c, buf);
}


/* Appends one HTTP chunk whose data the caller builds between chunk_open
   and chunk_close; the size line (minimal hex, as llama-server writes it)
   is put in front afterwards. */
static size_t chunk_open (Conn *c) {
  size_t at = c->outlen;
  out_add(c, "0000000000", 10);            /* room for the size line */
  return at;
}


static void chunk_close (Conn *c, size_t at) {
  char hex[16];
  size_t len = c->outlen - at - 10;
  int h = snprintf(hex, sizeof hex, "%lx\r\n", (unsigned long)len);
  memmove(c->out + at + h, c->out + at + 10, len);
  memcpy(c->out + at, hex, (size_t)h);
  c->outlen -= 10 - (size_t)h;
  out_add(c, "\r\n", 2);
}


static void send_status (Conn *c, int status, const char *type,
                         const char *body) {
  char head[512];
  snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nKeep-Alive: timeout=5, max=100\r\n"
           "Content-Type: %s\r\nServer: llama.cpp\r\nContent-Length: %lu\r\n"
           "Access-Control-Allow-Origin: \r\n\r\n", status,
           status == 200 ? "OK" : "Not Found", type,
           (unsigned long)strlen(body));
  out_str(c, head);
  out_str(c, body);
  c->state = ST_FLUSH;
}


static void start_stream (Conn *c) {
  char head[512];
  snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\n"
           "Transfer-Encoding: chunked\r\nAccess-Control-Allow-Origin: \r\n"
           "X-Accel-Buffering: no\r\nServer: llama.cpp\r\n"
           "Content-Type: text/event-stream\r\nX-Bench-Events: %ld\r\n"
           "X-Bench-Content-Bytes: %lld\r\nX-Bench-Conn: %d\r\n\r\n",
           c->n, c->bytes, c->id);
  out_str(c, head);               /* written alone, as llama-server does */
  c->state = ST_STREAM;
  c->phase = 1;
  c->next = 0;
  c->due = 0;
  stat_streams++;
}


/* Appends the next chunk of the stream; returns 0 when nothing is left. */
static int next_chunk (Conn *c) {
  size_t at;
  long j;
  if (c->phase == 1) {
    at = chunk_open(c);
    if (c->next == 0) ev_role(c);
    for (j = 0; j < c->k && c->next < c->n; j++) ev_content(c, c->next++);
    chunk_close(c, at);
    if (c->next >= c->n) c->phase = 2;
    return 1;
  }
  if (c->phase == 2) {
    at = chunk_open(c);
    ev_tail(c);
    chunk_close(c, at);
    out_str(c, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    c->phase = 3;
    return 1;
  }
  return 0;
}


static void send_json (Conn *c) {
  char tm[512], head[512];
  size_t at = c->outlen, blen;
  long i;
  int h;
  out_str(c, "{\"choices\":[{\"finish_reason\":\"length\",\"index\":0,"
             "\"message\":{\"role\":\"assistant\",\"content\":\"");
  for (i = 0; i < c->n; i++) out_str(c, tokens[i % NTOK].json);
  timings(c, tm, sizeof tm);
  snprintf(head, sizeof head, "\"}}],\"created\":1795628704,\"model\":"
           "\"models/tiny.gguf\",\"system_fingerprint\":\"b0-81ff7ab\",\"object\":"
           "\"chat.completion\",\"usage\":{\"completion_tokens\":%ld,"
           "\"prompt_tokens\":22,\"total_tokens\":%ld,\"prompt_tokens_details\":"
           "{\"cached_tokens\":0}},\"id\":\"", c->n, c->n + 22);
  out_str(c, head);
  out_str(c, idpart);
  out_str(c, "\",");
  out_str(c, tm);
  out_str(c, "}");
  blen = c->outlen - at;
  h = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\n"
               "Content-Type: application/json; charset=utf-8\r\nServer: llama.cpp\r\n"
               "Content-Length: %lu\r\nX-Bench-Events: %ld\r\n"
               "X-Bench-Content-Bytes: %lld\r\nX-Bench-Conn: %d\r\n"
               "Access-Control-Allow-Origin: \r\n\r\n", (unsigned long)blen,
               c->n, c->bytes, c->id);
  reserve(&c->out, &c->outcap, c->outlen + (size_t)h);   /* head in front */
  memmove(c->out + at + h, c->out + at, blen);
  memcpy(c->out + at, head, (size_t)h);
  c->outlen += (size_t)h;
  c->state = ST_FLUSH;
}

/* }====== */


/* {====== requests ====== */

static const char *findhdr (const char *h, size_t n, const char *name) {
  size_t ln = strlen(name), i;
  for (i = 0; i + ln < n; i++) {
    if ((i == 0 || h[i - 1] == '\n') && strncasecmp(h + i, name, ln) == 0 &&
        h[i + ln] == ':') {
      const char *v = h + i + ln + 1;
      while (*v == ' ') v++;
      return v;
    }
  }
  return NULL;
}


/* "stream": true somewhere in the JSON body (not "stream_options") */
static int wants_stream (const char *b, size_t n) {
  const char *p = b, *end = b + n;
  while ((p = (const char *)memmem(p, (size_t)(end - p), "\"stream\"", 8)) != NULL) {
    p += 8;
    while (p < end && (*p == ' ' || *p == ':' || *p == '\t')) p++;
    return end - p >= 4 && memcmp(p, "true", 4) == 0;
  }
  return 0;
}


/* Path segments like /n100/k4/d250/t1 before /v1 or /chat. */
static void parse_opts (Conn *c, const char *path, size_t plen) {
  const char *p = path, *end = path + plen;
  c->n = n_default; c->k = 1; c->d_us = 0; c->lat = 0;
  while (p < end && *p == '/') {
    const char *s = p + 1, *e = s;
    long v;
    while (e < end && *e != '/') e++;
    if (e - s >= 2 && strchr("nkdt", *s) != NULL && s[1] >= '0' && s[1] <= '9') {
      v = strtol(s + 1, NULL, 10);
      if (*s == 'n') c->n = v;
      else if (*s == 'k') c->k = v > 0 ? v : 1;
      else if (*s == 'd') c->d_us = v;
      else c->lat = v != 0;
    } else break;
    p = e;
  }
}


/* A whole request is in c->in: answer it. Returns bytes consumed, 0 if
   the request is not complete yet, -1 to close. */
static long handle (Conn *c) {
  char *he = (char *)memmem(c->in, c->inlen, "\r\n\r\n", 4);
  const char *cl, *sp1, *sp2, *body, *conn;
  size_t hlen, blen = 0;
  char tmp[160];
  if (he == NULL) return c->inlen > 65536 ? -1 : 0;
  hlen = (size_t)(he - c->in) + 4;
  cl = findhdr(c->in, hlen, "Content-Length");
  if (cl != NULL) blen = (size_t)strtoul(cl, NULL, 10);
  if (findhdr(c->in, hlen, "Transfer-Encoding") != NULL) return -1;
  if (hlen + blen > MAXREQ) return -1;
  if (c->inlen < hlen + blen) return 0;
  body = c->in + hlen;
  stat_reqs++;
  conn = findhdr(c->in, hlen, "Connection");
  c->close_after = conn != NULL && strncasecmp(conn, "close", 5) == 0;
  sp1 = memchr(c->in, ' ', hlen);
  sp2 = sp1 ? memchr(sp1 + 1, ' ', hlen - (size_t)(sp1 + 1 - c->in)) : NULL;
  if (sp2 == NULL) return -1;
  sp1++;
  if ((size_t)(sp2 - sp1) >= 11 && memcmp(sp1, "/bench/quit", 11) == 0) {
    send_status(c, 200, "application/json", "{\"bye\":true}");
    c->close_after = 2;
  } else if ((size_t)(sp2 - sp1) >= 12 && memcmp(sp1, "/bench/stats", 12) == 0) {
    snprintf(tmp, sizeof tmp, "{\"connections\":%ld,\"requests\":%ld,"
             "\"streams\":%ld,\"open\":%d}", stat_conns, stat_reqs,
             stat_streams, nconns);
    send_status(c, 200, "application/json", tmp);
  } else if ((size_t)(sp2 - sp1) >= 17 &&
             memcmp(sp2 - 17, "/chat/completions", 17) == 0 &&
             memcmp(c->in, "POST ", 5) == 0) {
    parse_opts(c, sp1, (size_t)(sp2 - sp1));
    c->bytes = content_bytes(c->n, (int)c->lat);
    if (wants_stream(body, blen)) start_stream(c);
    else send_json(c);
  } else
    send_status(c, 404, "application/json; charset=utf-8",
                "{\"error\":{\"code\":404,\"message\":\"File Not Found\","
                "\"type\":\"not_found_error\"}}");
  return (long)(hlen + blen);
}

/* }====== */


/* {====== the loop ====== */

static void conn_close (int i) {
  Conn *c = conns[i];
  close(c->fd);
  free(c->in);
  free(c->out);
  free(c);
  conns[i] = conns[--nconns];
}


/* Writes what is buffered; returns 1 if all of it went, 0 if the socket
   is full, -1 on error. */
static int flush (Conn *c) {
  while (c->outoff < c->outlen) {
    ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      if (errno == EINTR) continue;
      return -1;
    }
    c->outoff += (size_t)w;
  }
  c->outoff = c->outlen = 0;
  return 1;
}


/* Makes progress on a connection's output. Returns -1 to close it. */
static int pump (Conn *c, long long now) {
  int r, turns = 0;
  for (;;) {
    r = flush(c);
    if (r < 0) return -1;
    if (r == 0) return 0;                    /* wait for POLLOUT */
    if (c->state == ST_FLUSH) {
      if (c->close_after) return -1;
      c->state = ST_READ;
      return 0;
    }
    if (c->state != ST_STREAM) return 0;
    if (c->phase == 3) {
      c->state = ST_READ;
      return c->close_after ? -1 : 0;
    }
    if (c->d_us > 0 && c->phase == 1) {     /* a fixed schedule: late */
      if (c->next > 0 && now < c->due)       /* chunks catch up */
        return 0;                            /* wait for the timer */
      c->due = (c->next == 0 ? now : c->due) + c->d_us * 1000LL;
    }
    if (++turns > TURN_CHUNKS) return 0;     /* let the others run */
    next_chunk(c);                           /* one chunk, one write() */
    if (c->lat) now = now_ns();
  }
}


static int on_read (Conn *c) {
  long used;
  for (;;) {
    ssize_t r;
    reserve(&c->in, &c->incap, c->inlen + 16384);
    r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
    if (r == 0) return -1;
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return -1;
    }
    c->inlen += (size_t)r;
  }
  if (c->state != ST_READ) return 0;         /* pipelined: later */
  used = handle(c);
  if (used < 0) return -1;
  if (used > 0) {
    memmove(c->in, c->in + used, c->inlen - (size_t)used);
    c->inlen -= (size_t)used;
  }
  return 0;
}


int main (int argc, char **argv) {
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int lfd, one = 1, i, quit = 0;
  long port = 0, idle_s = 30, max_s = 1800;
  long long start, last;
  static struct pollfd pfd[MAXCONN + 1];
  for (i = 1; i < argc; i++) {
    const char *o = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : "0";
    if (strcmp(o, "-q") == 0) { quiet = 1; continue; }
    if (strcmp(o, "-p") == 0) port = atol(v);
    else if (strcmp(o, "-n") == 0) n_default = atol(v);
    else if (strcmp(o, "-i") == 0) idle_s = atol(v);
    else if (strcmp(o, "-T") == 0) max_s = atol(v);
    else {
      fprintf(stderr, "usage: server [-p port] [-n events] [-i idle_s] [-T max_s] [-q]\n");
      return 2;
    }
    i++;
  }
  signal(SIGPIPE, SIG_IGN);
  lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) die("socket");
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);         /* loopback only */
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(lfd, 512) < 0) die("listen");
  fcntl(lfd, F_SETFL, O_NONBLOCK);
  getsockname(lfd, (struct sockaddr *)&a, &alen);
  printf("%d\n", ntohs(a.sin_port));
  fflush(stdout);
  start = last = now_ns();
  while (!quit) {
    long long now = now_ns(), wake = -1;
    struct timespec ts, *tsp = NULL;
    int n;
    if (now - start > max_s * 1000000000LL) break;
    if (nconns == 0 && now - last > idle_s * 1000000000LL) break;
    pfd[0].fd = lfd;
    pfd[0].events = nconns < MAXCONN ? POLLIN : 0;
    for (i = 0; i < nconns; i++) {
      Conn *c = conns[i];
      short ev = POLLIN;
      if (c->outoff < c->outlen) ev |= POLLOUT;
      else if (c->state == ST_STREAM) {
        if (c->d_us > 0 && c->due > now && c->phase == 1) {
          if (wake < 0 || c->due < wake) wake = c->due;
        } else wake = now;                   /* more to generate now */
      }
      pfd[i + 1].fd = c->fd;
      pfd[i + 1].events = ev;
      pfd[i + 1].revents = 0;
    }
    if (wake >= 0) {
      long long d = wake > now ? wake - now : 0;
      ts.tv_sec = (time_t)(d / 1000000000LL);
      ts.tv_nsec = (long)(d % 1000000000LL);
      tsp = &ts;
    } else {
      ts.tv_sec = 1; ts.tv_nsec = 0;       /* check the idle limit */
      tsp = &ts;
    }
    n = ppoll(pfd, (nfds_t)nconns + 1, tsp, NULL);
    if (n < 0 && errno != EINTR) die("poll");
    now = now_ns();
    if (n > 0) last = now;
    /* connections first (indices move when one closes: walk down) */
    for (i = nconns - 1; i >= 0; i--) {
      Conn *c = conns[i];
      short r = pfd[i + 1].revents;
      int bad = 0;
      if (r & (POLLERR | POLLNVAL)) bad = 1;
      if (!bad && (r & (POLLIN | POLLHUP))) bad = on_read(c) < 0;
      if (!bad) {
        int was = c->close_after;
        bad = pump(c, now) < 0;
        if (bad && was == 2) quit = 1;
      }
      if (bad) conn_close(i);
    }
    if (pfd[0].revents & POLLIN) {
      for (;;) {
        int fd = accept(lfd, NULL, NULL);
        Conn *c;
        if (fd < 0) break;
        if (nconns >= MAXCONN) { close(fd); break; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = (Conn *)calloc(1, sizeof *c);
        if (c == NULL) die("calloc");
        c->fd = fd;
        c->id = (int)++stat_conns;
        conns[nconns++] = c;
      }
    }
  }
  if (!quiet)
    fprintf(stderr, "bench server: %ld connections, %ld requests, %ld streams\n",
            stat_conns, stat_reqs, stat_streams);
  return 0;
}

/* }====== */
