/*
 * check_key.c - namespaces, keys, their order and their storage encoding.
 */
#include "config.h"

#include "store/store_int.h"
#include "testutil.h"

#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Keys made during a test, freed by the checked teardown. */
#define TRACK_MAX 4096
static kv_key *tracked[TRACK_MAX];
static size_t ntracked;

static kv_key *T(kv_key *k)
{
    ck_assert_ptr_nonnull(k);
    ck_assert_msg(ntracked < TRACK_MAX, "too many tracked keys");
    tracked[ntracked++] = k;
    return k;
}

/* Parse a path that must be valid. */
static kv_key *K(const char *path)
{
    kv_key *k = NULL;
    int rc = kv_key_parse(&k, path);
    ck_assert_msg(rc == KV_OK, "parse \"%s\": %s (%s)", path, kv_err_name(rc),
                  kv_last_errmsg());
    return T(k);
}

static void track_setup(void)
{
    ntracked = 0;
    kv__alloc_fail_at(0, false);
}

static void track_teardown(void)
{
    kv__alloc_fail_at(0, false);
    for (size_t i = 0; i < ntracked; i++)
        kv_key_free(tracked[i]);
    ntracked = 0;
}

/* A pointer that no constructor returns: outputs must stay untouched. */
static char sentinel_byte;
#define SENTINEL ((kv_key *)(void *)&sentinel_byte)

/* Deterministic PRNG (xorshift64*), so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static void rng_seed(uint64_t s)
{
    rng_state = s ? s : 1;
}

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static unsigned rnd(unsigned n)
{
    return (unsigned)(rng() % n);
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

/* Strip s in place (the test's own model of the rule). */
static void strip_model(char *s)
{
    size_t n = strlen(s), a = 0;
    while (a < n && is_ws((unsigned char)s[a]))
        a++;
    while (n > a && is_ws((unsigned char)s[n - 1]))
        n--;
    memmove(s, s + a, n - a);
    s[n - a] = '\0';
}

/* A random string of 0..maxlen bytes from 0x01..0xFF, never ':' or '/',
 * often with whitespace at either end. */
static void rand_text(char *out, size_t maxlen)
{
    static const char ws[] = " \t\n\v\f\r";
    size_t n = rnd((unsigned)maxlen + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c;
        do {
            if (rnd(5) == 0)
                c = (unsigned char)ws[rnd(6)];
            else
                c = (unsigned char)(1 + rnd(255));
        } while (c == ':' || c == '/');
        out[i] = (char)c;
    }
    out[n] = '\0';
}

/* Encode key into a fresh buffer (caller frees data). */
static kv_buf enc(const kv_key *k)
{
    kv_buf b = {NULL, 0, 0};
    ck_assert_kv(kv__key_encode(k, &b), KV_OK);
    return b;
}

/* memcmp order, shorter first on a common prefix. */
static int buf_cmp(const kv_buf *a, const kv_buf *b)
{
    size_t m = a->len < b->len ? a->len : b->len;
    int c = m ? memcmp(a->data, b->data, m) : 0;
    if (c != 0)
        return c < 0 ? -1 : 1;
    return a->len < b->len ? -1 : (a->len > b->len ? 1 : 0);
}

static int sgn(int x)
{
    return (x > 0) - (x < 0);
}

/* ------------------------------------------------------------------------ */
/* Namespaces                                                               */
/* ------------------------------------------------------------------------ */

START_TEST(ns_parse_field_value)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, "type:user"), KV_OK);
    ck_assert_str_eq(ns.field, "type");
    ck_assert_str_eq(ns.value, "user");
    kv_ns_free(&ns);
}
END_TEST

START_TEST(ns_parse_value_only)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, "user"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    ck_assert_str_eq(ns.value, "user");
    kv_ns_free(&ns);
}
END_TEST

START_TEST(ns_parse_strips_whitespace)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, " \t type \n:\r user \v\f"), KV_OK);
    ck_assert_str_eq(ns.field, "type");
    ck_assert_str_eq(ns.value, "user");
    kv_ns_free(&ns);
    /* Inner whitespace is kept. */
    ck_assert_kv(kv_ns_parse(&ns, " a b : c  d "), KV_OK);
    ck_assert_str_eq(ns.field, "a b");
    ck_assert_str_eq(ns.value, "c  d");
    kv_ns_free(&ns);
}
END_TEST

START_TEST(ns_parse_empty_field)
{
    /* ":value" is value "value" with no field; "  :v" too. */
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, ":value"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    ck_assert_str_eq(ns.value, "value");
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_parse(&ns, "  : v"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    ck_assert_str_eq(ns.value, "v");
    kv_ns_free(&ns);
}
END_TEST

START_TEST(ns_parse_invalid)
{
    static const char *bad[] = {"a:b:c", "a::b", "::",  "a/b",    "f:a/b",
                                "/",     "a:/",  "/a",  "a:b/c:d", " : : "};
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_ns ns = {(char *)"x", (char *)"y"};
        int rc = kv_ns_parse(&ns, bad[i]);
        ck_assert_msg(rc == KV_EINVAL, "\"%s\": got %s", bad[i],
                      kv_err_name(rc));
        /* Untouched on error. */
        ck_assert_str_eq(ns.field, "x");
        ck_assert_str_eq(ns.value, "y");
        ck_assert_str_ne(kv_last_errmsg(), "");
    }
}
END_TEST

START_TEST(ns_parse_errmsg_names_input)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, "a:b:c"), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "\"a:b:c\""));
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "':'"));
    ck_assert_kv(kv_ns_parse(&ns, "f:a/b"), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "\"f:a/b\""));
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "'/'"));
}
END_TEST

START_TEST(ns_parse_empty_value)
{
    /* "f:" is field f with an empty value; its id gives it back. */
    static const char *ids[] = {"a:", " a : ", "a:\t", "a:   "};
    for (size_t i = 0; i < KV__ARRAY_SIZE(ids); i++) {
        kv_ns ns;
        ck_assert_kv(kv_ns_parse(&ns, ids[i]), KV_OK);
        ck_assert_str_eq(ns.field, "a");
        ck_assert_str_eq(ns.value, "");
        char *id = kv_ns_id(&ns);
        ck_assert_str_eq(id, "a:");
        kv_ns b;
        ck_assert_kv(kv_ns_parse(&b, id), KV_OK);
        ck_assert_str_eq(b.field, "a");
        ck_assert_str_eq(b.value, "");
        kv_ns_free(&b);
        kv__free(id);
        kv_ns_free(&ns);
    }
}
END_TEST

START_TEST(ns_parse_empty_namespace)
{
    /* Nothing but whitespace and at most one ':' is the empty namespace. */
    static const char *ids[] = {"", "   ", " \t\n ", ":", " : ", "\r:\v"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(ids); i++) {
        kv_ns ns = {(char *)"x", (char *)"y"};
        ck_assert_kv(kv_ns_parse(&ns, ids[i]), KV_OK);
        ck_assert_str_eq(ns.field, "");
        ck_assert_str_eq(ns.value, "");
        char *id = kv_ns_id(&ns);
        ck_assert_str_eq(id, "");
        kv__free(id);
        kv_ns_free(&ns);
    }
}
END_TEST

START_TEST(ns_parse_null)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, NULL), KV_EINVAL);
    ck_assert_kv(kv_ns_parse(NULL, "a"), KV_EINVAL);
}
END_TEST

START_TEST(ns_parse_high_and_control_bytes)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_parse(&ns, "\xc3\xa9t\xc3\xa9:\x01\x7f\xff"), KV_OK);
    ck_assert_str_eq(ns.field, "\xc3\xa9t\xc3\xa9");
    ck_assert_str_eq(ns.value, "\x01\x7f\xff");
    kv_ns_free(&ns);
    /* 0x85 and 0xa0 are not whitespace here, whatever the locale. */
    ck_assert_kv(kv_ns_parse(&ns, "\xa0v\x85"), KV_OK);
    ck_assert_str_eq(ns.value, "\xa0v\x85");
    kv_ns_free(&ns);
}
END_TEST

START_TEST(ns_init_parts)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_init(&ns, "type", "user"), KV_OK);
    ck_assert_str_eq(ns.field, "type");
    ck_assert_str_eq(ns.value, "user");
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_init(&ns, NULL, "user"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    ck_assert_str_eq(ns.value, "user");
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_init(&ns, "", "user"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_init(&ns, "  f \t", "\n v "), KV_OK);
    ck_assert_str_eq(ns.field, "f");
    ck_assert_str_eq(ns.value, "v");
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_init(&ns, "   ", "v"), KV_OK);
    ck_assert_str_eq(ns.field, "");
    kv_ns_free(&ns);
    /* An empty value, and the empty namespace. */
    ck_assert_kv(kv_ns_init(&ns, "a", ""), KV_OK);
    ck_assert_str_eq(ns.field, "a");
    ck_assert_str_eq(ns.value, "");
    char *id = kv_ns_id(&ns);
    ck_assert_str_eq(id, "a:");
    kv__free(id);
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_init(&ns, " a ", " \t "), KV_OK);
    ck_assert_str_eq(ns.field, "a");
    ck_assert_str_eq(ns.value, "");
    kv_ns_free(&ns);
    static const char *empty[][2] = {{NULL, ""}, {"", ""}, {" ", "\n"},
                                     {NULL, " \t\r\n"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(empty); i++) {
        ck_assert_kv(kv_ns_init(&ns, empty[i][0], empty[i][1]), KV_OK);
        ck_assert_str_eq(ns.field, "");
        ck_assert_str_eq(ns.value, "");
        id = kv_ns_id(&ns);
        ck_assert_str_eq(id, "");
        kv__free(id);
        kv_ns_free(&ns);
    }
}
END_TEST

