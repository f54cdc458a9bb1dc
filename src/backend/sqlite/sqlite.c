/*
 * sqlite.c - the SQLite backend: kv_sqlite_open and kv__sqlite_ops.
 *
 * Threads.  The loop thread never calls SQLite after kv_sqlite_open (which
 * is documented to block its caller): every statement runs in a pool job.
 * Each connection (struct conn) runs at most one job at a time (conn->busy,
 * loop-thread state), so connections are opened SQLITE_OPEN_NOMUTEX and need
 * no lock of ours: the pool's queue orders a job's work after the loop thread
 * prepared it, and the completion list orders its done after the work.
 * While a job runs, its work owns the connection's handle and statements,
 * the requests in conn->run and their cursors' statements; the loop thread
 * touches them again only in the job's done callback.
 *
 * Connections.
 *  - The writer: every write goes through it.  Write requests wait in
 *    writer->wait; when the writer is idle, one job takes the whole queue and
 *    runs it in one BEGIN IMMEDIATE ... COMMIT (group commit).  The job
 *    starts at the end of the loop turn that queued its first request (see
 *    kick), so what the callbacks of one turn submit is one group.  A request
 *    with more than one statement runs inside its own SAVEPOINT, so a
 *    conflicting atomic batch or a request that hits an SQLite error rolls
 *    back alone; if COMMIT fails, every request of the group fails.
 *  - An in-memory store has only the writer: reads, queries and fetches
 *    queue on it as well and everything runs in submission order (a read
 *    queued behind a write in the same group sees that write).
 *  - A file store reads through reader connections, opened read-only and
 *    lazily on a worker.  Point reads wait in s->rq and run on idle readers,
 *    at most READ_JOBS_PER_THREAD x kv_pool_size() read jobs at a time (a
 *    worker finds the next batch queued instead of sleeping), each batch in
 *    one read transaction (one snapshot).  A query pins a reader for as
 *    long as its statement lives (the statement's WAL snapshot must not leak
 *    into later reads), and its fetches queue on that reader.
 *
 * Tokens.  kv_meta's 'token' row is at least every token handed out in a
 * committed transaction: the writer reserves TOKEN_BLOCK tokens at a time.
 * A write job reads the counter after BEGIN IMMEDIATE; if it is still the
 * value this writer stored (tok_max), the tokens between the last one it
 * handed out and tok_max are its own, else it starts from the counter.  It
 * hands out last + 1, + 2, ... and, only when it went past tok_max, stores
 * a new reservation (last + TOKEN_BLOCK) before COMMIT: one kv_meta page
 * write per TOKEN_BLOCK tokens instead of one per commit (a put that
 * commits alone writes one page, not two).  So tokens are never 0 and never
 * repeat, not after delete and re-insert, not after a reopen (which skips
 * what was left of the reservation), not between two processes (or two
 * opens) sharing the file: each hands out tokens only below a counter it
 * stored itself, above the counter it read.  At INT64_MAX a write fails
 * KV_ECORRUPT.
 *
 * Keys are stored as kv__key_encode bytes (memcmp order is kv_key_cmp order),
 * so "the key and everything below it" is the index range
 * [E, E with its final 0x00 replaced by 0x01), never LIKE/GLOB.
 */
#include "config.h"

#include "backend/sqlite/sqlite.h"

#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define SCHEMA_FORMAT 1          /* kv_meta('format'); bump on layout change */
#define TOKEN_BLOCK 1024         /* tokens reserved per kv_meta write       */
#define BUSY_TIMEOUT_MS 5000
#define FETCH_ROWS 256           /* rows per ITER_FETCH ...                */
#define FETCH_BYTES (1u << 20)   /* ... or about this many bytes            */
#define READ_BATCH 64            /* point-read requests per reader job      */
/* Read jobs in flight per pool thread.  With one, a worker that finishes
 * its batch sleeps until the loop has taken the results and queued more;
 * with two, the next batch is already waiting in the pool.  Measured
 * (kvbench randread, 1M records, iodepth 64, 2 threads): 149-152k gets/s
 * with one, 167-182k with two, 169-186k with three. */
#define READ_JOBS_PER_THREAD 2
/* WAL checkpoints (file stores).  SQLite's autocheckpoint would run them
 * inside the writer's COMMIT, every ~1000 WAL pages: the group commits
 * stall behind copying pages to the database file and fsyncing it.  Instead
 * the writer's WAL hook records the WAL size and the loop thread starts a
 * PASSIVE checkpoint on a connection of its own (s->ck) in a pool job,
 * concurrent with the writer.  Under a steady write load the WAL never gets
 * fully backfilled in the background (the writer keeps appending), and only
 * a fully backfilled WAL is restarted: past CKPT_HARD_PAGES the writer
 * checkpoints inline after its commit, which finds little left to copy.
 * A larger WAL than SQLite's default (at most ~64 MiB at 4 KiB pages) lets
 * a checkpoint copy each page once for many commits: random keys touch a
 * page per write, and the WAL bytes, then the checkpoint's, are the cost.
 *
 * Light write loads (small groups, each commit its own fsync) want the WAL
 * to restart early and often instead: a commit that appends to the WAL
 * makes its fsync write the file's inode too (its size changed), and here
 * an append + fdatasync takes ~2.2x an overwrite + fdatasync (ext4, 4 KiB
 * and 256 KiB alike).  Without help the WAL restarts only at
 * CKPT_HARD_PAGES, so every commit of the first 16000 pages after an open
 * appends.  So a checkpoint is also due after CKPT_COMMITS commits (with
 * at least CKPT_MIN_PAGES new pages), which under a light load comes long
 * before CKPT_PAGES; and when a background checkpoint left at most
 * CKPT_FINISH_PAGES to copy, the writer's next job checkpoints that rest
 * inline after its commit (once per WAL cycle), the WAL restarts, and the
 * commits after it overwrite blocks the file already has. */
#define CKPT_PAGES 4000          /* new WAL pages that start a checkpoint   */
#define CKPT_COMMITS 1000        /* ... or commits (light loads)            */
#define CKPT_MIN_PAGES 256       /* ... with at least this many new pages   */
#define CKPT_HARD_PAGES 16000    /* WAL pages: the writer checkpoints       */
#define CKPT_FINISH_PAGES 256    /* rest the writer checkpoints to restart  */
/* The writer's page cache (KiB; SQLite's default is 2 MiB): a random put
 * reads its table leaf (and the key index's) before changing it; with the
 * default, a store of 100,000 100 B records misses ~1.6 pages per put, each
 * a pread (and a WAL lookup).  Readers keep the default. */
#define WRITER_CACHE_KIB 16384

/* ------------------------------------------------------------------------ */
/* Cached statements                                                        */
/* ------------------------------------------------------------------------ */

enum {
    ST_BEGIN_IMM,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_TOK_GET,
    ST_TOK_SET,
    ST_HAS,
    ST_GET,
    ST_INSERT,
    ST_UPDATE,
    ST_DELETE,
    ST_DROP_RANGE,
    ST_DROP_ALL,
    ST_MOVE_SEL,
    ST_MOVE_SEL_ALL,
    ST_SETKEY,
    ST_SETKEY_TOK,
    ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
    [ST_BEGIN_IMM] = "BEGIN IMMEDIATE",
    [ST_BEGIN] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT kv_req",
    [ST_RELEASE] = "RELEASE kv_req",
    [ST_ROLLBACK_TO] = "ROLLBACK TO kv_req",
    [ST_TOK_GET] = "SELECT value FROM kv_meta WHERE name = 'token'",
    [ST_TOK_SET] = "UPDATE kv_meta SET value = ?1 WHERE name = 'token'",
    [ST_HAS] = "SELECT token FROM kv WHERE key = ?1",
    [ST_GET] = "SELECT token, val FROM kv WHERE key = ?1",
    [ST_INSERT] = "INSERT INTO kv(key, val, token) VALUES(?1, ?2, ?3) "
                  "ON CONFLICT(key) DO NOTHING",
    [ST_UPDATE] = "UPDATE kv SET val = ?2, token = ?3 "
                  "WHERE key = ?1 AND token = ?4",
    [ST_DELETE] = "DELETE FROM kv WHERE key = ?1 AND token = ?2",
    [ST_DROP_RANGE] = "DELETE FROM kv WHERE key >= ?1 AND key < ?2",
    [ST_DROP_ALL] = "DELETE FROM kv",
    [ST_MOVE_SEL] = "SELECT id, key FROM kv WHERE key >= ?1 AND key < ?2",
    [ST_MOVE_SEL_ALL] = "SELECT id, key FROM kv",
    [ST_SETKEY] = "UPDATE kv SET key = ?2 WHERE id = ?1",
    [ST_SETKEY_TOK] = "UPDATE kv SET key = ?2, token = ?3 WHERE id = ?1",
};

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct sq sq;
typedef struct conn conn;
typedef struct cursor cursor;
typedef struct sreq sreq;

typedef struct squeue {
    sreq *head, *tail;
    size_t n;
} squeue;

/* Where a request is (loop thread). */
enum { W_NONE, W_QUEUED, W_RUNNING, W_SOON };

/* The backend's side of one kv__req (req->bpriv). */
struct sreq {
    kv__req *req;
    sreq *prev, *next; /* the queue it waits in, or its job's run list */
    squeue *q;         /* that queue while W_QUEUED */
    conn *c;           /* its connection while W_RUNNING */
    int where;
    cursor *cur;       /* QUERY_OPEN / ITER_FETCH / ITER_DISPOSE */
    int status;        /* the request's result (items carry the rest) */
    char *msg;         /* kv__malloc'd message for a failed status */
    bool in_tx;        /* worker: a write of the current transaction */
    bool embedded;     /* cursor->dsr: not allocated */
    cursor *dead;      /* a cursor to free once the request completed */
};

/* A query cursor (iter->bpriv).  Kept in s->cursors until disposed, or until
 * destroy: the store may free the kv_iter at close without a dispose. */
