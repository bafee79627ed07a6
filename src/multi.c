/*
** multi.c: driving a session's CURLM (libcurl's multi-socket API).
**
** A Session owns one CURLM handle: its connection cache is shared by every
** Transfer opened on it, so keep-alive connections are reused. libcurl's
** socket and timer callbacks only record what to watch; this file waits on
** those sockets (poll(), or an epoll set an event loop watches, or the
** loop's own word for one socket) and hands their readiness back to
** libcurl, which then runs the transfers' callbacks (transfer.c). What a
** transfer's end means, and our own deadlines, are transfer.c's.
**
** Callbacks never touch Lua (a Lua error would longjmp through libcurl):
** the socket and timer callbacks only update the Session's C arrays.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#define LCPP_EPOLL 1
#endif

#include <curl/curl.h>

#include "lcpp.h"


/* {====== libcurl callbacks: C only ====== */

/* Mirrors one socket's watch into the session's epoll set, if it has
   one: an event loop then watches a single fd (session:fd()). */
static void lcpp_epoll (Session *s, curl_socket_t fd, short events, int op) {
#ifdef LCPP_EPOLL
  struct epoll_event ev;
  if (s->epfd < 0) return;
  memset(&ev, 0, sizeof ev);
  ev.events = ((events & POLLIN) ? EPOLLIN : 0) | ((events & POLLOUT) ? EPOLLOUT : 0);
  ev.data.fd = fd;
  if (epoll_ctl(s->epfd, op, fd, &ev) != 0 && op == EPOLL_CTL_MOD)
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev);
#else
  (void)s; (void)fd; (void)events; (void)op;
#endif
}

#ifndef LCPP_EPOLL
#define EPOLL_CTL_ADD 1
#define EPOLL_CTL_DEL 2
#define EPOLL_CTL_MOD 3
#endif


static void lcpp_unwatch (Session *s, curl_socket_t fd) {
  int i;
  for (i = 0; i < s->nfds && s->fds[i].fd != fd; i++) ;
  if (i < s->nfds) {
    lcpp_epoll(s, fd, 0, EPOLL_CTL_DEL);
    s->nfds--;
    s->fds[i] = s->fds[s->nfds];
    s->serials[i] = s->serials[s->nfds];
    s->owners[i] = s->owners[s->nfds];
    s->changed = 1;
  }
}


static int lcpp_onsocket (CURL *e, curl_socket_t fd, int what, void *ud,
                          void *sp) {
  Session *s = (Session *)ud;
  int i;
  (void)sp;
  if (what == CURL_POLL_REMOVE) {
    lcpp_unwatch(s, fd);
    return 0;
  }
  s->changed = 1;
  for (i = 0; i < s->nfds && s->fds[i].fd != fd; i++) ;
  if (i == s->nfds) {
    if (s->nfds == s->capfds) {
      int cap = s->capfds ? 2 * s->capfds : 8;
      struct pollfd *p = (struct pollfd *)realloc(s->fds, cap * sizeof *p);
      unsigned *u;
      Transfer **o;
      if (p == NULL) return -1;
      s->fds = p;
      u = (unsigned *)realloc(s->serials, cap * sizeof *u);
      if (u == NULL) return -1;
      s->serials = u;
      o = (Transfer **)realloc(s->owners, cap * sizeof *o);
      if (o == NULL) return -1;
      s->owners = o;
      s->capfds = cap;
    }
    s->fds[s->nfds].fd = fd;
    /* a closed socket's number is soon reused: an event loop must know
       the socket is a new one to watch it anew */
    s->serials[s->nfds++] = ++s->nextserial;
  }
  s->fds[i].events = (short)(((what & CURL_POLL_IN) ? POLLIN : 0) |
                             ((what & CURL_POLL_OUT) ? POLLOUT : 0));
  s->fds[i].revents = 0;
  {
    char *owner = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, &owner);
    s->owners[i] = (Transfer *)(void *)owner;
  }
  lcpp_epoll(s, fd, s->fds[i].events, EPOLL_CTL_MOD);
  return 0;
}


/* libcurl does not always say CURL_POLL_REMOVE before it closes a socket
   (a connect that fails at once): an fd must never stay watched once
   closed, or an event loop polls a dead or, worse, a reused number.
   Set on each easy handle (CURLOPT_CLOSESOCKETFUNCTION, data: the
   Session) by transfer.c. */
int lcpp_onclose (void *ud, curl_socket_t fd) {
  lcpp_unwatch((Session *)ud, fd);
  return close(fd);
}


static int lcpp_ontimer (CURLM *m, long ms, void *ud) {
  Session *s = (Session *)ud;
  (void)m;
  s->timer_at = ms < 0 ? -1.0 : lcpp_now() + (double)ms;
  return 0;
}

/* }====== */


/* {====== The multi handle ====== */

/* s comes zeroed, timer_at and epfd -1 (lcpp_session_new). -1 when
   libcurl gives no multi handle. */
int lcpp_multi_open (Session *s) {
  s->multi = curl_multi_init();
  if (s->multi == NULL) return -1;
  curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, lcpp_onsocket);
  curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
  curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, lcpp_ontimer);
  curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
  return 0;
}


