/*
 * uring_emu.c - the loop's fallback when io_uring is blocked (seccomp, the
 * kernel.io_uring_disabled sysctl, an old kernel) or KV_IO_URING=0: a fake
 * SQ whose chains run on a private pool, timers, socket waits and local
 * completions, all delivered as synthetic CQEs.  Loop thread, except
 * emu_work (a worker).  How and why: docs/DESIGN.md ("core").
 */
#include "config.h"

#include "core/core_int.h"
#include "util/list.h"
#include "util/time.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h> /* renameat */
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Workers of the private pool: blocking file syscalls (fsync mostly). */
#define EMU_THREADS 8u

enum {
    REQ_JOB = 1, /* on the pool                         */
    REQ_TIMER,   /* in e->timers                        */
    REQ_SOCK,    /* in e->socks, tried when ready       */
    REQ_LOCAL    /* results known, in e->local          */
};

typedef struct emu_ent {
    struct io_uring_sqe sqe;
    int32_t res;
} emu_ent;

/* A completion decided without a request (see "Out of memory" above). */
typedef struct emu_cqe {
    uint64_t ud;
    int32_t res;
} emu_cqe;

/* A socket in the host's epoll set (kv__emu_host_sync). */
typedef struct emu_reg {
    int fd;
    uint32_t events; /* registered now (0: not registered) */
    uint32_t want;   /* wanted by the sockets waiting now */
    bool renew;      /* a new wait since: re-register (the fd may be new) */
} emu_reg;

typedef struct emu_req {
    kv__job job;
    kv__emu *emu;
    kv__list live;               /* e->live: every req not yet dispatched */
    struct emu_req *lnext;       /* e->timers, e->socks or e->local        */
    int kind;
    bool unsynced; /* REQ_SOCK: not yet seen by kv__emu_host_sync */
    int64_t deadline; /* REQ_TIMER: CLOCK_MONOTONIC ns */
    unsigned n;
    emu_ent ent[];
} emu_req;

struct kv__emu {
    kv_loop *loop;
    kv_pool *pool;
    struct io_uring *ring; /* the loop's fake ring */
    struct io_uring_sqe *sqes;
    unsigned khead; /* SQEs consumed (what the kernel's head would say) */
    kv__list live;  /* emu_req.live, for cancellation (newest first) */
    emu_req *timers; /* sorted by deadline */
    emu_req *socks;
    emu_req *local_head, *local_tail;
    struct pollfd *pfds;
    size_t cappfds;
    emu_cqe *cq; /* ring of cq_cap, cq_n from cq_head; allocated at new */
    unsigned cq_cap, cq_head, cq_n;
    emu_reg *regs; /* host-driven loops: sockets in the epoll set */
    size_t nregs, capregs;
    bool reg_failed;  /* a socket is missing from the epoll set */
};

static const int supported[] = {
    IORING_OP_NOP,        IORING_OP_READV,     IORING_OP_WRITEV,
    IORING_OP_FSYNC,      IORING_OP_TIMEOUT,   IORING_OP_TIMEOUT_REMOVE,
    IORING_OP_ASYNC_CANCEL, IORING_OP_CONNECT, IORING_OP_OPENAT,
    IORING_OP_CLOSE,      IORING_OP_STATX,     IORING_OP_READ,
    IORING_OP_WRITE,      IORING_OP_SEND,      IORING_OP_RECV,
    IORING_OP_RENAMEAT,   IORING_OP_UNLINKAT,  IORING_OP_MKDIRAT,
};

/* Deadlines are signed so that "deadline - now" may go below zero. */
static int64_t now_ns(void)
{
    return (int64_t)kv__now_ns();
}

static bool have_openat2(void)
{
#ifdef SYS_openat2
    /* A size below the smallest struct open_how: EINVAL if it exists. */
    errno = 0;
    long r = syscall(SYS_openat2, AT_FDCWD, ".", NULL, (size_t)0);
    if (r >= 0)
        close((int)r);
    return errno != ENOSYS && errno != EPERM;
#else
    return false;
#endif
}

