/*
 * key.c - namespaces and keys.
 *
 * A kv_key is one heap block, immutable after construction:
 *
 *   struct kv_key | kv_ns ns[n] | id "/f:v/x" NUL | f NUL v NUL | ...
 *
 * Every ns[i].field / ns[i].value points into the same block (field is ""
 * when absent), so a key is made with one allocation, freed with one free,
 * and kv_key_id / kv_key_hash are O(1).  Every constructor funnels into
 * key_build() with already validated and stripped spans ("parts").
 *
 * Canonical form: the id is "/" for the empty key, else "/" + ns id joined
 * by "/", where a ns id is "field:value" or "value".  Fields and values hold
 * no ':' or '/' and no surrounding whitespace.  A value may be empty when
 * there is a field ("f:"); the empty namespace (no field, no value, id "")
 * is never part of a key: every constructor drops it, as parsing drops an
 * empty segment.  So every ns id in a key is non-empty, and parsing a key's
 * id gives the same key back.
 *
 * Whitespace is the C locale's isspace set (" \t\n\v\f\r"), tested by hand
 * so that keys do not depend on the process locale.  Every other byte
 * (0x01..0xFF) is allowed inside a field or value.
 *
 * Order: kv_key_cmp compares namespace ids one by one, a shorter id first
 * on a common prefix, a shorter key first.  That is memcmp order of the
 * storage encoding (each ns id followed by 0x00): ids contain no 0x00, and
 * 0x00 is below every byte.  In the id string, '/' plays the role of 0x00,
 * so the comparison walks the two ids mapping '/' to 0.
 */
#include "config.h"

#include "store/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct kv_key {
    size_t n;      /* number of namespaces */
    size_t size;   /* bytes in the whole block (kv_key_dup copies it) */
    size_t idlen;  /* strlen(id) */
    uint64_t hash; /* FNV-1a 64 of id */
    char *id;      /* canonical id, inside this block */
    kv_ns ns[];    /* n namespaces; their strings follow the id */
};

/* A validated, stripped namespace as two borrowed spans. */
typedef struct part {
    const char *f;
    size_t fl;
    const char *v;
    size_t vl;
} part;

/* Longest piece of user input quoted in an error message. */
#define QUOTE_MAX 200

/* ------------------------------------------------------------------------ */
/* Spans                                                                    */
/* ------------------------------------------------------------------------ */

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

static void strip(const char **s, size_t *len)
{
    const char *p = *s;
    size_t n = *len;
    while (n > 0 && is_ws((unsigned char)p[0])) {
        p++;
        n--;
    }
    while (n > 0 && is_ws((unsigned char)p[n - 1]))
        n--;
    *s = p;
    *len = n;
}

/* How many bytes of a len-byte string to quote in a message. */
static int quote_len(size_t len)
{
    return (int)(len > QUOTE_MAX ? QUOTE_MAX : len);
}

static const char *quote_more(size_t len)
{
    return len > QUOTE_MAX ? "..." : "";
}

/*
 * Parse the namespace id s[0..len) into *out (the empty namespace, both
 * spans empty, for "", ":" or whitespace).  With strict, the id must
 * already be canonical (no whitespace to strip, no ":" before an empty
 * field), as in stored encodings.  Returns NULL or why it is invalid.
 */
static const char *ns_span(const char *s, size_t len, bool strict, part *out)
{
    if (memchr(s, '/', len) != NULL)
        return "contains '/'";
    const char *colon = memchr(s, ':', len);
    part p;
    if (colon != NULL) {
        p.f = s;
        p.fl = (size_t)(colon - s);
        p.v = colon + 1;
        p.vl = len - p.fl - 1;
        if (memchr(p.v, ':', p.vl) != NULL)
            return "has more than one ':'";
    } else {
        p.f = s;
        p.fl = 0;
        p.v = s;
        p.vl = len;
    }
    part raw = p;
    strip(&p.f, &p.fl);
    strip(&p.v, &p.vl);
    if (strict && (p.fl != raw.fl || p.vl != raw.vl))
        return "has surrounding whitespace";
    if (strict && colon != NULL && p.fl == 0)
        return "has an empty field before ':'";
    *out = p;
    return NULL;
}

