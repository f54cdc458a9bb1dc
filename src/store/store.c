/*
 * store.c - the generic store layer: the store handle, the record
 * operations (check, copy the inputs into a kv__req, hand it to the
 * backend) and the completion that turns a request into its future's
 * result.  Lifetimes: docs/DESIGN.md ("store").
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

enum { ST_OPEN = 0, ST_CLOSING, ST_CLOSED };

/* req->kind for the generic completion. */
enum {
    K_NONE = 0,
    K_HAS,
    K_HAS_MANY,
    K_GET,
    K_GET_MANY,
    K_PUT,
    K_PUT_MANY,
    K_DELETE,
    K_DELETE_MANY,
    K_PUT_ATOMIC,
    K_DELETE_ATOMIC,
    K_MOVE,
    K_DROP
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void fut_fail_msg(kv_fut *f, int status, const char *msg)
{
    if (msg != NULL && msg[0] != '\0')
        kv__fut_finish(f, status, "%s", msg);
    else
        kv__fut_finish(f, status, NULL);
}

/* The first check of every operation: a usable store. */
kv_fut *kv__store_check(kv_store *s, bool write)
{
    if (s == NULL)
        return kv__fut_failed(NULL, KV_EINVAL, "store is NULL");
    if (s->state != ST_OPEN)
        return kv__fut_failed(kv__floop(s), KV_ECLOSED, "store is closed");
    if (write && (s->flags & KV_READONLY))
        return kv__fut_failed(kv__floop(s), KV_EREADONLY, "store is read-only");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Key sets                                                                 */
/* ------------------------------------------------------------------------ */

int kv__keyset_init(kv__keyset *ks, size_t n)
{
    ks->slots = NULL;
    ks->cap = 0;
    if (n == 0)
        return KV_OK;
    size_t cap = 8;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4)
            return KV_ENOMEM;
        cap *= 2;
    }
    ks->slots = kv__calloc(cap, sizeof *ks->slots);
    if (ks->slots == NULL)
        return KV_ENOMEM;
    ks->cap = cap;
    return KV_OK;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t keyset_find(const kv__keyset *ks, const kv_key *key)
{
    size_t mask = ks->cap - 1;
    size_t i = (size_t)kv_key_hash(key) & mask;
    while (ks->slots[i] != NULL && !kv_key_equal(ks->slots[i], key))
        i = (i + 1) & mask;
    return i;
}

bool kv__keyset_add(kv__keyset *ks, const kv_key *key)
{
    size_t i = keyset_find(ks, key);
    if (ks->slots[i] != NULL)
        return false;
    ks->slots[i] = key;
    return true;
}

bool kv__keyset_has(const kv__keyset *ks, const kv_key *key)
{
    if (ks->cap == 0)
        return false;
    return ks->slots[keyset_find(ks, key)] != NULL;
}

void kv__keyset_free(kv__keyset *ks)
{
    kv__free(ks->slots);
    ks->slots = NULL;
    ks->cap = 0;
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
        [K_HAS] = "kv_has",
        [K_HAS_MANY] = "kv_has_many",
        [K_GET] = "kv_get",
        [K_GET_MANY] = "kv_get_many",
        [K_PUT] = "kv_put",
        [K_PUT_MANY] = "kv_put_many",
        [K_DELETE] = "kv_delete",
        [K_DELETE_MANY] = "kv_delete_many",
        [K_PUT_ATOMIC] = "kv_put_atomic",
        [K_DELETE_ATOMIC] = "kv_delete_atomic",
        [K_MOVE] = "kv_move_prefix_atomic",
        [K_DROP] = "kv_drop_prefix",
    };
    if (req->op == KV__OP_QUERY_OPEN)
        return "kv_query_open";
    if (req->kind > K_NONE && req->kind <= K_DROP)
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

void kv__req_free(kv__req *req)
{
    if (req == NULL)
        return;
    if (req->counted) {
        atomic_fetch_sub(&req->store->nops, 1);
        kv__loop_ops_add(req->store->loop, -1);
    }
    req_unlink(req);
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
    if (s->state != ST_OPEN) {
        /* Closed while the call travelled from its thread. */
        if (req->done != NULL)
            req->done(req, KV_ECLOSED, "store is closed");
        else
            kv__req_free(req);
        return kv__fut_failed(s->loop, KV_ECLOSED, "store is closed");
    }
    return start_here(req);
}

/*
 * Admission, then: on the store's loop thread, submit now; on any other
 * thread, forward req to the store's loop (remote.c) and return a future
 * on the calling thread's loop.
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

/* Turn a completed request into its future's result. */
static void finish_generic(kv__req *req, int status, const char *msg)
{
    kv_fut *f = req->fut;
    if (f == NULL || kv_fut_done(f))
        return; /* cancelled: nobody wants the result */
    if (status != KV_OK) {
        fut_fail_msg(f, status, msg);
        return;
    }
    kv__item *items = req->items;
    size_t n = req->n;
    int rc;
    switch (req->kind) {
    case K_HAS:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            fut_fail_msg(f, rc, msg);
            return;
        }
        kv__fut_set_bool(f, items[0].status == KV_OK);
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case K_HAS_MANY:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            fut_fail_msg(f, rc, msg);
            return;
        }
        if (set_keys_where(f, items, n, true) != KV_OK) {
            kv__fut_finish(f, KV_ENOMEM, NULL);
            return;
        }
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case K_GET:
        if (items[0].status == KV_ENOTFOUND) {
            kv__fut_finish(f, KV_ENOTFOUND, "key not found: %s",
                           kv_key_id(items[0].key));
            return;
        }
        /* fall through */
    case K_GET_MANY:
        if ((rc = odd_status(items, n, KV_ENOTFOUND)) != KV_OK) {
            fut_fail_msg(f, rc, msg);
            return;
        }
        finish_records(req, f);
        return;
    case K_PUT:
    case K_DELETE:
        if ((rc = odd_status(items, n, KV_ECONFLICT)) != KV_OK &&
            rc != KV_ENOTFOUND) {
            fut_fail_msg(f, rc, msg);
            return;
        }
        if (items[0].status != KV_OK) {
            kv__fut_finish(f, KV_ECONFLICT, "token conflict on %s",
                           kv_key_id(items[0].key));
            return;
        }
        if (req->kind == K_PUT)
            kv__fut_set_token(f, items[0].token);
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case K_PUT_MANY:
    case K_DELETE_MANY:
    case K_PUT_ATOMIC:
    case K_DELETE_ATOMIC:
        if ((rc = odd_status(items, n, KV_ECONFLICT)) != KV_OK &&
            rc != KV_ENOTFOUND) {
            fut_fail_msg(f, rc, msg);
            return;
        }
        if (set_keys_where(f, items, n, false) != KV_OK) {
            kv__fut_finish(f, KV_ENOMEM, NULL);
            return;
        }
        kv__fut_finish(f, KV_OK, NULL);
        return;
    case K_MOVE:
    case K_DROP:
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

/* ------------------------------------------------------------------------ */
/* Argument checks and input copies                                         */
/* ------------------------------------------------------------------------ */

/* Check one key of a record operation: KV_OK or a failed future. */
static kv_fut *check_key(kv_store *s, const kv_key *key, const char *what,
                         size_t i, bool single)
{
    if (key == NULL) {
        if (single)
            return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s is NULL", what);
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s[%zu] is NULL", what, i);
    }
    if (kv_key_len(key) == 0) {
        if (single)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "%s is the empty key", what);
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s[%zu] is the empty key",
                              what, i);
    }
    /* The limits of every backend (kvstore.h, "Keys"): one check here. */
    size_t n = kv_key_len(key), idlen = strlen(kv_key_id(key));
    const char *why = NULL;
    size_t lim = 0;
    if (n > KV_KEY_MAX_DEPTH) {
        why = "namespaces";
        lim = KV_KEY_MAX_DEPTH;
    } else if (idlen > KV_KEY_MAX_LEN) {
        why = "bytes";
        lim = KV_KEY_MAX_LEN;
    }
    for (size_t j = 0; why == NULL && j < n; j++) {
        const kv_ns *ns = kv_key_ns(key, j);
        size_t fl = strlen(ns->field);
        if (fl + (fl > 0) + strlen(ns->value) > KV_NS_MAX_LEN) {
            why = "bytes in a namespace";
            lim = KV_NS_MAX_LEN;
        }
    }
    if (why != NULL && single)
        return kv__fut_failed(s->loop, KV_EINVAL,
                              "%s has more than %zu %s (the key limits "
                              "of kvstore.h)", what, lim, why);
    if (why != NULL)
        return kv__fut_failed(s->loop, KV_EINVAL,
                              "%s[%zu] has more than %zu %s (the key limits "
                              "of kvstore.h)", what, i, lim, why);
    return NULL;
}

