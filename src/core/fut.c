/*
 * fut.c - futures: completion, callbacks, results, references.
 *
 * Lifetime.  A future is reference counted (loop thread only, no atomics):
 *  - kv__fut_new gives one reference, the caller's (kv_fut_free drops it);
 *  - a producer that keeps a pointer to finish the future later takes its
 *    own with kv__fut_ref and drops it with kv__fut_unref after finishing;
 *  - the loop's ready FIFO holds one while the future's callbacks are due.
 * So freeing a pending future only drops the caller's reference: the
 * producer's pointer stays valid, its completion still runs the registered
 * callbacks, and the memory goes when the last reference does.
 *
 * Callbacks never run inside the call that registers them or completes the
 * future: both queue the future on its loop, and kv__fut_run_ready runs the
 * callbacks on the next turn, in registration order.
 */
#include "config.h"

#include "core/core_int.h"

#include <string.h>

#define INLINE_CBS 2

typedef struct cb_entry {
    kv_fut_cb fn;
    void *arg;
} cb_entry;

/* Which results a future holds (bits of have). */
enum {
    R_RECORDS = 1u << 0,
    R_KEYS = 1u << 1,
    R_BOOL = 1u << 2,
    R_TOKEN = 1u << 3,
    R_BYTES = 1u << 4,
    R_OBJ = 1u << 5,
    R_ITER = 1u << 6
};

struct kv_fut {
    kv_loop *loop;
    unsigned refs;
    bool done;
    bool queued;    /* on the loop's ready FIFO (which holds a reference) */
    bool is_static; /* the shared out-of-memory future: never changes */
    int status;
    char *msg;
    kv_fut *ready_next; /* the ready FIFO's link */

    /* Callbacks: cbs[0..ncb) registered, cbs[0..ran) already run. */
    cb_entry *cbs;
    unsigned ncb, capcb, ran;
    cb_entry inline_cbs[INLINE_CBS];

    void (*cancel_fn)(kv_fut *f, void *arg);
    void *cancel_arg;

    /* Results. */
    unsigned have;
    kv_record *recs;
    size_t nrecs;
    kv_codec codec; /* for typed records */
    bool typed;
    kv_key **keys;
    size_t nkeys;
    bool bval;
    uint64_t token;
    void *bytes;
    size_t nbytes;
    void *obj;
    kv_iter *iter;
    bool iter_hidden;
};

/* The future kv__fut_failed returns when even that allocation fails. */
static kv_fut oom_fut = {
    .done = true,
    .is_static = true,
    .status = KV_ENOMEM,
};

/* ------------------------------------------------------------------------ */
/* Records                                                                  */
/* ------------------------------------------------------------------------ */

void kv__records_free(kv_record *recs, size_t n, const kv_codec *codec)
{
    if (recs == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        kv_key_free(recs[i].key);
        if (recs[i].val == NULL)
            continue;
        if (codec != NULL) {
            if (codec->free_obj != NULL)
                codec->free_obj(recs[i].val, codec->ctx);
        } else {
            kv__free(recs[i].val);
        }
    }
    kv__free(recs);
}

static void keys_free(kv_key **keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        kv_key_free(keys[i]);
    kv__free(keys);
}

/* ------------------------------------------------------------------------ */
/* Creation and references                                                  */
/* ------------------------------------------------------------------------ */

kv_fut *kv__fut_new(kv_loop *loop)
{
    kv_fut *f = kv__calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->loop = loop;
    f->refs = 1;
    f->status = KV_EBUSY;
    f->cbs = f->inline_cbs;
    f->capcb = INLINE_CBS;
    return f;
}

kv_fut *kv__fut_failed(kv_loop *loop, int code, const char *fmt, ...)
{
    kv_fut *f = kv__fut_new(loop);
    if (f == NULL)
        return &oom_fut;
    va_list ap;
    va_start(ap, fmt);
    kv__fut_finishv(f, code, fmt, ap);
    va_end(ap);
    return f;
}

void kv__fut_ref(kv_fut *f)
{
    if (f != NULL && !f->is_static)
        f->refs++;
}

static void free_results(kv_fut *f)
{
    if (f->have & R_RECORDS)
        kv__records_free(f->recs, f->nrecs, f->typed ? &f->codec : NULL);
    if (f->have & R_KEYS)
        keys_free(f->keys, f->nkeys);
    if (f->have & R_BYTES)
        kv__free(f->bytes);
    if ((f->have & R_ITER) && f->iter != NULL)
        kv_iter_free(f->iter);
    /* An R_OBJ object is the producer's codec's to free (see header). */
    f->have = 0;
}

