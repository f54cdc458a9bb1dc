/*
 * bench_peers.c - kvbench's peer driver: the same workload through blocking
 * calls (peer.h) on --iodepth threads per job, each one call at a time.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "bench_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Peer driver                                                              */
/* ------------------------------------------------------------------------ */

typedef struct pjob pjob;

typedef struct pworker {
    worker w;
    pjob *pj;
    peer_conn *conn;
    pthread_t th;
    bool started;
    /* batch scratch */
    const char **bkeys;
    char *bkeybuf;
    size_t *bklen;
    uint64_t *bidx, *bexp, *bnew;
    unsigned char *bconf;
} pworker;

struct pjob {
    section *sec;
    dataset *ds;
    unsigned nw;
    pworker *pw;
    worker **wv;
    _Atomic uint64_t issued, sched;
    uint64_t t_go, interval;
};

#define PKEY_MAX 256

static int pw_alloc(pworker *p, unsigned batch)
{
    if (batch < 1)
        batch = 1;
    p->bkeys = calloc(batch, sizeof *p->bkeys);
    p->bkeybuf = calloc(batch, PKEY_MAX);
    p->bklen = calloc(batch, sizeof *p->bklen);
    p->bidx = calloc(batch, sizeof *p->bidx);
    p->bexp = calloc(batch, sizeof *p->bexp);
    p->bnew = calloc(batch, sizeof *p->bnew);
    p->bconf = calloc(batch, 1);
    return p->bkeys && p->bkeybuf && p->bklen && p->bidx && p->bexp &&
                   p->bnew && p->bconf
               ? 0
               : -1;
}

static void pw_free(pworker *p)
{
    peer_conn_close(p->conn);
    free(p->bkeys);
    free(p->bkeybuf);
    free(p->bklen);
    free(p->bidx);
    free(p->bexp);
    free(p->bnew);
    free(p->bconf);
}

static bool p_err(pworker *p, int rc, const char *what)
{
    if (rc == KV_OK || rc == KV_ENOTFOUND || rc == KV_ECONFLICT)
        return false;
    kb_worker_fail(&p->w, rc, "%s: %s", what, peer_errmsg(p->conn));
    return true;
}

/* Learn idx's current token: 0 if absent. */
static int p_refresh(pworker *p, const char *key, size_t klen, uint64_t *tok)
{
    size_t vl;
    int rc = peer_get(p->conn, key, klen, tok, &vl);
    if (rc == KV_ENOTFOUND) {
        *tok = 0;
        return KV_OK;
    }
    return rc;
}

/* Put the n records of p->bidx in one peer_put_batch call. */
static int p_batch_put(pworker *p, size_t n, bool insert, opctr *c,
                       uint64_t *nrec)
{
    worker *w = &p->w;
    section *sec = w->sec;
    const jobopts *o = sec->o;
    toktab *tt = &w->ds->tt;
    for (size_t i = 0; i < n; i++) {
        char *kb = p->bkeybuf + i * PKEY_MAX;
        p->bklen[i] = kb_key_id(&sec->kf, p->bidx[i], kb, PKEY_MAX);
        p->bkeys[i] = kb;
        uint64_t t = insert ? 0 : kb_tok_get(tt, p->bidx[i]);
        if (t == TOK_UNKNOWN) {
            c->refreshes++;
            int rc = p_refresh(p, kb, p->bklen[i], &t);
            if (p_err(p, rc, "get"))
                return rc;
        }
        p->bexp[i] = t == TOK_ABSENT ? 0 : t;
    }
    int rc = peer_put_batch(p->conn, n, p->bkeys, p->bklen, kb_gen_val(w),
                            o->value_size, p->bexp, p->bnew, p->bconf,
                            sec->atomic_ok);
    if (p_err(p, rc, "batch put"))
        return rc;
    size_t nconf = 0;
    for (size_t i = 0; i < n; i++)
        nconf += p->bconf[i];
    bool none = sec->atomic_ok && nconf;
    for (size_t i = 0; i < n; i++)
        kb_tok_set(tt, p->bidx[i],
                   p->bconf[i] || none ? TOK_UNKNOWN : p->bnew[i]);
    c->conf += nconf;
    if (none)
        c->failed++;
    *nrec = none ? 0 : n - nconf;
    return KV_OK;
}

