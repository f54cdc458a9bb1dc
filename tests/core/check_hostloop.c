/*
 * check_hostloop.c - a loop driven by a host event loop: kv_loop_fd,
 * kv_loop_timeout, kv_loop_wake.
 *
 * Every completion test runs for each ring mode the loop can be in (the
 * default SINGLE_ISSUER|DEFER_TASKRUN ring, KV_LOOP_NO_DEFER_TASKRUN,
 * KV_LOOP_FORCE_FALLBACK) and each way a host waits on the descriptor
 * (poll, level-triggered epoll, a poll request in a second io_uring), and
 * only ever calls kv_loop_run(loop, KV_RUN_NOWAIT): a missed notification
 * shows up as a wait that ends empty-handed although the next run finds
 * work ready (or, at worst, as a test that never ends).  After every run
 * nothing may be left unsubmitted.  The Redis case runs when KV_TEST_REDIS
 * names a server (tests/redis_env.sh sets it; it skips otherwise).
 */
#include "config.h"

#include "testutil.h"

#include "core/core.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>

/* A wait with no timeout of its own ends after this (a liveness guard). */
#define GUARD_MS 5000

enum { MODE_DEFER, MODE_COOP, MODE_FALLBACK, NMODES };
enum { DRV_POLL, DRV_EPOLL, DRV_URING, NDRVS };
static const char *const mode_names[] = {"defer_taskrun", "coop_taskrun",
                                         "fallback"};
static const char *const drv_names[] = {"poll", "epoll", "io_uring poll"};

#define UD_POLL 1u
#define UD_TIMEOUT 2u

typedef struct host {
    kv_loop *loop;
    int drv;
    int fd;
    int ep;                /* DRV_EPOLL */
    struct io_uring ring;  /* DRV_URING */
    bool armed;            /* DRV_URING: the poll request is in the ring */
    bool strict;           /* no completion may come from a timer */
    unsigned waits;        /* waits made */
    unsigned readable;     /* waits that ended with the fd readable */
    char what[64];
} host;

/*
 * Under valgrind (3.19 at least) a thread blocked in io_uring_enter keeps
 * valgrind's big lock, so no other thread runs (loop.c works around it
 * too): the io_uring driver then waits in short slices.
 */
static bool under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p != NULL && strstr(p, "vgpreload") != NULL;
}

static kv_loop *mode_loop(int mode)
{
    kv_loop_opts o = {0};
    if (mode == MODE_COOP)
        o.flags = KV_LOOP_NO_DEFER_TASKRUN;
    else if (mode == MODE_FALLBACK)
        o.flags = KV_LOOP_FORCE_FALLBACK;
    kv_loop *loop = NULL;
    int rc = kv_loop_new(&loop, &o);
    ck_assert_msg(rc == KV_OK, "kv_loop_new: %s (%s)", kv_strerror(rc),
                  kv_last_errmsg());
    ck_assert_str_eq(kv_loop_backend(loop),
                     mode == MODE_FALLBACK ? "fallback" : "io_uring");
    return loop;
}

static void host_init(host *h, int combo)
{
    memset(h, 0, sizeof *h);
    int mode = combo / NDRVS;
    h->drv = combo % NDRVS;
    h->ep = -1;
    snprintf(h->what, sizeof h->what, "%s, %s", mode_names[mode],
             drv_names[h->drv]);
    h->loop = mode_loop(mode);
    h->fd = kv_loop_fd(h->loop);
    ck_assert_int_ge(h->fd, 0);
    ck_assert_int_eq(kv_loop_fd(h->loop), h->fd); /* one for its life */
    if (h->drv == DRV_EPOLL) {
        h->ep = epoll_create1(EPOLL_CLOEXEC);
        ck_assert_int_ge(h->ep, 0);
        struct epoll_event ev = {.events = EPOLLIN}; /* level-triggered */
        ck_assert_int_eq(epoll_ctl(h->ep, EPOLL_CTL_ADD, h->fd, &ev), 0);
    } else if (h->drv == DRV_URING) {
        int rc = io_uring_queue_init(8, &h->ring, 0);
        ck_assert_msg(rc == 0, "io_uring_queue_init: %s", strerror(-rc));
    }
}

