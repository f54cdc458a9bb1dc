/*
 * remote.c - store and iterator calls made on a thread other than the
 * store's loop thread: the call is handed to the store's loop (its list of
 * forwarded calls and eventfd, no lock), made there, and its outcome is
 * posted back to the calling thread's loop, where the caller's future
 * completes.  The hand-offs a loop makes in one turn leave together at
 * its end (kv__loop_post_from, kv__loop_call_from).  kv_fut_cancel on the
 * caller's future completes it at once and sends a second call that
 * cancels the call's own future on the store's thread, so the backend
 * stops the work.  The threading model is in
 * docs/DESIGN.md ("store": threads).
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

typedef struct remote remote;
struct remote {
    kv__call call;   /* to the store's loop */
    kv__call cancel; /* to the store's loop after a cancel (cancel_run) */
    kv__job job;     /* back to the caller's loop (its done: remote_back) */
    kv_loop *target; /* the store's loop */
    kv_store *sent_to; /* the store, counted in its transit (not iters) */
    kv_fut *outer;   /* the caller's future (a reference; caller thread) */
    kv_fut *inner;   /* the call's future while pending (store thread) */
    atomic_bool canceled; /* outer was cancelled: do not start the call */
    atomic_int refs; /* the round trip, plus a cancel call in flight */
    /* What to do on the store's thread: start req, or call fn. */
    kv__req *req;
    kv_fut *(*fn)(remote *r);
    kv_store *s;
    kv_iter *it;
    int what;        /* KV__ITER_* */
    kv_query q;      /* kv_query_open: q.key and q.after are owned copies */
    kv_codec codec;
    bool typed;
    kv__fut_xfer x;  /* the outcome, on its way back */
};

/* Drop a reference: the last frees r (on whichever thread that is). */
static void remote_release(remote *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        kv__free(r);
}

/* Caller thread: the outcome arrived (job posted by the store's thread). */
static void remote_back(kv__job *job, int status)
{
    (void)status; /* never cancelled: the job was on no pool */
    remote *r = KV__CONTAINER_OF(job, remote, job);
    kv__fut_import(r->outer, &r->x); /* released if outer was cancelled */
    kv__fut_unref(r->outer);
    r->outer = NULL;
    kv__query_clear(&r->q);
    remote_release(r);
}

/* Store thread: hand the outcome back, with the others of this turn of
 * the store's loop (one push and at most one wake per caller's loop). */
static void remote_post(remote *r)
{
    kv__loop_post_from(r->target, &r->job); /* r is the caller's from here */
}

static void remote_inner_done(kv_fut *inner, void *arg)
{
    remote *r = arg;
    r->inner = NULL;
    kv__fut_export(inner, &r->x);
    kv_fut_free(inner);
    remote_post(r);
}

/* Store thread: make the call, then wait for its future. */
static void remote_call(remote *r)
{
    kv_fut *inner;
    if (atomic_load_explicit(&r->canceled, memory_order_relaxed)) {
        kv__req_free(r->req); /* never started */
        r->req = NULL;
        memset(&r->x, 0, sizeof r->x);
        r->x.status = KV_ECANCELED;
        remote_post(r);
        return;
    }
    if (r->req != NULL) {
        kv__req *req = r->req;
        r->req = NULL;
        inner = kv__req_start_here(req);
    } else {
        inner = r->fn(r);
    }
    if (kv_fut_done(inner) || kv_fut_then(inner, remote_inner_done, r) !=
                                  KV_OK) {
        kv_fut_cancel(inner); /* no-op if done; else it could not wait */
        remote_inner_done(inner, r);
        return;
    }
    r->inner = inner; /* until remote_inner_done */
}

/* Store thread: the call arrived.  r may be the caller's once it is made
 * (an outcome posted at once), so the store is read first. */
static void remote_run(kv__call *c)
{
    remote *r = KV__CONTAINER_OF(c, remote, call);
    kv_store *s = r->sent_to;
    remote_call(r);
    if (s != NULL)
        kv__store_arrived(s); /* may free s: its last touch */
}