static kv_fut *check_codec(kv_store *s, const kv_codec *codec, bool enc,
                           bool dec)
{
    if (codec == NULL)
        return NULL;
    if (enc && codec->encode == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "codec has no encode");
    if (dec && codec->decode == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "codec has no decode");
    return NULL;
}

kv_fut *kv__check_records(kv_store *s, const kv_record *recs, size_t n,
                          const kv_codec *codec, bool values, bool atomic,
                          bool single)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (atomic && !s->ops->atomic_batch)
        return kv__fut_failed(kv__floop(s), KV_ENOTSUP,
                              "the %s backend has no atomic batches",
                              s->ops->name);
    if (recs == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "records array is NULL");
    if (values && (f = check_codec(s, codec, true, false)) != NULL)
        return f;
    for (size_t i = 0; i < n; i++) {
        if ((f = check_key(s, recs[i].key, single ? "key" : "recs.key", i,
                           single)) != NULL)
            return f;
        if (values && codec == NULL && recs[i].val == NULL && recs[i].len > 0)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "the value of %s is NULL with length %zu",
                                  kv_key_id(recs[i].key), recs[i].len);
        if (values && codec == NULL && recs[i].len > KV_MAX_VALUE_SIZE)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "the value of %s is %zu bytes, more than "
                                  "KV_MAX_VALUE_SIZE",
                                  kv_key_id(recs[i].key), recs[i].len);
    }
    return NULL;
}