/* One batched write (updates of drawn keys) or insert (new keys). */
static int p_batch(pworker *p, bool insert, opctr *c, uint64_t *nrec)
{
    worker *w = &p->w;
    size_t n = w->sec->o->batch;
    if (insert) {
        uint64_t base = atomic_fetch_add(&w->ds->next_insert, n);
        for (size_t i = 0; i < n; i++)
            p->bidx[i] = base + i;
        int rc = p_batch_put(p, n, true, c, nrec);
        kb_inserted(w->ds, base, n);
        return rc;
    }
    for (size_t i = 0; i < n; i++)
        p->bidx[i] = kb_gen_key(w);
    qsort(p->bidx, n, sizeof p->bidx[0], kb_cmp_u64);
    size_t u = 0; /* a write batch must not name a key twice */
    for (size_t i = 0; i < n; i++)
        if (u == 0 || p->bidx[i] != p->bidx[u - 1])
            p->bidx[u++] = p->bidx[i];
    return p_batch_put(p, u, false, c, nrec);
}

/* One operation, synchronously.  Returns KV_OK or a hard error. */
static int p_op(pworker *p, int op, opctr *c, uint64_t *nrec, uint64_t *bytes)
{
    worker *w = &p->w;
    section *sec = w->sec;
    const jobopts *o = sec->o;
    toktab *tt = &w->ds->tt;
    char key[PKEY_MAX];
    size_t klen, vl = 0;
    uint64_t tok = 0, idx, nt = 0;
    int rc;
    *nrec = 1;
    *bytes = 0;
    if (o->batch > 1 && (op == OP_WRITE || op == OP_INSERT)) {
        rc = p_batch(p, op == OP_INSERT, c, nrec);
        *bytes = *nrec * o->value_size;
        return rc;
    }
    switch (op) {
    case OP_READ:
        klen = kb_key_id(&sec->kf, kb_gen_key(w), key, sizeof key);
        rc = peer_get(p->conn, key, klen, &tok, &vl);
        if (p_err(p, rc, "get"))
            return rc;
        if (rc == KV_ENOTFOUND)
            c->nf++;
        else
            *bytes = vl;
        return KV_OK;
    case OP_SCAN: {
        char pre[PKEY_MAX];
        size_t pl = kb_prefix_id(&sec->kf, kb_gen_key(w), pre, sizeof pre);
        size_t cnt = 0;
        rc = peer_scan(p->conn, pre, pl,
                       1 + (unsigned)rng_below(&w->r, o->scan_length), &cnt,
                       bytes);
        if (p_err(p, rc, "scan"))
            return rc;
        *nrec = cnt;
        return KV_OK;
    }
    case OP_INSERT:
        idx = atomic_fetch_add(&w->ds->next_insert, 1);
        klen = kb_key_id(&sec->kf, idx, key, sizeof key);
        rc = peer_put(p->conn, key, klen, kb_gen_val(w), o->value_size, 0, &nt);
        kb_inserted(w->ds, idx, 1);
        if (p_err(p, rc, "put"))
            return rc;
        if (rc == KV_ECONFLICT) {
            c->conf++;
            kb_tok_set(tt, idx, TOK_UNKNOWN);
        } else {
            kb_tok_set(tt, idx, nt);
            *bytes = o->value_size;
        }
        return KV_OK;
    default: break;
    }
    /* write (known token, else read first) and cas (always read first) */
    idx = kb_gen_key(w);
    klen = kb_key_id(&sec->kf, idx, key, sizeof key);
    bool need_get = op == OP_CAS;
    if (op == OP_WRITE) {
        tok = kb_tok_get(tt, idx);
        if (tok == TOK_UNKNOWN) {
            need_get = true;
            c->refreshes++;
        } else if (tok == TOK_ABSENT) {
            tok = 0;
        }
    }
    for (unsigned tries = 0;; tries++) {
        if (need_get) {
            rc = peer_get(p->conn, key, klen, &tok, &vl);
            if (p_err(p, rc, "get"))
                return rc;
            if (rc == KV_ENOTFOUND) {
                tok = 0;
                if (op == OP_CAS)
                    c->nf++;
            }
        }
        rc = peer_put(p->conn, key, klen, kb_gen_val(w), o->value_size, tok, &nt);
        if (p_err(p, rc, "put"))
            return rc;
        if (rc == KV_OK) {
            kb_tok_set(tt, idx, nt);
            *bytes = o->value_size;
            return KV_OK;
        }
        c->conf++;
        if (tries + 1 >= o->max_retries) {
            c->failed++;
            kb_tok_set(tt, idx, TOK_UNKNOWN);
            return KV_OK;
        }
        c->retries++;
        if (op == OP_WRITE)
            c->refreshes++;
        need_get = true;
    }
}

