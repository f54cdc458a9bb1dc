/*
 * backend/sqlite/sqlite_any.c - point reads (HAS, GET) made on threads
 * other than the store's loop, in file stores.  The calling thread queues
 * the request; pool jobs on readers of this path's own take the queue in
 * batches (one read transaction each, as the loop's reader jobs do) and
 * post each request's completion straight to its caller's loop.  The
 * store's loop takes no part until close, which cancels what still waits
 * and waits for the rest.  Without this, such a read is a call forwarded
 * to the loop and back (store/remote.c): two more hand-offs between
 * threads, which cost more CPU than the read itself (docs/PERF.md).
 *
 * Threads: sqlite__any_init runs at open, sqlite__any_close and
 * sqlite__any_fini on the loop, sqlite__submit_any on the caller, jobs on
 * workers, completions on the callers' loops.  s->any.mu guards the queue,
 * the idle readers and the counts; a reader belongs to its job while one
 * runs.  A request is handed back with kv__req_release_store first, so
 * its completion on the caller's loop never touches the store: close
 * waits for the jobs (s stays alive while any.jobs > 0; the last one to
 * end at close posts any.closer, a job the loop expects), never for the
 * callers' loops, one of which may be waiting for the close.
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"

#include <errno.h>
#include <string.h>

/* One request taken from another thread. */
typedef struct anyreq {
    sreq r;        /* what the reader's job runs (r.req is the kv__req) */
    kv__job back;  /* its completion, posted to the caller's loop */
} anyreq;

static void any_work(kv__job *job);
static void any_job_end(kv__job *job);

/* Loop thread: the last job of this path ended at close. */
static void any_released(kv__job *job, int status)
{
    (void)status; /* never on a pool */
    sq *s = KV__CONTAINER_OF(job, sq, any.closer);
    s->any_wait = false;
    sqlite__maybe_close(s);
}

/* Caller's loop: complete the request (its store is not touched). */
static void any_back(kv__job *job, int status)
{
    (void)status; /* never on a pool */
    anyreq *a = KV__CONTAINER_OF(job, anyreq, back);
    kv__req *req = a->r.req;
    int st = a->r.status;
    char *msg = a->r.msg;
    kv__free(a);
    if (msg != NULL)
        kv__req_done(req, st, "%s", msg);
    else
        kv__req_done(req, st, NULL);
    kv__free(msg);
}

/*
 * Hand every request of q back to its caller (any thread; q ends empty and
 * its requests are not touched after): one push, and at most one wake, per
 * caller's loop; returns the pushes.  Posted one by one, each completion
 * could wake its loop, which then preempted the worker on a busy core to
 * take that one request, and went back to sleep before the next
 * (docs/PERF.md).
 */
static unsigned post_all(squeue *q)
{
    kv__job *fifo = NULL, **end = &fifo;
    sreq *r;
    while ((r = q_pop(q)) != NULL) {
        anyreq *a = KV__CONTAINER_OF(r, anyreq, r);
        kv__req_release_store(r->req);
        a->back.next = NULL;
        *end = &a->back;
        end = &a->back.next;
    }
    return kv__loop_post_fifo(fifo); /* one push per caller's loop */
}

/* Fail every request of q (taken out of any.q) with status and post it. */
static void fail_all(squeue *q, int status, const char *why)
{
    for (sreq *r = q_first(q); r != NULL; r = q_next(q, r))
        sreq_fail(r, status, why != NULL ? kv__strdup(why) : NULL);
    (void)post_all(q);
}

/* Start a job on c (taken from any.idle under mu; called without it). */
static void job_start(sq *s, conn *c)
{
    memset(&c->job, 0, sizeof c->job);
    c->job.work = any_work;
    c->job.post = any_job_end;
    kv__pool_enqueue(s->pool, &c->job);
}

int sqlite__any_init(sq *s)
{
    q_init(&s->any.q);
    int e = pthread_mutex_init(&s->any.mu, NULL);
    if (e != 0)
        return e == ENOMEM ? KV_ENOMEM : KV_ERROR;
    s->any.on = true;
    /* One reader per pool thread: a job runs batches until the queue is
     * empty, so more jobs than threads would only split the batches.  The
     * structs now, their handles at their first job (sqlite__conn_work). */
    unsigned n = kv_pool_size(s->pool);
    for (unsigned i = 0; i < (n > 0 ? n : 1); i++) {
        conn *c = sqlite__conn_new(s, true);
        if (c == NULL)
            return KV_ENOMEM;
        c->next_idle = s->any.idle;
        s->any.idle = c;
    }
    return KV_OK;
}

