/*
 * bench_kv.c - kvbench's kvstore driver: one kv_loop per job thread, created
 * on that thread; --iodepth operations in flight, each a small state machine
 * advanced by kv_fut_then callbacks; kv_loop_run drives it (never one
 * blocking wait per operation).  Open loop (--rate_iops) starts operations
 * at their intended times and measures latency from those.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "bench_int.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* kvstore driver                                                           */
/* ------------------------------------------------------------------------ */

enum {
    ST_IDLE,
    ST_READ,     /* kv_get for a read op */
    ST_PREGET,   /* kv_get to learn the token (write refresh, cas) */
    ST_PUT,      /* kv_put */
    ST_QOPEN,    /* kv_query_open */
    ST_QFETCH,   /* kv_iter_fetch_all */
    ST_QDISPOSE, /* kv_iter_dispose */
    ST_BGET,     /* kv_get_many for a batch's unknown tokens */
    ST_BPUT,     /* kv_put_many / kv_put_atomic */
    ST_LOAD      /* load phase put */
};

typedef struct kjob kjob;

typedef struct slot {
    kjob *j;
    kv_fut *f; /* the future its callback waits for (NULL: none) */
    int op, stage;
    uint64_t t0;
    unsigned tries;
    uint64_t idx, token;
    const unsigned char *val;
    opctr c;
    kv_iter *it;
    uint64_t ins_first, ins_n; /* keys taken by an insert, acked at the end */
    /* batches */
    size_t bn;
    uint64_t *bidx, *btok;
    kv_key **bkeys;
    const kv_key **bscratch;
    kv_record *brecs;
} slot;

struct kjob {
    worker w;
    worker *wv[1];
    kv_loop *loop;
    kv_store *store;
    slot *slots;
    slot **freel;
    unsigned nslots, nfree, inflight;
    uint64_t issued, limit;
    bool stopped;
    bool cancelled; /* after a signal: the futures in flight cancelled */
    uint64_t interval, next_intended;
    uint64_t completions;
    kv_fut *timer;
    bool host; /* the store thread of a shared store: serves, runs no op */
    /* load phase */
    uint64_t load_next, load_hi;
};

static void kj_pump(kjob *j);
static void on_fut(kv_fut *f, void *arg);

static void kj_fail(kjob *j, int code, const char *what, const char *msg)
{
    kb_worker_fail(&j->w, code, "%s: %s", what, msg);
    j->stopped = true;
}

static void slot_release(slot *s)
{
    kjob *j = s->j;
    if (s->ins_n) {
        kb_inserted(j->w.ds, s->ins_first, s->ins_n);
        s->ins_n = 0;
    }
    for (size_t i = 0; i < s->bn; i++)
        kv_key_free(s->bkeys[i]);
    s->bn = 0;
    s->stage = ST_IDLE;
    j->inflight--;
    j->completions++;
    j->freel[j->nfree++] = s;
}

/* Submit f for slot s in stage st. */
static void slot_wait(slot *s, int st, kv_fut *f)
{
    s->stage = st;
    int rc = kv_fut_then(f, on_fut, s);
    if (rc == KV_OK) {
        s->f = f;
    } else {
        /* Cannot happen short of OOM; give up on the job. */
        kj_fail(s->j, rc, "kv_fut_then", kv_strerror(rc));
        kv_fut_free(f);
        slot_release(s);
    }
}

static kv_key *make_key(kjob *j, uint64_t idx)
{
    char buf[256];
    kb_key_id(&j->w.sec->kf, idx, buf, sizeof buf);
    kv_key *k = NULL;
    int rc = kv_key_parse(&k, buf);
    if (rc != KV_OK) {
        kj_fail(j, rc, "kv_key_parse", kv_last_errmsg());
        return NULL;
    }
    return k;
}

static void submit_get(slot *s, int st)
{
    kv_key *k = make_key(s->j, s->idx);
    if (!k) {
        slot_release(s);
        return;
    }
    kv_fut *f = kv_get(s->j->store, k, NULL);
    kv_key_free(k);
    slot_wait(s, st, f);
}

