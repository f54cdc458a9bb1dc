/*
 * check_stress.c - load and concurrency: nothing lost, nothing leaked.
 *
 * Lost updates.  16 shared counters, 4 groups of 16 lanes; a lane
 * increments a counter by compare-and-swap (get, then put with the token it
 * read, again from the get on KV_ECONFLICT) until it has made its quota of
 * successful increments.  At the end the counters must add up to exactly the
 * increments reported successful, and the conflicts are counted.
 *   - sqlite-file: the 4 groups are 4 threads, each with its own kv_loop
 *     (made on that thread) and its own store on the same database file,
 *     all on one shared kv_pool: SQLite's locking keeps them consistent.
 *   - redis, redis-cluster: likewise 4 threads, each with its own loop and
 *     its own connection(s) to the same store (one key prefix): the
 *     servers' token scripts keep them consistent.  The cluster row spreads
 *     the counters over its masters (shard=key).
 *   - sqlite-memory and fs: a store belongs to one loop, and neither can be
 *     opened twice on the same data (an in-memory database is private to
 *     its connection; a second kv_fs_open of a root is KV_EBUSY by design),
 *     so the 4 groups run as independent sets of 16 in-flight lanes on one
 *     loop and one store: 64 CAS loops interleaved by the ring.
 *
 * Close under load.  Rounds of: a few iterators (one mid fetch_all, the
 * others with a next pending, one still opening), thousands of puts, gets,
 * deletes and has calls, some loop turns, then kv_close.  Every future
 * must complete exactly once (counted through kv_fut_then), with a status
 * its call allows, and the loop must free cleanly (nothing pending; leaks
 * are left to LeakSanitizer and valgrind).
 *
 * Two processes.  Two children CAS-increment the counters of one SQLite
 * file, each with its own loop, pool and store: no update is lost.  Six
 * processes opening one new SQLite file at the same moment all succeed.
 * An fs root locked by one process is KV_EBUSY in another until it is
 * closed.
 *
 * Redis rows run when tests/redis_env.sh has started servers (KV_TEST_REDIS,
 * KV_TEST_REDIS_CLUSTER, and for rediss, the single server over TLS as
 * its ACL user, KV_TEST_REDIS_TLS; skipped, saying so, otherwise); each
 * test's store
 * has its own key prefix, the name of the test's temporary directory.
 *
 * Environment: KVT_STRESS_SCALE=x multiplies the increments, the rounds
 * and the processes' work (e.g. 0.2 under valgrind; make check-stress uses
 * 10) and the timeouts with them; KVT_BACKEND=name runs one row;
 * KVT_VERBOSE=1 prints the figures (they are printed to stderr always as
 * "check_stress: ..." lines for docs/RELIABILITY.md).
 */
#include "config.h"

#include "store/store_int.h"
#include "testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define NCOUNTERS 16
#define NLANES 16
#define NGROUPS 4

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

static char *tmpdir;

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
}

static void teardown(void)
{
    tu_tmpdir_free(&tmpdir);
}

static double scale(void)
{
    const char *s = getenv("KVT_STRESS_SCALE");
    double x = s != NULL ? atof(s) : 1.0;
    return x > 0 ? x : 1.0;
}

static int scaled(int n)
{
    int v = (int)(n * scale());
    return v < 1 ? 1 : v;
}

typedef struct backend {
    const char *name;
    bool memory;     /* data dies with the store */
    bool fs;
    const char *env; /* Redis: the variable with the servers' URI */
} backend;

static const backend backends[] = {
    {"sqlite-memory", true, false, NULL},
    {"sqlite-file", false, false, NULL},
    {"fs", false, true, NULL},
    {"redis", false, false, "KV_TEST_REDIS"},
    {"redis-cluster", false, false, "KV_TEST_REDIS_CLUSTER"},
    {"rediss", false, false, "KV_TEST_REDIS_TLS"},
};
#define NBACKENDS ((int)(sizeof backends / sizeof backends[0]))

/* Run b's row in test?  (KVT_BACKEND; the servers of a Redis row.) */
static bool selected_(const backend *b, const char *test)
{
    const char *only = getenv("KVT_BACKEND");
    if (only != NULL && only[0] != '\0' && strcmp(only, b->name) != 0)
        return false;
    if (b->env != NULL && getenv(b->env) == NULL) {
        fprintf(stderr,
                "check_stress: %s not set (tests/redis_env.sh sets it when "
                "redis-server is installed): %s %s skipped\n",
                b->env, test, b->name);
        return false;
    }
    return true;
}
#define selected(b) selected_((b), __func__)

/* The SQLite file or fs root of the test, or a Redis store URI whose key
 * prefix is the name of the test's temporary directory. */
static void store_path(const backend *b, char *out, size_t len)
{
    if (b->env != NULL) {
        const char *base = strrchr(tmpdir, '/');
        tu_redis_uri(b->env, base != NULL ? base + 1 : tmpdir, "", out, len);
    } else if (b->memory) {
        snprintf(out, len, "%s", KV_SQLITE_MEMORY);
    } else {
        snprintf(out, len, "%s/%s", tmpdir, b->fs ? "root" : "db.sqlite");
    }
}

static int open_store(const backend *b, kv_store **s, kv_loop *loop,
                      kv_pool *pool, unsigned flags)
{
    char path[4200];
    store_path(b, path, sizeof path);
    if (b->env != NULL)
        return kv_redis_open(s, loop, pool, path, flags);
    if (b->fs)
        return kv_fs_open(s, loop, pool, path, 0, flags);
    return kv_sqlite_open(s, loop, pool, path, flags);
}

/* A loop, a pool of nthreads and b's store on them: the store (all three
 * must open). */
