/*
 * req.c - the life of a store request: admission against the store's
 * limit, submission here or forwarding to the store's thread, cancellation,
 * and the generic completion that turns a request into its future's result.
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

void kv__fut_fail_msg(kv_fut *f, int status, const char *msg)
{
    if (msg != NULL && msg[0] != '\0')
        kv__fut_finish(f, status, "%s", msg);
    else
        kv__fut_finish(f, status, NULL);
}

/* ------------------------------------------------------------------------ */
/* Items and requests                                                       */
/* ------------------------------------------------------------------------ */

kv__item *kv__items_new(size_t n)
{
    return kv__calloc(n ? n : 1, sizeof(kv__item));
}

void kv__items_free(kv__item *items, size_t n)
{
    if (items == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        kv_key_free(items[i].key);
        kv_key_free(items[i].key2);
        kv__free(items[i].val);
    }
    kv__free(items);
}

kv__req *kv__req_new(kv_store *s, kv__opcode op)
{
    kv__req *req = kv__calloc(1, sizeof *req);
    if (req == NULL)
        return NULL;
    req->op = op;
    req->store = s;
    kv__list_init(&req->link);
    return req;
}

static void req_unlink(kv__req *req)
{
    if (!kv__list_linked(&req->link))
        return;
    kv__list_remove(&req->link);
    req->store->ninflight--;
}

void kv__req_submit(kv__req *req)
{
    kv_store *s = req->store;
    kv__list_push_front(&s->inflight, &req->link);
    s->ninflight++;
    s->ops->submit(s, req);
}

/* The operation's name, for the admission limit's message. */
static const char *req_name(const kv__req *req)
{
    static const char *const names[] = {
        [KV__K_HAS] = "kv_has",
        [KV__K_HAS_MANY] = "kv_has_many",
        [KV__K_GET] = "kv_get",
        [KV__K_GET_MANY] = "kv_get_many",
        [KV__K_PUT] = "kv_put",
        [KV__K_PUT_MANY] = "kv_put_many",
        [KV__K_DELETE] = "kv_delete",
        [KV__K_DELETE_MANY] = "kv_delete_many",
        [KV__K_PUT_ATOMIC] = "kv_put_atomic",
        [KV__K_DELETE_ATOMIC] = "kv_delete_atomic",
        [KV__K_MOVE] = "kv_move_prefix_atomic",
        [KV__K_DROP] = "kv_drop_prefix",
    };
    if (req->op == KV__OP_QUERY_OPEN)
        return "kv_query_open";
    if (req->kind > KV__K_NONE && req->kind <= KV__K_DROP)
        return names[req->kind];
    return "the operation";
}

/* Count req among the store's operations in flight, unless that passes the
 * limit: then KV_EBUSY (req is not counted). */
static int admit(kv__req *req)
{
    kv_store *s = req->store;
    size_t max = atomic_load_explicit(&s->max_ops, memory_order_relaxed);
    size_t n = atomic_fetch_add(&s->nops, 1) + 1;
    if (max != 0 && n > max) {
        atomic_fetch_sub(&s->nops, 1);
        return KV_EBUSY;
    }
    kv__loop_ops_add(s->loop, 1);
    req->counted = true;
    return KV_OK;
}

void kv__req_release_store(kv__req *req)
{
    if (req->counted) {
        atomic_fetch_sub(&req->store->nops, 1);
        kv__loop_ops_add(req->store->loop, -1);
        req->counted = false;
    }
    req->store = NULL;
}

void kv__req_free(kv__req *req)
{
    if (req == NULL)
        return;
    req_unlink(req); /* before the release: it reads req->store */
    if (req->store != NULL)
        kv__req_release_store(req);
    kv__items_free(req->items, req->n);
    if (req->fut != NULL)
        kv__fut_unref(req->fut);
    kv__free(req);
}

/* kv_fut_cancel on a request's future: tell the backend. */
static void req_on_cancel(kv_fut *f, void *arg)
{
    (void)f;
    kv__req *req = arg;
    req->canceled = true;
    if (req->store->ops->cancel != NULL)
        req->store->ops->cancel(req->store, req);
}

