/*
 * check_sqlite_fault.c - SQLite faults and crash safety.
 *
 *  - a database file that is not a database: open fails KV_EBACKEND with a
 *    message;
 *  - a read-only directory: opening a new file store there fails with a
 *    clear KV_EBACKEND / KV_EREADONLY message and creates nothing (as root,
 *    in a child that drops to uid/gid 65534 first: root's writes go through
 *    a 0555 directory; skipped only if that fails);
 *  - a full database (PRAGMA max_page_count through the test hook
 *    kv__sqlite_set_max_pages): the put that does not fit fails KV_EBACKEND
 *    saying so, earlier records are intact, an atomic batch that does not
 *    fit writes nothing, and once the limit is raised the store works again
 *    and reopens with exactly the committed records;
 *  - the kill -9 test: a child writes (puts and deletes, 8 in flight) as
 *    fast as it can with KV_SQLITE_SYNC_FULL and reports every acknowledged write
 *    through a pipe; it is killed at a random moment, the store reopened,
 *    and every acknowledged write must be there with its value and token,
 *    every acknowledged delete gone, and no record corrupt.  Again under
 *    the default synchronous=NORMAL (a process crash loses nothing
 *    acknowledged there either: the WAL's writes are in the page cache)
 *    with a 1 MiB WAL, so that the writer's restart checkpoints run and
 *    are killed too.
 *
 * Environment: KV_SQLITE_CRASH_ROUNDS=n (default 20; 0 skips).
 */
#include "config.h"

#include "store/store_int.h"
#include "backend/sqlite/sqlite.h"
#include "testutil.h"
#include "crashutil.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

static char *tmpdir;
static char dbpath[4200];
static char self_exe[PATH_MAX];

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
    snprintf(dbpath, sizeof dbpath, "%s/db.sqlite", tmpdir);
}

static void teardown(void)
{
    if (tmpdir != NULL)
        chmod(tmpdir, 0755);
    tu_tmpdir_free(&tmpdir);
}

typedef tu_env env;

static int env_try(env *e, const char *path, unsigned flags)
{
    memset(e, 0, sizeof *e);
    if (kv_loop_new(&e->loop, NULL) != KV_OK)
        return KV_ERROR;
    if (kv_pool_new(&e->pool, 2) != KV_OK)
        return KV_ERROR;
    return kv_sqlite_open(&e->s, e->loop, e->pool, path, flags);
}

/* ------------------------------------------------------------------------ */
/* Bad files and directories                                                */
/* ------------------------------------------------------------------------ */

START_TEST(test_not_a_database)
{
    int fd = open(dbpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 131 + 7);
    ck_assert_int_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    env e;
    int rc = env_try(&e, dbpath, 0);
    ck_assert_msg(rc == KV_EBACKEND, "open: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
    ck_assert_msg(strlen(kv_last_errmsg()) > 0, "no message");
    e.s = NULL;
    tu_env_close(&e, false);
    /* The file is left as it was. */
    struct stat st;
    ck_assert_int_eq(stat(dbpath, &st), 0);
    ck_assert_int_eq(st.st_size, (off_t)sizeof junk);
}
END_TEST

/* Entries of dir other than . and .. (-1 if it cannot be read). */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* What the unprivileged child reports. */
typedef struct ro_report {
    int stage; /* 0: opened (rc below); 1: setgroups/setgid/setuid failed;
                * 2: the directory cannot be reached as nobody */
    int rc;
    char msg[512];
} ro_report;

static void ro_send(int fd, const ro_report *m)
{
    if (tu_write_all(fd, m, sizeof *m) != 0)
        _exit(3);
}

static void ro_child(int wfd)
{
    ro_report m;
    memset(&m, 0, sizeof m);
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 ||
        setuid(65534) != 0 || getuid() != 65534 || geteuid() != 65534 ||
        getegid() != 65534) {
        m.stage = 1;
        snprintf(m.msg, sizeof m.msg, "%s", strerror(errno));
        ro_send(wfd, &m);
        _exit(0);
    }
    if (access(tmpdir, X_OK) != 0) {
        m.stage = 2;
        snprintf(m.msg, sizeof m.msg, "%s: %s", tmpdir, strerror(errno));
        ro_send(wfd, &m);
        _exit(0);
    }
    env e;
    m.rc = env_try(&e, dbpath, 0);
    snprintf(m.msg, sizeof m.msg, "%s", kv_last_errmsg());
    if (m.rc != KV_OK)
        e.s = NULL;
    tu_env_close(&e, false);
    ro_send(wfd, &m);
    _exit(0);
}

