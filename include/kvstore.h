/*
 * kvstore.h - the whole public API of kvstore.
 *
 * kvstore is a C11 key-value storage library for Linux: one API over several
 * backends (SQLite in memory or in a file, a directory of files), optimistic
 * concurrency through per-record version tokens, and asynchronous I/O driven
 * by one io_uring completion loop.
 *
 * Conventions that hold for every function below unless its comment says
 * otherwise:
 *
 *  - Errors.  A fallible function returns int: KV_OK (0) or a negative KV_E*
 *    code.  Futures carry the same codes.  Codes are in a reserved range
 *    (-30899..-30800) so they never collide with negated errno values, which
 *    kv_strerror() also understands.
 *
 *  - Threads.  Store and iterator calls may be made from any thread; loops
 *    and futures belong to one thread each.  The rules are in one place, the
 *    "Threads" section below.
 *
 *  - Ownership.  Input pointers are borrowed: the library copies what it
 *    needs before the call returns.  Objects made through an out-parameter
 *    belong to the caller, who frees them with the matching *_free call.
 *    Results held by a future belong to the future and die with kv_fut_free.
 *
 *  - Futures.  Every asynchronous operation returns a kv_fut *, never NULL:
 *    argument errors fail the future (except on out-of-memory, when a shared,
 *    static failed future may be returned; kv_fut_free accepts it).
 */
#ifndef KVSTORE_H
#define KVSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KV_BUILDING) && defined(__GNUC__)
#define KV_EXTERN __attribute__((visibility("default")))
#else
#define KV_EXTERN
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define KV_VERSION_MAJOR 0
#define KV_VERSION_MINOR 1
#define KV_VERSION_PATCH 0
#define KV_VERSION_STRING "0.1.0"
/* (major << 16) | (minor << 8) | patch, for compile-time comparisons. */
#define KV_VERSION_HEX \
    ((KV_VERSION_MAJOR << 16) | (KV_VERSION_MINOR << 8) | KV_VERSION_PATCH)

/* The version of the library linked at run time, as KV_VERSION_HEX. */
KV_EXTERN unsigned kv_version(void);
/* The same as a static string, e.g. "0.1.0". */
KV_EXTERN const char *kv_version_string(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * XX(name, value, message).  KV_ENOTFOUND and KV_ECORRUPT are kinds of
 * KV_EBACKEND; every code is a kind of KV_ERROR (see kv_err_is).
 */
#define KV_ERRNO_MAP(XX)                                                       \
    XX(ERROR, -30800, "kvstore error")                                         \
    XX(ECONFLICT, -30801, "version token conflict")                           \
    XX(EDUPLICATE, -30802, "batch names the same key twice")                   \
    XX(EMAXRETRIES, -30803, "retries exhausted")                               \
    XX(EBACKEND, -30804, "backend failure")                                    \
    XX(ENOTFOUND, -30805, "key not found")                                     \
    XX(ECORRUPT, -30806, "stored data is corrupt")                             \
    XX(EINVAL, -30807, "invalid argument")                                     \
    XX(ECLOSED, -30808, "store is closed")                                     \
    XX(ECANCELED, -30809, "operation canceled")                                \
    XX(ENOTSUP, -30810, "operation not supported by this backend")            \
    XX(EITER, -30811, "iterator is finished or disposed")                      \
    XX(EREADONLY, -30812, "store is read-only")                                \
    XX(EBUSY, -30813, "resource busy")                                         \
    XX(ENOMEM, -30814, "out of memory")

typedef enum kv_errno {
    KV_OK = 0,
#define KV__XX(name, val, msg) KV_##name = (val),
    KV_ERRNO_MAP(KV__XX)
#undef KV__XX
} kv_errno;

/*
 * A static, human-readable message for code.  Library codes have their own
 * message; a negated errno value (e.g. -ENOENT) gives strerror's text;
 * anything else gives "unknown error".  Never NULL.  Thread-safe.
 */
KV_EXTERN const char *kv_strerror(int code);

/* The code's name, e.g. "KV_ECONFLICT" or "ENOENT"; "UNKNOWN" if unknown. */
KV_EXTERN const char *kv_err_name(int code);

/*
 * True if code is kind or a kind of it: kv_err_is(KV_ENOTFOUND, KV_EBACKEND)
 * and kv_err_is(x, KV_ERROR) for every negative x are true.  KV_OK is a kind
 * of nothing.
 */
KV_EXTERN bool kv_err_is(int code, int kind);

/*
 * The detailed message of the last failed synchronous call on this thread
 * (kv_loop_new, kv_pool_new, kv_sqlite_open, kv_fs_open, kv_redis_open,
 * key parsing, kv_wait, kv_loop_run), e.g. "io_uring_setup: Operation not permitted (blocked by
 * seccomp or the kernel.io_uring_disabled sysctl?)".  Thread-local; valid
 * until the next failing call on this thread; "" when there is none.
 */
KV_EXTERN const char *kv_last_errmsg(void);

/* ------------------------------------------------------------------------ */
/* Opaque handles and plain types                                           */
/* ------------------------------------------------------------------------ */

typedef struct kv_loop kv_loop;   /* one io_uring and its completion loop */
typedef struct kv_pool kv_pool;   /* worker threads for blocking work     */
typedef struct kv_fut kv_fut;     /* the result of an asynchronous call   */
typedef struct kv_key kv_key;     /* an immutable hierarchical key        */
typedef struct kv_store kv_store; /* an open store over one backend       */
typedef struct kv_iter kv_iter;   /* a query iterator (must be disposed)  */
typedef struct kv_record kv_record; /* a key, a value and a token (below) */

/* ------------------------------------------------------------------------ */
/* Loop                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct kv_loop_opts {
    /* Submission queue entries (rounded up to a power of two).  0: 256. */
    unsigned sq_entries;
    /* Completion queue entries, at least 2 x sq_entries.  0: 8 x sq. */
    unsigned cq_entries;
    /*
     * io_uring's worker limits (bounded: file I/O, unbounded: sockets).
     * Measured here, the kernel default (4 per CPU) halves durable-write
     * throughput.  0: 64 bounded, kernel default unbounded.
     */
    unsigned iowq_bounded;
    unsigned iowq_unbounded;
    /* KV_LOOP_* flags. */
    unsigned flags;
} kv_loop_opts;

/* Do not ask for IORING_SETUP_SINGLE_ISSUER / DEFER_TASKRUN. */
#define KV_LOOP_NO_DEFER_TASKRUN 0x1u
/*
 * Run in fallback mode even if io_uring is available (as the environment
 * variable KV_IO_URING=0 does, read by kv_loop_new).  Fallback mode is
 * otherwise chosen by itself when io_uring cannot be set up (seccomp, e.g.
 * Docker's default profile; the kernel.io_uring_disabled sysctl; an old
 * kernel): the loop then runs the same operations as blocking system calls
 * on a few private worker threads, and waits with poll(2) on its eventfd,
 * its timers and its sockets.  Every backend works unchanged, slower.
 */
#define KV_LOOP_FORCE_FALLBACK 0x2u

typedef enum kv_run_mode {
    KV_RUN_DEFAULT = 0, /* run until nothing is pending                     */
    KV_RUN_ONCE = 1,    /* wait for at least one event, process, return     */
    KV_RUN_NOWAIT = 2,  /* process what is ready without waiting, return    */
    KV_RUN_WAIT = 3     /* as ONCE, but also wait when nothing is pending   */
} kv_run_mode;

/*
 * Create a loop on the calling thread, which becomes its loop thread.
 * opts may be NULL for the defaults.  When io_uring is unavailable the loop
 * starts in fallback mode (see KV_LOOP_FORCE_FALLBACK; kv_loop_backend
 * tells), and kv_last_errmsg then names why io_uring could not be used
 * (seccomp, the kernel.io_uring_disabled sysctl, an old kernel).
 * Errors: KV_EINVAL (bad opts), KV_ENOMEM, KV_ENOTSUP only if even the
 * fallback cannot start, KV_ERROR otherwise.
 */
