/*
 * helpers.c - retrying batch writes and get-or-put, each a small state
 * machine over the public operations (docs/DESIGN.md, "store").
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

static void finish_msg(kv_fut *f, int status, const char *msg)
{
    if (status != KV_OK && msg != NULL && msg[0] != '\0')
        kv__fut_finish(f, status, "%s", msg);
    else
        kv__fut_finish(f, status, NULL);
}

/* Copies of n keys for a result.  NULL on OOM (or n == 0). */
static kv_key **dup_keys(const kv_key *const *keys, size_t n)
{
    if (n == 0)
        return NULL;
    kv_key **out = kv__calloc(n, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&out[i], keys[i]) != KV_OK) {
            kv__keys_free(out, i);
            return NULL;
        }
    }
    return out;
}

/* Copies of the keys of recs[0..n) (NULL on ENOMEM, or for n == 0). */
static kv_key **dup_rec_keys(const kv_record *recs, size_t n)
{
    if (n == 0)
        return NULL;
    kv_key **out = kv__calloc(n, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&out[i], recs[i].key) != KV_OK) {
            kv__keys_free(out, i);
            return NULL;
        }
    }
    return out;
}

static void free_recs(kv_record *recs, size_t n)
{
    for (size_t i = 0; i < n && recs != NULL; i++)
        kv__record_clear(&recs[i], NULL);
    kv__free(recs);
}

/* ------------------------------------------------------------------------ */
/* try_put, try_delete and their atomic forms                               */
/* ------------------------------------------------------------------------ */

enum { T_PUT, T_DELETE, T_PUT_ATOMIC, T_DELETE_ATOMIC };

typedef struct try_op {
    kv_store *s;
    kv_fut *fut;     /* the helper's reference to its own future */
    kv_fut *pending; /* the operation in flight, for cancel (NULL while a
                        middleware's future is awaited: that one is the
                        middleware's to complete, never ours to cancel) */
    int mode;
    kv_record *recs; /* owned raw copies: what the next attempt writes */
    size_t n;
    unsigned left; /* attempts left */
    kv_middleware mw;
    kv_atomic_middleware amw;
    void *arg;
    /* Put modes: the tokens of the input records (kv_fut_tokens). */
    kv_key **okeys;  /* copies of the input keys, on of them */
    uint64_t *otok;  /* each input record's new token, 0 until written */
    size_t on;
    size_t *map;     /* parallel to recs: the input index of recs[i]'s key,
                        SIZE_MAX if none */
    /* okeys by kv_key_hash (open addressing, icap a power of two): each
       slot an input index + 1, 0 if empty.  Built by the first middleware
       result that needs it, then kept for the helper's later attempts. */
    size_t *islots;
    size_t icap;
} try_op;

static bool is_atomic(const try_op *op)
{
    return op->mode == T_PUT_ATOMIC || op->mode == T_DELETE_ATOMIC;
}

static void try_op_free(try_op *op)
{
    free_recs(op->recs, op->n);
    kv__keys_free(op->okeys, op->on);
    kv__free(op->otok);
    kv__free(op->map);
    kv__free(op->islots);
    kv__free(op);
}

/* End the helper: complete its future (keys: a copy of these, may be NULL;
 * put modes ending KV_OK or KV_EMAXRETRIES: the tokens too). */
static void try_end(try_op *op, int status, const char *msg,
                    const kv_key *const *keys, size_t nkeys)
{
    if (!kv_fut_done(op->fut)) {
        kv_key **copy = NULL;
        if (nkeys > 0 && (copy = dup_keys(keys, nkeys)) == NULL) {
            status = KV_ENOMEM;
            msg = NULL;
            nkeys = 0;
        }
        if (op->otok != NULL &&
            (status == KV_OK || status == KV_EMAXRETRIES)) {
            if (kv__fut_set_writes(op->fut, copy, nkeys, op->otok, op->on) !=
                KV_OK) {
                status = KV_ENOMEM;
                msg = NULL;
            }
        } else if (copy != NULL) {
            kv__fut_set_keys(op->fut, copy, nkeys);
        }
        finish_msg(op->fut, status, msg);
    }
    kv__fut_unref(op->fut);
    try_op_free(op);
}