START_TEST(test_readonly_directory)
{
    if (geteuid() != 0) {
        ck_assert_int_eq(chmod(tmpdir, 0555), 0);
        env e;
        int rc = env_try(&e, dbpath, 0);
        ck_assert_msg(rc == KV_EBACKEND || rc == KV_EREADONLY,
                      "open: %s (%s)", kv_err_name(rc), kv_last_errmsg());
        ck_assert_msg(strlen(kv_last_errmsg()) > 0, "no message");
        e.s = NULL;
        tu_env_close(&e, false);
        ck_assert_int_eq(dir_entries(tmpdir), 0);
        chmod(tmpdir, 0755);
        return;
    }
    /* Root writes through a 0555 directory (CAP_DAC_OVERRIDE): open as
     * nobody in a child.  The directory stays root's. */
    ck_assert_int_eq(chmod(tmpdir, 0555), 0);
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pfd[0]);
        ro_child(pfd[1]);
        _exit(4);
    }
    close(pfd[1]);
    ro_report m;
    size_t have = 0;
    while (have < sizeof m) {
        ssize_t r = read(pfd[0], (char *)&m + have, sizeof m - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        have += (size_t)r;
    }
    close(pfd[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child status %d", status);
    ck_assert_uint_eq(have, sizeof m);
    m.msg[sizeof m.msg - 1] = '\0';
    if (m.stage == 1) {
        fprintf(stderr, "check_sqlite_fault: read-only directory case "
                        "skipped (cannot drop root to uid 65534: %s)\n",
                m.msg);
        chmod(tmpdir, 0755);
        return;
    }
    ck_assert_msg(m.stage == 0, "nobody cannot reach the test directory "
                  "(%s): set TMPDIR to a world-searchable directory", m.msg);
    ck_assert_msg(m.rc == KV_EBACKEND || m.rc == KV_EREADONLY,
                  "open as nobody: %s (%s)", kv_err_name(m.rc), m.msg);
    ck_assert_msg(strlen(m.msg) > 0, "no message");
    fprintf(stderr, "check_sqlite_fault: read-only directory as nobody: "
                    "%s (%s)\n", kv_err_name(m.rc), m.msg);
    ck_assert_int_eq(dir_entries(tmpdir), 0);
    chmod(tmpdir, 0755);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* A full database                                                          */
/* ------------------------------------------------------------------------ */

#define FULL_VAL 3000u
#define FULL_MAX 4000u
#define FULL_BATCH 8u

static void full_value(unsigned char *buf, size_t len, uint32_t k)
{
    uint64_t x = 0x51ED2701ull + k * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
}

static kv_key *full_key(const char *kind, uint32_t k)
{
    char p[64];
    snprintf(p, sizeof p, "/full/%s%u", kind, k);
    kv_key *key = NULL;
    ck_assert_kv(kv_key_parse(&key, p), KV_OK);
    return key;
}

/* Put key kind/k (insert) and wait: its status, the token on success. */
static int full_put(kv_store *s, const char *kind, uint32_t k, uint64_t *tok,
                    char *msg, size_t cap)
{
    unsigned char buf[FULL_VAL];
    full_value(buf, sizeof buf, k);
    kv_key *key = full_key(kind, k);
    kv_record r = {key, buf, sizeof buf, 0};
    kv_fut *f = kv_put(s, &r, NULL);
    kv_key_free(key);
    int rc = kv_wait(f);
    if (rc == KV_OK)
        *tok = kv_fut_token(f);
    else if (msg != NULL)
        snprintf(msg, cap, "%s",
                 kv_fut_errmsg(f) != NULL ? kv_fut_errmsg(f) : "");
    kv_fut_free(f);
    return rc;
}

/* Check kind/k: present with its value and token tok, or absent (tok 0). */
static void full_check(kv_store *s, const char *kind, uint32_t k, uint64_t tok)
{
    kv_key *key = full_key(kind, k);
    kv_fut *f = kv_get(s, key, NULL);
    kv_key_free(key);
    int rc = kv_wait(f);
    if (tok == 0) {
        ck_assert_msg(rc == KV_ENOTFOUND, "%s%u: %s, want absent", kind, k,
                      kv_err_name(rc));
    } else {
        ck_assert_msg(rc == KV_OK, "%s%u: %s (%s)", kind, k, kv_err_name(rc),
                      kv_fut_errmsg(f));
        const kv_record *r = kv_fut_record(f);
        unsigned char buf[FULL_VAL];
        full_value(buf, sizeof buf, k);
        ck_assert_msg(r->token == tok, "%s%u: token %" PRIu64 ", want %" PRIu64,
                      kind, k, r->token, tok);
        ck_assert_msg(r->len == sizeof buf && memcmp(r->val, buf, r->len) == 0,
                      "%s%u: value differs", kind, k);
    }
    kv_fut_free(f);
}

/* An atomic batch of FULL_BATCH records batch<first..>: its status. */
static int full_batch(kv_store *s, uint32_t first, uint64_t *toks, char *msg,
                      size_t cap)
{
    static unsigned char bufs[FULL_BATCH][FULL_VAL];
    kv_record recs[FULL_BATCH];
    for (uint32_t i = 0; i < FULL_BATCH; i++) {
        full_value(bufs[i], FULL_VAL, first + i);
        recs[i] = (kv_record){full_key("batch", first + i), bufs[i],
                              FULL_VAL, 0};
    }
    kv_fut *f = kv_put_atomic(s, recs, FULL_BATCH, NULL);
    for (uint32_t i = 0; i < FULL_BATCH; i++)
        kv_key_free(recs[i].key);
    int rc = kv_wait(f);
    if (rc == KV_OK) {
        size_t nk = 99;
        kv_fut_keys(f, &nk);
        ck_assert_uint_eq(nk, 0);
    } else {
        snprintf(msg, cap, "%s",
                 kv_fut_errmsg(f) != NULL ? kv_fut_errmsg(f) : "");
    }
    kv_fut_free(f);
    /* The batch's tokens, read back (0: absent). */
    for (uint32_t i = 0; i < FULL_BATCH; i++) {
        kv_key *key = full_key("batch", first + i);
        kv_fut *g = kv_get(s, key, NULL);
        kv_key_free(key);
        int grc = kv_wait(g);
        ck_assert_msg(grc == KV_OK || grc == KV_ENOTFOUND, "get: %s",
                      kv_err_name(grc));
        toks[i] = grc == KV_OK ? kv_fut_record(g)->token : 0;
        kv_fut_free(g);
    }
    return rc;
}

/* Records under prefix (a query with values). */
static size_t count_under(kv_store *s, const char *prefix)
{
    kv_key *rk = NULL;
    ck_assert_kv(kv_key_parse(&rk, prefix), KV_OK);
    size_t n = tu_query_count_v(s, rk, true);
    kv_key_free(rk);
    return n;
}

START_TEST(test_full_database)
{
    static uint64_t toks[FULL_MAX];
    memset(toks, 0, sizeof toks);
    env e;
    int rc = env_try(&e, dbpath, 0);
    ck_assert_msg(rc == KV_OK, "open: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
    ck_assert_kv(kv__sqlite_set_max_pages(NULL, 10), KV_EINVAL);
    /* A few records, then a limit of 64 pages (256 KiB at 4 KiB pages). */
    uint32_t n = 0;
    for (; n < 4; n++)
        ck_assert_kv(full_put(e.s, "k", n, &toks[n], NULL, 0), KV_OK);
    ck_assert_kv(kv__sqlite_set_max_pages(e.s, 64), KV_OK);
    char msg[512] = "";
    for (; n < FULL_MAX; n++) {
        rc = full_put(e.s, "k", n, &toks[n], msg, sizeof msg);
        if (rc != KV_OK)
            break;
    }
    ck_assert_msg(n < FULL_MAX, "%u puts never filled 64 pages", n);
    ck_assert_msg(n > 4, "the first put after the limit failed: %s (%s)",
                  kv_err_name(rc), msg);
    ck_assert_msg(rc == KV_EBACKEND, "full: %s (%s), want KV_EBACKEND",
                  kv_err_name(rc), msg);
    ck_assert_msg(strstr(msg, "full") != NULL,
                  "full: the message does not say so: \"%s\"", msg);
    uint32_t failed = n;
    toks[failed] = 0;
    fprintf(stderr, "check_sqlite_fault: full after %u puts: %s\n", n, msg);
    /* Everything committed before is intact; the failed key is absent. */
    for (uint32_t k = 0; k <= failed; k++)
        full_check(e.s, "k", k, toks[k]);
    /* A batch that does not fit writes nothing. */
    uint64_t bt[FULL_BATCH];
    char bmsg[512] = "";
    rc = full_batch(e.s, 0, bt, bmsg, sizeof bmsg);
    ck_assert_msg(rc == KV_EBACKEND, "batch: %s (%s), want KV_EBACKEND",
                  kv_err_name(rc), bmsg);
    ck_assert_msg(strstr(bmsg, "full") != NULL,
                  "batch: the message does not say so: \"%s\"", bmsg);
    for (uint32_t i = 0; i < FULL_BATCH; i++)
        ck_assert_msg(bt[i] == 0, "batch%u written by a failed batch", i);
    for (uint32_t k = 0; k < failed; k++)
        full_check(e.s, "k", k, toks[k]);
    /* Lift the limit: the failed put, the batch and more succeed. */
    ck_assert_kv(kv__sqlite_set_max_pages(e.s, 0), KV_OK);
    for (n = failed; n < failed + 64; n++)
        ck_assert_kv(full_put(e.s, "k", n, &toks[n], NULL, 0), KV_OK);
    uint32_t total = n;
    rc = full_batch(e.s, 0, bt, bmsg, sizeof bmsg);
    ck_assert_msg(rc == KV_OK, "batch after the limit was lifted: %s (%s)",
                  kv_err_name(rc), bmsg);
    for (uint32_t i = 0; i < FULL_BATCH; i++)
        ck_assert_msg(bt[i] != 0, "batch%u missing", i);
    for (uint32_t k = 0; k < total; k++)
        full_check(e.s, "k", k, toks[k]);
    ck_assert_uint_eq(count_under(e.s, "/full"), total + FULL_BATCH);
    tu_env_close(&e, false);
    /* Reopened: exactly the committed records. */
    rc = env_try(&e, dbpath, 0);
    ck_assert_msg(rc == KV_OK, "reopen: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
    for (uint32_t k = 0; k < total; k++)
        full_check(e.s, "k", k, toks[k]);
    for (uint32_t i = 0; i < FULL_BATCH; i++)
        full_check(e.s, "batch", i, bt[i]);
    full_check(e.s, "k", total, 0);
    ck_assert_uint_eq(count_under(e.s, "/full"), total + FULL_BATCH);
    tu_env_close(&e, false);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* kill -9                                                                  */
/* ------------------------------------------------------------------------ */

#define CR_KEYS 64u

static size_t gen_value(uint64_t seed, unsigned char *buf, size_t cap)
{
    size_t len = (size_t)(seed % 3000);
    if (len > cap)
        len = cap;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)cu_rnd(&x);
    return len;
}

/* The crash test, in the parent and the child: mode "crash" opens the store
 * with KV_SQLITE_SYNC_FULL, "crash-normal" with no flag (NORMAL). */
static unsigned cr_flags(const char *mode)
{
    return strcmp(mode, "crash") == 0 ? KV_SQLITE_SYNC_FULL : 0;
}

static void cr_init(cu_crash *c, const char *mode)
{
    *c = (cu_crash){.exe = self_exe,
                    .mode = mode,
                    .path = dbpath,
                    .nkeys = CR_KEYS,
                    .value = gen_value};
}

static void crash_child(const char *mode, int wfd, uint64_t seed)
{
    static cu_crash c;
    cr_init(&c, mode);
    env e;
    if (env_try(&e, dbpath, cr_flags(mode)) != KV_OK)
        _exit(30);
    cu_child_run(&c, e.loop, e.s, wfd, seed);
}

static size_t crash_round(cu_crash *c, uint64_t seed, int delay_ms)
{
    size_t acked = cu_child_round(c, seed, delay_ms);
    env e;
    int rc = env_try(&e, dbpath, cr_flags(c->mode));
    ck_assert_msg(rc == KV_OK, "reopen: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
    cu_check_keys(c, e.s, seed, delay_ms);
    /* No stray record: a query sees exactly the present keys. */
    ck_assert_uint_eq(count_under(e.s, "/crash"), cu_present(c));
    tu_env_close(&e, false);
    return acked;
}

static void crash_rounds(const char *mode)
{
    int rounds = cu_rounds("KV_SQLITE_CRASH_ROUNDS", 20);
    if (rounds <= 0)
        return;
    static cu_crash c;
    cr_init(&c, mode);
    uint64_t seed;
    size_t total = cu_run(&c, rounds, 30, 270, crash_round, &seed);
    fprintf(stderr, "check_sqlite_fault: crash test (%s): %d rounds, %zu "
                    "acknowledged operations verified (seed %" PRIu64 ")\n",
            mode, rounds, total, seed);
}

START_TEST(test_crash_sigkill)
{
    crash_rounds("crash");
}
END_TEST

START_TEST(test_crash_sigkill_normal)
{
    /* The child inherits the bound. */
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "1M", 1), 0);
    crash_rounds("crash-normal");
    ck_assert_int_eq(unsetenv("KV_SQLITE_WAL_MAX"), 0);
}
END_TEST

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0 || (size_t)n >= sizeof self_exe - 1)
        snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    else
        self_exe[n] = '\0';
    if (argc >= 6 && strcmp(argv[1], "child") == 0 &&
        (strcmp(argv[2], "crash") == 0 ||
         strcmp(argv[2], "crash-normal") == 0)) {
        snprintf(dbpath, sizeof dbpath, "%s", argv[3]);
        crash_child(argv[2], atoi(argv[5]), strtoull(argv[4], NULL, 10));
        _exit(34);
    }
    Suite *s = suite_create("sqlite_fault");
    TCase *tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_not_a_database);
    tcase_add_test(tc, test_readonly_directory);
    tcase_add_test(tc, test_full_database);
    suite_add_tcase(s, tc);

    tc = tcase_create("crash");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_crash_sigkill);
    tcase_add_test(tc, test_crash_sigkill_normal);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
