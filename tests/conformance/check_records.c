/*
 * check_records.c - the conformance suite, group "records": single-record
 * operations: put, get and has, the token rules of put and delete, bad
 * arguments, cancelling and freeing pending futures, unconditional put and
 * delete (KV_TOKEN_ANY).
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Single-record operations                                                 */
/* ======================================================================== */

START_TEST(test_put_get_has)
{
    OPEN(c);
    ck_assert_str_eq(kv_store_backend(c->s),
                     strncmp(c->b->name, "sqlite", 6) == 0 ? "sqlite"
                     : strncmp(c->b->name, "model", 5) == 0 ? "model"
                     : strncmp(c->b->name, "fs", 2) == 0    ? "fs"
                     /* redis-auth, rediss: "redis"; rediss-cluster */
                     : strstr(c->b->name, "cluster") != NULL ? "redis-cluster"
                                                             : "redis");
    ck_assert(!has_(c, "/a"));
    uint64_t t = PUT(c, "/a", "hello", 0);
    ck_assert_uint_eq(GET(c, "/a", "hello"), t);
    ck_assert(has_(c, "/a"));
    ck_assert(!has_(c, "/a/b"));
    ck_assert(!has_(c, "/b"));
    /* Empty values are values. */
    PUT(c, "/e", "", 0);
    GET(c, "/e", "");
    /* KV_ENOTFOUND names the key. */
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/missing/key"), NULL), KV_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/missing/key"));
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert(kv_err_is(kv_fut_status(f), KV_EBACKEND));
    kv_fut_free(f);
    /* put_value: insert only. */
    const char *v = "xyz";
    EXPECT(kv_put_value(c->s, K(c, "/pv"), v, 3, NULL), KV_OK);
    GET(c, "/pv", "xyz");
    EXPECT(kv_put_value(c->s, K(c, "/pv"), v, 2, NULL), KV_ECONFLICT);
    GET(c, "/pv", "xyz");
    ctx_done(c);
}
END_TEST

START_TEST(test_put_tokens)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/k", "v1", 0);
    /* correct token: replaces, new token */
    uint64_t t2 = PUT(c, "/k", "v2", t1);
    ck_assert_uint_ne(t1, t2);
    ck_assert_uint_eq(GET(c, "/k", "v2"), t2);
    /* stale token */
    kv_fut *f = AWAIT(
        kv_put(c->s, &(kv_record){K(c, "/k"), "v3", 2, t1}, NULL),
        KV_ECONFLICT);
    ck_assert_uint_eq(kv_fut_token(f), 0);
    ck_assert(kv_err_is(kv_fut_status(f), KV_ERROR));
    kv_fut_free(f);
    /* token 0 on an existing key */
    PUT_FAILS(c, "/k", "v3", 0, KV_ECONFLICT);
    GET(c, "/k", "v2");
    /* a non-zero token on a missing key */
    PUT_FAILS(c, "/nokey", "v", t2, KV_ECONFLICT);
    PUT_FAILS(c, "/nokey", "v", 12345, KV_ECONFLICT);
    GET(c, "/nokey", NULL);
    ctx_done(c);
}
END_TEST

START_TEST(test_delete_tokens)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/d", "v1", 0);
    uint64_t t2 = PUT(c, "/d", "v2", t1);
    EXPECT(kv_delete(c->s, K(c, "/d"), t1), KV_ECONFLICT); /* stale */
    EXPECT(kv_delete(c->s, K(c, "/d"), 0), KV_ECONFLICT);  /* zero */
    GET(c, "/d", "v2");
    EXPECT(kv_delete(c->s, K(c, "/d"), t2), KV_OK);
    ck_assert(!has_(c, "/d"));
    EXPECT(kv_delete(c->s, K(c, "/d"), t2), KV_ECONFLICT); /* missing */
    EXPECT(kv_delete(c->s, K(c, "/never"), 1), KV_ECONFLICT);
    EXPECT(kv_delete(c->s, K(c, "/never"), 0), KV_ECONFLICT);
    ctx_done(c);
}
END_TEST

