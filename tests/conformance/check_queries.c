/*
 * check_queries.c - the conformance suite, group "queries": queries and
 * iterators: prefix, sort, offset and limit, no value, wildcards, empty
 * results, the iterator rules, concurrent next calls, streaming, keyset
 * pagination (after).
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
/* Keyset pagination: kv_query.after                                        */
/* ======================================================================== */

/* A parsed key (the caller frees it). */
static kv_key *pk(const char *id)
{
    kv_key *k = NULL;
    ck_assert_int_eq(kv_key_parse(&k, id), KV_OK);
    return k;
}

/* Is k the prefix p or below it? */
static bool under(const kv_key *k, const kv_key *p)
{
    return kv_key_equal(k, p) || kv_key_is_ancestor(p, k);
}

enum { PG_N = 1000 };

/* The id of record i of the paging set: "/pg/<g>" (g < 10) and 99 children
 * of each, "/pg/<g>/<j>" for even g, "/pg/<g>/x:<j>" for odd g. */
static void pg_id(char out[64], int i)
{
    int g = i / 100, j = i % 100;
    if (j == 0)
        snprintf(out, 64, "/pg/%d", g);
    else if (g % 2 == 0)
        snprintf(out, 64, "/pg/%d/%02d", g, j - 1);
    else
        snprintf(out, 64, "/pg/%d/x:%02d", g, j - 1);
}

/* Put the paging set, and a few records around /pg outside it. */
static void pg_fill(tctx *c)
{
    kv_record *recs = calloc(PG_N, sizeof *recs);
    char(*ids)[64] = calloc(PG_N, 64);
    ck_assert(recs != NULL && ids != NULL);
    for (int i = 0; i < PG_N; i++) {
        pg_id(ids[i], i);
        recs[i].key = pk(ids[i]);
        recs[i].val = ids[i];
        recs[i].len = strlen(ids[i]);
    }
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, PG_N, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    for (int i = 0; i < PG_N; i++)
        kv_key_free((kv_key *)recs[i].key);
    free(recs);
    free(ids);
    const char *around[] = {"/p", "/pf", "/pg-x", "/pga", "/ph", "/pg:x"};
    put_all(c, around, sizeof around / sizeof around[0]);
}

/*
 * Page through q (its after, offset and limit are set here) by after, each
 * page starting after the last key of the one before, skipping `offset`
 * records at the start of each page; ids and values of every page in out
 * (max entries).  The number of records.
 */
static size_t page_all(tctx *c, kv_query q, int64_t limit, int64_t offset,
                       char (*out)[64], size_t max, size_t *npages)
{
    kv_key *last = NULL;
    size_t n = 0;
    *npages = 0;
    for (;;) {
        q.after = last;
        q.limit = limit;
        q.offset = offset;
        kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
        kv_iter *it = kv_fut_take_iter(of);
        kv_fut_free(of);
        kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
        size_t k = 0;
        const kv_record *r = kv_fut_records(f, &k);
        ck_assert_uint_le(k, (size_t)limit);
        (*npages)++;
        for (size_t i = 0; i < k; i++) {
            ck_assert_uint_lt(n, max);
            snprintf(out[n++], 64, "%s", kv_key_id(r[i].key));
            ck_assert(r[i].token != 0);
            if (q.value)
                ck_assert(val_is(&r[i], kv_key_id(r[i].key)));
            else
                ck_assert(r[i].val == NULL && r[i].len == 0);
        }
        kv_key_free(last);
        last = NULL;
        if (k > 0)
            ck_assert_int_eq(kv_key_dup(&last, r[k - 1].key), KV_OK);
        kv_fut_free(f);
        kv_iter_free(it);
        if (k < (size_t)limit) {
            kv_key_free(last);
            return n;
        }
    }
}

