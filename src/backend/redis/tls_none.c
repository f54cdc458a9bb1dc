/*
 * tls_none.c - the TLS driver when configure found no OpenSSL (built
 * instead of tls.c): a rediss:// URI fails its open with KV_ENOTSUP at
 * redis__tls_ctx_new; nothing else is ever reached.
 */
#include "config.h"

#include "backend/redis/tls.h"

#include <stdio.h>

int redis__tls_ctx_new(rtls_ctx **out, const rtls_opts *o, char *why,
                       size_t whylen)
{
    (void)o;
    *out = NULL;
    snprintf(why, whylen, "rediss:// (TLS) is not supported by this build: "
             "kvstore was configured without OpenSSL (apt-get install "
             "libssl-dev and reconfigure)");
    return KV_ENOTSUP;
}

#ifdef KV_TEST_HOOKS
int kv__redis_tls_test_alloc(void)
{
    return KV_ENOTSUP;
}

void kv__redis_tls_test_thread_stop(void)
{
}
#endif

void redis__tls_ctx_free(rtls_ctx *c)
{
    (void)c;
}

int redis__tls_new(rtls **out, rtls_ctx *c, const char *host, const char *sni,
                   char *why, size_t whylen)
{
    (void)c;
    (void)host;
    (void)sni;
    *out = NULL;
    snprintf(why, whylen, "TLS is not supported by this build");
    return KV_ENOTSUP;
}

void redis__tls_free(rtls *t)
{
    (void)t;
}

int redis__tls_handshake(rtls *t, char *why, size_t whylen)
{
    (void)t;
    snprintf(why, whylen, "TLS is not supported by this build");
    return KV_ENOTSUP;
}

int redis__tls_feed(rtls *t, const void *p, size_t n)
{
    (void)t;
    (void)p;
    (void)n;
    return KV_ENOTSUP;
}

int redis__tls_write(rtls *t, const void *p, size_t n, char *why,
                     size_t whylen)
{
    (void)t;
    (void)p;
    (void)n;
    snprintf(why, whylen, "TLS is not supported by this build");
    return KV_ENOTSUP;
}

bool redis__tls_has_output(const rtls *t)
{
    (void)t;
    return false;
}

int redis__tls_take(rtls *t, kv_buf *b)
{
    (void)t;
    (void)b;
    return KV_OK;
}

long redis__tls_read(rtls *t, void *buf, size_t cap, char *why,
                     size_t whylen)
{
    (void)t;
    (void)buf;
    (void)cap;
    snprintf(why, whylen, "TLS is not supported by this build");
    return KV_ENOTSUP;
}
