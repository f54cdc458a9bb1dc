/*
 * fuzz_key.c - key parsing and every key function on what it yields.
 *
 * The input is split at its first 0x00 byte (or in half without one) into
 * two strings A and B.  Each is parsed as a key and as a namespace; every
 * key made is put through every accessor and constructor, and the
 * documented laws are checked: parse(id(k)) == k, the storage encoding
 * round-trips and orders as kv_key_cmp does, parent/child/relative/slice/
 * reverse/concat agree, equal keys hash alike.  The whole input is also
 * fed to kv__key_decode as stored bytes: what it accepts must re-encode to
 * exactly those bytes.
 */
#include "config.h"

#include "fuzz.h"
#include "store/store_int.h"

#include <string.h>

/* The key a constructor made through *k (read after the call: the
 * argument order of must(f(&k), &k) does not matter), NULL if it failed. */
static kv_key *must(int rc, kv_key **k)
{
    FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
    return rc == KV_OK ? *k : NULL;
}

/* The storage encoding of k (caller frees .data); NULL data on OOM. */
static kv_buf encode(const kv_key *k)
{
    kv_buf b = {NULL, 0, 0};
    int rc = kv__key_encode(k, &b);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
    return b;
}

static int sign(int x)
{
    return (x > 0) - (x < 0);
}

/* Order and equality laws between two valid keys. */
static void pair_laws(const kv_key *a, const kv_key *b)
{
    int ab = kv_key_cmp(a, b), ba = kv_key_cmp(b, a);
    FUZZ_CHECK(sign(ab) == -sign(ba));
    FUZZ_CHECK((ab == 0) == kv_key_equal(a, b));
    if (ab == 0)
        FUZZ_CHECK(kv_key_hash(a) == kv_key_hash(b));
    /* memcmp of the encodings, shorter first on a common prefix */
    kv_buf ea = encode(a), eb = encode(b);
    if ((ea.data != NULL || ea.len == 0) && (eb.data != NULL || eb.len == 0)) {
        size_t m = ea.len < eb.len ? ea.len : eb.len;
        int c = m > 0 ? memcmp(ea.data, eb.data, m) : 0;
        if (c == 0)
            c = (ea.len > eb.len) - (ea.len < eb.len);
        FUZZ_CHECK(sign(c) == sign(ab));
        /* b below a <=> a's encoding is a proper prefix of b's */
        bool prefix = ea.len < eb.len &&
                      (ea.len == 0 || memcmp(ea.data, eb.data, ea.len) == 0);
        FUZZ_CHECK(prefix == kv_key_is_ancestor(a, b));
        FUZZ_CHECK(prefix == kv_key_is_descendant(b, a));
    }
    kv__free(ea.data);
    kv__free(eb.data);
}

