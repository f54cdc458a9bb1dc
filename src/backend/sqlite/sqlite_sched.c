/*
 * backend/sqlite/sqlite_sched.c - the loop thread's side of the SQLite
 * backend: requests queued per connection, handed to connection jobs (the
 * writer's group started at the end of the loop turn, or once the writes
 * of other threads came back, point reads batched on idle readers), their
 * completions, background checkpoints started, and the requests completed
 * later.  Never calls SQLite.
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"
#include "util/time.h"

#include <stdarg.h>
#include <string.h>

static void conn_done(kv__job *job, int status);
static void soon_done(kv__job *job, int status);
static void ck_done(kv__job *job, int status);
static void ck_kick(sq *s, bool finished);

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

/* Whether a WAL of pages pages is due to restart (see sq.ck_restart). */
static bool restart_due(const sq *s, int pages)
{
    return s->restart_ns == 0 || pages >= s->ck_restart ||
           kv__now_ns() - s->ck_cycle_ns >= s->restart_ns;
}

/* Start c's job on everything waiting for it. */
static void conn_start(conn *c, squeue *take)
{
    sq *s = c->s;
    q_take(&c->run, take);
    for (sreq *r = q_first(&c->run); r != NULL; r = q_next(&c->run, r)) {
        r->q = NULL;
        r->c = c;
        r->where = W_RUNNING;
    }
    c->busy = true;
    s->pending++;
    c->max_pages = 0;
    c->ck_finish = false;
    /* The writer checkpoints to restart the WAL once the background ones
     * left little to backfill, or late in the WAL (ck_kick starts none
     * then) whatever is left: a short stall well before ck_hard. */
    if (c == s->writer && !s->memory && !s->ck_busy && !s->ck_finished &&
        c->wal_pages >= s->ck_done &&
        ((s->ck_done > 0 && c->wal_pages - s->ck_done <= CKPT_FINISH_PAGES &&
          restart_due(s, c->wal_pages)) ||
         c->wal_pages >= s->ck_late)) {
        c->ck_finish = true;
        s->ck_finished = true;
        s->stats.finishes++;
    }
    if (c == s->writer && s->max_pages_set) {
        c->max_pages = s->max_pages_req;
        s->max_pages_set = false;
    }
    memset(&c->job, 0, sizeof c->job);
    c->job.work = sqlite__conn_work;
    c->job.done = conn_done;
    kv__pool_submit(s->pool, s->loop, &c->job);
}

/* If c is idle and requests wait for it, run them all in one job now. */
static void kick_now(conn *c)
{
    if (c->busy || q_first(&c->wait) == NULL)
        return;
    if (c == c->s->writer) {
        size_t w = 0, fwd = 0;
        for (sreq *r = q_first(&c->wait); r != NULL;
             r = q_next(&c->wait, r)) {
            bool wr = is_write(r->req->op);
            w += wr;
            fwd += wr && r->req->forwarded;
        }
        c->s->wrun_fwd = (unsigned)fwd;
        if (fwd > 0) /* the time only a wait after this group uses */
            c->s->wjob_t0 = kv__now_ns();
        if (w > 0) {
            c->s->stats.groups++;
            c->s->stats.write_reqs += w;
            if (w > c->s->stats.max_group)
                c->s->stats.max_group = w;
        }
    }
    conn_start(c, &c->wait);
}

/*
 * Queue an operation on s's ring whose completion runs cb: a timeout of
 * *ts (which must live until then), or with ts NULL a NOP, which completes
 * once the loop has run the callbacks due in this turn, so whatever they
 * submitted is queued by then (at_turn_end).  *armed until cb clears it
 * (op_done), and close waits for it.  False if no SQE can be had: the
 * caller acts now instead.
 */
static bool ring_op(sq *s, kv__op *op, bool *armed, kv__op_cb cb,
                    struct __kernel_timespec *ts)
{
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(s->loop, &sqe, 1) != KV_OK)
        return false;
    if (ts != NULL)
        io_uring_prep_timeout(sqe, ts, 0, 0);
    else
        io_uring_prep_nop(sqe);
    op->cb = cb;
    io_uring_sqe_set_data64(sqe, (uintptr_t)op);
    *armed = true;
    s->pending++; /* close waits for the completion */
    return true;
}