/* True if the fd is readable right now (plain poll, whatever the driver). */
static bool fd_readable(const host *h)
{
    struct pollfd p = {.fd = h->fd, .events = POLLIN};
    int r;
    do {
        r = poll(&p, 1, 0);
    } while (r < 0 && errno == EINTR);
    ck_assert_int_ge(r, 0);
    return r == 1 && (p.revents & POLLIN);
}

/* Wait as the host would, at most ms (-1: GUARD_MS).  True if readable. */
static bool host_wait(host *h, int ms)
{
    if (ms < 0)
        ms = GUARD_MS;
    h->waits++;
    bool rd = false;
    if (h->drv == DRV_POLL) {
        struct pollfd p = {.fd = h->fd, .events = POLLIN};
        int r;
        do {
            r = poll(&p, 1, ms);
        } while (r < 0 && errno == EINTR);
        ck_assert_int_ge(r, 0);
        rd = r == 1 && (p.revents & POLLIN);
    } else if (h->drv == DRV_EPOLL) {
        struct epoll_event ev;
        int r;
        do {
            r = epoll_wait(h->ep, &ev, 1, ms);
        } while (r < 0 && errno == EINTR);
        ck_assert_int_ge(r, 0);
        rd = r == 1;
    } else {
        if (!h->armed) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&h->ring);
            ck_assert_ptr_nonnull(sqe);
            io_uring_prep_poll_add(sqe, h->fd, POLLIN);
            io_uring_sqe_set_data64(sqe, UD_POLL);
            h->armed = true;
        }
        bool vg = under_valgrind();
        double end = tu_now_ms() + ms;
        int left = ms;
        for (;;) {
            int slice = vg && left > 2 ? 2 : left;
            struct __kernel_timespec ts = {
                .tv_sec = slice / 1000, .tv_nsec = (slice % 1000) * 1000000L};
            struct io_uring_cqe *cqe = NULL;
            if (vg)
                sched_yield();
            int r =
                io_uring_submit_and_wait_timeout(&h->ring, &cqe, 1, &ts, NULL);
            ck_assert_msg(r >= 0 || r == -ETIME || r == -EINTR,
                          "io_uring_submit_and_wait_timeout: %s", strerror(-r));
            unsigned head, n = 0;
            io_uring_for_each_cqe(&h->ring, head, cqe)
            {
                if (cqe->user_data == UD_POLL) {
                    ck_assert_msg(cqe->res >= 0, "poll request: %s",
                                  strerror(-cqe->res));
                    h->armed = false;
                    rd = (cqe->res & POLLIN) != 0;
                }
                n++;
            }
            io_uring_cq_advance(&h->ring, n);
            left = (int)(end - tu_now_ms());
            if (rd || !h->armed || left <= 0)
                break;
        }
    }
    if (rd)
        h->readable++;
    return rd;
}

/* kv_loop_run(NOWAIT): it must not fail and must leave nothing unsubmitted. */
static void host_run(host *h)
{
    int rc = kv_loop_run(h->loop, KV_RUN_NOWAIT);
    ck_assert_msg(rc >= 0, "%s: kv_loop_run: %s", h->what, kv_strerror(rc));
    ck_assert_msg(io_uring_sq_ready(kv__loop_ring(h->loop)) == 0,
                  "%s: kv_loop_run(NOWAIT) left SQEs unsubmitted", h->what);
}

/*
 * One turn of the host's loop; done() tells whether the work it waits for
 * is finished.  A wait that ends with the fd quiet (its timeout, or
 * GUARD_MS) must not be followed by a run that finishes that work, unless
 * a timer may be what finished it (a fallback-mode timer is reported by
 * kv_loop_timeout, not by the fd): with h->strict, none may.
 */
static void host_turn(host *h, bool (*done)(void *), void *arg)
{
    int ms = kv_loop_timeout(h->loop);
    ck_assert_int_ge(ms, -1);
    bool rd = host_wait(h, ms);
    if (!rd && (ms < 0 || (h->strict && ms > 0)) && !fd_readable(h)) {
        /* The descriptor stayed quiet: nothing but a timer may be ready. */
        host_run(h);
        ck_assert_msg(!done(arg),
                      "%s: work was ready but kv_loop_fd was not readable",
                      h->what);
        return;
    }
    host_run(h);
}

static bool fut_done(void *arg)
{
    return kv_fut_done(arg);
}

static bool never_done(void *arg)
{
    (void)arg;
    return false;
}