/* Fail KV_EDUPLICATE if keys (key_at(i)) name one key twice. */
static kv_fut *check_dups(kv_store *s, const void *base, size_t stride,
                          size_t off, size_t n)
{
    if (n < 2)
        return NULL;
    kv__keyset ks;
    if (kv__keyset_init(&ks, n) != KV_OK)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    const char *p = base;
    for (size_t i = 0; i < n; i++) {
        const kv_key *k = *(const kv_key *const *)(const void *)(p + i * stride + off);
        if (!kv__keyset_add(&ks, k)) {
            kv__keyset_free(&ks);
            return kv__fut_failed(kv__floop(s), KV_EDUPLICATE,
                                  "the batch names %s twice", kv_key_id(k));
        }
    }
    kv__keyset_free(&ks);
    return NULL;
}

/* Copy (or encode) a value into an item.  KV_OK or an error code. */
static int item_set_value(kv__item *it, const void *val, size_t len,
                          const kv_codec *codec)
{
    if (codec != NULL) {
        kv_buf b = {NULL, 0, 0};
        int rc = codec->encode(val, &b, codec->ctx);
        if (rc != KV_OK) {
            kv__free(b.data);
            return rc < 0 ? rc : KV_ERROR;
        }
        if (b.len > KV_MAX_VALUE_SIZE) {
            kv__free(b.data);
            return KV_EINVAL; /* the encoding is too large to store */
        }
        if (b.data == NULL) {
            b.data = kv__malloc(1);
            if (b.data == NULL)
                return KV_ENOMEM;
        }
        it->val = b.data;
        it->len = b.len;
        return KV_OK;
    }
    it->val = kv__memdup(val, len);
    if (it->val == NULL)
        return KV_ENOMEM;
    it->len = len;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Writes                                                                   */
/* ------------------------------------------------------------------------ */

static kv_fut *write_records(kv_store *s, int kind, kv__opcode op,
                             const kv_record *recs, size_t n,
                             const kv_codec *codec, bool values, bool atomic,
                             bool single)
{
    kv_fut *f = kv__check_records(s, recs, n, codec, values, atomic, single);
    if (f != NULL)
        return f;
    if ((f = check_dups(s, recs, sizeof *recs, offsetof(kv_record, key), n)))
        return f;
    if (kind == K_DELETE && recs[0].token == 0)
        return kv__fut_failed(kv__floop(s), KV_ECONFLICT,
                              "token conflict on %s: token 0 never matches a "
                              "stored record",
                              kv_key_id(recs[0].key));
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);

    kv__req *req = kv__req_new(s, op);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = kind;
    for (size_t i = 0; i < n; i++) {
        kv__item *it = &req->items[i];
        int rc = kv_key_dup(&it->key, recs[i].key);
        if (rc == KV_OK && values)
            rc = item_set_value(it, recs[i].val, recs[i].len, codec);
        if (rc != KV_OK) {
            kv__req_free(req);
            if (codec != NULL && rc != KV_ENOMEM)
                return kv__fut_failed(kv__floop(s), rc,
                                      "cannot encode the value of %s: %s",
                                      kv_key_id(recs[i].key), kv_strerror(rc));
            return kv__fut_failed(kv__floop(s), rc, NULL);
        }
        it->token = recs[i].token;
    }
    return kv__req_start(req);
}

