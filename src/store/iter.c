/*
 * iter.c - query iterators over the backends' streaming cursors: one
 * buffered chunk, at most one fetch in flight, FIFO waiters.  Lifetimes:
 * docs/DESIGN.md ("store").
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

enum { IT_OPENING = 0, IT_OPEN, IT_DISPOSING, IT_DISPOSED, IT_CLOSED };

struct kv__waiter {
    struct kv__waiter *next;
    kv_fut *fut; /* the waiter holds a reference */
    bool all;    /* kv_iter_fetch_all: collect up to the end */
    kv_record *recs;
    size_t n, cap;
};

static const kv_codec *iter_codec(const kv_iter *it)
{
    return it->typed ? &it->codec : NULL;
}

/* ------------------------------------------------------------------------ */
/* The store's iterator list and freeing                                    */
/* ------------------------------------------------------------------------ */

static void iter_link(kv_iter *it)
{
    kv__list_push_front(&it->store->iters, &it->link);
}

/* Safe on an iterator detached by kv_store_free (its node is self-linked). */
static void iter_unlink(kv_iter *it)
{
    kv__list_remove(&it->link);
}

static void drop_buffer(kv_iter *it)
{
    kv__items_free(it->buf, it->nbuf);
    it->buf = NULL;
    it->nbuf = it->pos = 0;
}

static void waiter_free(struct kv__waiter *w, const kv_codec *codec)
{
    for (size_t i = 0; i < w->n; i++)
        kv__record_clear(&w->recs[i], codec);
    kv__free(w->recs);
    kv__fut_unref(w->fut);
    kv__free(w);
}

static struct kv__waiter *waiter_pop(kv_iter *it)
{
    struct kv__waiter *w = it->waiters;
    it->waiters = w->next;
    if (it->waiters == NULL)
        it->waiters_tail = NULL;
    return w;
}

/* Complete every waiter with status (no result). */
static void fail_waiters(kv_iter *it, int status, const char *msg)
{
    while (it->waiters != NULL) {
        struct kv__waiter *w = waiter_pop(it);
        if (msg != NULL && msg[0] != '\0')
            kv__fut_finish(w->fut, status, "%s", msg);
        else
            kv__fut_finish(w->fut, status, NULL);
        waiter_free(w, iter_codec(it));
    }
}

static void iter_free_now(kv_iter *it)
{
    iter_unlink(it);
    fail_waiters(it, KV_EITER, "iterator freed");
    drop_buffer(it);
    kv__query_clear(&it->q);
    kv__keys_free(it->corrupt, it->ncorrupt);
    if (it->dispose_fut != NULL)
        kv__fut_unref(it->dispose_fut);
    kv__req_free(it->dispose_req);
    kv__free(it);
}

/* Free it if kv_iter_free was called and none of its requests is in flight. */
static void maybe_free(kv_iter *it)
{
    if (it->freed && !it->fetching && !it->disposing &&
        it->state != IT_OPENING)
        iter_free_now(it);
}

/* ------------------------------------------------------------------------ */
/* Serving next and fetch_all                                               */
/* ------------------------------------------------------------------------ */

static void fetch_done(kv__req *req, int status, const char *msg);

static int start_fetch(kv_iter *it)
{
    drop_buffer(it);
    kv__req *req = kv__req_new(it->store, KV__OP_ITER_FETCH);
    if (req == NULL)
        return KV_ENOMEM;
    req->iter = it;
    req->want_value = it->q.value;
    req->done = fetch_done;
    it->fetching = true;
    kv__req_submit(req);
    return KV_OK;
}

/*
 * Take the next buffered row as a record: KV_OK, or the row's failure: the
 * backend could not read it (KV_ECORRUPT) or the codec could not decode it
 * (the codec's code).  On failure *bad is the row's key (the caller's) and
 * *what a message saying why (NULL without memory).
 */
static int take_row(kv_iter *it, kv_record *rec, kv_key **bad, char **what)
{
    kv__item *item = &it->buf[it->pos++];
    const kv_codec *codec = iter_codec(it);
    int rc;
    if (item->status == KV_ECORRUPT) {
        memset(rec, 0, sizeof *rec);
        rc = KV_ECORRUPT;
        if (item->val != NULL && item->len > 0)
            *what = kv__asprintf("%s", (const char *)item->val);
        else
            *what = kv__asprintf("record %s is corrupt",
                                 kv_key_id(item->key));
    } else {
        rc = kv__item_to_record(item, rec, codec, it->q.value);
        if (rc != KV_OK)
            *what = kv__asprintf("cannot decode the value of %s: %s",
                                 kv_key_id(item->key), kv_strerror(rc));
    }
    if (rc != KV_OK) {
        *bad = item->key;
        item->key = NULL;
    }
    return rc;
}

