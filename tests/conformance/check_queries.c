/*
 * check_queries.c - the conformance suite, group "queries": queries and
 * iterators: prefix, sort, offset and limit, no value, wildcards, empty
 * results, the iterator rules, concurrent next calls, streaming.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Queries and iterators                                                    */
/* ======================================================================== */

static const char *const qkeys[] = {
    "/a", "/a/b", "/a/c/d", "/ab", "/a-b", "/a:x", "/b", "/a:x/y", "/aa/a",
};
#define NQKEYS (sizeof qkeys / sizeof qkeys[0])

START_TEST(test_query_prefix)
{
    OPEN(c);
    put_all(c, qkeys, NQKEYS);
    char ids[64][64];
    kv_query q = kv_query_init(K(c, "/a"));
    ck_assert(q.value && q.sort == KV_SORT_ASC && q.offset == 0 &&
              q.limit == -1);
    size_t n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(ids[0], "/a");
    ck_assert_str_eq(ids[1], "/a/b");
    ck_assert_str_eq(ids[2], "/a/c/d");
    /* a field namespace is its own prefix */
    q = kv_query_init(K(c, "/a:x"));
    n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(ids[0], "/a:x");
    ck_assert_str_eq(ids[1], "/a:x/y");
    /* the empty key matches everything, in kv_key_cmp order */
    q = kv_query_init(K(c, "/"));
    n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, NQKEYS);
    const char *sorted[NQKEYS];
    memcpy(sorted, qkeys, sizeof sorted);
    qsort(sorted, NQKEYS, sizeof sorted[0], cmp_ids);
    for (size_t i = 0; i < NQKEYS; i++)
        ck_assert_str_eq(ids[i], sorted[i]);
    /* values come along */
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    ck_assert_ptr_null(kv_fut_take_iter(of)); /* moved out once */
    kv_fut_free(of);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, NQKEYS);
    for (size_t i = 0; i < n; i++)
        ck_assert(val_is(&r[i], kv_key_id(r[i].key)));
    kv_fut_free(f);
    kv_iter_free(it);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_sort)
{
    OPEN(c);
    put_all(c, qkeys, NQKEYS);
    char asc[64][64], desc[64][64], none[64][64];
    kv_query q = kv_query_init(K(c, "/"));
    size_t na = query_ids(c, &q, asc, 64);
    q.sort = KV_SORT_DESC;
    size_t nd = query_ids(c, &q, desc, 64);
    q.sort = KV_SORT_NONE;
    size_t nn = query_ids(c, &q, none, 64);
    ck_assert_uint_eq(na, NQKEYS);
    ck_assert_uint_eq(nd, NQKEYS);
    ck_assert_uint_eq(nn, NQKEYS);
    for (size_t i = 0; i < na; i++) {
        ck_assert_str_eq(asc[i], desc[na - 1 - i]);
        bool found = false;
        for (size_t j = 0; j < nn; j++)
            found |= strcmp(asc[i], none[j]) == 0;
        ck_assert_msg(found, "%s missing from SORT_NONE", asc[i]);
    }
    /* a bad sort, offset or limit */
    q.sort = (kv_sort)7;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    q.sort = KV_SORT_ASC;
    q.offset = -1;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    q.offset = 0;
    q.limit = -2;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    EXPECT(kv_query_open(c->s, NULL, NULL), KV_EINVAL);
    q.limit = -1;
    q.key = NULL;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_offset_limit)
{
    OPEN(c);
    const char *ks[] = {"/q/1", "/q/2", "/q/3", "/q/4", "/q/5"};
    put_all(c, ks, 5);
    char ids[16][64];
    kv_query q = kv_query_init(K(c, "/q"));
    q.offset = 1;
    q.limit = 2;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/q/2");
    ck_assert_str_eq(ids[1], "/q/3");
    q.sort = KV_SORT_DESC;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/q/4");
    ck_assert_str_eq(ids[1], "/q/3");
    q.sort = KV_SORT_ASC;
    q.limit = 0;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.limit = -1;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 4);
    q.offset = 0;
    q.limit = 5;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.limit = 100;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.offset = 5;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.offset = 1000;
    q.limit = -1;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_no_value)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/v/1", "one", 0);
    uint64_t t2 = PUT(c, "/v/2", "two", 0);
    kv_query q = kv_query_init(K(c, "/v"));
    q.value = false;
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(kv_key_id(r[0].key), "/v/1");
    ck_assert_uint_eq(r[0].token, t1);
    ck_assert_uint_eq(r[1].token, t2);
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_null(r[i].val);
        ck_assert_uint_eq(r[i].len, 0);
    }
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_dispose(it), KV_OK);
    kv_iter_free(it);
    /* typed with value = false: nothing to decode */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f)->val);
    kv_fut_free(f);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_wildcards)
{
    OPEN(c);
    const char *ks[] = {"/w%",  "/w%/c", "/wx",  "/wxy", "/w_",  "/w_x",
                        "/w*",  "/w?",   "/w[",  "/w[a]", "/w\\", "/w\\x",
                        "/w%x", "/w'",   "/w\"", "/wa",
                        "/w\x01", "/w\x01x", "/w\xff", "/w\xff\xff",
                        "/w\xff/c", "/w b", "/w bb"};
    put_all(c, ks, sizeof ks / sizeof ks[0]);
    struct {
        const char *q;
        size_t n;
        const char *want[2];
    } cases[] = {
        {"/w%", 2, {"/w%", "/w%/c"}}, {"/w_", 1, {"/w_"}},
        {"/w*", 1, {"/w*"}},          {"/w?", 1, {"/w?"}},
        {"/w[", 1, {"/w["}},          {"/w[a]", 1, {"/w[a]"}},
        {"/w\\", 1, {"/w\\"}},        {"/w'", 1, {"/w'"}},
        {"/w\"", 1, {"/w\""}},        {"/w", 0, {NULL}},
        {"/w\x01", 1, {"/w\x01"}},    {"/w\xff", 2, {"/w\xff", "/w\xff/c"}},
        {"/w b", 1, {"/w b"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char ids[32][64];
        kv_query q = kv_query_init(K(c, cases[i].q));
        size_t n = query_ids(c, &q, ids, 32);
        ck_assert_msg(n == cases[i].n, "query %s: %zu results, want %zu",
                      cases[i].q, n, cases[i].n);
        for (size_t j = 0; j < n; j++)
            ck_assert_str_eq(ids[j], cases[i].want[j]);
        GET(c, cases[i].n ? cases[i].want[0] : "/w", cases[i].n ? cases[i].want[0] : NULL);
    }
    ctx_done(c);
}
END_TEST

START_TEST(test_query_empty)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_query q = kv_query_init(K(c, "/nothing/here"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    ck_assert(!kv_iter_finished(it));
    kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f));
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);
    /* an empty store */
    const kv_key *one[] = {K(c, "/x")};
    EXPECT(kv_drop_prefix(c->s, one, 1), KV_OK);
    q = kv_query_init(K(c, "/"));
    char ids[4][64];
    ck_assert_uint_eq(query_ids(c, &q, ids, 4), 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_iter_rules)
{
    OPEN(c);
    const char *ks[] = {"/i/1", "/i/2"};
    put_all(c, ks, 2);
    kv_query q = kv_query_init(K(c, "/i"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    for (int i = 0; i < 2; i++) {
        ck_assert(!kv_iter_finished(it));
        kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
        ck_assert_str_eq(kv_key_id(kv_fut_record(f)->key), ks[i]);
        kv_fut_free(f);
    }
    /* the last record returned is not the end: finished only after NULL */
    ck_assert(!kv_iter_finished(it));
    kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f));
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_next(it), KV_EITER);
    /* fetch_all on a finished iterator: nothing remains */
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 9;
    kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    /* dispose is idempotent; next after dispose fails */
    kv_fut *d1 = kv_iter_dispose(it);
    kv_fut *d2 = kv_iter_dispose(it);
    ck_assert_kv(kv_wait(d1), KV_OK);
    ck_assert_kv(kv_wait(d2), KV_OK);
    kv_fut_free(d1);
    kv_fut_free(d2);
    EXPECT(kv_iter_dispose(it), KV_OK);
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_fetch_all(it), KV_EITER);
    kv_iter_free(it);
    kv_iter_free(NULL);

    /* dispose before the end: next fails, finished stays false */
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    EXPECT(kv_iter_dispose(it), KV_OK);
    ck_assert(!kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);

    /* free without dispose, with a next pending: released asynchronously */
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = kv_iter_next(it);
    kv_iter_free(it);
    int rc = kv_wait(f);
    ck_assert(rc == KV_OK || rc == KV_EITER);
    kv_fut_free(f);
    /* the open future freed without taking the iterator */
    kv_fut_free(AWAIT(kv_query_open(c->s, &q, NULL), KV_OK));
    /* ... and freed while still pending */
    kv_fut_free(kv_query_open(c->s, &q, NULL));
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ctx_done(c);
}
END_TEST

