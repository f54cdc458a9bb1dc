/*
 * check_remote.c - the store from other threads: calls forwarded to the
 * store's loop, their futures on the calling thread's loop, cancel, free
 * from another thread, kv_loop_free while a store is open, and admission
 * control (kv_store_set_max_inflight).  On the model backend
 * (tests/lib/model.c); the conformance suite's +remote and +noloop rows
 * run every behaviour through forwarding on every backend.
 */
#include "config.h"

#include "core/core.h"
#include "model.h"
#include "testutil.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* A driver thread that owns a loop and a model store and runs the loop      */
/* ------------------------------------------------------------------------ */

typedef struct driver {
    pthread_t th;
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    atomic_bool stop;
    sem_t ready;
    int rc;      /* open, then kv_loop_free at the end */
    bool closed_by_driver;
} driver;

static void *driver_main(void *arg)
{
    driver *d = arg;
    d->rc = kv_loop_new(&d->loop, NULL);
    if (d->rc == KV_OK)
        d->rc = tu_model_open(&d->s, d->loop, d->pool, 0, true);
    sem_post(&d->ready);
    if (d->rc != KV_OK)
        return NULL;
    /* A thread that only serves the store: KV_RUN_WAIT blocks even when
     * nothing is pending; forwarded calls wake it. */
    while (!atomic_load(&d->stop))
        if (kv_loop_run(d->loop, KV_RUN_WAIT) < 0)
            break;
    while (kv_loop_alive(d->loop))
        if (kv_loop_run(d->loop, KV_RUN_DEFAULT) < 0)
            break;
    d->rc = kv_loop_free(d->loop);
    return NULL;
}

/* Start a driver whose pool has workers threads. */
static void driver_start_pool(driver *d, unsigned workers)
{
    memset(d, 0, sizeof *d);
    ck_assert_kv(kv_pool_new(&d->pool, workers), KV_OK);
    atomic_init(&d->stop, false);
    ck_assert_int_eq(sem_init(&d->ready, 0, 0), 0);
    ck_assert_int_eq(pthread_create(&d->th, NULL, driver_main, d), 0);
    while (sem_wait(&d->ready) != 0)
        ;
    ck_assert_kv(d->rc, KV_OK);
}

static void driver_start(driver *d)
{
    driver_start_pool(d, 2);
}

typedef struct stopper {
    kv__call call;
    driver *d;
} stopper;

/* Set stop on the driver's own thread (set from another, the driver could
 * exit and free its loop before the call reached it). */
static void stop_run(kv__call *c)
{
    stopper *st = (stopper *)(void *)c;
    atomic_store(&st->d->stop, true);
}

/* Stop the driver; its kv_loop_free result (KV_EBUSY if the store is
 * still open on it). */
static int driver_stop(driver *d)
{
    stopper st = {.call.run = stop_run, .d = d};
    kv__loop_call(d->loop, &st.call);
    ck_assert_int_eq(pthread_join(d->th, NULL), 0);
    sem_destroy(&d->ready);
    kv_pool_free(d->pool);
    return d->rc;
}

static kv_key *key(const char *path)
{
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, path), KV_OK);
    return k;
}

/* Close and free the driver's store, stop the driver, then run this
 * thread's loop mine until idle and free it. */
