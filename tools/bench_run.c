/*
 * bench_run.c - kvbench's run engine: the workload generator (keys, values,
 * distributions, token table), job sections (stores, threads, start gate,
 * progress, results).  The drivers are bench_kv.c (kvstore) and
 * bench_peers.c (sqlite-raw, LMDB, RocksDB).  See kvbench.h, bench_int.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "bench_int.h"

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

const char *const op_names[OP__N] = {"read", "write", "insert", "cas", "scan"};
atomic_int kvb_stop;

/* ------------------------------------------------------------------------ */
/* Zipfian (Gray et al., as YCSB's ZipfianGenerator), theta in (0, 1)       */
/* ------------------------------------------------------------------------ */

static void kb_zipf_init(zipf *z, uint64_t n, double theta)
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

static unsigned digits(uint64_t v)
{
    unsigned d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

static int kb_keyfmt_init(keyfmt *kf, const jobopts *o, char *err, size_t errlen)
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

size_t kb_key_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap)
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
size_t kb_prefix_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap)
{
    if (!kf->dirs) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)snprintf(buf, cap, "/d%0*u", (int)kf->dw,
                            (unsigned)(idx % kf->dirs));
}

/* The index of a key made by kb_key_id, or UINT64_MAX. */
uint64_t kb_key_index(const char *id)
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


static int kb_tok_init(toktab *t, bool fresh)
{
    t->fresh = fresh;
    t->chunks = calloc(TOK_NCHUNKS, sizeof *t->chunks);
    return t->chunks ? 0 : -1;
}

static void kb_tok_free(toktab *t)
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
uint64_t kb_tok_get(toktab *t, uint64_t idx)
{
    _Atomic uint64_t *e = tok_slot(t, idx, false);
    uint64_t v = e ? atomic_load_explicit(e, memory_order_relaxed) : 0;
    if (v == 0)
        return t->fresh ? TOK_ABSENT : TOK_UNKNOWN;
    return v;
}

