/*
 * check_loop.c - the loop, the pool, timers and the ring path.
 *
 * Async tests count completions, run the loop, then assert the counts; every
 * test ends with kv_loop_free() == KV_OK (nothing left alive).
 * KV_TEST_SCALE=n divides the big job counts by n (for valgrind); the
 * default runs them at full size.
 */
#include "config.h"

#include "testutil.h"

#include "store/store_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

static unsigned scale_div(void)
{
    const char *s = getenv("KV_TEST_SCALE");
    long v = s ? strtol(s, NULL, 10) : 1;
    return v < 1 ? 1u : (unsigned)v;
}

static kv_loop *new_loop(void)
{
    kv_loop *loop = NULL;
    int rc = kv_loop_new(&loop, NULL);
    ck_assert_msg(rc == KV_OK, "kv_loop_new: %s (%s)", kv_strerror(rc),
                  kv_last_errmsg());
    return loop;
}

static kv_pool *new_pool(unsigned n)
{
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(&pool, n), KV_OK);
    return pool;
}

/* ------------------------------------------------------------------------ */
/* Internal jobs with per-job flags                                         */
/* ------------------------------------------------------------------------ */

typedef struct tjob {
    kv__job job;
    atomic_int ran; /* work calls */
    int done;       /* done calls */
    int status;
    pthread_t owner; /* thread that must run done */
    kv_loop *loop;
    int *counter; /* per-test done counter */
    bool wrong_thread;
} tjob;

static void tjob_work(kv__job *j)
{
    tjob *t = KV__CONTAINER_OF(j, tjob, job);
    atomic_fetch_add_explicit(&t->ran, 1, memory_order_relaxed);
}

static void tjob_done(kv__job *j, int status)
{
    tjob *t = KV__CONTAINER_OF(j, tjob, job);
    t->done++;
    t->status = status;
    if (!pthread_equal(pthread_self(), t->owner) || j->loop != t->loop)
        t->wrong_thread = true;
    (*t->counter)++;
}

static void tjob_init(tjob *t, kv_loop *loop, int *counter)
{
    memset(t, 0, sizeof *t);
    atomic_init(&t->ran, 0);
    t->job.work = tjob_work;
    t->job.done = tjob_done;
    t->owner = pthread_self();
    t->loop = loop;
    t->counter = counter;
}

START_TEST(test_pool_100k_jobs)
{
    const int n = 100000; /* full size always: the figure */
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(4);
    tjob *jobs = calloc((size_t)n, sizeof *jobs);
    ck_assert_ptr_nonnull(jobs);
    int count = 0;
    for (int i = 0; i < n; i++) {
        tjob_init(&jobs[i], loop, &count);
        kv__pool_submit(pool, loop, &jobs[i].job);
    }
    ck_assert(kv_loop_alive(loop));
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(count, n);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(atomic_load(&jobs[i].ran), 1);
        ck_assert_int_eq(jobs[i].done, 1);
        ck_assert_int_eq(jobs[i].status, KV_OK);
        ck_assert(!jobs[i].wrong_thread);
    }
    kv__loop_stats st;
    kv__loop_get_stats(loop, &st);
    ck_assert_uint_eq(st.jobs, (uint64_t)n);
    kv_pool_free(pool);
    tu_finish_loop(loop);
    free(jobs);
}
END_TEST

/* Four threads, a loop each, one shared pool. */
typedef struct producer {
    kv_pool *pool;
    int n;
    int count;
    bool ok;
    char err[160];
} producer;

static void *producer_main(void *arg)
{
    producer *p = arg;
    kv_loop *loop = NULL;
    p->ok = false;
    if (kv_loop_new(&loop, NULL) != KV_OK) {
        snprintf(p->err, sizeof p->err, "kv_loop_new: %s", kv_last_errmsg());
        return NULL;
    }
    tjob *jobs = calloc((size_t)p->n, sizeof *jobs);
    if (jobs == NULL)
        return NULL;
    for (int i = 0; i < p->n; i++) {
        tjob_init(&jobs[i], loop, &p->count);
        kv__pool_submit(p->pool, loop, &jobs[i].job);
        if (i % 1000 == 999)
            kv_loop_run(loop, KV_RUN_NOWAIT); /* interleave completions */
    }
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    p->ok = rc == 0 && p->count == p->n;
    for (int i = 0; i < p->n && p->ok; i++) {
        if (atomic_load(&jobs[i].ran) != 1 || jobs[i].done != 1 ||
            jobs[i].wrong_thread || jobs[i].status != KV_OK) {
            snprintf(p->err, sizeof p->err,
                     "job %d: ran %d done %d wrong_thread %d status %d", i,
                     atomic_load(&jobs[i].ran), jobs[i].done,
                     jobs[i].wrong_thread, jobs[i].status);
            p->ok = false;
        }
    }
    if (kv_loop_free(loop) != KV_OK) {
        snprintf(p->err, sizeof p->err, "kv_loop_free busy");
        p->ok = false;
    }
    free(jobs);
    return NULL;
}

