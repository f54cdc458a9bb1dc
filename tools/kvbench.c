/*
 * kvbench - a fio-style load generator for kvstore and its peers.
 *
 *   kvbench [--option=value ...] [jobfile ...]
 *
 * Options are named as fio names them (--name, --rw, --iodepth, --numjobs,
 * --runtime, --time_based, --ramp_time, --rate_iops, ...), plus key-value
 * options (--backend, --keys, --value-size, --batch, --load, --sync,
 * --workload).  See man/kvbench.1 for the whole list and what each report
 * field means.  This file is the front end: option tables, INI job files and
 * the reports; bench_run.c runs the jobs.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvbench.h"
#include "peer.h"

#define KVBENCH_VERSION "0.1.0"

/* Exit codes (documented in kvbench.1). */
enum { EXIT_RUN = 1, EXIT_USAGE = 2 };

/* Process-wide settings (options that are not per job). */
typedef struct globalopts {
    bool json;
    char output[1024];
    uint64_t status_interval_ns;
} globalopts;

static globalopts G;

/* ------------------------------------------------------------------------ */
/* Option handlers                                                          */
/* ------------------------------------------------------------------------ */

typedef const char *(*opt_fn)(jobopts *o, const char *v);

static const char *set_str(char *dst, size_t n, const char *v)
{
    if (strlen(v) >= n)
        return "value too long";
    memcpy(dst, v, strlen(v) + 1);
    return NULL;
}

static const char *parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") ||
        !strcmp(v, "on")) {
        *out = true;
        return NULL;
    }
    if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") ||
        !strcmp(v, "off")) {
        *out = false;
        return NULL;
    }
    return "expected 0 or 1";
}

static const char *parse_uint(const char *v, unsigned lo, unsigned hi,
                              unsigned *out)
{
    uint64_t x;
    if (tu_parse_count(v, &x) || x < lo || x > hi)
        return "out of range or not a number";
    *out = (unsigned)x;
    return NULL;
}

static const char *o_name(jobopts *o, const char *v)
{
    if (!*v || strchr(v, ']') || strchr(v, '['))
        return "bad job name";
    return set_str(o->name, sizeof o->name, v);
}

static const char *o_backend(jobopts *o, const char *v)
{
    tu_uri u;
    char err[256];
    if (tu_uri_parse(&u, v, err, sizeof err))
        return "unknown store URI (sqlite:memory, sqlite:PATH, fs:PATH, "
               "redis://HOST:PORT, sqlite-raw:PATH, lmdb:PATH, rocksdb:PATH)";
    tu_uri_free(&u);
    return set_str(o->backend, sizeof o->backend, v);
}

static void set_mix(jobopts *o, int a, int b, int def)
{
    o->op_a = a;
    o->op_b = b < 0 ? OP_WRITE : b;
    o->op_b_none = b < 0;
    o->mix_default = def;
}

static const char *o_rw(jobopts *o, const char *v)
{
    static const struct {
        const char *name;
        int a, b, def;
        bool seq;
    } t[] = {
        {"read", OP_READ, -1, 100, true},
        {"randread", OP_READ, -1, 100, false},
        {"write", OP_WRITE, -1, 100, true},
        {"randwrite", OP_WRITE, -1, 100, false},
        {"rw", OP_READ, OP_WRITE, 50, true},
        {"readwrite", OP_READ, OP_WRITE, 50, true},
        {"randrw", OP_READ, OP_WRITE, 50, false},
        {"cas", OP_CAS, -1, 100, false},
        {"scan", OP_SCAN, -1, 100, false},
        {"insert", OP_INSERT, -1, 100, false},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(v, t[i].name)) {
            set_mix(o, t[i].a, t[i].b, t[i].def);
            o->seq = t[i].seq;
            return set_str(o->rw, sizeof o->rw, v);
        }
    return "expected read, write, randread, randwrite, rw, randrw, cas, "
           "scan or insert";
}

static const char *o_rwmixread(jobopts *o, const char *v)
{
    unsigned x;
    const char *e = parse_uint(v, 0, 100, &x);
    if (!e)
        o->rwmixread = (int)x;
    return e;
}

static const char *o_rwmixwrite(jobopts *o, const char *v)
{
    unsigned x;
    const char *e = parse_uint(v, 0, 100, &x);
    if (!e)
        o->rwmixread = 100 - (int)x;
    return e;
}

static const char *o_iodepth(jobopts *o, const char *v)
{
    return parse_uint(v, 1, 65536, &o->iodepth);
}

static const char *o_numjobs(jobopts *o, const char *v)
{
    return parse_uint(v, 1, 1024, &o->numjobs);
}

static const char *o_runtime(jobopts *o, const char *v)
{
    return tu_parse_duration(v, &o->runtime_ns) ? "bad duration (e.g. 10, 10s, 500ms, 2m)" : NULL;
}

static const char *o_ramp(jobopts *o, const char *v)
{
    return tu_parse_duration(v, &o->ramp_ns) ? "bad duration" : NULL;
}

static const char *o_time_based(jobopts *o, const char *v)
{
    return parse_bool(v, &o->time_based);
}

static const char *o_number_ios(jobopts *o, const char *v)
{
    return tu_parse_count(v, &o->number_ios) ? "bad count" : NULL;
}

static const char *o_rate_iops(jobopts *o, const char *v)
{
    uint64_t x;
    if (tu_parse_count(v, &x))
        return "bad rate";
    o->rate_iops = (double)x;
    return NULL;
}