static void submit_put(slot *s)
{
    kv_key *k = make_key(s->j, s->idx);
    if (!k) {
        slot_release(s);
        return;
    }
    kv_record rec = {k, (void *)s->val, s->j->w.sec->o->value_size, s->token};
    kv_fut *f = kv_put(s->j->store, &rec, NULL);
    kv_key_free(k);
    slot_wait(s, ST_PUT, f);
}

/* The key at position x of the whole listing (kv_key_cmp order) of keys
 * 0..nkeys-1: "/dNN/kNNNN" sorts by directory (idx % dirs), then idx. */
static uint64_t scan_key_at(const keyfmt *kf, uint64_t nkeys, uint64_t x)
{
    uint64_t nd = kf->dirs ? kf->dirs : 1;
    uint64_t q = nkeys / nd, rem = nkeys % nd; /* the first rem hold q + 1 */
    uint64_t d, r;
    if (x < rem * (q + 1)) {
        d = x / (q + 1);
        r = x % (q + 1);
    } else {
        d = rem + (x - rem * (q + 1)) / q;
        r = (x - rem * (q + 1)) % q;
    }
    return r * nd + d;
}

/*
 * A scan: the first 1..scan_length records of the drawn key's directory
 * (--scan_mode=first), or a page of scan_length records of the whole
 * store's listing from position idx (the drawn key's number), moved back so
 * that the page is full (so --random_distribution=latest reads the last
 * page), reached by query offset or by kv_query.after, the key before the
 * page (keyset).
 */
static void submit_scan(slot *s)
{
    kjob *j = s->j;
    const jobopts *o = j->w.sec->o;
    const keyfmt *kf = &j->w.sec->kf;
    uint64_t idx = kb_gen_key(&j->w);
    char buf[256] = "/";
    if (o->scan_mode == SCAN_FIRST)
        kb_prefix_id(kf, idx, buf, sizeof buf);
    kv_key *k = NULL, *after = NULL;
    int rc = kv_key_parse(&k, buf);
    kv_query q = kv_query_init(k);
    if (o->scan_mode == SCAN_FIRST) {
        q.limit = 1 + (int64_t)rng_below(&j->w.r, o->scan_length);
    } else {
        uint64_t len = o->scan_length;
        uint64_t start = idx + len > o->keys
                             ? (o->keys > len ? o->keys - len : 0)
                             : idx;
        q.limit = (int64_t)len;
        if (o->scan_mode == SCAN_OFFSET) {
            q.offset = (int64_t)start;
        } else if (start > 0 && rc == KV_OK) {
            kb_key_id(kf, scan_key_at(kf, o->keys, start - 1), buf,
                      sizeof buf);
            rc = kv_key_parse(&after, buf);
            q.after = after;
        }
    }
    if (rc != KV_OK) {
        kj_fail(j, rc, "kv_key_parse", kv_last_errmsg());
        kv_key_free(k);
        slot_release(s);
        return;
    }
    kv_fut *f = kv_query_open(j->store, &q, NULL);
    kv_key_free(k);
    kv_key_free(after);
    slot_wait(s, ST_QOPEN, f);
}

int kb_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void submit_batch_put(slot *s)
{
    kjob *j = s->j;
    const jobopts *o = j->w.sec->o;
    for (size_t i = 0; i < s->bn; i++) {
        s->brecs[i].key = s->bkeys[i];
        s->brecs[i].val = (void *)kb_gen_val(&j->w);
        s->brecs[i].len = o->value_size;
        s->brecs[i].token = s->btok[i];
    }
    kv_fut *f = j->w.sec->atomic_ok
                    ? kv_put_atomic(j->store, s->brecs, s->bn, NULL)
                    : kv_put_many(j->store, s->brecs, s->bn, NULL);
    slot_wait(s, ST_BPUT, f);
}