struct cursor {
    cursor *prev, *next; /* s->cursors */
    conn *c;             /* its connection (file: pinned while live) */
    /* The query, copied on the loop thread at submit. */
    kv_buf lo, hi;       /* the range; lo.len == 0: everything */
    bool value;
    kv_sort sort;
    int64_t offset, limit;
    /* Worker side (jobs on c). */
    sqlite3_stmt *st;    /* NULL once finished, failed or disposed */
    bool row;            /* st is positioned on a row not yet returned */
    int err;             /* a failed fetch: later fetches fail the same */
    /* Loop side, updated in done callbacks. */
    bool live;           /* st != NULL as of the last finished job */
    sreq dsr;            /* the dispose request: a dispose never fails OOM */
    bool dsr_busy;
};

struct conn {
    kv__job job;         /* the one job of this connection */
    sq *s;
    conn *next;          /* s->conns */
    conn *next_idle;     /* s->idle */
    bool reader;         /* a file store's read-only reader */
    bool busy;           /* job queued or running */
    bool rq_job;         /* the running job counts in s->nread_jobs */
    squeue wait;         /* requests waiting for this connection */
    squeue run;          /* the requests of the running job */
    cursor *pin;         /* reader: the live cursor holding it */
    /* Worker side. */
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    kv_buf kb, kb2;      /* scratch key encodings */
    int64_t tok;         /* writer: the last token handed out */
    int64_t tok_max;     /* writer: the counter it last stored or read
                          * (tokens up to it are reserved; -1: none) */
    unsigned ncommits;   /* commits made by the last job */
    int wal_pages;       /* writer: WAL pages after its last commit */
    bool ck_finish;      /* writer: checkpoint inline after this job's
                          * commit (set by the loop at its start) */
    int64_t max_pages;   /* writer, test hook: PRAGMA max_page_count to run
                          * at the start of this job (0: none); set by the
                          * loop before the job is submitted */
};

struct sq {
    kv_loop *loop;
    kv_pool *pool;
    char *path;
    bool memory, readonly;
    const char *sync;         /* PRAGMA synchronous value */
    conn *writer;             /* NULL for read-only stores */
    conn *conns;              /* every connection */
    conn *idle;               /* file: readers with nothing to do */
    unsigned nread_jobs, max_read_jobs;
    squeue rq;                /* file: point reads and query opens waiting */
    cursor *cursors;
    unsigned pending;         /* connection jobs submitted, not yet done */
    /* Completions that must not run inside submit/cancel/close. */
    kv__job soon_job;
    bool soon_busy;
    squeue soon;
    kv__req *oom;             /* reqs without an sreq (linked via bpriv) */
    /* Close. */
    bool closing, close_started;
    kv__req *close_req;
    kv__job close_job;
    int close_status;
    char *close_msg;
    struct kv__sqlite_stats stats;
    /* The writer's deferred start (kick): a NOP on the ring whose completion
     * starts the writer's job once the callbacks of this loop turn ran. */
    kv__op wstart_op;
    bool wstart_armed;        /* the NOP is in flight */
    /* Background checkpoints (file stores with a writer). */
    kv__job ck_job;
    bool ck_busy;             /* ck_job queued or running */
    sqlite3 *ck;              /* its connection, opened by its first job */
    int ck_done;              /* WAL pages backfilled by the last one */
    int ck_seen;              /* writer->wal_pages as of its last done */
    uint64_t ck_commits;      /* stats.commits when the last one started
                               * (or the WAL restarted) */
    int ck_log;               /* worker: WAL pages that job saw */
    bool ck_finished;         /* the writer checkpointed inline to restart
                               * the WAL (once per WAL cycle) */
    /* Test hook (kv__sqlite_set_max_pages), loop thread: handed to the
     * writer's next job by conn_start. */
    int64_t max_pages_req;
    bool max_pages_set;
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void q_push(squeue *q, sreq *r)
{
    r->prev = q->tail;
    r->next = NULL;
    if (q->tail != NULL)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
    r->q = q;
    r->where = W_QUEUED;
}

static void q_remove(squeue *q, sreq *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        q->head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        q->tail = r->prev;
    r->prev = r->next = NULL;
    r->q = NULL;
    r->where = W_NONE;
    q->n--;
}

static bool is_write(kv__opcode op)
{
    switch (op) {
    case KV__OP_PUT:
    case KV__OP_DELETE:
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
    case KV__OP_MOVE:
    case KV__OP_DROP:
        return true;
    default:
        return false;
    }
}

/* Map an SQLite result code to a kvstore code. */
static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return KV_OK;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return KV_ECORRUPT;
    case SQLITE_NOMEM:
        return KV_ENOMEM;
    case SQLITE_READONLY:
        return KV_EREADONLY;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return KV_EBUSY;
    default:
        return KV_EBACKEND;
    }
}

/*
 * An SQLite call on db failed with rc: keep the first message of the
 * operation in *msg ("sqlite: what: errmsg") and return the kvstore code.
 * Call it before sqlite3_reset, which may change the connection's message.
 */
static int db_fail(sqlite3 *db, int rc, const char *what, char **msg)
{
    if (msg != NULL && *msg == NULL)
        *msg = kv__asprintf("sqlite: %s: %s", what,
                            db != NULL ? sqlite3_errmsg(db)
                                       : sqlite3_errstr(rc));
    return map_rc(rc);
}

/* A non-SQLite failure with a message (first one wins). */
static int fail_msg(int code, char **msg, const char *fmt, ...)
    KV__PRINTF(3, 4);
static int fail_msg(int code, char **msg, const char *fmt, ...)
{
    if (msg != NULL && *msg == NULL) {
        va_list ap;
        va_start(ap, fmt);
        *msg = kv__vasprintf(fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Give r a failed status (the first failure wins); takes msg. */
static void sreq_fail(sreq *r, int status, char *msg)
{
    if (r->status == KV_OK || r->status == KV_ECONFLICT) {
        r->status = status;
        kv__free(r->msg);
        r->msg = msg;
    } else {
        kv__free(msg);
    }
}

static char *dup_msg(const char *m)
{
    return m != NULL ? kv__strdup(m) : NULL;
}

/* The encoding of key into b (replacing its contents). */
static int encode(kv_buf *b, const kv_key *key)
{
    b->len = 0;
    return kv__key_encode(key, b);
}

/* hi = lo with its last byte (always 0x00) raised to 0x01. */
static int range_hi(const kv_buf *lo, kv_buf *hi)
{
    hi->len = 0;
    if (lo->len == 0)
        return KV_OK;
    int rc = kv_buf_append(hi, lo->data, lo->len);
    if (rc == KV_OK)
        hi->data[hi->len - 1] = 0x01;
    return rc;
}

static int bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    return sqlite3_bind_blob64(st, i, p != NULL ? p : (const void *)"",
                               (sqlite3_uint64)n, SQLITE_STATIC);
}

/* The cached statement id of c, prepared on first use. */
static int prep(conn *c, int id, sqlite3_stmt **out, char **msg)
{
    if (c->st[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, sql_text[id], -1,
                                    SQLITE_PREPARE_PERSISTENT, &c->st[id],
                                    NULL);
        if (rc != SQLITE_OK) {
            c->st[id] = NULL;
            return db_fail(c->db, rc, sql_text[id], msg);
        }
    }
    *out = c->st[id];
    return KV_OK;
}

/* Step st to SQLITE_DONE, then reset it. */
static int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what,
                     char **msg)
{
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    int out = rc == SQLITE_DONE ? KV_OK : db_fail(db, rc, what, msg);
    /* reset repeats the step's error, which is handled above */
    (void)sqlite3_reset(st);
    return out;
}

/* Run cached statement id (no parameters). */
static int exec_id(conn *c, int id, char **msg)
{
    sqlite3_stmt *st;
    int rc = prep(c, id, &st, msg);
    return rc != KV_OK ? rc : step_done(c->db, st, sql_text[id], msg);
}

/* Run one-off SQL (open and close time). */
static int exec_sql(sqlite3 *db, const char *sql, char **msg)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        if (msg != NULL && *msg == NULL)
            *msg = kv__asprintf("sqlite: %s: %s", sql,
                                err != NULL ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        return map_rc(rc);
    }
    return KV_OK;
}

/* A readable form of an encoded key for messages (never NULL unless OOM). */
static char *key_text(const void *bytes, size_t len)
{
    kv_key *k = NULL;
    if (kv__key_decode(&k, bytes, len) != KV_OK)
        return kv__strdup("(undecodable key)");
    char *t = kv__strdup(kv_key_id(k));
    kv_key_free(k);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Opening connections                                                      */
/* ------------------------------------------------------------------------ */

/* Open path with flags, busy timeout and extended codes, on the VFS named
 * vfs (NULL: the default one).  Any thread. */
static int db_open_vfs(sqlite3 **out, const char *path, int flags,
                       const char *vfs, char **msg)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db,
                             flags | SQLITE_OPEN_NOMUTEX |
                                 SQLITE_OPEN_PRIVATECACHE,
                             vfs);
    if (rc == SQLITE_OK)
        rc = sqlite3_extended_result_codes(db, 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        int code = db_fail(db, rc, path, msg);
        if (db == NULL && code == KV_EBACKEND)
            code = KV_ENOMEM; /* open_v2 leaves db NULL only on OOM */
        if (db != NULL && sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db); /* no statements: cannot happen */
        return code;
    }
    *out = db;
    return KV_OK;
}

static int db_open(sqlite3 **out, const char *path, int flags, char **msg)
{
    return db_open_vfs(out, path, flags, NULL, msg);
}

/* A reader's first job opens it (worker). */
static int reader_open(conn *c, char **msg)
{
    return db_open(&c->db, c->s->path, SQLITE_OPEN_READONLY, msg);
}

/* Read one integer from a single-row query; *found false if no row. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, bool *found,
                     bool *is_int, char **msg)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(db, rc, sql, msg);
    rc = sqlite3_step(st);
    int code = KV_OK;
    *found = false;
    if (rc == SQLITE_ROW) {
        *found = true;
        *is_int = sqlite3_column_type(st, 0) == SQLITE_INTEGER;
        *out = sqlite3_column_int64(st, 0);
    } else if (rc != SQLITE_DONE) {
        code = db_fail(db, rc, sql, msg);
    }
    /* finalize repeats the step's error, handled above */
    (void)sqlite3_finalize(st);
    return code;
}