static void close_all(driver *d, kv_loop *mine)
{
    EXPECT(kv_close(d->s), KV_OK);
    kv_store_free(d->s);
    ck_assert_kv(driver_stop(d), KV_OK);
    while (kv_loop_alive(mine))
        ck_assert_int_ge(kv_loop_run(mine, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(mine), KV_OK);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* A store call from a thread with its own loop: forwarded, and its future
 * completes on the calling thread's loop with the result. */
START_TEST(test_forwarded_calls)
{
    driver d;
    driver_start(&d);
    kv_loop *mine;
    ck_assert_kv(kv_loop_new(&mine, NULL), KV_OK);
    ck_assert_ptr_eq(kv_thread_loop(), mine);
    ck_assert_ptr_eq(kv_store_loop(d.s), d.loop);
    kv_key *k = key("/a");
    kv_fut *p = kv_put_value(d.s, k, "v", 1, NULL);
    ck_assert_ptr_eq(kv_fut_loop(p), mine);
    ck_assert_kv(kv_wait(p), KV_OK);
    uint64_t tok = kv_fut_token(p);
    ck_assert(tok != 0);
    kv_fut_free(p);
    kv_fut *g = AWAIT(kv_get(d.s, k, NULL), KV_OK);
    const kv_record *r = kv_fut_record(g);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->len, 1);
    ck_assert_uint_eq(r->token, tok);
    kv_fut_free(g);
    /* argument errors fail on the calling thread's loop too */
    kv_fut *bad = kv_get(d.s, NULL, NULL);
    ck_assert_ptr_eq(kv_fut_loop(bad), mine);
    ck_assert_kv(kv_wait(bad), KV_EINVAL);
    kv_fut_free(bad);
    /* and a key over the limits (checked after the NULL/empty checks) */
    char deep[4 * (KV_KEY_MAX_DEPTH + 1) + 1];
    for (int i = 0; i <= KV_KEY_MAX_DEPTH; i++)
        memcpy(deep + 4 * i, "/n:v", 4);
    deep[sizeof deep - 1] = '\0';
    kv_key *dk = key(deep);
    bad = kv_put_value(d.s, dk, "v", 1, NULL);
    ck_assert_ptr_eq(kv_fut_loop(bad), mine);
    ck_assert_kv(kv_wait(bad), KV_EINVAL);
    kv_fut_free(bad);
    kv_key_free(dk);
    /* cancel: the caller's future completes at once */
    kv_fut *c = kv_get(d.s, k, NULL);
    kv_fut_cancel(c);
    ck_assert(kv_fut_done(c));
    ck_assert_kv(kv_fut_status(c), KV_ECANCELED);
    kv_fut_free(c);
    ck_assert_int_ge(kv_loop_run(mine, KV_RUN_DEFAULT), 0); /* its return */
    /* close from this thread */
    EXPECT(kv_close(d.s), KV_OK);
    EXPECT(kv_put_value(d.s, k, "v", 1, NULL), KV_ECLOSED);
    kv_store_free(d.s); /* handed to the driver's loop */
    ck_assert_kv(driver_stop(&d), KV_OK);
    ck_assert_int_ge(kv_loop_run(mine, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(mine), KV_OK);
    kv_key_free(k);
}
END_TEST

typedef struct loopless {
    kv_store *s;
    int put, get, loop_same;
} loopless;

static void *loopless_main(void *arg)
{
    loopless *t = arg;
    kv_key *k = NULL;
    kv_key_parse(&k, "/b");
    kv_fut *p = kv_put_value(t->s, k, "w", 1, NULL);
    t->put = kv_wait(p);
    t->loop_same = kv_fut_loop(p) == kv_thread_loop();
    kv_fut_free(p);
    kv_fut *g = kv_get(t->s, k, NULL);
    t->get = kv_wait(g);
    kv_fut_free(g);
    kv_key_free(k);
    return NULL; /* the private loop is freed at thread exit */
}

/* A thread without a loop: kv_wait runs its private loop. */
START_TEST(test_loopless_thread)
{
    driver d;
    driver_start(&d);
    loopless t = {d.s, -1, -1, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, loopless_main, &t), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_kv(t.put, KV_OK);
    ck_assert_kv(t.get, KV_OK);
    ck_assert_int_eq(t.loop_same, 1);
    /* free without close, from a thread that is not the store's */
    kv_store_free(d.s);
    ck_assert_kv(driver_stop(&d), KV_OK);
}
END_TEST

/* kv_loop_free fails KV_EBUSY while a store opened on the loop is open,
 * and after kv_close until kv_store_free. */
START_TEST(test_loop_free_busy)
{
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    ck_assert_kv(tu_model_open(&s, loop, pool, 0, true), KV_OK);
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "still open"));
    EXPECT(kv_close(s), KV_OK);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    kv_store_free(s);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
}
END_TEST

