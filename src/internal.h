/*
 * internal.h - what several source files share.  Not installed, not API.
 *
 * Naming: kv__ for internal symbols that are not static (hidden by
 * -fvisibility=hidden and the export list), plain names for statics.
 *
 * Threading: everything here is loop-thread-only unless marked "any thread".
 */
#ifndef KV_INTERNAL_H
#define KV_INTERNAL_H

#include "kvstore.h"

#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define KV__PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KV__UNUSED __attribute__((unused))
#else
#define KV__PRINTF(a, b)
#define KV__UNUSED
#endif

#define KV__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KV__CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------------------ */
/* alloc.c: every allocation goes through these (hookable for failure      */
/* tests).  Any thread.                                                     */
/* ------------------------------------------------------------------------ */

void *kv__malloc(size_t n);
void *kv__calloc(size_t count, size_t size);
void *kv__realloc(void *p, size_t n);
void kv__free(void *p);
char *kv__strdup(const char *s);
char *kv__strndup(const char *s, size_t n);
void *kv__memdup(const void *p, size_t n); /* n == 0 gives a valid 1-byte block */
/* Printf into a new heap string; NULL on OOM. */
char *kv__asprintf(const char *fmt, ...) KV__PRINTF(1, 2);
char *kv__vasprintf(const char *fmt, va_list ap);

/*
 * Test hook: make the nth allocation from now fail (1 = the next one), and
 * every one after it if sticky; 0 turns failures off.  Returns how many
 * allocations were made since the last call.
 */
unsigned long kv__alloc_fail_at(unsigned long nth, bool sticky);

/* ------------------------------------------------------------------------ */
/* error.c                                                                  */
/* ------------------------------------------------------------------------ */

/* Set this thread's kv_last_errmsg(). */
void kv__set_errmsg(const char *fmt, ...) KV__PRINTF(1, 2);
/* Map a negated errno to a kvstore code (ENOMEM -> KV_ENOMEM, else KV_EBACKEND). */
int kv__from_errno(int neg_errno);

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

/*
 * Post a finished pool job to its loop (any thread: a worker).  The job's
 * done callback runs on the loop thread.  Signals coalesce: the eventfd is
 * written only when the loop may be asleep.
 */
typedef struct kv__job kv__job;
void kv__loop_post(kv_loop *loop, kv__job *job);

/* The ring, for feature probes (loop thread). */
struct io_uring *kv__loop_ring(kv_loop *loop);
/* True if the kernel supports opcode (probed at kv_loop_new). */
bool kv__loop_has_op(const kv_loop *loop, int opcode);

/*
 * pool.c calls this (loop thread) when it accepts a job for loop: the loop
 * counts the job as pending, and alive, until it takes the posted job off
 * its completion list and has called kv__job_finish.
 */
void kv__loop_job_pending(kv_loop *loop);

/*
 * True if nothing on the loop can make progress any more: no ring operation
 * in flight, no pool job pending, no callback due (kv__loop_ref references
 * alone cannot complete anything).  kv_wait uses it to refuse to block.
 */
bool kv__loop_stalled(const kv_loop *loop);

/* Counters, for tools/loopbench and tests (loop thread; wakes any thread). */
typedef struct kv__loop_stats {
    uint64_t turns;     /* kv_loop_run iterations                          */
    uint64_t waits;     /* turns that blocked in io_uring_enter            */
    uint64_t submits;   /* io_uring_enter calls that submitted or waited   */
    uint64_t cqes;      /* CQEs dispatched (not counting the eventfd read) */
    uint64_t jobs;      /* posted pool jobs finished on this loop          */
    uint64_t wake_cqes; /* completions of the standing eventfd read        */
    uint64_t wakes;     /* eventfd writes by posters                       */
} kv__loop_stats;
void kv__loop_get_stats(const kv_loop *loop, kv__loop_stats *out);

/* ------------------------------------------------------------------------ */
/* uring_emu.c: the fallback mode (io_uring blocked, or KV_IO_URING=0).     */
/* loop.c calls these; the backends see only SQEs and CQEs, as with a ring.  */
/* ------------------------------------------------------------------------ */

typedef struct kv__emu kv__emu;
/*
 * Make the emulator of loop and turn ring into a fake one whose SQ is the
 * emulator's array (sq entries, a power of two; cq is only reported), so
 * io_uring_get_sqe / io_uring_sq_ready / sq.sqe_head..sqe_tail work as
 * with a ring.  Starts a private pool.  KV_OK, KV_ENOMEM or KV_ERROR.
 */
