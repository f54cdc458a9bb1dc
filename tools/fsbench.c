/*
 * fsbench - durable puts/s of the filesystem backend, with what each put
 * costs in fsyncs (the backend's own counters): one directory or keys
 * spread over 64, the flat and the fan-out layout, inserts and
 * replacements, at depths 1, 8 and 64, with and without fsync; and, for
 * comparison on the same machine at the same time, the same durable insert
 * made with plain blocking syscalls on one thread.  Case "raw-threads":
 * what the plain way gets at depth 64, beside the fs row of bench.sh's
 * overtime section: 64 threads, each in a directory of its own, each a
 * loop of reading a record and, half the time, replacing it durably (write
 * a temp file, fdatasync, rename over the record, fsync the directory),
 * with the replaces' percentiles and the 100 ms windows holding one over
 * 10 ms.
 *
 * kvbench measures the fs backend's puts/s and latency through the public
 * API (tools/bench.sh, section fs); this program reads the backend's
 * internal counters (file and directory fsyncs, recycled files per put),
 * so it links libkvstore_core.  Usage:
 *   fsbench [dir [label]]   label: only the cases whose label holds it
 * The stores go in dir (default a new directory under $TMPDIR or /tmp,
 * removed at the end); dir must be on the disk being measured.
 */
#include "config.h"

#include "kvstore.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* fs.c's counters: puts, deletes, gets, file fsyncs, dir fsyncs, mkdirs,
 * short writes, temp files left behind, puts that overwrote a spare file,
 * puts that left the replaced file as a spare (exchanged). */
void kv__fs_stats(const kv_store *s, uint64_t out[10]);
enum {
    S_PUTS,
    S_DELS,
    S_GETS,
    S_FFSYNC,
    S_DFSYNC,
    S_MKDIR,
    S_SHORT,
    S_LEAK,
    S_RECYCLED,
    S_EXCHANGED,
    S_N
};

typedef struct env {
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
} env;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "fsbench: %s: %s (%s)\n", what, kv_strerror(rc),
            kv_last_errmsg());
    exit(1);
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL) {
        fprintf(stderr, "fsbench: out of memory\n");
        exit(1);
    }
    return p;
}

/* Put keys[order[i]] for i < n, depth at once, with the tokens in tok
 * (updated); the seconds it took. */
static double bench_puts(env *e, kv_key **keys, const int *order, int n,
                         const void *val, size_t len, uint64_t *tok, int depth)
{
    kv_fut **futs = xcalloc((size_t)depth, sizeof *futs);
    int *which = xcalloc((size_t)depth, sizeof *which);
    int next = 0, done = 0;
    double t0 = now_s();
    while (done < n) {
        for (int i = 0; i < depth; i++) {
            if (futs[i] != NULL && kv_fut_done(futs[i])) {
                if (kv_fut_status(futs[i]) != KV_OK) {
                    fprintf(stderr, "put: %s\n", kv_fut_errmsg(futs[i]));
                    exit(1);
                }
                tok[which[i]] = kv_fut_token(futs[i]);
                kv_fut_free(futs[i]);
                futs[i] = NULL;
                done++;
            }
            if (futs[i] == NULL && next < n) {
                which[i] = order[next++];
                kv_record r = {keys[which[i]], (void *)val, len, tok[which[i]]};
                futs[i] = kv_put(e->s, &r, NULL);
            }
        }
        if (done < n && kv_loop_run(e->loop, KV_RUN_ONCE) < 0)
            die("kv_loop_run", KV_ERROR);
    }
    double dt = now_s() - t0;
    free(futs);
    free(which);
    return dt;
}

/* nputs puts of fresh keys (inserts) at depth, or with replace, nputs
 * replacements of those keys in random order after inserting them. */
static const char *bench_only; /* run only labels holding this */