static kv_store *open_env(const backend *b, kv_loop **loop, kv_pool **pool,
                          unsigned nthreads)
{
    ck_assert_kv(kv_loop_new(loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(pool, nthreads), KV_OK);
    kv_store *s = NULL;
    int rc = open_store(b, &s, *loop, *pool, 0);
    ck_assert_msg(rc == KV_OK, "%s: open: %s (%s)", b->name, kv_err_name(rc),
                  kv_last_errmsg());
    return s;
}

static void close_free(kv_store *s)
{
    kv_fut *f = kv_close(s);
    int rc = kv_wait(f);
    ck_assert_msg(rc == KV_OK, "close: %s (%s)", kv_err_name(rc),
                  kv_fut_errmsg(f));
    kv_fut_free(f);
    kv_store_free(s);
}

static void loop_free_clean(kv_loop *loop)
{
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}

/* Close and free s, run loop dry and free it, free pool. */
static void close_env(kv_store *s, kv_loop *loop, kv_pool *pool)
{
    close_free(s);
    loop_free_clean(loop);
    kv_pool_free(pool);
}

/* ------------------------------------------------------------------------ */
/* CAS increment lanes                                                      */
/* ------------------------------------------------------------------------ */

typedef struct group group;

typedef struct lane {
    group *g;
    int id;
    int counter; /* the counter of the increment in progress */
    int left;    /* successful increments still to make */
    int k;       /* increments made (picks the next counter) */
    uint64_t token;
    char buf[24];
} lane;

struct group {
    kv_store *s;
    kv_key *const *keys; /* NCOUNTERS counters (borrowed) */
    lane lanes[NLANES];
    long ok, conflicts;
    int active; /* lanes still running */
    int err;
    char where[160];
};

static void lane_next(lane *l);

static void lane_fail(lane *l, int rc, const char *what, kv_fut *f)
{
    group *g = l->g;
    if (g->err == KV_OK) {
        g->err = rc;
        snprintf(g->where, sizeof g->where, "lane %d: %s: %s (%s)", l->id,
                 what, kv_err_name(rc), f != NULL ? kv_fut_errmsg(f) : "");
    }
    g->active--;
}

static void on_put(kv_fut *f, void *arg)
{
    lane *l = arg;
    int st = kv_fut_status(f);
    kv_fut_free(f);
    if (st == KV_OK) {
        l->g->ok++;
        l->left--;
        l->k++;
    } else if (st == KV_ECONFLICT) {
        l->g->conflicts++; /* someone else won: read again */
    } else {
        lane_fail(l, st, "put", NULL);
        return;
    }
    lane_next(l);
}

static void on_get(kv_fut *f, void *arg)
{
    lane *l = arg;
    group *g = l->g;
    int st = kv_fut_status(f);
    uint64_t value = 0;
    if (st == KV_OK) {
        const kv_record *r = kv_fut_record(f);
        char num[24];
        size_t n = r->len < sizeof num - 1 ? r->len : sizeof num - 1;
        memcpy(num, r->val, n);
        num[n] = '\0';
        value = strtoull(num, NULL, 10);
        l->token = r->token;
    } else if (st == KV_ENOTFOUND) {
        l->token = 0; /* not created yet: insert */
    } else {
        lane_fail(l, st, "get", f);
        kv_fut_free(f);
        return;
    }
    kv_fut_free(f);
    int len = snprintf(l->buf, sizeof l->buf, "%" PRIu64, value + 1);
    kv_record rec = {g->keys[l->counter], l->buf, (size_t)len, l->token};
    kv_fut *p = kv_put(g->s, &rec, NULL);
    if (kv_fut_then(p, on_put, l) != KV_OK) {
        lane_fail(l, KV_ENOMEM, "then", p);
        kv_fut_free(p);
    }
}

static void lane_next(lane *l)
{
    if (l->left == 0) {
        l->g->active--;
        return;
    }
    /* lanes spread over every counter, each lane in its own order */
    l->counter = (l->id * 5 + l->k * 7) % NCOUNTERS;
    kv_fut *f = kv_get(l->g->s, l->g->keys[l->counter], NULL);
    if (kv_fut_then(f, on_get, l) != KV_OK) {
        lane_fail(l, KV_ENOMEM, "then", f);
        kv_fut_free(f);
    }
}

static void group_start(group *g, kv_store *s, kv_key *const *keys,
                        int per_lane, int gid)
{
    memset(g, 0, sizeof *g);
    g->s = s;
    g->keys = keys;
    g->active = NLANES;
    for (int i = 0; i < NLANES; i++) {
        g->lanes[i] = (lane){g, gid * NLANES + i, 0, per_lane, 0, 0, ""};
        lane_next(&g->lanes[i]);
    }
}

/* Run loop until every lane of groups[0..n) has finished. */
static void groups_run(kv_loop *loop, group *gs, int n)
{
    for (;;) {
        int active = 0;
        for (int i = 0; i < n; i++)
            active += gs[i].active;
        if (active == 0)
            return;
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        ck_assert_msg(r >= 0, "kv_loop_run: %s", kv_err_name(r));
        if (r == 0) {
            /* nothing pending but lanes not done: a lost completion */
            active = 0;
            for (int i = 0; i < n; i++)
                active += gs[i].active;
            ck_assert_msg(active == 0, "%d lanes stalled", active);
        }
    }
}

static void make_keys(kv_key **keys)
{
    for (int i = 0; i < NCOUNTERS; i++) {
        char p[32];
        snprintf(p, sizeof p, "/stress/counter:%02d", i);
        ck_assert_kv(kv_key_parse(&keys[i], p), KV_OK);
    }
}

static void free_keys(kv_key **keys)
{
    for (int i = 0; i < NCOUNTERS; i++)
        kv_key_free(keys[i]);
}

/* The sum of the counters (each must exist). */
static uint64_t counters_sum(kv_store *s, kv_key *const *keys)
{
    kv_fut *f = kv_get_many(s, (const kv_key *const *)keys, NCOUNTERS, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, NCOUNTERS);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        char num[24];
        size_t len = r[i].len < sizeof num - 1 ? r[i].len : sizeof num - 1;
        memcpy(num, r[i].val, len);
        num[len] = '\0';
        sum += strtoull(num, NULL, 10);
    }
    kv_fut_free(f);
    return sum;
}