void kb_tok_set(toktab *t, uint64_t idx, uint64_t v)
{
    _Atomic uint64_t *e = tok_slot(t, idx, true);
    if (e)
        atomic_store_explicit(e, v, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Section, datasets, workers                                               */
/* ------------------------------------------------------------------------ */

/* One store instance and what kvbench knows about its contents. */

/* One thread issuing operations (a kvstore job, or one peer thread). */
void kb_worker_init(worker *w, section *sec, dataset *ds, uint64_t seed)
{
    memset(w, 0, sizeof *w);
    w->sec = sec;
    w->ds = ds;
    rng_seed(&w->r, seed);
    for (int i = 0; i < OP__N; i++)
        hist_init(&w->st[i].h);
}

void kb_worker_fail(worker *w, int code, const char *fmt, const char *a,
                        const char *b)
{
    if (w->err)
        return;
    w->err = code ? code : KV_ERROR;
    snprintf(w->errmsg, sizeof w->errmsg, fmt, a, b);
}

int kb_gen_op(worker *w)
{
    const jobopts *o = w->sec->o;
    if (o->op_b_none)
        return o->op_a;
    return (int)rng_below(&w->r, 100) < w->sec->pct_a ? o->op_a : o->op_b;
}

uint64_t kb_gen_key(worker *w)
{
    section *sec = w->sec;
    const jobopts *o = sec->o;
    uint64_t n = o->keys;
    if (o->seq)
        return w->seq++ % n;
    switch (o->dist) {
    case DIST_ZIPF: return fnv1a64(zipf_next(&sec->z, &w->r)) % n;
    case DIST_LATEST: {
        uint64_t top = atomic_load_explicit(&w->ds->acked,
                                            memory_order_relaxed);
        uint64_t back = zipf_next(&sec->z, &w->r);
        return top == 0 ? 0 : back >= top ? 0 : top - 1 - back;
    }
    default: return rng_below(&w->r, n);
    }
}

const unsigned char *kb_gen_val(worker *w)
{
    size_t span = w->sec->vbuflen - w->sec->o->value_size;
    return w->sec->vbuf + rng_below(&w->r, span + 1);
}

bool kb_stopping(const worker *w, uint64_t now)
{
    return atomic_load_explicit(&kvb_stop, memory_order_relaxed) ||
           now >= w->t_end || w->err;
}

/* --write_lat_log / --write_iops_log: buffer one completed operation (no
   I/O here: the files are written after the run). */
static void log_record(worker *w, int op, uint64_t lat, uint64_t now,
                       uint64_t nrec, uint64_t bytes)
{
    const section *sec = w->sec;
    const jobopts *o = sec->o;
    wlog *l = &w->log;
    if (l->failed)
        return;
    uint32_t dd = op == OP_READ || op == OP_SCAN ? 0 : 1;
    uint64_t rel = now > sec->t_base ? now - sec->t_base : 0;
    if (o->log_avg_msec) {
        size_t k = (size_t)(rel / ((uint64_t)o->log_avg_msec * 1000000u));
        if (k >= l->nwin) {
            size_t n = l->nwin ? l->nwin : 256;
            while (n <= k)
                n *= 2;
            lwin *nw = realloc(l->win, n * sizeof *nw);
            if (!nw) {
                l->failed = true;
                return;
            }
            memset(nw + l->nwin, 0, (n - l->nwin) * sizeof *nw);
            l->win = nw;
            l->nwin = n;
        }
        lwin *x = &l->win[k];
        x->n[dd]++;
        x->ops[dd] += op == OP_SCAN ? 1 : nrec;
        x->sum[dd] += lat;
        if (lat > x->max[dd])
            x->max[dd] = lat;
        return;
    }
    if (l->ns == l->scap) {
        size_t n = l->scap ? 2 * l->scap : 4096;
        lsample *ns = realloc(l->s, n * sizeof *ns);
        if (!ns) {
            l->failed = true;
            return;
        }
        l->s = ns;
        l->scap = n;
    }
    uint64_t bs = op == OP_SCAN ? bytes : o->value_size * (nrec ? nrec : 1);
    l->s[l->ns++] = (lsample){rel, lat, dd, bs > UINT32_MAX ? UINT32_MAX : (uint32_t)bs};
}

void kb_log_free(worker *w)
{
    free(w->log.s);
    free(w->log.win);
    memset(&w->log, 0, sizeof w->log);
}

/* Counters gathered while an op runs, added when it completes. */
void kb_record(worker *w, int op, uint64_t t0, uint64_t now, uint64_t nrec,
                   uint64_t bytes, const opctr *c)
{
    atomic_fetch_add_explicit(&w->sec->pg.ops[op], nrec, memory_order_relaxed);
    if (now < w->t_measure)
        return;
    opstats *s = &w->st[op];
    hist_record(&s->h, now - t0);
    if (w->sec->logging)
        log_record(w, op, now - t0, now, nrec, bytes);
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

void kb_sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* After a signal (kvb_stop): wake every kvstore job's loop, so that a job
 * waiting for operations that do not complete (a store that hangs) sees
 * the stop, cancels them and ends (bench_kv.c, kj_check_stop); the store's
 * thread of a shared store is woken by the jobs' release.  Again at every
 * tick of the main thread while the jobs run: a wake is cheap, and a job
 * that was between two waits finds the flag anyway.  Under sec->mu (a job
 * clears its loop under it before freeing the loop). */
static void wake_jobs(jobthr *jt, unsigned n)
{
    if (!atomic_load(&kvb_stop))
        return;
    for (unsigned i = 0; i < n; i++)
        if (jt[i].loop)
            (void)kv_loop_wake(jt[i].loop);
}

/* Start gate. */
void kb_gate_ready_and_wait(section *sec)
{
    pthread_mutex_lock(&sec->mu);
    sec->nready++;
    pthread_cond_broadcast(&sec->cv);
    while (!sec->go)
        pthread_cond_wait(&sec->cv, &sec->mu);
    pthread_mutex_unlock(&sec->mu);
}

void kb_worker_window(worker *w)
{
    const jobopts *o = w->sec->o;
    w->t_go = tu_now_ns();
    w->t_measure = w->t_go + o->ramp_ns;
    w->t_end = o->runtime_ns ? w->t_measure + o->runtime_ns : UINT64_MAX;
}

/* ------------------------------------------------------------------------ */
/* Job threads                                                              */
/* ------------------------------------------------------------------------ */

/* Flush everything written so far to disk (after --load) so that the
   writeback does not spill into the measured phase. */
void kb_sync_path(const char *path)
{
    if (!path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    syncfs(fd);
    close(fd);
}

void kb_inserted(dataset *d, uint64_t first, uint64_t n)
{
    pthread_mutex_lock(&d->ack_mu);
    for (uint64_t i = first; i < first + n; i++) {
        if (i < d->ack_next)
            continue;
        while (i >= d->ack_next + ACK_WIN) {
            /* Far ahead of the oldest insert still running: stop waiting
               for that one. */
            d->ack_win[d->ack_next % ACK_WIN] = 0;
            d->ack_next++;
        }
        d->ack_win[i % ACK_WIN] = 1;
    }
    while (d->ack_win[d->ack_next % ACK_WIN]) {
        d->ack_win[d->ack_next % ACK_WIN] = 0;
        d->ack_next++;
    }
    atomic_store_explicit(&d->acked, d->ack_next, memory_order_relaxed);
    pthread_mutex_unlock(&d->ack_mu);
}

/* This job's share of the keys to load. */
void kb_load_range(const jobthr *jt, uint64_t *lo, uint64_t *hi)
{
    const jobopts *o = jt->sec->o;
    if (jt->sec->nds > 1) { /* a store of its own */
        *lo = 0;
        *hi = o->keys;
        return;
    }
    if (jt->sec->shared) { /* thread 0 (the store's) loads it alone */
        *lo = 0;
        *hi = jt->idx == 0 ? o->keys : 0;
        return;
    }
    *lo = o->keys * jt->idx / o->numjobs;
    *hi = o->keys * (jt->idx + 1) / o->numjobs;
}

/* ------------------------------------------------------------------------ */
/* Sections                                                                 */
/* ------------------------------------------------------------------------ */

int kvb_check(const jobopts *o, char *err, size_t errlen)
{
    keyfmt kf;
    if (o->backend[0]) {
        tu_uri u;
        if (tu_uri_parse(&u, o->backend, err, errlen))
            return -1;
        bool missing = !tu_uri_is_kvstore(&u) && !peer_available(u.kind);
        if (missing)
            snprintf(err, errlen,
                     "%s: this kvbench was built without it (install %s and "
                     "reconfigure)",
                     tu_backend_name(u.kind),
                     u.kind == TU_LMDB ? "liblmdb-dev" : "librocksdb-dev");
        tu_uri_free(&u);
        if (missing)
            return -1;
    }
    return kb_keyfmt_init(&kf, o, err, errlen);
}

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

/* Operation counts at an instant, to turn the live counters into rates. */
typedef struct meter {
    uint64_t ops[OP__N];
    uint64_t t;
} meter;

static void meter_reset(section *sec, meter *m, uint64_t now)
{
    for (int i = 0; i < OP__N; i++)
        m->ops[i] = atomic_load_explicit(&sec->pg.ops[i], memory_order_relaxed);
    m->t = now;
}

/* "r=1.2k,w=300" since the meter's last reading; the meter moves to now. */
static void meter_rates(section *sec, meter *m, uint64_t now, char *buf,
                        size_t cap)
{
    const jobopts *o = sec->o;
    size_t rl = 0;
    double dt = (double)(now - m->t) / 1e9;
    buf[0] = '\0';
    for (int i = 0; i < OP__N; i++) {
        uint64_t v = atomic_load_explicit(&sec->pg.ops[i], memory_order_relaxed);
        uint64_t d = v - m->ops[i];
        m->ops[i] = v;
        bool used = (o->op_a == i) || (!o->op_b_none && o->op_b == i);
        if (!used)
            continue;
        char h[32];
        human(h, sizeof h, dt > 0 ? (double)d / dt : 0);
        rl += (size_t)snprintf(buf + rl, cap - rl, "%s%c=%s", rl ? "," : "",
                               op_names[i][0], h);
        if (rl >= cap)
            break;
    }
    m->t = now;
}

/* The one-line status on stderr (a terminal). */
static void show_line(section *sec, meter *m, uint64_t t_start, uint64_t now)
{
    const jobopts *o = sec->o;
    int phase = atomic_load(&sec->pg.phase);
    char eta[32] = "--m:--s", rates[256];
    double pctdone = 0;
    uint64_t el = now - t_start;
    meter_rates(sec, m, now, rates, sizeof rates);
    if (phase == 0) {
        uint64_t l = atomic_load(&sec->pg.loaded);
        pctdone = sec->pg.load_total
                      ? 100.0 * (double)l / (double)sec->pg.load_total
                      : 0;
        fprintf(stderr, "\r\033[KJobs: %u (%s): [load %" PRIu64 "/%" PRIu64 "][%.1f%%]",
                o->numjobs, o->name, l, sec->pg.load_total, pctdone);
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

/* A --status-interval line in the report (normal format only). */
static void show_interim(section *sec, meter *m, uint64_t t_start, uint64_t now)
{
    const runenv *env = sec->env;
    char rates[256];
    double dt = (double)(now - m->t) / 1e9;
    meter_rates(sec, m, now, rates, sizeof rates);
    if (!env->out || env->json)
        return;
    if (env->tty) { /* do not leave the status line in the middle */
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    fprintf(env->out, "%s: status at %.1fs: [%s IOPS] over the last %.1fs\n",
            sec->o->name, (double)(now - t_start) / 1e9, rates, dt);
    fflush(env->out);
}

/* ------------------------------------------------------------------------ */
/* fio's log files                                                          */
/* ------------------------------------------------------------------------ */

/* Jobs numbered as fio numbers them in its log names: 1, 2, ... across the
   whole run (every section's jobs). */
static unsigned log_jobno;

static int cmp_sample(const void *a, const void *b)
{
    const lsample *x = a, *y = b;
    return x->t_ns < y->t_ns ? -1 : x->t_ns > y->t_ns;
}

/*
 * One job's log of the given kind ("lat" or "iops"), fio's format: one
 * line per entry, "time (ms), value, data direction (0 read, 1 write),
 * block size (bytes), offset (0: keys have none)".  lat: nanoseconds, each
 * operation or, with log_avg_msec, the window's mean (max with
 * log_max_value); iops: 1 per operation, or the window's operations per
 * second.  0, or -1 with a message.
 */
static int write_log(const section *sec, worker *const *ws, unsigned nw,
                     const char *prefix, const char *kind, unsigned jobno,
                     char *err, size_t errlen)
{
    const jobopts *o = sec->o;
    bool lat = !strcmp(kind, "lat");
    char path[400];
    snprintf(path, sizeof path, "%s_%s.%u.log", prefix, kind, jobno);
    for (unsigned i = 0; i < nw; i++)
        if (ws[i]->log.failed) {
            snprintf(err, errlen, "%s: out of memory while logging", path);
            return -1;
        }
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    if (o->log_avg_msec) {
        uint64_t wns = (uint64_t)o->log_avg_msec * 1000000u;
        size_t k0 = (size_t)(o->ramp_ns / wns), k1 = 0;
        bool used[2] = {false, false}, any = false;
        for (unsigned i = 0; i < nw; i++) {
            const wlog *l = &ws[i]->log;
            for (size_t k = 0; k < l->nwin; k++)
                for (int d = 0; d < 2; d++)
                    if (l->win[k].n[d]) {
                        used[d] = any = true;
                        if (k > k1)
                            k1 = k;
                    }
        }
        for (size_t k = k0; any && k <= k1; k++) {
            for (int d = 0; d < 2; d++) {
                if (!used[d])
                    continue;
                uint64_t n = 0, ops = 0, sum = 0, mx = 0;
                for (unsigned i = 0; i < nw; i++) {
                    const wlog *l = &ws[i]->log;
                    if (k >= l->nwin)
                        continue;
                    n += l->win[k].n[d];
                    ops += l->win[k].ops[d];
                    sum += l->win[k].sum[d];
                    if (l->win[k].max[d] > mx)
                        mx = l->win[k].max[d];
                }
                uint64_t t = (uint64_t)(k + 1) * o->log_avg_msec;
                if (lat && n)
                    fprintf(f, "%" PRIu64 ", %" PRIu64 ", %d, %" PRIu64 ", 0\n", t,
                            o->log_max_value ? mx : sum / n, d, o->value_size);
                else if (!lat) /* an interval with no operation: 0 */
                    fprintf(f, "%" PRIu64 ", %" PRIu64 ", %d, %" PRIu64 ", 0\n", t,
                            (ops * 1000u + o->log_avg_msec / 2) / o->log_avg_msec,
                            d, o->value_size);
            }
        }
    } else {
        size_t total = 0;
        for (unsigned i = 0; i < nw; i++)
            total += ws[i]->log.ns;
        lsample *all = total ? malloc(total * sizeof *all) : NULL;
        if (total && !all) {
            snprintf(err, errlen, "%s: out of memory", path);
            fclose(f);
            return -1;
        }
        size_t m = 0;
        for (unsigned i = 0; i < nw; i++) {
            if (ws[i]->log.ns)
                memcpy(all + m, ws[i]->log.s, ws[i]->log.ns * sizeof *all);
            m += ws[i]->log.ns;
        }
        if (nw > 1)
            qsort(all, total, sizeof *all, cmp_sample);
        for (size_t i = 0; i < total; i++)
            fprintf(f, "%" PRIu64 ", %" PRIu64 ", %u, %u, 0\n",
                    all[i].t_ns / 1000000u, lat ? all[i].lat_ns : 1,
                    all[i].ddir, all[i].bs);
        free(all);
    }
    if (ferror(f))
        rc = -1;
    if (fclose(f) != 0)
        rc = -1;
    if (rc)
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    return rc;
}

static int write_logs(section *sec, jobthr *jt, unsigned started, char *err,
                      size_t errlen)
{
    const jobopts *o = sec->o;
    int rc = 0;
    for (unsigned i = 0; i < started; i++) {
        if (sec->store_thread && i == 0)
            continue; /* serves the store, runs no operation */
        unsigned no = ++log_jobno;
        if (rc)
            continue;
        if (o->lat_log[0] && write_log(sec, jt[i].w, jt[i].nw, o->lat_log,
                                       "lat", no, err, errlen))
            rc = -1;
        else if (o->iops_log[0] && write_log(sec, jt[i].w, jt[i].nw,
                                             o->iops_log, "iops", no, err,
                                             errlen))
            rc = -1;
    }
    return rc;
}

static int setup_datasets(section *sec, char *err, size_t errlen)
{
    const jobopts *o = sec->o;
    /* kvstore backends share one store unless --store_per_job: then an
       in-memory database or an fs root (opened once only) per job; SQLite
       files and Redis servers take one store handle per job on the same
       file or server. */
    sec->shared = sec->is_kv && !o->store_per_job;
    /* Several jobs on one store: a thread of its own serves it, so that
       every job forwards its calls alike (the store on job 0's loop gave
       job 0 several times the others' share). */
    sec->store_thread = sec->shared && (o->store_thread || o->numjobs > 1);
    sec->nthr = o->numjobs + (sec->store_thread ? 1 : 0);
    bool per_job = sec->is_kv && o->store_per_job &&
                   (sec->uri.kind == TU_SQLITE_MEM ||
                    (sec->uri.kind == TU_FS && o->numjobs > 1));
    sec->nds = per_job ? o->numjobs : 1;
    sec->ds = calloc(sec->nds, sizeof *sec->ds);
    if (!sec->ds) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < sec->nds; i++) {
        dataset *d = &sec->ds[i];
        d->uri.kind = sec->uri.kind;
        d->uri.flags = sec->uri.flags;
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
        /* A store created by this run is known empty; anything else may
           hold records already (a Redis server always may). */
        bool fresh = d->uri.kind != TU_REDIS &&
                     (!d->uri.path || !path_exists(d->uri.path));
        if (kb_tok_init(&d->tt, fresh)) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        atomic_init(&d->next_insert, o->keys);
        atomic_init(&d->acked, o->keys);
        d->ack_next = o->keys;
        d->ack_win = calloc(ACK_WIN, 1);
        if (!d->ack_win || pthread_mutex_init(&d->ack_mu, NULL)) {
            free(d->ack_win);
            d->ack_win = NULL;
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (!sec->is_kv) {
            peer_sync ps = o->sync == SYNC_FULL     ? PEER_SYNC_FULL
                           : o->sync == SYNC_NONE   ? PEER_SYNC_NONE
                                                    : PEER_SYNC_NORMAL;
            uint64_t bytes = o->keys * (o->value_size + sec->kf.nw + 16);
            if (peer_open(&d->peer, d->uri.kind, d->uri.path, ps,
                          o->numjobs * o->iodepth + 1, bytes, err,
                          errlen) != KV_OK)
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
                 o->numjobs > 1 && !sec->shared ? " (one database per job)" : "");
    else if (sec->nds > 1)
        snprintf(r->store, sizeof r->store, "%s:%s/job0..job%u (one store per job)",
                 tu_backend_name(sec->uri.kind), sec->uri.path, sec->nds - 1);
    else if (sec->uri.kind == TU_REDIS)
        tu_uri_shown(sec->uri.path, r->store, sizeof r->store);
    else
        snprintf(r->store, sizeof r->store, "%s:%s%s",
                 sec->uri.kind == TU_SQLITE_RAW ? "sqlite-raw" : tu_backend_name(sec->uri.kind),
                 sec->uri.path, sec->tmpdir[0] ? " (temporary)" : "");
    if (sec->is_kv) {
        const char *mode;
        if (sec->uri.kind == TU_FS)
            mode = o->sync == SYNC_NONE ? "KV_FS_NO_FSYNC" : "fsync per put (file + directory)";
        else if (sec->uri.kind == TU_REDIS)
            mode = "durability is the server's (appendonly/appendfsync): "
                   "--sync does not apply";
        else
            mode = o->sync == SYNC_FULL ? "KV_SQLITE_SYNC_FULL (synchronous=FULL)"
                   : o->sync == SYNC_NONE ? "synchronous=NORMAL (the API has no sync=none for sqlite)"
                                          : "synchronous=NORMAL";
        /* The loop mode the jobs get (io_uring, or fallback where it is
         * blocked or KV_IO_URING=0): a throwaway loop answers. */
        kv_loop *probe = NULL;
        const char *lb = kv_loop_new(&probe, NULL) == KV_OK ? kv_loop_backend(probe) : "unknown";
        kv_loop_free(probe);
        const char *sharing =
            sec->store_thread && o->numjobs > 1
                ? "one store shared by the jobs, served by a thread of its "
                  "own (every job's calls forwarded to it)"
            : sec->store_thread ? "one store served by a thread of its own "
                                  "(--store_thread: every call forwarded)"
            : o->numjobs == 1 ? "one store"
            : sec->nds > 1 ? "one store per job (--store_per_job)"
                           : "one store handle per job on the same database "
                             "(--store_per_job)";
        snprintf(r->driver, sizeof r->driver,
                 "kvstore %s async API (loop: %s): one kv_loop per job on its own thread, "
                 "%s, "
                 "%u future%s in flight per job (kv_fut_then + kv_loop_run), "
                 "kv_pool of %u threads shared by %u job(s); %s%s",
                 kv_version_string(), lb, sharing, o->iodepth, o->iodepth == 1 ? "" : "s",
                 sec->pool_size, o->numjobs,
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
    sec->logging = o->lat_log[0] || o->iops_log[0];
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
    if (!sec->is_kv && o->scan_mode != SCAN_FIRST) {
        snprintf(err, sizeof err, "--scan_mode=offset|keyset: kvstore "
                                  "backends only (a peer scans the first "
                                  "records)");
        goto fail;
    }
    if (kb_keyfmt_init(&sec->kf, o, err, sizeof err))
        goto fail;
    sec->pct_a = o->rwmixread >= 0 ? o->rwmixread : o->mix_default;
    if (o->dist != DIST_UNIFORM && !o->seq) {
        kb_zipf_init(&sec->z, o->keys, o->theta);
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
    unsigned nthr = sec->nthr;
    jt = calloc(nthr, sizeof *jt);
    if (!jt)
        goto oom;
    sec->pg.load_total = o->load ? o->keys * sec->nds : 0;
    atomic_store(&sec->pg.running, (int)nthr);
    atomic_store(&sec->shared_users, (int)nthr - 1);
    unsigned started = 0;
    for (unsigned i = 0; i < nthr; i++) {
        jt[i].sec = sec;
        jt[i].idx = i;
        jt[i].ds = &sec->ds[sec->nds > 1 ? i : 0];
        if (pthread_create(&jt[i].th, NULL,
                           sec->is_kv ? kb_kv_job_main : kb_peer_job_main,
                           &jt[i]) != 0) {
            snprintf(err, sizeof err, "pthread_create: %s", strerror(errno));
            break;
        }
        started++;
    }
    if (started < nthr) {
        atomic_fetch_sub(&sec->pg.running, (int)(nthr - started));
        if (started > 0) /* job 0 must not wait for jobs that never ran */
            atomic_fetch_sub(&sec->shared_users, (int)(nthr - started));
    }

    /* Wait for every job to be ready (stores open, --load done). */
    uint64_t t_start = tu_now_ns();
    meter mline, mstat;
    meter_reset(sec, &mline, t_start);
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
        wake_jobs(jt, started);
        pthread_mutex_unlock(&sec->mu);
        if (env->tty)
            show_line(sec, &mline, t_start, tu_now_ns());
        pthread_mutex_lock(&sec->mu);
    }
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t wall0 = tu_now_ns();
    atomic_store(&sec->pg.phase, o->ramp_ns ? 1 : 2);
    sec->t_base = tu_now_ns();
    sec->go = true;
    pthread_cond_broadcast(&sec->cv);
    pthread_mutex_unlock(&sec->mu);

    /* Progress while the jobs run. */
    t_start = tu_now_ns();
    meter_reset(sec, &mline, t_start);
    meter_reset(sec, &mstat, t_start);
    uint64_t next_status = env->status_interval_ns ? t_start + env->status_interval_ns : UINT64_MAX;
    uint64_t next_line = t_start + 1000000000u;
    while (atomic_load(&sec->pg.running) > 0) {
        uint64_t now = tu_now_ns();
        uint64_t wake = next_line < next_status ? next_line : next_status;
        if (wake > now + 100000000u)
            wake = now + 100000000u;
        kb_sleep_until(wake);
        pthread_mutex_lock(&sec->mu);
        wake_jobs(jt, started);
        pthread_mutex_unlock(&sec->mu);
        now = tu_now_ns();
        if (o->ramp_ns && now >= t_start + o->ramp_ns)
            atomic_store(&sec->pg.phase, 2);
        if (now >= next_status) {
            show_interim(sec, &mstat, t_start, now);
            next_status += env->status_interval_ns;
        }
        if (now >= next_line) {
            if (env->tty)
                show_line(sec, &mline, t_start, now);
            next_line = now + 1000000000u;
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    r->wall_ns = tu_now_ns() - wall0;
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
        for (unsigned k = 0; k < jt[i].nw; k++)
            merge_worker(r, jt[i].w[k]);
    }
    if (!r->err && err[0]) {
        r->err = KV_ERROR;
        snprintf(r->errmsg, sizeof r->errmsg, "%s", err);
    }
    if (sec->logging && write_logs(sec, jt, started, err, sizeof err) &&
        !r->err) {
        r->err = KV_ERROR;
        snprintf(r->errmsg, sizeof r->errmsg, "%s", err);
    }
    r->loaded = atomic_load(&sec->pg.loaded);
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
        for (unsigned i = 0; i < sec->nthr; i++)
            for (unsigned k = 0; k < jt[i].nw; k++)
                kb_log_free(jt[i].w[k]);
        for (unsigned i = 0; i < sec->nthr; i++)
            if (jt[i].priv_free)
                jt[i].priv_free(&jt[i]);
        free(jt);
    }
    if (sec->ds) {
        for (unsigned i = 0; i < sec->nds; i++) {
            peer_close(sec->ds[i].peer);
            kb_tok_free(&sec->ds[i].tt);
            if (sec->ds[i].ack_win) {
                free(sec->ds[i].ack_win);
                pthread_mutex_destroy(&sec->ds[i].ack_mu);
            }
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