START_TEST(test_query_after_paging)
{
    OPEN(c);
    pg_fill(c);
    char(*full)[64] = calloc(PG_N + 8, 64);
    char(*got)[64] = calloc(PG_N + 8, 64);
    ck_assert(full != NULL && got != NULL);
    for (int sort = KV_SORT_ASC; sort <= KV_SORT_DESC; sort++) {
        kv_query q = kv_query_init(K(c, "/pg"));
        q.sort = (kv_sort)sort;
        size_t nfull = query_ids(c, &q, full, PG_N + 8);
        ck_assert_uint_eq(nfull, PG_N);
        for (int value = 1; value >= 0; value--) {
            q.value = value != 0;
            /* limit 37: 28 pages, the last one short */
            size_t pages = 0;
            size_t n = page_all(c, q, 37, 0, got, PG_N + 8, &pages);
            ck_assert_uint_eq(n, PG_N);
            ck_assert_uint_eq(pages, PG_N / 37 + 1);
            for (size_t i = 0; i < n; i++)
                ck_assert_str_eq(got[i], full[i]);
        }
        /* offset combined: each page skips 3 records after the last one */
        q.value = true;
        size_t pages = 0;
        size_t n = page_all(c, q, 37, 3, got, PG_N + 8, &pages);
        size_t want = 0, pos = 0; /* full[pos] is the first after `last` */
        for (size_t p = 0; p < pages; p++) {
            pos += 3;
            for (size_t i = 0; i < 37 && pos < nfull; i++, pos++) {
                ck_assert_uint_lt(want, n);
                ck_assert_str_eq(got[want], full[pos]);
                want++;
            }
        }
        ck_assert_uint_eq(n, want);
        /* a page exactly at the end: 1000 = 8 * 125, then an empty one */
        n = page_all(c, q, 125, 0, got, PG_N + 8, &pages);
        ck_assert_uint_eq(n, PG_N);
        ck_assert_uint_eq(pages, 9);
    }
    free(full);
    free(got);
    ctx_done(c);
}
END_TEST

/* Query prefix/after/sort/offset/limit and compare with the sorted ids
 * filtered by hand. */
static void check_after(tctx *c, const char *const *sorted, size_t nsorted,
                        const char *prefix, const char *after, kv_sort sort,
                        int64_t offset, int64_t limit)
{
    kv_key *p = pk(prefix);
    kv_key *a = after != NULL ? pk(after) : NULL;
    const char *want[64];
    size_t nwant = 0;
    int64_t skipped = 0;
    for (size_t i = 0; i < nsorted; i++) {
        size_t j = sort == KV_SORT_DESC ? nsorted - 1 - i : i;
        kv_key *k = pk(sorted[j]);
        int cmp = a != NULL ? kv_key_cmp(k, a) : (sort == KV_SORT_DESC ? -1 : 1);
        bool past = sort == KV_SORT_DESC ? cmp < 0 : cmp > 0;
        if (under(k, p) && past) {
            if (skipped < offset)
                skipped++;
            else if (limit < 0 || (int64_t)nwant < limit)
                want[nwant++] = sorted[j];
        }
        kv_key_free(k);
    }
    kv_query q = kv_query_init(p);
    q.after = a;
    q.sort = sort;
    q.offset = offset;
    q.limit = limit;
    char ids[64][64];
    size_t n = query_ids(c, &q, ids, 64);
    ck_assert_msg(n == nwant, "prefix %s after %s %s offset %lld limit %lld: "
                  "%zu results, want %zu", prefix, after ? after : "NULL",
                  sort == KV_SORT_DESC ? "DESC" : "ASC", (long long)offset,
                  (long long)limit, n, nwant);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(strcmp(ids[i], want[i]) == 0,
                      "prefix %s after %s %s: [%zu] is %s, want %s", prefix,
                      after ? after : "NULL",
                      sort == KV_SORT_DESC ? "DESC" : "ASC", i, ids[i],
                      want[i]);
    kv_key_free(p);
    kv_key_free(a);
}

