/*
 * fut.c - futures: references, completion, callbacks (queued on the loop's
 * ready FIFO, run on its next turn), cancel, kv_wait, and results: the
 * generic ones and one owned result slot for the layers above.  Lifetime
 * rule in core.h; design notes in docs/DESIGN.md ("core").
 */
#include "config.h"

#include "core/core_int.h"
#include "util/list.h"

#include <string.h>

#define INLINE_CBS 2

typedef struct cb_entry {
    kv_fut_cb fn;
    void *arg;
} cb_entry;

/* Which scalar results a future holds (bits of have). */
enum {
    R_BOOL = 1u << 0,
    R_TOKEN = 1u << 1,
    R_BYTES = 1u << 2,
    R_OBJ = 1u << 3
};

struct kv_fut {
    kv_loop *loop;
    unsigned refs;
    bool done;
    bool queued;    /* on the loop's ready FIFO (which holds a reference) */
    bool is_static; /* the shared out-of-memory future: never changes */
    int status;
    char *msg;
    kv__list ready; /* the link in the loop's ready FIFO (while queued) */

    /* Callbacks: cbs[0..ncb) registered, cbs[0..ran) already run. */
    cb_entry *cbs;
    unsigned ncb, capcb, ran;
    cb_entry inline_cbs[INLINE_CBS];

    void (*cancel_fn)(kv_fut *f, void *arg);
    void *cancel_arg;

    /* Results: the scalar ones, then the one owned result of a kind the
     * layers above define (kv__fut_set_result). */
    unsigned have;
    bool bval;
    uint64_t token;
    void *bytes;
    size_t nbytes;
    void *obj;
    const kv__fut_kind *rkind; /* NULL: no owned result */
    void *rptr;
    size_t rn;
    bool raux_set;
    bool rhidden; /* set after completion: freed with f, never shown */
    kv__fut_aux raux;
};

/* The future kv__fut_failed returns when even that allocation fails. */
static kv_fut oom_fut = {
    .done = true,
    .is_static = true,
    .status = KV_ENOMEM,
};

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
    kv__list_init(&f->ready);
    return f;
}

static bool fut_finishv(kv_fut *f, int status, const char *fmt,
                        va_list ap);

kv_fut *kv__fut_failed(kv_loop *loop, int code, const char *fmt, ...)
{
    kv_fut *f = kv__fut_new(loop);
    if (f == NULL)
        return &oom_fut;
    va_list ap;
    va_start(ap, fmt);
    fut_finishv(f, code, fmt, ap);
    va_end(ap);
    return f;
}

void kv__fut_ref(kv_fut *f)
{
    if (f != NULL && !f->is_static)
        f->refs++;
}

/* Release f's owned result, if any, and leave the slot empty. */
static void release_result(kv_fut *f)
{
    const kv__fut_kind *k = f->rkind;
    if (k == NULL)
        return;
    f->rkind = NULL;
    k->release(f->rptr, f->rn, f->raux_set ? &f->raux : NULL);
}

static void free_results(kv_fut *f)
{
    release_result(f);
    if (f->have & R_BYTES)
        kv__free(f->bytes);
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
    kv__list_push_back(kv__loop_ready(f->loop), &f->ready);
}