START_TEST(test_pool_shared_by_four_loops)
{
    kv_pool *pool = new_pool(2);
    producer p[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        memset(&p[i], 0, sizeof p[i]);
        p[i].pool = pool;
        p[i].n = 25000 / (int)scale_div();
        ck_assert_int_eq(pthread_create(&th[i], NULL, producer_main, &p[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(p[i].ok, "producer %d: count %d/%d %s", i, p[i].count,
                      p[i].n, p[i].err);
    }
    kv_pool_free(pool);
}
END_TEST

/*
 * A burst of completions while the loop is busy in a callback: the first
 * job's done holds the loop until every other job has run and posted.
 */
static atomic_int burst_ran;
static int burst_n;
static kv__loop_stats burst_stats; /* when the burst had all landed */

static void burst_work(kv__job *j)
{
    tjob_work(j);
    atomic_fetch_add(&burst_ran, 1);
}

static void burst_first_done(kv__job *j, int status)
{
    tjob_done(j, status);
    for (int i = 0; i < 60000 && atomic_load(&burst_ran) < burst_n; i++)
        usleep(1000);
    usleep(20 * 1000); /* the last workers finish posting */
    kv__loop_get_stats(j->loop, &burst_stats);
}

START_TEST(test_pool_burst_while_busy)
{
    const int n = 20000 / (int)scale_div();
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    tjob *jobs = calloc((size_t)n, sizeof *jobs);
    int count = 0;
    atomic_store(&burst_ran, 0);
    burst_n = n;
    for (int i = 0; i < n; i++) {
        tjob_init(&jobs[i], loop, &count);
        jobs[i].job.work = burst_work;
    }
    jobs[0].job.done = burst_first_done;
    kv__loop_stats before, after;
    kv__loop_get_stats(loop, &before);
    for (int i = 0; i < n; i++)
        kv__pool_submit(pool, loop, &jobs[i].job);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(atomic_load(&burst_ran), n);
    ck_assert_int_eq(count, n);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(jobs[i].done, 1);
        ck_assert_int_eq(atomic_load(&jobs[i].ran), 1);
    }
    kv__loop_get_stats(loop, &after);
    /* One wake at most before the burst; then drained in a few turns. */
    ck_assert_msg(after.wakes - before.wakes <= 2,
                  "%llu eventfd writes for a burst of %d",
                  (unsigned long long)(after.wakes - before.wakes), n);
    ck_assert_msg(after.wakes == burst_stats.wakes, "woken after the burst");
    ck_assert_msg(after.turns - burst_stats.turns <= 3, "%llu turns",
                  (unsigned long long)(after.turns - burst_stats.turns));
    ck_assert_uint_eq(after.waits, burst_stats.waits); /* never slept */
    kv_pool_free(pool);
    tu_finish_loop(loop);
    free(jobs);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* kv_pool_work, cancellation, shutdown                                     */
/* ------------------------------------------------------------------------ */

/* A gate that blocks workers until opened. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int waiting;
} gate;

static void gate_init(gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = false;
    g->waiting = 0;
}

static int gate_work(void *arg)
{
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    g->waiting++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return KV_OK;
}

static void gate_wait_blocked(gate *g, int n)
{
    pthread_mutex_lock(&g->mu);
    while (g->waiting < n)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(gate *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

static atomic_int work_ran[32];

/* Completion order, for the timer tests. */
static int order[8];
static int norder;

static void order_cb_any(kv_fut *f, void *arg)
{
    ck_assert_kv(kv_fut_status(f), KV_OK);
    order[norder++] = (int)(intptr_t)arg;
}

static int flag_work(void *arg)
{
    atomic_fetch_add(&work_ran[(intptr_t)arg], 1);
    return KV_OK;
}

static int code_work(void *arg)
{
    return (int)(intptr_t)arg;
}

START_TEST(test_pool_work_status)
{
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    kv_fut *a = kv_pool_work(loop, pool, code_work, (void *)(intptr_t)KV_OK);
    kv_fut *b =
        kv_pool_work(loop, pool, code_work, (void *)(intptr_t)KV_ENOTFOUND);
    kv_fut *c = kv_pool_work(loop, pool, code_work, (void *)(intptr_t)7);
    kv_fut *d = kv_pool_work(loop, pool, NULL, NULL);
    ck_assert_ptr_eq(kv_fut_loop(a), loop);
    ck_assert_kv(kv_wait(a), KV_OK);
    ck_assert_kv(kv_wait(b), KV_ENOTFOUND);
    ck_assert_kv(kv_wait(c), KV_OK); /* positive counts as success */
    ck_assert(kv_fut_done(d));
    ck_assert_kv(kv_fut_status(d), KV_EINVAL);
    kv_fut_free(a);
    kv_fut_free(b);
    kv_fut_free(c);
    kv_fut_free(d);
    kv_pool_free(pool);
    tu_finish_loop(loop);
}
END_TEST

static int cb_count;
static void count_cb(kv_fut *f, void *arg)
{
    (void)f;
    (void)arg;
    cb_count++;
}

START_TEST(test_pool_cancel_queued)
{
    memset(work_ran, 0, sizeof work_ran);
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    gate g;
    gate_init(&g);
    kv_fut *block[2];
    for (int i = 0; i < 2; i++)
        block[i] = kv_pool_work(loop, pool, gate_work, &g);
    gate_wait_blocked(&g, 2); /* both workers are now busy */
    kv_fut *f[10];
    for (int i = 0; i < 10; i++)
        f[i] = kv_pool_work(loop, pool, flag_work, (void *)(intptr_t)i);
    cb_count = 0;
    for (int i = 0; i < 10; i += 2) {
        ck_assert_int_eq(kv_fut_then(f[i], count_cb, NULL), KV_OK);
        kv_fut_cancel(f[i]);
        ck_assert(kv_fut_done(f[i]));
        ck_assert_kv(kv_fut_status(f[i]), KV_ECANCELED);
    }
    ck_assert_int_eq(cb_count, 0); /* callbacks wait for the loop */
    gate_open(&g);
    for (int i = 0; i < 10; i++)
        kv_wait(f[i]);
    tu_finish_loop(loop);
    loop = NULL;
    ck_assert_int_eq(cb_count, 5);
    for (int i = 0; i < 10; i++) {
        if (i % 2 == 0) {
            ck_assert_kv(kv_fut_status(f[i]), KV_ECANCELED);
            ck_assert_int_eq(atomic_load(&work_ran[i]), 0);
        } else {
            ck_assert_kv(kv_fut_status(f[i]), KV_OK);
            ck_assert_int_eq(atomic_load(&work_ran[i]), 1);
        }
        kv_fut_free(f[i]);
    }
    for (int i = 0; i < 2; i++) {
        ck_assert_kv(kv_fut_status(block[i]), KV_OK);
        kv_fut_free(block[i]);
    }
    kv_pool_free(pool);
    gate_destroy(&g);
}
END_TEST

/* A loop and a one-thread pool whose thread a gate_work job on g holds:
 * the job's future. */
static kv_fut *held_pool(kv_loop **loop, kv_pool **pool, gate *g)
{
    *loop = new_loop();
    *pool = new_pool(1);
    gate_init(g);
    kv_fut *f = kv_pool_work(*loop, *pool, gate_work, g);
    gate_wait_blocked(g, 1);
    return f;
}

START_TEST(test_pool_cancel_running)
{
    kv_loop *loop;
    kv_pool *pool;
    gate g;
    kv_fut *f = held_pool(&loop, &pool, &g);
    kv_fut_cancel(f); /* running: not interrupted, the future is cancelled */
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    ck_assert(kv_loop_alive(loop)); /* the job still runs */
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    gate_open(&g);
    tu_finish_loop(loop);
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    kv_fut_free(f);
    kv_pool_free(pool);
    gate_destroy(&g);
}
END_TEST

static void *pool_free_main(void *arg)
{
    kv_pool_free(arg);
    return NULL;
}

/* kv_pool_free(pool) on a new thread, which the caller joins. */
static pthread_t free_pool_async(kv_pool *pool)
{
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, pool_free_main, pool), 0);
    return th;
}

START_TEST(test_pool_free_cancels_queued)
{
    memset(work_ran, 0, sizeof work_ran);
    kv_loop *loop;
    kv_pool *pool;
    gate g;
    kv_fut *blocker = held_pool(&loop, &pool, &g);
    kv_fut *f[10];
    for (int i = 0; i < 10; i++)
        f[i] = kv_pool_work(loop, pool, flag_work, (void *)(intptr_t)i);
    /* Free the pool on another thread: it cancels the queue at once, then
     * waits for the running blocker. */
    pthread_t th = free_pool_async(pool);
    for (int i = 0; i < 10; i++)
        ck_assert_kv(kv_wait(f[i]), KV_ECANCELED);
    ck_assert(!kv_fut_done(blocker));
    gate_open(&g);
    ck_assert_kv(kv_wait(blocker), KV_OK);
    pthread_join(th, NULL);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(atomic_load(&work_ran[i]), 0);
        kv_fut_free(f[i]);
    }
    kv_fut_free(blocker);
    tu_finish_loop(loop);
    gate_destroy(&g);
}
END_TEST

