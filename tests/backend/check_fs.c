/*
 * check_fs.c - the filesystem backend beyond the conformance suite: value
 * sizes, the name encoding against hostile keys, depth, symlinks planted
 * in the root, corruption, the lock, temp-file cleanup, tokens across
 * reopen, group commit, failed writes, drop, close with work in flight, a
 * crash test (SIGKILL at a random moment, repeated), and a proof that the
 * loop thread issues no file syscall during puts and gets (seccomp).
 *
 * The benchmark that measures puts/s and fsyncs per put is tools/fsbench.
 *
 * Environment: KV_FS_CRASH_ROUNDS=n sets the crash rounds (default 24;
 * 0 skips, e.g. under valgrind).
 */
#include "config.h"

#include "store/store_int.h"
#include "backend/fs/fs.h"
#include "core/fault.h"
#include "testutil.h"
#include "crashutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#if defined(__linux__)
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

/* fs.c's counters: puts, deletes, gets, file fsyncs, dir fsyncs, mkdirs,
 * short writes, temp files left behind, puts that overwrote a spare file,
 * puts that left the replaced file as a spare (exchanged). */
void kv__fs_stats(const kv_store *s, uint64_t out[10]);
enum {
    S_PUTS, S_DELS, S_GETS, S_FFSYNC, S_DFSYNC, S_MKDIR, S_SHORT, S_LEAK,
    S_RECYCLED, S_EXCHANGED, S_N
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static char *tmpdir;  /* per test, removed by the fixture */
static char root[4200]; /* tmpdir/store */

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
    snprintf(root, sizeof root, "%s/store", tmpdir);
}

static void teardown(void)
{
    tu_tmpdir_free(&tmpdir);
}

typedef tu_env env;

static int env_open(env *e, const char *dir, unsigned depth, unsigned flags)
{
    return kv_fs_open(&e->s, e->loop, e->pool, dir, depth, flags);
}

static void env_init(env *e, unsigned depth, unsigned flags)
{
    memset(e, 0, sizeof *e);
    ck_assert_kv(kv_loop_new(&e->loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e->pool, 2), KV_OK);
    int rc = env_open(e, root, depth, flags);
    ck_assert_msg(rc == KV_OK, "open: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
}

static void env_reopen(env *e, unsigned depth, unsigned flags)
{
    tu_env_close_store(e, true);
    int rc = env_open(e, root, depth, flags);
    ck_assert_msg(rc == KV_OK, "reopen: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
}

/* Set in "child" processes, which must not call ck_assert (even a passing
 * one talks to the test runner). */
static bool in_child;

static kv_key *key_of(const char *path)
{
    kv_key *k = NULL;
    int rc = kv_key_parse(&k, path);
    if (rc != KV_OK) {
        if (in_child)
            _exit(99);
        ck_abort_msg("parse %s: %s", path, kv_last_errmsg());
    }
    return k;
}

/* Put; returns the status, the new token in *tok. */
static int put_k(kv_store *s, const kv_key *k, const void *v, size_t n,
                 uint64_t token, uint64_t *tok)
{
    kv_record r = {(kv_key *)k, (void *)v, n, token};
    kv_fut *f = kv_put(s, &r, NULL);
    int rc = kv_wait(f);
    if (tok != NULL)
        *tok = rc == KV_OK ? kv_fut_token(f) : 0;
    kv_fut_free(f);
    return rc;
}

static int put_s(kv_store *s, const char *path, const char *v,
                 uint64_t token, uint64_t *tok)
{
    kv_key *k = key_of(path);
    int rc = put_k(s, k, v, strlen(v), token, tok);
    kv_key_free(k);
    return rc;
}

/* Get: status; on success a copy of the value (malloc) and the token. */
static int get_k(kv_store *s, const kv_key *k, void **v, size_t *n,
                 uint64_t *tok)
{
    kv_fut *f = kv_get(s, k, NULL);
    int rc = kv_wait(f);
    if (rc == KV_OK) {
        const kv_record *r = kv_fut_record(f);
        if (v != NULL) {
            *v = malloc(r->len + 1);
            memcpy(*v, r->val, r->len);
            ((char *)*v)[r->len] = '\0';
        }
        if (n != NULL)
            *n = r->len;
        if (tok != NULL)
            *tok = r->token;
    }
    kv_fut_free(f);
    return rc;
}

static int get_s(kv_store *s, const char *path, char **v, uint64_t *tok)
{
    kv_key *k = key_of(path);
    int rc = get_k(s, k, (void **)v, NULL, tok);
    kv_key_free(k);
    return rc;
}

static int has_s(kv_store *s, const char *path, bool *yes)
{
    kv_key *k = key_of(path);
    kv_fut *f = kv_has(s, k);
    int rc = kv_wait(f);
    if (yes != NULL)
        *yes = rc == KV_OK && kv_fut_bool(f);
    kv_fut_free(f);
    kv_key_free(k);
    return rc;
}

static int del_s(kv_store *s, const char *path, uint64_t token)
{
    kv_key *k = key_of(path);
    kv_fut *f = kv_delete(s, k, token);
    int rc = kv_wait(f);
    kv_fut_free(f);
    kv_key_free(k);
    return rc;
}

/* All records under prefix, in sort order: ids (strdup'd) and status. */
static int query_ids(kv_store *s, const char *prefix, kv_sort sort,
                     bool value, char ***ids, size_t *n)
{
    kv_key *k = key_of(prefix);
    kv_query q = kv_query_init(k);
    q.sort = sort;
    q.value = value;
    kv_fut *f = kv_query_open(s, &q, NULL);
    int rc = kv_wait(f);
    kv_key_free(k);
    *ids = NULL;
    *n = 0;
    if (rc != KV_OK) {
        kv_fut_free(f);
        return rc;
    }
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    f = kv_iter_fetch_all(it);
    rc = kv_wait(f);
    if (rc == KV_OK) {
        size_t m;
        const kv_record *r = kv_fut_records(f, &m);
        *ids = calloc(m + 1, sizeof **ids);
        for (size_t i = 0; i < m; i++) {
            (*ids)[i] = strdup(kv_key_id(r[i].key));
            if (value)
                ck_assert_ptr_nonnull(r[i].val);
            else
                ck_assert_ptr_null(r[i].val);
            ck_assert_uint_ne(r[i].token, 0);
        }
        *n = m;
    }
    kv_fut_free(f);
    kv_iter_free(it);
    return rc;
}

static void free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

static char *path_in(const char *dir, const char *rel)
{
    char *p = malloc(strlen(dir) + strlen(rel) + 2);
    sprintf(p, "%s/%s", dir, rel);
    return p;
}

static bool exists(const char *dir, const char *rel)
{
    char *p = path_in(dir, rel);
    struct stat st;
    bool yes = lstat(p, &st) == 0;
    free(p);
    return yes;
}

/* Check every name below dir: store names only ([A-Za-z0-9_%-] pieces,
 * ".kv" / ".+" suffixes, the two dot-files at the top), none longer than
 * NAME_MAX.  Counts records and temp files.  Descriptor-relative: long
 * keys make paths longer than PATH_MAX. */
static void check_tree_fd(int dfd, bool top, size_t *records, size_t *temps)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(fd, 0);
    DIR *d = fdopendir(fd);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
            continue;
        ck_assert_uint_le(strlen(nm), NAME_MAX);
        if (strncmp(nm, ".tmp-", 5) == 0) {
            (*temps)++;
            continue;
        }
        if (top && (strcmp(nm, ".lock") == 0 || strcmp(nm, ".tokens") == 0 ||
                    strcmp(nm, ".clean") == 0 || strcmp(nm, ".format") == 0))
            continue;
        size_t len = strlen(nm), bl = len;
        bool rec = len > 3 && strcmp(nm + len - 3, ".kv") == 0;
        bool cont = len > 2 && strcmp(nm + len - 2, ".+") == 0;
        /* A bucket of the fan-out layout: "00.b" to "0f.b". */
        bool bucket = len == 4 && nm[0] == '0' &&
                      strchr("0123456789abcdef", nm[1]) != NULL &&
                      strcmp(nm + 2, ".b") == 0;
        if (rec)
            bl = len - 3;
        else if (cont)
            bl = len - 2;
        else if (bucket)
            bl = 2;
        ck_assert_msg(bl > 0 && bl <= 240, "bad name length: %s", nm);
        for (size_t i = 0; i < bl; i++) {
            char c = nm[i];
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                      c == '%';
            ck_assert_msg(ok, "unexpected byte in name %s", nm);
        }
        struct stat st;
        ck_assert_int_eq(fstatat(dfd, nm, &st, AT_SYMLINK_NOFOLLOW), 0);
        if (rec) {
            ck_assert_msg(S_ISREG(st.st_mode), "%s is not a file", nm);
            (*records)++;
        } else {
            ck_assert_msg(S_ISDIR(st.st_mode), "%s is not a directory", nm);
            int sub = openat(dfd, nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            ck_assert_int_ge(sub, 0);
            check_tree_fd(sub, false, records, temps);
            close(sub);
        }
    }
    closedir(d);
}

/* Count records and temp files below dfd, asserting nothing (children). */
static void count_files(int dfd, size_t *records, size_t *temps)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL)
        _exit(98);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        if (strncmp(nm, ".tmp-", 5) == 0)
            (*temps)++;
        else if (len > 3 && strcmp(nm + len - 3, ".kv") == 0)
            (*records)++;
        else if (nm[0] != '.') {
            int sub = openat(dfd, nm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (sub >= 0) {
                count_files(sub, records, temps);
                close(sub);
            }
        }
    }
    closedir(d);
}

static void check_tree(const char *dir, bool top, size_t *records,
                       size_t *temps)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    ck_assert_msg(fd >= 0, "open %s: %s", dir, strerror(errno));
    check_tree_fd(fd, top, records, temps);
    close(fd);
}

/*
 * Children run as a fresh image of this program ("check_fs child <mode>
 * ..."), not as a bare fork: they neither inherit the test's loop, ring and
 * allocations nor run under valgrind when the tests do.
 */
static char self_exe[PATH_MAX];

static pid_t spawn_child(const char *mode, const char *a1, const char *a2,
                         const char *a3)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char *argv[] = {self_exe, "child",     (char *)mode, (char *)a1,
                        (char *)a2, (char *)a3, NULL};
        execv(self_exe, argv);
        _exit(127);
    }
    return pid;
}

static int wait_child(pid_t pid)
{
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return st;
}

/* Value bytes of a seed (also used by the crash test). */
static size_t gen_value(uint64_t seed, unsigned char *buf, size_t cap)
{
    size_t len = (size_t)(seed % 6000);
    if (len > cap)
        len = cap;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    return len;
}