/* Index okeys by hash (once per helper call).  KV_OK or KV_ENOMEM. */
static int input_index_build(try_op *op)
{
    if (op->islots != NULL || op->on == 0)
        return KV_OK;
    size_t cap = 8;
    while (cap < op->on * 2) {
        if (cap > SIZE_MAX / 4 / sizeof *op->islots)
            return KV_ENOMEM;
        cap *= 2;
    }
    op->islots = kv__calloc(cap, sizeof *op->islots);
    if (op->islots == NULL)
        return KV_ENOMEM;
    op->icap = cap;
    for (size_t i = 0; i < op->on; i++) {
        size_t j = (size_t)kv_key_hash(op->okeys[i]) & (cap - 1);
        while (op->islots[j] != 0) /* a free slot: cap >= 2 on */
            j = (j + 1) & (cap - 1);
        op->islots[j] = i + 1;
    }
    return KV_OK;
}

/* The input index of key, SIZE_MAX if no input record has it (after
 * input_index_build). */
static size_t input_index(const try_op *op, const kv_key *key)
{
    if (key == NULL || op->icap == 0)
        return SIZE_MAX;
    size_t mask = op->icap - 1;
    for (size_t j = (size_t)kv_key_hash(key) & mask; op->islots[j] != 0;
         j = (j + 1) & mask)
        if (kv_key_equal(op->okeys[op->islots[j] - 1], key))
            return op->islots[j] - 1;
    return SIZE_MAX;
}

/* Keep the tokens an attempt wrote (put modes). */
static void note_tokens(try_op *op, const kv_fut *inner)
{
    if (op->otok == NULL)
        return;
    size_t nt = 0;
    const uint64_t *t = kv_fut_tokens(inner, &nt);
    for (size_t i = 0; i < nt && i < op->n; i++)
        if (t[i] != 0 && op->map[i] != SIZE_MAX)
            op->otok[op->map[i]] = t[i];
}

static void try_on_cancel(kv_fut *f, void *arg)
{
    (void)f;
    try_op *op = arg;
    if (op->pending != NULL)
        kv_fut_cancel(op->pending);
}

static void on_attempt(kv_fut *inner, void *arg);
static void on_middleware(kv_fut *mf, void *arg);

static void try_attempt(try_op *op)
{
    kv_fut *inner;
    op->left--;
    switch (op->mode) {
    case T_PUT:
        inner = kv_put_many(op->s, op->recs, op->n, NULL);
        break;
    case T_DELETE:
        inner = kv_delete_many(op->s, op->recs, op->n);
        break;
    case T_PUT_ATOMIC:
        inner = kv_put_atomic(op->s, op->recs, op->n, NULL);
        break;
    default:
        inner = kv_delete_atomic(op->s, op->recs, op->n);
        break;
    }
    op->pending = inner;
    if (kv_fut_then(inner, on_attempt, op) != KV_OK) {
        op->pending = NULL;
        kv_fut_free(inner);
        try_end(op, KV_ENOMEM, NULL, NULL, 0);
    }
}

/* Wait for a middleware's future (NULL is a usage error). */
static void try_await_middleware(try_op *op, kv_fut *mf)
{
    if (mf == NULL) {
        try_end(op, KV_EINVAL, "the middleware returned no future", NULL, 0);
        return;
    }
    op->pending = NULL;
    if (kv_fut_then(mf, on_middleware, op) != KV_OK) {
        kv_fut_free(mf);
        try_end(op, KV_ENOMEM, NULL, NULL, 0);
    }
}

/* Non-atomic: the records of op->recs whose keys were skipped, in order. */
static kv_record *skipped_records(const try_op *op, const kv_key *const *keys,
                                  size_t nkeys, size_t *nout)
{
    kv__keyset ks;
    kv_record *out = kv__calloc(nkeys, sizeof *out);
    if (out == NULL || kv__keyset_init(&ks, nkeys) != KV_OK) {
        kv__free(out);
        return NULL;
    }
    for (size_t i = 0; i < nkeys; i++)
        kv__keyset_add(&ks, keys[i]);
    size_t m = 0;
    for (size_t i = 0; i < op->n && m < nkeys; i++)
        if (kv__keyset_has(&ks, op->recs[i].key))
            out[m++] = op->recs[i]; /* shallow: views into op->recs */
    kv__keyset_free(&ks);
    *nout = m;
    return out;
}

