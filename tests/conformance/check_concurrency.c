/*
 * check_concurrency.c - the conformance suite, group "concurrency": no
 * lost update: interleaved compare-and-swap increments on one loop, and
 * from threads with a store each.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

#include <pthread.h>

/* ======================================================================== */
/* Lost updates                                                             */
/* ======================================================================== */

enum { WRITERS = 8, INCREMENTS = 500 };

typedef struct incr {
    kv_store *s;
    const kv_key *key;
    int ok, conflicts, errors;
} incr;

static void incr_get(incr *w);

static void incr_on_put(kv_fut *f, void *arg)
{
    incr *w = arg;
    int st = kv_fut_status(f);
    kv_fut_free(f);
    if (st == KV_OK)
        w->ok++;
    else if (st == KV_ECONFLICT)
        w->conflicts++;
    else {
        w->errors++;
        return;
    }
    if (w->ok < INCREMENTS)
        incr_get(w);
}

static void incr_on_get(kv_fut *f, void *arg)
{
    incr *w = arg;
    if (kv_fut_status(f) != KV_OK) {
        w->errors++;
        kv_fut_free(f);
        return;
    }
    const kv_record *r = kv_fut_record(f);
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
    long v = strtol(buf, NULL, 10);
    int n = snprintf(buf, sizeof buf, "%ld", v + 1);
    kv_record rec = {r->key, buf, (size_t)n, r->token};
    kv_fut *p = kv_put(w->s, &rec, NULL);
    kv_fut_free(f);
    kv_fut_then(p, incr_on_put, w);
}

static void incr_get(incr *w)
{
    kv_fut_then(kv_get(w->s, w->key, NULL), incr_on_get, w);
}

static long counter_value(tctx *c)
{
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/counter"), NULL), KV_OK);
    const kv_record *r = kv_fut_record(f);
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
    kv_fut_free(f);
    return strtol(buf, NULL, 10);
}

/* 8 CAS read-modify-write loops in flight at once on one loop. */
START_TEST(test_lost_update_interleaved)
{
    OPEN(c);
    PUT(c, "/counter", "0", 0);
    incr w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (incr){c->s, K(c, "/counter"), 0, 0, 0};
        incr_get(&w[i]);
    }
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    long total = 0, conflicts = 0;
    for (int i = 0; i < WRITERS; i++)
        conflicts += w[i].conflicts;
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "%s: interleaved: %d increments, %ld conflicts\n",
                c->b->name, WRITERS * INCREMENTS, conflicts);
    for (int i = 0; i < WRITERS; i++) {
        ck_assert_int_eq(w[i].errors, 0);
        ck_assert_int_eq(w[i].ok, INCREMENTS);
        total += w[i].ok;
    }
    ck_assert_int_eq(counter_value(c), total);
    ctx_done(c);
}
END_TEST

typedef struct thread_writer {
    const backend *b;
    kv_pool *pool;
    int ok, conflicts;
    int rc;
    char where[128];
} thread_writer;

static void *writer_thread(void *arg)
{
    thread_writer *t = arg;
    kv_loop *loop = NULL;
    kv_store *s = NULL;
    kv_key *key = NULL;
    t->rc = kv_loop_new(&loop, NULL);
    if (t->rc != KV_OK) {
        snprintf(t->where, sizeof t->where, "loop_new");
        return NULL;
    }
    t->rc = t->b->open(&s, loop, t->pool, tmpdir, 0);
    if (t->rc != KV_OK) {
        snprintf(t->where, sizeof t->where, "open: %s", kv_last_errmsg());
        kv_loop_free(loop);
        return NULL;
    }
    kv_key_parse(&key, "/counter");
    while (t->ok < INCREMENTS && t->rc == KV_OK) {
        kv_fut *g = kv_get(s, key, NULL);
        int rc = kv_wait(g);
        if (rc != KV_OK) {
            t->rc = rc;
            snprintf(t->where, sizeof t->where, "get: %s", kv_fut_errmsg(g));
            kv_fut_free(g);
            break;
        }
        const kv_record *r = kv_fut_record(g);
        char buf[32];
        snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
        int n = snprintf(buf, sizeof buf, "%ld", strtol(buf, NULL, 10) + 1);
        kv_record rec = {key, buf, (size_t)n, r->token};
        kv_fut *p = kv_put(s, &rec, NULL);
        kv_fut_free(g);
        rc = kv_wait(p);
        if (rc == KV_OK)
            t->ok++;
        else if (rc == KV_ECONFLICT)
            t->conflicts++;
        else {
            t->rc = rc;
            snprintf(t->where, sizeof t->where, "put: %s", kv_fut_errmsg(p));
        }
        kv_fut_free(p);
    }
    kv_key_free(key);
    kv_fut *cf = kv_close(s);
    int rc = kv_wait(cf);
    if (t->rc == KV_OK && rc != KV_OK) {
        t->rc = rc;
        snprintf(t->where, sizeof t->where, "close");
    }
    kv_fut_free(cf);
    kv_store_free(s);
    rc = kv_loop_free(loop);
    if (t->rc == KV_OK && rc != KV_OK) {
        t->rc = rc;
        snprintf(t->where, sizeof t->where, "loop_free");
    }
    return NULL;
}

/* 8 threads, each with its own loop and store on the same data, one pool. */
START_TEST(test_lost_update_threads)
{
    OPEN(c);
    /* The remote modes change nothing here (each writer thread opens its
     * own store on its own loop) and would only double its run time;
     * tests/reliability/check_stress.c drives one store from threads. */
    if (!c->b->shared || c->mode != TM_LOCAL) {
        ctx_done(c);
        return;
    }
    PUT(c, "/counter", "0", 0);
    thread_writer tw[WRITERS];
    pthread_t th[WRITERS];
    long conflicts = 0;
    for (int i = 0; i < WRITERS; i++) {
        tw[i] = (thread_writer){c->b, c->pool, 0, 0, KV_OK, ""};
        ck_assert_int_eq(pthread_create(&th[i], NULL, writer_thread, &tw[i]),
                         0);
    }
    long total = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(tw[i].rc == KV_OK, "writer %d: %s at %s", i,
                      kv_err_name(tw[i].rc), tw[i].where);
        total += tw[i].ok;
        conflicts += tw[i].conflicts;
    }
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "%s: threads: %ld increments, %ld conflicts\n",
                c->b->name, total, conflicts);
    ck_assert_int_eq(total, WRITERS * INCREMENTS);
    ck_assert_int_eq(counter_value(c), total);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_lost_update_interleaved,
                            test_lost_update_threads};
    return tu_conformance_run("concurrency", tests,
                              sizeof tests / sizeof tests[0]);
}