typedef struct thread_arg {
    const backend *b;
    kv_pool *pool;
    kv_key *const *keys;
    int per_lane, gid;
    long ok, conflicts;
    int err;
    char where[200];
} thread_arg;

/* One group on its own thread, loop and store (sqlite-file). */
static void *group_thread(void *arg)
{
    thread_arg *t = arg;
    kv_loop *loop = NULL;
    kv_store *s = NULL;
    int rc = kv_loop_new(&loop, NULL);
    if (rc == KV_OK)
        rc = open_store(t->b, &s, loop, t->pool, 0);
    if (rc != KV_OK) {
        t->err = rc;
        snprintf(t->where, sizeof t->where, "setup: %s", kv_last_errmsg());
        if (loop != NULL)
            kv_loop_free(loop);
        return NULL;
    }
    group g;
    group_start(&g, s, t->keys, t->per_lane, t->gid);
    /* no ck_assert off the test's thread: collect, the main thread checks */
    while (g.active > 0) {
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        if (r < 0 || (r == 0 && g.active > 0)) {
            t->err = r < 0 ? r : KV_ERROR;
            snprintf(t->where, sizeof t->where, "loop: %d lanes stalled (%d)",
                     g.active, r);
            break;
        }
    }
    t->ok = g.ok;
    t->conflicts = g.conflicts;
    if (t->err == KV_OK && g.err != KV_OK) {
        t->err = g.err;
        snprintf(t->where, sizeof t->where, "%s", g.where);
    }
    kv_fut *f = kv_close(s);
    rc = kv_wait(f);
    kv_fut_free(f);
    kv_store_free(s);
    if (rc != KV_OK && t->err == KV_OK) {
        t->err = rc;
        snprintf(t->where, sizeof t->where, "close");
    }
    kv_loop_run(loop, KV_RUN_DEFAULT);
    rc = kv_loop_free(loop);
    if (rc != KV_OK && t->err == KV_OK) {
        t->err = rc;
        snprintf(t->where, sizeof t->where, "kv_loop_free");
    }
    return NULL;
}

/* Half the counters exist at the start ("0"); the others are created by
 * their first increment (an insert race). */
