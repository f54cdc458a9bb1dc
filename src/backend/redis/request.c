/*
 * request.c - the Redis backend's requests: per-request state and its
 * completion (deferred to a NOP, never inside submit), submit, and the
 * commands of reads, writes (put/delete scripts), move and drop, with the
 * store's slot directory (shard=key) that queries and drops read and puts
 * extend first.  Queries and fetches are in query.c.
 */
#include "backend/redis/redis_int.h"

#include <string.h>

static void rreq_free(rreq *rq)
{
    for (size_t i = 0; i < rq->nencs; i++)
        kv__free(rq->encs[i].data);
    kv__free(rq->encs);
    for (size_t i = 0; i < rq->nm; i++)
        kv__free(rq->m[i].p);
    kv__free(rq->m);
    kv__free(rq->msg);
    kv__free(rq);
}

static void defer_kick(rstore *st)
{
    if (st->dpending || (st->defer == NULL && st->oom == NULL))
        return;
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(st->loop, &sqe, 1) != KV_OK)
        return; /* retried at the next CQE of this store */
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&st->dop);
    st->dpending = true;
}

/* Record a failure on rq (the first one wins). */
void redis__rreq_fail(rreq *rq, int err, const char *msg)
{
    if (rq->err != KV_OK)
        return;
    rq->err = err;
    rq->msg = msg ? kv__strdup(msg) : NULL;
}

static void req_complete(rstore *st, rreq *rq);

/* Drop one pending count; complete later (never inside submit). */
void redis__rreq_put(rstore *st, rreq *rq, bool defer)
{
    if (--rq->pending > 0)
        return;
    if (defer) {
        rq->dnext = NULL;
        if (st->defer_tail)
            st->defer_tail->dnext = rq;
        else
            st->defer = rq;
        st->defer_tail = rq;
        defer_kick(st);
        return;
    }
    req_complete(st, rq);
}

void redis__defer_cb(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rstore *st = KV__CONTAINER_OF(op, rstore, dop);
    st->dpending = false;
    rreq *list = st->defer;
    st->defer = st->defer_tail = NULL;
    kv__req *oom = st->oom;
    st->oom = NULL;
    while (oom != NULL) {
        kv__req *req = oom;
        oom = req->bpriv;
        req->bpriv = NULL;
        kv__req_done(req, KV_ENOMEM, NULL);
    }
    while (list != NULL) {
        rreq *rq = list;
        list = rq->dnext;
        if (rq->req == NULL) { /* the close request */
            kv__req *cr = st->close_req;
            st->close_req = NULL;
            kv__free(rq);
            st->closed = true;
            kv__req_done(cr, KV_OK, NULL);
            continue;
        }
        req_complete(st, rq);
    }
    defer_kick(st);
    redis__maybe_closed(st);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

rcmd *redis__cmd_new(rreq *rq, int slot, int script, size_t idx, rcmd_cb cb)
{
    rcmd *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->slot = slot;
    c->script = script;
    c->rq = rq;
    c->idx = idx;
    c->cb = cb;
    return c;
}

/* Route c for rq (rq->pending counts it). */
void redis__rq_send(rstore *st, rreq *rq, rcmd *c)
{
    rq->pending++;
    redis__cmd_route(st, c);
}

/* The common tail of a command callback. */
rstore *redis__cb_store(rcmd *c)
{
    return c->rq->req->store->backend;
}

bool redis__cb_check(rcmd *c, redisReply *r, int err, const char *msg)
{
    if (err != KV_OK) {
        redis__rreq_fail(c->rq, err, msg);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char *m = kv__asprintf("redis: %s", r->str ? r->str : "error");
        redis__rreq_fail(c->rq, KV_EBACKEND, m);
        kv__free(m);
        return false;
    }
    return true;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* --- reads ---------------------------------------------------------------- */

/* HMGET v t (or HGET t) of item idx. */
static void read_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = redis__cb_store(c);
    if (redis__cb_check(c, r, err, msg)) {
        kv__item *it = &rq->req->items[c->idx];
        const redisReply *tr = r, *vr = NULL;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            vr = r->element[0];
            tr = r->element[1];
        }
        if (tr->type == REDIS_REPLY_NIL) {
            it->status = KV_ENOTFOUND;
        } else if (tr->type != REDIS_REPLY_STRING ||
                   !parse_u64(tr->str, tr->len, &it->token) || it->token == 0 ||
                   (vr != NULL && vr->type != REDIS_REPLY_STRING)) {
            it->status = KV_ECORRUPT;
            if (rq->req->op == KV__OP_ITER_FETCH) {
                /* A row of its own (iter.c fails or skips it). */
                kv__free(it->val);
                it->val = kv__asprintf("redis: record %s: a record hash "
                                       "without a valid token or value",
                                       kv_key_id(it->key));
                it->len = it->val != NULL ? strlen(it->val) : 0;
            } else {
                redis__rreq_fail(rq, KV_ECORRUPT,
                                 "redis: a record hash without a "
                                 "valid token or value");
            }
        } else {
            it->status = KV_OK;
            if (vr != NULL) {
                kv__free(it->val);
                it->val = kv__memdup(vr->str, vr->len);
                it->len = vr->len;
                if (it->val == NULL)
                    redis__rreq_fail(rq, KV_ENOMEM, NULL);
            }
        }
    }
    redis__rreq_put(st, rq, false);
}