/* Every function on one valid key. */
static void key_laws(const kv_key *k, const char *src)
{
    size_t n = kv_key_len(k);
    const char *id = kv_key_id(k);
    FUZZ_CHECK(id != NULL && id[0] == '/');
    FUZZ_CHECK(kv_key_ns(k, n) == NULL);
    FUZZ_CHECK(kv_key_is_root(k) == (n == 1));
    FUZZ_CHECK(!kv_key_is_ancestor(k, k) && !kv_key_is_descendant(k, k));

    /* parse(id(k)) == k, and id is canonical */
    kv_key *k2 = NULL;
    k2 = must(kv_key_parse(&k2, id), &k2);
    if (k2 != NULL) {
        FUZZ_CHECK(kv_key_equal(k, k2) && kv_key_cmp(k, k2) == 0);
        FUZZ_CHECK(strcmp(kv_key_id(k2), id) == 0);
        FUZZ_CHECK(kv_key_hash(k) == kv_key_hash(k2));
        kv_key_free(k2);
    }

    /* namespaces: each parses back from its id, and rebuilds the key */
    for (size_t i = 0; i < n; i++) {
        const kv_ns *ns = kv_key_ns(k, i);
        /* never the empty namespace (a value may be empty after a field) */
        FUZZ_CHECK(ns != NULL &&
                   (ns->value[0] != '\0' || ns->field[0] != '\0'));
        FUZZ_CHECK(strchr(ns->value, '/') == NULL &&
                   strchr(ns->value, ':') == NULL &&
                   strchr(ns->field, '/') == NULL &&
                   strchr(ns->field, ':') == NULL);
        char *nid = kv_ns_id(ns);
        if (nid != NULL) {
            kv_ns back = {NULL, NULL};
            int rc = kv_ns_parse(&back, nid);
            FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
            if (rc == KV_OK)
                FUZZ_CHECK(strcmp(back.field, ns->field) == 0 &&
                           strcmp(back.value, ns->value) == 0);
            kv_ns_free(&back);
            kv__free(nid);
        }
    }
    if (n > 0) {
        FUZZ_CHECK(strcmp(kv_key_value(k), kv_key_ns(k, n - 1)->value) == 0);
        FUZZ_CHECK(strcmp(kv_key_field(k), kv_key_ns(k, n - 1)->field) == 0);
        kv_key *fromns = NULL;
        fromns = must(kv_key_from_ns(&fromns, kv_key_ns(k, 0), n), &fromns);
        if (fromns != NULL)
            FUZZ_CHECK(kv_key_equal(fromns, k));
        kv_key_free(fromns);
    }

    /* the storage encoding round-trips */
    kv_buf e = encode(k);
    if (e.data != NULL || n == 0) {
        FUZZ_CHECK(e.len == (n == 0 ? 0 : strlen(id)));
        kv_key *d = NULL;
        int rc = kv__key_decode(&d, e.data, e.len);
        FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
        if (rc == KV_OK)
            FUZZ_CHECK(kv_key_equal(d, k));
        kv_key_free(d);
    }
    kv__free(e.data);

    /* slices, parent, path, child, relative, reverse, concat */
    kv_key *all = NULL, *none = NULL;
    all = must(kv_key_slice(&all, k, 0, n), &all);
    if (all != NULL)
        FUZZ_CHECK(kv_key_equal(all, k));
    none = must(kv_key_slice(&none, k, n, n), &none);
    if (none != NULL)
        FUZZ_CHECK(kv_key_len(none) == 0 && strcmp(kv_key_id(none), "/") == 0);
    kv_key *tmp = NULL;
    FUZZ_CHECK(kv_key_slice(&tmp, k, n, n + 1) == KV_EINVAL && tmp == NULL);
    kv_key_free(all);
    kv_key_free(none);

    if (n > 0) {
        /* path: the parent, then the last field (or value) as a value */
        kv_key *path = NULL;
        path = must(kv_key_path(&path, k), &path);
        if (path != NULL) {
            const char *f = kv_key_field(k);
            FUZZ_CHECK(kv_key_len(path) == n);
            FUZZ_CHECK(kv_key_field(path)[0] == '\0');
            FUZZ_CHECK(strcmp(kv_key_value(path),
                              f[0] != '\0' ? f : kv_key_value(k)) == 0);
            if (f[0] == '\0')
                FUZZ_CHECK(kv_key_equal(path, k));
        }
        kv_key_free(path);
    }
    if (n < 2) {
        /* the empty key and a root key have no parent */
        FUZZ_CHECK(kv_key_parent(&tmp, k) == KV_EINVAL && tmp == NULL);
        if (n == 0)
            FUZZ_CHECK(kv_key_path(&tmp, k) == KV_EINVAL && tmp == NULL);
    } else {
        kv_key *p = NULL, *last = NULL, *back = NULL, *rel = NULL;
        p = must(kv_key_parent(&p, k), &p);
        last = must(kv_key_slice(&last, k, n - 1, n), &last);
        if (p != NULL && last != NULL) {
            FUZZ_CHECK(kv_key_len(p) == n - 1);
            FUZZ_CHECK(kv_key_is_ancestor(p, k) && kv_key_is_descendant(k, p));
            FUZZ_CHECK(kv_key_cmp(p, k) < 0);
            back = must(kv_key_child_key(&back, p, last), &back);
            if (back != NULL)
                FUZZ_CHECK(kv_key_equal(back, k));
            kv_key_free(back);
            back = NULL;
            back = must(kv_key_child(&back, p, kv_key_ns(k, n - 1), 1), &back);
            if (back != NULL)
                FUZZ_CHECK(kv_key_equal(back, k));
            rel = must(kv_key_relative(&rel, k, p), &rel);
            if (rel != NULL)
                FUZZ_CHECK(kv_key_equal(rel, last));
        }
        kv_key_free(p);
        kv_key_free(last);
        kv_key_free(back);
        kv_key_free(rel);
    }
    kv_key *self = NULL;
    self = must(kv_key_relative(&self, k, k), &self);
    if (self != NULL)
        FUZZ_CHECK(kv_key_len(self) == 0);
    kv_key_free(self);

    kv_key *r1 = NULL, *r2 = NULL;
    r1 = must(kv_key_reverse(&r1, k), &r1);
    if (r1 != NULL) {
        FUZZ_CHECK(kv_key_len(r1) == n);
        r2 = must(kv_key_reverse(&r2, r1), &r2);
        if (r2 != NULL)
            FUZZ_CHECK(kv_key_equal(r2, k));
    }
    kv_key_free(r1);
    kv_key_free(r2);

    const kv_key *twice[2] = {k, k};
    kv_key *kk = NULL;
    kk = must(kv_key_concat(&kk, twice, 2), &kk);
    if (kk != NULL) {
        FUZZ_CHECK(kv_key_len(kk) == 2 * n);
        if (n > 0) {
            FUZZ_CHECK(kv_key_cmp(k, kk) < 0);
            FUZZ_CHECK(kv_key_is_ancestor(k, kk));
        }
        pair_laws(k, kk);
    }
    kv_key_free(kk);

    /* the source string as a relative path below k */
    kv_key *c = NULL, *alone = NULL;
    int rc1 = kv_key_child_str(&c, k, src);
    int rc2 = kv_key_parse(&alone, src);
    FUZZ_CHECK(rc1 == rc2 || rc1 == KV_ENOMEM || rc2 == KV_ENOMEM);
    if (rc1 == KV_OK && rc2 == KV_OK)
        FUZZ_CHECK(kv_key_len(c) == n + kv_key_len(alone));
    kv_key_free(c);
    kv_key_free(alone);

    kv_key *dup = NULL;
    dup = must(kv_key_dup(&dup, k), &dup);
    if (dup != NULL)
        FUZZ_CHECK(kv_key_equal(dup, k) && dup != k);
    kv_key_free(dup);
}

