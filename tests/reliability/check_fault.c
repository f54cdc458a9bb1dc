/*
 * check_fault.c - fault injection in the loop (src/fault.c) against the fs
 * backend: for every ring operation of a put (over an existing record and
 * a new one), a delete, a get and a has, the nth operation of each kind
 * fails with EIO, ENOSPC, EINTR or EAGAIN, or transfers a short count.
 * Each time: the future succeeds or fails with a KV_EBACKEND kind and an
 * "fs: ..." message; no temp file is left in the root, no descriptor
 * leaks, the previous value stays readable with its token (or, once the
 * rename is done, the new one), and a fresh put/get then succeeds.
 * Queries run on the pool (blocking syscalls): the ring sees none of
 * their operations, which the test checks too.
 *
 * A last test checks the injector itself on plain ring operations.
 */
#include "config.h"

#include "store/store_int.h"
#include "core/fault.h"
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

static char *tmpdir;
static char root[4200];
static unsigned long n_injected; /* for the summary */
static unsigned long n_cases;

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
    snprintf(root, sizeof root, "%s/store", tmpdir);
}

static void teardown(void)
{
    kv__fault_disarm();
    tu_tmpdir_free(&tmpdir);
}

typedef tu_env env;

static void env_init(env *e, unsigned flags)
{
    memset(e, 0, sizeof *e);
    ck_assert_kv(kv_loop_new(&e->loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e->pool, 2), KV_OK);
    int rc = kv_fs_open(&e->s, e->loop, e->pool, root, 0, flags);
    ck_assert_msg(rc == KV_OK, "open: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
}

static kv_key *key_of(const char *path)
{
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, path), KV_OK);
    return k;
}

/* Wait for f, drain the loop (background closes), return its status and
 * message (copied into msg). */
static int settle(env *e, kv_fut *f, char *msg, size_t cap)
{
    int rc = kv_wait(f);
    snprintf(msg, cap, "%s", kv_fut_errmsg(f));
    ck_assert_int_ge(kv_loop_run(e->loop, KV_RUN_DEFAULT), 0);
    return rc;
}

static int put_s(env *e, const char *path, const void *v, size_t n,
                 uint64_t tok, uint64_t *newtok, char *msg, size_t cap)
{
    kv_key *k = key_of(path);
    kv_record r = {k, (void *)v, n, tok};
    kv_fut *f = kv_put(e->s, &r, NULL);
    kv_key_free(k);
    int rc = settle(e, f, msg, cap);
    if (rc == KV_OK && newtok != NULL)
        *newtok = kv_fut_token(f);
    kv_fut_free(f);
    return rc;
}

static int get_s(env *e, const char *path, bool value, void **v, size_t *n,
                 uint64_t *tok, char *msg, size_t cap)
{
    kv_key *k = key_of(path);
    kv_fut *f;
    if (value) {
        f = kv_get(e->s, k, NULL);
    } else {
        f = kv_has(e->s, k);
    }
    kv_key_free(k);
    int rc = settle(e, f, msg, cap);
    if (rc == KV_OK && value) {
        const kv_record *r = kv_fut_record(f);
        *n = r->len;
        *v = malloc(r->len + 1);
        memcpy(*v, r->val, r->len);
        *tok = r->token;
    } else if (rc == KV_OK && !kv_fut_bool(f)) {
        rc = KV_ENOTFOUND;
    }
    kv_fut_free(f);
    return rc;
}

static int del_s(env *e, const char *path, uint64_t tok, char *msg,
                 size_t cap)
{
    kv_key *k = key_of(path);
    kv_fut *f = kv_delete(e->s, k, tok);
    kv_key_free(k);
    int rc = settle(e, f, msg, cap);
    kv_fut_free(f);
    return rc;
}

/* Temp files anywhere under dir. */
static size_t count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (strncmp(de->d_name, ".tmp-", 5) == 0) {
            n++;
            continue;
        }
        char sub[8192];
        snprintf(sub, sizeof sub, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            n += count_temps(sub);
    }
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------ */
/* The sweep                                                                */
/* ------------------------------------------------------------------------ */