/* Internal cancel: true only while queued; done never runs inside it. */
static gate *cancel_gate;
static void gate_job_work(kv__job *j)
{
    tjob_work(j);
    gate_work(cancel_gate);
}

START_TEST(test_pool_cancel_internal)
{
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(1);
    gate g;
    gate_init(&g);
    cancel_gate = &g;
    int count = 0;
    tjob blocker, queued;
    tjob_init(&blocker, loop, &count);
    blocker.job.work = gate_job_work;
    tjob_init(&queued, loop, &count);
    kv__pool_submit(pool, loop, &blocker.job);
    gate_wait_blocked(&g, 1);
    kv__pool_submit(pool, loop, &queued.job);
    ck_assert(!kv__pool_cancel(pool, &blocker.job)); /* running */
    ck_assert(kv__pool_cancel(pool, &queued.job));
    ck_assert(!kv__pool_cancel(pool, &queued.job)); /* already removed */
    ck_assert_int_eq(queued.done, 0);               /* not inside cancel */
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    gate_open(&g);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(count, 2);
    ck_assert_int_eq(queued.done, 1);
    ck_assert_kv(queued.status, KV_ECANCELED);
    ck_assert_int_eq(atomic_load(&queued.ran), 0);
    ck_assert_kv(blocker.status, KV_OK);
    ck_assert_int_eq(atomic_load(&blocker.ran), 1);
    ck_assert(!kv__pool_cancel(pool, &blocker.job)); /* finished */
    kv_pool_free(pool);
    tu_finish_loop(loop);
    gate_destroy(&g);
}
END_TEST

