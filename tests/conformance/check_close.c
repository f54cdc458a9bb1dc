/*
 * check_close.c - the conformance suite, group "close": close:
 * idempotent, operations after close, close with work in flight and with
 * an undisposed iterator.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Close                                                                    */
/* ======================================================================== */

START_TEST(test_close_idempotent)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_fut *a = kv_close(c->s);
    kv_fut *b = kv_close(c->s);
    ck_assert_kv(kv_wait(b), KV_OK);
    ck_assert_kv(kv_wait(a), KV_OK);
    kv_fut_free(a);
    kv_fut_free(b);
    EXPECT(kv_close(c->s), KV_OK); /* after the close completed */
    kv_store_free(c->s);
    c->s = NULL;
    /* kv_store_free on an open store closes it */
    ck_assert_kv(c->b->open(&c->s, c->loop, c->pool, tmpdir, 0), KV_OK);
    kv_fut_free(kv_put_value(c->s, K(c, "/y"), "v", 1, NULL));
    kv_store_free(c->s);
    c->s = NULL;
    ctx_done(c);
}
END_TEST

START_TEST(test_ops_after_close)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_store *s = c->s;
    EXPECT(kv_close(s), KV_OK);
    const kv_key *k = K(c, "/x");
    const kv_key *ks[] = {k};
    kv_record rec = {K(c, "/x"), "v", 1, 0};
    kv_query q = kv_query_init(k);
    producer p = {c, 0, "v", NULL, NULL, NULL, NULL, false};
    /* KV_ECLOSED before every other error, bad arguments included */
    EXPECT(kv_has(s, k), KV_ECLOSED);
    EXPECT(kv_has(s, NULL), KV_ECLOSED);
    EXPECT(kv_has_many(s, ks, 1), KV_ECLOSED);
    EXPECT(kv_get(s, k, NULL), KV_ECLOSED);
    EXPECT(kv_get_many(s, NULL, 3, NULL), KV_ECLOSED);
    EXPECT(kv_put(s, &rec, NULL), KV_ECLOSED);
    EXPECT(kv_put(s, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_put_value(s, k, "v", 1, NULL), KV_ECLOSED);
    EXPECT(kv_put_many(s, &rec, 1, NULL), KV_ECLOSED);
    EXPECT(kv_delete(s, k, 1), KV_ECLOSED);
    EXPECT(kv_delete_many(s, &rec, 1), KV_ECLOSED);
    EXPECT(kv_put_atomic(s, &rec, 1, NULL), KV_ECLOSED);
    EXPECT(kv_delete_atomic(s, &rec, 1), KV_ECLOSED);
    EXPECT(kv_move_prefix_atomic(s, ks, ks, 1), KV_ECLOSED);
    EXPECT(kv_drop_prefix(s, ks, 1), KV_ECLOSED);
    EXPECT(kv_query_open(s, &q, NULL), KV_ECLOSED);
    EXPECT(kv_query_open(s, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_put(s, &rec, 1, 3, NULL, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_delete(s, &rec, 1, 0, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_put_atomic(s, &rec, 1, 3, NULL, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_delete_atomic(s, &rec, 1, 3, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_get_or_put(s, k, produce, &p, 3, NULL), KV_ECLOSED);
    ck_assert_int_eq(p.calls, 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_close_inflight)
{
    OPEN(c);
    PUT(c, "/base", "v", 0);
    enum { N = 60 };
    counted cs[N + 4];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "/cf/%d", i);
        kv_fut *f = i % 3 == 0   ? kv_get(c->s, K(c, "/base"), NULL)
                    : i % 3 == 1 ? kv_put_value(c->s, K(c, id), "v", 1, NULL)
                                 : kv_has(c->s, K(c, id));
        ck_assert_int_eq(kv_fut_then(f, on_count, &cs[i]), KV_OK);
    }
    kv_query q = kv_query_init(K(c, "/"));
    kv_fut_then(kv_query_open(c->s, &q, NULL), on_count, &cs[N]);
    kv_record rec = {K(c, "/cf/x"), "v", 1, 0};
    kv_fut_then(kv_try_put(c->s, &rec, 1, 3, NULL, NULL, NULL), on_count,
                &cs[N + 1]);
    producer p = {c, 0, "v", NULL, NULL, NULL, NULL, false};
    kv_fut_then(kv_get_or_put(c->s, K(c, "/cf/g"), produce, &p, 3, NULL),
                on_count, &cs[N + 2]);
    kv_fut *cf = kv_close(c->s);
    ck_assert_kv(kv_wait(cf), KV_OK);
    kv_fut_free(cf);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    int canceled = 0;
    for (int i = 0; i < N + 3; i++) {
        ck_assert_msg(cs[i].calls == 1, "future %d completed %d times", i,
                      cs[i].calls);
        ck_assert_msg(cs[i].status == KV_OK || cs[i].status == KV_ECANCELED ||
                          cs[i].status == KV_ECLOSED,
                      "future %d: %s", i, kv_err_name(cs[i].status));
        canceled += cs[i].status != KV_OK;
    }
    (void)canceled;
    ctx_done(c);
}
END_TEST

START_TEST(test_close_undisposed_iter)
{
    OPEN(c);
    const char *ks[] = {"/u/1", "/u/2", "/u/3", "/u/4", "/u/5"};
    put_all(c, ks, 5);
    kv_query q = kv_query_init(K(c, "/u"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it2 = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    kv_fut *pending = kv_iter_next(it2);
    EXPECT(kv_close(c->s), KV_OK);
    int rc = kv_wait(pending);
    ck_assert(rc == KV_OK || rc == KV_ECANCELED);
    kv_fut_free(pending);
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_fetch_all(it), KV_EITER);
    ck_assert(!kv_iter_finished(it));
    EXPECT(kv_iter_dispose(it), KV_OK);
    kv_iter_free(it);
    kv_store_free(c->s);
    c->s = NULL;
    /* an iterator may outlive its store's handle */
    EXPECT(kv_iter_next(it2), KV_EITER);
    kv_iter_free(it2);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_close_idempotent, test_ops_after_close,
                            test_close_inflight, test_close_undisposed_iter};
    return tu_conformance_run("close", tests, sizeof tests / sizeof tests[0]);
}