/* Check kv_meta: the format we know and a sane token counter. */
static int schema_check(sqlite3 *db, const char *path, char **msg)
{
    int64_t v = 0;
    bool found = false, is_int = false;
    int rc = query_int(db,
                       "SELECT count(*) FROM sqlite_master WHERE type = "
                       "'table' AND name IN ('kv', 'kv_meta')",
                       &v, &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (v != 2)
        return fail_msg(KV_EBACKEND, msg,
                        "sqlite: %s: not a kvstore database (no kv and "
                        "kv_meta tables)",
                        path);
    rc = query_int(db, "SELECT value FROM kv_meta WHERE name = 'format'", &v,
                   &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (!found || !is_int)
        return fail_msg(KV_ECORRUPT, msg,
                        "sqlite: %s: kv_meta has no format row", path);
    if (v != SCHEMA_FORMAT)
        return fail_msg(KV_EBACKEND, msg,
                        "sqlite: %s: unsupported kvstore format %lld (this "
                        "library reads format %d)",
                        path, (long long)v, SCHEMA_FORMAT);
    rc = query_int(db, sql_text[ST_TOK_GET], &v, &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (!found || !is_int || v < 0)
        return fail_msg(KV_ECORRUPT, msg,
                        "sqlite: %s: kv_meta token counter is missing or "
                        "invalid",
                        path);
    return KV_OK;
}

/* Create the schema of a new database; leave an existing one alone. */
static int schema_create(sqlite3 *db, const char *path, char **msg)
{
    int rc = exec_sql(db, "BEGIN IMMEDIATE", msg);
    if (rc != KV_OK)
        return rc;
    int64_t n = 0;
    bool found = false, is_int = false;
    rc = query_int(db,
                   "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                   "AND name IN ('kv', 'kv_meta')",
                   &n, &found, &is_int, msg);
    int64_t other = 0;
    if (rc == KV_OK && n == 0)
        rc = query_int(db,
                       "SELECT count(*) FROM sqlite_master WHERE type = "
                       "'table' AND substr(name, 1, 7) <> 'sqlite_'",
                       &other, &found, &is_int, msg);
    if (rc == KV_OK && n == 0 && other > 0)
        rc = fail_msg(KV_EBACKEND, msg,
                      "sqlite: %s: not a kvstore database (it has other "
                      "tables and no kv and kv_meta tables)",
                      path);
    if (rc == KV_OK && n == 0)
        rc = exec_sql(
            db,
            "CREATE TABLE kv_meta(name TEXT PRIMARY KEY NOT NULL, "
            "value INTEGER NOT NULL);"
            "INSERT INTO kv_meta(name, value) VALUES('format', 1), "
            "('token', 0);"
            /* rowid table + UNIQUE key: measured 2-4x faster than WITHOUT
             * ROWID for 1-4 KiB values (MEASURED.md, and again here). */
            "CREATE TABLE kv(id INTEGER PRIMARY KEY, key BLOB NOT NULL "
            "UNIQUE, val BLOB NOT NULL, token INTEGER NOT NULL);",
            msg);
    if (rc == KV_OK)
        rc = exec_sql(db, "COMMIT", msg);
    if (rc != KV_OK) {
        if (!sqlite3_get_autocommit(db))
            (void)exec_sql(db, "ROLLBACK", NULL); /* best effort */
        return rc;
    }
    return KV_OK;
}

/*
 * Read the database header: a file that is not a database is KV_EBACKEND
 * with SQLite's message (as kvstore.h documents for kv_sqlite_open), not
 * the KV_ECORRUPT that SQLITE_NOTADB means for a store already open.
 */
static int probe_header(sqlite3 *db, const char *path, char **msg)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, "PRAGMA schema_version", -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    int rc = KV_OK;
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = db_fail(db, src, path, msg);
        if ((src & 0xff) == SQLITE_NOTADB)
            rc = KV_EBACKEND;
    }
    (void)sqlite3_finalize(st); /* repeats the step's error, handled */
    return rc;
}

/* Open the first connection of a store (the caller's thread). */
static int primary_open(sq *s, sqlite3 **out, char **msg)
{
    int flags = s->readonly ? SQLITE_OPEN_READONLY
                            : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (s->readonly) {
        struct stat stb;
        if (stat(s->path, &stb) != 0 && errno == ENOENT)
            return fail_msg(KV_EREADONLY, msg,
                            "sqlite: %s: no such database, and a read-only "
                            "store cannot create one",
                            s->path);
    }
    /* The writer of a durable file store gathers each commit's WAL frames
     * into one write (sqlite_vfs.c: safe with synchronous=FULL only). */
    const char *vfs = NULL;
    if (!s->memory && !s->readonly && strcmp(s->sync, "FULL") == 0)
        vfs = kv__sqlite_vfs_walbuf();
    sqlite3 *db = NULL;
    int rc = db_open_vfs(&db, s->path, flags, vfs, msg);
    if (rc != KV_OK)
        return rc;
    rc = probe_header(db, s->path, msg);
    if (rc == KV_OK && !s->memory && !s->readonly) {
        sqlite3_stmt *st = NULL;
        int src = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st,
                                     NULL);
        /*
         * Switching a new database to WAL reads, then writes: if another
         * connection (another process opening the same new file) does the
         * same, SQLite answers SQLITE_BUSY at once instead of calling the
         * busy handler (a reader waiting to write could deadlock).  Retry
         * for as long as the busy timeout would have waited.
         */
        for (int waited = 0; src == SQLITE_OK; waited += 2) {
            src = sqlite3_step(st);
            if ((src & 0xff) != SQLITE_BUSY || waited >= BUSY_TIMEOUT_MS)
                break;
            (void)sqlite3_reset(st);
            sqlite3_sleep(2);
            src = SQLITE_OK;
        }
        if (src == SQLITE_ROW) {
            const unsigned char *m = sqlite3_column_text(st, 0);
            if (m == NULL || strcmp((const char *)m, "wal") != 0)
                rc = fail_msg(KV_EBACKEND, msg,
                              "sqlite: %s: cannot use WAL mode (journal "
                              "mode is %s)",
                              s->path, m != NULL ? (const char *)m : "?");
        } else {
            rc = db_fail(db, src, s->path, msg);
        }
        (void)sqlite3_finalize(st); /* its error is handled above */
        if (rc == KV_OK) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", s->sync);
            rc = exec_sql(db, sql, msg);
        }
        if (rc == KV_OK) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA cache_size=-%d",
                     WRITER_CACHE_KIB);
            rc = exec_sql(db, sql, msg);
        }
    }
    if (rc == KV_OK && !s->readonly)
        rc = schema_create(db, s->path, msg);
    if (rc == KV_OK)
        rc = schema_check(db, s->path, msg);
    if (rc != KV_OK) {
        if (sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db);
        return rc;
    }
    *out = db;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Worker: reads                                                            */
/* ------------------------------------------------------------------------ */

/* The token of column col: a positive integer, else KV_ECORRUPT. */
static int col_token(sqlite3_stmt *st, int col, uint64_t *out, char **msg)
{
    int64_t t = sqlite3_column_int64(st, col);
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER || t <= 0)
        return fail_msg(KV_ECORRUPT, msg,
                        "sqlite: stored token is not a positive integer");
    *out = (uint64_t)t;
    return KV_OK;
}

/* A copy of blob column col into *val and *len (kv__malloc). */
static int col_value(sqlite3_stmt *st, int col, void **val, size_t *len,
                     char **msg)
{
    if (sqlite3_column_type(st, col) != SQLITE_BLOB)
        return fail_msg(KV_ECORRUPT, msg, "sqlite: stored value is not a blob");
    const void *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (n < 0 || (n > 0 && p == NULL))
        return fail_msg(KV_ENOMEM, msg, "sqlite: out of memory reading a value");
    void *v = kv__malloc(n > 0 ? (size_t)n : 1);
    if (v == NULL)
        return KV_ENOMEM;
    if (n > 0)
        memcpy(v, p, (size_t)n);
    *val = v;
    *len = (size_t)n;
    return KV_OK;
}

/* HAS / GET: each item's status, token and (GET) value. */
static void run_get(conn *c, sreq *r)
{
    kv__req *q = r->req;
    bool val = q->op == KV__OP_GET && q->want_value;
    sqlite3_stmt *st;
    char *msg = NULL;
    int rc = prep(c, val ? ST_GET : ST_HAS, &st, &msg);
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        rc = encode(&c->kb, it->key);
        if (rc != KV_OK)
            break;
        int src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = sqlite3_step(st);
        if (src == SQLITE_ROW) {
            rc = col_token(st, 0, &it->token, &msg);
            if (rc == KV_OK && val)
                rc = col_value(st, 1, &it->val, &it->len, &msg);
            it->status = KV_OK;
        } else if (src == SQLITE_DONE) {
            it->status = KV_ENOTFOUND;
        } else {
            rc = db_fail(c->db, src, "read", &msg);
        }
        (void)sqlite3_reset(st); /* repeats the step's error, handled */
    }
    if (rc != KV_OK)
        sreq_fail(r, rc, msg);
}

/* QUERY_OPEN: prepare the cursor's statement and step to its first row. */
static void run_open(conn *c, sreq *r)
{
    cursor *cu = r->cur;
    char *msg = NULL;
    cu->st = NULL;
    cu->row = false;
    if (cu->limit == 0)
        return; /* nothing to return: finished at once */
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT key, token%s FROM kv%s%s LIMIT ?3 "
             "OFFSET ?4",
             cu->value ? ", val" : "",
             cu->lo.len > 0 ? " WHERE key >= ?1 AND key < ?2" : "",
             cu->sort == KV_SORT_ASC    ? " ORDER BY key ASC"
             : cu->sort == KV_SORT_DESC ? " ORDER BY key DESC"
                                        : "");
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (src == SQLITE_OK && cu->lo.len > 0) {
        src = bind_blob(st, 1, cu->lo.data, cu->lo.len);
        if (src == SQLITE_OK)
            src = bind_blob(st, 2, cu->hi.data, cu->hi.len);
    }
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(st, 3, cu->limit);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(st, 4, cu->offset);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        cu->st = st;
        cu->row = true;
        return;
    }
    if (src != SQLITE_DONE)
        sreq_fail(r, db_fail(c->db, src, "query", &msg), msg);
    /* finalize repeats the step's error, handled above */
    (void)sqlite3_finalize(st);
}