static void bench_one(const char *dir, const char *label, unsigned flags,
                      int depth, int nputs, int ndirs, bool replace)
{
    if (bench_only != NULL && strstr(label, bench_only) == NULL)
        return;
    char path[4300];
    snprintf(path, sizeof path, "%s/%s-d%d", dir, label, depth);
    env e;
    memset(&e, 0, sizeof e);
    int rc = kv_loop_new(&e.loop, NULL);
    if (rc != KV_OK)
        die("kv_loop_new", rc);
    rc = kv_pool_new(&e.pool, 2);
    if (rc != KV_OK)
        die("kv_pool_new", rc);
    rc = kv_fs_open(&e.s, e.loop, e.pool, path, 0, flags);
    if (rc != KV_OK) {
        fprintf(stderr, "open %s: %s\n", path, kv_last_errmsg());
        exit(1);
    }
    kv_key **keys = xcalloc((size_t)nputs, sizeof *keys);
    int *order = xcalloc((size_t)nputs, sizeof *order);
    uint64_t *tok = xcalloc((size_t)nputs, sizeof *tok);
    for (int i = 0; i < nputs; i++) {
        char p[64];
        if (ndirs <= 1)
            snprintf(p, sizeof p, "/bench/k%07d", i);
        else
            snprintf(p, sizeof p, "/bench%03d/k%07d", i % ndirs, i);
        rc = kv_key_parse(&keys[i], p);
        if (rc != KV_OK)
            die(p, rc);
        order[i] = i;
    }
    char val[100];
    memset(val, 'v', sizeof val);
    /* Warm up: make the directories. */
    int warm = ndirs > 1 ? ndirs : 1;
    bench_puts(&e, keys, order, warm, "warm", 4, tok, 1);
    uint64_t s0[S_N], s1[S_N];
    kv__fs_stats(e.s, s0);
    double dt = bench_puts(&e, keys, order + warm, nputs - warm, val,
                           sizeof val, tok, depth);
    if (replace) {
        uint64_t x = 88172645463325252ull;
        for (int i = nputs - 1; i > 0; i--) {
            int j = (int)(rnd(&x) % (uint64_t)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        kv__fs_stats(e.s, s0);
        dt = bench_puts(&e, keys, order, nputs, val, sizeof val, tok, depth);
    }
    kv__fs_stats(e.s, s1);
    double puts = (double)(s1[S_PUTS] - s0[S_PUTS]);
    printf("%-28s depth %3d: %8.0f puts/s  %.2f file fsyncs/put  %.3f dir "
           "fsyncs/put  %.2f recycled/put  (%d puts, %.2f s)\n",
           label, depth, puts / dt,
           (double)(s1[S_FFSYNC] - s0[S_FFSYNC]) / puts,
           (double)(s1[S_DFSYNC] - s0[S_DFSYNC]) / puts,
           (double)(s1[S_RECYCLED] - s0[S_RECYCLED]) / puts, (int)puts, dt);
    fflush(stdout);
    for (int i = 0; i < nputs; i++)
        kv_key_free(keys[i]);
    free(keys);
    free(order);
    free(tok);
    kv_fut *f = kv_close(e.s);
    rc = kv_wait(f);
    if (rc != KV_OK)
        die("kv_close", rc);
    kv_fut_free(f);
    kv_store_free(e.s);
    if (kv_loop_run(e.loop, KV_RUN_DEFAULT) < 0)
        die("kv_loop_run", KV_ERROR);
    rc = kv_loop_free(e.loop);
    if (rc != KV_OK)
        die("kv_loop_free", rc);
    kv_pool_free(e.pool);
}

/* The same durable insert with plain blocking syscalls on one thread, for
 * comparison on the same machine at the same time. */
static void bench_raw(const char *dir, int n)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/raw", dir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        return;
    }
    int dfd = open(path, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) {
        perror(path);
        return;
    }
    char val[140];
    memset(val, 'v', sizeof val);
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        char name[32], tmp[32];
        snprintf(name, sizeof name, "k%07d.kv", i);
        snprintf(tmp, sizeof tmp, ".tmp-%d", i);
        int fd = openat(dfd, name, O_RDONLY); /* the CAS read: absent */
        if (fd >= 0 && close(fd) != 0)
            perror("raw: close");
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0 || write(fd, val, sizeof val) != (ssize_t)sizeof val ||
            fsync(fd) != 0 || close(fd) != 0 ||
            renameat(dfd, tmp, dfd, name) != 0 || fsync(dfd) != 0) {
            perror("raw");
            break;
        }
    }
    double dt = now_s() - t0;
    printf("%-28s depth %3d: %8.0f puts/s  (blocking syscalls, one "
           "thread)\n",
           "raw syscalls one-dir", 1, n / dt);
    if (close(dfd) != 0)
        perror("raw: close");
}

/* raw-threads: RAW_THREADS threads, each a loop of (read a random record
 * of its directory's RAW_KEYS; half the time also replace it durably) for
 * RAW_SECONDS; the replaces' latencies (read included, as kvbench counts a
 * CAS write). */
