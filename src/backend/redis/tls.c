/*
 * tls.c - the Redis backend's TLS driver: OpenSSL over a pair of memory
 * BIOs (see tls.h).  OpenSSL never touches a socket: the ring (or the
 * open's poll loop) receives ciphertext and feeds it in, and sends what
 * OpenSSL left in its write BIO.  Verification (certificate chain, and the
 * node's name or address, or sni=) is on unless verify=0.
 */
#include "config.h"

#include "backend/redis/tls.h"
#include "store/backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct rtls_ctx {
    SSL_CTX *ctx;
    bool verify;
};

struct rtls {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl once set */
    bool verify;
    char vname[256]; /* what the certificate is checked against */
};

static bool err_nomem(unsigned long e)
{
    return e != 0 && ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE;
}

/* why = prefix, then OpenSSL's first queued reason (or what), and the
 * queue emptied.  Whether any queued error was an allocation failure
 * (which the outermost reason often is not: "PEM lib", "init fail"). */
static bool ssl_why(char *why, size_t whylen, const char *prefix,
                    const char *what)
{
    unsigned long e = ERR_get_error();
    bool nomem = err_nomem(e);
    char r[256];
    if (e != 0)
        ERR_error_string_n(e, r, sizeof r);
    else
        snprintf(r, sizeof r, "%s", what);
    snprintf(why, whylen, "%s: %s", prefix, r);
    while ((e = ERR_get_error()) != 0)
        nomem = nomem || err_nomem(e);
    return nomem;
}

#ifdef KV_TEST_HOOKS
static void *tls_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    return kv__malloc(n);
}

static void *tls_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    if (n == 0) { /* CRYPTO_realloc's own meaning: free */
        kv__free(p);
        return NULL;
    }
    return kv__realloc(p, n);
}

static void tls_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    kv__free(p);
}

int kv__redis_tls_test_alloc(void)
{
    return CRYPTO_set_mem_functions(tls_malloc, tls_realloc, tls_free) == 1
               ? KV_OK
               : KV_ENOTSUP;
}

void kv__redis_tls_test_thread_stop(void)
{
    OPENSSL_thread_stop();
}
#endif

int redis__tls_ctx_new(rtls_ctx **out, const rtls_opts *o, char *why,
                       size_t whylen)
{
    *out = NULL;
    ERR_clear_error();
    rtls_ctx *c = kv__calloc(1, sizeof *c);
    if (c == NULL) {
        snprintf(why, whylen, "out of memory");
        return KV_ENOMEM;
    }
    c->verify = o->verify;
    c->ctx = SSL_CTX_new(TLS_client_method());
    int rc = KV_EINVAL;
    bool nomem = false;
    if (c->ctx == NULL) {
        rc = KV_ENOMEM;
        nomem = ssl_why(why, whylen, "TLS context", "SSL_CTX_new failed");
        goto fail;
    }
    if (SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION) != 1) {
        nomem = ssl_why(why, whylen, "TLS context", "cannot require TLS 1.2");
        goto fail;
    }
    if (o->verify) {
        int ok;
        if (o->cacert != NULL) {
            struct stat sb;
            bool dir = stat(o->cacert, &sb) == 0 && S_ISDIR(sb.st_mode);
            ok = SSL_CTX_load_verify_locations(c->ctx, dir ? NULL : o->cacert,
                                               dir ? o->cacert : NULL);
            if (ok != 1) {
                char p[PATH_MAX + 96];
                snprintf(p, sizeof p, "cacert=%.*s: cannot load the CA "
                         "certificates", PATH_MAX, o->cacert);
                nomem = ssl_why(why, whylen, p, "no certificate in it");
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
            nomem = ssl_why(why, whylen, "TLS: the system's CA certificates",
                    "cannot be loaded");
            goto fail;
        }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (o->cert != NULL) {
        char p[PATH_MAX + 96];
        if (SSL_CTX_use_certificate_chain_file(c->ctx, o->cert) != 1) {
            snprintf(p, sizeof p, "cert=%.*s: cannot load the client "
                     "certificate", PATH_MAX, o->cert);
            nomem = ssl_why(why, whylen, p, "no certificate in it");
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(c->ctx, o->key, SSL_FILETYPE_PEM) !=
            1) {
            unsigned long e = ERR_peek_error();
            bool other = ERR_GET_LIB(e) == ERR_LIB_X509 &&
                         ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
            snprintf(p, sizeof p, "key=%.*s: %s", PATH_MAX, o->key,
                     other ? "does not match cert= (the key of another "
                             "certificate)"
                           : "cannot load the private key");
            nomem = ssl_why(why, whylen, p, "no key in it");
            goto fail;
        }
        if (SSL_CTX_check_private_key(c->ctx) != 1) {
            nomem = ssl_why(why, whylen, "key= does not match cert=",
                    "key mismatch");
            goto fail;
        }
    }
    *out = c;
    return KV_OK;
fail:
    if (nomem)
        rc = KV_ENOMEM;
    redis__tls_ctx_free(c);
    return rc;
}

void redis__tls_ctx_free(rtls_ctx *c)
{
    if (c == NULL)
        return;
    SSL_CTX_free(c->ctx);
    kv__free(c);
}

static bool is_address(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int redis__tls_new(rtls **out, rtls_ctx *c, const char *host, const char *sni,
                   char *why, size_t whylen)
{
    *out = NULL;
    ERR_clear_error();
    rtls *t = kv__calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(why, whylen, "out of memory");
        return KV_ENOMEM;
    }
    t->verify = c->verify;
    const char *name = sni != NULL ? sni : host;
    bool addr = sni == NULL && is_address(host);
    snprintf(t->vname, sizeof t->vname, "%s %s", addr ? "address" : "name",
             name);
    t->ssl = SSL_new(c->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        ssl_why(why, whylen, "TLS session", "out of memory");
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        kv__free(t);
        return KV_ENOMEM;
    }
    /* an empty read BIO means "retry" (wait for the ring), not EOF */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns them now */
    SSL_set_connect_state(t->ssl);
    int ok = 1;
    if (!addr)
        ok = SSL_set_tlsext_host_name(t->ssl, name) == 1;
    if (ok && t->verify) {
        if (addr) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl),
                                               name) == 1;
        } else {
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(t->ssl, name) == 1;
        }
    }
    if (!ok) {
        int rc = ssl_why(why, whylen, "TLS session: cannot set the server's "
                         "name", name)
                     ? KV_ENOMEM
                     : KV_EBACKEND;
        redis__tls_free(t);
        return rc;
    }
    *out = t;
    return KV_OK;
}