void kv__emu_probe(unsigned char ops[32])
{
    for (size_t i = 0; i < KV__ARRAY_SIZE(supported); i++)
        ops[supported[i] / 8] |= (unsigned char)(1u << (supported[i] % 8));
    if (have_openat2())
        ops[IORING_OP_OPENAT2 / 8] |=
            (unsigned char)(1u << (IORING_OP_OPENAT2 % 8));
}

int kv__emu_new(kv__emu **out, kv_loop *loop, struct io_uring *ring,
                unsigned sq, unsigned cq)
{
    if (cq < sq)
        cq = sq; /* a chain (at most sq SQEs) must fit an empty ring */
    kv__emu *e = kv__calloc(1, sizeof *e);
    struct io_uring_sqe *sqes = kv__calloc(sq, sizeof *sqes);
    emu_cqe *cqes = kv__calloc(cq, sizeof *cqes);
    if (e == NULL || sqes == NULL || cqes == NULL) {
        kv__free(e);
        kv__free(sqes);
        kv__free(cqes);
        kv__set_errmsg("kv_loop_new: out of memory");
        return KV_ENOMEM;
    }
    int rc = kv_pool_new(&e->pool, EMU_THREADS);
    if (rc != KV_OK) {
        kv__free(e);
        kv__free(sqes);
        kv__free(cqes);
        return rc;
    }
    kv__list_init(&e->live);
    e->loop = loop;
    e->ring = ring;
    e->sqes = sqes;
    e->cq = cqes;
    e->cq_cap = cq;
    memset(ring, 0, sizeof *ring);
    ring->sq.sqes = sqes;
    ring->sq.khead = &e->khead;
    ring->sq.ring_entries = sq;
    ring->sq.ring_mask = sq - 1;
    ring->cq.ring_entries = cq;
    ring->ring_fd = ring->enter_ring_fd = -1;
    *out = e;
    return KV_OK;
}

void kv__emu_free(kv__emu *e)
{
    if (e == NULL)
        return;
    kv_pool_free(e->pool);
    kv__free(e->pfds);
    kv__free(e->regs);
    kv__free(e->sqes);
    kv__free(e->cq);
    kv__free(e);
}

/* ------------------------------------------------------------------------ */
/* The blocking side (worker threads)                                       */
/* ------------------------------------------------------------------------ */

static int neg(long r)
{
    return r < 0 ? -errno : (int)r;
}