enum scen { SC_PUT, SC_PUT_NEW, SC_DEL, SC_GET, SC_HAS };
static const char *const scen_name[] = {"put", "put-new", "delete", "get",
                                        "has"};

static const struct {
    int op;
    const char *name;
} kinds[] = {
    {IORING_OP_OPENAT, "openat"},     {IORING_OP_READ, "read"},
    {IORING_OP_WRITE, "write"},       {IORING_OP_FSYNC, "fsync"},
    {IORING_OP_CLOSE, "close"},       {IORING_OP_RENAMEAT, "renameat"},
    {IORING_OP_UNLINKAT, "unlinkat"}, {IORING_OP_MKDIRAT, "mkdirat"},
    {IORING_OP_STATX, "statx"},
};

static const int errs[] = {-EIO, -ENOSPC, -EINTR, -EAGAIN};

#define VAL_OLD "the previous value, readable after every fault"
#define VAL_NEW "a new value written under fault injection ......"

typedef struct sweep {
    env e;
    uint64_t tok;      /* the token of /f/k (VAL_OLD) */
    unsigned newkeys;  /* SC_PUT_NEW: a fresh key (and directory) each run */
    int fds;           /* descriptors before the faulted run */
} sweep;

/* /f/k holds VAL_OLD with s->tok, whatever happened. */
static void restore(sweep *s)
{
    char msg[512];
    void *v = NULL;
    size_t n = 0;
    uint64_t tok = 0;
    int rc = get_s(&s->e, "/f/k", true, &v, &n, &tok, msg, sizeof msg);
    if (rc == KV_OK && n == strlen(VAL_OLD) && memcmp(v, VAL_OLD, n) == 0 &&
        tok == s->tok) {
        free(v);
        return;
    }
    free(v);
    if (rc == KV_OK)
        ck_assert_kv(del_s(&s->e, "/f/k", tok, msg, sizeof msg), KV_OK);
    else
        ck_assert_msg(rc == KV_ENOTFOUND, "restore: get: %s %s",
                      kv_err_name(rc), msg);
    ck_assert_kv(put_s(&s->e, "/f/k", VAL_OLD, strlen(VAL_OLD), 0, &s->tok,
                       msg, sizeof msg),
                 KV_OK);
}

/* Run scenario sc once; returns its status and message. */
static int run_scen(sweep *s, enum scen sc, char *msg, size_t cap,
                    char *newpath, size_t ncap)
{
    void *v = NULL;
    size_t n = 0;
    uint64_t tok = 0;
    int rc;
    switch (sc) {
    case SC_PUT:
        rc = put_s(&s->e, "/f/k", VAL_NEW, strlen(VAL_NEW), s->tok, &tok,
                   msg, cap);
        break;
    case SC_PUT_NEW:
        snprintf(newpath, ncap, "/n%u/k", s->newkeys++);
        rc = put_s(&s->e, newpath, VAL_NEW, strlen(VAL_NEW), 0, &tok, msg,
                   cap);
        break;
    case SC_DEL:
        rc = del_s(&s->e, "/f/k", s->tok, msg, cap);
        break;
    case SC_GET:
    case SC_HAS:
        rc = get_s(&s->e, "/f/k", sc == SC_GET, &v, &n, &tok, msg, cap);
        if (rc == KV_OK && sc == SC_GET) {
            ck_assert_uint_eq(tok, s->tok);
            ck_assert(n == strlen(VAL_OLD) && memcmp(v, VAL_OLD, n) == 0);
        }
        free(v);
        break;
    default:
        rc = KV_EINVAL;
    }
    return rc;
}

