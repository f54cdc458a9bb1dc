/*
 * core/core.h - the engine: the loop (one io_uring), the worker pool and
 * futures.  What the layers above (store, backends) may use of the core.
 * Everything here is loop-thread-only unless marked "any thread".
 */
#ifndef KV_CORE_H
#define KV_CORE_H

#include "util/list.h"
#include "util/util.h"

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>

/* ------------------------------------------------------------------------ */
/* loop.c                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A ring operation.  Embed one in your operation state; its address is the
 * SQE's user_data, and cb runs on the loop thread with the CQE's res and
 * flags.  One op may be the user_data of several SQEs in a chain (each CQE
 * calls cb) as long as the owner tells them apart.
 */
typedef struct kv__op kv__op;
typedef void (*kv__op_cb)(kv__op *op, int res, uint32_t cqe_flags);
struct kv__op {
    kv__op_cb cb;
};

/*
 * Reserved user_data values (never valid pointers; loop.c keeps every value
 * below 4096 for itself).
 */
#define KV__UD_IGNORE ((uint64_t)0)  /* CQE counted and dropped (cancels)  */
#define KV__UD_WAKE ((uint64_t)1)    /* the standing eventfd read          */

/*
 * Hand out n SQEs for one submission (a linked chain must take all its SQEs
 * in one call: space is reserved for the whole chain before any is returned,
 * submitting what is queued first if needed, so a chain is never split
 * across two submits).  The SQEs are zeroed-prepared by the caller with
 * io_uring_prep_* and io_uring_sqe_set_data64(sqe, (uintptr_t)op) or
 * KV__UD_IGNORE.  Every SQE must produce exactly one CQE (no
 * IOSQE_CQE_SKIP_SUCCESS): the loop counts them to know it is alive.
 * Returns KV_OK, or KV_EINVAL (n == 0 or larger than the SQ), or a negative
 * code from a failed submit.
 */
int kv__loop_sqes(kv_loop *loop, struct io_uring_sqe **sqes, unsigned n);

/*
 * Note for kv__loop_sqes: prepare the SQEs it returned before the next call
 * that may submit (another kv__loop_sqes, kv__loop_flush, kv_loop_run): a
 * submit sends every SQE handed out so far.  A multishot SQE may produce
 * several CQEs; only the last one (without IORING_CQE_F_MORE) is counted.
 */

/* Submit what has been prepared now (normally the loop does it itself). */
int kv__loop_flush(kv_loop *loop);

/*
 * Keep the loop alive without a ring op or pool job (e.g. an operation
 * parked in a backend queue).  Balanced calls.
 */
void kv__loop_ref(kv_loop *loop);
void kv__loop_unref(kv_loop *loop);

typedef struct kv__job kv__job;

/* The ring, for feature probes (loop thread). */
struct io_uring *kv__loop_ring(kv_loop *loop);
/* True if the kernel supports opcode (probed at kv_loop_new). */
bool kv__loop_has_op(const kv_loop *loop, int opcode);

/*
 * True if nothing on the loop can make progress any more: no ring operation
 * in flight, no pool job pending, no callback due (kv__loop_ref references
 * alone cannot complete anything).  kv_wait uses it to refuse to block.
 */
bool kv__loop_stalled(const kv_loop *loop);

/*
 * Threads (loop.c, thread.c).  A call forwarded to a loop from any thread:
 * run(c) runs on the loop's thread at its next turn, oldest first; the
 * loop touches c no more once run is called (run may free it).
 */
typedef struct kv__call kv__call;
struct kv__call {
    void (*run)(kv__call *c);
    kv__call *next; /* the loop's list */
    kv_loop *to;    /* kv__loop_call_from: the loop it goes to */
};
/* Push c on loop's list of forwarded calls and wake it.  Any thread. */
void kv__loop_call(kv_loop *loop, kv__call *c);
/* Wake loop if it sleeps or is about to (the eventfd).  Any thread. */
void kv__loop_signal(kv_loop *loop);
/*
 * Count job as pending on loop (alive, and kv_wait blocks for it) until
 * some thread calls job->post(job): job->done then runs on loop's thread.
 * Loop thread; job->done must be set.
 */
void kv__loop_expect(kv_loop *loop, kv__job *job);
/*
 * Post several jobs expected on loop (kv__loop_expect) at once: one push
 * and at most one wake for all, where posting each (job->post) may wake
 * the loop once per job.  The jobs are linked through next from newest to
 * oldest (oldest's next is overwritten); their done callbacks run oldest
 * first.  Any thread; the jobs are the loop's from the call on.
 */
void kv__loop_post_chain(kv_loop *loop, kv__job *newest, kv__job *oldest);
/*
 * Post the jobs of fifo (linked through next, oldest first; each expected
 * on its job->loop) with one kv__loop_post_chain per destination loop, in
 * order per loop; returns the pushes.  Any thread; the jobs are their
 * loops' from the call on.
 */
