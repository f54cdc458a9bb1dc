/*
 * query.c - the Redis backend's queries: the index members under a prefix
 * (one ZRANGEBYLEX per slot that may hold matches), merged and sorted here
 * into the iterator's cursor, then fetched in chunks (the records' hashes
 * read like a get, the ones deleted meanwhile dropped).
 */
#include "backend/redis/redis_int.h"

#include <stdlib.h>
#include <string.h>

static int member_cmp(const void *a, const void *b)
{
    const rmember *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void range_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = redis__cb_store(c);
    if (redis__cb_check(c, r, err, msg)) {
        if (r->type != REDIS_REPLY_ARRAY) {
            redis__rreq_fail(rq, KV_EBACKEND,
                             "redis: unexpected ZRANGEBYLEX reply");
        } else if (rq->err == KV_OK) {
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *e = r->element[i];
                if (e->type != REDIS_REPLY_STRING)
                    continue;
                if (rq->nm == rq->capm) {
                    size_t cap = rq->capm ? rq->capm * 2 : 64;
                    rmember *m = kv__realloc(rq->m, cap * sizeof *m);
                    if (m == NULL) {
                        redis__rreq_fail(rq, KV_ENOMEM, NULL);
                        break;
                    }
                    rq->m = m;
                    rq->capm = cap;
                }
                char *p = kv__memdup(e->str, e->len);
                if (p == NULL) {
                    redis__rreq_fail(rq, KV_ENOMEM, NULL);
                    break;
                }
                rq->m[rq->nm].p = p;
                rq->m[rq->nm].len = e->len;
                rq->nm++;
            }
        }
    }
    redis__rreq_put(st, rq, false);
}

/*
 * The ZRANGEBYLEX bounds of q over the prefix encoding enc, into min and max
 * (empty on entry): "-" and "+" for everything, else "[" enc (the prefix
 * and what follows) and "(" enc with its final 0x00 raised to 0x01.
 * q->after narrows the bound its order starts from to "(" after's
 * encoding (strictly after it) when that is tighter: the index members are
 * these encodings, whose byte order is kv_key_cmp order.
 */
static int query_bounds(const kv_query *q, const kv_buf *enc, kv_buf *min,
                        kv_buf *max)
{
    int rc;
    if (enc->len == 0) {
        rc = kv_buf_append(min, "-", 1);
        if (rc == KV_OK)
            rc = kv_buf_append(max, "+", 1);
    } else {
        rc = kv_buf_append(min, "[", 1);
        if (rc == KV_OK)
            rc = kv_buf_append(min, enc->data, enc->len);
        if (rc == KV_OK)
            rc = kv_buf_append(max, "(", 1);
        if (rc == KV_OK)
            rc = kv_buf_append(max, enc->data, enc->len);
        if (rc == KV_OK)
            max->data[max->len - 1] = 0x01;
    }
    if (rc != KV_OK || q->after == NULL)
        return rc;
    kv_buf a = {NULL, 0, 0};
    rc = kv_buf_append(&a, "(", 1);
    if (rc == KV_OK)
        rc = kv__key_encode(q->after, &a);
    if (rc != KV_OK) {
        kv__free(a.data);
        return rc;
    }
    bool desc = q->sort == KV_SORT_DESC;
    kv_buf *b = desc ? max : min;
    int c = 0;
    if (enc->len > 0) { /* compare the bytes after the '[' or '(' */
        rmember x = {(char *)a.data + 1, a.len - 1};
        rmember y = {(char *)b->data + 1, b->len - 1};
        c = member_cmp(&x, &y);
    }
    if (enc->len == 0 || (desc ? c < 0 : c >= 0)) {
        kv__free(b->data);
        *b = a;
    } else {
        kv__free(a.data);
    }
    return KV_OK;
}

int redis__send_range(rstore *st, rreq *rq, unsigned slot, const kv_buf *enc)
{
    /* Each slot is asked for at most offset + limit members, from the end
     * the query's order starts at: the merge needs no more from any.  No
     * LIMIT (0 here) when the sum is past INT64_MAX: Redis reads the count
     * as a signed 64-bit integer and refuses a larger one ("value is not
     * an integer or out of range"), and no slot holds that many anyway. */
    const kv_query *q = &rq->req->iter->q;
    bool desc = q->sort == KV_SORT_DESC;
    uint64_t want = 0;
    if (q->limit >= 0) {
        uint64_t off = q->offset > 0 ? (uint64_t)q->offset : 0;
        uint64_t lim = (uint64_t)q->limit;
        want = lim > (uint64_t)INT64_MAX - off ? 0 : off + lim;
    }
    kv_buf min = {NULL, 0, 0}, max = {NULL, 0, 0};
    int rc = query_bounds(q, enc, &min, &max);
    rcmd *c = rc == KV_OK ? redis__cmd_new(rq, (int)slot, -1, 0, range_cb)
                          : NULL;
    if (c == NULL) {
        kv__free(min.data);
        kv__free(max.data);
        return rc != KV_OK ? rc : KV_ENOMEM;
    }
    kv_buf *b = &c->tail;
    c->nargs = want > 0 ? 7 : 4;
    rc = redis__args(b, desc ? "ZREVRANGEBYLEX" : "ZRANGEBYLEX");
    if (rc == KV_OK)
        rc = redis__arg_key(st, b, slot, "\0i", 2);
    /* ZREVRANGEBYLEX takes max first */
    if (rc == KV_OK)
        rc = desc ? redis__arg(b, max.data, max.len)
                  : redis__arg(b, min.data, min.len);
    if (rc == KV_OK)
        rc = desc ? redis__arg(b, min.data, min.len)
                  : redis__arg(b, max.data, max.len);
    kv__free(min.data);
    kv__free(max.data);
    if (rc == KV_OK && want > 0) {
        rc = redis__args(b, "LIMIT");
        if (rc == KV_OK)
            rc = redis__args(b, "0");
        if (rc == KV_OK)
            rc = redis__argu(b, want);
    }
    if (rc != KV_OK) {
        redis__cmd_free(c);
        return rc;
    }
    redis__rq_send(st, rq, c);
    return KV_OK;
}