/* Store thread: the caller cancelled; stop the call if it still runs (its
 * future completes KV_ECANCELED and remote_inner_done posts that back, to
 * a caller's future that is already done). */
static void cancel_run(kv__call *c)
{
    remote *r = KV__CONTAINER_OF(c, remote, cancel);
    if (r->inner != NULL)
        kv_fut_cancel(r->inner);
    remote_release(r);
}

/* Caller thread: kv_fut_cancel on the caller's future, which completes
 * KV_ECANCELED at once.  The round trip is still pending (remote_back has
 * not run: it runs on this thread), so the store's loop is alive. */
static void remote_on_cancel(kv_fut *f, void *arg)
{
    (void)f;
    remote *r = arg;
    atomic_store_explicit(&r->canceled, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    r->cancel.run = cancel_run;
    kv__loop_call(r->target, &r->cancel);
}

/* A forward that could not start: free r and what it owns. */
static void remote_discard(remote *r)
{
    kv__req_free(r->req);
    kv__query_clear(&r->q);
    kv__free(r);
}

/* Hand r to target's loop (for store s; NULL for an iterator). */
static kv_fut *forward(remote *r, kv_loop *target, kv_loop *caller,
                       kv_store *s)
{
    if (caller == NULL) {
        remote_discard(r);
        return kv__fut_failed(NULL, KV_ERROR,
                              "no loop for this thread's futures: %s",
                              kv_last_errmsg());
    }
    kv_fut *f = kv__fut_new(caller);
    if (f == NULL) {
        remote_discard(r);
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    }
    kv__fut_ref(f);
    r->outer = f;
    r->target = target;
    atomic_init(&r->canceled, false);
    atomic_init(&r->refs, 1);
    kv__fut_on_cancel(f, remote_on_cancel, r);
    r->job.done = remote_back;
    kv__loop_expect(caller, &r->job);
    r->call.run = remote_run;
    r->sent_to = s;
    if (s != NULL)
        kv__store_sent(s);
    kv__loop_call_from(caller, target, &r->call); /* per turn of caller */
    return f;
}

kv_fut *kv__forward_req(kv__req *req, kv_loop *caller)
{
    remote *r = kv__calloc(1, sizeof *r);
    if (r == NULL) {
        kv__req_free(req);
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    }
    r->req = req;
    return forward(r, req->store->loop, caller, req->store);
}

static kv_fut *call_close(remote *r)
{
    return kv_close(r->s);
}

kv_fut *kv__forward_close(kv_store *s, kv_loop *caller)
{
    remote *r = kv__calloc(1, sizeof *r);
    if (r == NULL)
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    r->s = s;
    r->fn = call_close;
    return forward(r, s->loop, caller, s);
}

static kv_fut *call_query_open(remote *r)
{
    return kv_query_open(r->s, &r->q, r->typed ? &r->codec : NULL);
}

kv_fut *kv__forward_query_open(kv_store *s, const kv_query *q,
                               const kv_codec *codec, kv_loop *caller)
{
    remote *r = kv__calloc(1, sizeof *r);
    if (r == NULL || kv__query_copy(&r->q, q) != KV_OK) {
        kv__free(r);
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    }
    r->s = s;
    if (codec != NULL) {
        r->codec = *codec;
        r->typed = true;
    }
    r->fn = call_query_open;
    return forward(r, s->loop, caller, s);
}

static kv_fut *call_iter(remote *r)
{
    switch (r->what) {
    case KV__ITER_NEXT:
        return kv_iter_next(r->it);
    case KV__ITER_FETCH_ALL:
        return kv_iter_fetch_all(r->it);
    default:
        return kv_iter_dispose(r->it);
    }
}

kv_fut *kv__forward_iter(kv_iter *it, int what, kv_loop *caller)
{
    remote *r = kv__calloc(1, sizeof *r);
    if (r == NULL)
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    r->it = it;
    r->what = what;
    r->fn = call_iter;
    return forward(r, it->loop, caller, NULL);
}