/* End a cursor's statement (worker). */
static void cursor_finish(cursor *cu)
{
    if (cu->st != NULL) {
        /* finalize returns the statement's last error, already reported */
        (void)sqlite3_finalize(cu->st);
        cu->st = NULL;
    }
    cu->row = false;
}

/* ITER_FETCH: up to FETCH_ROWS rows or about FETCH_BYTES into req->items. */
static void run_fetch(conn *c, sreq *r)
{
    cursor *cu = r->cur;
    kv__req *q = r->req;
    char *msg = NULL;
    q->items = NULL;
    q->n = 0;
    q->eof = false;
    if (cu->st == NULL) {
        if (cu->err != KV_OK)
            sreq_fail(r, cu->err,
                      kv__strdup("sqlite: the query failed earlier"));
        else
            q->eof = true;
        return;
    }
    kv__item *items = kv__items_new(FETCH_ROWS);
    if (items == NULL) {
        sreq_fail(r, KV_ENOMEM, NULL);
        return;
    }
    size_t n = 0, bytes = 0;
    int rc = KV_OK;
    while (cu->row && n < FETCH_ROWS && bytes < FETCH_BYTES) {
        kv__item *it = &items[n];
        sqlite3_stmt *st = cu->st;
        if (sqlite3_column_type(st, 0) != SQLITE_BLOB) {
            rc = fail_msg(KV_ECORRUPT, &msg,
                          "sqlite: stored key is not a blob");
            break;
        }
        const void *kp = sqlite3_column_blob(st, 0);
        int kn = sqlite3_column_bytes(st, 0);
        if (kn <= 0 || kp == NULL) {
            /* A valid encoding is never empty; NULL otherwise is OOM. */
            rc = kn == 0 ? fail_msg(KV_ECORRUPT, &msg,
                                    "sqlite: stored key is empty")
                         : KV_ENOMEM;
            break;
        }
        rc = kv__key_decode(&it->key, kp, (size_t)kn);
        if (rc == KV_ECORRUPT)
            fail_msg(rc, &msg, "sqlite: stored key is malformed");
        if (rc == KV_OK)
            rc = col_token(st, 1, &it->token, &msg);
        if (rc == KV_OK && cu->value)
            rc = col_value(st, 2, &it->val, &it->len, &msg);
        n++; /* items[n - 1] is freed with the others on failure */
        if (rc != KV_OK)
            break;
        it->status = KV_OK;
        bytes += it->len + (size_t)kn + sizeof *it;
        int src = sqlite3_step(st);
        if (src == SQLITE_DONE) {
            cursor_finish(cu);
        } else if (src != SQLITE_ROW) {
            rc = db_fail(c->db, src, "query", &msg);
            break;
        }
    }
    if (rc != KV_OK) {
        kv__items_free(items, n);
        cu->err = rc;
        cursor_finish(cu);
        sreq_fail(r, rc, msg);
        return;
    }
    if (n == 0) {
        kv__items_free(items, 0);
        items = NULL;
    }
    q->items = items;
    q->n = n;
    q->eof = cu->st == NULL;
}

/* ------------------------------------------------------------------------ */
/* Worker: writes                                                           */
/* ------------------------------------------------------------------------ */

/* The next token (not yet consumed), or KV_ECORRUPT at the end of int64. */
static int peek_token(conn *c, int64_t *t, char **msg)
{
    if (c->tok == INT64_MAX)
        return fail_msg(KV_ECORRUPT, msg,
                        "sqlite: the token counter reached INT64_MAX");
    *t = c->tok + 1;
    return KV_OK;
}

/* Step a write statement to DONE; *changed = one row changed. */
static int step_write(conn *c, sqlite3_stmt *st, bool *changed, char **msg)
{
    int src = sqlite3_step(st);
    int rc = KV_OK;
    if (src == SQLITE_DONE)
        *changed = sqlite3_changes(c->db) == 1;
    else
        rc = db_fail(c->db, src, "write", msg);
    (void)sqlite3_reset(st); /* repeats the step's error, handled */
    return rc;
}

/* PUT / PUT_ATOMIC.  *rollback is set when an atomic batch conflicts. */
static int do_put(conn *c, kv__req *q, bool atomic, bool *rollback, char **msg)
{
    sqlite3_stmt *ins, *upd;
    int rc = prep(c, ST_INSERT, &ins, msg);
    if (rc == KV_OK)
        rc = prep(c, ST_UPDATE, &upd, msg);
    int64_t *newtok = NULL;
    if (rc == KV_OK && atomic && q->n > 0 &&
        (newtok = kv__calloc(q->n, sizeof *newtok)) == NULL)
        rc = KV_ENOMEM;
    size_t nconf = 0;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        int64_t t = 0;
        bool ok = false;
        rc = encode(&c->kb, it->key);
        if (rc == KV_OK)
            rc = peek_token(c, &t, msg);
        if (rc != KV_OK)
            break;
        sqlite3_stmt *st = it->token == 0 ? ins : upd;
        int src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = bind_blob(st, 2, it->val, it->len);
        if (src == SQLITE_OK)
            src = sqlite3_bind_int64(st, 3, t);
        if (src == SQLITE_OK && it->token != 0) /* > INT64_MAX never matches */
            src = sqlite3_bind_int64(st, 4, (sqlite3_int64)it->token);
        if (src != SQLITE_OK) {
            rc = db_fail(c->db, src, "bind", msg);
            break;
        }
        rc = step_write(c, st, &ok, msg);
        if (rc != KV_OK)
            break;
        if (ok) {
            c->tok = t;
            it->status = KV_OK;
            if (atomic)
                newtok[i] = t;
            else
                it->token = (uint64_t)t;
        } else {
            it->status = KV_ECONFLICT;
            nconf++;
        }
    }
    if (rc == KV_OK && atomic) {
        if (nconf > 0)
            *rollback = true; /* conflicting items say so; others unchanged */
        else
            for (size_t i = 0; i < q->n; i++)
                q->items[i].token = (uint64_t)newtok[i];
    }
    kv__free(newtok);
    return rc;
}

/* DELETE / DELETE_ATOMIC. */
static int do_delete(conn *c, kv__req *q, bool atomic, bool *rollback,
                     char **msg)
{
    sqlite3_stmt *st;
    int rc = prep(c, ST_DELETE, &st, msg);
    size_t nconf = 0;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        bool ok = false;
        if (it->token != 0) {
            rc = encode(&c->kb, it->key);
            if (rc != KV_OK)
                break;
            int src = bind_blob(st, 1, c->kb.data, c->kb.len);
            if (src == SQLITE_OK)
                src = sqlite3_bind_int64(st, 2, (sqlite3_int64)it->token);
            if (src != SQLITE_OK) {
                rc = db_fail(c->db, src, "bind", msg);
                break;
            }
            rc = step_write(c, st, &ok, msg);
            if (rc != KV_OK)
                break;
        }
        it->status = ok ? KV_OK : KV_ECONFLICT;
        if (!ok)
            nconf++;
    }
    if (rc == KV_OK && atomic && nconf > 0)
        *rollback = true;
    return rc;
}

/* DROP: delete each key's range. */
static int do_drop(conn *c, kv__req *q, char **msg)
{
    int rc = KV_OK;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        sqlite3_stmt *st;
        rc = encode(&c->kb, it->key);
        if (rc == KV_OK)
            rc = range_hi(&c->kb, &c->kb2);
        if (rc == KV_OK)
            rc = prep(c, c->kb.len > 0 ? ST_DROP_RANGE : ST_DROP_ALL, &st,
                      msg);
        if (rc != KV_OK)
            break;
        int src = SQLITE_OK;
        if (c->kb.len > 0) {
            src = bind_blob(st, 1, c->kb.data, c->kb.len);
            if (src == SQLITE_OK)
                src = bind_blob(st, 2, c->kb2.data, c->kb2.len);
        }
        if (src != SQLITE_OK) {
            rc = db_fail(c->db, src, "bind", msg);
            break;
        }
        rc = step_done(c->db, st, "drop", msg);
        if (rc == KV_OK)
            it->status = KV_OK;
    }
    return rc;
}

/* The rows a MOVE renames: rowid and destination key. */
typedef struct moveset {
    int64_t *ids;
    size_t *off;  /* dst of row k: dst.data[off[k] .. off[k + 1]) */
    size_t n, cap;
    kv_buf dst;
} moveset;

static int moveset_add(moveset *m, int64_t id, const kv_buf *to,
                       const unsigned char *rest, size_t nrest)
{
    if (m->n + 1 >= m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        int64_t *ids = kv__realloc(m->ids, cap * sizeof *ids);
        if (ids == NULL)
            return KV_ENOMEM;
        m->ids = ids;
        size_t *off = kv__realloc(m->off, cap * sizeof *off);
        if (off == NULL)
            return KV_ENOMEM;
        m->off = off;
        m->cap = cap;
        if (m->n == 0)
            m->off[0] = 0;
    }
    int rc = kv_buf_append(&m->dst, to->data, to->len);
    if (rc == KV_OK && nrest > 0)
        rc = kv_buf_append(&m->dst, rest, nrest);
    if (rc != KV_OK)
        return rc;
    m->ids[m->n++] = id;
    m->off[m->n] = m->dst.len;
    return KV_OK;
}

