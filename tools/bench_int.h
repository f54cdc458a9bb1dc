/*
 * bench_int.h - what kvbench's run engine (bench_run.c) shares with its two
 * drivers (bench_kv.c: kvstore; bench_peers.c: sqlite-raw, LMDB, RocksDB).
 */
#ifndef KV_BENCH_INT_H
#define KV_BENCH_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvbench.h"
#include "peer.h"

/* ------------------------------------------------------------------------ */
/* Random numbers: xoshiro256** seeded by splitmix64                        */
/* ------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t s[4];
} rng;

static inline uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static inline void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5;
    uint64_t res = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}

static inline double rng_double(rng *r) /* [0, 1) */
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

static inline uint64_t rng_below(rng *r, uint64_t n)
{
    return n ? rng_next(r) % n : 0;
}

/* ------------------------------------------------------------------------ */
/* Workload pieces                                                          */
/* ------------------------------------------------------------------------ */

/* Zipfian ranks (Gray et al., as YCSB's ZipfianGenerator), theta in (0, 1). */
typedef struct zipf {
    uint64_t n;
    double theta, alpha, zetan, eta, half_pow;
} zipf;

/* Keys: "/dNN/kNNNNNNNN", or "/kNNNNNNNN" with --key_dirs=0. */
typedef struct keyfmt {
    unsigned dirs, dw, nw;
} keyfmt;

size_t kb_key_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap);
/* The directory ("/dNN") of idx: the prefix a scan queries ("" if flat). */
size_t kb_prefix_id(const keyfmt *kf, uint64_t idx, char *buf, size_t cap);
/* The index of a key made by kb_key_id, or UINT64_MAX. */
uint64_t kb_key_index(const char *id);

/* The last token known for each key. */
#define TOK_CHUNK_BITS 16
#define TOK_CHUNK (1u << TOK_CHUNK_BITS)
#define TOK_NCHUNKS (1u << 16) /* 2^32 keys */
#define TOK_UNKNOWN UINT64_MAX /* must read the key first */
#define TOK_ABSENT (UINT64_MAX - 1)

typedef struct toktab {
    _Atomic(_Atomic uint64_t *) *chunks; /* [TOK_NCHUNKS] */
    bool fresh; /* an unset entry means absent (else unknown) */
} toktab;

/* TOK_ABSENT, TOK_UNKNOWN or a token.  Any thread. */
uint64_t kb_tok_get(toktab *t, uint64_t idx);
void kb_tok_set(toktab *t, uint64_t idx, uint64_t v);

/* One store instance and what kvbench knows about its contents. */
typedef struct dataset {
    tu_uri uri; /* kind + the instance's path */
    toktab tt;
    _Atomic uint64_t next_insert; /* the next key an insert takes */
    /* Inserts acknowledged (completed), as YCSB counts them: every key
       below acked has been inserted (or given up), so "latest" reads pick
       from there.  ack_mu guards ack_next and ack_win. */
    _Atomic uint64_t acked;
    pthread_mutex_t ack_mu;
    uint64_t ack_next;
    unsigned char *ack_win; /* [ACK_WIN]: done flags of keys >= ack_next */
    peer *peer;
} dataset;

#define ACK_WIN (1u << 18)

/* Inserts of keys [first, first + n) completed (whatever their outcome). */
void kb_inserted(dataset *d, uint64_t first, uint64_t n);

typedef struct section section;

/* --write_lat_log / --write_iops_log: what one worker buffers while it runs
   (written to the files after the run, never from the hot path). */
typedef struct lsample { /* one operation (no --log_avg_msec) */
    uint64_t t_ns;  /* completion, since the worker's start */
    uint64_t lat_ns;
    uint32_t ddir;  /* 0 read, 1 write */
    uint32_t bs;    /* value bytes */
} lsample;

typedef struct lwin { /* one --log_avg_msec window, per direction */
    uint64_t n[2], sum[2], max[2]; /* calls and their latencies */
    uint64_t ops[2];               /* operations (a batch of N counts N) */
} lwin;