/* ------------------------------------------------------------------------ */
/* Records                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(test_value_sizes)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    /* Around the first read (4096 bytes, 40 of them header) and larger. */
    static const size_t sizes[] = {0,    1,    4055,  4056,   4057,
                                   8191, 8192, 65537, 1u << 20};
    unsigned char *buf = malloc((1u << 20) + 1);
    for (size_t i = 0; i < KV__ARRAY_SIZE(sizes); i++) {
        size_t n = sizes[i];
        for (size_t j = 0; j < n; j++)
            buf[j] = (unsigned char)(j * 7 + i);
        char path[32];
        snprintf(path, sizeof path, "/size/%zu", n);
        kv_key *k = key_of(path);
        uint64_t tok = 0, tok2 = 0;
        ck_assert_kv(put_k(e.s, k, buf, n, 0, &tok), KV_OK);
        ck_assert_uint_ne(tok, 0);
        void *v = NULL;
        size_t got = 0;
        ck_assert_kv(get_k(e.s, k, &v, &got, &tok2), KV_OK);
        ck_assert_uint_eq(got, n);
        ck_assert_uint_eq(tok2, tok);
        ck_assert(n == 0 || memcmp(v, buf, n) == 0);
        free(v);
        /* Replace with CAS; the old token now conflicts. */
        ck_assert_kv(put_k(e.s, k, "x", 1, tok, &tok2), KV_OK);
        ck_assert_uint_gt(tok2, tok);
        ck_assert_kv(put_k(e.s, k, "y", 1, tok, NULL), KV_ECONFLICT);
        kv_key_free(k);
    }
    free(buf);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_record_and_children)
{
    env e;
    env_init(&e, 0, 0);
    uint64_t ta, tb, tc;
    ck_assert_kv(put_s(e.s, "/a", "A", 0, &ta), KV_OK);
    ck_assert_kv(put_s(e.s, "/a/b", "B", 0, &tb), KV_OK);
    ck_assert_kv(put_s(e.s, "/a/b/c", "C", 0, &tc), KV_OK);
    ck_assert_kv(put_s(e.s, "/a-b", "D", 0, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/ab", "E", 0, NULL), KV_OK);
    ck_assert(exists(root, "a.kv"));
    ck_assert(exists(root, "a/b.kv"));
    ck_assert(exists(root, "a/b/c.kv"));
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, true, &ids, &n), KV_OK);
    const char *want[] = {"/a", "/a/b", "/a/b/c", "/a-b", "/ab"};
    ck_assert_uint_eq(n, 5);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(ids[i], want[i]);
    free_ids(ids, n);
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_DESC, false, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 5);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(ids[i], want[4 - i]);
    free_ids(ids, n);
    /* Deleting the parent record keeps the children. */
    ck_assert_kv(del_s(e.s, "/a", ta), KV_OK);
    ck_assert_kv(get_s(e.s, "/a", NULL, NULL), KV_ENOTFOUND);
    ck_assert_kv(get_s(e.s, "/a/b/c", NULL, NULL), KV_OK);
    ck_assert_kv(query_ids(e.s, "/a", KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(ids[0], "/a/b");
    ck_assert_str_eq(ids[1], "/a/b/c");
    free_ids(ids, n);
    /* The metadata files never show up. */
    ck_assert(exists(root, ".lock"));
    ck_assert(exists(root, ".tokens"));
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Hostile keys                                                             */
/* ------------------------------------------------------------------------ */

static int cmp_keyid(const void *a, const void *b)
{
    kv_key *x = key_of(*(char *const *)a), *y = key_of(*(char *const *)b);
    int c = kv_key_cmp(x, y);
    kv_key_free(x);
    kv_key_free(y);
    return c;
}

/* _i: 0 the flat layout, 1 the fan-out layout. */
START_TEST(test_hostile_keys)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC | (_i == 1 ? KV_FS_FANOUT : 0));
    /* Outside the store: nothing may appear here. */
    char *outside = path_in(tmpdir, "outside");
    ck_assert_int_eq(mkdir(outside, 0755), 0);
    char long1[300], long2[KV_NS_MAX_LEN + 1], longsp[600];
    memset(long1, 'x', sizeof long1 - 1);
    long1[sizeof long1 - 1] = '\0';
    for (size_t i = 0; i < sizeof long2 - 1; i++)
        long2[i] = (char)(0x80 + i % 0x7f); /* every byte escaped: 3072 */
    long2[sizeof long2 - 1] = '\0';
    memset(longsp, '.', sizeof longsp - 1);
    longsp[sizeof longsp - 1] = '\0';
    char ctl[] = {'a', 0x01, 0x02, 0x1b, 0x7f, 'b', '\0'};
    char *paths[] = {
        "/..",
        "/../..",
        "/../../etc/passwd",
        "/.",
        "/.hidden",
        "/...",
        "/a.kv",
        "/a.+",
        "/.tmp-0000000000000000",
        "/.lock",
        "/.tokens",
        "/%2E%2E",
        "/%",
        "/a%b",
        "/f:..",
        "/..:x",
        "/with space/in it",
        "/caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac",
        "/\xff\xfe",
        NULL, /* ctl */
        NULL, /* long1 (> NAME_MAX) */
        NULL, /* long2 (3072 escaped bytes, the longest namespace) */
        NULL, /* longsp/long1: two long levels */
        "/x/a.kv/..",
        "/-rf",
        "/a/-/_",
    };
    char buf[9000];
    size_t np = KV__ARRAY_SIZE(paths);
    snprintf(buf, sizeof buf, "/%s", ctl);
    paths[19] = strdup(buf);
    snprintf(buf, sizeof buf, "/%s", long1);
    paths[20] = strdup(buf);
    snprintf(buf, sizeof buf, "/%s", long2);
    paths[21] = strdup(buf);
    snprintf(buf, sizeof buf, "/%s/%s", longsp, long1);
    paths[22] = strdup(buf);
    for (size_t i = 0; i < np; i++) {
        char val[32];
        snprintf(val, sizeof val, "v%zu", i);
        uint64_t tok;
        int rc = put_s(e.s, paths[i], val, 0, &tok);
        ck_assert_msg(rc == KV_OK, "put %zu: %s (%s)", i, kv_err_name(rc),
                      kv_strerror(rc));
        char *got = NULL;
        ck_assert_kv(get_s(e.s, paths[i], &got, NULL), KV_OK);
        ck_assert_str_eq(got, val);
        free(got);
        bool yes;
        ck_assert_kv(has_s(e.s, paths[i], &yes), KV_OK);
        ck_assert(yes);
    }
    /* Only store names on disk, one record per key, nothing outside. */
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(records, np);
    ck_assert_uint_eq(temps, 0);
    DIR *d = opendir(outside);
    int entries = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        entries++;
    closedir(d);
    ck_assert_int_eq(entries, 2);
    ck_assert(!exists(tmpdir, "etc"));
    /* A query gives every key back, in kv_key_cmp order, both ways; also
     * across a reopen (names decode back to the same keys). */
    char **sorted = malloc(np * sizeof *sorted);
    for (size_t i = 0; i < np; i++) {
        kv_key *k = key_of(paths[i]);
        sorted[i] = strdup(kv_key_id(k));
        kv_key_free(k);
    }
    qsort(sorted, np, sizeof *sorted, cmp_keyid);
    for (int round = 0; round < 2; round++) {
        char **ids;
        size_t n;
        ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, true, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, np);
        for (size_t i = 0; i < n; i++)
            ck_assert_str_eq(ids[i], sorted[i]);
        free_ids(ids, n);
        ck_assert_kv(query_ids(e.s, "/", KV_SORT_DESC, false, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, np);
        for (size_t i = 0; i < n; i++)
            ck_assert_str_eq(ids[i], sorted[np - 1 - i]);
        free_ids(ids, n);
        env_reopen(&e, 0, KV_FS_NO_FSYNC);
    }
    /* Prefix queries on long and dotted keys. */
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, paths[22], KV_SORT_ASC, true, &ids, &n),
                 KV_OK);
    ck_assert_uint_eq(n, 1);
    free_ids(ids, n);
    snprintf(buf, sizeof buf, "/%s", longsp);
    ck_assert_kv(query_ids(e.s, buf, KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 1);
    free_ids(ids, n);
    ck_assert_kv(query_ids(e.s, "/..", KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 3); /* "/..", "/../.." and "/../../etc/passwd" */
    free_ids(ids, n);
    for (size_t i = 0; i < np; i++)
        free(sorted[i]);
    free(sorted);
    for (size_t i = 19; i <= 22; i++)
        free(paths[i]);
    free(outside);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_depth)
{
    env e;
    env_init(&e, 3, KV_FS_NO_FSYNC);
    uint64_t tok;
    ck_assert_kv(put_s(e.s, "/a/b/c", "ok", 0, &tok), KV_OK);
    ck_assert_kv(put_s(e.s, "/a/b/c/d", "deep", 0, NULL), KV_EINVAL);
    ck_assert_kv(get_s(e.s, "/a/b/c/d", NULL, NULL), KV_EINVAL);
    ck_assert_kv(has_s(e.s, "/a/b/c/d", NULL), KV_EINVAL);
    ck_assert_kv(del_s(e.s, "/a/b/c/d", 1), KV_EINVAL);
    /* A batch with one key too deep fails whole, writing nothing. */
    kv_key *k1 = key_of("/x"), *k2 = key_of("/x/y/z/w");
    kv_record recs[2] = {{k1, "1", 1, 0}, {k2, "2", 1, 0}};
    kv_fut *f = kv_put_many(e.s, recs, 2, NULL);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    ck_assert_kv(get_s(e.s, "/x", NULL, NULL), KV_ENOTFOUND);
    kv_key_free(k1);
    kv_key_free(k2);
    /* The default depth is 32. */
    env_reopen(&e, 0, KV_FS_NO_FSYNC);
    char p[256] = "";
    for (int i = 0; i < 33; i++)
        strcat(p, "/n");
    ck_assert_kv(put_s(e.s, p, "33", 0, NULL), KV_EINVAL);
    p[strlen(p) - 2] = '\0';
    ck_assert_kv(put_s(e.s, p, "32", 0, NULL), KV_OK);
    ck_assert_kv(get_s(e.s, p, NULL, NULL), KV_OK);
    tu_env_close(&e, true);
}
END_TEST

/* A key of n namespaces, each the byte c repeated seg times ("/ccc/ccc"). */
static kv_key *key_rep(size_t n, size_t seg, char c)
{
    char *p = malloc(n * (seg + 1) + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        p[o++] = '/';
        memset(p + o, c, seg);
        o += seg;
    }
    p[o] = '\0';
    kv_key *k = key_of(o > 0 ? p : "/");
    free(p);
    return k;
}

/* Put, get, has and delete of k all give want (KV_OK: k is then gone). */
static void limit_ops(kv_store *s, const kv_key *k, int want)
{
    uint64_t tok = 0;
    ck_assert_kv(put_k(s, k, "v", 1, 0, &tok), want);
    ck_assert_kv(get_k(s, k, NULL, NULL, NULL), want);
    kv_fut *f = kv_has(s, k);
    ck_assert_kv(kv_wait(f), want);
    kv_fut_free(f);
    f = kv_delete(s, k, tok);
    ck_assert_kv(kv_wait(f), want);
    kv_fut_free(f);
}

/* The key limits of kvstore.h, at and over each: the store layer checks
 * them for every backend (check_sqlite has the same test). */
START_TEST(test_key_limits)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    /* namespaces */
    kv_key *k = key_rep(KV_KEY_MAX_DEPTH, 1, 'n');
    limit_ops(e.s, k, KV_OK);
    kv_key_free(k);
    k = key_rep(KV_KEY_MAX_DEPTH + 1, 1, 'n');
    limit_ops(e.s, k, KV_EINVAL);
    kv_key_free(k);
    /* one namespace's bytes: '%' is escaped three-fold on fs */
    k = key_rep(1, KV_NS_MAX_LEN, '%');
    limit_ops(e.s, k, KV_OK);
    kv_key_free(k);
    k = key_rep(1, KV_NS_MAX_LEN + 1, '%');
    limit_ops(e.s, k, KV_EINVAL);
    kv_key_free(k);
    /* a field counts with its ':' */
    char *id = malloc(KV_NS_MAX_LEN + 3);
    memset(id, 'f', KV_NS_MAX_LEN + 2);
    id[0] = '/';
    id[100] = ':';
    id[KV_NS_MAX_LEN + 1] = '\0'; /* "/" + 1024 bytes */
    k = key_of(id);
    limit_ops(e.s, k, KV_OK);
    kv_key_free(k);
    id[KV_NS_MAX_LEN + 1] = 'f';
    id[KV_NS_MAX_LEN + 2] = '\0';
    k = key_of(id);
    limit_ops(e.s, k, KV_EINVAL);
    kv_key_free(k);
    free(id);
    /* the whole id: 4 namespaces of 1023 bytes and their '/' is 4096 */
    size_t seg = KV_KEY_MAX_LEN / 4 - 1;
    k = key_rep(4, seg, '%');
    ck_assert_uint_eq(strlen(kv_key_id(k)), KV_KEY_MAX_LEN);
    limit_ops(e.s, k, KV_OK);
    kv_key *k1 = key_rep(1, 1, 'x'), *over = NULL;
    const kv_key *parts[2] = {k, k1};
    ck_assert_kv(kv_key_concat(&over, parts, 2), KV_OK);
    limit_ops(e.s, over, KV_EINVAL);
    /* a batch with one key over a limit fails whole, writing nothing */
    kv_record recs[2] = {{k1, "1", 1, 0}, {over, "2", 1, 0}};
    kv_fut *f = kv_put_many(e.s, recs, 2, NULL);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    ck_assert_kv(get_k(e.s, k1, NULL, NULL, NULL), KV_ENOTFOUND);
    kv_key_free(over);
    kv_key_free(k1);
    kv_key_free(k);
    /* an fs store's depth may be smaller than KV_KEY_MAX_DEPTH, never
     * larger */
    tu_env_close_store(&e, true);
    ck_assert_kv(env_open(&e, root, KV_KEY_MAX_DEPTH + 1, 0), KV_EINVAL);
    ck_assert_kv(env_open(&e, root, KV_KEY_MAX_DEPTH, 0), KV_OK);
    tu_env_close(&e, true);
}
END_TEST

/*
 * The cost of a long key is linear in its length: its directories (one per
 * 240 escaped bytes) are made once each, and a put makes a bounded number of
 * allocations per directory (8: the io_uring fallback allocates per
 * operation) (the directory objects once held their whole
 * path: a 1 MiB namespace took 3.4 GB).
 */
START_TEST(test_long_key_cost)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    /* warm up: the token block, the root's objects */
    ck_assert_kv(put_s(e.s, "/warm", "v", 0, NULL), KV_OK);
    size_t seg = KV_KEY_MAX_LEN / 4 - 1; /* 1023 '%': 3069 escaped bytes */
    size_t chunks = (3 * seg + 239) / 240; /* 13 names, 12 ".+" dirs */
    kv_key *k = key_rep(4, seg, '%');
    uint64_t s0[10], s1[10];
    kv__fs_stats(e.s, s0);
    (void)kv__alloc_fail_at(0, false);
    uint64_t tok = 0;
    ck_assert_kv(put_k(e.s, k, "v", 1, 0, &tok), KV_OK);
    unsigned long nalloc = kv__alloc_fail_at(0, false);
    kv__fs_stats(e.s, s1);
    /* 4 namespaces of `chunks` names: every name but the record's is a
     * directory, each made once */
    uint64_t dirs = 4 * chunks - 1;
    ck_assert_uint_eq(s1[S_MKDIR] - s0[S_MKDIR], dirs);
    ck_assert_msg(nalloc <= 8 * dirs + 64, "%lu allocations for %" PRIu64
                  " directories", nalloc, dirs);
    /* a get of it, again, reuses or reopens the same objects */
    (void)kv__alloc_fail_at(0, false);
    ck_assert_kv(get_k(e.s, k, NULL, NULL, NULL), KV_OK);
    nalloc = kv__alloc_fail_at(0, false);
    ck_assert_msg(nalloc <= 8 * dirs + 64, "%lu allocations for a get",
                  nalloc);
    kv_key_free(k);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_symlinks_planted)
{
    env e;
    env_init(&e, 0, 0);
    char *outside = path_in(tmpdir, "outside");
    ck_assert_int_eq(mkdir(outside, 0755), 0);
    char *secret = path_in(outside, "r.kv");
    FILE *fp = fopen(secret, "w");
    fputs("secret", fp);
    fclose(fp);
    /* A directory symlink at the top and one level down. */
    char *l1 = path_in(root, "evil");
    ck_assert_int_eq(symlink(outside, l1), 0);
    ck_assert_kv(put_s(e.s, "/a/b", "x", 0, NULL), KV_OK);
    char *l2 = path_in(root, "a/b");
    ck_assert_int_eq(symlink(outside, l2), 0);
    /* A record symlink. */
    char *l3 = path_in(root, "r.kv");
    ck_assert_int_eq(symlink(secret, l3), 0);

    ck_assert_int_ne(put_s(e.s, "/evil/x", "w", 0, NULL), KV_OK);
    ck_assert_int_ne(put_s(e.s, "/evil/r", "w", 0, NULL), KV_OK);
    ck_assert_int_ne(put_s(e.s, "/a/b/x", "w", 0, NULL), KV_OK);
    ck_assert_int_ne(put_s(e.s, "/a/b/y/z", "w", 0, NULL), KV_OK);
    ck_assert_int_ne(get_s(e.s, "/evil/r", NULL, NULL), KV_OK);
    ck_assert_int_ne(del_s(e.s, "/evil/r", 1), KV_OK);
    ck_assert_kv(get_s(e.s, "/r", NULL, NULL), KV_ECORRUPT);
    ck_assert_int_ne(put_s(e.s, "/r", "w", 0, NULL), KV_OK);
    /* Drop and queries do not follow them either. */
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, false, &ids, &n), KV_OK);
    free_ids(ids, n);
    kv_key *all = key_of("/evil");
    kv_fut *f = kv_drop_prefix(e.s, (const kv_key *const *)&all, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_key_free(all);

    /* Outside is untouched: one file, same content. */
    DIR *d = opendir(outside);
    int entries = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        entries++;
    closedir(d);
    ck_assert_int_eq(entries, 3);
    char buf[32] = "";
    fp = fopen(secret, "r");
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, fp));
    fclose(fp);
    ck_assert_str_eq(buf, "secret");
    free(outside);
    free(secret);
    free(l1);
    free(l2);
    free(l3);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Corruption                                                               */