KV_EXTERN int kv_loop_new(kv_loop **out, const kv_loop_opts *opts);

/*
 * The mode loop runs in: "io_uring", or "fallback" (blocking system calls
 * on worker threads; see KV_LOOP_FORCE_FALLBACK).  NULL if loop is NULL.
 * A static string.
 */
KV_EXTERN const char *kv_loop_backend(const kv_loop *loop);

/*
 * Run the loop: reap completions, complete futures and run their callbacks.
 * Returns a positive value if work is still pending, 0 if not, or a negative
 * code on a fatal ring error.  KV_RUN_DEFAULT also returns (positive) when
 * what is pending can no longer progress on its own.  KV_RUN_ONCE and
 * KV_RUN_DEFAULT return at once (0) on a loop with nothing pending.
 * KV_RUN_WAIT is for a thread that only serves the loop (say, the thread of
 * a store other threads call): it waits for at least one event even when
 * nothing is pending, so a call forwarded from another thread or a
 * kv_loop_wake ends the wait:
 *
 *     while (!atomic_load(&stop))           // set stop, then kv_loop_wake
 *         if (kv_loop_run(loop, KV_RUN_WAIT) < 0) break;
 *
 * Must not be called from inside a callback nor off the loop thread
 * (KV_EINVAL); an unknown mode is KV_EINVAL.
 */
KV_EXTERN int kv_loop_run(kv_loop *loop, kv_run_mode mode);

/* True if any operation, timer or callback is pending on the loop. */
KV_EXTERN bool kv_loop_alive(const kv_loop *loop);

/*
 * Free the loop.  Fails KV_EBUSY (and frees nothing) while operations are
 * still pending, inside kv_loop_run, or while a store opened on the loop is
 * not yet freed (kv_close, then kv_store_free; kv_last_errmsg says how many
 * are open): close stores and run the loop first.  Futures may outlive the
 * loop once they are done.  NULL is a no-op (KV_OK).  Loop thread.
 */
KV_EXTERN int kv_loop_free(kv_loop *loop);

/*
 * Driving the loop from the application's own event loop (epoll, poll,
 * libuv, another io_uring...), instead of blocking in kv_loop_run:
 *
 *     int fd = kv_loop_fd(loop);          // register it for reading once
 *     while (!done) {
 *         int ms = kv_loop_timeout(loop); // just before every wait
 *         ... wait for fd readable (or your own events) at most ms ...
 *         if (kv_loop_run(loop, KV_RUN_NOWAIT) < 0) ...;  // never blocks
 *         ... your other events; check your own state (see kv_loop_wake)
 *     }
 *
 * kv_loop_run(loop, KV_RUN_NOWAIT) dispatches what is ready and returns
 * without blocking, every operation it (or a callback) started submitted.
 * The fd is level-triggered in effect: after any kv_loop_run it stays
 * readable while that run left work ready, and it becomes readable when
 * something completes (ring completions, pool jobs, the fallback mode's
 * sockets) or kv_loop_wake is called.  It may now and then be readable with
 * nothing to do (a run then returns at once): do not count on the opposite.
 * Work that only a timeout reveals (a fallback-mode timer; calls made
 * outside kv_loop_run that left operations unsubmitted or callbacks due)
 * is in kv_loop_timeout, which is why it must be asked again before every
 * wait.  Store calls may be made from the host's own callbacks between
 * runs (still on the loop thread).  Blocking calls (kv_wait, kv_loop_run
 * with KV_RUN_ONCE or KV_RUN_DEFAULT) remain allowed and stall the host's
 * loop while they wait.
 */

/*
 * The descriptor that polls readable when kv_loop_run(loop, KV_RUN_NOWAIT)
 * has work (above).  Any thread.  Register it for reading only (epoll,
 * poll, select, an io_uring poll request; never read, write or close it);
 * it is the same descriptor for the loop's whole life and kv_loop_free
 * closes it.  In io_uring mode it is an eventfd the ring signals, in
 * fallback mode an epoll descriptor (its readiness is what counts).  The
 * first call of kv_loop_fd or kv_loop_timeout makes the loop host-driven:
 * from then on each kv_loop_run ends by re-arming the descriptor (a few
 * system calls per run; loops never host-driven do not pay them).
 * KV_EINVAL if loop is NULL.
 */
KV_EXTERN int kv_loop_fd(const kv_loop *loop);

/*
 * How long, in milliseconds, the host may wait for kv_loop_fd before it
 * must call kv_loop_run(loop, KV_RUN_NOWAIT) anyway: 0 if work is ready
 * now (callbacks due, operations prepared but not submitted, the first
 * call, before a run armed the descriptor), the time to the next timer in
 * fallback mode, else -1 (no limit: wait for the descriptor).  Loop thread
 * (it reads the loop's state); not from another thread while the loop
 * runs.  KV_EINVAL if loop is NULL.
 */
KV_EXTERN int kv_loop_timeout(const kv_loop *loop);

/*
 * Wake the loop, from any thread (like libuv's uv_async_send): kv_loop_fd
 * becomes readable, and a kv_loop_run or kv_wait blocked on the loop
 * thread returns from its wait (KV_RUN_ONCE and KV_RUN_WAIT return;
 * KV_RUN_DEFAULT and kv_wait go on until their own end).  Wakes coalesce: several calls
 * before the loop runs make one wake-up.  A wake is answered by the first
 * turn of a run that starts after it, so a service that sets a flag of its
 * own and then calls kv_loop_wake (say, to stop) finds the flag after that
 * run.  Safe on a loop being run, not on one being freed.  KV_OK, or
 * KV_EINVAL if loop is NULL.
 */
KV_EXTERN int kv_loop_wake(kv_loop *loop);

/*
 * Operations in flight on every store opened on loop: the sum of their
 * kv_store_inflight.  Any thread (a snapshot).  0 for NULL.
 */
KV_EXTERN size_t kv_loop_inflight(const kv_loop *loop);

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

/*
 * The threading rules, all in one place.
 *
 *  - A kv_loop belongs to the thread that created it (its "loop thread"):
 *    kv_loop_run, kv_loop_free, kv_sleep, kv_pool_work and kv_fut_new on a
 *    loop are called there.  A future belongs to the loop it completes on:
 *    every kv_fut_* call on it is made on that loop's thread, and its
 *    callbacks run there, inside kv_loop_run or kv_wait.
 *
 *  - Store and iterator calls (record operations, batches, kv_query_open,
 *    kv_iter_*, the helpers, kv_close, kv_store_free) may be made from any
 *    thread.  On the store's own loop thread the call is made at once.  On
 *    any other thread the arguments are checked and copied (and values
 *    encoded through the codec) on the calling thread, then the request is
 *    handed to the store's loop (a lock-free list and an eventfd wake; no
 *    lock is held across I/O) and made there at its next turn.  The future
 *    returned belongs to the calling thread: it completes on the calling
 *    thread's loop (see kv_thread_loop), where its callbacks run.  The
 *    store's loop thread must keep running its loop (kv_loop_run or
 *    kv_wait) for forwarded calls to progress.  Calls made inside a
 *    callback (while the calling thread's loop runs) leave together when
 *    that turn of its loop ends, in one hand-off per store's loop; a
 *    callback must therefore not block waiting for such a call to be
 *    made.  The outcomes one turn of the store's loop finishes come back
 *    to each calling thread's loop together too.
 *
 *  - One exception: point reads (kv_get, kv_get_many, kv_has, kv_has_many
 *    and their typed forms) on a SQLite file store are not forwarded.  The
 *    calling thread queues them for the store's kv_pool, whose workers
 *    read in batches on connections of their own and hand each result
 *    straight to the calling thread's loop; the store's loop takes no part
 *    (two hand-offs fewer, and they progress while it is busy or not
 *    running).  Only kv_close involves it: reads still queued then fail
 *    KV_ECANCELED, later ones KV_ECLOSED, and the close completes once
 *    every such read has come back to its thread.
 *
 *  - A thread with no loop of its own gets a private one on its first
 *    forwarded call (kv_thread_loop); kv_wait on the future runs it, so on
 *    such a thread then-callbacks, middleware and producers run inside
 *    kv_wait (or kv_loop_run(kv_thread_loop(), ...)) on that thread.  The
 *    private loop is freed when the thread exits (after any forwarded call
 *    still in flight has come back).
 *
 *  - Where user code runs for a forwarded call: a codec's encode on the
 *    calling thread (the call encodes before it returns); a codec's decode
 *    of a typed read on the store's loop thread (the decoded objects then
 *    travel to the caller, and free_obj runs where the result is freed),
 *    except for the point reads above, decoded on the calling thread;
 *    the helpers' middleware and producers on the calling thread (each
 *    operation a helper makes is forwarded on its own).  So a codec used
 *    from several threads must be thread-safe.
 *
 *  - kv_fut_cancel on a forwarded call's future completes it KV_ECANCELED
 *    at once; the call is not started if the store's loop has not taken it
 *    yet, else it runs to completion and its result is discarded.  A point
 *    read queued for the pool as above still runs (it is short); its
 *    result is discarded.
 *
 *  - Ordering: calls made from one thread to one store are started in the
 *    order they were made, except that a point read queued for the pool as
 *    above may start before an earlier call still on its way to the
 *    store's loop.  Calls from different threads are not ordered.  As on
 *    the loop thread, a read sees every write whose future completed
 *    before the read was made.
 *
 *  - Iterators are served on the store's loop thread; a kv_iter may be
 *    used from any thread (each call is forwarded), but not concurrently
 *    with its own kv_iter_free.
 *
 *  - Key, namespace, record and error functions are pure and may be called
 *    on any thread; kv_last_errmsg is per thread.  Several loops on several
 *    threads may share one kv_pool.
 */

