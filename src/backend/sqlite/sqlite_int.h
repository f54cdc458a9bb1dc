/*
 * backend/sqlite/sqlite_int.h - private to the SQLite backend: its state
 * (the store, its connections, requests and cursors), the cached
 * statements, and the functions its files share.  Which thread runs what is
 * said at each declaration and in docs/DESIGN.md ("backend/sqlite").
 */
#ifndef KV_BACKEND_SQLITE_INT_H
#define KV_BACKEND_SQLITE_INT_H

#include "backend/sqlite/sqlite.h"
#include "util/list.h"

#include <sqlite3.h>

/* WAL checkpoints (file stores): the thresholds the writer's WAL hook and
 * the loop's background checkpoints use (why: docs/DESIGN.md). */
/* CKPT_PAGES: small, so that each background checkpoint copies and syncs a
 * few hundred pages; one of ~1,800 (half the default bound, the rule
 * before) held the writer's fsyncs behind its own for 20-30 ms, which set
 * the write tail (docs/PERF.md, "Checkpoint size and the write tail").
 * KV_SQLITE_CKPT_PAGES at open overrides it (CKPT_PAGES_MIN to _MAX):
 * larger checkpoints copy a page rewritten within a cycle once, for
 * 10-15% more durable writes/s and twice the tail. */
#define CKPT_PAGES 256           /* new WAL pages that start a checkpoint   */
#define CKPT_PAGES_MIN 16
#define CKPT_PAGES_MAX 1000000
#define CKPT_PAGES_ENV "KV_SQLITE_CKPT_PAGES"
#define CKPT_COMMITS 1000        /* ... or commits (light loads)            */
#define CKPT_MIN_PAGES 256       /* ... with at least this many new pages   */
#define CKPT_FINISH_PAGES 64     /* rest the writer checkpoints to restart  */
/* The WAL's bound in bytes (KV_SQLITE_WAL_MAX in the environment at open
 * overrides it): the writer checkpoints inline past it, less room for one
 * group commit, and journal_size_limit truncates the file back to it (see
 * wal_bound, sqlite_conn.c).  The thresholds above shrink to fit a small
 * bound. */
#define WAL_MAX_DEFAULT (16 << 20)
/* Under synchronous=NORMAL commits do not sync the WAL, and the restart is
 * the writes' one stall: SQLite restarts the WAL only once a checkpoint
 * has copied all of it and synced the database, with no commit between.
 * So the WAL restarts at most once per RESTART_MS below half its bound,
 * which is WAL_MAX_NORMAL there: under a heavy load it holds about a
 * second of writes (docs/PERF.md, "Restarts of the WAL under NORMAL").
 * Under FULL every commit's sync would pay for the file's growth: there
 * the WAL restarts as soon as it can, within WAL_MAX_DEFAULT. */
#define WAL_MAX_NORMAL (256 << 20)
#define RESTART_MS 1000
#define WAL_MAX_MIN (256 << 10)
#define WAL_MAX_MAX (1ull << 40)
#define WAL_MAX_ENV "KV_SQLITE_WAL_MAX"
#define WAL_WRITEBACK_PAGES 256 /* see sq.wal_fd */
#define BUSY_TIMEOUT_MS 5000 /* every connection's busy timeout; the most the
                                writer waits for a checkpoint at the bound */
#define READ_BATCH 64        /* point-read requests per reader job at most */

/* ------------------------------------------------------------------------ */
/* Cached statements (their SQL: sqlite_schema.c)                           */
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
    ST_UPSERT,     /* KV_TOKEN_ANY put */
    ST_DELETE_ANY, /* KV_TOKEN_ANY delete */
    ST_DROP_RANGE,
    ST_DROP_ALL,
    ST_MOVE_SEL,
    ST_MOVE_SEL_ALL,
    ST_SETKEY,
    ST_SETKEY_TOK,
    ST_COUNT
};

extern const char *const sqlite__sql[ST_COUNT];

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct sq sq;
typedef struct conn conn;
typedef struct cursor cursor;
typedef struct sreq sreq;

/* Requests in a queue, or in a job's run list: sreq.link nodes. */
typedef struct squeue {
    kv__list head;
    size_t n;
} squeue;

/* Where a request is (loop thread). */
enum { W_NONE, W_QUEUED, W_RUNNING, W_SOON };