/* Give req a future (the caller's reference plus the request's) and submit. */
static kv_fut *start_here(kv__req *req)
{
    kv_store *s = req->store;
    kv_fut *f = kv__fut_new(s->loop);
    if (f == NULL) {
        /* A request with a completion hook (kv_query_open's) owns more
         * than itself, e.g. a linked iterator: its hook releases both. */
        if (req->done != NULL)
            req->done(req, KV_ENOMEM, NULL);
        else
            kv__req_free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    kv__fut_ref(f);
    req->fut = f;
    kv__fut_on_cancel(f, req_on_cancel, req);
    kv__req_submit(req);
    return f;
}

kv_fut *kv__req_start_here(kv__req *req)
{
    kv_store *s = req->store;
    if (s->state != KV__ST_OPEN) {
        /* Closed while the call travelled from its thread. */
        if (req->done != NULL)
            req->done(req, KV_ECLOSED, "store is closed");
        else
            kv__req_free(req);
        return kv__fut_failed(s->loop, KV_ECLOSED, "store is closed");
    }
    req->forwarded = true;
    return start_here(req);
}

/* kv_fut_cancel on a point read taken by ops->submit_any: the read is
 * short and runs without the loop, so it is only marked (its future is
 * already done: the result, when it comes, is dropped). */
static void any_on_cancel(kv_fut *f, void *arg)
{
    (void)f;
    kv__req *req = arg;
    req->canceled = true;
}

/* A point read made off the store's loop thread, handed to the backend
 * directly (ops->submit_any): its future is on caller, where it
 * completes. */
static kv_fut *start_any(kv__req *req, kv_loop *caller)
{
    kv_store *s = req->store;
    kv_fut *f = kv__fut_new(caller);
    if (f == NULL) {
        kv__req_free(req);
        return kv__fut_failed(caller, KV_ENOMEM, NULL);
    }
    int rc = s->ops->submit_any(s, req, caller);
    if (rc != KV_OK) {
        kv__req_free(req);
        kv__fut_fail_msg(f, rc,
                         rc == KV_ECLOSED ? "store is closed" : NULL);
        return f;
    }
    /* Completed on this thread only, after this call returns. */
    kv__fut_ref(f);
    req->fut = f;
    kv__fut_on_cancel(f, any_on_cancel, req);
    return f;
}

/*
 * Admission, then: on the store's loop thread, submit now; on any other
 * thread, hand a point read straight to the backend if it takes them
 * there (read_any), else forward req to the store's loop (remote.c); the
 * future is on the calling thread's loop.
 */
kv_fut *kv__req_start(kv__req *req)
{
    kv_store *s = req->store;
    bool here = kv__loop_on_thread(s->loop);
    kv_loop *floop = here ? s->loop : kv__thread_loop();
    if (admit(req) != KV_OK) {
        size_t max = atomic_load_explicit(&s->max_ops, memory_order_relaxed);
        const char *name = req_name(req);
        if (req->done != NULL)
            req->done(req, KV_EBUSY, NULL);
        else
            kv__req_free(req);
        return kv__fut_failed(floop, KV_EBUSY,
                              "%s: %zu operations in flight (the store's "
                              "limit)",
                              name, max);
    }
    if (here)
        return start_here(req);
    if (s->read_any && floop != NULL &&
        (req->op == KV__OP_GET || req->op == KV__OP_HAS))
        return start_any(req, floop);
    return kv__forward_req(req, floop);
}

/* ------------------------------------------------------------------------ */
/* Results                                                                  */
/* ------------------------------------------------------------------------ */

int kv__item_to_record(kv__item *item, kv_record *out, const kv_codec *codec,
                       bool value)
{
    memset(out, 0, sizeof *out);
    if (value && codec != NULL) {
        void *obj = NULL;
        static const unsigned char empty[1];
        int rc = codec->decode(item->val ? item->val : empty, item->len, &obj,
                               codec->ctx);
        if (rc != KV_OK)
            return rc < 0 ? rc : KV_ERROR;
        kv__free(item->val);
        out->val = obj;
    } else if (value) {
        out->val = item->val;
        out->len = item->len;
    } else {
        kv__free(item->val);
    }
    item->val = NULL;
    item->len = 0;
    out->key = item->key;
    item->key = NULL;
    out->token = item->token;
    return KV_OK;
}

/* Move the keys of the items with (status == KV_OK) == ok into the future. */
static int set_keys_where(kv_fut *f, kv__item *items, size_t n, bool ok)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if ((items[i].status == KV_OK) == ok)
            m++;
    if (m == 0)
        return KV_OK;
    kv_key **keys = kv__malloc(m * sizeof *keys);
    if (keys == NULL)
        return KV_ENOMEM;
    m = 0;
    for (size_t i = 0; i < n; i++) {
        if ((items[i].status == KV_OK) == ok) {
            keys[m++] = items[i].key;
            items[i].key = NULL;
        }
    }
    kv__fut_set_keys(f, keys, m);
    return KV_OK;
}