typedef struct nextrec {
    int calls;
    int status;
    char id[64];
    bool end;
} nextrec;

static void on_next(kv_fut *f, void *arg)
{
    nextrec *r = arg;
    r->calls++;
    r->status = kv_fut_status(f);
    const kv_record *rec = kv_fut_record(f);
    r->end = r->status == KV_OK && rec == NULL;
    if (rec != NULL)
        snprintf(r->id, sizeof r->id, "%s", kv_key_id(rec->key));
    kv_fut_free(f);
}

START_TEST(test_iter_concurrent_next)
{
    OPEN(c);
    enum { N = 10, CALLS = 13 };
    const char *ks[N];
    char bufs[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof bufs[i], "/cn/%02d", i);
        ks[i] = bufs[i];
    }
    put_all(c, ks, N);
    kv_query q = kv_query_init(K(c, "/cn"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    nextrec recs[CALLS];
    memset(recs, 0, sizeof recs);
    for (int i = 0; i < CALLS; i++)
        ck_assert_int_eq(kv_fut_then(kv_iter_next(it), on_next, &recs[i]),
                         KV_OK);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < CALLS; i++)
        ck_assert_int_eq(recs[i].calls, 1);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(recs[i].status, KV_OK);
        ck_assert_str_eq(recs[i].id, ks[i]); /* each a different one, in order */
    }
    ck_assert(recs[N].end);
    for (int i = N + 1; i < CALLS; i++)
        ck_assert_int_eq(recs[i].status, KV_EITER);
    ck_assert(kv_iter_finished(it));
    /* pending nexts fail KV_EITER when the iterator is disposed */
    kv_iter_free(it);
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    memset(recs, 0, sizeof recs);
    kv_fut_then(kv_iter_next(it), on_next, &recs[0]);
    kv_fut_then(kv_iter_next(it), on_next, &recs[1]);
    kv_fut *d = kv_iter_dispose(it);
    ck_assert_kv(kv_wait(d), KV_OK);
    kv_fut_free(d);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(recs[i].calls, 1);
        ck_assert(recs[i].status == KV_OK || recs[i].status == KV_EITER);
    }
    kv_iter_free(it);
    ctx_done(c);
}
END_TEST