/*
 * The calling thread's loop: the first loop it created (and has not freed),
 * or else its private loop, created on the first call (a small ring; freed
 * at thread exit, or by kv_loop_free, after which a later call makes a new
 * one).  Futures of store calls made on this thread complete there; a
 * producer or middleware running on a loopless thread makes its kv_fut_new
 * futures on it.  NULL if no loop can be made (kv_last_errmsg says why).
 */
KV_EXTERN kv_loop *kv_thread_loop(void);

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Start a pool of nthreads worker threads (0: the number of online CPUs,
 * at most 1024).  Errors: KV_EINVAL, KV_ENOMEM, KV_ERROR (thread creation).
 */
KV_EXTERN int kv_pool_new(kv_pool **out, unsigned nthreads);

/* The number of worker threads. */
KV_EXTERN unsigned kv_pool_size(const kv_pool *pool);

/*
 * Shut the pool down: jobs already running finish, jobs still queued are
 * cancelled (their futures complete KV_ECANCELED on their loops' next run),
 * then the workers are joined.  Every loop that submitted work must still
 * exist.  NULL is a no-op.
 */
KV_EXTERN void kv_pool_free(kv_pool *pool);

/*
 * Run work(arg) on a worker of pool; the future completes on loop with the
 * value work returned (KV_OK or a negative code; a positive value counts as
 * KV_OK).  work must not touch loop state.  kv_fut_cancel on a job that has
 * not started yet removes it (the future completes KV_ECANCELED and work
 * never runs); a running job is not interrupted.  Loop thread only.
 */
KV_EXTERN kv_fut *kv_pool_work(kv_loop *loop, kv_pool *pool,
                               int (*work)(void *arg), void *arg);

/* ------------------------------------------------------------------------ */
/* Futures                                                                  */
/* ------------------------------------------------------------------------ */

typedef void (*kv_fut_cb)(kv_fut *fut, void *arg);

/*
 * Run fut's loop until fut is done, then return its status.  Callbacks of
 * other futures run meanwhile.  If nothing pending on the loop could ever
 * complete fut, returns KV_EINVAL instead of blocking forever (fut stays
 * pending).  Must not be called from inside a callback, nor off fut's loop
 * thread: a pending fut then gives KV_EINVAL at once (a done one its
 * status).  Each KV_EINVAL of its own says why in kv_last_errmsg.
 */
KV_EXTERN int kv_wait(kv_fut *fut);

/*
 * Register cb(fut, arg) to run on the loop thread once fut is done.  A
 * callback never runs inside the call that registered it, even when fut is
 * already done; several callbacks run in the order they were added.
 * Returns KV_OK, KV_ENOMEM, or KV_EINVAL (NULL fut or cb).
 */
KV_EXTERN int kv_fut_then(kv_fut *fut, kv_fut_cb cb, void *arg);

/* True once fut has completed (successfully, failed or cancelled). */
KV_EXTERN bool kv_fut_done(const kv_fut *fut);

/* KV_OK or a negative code once done; KV_EBUSY while pending. */
KV_EXTERN int kv_fut_status(const kv_fut *fut);

/*
 * The specific message of a failed future (SQLite's or errno's text, the
 * offending key); falls back to kv_strerror(status).  "" while pending or
 * on success.  Valid while fut lives.
 */
KV_EXTERN const char *kv_fut_errmsg(const kv_fut *fut);

/* The loop fut completes on. */
KV_EXTERN kv_loop *kv_fut_loop(const kv_fut *fut);

/*
 * Cancel fut: if pending, it completes KV_ECANCELED now (its callbacks run
 * on the loop's next turn) and the underlying work is stopped where that is
 * still possible; a write may or may not have happened, never half.  No-op
 * on a done future.
 */
KV_EXTERN void kv_fut_cancel(kv_fut *fut);

/*
 * Release the caller's reference.  Results held by the future are freed
 * with it.  Freeing a pending future is safe: the work goes on, and its
 * completion no longer reaches the caller (registered callbacks still run).
 * NULL is a no-op.
 */
KV_EXTERN void kv_fut_free(kv_fut *fut);

/* A future that completes KV_OK after ms milliseconds (IORING_OP_TIMEOUT). */
KV_EXTERN kv_fut *kv_sleep(kv_loop *loop, uint64_t ms);

/*
 * A future that the caller completes with one of the kv_fut_complete* or
 * kv_fut_fail calls (for middleware and producers).  Only the first
 * completion counts; later ones are ignored.  Returns NULL on out-of-memory.
 * A future returned to the library from a middleware or producer belongs to
 * the library from then on: complete it, but do not free it.
 */
KV_EXTERN kv_fut *kv_fut_new(kv_loop *loop);
KV_EXTERN void kv_fut_complete(kv_fut *fut);
/* Completes with copies of records (raw bytes; val/len copied). */
KV_EXTERN void kv_fut_complete_records(kv_fut *fut, const kv_record *recs,
                                       size_t n);
/* Completes with a copy of len bytes. */
KV_EXTERN void kv_fut_complete_bytes(kv_fut *fut, const void *bytes, size_t len);
/*
 * Completes with a typed object, freed later by the consuming codec (the
 * future never frees it; if fut was already done, obj stays the caller's).
 */
KV_EXTERN void kv_fut_complete_obj(kv_fut *fut, void *obj);
/* Fails with code (negative; 0 or positive gives KV_ERROR) and an optional
 * message (copied). */
KV_EXTERN void kv_fut_fail(kv_fut *fut, int code, const char *msg);

/* ------------------------------------------------------------------------ */
/* Keys                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * A namespace: one segment of a key, "field:value" or "value".  Both strings
 * are heap strings owned by the struct (field is "" when absent), released
 * by kv_ns_free.  Neither may contain ':' or '/'; surrounding whitespace
 * (" \t\n\v\f\r", whatever the locale) is stripped.  Every other byte,
 * control bytes and bytes >= 0x80 included, is allowed (backends escape
 * what their storage cannot hold).  Either part may be empty: ":v" is value
 * "v" with no field; "f:" is field "f" with an empty value (id "f:"); "",
 * ":" and whitespace are the empty namespace (field and value "", id ""),
 * which adds nothing to a key (see Keys).
 */
