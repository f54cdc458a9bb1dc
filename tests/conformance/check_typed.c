/*
 * check_typed.c - the conformance suite, group "typed": typed records
 * through a codec: the round trip and the codec failures.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Typed records                                                            */
/* ======================================================================== */

START_TEST(test_typed_roundtrip)
{
    OPEN(c);
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person alice = {"alice", 30}, bob = {"bob", 41};
    kv_fut *f = AWAIT(kv_put_value(c->s, K(c, "/p/alice"), &alice, 0, &codec),
                      KV_OK);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    /* raw bytes are the encoding */
    GET(c, "/p/alice", "alice:30");
    f = AWAIT(kv_get(c->s, K(c, "/p/alice"), &codec), KV_OK);
    const kv_record *r = kv_fut_record(f);
    const person *p = r->val;
    ck_assert_str_eq(p->name, "alice");
    ck_assert_int_eq(p->age, 30);
    ck_assert_uint_eq(r->len, 0);
    ck_assert_uint_eq(r->token, t);
    ck_assert_int_eq(pc.live, 1);
    /* a typed result's dup keeps key and token only */
    kv_record *d = kv_record_dup(r);
    ck_assert_ptr_null(d->val);
    ck_assert_uint_eq(d->token, t);
    kv_record_free(d);
    kv_fut_free(f);
    ck_assert_int_eq(pc.live, 0);
    /* typed put with CAS, put_many, get_many */
    alice.age = 31;
    EXPECT(kv_put(c->s, &(kv_record){K(c, "/p/alice"), &alice, 0, t}, &codec),
           KV_OK);
    kv_record recs[] = {{K(c, "/p/bob"), &bob, 0, 0}};
    f = AWAIT(kv_put_many(c->s, recs, 1, &codec), KV_OK);
    kv_fut_free(f);
    const kv_key *keys[] = {K(c, "/p/alice"), K(c, "/p/bob"), K(c, "/p/x")};
    f = AWAIT(kv_get_many(c->s, keys, 3, &codec), KV_OK);
    size_t n = 0;
    r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    int ages = 0;
    for (size_t i = 0; i < n; i++)
        ages += ((const person *)r[i].val)->age;
    ck_assert_int_eq(ages, 31 + 41);
    kv_fut_free(f);
    /* typed query, by next and fetch_all */
    kv_query q = kv_query_init(K(c, "/p"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_str_eq(((const person *)kv_fut_record(f)->val)->name, "alice");
    kv_fut_free(f);
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(((const person *)r[0].val)->name, "bob");
    kv_fut_free(f);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    ctx_done(c);
    ck_assert_int_eq(pc.live, 0);
}
END_TEST

START_TEST(test_typed_failures)
{
    OPEN(c);
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    PUT(c, "/t/good", "carol:22", 0);
    PUT(c, "/t/zbad", "BAD bytes", 0);
    /* decode failure: the codec's code */
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/t/zbad"), &codec), KV_ECORRUPT);
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/t/zbad"));
    kv_fut_free(f);
    const kv_key *keys[] = {K(c, "/t/good"), K(c, "/t/zbad")};
    EXPECT(kv_get_many(c->s, keys, 2, &codec), KV_ECORRUPT);
    ck_assert_int_eq(pc.live, 0); /* the good one, decoded, was freed */
    kv_query q = kv_query_init(K(c, "/t"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    EXPECT(kv_iter_next(it), KV_ECORRUPT);
    kv_iter_free(it);
    of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_fetch_all(it), KV_ECORRUPT);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    /* encode failure: the codec's code, nothing written */
    person neg = {"neg", -1}, ok = {"ok", 1};
    EXPECT(kv_put_value(c->s, K(c, "/t/neg"), &neg, 0, &codec), KV_ERROR);
    GET(c, "/t/neg", NULL);
    kv_record recs[] = {{K(c, "/t/ok"), &ok, 0, 0},
                        {K(c, "/t/neg"), &neg, 0, 0}};
    EXPECT(kv_put_many(c->s, recs, 2, &codec), KV_ERROR);
    GET(c, "/t/ok", NULL);
    ctx_done(c);
    ck_assert_int_eq(pc.live, 0);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_typed_roundtrip, test_typed_failures};
    return tu_conformance_run("typed", tests, sizeof tests / sizeof tests[0]);
}