/* ------------------------------------------------------------------------ */

static void flip_byte(const char *file, off_t off)
{
    int fd = open(file, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, off), 1);
    b ^= 0x5a;
    ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

START_TEST(test_corruption)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    const char *val = "the quick brown fox jumps over the lazy dog";
    uint64_t tok;
    struct {
        const char *key, *file;
    } c[] = {{"/c/val", "c/val.kv"},   {"/c/hdr", "c/hdr.kv"},
             {"/c/tok", "c/tok.kv"},   {"/c/trunc", "c/trunc.kv"},
             {"/c/long", "c/long.kv"}, {"/c/empty", "c/empty.kv"},
             {"/c/big", "c/big.kv"}};
    for (size_t i = 0; i < KV__ARRAY_SIZE(c); i++)
        ck_assert_kv(put_s(e.s, c[i].key, val, 0, &tok), KV_OK);
    char *p;
    p = path_in(root, c[0].file);
    flip_byte(p, 40 + 5); /* a value byte */
    free(p);
    p = path_in(root, c[1].file);
    flip_byte(p, 2); /* the magic */
    free(p);
    p = path_in(root, c[2].file);
    flip_byte(p, 9); /* the token */
    free(p);
    p = path_in(root, c[3].file);
    ck_assert_int_eq(truncate(p, 50), 0);
    free(p);
    p = path_in(root, c[4].file);
    FILE *fp = fopen(p, "a");
    fputs("!", fp);
    fclose(fp);
    free(p);
    p = path_in(root, c[5].file);
    ck_assert_int_eq(truncate(p, 0), 0);
    free(p);
    /* A big record corrupted far into its value (past the first read). */
    unsigned char *big = malloc(100000);
    memset(big, 'b', 100000);
    kv_key *kb = key_of("/c/big");
    ck_assert_kv(put_k(e.s, kb, big, 100000, 0, NULL), KV_ECONFLICT);
    ck_assert_kv(get_k(e.s, kb, NULL, NULL, &tok), KV_OK);
    ck_assert_kv(put_k(e.s, kb, big, 100000, tok, NULL), KV_OK);
    free(big);
    p = path_in(root, c[6].file);
    flip_byte(p, 40 + 99000);
    free(p);
    kv_key_free(kb);

    for (size_t i = 0; i < KV__ARRAY_SIZE(c); i++) {
        char *got = NULL;
        int rc = get_s(e.s, c[i].key, &got, NULL);
        ck_assert_msg(rc == KV_ECORRUPT, "%s: get gave %s", c[i].key,
                      kv_err_name(rc));
        ck_assert_ptr_null(got);
    }
    /* has and CAS read the header only: a value flip shows on get. */
    bool yes;
    ck_assert_kv(has_s(e.s, "/c/val", &yes), KV_OK);
    ck_assert_kv(has_s(e.s, "/c/hdr", &yes), KV_ECORRUPT);
    ck_assert_kv(has_s(e.s, "/c/empty", &yes), KV_ECORRUPT);
    ck_assert_kv(put_s(e.s, "/c/hdr", "new", 0, NULL), KV_ECORRUPT);
    ck_assert_kv(del_s(e.s, "/c/tok", 1), KV_ECORRUPT);
    /* A query that meets a corrupt record fails, with or without values. */
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/c/val", KV_SORT_ASC, true, &ids, &n),
                 KV_ECORRUPT);
    ck_assert_kv(query_ids(e.s, "/c/trunc", KV_SORT_ASC, false, &ids, &n),
                 KV_ECORRUPT);
    ck_assert_kv(query_ids(e.s, "/c/val", KV_SORT_ASC, false, &ids, &n),
                 KV_OK); /* header intact */
    free_ids(ids, n);
    /* drop clears them. */
    kv_key *kc = key_of("/c");
    kv_fut *f = kv_drop_prefix(e.s, (const kv_key *const *)&kc, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_key_free(kc);
    ck_assert_kv(put_s(e.s, "/c/hdr", "new", 0, NULL), KV_OK);
    tu_env_close(&e, true);
}
END_TEST


/* A corrupt record (header, token, checksum, length) is replaced by an
 * unconditional put and removed by an unconditional delete; CAS writes of
 * it still fail KV_ECORRUPT (issue 16: "a corrupt record can be removed and
 * replaced"). */
START_TEST(test_corrupt_replace_remove)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    const char *val = "the quick brown fox jumps over the lazy dog";
    struct {
        const char *key, *file;
        off_t flip; /* -1: truncate to 30 bytes, -2: to 0, -3: append */
    } c[] = {{"/r/val", "r/val.kv", 40 + 5}, {"/r/hdr", "r/hdr.kv", 2},
             {"/r/tok", "r/tok.kv", 9},      {"/r/crc", "r/crc.kv", 37},
             {"/r/trunc", "r/trunc.kv", -1}, {"/r/empty", "r/empty.kv", -2},
             {"/r/long", "r/long.kv", -3}};
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < KV__ARRAY_SIZE(c); i++) {
            ck_assert_kv(put_s(e.s, c[i].key, val, KV_TOKEN_ANY, NULL), KV_OK);
            char *p = path_in(root, c[i].file);
            if (c[i].flip >= 0) {
                flip_byte(p, c[i].flip);
            } else if (c[i].flip == -3) {
                FILE *fp = fopen(p, "a");
                ck_assert_ptr_nonnull(fp);
                fputs("!", fp);
                fclose(fp);
            } else {
                ck_assert_int_eq(truncate(p, c[i].flip == -1 ? 30 : 0), 0);
            }
            free(p);
            ck_assert_msg(get_s(e.s, c[i].key, NULL, NULL) == KV_ECORRUPT,
                          "%s", c[i].key);
        }
        for (size_t i = 0; i < KV__ARRAY_SIZE(c); i++) {
            bool hdr_bad = c[i].flip != 40 + 5 && c[i].flip != -3;
            if (hdr_bad) {
                /* CAS writes need the header: still KV_ECORRUPT */
                ck_assert_kv(put_s(e.s, c[i].key, "x", 1, NULL), KV_ECORRUPT);
                ck_assert_kv(del_s(e.s, c[i].key, 1), KV_ECORRUPT);
            }
            if (round == 0) {
                uint64_t t = 0;
                ck_assert_kv(put_s(e.s, c[i].key, "fresh", KV_TOKEN_ANY, &t),
                             KV_OK);
                char *got = NULL;
                uint64_t gt = 0;
                ck_assert_kv(get_s(e.s, c[i].key, &got, &gt), KV_OK);
                ck_assert_str_eq(got, "fresh");
                ck_assert_uint_eq(gt, t);
                free(got);
                ck_assert_kv(put_s(e.s, c[i].key, "again", t, NULL), KV_OK);
            } else {
                kv_key *k = key_of(c[i].key);
                kv_fut *f = kv_delete(e.s, k, KV_TOKEN_ANY);
                ck_assert_kv(kv_wait(f), KV_OK);
                ck_assert(kv_fut_bool(f)); /* a (corrupt) record was there */
                kv_fut_free(f);
                kv_key_free(k);
                bool yes = true;
                ck_assert_kv(has_s(e.s, c[i].key, &yes), KV_OK);
                ck_assert(!yes);
                char *p = path_in(root, c[i].file);
                ck_assert(!exists(root, c[i].file));
                free(p);
            }
        }
    }
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(temps, 0);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Lock, temp files, tokens, read-only                                      */
/* ------------------------------------------------------------------------ */

/* The descriptor-limit workload (child_nofile). */
enum { NF_LIMIT = 64, NF_DIRS = 1000, NF_DEPTH = 64 };

/* RLIMIT_NOFILE 64: a workload over 1000 directories, 64 in flight, works
 * (the store sizes its descriptor caches from the limit), also when the
 * application takes most of what the store left it (the hog case, in both
 * modes: there a lone running kop can meet EMFILE while the store's idle
 * directories, spares or closes still in flight hold the descriptors, the
 * fallback mode's pool running an open before a close sent earlier; it
 * waits for them, fs__fd_can_wait). */
/* Run child mode; it must exit 0 and leave every record there, once, and
 * no temporary file. */
static void nofile_child(const char *mode)
{
    int st = wait_child(spawn_child(mode, root, NULL, NULL));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "%s: status 0x%x (exit %d)", mode, st,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    env e;
    env_init(&e, 0, 0);
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(records, NF_DIRS);
    ck_assert_uint_eq(temps, 0);
    tu_env_close(&e, true);
}

START_TEST(test_nofile_64)
{
    nofile_child(_i == 0 ? "nofile" : "nofile-hog");
}
END_TEST

/* After EMFILE lowered how many kops run at once, the store grows it back
 * to the cap of its open once the application lets its descriptors go
 * (child_regrow; fs_kq.c, "Admission"): the waves after the hog run as
 * many kops at once as before it, the data intact. */
START_TEST(test_nofile_regrow)
{
    nofile_child("nofile-regrow");
}
END_TEST

START_TEST(test_lock)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    kv_store *s2 = NULL;
    ck_assert_kv(kv_fs_open(&s2, e.loop, e.pool, root, 0, 0), KV_EBUSY);
    ck_assert_kv(kv_fs_open(&s2, e.loop, e.pool, root, 0, KV_READONLY),
                 KV_EBUSY);
    ck_assert_ptr_null(s2);
    int st = wait_child(spawn_child("lock", root, NULL, NULL));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "a second process could open the store: status %d", st);
    /* The store still works; after close the root opens again. */
    ck_assert_kv(put_s(e.s, "/k", "v", 0, NULL), KV_OK);
    tu_env_close_store(&e, true);
    ck_assert_kv(kv_fs_open(&s2, e.loop, e.pool, root, 0, 0), KV_OK);
    ck_assert_kv(get_s(s2, "/k", NULL, NULL), KV_OK);
    kv_fut *f = kv_close(s2);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(s2);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_temp_cleanup)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    ck_assert_kv(put_s(e.s, "/d/k", "v", 0, NULL), KV_OK);
    tu_env_close_store(&e, true);
    /* A clean close leaves a marker that skips the walk; a crash leaves
     * none. */
    ck_assert(exists(root, ".clean"));
    char *marker = path_in(root, ".clean");
    ck_assert_int_eq(unlink(marker), 0);
    free(marker);
    const char *temps[] = {".tmp-0000000000000001", "d/.tmp-00000000000000ff"};
    for (size_t i = 0; i < 2; i++) {
        char *p = path_in(root, temps[i]);
        FILE *fp = fopen(p, "w");
        fputs("half a record", fp);
        fclose(fp);
        free(p);
    }
    env_reopen(&e, 0, KV_FS_NO_FSYNC);
    for (size_t i = 0; i < 2; i++)
        ck_assert(!exists(root, temps[i]));
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_NONE, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(ids[0], "/d/k");
    free_ids(ids, n);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_tokens_reopen)
{
    env e;
    env_init(&e, 0, 0);
    uint64_t t1, t2, t3, t4;
    ck_assert_kv(put_s(e.s, "/t", "1", 0, &t1), KV_OK);
    ck_assert_kv(del_s(e.s, "/t", t1), KV_OK);
    ck_assert_kv(put_s(e.s, "/t", "2", 0, &t2), KV_OK);
    ck_assert_uint_gt(t2, t1);
    env_reopen(&e, 0, 0);
    ck_assert_kv(get_s(e.s, "/t", NULL, &t3), KV_OK);
    ck_assert_uint_eq(t3, t2);
    ck_assert_kv(del_s(e.s, "/t", t2), KV_OK);
    ck_assert_kv(put_s(e.s, "/t", "3", 0, &t3), KV_OK);
    ck_assert_uint_gt(t3, t2);
    /* Lose the counter file: the next open scans the records. */
    tu_env_close_store(&e, true);
    char *p = path_in(root, ".tokens");
    ck_assert_int_eq(unlink(p), 0);
    free(p);
    env_reopen(&e, 0, 0);
    ck_assert_kv(put_s(e.s, "/u", "4", 0, &t4), KV_OK);
    ck_assert_uint_gt(t4, t3);
    /* A corrupt counter file is the same as a lost one. */
    tu_env_close_store(&e, true);
    p = path_in(root, ".tokens");
    FILE *fp = fopen(p, "w");
    fputs("garbage", fp);
    fclose(fp);
    free(p);
    env_reopen(&e, 0, 0);
    uint64_t t5;
    ck_assert_kv(put_s(e.s, "/v", "5", 0, &t5), KV_OK);
    ck_assert_uint_gt(t5, t4);
    /* Many tokens in one run cross a reservation block. */
    uint64_t last = t5;
    kv_key *k = key_of("/w");
    uint64_t cur = 0;
    for (int i = 0; i < 300; i++) {
        uint64_t nt;
        ck_assert_kv(put_k(e.s, k, "w", 1, cur, &nt), KV_OK);
        ck_assert_uint_gt(nt, last);
        last = cur = nt;
    }
    kv_key_free(k);
    tu_env_close(&e, true);
}
END_TEST

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* More puts than one reserved block (4096 tokens): refills go through the
 * ring while puts wait or continue; every token is distinct. */
