/*
 * peer.h - kvbench's peer engines: the same workload run against plain
 * SQLite (sqlite-raw), LMDB and RocksDB, so that every comparison is made in
 * one run of one tool.
 *
 * Every call here is blocking and runs on the calling thread.  kvbench runs
 * a peer job at --iodepth N on N threads of its own, each with a connection
 * (peer_conn), each issuing one blocking call at a time.
 *
 * Records carry a version token as kvstore's do: tokens come from one
 * process-wide counter seeded with the wall clock in nanoseconds, so they
 * never repeat for a key across runs.  A put with expect 0 inserts only if
 * the key is absent; with expect N it replaces only if the current token is
 * N; anything else is a conflict.  How each engine decides that:
 *   sqlite-raw: INSERT .. ON CONFLICT DO NOTHING / UPDATE .. WHERE token = N,
 *               conflict when sqlite3_changes() is 0 (table: key BLOB UNIQUE,
 *               val BLOB, token INTEGER; rowid table, WAL).
 *   lmdb:       mdb_get + compare + mdb_put inside one write transaction
 *               (LMDB has one writer at a time).
 *   rocksdb:    OptimisticTransactionDB: GetForUpdate + compare + Put, and a
 *               commit that fails Busy when another writer got there first.
 * LMDB and RocksDB values are stored as an 8-byte little-endian token
 * followed by the value bytes.
 *
 * Results are KV_OK, KV_ENOTFOUND, KV_ECONFLICT, or KV_EBACKEND (message in
 * peer_errmsg), KV_ENOTSUP for an engine this build lacks.
 */
#ifndef KV_PEER_H
#define KV_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "toolutil.h"

typedef enum peer_sync {
    PEER_SYNC_FULL,   /* every commit durable (fsync)                     */
    PEER_SYNC_NORMAL, /* each engine's cheaper default (see peer_describe) */
    PEER_SYNC_NONE    /* no syncs at all                                  */
} peer_sync;

typedef struct peer peer;
typedef struct peer_conn peer_conn;

/* True if this build has the engine. */
bool peer_available(tu_backend kind);

/*
 * Open (creating if missing) the engine's store at path.  maxconns bounds
 * the connections that will be opened (LMDB reader slots); data_bytes
 * estimates the data set (LMDB's map size is 16 times that, at least 1 GiB
 * and at most 64 GiB, or $KVBENCH_LMDB_MAPSIZE bytes if set).
 */
int peer_open(peer **out, tu_backend kind, const char *path, peer_sync sync,
              unsigned maxconns, uint64_t data_bytes, char *err,
              size_t errlen);
/* One line saying what the engine does for this run, for the report. */
const char *peer_describe(const peer *p);
void peer_close(peer *p);

/* A connection for one thread. */
int peer_conn_open(peer *p, peer_conn **out, char *err, size_t errlen);
void peer_conn_close(peer_conn *c);
const char *peer_errmsg(const peer_conn *c);

/* Read key: its token, and the value's length (the value is copied out). */
int peer_get(peer_conn *c, const char *key, size_t klen, uint64_t *token,
             size_t *vlen);
/* Conditional write (see above).  *newtok receives the token written. */
int peer_put(peer_conn *c, const char *key, size_t klen, const void *val,
             size_t vlen, uint64_t expect, uint64_t *newtok);
/*
 * n writes in one transaction.  Not atomic: each record conflicts on its own
 * (conflict[i] = 1) and the others are written.  Atomic: if any record
 * conflicts, conflict[] says which and nothing is written.  newtok[i] is the
 * token written for each record that was written.
 */
int peer_put_batch(peer_conn *c, size_t n, const char *const *keys,
                   const size_t *klens, const void *val, size_t vlen,
                   const uint64_t *expect, uint64_t *newtok,
                   unsigned char *conflict, bool atomic);
/*
 * Records whose key starts with prefix followed by '/' (kvstore's prefix
 * match for kvbench's keys), in key order, at most limit of them.
 */
int peer_scan(peer_conn *c, const char *prefix, size_t plen, unsigned limit,
              size_t *count, uint64_t *bytes);

#endif /* KV_PEER_H */
