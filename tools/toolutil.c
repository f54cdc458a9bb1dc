/*
 * toolutil.c - helpers shared by kvbench and kvctl.  See toolutil.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "toolutil.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* URIs                                                                     */
/* ------------------------------------------------------------------------ */

static const struct {
    const char *prefix;
    tu_backend kind;
} uri_prefixes[] = {
    {"sqlite-raw:", TU_SQLITE_RAW},
    {"sqlite:", TU_SQLITE},
    {"fs:", TU_FS},
    {"lmdb:", TU_LMDB},
    {"rocksdb:", TU_ROCKSDB},
    {"redis:", TU_REDIS},
    {"rediss:", TU_REDIS},
};

const char *tu_uri_shown(const char *uri, char *out, size_t len)
{
    const char *ss = strstr(uri, "://");
    if (ss == NULL) {
        snprintf(out, len, "%s", uri);
        return out;
    }
    const char *auth = ss + 3;
    size_t al = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *q = auth; q < auth + al; q++)
        if (*q == '@')
            at = q;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon == NULL) {
        snprintf(out, len, "%s", uri);
        return out;
    }
    snprintf(out, len, "%.*s***%s", (int)(colon + 1 - uri), uri, at);
    return out;
}

int tu_uri_parse(tu_uri *out, const char *uri, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < sizeof uri_prefixes / sizeof uri_prefixes[0]; i++) {
        size_t pl = strlen(uri_prefixes[i].prefix);
        if (strncmp(uri, uri_prefixes[i].prefix, pl) != 0)
            continue;
        const char *path = uri + pl;
        out->kind = uri_prefixes[i].kind;
        if (out->kind == TU_REDIS)
            path = uri; /* kv_redis_open takes the whole URI */
        if (out->kind == TU_SQLITE &&
            (strcmp(path, "memory") == 0 || strcmp(path, ":memory:") == 0)) {
            out->kind = TU_SQLITE_MEM;
            return 0;
        }
        size_t plen = strlen(path);
        /* One option of the store's: fs ?fanout=1 (KV_FS_FANOUT), sqlite
         * ?map=0 (KV_SQLITE_NO_MAP). */
        const char *opt = out->kind == TU_FS       ? "?fanout="
                          : out->kind == TU_SQLITE ? "?map="
                                                   : NULL;
        const char *q = opt != NULL ? strrchr(path, '?') : NULL;
        if (q != NULL && strncmp(q, opt, strlen(opt)) == 0) {
            const char *v = q + strlen(opt);
            bool on = strcmp(v, "1") == 0;
            if (!on && strcmp(v, "0") != 0) {
                snprintf(err, errlen, "store URI '%s': %.*s takes 0 or 1",
                         uri, (int)strlen(opt) - 2, opt + 1);
                return -1;
            }
            if (out->kind == TU_FS && on)
                out->flags |= KV_FS_FANOUT;
            if (out->kind == TU_SQLITE && !on)
                out->flags |= KV_SQLITE_NO_MAP;
            plen = (size_t)(q - path);
        }
        if (plen == 0) {
            snprintf(err, errlen, "store URI '%s' has no path", uri);
            return -1;
        }
        out->path = strndup(path, plen);
        if (!out->path) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        return 0;
    }
    char shown[512];
    snprintf(err, errlen,
             "unknown store URI '%s' (expected sqlite:memory, sqlite:PATH, "
             "fs:PATH, redis://HOST:PORT, rediss://HOST:PORT, "
             "sqlite-raw:PATH, lmdb:PATH or rocksdb:PATH)",
             tu_uri_shown(uri, shown, sizeof shown));
    return -1;
}

void tu_uri_free(tu_uri *u)
{
    free(u->path);
    u->path = NULL;
}

bool tu_uri_is_kvstore(const tu_uri *u)
{
    return u->kind == TU_SQLITE_MEM || u->kind == TU_SQLITE ||
           u->kind == TU_FS || u->kind == TU_REDIS;
}

const char *tu_backend_name(tu_backend k)
{
    switch (k) {
    case TU_SQLITE_MEM:
    case TU_SQLITE: return "sqlite";
    case TU_FS: return "fs";
    case TU_SQLITE_RAW: return "sqlite-raw";
    case TU_LMDB: return "lmdb";
    case TU_ROCKSDB: return "rocksdb";
    case TU_REDIS: return "redis";
    }
    return "?";
}