/* The loop blocks in the kernel; a finishing job must wake it. */
static int slow_work(void *arg)
{
    usleep((useconds_t)(intptr_t)arg * 1000);
    return KV_OK;
}

START_TEST(test_pool_wakes_sleeping_loop)
{
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    int slept = 0;
    for (int round = 0; round < 5; round++) {
        kv__loop_stats a, b;
        kv__loop_get_stats(loop, &a);
        double t0 = tu_now_ms();
        kv_fut *f = kv_pool_work(loop, pool, slow_work, (void *)(intptr_t)50);
        ck_assert_kv(kv_wait(f), KV_OK);
        double dt = tu_now_ms() - t0;
        kv__loop_get_stats(loop, &b);
        ck_assert_msg(dt < 1000, "woken after %.1f ms", dt);
        if (b.waits > a.waits) { /* it slept (unless descheduled 50 ms) */
            slept++;
            ck_assert_uint_ge(b.wakes - a.wakes, 1); /* and was woken */
            ck_assert_uint_ge(b.wake_cqes - a.wake_cqes, 1);
        }
        kv_fut_free(f);
    }
    ck_assert_int_ge(slept, 1);
    kv_pool_free(pool);
    tu_finish_loop(loop);
}
END_TEST

/* Ring operations and pool jobs on one loop at once. */
START_TEST(test_pool_and_timers_mixed)
{
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    norder = 0;
    kv_fut *s = kv_sleep(loop, 150);
    kv_fut *w = kv_pool_work(loop, pool, slow_work, (void *)(intptr_t)40);
    kv_fut *s2 = kv_sleep(loop, 5);
    kv_fut_then(s, order_cb_any, (void *)3);
    kv_fut_then(w, order_cb_any, (void *)2);
    kv_fut_then(s2, order_cb_any, (void *)1);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(norder, 3);
    ck_assert_int_eq(order[0], 1);
    ck_assert_int_eq(order[1], 2);
    ck_assert_int_eq(order[2], 3);
    kv_fut_free(s);
    kv_fut_free(s2);
    kv_fut_free(w);
    kv_pool_free(pool);
    tu_finish_loop(loop);
}
END_TEST

