/*
 * pool.c - worker threads for blocking work.
 *
 * A FIFO of jobs under one mutex; N workers take jobs from its head, run
 * them without the lock, and post each finished job to the loop that
 * submitted it (kv__loop_post: a lock-free list and, when the loop may be
 * asleep, an eventfd write).  done always runs on that loop's thread.
 */
#include "config.h"

#include "core/core_int.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 1024u

/*
 * job->state (pool-private).  Written only under pool->mu, with atomic
 * stores; kv__pool_cancel first reads it without the lock, so that once a
 * job has left the queue (running, finished, or cancelled by kv_pool_free)
 * cancelling it never touches the pool, which may be gone.
 */
#define STATE_SET(job, v) __atomic_store_n(&(job)->state, (v), __ATOMIC_RELEASE)
#define STATE_GET(job) __atomic_load_n(&(job)->state, __ATOMIC_ACQUIRE)
enum {
    JOB_NEW = 0,
    JOB_QUEUED,  /* in the pool's FIFO: cancellable */
    JOB_RUNNING, /* taken by a worker: runs to the end */
    JOB_CANCELED /* taken out by cancel or shutdown: done gets ECANCELED */
};

struct kv_pool {
    /*
     * mu guards head, tail, idle, stop, and the prev/next/state of every
     * queued job.  Rule: held only to manipulate the list; never while a
     * job's work runs, never while posting to a loop (which may write an
     * eventfd), never while calling done.
     */
    pthread_mutex_t mu;
    /* Workers wait on cv (with mu) for a job or for stop. */
    pthread_cond_t cv;
    kv__job *head, *tail; /* FIFO, doubly linked through next/prev */
    unsigned idle;        /* workers blocked in cv */
    bool stop;            /* kv_pool_free started: accept nothing more */
    unsigned nthreads;    /* started workers (immutable after new) */
    pthread_t *threads;
};

static void unlink_job(kv_pool *pool, kv__job *job)
{
    if (job->prev != NULL)
        job->prev->next = job->next;
    else
        pool->head = job->next;
    if (job->next != NULL)
        job->next->prev = job->prev;
    else
        pool->tail = job->prev;
    job->next = job->prev = NULL;
}

static void *worker(void *arg)
{
    kv_pool *pool = arg;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (pool->head == NULL && !pool->stop) {
            pool->idle++;
            pthread_cond_wait(&pool->cv, &pool->mu);
            pool->idle--;
        }
        kv__job *job = pool->head;
        if (job == NULL)
            break; /* stopping, and shutdown took the rest of the queue */
        unlink_job(pool, job);
        STATE_SET(job, JOB_RUNNING);
        pthread_mutex_unlock(&pool->mu);

        job->work(job);
        job->status = KV_OK;
        kv__loop_post(job->loop, job); /* job is the loop's from here on */

        pthread_mutex_lock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

static void stop_and_join(kv_pool *pool, unsigned started)
{
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_mutex_unlock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);
    for (unsigned i = 0; i < started; i++)
        pthread_join(pool->threads[i], NULL);
}

int kv_pool_new(kv_pool **out, unsigned nthreads)
{
    if (out == NULL) {
        kv__set_errmsg("kv_pool_new: out is NULL");
        return KV_EINVAL;
    }
    if (nthreads > MAX_THREADS) {
        kv__set_errmsg("kv_pool_new: %u threads (at most %u)", nthreads,
                       MAX_THREADS);
        return KV_EINVAL;
    }
    if (nthreads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n < 1                   ? 1
                   : n > (long)MAX_THREADS ? MAX_THREADS
                                           : (unsigned)n;
    }
    kv_pool *pool = kv__calloc(1, sizeof *pool);
    pthread_t *threads = kv__calloc(nthreads, sizeof *threads);
    if (pool == NULL || threads == NULL) {
        kv__free(pool);
        kv__free(threads);
        kv__set_errmsg("kv_pool_new: out of memory");
        return KV_ENOMEM;
    }
    pool->threads = threads;
    int e = pthread_mutex_init(&pool->mu, NULL);
    if (e == 0) {
        e = pthread_cond_init(&pool->cv, NULL);
        if (e != 0)
            pthread_mutex_destroy(&pool->mu);
    }
    if (e != 0) {
        kv__free(threads);
        kv__free(pool);
        kv__set_errmsg("kv_pool_new: %s", strerror(e));
        return e == ENOMEM ? KV_ENOMEM : KV_ERROR;
    }

    /* Workers block every signal: they belong to the application's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    unsigned started = 0;
    for (; started < nthreads; started++) {
        e = pthread_create(&threads[started], NULL, worker, pool);
        if (e != 0)
            break;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started < nthreads) {
        stop_and_join(pool, started);
        pthread_cond_destroy(&pool->cv);
        pthread_mutex_destroy(&pool->mu);
        kv__free(threads);
        kv__free(pool);
        kv__set_errmsg("kv_pool_new: pthread_create: %s", strerror(e));
        return KV_ERROR;
    }
    pool->nthreads = nthreads;
    *out = pool;
    return KV_OK;
}

unsigned kv_pool_size(const kv_pool *pool)
{
    return pool == NULL ? 0 : pool->nthreads;
}

void kv__pool_submit(kv_pool *pool, kv_loop *loop, kv__job *job)
{
    job->loop = loop;
    job->next = job->prev = NULL;
    job->status = KV_OK;
    kv__loop_job_pending(loop);

    pthread_mutex_lock(&pool->mu);
    if (pool->stop) {
        STATE_SET(job, JOB_CANCELED);
        pthread_mutex_unlock(&pool->mu);
        job->status = KV_ECANCELED;
        kv__loop_post(loop, job);
        return;
    }
    STATE_SET(job, JOB_QUEUED);
    job->prev = pool->tail;
    if (pool->tail != NULL)
        pool->tail->next = job;
    else
        pool->head = job;
    pool->tail = job;
    bool wake = pool->idle > 0;
    pthread_mutex_unlock(&pool->mu);
    /* Safe outside the lock: a waiting worker re-checks head under mu. */
    if (wake)
        pthread_cond_signal(&pool->cv);
}