/* The backend's side of one kv__req (req->bpriv). */
struct sreq {
    kv__list link;     /* the queue it waits in, or its job's run list */
    kv__req *req;
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
    kv__list link;       /* s->cursors */
    conn *c;             /* its connection (file: pinned while live) */
    /* The query, copied on the loop thread at submit. */
    kv_buf lo, hi;       /* the range: key >= lo (if has_lo), < hi (has_hi) */
    bool has_lo, has_hi;
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
    bool map;                   /* connections read the file's map (VFS) */
    const char *sync;         /* PRAGMA synchronous value */
    conn *writer;             /* NULL for read-only stores */
    conn *conns;              /* every connection */
    conn *idle;               /* file: readers with nothing to do */
    unsigned nread_jobs, max_read_jobs;
    squeue rq;                /* file: point reads and query opens waiting */
    kv__list cursors;         /* cursor.link */
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
    kv__op rstart_op;         /* the same for the queued point reads */
    bool rstart_armed;
    /* The writer's gathering (sqlite_sched.c, gather): after a group with
     * writes from other threads, the next group waits until as many came
     * back, or for a timeout of a quarter of the last group's time. */
    kv__op wgather_op;
    struct __kernel_timespec wgather_ts;
    bool wgather_armed;       /* the timeout is in flight */
    bool wgathering;          /* the writer's start waits */
    unsigned wrun_fwd;        /* forwarded writes in the running group */
    unsigned wexpect;         /* forwarded writes in the last group */
    unsigned wgot;            /* forwarded writes queued since it ended */
    uint64_t wjob_t0;         /* the running group's start (ns) */
    uint64_t wjob_ns;         /* the last group's time */
    uint64_t wgather_fixed_ns; /* test hook: the wait instead (0: none) */
    /* Background checkpoints (file stores with a writer). */
    kv__job ck_job;
    kv_pool *ck_pool;         /* its own one-thread pool (NULL: s->pool) */
    bool ck_busy;             /* ck_job queued or running */
    sqlite3 *ck;              /* its connection, opened by its first job */
    int ck_done;              /* WAL pages backfilled by the last one */
    int ck_seen;              /* writer->wal_pages as of its last done */
    uint64_t ck_commits;      /* stats.commits when the last one started
                               * (or the WAL restarted) */
    int ck_log;               /* worker: WAL pages that job saw */
    bool ck_finished;         /* the writer checkpointed inline to restart
                               * the WAL (once per WAL cycle) */
    /* The WAL's bound (wal_bound, sqlite_conn.c): bytes, and in WAL pages
     * when the writer checkpoints inline (hard) or a background one is due
     * (pages, or min_pages after CKPT_COMMITS commits). */
    int64_t wal_max;
    int ckpt_pages;           /* CKPT_PAGES, or CKPT_PAGES_ENV's */
    int ck_hard, ck_pages, ck_min_pages;
    /* The WAL is due to restart at ck_pages pages once restart_ns have
     * passed since it last did (ck_cycle_ns, kv__now_ns: at open, then
     * when ck_kick sees a restart), and at ck_restart pages whatever the
     * time (ck_pages with restart_ns 0). */
    int ck_restart;
    uint64_t restart_ns, ck_cycle_ns;
    /* Past ck_late WAL pages no new background checkpoint starts: the
     * writer checkpoints what is left and restarts the WAL before ck_hard
     * (between ck_restart and ck_hard). */
    int ck_late;
    /* NORMAL file stores, the writer's WAL hook (worker): every
     * WAL_WRITEBACK_PAGES new WAL pages it starts their writeback through
     * wal_fd, its own read-only descriptor of the WAL (-1: not open yet,
     * or wal_wb_off after a failure), so the checkpoint that syncs the
     * WAL finds little to write (docs/PERF.md). */
    int wal_fd;
    int wal_wb_pages;         /* WAL pages at the last writeback */
    bool wal_wb_off;
    /* Test hook (kv__sqlite_set_max_pages), loop thread: handed to the
     * writer's next job by conn_start. */
    int64_t max_pages_req;
    bool max_pages_set;
    /* Point reads made on other threads (file stores; sqlite_any.c): queued
     * by the calling thread, run by jobs on readers of their own, each
     * completed on its caller's loop.  mu guards the rest of any. */
    struct {
        pthread_mutex_t mu;
        bool on;              /* mu initialised and readers made */
        squeue q;             /* requests waiting for a job */
        conn *idle;           /* its readers with no job (next_idle) */
        unsigned jobs;        /* of them, queued or running */
        bool closing;         /* close started: take nothing more */
        uint64_t reads, batches; /* requests run, jobs' batches (stats) */
        uint64_t posts;       /* pushes of their completions (stats) */
        kv__job closer;       /* close waits for it: the last job to end
                               * at close posts it to the loop */
    } any;
    bool any_wait;            /* loop: close waits for any.jobs to be 0 */
};

/* ------------------------------------------------------------------------ */
/* Request queues (loop thread, or the job that owns a run list)            */
/* ------------------------------------------------------------------------ */

static inline void q_init(squeue *q)
{
    kv__list_init(&q->head);
    q->n = 0;
}