START_TEST(test_token_refill)
{
    env e;
    env_init(&e, 0, 0);
    enum { N = 9000, DEPTH = 64 };
    uint64_t *toks = calloc(N, sizeof *toks);
    kv_fut *futs[DEPTH] = {NULL};
    int idx[DEPTH];
    int next = 0, done = 0;
    while (done < N) {
        for (int i = 0; i < DEPTH; i++) {
            if (futs[i] != NULL && kv_fut_done(futs[i])) {
                ck_assert_kv(kv_fut_status(futs[i]), KV_OK);
                toks[idx[i]] = kv_fut_token(futs[i]);
                kv_fut_free(futs[i]);
                futs[i] = NULL;
                done++;
            }
            if (futs[i] == NULL && next < N) {
                char p[32];
                snprintf(p, sizeof p, "/tr/%d/%d", next % 16, next);
                kv_key *k = key_of(p);
                kv_record r = {k, "t", 1, 0};
                idx[i] = next++;
                futs[i] = kv_put(e.s, &r, NULL);
                kv_key_free(k);
            }
        }
        if (done < N)
            kv_loop_run(e.loop, KV_RUN_ONCE);
    }
    qsort(toks, N, sizeof *toks, cmp_u64);
    ck_assert_uint_ne(toks[0], 0);
    for (int i = 1; i < N; i++)
        ck_assert_uint_gt(toks[i], toks[i - 1]);
    env_reopen(&e, 0, 0);
    uint64_t t;
    ck_assert_kv(put_s(e.s, "/tr/after", "x", 0, &t), KV_OK);
    ck_assert_uint_gt(t, toks[N - 1]);
    free(toks);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_readonly)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    ck_assert_kv(put_s(e.s, "/r", "v", 0, NULL), KV_OK);
    env_reopen(&e, 0, KV_READONLY);
    char *got = NULL;
    ck_assert_kv(get_s(e.s, "/r", &got, NULL), KV_OK);
    ck_assert_str_eq(got, "v");
    free(got);
    ck_assert_kv(put_s(e.s, "/r2", "v", 0, NULL), KV_EREADONLY);
    tu_env_close_store(&e, true);
    kv_store *s = NULL;
    char *missing = path_in(tmpdir, "missing");
    ck_assert_kv(kv_fs_open(&s, e.loop, e.pool, missing, 0, KV_READONLY),
                 KV_EREADONLY);
    ck_assert(!exists(tmpdir, "missing"));
    free(missing);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* The fan-out layout (KV_FS_FANOUT)                                        */
/* ------------------------------------------------------------------------ */

#define FORMAT_FLAT "kvstore-fs 1\nlayout flat\n"
#define FORMAT_FANOUT "kvstore-fs 1\nlayout fanout 16\n"
#define NBUCKETS 16

/* The documented bucket of an escaped name: FNV-1a 64, h ^ h >> 32, % 16. */
static unsigned t_bucket(const char *e)
{
    uint64_t h = 1469598103934665603ull;
    for (; *e; e++)
        h = (h ^ (unsigned char)*e) * 1099511628211ull;
    return (unsigned)((h ^ (h >> 32)) % NBUCKETS);
}

/* "dir/hh.b/name.kv" for a record name that needs no escaping. */
static char *t_bucket_path(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 16);
    sprintf(p, "%s%s%02x.b/%s.kv", dir, dir[0] ? "/" : "", t_bucket(name),
            name);
    return p;
}

