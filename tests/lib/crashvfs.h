/*
 * crashvfs.h - an SQLite VFS for power-loss tests, after SQLite's own
 * crash-test VFS (src/test6.c): it sits under everything (registered as
 * the default VFS before the first database is opened, so the backend's
 * WAL-gathering VFS wraps it too) and remembers, per file, what the last
 * xSync made durable and every write and truncate since.  At the "crash"
 * (the nth write, sync or truncate, or crashvfs_crash_now) every later
 * write, sync, truncate, delete and open fails with an I/O error; once the
 * databases are closed, crashvfs_materialize rewrites each file as a power
 * loss may leave it: the durable content, then each unsynced write kept,
 * dropped or torn (each 512-byte sector of it kept or not) and each
 * unsynced truncate kept or not, in order.  The -shm files are removed
 * (SQLite rebuilds the WAL index).
 *
 * Writes also go to the real files at once, so locks, shared memory and
 * reads behave as usual while the test runs; only the records decide what
 * a crash leaves.  Files created or deleted are taken as durable at once
 * (the unix VFS syncs the directory of a new WAL itself).  Threads: every
 * call is safe from any thread (one mutex).
 */
#ifndef KV_TEST_CRASHVFS_H
#define KV_TEST_CRASHVFS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct crashvfs_stats {
    unsigned long events;        /* writes, syncs and truncates seen      */
    unsigned long writes_kept, writes_dropped, writes_torn;
    unsigned long truncs_kept, truncs_dropped;
    unsigned long synced_writes; /* writes made durable by an xSync       */
    unsigned long db_writes;     /* writes to files other than a -wal (the
                                  * database: checkpoints, schema)       */
} crashvfs_stats;

/* Register the VFS as the default ("crashvfs") over the current default.
 * 0, or -1 (SQLite's registration failed).  Idempotent. */
int crashvfs_install(void);
/*
 * Start a new run: forget every file, count events from 0, crash at event
 * crash_at (0: never, until crashvfs_crash_now).  ignore_sync: xSync makes
 * nothing durable (the demonstration that a test sees a missing sync).
 */
void crashvfs_begin(unsigned long crash_at, bool ignore_sync);
/* Crash now (no-op if crashed). */
void crashvfs_crash_now(void);
bool crashvfs_crashed(void);
/* Events so far in this run. */
unsigned long crashvfs_events(void);
/*
 * With every handle closed: write each file as the crash left it (choices
 * from seed), remove the -shm files, and go back to passing calls through
 * (until the next crashvfs_begin).  Adds to *st if not NULL.  0, or -1
 * with errno (a file could not be written).
 */
int crashvfs_materialize(uint64_t seed, crashvfs_stats *st);
/* Stop recording without a crash (files left as they are). */
void crashvfs_end(void);

#endif