/* Collect the rows below from (encoded in c->kb) with their new keys. */
static int move_collect(conn *c, moveset *m, const kv_buf *to, char **msg)
{
    sqlite3_stmt *st;
    bool all = c->kb.len == 0;
    int rc = range_hi(&c->kb, &c->kb2);
    if (rc == KV_OK)
        rc = prep(c, all ? ST_MOVE_SEL_ALL : ST_MOVE_SEL, &st, msg);
    if (rc != KV_OK)
        return rc;
    int src = SQLITE_OK;
    if (!all) {
        src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = bind_blob(st, 2, c->kb2.data, c->kb2.len);
    }
    while (src == SQLITE_OK || src == SQLITE_ROW) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        const unsigned char *k = sqlite3_column_blob(st, 1);
        int kn = sqlite3_column_bytes(st, 1);
        if (sqlite3_column_type(st, 1) != SQLITE_BLOB || kn <= 0 ||
            k == NULL || (size_t)kn < c->kb.len ||
            (c->kb.len > 0 && memcmp(k, c->kb.data, c->kb.len) != 0)) {
            rc = fail_msg(KV_ECORRUPT, msg, "sqlite: stored key is malformed");
            break;
        }
        rc = moveset_add(m, sqlite3_column_int64(st, 0), to,
                         k + c->kb.len, (size_t)kn - c->kb.len);
        if (rc != KV_OK)
            break;
    }
    if (rc == KV_OK && src != SQLITE_DONE)
        rc = db_fail(c->db, src, "move", msg);
    (void)sqlite3_reset(st); /* repeats the step's error, handled */
    return rc;
}

/*
 * MOVE: rename every key below items[i].key to lie below items[i].key2.
 * All sources are collected first; then every moved row gets a placeholder
 * key (0x00 + rowid: a valid encoding never starts with 0x00), so rows that
 * move onto each other's old keys never collide; then each gets its
 * destination and a fresh token.  A UNIQUE failure there means a destination
 * exists that is not being moved away (or two rows land on one key): the
 * request fails KV_ECONFLICT and its savepoint is rolled back.
 */
static int do_move(conn *c, sreq *r, bool *rollback, char **msg)
{
    kv__req *q = r->req;
    moveset m;
    memset(&m, 0, sizeof m);
    kv_buf *from = kv__calloc(q->n ? q->n : 1, sizeof *from);
    kv_buf to;
    memset(&to, 0, sizeof to);
    int rc = from != NULL ? KV_OK : KV_ENOMEM;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++)
        rc = encode(&from[i], q->items[i].key);
    /* Overlapping sources would move one row twice. */
    for (size_t i = 0; rc == KV_OK && i < q->n; i++)
        for (size_t j = 0; rc == KV_OK && j < q->n; j++)
            if (i != j && from[i].len <= from[j].len &&
                (from[i].len == 0 ||
                 memcmp(from[i].data, from[j].data, from[i].len) == 0))
                rc = fail_msg(KV_EINVAL, msg,
                              "move: source %s contains source %s",
                              kv_key_id(q->items[i].key),
                              kv_key_id(q->items[j].key));
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        rc = encode(&to, q->items[i].key2);
        if (rc == KV_OK) {
            c->kb.len = 0;
            rc = kv_buf_append(&c->kb, from[i].data, from[i].len);
        }
        if (rc == KV_OK)
            rc = move_collect(c, &m, &to, msg);
    }
    sqlite3_stmt *st1 = NULL, *st2 = NULL;
    if (rc == KV_OK)
        rc = prep(c, ST_SETKEY, &st1, msg);
    if (rc == KV_OK)
        rc = prep(c, ST_SETKEY_TOK, &st2, msg);
    for (size_t k = 0; rc == KV_OK && k < m.n; k++) {
        unsigned char ph[9];
        uint64_t id = (uint64_t)m.ids[k];
        ph[0] = 0;
        for (int b = 0; b < 8; b++)
            ph[1 + b] = (unsigned char)(id >> (56 - 8 * b));
        bool ok = false;
        int src = sqlite3_bind_int64(st1, 1, m.ids[k]);
        if (src == SQLITE_OK)
            src = bind_blob(st1, 2, ph, sizeof ph);
        rc = src == SQLITE_OK ? step_write(c, st1, &ok, msg)
                              : db_fail(c->db, src, "bind", msg);
    }
    for (size_t k = 0; rc == KV_OK && k < m.n; k++) {
        int64_t t = 0;
        rc = peek_token(c, &t, msg);
        if (rc != KV_OK)
            break;
        const unsigned char *d = m.dst.data + m.off[k];
        size_t dn = m.off[k + 1] - m.off[k];
        int src = sqlite3_bind_int64(st2, 1, m.ids[k]);
        if (src == SQLITE_OK)
            src = bind_blob(st2, 2, d, dn);
        if (src == SQLITE_OK)
            src = sqlite3_bind_int64(st2, 3, t);
        if (src == SQLITE_OK)
            src = sqlite3_step(st2);
        if (src == SQLITE_DONE) {
            c->tok = t;
        } else if ((src & 0xff) == SQLITE_CONSTRAINT) {
            char *kt = key_text(d, dn);
            r->status = KV_ECONFLICT;
            kv__free(r->msg);
            r->msg = kv__asprintf("move: destination %s already exists",
                                  kt != NULL ? kt : "?");
            kv__free(kt);
            *rollback = true;
            (void)sqlite3_reset(st2); /* the constraint error, handled */
            break;
        } else {
            rc = db_fail(c->db, src, "move", msg);
        }
        (void)sqlite3_reset(st2); /* repeats the step's error, handled */
    }
    if (from != NULL)
        for (size_t i = 0; i < q->n; i++)
            kv__free(from[i].data);
    kv__free(from);
    kv__free(to.data);
    kv__free(m.ids);
    kv__free(m.off);
    kv__free(m.dst.data);
    if (rc == KV_OK && !*rollback)
        for (size_t i = 0; i < q->n; i++)
            q->items[i].status = KV_OK;
    return rc;
}

/* One write request, in a savepoint when it has more than one statement. */
static int write_req(conn *c, sreq *r, char **msg)
{
    kv__req *q = r->req;
    bool sp = !((q->op == KV__OP_PUT || q->op == KV__OP_DELETE) && q->n <= 1);
    bool rollback = false;
    int rc = sp ? exec_id(c, ST_SAVEPOINT, msg) : KV_OK;
    if (rc != KV_OK)
        return rc;
    switch (q->op) {
    case KV__OP_PUT:
    case KV__OP_PUT_ATOMIC:
        rc = do_put(c, q, q->op == KV__OP_PUT_ATOMIC, &rollback, msg);
        break;
    case KV__OP_DELETE:
    case KV__OP_DELETE_ATOMIC:
        rc = do_delete(c, q, q->op == KV__OP_DELETE_ATOMIC, &rollback, msg);
        break;
    case KV__OP_MOVE:
        rc = do_move(c, r, &rollback, msg);
        break;
    case KV__OP_DROP:
        rc = do_drop(c, q, msg);
        break;
    default:
        rc = fail_msg(KV_EINVAL, msg, "sqlite: not a write (op %d)",
                      (int)q->op);
        break;
    }
    if (!sp || sqlite3_get_autocommit(c->db))
        return rc; /* no savepoint, or the whole transaction is gone */
    if (rc == KV_OK && !rollback)
        return exec_id(c, ST_RELEASE, msg);
    int rb = exec_id(c, ST_ROLLBACK_TO, msg);
    if (rb == KV_OK)
        rb = exec_id(c, ST_RELEASE, msg);
    if (rb != KV_OK) {
        /* The request may be half-applied: abandon the transaction. */
        (void)exec_id(c, ST_ROLLBACK, NULL);
        return rc != KV_OK ? rc : rb;
    }
    return rc;
}

/* BEGIN IMMEDIATE and read the token counter. */
static int tx_begin(conn *c, char **msg)
{
    int rc = exec_id(c, ST_BEGIN_IMM, msg);
    if (rc != KV_OK)
        return rc;
    sqlite3_stmt *st;
    rc = prep(c, ST_TOK_GET, &st, msg);
    if (rc == KV_OK) {
        int src = sqlite3_step(st);
        if (src == SQLITE_ROW) {
            int64_t v = sqlite3_column_int64(st, 0);
            if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || v < 0) {
                rc = fail_msg(KV_ECORRUPT, msg,
                              "sqlite: the token counter is invalid");
            } else if (v != c->tok_max || c->tok > v) {
                /* Not our reservation (first write, another writer, or
                 * a counter changed behind our back): start above it. */
                c->tok = v;
                c->tok_max = v;
            }
        } else if (src == SQLITE_DONE) {
            rc = fail_msg(KV_ECORRUPT, msg,
                          "sqlite: the token counter is missing");
        } else {
            rc = db_fail(c->db, src, "token counter", msg);
        }
        (void)sqlite3_reset(st); /* repeats the step's error, handled */
    }
    if (rc != KV_OK && !sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL);
    return rc;
}

/* Store a new token reservation if this transaction went past the last
 * one, and COMMIT; on failure roll back (and forget the new reservation:
 * the next transaction reads the counter again). */
static int tx_commit(conn *c, char **msg)
{
    int rc = KV_OK;
    int64_t max = c->tok_max;
    if (c->tok > c->tok_max) {
        max = c->tok > INT64_MAX - TOKEN_BLOCK ? INT64_MAX
                                               : c->tok + TOKEN_BLOCK;
        sqlite3_stmt *st;
        rc = prep(c, ST_TOK_SET, &st, msg);
        if (rc == KV_OK) {
            int src = sqlite3_bind_int64(st, 1, max);
            rc = src == SQLITE_OK ? step_done(c->db, st, "token counter", msg)
                                  : db_fail(c->db, src, "bind", msg);
        }
    }
    if (rc == KV_OK)
        rc = exec_id(c, ST_COMMIT, msg);
    if (rc == KV_OK) {
        c->tok_max = max;
        c->ncommits++;
        return KV_OK;
    }
    c->tok_max = -1;
    if (!sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL);
    return rc;
}

