/*
 * model.c - the model backend: a small in-memory reference backend written
 * against the backend contract (store/backend.h).  It pins the store
 * layer's own behaviour independently of any real backend, and its
 * non-atomic variant covers a backend without atomic batches.  Every
 * request runs as a pool job that does nothing on the worker: the work is
 * done in the job's done callback, on the loop thread.
 */
#include "config.h"

#include "model.h"
#include "store/backend.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mentry {
    kv_key *key;
    void *val;
    size_t len;
    uint64_t token;
} mentry;

typedef struct mcursor {
    struct mcursor *next, *prev;
    mentry *rows;
    size_t n, pos;
} mcursor;

typedef struct model {
    mentry *e;
    size_t n, cap;
    uint64_t tokens;
    size_t jobs;
    kv__req *close_req;
    mcursor *cursors;
    char msg[256]; /* the failed request's message, if any */
} model;

typedef struct mjob {
    kv__job job;
    kv__req *req;
    kv_store *s;
} mjob;

static bool m_under(const kv_key *k, const kv_key *prefix)
{
    return kv_key_len(prefix) == 0 || kv_key_equal(k, prefix) ||
           kv_key_is_descendant(k, prefix);
}

static long m_find(const model *m, const kv_key *k)
{
    for (size_t i = 0; i < m->n; i++)
        if (kv_key_equal(m->e[i].key, k))
            return (long)i;
    return -1;
}

static void m_set(model *m, const kv_key *k, const void *val, size_t len,
                  uint64_t *token)
{
    long i = m_find(m, k);
    if (i < 0) {
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 16;
            m->e = realloc(m->e, m->cap * sizeof *m->e);
            ck_assert_ptr_nonnull(m->e);
        }
        i = (long)m->n++;
        ck_assert_int_eq(kv_key_dup(&m->e[i].key, k), KV_OK);
    } else {
        free(m->e[i].val);
    }
    m->e[i].val = malloc(len ? len : 1);
    if (len)
        memcpy(m->e[i].val, val, len);
    m->e[i].len = len;
    m->e[i].token = *token = ++m->tokens;
}

static void m_remove(model *m, size_t i)
{
    kv_key_free(m->e[i].key);
    free(m->e[i].val);
    m->e[i] = m->e[--m->n];
}

static bool m_put_ok(const model *m, const kv__item *it)
{
    long i = m_find(m, it->key);
    if (it->token == KV_TOKEN_ANY)
        return true;
    return it->token == 0 ? i < 0 : (i >= 0 && m->e[i].token == it->token);
}

/* KV_OK (remove it), KV_ENOTFOUND (unconditional, absent) or KV_ECONFLICT. */
static int m_del_status(const model *m, const kv__item *it)
{
    long i = m_find(m, it->key);
    if (it->token == KV_TOKEN_ANY)
        return i >= 0 ? KV_OK : KV_ENOTFOUND;
    return it->token != 0 && i >= 0 && m->e[i].token == it->token
               ? KV_OK
               : KV_ECONFLICT;
}

static int m_cmp_asc(const void *a, const void *b)
{
    return kv_key_cmp(((const mentry *)a)->key, ((const mentry *)b)->key);
}

static void m_cursor_free(model *m, mcursor *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        m->cursors = c->next;
    if (c->next)
        c->next->prev = c->prev;
    for (size_t i = 0; i < c->n; i++) {
        kv_key_free(c->rows[i].key);
        free(c->rows[i].val);
    }
    free(c->rows);
    free(c);
}

static int m_move(model *m, kv__req *req)
{
    /* Plan every rename, then check collisions, then apply. */
    size_t *src = calloc(m->n + 1, sizeof *src);
    kv_key **dst = calloc(m->n + 1, sizeof *dst);
    size_t np = 0;
    int rc = KV_OK;
    for (size_t i = 0; i < m->n; i++) {
        for (size_t j = 0; j < req->n; j++) {
            if (m_under(m->e[i].key, req->items[j].key)) {
                kv_key *rel = NULL;
                ck_assert_int_eq(
                    kv_key_relative(&rel, m->e[i].key, req->items[j].key),
                    KV_OK);
                ck_assert_int_eq(
                    kv_key_child_key(&dst[np], req->items[j].key2, rel), KV_OK);
                kv_key_free(rel);
                src[np++] = i;
                break;
            }
        }
    }
    /* A moved key may not pass a key limit (kvstore.h, "Keys"). */
    for (size_t p = 0; p < np && rc == KV_OK; p++) {
        const char *lim =
            kv_key_len(dst[p]) > KV_KEY_MAX_DEPTH ? "KV_KEY_MAX_DEPTH"
            : strlen(kv_key_id(dst[p])) > KV_KEY_MAX_LEN ? "KV_KEY_MAX_LEN"
                                                         : NULL;
        if (lim != NULL) {
            snprintf(m->msg, sizeof m->msg, "model: a moved key passes %s",
                     lim);
            rc = KV_EINVAL;
        }
    }
    for (size_t p = 0; p < np && rc == KV_OK; p++) {
        long d = m_find(m, dst[p]);
        if (d < 0)
            continue;
        bool moving = false;
        for (size_t q = 0; q < np; q++)
            moving |= src[q] == (size_t)d;
        if (!moving)
            rc = KV_ECONFLICT;
    }
    for (size_t p = 0; p < np; p++) {
        if (rc == KV_OK) {
            kv_key_free(m->e[src[p]].key);
            m->e[src[p]].key = dst[p];
            m->e[src[p]].token = ++m->tokens;
        } else {
            kv_key_free(dst[p]);
        }
    }
    free(src);
    free(dst);
    return rc;
}