/* Run one SQE as blocking syscalls: the CQE's res. */
static int exec_sqe(const struct io_uring_sqe *s)
{
    void *addr = (void *)(uintptr_t)s->addr;
    long r;
    if (s->flags & (IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT))
        return -EINVAL;
    switch (s->opcode) {
    case IORING_OP_NOP:
        return 0;
    case IORING_OP_OPENAT:
        return neg(openat(s->fd, addr, (int)s->open_flags, (mode_t)s->len));
#ifdef SYS_openat2
    case IORING_OP_OPENAT2:
        return neg(syscall(SYS_openat2, s->fd, addr,
                           (void *)(uintptr_t)s->off, (size_t)s->len));
#endif
    case IORING_OP_READ:
        do {
            r = s->off == (uint64_t)-1 ? read(s->fd, addr, s->len)
                                       : pread(s->fd, addr, s->len,
                                               (off_t)s->off);
        } while (r < 0 && errno == EINTR);
        return neg(r);
    case IORING_OP_WRITE:
        do {
            r = s->off == (uint64_t)-1 ? write(s->fd, addr, s->len)
                                       : pwrite(s->fd, addr, s->len,
                                                (off_t)s->off);
        } while (r < 0 && errno == EINTR);
        return neg(r);
    case IORING_OP_READV:
        do {
            r = s->off == (uint64_t)-1 ? readv(s->fd, addr, (int)s->len)
                                       : preadv(s->fd, addr, (int)s->len,
                                                (off_t)s->off);
        } while (r < 0 && errno == EINTR);
        return neg(r);
    case IORING_OP_WRITEV:
        do {
            r = s->off == (uint64_t)-1 ? writev(s->fd, addr, (int)s->len)
                                       : pwritev(s->fd, addr, (int)s->len,
                                                 (off_t)s->off);
        } while (r < 0 && errno == EINTR);
        return neg(r);
    case IORING_OP_FSYNC:
        if (s->fsync_flags & IORING_FSYNC_DATASYNC)
            return neg(fdatasync(s->fd));
        return neg(fsync(s->fd));
    case IORING_OP_CLOSE:
        return neg(close(s->fd)); /* the kernel does not retry EINTR either */
    case IORING_OP_RENAMEAT:
        if (s->rename_flags == 0)
            return neg(renameat(s->fd, addr, (int)s->len,
                                (const char *)(uintptr_t)s->off));
        return neg(syscall(SYS_renameat2, s->fd, addr, (int)s->len,
                           (const char *)(uintptr_t)s->off,
                           (unsigned)s->rename_flags));
    case IORING_OP_UNLINKAT:
        return neg(unlinkat(s->fd, addr, (int)s->unlink_flags));
    case IORING_OP_MKDIRAT:
        return neg(mkdirat(s->fd, addr, (mode_t)s->len));
    case IORING_OP_STATX:
        return neg(syscall(SYS_statx, s->fd, addr, (int)s->statx_flags,
                           (unsigned)s->len, (void *)(uintptr_t)s->off));
    case IORING_OP_CONNECT:
        do {
            r = connect(s->fd, addr, (socklen_t)s->off);
        } while (r < 0 && errno == EINTR);
        return neg(r);
    case IORING_OP_SEND:
        return neg(send(s->fd, addr, s->len, (int)s->msg_flags | MSG_NOSIGNAL));
    case IORING_OP_RECV:
        return neg(recv(s->fd, addr, s->len, (int)s->msg_flags));
    case IORING_OP_TIMEOUT: {
        /* Only inside a chain (a lone one is a loop timer). */
        const struct __kernel_timespec *kts = addr;
        struct timespec ts = {.tv_sec = (time_t)kts->tv_sec,
                              .tv_nsec = (long)kts->tv_nsec};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return -ETIME;
    }
    default:
        return -EINVAL;
    }
}

/* A result that breaks an IO_LINK chain: failure or a short transfer. */
static bool breaks_link(const struct io_uring_sqe *s, int res)
{
    if (res < 0)
        return true;
    switch (s->opcode) {
    case IORING_OP_READ:
    case IORING_OP_WRITE:
        return (unsigned)res < s->len;
    case IORING_OP_READV:
    case IORING_OP_WRITEV: {
        const struct iovec *iov = (const struct iovec *)(uintptr_t)s->addr;
        size_t want = 0;
        for (unsigned i = 0; i < s->len; i++)
            want += iov[i].iov_len;
        return (size_t)res < want;
    }
    default:
        return false;
    }
}

static void emu_work(kv__job *job)
{
    emu_req *q = KV__CONTAINER_OF(job, emu_req, job);
    bool cancel = false;
    for (unsigned i = 0; i < q->n; i++) {
        const struct io_uring_sqe *s = &q->ent[i].sqe;
        if (cancel) {
            q->ent[i].res = -ECANCELED;
            continue;
        }
        q->ent[i].res = exec_sqe(s);
        if (!(s->flags & IOSQE_IO_HARDLINK) && breaks_link(s, q->ent[i].res))
            cancel = true;
    }
}

/* ------------------------------------------------------------------------ */
/* The loop side                                                            */
/* ------------------------------------------------------------------------ */

static void live_unlink(emu_req *q)
{
    kv__list_remove(&q->live);
}

/* Dispatch q's CQEs in order and free it (q must be off every list). */
static void complete(kv__emu *e, emu_req *q)
{
    for (unsigned i = 0; i < q->n; i++)
        kv__loop_dispatch(e->loop, q->ent[i].sqe.user_data, q->ent[i].res, 0);
    kv__free(q);
}

static void emu_done(kv__job *job, int status)
{
    emu_req *q = KV__CONTAINER_OF(job, emu_req, job);
    kv__emu *e = q->emu;
    if (status != KV_OK)
        for (unsigned i = 0; i < q->n; i++)
            q->ent[i].res = -ECANCELED; /* removed before it started */
    live_unlink(q);
    complete(e, q);
}