void kv__fut_unref(kv_fut *f)
{
    if (f == NULL || f->is_static)
        return;
    if (--f->refs > 0)
        return;
    free_results(f);
    if (f->cbs != f->inline_cbs)
        kv__free(f->cbs);
    kv__free(f->msg);
    kv__free(f);
}

void kv_fut_free(kv_fut *fut)
{
    kv__fut_unref(fut);
}

kv_fut **kv__fut_ready_link(kv_fut *f)
{
    return &f->ready_next;
}

/* ------------------------------------------------------------------------ */
/* Completion and callbacks                                                 */
/* ------------------------------------------------------------------------ */

/* Put f on its loop's ready FIFO (once), holding a reference there. */
static void queue_ready(kv_fut *f)
{
    if (f->queued || f->loop == NULL)
        return;
    f->queued = true;
    f->refs++;
    kv__loop_ready_push(f->loop, f);
}

bool kv__fut_finishv(kv_fut *f, int status, const char *fmt, va_list ap)
{
    if (f == NULL || f->is_static || f->done)
        return false;
    f->done = true;
    f->status = status;
    f->cancel_fn = NULL;
    f->cancel_arg = NULL;
    if (fmt != NULL)
        f->msg = kv__vasprintf(fmt, ap); /* NULL on OOM: errmsg falls back */
    if (f->ran < f->ncb)
        queue_ready(f);
    return true;
}

bool kv__fut_finish(kv_fut *f, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool r = kv__fut_finishv(f, status, fmt, ap);
    va_end(ap);
    return r;
}

void kv__fut_on_cancel(kv_fut *f, void (*fn)(kv_fut *f, void *arg), void *arg)
{
    if (f == NULL || f->is_static || f->done)
        return;
    f->cancel_fn = fn;
    f->cancel_arg = arg;
}

bool kv__fut_run_ready(kv_loop *loop)
{
    bool ran = false;
    /* Only what is due now: futures queued by these callbacks wait a turn. */
    for (size_t n = kv__loop_ready_len(loop); n > 0; n--) {
        kv_fut *f = kv__loop_ready_pop(loop);
        if (f == NULL)
            break;
        f->queued = false;
        /* Callbacks added meanwhile re-queue f: they run next turn. */
        unsigned end = f->ncb;
        while (f->ran < end) {
            cb_entry e = f->cbs[f->ran++]; /* cbs may move if one registers */
            e.fn(f, e.arg);
            ran = true;
        }
        kv__fut_unref(f); /* the queue's reference */
    }
    return ran;
}

int kv_fut_then(kv_fut *fut, kv_fut_cb cb, void *arg)
{
    if (fut == NULL || cb == NULL)
        return KV_EINVAL;
    if (fut->is_static)
        return KV_ENOMEM; /* the shared OOM future cannot hold callbacks */
    if (fut->loop == NULL)
        return KV_EINVAL; /* failed at creation for want of a loop */
    if (fut->ncb == fut->capcb) {
        unsigned cap = fut->capcb * 2;
        cb_entry *c;
        if (fut->cbs == fut->inline_cbs) {
            c = kv__malloc(cap * sizeof *c);
            if (c != NULL)
                memcpy(c, fut->inline_cbs, sizeof fut->inline_cbs);
        } else {
            c = kv__realloc(fut->cbs, cap * sizeof *c);
        }
        if (c == NULL)
            return KV_ENOMEM;
        fut->cbs = c;
        fut->capcb = cap;
    }
    fut->cbs[fut->ncb].fn = cb;
    fut->cbs[fut->ncb].arg = arg;
    fut->ncb++;
    if (fut->done)
        queue_ready(fut);
    return KV_OK;
}

int kv_wait(kv_fut *fut)
{
    if (fut == NULL)
        return KV_EINVAL;
    if (fut->done)
        return fut->status;
    kv_loop *loop = fut->loop;
    if (loop == NULL)
        return KV_EINVAL;
    kv__fut_ref(fut); /* a callback may free the caller's reference */
    int rc;
    for (;;) {
        if (fut->done) {
            rc = fut->status;
            break;
        }
        if (kv__loop_stalled(loop)) {
            rc = KV_EINVAL; /* nothing on the loop could ever complete it */
            break;
        }
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        if (r < 0) {
            rc = r; /* re-entered from a callback, or a fatal ring error */
            break;
        }
    }
    kv__fut_unref(fut);
    return rc;
}

bool kv_fut_done(const kv_fut *fut)
{
    return fut != NULL && fut->done;
}

int kv_fut_status(const kv_fut *fut)
{
    if (fut == NULL)
        return KV_EINVAL;
    return fut->done ? fut->status : KV_EBUSY;
}

