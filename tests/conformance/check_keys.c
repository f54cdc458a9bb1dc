/*
 * check_keys.c - the conformance suite, group "keys": record operations on
 * keys of every documented form, in particular namespaces with a field and
 * an empty value ("/a:b/c:"), which every backend must store under their
 * own name (fs names, Redis keys, SQLite rows), list in kv_key_cmp order
 * and find again after a reopen.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* Keys that differ only by an empty value, a field or a ':'. */
static const char *const ekeys[] = {
    "/a",     "/a:",    "/a:b",   "/a:/x", "/a:b/c:", "/a:b/c",
    "/a:b/c:d", "/c:",  "/c:/d:", "/x/y:",
};
#define NEKEYS (sizeof ekeys / sizeof ekeys[0])

START_TEST(test_empty_value_records)
{
    OPEN(c);
    /* Each key is its own record, with its own value and token. */
    uint64_t tok[NEKEYS];
    for (size_t i = 0; i < NEKEYS; i++)
        tok[i] = PUT(c, ekeys[i], ekeys[i], 0);
    for (size_t i = 0; i < NEKEYS; i++) {
        ck_assert(has_(c, ekeys[i]));
        ck_assert_uint_eq(GET(c, ekeys[i], ekeys[i]), tok[i]);
    }
    ck_assert(!has_(c, "/c"));
    ck_assert(!has_(c, "/x/y"));
    /* The id is the key: "a:b/c:" is "/a:b/c:". */
    GET(c, "a:b/ c : ", "/a:b/c:");
    /* CAS and delete on one leave its neighbours alone. */
    uint64_t t2 = PUT(c, "/a:b/c:", "new", tok[4]);
    PUT_FAILS(c, "/a:b/c:", "x", tok[4], KV_ECONFLICT);
    EXPECT(kv_delete(c->s, K(c, "/a:"), tok[1]), KV_OK);
    ck_assert(!has_(c, "/a:"));
    GET(c, "/a", "/a");
    GET(c, "/a:b", "/a:b");
    GET(c, "/a:/x", "/a:/x");
    GET(c, "/a:b/c:", "new");
    GET(c, "/a:b/c", "/a:b/c");
    PUT(c, "/a:", "back", 0);

    /* Queries: "/a:" is the prefix of "/a:/x" only, not of "/a:b". */
    char ids[64][64];
    kv_query q = kv_query_init(K(c, "/a:"));
    size_t n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(ids[0], "/a:");
    ck_assert_str_eq(ids[1], "/a:/x");
    q = kv_query_init(K(c, "/a:b"));
    n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(ids[0], "/a:b");
    ck_assert_str_eq(ids[1], "/a:b/c");
    ck_assert_str_eq(ids[2], "/a:b/c:");
    ck_assert_str_eq(ids[3], "/a:b/c:d");

    /* The whole store, in kv_key_cmp order, also after a reopen (what a
     * backend reads back from its storage parses to the same keys). */
    const char *sorted[NEKEYS];
    memcpy(sorted, ekeys, sizeof sorted);
    qsort(sorted, NEKEYS, sizeof sorted[0], cmp_ids);
    for (int round = 0; round < 2; round++) {
        q = kv_query_init(K(c, "/"));
        n = query_ids(c, &q, ids, 64);
        ck_assert_uint_eq(n, NEKEYS);
        for (size_t i = 0; i < NEKEYS; i++)
            ck_assert_str_eq(ids[i], sorted[i]);
        if (!c->b->reopenable)
            break;
        ctx_reopen(c, 0);
        ck_assert_uint_eq(GET(c, "/a:b/c:", "new"), t2);
    }
    ctx_done(c);
}
END_TEST

START_TEST(test_empty_value_batches)
{
    OPEN(c);
    /* Batches and prefix drops treat them as any other key. */
    kv_record recs[3] = {{K(c, "/m:"), "1", 1, 0},
                         {K(c, "/m:/n:"), "2", 1, 0},
                         {K(c, "/m"), "3", 1, 0}};
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 3, NULL), KV_OK);
    size_t nk = 0;
    kv_fut_keys(f, &nk);
    ck_assert_uint_eq(nk, 0);
    kv_fut_free(f);
    GET(c, "/m:", "1");
    GET(c, "/m:/n:", "2");
    GET(c, "/m", "3");
    const kv_key *drop[1] = {K(c, "/m:")};
    EXPECT(kv_drop_prefix(c->s, drop, 1), KV_OK);
    GET(c, "/m:", NULL);
    GET(c, "/m:/n:", NULL);
    GET(c, "/m", "3");
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_empty_value_records,
                            test_empty_value_batches};
    return tu_conformance_run("keys", tests, sizeof tests / sizeof tests[0]);
}