static void local_push(kv__emu *e, emu_req *q)
{
    q->kind = REQ_LOCAL;
    q->lnext = NULL;
    if (e->local_tail != NULL)
        e->local_tail->lnext = q;
    else
        e->local_head = q;
    e->local_tail = q;
}

static void list_remove(emu_req **head, emu_req *q)
{
    for (emu_req **p = head; *p != NULL; p = &(*p)->lnext)
        if (*p == q) {
            *p = q->lnext;
            q->lnext = NULL;
            return;
        }
}

static emu_req *live_find(kv__emu *e, uint64_t ud, emu_req *skip)
{
    kv__list *pos;
    KV__LIST_FOREACH(pos, &e->live)
    {
        emu_req *q = KV__LIST_ENTRY(pos, emu_req, live);
        if (q == skip || q->kind == REQ_LOCAL)
            continue;
        for (unsigned i = 0; i < q->n; i++)
            if (q->ent[i].sqe.user_data == ud)
                return q;
    }
    return NULL;
}

/*
 * Cancel the request holding user_data ud: 0, -ENOENT or -EALREADY (as the
 * kernel).  timers_only: TIMEOUT_REMOVE.
 */
static int cancel_one(kv__emu *e, uint64_t ud, bool timers_only,
                      emu_req *self)
{
    emu_req *t = live_find(e, ud, self);
    if (t == NULL || (timers_only && t->kind != REQ_TIMER))
        return -ENOENT;
    switch (t->kind) {
    case REQ_TIMER:
        list_remove(&e->timers, t);
        break;
    case REQ_SOCK:
        list_remove(&e->socks, t);
        break;
    case REQ_JOB:
        /* Its done callback dispatches -ECANCELED later. */
        return kv__pool_cancel(e->pool, &t->job) ? 0 : -EALREADY;
    default:
        return -ENOENT;
    }
    for (unsigned i = 0; i < t->n; i++)
        t->ent[i].res = -ECANCELED;
    local_push(e, t);
    return 0;
}

/* A lone SQE decided on the loop thread (NOP, TIMEOUT_REMOVE, ASYNC_CANCEL,
 * an unknown opcode): its result.  self: its request, if it has one. */
static int local_result(kv__emu *e, const struct io_uring_sqe *s,
                        emu_req *self)
{
    int res;
    switch (s->opcode) {
    case IORING_OP_NOP:
        res = 0;
        break;
    case IORING_OP_TIMEOUT_REMOVE:
        res = s->timeout_flags != 0 ? -EINVAL
                                    : cancel_one(e, s->addr, true, self);
        break;
    case IORING_OP_ASYNC_CANCEL:
#ifdef IORING_ASYNC_CANCEL_ALL
        if (s->cancel_flags == IORING_ASYNC_CANCEL_ALL) {
            int count = 0, r;
            /* A cancelled job stays listed until its done: stop at the
             * first one found again (-EALREADY). */
            while ((r = cancel_one(e, s->addr, false, self)) == 0)
                count++;
            res = count;
            break;
        }
#endif
        res = s->cancel_flags != 0 ? -EINVAL
                                   : cancel_one(e, s->addr, false, self);
        break;
    default:
        res = -EINVAL;
        break;
    }
    return res;
}

/* Decide a lone loop-thread SQE now (q is in live already). */
static void start_local(kv__emu *e, emu_req *q)
{
    q->ent[0].res = local_result(e, &q->ent[0].sqe, q);
    local_push(e, q);
}

static bool emu_has_op(int opcode);

static bool is_local(const struct io_uring_sqe *s)
{
    return s->opcode == IORING_OP_NOP ||
           s->opcode == IORING_OP_TIMEOUT_REMOVE ||
           s->opcode == IORING_OP_ASYNC_CANCEL || !emu_has_op(s->opcode);
}

/* Queue a completion on the ring (room checked by the caller). */
static void cq_push(kv__emu *e, uint64_t ud, int res)
{
    emu_cqe *c = &e->cq[(e->cq_head + e->cq_n) % e->cq_cap];
    c->ud = ud;
    c->res = res;
    e->cq_n++;
}