int kv__emu_new(kv__emu **out, kv_loop *loop, struct io_uring *ring,
                unsigned sq, unsigned cq);
void kv__emu_free(kv__emu *e); /* the loop must be idle (not alive) */
/* Set the opcodes the emulator runs in a kv__loop_has_op bitmap. */
void kv__emu_probe(unsigned char ops[32]);
bool kv__emu_has_op(int opcode);
/*
 * Take every SQE prepared since the last submit (chains whole): pool jobs,
 * timers, socket waits or local completions; a chain whose request cannot
 * be allocated completes -ENOMEM (-ECANCELED after its first SQE) through
 * kv__emu_reap.  Never dispatches.  Returns the number taken, or -EAGAIN
 * if none could be (the ring of such completions is full).
 */
int kv__emu_submit(kv__emu *e);
/* Dispatch completions that are due (timers, sockets, local).  True if any. */
bool kv__emu_reap(kv__emu *e);
/* True if completions wait to be dispatched (the loop must not block). */
bool kv__emu_pending_local(const kv__emu *e);
/*
 * Block until efd (the loop's eventfd, drained here), a timer or a socket
 * is ready, or timeout_ms (0: no limit) passes.  1 if the eventfd was
 * signalled (and drained), else KV_OK, or a negated errno.
 */
int kv__emu_wait(kv__emu *e, int efd, unsigned timeout_ms);
/* loop.c: dispatch a synthetic CQE exactly as a ring CQE. */
void kv__loop_dispatch(kv_loop *loop, uint64_t ud, int res, uint32_t flags);

/* ------------------------------------------------------------------------ */
/* fault.c: a test-only fault injector for ring operations (inert unless    */
/* armed; loop thread).                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Make the nth ring operation of kind opcode (IORING_OP_OPENAT (OPENAT2
 * too), WRITE (WRITEV), READ (READV), FSYNC, CLOSE, RENAMEAT, UNLINKAT,
 * STATX, MKDIRAT...) submitted on loop (NULL: any loop) from now on fail
 * with res (a negated errno, e.g. -EIO) or, with res >= 0, transfer at
 * most res bytes (a short read/write, always below the length asked).  The
 * rest of its IOSQE_IO_LINK chain completes -ECANCELED, as the kernel's
 * would.  nth 0 (or opcode -1) only counts operations (kv__fault_seen).
 * Operations with a reserved user_data (the loop's own) are never touched.
 */
void kv__fault_arm(kv_loop *loop, int opcode, unsigned long nth, int res);
void kv__fault_disarm(void);
/* Injections since the last arm / since the process started. */
unsigned long kv__fault_hits(void);
unsigned long kv__fault_total(void);
/* Operations of opcode's kind submitted since the last arm. */
unsigned long kv__fault_seen(int opcode);
/* loop.c's hooks: rewrite the SQEs about to be submitted; substitute the
 * result of a CQE whose SQE was rewritten. */
void kv__fault_before_submit(kv_loop *loop);
int kv__fault_cqe(kv_loop *loop, uint64_t ud, int res);

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
    kv__job *next;     /* pool queue / loop completion list */
    kv__job *prev;     /* pool queue */
    int status;        /* KV_OK or KV_ECANCELED, for done */
    int state;         /* pool-private */
};

/* Queue job on pool; done will run on loop.  Loop thread. */
void kv__pool_submit(kv_pool *pool, kv_loop *loop, kv__job *job);
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
bool kv__fut_finishv(kv_fut *f, int status, const char *fmt, va_list ap);

/*
 * Called by kv_fut_cancel while f is pending, before f completes
 * KV_ECANCELED: stop the underlying work if possible.  The producer still
 * finishes its own bookkeeping later; kv__fut_finish then returns false.
 */
void kv__fut_on_cancel(kv_fut *f, void (*fn)(kv_fut *f, void *arg), void *arg);

/*
 * Results, set before kv__fut_finish (ownership moves to the future; on a
 * false return from kv__fut_finish the future frees them itself).  typed
 * records hold codec objects in val, freed with codec->free_obj.  Whatever
 * is passed to a setter belongs to the future from then on, even when the
 * future is already done (cancelled): then it is freed at once (an
 * iterator: with the future) and never shown by the getters.  A result set
 * on a future that then fails stays visible (e.g. skipped keys).
 */
void kv__fut_set_records(kv_fut *f, kv_record *recs, size_t n,
                         const kv_codec *codec);
