/*
 * check_helpers.c - the conformance suite, group "helpers": the helpers:
 * try_put, try_delete, try_atomic with a refreshing middleware,
 * get_or_put, cancelling a helper, the helpers' tokens (also after a large
 * retry set returned shuffled).
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Helpers                                                                  */
/* ======================================================================== */

/* A middleware that refreshes tokens from the store (get_many). */
typedef struct refresh {
    tctx *c;
    int calls;
    size_t last_n;
    int fail_with; /* non-zero: fail the future with this */
    bool change_keys; /* atomic: return a different key set */
} refresh;

typedef struct refresh_job {
    kv_fut *out;
    kv_record *recs;
    size_t n;
} refresh_job;

static void refresh_done(kv_fut *g, void *arg)
{
    refresh_job *j = arg;
    size_t nf = 0;
    const kv_record *fresh = kv_fut_records(g, &nf);
    for (size_t i = 0; i < j->n; i++) {
        j->recs[i].token = 0;
        for (size_t k = 0; k < nf; k++)
            if (kv_key_equal(fresh[k].key, j->recs[i].key))
                j->recs[i].token = fresh[k].token;
    }
    kv_fut_complete_records(j->out, j->recs, j->n);
    for (size_t i = 0; i < j->n; i++) {
        kv_key_free(j->recs[i].key);
        free(j->recs[i].val);
    }
    free(j->recs);
    free(j);
    kv_fut_free(g);
}

static kv_fut *refresh_records(refresh *rf, const kv_record *recs, size_t n)
{
    rf->calls++;
    rf->last_n = n;
    kv_fut *out = kv_fut_new(rf->c->loop);
    if (rf->fail_with) {
        kv_fut_fail(out, rf->fail_with, "middleware gave up");
        return out;
    }
    refresh_job *j = calloc(1, sizeof *j);
    j->out = out;
    j->n = n;
    j->recs = calloc(n, sizeof *j->recs);
    const kv_key **keys = calloc(n, sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(kv_key_dup(&j->recs[i].key, recs[i].key), KV_OK);
        if (rf->change_keys && i == 0) {
            kv_key_free(j->recs[i].key);
            ck_assert_int_eq(kv_key_parse(&j->recs[i].key, "/other"), KV_OK);
        }
        j->recs[i].val = malloc(recs[i].len + 1);
        if (recs[i].len)
            memcpy(j->recs[i].val, recs[i].val, recs[i].len);
        j->recs[i].len = recs[i].len;
        keys[i] = j->recs[i].key;
    }
    kv_fut *g = kv_get_many(rf->c->s, keys, n, NULL);
    free(keys);
    kv_fut_then(g, refresh_done, j);
    return out;
}

static kv_fut *mw_refresh(const kv_record *failed, size_t n, void *arg)
{
    return refresh_records(arg, failed, n);
}

static kv_fut *amw_refresh(const kv_record *all, size_t n,
                           const kv_key *const *conflicts, size_t nconf,
                           void *arg)
{
    ck_assert_uint_gt(nconf, 0);
    ck_assert_ptr_nonnull(conflicts);
    return refresh_records(arg, all, n);
}