static void on_attempt(kv_fut *inner, void *arg)
{
    try_op *op = arg;
    op->pending = NULL;
    if (kv_fut_done(op->fut)) { /* cancelled: no further step */
        kv_fut_free(inner);
        try_end(op, KV_ECANCELED, NULL, NULL, 0);
        return;
    }
    int st = kv_fut_status(inner);
    if (st != KV_OK) {
        try_end(op, st, kv_fut_errmsg(inner), NULL, 0);
        kv_fut_free(inner);
        return;
    }
    note_tokens(op, inner);
    size_t nk = 0;
    const kv_key *const *keys = kv_fut_keys(inner, &nk);
    if (nk == 0) {
        kv_fut_free(inner);
        try_end(op, KV_OK, NULL, NULL, 0);
        return;
    }
    if (is_atomic(op) && op->amw == NULL) {
        try_end(op, KV_ECONFLICT, "the atomic batch conflicts", keys, nk);
        kv_fut_free(inner);
        return;
    }
    if (op->left == 0) {
        try_end(op, KV_EMAXRETRIES,
                is_atomic(op) ? "retries exhausted: the batch still conflicts"
                              : "retries exhausted: keys still skipped",
                keys, nk);
        kv_fut_free(inner);
        return;
    }
    if (is_atomic(op)) {
        kv_fut *mf = op->amw(op->recs, op->n, keys, nk, op->arg);
        kv_fut_free(inner);
        try_await_middleware(op, mf);
        return;
    }
    size_t nf = 0;
    kv_record *failed = skipped_records(op, keys, nk, &nf);
    kv_fut_free(inner);
    if (failed == NULL) {
        try_end(op, KV_ENOMEM, NULL, NULL, 0);
        return;
    }
    if (op->mw != NULL) {
        kv_fut *mf = op->mw(failed, nf, op->arg);
        kv__free(failed);
        try_await_middleware(op, mf);
        return;
    }
    /* No middleware: retry the same records, keeping only the skipped. */
    kv__keyset ks;
    if (kv__keyset_init(&ks, nf) != KV_OK) {
        kv__free(failed);
        try_end(op, KV_ENOMEM, NULL, NULL, 0);
        return;
    }
    for (size_t i = 0; i < nf; i++)
        kv__keyset_add(&ks, failed[i].key);
    size_t m = 0;
    for (size_t i = 0; i < op->n; i++) {
        if (kv__keyset_has(&ks, op->recs[i].key)) {
            if (op->map != NULL)
                op->map[m] = op->map[i];
            op->recs[m++] = op->recs[i];
        } else {
            kv__record_clear(&op->recs[i], NULL);
        }
    }
    op->n = m;
    kv__keyset_free(&ks);
    kv__free(failed);
    try_attempt(op);
}

/* An atomic middleware must return exactly the batch's key set. */
static bool same_key_set(const kv_record *a, size_t na, const kv_record *b,
                         size_t nb)
{
    if (na != nb)
        return false;
    kv__keyset ks, seen;
    if (kv__keyset_init(&ks, na) != KV_OK)
        return false;
    if (kv__keyset_init(&seen, nb) != KV_OK) {
        kv__keyset_free(&ks);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < na; i++)
        kv__keyset_add(&ks, a[i].key);
    for (size_t i = 0; i < nb && ok; i++)
        ok = b[i].key != NULL && kv__keyset_has(&ks, b[i].key) &&
             kv__keyset_add(&seen, b[i].key);
    kv__keyset_free(&ks);
    kv__keyset_free(&seen);
    return ok;
}

static void on_middleware(kv_fut *mf, void *arg)
{
    try_op *op = arg;
    op->pending = NULL;
    if (kv_fut_done(op->fut)) {
        kv_fut_free(mf);
        try_end(op, KV_ECANCELED, NULL, NULL, 0);
        return;
    }
    int st = kv_fut_status(mf);
    if (st != KV_OK) {
        try_end(op, st, kv_fut_errmsg(mf), NULL, 0);
        kv_fut_free(mf);
        return;
    }
    size_t m = 0;
    kv_record *recs = kv__fut_take_records(mf, &m);
    kv_fut_free(mf);
    if (m == 0) {
        free_recs(recs, 0);
        try_end(op, KV_OK, NULL, NULL, 0);
        return;
    }
    if (is_atomic(op) && !same_key_set(op->recs, op->n, recs, m)) {
        free_recs(recs, m);
        try_end(op, KV_EINVAL,
                "the atomic middleware returned a different key set", NULL, 0);
        return;
    }
    if (op->otok != NULL) {
        /* Which input record each returned one stands for. */
        size_t *map = kv__malloc(m * sizeof *map);
        if (map == NULL || input_index_build(op) != KV_OK) {
            kv__free(map);
            free_recs(recs, m);
            try_end(op, KV_ENOMEM, NULL, NULL, 0);
            return;
        }
        for (size_t i = 0; i < m; i++)
            map[i] = input_index(op, recs[i].key);
        kv__free(op->map);
        op->map = map;
    }
    free_recs(op->recs, op->n);
    op->recs = recs;
    op->n = m;
    try_attempt(op);
}