int redis__send_read(rstore *st, rreq *rq, size_t i, const kv_key *key,
                     bool value, kv_buf *enc)
{
    enc->len = 0;
    int rc = kv__key_encode(key, enc);
    if (rc != KV_OK)
        return rc;
    unsigned slot = redis__key_slot(st, key, enc);
    rcmd *c = redis__cmd_new(rq, (int)slot, -1, i, read_cb);
    if (c == NULL)
        return KV_ENOMEM;
    if (value) {
        c->nargs = 4;
        rc = redis__args(&c->tail, "HMGET");
        if (rc == KV_OK)
            rc = redis__arg_key(st, &c->tail, slot, enc->data, enc->len);
        if (rc == KV_OK)
            rc = redis__args(&c->tail, "v");
    } else {
        c->nargs = 3;
        rc = redis__args(&c->tail, "HGET");
        if (rc == KV_OK)
            rc = redis__arg_key(st, &c->tail, slot, enc->data, enc->len);
    }
    if (rc == KV_OK)
        rc = redis__args(&c->tail, "t");
    if (rc != KV_OK) {
        redis__cmd_free(c);
        return rc;
    }
    redis__rq_send(st, rq, c);
    return KV_OK;
}

/* --- the slot directory (shard=key) --------------------------------------- */

static bool dir_has(const rstore *st, unsigned slot)
{
    return (st->dirbits[slot >> 3] & (0x80u >> (slot & 7))) != 0;
}

static void dir_set(rstore *st, unsigned slot)
{
    st->dirbits[slot >> 3] |= (unsigned char)(0x80u >> (slot & 7));
}

/* SETBIT acknowledged: the write may go. */
static void dirset_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rcmd *w = c->then;
    c->then = NULL;
    rstore *st = redis__cb_store(c);
    if (err == KV_OK && r->type == REDIS_REPLY_INTEGER) {
        dir_set(st, (unsigned)w->slot);
        redis__cmd_route(st, w);
        return;
    }
    char *m = kv__asprintf(
        "redis: cannot record hash slot %d in the store's slot directory "
        "(%s); not applied",
        w->slot,
        err != KV_OK
            ? (msg ? msg : kv_strerror(err))
            : (r->type == REDIS_REPLY_ERROR && r->str ? r->str : "bad reply"));
    redis__cmd_fail(w, err != KV_OK ? err : KV_EBACKEND, m);
    kv__free(m);
}

/* Send w (rq->pending already counts it) once its slot is in the
 * directory: SETBIT first, unless this client saw the bit set already. */
static void dir_then_send(rstore *st, rcmd *w)
{
    if (!st->keymode || dir_has(st, (unsigned)w->slot)) {
        redis__cmd_route(st, w);
        return;
    }
    rcmd *c = redis__cmd_new(w->rq, (int)st->store_slot, -1, 0, dirset_cb);
    int rc = c == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK) {
        c->nargs = 4;
        rc = redis__args(&c->tail, "SETBIT");
        if (rc == KV_OK)
            rc = redis__arg_key(st, &c->tail, st->store_slot, "\0s", 2);
        if (rc == KV_OK)
            rc = redis__argu(&c->tail, (uint64_t)w->slot);
        if (rc == KV_OK)
            rc = redis__args(&c->tail, "1");
    }
    if (rc != KV_OK) {
        if (c != NULL)
            redis__cmd_free(c);
        redis__cmd_fail(w, rc, NULL);
        return;
    }
    c->then = w;
    redis__cmd_route(st, c);
}

static int send_prefix_script(rstore *st, rreq *rq, unsigned slot, int script,
                              kv_buf *encs, size_t nencs);

/* The directory's bitmap: fan the query or drop out to its slots (to
 * every slot when there is no directory). */