/* After a faulted run of sc that ended rc: check the store's state. */
static void check_after(sweep *s, enum scen sc, int rc, const char *msg,
                        const char *what, const char *newpath)
{
    char m2[512];
    if (rc != KV_OK) {
        ck_assert_msg(kv_err_is(rc, KV_EBACKEND),
                      "%s: %s is not a backend failure (%s)", what,
                      kv_err_name(rc), msg);
        ck_assert_msg(strncmp(msg, "fs: ", 4) == 0 && strlen(msg) > 10,
                      "%s: unclear message \"%s\"", what, msg);
    }
    /* No temp file, no descriptor leak. */
    ck_assert_msg(count_temps(root) == 0, "%s: temp file left (%s)", what,
                  msg);
    /* (A put of a new key may leave its new directory in the cache of
     * idle directory descriptors.) */
    int fds = tu_count_fds(), allowed = s->fds + (sc == SC_PUT_NEW);
    ck_assert_msg(fds <= allowed, "%s: %d descriptors, %d before (%s)", what,
                  fds, s->fds, msg);
    /* The record: the old value with its token, or what the op did. */
    void *v = NULL;
    size_t n = 0;
    uint64_t tok = 0;
    int g = get_s(&s->e, sc == SC_PUT_NEW ? newpath : "/f/k", true, &v, &n,
                  &tok, m2, sizeof m2);
    bool is_old = g == KV_OK && n == strlen(VAL_OLD) &&
                  memcmp(v, VAL_OLD, n) == 0 && tok == s->tok;
    bool is_new = g == KV_OK && n == strlen(VAL_NEW) &&
                  memcmp(v, VAL_NEW, n) == 0 && tok != s->tok;
    free(v);
    /* Once renamed/unlinked, only the directory fsync can fail: the
     * change is then visible but not known durable. */
    bool after_commit = strstr(msg, "fsync directory") != NULL;
    switch (sc) {
    case SC_PUT:
        ck_assert_msg(rc == KV_OK ? is_new : (is_old || (after_commit && is_new)),
                      "%s: rc %s (%s), then get %s", what, kv_err_name(rc),
                      msg, kv_err_name(g));
        break;
    case SC_PUT_NEW:
        ck_assert_msg(rc == KV_OK ? is_new
                                  : (g == KV_ENOTFOUND ||
                                     (after_commit && is_new)),
                      "%s: rc %s (%s), then get %s", what, kv_err_name(rc),
                      msg, kv_err_name(g));
        break;
    case SC_DEL:
        ck_assert_msg(rc == KV_OK ? g == KV_ENOTFOUND
                                  : (is_old || (after_commit &&
                                                g == KV_ENOTFOUND)),
                      "%s: rc %s (%s), then get %s", what, kv_err_name(rc),
                      msg, kv_err_name(g));
        break;
    default:
        ck_assert_msg(is_old, "%s: then get %s (%s)", what, kv_err_name(g),
                      m2);
        break;
    }
    /* The store keeps working: a fresh put and get. */
    char p[64];
    snprintf(p, sizeof p, "/fresh/%lu", n_cases);
    uint64_t t2 = 0;
    ck_assert_msg(put_s(&s->e, p, "x", 1, 0, &t2, m2, sizeof m2) == KV_OK,
                  "%s: fresh put failed: %s", what, m2);
    ck_assert_kv(get_s(&s->e, p, true, &v, &n, &tok, m2, sizeof m2), KV_OK);
    ck_assert_uint_eq(tok, t2);
    free(v);
}

