/*
 * testutil.h - shared helpers for the check suites.
 */
#ifndef KV_TESTUTIL_H
#define KV_TESTUTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <semaphore.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kvstore.h"

/* Assert a kvstore call returned code, printing both names on failure. */
#define ck_assert_kv(expr, code)                                              \
    do {                                                                      \
        int kv_rc_ = (expr);                                                  \
        ck_assert_msg(kv_rc_ == (code), "%s: got %s (%d: %s), want %s",       \
                      #expr, kv_err_name(kv_rc_), kv_rc_, kv_strerror(kv_rc_), \
                      kv_err_name(code));                                     \
    } while (0)

/* Wait for f, which must not be NULL, and assert its status is want;
 * what and line name the call in the message.  Returns f. */
static inline kv_fut *tu_await(kv_fut *f, int want, const char *what,
                               int line)
{
    ck_assert_msg(f != NULL, "line %d: %s returned NULL", line, what);
    int rc = kv_wait(f);
    ck_assert_msg(rc == want, "line %d: %s: got %s (%s), want %s", line, what,
                  kv_err_name(rc), kv_fut_errmsg(f), kv_err_name(want));
    return f;
}
/* Wait for f, assert its status, return it (the caller frees it). */
#define AWAIT(f, want) tu_await((f), (want), #f, __LINE__)
/* Wait, assert, free. */
#define EXPECT(f, want) kv_fut_free(AWAIT(f, want))

/* Make a temporary directory (mkdtemp under $TMPDIR or /tmp).  Caller frees. */
static inline char *tu_mkdtemp(void)
{
    const char *base = getenv("TMPDIR");
    char *path = malloc(4096);
    if (path == NULL)
        return NULL;
    snprintf(path, 4096, "%s/kvstore-test-XXXXXX", base ? base : "/tmp");
    if (mkdtemp(path) == NULL) {
        free(path);
        return NULL;
    }
    return path;
}