unsigned kv__loop_post_fifo(kv__job *fifo);
/*
 * Hand work to another loop from the calling thread's own loop, from:
 * job (expected on its loop, kv__loop_expect) is posted to job->loop, c
 * is called on loop to.  While from runs (inside kv_loop_run) they wait in
 * from's outbox and leave at the end of its turn, or before it blocks:
 * each destination's in one push, so at most one wake per turn where
 * handing them over one by one could wake that loop for each.  Outside a
 * run (or from NULL, for a call) they leave at once.  Each destination
 * receives them in the order given.  from's thread only.
 */
void kv__loop_post_from(kv_loop *from, kv__job *job);
void kv__loop_call_from(kv_loop *from, kv_loop *to, kv__call *c);
/* kv__loop_call_from from the calling thread's own loop, if it has one (a
 * call made from this thread then cannot overtake one made before it that
 * waits in the outbox); else kv__loop_call.  Any thread. */
void kv__loop_call_here(kv_loop *to, kv__call *c);
/* True on loop's own thread (the one that created it).  Any thread. */
bool kv__loop_on_thread(const kv_loop *loop);
/* Stores opened on loop (+1 / -1; kv_loop_free fails while > 0) and their
 * operations in flight (kv_loop_inflight).  Any thread. */
void kv__loop_stores_add(kv_loop *loop, int delta);
void kv__loop_ops_add(kv_loop *loop, int delta);
/*
 * The calling thread's loop: the first loop it created that is not freed,
 * else a private one made now (and freed at thread exit).  NULL if none can
 * be made (kv_last_errmsg says why).  Any thread.
 */
kv_loop *kv__thread_loop(void);
/* The calling thread's loop if it has one (never makes one), else NULL. */
kv_loop *kv__thread_loop_peek(void);

/* Counters, for tools/loopbench and tests (loop thread; wakes any thread). */
typedef struct kv__loop_stats {
    uint64_t turns;     /* kv_loop_run iterations                          */
    uint64_t waits;     /* turns that blocked in io_uring_enter            */
    uint64_t submits;   /* io_uring_enter calls that submitted or waited   */
    uint64_t cqes;      /* CQEs dispatched (not counting the eventfd read) */
    uint64_t jobs;      /* posted pool jobs finished on this loop          */
    uint64_t wake_cqes; /* completions of the standing eventfd read        */
    uint64_t wakes;     /* eventfd writes by posters                       */
    uint64_t pushes;    /* kv__loop_post_from / _call_from: pushes made to
                         * other loops (one per destination per flush)     */
} kv__loop_stats;
void kv__loop_get_stats(const kv_loop *loop, kv__loop_stats *out);
/* ------------------------------------------------------------------------ */
/* pool.c                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * A blocking job.  work runs on a worker thread and must not touch loop
 * state; done runs afterwards on the submitting loop's thread with status
 * KV_OK, or KV_ECANCELED when the job was cancelled before it started (work
 * then never ran).  The job memory belongs to the submitter; the pool
 * touches it no more once done has been called.
 */
struct kv__job {
    void (*work)(kv__job *job);
    void (*done)(kv__job *job, int status);
    kv_loop *loop;     /* set by kv__pool_submit */
    /* Set by kv__pool_submit: hands the finished (or cancelled) job back to
     * its loop; the pool calls it (any thread) and touches the job no more. */
    void (*post)(kv__job *job);
    kv__job *next;     /* the loop's completion list */
    kv__list queue;    /* the pool's FIFO */
    int status;        /* KV_OK or KV_ECANCELED, for done */
    int state;         /* pool-private */
};

/*
 * Queue job on pool; done will run on loop (loop.c: the loop counts the
 * job as pending, and alive, until done has run, and gives the pool its
 * post).  Loop thread.
 */
void kv__pool_submit(kv_pool *pool, kv_loop *loop, kv__job *job);
/* pool.c: queue a job whose post is set (kv__pool_submit's second half). */
void kv__pool_enqueue(kv_pool *pool, kv__job *job);
/*
 * Cancel job if it has not started: it is removed from the queue and its
 * done runs later with KV_ECANCELED (never inside this call).  Returns true
 * if it was removed, false if it is running or finished.  Loop thread.
 */
bool kv__pool_cancel(kv_pool *pool, kv__job *job);

/* Called by the loop thread when a posted job is taken off the list. */
void kv__job_finish(kv__job *job);

/* ------------------------------------------------------------------------ */
/* fut.c                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Lifetime rule.  A future is reference counted (loop thread only):
 *  - kv__fut_new returns it with one reference, the caller's; kv_fut_free
 *    (or kv__fut_unref) drops it;
 *  - a producer that keeps a pointer to finish the future later (an op
 *    state, a pool job, a backend request) takes its own reference with
 *    kv__fut_ref when it stores the pointer, and drops it with
 *    kv__fut_unref after its kv__fut_finish (or once it no longer needs
 *    the pointer);
 *  - the loop's ready FIFO holds a reference while callbacks are due.
 * So a user may free a pending future at any time: the producer's pointer
 * stays valid, its completion still runs the registered callbacks, and the
 * memory goes with the last reference.  Never keep a pointer to a future
 * without holding a reference.
 */