/*
 * The chain of n SQEs at head could not get its request (out of memory):
 * complete it through the ring without one.  False if the ring has no room
 * for its n CQEs (the chain then stays queued).
 */
static bool fail_chain(kv__emu *e, unsigned head, unsigned n)
{
    if (e->cq_cap - e->cq_n < n)
        return false;
    const struct io_uring_sqe *s = &e->sqes[head & e->ring->sq.ring_mask];
    if (n == 1 && is_local(s)) {
        /* Needs no memory: decided as if the request had been made. */
        cq_push(e, s->user_data, local_result(e, s, NULL));
        return true;
    }
    for (unsigned i = 0; i < n; i++) {
        s = &e->sqes[(head + i) & e->ring->sq.ring_mask];
        cq_push(e, s->user_data, i == 0 ? -ENOMEM : -ECANCELED);
    }
    return true;
}

static void start_timer(kv__emu *e, emu_req *q)
{
    const struct io_uring_sqe *s = &q->ent[0].sqe;
    const struct __kernel_timespec *ts =
        (const struct __kernel_timespec *)(uintptr_t)s->addr;
    if (ts == NULL || s->len != 1 || ts->tv_sec < 0 || ts->tv_nsec < 0 ||
        ts->tv_nsec >= 1000000000 ||
        (s->timeout_flags & ~(unsigned)IORING_TIMEOUT_ABS) != 0) {
        q->ent[0].res = -EINVAL;
        local_push(e, q);
        return;
    }
    int64_t d = (int64_t)ts->tv_sec * 1000000000 + (int64_t)ts->tv_nsec;
    if (!(s->timeout_flags & IORING_TIMEOUT_ABS))
        d += now_ns();
    q->deadline = d;
    q->kind = REQ_TIMER;
    emu_req **p = &e->timers;
    while (*p != NULL && (*p)->deadline <= d)
        p = &(*p)->lnext;
    q->lnext = *p;
    *p = q;
}

/* One chain of n SQEs (copied) becomes a request.  False on OOM. */
static bool start_chain(kv__emu *e, unsigned head, unsigned n)
{
    emu_req *q = kv__malloc(sizeof *q + n * sizeof q->ent[0]);
    if (q == NULL)
        return false;
    memset(q, 0, sizeof *q);
    q->emu = e;
    q->n = n;
    for (unsigned i = 0; i < n; i++) {
        q->ent[i].sqe = e->sqes[(head + i) & e->ring->sq.ring_mask];
        q->ent[i].res = 0;
    }
    kv__list_push_front(&e->live, &q->live);
    uint8_t op = q->ent[0].sqe.opcode;
    if (n == 1 && op == IORING_OP_TIMEOUT) {
        start_timer(e, q);
    } else if (n == 1 && (op == IORING_OP_SEND || op == IORING_OP_RECV)) {
        q->kind = REQ_SOCK;
        q->lnext = e->socks;
        e->socks = q;
        q->unsynced = true;
    } else if (n == 1 && is_local(&q->ent[0].sqe)) {
        start_local(e, q);
    } else {
        q->kind = REQ_JOB;
        q->job.work = emu_work;
        q->job.done = emu_done;
        kv__pool_submit(e->pool, e->loop, &q->job);
    }
    return true;
}

static bool emu_has_op(int opcode)
{
    for (size_t i = 0; i < KV__ARRAY_SIZE(supported); i++)
        if (supported[i] == opcode)
            return true;
    return opcode == IORING_OP_OPENAT2;
}

int kv__emu_submit(kv__emu *e)
{
    struct io_uring_sq *sq = &e->ring->sq;
    int done = 0;
    while (sq->sqe_head != sq->sqe_tail) {
        unsigned head = sq->sqe_head, n = 1;
        while (head + n != sq->sqe_tail &&
               (e->sqes[(head + n - 1) & sq->ring_mask].flags &
                (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)))
            n++;
        if (!start_chain(e, head, n) && !fail_chain(e, head, n))
            return done > 0 ? done : -EAGAIN; /* after the next reap */
        sq->sqe_head = head + n;
        e->khead = head + n;
        done += (int)n;
    }
    return done;
}