int sqlite__submit_any(kv_store *store, kv__req *req, kv_loop *caller)
{
    sq *s = store->backend;
    anyreq *a = kv__calloc(1, sizeof *a);
    if (a == NULL)
        return KV_ENOMEM;
    a->r.req = req;
    conn *c = NULL;
    pthread_mutex_lock(&s->any.mu);
    if (s->any.closing) {
        pthread_mutex_unlock(&s->any.mu);
        kv__free(a);
        return KV_ECLOSED;
    }
    a->back.done = any_back;
    kv__loop_expect(caller, &a->back); /* this thread's loop: it waits */
    q_push(&s->any.q, &a->r);
    if (s->any.idle != NULL) {
        /* Another job, while readers are free; a running job also takes
         * what queues meanwhile (any_job_end looks once more). */
        c = s->any.idle;
        s->any.idle = c->next_idle;
        c->next_idle = NULL;
        s->any.jobs++;
    }
    pthread_mutex_unlock(&s->any.mu);
    if (c != NULL)
        job_start(s, c);
    return KV_OK;
}

/* Worker: run batches from the queue until it is empty; each request's
 * completion goes to its caller as soon as its batch ends. */
static void any_work(kv__job *job)
{
    conn *c = KV__CONTAINER_OF(job, conn, job);
    sq *s = c->s;
    unsigned pushes = 0; /* counted at the next look at the queue */
    for (;;) {
        pthread_mutex_lock(&s->any.mu);
        s->any.posts += pushes;
        /* A fair share of what waits, among the jobs that run. */
        size_t want = (s->any.q.n + s->any.jobs - 1) / s->any.jobs;
        if (want > READ_BATCH)
            want = READ_BATCH;
        sreq *r;
        while (c->run.n < want && (r = q_pop(&s->any.q)) != NULL)
            q_push(&c->run, r);
        if (c->run.n > 0) {
            s->any.reads += c->run.n;
            s->any.batches++;
        }
        pthread_mutex_unlock(&s->any.mu);
        if (c->run.n == 0)
            return;
        sqlite__conn_work(&c->job);
        pushes = post_all(&c->run);
    }
}

/*
 * Worker (the pool's post, after any_work or instead of it when the pool
 * is stopping): the pool is done with the job.  Run again if requests
 * queued after the work's last look; else the reader is idle.
 */
static void any_job_end(kv__job *job)
{
    conn *c = KV__CONTAINER_OF(job, conn, job);
    sq *s = c->s;
    bool last;
    for (;;) {
        pthread_mutex_lock(&s->any.mu);
        if (s->any.q.n == 0) {
            c->next_idle = s->any.idle;
            s->any.idle = c;
            s->any.jobs--;
            last = s->any.closing && s->any.jobs == 0;
            pthread_mutex_unlock(&s->any.mu);
            break;
        }
        if (job->status == KV_OK) {
            pthread_mutex_unlock(&s->any.mu);
            job_start(s, c); /* a stopping pool hands it back ECANCELED */
            return;
        }
        /* The pool stopped: nothing will run these.  Handed back while
         * this job still counts, so s is alive. */
        squeue dropped;
        q_init(&dropped);
        q_take(&dropped, &s->any.q);
        pthread_mutex_unlock(&s->any.mu);
        fail_all(&dropped, KV_ECANCELED, "the worker pool was shut down");
    }
    if (last)
        s->any.closer.post(&s->any.closer); /* s is not touched after */
}

bool sqlite__any_close(sq *s)
{
    if (!s->any.on)
        return false;
    squeue waiting;
    q_init(&waiting);
    pthread_mutex_lock(&s->any.mu);
    s->any.closing = true;
    q_take(&waiting, &s->any.q);
    bool busy = s->any.jobs > 0;
    if (busy) {
        /* Pending on the loop (kv_wait on the close blocks for it) until
         * the last release posts it. */
        s->any.closer.done = any_released;
        kv__loop_expect(s->loop, &s->any.closer);
    }
    pthread_mutex_unlock(&s->any.mu);
    fail_all(&waiting, KV_ECANCELED, "the store is closing");
    return busy;
}

void sqlite__any_fini(sq *s)
{
    if (s->any.on)
        (void)pthread_mutex_destroy(&s->any.mu);
    s->any.on = false;
}
