/*
 * flags.c - the check of a kv_*_open call's flags that every backend shares:
 * a flag of another backend, or a bit no flag uses, fails KV_EINVAL with a
 * kv_last_errmsg that names it and the backend.  Each backend calls it first
 * thing with the flags it accepts; checks between its own flags (e.g. two
 * that exclude each other) stay in the backend.
 */
#include "config.h"

#include "store/backend.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

/* Every open flag of kvstore.h: its name and the backend it belongs to. */
static const struct {
    unsigned bit;
    const char *name;
    const char *backend; /* NULL: every backend's */
    const char *was;     /* the deprecated name, if any */
} flag_names[] = {
    {KV_READONLY, "KV_READONLY", NULL, NULL},
    {KV_SQLITE_SYNC_FULL, "KV_SQLITE_SYNC_FULL", "sqlite", "KV_SYNC_FULL"},
    {KV_SQLITE_SYNC_OFF, "KV_SQLITE_SYNC_OFF", "sqlite", NULL},
    {KV_SQLITE_NO_MAP, "KV_SQLITE_NO_MAP", "sqlite", NULL},
    {KV_FS_NO_FSYNC, "KV_FS_NO_FSYNC", "fs", "KV_NO_FSYNC"},
    {KV_FS_FANOUT, "KV_FS_FANOUT", "fs", NULL},
};

/* Append to buf[*len..size), keeping it a string when it is full. */
static void append(char *buf, size_t size, size_t *len, const char *fmt, ...)
    KV__PRINTF(4, 5);
static void append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    if (*len >= size)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, size - *len, fmt, ap);
    va_end(ap);
    /* A failed or truncated write leaves a terminated prefix: stop there. */
    *len = n < 0 ? size : *len + (size_t)n;
}

int kv__check_open_flags(const char *backend, unsigned flags, unsigned allowed)
{
    unsigned bad = flags & ~allowed;
    if (bad == 0)
        return KV_OK;
    /*
     * The message fits kv_last_errmsg's 512 bytes with every flag named
     * (about 300); a longer one would only lose its tail.
     */
    char msg[512];
    size_t len = 0;
    append(msg, sizeof msg, &len,
           "kv_%s_open: flags the %s backend does not accept:", backend,
           backend);
    unsigned unknown = bad;
    const char *sep = " ";
    for (size_t i = 0; i < KV__ARRAY_SIZE(flag_names); i++) {
        if ((bad & flag_names[i].bit) == 0)
            continue;
        unknown &= ~flag_names[i].bit;
        append(msg, sizeof msg, &len, "%s%s", sep, flag_names[i].name);
        if (flag_names[i].was != NULL)
            append(msg, sizeof msg, &len, " (formerly %s)", flag_names[i].was);
        if (flag_names[i].backend != NULL)
            append(msg, sizeof msg, &len, ", a flag of the %s backend",
                   flag_names[i].backend);
        sep = "; ";
    }
    if (unknown != 0)
        append(msg, sizeof msg, &len, "%sunknown bits 0x%x", sep, unknown);
    append(msg, sizeof msg, &len, " (it accepts");
    bool any = false;
    for (size_t i = 0; i < KV__ARRAY_SIZE(flag_names); i++) {
        if ((allowed & flag_names[i].bit) == 0)
            continue;
        append(msg, sizeof msg, &len, "%s%s", any ? ", " : " ",
               flag_names[i].name);
        any = true;
    }
    append(msg, sizeof msg, &len, "%s)", any ? "" : " no flag");
    kv__set_errmsg("%s", msg);
    return KV_EINVAL;
}
