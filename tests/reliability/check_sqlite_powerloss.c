/*
 * check_sqlite_powerloss.c - power-loss states of a KV_SQLITE_SYNC_FULL
 * SQLite store, through a crash VFS (tests/lib/crashvfs.c, after SQLite's
 * test6.c) registered as the default VFS under the backend's own.
 *
 * Each state: a new store in a fresh directory, a workload (CAS puts over
 * new and existing keys, values of 0 to 9,000 bytes, deletes, six in
 * flight; the WAL bounded to 256 KiB so that checkpoints run) that crashes
 * at a random write, sync or truncate of the VFS (or after its end); then
 * the files are rewritten as the power loss may have left them (unsynced
 * writes kept, dropped or torn by sector, unsynced truncates kept or
 * not), the database must pass PRAGMA integrity_check, and the store is
 * reopened and every key read: it holds what its last acknowledged
 * operation left (value and token) or what an operation started later
 * wrote; an acknowledged delete stays gone; no record is unreadable; a new
 * put's token is above every token acknowledged.
 *
 * KVT_SPL_STATES=n states (default 200; make check-crash runs more),
 * KVT_SPL_SEED=s the seed (printed on failure).  KVT_SPL_NOSYNC=1 makes
 * the VFS ignore xSync (nothing is ever durable): the demonstration that
 * the test sees a loss; test_sqlite_nosync_caught keeps it as a test.
 * KVT_SPL_SYNC=normal|off opens the workload's store with the default
 * synchronous=NORMAL or KV_SQLITE_SYNC_OFF instead (both may lose
 * acknowledged writes, and the test says so).
 * Runs under /dev/shm when TMPDIR is unset.
 */
#include "config.h"

#include "crashvfs.h"
#include "testutil.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <sys/stat.h>

#define NKEYS 16
#define NOPS 48
#define LANES 6
#define VMAX 9000

typedef struct xrng {
    uint64_t s;
} xrng;

static uint64_t xr(xrng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t below(xrng *r, uint64_t n)
{
    return n ? xr(r) % n : 0;
}

typedef struct op {
    int key;
    bool del;
    uint64_t vseed;
    int status;
    uint64_t token;
    unsigned long seq; /* order of acknowledgement (1-based), 0: none */
} op;

typedef struct wl {
    kv_store *s;
    xrng rng;
    op ops[NOPS];
    size_t nops, ndone, inflight;
    unsigned long acks;
    bool busy[NKEYS];
    bool present[NKEYS];
    uint64_t tok[NKEYS];
} wl;

typedef struct lane {
    wl *w;
    size_t i;
} lane;

static lane lanes[LANES];

static kv_key *key_of(int k)
{
    char p[64];
    snprintf(p, sizeof p, "/spl/n%d/k%d", k % 3, k);
    kv_key *key = NULL;
    ck_assert_kv(kv_key_parse(&key, p), KV_OK);
    return key;
}

static size_t value_of(uint64_t seed, unsigned char *buf)
{
    xrng r = {seed * 0x9E3779B97F4A7C15ull + 7};
    size_t n = (size_t)below(&r, VMAX + 1);
    for (size_t i = 0; i < n; i++)
        buf[i] = (unsigned char)xr(&r);
    return n;
}

static void start_next(lane *l);

static void on_done(kv_fut *f, void *arg)
{
    lane *l = arg;
    wl *w = l->w;
    op *o = &w->ops[l->i];
    o->status = kv_fut_status(f);
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

static void start_next(lane *l)
{
    wl *w = l->w;
    if (w->nops == NOPS || crashvfs_crashed())
        return; /* after the crash nothing can be acknowledged */
    int k = (int)below(&w->rng, NKEYS);
    for (int t = 0; t < NKEYS && w->busy[k]; t++)
        k = (k + 1) % NKEYS;
    if (w->busy[k])
        return;
    size_t i = w->nops++;
    op *o = &w->ops[i];
    memset(o, 0, sizeof *o);
    o->key = k;
    o->del = w->present[k] && below(&w->rng, 4) == 0;
    o->vseed = (uint64_t)i + 1;
    w->busy[k] = true;
    w->inflight++;
    l->i = i;
    kv_key *key = key_of(k);
    kv_fut *f;
    if (o->del) {
        f = kv_delete(w->s, key, w->tok[k]);
    } else {
        static unsigned char val[VMAX];
        size_t n = value_of(o->vseed, val);
        kv_record r = {key, val, n, w->present[k] ? w->tok[k] : 0};
        f = kv_put(w->s, &r, NULL);
    }
    kv_key_free(key);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_fut_then(f, on_done, l), KV_OK);
}

/* The workload's open flags: KV_SQLITE_SYNC_FULL, or as KVT_SPL_SYNC says
 * (normal: the default synchronous=NORMAL; off: KV_SQLITE_SYNC_OFF). */
static unsigned open_flags = KV_SQLITE_SYNC_FULL;

static void pick_sync(void)
{
    const char *v = getenv("KVT_SPL_SYNC");
    if (v != NULL && strcmp(v, "normal") == 0)
        open_flags = 0;
    else if (v != NULL && strcmp(v, "off") == 0)
        open_flags = KV_SQLITE_SYNC_OFF;
}

static unsigned long env_ul(const char *name, unsigned long dflt)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return dflt;
    char *end;
    unsigned long n = strtoul(v, &end, 0);
    return *end == '\0' ? n : dflt;
}