/*
 * Validate a separate field (may be NULL: none) and value as kv_ns_init
 * does, into stripped spans.  KV_OK, or KV_EINVAL with the message set.
 */
static int ns_parts(const char *field, const char *value, part *out)
{
    const char *what = NULL;
    const char *bad = NULL;
    if (value == NULL) {
        kv__set_errmsg("invalid namespace: value is NULL");
        return KV_EINVAL;
    }
    if (field == NULL)
        field = "";
    part p = {field, strlen(field), value, strlen(value)};
    if (memchr(p.f, ':', p.fl) != NULL || memchr(p.f, '/', p.fl) != NULL) {
        what = "field";
        bad = p.f;
    } else if (memchr(p.v, ':', p.vl) != NULL ||
               memchr(p.v, '/', p.vl) != NULL) {
        what = "value";
        bad = p.v;
    }
    if (what != NULL) {
        size_t bl = strlen(bad);
        kv__set_errmsg("invalid namespace %s \"%.*s%s\": contains ':' or '/'",
                       what, quote_len(bl), bad, quote_more(bl));
        return KV_EINVAL;
    }
    strip(&p.f, &p.fl);
    strip(&p.v, &p.vl);
    *out = p;
    return KV_OK;
}

/* The empty namespace: no field, no value.  Keys never hold it. */
static bool part_empty(const part *p)
{
    return p->fl == 0 && p->vl == 0;
}

static void part_of_ns(part *out, const kv_ns *ns)
{
    out->f = ns->field;
    out->fl = strlen(ns->field);
    out->v = ns->value;
    out->vl = strlen(ns->value);
}

/* ------------------------------------------------------------------------ */
/* A small array of parts, on the stack when short                          */
/* ------------------------------------------------------------------------ */

#define PARTS_INLINE 8

typedef struct parts {
    part *p;
    size_t n;
    part inl[PARTS_INLINE];
} parts;

static int parts_init(parts *ps, size_t cap)
{
    ps->n = 0;
    ps->p = ps->inl; /* parts_fini is safe on every path */
    if (cap <= PARTS_INLINE)
        return KV_OK;
    if (cap > SIZE_MAX / sizeof(part))
        return KV_ENOMEM;
    part *heap = kv__malloc(cap * sizeof(part));
    if (heap == NULL)
        return KV_ENOMEM;
    ps->p = heap;
    return KV_OK;
}

static void parts_fini(parts *ps)
{
    if (ps->p != ps->inl)
        kv__free(ps->p);
}

/* Append namespaces [start, end) of key. */
static void parts_add_key(parts *ps, const kv_key *key, size_t start,
                          size_t end)
{
    for (size_t i = start; i < end; i++)
        part_of_ns(&ps->p[ps->n++], &key->ns[i]);
}

static bool add_ok(size_t *acc, size_t x)
{
    if (x > SIZE_MAX - *acc)
        return false;
    *acc += x;
    return true;
}

