/*
 * uri.c - the Redis backend's URI parser:
 *
 *   redis[s]://[user[:password]@]host[:port][,host[:port]...][/prefix]
 *              [?option[&option...]]
 *
 * host: a DNS name, an IPv4 literal or a bracketed IPv6 literal; user and
 * password percent-decoded (so '@', ':', '/' and '%' can be written);
 * options shard=key|store, timeout=MS, password_file=PATH, cacert=PATH,
 * cert=PATH, key=PATH, sni=NAME, verify=1|0 (values percent-decoded).
 * No message ever quotes the URI (it may hold a password): only the field
 * at fault, and never the user-info part.
 */
#include "backend/redis/redis_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define URI_MAX 65536    /* the whole URI */
#define USER_MAX 256     /* a decoded user name */
#define PASS_MAX 512     /* a decoded password */
#define HOST_MAX 253     /* a DNS name (RFC 1035) */
#define HOSTS_MAX 64     /* seeds */
#define PREFIX_MAX 256   /* the key prefix */
#define OPTVAL_MAX 4096  /* a decoded option value (a path) */

static void wipe_free(char *p)
{
    if (p != NULL) {
        explicit_bzero(p, strlen(p));
        kv__free(p);
    }
}

void redis__uri_free(ruri *u)
{
    wipe_free(u->user);
    wipe_free(u->pass);
    kv__free(u->hosts);
    kv__free(u->prefix);
    kv__free(u->password_file);
    kv__free(u->cacert);
    kv__free(u->cert);
    kv__free(u->key);
    kv__free(u->sni);
    memset(u, 0, sizeof *u);
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

/* Percent-decode n bytes at p into a new string of at most max bytes: its
 * status (KV_EINVAL with a message naming what, never the text). */
static int decode(const char *p, size_t n, size_t max, const char *what,
                  char **out)
{
    *out = NULL;
    char *d = kv__malloc(n + 1);
    if (d == NULL)
        return KV_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '%') {
            int h = i + 2 < n ? hexval(p[i + 1]) : -1;
            int l = i + 2 < n ? hexval(p[i + 2]) : -1;
            if (h < 0 || l < 0 || (h == 0 && l == 0)) {
                explicit_bzero(d, o);
                kv__free(d);
                kv__set_errmsg("kv_redis_open: bad percent escape in the "
                               "URI's %s (%%XX, two hex digits, not %%00)",
                               what);
                return KV_EINVAL;
            }
            c = (char)(h * 16 + l);
            i += 2;
        } else if ((unsigned char)c < 0x21 || c == 0x7f) {
            explicit_bzero(d, o);
            kv__free(d);
            kv__set_errmsg("kv_redis_open: a control character or space in "
                           "the URI's %s (percent-encode it)",
                           what);
            return KV_EINVAL;
        }
        d[o++] = c;
    }
    d[o] = '\0';
    if (o > max) {
        explicit_bzero(d, o);
        kv__free(d);
        kv__set_errmsg("kv_redis_open: the URI's %s is too long (at most "
                       "%zu bytes)",
                       what, max);
        return KV_EINVAL;
    }
    *out = d;
    return KV_OK;
}

