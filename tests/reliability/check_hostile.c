/*
 * check_hostile.c - hostile input through the public API, on every backend.
 *
 * Each case feeds one kind of bad or extreme input and asserts the
 * documented error or a correct result: NULL for every pointer argument of
 * every call, zero-length values, a 4 GiB value length (KV_EINVAL before a
 * byte is read: the buffer passed is 16 bytes long), keys with control
 * bytes, "..", namespaces of KV_NS_MAX_LEN bytes and one byte more, keys
 * deeper than an fs store's depth,
 * tokens 0, 1, INT64_MAX and UINT64_MAX - 1, negative and extreme offsets and
 * limits, unknown sort orders, and batches of 0 and 100,000 records
 * (under a descriptor limit of 512).
 *
 * Rows: sqlite-memory, sqlite-file, fs, redis, redis-cluster and rediss
 * (the single server over TLS, as its ACL user).  The
 * Redis rows run when tests/redis_env.sh has started servers
 * (KV_TEST_REDIS, KV_TEST_REDIS_CLUSTER, KV_TEST_REDIS_TLS; skipped,
 * saying so, otherwise);
 * every store they open has a key prefix of its own (the test directory's
 * name and a run number), so runs never see each other's records.  redis
 * is the single server with ?shard=store (atomic batches of any keys, as on
 * SQLite); redis-cluster is the 3-master cluster with the default
 * shard=key, where an atomic batch spanning hash slots and
 * kv_move_prefix_atomic fail KV_ENOTSUP (both are checked).  The values
 * over KV_MAX_VALUE_SIZE (Redis's own limit, proto-max-bulk-len, is 512 MB
 * too) fail KV_EINVAL before a byte is sent.
 *
 * The 100,000-record batch runs in full on both SQLite rows.  On fs every
 * record is a file (and a put is five ring operations), so the fs row
 * writes its batch with KV_FS_NO_FSYNC and 20,000 records by default
 * (KVT_FS_BATCH=n changes it).  On Redis every record of a batch is a
 * script of its own (pipelined; the atomic batch of the redis row is one
 * script of them all) against servers that fsync every write: 100,000
 * took 10 to 12 s a row, against 1.5 to 2 s for 20,000, so both Redis rows
 * write 20,000 by default (KVT_REDIS_BATCH=n changes it).  KVT_BATCH=n
 * changes the SQLite rows' 100,000, e.g. for valgrind.  KVT_BACKEND=name
 * runs one row.
 */
#include "config.h"

#include "store/store_int.h"
#include "testutil.h"

#include <inttypes.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Backends and harness                                                     */
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

/* What a row's atomic calls do. */
enum {
    AT_NONE, /* KV_ENOTSUP (fs) */
    AT_ALL,  /* any keys (SQLite, Redis shard=store) */
    AT_SLOT  /* keys of one hash slot; kv_move_prefix_atomic KV_ENOTSUP
                (Redis shard=key) */
};

typedef struct backend {
    const char *name;
    bool fs;
    int atomic;
    const char *env;  /* Redis: the variable with the servers' URI */
    const char *opts; /* Redis: URI options */
} backend;

static const backend backends[] = {
    {"sqlite-memory", false, AT_ALL, NULL, NULL},
    {"sqlite-file", false, AT_ALL, NULL, NULL},
    {"fs", true, AT_NONE, NULL, NULL},
    {"redis", false, AT_ALL, "KV_TEST_REDIS", "?shard=store"},
    {"redis-cluster", false, AT_SLOT, "KV_TEST_REDIS_CLUSTER", ""},
    {"rediss", false, AT_ALL, "KV_TEST_REDIS_TLS", ""},
};
#define NBACKENDS ((int)(sizeof backends / sizeof backends[0]))

typedef struct ctx {
    const backend *b;
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    char path[4200];
    kv_key *keys[256];
    size_t nkeys;
} ctx;

/* Run b's row?  (KVT_BACKEND; the servers of a Redis row.) */
static bool selected_(const backend *b, const char *test)
{
    const char *only = getenv("KVT_BACKEND");
    if (only != NULL && only[0] != '\0' && strcmp(only, b->name) != 0)
        return false;
    if (b->env != NULL && getenv(b->env) == NULL) {
        size_t tl = strlen(test); /* check's START_TEST names it name_fn */
        if (tl > 3 && strcmp(test + tl - 3, "_fn") == 0)
            tl -= 3;
        fprintf(stderr,
                "check_hostile: %s not set (tests/redis_env.sh sets it when "
                "redis-server is installed): %.*s %s skipped\n",
                b->env, (int)tl, test, b->name);
        return false;
    }
    return true;
}

static int open_store(ctx *c, unsigned depth, unsigned flags)
{
    if (c->b->env != NULL) {
        /* a store of its own: the test directory's name and a run number */
        static unsigned long runs;
        const char *base = strrchr(tmpdir, '/');
        char name[4300], uri[4400];
        snprintf(name, sizeof name, "%s-%lu", base != NULL ? base + 1 : tmpdir,
                 ++runs);
        tu_redis_uri(c->b->env, name, c->b->opts, uri, sizeof uri);
        /* "no fsync" is an fs flag: the server decides durability */
        return kv_redis_open(&c->s, c->loop, c->pool, uri,
                             flags & ~KV_FS_NO_FSYNC);
    }
    if (strcmp(c->b->name, "sqlite-memory") == 0)
        return kv_sqlite_open(&c->s, c->loop, c->pool, KV_SQLITE_MEMORY,
                              flags & ~KV_FS_NO_FSYNC);
    if (strcmp(c->b->name, "sqlite-file") == 0)
        return kv_sqlite_open(&c->s, c->loop, c->pool, c->path,
                              (flags & KV_FS_NO_FSYNC)
                                  ? (flags & ~KV_FS_NO_FSYNC) |
                                        KV_SQLITE_SYNC_OFF
                                  : flags);
    return kv_fs_open(&c->s, c->loop, c->pool, c->path, depth, flags);
}

static bool ctx_init_flags(ctx *c, int i, unsigned depth, unsigned flags,
                           const char *test)
{
    memset(c, 0, sizeof *c);
    c->b = &backends[i];
    if (!selected_(c->b, test))
        return false;
    snprintf(c->path, sizeof c->path, "%s/%s", tmpdir,
             c->b->fs ? "root" : "store.sqlite");
    ck_assert_kv(kv_loop_new(&c->loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&c->pool, 2), KV_OK);
    int rc = open_store(c, depth, flags);
    ck_assert_msg(rc == KV_OK, "%s: open: %s (%s)", c->b->name,
                  kv_err_name(rc), kv_last_errmsg());
    return true;
}

#define OPEN_FLAGS(c, depth, flags)                                            \
    ctx c##_storage;                                                           \
    ctx *c = &c##_storage;                                                     \
    if (!ctx_init_flags(c, _i, (depth), (flags), __func__))                    \
    return
#define OPEN(c) OPEN_FLAGS(c, 0, 0)

static void ctx_done(ctx *c)
{
    if (c->s != NULL) {
        kv_fut *f = kv_close(c->s);
        ck_assert_kv(kv_wait(f), KV_OK);
        kv_fut_free(f);
        kv_store_free(c->s);
    }
    ck_assert_int_eq(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(c->loop), KV_OK);
    kv_pool_free(c->pool);
    for (size_t i = 0; i < c->nkeys; i++)
        kv_key_free(c->keys[i]);
}

/* A key valid until ctx_done. */
static kv_key *K(ctx *c, const char *path)
{
    ck_assert_uint_lt(c->nkeys, sizeof c->keys / sizeof c->keys[0]);
    kv_key *k = NULL;
    ck_assert_msg(kv_key_parse(&k, path) == KV_OK, "bad key %.60s: %s", path,
                  kv_last_errmsg());
    c->keys[c->nkeys++] = k;
    return k;
}