/* Beyond the limit, calls fail at once KV_EBUSY; the count returns to 0. */
START_TEST(test_admission_limit)
{
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    ck_assert_kv(tu_model_open(&s, loop, pool, 0, true), KV_OK);
    ck_assert_kv(kv_store_set_max_inflight(NULL, 1), KV_EINVAL);
    ck_assert_uint_eq(kv_store_inflight(NULL), 0);
    ck_assert_kv(kv_store_set_max_inflight(s, 4), KV_OK);
    enum { N = 10 };
    kv_key *k[N];
    kv_fut *f[N];
    for (int i = 0; i < N; i++) {
        char p[16];
        snprintf(p, sizeof p, "/k%d", i);
        k[i] = key(p);
        f[i] = kv_put_value(s, k[i], "v", 1, NULL);
    }
    ck_assert_uint_eq(kv_store_inflight(s), 4);
    ck_assert_uint_eq(kv_loop_inflight(loop), 4);
    for (int i = 4; i < N; i++) {
        ck_assert(kv_fut_done(f[i]));
        ck_assert_kv(kv_fut_status(f[i]), KV_EBUSY);
        ck_assert_str_eq(kv_fut_errmsg(f[i]),
                         "kv_put: 4 operations in flight (the store's limit)");
    }
    for (int i = 0; i < 4; i++)
        ck_assert_kv(kv_wait(f[i]), KV_OK);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_uint_eq(kv_store_inflight(s), 0);
    ck_assert_uint_eq(kv_loop_inflight(loop), 0);
    EXPECT(kv_put_value(s, k[5], "v", 1, NULL), KV_OK); /* room again */
    ck_assert_kv(kv_store_set_max_inflight(s, 0), KV_OK); /* no limit */
    kv_fut *g[N];
    for (int i = 0; i < N; i++)
        g[i] = kv_get(s, k[i], NULL);
    ck_assert_uint_eq(kv_store_inflight(s), N);
    for (int i = 0; i < N; i++) {
        int rc = kv_wait(g[i]);
        ck_assert(rc == KV_OK || rc == KV_ENOTFOUND);
        kv_fut_free(g[i]);
        kv_fut_free(f[i]);
        kv_key_free(k[i]);
    }
    ck_assert_uint_eq(kv_store_inflight(s), 0);
    EXPECT(kv_close(s), KV_OK);
    kv_store_free(s);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
}
END_TEST

typedef struct blocker {
    kv__call call;
    sem_t held, go;
} blocker;

static void block_run(kv__call *c)
{
    blocker *b = (blocker *)(void *)c;
    sem_post(&b->held);
    while (sem_wait(&b->go) != 0)
        ;
}

/* Hold the driver's thread in a call until unblock (so nothing it serves
 * progresses meanwhile). */
static void block(driver *d, blocker *bl)
{
    ck_assert_int_eq(sem_init(&bl->held, 0, 0), 0);
    ck_assert_int_eq(sem_init(&bl->go, 0, 0), 0);
    bl->call.run = block_run;
    kv__loop_call(d->loop, &bl->call);
    while (sem_wait(&bl->held) != 0)
        ;
}

/* Let the driver's thread go on; bl is not used after. */
static void unblock(blocker *bl)
{
    sem_post(&bl->go);
}

static void blocker_fini(blocker *bl)
{
    sem_destroy(&bl->held);
    sem_destroy(&bl->go);
}

/* The limit holds for forwarded calls too (counted on the calling thread
 * before the hand-off). */
START_TEST(test_admission_limit_remote)
{
    driver d;
    driver_start(&d);
    ck_assert_kv(kv_store_set_max_inflight(d.s, 2), KV_OK);
    kv_key *k = key("/r");
    /* Hold the driver's thread so that nothing completes meanwhile. */
    blocker bl;
    block(&d, &bl);
    kv_fut *f[5];
    for (int i = 0; i < 5; i++)
        f[i] = kv_has(d.s, k); /* this thread: its private loop */
    ck_assert_uint_eq(kv_store_inflight(d.s), 2);
    for (int i = 2; i < 5; i++) {
        ck_assert(kv_fut_done(f[i]));
        ck_assert_kv(kv_fut_status(f[i]), KV_EBUSY);
    }
    unblock(&bl);
    for (int i = 0; i < 5; i++) {
        ck_assert_kv(kv_wait(f[i]), i < 2 ? KV_OK : KV_EBUSY);
        kv_fut_free(f[i]);
    }
    blocker_fini(&bl);
    ck_assert_uint_eq(kv_store_inflight(d.s), 0);
    EXPECT(kv_close(d.s), KV_OK);
    kv_store_free(d.s);
    ck_assert_kv(driver_stop(&d), KV_OK);
    ck_assert_kv(kv_loop_free(kv_thread_loop()), KV_OK);
    kv_key_free(k);
}
END_TEST