/* A batch of writes (updates of drawn keys) or inserts (new keys). */
static void start_batch(slot *s, bool insert)
{
    kjob *j = s->j;
    const jobopts *o = j->w.sec->o;
    toktab *tt = &j->w.ds->tt;
    size_t n = o->batch;
    if (insert) {
        uint64_t base = atomic_fetch_add(&j->w.ds->next_insert, n);
        s->ins_first = base;
        s->ins_n = n;
        for (size_t i = 0; i < n; i++) {
            s->bidx[i] = base + i;
            s->btok[i] = 0;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            s->bidx[i] = kb_gen_key(&j->w);
        qsort(s->bidx, n, sizeof s->bidx[0], kb_cmp_u64);
        size_t u = 0; /* drop duplicates: a write batch must not repeat */
        for (size_t i = 0; i < n; i++)
            if (u == 0 || s->bidx[i] != s->bidx[u - 1])
                s->bidx[u++] = s->bidx[i];
        n = u;
    }
    size_t nunk = 0;
    for (size_t i = 0; i < n; i++) {
        s->bkeys[i] = make_key(j, s->bidx[i]);
        if (!s->bkeys[i]) {
            s->bn = i;
            slot_release(s);
            return;
        }
        s->bn = i + 1;
        if (!insert) {
            uint64_t t = kb_tok_get(tt, s->bidx[i]);
            s->btok[i] = t == TOK_ABSENT ? 0 : t;
            if (t == TOK_UNKNOWN)
                nunk++;
        }
    }
    if (nunk) {
        /* Learn the tokens we do not know with one get_many. */
        const kv_key **ks = s->bscratch;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (s->btok[i] == TOK_UNKNOWN)
                ks[m++] = s->bkeys[i];
        s->c.refreshes += m;
        kv_fut *f = kv_get_many(j->store, (const kv_key *const *)ks, m, NULL);
        slot_wait(s, ST_BGET, f);
        return;
    }
    submit_batch_put(s);
}

static void start_op(kjob *j, slot *s, uint64_t t0)
{
    const jobopts *o = j->w.sec->o;
    j->inflight++;
    s->t0 = t0;
    s->tries = 0;
    memset(&s->c, 0, sizeof s->c);
    s->op = kb_gen_op(&j->w);
    s->val = kb_gen_val(&j->w);
    bool batched = o->batch > 1 && (s->op == OP_WRITE || s->op == OP_INSERT);
    j->issued += batched ? o->batch : 1;
    if (batched) {
        start_batch(s, s->op == OP_INSERT);
        return;
    }
    switch (s->op) {
    case OP_READ:
        s->idx = kb_gen_key(&j->w);
        submit_get(s, ST_READ);
        break;
    case OP_WRITE: {
        s->idx = kb_gen_key(&j->w);
        uint64_t t = kb_tok_get(&j->w.ds->tt, s->idx);
        if (t == TOK_UNKNOWN) {
            s->c.refreshes++;
            submit_get(s, ST_PREGET);
        } else {
            s->token = t == TOK_ABSENT ? 0 : t;
            submit_put(s);
        }
        break;
    }
    case OP_INSERT:
        s->idx = atomic_fetch_add(&j->w.ds->next_insert, 1);
        s->ins_first = s->idx;
        s->ins_n = 1;
        s->token = 0;
        submit_put(s);
        break;
    case OP_CAS:
        s->idx = kb_gen_key(&j->w);
        submit_get(s, ST_PREGET);
        break;
    case OP_SCAN: submit_scan(s); break;
    }
}

static void kj_pump(kjob *j)
{
    while (!j->stopped && j->nfree > 0) {
        uint64_t now = tu_now_ns();
        if (kb_stopping(&j->w, now) || (j->limit && j->issued >= j->limit)) {
            j->stopped = true;
            break;
        }
        uint64_t t0 = now;
        if (j->interval) {
            if (j->next_intended > now)
                break;
            t0 = j->next_intended;
            j->next_intended += j->interval;
        }
        start_op(j, j->freel[--j->nfree], t0);
    }
}

static void finish(slot *s, uint64_t nrec, uint64_t bytes)
{
    kjob *j = s->j;
    kb_record(&j->w, s->op, s->t0, tu_now_ns(), nrec, bytes, &s->c);
    slot_release(s);
    kj_pump(j);
}

/* A put conflicted: refresh the token and retry, or give up. */
static void put_conflict(slot *s)
{
    kjob *j = s->j;
    s->c.conf++;
    if (s->op == OP_INSERT) {
        kb_tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
        finish(s, 1, 0);
        return;
    }
    if (s->tries + 1 < j->w.sec->o->max_retries) {
        s->tries++;
        s->c.retries++;
        if (s->op == OP_WRITE)
            s->c.refreshes++;
        submit_get(s, ST_PREGET);
        return;
    }
    s->c.failed++;
    kb_tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
    finish(s, 1, 0);
}

static void on_fut(kv_fut *f, void *arg)
{
    slot *s = arg;
    kjob *j = s->j;
    s->f = NULL;
    int st = kv_fut_status(f);
    const jobopts *o = j->w.sec->o;
    toktab *tt = &j->w.ds->tt;

    if (st != KV_OK && st != KV_ENOTFOUND && st != KV_ECONFLICT) {
        const char *what = "operation";
        switch (s->stage) {
        case ST_READ:
        case ST_PREGET: what = "kv_get"; break;
        case ST_PUT: what = "kv_put"; break;
        case ST_QOPEN: what = "kv_query_open"; break;
        case ST_QFETCH: what = "kv_iter_fetch_all"; break;
        case ST_QDISPOSE: what = "kv_iter_dispose"; break;
        case ST_BGET: what = "kv_get_many"; break;
        case ST_BPUT: what = "kv_put_many/kv_put_atomic"; break;
        }
        /* an operation cancelled by the stop did not complete: neither
           done nor an error */
        bool stop = st == KV_ECANCELED && j->stopped;
        if (!stop)
            kj_fail(j, st, what, kv_fut_errmsg(f));
        kv_fut_free(f);
        if (s->it) {
            kv_iter_free(s->it);
            s->it = NULL;
        }
        if (!stop)
            j->w.st[s->op].errors++;
        slot_release(s);
        return;
    }

    switch (s->stage) {
    case ST_READ: {
        uint64_t bytes = 0;
        if (st == KV_OK) {
            const kv_record *r = kv_fut_record(f);
            bytes = r ? r->len : 0;
        } else {
            s->c.nf++;
        }
        kv_fut_free(f);
        finish(s, 1, bytes);
        return;
    }
    case ST_PREGET: {
        if (st == KV_OK) {
            const kv_record *r = kv_fut_record(f);
            s->token = r ? r->token : 0;
        } else {
            s->token = 0; /* absent: insert */
            if (s->op == OP_CAS)
                s->c.nf++;
        }
        kv_fut_free(f);
        s->val = kb_gen_val(&j->w);
        submit_put(s);
        return;
    }
    case ST_PUT:
        if (st == KV_ECONFLICT) {
            kv_fut_free(f);
            put_conflict(s);
            return;
        }
        kb_tok_set(tt, s->idx, kv_fut_token(f));
        kv_fut_free(f);
        finish(s, 1, o->value_size);
        return;
    case ST_QOPEN:
        s->it = kv_fut_take_iter(f);
        kv_fut_free(f);
        if (!s->it) {
            kj_fail(j, KV_ERROR, "kv_query_open", "no iterator in the future");
            slot_release(s);
            return;
        }
        slot_wait(s, ST_QFETCH, kv_iter_fetch_all(s->it));
        return;
    case ST_QFETCH: {
        size_t n = 0;
        const kv_record *r = kv_fut_records(f, &n);
        uint64_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            bytes += r[i].len;
        kv_fut_free(f);
        /* The records are in hand: that is the scan's latency.  Dispose
           before the slot is reused. */
        kb_record(&j->w, s->op, s->t0, tu_now_ns(), n, bytes, &s->c);
        slot_wait(s, ST_QDISPOSE, kv_iter_dispose(s->it));
        return;
    }
    case ST_QDISPOSE:
        kv_fut_free(f);
        kv_iter_free(s->it);
        s->it = NULL;
        slot_release(s);
        kj_pump(j);
        return;
    case ST_BGET: {
        size_t n = 0;
        const kv_record *r = kv_fut_records(f, &n);
        for (size_t i = 0; i < s->bn; i++)
            if (s->btok[i] == TOK_UNKNOWN)
                s->btok[i] = 0; /* absent unless returned below */
        for (size_t i = 0; i < n; i++) {
            uint64_t idx = kb_key_index(kv_key_id(r[i].key));
            uint64_t *p = bsearch(&idx, s->bidx, s->bn, sizeof idx, kb_cmp_u64);
            if (p)
                s->btok[p - s->bidx] = r[i].token;
        }
        kv_fut_free(f);
        submit_batch_put(s);
        return;
    }
    case ST_BPUT: {
        size_t nk = 0;
        const kv_key *const *ks = kv_fut_keys(f, &nk);
        (void)ks;
        s->c.conf += nk;
        /* put_many/put_atomic do not return the tokens they wrote: every
           key of the batch must be read again before its next update. */
        for (size_t i = 0; i < s->bn; i++)
            kb_tok_set(tt, s->bidx[i], TOK_UNKNOWN);
        uint64_t written = j->w.sec->atomic_ok && nk ? 0 : s->bn - nk;
        if (j->w.sec->atomic_ok && nk)
            s->c.failed++;
        kv_fut_free(f);
        finish(s, written, written * o->value_size);
        return;
    }
    default:
        kv_fut_free(f);
        kj_fail(j, KV_ERROR, "internal", "callback in a bad state");
        slot_release(s);
    }
}

static void on_timer(kv_fut *f, void *arg)
{
    kjob *j = arg;
    kv_fut_free(f);
    j->timer = NULL;
}

static int kj_alloc(kjob *j, unsigned nslots, unsigned batch)
{
    j->nslots = nslots;
    j->slots = calloc(nslots, sizeof *j->slots);
    j->freel = calloc(nslots, sizeof *j->freel);
    if (!j->slots || !j->freel)
        return -1;
    for (unsigned i = 0; i < nslots; i++) {
        slot *s = &j->slots[i];
        s->j = j;
        if (batch > 1) {
            s->bidx = calloc(batch, sizeof *s->bidx);
            s->btok = calloc(batch, sizeof *s->btok);
            s->bkeys = calloc(batch, sizeof *s->bkeys);
            s->brecs = calloc(batch, sizeof *s->brecs);
            s->bscratch = calloc(batch, sizeof *s->bscratch);
            if (!s->bidx || !s->btok || !s->bkeys || !s->brecs ||
                !s->bscratch)
                return -1;
        }
    }
    j->nfree = 0;
    for (unsigned i = nslots; i-- > 0;)
        j->freel[j->nfree++] = &j->slots[i];
    j->inflight = 0;
    return 0;
}

static void kj_free_slots(kjob *j)
{
    if (j->slots)
        for (unsigned i = 0; i < j->nslots; i++) {
            free(j->slots[i].bidx);
            free(j->slots[i].btok);
            free(j->slots[i].bkeys);
            free(j->slots[i].brecs);
            free((void *)j->slots[i].bscratch);
        }
    free(j->slots);
    free(j->freel);
    j->slots = NULL;
    j->freel = NULL;
}

/*
 * After a signal (kvb_stop; the main thread wakes the job's loop): issue
 * nothing more and cancel what is in flight, once, so that a job never
 * waits on a store that does not answer.  A cancelled future completes
 * KV_ECANCELED at the loop's next turn (a forwarded call's at once; the
 * store's own loop then discards its result): the callbacks release the
 * slots and count nothing.
 */
static void kj_check_stop(kjob *j)
{
    if (j->cancelled || !atomic_load(&kvb_stop))
        return;
    j->stopped = true;
    j->cancelled = true;
    for (unsigned i = 0; i < j->nslots; i++)
        if (j->slots[i].f)
            kv_fut_cancel(j->slots[i].f);
}

/* The measured run of one kvstore job. */
static void kj_run(kjob *j)
{
    const jobopts *o = j->w.sec->o;
    kb_worker_window(&j->w);
    j->interval = o->rate_iops > 0 ? (uint64_t)(1e9 / o->rate_iops) : 0;
    if (j->interval == 0 && o->rate_iops > 0)
        j->interval = 1;
    j->next_intended = j->w.t_go;
    j->limit = o->number_ios;
    kj_pump(j);
    while (j->inflight > 0 || !j->stopped) {
        kj_check_stop(j);
        if (j->stopped && j->inflight == 0)
            break;
        uint64_t now = tu_now_ns();
        if (j->inflight == 0) {
            /* Rate-limited and idle: sleep until the next op is due (a
               job's loop serves no other job's calls). */
            uint64_t until = j->next_intended;
            if (until > now + 100000000u)
                until = now + 100000000u;
            if (until > now)
                kb_sleep_until(until);
            kj_pump(j);
            continue;
        }
        if (j->interval && !j->stopped && j->nfree > 0 &&
            j->next_intended > now) {
            uint64_t wait = j->next_intended - now;
            if (wait >= 2000000u) {
                if (!j->timer) {
                    j->timer = kv_sleep(j->loop, wait / 1000000u - 1);
                    if (kv_fut_then(j->timer, on_timer, j) != KV_OK) {
                        kv_fut_free(j->timer);
                        j->timer = NULL;
                    }
                }
                int rc = kv_loop_run(j->loop, KV_RUN_ONCE);
                if (rc < 0) {
                    kj_fail(j, rc, "kv_loop_run", kv_strerror(rc));
                    break;
                }
            } else {
                uint64_t before = j->completions;
                int rc = kv_loop_run(j->loop, KV_RUN_NOWAIT);
                if (rc < 0) {
                    kj_fail(j, rc, "kv_loop_run", kv_strerror(rc));
                    break;
                }
                if (j->completions == before)
                    kb_sleep_until(now + (wait < 50000 ? wait : 50000));
            }
            kj_pump(j);
            continue;
        }
        int rc = kv_loop_run(j->loop, KV_RUN_ONCE);
        if (rc < 0) {
            kj_fail(j, rc, "kv_loop_run", kv_strerror(rc));
            break;
        }
        kj_pump(j);
    }
    if (j->timer) {
        kv_fut_cancel(j->timer);
        kv_loop_run(j->loop, KV_RUN_NOWAIT);
    }
}

/* --load for a kvstore job: keys [lo, hi) with token 0, many in flight. */
static void on_load(kv_fut *f, void *arg);

static void load_pump(kjob *j)
{
    while (j->nfree > 0 && j->load_next < j->load_hi && !j->w.err &&
           !atomic_load_explicit(&kvb_stop, memory_order_relaxed)) {
        slot *s = j->freel[--j->nfree];
        j->inflight++;
        s->idx = j->load_next++;
        kv_key *k = make_key(j, s->idx);
        if (!k) {
            slot_release(s);
            return;
        }
        kv_record rec = {k, (void *)kb_gen_val(&j->w), j->w.sec->o->value_size, 0};
        kv_fut *f = kv_put(j->store, &rec, NULL);
        kv_key_free(k);
        s->stage = ST_LOAD;
        if (kv_fut_then(f, on_load, s) != KV_OK) {
            kv_fut_free(f);
            kj_fail(j, KV_ENOMEM, "kv_fut_then", "out of memory");
            slot_release(s);
            return;
        }
        s->f = f;
    }
}

static void on_load(kv_fut *f, void *arg)
{
    slot *s = arg;
    kjob *j = s->j;
    s->f = NULL;
    int st = kv_fut_status(f);
    if (st == KV_OK)
        kb_tok_set(&j->w.ds->tt, s->idx, kv_fut_token(f));
    else if (st == KV_ECONFLICT) /* already there from an earlier run */
        kb_tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
    else if (st == KV_ECANCELED && j->cancelled)
        kb_tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN); /* the stop */
    else
        kj_fail(j, st, "--load: kv_put", kv_fut_errmsg(f));
    kv_fut_free(f);
    atomic_fetch_add_explicit(&j->w.sec->pg.loaded, 1, memory_order_relaxed);
    slot_release(s);
    load_pump(j);
}