/* Cancel after kv_pool_free took the job: must not touch the freed pool. */
START_TEST(test_cancel_after_pool_free)
{
    memset(work_ran, 0, sizeof work_ran);
    kv_loop *loop;
    kv_pool *pool;
    gate g;
    kv_fut *blocker = held_pool(&loop, &pool, &g);
    kv_fut *q = kv_pool_work(loop, pool, flag_work, (void *)(intptr_t)3);
    pthread_t th = free_pool_async(pool);
    usleep(100 * 1000); /* kv_pool_free cancels the queue, then joins */
    gate_open(&g);
    pthread_join(th, NULL); /* the pool is gone */
    kv_fut_cancel(q);       /* posted but not yet finished on the loop */
    ck_assert_kv(kv_fut_status(q), KV_ECANCELED);
    ck_assert_kv(kv_wait(blocker), KV_OK);
    tu_finish_loop(loop);
    ck_assert_int_eq(atomic_load(&work_ran[3]), 0);
    kv_fut_free(q);
    kv_fut_free(blocker);
    gate_destroy(&g);
}
END_TEST

START_TEST(test_pool_new_args)
{
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(NULL, 1), KV_EINVAL);
    ck_assert_kv(kv_pool_new(&pool, 1025), KV_EINVAL);
    ck_assert_ptr_null(pool);
    ck_assert_kv(kv_pool_new(&pool, 3), KV_OK);
    ck_assert_uint_eq(kv_pool_size(pool), 3);
    kv_pool_free(pool);
    ck_assert_kv(kv_pool_new(&pool, 0), KV_OK);
    ck_assert_uint_ge(kv_pool_size(pool), 1);
    kv_pool_free(pool);
    kv_pool_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Timers                                                                   */
/* ------------------------------------------------------------------------ */

START_TEST(test_sleep_order)
{
    static const int ms[] = {50, 10, 30, 0, 20, 40};
    kv_loop *loop = new_loop();
    kv_fut *f[6];
    norder = 0;
    double t0 = tu_now_ms();
    for (int i = 0; i < 6; i++) {
        f[i] = kv_sleep(loop, (uint64_t)ms[i]);
        ck_assert_int_eq(
            kv_fut_then(f[i], order_cb_any, (void *)(intptr_t)ms[i]), KV_OK);
        ck_assert(!kv_fut_done(f[i]));
    }
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    double dt = tu_now_ms() - t0;
    ck_assert_int_eq(norder, 6);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(order[i], i * 10);
    ck_assert_msg(dt >= 49.0, "slept %.1f ms", dt);
    for (int i = 0; i < 6; i++)
        kv_fut_free(f[i]);
    tu_finish_loop(loop);
}
END_TEST

START_TEST(test_sleep_cancel)
{
    kv_loop *loop = new_loop();
    cb_count = 0;
    /* Cancelled before it reached the kernel... */
    kv_fut *a = kv_sleep(loop, 10000);
    ck_assert_int_eq(kv_fut_then(a, count_cb, NULL), KV_OK);
    kv_fut_cancel(a);
    ck_assert_kv(kv_fut_status(a), KV_ECANCELED);
    ck_assert_int_eq(cb_count, 0);
    /* ...and after. */
    kv_fut *b = kv_sleep(loop, 10000);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    kv_fut_cancel(b);
    kv_fut_cancel(b); /* no-op */
    ck_assert_kv(kv_fut_status(b), KV_ECANCELED);
    /* Freed right after cancel: the timeout's CQE must not touch it. */
    kv_fut_free(b);
    double t0 = tu_now_ms();
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_msg(tu_now_ms() - t0 < 2000, "cancel did not remove the timer");
    ck_assert_int_eq(cb_count, 1);
    ck_assert_kv(kv_fut_status(a), KV_ECANCELED);
    kv_fut_free(a);
    tu_finish_loop(loop);
}
END_TEST

static void free_in_cb(kv_fut *f, void *arg)
{
    (void)arg;
    cb_count++;
    kv_fut_free(f); /* the callback's owner drops the last user reference */
}