static void seed_counters(kv_store *s, kv_key **keys)
{
    for (int i = 0; i < NCOUNTERS; i += 2) {
        kv_fut *f = kv_put_value(s, keys[i], "0", 1, NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        kv_fut_free(f);
    }
}

START_TEST(test_lost_update)
{
    const backend *b = &backends[_i];
    if (!selected(b))
        return;
    int per_lane = scaled(b->fs ? 16 : 40);
    kv_key *keys[NCOUNTERS];
    make_keys(keys);
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = open_env(b, &loop, &pool, 4);
    /* half the counters exist at the start, the others are created by
     * the first increment (an insert race) */
    seed_counters(s, keys);
    long ok = 0, conflicts = 0;
    const char *form;
    if (!b->memory && !b->fs) {
        /* 4 threads, 4 loops, 4 stores on one file (or one Redis prefix),
         * one pool */
        form = "4 threads x 16 lanes, one store per thread";
        close_free(s);
        s = NULL;
        pthread_t th[NGROUPS];
        thread_arg ta[NGROUPS];
        for (int i = 0; i < NGROUPS; i++) {
            ta[i] = (thread_arg){b, pool, keys, per_lane, i, 0, 0, KV_OK, ""};
            ck_assert_int_eq(
                pthread_create(&th[i], NULL, group_thread, &ta[i]), 0);
        }
        for (int i = 0; i < NGROUPS; i++) {
            ck_assert_int_eq(pthread_join(th[i], NULL), 0);
            ck_assert_msg(ta[i].err == KV_OK, "thread %d: %s at %s", i,
                          kv_err_name(ta[i].err), ta[i].where);
            ok += ta[i].ok;
            conflicts += ta[i].conflicts;
        }
        ck_assert_kv(open_store(b, &s, loop, pool, 0), KV_OK);
    } else {
        /* one store on one loop: 4 groups of 16 in-flight lanes */
        form = "4 groups x 16 lanes on one loop and store";
        group gs[NGROUPS];
        for (int i = 0; i < NGROUPS; i++)
            group_start(&gs[i], s, keys, per_lane, i);
        groups_run(loop, gs, NGROUPS);
        for (int i = 0; i < NGROUPS; i++) {
            ck_assert_msg(gs[i].err == KV_OK, "group %d: %s", i,
                          gs[i].where);
            ok += gs[i].ok;
            conflicts += gs[i].conflicts;
        }
    }
    long want = (long)NGROUPS * NLANES * per_lane;
    ck_assert_int_eq(ok, want);
    uint64_t sum = counters_sum(s, keys);
    ck_assert_msg(sum == (uint64_t)ok,
                  "%s: counters add up to %" PRIu64 ", %ld increments "
                  "succeeded: lost updates",
                  b->name, sum, ok);
    fprintf(stderr,
            "check_stress: lost-update %s (%s): %ld increments on %d "
            "counters, sum %" PRIu64 ", %ld conflicts retried\n",
            b->name, form, ok, NCOUNTERS, sum, conflicts);
    close_env(s, loop, pool);
    free_keys(keys);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Close under load                                                         */
/* ------------------------------------------------------------------------ */

enum { OP_PUT, OP_GET, OP_DEL, OP_HAS, OP_NEXT, OP_ALL, OP_OPEN, OP_MANY };

typedef struct slot {
    kv_fut *f;
    int kind;
    int calls; /* kv_fut_then callbacks seen */
} slot;

static long completions; /* on_done calls of the current round */

static void on_done(kv_fut *f, void *arg)
{
    slot *sl = arg;
    ck_assert_ptr_eq(f, sl->f);
    ck_assert(kv_fut_done(f));
    sl->calls++;
    completions++;
}

/* Is st a status the call of kind may complete with, closed mid-flight? */
static bool allowed(int kind, int st)
{
    if (st == KV_OK || st == KV_ECANCELED)
        return true;
    switch (kind) {
    case OP_PUT:
    case OP_DEL:
        return st == KV_ECONFLICT;
    case OP_GET:
        return st == KV_ENOTFOUND;
    case OP_NEXT:
    case OP_ALL:
        return st == KV_EITER;
    default:
        return false;
    }
}

typedef struct load_stats {
    long ops, completed_ok, canceled, other;
} load_stats;

static void close_round(const backend *b, kv_loop *loop, kv_pool *pool,
                        int nops, unsigned seed, load_stats *ls)
{
    kv_store *s;
    ck_assert_kv(open_store(b, &s, loop, pool, b->fs ? KV_FS_NO_FSYNC : 0),
                 KV_OK);
    /* some records for the iterators and the reads */
    kv_key *prefix = NULL;
    ck_assert_kv(kv_key_parse(&prefix, "/load"), KV_OK);
    int nkeys = 256;
    kv_key **keys = calloc((size_t)nkeys, sizeof *keys);
    kv_record *seedr = calloc((size_t)nkeys, sizeof *seedr);
    for (int i = 0; i < nkeys; i++) {
        char p[32];
        snprintf(p, sizeof p, "/load/k%03d", i);
        ck_assert_kv(kv_key_parse(&keys[i], p), KV_OK);
        seedr[i] = (kv_record){keys[i], "seed", 4, 0};
    }
    kv_fut *f = kv_put_many(s, seedr, (size_t)nkeys / 2, NULL);
    ck_assert_kv(kv_wait(f), KV_OK); /* skipped ones exist from before */
    kv_fut_free(f);
    free(seedr);

    /* iterators: three open with a next pending, one fetching all */
    int nslots = nops + 16;
    slot *slots = calloc((size_t)nslots, sizeof *slots);
    int n = 0;
    kv_iter *its[4] = {NULL, NULL, NULL, NULL};
    kv_query q = kv_query_init(prefix);
    q.sort = KV_SORT_DESC;
    for (int i = 0; i < 4; i++) {
        f = kv_query_open(s, &q, NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        its[i] = kv_fut_take_iter(f);
        kv_fut_free(f);
    }
    for (int i = 0; i < 3; i++) {
        slots[n] = (slot){kv_iter_next(its[i]), OP_NEXT, 0};
        n++;
        slots[n] = (slot){kv_iter_next(its[i]), OP_NEXT, 0};
        n++;
    }
    slots[n++] = (slot){kv_iter_fetch_all(its[3]), OP_ALL, 0};
    /* and one still opening */
    slots[n++] = (slot){kv_query_open(s, &q, NULL), OP_OPEN, 0};

    /* thousands of operations */
    unsigned r = seed;
    for (int i = 0; i < nops; i++) {
        r = r * 1103515245u + 12345u;
        kv_key *k = keys[(r >> 8) % (unsigned)nkeys];
        int kind = (int)((r >> 20) % 5);
        kv_record rec = {k, "v", 1, (r >> 4) % 3 == 0 ? 0 : (r >> 12)};
        switch (kind) {
        case 0:
            f = kv_put(s, &rec, NULL);
            kind = OP_PUT;
            break;
        case 1:
            f = kv_get(s, k, NULL);
            kind = OP_GET;
            break;
        case 2:
            f = kv_delete(s, k, rec.token | 1);
            kind = OP_DEL;
            break;
        case 3:
            f = kv_has(s, k);
            kind = OP_HAS;
            break;
        default: {
            const kv_key *two[2] = {k, keys[r % (unsigned)nkeys]};
            f = kv_get_many(s, two, 2, NULL);
            kind = OP_MANY;
            break;
        }
        }
        slots[n++] = (slot){f, kind, 0};
    }
    for (int i = 0; i < n; i++)
        ck_assert_kv(kv_fut_then(slots[i].f, on_done, &slots[i]), KV_OK);

    /* let some of it complete, then close in the middle: a few loop
     * turns; on Redis, where a turn completes little (a round trip per
     * pipeline), until 0, 1/8, 2/8 or 3/8 of the futures are done, so
     * that the close finds commands unsent, sent and half answered */
    completions = 0;
    int turns = (int)((seed >> 3) % 4);
    if (b->env != NULL) {
        long target = (long)turns * n / 8;
        while (completions < target)
            ck_assert_int_gt(kv_loop_run(loop, KV_RUN_ONCE), 0);
    } else {
        for (int i = 0; i < turns; i++)
            ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    }
    kv_fut *cf = kv_close(s);
    ck_assert_kv(kv_wait(cf), KV_OK);
    kv_fut_free(cf);
    /* everything is done now; callbacks run by the next turns */
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(kv_fut_done(slots[i].f), "future %d (kind %d) pending",
                      i, slots[i].kind);
        ck_assert_msg(slots[i].calls == 1,
                      "future %d (kind %d) completed %d times", i,
                      slots[i].kind, slots[i].calls);
        int st = kv_fut_status(slots[i].f);
        ck_assert_msg(allowed(slots[i].kind, st),
                      "%s: future %d (kind %d): %s (%s)", b->name, i,
                      slots[i].kind, kv_err_name(st),
                      kv_fut_errmsg(slots[i].f));
        if (st == KV_OK)
            ls->completed_ok++;
        else if (st == KV_ECANCELED)
            ls->canceled++;
        else
            ls->other++;
        if (slots[i].kind == OP_OPEN)
            kv_iter_free(kv_fut_take_iter(slots[i].f));
        kv_fut_free(slots[i].f);
    }
    ls->ops += n;
    /* after close: every call fails KV_ECLOSED, iterators KV_EITER */
    f = kv_get(s, keys[0], NULL);
    ck_assert_kv(kv_wait(f), KV_ECLOSED);
    kv_fut_free(f);
    for (int i = 0; i < 4; i++) {
        f = kv_iter_next(its[i]);
        ck_assert_kv(kv_wait(f), KV_EITER);
        kv_fut_free(f);
        kv_iter_free(its[i]);
    }
    kv_store_free(s);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert(!kv_loop_alive(loop));
    for (int i = 0; i < nkeys; i++)
        kv_key_free(keys[i]);
    free(keys);
    free(slots);
    kv_key_free(prefix);
}

START_TEST(test_close_under_load)
{
    const backend *b = &backends[_i];
    if (!selected(b))
        return;
    /* the scale multiplies the rounds; each round stays thousands of ops */
    int rounds = scaled(20), nops = b->fs ? 1500 : 3000;
    kv_loop *loop;
    kv_pool *pool;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 4), KV_OK);
    load_stats ls = {0, 0, 0, 0};
    for (int r = 0; r < rounds; r++)
        close_round(b, loop, pool, nops, 0x9e3779b9u * (unsigned)(r + 1),
                    &ls);
    fprintf(stderr,
            "check_stress: close-under-load %s: %d rounds, %ld futures "
            "(iterators included), each completed exactly once: %ld ok, "
            "%ld cancelled, %ld conflict/not-found/iter\n",
            b->name, rounds, ls.ops, ls.completed_ok, ls.canceled, ls.other);
    ck_assert_int_gt(ls.canceled, 0); /* close did land mid-flight */
    loop_free_clean(loop);
    kv_pool_free(pool);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Two processes                                                            */
/* ------------------------------------------------------------------------ */

/*
 * A child process: its own loop, pool and store on path; CAS-increments
 * the counters (one group of 16 lanes) and writes its successful
 * increments to fd.  Exit status 0 on success.
 */
static int child_increments(const backend *b, int per_lane, int gid, int fd)
{
    kv_key *keys[NCOUNTERS];
    for (int i = 0; i < NCOUNTERS; i++) {
        char p[32];
        snprintf(p, sizeof p, "/stress/counter:%02d", i);
        if (kv_key_parse(&keys[i], p) != KV_OK)
            return 10;
    }
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    if (kv_loop_new(&loop, NULL) != KV_OK || kv_pool_new(&pool, 2) != KV_OK)
        return 11;
    int rc = open_store(b, &s, loop, pool, 0);
    if (rc != KV_OK) {
        fprintf(stderr, "child %d: open: %s\n", gid, kv_last_errmsg());
        return 12;
    }
    group g;
    group_start(&g, s, keys, per_lane, gid);
    while (g.active > 0)
        if (kv_loop_run(loop, KV_RUN_ONCE) <= 0 && g.active > 0)
            return 13;
    if (g.err != KV_OK) {
        fprintf(stderr, "child %d: %s\n", gid, g.where);
        return 14;
    }
    long ok = g.ok;
    kv_fut *f = kv_close(s);
    rc = kv_wait(f);
    kv_fut_free(f);
    kv_store_free(s);
    if (rc != KV_OK || kv_loop_run(loop, KV_RUN_DEFAULT) != 0 ||
        kv_loop_free(loop) != KV_OK)
        return 15;
    kv_pool_free(pool);
    free_keys(keys);
    if (write(fd, &ok, sizeof ok) != (ssize_t)sizeof ok)
        return 16;
    return 0;
}

START_TEST(test_two_processes_sqlite)
{
    const backend *b = &backends[1]; /* sqlite-file */
    if (!selected(b))
        return;
    int per_lane = scaled(40);
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid[2];
    /* fork before this process makes a loop or threads: the children
     * inherit nothing of the library */
    for (int i = 0; i < 2; i++) {
        pid[i] = fork();
        ck_assert_int_ge(pid[i], 0);
        if (pid[i] == 0) {
            close(fds[0]);
            int code = child_increments(b, per_lane, i, fds[1]);
            close(fds[1]);
            _exit(code);
        }
    }
    close(fds[1]);
    for (int i = 0; i < 2; i++) {
        int status = 0;
        ck_assert_int_eq(waitpid(pid[i], &status, 0), pid[i]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "child %d: status 0x%x", i, status);
    }
    long ok = 0, one;
    while (read(fds[0], &one, sizeof one) == (ssize_t)sizeof one)
        ok += one;
    close(fds[0]);
    ck_assert_int_eq(ok, 2L * NLANES * per_lane);
    kv_key *keys[NCOUNTERS];
    make_keys(keys);
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = open_env(b, &loop, &pool, 2);
    uint64_t sum = counters_sum(s, keys);
    ck_assert_msg(sum == (uint64_t)ok,
                  "two processes: counters add up to %" PRIu64
                  ", %ld increments succeeded",
                  sum, ok);
    fprintf(stderr,
            "check_stress: two processes on one SQLite file: %ld "
            "increments, sum %" PRIu64 ", none lost\n",
            ok, sum);
    close_env(s, loop, pool);
    free_keys(keys);
}
END_TEST

/*
 * Several processes open the same new SQLite file at the same moment
 * (released together by closing a pipe): every open must succeed, and
 * each one's record must be there afterwards.
 */
static int child_first_open(const char *path, int go, int i)
{
    char c;
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    if (kv_loop_new(&loop, NULL) != KV_OK || kv_pool_new(&pool, 1) != KV_OK)
        return 10;
    if (read(go, &c, 1) != 0) /* EOF: go */
        return 11;
    int rc = kv_sqlite_open(&s, loop, pool, path, 0);
    if (rc != KV_OK) {
        fprintf(stderr, "opener %d: %s: %s\n", i, kv_err_name(rc),
                kv_last_errmsg());
        return 12;
    }
    char p[32];
    snprintf(p, sizeof p, "/opener/%d", i);
    kv_key *k = NULL;
    kv_fut *f = NULL;
    if (kv_key_parse(&k, p) == KV_OK) {
        f = kv_put_value(s, k, "x", 1, NULL);
        rc = kv_wait(f);
        kv_fut_free(f);
    }
    kv_key_free(k);
    f = kv_close(s);
    int crc = kv_wait(f);
    kv_fut_free(f);
    kv_store_free(s);
    kv_loop_run(loop, KV_RUN_DEFAULT);
    if (kv_loop_free(loop) != KV_OK)
        return 13;
    kv_pool_free(pool);
    return rc == KV_OK && crc == KV_OK ? 0 : 14;
}

START_TEST(test_concurrent_first_open)
{
    const backend *b = &backends[1]; /* sqlite-file */
    if (!selected(b))
        return;
    enum { OPENERS = 6, ROUNDS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/first-%d.sqlite", tmpdir, round);
        int go[2];
        ck_assert_int_eq(pipe(go), 0);
        pid_t pid[OPENERS];
        for (int i = 0; i < OPENERS; i++) {
            pid[i] = fork();
            ck_assert_int_ge(pid[i], 0);
            if (pid[i] == 0) {
                close(go[1]);
                _exit(child_first_open(path, go[0], i));
            }
        }
        close(go[0]);
        usleep(20000); /* let every child reach its read */
        close(go[1]);
        for (int i = 0; i < OPENERS; i++) {
            int status = 0;
            ck_assert_int_eq(waitpid(pid[i], &status, 0), pid[i]);
            ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                          "round %d, opener %d: status 0x%x", round, i,
                          status);
        }
        kv_loop *loop;
        kv_pool *pool;
        kv_store *s;
        ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
        ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
        ck_assert_kv(kv_sqlite_open(&s, loop, pool, path, 0), KV_OK);
        kv_key *root = NULL;
        ck_assert_kv(kv_key_parse(&root, "/opener"), KV_OK);
        ck_assert_uint_eq(tu_query_count(s, root), OPENERS);
        kv_key_free(root);
        close_env(s, loop, pool);
    }
}
END_TEST

