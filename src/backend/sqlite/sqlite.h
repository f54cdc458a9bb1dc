/*
 * backend/sqlite/sqlite.h - the SQLite backend's operation table and its
 * test hooks.
 */
#ifndef KV_BACKEND_SQLITE_H
#define KV_BACKEND_SQLITE_H

#include "store/backend.h"

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
    uint64_t checkpoints; /* background checkpoints started                */
    uint64_t restarts;    /* WAL restarts the writer's jobs reported       */
    uint64_t finishes;    /* writer jobs that checkpointed to restart it   */
    uint64_t any_reads;   /* point reads from other threads, run without   */
    uint64_t any_batches; /* the loop (sqlite_any.c), and their batches    */
    uint64_t any_posts;   /* their completions' pushes to callers' loops   */
    /* Not counters: the WAL's bound in bytes, the least time between two
     * of its restarts below half of it (sq.restart_ns), as set now, and
     * when its current cycle began (kv__now_ns's clock). */
    uint64_t wal_max;
    uint64_t restart_ns;
    uint64_t cycle_ns;
};
int kv__sqlite_stats(const kv_store *s, struct kv__sqlite_stats *out);
/*
 * sqlite_vfs.c: the kvstore VFS over SQLite's default one, registered on
 * first use under one name per set of features:
 * - KV__VFS_WALBUF gathers a WAL file's frame writes into one write per
 *   commit, for connections that run synchronous=FULL only (see the
 *   file's comment);
 * - KV__VFS_MAP keeps the default VFS's map of the main database file
 *   (PRAGMA mmap_size) across read transactions.
 * kv__sqlite_vfs returns the name for features (a non-empty set), or NULL
 * if it could not register it, or if MAP is asked for and SQLite's default
 * VFS is not a unix one (then open with fewer features or the default).  Test
 * hooks: the writes SQLite made to wrapped WAL files and the writes they
 * became, and the pages read in place in a kept map, process-wide; and a
 * failure (an SQLite result code) of the nth flush from now (0: none).
 */
#define KV__VFS_WALBUF 0x1u
#define KV__VFS_MAP 0x2u
const char *kv__sqlite_vfs(unsigned features);
void kv__sqlite_walbuf_counts(unsigned long *writes, unsigned long *flushes);
unsigned long kv__sqlite_map_fetches(void);
#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
void kv__sqlite_walbuf_fail(long nth, int sqlite_rc);
#endif
/* sqlite_job.c test hook: the writebacks of WAL pages the writers of
 * synchronous=NORMAL stores started, process-wide. */
unsigned long kv__sqlite_wal_wb_count(void);
/*
 * sqlite.c test hook (loop thread): the writer's next job starts by running
 * PRAGMA max_page_count = pages on the writer connection (pages <= 0: a
 * large limit again), so a test can fill the database (SQLITE_FULL).  SQLite
 * never lowers the limit below the current size.  KV_EINVAL if s is not a
 * writable SQLite store.
 */
#ifdef KV_TEST_HOOKS
int kv__sqlite_set_max_pages(kv_store *s, int64_t pages);
#endif
/*
 * sqlite.c test hook (loop thread): the writer's wait for forwarded writes
 * to come back (sqlite_sched.c, gather) lasts ns exactly instead of a
 * quarter of the last group's time (0: that rule again), so a test can
 * tell the wait's end by arrivals from its end by time.  KV_EINVAL if s is
 * not a writable SQLite store.
 */
#ifdef KV_TEST_HOOKS
int kv__sqlite_set_gather_ns(kv_store *s, uint64_t ns);
#endif
/*
 * sqlite.c test hook (loop thread): the least time between two restarts of
 * the WAL below half its bound becomes ns from now on (0: restart as soon
 * as possible, FULL's rule; UINT64_MAX: by size only), so a test can tell
 * the time rule from the size rule.  KV_EINVAL if s is not a writable
 * SQLite file store.
 */
#ifdef KV_TEST_HOOKS
int kv__sqlite_set_restart_ns(kv_store *s, uint64_t ns);
#endif
#endif /* KV_BACKEND_SQLITE_H */