int tu_open_store(kv_store **out, kv_loop *loop, kv_pool *pool,
                  const tu_uri *u, unsigned flags, char *err, size_t errlen)
{
    int rc;
    flags |= u->flags;
    switch (u->kind) {
    case TU_SQLITE_MEM:
        rc = kv_sqlite_open(out, loop, pool, KV_SQLITE_MEMORY, flags);
        break;
    case TU_SQLITE:
        rc = kv_sqlite_open(out, loop, pool, u->path, flags);
        break;
    case TU_FS:
        rc = kv_fs_open(out, loop, pool, u->path, 0, flags);
        break;
    case TU_REDIS:
        rc = kv_redis_open(out, loop, pool, u->path, flags);
        break;
    default:
        snprintf(err, errlen, "%s: not a kvstore backend",
                 tu_backend_name(u->kind));
        return KV_EINVAL;
    }
    if (rc != KV_OK) {
        const char *m = kv_last_errmsg();
        char shown[1024];
        snprintf(err, errlen, "cannot open %s store%s%s: %s%s%s",
                 tu_backend_name(u->kind), u->path ? " " : "",
                 u->path ? tu_uri_shown(u->path, shown, sizeof shown) : "",
                 kv_strerror(rc), *m ? ": " : "", m);
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Numbers                                                                  */
/* ------------------------------------------------------------------------ */

int tu_parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int tu_parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* A number (possibly fractional) followed by a suffix; returns the suffix. */
static int split_num(const char *s, double *num, const char **suffix)
{
    if (!s || !((*s >= '0' && *s <= '9') || *s == '.'))
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    *num = v;
    *suffix = end;
    return 0;
}

static int lower_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char c = *a;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != *b)
            return 0;
    }
    return *a == *b;
}

static int scaled(double v, double mul, uint64_t *out)
{
    double r = v * mul;
    if (r > 18446744073709549568.0 || r != floor(r))
        return -1;
    *out = (uint64_t)r;
    return 0;
}

int tu_parse_count(const char *s, uint64_t *out)
{
    double v;
    const char *suf;
    if (split_num(s, &v, &suf))
        return -1;
    double mul = 1;
    if (!*suf)
        mul = 1;
    else if (lower_eq(suf, "k"))
        mul = 1e3;
    else if (lower_eq(suf, "m"))
        mul = 1e6;
    else if (lower_eq(suf, "g"))
        mul = 1e9;
    else
        return -1;
    return scaled(v, mul, out);
}

