/*
 * check_powerloss.c - power-loss states of the fs backend, without FUSE.
 *
 * A workload (CAS puts over new and existing keys, some in new namespace
 * directories, and deletes, several in flight) runs on an fs store opened
 * in a temporary directory while src/core/fault.c records every
 * file-system operation the backend submits, with its completion.  Each
 * acknowledgement notes how many operations had completed when it arrived.
 * Then, for KVT_PL_STATES random cut points (default 300; make check-crash
 * runs more), tests/lib/powerloss.c builds one state a power loss there may
 * leave (unsynced data dropped or torn, uncovered namespace operations
 * undone or kept, in-flight operations that were already submitted maybe
 * done), writes it to a fresh directory, and the test reopens it with
 * kv_fs_open and checks every key: it holds what was last acknowledged
 * before the cut (value and token) or what a later operation on it wrote,
 * never other data; a record that cannot be read must be one no
 * acknowledgement covers; and a new put's token is above every token
 * acknowledged.  The seed (KVT_PL_SEED) is printed on failure.
 * KVT_PL_SKIP_DIRSYNC=N ignores the Nth directory fsync of the trace (a
 * demonstration that the test sees the loss).  It runs under /dev/shm when
 * TMPDIR is unset (KVT_PL_DISK=1: under /tmp).
 *
 * The self-test: the same states with one directory fsync of the trace
 * ignored (as if the backend had not issued it) must show a loss.
 */
#include "config.h"

#include "core/fault.h"
#include "powerloss.h"
#include "powerloss_wl.h"
#include "testutil.h"

#include <inttypes.h>
#include <sys/stat.h>

#define NKEYS 24
#define NOPS 120
#define LANES 6
#define VMAX 3000

static void key_path(int k, char *buf, size_t cap)
{
    /* Three shared namespaces and, for every fourth key, a directory of
     * its own (a mkdir and its parent's fsync in the trace). */
    if (k % 4 == 3)
        snprintf(buf, cap, "/pl/d%d/k%d", k, k);
    else
        snprintf(buf, cap, "/pl/n%d/k%d", k % 3, k);
}

/* Operations start and are acknowledged at a count of completed ones. */
static const pl_wl_cfg wl_cfg = {
    .nkeys = NKEYS,
    .nops = NOPS,
    .lanes = LANES,
    .vmax = VMAX,
    .key_path = key_path,
    .mark = kv__fault_record_count,
};

/* The recorded run: the workload over a new store at root. */
typedef struct run {
    char *tmp;
    char root[4200];
    pl_base *base;
    pl_wl w;
    const kv__frec **trace;
    size_t n;
} run;

static void run_record(run *r, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    tu_tmpdir_new(&r->tmp);
    snprintf(r->root, sizeof r->root, "%s/store", r->tmp);
    tu_env e = {0};
    ck_assert_kv(kv_loop_new(&e.loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e.pool, 2), KV_OK);
    int rc = kv_fs_open(&e.s, e.loop, e.pool, r->root, 0, 0);
    ck_assert_msg(rc == KV_OK, "open: %s", kv_last_errmsg());
    char err[512];
    ck_assert_msg(pl_snapshot(&r->base, r->root, err, sizeof err) == 0, "%s",
                  err);
    ck_assert_kv(kv__fault_record_start(e.loop), KV_OK);
    pl_wl_init(&r->w, &wl_cfg, e.s, seed);
    pl_wl_start(&r->w);
    while (r->w.ndone < r->w.nops)
        ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_ONCE), 0);
    kv__fault_record_stop();
    ck_assert_msg(!kv__fault_record_lost(), "trace incomplete");
    for (size_t i = 0; i < r->w.nops; i++)
        ck_assert_msg(r->w.ops[i].status == KV_OK, "op %zu: %s", i,
                      kv_err_name(r->w.ops[i].status));
    tu_env_close(&e, true);
    r->n = kv__fault_record_count();
    r->trace = malloc((r->n ? r->n : 1) * sizeof *r->trace);
    ck_assert_ptr_nonnull(r->trace);
    for (size_t i = 0; i < r->n; i++)
        r->trace[i] = kv__fault_record_get(i);
}

static void run_free(run *r)
{
    free(r->trace);
    pl_base_free(r->base);
    kv__fault_record_free();
    tu_tmpdir_free(&r->tmp);
}