static void *pw_main(void *arg)
{
    pworker *p = arg;
    pjob *pj = p->pj;
    worker *w = &p->w;
    const jobopts *o = pj->sec->o;
    w->t_go = pj->t_go;
    w->t_measure = w->t_go + o->ramp_ns;
    w->t_end = o->runtime_ns ? w->t_measure + o->runtime_ns : UINT64_MAX;
    for (;;) {
        uint64_t now = tu_now_ns();
        if (kb_stopping(w, now))
            break;
        if (o->number_ios && atomic_fetch_add(&pj->issued, 1) >= o->number_ios)
            break;
        uint64_t t0 = now;
        if (pj->interval) {
            t0 = pj->t_go + atomic_fetch_add(&pj->sched, 1) * pj->interval;
            if (t0 > now) {
                kb_sleep_until(t0);
                if (kb_stopping(w, tu_now_ns()))
                    break;
            }
        }
        int op = kb_gen_op(w);
        opctr c = {0};
        uint64_t nrec, bytes;
        if (p_op(p, op, &c, &nrec, &bytes) != KV_OK) {
            w->st[op].errors++;
            break;
        }
        kb_record(w, op, t0, tu_now_ns(), nrec, bytes, &c);
    }
    return NULL;
}

/* --load for a peer job: keys [lo, hi) in transactions of 1000. */
static int p_load(pworker *p, uint64_t lo, uint64_t hi)
{
    const size_t B = 1000;
    worker *w = &p->w;
    section *sec = w->sec;
    const char **keys = calloc(B, sizeof *keys);
    char *kb = calloc(B, PKEY_MAX);
    size_t *kl = calloc(B, sizeof *kl);
    uint64_t *exp = calloc(B, sizeof *exp), *nt = calloc(B, sizeof *nt);
    unsigned char *conf = calloc(B, 1);
    int rc = KV_OK;
    if (!keys || !kb || !kl || !exp || !nt || !conf) {
        kb_worker_fail(w, KV_ENOMEM, "%s%s", "out of memory", "");
        rc = KV_ENOMEM;
    }
    for (uint64_t i = lo; rc == KV_OK && i < hi; i += B) {
        if (atomic_load(&kvb_stop))
            break;
        size_t n = hi - i < B ? (size_t)(hi - i) : B;
        for (size_t k = 0; k < n; k++) {
            keys[k] = kb + k * PKEY_MAX;
            kl[k] = kb_key_id(&sec->kf, i + k, kb + k * PKEY_MAX, PKEY_MAX);
        }
        rc = peer_put_batch(p->conn, n, keys, kl, kb_gen_val(w),
                            sec->o->value_size, exp, nt, conf, false);
        if (p_err(p, rc, "--load"))
            break;
        for (size_t k = 0; k < n; k++)
            kb_tok_set(&w->ds->tt, i + k, conf[k] ? TOK_UNKNOWN : nt[k]);
        atomic_fetch_add(&sec->pg.loaded, n);
    }
    free(keys);
    free(kb);
    free(kl);
    free(exp);
    free(nt);
    free(conf);
    return rc;
}