/* Try the waiting socket operations without blocking. */
static void try_socks(kv__emu *e)
{
    emu_req **p = &e->socks;
    while (*p != NULL) {
        emu_req *q = *p;
        const struct io_uring_sqe *s = &q->ent[0].sqe;
        void *addr = (void *)(uintptr_t)s->addr;
        long r;
        do {
            if (s->opcode == IORING_OP_SEND)
                r = send(s->fd, addr, s->len,
                         (int)s->msg_flags | MSG_DONTWAIT | MSG_NOSIGNAL);
            else
                r = recv(s->fd, addr, s->len, (int)s->msg_flags | MSG_DONTWAIT);
        } while (r < 0 && errno == EINTR);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p = &q->lnext;
            continue;
        }
        *p = q->lnext;
        q->ent[0].res = neg(r);
        local_push(e, q);
    }
}

bool kv__emu_reap(kv__emu *e)
{
    if (e->timers != NULL) {
        int64_t now = now_ns();
        while (e->timers != NULL && e->timers->deadline <= now) {
            emu_req *q = e->timers;
            e->timers = q->lnext;
            q->ent[0].res = -ETIME;
            local_push(e, q);
        }
    }
    if (e->socks != NULL)
        try_socks(e);
    /* Only what is queued now: handlers may queue more (cancels). */
    emu_req *list = e->local_head;
    e->local_head = e->local_tail = NULL;
    unsigned ncq = e->cq_n;
    bool any = list != NULL || ncq > 0;
    while (list != NULL) {
        emu_req *next = list->lnext;
        live_unlink(list);
        complete(e, list);
        list = next;
    }
    /* Then the ring (a cancel's own CQE after its target's, as above);
     * each entry is taken off before its handler may push more. */
    for (; ncq > 0; ncq--) {
        emu_cqe c = e->cq[e->cq_head];
        e->cq_head = (e->cq_head + 1) % e->cq_cap;
        e->cq_n--;
        kv__loop_dispatch(e->loop, c.ud, c.res, 0);
    }
    return any;
}

int kv__emu_wait(kv__emu *e, int efd, unsigned timeout_ms)
{
    if (kv__emu_pending_local(e))
        return KV_OK;
    int64_t wait_ns = timeout_ms > 0 ? (int64_t)timeout_ms * 1000000 : -1;
    if (e->timers != NULL) {
        int64_t d = e->timers->deadline - now_ns();
        if (d < 0)
            d = 0;
        if (wait_ns < 0 || d < wait_ns)
            wait_ns = d;
    }
    size_t n = 1;
    for (emu_req *q = e->socks; q != NULL; q = q->lnext)
        n++;
    if (n > e->cappfds) {
        size_t cap = e->cappfds ? e->cappfds : 16;
        while (cap < n)
            cap *= 2;
        struct pollfd *p = kv__realloc(e->pfds, cap * sizeof *p);
        if (p == NULL) {
            n = 1; /* poll the eventfd alone, briefly */
            if (wait_ns < 0 || wait_ns > 1000000)
                wait_ns = 1000000;
        } else {
            e->pfds = p;
            e->cappfds = cap;
        }
    }
    struct pollfd one;
    struct pollfd *pf = e->cappfds > 0 ? e->pfds : &one;
    pf[0].fd = efd;
    pf[0].events = POLLIN;
    size_t i = 1;
    for (emu_req *q = e->socks; q != NULL && i < n; q = q->lnext, i++) {
        pf[i].fd = q->ent[0].sqe.fd;
        pf[i].events =
            q->ent[0].sqe.opcode == IORING_OP_SEND ? POLLOUT : POLLIN;
    }
    struct timespec ts, *tsp = NULL;
    if (wait_ns >= 0) {
        ts.tv_sec = (time_t)(wait_ns / 1000000000);
        ts.tv_nsec = (long)(wait_ns % 1000000000);
        tsp = &ts;
    }
    int r = ppoll(pf, (nfds_t)n, tsp, NULL);
    if (r < 0 && errno != EINTR)
        return -errno;
    if (r > 0 && (pf[0].revents & POLLIN)) {
        uint64_t v;
        ssize_t rd;
        do {
            rd = read(efd, &v, sizeof v); /* non-blocking */
        } while (rd < 0 && errno == EINTR);
        /* EAGAIN (already drained) is harmless: the eventfd only wakes
         * us, the loop's posted list is what counts. */
        if (rd < 0 && errno != EAGAIN)
            return -errno;
        return 1;
    }
    return KV_OK;
}

