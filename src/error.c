/*
** error.c: failures -> llamacpp.Error. The Error metatable, and the
** mapping of a failed transfer (libcurl's result, or a limit of ours) to
** an Error's kind and fields (DESIGN.md section 3). HTTP statuses are
** mapped in Lua (llamacpp.errors), where the provider's message shapes live.
*/
#include <stdio.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "lcpp.h"


/* {====== Error objects ====== */

/* Pushes t[k] as a string if it is one (numbers are converted). */
static const char *lcpp_field (lua_State *L, int t, const char *k) {
  const char *s;
  lua_getfield(L, t, k);
  s = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);      /* the string stays alive: t still references it */
  return s;
}


/*
** One self-contained line: "llamacpp: <message> (<kind> [status], <code>,
** <phase>, provider=<p>)". Never raises on odd tables: __tostring is used
** inside error handlers.
*/
static int error_tostring (lua_State *L) {
  luaL_Buffer b;
  const char *kind, *msg, *status, *code, *phase, *prov;
  if (!lua_istable(L, 1)) {
    lua_pushliteral(L, "llamacpp: error");
    return 1;
  }
  kind = lcpp_field(L, 1, "kind");
  msg = lcpp_field(L, 1, "message");
  status = lcpp_field(L, 1, "status");
  code = lcpp_field(L, 1, "code");
  phase = lcpp_field(L, 1, "phase");
  prov = lcpp_field(L, 1, "provider");
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "llamacpp: ");
  luaL_addstring(&b, msg ? msg : (kind ? kind : "error"));
  luaL_addstring(&b, " (");
  luaL_addstring(&b, kind ? kind : "error");
  if (status && kind && strcmp(kind, "http") == 0) {
    luaL_addchar(&b, ' ');
    luaL_addstring(&b, status);
  }
  if (code) { luaL_addstring(&b, ", "); luaL_addstring(&b, code); }
  if (phase) { luaL_addstring(&b, ", phase "); luaL_addstring(&b, phase); }
  if (prov) { luaL_addstring(&b, ", provider="); luaL_addstring(&b, prov); }
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}


static void lcpp_setstring (lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}


void lcpp_setinteger (lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}


static void lcpp_newerror (lua_State *L, const char *kind,
                           const char *message, int retryable) {
  lua_createtable(L, 0, 8);                       /* err */
  lcpp_setstring(L, "kind", kind);
  lcpp_setstring(L, "message", message);
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
  luaL_getmetatable(L, LCPP_ERROR_MT);            /* err, mt */
  lua_setmetatable(L, -2);                        /* err */
}


static const luaL_Reg error_metas[] = {
  {"__tostring", error_tostring},
  {NULL, NULL}
};


/* Leaves the Error metatable on the stack: the module exports it. */
void lcpp_error_open (lua_State *L) {
  luaL_newmetatable(L, LCPP_ERROR_MT);            /* mt */
  luaL_setfuncs(L, error_metas, 0);
  lua_pushliteral(L, LCPP_ERROR_MT);
  lua_setfield(L, -2, "__name");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");   /* methods added by Lua land here */
}

/* }====== */


/* {====== libcurl results ====== */

/* The mnemonic of a CURLcode, as Lua-cURL and the curl tool name them. */
static const char *lcpp_curlname (CURLcode code) {
  switch (code) {
#define N(x) case CURLE_##x: return #x;
    N(OK) N(UNSUPPORTED_PROTOCOL) N(URL_MALFORMAT) N(COULDNT_RESOLVE_PROXY)
    N(COULDNT_RESOLVE_HOST) N(COULDNT_CONNECT) N(WEIRD_SERVER_REPLY)
    N(HTTP2) N(PARTIAL_FILE) N(HTTP_RETURNED_ERROR) N(WRITE_ERROR)
    N(READ_ERROR) N(OUT_OF_MEMORY) N(OPERATION_TIMEDOUT) N(RANGE_ERROR)
    N(SSL_CONNECT_ERROR) N(TOO_MANY_REDIRECTS) N(GOT_NOTHING)
    N(SSL_ENGINE_NOTFOUND) N(SEND_ERROR) N(RECV_ERROR) N(SSL_CERTPROBLEM)
    N(SSL_CIPHER) N(PEER_FAILED_VERIFICATION) N(BAD_CONTENT_ENCODING)
    N(SSL_CACERT_BADFILE) N(SSL_SHUTDOWN_FAILED) N(AGAIN)
    N(SSL_CRL_BADFILE) N(SSL_ISSUER_ERROR) N(HTTP2_STREAM) N(HTTP3)
    N(ABORTED_BY_CALLBACK) N(BAD_FUNCTION_ARGUMENT) N(INTERFACE_FAILED)
    N(FAILED_INIT) N(SSL_PINNEDPUBKEYNOTMATCH) N(SSL_INVALIDCERTSTATUS)
    N(PROXY) N(SSL_CLIENTCERT) N(UNRECOVERABLE_POLL)
#undef N
    default: return "CURLE_OTHER";
  }
}