START_TEST(test_try_put)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/tp/a", "a0", 0);
    PUT(c, "/tp/b", "b0", 0);
    /* stale tokens: a middleware refreshing them succeeds */
    kv_record recs[] = {{K(c, "/tp/a"), "a1", 2, ta},
                        {K(c, "/tp/b"), "b1", 2, 12345},
                        {K(c, "/tp/c"), "c1", 2, 999}};
    PUT(c, "/tp/a", "a-other", ta); /* someone else wrote /tp/a */
    refresh rf = {c, 0, 0, 0, false};
    kv_fut *f = AWAIT(kv_try_put(c->s, recs, 3, 3, mw_refresh, &rf, NULL),
                      KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 3); /* all three were skipped */
    GET(c, "/tp/a", "a1");
    GET(c, "/tp/b", "b1");
    GET(c, "/tp/c", "c1");
    /* no middleware: the same records again, until attempts run out */
    kv_record stale[] = {{K(c, "/tp/a"), "x", 1, 1},
                         {K(c, "/tp/new"), "n", 1, 0}};
    f = AWAIT(kv_try_put(c->s, stale, 2, 3, NULL, NULL, NULL),
              KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/tp/a"));
    kv_fut_free(f);
    GET(c, "/tp/a", "a1");
    GET(c, "/tp/new", "n");
    /* zero attempts: KV_EMAXRETRIES at once, nothing written */
    kv_record z[] = {{K(c, "/tp/z"), "z", 1, 0}};
    f = AWAIT(kv_try_put(c->s, z, 1, 0, NULL, NULL, NULL), KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/tp/z"));
    kv_fut_free(f);
    GET(c, "/tp/z", NULL);
    /* a middleware returning nothing: success, no more attempts */
    rf.calls = 0;
    f = AWAIT(kv_try_put(c->s, stale, 1, 5, mw_refresh, &(refresh){c, 0, 0, 0,
                                                                     false},
                         NULL),
              KV_OK);
    kv_fut_free(f);
    /* a failing middleware aborts with its error */
    refresh bad = {c, 0, 0, KV_EBACKEND, false};
    f = AWAIT(kv_try_put(c->s, stale, 1, 5, mw_refresh, &bad, NULL),
              KV_EBACKEND);
    ck_assert_str_eq(kv_fut_errmsg(f), "middleware gave up");
    kv_fut_free(f);
    ck_assert_int_eq(bad.calls, 1);
    /* exhaustion with a middleware: attempts counted in all */
    refresh count = {c, 0, 0, 0, false};
    kv_record never[] = {{K(c, "/tp/a"), "q", 1, 0}}; /* refresh: token 0? */
    /* /tp/a exists; a refreshed token makes it succeed on attempt 2 */
    f = AWAIT(kv_try_put(c->s, never, 1, 2, mw_refresh, &count, NULL), KV_OK);
    kv_fut_free(f);
    ck_assert_int_eq(count.calls, 1);
    GET(c, "/tp/a", "q");
    /* typed */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person dan = {"dan", 5};
    kv_record tr[] = {{K(c, "/tp/dan"), &dan, 0, 0}};
    EXPECT(kv_try_put(c->s, tr, 1, 1, NULL, NULL, &codec), KV_OK);
    GET(c, "/tp/dan", "dan:5");
    ctx_done(c);
}
END_TEST

START_TEST(test_try_delete)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/td/a", "a", 0);
    PUT(c, "/td/b", "b", 0);
    kv_record dels[] = {{K(c, "/td/a"), NULL, 0, ta},
                        {K(c, "/td/b"), NULL, 0, 0}};
    refresh rf = {c, 0, 0, 0, false};
    EXPECT(kv_try_delete(c->s, dels, 2, 2, mw_refresh, &rf), KV_OK);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 1);
    ck_assert(!has_(c, "/td/a"));
    ck_assert(!has_(c, "/td/b"));
    /* without middleware: a zero token never succeeds */
    PUT(c, "/td/c", "c", 0);
    kv_record zero[] = {{K(c, "/td/c"), NULL, 0, 0}};
    kv_fut *f = AWAIT(kv_try_delete(c->s, zero, 1, 3, NULL, NULL),
                      KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/td/c"));
    kv_fut_free(f);
    ck_assert(has_(c, "/td/c"));
    EXPECT(kv_try_delete(c->s, zero, 1, 0, NULL, NULL), KV_EMAXRETRIES);
    EXPECT(kv_try_delete(c->s, NULL, 0, 1, NULL, NULL), KV_OK);
    ctx_done(c);
}
END_TEST

