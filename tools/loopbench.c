/*
 * loopbench - throughput of the engine's two completion paths.
 *
 *  1. Pool completions through the eventfd path: empty jobs run on a pool,
 *     finished jobs come back on the loop through the lock-free list and
 *     (when the loop may sleep) an eventfd write.  Measured as a burst (all
 *     jobs queued at once) and as a steady stream (a window of jobs in
 *     flight, each completion submitting the next), with raw internal jobs
 *     and with the public kv_pool_work futures.
 *  2. io_uring NOP round trips through kv__loop_sqes: batches in flight,
 *     each completion resubmitting.
 *
 * Links libkvstore_core (the internal kv__ API).  Usage:
 *   loopbench [-n jobs] [-t threads] [-w window] [-N nops] [-b batch] [-r runs]
 */
#include "config.h"

#include "core/core.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "loopbench: %s: %s (%s)\n", what, kv_strerror(rc),
            kv_last_errmsg());
    exit(1);
}

typedef struct result {
    double secs;
    kv__loop_stats st;
} result;

static void stats_diff(kv__loop_stats *d, const kv__loop_stats *a,
                       const kv__loop_stats *b)
{
    d->turns = b->turns - a->turns;
    d->waits = b->waits - a->waits;
    d->submits = b->submits - a->submits;
    d->cqes = b->cqes - a->cqes;
    d->jobs = b->jobs - a->jobs;
    d->wake_cqes = b->wake_cqes - a->wake_cqes;
    d->wakes = b->wakes - a->wakes;
    d->pushes = b->pushes - a->pushes;
}

/* ------------------------------------------------------------------------ */
/* Pool jobs, internal                                                      */
/* ------------------------------------------------------------------------ */

typedef struct bench {
    kv_loop *loop;
    kv_pool *pool;
    uint64_t target; /* jobs to complete */
    uint64_t submitted;
    uint64_t completed;
    bool resubmit; /* steady mode: done submits the next job */
} bench;

typedef struct bjob {
    kv__job job;
    bench *b;
} bjob;

static void empty_work(kv__job *j)
{
    (void)j;
}

static void bjob_done(kv__job *j, int status)
{
    bjob *bj = KV__CONTAINER_OF(j, bjob, job);
    bench *b = bj->b;
    if (status != KV_OK)
        die("job", status);
    b->completed++;
    if (b->resubmit && b->submitted < b->target) {
        b->submitted++;
        kv__pool_submit(b->pool, b->loop, j);
    }
}

static result run_jobs(kv_loop *loop, kv_pool *pool, uint64_t n,
                       uint64_t window)
{
    bench b = {.loop = loop, .pool = pool, .target = n, .resubmit = window < n};
    uint64_t njobs = window < n ? window : n;
    bjob *jobs = calloc(njobs, sizeof *jobs);
    if (jobs == NULL)
        die("calloc", KV_ENOMEM);
    kv__loop_stats a, z;
    result r;
    kv__loop_get_stats(loop, &a);
    double t0 = now_s();
    for (uint64_t i = 0; i < njobs; i++) {
        jobs[i].job.work = empty_work;
        jobs[i].job.done = bjob_done;
        jobs[i].b = &b;
        b.submitted++;
        kv__pool_submit(pool, loop, &jobs[i].job);
    }
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    r.secs = now_s() - t0;
    if (rc != 0 || b.completed != n)
        die("run (jobs)", rc < 0 ? rc : KV_ERROR);
    kv__loop_get_stats(loop, &z);
    stats_diff(&r.st, &a, &z);
    free(jobs);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Pool jobs, public kv_pool_work                                           */
/* ------------------------------------------------------------------------ */

typedef struct pbench {
    kv_loop *loop;
    kv_pool *pool;
    uint64_t target, submitted, completed;
} pbench;

static int empty_pwork(void *arg)
{
    (void)arg;
    return KV_OK;
}

static void pwork_submit(pbench *b);

static void pwork_done(kv_fut *f, void *arg)
{
    pbench *b = arg;
    if (kv_fut_status(f) != KV_OK)
        die("kv_pool_work", kv_fut_status(f));
    kv_fut_free(f);
    b->completed++;
    if (b->submitted < b->target)
        pwork_submit(b);
}

static void pwork_submit(pbench *b)
{
    b->submitted++;
    kv_fut *f = kv_pool_work(b->loop, b->pool, empty_pwork, NULL);
    int rc = kv_fut_then(f, pwork_done, b);
    if (rc != KV_OK)
        die("kv_fut_then", rc);
}

static result run_pwork(kv_loop *loop, kv_pool *pool, uint64_t n,
                        uint64_t window)
{
    pbench b = {.loop = loop, .pool = pool, .target = n};
    kv__loop_stats a, z;
    result r;
    kv__loop_get_stats(loop, &a);
    double t0 = now_s();
    for (uint64_t i = 0; i < window && i < n; i++)
        pwork_submit(&b);
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    r.secs = now_s() - t0;
    if (rc != 0 || b.completed != n)
        die("run (kv_pool_work)", rc < 0 ? rc : KV_ERROR);
    kv__loop_get_stats(loop, &z);
    stats_diff(&r.st, &a, &z);
    return r;
}

/* ------------------------------------------------------------------------ */
/* NOP round trips                                                          */
/* ------------------------------------------------------------------------ */

typedef struct nops {
    kv__op op;
    kv_loop *loop;
    uint64_t target, submitted, completed;
} nops;

static void nop_submit(nops *s)
{
    struct io_uring_sqe *sqe;
    int rc = kv__loop_sqes(s->loop, &sqe, 1);
    if (rc != KV_OK)
        die("kv__loop_sqes", rc);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&s->op);
    s->submitted++;
}

