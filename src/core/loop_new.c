/*
 * loop_new.c - kv_loop_new: the ring's set-up (optional flags dropped when
 * the kernel refuses them, the reasons io_uring is unavailable), the
 * eventfds, the opcode probe, or the fallback mode's emulator.
 */
#include "config.h"

#include "core/loop_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Creation                                                                 */
/* ------------------------------------------------------------------------ */

static unsigned round_pow2(unsigned v)
{
    unsigned p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* Why io_uring_setup was refused: a message for kv_last_errmsg. */
static int setup_error(int err)
{
    if (err == -ENOMEM) {
        kv__set_errmsg("io_uring_setup: %s (RLIMIT_MEMLOCK too low on an "
                       "old kernel?)",
                       strerror(-err));
        return KV_ENOMEM;
    }
    if (err == -EPERM || err == -EACCES) {
        int disabled = -1;
        FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "re");
        if (f != NULL) {
            if (fscanf(f, "%d", &disabled) != 1)
                disabled = -1;
            fclose(f);
        }
        if (disabled == 2)
            kv__set_errmsg("io_uring_setup: %s (disabled by the sysctl "
                           "kernel.io_uring_disabled=2)",
                           strerror(-err));
        else if (disabled == 1)
            kv__set_errmsg("io_uring_setup: %s (the sysctl "
                           "kernel.io_uring_disabled=1 allows only members "
                           "of kernel.io_uring_group)",
                           strerror(-err));
        else
            kv__set_errmsg("io_uring_setup: %s (blocked by seccomp, e.g. a "
                           "container's default profile?)",
                           strerror(-err));
        return KV_ENOTSUP;
    }
    if (err == -ENOSYS) {
        kv__set_errmsg("io_uring_setup: %s (kernel without io_uring, or "
                       "blocked by seccomp)",
                       strerror(-err));
        return KV_ENOTSUP;
    }
    kv__set_errmsg("io_uring_setup: %s", strerror(-err));
    return KV_ERROR;
}

/*
 * Set the ring up, dropping optional flags the kernel refuses (EINVAL):
 * SINGLE_ISSUER|DEFER_TASKRUN (6.1), then COOP_TASKRUN (5.19), then
 * SUBMIT_ALL (5.18).  CQSIZE (5.5) is required.
 */
static int setup_ring(kv_loop *loop, unsigned sq, unsigned cq, unsigned kflags)
{
    unsigned tries[4];
    unsigned ntries = 0;
    unsigned base = IORING_SETUP_CQSIZE;
#if HAVE_DECL_IORING_SETUP_SUBMIT_ALL
    base |= IORING_SETUP_SUBMIT_ALL;
#endif
#if HAVE_DECL_IORING_SETUP_SINGLE_ISSUER &&                                    \
    HAVE_DECL_IORING_SETUP_DEFER_TASKRUN &&                                    \
    defined(HAVE_IO_URING_SUBMIT_AND_GET_EVENTS)
    /* DEFER_TASKRUN needs io_uring_submit_and_get_events for NOWAIT. */
    if (!(kflags & KV_LOOP_NO_DEFER_TASKRUN))
        tries[ntries++] =
            base | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
#endif
#if HAVE_DECL_IORING_SETUP_COOP_TASKRUN
    tries[ntries++] = base | IORING_SETUP_COOP_TASKRUN;
#endif
    tries[ntries++] = base;
#if HAVE_DECL_IORING_SETUP_SUBMIT_ALL
    tries[ntries++] = base & ~(unsigned)IORING_SETUP_SUBMIT_ALL;
#endif
    int err = -EINVAL;
    for (unsigned i = 0; i < ntries; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = tries[i];
        p.cq_entries = cq;
        err = io_uring_queue_init_params(sq, &loop->ring, &p);
        if (err == 0) {
            if (!(p.features & IORING_FEAT_NODROP)) {
                io_uring_queue_exit(&loop->ring);
                kv__set_errmsg("io_uring: kernel too old (no "
                               "IORING_FEAT_NODROP; Linux 5.5+ needed)");
                return KV_ENOTSUP;
            }
            loop->setup_flags = p.flags;
            return KV_OK;
        }
        if (err != -EINVAL)
            break;
    }
    if (err == -EINVAL) {
        kv__set_errmsg("io_uring_setup: %s (kernel too old for "
                       "IORING_SETUP_CQSIZE?)",
                       strerror(EINVAL));
        return KV_ENOTSUP;
    }
    return setup_error(err);
}