/*
 * A row failed (take_row): with skip_corrupt and KV_ECORRUPT, list its key
 * and return KV_OK (serve on); else return the code for the waiter, whose
 * future gets the key (kv_fut_keys).  bad is taken, what freed.
 */
static int row_failed(kv_iter *it, struct kv__waiter *w, int rc, kv_key *bad,
                      char *what)
{
    if (rc == KV_ECORRUPT && it->q.skip_corrupt) {
        kv__free(what);
        if (it->ncorrupt == it->capcorrupt) {
            size_t cap = it->capcorrupt ? it->capcorrupt * 2 : 8;
            kv_key **p = kv__realloc(it->corrupt, cap * sizeof *p);
            if (p == NULL) {
                kv_key_free(bad);
                return KV_ENOMEM;
            }
            it->corrupt = p;
            it->capcorrupt = cap;
        }
        it->corrupt[it->ncorrupt++] = bad;
        return KV_OK;
    }
    kv_key **keys = bad != NULL ? kv__malloc(sizeof *keys) : NULL;
    if (keys != NULL) {
        keys[0] = bad;
        kv__fut_set_keys(w->fut, keys, 1);
    } else {
        kv_key_free(bad); /* the message still names it */
    }
    if (what != NULL)
        kv__fut_finish(w->fut, rc, "%s", what);
    else
        kv__fut_finish(w->fut, rc, NULL);
    kv__free(what);
    return rc;
}

static void fail_waiter_decode(kv_iter *it, int rc, char *what)
{
    struct kv__waiter *w = waiter_pop(it);
    if (what != NULL)
        kv__fut_finish(w->fut, rc, "%s", what);
    else
        kv__fut_finish(w->fut, rc, NULL);
    kv__free(what);
    waiter_free(w, iter_codec(it));
}

/* The head waiter's row failed and row_failed completed it: drop it. */
static void drop_failed_waiter(kv_iter *it)
{
    waiter_free(waiter_pop(it), iter_codec(it));
}

/* Serve queued waiters from the buffer; fetch when it runs dry. */
static void pump(kv_iter *it)
{
    const kv_codec *codec = iter_codec(it);
    while (it->waiters != NULL && it->state == IT_OPEN) {
        struct kv__waiter *w = it->waiters;
        if (kv_fut_done(w->fut)) { /* cancelled by its owner */
            waiter_free(waiter_pop(it), codec);
            continue;
        }
        if (it->finished) { /* the end went to an earlier waiter */
            waiter_pop(it);
            if (w->all)
                kv__fut_finish(w->fut, KV_OK, NULL);
            else
                kv__fut_finish(w->fut, KV_EITER, "iterator is finished");
            waiter_free(w, codec);
            continue;
        }
        if (!w->all) {
            if (it->pos < it->nbuf) {
                kv_record rec;
                char *what = NULL;
                kv_key *bad = NULL;
                int rc = take_row(it, &rec, &bad, &what);
                if (rc != KV_OK) {
                    rc = row_failed(it, w, rc, bad, what);
                    if (rc == KV_ENOMEM && !kv_fut_done(w->fut))
                        fail_waiter_decode(it, rc, NULL);
                    else if (rc != KV_OK)
                        drop_failed_waiter(it);
                    continue; /* KV_OK: skipped, serve this waiter on */
                }
                kv_record *r = kv__malloc(sizeof *r);
                if (r == NULL) {
                    kv__record_clear(&rec, codec);
                    fail_waiter_decode(it, KV_ENOMEM, NULL);
                    continue;
                }
                *r = rec;
                waiter_pop(it);
                kv__fut_set_records(w->fut, r, 1, codec);
                kv__fut_finish(w->fut, KV_OK, NULL);
                waiter_free(w, codec);
                continue;
            }
            if (it->eof) {
                waiter_pop(it);
                it->finished = true;
                kv__fut_finish(w->fut, KV_OK, NULL); /* the end: no record */
                waiter_free(w, codec);
                continue;
            }
        } else {
            int rc = KV_OK;
            char *what = NULL;
            while (rc == KV_OK && it->pos < it->nbuf) {
                if (w->n == w->cap) {
                    size_t cap = w->cap ? w->cap * 2 : 64;
                    kv_record *p = kv__realloc(w->recs, cap * sizeof *p);
                    if (p == NULL) {
                        rc = KV_ENOMEM;
                        break;
                    }
                    w->recs = p;
                    w->cap = cap;
                }
                kv_key *bad = NULL;
                rc = take_row(it, &w->recs[w->n], &bad, &what);
                if (rc == KV_OK)
                    w->n++;
                else
                    rc = row_failed(it, w, rc, bad, what);
            }
            if (rc != KV_OK) {
                if (kv_fut_done(w->fut))
                    drop_failed_waiter(it);
                else
                    fail_waiter_decode(it, rc, NULL);
                continue;
            }
            if (it->eof) {
                waiter_pop(it);
                it->finished = true;
                if (w->n > 0) {
                    kv__fut_set_records(w->fut, w->recs, w->n, codec);
                    w->recs = NULL;
                    w->n = w->cap = 0;
                }
                kv__fut_finish(w->fut, KV_OK, NULL);
                waiter_free(w, codec);
                continue;
            }
        }
        /* The buffer is empty and more rows may follow. */
        if (!it->fetching && start_fetch(it) != KV_OK)
            fail_waiters(it, KV_ENOMEM, NULL);
        break;
    }
    if (it->pos >= it->nbuf && it->buf != NULL)
        drop_buffer(it);
}