static void kj_load(kjob *j, uint64_t lo, uint64_t hi)
{
    j->load_next = lo;
    j->load_hi = hi;
    load_pump(j);
    while (j->inflight > 0) {
        kj_check_stop(j);
        int rc = kv_loop_run(j->loop, KV_RUN_ONCE);
        if (rc < 0) {
            kj_fail(j, rc, "kv_loop_run", kv_strerror(rc));
            break;
        }
    }
}

/*
 * The store thread of a shared store (job 0, which runs no operation):
 * serve the jobs' forwarded calls until none of them uses the store.
 * KV_RUN_WAIT waits even when nothing is pending, until a forwarded call
 * or a kv_loop_wake arrives.  A job that is done takes sec->mu, lowers
 * shared_users and then wakes this loop (kj_release): the wake comes after
 * the count it announces, so a wait that starts after the last decrement
 * ends at once (a wake is answered by the first turn of a run after it)
 * and the loop below sees 0.  Taking mu afterwards waits for that job's
 * wake to return, so the loop is freed only when no job touches it.
 */
static void kj_serve(kjob *j)
{
    section *sec = j->w.sec;
    while (atomic_load(&sec->shared_users) > 0) {
        int rc = kv_loop_run(j->loop, KV_RUN_WAIT);
        if (rc < 0) {
            /* The other jobs' calls cannot progress without this loop:
               nothing is left but to stop them. */
            kb_worker_fail(&j->w, rc, "serving the shared store: %s%s",
                           kv_strerror(rc), "");
            atomic_store(&kvb_stop, 1);
            while (atomic_load(&sec->shared_users) > 0)
                kb_sleep_until(tu_now_ns() + 1000000u);
            break;
        }
    }
    pthread_mutex_lock(&sec->mu);
    pthread_mutex_unlock(&sec->mu);
}