typedef struct marker {
    kv__call call;
    sem_t ran;
} marker;

static void mark_run(kv__call *c)
{
    marker *m = (marker *)(void *)c;
    sem_post(&m->ran);
}

/* kv_fut_cancel on a forwarded call that already reached the backend
 * cancels it there: with every pool worker held, the model's job waits in
 * the pool's queue, and only the backend's cancel can take it out before
 * the workers are released. */
START_TEST(test_cancel_reaches_backend)
{
    driver d;
    driver_start(&d);
    kv_loop *mine;
    ck_assert_kv(kv_loop_new(&mine, NULL), KV_OK);
    tu_gate g;
    ck_assert_int_eq(sem_init(&g.in, 0, 0), 0);
    ck_assert_int_eq(sem_init(&g.go, 0, 0), 0);
    kv_fut *held[2];
    for (int i = 0; i < 2; i++) {
        held[i] = kv_pool_work(mine, d.pool, tu_hold_worker, &g);
        while (sem_wait(&g.in) != 0)
            ;
    }
    kv_key *k = key("/c");
    kv_fut *f = kv_get(d.s, k, NULL);
    /* Calls run oldest first: once the marker ran, the get is in the
     * backend, queued behind the held workers. */
    marker m;
    ck_assert_int_eq(sem_init(&m.ran, 0, 0), 0);
    m.call.run = mark_run;
    kv__loop_call(d.loop, &m.call);
    while (sem_wait(&m.ran) != 0)
        ;
    ck_assert_uint_eq(kv_store_inflight(d.s), 1);
    kv_fut_cancel(f);
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    /* The request leaves the store while the workers are still held. */
    for (int i = 0; i < 100000 && kv_store_inflight(d.s) != 0; i++)
        usleep(100);
    ck_assert_uint_eq(kv_store_inflight(d.s), 0);
    sem_post(&g.go);
    sem_post(&g.go);
    for (int i = 0; i < 2; i++) {
        ck_assert_kv(kv_wait(held[i]), KV_OK);
        kv_fut_free(held[i]);
    }
    kv_fut_free(f);
    sem_destroy(&g.in);
    sem_destroy(&g.go);
    sem_destroy(&m.ran);
    close_all(&d, mine);
    kv_key_free(k);
}
END_TEST

typedef struct stats_call {
    kv__call call;
    kv_loop *loop;
    kv__loop_stats st;
    sem_t done;
} stats_call;

static void stats_run(kv__call *c)
{
    stats_call *sc = (stats_call *)(void *)c;
    kv__loop_get_stats(sc->loop, &sc->st);
    sem_post(&sc->done);
}

/* The driver's loop counters, read on its thread. */
static kv__loop_stats driver_stats(driver *d)
{
    stats_call sc = {.call.run = stats_run, .loop = d->loop};
    ck_assert_int_eq(sem_init(&sc.done, 0, 0), 0);
    kv__loop_call(d->loop, &sc.call);
    while (sem_wait(&sc.done) != 0)
        ;
    sem_destroy(&sc.done);
    return sc.st;
}

enum { BURST = 16 };

typedef struct burst {
    kv__call call;
    kv_store *s;
    kv_key *k;
    kv_fut *f[BURST];
} burst;

/* On the caller's loop, inside its run: BURST forwarded calls at once. */
static void burst_run(kv__call *c)
{
    burst *b = (burst *)(void *)c;
    for (int i = 0; i < BURST; i++)
        b->f[i] = kv_has(b->s, b->k);
}