static void one_string(const char *s)
{
    kv_key *k = NULL;
    int rc = kv_key_parse(&k, s);
    FUZZ_CHECK(rc == KV_OK || rc == KV_EINVAL || rc == KV_ENOMEM);
    if (rc == KV_EINVAL)
        FUZZ_CHECK(k == NULL && kv_last_errmsg()[0] != '\0');
    if (rc == KV_OK)
        key_laws(k, s);
    kv_key_free(k);

    kv_ns ns = {NULL, NULL};
    rc = kv_ns_parse(&ns, s);
    FUZZ_CHECK(rc == KV_OK || rc == KV_EINVAL || rc == KV_ENOMEM);
    if (rc == KV_OK) {
        bool empty = ns.field[0] == '\0' && ns.value[0] == '\0';
        char *id = kv_ns_id(&ns);
        FUZZ_CHECK(id == NULL || (id[0] == '\0') == empty);
        if (id != NULL && empty) {
            /* the empty namespace: "/" + its id is the empty key */
            kv_key *none = NULL;
            if (kv_key_parse(&none, "/") == KV_OK)
                FUZZ_CHECK(kv_key_len(none) == 0);
            kv_key_free(none);
        } else if (id != NULL) {
            /* a valid namespace id is a one-namespace key */
            kv_key *one = NULL;
            char *path = kv__asprintf("/%s", id);
            if (path != NULL && kv_key_parse(&one, path) == KV_OK) {
                FUZZ_CHECK(kv_key_len(one) == 1);
                FUZZ_CHECK(strcmp(kv_key_ns(one, 0)->value, ns.value) == 0);
                FUZZ_CHECK(strcmp(kv_key_ns(one, 0)->field, ns.field) == 0);
            }
            kv_key_free(one);
            kv__free(path);
            kv_ns again = {NULL, NULL};
            if (kv_ns_init(&again, ns.field, ns.value) == KV_OK) {
                char *id2 = kv_ns_id(&again);
                FUZZ_CHECK(id2 == NULL || strcmp(id, id2) == 0);
                kv__free(id2);
            }
            kv_ns_free(&again);
        }
        kv__free(id);
    }
    kv_ns_free(&ns);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    /* A and B: split at the first NUL, or in half */
    const uint8_t *nul = memchr(data, 0, size);
    size_t la = nul != NULL ? (size_t)(nul - data) : size / 2;
    size_t lb = nul != NULL ? size - la - 1 : size - la;
    const uint8_t *pb = data + size - lb;
    char *a = kv__strndup((const char *)data, la);
    char *b = kv__strndup((const char *)pb, lb);
    if (a != NULL && b != NULL && memchr(pb, 0, lb) == NULL) {
        one_string(a);
        one_string(b);
        kv_key *ka = NULL, *kb = NULL;
        if (kv_key_parse(&ka, a) == KV_OK && kv_key_parse(&kb, b) == KV_OK) {
            pair_laws(ka, kb);
            const kv_key *both[2] = {ka, kb};
            kv_key *cat = NULL;
            if (kv_key_concat(&cat, both, 2) == KV_OK) {
                FUZZ_CHECK(kv_key_len(cat) == kv_key_len(ka) + kv_key_len(kb));
                pair_laws(ka, cat);
                kv_key *rel = NULL;
                if (kv_key_relative(&rel, cat, ka) == KV_OK)
                    FUZZ_CHECK(kv_key_equal(rel, kb));
                kv_key_free(rel);
            }
            kv_key_free(cat);
        }
        kv_key_free(ka);
        kv_key_free(kb);
    }
    kv__free(a);
    kv__free(b);

    /* The whole input as stored key bytes. */
    kv_key *d = NULL;
    int rc = kv__key_decode(&d, data, size);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT || rc == KV_ENOMEM);
    if (rc == KV_OK) {
        kv_buf e = encode(d);
        if (e.data != NULL || size == 0)
            FUZZ_CHECK(e.len == size &&
                       (size == 0 || memcmp(e.data, data, size) == 0));
        kv__free(e.data);
        key_laws(d, "x");
    }
    kv_key_free(d);
    return 0;
}