/*
 * Run the workload on a new store at path, crashing at VFS event crash_at
 * (0: at the end).  Returns the events the run made.
 */
static unsigned long run_state(wl *w, const char *path, uint64_t seed,
                               unsigned long crash_at, bool nosync)
{
    memset(w, 0, sizeof *w);
    w->rng.s = seed;
    crashvfs_begin(crash_at, nosync);
    tu_env e = {0};
    ck_assert_kv(kv_loop_new(&e.loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e.pool, 2), KV_OK);
    int rc = kv_sqlite_open(&e.s, e.loop, e.pool, path, open_flags);
    if (rc == KV_OK) {
        w->s = e.s;
        for (int i = 0; i < LANES; i++) {
            lanes[i] = (lane){w, 0};
            start_next(&lanes[i]);
        }
        while (w->inflight > 0)
            ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_ONCE), 0);
    } else {
        ck_assert_msg(crashvfs_crashed(), "open: %s", kv_last_errmsg());
    }
    unsigned long n = crashvfs_events();
    crashvfs_crash_now(); /* at the end, if not before */
    if (e.s != NULL) {
        kv_fut *f = kv_close(e.s);
        (void)kv_wait(f); /* may fail: the files are gone */
        kv_fut_free(f);
        kv_store_free(e.s);
    }
    ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(e.loop), KV_OK);
    kv_pool_free(e.pool);
    return n;
}