/* Fail every write of the current transaction with rc (it was lost). */
static void tx_lost(conn *c, sreq *upto, int rc, const char *msg)
{
    for (sreq *p = c->run.head; p != NULL && p != upto; p = p->next) {
        if (!p->in_tx)
            continue;
        p->in_tx = false;
        sreq_fail(p, rc,
                  kv__asprintf("sqlite: transaction rolled back: %s",
                               msg != NULL ? msg : kv_strerror(rc)));
    }
}

/* The writer's WAL hook (worker, after each commit): replaces SQLite's
 * autocheckpoint.  The checkpoint past CKPT_HARD_PAGES is PASSIVE: busy
 * (a background checkpoint is running) just means later. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    conn *c = arg;
    c->wal_pages = pages;
    if (pages >= CKPT_HARD_PAGES)
        (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE,
                                        NULL, NULL);
    return SQLITE_OK;
}

/* A background checkpoint (worker): best effort, errors are ignored (the
 * writer's inline checkpoint and close still checkpoint).  s->ck and
 * s->ck_log are the job's while it runs (ck_busy), like a conn's handle. */
static void ck_work(kv__job *job)
{
    sq *s = KV__CONTAINER_OF(job, sq, ck_job);
    s->ck_log = -1;
    if (s->ck == NULL) {
        sqlite3 *db = NULL;
        if (db_open(&db, s->path, SQLITE_OPEN_READWRITE, NULL) != KV_OK)
            return;
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", s->sync);
        /* schema_version reads the header: the connection opens the WAL.
         * NO_CKPT_ON_CLOSE: its close must not try the exclusive lock (the
         * writer's close checkpoints). */
        if (sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1,
                              (int *)NULL) != SQLITE_OK ||
            exec_sql(db, sql, NULL) != KV_OK ||
            exec_sql(db, "PRAGMA schema_version", NULL) != KV_OK) {
            if (sqlite3_close(db) != SQLITE_OK)
                (void)sqlite3_close_v2(db);
            return;
        }
        s->ck = db;
    }
    int nlog = -1, nckpt = -1;
    if (sqlite3_wal_checkpoint_v2(s->ck, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                  &nlog, &nckpt) == SQLITE_OK)
        s->ck_log = nckpt;
}

/* ------------------------------------------------------------------------ */
/* Worker: the job of a connection                                          */
/* ------------------------------------------------------------------------ */

static void conn_work(kv__job *job)
{
    conn *c = KV__CONTAINER_OF(job, conn, job);
    c->ncommits = 0;
    if (c->max_pages > 0 && c->db != NULL) { /* test hook, writer only */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld",
                 (long long)c->max_pages);
        (void)exec_sql(c->db, sql, NULL);
    }
    if (c->db == NULL) {
        char *msg = NULL;
        int rc = reader_open(c, &msg);
        if (rc != KV_OK) {
            for (sreq *r = c->run.head; r != NULL; r = r->next)
                sreq_fail(r, rc, dup_msg(msg));
            kv__free(msg);
            return;
        }
    }
    /* A batch of point reads on a reader: one snapshot for all. */
    bool rtx = false;
    if (c->reader) {
        size_t items = 0;
        for (sreq *r = c->run.head; r != NULL; r = r->next)
            if (r->req->op == KV__OP_HAS || r->req->op == KV__OP_GET)
                items += r->req->n;
        rtx = items > 1 && exec_id(c, ST_BEGIN, NULL) == KV_OK;
    }
    bool wtx = false;
    int begin_rc = KV_OK;
    char *begin_msg = NULL;
    for (sreq *r = c->run.head; r != NULL; r = r->next) {
        switch (r->req->op) {
        case KV__OP_HAS:
        case KV__OP_GET:
            run_get(c, r);
            continue;
        case KV__OP_QUERY_OPEN:
            run_open(c, r);
            continue;
        case KV__OP_ITER_FETCH:
            run_fetch(c, r);
            continue;
        case KV__OP_ITER_DISPOSE:
            cursor_finish(r->cur);
            continue;
        default:
            break;
        }
        if (begin_rc != KV_OK) {
            sreq_fail(r, begin_rc, dup_msg(begin_msg));
            continue;
        }
        char *msg = NULL;
        if (!wtx) {
            begin_rc = tx_begin(c, &begin_msg);
            if (begin_rc != KV_OK) {
                sreq_fail(r, begin_rc, dup_msg(begin_msg));
                continue;
            }
            wtx = true;
        }
        r->in_tx = true;
        int rc = write_req(c, r, &msg);
        if (rc != KV_OK) {
            if (sqlite3_get_autocommit(c->db)) {
                /* SQLite rolled the whole transaction back. */
                tx_lost(c, r, rc, msg);
                wtx = false;
            }
            r->in_tx = false;
            sreq_fail(r, rc, msg);
        }
    }
    kv__free(begin_msg);
    if (wtx) {
        char *msg = NULL;
        int rc = tx_commit(c, &msg);
        if (rc != KV_OK)
            tx_lost(c, NULL, rc, msg);
        kv__free(msg);
        for (sreq *r = c->run.head; r != NULL; r = r->next)
            r->in_tx = false;
        /* Best effort, like the background checkpoint: a failure or a busy
         * reader just leaves the WAL to the usual thresholds. */
        if (rc == KV_OK && c->ck_finish)
            (void)sqlite3_wal_checkpoint_v2(c->db, NULL,
                                            SQLITE_CHECKPOINT_PASSIVE, NULL,
                                            NULL);
    }
    if (rtx && exec_id(c, ST_COMMIT, NULL) != KV_OK &&
        !sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL); /* a read: nothing to lose */
}

/* ------------------------------------------------------------------------ */
/* Loop thread: scheduling                                                  */
/* ------------------------------------------------------------------------ */

static void conn_done(kv__job *job, int status);
static void soon_done(kv__job *job, int status);
static void ck_done(kv__job *job, int status);
static void ck_kick(sq *s);
static void maybe_close(sq *s);
static void soon(sq *s, sreq *r, int status, const char *fmt, ...)
    KV__PRINTF(4, 5);

static conn *conn_new(sq *s, bool reader)
{
    conn *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->s = s;
    c->reader = reader;
    c->next = s->conns;
    s->conns = c;
    s->stats.connections++;
    return c;
}

/* Start c's job on everything waiting for it. */
static void conn_start(conn *c, squeue *take)
{
    sq *s = c->s;
    c->run = *take;
    memset(take, 0, sizeof *take);
    for (sreq *r = c->run.head; r != NULL; r = r->next) {
        r->q = NULL;
        r->c = c;
        r->where = W_RUNNING;
    }
    c->busy = true;
    s->pending++;
    c->max_pages = 0;
    c->ck_finish = false;
    if (c == s->writer && !s->memory && !s->ck_busy && !s->ck_finished &&
        s->ck_done > 0 && c->wal_pages >= s->ck_done &&
        c->wal_pages - s->ck_done <= CKPT_FINISH_PAGES) {
        c->ck_finish = true;
        s->ck_finished = true;
    }
    if (c == s->writer && s->max_pages_set) {
        c->max_pages = s->max_pages_req;
        s->max_pages_set = false;
    }
    memset(&c->job, 0, sizeof c->job);
    c->job.work = conn_work;
    c->job.done = conn_done;
    kv__pool_submit(s->pool, s->loop, &c->job);
}

/* If c is idle and requests wait for it, run them all in one job now. */
static void kick_now(conn *c)
{
    if (c->busy || c->wait.head == NULL)
        return;
    if (c == c->s->writer) {
        size_t w = 0;
        for (sreq *r = c->wait.head; r != NULL; r = r->next)
            w += is_write(r->req->op);
        if (w > 0) {
            c->s->stats.groups++;
            c->s->stats.write_reqs += w;
            if (w > c->s->stats.max_group)
                c->s->stats.max_group = w;
        }
    }
    conn_start(c, &c->wait);
}

static void wstart_cb(kv__op *op, int res, uint32_t flags)
{
    sq *s = KV__CONTAINER_OF(op, sq, wstart_op);
    (void)res; /* a NOP (or a fault-injected failure): start either way */
    (void)flags;
    s->wstart_armed = false;
    s->pending--;
    kick_now(s->writer);
    maybe_close(s);
}

/*
 * If c is idle and requests wait for it, run them all in one job: now for a
 * reader; for the writer at the end of this loop turn.  The writer's group
 * is what waits when it starts: when a group completes, its callbacks
 * submit the next writes one by one, and starting the writer on the first
 * of them would split the next group in two (a group of one, then the
 * rest), two commits and two fsyncs where one does.  A NOP on the ring
 * completes once the loop has run the callbacks that are due, whatever
 * they submitted is then in the group.  If no SQE can be had, start now.
 */
static void kick(conn *c)
{
    sq *s = c->s;
    if (c != s->writer || c->busy || c->wait.head == NULL) {
        kick_now(c);
        return;
    }
    if (s->wstart_armed)
        return;
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(s->loop, &sqe, 1) != KV_OK) {
        kick_now(c);
        return;
    }
    io_uring_prep_nop(sqe);
    s->wstart_op.cb = wstart_cb;
    io_uring_sqe_set_data64(sqe, (uintptr_t)&s->wstart_op);
    s->wstart_armed = true;
    s->pending++; /* close waits for the NOP's completion */
}

/* File stores: hand waiting reads to idle (or new) readers. */
static void dispatch_reads(sq *s)
{
    while (s->rq.head != NULL && s->nread_jobs < s->max_read_jobs &&
           !s->closing) {
        conn *c = s->idle;
        if (c != NULL) {
            s->idle = c->next_idle;
            c->next_idle = NULL;
        } else if ((c = conn_new(s, true)) == NULL) {
            sreq *r = s->rq.head;
            q_remove(&s->rq, r);
            soon(s, r, KV_ENOMEM, NULL);
            continue;
        }
        squeue take;
        memset(&take, 0, sizeof take);
        sreq *r = s->rq.head;
        if (r->req->op == KV__OP_QUERY_OPEN) {
            q_remove(&s->rq, r);
            q_push(&take, r);
            c->pin = r->cur;
            r->cur->c = c;
        } else {
            size_t avail = s->max_read_jobs - s->nread_jobs;
            size_t want = (s->rq.n + avail - 1) / avail;
            if (want > READ_BATCH)
                want = READ_BATCH;
            while ((r = s->rq.head) != NULL && take.n < want &&
                   r->req->op != KV__OP_QUERY_OPEN) {
                q_remove(&s->rq, r);
                q_push(&take, r);
            }
        }
        c->rq_job = true;
        s->nread_jobs++;
        s->stats.read_jobs++;
        conn_start(c, &take);
    }
}

