/*
 * sleep.c - kv_sleep: a future that completes after a delay, as one ring
 * timeout (loop.c's SQEs; a timer in the fallback mode).
 */
#include "config.h"

#include "core/core_int.h"
#include "util/time.h"

#include <errno.h>
#include <string.h>

/*
 * A sleep's state lives until its timeout CQE arrives, independent of the
 * future: kv_fut_cancel only removes the timer and completes the future; the
 * timeout's own CQE (-ECANCELED) then frees this.
 */
typedef struct sleep_op {
    kv__op op;
    struct __kernel_timespec ts;
    kv_loop *loop;
    kv_fut *fut; /* a reference of ours */
} sleep_op;

static void sleep_done(kv__op *op, int res, uint32_t flags)
{
    sleep_op *s = KV__CONTAINER_OF(op, sleep_op, op);
    int status;
    if (res == -ETIME || res == 0)
        status = KV_OK;
    else if (res == -ECANCELED)
        status = KV_ECANCELED;
    else if (res == -ENOMEM)
        status = KV_ENOMEM; /* fallback mode: no memory to start the timer */
    else
        status = res;
    if (status == KV_OK || status == KV_ECANCELED)
        kv__fut_finish(s->fut, status, NULL);
    else
        kv__fut_finish(s->fut, status, "timeout: %s", strerror(-res));
    kv__fut_unref(s->fut);
    kv__free(s);
}

static void sleep_cancel(kv_fut *f, void *arg)
{
    sleep_op *s = arg;
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(s->loop, &sqe, 1) != KV_OK)
        return; /* the timer fires later; the future is cancelled anyway */
    io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&s->op, 0);
    io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
}

kv_fut *kv_sleep(kv_loop *loop, uint64_t ms)
{
    if (loop == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "kv_sleep: loop is NULL");
    kv_fut *f = kv__fut_new(loop);
    sleep_op *s = kv__calloc(1, sizeof *s);
    if (f == NULL || s == NULL) {
        kv_fut_free(f);
        kv__free(s);
        return kv__fut_failed(loop, KV_ENOMEM, NULL);
    }
    s->op.cb = sleep_done;
    s->loop = loop;
    s->ts = kv__ms_to_kts(ms);
    struct io_uring_sqe *sqe;
    int rc = kv__loop_sqes(loop, &sqe, 1);
    if (rc != KV_OK) {
        kv_fut_free(f);
        kv__free(s);
        return kv__fut_failed(loop, rc, "kv_sleep: cannot submit: %s",
                              kv_strerror(rc));
    }
    io_uring_prep_timeout(sqe, &s->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&s->op);
    kv__fut_ref(f);
    s->fut = f;
    kv__fut_on_cancel(f, sleep_cancel, s);
    return f;
}