static char *read_file(const char *dir, const char *rel)
{
    char *p = path_in(dir, rel);
    FILE *fp = fopen(p, "r");
    free(p);
    if (fp == NULL)
        return NULL;
    char *buf = calloc(1, 256);
    size_t n = fread(buf, 1, 255, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

static void write_file(const char *dir, const char *rel, const char *text)
{
    char *p = path_in(dir, rel);
    FILE *fp = fopen(p, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    ck_assert_int_eq(fclose(fp), 0);
    free(p);
}

static void remove_file(const char *dir, const char *rel)
{
    char *p = path_in(dir, rel);
    ck_assert_int_eq(unlink(p), 0);
    free(p);
}

/* The canonical id of a key (heap). */
static char *canon_id(const char *path)
{
    kv_key *k = key_of(path);
    char *id = strdup(kv_key_id(k));
    kv_key_free(k);
    return id;
}

/* The ids of a query with offset and limit, in order. */
static int query_page(kv_store *s, const char *prefix, kv_sort sort,
                      int64_t offset, int64_t limit, char ***ids, size_t *n)
{
    kv_key *k = key_of(prefix);
    kv_query q = kv_query_init(k);
    q.sort = sort;
    q.offset = offset;
    q.limit = limit;
    q.value = (offset & 1) != 0; /* both ways */
    kv_fut *f = kv_query_open(s, &q, NULL);
    int rc = kv_wait(f);
    kv_key_free(k);
    *ids = NULL;
    *n = 0;
    if (rc == KV_OK) {
        kv_iter *it = kv_fut_take_iter(f);
        kv_fut_free(f);
        f = kv_iter_fetch_all(it);
        rc = kv_wait(f);
        if (rc == KV_OK) {
            size_t m;
            const kv_record *r = kv_fut_records(f, &m);
            *ids = calloc(m + 1, sizeof **ids);
            for (size_t i = 0; i < m; i++)
                (*ids)[i] = strdup(kv_key_id(r[i].key));
            *n = m;
        }
        kv_iter_free(it);
    }
    kv_fut_free(f);
    return rc;
}

/* Records land in buckets; get, has, CAS, delete, tokens; the layout is
 * recorded and adopted by a later open without the flag. */
START_TEST(test_fanout_layout)
{
    env e;
    env_init(&e, 0, KV_FS_FANOUT);
    char *fmt = read_file(root, ".format");
    ck_assert_ptr_nonnull(fmt);
    ck_assert_str_eq(fmt, FORMAT_FANOUT);
    free(fmt);
    enum { N = 200 };
    uint64_t toks[N];
    unsigned used[NBUCKETS] = {0};
    for (int i = 0; i < N; i++) {
        char p[32], v[32];
        snprintf(p, sizeof p, "/users/k%03d", i);
        snprintf(v, sizeof v, "value %d", i);
        ck_assert_kv(put_s(e.s, p, v, 0, &toks[i]), KV_OK);
        snprintf(p, sizeof p, "k%03d", i);
        char *bp = t_bucket_path("users", p);
        ck_assert_msg(exists(root, bp), "%s is missing", bp);
        free(bp);
        char flat[48];
        snprintf(flat, sizeof flat, "users/%s.kv", p);
        ck_assert(!exists(root, flat));
        used[t_bucket(p)]++;
    }
    int nbuckets = 0;
    for (int b = 0; b < NBUCKETS; b++)
        nbuckets += used[b] > 0;
    ck_assert_int_eq(nbuckets, NBUCKETS); /* 200 keys fill all 16 */
    /* A record and its children; the root has buckets too. */
    ck_assert_kv(put_s(e.s, "/users", "top", 0, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/users/k001/posts", "p", 0, NULL), KV_OK);
    char *bp = t_bucket_path("", "users");
    ck_assert(exists(root, bp));
    free(bp);
    bp = t_bucket_path("users/k001", "posts");
    ck_assert(exists(root, bp));
    free(bp);
    ck_assert(!exists(root, "users.kv"));
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(records, N + 2);
    ck_assert_uint_eq(temps, 0);
    /* CAS, tokens, delete. */
    uint64_t t2 = 0;
    ck_assert_kv(put_s(e.s, "/users/k007", "new", toks[7], &t2), KV_OK);
    ck_assert_uint_gt(t2, toks[7]);
    ck_assert_kv(put_s(e.s, "/users/k007", "stale", toks[7], NULL),
                 KV_ECONFLICT);
    ck_assert_kv(put_s(e.s, "/users/k008", "dup", 0, NULL), KV_ECONFLICT);
    char *got = NULL;
    uint64_t tg = 0;
    ck_assert_kv(get_s(e.s, "/users/k007", &got, &tg), KV_OK);
    ck_assert_str_eq(got, "new");
    ck_assert_uint_eq(tg, t2);
    free(got);
    bool yes = false;
    ck_assert_kv(has_s(e.s, "/users/k009", &yes), KV_OK);
    ck_assert(yes);
    ck_assert_kv(del_s(e.s, "/users/k009", toks[8]), KV_ECONFLICT);
    ck_assert_kv(del_s(e.s, "/users/k009", toks[9]), KV_OK);
    ck_assert_kv(get_s(e.s, "/users/k009", NULL, NULL), KV_ENOTFOUND);
    ck_assert_kv(has_s(e.s, "/users/k009", &yes), KV_OK);
    ck_assert(!yes);
    ck_assert_kv(get_s(e.s, "/nobody/k", NULL, NULL), KV_ENOTFOUND);
    ck_assert_kv(del_s(e.s, "/nobody/k", 1), KV_ECONFLICT);
    uint64_t t3 = 0;
    ck_assert_kv(put_s(e.s, "/users/k009", "again", 0, &t3), KV_OK);
    ck_assert_uint_gt(t3, t2); /* never a token seen before */
    /* Reopen without the flag: the store's layout is used. */
    env_reopen(&e, 0, 0);
    ck_assert_kv(get_s(e.s, "/users/k007", &got, &tg), KV_OK);
    ck_assert_str_eq(got, "new");
    ck_assert_uint_eq(tg, t2);
    free(got);
    ck_assert_kv(put_s(e.s, "/users/k500", "after", 0, NULL), KV_OK);
    bp = t_bucket_path("users", "k500");
    ck_assert(exists(root, bp));
    free(bp);
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/users", KV_SORT_ASC, false, &ids, &n),
                 KV_OK);
    ck_assert_uint_eq(n, N + 3);
    ck_assert_str_eq(ids[0], "/users");
    ck_assert_str_eq(ids[1], "/users/k000");
    ck_assert_str_eq(ids[2], "/users/k001");
    ck_assert_str_eq(ids[3], "/users/k001/posts");
    ck_assert_str_eq(ids[n - 1], "/users/k500");
    free_ids(ids, n);
    /* And with it, read-only too. */
    env_reopen(&e, 0, KV_FS_FANOUT | KV_READONLY);
    ck_assert_kv(get_s(e.s, "/users/k500", NULL, NULL), KV_OK);
    tu_env_close(&e, true);
}
END_TEST

/* The layout is the store's: KV_FS_FANOUT cannot reopen a flat store; a
 * store without .format is probed, never misread. */
START_TEST(test_fanout_wrong_layout)
{
    env e;
    env_init(&e, 0, KV_FS_NO_FSYNC);
    ck_assert_kv(put_s(e.s, "/f/k", "flat", 0, NULL), KV_OK);
    char *fmt = read_file(root, ".format");
    ck_assert_str_eq(fmt, FORMAT_FLAT);
    free(fmt);
    tu_env_close_store(&e, true);
    int rc = env_open(&e, root, 0, KV_FS_FANOUT);
    ck_assert_kv(rc, KV_EINVAL);
    ck_assert_ptr_null(e.s);
    ck_assert_msg(strstr(kv_last_errmsg(), "flat layout") != NULL,
                  "message: %s", kv_last_errmsg());
    /* The refused open left the store as it was. */
    env_reopen(&e, 0, 0);
    char *got = NULL;
    ck_assert_kv(get_s(e.s, "/f/k", &got, NULL), KV_OK);
    ck_assert_str_eq(got, "flat");
    free(got);
    tu_env_close_store(&e, true);

    /* A flat store made before .format existed: probed as flat. */
    remove_file(root, ".format");
    ck_assert_kv(env_open(&e, root, 0, KV_FS_FANOUT | KV_FS_NO_FSYNC),
                 KV_EINVAL);
    ck_assert(!exists(root, ".format")); /* nothing written by a refusal */
    env_reopen(&e, 0, KV_FS_NO_FSYNC);
    fmt = read_file(root, ".format");
    ck_assert_str_eq(fmt, FORMAT_FLAT);
    free(fmt);
    ck_assert_kv(get_s(e.s, "/f/k", NULL, NULL), KV_OK);
    tu_env_close_store(&e, true);

    /* A fan-out store that lost .format is still read as fan-out. */
    char *other = path_in(tmpdir, "fan");
    ck_assert_kv(env_open(&e, other, 0, KV_FS_FANOUT | KV_FS_NO_FSYNC), KV_OK);
    ck_assert_kv(put_s(e.s, "/deep/er/k", "fan", 0, NULL), KV_OK);
    tu_env_close_store(&e, true);
    remove_file(other, ".format");
    ck_assert_kv(env_open(&e, other, 0, KV_READONLY), KV_OK);
    ck_assert_kv(get_s(e.s, "/deep/er/k", &got, NULL), KV_OK);
    ck_assert_str_eq(got, "fan");
    free(got);
    tu_env_close_store(&e, true);
    ck_assert(!exists(other, ".format")); /* read-only writes nothing */
    ck_assert_kv(env_open(&e, other, 0, KV_FS_NO_FSYNC), KV_OK);
    fmt = read_file(other, ".format");
    ck_assert_str_eq(fmt, FORMAT_FANOUT);
    free(fmt);
    ck_assert_kv(get_s(e.s, "/deep/er/k", NULL, NULL), KV_OK);
    tu_env_close_store(&e, true);

    /* A .format this version does not know. */
    write_file(other, ".format", "kvstore-fs 2\nlayout fanout 256\n");
    ck_assert_kv(env_open(&e, other, 0, 0), KV_ECORRUPT);
    ck_assert_kv(env_open(&e, other, 0, KV_FS_FANOUT), KV_ECORRUPT);
    ck_assert_ptr_null(e.s);

    /* An empty root made beforehand is a new store: either layout. */
    char *empty = path_in(tmpdir, "empty");
    ck_assert_int_eq(mkdir(empty, 0755), 0);
    ck_assert_kv(env_open(&e, empty, 0, KV_FS_FANOUT | KV_FS_NO_FSYNC), KV_OK);
    tu_env_close_store(&e, true);
    fmt = read_file(empty, ".format");
    ck_assert_str_eq(fmt, FORMAT_FANOUT);
    free(fmt);
    free(empty);
    free(other);
    tu_env_close(&e, true);
}
END_TEST

/* Queries merge the buckets: key order both ways, offset and limit,
 * value=false, records with descendants and descendants without a record,
 * long names (continuations) and escaped names. */
START_TEST(test_fanout_query_merge)
{
    env e;
    env_init(&e, 0, KV_FS_FANOUT | KV_FS_NO_FSYNC);
    char lng[600];
    memset(lng, 'L', sizeof lng - 1);
    lng[sizeof lng - 1] = '\0';
    enum { MAXK = 400 };
    char *keys[MAXK];
    size_t nk = 0;
    for (int i = 0; i < 60; i++) {
        char p[700];
        snprintf(p, sizeof p, "/q/%02d", i);
        if (i % 7 != 3) /* some have children but no record */
            keys[nk++] = canon_id(p);
        if (i % 3 == 0) {
            for (int j = 0; j < 4; j++) {
                snprintf(p, sizeof p, "/q/%02d/c%d", i, j);
                keys[nk++] = canon_id(p);
            }
        } else if (i % 7 == 3) {
            snprintf(p, sizeof p, "/q/%02d/only", i);
            keys[nk++] = canon_id(p);
        }
        if (i % 10 == 0) {
            snprintf(p, sizeof p, "/q/%02d/%s%d", i, lng, i);
            keys[nk++] = canon_id(p);
            snprintf(p, sizeof p, "/q/%02d/x:y z/.", i);
            keys[nk++] = canon_id(p);
        }
    }
    keys[nk++] = canon_id("/q");
    keys[nk++] = canon_id("/qq");
    keys[nk++] = canon_id("/q:0");
    ck_assert_uint_le(nk, MAXK);
    for (size_t i = 0; i < nk; i++)
        ck_assert_kv(put_s(e.s, keys[i], "v", 0, NULL), KV_OK);
    /* Expected: the keys at or below /q, in kv_key_cmp order. */
    char *want[MAXK];
    size_t nw = 0;
    for (size_t i = 0; i < nk; i++)
        if (strcmp(keys[i], "/q") == 0 || strncmp(keys[i], "/q/", 3) == 0)
            want[nw++] = keys[i];
    qsort(want, nw, sizeof *want, cmp_keyid);
    for (int round = 0; round < 2; round++) {
        char **ids;
        size_t n;
        ck_assert_kv(query_ids(e.s, "/q", KV_SORT_ASC, round == 0, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, nw);
        for (size_t i = 0; i < n; i++)
            ck_assert_str_eq(ids[i], want[i]);
        free_ids(ids, n);
        ck_assert_kv(query_ids(e.s, "/q", KV_SORT_DESC, round == 1, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, nw);
        for (size_t i = 0; i < n; i++)
            ck_assert_str_eq(ids[i], want[nw - 1 - i]);
        free_ids(ids, n);
        /* Pages: offset and limit count records, in order. */
        static const int64_t offs[] = {0, 1, 5, 37, 100};
        static const int64_t lims[] = {0, 1, 3, 50, -1};
        for (size_t a = 0; a < KV__ARRAY_SIZE(offs); a++)
            for (size_t b = 0; b < KV__ARRAY_SIZE(lims); b++)
                for (int desc = 0; desc < 2; desc++) {
                    ck_assert_kv(query_page(e.s, "/q",
                                            desc ? KV_SORT_DESC : KV_SORT_ASC,
                                            offs[a], lims[b], &ids, &n),
                                 KV_OK);
                    size_t from = (size_t)offs[a] < nw ? (size_t)offs[a] : nw;
                    size_t cnt = nw - from;
                    if (lims[b] >= 0 && (size_t)lims[b] < cnt)
                        cnt = (size_t)lims[b];
                    ck_assert_uint_eq(n, cnt);
                    for (size_t i = 0; i < n; i++)
                        ck_assert_str_eq(ids[i],
                                         desc ? want[nw - 1 - from - i]
                                              : want[from + i]);
                    free_ids(ids, n);
                }
        /* A query of one key, a record with children. */
        ck_assert_kv(query_ids(e.s, "/q/00", KV_SORT_ASC, false, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, 7);
        ck_assert_str_eq(ids[0], "/q/00");
        free_ids(ids, n);
        ck_assert_kv(query_ids(e.s, "/q/17", KV_SORT_DESC, true, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, 1);
        ck_assert_str_eq(ids[0], "/q/17/only");
        free_ids(ids, n);
        /* Unsorted: the same set. */
        ck_assert_kv(query_ids(e.s, "/", KV_SORT_NONE, false, &ids, &n),
                     KV_OK);
        ck_assert_uint_eq(n, nk);
        free_ids(ids, n);
        env_reopen(&e, 0, KV_FS_NO_FSYNC);
    }
    for (size_t i = 0; i < nk; i++)
        free(keys[i]);
    tu_env_close(&e, true);
}
END_TEST

/* Temp files in buckets are removed at open; drop leaves buckets usable;
 * a bucket directory fsync is shared by the renames that land together. */
START_TEST(test_fanout_files)
{
    env e;
    env_init(&e, 0, KV_FS_FANOUT);
    enum { N = 256 };
    kv_fut *futs[N];
    uint64_t before[10], after[10];
    ck_assert_kv(put_s(e.s, "/g/first", "x", 0, NULL), KV_OK);
    kv__fs_stats(e.s, before);
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof p, "/g/%03d", i);
        kv_key *k = key_of(p);
        kv_record r = {k, "value", 5, 0};
        futs[i] = kv_put(e.s, &r, NULL);
        kv_key_free(k);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(futs[i]), KV_OK);
        kv_fut_free(futs[i]);
    }
    kv__fs_stats(e.s, after);
    uint64_t dsync = after[S_DFSYNC] - before[S_DFSYNC];
    uint64_t mk = after[S_MKDIR] - before[S_MKDIR];
    ck_assert_uint_eq(after[S_PUTS] - before[S_PUTS], N);
    ck_assert_uint_ge(after[S_FFSYNC] - before[S_FFSYNC], N);
    ck_assert_uint_le(mk, NBUCKETS); /* buckets, once each */
    /* Every bucket written is fsynced after its renames (each mkdir adds
     * one fsync of the parent); shared within a bucket, never more than
     * one per put. */
    bool touched[NBUCKETS] = {false};
    uint64_t nb = 0;
    for (int i = 0; i < N; i++) {
        char nm[8];
        snprintf(nm, sizeof nm, "%03d", i);
        nb += !touched[t_bucket(nm)];
        touched[t_bucket(nm)] = true;
    }
    ck_assert_uint_ge(dsync, mk + nb);
    ck_assert_uint_le(dsync, mk + N);
    tu_env_close_store(&e, true);

    /* A crash left temp files in buckets (no .clean marker). */
    remove_file(root, ".clean");
    char tmp1[64], tmp2[64];
    snprintf(tmp1, sizeof tmp1, "g/%02x.b/.tmp-00000000000000aa",
             t_bucket("001"));
    snprintf(tmp2, sizeof tmp2, "%02x.b", t_bucket("x"));
    char *bdir = path_in(root, tmp2);
    ck_assert_int_eq(mkdir(bdir, 0755), 0);
    free(bdir);
    snprintf(tmp2, sizeof tmp2, "%02x.b/.tmp-00000000000000bb",
             t_bucket("x"));
    write_file(root, tmp1, "half");
    write_file(root, tmp2, "half");
    env_reopen(&e, 0, KV_FS_FANOUT);
    ck_assert(!exists(root, tmp1));
    ck_assert(!exists(root, tmp2));
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(records, N + 1);
    ck_assert_uint_eq(temps, 0);

    /* Drop: the records and children of /g/001 go, other keys of its
     * bucket stay, and the bucket takes new records. */
    ck_assert_kv(put_s(e.s, "/g/001/sub", "s", 0, NULL), KV_OK);
    kv_key *kd = key_of("/g/001");
    kv_fut *f = kv_drop_prefix(e.s, (const kv_key *const *)&kd, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_key_free(kd);
    ck_assert_kv(get_s(e.s, "/g/001", NULL, NULL), KV_ENOTFOUND);
    ck_assert_kv(get_s(e.s, "/g/001/sub", NULL, NULL), KV_ENOTFOUND);
    ck_assert(!exists(root, "g/001"));
    ck_assert_kv(get_s(e.s, "/g/002", NULL, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/g/001", "back", 0, NULL), KV_OK);
    /* Drop a whole prefix, then write into it again. */
    kd = key_of("/g");
    f = kv_drop_prefix(e.s, (const kv_key *const *)&kd, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_key_free(kd);
    ck_assert(!exists(root, "g"));
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 0);
    free_ids(ids, n);
    ck_assert_kv(put_s(e.s, "/g/001", "third", 0, NULL), KV_OK);
    char *got = NULL;
    ck_assert_kv(get_s(e.s, "/g/001", &got, NULL), KV_OK);
    ck_assert_str_eq(got, "third");
    free(got);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Spare files: replaced record files overwritten by later puts             */
/* ------------------------------------------------------------------------ */

/* The value of key i at generation g, len bytes: "k=III g=GGGG " then a
 * pattern of both. */
static void rc_value(unsigned char *buf, size_t len, size_t i, unsigned g)
{
    char head[32];
    int h = snprintf(head, sizeof head, "k=%03zu g=%04u ", i, g);
    for (size_t j = 0; j < len; j++)
        buf[j] = j < (size_t)h ? (unsigned char)head[j]
                               : (unsigned char)('a' + (i * 7 + g + j) % 26);
}

static bool rc_value_is(const void *v, size_t n, size_t len, size_t i,
                        unsigned g)
{
    unsigned char buf[8192];
    if (n != len || len > sizeof buf)
        return false;
    rc_value(buf, len, i, g);
    return memcmp(v, buf, len) == 0;
}

#define RC_KEYS 64

/* A stream of puts, keys[0..n) each once with its token, at most depth in
 * flight, each started when one finishes (so later puts find spares). */
typedef struct rstream {
    kv_store *s;
    kv_key *keys[RC_KEYS];
    uint64_t tok[RC_KEYS]; /* in: current tokens; out: the new ones */
    int rc[RC_KEYS];
    char msg[RC_KEYS][160];
    size_t n, next, done;
    size_t len;
    unsigned gen;
    unsigned char val[8192];
} rstream;

typedef struct rslot {
    rstream *st;
    size_t i;
} rslot;

static void rs_start(rslot *sl);

static void rs_done(kv_fut *f, void *arg)
{
    rslot *sl = arg;
    rstream *st = sl->st;
    int rc = kv_fut_status(f);
    st->rc[sl->i] = rc;
    if (rc == KV_OK)
        st->tok[sl->i] = kv_fut_token(f);
    else
        snprintf(st->msg[sl->i], sizeof st->msg[sl->i], "%s",
                 kv_fut_errmsg(f));
    kv_fut_free(f);
    st->done++;
    rs_start(sl);
}

static void rs_start(rslot *sl)
{
    rstream *st = sl->st;
    if (st->next >= st->n)
        return;
    sl->i = st->next++;
    rc_value(st->val, st->len, sl->i, st->gen);
    kv_record r = {st->keys[sl->i], st->val, st->len, st->tok[sl->i]};
    kv_fut *f = kv_put(st->s, &r, NULL);
    ck_assert_kv(kv_fut_then(f, rs_done, sl), KV_OK);
}

/* Run a stream of generation gen, len-byte values, depth in flight; with
 * wait, until every put finished. */
static void rs_run(env *e, rstream *st, size_t depth, unsigned gen,
                   size_t len, rslot *slots, bool wait)
{
    st->s = e->s;
    st->next = st->done = 0;
    st->gen = gen;
    st->len = len;
    for (size_t i = 0; i < st->n; i++) {
        st->rc[i] = KV_ECANCELED;
        st->msg[i][0] = '\0';
    }
    for (size_t i = 0; i < depth; i++) {
        slots[i].st = st;
        rs_start(&slots[i]);
    }
    while (wait && st->done < st->n)
        ck_assert_int_ge(kv_loop_run(e->loop, KV_RUN_ONCE), 0);
}

static size_t temps_under(const char *dir)
{
    size_t records = 0, temps = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(fd, 0);
    count_files(fd, &records, &temps);
    close(fd);
    return temps;
}

/* A stream over the RC_KEYS keys prefix/kNNN, with no tokens yet. */
static void rs_init(rstream *st, const char *prefix)
{
    memset(st, 0, sizeof *st);
    for (size_t i = 0; i < RC_KEYS; i++) {
        char p[64];
        snprintf(p, sizeof p, "%s/k%03zu", prefix, i);
        st->keys[i] = key_of(p);
    }
    st->n = RC_KEYS;
}

static void rs_free(rstream *st)
{
    for (size_t i = 0; i < RC_KEYS; i++)
        kv_key_free(st->keys[i]);
}

/* Every key holds generation g[i] with token tok[i]. */
static void rc_check(kv_store *s, kv_key **keys, const uint64_t *tok,
                     const unsigned *g, const size_t *len)
{
    for (size_t i = 0; i < RC_KEYS; i++) {
        void *v = NULL;
        size_t n = 0;
        uint64_t t = 0;
        ck_assert_kv(get_k(s, keys[i], &v, &n, &t), KV_OK);
        ck_assert_msg(t == tok[i] && rc_value_is(v, n, len[i], i, g[i]),
                      "key %zu: token %" PRIu64 " (want %" PRIu64
                      "), value %.12s... (want generation %u)",
                      i, t, tok[i], (char *)v, g[i]);
        free(v);
    }
}

/*
 * Streams of replacements: spare files are made and overwritten (values
 * the same length, longer, shorter), every put lands whole with its
 * token, and no temp file is left once the puts are done; across a
 * reopen too.  _i: 0 the flat layout, 1 the fan-out layout.
 */
START_TEST(test_recycle_stream)
{
    env e;
    env_init(&e, 0, _i == 1 ? KV_FS_FANOUT : 0);
    static rstream st;
    rs_init(&st, "/rc");
    rslot slots[16];
    unsigned g[RC_KEYS];
    size_t lens[RC_KEYS];
    static const size_t rlen[] = {300, 300, 4096, 4096, 200, 5000, 300};
    uint64_t s0[S_N], s1[S_N];
    kv__fs_stats(e.s, s0);
    for (unsigned gen = 0; gen < KV__ARRAY_SIZE(rlen); gen++) {
        rs_run(&e, &st, gen == 0 ? 4 : 16, gen, rlen[gen], slots, true);
        for (size_t i = 0; i < RC_KEYS; i++) {
            ck_assert_msg(st.rc[i] == KV_OK, "gen %u key %zu: %s %s", gen, i,
                          kv_err_name(st.rc[i]), st.msg[i]);
            g[i] = gen;
            lens[i] = rlen[gen];
        }
        rc_check(e.s, st.keys, st.tok, g, lens);
        /* At rest: the spares are removed. */
        ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
        ck_assert_uint_eq(temps_under(root), 0);
    }
    kv__fs_stats(e.s, s1);
    ck_assert_uint_gt(s1[S_EXCHANGED] - s0[S_EXCHANGED], RC_KEYS);
    /* (Fan-out: 64 keys over 16 buckets find fewer spares.) */
    ck_assert_uint_gt(s1[S_RECYCLED] - s0[S_RECYCLED], _i == 1 ? 8 : RC_KEYS);
    ck_assert_uint_eq(s1[S_LEAK], 0);
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "recycle: %" PRIu64 " puts, %" PRIu64
                        " exchanged, %" PRIu64 " recycled\n",
                s1[S_PUTS] - s0[S_PUTS], s1[S_EXCHANGED] - s0[S_EXCHANGED],
                s1[S_RECYCLED] - s0[S_RECYCLED]);
    /* Close in the middle of a stream: no temp file after it. */
    rs_run(&e, &st, 16, 100, 300, slots, false);
    for (int i = 0; i < 30; i++)
        ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_ONCE), 0);
    tu_env_close_store(&e, true);
    ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
    ck_assert_uint_eq(st.done, st.n);
    ck_assert_uint_eq(temps_under(root), 0);
    ck_assert(exists(root, ".clean"));
    env_reopen(&e, 0, 0);
    for (size_t i = 0; i < RC_KEYS; i++) {
        if (st.rc[i] == KV_OK) {
            g[i] = 100;
            lens[i] = 300;
            continue;
        }
        /* Cancelled by the close (it may have landed), or started after
         * it: the old record or the new one, whole. */
        ck_assert_msg(st.rc[i] == KV_ECANCELED || st.rc[i] == KV_ECLOSED,
                      "key %zu: %s", i, kv_err_name(st.rc[i]));
        void *v = NULL;
        size_t n = 0;
        uint64_t t = 0;
        ck_assert_kv(get_k(e.s, st.keys[i], &v, &n, &t), KV_OK);
        if (t != st.tok[i]) {
            ck_assert_msg(rc_value_is(v, n, 300, i, 100), "key %zu torn", i);
            st.tok[i] = t;
            g[i] = 100;
            lens[i] = 300;
        }
        free(v);
    }
    rc_check(e.s, st.keys, st.tok, g, lens);
    rs_free(&st);
    tu_env_close(&e, true);
}
END_TEST

/*
 * Queries while replacements stream: a query reads record files by name
 * on the pool, so a file it may have open is never overwritten as a
 * spare.  Every row must be a whole record of its own key.
 */
START_TEST(test_recycle_queries)
{
    env e;
    env_init(&e, 0, 0);
    static rstream st;
    rs_init(&st, "/rq");
    rslot slots[16];
    rs_run(&e, &st, 16, 0, 1000, slots, true);
    uint64_t s0[S_N], s1[S_N];
    kv__fs_stats(e.s, s0);
    size_t rows = 0, queries = 0;
    for (unsigned gen = 1; gen <= 40; gen++) {
        rs_run(&e, &st, 16, gen, 1000, slots, false);
        while (st.done < st.n) {
            kv_key *pk = key_of("/rq");
            kv_query q = kv_query_init(pk);
            q.sort = queries % 2 ? KV_SORT_DESC : KV_SORT_NONE;
            kv_iter *it;
            kv_fut *f = tu_query_fetch(e.s, &q, &it);
            size_t m;
            const kv_record *r = kv_fut_records(f, &m);
            ck_assert_uint_eq(m, RC_KEYS);
            for (size_t j = 0; j < m; j++) {
                const char *id = kv_key_id(r[j].key);
                size_t i = (size_t)atoi(strrchr(id, 'k') + 1);
                char head[16];
                snprintf(head, sizeof head, "k=%03zu g=", i);
                ck_assert_msg(r[j].len == 1000 &&
                                  memcmp(r[j].val, head, strlen(head)) == 0,
                              "%s holds \"%.12s\"", id, (char *)r[j].val);
                unsigned rg = (unsigned)atoi((const char *)r[j].val + 8);
                ck_assert(rc_value_is(r[j].val, r[j].len, 1000, i, rg));
                rows++;
            }
            kv_fut_free(f);
            kv_iter_free(it);
            kv_key_free(pk);
            queries++;
        }
        for (size_t i = 0; i < RC_KEYS; i++)
            ck_assert_msg(st.rc[i] == KV_OK, "gen %u key %zu: %s %s", gen, i,
                          kv_err_name(st.rc[i]), st.msg[i]);
    }
    kv__fs_stats(e.s, s1);
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "recycle+queries: %zu queries, %zu rows, %" PRIu64
                        " exchanged, %" PRIu64 " recycled\n",
                queries, rows, s1[S_EXCHANGED] - s0[S_EXCHANGED],
                s1[S_RECYCLED] - s0[S_RECYCLED]);
    ck_assert_uint_gt(queries, 40);
    ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
    ck_assert_uint_eq(temps_under(root), 0);
    rs_free(&st);
    tu_env_close(&e, true);
}
END_TEST

/*
 * Faults in the middle of replacement streams (spare files being made and
 * overwritten): the nth ring operation of a kind fails.  Each put either
 * succeeds or fails with a clear KV_EBACKEND and leaves the old record
 * (or, failing only in its directory fsync, the new one); no temp file is
 * left once the puts are done, no descriptor leaks, the store goes on.
 */
START_TEST(test_recycle_faults)
{
    env e;
    env_init(&e, 0, 0);
    static rstream st;
    rs_init(&st, "/rf");
    static uint64_t before[RC_KEYS];
    rslot slots[8];
    unsigned g[RC_KEYS];
    size_t lens[RC_KEYS];
    unsigned gen = 0;
    rs_run(&e, &st, 8, gen, 500, slots, true);
    for (size_t i = 0; i < RC_KEYS; i++) {
        g[i] = gen;
        lens[i] = 500;
    }
    static const struct {
        int op;
        int res;
    } kinds[] = {
        {IORING_OP_OPENAT, -EIO},    {IORING_OP_OPENAT, -ENOENT},
        {IORING_OP_READ, -EIO},      {IORING_OP_WRITE, -EIO},
        {IORING_OP_WRITE, 7},        {IORING_OP_FSYNC, -EIO},
        {IORING_OP_CLOSE, -EIO},     {IORING_OP_RENAMEAT, -EIO},
        {IORING_OP_RENAMEAT, -EINVAL}, {IORING_OP_RENAMEAT, -ENOENT},
        {IORING_OP_UNLINKAT, -EIO},
    };
    /* How many of each a clean stream submits, and that it recycles. */
    uint64_t s0[S_N], s1[S_N];
    kv__fs_stats(e.s, s0);
    kv__fault_arm(e.loop, -1, 0, 0);
    rs_run(&e, &st, 8, ++gen, 500, slots, true);
    unsigned long count[KV__ARRAY_SIZE(kinds)];
    for (size_t k = 0; k < KV__ARRAY_SIZE(kinds); k++)
        count[k] = kv__fault_seen(kinds[k].op);
    kv__fault_disarm();
    kv__fs_stats(e.s, s1);
    ck_assert_uint_gt(s1[S_RECYCLED] - s0[S_RECYCLED], 0);
    ck_assert_uint_gt(s1[S_EXCHANGED] - s0[S_EXCHANGED], 0);
    ck_assert_uint_gt(count[7], 0);
    for (size_t i = 0; i < RC_KEYS; i++) {
        ck_assert_kv(st.rc[i], KV_OK);
        g[i] = gen;
    }
    ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
    int fds0 = tu_count_fds();
    size_t cases = 0, failed = 0;
    for (size_t k = 0; k < KV__ARRAY_SIZE(kinds); k++) {
        for (unsigned long nth = 1; nth <= count[k]; nth = nth * 2 + 1) {
            memcpy(before, st.tok, sizeof before);
            gen++;
            kv__fs_stats(e.s, s0);
            kv__fault_arm(e.loop, kinds[k].op, nth, kinds[k].res);
            rs_run(&e, &st, 8, gen, 500, slots, true);
            kv__fault_disarm();
            ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
            cases++;
            for (size_t i = 0; i < RC_KEYS; i++) {
                if (st.rc[i] == KV_OK) {
                    g[i] = gen;
                    continue;
                }
                failed++;
                /* (A record open failing ENOENT reads as "absent".) */
                ck_assert_msg((kv_err_is(st.rc[i], KV_EBACKEND) &&
                               strncmp(st.msg[i], "fs: ", 4) == 0) ||
                                  (st.rc[i] == KV_ECONFLICT &&
                                   kinds[k].res == -ENOENT),
                              "op %d #%lu (%d): key %zu: %s \"%s\"",
                              kinds[k].op, nth, kinds[k].res, i,
                              kv_err_name(st.rc[i]), st.msg[i]);
                /* The old record, unless only the directory fsync
                 * failed after the rename. */
                void *v = NULL;
                size_t n = 0;
                uint64_t t = 0;
                ck_assert_kv(get_k(e.s, st.keys[i], &v, &n, &t), KV_OK);
                bool is_old = t == before[i] &&
                              rc_value_is(v, n, lens[i], i, g[i]);
                bool is_new = strstr(st.msg[i], "fsync directory") != NULL &&
                              t > before[i] &&
                              rc_value_is(v, n, 500, i, gen);
                free(v);
                ck_assert_msg(is_old || is_new,
                              "op %d #%lu (%d): key %zu lost (%s)",
                              kinds[k].op, nth, kinds[k].res, i, st.msg[i]);
                st.tok[i] = t;
                if (is_new)
                    g[i] = gen;
            }
            rc_check(e.s, st.keys, st.tok, g, lens);
            /* (A get completes before its descriptor's close.) */
            ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
            size_t temps = temps_under(root);
            if (temps > 0 && kinds[k].op == IORING_OP_UNLINKAT) {
                /* The failed unlink was a spare's or a temp's (which one
                 * the nth is depends on timing): the file is counted as
                 * left and the next open removes it. */
                kv__fs_stats(e.s, s1);
                ck_assert_uint_eq(s1[S_LEAK] - s0[S_LEAK], temps);
                env_reopen(&e, 0, 0);
                temps = temps_under(root);
            }
            ck_assert_msg(temps == 0, "op %d #%lu (%d): temp file left",
                          kinds[k].op, nth, kinds[k].res);
            ck_assert_msg(tu_count_fds() <= fds0,
                          "op %d #%lu (%d): %d descriptors, %d before",
                          kinds[k].op, nth, kinds[k].res, tu_count_fds(), fds0);
            if (kinds[k].op == IORING_OP_RENAMEAT &&
                kinds[k].res == -EINVAL) {
                /* (EINVAL turned exchanges off for this store.) */
                env_reopen(&e, 0, 0);
                ck_assert_int_le(tu_count_fds(), fds0);
            }
        }
    }
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "recycle faults: %zu cases, %zu puts failed\n",
                cases, failed);
    ck_assert_uint_gt(failed, 0);
    rs_free(&st);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Group commit, failures, drop, close                                      */
/* ------------------------------------------------------------------------ */

START_TEST(test_group_commit)
{
    env e;
    env_init(&e, 0, 0);
    enum { N = 256 };
    kv_key *keys[N];
    kv_fut *futs[N];
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof p, "/g/%03d", i);
        keys[i] = key_of(p);
    }
    ck_assert_kv(put_s(e.s, "/g/first", "x", 0, NULL), KV_OK);
    uint64_t before[10], after[10];
    kv__fs_stats(e.s, before);
    for (int i = 0; i < N; i++) {
        kv_record r = {keys[i], "value", 5, 0};
        futs[i] = kv_put(e.s, &r, NULL);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(futs[i]), KV_OK);
        kv_fut_free(futs[i]);
    }
    kv__fs_stats(e.s, after);
    uint64_t puts = after[S_PUTS] - before[S_PUTS];
    uint64_t dsync = after[S_DFSYNC] - before[S_DFSYNC];
    uint64_t fsync = after[S_FFSYNC] - before[S_FFSYNC];
    ck_assert_uint_eq(puts, N);
    ck_assert_uint_ge(fsync, N); /* one per file, never shared */
    ck_assert_uint_ge(dsync, 1);
    ck_assert_msg(dsync < puts / 2,
                  "directory fsyncs were not shared: %" PRIu64
                  " for %" PRIu64 " puts",
                  dsync, puts);
    for (int i = 0; i < N; i++)
        kv_key_free(keys[i]);
    tu_env_close(&e, true);
}
END_TEST

/*
 * A write that fails part-way: RLIMIT_FSIZE makes the first write short
 * (the linked fsync/close/rename are cancelled, the write is resumed) and
 * the resumed one fail with EFBIG.  The put fails, the old record stays,
 * no temp file is left.  In a child: the limit is process-wide.
 */
static int child_fsize(void)
{
    signal(SIGXFSZ, SIG_IGN);
    env e;
    memset(&e, 0, sizeof e);
    if (kv_loop_new(&e.loop, NULL) != KV_OK || kv_pool_new(&e.pool, 2))
        return 9;
    if (env_open(&e, root, 0, 0) != KV_OK)
        return 9;
    uint64_t tok, tok2;
    if (put_s(e.s, "/f/k", "old", 0, &tok) != KV_OK)
        return 10;
    struct rlimit rl = {5000, 5000};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        return 11;
    unsigned char *big = malloc(20000);
    memset(big, 'n', 20000);
    kv_key *k = key_of("/f/k");
    if (put_k(e.s, k, big, 20000, tok, NULL) != KV_EBACKEND)
        return 12;
    char *got = NULL;
    if (get_s(e.s, "/f/k", &got, &tok2) != KV_OK || strcmp(got, "old") != 0 ||
        tok2 != tok)
        return 13;
    free(got);
    uint64_t st[10];
    kv__fs_stats(e.s, st);
    if (st[S_SHORT] < 1)
        return 14;
    size_t records = 0, temps = 0;
    int rfd = open(root, O_RDONLY | O_DIRECTORY);
    count_files(rfd, &records, &temps);
    close(rfd);
    if (temps != 0 || records != 1)
        return 15;
    /* A small put still works. */
    if (put_k(e.s, k, "new", 3, tok, NULL) != KV_OK)
        return 16;
    kv_key_free(k);
    free(big);
    return 0; /* the process ends: no teardown needed */
}

/*
 * A write that fails part-way: RLIMIT_FSIZE makes the first write short
 * (the linked fsync/close/rename are cancelled, the write is resumed) and
 * the resumed one fail with EFBIG.  The put fails, the old record stays,
 * no temp file is left.  In a child: the limit is process-wide.
 */
START_TEST(test_failed_write_keeps_old)
{
    int st = wait_child(spawn_child("fsize", root, NULL, NULL));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "child failed: status %d", st);
}
END_TEST

START_TEST(test_drop_and_recreate)
{
    env e;
    env_init(&e, 0, 0);
    ck_assert_kv(put_s(e.s, "/p", "p", 0, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/p/a/b", "x", 0, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/p/c", "y", 0, NULL), KV_OK);
    ck_assert_kv(put_s(e.s, "/pq", "z", 0, NULL), KV_OK);
    kv_key *kp = key_of("/p");
    kv_fut *f = kv_drop_prefix(e.s, (const kv_key *const *)&kp, 1);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    ck_assert(!exists(root, "p"));
    ck_assert(!exists(root, "p.kv"));
    ck_assert_kv(get_s(e.s, "/p/a/b", NULL, NULL), KV_ENOTFOUND);
    ck_assert_kv(get_s(e.s, "/pq", NULL, NULL), KV_OK);
    /* The directories the backend had open are gone: recreate them. */
    ck_assert_kv(put_s(e.s, "/p/a/b", "again", 0, NULL), KV_OK);
    char *got = NULL;
    ck_assert_kv(get_s(e.s, "/p/a/b", &got, NULL), KV_OK);
    ck_assert_str_eq(got, "again");
    free(got);
    /* Dropping everything (the empty key is not a valid drop key). */
    kv_key *alls[2] = {key_of("/p"), key_of("/pq")};
    f = kv_drop_prefix(e.s, (const kv_key *const *)alls, 2);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_key_free(alls[0]);
    kv_key_free(alls[1]);
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, 0);
    free_ids(ids, n);
    ck_assert(exists(root, ".lock"));
    ck_assert_kv(put_s(e.s, "/p/a/b", "third", 0, NULL), KV_OK);
    kv_key_free(kp);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_close_inflight)
{
    env e;
    env_init(&e, 0, 0);
    enum { N = 300 };
    kv_fut *futs[N];
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof p, "/ci/%d/%d", i % 7, i);
        kv_key *k = key_of(p);
        kv_record r = {k, "value", 5, 0};
        futs[i] = kv_put(e.s, &r, NULL);
        kv_key_free(k);
    }
    /* Let some of them get going, then close under them. */
    kv_loop_run(e.loop, KV_RUN_ONCE);
    kv_fut *cf = kv_close(e.s);
    ck_assert_kv(kv_wait(cf), KV_OK);
    kv_fut_free(cf);
    int ok = 0, canceled = 0;
    for (int i = 0; i < N; i++) {
        int rc = kv_wait(futs[i]);
        ck_assert_msg(rc == KV_OK || rc == KV_ECANCELED, "put %d: %s", i,
                      kv_err_name(rc));
        ok += rc == KV_OK;
        canceled += rc == KV_ECANCELED;
        kv_fut_free(futs[i]);
    }
    ck_assert_int_gt(canceled, 0);
    kv_store_free(e.s);
    e.s = NULL;
    /* Nothing half-written: every record present is whole; temp files of
     * cancelled puts are gone (now, or at the next open). */
    env_reopen(&e, 0, 0);
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(temps, 0);
    ck_assert_uint_ge(records, (size_t)ok);
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_NONE, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, records);
    free_ids(ids, n);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* No file syscall on the loop thread                                       */