typedef struct kv_ns {
    char *field;
    char *value;
} kv_ns;

/*
 * Parse "field:value" or "value".  KV_EINVAL on a bad id (a '/', more than
 * one ':'; kv_last_errmsg says why), KV_ENOMEM; *out is untouched on error
 * (also for kv_ns_init).
 */
KV_EXTERN int kv_ns_parse(kv_ns *out, const char *id);
/* From separate parts; field may be NULL or "", value may be "" (NULL is
 * KV_EINVAL): kv_ns_init(&ns, "a", "") is "a:".  KV_EINVAL, KV_ENOMEM. */
KV_EXTERN int kv_ns_init(kv_ns *out, const char *field, const char *value);
/* Release out's strings and zero it.  NULL-safe. */
KV_EXTERN void kv_ns_free(kv_ns *ns);
/*
 * "field:value" or "value" as a new heap string (caller frees); NULL on OOM
 * or NULL ns.
 */
KV_EXTERN char *kv_ns_id(const kv_ns *ns);

/*
 * Keys.  A key is an immutable sequence of namespaces, written
 * "/a:b/c/d:e".  The empty key (no namespaces, id "/") is valid as a query
 * root and as a building block, but not for record operations.
 *
 * Parsing splits on '/', strips whitespace around each segment, drops
 * segments that are empty after stripping, and parses each as a namespace;
 * so "///a///b///" is "/a/b", "a:b/c:" is "/a:b/c:" (c with an empty
 * value).  A key never holds the empty namespace: every constructor drops
 * it (a ":" segment, an empty kv_ns given to kv_key_from_ns or
 * kv_key_child), so each namespace id in a key is non-empty and
 * kv_key_parse(kv_key_id(k)) equals k for every key.  Functions that make a
 * key take kv_key **out first and return
 * KV_OK, KV_EINVAL (invalid input or a NULL argument; parse failures set
 * kv_last_errmsg) or KV_ENOMEM; *out is untouched on error.  Accessors
 * return views valid while the key lives and safe defaults (0, NULL, "",
 * false) for a NULL key.  The namespaces of a key are contiguous
 * (kv_key_ns(k, 0) points to kv_key_len(k) of them) and must not be passed
 * to kv_ns_free.
 */
KV_EXTERN int kv_key_parse(kv_key **out, const char *path);

/*
 * Key limits, the same on every backend, so that a dump of any store loads
 * into any other.  A key given to a record operation (put, get, has,
 * delete) or to kv_move_prefix_atomic and kv_drop_prefix has at most
 * KV_KEY_MAX_DEPTH namespaces, each namespace's id ("field:value" or
 * "value") at most KV_NS_MAX_LEN bytes, and its id (kv_key_id, "/a:b/c")
 * at most KV_KEY_MAX_LEN bytes; beyond any of them the call fails
 * KV_EINVAL before reaching the backend.  Keys themselves (parsing,
 * building, query prefixes) are not limited.  The sizes are those the fs
 * backend holds at a bounded cost: a namespace becomes a file name escaped
 * up to three-fold and cut into 240-byte directory names, so a key at the
 * limits is at most about 13 KiB of path (never used whole: see
 * kvstore-fs(3)).  An fs store may be opened with a smaller depth
 * (kv_fs_open), never a larger one.
 */
#define KV_KEY_MAX_DEPTH 32
#define KV_NS_MAX_LEN 1024
#define KV_KEY_MAX_LEN 4096

/* From n namespaces (validated as kv_ns_init does; empty ones dropped). */
KV_EXTERN int kv_key_from_ns(kv_key **out, const kv_ns *ns, size_t n);
/* The concatenation of n keys. */
KV_EXTERN int kv_key_concat(kv_key **out, const kv_key *const *keys, size_t n);
KV_EXTERN int kv_key_dup(kv_key **out, const kv_key *key);
KV_EXTERN void kv_key_free(kv_key *key); /* NULL-safe */

/* Number of namespaces (0 for the empty key). */
KV_EXTERN size_t kv_key_len(const kv_key *key);
/* The i-th namespace, or NULL if i >= len. */
KV_EXTERN const kv_ns *kv_key_ns(const kv_key *key, size_t i);
/* Value / field of the last namespace; "" for the empty key or no field. */
KV_EXTERN const char *kv_key_value(const kv_key *key);
KV_EXTERN const char *kv_key_field(const kv_key *key);
/* The canonical id, "/a:b/c"; "/" for the empty key. */
KV_EXTERN const char *kv_key_id(const kv_key *key);
/* Namespaces [start, end); KV_EINVAL unless start <= end <= len. */
KV_EXTERN int kv_key_slice(kv_key **out, const kv_key *key, size_t start,
                           size_t end);

/* True if the key has exactly one namespace. */
KV_EXTERN bool kv_key_is_root(const kv_key *key);
/*
 * The key without its last namespace: "/a/b:c" -> "/a".  KV_EINVAL (with
 * kv_last_errmsg) for a root key ("/a") and for the empty key "/": they
 * have no parent (kv_key_slice(out, key, 0, len - 1) gives "/" for a root
 * key).
 */
KV_EXTERN int kv_key_parent(kv_key **out, const kv_key *key);
/*
 * The parent followed by one namespace with no field whose value is the
 * last namespace's field, or its value when it has no field; for a root
 * key, that namespace alone: "/a:b/c/d:e" -> "/a:b/c/d", "/a:b/c" ->
 * "/a:b/c", "/a:b" -> "/a", "/x" -> "/x", "/a/c:" -> "/a/c".  Same length
 * as key.  KV_EINVAL for "/".
 */
KV_EXTERN int kv_key_path(kv_key **out, const kv_key *key);
/* The namespaces in reverse order. */
KV_EXTERN int kv_key_reverse(kv_key **out, const kv_key *key);
/* key followed by n namespaces. */
KV_EXTERN int kv_key_child(kv_key **out, const kv_key *key, const kv_ns *ns,
                           size_t n);
/* key followed by the namespaces of other. */
KV_EXTERN int kv_key_child_key(kv_key **out, const kv_key *key,
                               const kv_key *other);
/* key followed by the parsed path string ("b/c:d"). */
KV_EXTERN int kv_key_child_str(kv_key **out, const kv_key *key,
                               const char *path);
/* 24 random lowercase hex chars (96 bits, getrandom(2)) and a NUL into out. */
KV_EXTERN void kv_key_random(char out[25]);
/*
 * key relative to ancestor: "/a/b/c" relative to "/a" is "/b/c"; a key
 * relative to itself is "/".  KV_EINVAL if ancestor is neither key nor above
 * it.
 */
KV_EXTERN int kv_key_relative(kv_key **out, const kv_key *key,
                              const kv_key *ancestor);
/* True if other lies strictly below key. */
KV_EXTERN bool kv_key_is_ancestor(const kv_key *key, const kv_key *other);
/* True if key lies strictly below other. */
KV_EXTERN bool kv_key_is_descendant(const kv_key *key, const kv_key *other);
/* NULL equals only NULL and sorts before every key in kv_key_cmp. */
KV_EXTERN bool kv_key_equal(const kv_key *a, const kv_key *b);
/*
 * Namespace-wise order, the order queries return: namespace by namespace,
 * each by the unsigned bytes of its id; a proper prefix sorts first.  So
 * /a/b < /a-b < /ab, and a parent sorts before its children.
 */
KV_EXTERN int kv_key_cmp(const kv_key *a, const kv_key *b);
/* A hash consistent with kv_key_equal. */
KV_EXTERN uint64_t kv_key_hash(const kv_key *key);

/* ------------------------------------------------------------------------ */
/* Records and codecs                                                       */
/* ------------------------------------------------------------------------ */