/* Once no transfer is attached any more: frees the handles and arrays. */
void lcpp_multi_close (Session *s) {
  while (s->npool > 0)
    curl_easy_cleanup(s->pool[--s->npool]);
  curl_multi_cleanup(s->multi);
  if (s->epfd >= 0) close(s->epfd);
  s->epfd = -1;
  s->multi = NULL;
  free(s->fds);
  free(s->serials);
  free(s->owners);
  s->fds = NULL;
  s->serials = NULL;
  s->owners = NULL;
  s->nfds = s->capfds = 0;
}


/* Adds t's easy handle to the multi and t to the session's list; -1 if
   libcurl refuses it. */
int lcpp_attach (Session *s, Transfer *t) {
  if (curl_multi_add_handle(s->multi, t->easy) != CURLM_OK) return -1;
  t->session = s;                        /* link first: keep the list exact */
  t->next = s->head;
  if (s->head) s->head->prev = t;
  s->head = t;
  return 0;
}


void lcpp_detach (Transfer *t) {
  Session *s = t->session;
  int i;
  if (s == NULL) return;
  curl_multi_remove_handle(s->multi, t->easy);
  for (i = 0; i < s->nfds; i++)
    if (s->owners[i] == t) s->owners[i] = NULL;
  if (t->prev) t->prev->next = t->next; else s->head = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = NULL;
  t->session = NULL;
}

/* }====== */


/* {====== Waiting and acting ====== */

/* Bytes arrived on fd: whatever they are (chunk framing too, which
   libcurl's callbacks never show), its transfer is not idle. */
static void lcpp_activity (Session *s, curl_socket_t fd) {
  int i;
  for (i = 0; i < s->nfds; i++) {
    if (s->fds[i].fd == fd) {
      if (s->owners[i] != NULL) s->owners[i]->tlast = lcpp_now();
      return;
    }
  }
}


/* Socket fd is ready (CURL_CSELECT_* flags): libcurl acts on it. */
void lcpp_multi_act (Session *s, curl_socket_t fd, int flags) {
  int running;
  if (flags & CURL_CSELECT_IN) lcpp_activity(s, fd);
  curl_multi_socket_action(s->multi, fd, flags, &running);
}


/* libcurl's timer, if it is due. */
void lcpp_multi_timer (Session *s) {
  if (s->timer_at >= 0 && lcpp_now() >= s->timer_at) {
    int running;
    s->timer_at = -1;
    curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  }
}


/*
** Waits at most wait_ms (< 0: until a socket is ready) with poll(), and
** lets libcurl act on the sockets that are. Returns 0, or -1 when poll()
** failed (errno set).
*/
int lcpp_multi_wait (Session *s, double wait_ms) {
  struct pollfd ready[16];
  int n, i, nready, ms;
  if (wait_ms < 0 && s->nfds == 0) wait_ms = 1000;   /* cannot happen; be safe */
  if (wait_ms > 86400000.0) wait_ms = 86400000.0;   /* a day: the loop goes on */
  ms = wait_ms < 0 ? -1 : (int)wait_ms + ((double)(int)wait_ms < wait_ms);
  n = poll(s->fds, (nfds_t)s->nfds, ms);
  if (n < 0 && errno != EINTR) return -1;
  while (n > 0) {
    /* libcurl's callbacks change s->fds while we act: copy a batch first */
    for (i = 0, nready = 0; i < s->nfds && nready < 16; i++) {
      if (s->fds[i].revents) {
        ready[nready++] = s->fds[i];
        s->fds[i].revents = 0;
      }
    }
    if (nready == 0) break;
    for (i = 0; i < nready; i++) {
      int flags = 0;
      short r = ready[i].revents;
      if (r & (POLLIN | POLLHUP)) flags |= CURL_CSELECT_IN;
      if (r & POLLOUT) flags |= CURL_CSELECT_OUT;
      if (r & (POLLERR | POLLNVAL)) flags |= CURL_CSELECT_ERR;
      lcpp_multi_act(s, ready[i].fd, flags);
    }
    n -= nready;
  }
  return 0;
}


/* One fd that is readable whenever a socket of the session is ready: an
   epoll set mirroring fds, made on first use (Linux); -1 where there is
   none. */
int lcpp_multi_fd (Session *s) {
#ifdef LCPP_EPOLL
  if (s->epfd < 0) {
    int i;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0) return -1;
    for (i = 0; i < s->nfds; i++)
      lcpp_epoll(s, s->fds[i].fd, s->fds[i].events, EPOLL_CTL_ADD);
  }
  return s->epfd;
#else
  (void)s;
  return -1;
#endif
}


/* The sockets of the epoll set that are ready, to libcurl. */
void lcpp_multi_ready (Session *s) {
#ifdef LCPP_EPOLL
  struct epoll_event evs[32];
  int n, i;
  if (s->epfd < 0) return;
  n = epoll_wait(s->epfd, evs, 32, 0);
  for (i = 0; i < n; i++) {
    int flags = 0;
    if (evs[i].events & (EPOLLIN | EPOLLHUP)) flags |= CURL_CSELECT_IN;
    if (evs[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
    if (evs[i].events & EPOLLERR) flags |= CURL_CSELECT_ERR;
    lcpp_multi_act(s, evs[i].data.fd, flags);
  }
#else
  (void)s;
#endif
}

/* }====== */