static void sweep_scen(sweep *s, enum scen sc)
{
    char msg[512], newpath[64], what[256];
    restore(s);
    /* Count the ring operations of one clean run, per kind. */
    unsigned long count[KV__ARRAY_SIZE(kinds)];
    kv__fault_arm(s->e.loop, -1, 0, 0);
    int rc = run_scen(s, sc, msg, sizeof msg, newpath, sizeof newpath);
    ck_assert_msg(rc == KV_OK, "%s: clean run: %s %s", scen_name[sc],
                  kv_err_name(rc), msg);
    for (size_t i = 0; i < KV__ARRAY_SIZE(kinds); i++)
        count[i] = kv__fault_seen(kinds[i].op);
    kv__fault_disarm();
    restore(s);
    for (size_t i = 0; i < KV__ARRAY_SIZE(kinds); i++) {
        for (unsigned long nth = 1; nth <= count[i]; nth++) {
            int nres = (int)KV__ARRAY_SIZE(errs);
            bool rw = kinds[i].op == IORING_OP_READ ||
                      kinds[i].op == IORING_OP_WRITE;
            if (rw)
                nres += 2;
            for (int j = 0; j < nres; j++) {
                int res = j < (int)KV__ARRAY_SIZE(errs)
                              ? errs[j]
                              : (j == (int)KV__ARRAY_SIZE(errs) ? 1 : 45);
                snprintf(what, sizeof what, "%s: %s #%lu %s%s",
                         scen_name[sc], kinds[i].name, nth,
                         res < 0 ? "" : "short ",
                         res < 0 ? kv_err_name(res) : (res == 1 ? "1" : "45"));
                s->fds = tu_count_fds();
                kv__fault_arm(s->e.loop, kinds[i].op, nth, res);
                rc = run_scen(s, sc, msg, sizeof msg, newpath,
                              sizeof newpath);
                unsigned long hits = kv__fault_hits();
                kv__fault_disarm();
                ck_assert_msg(hits == 1, "%s: %lu injections", what, hits);
                /* Short reads are read on, short writes resumed. */
                ck_assert_msg(res < 0 || rc == KV_OK, "%s: %s %s", what,
                              kv_err_name(rc), msg);
                n_injected += hits;
                n_cases++;
                if (getenv("KV_FAULT_VERBOSE") != NULL)
                    fprintf(stderr, "%s: %s %s\n", what, kv_err_name(rc),
                            msg);
                check_after(s, sc, rc, msg, what, newpath);
                restore(s);
            }
        }
    }
}

static void sweep_all(unsigned flags)
{
    sweep s;
    memset(&s, 0, sizeof s);
    int fds0 = tu_count_fds();
    env_init(&s.e, flags);
    char msg[512];
    /* Warm up: the directories of /f, /fresh and the root are open. */
    ck_assert_kv(put_s(&s.e, "/f/k", VAL_OLD, strlen(VAL_OLD), 0, &s.tok,
                       msg, sizeof msg),
                 KV_OK);
    uint64_t t;
    ck_assert_kv(put_s(&s.e, "/fresh/warm", "x", 1, 0, &t, msg, sizeof msg),
                 KV_OK);
    for (int sc = SC_PUT; sc <= SC_HAS; sc++)
        sweep_scen(&s, (enum scen)sc);
    tu_env_close(&s.e, true);
    /* Everything the store opened is closed with it. */
    ck_assert_int_eq(tu_count_fds(), fds0);
    /* Reopen: everything still reads. */
    env_init(&s.e, flags);
    void *v = NULL;
    size_t n = 0;
    uint64_t tok = 0;
    ck_assert_kv(get_s(&s.e, "/f/k", true, &v, &n, &tok, msg, sizeof msg),
                 KV_OK);
    ck_assert_uint_eq(tok, s.tok);
    free(v);
    tu_env_close(&s.e, true);
}

START_TEST(test_fs_sweep)
{
    sweep_all(0);
    fprintf(stderr, "check_fault: fs sweep: %lu cases, %lu faults injected\n",
            n_cases, n_injected);
}
END_TEST

START_TEST(test_fs_sweep_nofsync)
{
    sweep_all(KV_FS_NO_FSYNC);
}
END_TEST

/*
 * The token block refill (a write and an fsync of .tokens, through the
 * ring, in the background of a put) fails: the store keeps handing out
 * the tokens it had reserved, the next refill retries, and tokens never
 * repeat across a reopen.
 */
static unsigned refill_puts(env *e, int fail, unsigned long *hits,
                            uint64_t *maxtok)
{
    char msg[512], p[32];
    unsigned i;
    for (i = 1; i <= 20000; i++) {
        snprintf(p, sizeof p, "/t/k%u", i);
        uint64_t t = 0;
        int rc = put_s(e, p, "v", 1, 0, &t, msg, sizeof msg);
        ck_assert_msg(rc == KV_OK, "put %u: %s %s", i, kv_err_name(rc), msg);
        if (t > *maxtok)
            *maxtok = t;
        /* The first refill: one write more than the puts made. */
        if (fail == 0 && kv__fault_seen(IORING_OP_WRITE) > i)
            return i;
        if (fail != 0 && kv__fault_hits() > 0 && ++*hits > 50)
            return i;
    }
    return 0;
}