START_TEST(test_try_atomic)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/ta/a", "a0", 0);
    kv_record recs[] = {{K(c, "/ta/a"), "a1", 2, ta + 1000},
                        {K(c, "/ta/b"), "b1", 2, 0}};
    refresh rf = {c, 0, 0, 0, false};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &rf, NULL),
               KV_ENOTSUP);
        EXPECT(kv_try_delete_atomic(c->s, recs, 2, 3, amw_refresh, &rf),
               KV_ENOTSUP);
        ck_assert_int_eq(rf.calls, 0);
        ctx_done(c);
        return;
    }
    /* without middleware: KV_ECONFLICT with the conflicts, no retry */
    kv_fut *f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 3, NULL, NULL, NULL),
                      KV_ECONFLICT);
    ck_assert(KEYS_ARE(f, "/ta/a"));
    kv_fut_free(f);
    GET(c, "/ta/b", NULL);
    /* a middleware refreshing every token */
    f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &rf, NULL),
              KV_OK);
    kv_fut_free(f);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 2); /* it sees the whole batch */
    GET(c, "/ta/a", "a1");
    uint64_t tb = GET(c, "/ta/b", "b1");
    /* a middleware returning another key set: KV_EINVAL */
    refresh chg = {c, 0, 0, 0, true};
    EXPECT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &chg, NULL),
           KV_EINVAL);
    GET(c, "/ta/a", "a1");
    /* exhaustion: KV_EMAXRETRIES with the conflicting keys */
    refresh rf1 = {c, 0, 0, 0, false};
    f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 1, amw_refresh, &rf1, NULL),
              KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/ta/a", "/ta/b"));
    kv_fut_free(f);
    ck_assert_int_eq(rf1.calls, 0);
    EXPECT(kv_try_put_atomic(c->s, recs, 2, 0, NULL, NULL, NULL),
           KV_EMAXRETRIES);
    /* delete atomic */
    kv_record dels[] = {{K(c, "/ta/a"), NULL, 0, 1},
                        {K(c, "/ta/b"), NULL, 0, tb}};
    f = AWAIT(kv_try_delete_atomic(c->s, dels, 2, 3, NULL, NULL),
              KV_ECONFLICT);
    ck_assert(KEYS_ARE(f, "/ta/a"));
    kv_fut_free(f);
    ck_assert(has_(c, "/ta/b"));
    refresh rd = {c, 0, 0, 0, false};
    EXPECT(kv_try_delete_atomic(c->s, dels, 2, 3, amw_refresh, &rd), KV_OK);
    ck_assert(!has_(c, "/ta/a"));
    ck_assert(!has_(c, "/ta/b"));
    ctx_done(c);
}
END_TEST



START_TEST(test_get_or_put)
{
    OPEN(c);
    producer p = {c, 0, "made", NULL, NULL, NULL, NULL, false};
    kv_fut *f = AWAIT(kv_get_or_put(c->s, K(c, "/g/1"), produce, &p, 3, NULL),
                      KV_OK);
    const kv_record *r = kv_fut_record(f);
    ck_assert(val_is(r, "made"));
    uint64_t t = r->token;
    ck_assert(t != 0);
    kv_fut_free(f);
    ck_assert_int_eq(p.calls, 1);
    ck_assert_uint_eq(GET(c, "/g/1", "made"), t);
    /* present: the producer is not called */
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/1"), produce, &p, 3, NULL), KV_OK);
    ck_assert(val_is(kv_fut_record(f), "made"));
    ck_assert_uint_eq(kv_fut_record(f)->token, t);
    kv_fut_free(f);
    ck_assert_int_eq(p.calls, 1);
    /* lost race: the winner's record */
    producer pr = {c, 0, "loser", "winner", NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/2"), produce, &pr, 3, NULL), KV_OK);
    ck_assert(val_is(kv_fut_record(f), "winner"));
    kv_fut_free(f);
    ck_assert_int_eq(pr.calls, 1);
    GET(c, "/g/2", "winner");
    /* bounds */
    EXPECT(kv_get_or_put(c->s, K(c, "/g/3"), produce, &p, 0, NULL),
           KV_EMAXRETRIES);
    EXPECT(kv_get_or_put(c->s, K(c, "/g/3"), NULL, &p, 3, NULL), KV_EINVAL);
    EXPECT(kv_get_or_put(c->s, K(c, "/"), produce, &p, 3, NULL), KV_EINVAL);
    /* one insert attempt, lost: the winner is still read and returned */
    producer racing1 = {c, 0, "loser", "winner", NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/4"), produce, &racing1, 1, NULL),
              KV_OK);
    ck_assert(val_is(kv_fut_record(f), "winner"));
    kv_fut_free(f);
    ck_assert_int_eq(racing1.calls, 1);
    /* typed */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person eve = {"eve", 7};
    producer pt = {c, 0, NULL, NULL, &eve, &pc, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/eve"), produce, &pt, 3, &codec),
              KV_OK);
    ck_assert_str_eq(((const person *)kv_fut_record(f)->val)->name, "eve");
    kv_fut_free(f);
    GET(c, "/g/eve", "eve:7");
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/eve"), produce, &pt, 3, &codec),
              KV_OK);
    ck_assert_int_eq(((const person *)kv_fut_record(f)->val)->age, 7);
    kv_fut_free(f);
    ck_assert_int_eq(pt.calls, 1);
    ck_assert_int_eq(pc.live, 0); /* the produced object went to free_obj */
    ctx_done(c);
}
END_TEST