bool kv__emu_pending_local(const kv__emu *e)
{
    return e->local_head != NULL || e->cq_n > 0;
}

/* ------------------------------------------------------------------------ */
/* Host-driven loops: the epoll set behind kv_loop_fd                       */
/* ------------------------------------------------------------------------ */

static emu_reg *reg_find(kv__emu *e, int fd)
{
    for (size_t i = 0; i < e->nregs; i++)
        if (e->regs[i].fd == fd)
            return &e->regs[i];
    return NULL;
}

static emu_reg *reg_add(kv__emu *e, int fd)
{
    if (e->nregs == e->capregs) {
        size_t cap = e->capregs ? e->capregs * 2 : 8;
        emu_reg *r = kv__realloc(e->regs, cap * sizeof *r);
        if (r == NULL)
            return NULL;
        e->regs = r;
        e->capregs = cap;
    }
    emu_reg *r = &e->regs[e->nregs++];
    r->fd = fd;
    r->events = 0;
    r->want = 0;
    r->renew = false;
    return r;
}

/* Register fd for events: MOD, or ADD if it is not (or no longer) there. */
static int reg_set(int epfd, int fd, uint32_t events, bool known)
{
    struct epoll_event ev = {.events = events};
    ev.data.fd = fd;
    int op = known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(epfd, op, fd, &ev) == 0)
        return 0;
    if (known && errno == ENOENT) /* closed, and the number reused */
        op = EPOLL_CTL_ADD;
    else if (!known && errno == EEXIST)
        op = EPOLL_CTL_MOD;
    else
        return -1;
    return epoll_ctl(epfd, op, fd, &ev);
}

void kv__emu_host_sync(kv__emu *e, int epfd)
{
    bool failed = false;
    for (size_t i = 0; i < e->nregs; i++) {
        e->regs[i].want = 0;
        e->regs[i].renew = false;
    }
    for (emu_req *q = e->socks; q != NULL; q = q->lnext) {
        const struct io_uring_sqe *s = &q->ent[0].sqe;
        emu_reg *r = reg_find(e, s->fd);
        if (r == NULL && (r = reg_add(e, s->fd)) == NULL) {
            failed = true;
            continue;
        }
        r->want |= s->opcode == IORING_OP_SEND ? EPOLLOUT : EPOLLIN;
        /* The same number may now be another socket: the kernel dropped
         * the old one's registration when it was closed. */
        r->renew |= q->unsynced;
        q->unsynced = false;
    }
    for (size_t i = 0; i < e->nregs;) {
        emu_reg *r = &e->regs[i];
        if (r->want == 0) {
            if (r->events != 0) {
                struct epoll_event ev = {0};
                /* ENOENT/EBADF: closed already, which removed it. */
                (void)epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd, &ev);
            }
            e->regs[i] = e->regs[--e->nregs];
            continue;
        }
        if (r->want != r->events || r->renew) {
            if (reg_set(epfd, r->fd, r->want, r->events != 0) == 0) {
                r->events = r->want;
            } else {
                r->events = 0;
                failed = true;
            }
        }
        i++;
    }
    e->reg_failed = failed;
}

int kv__emu_timeout_ms(const kv__emu *e)
{
    int ms = -1;
    if (e->timers != NULL) {
        int64_t d = e->timers->deadline - now_ns();
        if (d <= 0)
            return 0;
        int64_t m = (d + 999999) / 1000000;
        ms = m > INT_MAX ? INT_MAX : (int)m;
    }
    if (e->reg_failed && (ms < 0 || ms > 1))
        ms = 1; /* a socket the epoll set lacks: poll it */
    return ms;
}