/*
 * What a loop hands other loops in one turn leaves in one push per loop:
 * BURST calls made in one callback reach the store's loop in one push, and
 * their BURST outcomes, finished in one turn of the store's loop, come
 * back in one push (handed over one by one, each could wake the other
 * loop: BURST pushes each way).  Set-up: the pool's one worker is held
 * while the calls reach the model backend, whose jobs then finish while
 * the store's thread is held, so that one turn finishes them all.
 */
START_TEST(test_forwarded_one_push_per_turn)
{
    driver d;
    driver_start_pool(&d, 1);
    kv_loop *mine;
    ck_assert_kv(kv_loop_new(&mine, NULL), KV_OK);
    tu_gate g1, g2;
    ck_assert_int_eq(sem_init(&g1.in, 0, 0), 0);
    ck_assert_int_eq(sem_init(&g1.go, 0, 0), 0);
    ck_assert_int_eq(sem_init(&g2.in, 0, 0), 0);
    ck_assert_int_eq(sem_init(&g2.go, 0, 0), 0);
    kv_fut *hold1 = kv_pool_work(mine, d.pool, tu_hold_worker, &g1);
    while (sem_wait(&g1.in) != 0)
        ;
    burst b = {.call.run = burst_run, .s = d.s, .k = key("/b")};
    kv__loop_stats m0, m1;
    kv__loop_get_stats(mine, &m0);
    kv__loop_call(mine, &b.call);
    ck_assert_int_ge(kv_loop_run(mine, KV_RUN_NOWAIT), 0);
    kv__loop_get_stats(mine, &m1);
    ck_assert_uint_eq(m1.pushes - m0.pushes, 1);
    /* Calls run in order: after the marker, all BURST are in the model. */
    marker m;
    ck_assert_int_eq(sem_init(&m.ran, 0, 0), 0);
    m.call.run = mark_run;
    kv__loop_call(d.loop, &m.call);
    while (sem_wait(&m.ran) != 0)
        ;
    ck_assert_uint_eq(kv_store_inflight(d.s), BURST);
    kv__loop_stats d0 = driver_stats(&d);
    /* Hold the store's thread; the worker runs the BURST jobs, then a
     * second hold, so they are all posted when that hold begins. */
    blocker bl;
    block(&d, &bl);
    kv_fut *hold2 = kv_pool_work(mine, d.pool, tu_hold_worker, &g2);
    sem_post(&g1.go);
    while (sem_wait(&g2.in) != 0)
        ;
    unblock(&bl);
    for (int i = 0; i < BURST; i++) {
        ck_assert_kv(kv_wait(b.f[i]), KV_OK);
        ck_assert(!kv_fut_bool(b.f[i]));
        kv_fut_free(b.f[i]);
    }
    kv__loop_stats d1 = driver_stats(&d);
    ck_assert_uint_eq(d1.pushes - d0.pushes, 1);
    sem_post(&g2.go);
    ck_assert_kv(kv_wait(hold1), KV_OK);
    ck_assert_kv(kv_wait(hold2), KV_OK);
    kv_fut_free(hold1);
    kv_fut_free(hold2);
    sem_destroy(&g1.in);
    sem_destroy(&g1.go);
    sem_destroy(&g2.in);
    sem_destroy(&g2.go);
    blocker_fini(&bl);
    sem_destroy(&m.ran);
    close_all(&d, mine);
    kv_key_free(b.k);
}
END_TEST

typedef struct late {
    kv__call call;
    kv_store *s;
    kv_loop *store_loop;
    kv_key *k;
    kv_fut *put;
    sem_t go, freed;
    int close_rc;
} late;

/* Another thread: close and free the store, and see the free run on the
 * store's thread (a marker after it), while the put waits in the first
 * thread's outbox. */
static void *late_closer(void *arg)
{
    late *l = arg;
    while (sem_wait(&l->go) != 0)
        ;
    kv_fut *f = kv_close(l->s);
    l->close_rc = kv_wait(f);
    kv_fut_free(f);
    kv_store_free(l->s);
    marker m;
    sem_init(&m.ran, 0, 0);
    m.call.run = mark_run;
    kv__loop_call(l->store_loop, &m.call);
    while (sem_wait(&m.ran) != 0)
        ;
    sem_destroy(&m.ran);
    sem_post(&l->freed);
    return NULL;
}

