/*
 * backend/sqlite/sqlite.c - the SQLite backend: kv_sqlite_open, the
 * operation table (submit and cancel are sqlite_sched.c's), close and
 * destroy, and the test hooks.  Loop thread, except kv_sqlite_open (the
 * caller's thread, which it blocks) and the close job's work (a worker).
 * The design: docs/DESIGN.md, "backend/sqlite".
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"

#include <string.h>
#include <unistd.h>

/* Read jobs in flight per pool thread: with two, a worker that finishes its
 * batch finds the next one waiting (measured: docs/DESIGN.md). */
#define READ_JOBS_PER_THREAD 2

/* ------------------------------------------------------------------------ */
/* Close and destroy                                                        */
/* ------------------------------------------------------------------------ */

/* The close job (worker), or destroy once no job can run: finish the
 * cursors' statements, then close every connection. */
static void close_work(kv__job *job)
{
    sq *s = KV__CONTAINER_OF(job, sq, close_job);
    kv__list *l;
    KV__LIST_FOREACH(l, &s->cursors)
        sqlite__cursor_finish(KV__LIST_ENTRY(l, cursor, link));
    sqlite__close_conns(s);
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

void sqlite__maybe_close(sq *s)
{
    if (!s->closing || s->close_started || s->pending > 0 || s->soon_busy ||
        s->any_wait || s->close_req == NULL)
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
    while ((r = q_first(q)) != NULL) {
        q_remove(q, r);
        sqlite__soon(s, r, KV_ECANCELED, "the store is closing");
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
            sqlite__soon_kick(s);
            return;
        }
        r->req = req;
        sqlite__soon(s, r, KV_OK, NULL);
        return;
    }
    s->closing = true;
    s->close_req = req;
    s->any_wait = sqlite__any_close(s);
    cancel_queue(s, &s->rq);
    for (conn *c = s->conns; c != NULL; c = c->next) {
        cancel_queue(s, &c->wait);
        if (c->busy)
            (void)kv__pool_cancel(s->pool, &c->job); /* done: ECANCELED */
    }
    if (s->ck_busy) /* done: ECANCELED */
        (void)kv__pool_cancel(s->ck_pool != NULL ? s->ck_pool : s->pool,
                              &s->ck_job);
    /* Submits the close job when nothing is in flight. */
    sqlite__maybe_close(s);
}

static void sq_destroy(kv_store *store)
{
    sq *s = store->backend;
    if (s == NULL)
        return;
    /* Handles are still open only if the close job never ran (the pool
     * went away first): close them here rather than leak them. */
    close_work(&s->close_job);
    kv_pool_free(s->ck_pool); /* idle: nothing is pending at destroy */
    if (s->wal_fd >= 0)
        (void)close(s->wal_fd); /* read-only: nothing to lose */
    while (!kv__list_empty(&s->cursors))
        sqlite__cursor_free(KV__LIST_ENTRY(s->cursors.next, cursor, link));
    conn *next;
    for (conn *c = s->conns; c != NULL; c = next) {
        next = c->next;
        kv__free(c->kb.data);
        kv__free(c->kb2.data);
        kv__free(c);
    }
    sqlite__any_fini(s);
    kv__free(s->close_msg);
    kv__free(s->path);
    kv__free(s);
    store->backend = NULL;
}

static const struct kv_backend_ops sqlite_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "sqlite",
    .atomic_batch = true,
    .submit = sqlite__submit,
    .cancel = sqlite__cancel,
    .close = sq_close,
    .destroy = sq_destroy,
    .submit_any = sqlite__submit_any,
};

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

int kv__sqlite_stats(const kv_store *store, struct kv__sqlite_stats *out)
{
    if (store == NULL || out == NULL || store->ops != &sqlite_ops ||
        store->backend == NULL)
        return KV_EINVAL;
    sq *s = store->backend;
    *out = s->stats;
    out->wal_max = (uint64_t)s->wal_max;
    out->restart_ns = s->restart_ns;
    out->cycle_ns = s->ck_cycle_ns;
    if (s->any.on) {
        pthread_mutex_lock(&s->any.mu);
        out->any_reads = s->any.reads;
        out->any_batches = s->any.batches;
        out->any_posts = s->any.posts;
        pthread_mutex_unlock(&s->any.mu);
    }
    return KV_OK;
}

#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
/* The backend of a writable SQLite store, or NULL. */
static sq *writable(kv_store *store)
{
    if (store == NULL || store->ops != &sqlite_ops)
        return NULL;
    sq *s = store->backend;
    return s != NULL && s->writer != NULL ? s : NULL;
}

int kv__sqlite_set_max_pages(kv_store *store, int64_t pages)
{
    sq *s = writable(store);
    if (s == NULL)
        return KV_EINVAL;
    s->max_pages_req = pages > 0 ? pages : 1073741823; /* SQLite's old max */
    s->max_pages_set = true;
    return KV_OK;
}

int kv__sqlite_set_gather_ns(kv_store *store, uint64_t ns)
{
    sq *s = writable(store);
    if (s == NULL)
        return KV_EINVAL;
    s->wgather_fixed_ns = ns;
    return KV_OK;
}

int kv__sqlite_set_restart_ns(kv_store *store, uint64_t ns)
{
    sq *s = writable(store);
    if (s == NULL || s->memory)
        return KV_EINVAL;
    sqlite__restart_rule(s, ns);
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
    int frc = kv__check_open_flags("sqlite", flags,
                                   KV_READONLY | KV_SQLITE_SYNC_FULL |
                                       KV_SQLITE_SYNC_OFF | KV_SQLITE_NO_MAP);
    if (frc != KV_OK)
        return frc;
    if ((flags & KV_SQLITE_SYNC_FULL) && (flags & KV_SQLITE_SYNC_OFF)) {
        kv__set_errmsg("kv_sqlite_open: KV_SQLITE_SYNC_FULL and "
                       "KV_SQLITE_SYNC_OFF exclude each other");
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
    s->wal_fd = -1;
    q_init(&s->rq);
    q_init(&s->soon);
    kv__list_init(&s->cursors);
    s->memory = memory;
    s->readonly = (flags & KV_READONLY) != 0;
    s->map = !memory && (flags & KV_SQLITE_NO_MAP) == 0;
    s->sync = (flags & KV_SQLITE_SYNC_FULL)  ? "FULL"
              : (flags & KV_SQLITE_SYNC_OFF) ? "OFF"
                                             : "NORMAL";
    s->max_read_jobs = READ_JOBS_PER_THREAD * kv_pool_size(pool);
    if (s->max_read_jobs == 0)
        s->max_read_jobs = 1;

    char *msg = NULL;
    sqlite3 *db = NULL;
    int rc = sqlite__env_tunables(s, &msg);
    if (rc == KV_OK)
        rc = sqlite__primary_open(s, &db, &msg);
    if (rc == KV_OK && !s->memory)
        rc = sqlite__any_init(s);
    conn *c = NULL;
    if (rc == KV_OK && (c = sqlite__conn_new(s, s->readonly)) == NULL)
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
            if (!s->memory) {
                (void)sqlite3_wal_hook(c->db, sqlite__wal_hook, c);
                /* Background checkpoints wait on the disk (fsync) for
                 * tens of ms: on a thread of their own they take none of
                 * the pool's threads from the reads and the writer.
                 * Without one they share the pool. */
                if (kv_pool_new(&s->ck_pool, 1) != KV_OK)
                    s->ck_pool = NULL;
            }
        }
        rc = kv__store_new(out, &sqlite_ops, s, loop, pool, flags);
        if (rc == KV_OK)
            (*out)->read_any = !s->memory;
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