kv_fut *kv_put(kv_store *s, const kv_record *rec, const kv_codec *codec)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (rec == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "record is NULL");
    return write_records(s, K_PUT, KV__OP_PUT, rec, 1, codec, true, false,
                         true);
}

kv_fut *kv_put_value(kv_store *s, const kv_key *key, const void *val,
                     size_t len, const kv_codec *codec)
{
    kv_record r = {(kv_key *)key, (void *)val, len, 0};
    return kv_put(s, &r, codec);
}

kv_fut *kv_put_many(kv_store *s, const kv_record *recs, size_t n,
                    const kv_codec *codec)
{
    return write_records(s, K_PUT_MANY, KV__OP_PUT, recs, n, codec, true,
                         false, false);
}

kv_fut *kv_put_atomic(kv_store *s, const kv_record *recs, size_t n,
                      const kv_codec *codec)
{
    return write_records(s, K_PUT_ATOMIC, KV__OP_PUT_ATOMIC, recs, n, codec,
                         true, true, false);
}

kv_fut *kv_delete(kv_store *s, const kv_key *key, uint64_t token)
{
    kv_record r = {(kv_key *)key, NULL, 0, token};
    return write_records(s, K_DELETE, KV__OP_DELETE, &r, 1, NULL, false, false,
                         true);
}

kv_fut *kv_delete_many(kv_store *s, const kv_record *recs, size_t n)
{
    return write_records(s, K_DELETE_MANY, KV__OP_DELETE, recs, n, NULL, false,
                         false, false);
}

kv_fut *kv_delete_atomic(kv_store *s, const kv_record *recs, size_t n)
{
    return write_records(s, K_DELETE_ATOMIC, KV__OP_DELETE_ATOMIC, recs, n,
                         NULL, false, true, false);
}

/* ------------------------------------------------------------------------ */
/* Reads                                                                    */
/* ------------------------------------------------------------------------ */

static kv_fut *read_keys(kv_store *s, int kind, kv__opcode op,
                         const kv_key *const *keys, size_t n,
                         const kv_codec *codec, bool single)
{
    kv_fut *f = kv__store_check(s, false);
    if (f != NULL)
        return f;
    if (keys == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "keys array is NULL");
    if ((f = check_codec(s, codec, false, true)) != NULL)
        return f;
    for (size_t i = 0; i < n; i++)
        if ((f = check_key(s, keys[i], single ? "key" : "keys", i, single)))
            return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);

    /* Read batches deduplicate: one item per distinct key. */
    kv__keyset ks;
    if (kv__keyset_init(&ks, n) != KV_OK)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    kv__req *req = kv__req_new(s, op);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        kv__keyset_free(&ks);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->kind = kind;
    req->want_value = op == KV__OP_GET;
    if (codec != NULL) {
        req->codec = *codec;
        req->typed = true;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (n > 1 && !kv__keyset_add(&ks, keys[i]))
            continue;
        if (kv_key_dup(&req->items[m].key, keys[i]) != KV_OK) {
            req->n = m;
            kv__req_free(req);
            kv__keyset_free(&ks);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
        m++;
    }
    req->n = m;
    kv__keyset_free(&ks);
    return kv__req_start(req);
}

kv_fut *kv_has(kv_store *s, const kv_key *key)
{
    return read_keys(s, K_HAS, KV__OP_HAS, &key, 1, NULL, true);
}

kv_fut *kv_has_many(kv_store *s, const kv_key *const *keys, size_t n)
{
    return read_keys(s, K_HAS_MANY, KV__OP_HAS, keys, n, NULL, false);
}

kv_fut *kv_get(kv_store *s, const kv_key *key, const kv_codec *codec)
{
    return read_keys(s, K_GET, KV__OP_GET, &key, 1, codec, true);
}