/* A job of a shared store, every call of it back: release the store and
 * wake its thread (see kj_serve for the order). */
static void kj_release(kjob *j)
{
    section *sec = j->w.sec;
    j->store = NULL;
    pthread_mutex_lock(&sec->mu);
    atomic_fetch_sub(&sec->shared_users, 1);
    if (sec->shared_loop)
        kv_loop_wake(sec->shared_loop);
    pthread_mutex_unlock(&sec->mu);
}

static int kj_close_store(kjob *j)
{
    if (!j->store)
        return KV_OK;
    kv_fut *f = kv_close(j->store);
    int rc = kv_wait(f);
    if (rc != KV_OK)
        kb_worker_fail(&j->w, rc, "kv_close: %s%s", kv_fut_errmsg(f), "");
    kv_fut_free(f);
    kv_store_free(j->store);
    j->store = NULL;
    return rc;
}

static unsigned kv_flags(const tu_uri *u, int sync)
{
    if (u->kind == TU_FS)
        return sync == SYNC_NONE ? KV_FS_NO_FSYNC : 0;
    if (u->kind == TU_SQLITE || u->kind == TU_SQLITE_MEM)
        return sync == SYNC_FULL ? KV_SQLITE_SYNC_FULL : 0;
    return 0; /* redis: durability is the server's (appendfsync) */
}

