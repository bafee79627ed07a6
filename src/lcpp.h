/*
** lcpp.h: what the C files of llamacpp.core share. Nothing here is
** exported from the shared object: only luaopen_llamacpp_core is.
*/
#ifndef LCPP_H
#define LCPP_H

#include <stddef.h>

#include <curl/curl.h>
#include "lua.h"

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

/* the template of a plain event: head, mid, tail; part[0] == NULL: none */
typedef struct { char *part[3]; size_t len[3]; } lcpp_template;


/* error.c */
LCPP_HIDDEN void lcpp_error_open (lua_State *L);
LCPP_HIDDEN void lcpp_newerror (lua_State *L, const char *kind,
                                const char *message, int retryable);
LCPP_HIDDEN void lcpp_setstring (lua_State *L, const char *k, const char *v);
LCPP_HIDDEN void lcpp_setinteger (lua_State *L, const char *k, lua_Integer v);
LCPP_HIDDEN const char *lcpp_curlname (CURLcode code);
LCPP_HIDDEN const char *lcpp_curlkind (CURLcode code, int *retryable);

/* clock.c */
LCPP_HIDDEN double lcpp_now (void);
LCPP_HIDDEN int lcpp_core_now (lua_State *L);
LCPP_HIDDEN int lcpp_core_sleep (lua_State *L);

/* transfer.c */
LCPP_HIDDEN void lcpp_transfer_open (lua_State *L);
LCPP_HIDDEN int lcpp_session_new (lua_State *L);

/* fastpath.c */
LCPP_HIDDEN int lcpp_plain (lua_State *L, const lcpp_template *tpl,
                            const char *d, size_t n);

/* core.c: shared by the two files above */
LCPP_HIDDEN void lcpp_newclass (lua_State *L, const char *tname,
                                const luaL_Reg *methods, const luaL_Reg *metas);

#endif