/* The kind of DESIGN.md section 3 for a failed transfer. */
static const char *lcpp_curlkind (CURLcode code, int *retryable) {
  *retryable = 1;
  switch (code) {
    case CURLE_COULDNT_RESOLVE_PROXY: case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT: case CURLE_INTERFACE_FAILED:
      return "connection";
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    case CURLE_SSL_CONNECT_ERROR: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
      *retryable = 0;
      return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT:
    case CURLE_WEIRD_SERVER_REPLY: case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_TOO_MANY_REDIRECTS: case CURLE_RANGE_ERROR:
      *retryable = 0;
      return "protocol";
    case CURLE_ABORTED_BY_CALLBACK:
      *retryable = 0;
      return "cancelled";
    default:            /* PARTIAL_FILE, RECV_ERROR, SEND_ERROR, GOT_NOTHING, ... */
      return "network";
  }
}

/* }====== */


/* {====== Failed transfers ====== */

/* Which limit a CURLE_OPERATION_TIMEDOUT hit: libcurl names none. */
static const char *lcpp_timeoutphase (const Transfer *t) {
  double elapsed = lcpp_now() - t->t0;
  if (t->total_ms > 0 && elapsed + 5 >= t->total_ms) return "total";
  return t->gotbyte ? "total" : "connect";
}


/* A whole number as text on every Lua (5.4's %f would add ".0"). */
static const char *lcpp_num (char *buf, double v) {
  snprintf(buf, 32, "%.0f", v);
  return buf;
}


/*
** Pushes the Error of a failed transfer (t->fail, or else libcurl's
** t->result): the one place where a failure gets its kind, retryable,
** code, phase and status (DESIGN.md section 3).
*/
void lcpp_pushfailure (lua_State *L, const Transfer *t) {
  char num[32];
  int retry = 0;
  long cc = 0;
  const char *kind;
  switch (t->fail) {
    case FAIL_NONE:                       /* libcurl's: t->result */
      kind = lcpp_curlkind(t->result, &retry);
      lcpp_newerror(L, kind, t->errbuf[0] ? t->errbuf
                    : curl_easy_strerror(t->result), retry);
      lcpp_setstring(L, "code", lcpp_curlname(t->result));
      if (t->result == CURLE_OPERATION_TIMEDOUT) {
        curl_off_t us = 0;
        lcpp_setstring(L, "phase", lcpp_timeoutphase(t));
        /* whether the first hop (the server, or a proxy) took the TCP
           connection: Lua tells a proxy that never answered apart */
        if (t->easy != NULL && curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &us) == CURLE_OK)
          lcpp_setinteger(L, "connect_us", (lua_Integer)us);
      }
      /* a proxy that refused the tunnel (CONNECT answered 407, 403, 502...):
         Lua names the proxy and decides what another try can do */
      if (t->easy != NULL && curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &cc) == CURLE_OK
          && cc >= 300)
        lcpp_setinteger(L, "proxy_status", (lua_Integer)cc);
      break;
    case FAIL_CANCEL:
      lcpp_newerror(L, "cancelled", "the session was closed", 0);
      break;
    case FAIL_FRAME:
      if (t->frame.error == LCPP_FRAME_EOVERSIZE) {
        lua_pushfstring(L, "event larger than %s bytes", lcpp_num(num, (double)t->frame.max_event));
        lcpp_newerror(L, "protocol", lua_tostring(L, -1), 0);
        lua_remove(L, -2);
        lcpp_setstring(L, "code", "EVENT_TOO_LARGE");
      } else
        lcpp_newerror(L, "protocol", "out of memory while parsing events", 0);
      break;
    case FAIL_BODY:
      lua_pushfstring(L, "response body larger than %s bytes", lcpp_num(num, (double)t->maxbody));
      lcpp_newerror(L, "protocol", lua_tostring(L, -1), 0);
      lua_remove(L, -2);
      lcpp_setstring(L, "code", "BODY_TOO_LARGE");
      break;
    case FAIL_HEADERS:
      lcpp_newerror(L, "protocol", "response header block too large", 0);
      lcpp_setstring(L, "code", "HEADERS_TOO_LARGE");
      break;
    case FAIL_FIRSTBYTE: case FAIL_IDLE: {
      int first = t->fail == FAIL_FIRSTBYTE;
      lua_pushfstring(L, first ? "no reply within %s ms" : "no data for %s ms",
                      lcpp_num(num, first ? t->first_byte_ms : t->idle_ms));
      lcpp_newerror(L, "timeout", lua_tostring(L, -1), 1);
      lua_remove(L, -2);
      lcpp_setstring(L, "code", "OPERATION_TIMEDOUT");
      lcpp_setstring(L, "phase", first ? "first_byte" : "idle");
      break;
    }
    case FAIL_POLL:
      lcpp_newerror(L, "network", "poll() failed", 1);
      break;
    case FAIL_HEADCUT:
      lcpp_newerror(L, "network", "connection closed inside the header block", 1);
      lcpp_setstring(L, "code", "PARTIAL_HEADERS");
      break;
    default:
      lcpp_newerror(L, "network", "out of memory", 0);
      break;
  }
  if (t->status > 0) lcpp_setinteger(L, "status", (lua_Integer)t->status);
}

/* }====== */