START_TEST(test_iter_streaming)
{
    OPEN(c);
    enum { N = 700 };
    kv_record *recs = calloc(N, sizeof *recs);
    char vals[N][16];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "/s/%04d", i);
        snprintf(vals[i], sizeof vals[i], "v%d", i);
        recs[i].key = K(c, id);
        recs[i].val = vals[i];
        recs[i].len = strlen(vals[i]);
    }
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, N, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    kv_query q = kv_query_init(K(c, "/s"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    /* a few by next, the rest by fetch_all */
    for (int i = 0; i < 5; i++) {
        f = AWAIT(kv_iter_next(it), KV_OK);
        ck_assert(val_is(kv_fut_record(f), vals[i]));
        kv_fut_free(f);
    }
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, N - 5);
    for (size_t i = 0; i < n; i++) {
        ck_assert(val_is(&r[i], vals[i + 5]));
        ck_assert(kv_key_equal(r[i].key, recs[i + 5].key));
    }
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);
    free(recs);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {
        test_query_prefix,   test_query_sort,           test_query_offset_limit,
        test_query_no_value, test_query_wildcards,      test_query_empty,
        test_iter_rules,     test_iter_concurrent_next, test_iter_streaming};
    return tu_conformance_run("queries", tests, sizeof tests / sizeof tests[0]);
}