static bool fut_finishv(kv_fut *f, int status, const char *fmt, va_list ap)
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
    bool r = fut_finishv(f, status, fmt, ap);
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
    kv__list *q = kv__loop_ready(loop);
    /* Only what is due now: futures queued by these callbacks land behind
     * the last one queued when the call starts, and wait a turn. */
    kv__list *last = q->prev;
    bool more = !kv__list_empty(q);
    while (more) {
        kv__list *node = kv__list_pop_front(q);
        if (node == NULL)
            break;
        more = node != last;
        kv_fut *f = KV__LIST_ENTRY(node, kv_fut, ready);
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

kv_fut *kv__fut_done_now(kv_loop *loop, int status)
{
    if (status != KV_OK)
        return kv__fut_failed(loop, status, NULL);
    kv_fut *f = kv__fut_new(loop);
    if (f == NULL)
        return kv__fut_failed(loop, KV_ENOMEM, NULL);
    kv__fut_finish(f, KV_OK, NULL);
    return f;
}

static void relay_cb(kv_fut *src, void *arg)
{
    kv_fut *relay = arg;
    int st = kv_fut_status(src);
    const char *msg = kv_fut_errmsg(src);
    if (st != KV_OK && msg[0] != '\0')
        kv__fut_finish(relay, st, "%s", msg);
    else
        kv__fut_finish(relay, st, NULL);
    kv__fut_unref(relay);
}

int kv__fut_relay(kv_fut *src, kv_fut *relay)
{
    kv__fut_ref(relay);
    int rc = kv_fut_then(src, relay_cb, relay);
    if (rc != KV_OK)
        kv__fut_unref(relay);
    return rc;
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
    if (loop == NULL) {
        kv__set_errmsg("kv_wait: the future has no loop");
        return KV_EINVAL;
    }
    /* Only the loop's own thread may run it (and touch its futures). */
    if (!kv__loop_on_thread(loop)) {
        kv__set_errmsg("kv_wait: called off the future's loop thread (wait "
                       "for a future on the thread that runs its loop; "
                       "from another thread, make the call there, where it "
                       "completes on that thread's loop)");
        return KV_EINVAL;
    }
    if (kv__loop_running(loop)) {
        kv__set_errmsg("kv_wait: called inside a callback of the future's "
                       "loop, which is running and cannot be re-entered "
                       "(chain the next step with kv_fut_then instead)");
        return KV_EINVAL;
    }
    kv__fut_ref(fut); /* a callback may free the caller's reference */
    int rc;
    for (;;) {
        if (fut->done) {
            rc = fut->status;
            break;
        }
        if (kv__loop_stalled(loop)) {
            kv__set_errmsg("kv_wait: nothing pending on the future's loop "
                           "can complete it (it would wait forever)");
            rc = KV_EINVAL; /* nothing on the loop could ever complete it */
            break;
        }
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        if (r < 0) {
            rc = r; /* a fatal ring error (kv_loop_run said which) */
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
 * never visible: it is freed at once, or with the future for a kind marked
 * free_late (an iterator, whose release may call back into its producer).
 */

void kv__fut_set_result(kv_fut *f, const kv__fut_kind *kind, void *ptr,
                        size_t n, const kv__fut_aux *aux)
{
    bool late = f != NULL && !f->is_static && f->done;
    if (f == NULL || f->is_static ||
        (late &&
         (!kind->free_late || (f->rkind != NULL && f->rkind != kind)))) {
        /* No future, or done and not to be kept hidden: freed at once. */
        kind->release(ptr, n, aux);
        return;
    }
    if (f->rkind != NULL && !(f->rkind == kind && f->rptr == ptr))
        release_result(f);
    f->rkind = kind;
    f->rptr = ptr;
    f->rn = n;
    f->raux_set = aux != NULL;
    if (aux != NULL)
        f->raux = *aux;
    f->rhidden = late;
}

void *kv__fut_result(const kv_fut *f, const kv__fut_kind *kind, size_t *n)
{
    if (f == NULL || !f->done || f->rkind != kind || f->rhidden) {
        if (n != NULL)
            *n = 0;
        return NULL;
    }
    if (n != NULL)
        *n = f->rn;
    return f->rptr;
}

void *kv__fut_take_result(kv_fut *f, const kv__fut_kind *kind, size_t *n)
{
    if (n != NULL)
        *n = 0;
    if (f == NULL || f->is_static || f->rkind != kind || f->rhidden)
        return NULL;
    void *p = f->rptr;
    if (n != NULL)
        *n = f->rn;
    f->rkind = NULL;
    f->rptr = NULL;
    f->rn = 0;
    return p;
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

void *kv__fut_take_obj(kv_fut *f)
{
    if (f == NULL || f->is_static || !(f->have & R_OBJ))
        return NULL;
    void *o = f->obj;
    f->obj = NULL;
    f->have &= ~(unsigned)R_OBJ;
    return o;
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

/* ------------------------------------------------------------------------ */
/* Moving an outcome to a future of another loop (forwarded calls)          */
/* ------------------------------------------------------------------------ */

void kv__fut_export(kv_fut *src, kv__fut_xfer *x)
{
    memset(x, 0, sizeof *x);
    if (src == NULL) {
        x->status = KV_EINVAL;
        return;
    }
    x->status = src->done ? src->status : KV_ERROR;
    if (x->status != KV_OK && src->msg != NULL)
        x->msg = kv__strdup(src->msg); /* NULL on OOM: the code's text */
    if (src->is_static)
        return;
    x->have = src->have;
    x->bval = src->bval;
    x->token = src->token;
    x->bytes = src->bytes;
    x->nbytes = src->nbytes;
    x->obj = src->obj;
    src->have = 0;
    src->bytes = NULL;
    src->obj = NULL;
    if (src->rkind != NULL && !src->rhidden) {
        x->rkind = src->rkind;
        x->rptr = src->rptr;
        x->rn = src->rn;
        x->raux_set = src->raux_set;
        x->raux = src->raux;
        src->rkind = NULL;
        src->rptr = NULL;
        src->rn = 0;
    }
}

void kv__fut_import(kv_fut *dst, kv__fut_xfer *x)
{
    if (x->have & R_BOOL)
        kv__fut_set_bool(dst, x->bval);
    if (x->have & R_TOKEN)
        kv__fut_set_token(dst, x->token);
    if (x->have & R_BYTES)
        kv__fut_set_bytes(dst, x->bytes, x->nbytes); /* frees if dst done */
    if ((x->have & R_OBJ) && dst != NULL && !dst->is_static && !dst->done) {
        dst->obj = x->obj;
        dst->have |= R_OBJ;
    }
    if (x->rkind != NULL) /* released at once (or with dst) if dst is done */
        kv__fut_set_result(dst, x->rkind, x->rptr, x->rn,
                           x->raux_set ? &x->raux : NULL);
    if (x->msg != NULL)
        kv__fut_finish(dst, x->status, "%s", x->msg);
    else
        kv__fut_finish(dst, x->status, NULL);
    kv__free(x->msg);
    memset(x, 0, sizeof *x);
}

void kv__fut_xfer_release(kv__fut_xfer *x)
{
    if (x->have & R_BYTES)
        kv__free(x->bytes);
    if (x->rkind != NULL)
        x->rkind->release(x->rptr, x->rn, x->raux_set ? &x->raux : NULL);
    kv__free(x->msg);
    memset(x, 0, sizeof *x);
}