/*
 * A record.  As an input, key/val/len are borrowed and token is the CAS
 * token (0: insert only if absent; KV_TOKEN_ANY: unconditional).  As a
 * result, everything is owned by the future that holds it.  In a typed call,
 * val is the object (len ignored on input, 0 on output).
 *
 * Tokens.  A token is opaque: every write of a record gives it a new one,
 * never 0 and never KV_TOKEN_ANY (SQLite's are below 2^63, fs's below
 * 2^64 - 1, Redis's below 2^53), so neither can be mistaken for a real one.
 * As a write's input token:
 *  - 0: insert only if the key is absent (KV_ECONFLICT if it exists);
 *  - N: replace or delete only if the current token is N;
 *  - KV_TOKEN_ANY: unconditional, as etcd's put and Redis's SET/DEL: a put
 *    inserts or replaces whatever is there, a delete removes whatever is
 *    there; neither ever conflicts, in single, batch and atomic calls.  On
 *    the fs backend an unconditional put or delete also works on a record
 *    whose file is corrupt (its header or checksum cannot be read), which is
 *    how such a record is removed or replaced.
 * Finding the new tokens, so that the next CAS needs no read: kv_put's
 * kv_fut_token; kv_put_many, kv_put_atomic, kv_try_put and
 * kv_try_put_atomic's kv_fut_tokens (parallel to the input array, 0 for a
 * record not written); kv_get_or_put's record.  Tokens of a typed call are
 * the same.  kv_move_prefix_atomic gives moved records new tokens (read
 * them back).
 */
#define KV_TOKEN_ANY UINT64_MAX

struct kv_record {
    kv_key *key;
    void *val;
    size_t len;
    uint64_t token;
};

/*
 * The largest value a record may hold: 512 MiB (for a typed record, the
 * size of its encoding).  A write of a larger value fails KV_EINVAL before
 * a byte of it is read or copied.  Every backend stores values up to this
 * size: SQLite's default row limit (SQLITE_MAX_LENGTH, 10^9 bytes for key,
 * value and token together) is the tightest, and leaves room for the key.
 */
#define KV_MAX_VALUE_SIZE ((size_t)512 * 1024 * 1024)

/*
 * A growable byte buffer: len bytes of data are in use, cap allocated.
 * Start from {NULL, 0, 0}.  Who frees data: whoever owns the kv_buf.  The
 * buffer the library hands a codec's encode is the library's (encode only
 * appends to it, and never frees or keeps data).  A buffer you fill
 * yourself with kv_buf_append is yours: release it with kv_buf_free (data
 * comes from the library's allocator; do not free(3) it or keep it after
 * kv_buf_free).  Any thread; one buffer is not for two threads at once.
 */
typedef struct kv_buf {
    unsigned char *data;
    size_t len;
    size_t cap;
} kv_buf;

/*
 * Append len bytes, growing data (which may then move: pointers into it
 * are invalidated).  KV_OK, KV_ENOMEM (buf unchanged), or KV_EINVAL (NULL
 * buf, or NULL data with len > 0).
 */
KV_EXTERN int kv_buf_append(kv_buf *buf, const void *data, size_t len);
/* Free buf's data and reset it to {NULL, 0, 0}, ready for reuse.  NULL-safe,
 * and safe on a buffer already freed or never appended to. */
KV_EXTERN void kv_buf_free(kv_buf *buf);

/*
 * Typed records.  encode appends obj's bytes to out; decode makes an object
 * from bytes.  Both return KV_OK or a negative code, which the operation's
 * future then carries (decode should use KV_ECORRUPT for bytes it cannot
 * read).  free_obj releases a decoded object (may be NULL if objects need
 * no freeing).  ctx is passed to each.  The library copies the kv_codec
 * struct, so it need not outlive the call; ctx must outlive the futures.
 */
typedef struct kv_codec {
    int (*encode)(const void *obj, kv_buf *out, void *ctx);
    int (*decode)(const void *bytes, size_t len, void **obj_out, void *ctx);
    void (*free_obj)(void *obj, void *ctx);
    void *ctx;
} kv_codec;

/*
 * A heap copy of a raw record (key, len bytes of val, token), freed with
 * kv_record_free.  NULL on out-of-memory or NULL r.  For a typed result
 * only key and token are copied (val NULL): the object belongs to the future.
 */
KV_EXTERN kv_record *kv_record_dup(const kv_record *r);
KV_EXTERN void kv_record_free(kv_record *r); /* NULL-safe */

/* ------------------------------------------------------------------------ */
/* Future results                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Each returns a view owned by the future, valid until kv_fut_free; each is
 * NULL/0/false when the future is pending or holds no such result.  A failed
 * future holds a result only where its function says so (e.g. the skipped
 * keys of KV_EMAXRETRIES).  An empty list is NULL with *n = 0.
 */
/* get, get_or_put, iter_next (NULL at the end of an iterator). */
KV_EXTERN const kv_record *kv_fut_record(const kv_fut *fut);
/* get_many, iter_fetch_all, kv_fut_complete_records. */
KV_EXTERN const kv_record *kv_fut_records(const kv_fut *fut, size_t *n);
/* Skipped keys of batches, conflicts of atomic batches, has_many hits. */
KV_EXTERN const kv_key *const *kv_fut_keys(const kv_fut *fut, size_t *n);
/* has; kv_delete with KV_TOKEN_ANY (whether a record was removed). */
KV_EXTERN bool kv_fut_bool(const kv_fut *fut);
/* The token a single put wrote. */
KV_EXTERN uint64_t kv_fut_token(const kv_fut *fut);
/*
 * The tokens a put batch wrote (kv_put_many, kv_put_atomic, kv_try_put,
 * kv_try_put_atomic): *n equals the batch's length and tokens[i] is the
 * token recs[i] now has, or 0 if it was not written (skipped, an atomic
 * batch that conflicted, a helper that ended in failure before writing it).
 * NULL with *n 0 for an empty batch, a call that failed (except a helper's
 * KV_EMAXRETRIES), and every other call.  Valid until kv_fut_free.
 */
KV_EXTERN const uint64_t *kv_fut_tokens(const kv_fut *fut, size_t *n);
/* kv_fut_complete_bytes. */
KV_EXTERN const void *kv_fut_bytes(const kv_fut *fut, size_t *len);
/* kv_fut_complete_obj. */
KV_EXTERN void *kv_fut_obj(const kv_fut *fut);
/*
 * kv_query_open: moves the iterator out of the future; the caller must
 * kv_iter_free it.  A second call returns NULL.
 */
KV_EXTERN kv_iter *kv_fut_take_iter(kv_fut *fut);

/* ------------------------------------------------------------------------ */
/* Stores                                                                   */
/* ------------------------------------------------------------------------ */

#define KV_SQLITE_MEMORY ":memory:"

/*
 * Open flags.  KV_READONLY is every backend's.  Every other flag belongs to
 * one backend, carries that backend's name, and has a bit no other flag
 * uses: a kv_*_open given a flag it does not accept (another backend's, or
 * a bit no flag uses) fails KV_EINVAL, and kv_last_errmsg names the flag
 * and the backend.
 */
#define KV_READONLY 0x1u /* every backend: every write fails KV_EREADONLY */

/* kv_sqlite_open (kvstore-sqlite(3)); the two exclude each other. */
#define KV_SQLITE_SYNC_FULL 0x2u /* synchronous=FULL (default NORMAL)     */
#define KV_SQLITE_SYNC_OFF 0x10u /* synchronous=OFF: no fsync at all      \
                                    (tests, benchmarks)                   */
#define KV_SQLITE_NO_MAP 0x20u   /* read the file with pread, not through \
                                    a memory map (kv_sqlite_open)         */
/* kv_fs_open (kvstore-fs(3)). */
#define KV_FS_NO_FSYNC 0x4u /* skip fsyncs (tests, benchmarks): no        \
                               durability across a machine crash         */
#define KV_FS_FANOUT 0x8u   /* make a new store with the fan-out layout   */
/* kv_redis_open (kvstore-redis(3)) has no flag of its own. */

/*
 * Deprecated names of the flags above, kept only until the library's own
 * tests and tools use the new names; they will be removed.  KV_NO_FSYNC is
 * the fs flag: a SQLite store without fsyncs is KV_SQLITE_SYNC_OFF.
 */
