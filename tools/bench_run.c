/*
 * bench_run.c - kvbench's run engine: the workload generator, the kvstore
 * async driver (one kv_loop per job thread, --iodepth futures in flight
 * through kv_fut_then callbacks), and the peer driver (blocking calls on
 * --iodepth threads per job).  See kvbench.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "kvbench.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "peer.h"

const char *const op_names[OP__N] = {"read", "write", "insert", "cas", "scan"};
atomic_int kvb_stop;

/* ------------------------------------------------------------------------ */
/* Random numbers: xoshiro256** seeded by splitmix64                        */
/* ------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

static double rng_double(rng *r) /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static uint64_t rng_below(rng *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0;
}

/* ------------------------------------------------------------------------ */
/* Zipfian (Gray et al., as YCSB's ZipfianGenerator), theta in (0, 1)       */
/* ------------------------------------------------------------------------ */

typedef struct zipf {
    uint64_t n;
    double theta, alpha, zetan, eta, half_pow;
} zipf;

static void zipf_init(zipf *z, uint64_t n, double theta)
{
    z->n = n;
    z->theta = theta;
    double zetan = 0;
    for (uint64_t i = 1; i <= n; i++)
        zetan += 1.0 / pow((double)i, theta);
    double zeta2 = 1.0 + 1.0 / pow(2.0, theta);
    z->zetan = zetan;
    z->alpha = 1.0 / (1.0 - theta);
    z->eta = (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / zetan);
    z->half_pow = 1.0 + pow(0.5, theta);
}

/* Rank in [0, n): 0 is the most popular. */
static uint64_t zipf_next(const zipf *z, rng *r)
{
    double u = rng_double(r);
    double uz = u * z->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < z->half_pow)
        return 1;
    uint64_t v = (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
    return v >= z->n ? z->n - 1 : v;
}

static uint64_t fnv1a64(uint64_t v)
{
    uint64_t h = 0xCBF29CE484222325u;
    for (int i = 0; i < 8; i++) {
        h ^= v & 0xFF;
        h *= 0x100000001B3u;
        v >>= 8;
    }
    return h;
}

/* ------------------------------------------------------------------------ */
/* Keys: "/dNN/kNNNNNNNN" (or "/kNNNNNNNN" with --key_dirs=0)                */
/* ------------------------------------------------------------------------ */

typedef struct keyfmt {
    unsigned dirs, dw, nw;
} keyfmt;

static unsigned digits(uint64_t v)
{
    unsigned d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

static int keyfmt_init(keyfmt *kf, const jobopts *o, char *err, size_t errlen)
{
    kf->dirs = o->key_dirs;
    kf->dw = kf->dirs ? digits(kf->dirs - 1) : 0;
    unsigned overhead = kf->dirs ? 4 + kf->dw : 2;
    unsigned need = digits(o->keys ? o->keys - 1 : 0);
    if (o->key_size_set && o->key_size < overhead + need) {
        snprintf(err, errlen,
                 "--key_size=%u is too small for %" PRIu64 " keys in %u "
                 "directories: at least %u",
                 o->key_size, o->keys, kf->dirs, overhead + need);
        return -1;
    }
    unsigned ks = o->key_size;
    kf->nw = ks > overhead + need ? ks - overhead : need;
    if (kf->nw > 200) {
        snprintf(err, errlen, "--key_size=%u is too large (at most %u)", ks,
                 overhead + 200);
        return -1;
    }
    return 0;
}

static size_t key_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap)
{
    int n;
    if (kf->dirs)
        n = snprintf(buf, cap, "/d%0*u/k%0*" PRIu64, (int)kf->dw,
                     (unsigned)(idx % kf->dirs), (int)kf->nw, idx);
    else
        n = snprintf(buf, cap, "/k%0*" PRIu64, (int)kf->nw, idx);
    return (size_t)n;
}

/* The directory ("/dNN") of idx: the prefix a scan queries ("" if flat). */
static size_t prefix_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap)
{
    if (!kf->dirs) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)snprintf(buf, cap, "/d%0*u", (int)kf->dw,
                            (unsigned)(idx % kf->dirs));
}

/* The index of a key made by key_id, or UINT64_MAX. */
static uint64_t key_index(const char *id)
{
    const char *k = strrchr(id, '/');
    if (!k || k[1] != 'k')
        return UINT64_MAX;
    uint64_t v;
    return tu_parse_u64(k + 2, &v) ? UINT64_MAX : v;
}

/* ------------------------------------------------------------------------ */
/* Token table: the last token known for each key                          */
/* ------------------------------------------------------------------------ */

#define TOK_CHUNK_BITS 16
#define TOK_CHUNK (1u << TOK_CHUNK_BITS)
#define TOK_NCHUNKS (1u << 16) /* 2^32 keys */
#define TOK_UNKNOWN UINT64_MAX /* must read the key first */
#define TOK_ABSENT (UINT64_MAX - 1)

typedef struct toktab {
    _Atomic(_Atomic uint64_t *) *chunks; /* [TOK_NCHUNKS] */
    bool fresh; /* an unset entry means absent (else unknown) */
} toktab;

static int tok_init(toktab *t, bool fresh)
{
    t->fresh = fresh;
    t->chunks = calloc(TOK_NCHUNKS, sizeof *t->chunks);
    return t->chunks ? 0 : -1;
}

static void tok_free(toktab *t)
{
    if (!t->chunks)
        return;
    for (size_t i = 0; i < TOK_NCHUNKS; i++)
        free((void *)atomic_load_explicit(&t->chunks[i], memory_order_relaxed));
    free((void *)t->chunks);
    t->chunks = NULL;
}

