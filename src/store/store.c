/*
 * store.c - the store handle: creation by a backend, close (idempotent,
 * cancels work), free, and its loop and admission limit.  Lifetimes:
 * docs/DESIGN.md ("store").
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

/* The first check of every operation: a usable store. */
kv_fut *kv__store_check(kv_store *s, bool write)
{
    if (s == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "store is NULL");
    if (s->state != KV__ST_OPEN)
        return kv__fut_failed(kv__floop(s), KV_ECLOSED, "store is closed");
    if (write && (s->flags & KV_READONLY))
        return kv__fut_failed(kv__floop(s), KV_EREADONLY, "store is read-only");
    return NULL;
}


/* ------------------------------------------------------------------------ */
/* The store handle                                                         */
/* ------------------------------------------------------------------------ */

int kv__store_new(kv_store **out, const struct kv_backend_ops *ops,
                  void *backend, kv_loop *loop, kv_pool *pool, unsigned flags)
{
    if (out == NULL || ops == NULL || loop == NULL ||
        ops->version != KV__BACKEND_VERSION || ops->submit == NULL ||
        ops->close == NULL || ops->destroy == NULL)
        return KV_EINVAL;
    kv_store *s = kv__calloc(1, sizeof *s);
    if (s == NULL)
        return KV_ENOMEM;
    s->close_req = kv__req_new(s, KV__OP_CLOSE);
    if (s->close_req == NULL) {
        kv__free(s);
        return KV_ENOMEM;
    }
    kv__list_init(&s->inflight);
    kv__list_init(&s->iters);
    s->ops = ops;
    s->backend = backend;
    s->loop = loop;
    s->pool = pool;
    s->flags = flags;
    atomic_init(&s->state, KV__ST_OPEN);
    atomic_init(&s->nops, 0);
    atomic_init(&s->transit, 0);
    atomic_init(&s->max_ops, 0);
    kv__loop_stores_add(loop, 1);
    *out = s;
    return KV_OK;
}

const char *kv_store_backend(const kv_store *store)
{
    return store != NULL ? store->ops->name : NULL;
}

bool kv_supports_atomic_batch(const kv_store *store)
{
    return store != NULL && store->ops->atomic_batch;
}

static void free_call(kv__call *c);

static void close_done(kv__req *req, int status, const char *msg)
{
    kv_store *s = req->store;
    kv__free(req);
    s->state = KV__ST_CLOSED;
    if (s->close_fut != NULL)
        kv__fut_fail_msg(s->close_fut, status, status == KV_OK ? NULL : msg);
    if (s->free_when_closed) {
        /* The backend may still be inside its close: free on a later turn. */
        s->free_call.run = free_call;
        kv__loop_call(s->loop, &s->free_call);
    }
}

/* The first kv_close: cancel everything, then close the backend. */
static void start_close(kv_store *s)
{
    s->state = KV__ST_CLOSING;
    s->close_fut = kv__fut_new(s->loop); /* NULL on OOM: close goes on */
    kv__iters_store_closing(s);
    kv__list *pos, *next;
    KV__LIST_FOREACH_SAFE(pos, next, &s->inflight) {
        kv__req *req = KV__LIST_ENTRY(pos, kv__req, link);
        if (req->fut != NULL && !kv_fut_done(req->fut)) {
            kv_fut_cancel(req->fut); /* req_on_cancel tells the backend */
        } else if (!req->canceled) {
            req->canceled = true;
            if (s->ops->cancel != NULL)
                s->ops->cancel(s, req);
        }
    }
    kv__req *cr = s->close_req;
    s->close_req = NULL;
    cr->done = close_done;
    s->ops->close(s, cr);
}

kv_fut *kv_close(kv_store *s)
{
    if (s == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "store is NULL");
    if (!kv__loop_on_thread(s->loop))
        return kv__forward_close(s, kv__thread_loop());
    if (s->state == KV__ST_OPEN)
        start_close(s);
    if (s->close_fut == NULL)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    if (s->state == KV__ST_CLOSED) {
        int st = kv_fut_status(s->close_fut);
        if (st == KV_OK)
            return kv__fut_done_now(kv__floop(s), KV_OK);
        return kv__fut_failed(kv__floop(s), st, "%s", kv_fut_errmsg(s->close_fut));
    }
    kv_fut *f = kv__fut_new(s->loop);
    if (f == NULL)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    if (kv__fut_relay(s->close_fut, f) != KV_OK) {
        kv__fut_unref(f);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    return f;
}

static void store_free_now(kv_store *s)
{
    kv_loop *loop = s->loop;
    kv__iters_store_freed(s);
    s->ops->destroy(s);
    if (s->close_fut != NULL)
        kv__fut_unref(s->close_fut);
    kv__free(s->close_req);
    kv__free(s);
    kv__loop_stores_add(loop, -1); /* last: kv_loop_free may go on now */
}

/* A closed store freed: now, or once the calls on their way to it have
 * arrived (kv__store_arrived). */
static void store_free_closed(kv_store *s)
{
    if (atomic_load(&s->transit) > 0) {
        s->free_when_arrived = true;
        return;
    }
    store_free_now(s);
}

void kv__store_sent(kv_store *s)
{
    atomic_fetch_add(&s->transit, 1);
}

void kv__store_arrived(kv_store *s)
{
    if (atomic_fetch_sub(&s->transit, 1) == 1 && s->free_when_arrived)
        store_free_now(s);
}

/* kv_store_free from another thread, on the store's thread: free now if
 * closed, else once the close completes (close_done). */
static void free_call(kv__call *c)
{
    kv_store *s = KV__CONTAINER_OF(c, kv_store, free_call);
    if (s->state == KV__ST_CLOSED) {
        store_free_closed(s);
        return;
    }
    s->free_when_closed = true;
    if (s->state == KV__ST_OPEN)
        start_close(s);
}

void kv_store_free(kv_store *s)
{
    if (s == NULL)
        return;
    if (!kv__loop_on_thread(s->loop)) {
        /* After this thread's calls that wait in its loop's outbox. */
        s->free_call.run = free_call;
        kv__loop_call_here(s->loop, &s->free_call);
        return;
    }
    if (s->free_when_closed || s->free_when_arrived)
        return; /* already on its way (freed twice: a caller's bug) */
    if (s->state == KV__ST_OPEN)
        start_close(s);
    while (s->state != KV__ST_CLOSED) {
        int r = kv_loop_run(s->loop, KV_RUN_ONCE);
        if (s->state == KV__ST_CLOSED)
            break;
        if (r <= 0) {
            /* Inside a callback (the loop cannot run here), or the backend
             * cannot finish closing: free once the close completes. */
            s->free_when_closed = true;
            return;
        }
    }
    store_free_closed(s);
}

kv_loop *kv_store_loop(const kv_store *s)
{
    return s != NULL ? s->loop : NULL;
}

size_t kv_store_inflight(const kv_store *s)
{
    if (s == NULL)
        return 0;
    return atomic_load(&((kv_store *)s)->nops);
}

int kv_store_set_max_inflight(kv_store *s, size_t max)
{
    if (s == NULL)
        return KV_EINVAL;
    atomic_store(&s->max_ops, max);
    return KV_OK;
}