/* The first request of q, or NULL. */
static inline sreq *q_first(squeue *q)
{
    kv__list *l = kv__list_first(&q->head);
    return l != NULL ? KV__LIST_ENTRY(l, sreq, link) : NULL;
}

/* The request after r in q, or NULL. */
static inline sreq *q_next(squeue *q, sreq *r)
{
    return r->link.next != &q->head ? KV__LIST_ENTRY(r->link.next, sreq, link)
                                    : NULL;
}

static inline void q_push(squeue *q, sreq *r)
{
    kv__list_push_back(&q->head, &r->link);
    q->n++;
    r->q = q;
    r->where = W_QUEUED;
}

static inline void q_remove(squeue *q, sreq *r)
{
    kv__list_remove(&r->link);
    r->q = NULL;
    r->where = W_NONE;
    q->n--;
}

/* Unlink and return q's first request (its where and q left alone). */
static inline sreq *q_pop(squeue *q)
{
    kv__list *l = kv__list_pop_front(&q->head);
    if (l == NULL)
        return NULL;
    q->n--;
    return KV__LIST_ENTRY(l, sreq, link);
}

/* Move every request of from to the end of to. */
static inline void q_take(squeue *to, squeue *from)
{
    kv__list_splice_back(&to->head, &from->head);
    to->n += from->n;
    from->n = 0;
}

/* ------------------------------------------------------------------------ */
/* sqlite_conn.c: connections, the statement cache, SQLite's errors         */
/* ------------------------------------------------------------------------ */

/*
 * An SQLite call on db failed with rc: keep the first message of the
 * operation in *msg ("sqlite: what: errmsg") and return the kvstore code.
 * Call it before sqlite3_reset, which may change the connection's message.
 * Any thread (the one that owns db).
 */
int sqlite__db_fail(sqlite3 *db, int rc, const char *what, char **msg);
/* A non-SQLite failure with a message (first one wins).  Any thread. */
int sqlite__fail_msg(int code, char **msg, const char *fmt, ...)
    KV__PRINTF(3, 4);
/* Run one-off SQL (open and close time; the thread that owns db). */
int sqlite__exec_sql(sqlite3 *db, const char *sql, char **msg);
/* Prepare c's cached statement id (prep's first use; c's job). */
int sqlite__prepare(conn *c, int id, char **msg);
/* s->wal_max and s->ckpt_pages from the environment (WAL_MAX_ENV,
 * CKPT_PAGES_ENV) or the defaults for s->sync, and s->restart_ns: KV_OK,
 * or KV_EINVAL with *msg set (kv_sqlite_open, the caller's thread). */
int sqlite__env_tunables(sq *s, char **msg);
/* The WAL restarts at most once per ns below half of s->ck_hard (0: as
 * soon as it can): sets s->restart_ns, ck_restart and ck_late (wal_bound,
 * and a test hook; loop thread once the store is open). */
void sqlite__restart_rule(sq *s, uint64_t ns);
/* Open the first connection of a store, its schema created or checked;
 * for a writable file store, bound its WAL (kv_sqlite_open, the caller's
 * thread). */
int sqlite__primary_open(sq *s, sqlite3 **out, char **msg);
/* A reader's first job opens it (worker). */
int sqlite__reader_open(conn *c, char **msg);
/* The background checkpoint's connection, or NULL (best effort; worker,
 * in the checkpoint job). */
sqlite3 *sqlite__ck_open(const sq *s);
/* A new connection struct in s->conns, no handle yet (loop thread). */
conn *sqlite__conn_new(sq *s, bool reader);
/* Finalize every cached statement and close every handle of s, keeping
 * the first failure in s->close_status (the close job on a worker, or
 * destroy once no job runs). */
void sqlite__close_conns(sq *s);

/* The cached statement id of c, prepared on first use (c's job). */
static inline int prep(conn *c, int id, sqlite3_stmt **out, char **msg)
{
    if (c->st[id] == NULL) {
        int rc = sqlite__prepare(c, id, msg);
        if (rc != KV_OK)
            return rc;
    }
    *out = c->st[id];
    return KV_OK;
}

/* Step st to SQLITE_DONE, then reset it. */
static inline int step_done(sqlite3 *db, sqlite3_stmt *st, const char *what,
                            char **msg)
{
    int rc = sqlite3_step(st);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    int out = rc == SQLITE_DONE ? KV_OK : sqlite__db_fail(db, rc, what, msg);
    /* reset repeats the step's error, which is handled above */
    (void)sqlite3_reset(st);
    return out;
}