int tu_parse_size(const char *s, uint64_t *out)
{
    double v;
    const char *suf;
    if (split_num(s, &v, &suf))
        return -1;
    static const struct {
        const char *s;
        double mul;
    } t[] = {{"", 1},          {"b", 1},          {"k", 1024.0},
             {"kb", 1024.0},   {"kib", 1024.0},   {"m", 1048576.0},
             {"mb", 1048576.0}, {"mib", 1048576.0}, {"g", 1073741824.0},
             {"gb", 1073741824.0}, {"gib", 1073741824.0}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (lower_eq(suf, t[i].s))
            return scaled(v, t[i].mul, out);
    return -1;
}

int tu_parse_duration(const char *s, uint64_t *out_ns)
{
    double v;
    const char *suf;
    if (split_num(s, &v, &suf))
        return -1;
    double mul;
    if (!*suf || lower_eq(suf, "s"))
        mul = 1e9;
    else if (lower_eq(suf, "ms"))
        mul = 1e6;
    else if (lower_eq(suf, "us"))
        mul = 1e3;
    else if (lower_eq(suf, "m"))
        mul = 60e9;
    else if (lower_eq(suf, "h"))
        mul = 3600e9;
    else
        return -1;
    double r = floor(v * mul + 0.5);
    if (r > 1e18)
        return -1;
    *out_ns = (uint64_t)r;
    return 0;
}

uint64_t tu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t tu_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* base64                                                                   */
/* ------------------------------------------------------------------------ */

static const char b64_alpha[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t tu_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void tu_b64_encode(char *dst, const void *src, size_t n)
{
    const unsigned char *s = src;
    size_t i = 0;
    char *d = dst;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *d++ = b64_alpha[v >> 18];
        *d++ = b64_alpha[(v >> 12) & 63];
        *d++ = b64_alpha[(v >> 6) & 63];
        *d++ = b64_alpha[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *d++ = b64_alpha[v >> 18];
        *d++ = b64_alpha[(v >> 12) & 63];
        *d++ = '=';
        *d++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *d++ = b64_alpha[v >> 18];
        *d++ = b64_alpha[(v >> 12) & 63];
        *d++ = b64_alpha[(v >> 6) & 63];
        *d++ = '=';
    }
    *d = '\0';
}

static int b64_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long tu_b64_decode(unsigned char *dst, const char *src, size_t len,
                   size_t *bad)
{
    if (len % 4 != 0) {
        *bad = len;
        return -1;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = src[i + (size_t)k];
            if (c == '=' && i + 4 == len && k >= 2) {
                /* '=' only in the last group, positions 2-3, and "x=" only
                   when followed by '=' too. */
                if (k == 2 && src[i + 3] != '=') {
                    *bad = i + (size_t)k;
                    return -1;
                }
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad) {
                *bad = i + (size_t)k;
                return -1;
            }
            v[k] = b64_val(c);
            if (v[k] < 0) {
                *bad = i + (size_t)k;
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                     (uint32_t)v[2] << 6 | (uint32_t)v[3];
        dst[o++] = (unsigned char)(w >> 16);
        if (pad < 2)
            dst[o++] = (unsigned char)(w >> 8);
        if (pad < 1)
            dst[o++] = (unsigned char)w;
    }
    return (long)o;
}

/* ------------------------------------------------------------------------ */
/* JSON strings                                                             */
/* ------------------------------------------------------------------------ */

bool tu_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + need >= n)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += need + 1;
    }
    return true;
}

void tu_json_str(FILE *f, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    putc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        default:
            if (c < 0x20 || c == 0x7F) {
                fputs("\\u00", f);
                putc(hex[c >> 4], f);
                putc(hex[c & 15], f);
            } else {
                putc((int)c, f);
            }
        }
    }
    putc('"', f);
}

int tu_sbuf_put(tu_sbuf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void tu_sbuf_free(tu_sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------------ */
/* JSON lines (kvctl load)                                                  */
/* ------------------------------------------------------------------------ */

typedef struct jp {
    const char *s;
    size_t n, i;
    char err[160];
} jp;

static void jp_ws(jp *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' ||
                           p->s[p->i] == '\r' || p->s[p->i] == '\n'))
        p->i++;
}

static int jp_fail(jp *p, const char *msg)
{
    if (!p->err[0])
        snprintf(p->err, sizeof p->err, "%s", msg);
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int jp_hex4(jp *p, unsigned *out)
{
    if (p->n - p->i < 4)
        return jp_fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->i + (size_t)k]);
        if (h < 0)
            return jp_fail(p, "bad \\u escape");
        v = v << 4 | (unsigned)h;
    }
    p->i += 4;
    *out = v;
    return 0;
}

static int put_utf8(tu_sbuf *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return tu_sbuf_put(b, u, n);
}

/* A JSON string into out (decoded, NUL-terminated; may hold NULs). */
static int jp_string(jp *p, tu_sbuf *out)
{
    out->len = 0;
    if (tu_sbuf_put(out, "", 0))
        return jp_fail(p, "out of memory");
    if (p->i >= p->n || p->s[p->i] != '"')
        return jp_fail(p, "expected a string");
    p->i++;
    for (;;) {
        if (p->i >= p->n)
            return jp_fail(p, "unterminated string");
        unsigned char ch = (unsigned char)p->s[p->i];
        if (ch == '"') {
            p->i++;
            return 0;
        }
        if (ch < 0x20)
            return jp_fail(p, "control character in a string");
        if (ch != '\\') {
            size_t st = p->i;
            while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' &&
                   (unsigned char)p->s[p->i] >= 0x20)
                p->i++;
            if (!tu_utf8_valid(p->s + st, p->i - st))
                return jp_fail(p, "string is not valid UTF-8");
            if (tu_sbuf_put(out, p->s + st, p->i - st))
                return jp_fail(p, "out of memory");
            continue;
        }
        p->i++;
        if (p->i >= p->n)
            return jp_fail(p, "unterminated escape");
        char e = p->s[p->i++];
        char lit = 0;
        switch (e) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': {
            unsigned cp;
            if (jp_hex4(p, &cp))
                return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return jp_fail(p, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->n - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
                    return jp_fail(p, "high surrogate without a low one");
                p->i += 2;
                if (jp_hex4(p, &lo))
                    return -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return jp_fail(p, "bad surrogate pair");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (put_utf8(out, cp))
                return jp_fail(p, "out of memory");
            continue;
        }
        default: return jp_fail(p, "bad escape in a string");
        }
        if (tu_sbuf_put(out, &lit, 1))
            return jp_fail(p, "out of memory");
    }
}