/* ------------------------------------------------------------------------ */

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#define HAVE_SECCOMP_TEST 1
#if defined(__x86_64__)
#define THIS_ARCH AUDIT_ARCH_X86_64
#else
#define THIS_ARCH AUDIT_ARCH_AARCH64
#endif

/* What the loop thread must never call while serving has/get/put/delete:
 * everything of a file operation reaches the kernel through the ring. */
static const long banned[] = {
    SYS_openat,    SYS_openat2,   SYS_write,        SYS_pwrite64,
    SYS_writev,    SYS_pwritev,   SYS_pwritev2,     SYS_fsync,
    SYS_fdatasync, SYS_sync_file_range, SYS_renameat, SYS_renameat2,
    SYS_unlinkat,  SYS_mkdirat,   SYS_statx,        SYS_newfstatat,
    SYS_read,      SYS_pread64,   SYS_readv,        SYS_getdents64,
#ifdef SYS_open
    SYS_open,      SYS_creat,     SYS_rename,       SYS_unlink,
    SYS_mkdir,     SYS_rmdir,     SYS_stat,         SYS_lstat,
#endif
};

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    for (size_t i = 0; i < KV__ARRAY_SIZE(banned); i++)
        if (banned[i] == si->si_syscall)
            _exit(64 + (int)i);
    _exit(63);
}