/* Run cached statement id (no parameters). */
static inline int exec_id(conn *c, int id, char **msg)
{
    sqlite3_stmt *st;
    int rc = prep(c, id, &st, msg);
    return rc != KV_OK ? rc : step_done(c->db, st, sqlite__sql[id], msg);
}

/* ------------------------------------------------------------------------ */
/* Requests and keys (any thread that owns the request or buffer)           */
/* ------------------------------------------------------------------------ */

/* Give r a failed status (the first failure wins); takes msg. */
static inline void sreq_fail(sreq *r, int status, char *msg)
{
    if (r->status == KV_OK || r->status == KV_ECONFLICT) {
        r->status = status;
        kv__free(r->msg);
        r->msg = msg;
    } else {
        kv__free(msg);
    }
}

/* The encoding of key into b (replacing its contents). */
static inline int encode(kv_buf *b, const kv_key *key)
{
    b->len = 0;
    return kv__key_encode(key, b);
}

/* hi = lo with its last byte (always 0x00) raised to 0x01. */
static inline int range_hi(const kv_buf *lo, kv_buf *hi)
{
    hi->len = 0;
    if (lo->len == 0)
        return KV_OK;
    int rc = kv_buf_append(hi, lo->data, lo->len);
    if (rc == KV_OK)
        hi->data[hi->len - 1] = 0x01;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* sqlite_schema.c (the thread that owns db)                                */
/* ------------------------------------------------------------------------ */

/* Create the schema of a new database; leave an existing one alone. */
int sqlite__schema_create(sqlite3 *db, const char *path, char **msg);
/* Check kv_meta: the format we know and a sane token counter. */
int sqlite__schema_check(sqlite3 *db, const char *path, char **msg);
/* The SQL of cu's query into buf (?1, ?2: the range, ?3 limit, ?4 offset). */
void sqlite__query_sql(char *buf, size_t size, const cursor *cu);
/*
 * cu's range from q (loop thread): key's range, narrowed by q->after to the
 * encodings strictly after it (ASC: from after's encoding followed by 0x00,
 * its successor in memcmp order; DESC: below it), so the query seeks the
 * key index.  KV_OK or KV_ENOMEM (cu->lo and hi are the caller's to free).
 */
int sqlite__cursor_range(cursor *cu, const kv_query *q);

/* ------------------------------------------------------------------------ */
/* sqlite_any.c: point reads from other threads                             */
/* ------------------------------------------------------------------------ */

/* Set up the path for a file store (kv_sqlite_open, the caller's thread,
 * before the store exists): KV_OK or KV_ENOMEM / KV_ERROR. */
int sqlite__any_init(sq *s);
/* ops->submit_any (the calling thread). */
int sqlite__submit_any(kv_store *store, kv__req *req, kv_loop *caller);
/* Close (loop thread): take nothing more, cancel what waits; true if jobs
 * still run (the last to end posts any.closer, which goes on closing). */
bool sqlite__any_close(sq *s);
/* Destroy (loop thread, nothing in flight). */
void sqlite__any_fini(sq *s);

/* ------------------------------------------------------------------------ */
/* sqlite_job.c: the work of pool jobs (worker threads)                     */
/* ------------------------------------------------------------------------ */

/* The job of a connection: runs c->run (kv__job.work). */
void sqlite__conn_work(kv__job *job);
/* A background checkpoint on s->ck (kv__job.work of s->ck_job). */
void sqlite__ck_work(kv__job *job);
/* The writer's WAL hook (sqlite3_wal_hook, after each of its commits). */
int sqlite__wal_hook(void *arg, sqlite3 *db, const char *name, int pages);
/* End a cursor's statement (a job on its connection, or the close job). */
void sqlite__cursor_finish(cursor *cu);

/* ------------------------------------------------------------------------ */
/* sqlite_sched.c: requests to jobs and back (loop thread)                  */
/* ------------------------------------------------------------------------ */

/* kv_backend_ops.submit and .cancel. */
void sqlite__submit(kv_store *store, kv__req *req);
void sqlite__cancel(kv_store *store, kv__req *req);
/* Complete r later (never inside submit, cancel or close). */
void sqlite__soon(sq *s, sreq *r, int status, const char *fmt, ...)
    KV__PRINTF(4, 5);
/* Make sure the job that runs later completions (s->soon, s->oom) is
 * queued. */
void sqlite__soon_kick(sq *s);
/* Unlink cu from s->cursors and free it (no SQLite: its statement is
 * finished). */
void sqlite__cursor_free(cursor *cu);

/* ------------------------------------------------------------------------ */
/* sqlite.c (loop thread)                                                   */
/* ------------------------------------------------------------------------ */

/* Submit the close job once the store is closing and nothing is in
 * flight. */
void sqlite__maybe_close(sq *s);

#endif /* KV_BACKEND_SQLITE_INT_H */