const char *kv_fut_errmsg(const kv_fut *fut)
{
    if (fut == NULL || !fut->done || fut->status == KV_OK)
        return "";
    if (fut->msg != NULL && fut->msg[0] != '\0')
        return fut->msg;
    return kv_strerror(fut->status);
}

kv_loop *kv_fut_loop(const kv_fut *fut)
{
    return fut == NULL ? NULL : fut->loop;
}

void kv_fut_cancel(kv_fut *fut)
{
    if (fut == NULL || fut->is_static || fut->done)
        return;
    void (*fn)(kv_fut *, void *) = fut->cancel_fn;
    void *arg = fut->cancel_arg;
    fut->cancel_fn = NULL;
    fut->cancel_arg = NULL;
    kv__fut_ref(fut); /* the hook may drop references */
    if (fn != NULL)
        fn(fut, arg);
    kv__fut_finish(fut, KV_ECANCELED, NULL);
    kv__fut_unref(fut);
}

/* ------------------------------------------------------------------------ */
/* Results: setters (producers)                                             */
/* ------------------------------------------------------------------------ */

/*
 * A result set on a future that is already done (typically cancelled) is
 * never visible: it is freed at once, or with the future for an iterator
 * (whose release may call back into the store).
 */

void kv__fut_set_records(kv_fut *f, kv_record *recs, size_t n,
                         const kv_codec *codec)
{
    if (f == NULL || f->is_static || f->done) {
        kv__records_free(recs, n, codec);
        return;
    }
    if (f->have & R_RECORDS)
        kv__records_free(f->recs, f->nrecs, f->typed ? &f->codec : NULL);
    f->recs = recs;
    f->nrecs = n;
    f->typed = codec != NULL;
    if (codec != NULL)
        f->codec = *codec;
    f->have |= R_RECORDS;
}

void kv__fut_set_keys(kv_fut *f, kv_key **keys, size_t n)
{
    if (f == NULL || f->is_static || f->done) {
        keys_free(keys, n);
        return;
    }
    if (f->have & R_KEYS)
        keys_free(f->keys, f->nkeys);
    f->keys = keys;
    f->nkeys = n;
    f->have |= R_KEYS;
}

void kv__fut_set_bool(kv_fut *f, bool v)
{
    if (f == NULL || f->is_static || f->done)
        return;
    f->bval = v;
    f->have |= R_BOOL;
}

void kv__fut_set_token(kv_fut *f, uint64_t token)
{
    if (f == NULL || f->is_static || f->done)
        return;
    f->token = token;
    f->have |= R_TOKEN;
}

void kv__fut_set_bytes(kv_fut *f, void *bytes, size_t len)
{
    if (f == NULL || f->is_static || f->done) {
        kv__free(bytes);
        return;
    }
    if (f->have & R_BYTES)
        kv__free(f->bytes);
    f->bytes = bytes;
    f->nbytes = len;
    f->have |= R_BYTES;
}

void kv__fut_set_iter(kv_fut *f, kv_iter *it)
{
    if (f == NULL || f->is_static) {
        kv_iter_free(it);
        return;
    }
    if ((f->have & R_ITER) && f->iter != NULL && f->iter != it)
        kv_iter_free(f->iter);
    f->iter = it;
    f->iter_hidden = f->done; /* set after completion: freed, never shown */
    f->have |= R_ITER;
}

void *kv__fut_take_obj(kv_fut *f)
{
    if (f == NULL || f->is_static || !(f->have & R_OBJ))
        return NULL;
    void *o = f->obj;
    f->obj = NULL;
    f->have &= ~(unsigned)R_OBJ;
    return o;
}