#define KV_SYNC_FULL KV_SQLITE_SYNC_FULL /* deprecated */
#define KV_NO_FSYNC KV_FS_NO_FSYNC       /* deprecated */

#define KV_DEFAULT_MAX_RETRIES 5
#define KV_FS_DEFAULT_DEPTH 32

/*
 * Open a SQLite store on path: a database file (created if missing; WAL
 * mode; opening it sees everything committed to it before, and any SQLite
 * program can open it) or KV_SQLITE_MEMORY.
 * flags: KV_READONLY (not with KV_SQLITE_MEMORY), KV_SQLITE_SYNC_FULL or
 * KV_SQLITE_SYNC_OFF (not both), KV_SQLITE_NO_MAP; any other bit fails
 * KV_EINVAL.
 * Reads: the store's connections read the database file in place in a
 * read-only memory map of it (SQLite's mmap_size, kept from one
 * transaction to the next: no system call or copy per page), unless
 * SQLite's default VFS is not its unix one.  As with any mmap_size, a page
 * that cannot be read then raises SIGBUS instead of failing the call: a
 * disk read error, or another program truncating the file while the store
 * is open (a VACUUM that shrinks it; kvstore itself never shrinks it).
 * KV_SQLITE_NO_MAP reads with pread(2) instead.
 * Threads: open blocks the caller until the database is open; every SQLite
 * call of an operation then runs on pool.  loop and pool must outlive the
 * store.
 * Errors: KV_EINVAL (a NULL or empty argument, a flag it does not accept,
 * both sync flags, KV_READONLY in memory), KV_ENOMEM, KV_EBACKEND (cannot
 * open, not a database, SQLite built without threads), KV_EREADONLY
 * (KV_READONLY on a missing database); kv_last_errmsg says more.
 * Durability, group commit, the WAL-gathering VFS of KV_SQLITE_SYNC_FULL,
 * connections and checkpoints: kvstore-sqlite(3).
 */
KV_EXTERN int kv_sqlite_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                             const char *path, unsigned flags);

/*
 * Open a filesystem store rooted at root (created if missing), one file per
 * record.  depth is the maximum number of namespaces in a key (0:
 * KV_FS_DEFAULT_DEPTH).  The root is locked: a second open from any process
 * fails KV_EBUSY, and the store assumes that nothing else changes its files
 * while it is open.  A put completes once its record file and directory
 * are synced (KV_FS_NO_FSYNC drops the syncs).
 * flags: KV_READONLY, KV_FS_NO_FSYNC, KV_FS_FANOUT (a new store gets the
 * fan-out layout; an existing store keeps the layout it was made with);
 * any other bit fails KV_EINVAL.
 * Threads: open blocks the caller (it takes the lock, removes temp files a
 * crash left and reserves tokens); every record operation afterwards goes
 * through loop's ring and queries walk directories on pool.  loop and pool
 * must outlive the store.  On success *out must be closed with kv_close
 * and freed with kv_store_free.
 * Errors: KV_EINVAL (NULL or empty argument, a flag it does not accept,
 * KV_FS_FANOUT on a flat store), KV_ENOTSUP (the kernel's io_uring lacks
 * an operation needed: Linux 5.15 or later), KV_EBUSY (locked by another
 * open store), KV_EREADONLY (KV_READONLY on a missing root), KV_ECORRUPT
 * (.format unknown to this version), KV_ENOMEM, KV_EBACKEND (root cannot
 * be made, read or locked); kv_last_errmsg says more.
 * Layout on disk, the fan-out layout, the reuse of replaced files and
 * durability: kvstore-fs(3).
 */
KV_EXTERN int kv_fs_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                         const char *root, unsigned depth, unsigned flags);

/*
 * Open a Redis store (Redis or Valkey 7, single server or Redis Cluster).
 * uri is "redis://[user[:password]@]host[:port][,host[:port]...][/prefix]
 * [?option[&option]...]": host a DNS name, an IPv4 address or a bracketed
 * IPv6 address; user and password percent-decoded (then AUTH on every
 * connection); options shard=key|store, timeout=MS, password_file=PATH
 * (the password on its first line).  "rediss://" is the same over TLS
 * (OpenSSL), on every connection (seeds, nodes learned from the cluster,
 * reconnects; a cluster needs tls-cluster yes), with the options
 * cacert=PATH (a PEM file or hashed directory of trusted CAs; default the
 * system's store), cert=PATH and key=PATH (a client certificate and its
 * key, together), sni=NAME and verify=1|0.  With verify=1 (the default)
 * the server's certificate must chain to a trusted CA, be in date, and
 * carry the name the node is reached by (a DNS name, or for an address,
 * that IP address; nodes a cluster announces by IP are checked against
 * the IP), or sni= when given, which is then checked for every node and
 * sent as SNI; verify=0 checks nothing (encryption without
 * authentication of the server).  Grammar, defaults and the ACL a limited
 * user needs: kvstore-redis(3).  A bad URI
 * fails KV_EINVAL naming the field at fault (never quoting the password).
 * pool: host-name look-ups when a node reconnects (may be NULL: names then
 * keep the addresses found at open).
 * flags: KV_READONLY; any other bit fails KV_EINVAL.
 * Threads: open blocks its caller for at most the URI's timeout= in all
 * (name look-ups, connect, AUTH, CLUSTER SLOTS, SCRIPT LOAD on each master,
 * GET of the slot directory); afterwards all socket I/O and timers go
 * through loop's io_uring.
 * Atomic calls: kv_supports_atomic_batch reports true, but with shard=key
 * an atomic batch whose keys lie in several hash slots fails KV_ENOTSUP
 * (its message names two such keys), and kv_move_prefix_atomic fails
 * KV_ENOTSUP (use shard=store).
 * Errors of open: KV_EINVAL (bad URI, unreadable password_file, a
 * cacert=, cert= or key= file that cannot be loaded or a key that is not
 * the certificate's, a flag it does not accept), KV_ENOMEM, KV_EBACKEND (no
 * seed answered in time, a name does not resolve, AUTH failed: the
 * server's WRONGPASS/NOAUTH is in kv_last_errmsg, or the TLS handshake
 * failed: kv_last_errmsg names the check that failed, e.g. "certificate
 * has expired", and the name or address checked), KV_ENOTSUP (built
 * without hiredis; rediss:// in a build without OpenSSL).  Errors of
 * operations: KV_EBACKEND
 * when a node cannot be reached, or when the outcome is unknown (the
 * connection broke or timed out after the command was sent: re-read the
 * token before retrying).
 * Tokens, queries, durability (Redis's own), reconnection, redirects and
 * retries: kvstore-redis(3).
 */
KV_EXTERN int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                            const char *uri, unsigned flags);

/* The backend's name: "sqlite", "fs", "redis" or "redis-cluster"; NULL for a
 * NULL store. */
KV_EXTERN const char *kv_store_backend(const kv_store *store);

/*
 * Close the store: idempotent (every call returns a future that completes
 * when the store is fully closed, with the backend's close status).
 * In-flight operations complete KV_ECANCELED (pending kv_iter_next calls
 * too; calls forwarded from other threads that arrive after the close
 * KV_ECLOSED); undisposed iterators are released; every later call fails
 * KV_ECLOSED, and next / fetch_all on its iterators KV_EITER.  Any thread.
 */
KV_EXTERN kv_fut *kv_close(kv_store *store);

/*
 * Free the store's handle.  On the store's loop thread: if the store was
 * not closed, it is closed and the loop run until the close completes (from
 * inside a callback, where the loop cannot run, the handle is freed once
 * the close completes).  From any other thread: the free is handed to the
 * store's loop and done there at its next turn (after closing, if needed);
 * call it once no other thread uses the store, typically after kv_close's
 * future completed.  A call another thread made before that, which has
 * not reached the store's loop yet, fails KV_ECLOSED, and the handle is
 * freed once it has.  Either way kv_loop_free of the store's loop fails
 * KV_EBUSY until the handle is freed.  Iterators may outlive the handle:
 * calls on them fail KV_EITER until kv_iter_free.  NULL is a no-op.
 */