static void probe_ops(kv_loop *loop)
{
    struct io_uring_probe *p = io_uring_get_probe_ring(&loop->ring);
    if (p == NULL)
        return; /* kernel < 5.6: report nothing as supported */
    for (unsigned i = 0; i < p->ops_len; i++) {
        unsigned op = p->ops[i].op;
        if ((p->ops[i].flags & IO_URING_OP_SUPPORTED) && op < 256)
            loop->ops[op / 8] |= (unsigned char)(1u << (op % 8));
    }
    io_uring_free_probe(p);
}

int kv_loop_new(kv_loop **out, const kv_loop_opts *opts)
{
    kv_loop_opts o;
    if (out == NULL) {
        kv__set_errmsg("kv_loop_new: out is NULL");
        return KV_EINVAL;
    }
    if (opts != NULL)
        o = *opts;
    else
        memset(&o, 0, sizeof o);
    if (o.flags & ~(KV_LOOP_NO_DEFER_TASKRUN | KV_LOOP_FORCE_FALLBACK)) {
        kv__set_errmsg("kv_loop_new: unknown flags 0x%x", o.flags);
        return KV_EINVAL;
    }
    if (o.sq_entries > MAX_SQ) {
        kv__set_errmsg("kv_loop_new: sq_entries %u > %u", o.sq_entries, MAX_SQ);
        return KV_EINVAL;
    }
    unsigned sq = round_pow2(o.sq_entries ? o.sq_entries : DEFAULT_SQ);
    unsigned cq = o.cq_entries;
    if (cq == 0)
        cq = sq * 8 > MAX_CQ ? MAX_CQ : sq * 8;
    if (cq < 2 * sq || cq > MAX_CQ) {
        kv__set_errmsg("kv_loop_new: cq_entries %u must be in [2 x "
                       "sq_entries (%u), %u]",
                       cq, 2 * sq, MAX_CQ);
        return KV_EINVAL;
    }

    kv_loop *loop = kv__zalloc_aligned(CACHELINE, sizeof *loop);
    if (loop == NULL) {
        kv__set_errmsg("kv_loop_new: out of memory");
        return KV_ENOMEM;
    }
    kv__list_init(&loop->ready);
    loop->out_jobs_end = &loop->out_jobs;
    loop->out_calls_end = &loop->out_calls;
    atomic_init(&loop->posted, NULL);
    atomic_init(&loop->sleeping, 0);
    atomic_init(&loop->posting, 0);
    atomic_init(&loop->wakes, 0);
    atomic_init(&loop->wake_req, 0);
    atomic_init(&loop->hosted, 0);
    loop->nfd = -1;
    atomic_init(&loop->calls, NULL);
    atomic_init(&loop->nstores, 0);
    atomic_init(&loop->nops, 0);
    /*
     * Non-blocking so a poster never blocks in write(); the ring's READ is
     * still poll-driven on current kernels (an old one that answers -EAGAIN
     * is handled in wake_cqe).
     */
    loop->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->efd < 0) {
        int e = errno;
        kv__set_errmsg("eventfd: %s", strerror(e));
        kv__free(loop);
        return e == ENOMEM ? KV_ENOMEM : KV_ERROR;
    }
    /* --- fallback section (uring_emu.c) --- */
    const char *env = getenv("KV_IO_URING");
    bool force = (o.flags & KV_LOOP_FORCE_FALLBACK) ||
                 (env != NULL && strcmp(env, "0") == 0);
    int rc = force ? KV_ENOTSUP : setup_ring(loop, sq, cq, o.flags);
    if (rc == KV_ENOTSUP) {
        /* io_uring blocked or refused: emulate it (kv_last_errmsg keeps
         * the reason setup_ring gave, if any). */
        rc = kv__emu_new(&loop->emu, loop, &loop->ring, sq, cq);
        if (rc == KV_OK) {
            /* kv_loop_fd: an epoll set, the eventfd in it from the start. */
            struct epoll_event ev = {.events = EPOLLIN};
            ev.data.fd = loop->efd;
            loop->nfd = epoll_create1(EPOLL_CLOEXEC);
            if (loop->nfd < 0 ||
                epoll_ctl(loop->nfd, EPOLL_CTL_ADD, loop->efd, &ev) != 0) {
                int e = errno;
                kv__set_errmsg("kv_loop_new: epoll: %s", strerror(e));
                rc = e == ENOMEM || e == ENOSPC ? KV_ENOMEM : KV_ERROR;
                if (loop->nfd >= 0)
                    close(loop->nfd);
                kv__emu_free(loop->emu);
                close(loop->efd);
                kv__free(loop);
                return rc;
            }
            loop->sq_entries = sq;
            loop->cq_entries = cq;
            kv__emu_probe(loop->ops);
            loop->owner = pthread_self();
            kv__thread_adopt(loop);
            *out = loop;
            return KV_OK;
        }
    }
    /* --- end fallback section --- */
    if (rc != KV_OK) {
        close(loop->efd);
        kv__free(loop);
        return rc;
    }
    loop->sq_entries = loop->ring.sq.ring_entries;
    loop->cq_entries = loop->ring.cq.ring_entries;

    /*
     * kv_loop_fd: not the ring fd (with DEFER_TASKRUN, poll on it is not
     * woken by a completion) but an eventfd the kernel signals for every
     * CQE, deferred task work included.  Disabled until a host asks for it
     * (kernels before 5.8 cannot disable it: then it is always on).
     */
    loop->nfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rc = loop->nfd < 0 ? -errno : io_uring_register_eventfd(&loop->ring,
                                                            loop->nfd);
    if (rc < 0) {
        kv__set_errmsg("kv_loop_new: %s: %s",
                       loop->nfd < 0 ? "eventfd" : "io_uring_register_eventfd",
                       strerror(-rc));
        rc = rc == -ENOMEM ? KV_ENOMEM : KV_ERROR;
        if (loop->nfd >= 0)
            close(loop->nfd);
        io_uring_queue_exit(&loop->ring);
        close(loop->efd);
        kv__free(loop);
        return rc;
    }
    (void)io_uring_cq_eventfd_toggle(&loop->ring, false);

    /* Fewer fd lookups per enter; optional (liburing 2.2+, Linux 5.18+). */
    (void)io_uring_register_ring_fd(&loop->ring);
#ifdef HAVE_IO_URING_REGISTER_IOWQ_MAX_WORKERS
    {
        /* [bounded, unbounded]; 0 leaves a limit unchanged.  Best effort:
         * kernels before 5.15 lack it. */
        unsigned vals[2] = {o.iowq_bounded ? o.iowq_bounded
                                           : DEFAULT_IOWQ_BOUNDED,
                            o.iowq_unbounded};
        (void)io_uring_register_iowq_max_workers(&loop->ring, vals);
    }
#endif
    probe_ops(loop);
    const char *preload = getenv("LD_PRELOAD");
    loop->valgrind = preload != NULL && strstr(preload, "vgpreload") != NULL;
    loop->owner = pthread_self();
    kv__thread_adopt(loop);
    *out = loop;
    return KV_OK;
}