/* A pending future with one reference (the caller's).  NULL on OOM. */
kv_fut *kv__fut_new(kv_loop *loop);
/* A future already failed with code; never NULL (static fallback on OOM). */
kv_fut *kv__fut_failed(kv_loop *loop, int code, const char *fmt, ...)
    KV__PRINTF(3, 4);
void kv__fut_ref(kv_fut *f);
void kv__fut_unref(kv_fut *f); /* kv_fut_free is the same for the caller */

/*
 * Complete f with status (KV_OK or negative) and an optional message (fmt
 * may be NULL).  Its callbacks are queued to run on the loop's next turn.
 * Returns false (and does nothing) if f was already done, e.g. cancelled;
 * the producer must then free any result it meant to attach.
 */
bool kv__fut_finish(kv_fut *f, int status, const char *fmt, ...)
    KV__PRINTF(3, 4);

/*
 * Called by kv_fut_cancel while f is pending, before f completes
 * KV_ECANCELED: stop the underlying work if possible.  The producer still
 * finishes its own bookkeeping later; kv__fut_finish then returns false.
 */
void kv__fut_on_cancel(kv_fut *f, void (*fn)(kv_fut *f, void *arg), void *arg);

/*
 * A future completed with status now (KV_OK: no result; else failed, with
 * the code's own message).  Never NULL (kv__fut_failed's fallback).
 */
kv_fut *kv__fut_done_now(kv_loop *loop, int status);
/* Complete relay with src's status and message once src is done, holding
 * a reference to relay meanwhile.  KV_OK or KV_ENOMEM. */
int kv__fut_relay(kv_fut *src, kv_fut *relay);

/*
 * Results.  The core holds the generic ones itself (a bool, a token, a
 * bytes copy, a kv_fut_complete_obj object) and ONE owned result of a kind
 * a layer above defines (the store's records, keys, iterator): a pointer, a
 * count and a few words of inline room (aux), released through the kind.
 * Set results before kv__fut_finish; ownership moves to the future.
 * Whatever is passed to a setter belongs to the future from then on, even
 * when the future is already done (cancelled): then it is freed at once (a
 * free_late kind: with the future) and never shown.  A result set on a
 * future that then fails stays visible (e.g. skipped keys).
 */
void kv__fut_set_bool(kv_fut *f, bool v);
void kv__fut_set_token(kv_fut *f, uint64_t token);
void kv__fut_set_bytes(kv_fut *f, void *bytes, size_t len);
/* Take a kv_fut_complete_obj object out of f (NULL if none). */
void *kv__fut_take_obj(kv_fut *f);

/* Inline room for what a result needs besides pointer and count (the store
 * keeps a copy of a codec here), so a result costs no allocation. */
typedef union kv__fut_aux {
    void *p[4];
    void (*fn[4])(void);
} kv__fut_aux;

typedef struct kv__fut_kind {
    /* Free ptr (n entries; aux as passed to the setter, or NULL). */
    void (*release)(void *ptr, size_t n, const kv__fut_aux *aux);
    /* Set on a done future: kept hidden and released with the future, not
     * at once (a release that may call back into the producer). */
    bool free_late;
} kv__fut_kind;

/*
 * Give f its owned result (aux may be NULL; it is copied).  A result of
 * another kind, or another pointer, held before is released first.
 */
void kv__fut_set_result(kv_fut *f, const kv__fut_kind *kind, void *ptr,
                        size_t n, const kv__fut_aux *aux);
/* f's result if f is done and holds one of kind (*n its count), else NULL
 * with *n 0. */
void *kv__fut_result(const kv_fut *f, const kv__fut_kind *kind, size_t *n);
/* Take f's result of kind out of it, done or not (the caller owns it
 * afterwards); NULL with *n 0 if there is none or it is hidden. */
void *kv__fut_take_result(kv_fut *f, const kv__fut_kind *kind, size_t *n);

/*
 * Moving a done future's outcome to a future of another loop (a call
 * forwarded to another thread): export takes status, message and results
 * out of src (on src's thread) into x, plain memory that may cross threads;
 * import completes dst with them (on dst's thread) and leaves x empty; a
 * dst already done (cancelled) gets nothing and x's results are released.
 */
typedef struct kv__fut_xfer {
    int status;
    char *msg;
    unsigned have;
    bool bval;
    uint64_t token;
    void *bytes;
    size_t nbytes;
    void *obj;
    const kv__fut_kind *rkind;
    void *rptr;
    size_t rn;
    bool raux_set;
    kv__fut_aux raux;
} kv__fut_xfer;
void kv__fut_export(kv_fut *src, kv__fut_xfer *x);
void kv__fut_import(kv_fut *dst, kv__fut_xfer *x);
/* Release what x holds (nobody imports it). */
void kv__fut_xfer_release(kv__fut_xfer *x);

#endif /* KV_CORE_H */
