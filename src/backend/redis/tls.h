/*
 * tls.h - the Redis backend's TLS driver (rediss://): OpenSSL over memory
 * BIOs, so the socket I/O stays the caller's (the ring, or the open's
 * poll loop).  Bytes received from the socket go in with redis__tls_feed;
 * bytes OpenSSL wants sent come out with redis__tls_take.  Not API.
 *
 * tls.c with OpenSSL; tls_none.c without it, whose redis__tls_ctx_new
 * fails with KV_ENOTSUP (nothing else is reached then).
 *
 * Every function that takes why/whylen writes a message there on failure
 * (OpenSSL's reason, the certificate check that failed and the name or
 * address it was checked against), never secret material.  OpenSSL's
 * per-thread error queue is cleared before each call into it and emptied
 * into why after a failure.
 */
#ifndef KV_REDIS_TLS_H
#define KV_REDIS_TLS_H

#include "kvstore.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct rtls_ctx rtls_ctx; /* the store's: trust, client cert */
typedef struct rtls rtls;         /* one connection's session */

/* The URI's TLS options: cacert (a PEM file or a hashed directory; NULL:
 * the system store), cert and key (a client certificate chain and its
 * private key, PEM; both or neither), verify (check the server's
 * certificate and name). */
typedef struct rtls_opts {
    const char *cacert, *cert, *key;
    bool verify;
} rtls_opts;

/* Make a context: KV_OK, KV_ENOMEM, KV_EINVAL (a file that cannot be
 * loaded, a key that does not match its certificate), KV_ENOTSUP (built
 * without OpenSSL). */
int redis__tls_ctx_new(rtls_ctx **out, const rtls_opts *o, char *why,
                       size_t whylen);
void redis__tls_ctx_free(rtls_ctx *c); /* NULL-safe */

/* A client session for a node reached as host (a DNS name or an address
 * literal).  With verification, the certificate must be valid for sni
 * when given, else for host (a name: DNS SANs; an address: IP SANs); SNI
 * is sent for a name (sni, or host when it is no address).  KV_OK,
 * KV_ENOMEM or KV_EBACKEND. */
int redis__tls_new(rtls **out, rtls_ctx *c, const char *host, const char *sni,
                   char *why, size_t whylen);
void redis__tls_free(rtls *t); /* NULL-safe */

/* One handshake step: 1 done, 0 waiting for more input (take the output
 * first), or KV_EBACKEND (a failed verification says which check and
 * which name) / KV_ENOMEM. */
int redis__tls_handshake(rtls *t, char *why, size_t whylen);
/* Bytes received from the socket: KV_OK or KV_ENOMEM. */
int redis__tls_feed(rtls *t, const void *p, size_t n);
/* Encrypt n bytes of plaintext (after the handshake): KV_OK, or an error
 * with why set. */
int redis__tls_write(rtls *t, const void *p, size_t n, char *why,
                     size_t whylen);
/* Whether ciphertext waits to be sent. */
bool redis__tls_has_output(const rtls *t);
/* Append the ciphertext waiting to be sent to b: KV_OK or KV_ENOMEM. */
int redis__tls_take(rtls *t, kv_buf *b);
/* Decrypt into buf: the bytes (> 0), 0 when more input is needed, or an
 * error (KV_EBACKEND: the server closed the session, or a TLS failure;
 * KV_ENOMEM) with why set. */
long redis__tls_read(rtls *t, void *buf, size_t cap, char *why,
                     size_t whylen);

#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
/* Test hook: route OpenSSL's own allocations through kv__malloc and
 * kv__realloc, so kv__alloc_fail_at fails them too.  OpenSSL takes this
 * only before it has allocated anything: call it first thing in main.
 * KV_OK, or KV_ENOTSUP (too late, or built without OpenSSL or hiredis). */
int kv__redis_tls_test_alloc(void);
/* Test hook: free OpenSSL's state of the calling thread (its error queue,
 * whose buffers OpenSSL keeps for reuse, its random generators), which it
 * makes again when needed: a heap comparison then sees only real leaks. */
void kv__redis_tls_test_thread_stop(void);
#endif

#endif /* KV_REDIS_TLS_H */