static uint64_t put_(ctx *c, const kv_key *k, const void *v, size_t len,
                     uint64_t tok, int want, int line)
{
    kv_record r = {(kv_key *)k, (void *)v, len, tok};
    kv_fut *f = tu_await(kv_put(c->s, &r, NULL), want, "kv_put", line);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    if (want == KV_OK)
        ck_assert_msg(t != 0, "line %d: token 0", line);
    return t;
}
#define PUT(c, k, v, len, tok) put_((c), (k), (v), (len), (tok), KV_OK, __LINE__)
#define PUT_FAILS(c, k, v, len, tok, want)                                     \
    put_((c), (k), (v), (len), (tok), (want), __LINE__)

/* The record under k: its token, asserting its value (NULL: absent). */
static uint64_t get_(ctx *c, const kv_key *k, const void *v, size_t len,
                     int line)
{
    kv_fut *f = tu_await(kv_get(c->s, k, NULL), v ? KV_OK : KV_ENOTFOUND,
                        "kv_get", line);
    uint64_t t = 0;
    if (v != NULL) {
        const kv_record *r = kv_fut_record(f);
        ck_assert_msg(r != NULL && r->len == len &&
                          (len == 0 || memcmp(r->val, v, len) == 0),
                      "line %d: %.60s: wrong value", line, kv_key_id(k));
        ck_assert_msg(r->val != NULL, "line %d: NULL value", line);
        ck_assert(kv_key_equal(r->key, k));
        t = r->token;
    }
    kv_fut_free(f);
    return t;
}
#define GET(c, k, v, len) get_((c), (k), (v), (len), __LINE__)

/* Every record of a query, in order (caller frees with free_records). */
static kv_record *query_all(ctx *c, const kv_query *q, size_t *n, int want)
{
    kv_fut *f = AWAIT(kv_query_open(c->s, q, NULL), want);
    *n = 0;
    if (want != KV_OK) {
        kv_fut_free(f);
        return NULL;
    }
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    ck_assert_ptr_nonnull(it);
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    ck_assert(kv_iter_finished(it));
    size_t m = 0;
    const kv_record *r = kv_fut_records(f, &m);
    kv_record *out = calloc(m ? m : 1, sizeof *out);
    for (size_t i = 0; i < m; i++) {
        ck_assert_kv(kv_key_dup(&out[i].key, r[i].key), KV_OK);
        out[i].len = r[i].len;
        out[i].token = r[i].token;
        if (r[i].val != NULL) {
            out[i].val = malloc(r[i].len ? r[i].len : 1);
            memcpy(out[i].val, r[i].val, r[i].len);
        }
    }
    kv_fut_free(f);
    kv_iter_free(it);
    *n = m;
    return out;
}