void kv__fut_set_keys(kv_fut *f, kv_key **keys, size_t n);
void kv__fut_set_bool(kv_fut *f, bool v);
void kv__fut_set_token(kv_fut *f, uint64_t token);
void kv__fut_set_bytes(kv_fut *f, void *bytes, size_t len);
void kv__fut_set_iter(kv_fut *f, kv_iter *it); /* freed with f unless taken */
/* Take a kv_fut_complete_obj object out of f (NULL if none). */
void *kv__fut_take_obj(kv_fut *f);
/* Take records out of f (caller owns them afterwards). */
kv_record *kv__fut_take_records(kv_fut *f, size_t *n);

/* Records: free the key and val of n records (val via codec if typed)
 * and then the array itself (fut.c's behaviour: never pass an element). */
void kv__records_free(kv_record *recs, size_t n, const kv_codec *codec);

/*
 * Run the loop's queue of futures whose callbacks are due (those queued when
 * the call starts; callbacks that make more futures ready run next turn).
 * Returns true if any callback ran.  loop.c calls.
 */
bool kv__fut_run_ready(kv_loop *loop);

/*
 * Loop hooks fut.c uses (loop.c implements): the loop's FIFO of futures
 * whose callbacks are due.  The FIFO is intrusive: it links futures through
 * the field kv__fut_ready_link returns (fut.c).  The queue's reference is
 * taken and dropped by fut.c.
 */
void kv__loop_ready_push(kv_loop *loop, kv_fut *f);
kv_fut *kv__loop_ready_pop(kv_loop *loop); /* NULL when empty */
size_t kv__loop_ready_len(const kv_loop *loop);
kv_fut **kv__fut_ready_link(kv_fut *f);

/* ------------------------------------------------------------------------ */
/* key.c: the storage encoding of keys, shared by backends.                  */
/* ------------------------------------------------------------------------ */

/*
 * Encode key as the bytes of each namespace id followed by 0x00.  memcmp
 * order of encodings (shorter first on a common prefix) equals kv_key_cmp
 * order, and every key below k has k's encoding as a prefix.  Appends to
 * out.  KV_OK or KV_ENOMEM.
 */
int kv__key_encode(const kv_key *key, kv_buf *out);
/* Decode what kv__key_encode made.  KV_ECORRUPT on malformed bytes. */
int kv__key_decode(kv_key **out, const void *bytes, size_t len);

/* ------------------------------------------------------------------------ */
/* store.c: the generic layer and the backend contract                      */
/* ------------------------------------------------------------------------ */

typedef enum kv__opcode {
    KV__OP_HAS = 1,       /* items: key -> status OK / ENOTFOUND, token     */
    KV__OP_GET,           /* items: key -> status, val/len (if want_value), token */
    KV__OP_PUT,           /* items: key,val,len,token -> status OK/ECONFLICT, token */
    KV__OP_DELETE,        /* items: key,token -> status OK/ECONFLICT (token 0 never matches) */
    KV__OP_PUT_ATOMIC,    /* as PUT; on any conflict nothing is written      */
    KV__OP_DELETE_ATOMIC, /* as DELETE; on any conflict nothing is written   */
    KV__OP_MOVE,          /* items: key -> key2; req status ECONFLICT on collision */
    KV__OP_DROP,          /* items: key; deletes key and all below it        */
    KV__OP_QUERY_OPEN,    /* iter: open a cursor for iter->q                 */
    KV__OP_ITER_FETCH,    /* iter: fill items (status OK) with the next rows; eof */
    KV__OP_ITER_DISPOSE,  /* iter: release the cursor                        */
    KV__OP_CLOSE          /* the request given to ops->close                 */
} kv__opcode;

typedef struct kv__item {
    kv_key *key;   /* owned by the item */
    kv_key *key2;  /* MOVE destination, else NULL */
    void *val;     /* PUT input / GET and FETCH output (kv__malloc'd); owned */
    size_t len;
    uint64_t token; /* input CAS token; output stored/new token */
    int status;     /* output: KV_OK, KV_ECONFLICT or KV_ENOTFOUND */
} kv__item;

/* Allocate n zeroed items; free n items with their keys and values. */
kv__item *kv__items_new(size_t n);
void kv__items_free(kv__item *items, size_t n);

typedef struct kv__req kv__req;
struct kv__req {
    kv__opcode op;
    kv_store *store;
    kv__item *items;   /* inputs and outputs; FETCH: the backend allocates */
    size_t n;
    bool want_value;   /* GET/FETCH: false -> do not read values */
    bool eof;          /* FETCH output: no rows after these */
    bool canceled;     /* set by the store layer when the future was cancelled */
    kv_iter *iter;     /* QUERY_OPEN, ITER_FETCH, ITER_DISPOSE */
    void *bpriv;       /* free for the backend */
    /* store.c private below */
    kv_fut *fut;
    kv__req *prev, *next;
    int kind;
    kv_codec codec;
    bool typed;
    bool linked;       /* in the store's in-flight list */
    /* completion hook for iterator and close requests (NULL: generic) */
    void (*done)(kv__req *req, int status, const char *msg);
};

