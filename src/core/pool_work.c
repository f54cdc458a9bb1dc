/*
 * pool_work.c - kv_pool_work: the public pool job, a function run on a
 * worker whose result completes a future on the loop.  Above the pool, the
 * loop and the futures (it uses all three).
 */
#include "config.h"

#include "core/core_int.h"

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