typedef struct wlog {
    lsample *s;
    size_t ns, scap;
    lwin *win;       /* [nwin], window k = [k, k+1) x log_avg_msec */
    size_t nwin;
    bool failed;     /* out of memory: the log is incomplete */
} wlog;

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
    wlog log;
} worker;

/* One job section while it runs. */
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
    int pct_a; /* op_a's share of the mix, percent */
    unsigned char *vbuf;
    size_t vbuflen;
    dataset *ds;
    unsigned nds;
    kv_pool *pool;
    unsigned pool_size;
    bool atomic_ok; /* --atomic honoured (else put_many) */
    /* One kvstore store shared by every job (unless --store_per_job).
       With more than one job (or --store_thread) thread 0 is the store's
       own: it opens the store on its loop, loads it, runs no operation and
       serves the calls that jobs 1..N forward from their own loops, so the
       jobs are alike.  shared_store and shared_loop are written by thread 0
       before the start gate opens and read after it; shared_users counts
       the jobs still using the store (thread 0 serves until it is 0, then
       closes the store): a job lowers it and wakes shared_loop under mu
       (kj_serve in bench_kv.c).  With one job and no --store_thread the job
       opens the store on its own loop and calls it directly. */
    bool shared;
    bool store_thread; /* thread 0 only serves; the jobs are 1..N */
    unsigned nthr;     /* threads: numjobs, plus the store's with store_thread */
    kv_store *shared_store;
    kv_loop *shared_loop;
    atomic_int shared_users;
    /* Start gate: jobs report ready, then wait for go.  mu guards nready
       and go, and orders a job's release of the shared store (above). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned nready;
    bool go;
    bool logging; /* --write_lat_log or --write_iops_log */
    uint64_t t_base; /* when the gate opened: the logs' time 0 */
};

/* Counters gathered while an op runs, added when it completes. */
typedef struct opctr {
    uint64_t nf, conf, retries, refreshes, failed;
} opctr;

void kb_worker_init(worker *w, section *sec, dataset *ds, uint64_t seed);
/* Record the first error of a worker (fmt takes two strings). */
void kb_worker_fail(worker *w, int code, const char *fmt, const char *a,
                    const char *b);
/* The worker's measuring window, starting now. */
void kb_worker_window(worker *w);
int kb_gen_op(worker *w);
uint64_t kb_gen_key(worker *w);
const unsigned char *kb_gen_val(worker *w);
bool kb_stopping(const worker *w, uint64_t now);
/* One completed operation (latency now - t0), if inside the window. */
void kb_record(worker *w, int op, uint64_t t0, uint64_t now, uint64_t nrec,
               uint64_t bytes, const opctr *c);
void kb_sleep_until(uint64_t t);
/* Free what the worker buffered for --write_lat_log / --write_iops_log. */
void kb_log_free(worker *w);
/* Report ready (stores open, --load done) and wait for the start. */
void kb_gate_ready_and_wait(section *sec);
int kb_cmp_u64(const void *a, const void *b);
/* syncfs() the file system holding path (after --load). */
void kb_sync_path(const char *path);

/* ------------------------------------------------------------------------ */
/* Job threads                                                              */
/* ------------------------------------------------------------------------ */

typedef struct jobthr {
    section *sec;
    unsigned idx;
    dataset *ds;
    pthread_t th;
    /* Set by the driver: the workers whose statistics make the job's
       result, and how to free the driver's state after they are read. */
    worker **w;
    unsigned nw;
    void *priv;
    void (*priv_free)(struct jobthr *jt);
    uint64_t load_ns;
    char setup_err[512];
    int setup_rc;
    /* A kvstore job's loop, from its creation until just before it is
       freed (set and cleared under sec->mu): after a signal the main
       thread wakes it (kv_loop_wake, under sec->mu), so that a job waiting
       for operations that do not complete (a store that hangs) sees
       kvb_stop, cancels them and ends.  NULL for the peers. */
    kv_loop *loop;
} jobthr;

/* This job's share of the keys to load. */
void kb_load_range(const jobthr *jt, uint64_t *lo, uint64_t *hi);

/* Thread mains (arg: jobthr *). */
void *kb_kv_job_main(void *arg);
void *kb_peer_job_main(void *arg);

#endif /* KV_BENCH_INT_H */