static kv_fut *add_waiter(kv_iter *it, bool all)
{
    struct kv__waiter *w = kv__calloc(1, sizeof *w);
    kv_fut *f = kv__fut_new(it->loop);
    if (w == NULL || f == NULL) {
        kv__free(w);
        if (f != NULL)
            kv__fut_unref(f);
        return kv__fut_failed(it->loop, KV_ENOMEM, NULL);
    }
    kv__fut_ref(f);
    w->fut = f;
    w->all = all;
    if (it->waiters_tail != NULL)
        it->waiters_tail->next = w;
    else
        it->waiters = w;
    it->waiters_tail = w;
    pump(it);
    return f;
}

/* KV_EITER with a message saying why, or NULL if it can serve. */
static kv_fut *check_usable(kv_iter *it)
{
    if (it == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "iterator is NULL");
    switch (it->state) {
    case IT_OPEN:
        return NULL;
    case IT_CLOSED:
        return kv__fut_failed(it->loop, KV_EITER, "the store is closed");
    default:
        return kv__fut_failed(it->loop, KV_EITER, "iterator is disposed");
    }
}

kv_fut *kv_iter_next(kv_iter *it)
{
    if (it != NULL && !kv__loop_on_thread(it->loop))
        return kv__forward_iter(it, KV__ITER_NEXT, kv__thread_loop());
    kv_fut *f = check_usable(it);
    if (f != NULL)
        return f;
    if (it->finished)
        return kv__fut_failed(it->loop, KV_EITER, "iterator is finished");
    return add_waiter(it, false);
}

kv_fut *kv_iter_fetch_all(kv_iter *it)
{
    if (it != NULL && !kv__loop_on_thread(it->loop))
        return kv__forward_iter(it, KV__ITER_FETCH_ALL, kv__thread_loop());
    kv_fut *f = check_usable(it);
    if (f != NULL)
        return f;
    if (it->finished)
        return kv__fut_done_now(it->loop, KV_OK);
    return add_waiter(it, true);
}

bool kv_iter_finished(const kv_iter *it)
{
    return it != NULL && it->finished;
}

const kv_key *const *kv_iter_corrupt(const kv_iter *it, size_t *n)
{
    size_t m = it != NULL ? it->ncorrupt : 0;
    if (n != NULL)
        *n = m;
    return m > 0 ? (const kv_key *const *)it->corrupt : NULL;
}

/* ------------------------------------------------------------------------ */
/* Dispose                                                                  */
/* ------------------------------------------------------------------------ */

static void dispose_finished(kv_iter *it, int status, const char *msg)
{
    if (it->state == IT_DISPOSING)
        it->state = IT_DISPOSED;
    if (it->dispose_fut != NULL) {
        if (status != KV_OK && msg != NULL && msg[0] != '\0')
            kv__fut_finish(it->dispose_fut, status, "%s", msg);
        else
            kv__fut_finish(it->dispose_fut, status, NULL);
    }
}

static void dispose_done(kv__req *req, int status, const char *msg)
{
    kv_iter *it = req->iter;
    kv__req_free(req);
    it->disposing = false;
    /* If the store closed meanwhile, close released the cursor. */
    if (it->state == IT_CLOSED)
        status = KV_OK;
    dispose_finished(it, status, msg);
    maybe_free(it);
}