KV_EXTERN void kv_store_free(kv_store *store);

/* The loop the store was opened on (its loop thread serves it); NULL for a
 * NULL store.  Any thread. */
KV_EXTERN kv_loop *kv_store_loop(const kv_store *store);

/*
 * Admission control.  kv_store_inflight: the store's operations accepted
 * and not yet completed by it (record operations, batches, query opens;
 * each step of a helper counts while it runs), from any thread (a
 * snapshot).  kv_store_set_max_inflight: beyond max such operations, a new
 * one fails at once with a future already failed KV_EBUSY ("kv_put: 1024
 * operations in flight (the store's limit)") instead of queueing without
 * bound; 0 (the default) means no limit.  Any thread; KV_OK, or KV_EINVAL
 * for a NULL store.
 */
KV_EXTERN size_t kv_store_inflight(const kv_store *store);
KV_EXTERN int kv_store_set_max_inflight(kv_store *store, size_t max);

/* True if atomic batches are available (sqlite: yes; fs: no; redis: yes,
 * within one hash slot: see kv_redis_open). */
KV_EXTERN bool kv_supports_atomic_batch(const kv_store *store);

/*
 * Record operations.  Keys must be non-empty (KV_EINVAL otherwise).
 * KV_ECLOSED after close takes precedence over every other error.  Write
 * batches that name a key twice fail KV_EDUPLICATE and write nothing; read
 * batches deduplicate.  n == 0 is a valid, empty batch.  codec NULL means
 * raw bytes.  Checks run in this order: a NULL store (KV_EINVAL),
 * KV_ECLOSED, KV_EREADONLY (writes), KV_ENOTSUP (atomic calls), the
 * arguments (KV_EINVAL: a NULL or empty key, a NULL array with n > 0, a
 * codec without the encode a write or the decode a read needs), then
 * KV_EDUPLICATE.  An encode failure fails with the codec's code and writes
 * nothing.
 */

/* Result: kv_fut_bool. */
KV_EXTERN kv_fut *kv_has(kv_store *s, const kv_key *key);
/* Result: kv_fut_keys, the existing keys, each once. */
KV_EXTERN kv_fut *kv_has_many(kv_store *s, const kv_key *const *keys, size_t n);
/* Result: kv_fut_record.  KV_ENOTFOUND if absent; the codec's error. */
KV_EXTERN kv_fut *kv_get(kv_store *s, const kv_key *key, const kv_codec *codec);
/* Result: kv_fut_records, the records that exist, each key once. */
KV_EXTERN kv_fut *kv_get_many(kv_store *s, const kv_key *const *keys, size_t n,
                              const kv_codec *codec);
/*
 * Write rec if its token matches: 0 inserts only if absent, N replaces only
 * if the current token is N, KV_TOKEN_ANY inserts or replaces whatever is
 * there (never a conflict).  KV_ECONFLICT otherwise.  A value longer than
 * KV_MAX_VALUE_SIZE is KV_EINVAL (in every write call and helper).  Result:
 * kv_fut_token, the new token.
 */
KV_EXTERN kv_fut *kv_put(kv_store *s, const kv_record *rec,
                         const kv_codec *codec);
/* Insert-only put (token 0) of val/len, or of the object val when typed. */
KV_EXTERN kv_fut *kv_put_value(kv_store *s, const kv_key *key, const void *val,
                               size_t len, const kv_codec *codec);
/* Each record independently (CAS and KV_TOKEN_ANY records may mix).
 * Result: kv_fut_keys, the skipped keys; kv_fut_tokens, the new tokens. */
KV_EXTERN kv_fut *kv_put_many(kv_store *s, const kv_record *recs, size_t n,
                              const kv_codec *codec);
/*
 * Delete key if its token is token.  KV_ECONFLICT on a stale token, token 0
 * or a missing key.  With KV_TOKEN_ANY: delete whatever is there; KV_OK
 * either way, and kv_fut_bool says whether a record was removed (false: the
 * key was absent).
 */
KV_EXTERN kv_fut *kv_delete(kv_store *s, const kv_key *key, uint64_t token);
/* By recs[i].key and .token.  Result: kv_fut_keys, the skipped keys.  A
 * KV_TOKEN_ANY record is never skipped: an absent key counts as deleted
 * (use kv_delete to learn whether it existed). */
KV_EXTERN kv_fut *kv_delete_many(kv_store *s, const kv_record *recs, size_t n);
/*
 * All or nothing: if any record conflicts nothing is written and the future
 * completes KV_OK with the conflicting keys in kv_fut_keys (empty on
 * success) and kv_fut_tokens all 0; on success, every new token.  A
 * KV_TOKEN_ANY record never conflicts (in kv_delete_atomic, an absent one
 * is simply not there afterwards).  KV_ENOTSUP where
 * kv_supports_atomic_batch is false.
 */
KV_EXTERN kv_fut *kv_put_atomic(kv_store *s, const kv_record *recs, size_t n,
                                const kv_codec *codec);
KV_EXTERN kv_fut *kv_delete_atomic(kv_store *s, const kv_record *recs,
                                   size_t n);
/*
 * Rename from[i] and every key below it to lie below to[i] instead, for
 * each i, in one transaction.  Moved records get new tokens.  If a
 * destination exists (and is not itself being moved away) the future fails
 * KV_ECONFLICT and nothing moves.  If a moved key would pass a key limit
 * (KV_KEY_MAX_LEN, KV_KEY_MAX_DEPTH: see "Keys") the future fails KV_EINVAL,
 * its message naming the key and the limit, and nothing moves.  KV_ENOTSUP
 * without atomic batches.  to[i] equal to or below from[i] is KV_EINVAL; a
 * key named twice in from, or twice in to, is KV_EDUPLICATE.
 */
KV_EXTERN kv_fut *kv_move_prefix_atomic(kv_store *s, const kv_key *const *from,
                                        const kv_key *const *to, size_t n);
/* Delete each key and everything below it, regardless of tokens (the
 * empty key is KV_EINVAL here too). */
KV_EXTERN kv_fut *kv_drop_prefix(kv_store *s, const kv_key *const *keys,
                                 size_t n);

/* ------------------------------------------------------------------------ */
/* Queries and iterators                                                    */
/* ------------------------------------------------------------------------ */

typedef enum kv_sort {
    KV_SORT_ASC = 0,  /* kv_key_cmp order                  */
    KV_SORT_DESC = 1, /* reverse kv_key_cmp order          */
    KV_SORT_NONE = 2  /* any order, the fastest available  */
} kv_sort;

/*
 * A prefix query: key itself and every key below it (by namespaces: /a never
 * matches /ab; the empty key matches everything).  value false returns keys
 * and tokens only (val NULL, len 0).  offset >= 0 skips records; limit -1
 * returns all, 0 none.  key is borrowed for the kv_query_open call only.
 *
 * Corrupt records.  A record the store holds but cannot read (fs: a record
 * file whose header, length or checksum is wrong; SQLite: a row whose token
 * or value has the wrong type; Redis: a record hash without a valid token or
 * value) or, in a typed iterator, whose value the codec's decode rejects
 * with KV_ECORRUPT, is a corrupt record.  By default (skip_corrupt false)
 * the next or fetch_all call that meets one fails KV_ECORRUPT, its message
 * naming the key and kv_fut_keys of the failed future giving it (one key);
 * the iterator then goes on after it, so the next call returns the record
 * that follows.  With skip_corrupt true the calls pass over corrupt
 * records: next returns the next good record (or the end) and fetch_all
 * every good one, and each key passed over is added to the iterator's list,
 * kv_iter_corrupt.  Nothing is ever skipped silently.  A corrupt record
 * counts as a record for offset and limit.  Only what a read checks is
 * seen: with value false, fs reads the header only, so a corrupt value
 * goes unnoticed (kvctl verify reads everything).
 *
 * after (NULL: from the start) starts the listing strictly after that key
 * in the query's order: with KV_SORT_ASC only keys greater than it in
 * kv_key_cmp order, with KV_SORT_DESC only keys less than it.  It is a
 * position, not a record: it need not exist, nor lie under key (a position
 * before key's range in the query's order skips nothing, one past it leaves
 * nothing; the empty key is before everything).  offset and limit count
 * from there.  So a listing resumes from the last key of the previous page
 * (keyset pagination) without reading what lies before it: SQLite seeks its
 * key index (O(log n + page)), Redis starts each slot's ZRANGEBYLEX at it,
 * fs skips every directory that sorts before it (a directory on its path
 * is still read whole), where offset reads and counts every record it
 * skips.  KV_SORT_NONE has no position: after with it is KV_EINVAL.  after
 * is borrowed for the kv_query_open call only, like key.
 */