bool kv__pool_cancel(kv_pool *pool, kv__job *job)
{
    /* Left the queue for good: no need (nor right) to touch the pool. */
    if (STATE_GET(job) != JOB_QUEUED)
        return false;
    pthread_mutex_lock(&pool->mu);
    if (job->state != JOB_QUEUED) { /* a worker took it meanwhile */
        pthread_mutex_unlock(&pool->mu);
        return false;
    }
    unlink_job(pool, job);
    STATE_SET(job, JOB_CANCELED);
    pthread_mutex_unlock(&pool->mu);
    job->status = KV_ECANCELED;
    kv__loop_post(job->loop, job); /* done runs on the loop's next turn */
    return true;
}

void kv__job_finish(kv__job *job)
{
    job->done(job, job->status);
}

void kv_pool_free(kv_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    kv__job *list = pool->head;
    pool->head = pool->tail = NULL;
    for (kv__job *j = list; j != NULL; j = j->next)
        STATE_SET(j, JOB_CANCELED);
    pthread_mutex_unlock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);

    while (list != NULL) {
        kv__job *next = list->next; /* the loop may free list once posted */
        list->next = list->prev = NULL;
        list->status = KV_ECANCELED;
        kv__loop_post(list->loop, list);
        list = next;
    }
    for (unsigned i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    kv__free(pool->threads);
    kv__free(pool);
}

/* ------------------------------------------------------------------------ */
/* kv_pool_work: the public job                                             */
/* ------------------------------------------------------------------------ */

typedef struct pool_work {
    kv__job job;
    kv_pool *pool;
    kv_fut *fut; /* our reference */
    int (*work)(void *arg);
    void *arg;
    int rc;
} pool_work;

static void pool_work_run(kv__job *job)
{
    pool_work *w = KV__CONTAINER_OF(job, pool_work, job);
    w->rc = w->work(w->arg);
}

static void pool_work_done(kv__job *job, int status)
{
    pool_work *w = KV__CONTAINER_OF(job, pool_work, job);
    if (status == KV_OK)
        status = w->rc > 0 ? KV_OK : w->rc;
    kv__fut_finish(w->fut, status, NULL); /* false if cancelled: fine */
    kv__fut_unref(w->fut);
    kv__free(w);
}

static void pool_work_cancel(kv_fut *f, void *arg)
{
    pool_work *w = arg;
    /* If removed, done runs later with KV_ECANCELED; if running, the work
     * goes on and its result is dropped. */
    (void)kv__pool_cancel(w->pool, &w->job);
}

kv_fut *kv_pool_work(kv_loop *loop, kv_pool *pool, int (*work)(void *arg),
                     void *arg)
{
    if (loop == NULL || pool == NULL || work == NULL)
        return kv__fut_failed(loop, KV_EINVAL,
                              "kv_pool_work: NULL loop, pool or work");
    kv_fut *f = kv__fut_new(loop);
    pool_work *w = kv__calloc(1, sizeof *w);
    if (f == NULL || w == NULL) {
        kv_fut_free(f);
        kv__free(w);
        return kv__fut_failed(loop, KV_ENOMEM, NULL);
    }
    w->job.work = pool_work_run;
    w->job.done = pool_work_done;
    w->pool = pool;
    w->work = work;
    w->arg = arg;
    kv__fut_ref(f);
    w->fut = f;
    kv__fut_on_cancel(f, pool_work_cancel, w);
    kv__pool_submit(pool, loop, &w->job);
    return f;
}