/* In a callback of the caller's loop: a put (which waits in the outbox
 * until the turn ends), then another thread closes and frees the store
 * before the turn ends. */
static void late_run(kv__call *c)
{
    late *l = (late *)(void *)c;
    l->put = kv_put_value(l->s, l->k, "v", 1, NULL);
    sem_post(&l->go);
    while (sem_wait(&l->freed) != 0)
        ;
}

/*
 * A call made before another thread closed and freed the store, still in
 * its thread's outbox meanwhile, arrives at a handle that is still there:
 * the free waits for it, it fails KV_ECLOSED, and then the handle goes
 * (the driver's kv_loop_free succeeds).  Before, the call reached a freed
 * store (a use after free under ASan).
 */
START_TEST(test_free_waits_for_calls_on_their_way)
{
    driver d;
    driver_start(&d);
    kv_loop *mine;
    ck_assert_kv(kv_loop_new(&mine, NULL), KV_OK);
    late l = {.call.run = late_run, .s = d.s, .store_loop = d.loop,
              .k = key("/late")};
    ck_assert_int_eq(sem_init(&l.go, 0, 0), 0);
    ck_assert_int_eq(sem_init(&l.freed, 0, 0), 0);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, late_closer, &l), 0);
    kv__loop_call(mine, &l.call);
    ck_assert_int_ge(kv_loop_run(mine, KV_RUN_NOWAIT), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_kv(l.close_rc, KV_OK);
    ck_assert_kv(kv_wait(l.put), KV_ECLOSED);
    kv_fut_free(l.put);
    ck_assert_kv(driver_stop(&d), KV_OK); /* the store was freed */
    ck_assert_kv(kv_loop_free(mine), KV_OK);
    sem_destroy(&l.go);
    sem_destroy(&l.freed);
    kv_key_free(l.k);
}
END_TEST

/* A thread's kv_iter_free / kv_store_free made after its calls in the same
 * turn reach the store's loop after them: the put made just before the
 * free is made (or cancelled by the close), not failed KV_ECLOSED. */
typedef struct inorder {
    kv__call call;
    kv_store *s;
    kv_key *k;
    kv_fut *put;
} inorder;

static void inorder_run(kv__call *c)
{
    inorder *o = (inorder *)(void *)c;
    o->put = kv_put_value(o->s, o->k, "v", 1, NULL);
    kv_store_free(o->s);
}

START_TEST(test_free_after_calls_same_thread)
{
    driver d;
    driver_start(&d);
    kv_loop *mine;
    ck_assert_kv(kv_loop_new(&mine, NULL), KV_OK);
    /* Hold the store's thread so that the order of arrival decides. */
    blocker bl;
    block(&d, &bl);
    inorder o = {.call.run = inorder_run, .s = d.s, .k = key("/o")};
    kv__loop_call(mine, &o.call);
    ck_assert_int_ge(kv_loop_run(mine, KV_RUN_NOWAIT), 0);
    unblock(&bl);
    int rc = kv_wait(o.put);
    ck_assert_msg(rc == KV_OK || rc == KV_ECANCELED, "put: %s",
                  kv_err_name(rc));
    kv_fut_free(o.put);
    ck_assert_kv(driver_stop(&d), KV_OK);
    ck_assert_kv(kv_loop_free(mine), KV_OK);
    blocker_fini(&bl);
    kv_key_free(o.k);
}
END_TEST

static Suite *remote_suite(void)
{
    Suite *s = suite_create("remote");
    TCase *tc = tcase_create("remote");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_forwarded_calls);
    tcase_add_test(tc, test_loopless_thread);
    tcase_add_test(tc, test_loop_free_busy);
    tcase_add_test(tc, test_admission_limit);
    tcase_add_test(tc, test_admission_limit_remote);
    tcase_add_test(tc, test_cancel_reaches_backend);
    tcase_add_test(tc, test_forwarded_one_push_per_turn);
    tcase_add_test(tc, test_free_waits_for_calls_on_their_way);
    tcase_add_test(tc, test_free_after_calls_same_thread);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(remote_suite());
}