enum { RAW_THREADS = 64, RAW_KEYS = 160, RAW_SECONDS = 10, RAW_MAX = 20000 };

typedef struct raw_job {
    int dfd, id;
    double t_end;
    uint64_t seed;
    double *done, *lat; /* completion time (s since start), latency (s) */
    int n;
    double t0;
    int err; /* errno of the call that failed, or 0 */
} raw_job;

static bool raw_read(int dfd, const char *name)
{
    char buf[512];
    int fd = openat(dfd, name, O_RDONLY);
    if (fd < 0)
        return false;
    ssize_t got;
    do
        got = read(fd, buf, sizeof buf);
    while (got < 0 && errno == EINTR);
    return close(fd) == 0 && got > 0;
}

static bool raw_replace(int dfd, const char *name, int id)
{
    char tmp[32], val[140];
    memset(val, 'v', sizeof val);
    snprintf(tmp, sizeof tmp, ".tmp-%d", id);
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return false;
    bool ok = write(fd, val, sizeof val) == (ssize_t)sizeof val &&
              fdatasync(fd) == 0;
    ok = close(fd) == 0 && ok;
    return ok && renameat(dfd, tmp, dfd, name) == 0 && fsync(dfd) == 0;
}

static void *raw_run(void *arg)
{
    raw_job *j = arg;
    for (double t = now_s(); t < j->t_end && j->n < RAW_MAX; t = now_s()) {
        char name[32];
        snprintf(name, sizeof name, "k%07d.kv", (int)(rnd(&j->seed) % RAW_KEYS));
        bool write = rnd(&j->seed) % 2 == 0;
        double t1 = now_s();
        if (!raw_read(j->dfd, name) ||
            (write && !raw_replace(j->dfd, name, j->id))) {
            j->err = errno != 0 ? errno : EIO;
            break;
        }
        if (write) {
            double t2 = now_s();
            j->done[j->n] = t2 - j->t0;
            j->lat[j->n++] = t2 - t1;
        }
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Close the first n of raw-threads' directory descriptors. */
static void raw_close_dirs(const int *dfds, int n)
{
    for (int t = 0; t < n; t++)
        if (close(dfds[t]) != 0)
            perror("raw-threads: close");
}

static void bench_raw_threads(const char *dir)
{
    /* A directory per thread: no thread waits for another's rename or
     * directory fsync on the directory's lock, only on the journal. */
    int dfds[RAW_THREADS];
    char val[140];
    memset(val, 'v', sizeof val);
    for (int t = 0; t < RAW_THREADS; t++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/raw-threads-%02d", dir, t);
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            perror(path);
            raw_close_dirs(dfds, t);
            return;
        }
        if ((dfds[t] = open(path, O_RDONLY | O_DIRECTORY)) < 0) {
            perror(path);
            raw_close_dirs(dfds, t);
            return;
        }
        for (int i = 0; i < RAW_KEYS; i++) {
            char name[32];
            snprintf(name, sizeof name, "k%07d.kv", i);
            int fd = openat(dfds[t], name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            bool ok = fd >= 0 &&
                      write(fd, val, sizeof val) == (ssize_t)sizeof val;
            if (fd >= 0 && close(fd) != 0)
                ok = false;
            if (!ok) {
                perror("raw-threads: load");
                raw_close_dirs(dfds, t + 1);
                return;
            }
        }
    }
    sync();
    raw_job *jobs = xcalloc(RAW_THREADS, sizeof *jobs);
    pthread_t th[RAW_THREADS];
    double t0 = now_s();
    for (int i = 0; i < RAW_THREADS; i++) {
        jobs[i] = (raw_job){.dfd = dfds[i], .id = i, .t0 = t0,
                            .t_end = t0 + RAW_SECONDS,
                            .seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)};
        jobs[i].done = xcalloc(RAW_MAX, sizeof(double));
        jobs[i].lat = xcalloc(RAW_MAX, sizeof(double));
        if (pthread_create(&th[i], NULL, raw_run, &jobs[i]) != 0)
            die("pthread_create", KV_ENOMEM);
    }
    size_t n = 0;
    for (int i = 0; i < RAW_THREADS; i++) {
        if (pthread_join(th[i], NULL) != 0)
            die("pthread_join", KV_EINVAL);
        if (jobs[i].err != 0)
            fprintf(stderr, "raw-threads: thread %d: %s\n", i,
                    strerror(jobs[i].err));
        n += (size_t)jobs[i].n;
    }
    double *lat = xcalloc(n + 1, sizeof *lat), *done = xcalloc(n + 1, sizeof *done);
    int nwin = RAW_SECONDS * 10 + 1;
    bool *slow = xcalloc((size_t)nwin, sizeof *slow);
    size_t k = 0;
    for (int i = 0; i < RAW_THREADS; i++)
        for (int m = 0; m < jobs[i].n; m++, k++) {
            lat[k] = jobs[i].lat[m];
            done[k] = jobs[i].done[m];
            int w = (int)(done[k] * 10);
            if (lat[k] > 0.010 && w < nwin)
                slow[w] = true;
        }
    qsort(lat, n, sizeof *lat, cmp_double);
    qsort(done, n, sizeof *done, cmp_double);
    double gap = n > 0 ? done[0] : 0;
    for (size_t i = 1; i < n; i++)
        if (done[i] - done[i - 1] > gap)
            gap = done[i] - done[i - 1];
    int nslow = 0, used = 0;
    for (int w = 0; w < nwin; w++) {
        nslow += slow[w];
        used += w * 0.1 < (n > 0 ? done[n - 1] : 0);
    }
    if (n > 0)
        printf("%-28s depth %3d: %8.0f puts/s  p50 %.2f ms  p99 %.2f  "
               "p99.9 %.2f  max %.2f  p99.9/p50 %.1fx  windows %d of %d  "
               "longest gap %.0f ms  (blocking syscalls, %d threads)\n",
               "raw syscalls replace", RAW_THREADS, n / (done[n - 1]),
               lat[n / 2] * 1e3, lat[n * 99 / 100] * 1e3,
               lat[n * 999 / 1000] * 1e3, lat[n - 1] * 1e3,
               lat[n * 999 / 1000] / lat[n / 2], nslow, used, gap * 1e3,
               RAW_THREADS);
    for (int i = 0; i < RAW_THREADS; i++) {
        free(jobs[i].done);
        free(jobs[i].lat);
    }
    free(jobs);
    free(lat);
    free(done);
    free(slow);
    raw_close_dirs(dfds, RAW_THREADS);
}

static int rm_one(const char *path, const struct stat *st, int type,
                  struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if ((type == FTW_DP ? rmdir(path) : unlink(path)) != 0)
        perror(path);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc >= 2 ? argv[1] : NULL;
    bench_only = argc >= 3 ? argv[2] : NULL;
    char own[4096];
    if (dir == NULL) {
        const char *base = getenv("TMPDIR");
        snprintf(own, sizeof own, "%s/kvstore-fsbench-XXXXXX",
                 base ? base : "/tmp");
        if (mkdtemp(own) == NULL) {
            perror(own);
            return 1;
        }
        dir = own;
    }
    const int n1 = 2000, n64 = 20000;
    printf("kvstore fs backend, 100-byte values, inserts, %s\n", dir);
    if (bench_only == NULL)
        bench_raw(dir, n1);
    if (bench_only == NULL || strstr("raw-threads", bench_only) != NULL)
        bench_raw_threads(dir);
    bench_one(dir, "fsync one-dir", 0, 1, n1, 1, false);
    bench_one(dir, "fsync spread-64-dirs", 0, 1, n1, 64, false);
    bench_one(dir, "fsync one-dir", 0, 8, n64 / 2, 1, false);
    bench_one(dir, "fsync one-dir", 0, 64, n64, 1, false);
    bench_one(dir, "fsync one-dir fanout", KV_FS_FANOUT, 64, n64, 1, false);
    bench_one(dir, "fsync spread-64-dirs", 0, 64, n64, 64, false);
    bench_one(dir, "fsync replace one-dir", 0, 64, n64, 1, true);
    bench_one(dir, "fsync replace fanout", KV_FS_FANOUT, 64, n64, 1, true);
    bench_one(dir, "fsync replace 64-dirs", 0, 64, n64, 64, true);
    bench_one(dir, "nofsync one-dir", KV_FS_NO_FSYNC, 1, n64, 1, false);
    bench_one(dir, "nofsync one-dir", KV_FS_NO_FSYNC, 8, n64, 1, false);
    bench_one(dir, "nofsync one-dir", KV_FS_NO_FSYNC, 64, n64, 1, false);
    bench_one(dir, "nofsync spread-64-dirs", KV_FS_NO_FSYNC, 64, n64, 64, false);
    if (dir == own && nftw(own, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        perror(own);
    return 0;
}