static void nop_done(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    nops *s = KV__CONTAINER_OF(op, nops, op);
    if (res != 0)
        die("nop", res);
    s->completed++;
    if (s->submitted < s->target)
        nop_submit(s);
}

static result run_nops(kv_loop *loop, uint64_t n, unsigned batch)
{
    nops s = {.op.cb = nop_done, .loop = loop, .target = n};
    kv__loop_stats a, z;
    result r;
    kv__loop_get_stats(loop, &a);
    double t0 = now_s();
    for (unsigned i = 0; i < batch && s.submitted < n; i++)
        nop_submit(&s);
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    r.secs = now_s() - t0;
    if (rc != 0 || s.completed != n)
        die("run (nops)", rc < 0 ? rc : KV_ERROR);
    kv__loop_get_stats(loop, &z);
    stats_diff(&r.st, &a, &z);
    return r;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                   */
/* ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Best run (highest rate) and the median, with the best run's counters. */
static void report(const char *name, uint64_t n, result *rs, int runs,
                   bool jobs)
{
    double rates[64];
    int best = 0;
    for (int i = 0; i < runs; i++) {
        rates[i] = (double)n / rs[i].secs;
        if (rates[i] > (double)n / rs[best].secs)
            best = i;
    }
    qsort(rates, (size_t)runs, sizeof rates[0], cmp_double);
    const kv__loop_stats *st = &rs[best].st;
    printf("  %-34s %8.2f M/s best  %8.2f M/s median", name,
           (double)n / rs[best].secs / 1e6, rates[runs / 2] / 1e6);
    if (jobs)
        printf("  | eventfd writes %llu (%.5f/job, %.0f jobs/write), "
               "loop waits %llu",
               (unsigned long long)st->wakes, (double)st->wakes / (double)n,
               st->wakes ? (double)n / (double)st->wakes : (double)n,
               (unsigned long long)st->waits);
    else
        printf("  | io_uring_enter calls %llu (%.1f CQEs/enter), loop waits "
               "%llu",
               (unsigned long long)st->submits,
               st->submits ? (double)st->cqes / (double)st->submits : 0.0,
               (unsigned long long)st->waits);
    printf("\n");
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loopbench [-n jobs] [-t threads] [-w window] [-N nops] "
            "[-b batch] [-r runs]\n"
            "  -n  pool jobs per run (default 1000000)\n"
            "  -t  pool threads (default 2)\n"
            "  -w  jobs in flight in the steady test (default 4096)\n"
            "  -N  NOP round trips per run (default 2000000)\n"
            "  -b  NOPs in flight (default 64)\n"
            "  -r  runs of each test (default 5, at most 64)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t njobs = 1000000, nnops = 2000000, window = 4096;
    unsigned threads = 2, batch = 64;
    int runs = 5, c;
    while ((c = getopt(argc, argv, "n:t:w:N:b:r:h")) != -1) {
        switch (c) {
        case 'n':
            njobs = strtoull(optarg, NULL, 10);
            break;
        case 't':
            threads = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'w':
            window = strtoull(optarg, NULL, 10);
            break;
        case 'N':
            nnops = strtoull(optarg, NULL, 10);
            break;
        case 'b':
            batch = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            runs = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (njobs == 0 || nnops == 0 || window == 0 || batch == 0 || runs < 1 ||
        runs > 64)
        usage();

    kv_loop *loop;
    kv_pool *pool;
    int rc = kv_loop_new(&loop, NULL);
    if (rc != KV_OK)
        die("kv_loop_new", rc);
    rc = kv_pool_new(&pool, threads);
    if (rc != KV_OK)
        die("kv_pool_new", rc);
    struct io_uring *ring = kv__loop_ring(loop);
    printf("loopbench: kvstore %s, %u pool threads, %d runs each, ring sq %u "
           "cq %u%s\n",
           kv_version_string(), kv_pool_size(pool), runs, ring->sq.ring_entries,
           ring->cq.ring_entries,
           (ring->flags & IORING_SETUP_DEFER_TASKRUN)
               ? ", SINGLE_ISSUER|DEFER_TASKRUN"
               : "");

    result rs[64];
    printf("pool completions (empty jobs, eventfd + lock-free list), %llu "
           "jobs per run:\n",
           (unsigned long long)njobs);
    for (int i = 0; i < runs; i++)
        rs[i] = run_jobs(loop, pool, njobs, njobs);
    report("burst (all queued at once)", njobs, rs, runs, true);
    for (int i = 0; i < runs; i++)
        rs[i] = run_jobs(loop, pool, njobs, window);
    char name[64];
    snprintf(name, sizeof name, "steady (%llu in flight)",
             (unsigned long long)window);
    report(name, njobs, rs, runs, true);
    for (int i = 0; i < runs; i++)
        rs[i] = run_pwork(loop, pool, njobs, window);
    snprintf(name, sizeof name, "kv_pool_work+then (%llu in flight)",
             (unsigned long long)window);
    report(name, njobs, rs, runs, true);

    printf("io_uring NOP round trips (kv__loop_sqes + IORING_OP_NOP), %llu "
           "per run:\n",
           (unsigned long long)nnops);
    for (int i = 0; i < runs; i++)
        rs[i] = run_nops(loop, nnops, batch);
    snprintf(name, sizeof name, "%u in flight", batch);
    report(name, nnops, rs, runs, false);
    uint64_t pp = nnops / 16 ? nnops / 16 : 1;
    for (int i = 0; i < runs; i++)
        rs[i] = run_nops(loop, pp, 1);
    report("1 in flight (ping-pong)", pp, rs, runs, false);

    kv_pool_free(pool);
    rc = kv_loop_free(loop);
    if (rc != KV_OK)
        die("kv_loop_free", rc);
    return 0;
}