typedef struct kv_query {
    const kv_key *key;
    const kv_key *after;
    bool value;
    kv_sort sort;
    int64_t offset;
    int64_t limit;
    bool skip_corrupt; /* pass over corrupt records, listing their keys */
} kv_query;

/* value true, KV_SORT_ASC, offset 0, limit -1, after NULL,
 * skip_corrupt false. */
KV_EXTERN kv_query kv_query_init(const kv_key *key);

/*
 * Open an iterator.  Result: kv_fut_take_iter.  Results stream: the backend
 * fetches rows in chunks, so a large query does not load all at once.
 * KV_EINVAL for a NULL q or q->key, offset < 0, limit < -1, an unknown sort,
 * q->after with KV_SORT_NONE or a codec without decode.  A typed iterator decodes each record; one that
 * does not decode fails its next call with the codec's code (and is
 * skipped; kv_fut_keys of the failed future gives its key), or with
 * skip_corrupt and KV_ECORRUPT is passed over (see kv_query).
 */
KV_EXTERN kv_fut *kv_query_open(kv_store *s, const kv_query *q,
                                const kv_codec *codec);
/*
 * The next record (kv_fut_record), or NULL at the end, after which
 * kv_iter_finished is true.  Next after the end, after dispose, or after the
 * store closed fails KV_EITER.  Concurrent calls each get a different record,
 * in order (one gets the end, later ones KV_EITER).  Calls still pending
 * when the iterator is disposed or freed fail KV_EITER.
 */
KV_EXTERN kv_fut *kv_iter_next(kv_iter *it);
KV_EXTERN bool kv_iter_finished(const kv_iter *it);
/* Every remaining record: kv_fut_records; the iterator ends finished (an
 * already finished one gives none; KV_EITER after dispose or close).
 * Without skip_corrupt a corrupt record fails it (see kv_query; the records
 * it had collected are dropped, and a later call goes on after the corrupt
 * one). */
KV_EXTERN kv_fut *kv_iter_fetch_all(kv_iter *it);
/*
 * The keys of the corrupt records the iterator passed over (skip_corrupt),
 * in the order met; *n their count (0 and NULL if none).  The list and its
 * keys belong to the iterator: valid until the next kv_iter_next or
 * kv_iter_fetch_all call on it or kv_iter_free.  Call it from any thread
 * once the calls whose skips you want to see have completed and while none
 * is pending (it reads what the store's loop thread wrote).  NULL it: NULL.
 */
KV_EXTERN const kv_key *const *kv_iter_corrupt(const kv_iter *it, size_t *n);
/* Release backend resources.  Idempotent (every call's future completes
 * when the release has; at once after close); the handle stays valid. */
KV_EXTERN kv_fut *kv_iter_dispose(kv_iter *it);
/* Dispose if needed and free the handle, without blocking (the memory
 * goes when the backend has released the cursor).  NULL-safe. */
KV_EXTERN void kv_iter_free(kv_iter *it);

/* ------------------------------------------------------------------------ */
/* Helpers: retries and get-or-put                                          */
/* ------------------------------------------------------------------------ */

/*
 * A middleware gets the records that failed (conflicts) and returns a future
 * of the records to retry (kv_fut_complete_records; an empty result ends
 * with success).  It may fail the future to abort with that error (a NULL
 * future aborts with KV_EINVAL).  The records it sees are valid only during
 * the call.  In a typed call they are raw: each value is the encoding the
 * helper made once with the call's codec, and the records returned are raw
 * bytes too.  So a typed middleware uses the same codec on both sides:
 * codec.decode(rec.val, rec.len, &obj, codec.ctx) gives the object it
 * wanted to write (release it with codec.free_obj), and the value it
 * returns is codec.encode's output (a kv_buf it frees with kv_buf_free once
 * kv_fut_complete_records has copied it).  kv_fut_complete_records cannot
 * carry objects, which is why the helper does not decode for it.
 */
typedef kv_fut *(*kv_middleware)(const kv_record *failed, size_t n, void *arg);
/*
 * An atomic middleware gets every record of the batch and the conflicting
 * keys, and must return records with the same key set (else KV_EINVAL).
 */
typedef kv_fut *(*kv_atomic_middleware)(const kv_record *all, size_t n,
                                        const kv_key *const *conflicts,
                                        size_t nconf, void *arg);
/*
 * A producer makes the value of a missing key: a future completed with
 * kv_fut_complete_bytes (raw) or kv_fut_complete_obj (typed).
 */
typedef kv_fut *(*kv_producer)(const kv_key *key, void *arg);

/*
 * Put / delete recs, retrying the skipped ones up to max_retries attempts in
 * all (0 fails KV_EMAXRETRIES at once, every key in kv_fut_keys).  mw (may
 * be NULL: retry the same records) decides what to retry.  KV_OK once
 * nothing is skipped; KV_EMAXRETRIES with the still-skipped keys in
 * kv_fut_keys otherwise.  An attempt that fails (KV_EDUPLICATE, KV_ECLOSED,
 * KV_ECANCELED when the store closes...) ends the helper with its error.
 * kv_fut_cancel on the helper's future cancels the step in flight.
 * kv_try_put and kv_try_put_atomic also give kv_fut_tokens (with KV_OK and
 * KV_EMAXRETRIES), parallel to recs: the token each record's key got from
 * the attempt that wrote it (a middleware's record counts for the input
 * record of the same key), 0 if none did.
 */
KV_EXTERN kv_fut *kv_try_put(kv_store *s, const kv_record *recs, size_t n,
                             unsigned max_retries, kv_middleware mw, void *arg,
                             const kv_codec *codec);
KV_EXTERN kv_fut *kv_try_delete(kv_store *s, const kv_record *recs, size_t n,
                                unsigned max_retries, kv_middleware mw,
                                void *arg);
/*
 * Atomic forms: without a middleware a conflict fails KV_ECONFLICT (the
 * conflicting keys in kv_fut_keys) with no retry.
 */
KV_EXTERN kv_fut *kv_try_put_atomic(kv_store *s, const kv_record *recs,
                                    size_t n, unsigned max_retries,
                                    kv_atomic_middleware mw, void *arg,
                                    const kv_codec *codec);
KV_EXTERN kv_fut *kv_try_delete_atomic(kv_store *s, const kv_record *recs,
                                       size_t n, unsigned max_retries,
                                       kv_atomic_middleware mw, void *arg);
/*
 * Get key; if absent, call producer and insert its value with token 0; if
 * another writer inserted first, read and return the winner's record.
 * Result: kv_fut_record, with the record's real token (the one read, or the
 * one the insert wrote).  max_retries bounds the insert attempts, each with
 * one producer call (0, or a winner that vanished after every lost race:
 * KV_EMAXRETRIES).  A NULL producer, or a codec without encode and decode,
 * is KV_EINVAL.  kv_fut_cancel on the result stops the step in flight; a
 * producer's pending future is still the producer's to complete.
 */
KV_EXTERN kv_fut *kv_get_or_put(kv_store *s, const kv_key *key,
                                kv_producer producer, void *arg,
                                unsigned max_retries, const kv_codec *codec);

#ifdef __cplusplus
}
#endif

#endif /* KVSTORE_H */