/* Puts in flight while loading (--load), at least. */
#define LOAD_DEPTH 128

static void kj_priv_free(jobthr *jt)
{
    free(jt->priv);
    jt->priv = NULL;
    jt->w = NULL;
    jt->nw = 0;
}

void *kb_kv_job_main(void *arg)
{
    jobthr *jt = arg;
    section *sec = jt->sec;
    const jobopts *o = sec->o;
    const tu_uri *u = &jt->ds->uri;
    unsigned run_flags = kv_flags(u, o->sync);
    kjob *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        kb_gate_ready_and_wait(sec);
        atomic_fetch_sub(&sec->pg.running, 1);
        return NULL;
    }
    kb_worker_init(&j->w, sec, jt->ds, o->seed + 1000003u * jt->idx);
    j->wv[0] = &j->w;
    jt->w = j->wv;
    jt->nw = 1;
    jt->priv = j;
    jt->priv_free = kj_priv_free;
    int rc = kv_loop_new(&j->loop, NULL);
    if (rc != KV_OK) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "kv_loop_new: %s: %s",
                 kv_strerror(rc), kv_last_errmsg());
        jt->setup_rc = rc;
        goto ready;
    }
    pthread_mutex_lock(&sec->mu); /* for the wake after a signal */
    jt->loop = j->loop;
    pthread_mutex_unlock(&sec->mu);
    if (sec->shared && jt->idx > 0) {
        /* A job of the shared store: its own loop, where the futures of its
           forwarded calls complete; the store comes after the gate. */
        if (kj_alloc(j, o->iodepth, o->batch)) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
            jt->setup_rc = KV_ENOMEM;
        }
        goto ready;
    }
    j->host = sec->store_thread; /* thread 0: the store's own */
    if (kj_alloc(j, o->load && o->iodepth < LOAD_DEPTH ? LOAD_DEPTH : o->iodepth,
                 o->batch)) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        goto ready;
    }
    if (o->load) {
        /* Load in the fastest mode the backend has (sqlite: NORMAL; fs: no
           fsync), then sync the file system and reopen as asked. */
        unsigned lflags = u->kind == TU_FS ? KV_FS_NO_FSYNC : 0;
        if (u->kind == TU_SQLITE_MEM)
            lflags = run_flags;
        rc = tu_open_store(&j->store, j->loop, sec->pool, u, lflags,
                           jt->setup_err, sizeof jt->setup_err);
        if (rc != KV_OK) {
            jt->setup_rc = rc;
            goto ready;
        }
        uint64_t lo, hi, t = tu_now_ns();
        kb_load_range(jt, &lo, &hi);
        kj_load(j, lo, hi);
        if (j->w.err) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "%s", j->w.errmsg);
            jt->setup_rc = j->w.err;
            goto ready;
        }
        if (lflags != run_flags) {
            kj_close_store(j);
            kb_sync_path(u->path);
        }
        jt->load_ns = tu_now_ns() - t;
    }
    kj_free_slots(j);
    if (kj_alloc(j, o->iodepth, o->batch)) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        goto ready;
    }
    if (!j->store) {
        rc = tu_open_store(&j->store, j->loop, sec->pool, u, run_flags,
                           jt->setup_err, sizeof jt->setup_err);
        if (rc != KV_OK) {
            jt->setup_rc = rc;
            goto ready;
        }
    }
    if (sec->shared) { /* published to the other jobs by the gate */
        sec->shared_store = j->store;
        sec->shared_loop = j->loop;
    }