static int jp_skip(jp *p, int depth);

static int jp_skip_lit(jp *p, const char *lit)
{
    size_t n = strlen(lit);
    if (p->n - p->i < n || memcmp(p->s + p->i, lit, n) != 0)
        return jp_fail(p, "unexpected character");
    p->i += n;
    return 0;
}

static int jp_number(jp *p, bool *is_uint, uint64_t *u)
{
    size_t st = p->i;
    bool neg = false, frac = false;
    if (p->i < p->n && p->s[p->i] == '-') {
        neg = true;
        p->i++;
    }
    size_t ds = p->i;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
        p->i++;
    if (p->i == ds)
        return jp_fail(p, "bad number");
    if (p->i - ds > 1 && p->s[ds] == '0')
        return jp_fail(p, "leading zero in a number");
    size_t de = p->i;
    if (p->i < p->n && p->s[p->i] == '.') {
        frac = true;
        p->i++;
        size_t fs = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
        if (p->i == fs)
            return jp_fail(p, "bad number");
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        frac = true;
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
            p->i++;
        size_t es = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
            p->i++;
        if (p->i == es)
            return jp_fail(p, "bad number");
    }
    *is_uint = false;
    if (!neg && !frac && de - ds <= 20) {
        char buf[24];
        memcpy(buf, p->s + ds, de - ds);
        buf[de - ds] = '\0';
        *is_uint = tu_parse_u64(buf, u) == 0;
    }
    (void)st;
    return 0;
}

static int jp_skip(jp *p, int depth)
{
    if (depth > 64)
        return jp_fail(p, "nesting too deep");
    jp_ws(p);
    if (p->i >= p->n)
        return jp_fail(p, "expected a value");
    char ch = p->s[p->i];
    tu_sbuf tmp = {0};
    int rc = 0;
    if (ch == '"') {
        rc = jp_string(p, &tmp);
    } else if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        p->i++;
        jp_ws(p);
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
        } else {
            for (;;) {
                if (ch == '{') {
                    jp_ws(p);
                    if ((rc = jp_string(p, &tmp)))
                        break;
                    jp_ws(p);
                    if (p->i >= p->n || p->s[p->i] != ':') {
                        rc = jp_fail(p, "expected ':'");
                        break;
                    }
                    p->i++;
                }
                if ((rc = jp_skip(p, depth + 1)))
                    break;
                jp_ws(p);
                if (p->i < p->n && p->s[p->i] == ',') {
                    p->i++;
                    continue;
                }
                if (p->i < p->n && p->s[p->i] == close) {
                    p->i++;
                    break;
                }
                rc = jp_fail(p, ch == '{' ? "expected ',' or '}'" : "expected ',' or ']'");
                break;
            }
        }
    } else if (ch == 't') {
        rc = jp_skip_lit(p, "true");
    } else if (ch == 'f') {
        rc = jp_skip_lit(p, "false");
    } else if (ch == 'n') {
        rc = jp_skip_lit(p, "null");
    } else {
        bool u;
        uint64_t v;
        rc = jp_number(p, &u, &v);
    }
    tu_sbuf_free(&tmp);
    return rc;
}