START_TEST(test_free_pending_futures)
{
    kv_loop *loop = new_loop();
    kv_pool *pool = new_pool(2);
    cb_count = 0;
    kv_fut_free(kv_sleep(loop, 5));
    kv_fut_free(kv_pool_work(loop, pool, code_work, NULL));
    kv_fut *s = kv_sleep(loop, 5);
    ck_assert_int_eq(kv_fut_then(s, count_cb, NULL), KV_OK);
    kv_fut_free(s); /* registered callbacks still run */
    kv_fut *w = kv_pool_work(loop, pool, code_work, NULL);
    ck_assert_int_eq(kv_fut_then(w, count_cb, NULL), KV_OK);
    kv_fut_free(w);
    kv_fut *x = kv_sleep(loop, 1);
    ck_assert_int_eq(kv_fut_then(x, free_in_cb, NULL), KV_OK);
    /* Cancelled and freed while queued on the pool. */
    kv_fut *q = kv_pool_work(loop, pool, code_work, NULL);
    kv_fut_cancel(q);
    kv_fut_free(q);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(cb_count, 3);
    kv_pool_free(pool);
    tu_finish_loop(loop);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Loop semantics                                                           */
/* ------------------------------------------------------------------------ */

START_TEST(test_loop_free_busy)
{
    kv_loop *loop = new_loop();
    ck_assert_kv(kv_loop_free(NULL), KV_OK);
    kv_fut *f = kv_sleep(loop, 1);
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);

    kv_pool *pool = new_pool(1);
    kv_fut *w = kv_pool_work(loop, pool, code_work, NULL);
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    ck_assert_kv(kv_wait(w), KV_OK);
    kv_fut_free(w);
    kv_pool_free(pool);

    kv__loop_ref(loop);
    ck_assert(kv_loop_alive(loop));
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    /* A reference alone cannot complete anything: run does not block. */
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 1);
    kv__loop_unref(loop);

    /* Callbacks due also keep it alive. */
    kv_fut *u = kv_fut_new(loop);
    ck_assert_int_eq(kv_fut_then(u, count_cb, NULL), KV_OK);
    kv_fut_complete(u);
    ck_assert(kv_loop_alive(loop));
    ck_assert_kv(kv_loop_free(loop), KV_EBUSY);
    kv_fut_free(u);
    tu_finish_loop(loop);
}
END_TEST

static int reentry_rc;
static void reenter_cb(kv_fut *f, void *arg)
{
    reentry_rc = kv_loop_run(kv_fut_loop(f), KV_RUN_NOWAIT);
    *(int *)arg = kv_wait(f);
}

START_TEST(test_loop_modes)
{
    kv_loop *loop = new_loop();
    /* Nothing alive: ONCE and DEFAULT return at once. */
    double t0 = tu_now_ms();
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert(tu_now_ms() - t0 < 100);
    ck_assert_int_eq(kv_loop_run(NULL, KV_RUN_ONCE), KV_EINVAL);
    ck_assert_int_eq(kv_loop_run(loop, (kv_run_mode)7), KV_EINVAL);

    /* NOWAIT does not wait for a pending timer. */
    kv_fut *f = kv_sleep(loop, 200);
    t0 = tu_now_ms();
    ck_assert_int_gt(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert_int_gt(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert(tu_now_ms() - t0 < 150);
    ck_assert(!kv_fut_done(f));
    /* ONCE blocks until it fires. */
    while (!kv_fut_done(f))
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert(tu_now_ms() - t0 >= 199.0);
    ck_assert_kv(kv_fut_status(f), KV_OK);

    /* Re-entry from a callback is refused. */
    int wait_rc = 0;
    reentry_rc = 0;
    ck_assert_int_eq(kv_fut_then(f, reenter_cb, &wait_rc), KV_OK);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(reentry_rc, KV_EINVAL);
    ck_assert_int_eq(wait_rc, KV_OK); /* f is done: kv_wait need not run */
    kv_fut_free(f);
    tu_finish_loop(loop);
}
END_TEST

START_TEST(test_loop_opts)
{
    kv_loop *loop = NULL;
    kv_loop_opts o;
    ck_assert_kv(kv_loop_new(NULL, NULL), KV_EINVAL);
    memset(&o, 0, sizeof o);
    o.flags = 0x80;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_EINVAL);
    ck_assert_str_ne(kv_last_errmsg(), "");
    memset(&o, 0, sizeof o);
    o.sq_entries = 64;
    o.cq_entries = 64; /* less than 2 x sq */
    ck_assert_kv(kv_loop_new(&loop, &o), KV_EINVAL);
    o.sq_entries = 65536;
    o.cq_entries = 0;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_EINVAL);
    ck_assert_ptr_null(loop);

    memset(&o, 0, sizeof o);
    o.sq_entries = 5; /* rounded up to 8 */
    o.flags = KV_LOOP_NO_DEFER_TASKRUN;
    o.iowq_bounded = 8;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_OK);
    ck_assert_uint_eq(kv__loop_ring(loop)->sq.ring_entries, 8);
    ck_assert_uint_ge(kv__loop_ring(loop)->cq.ring_entries, 16);
    ck_assert(!(kv__loop_ring(loop)->flags & IORING_SETUP_DEFER_TASKRUN));
    ck_assert(kv__loop_has_op(loop, IORING_OP_NOP));
    ck_assert(kv__loop_has_op(loop, IORING_OP_TIMEOUT));
    ck_assert(!kv__loop_has_op(loop, -1));
    ck_assert(!kv__loop_has_op(loop, 300));
    kv_fut *f = kv_sleep(loop, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    tu_finish_loop(loop);
}
END_TEST