START_TEST(test_fs_token_refill)
{
    /* Where the first refill comes (the same in every fresh store). */
    env e;
    uint64_t maxtok = 0;
    unsigned long hits = 0;
    snprintf(root, sizeof root, "%s/tokcount", tmpdir);
    env_init(&e, KV_FS_NO_FSYNC);
    kv__fault_arm(e.loop, -1, 0, 0);
    unsigned p = refill_puts(&e, 0, &hits, &maxtok);
    kv__fault_disarm();
    ck_assert_uint_gt(p, 0);
    tu_env_close(&e, true);
    /* Its write (the pth: one per put before it) fails with EIO, ENOSPC;
     * then, with fsyncs, its fsync (two per put before it, one more for
     * the mkdir of /t) fails with EIO. */
    static const struct {
        int op, res;
        unsigned flags;
    } cases[] = {{IORING_OP_WRITE, -EIO, KV_FS_NO_FSYNC},
                 {IORING_OP_WRITE, -ENOSPC, KV_FS_NO_FSYNC},
                 {IORING_OP_FSYNC, -EIO, 0}};
    for (size_t c = 0; c < KV__ARRAY_SIZE(cases); c++) {
        snprintf(root, sizeof root, "%s/tok%zu", tmpdir, c);
        env_init(&e, cases[c].flags);
        kv__fault_arm(e.loop, cases[c].op,
                      cases[c].op == IORING_OP_WRITE ? p : 2 * (p - 1) + 2,
                      cases[c].res);
        maxtok = 0;
        hits = 0;
        /* 50 puts after the failure must still succeed. */
        ck_assert_uint_gt(refill_puts(&e, 1, &hits, &maxtok), 0);
        kv__fault_disarm();
        n_injected++;
        tu_env_close(&e, true);
        /* Reopen: new tokens above every one handed out. */
        env_init(&e, cases[c].flags);
        char msg[512];
        uint64_t t = 0;
        ck_assert_kv(put_s(&e, "/t/after", "v", 1, 0, &t, msg, sizeof msg),
                     KV_OK);
        ck_assert_uint_gt(t, maxtok);
        tu_env_close(&e, true);
    }
}
END_TEST

/* fs.c's counters (check_fs.c names them all): [3] file fsyncs, [4]
 * directory fsyncs. */
void kv__fs_stats(const kv_store *s, uint64_t out[10]);

/*
 * KV_FS_NO_FSYNC skips the syncs of records only: the store's metadata is
 * always synced (a store whose .format a power loss lost or tore could not
 * be opened again).  Open fsyncs .format (temp file, then rename), .tokens
 * and the root (and the root's parent when it made the root); the token
 * refills through the ring fsync .tokens; the puts fsync nothing.
 */
START_TEST(test_fs_nofsync_metadata)
{
    env e;
    uint64_t st[10];
    snprintf(root, sizeof root, "%s/meta", tmpdir);
    env_init(&e, KV_FS_NO_FSYNC);
    kv__fs_stats(e.s, st);
    ck_assert_uint_eq(st[3], 2); /* .format, .tokens */
    ck_assert_uint_eq(st[4], 2); /* the root's parent, the root */
    kv__fault_arm(e.loop, -1, 0, 0);
    uint64_t maxtok = 0;
    unsigned long hits = 0;
    unsigned p = refill_puts(&e, 0, &hits, &maxtok);
    ck_assert_uint_gt(p, 0);
    /* p puts (and the mkdir of /t) synced nothing; the refill did */
    ck_assert_uint_eq(kv__fault_seen(IORING_OP_FSYNC), 1);
    kv__fault_disarm();
    kv__fs_stats(e.s, st);
    ck_assert_uint_eq(st[3], 3);
    ck_assert_uint_eq(st[4], 2);
    tu_env_close(&e, true);
    /* a reopen reserves tokens (.tokens) and syncs the root */
    env_init(&e, KV_FS_NO_FSYNC);
    kv__fs_stats(e.s, st);
    ck_assert_uint_eq(st[3], 1);
    ck_assert_uint_eq(st[4], 1);
    tu_env_close(&e, true);
}
END_TEST

/* Queries walk the directories on the pool: no ring operation to fail,
 * and the result is whole. */
