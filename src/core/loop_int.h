/*
 * core/loop_int.h - the loop's state, shared by loop.c (running the loop)
 * and loop_new.c (setting it up).  Private to those two files.
 */
#ifndef KV_CORE_LOOP_INT_H
#define KV_CORE_LOOP_INT_H

#include "core/core_int.h"

#include <stdatomic.h>

#define DEFAULT_SQ 256u
#define MAX_SQ 32768u /* IORING_MAX_ENTRIES */
#define MAX_CQ 65536u /* IORING_MAX_CQ_ENTRIES */
#define DEFAULT_IOWQ_BOUNDED 64u
#define REAP_BATCH 64u
/* Internal user_data: a CQE neither counted nor dispatched (loop's own). */
#define UD_QUIET ((uint64_t)2)
#define UD_RESERVED_MAX ((uint64_t)4095)

/* A CQE taken off the ring before it could be dispatched (see stash_cqes). */
typedef struct stashed_cqe {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
} stashed_cqe;

/* loop->sleeping: how the loop may be asleep, so where a poster signals. */
#define SLEEP_RING 1u /* blocked in the ring: write efd (its READ wakes it) */
#define SLEEP_HOST 2u /* a host waits on kv_loop_fd: write it directly */

/* Pad to keep the cross-thread words off the loop thread's hot lines. */
#define CACHELINE 64

struct kv_loop {
    struct io_uring ring;
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned setup_flags;

    /* --- loop thread only ------------------------------------------- */
    bool running;      /* inside kv_loop_run */
    bool closing;      /* kv_loop_free: do not re-arm the eventfd read */
    bool wake_armed;   /* the eventfd READ is in the ring */
    bool valgrind;     /* never block in io_uring_enter (see enter) */
    pthread_t owner;   /* the loop thread (created the ring) */
    unsigned inflight; /* SQEs handed out whose final CQE has not come */
    size_t jobs;       /* pool jobs accepted for this loop, not yet finished */
    size_t refs;       /* kv__loop_ref */
    kv__list ready;    /* FIFO of due work (fut.c: futures whose callbacks are
                        * due); the loop only tests it for emptiness */
    stashed_cqe *stash; /* CQEs reaped inside kv__loop_sqes, dispatch later */
    size_t nstash, capstash;
    /* kv__loop_post_from and kv__loop_call_from while running: FIFOs of
     * work for other loops, sent by flush_outbox (loop.c). */
    kv__job *out_jobs, **out_jobs_end;
    kv__call *out_calls, **out_calls_end;
    kv__emu *emu;          /* fallback mode (uring_emu.c), else NULL */
    int efd;               /* eventfd; workers write it (any thread) */
    uint64_t efd_val;      /* buffer of the standing READ */
    /*
     * kv_loop_fd: io_uring mode, an eventfd registered with the ring (the
     * kernel signals it for every CQE once kv_loop_fd or kv_loop_timeout
     * enabled it); fallback mode, an epoll set of efd and the sockets the
     * emulator waits on.  host_primed: a run has ended host-style since.
     */
    int nfd;
    bool host_primed;
    unsigned char ops[32]; /* probed opcodes, a bitmap */
    kv__loop_stats st;

    char pad0[CACHELINE];
    /*
     * --- shared with posters (any thread) ----------------------------
     * posted:   Treiber stack of finished jobs (newest first).  Posters
     *           push with a seq_cst CAS; the loop takes the whole list with
     *           one exchange, so there is no ABA.
     * sleeping: SLEEP_RING while the loop may block in io_uring_enter,
     *           SLEEP_HOST between the runs of a host-driven loop; posters
     *           that see it set exchange it to 0 and write the eventfd
     *           (SLEEP_HOST in io_uring mode: nfd).
     * posting:  posters between their push and their last touch of the
     *           loop; kv_loop_free waits for 0 so a worker never writes a
     *           closed eventfd or freed memory.
     * All on one line (aligned, and the loop allocated so): a poster
     * touches only this line.
     */
    _Alignas(CACHELINE) _Atomic(kv__job *) posted;
    atomic_uint sleeping;
    atomic_uint posting;
    atomic_ullong wakes; /* eventfd writes (relaxed counter) */
    /*
     * wake_req: kv_loop_wake was called since the loop last looked (it
     *           is part of remote_work, re-checked like posted).
     * hosted:   kv_loop_fd or kv_loop_timeout was called: every run ends
     *           with the host protocol (host_settle).
     */
    atomic_uint wake_req;
    atomic_uint hosted;
    /*
     * calls:   Treiber stack of calls forwarded from other threads
     *          (kv__loop_call), pushed and taken like posted.
     * nstores: stores opened on this loop and not yet freed (kv_loop_free
     *          fails KV_EBUSY while any is).
     * nops:    operations in flight on those stores (kv_loop_inflight).
     */
    _Atomic(kv__call *) calls;
    atomic_size_t nstores;
    atomic_size_t nops;
    char pad1[CACHELINE];
};

#endif /* KV_CORE_LOOP_INT_H */