static void submit_dispose(kv_iter *it)
{
    /*
     * The request made at open: a dispose that failed for want of memory
     * would leave the backend's cursor pointing at an iterator that
     * kv_iter_free is about to free.
     */
    kv__req *req = it->dispose_req;
    it->dispose_req = NULL;
    if (req == NULL)
        req = kv__req_new(it->store, KV__OP_ITER_DISPOSE);
    if (req == NULL) {
        /* The cursor stays with the backend until close releases it. */
        dispose_finished(it, KV_ENOMEM, NULL);
        return;
    }
    req->iter = it;
    req->done = dispose_done;
    it->disposing = true;
    kv__req_submit(req);
}

/* OPEN -> DISPOSING: pending calls fail, the buffer goes, the cursor is
 * released once no fetch is in flight. */
static void start_dispose(kv_iter *it)
{
    it->state = IT_DISPOSING;
    if (it->dispose_fut == NULL)
        it->dispose_fut = kv__fut_new(it->loop); /* NULL on OOM: goes on */
    fail_waiters(it, KV_EITER, "iterator is disposed");
    drop_buffer(it);
    if (!it->fetching)
        submit_dispose(it);
}

kv_fut *kv_iter_dispose(kv_iter *it)
{
    if (it == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "iterator is NULL");
    if (!kv__loop_on_thread(it->loop))
        return kv__forward_iter(it, KV__ITER_DISPOSE, kv__thread_loop());
    if (it->state == IT_OPEN)
        start_dispose(it);
    if (it->state == IT_CLOSED ||
        (it->state == IT_DISPOSED && it->dispose_fut == NULL))
        return kv__fut_done_now(it->loop, KV_OK);
    if (it->dispose_fut == NULL)
        return kv__fut_failed(it->loop, KV_ENOMEM, NULL);
    if (kv_fut_done(it->dispose_fut)) {
        int st = kv_fut_status(it->dispose_fut);
        if (st == KV_OK)
            return kv__fut_done_now(it->loop, KV_OK);
        return kv__fut_failed(it->loop, st, "%s",
                              kv_fut_errmsg(it->dispose_fut));
    }
    kv_fut *f = kv__fut_new(it->loop);
    if (f == NULL)
        return kv__fut_failed(it->loop, KV_ENOMEM, NULL);
    if (kv__fut_relay(it->dispose_fut, f) != KV_OK) {
        kv__fut_unref(f);
        return kv__fut_failed(it->loop, KV_ENOMEM, NULL);
    }
    return f;
}

static void iter_free_call(kv__call *c)
{
    kv_iter_free(KV__CONTAINER_OF(c, kv_iter, free_call));
}

void kv_iter_free(kv_iter *it)
{
    if (it == NULL)
        return;
    if (!kv__loop_on_thread(it->loop)) {
        it->free_call.run = iter_free_call; /* after this thread's calls */
        kv__loop_call_here(it->loop, &it->free_call);
        return;
    }
    it->freed = true;
    if (it->state == IT_OPEN)
        start_dispose(it);
    maybe_free(it);
}

/* ------------------------------------------------------------------------ */
/* Fetch completion                                                         */
/* ------------------------------------------------------------------------ */

static void fetch_done(kv__req *req, int status, const char *msg)
{
    kv_iter *it = req->iter;
    it->fetching = false;
    switch (it->state) {
    case IT_OPEN:
        if (status == KV_OK) {
            drop_buffer(it);
            it->buf = req->items;
            it->nbuf = req->n;
            it->pos = 0;
            it->eof = req->eof;
            req->items = NULL;
            req->n = 0;
            kv__req_free(req);
            pump(it);
        } else {
            kv__req_free(req);
            fail_waiters(it, status, msg);
        }
        return;
    case IT_DISPOSING:
        kv__req_free(req);
        submit_dispose(it);
        return;
    default: /* closed: the backend released the cursor */
        kv__req_free(req);
        maybe_free(it);
        return;
    }
}

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

int kv__query_copy(kv_query *dst, const kv_query *src)
{
    kv_key *key = NULL, *after = NULL;
    if (kv_key_dup(&key, src->key) != KV_OK ||
        (src->after != NULL && kv_key_dup(&after, src->after) != KV_OK)) {
        kv_key_free(key);
        return KV_ENOMEM;
    }
    *dst = *src;
    dst->key = key;
    dst->after = after;
    return KV_OK;
}