START_TEST(test_bad_arguments)
{
    OPEN(c);
    kv_key *root = K(c, "/");
    kv_store *s = c->s;
    ck_assert_uint_eq(kv_key_len(root), 0);
    EXPECT(kv_has(s, root), KV_EINVAL);
    EXPECT(kv_has(s, NULL), KV_EINVAL);
    EXPECT(kv_get(s, root, NULL), KV_EINVAL);
    EXPECT(kv_get(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, root, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, NULL, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, K(c, "/a"), NULL, 3, NULL), KV_EINVAL);
    EXPECT(kv_put(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_delete(s, root, 1), KV_EINVAL);
    EXPECT(kv_delete(s, NULL, 1), KV_EINVAL);
    /* NULL arrays with n > 0; and with n == 0, a valid empty batch */
    EXPECT(kv_has_many(s, NULL, 2), KV_EINVAL);
    EXPECT(kv_get_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_put_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_delete_many(s, NULL, 1), KV_EINVAL);
    EXPECT(kv_drop_prefix(s, NULL, 1), KV_EINVAL);
    kv_fut *f = AWAIT(kv_has_many(s, NULL, 0), KV_OK);
    size_t n = 99;
    ck_assert_ptr_null(kv_fut_keys(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    f = AWAIT(kv_get_many(s, NULL, 0, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    EXPECT(kv_put_many(s, NULL, 0, NULL), KV_OK);
    EXPECT(kv_delete_many(s, NULL, 0), KV_OK);
    EXPECT(kv_drop_prefix(s, NULL, 0), KV_OK);
    /* a NULL or empty key inside a batch, with the index in the message */
    const kv_key *ks[] = {K(c, "/a"), NULL};
    f = AWAIT(kv_has_many(s, ks, 2), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "[1]"));
    kv_fut_free(f);
    kv_record rs[] = {{K(c, "/a"), "x", 1, 0}, {root, "y", 1, 0}};
    EXPECT(kv_put_many(s, rs, 2, NULL), KV_EINVAL);
    ck_assert(!has_(c, "/a"));
    /* codecs lacking what the call needs */
    kv_codec noenc = {NULL, p_decode, p_free, NULL};
    kv_codec nodec = {p_encode, NULL, p_free, NULL};
    person p = {"x", 1};
    EXPECT(kv_put_value(s, K(c, "/a"), &p, 0, &noenc), KV_EINVAL);
    EXPECT(kv_get(s, K(c, "/a"), &nodec), KV_EINVAL);
    /* a NULL store: still a future, never NULL */
    f = kv_get(NULL, K(c, "/a"), NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    EXPECT(kv_close(NULL), KV_EINVAL);
    ck_assert(!kv_supports_atomic_batch(NULL));
    kv_store_free(NULL);
    ctx_done(c);
}
END_TEST

START_TEST(test_cancel_and_free_pending)
{
    OPEN(c);
    PUT(c, "/a", "v", 0);
    /* A cancelled read completes KV_ECANCELED, exactly once. */
    kv_fut *f = kv_get(c->s, K(c, "/a"), NULL);
    kv_fut_cancel(f);
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    /* Freeing pending futures is safe; the work goes on. */
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "/f/%d", i);
        kv_fut_free(kv_put_value(c->s, K(c, key), "v", 1, NULL));
        kv_fut_free(kv_get(c->s, K(c, "/a"), NULL));
    }
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "/f/%d", i);
        GET(c, key, "v");
    }
    /* A cancelled write either happened or not, never half. */
    f = kv_put_value(c->s, K(c, "/cw"), "whole", 5, NULL);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    f = kv_get(c->s, K(c, "/cw"), NULL);
    int rc = kv_wait(f);
    ck_assert(rc == KV_ENOTFOUND ||
              (rc == KV_OK && val_is(kv_fut_record(f), "whole")));
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST


/* ======================================================================== */
/* Unconditional writes (KV_TOKEN_ANY)                                      */
/* ======================================================================== */

/* A put of key=val with KV_TOKEN_ANY: its token (asserted real). */
static uint64_t put_any(tctx *c, const char *key, const char *val)
{
    kv_fut *f = AWAIT(kv_put(c->s,
                             &(kv_record){K(c, key), (void *)val, strlen(val),
                                          KV_TOKEN_ANY},
                             NULL),
                      KV_OK);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    ck_assert_uint_ne(t, 0);
    ck_assert_uint_ne(t, KV_TOKEN_ANY);
    return t;
}

START_TEST(test_put_any)
{
    OPEN(c);
    /* over a missing key: inserts */
    uint64_t t1 = put_any(c, "/u", "v1");
    ck_assert_uint_eq(GET(c, "/u", "v1"), t1);
    /* over an existing record, whatever its token: replaces */
    uint64_t t2 = put_any(c, "/u", "v2");
    ck_assert_uint_ne(t2, t1);
    ck_assert_uint_eq(GET(c, "/u", "v2"), t2);
    /* the token it returned is good for the next CAS; the old one is not */
    PUT_FAILS(c, "/u", "v3", t1, KV_ECONFLICT);
    uint64_t t3 = PUT(c, "/u", "v3", t2);
    ck_assert_uint_eq(GET(c, "/u", "v3"), t3);
    /* and for a CAS delete */
    uint64_t t4 = put_any(c, "/u", "v4");
    EXPECT(kv_delete(c->s, K(c, "/u"), t4), KV_OK);
    GET(c, "/u", NULL);
    /* the empty value, and put_value is still insert-only */
    put_any(c, "/e", "");
    GET(c, "/e", "");
    EXPECT(kv_put_value(c->s, K(c, "/e"), "x", 1, NULL), KV_ECONFLICT);
    /* typed: the encoding is written unconditionally as well */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person ann = {"ann", 30}, bob = {"bob", 40};
    EXPECT(kv_put(c->s, &(kv_record){K(c, "/p"), &ann, 0, KV_TOKEN_ANY},
                  &codec),
           KV_OK);
    kv_fut *f = AWAIT(kv_put(c->s,
                             &(kv_record){K(c, "/p"), &bob, 0, KV_TOKEN_ANY},
                             &codec),
                      KV_OK);
    uint64_t tp = kv_fut_token(f);
    kv_fut_free(f);
    ck_assert_uint_eq(GET(c, "/p", "bob:40"), tp);
    f = AWAIT(kv_get(c->s, K(c, "/p"), &codec), KV_OK);
    const person *got = kv_fut_record(f)->val;
    ck_assert_str_eq(got->name, "bob");
    ck_assert_uint_eq(kv_fut_record(f)->token, tp);
    kv_fut_free(f);
    ck_assert_int_eq(atomic_load(&pc.live), 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_delete_any)
{
    OPEN(c);
    PUT(c, "/d", "v1", 0);
    uint64_t t = PUT(c, "/d", "v2", GET(c, "/d", "v1"));
    (void)t;
    /* an existing record: removed, kv_fut_bool true */
    kv_fut *f = AWAIT(kv_delete(c->s, K(c, "/d"), KV_TOKEN_ANY), KV_OK);
    ck_assert(kv_fut_bool(f));
    kv_fut_free(f);
    GET(c, "/d", NULL);
    /* a missing key: no conflict, kv_fut_bool false */
    f = AWAIT(kv_delete(c->s, K(c, "/d"), KV_TOKEN_ANY), KV_OK);
    ck_assert(!kv_fut_bool(f));
    kv_fut_free(f);
    f = AWAIT(kv_delete(c->s, K(c, "/never/there"), KV_TOKEN_ANY), KV_OK);
    ck_assert(!kv_fut_bool(f));
    kv_fut_free(f);
    /* the key is free again: an insert-only put succeeds */
    PUT(c, "/d", "v3", 0);
    GET(c, "/d", "v3");
    /* a CAS delete's result has no bool */
    f = AWAIT(kv_delete(c->s, K(c, "/d"), GET(c, "/d", "v3")), KV_OK);
    kv_fut_free(f);
    GET(c, "/d", NULL);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_put_get_has, test_put_tokens,
                            test_delete_tokens, test_bad_arguments,
                            test_cancel_and_free_pending, test_put_any,
                            test_delete_any};
    return tu_conformance_run("records", tests, sizeof tests / sizeof tests[0]);
}