ready:
    kb_gate_ready_and_wait(sec);
    bool guest = sec->shared && jt->idx > 0;
    if (guest && !jt->setup_rc) {
        j->store = sec->shared_store;
        if (!j->store) {
            snprintf(jt->setup_err, sizeof jt->setup_err,
                     "the shared store was not opened (job 0 failed)");
            jt->setup_rc = KV_ERROR;
        }
    }
    if (!jt->setup_rc && !atomic_load(&kvb_stop) && !j->host)
        kj_run(j);
    atomic_fetch_sub(&sec->pg.running, 1);
    if (guest) {
        kj_release(j); /* every call of this job has come back */
    } else if (j->host && j->store) {
        kj_serve(j);
    }
    kj_close_store(j);
    kj_free_slots(j);
    if (j->loop) {
        kv_loop_run(j->loop, KV_RUN_DEFAULT);
        pthread_mutex_lock(&sec->mu); /* no wake from now on */
        jt->loop = NULL;
        pthread_mutex_unlock(&sec->mu);
        rc = kv_loop_free(j->loop);
        if (rc != KV_OK)
            kb_worker_fail(&j->w, rc, "kv_loop_free: %s%s", kv_strerror(rc),
                        " (operations still pending)");
        j->loop = NULL;
    }
    return NULL;
}