void kv__query_clear(kv_query *q)
{
    kv_key_free((kv_key *)q->key);
    kv_key_free((kv_key *)q->after);
    q->key = NULL;
    q->after = NULL;
}

kv_query kv_query_init(const kv_key *key)
{
    kv_query q;
    memset(&q, 0, sizeof q);
    q.key = key;
    q.after = NULL;
    q.value = true;
    q.sort = KV_SORT_ASC;
    q.offset = 0;
    q.limit = -1;
    q.skip_corrupt = false;
    return q;
}

static void open_done(kv__req *req, int status, const char *msg)
{
    kv_iter *it = req->iter;
    kv_fut *f = req->fut;
    bool wanted = f != NULL && !kv_fut_done(f);
    if (it->state == IT_OPENING)
        it->state = IT_OPEN;
    if (wanted && status == KV_OK && it->state == IT_OPEN) {
        kv__fut_set_iter(f, it);
        kv__fut_finish(f, KV_OK, NULL);
    } else if (status == KV_OK && it->state == IT_OPEN) {
        /* Nobody wants it (cancelled): release the cursor, then free. */
        it->freed = true;
        start_dispose(it);
        maybe_free(it);
    } else {
        if (wanted) {
            if (status == KV_OK)
                kv__fut_finish(f, KV_ECANCELED, "the store is closing");
            else if (msg != NULL && msg[0] != '\0')
                kv__fut_finish(f, status, "%s", msg);
            else
                kv__fut_finish(f, status, NULL);
        }
        it->state = IT_CLOSED;
        iter_free_now(it);
    }
    kv__req_free(req);
}

kv_fut *kv_query_open(kv_store *s, const kv_query *q, const kv_codec *codec)
{
    kv_fut *f = kv__store_check(s, false);
    if (f != NULL)
        return f;
    if (q == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "query is NULL");
    if (q->key == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "query key is NULL");
    if (q->offset < 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "query offset %lld is negative",
                              (long long)q->offset);
    if (q->limit < -1)
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "query limit %lld is below -1",
                              (long long)q->limit);
    if ((int)q->sort < KV_SORT_ASC || (int)q->sort > KV_SORT_NONE)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "query sort %d is unknown",
                              (int)q->sort);
    if (q->after != NULL && q->sort == KV_SORT_NONE)
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "query after needs an order (KV_SORT_NONE)");
    if (codec != NULL && codec->decode == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "codec has no decode");
    if (!kv__loop_on_thread(s->loop))
        return kv__forward_query_open(s, q, codec, kv__thread_loop());

    kv_iter *it = kv__calloc(1, sizeof *it);
    kv__req *req = kv__req_new(s, KV__OP_QUERY_OPEN);
    kv__req *dreq = kv__req_new(s, KV__OP_ITER_DISPOSE);
    if (it == NULL || req == NULL || dreq == NULL ||
        kv__query_copy(&it->q, q) != KV_OK) {
        kv__free(it);
        kv__free(req);
        kv__free(dreq);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    kv__list_init(&it->link);
    it->dispose_req = dreq;
    it->store = s;
    it->loop = s->loop;
    if (codec != NULL) {
        it->codec = *codec;
        it->typed = true;
    }
    it->state = IT_OPENING;
    iter_link(it);
    req->iter = it;
    req->want_value = q->value;
    req->done = open_done;
    return kv__req_start(req);
}

/* ------------------------------------------------------------------------ */
/* Store hooks                                                              */
/* ------------------------------------------------------------------------ */

void kv__iters_store_closing(kv_store *s)
{
    kv__list *pos, *next;
    KV__LIST_FOREACH_SAFE(pos, next, &s->iters) {
        kv_iter *it = KV__LIST_ENTRY(pos, kv_iter, link);
        int was = it->state;
        it->state = IT_CLOSED;
        fail_waiters(it, KV_ECANCELED, "the store is closing");
        drop_buffer(it);
        /* A dispose waiting for a fetch will never reach the backend now. */
        if (was == IT_DISPOSING && !it->disposing && it->dispose_fut != NULL)
            kv__fut_finish(it->dispose_fut, KV_OK, NULL);
        maybe_free(it);
    }
}

void kv__iters_store_freed(kv_store *s)
{
    kv__list *pos;
    while ((pos = kv__list_pop_front(&s->iters)) != NULL) {
        kv_iter *it = KV__LIST_ENTRY(pos, kv_iter, link);
        it->store = NULL;
        it->state = IT_CLOSED;
    }
}