/* PRAGMA integrity_check on path: NULL, or what it said (in msg). */
static const char *integrity(const char *path, char *msg, size_t cap)
{
    sqlite3 *db = NULL;
    const char *bad = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
    sqlite3_stmt *st = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t == NULL || strcmp(t, "ok") != 0) {
            snprintf(msg, cap, "integrity_check: %s", t ? t : "?");
            bad = msg;
        }
    } else {
        snprintf(msg, cap, "integrity_check: %s",
                 db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        bad = msg;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return bad;
}

/* Check the state at path after run w: NULL, or what is wrong (in msg). */
static const char *check_state(const wl *w, const char *path, char *msg,
                               size_t cap)
{
    const char *bad = integrity(path, msg, cap);
    if (bad != NULL)
        return bad;
    tu_env e = {0};
    ck_assert_kv(kv_loop_new(&e.loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e.pool, 1), KV_OK);
    int rc = kv_sqlite_open(&e.s, e.loop, e.pool, path, KV_SQLITE_SYNC_FULL);
    if (rc != KV_OK) {
        snprintf(msg, cap, "reopen failed: %s (%s)", kv_err_name(rc),
                 kv_last_errmsg());
        bad = msg;
    }
    uint64_t maxtok = 0;
    static unsigned char want[VMAX];
    for (int k = 0; bad == NULL && k < NKEYS; k++) {
        /* The last acknowledged operation on k, and the ones after it
         * (started, not acknowledged: in flight at the crash). */
        long last = -1;
        for (size_t i = 0; i < w->nops; i++) {
            const op *o = &w->ops[i];
            if (o->key == k && o->seq != 0) {
                last = (long)i;
                if (!o->del && o->token > maxtok)
                    maxtok = o->token;
            }
        }
        kv_key *key = key_of(k);
        kv_fut *f = kv_get(e.s, key, NULL);
        kv_key_free(key);
        int st = kv_wait(f);
        const kv_record *got = kv_fut_record(f);
        bool ok = st == KV_ENOTFOUND && (last < 0 || w->ops[last].del);
        if (!ok && st == KV_OK && last >= 0 && !w->ops[last].del) {
            size_t n = value_of(w->ops[last].vseed, want);
            ok = got->token == w->ops[last].token && got->len == n &&
                 memcmp(got->val, want, n) == 0;
        }
        for (size_t i = last < 0 ? 0 : (size_t)last + 1; !ok && i < w->nops;
             i++) {
            const op *o = &w->ops[i];
            if (o->key != k)
                continue;
            if (o->del) {
                ok = st == KV_ENOTFOUND;
                continue;
            }
            size_t n = value_of(o->vseed, want);
            /* its token was never seen: any above the acknowledged ones */
            ok = st == KV_OK && got->len == n &&
                 memcmp(got->val, want, n) == 0;
        }
        if (st == KV_OK && got->token > maxtok)
            maxtok = got->token;
        if (!ok) {
            const op *o = last < 0 ? NULL : &w->ops[last];
            snprintf(msg, cap,
                     "key %d: got %s (token %" PRIu64 ", %zu bytes); last "
                     "acknowledged: %s (token %" PRIu64 ", op %ld)",
                     k, kv_err_name(st), st == KV_OK ? got->token : 0,
                     st == KV_OK ? got->len : 0,
                     o == NULL ? "none" : o->del ? "delete" : "put",
                     o == NULL ? 0 : o->token, last);
            bad = msg;
        }
        kv_fut_free(f);
    }
    if (bad == NULL) {
        kv_key *key = NULL;
        ck_assert_kv(kv_key_parse(&key, "/spl/after/crash"), KV_OK);
        kv_fut *f = kv_put_value(e.s, key, "x", 1, NULL);
        kv_key_free(key);
        int st = kv_wait(f);
        if (st != KV_OK || kv_fut_token(f) <= maxtok) {
            snprintf(msg, cap,
                     "put after reopen: %s, token %" PRIu64
                     " not above %" PRIu64,
                     kv_err_name(st), kv_fut_token(f), maxtok);
            bad = msg;
        }
        kv_fut_free(f);
    }
    tu_env_close(&e, bad == NULL);
    return bad;
}

typedef struct result {
    unsigned long nbad, acked, crashes_in_run;
    char first[1024];
    crashvfs_stats st;
} result;

/* Explore nstates states from seed. */
static void explore(uint64_t seed, unsigned long nstates, bool nosync,
                    result *res)
{
    char *tmp = NULL;
    tu_tmpdir_new(&tmp);
    char path[4000], msg[512];
    static wl w;
    /* How many events a whole run makes (the crash points' range). */
    snprintf(path, sizeof path, "%s/calibrate.db", tmp);
    unsigned long total = run_state(&w, path, seed, 0, nosync);
    crashvfs_end();
    ck_assert_uint_gt(total, 10);
    xrng r = {seed ^ 0xc0ffee};
    for (unsigned long s = 0; s < nstates; s++) {
        snprintf(path, sizeof path, "%s/s%lu", tmp, s);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        snprintf(path, sizeof path, "%s/s%lu/store.db", tmp, s);
        /* crash at event 1..total, or (1 in 10) after the run */
        unsigned long at = below(&r, 10) == 0 ? 0 : 1 + below(&r, total);
        uint64_t wseed = seed + s;
        run_state(&w, path, wseed, at, nosync);
        res->crashes_in_run += at != 0;
        res->acked += w.acks;
        ck_assert_msg(crashvfs_materialize(xr(&r), &res->st) == 0,
                      "materialize: %s", strerror(errno));
        const char *bad = check_state(&w, path, msg, sizeof msg);
        if (bad != NULL && res->nbad++ == 0)
            snprintf(res->first, sizeof res->first,
                     "seed %" PRIu64 " state %lu (crash at event %lu of "
                     "~%lu, %lu acknowledged): %s",
                     seed, s, at, total, w.acks, bad);
        snprintf(path, sizeof path, "%s/s%lu", tmp, s);
        tu_rmrf(path);
    }
    tu_tmpdir_free(&tmp);
}

static void print_stats(const char *what, unsigned long n, const result *r)
{
    if (getenv("KVT_VERBOSE") == NULL)
        return;
    fprintf(stderr,
            "%s: %lu states (%lu crashed inside the run), %lu operations "
            "acknowledged, %lu VFS events; unsynced writes kept %lu, "
            "dropped %lu, torn %lu; truncates kept %lu, dropped %lu; "
            "writes made durable by a sync %lu; writes to the database "
            "file %lu; bad states %lu%s%s\n",
            what, n, r->crashes_in_run, r->acked, r->st.events,
            r->st.writes_kept, r->st.writes_dropped, r->st.writes_torn,
            r->st.truncs_kept, r->st.truncs_dropped, r->st.synced_writes,
            r->st.db_writes, r->nbad, r->nbad ? "; first: " : "", r->first);
}

START_TEST(test_sqlite_powerloss)
{
    ck_assert_int_eq(crashvfs_install(), 0);
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "256K", 1), 0);
    uint64_t seed = env_ul("KVT_SPL_SEED", 0);
    if (seed == 0)
        seed = 0x5eed5e1full;
    unsigned long n = env_ul("KVT_SPL_STATES", 200);
    bool nosync = env_ul("KVT_SPL_NOSYNC", 0) != 0;
    pick_sync();
    static result res;
    memset(&res, 0, sizeof res);
    explore(seed, n, nosync, &res);
    print_stats(nosync ? "sqlite (xSync ignored)" : "sqlite", n, &res);
    ck_assert_msg(res.nbad == 0, "%lu of %lu states lose data; first: %s",
                  res.nbad, n, res.first);
}
END_TEST

/* The checker catches a loss: with xSync ignored, nothing acknowledged is
 * durable, and some state must show it. */
START_TEST(test_sqlite_nosync_caught)
{
    ck_assert_int_eq(crashvfs_install(), 0);
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "256K", 1), 0);
    static result res;
    memset(&res, 0, sizeof res);
    explore(0x5eed0bad, 20, true, &res);
    print_stats("self-test (xSync ignored)", 20, &res);
    ck_assert_msg(res.nbad > 0, "no loss found with every xSync ignored");
}
END_TEST

int main(void)
{
    struct stat sb;
    if (getenv("TMPDIR") == NULL && stat("/dev/shm", &sb) == 0 &&
        S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0 &&
        setenv("TMPDIR", "/dev/shm", 1) != 0)
        return 1;
    Suite *s = suite_create("sqlite_powerloss");
    TCase *tc = tcase_create("sqlite");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_sqlite_powerloss);
    tcase_add_test(tc, test_sqlite_nosync_caught);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