static void dirget_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = redis__cb_store(c);
    if (redis__cb_check(c, r, err, msg)) {
        if (r->type != REDIS_REPLY_NIL && r->type != REDIS_REPLY_STRING) {
            redis__rreq_fail(rq, KV_EBACKEND,
                             "redis: unexpected reply to GET of "
                             "the slot directory");
        } else {
            bool all = r->type == REDIS_REPLY_NIL;
            bool query = rq->req->op == KV__OP_QUERY_OPEN;
            for (unsigned s = 0; s < NSLOTS && rq->err == KV_OK; s++) {
                if (!all &&
                    ((s >> 3) >= r->len ||
                     !((unsigned char)r->str[s >> 3] & (0x80u >> (s & 7)))))
                    continue;
                if (!all)
                    dir_set(st, s);
                int rc = query ? redis__send_range(st, rq, s, &rq->encs[0])
                               : send_prefix_script(st, rq, s, SC_DROP,
                                                    rq->encs, rq->nencs);
                if (rc != KV_OK)
                    redis__rreq_fail(rq, rc, NULL);
            }
        }
    }
    redis__rreq_put(st, rq, false);
}

/* Read the directory for rq (a query or drop; prefixes in rq->encs). */
int redis__dir_read(rstore *st, rreq *rq)
{
    rcmd *c = redis__cmd_new(rq, (int)st->store_slot, -1, 0, dirget_cb);
    if (c == NULL)
        return KV_ENOMEM;
    c->nargs = 2;
    int rc = redis__args(&c->tail, "GET");
    if (rc == KV_OK)
        rc = redis__arg_key(st, &c->tail, st->store_slot, "\0s", 2);
    if (rc != KV_OK) {
        redis__cmd_free(c);
        return rc;
    }
    redis__rq_send(st, rq, c);
    return KV_OK;
}

/* --- writes ------------------------------------------------------------- */

static void write_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = redis__cb_store(c);
    kv__req *req = rq->req;
    bool atomic =
        req->op == KV__OP_PUT_ATOMIC || req->op == KV__OP_DELETE_ATOMIC;
    bool put = req->op == KV__OP_PUT || req->op == KV__OP_PUT_ATOMIC;
    if (redis__cb_check(c, r, err, msg)) {
        size_t count = atomic ? req->n : 1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != count) {
            redis__rreq_fail(rq, KV_EBACKEND, "redis: unexpected script reply");
        } else {
            bool bad = false;
            for (size_t k = 0; k < count; k++)
                if (r->element[k]->type != REDIS_REPLY_INTEGER ||
                    r->element[k]->integer == 0)
                    bad = true;
            for (size_t k = 0; k < count; k++) {
                kv__item *it = &req->items[c->idx + k];
                const redisReply *e = r->element[k];
                if (e->type != REDIS_REPLY_INTEGER || e->integer < 0) {
                    redis__rreq_fail(rq, KV_EBACKEND,
                                     "redis: bad script result");
                } else if (e->integer == 0) {
                    it->status = KV_ECONFLICT;
                } else if (!put && e->integer == 2) {
                    it->status = KV_ENOTFOUND; /* unconditional, absent */
                } else {
                    it->status = KV_OK;
                    if (put && !(atomic && bad))
                        it->token = (uint64_t)e->integer;
                }
            }
        }
    }
    redis__rreq_put(st, rq, false);
}

/* One script call writing items [i, i + count) (all in slot). */
static int send_write(rstore *st, rreq *rq, size_t i, size_t count,
                      unsigned slot, kv_buf *encs)
{
    kv__req *req = rq->req;
    bool put = req->op == KV__OP_PUT || req->op == KV__OP_PUT_ATOMIC;
    bool atomic =
        req->op == KV__OP_PUT_ATOMIC || req->op == KV__OP_DELETE_ATOMIC;
    rcmd *c = redis__cmd_new(rq, (int)slot, put ? SC_PUT : SC_DEL, i, write_cb);
    if (c == NULL)
        return KV_ENOMEM;
    kv_buf *b = &c->tail;
    c->nargs = (int)(1 + 2 + count + 1 + count * (put ? 3 : 2));
    int rc = redis__argu(b, 2 + count);
    if (rc == KV_OK)
        rc = redis__arg_key(st, b, slot, "\0c", 2);
    if (rc == KV_OK)
        rc = redis__arg_key(st, b, slot, "\0i", 2);
    for (size_t k = 0; k < count && rc == KV_OK; k++)
        rc = redis__arg_key(st, b, slot, encs[k].data, encs[k].len);
    if (rc == KV_OK)
        rc = redis__args(b, atomic ? "1" : "0");
    for (size_t k = 0; k < count && rc == KV_OK; k++) {
        kv__item *it = &req->items[i + k];
        rc = it->any ? redis__args(b, "*") : redis__argu(b, it->token);
        if (rc == KV_OK && put)
            rc = redis__arg(b, it->val, it->len);
        if (rc == KV_OK)
            rc = redis__arg(b, encs[k].data, encs[k].len);
    }
    if (rc != KV_OK) {
        redis__cmd_free(c);
        return rc;
    }
    if (!put) { /* a record to delete was put first: its slot is known */
        redis__rq_send(st, rq, c);
        return KV_OK;
    }
    rq->pending++;
    dir_then_send(st, c);
    return KV_OK;
}