/* Trap the banned syscalls on the calling thread only (no TSYNC): pool
 * workers, started before, stay free to walk directories. */
static int ban_file_syscalls(void)
{
    struct sock_filter f[4 + 2 * KV__ARRAY_SIZE(banned) + 1];
    size_t n = 0;
    f[n++] = (struct sock_filter)BPF_STMT(
        BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                          THIS_ARCH, 1, 0);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                          SECCOMP_RET_ALLOW);
    f[n++] = (struct sock_filter)BPF_STMT(
        BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (size_t i = 0; i < KV__ARRAY_SIZE(banned); i++) {
        f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                              (unsigned)banned[i], 0, 1);
        f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                              SECCOMP_RET_TRAP);
    }
    f[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                          SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {(unsigned short)n, f};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGSYS, &sa, NULL) != 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* The child: 60 = seccomp unavailable, 0 = pass, 64+i = banned[i] was
 * called on the loop thread, other = an operation failed. */
static int no_syscalls_child(unsigned flags)
{
    env e;
    memset(&e, 0, sizeof e);
    if (kv_loop_new(&e.loop, NULL) != KV_OK || kv_pool_new(&e.pool, 2))
        return 2;
    if (env_open(&e, root, 0, flags) != KV_OK)
        return 3;
    enum { N = 200 };
    kv_key *keys[N];
    for (int i = 0; i < N; i++) {
        char p[48];
        /* New directories (mkdirat) and shared ones (group commit). */
        snprintf(p, sizeof p, "/ns/%d/sub%d/k%d", i % 5, i % 3, i);
        if (kv_key_parse(&keys[i], p) != KV_OK)
            return 4;
    }
    if (ban_file_syscalls() != 0)
        return 60;
    kv_fut *futs[N];
    uint64_t toks[N];
    for (int i = 0; i < N; i++) {
        kv_record r = {keys[i], "value", 5, 0};
        futs[i] = kv_put(e.s, &r, NULL);
    }
    for (int i = 0; i < N; i++) {
        if (kv_wait(futs[i]) != KV_OK)
            return 5;
        toks[i] = kv_fut_token(futs[i]);
        kv_fut_free(futs[i]);
    }
    for (int i = 0; i < N; i++) {
        futs[i] = i % 2 ? kv_get(e.s, keys[i], NULL) : kv_has(e.s, keys[i]);
    }
    for (int i = 0; i < N; i++) {
        if (kv_wait(futs[i]) != KV_OK)
            return 6;
        kv_fut_free(futs[i]);
    }
    for (int i = 0; i < N; i++) {
        kv_record r = {keys[i], "second value", 12, toks[i]};
        futs[i] = i % 4 == 0 ? kv_delete(e.s, keys[i], toks[i])
                             : kv_put(e.s, &r, NULL);
    }
    for (int i = 0; i < N; i++) {
        if (kv_wait(futs[i]) != KV_OK)
            return 7;
        kv_fut_free(futs[i]);
    }
    kv_fut *f = kv_get(e.s, keys[1], NULL);
    int rc = kv_wait(f);
    kv_fut_free(f);
    if (rc != KV_OK)
        return 8;
    for (int i = 0; i < N; i++)
        kv_key_free(keys[i]);
    return 0; /* exit without closing: close may use plain close(2) */
}

/* _i: 0 the flat layout, 1 the fan-out layout. */
START_TEST(test_no_file_syscalls_on_loop_thread)
{
    int st = wait_child(spawn_child(_i == 1 ? "syscalls-fanout" : "syscalls",
                                    root, NULL, NULL));
    ck_assert_msg(WIFEXITED(st), "child died: status %d", st);
    int code = WEXITSTATUS(st);
    if (code == 60) {
        fprintf(stderr, "check_fs: seccomp unavailable, loop-thread "
                        "syscall test skipped\n");
        return;
    }
    if (code >= 64 && code < 64 + (int)KV__ARRAY_SIZE(banned))
        ck_abort_msg("the loop thread called syscall %ld during "
                     "puts/gets",
                     banned[code - 64]);
    ck_assert_msg(code == 0, "child failed with %d", code);
}
END_TEST
#else
static int no_syscalls_child(unsigned flags)
{
    (void)flags;
    return 60;
}
#endif

/* ------------------------------------------------------------------------ */
/* Crash test                                                               */
/* ------------------------------------------------------------------------ */

#define CR_KEYS 48

/* Child: the puts so far that overwrote a spare file. */
static uint64_t cr_recycled(kv_store *s)
{
    uint64_t stats[S_N];
    kv__fs_stats(s, stats);
    return stats[S_RECYCLED];
}

typedef struct cround {
    unsigned flags;
    uint64_t recycled; /* the most puts over a spare file a child reported
                        * in this round */
    uint64_t recycled_total; /* summed over the rounds */
} cround;

/* Parent: each acknowledgement carries the child's recycled count. */
static void cr_on_ack(cu_crash *c, const cu_msg *m)
{
    cround *cr = c->arg;
    if (m->extra > cr->recycled)
        cr->recycled = m->extra;
}

/* The crash test on the layout of flags, in the parent and the child. */
static void cr_init(cu_crash *c, cround *cr, unsigned flags)
{
    *cr = (cround){.flags = flags};
    *c = (cu_crash){.exe = self_exe,
                    .mode = (flags & KV_FS_FANOUT) ? "crash-fanout" : "crash",
                    .path = root,
                    .nkeys = CR_KEYS,
                    .lane_keys = true,
                    .token_grows = true,
                    .value = gen_value,
                    .ack_extra = cr_recycled,
                    .on_ack = cr_on_ack,
                    .arg = cr};
}

static void crash_child(int wfd, uint64_t seed, unsigned flags)
{
    cu_crash c;
    cround cr;
    cr_init(&c, &cr, flags);
    env e;
    memset(&e, 0, sizeof e);
    if (kv_loop_new(&e.loop, NULL) != KV_OK || kv_pool_new(&e.pool, 2))
        _exit(30);
    if (env_open(&e, root, 0, flags) != KV_OK)
        _exit(31);
    cu_child_run(&c, e.loop, e.s, wfd, seed);
}

/* One round: run a child, kill it, check the store.  Returns acked ops. */
static size_t crash_round(cu_crash *c, uint64_t seed, int delay_ms)
{
    cround *cr = c->arg;
    cr->recycled = 0;
    size_t acked = cu_child_round(c, seed, delay_ms);
    cr->recycled_total += cr->recycled;

    /* Reopen (crash recovery) and check every key. */
    env e;
    env_init(&e, 0, cr->flags);
    cu_check_keys(c, e.s, seed, delay_ms);
    /* No torn file anywhere, no temp file after the reopen. */
    size_t records = 0, temps = 0;
    check_tree(root, true, &records, &temps);
    ck_assert_uint_eq(temps, 0);
    char **ids;
    size_t n;
    ck_assert_kv(query_ids(e.s, "/", KV_SORT_ASC, true, &ids, &n), KV_OK);
    ck_assert_uint_eq(n, records);
    free_ids(ids, n);
    tu_env_close(&e, true);
    return acked;
}

