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
#include "powerloss_wl.h"
#include "testutil.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <sys/stat.h>

#define NKEYS 16
#define NOPS 48
#define LANES 6
#define VMAX 9000

static void key_path(int k, char *buf, size_t cap)
{
    snprintf(buf, cap, "/spl/n%d/k%d", k % 3, k);
}

/* After the crash nothing can be acknowledged: start nothing more. */
static const pl_wl_cfg wl_cfg = {
    .nkeys = NKEYS,
    .nops = NOPS,
    .lanes = LANES,
    .vmax = VMAX,
    .key_path = key_path,
    .stop = crashvfs_crashed,
};

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
static unsigned long run_state(pl_wl *w, const char *path, uint64_t seed,
                               unsigned long crash_at, bool nosync)
{
    crashvfs_begin(crash_at, nosync);
    tu_env e = {0};
    ck_assert_kv(kv_loop_new(&e.loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e.pool, 2), KV_OK);
    int rc = kv_sqlite_open(&e.s, e.loop, e.pool, path, open_flags);
    pl_wl_init(w, &wl_cfg, e.s, seed);
    if (rc == KV_OK) {
        pl_wl_start(w);
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
static const char *check_state(const pl_wl *w, const char *path, char *msg,
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
            const pl_op *o = &w->ops[i];
            if (o->key == k && o->seq != 0) {
                last = (long)i;
                if (!o->del && o->token > maxtok)
                    maxtok = o->token;
            }
        }
        kv_key *key = pl_wl_key(w, k);
        kv_fut *f = kv_get(e.s, key, NULL);
        kv_key_free(key);
        int st = kv_wait(f);
        const kv_record *got = kv_fut_record(f);
        bool ok = st == KV_ENOTFOUND && (last < 0 || w->ops[last].del);
        if (!ok && st == KV_OK && last >= 0 && !w->ops[last].del) {
            size_t n = pl_wl_value(w, w->ops[last].vseed, want);
            ok = got->token == w->ops[last].token && got->len == n &&
                 memcmp(got->val, want, n) == 0;
        }
        for (size_t i = last < 0 ? 0 : (size_t)last + 1; !ok && i < w->nops;
             i++) {
            const pl_op *o = &w->ops[i];
            if (o->key != k)
                continue;
            if (o->del) {
                ok = st == KV_ENOTFOUND;
                continue;
            }
            size_t n = pl_wl_value(w, o->vseed, want);
            /* its token was never seen: any above the acknowledged ones */
            ok = st == KV_OK && got->len == n &&
                 memcmp(got->val, want, n) == 0;
        }
        if (st == KV_OK && got->token > maxtok)
            maxtok = got->token;
        if (!ok) {
            const pl_op *o = last < 0 ? NULL : &w->ops[last];
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
    static pl_wl w;
    /* How many events a whole run makes (the crash points' range). */
    snprintf(path, sizeof path, "%s/calibrate.db", tmp);
    unsigned long total = run_state(&w, path, seed, 0, nosync);
    crashvfs_end();
    ck_assert_uint_gt(total, 10);
    pl_rng r = {(seed ^ 0xc0ffee) | 1};
    for (unsigned long s = 0; s < nstates; s++) {
        snprintf(path, sizeof path, "%s/s%lu", tmp, s);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        snprintf(path, sizeof path, "%s/s%lu/store.db", tmp, s);
        /* crash at event 1..total, or (1 in 10) after the run */
        unsigned long at = pl_below(&r, 10) == 0 ? 0 : 1 + pl_below(&r, total);
        uint64_t wseed = seed + s;
        run_state(&w, path, wseed, at, nosync);
        res->crashes_in_run += at != 0;
        res->acked += w.acks;
        ck_assert_msg(crashvfs_materialize(pl_rand(&r), &res->st) == 0,
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