/* --- move and drop -------------------------------------------------------- */

/* The move script's {-1|-2, key}: a moved key would pass a key limit. */
static void move_limit_fail(rreq *rq, long long which, const redisReply *key)
{
    kv_key *k = NULL;
    const char *lim = kv__key_enc_limit(key->str, key->len);
    if ((which != -1 && which != -2) || lim == NULL) {
        redis__rreq_fail(rq, KV_EBACKEND, "redis: unexpected script reply");
        return;
    }
    bool named = kv__key_decode(&k, key->str, key->len) == KV_OK;
    char *m = kv__asprintf("move: the moved key %.200s%s would pass %s, a "
                           "key limit of kvstore.h",
                           named ? kv_key_id(k) : "(undecodable key)",
                           named && strlen(kv_key_id(k)) > 200 ? "..." : "",
                           lim);
    kv_key_free(k);
    redis__rreq_fail(rq, KV_EINVAL, m);
    kv__free(m);
}

static void one_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = redis__cb_store(c);
    if (redis__cb_check(c, r, err, msg)) {
        if (rq->req->op == KV__OP_MOVE && r->type == REDIS_REPLY_ARRAY &&
            r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER &&
            r->element[1]->type == REDIS_REPLY_STRING)
            move_limit_fail(rq, r->element[0]->integer, r->element[1]);
        else if (r->type != REDIS_REPLY_INTEGER)
            redis__rreq_fail(rq, KV_EBACKEND, "redis: unexpected script reply");
        else if (rq->req->op == KV__OP_MOVE && r->integer == 0)
            redis__rreq_fail(rq, KV_ECONFLICT,
                             "a destination of the move already exists");
    }
    redis__rreq_put(st, rq, false);
}

/* A script over the counter/index of slot: base and encoded prefixes. */
static int send_prefix_script(rstore *st, rreq *rq, unsigned slot, int script,
                              kv_buf *encs, size_t nencs)
{
    rcmd *c = redis__cmd_new(rq, (int)slot, script, 0, one_cb);
    if (c == NULL)
        return KV_ENOMEM;
    kv_buf *b = &c->tail;
    int nkeys = script == SC_MOVE ? 2 : 1;
    c->nargs = (int)(1 + nkeys + 1 + nencs);
    int rc = redis__argu(b, (uint64_t)nkeys);
    if (rc == KV_OK && script == SC_MOVE)
        rc = redis__arg_key(st, b, slot, "\0c", 2);
    if (rc == KV_OK)
        rc = redis__arg_key(st, b, slot, "\0i", 2);
    if (rc == KV_OK)
        rc = redis__arg_key(st, b, slot, "", 0); /* base */
    for (size_t k = 0; k < nencs && rc == KV_OK; k++)
        rc = redis__arg(b, encs[k].data, encs[k].len);
    if (rc != KV_OK) {
        redis__cmd_free(c);
        return rc;
    }
    redis__rq_send(st, rq, c);
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Submit                                                                   */
/* ------------------------------------------------------------------------ */

static void req_complete(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    if (rq->err == KV_OK && req->op == KV__OP_QUERY_OPEN) {
        int rc = redis__query_finish(rq);
        if (rc != KV_OK)
            redis__rreq_fail(rq, rc, NULL);
    }
    if (rq->err == KV_OK && req->op == KV__OP_ITER_FETCH) {
        if (!redis__fetch_finish(st, rq))
            return;
    }
    if (rq->err != KV_OK && req->op == KV__OP_ITER_FETCH) {
        kv__items_free(req->items, req->items ? FETCH_CHUNK : 0);
        req->items = NULL;
        req->n = 0;
    }
    int err = rq->err;
    char *msg = rq->msg;
    rq->msg = NULL;
    req->bpriv = NULL;
    rreq_free(rq);
    if (err != KV_OK)
        kv__req_done(req, err, msg ? "%s" : NULL, msg);
    else
        kv__req_done(req, KV_OK, NULL);
    kv__free(msg);
    redis__maybe_closed(st);
}

static int submit_writes(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    bool atomic =
        req->op == KV__OP_PUT_ATOMIC || req->op == KV__OP_DELETE_ATOMIC;
    kv_buf *encs = kv__calloc(req->n, sizeof *encs);
    if (encs == NULL)
        return KV_ENOMEM;
    int rc = KV_OK;
    unsigned slot0 = 0;
    for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
        rc = kv__key_encode(req->items[i].key, &encs[i]);
        if (rc != KV_OK)
            break;
        unsigned slot = redis__key_slot(st, req->items[i].key, &encs[i]);
        if (!atomic) {
            rc = send_write(st, rq, i, 1, slot, &encs[i]);
        } else if (i == 0) {
            slot0 = slot;
        } else if (slot != slot0) {
            char *m = kv__asprintf(
                "redis: an atomic batch must keep every key in one hash "
                "slot, but %s is in slot %u and %s in slot %u (give the "
                "keys a common {tag})",
                kv_key_id(req->items[0].key), slot0,
                kv_key_id(req->items[i].key), slot);
            redis__rreq_fail(rq, KV_ENOTSUP, m);
            kv__free(m);
            rc = KV_ENOTSUP;
        }
    }
    if (rc == KV_OK && atomic)
        rc = send_write(st, rq, 0, req->n, slot0, encs);
    for (size_t i = 0; i < req->n; i++)
        kv__free(encs[i].data);
    kv__free(encs);
    return rc;
}