/* Drive the loop as a host until f is done. */
static void drive(host *h, kv_fut *f)
{
    while (!kv_fut_done(f))
        host_turn(h, fut_done, f);
}

static int drive_status(host *h, kv_fut *f)
{
    ck_assert_ptr_nonnull(f);
    drive(h, f);
    int st = kv_fut_status(f);
    kv_fut_free(f);
    return st;
}

/* Drain the loop as a host, then free it and the host's resources. */
static void host_fini(host *h)
{
    while (kv_loop_alive(h->loop))
        host_turn(h, never_done, NULL);
    ck_assert_kv(kv_loop_free(h->loop), KV_OK);
    if (h->ep >= 0)
        close(h->ep);
    if (h->drv == DRV_URING)
        io_uring_queue_exit(&h->ring);
}

/* ------------------------------------------------------------------------ */
/* Completions through the descriptor                                       */
/* ------------------------------------------------------------------------ */

START_TEST(test_sleep)
{
    host h;
    host_init(&h, _i);
    /* Before any run: work may be pending, the host must run first. */
    ck_assert_int_eq(kv_loop_timeout(h.loop), 0);
    kv_fut *f = kv_sleep(h.loop, 20);
    /* Prepared outside a run: not submitted yet, so no waiting. */
    ck_assert_int_eq(kv_loop_timeout(h.loop), 0);
    ck_assert_kv(drive_status(&h, f), KV_OK);
    host_fini(&h);
}
END_TEST

/* A timer started by a callback inside the run must be submitted by it. */
static void chain_cb(kv_fut *f, void *arg)
{
    kv_fut **next = arg;
    *next = kv_sleep(kv_fut_loop(f), 10);
}

START_TEST(test_sleep_chain)
{
    host h;
    host_init(&h, _i);
    kv_fut *next = NULL;
    kv_fut *f = kv_sleep(h.loop, 5);
    ck_assert_kv(kv_fut_then(f, chain_cb, &next), KV_OK);
    ck_assert_kv(drive_status(&h, f), KV_OK);
    while (next == NULL) /* the callback runs on a later turn */
        host_turn(&h, never_done, NULL);
    ck_assert_kv(drive_status(&h, next), KV_OK);
    host_fini(&h);
}
END_TEST

static int slow_job(void *arg)
{
    (void)arg;
    usleep(20000);
    return 7;
}

START_TEST(test_pool_job)
{
    host h;
    host_init(&h, _i);
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(&pool, 2), KV_OK);
    kv_fut *f[4];
    for (int i = 0; i < 4; i++)
        f[i] = kv_pool_work(h.loop, pool, slow_job, NULL);
    for (int i = 0; i < 4; i++)
        ck_assert_kv(drive_status(&h, f[i]), KV_OK);
    host_fini(&h);
    kv_pool_free(pool);
}
END_TEST

/*
 * put, get, a stale put (conflict), delete, close: all through the fd,
 * which must tell of each completion (strict: a backend's own timers, such
 * as Redis's watchdog, must not be what finishes an operation).
 */
static void store_ops(host *h, kv_store *s)
{
    h->strict = true;
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, "/hostloop/a"), KV_OK);
    kv_fut *f = kv_put_value(s, k, "one", 3, NULL);
    ck_assert_ptr_nonnull(f);
    drive(h, f);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    uint64_t tok = kv_fut_token(f);
    kv_fut_free(f);

    f = kv_get(s, k, NULL);
    drive(h, f);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    const kv_record *r = kv_fut_record(f);
    ck_assert_uint_eq(r->len, 3);
    ck_assert_int_eq(memcmp(r->val, "one", 3), 0);
    ck_assert_uint_eq(r->token, tok);
    kv_fut_free(f);

    kv_record stale = {k, "two", 3, tok + 1000};
    ck_assert_kv(drive_status(h, kv_put(s, &stale, NULL)), KV_ECONFLICT);
    ck_assert_kv(drive_status(h, kv_delete(s, k, tok)), KV_OK);
    ck_assert_kv(drive_status(h, kv_get(s, k, NULL)), KV_ENOTFOUND);
    ck_assert_kv(drive_status(h, kv_close(s)), KV_OK);
    kv_store_free(s);
    kv_key_free(k);
    h->strict = false;
}