/* The first item status that is neither OK nor one of the expected ones. */
static int odd_status(const kv__item *items, size_t n, int expected)
{
    for (size_t i = 0; i < n; i++)
        if (items[i].status != KV_OK && items[i].status != expected)
            return items[i].status < 0 ? items[i].status : KV_EBACKEND;
    return KV_OK;
}

static void finish_records(kv__req *req, kv_fut *f)
{
    const kv_codec *codec = req->typed ? &req->codec : NULL;
    size_t m = 0;
    for (size_t i = 0; i < req->n; i++)
        if (req->items[i].status == KV_OK)
            m++;
    kv_record *recs = NULL;
    if (m > 0) {
        recs = kv__calloc(m, sizeof *recs);
        if (recs == NULL) {
            kv__fut_finish(f, KV_ENOMEM, NULL);
            return;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < req->n; i++) {
        kv__item *it = &req->items[i];
        if (it->status != KV_OK)
            continue;
        char *id = NULL;
        if (codec != NULL)
            id = kv__strdup(kv_key_id(it->key));
        int rc = kv__item_to_record(it, &recs[k], codec, true);
        if (rc != KV_OK) {
            for (size_t j = 0; j < k; j++)
                kv__record_clear(&recs[j], codec);
            kv__free(recs);
            kv__fut_finish(f, rc, "cannot decode the value of %s: %s",
                           id ? id : "a record", kv_strerror(rc));
            kv__free(id);
            return;
        }
        kv__free(id);
        k++;
    }
    if (m > 0)
        kv__fut_set_records(f, recs, m, codec);
    kv__fut_finish(f, KV_OK, NULL);
}

/*
 * A delete's unconditional items (KV_TOKEN_ANY) never conflict: one that
 * found no record (ENOTFOUND, or ECONFLICT from a backend that does not
 * tell them apart) succeeded too.  Sets each such item's status to KV_OK;
 * *removed says whether items[0] removed a record.
 */
static void any_deletes_ok(kv__item *items, size_t n, bool *removed)
{
    *removed = n > 0 && items[0].status == KV_OK;
    for (size_t i = 0; i < n; i++)
        if (items[i].any && (items[i].status == KV_ENOTFOUND ||
                             items[i].status == KV_ECONFLICT))
            items[i].status = KV_OK;
}

/* A put batch's result: skipped keys and the token of each item (0 where
 * not written; all 0 for an atomic batch that conflicted). */
static int set_put_result(kv_fut *f, kv__item *items, size_t n, bool atomic)
{
    uint64_t *tok = kv__malloc(n * sizeof *tok);
    if (tok == NULL)
        return KV_ENOMEM;
    bool conflict = false;
    for (size_t i = 0; i < n; i++)
        conflict |= items[i].status != KV_OK;
    for (size_t i = 0; i < n; i++)
        tok[i] = items[i].status == KV_OK && !(atomic && conflict)
                     ? items[i].token
                     : 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (items[i].status != KV_OK)
            m++;
    kv_key **keys = NULL;
    if (m > 0 && (keys = kv__malloc(m * sizeof *keys)) == NULL) {
        kv__free(tok);
        return KV_ENOMEM;
    }
    m = 0;
    for (size_t i = 0; i < n; i++) {
        if (items[i].status != KV_OK) {
            keys[m++] = items[i].key;
            items[i].key = NULL;
        }
    }
    int rc = kv__fut_set_writes(f, keys, m, tok, n);
    kv__free(tok);
    return rc;
}

/* Turn a completed request into its future's result. */
static void finish_generic(kv__req *req, int status, const char *msg)
{
    kv_fut *f = req->fut;
    if (f == NULL || kv_fut_done(f))
        return; /* cancelled: nobody wants the result */
    if (status != KV_OK) {
        kv__fut_fail_msg(f, status, msg);
        return;
    }
    kv__item *items = req->items;
    size_t n = req->n;
    int rc;
    switch (req->kind) {
    case KV__K_HAS:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            kv__fut_fail_msg(f, rc, msg);
            return;
        }
        kv__fut_set_bool(f, items[0].status == KV_OK);
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case KV__K_HAS_MANY:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            kv__fut_fail_msg(f, rc, msg);
            return;
        }
        if (set_keys_where(f, items, n, true) != KV_OK) {
            kv__fut_finish(f, KV_ENOMEM, NULL);
            return;
        }
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case KV__K_GET:
        if (items[0].status == KV_ENOTFOUND) {
            kv__fut_finish(f, KV_ENOTFOUND, "key not found: %s",
                           kv_key_id(items[0].key));
            return;
        }
        /* fall through */
    case KV__K_GET_MANY:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            kv__fut_fail_msg(f, rc, msg);
            return;
        }
        finish_records(req, f);
        return;
    case KV__K_PUT:
    case KV__K_DELETE: {
        if ((rc = odd_status(items, n, KV_ECONFLICT)) != KV_OK &&
            rc != KV_ENOTFOUND) {
            kv__fut_fail_msg(f, rc, msg);
            return;
        }
        bool removed = false;
        if (req->kind == KV__K_DELETE)
            any_deletes_ok(items, n, &removed);
        if (items[0].status != KV_OK) {
            kv__fut_finish(f, KV_ECONFLICT, "token conflict on %s",
                           kv_key_id(items[0].key));
            return;
        }
        if (req->kind == KV__K_PUT)
            kv__fut_set_token(f, items[0].token);
        else if (items[0].any)
            kv__fut_set_bool(f, removed);
        kv__fut_finish(f, KV_OK, NULL);
        return;
    }
    case KV__K_PUT_MANY:
    case KV__K_DELETE_MANY:
    case KV__K_PUT_ATOMIC:
    case KV__K_DELETE_ATOMIC: {
        if ((rc = odd_status(items, n, KV_ECONFLICT)) != KV_OK &&
            rc != KV_ENOTFOUND) {
            kv__fut_fail_msg(f, rc, msg);
            return;
        }
        bool put = req->kind == KV__K_PUT_MANY || req->kind == KV__K_PUT_ATOMIC;
        if (put) {
            if (set_put_result(f, items, n, req->kind == KV__K_PUT_ATOMIC) !=
                KV_OK) {
                kv__fut_finish(f, KV_ENOMEM, NULL);
                return;
            }
            kv__fut_finish(f, KV_OK, NULL);
            return;
        }
        bool removed;
        any_deletes_ok(items, n, &removed);
        if (set_keys_where(f, items, n, false) != KV_OK) {
            kv__fut_finish(f, KV_ENOMEM, NULL);
            return;
        }
        kv__fut_finish(f, KV_OK, NULL);
        return;
    }
    case KV__K_MOVE:
    case KV__K_DROP:
    default:
        kv__fut_finish(f, KV_OK, NULL);
        return;
    }
}

void kv__req_done(kv__req *req, int status, const char *fmt, ...)
{
    char *msg = NULL;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        msg = kv__vasprintf(fmt, ap);
        va_end(ap);
    }
    req_unlink(req);
    if (req->done != NULL) {
        req->done(req, status, msg);
    } else {
        finish_generic(req, status, msg);
        kv__req_free(req);
    }
    kv__free(msg);
}