START_TEST(ns_init_invalid)
{
    static const char *bad[][2] = {
        {"a:b", "v"}, {"a/b", "v"}, {":", "v"},  {"/", "v"},
        {"f", "a:b"}, {"f", "a/b"}, {"f", ":"},  {"f", "/"},
        {"f", NULL},  {NULL, NULL}, {"", "a:"}, {"", ":a"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_ns ns = {(char *)"x", (char *)"y"};
        int rc = kv_ns_init(&ns, bad[i][0], bad[i][1]);
        ck_assert_msg(rc == KV_EINVAL, "#%zu: got %s", i, kv_err_name(rc));
        ck_assert_str_eq(ns.field, "x");
        ck_assert_str_eq(ns.value, "y");
    }
    ck_assert_kv(kv_ns_init(NULL, "f", "v"), KV_EINVAL);
}
END_TEST

START_TEST(ns_free_zeroes_and_null_safe)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_init(&ns, "f", "v"), KV_OK);
    kv_ns_free(&ns);
    ck_assert_ptr_null(ns.field);
    ck_assert_ptr_null(ns.value);
    kv_ns_free(&ns); /* again: both NULL now */
    kv_ns_free(NULL);
}
END_TEST

START_TEST(ns_id_forms)
{
    kv_ns ns;
    ck_assert_kv(kv_ns_init(&ns, "f", "v"), KV_OK);
    char *id = kv_ns_id(&ns);
    ck_assert_str_eq(id, "f:v");
    kv__free(id);
    kv_ns_free(&ns);
    ck_assert_kv(kv_ns_parse(&ns, " : v "), KV_OK);
    id = kv_ns_id(&ns);
    ck_assert_str_eq(id, "v");
    kv__free(id);
    kv_ns_free(&ns);
    ck_assert_ptr_null(kv_ns_id(NULL));
    /* A zeroed struct does not crash. */
    kv_ns z = {NULL, NULL};
    id = kv_ns_id(&z);
    ck_assert_str_eq(id, "");
    kv__free(id);
}
END_TEST

START_TEST(ns_id_round_trip)
{
    rng_seed(11);
    char f[32], v[32];
    for (int i = 0; i < 2000; i++) {
        rand_text(f, 12);
        rand_text(v, 12);
        kv_ns a, b;
        int rc = kv_ns_init(&a, f, v);
        strip_model(f);
        strip_model(v);
        ck_assert_kv(rc, KV_OK);
        ck_assert_str_eq(a.field, f);
        ck_assert_str_eq(a.value, v);
        char *id = kv_ns_id(&a);
        ck_assert_kv(kv_ns_parse(&b, id), KV_OK);
        ck_assert_str_eq(b.field, a.field);
        ck_assert_str_eq(b.value, a.value);
        kv__free(id);
        kv_ns_free(&a);
        kv_ns_free(&b);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Parsing                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(parse_structure)
{
    kv_key *k = K("/a:b/c/d:e");
    ck_assert_uint_eq(kv_key_len(k), 3);
    ck_assert_str_eq(kv_key_ns(k, 0)->field, "a");
    ck_assert_str_eq(kv_key_ns(k, 0)->value, "b");
    ck_assert_str_eq(kv_key_ns(k, 1)->field, "");
    ck_assert_str_eq(kv_key_ns(k, 1)->value, "c");
    ck_assert_str_eq(kv_key_ns(k, 2)->field, "d");
    ck_assert_str_eq(kv_key_ns(k, 2)->value, "e");
    ck_assert_str_eq(kv_key_id(k), "/a:b/c/d:e");
}
END_TEST

START_TEST(parse_empty_key)
{
    static const char *empty[] = {"", "/", "//", "   ", " / / ", "/:/", ":",
                                  " : / :"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(empty); i++) {
        kv_key *k = K(empty[i]);
        ck_assert_uint_eq(kv_key_len(k), 0);
        ck_assert_str_eq(kv_key_id(k), "/");
        ck_assert_str_eq(kv_key_value(k), "");
        ck_assert_str_eq(kv_key_field(k), "");
        ck_assert_ptr_null(kv_key_ns(k, 0));
    }
}
END_TEST

START_TEST(parse_drops_empty_segments)
{
    ck_assert_str_eq(kv_key_id(K("///a///b///")), "/a/b");
    ck_assert_str_eq(kv_key_id(K("a/b")), "/a/b");
    ck_assert_str_eq(kv_key_id(K("a")), "/a");
    ck_assert_str_eq(kv_key_id(K(" / a / \t/ b:c /")), "/a/b:c");
    ck_assert_str_eq(kv_key_id(K("/:/a/ : /b/:")), "/a/b");
    ck_assert_uint_eq(kv_key_len(K("///a///b///")), 2);
}
END_TEST

START_TEST(parse_empty_values)
{
    /* "c:" is field c with an empty value, kept; ":" is dropped. */
    static const char *cases[][2] = {
        {"a:b/c:", "/a:b/c:"}, {"/c:", "/c:"},     {" c : ", "/c:"},
        {"/a:/b", "/a:/b"},    {"/a:/:/b:", "/a:/b:"}, {"/a//b", "/a/b"},
        {"/x/ :\t/y", "/x/y"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(cases); i++) {
        kv_key *k = K(cases[i][0]);
        ck_assert_msg(strcmp(kv_key_id(k), cases[i][1]) == 0,
                      "parse(%s) = %s, want %s", cases[i][0], kv_key_id(k),
                      cases[i][1]);
        ck_assert(kv_key_equal(K(kv_key_id(k)), k));
    }
    kv_key *k = K("a:b/c:");
    ck_assert_uint_eq(kv_key_len(k), 2);
    ck_assert_str_eq(kv_key_field(k), "c");
    ck_assert_str_eq(kv_key_value(k), "");
    ck_assert(!kv_key_equal(k, K("/a:b/c")));
    ck_assert_int_lt(kv_key_cmp(K("/a:b/c"), k), 0);
    ck_assert_int_lt(kv_key_cmp(k, K("/a:b/c:d")), 0);
    ck_assert(!kv_key_is_ancestor(k, K("/a:b/c:d")));
}
END_TEST

START_TEST(parse_strips_fields_and_values)
{
    kv_key *k = K("/ f : v /\tx y\t/ : z");
    ck_assert_str_eq(kv_key_id(k), "/f:v/x y/z");
    ck_assert_uint_eq(kv_key_len(k), 3);
    ck_assert_str_eq(kv_key_ns(k, 2)->field, "");
}
END_TEST

START_TEST(parse_invalid)
{
    static const char *bad[] = {"/a:b:c",  "/a/b::c", "/x/f::",  "/f: :/x",
                                "a:b:c/d", "/::",     "/a/ :: ", "/ok/a:b:"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_key *k = SENTINEL;
        int rc = kv_key_parse(&k, bad[i]);
        ck_assert_msg(rc == KV_EINVAL, "\"%s\": got %s", bad[i],
                      kv_err_name(rc));
        ck_assert_ptr_eq(k, SENTINEL);
    }
}
END_TEST

START_TEST(parse_errmsg)
{
    kv_key *k = SENTINEL;
    ck_assert_kv(kv_key_parse(&k, "/a:b:c"), KV_EINVAL);
    const char *m = kv_last_errmsg();
    ck_assert_ptr_nonnull(strstr(m, "\"/a:b:c\""));
    ck_assert_ptr_nonnull(strstr(m, "':'"));
    ck_assert_kv(kv_key_parse(&k, "/ok/field:a:"), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "\"field:a:\""));
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "more than one ':'"));
    /* A very long input is quoted, cut, and does not overflow. */
    char big[4000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[10] = ':';
    big[20] = ':';
    ck_assert_kv(kv_key_parse(&k, big), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "..."));
    ck_assert_ptr_eq(k, SENTINEL);
}
END_TEST

START_TEST(parse_null)
{
    kv_key *k = SENTINEL;
    ck_assert_kv(kv_key_parse(&k, NULL), KV_EINVAL);
    ck_assert_ptr_eq(k, SENTINEL);
    ck_assert_kv(kv_key_parse(NULL, "/a"), KV_EINVAL);
}
END_TEST