START_TEST(test_sqlite)
{
    host h;
    host_init(&h, _i);
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(&pool, 2), KV_OK);
    char *dir = tu_mkdtemp();
    ck_assert_ptr_nonnull(dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/db.sqlite", dir);
    kv_store *s = NULL;
    ck_assert_kv(kv_sqlite_open(&s, h.loop, pool, path, KV_SQLITE_SYNC_FULL),
                 KV_OK);
    store_ops(&h, s);
    host_fini(&h);
    kv_pool_free(pool);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(test_fs)
{
    host h;
    host_init(&h, _i);
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(&pool, 2), KV_OK);
    char *dir = tu_mkdtemp();
    ck_assert_ptr_nonnull(dir);
    kv_store *s = NULL;
    int rc = kv_fs_open(&s, h.loop, pool, dir, 0, 0);
    ck_assert_msg(rc == KV_OK, "kv_fs_open: %s (%s)", kv_strerror(rc),
                  kv_last_errmsg());
    store_ops(&h, s);
    host_fini(&h);
    kv_pool_free(pool);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(test_redis)
{
#ifdef HAVE_HIREDIS
    const char *base = getenv("KV_TEST_REDIS");
    if (base == NULL || base[0] == '\0' || strcmp(base, "skip") == 0) {
        if (_i == 0)
            fprintf(stderr, "check_hostloop: KV_TEST_REDIS unset: the Redis "
                            "case is skipped (tests/redis_env.sh sets it)\n");
        return;
    }
    host h;
    host_init(&h, _i);
    char uri[512];
    snprintf(uri, sizeof uri, "%s/hostloop%d-%ld", base, _i, (long)getpid());
    kv_store *s = NULL;
    int rc = kv_redis_open(&s, h.loop, NULL, uri, 0);
    ck_assert_msg(rc == KV_OK, "kv_redis_open %s: %s (%s)", uri,
                  kv_strerror(rc), kv_last_errmsg());
    store_ops(&h, s);
    host_fini(&h);
#else
    if (_i == 0)
        fprintf(stderr, "check_hostloop: built without hiredis: no Redis "
                        "case\n");
#endif
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Quiet when idle, wakes                                                   */
/* ------------------------------------------------------------------------ */

/* With nothing ready the fd is not readable and the host may sleep. */
START_TEST(test_quiet_when_idle)
{
    host h;
    host_init(&h, _i);
    int mode = _i / NDRVS;
    host_run(&h); /* arms the descriptor */
    ck_assert_int_eq(kv_loop_timeout(h.loop), -1);
    ck_assert(!fd_readable(&h));

    /* A long timer pending: still quiet; the fallback's timeout counts. */
    kv_fut *f = kv_sleep(h.loop, 60000);
    host_run(&h);
    host_run(&h);
    ck_assert(!fd_readable(&h));
    int ms = kv_loop_timeout(h.loop);
    if (mode == MODE_FALLBACK)
        ck_assert_msg(ms > 50000 && ms <= 60000, "timeout %d", ms);
    else
        ck_assert_int_eq(ms, -1);
    kv_fut_cancel(f);
    ck_assert_kv(drive_status(&h, f), KV_ECANCELED);
    host_fini(&h);
}
END_TEST

/* A 300 ms timer: the host wakes for its completion, not in between. */
START_TEST(test_no_busy_loop)
{
    host h;
    host_init(&h, _i);
    kv_fut *f = kv_sleep(h.loop, 300);
    host_run(&h);
    h.waits = h.readable = 0;
    ck_assert_kv(drive_status(&h, f), KV_OK);
    /* The completion, and at most a couple of early or spurious ends. */
    ck_assert_msg(h.waits <= 4, "%s: %u waits for one timer (%u readable)",
                  h.what, h.waits, h.readable);
    host_fini(&h);
}
END_TEST

typedef struct waker {
    kv_loop *loop;
    atomic_int go;
    atomic_int flag; /* what a service would set before waking */
    int rc;          /* kv_loop_wake's */
} waker;

static void *waker_main(void *arg)
{
    waker *w = arg;
    while (!atomic_load(&w->go))
        sched_yield();
    usleep(30000);
    atomic_store(&w->flag, 1);
    w->rc = kv_loop_wake(w->loop);
    return NULL;
}

static bool flag_set(void *arg)
{
    return atomic_load(&((waker *)arg)->flag) != 0;
}

START_TEST(test_wake_other_thread)
{
    host h;
    host_init(&h, _i);
    host_run(&h);
    ck_assert(!fd_readable(&h));

    /* Woken in its wait: readable, then quiet again after a run. */
    waker w = {.loop = h.loop};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, waker_main, &w), 0);
    atomic_store(&w.go, 1);
    while (!flag_set(&w)) {
        int ms = kv_loop_timeout(h.loop);
        ck_assert_int_eq(ms, -1);
        bool rd = host_wait(&h, ms);
        ck_assert_msg(rd || !flag_set(&w) || fd_readable(&h),
                      "%s: kv_loop_wake did not make the fd readable",
                      h.what);
        host_run(&h);
    }
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_kv(w.rc, KV_OK);
    host_run(&h);
    ck_assert(!fd_readable(&h));

    /* Wakes coalesce, and one made before the host waits is not lost. */
    ck_assert_kv(kv_loop_wake(h.loop), KV_OK);
    ck_assert_kv(kv_loop_wake(h.loop), KV_OK);
    ck_assert(fd_readable(&h));
    ck_assert(host_wait(&h, -1));
    host_run(&h);
    ck_assert(!fd_readable(&h));
    ck_assert_int_eq(kv_loop_timeout(h.loop), -1);
    ck_assert_kv(kv_loop_wake(NULL), KV_EINVAL);
    host_fini(&h);
}
END_TEST