/* QUERY_OPEN gathered every member: sort, cut, make the cursor. */
int redis__query_finish(rreq *rq)
{
    kv__req *req = rq->req;
    const kv_query *q = &req->iter->q;
    if (rq->nm > 1)
        qsort(rq->m, rq->nm, sizeof *rq->m, member_cmp);
    if (q->sort == KV_SORT_DESC)
        for (size_t i = 0, j = rq->nm; i + 1 < j; i++, j--) {
            rmember t = rq->m[i];
            rq->m[i] = rq->m[j - 1];
            rq->m[j - 1] = t;
        }
    size_t off = q->offset > 0 ? (size_t)q->offset : 0;
    if (off > rq->nm)
        off = rq->nm;
    size_t end = rq->nm;
    if (q->limit >= 0 && (uint64_t)q->limit < end - off)
        end = off + (size_t)q->limit;
    rcursor *cur = kv__calloc(1, sizeof *cur);
    if (cur == NULL)
        return KV_ENOMEM;
    size_t n = end - off;
    cur->m = kv__malloc((n ? n : 1) * sizeof *cur->m);
    if (cur->m == NULL) {
        kv__free(cur);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < rq->nm; i++) {
        if (i >= off && i < end) {
            cur->m[i - off] = rq->m[i];
        } else {
            kv__free(rq->m[i].p);
        }
    }
    kv__free(rq->m);
    rq->m = NULL;
    rq->nm = rq->capm = 0;
    cur->n = n;
    rstore *st = req->store->backend;
    cur->st = st;
    kv__list_push_front(&st->cursors, &cur->link);
    req->iter->bpriv = cur;
    return KV_OK;
}

void redis__cursor_free(rcursor *cur)
{
    if (cur == NULL)
        return;
    kv__list_remove(&cur->link);
    for (size_t i = cur->pos; i < cur->n; i++)
        kv__free(cur->m[i].p);
    kv__free(cur->m);
    kv__free(cur);
}

/* A fetch chunk came back: drop records deleted since the query opened. */
bool redis__fetch_finish(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    rcursor *cur = req->iter->bpriv;
    size_t k = 0;
    for (size_t i = 0; i < req->n; i++) {
        kv__item *it = &req->items[i];
        if (it->status == KV_OK || it->status == KV_ECORRUPT) {
            if (k != i) {
                req->items[k] = *it;
                memset(it, 0, sizeof *it);
            }
            k++;
        } else {
            kv_key_free(it->key);
            kv__free(it->val);
            memset(it, 0, sizeof *it);
        }
    }
    req->n = k;
    req->eof = cur->pos >= cur->n;
    if (k == 0 && !req->eof) {
        kv__items_free(req->items, FETCH_CHUNK);
        req->items = NULL;
        redis__fetch_start(st, rq); /* all gone: the next chunk */
        return false;
    }
    return true;
}

void redis__fetch_start(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    rcursor *cur = req->iter->bpriv;
    size_t n = cur->n - cur->pos;
    if (n > FETCH_CHUNK)
        n = FETCH_CHUNK;
    req->n = 0;
    req->items = kv__items_new(FETCH_CHUNK);
    rq->pending++;
    if (req->items == NULL) {
        redis__rreq_fail(rq, KV_ENOMEM, NULL);
        redis__rreq_put(st, rq, true);
        return;
    }
    kv_buf enc = {NULL, 0, 0};
    for (size_t i = 0; i < n; i++) {
        rmember *m = &cur->m[cur->pos];
        kv__item *it = &req->items[i];
        int rc = kv__key_decode(&it->key, m->p, m->len);
        if (rc != KV_OK) {
            redis__rreq_fail(rq, rc,
                             "redis: an index entry is not a valid key");
            break;
        }
        req->n = i + 1;
        it->status = KV_ENOTFOUND;
        cur->pos++;
        kv__free(m->p);
        m->p = NULL;
        if ((rc = redis__send_read(st, rq, i, it->key, req->want_value,
                                   &enc)) != KV_OK) {
            redis__rreq_fail(rq, rc, NULL);
            break;
        }
    }
    kv__free(enc.data);
    redis__rreq_put(st, rq, true);
}

int redis__submit_query(rstore *st, rreq *rq)
{
    kv_buf enc = {NULL, 0, 0};
    int rc = KV_OK;
    const kv_key *k = rq->req->iter->q.key;
    if (k != NULL && kv_key_len(k) > 0)
        rc = kv__key_encode(k, &enc);
    if (rc == KV_OK && rq->req->iter->q.limit == 0) {
        kv__free(enc.data);
        return KV_OK;
    }
    if (rc == KV_OK && st->keymode) {
        rq->encs = kv__calloc(1, sizeof *rq->encs);
        if (rq->encs == NULL) {
            kv__free(enc.data);
            return KV_ENOMEM;
        }
        rq->encs[0] = enc;
        rq->nencs = 1;
        return redis__dir_read(st, rq);
    }
    if (rc == KV_OK)
        rc = redis__send_range(st, rq, st->store_slot, &enc);
    kv__free(enc.data);
    return rc;
}