START_TEST(parse_high_and_control_bytes)
{
    kv_key *k = K("/\xff\xfe:\x01\x02/\x7f/caf\xc3\xa9");
    ck_assert_uint_eq(kv_key_len(k), 3);
    ck_assert_str_eq(kv_key_ns(k, 0)->field, "\xff\xfe");
    ck_assert_str_eq(kv_key_ns(k, 0)->value, "\x01\x02");
    ck_assert_str_eq(kv_key_value(k), "caf\xc3\xa9");
    ck_assert_str_eq(kv_key_id(k), "/\xff\xfe:\x01\x02/\x7f/caf\xc3\xa9");
}
END_TEST

START_TEST(parse_many_namespaces)
{
    /* More namespaces than any small inline buffer. */
    char path[4096] = "";
    char want[4096] = "";
    size_t pl = 0, wl = 0;
    for (int i = 0; i < 300; i++) {
        pl += (size_t)snprintf(path + pl, sizeof path - pl, "//f%d: v%d ", i,
                               i);
        wl += (size_t)snprintf(want + wl, sizeof want - wl, "/f%d:v%d", i, i);
    }
    kv_key *k = K(path);
    ck_assert_uint_eq(kv_key_len(k), 300);
    ck_assert_str_eq(kv_key_id(k), want);
    ck_assert_str_eq(kv_key_ns(k, 299)->value, "v299");
}
END_TEST

START_TEST(parse_id_round_trip_random_ns)
{
    /* Keys built from random namespaces (random bytes, whitespace at the
     * edges): parse(id(k)) == k, and the id is a fixed point. */
    rng_seed(42);
    char f[32], v[32];
    for (int i = 0; i < 1500; i++) {
        kv_ns ns[6];
        size_t n = rnd(7);
        size_t got = 0;
        for (size_t j = 0; j < n; j++) {
            rand_text(f, 10);
            rand_text(v, 10);
            ck_assert_kv(kv_ns_init(&ns[got], f, v), KV_OK);
            if (ns[got].field[0] == '\0' && ns[got].value[0] == '\0') {
                kv_ns_free(&ns[got]); /* the empty one: keys drop it */
                continue;
            }
            got++;
        }
        kv_key *k, *k2;
        ck_assert_kv(kv_key_from_ns(&k, ns, got), KV_OK);
        T(k);
        for (size_t j = 0; j < got; j++) {
            ck_assert_str_eq(kv_key_ns(k, j)->field, ns[j].field);
            ck_assert_str_eq(kv_key_ns(k, j)->value, ns[j].value);
            kv_ns_free(&ns[j]);
        }
        ck_assert_kv(kv_key_parse(&k2, kv_key_id(k)), KV_OK);
        ck_assert_msg(kv_key_equal(k, k2), "round trip of \"%s\" gave \"%s\"",
                      kv_key_id(k), kv_key_id(k2));
        ck_assert_int_eq(kv_key_cmp(k, k2), 0);
        ck_assert_str_eq(kv_key_id(k2), kv_key_id(k));
        kv_key_free(k2);
        track_teardown();
    }
}
END_TEST

/*
 * The test's own model of path parsing: returns the canonical id, or NULL
 * for an invalid path.  Written from the rules, independently of key.c.
 */
static char *model_parse(const char *path)
{
    size_t cap = strlen(path) + 2;
    char *out = malloc(cap);
    char *seg = malloc(cap);
    size_t ol = 0;
    const char *s = path;
    for (;;) {
        const char *e = strchr(s, '/');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        memcpy(seg, s, l);
        seg[l] = '\0';
        strip_model(seg);
        if (seg[0] != '\0' && strcmp(seg, ":") != 0) {
            char none[1] = "";
            char *c = strchr(seg, ':');
            char *fld = none, *val = seg;
            if (c != NULL) {
                if (strchr(c + 1, ':') != NULL)
                    goto bad;
                *c = '\0';
                fld = seg;
                val = c + 1;
            }
            strip_model(fld);
            strip_model(val);
            if (fld[0] == '\0' && val[0] == '\0')
                goto next; /* the empty namespace: nothing */
            out[ol++] = '/';
            if (fld[0] != '\0') {
                memcpy(out + ol, fld, strlen(fld));
                ol += strlen(fld);
                out[ol++] = ':';
            }
            memcpy(out + ol, val, strlen(val));
            ol += strlen(val);
        }
    next:
        if (e == NULL)
            break;
        s = e + 1;
    }
    if (ol == 0)
        out[ol++] = '/';
    out[ol] = '\0';
    free(seg);
    return out;
bad:
    free(seg);
    free(out);
    return NULL;
}