/* A middleware that cancels the helper it serves and completes later. */
typedef struct cancel_mw {
    tctx *c;
    kv_fut *helper;
    kv_fut *out;
    int calls;
} cancel_mw;

static kv_fut *mw_cancel_helper(const kv_record *failed, size_t n, void *arg)
{
    (void)failed;
    (void)n;
    cancel_mw *m = arg;
    m->calls++;
    kv_fut_cancel(m->helper);
    m->out = kv_fut_new(m->c->loop);
    return m->out;
}

START_TEST(test_helper_cancel)
{
    OPEN(c);
    /* Cancel while the middleware's future is pending: the helper completes
     * KV_ECANCELED once, the middleware may still complete its future, and
     * no further attempt is made. */
    uint64_t t = PUT(c, "/hc", "v0", 0);
    kv_record stale = {K(c, "/hc"), "v1", 2, t + 1};
    cancel_mw m = {c, NULL, NULL, 0};
    counted done = {0, 0};
    m.helper = kv_try_put(c->s, &stale, 1, 5, mw_cancel_helper, &m, NULL);
    kv__fut_ref(m.helper); /* keep it for the check below */
    kv_fut_then(m.helper, on_count, &done);
    ck_assert_kv(kv_wait(m.helper), KV_ECANCELED);
    ck_assert_int_eq(m.calls, 1);
    kv_record fresh = {K(c, "/hc"), "v1", 2, t};
    kv_fut_complete_records(m.out, &fresh, 1);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(done.calls, 1);
    ck_assert_int_eq(done.status, KV_ECANCELED);
    kv_fut_free(m.helper);
    GET(c, "/hc", "v0");
    /* The same for get_or_put with its producer's future pending. */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person zed = {"zed", 3};
    producer p = {c, 0, NULL, NULL, &zed, &pc, NULL, true};
    kv_fut *f = kv_get_or_put(c->s, K(c, "/hc/g"), produce, &p, 3, &codec);
    while (p.calls == 0)
        ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_ONCE), 0);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    person *o = malloc(sizeof *o);
    *o = zed;
    pc.live++;
    kv_fut_complete_obj(p.hold, o); /* the library frees it via the codec */
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(pc.live, 0);
    GET(c, "/hc/g", NULL);
    /* Cancelling an attempt in flight. */
    f = kv_try_put(c->s, &stale, 1, 5, NULL, NULL, NULL);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    GET(c, "/hc", "v0");
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Tokens of the helpers; typed middleware                                  */
/* ======================================================================== */

/* The helper's kv_fut_tokens: n of them, each equal to what kv_get reads
 * (or 0 where want0[i]). */
static void helper_tokens_match(tctx *c, kv_fut *f, const kv_record *recs,
                                size_t n, const bool *want0)
{
    size_t nt = 99;
    const uint64_t *tok = kv_fut_tokens(f, &nt);
    ck_assert_uint_eq(nt, n);
    ck_assert_ptr_nonnull(tok);
    for (size_t i = 0; i < n; i++) {
        if (want0 != NULL && want0[i]) {
            ck_assert_uint_eq(tok[i], 0);
            continue;
        }
        ck_assert_uint_ne(tok[i], 0);
        kv_fut *g = AWAIT(kv_get(c->s, recs[i].key, NULL), KV_OK);
        ck_assert_uint_eq(kv_fut_record(g)->token, tok[i]);
        kv_fut_free(g);
    }
}