static const char *o_dist(jobopts *o, const char *v)
{
    if (!strcmp(v, "uniform") || !strcmp(v, "random")) {
        o->dist = DIST_UNIFORM;
        return NULL;
    }
    const char *theta = NULL;
    if (!strncmp(v, "zipf", 4)) {
        o->dist = DIST_ZIPF;
        theta = v + 4;
    } else if (!strncmp(v, "latest", 6)) {
        o->dist = DIST_LATEST;
        theta = v + 6;
    } else {
        return "expected uniform, zipf:THETA or latest[:THETA]";
    }
    if (*theta == '\0') {
        o->theta = 0.99;
        return NULL;
    }
    double t;
    if (*theta != ':' || tu_parse_double(theta + 1, &t) || !(t > 0 && t < 1))
        return "THETA must be a number in (0, 1), e.g. zipf:0.99";
    o->theta = t;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *o_pcts(jobopts *o, const char *v)
{
    double p[MAX_PCTS];
    unsigned n = 0;
    char buf[512];
    if (set_str(buf, sizeof buf, v))
        return "value too long";
    for (char *save = NULL, *t = strtok_r(buf, ":,", &save); t;
         t = strtok_r(NULL, ":,", &save)) {
        if (n == MAX_PCTS)
            return "too many percentiles (at most 32)";
        if (tu_parse_double(t, &p[n]) || !(p[n] > 0 && p[n] <= 100))
            return "percentiles are numbers in (0, 100], separated by ':'";
        n++;
    }
    if (!n)
        return "empty percentile list";
    qsort(p, n, sizeof p[0], cmp_double);
    memcpy(o->pcts, p, n * sizeof p[0]);
    o->npcts = n;
    return NULL;
}

static const char *o_keys(jobopts *o, const char *v)
{
    if (tu_parse_count(v, &o->keys) || o->keys < 1 || o->keys > (1ull << 31))
        return "expected a count from 1 to 2^31 (k/m/g suffixes: x1000)";
    return NULL;
}

static const char *o_key_size(jobopts *o, const char *v)
{
    const char *e = parse_uint(v, 3, 4096, &o->key_size);
    if (!e)
        o->key_size_set = true;
    return e;
}

static const char *o_value_size(jobopts *o, const char *v)
{
    if (tu_parse_size(v, &o->value_size) || o->value_size > (64u << 20))
        return "expected a size up to 64MiB (k/m suffixes: x1024)";
    return NULL;
}

static const char *o_batch(jobopts *o, const char *v)
{
    return parse_uint(v, 1, 100000, &o->batch);
}

static const char *o_atomic(jobopts *o, const char *v)
{
    return parse_bool(v, &o->atomic);
}

static const char *o_load(jobopts *o, const char *v)
{
    o->load_set = true;
    return parse_bool(v, &o->load);
}

static const char *o_keep(jobopts *o, const char *v)
{
    return parse_bool(v, &o->keep);
}

static const char *o_store_per_job(jobopts *o, const char *v)
{
    return parse_bool(v, &o->store_per_job);
}

static const char *o_lat_log(jobopts *o, const char *v)
{
    return *v ? set_str(o->lat_log, sizeof o->lat_log, v) : "expected a name";
}

static const char *o_iops_log(jobopts *o, const char *v)
{
    return *v ? set_str(o->iops_log, sizeof o->iops_log, v) : "expected a name";
}

static const char *o_log_avg_msec(jobopts *o, const char *v)
{
    return parse_uint(v, 0, 86400000, &o->log_avg_msec);
}

static const char *o_log_max_value(jobopts *o, const char *v)
{
    return parse_bool(v, &o->log_max_value);
}

static const char *o_store_thread(jobopts *o, const char *v)
{
    return parse_bool(v, &o->store_thread);
}

static const char *o_sync(jobopts *o, const char *v)
{
    if (!strcmp(v, "full") || !strcmp(v, "1"))
        o->sync = SYNC_FULL;
    else if (!strcmp(v, "normal"))
        o->sync = SYNC_NORMAL;
    else if (!strcmp(v, "none") || !strcmp(v, "0"))
        o->sync = SYNC_NONE;
    else
        return "expected full, normal or none";
    return NULL;
}

static const char *o_workload(jobopts *o, const char *v)
{
    char w = 0;
    if (!strncmp(v, "ycsb-", 5) && v[5] >= 'a' && v[5] <= 'f' && !v[6])
        w = v[5];
    else if (!strncmp(v, "ycsb", 4) && v[4] >= 'a' && v[4] <= 'f' && !v[5])
        w = v[4];
    if (!w)
        return "expected ycsb-a .. ycsb-f";
    o->dist = DIST_ZIPF;
    o->theta = 0.99;
    o->seq = false;
    o->load = true;
    o->rwmixread = -1;
    switch (w) {
    case 'a': set_mix(o, OP_READ, OP_WRITE, 50); break;
    case 'b': set_mix(o, OP_READ, OP_WRITE, 95); break;
    case 'c': set_mix(o, OP_READ, -1, 100); break;
    case 'd':
        set_mix(o, OP_READ, OP_INSERT, 95);
        o->dist = DIST_LATEST;
        break;
    case 'e': set_mix(o, OP_SCAN, OP_INSERT, 95); break;
    case 'f': set_mix(o, OP_READ, OP_CAS, 50); break;
    }
    snprintf(o->workload, sizeof o->workload, "ycsb-%c", w);
    snprintf(o->rw, sizeof o->rw, "%s", o->workload);
    return NULL;
}

static const char *o_key_dirs(jobopts *o, const char *v)
{
    return parse_uint(v, 0, 1000000, &o->key_dirs);
}

static const char *o_scan_length(jobopts *o, const char *v)
{
    return parse_uint(v, 1, 1000000, &o->scan_length);
}

static const char *o_scan_mode(jobopts *o, const char *v)
{
    if (!strcmp(v, "first"))
        o->scan_mode = SCAN_FIRST;
    else if (!strcmp(v, "offset"))
        o->scan_mode = SCAN_OFFSET;
    else if (!strcmp(v, "keyset"))
        o->scan_mode = SCAN_KEYSET;
    else
        return "expected first, offset or keyset";
    return NULL;
}

static const char *o_pool_threads(jobopts *o, const char *v)
{
    return parse_uint(v, 0, 1024, &o->pool_threads);
}

static const char *o_max_retries(jobopts *o, const char *v)
{
    return parse_uint(v, 1, 1000000, &o->max_retries);
}

static const char *o_seed(jobopts *o, const char *v)
{
    return tu_parse_u64(v, &o->seed) ? "expected a number" : NULL;
}

/* Process-wide ones. */
static const char *o_output_format(jobopts *o, const char *v)
{
    (void)o;
    if (!strcmp(v, "normal") || !strcmp(v, "terse"))
        G.json = false;
    else if (!strcmp(v, "json"))
        G.json = true;
    else
        return "expected normal or json";
    return NULL;
}

static const char *o_output(jobopts *o, const char *v)
{
    (void)o;
    return set_str(G.output, sizeof G.output, v);
}

static const char *o_status_interval(jobopts *o, const char *v)
{
    (void)o;
    return tu_parse_duration(v, &G.status_interval_ns) ? "bad duration" : NULL;
}

typedef struct optdef {
    const char *name;
    opt_fn fn;
    bool is_bool; /* may be given without a value */
    const char *help;
} optdef;

static const optdef opts[] = {
    {"name", o_name, false, "job name; on the command line, starts a new job"},
    {"backend", o_backend, false, "sqlite:memory|sqlite:PATH|fs:PATH[?fanout=1]|redis[s]://[USER:PASS@]HOST:PORT[,...][/prefix][?opts]|sqlite-raw:PATH|lmdb:PATH|rocksdb:PATH"},
    {"rw", o_rw, false, "read|write|randread|randwrite|rw|randrw|cas|scan|insert"},
    {"readwrite", o_rw, false, NULL},
    {"rwmixread", o_rwmixread, false, "percent of reads in a mixed workload"},
    {"rwmixwrite", o_rwmixwrite, false, "percent of writes in a mixed workload"},
    {"iodepth", o_iodepth, false, "operations in flight per job"},
    {"numjobs", o_numjobs, false, "jobs (threads, one kv_loop each) on one shared store"},
    {"store_per_job", o_store_per_job, true, "one store per job instead of one shared store"},
    {"store_thread", o_store_thread, true, "serve the store from a thread of its own even with one job (the default for a shared store with --numjobs > 1)"},
    {"runtime", o_runtime, false, "stop after this long (s, or 500ms, 2m)"},
    {"time_based", o_time_based, true, "run for --runtime even if --number_ios is reached"},
    {"ramp_time", o_ramp, false, "run this long before measuring"},
    {"number_ios", o_number_ios, false, "stop each job after this many ops"},
    {"rate_iops", o_rate_iops, false, "open loop: start this many ops/s per job"},
    {"random_distribution", o_dist, false, "uniform|zipf:THETA|latest[:THETA]"},
    {"percentile_list", o_pcts, false, "e.g. 50:90:99:99.9:99.99"},
    {"output_format", o_output_format, false, "normal|json"},
    {"output", o_output, false, "write the report to this file"},
    {"status_interval", o_status_interval, false, "print interim IOPS this often"},
    {"keys", o_keys, false, "number of keys (k/m suffix x1000)"},
    {"key_size", o_key_size, false, "key id length in bytes"},
    {"value_size", o_value_size, false, "value size (k/m suffix x1024)"},
    {"bs", o_value_size, false, NULL},
    {"batch", o_batch, false, "records per write call (kv_put_many)"},
    {"atomic", o_atomic, true, "batches with kv_put_atomic where supported"},
    {"load", o_load, true, "populate the keys before the run"},
    {"sync", o_sync, false, "full|normal|none"},
    {"workload", o_workload, false, "ycsb-a .. ycsb-f"},
    {"key_dirs", o_key_dirs, false, "first key level: /dNN/kNNNN (0: flat keys)"},
    {"scan_length", o_scan_length, false, "largest scan (records)"},
    {"scan_mode", o_scan_mode, false, "first|offset|keyset: what a scan reads"},
    {"pool_threads", o_pool_threads, false, "kv_pool threads (0: CPUs)"},
    {"max_retries", o_max_retries, false, "attempts of a write/cas on conflicts"},
    {"cas_retries", o_max_retries, false, NULL},
    {"randseed", o_seed, false, "random seed"},
    {"keep", o_keep, true, "keep the default temporary store"},
    {"write_lat_log", o_lat_log, false, "latency log per job: NAME_lat.N.log (fio's format)"},
    {"write_iops_log", o_iops_log, false, "IOPS log per job: NAME_iops.N.log (fio's format)"},
    {"log_avg_msec", o_log_avg_msec, false, "average the logs over windows of this many ms"},
    {"log_max_value", o_log_max_value, true, "with log_avg_msec: log each window's maximum latency"},
};

static const optdef *find_opt(const char *name, size_t len)
{
    char norm[64];
    if (len >= sizeof norm)
        return NULL;
    for (size_t i = 0; i < len; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    norm[len] = '\0';
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        if (!strcmp(opts[i].name, norm))
            return &opts[i];
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Option lists: (option, value) pairs applied in order                    */
/* ------------------------------------------------------------------------ */

typedef struct pair {
    const optdef *def;
    char *val;
    char where[128]; /* "file.fio:12" or "command line" */
} pair;

typedef struct plist {
    pair *p;
    size_t n, cap;
} plist;

static int plist_add(plist *l, const optdef *d, const char *val,
                     const char *where)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        pair *p = realloc(l->p, cap * sizeof *p);
        if (!p)
            return -1;
        l->p = p;
        l->cap = cap;
    }
    pair *x = &l->p[l->n];
    x->def = d;
    x->val = strdup(val);
    if (!x->val)
        return -1;
    snprintf(x->where, sizeof x->where, "%s", where);
    l->n++;
    return 0;
}

static int plist_copy(plist *dst, const plist *src)
{
    for (size_t i = 0; i < src->n; i++)
        if (plist_add(dst, src->p[i].def, src->p[i].val, src->p[i].where))
            return -1;
    return 0;
}

static void plist_free(plist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->p[i].val);
    free(l->p);
    memset(l, 0, sizeof *l);
}