START_TEST(test_fs_query)
{
    env e;
    env_init(&e, 0);
    char msg[512];
    uint64_t t;
    for (int i = 0; i < 10; i++) {
        char p[32];
        snprintf(p, sizeof p, "/q/k%d", i);
        ck_assert_kv(put_s(&e, p, "v", 1, 0, &t, msg, sizeof msg), KV_OK);
    }
    kv__fault_arm(e.loop, -1, 0, 0);
    kv_key *k = key_of("/q");
    kv_query q = kv_query_init(k);
    kv_iter *it;
    kv_fut *f = tu_query_fetch(e.s, &q, &it);
    kv_key_free(k);
    size_t n;
    kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 10);
    kv_fut_free(f);
    kv_iter_free(it);
    ck_assert_int_ge(kv_loop_run(e.loop, KV_RUN_DEFAULT), 0);
    for (size_t i = 0; i < KV__ARRAY_SIZE(kinds); i++)
        ck_assert_msg(kv__fault_seen(kinds[i].op) == 0,
                      "a query submitted %s", kinds[i].name);
    kv__fault_disarm();
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* The injector itself                                                      */
/* ------------------------------------------------------------------------ */

typedef struct rop {
    kv__op op;
    int res;
    int n;
} rop;

static void rop_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rop *r = (rop *)(void *)op;
    r->res = res;
    r->n++;
}

START_TEST(test_injector)
{
    kv_loop *loop;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    char path[4300];
    snprintf(path, sizeof path, "%s/f", tmpdir);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    ck_assert_int_ge(fd, 0);
    static char buf[100];
    rop r[3];
    /* write -> fsync -> write, linked; the 1st write fails: all cancel. */
    for (int round = 0; round < 3; round++) {
        memset(r, 0, sizeof r);
        for (int i = 0; i < 3; i++)
            r[i].op.cb = rop_cb;
        struct io_uring_sqe *sq[3];
        ck_assert_kv(kv__loop_sqes(loop, sq, 3), KV_OK);
        io_uring_prep_write(sq[0], fd, buf, sizeof buf, 0);
        sq[0]->flags |= IOSQE_IO_LINK;
        io_uring_prep_fsync(sq[1], fd, 0);
        sq[1]->flags |= IOSQE_IO_LINK;
        io_uring_prep_write(sq[2], fd, buf, sizeof buf, 100);
        for (int i = 0; i < 3; i++)
            io_uring_sqe_set_data64(sq[i], (uintptr_t)&r[i].op);
        if (round == 0)
            kv__fault_arm(loop, IORING_OP_WRITE, 1, -EIO);
        else if (round == 1)
            kv__fault_arm(loop, IORING_OP_WRITE, 1, 10);
        else
            kv__fault_arm(loop, IORING_OP_FSYNC, 1, -ENOSPC);
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
        ck_assert_uint_eq(kv__fault_hits(), 1);
        kv__fault_disarm();
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(r[i].n, 1);
        if (round == 0) {
            ck_assert_int_eq(r[0].res, -EIO);
            ck_assert_int_eq(r[1].res, -ECANCELED);
            ck_assert_int_eq(r[2].res, -ECANCELED);
        } else if (round == 1) {
            ck_assert_int_eq(r[0].res, 10); /* really short */
            ck_assert_int_eq(r[1].res, -ECANCELED);
            ck_assert_int_eq(r[2].res, -ECANCELED);
        } else {
            ck_assert_int_eq(r[0].res, 100);
            ck_assert_int_eq(r[1].res, -ENOSPC);
            ck_assert_int_eq(r[2].res, -ECANCELED);
        }
    }
    struct stat st;
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert_int_eq(st.st_size, 100); /* only round 2's first write */
    close(fd);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fault");
    TCase *tc = tcase_create("injector");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_injector);
    suite_add_tcase(s, tc);

    tc = tcase_create("fs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fs_sweep);
    tcase_add_test(tc, test_fs_sweep_nofsync);
    tcase_add_test(tc, test_fs_query);
    tcase_add_test(tc, test_fs_token_refill);
    tcase_add_test(tc, test_fs_nofsync_metadata);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
