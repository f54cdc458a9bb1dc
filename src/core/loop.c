/*
 * loop.c - the io_uring completion loop: ring ops dispatched by user_data,
 * finished pool jobs through a lock-free list signalled by an eventfd, the
 * ready FIFO of futures.  The sleep protocol (why a post is never missed)
 * is in docs/DESIGN.md ("core").
 */
#include "config.h"

#include "core/loop_int.h"
#include "core/fault.h"
#include "util/time.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

struct io_uring *kv__loop_ring(kv_loop *loop)
{
    return &loop->ring;
}

/* --- fallback section (uring_emu.c) --- */
const char *kv_loop_backend(const kv_loop *loop)
{
    if (loop == NULL)
        return NULL;
    return loop->emu != NULL ? "fallback" : "io_uring";
}
/* --- end fallback section --- */

bool kv__loop_has_op(const kv_loop *loop, int opcode)
{
    if (loop == NULL || opcode < 0 || opcode > 255)
        return false;
    return (loop->ops[opcode / 8] >> (opcode % 8)) & 1u;
}

bool kv_loop_alive(const kv_loop *loop)
{
    if (loop == NULL)
        return false;
    return loop->inflight > 0 || loop->jobs > 0 ||
           !kv__list_empty(&loop->ready) || loop->refs > 0 ||
           loop->nstash > 0 || atomic_load(&((kv_loop *)loop)->calls) != NULL;
}

bool kv__loop_stalled(const kv_loop *loop)
{
    return loop->inflight == 0 && loop->jobs == 0 &&
           kv__list_empty(&loop->ready) && loop->nstash == 0 &&
           atomic_load(&((kv_loop *)loop)->calls) == NULL;
}

void kv__loop_ref(kv_loop *loop)
{
    loop->refs++;
}

void kv__loop_unref(kv_loop *loop)
{
    if (loop->refs > 0)
        loop->refs--;
}

void kv__loop_get_stats(const kv_loop *loop, kv__loop_stats *out)
{
    *out = loop->st;
    out->wakes = atomic_load_explicit(&loop->wakes, memory_order_relaxed);
}

kv__list *kv__loop_ready(kv_loop *loop)
{
    return &loop->ready;
}

/* ------------------------------------------------------------------------ */
/* Pool completions                                                         */
/* ------------------------------------------------------------------------ */

