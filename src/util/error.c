/*
 * error.c - error codes, names, messages and the per-thread last message.
 */
#include "config.h"

#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *kv_strerror(int code)
{
    switch (code) {
    case KV_OK:
        return "success";
#define XX(name, val, msg) \
    case KV_##name:        \
        return msg;
        KV_ERRNO_MAP(XX)
#undef XX
    default:
        break;
    }
    if (code < 0 && code > -4096)
        return strerror(-code); /* glibc: static table, thread-safe */
    return "unknown error";
}

const char *kv_err_name(int code)
{
    switch (code) {
    case KV_OK:
        return "KV_OK";
#define XX(name, val, msg) \
    case KV_##name:        \
        return "KV_" #name;
        KV_ERRNO_MAP(XX)
#undef XX
    default:
        break;
    }
    if (code < 0 && code > -4096) {
        const char *n = strerrorname_np(-code);
        if (n != NULL)
            return n;
    }
    return "UNKNOWN";
}

bool kv_err_is(int code, int kind)
{
    if (code >= 0)
        return false;
    if (code == kind || kind == KV_ERROR)
        return true;
    if (kind == KV_EBACKEND)
        return code == KV_ENOTFOUND || code == KV_ECORRUPT;
    return false;
}

int kv__from_errno(int neg_errno)
{
    if (neg_errno == -ENOMEM)
        return KV_ENOMEM;
    if (neg_errno == -ECANCELED)
        return KV_ECANCELED;
    return KV_EBACKEND;
}

static _Thread_local char last_errmsg[512];

void kv__set_errmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_errmsg, sizeof last_errmsg, fmt, ap);
    va_end(ap);
}

const char *kv_last_errmsg(void)
{
    return last_errmsg;
}

unsigned kv_version(void)
{
    return KV_VERSION_HEX;
}

const char *kv_version_string(void)
{
    return KV_VERSION_STRING;
}
