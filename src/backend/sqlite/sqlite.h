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
};
int kv__sqlite_stats(const kv_store *s, struct kv__sqlite_stats *out);
/*
 * sqlite_vfs.c: the kvstore VFS over SQLite's default one, registered on
 * first use under one name per set of features:
 * - KV__VFS_WALBUF gathers a WAL file's frame writes into one write per
 *   commit, for connections that run synchronous=FULL only (see the
 *   file's comment);
 * - KV__VFS_MAP reads the main database file through one shared map of it
 *   (sqlite_map.c) instead of pread.
 * kv__sqlite_vfs returns the name for features (a non-empty set), or NULL
 * if it could not register it, or if MAP is asked for and SQLite's default
 * VFS is not a unix one (then open with fewer features or the default).  Test
 * hooks: the writes SQLite made to wrapped WAL files and the writes they
 * became, process-wide; and a failure (an SQLite result code) of the nth
 * flush from now (0: none).
 */
#define KV__VFS_WALBUF 0x1u
#define KV__VFS_MAP 0x2u
const char *kv__sqlite_vfs(unsigned features);
void kv__sqlite_walbuf_counts(unsigned long *writes, unsigned long *flushes);
/*
 * sqlite_map.c: one read-only map of a database file shared by every
 * connection of the process (see the file's comment).  get maps path (or
 * takes another reference to its map; NULL if it cannot be mapped), put
 * drops a reference.  read copies n bytes at off out of the map and
 * returns true, or false if they are not known to be in the file; at
 * returns where they are in the map (valid until the last put), or NULL.  The
 * size calls update what is known, each under lock/unlock: size sets it
 * (from a file-size query), shrink lowers it (before a truncation), grow
 * raises it (after a write).  reads counts the reads served (tests).
 */
typedef struct kv__sqlite_map kv__sqlite_map;
kv__sqlite_map *kv__sqlite_map_get(const char *path);
void kv__sqlite_map_put(kv__sqlite_map *m);
bool kv__sqlite_map_read(kv__sqlite_map *m, void *p, int n, int64_t off);
void *kv__sqlite_map_at(kv__sqlite_map *m, int n, int64_t off);
void kv__sqlite_map_lock(kv__sqlite_map *m);
void kv__sqlite_map_unlock(kv__sqlite_map *m);
void kv__sqlite_map_size(kv__sqlite_map *m, int64_t size);
void kv__sqlite_map_shrink(kv__sqlite_map *m, int64_t size);
void kv__sqlite_map_grow(kv__sqlite_map *m, int64_t end);
unsigned long kv__sqlite_map_reads(void);
#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
void kv__sqlite_walbuf_fail(long nth, int sqlite_rc);
#endif
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
#endif /* KV_BACKEND_SQLITE_H */