START_TEST(parse_random_paths_match_model)
{
    /* Random strings over an alphabet rich in separators and whitespace. */
    static const char alpha[] = "ab/:/: \t\x01\xff-";
    rng_seed(7);
    char path[40];
    int valid = 0, invalid = 0;
    for (int i = 0; i < 20000; i++) {
        size_t n = rnd(sizeof path - 1);
        for (size_t j = 0; j < n; j++)
            path[j] = alpha[rnd(sizeof alpha - 1)];
        path[n] = '\0';
        char *want = model_parse(path);
        kv_key *k = SENTINEL;
        int rc = kv_key_parse(&k, path);
        if (want == NULL) {
            ck_assert_msg(rc == KV_EINVAL, "\"%s\": got %s, want EINVAL",
                          path, kv_err_name(rc));
            ck_assert_ptr_eq(k, SENTINEL);
            invalid++;
            continue;
        }
        valid++;
        ck_assert_msg(rc == KV_OK, "\"%s\": got %s (%s)", path,
                      kv_err_name(rc), kv_last_errmsg());
        ck_assert_str_eq(kv_key_id(k), want);
        kv_key *k2;
        ck_assert_kv(kv_key_parse(&k2, kv_key_id(k)), KV_OK);
        ck_assert(kv_key_equal(k, k2));
        kv_key_free(k2);
        kv_key_free(k);
        free(want);
    }
    /* The alphabet exercises both outcomes. */
    ck_assert_int_gt(valid, 1000);
    ck_assert_int_gt(invalid, 1000);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

START_TEST(accessors_basic)
{
    kv_key *k = K("/a:b/c/d:e");
    ck_assert_str_eq(kv_key_value(k), "e");
    ck_assert_str_eq(kv_key_field(k), "d");
    kv_key *l = K("/a:b/c");
    ck_assert_str_eq(kv_key_value(l), "c");
    ck_assert_str_eq(kv_key_field(l), "");
    ck_assert_ptr_null(kv_key_ns(k, 3));
    ck_assert_ptr_null(kv_key_ns(k, SIZE_MAX));
    ck_assert_ptr_nonnull(kv_key_ns(k, 2));
}
END_TEST

START_TEST(accessors_views_are_stable)
{
    kv_key *k = K("/a:b/c");
    const char *id = kv_key_id(k);
    const kv_ns *ns = kv_key_ns(k, 0);
    ck_assert_ptr_eq(kv_key_id(k), id);
    ck_assert_ptr_eq(kv_key_ns(k, 0), ns);
    /* The namespaces are contiguous: usable as kv_key_from_ns input. */
    kv_key *c;
    ck_assert_kv(kv_key_from_ns(&c, kv_key_ns(k, 0), kv_key_len(k)), KV_OK);
    ck_assert(kv_key_equal(T(c), k));
}
END_TEST

START_TEST(accessors_null)
{
    ck_assert_uint_eq(kv_key_len(NULL), 0);
    ck_assert_ptr_null(kv_key_ns(NULL, 0));
    ck_assert_str_eq(kv_key_value(NULL), "");
    ck_assert_str_eq(kv_key_field(NULL), "");
    ck_assert_str_eq(kv_key_id(NULL), "");
    ck_assert(!kv_key_is_root(NULL));
    ck_assert_uint_eq(kv_key_hash(NULL), 0);
    kv_key_free(NULL);
}
END_TEST

START_TEST(slice_ranges)
{
    kv_key *k = K("/a/b:c/d/e");
    kv_key *s;
    ck_assert_kv(kv_key_slice(&s, k, 1, 3), KV_OK);
    ck_assert_str_eq(kv_key_id(T(s)), "/b:c/d");
    ck_assert_kv(kv_key_slice(&s, k, 0, 4), KV_OK);
    ck_assert(kv_key_equal(T(s), k));
    ck_assert_kv(kv_key_slice(&s, k, 2, 2), KV_OK);
    ck_assert_str_eq(kv_key_id(T(s)), "/");
    ck_assert_kv(kv_key_slice(&s, k, 4, 4), KV_OK);
    ck_assert_str_eq(kv_key_id(T(s)), "/");
    ck_assert_kv(kv_key_slice(&s, k, 3, 4), KV_OK);
    ck_assert_str_eq(kv_key_id(T(s)), "/e");
    ck_assert_kv(kv_key_slice(&s, K("/"), 0, 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(s)), "/");
}
END_TEST

START_TEST(slice_invalid)
{
    kv_key *k = K("/a/b");
    kv_key *s = SENTINEL;
    ck_assert_kv(kv_key_slice(&s, k, 2, 1), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&s, k, 0, 3), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&s, k, 3, 3), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&s, k, 0, SIZE_MAX), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&s, NULL, 0, 0), KV_EINVAL);
    ck_assert_ptr_eq(s, SENTINEL);
    ck_assert_kv(kv_key_slice(NULL, k, 0, 1), KV_EINVAL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Navigation                                                               */
/* ------------------------------------------------------------------------ */

START_TEST(nav_is_root)
{
    ck_assert(kv_key_is_root(K("/a")));
    ck_assert(kv_key_is_root(K("/a:b")));
    ck_assert(!kv_key_is_root(K("/")));
    ck_assert(!kv_key_is_root(K("/a/b")));
}
END_TEST

START_TEST(nav_parent)
{
    kv_key *p;
    ck_assert_kv(kv_key_parent(&p, K("/a/b:c/d")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(p)), "/a/b:c");
    ck_assert_kv(kv_key_parent(&p, K("/a/b")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(p)), "/a");
    ck_assert_kv(kv_key_parent(&p, K("/a:/b:")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(p)), "/a:");
}
END_TEST

START_TEST(nav_parent_invalid)
{
    /* A root key (one namespace) has no parent, nor has the empty key. */
    kv_key *p = SENTINEL;
    ck_assert_kv(kv_key_parent(&p, K("/a")), KV_EINVAL);
    ck_assert_kv(kv_key_parent(&p, K("/a:b")), KV_EINVAL);
    ck_assert_kv(kv_key_parent(&p, K("/a:")), KV_EINVAL);
    ck_assert_kv(kv_key_parent(&p, K("/")), KV_EINVAL);
    ck_assert_kv(kv_key_parent(&p, NULL), KV_EINVAL);
    ck_assert_ptr_eq(p, SENTINEL);
    ck_assert_kv(kv_key_parent(NULL, K("/a")), KV_EINVAL);
}
END_TEST

START_TEST(nav_path)
{
    /* The parent, then the last namespace's field, or its value when it
     * has no field, as a plain value. */
    static const char *cases[][2] = {
        {"/a:b/c/d:e", "/a:b/c/d"}, {"/a:b/c", "/a:b/c"},
        {"/a:b", "/a"},             {"/x", "/x"},
        {"/a/b:c", "/a/b"},         {"/x:y/a:b", "/x:y/a"},
        {"/a:b/c:", "/a:b/c"},      {"/c:", "/c"},
        {"/a/b/c", "/a/b/c"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(cases); i++) {
        kv_key *p;
        ck_assert_kv(kv_key_path(&p, K(cases[i][0])), KV_OK);
        ck_assert_msg(strcmp(kv_key_id(T(p)), cases[i][1]) == 0,
                      "path(%s) = %s, want %s", cases[i][0], kv_key_id(p),
                      cases[i][1]);
        ck_assert_str_eq(kv_key_field(p), "");
        ck_assert_uint_eq(kv_key_len(p), kv_key_len(K(cases[i][0])));
    }
}
END_TEST

START_TEST(nav_path_invalid)
{
    kv_key *p = SENTINEL;
    ck_assert_kv(kv_key_path(&p, K("/")), KV_EINVAL);
    ck_assert_kv(kv_key_path(&p, NULL), KV_EINVAL);
    ck_assert_ptr_eq(p, SENTINEL);
    ck_assert_kv(kv_key_path(NULL, K("/a")), KV_EINVAL);
}
END_TEST

START_TEST(nav_reverse)
{
    kv_key *r;
    ck_assert_kv(kv_key_reverse(&r, K("/a:b/c/d:e")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/d:e/c/a:b");
    ck_assert_kv(kv_key_reverse(&r, K("/a")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/a");
    ck_assert_kv(kv_key_reverse(&r, K("/")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/");
    kv_key *rr;
    ck_assert_kv(kv_key_reverse(&rr, r), KV_OK);
    ck_assert_str_eq(kv_key_id(T(rr)), "/");
    r = SENTINEL;
    ck_assert_kv(kv_key_reverse(&r, NULL), KV_EINVAL);
    ck_assert_ptr_eq(r, SENTINEL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Building                                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(build_from_ns)
{
    kv_ns ns[3] = {{(char *)"f", (char *)"v"},
                   {NULL, (char *)" x "},
                   {(char *)" \t", (char *)"y"}};
    kv_key *k;
    ck_assert_kv(kv_key_from_ns(&k, ns, 3), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/f:v/x/y");
    ck_assert_str_eq(kv_key_ns(k, 1)->field, "");
    ck_assert_kv(kv_key_from_ns(&k, NULL, 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/");
}
END_TEST

START_TEST(build_empty_values_and_namespaces)
{
    /* A namespace with an empty value is kept ("f:"); the empty namespace
     * adds nothing to a key, as an empty segment adds nothing to a path. */
    kv_ns ns[4] = {{(char *)"f", (char *)""},
                   {NULL, (char *)" "},
                   {(char *)" ", (char *)""},
                   {(char *)"g", (char *)" \t"}};
    kv_key *k;
    ck_assert_kv(kv_key_from_ns(&k, ns, 4), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/f:/g:");
    ck_assert_uint_eq(kv_key_len(k), 2);
    ck_assert_str_eq(kv_key_ns(k, 0)->field, "f");
    ck_assert_str_eq(kv_key_ns(k, 0)->value, "");
    ck_assert_kv(kv_key_from_ns(&k, ns + 1, 2), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/");
    ck_assert_kv(kv_key_child(&k, K("/a"), ns, 3), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/a/f:");
    ck_assert_kv(kv_key_child(&k, K("/a"), ns + 1, 1), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/a");
    ck_assert_kv(kv_key_child_str(&k, K("/a"), "b:/ : /c"), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/a/b:/c");
    /* Every such key parses back from its id. */
    kv_key *again;
    ck_assert_kv(kv_key_parse(&again, kv_key_id(k)), KV_OK);
    ck_assert(kv_key_equal(T(again), k));
}
END_TEST

START_TEST(build_from_ns_invalid)
{
    static const char *bad[][2] = {{"a:b", "v"}, {"a/b", "v"}, {"f", "a:b"},
                                   {"f", "a/b"}, {"f", NULL},  {":", ""}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_ns ns[2] = {{(char *)"ok", (char *)"ok"},
                       {(char *)bad[i][0], (char *)bad[i][1]}};
        kv_key *k = SENTINEL;
        ck_assert_kv(kv_key_from_ns(&k, ns, 2), KV_EINVAL);
        ck_assert_ptr_eq(k, SENTINEL);
    }
    kv_key *k = SENTINEL;
    ck_assert_kv(kv_key_from_ns(&k, NULL, 1), KV_EINVAL);
    ck_assert_ptr_eq(k, SENTINEL);
    ck_assert_kv(kv_key_from_ns(NULL, NULL, 0), KV_EINVAL);
}
END_TEST

START_TEST(build_concat)
{
    const kv_key *ks[4] = {K("/a:b"), K("/"), K("/c/d"), K("/e")};
    kv_key *k;
    ck_assert_kv(kv_key_concat(&k, ks, 4), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/a:b/c/d/e");
    ck_assert_uint_eq(kv_key_len(k), 4);
    ck_assert_kv(kv_key_concat(&k, ks, 1), KV_OK);
    ck_assert(kv_key_equal(T(k), ks[0]));
    ck_assert_kv(kv_key_concat(&k, NULL, 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(k)), "/");
    /* Long: more namespaces than the inline buffer. */
    const kv_key *many[40];
    for (int i = 0; i < 40; i++)
        many[i] = ks[i % 4];
    ck_assert_kv(kv_key_concat(&k, many, 40), KV_OK);
    ck_assert_uint_eq(kv_key_len(T(k)), 40);
}
END_TEST

START_TEST(build_concat_invalid)
{
    const kv_key *ks[2] = {K("/a"), NULL};
    kv_key *k = SENTINEL;
    ck_assert_kv(kv_key_concat(&k, ks, 2), KV_EINVAL);
    ck_assert_kv(kv_key_concat(&k, NULL, 1), KV_EINVAL);
    ck_assert_ptr_eq(k, SENTINEL);
    ck_assert_kv(kv_key_concat(NULL, ks, 1), KV_EINVAL);
}
END_TEST

START_TEST(build_dup)
{
    kv_key *src;
    ck_assert_kv(kv_key_parse(&src, "/a:b/c/d:e"), KV_OK);
    kv_key *d;
    ck_assert_kv(kv_key_dup(&d, src), KV_OK);
    ck_assert(kv_key_equal(d, src));
    ck_assert_ptr_ne(d, src);
    ck_assert_ptr_ne(kv_key_id(d), kv_key_id(src));
    kv_key_free(src); /* the copy is independent */
    ck_assert_str_eq(kv_key_id(d), "/a:b/c/d:e");
    ck_assert_str_eq(kv_key_ns(d, 0)->field, "a");
    ck_assert_str_eq(kv_key_ns(d, 2)->value, "e");
    ck_assert_str_eq(kv_key_value(d), "e");
    kv_key *e;
    ck_assert_kv(kv_key_dup(&e, K("/")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(e)), "/");
    kv_key_free(d);
    e = SENTINEL;
    ck_assert_kv(kv_key_dup(&e, NULL), KV_EINVAL);
    ck_assert_ptr_eq(e, SENTINEL);
}
END_TEST

START_TEST(build_child_ns)
{
    kv_ns ns[2] = {{(char *)"f", (char *)" v "}, {NULL, (char *)"w"}};
    kv_key *c;
    ck_assert_kv(kv_key_child(&c, K("/a"), ns, 2), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a/f:v/w");
    ck_assert_kv(kv_key_child(&c, K("/"), ns, 1), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/f:v");
    ck_assert_kv(kv_key_child(&c, K("/a"), NULL, 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a");
}
END_TEST

START_TEST(build_child_ns_invalid)
{
    kv_ns bad[2] = {{NULL, (char *)"ok"}, {(char *)"x", (char *)"a/b"}};
    kv_key *c = SENTINEL;
    ck_assert_kv(kv_key_child(&c, K("/a"), bad, 2), KV_EINVAL);
    ck_assert_kv(kv_key_child(&c, K("/a"), NULL, 1), KV_EINVAL);
    ck_assert_kv(kv_key_child(&c, NULL, bad, 1), KV_EINVAL);
    ck_assert_ptr_eq(c, SENTINEL);
    ck_assert_kv(kv_key_child(NULL, K("/a"), bad, 1), KV_EINVAL);
}
END_TEST

START_TEST(build_child_key)
{
    kv_key *c;
    ck_assert_kv(kv_key_child_key(&c, K("/a:b"), K("/c/d:e")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a:b/c/d:e");
    ck_assert_kv(kv_key_child_key(&c, K("/"), K("/x")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/x");
    ck_assert_kv(kv_key_child_key(&c, K("/x"), K("/")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/x");
    c = SENTINEL;
    ck_assert_kv(kv_key_child_key(&c, NULL, K("/x")), KV_EINVAL);
    ck_assert_kv(kv_key_child_key(&c, K("/x"), NULL), KV_EINVAL);
    ck_assert_ptr_eq(c, SENTINEL);
}
END_TEST

START_TEST(build_child_str)
{
    kv_key *c;
    ck_assert_kv(kv_key_child_str(&c, K("/a"), "b/c:d"), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a/b/c:d");
    ck_assert_kv(kv_key_child_str(&c, K("/a"), "//b// "), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a/b");
    ck_assert_kv(kv_key_child_str(&c, K("/a"), ""), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/a");
    ck_assert_kv(kv_key_child_str(&c, K("/"), "x"), KV_OK);
    ck_assert_str_eq(kv_key_id(T(c)), "/x");
    c = SENTINEL;
    ck_assert_kv(kv_key_child_str(&c, K("/a"), "b/c:d:e"), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "c:d:e"));
    ck_assert_kv(kv_key_child_str(&c, K("/a"), "b/x::"), KV_EINVAL);
    ck_assert_kv(kv_key_child_str(&c, K("/a"), NULL), KV_EINVAL);
    ck_assert_kv(kv_key_child_str(&c, NULL, "b"), KV_EINVAL);
    ck_assert_ptr_eq(c, SENTINEL);
}
END_TEST

START_TEST(build_random)
{
    char a[25], b[25];
    memset(a, '#', sizeof a);
    kv_key_random(a);
    kv_key_random(b);
    ck_assert_uint_eq(strlen(a), 24);
    ck_assert_uint_eq(strlen(b), 24);
    for (int i = 0; i < 24; i++)
        ck_assert_msg((a[i] >= '0' && a[i] <= '9') ||
                          (a[i] >= 'a' && a[i] <= 'f'),
                      "bad char %d in %s", a[i], a);
    ck_assert_str_ne(a, b);
    /* Usable as a namespace value. */
    kv_key *c;
    ck_assert_kv(kv_key_child_str(&c, K("/ids"), a), KV_OK);
    ck_assert_str_eq(kv_key_value(T(c)), a);
    /* 96 bits: a few thousand never collide, and all 16 digits appear. */
    char seen[17] = "";
    for (int i = 0; i < 2000; i++) {
        kv_key_random(b);
        ck_assert_str_ne(a, b);
        for (int j = 0; j < 24; j++)
            if (!strchr(seen, b[j]))
                seen[strlen(seen)] = b[j];
    }
    ck_assert_uint_eq(strlen(seen), 16);
    kv_key_random(NULL); /* no crash */
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Relationships                                                            */
/* ------------------------------------------------------------------------ */

START_TEST(rel_relative)
{
    kv_key *r;
    ck_assert_kv(kv_key_relative(&r, K("/a/b/c"), K("/a")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/b/c");
    ck_assert_kv(kv_key_relative(&r, K("/a:x/b"), K("/a:x")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/b");
    ck_assert_kv(kv_key_relative(&r, K("/a/b"), K("/a/b")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/");
    ck_assert_kv(kv_key_relative(&r, K("/a/b"), K("/")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/a/b");
    ck_assert_kv(kv_key_relative(&r, K("/"), K("/")), KV_OK);
    ck_assert_str_eq(kv_key_id(T(r)), "/");
}
END_TEST

START_TEST(rel_relative_invalid)
{
    static const char *pairs[][2] = {
        {"/a/b", "/a/b/c"}, {"/ab/c", "/a"},  {"/a/c", "/a/b"},
        {"/a:x/b", "/a"},   {"/a/b", "/a:x"}, {"/", "/a"},
        {"/a-b", "/a"},     {"/a", "/b"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(pairs); i++) {
        kv_key *r = SENTINEL;
        int rc = kv_key_relative(&r, K(pairs[i][0]), K(pairs[i][1]));
        ck_assert_msg(rc == KV_EINVAL, "%s rel %s: got %s", pairs[i][0],
                      pairs[i][1], kv_err_name(rc));
        ck_assert_ptr_eq(r, SENTINEL);
    }
    kv_key *r = SENTINEL;
    ck_assert_kv(kv_key_relative(&r, NULL, K("/")), KV_EINVAL);
    ck_assert_kv(kv_key_relative(&r, K("/"), NULL), KV_EINVAL);
    ck_assert_ptr_eq(r, SENTINEL);
}
END_TEST

START_TEST(rel_ancestor_descendant)
{
    kv_key *a = K("/a"), *ab = K("/a/b"), *abc = K("/a/b/c:d");
    kv_key *root = K("/"), *a_b = K("/ab"), *ax = K("/a:x/b");
    ck_assert(kv_key_is_ancestor(a, ab));
    ck_assert(kv_key_is_ancestor(a, abc));
    ck_assert(kv_key_is_ancestor(ab, abc));
    ck_assert(!kv_key_is_ancestor(ab, a));
    ck_assert(!kv_key_is_ancestor(a, a));      /* strictly */
    ck_assert(!kv_key_is_ancestor(a, a_b));    /* by namespaces, not bytes */
    ck_assert(!kv_key_is_ancestor(a, ax));     /* "a" is not "a:x" */
    ck_assert(kv_key_is_ancestor(root, a));
    ck_assert(kv_key_is_ancestor(root, abc));
    ck_assert(!kv_key_is_ancestor(root, root));
    ck_assert(!kv_key_is_ancestor(a, root));

    ck_assert(kv_key_is_descendant(ab, a));
    ck_assert(kv_key_is_descendant(abc, a));
    ck_assert(kv_key_is_descendant(a, root));
    ck_assert(!kv_key_is_descendant(a, ab));
    ck_assert(!kv_key_is_descendant(a, a));
    ck_assert(!kv_key_is_descendant(a_b, a));
    ck_assert(!kv_key_is_descendant(root, root));

    ck_assert(!kv_key_is_ancestor(NULL, a));
    ck_assert(!kv_key_is_ancestor(a, NULL));
    ck_assert(!kv_key_is_descendant(NULL, a));
    ck_assert(!kv_key_is_descendant(a, NULL));
}
END_TEST

START_TEST(rel_equal)
{
    ck_assert(kv_key_equal(K("/a:b/c"), K(" a : b // c ")));
    ck_assert(kv_key_equal(K("/"), K("")));
    ck_assert(!kv_key_equal(K("/a/b"), K("/a:b")));
    ck_assert(!kv_key_equal(K("/a"), K("/a/b")));
    ck_assert(!kv_key_equal(K("/a"), NULL));
    ck_assert(!kv_key_equal(NULL, K("/")));
    ck_assert(kv_key_equal(NULL, NULL));
    /* Built different ways. */
    kv_ns ns[2] = {{(char *)"a", (char *)"b"}, {NULL, (char *)"c"}};
    kv_key *f;
    ck_assert_kv(kv_key_from_ns(&f, ns, 2), KV_OK);
    ck_assert(kv_key_equal(T(f), K("/a:b/c")));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Ordering and hash                                                        */
/* ------------------------------------------------------------------------ */

START_TEST(order_documented)
{
    /* In kv_key_cmp order: parent before children, a shorter namespace id
     * first, bytes unsigned; so /a/b < /a-b < /ab. */
    static const char *sorted[] = {
        "/",     "/\x01", "/a",     "/a/b", "/a/b/c", "/a/c",  "/a/zzz",
        "/a-b",  "/a:",    "/a:/x",  "/a:b", "/a:b/c", "/ab",   "/b",
        "/\x7f", "/\x80", "/\xff"};
    size_t n = KV__ARRAY_SIZE(sorted);
    kv_key *ks[KV__ARRAY_SIZE(sorted)];
    for (size_t i = 0; i < n; i++)
        ks[i] = K(sorted[i]);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < n; j++) {
            int c = kv_key_cmp(ks[i], ks[j]);
            int want = i < j ? -1 : (i > j ? 1 : 0);
            ck_assert_msg(sgn(c) == want, "cmp(%s, %s) = %d", sorted[i],
                          sorted[j], c);
        }
    }
    ck_assert_int_lt(kv_key_cmp(K("/a/b"), K("/a-b")), 0);
    ck_assert_int_lt(kv_key_cmp(K("/a-b"), K("/ab")), 0);
    ck_assert_int_eq(kv_key_cmp(K("/a/b"), K("a//b")), 0);
    ck_assert_int_lt(kv_key_cmp(NULL, K("/")), 0);
    ck_assert_int_gt(kv_key_cmp(K("/"), NULL), 0);
    ck_assert_int_eq(kv_key_cmp(NULL, NULL), 0);
}
END_TEST

/* A random key over a small alphabet, so that prefixes are shared often. */
static kv_key *rand_small_key(void)
{
    static const char *vals[] = {"a", "b", "ab", "a-b", "a b", "-",
                                 "\x01", "\xff", "\x80", "b\x01", ""};
    kv_ns ns[5];
    size_t n = rnd(6);
    for (size_t i = 0; i < n; i++) {
        ns[i].field = rnd(3) == 0 ? (char *)vals[rnd(10)] : NULL;
        ns[i].value = (char *)vals[rnd(11)];
    }
    kv_key *k;
    ck_assert_kv(kv_key_from_ns(&k, ns, n), KV_OK);
    return k;
}

#define NRAND 3000
static kv_key *rk[NRAND];
static kv_buf rb[NRAND];

static void rand_setup(void)
{
    rng_seed(1234);
    for (size_t i = 0; i < NRAND; i++) {
        rk[i] = rand_small_key();
        rb[i] = enc(rk[i]);
    }
}

static void rand_teardown(void)
{
    for (size_t i = 0; i < NRAND; i++) {
        kv_key_free(rk[i]);
        kv__free(rb[i].data);
        rk[i] = NULL;
        rb[i].data = NULL;
    }
}

START_TEST(order_total_and_matches_encoding)
{
    /* All pairs among the first 800: antisymmetry, equality, memcmp. */
    for (size_t i = 0; i < 800; i++) {
        for (size_t j = 0; j < 800; j++) {
            int c = kv_key_cmp(rk[i], rk[j]);
            int d = kv_key_cmp(rk[j], rk[i]);
            ck_assert_int_eq(sgn(c), -sgn(d));
            ck_assert_int_eq(sgn(c), buf_cmp(&rb[i], &rb[j]));
            ck_assert_int_eq(c == 0, kv_key_equal(rk[i], rk[j]));
            ck_assert_int_eq(c == 0,
                             strcmp(kv_key_id(rk[i]), kv_key_id(rk[j])) == 0);
        }
    }
    /* Transitivity on random triples. */
    for (int t = 0; t < 20000; t++) {
        kv_key *a = rk[rnd(NRAND)], *b = rk[rnd(NRAND)], *c = rk[rnd(NRAND)];
        if (kv_key_cmp(a, b) <= 0 && kv_key_cmp(b, c) <= 0)
            ck_assert_int_le(kv_key_cmp(a, c), 0);
    }
}
END_TEST

static int qs_key(const void *x, const void *y)
{
    return kv_key_cmp(*(kv_key *const *)x, *(kv_key *const *)y);
}

static int qs_buf(const void *x, const void *y)
{
    return buf_cmp(x, y);
}

START_TEST(order_sort_agrees_with_encoding)
{
    kv_key *byk[NRAND];
    kv_buf byb[NRAND];
    memcpy(byk, rk, sizeof byk);
    memcpy(byb, rb, sizeof byb);
    qsort(byk, NRAND, sizeof byk[0], qs_key);
    qsort(byb, NRAND, sizeof byb[0], qs_buf);
    size_t distinct = 1;
    for (size_t i = 0; i < NRAND; i++) {
        kv_buf e = enc(byk[i]);
        ck_assert_int_eq(buf_cmp(&e, &byb[i]), 0);
        kv__free(e.data);
        if (i > 0) {
            int c = kv_key_cmp(byk[i - 1], byk[i]);
            ck_assert_int_le(c, 0);
            distinct += c != 0;
        }
    }
    /* The sample has both many distinct keys and duplicates. */
    ck_assert_uint_gt(distinct, 500);
    ck_assert_uint_lt(distinct, NRAND);
}
END_TEST

START_TEST(order_parent_before_children)
{
    for (size_t i = 0; i < NRAND; i++) {
        kv_key *p = SENTINEL;
        if (kv_key_len(rk[i]) < 2) {
            ck_assert_kv(kv_key_parent(&p, rk[i]), KV_EINVAL);
            ck_assert_ptr_eq(p, SENTINEL);
            continue;
        }
        ck_assert_kv(kv_key_parent(&p, rk[i]), KV_OK);
        ck_assert_int_lt(kv_key_cmp(p, rk[i]), 0);
        ck_assert(kv_key_is_ancestor(p, rk[i]));
        kv_key_free(p);
    }
}
END_TEST

START_TEST(hash_consistent_with_equal)
{
    size_t collisions = 0, unequal = 0;
    for (size_t i = 0; i < 600; i++) {
        for (size_t j = 0; j < 600; j++) {
            if (kv_key_equal(rk[i], rk[j]))
                ck_assert_uint_eq(kv_key_hash(rk[i]), kv_key_hash(rk[j]));
            else {
                unequal++;
                collisions += kv_key_hash(rk[i]) == kv_key_hash(rk[j]);
            }
        }
    }
    ck_assert_uint_gt(unequal, 0);
    ck_assert_uint_eq(collisions, 0); /* 64 bits, a few thousand keys */
    /* Equal keys built different ways hash the same. */
    kv_key *a = K("/a:b/c"), *b = K(" a:b / c/"), *c, *d;
    ck_assert_kv(kv_key_dup(&c, a), KV_OK);
    const kv_key *parts[2] = {K("/a:b"), K("/c")};
    ck_assert_kv(kv_key_concat(&d, parts, 2), KV_OK);
    ck_assert_uint_eq(kv_key_hash(a), kv_key_hash(b));
    ck_assert_uint_eq(kv_key_hash(a), kv_key_hash(T(c)));
    ck_assert_uint_eq(kv_key_hash(a), kv_key_hash(T(d)));
    ck_assert_uint_ne(kv_key_hash(K("/a/b")), kv_key_hash(K("/a:b")));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Storage encoding                                                         */
/* ------------------------------------------------------------------------ */

START_TEST(encode_bytes)
{
    kv_buf b = enc(K("/a:b/c/\xff"));
    static const unsigned char want[] = {'a', ':', 'b', 0, 'c', 0, 0xff, 0};
    ck_assert_uint_eq(b.len, sizeof want);
    ck_assert_mem_eq(b.data, want, sizeof want);
    kv__free(b.data);
    b = enc(K("/"));
    ck_assert_uint_eq(b.len, 0);
    kv__free(b.data);
}
END_TEST

START_TEST(encode_appends)
{
    kv_buf b = {NULL, 0, 0};
    ck_assert_kv(kv_buf_append(&b, "pre", 3), KV_OK);
    ck_assert_kv(kv__key_encode(K("/x/y"), &b), KV_OK);
    ck_assert_kv(kv__key_encode(K("/z"), &b), KV_OK);
    ck_assert_uint_eq(b.len, 3 + 4 + 2);
    ck_assert_mem_eq(b.data, "prex\0y\0z\0", 9);
    kv__free(b.data);
    ck_assert_kv(kv__key_encode(NULL, &b), KV_EINVAL);
    ck_assert_kv(kv__key_encode(K("/a"), NULL), KV_EINVAL);
}
END_TEST

START_TEST(encode_prefix_property)
{
    for (size_t i = 0; i < NRAND; i++) {
        size_t n = kv_key_len(rk[i]);
        for (size_t m = 0; m <= n; m++) {
            kv_key *s;
            ck_assert_kv(kv_key_slice(&s, rk[i], 0, m), KV_OK);
            kv_buf e = enc(s);
            ck_assert_uint_le(e.len, rb[i].len);
            ck_assert(e.len == 0 || memcmp(e.data, rb[i].data, e.len) == 0);
            kv__free(e.data);
            kv_key_free(s);
        }
    }
    /* And the converse: an encoding prefix means an ancestor (or equal). */
    for (size_t i = 0; i < 500; i++) {
        for (size_t j = 0; j < 500; j++) {
            bool pre = rb[i].len < rb[j].len &&
                       (rb[i].len == 0 ||
                        memcmp(rb[i].data, rb[j].data, rb[i].len) == 0);
            ck_assert_int_eq(pre, kv_key_is_ancestor(rk[i], rk[j]));
        }
    }
}
END_TEST

START_TEST(decode_round_trip)
{
    for (size_t i = 0; i < NRAND; i++) {
        kv_key *d;
        ck_assert_kv(kv__key_decode(&d, rb[i].data, rb[i].len), KV_OK);
        ck_assert_msg(kv_key_equal(d, rk[i]), "%s", kv_key_id(rk[i]));
        kv_key_free(d);
    }
    /* Random bytes, edges of whitespace, many namespaces. */
    rng_seed(99);
    char f[32], v[32];
    for (int i = 0; i < 1000; i++) {
        kv_ns ns[12];
        size_t n = rnd(13), got = 0;
        for (size_t j = 0; j < n; j++) {
            do {
                rand_text(f, 8);
                rand_text(v, 8);
            } while (kv_ns_init(&ns[got], f, v) != KV_OK);
            got++;
        }
        kv_key *k, *d;
        ck_assert_kv(kv_key_from_ns(&k, ns, got), KV_OK);
        for (size_t j = 0; j < got; j++)
            kv_ns_free(&ns[j]);
        kv_buf e = enc(k);
        ck_assert_kv(kv__key_decode(&d, e.data, e.len), KV_OK);
        ck_assert(kv_key_equal(k, d));
        kv__free(e.data);
        kv_key_free(k);
        kv_key_free(d);
    }
}
END_TEST

START_TEST(buf_free_releases_and_resets)
{
    /* A kv_buf filled by the caller is the caller's: kv_buf_free releases
     * its data and leaves an empty buffer, ready for reuse. */
    kv_buf b = {NULL, 0, 0};
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 100; i++)
            ck_assert_kv(kv_buf_append(&b, "0123456789", 10), KV_OK);
        ck_assert_uint_eq(b.len, 1000);
        ck_assert_uint_ge(b.cap, 1000);
        ck_assert_kv(kv__key_encode(K("/a:/b"), &b), KV_OK);
        ck_assert_uint_eq(b.len, 1005);
        kv_buf_free(&b);
        ck_assert_ptr_null(b.data);
        ck_assert_uint_eq(b.len, 0);
        ck_assert_uint_eq(b.cap, 0);
    }
    kv_buf_free(&b); /* again: nothing to free */
    kv_buf_free(NULL);
    kv_buf z = {NULL, 0, 0};
    kv_buf_free(&z);
    ck_assert_ptr_null(z.data);
}
END_TEST

START_TEST(decode_empty_value)
{
    kv_key *d;
    ck_assert_kv(kv__key_decode(&d, "a:\0b\0c:\0", 8), KV_OK);
    ck_assert_str_eq(kv_key_id(T(d)), "/a:/b/c:");
    ck_assert_str_eq(kv_key_value(d), "");
    ck_assert_str_eq(kv_key_field(d), "c");
    kv_buf e = enc(d);
    ck_assert_uint_eq(e.len, 8);
    ck_assert_mem_eq(e.data, "a:\0b\0c:\0", 8);
    kv__free(e.data);
}
END_TEST

START_TEST(decode_empty)
{
    kv_key *d;
    ck_assert_kv(kv__key_decode(&d, NULL, 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(d)), "/");
    ck_assert_kv(kv__key_decode(&d, "", 0), KV_OK);
    ck_assert_str_eq(kv_key_id(T(d)), "/");
}
END_TEST

START_TEST(decode_corrupt)
{
    static const struct {
        const char *b;
        size_t len;
    } bad[] = {
        {"a", 1},           /* no final 0x00 */
        {"a\0b", 3},        /* no final 0x00 */
        {"\0", 1},          /* empty id */
        {"a\0\0", 3},       /* empty id */
        {"\0a\0", 3},       /* empty id */
        {"a:b:c\0", 6},     /* two ':' */
        {"a/b\0", 4},       /* '/' */
        {":a\0", 3},        /* ':' before an empty field: not canonical */
        {":\0", 2},         /* ":" */
        {" a\0", 3},        /* whitespace not stripped */
        {"a \0", 3},        /* ditto */
        {"f :a\0", 5},      /* ditto, in the field */
        {"f: a\0", 5},      /* ditto, in the value */
        {"\t\0", 2},        /* whitespace only */
    };
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_key *d = SENTINEL;
        int rc = kv__key_decode(&d, bad[i].b, bad[i].len);
        ck_assert_msg(rc == KV_ECORRUPT, "#%zu: got %s", i, kv_err_name(rc));
        ck_assert_ptr_eq(d, SENTINEL);
    }
    kv_key *d = SENTINEL;
    ck_assert_kv(kv__key_decode(&d, NULL, 3), KV_EINVAL);
    ck_assert_kv(kv__key_decode(NULL, "a\0", 2), KV_EINVAL);
    ck_assert_ptr_eq(d, SENTINEL);
}
END_TEST

START_TEST(decode_random_bytes_never_crash)
{
    /* Arbitrary byte strings either decode to a key that re-encodes to the
     * same bytes, or fail KV_ECORRUPT. */
    static const char alpha[] = "a:/ \0\0\t\xff";
    rng_seed(5);
    unsigned char b[24];
    int ok = 0;
    for (int i = 0; i < 20000; i++) {
        size_t n = rnd(sizeof b);
        for (size_t j = 0; j < n; j++)
            b[j] = (unsigned char)alpha[rnd(sizeof alpha - 1)];
        kv_key *d = SENTINEL;
        int rc = kv__key_decode(&d, b, n);
        if (rc == KV_ECORRUPT) {
            ck_assert_ptr_eq(d, SENTINEL);
            continue;
        }
        ck_assert_kv(rc, KV_OK);
        ok++;
        kv_buf e = enc(d);
        ck_assert_uint_eq(e.len, n);
        ck_assert(n == 0 || memcmp(e.data, b, n) == 0);
        kv__free(e.data);
        kv_key_free(d);
    }
    ck_assert_int_gt(ok, 100);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Allocation failure                                                       */
/* ------------------------------------------------------------------------ */

/* Inputs shared by the operations below, made before failures start. */
static kv_key *in_a, *in_b, *in_long, *in_anc;
static kv_buf in_enc;
static char in_path[2048];

static void alloc_setup(void)
{
    track_setup();
    size_t l = 0;
    for (int i = 0; i < 40; i++)
        l += (size_t)snprintf(in_path + l, sizeof in_path - l, "/f%d:v%d", i,
                              i);
    in_a = K("/a:b/c/d:e");
    in_b = K("/x/y");
    in_long = K(in_path);
    in_anc = K("/f0:v0/f1:v1");
    in_enc = enc(in_long);
}

static void alloc_teardown(void)
{
    kv__free(in_enc.data);
    in_enc.data = NULL;
    track_teardown();
}

/* Each runs one operation, checks *out untouched on failure, frees on
 * success, and returns the status. */
#define KEY_OP(name, call)                                                     \
    static int name(void)                                                      \
    {                                                                          \
        kv_key *out = SENTINEL;                                                \
        int rc = (call);                                                       \
        if (rc == KV_OK) {                                                     \
            ck_assert_ptr_ne(out, SENTINEL);                                   \
            kv_key_free(out);                                                  \
        } else {                                                               \
            ck_assert_ptr_eq(out, SENTINEL);                                   \
        }                                                                      \
        return rc;                                                             \
    }

KEY_OP(op_parse, kv_key_parse(&out, "/a:b/c/d:e"))
KEY_OP(op_parse_long, kv_key_parse(&out, in_path))
KEY_OP(op_child_str, kv_key_child_str(&out, in_a, "x/y:z"))
KEY_OP(op_child_str_long, kv_key_child_str(&out, in_long, in_path))
KEY_OP(op_child_key, kv_key_child_key(&out, in_a, in_long))
static int concat3(kv_key **out)
{
    const kv_key *ks[3] = {in_a, in_b, in_long};
    return kv_key_concat(out, ks, 3);
}

KEY_OP(op_concat, concat3(&out))
KEY_OP(op_dup, kv_key_dup(&out, in_long))
KEY_OP(op_slice, kv_key_slice(&out, in_long, 3, 30))
KEY_OP(op_parent, kv_key_parent(&out, in_long))
KEY_OP(op_path, kv_key_path(&out, in_long))
KEY_OP(op_reverse, kv_key_reverse(&out, in_long))
KEY_OP(op_relative, kv_key_relative(&out, in_long, in_anc))
KEY_OP(op_decode, kv__key_decode(&out, in_enc.data, in_enc.len))
KEY_OP(op_from_ns, kv_key_from_ns(&out, kv_key_ns(in_long, 0),
                                  kv_key_len(in_long)))
KEY_OP(op_child_ns, kv_key_child(&out, in_long, kv_key_ns(in_a, 0),
                                 kv_key_len(in_a)))

static int op_ns_parse(void)
{
    kv_ns ns = {(char *)"x", (char *)"y"};
    int rc = kv_ns_parse(&ns, " f : v ");
    if (rc == KV_OK)
        kv_ns_free(&ns);
    else
        ck_assert_str_eq(ns.value, "y");
    return rc;
}

static int op_ns_init(void)
{
    kv_ns ns = {(char *)"x", (char *)"y"};
    int rc = kv_ns_init(&ns, "f", "v");
    if (rc == KV_OK)
        kv_ns_free(&ns);
    else
        ck_assert_str_eq(ns.value, "y");
    return rc;
}

static int op_ns_id(void)
{
    char *id = kv_ns_id(kv_key_ns(in_a, 0));
    if (id == NULL)
        return KV_ENOMEM;
    ck_assert_str_eq(id, "a:b");
    kv__free(id);
    return KV_OK;
}

static int op_encode(void)
{
    kv_buf b = {NULL, 0, 0};
    int rc = kv_buf_append(&b, "x", 1);
    if (rc != KV_OK)
        return rc;
    size_t len = b.len;
    rc = kv__key_encode(in_long, &b);
    if (rc != KV_OK)
        ck_assert_uint_eq(b.len, len); /* nothing half-appended */
    else
        ck_assert_uint_eq(b.len, len + in_enc.len);
    kv__free(b.data);
    return rc;
}

static const struct {
    const char *name;
    int (*fn)(void);
} alloc_ops[] = {
    {"parse", op_parse},         {"parse_long", op_parse_long},
    {"child_str", op_child_str}, {"child_str_long", op_child_str_long},
    {"child_key", op_child_key}, {"concat", op_concat},
    {"dup", op_dup},             {"slice", op_slice},
    {"parent", op_parent},       {"path", op_path},
    {"reverse", op_reverse},     {"relative", op_relative},
    {"decode", op_decode},       {"from_ns", op_from_ns},
    {"child_ns", op_child_ns},   {"ns_parse", op_ns_parse},
    {"ns_init", op_ns_init},     {"ns_id", op_ns_id},
    {"encode", op_encode},
};

/*
 * Fail the 1st, 2nd, ... allocation of the operation (once, then sticky)
 * until it makes fewer allocations than that: every failure must give
 * KV_ENOMEM with nothing leaked (ASan / valgrind check the leaks).
 */
START_TEST(alloc_failures)
{
    for (int sticky = 0; sticky <= 1; sticky++) {
        unsigned long nth;
        for (nth = 1; nth < 100; nth++) {
            kv__alloc_fail_at(nth, sticky);
            int rc = alloc_ops[_i].fn();
            unsigned long used = kv__alloc_fail_at(0, false);
            if (used < nth) {
                ck_assert_msg(rc == KV_OK, "%s: no failure injected, got %s",
                              alloc_ops[_i].name, kv_err_name(rc));
                break;
            }
            ck_assert_msg(rc == KV_ENOMEM, "%s: allocation %lu failed, got %s",
                          alloc_ops[_i].name, nth, kv_err_name(rc));
        }
        ck_assert_msg(nth > 1, "%s allocates nothing?", alloc_ops[_i].name);
        ck_assert_msg(nth < 100, "%s never finished", alloc_ops[_i].name);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *key_suite(void)
{
    Suite *s = suite_create("key");
    TCase *tc;

    tc = tcase_create("namespaces");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_test(tc, ns_parse_field_value);
    tcase_add_test(tc, ns_parse_value_only);
    tcase_add_test(tc, ns_parse_strips_whitespace);
    tcase_add_test(tc, ns_parse_empty_field);
    tcase_add_test(tc, ns_parse_invalid);
    tcase_add_test(tc, ns_parse_errmsg_names_input);
    tcase_add_test(tc, ns_parse_empty_value);
    tcase_add_test(tc, ns_parse_empty_namespace);
    tcase_add_test(tc, ns_parse_null);
    tcase_add_test(tc, ns_parse_high_and_control_bytes);
    tcase_add_test(tc, ns_init_parts);
    tcase_add_test(tc, ns_init_invalid);
    tcase_add_test(tc, ns_free_zeroes_and_null_safe);
    tcase_add_test(tc, ns_id_forms);
    tcase_add_test(tc, ns_id_round_trip);
    suite_add_tcase(s, tc);

    tc = tcase_create("parsing");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, parse_structure);
    tcase_add_test(tc, parse_empty_key);
    tcase_add_test(tc, parse_drops_empty_segments);
    tcase_add_test(tc, parse_empty_values);
    tcase_add_test(tc, parse_strips_fields_and_values);
    tcase_add_test(tc, parse_invalid);
    tcase_add_test(tc, parse_errmsg);
    tcase_add_test(tc, parse_null);
    tcase_add_test(tc, parse_high_and_control_bytes);
    tcase_add_test(tc, parse_many_namespaces);
    tcase_add_test(tc, parse_id_round_trip_random_ns);
    tcase_add_test(tc, parse_random_paths_match_model);
    suite_add_tcase(s, tc);

    tc = tcase_create("accessors");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_test(tc, accessors_basic);
    tcase_add_test(tc, accessors_views_are_stable);
    tcase_add_test(tc, accessors_null);
    tcase_add_test(tc, slice_ranges);
    tcase_add_test(tc, slice_invalid);
    suite_add_tcase(s, tc);

    tc = tcase_create("navigation");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_test(tc, nav_is_root);
    tcase_add_test(tc, nav_parent);
    tcase_add_test(tc, nav_parent_invalid);
    tcase_add_test(tc, nav_path);
    tcase_add_test(tc, nav_path_invalid);
    tcase_add_test(tc, nav_reverse);
    suite_add_tcase(s, tc);

    tc = tcase_create("building");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_test(tc, build_from_ns);
    tcase_add_test(tc, build_empty_values_and_namespaces);
    tcase_add_test(tc, build_from_ns_invalid);
    tcase_add_test(tc, build_concat);
    tcase_add_test(tc, build_concat_invalid);
    tcase_add_test(tc, build_dup);
    tcase_add_test(tc, build_child_ns);
    tcase_add_test(tc, build_child_ns_invalid);
    tcase_add_test(tc, build_child_key);
    tcase_add_test(tc, build_child_str);
    tcase_add_test(tc, build_random);
    suite_add_tcase(s, tc);

    tc = tcase_create("relationships");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_test(tc, rel_relative);
    tcase_add_test(tc, rel_relative_invalid);
    tcase_add_test(tc, rel_ancestor_descendant);
    tcase_add_test(tc, rel_equal);
    suite_add_tcase(s, tc);

    tc = tcase_create("ordering_hash");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_checked_fixture(tc, rand_setup, rand_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, order_documented);
    tcase_add_test(tc, order_total_and_matches_encoding);
    tcase_add_test(tc, order_sort_agrees_with_encoding);
    tcase_add_test(tc, order_parent_before_children);
    tcase_add_test(tc, hash_consistent_with_equal);
    suite_add_tcase(s, tc);

    tc = tcase_create("encoding");
    tcase_add_checked_fixture(tc, track_setup, track_teardown);
    tcase_add_checked_fixture(tc, rand_setup, rand_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, encode_bytes);
    tcase_add_test(tc, encode_appends);
    tcase_add_test(tc, encode_prefix_property);
    tcase_add_test(tc, decode_round_trip);
    tcase_add_test(tc, decode_empty);
    tcase_add_test(tc, decode_empty_value);
    tcase_add_test(tc, buf_free_releases_and_resets);
    tcase_add_test(tc, decode_corrupt);
    tcase_add_test(tc, decode_random_bytes_never_crash);
    suite_add_tcase(s, tc);

    tc = tcase_create("alloc_failure");
    tcase_add_checked_fixture(tc, alloc_setup, alloc_teardown);
    /* A few ms each, but check's 4 s default expired for five in a row
     * under ASan on a machine loaded to 8-10 (a suite and a TSan build
     * beside it). */
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, alloc_failures, 0, (int)KV__ARRAY_SIZE(alloc_ops));
    suite_add_tcase(s, tc);

    return s;
}

int main(void)
{
    return tu_run(key_suite());
}