static int submit_prefix(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    bool move = req->op == KV__OP_MOVE;
    if (move && st->keymode) {
        redis__rreq_fail(
            rq, KV_ENOTSUP,
            "redis: kv_move_prefix_atomic needs every record in one "
            "hash slot: open the store with ?shard=store");
        return KV_ENOTSUP;
    }
    size_t nencs = move ? req->n * 2 : req->n;
    kv_buf *encs = kv__calloc(nencs, sizeof *encs);
    if (encs == NULL)
        return KV_ENOMEM;
    int rc = KV_OK;
    for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
        if (move) {
            rc = kv__key_encode(req->items[i].key, &encs[2 * i]);
            if (rc == KV_OK)
                rc = kv__key_encode(req->items[i].key2, &encs[2 * i + 1]);
        } else {
            rc = kv__key_encode(req->items[i].key, &encs[i]);
        }
    }
    if (rc == KV_OK && st->keymode) {
        rq->encs = encs; /* for the fan-out once the directory is read */
        rq->nencs = nencs;
        return redis__dir_read(st, rq);
    }
    if (rc == KV_OK)
        rc = send_prefix_script(st, rq, st->store_slot,
                                move ? SC_MOVE : SC_DROP, encs, nencs);
    for (size_t i = 0; i < nencs; i++)
        kv__free(encs[i].data);
    kv__free(encs);
    return rc;
}

void redis__submit(kv_store *s, kv__req *req)
{
    rstore *st = s->backend;
    rreq *rq = kv__calloc(1, sizeof *rq);
    if (rq == NULL) {
        /* Out of memory: park req (chained through bpriv) and fail it
         * from the deferred NOP, never inside submit. */
        req->bpriv = st->oom;
        st->oom = req;
        defer_kick(st);
        return;
    }
    rq->req = req;
    rq->pending = 1;
    req->bpriv = rq;
    int rc = KV_OK;
    kv_buf enc = {NULL, 0, 0};
    switch (req->op) {
    case KV__OP_HAS:
    case KV__OP_GET:
        for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
            req->items[i].status = KV_ENOTFOUND;
            rc = redis__send_read(st, rq, i, req->items[i].key,
                                  req->op == KV__OP_GET && req->want_value,
                                  &enc);
        }
        break;
    case KV__OP_PUT:
    case KV__OP_DELETE:
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
        rc = submit_writes(st, rq);
        break;
    case KV__OP_MOVE:
    case KV__OP_DROP:
        rc = submit_prefix(st, rq);
        break;
    case KV__OP_QUERY_OPEN:
        rc = redis__submit_query(st, rq);
        break;
    case KV__OP_ITER_FETCH:
        if (req->iter->bpriv == NULL) {
            req->eof = true;
            req->n = 0;
        } else {
            redis__fetch_start(st, rq);
        }
        break;
    case KV__OP_ITER_DISPOSE:
        redis__cursor_free(req->iter->bpriv);
        req->iter->bpriv = NULL;
        break;
    default:
        rc = KV_EINVAL;
        break;
    }
    kv__free(enc.data);
    if (rc != KV_OK)
        redis__rreq_fail(rq, rc, NULL);
    redis__rreq_put(st, rq, true);
}
