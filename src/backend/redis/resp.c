/*
 * resp.c - RESP formatting for the Redis backend: bulk strings, the keys of
 * the store's layout (P{tag} ...), and a command's wire form.  Replies are
 * parsed by hiredis's redisReader (node.c, redis.c).
 */
#include "backend/redis/redis_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int redis__fmt(kv_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return KV_EINVAL;
    return kv_buf_append(b, tmp, (size_t)n);
}

/* Append one bulk string. */
int redis__arg(kv_buf *b, const void *p, size_t n)
{
    int rc = redis__fmt(b, "$%zu\r\n", n);
    if (rc == KV_OK && n > 0)
        rc = kv_buf_append(b, p, n);
    if (rc == KV_OK)
        rc = kv_buf_append(b, "\r\n", 2);
    return rc;
}

int redis__args(kv_buf *b, const char *s)
{
    return redis__arg(b, s, strlen(s));
}

int redis__argu(kv_buf *b, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    return redis__arg(b, t, (size_t)n);
}

/* A Redis key: P{tag(slot)} followed by what (len bytes). */
int redis__arg_key(rstore *st, kv_buf *b, unsigned slot, const void *what,
                   size_t len)
{
    char t[24];
    int n = snprintf(t, sizeof t, "{%u}", redis__slot_tag(slot));
    int rc = redis__fmt(b, "$%zu\r\n", st->plen + (size_t)n + len);
    if (rc == KV_OK)
        rc = kv_buf_append(b, st->prefix, st->plen);
    if (rc == KV_OK)
        rc = kv_buf_append(b, t, (size_t)n);
    if (rc == KV_OK && len > 0)
        rc = kv_buf_append(b, what, len);
    if (rc == KV_OK)
        rc = kv_buf_append(b, "\r\n", 2);
    return rc;
}

int redis__cmd_format(const rstore *st, const rcmd *c, kv_buf *b)
{
    int rc = KV_OK;
    if (c->asking)
        rc = kv_buf_append(b, "*1\r\n$6\r\nASKING\r\n", 16);
    if (rc == KV_OK && c->script >= 0) {
        rc = redis__fmt(b, "*%d\r\n", c->nargs + 2);
        if (rc == KV_OK && c->eval)
            rc = redis__args(b, "EVAL");
        if (rc == KV_OK && c->eval)
            rc = redis__args(b, redis__scripts[c->script]);
        if (rc == KV_OK && !c->eval)
            rc = redis__args(b, "EVALSHA");
        if (rc == KV_OK && !c->eval)
            rc = redis__arg(b, st->sha[c->script], 40);
    } else if (rc == KV_OK) {
        rc = redis__fmt(b, "*%d\r\n", c->nargs);
    }
    if (rc == KV_OK)
        rc = kv_buf_append(b, c->tail.data, c->tail.len);
    return rc;
}
