/*
 * check_durability.c - the conformance suite, group "durability": tokens
 * never repeat, data persists across reopen, read-only stores.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

#include <inttypes.h>

/* ======================================================================== */
/* Tokens, persistence, read-only                                           */
/* ======================================================================== */

static bool seen(const uint64_t *ts, size_t n, uint64_t t)
{
    for (size_t i = 0; i < n; i++)
        if (ts[i] == t)
            return true;
    return false;
}

START_TEST(test_tokens_never_repeat)
{
    OPEN(c);
    uint64_t ts[256];
    size_t n = 0;
    for (int round = 0; round < (c->b->reopenable ? 2 : 1); round++) {
        for (int i = 0; i < 20; i++) {
            uint64_t t = PUT(c, "/tok", "v", 0);
            ck_assert_msg(!seen(ts, n, t), "token %" PRIu64 " repeated", t);
            ts[n++] = t;
            uint64_t t2 = PUT(c, "/tok", "w", t);
            ck_assert_msg(!seen(ts, n, t2), "token %" PRIu64 " repeated", t2);
            ts[n++] = t2;
            EXPECT(kv_delete(c->s, K(c, "/tok"), t2), KV_OK);
        }
        if (c->b->reopenable)
            ctx_reopen(c, 0);
    }
    ctx_done(c);
}
END_TEST

START_TEST(test_persistence)
{
    OPEN(c);
    if (!c->b->reopenable) {
        ctx_done(c);
        return;
    }
    uint64_t t = PUT(c, "/p/a", "persist", 0);
    PUT(c, "/p/b", "", 0);
    kv_record recs[] = {{K(c, "/p/c/1"), "c1", 2, 0}, {K(c, "/p/c/2"), "c2", 2, 0}};
    EXPECT(kv_put_many(c->s, recs, 2, NULL), KV_OK);
    ctx_reopen(c, 0);
    ck_assert_uint_eq(GET(c, "/p/a", "persist"), t);
    GET(c, "/p/b", "");
    GET(c, "/p/c/2", "c2");
    char ids[8][64];
    kv_query q = kv_query_init(K(c, "/p"));
    ck_assert_uint_eq(query_ids(c, &q, ids, 8), 4);
    /* a write after reopen works with the token from before */
    PUT(c, "/p/a", "again", t);
    ctx_done(c);
}
END_TEST

START_TEST(test_readonly)
{
    OPEN(c);
    if (!c->b->reopenable) {
        ctx_done(c);
        return;
    }
    uint64_t t = PUT(c, "/ro", "v", 0);
    ctx_reopen(c, KV_READONLY);
    GET(c, "/ro", "v");
    ck_assert(has_(c, "/ro"));
    kv_record rec = {K(c, "/ro"), "w", 1, t};
    const kv_key *ks[] = {K(c, "/ro")};
    const kv_key *to[] = {K(c, "/ro2")};
    EXPECT(kv_put(c->s, &rec, NULL), KV_EREADONLY);
    EXPECT(kv_put_value(c->s, K(c, "/new"), "v", 1, NULL), KV_EREADONLY);
    EXPECT(kv_put_many(c->s, &rec, 1, NULL), KV_EREADONLY);
    EXPECT(kv_delete(c->s, K(c, "/ro"), t), KV_EREADONLY);
    EXPECT(kv_delete_many(c->s, &rec, 1), KV_EREADONLY);
    EXPECT(kv_put_atomic(c->s, &rec, 1, NULL), KV_EREADONLY);
    EXPECT(kv_delete_atomic(c->s, &rec, 1), KV_EREADONLY);
    EXPECT(kv_move_prefix_atomic(c->s, ks, to, 1), KV_EREADONLY);
    EXPECT(kv_drop_prefix(c->s, ks, 1), KV_EREADONLY);
    EXPECT(kv_try_put(c->s, &rec, 1, 3, NULL, NULL, NULL), KV_EREADONLY);
    EXPECT(kv_put(c->s, NULL, NULL), KV_EREADONLY); /* before EINVAL */
    GET(c, "/ro", "v");
    kv_query q = kv_query_init(K(c, "/"));
    char ids[4][64];
    ck_assert_uint_eq(query_ids(c, &q, ids, 4), 1);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_tokens_never_repeat, test_persistence,
                            test_readonly};
    return tu_conformance_run("durability", tests,
                              sizeof tests / sizeof tests[0]);
}