/* Apply l to o: a preset (--workload) first, wherever it was given, so
 * that the options given with it override its settings in any order. */
static int plist_apply(const plist *l, jobopts *o)
{
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < l->n; i++) {
            const pair *x = &l->p[i];
            if ((x->def->fn == o_workload) != (pass == 0))
                continue;
            const char *e = x->def->fn(o, x->val);
            if (e) {
                fprintf(stderr, "kvbench: %s: --%s=%s: %s\n", x->where,
                        x->def->name, x->val, e);
                return -1;
            }
        }
    }
    return 0;
}

typedef struct jobdef {
    char name[64];
    plist pl;
    bool from_file;
} jobdef;

typedef struct jobdefs {
    jobdef *j;
    size_t n, cap;
} jobdefs;

static jobdef *jobdefs_add(jobdefs *d, const char *name, bool from_file)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 4;
        jobdef *j = realloc(d->j, cap * sizeof *j);
        if (!j)
            return NULL;
        d->j = j;
        d->cap = cap;
    }
    jobdef *j = &d->j[d->n++];
    memset(j, 0, sizeof *j);
    snprintf(j->name, sizeof j->name, "%s", name);
    j->from_file = from_file;
    return j;
}

/* ------------------------------------------------------------------------ */
/* INI job files                                                            */
/* ------------------------------------------------------------------------ */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                 s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static int parse_jobfile(const char *path, jobdefs *jobs)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) {
        fprintf(stderr, "kvbench: %s: %s\n", path, strerror(errno));
        return -1;
    }
    plist globals = {0};
    jobdef *cur = NULL;
    bool in_global = false;
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        char where[128];
        snprintf(where, sizeof where, "%s:%u", path, lineno);
        char *s = trim(line);
        if (!*s || *s == ';' || *s == '#')
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end || trim(end + 1)[0]) {
                fprintf(stderr, "kvbench: %s: bad section header\n", where);
                rc = -1;
                break;
            }
            *end = '\0';
            char *name = trim(s + 1);
            if (!*name) {
                fprintf(stderr, "kvbench: %s: empty section name\n", where);
                rc = -1;
                break;
            }
            if (!strcmp(name, "global")) {
                in_global = true;
                cur = NULL;
                continue;
            }
            in_global = false;
            cur = jobdefs_add(jobs, name, true);
            if (!cur || plist_copy(&cur->pl, &globals) ||
                plist_add(&cur->pl, find_opt("name", 4), name, where)) {
                fprintf(stderr, "kvbench: out of memory\n");
                rc = -1;
                break;
            }
            continue;
        }
        if (!in_global && !cur) {
            fprintf(stderr, "kvbench: %s: option outside a section "
                            "(start with [global] or [jobname])\n",
                    where);
            rc = -1;
            break;
        }
        char *eq = strchr(s, '=');
        char *key = s, *val = NULL;
        if (eq) {
            *eq = '\0';
            key = trim(s);
            val = trim(eq + 1);
        }
        const optdef *d = find_opt(key, strlen(key));
        if (!d) {
            fprintf(stderr, "kvbench: %s: unknown option '%s'\n", where, key);
            rc = -1;
            break;
        }
        if (!val) {
            if (!d->is_bool) {
                fprintf(stderr, "kvbench: %s: option '%s' needs a value\n",
                        where, key);
                rc = -1;
                break;
            }
            val = "1";
        }
        if (plist_add(in_global ? &globals : &cur->pl, d, val, where)) {
            fprintf(stderr, "kvbench: out of memory\n");
            rc = -1;
            break;
        }
    }
    free(line);
    plist_free(&globals);
    if (f != stdin)
        fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */
/* ------------------------------------------------------------------------ */

static int finalize(jobopts *o)
{
    const char *e = NULL;
    if (o->time_based && !o->runtime_ns)
        e = "--time_based needs --runtime";
    else if (o->rate_iops < 0)
        e = "--rate_iops must be positive";
    if (e) {
        fprintf(stderr, "kvbench: job '%s': %s\n", o->name, e);
        return -1;
    }
    char err[256];
    if (kvb_check(o, err, sizeof err)) {
        fprintf(stderr, "kvbench: job '%s': %s\n", o->name, err);
        return -1;
    }
    if (!o->backend[0] && !o->load_set)
        o->load = true; /* the temporary store starts empty: fill it */
    if (o->time_based)
        o->number_ios = 0;
    else if (!o->number_ios && !o->runtime_ns)
        o->number_ios = o->keys; /* one pass over the keys per job */
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reports                                                                  */
/* ------------------------------------------------------------------------ */

static bool op_used(const jobopts *o, const jobresult *r, int op)
{
    return o->op_a == op || (!o->op_b_none && o->op_b == op) ||
           r->st[op].calls > 0;
}

static void fmt_bytes(char *buf, size_t n, double b, bool binary)
{
    const char *const bu[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    const char *const du[] = {"B", "kB", "MB", "GB", "TB"};
    double base = binary ? 1024 : 1000;
    int i = 0;
    while (b >= 10 * base && i < 4) {
        b /= base;
        i++;
    }
    snprintf(buf, n, "%.*f%s", b < 100 && i ? 1 : 0, b, binary ? bu[i] : du[i]);
}

static void fmt_count(char *buf, size_t n, double v)
{
    if (v >= 1e9)
        snprintf(buf, n, "%.2fG", v / 1e9);
    else if (v >= 1e6)
        snprintf(buf, n, "%.2fM", v / 1e6);
    else if (v >= 1e4)
        snprintf(buf, n, "%.1fk", v / 1e3);
    else
        snprintf(buf, n, "%.0f", v);
}

static const char *sync_label(int s)
{
    return s == SYNC_FULL ? "full" : s == SYNC_NONE ? "none" : "normal";
}

static const char *dist_label(const jobopts *o, char *buf, size_t n)
{
    if (o->seq)
        return "sequential";
    if (o->dist == DIST_UNIFORM)
        return "uniform";
    snprintf(buf, n, "%s:%g", o->dist == DIST_ZIPF ? "zipf" : "latest",
             o->theta);
    return buf;
}

static void print_header(FILE *f, const jobopts *o, int gid)
{
    char db[32];
    fprintf(f,
            "%s: (g=%d): rw=%s, backend=%s, iodepth=%u, numjobs=%u, "
            "keys=%" PRIu64 ", value_size=%" PRIu64 ", batch=%u, sync=%s, "
            "distribution=%s\n",
            o->name, gid, o->rw, o->backend[0] ? o->backend : "sqlite:(temporary file)",
            o->iodepth, o->numjobs, o->keys, o->value_size, o->batch,
            sync_label(o->sync), dist_label(o, db, sizeof db));
}

static void print_normal(FILE *f, const jobopts *o, const jobresult *r, int gid)
{
    char tbuf[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(tbuf, sizeof tbuf, "%a %b %e %H:%M:%S %Y", &tm);
    fprintf(f, "%s: (groupid=%d, jobs=%u): err=%3d: pid=%d: %s\n", o->name,
            gid, o->numjobs, r->err ? -r->err : 0, (int)getpid(), tbuf);
    if (r->err)
        fprintf(f, "  error: %s: %s\n", kv_err_name(r->err), r->errmsg);
    double secs = (double)r->elapsed_ns / 1e9;
    for (int op = 0; op < OP__N; op++) {
        const opstats *s = &r->st[op];
        if (!op_used(o, r, op))
            continue;
        char iops[32], bw[32], bwd[32], io[32];
        double rate = secs > 0 ? (double)s->ops / secs : 0;
        fmt_count(iops, sizeof iops, rate);
        fmt_bytes(bw, sizeof bw, secs > 0 ? (double)s->bytes / secs : 0, true);
        fmt_bytes(bwd, sizeof bwd, secs > 0 ? (double)s->bytes / secs : 0, false);
        fmt_bytes(io, sizeof io, (double)s->bytes, true);
        fprintf(f, "  %s: IOPS=%s, BW=%s/s (%s/s)(%s/%.0fmsec)\n", op_names[op],
                iops, bw, bwd, io, secs * 1e3);
        if (o->batch > 1 && (op == OP_WRITE || op == OP_INSERT))
            fprintf(f, "    (IOPS counts records; %" PRIu64 " calls of up to %u "
                       "records; latency is per call)\n",
                    s->calls, o->batch);
        if (op == OP_SCAN)
            fprintf(f, "    (IOPS counts records; %" PRIu64 " scans of up to %u "
                       "records%s; latency is per scan)\n",
                    s->calls, o->scan_length,
                    o->scan_mode == SCAN_OFFSET   ? ", pages by offset"
                    : o->scan_mode == SCAN_KEYSET ? ", pages by after"
                                                  : "");
        const hist *h = &s->h;
        if (h->count) {
            double mean = hist_mean(h);
            const char *unit = "usec";
            double div = 1e3;
            if (mean < 10e3) {
                unit = "nsec";
                div = 1;
            } else if (mean >= 10e6) {
                unit = "msec";
                div = 1e6;
            }
            fprintf(f, "    lat (%s): min=%.0f, max=%.0f, avg=%.2f, stdev=%.2f\n",
                    unit, (double)h->min / div, (double)h->max / div,
                    mean / div, hist_stddev(h) / div);
            fprintf(f, "    lat percentiles (%s):\n", unit);
            for (unsigned i = 0; i < o->npcts; i++) {
                if (i % 4 == 0)
                    fprintf(f, "     |");
                fprintf(f, " %6.2fth=[%6.0f]%s", o->pcts[i],
                        (double)hist_percentile(h, o->pcts[i]) / div,
                        i + 1 == o->npcts ? "" : ",");
                if (i % 4 == 3 || i + 1 == o->npcts)
                    fputc('\n', f);
            }
        }
        fprintf(f, "    calls=%" PRIu64 ", not-found=%" PRIu64
                   ", conflicts=%" PRIu64 ", retries=%" PRIu64
                   ", gave-up=%" PRIu64 ", token-reads=%" PRIu64
                   ", errors=%" PRIu64 "\n",
                s->calls, s->notfound, s->conflicts, s->retries, s->failed,
                s->refreshes, s->errors);
    }
    double el = r->wall_ns ? (double)r->wall_ns / 1e9 : 1;
    fprintf(f, "  cpu          : usr=%.2f%%, sys=%.2f%%, ctx=%ld, majf=%ld, minf=%ld\n",
            100.0 * r->usr_s / el, 100.0 * r->sys_s / el, r->ctx, r->majf, r->minf);
    char rss[32];
    fmt_bytes(rss, sizeof rss, (double)r->peak_rss_kib * 1024, true);
    fprintf(f, "  mem          : peak-rss=%s (process, getrusage)\n", rss);
    if (o->load)
        fprintf(f, "  load         : %" PRIu64 " records in %.2fs (not measured)\n",
                r->loaded, (double)r->load_ns / 1e9);
    fprintf(f, "  store        : %s\n", r->store);
    fprintf(f, "  driver       : %s\n", r->driver);
    fprintf(f, "\nRun status group %d (all jobs):\n", gid);
    for (int op = 0; op < OP__N; op++) {
        const opstats *s = &r->st[op];
        if (!op_used(o, r, op))
            continue;
        char iops[32], bw[32];
        fmt_count(iops, sizeof iops, secs > 0 ? (double)s->ops / secs : 0);
        fmt_bytes(bw, sizeof bw, secs > 0 ? (double)s->bytes / secs : 0, true);
        fprintf(f, "  %6s: iops=%s, bw=%s/s, ops=%" PRIu64 ", run=%.0fmsec\n",
                op_names[op], iops, bw, s->ops, secs * 1e3);
    }
    fputc('\n', f);
}

static void json_opts(FILE *f, const jobopts *o)
{
    char db[32];
    fprintf(f, "      \"job options\" : {\n");
    fprintf(f, "        \"name\" : ");
    tu_json_str(f, o->name, strlen(o->name));
    fprintf(f, ",\n        \"backend\" : ");
    const char *b = o->backend[0] ? o->backend : "sqlite:(temporary file)";
    tu_json_str(f, b, strlen(b));
    fprintf(f, ",\n        \"rw\" : ");
    tu_json_str(f, o->rw, strlen(o->rw));
    fprintf(f,
            ",\n        \"iodepth\" : \"%u\",\n        \"numjobs\" : \"%u\",\n"
            "        \"keys\" : \"%" PRIu64 "\",\n        \"value_size\" : \"%" PRIu64 "\",\n"
            "        \"batch\" : \"%u\",\n        \"sync\" : \"%s\",\n"
            "        \"random_distribution\" : \"%s\",\n"
            "        \"rwmixread\" : \"%d\",\n        \"runtime_ms\" : \"%" PRIu64 "\",\n"
            "        \"ramp_time_ms\" : \"%" PRIu64 "\",\n        \"rate_iops\" : \"%.0f\",\n"
            "        \"load\" : \"%d\"\n      },\n",
            o->iodepth, o->numjobs, o->keys, o->value_size, o->batch,
            sync_label(o->sync), dist_label(o, db, sizeof db),
            o->rwmixread >= 0 ? o->rwmixread : o->mix_default,
            o->runtime_ns / 1000000u, o->ramp_ns / 1000000u, o->rate_iops,
            o->load);
}

static void print_json_job(FILE *f, const jobopts *o, const jobresult *r,
                           int gid, bool last)
{
    double secs = (double)r->elapsed_ns / 1e9;
    fprintf(f, "    {\n      \"jobname\" : ");
    tu_json_str(f, o->name, strlen(o->name));
    fprintf(f, ",\n      \"groupid\" : %d,\n      \"error\" : %d,\n", gid,
            r->err ? -r->err : 0);
    fprintf(f, "      \"errmsg\" : ");
    tu_json_str(f, r->errmsg, strlen(r->errmsg));
    fprintf(f, ",\n");
    json_opts(f, o);
    fprintf(f, "      \"store\" : ");
    tu_json_str(f, r->store, strlen(r->store));
    fprintf(f, ",\n      \"driver\" : ");
    tu_json_str(f, r->driver, strlen(r->driver));
    fprintf(f, ",\n      \"elapsed\" : %" PRIu64 ",\n      \"runtime_ns\" : %" PRIu64 ",\n",
            r->elapsed_ns / 1000000000u, r->elapsed_ns);
    fprintf(f, "      \"ops\" : {\n");
    bool first = true;
    for (int op = 0; op < OP__N; op++) {
        const opstats *s = &r->st[op];
        if (!op_used(o, r, op))
            continue;
        const hist *h = &s->h;
        fprintf(f, "%s        \"%s\" : {\n", first ? "" : ",\n", op_names[op]);
        first = false;
        fprintf(f,
                "          \"io_bytes\" : %" PRIu64 ",\n          \"io_kbytes\" : %" PRIu64 ",\n"
                "          \"bw_bytes\" : %.0f,\n          \"bw\" : %.0f,\n"
                "          \"iops\" : %f,\n          \"runtime\" : %.0f,\n"
                "          \"total_ios\" : %" PRIu64 ",\n          \"calls\" : %" PRIu64 ",\n"
                "          \"not_found\" : %" PRIu64 ",\n          \"conflicts\" : %" PRIu64 ",\n"
                "          \"retries\" : %" PRIu64 ",\n          \"gave_up\" : %" PRIu64 ",\n"
                "          \"token_reads\" : %" PRIu64 ",\n          \"errors\" : %" PRIu64 ",\n",
                s->bytes, s->bytes / 1024, secs > 0 ? (double)s->bytes / secs : 0,
                secs > 0 ? (double)s->bytes / secs / 1024 : 0,
                secs > 0 ? (double)s->ops / secs : 0, secs * 1e3, s->ops,
                s->calls, s->notfound, s->conflicts, s->retries, s->failed,
                s->refreshes, s->errors);
        fprintf(f,
                "          \"lat_ns\" : {\n            \"min\" : %" PRIu64 ",\n"
                "            \"max\" : %" PRIu64 ",\n            \"mean\" : %f,\n"
                "            \"stddev\" : %f,\n            \"N\" : %" PRIu64 ",\n"
                "            \"percentile\" : {\n",
                h->count ? h->min : 0, h->max, hist_mean(h), hist_stddev(h),
                h->count);
        for (unsigned i = 0; i < o->npcts; i++)
            fprintf(f, "              \"%f\" : %" PRIu64 "%s\n", o->pcts[i],
                    hist_percentile(h, o->pcts[i]),
                    i + 1 == o->npcts ? "" : ",");
        fprintf(f, "            }\n          }\n        }");
    }
    double el = r->wall_ns ? (double)r->wall_ns / 1e9 : 1;
    fprintf(f, "\n      },\n");
    fprintf(f,
            "      \"usr_cpu\" : %f,\n      \"sys_cpu\" : %f,\n"
            "      \"usr_cpu_s\" : %f,\n      \"sys_cpu_s\" : %f,\n"
            "      \"ctx\" : %ld,\n      \"majf\" : %ld,\n      \"minf\" : %ld,\n"
            "      \"peak_rss_kib\" : %ld,\n      \"loaded\" : %" PRIu64 ",\n"
            "      \"load_ns\" : %" PRIu64 "\n    }%s\n",
            100.0 * r->usr_s / el, 100.0 * r->sys_s / el, r->usr_s, r->sys_s,
            r->ctx, r->majf, r->minf, r->peak_rss_kib, r->loaded, r->load_ns,
            last ? "" : ",");
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvbench [--option=value ...] [jobfile ...]\n"
            "\n"
            "fio-style load generator for kvstore (and peers for comparison).\n"
            "Options before the first --name apply to every job; each --name\n"
            "starts a job of its own.  Job files are INI files with a [global]\n"
            "section and one section per job; command-line options given before\n"
            "any --name override every job of the files.\n\noptions:\n");
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        if (opts[i].help)
            fprintf(f, "  --%-20s %s\n", opts[i].name, opts[i].help);
    fprintf(f, "  --%-20s %s\n  --%-20s %s\n", "help", "this text", "version",
            "print versions");
    fprintf(f, "\nexample:\n  kvbench --name=w --backend=sqlite:/tmp/kv.db "
               "--rw=randwrite --iodepth=64 \\\n          --keys=100000 "
               "--value-size=100 --runtime=10 --time_based\n\n"
               "exit status: 0 ok, 1 a job failed or a signal stopped the run,\n"
               "2 usage error.  See kvbench(1).\n");
}

/*
 * SIGINT, SIGTERM: the first stops the run as fio does: the jobs issue
 * nothing more and cancel what is in flight (the main thread wakes their
 * loops: bench_run.c, wake_jobs), the stores close, and the report of what
 * completed is printed (exit status 1).  A second one ends the process at
 * once, by that signal.  Only async-signal-safe calls here.
 */
static atomic_int signals;

static void on_signal(int sig)
{
    if (atomic_fetch_add(&signals, 1) > 0) {
        signal(sig, SIG_DFL); /* delivered when this handler returns */
        raise(sig);
        return;
    }
    atomic_store(&kvb_stop, 1);
    static const char msg[] = "\nkvbench: terminating on a signal: stopping "
                              "the jobs (a second one exits at once)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w; /* a message only: nothing to do if it cannot be written */
}

int main(int argc, char **argv)
{
    plist cli_globals = {0};
    jobdefs cli_jobs = {0}, file_jobs = {0};
    jobdef *cur = NULL;
    int rc = EXIT_USAGE;
    jobopts *jo = NULL;
    jobresult *res = NULL;
    size_t njobs = 0;
    FILE *out = stdout;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            rc = 0;
            goto done;
        }
        if (!strcmp(a, "--version") || !strcmp(a, "-V")) {
            printf("kvbench-%s (kvstore %s)\npeers: sqlite-raw%s%s\n",
                   KVBENCH_VERSION, kv_version_string(),
                   peer_available(TU_LMDB) ? " lmdb" : "",
                   peer_available(TU_ROCKSDB) ? " rocksdb" : "");
            rc = 0;
            goto done;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (parse_jobfile(a, &file_jobs))
                goto done;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const optdef *d = find_opt(name, nl);
        if (!d) {
            fprintf(stderr, "kvbench: unknown option '%.*s' (see --help)\n",
                    (int)nl + 2, a);
            goto done;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (d->is_bool)
                val = "1";
            else if (i + 1 < argc)
                val = argv[++i];
            else {
                fprintf(stderr, "kvbench: option --%s needs a value\n", d->name);
                goto done;
            }
        }
        if (d->fn == o_name) {
            cur = jobdefs_add(&cli_jobs, val, false);
            if (!cur)
                goto oom;
        }
        if (plist_add(cur ? &cur->pl : &cli_globals, d, val, "command line"))
            goto oom;
    }

    njobs = file_jobs.n + cli_jobs.n;
    if (njobs == 0)
        njobs = 1;
    jo = calloc(njobs, sizeof *jo);
    res = calloc(njobs, sizeof *res);
    if (!jo || !res)
        goto oom;
    {
        size_t k = 0;
        for (size_t i = 0; i < file_jobs.n; i++, k++) {
            jobopts_defaults(&jo[k]);
            if (plist_apply(&file_jobs.j[i].pl, &jo[k]) ||
                plist_apply(&cli_globals, &jo[k]))
                goto done;
        }
        for (size_t i = 0; i < cli_jobs.n; i++, k++) {
            jobopts_defaults(&jo[k]);
            if (plist_apply(&cli_globals, &jo[k]) ||
                plist_apply(&cli_jobs.j[i].pl, &jo[k]))
                goto done;
        }
        if (k == 0) {
            jobopts_defaults(&jo[0]);
            if (plist_apply(&cli_globals, &jo[0]))
                goto done;
        }
        for (size_t i = 0; i < njobs; i++)
            if (finalize(&jo[i]))
                goto done;
    }

    if (G.output[0]) {
        out = fopen(G.output, "w");
        if (!out) {
            fprintf(stderr, "kvbench: --output=%s: %s\n", G.output,
                    strerror(errno));
            out = stdout;
            rc = EXIT_USAGE;
            goto done;
        }
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
        sigaction(SIGTERM, &sa, NULL) != 0 ||
        signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "kvbench: cannot handle signals: %s\n",
                strerror(errno));
        rc = EXIT_RUN;
        goto done;
    }

    runenv env = {isatty(STDERR_FILENO) != 0, G.status_interval_ns, out, G.json};
    if (!G.json) {
        for (size_t i = 0; i < njobs; i++)
            print_header(out, &jo[i], (int)i);
        fprintf(out, "kvbench-%s (kvstore %s)\nStarting %zu job section%s "
                     "(one after another)\n",
                KVBENCH_VERSION, kv_version_string(), njobs, njobs > 1 ? "s" : "");
        fflush(out);
    } else if (G.status_interval_ns) {
        fprintf(stderr, "kvbench: --status-interval prints nothing with "
                        "--output-format=json\n");
    }
    rc = 0;
    size_t ran = 0;
    for (size_t i = 0; i < njobs; i++) {
        if (atomic_load(&kvb_stop))
            break;
        kvb_run(&jo[i], &res[i], &env);
        ran++;
        if (res[i].err) {
            rc = EXIT_RUN;
            fprintf(stderr, "kvbench: job '%s': %s\n", jo[i].name, res[i].errmsg);
        }
        if (!G.json) {
            print_normal(out, &jo[i], &res[i], (int)i);
            fflush(out);
        }
    }
    if (G.json) {
        time_t now = time(NULL);
        char tbuf[64];
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(tbuf, sizeof tbuf, "%a %b %e %H:%M:%S %Y", &tm);
        fprintf(out,
                "{\n  \"kvbench version\" : \"kvbench-%s\",\n"
                "  \"kvstore version\" : \"%s\",\n  \"timestamp\" : %lld,\n"
                "  \"time\" : \"%s\",\n  \"jobs\" : [\n",
                KVBENCH_VERSION, kv_version_string(), (long long)now, tbuf);
        for (size_t i = 0; i < ran; i++)
            print_json_job(out, &jo[i], &res[i], (int)i, i + 1 == ran);
        fprintf(out, "  ]\n}\n");
    }
    if (atomic_load(&kvb_stop)) {
        fprintf(stderr, "kvbench: interrupted\n");
        rc = EXIT_RUN;
    }
    if (fflush(out) != 0 || ferror(out)) {
        fprintf(stderr, "kvbench: writing the report: %s\n", strerror(errno));
        rc = EXIT_RUN;
    }
    goto done;
oom:
    fprintf(stderr, "kvbench: out of memory\n");
    rc = EXIT_RUN;
done:
    if (out != stdout)
        fclose(out);
    plist_free(&cli_globals);
    for (size_t i = 0; i < cli_jobs.n; i++)
        plist_free(&cli_jobs.j[i].pl);
    for (size_t i = 0; i < file_jobs.n; i++)
        plist_free(&file_jobs.j[i].pl);
    free(cli_jobs.j);
    free(file_jobs.j);
    free(jo);
    free(res);
    return rc;
}