/* Open (must succeed) and fetch everything, expecting the fetch's status. */
static kv_record *query_all_status(ctx *c, const kv_query *q, size_t *n,
                                   int want)
{
    if (want == KV_OK)
        return query_all(c, q, n, KV_OK);
    *n = 0;
    kv_fut *f = AWAIT(kv_query_open(c->s, q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    EXPECT(kv_iter_fetch_all(it), want);
    kv_iter_free(it);
    return NULL;
}

static void free_records(kv_record *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        kv_key_free(r[i].key);
        free(r[i].val);
    }
    free(r);
}

static size_t query_count(ctx *c, const kv_key *k, int64_t offset,
                          int64_t limit, kv_sort sort)
{
    kv_query q = kv_query_init(k);
    q.offset = offset;
    q.limit = limit;
    q.sort = sort;
    q.value = false;
    size_t n = 0;
    kv_record *r = query_all(c, &q, &n, KV_OK);
    free_records(r, n);
    return n;
}

/* ------------------------------------------------------------------------ */
/* NULL arguments                                                           */
/* ------------------------------------------------------------------------ */

static int work_ok(void *arg)
{
    (void)arg;
    return KV_OK;
}

static void cb_count(kv_fut *f, void *arg)
{
    (void)f;
    ++*(int *)arg;
}

/* Engine and key calls with NULL arguments (no store needed). */
START_TEST(test_null_engine_and_keys)
{
    /* loop */
    ck_assert_kv(kv_loop_new(NULL, NULL), KV_EINVAL);
    ck_assert_kv(kv_loop_run(NULL, KV_RUN_NOWAIT), KV_EINVAL);
    ck_assert(!kv_loop_alive(NULL));
    ck_assert_kv(kv_loop_free(NULL), KV_OK);
    kv_loop *loop;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_loop_run(loop, (kv_run_mode)7), KV_EINVAL);
    ck_assert_kv(kv_loop_run(loop, (kv_run_mode)-1), KV_EINVAL);
    kv_loop_opts bad = {0, 0, 0, 0, 0x80000000u};
    kv_loop *l2 = NULL;
    ck_assert_kv(kv_loop_new(&l2, &bad), KV_EINVAL);
    kv_loop_opts huge = {UINT_MAX, 0, 0, 0, 0};
    ck_assert_kv(kv_loop_new(&l2, &huge), KV_EINVAL);
    ck_assert_ptr_null(l2);

    /* pool */
    ck_assert_kv(kv_pool_new(NULL, 1), KV_EINVAL);
    kv_pool *pool = NULL;
    ck_assert_kv(kv_pool_new(&pool, UINT_MAX), KV_EINVAL);
    ck_assert_ptr_null(pool);
    ck_assert_uint_eq(kv_pool_size(NULL), 0);
    kv_pool_free(NULL);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    kv_fut *f = kv_pool_work(NULL, pool, work_ok, NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_fut_status(f), KV_EINVAL);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    EXPECT(kv_pool_work(loop, NULL, work_ok, NULL), KV_EINVAL);
    EXPECT(kv_pool_work(loop, pool, NULL, NULL), KV_EINVAL);

    /* futures */
    ck_assert_kv(kv_wait(NULL), KV_EINVAL);
    ck_assert_kv(kv_fut_then(NULL, cb_count, NULL), KV_EINVAL);
    ck_assert(!kv_fut_done(NULL));
    ck_assert_kv(kv_fut_status(NULL), KV_EINVAL);
    ck_assert_str_eq(kv_fut_errmsg(NULL), "");
    ck_assert_ptr_null(kv_fut_loop(NULL));
    kv_fut_cancel(NULL);
    kv_fut_free(NULL);
    ck_assert_ptr_null(kv_fut_new(NULL));
    kv_fut_complete(NULL);
    kv_fut_complete_records(NULL, NULL, 3);
    kv_fut_complete_bytes(NULL, NULL, 3);
    kv_fut_complete_obj(NULL, NULL);
    kv_fut_fail(NULL, KV_ERROR, NULL);
    size_t n = 99;
    ck_assert_ptr_null(kv_fut_record(NULL));
    ck_assert_ptr_null(kv_fut_records(NULL, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(kv_fut_records(NULL, NULL));
    n = 99;
    ck_assert_ptr_null(kv_fut_keys(NULL, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert(!kv_fut_bool(NULL));
    ck_assert_uint_eq(kv_fut_token(NULL), 0);
    ck_assert_ptr_null(kv_fut_bytes(NULL, NULL));
    ck_assert_ptr_null(kv_fut_obj(NULL));
    ck_assert_ptr_null(kv_fut_take_iter(NULL));
    f = kv_sleep(NULL, 1);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    f = kv_fut_new(loop);
    ck_assert_kv(kv_fut_then(f, NULL, NULL), KV_EINVAL);
    kv_fut_complete_records(f, NULL, 3); /* NULL records with n > 0 */
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    f = kv_fut_new(loop);
    kv_fut_complete_bytes(f, NULL, 3);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    f = kv_fut_new(loop);
    kv_fut_complete_bytes(f, NULL, 0); /* no bytes: fine */
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    f = kv_fut_new(loop);
    kv_fut_fail(f, 42, NULL); /* a failure needs a negative code */
    ck_assert_kv(kv_wait(f), KV_ERROR);
    kv_fut_free(f);
    /* a future nothing could ever complete: kv_wait refuses to block */
    f = kv_fut_new(loop);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    ck_assert(!kv_fut_done(f));
    kv_fut_complete(f);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);

    /* errors */
    ck_assert_str_eq(kv_strerror(INT_MIN), "unknown error");
    ck_assert_str_eq(kv_strerror(INT_MAX), "unknown error");
    ck_assert_str_eq(kv_err_name(INT_MIN), "UNKNOWN");
    ck_assert(!kv_err_is(KV_OK, KV_ERROR));
    ck_assert(kv_err_is(INT_MIN, KV_ERROR));

    /* namespaces and keys */
    kv_ns ns = {NULL, NULL};
    ck_assert_kv(kv_ns_parse(NULL, "a"), KV_EINVAL);
    ck_assert_kv(kv_ns_parse(&ns, NULL), KV_EINVAL);
    ck_assert_kv(kv_ns_init(NULL, "f", "v"), KV_EINVAL);
    ck_assert_kv(kv_ns_init(&ns, "f", NULL), KV_EINVAL);
    ck_assert_ptr_null(ns.field);
    kv_ns_free(NULL);
    ck_assert_ptr_null(kv_ns_id(NULL));
    kv_key *k = NULL, *a = NULL;
    ck_assert_kv(kv_key_parse(&a, "/a/b"), KV_OK);
    ck_assert_kv(kv_key_parse(NULL, "/a"), KV_EINVAL);
    ck_assert_kv(kv_key_parse(&k, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_from_ns(NULL, &ns, 0), KV_EINVAL);
    ck_assert_kv(kv_key_from_ns(&k, NULL, 1), KV_EINVAL);
    ck_assert_kv(kv_key_concat(&k, NULL, 2), KV_EINVAL);
    const kv_key *with_null[2] = {a, NULL};
    ck_assert_kv(kv_key_concat(&k, with_null, 2), KV_EINVAL);
    ck_assert_kv(kv_key_dup(&k, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_dup(NULL, a), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&k, NULL, 0, 0), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&k, a, 2, 1), KV_EINVAL);
    ck_assert_kv(kv_key_slice(&k, a, 0, SIZE_MAX), KV_EINVAL);
    ck_assert_kv(kv_key_parent(&k, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_path(&k, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_reverse(&k, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_child(&k, a, NULL, 1), KV_EINVAL);
    ck_assert_kv(kv_key_child_key(&k, a, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_child_str(&k, a, NULL), KV_EINVAL);
    ck_assert_kv(kv_key_relative(&k, NULL, a), KV_EINVAL);
    ck_assert_kv(kv_key_relative(&k, a, NULL), KV_EINVAL);
    ck_assert_ptr_null(k);
    kv_key_free(NULL);
    ck_assert_uint_eq(kv_key_len(NULL), 0);
    ck_assert_ptr_null(kv_key_ns(NULL, 0));
    ck_assert_ptr_null(kv_key_ns(a, SIZE_MAX));
    ck_assert_str_eq(kv_key_value(NULL), "");
    ck_assert_str_eq(kv_key_field(NULL), "");
    ck_assert(!kv_key_is_root(NULL));
    ck_assert(!kv_key_is_ancestor(NULL, a));
    ck_assert(!kv_key_is_descendant(a, NULL));
    ck_assert(kv_key_equal(NULL, NULL));
    ck_assert(!kv_key_equal(a, NULL));
    ck_assert_int_lt(kv_key_cmp(NULL, a), 0);
    ck_assert_int_gt(kv_key_cmp(a, NULL), 0);
    (void)kv_key_hash(NULL);
    kv_key_free(a);

    /* records and buffers */
    kv_buf b = {NULL, 0, 0};
    ck_assert_kv(kv_buf_append(NULL, "x", 1), KV_EINVAL);
    ck_assert_kv(kv_buf_append(&b, NULL, 1), KV_EINVAL);
    ck_assert_kv(kv_buf_append(&b, NULL, 0), KV_OK);
    ck_assert_kv(kv_buf_append(&b, "x", 1), KV_OK);
    /* a length that cannot fit after what the buffer holds */
    ck_assert_kv(kv_buf_append(&b, "x", SIZE_MAX), KV_ENOMEM);
    ck_assert_uint_eq(b.len, 1);
    free(b.data);
    ck_assert_ptr_null(kv_record_dup(NULL));
    kv_record_free(NULL);

    ck_assert_kv(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
}
END_TEST

/* The openers with NULL and bad arguments. */
START_TEST(test_null_open)
{
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    char path[4200];
    snprintf(path, sizeof path, "%s/x", tmpdir);
    ck_assert_kv(kv_sqlite_open(NULL, loop, pool, path, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, NULL, pool, path, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, NULL, path, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, NULL, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, "", 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, path, 0x80000000u), KV_EINVAL);
    ck_assert_kv(kv_fs_open(NULL, loop, pool, path, 0, 0), KV_EINVAL);
    ck_assert_kv(kv_fs_open(&s, NULL, pool, path, 0, 0), KV_EINVAL);
    ck_assert_kv(kv_fs_open(&s, loop, NULL, path, 0, 0), KV_EINVAL);
    ck_assert_kv(kv_fs_open(&s, loop, pool, NULL, 0, 0), KV_EINVAL);
    ck_assert_kv(kv_fs_open(&s, loop, pool, "", 0, 0), KV_EINVAL);
    ck_assert_kv(kv_fs_open(&s, loop, pool, path, 0, 0x80000000u), KV_EINVAL);
    ck_assert_ptr_null(s);
    ck_assert_str_ne(kv_last_errmsg(), "");
    /* nothing was created by the refused opens */
    struct stat st;
    ck_assert_int_ne(stat(path, &st), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
}
END_TEST

/* kv_redis_open's result for a URI that is refused or names a port where
 * nothing listens: never a crash, never a store, never the password. */
static void hostile_uri(kv_loop *loop, const char *uri, bool must_einval)
{
    kv_store *s = NULL;
    int rc = kv_redis_open(&s, loop, NULL, uri, 0);
    ck_assert_msg(rc == KV_EINVAL || rc == KV_ENOTSUP ||
                      (!must_einval && rc == KV_EBACKEND),
                  "%.200s: %s (%s)", uri, kv_err_name(rc), kv_last_errmsg());
    ck_assert_ptr_null(s);
    ck_assert_str_ne(kv_last_errmsg(), "");
    ck_assert_msg(strstr(kv_last_errmsg(), "Pw0rd") == NULL,
                  "%.200s: the password in %s", uri, kv_last_errmsg());
}

/* Hostile Redis URIs: over-long fields and URIs, bad percent escapes,
 * ports over 65535, control and high bytes everywhere, thousands of hosts
 * or options; then 3,000 random mutations of the user-info, path and
 * options of a URI whose host is 127.0.0.1:1 (nothing listens: a URI that
 * parses fails KV_EBACKEND at once). */
START_TEST(test_hostile_uris)
{
    kv_loop *loop;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    static const char *const bad[] = {
        "redis://127.0.0.1:65536",    "redis://127.0.0.1:4294967297",
        "redis://127.0.0.1:-1",       "redis://127.0.0.1:+1",
        "redis://127.0.0.1: 1",       "redis://127.0.0.1:0x10",
        "redis://[::1]:70000",        "redis://u:%@127.0.0.1:1",
        "redis://u:%4@127.0.0.1:1",   "redis://u:%%@127.0.0.1:1",
        "redis://u:%0g@127.0.0.1:1",  "redis://u:%00@127.0.0.1:1",
        "redis://%@127.0.0.1:1",      "redis://u:Pw0rd\x01@127.0.0.1:1",
        "redis://u:Pw0rd\xff%zz@h:1", "redis://u:Pw0rd@h\x7f:1",
        "redis://h\xc3\xa9:1",        "redis://@",
        "redis://:@",                 "redis://[",
        "redis://]",                  "redis://[]:1",
        "redis://[[::1]]:1",          "redis://[::1]]:1",
        "redis://h:1:2",              "redis://,",
        "redis://h/p?&",              "redis://h/p?=",
        "redis://h/p?=x",             "redis://h/p?timeout==1",
        "redis://h/p?cacert=%",       "redis://h/p/q",
        "redis://h/p?shard=key?x",    "redis:/h",
        "redis:h",                    "REDIS://h",
        "rediss://",                  "redis://h/12345678901234567890",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        hostile_uri(loop, bad[i], true);
    /* over-long: each field, and the whole URI (1 MiB) */
    size_t big = 1 << 20;
    char *u = malloc(big + 64);
    ck_assert_ptr_nonnull(u);
    const char *tmpl[] = {"redis://%s:1",         "redis://%s@127.0.0.1:1",
                          "redis://u:%s@127.0.0.1:1", "redis://127.0.0.1:1/%s",
                          "redis://127.0.0.1:1/p?cacert=%s",
                          "redis://127.0.0.1:%s"};
    size_t lens[] = {600, 5000, 70000, big};
    for (size_t t = 0; t < sizeof tmpl / sizeof tmpl[0]; t++) {
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
            char *f = malloc(lens[l] + 1);
            ck_assert_ptr_nonnull(f);
            memset(f, t == 5 ? '9' : 'a', lens[l]);
            f[lens[l]] = '\0';
            size_t need = strlen(tmpl[t]) + lens[l] + 1;
            char *uri = malloc(need);
            ck_assert_ptr_nonnull(uri);
            snprintf(uri, need, tmpl[t], f);
            hostile_uri(loop, uri, true);
            free(uri);
            free(f);
        }
    }
    /* thousands of hosts, thousands of options */
    size_t o = (size_t)snprintf(u, big, "redis://127.0.0.1:1");
    while (o + 16 < big / 16)
        o += (size_t)snprintf(u + o, big - o, ",127.0.0.1:1");
    hostile_uri(loop, u, true);
    o = (size_t)snprintf(u, big, "redis://127.0.0.1:1/p?");
    while (o + 16 < big)
        o += (size_t)snprintf(u + o, big - o, "shard=key&");
    hostile_uri(loop, u, true);
    /* mutations (a fixed seed: the same every run) */
    static const char base[] = "redis://us%40r:Pw0rd@127.0.0.1:1/pre_x.y"
                               "?shard=store&timeout=300&password_file=";
    const size_t hs = strlen("redis://us%40r:Pw0rd@"),
                 he = hs + strlen("127.0.0.1:1");
    static const char alphabet[] = "%@:/?&=[],#\x01\xff 0aF";
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 3000; i++) {
        char m[sizeof base + 8];
        memcpy(m, base, sizeof base);
        size_t len = sizeof base - 1;
        int nmut = 1 + (int)(x % 3);
        for (int k = 0; k < nmut; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            size_t pos = (size_t)(x % len);
            if (pos >= hs && pos < he)
                pos = (size_t)(x >> 20) % hs; /* the host stays */
            if (pos < 8)
                pos = 8;
            if ((x >> 40) % 4 == 0 && len > hs + 2 && pos < len - 1) {
                memmove(m + pos, m + pos + 1, len - pos); /* delete */
                len--;
            } else {
                m[pos] = alphabet[(x >> 32) % (sizeof alphabet - 1)];
            }
        }
        m[len] = '\0';
        hostile_uri(loop, m, false);
    }
    free(u);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

static kv_fut *prod(const kv_key *key, void *arg)
{
    (void)key;
    kv_fut *f = kv_fut_new(arg);
    kv_fut_complete_bytes(f, "p", 1);
    return f;
}

/* Every store call with a NULL store, then with each NULL argument. */
START_TEST(test_null_store_calls)
{
    OPEN(c);
    kv_store *s = c->s;
    kv_key *a = K(c, "/a");
    const kv_key *ka[1] = {a};
    kv_record ra[1] = {{a, "v", 1, 0}};
    kv_query q = kv_query_init(a);

    /* a NULL store: every call still returns a future, failed KV_EINVAL */
    EXPECT(kv_has(NULL, a), KV_EINVAL);
    EXPECT(kv_has_many(NULL, ka, 1), KV_EINVAL);
    EXPECT(kv_get(NULL, a, NULL), KV_EINVAL);
    EXPECT(kv_get_many(NULL, ka, 1, NULL), KV_EINVAL);
    EXPECT(kv_put(NULL, ra, NULL), KV_EINVAL);
    EXPECT(kv_put_value(NULL, a, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_many(NULL, ra, 1, NULL), KV_EINVAL);
    EXPECT(kv_delete(NULL, a, 1), KV_EINVAL);
    EXPECT(kv_delete_many(NULL, ra, 1), KV_EINVAL);
    EXPECT(kv_put_atomic(NULL, ra, 1, NULL), KV_EINVAL);
    EXPECT(kv_delete_atomic(NULL, ra, 1), KV_EINVAL);
    EXPECT(kv_move_prefix_atomic(NULL, ka, ka, 1), KV_EINVAL);
    EXPECT(kv_drop_prefix(NULL, ka, 1), KV_EINVAL);
    EXPECT(kv_query_open(NULL, &q, NULL), KV_EINVAL);
    EXPECT(kv_try_put(NULL, ra, 1, 3, NULL, NULL, NULL), KV_EINVAL);
    EXPECT(kv_try_delete(NULL, ra, 1, 3, NULL, NULL), KV_EINVAL);
    EXPECT(kv_try_put_atomic(NULL, ra, 1, 3, NULL, NULL, NULL), KV_EINVAL);
    EXPECT(kv_try_delete_atomic(NULL, ra, 1, 3, NULL, NULL), KV_EINVAL);
    EXPECT(kv_get_or_put(NULL, a, prod, c->loop, 3, NULL), KV_EINVAL);
    EXPECT(kv_close(NULL), KV_EINVAL);
    kv_store_free(NULL);
    ck_assert_ptr_null(kv_store_backend(NULL));
    ck_assert(!kv_supports_atomic_batch(NULL));

    /* NULL keys, arrays, records, queries, producers */
    EXPECT(kv_has(s, NULL), KV_EINVAL);
    EXPECT(kv_has_many(s, NULL, 1), KV_EINVAL);
    EXPECT(kv_get(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_get_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_put(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, NULL, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, a, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_put_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_delete(s, NULL, 1), KV_EINVAL);
    EXPECT(kv_delete_many(s, NULL, 1), KV_EINVAL);
    int anull = c->b->atomic != AT_NONE ? KV_EINVAL : KV_ENOTSUP;
    EXPECT(kv_put_atomic(s, NULL, 1, NULL), anull);
    EXPECT(kv_delete_atomic(s, NULL, 1), anull);
    EXPECT(kv_move_prefix_atomic(s, NULL, ka, 1), anull);
    EXPECT(kv_move_prefix_atomic(s, ka, NULL, 1), anull);
    EXPECT(kv_drop_prefix(s, NULL, 1), KV_EINVAL);
    EXPECT(kv_query_open(s, NULL, NULL), KV_EINVAL);
    kv_query qn = kv_query_init(NULL);
    EXPECT(kv_query_open(s, &qn, NULL), KV_EINVAL);
    EXPECT(kv_try_put(s, NULL, 1, 3, NULL, NULL, NULL), KV_EINVAL);
    EXPECT(kv_try_delete(s, NULL, 1, 3, NULL, NULL), KV_EINVAL);
    EXPECT(kv_try_put_atomic(s, NULL, 1, 3, NULL, NULL, NULL), anull);
    EXPECT(kv_try_delete_atomic(s, NULL, 1, 3, NULL, NULL), anull);
    EXPECT(kv_get_or_put(s, NULL, prod, c->loop, 3, NULL), KV_EINVAL);
    EXPECT(kv_get_or_put(s, a, NULL, NULL, 3, NULL), KV_EINVAL);
    /* NULL keys inside records and arrays */
    kv_record rn[2] = {{a, "v", 1, 0}, {NULL, "w", 1, 0}};
    const kv_key *kn[2] = {a, NULL};
    EXPECT(kv_put_many(s, rn, 2, NULL), KV_EINVAL);
    EXPECT(kv_delete_many(s, rn, 2), KV_EINVAL);
    EXPECT(kv_try_put(s, rn, 2, 3, NULL, NULL, NULL), KV_EINVAL);
    EXPECT(kv_has_many(s, kn, 2), KV_EINVAL);
    EXPECT(kv_get_many(s, kn, 2, NULL), KV_EINVAL);
    EXPECT(kv_drop_prefix(s, kn, 2), KV_EINVAL);
    if (c->b->atomic != AT_NONE) {
        EXPECT(kv_put_atomic(s, rn, 2, NULL), KV_EINVAL);
        EXPECT(kv_move_prefix_atomic(s, kn, kn, 2), KV_EINVAL);
    }
    /* a NULL value with a length inside a batch */
    kv_record rv[2] = {{a, "v", 1, 0}, {K(c, "/b"), NULL, 5, 0}};
    EXPECT(kv_put_many(s, rv, 2, NULL), KV_EINVAL);
    /* a codec without the function the call needs */
    kv_codec nocodec = {NULL, NULL, NULL, NULL};
    EXPECT(kv_put_value(s, a, "v", 1, &nocodec), KV_EINVAL);
    EXPECT(kv_get(s, a, &nocodec), KV_EINVAL);
    EXPECT(kv_query_open(s, &q, &nocodec), KV_EINVAL);
    EXPECT(kv_get_or_put(s, a, prod, c->loop, 3, &nocodec), KV_EINVAL);
    /* iterators */
    EXPECT(kv_iter_next(NULL), KV_EINVAL);
    EXPECT(kv_iter_fetch_all(NULL), KV_EINVAL);
    EXPECT(kv_iter_dispose(NULL), KV_EINVAL);
    ck_assert(!kv_iter_finished(NULL));
    kv_iter_free(NULL);

    /* none of that wrote anything */
    GET(c, a, NULL, 0);
    GET(c, K(c, "/b"), NULL, 0);
    ck_assert_uint_eq(query_count(c, K(c, "/"), 0, -1, KV_SORT_ASC), 0);
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Values: empty, 4 GiB, just over the limit                                */
/* ------------------------------------------------------------------------ */

typedef struct sized {
    size_t len;
} sized;

/* An encoder that produces nothing: a zero-length encoding. */
static int enc_empty(const void *obj, kv_buf *out, void *cctx)
{
    (void)obj;
    (void)out;
    (void)cctx;
    return KV_OK;
}

static int dec_len(const void *bytes, size_t len, void **obj, void *cctx)
{
    (void)bytes;
    (void)cctx;
    sized *s = malloc(sizeof *s);
    if (s == NULL)
        return KV_ENOMEM;
    s->len = len;
    *obj = s;
    return KV_OK;
}

static void free_sized(void *obj, void *cctx)
{
    (void)cctx;
    free(obj);
}

START_TEST(test_value_sizes)
{
    OPEN(c);
    kv_key *e = K(c, "/empty"), *e2 = K(c, "/empty2"), *big = K(c, "/big");
    /* zero-length values: with a NULL pointer, and with a real one */
    uint64_t t = PUT(c, e, NULL, 0, 0);
    GET(c, e, "", 0);
    PUT(c, e2, "", 0, 0);
    GET(c, e2, "", 0);
    /* replace a value with an empty one and back */
    t = PUT(c, e, "x", 1, t);
    t = PUT(c, e, NULL, 0, t);
    GET(c, e, "", 0);
    kv_record er = {e, NULL, 0, t};
    kv_fut *f = AWAIT(kv_put_many(c->s, &er, 1, NULL), KV_OK);
    size_t n = 9;
    ck_assert_ptr_null(kv_fut_keys(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    /* a zero-length encoding through a codec */
    kv_codec zc = {enc_empty, dec_len, free_sized, NULL};
    kv_key *z = K(c, "/z");
    sized obj = {0};
    EXPECT(kv_put_value(c->s, z, &obj, 0, &zc), KV_OK);
    f = AWAIT(kv_get(c->s, z, &zc), KV_OK);
    ck_assert_uint_eq(((const sized *)kv_fut_record(f)->val)->len, 0);
    kv_fut_free(f);
    /* empty values in a query, with and without values */
    kv_query q = kv_query_init(K(c, "/"));
    kv_record *rs = query_all(c, &q, &n, KV_OK);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(rs[i].len, 0);
    free_records(rs, n);

    /*
     * 4 GiB and KV_MAX_VALUE_SIZE + 1: KV_EINVAL, and not a byte read (the
     * buffer is 16 bytes: reading past it would crash or trip ASan).
     */
    static const char small[16] = "0123456789abcdef";
    const size_t lens[] = {(size_t)4 << 30, KV_MAX_VALUE_SIZE + 1, SIZE_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t len = lens[i];
        f = AWAIT(kv_put_value(c->s, big, small, len, NULL), KV_EINVAL);
        ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "KV_MAX_VALUE_SIZE"));
        kv_fut_free(f);
        kv_record r2[2] = {{K(c, "/ok"), "x", 1, 0}, {big, (void *)small, len, 0}};
        EXPECT(kv_put_many(c->s, r2, 2, NULL), KV_EINVAL);
        EXPECT(kv_try_put(c->s, r2, 2, 3, NULL, NULL, NULL), KV_EINVAL);
        if (c->b->atomic != AT_NONE)
            EXPECT(kv_put_atomic(c->s, r2, 2, NULL), KV_EINVAL);
        /* the failed batches wrote nothing, not even the valid record */
        GET(c, K(c, "/ok"), NULL, 0);
        GET(c, big, NULL, 0);
    }
    /* a value of a few MiB goes through (no ring or statement limit) */
    size_t mlen = (size_t)3 << 20;
    unsigned char *m = malloc(mlen);
    for (size_t i = 0; i < mlen; i++)
        m[i] = (unsigned char)(i * 131 + (i >> 11));
    PUT(c, big, m, mlen, 0);
    GET(c, big, m, mlen);
    free(m);
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Keys: control bytes, "..", long segments, depth                          */
/* ------------------------------------------------------------------------ */

START_TEST(test_hostile_keys)
{
    OPEN(c);
    /* namespaces as long as the limit allows (KV_NS_MAX_LEN) */
    enum { L = KV_NS_MAX_LEN };
    char *long_a = malloc(L + 2), *long_pct = malloc(L + 2);
    long_a[0] = long_pct[0] = '/';
    memset(long_a + 1, 'a', L);
    memset(long_pct + 1, '%', L); /* escaped three-fold on fs */
    long_a[L + 1] = long_pct[L + 1] = '\0';
    char *long_mix = malloc(L + 64);
    snprintf(long_mix, L + 64, "/pre/%s/post:x", long_a + 1);
    char ctl[64];
    size_t o = 0;
    ctl[o++] = '/';
    for (int b = 1; b < 32; b++)
        if (b != '\t' && b != '\n' && b != '\v' && b != '\f' && b != '\r')
            ctl[o++] = (char)b; /* whitespace would be stripped at the ends */
    ctl[o++] = 0x7f;
    ctl[o++] = '/';
    ctl[o++] = (char)0xff;
    ctl[o++] = (char)0x80;
    ctl[o++] = 'x';
    ctl[o] = '\0';
    const char *paths[] = {
        "/..",          "/../..",      "/../../../../etc/passwd",
        "/.",           "/./x",        "/...",
        "/.hidden",     "/a.kv",       "/a.+/b",
        "/.tmp-1",      "/.lock",      "/.tokens",
        "/%2F",         "/%",          "/a%00b",
        "/f:..",        "/..:..",      "/ \x01 /x",
        "/é/ü:ß",       "/\xc3\x28",   "/a\tb/c d",
        ctl,            long_a,        long_pct,
        long_mix,
        /* Redis shard=key places a key by its first {tag}: empty, open,
         * reversed and repeated tags */
        "/{}",          "/{",          "/}{x}",
        "/{x}/{y}",     "/a{\x01}b:{}",
    };
    size_t np = sizeof paths / sizeof paths[0];
    kv_key **ks = calloc(np, sizeof *ks);
    for (size_t i = 0; i < np; i++) {
        ks[i] = K(c, paths[i]);
        char val[32];
        int vl = snprintf(val, sizeof val, "v%zu", i);
        PUT(c, ks[i], val, (size_t)vl, 0);
    }
    for (size_t i = 0; i < np; i++) {
        char val[32];
        int vl = snprintf(val, sizeof val, "v%zu", i);
        GET(c, ks[i], val, (size_t)vl);
    }
    /* a query returns each key exactly, in kv_key_cmp order */
    kv_query q = kv_query_init(K(c, "/"));
    size_t n = 0;
    kv_record *rs = query_all(c, &q, &n, KV_OK);
    ck_assert_uint_eq(n, np);
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            ck_assert_int_lt(kv_key_cmp(rs[i - 1].key, rs[i].key), 0);
        bool found = false;
        for (size_t j = 0; j < np && !found; j++)
            found = kv_key_equal(rs[i].key, ks[j]);
        ck_assert_msg(found, "query returned unknown key %.80s",
                      kv_key_id(rs[i].key));
    }
    free_records(rs, n);
    /* the ".." keys stay inside the store: a prefix query on "/.." */
    ck_assert_uint_eq(query_count(c, K(c, "/.."), 0, -1, KV_SORT_ASC), 3);
    if (c->b->fs) {
        /* nothing was created beside the root */
        struct stat st;
        char p[4300];
        snprintf(p, sizeof p, "%s/etc", tmpdir);
        ck_assert_int_ne(stat(p, &st), 0);
        snprintf(p, sizeof p, "%s/passwd", tmpdir);
        ck_assert_int_ne(stat(p, &st), 0);
    }
    /* delete them all with their tokens */
    for (size_t i = 0; i < np; i++) {
        kv_fut *f = AWAIT(kv_get(c->s, ks[i], NULL), KV_OK);
        uint64_t t = kv_fut_record(f)->token;
        kv_fut_free(f);
        EXPECT(kv_delete(c->s, ks[i], t), KV_OK);
    }
    ck_assert_uint_eq(query_count(c, K(c, "/"), 0, -1, KV_SORT_ASC), 0);
    /* a NUL ends a C string: "/a\0/b" is the key "/a" */
    kv_key *nul = K(c, "/a\0/b");
    ck_assert_str_eq(kv_key_id(nul), "/a");
    /* bytes that are not a key cannot become one */
    kv_key *bad = NULL;
    ck_assert_kv(kv_key_parse(&bad, "/a/b:c:d"), KV_EINVAL);
    ck_assert_kv(kv_key_parse(&bad, "/f::"), KV_EINVAL);
    ck_assert_kv(kv__key_decode(&bad, "a\0\0b\0", 5), KV_ECORRUPT);
    ck_assert_kv(kv__key_decode(&bad, "a\0b", 3), KV_ECORRUPT);
    ck_assert_ptr_null(bad);
    free(ks);
    free(long_a);
    free(long_pct);
    {
        /* one byte over KV_NS_MAX_LEN: KV_EINVAL on every backend */
        char *over = malloc(L + 3);
        over[0] = '/';
        memset(over + 1, 'b', L + 1);
        over[L + 2] = '\0';
        kv_key *ko = K(c, over);
        free(over);
        PUT_FAILS(c, ko, "x", 1, 0, KV_EINVAL);
    }
    free(long_mix);
    ctx_done(c);
}
END_TEST

/* Keys deeper than an fs store's depth; SQLite has no depth limit. */
START_TEST(test_depth)
{
    OPEN_FLAGS(c, 4, 0);
    kv_key *d4 = K(c, "/1/2/3/4"), *d5 = K(c, "/1/2/3/4/5");
    PUT(c, d4, "four", 4, 0);
    int deep = c->b->fs ? KV_EINVAL : KV_OK;
    PUT_FAILS(c, d5, "five", 4, 0, deep);
    EXPECT(kv_get(c->s, d5, NULL), c->b->fs ? KV_EINVAL : KV_OK);
    EXPECT(kv_has(c->s, d5), c->b->fs ? KV_EINVAL : KV_OK);
    kv_query q = kv_query_init(d5);
    kv_fut *f = AWAIT(kv_query_open(c->s, &q, NULL), deep);
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    kv_iter_free(it);
    /* a batch with one key too deep writes nothing on fs */
    kv_record rs[2] = {{K(c, "/x"), "x", 1, 0}, {d5, "y", 1, 0}};
    f = kv_put_many(c->s, rs, 2, NULL);
    ck_assert_int_eq(kv_wait(f), deep);
    kv_fut_free(f);
    if (c->b->fs)
        GET(c, K(c, "/x"), NULL, 0);
    /* a key 1000 namespaces deep: over KV_KEY_MAX_DEPTH, refused by the
     * store layer on every backend */
    char *p = malloc(4000);
    size_t o = 0;
    for (int i = 0; i < 1000; i++)
        o += (size_t)snprintf(p + o, 4000 - o, "/%c", 'a' + i % 26);
    kv_key *d1000 = K(c, p);
    free(p);
    ck_assert_uint_eq(kv_key_len(d1000), 1000);
    PUT_FAILS(c, d1000, "deep", 4, 0, KV_EINVAL);
    EXPECT(kv_get(c->s, d1000, NULL), KV_EINVAL);
    ctx_done(c);

    /* the default depth of an fs store is KV_FS_DEFAULT_DEPTH */
    if (!c->b->fs)
        return;
    OPEN(d);
    char q33[200];
    o = 0;
    for (int i = 0; i <= KV_FS_DEFAULT_DEPTH; i++)
        o += (size_t)snprintf(q33 + o, sizeof q33 - o, "/%d", i % 10);
    kv_key *k33 = K(d, q33);
    kv_key *k32 = NULL;
    ck_assert_kv(kv_key_parent(&k32, k33), KV_OK);
    PUT_FAILS(d, k33, "x", 1, 0, KV_EINVAL);
    PUT(d, k32, "x", 1, 0);
    GET(d, k32, "x", 1);
    kv_key_free(k32);
    ctx_done(d);
}
END_TEST

/* CRC32C (Castagnoli), bit by bit: to forge record headers below. */
static uint32_t crc32c_sw(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
    }
    return ~c;
}

/*
 * fs: a record file whose header is intact (CRC and all) but announces an
 * absurd value length must read as KV_ECORRUPT, without allocating what
 * the header claims (1 TiB would fail KV_ENOMEM, or worse, be zeroed).
 */
START_TEST(test_fs_forged_length)
{
    if (!backends[_i].fs)
        return;
    OPEN_FLAGS(c, 0, KV_FS_NO_FSYNC);
    kv_key *h = K(c, "/h");
    unsigned char val[8000];
    memset(val, 'v', sizeof val);
    PUT(c, h, val, sizeof val, 0);
    char file[8192];
    snprintf(file, sizeof file, "%s/h.kv", c->path);
    const uint64_t claims[] = {(uint64_t)1 << 40, (uint64_t)KV_MAX_VALUE_SIZE + 1,
                               UINT64_MAX};
    for (size_t i = 0; i < sizeof claims / sizeof claims[0]; i++) {
        FILE *fp = fopen(file, "r+b");
        ck_assert_ptr_nonnull(fp);
        unsigned char hdr[40];
        ck_assert_uint_eq(fread(hdr, 1, 40, fp), 40);
        for (int b = 0; b < 8; b++)
            hdr[16 + b] = (unsigned char)(claims[i] >> (8 * b));
        uint32_t crc = crc32c_sw(hdr, 36);
        for (int b = 0; b < 4; b++)
            hdr[36 + b] = (unsigned char)(crc >> (8 * b));
        ck_assert_int_eq(fseek(fp, 0, SEEK_SET), 0);
        ck_assert_uint_eq(fwrite(hdr, 1, 40, fp), 40);
        ck_assert_int_eq(fclose(fp), 0);
        EXPECT(kv_get(c->s, h, NULL), KV_ECORRUPT);
        EXPECT(kv_has(c->s, h), KV_ECORRUPT);
        kv_query q = kv_query_init(h);
        size_t n;
        kv_record *r = query_all_status(c, &q, &n, KV_ECORRUPT);
        free_records(r, n);
        q.value = false;
        r = query_all_status(c, &q, &n, KV_ECORRUPT);
        free_records(r, n);
    }
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Tokens                                                                   */
/* ------------------------------------------------------------------------ */

START_TEST(test_tokens)
{
    OPEN(c);
    kv_key *a = K(c, "/a"), *missing = K(c, "/missing");
    /* (UINT64_MAX is KV_TOKEN_ANY, unconditional: the conformance suite's
     * records and batches groups test it.) */
    const uint64_t odd[] = {1, (uint64_t)INT64_MAX, (uint64_t)INT64_MAX + 1,
                            UINT64_MAX - 2, UINT64_MAX - 1};
    size_t nodd = sizeof odd / sizeof odd[0];
    /* on a missing key every token but 0 conflicts (put), and every token
     * conflicts (delete) */
    for (size_t i = 0; i < nodd; i++) {
        PUT_FAILS(c, missing, "x", 1, odd[i], KV_ECONFLICT);
        EXPECT(kv_delete(c->s, missing, odd[i]), KV_ECONFLICT);
    }
    EXPECT(kv_delete(c->s, missing, 0), KV_ECONFLICT);
    GET(c, missing, NULL, 0);
    /* an existing record: only its own token matches */
    uint64_t t = PUT(c, a, "one", 3, 0);
    t = PUT(c, a, "two", 3, t); /* t is now > 1: tokens never repeat */
    ck_assert_uint_gt(t, 1);
    PUT_FAILS(c, a, "x", 1, 0, KV_ECONFLICT);
    EXPECT(kv_delete(c->s, a, 0), KV_ECONFLICT);
    for (size_t i = 0; i < nodd; i++) {
        if (odd[i] == t)
            continue;
        PUT_FAILS(c, a, "x", 1, odd[i], KV_ECONFLICT);
        EXPECT(kv_delete(c->s, a, odd[i]), KV_ECONFLICT);
    }
    GET(c, a, "two", 3);
    /* the same tokens in batches: skipped, nothing else touched */
    kv_record rs[5];
    for (size_t i = 0; i < nodd; i++) {
        char p[16];
        snprintf(p, sizeof p, "/b%zu", i);
        rs[i] = (kv_record){K(c, p), "b", 1, odd[i]};
    }
    kv_fut *f = AWAIT(kv_put_many(c->s, rs, nodd, NULL), KV_OK);
    size_t n = 0;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, nodd);
    kv_fut_free(f);
    f = AWAIT(kv_delete_many(c->s, rs, nodd), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, nodd);
    kv_fut_free(f);
    if (c->b->atomic == AT_ALL) {
        kv_record ar[2] = {{K(c, "/c"), "c", 1, 0}, {a, "x", 1, UINT64_MAX - 1}};
        f = AWAIT(kv_put_atomic(c->s, ar, 2, NULL), KV_OK);
        const kv_key *const *conf = kv_fut_keys(f, &n);
        ck_assert_uint_eq(n, 1);
        ck_assert(kv_key_equal(conf[0], a));
        kv_fut_free(f);
        GET(c, K(c, "/c"), NULL, 0);
        f = AWAIT(kv_delete_atomic(c->s, ar + 1, 1), KV_OK);
        kv_fut_keys(f, &n);
        ck_assert_uint_eq(n, 1);
        kv_fut_free(f);
    } else if (c->b->atomic == AT_SLOT) {
        /* /c and /a lie in different hash slots: KV_ENOTSUP naming both,
         * nothing written */
        kv_record ar[2] = {{K(c, "/c"), "c", 1, 0}, {a, "x", 1, UINT64_MAX - 1}};
        f = AWAIT(kv_put_atomic(c->s, ar, 2, NULL), KV_ENOTSUP);
        ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/c"));
        ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/a"));
        kv_fut_free(f);
        EXPECT(kv_delete_atomic(c->s, ar, 2), KV_ENOTSUP);
        GET(c, K(c, "/c"), NULL, 0);
        /* one key, or keys sharing a {tag}: the tokens as on SQLite */
        f = AWAIT(kv_put_atomic(c->s, ar + 1, 1, NULL), KV_OK);
        const kv_key *const *conf = kv_fut_keys(f, &n);
        ck_assert_uint_eq(n, 1);
        ck_assert(kv_key_equal(conf[0], a));
        kv_fut_free(f);
        kv_key *tc = K(c, "/{t}c"), *ta = K(c, "/{t}a");
        uint64_t tt = PUT(c, ta, "ta", 2, 0);
        for (size_t i = 0; i < nodd; i++) {
            if (odd[i] == tt)
                continue;
            kv_record tr2[2] = {{tc, "c", 1, 0}, {ta, "x", 1, odd[i]}};
            f = AWAIT(kv_put_atomic(c->s, tr2, 2, NULL), KV_OK);
            conf = kv_fut_keys(f, &n);
            ck_assert_uint_eq(n, 1);
            ck_assert(kv_key_equal(conf[0], ta));
            kv_fut_free(f);
            f = AWAIT(kv_delete_atomic(c->s, tr2 + 1, 1), KV_OK);
            kv_fut_keys(f, &n);
            ck_assert_uint_eq(n, 1);
            kv_fut_free(f);
        }
        GET(c, tc, NULL, 0);
        GET(c, ta, "ta", 2);
        EXPECT(kv_delete(c->s, ta, tt), KV_OK);
    }
    /* the helpers give up cleanly */
    kv_record tr = {a, "x", 1, UINT64_MAX - 1};
    f = AWAIT(kv_try_put(c->s, &tr, 1, 2, NULL, NULL, NULL), KV_EMAXRETRIES);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 1);
    kv_fut_free(f);
    EXPECT(kv_try_delete(c->s, &tr, 1, 2, NULL, NULL), KV_EMAXRETRIES);
    GET(c, a, "two", 3);
    EXPECT(kv_delete(c->s, a, t), KV_OK);
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Queries: offsets, limits, sort                                           */
/* ------------------------------------------------------------------------ */

START_TEST(test_query_bounds)
{
    OPEN(c);
    kv_key *root = K(c, "/");
    kv_record rs[5];
    const char *ids[5] = {"/q/1", "/q/2", "/q/3", "/q/4", "/q/5"};
    for (int i = 0; i < 5; i++)
        rs[i] = (kv_record){K(c, ids[i]), "v", 1, 0};
    EXPECT(kv_put_many(c->s, rs, 5, NULL), KV_OK);
    /* negative offsets, limits below -1, unknown sorts: KV_EINVAL */
    const int64_t bad_off[] = {-1, -2, INT64_MIN};
    const int64_t bad_lim[] = {-2, -100, INT64_MIN};
    kv_query q = kv_query_init(root);
    size_t n;
    for (size_t i = 0; i < 3; i++) {
        q = kv_query_init(root);
        q.offset = bad_off[i];
        query_all(c, &q, &n, KV_EINVAL);
        q = kv_query_init(root);
        q.limit = bad_lim[i];
        query_all(c, &q, &n, KV_EINVAL);
    }
    q = kv_query_init(root);
    q.sort = (kv_sort)3;
    query_all(c, &q, &n, KV_EINVAL);
    q.sort = (kv_sort)-1;
    query_all(c, &q, &n, KV_EINVAL);
    /* extremes that are valid */
    ck_assert_uint_eq(query_count(c, root, 0, -1, KV_SORT_ASC), 5);
    ck_assert_uint_eq(query_count(c, root, 0, 0, KV_SORT_ASC), 0);
    ck_assert_uint_eq(query_count(c, root, 0, INT64_MAX, KV_SORT_ASC), 5);
    ck_assert_uint_eq(query_count(c, root, INT64_MAX, -1, KV_SORT_ASC), 0);
    ck_assert_uint_eq(query_count(c, root, INT64_MAX, INT64_MAX, KV_SORT_DESC),
                      0);
    ck_assert_uint_eq(query_count(c, root, 4, INT64_MAX, KV_SORT_DESC), 1);
    ck_assert_uint_eq(query_count(c, root, 2, 2, KV_SORT_NONE), 2);
    ck_assert_uint_eq(query_count(c, root, 5, 1, KV_SORT_ASC), 0);
    /* INT64_MAX - 1 + 2 would overflow a naive offset + limit */
    ck_assert_uint_eq(query_count(c, root, INT64_MAX - 1, 2, KV_SORT_ASC), 0);
    ck_assert_uint_eq(query_count(c, root, 1, INT64_MAX, KV_SORT_ASC), 4);
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Batches of 0 and 100,000                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(test_batch_zero)
{
    OPEN(c);
    kv_store *s = c->s;
    kv_record r[1] = {{K(c, "/a"), "v", 1, 0}};
    const kv_key *k[1] = {r[0].key};
    size_t n = 9;
    kv_fut *f = AWAIT(kv_put_many(s, r, 0, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_keys(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    EXPECT(kv_delete_many(s, r, 0), KV_OK);
    EXPECT(kv_has_many(s, k, 0), KV_OK);
    f = AWAIT(kv_get_many(s, k, 0, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    EXPECT(kv_drop_prefix(s, k, 0), KV_OK);
    EXPECT(kv_try_put(s, r, 0, 3, NULL, NULL, NULL), KV_OK);
    EXPECT(kv_try_delete(s, r, 0, 3, NULL, NULL), KV_OK);
    int at = c->b->atomic != AT_NONE ? KV_OK : KV_ENOTSUP;
    EXPECT(kv_put_atomic(s, r, 0, NULL), at);
    EXPECT(kv_delete_atomic(s, r, 0), at);
    EXPECT(kv_move_prefix_atomic(s, k, k, 0), at);
    EXPECT(kv_try_put_atomic(s, r, 0, 3, NULL, NULL, NULL), at);
    /* max_retries 0 on an empty batch still fails KV_EMAXRETRIES */
    EXPECT(kv_try_put(s, r, 0, 0, NULL, NULL, NULL), KV_EMAXRETRIES);
    GET(c, r[0].key, NULL, 0);
    ctx_done(c);
}
END_TEST

static size_t env_size(const char *name, size_t dflt)
{
    const char *v = getenv(name);
    if (v == NULL || v[0] == '\0')
        return dflt;
    long long x = atoll(v);
    return x > 0 ? (size_t)x : dflt;
}

START_TEST(test_batch_large)
{
    /*
     * A descriptor limit far below the batch size (this test runs in its
     * own process): a backend must not open a file per record at once.
     */
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur > 512) {
        rl.rlim_cur = 512;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    /* fs: KV_FS_NO_FSYNC (a file per record) */
    OPEN_FLAGS(c, 0, backends[_i].fs ? KV_FS_NO_FSYNC : 0);
    size_t n = c->b->fs            ? env_size("KVT_FS_BATCH", 20000)
               : c->b->env != NULL ? env_size("KVT_REDIS_BATCH", 20000)
                                   : env_size("KVT_BATCH", 100000);
    kv_record *rs = calloc(n, sizeof *rs);
    const kv_key **ks = calloc(n, sizeof *ks);
    char (*vals)[16] = calloc(n, sizeof *vals);
    for (size_t i = 0; i < n; i++) {
        char p[48];
        /* two levels so the fs directories stay reasonable */
        snprintf(p, sizeof p, "/big/d%03zu/k%07zu", i % 100, i);
        ck_assert_kv(kv_key_parse(&rs[i].key, p), KV_OK);
        ks[i] = rs[i].key;
        int vl = snprintf(vals[i], sizeof vals[i], "v%zu", i);
        rs[i].val = vals[i];
        rs[i].len = (size_t)vl;
    }
    /* a duplicate at the very end: KV_EDUPLICATE, nothing written */
    kv_key *dup = NULL;
    ck_assert_kv(kv_key_dup(&dup, rs[0].key), KV_OK);
    kv_key *last = rs[n - 1].key;
    rs[n - 1].key = dup;
    EXPECT(kv_put_many(c->s, rs, n, NULL), KV_EDUPLICATE);
    rs[n - 1].key = last;
    kv_key_free(dup);
    ck_assert_uint_eq(query_count(c, K(c, "/big"), 0, 1, KV_SORT_ASC), 0);

    kv_fut *f = AWAIT(kv_put_many(c->s, rs, n, NULL), KV_OK);
    size_t m = 99;
    ck_assert_ptr_null(kv_fut_keys(f, &m));
    ck_assert_uint_eq(m, 0);
    kv_fut_free(f);
    /* all there: get_many returns each with its value and token */
    f = AWAIT(kv_get_many(c->s, ks, n, NULL), KV_OK);
    const kv_record *got = kv_fut_records(f, &m);
    ck_assert_uint_eq(m, n);
    for (size_t i = 0; i < m; i++) {
        ck_assert_uint_ne(got[i].token, 0);
        const char *id = kv_key_id(got[i].key);
        size_t num = (size_t)strtoull(strrchr(id, 'k') + 1, NULL, 10);
        ck_assert_uint_lt(num, n);
        ck_assert_uint_eq(got[i].len, strlen(vals[num]));
        ck_assert(memcmp(got[i].val, vals[num], got[i].len) == 0);
        rs[num].token = got[i].token;
    }
    kv_fut_free(f);
    f = AWAIT(kv_has_many(c->s, ks, n), KV_OK);
    kv_fut_keys(f, &m);
    ck_assert_uint_eq(m, n);
    kv_fut_free(f);
    ck_assert_uint_eq(query_count(c, K(c, "/big"), 0, -1, KV_SORT_ASC), n);
    /* inserting again: every one is skipped, none changes */
    uint64_t *toks = calloc(n, sizeof *toks);
    for (size_t i = 0; i < n; i++) {
        toks[i] = rs[i].token;
        ck_assert_uint_ne(toks[i], 0);
        rs[i].token = 0;
        rs[i].val = "again";
        rs[i].len = 5;
    }
    f = AWAIT(kv_put_many(c->s, rs, n, NULL), KV_OK);
    kv_fut_keys(f, &m);
    ck_assert_uint_eq(m, n);
    kv_fut_free(f);
    GET(c, rs[n / 2].key, vals[n / 2], strlen(vals[n / 2]));
    for (size_t i = 0; i < n; i++)
        rs[i].token = toks[i];
    free(toks);
    /* delete them all with their tokens */
    f = AWAIT(kv_delete_many(c->s, rs, n), KV_OK);
    kv_fut_keys(f, &m);
    ck_assert_uint_eq(m, 0);
    kv_fut_free(f);
    ck_assert_uint_eq(query_count(c, K(c, "/big"), 0, -1, KV_SORT_ASC), 0);
    if (c->b->atomic == AT_SLOT && n > 1) {
        /* keys in many hash slots: KV_ENOTSUP, nothing written */
        for (size_t i = 0; i < n; i++)
            rs[i].token = 0;
        EXPECT(kv_put_atomic(c->s, rs, n, NULL), KV_ENOTSUP);
        ck_assert_uint_eq(query_count(c, K(c, "/big"), 0, 1, KV_SORT_ASC), 0);
    } else if (c->b->atomic != AT_NONE) {
        for (size_t i = 0; i < n; i++)
            rs[i].token = 0;
        f = AWAIT(kv_put_atomic(c->s, rs, n, NULL), KV_OK);
        kv_fut_keys(f, &m);
        ck_assert_uint_eq(m, 0);
        kv_fut_free(f);
        ck_assert_uint_eq(query_count(c, K(c, "/big"), n - 10, -1,
                                      KV_SORT_DESC),
                          10);
        const kv_key *bigk[1] = {K(c, "/big")};
        EXPECT(kv_drop_prefix(c->s, bigk, 1), KV_OK);
    }
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "%s: batch of %zu records\n", c->b->name, n);
    for (size_t i = 0; i < n; i++)
        kv_key_free(rs[i].key);
    free(rs);
    free(ks);
    free(vals);
    ctx_done(c);
}
END_TEST

/* ------------------------------------------------------------------------ */

static Suite *hostile_suite(void)
{
    Suite *s = suite_create("hostile");
    TCase *tc = tcase_create("null");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_null_engine_and_keys);
    tcase_add_test(tc, test_null_open);
    tcase_add_test(tc, test_hostile_uris);
    tcase_add_loop_test(tc, test_null_store_calls, 0, NBACKENDS);
    suite_add_tcase(s, tc);

    tc = tcase_create("input");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_value_sizes, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_hostile_keys, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_depth, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_fs_forged_length, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_tokens, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_query_bounds, 0, NBACKENDS);
    suite_add_tcase(s, tc);

    tc = tcase_create("batches");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_batch_zero, 0, NBACKENDS);
    tcase_add_loop_test(tc, test_batch_large, 0, NBACKENDS);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(hostile_suite());
}