static kv_fut *try_start(kv_store *s, int mode, const kv_record *recs,
                         size_t n, unsigned max_retries, kv_middleware mw,
                         kv_atomic_middleware amw, void *arg,
                         const kv_codec *codec)
{
    bool atomic = mode == T_PUT_ATOMIC || mode == T_DELETE_ATOMIC;
    bool values = mode == T_PUT || mode == T_PUT_ATOMIC;
    kv_fut *f = kv__check_records(s, recs, n, codec, values, atomic, false);
    if (f != NULL)
        return f;
    if (max_retries == 0) {
        f = kv__fut_new(kv__floop(s));
        if (f == NULL)
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        if (n > 0) {
            kv_key **keys = dup_rec_keys(recs, n);
            if (keys == NULL ||
                (values && kv__fut_set_writes(f, keys, n, NULL, n) != KV_OK)) {
                kv__fut_finish(f, KV_ENOMEM, NULL);
                return f;
            }
            if (!values)
                kv__fut_set_keys(f, keys, n);
        }
        kv__fut_finish(f, KV_EMAXRETRIES, "max_retries is 0");
        return f;
    }
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);

    /* Copy the records (encoding typed values once, here). */
    try_op *op = kv__calloc(1, sizeof *op);
    kv_record *copy = kv__calloc(n, sizeof *copy);
    if (op == NULL || copy == NULL) {
        kv__free(op);
        kv__free(copy);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        int rc = kv_key_dup(&copy[i].key, recs[i].key);
        copy[i].token = recs[i].token;
        if (rc == KV_OK && values && codec != NULL) {
            kv_buf b = {NULL, 0, 0};
            rc = codec->encode(recs[i].val, &b, codec->ctx);
            if (rc != KV_OK) {
                kv__free(b.data);
                if (rc > 0)
                    rc = KV_ERROR;
                kv_fut *ef = kv__fut_failed(kv__floop(s), rc,
                                            "cannot encode the value of %s: %s",
                                            kv_key_id(recs[i].key),
                                            kv_strerror(rc));
                free_recs(copy, i + 1);
                kv__free(op);
                return ef;
            }
            copy[i].val = b.data;
            copy[i].len = b.len;
        } else if (rc == KV_OK && values) {
            copy[i].val = kv__memdup(recs[i].val, recs[i].len);
            copy[i].len = recs[i].len;
            if (copy[i].val == NULL)
                rc = KV_ENOMEM;
        }
        if (rc != KV_OK) {
            free_recs(copy, i + 1);
            kv__free(op);
            return kv__fut_failed(kv__floop(s), rc, NULL);
        }
    }
    op->recs = copy;
    op->n = n;
    if (values) {
        op->on = n;
        op->okeys = dup_rec_keys(recs, n);
        op->otok = kv__calloc(n, sizeof *op->otok);
        op->map = kv__malloc(n * sizeof *op->map);
        bool ok = (n == 0 || op->okeys != NULL) && op->otok != NULL &&
                  op->map != NULL;
        for (size_t i = 0; ok && i < n; i++)
            op->map[i] = i;
        if (!ok) {
            try_op_free(op);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
    }
    op->fut = kv__fut_new(kv__floop(s));
    if (op->fut == NULL) {
        try_op_free(op);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    kv__fut_ref(op->fut);
    op->s = s;
    op->mode = mode;
    op->left = max_retries;
    op->mw = mw;
    op->amw = amw;
    op->arg = arg;
    f = op->fut;
    kv__fut_on_cancel(f, try_on_cancel, op);
    try_attempt(op);
    return f;
}

kv_fut *kv_try_put(kv_store *s, const kv_record *recs, size_t n,
                   unsigned max_retries, kv_middleware mw, void *arg,
                   const kv_codec *codec)
{
    return try_start(s, T_PUT, recs, n, max_retries, mw, NULL, arg, codec);
}

kv_fut *kv_try_delete(kv_store *s, const kv_record *recs, size_t n,
                      unsigned max_retries, kv_middleware mw, void *arg)
{
    return try_start(s, T_DELETE, recs, n, max_retries, mw, NULL, arg, NULL);
}

kv_fut *kv_try_put_atomic(kv_store *s, const kv_record *recs, size_t n,
                          unsigned max_retries, kv_atomic_middleware mw,
                          void *arg, const kv_codec *codec)
{
    return try_start(s, T_PUT_ATOMIC, recs, n, max_retries, NULL, mw, arg,
                     codec);
}

kv_fut *kv_try_delete_atomic(kv_store *s, const kv_record *recs, size_t n,
                             unsigned max_retries, kv_atomic_middleware mw,
                             void *arg)
{
    return try_start(s, T_DELETE_ATOMIC, recs, n, max_retries, NULL, mw, arg,
                     NULL);
}

/* ------------------------------------------------------------------------ */
/* get_or_put                                                               */
/* ------------------------------------------------------------------------ */

typedef struct gop {
    kv_store *s;
    kv_fut *fut;
    kv_fut *pending; /* the operation in flight (never the producer's) */
    kv_key *key;
    kv_codec codec;
    bool typed;
    kv_producer producer;
    void *arg;
    unsigned left;
    void *obj;    /* the produced object (typed), ours until handed over */
    void *bytes;  /* the value written: raw copy or encoding */
    size_t len;
} gop;

static void gop_drop_value(gop *op)
{
    if (op->obj != NULL && op->codec.free_obj != NULL)
        op->codec.free_obj(op->obj, op->codec.ctx);
    op->obj = NULL;
    kv__free(op->bytes);
    op->bytes = NULL;
    op->len = 0;
}

static void gop_end(gop *op, int status, const char *msg)
{
    if (!kv_fut_done(op->fut))
        finish_msg(op->fut, status, msg);
    kv__fut_unref(op->fut);
    gop_drop_value(op);
    kv_key_free(op->key);
    kv__free(op);
}

static void gop_on_cancel(kv_fut *f, void *arg)
{
    (void)f;
    gop *op = arg;
    if (op->pending != NULL)
        kv_fut_cancel(op->pending);
}

static void gop_on_get(kv_fut *g, void *arg);
static void gop_on_produce(kv_fut *pf, void *arg);
static void gop_on_put(kv_fut *p, void *arg);

/*
 * Wait for f with cb; on failure to register, end with KV_ENOMEM.  ours:
 * f is an operation's future that cancel may stop (a producer's future is
 * the producer's to complete).
 */
static void gop_await(gop *op, kv_fut *f, kv_fut_cb cb, bool ours)
{
    op->pending = ours ? f : NULL;
    if (kv_fut_then(f, cb, op) != KV_OK) {
        op->pending = NULL;
        kv_fut_free(f);
        gop_end(op, KV_ENOMEM, NULL);
    }
}

static void gop_round(gop *op)
{
    gop_await(op, kv_get(op->s, op->key, op->typed ? &op->codec : NULL),
              gop_on_get, true);
}

static void gop_on_get(kv_fut *g, void *arg)
{
    gop *op = arg;
    op->pending = NULL;
    if (kv_fut_done(op->fut)) { /* cancelled: no further step */
        kv_fut_free(g);
        gop_end(op, KV_ECANCELED, NULL);
        return;
    }
    int st = kv_fut_status(g);
    if (st == KV_OK) {
        size_t n = 0;
        kv_record *recs = kv__fut_take_records(g, &n);
        kv_fut_free(g);
        if (!kv_fut_done(op->fut) && n == 1) {
            kv__fut_set_records(op->fut, recs, n,
                                op->typed ? &op->codec : NULL);
            kv__fut_finish(op->fut, KV_OK, NULL);
        } else {
            for (size_t i = 0; i < n; i++)
                kv__record_clear(&recs[i], op->typed ? &op->codec : NULL);
            kv__free(recs);
            if (n != 1)
                st = KV_ERROR;
        }
        gop_end(op, st, "get returned no record");
        return;
    }
    if (st != KV_ENOTFOUND) {
        gop_end(op, st, kv_fut_errmsg(g));
        kv_fut_free(g);
        return;
    }
    kv_fut_free(g);
    /* max_retries bounds the insert attempts: each one calls the producer. */
    if (op->left == 0) {
        gop_end(op, KV_EMAXRETRIES,
                "retries exhausted: the key vanished after every lost race");
        return;
    }
    op->left--;
    kv_fut *pf = op->producer(op->key, op->arg);
    if (pf == NULL) {
        gop_end(op, KV_EINVAL, "the producer returned no future");
        return;
    }
    gop_await(op, pf, gop_on_produce, false);
}

static void gop_on_produce(kv_fut *pf, void *arg)
{
    gop *op = arg;
    op->pending = NULL;
    if (kv_fut_done(op->fut)) {
        op->obj = op->typed ? kv__fut_take_obj(pf) : NULL; /* ours to free */
        kv_fut_free(pf);
        gop_end(op, KV_ECANCELED, NULL);
        return;
    }
    int st = kv_fut_status(pf);
    if (st != KV_OK) {
        gop_end(op, st, kv_fut_errmsg(pf));
        kv_fut_free(pf);
        return;
    }
    if (op->typed) {
        op->obj = kv__fut_take_obj(pf);
        kv_fut_free(pf);
        if (op->obj == NULL) {
            gop_end(op, KV_EINVAL, "the producer completed without an object");
            return;
        }
        kv_buf b = {NULL, 0, 0};
        int rc = op->codec.encode(op->obj, &b, op->codec.ctx);
        if (rc != KV_OK) {
            kv__free(b.data);
            char *msg = kv__asprintf("cannot encode the value of %s: %s",
                                     kv_key_id(op->key),
                                     kv_strerror(rc < 0 ? rc : KV_ERROR));
            gop_end(op, rc < 0 ? rc : KV_ERROR, msg);
            kv__free(msg);
            return;
        }
        op->bytes = b.data;
        op->len = b.len;
    } else {
        size_t len = 0;
        const void *b = kv_fut_bytes(pf, &len);
        op->bytes = kv__memdup(b, len);
        op->len = len;
        kv_fut_free(pf);
        if (op->bytes == NULL) {
            gop_end(op, KV_ENOMEM, NULL);
            return;
        }
    }
    kv_record rec = {op->key, op->bytes, op->len, 0};
    gop_await(op, kv_put(op->s, &rec, NULL), gop_on_put, true);
}

static void gop_on_put(kv_fut *p, void *arg)
{
    gop *op = arg;
    op->pending = NULL;
    int st = kv_fut_status(p);
    if (st == KV_OK) {
        uint64_t token = kv_fut_token(p);
        kv_fut_free(p);
        kv_record *r = kv__calloc(1, sizeof *r);
        if (r == NULL || kv_key_dup(&r->key, op->key) != KV_OK) {
            kv__free(r);
            gop_end(op, KV_ENOMEM, NULL);
            return;
        }
        r->token = token;
        if (op->typed) {
            r->val = op->obj; /* the future frees it through the codec */
            op->obj = NULL;
        } else {
            r->val = op->bytes;
            r->len = op->len;
            op->bytes = NULL;
        }
        if (!kv_fut_done(op->fut)) {
            kv__fut_set_records(op->fut, r, 1, op->typed ? &op->codec : NULL);
            kv__fut_finish(op->fut, KV_OK, NULL);
        } else {
            kv__record_clear(r, op->typed ? &op->codec : NULL);
            kv__free(r);
        }
        gop_end(op, KV_OK, NULL);
        return;
    }
    if (st != KV_ECONFLICT) {
        gop_end(op, st, kv_fut_errmsg(p));
        kv_fut_free(p);
        return;
    }
    kv_fut_free(p);
    gop_drop_value(op); /* lost the race: read the winner */
    gop_round(op);
}

kv_fut *kv_get_or_put(kv_store *s, const kv_key *key, kv_producer producer,
                      void *arg, unsigned max_retries, const kv_codec *codec)
{
    kv_fut *f = kv__store_check(s, false);
    if (f != NULL)
        return f;
    if (key == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "key is NULL");
    if (kv_key_len(key) == 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "key is the empty key");
    if (producer == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "producer is NULL");
    if (codec != NULL && (codec->encode == NULL || codec->decode == NULL))
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "codec needs encode and decode");
    if (max_retries == 0)
        return kv__fut_failed(kv__floop(s), KV_EMAXRETRIES, "max_retries is 0");
    gop *op = kv__calloc(1, sizeof *op);
    if (op == NULL || kv_key_dup(&op->key, key) != KV_OK ||
        (op->fut = kv__fut_new(kv__floop(s))) == NULL) {
        if (op != NULL)
            kv_key_free(op->key);
        kv__free(op);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    kv__fut_ref(op->fut);
    op->s = s;
    op->producer = producer;
    op->arg = arg;
    op->left = max_retries;
    if (codec != NULL) {
        op->codec = *codec;
        op->typed = true;
    }
    f = op->fut;
    kv__fut_on_cancel(f, gop_on_cancel, op);
    gop_round(op);
    return f;
}