kv_fut *kv_get_many(kv_store *s, const kv_key *const *keys, size_t n,
                    const kv_codec *codec)
{
    return read_keys(s, K_GET_MANY, KV__OP_GET, keys, n, codec, false);
}

/* ------------------------------------------------------------------------ */
/* Prefix operations                                                        */
/* ------------------------------------------------------------------------ */

kv_fut *kv_move_prefix_atomic(kv_store *s, const kv_key *const *from,
                              const kv_key *const *to, size_t n)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (!s->ops->atomic_batch)
        return kv__fut_failed(kv__floop(s), KV_ENOTSUP,
                              "the %s backend has no atomic batches",
                              s->ops->name);
    if ((from == NULL || to == NULL) && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "key array is NULL");
    for (size_t i = 0; i < n; i++) {
        if ((f = check_key(s, from[i], "from", i, false)) != NULL ||
            (f = check_key(s, to[i], "to", i, false)) != NULL)
            return f;
        if (kv_key_equal(from[i], to[i]) ||
            kv_key_is_ancestor(from[i], to[i]))
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "cannot move %s into itself (%s)",
                                  kv_key_id(from[i]), kv_key_id(to[i]));
    }
    if ((f = check_dups(s, from, sizeof *from, 0, n)) != NULL ||
        (f = check_dups(s, to, sizeof *to, 0, n)) != NULL)
        return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);
    kv__req *req = kv__req_new(s, KV__OP_MOVE);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = K_MOVE;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&req->items[i].key, from[i]) != KV_OK ||
            kv_key_dup(&req->items[i].key2, to[i]) != KV_OK) {
            kv__req_free(req);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
    }
    return kv__req_start(req);
}

kv_fut *kv_drop_prefix(kv_store *s, const kv_key *const *keys, size_t n)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (keys == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "keys array is NULL");
    for (size_t i = 0; i < n; i++)
        if ((f = check_key(s, keys[i], "keys", i, false)) != NULL)
            return f;
    if ((f = check_dups(s, keys, sizeof *keys, 0, n)) != NULL)
        return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);
    kv__req *req = kv__req_new(s, KV__OP_DROP);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = K_DROP;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&req->items[i].key, keys[i]) != KV_OK) {
            kv__req_free(req);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
    }
    return kv__req_start(req);
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
    atomic_init(&s->state, ST_OPEN);
    atomic_init(&s->nops, 0);
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
    s->state = ST_CLOSED;
    if (s->close_fut != NULL)
        fut_fail_msg(s->close_fut, status, status == KV_OK ? NULL : msg);
    if (s->free_when_closed) {
        /* The backend may still be inside its close: free on a later turn. */
        s->free_call.run = free_call;
        kv__loop_call(s->loop, &s->free_call);
    }
}

/* The first kv_close: cancel everything, then close the backend. */
static void start_close(kv_store *s)
{
    s->state = ST_CLOSING;
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
    if (s->state == ST_OPEN)
        start_close(s);
    if (s->close_fut == NULL)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    if (s->state == ST_CLOSED) {
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

/* kv_store_free from another thread, on the store's thread: free now if
 * closed, else once the close completes (close_done). */
static void free_call(kv__call *c)
{
    kv_store *s = KV__CONTAINER_OF(c, kv_store, free_call);
    if (s->state == ST_CLOSED) {
        store_free_now(s);
        return;
    }
    s->free_when_closed = true;
    if (s->state == ST_OPEN)
        start_close(s);
}

void kv_store_free(kv_store *s)
{
    if (s == NULL)
        return;
    if (!kv__loop_on_thread(s->loop)) {
        s->free_call.run = free_call;
        kv__loop_call(s->loop, &s->free_call);
        return;
    }
    if (s->free_when_closed)
        return; /* already on its way (freed twice: a caller's bug) */
    if (s->state == ST_OPEN)
        start_close(s);
    while (s->state != ST_CLOSED) {
        int r = kv_loop_run(s->loop, KV_RUN_ONCE);
        if (s->state == ST_CLOSED)
            break;
        if (r <= 0) {
            /* Inside a callback (the loop cannot run here), or the backend
             * cannot finish closing: free once the close completes. */
            s->free_when_closed = true;
            return;
        }
    }
    store_free_now(s);
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