static void noop_work(kv__job *job)
{
    (void)job;
}

static void soon_kick(sq *s)
{
    if (s->soon_busy)
        return;
    s->soon_busy = true;
    memset(&s->soon_job, 0, sizeof s->soon_job);
    s->soon_job.work = noop_work;
    s->soon_job.done = soon_done;
    kv__pool_submit(s->pool, s->loop, &s->soon_job);
}

/* Complete r later (never inside submit, cancel or close). */
static void soon(sq *s, sreq *r, int status, const char *fmt, ...)
{
    if (status != KV_OK && r->status == KV_OK) {
        r->status = status;
        if (fmt != NULL) {
            va_list ap;
            va_start(ap, fmt);
            r->msg = kv__vasprintf(fmt, ap);
            va_end(ap);
        }
    }
    q_push(&s->soon, r);
    r->where = W_SOON;
    soon_kick(s);
}

static void cursor_free(sq *s, cursor *cu)
{
    if (cu->prev != NULL)
        cu->prev->next = cu->next;
    else
        s->cursors = cu->next;
    if (cu->next != NULL)
        cu->next->prev = cu->prev;
    if (cu->c != NULL && cu->c->pin == cu)
        cu->c->pin = NULL;
    kv__free(cu->lo.data);
    kv__free(cu->hi.data);
    kv__free(cu);
}

/* Loop-side bookkeeping of a finished request (before kv__req_done). */
static void finish_one(sq *s, sreq *r)
{
    kv__req *q = r->req;
    cursor *cu = r->cur;
    switch (q->op) {
    case KV__OP_QUERY_OPEN:
        if (r->status == KV_OK) {
            cu->live = cu->st != NULL;
            q->iter->bpriv = cu;
        } else if (cu != NULL) {
            cursor_free(s, cu);
            r->cur = NULL;
        }
        break;
    case KV__OP_ITER_FETCH:
        if (cu != NULL)
            cu->live = cu->st != NULL;
        break;
    case KV__OP_ITER_DISPOSE:
        if (cu != NULL) {
            cu->live = cu->st != NULL;
            if (!cu->live) {
                q->iter->bpriv = NULL;
                r->dead = cu; /* freed after completion: r may live in it */
                r->cur = NULL;
            } /* else not run (pool shutdown): close finalizes it */
        }
        break;
    default:
        break;
    }
}

static void complete(sq *s, sreq *r)
{
    kv__req *q = r->req;
    int status = r->status;
    char *msg = r->msg;
    cursor *dead = r->dead;
    q->bpriv = NULL;
    if (r->embedded)
        KV__CONTAINER_OF(r, cursor, dsr)->dsr_busy = false;
    else
        kv__free(r);
    if (dead != NULL)
        cursor_free(s, dead); /* r is gone if it was dead->dsr */
    if (msg != NULL) {
        kv__req_done(q, status, "%s", msg);
        kv__free(msg);
    } else {
        kv__req_done(q, status, NULL);
    }
}

static void conn_done(kv__job *job, int status)
{
    conn *c = KV__CONTAINER_OF(job, conn, job);
    sq *s = c->s;
    squeue run = c->run;
    memset(&c->run, 0, sizeof c->run);
    c->busy = false;
    s->pending--;
    s->stats.commits += c->ncommits;
    c->ncommits = 0;
    if (c->rq_job) {
        c->rq_job = false;
        s->nread_jobs--;
    }
    for (sreq *r = run.head; r != NULL; r = r->next) {
        r->where = W_NONE;
        r->c = NULL;
        if (status == KV_ECANCELED) /* the pool dropped the job unrun */
            sreq_fail(r, KV_ECANCELED, NULL);
        if (r->req->op == KV__OP_ITER_FETCH)
            s->stats.fetches++;
        finish_one(s, r);
    }
    if (c->reader) {
        if (c->pin != NULL && !c->pin->live && c->wait.head == NULL) {
            c->pin->c = NULL;
            c->pin = NULL;
        }
        if (c->pin == NULL && c->wait.head == NULL) {
            c->next_idle = s->idle;
            s->idle = c;
        }
    }
    if (c == s->writer)
        ck_kick(s);
    sreq *next;
    for (sreq *r = run.head; r != NULL; r = next) {
        next = r->next;
        complete(s, r);
    }
    kick(c);
    dispatch_reads(s);
    maybe_close(s);
}

/* Start a background checkpoint if the WAL grew enough since the last. */
static void ck_kick(sq *s)
{
    /* Called from the writer's done only: its wal_pages is ours to read
     * now, not once its next job runs (ck_done uses this copy). */
    int pages = s->writer->wal_pages;
    if (pages < s->ck_seen || pages < s->ck_done) {
        s->ck_done = 0; /* the WAL was restarted */
        s->ck_finished = false;
        s->ck_commits = s->stats.commits;
    }
    s->ck_seen = pages;
    int fresh = pages - s->ck_done;
    bool due = fresh >= CKPT_PAGES ||
               (fresh >= CKPT_MIN_PAGES &&
                s->stats.commits - s->ck_commits >= CKPT_COMMITS);
    /* Past CKPT_HARD_PAGES the writer's own checkpoint must not find this
     * one running (it would be busy, and the WAL would keep growing). */
    if (s->ck_busy || s->closing || s->memory || !due ||
        pages >= CKPT_HARD_PAGES)
        return;
    s->ck_commits = s->stats.commits;
    s->ck_busy = true;
    s->pending++;
    memset(&s->ck_job, 0, sizeof s->ck_job);
    s->ck_job.work = ck_work;
    s->ck_job.done = ck_done;
    kv__pool_submit(s->pool, s->loop, &s->ck_job);
}

static void ck_done(kv__job *job, int status)
{
    sq *s = KV__CONTAINER_OF(job, sq, ck_job);
    s->ck_busy = false;
    s->pending--;
    if (status == KV_OK && s->ck_log >= 0)
        s->ck_done = s->ck_log;
    else if (s->writer != NULL) /* failed: wait for CKPT_PAGES more */
        s->ck_done = s->ck_seen;
    maybe_close(s);
}

static void soon_done(kv__job *job, int status)
{
    sq *s = KV__CONTAINER_OF(job, sq, soon_job);
    (void)status; /* nothing ran: the completions are the same either way */
    s->soon_busy = false;
    squeue list = s->soon;
    memset(&s->soon, 0, sizeof s->soon);
    kv__req *oom = s->oom;
    s->oom = NULL;
    for (sreq *r = list.head; r != NULL; r = r->next)
        finish_one(s, r);
    sreq *next;
    for (sreq *r = list.head; r != NULL; r = next) {
        next = r->next;
        complete(s, r);
    }
    while (oom != NULL) {
        kv__req *q = oom;
        oom = q->bpriv;
        q->bpriv = NULL;
        kv__req_done(q, KV_ENOMEM, NULL);
    }
    maybe_close(s);
}

/* ------------------------------------------------------------------------ */
/* Loop thread: the backend operations                                      */
/* ------------------------------------------------------------------------ */

/* A cursor for iter's query (loop thread; no SQLite). */
static cursor *cursor_new(sq *s, const kv_iter *it)
{
    cursor *cu = kv__calloc(1, sizeof *cu);
    if (cu == NULL)
        return NULL;
    if (encode(&cu->lo, it->q.key) != KV_OK ||
        range_hi(&cu->lo, &cu->hi) != KV_OK) {
        kv__free(cu->lo.data);
        kv__free(cu->hi.data);
        kv__free(cu);
        return NULL;
    }
    cu->value = it->q.value;
    cu->sort = it->q.sort;
    cu->offset = it->q.offset;
    cu->limit = it->q.limit;
    cu->next = s->cursors;
    if (s->cursors != NULL)
        s->cursors->prev = cu;
    s->cursors = cu;
    return cu;
}

/* Reads of a memory store queue on its one connection. */
static void queue_read(sq *s, sreq *r)
{
    if (s->memory) {
        q_push(&s->writer->wait, r);
        kick(s->writer);
    } else {
        q_push(&s->rq, r);
        dispatch_reads(s);
    }
}

static void sq_submit(kv_store *store, kv__req *req)
{
    sq *s = store->backend;
    sreq *r = NULL;
    cursor *dc = req->op == KV__OP_ITER_DISPOSE && req->iter != NULL
                     ? req->iter->bpriv
                     : NULL;
    if (dc != NULL && !dc->dsr_busy) {
        r = &dc->dsr;
        memset(r, 0, sizeof *r);
        r->embedded = true;
        dc->dsr_busy = true;
    } else {
        r = kv__calloc(1, sizeof *r);
    }
    if (r == NULL) {
        req->bpriv = s->oom;
        s->oom = req;
        soon_kick(s);
        return;
    }
    r->req = req;
    req->bpriv = r;
    if (s->closing) {
        soon(s, r, KV_ECLOSED, "the store is closed");
        return;
    }
    cursor *cu;
    switch (req->op) {
    case KV__OP_HAS:
    case KV__OP_GET:
        queue_read(s, r);
        return;
    case KV__OP_QUERY_OPEN:
        if (req->iter == NULL || (r->cur = cursor_new(s, req->iter)) == NULL) {
            soon(s, r, req->iter == NULL ? KV_EINVAL : KV_ENOMEM, NULL);
            return;
        }
        if (s->memory)
            r->cur->c = s->writer;
        queue_read(s, r);
        return;
    case KV__OP_ITER_FETCH:
    case KV__OP_ITER_DISPOSE:
        cu = req->iter != NULL ? req->iter->bpriv : NULL;
        r->cur = cu;
        if (cu == NULL) {
            if (req->op == KV__OP_ITER_FETCH)
                soon(s, r, KV_EITER, "iterator has no cursor");
            else
                soon(s, r, KV_OK, NULL);
            return;
        }
        if (!cu->live || cu->c == NULL) {
            /* Finished or failed: no statement to touch. */
            if (req->op == KV__OP_ITER_FETCH) {
                req->items = NULL;
                req->n = 0;
                req->eof = true;
                if (cu->err != KV_OK)
                    r->status = cu->err;
            }
            soon(s, r, KV_OK, NULL);
            return;
        }
        q_push(&cu->c->wait, r);
        kick(cu->c);
        return;
    case KV__OP_PUT:
    case KV__OP_DELETE:
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
    case KV__OP_MOVE:
    case KV__OP_DROP:
        if (s->writer == NULL) {
            soon(s, r, KV_EREADONLY, "the store is read-only");
            return;
        }
        q_push(&s->writer->wait, r);
        kick(s->writer);
        return;
    default:
        soon(s, r, KV_EINVAL, "sqlite: unknown request %d", (int)req->op);
        return;
    }
}