/* The loop of a blocking-run test _i: mode _i % NMODES, host-driven (its
 * descriptor asked for) when _i >= NMODES. */
static kv_loop *run_test_loop(int i)
{
    kv_loop *loop = mode_loop(i % NMODES);
    if (i >= NMODES)
        ck_assert_int_ge(kv_loop_fd(loop), 0);
    return loop;
}

/* Start a waker thread on loop (it sets w->flag, then wakes, ~30 ms on). */
static void waker_start(waker *w, kv_loop *loop, pthread_t *th)
{
    *w = (waker){.loop = loop};
    ck_assert_int_eq(pthread_create(th, NULL, waker_main, w), 0);
    atomic_store(&w->go, 1);
}

/* kv_loop_wake ends a blocking kv_loop_run(ONCE) (hosted or not). */
START_TEST(test_wake_blocking_run)
{
    kv_loop *loop = run_test_loop(_i);
    kv_fut *f = kv_sleep(loop, 60000);
    waker w;
    pthread_t th;
    waker_start(&w, loop, &th);
    while (!flag_set(&w))
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_kv(w.rc, KV_OK);
    ck_assert(!kv_fut_done(f));
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    tu_finish_loop(loop);
}
END_TEST

/* KV_RUN_WAIT waits on a loop with nothing pending, until a wake (hosted
 * or not); KV_RUN_ONCE returns at once there. */
START_TEST(test_run_wait_idle)
{
    kv_loop *loop = run_test_loop(_i);
    ck_assert(!kv_loop_alive(loop));
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_ONCE), 0);
    waker w;
    pthread_t th;
    waker_start(&w, loop, &th);
    int returns = 0;
    while (!flag_set(&w)) {
        ck_assert_int_eq(kv_loop_run(loop, KV_RUN_WAIT), 0);
        returns++;
    }
    /* A run that did not wait would have returned thousands of times in
     * the waker's 30 ms. */
    ck_assert_int_le(returns, 3);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_kv(w.rc, KV_OK);
    ck_assert_int_eq(kv_loop_run(loop, (kv_run_mode)7), KV_EINVAL);
    tu_finish_loop(loop);
}
END_TEST

START_TEST(test_bad_args)
{
    ck_assert_int_eq(kv_loop_fd(NULL), KV_EINVAL);
    ck_assert_int_eq(kv_loop_timeout(NULL), KV_EINVAL);
    ck_assert_int_eq(kv_loop_wake(NULL), KV_EINVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hostloop");
    TCase *tc = tcase_create("completions");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_sleep, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_sleep_chain, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_pool_job, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_sqlite, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_fs, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_redis, 0, NMODES * NDRVS);
    suite_add_tcase(s, tc);
    tc = tcase_create("idle_and_wake");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_quiet_when_idle, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_no_busy_loop, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_wake_other_thread, 0, NMODES * NDRVS);
    tcase_add_loop_test(tc, test_wake_blocking_run, 0, 2 * NMODES);
    tcase_add_loop_test(tc, test_run_wait_idle, 0, 2 * NMODES);
    tcase_add_test(tc, test_bad_args);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