static int m_exec(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    kv__item *it = req->items;
    bool any = false;
    switch (req->op) {
    case KV__OP_HAS:
    case KV__OP_GET:
        for (size_t i = 0; i < req->n; i++) {
            long k = m_find(m, it[i].key);
            it[i].status = k < 0 ? KV_ENOTFOUND : KV_OK;
            if (k < 0)
                continue;
            it[i].token = m->e[k].token;
            if (req->op == KV__OP_GET && req->want_value) {
                it[i].val = kv__memdup(m->e[k].val, m->e[k].len);
                it[i].len = m->e[k].len;
            }
        }
        return KV_OK;
    case KV__OP_PUT:
        for (size_t i = 0; i < req->n; i++) {
            it[i].status = m_put_ok(m, &it[i]) ? KV_OK : KV_ECONFLICT;
            if (it[i].status == KV_OK)
                m_set(m, it[i].key, it[i].val, it[i].len, &it[i].token);
        }
        return KV_OK;
    case KV__OP_DELETE:
        for (size_t i = 0; i < req->n; i++) {
            it[i].status = m_del_status(m, &it[i]);
            if (it[i].status == KV_OK)
                m_remove(m, (size_t)m_find(m, it[i].key));
        }
        return KV_OK;
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
        for (size_t i = 0; i < req->n; i++) {
            if (req->op == KV__OP_PUT_ATOMIC)
                it[i].status = m_put_ok(m, &it[i]) ? KV_OK : KV_ECONFLICT;
            else
                it[i].status = m_del_status(m, &it[i]);
            any |= it[i].status == KV_ECONFLICT;
        }
        for (size_t i = 0; i < req->n && !any; i++) {
            if (req->op == KV__OP_PUT_ATOMIC)
                m_set(m, it[i].key, it[i].val, it[i].len, &it[i].token);
            else if (it[i].status == KV_OK)
                m_remove(m, (size_t)m_find(m, it[i].key));
        }
        return KV_OK;
    case KV__OP_MOVE:
        return m_move(m, req);
    case KV__OP_DROP:
        for (size_t j = 0; j < req->n; j++)
            for (size_t i = m->n; i-- > 0;)
                if (m_under(m->e[i].key, it[j].key))
                    m_remove(m, i);
        return KV_OK;
    case KV__OP_QUERY_OPEN: {
        const kv_query *q = &req->iter->q;
        mcursor *c = calloc(1, sizeof *c);
        c->rows = calloc(m->n + 1, sizeof *c->rows);
        for (size_t i = 0; i < m->n; i++) {
            if (!m_under(m->e[i].key, q->key))
                continue;
            /* after: strictly past that position in the query's order */
            int pos = q->after != NULL ? kv_key_cmp(m->e[i].key, q->after)
                                       : (q->sort == KV_SORT_DESC ? -1 : 1);
            if (q->sort == KV_SORT_DESC ? pos >= 0 : pos <= 0)
                continue;
            mentry *r = &c->rows[c->n++];
            ck_assert_int_eq(kv_key_dup(&r->key, m->e[i].key), KV_OK);
            r->val = malloc(m->e[i].len + 1);
            memcpy(r->val, m->e[i].val, m->e[i].len);
            r->len = m->e[i].len;
            r->token = m->e[i].token;
        }
        if (q->sort != KV_SORT_NONE)
            qsort(c->rows, c->n, sizeof *c->rows, m_cmp_asc);
        if (q->sort == KV_SORT_DESC)
            for (size_t i = 0; i < c->n / 2; i++) {
                mentry t = c->rows[i];
                c->rows[i] = c->rows[c->n - 1 - i];
                c->rows[c->n - 1 - i] = t;
            }
        /* offset and limit: skip and cut (freeing the rows cut). */
        size_t off = (size_t)q->offset < c->n ? (size_t)q->offset : c->n;
        size_t end = c->n;
        if (q->limit >= 0 && (size_t)q->limit < end - off)
            end = off + (size_t)q->limit;
        for (size_t i = 0; i < c->n; i++) {
            if (i < off || i >= end) {
                kv_key_free(c->rows[i].key);
                free(c->rows[i].val);
                c->rows[i].key = NULL;
                c->rows[i].val = NULL;
            }
        }
        memmove(c->rows, c->rows + off, (end - off) * sizeof *c->rows);
        c->n = end - off;
        c->next = m->cursors;
        if (m->cursors)
            m->cursors->prev = c;
        m->cursors = c;
        req->iter->bpriv = c;
        return KV_OK;
    }
    case KV__OP_ITER_FETCH: {
        mcursor *c = req->iter->bpriv;
        ck_assert_ptr_nonnull(c);
        size_t k = c->n - c->pos < 3 ? c->n - c->pos : 3; /* small chunks */
        req->items = kv__items_new(k);
        req->n = k;
        for (size_t i = 0; i < k; i++, c->pos++) {
            mentry *r = &c->rows[c->pos];
            ck_assert_int_eq(kv_key_dup(&req->items[i].key, r->key), KV_OK);
            if (req->want_value) {
                req->items[i].val = kv__memdup(r->val, r->len);
                req->items[i].len = r->len;
            }
            req->items[i].token = r->token;
        }
        req->eof = c->pos == c->n;
        return KV_OK;
    }
    case KV__OP_ITER_DISPOSE:
        if (req->iter->bpriv != NULL)
            m_cursor_free(m, req->iter->bpriv);
        req->iter->bpriv = NULL;
        return KV_OK;
    default:
        return KV_EINVAL;
    }
}