/*
 * The backend contract.  Every callback runs on the loop thread.  submit
 * starts req and must call kv__req_done exactly once for it, never inside
 * submit itself (complete from a CQE or pool done callback).  cancel (may be
 * NULL) is a best-effort hint that req's future was cancelled.  close stops
 * new work, completes every outstanding req (KV_ECANCELED is fine),
 * releases cursors, descriptors and locks, then calls kv__req_done(req).
 * destroy frees the backend state after close completed.
 */
#define KV__BACKEND_VERSION 1
struct kv_backend_ops {
    int version;
    const char *name;
    bool atomic_batch;
    void (*submit)(kv_store *s, kv__req *req);
    void (*cancel)(kv_store *s, kv__req *req);
    void (*close)(kv_store *s, kv__req *req);
    void (*destroy)(kv_store *s);
};

/*
 * Backend completion: status KV_OK (see items) or a negative code for the
 * whole request, with an optional printf message.  Loop thread.
 */
void kv__req_done(kv__req *req, int status, const char *fmt, ...)
    KV__PRINTF(3, 4);

/* The store handle.  Backends read the public part. */
struct kv_store {
    const struct kv_backend_ops *ops;
    void *backend;       /* the backend's state */
    kv_loop *loop;
    kv_pool *pool;
    unsigned flags;      /* KV_READONLY, ... */
    /* store.c private below */
    int state;
    kv__req *inflight;   /* doubly linked via req->prev/next */
    size_t ninflight;
    kv_iter *iters;      /* live iterators */
    kv_fut *close_fut;
    kv__req *close_req;  /* allocated up front: close never fails on OOM */
};

/* Make a store over a backend (called by kv_sqlite_open / kv_fs_open). */
int kv__store_new(kv_store **out, const struct kv_backend_ops *ops,
                  void *backend, kv_loop *loop, kv_pool *pool, unsigned flags);

/* The iterator.  Backends read q and use bpriv; the rest is store.c's. */
struct kv_iter {
    kv_store *store;
    kv_query q;          /* q.key is an owned copy */
    void *bpriv;         /* backend cursor */
    /* store.c private below */
    kv_iter *prev, *next;
    int state;
    kv_codec codec;
    bool typed;
    kv__item *buf;       /* fetched, not yet returned */
    size_t nbuf, pos;
    bool eof;
    bool fetching;
    struct kv__waiter *waiters, *waiters_tail;
    kv_loop *loop;       /* survives kv_store_free */
    bool finished;       /* a next returned the end */
    bool freed;          /* kv_iter_free called: free when idle */
    bool disposing;      /* ITER_DISPOSE in flight */
    kv_fut *dispose_fut; /* internal; user dispose futures relay it */
    kv__req *dispose_req; /* allocated at open: dispose never fails on OOM */
};

/*
 * Store-layer internals shared by store.c, iter.c and helpers.c (backends
 * need none of these).
 */
/* A request with op set and no items; NULL on OOM. */
kv__req *kv__req_new(kv_store *s, kv__opcode op);
/* Link req in the in-flight list and call ops->submit. */
void kv__req_submit(kv__req *req);
/*
 * Give req a new future (the caller's reference plus one the request holds
 * until kv__req_free), make kv_fut_cancel on it reach ops->cancel, and submit
 * it.  Returns the future (a failed one on OOM, req freed).
 */
kv_fut *kv__req_start(kv__req *req);
/* NULL if s is open (and writable if write), else a failed future. */
kv_fut *kv__store_check(kv_store *s, bool write);
/*
 * Check the arguments of a write of n records (closed/read-only state first,
 * then atomic support, the array, the codec's encode when values are
 * written, each key and raw value): NULL when they are fine, else a failed
 * future.  Duplicates are not checked here.  Used by store.c and helpers.c.
 */
kv_fut *kv__check_records(kv_store *s, const kv_record *recs, size_t n,
                          const kv_codec *codec, bool values, bool atomic,
                          bool single);
/* Free req's items, drop its future reference, free it. */
void kv__req_free(kv__req *req);
/* iter.c: on close, mark every iterator closed; on free, detach them. */
void kv__iters_store_closing(kv_store *s);
void kv__iters_store_freed(kv_store *s);
/*
 * Move an item's key, value and token into a record, decoding the value
 * through codec (NULL: raw bytes).  value false: no value (val NULL).  On a
 * decode error returns the codec's code, out is zeroed and the item keeps
 * what it had.
 */