/* Out of memory: every constructor fails cleanly, futures fail KV_ENOMEM. */
START_TEST(test_loop_pool_oom)
{
    kv_loop *loop = NULL;
    kv_pool *pool = NULL;
    kv__alloc_fail_at(1, false);
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_ENOMEM);
    ck_assert_ptr_null(loop);
    for (unsigned long nth = 1; nth <= 2; nth++) {
        kv__alloc_fail_at(nth, false);
        ck_assert_kv(kv_pool_new(&pool, 2), KV_ENOMEM);
        ck_assert_ptr_null(pool);
    }
    kv__alloc_fail_at(0, false);
    loop = new_loop();
    pool = new_pool(1);
    for (unsigned long nth = 1; nth <= 3; nth++) {
        kv__alloc_fail_at(nth, false);
        kv_fut *s = kv_sleep(loop, 1);
        kv__alloc_fail_at(nth, false);
        kv_fut *w = kv_pool_work(loop, pool, code_work, NULL);
        kv__alloc_fail_at(0, false);
        ck_assert_ptr_nonnull(s);
        ck_assert_ptr_nonnull(w);
        int rs = kv_wait(s), rw = kv_wait(w);
        ck_assert(rs == KV_OK || rs == KV_ENOMEM);
        ck_assert(rw == KV_OK || rw == KV_ENOMEM);
        if (nth == 1) { /* the future itself could not be made */
            ck_assert_kv(rs, KV_ENOMEM);
            ck_assert_kv(rw, KV_ENOMEM);
        }
        kv_fut_free(s);
        kv_fut_free(w);
    }
    /* Everything fails: the shared static future. */
    kv__alloc_fail_at(1, true);
    kv_fut *f = kv_sleep(loop, 1);
    kv__alloc_fail_at(0, false);
    ck_assert_kv(kv_fut_status(f), KV_ENOMEM);
    ck_assert_ptr_null(kv_fut_loop(f));
    kv_fut_free(f);
    kv_pool_free(pool);
    tu_finish_loop(loop);
}
END_TEST

/* Driving a loop from another thread is refused with a clear message. */
typedef struct offthread {
    kv_loop *loop;
    int rc;
    char msg[200];
} offthread;

static void *offthread_main(void *arg)
{
    offthread *o = arg;
    o->rc = kv_loop_run(o->loop, KV_RUN_NOWAIT);
    snprintf(o->msg, sizeof o->msg, "%s", kv_last_errmsg());
    return NULL;
}

START_TEST(test_loop_off_thread)
{
    kv_loop *loop = new_loop();
    kv_fut *f = kv_sleep(loop, 1);
    offthread o = {.loop = loop};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, offthread_main, &o), 0);
    pthread_join(th, NULL);
    ck_assert_kv(o.rc, KV_EINVAL);
    ck_assert_msg(strstr(o.msg, "loop thread") != NULL, "%s", o.msg);
    ck_assert_kv(kv_wait(f), KV_OK); /* the owner still runs it */
    kv_fut_free(f);
    tu_finish_loop(loop);
}
END_TEST

/*
 * io_uring blocked by a seccomp filter (as in a container): kv_loop_new
 * starts in fallback mode (uring_emu.c; check_emu tests it) and says why.
 * In a child process: the filter stays.
 */
START_TEST(test_loop_new_seccomp)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (tu_block_io_uring() != 0)
            _exit(77);
        unsetenv("KV_IO_URING"); /* tests/fallback.sh sets it */
        kv_loop *l = NULL;
        int rc = kv_loop_new(&l, NULL);
        const char *m = kv_last_errmsg();
        if (rc != KV_OK || l == NULL ||
            strcmp(kv_loop_backend(l), "fallback") != 0)
            _exit(1);
        if (strstr(m, "io_uring_setup") == NULL ||
            (strstr(m, "seccomp") == NULL && strstr(m, "sysctl") == NULL))
            _exit(2);
        _exit(0);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77)
        return; /* seccomp unavailable here: nothing to check */
    ck_assert_msg(WEXITSTATUS(st) == 0, "child check %d failed",
                  WEXITSTATUS(st));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* The ring path                                                            */