static void m_work(kv__job *job)
{
    (void)job;
}

static void m_done(kv__job *job, int status)
{
    mjob *j = (mjob *)job;
    kv_store *s = j->s;
    model *m = s->backend;
    kv__req *req = j->req;
    free(j);
    m->jobs--;
    if (req != NULL) {
        req->bpriv = NULL;
        if (status != KV_OK || m->close_req != NULL) /* cancelled, closing */
            kv__req_done(req, KV_ECANCELED, NULL);
        else {
            m->msg[0] = '\0';
            int rc = m_exec(s, req);
            if (rc != KV_OK && m->msg[0] != '\0')
                kv__req_done(req, rc, "%s", m->msg);
            else
                kv__req_done(req, rc, rc == KV_OK ? NULL : "model: %s",
                             kv_strerror(rc));
        }
    }
    if (m->close_req != NULL && m->jobs == 0) {
        kv__req *cr = m->close_req;
        m->close_req = NULL;
        kv__req_done(cr, KV_OK, NULL);
    }
}

static void m_queue(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    mjob *j = calloc(1, sizeof *j);
    j->job.work = m_work;
    j->job.done = m_done;
    j->req = req;
    j->s = s;
    if (req != NULL)
        req->bpriv = j;
    m->jobs++;
    kv__pool_submit(s->pool, s->loop, &j->job);
}

static void m_submit(kv_store *s, kv__req *req)
{
    m_queue(s, req);
}

static void m_cancel(kv_store *s, kv__req *req)
{
    mjob *j = req->bpriv;
    if (j != NULL)
        kv__pool_cancel(s->pool, &j->job);
}

static void m_close(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    while (m->cursors != NULL)
        m_cursor_free(m, m->cursors);
    m->close_req = req;
    m_queue(s, NULL); /* completes the close after every other job */
}

static void m_destroy(kv_store *s)
{
    model *m = s->backend;
    while (m->n > 0)
        m_remove(m, m->n - 1);
    free(m->e);
    free(m);
}

static const struct kv_backend_ops model_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "model",
    .atomic_batch = true,
    .submit = m_submit,
    .cancel = m_cancel,
    .close = m_close,
    .destroy = m_destroy,
};
static const struct kv_backend_ops model_noatomic_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "model",
    .atomic_batch = false,
    .submit = m_submit,
    .cancel = m_cancel,
    .close = m_close,
    .destroy = m_destroy,
};

static int open_model_ops(kv_store **out, kv_loop *loop, kv_pool *pool,
                          unsigned flags, const struct kv_backend_ops *ops)
{
    model *m = calloc(1, sizeof *m);
    int rc = kv__store_new(out, ops, m, loop, pool, flags);
    if (rc != KV_OK)
        free(m);
    return rc;
}

int tu_model_open(kv_store **out, kv_loop *loop, kv_pool *pool, unsigned flags,
                  bool atomic)
{
    return open_model_ops(out, loop, pool, flags,
                          atomic ? &model_ops : &model_noatomic_ops);
}