/* rm -rf path (test directories only). */
static inline void tu_rmrf(const char *path)
{
    char cmd[4200];
    if (path == NULL || strncmp(path, "/tmp/", 5) != 0) {
        const char *base = getenv("TMPDIR");
        if (path == NULL || base == NULL || strncmp(path, base, strlen(base)))
            return;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

/* Halves of a per-test fixture: *dir a new temporary directory (which must
 * be made); *dir removed, freed and cleared. */
static inline void tu_tmpdir_new(char **dir)
{
    *dir = tu_mkdtemp();
    ck_assert_ptr_nonnull(*dir);
}

static inline void tu_tmpdir_free(char **dir)
{
    tu_rmrf(*dir);
    free(*dir);
    *dir = NULL;
}

/* Milliseconds on the monotonic clock. */
static inline double tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Run loop until nothing is pending, then free it: it must be clean. */
static inline void tu_finish_loop(kv_loop *loop)
{
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert(!kv_loop_alive(loop));
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}

/* A store with its loop and pool. */
typedef struct tu_env {
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
} tu_env;

/*
 * Close and free e's store, if open, and clear it.  With check the close
 * must succeed; without (child processes, which must not call ck_assert:
 * even a passing one talks to the test runner) nothing is checked.
 */
static inline void tu_env_close_store(tu_env *e, bool check)
{
    if (e->s == NULL)
        return;
    kv_fut *f = kv_close(e->s);
    int rc = kv_wait(f);
    if (check)
        ck_assert_msg(rc == KV_OK, "kv_close: got %s (%d: %s), want KV_OK",
                      kv_err_name(rc), rc, kv_strerror(rc));
    kv_fut_free(f);
    kv_store_free(e->s);
    e->s = NULL;
}

/*
 * Tear e down: close its store (tu_env_close_store), run the loop dry, free
 * the loop and the pool.  With check, the close, the run and the loop's
 * free must succeed; without, nothing is checked.
 */
static inline void tu_env_close(tu_env *e, bool check)
{
    tu_env_close_store(e, check);
    int rc = kv_loop_run(e->loop, KV_RUN_DEFAULT);
    if (check)
        ck_assert_msg(rc >= 0, "kv_loop_run: got %d, want >= 0", rc);
    rc = kv_loop_free(e->loop);
    if (check)
        ck_assert_msg(rc == KV_OK,
                      "kv_loop_free: got %s (%d: %s), want KV_OK",
                      kv_err_name(rc), rc, kv_strerror(rc));
    kv_pool_free(e->pool);
}

/*
 * Open q on s and fetch it whole, both of which must succeed.  Returns the
 * fetch's future (kv_fut_records) and *it the iterator: the caller frees
 * both.
 */
static inline kv_fut *tu_query_fetch(kv_store *s, const kv_query *q,
                                     kv_iter **it)
{
    kv_fut *f = kv_query_open(s, q, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    *it = kv_fut_take_iter(f);
    ck_assert_ptr_nonnull(*it);
    kv_fut_free(f);
    f = kv_iter_fetch_all(*it);
    ck_assert_kv(kv_wait(f), KV_OK);
    return f;
}

/*
 * The number of records under prefix (the prefix's own record included),
 * by a query fetched whole, with values or keys only; the query must
 * succeed.
 */
static inline size_t tu_query_count_v(kv_store *s, const kv_key *prefix,
                                      bool value)
{
    kv_query q = kv_query_init(prefix);
    q.value = value;
    kv_iter *it;
    kv_fut *f = tu_query_fetch(s, &q, &it);
    size_t n = 0;
    kv_fut_records(f, &n);
    kv_fut_free(f);
    kv_iter_free(it);
    return n;
}

/* tu_query_count_v keys only. */
static inline size_t tu_query_count(kv_store *s, const kv_key *prefix)
{
    return tu_query_count_v(s, prefix, false);
}

/* The descriptors this process has open. */
static inline int tu_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the DIR's own */
}

/*
 * Make io_uring_setup fail EPERM in this process from now on, as Docker's
 * default seccomp profile does, with a seccomp filter (after
 * PR_SET_NO_NEW_PRIVS, so no privilege is needed).  The filter cannot be
 * removed and is inherited: call this in a child process.  0, or -1 (errno
 * set) where seccomp filters are unavailable: the caller then skips.
 */
static inline int tu_block_io_uring(void)
{
#if defined(__NR_io_uring_setup) && defined(SECCOMP_RET_ERRNO)
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & 0xffff)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return -1;
    return 0;
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Write all n bytes of p to fd (again after EINTR): 0, or -1 on error. */
static inline int tu_write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Run a suite; returns the process exit status. */
/*
 * A Redis row's store URI: the servers of the environment variable env,
 * then /name and opts ("" or "?..."); over TLS (a rediss:// server with a
 * password) as the ACL user kvuser of tests/redis_env.sh, whose keys start
 * with kvacl, trusting the test CA (KV_TEST_REDIS_TLS_CA).
 */
static inline void tu_redis_uri(const char *env, const char *name,
                                const char *opts, char *out, size_t len)
{
    const char *base = getenv(env);
    if (base == NULL)
        base = "";
    if (strncmp(base, "rediss://", 9) != 0) {
        snprintf(out, len, "%s/%s%s", base, name, opts);
        return;
    }
    const char *ca = getenv("KV_TEST_REDIS_TLS_CA");
    snprintf(out, len, "rediss://kvuser:kv-pw@%s/kvacl%s%s%scacert=%s",
             base + 9, name, opts, opts[0] != '\0' ? "&" : "?",
             ca != NULL ? ca : "");
}

/* A pool job that holds its worker until the gate opens: sem_post(&in)
 * once it holds it, then waits for go. */
typedef struct tu_gate {
    sem_t in, go;
} tu_gate;

static inline int tu_hold_worker(void *arg)
{
    tu_gate *g = arg;
    sem_post(&g->in);
    while (sem_wait(&g->go) != 0)
        ;
    return KV_OK;
}

static inline int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