START_TEST(test_query_after_positions)
{
    OPEN(c);
    /* Nested namespaces: /a/b < /a/c/d < /a-b < /a:x < /a:x/y < /aa/a ... */
    put_all(c, qkeys, NQKEYS);
    const char *sorted[NQKEYS];
    memcpy(sorted, qkeys, sizeof sorted);
    qsort(sorted, NQKEYS, sizeof sorted[0], cmp_ids);
    const char *prefixes[] = {"/", "/a", "/a:x", "/a/c", "/aa", "/zz"};
    /* every stored key, and positions that are not records: before and
     * after everything, between records, above and below records, outside
     * every prefix */
    const char *probes[] = {
        "/",      "/a",     "/a/b",   "/a/c/d", "/ab",    "/a-b",
        "/a:x",   "/b",     "/a:x/y", "/aa/a",  "/0",     "/a/a",
        "/a/c",   "/a/c/d/e", "/a/zz", "/a+",   "/a:w",   "/a:x/z",
        "/a:y",   "/aa",    "/aa/a/a", "/ab/c", "/c",     "/\xff",
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        for (size_t j = 0; j < sizeof probes / sizeof probes[0]; j++)
            for (int sort = KV_SORT_ASC; sort <= KV_SORT_DESC; sort++) {
                check_after(c, sorted, NQKEYS, prefixes[i], probes[j],
                            (kv_sort)sort, 0, -1);
                check_after(c, sorted, NQKEYS, prefixes[i], probes[j],
                            (kv_sort)sort, 1, 2);
            }
    ctx_done(c);
}
END_TEST

START_TEST(test_query_after_edges)
{
    OPEN(c);
    const char *ks[] = {"/e/1", "/e/2", "/e/3", "/e/3/x", "/e/4"};
    put_all(c, ks, 5);
    char ids[16][64];
    kv_query q = kv_query_init(K(c, "/e"));
    ck_assert_ptr_null(q.after);
    /* after a key that does not exist: the next one in order */
    q.after = K(c, "/e/2a");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 3);
    ck_assert_str_eq(ids[0], "/e/3");
    q.sort = KV_SORT_DESC;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/e/2");
    ck_assert_str_eq(ids[1], "/e/1");
    /* after the last key: nothing (ASC), after the first: nothing (DESC) */
    q.after = K(c, "/e/1");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.sort = KV_SORT_ASC;
    q.after = K(c, "/e/4");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    /* a record's children come after it */
    q.after = K(c, "/e/3");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/e/3/x");
    q.sort = KV_SORT_DESC;
    q.after = K(c, "/e/3/x");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 3);
    ck_assert_str_eq(ids[0], "/e/3");
    /* outside the prefix: just a position */
    q.after = K(c, "/f");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.after = K(c, "/d");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.after = K(c, "/");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.sort = KV_SORT_ASC;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.after = K(c, "/e"); /* the prefix itself is before its keys */
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.after = K(c, "/f");
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    /* offset and limit count from the position */
    q.after = K(c, "/e/1");
    q.offset = 1;
    q.limit = 2;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/e/3");
    ck_assert_str_eq(ids[1], "/e/3/x");
    q.limit = 0;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    /* KV_SORT_NONE has no position */
    q.limit = -1;
    q.sort = KV_SORT_NONE;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    q.after = NULL;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 4);
    /* after is borrowed for the call only: freed before the iterator runs */
    q.sort = KV_SORT_ASC;
    q.offset = 0;
    kv_key *a = pk("/e/2");
    q.after = a;
    kv_fut *of = kv_query_open(c->s, &q, NULL);
    kv_key_free(a);
    q.after = NULL;
    ck_assert_kv(kv_wait(of), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(kv_key_id(r[0].key), "/e/3");
    kv_fut_free(f);
    kv_iter_free(it);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {
        test_query_prefix,   test_query_sort,           test_query_offset_limit,
        test_query_no_value, test_query_wildcards,      test_query_empty,
        test_iter_rules,     test_iter_concurrent_next, test_iter_streaming,
        test_query_after_paging, test_query_after_positions,
        test_query_after_edges};
    return tu_conformance_run("queries", tests, sizeof tests / sizeof tests[0]);
}
