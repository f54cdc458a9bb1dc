/*
 * pool.c - worker threads for blocking work.
 *
 * A FIFO of jobs under one mutex; N workers take jobs from its head, run
 * them without the lock, and hand each finished job back through its post
 * (set by the loop in kv__pool_submit), so the pool knows nothing of loops.
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
     * mu guards queue, idle, stop, and the queue link and state of every
     * queued job.  Rule: held only to manipulate the list; never while a
     * job's work runs, never while posting to a loop (which may write an
     * eventfd), never while calling done.
     */
    pthread_mutex_t mu;
    /* Workers wait on cv (with mu) for a job or for stop. */
    pthread_cond_t cv;
    kv__list queue;       /* FIFO of jobs, through job->queue */
    unsigned idle;        /* workers blocked in cv */
    bool stop;            /* kv_pool_free started: accept nothing more */
    unsigned nthreads;    /* started workers (immutable after new) */
    pthread_t *threads;
};

static void *worker(void *arg)
{
    kv_pool *pool = arg;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (kv__list_empty(&pool->queue) && !pool->stop) {
            pool->idle++;
            pthread_cond_wait(&pool->cv, &pool->mu);
            pool->idle--;
        }
        kv__list *node = kv__list_pop_front(&pool->queue);
        if (node == NULL)
            break; /* stopping, and shutdown took the rest of the queue */
        kv__job *job = KV__LIST_ENTRY(node, kv__job, queue);
        STATE_SET(job, JOB_RUNNING);
        pthread_mutex_unlock(&pool->mu);

        job->work(job);
        job->status = KV_OK;
        job->post(job); /* job is the loop's from here on */

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
    kv__list_init(&pool->queue);
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

void kv__pool_enqueue(kv_pool *pool, kv__job *job)
{
    job->next = NULL;
    job->status = KV_OK;

    pthread_mutex_lock(&pool->mu);
    if (pool->stop) {
        STATE_SET(job, JOB_CANCELED);
        pthread_mutex_unlock(&pool->mu);
        job->status = KV_ECANCELED;
        job->post(job);
        return;
    }
    STATE_SET(job, JOB_QUEUED);
    kv__list_push_back(&pool->queue, &job->queue);
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
    kv__list_remove(&job->queue);
    STATE_SET(job, JOB_CANCELED);
    pthread_mutex_unlock(&pool->mu);
    job->status = KV_ECANCELED;
    job->post(job); /* done runs on the loop's next turn */
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
    kv__list list, *pos;
    kv__list_init(&list);
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    kv__list_splice_back(&list, &pool->queue);
    KV__LIST_FOREACH(pos, &list)
        STATE_SET(KV__LIST_ENTRY(pos, kv__job, queue), JOB_CANCELED);
    pthread_mutex_unlock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);

    /* Off the list before the post: the loop may free a job once posted. */
    while ((pos = kv__list_pop_front(&list)) != NULL) {
        kv__job *job = KV__LIST_ENTRY(pos, kv__job, queue);
        job->next = NULL;
        job->status = KV_ECANCELED;
        job->post(job);
    }
    for (unsigned i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    kv__free(pool->threads);
    kv__free(pool);
}