static bool at_turn_end(sq *s, kv__op *op, bool *armed, kv__op_cb cb)
{
    return ring_op(s, op, armed, cb, NULL);
}

/* The start of a ring_op callback: the operation (or a fault-injected
 * failure of it: the callback acts either way) is no longer pending. */
static void op_done(sq *s, bool *armed)
{
    *armed = false;
    s->pending--;
}

static void wgather_cb(kv__op *op, int res, uint32_t flags)
{
    sq *s = KV__CONTAINER_OF(op, sq, wgather_op);
    (void)res; /* -ETIME; a fault-injected failure ends the wait too */
    (void)flags;
    op_done(s, &s->wgather_armed);
    if (s->wgathering) {
        s->wgathering = false;
        kick_now(s->writer);
    }
    sqlite__maybe_close(s);
}

/*
 * The writer is about to start a group: wait instead if the last group
 * held writes made on other threads and fewer than those came back yet.
 * Their outcomes went back to their threads, whose callbacks submit the
 * next writes a round trip later (a thread wake-up each way), not in this
 * loop turn as the loop's own callbacks do; starting now would split the
 * next group in two (measured: 33 puts per group from one forwarding
 * thread at depth 64, against 64 on the loop's own), two commits and two
 * fsyncs where one does.  The wait ends when as many forwarded writes are
 * queued (sqlite__submit) or after a quarter of the last group's time (at
 * most GATHER_MAX_NS), so a caller that does not come back costs at most
 * that.  True if the start now waits.
 */
enum { GATHER_MAX_NS = 500000 };

static bool gather(sq *s)
{
    conn *w = s->writer;
    if (s->closing || w->busy || q_first(&w->wait) == NULL ||
        s->wgot >= s->wexpect)
        return false;
    if (s->wgathering)
        return true;
    if (!s->wgather_armed) {
        /* One timeout at a time: one still in flight (from a wait that
         * ended early) ends this wait instead, sooner. */
        uint64_t ns = s->wjob_ns / 4;
        if (ns > GATHER_MAX_NS)
            ns = GATHER_MAX_NS;
        if (s->wgather_fixed_ns > 0)
            ns = s->wgather_fixed_ns;
        s->wgather_ts.tv_sec = (long long)(ns / 1000000000u);
        s->wgather_ts.tv_nsec = (long long)(ns % 1000000000u);
        if (ns == 0 || !ring_op(s, &s->wgather_op, &s->wgather_armed,
                                wgather_cb, &s->wgather_ts))
            return false;
    }
    s->wgathering = true;
    return true;
}

static void wstart_cb(kv__op *op, int res, uint32_t flags)
{
    sq *s = KV__CONTAINER_OF(op, sq, wstart_op);
    (void)res;
    (void)flags;
    op_done(s, &s->wstart_armed);
    if (!gather(s))
        kick_now(s->writer);
    sqlite__maybe_close(s);
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
    if (c != s->writer || c->busy || q_first(&c->wait) == NULL) {
        kick_now(c);
        return;
    }
    if (s->wgathering)
        return; /* its end starts the writer */
    if (!s->wstart_armed &&
        !at_turn_end(s, &s->wstart_op, &s->wstart_armed, wstart_cb))
        kick_now(c);
}