/* ------------------------------------------------------------------------ */
/* The one constructor                                                      */
/* ------------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static char *put(char *dst, const char *src, size_t len)
{
    if (len > 0)
        memcpy(dst, src, len);
    return dst + len;
}

/* Make a key of n valid parts.  KV_OK or KV_ENOMEM; *out set on KV_OK. */
static int key_build(kv_key **out, const part *p, size_t n)
{
    size_t idlen = n == 0 ? 1 : 0; /* "/" for the empty key */
    size_t text = 0;               /* field NUL value NUL, per namespace */
    for (size_t i = 0; i < n; i++) {
        if (!add_ok(&idlen, 1 + p[i].vl) ||
            (p[i].fl > 0 && !add_ok(&idlen, p[i].fl + 1)) ||
            !add_ok(&text, p[i].fl) || !add_ok(&text, p[i].vl) ||
            !add_ok(&text, 2))
            return KV_ENOMEM;
    }
    size_t size = sizeof(kv_key);
    if (n > (SIZE_MAX - size) / sizeof(kv_ns))
        return KV_ENOMEM;
    size += n * sizeof(kv_ns);
    if (!add_ok(&size, idlen) || !add_ok(&size, 1) || !add_ok(&size, text))
        return KV_ENOMEM;

    kv_key *k = kv__malloc(size);
    if (k == NULL)
        return KV_ENOMEM;
    k->n = n;
    k->size = size;
    k->idlen = idlen;
    k->id = (char *)&k->ns[n];

    char *id = k->id;
    char *str = k->id + idlen + 1;
    if (n == 0)
        *id++ = '/';
    for (size_t i = 0; i < n; i++) {
        *id++ = '/';
        if (p[i].fl > 0) {
            id = put(id, p[i].f, p[i].fl);
            *id++ = ':';
        }
        id = put(id, p[i].v, p[i].vl);

        k->ns[i].field = str;
        str = put(str, p[i].f, p[i].fl);
        *str++ = '\0';
        k->ns[i].value = str;
        str = put(str, p[i].v, p[i].vl);
        *str++ = '\0';
    }
    *id = '\0';
    k->hash = fnv1a(k->id, k->idlen);
    *out = k;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Namespaces                                                               */
/* ------------------------------------------------------------------------ */

static int ns_make(kv_ns *out, const part *p)
{
    char *f = kv__strndup(p->f, p->fl);
    if (f == NULL)
        return KV_ENOMEM;
    char *v = kv__strndup(p->v, p->vl);
    if (v == NULL) {
        kv__free(f);
        return KV_ENOMEM;
    }
    out->field = f;
    out->value = v;
    return KV_OK;
}

int kv_ns_parse(kv_ns *out, const char *id)
{
    if (out == NULL || id == NULL) {
        kv__set_errmsg("invalid namespace: NULL argument");
        return KV_EINVAL;
    }
    size_t len = strlen(id);
    part p;
    const char *why = ns_span(id, len, false, &p);
    if (why != NULL) {
        kv__set_errmsg("invalid namespace \"%.*s%s\": %s", quote_len(len),
                       id, quote_more(len), why);
        return KV_EINVAL;
    }
    return ns_make(out, &p);
}

int kv_ns_init(kv_ns *out, const char *field, const char *value)
{
    if (out == NULL) {
        kv__set_errmsg("invalid namespace: NULL argument");
        return KV_EINVAL;
    }
    part p;
    int rc = ns_parts(field, value, &p);
    if (rc != KV_OK)
        return rc;
    return ns_make(out, &p);
}

void kv_ns_free(kv_ns *ns)
{
    if (ns == NULL)
        return;
    kv__free(ns->field);
    kv__free(ns->value);
    ns->field = NULL;
    ns->value = NULL;
}

char *kv_ns_id(const kv_ns *ns)
{
    if (ns == NULL)
        return NULL;
    const char *f = ns->field != NULL ? ns->field : "";
    const char *v = ns->value != NULL ? ns->value : "";
    if (f[0] == '\0')
        return kv__strdup(v);
    return kv__asprintf("%s:%s", f, v);
}

/* ------------------------------------------------------------------------ */
/* Constructors                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Append the namespaces of path to ps (which has room for every '/'-split
 * segment).  whole is the string quoted in messages.
 */
static int parse_into(parts *ps, const char *path, const char *whole)
{
    const char *s = path;
    for (;;) {
        const char *slash = strchr(s, '/');
        size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
        const char *seg = s;
        size_t segl = len;
        strip(&seg, &segl);
        if (segl > 0) {
            const char *why = ns_span(seg, segl, false, &ps->p[ps->n]);
            if (why != NULL) {
                size_t wl = strlen(whole);
                kv__set_errmsg("invalid key \"%.*s%s\": namespace \"%.*s%s\" %s",
                               quote_len(wl), whole, quote_more(wl),
                               quote_len(segl), seg, quote_more(segl),
                               why);
                return KV_EINVAL;
            }
            if (!part_empty(&ps->p[ps->n])) /* ":" adds nothing */
                ps->n++;
        }
        if (slash == NULL)
            return KV_OK;
        s = slash + 1;
    }
}

static size_t count_segments(const char *s)
{
    size_t n = 1;
    for (; *s != '\0'; s++)
        n += *s == '/';
    return n;
}

int kv_key_parse(kv_key **out, const char *path)
{
    if (out == NULL || path == NULL) {
        kv__set_errmsg("invalid key: NULL argument");
        return KV_EINVAL;
    }
    parts ps;
    int rc = parts_init(&ps, count_segments(path));
    if (rc == KV_OK)
        rc = parse_into(&ps, path, path);
    if (rc == KV_OK)
        rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

/* key's namespaces (key may be NULL: none) followed by n kv_ns. */
static int build_with_ns(kv_key **out, const kv_key *key, const kv_ns *ns,
                         size_t n)
{
    size_t base = key != NULL ? key->n : 0;
    if (n > SIZE_MAX - base)
        return KV_ENOMEM;
    parts ps;
    int rc = parts_init(&ps, base + n);
    if (rc != KV_OK)
        return rc;
    if (key != NULL)
        parts_add_key(&ps, key, 0, key->n);
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        rc = ns_parts(ns[i].field, ns[i].value, &ps.p[ps.n]);
        if (rc == KV_OK && !part_empty(&ps.p[ps.n]))
            ps.n++;
    }
    if (rc == KV_OK)
        rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

int kv_key_from_ns(kv_key **out, const kv_ns *ns, size_t n)
{
    if (out == NULL || (ns == NULL && n > 0))
        return KV_EINVAL;
    return build_with_ns(out, NULL, ns, n);
}

/* The concatenation of n keys. */
static int concat(kv_key **out, const kv_key *const *keys, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (keys[i] == NULL)
            return KV_EINVAL;
        if (!add_ok(&total, keys[i]->n))
            return KV_ENOMEM;
    }
    parts ps;
    int rc = parts_init(&ps, total);
    if (rc != KV_OK)
        return rc;
    for (size_t i = 0; i < n; i++)
        parts_add_key(&ps, keys[i], 0, keys[i]->n);
    rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

int kv_key_concat(kv_key **out, const kv_key *const *keys, size_t n)
{
    if (out == NULL || (keys == NULL && n > 0))
        return KV_EINVAL;
    return concat(out, keys, n);
}

int kv_key_dup(kv_key **out, const kv_key *key)
{
    if (out == NULL || key == NULL)
        return KV_EINVAL;
    kv_key *k = kv__malloc(key->size);
    if (k == NULL)
        return KV_ENOMEM;
    memcpy(k, key, key->size);
    /* Rebase the pointers into the new block. */
    const char *ob = (const char *)key;
    char *nb = (char *)k;
    k->id = nb + (key->id - ob);
    for (size_t i = 0; i < k->n; i++) {
        k->ns[i].field = nb + (key->ns[i].field - ob);
        k->ns[i].value = nb + (key->ns[i].value - ob);
    }
    *out = k;
    return KV_OK;
}

void kv_key_free(kv_key *key)
{
    kv__free(key);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

size_t kv_key_len(const kv_key *key)
{
    return key != NULL ? key->n : 0;
}

const kv_ns *kv_key_ns(const kv_key *key, size_t i)
{
    if (key == NULL || i >= key->n)
        return NULL;
    return &key->ns[i];
}

const char *kv_key_value(const kv_key *key)
{
    if (key == NULL || key->n == 0)
        return "";
    return key->ns[key->n - 1].value;
}

const char *kv_key_field(const kv_key *key)
{
    if (key == NULL || key->n == 0)
        return "";
    return key->ns[key->n - 1].field;
}

const char *kv_key_id(const kv_key *key)
{
    return key != NULL ? key->id : "";
}

static int slice(kv_key **out, const kv_key *key, size_t start, size_t end)
{
    parts ps;
    int rc = parts_init(&ps, end - start);
    if (rc != KV_OK)
        return rc;
    parts_add_key(&ps, key, start, end);
    rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

int kv_key_slice(kv_key **out, const kv_key *key, size_t start, size_t end)
{
    if (out == NULL || key == NULL || start > end || end > key->n)
        return KV_EINVAL;
    return slice(out, key, start, end);
}

/* ------------------------------------------------------------------------ */
/* Navigation and building                                                  */
/* ------------------------------------------------------------------------ */

bool kv_key_is_root(const kv_key *key)
{
    return key != NULL && key->n == 1;
}

int kv_key_parent(kv_key **out, const kv_key *key)
{
    if (out == NULL || key == NULL) {
        kv__set_errmsg("invalid key: NULL argument");
        return KV_EINVAL;
    }
    if (key->n < 2) {
        kv__set_errmsg("key \"%.*s%s\" has no parent (%s)",
                       quote_len(key->idlen), key->id, quote_more(key->idlen),
                       key->n == 0 ? "the empty key" : "a root key");
        return KV_EINVAL;
    }
    return slice(out, key, 0, key->n - 1);
}

int kv_key_path(kv_key **out, const kv_key *key)
{
    if (out == NULL || key == NULL) {
        kv__set_errmsg("invalid key: NULL argument");
        return KV_EINVAL;
    }
    if (key->n == 0) {
        kv__set_errmsg("the empty key has no path");
        return KV_EINVAL;
    }
    const kv_ns *last = &key->ns[key->n - 1];
    parts ps;
    int rc = parts_init(&ps, key->n);
    if (rc != KV_OK)
        return rc;
    parts_add_key(&ps, key, 0, key->n - 1);
    /* The field, or the value when there is no field, as a plain value:
     * non-empty (a key holds no empty namespace), stripped, no ':' or '/'. */
    const char *tail = last->field[0] != '\0' ? last->field : last->value;
    part *p = &ps.p[ps.n++];
    p->f = "";
    p->fl = 0;
    p->v = tail;
    p->vl = strlen(tail);
    rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

int kv_key_reverse(kv_key **out, const kv_key *key)
{
    if (out == NULL || key == NULL)
        return KV_EINVAL;
    parts ps;
    int rc = parts_init(&ps, key->n);
    if (rc != KV_OK)
        return rc;
    for (size_t i = key->n; i-- > 0;)
        part_of_ns(&ps.p[ps.n++], &key->ns[i]);
    rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

int kv_key_child(kv_key **out, const kv_key *key, const kv_ns *ns, size_t n)
{
    if (out == NULL || key == NULL || (ns == NULL && n > 0))
        return KV_EINVAL;
    return build_with_ns(out, key, ns, n);
}

int kv_key_child_key(kv_key **out, const kv_key *key, const kv_key *other)
{
    if (out == NULL || key == NULL || other == NULL)
        return KV_EINVAL;
    const kv_key *two[2] = {key, other};
    return concat(out, two, 2);
}

int kv_key_child_str(kv_key **out, const kv_key *key, const char *path)
{
    if (out == NULL || key == NULL || path == NULL) {
        kv__set_errmsg("invalid key: NULL argument");
        return KV_EINVAL;
    }
    size_t segs = count_segments(path);
    if (segs > SIZE_MAX - key->n)
        return KV_ENOMEM;
    parts ps;
    int rc = parts_init(&ps, key->n + segs);
    if (rc != KV_OK)
        return rc;
    parts_add_key(&ps, key, 0, key->n);
    rc = parse_into(&ps, path, path);
    if (rc == KV_OK)
        rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}

/* Fill buf with len bytes that are as random as the system allows. */
static void random_bytes(unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = getrandom(buf + got, len - got, 0);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            break; /* ENOSYS (old kernel), seccomp, ...: fall back */
    }
    if (got < len) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            while (got < len) {
                ssize_t r = read(fd, buf + got, len - got);
                if (r > 0)
                    got += (size_t)r;
                else if (r < 0 && errno == EINTR)
                    continue;
                else
                    break;
            }
            close(fd);
        }
    }
    if (got < len) {
        /* Last resort: not secure, but unique enough for names.  Mix the
         * time, the pid, an address and a process-wide counter through
         * splitmix64. */
        static atomic_uint_fast64_t counter;
        struct timespec ts = {0, 0};
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * UINT64_C(1000000000) +
                     (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)getpid() << 32;
        x ^= (uint64_t)(uintptr_t)buf;
        x += atomic_fetch_add(&counter, 1) * UINT64_C(0x9e3779b97f4a7c15);
        while (got < len) {
            x += UINT64_C(0x9e3779b97f4a7c15);
            uint64_t z = x;
            z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
            z ^= z >> 31;
            for (int i = 0; i < 8 && got < len; i++)
                buf[got++] = (unsigned char)(z >> (8 * i));
        }
    }
}

void kv_key_random(char out[25])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[12];
    if (out == NULL)
        return;
    int saved = errno;
    random_bytes(b, sizeof b);
    errno = saved;
    for (size_t i = 0; i < sizeof b; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 0xf];
    }
    out[24] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Relationships, order, hash                                               */
/* ------------------------------------------------------------------------ */

/* True if a's namespaces are the first of b's (a == b included). */
static bool is_prefix(const kv_key *a, const kv_key *b)
{
    if (a->n > b->n)
        return false;
    if (a->n == 0)
        return true;
    /* Canonical ids: a prefix by namespaces is a prefix of the id that
     * ends at a '/' or at the end of b's id. */
    return a->idlen <= b->idlen && memcmp(a->id, b->id, a->idlen) == 0 &&
           (b->id[a->idlen] == '/' || b->id[a->idlen] == '\0');
}

int kv_key_relative(kv_key **out, const kv_key *key, const kv_key *ancestor)
{
    if (out == NULL || key == NULL || ancestor == NULL)
        return KV_EINVAL;
    if (!is_prefix(ancestor, key)) {
        kv__set_errmsg("key \"%.*s%s\" is not below \"%.*s%s\"",
                       quote_len(key->idlen), key->id,
                       quote_more(key->idlen),
                       quote_len(ancestor->idlen), ancestor->id,
                       quote_more(ancestor->idlen));
        return KV_EINVAL;
    }
    return slice(out, key, ancestor->n, key->n);
}

bool kv_key_is_ancestor(const kv_key *key, const kv_key *other)
{
    return key != NULL && other != NULL && key->n < other->n &&
           is_prefix(key, other);
}

bool kv_key_is_descendant(const kv_key *key, const kv_key *other)
{
    return kv_key_is_ancestor(other, key);
}

bool kv_key_equal(const kv_key *a, const kv_key *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return a->idlen == b->idlen && a->hash == b->hash &&
           memcmp(a->id, b->id, a->idlen) == 0;
}

int kv_key_cmp(const kv_key *a, const kv_key *b)
{
    if (a == NULL || b == NULL)
        return a == b ? 0 : (a == NULL ? -1 : 1);
    /* Skip the leading '/'; the empty key's id then reads as "". */
    const unsigned char *x = (const unsigned char *)a->id + 1;
    const unsigned char *y = (const unsigned char *)b->id + 1;
    for (;; x++, y++) {
        unsigned cx = *x == '/' ? 0u : *x;
        unsigned cy = *y == '/' ? 0u : *y;
        if (*x == '\0' || *y == '\0') {
            /* A proper prefix (by bytes, hence by namespaces) first. */
            if (*x == '\0' && *y == '\0')
                return 0;
            return *x == '\0' ? -1 : 1;
        }
        if (cx != cy)
            return cx < cy ? -1 : 1;
    }
}

uint64_t kv_key_hash(const kv_key *key)
{
    return key != NULL ? key->hash : 0;
}

/* ------------------------------------------------------------------------ */
/* Storage encoding                                                         */
/* ------------------------------------------------------------------------ */

int kv__key_encode(const kv_key *key, kv_buf *out)
{
    if (key == NULL || out == NULL)
        return KV_EINVAL;
    if (key->n == 0)
        return KV_OK;
    /* id + 1 with its NUL is "a:b/c\0"; turn each '/' into 0x00. */
    size_t start = out->len;
    int rc = kv_buf_append(out, key->id + 1, key->idlen);
    if (rc != KV_OK)
        return rc;
    unsigned char *p = out->data + start;
    for (size_t i = 0; i < key->idlen; i++)
        if (p[i] == '/')
            p[i] = 0;
    return KV_OK;
}

int kv__key_decode(kv_key **out, const void *bytes, size_t len)
{
    if (out == NULL || (bytes == NULL && len > 0))
        return KV_EINVAL;
    const char *s = bytes;
    if (len > 0 && s[len - 1] != '\0')
        return KV_ECORRUPT;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += s[i] == '\0';
    parts ps;
    int rc = parts_init(&ps, n);
    if (rc != KV_OK)
        return rc;
    size_t i = 0;
    while (i < len) {
        const char *seg = s + i;
        size_t segl = strlen(seg); /* stops at a 0x00 inside len */
        if (segl == 0 ||
            ns_span(seg, segl, true, &ps.p[ps.n]) != NULL) {
            parts_fini(&ps);
            return KV_ECORRUPT;
        }
        ps.n++;
        i += segl + 1;
    }
    rc = key_build(out, ps.p, ps.n);
    parts_fini(&ps);
    return rc;
}