static int parse_line(jp *p, tu_jrec *r)
{
    tu_sbuf s = {0};
    int rc = -1;
    r->has_key = r->has_val = r->has_tok = false;
    free(r->val);
    r->val = NULL;
    r->len = 0;
    jp_ws(p);
    if (p->i >= p->n || p->s[p->i] != '{') {
        jp_fail(p, "expected '{'");
        goto out;
    }
    p->i++;
    jp_ws(p);
    if (p->i < p->n && p->s[p->i] == '}') {
        p->i++;
    } else {
        for (;;) {
            jp_ws(p);
            size_t name_at = p->i;
            if (jp_string(p, &s))
                goto out;
            char name[16];
            snprintf(name, sizeof name, "%s", strlen(s.p) == s.len ? s.p : "");
            jp_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                jp_fail(p, "expected ':'");
                goto out;
            }
            p->i++;
            jp_ws(p);
            if (!strcmp(name, "key") || !strcmp(name, "key_base64")) {
                if (r->has_key) {
                    p->i = name_at;
                    jp_fail(p, "the key is given twice");
                    goto out;
                }
                if (jp_string(p, &r->key))
                    goto out;
                if (name[3] == '_') {
                    unsigned char *d = malloc(r->key.len / 4 * 3 + 1);
                    size_t bad;
                    long n = d ? tu_b64_decode(d, r->key.p, r->key.len, &bad) : -1;
                    if (n < 0) {
                        free(d);
                        jp_fail(p, d ? "key_base64 is not valid base64" : "out of memory");
                        goto out;
                    }
                    r->key.len = 0;
                    if (tu_sbuf_put(&r->key, d, (size_t)n)) {
                        free(d);
                        jp_fail(p, "out of memory");
                        goto out;
                    }
                    free(d);
                }
                r->has_key = true;
            } else if (!strcmp(name, "value")) {
                if (r->has_val) {
                    p->i = name_at;
                    jp_fail(p, "the value is given twice");
                    goto out;
                }
                size_t at = p->i;
                if (jp_string(p, &s))
                    goto out;
                r->val = malloc(s.len / 4 * 3 + 1);
                if (!r->val) {
                    jp_fail(p, "out of memory");
                    goto out;
                }
                size_t bad;
                long n = tu_b64_decode(r->val, s.p, s.len, &bad);
                if (n < 0) {
                    p->i = at + 1 + (bad < s.len ? bad : s.len);
                    jp_fail(p, bad < s.len ? "value: invalid base64 character"
                                           : "value: base64 length is not a multiple of 4");
                    goto out;
                }
                r->len = (size_t)n;
                r->has_val = true;
            } else if (!strcmp(name, "token")) {
                bool u;
                uint64_t v;
                size_t at = p->i;
                if (p->i < p->n && p->s[p->i] == 'n') { /* null */
                    if (jp_skip_lit(p, "null"))
                        goto out;
                } else {
                    if (jp_number(p, &u, &v))
                        goto out;
                    if (!u) {
                        p->i = at;
                        jp_fail(p, "token must be a non-negative integer");
                        goto out;
                    }
                }
                r->has_tok = true;
            } else if (jp_skip(p, 1)) {
                goto out;
            }
            jp_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->n && p->s[p->i] == '}') {
                p->i++;
                break;
            }
            jp_fail(p, "expected ',' or '}'");
            goto out;
        }
    }
    jp_ws(p);
    if (p->i != p->n) {
        jp_fail(p, "trailing characters after the object");
        goto out;
    }
    if (!r->has_key) {
        jp_fail(p, "missing \"key\"");
        goto out;
    }
    if (!r->has_val) {
        jp_fail(p, "missing \"value\"");
        goto out;
    }
    if (strlen(r->key.p) != r->key.len) {
        jp_fail(p, "the key contains a NUL byte");
        goto out;
    }
    rc = 0;
out:
    tu_sbuf_free(&s);
    return rc;
}

bool tu_jl_blank(const char *line, size_t n)
{
    jp p = {line, n, 0, ""};
    jp_ws(&p);
    return p.i == p.n;
}

int tu_jl_parse(const char *line, size_t n, tu_jrec *r, size_t *err_at,
                char *err, size_t errlen)
{
    jp p = {line, n, 0, ""};
    int rc = parse_line(&p, r);
    if (rc != 0) {
        if (err_at != NULL)
            *err_at = p.i;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s", p.err[0] ? p.err : "malformed line");
    }
    return rc;
}

void tu_jrec_free(tu_jrec *r)
{
    free(r->val);
    tu_sbuf_free(&r->key);
    memset(r, 0, sizeof *r);
}
