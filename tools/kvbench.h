/*
 * kvbench.h - internal interfaces between kvbench's front end (kvbench.c:
 * options, job files, reports) and its run engine (bench_run.c: workload
 * generator, kvstore async driver, peer driver).
 */
#ifndef KV_KVBENCH_H
#define KV_KVBENCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"
#include "toolutil.h"

/* Operation types, as reported. */
enum {
    OP_READ,   /* kv_get                                                  */
    OP_WRITE,  /* update: kv_put with the last known token (put_many if  */
               /* --batch > 1)                                            */
    OP_INSERT, /* kv_put of a new key with token 0                        */
    OP_CAS,    /* read-modify-write: kv_get then kv_put with its token,   */
               /* retried on KV_ECONFLICT                                 */
    OP_SCAN,   /* prefix query of up to --scan_length records             */
    OP__N
};
extern const char *const op_names[OP__N];

enum dist_kind { DIST_UNIFORM, DIST_ZIPF, DIST_LATEST };
/* --scan_mode: the first records of a directory, or a full page from the
 * drawn key's position by query offset or by kv_query.after (keyset). */
enum scan_mode { SCAN_FIRST, SCAN_OFFSET, SCAN_KEYSET };
enum sync_mode { SYNC_NORMAL, SYNC_FULL, SYNC_NONE };

#define MAX_PCTS 32

/* Every per-job option; filled from defaults, job files and the command line. */
typedef struct jobopts {
    char name[64];
    char backend[1024]; /* "" = SQLite in a temporary file */
    char rw[32];        /* as given, for the report */
    char workload[16];  /* ycsb-a..f or "" */
    int op_a, op_b;     /* the op mix: op_a rwmix% of the time, else op_b */
    int op_b_none;      /* op_b unused */
    int mix_default;    /* op_a's share unless --rwmixread is given */
    int rwmixread;      /* -1 unset */
    bool seq;           /* sequential keys (rw=read/write/rw) */
    unsigned iodepth, numjobs;
    uint64_t runtime_ns, ramp_ns;
    bool time_based;
    uint64_t number_ios;
    double rate_iops;
    int dist;
    double theta;
    double pcts[MAX_PCTS];
    unsigned npcts;
    uint64_t keys;
    unsigned key_size;
    bool key_size_set;
    uint64_t value_size;
    unsigned batch;
    bool atomic;
    bool load;
    bool load_set; /* --load given (else the default temporary store loads) */
    int sync;
    unsigned key_dirs;
    unsigned scan_length;
    int scan_mode;      /* enum scan_mode */
    unsigned pool_threads;
    unsigned max_retries;
    uint64_t seed;
    bool keep;
    bool store_per_job; /* kvstore: one kv_store per job (else one shared) */
    bool store_thread;  /* kvstore: the shared store on a thread of its own */
    /* fio's logs: NAME_lat.N.log / NAME_iops.N.log per job ("" = none) */
    char lat_log[256];
    char iops_log[256];
    unsigned log_avg_msec; /* 0: one entry per operation */
    bool log_max_value;    /* the window's maximum latency, not its mean */
} jobopts;

/* Statistics of one operation type. */
typedef struct opstats {
    hist h;             /* latency, ns, per call (per batch when batched) */
    uint64_t ops;       /* records: a batch of N counts N */
    uint64_t calls;     /* completed calls */
    uint64_t bytes;     /* value bytes moved */
    uint64_t notfound;  /* reads of absent keys */
    uint64_t conflicts; /* KV_ECONFLICT seen (each attempt) */
    uint64_t retries;   /* attempts repeated after a conflict */
    uint64_t failed;    /* ops given up after max_retries conflicts */
    uint64_t refreshes; /* extra reads made only to learn a token */
    uint64_t errors;    /* other failures */
} opstats;

/* What one job section measured (all numjobs clones together). */
typedef struct jobresult {
    opstats st[OP__N];
    uint64_t elapsed_ns; /* measured window (after ramp) */
    uint64_t loaded;     /* records written by --load */
    uint64_t load_ns;
    double usr_s, sys_s; /* CPU time of the process from start to end */
    uint64_t wall_ns;    /* ... over this wall time (ramp included)   */
    long ctx, majf, minf;
    long peak_rss_kib;
    int err;             /* first error code, 0 if none */
    char errmsg[1024];
    char driver[1024];    /* how the backend was driven, for honesty */
    char store[1100];    /* the store actually used */
} jobresult;

/* Live counters the progress display reads (relaxed atomics). */
typedef struct progress {
    atomic_uint_fast64_t ops[OP__N];
    atomic_uint_fast64_t loaded; /* records written by --load so far */
    uint64_t load_total;
    atomic_int running; /* jobs still running */
    atomic_int phase;   /* 0 setup/load, 1 ramp, 2 measuring, 3 done */
} progress;

extern atomic_int kvb_stop; /* set by SIGINT/SIGTERM: stop every job early */

/* How kvb_run reports while it runs. */
typedef struct runenv {
    bool tty;                    /* one-line status on stderr            */
    uint64_t status_interval_ns; /* 0: none                              */
    FILE *out;                   /* interim reports (normal format only) */
    bool json;
} runenv;

/* Fill in defaults. */
void jobopts_defaults(jobopts *o);
/* Check what options alone can tell (key sizes); -1 with a message. */
int kvb_check(const jobopts *o, char *err, size_t errlen);
/*
 * Run one job section to completion; results in *r.  Returns 0, or -1 with
 * r->err/errmsg set when the section could not run at all.
 */
int kvb_run(const jobopts *o, jobresult *r, const runenv *env);

#endif /* KV_KVBENCH_H */