START_TEST(test_helper_tokens)
{
    OPEN(c);
    PUT(c, "/{h}b", "b0", 0);
    PUT(c, "/{h}c", "c0", 0);
    /* try_put: a middleware retry, an unconditional record, an insert */
    kv_record recs[] = {{K(c, "/{h}a"), "a1", 2, 0},
                        {K(c, "/{h}b"), "b1", 2, 4242}, /* refreshed */
                        {K(c, "/{h}c"), "c1", 2, KV_TOKEN_ANY}};
    refresh rf = {c, 0, 0, 0, false};
    kv_fut *f = AWAIT(kv_try_put(c->s, recs, 3, 3, mw_refresh, &rf, NULL),
                      KV_OK);
    ck_assert_int_eq(rf.calls, 1);
    helper_tokens_match(c, f, recs, 3, NULL);
    /* the token is good for the next CAS */
    uint64_t tb = kv_fut_tokens(f, NULL)[1];
    kv_fut_free(f);
    PUT(c, "/{h}b", "b2", tb);
    /* exhausted: the written ones have tokens, the skipped one 0 */
    kv_record ex[] = {{K(c, "/{h}d"), "d", 1, 0},
                      {K(c, "/{h}a"), "x", 1, 1}};
    f = AWAIT(kv_try_put(c->s, ex, 2, 2, NULL, NULL, NULL), KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/{h}a"));
    helper_tokens_match(c, f, ex, 2, (const bool[]){false, true});
    kv_fut_free(f);
    /* typed */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person ida = {"ida", 3};
    kv_record tr[] = {{K(c, "/{h}ida"), &ida, 0, KV_TOKEN_ANY}};
    f = AWAIT(kv_try_put(c->s, tr, 1, 1, NULL, NULL, &codec), KV_OK);
    helper_tokens_match(c, f, tr, 1, NULL);
    kv_fut_free(f);
    /* try_delete has none */
    kv_record dl[] = {{K(c, "/{h}d"), NULL, 0, KV_TOKEN_ANY}};
    f = AWAIT(kv_try_delete(c->s, dl, 1, 1, NULL, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_tokens(f, NULL));
    kv_fut_free(f);
    GET(c, "/{h}d", NULL);
    /* try_put_atomic, after a refreshing middleware */
    if (kv_supports_atomic_batch(c->s)) {
        kv_record at[] = {{K(c, "/{h}a"), "a3", 2, 777},
                          {K(c, "/{h}e"), "e3", 2, KV_TOKEN_ANY},
                          {K(c, "/{h}f"), "f3", 2, 0}};
        refresh arf = {c, 0, 0, 0, false};
        f = AWAIT(kv_try_put_atomic(c->s, at, 3, 3, amw_refresh, &arf, NULL),
                  KV_OK);
        ck_assert_int_eq(arf.calls, 1);
        helper_tokens_match(c, f, at, 3, NULL);
        kv_fut_free(f);
        GET(c, "/{h}a", "a3");
    }
    /* get_or_put: the inserted record's token and the winner's */
    producer p = {c, 0, "made", NULL, NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/{h}g"), produce, &p, 3, NULL), KV_OK);
    uint64_t tg = kv_fut_record(f)->token;
    kv_fut_free(f);
    ck_assert_uint_ne(tg, 0);
    ck_assert_uint_eq(GET(c, "/{h}g", "made"), tg);
    producer pr = {c, 0, "loser", "winner", NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/{h}w"), produce, &pr, 3, NULL),
              KV_OK);
    uint64_t tw = kv_fut_record(f)->token;
    kv_fut_free(f);
    ck_assert_uint_eq(GET(c, "/{h}w", "winner"), tw);
    person jo = {"jo", 9};
    producer pt = {c, 0, NULL, NULL, &jo, &pc, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/{h}jo"), produce, &pt, 3, &codec),
              KV_OK);
    uint64_t tj = kv_fut_record(f)->token;
    kv_fut_free(f);
    ck_assert_uint_ne(tj, 0);
    ck_assert_uint_eq(GET(c, "/{h}jo", "jo:9"), tj);
    ck_assert_int_eq(atomic_load(&pc.live), 0);
    ctx_done(c);
}
END_TEST

/*
 * A typed middleware: it decodes each failed record with the call's codec
 * (the values are the helper's encodings), makes the person one year older,
 * encodes it with the same codec and retries it unconditionally.
 */
typedef struct older {
    tctx *c;
    kv_codec codec;
    int calls;
    int decoded;
} older;

static kv_fut *mw_older(const kv_record *failed, size_t n, void *arg)
{
    older *o = arg;
    o->calls++;
    kv_fut *out = kv_fut_new(o->c->loop);
    kv_record *recs = calloc(n, sizeof *recs);
    kv_buf *bufs = calloc(n, sizeof *bufs);
    for (size_t i = 0; i < n; i++) {
        void *obj = NULL;
        ck_assert_int_eq(o->codec.decode(failed[i].val, failed[i].len, &obj,
                                         o->codec.ctx),
                         KV_OK);
        person *pp = obj;
        o->decoded++;
        pp->age++;
        ck_assert_int_eq(o->codec.encode(pp, &bufs[i], o->codec.ctx), KV_OK);
        o->codec.free_obj(obj, o->codec.ctx);
        recs[i].key = failed[i].key;
        recs[i].val = bufs[i].data;
        recs[i].len = bufs[i].len;
        recs[i].token = KV_TOKEN_ANY;
    }
    kv_fut_complete_records(out, recs, n); /* copies */
    for (size_t i = 0; i < n; i++)
        kv_buf_free(&bufs[i]);
    free(bufs);
    free(recs);
    return out;
}

START_TEST(test_typed_middleware)
{
    OPEN(c);
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    PUT(c, "/tm/kim", "kim:1", 0);
    person kim = {"kim", 20}, lee = {"lee", 30};
    kv_record recs[] = {{K(c, "/tm/kim"), &kim, 0, 0}, /* conflicts */
                        {K(c, "/tm/lee"), &lee, 0, 0}};
    older o = {c, codec, 0, 0};
    kv_fut *f = AWAIT(kv_try_put(c->s, recs, 2, 2, mw_older, &o, &codec),
                      KV_OK);
    ck_assert_int_eq(o.calls, 1);
    ck_assert_int_eq(o.decoded, 1);
    helper_tokens_match(c, f, recs, 2, NULL);
    kv_fut_free(f);
    GET(c, "/tm/kim", "kim:21");
    GET(c, "/tm/lee", "lee:30");
    ck_assert_int_eq(atomic_load(&pc.live), 0);
    ctx_done(c);
}
END_TEST

/* A middleware that refreshes the failed records and returns them in a
 * shuffled order (a fixed permutation). */
static kv_fut *mw_shuffle(const kv_record *failed, size_t n, void *arg)
{
    kv_record *sh = malloc((n ? n : 1) * sizeof *sh);
    ck_assert_ptr_nonnull(sh);
    memcpy(sh, failed, n * sizeof *sh);
    uint64_t x = 0x5eed5eedu;
    for (size_t i = n; i > 1; i--) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t j = (size_t)((x >> 33) % i);
        kv_record t = sh[i - 1];
        sh[i - 1] = sh[j];
        sh[j] = t;
    }
    kv_fut *f = refresh_records(arg, sh, n);
    free(sh);
    return f;
}

/* try_put matches the records a middleware returns to the input by key:
 * a large retry set in shuffled order still gives each input record its
 * own token. */
START_TEST(test_try_put_shuffled_retry)
{
    OPEN(c);
    enum { N = 300 };
    static char ids[N][32], vals[N][16];
    static kv_record recs[N];
    static uint64_t first[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "/{hs}k%zu", i);
        first[i] = PUT(c, ids[i], "v0", 0);
    }
    /* two in three with a stale token: the retry set */
    size_t nstale = 0;
    for (size_t i = 0; i < N; i++) {
        snprintf(vals[i], sizeof vals[i], "v%zu", i);
        bool stale = i % 3 != 0;
        nstale += stale;
        recs[i] = (kv_record){K(c, ids[i]), vals[i], strlen(vals[i]),
                              stale ? first[i] + 1000000 : first[i]};
    }
    refresh rf = {c, 0, 0, 0, false};
    kv_fut *f = AWAIT(kv_try_put(c->s, recs, N, 3, mw_shuffle, &rf, NULL),
                      KV_OK);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, nstale);
    helper_tokens_match(c, f, recs, N, NULL);
    kv_fut_free(f);
    for (size_t i = 0; i < N; i++)
        GET(c, ids[i], vals[i]);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_try_put, test_try_delete, test_try_atomic,
                            test_get_or_put, test_helper_cancel,
                            test_helper_tokens, test_typed_middleware,
                            test_try_put_shuffled_retry};
    return tu_conformance_run("helpers", tests, sizeof tests / sizeof tests[0]);
}