static _Atomic uint64_t *tok_slot(toktab *t, uint64_t idx, bool create)
{
    uint64_t ci = idx >> TOK_CHUNK_BITS;
    if (ci >= TOK_NCHUNKS)
        return NULL;
    _Atomic uint64_t *c =
        atomic_load_explicit(&t->chunks[ci], memory_order_acquire);
    if (!c && create) {
        _Atomic uint64_t *n = calloc(TOK_CHUNK, sizeof *n);
        if (!n)
            return NULL;
        _Atomic uint64_t *expect = NULL;
        if (atomic_compare_exchange_strong(&t->chunks[ci], &expect, n)) {
            c = n;
        } else {
            free((void *)n);
            c = expect;
        }
    }
    return c ? &c[idx & (TOK_CHUNK - 1)] : NULL;
}

/* TOK_ABSENT, TOK_UNKNOWN or a token. */
static uint64_t tok_get(toktab *t, uint64_t idx)
{
    _Atomic uint64_t *e = tok_slot(t, idx, false);
    uint64_t v = e ? atomic_load_explicit(e, memory_order_relaxed) : 0;
    if (v == 0)
        return t->fresh ? TOK_ABSENT : TOK_UNKNOWN;
    return v;
}

static void tok_set(toktab *t, uint64_t idx, uint64_t v)
{
    _Atomic uint64_t *e = tok_slot(t, idx, true);
    if (e)
        atomic_store_explicit(e, v, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Section, datasets, workers                                               */
/* ------------------------------------------------------------------------ */

/* One store instance and what kvbench knows about its contents. */
typedef struct dataset {
    tu_uri uri; /* kind + the instance's path */
    toktab tt;
    _Atomic uint64_t next_insert;
    peer *peer;
} dataset;

typedef struct section section;

/* One thread issuing operations (a kvstore job, or one peer thread). */
typedef struct worker {
    section *sec;
    dataset *ds;
    rng r;
    uint64_t seq;
    opstats st[OP__N];
    uint64_t t_go, t_measure, t_end;
    uint64_t last_done;
    int err;
    char errmsg[512];
} worker;

struct section {
    const jobopts *o;
    const runenv *env;
    progress pg;
    tu_uri uri;
    bool is_kv;
    char tmpdir[64];
    keyfmt kf;
    zipf z;
    bool have_zipf;
    int pct_a;
    unsigned char *vbuf;
    size_t vbuflen;
    dataset *ds;
    unsigned nds;
    kv_pool *pool;
    unsigned pool_size;
    bool atomic_ok; /* --atomic honoured (else put_many) */
    /* start gate: jobs report ready, then wait for go */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned nready;
    bool go;
};

static void worker_init(worker *w, section *sec, dataset *ds, uint64_t seed)
{
    memset(w, 0, sizeof *w);
    w->sec = sec;
    w->ds = ds;
    rng_seed(&w->r, seed);
    for (int i = 0; i < OP__N; i++)
        hist_init(&w->st[i].h);
}

static void worker_fail(worker *w, int code, const char *fmt, const char *a,
                        const char *b)
{
    if (w->err)
        return;
    w->err = code ? code : KV_ERROR;
    snprintf(w->errmsg, sizeof w->errmsg, fmt, a, b);
}

static int gen_op(worker *w)
{
    const jobopts *o = w->sec->o;
    if (o->op_b_none)
        return o->op_a;
    return (int)rng_below(&w->r, 100) < w->sec->pct_a ? o->op_a : o->op_b;
}

static uint64_t gen_key(worker *w)
{
    section *sec = w->sec;
    const jobopts *o = sec->o;
    uint64_t n = o->keys;
    if (o->seq)
        return w->seq++ % n;
    switch (o->dist) {
    case DIST_ZIPF: return fnv1a64(zipf_next(&sec->z, &w->r)) % n;
    case DIST_LATEST: {
        uint64_t top = atomic_load_explicit(&w->ds->next_insert,
                                            memory_order_relaxed);
        uint64_t back = zipf_next(&sec->z, &w->r);
        return top == 0 ? 0 : back >= top ? 0 : top - 1 - back;
    }
    default: return rng_below(&w->r, n);
    }
}

static const unsigned char *gen_val(worker *w)
{
    size_t span = w->sec->vbuflen - w->sec->o->value_size;
    return w->sec->vbuf + rng_below(&w->r, span + 1);
}

static bool stopping(const worker *w, uint64_t now)
{
    return atomic_load_explicit(&kvb_stop, memory_order_relaxed) ||
           now >= w->t_end || w->err;
}

/* Counters gathered while an op runs, added when it completes. */
typedef struct opctr {
    uint64_t nf, conf, retries, refreshes, failed;
} opctr;

static void record(worker *w, int op, uint64_t t0, uint64_t now, uint64_t nrec,
                   uint64_t bytes, const opctr *c)
{
    atomic_fetch_add_explicit(&w->sec->pg.ops[op], nrec, memory_order_relaxed);
    if (now < w->t_measure)
        return;
    opstats *s = &w->st[op];
    hist_record(&s->h, now - t0);
    s->ops += nrec;
    s->calls++;
    s->bytes += bytes;
    s->notfound += c->nf;
    s->conflicts += c->conf;
    s->retries += c->retries;
    s->refreshes += c->refreshes;
    s->failed += c->failed;
    w->last_done = now;
}

static void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* Start gate. */
static void gate_ready_and_wait(section *sec)
{
    pthread_mutex_lock(&sec->mu);
    sec->nready++;
    pthread_cond_broadcast(&sec->cv);
    while (!sec->go)
        pthread_cond_wait(&sec->cv, &sec->mu);
    pthread_mutex_unlock(&sec->mu);
}

static void worker_window(worker *w)
{
    const jobopts *o = w->sec->o;
    w->t_go = tu_now_ns();
    w->t_measure = w->t_go + o->ramp_ns;
    w->t_end = o->runtime_ns ? w->t_measure + o->runtime_ns : UINT64_MAX;
}

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
    int op, stage;
    uint64_t t0;
    unsigned tries;
    uint64_t idx, token;
    const unsigned char *val;
    opctr c;
    kv_iter *it;
    /* batches */
    size_t bn;
    uint64_t *bidx, *btok;
    kv_key **bkeys;
    const kv_key **bscratch;
    kv_record *brecs;
} slot;

struct kjob {
    worker w;
    kv_loop *loop;
    kv_store *store;
    slot *slots;
    slot **freel;
    unsigned nslots, nfree, inflight;
    uint64_t issued, limit;
    bool stopped;
    uint64_t interval, next_intended;
    uint64_t completions;
    kv_fut *timer;
    /* load phase */
    uint64_t load_next, load_hi;
};

static void kj_pump(kjob *j);
static void on_fut(kv_fut *f, void *arg);

static void kj_fail(kjob *j, int code, const char *what, const char *msg)
{
    worker_fail(&j->w, code, "%s: %s", what, msg);
    j->stopped = true;
}

static void slot_release(slot *s)
{
    kjob *j = s->j;
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
    if (rc != KV_OK) {
        /* Cannot happen short of OOM; give up on the job. */
        kj_fail(s->j, rc, "kv_fut_then", kv_strerror(rc));
        kv_fut_free(f);
        slot_release(s);
    }
}

static kv_key *make_key(kjob *j, uint64_t idx)
{
    char buf[256];
    key_id(&j->w.sec->kf, idx, buf, sizeof buf);
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

static void submit_scan(slot *s)
{
    kjob *j = s->j;
    char buf[256];
    prefix_id(&j->w.sec->kf, gen_key(&j->w), buf, sizeof buf);
    kv_key *k = NULL;
    int rc = kv_key_parse(&k, buf);
    if (rc != KV_OK) {
        kj_fail(j, rc, "kv_key_parse", kv_last_errmsg());
        slot_release(s);
        return;
    }
    kv_query q = kv_query_init(k);
    q.limit = 1 + (int64_t)rng_below(&j->w.r, j->w.sec->o->scan_length);
    kv_fut *f = kv_query_open(j->store, &q, NULL);
    kv_key_free(k);
    slot_wait(s, ST_QOPEN, f);
}

static int cmp_u64(const void *a, const void *b)
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
        s->brecs[i].val = (void *)gen_val(&j->w);
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
        for (size_t i = 0; i < n; i++) {
            s->bidx[i] = base + i;
            s->btok[i] = 0;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            s->bidx[i] = gen_key(&j->w);
        qsort(s->bidx, n, sizeof s->bidx[0], cmp_u64);
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
            uint64_t t = tok_get(tt, s->bidx[i]);
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
    s->op = gen_op(&j->w);
    s->val = gen_val(&j->w);
    bool batched = o->batch > 1 && (s->op == OP_WRITE || s->op == OP_INSERT);
    j->issued += batched ? o->batch : 1;
    if (batched) {
        start_batch(s, s->op == OP_INSERT);
        return;
    }
    switch (s->op) {
    case OP_READ:
        s->idx = gen_key(&j->w);
        submit_get(s, ST_READ);
        break;
    case OP_WRITE: {
        s->idx = gen_key(&j->w);
        uint64_t t = tok_get(&j->w.ds->tt, s->idx);
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
        s->token = 0;
        submit_put(s);
        break;
    case OP_CAS:
        s->idx = gen_key(&j->w);
        submit_get(s, ST_PREGET);
        break;
    case OP_SCAN: submit_scan(s); break;
    }
}

static void kj_pump(kjob *j)
{
    while (!j->stopped && j->nfree > 0) {
        uint64_t now = tu_now_ns();
        if (stopping(&j->w, now) || (j->limit && j->issued >= j->limit)) {
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
    record(&j->w, s->op, s->t0, tu_now_ns(), nrec, bytes, &s->c);
    slot_release(s);
    kj_pump(j);
}

/* A put conflicted: refresh the token and retry, or give up. */
static void put_conflict(slot *s)
{
    kjob *j = s->j;
    s->c.conf++;
    if (s->op == OP_INSERT) {
        tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
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
    tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
    finish(s, 1, 0);
}

static void on_fut(kv_fut *f, void *arg)
{
    slot *s = arg;
    kjob *j = s->j;
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
        if (!(st == KV_ECANCELED && j->stopped))
            kj_fail(j, st, what, kv_fut_errmsg(f));
        kv_fut_free(f);
        if (s->it) {
            kv_iter_free(s->it);
            s->it = NULL;
        }
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
        s->val = gen_val(&j->w);
        submit_put(s);
        return;
    }
    case ST_PUT:
        if (st == KV_ECONFLICT) {
            kv_fut_free(f);
            put_conflict(s);
            return;
        }
        tok_set(tt, s->idx, kv_fut_token(f));
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
        record(&j->w, s->op, s->t0, tu_now_ns(), n, bytes, &s->c);
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
            uint64_t idx = key_index(kv_key_id(r[i].key));
            uint64_t *p = bsearch(&idx, s->bidx, s->bn, sizeof idx, cmp_u64);
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
            tok_set(tt, s->bidx[i], TOK_UNKNOWN);
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

/* The measured run of one kvstore job. */
static void kj_run(kjob *j)
{
    const jobopts *o = j->w.sec->o;
    worker_window(&j->w);
    j->interval = o->rate_iops > 0 ? (uint64_t)(1e9 / o->rate_iops) : 0;
    if (j->interval == 0 && o->rate_iops > 0)
        j->interval = 1;
    j->next_intended = j->w.t_go;
    j->limit = o->number_ios;
    kj_pump(j);
    while (j->inflight > 0 || !j->stopped) {
        uint64_t now = tu_now_ns();
        if (j->inflight == 0) {
            /* Rate-limited and idle: sleep until the next op is due. */
            uint64_t until = j->next_intended;
            if (until > now + 100000000u)
                until = now + 100000000u;
            if (until > now)
                sleep_until(until);
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
                    sleep_until(now + (wait < 50000 ? wait : 50000));
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
        kv_record rec = {k, (void *)gen_val(&j->w), j->w.sec->o->value_size, 0};
        kv_fut *f = kv_put(j->store, &rec, NULL);
        kv_key_free(k);
        s->stage = ST_LOAD;
        if (kv_fut_then(f, on_load, s) != KV_OK) {
            kv_fut_free(f);
            kj_fail(j, KV_ENOMEM, "kv_fut_then", "out of memory");
            slot_release(s);
            return;
        }
    }
}

static void on_load(kv_fut *f, void *arg)
{
    slot *s = arg;
    kjob *j = s->j;
    int st = kv_fut_status(f);
    if (st == KV_OK)
        tok_set(&j->w.ds->tt, s->idx, kv_fut_token(f));
    else if (st == KV_ECONFLICT) /* already there from an earlier run */
        tok_set(&j->w.ds->tt, s->idx, TOK_UNKNOWN);
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
        int rc = kv_loop_run(j->loop, KV_RUN_ONCE);
        if (rc < 0) {
            kj_fail(j, rc, "kv_loop_run", kv_strerror(rc));
            break;
        }
    }
}

static int kj_close_store(kjob *j)
{
    if (!j->store)
        return KV_OK;
    kv_fut *f = kv_close(j->store);
    int rc = kv_wait(f);
    if (rc != KV_OK)
        worker_fail(&j->w, rc, "kv_close: %s%s", kv_fut_errmsg(f), "");
    kv_fut_free(f);
    kv_store_free(j->store);
    j->store = NULL;
    return rc;
}

/* Flush everything written so far to disk (after --load) so that the
   writeback does not spill into the measured phase. */
static void sync_path(const char *path)
{
    if (!path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    syncfs(fd);
    close(fd);
}

static unsigned kv_flags(const tu_uri *u, int sync)
{
    if (u->kind == TU_FS)
        return sync == SYNC_NONE ? KV_NO_FSYNC : 0;
    return sync == SYNC_FULL ? KV_SYNC_FULL : 0;
}

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
    worker_fail(&p->w, rc, "%s: %s", what, peer_errmsg(p->conn));
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

/* One batched write/insert through peer_put_batch. */
static int p_batch(pworker *p, bool insert, opctr *c, uint64_t *nrec)
{
    worker *w = &p->w;
    section *sec = w->sec;
    const jobopts *o = sec->o;
    toktab *tt = &w->ds->tt;
    size_t n = o->batch;
    if (insert) {
        uint64_t base = atomic_fetch_add(&w->ds->next_insert, n);
        for (size_t i = 0; i < n; i++)
            p->bidx[i] = base + i;
    } else {
        for (size_t i = 0; i < n; i++)
            p->bidx[i] = gen_key(w);
        qsort(p->bidx, n, sizeof p->bidx[0], cmp_u64);
        size_t u = 0;
        for (size_t i = 0; i < n; i++)
            if (u == 0 || p->bidx[i] != p->bidx[u - 1])
                p->bidx[u++] = p->bidx[i];
        n = u;
    }
    for (size_t i = 0; i < n; i++) {
        char *kb = p->bkeybuf + i * PKEY_MAX;
        p->bklen[i] = key_id(&sec->kf, p->bidx[i], kb, PKEY_MAX);
        p->bkeys[i] = kb;
        uint64_t t = insert ? 0 : tok_get(tt, p->bidx[i]);
        if (t == TOK_UNKNOWN) {
            c->refreshes++;
            int rc = p_refresh(p, kb, p->bklen[i], &t);
            if (p_err(p, rc, "get"))
                return rc;
        }
        p->bexp[i] = t == TOK_ABSENT ? 0 : t;
    }
    int rc = peer_put_batch(p->conn, n, p->bkeys, p->bklen, gen_val(w),
                            o->value_size, p->bexp, p->bnew, p->bconf,
                            sec->atomic_ok);
    if (p_err(p, rc, "batch put"))
        return rc;
    size_t nconf = 0;
    for (size_t i = 0; i < n; i++)
        nconf += p->bconf[i];
    bool none = sec->atomic_ok && nconf;
    for (size_t i = 0; i < n; i++)
        tok_set(tt, p->bidx[i],
                p->bconf[i] || none ? TOK_UNKNOWN : p->bnew[i]);
    c->conf += nconf;
    if (none)
        c->failed++;
    *nrec = none ? 0 : n - nconf;
    return KV_OK;
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
        klen = key_id(&sec->kf, gen_key(w), key, sizeof key);
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
        size_t pl = prefix_id(&sec->kf, gen_key(w), pre, sizeof pre);
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
        klen = key_id(&sec->kf, idx, key, sizeof key);
        rc = peer_put(p->conn, key, klen, gen_val(w), o->value_size, 0, &nt);
        if (p_err(p, rc, "put"))
            return rc;
        if (rc == KV_ECONFLICT) {
            c->conf++;
            tok_set(tt, idx, TOK_UNKNOWN);
        } else {
            tok_set(tt, idx, nt);
            *bytes = o->value_size;
        }
        return KV_OK;
    default: break;
    }
    /* write (known token, else read first) and cas (always read first) */
    idx = gen_key(w);
    klen = key_id(&sec->kf, idx, key, sizeof key);
    bool need_get = op == OP_CAS;
    if (op == OP_WRITE) {
        tok = tok_get(tt, idx);
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
        rc = peer_put(p->conn, key, klen, gen_val(w), o->value_size, tok, &nt);
        if (p_err(p, rc, "put"))
            return rc;
        if (rc == KV_OK) {
            tok_set(tt, idx, nt);
            *bytes = o->value_size;
            return KV_OK;
        }
        c->conf++;
        if (tries + 1 >= o->max_retries) {
            c->failed++;
            tok_set(tt, idx, TOK_UNKNOWN);
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
        if (stopping(w, now))
            break;
        if (o->number_ios && atomic_fetch_add(&pj->issued, 1) >= o->number_ios)
            break;
        uint64_t t0 = now;
        if (pj->interval) {
            t0 = pj->t_go + atomic_fetch_add(&pj->sched, 1) * pj->interval;
            if (t0 > now) {
                sleep_until(t0);
                if (stopping(w, tu_now_ns()))
                    break;
            }
        }
        int op = gen_op(w);
        opctr c = {0};
        uint64_t nrec, bytes;
        if (p_op(p, op, &c, &nrec, &bytes) != KV_OK) {
            w->st[op].errors++;
            break;
        }
        record(w, op, t0, tu_now_ns(), nrec, bytes, &c);
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
        worker_fail(w, KV_ENOMEM, "%s%s", "out of memory", "");
        rc = KV_ENOMEM;
    }
    for (uint64_t i = lo; rc == KV_OK && i < hi; i += B) {
        if (atomic_load(&kvb_stop))
            break;
        size_t n = hi - i < B ? (size_t)(hi - i) : B;
        for (size_t k = 0; k < n; k++) {
            keys[k] = kb + k * PKEY_MAX;
            kl[k] = key_id(&sec->kf, i + k, kb + k * PKEY_MAX, PKEY_MAX);
        }
        rc = peer_put_batch(p->conn, n, keys, kl, gen_val(w),
                            sec->o->value_size, exp, nt, conf, false);
        if (p_err(p, rc, "--load"))
            break;
        for (size_t k = 0; k < n; k++)
            tok_set(&w->ds->tt, i + k, conf[k] ? TOK_UNKNOWN : nt[k]);
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

/* ------------------------------------------------------------------------ */
/* Job threads                                                              */
/* ------------------------------------------------------------------------ */

typedef struct jobthr {
    section *sec;
    unsigned idx;
    dataset *ds;
    pthread_t th;
    kjob kj;  /* kvstore jobs */
    pjob pj;  /* peer jobs */
    uint64_t load_ns;
    char setup_err[512];
    int setup_rc;
} jobthr;

/* This job's share of the keys to load. */
static void load_range(const jobthr *jt, uint64_t *lo, uint64_t *hi)
{
    const jobopts *o = jt->sec->o;
    if (jt->sec->nds > 1) { /* a store of its own */
        *lo = 0;
        *hi = o->keys;
        return;
    }
    *lo = o->keys * jt->idx / o->numjobs;
    *hi = o->keys * (jt->idx + 1) / o->numjobs;
}

static void *kv_job_main(void *arg)
{
    jobthr *jt = arg;
    section *sec = jt->sec;
    const jobopts *o = sec->o;
    kjob *j = &jt->kj;
    const tu_uri *u = &jt->ds->uri;
    unsigned run_flags = kv_flags(u, o->sync);
    int rc = kv_loop_new(&j->loop, NULL);
    if (rc != KV_OK) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "kv_loop_new: %s: %s",
                 kv_strerror(rc), kv_last_errmsg());
        jt->setup_rc = rc;
        goto ready;
    }
    if (kj_alloc(j, o->iodepth < 64 && o->load ? 64 : o->iodepth, o->batch)) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        goto ready;
    }
    if (o->load) {
        /* Load in the fastest mode the backend has (sqlite: NORMAL; fs: no
           fsync), then sync the file system and reopen as asked. */
        unsigned lflags = u->kind == TU_FS ? KV_NO_FSYNC : 0;
        if (u->kind == TU_SQLITE_MEM)
            lflags = run_flags;
        rc = tu_open_store(&j->store, j->loop, sec->pool, u, lflags,
                           jt->setup_err, sizeof jt->setup_err);
        if (rc != KV_OK) {
            jt->setup_rc = rc;
            goto ready;
        }
        uint64_t lo, hi, t = tu_now_ns();
        load_range(jt, &lo, &hi);
        kj_load(j, lo, hi);
        if (j->w.err) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "%s", j->w.errmsg);
            jt->setup_rc = j->w.err;
            goto ready;
        }
        if (lflags != run_flags) {
            kj_close_store(j);
            sync_path(u->path);
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
ready:
    gate_ready_and_wait(sec);
    if (!jt->setup_rc && !atomic_load(&kvb_stop))
        kj_run(j);
    atomic_fetch_sub(&sec->pg.running, 1);
    kj_close_store(j);
    kj_free_slots(j);
    if (j->loop) {
        kv_loop_run(j->loop, KV_RUN_DEFAULT);
        rc = kv_loop_free(j->loop);
        if (rc != KV_OK)
            worker_fail(&j->w, rc, "kv_loop_free: %s%s", kv_strerror(rc),
                        " (operations still pending)");
        j->loop = NULL;
    }
    return NULL;
}

static void *peer_job_main(void *arg)
{
    jobthr *jt = arg;
    section *sec = jt->sec;
    const jobopts *o = sec->o;
    pjob *pj = &jt->pj;
    pj->sec = sec;
    pj->ds = jt->ds;
    pj->nw = o->iodepth;
    pj->pw = calloc(pj->nw, sizeof *pj->pw);
    if (!pj->pw) {
        snprintf(jt->setup_err, sizeof jt->setup_err, "out of memory");
        jt->setup_rc = KV_ENOMEM;
        pj->nw = 0;
        goto ready;
    }
    for (unsigned i = 0; i < pj->nw; i++) {
        pworker *p = &pj->pw[i];
        worker_init(&p->w, sec, jt->ds,
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
        load_range(jt, &lo, &hi);
        if (p_load(&pj->pw[0], lo, hi) != KV_OK) {
            snprintf(jt->setup_err, sizeof jt->setup_err, "%s",
                     pj->pw[0].w.errmsg);
            jt->setup_rc = pj->pw[0].w.err;
            goto ready;
        }
        if (o->sync != SYNC_FULL)
            sync_path(jt->ds->uri.path);
        jt->load_ns = tu_now_ns() - t;
    }
ready:
    gate_ready_and_wait(sec);
    if (!jt->setup_rc && !atomic_load(&kvb_stop)) {
        pj->t_go = tu_now_ns();
        pj->interval = o->rate_iops > 0 ? (uint64_t)(1e9 / o->rate_iops) : 0;
        for (unsigned i = 1; i < pj->nw; i++) {
            if (pthread_create(&pj->pw[i].th, NULL, pw_main, &pj->pw[i]) == 0)
                pj->pw[i].started = true;
            else
                worker_fail(&pj->pw[i].w, KV_ERROR, "%s%s",
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

/* ------------------------------------------------------------------------ */
/* Sections                                                                 */
/* ------------------------------------------------------------------------ */

void jobopts_defaults(jobopts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "kvbench");
    snprintf(o->rw, sizeof o->rw, "randread");
    o->op_a = OP_READ;
    o->op_b = OP_WRITE;
    o->op_b_none = 1;
    o->mix_default = 100;
    o->rwmixread = -1;
    o->iodepth = 1;
    o->numjobs = 1;
    o->dist = DIST_UNIFORM;
    o->theta = 0.99;
    static const double p[] = {50, 90, 99, 99.9, 99.99};
    memcpy(o->pcts, p, sizeof p);
    o->npcts = 5;
    o->keys = 100000;
    o->key_size = 16;
    o->value_size = 100;
    o->batch = 1;
    o->sync = SYNC_NORMAL;
    o->key_dirs = 64;
    o->scan_length = 100;
    o->max_retries = 16;
    o->seed = 0x6b76626e6368u; /* "kvbnch" */
}

static bool path_exists(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0;
}

static void rm_tmpdir(const char *dir)
{
    static const char *const files[] = {"bench.db", "bench.db-wal",
                                        "bench.db-shm", "bench.db-journal"};
    char buf[128];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(buf, sizeof buf, "%s/%s", dir, files[i]);
        unlink(buf);
    }
    rmdir(dir);
}

static void merge_stats(opstats *dst, const opstats *src)
{
    hist_merge(&dst->h, &src->h);
    dst->ops += src->ops;
    dst->calls += src->calls;
    dst->bytes += src->bytes;
    dst->notfound += src->notfound;
    dst->conflicts += src->conflicts;
    dst->retries += src->retries;
    dst->failed += src->failed;
    dst->refreshes += src->refreshes;
    dst->errors += src->errors;
}

static void merge_worker(jobresult *r, const worker *w)
{
    for (int i = 0; i < OP__N; i++)
        merge_stats(&r->st[i], &w->st[i]);
    if (w->last_done > w->t_measure && w->last_done - w->t_measure > r->elapsed_ns)
        r->elapsed_ns = w->last_done - w->t_measure;
    if (w->err && !r->err) {
        r->err = w->err;
        snprintf(r->errmsg, sizeof r->errmsg, "%s", w->errmsg);
    }
}

static void fmt_hms(char *buf, size_t n, uint64_t ns)
{
    uint64_t s = ns / 1000000000u;
    snprintf(buf, n, "%02um:%02us", (unsigned)(s / 60), (unsigned)(s % 60));
}

static void human(char *buf, size_t n, double v)
{
    if (v >= 1e6)
        snprintf(buf, n, "%.1fM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%.1fk", v / 1e3);
    else
        snprintf(buf, n, "%.0f", v);
}

/* The one-line status on stderr, and --status-interval lines. */
static void show_progress(section *sec, uint64_t t_start, uint64_t now,
                          uint64_t *last_ops, uint64_t last_t, bool line,
                          bool interim)
{
    const jobopts *o = sec->o;
    const runenv *env = sec->env;
    char rates[256] = "";
    size_t rl = 0;
    double dt = (double)(now - last_t) / 1e9;
    for (int i = 0; i < OP__N; i++) {
        uint64_t v = atomic_load_explicit(&sec->pg.ops[i], memory_order_relaxed);
        uint64_t d = v - last_ops[i];
        last_ops[i] = v;
        bool used = (o->op_a == i) || (!o->op_b_none && o->op_b == i);
        if (!used)
            continue;
        char h[32];
        human(h, sizeof h, dt > 0 ? (double)d / dt : 0);
        rl += (size_t)snprintf(rates + rl, sizeof rates - rl, "%s%c=%s",
                               rl ? "," : "", op_names[i][0], h);
    }
    if (line && env->tty) {
        int phase = atomic_load(&sec->pg.phase);
        char eta[32] = "--m:--s";
        double pctdone = 0;
        uint64_t el = now - t_start;
        if (phase == 0) {
            uint64_t l = atomic_load(&sec->pg.loaded);
            pctdone = sec->pg.load_total ? 100.0 * (double)l / (double)sec->pg.load_total : 0;
            fprintf(stderr, "\r\033[KJobs: %u: [load %" PRIu64 "/%" PRIu64 "][%.1f%%]",
                    o->numjobs, l, sec->pg.load_total, pctdone);
        } else {
            uint64_t total = o->ramp_ns + o->runtime_ns;
            if (o->runtime_ns) {
                pctdone = 100.0 * (double)el / (double)total;
                if (pctdone > 100)
                    pctdone = 100;
                fmt_hms(eta, sizeof eta, el < total ? total - el : 0);
            }
            fprintf(stderr, "\r\033[KJobs: %d (%s): [%s][%.1f%%][%s IOPS][eta %s]",
                    atomic_load(&sec->pg.running), o->name,
                    phase == 1 ? "ramp" : "run", pctdone, rates, eta);
        }
        fflush(stderr);
    }
    if (interim && env->out && !env->json) {
        fprintf(env->out, "%s: status at %.1fs: [%s IOPS] (interval %.1fs)\n",
                o->name, (double)(now - t_start) / 1e9, rates, dt);
        fflush(env->out);
    }
}

static int setup_datasets(section *sec, char *err, size_t errlen)
{
    const jobopts *o = sec->o;
    bool per_job = sec->uri.kind == TU_SQLITE_MEM ||
                   (sec->uri.kind == TU_FS && o->numjobs > 1);
    sec->nds = per_job ? o->numjobs : 1;
    sec->ds = calloc(sec->nds, sizeof *sec->ds);
    if (!sec->ds) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < sec->nds; i++) {
        dataset *d = &sec->ds[i];
        d->uri.kind = sec->uri.kind;
        if (sec->uri.path) {
            char buf[1100];
            if (per_job)
                snprintf(buf, sizeof buf, "%s/job%u", sec->uri.path, i);
            else
                snprintf(buf, sizeof buf, "%s", sec->uri.path);
            d->uri.path = strdup(buf);
            if (!d->uri.path) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            if (per_job && i == 0 && mkdir(sec->uri.path, 0755) != 0 &&
                errno != EEXIST) {
                snprintf(err, errlen, "mkdir %s: %s", sec->uri.path,
                         strerror(errno));
                return -1;
            }
        }
        bool fresh = !d->uri.path || !path_exists(d->uri.path);
        if (tok_init(&d->tt, fresh)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        atomic_init(&d->next_insert, o->keys);
        if (!sec->is_kv) {
            peer_sync ps = o->sync == SYNC_FULL     ? PEER_SYNC_FULL
                           : o->sync == SYNC_NONE   ? PEER_SYNC_NONE
                                                    : PEER_SYNC_NORMAL;
            if (peer_open(&d->peer, d->uri.kind, d->uri.path, ps,
                          o->numjobs * o->iodepth + 1, err, errlen) != KV_OK)
                return -1;
        }
    }
    return 0;
}

static void describe(section *sec, jobresult *r)
{
    const jobopts *o = sec->o;
    if (sec->uri.kind == TU_SQLITE_MEM)
        snprintf(r->store, sizeof r->store, "sqlite:memory%s",
                 o->numjobs > 1 ? " (one database per job)" : "");
    else if (sec->nds > 1)
        snprintf(r->store, sizeof r->store, "%s:%s/job0..job%u (one store per job)",
                 tu_backend_name(sec->uri.kind), sec->uri.path, sec->nds - 1);
    else
        snprintf(r->store, sizeof r->store, "%s:%s%s",
                 sec->uri.kind == TU_SQLITE_RAW ? "sqlite-raw" : tu_backend_name(sec->uri.kind),
                 sec->uri.path, sec->tmpdir[0] ? " (temporary)" : "");
    if (sec->is_kv) {
        const char *mode;
        if (sec->uri.kind == TU_FS)
            mode = o->sync == SYNC_NONE ? "KV_NO_FSYNC" : "fsync per put (file + directory)";
        else
            mode = o->sync == SYNC_FULL ? "KV_SYNC_FULL (synchronous=FULL)"
                   : o->sync == SYNC_NONE ? "synchronous=NORMAL (the API has no sync=none for sqlite)"
                                          : "synchronous=NORMAL";
        snprintf(r->driver, sizeof r->driver,
                 "kvstore %s async API: one kv_loop per job on its own thread, "
                 "%u futures in flight per job (kv_fut_then + kv_loop_run), "
                 "kv_pool of %u threads shared by %u job(s); %s%s",
                 kv_version_string(), o->iodepth, sec->pool_size, o->numjobs,
                 mode,
                 o->batch > 1 ? (sec->atomic_ok ? "; batches: kv_put_atomic"
                                                : o->atomic ? "; batches: kv_put_many (no atomic batches on this backend)"
                                                            : "; batches: kv_put_many")
                              : "");
    } else {
        snprintf(r->driver, sizeof r->driver,
                 "%s; --iodepth=%u means %u thread(s) per job, each one "
                 "blocking call at a time",
                 peer_describe(sec->ds[0].peer), o->iodepth, o->iodepth);
    }
}

int kvb_run(const jobopts *o, jobresult *r, const runenv *env)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < OP__N; i++)
        hist_init(&r->st[i].h);
    section *sec = calloc(1, sizeof *sec);
    jobthr *jt = NULL;
    int ret = -1;
    if (!sec) {
        snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
        r->err = KV_ENOMEM;
        return -1;
    }
    sec->o = o;
    sec->env = env;
    pthread_mutex_init(&sec->mu, NULL);
    pthread_cond_init(&sec->cv, NULL);
    char err[600] = "";

    /* The store. */
    if (o->backend[0]) {
        if (tu_uri_parse(&sec->uri, o->backend, err, sizeof err))
            goto fail;
    } else {
        snprintf(sec->tmpdir, sizeof sec->tmpdir, "/tmp/kvbench-XXXXXX");
        if (!mkdtemp(sec->tmpdir)) {
            snprintf(err, sizeof err, "mkdtemp: %s", strerror(errno));
            sec->tmpdir[0] = '\0';
            goto fail;
        }
        sec->uri.kind = TU_SQLITE;
        size_t n = strlen(sec->tmpdir) + 16;
        sec->uri.path = malloc(n);
        if (!sec->uri.path)
            goto oom;
        snprintf(sec->uri.path, n, "%s/bench.db", sec->tmpdir);
    }
    sec->is_kv = tu_uri_is_kvstore(&sec->uri);
    if (!sec->is_kv && !peer_available(sec->uri.kind)) {
        snprintf(err, sizeof err,
                 "%s: this kvbench was built without it (install %s and "
                 "reconfigure)",
                 tu_backend_name(sec->uri.kind),
                 sec->uri.kind == TU_LMDB ? "liblmdb-dev" : "librocksdb-dev");
        goto fail;
    }
    if (keyfmt_init(&sec->kf, o, err, sizeof err))
        goto fail;
    sec->pct_a = o->rwmixread >= 0 ? o->rwmixread : o->mix_default;
    if (o->dist != DIST_UNIFORM && !o->seq) {
        zipf_init(&sec->z, o->keys, o->theta);
        sec->have_zipf = true;
    }
    sec->vbuflen = o->value_size + 4096;
    sec->vbuf = malloc(sec->vbuflen);
    if (!sec->vbuf)
        goto oom;
    {
        rng vr;
        rng_seed(&vr, o->seed ^ 0x5eed);
        for (size_t i = 0; i < sec->vbuflen; i++)
            sec->vbuf[i] = (unsigned char)rng_next(&vr);
    }
    if (sec->is_kv) {
        int rc = kv_pool_new(&sec->pool, o->pool_threads);
        if (rc != KV_OK) {
            snprintf(err, sizeof err, "kv_pool_new: %s: %s", kv_strerror(rc),
                     kv_last_errmsg());
            goto fail;
        }
        sec->pool_size = kv_pool_size(sec->pool);
    }
    if (setup_datasets(sec, err, sizeof err))
        goto fail;
    sec->atomic_ok = o->atomic && (sec->is_kv ? sec->uri.kind != TU_FS : true);
    describe(sec, r);

    /* Start the jobs. */
    jt = calloc(o->numjobs, sizeof *jt);
    if (!jt)
        goto oom;
    sec->pg.load_total = o->load ? o->keys * sec->nds : 0;
    atomic_store(&sec->pg.running, (int)o->numjobs);
    unsigned started = 0;
    for (unsigned i = 0; i < o->numjobs; i++) {
        jt[i].sec = sec;
        jt[i].idx = i;
        jt[i].ds = &sec->ds[sec->nds > 1 ? i : 0];
        if (sec->is_kv)
            worker_init(&jt[i].kj.w, sec, jt[i].ds, o->seed + 1000003u * i);
        if (pthread_create(&jt[i].th, NULL,
                           sec->is_kv ? kv_job_main : peer_job_main,
                           &jt[i]) != 0) {
            snprintf(err, sizeof err, "pthread_create: %s", strerror(errno));
            break;
        }
        started++;
    }
    if (started < o->numjobs)
        atomic_fetch_sub(&sec->pg.running, (int)(o->numjobs - started));

    /* Wait for every job to be ready (stores open, --load done). */
    uint64_t t_start = tu_now_ns(), last_ops[OP__N] = {0};
    uint64_t last_t = t_start;
    pthread_mutex_lock(&sec->mu);
    while (sec->nready < started) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 500000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&sec->cv, &sec->mu, &ts);
        pthread_mutex_unlock(&sec->mu);
        show_progress(sec, t_start, tu_now_ns(), last_ops, last_t, true, false);
        pthread_mutex_lock(&sec->mu);
    }
    uint64_t loaded_at = tu_now_ns();
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    atomic_store(&sec->pg.phase, o->ramp_ns ? 1 : 2);
    sec->go = true;
    pthread_cond_broadcast(&sec->cv);
    pthread_mutex_unlock(&sec->mu);

    /* Progress while the jobs run. */
    t_start = last_t = tu_now_ns();
    for (int i = 0; i < OP__N; i++)
        last_ops[i] = atomic_load(&sec->pg.ops[i]);
    uint64_t next_status = env->status_interval_ns ? t_start + env->status_interval_ns : UINT64_MAX;
    uint64_t next_line = t_start + 1000000000u;
    while (atomic_load(&sec->pg.running) > 0) {
        uint64_t now = tu_now_ns();
        uint64_t wake = next_line < next_status ? next_line : next_status;
        if (wake > now + 100000000u)
            wake = now + 100000000u;
        sleep_until(wake);
        now = tu_now_ns();
        if (o->ramp_ns && now >= t_start + o->ramp_ns)
            atomic_store(&sec->pg.phase, 2);
        bool line = now >= next_line, interim = now >= next_status;
        if (line || interim) {
            show_progress(sec, t_start, now, last_ops, last_t, env->tty, interim);
            last_t = now;
        }
        if (line)
            next_line = now + 1000000000u;
        if (interim)
            next_status += env->status_interval_ns;
    }
    getrusage(RUSAGE_SELF, &ru1);
    if (env->tty) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(jt[i].th, NULL);
    atomic_store(&sec->pg.phase, 3);

    /* Results. */
    for (unsigned i = 0; i < started; i++) {
        if (jt[i].setup_rc && !r->err) {
            r->err = jt[i].setup_rc;
            snprintf(r->errmsg, sizeof r->errmsg, "job %u: %s", i, jt[i].setup_err);
        }
        if (jt[i].load_ns > r->load_ns)
            r->load_ns = jt[i].load_ns;
        if (sec->is_kv) {
            merge_worker(r, &jt[i].kj.w);
        } else {
            for (unsigned k = 0; k < jt[i].pj.nw; k++)
                merge_worker(r, &jt[i].pj.pw[k].w);
        }
    }
    if (!r->err && err[0]) {
        r->err = KV_ERROR;
        snprintf(r->errmsg, sizeof r->errmsg, "%s", err);
    }
    r->loaded = atomic_load(&sec->pg.loaded);
    (void)loaded_at;
    r->usr_s = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
               (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
    r->sys_s = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
               (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    r->ctx = (ru1.ru_nvcsw - ru0.ru_nvcsw) + (ru1.ru_nivcsw - ru0.ru_nivcsw);
    r->majf = ru1.ru_majflt - ru0.ru_majflt;
    r->minf = ru1.ru_minflt - ru0.ru_minflt;
    r->peak_rss_kib = ru1.ru_maxrss;
    ret = r->err && started == 0 ? -1 : 0;
    goto out;

oom:
    snprintf(err, sizeof err, "out of memory");
fail:
    r->err = KV_ERROR;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", err);
    ret = -1;
out:
    if (jt) {
        for (unsigned i = 0; i < o->numjobs; i++)
            if (!sec->is_kv && jt[i].pj.pw) {
                for (unsigned k = 0; k < jt[i].pj.nw; k++)
                    pw_free(&jt[i].pj.pw[k]);
                free(jt[i].pj.pw);
            }
        free(jt);
    }
    if (sec->ds) {
        for (unsigned i = 0; i < sec->nds; i++) {
            peer_close(sec->ds[i].peer);
            tok_free(&sec->ds[i].tt);
            tu_uri_free(&sec->ds[i].uri);
        }
        free(sec->ds);
    }
    if (sec->pool)
        kv_pool_free(sec->pool);
    if (sec->tmpdir[0] && !o->keep)
        rm_tmpdir(sec->tmpdir);
    else if (sec->tmpdir[0])
        fprintf(stderr, "kvbench: kept the temporary store %s\n", sec->uri.path);
    tu_uri_free(&sec->uri);
    free(sec->vbuf);
    pthread_mutex_destroy(&sec->mu);
    pthread_cond_destroy(&sec->cv);
    free(sec);
    return ret;
}