int kv__item_to_record(kv__item *item, kv_record *out, const kv_codec *codec,
                       bool value);
/* record.c: free one record's key and value (via codec if typed; the
 * record itself is not freed) and zero it. */
void kv__record_clear(kv_record *r, const kv_codec *codec);
/* A future completed with status now (KV_OK: empty result). */
kv_fut *kv__fut_done_now(kv_loop *loop, int status);
/* Complete relay with src's status and message once src is done, holding
 * a reference to relay meanwhile.  KV_OK or KV_ENOMEM. */
int kv__fut_relay(kv_fut *src, kv_fut *relay);

/* A set of borrowed keys (open addressing on kv_key_hash). */
typedef struct kv__keyset {
    const kv_key **slots;
    size_t cap; /* a power of two, 0 if empty */
} kv__keyset;
/* Room for n keys.  KV_OK or KV_ENOMEM. */
int kv__keyset_init(kv__keyset *ks, size_t n);
/* Add key: true if it was new, false if already present. */
bool kv__keyset_add(kv__keyset *ks, const kv_key *key);
bool kv__keyset_has(const kv__keyset *ks, const kv_key *key);
void kv__keyset_free(kv__keyset *ks);

/* Backends */
extern const struct kv_backend_ops kv__sqlite_ops;
extern const struct kv_backend_ops kv__fs_ops;

/*
 * sqlite.c test hook: counters of a SQLite store since it opened (loop
 * thread).  KV_EINVAL if s is not a SQLite store.
 */
struct kv__sqlite_stats {
    uint64_t groups;      /* writer jobs that ran writes (group commits)   */
    uint64_t write_reqs;  /* write requests those jobs ran                 */
    uint64_t max_group;   /* most write requests in one job                */
    uint64_t commits;     /* transactions committed                        */
    uint64_t read_jobs;   /* reader jobs (file stores)                     */
    uint64_t fetches;     /* ITER_FETCH requests run on a connection       */
    uint64_t connections; /* connections made                              */
};
int kv__sqlite_stats(const kv_store *s, struct kv__sqlite_stats *out);
/*
 * sqlite_vfs.c: a VFS over SQLite's default one that gathers a WAL file's
 * frame writes into one write per commit, for connections that run
 * synchronous=FULL only (see the file's comment).  kv__sqlite_vfs_walbuf
 * registers it on first use and returns its name, or NULL if it could not
 * (then open with the default VFS).  Test hooks: the writes SQLite made to
 * wrapped WAL files and the writes they became, process-wide; and a
 * failure (an SQLite result code) of the nth flush from now (0: none).
 */
#define KV__SQLITE_VFS_WALBUF "kvstore-walbuf"
const char *kv__sqlite_vfs_walbuf(void);
void kv__sqlite_walbuf_counts(unsigned long *writes, unsigned long *flushes);
void kv__sqlite_walbuf_fail(long nth, int sqlite_rc);
/*
 * sqlite.c test hook (loop thread): the writer's next job starts by running
 * PRAGMA max_page_count = pages on the writer connection (pages <= 0: a
 * large limit again), so a test can fill the database (SQLITE_FULL).  SQLite
 * never lowers the limit below the current size.  KV_EINVAL if s is not a
 * writable SQLite store.
 */
int kv__sqlite_set_max_pages(kv_store *s, int64_t pages);

/*
 * fs.c test hooks: the decoders of bytes read from disk, for the fuzz
 * targets (any thread).  kv__fs_record_make appends a record file's bytes
 * (header and value) to out.  kv__fs_record_check checks buf[0..len) as a
 * whole record file, as a get does: KV_OK with the token and where the
 * value lies, or KV_ECORRUPT.  kv__fs_name_decode turns an escaped path
 * piece back into a namespace id (a heap string): KV_OK, KV_EINVAL (not the
 * canonical escape of a valid id) or KV_ENOMEM; kv__fs_name_encode appends
 * the escape of id[0..len) to out.
 */
int kv__fs_record_make(uint64_t token, const void *val, size_t len,
                       kv_buf *out);
int kv__fs_record_check(const void *buf, size_t len, uint64_t *token,
                        size_t *voff, size_t *vlen);
int kv__fs_name_decode(const char *name, size_t len, char **id);
int kv__fs_name_encode(const char *id, size_t len, kv_buf *out);

#endif /* KV_INTERNAL_H */