/* One state checked: NULL, or what is wrong (in msg). */
static const char *check_state(run *r, const char *dir, size_t cut,
                               unsigned long *ncorrupt, char *msg, size_t cap)
{
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    const char *bad = NULL;
    int rc = kv_fs_open(&s, loop, pool, dir, 0, KV_FS_NO_FSYNC);
    if (rc != KV_OK) {
        snprintf(msg, cap, "reopen failed: %s (%s)", kv_err_name(rc),
                 kv_last_errmsg());
        bad = msg;
    }
    uint64_t maxtok = 0;
    static unsigned char want[VMAX];
    for (int k = 0; bad == NULL && k < NKEYS; k++) {
        /* What each operation on k left; the last acknowledged one and
         * any later one started before the cut are acceptable. */
        long last = -1;
        for (size_t i = 0; i < r->w.nops; i++) {
            const pl_op *o = &r->w.ops[i];
            if (o->key == k && o->ack <= cut) {
                last = (long)i;
                if (!o->del && o->token > maxtok)
                    maxtok = o->token;
            }
        }
        kv_key *key = pl_wl_key(&r->w, k);
        kv_fut *f = kv_get(s, key, NULL);
        kv_key_free(key);
        int st = kv_wait(f);
        const kv_record *got = kv_fut_record(f);
        bool ok = false, acked_absent = last < 0 || r->w.ops[last].del;
        if (st == KV_ENOTFOUND)
            ok = acked_absent;
        if (st == KV_ECORRUPT && acked_absent) {
            ok = true; /* a torn record no acknowledgement covers */
            (*ncorrupt)++;
        }
        for (size_t i = last < 0 ? 0 : (size_t)last;
             !ok && i < r->w.nops; i++) {
            const pl_op *o = &r->w.ops[i];
            if (o->key != k || (long)i < last || o->start > cut)
                continue;
            if (o->del) {
                ok = st == KV_ENOTFOUND;
                continue;
            }
            size_t n = pl_wl_value(&r->w, o->vseed, want);
            ok = st == KV_OK && got->token == o->token && got->len == n &&
                 memcmp(got->val, want, n) == 0;
        }
        if (st == KV_OK && got->token > maxtok)
            maxtok = got->token;
        if (!ok) {
            char p[64];
            key_path(k, p, sizeof p);
            const pl_op *o = last < 0 ? NULL : &r->w.ops[last];
            snprintf(msg, cap,
                     "key %s: got %s (token %" PRIu64 ", %zu bytes); last "
                     "acknowledged: %s (token %" PRIu64 ", op %ld)",
                     p, kv_err_name(st), st == KV_OK ? got->token : 0,
                     st == KV_OK ? got->len : 0,
                     o == NULL ? "none" : o->del ? "delete" : "put",
                     o == NULL ? 0 : o->token, last);
            bad = msg;
        }
        kv_fut_free(f);
    }
    if (bad == NULL) {
        kv_key *key = NULL;
        ck_assert_kv(kv_key_parse(&key, "/pl/after/crash"), KV_OK);
        kv_fut *f = kv_put_value(s, key, "x", 1, NULL);
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
    if (s != NULL) {
        kv_fut *f = kv_close(s);
        (void)kv_wait(f);
        kv_fut_free(f);
        kv_store_free(s);
    }
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
    return bad;
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

/* Count of directory fsyncs in the trace. */
static unsigned long dirsyncs(const run *r)
{
    unsigned long n = 0;
    for (size_t i = 0; i < r->n; i++)
        n += r->trace[i]->op == IORING_OP_FSYNC && r->trace[i]->res >= 0 &&
             r->trace[i]->isdir;
    return n;
}

/*
 * Explore nstates crash states of r; returns the number of bad states,
 * the first one's description in first.
 */
static unsigned long explore(run *r, uint64_t seed, unsigned long nstates,
                             size_t lo, size_t hi, const pl_opts *o,
                             pl_stats *st, char *first, size_t cap,
                             unsigned long *ncorrupt)
{
    pl_rng rng = {seed};
    unsigned long nbad = 0;
    char dir[4000], err[512], msg[512];
    for (unsigned long s = 0; s < nstates; s++) {
        /* The cut: after `cut` completions (acknowledgements up to it);
         * the crash may also find done some operations submitted before
         * it whose completions came later (a prefix of them). */
        size_t cut = lo + (size_t)pl_below(&rng, hi - lo + 1);
        size_t f = cut;
        uint64_t subm = cut < r->n ? r->trace[cut]->nsub : UINT64_MAX;
        size_t fmax = cut;
        while (fmax < r->n && r->trace[fmax]->seq < subm)
            fmax++;
        if (fmax > cut && pl_below(&rng, 2) == 0)
            f = cut + (size_t)pl_below(&rng, fmax - cut + 1);
        snprintf(dir, sizeof dir, "%.3900s/state", r->tmp);
        int rc = pl_crash(r->base, r->trace, f, o, &rng, dir, st, err,
                          sizeof err);
        ck_assert_msg(rc == 0, "seed %" PRIu64 " state %lu: model: %s", seed,
                      s, err);
        const char *bad = check_state(r, dir, cut, ncorrupt, msg, sizeof msg);
        if (bad != NULL) {
            if (nbad++ == 0)
                snprintf(first, cap,
                         "seed %" PRIu64 " state %lu (cut after %zu of %zu "
                         "operations, %zu done): %s",
                         seed, s, cut, r->n, f, bad);
        }
        ck_assert_msg(pl_rmtree(dir) == 0, "remove %s: %s", dir,
                      strerror(errno));
    }
    return nbad;
}

static void print_stats(const char *what, unsigned long n, const run *r,
                        const pl_stats *st, unsigned long ncorrupt)
{
    if (getenv("KVT_VERBOSE") == NULL)
        return;
    fprintf(stderr,
            "%s: %lu states over a trace of %zu operations (%lu directory "
            "fsyncs); writes kept %lu, dropped %lu, torn %lu; namespace "
            "operations durable %lu, kept %lu, undone %lu; unreadable "
            "records (unacknowledged) %lu\n",
            what, n, r->n, dirsyncs(r), st->writes_kept, st->writes_dropped,
            st->writes_torn, st->meta_durable, st->meta_kept,
            st->meta_undone, ncorrupt);
}

/* Index of the dth directory fsync of the trace, and of the next fsync of
 * the same directory (r->n if none). */
static void dirsync_at(const run *r, unsigned long d, size_t *at, size_t *next)
{
    unsigned long k = 0;
    *at = *next = r->n;
    for (size_t i = 0; i < r->n; i++) {
        const kv__frec *t = r->trace[i];
        if (t->op != IORING_OP_FSYNC || t->res < 0 || !t->isdir)
            continue;
        if (*at < r->n && t->ino == r->trace[*at]->ino) {
            *next = i;
            return;
        }
        if (++k == d)
            *at = i;
    }
}

START_TEST(test_fs_powerloss)
{
    uint64_t seed = env_ul("KVT_PL_SEED", 0);
    if (seed == 0)
        seed = 0x5eed0001u;
    unsigned long nstates = env_ul("KVT_PL_STATES", 300);
    run r;
    run_record(&r, seed);
    ck_assert_uint_gt(r.n, NOPS);
    pl_opts o = {env_ul("KVT_PL_SKIP_DIRSYNC", 0)};
    size_t lo = 0, hi = r.n;
    if (o.skip_dirsync > 0) {
        /* The demonstration: crash where the missing fsync matters. */
        dirsync_at(&r, o.skip_dirsync, &lo, &hi);
        ck_assert_msg(lo < r.n, "the trace has no directory fsync %lu",
                      o.skip_dirsync);
        lo++;
    }
    pl_stats st = {0};
    char first[1024] = "";
    unsigned long ncorrupt = 0;
    unsigned long nbad =
        explore(&r, seed, nstates, lo, hi, &o, &st, first, sizeof first,
                &ncorrupt);
    print_stats("fs", nstates, &r, &st, ncorrupt);
    ck_assert_msg(nbad == 0, "%lu of %lu states lose data; first: %s", nbad,
                  nstates, first);
    run_free(&r);
}
END_TEST

/* The checker catches a missing directory fsync: ignore one (as if the
 * backend had not issued it) and crash between it and the next fsync of
 * the same directory: some acknowledged operation must be found lost. */
START_TEST(test_fs_missing_dirsync_caught)
{
    uint64_t seed = 0x5eed0002u;
    run r;
    run_record(&r, seed);
    unsigned long nds = dirsyncs(&r), caught = 0, tried = 0;
    char first[1024] = "";
    for (unsigned long d = 1; d <= nds && tried < 8; d++) {
        size_t at, next;
        dirsync_at(&r, d, &at, &next);
        pl_opts o = {d};
        pl_stats st = {0};
        unsigned long ncorrupt = 0;
        char msg[1024] = "";
        tried++;
        if (explore(&r, seed + d, 20, at + 1, next, &o, &st, msg, sizeof msg,
                    &ncorrupt) > 0) {
            caught++;
            if (first[0] == '\0')
                snprintf(first, sizeof first,
                         "without directory fsync %lu (operation %zu): %s",
                         d, at, msg);
        }
    }
    if (getenv("KVT_VERBOSE") != NULL)
        fprintf(stderr, "self-test: %lu of %lu skipped directory fsyncs "
                "caught; first: %s\n", caught, tried, first);
    ck_assert_msg(caught > 0, "no loss found with a directory fsync missing");
    run_free(&r);
}
END_TEST

int main(void)
{
    /* The model, not the medium, decides what a crash keeps: run on tmpfs
     * when there is one (fsyncs on a shared disk cost seconds), unless
     * TMPDIR is set or KVT_PL_DISK asks for the default. */
    struct stat sb;
    if (getenv("TMPDIR") == NULL && getenv("KVT_PL_DISK") == NULL &&
        stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) &&
        access("/dev/shm", W_OK) == 0 &&
        setenv("TMPDIR", "/dev/shm", 1) != 0)
        return 1;
    Suite *s = suite_create("powerloss");
    TCase *tc = tcase_create("fs");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fs_powerloss);
    tcase_add_test(tc, test_fs_missing_dirsync_caught);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