/* File stores: hand waiting reads to idle (or new) readers. */
static void dispatch_reads(sq *s)
{
    while (q_first(&s->rq) != NULL && s->nread_jobs < s->max_read_jobs &&
           !s->closing) {
        conn *c = s->idle;
        if (c != NULL) {
            s->idle = c->next_idle;
            c->next_idle = NULL;
        } else if ((c = sqlite__conn_new(s, true)) == NULL) {
            sreq *r = q_first(&s->rq);
            q_remove(&s->rq, r);
            sqlite__soon(s, r, KV_ENOMEM, NULL);
            continue;
        }
        squeue take;
        q_init(&take);
        sreq *r = q_first(&s->rq);
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
            while ((r = q_first(&s->rq)) != NULL && take.n < want &&
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

void sqlite__soon_kick(sq *s)
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
void sqlite__soon(sq *s, sreq *r, int status, const char *fmt, ...)
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
    sqlite__soon_kick(s);
}

void sqlite__cursor_free(cursor *cu)
{
    kv__list_remove(&cu->link);
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
            sqlite__cursor_free(cu);
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
        sqlite__cursor_free(dead); /* r is gone if it was dead->dsr */
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
    squeue run;
    q_init(&run);
    q_take(&run, &c->run);
    c->busy = false;
    s->pending--;
    s->stats.commits += c->ncommits;
    c->ncommits = 0;
    if (c->rq_job) {
        c->rq_job = false;
        s->nread_jobs--;
    }
    for (sreq *r = q_first(&run); r != NULL; r = q_next(&run, r)) {
        r->where = W_NONE;
        r->c = NULL;
        if (status == KV_ECANCELED) /* the pool dropped the job unrun */
            sreq_fail(r, KV_ECANCELED, NULL);
        if (r->req->op == KV__OP_ITER_FETCH)
            s->stats.fetches++;
        finish_one(s, r);
    }
    if (c->reader) {
        if (c->pin != NULL && !c->pin->live && q_first(&c->wait) == NULL) {
            c->pin->c = NULL;
            c->pin = NULL;
        }
        if (c->pin == NULL && q_first(&c->wait) == NULL) {
            c->next_idle = s->idle;
            s->idle = c;
        }
    }
    if (c == s->writer) {
        ck_kick(s, c->ck_finish);
        if (s->wrun_fwd > 0)
            s->wjob_ns = kv__now_ns() - s->wjob_t0;
        s->wexpect = s->wrun_fwd;
        s->wgot = 0;
    }
    sreq *r;
    while ((r = q_pop(&run)) != NULL)
        complete(s, r);
    kick(c);
    dispatch_reads(s);
    sqlite__maybe_close(s);
}

/* Start a background checkpoint if the WAL grew enough since the last.
 * finished: the writer's job that just ended checkpointed to restart. */
static void ck_kick(sq *s, bool finished)
{
    /* Called from the writer's done only: its wal_pages is ours to read
     * now, not once its next job runs (ck_done uses this copy). */
    int pages = s->writer->wal_pages;
    if (pages < s->ck_seen || pages < s->ck_done) {
        s->ck_done = 0; /* the WAL was restarted */
        s->ck_finished = false;
        s->ck_commits = s->stats.commits;
        s->ck_cycle_ns = kv__now_ns();
        s->stats.restarts++;
    } else if (s->ck_finished && !finished) {
        /* The job after the writer's checkpoint did not restart the WAL
         * (a reader still used it): the writer may try again. */
        s->ck_finished = false;
    }
    s->ck_seen = pages;
    int fresh = pages - s->ck_done;
    /* Once the WAL is due to restart (ck_pages), background checkpoints
     * follow each other until what is left to backfill is small enough
     * for the writer's own short checkpoint (CKPT_FINISH_PAGES, see
     * conn_start), the one that lets the WAL restart: waiting for
     * ck_pages more each time left the restart to the writer's inline
     * checkpoint at ck_hard, which backfilled thousands of pages and
     * stalled every write for tens of ms (docs/PERF.md). */
    bool chase = pages >= s->ck_pages && fresh > CKPT_FINISH_PAGES &&
                 pages < s->ck_late && restart_due(s, pages);
    bool due = chase || fresh >= s->ck_pages ||
               (fresh >= s->ck_min_pages &&
                s->stats.commits - s->ck_commits >= CKPT_COMMITS);
    /* Past s->ck_late the writer's own checkpoint is due and must not
     * find this one running (it would be busy, and the WAL would keep
     * growing). */
    if (s->ck_busy || s->closing || s->memory || !due ||
        pages >= s->ck_late)
        return;
    s->ck_commits = s->stats.commits;
    s->stats.checkpoints++;
    s->ck_busy = true;
    s->pending++;
    memset(&s->ck_job, 0, sizeof s->ck_job);
    s->ck_job.work = sqlite__ck_work;
    s->ck_job.done = ck_done;
    kv__pool_submit(s->ck_pool != NULL ? s->ck_pool : s->pool, s->loop,
                    &s->ck_job);
}

static void ck_done(kv__job *job, int status)
{
    sq *s = KV__CONTAINER_OF(job, sq, ck_job);
    s->ck_busy = false;
    s->pending--;
    if (status == KV_OK && s->ck_log >= 0)
        s->ck_done = s->ck_log;
    else if (s->writer != NULL) /* failed: wait for ck_pages more */
        s->ck_done = s->ck_seen;
    sqlite__maybe_close(s);
}

static void soon_done(kv__job *job, int status)
{
    sq *s = KV__CONTAINER_OF(job, sq, soon_job);
    (void)status; /* nothing ran: the completions are the same either way */
    s->soon_busy = false;
    squeue list;
    q_init(&list);
    q_take(&list, &s->soon);
    kv__req *oom = s->oom;
    s->oom = NULL;
    for (sreq *r = q_first(&list); r != NULL; r = q_next(&list, r))
        finish_one(s, r);
    sreq *r;
    while ((r = q_pop(&list)) != NULL)
        complete(s, r);
    while (oom != NULL) {
        kv__req *q = oom;
        oom = q->bpriv;
        q->bpriv = NULL;
        kv__req_done(q, KV_ENOMEM, NULL);
    }
    sqlite__maybe_close(s);
}

/* ------------------------------------------------------------------------ */
/* Submit and cancel                                                        */
/* ------------------------------------------------------------------------ */

/* A cursor for iter's query (loop thread; no SQLite). */
static cursor *cursor_new(sq *s, const kv_iter *it)
{
    cursor *cu = kv__calloc(1, sizeof *cu);
    if (cu == NULL)
        return NULL;
    if (sqlite__cursor_range(cu, &it->q) != KV_OK) {
        kv__free(cu->lo.data);
        kv__free(cu->hi.data);
        kv__free(cu);
        return NULL;
    }
    cu->value = it->q.value;
    cu->sort = it->q.sort;
    cu->offset = it->q.offset;
    cu->limit = it->q.limit;
    kv__list_push_front(&s->cursors, &cu->link);
    return cu;
}

static void rstart_cb(kv__op *op, int res, uint32_t flags)
{
    sq *s = KV__CONTAINER_OF(op, sq, rstart_op);
    (void)res;
    (void)flags;
    op_done(s, &s->rstart_armed);
    dispatch_reads(s);
    sqlite__maybe_close(s);
}

/*
 * Reads of a memory store queue on its one connection.  A file store's
 * read starts at once when no reader job runs (a lone get waits for
 * nothing); while some run, it waits for the end of this loop turn (a NOP,
 * as the writer's group does), so that the gets the turn's callbacks
 * submit one by one are shared out together, in a few large jobs, instead
 * of the first of them taking a job alone.
 */
static void queue_read(sq *s, sreq *r)
{
    if (s->memory) {
        q_push(&s->writer->wait, r);
        kick(s->writer);
        return;
    }
    q_push(&s->rq, r);
    if (s->rstart_armed)
        return;
    /* At once with idle readers only, or with no job slot to hand it to
     * (a finishing job dispatches it then). */
    if (s->nread_jobs == 0 || s->nread_jobs >= s->max_read_jobs ||
        !at_turn_end(s, &s->rstart_op, &s->rstart_armed, rstart_cb))
        dispatch_reads(s);
}

void sqlite__submit(kv_store *store, kv__req *req)
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
        sqlite__soon_kick(s);
        return;
    }
    r->req = req;
    req->bpriv = r;
    if (s->closing) {
        sqlite__soon(s, r, KV_ECLOSED, "the store is closed");
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
            sqlite__soon(s, r, req->iter == NULL ? KV_EINVAL : KV_ENOMEM, NULL);
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
                sqlite__soon(s, r, KV_EITER, "iterator has no cursor");
            else
                sqlite__soon(s, r, KV_OK, NULL);
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
            sqlite__soon(s, r, KV_OK, NULL);
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
            sqlite__soon(s, r, KV_EREADONLY, "the store is read-only");
            return;
        }
        q_push(&s->writer->wait, r);
        if (req->forwarded && ++s->wgot >= s->wexpect && s->wgathering) {
            s->wgathering = false; /* they are back: start now */
            kick_now(s->writer);
            return;
        }
        kick(s->writer);
        return;
    default:
        sqlite__soon(s, r, KV_EINVAL, "sqlite: unknown request %d",
                     (int)req->op);
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

void sqlite__cancel(kv_store *store, kv__req *req)
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
        sqlite__soon(s, r, KV_ECANCELED, NULL);
    } else if (r->where == W_RUNNING && r->c != NULL &&
               q_first(&r->c->run) == r && r->c->run.n == 1) {
        /* Alone in a job that has not started: its done gets ECANCELED. */
        (void)kv__pool_cancel(s->pool, &r->c->job);
    }
}