static void pj_priv_free(jobthr *jt)
{
    pjob *pj = jt->priv;
    if (!pj)
        return;
    for (unsigned k = 0; k < pj->nw; k++)
        pw_free(&pj->pw[k]);
    free(pj->pw);
    free(pj->wv);
    free(pj);
    jt->priv = NULL;
    jt->w = NULL;
    jt->nw = 0;
}

void *kb_peer_job_main(void *arg)
{
    jobthr *jt = arg;
    section *sec = jt->sec;
    const jobopts *o = sec->o;
    pjob *pj = calloc(1, sizeof *pj);
    if (pj) {
        pj->pw = calloc(o->iodepth, sizeof *pj->pw);
        pj->wv = calloc(o->iodepth, sizeof *pj->wv);
    }
    if (!pj || !pj->pw || !pj->wv) {
        if (pj) {
            free(pj->pw);
            free(pj->wv);
            free(pj);
        }
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        kb_gate_ready_and_wait(sec);
        atomic_fetch_sub(&sec->pg.running, 1);
        return NULL;
    }
    pj->sec = sec;
    pj->ds = jt->ds;
    pj->nw = o->iodepth;
    for (unsigned i = 0; i < pj->nw; i++)
        pj->wv[i] = &pj->pw[i].w;
    jt->priv = pj;
    jt->priv_free = pj_priv_free;
    jt->w = pj->wv;
    jt->nw = pj->nw;
    for (unsigned i = 0; i < pj->nw; i++) {
        pworker *p = &pj->pw[i];
        kb_worker_init(&p->w, sec, jt->ds,
                    o->seed + 1000003u * jt->idx + 7919u * i);
        p->pj = pj;
        if (pw_alloc(p, o->batch)) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
            jt->setup_rc = KV_ENOMEM;
            goto ready;
        }
        int rc = peer_conn_open(jt->ds->peer, &p->conn, jt->setup_err,
                                sizeof jt->setup_err);
        if (rc != KV_OK) {
            jt->setup_rc = rc;
            goto ready;
        }
    }
    if (o->load) {
        uint64_t lo, hi, t = tu_now_ns();
        kb_load_range(jt, &lo, &hi);
        if (p_load(&pj->pw[0], lo, hi) != KV_OK) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "%s",
                     pj->pw[0].w.errmsg);
            jt->setup_rc = pj->pw[0].w.err;
            goto ready;
        }
        if (o->sync != SYNC_FULL)
            kb_sync_path(jt->ds->uri.path);
        jt->load_ns = tu_now_ns() - t;
    }
ready:
    kb_gate_ready_and_wait(sec);
    if (!jt->setup_rc && !atomic_load(&kvb_stop)) {
        pj->t_go = tu_now_ns();
        pj->interval = o->rate_iops > 0 ? (uint64_t)(1e9 / o->rate_iops) : 0;
        for (unsigned i = 1; i < pj->nw; i++) {
            if (pthread_create(&pj->pw[i].th, NULL, pw_main, &pj->pw[i]) == 0)
                pj->pw[i].started = true;
            else
                kb_worker_fail(&pj->pw[i].w, KV_ERROR, "%s%s",
                            "pthread_create failed", "");
        }
        pw_main(&pj->pw[0]);
        for (unsigned i = 1; i < pj->nw; i++)
            if (pj->pw[i].started)
                pthread_join(pj->pw[i].th, NULL);
    }
    atomic_fetch_sub(&sec->pg.running, 1);
    return NULL;
}