static bool name_ok(const char *h, size_t n)
{
    if (n == 0 || n > HOST_MAX || h[0] == '-' || h[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

/* One "host[:port]" of n bytes at p into h. */
static int parse_host(const char *p, size_t n, ruri_host *h)
{
    const char *hp = p, *port = NULL;
    size_t hl;
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL) {
            kv__set_errmsg("kv_redis_open: an IPv6 literal without its "
                           "closing ']' in the URI's host list");
            return KV_EINVAL;
        }
        hp = p + 1;
        hl = (size_t)(close - hp);
        char a[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        if (hl == 0 || hl >= sizeof a) {
            kv__set_errmsg("kv_redis_open: a bad IPv6 literal in the URI's "
                           "host list");
            return KV_EINVAL;
        }
        memcpy(a, hp, hl);
        a[hl] = '\0';
        if (inet_pton(AF_INET6, a, &a6) != 1) {
            kv__set_errmsg("kv_redis_open: [%s] is not an IPv6 address", a);
            return KV_EINVAL;
        }
        const char *after = close + 1;
        if (after < p + n) {
            if (*after != ':') {
                kv__set_errmsg("kv_redis_open: ':port' or nothing must "
                               "follow [%s]",
                               a);
                return KV_EINVAL;
            }
            port = after + 1;
        }
        h->v6 = true;
    } else {
        const char *colon = memchr(p, ':', n);
        hl = colon != NULL ? (size_t)(colon - p) : n;
        if (colon != NULL) {
            if (memchr(colon + 1, ':', (size_t)(p + n - colon - 1)) != NULL) {
                kv__set_errmsg("kv_redis_open: an IPv6 literal in the URI "
                               "must be bracketed: [addr]:port");
                return KV_EINVAL;
            }
            port = colon + 1;
        }
        if (!name_ok(hp, hl)) {
            kv__set_errmsg("kv_redis_open: bad host %.*s in the URI (a DNS "
                           "name of at most %d characters [A-Za-z0-9.-_], an "
                           "IPv4 address or a bracketed IPv6 address)",
                           hl > 80 ? 80 : (int)hl, hp, HOST_MAX);
            return KV_EINVAL;
        }
    }
    memcpy(h->host, hp, hl);
    h->host[hl] = '\0';
    h->port = 6379;
    if (port != NULL) {
        size_t pl = (size_t)(p + n - port);
        long v = 0;
        bool ok = pl > 0 && pl <= 5;
        for (size_t i = 0; ok && i < pl; i++) {
            ok = port[i] >= '0' && port[i] <= '9';
            v = v * 10 + (port[i] - '0');
        }
        if (!ok || v < 1 || v > 65535) {
            kv__set_errmsg("kv_redis_open: bad port for %s in the URI "
                           "(1 to 65535)",
                           h->host);
            return KV_EINVAL;
        }
        h->port = (int)v;
    }
    return KV_OK;
}

/* name=value option of n bytes at p. */
static int parse_option(ruri *u, const char *p, size_t n)
{
    static const char *const known = "shard=key|store, timeout=MS, "
                                     "password_file=PATH, cacert=PATH, "
                                     "cert=PATH, key=PATH, sni=NAME, "
                                     "verify=1|0";
    const char *eq = memchr(p, '=', n);
    size_t nl = eq != NULL ? (size_t)(eq - p) : n;
    /* an option's name is shown only if it looks like one: a malformed
     * URI can put its user-info (a password) where options are */
    bool plain = nl > 0 && nl <= 32;
    for (size_t i = 0; plain && i < nl; i++)
        plain = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
                (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-';
    int show = plain ? (int)nl : 9;
    const char *shown = plain ? p : "(a name with characters no option "
                                    "has: not shown)";
    if (!plain)
        show = (int)strlen(shown);
    char *v = NULL;
    int rc;
    if (eq == NULL) {
        kv__set_errmsg("kv_redis_open: URI option %.*s has no value (%s)",
                       show, shown, known);
        return KV_EINVAL;
    }
#define NAME_IS(s) (nl == sizeof(s) - 1 && memcmp(p, s, nl) == 0)
    bool path = NAME_IS("password_file") || NAME_IS("cacert") ||
                NAME_IS("cert") || NAME_IS("key") || NAME_IS("sni");
    bool other = NAME_IS("shard") || NAME_IS("timeout") || NAME_IS("verify");
    if (!path && !other) {
        kv__set_errmsg("kv_redis_open: unknown URI option %.*s (%s)", show,
                       shown, known);
        return KV_EINVAL;
    }
    char what[32];
    snprintf(what, sizeof what, "option %.*s", show, p);
    rc = decode(eq + 1, n - nl - 1, NAME_IS("sni") ? HOST_MAX : OPTVAL_MAX,
                what, &v);
    if (rc != KV_OK)
        return rc;
    if (path && v[0] == '\0') {
        kv__free(v);
        kv__set_errmsg("kv_redis_open: URI option %.*s is empty", show, p);
        return KV_EINVAL;
    }
    char **slot = NAME_IS("password_file") ? &u->password_file
                  : NAME_IS("cacert")      ? &u->cacert
                  : NAME_IS("cert")        ? &u->cert
                  : NAME_IS("key")         ? &u->key
                  : NAME_IS("sni")         ? &u->sni
                                           : NULL;
    if (slot != NULL) {
        if (NAME_IS("sni") && !name_ok(v, strlen(v))) {
            kv__free(v);
            kv__set_errmsg("kv_redis_open: bad sni= (a DNS name)");
            return KV_EINVAL;
        }
        kv__free(*slot);
        *slot = v;
        return KV_OK;
    }
    rc = KV_OK;
    if (NAME_IS("shard")) {
        if (strcmp(v, "key") == 0 || strcmp(v, "store") == 0) {
            u->keymode = strcmp(v, "key") == 0;
        } else {
            kv__set_errmsg("kv_redis_open: bad shard= (key or store)");
            rc = KV_EINVAL;
        }
    } else if (NAME_IS("timeout")) {
        char *end = NULL;
        errno = 0;
        unsigned long t = v[0] >= '0' && v[0] <= '9' ? strtoul(v, &end, 10)
                                                     : 0;
        if (end == NULL || *end != '\0' || errno != 0 || t > 3600000) {
            kv__set_errmsg("kv_redis_open: bad timeout= (milliseconds, 0 to "
                           "3600000)");
            rc = KV_EINVAL;
        } else {
            u->timeout_ms = (unsigned)t;
        }
    } else { /* verify */
        if (strcmp(v, "1") == 0 || strcmp(v, "0") == 0) {
            u->verify = v[0] == '1';
        } else {
            kv__set_errmsg("kv_redis_open: bad verify= (1 or 0)");
            rc = KV_EINVAL;
        }
    }
#undef NAME_IS
    kv__free(v);
    return rc;
}

int redis__uri_parse(ruri *u, const char *uri)
{
    memset(u, 0, sizeof *u);
    u->keymode = true;
    u->timeout_ms = TIMEOUT_DEFAULT_MS;
    u->verify = true;
    int rc = KV_EINVAL;
    size_t total = strnlen(uri, URI_MAX + 1);
    const char *p;
    if (total > URI_MAX) {
        kv__set_errmsg("kv_redis_open: the URI is longer than %d bytes",
                       URI_MAX);
        goto fail;
    }
    if (strncmp(uri, "redis://", 8) == 0) {
        p = uri + 8;
    } else if (strncmp(uri, "rediss://", 9) == 0) {
        p = uri + 9;
        u->tls = true;
    } else {
        kv__set_errmsg("kv_redis_open: the URI must start with redis:// or "
                       "rediss://");
        goto fail;
    }
    size_t al = strcspn(p, "/?#");
    const char *rest = p + al;
    /* user-info: up to the last '@' of the authority */
    const char *at = NULL;
    for (const char *q = p; q < p + al; q++)
        if (*q == '@')
            at = q;
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ul = colon != NULL ? (size_t)(colon - p) : (size_t)(at - p);
        if (ul > 0 && (rc = decode(p, ul, USER_MAX, "user name",
                                   &u->user)) != KV_OK)
            goto fail;
        if (colon != NULL &&
            (rc = decode(colon + 1, (size_t)(at - colon - 1), PASS_MAX,
                         "password", &u->pass)) != KV_OK)
            goto fail;
        if (u->pass != NULL && u->pass[0] == '\0') {
            kv__free(u->pass);
            u->pass = NULL;
        }
        rc = KV_EINVAL;
        al -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    /* hosts */
    for (const char *h = p; h < p + al;) {
        size_t l = strcspn(h, ",/?#");
        if (l > (size_t)(p + al - h))
            l = (size_t)(p + al - h);
        if (l == 0) {
            kv__set_errmsg("kv_redis_open: an empty host in the URI's host "
                           "list");
            goto fail;
        }
        if (u->nhosts == HOSTS_MAX) {
            kv__set_errmsg("kv_redis_open: more than %d hosts in the URI",
                           HOSTS_MAX);
            goto fail;
        }
        if (u->nhosts % 8 == 0) {
            ruri_host *nh =
                kv__realloc(u->hosts, (u->nhosts + 8) * sizeof *nh);
            if (nh == NULL) {
                rc = KV_ENOMEM;
                goto fail;
            }
            u->hosts = nh;
        }
        ruri_host *hh = &u->hosts[u->nhosts];
        memset(hh, 0, sizeof *hh);
        if ((rc = parse_host(h, l, hh)) != KV_OK)
            goto fail;
        rc = KV_EINVAL;
        u->nhosts++;
        h += l;
        if (h < p + al && *h == ',') {
            h++;
            if (h == p + al) {
                kv__set_errmsg("kv_redis_open: an empty host in the URI's "
                               "host list");
                goto fail;
            }
        }
    }
    if (u->nhosts == 0) {
        kv__set_errmsg("kv_redis_open: no host in the URI");
        goto fail;
    }
    /* the prefix */
    const char *pre = "kv";
    size_t pl = 2;
    if (*rest == '/') {
        rest++;
        size_t l = strcspn(rest, "?#");
        if (l > 0) {
            pre = rest;
            pl = l;
        }
        rest += l;
    }
    if (pl > PREFIX_MAX) {
        kv__set_errmsg("kv_redis_open: the URI's key prefix is longer than "
                       "%d characters",
                       PREFIX_MAX);
        goto fail;
    }
    bool digits = true;
    for (size_t i = 0; i < pl; i++) {
        char ch = pre[i];
        digits = digits && ch >= '0' && ch <= '9';
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
              ch == '.' || ch == ':')) {
            kv__set_errmsg("kv_redis_open: the URI's key prefix may hold "
                           "only [A-Za-z0-9_.:-]");
            goto fail;
        }
    }
    if (digits) {
        kv__set_errmsg("kv_redis_open: the URI's path /%.*s is the store's "
                       "key prefix, not a database number (a Redis Cluster "
                       "has only database 0, which is used); choose a "
                       "prefix that is not only digits",
                       (int)pl, pre);
        goto fail;
    }
    u->prefix = kv__strndup(pre, pl);
    if (u->prefix == NULL) {
        rc = KV_ENOMEM;
        goto fail;
    }
    /* options */
    if (*rest == '?') {
        rest++;
        while (*rest != '\0') {
            size_t ol = strcspn(rest, "&#");
            if (ol == 0) {
                kv__set_errmsg("kv_redis_open: an empty URI option");
                goto fail;
            }
            if ((rc = parse_option(u, rest, ol)) != KV_OK)
                goto fail;
            rc = KV_EINVAL;
            rest += ol;
            if (*rest == '#')
                break;
            if (*rest == '&' && *++rest == '\0') {
                kv__set_errmsg("kv_redis_open: an empty URI option");
                goto fail;
            }
        }
    }
    if (*rest != '\0') {
        kv__set_errmsg("kv_redis_open: unexpected text after the URI's %s "
                       "(a '#' fragment has no meaning here)",
                       *rest == '#' ? "path or options" : "path");
        goto fail;
    }
    if (u->pass != NULL && u->password_file != NULL) {
        kv__set_errmsg("kv_redis_open: a password in the URI and "
                       "password_file= both given: use one");
        goto fail;
    }
    if (!u->tls && (u->cacert || u->cert || u->key || u->sni || !u->verify)) {
        kv__set_errmsg("kv_redis_open: cacert=, cert=, key=, sni= and "
                       "verify= apply to TLS only (rediss://)");
        goto fail;
    }
    if ((u->cert == NULL) != (u->key == NULL)) {
        kv__set_errmsg("kv_redis_open: cert= and key= go together (a client "
                       "certificate and its private key)");
        goto fail;
    }
    return KV_OK;
fail:
    redis__uri_free(u);
    return rc;
}

int redis__uri_read_password(ruri *u)
{
    if (u->password_file == NULL)
        return KV_OK;
    int fd;
    do
        fd = open(u->password_file, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        kv__set_errmsg("kv_redis_open: cannot open password_file %s: %s",
                       u->password_file, strerror(errno));
        return KV_EINVAL;
    }
    char buf[PASS_MAX + 2];
    size_t len = 0;
    int err = 0;
    while (len < sizeof buf) {
        ssize_t r = read(fd, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            err = errno;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(buf, '\n', len) != NULL)
            break;
    }
    close(fd);
    int rc = KV_OK;
    char *nl = memchr(buf, '\n', len);
    size_t pl = nl != NULL ? (size_t)(nl - buf) : len;
    if (pl > 0 && buf[pl - 1] == '\r')
        pl--;
    if (err != 0) {
        kv__set_errmsg("kv_redis_open: cannot read password_file %s: %s",
                       u->password_file, strerror(err));
        rc = KV_EINVAL;
    } else if (pl == 0) {
        kv__set_errmsg("kv_redis_open: password_file %s: the first line is "
                       "empty",
                       u->password_file);
        rc = KV_EINVAL;
    } else if (pl > PASS_MAX || memchr(buf, '\0', pl) != NULL) {
        kv__set_errmsg("kv_redis_open: password_file %s: the first line is "
                       "not a password (over %d bytes, or a NUL byte)",
                       u->password_file, PASS_MAX);
        rc = KV_EINVAL;
    } else if ((u->pass = kv__strndup(buf, pl)) == NULL) {
        rc = KV_ENOMEM;
    }
    explicit_bzero(buf, sizeof buf);
    return rc;
}