kv_record *kv__fut_take_records(kv_fut *f, size_t *n)
{
    if (n != NULL)
        *n = 0;
    if (f == NULL || f->is_static || !(f->have & R_RECORDS))
        return NULL;
    kv_record *r = f->recs;
    if (n != NULL)
        *n = f->nrecs;
    f->recs = NULL;
    f->nrecs = 0;
    f->have &= ~(unsigned)R_RECORDS;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Results: completion by the caller (kv_fut_new futures)                   */
/* ------------------------------------------------------------------------ */

kv_fut *kv_fut_new(kv_loop *loop)
{
    if (loop == NULL)
        return NULL;
    return kv__fut_new(loop);
}

void kv_fut_complete(kv_fut *fut)
{
    kv__fut_finish(fut, KV_OK, NULL);
}

void kv_fut_complete_records(kv_fut *fut, const kv_record *recs, size_t n)
{
    if (fut == NULL || fut->is_static || fut->done)
        return;
    if (recs == NULL && n > 0) {
        kv__fut_finish(fut, KV_EINVAL, "kv_fut_complete_records: NULL recs");
        return;
    }
    kv_record *copy = NULL;
    if (n > 0) {
        copy = kv__calloc(n, sizeof *copy);
        if (copy == NULL)
            goto oom;
        for (size_t i = 0; i < n; i++) {
            if (recs[i].key != NULL &&
                kv_key_dup(&copy[i].key, recs[i].key) != KV_OK)
                goto oom;
            if (recs[i].val != NULL) {
                copy[i].val = kv__memdup(recs[i].val, recs[i].len);
                if (copy[i].val == NULL)
                    goto oom;
                copy[i].len = recs[i].len;
            }
            copy[i].token = recs[i].token;
        }
    }
    kv__fut_set_records(fut, copy, n, NULL);
    kv__fut_finish(fut, KV_OK, NULL);
    return;
oom:
    kv__records_free(copy, n, NULL); /* calloc'd: unset entries are NULL */
    kv__fut_finish(fut, KV_ENOMEM, "kv_fut_complete_records: out of memory");
}

void kv_fut_complete_bytes(kv_fut *fut, const void *bytes, size_t len)
{
    if (fut == NULL || fut->is_static || fut->done)
        return;
    if (bytes == NULL && len > 0) {
        kv__fut_finish(fut, KV_EINVAL, "kv_fut_complete_bytes: NULL bytes");
        return;
    }
    void *copy = kv__memdup(bytes, len);
    if (copy == NULL) {
        kv__fut_finish(fut, KV_ENOMEM, "kv_fut_complete_bytes: out of memory");
        return;
    }
    kv__fut_set_bytes(fut, copy, len);
    kv__fut_finish(fut, KV_OK, NULL);
}

void kv_fut_complete_obj(kv_fut *fut, void *obj)
{
    if (fut == NULL || fut->is_static || fut->done)
        return;
    fut->obj = obj;
    fut->have |= R_OBJ;
    kv__fut_finish(fut, KV_OK, NULL);
}

void kv_fut_fail(kv_fut *fut, int code, const char *msg)
{
    if (code >= 0)
        code = KV_ERROR; /* a failure needs a negative code */
    if (msg != NULL)
        kv__fut_finish(fut, code, "%s", msg);
    else
        kv__fut_finish(fut, code, NULL);
}

/* ------------------------------------------------------------------------ */
/* Results: getters                                                         */
/* ------------------------------------------------------------------------ */

const kv_record *kv_fut_record(const kv_fut *fut)
{
    if (fut == NULL || !fut->done || !(fut->have & R_RECORDS) ||
        fut->nrecs == 0)
        return NULL;
    return &fut->recs[0];
}

const kv_record *kv_fut_records(const kv_fut *fut, size_t *n)
{
    if (fut == NULL || !fut->done || !(fut->have & R_RECORDS)) {
        if (n != NULL)
            *n = 0;
        return NULL;
    }
    if (n != NULL)
        *n = fut->nrecs;
    return fut->nrecs > 0 ? fut->recs : NULL;
}

const kv_key *const *kv_fut_keys(const kv_fut *fut, size_t *n)
{
    if (fut == NULL || !fut->done || !(fut->have & R_KEYS)) {
        if (n != NULL)
            *n = 0;
        return NULL;
    }
    if (n != NULL)
        *n = fut->nkeys;
    return fut->nkeys > 0 ? (const kv_key *const *)fut->keys : NULL;
}

bool kv_fut_bool(const kv_fut *fut)
{
    return fut != NULL && fut->done && (fut->have & R_BOOL) && fut->bval;
}

uint64_t kv_fut_token(const kv_fut *fut)
{
    if (fut == NULL || !fut->done || !(fut->have & R_TOKEN))
        return 0;
    return fut->token;
}

const void *kv_fut_bytes(const kv_fut *fut, size_t *len)
{
    if (fut == NULL || !fut->done || !(fut->have & R_BYTES)) {
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    if (len != NULL)
        *len = fut->nbytes;
    return fut->bytes;
}

void *kv_fut_obj(const kv_fut *fut)
{
    if (fut == NULL || !fut->done || !(fut->have & R_OBJ))
        return NULL;
    return fut->obj;
}

kv_iter *kv_fut_take_iter(kv_fut *fut)
{
    if (fut == NULL || fut->is_static || !fut->done || !(fut->have & R_ITER) ||
        fut->iter_hidden)
        return NULL;
    kv_iter *it = fut->iter;
    fut->iter = NULL;
    fut->have &= ~(unsigned)R_ITER;
    return it;
}