/* _i: 0 the flat layout, 1 the fan-out layout. */
START_TEST(test_crash_sigkill)
{
    unsigned flags = _i == 1 ? KV_FS_FANOUT : 0;
    int rounds = cu_rounds("KV_FS_CRASH_ROUNDS", 24);
    if (rounds <= 0)
        return;
    cu_crash c;
    cround cr;
    cr_init(&c, &cr, flags);
    uint64_t seed;
    size_t total = cu_run(&c, rounds, 20, 280, crash_round, &seed);
    fprintf(stderr, "check_fs: crash test (%s layout): %d rounds, %zu "
                    "acknowledged operations verified; %" PRIu64
                    " puts overwrote a spare file (seed %" PRIu64 ")\n",
            flags ? "fan-out" : "flat", rounds, total, cr.recycled_total,
            seed);
}
END_TEST

/* ------------------------------------------------------------------------ */

/*
 * The descriptor limit (child "nofile"): with RLIMIT_NOFILE at 64, puts 64
 * in flight into 1000 directories, then replacing each (spare files), then
 * gets, must all succeed.  hog: first take all but 12 of the descriptors
 * left after the open, as an application that uses more than the store
 * left it (kops then wait for each other on EMFILE).  Exit 0 or a code
 * naming the step.
 */
static int nf_wave(kv_store *s, unsigned gen, bool get, uint64_t *toks)
{
    kv_fut *futs[NF_DEPTH] = {NULL};
    kv_key *keys[NF_DEPTH] = {NULL};
    int bad = 0;
    for (unsigned i = 0; i < NF_DIRS + NF_DEPTH; i++) {
        unsigned slot = i % NF_DEPTH;
        if (futs[slot] != NULL) {
            unsigned j = i - NF_DEPTH;
            int rc = kv_wait(futs[slot]);
            if (rc != KV_OK) {
                fprintf(stderr, "nofile: %s %u: %s (%s)\n",
                        get ? "get" : "put", j, kv_err_name(rc),
                        kv_fut_errmsg(futs[slot]));
                bad = 1;
            } else if (!get) {
                toks[j] = kv_fut_token(futs[slot]);
            } else {
                const kv_record *r = kv_fut_record(futs[slot]);
                char v[32];
                int n = snprintf(v, sizeof v, "v%u-%u", gen, j);
                if (r->token != toks[j] || r->len != (size_t)n ||
                    memcmp(r->val, v, (size_t)n) != 0) {
                    fprintf(stderr, "nofile: get %u: not the value or "
                                    "token put\n", j);
                    bad = 1;
                }
            }
            kv_fut_free(futs[slot]);
            kv_key_free(keys[slot]);
            futs[slot] = NULL;
        }
        if (i >= NF_DIRS)
            continue;
        char p[32];
        snprintf(p, sizeof p, "/d%04u/k", i);
        if (kv_key_parse(&keys[slot], p) != KV_OK)
            return 1;
        if (get) {
            futs[slot] = kv_get(s, keys[slot], NULL);
        } else {
            char v[32];
            int n = snprintf(v, sizeof v, "v%u-%u", gen, i);
            kv_record r = {keys[slot], v, (size_t)n, toks[i]};
            futs[slot] = kv_put(s, &r, NULL); /* copies the value */
        }
    }
    return bad;
}

/* A child's store under RLIMIT_NOFILE at limit: 0, or the code of the
 * step that failed (2-5). */
static int nf_open(rlim_t limit, unsigned flags, const char *who,
                   kv_loop **l, kv_pool **p, kv_store **s)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 2;
    rl.rlim_cur = limit;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 3;
    if (kv_loop_new(l, NULL) != KV_OK || kv_pool_new(p, 2) != KV_OK)
        return 4;
    if (kv_fs_open(s, *l, *p, root, 0, flags) != KV_OK) {
        fprintf(stderr, "%s: open: %s\n", who, kv_last_errmsg());
        return 5;
    }
    return 0;
}

/* Take every descriptor the limit allows into held (at most max), then
 * give 12 back; returns how many are held. */
static int nf_hog(int *held, int max)
{
    int nheld = 0, fd;
    while (nheld < max && (fd = open("/dev/null", O_RDONLY)) >= 0)
        held[nheld++] = fd;
    for (int i = 0; i < 12 && nheld > 0; i++)
        close(held[--nheld]);
    return nheld;
}

/* Close and free a child's store, pool and loop: 0, or 9. */
static int nf_close(kv_loop *l, kv_pool *p, kv_store *s)
{
    kv_fut *f = kv_close(s);
    int rc = kv_wait(f);
    kv_fut_free(f);
    kv_store_free(s);
    kv_pool_free(p);
    if (kv_loop_free(l) != KV_OK || rc != KV_OK)
        return 9;
    return 0;
}

static int child_nofile(bool hog)
{
    kv_loop *l;
    kv_pool *p;
    kv_store *s;
    int rc = nf_open(NF_LIMIT, 0, "nofile", &l, &p, &s);
    if (rc != 0)
        return rc;
    int held[NF_LIMIT];
    int nheld = hog ? nf_hog(held, NF_LIMIT) : 0;
    static uint64_t toks[NF_DIRS];
    if (nf_wave(s, 0, false, toks) != 0)
        return 6;
    if (nf_wave(s, 1, false, toks) != 0) /* replace: spare files */
        return 7;
    if (nf_wave(s, 1, true, toks) != 0)
        return 8;
    while (nheld > 0)
        close(held[--nheld]);
    return nf_close(l, p, s);
}

/*
 * Recovery from EMFILE (child "nofile-regrow"): with RLIMIT_NOFILE at
 * RG_LIMIT (and no fsync: the waves are about descriptors), the
 * application first takes all but 12 descriptors, so that a put wave meets
 * EMFILE (but no more often than without maxrun's growth) and maxrun drops
 * below its cap; then it lets them go.  Puts made one at a time leave
 * maxrun where it is (none waits for admission: no evidence for a step),
 * and replace and get waves (at most
 * RG_WAVES of each) must bring maxrun back to the cap fd_budget set at
 * open, without meeting EMFILE again, every get reading the value last
 * put.  Exit 0 or a code naming the step (the maxrun after each wave on
 * stderr).
 */
enum { RG_LIMIT = 256, RG_WAVES = 8 };

/* n replaces of the records nf_wave made (tokens in toks), one at a
 * time: 0, or 1. */
static int rg_serial(kv_store *s, unsigned n, uint64_t *toks)
{
    for (unsigned i = 0; i < n; i++) {
        unsigned j = i % NF_DIRS;
        char p[32];
        snprintf(p, sizeof p, "/d%04u/k", j);
        kv_key *k = NULL;
        if (kv_key_parse(&k, p) != KV_OK)
            return 1;
        kv_record r = {k, "s", 1, toks[j]};
        kv_fut *f = kv_put(s, &r, NULL);
        int rc = kv_wait(f);
        if (rc != KV_OK)
            fprintf(stderr, "regrow: serial put %u: %s (%s)\n", i,
                    kv_err_name(rc), kv_fut_errmsg(f));
        else
            toks[j] = kv_fut_token(f);
        kv_fut_free(f);
        kv_key_free(k);
        if (rc != KV_OK)
            return 1;
    }
    return 0;
}

static int child_regrow(void)
{
    kv_loop *l;
    kv_pool *p;
    kv_store *s;
    int rc = nf_open(RG_LIMIT, KV_FS_NO_FSYNC, "regrow", &l, &p, &s);
    if (rc != 0)
        return rc;
    size_t run, cap;
    uint64_t emf, emf_hog;
    kv__fs_admission(s, &run, &cap, &emf);
    if (run != cap || cap < 8 || emf != 0) {
        fprintf(stderr, "regrow: at open maxrun %zu, cap %zu, %" PRIu64
                        " EMFILE\n", run, cap, emf);
        return 10;
    }
    int held[RG_LIMIT];
    int nheld = nf_hog(held, RG_LIMIT);
    static uint64_t toks[NF_DIRS];
    if (nf_wave(s, 0, false, toks) != 0)
        return 6;
    kv__fs_admission(s, &run, &cap, &emf_hog);
    /* Growing while the hog holds its descriptors must not add a storm of
     * EMFILE to those the store's idle directories cost anyway: about 120
     * here with the backoff, with growth or without (the cap stuck at 1),
     * about 230 when every round probes (RUN_BACKOFF_MAX 0). */
    if (emf_hog == 0 || emf_hog > NF_DIRS / 5 || run >= cap) {
        fprintf(stderr, "regrow: under the hog maxrun %zu of %zu, %" PRIu64
                        " EMFILE\n", run, cap, emf_hog);
        return 11;
    }
    while (nheld > 0)
        close(held[--nheld]);
    if (rg_serial(s, (unsigned)(run << 6) + 8, toks) != 0) /* a round is <= this */
        return 13;
    size_t run2;
    kv__fs_admission(s, &run2, &cap, &emf);
    if (run2 != run) {
        fprintf(stderr, "regrow: one put at a time moved maxrun from %zu to "
                        "%zu, with none waiting for admission\n", run, run2);
        return 14;
    }
    char seen[RG_WAVES * 24 + 32];
    size_t used = (size_t)snprintf(seen, sizeof seen, "%zu", run);
    unsigned w = 0;
    while (run < cap && w < RG_WAVES) {
        w++;
        if (nf_wave(s, w, false, toks) != 0)
            return 7;
        if (nf_wave(s, w, true, toks) != 0)
            return 8;
        kv__fs_admission(s, &run, &cap, &emf);
        used += (size_t)snprintf(seen + used, sizeof seen - used, " %zu",
                                 run);
    }
    if (run != cap || emf != emf_hog) {
        fprintf(stderr, "regrow: maxrun after the hog and each wave: %s "
                        "(cap %zu); EMFILE %" PRIu64 " under the hog, %"
                        PRIu64 " after\n", seen, cap, emf_hog,
                emf - emf_hog);
        return 12;
    }
    return nf_close(l, p, s);
}

static int run_child(int argc, char **argv)
{
    if (argc < 4)
        return 125;
    in_child = true;
    snprintf(root, sizeof root, "%s", argv[3]);
    if (strcmp(argv[2], "lock") == 0) {
        kv_loop *l;
        kv_pool *p;
        kv_store *s;
        if (kv_loop_new(&l, NULL) != KV_OK || kv_pool_new(&p, 1) != KV_OK)
            return 2;
        int rc = kv_fs_open(&s, l, p, root, 0, 0);
        return rc == KV_EBUSY ? 0 : 1;
    }
    if (strcmp(argv[2], "fsize") == 0)
        return child_fsize();
    if (strcmp(argv[2], "nofile") == 0 || strcmp(argv[2], "nofile-hog") == 0)
        return child_nofile(strcmp(argv[2], "nofile-hog") == 0);
    if (strcmp(argv[2], "nofile-regrow") == 0)
        return child_regrow();
    if (strcmp(argv[2], "syscalls") == 0)
        return no_syscalls_child(0);
    if (strcmp(argv[2], "syscalls-fanout") == 0)
        return no_syscalls_child(KV_FS_FANOUT);
    if ((strcmp(argv[2], "crash") == 0 ||
         strcmp(argv[2], "crash-fanout") == 0) &&
        argc >= 6) {
        crash_child(atoi(argv[5]), strtoull(argv[4], NULL, 10),
                    strcmp(argv[2], "crash") == 0 ? 0 : KV_FS_FANOUT);
        return 34;
    }
    return 126;
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0 || (size_t)n >= sizeof self_exe - 1)
        snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    else
        self_exe[n] = '\0';
    if (argc >= 2 && strcmp(argv[1], "child") == 0)
        _exit(run_child(argc, argv)); /* no atexit work: rings stay open */
    Suite *s = suite_create("fs");
    TCase *tc = tcase_create("records");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_value_sizes);
    tcase_add_test(tc, test_record_and_children);
    tcase_add_test(tc, test_group_commit);
    tcase_add_test(tc, test_failed_write_keeps_old);
    tcase_add_test(tc, test_drop_and_recreate);
    tcase_add_test(tc, test_close_inflight);
    suite_add_tcase(s, tc);

    tc = tcase_create("names");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_hostile_keys, 0, 2);
    tcase_add_test(tc, test_depth);
    tcase_add_test(tc, test_key_limits);
    tcase_add_test(tc, test_long_key_cost);
    tcase_add_test(tc, test_symlinks_planted);
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_corruption);
    tcase_add_test(tc, test_corrupt_replace_remove);
    tcase_add_test(tc, test_lock);
    tcase_add_loop_test(tc, test_nofile_64, 0, 2);
    tcase_add_test(tc, test_nofile_regrow);
    tcase_add_test(tc, test_temp_cleanup);
    tcase_add_test(tc, test_tokens_reopen);
    tcase_add_test(tc, test_token_refill);
    tcase_add_test(tc, test_readonly);
    suite_add_tcase(s, tc);

    tc = tcase_create("fanout");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fanout_layout);
    tcase_add_test(tc, test_fanout_wrong_layout);
    tcase_add_test(tc, test_fanout_query_merge);
    tcase_add_test(tc, test_fanout_files);
    suite_add_tcase(s, tc);

    tc = tcase_create("recycle");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_recycle_stream, 0, 2);
    tcase_add_test(tc, test_recycle_queries);
    tcase_add_test(tc, test_recycle_faults);
    suite_add_tcase(s, tc);

    tc = tcase_create("loop-thread");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
#ifdef HAVE_SECCOMP_TEST
    tcase_add_loop_test(tc, test_no_file_syscalls_on_loop_thread, 0, 2);
#endif
    suite_add_tcase(s, tc);

    tc = tcase_create("crash");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_crash_sigkill, 0, 2);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