static bool in_oom_list(sq *s, kv__req *req)
{
    for (kv__req *q = s->oom; q != NULL; q = q->bpriv)
        if (q == req)
            return true;
    return false;
}

static void sq_cancel(kv_store *store, kv__req *req)
{
    sq *s = store->backend;
    if (s->oom != NULL && in_oom_list(s, req))
        return;
    sreq *r = req->bpriv;
    if (r == NULL || req->op == KV__OP_ITER_DISPOSE ||
        req->op == KV__OP_CLOSE)
        return;
    if (r->where == W_QUEUED) {
        q_remove(r->q, r);
        soon(s, r, KV_ECANCELED, NULL);
    } else if (r->where == W_RUNNING && r->c != NULL &&
               r->c->run.head == r && r->c->run.tail == r) {
        /* Alone in a job that has not started: its done gets ECANCELED. */
        (void)kv__pool_cancel(s->pool, &r->c->job);
    }
}

static void close_work(kv__job *job)
{
    sq *s = KV__CONTAINER_OF(job, sq, close_job);
    for (cursor *cu = s->cursors; cu != NULL; cu = cu->next)
        cursor_finish(cu);
    if (s->ck != NULL) { /* before the writer: its close checkpoints last */
        if (sqlite3_close(s->ck) != SQLITE_OK)
            (void)sqlite3_close_v2(s->ck); /* no statements: cannot happen */
        s->ck = NULL;
    }
    for (conn *c = s->conns; c != NULL; c = c->next) {
        for (int i = 0; i < ST_COUNT; i++) {
            if (c->st[i] == NULL)
                continue;
            /* finalize returns the statement's last error, reported then */
            (void)sqlite3_finalize(c->st[i]);
            c->st[i] = NULL;
        }
        if (c->db == NULL)
            continue;
        int rc = sqlite3_close(c->db);
        if (rc != SQLITE_OK) {
            if (s->close_status == KV_OK)
                s->close_status = db_fail(c->db, rc, "close", &s->close_msg);
            (void)sqlite3_close_v2(c->db); /* freed once unused */
        }
        c->db = NULL;
    }
}

static void close_done(kv__job *job, int status)
{
    sq *s = KV__CONTAINER_OF(job, sq, close_job);
    kv__req *req = s->close_req;
    s->close_req = NULL;
    if (status == KV_ECANCELED && s->close_status == KV_OK) {
        /* The pool shut down first: destroy closes the handles. */
        s->close_status = KV_ECANCELED;
    }
    if (s->close_msg != NULL)
        kv__req_done(req, s->close_status, "%s", s->close_msg);
    else
        kv__req_done(req, s->close_status, NULL);
}

static void maybe_close(sq *s)
{
    if (!s->closing || s->close_started || s->pending > 0 || s->soon_busy ||
        s->close_req == NULL)
        return;
    s->close_started = true;
    memset(&s->close_job, 0, sizeof s->close_job);
    s->close_job.work = close_work;
    s->close_job.done = close_done;
    kv__pool_submit(s->pool, s->loop, &s->close_job);
}

/* Every request still waiting in q completes KV_ECANCELED. */
static void cancel_queue(sq *s, squeue *q)
{
    sreq *r;
    while ((r = q->head) != NULL) {
        q_remove(q, r);
        soon(s, r, KV_ECANCELED, "the store is closing");
    }
}

static void sq_close(kv_store *store, kv__req *req)
{
    sq *s = store->backend;
    if (s->closing) {
        /* Not expected (the store layer closes once); finish it anyway. */
        sreq *r = kv__calloc(1, sizeof *r);
        if (r == NULL) {
            req->bpriv = s->oom;
            s->oom = req;
            soon_kick(s);
            return;
        }
        r->req = req;
        soon(s, r, KV_OK, NULL);
        return;
    }
    s->closing = true;
    s->close_req = req;
    cancel_queue(s, &s->rq);
    for (conn *c = s->conns; c != NULL; c = c->next) {
        cancel_queue(s, &c->wait);
        if (c->busy)
            (void)kv__pool_cancel(s->pool, &c->job); /* done: ECANCELED */
    }
    if (s->ck_busy)
        (void)kv__pool_cancel(s->pool, &s->ck_job); /* done: ECANCELED */
    maybe_close(s); /* submits the close job when nothing is in flight */
}

static void sq_destroy(kv_store *store)
{
    sq *s = store->backend;
    if (s == NULL)
        return;
    /* Handles are still open only if the close job never ran (the pool
     * went away first): close them here rather than leak them. */
    close_work(&s->close_job);
    while (s->cursors != NULL)
        cursor_free(s, s->cursors);
    conn *next;
    for (conn *c = s->conns; c != NULL; c = next) {
        next = c->next;
        kv__free(c->kb.data);
        kv__free(c->kb2.data);
        kv__free(c);
    }
    kv__free(s->close_msg);
    kv__free(s->path);
    kv__free(s);
    store->backend = NULL;
}

const struct kv_backend_ops kv__sqlite_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "sqlite",
    .atomic_batch = true,
    .submit = sq_submit,
    .cancel = sq_cancel,
    .close = sq_close,
    .destroy = sq_destroy,
};

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

int kv__sqlite_stats(const kv_store *store, struct kv__sqlite_stats *out)
{
    if (store == NULL || out == NULL || store->ops != &kv__sqlite_ops ||
        store->backend == NULL)
        return KV_EINVAL;
    const sq *s = store->backend;
    *out = s->stats;
    return KV_OK;
}

#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
int kv__sqlite_set_max_pages(kv_store *store, int64_t pages)
{
    if (store == NULL || store->ops != &kv__sqlite_ops ||
        store->backend == NULL)
        return KV_EINVAL;
    sq *s = store->backend;
    if (s->writer == NULL)
        return KV_EINVAL;
    s->max_pages_req = pages > 0 ? pages : 1073741823; /* SQLite's old max */
    s->max_pages_set = true;
    return KV_OK;
}
#endif

int kv_sqlite_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                   const char *path, unsigned flags)
{
    if (out == NULL || loop == NULL || pool == NULL || path == NULL ||
        path[0] == '\0') {
        kv__set_errmsg("kv_sqlite_open: out, loop, pool and a non-empty "
                       "path are required");
        return KV_EINVAL;
    }
    if ((flags & ~(KV_READONLY | KV_SYNC_FULL | KV_NO_FSYNC)) != 0 ||
        ((flags & KV_SYNC_FULL) && (flags & KV_NO_FSYNC))) {
        kv__set_errmsg("kv_sqlite_open: bad flags 0x%x", flags);
        return KV_EINVAL;
    }
    bool memory = strcmp(path, KV_SQLITE_MEMORY) == 0;
    if (memory && (flags & KV_READONLY)) {
        kv__set_errmsg("kv_sqlite_open: a read-only in-memory store would "
                       "always be empty");
        return KV_EINVAL;
    }
    if (!sqlite3_threadsafe()) {
        kv__set_errmsg("kv_sqlite_open: SQLite was built without thread "
                       "support (SQLITE_THREADSAFE=0)");
        return KV_EBACKEND;
    }
    sq *s = kv__calloc(1, sizeof *s);
    if (s == NULL || (s->path = kv__strdup(path)) == NULL) {
        kv__free(s);
        kv__set_errmsg("kv_sqlite_open: out of memory");
        return KV_ENOMEM;
    }
    s->loop = loop;
    s->pool = pool;
    s->memory = memory;
    s->readonly = (flags & KV_READONLY) != 0;
    s->sync = (flags & KV_SYNC_FULL)  ? "FULL"
              : (flags & KV_NO_FSYNC) ? "OFF"
                                      : "NORMAL";
    s->max_read_jobs = READ_JOBS_PER_THREAD * kv_pool_size(pool);
    if (s->max_read_jobs == 0)
        s->max_read_jobs = 1;

    char *msg = NULL;
    sqlite3 *db = NULL;
    int rc = primary_open(s, &db, &msg);
    conn *c = NULL;
    if (rc == KV_OK && (c = conn_new(s, s->readonly)) == NULL)
        rc = KV_ENOMEM;
    if (rc == KV_OK) {
        c->db = db;
        db = NULL;
        if (s->readonly) {
            c->next_idle = s->idle; /* the first reader */
            s->idle = c;
        } else {
            s->writer = c;
            c->tok_max = -1;
            if (!s->memory)
                (void)sqlite3_wal_hook(c->db, wal_hook, c);
        }
        rc = kv__store_new(out, &kv__sqlite_ops, s, loop, pool, flags);
    }
    if (rc != KV_OK) {
        kv__set_errmsg("%s", msg != NULL ? msg : kv_strerror(rc));
        kv__free(msg);
        if (db != NULL && sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db);
        kv_store tmp;
        memset(&tmp, 0, sizeof tmp);
        tmp.backend = s;
        sq_destroy(&tmp); /* closes c->db on this (opening) thread */
        return rc;
    }
    kv__free(msg);
    return KV_OK;
}