/* The child: try to open the fs root when told, report the code. */
static int child_fs_open(const backend *b, int cmd, int res)
{
    kv_loop *loop;
    kv_pool *pool;
    if (kv_loop_new(&loop, NULL) != KV_OK || kv_pool_new(&pool, 1) != KV_OK)
        return 10;
    char c;
    while (read(cmd, &c, 1) == 1) {
        kv_store *s = NULL;
        int rc = open_store(b, &s, loop, pool, 0);
        if (rc == KV_OK) {
            kv_fut *f = kv_close(s);
            kv_wait(f);
            kv_fut_free(f);
            kv_store_free(s);
        }
        if (write(res, &rc, sizeof rc) != (ssize_t)sizeof rc)
            return 11;
    }
    kv_loop_run(loop, KV_RUN_DEFAULT);
    if (kv_loop_free(loop) != KV_OK)
        return 12;
    kv_pool_free(pool);
    return 0;
}

START_TEST(test_two_processes_fs)
{
    const backend *b = &backends[2]; /* fs */
    if (!selected(b))
        return;
    int cmd[2], res[2];
    ck_assert_int_eq(pipe(cmd), 0);
    ck_assert_int_eq(pipe(res), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(cmd[1]);
        close(res[0]);
        _exit(child_fs_open(b, cmd[0], res[1]));
    }
    close(cmd[0]);
    close(res[1]);
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = open_env(b, &loop, &pool, 2);
    /* while this process holds the root: the other gets KV_EBUSY */
    int rc = 0;
    ck_assert_int_eq(write(cmd[1], "o", 1), 1);
    ck_assert_int_eq(read(res[0], &rc, sizeof rc), (ssize_t)sizeof rc);
    ck_assert_msg(rc == KV_EBUSY, "second process: %s, want KV_EBUSY",
                  kv_err_name(rc));
    /* so does a second open in this process */
    kv_store *s2 = NULL;
    ck_assert_kv(open_store(b, &s2, loop, pool, 0), KV_EBUSY);
    /* once closed, the other process may open it */
    close_free(s);
    ck_assert_int_eq(write(cmd[1], "o", 1), 1);
    ck_assert_int_eq(read(res[0], &rc, sizeof rc), (ssize_t)sizeof rc);
    ck_assert_msg(rc == KV_OK, "after close: %s", kv_err_name(rc));
    close(cmd[1]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child: status 0x%x", status);
    close(res[0]);
    fprintf(stderr, "check_stress: fs root locked by one process: the "
                    "other got KV_EBUSY, then KV_OK after close\n");
    loop_free_clean(loop);
    kv_pool_free(pool);
}
END_TEST


/* ------------------------------------------------------------------------ */
/* One store, many threads (calls forwarded to the store's loop)            */
/* ------------------------------------------------------------------------ */

/*
 * Run the store's loop on this (its owner) thread until *done reaches n.
 * Forwarded calls wake the loop; a short timer bounds each wait so *done,
 * written by other threads, is looked at again.
 */
static void serve_until(kv_loop *loop, atomic_int *done, int n)
{
    while (atomic_load(done) < n) {
        kv_fut *t = kv_sleep(loop, 5);
        int rc = kv_wait(t);
        ck_assert_msg(rc == KV_OK, "serve: %s", kv_err_name(rc));
        kv_fut_free(t);
    }
}

typedef struct shared_arg {
    kv_store *s;
    kv_key *const *keys;
    int per_lane, gid;
    bool own_loop; /* else the thread has no loop: kv_thread_loop */
    atomic_int *done;
    long ok, conflicts;
    int err;
    char where[200];
} shared_arg;

/* One group of 16 lanes on its own thread, through the shared store. */
static void *shared_thread(void *arg)
{
    shared_arg *t = arg;
    kv_loop *loop = NULL;
    int rc = KV_OK;
    if (t->own_loop)
        rc = kv_loop_new(&loop, NULL);
    else if ((loop = kv_thread_loop()) == NULL)
        rc = KV_ERROR;
    if (rc != KV_OK) {
        t->err = rc;
        snprintf(t->where, sizeof t->where, "loop: %s", kv_last_errmsg());
        atomic_fetch_add(t->done, 1);
        return NULL;
    }
    group g;
    group_start(&g, t->s, t->keys, t->per_lane, t->gid);
    while (g.active > 0) {
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        if (r < 0 || (r == 0 && g.active > 0)) {
            t->err = r < 0 ? r : KV_ERROR;
            snprintf(t->where, sizeof t->where, "loop: %d lanes stalled (%d)",
                     g.active, r);
            break;
        }
    }
    t->ok = g.ok;
    t->conflicts = g.conflicts;
    if (t->err == KV_OK && g.err != KV_OK) {
        t->err = g.err;
        snprintf(t->where, sizeof t->where, "%s", g.where);
    }
    kv_loop_run(loop, KV_RUN_DEFAULT);
    rc = kv_loop_free(loop); /* the private loop too: freed early */
    if (rc != KV_OK && t->err == KV_OK) {
        t->err = rc;
        snprintf(t->where, sizeof t->where, "kv_loop_free");
    }
    atomic_fetch_add(t->done, 1);
    return NULL;
}

/*
 * 4 threads x 16 in-flight CAS increments through ONE store, opened on the
 * test thread's loop (which only serves them): two threads with a loop of
 * their own, two without (their private loops).  Exact sums.
 */
START_TEST(test_shared_store_threads)
{
    const backend *b = &backends[_i];
    if (!selected(b))
        return;
    int per_lane = scaled(b->fs ? 8 : 20);
    kv_key *keys[NCOUNTERS];
    make_keys(keys);
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = open_env(b, &loop, &pool, 4);
    seed_counters(s, keys);
    atomic_int done;
    atomic_init(&done, 0);
    shared_arg ta[NGROUPS];
    pthread_t th[NGROUPS];
    for (int i = 0; i < NGROUPS; i++) {
        ta[i] = (shared_arg){s, keys, per_lane, i, i % 2 == 0, &done,
                             0, 0, KV_OK, ""};
        ck_assert_int_eq(pthread_create(&th[i], NULL, shared_thread, &ta[i]),
                         0);
    }
    serve_until(loop, &done, NGROUPS);
    long ok = 0, conflicts = 0;
    for (int i = 0; i < NGROUPS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_msg(ta[i].err == KV_OK, "%s: thread %d: %s", b->name, i,
                      ta[i].where);
        ok += ta[i].ok;
        conflicts += ta[i].conflicts;
    }
    long want = (long)NGROUPS * NLANES * per_lane;
    ck_assert_int_eq(ok, want);
    uint64_t sum = counters_sum(s, keys);
    ck_assert_msg(sum == (uint64_t)ok, "%s: counters sum to %" PRIu64
                  ", %ld increments succeeded", b->name, sum, ok);
    ck_assert_uint_eq(kv_store_inflight(s), 0);
    fprintf(stderr, "check_stress: %s: one store, %d threads x %d lanes "
                    "(forwarded): %ld increments, %ld conflicts, exact\n",
            b->name, NGROUPS, NLANES, ok, conflicts);
    close_env(s, loop, pool);
    free_keys(keys);
}
END_TEST

enum { SUB_MAX = 4000, SUB_DEPTH = 16 };

/* One call of a submitter: completed exactly once? */
typedef struct sub_op {
    struct submitter *sub;
    int calls;
    int status;
    int kind;
} sub_op;

typedef struct submitter {
    kv_store *s;
    kv_key *const *keys;
    bool own_loop;
    atomic_int *done;
    atomic_long *completed_all; /* every submitter's completions */
    sub_op ops[SUB_MAX];
    int submitted, completed, inflight;
    bool stop; /* a call failed KV_ECLOSED: the store is closed */
    int err;
    char where[200];
} submitter;

static void sub_fill(submitter *t);

static void sub_done(kv_fut *f, void *arg)
{
    sub_op *op = arg;
    submitter *t = op->sub;
    op->calls++;
    op->status = kv_fut_status(f);
    kv_fut_free(f);
    t->completed++;
    t->inflight--;
    atomic_fetch_add(t->completed_all, 1);
    int st = op->status;
    bool allowed = st == KV_OK || st == KV_ECANCELED || st == KV_ECLOSED ||
                   (op->kind == 1 && st == KV_ENOTFOUND) ||
                   (op->kind == 0 && st == KV_ECONFLICT);
    if (!allowed && t->err == KV_OK) {
        t->err = st;
        snprintf(t->where, sizeof t->where, "op %d (kind %d): %s",
                 (int)(op - t->ops), op->kind, kv_err_name(st));
    }
    if (st == KV_ECLOSED)
        t->stop = true;
    sub_fill(t);
}

/* Keep SUB_DEPTH calls in flight until the store closes (or SUB_MAX). */
static void sub_fill(submitter *t)
{
    while (!t->stop && t->inflight < SUB_DEPTH && t->submitted < SUB_MAX) {
        sub_op *op = &t->ops[t->submitted];
        op->sub = t;
        op->kind = t->submitted % 3;
        const kv_key *k = t->keys[t->submitted % NCOUNTERS];
        kv_fut *f = op->kind == 0   ? kv_put_value(t->s, k, "x", 1, NULL)
                    : op->kind == 1 ? kv_get(t->s, k, NULL)
                                    : kv_has(t->s, k);
        t->submitted++;
        t->inflight++;
        if (kv_fut_then(f, sub_done, op) != KV_OK) {
            t->err = KV_ENOMEM;
            snprintf(t->where, sizeof t->where, "kv_fut_then");
            t->stop = true;
            kv_fut_free(f);
            t->inflight--;
            op->calls = 1;
            t->completed++;
        }
    }
}

static void *submitter_thread(void *arg)
{
    submitter *t = arg;
    kv_loop *loop = NULL;
    if (t->own_loop) {
        if (kv_loop_new(&loop, NULL) != KV_OK)
            loop = NULL;
    } else {
        loop = kv_thread_loop();
    }
    if (loop == NULL) {
        t->err = KV_ERROR;
        snprintf(t->where, sizeof t->where, "loop: %s", kv_last_errmsg());
        atomic_fetch_add(t->done, 1);
        return NULL;
    }
    sub_fill(t);
    while (t->inflight > 0) {
        int r = kv_loop_run(loop, KV_RUN_ONCE);
        if (r < 0 || (r == 0 && t->inflight > 0)) {
            t->err = KV_ERROR;
            snprintf(t->where, sizeof t->where, "%d calls stalled (%d)",
                     t->inflight, r);
            break;
        }
    }
    kv_loop_run(loop, KV_RUN_DEFAULT);
    if (kv_loop_free(loop) != KV_OK && t->err == KV_OK) {
        t->err = KV_EBUSY;
        snprintf(t->where, sizeof t->where, "kv_loop_free");
    }
    atomic_fetch_add(t->done, 1);
    return NULL;
}

typedef struct closer {
    kv_store *s;
    atomic_long *completed_all;
    atomic_int *done;
    int rc;
} closer;

/* Close the store from a thread that is not its loop's (and has no loop),
 * once the submitters are well under way. */
static void *closer_thread(void *arg)
{
    closer *t = arg;
    while (atomic_load(t->completed_all) < 300)
        sched_yield();
    kv_fut *f = kv_close(t->s);
    t->rc = kv_wait(f);
    kv_fut_free(f);
    atomic_fetch_add(t->done, 1);
    return NULL;
}

/*
 * Close from a non-owner thread while three others submit through the
 * store (two with loops, one without): every future completes exactly
 * once, with a status its call allows, and everything frees cleanly.
 */
START_TEST(test_shared_close_under_load)
{
    const backend *b = &backends[_i];
    if (!selected(b))
        return;
    kv_key *keys[NCOUNTERS];
    make_keys(keys);
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = open_env(b, &loop, &pool, 4);
    atomic_int done;
    atomic_long completed_all;
    atomic_init(&done, 0);
    atomic_init(&completed_all, 0);
    enum { NSUB = 3 };
    submitter *subs = calloc(NSUB, sizeof *subs);
    ck_assert_ptr_nonnull(subs);
    pthread_t th[NSUB + 1];
    for (int i = 0; i < NSUB; i++) {
        subs[i].s = s;
        subs[i].keys = keys;
        subs[i].own_loop = i != 2;
        subs[i].done = &done;
        subs[i].completed_all = &completed_all;
        ck_assert_int_eq(
            pthread_create(&th[i], NULL, submitter_thread, &subs[i]), 0);
    }
    closer cl = {s, &completed_all, &done, KV_ERROR};
    ck_assert_int_eq(pthread_create(&th[NSUB], NULL, closer_thread, &cl), 0);
    serve_until(loop, &done, NSUB + 1);
    long total = 0;
    for (int i = 0; i <= NSUB; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_msg(cl.rc == KV_OK, "close: %s", kv_err_name(cl.rc));
    for (int i = 0; i < NSUB; i++) {
        submitter *t = &subs[i];
        ck_assert_msg(t->err == KV_OK, "%s: submitter %d: %s", b->name, i,
                      t->where);
        ck_assert_int_eq(t->completed, t->submitted);
        for (int j = 0; j < t->submitted; j++)
            ck_assert_msg(t->ops[j].calls == 1,
                          "submitter %d op %d completed %d times", i, j,
                          t->ops[j].calls);
        total += t->submitted;
    }
    fprintf(stderr, "check_stress: %s: close from another thread under "
                    "load: %ld forwarded calls, each completed once\n",
            b->name, total);
    free(subs);
    kv_store_free(s);
    loop_free_clean(loop);
    kv_pool_free(pool);
    free_keys(keys);
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *stress_suite(void)
{
    int timeout = (int)(300 * (scale() > 1 ? scale() : 1));
    Suite *s = suite_create("stress");
    TCase *tc = tcase_create("lost_update");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout);
    tcase_add_loop_test(tc, test_lost_update, 0, NBACKENDS);
    suite_add_tcase(s, tc);

    tc = tcase_create("close_under_load");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout);
    tcase_add_loop_test(tc, test_close_under_load, 0, NBACKENDS);
    suite_add_tcase(s, tc);

    tc = tcase_create("shared_store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout);
    tcase_add_loop_test(tc, test_shared_store_threads, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_shared_close_under_load, 0, NBACKENDS);
    suite_add_tcase(s, tc);

    tc = tcase_create("processes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout);
    tcase_add_test(tc, test_two_processes_sqlite);
    tcase_add_test(tc, test_concurrent_first_open);
    tcase_add_test(tc, test_two_processes_fs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(stress_suite());
}
