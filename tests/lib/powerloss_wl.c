/*
 * powerloss_wl.c - the power-loss tests' workload (see powerloss_wl.h).
 */
#include "config.h"

#include "powerloss_wl.h"

#include "testutil.h"

void pl_wl_init(pl_wl *w, const pl_wl_cfg *cfg, kv_store *s, uint64_t seed)
{
    ck_assert_uint_le(cfg->nkeys, PL_WL_MAXKEYS);
    ck_assert_uint_le(cfg->nops, PL_WL_MAXOPS);
    ck_assert_uint_le(cfg->lanes, PL_WL_MAXLANES);
    ck_assert_uint_lt(cfg->lanes, cfg->nkeys);
    memset(w, 0, sizeof *w);
    w->cfg = cfg;
    w->s = s;
    w->rng.s = seed ? seed : 1;
}

kv_key *pl_wl_key(const pl_wl *w, int k)
{
    char p[256];
    w->cfg->key_path(k, p, sizeof p);
    kv_key *key = NULL;
    ck_assert_kv(kv_key_parse(&key, p), KV_OK);
    return key;
}

size_t pl_wl_value(const pl_wl *w, uint64_t vseed, unsigned char *buf)
{
    pl_rng r = {vseed * 0x9E3779B97F4A7C15ull + 1};
    size_t n = (size_t)pl_below(&r, w->cfg->vmax + 1);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)pl_rand(&r);
    return n;
}

static void start_next(pl_lane *l);

static void on_done(kv_fut *f, void *arg)
{
    pl_lane *l = arg;
    pl_wl *w = l->w;
    pl_op *o = &w->ops[l->i];
    o->ack = w->cfg->mark ? w->cfg->mark() : 0;
    o->status = kv_fut_status(f);
    o->done = true;
    if (o->status == KV_OK) {
        o->seq = ++w->acks;
        if (o->del) {
            w->present[o->key] = false;
        } else {
            o->token = kv_fut_token(f);
            w->present[o->key] = true;
            w->tok[o->key] = o->token;
        }
    }
    w->busy[o->key] = false;
    w->ndone++;
    w->inflight--;
    kv_fut_free(f);
    start_next(l);
}

static void start_next(pl_lane *l)
{
    pl_wl *w = l->w;
    const pl_wl_cfg *c = w->cfg;
    if (w->nops == c->nops || (c->stop && c->stop()))
        return;
    int k = (int)pl_below(&w->rng, c->nkeys);
    for (unsigned t = 0; t < c->nkeys && w->busy[k]; t++)
        k = (k + 1) % (int)c->nkeys;
    if (w->busy[k])
        return; /* cannot happen: lanes < nkeys */
    size_t i = w->nops++;
    pl_op *o = &w->ops[i];
    memset(o, 0, sizeof *o);
    o->key = k;
    o->del = w->present[k] && pl_below(&w->rng, 4) == 0;
    o->vseed = (uint64_t)i + 1;
    o->start = c->mark ? c->mark() : 0;
    w->busy[k] = true;
    w->inflight++;
    l->i = i;
    kv_key *key = pl_wl_key(w, k);
    kv_fut *f;
    if (o->del) {
        f = kv_delete(w->s, key, w->tok[k]);
    } else {
        unsigned char *val = malloc(c->vmax ? c->vmax : 1);
        ck_assert_ptr_nonnull(val);
        size_t n = pl_wl_value(w, o->vseed, val);
        kv_record r = {key, val, n, w->present[k] ? w->tok[k] : 0};
        f = kv_put(w->s, &r, NULL); /* the value is copied by the call */
        free(val);
    }
    kv_key_free(key);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_fut_then(f, on_done, l), KV_OK);
}

void pl_wl_start(pl_wl *w)
{
    for (unsigned i = 0; i < w->cfg->lanes; i++) {
        w->lanes[i] = (pl_lane){w, 0};
        start_next(&w->lanes[i]);
    }
}