/* ------------------------------------------------------------------------ */

typedef struct nop_op {
    kv__op op;
    int count;
    int bad;
} nop_op;

static void nop_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    nop_op *n = KV__CONTAINER_OF(op, nop_op, op);
    n->count++;
    if (res != 0)
        n->bad++;
}

static void submit_nops(kv_loop *loop, nop_op *n, unsigned k, bool link)
{
    struct io_uring_sqe *sqes[64];
    ck_assert_uint_le(k, 64);
    ck_assert_kv(kv__loop_sqes(loop, sqes, k), KV_OK);
    for (unsigned i = 0; i < k; i++) {
        io_uring_prep_nop(sqes[i]);
        io_uring_sqe_set_data64(sqes[i], (uint64_t)(uintptr_t)&n->op);
        if (link && i + 1 < k)
            sqes[i]->flags |= IOSQE_IO_LINK;
    }
}

START_TEST(test_ring_nop_round_trips)
{
    kv_loop *loop = new_loop();
    nop_op n = {.op.cb = nop_cb};
    for (int round = 0; round < 100; round++) {
        submit_nops(loop, &n, 16, false);
        ck_assert(kv_loop_alive(loop));
        ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
        ck_assert_int_eq(n.count, (round + 1) * 16);
    }
    ck_assert_int_eq(n.bad, 0);
    ck_assert_kv(kv__loop_flush(loop), KV_OK);
    /* KV__UD_IGNORE CQEs are counted, not dispatched. */
    struct io_uring_sqe *sqe;
    ck_assert_kv(kv__loop_sqes(loop, &sqe, 1), KV_OK);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    ck_assert(kv_loop_alive(loop));
    ck_assert_kv(kv__loop_flush(loop), KV_OK);
    tu_finish_loop(loop);
}
END_TEST

START_TEST(test_ring_sq_full)
{
    kv_loop_opts o;
    memset(&o, 0, sizeof o);
    o.sq_entries = 8;
    o.cq_entries = 16;
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_OK);
    nop_op n = {.op.cb = nop_cb};
    /* 50 x 5 = 250 SQEs in one turn: far more than the SQ (8) and the CQ
     * (16): submits on a full SQ, and CQ overflow. */
    for (int i = 0; i < 50; i++)
        submit_nops(loop, &n, 5, false);
    /* Linked chains of the SQ's full size are never split. */
    nop_op chain = {.op.cb = nop_cb};
    for (int i = 0; i < 10; i++) {
        submit_nops(loop, &n, 3, false);
        submit_nops(loop, &chain, 8, true);
    }
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(n.count, 280);
    ck_assert_int_eq(chain.count, 80);
    ck_assert_int_eq(n.bad + chain.bad, 0);

    struct io_uring_sqe *sqes[9];
    ck_assert_kv(kv__loop_sqes(loop, sqes, 9), KV_EINVAL);
    ck_assert_kv(kv__loop_sqes(loop, sqes, 0), KV_EINVAL);
    ck_assert(!kv_loop_alive(loop));
    tu_finish_loop(loop);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("loop");

    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_pool_100k_jobs);
    tcase_add_test(tc, test_pool_shared_by_four_loops);
    tcase_add_test(tc, test_pool_burst_while_busy);
    tcase_add_test(tc, test_pool_work_status);
    tcase_add_test(tc, test_pool_cancel_queued);
    tcase_add_test(tc, test_pool_cancel_running);
    tcase_add_test(tc, test_pool_free_cancels_queued);
    tcase_add_test(tc, test_cancel_after_pool_free);
    tcase_add_test(tc, test_pool_cancel_internal);
    tcase_add_test(tc, test_pool_wakes_sleeping_loop);
    tcase_add_test(tc, test_pool_and_timers_mixed);
    tcase_add_test(tc, test_pool_new_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("timers");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_sleep_order);
    tcase_add_test(tc, test_sleep_cancel);
    tcase_add_test(tc, test_free_pending_futures);
    suite_add_tcase(s, tc);

    tc = tcase_create("loop");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_loop_free_busy);
    tcase_add_test(tc, test_loop_modes);
    tcase_add_test(tc, test_loop_opts);
    tcase_add_test(tc, test_loop_new_seccomp);
    tcase_add_test(tc, test_loop_off_thread);
    tcase_add_test(tc, test_loop_pool_oom);
    suite_add_tcase(s, tc);

    tc = tcase_create("ring");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_ring_nop_round_trips);
    tcase_add_test(tc, test_ring_sq_full);
    suite_add_tcase(s, tc);

    return tu_run(s);
}