void redis__tls_free(rtls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    kv__free(t);
}

/* why for a failed SSL call whose SSL_get_error was e. */
static int ssl_fail(rtls *t, int e, const char *what, char *why,
                    size_t whylen)
{
    long v = SSL_get_verify_result(t->ssl);
    if (t->verify && v == X509_V_ERR_OUT_OF_MEM) {
        snprintf(why, whylen, "TLS %s failed: out of memory (certificate "
                 "verification)", what);
        ERR_clear_error();
        return KV_ENOMEM;
    }
    if (t->verify && v != X509_V_OK) {
        bool trust = v == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
                     v == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
                     v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                     v == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT;
        bool name = v == X509_V_ERR_HOSTNAME_MISMATCH ||
                    v == X509_V_ERR_IP_ADDRESS_MISMATCH;
        snprintf(why, whylen, "TLS %s failed: certificate verify failed: "
                 "%s (checked against the %s)%s",
                 what, X509_verify_cert_error_string(v), t->vname,
                 trust  ? "; cacert= names the CA that signed the server's "
                          "certificate"
                 : name ? "; sni= names the name the certificate carries"
                        : "");
        ERR_clear_error();
        return KV_EBACKEND;
    }
    unsigned long q = ERR_peek_error();
    bool certreq = ERR_GET_LIB(q) == ERR_LIB_SSL &&
                   (ERR_GET_REASON(q) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
                    ERR_GET_REASON(q) == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
                    ERR_GET_REASON(q) == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE);
    char p[64];
    snprintf(p, sizeof p, "TLS %s failed", what);
    int rc = ssl_why(why, whylen, p,
                     e == SSL_ERROR_ZERO_RETURN ? "the server closed the "
                                                  "session"
                     : e == SSL_ERROR_SYSCALL ? "the server closed the "
                                                "connection"
                                              : "error")
                 ? KV_ENOMEM
                 : KV_EBACKEND;
    if (certreq && rc != KV_ENOMEM) {
        size_t l = strlen(why);
        snprintf(why + l, whylen - l, " (the server may require a client "
                 "certificate: cert= and key=)");
    }
    return rc;
}

int redis__tls_handshake(rtls *t, char *why, size_t whylen)
{
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return ssl_fail(t, e, "handshake", why, whylen);
}

int redis__tls_feed(rtls *t, const void *p, size_t n)
{
    ERR_clear_error();
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        int w = BIO_write(t->rbio, p, chunk);
        if (w <= 0) {
            ERR_clear_error();
            return KV_ENOMEM; /* a memory BIO fails only for want of it */
        }
        p = (const char *)p + w;
        n -= (size_t)w;
    }
    return KV_OK;
}

int redis__tls_write(rtls *t, const void *p, size_t n, char *why,
                     size_t whylen)
{
    while (n > 0) {
        ERR_clear_error();
        size_t w = 0;
        int r = SSL_write_ex(t->ssl, p, n, &w);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            /* the write BIO grows as needed: no WANT_WRITE; WANT_READ only
             * mid-renegotiation, which TLS 1.3 and Redis do not do */
            return ssl_fail(t, e, "write", why, whylen);
        }
        p = (const char *)p + w;
        n -= w;
    }
    return KV_OK;
}

bool redis__tls_has_output(const rtls *t)
{
    return BIO_ctrl_pending(t->wbio) > 0;
}

int redis__tls_take(rtls *t, kv_buf *b)
{
    ERR_clear_error();
    size_t n = BIO_ctrl_pending(t->wbio);
    if (n == 0)
        return KV_OK;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        unsigned char *d = kv__realloc(b->data, cap);
        if (d == NULL)
            return KV_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    while (n > 0) {
        size_t got = 0;
        if (BIO_read_ex(t->wbio, b->data + b->len, n, &got) != 1 || got == 0)
            break;
        b->len += got;
        n -= got;
    }
    ERR_clear_error();
    return KV_OK;
}

long redis__tls_read(rtls *t, void *buf, size_t cap, char *why,
                     size_t whylen)
{
    ERR_clear_error();
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, buf, cap, &got);
    if (r == 1)
        return (long)got;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(why, whylen, "connection closed by the server (TLS "
                 "close_notify)");
        ERR_clear_error();
        return KV_EBACKEND;
    }
    return ssl_fail(t, e, "read", why, whylen);
}