/* Add 1 to an eventfd (any thread).  EAGAIN: saturated, so readable. */
static void efd_signal(int fd)
{
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(fd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
}

/* Empty an eventfd (non-blocking; already empty is fine). */
static void efd_drain(int fd)
{
    uint64_t v;
    ssize_t r;
    do {
        r = read(fd, &v, sizeof v);
    } while (r < 0 && errno == EINTR);
}

/*
 * Any thread, after publishing work for the loop (a posted job, a wake):
 * if the loop may be asleep, write the descriptor it sleeps on.  Signals
 * coalesce: only the poster that takes sleeping to 0 writes.  A host's
 * descriptor is written directly in io_uring mode: through efd, the ring's
 * READ would signal it only after an RCU grace period with DEFER_TASKRUN
 * (the kernel defers an eventfd signal raised inside another one's
 * wake-up).  In fallback mode efd is in the host's epoll set.
 */
static void signal_loop(kv_loop *loop)
{
    unsigned how = atomic_load(&loop->sleeping);
    if (how != 0 && (how = atomic_exchange(&loop->sleeping, 0)) != 0) {
        /* Counted first: the loop may read the stats as soon as it wakes. */
        atomic_fetch_add_explicit(&loop->wakes, 1, memory_order_relaxed);
        efd_signal(how == SLEEP_HOST && loop->emu == NULL ? loop->nfd
                                                          : loop->efd);
    }
}

/*
 * Work other threads hand the loop, re-checked after sleeping is set (the
 * sleep protocol): every such list belongs here.
 */
static bool remote_work(kv_loop *loop)
{
    return atomic_load(&loop->posted) != NULL ||
           atomic_load(&loop->calls) != NULL ||
           atomic_load(&loop->wake_req) != 0;
}

/*
 * A job's post (any thread: a worker, or the loop thread for a cancel).
 * Signals coalesce: the eventfd is written only when the loop may be
 * asleep.
 */
static void post_job(kv__job *job)
{
    kv__loop_post_chain(job->loop, job, job);
}

void kv__loop_post_chain(kv_loop *loop, kv__job *newest, kv__job *oldest)
{
    atomic_fetch_add(&loop->posting, 1);
    kv__job *head = atomic_load_explicit(&loop->posted, memory_order_relaxed);
    do {
        oldest->next = head;
    } while (!atomic_compare_exchange_weak(&loop->posted, &head, newest));
    /* The jobs may be finished and freed by the loop from here on. */
    signal_loop(loop);
    atomic_fetch_sub(&loop->posting, 1);
}

void kv__pool_submit(kv_pool *pool, kv_loop *loop, kv__job *job)
{
    job->loop = loop;
    job->post = post_job;
    /* Pending, and alive, until drain_posted has finished it. */
    loop->jobs++;
    kv__pool_enqueue(pool, job);
}

/* ------------------------------------------------------------------------ */
/* Calls forwarded from other threads                                       */
/* ------------------------------------------------------------------------ */

void kv__loop_signal(kv_loop *loop)
{
    signal_loop(loop);
}

/* Push calls linked newest to oldest (oldest's next is overwritten). */
static void call_chain(kv_loop *loop, kv__call *newest, kv__call *oldest)
{
    atomic_fetch_add(&loop->posting, 1);
    kv__call *head = atomic_load_explicit(&loop->calls, memory_order_relaxed);
    do {
        oldest->next = head;
    } while (!atomic_compare_exchange_weak(&loop->calls, &head, newest));
    /* The calls may be run and freed by the loop from here on. */
    signal_loop(loop);
    atomic_fetch_sub(&loop->posting, 1);
}

void kv__loop_call(kv_loop *loop, kv__call *c)
{
    call_chain(loop, c, c);
}

/* ------------------------------------------------------------------------ */
/* The outbox: work for other loops, sent once per turn                     */
/* ------------------------------------------------------------------------ */

void kv__loop_post_from(kv_loop *from, kv__job *job)
{
    if (!from->running) {
        from->st.pushes++;
        kv__loop_post_chain(job->loop, job, job);
        return;
    }
    job->next = NULL;
    *from->out_jobs_end = job;
    from->out_jobs_end = &job->next;
}

void kv__loop_call_from(kv_loop *from, kv_loop *to, kv__call *c)
{
    if (from == NULL || !from->running) {
        if (from != NULL)
            from->st.pushes++;
        call_chain(to, c, c);
        return;
    }
    c->to = to;
    c->next = NULL;
    *from->out_calls_end = c;
    from->out_calls_end = &c->next;
}

void kv__loop_call_here(kv_loop *to, kv__call *c)
{
    kv__loop_call_from(kv__thread_loop_peek(), to, c);
}

/*
 * For each destination in turn: take its jobs out of the FIFO, link them
 * newest first, and push them at once.  A batch rarely holds more than a
 * few destinations, so a pass per destination is cheap.
 */
unsigned kv__loop_post_fifo(kv__job *fifo)
{
    unsigned pushes = 0;
    while (fifo != NULL) {
        kv__job *list = fifo, *newest = NULL, *oldest = NULL, **end = &fifo;
        kv_loop *to = list->loop;
        fifo = NULL;
        while (list != NULL) {
            kv__job *next = list->next;
            if (list->loop == to) {
                list->next = newest;
                newest = list;
                if (oldest == NULL)
                    oldest = list;
            } else { /* another destination's: stays, in order */
                list->next = NULL;
                *end = list;
                end = &list->next;
            }
            list = next;
        }
        kv__loop_post_chain(to, newest, oldest);
        pushes++;
    }
    return pushes;
}

/* Send the outbox: its jobs as kv__loop_post_fifo does, its calls alike. */
static void flush_outbox(kv_loop *loop)
{
    if (loop->out_jobs != NULL) {
        kv__job *fifo = loop->out_jobs;
        loop->out_jobs = NULL;
        loop->out_jobs_end = &loop->out_jobs;
        loop->st.pushes += kv__loop_post_fifo(fifo);
    }
    while (loop->out_calls != NULL) {
        kv__call *list = loop->out_calls, *newest = NULL, *oldest = NULL;
        kv_loop *to = list->to;
        loop->out_calls = NULL;
        loop->out_calls_end = &loop->out_calls;
        while (list != NULL) {
            kv__call *next = list->next;
            if (list->to == to) {
                list->next = newest;
                newest = list;
                if (oldest == NULL)
                    oldest = list;
            } else {
                list->next = NULL;
                *loop->out_calls_end = list;
                loop->out_calls_end = &list->next;
            }
            list = next;
        }
        loop->st.pushes++;
        call_chain(to, newest, oldest);
    }
}

/* Run every forwarded call, oldest first.  True if any. */
static bool drain_calls(kv_loop *loop)
{
    if (atomic_load_explicit(&loop->calls, memory_order_relaxed) == NULL)
        return false;
    kv__call *list = atomic_exchange(&loop->calls, NULL);
    kv__call *fifo = NULL;
    while (list != NULL) {
        kv__call *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo != NULL) {
        kv__call *next = fifo->next; /* run may free the call */
        fifo->run(fifo);
        fifo = next;
    }
    return true;
}

void kv__loop_expect(kv_loop *loop, kv__job *job)
{
    job->loop = loop;
    job->post = post_job;
    job->status = KV_OK;
    loop->jobs++; /* pending, and alive, until drain_posted finished it */
}

bool kv__loop_on_thread(const kv_loop *loop)
{
    return pthread_equal(pthread_self(), loop->owner);
}

bool kv__loop_running(const kv_loop *loop)
{
    return loop->running;
}

void kv__loop_stores_add(kv_loop *loop, int delta)
{
    if (delta > 0)
        atomic_fetch_add(&loop->nstores, 1);
    else
        atomic_fetch_sub(&loop->nstores, 1);
}

void kv__loop_ops_add(kv_loop *loop, int delta)
{
    if (delta > 0)
        atomic_fetch_add_explicit(&loop->nops, 1, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(&loop->nops, 1, memory_order_relaxed);
}

size_t kv_loop_inflight(const kv_loop *loop)
{
    if (loop == NULL)
        return 0;
    return atomic_load_explicit(&((kv_loop *)loop)->nops,
                                memory_order_relaxed);
}

/* Take every posted job, oldest first, and finish it.  True if any. */
static bool drain_posted(kv_loop *loop)
{
    if (atomic_load_explicit(&loop->posted, memory_order_relaxed) == NULL)
        return false;
    kv__job *list = atomic_exchange(&loop->posted, NULL);
    kv__job *fifo = NULL;
    while (list != NULL) {
        kv__job *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo != NULL) {
        kv__job *next = fifo->next; /* done may free the job */
        loop->jobs--;
        loop->st.jobs++;
        kv__job_finish(fifo);
        fifo = next;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Submission                                                               */
/* ------------------------------------------------------------------------ */

/*
 * Move every CQE on the ring into the stash without dispatching it: used
 * when a submit inside kv__loop_sqes is refused until the CQ drains (old
 * kernels answer -EBUSY while CQEs overflow).  Dispatching there would run
 * completion handlers inside the caller's kv__loop_sqes.
 */
static int stash_cqes(kv_loop *loop)
{
    struct io_uring_cqe *cqes[REAP_BATCH];
    unsigned n;
    if (loop->emu != NULL)
        return KV_OK; /* fallback: no CQ; completions wait in uring_emu.c */
    while ((n = io_uring_peek_batch_cqe(&loop->ring, cqes, REAP_BATCH)) > 0) {
        if (loop->nstash + n > loop->capstash) {
            size_t cap = loop->capstash ? loop->capstash * 2 : 256;
            while (cap < loop->nstash + n)
                cap *= 2;
            stashed_cqe *s = kv__realloc(loop->stash, cap * sizeof *s);
            if (s == NULL)
                return KV_ENOMEM;
            loop->stash = s;
            loop->capstash = cap;
        }
        for (unsigned i = 0; i < n; i++) {
            stashed_cqe *s = &loop->stash[loop->nstash++];
            s->ud = cqes[i]->user_data;
            s->res = cqes[i]->res;
            s->flags = cqes[i]->flags;
        }
        io_uring_cq_advance(&loop->ring, n);
    }
    return KV_OK;
}

/* io_uring_submit, or in fallback mode the emulator's (uring_emu.c). */
static int ring_submit(kv_loop *loop)
{
    if (loop->emu != NULL)
        return kv__emu_submit(loop->emu);
    return io_uring_submit(&loop->ring);
}

/* Make room for n SQEs, submitting what is queued if needed. */
static int sq_reserve(kv_loop *loop, unsigned n)
{
    unsigned busy = 0;
    while (io_uring_sq_space_left(&loop->ring) < n) {
        kv__fault_before_submit(loop); /* test fault injector (fault.c) */
        int r = ring_submit(loop);
        loop->st.submits++;
        if (r > 0)
            continue;
        if (r == -EINTR)
            continue;
        if (r == 0 || r == -EBUSY || r == -EAGAIN) {
            /* The kernel took nothing: let completions drain, retry. */
            if (++busy > 64)
                return KV_EBUSY;
            int s = stash_cqes(loop);
            if (s != KV_OK)
                return s;
            if (busy > 8)
                sched_yield();
            continue;
        }
        return r; /* a negated errno: kv_strerror knows it */
    }
    return KV_OK;
}

int kv__loop_sqes(kv_loop *loop, struct io_uring_sqe **sqes, unsigned n)
{
    if (loop == NULL || sqes == NULL || n == 0 || n > loop->sq_entries)
        return KV_EINVAL;
    int rc = sq_reserve(loop, n);
    if (rc != KV_OK)
        return rc;
    for (unsigned i = 0; i < n; i++)
        sqes[i] = io_uring_get_sqe(&loop->ring); /* cannot fail: reserved */
    loop->inflight += n;
    return KV_OK;
}

int kv__loop_flush(kv_loop *loop)
{
    if (io_uring_sq_ready(&loop->ring) == 0)
        return KV_OK;
    kv__fault_before_submit(loop); /* test fault injector (fault.c) */
    for (;;) {
        int r = ring_submit(loop);
        loop->st.submits++;
        if (r >= 0 || r == -EBUSY || r == -EAGAIN)
            return KV_OK; /* what stays queued goes with the next enter */
        if (r != -EINTR)
            return r;
    }
}

/* Queue the standing eventfd READ (not counted as in flight). */
static void arm_wake(kv_loop *loop)
{
    if (loop->wake_armed || loop->closing)
        return;
    if (loop->emu != NULL) {
        loop->wake_armed = true; /* fallback: the wait polls the eventfd */
        return;
    }
    if (sq_reserve(loop, 1) != KV_OK)
        return; /* the caller waits with a timeout instead */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    io_uring_prep_read(sqe, loop->efd, &loop->efd_val, sizeof loop->efd_val, 0);
    io_uring_sqe_set_data64(sqe, KV__UD_WAKE);
    loop->wake_armed = true;
}

static void wake_cqe(kv_loop *loop, int res)
{
    loop->wake_armed = false;
    loop->st.wake_cqes++;
    if (res == -EAGAIN) {
        /*
         * An old kernel honours O_NONBLOCK on the ring's read instead of
         * polling: make the descriptor blocking (io-wq then waits for us).
         */
        int fl = fcntl(loop->efd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(loop->efd, F_SETFL, fl & ~O_NONBLOCK);
    }
}

/* ------------------------------------------------------------------------ */
/* Completion                                                               */
/* ------------------------------------------------------------------------ */

static void dispatch(kv_loop *loop, uint64_t ud, int res, uint32_t flags)
{
    if (ud == KV__UD_WAKE) {
        wake_cqe(loop, res);
        return;
    }
    if (ud == UD_QUIET)
        return;
    res = kv__fault_cqe(loop, ud, res); /* test fault injector (fault.c) */
#ifdef LIBURING_UDATA_TIMEOUT
    /* liburing's own timeout SQE for timed waits on kernels < 5.11. */
    if (ud == LIBURING_UDATA_TIMEOUT)
        return;
#endif
    if (!(flags & IORING_CQE_F_MORE) && loop->inflight > 0)
        loop->inflight--;
    loop->st.cqes++;
    if (ud <= UD_RESERVED_MAX)
        return; /* KV__UD_IGNORE */
    kv__op *op = (kv__op *)(uintptr_t)ud;
    op->cb(op, res, flags);
}

/* Fallback mode: uring_emu.c's synthetic CQEs, dispatched as ring ones. */
void kv__loop_dispatch(kv_loop *loop, uint64_t ud, int res, uint32_t flags)
{
    dispatch(loop, ud, res, flags);
}

static bool dispatch_stash(kv_loop *loop)
{
    if (loop->nstash == 0)
        return false;
    /* Handlers may stash more (nested kv__loop_sqes): index, not pointer. */
    for (size_t i = 0; i < loop->nstash; i++) {
        stashed_cqe c = loop->stash[i];
        dispatch(loop, c.ud, c.res, c.flags);
    }
    loop->nstash = 0;
    return true;
}

/*
 * Reap and dispatch every CQE on the ring.  Each batch is copied and
 * consumed before its handlers run, so a handler that submits (or stashes)
 * never sees a CQE twice.  io_uring_peek_batch_cqe enters the kernel to
 * flush overflowed CQEs when IORING_SQ_CQ_OVERFLOW is set and the ring
 * looks empty, so nothing the kernel kept aside is lost.
 */
static bool reap(kv_loop *loop)
{
    struct io_uring_cqe *cqes[REAP_BATCH];
    stashed_cqe batch[REAP_BATCH];
    bool any = dispatch_stash(loop);
    unsigned n;
    if (loop->emu != NULL)
        return kv__emu_reap(loop->emu) || any; /* fallback (uring_emu.c) */
    while ((n = io_uring_peek_batch_cqe(&loop->ring, cqes, REAP_BATCH)) > 0) {
        for (unsigned i = 0; i < n; i++) {
            batch[i].ud = cqes[i]->user_data;
            batch[i].res = cqes[i]->res;
            batch[i].flags = cqes[i]->flags;
        }
        io_uring_cq_advance(&loop->ring, n);
        for (unsigned i = 0; i < n; i++)
            dispatch(loop, batch[i].ud, batch[i].res, batch[i].flags);
        any = true;
    }
    return any;
}

/*
 * Enter the kernel: submit what is queued and, when wait, block for one
 * completion (timeout_ms > 0 bounds the wait).  Without waiting, enter only
 * if there is something to submit or to collect (with DEFER_TASKRUN
 * completions only appear inside io_uring_enter(GETEVENTS)).
 */
/*
 * Fallback mode's enter (uring_emu.c): submit, then wait on the eventfd,
 * the timers and the sockets.  The submit may have made pool jobs, so the
 * sleep protocol is (re)done here, after it.
 */
static int emu_enter(kv_loop *loop, bool wait, unsigned timeout_ms)
{
    int r = kv__emu_submit(loop->emu);
    loop->st.submits++;
    if (r < 0 && r != -EAGAIN)
        return r;
    if (!wait || kv__emu_pending_local(loop->emu))
        return KV_OK;
    atomic_store(&loop->sleeping, SLEEP_RING);
    r = KV_OK;
    if (!remote_work(loop))
        r = kv__emu_wait(loop->emu, loop->efd, timeout_ms);
    atomic_store(&loop->sleeping, 0);
    if (r == 1)
        loop->st.wake_cqes++; /* the eventfd woke us (the ring's READ CQE) */
    return r < 0 ? r : KV_OK;
}

static int enter(kv_loop *loop, bool wait, unsigned timeout_ms)
{
    if (loop->emu != NULL) {
        kv__fault_before_submit(loop); /* test fault injector (fault.c) */
        return emu_enter(loop, wait, timeout_ms);
    }
    if (wait && loop->valgrind) {
        /*
         * Valgrind (3.19 at least) does not know io_uring_enter can block:
         * it keeps its big lock while we wait, so no worker runs to wake
         * us.  Yield (a point where it switches threads) and wait briefly.
         */
        sched_yield();
        if (timeout_ms == 0 || timeout_ms > 2)
            timeout_ms = 2;
    }
    kv__fault_before_submit(loop); /* test fault injector (fault.c) */
    for (;;) {
        int r;
        if (wait && timeout_ms > 0) {
            struct __kernel_timespec ts = kv__ms_to_kts(timeout_ms);
            struct io_uring_cqe *cqe;
            r = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, &ts,
                                                 NULL);
        } else if (wait) {
            r = io_uring_submit_and_wait(&loop->ring, 1);
        } else {
            /* The wake READ counts: its CQE may be deferred task work. */
            if (loop->inflight == 0 && !loop->wake_armed &&
                io_uring_sq_ready(&loop->ring) == 0)
                return KV_OK;
#ifdef HAVE_IO_URING_SUBMIT_AND_GET_EVENTS
            r = io_uring_submit_and_get_events(&loop->ring);
#else
            r = io_uring_submit(&loop->ring);
#endif
        }
        loop->st.submits++;
        if (r >= 0 || r == -ETIME)
            return KV_OK;
        if (r == -EINTR) {
            if (wait)
                return KV_OK; /* a signal: end this turn, caller loops */
            continue;
        }
        if (r == -EBUSY || r == -EAGAIN)
            return KV_OK; /* reap, then the next turn retries */
#if HAVE_DECL_IORING_SETUP_SINGLE_ISSUER
        if (r == -EEXIST && (loop->setup_flags & IORING_SETUP_SINGLE_ISSUER)) {
            kv__set_errmsg("kv_loop_run: called off the loop thread (the "
                           "ring is SINGLE_ISSUER)");
            return KV_EINVAL;
        }
#endif
        return r;
    }
}

/*
 * One turn: due callbacks, posted jobs, submit and (maybe) wait, dispatch
 * completions, then the callbacks they made due; what all those handed to
 * other loops leaves at the end (or before the wait).
 */
static int turn(kv_loop *loop, kv_run_mode mode)
{
    loop->st.turns++;
    /* A kv_loop_wake made before this point is answered by this turn. */
    if (atomic_load_explicit(&loop->wake_req, memory_order_relaxed))
        atomic_store(&loop->wake_req, 0);
    bool progressed = kv__fut_run_ready(loop);
    progressed |= drain_calls(loop);
    progressed |= drain_posted(loop);
    progressed |= dispatch_stash(loop);

    bool block = mode != KV_RUN_NOWAIT && !progressed &&
                 kv__list_empty(&loop->ready) &&
                 (loop->inflight > 0 || loop->jobs > 0 ||
                  mode == KV_RUN_WAIT);
    unsigned timeout_ms = 0;
    if (block) {
        flush_outbox(loop); /* never sleep on work other loops wait for */
        /* Armed even without jobs: kv_loop_wake must end the wait. */
        arm_wake(loop);
        if (!loop->wake_armed)
            timeout_ms = 1; /* could not arm: poll the list instead */
        atomic_store(&loop->sleeping, SLEEP_RING);
        if (remote_work(loop)) {
            atomic_store(&loop->sleeping, 0);
            block = false;
        }
    }
    if (block)
        loop->st.waits++;
    int rc = enter(loop, block, timeout_ms);
    if (block)
        atomic_store(&loop->sleeping, 0);
    if (rc < 0) {
        flush_outbox(loop);
        return rc;
    }
    reap(loop);
    drain_calls(loop);
    drain_posted(loop);
    kv__fut_run_ready(loop);
    flush_outbox(loop);
    return KV_OK;
}

static void host_begin(kv_loop *loop);
static int host_settle(kv_loop *loop);

int kv_loop_run(kv_loop *loop, kv_run_mode mode)
{
    if (loop == NULL)
        return KV_EINVAL;
    if (loop->running) {
        kv__set_errmsg("kv_loop_run: called inside a run of this loop (from "
                       "one of its callbacks)");
        return KV_EINVAL;
    }
    if (mode != KV_RUN_DEFAULT && mode != KV_RUN_ONCE &&
        mode != KV_RUN_NOWAIT && mode != KV_RUN_WAIT) {
        kv__set_errmsg("kv_loop_run: unknown mode %d", (int)mode);
        return KV_EINVAL;
    }
    if (!pthread_equal(pthread_self(), loop->owner)) {
        /* The ring (SINGLE_ISSUER, a registered ring fd) is the owner's. */
        kv__set_errmsg("kv_loop_run: called off the loop thread");
        return KV_EINVAL;
    }
    loop->running = true;
    bool hosted = atomic_load_explicit(&loop->hosted, memory_order_relaxed);
    if (hosted)
        host_begin(loop);
    int rc;
    do {
        rc = turn(loop, mode);
    } while (rc == KV_OK && mode == KV_RUN_DEFAULT && !kv__loop_stalled(loop));
    if (rc == KV_OK && hosted)
        rc = host_settle(loop);
    else if (rc == KV_OK && mode == KV_RUN_NOWAIT)
        rc = kv__loop_flush(loop); /* leave nothing unsubmitted */
    loop->running = false;
    if (rc < 0)
        return rc;
    return kv_loop_alive(loop) ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Host-driven loops (kv_loop_fd, kv_loop_timeout, kv_loop_wake)            */
/* ------------------------------------------------------------------------ */

/*
 * The first kv_loop_fd or kv_loop_timeout (any thread): turn the kernel's
 * signal of nfd on and make every run end with host_settle.  The flag word
 * of the CQ ring is written by the application only, and only here after
 * kv_loop_new.
 */
static void host_enable(kv_loop *loop)
{
    if (atomic_load_explicit(&loop->hosted, memory_order_acquire))
        return;
    if (loop->emu == NULL)
        (void)io_uring_cq_eventfd_toggle(&loop->ring, true);
    atomic_store(&loop->hosted, 1);
}

/*
 * Start of a host-driven run: consume the notification.  Whatever arrives
 * from here on signals nfd again (a CQE, deferred task work: the kernel;
 * a post or a wake: signal_loop, once host_settle set SLEEP_HOST), and
 * what arrived before is collected by this run (the turn's enter flushes
 * deferred task work, and host_settle looks at the posted lists).  So
 * the fd is never left quiet with work pending; at worst it is readable
 * once for work this run already did.
 */
static void host_begin(kv_loop *loop)
{
    /* Posts during the run need no eventfd write: host_settle looks. */
    atomic_store(&loop->sleeping, 0);
    efd_drain(loop->emu != NULL ? loop->efd : loop->nfd);
}

/*
 * End of a host-driven run (any mode): submit everything prepared, set
 * sleeping to SLEEP_HOST (the sleep protocol, so a post or a wake signals
 * the fd), then make the fd readable again if work is ready now:
 * level-triggered in effect.
 */
static int host_settle(kv_loop *loop)
{
    int rc = kv__loop_flush(loop);
    if (rc < 0)
        return rc;
    if (loop->emu != NULL)
        kv__emu_host_sync(loop->emu, loop->nfd);
    atomic_store(&loop->sleeping, SLEEP_HOST);
    bool ready = remote_work(loop) || !kv__list_empty(&loop->ready) ||
                 loop->nstash > 0;
    if (loop->emu != NULL)
        ready = ready || kv__emu_pending_local(loop->emu);
    else
        ready = ready || io_uring_cq_ready(&loop->ring) > 0;
    if (ready)
        efd_signal(loop->emu != NULL ? loop->efd : loop->nfd);
    loop->host_primed = true;
    return KV_OK;
}

int kv_loop_fd(const kv_loop *cloop)
{
    if (cloop == NULL)
        return KV_EINVAL;
    kv_loop *loop = (kv_loop *)cloop; /* only its atomic words change */
    host_enable(loop);
    return loop->nfd;
}

int kv_loop_timeout(const kv_loop *cloop)
{
    if (cloop == NULL)
        return KV_EINVAL;
    kv_loop *loop = (kv_loop *)cloop;
    host_enable(loop);
    if (!loop->host_primed)
        return 0; /* no run has armed the fd yet */
    if (io_uring_sq_ready(&loop->ring) > 0 || !kv__list_empty(&loop->ready) ||
        loop->nstash > 0 || remote_work(loop))
        return 0;
    if (loop->emu != NULL) {
        if (kv__emu_pending_local(loop->emu))
            return 0;
        return kv__emu_timeout_ms(loop->emu);
    }
    if (io_uring_cq_ready(&loop->ring) > 0)
        return 0;
    return -1;
}

int kv_loop_wake(kv_loop *loop)
{
    if (loop == NULL)
        return KV_EINVAL;
    atomic_store(&loop->wake_req, 1);
    signal_loop(loop);
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Teardown                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Cancel the standing eventfd READ and wait for its CQE, so the kernel
 * holds no pointer into the loop when it is freed.
 */
static void disarm_wake(kv_loop *loop)
{
    loop->closing = true;
    if (!loop->wake_armed || loop->emu != NULL)
        return;
    if (sq_reserve(loop, 1) != KV_OK)
        return;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    io_uring_prep_cancel64(sqe, KV__UD_WAKE, 0);
    io_uring_sqe_set_data64(sqe, UD_QUIET);
    for (int tries = 0; loop->wake_armed && tries < 1000; tries++) {
        int r = io_uring_submit_and_wait(&loop->ring, 1);
        if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
            break; /* e.g. called off the loop thread (SINGLE_ISSUER) */
        reap(loop);
    }
}

int kv_loop_free(kv_loop *loop)
{
    if (loop == NULL)
        return KV_OK;
    if (loop->running || kv_loop_alive(loop) ||
        atomic_load(&loop->posted) != NULL ||
        atomic_load(&loop->calls) != NULL)
        return KV_EBUSY;
    size_t nstores = atomic_load(&loop->nstores);
    if (nstores > 0) {
        kv__set_errmsg("kv_loop_free: %zu store%s opened on the loop %s still "
                       "open (kv_close and kv_store_free first)",
                       nstores, nstores == 1 ? "" : "s",
                       nstores == 1 ? "is" : "are");
        return KV_EBUSY;
    }
    kv__thread_disown(loop);
    disarm_wake(loop);
    /* A worker may still be inside kv__loop_post after its push. */
    while (atomic_load(&loop->posting) != 0)
        sched_yield();
    if (loop->emu != NULL)
        kv__emu_free(loop->emu); /* fallback: no ring to exit */
    else
        io_uring_queue_exit(&loop->ring);
    close(loop->nfd);
    close(loop->efd);
    kv__free(loop->stash);
    kv__free(loop);
    return KV_OK;
}
