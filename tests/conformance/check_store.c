/*
 * check_store.c - the store conformance suite.
 *
 * Every behaviour of the store API (include/kvstore.h, API.md) is one
 * START_TEST, run against every backend in the backends[] table with
 * tcase_add_loop_test.  A new backend is tested by adding one row.
 *
 * Rows: the real backends, plus "model" and "model-noatomic": a small
 * in-memory reference backend written here against the backend contract
 * (internal.h), which pins the store layer's own behaviour independently of
 * any real backend and covers a backend without atomic batches.
 *
 * Each test makes a loop and a pool, opens its store in the fixture's
 * mkdtemp directory, runs, closes, frees the store and checks that the loop
 * frees cleanly (nothing live: catches leaked futures and requests).
 * KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "store/store_int.h"
#include "testutil.h"

#include <inttypes.h>
#include <pthread.h>

/* ======================================================================== */
/* The model backend                                                        */
/* ======================================================================== */

typedef struct mentry {
    kv_key *key;
    void *val;
    size_t len;
    uint64_t token;
} mentry;

typedef struct mcursor {
    struct mcursor *next, *prev;
    mentry *rows;
    size_t n, pos;
} mcursor;

typedef struct model {
    mentry *e;
    size_t n, cap;
    uint64_t tokens;
    size_t jobs;
    kv__req *close_req;
    mcursor *cursors;
} model;

typedef struct mjob {
    kv__job job;
    kv__req *req;
    kv_store *s;
} mjob;

static bool m_under(const kv_key *k, const kv_key *prefix)
{
    return kv_key_len(prefix) == 0 || kv_key_equal(k, prefix) ||
           kv_key_is_descendant(k, prefix);
}

static long m_find(const model *m, const kv_key *k)
{
    for (size_t i = 0; i < m->n; i++)
        if (kv_key_equal(m->e[i].key, k))
            return (long)i;
    return -1;
}

static void m_set(model *m, const kv_key *k, const void *val, size_t len,
                  uint64_t *token)
{
    long i = m_find(m, k);
    if (i < 0) {
        if (m->n == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 16;
            m->e = realloc(m->e, m->cap * sizeof *m->e);
            ck_assert_ptr_nonnull(m->e);
        }
        i = (long)m->n++;
        ck_assert_int_eq(kv_key_dup(&m->e[i].key, k), KV_OK);
    } else {
        free(m->e[i].val);
    }
    m->e[i].val = malloc(len ? len : 1);
    if (len)
        memcpy(m->e[i].val, val, len);
    m->e[i].len = len;
    m->e[i].token = *token = ++m->tokens;
}

static void m_remove(model *m, size_t i)
{
    kv_key_free(m->e[i].key);
    free(m->e[i].val);
    m->e[i] = m->e[--m->n];
}

static bool m_put_ok(const model *m, const kv__item *it)
{
    long i = m_find(m, it->key);
    return it->token == 0 ? i < 0 : (i >= 0 && m->e[i].token == it->token);
}

static bool m_del_ok(const model *m, const kv__item *it)
{
    long i = m_find(m, it->key);
    return it->token != 0 && i >= 0 && m->e[i].token == it->token;
}

static int m_cmp_asc(const void *a, const void *b)
{
    return kv_key_cmp(((const mentry *)a)->key, ((const mentry *)b)->key);
}

static void m_cursor_free(model *m, mcursor *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        m->cursors = c->next;
    if (c->next)
        c->next->prev = c->prev;
    for (size_t i = 0; i < c->n; i++) {
        kv_key_free(c->rows[i].key);
        free(c->rows[i].val);
    }
    free(c->rows);
    free(c);
}

static int m_move(model *m, kv__req *req)
{
    /* Plan every rename, then check collisions, then apply. */
    size_t *src = calloc(m->n + 1, sizeof *src);
    kv_key **dst = calloc(m->n + 1, sizeof *dst);
    size_t np = 0;
    int rc = KV_OK;
    for (size_t i = 0; i < m->n; i++) {
        for (size_t j = 0; j < req->n; j++) {
            if (m_under(m->e[i].key, req->items[j].key)) {
                kv_key *rel = NULL;
                ck_assert_int_eq(
                    kv_key_relative(&rel, m->e[i].key, req->items[j].key),
                    KV_OK);
                ck_assert_int_eq(
                    kv_key_child_key(&dst[np], req->items[j].key2, rel),
                    KV_OK);
                kv_key_free(rel);
                src[np++] = i;
                break;
            }
        }
    }
    for (size_t p = 0; p < np && rc == KV_OK; p++) {
        long d = m_find(m, dst[p]);
        if (d < 0)
            continue;
        bool moving = false;
        for (size_t q = 0; q < np; q++)
            moving |= src[q] == (size_t)d;
        if (!moving)
            rc = KV_ECONFLICT;
    }
    for (size_t p = 0; p < np; p++) {
        if (rc == KV_OK) {
            kv_key_free(m->e[src[p]].key);
            m->e[src[p]].key = dst[p];
            m->e[src[p]].token = ++m->tokens;
        } else {
            kv_key_free(dst[p]);
        }
    }
    free(src);
    free(dst);
    return rc;
}

static int m_exec(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    kv__item *it = req->items;
    bool any = false;
    switch (req->op) {
    case KV__OP_HAS:
    case KV__OP_GET:
        for (size_t i = 0; i < req->n; i++) {
            long k = m_find(m, it[i].key);
            it[i].status = k < 0 ? KV_ENOTFOUND : KV_OK;
            if (k < 0)
                continue;
            it[i].token = m->e[k].token;
            if (req->op == KV__OP_GET && req->want_value) {
                it[i].val = kv__memdup(m->e[k].val, m->e[k].len);
                it[i].len = m->e[k].len;
            }
        }
        return KV_OK;
    case KV__OP_PUT:
        for (size_t i = 0; i < req->n; i++) {
            it[i].status = m_put_ok(m, &it[i]) ? KV_OK : KV_ECONFLICT;
            if (it[i].status == KV_OK)
                m_set(m, it[i].key, it[i].val, it[i].len, &it[i].token);
        }
        return KV_OK;
    case KV__OP_DELETE:
        for (size_t i = 0; i < req->n; i++) {
            it[i].status = m_del_ok(m, &it[i]) ? KV_OK : KV_ECONFLICT;
            if (it[i].status == KV_OK)
                m_remove(m, (size_t)m_find(m, it[i].key));
        }
        return KV_OK;
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
        for (size_t i = 0; i < req->n; i++) {
            bool ok = req->op == KV__OP_PUT_ATOMIC ? m_put_ok(m, &it[i])
                                                   : m_del_ok(m, &it[i]);
            it[i].status = ok ? KV_OK : KV_ECONFLICT;
            any |= !ok;
        }
        for (size_t i = 0; i < req->n && !any; i++) {
            if (req->op == KV__OP_PUT_ATOMIC)
                m_set(m, it[i].key, it[i].val, it[i].len, &it[i].token);
            else
                m_remove(m, (size_t)m_find(m, it[i].key));
        }
        return KV_OK;
    case KV__OP_MOVE:
        return m_move(m, req);
    case KV__OP_DROP:
        for (size_t j = 0; j < req->n; j++)
            for (size_t i = m->n; i-- > 0;)
                if (m_under(m->e[i].key, it[j].key))
                    m_remove(m, i);
        return KV_OK;
    case KV__OP_QUERY_OPEN: {
        const kv_query *q = &req->iter->q;
        mcursor *c = calloc(1, sizeof *c);
        c->rows = calloc(m->n + 1, sizeof *c->rows);
        for (size_t i = 0; i < m->n; i++) {
            if (!m_under(m->e[i].key, q->key))
                continue;
            mentry *r = &c->rows[c->n++];
            ck_assert_int_eq(kv_key_dup(&r->key, m->e[i].key), KV_OK);
            r->val = malloc(m->e[i].len + 1);
            memcpy(r->val, m->e[i].val, m->e[i].len);
            r->len = m->e[i].len;
            r->token = m->e[i].token;
        }
        if (q->sort != KV_SORT_NONE)
            qsort(c->rows, c->n, sizeof *c->rows, m_cmp_asc);
        if (q->sort == KV_SORT_DESC)
            for (size_t i = 0; i < c->n / 2; i++) {
                mentry t = c->rows[i];
                c->rows[i] = c->rows[c->n - 1 - i];
                c->rows[c->n - 1 - i] = t;
            }
        /* offset and limit: skip and cut (freeing the rows cut). */
        size_t off = (size_t)q->offset < c->n ? (size_t)q->offset : c->n;
        size_t end = c->n;
        if (q->limit >= 0 && (size_t)q->limit < end - off)
            end = off + (size_t)q->limit;
        for (size_t i = 0; i < c->n; i++) {
            if (i < off || i >= end) {
                kv_key_free(c->rows[i].key);
                free(c->rows[i].val);
                c->rows[i].key = NULL;
                c->rows[i].val = NULL;
            }
        }
        memmove(c->rows, c->rows + off, (end - off) * sizeof *c->rows);
        c->n = end - off;
        c->next = m->cursors;
        if (m->cursors)
            m->cursors->prev = c;
        m->cursors = c;
        req->iter->bpriv = c;
        return KV_OK;
    }
    case KV__OP_ITER_FETCH: {
        mcursor *c = req->iter->bpriv;
        ck_assert_ptr_nonnull(c);
        size_t k = c->n - c->pos < 3 ? c->n - c->pos : 3; /* small chunks */
        req->items = kv__items_new(k);
        req->n = k;
        for (size_t i = 0; i < k; i++, c->pos++) {
            mentry *r = &c->rows[c->pos];
            ck_assert_int_eq(kv_key_dup(&req->items[i].key, r->key), KV_OK);
            if (req->want_value) {
                req->items[i].val = kv__memdup(r->val, r->len);
                req->items[i].len = r->len;
            }
            req->items[i].token = r->token;
        }
        req->eof = c->pos == c->n;
        return KV_OK;
    }
    case KV__OP_ITER_DISPOSE:
        if (req->iter->bpriv != NULL)
            m_cursor_free(m, req->iter->bpriv);
        req->iter->bpriv = NULL;
        return KV_OK;
    default:
        return KV_EINVAL;
    }
}

static void m_work(kv__job *job)
{
    (void)job;
}

static void m_done(kv__job *job, int status)
{
    mjob *j = (mjob *)job;
    kv_store *s = j->s;
    model *m = s->backend;
    kv__req *req = j->req;
    free(j);
    m->jobs--;
    if (req != NULL) {
        req->bpriv = NULL;
        if (status != KV_OK || m->close_req != NULL) /* cancelled, closing */
            kv__req_done(req, KV_ECANCELED, NULL);
        else {
            int rc = m_exec(s, req);
            kv__req_done(req, rc, rc == KV_OK ? NULL : "model: %s",
                         kv_strerror(rc));
        }
    }
    if (m->close_req != NULL && m->jobs == 0) {
        kv__req *cr = m->close_req;
        m->close_req = NULL;
        kv__req_done(cr, KV_OK, NULL);
    }
}

static void m_queue(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    mjob *j = calloc(1, sizeof *j);
    j->job.work = m_work;
    j->job.done = m_done;
    j->req = req;
    j->s = s;
    if (req != NULL)
        req->bpriv = j;
    m->jobs++;
    kv__pool_submit(s->pool, s->loop, &j->job);
}

static void m_submit(kv_store *s, kv__req *req)
{
    m_queue(s, req);
}

static void m_cancel(kv_store *s, kv__req *req)
{
    mjob *j = req->bpriv;
    if (j != NULL)
        kv__pool_cancel(s->pool, &j->job);
}

static void m_close(kv_store *s, kv__req *req)
{
    model *m = s->backend;
    while (m->cursors != NULL)
        m_cursor_free(m, m->cursors);
    m->close_req = req;
    m_queue(s, NULL); /* completes the close after every other job */
}

static void m_destroy(kv_store *s)
{
    model *m = s->backend;
    while (m->n > 0)
        m_remove(m, m->n - 1);
    free(m->e);
    free(m);
}

static const struct kv_backend_ops model_ops = {
    KV__BACKEND_VERSION, "model", true, m_submit, m_cancel, m_close, m_destroy,
};
static const struct kv_backend_ops model_noatomic_ops = {
    KV__BACKEND_VERSION, "model", false, m_submit, m_cancel, m_close, m_destroy,
};

static int open_model_ops(kv_store **out, kv_loop *loop, kv_pool *pool,
                          unsigned flags, const struct kv_backend_ops *ops)
{
    model *m = calloc(1, sizeof *m);
    int rc = kv__store_new(out, ops, m, loop, pool, flags);
    if (rc != KV_OK)
        free(m);
    return rc;
}

/* ======================================================================== */
/* Backend table                                                            */
/* ======================================================================== */

static int open_model(kv_store **out, kv_loop *loop, kv_pool *pool,
                      const char *dir, unsigned flags)
{
    (void)dir;
    return open_model_ops(out, loop, pool, flags, &model_ops);
}

static int open_model_noatomic(kv_store **out, kv_loop *loop, kv_pool *pool,
                               const char *dir, unsigned flags)
{
    (void)dir;
    return open_model_ops(out, loop, pool, flags, &model_noatomic_ops);
}

static int open_sqlite_memory(kv_store **out, kv_loop *loop, kv_pool *pool,
                              const char *dir, unsigned flags)
{
    (void)dir;
    return kv_sqlite_open(out, loop, pool, KV_SQLITE_MEMORY, flags);
}

static int open_sqlite_file(kv_store **out, kv_loop *loop, kv_pool *pool,
                            const char *dir, unsigned flags)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/store.sqlite", dir);
    return kv_sqlite_open(out, loop, pool, path, flags);
}

static int open_fs(kv_store **out, kv_loop *loop, kv_pool *pool,
                   const char *dir, unsigned flags)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/fs", dir);
    return kv_fs_open(out, loop, pool, path, 0, flags);
}

/* The fs backend in the fan-out layout (KV_FS_FANOUT, kept on reopen). */
static int open_fs_fanout(kv_store **out, kv_loop *loop, kv_pool *pool,
                          const char *dir, unsigned flags)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/fs", dir);
    return kv_fs_open(out, loop, pool, path, 0, flags | KV_FS_FANOUT);
}

/*
 * Redis rows: the servers come from tests/redis_env.sh (KV_TEST_REDIS,
 * KV_TEST_REDIS_CLUSTER); each test's store gets its own key prefix, the
 * name of its temporary directory, so a reopen sees the same data.
 */
static int open_redis_env(kv_store **out, kv_loop *loop, kv_pool *pool,
                          const char *dir, unsigned flags, const char *env,
                          const char *opts)
{
    const char *uri = getenv(env);
    const char *base = strrchr(dir, '/');
    char full[4400];
    snprintf(full, sizeof full, "%s/%s%s", uri ? uri : "redis://127.0.0.1:1",
             base ? base + 1 : dir, opts);
    return kv_redis_open(out, loop, pool, full, flags);
}

static int open_redis(kv_store **out, kv_loop *loop, kv_pool *pool,
                      const char *dir, unsigned flags)
{
    return open_redis_env(out, loop, pool, dir, flags, "KV_TEST_REDIS", "");
}

static int open_redis_cluster(kv_store **out, kv_loop *loop, kv_pool *pool,
                              const char *dir, unsigned flags)
{
    return open_redis_env(out, loop, pool, dir, flags, "KV_TEST_REDIS_CLUSTER",
                          "?shard=store");
}

typedef struct backend {
    const char *name;
    int (*open)(kv_store **out, kv_loop *loop, kv_pool *pool, const char *dir,
                unsigned flags);
    bool reopenable; /* data survives close and reopen */
    bool shared;     /* several stores may open the same data at once */
    const char *env; /* skipped unless this variable is set (servers) */
} backend;

static const backend backends[] = {
    {"sqlite-memory", open_sqlite_memory, false, false, NULL},
    {"sqlite-file", open_sqlite_file, true, true, NULL},
    {"fs", open_fs, true, false, NULL},
    {"fs-fanout", open_fs_fanout, true, false, NULL},
    {"model", open_model, false, false, NULL},
    {"model-noatomic", open_model_noatomic, false, false, NULL},
    {"redis", open_redis, true, true, "KV_TEST_REDIS"},
    {"redis-cluster", open_redis_cluster, true, true, "KV_TEST_REDIS_CLUSTER"},
};
#define NBACKENDS ((int)(sizeof backends / sizeof backends[0]))

/* ======================================================================== */
/* Harness                                                                  */
/* ======================================================================== */

static char *tmpdir;

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
}

static void teardown(void)
{
    tu_tmpdir_free(&tmpdir);
}

#define MAXKEYS 4096

typedef struct tctx {
    const backend *b;
    kv_loop *loop;
    kv_pool *pool;
    kv_store *s;
    kv_key *keys[MAXKEYS];
    size_t nkeys;
} tctx;

static bool ctx_init(tctx *c, int i)
{
    memset(c, 0, sizeof *c);
    c->b = &backends[i];
    const char *only = getenv("KVT_BACKEND");
    if (only != NULL && only[0] != '\0' && strcmp(only, c->b->name) != 0)
        return false;
    if (c->b->env != NULL && getenv(c->b->env) == NULL)
        return false; /* no server: skipped */
    ck_assert_kv(kv_loop_new(&c->loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&c->pool, 2), KV_OK);
    int rc = c->b->open(&c->s, c->loop, c->pool, tmpdir, 0);
    ck_assert_msg(rc == KV_OK, "%s: open: %s (%s)", c->b->name,
                  kv_err_name(rc), kv_last_errmsg());
    return true;
}

#define OPEN(c)                                                                \
    tctx c##_storage;                                                          \
    tctx *c = &c##_storage;                                                    \
    if (!ctx_init(c, _i))                                                      \
    return

static void store_close_free(kv_store *s)
{
    kv_fut *f = kv_close(s);
    int rc = kv_wait(f);
    ck_assert_msg(rc == KV_OK, "close: %s (%s)", kv_err_name(rc),
                  kv_fut_errmsg(f));
    kv_fut_free(f);
    kv_store_free(s);
}

/* Close and reopen the store with flags (reopenable backends). */
static void ctx_reopen(tctx *c, unsigned flags)
{
    store_close_free(c->s);
    c->s = NULL;
    int rc = c->b->open(&c->s, c->loop, c->pool, tmpdir, flags);
    ck_assert_msg(rc == KV_OK, "reopen: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
}

static void ctx_done(tctx *c)
{
    if (c->s != NULL)
        store_close_free(c->s);
    c->s = NULL;
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (size_t i = 0; i < c->nkeys; i++)
        kv_key_free(c->keys[i]);
    ck_assert_kv(kv_loop_free(c->loop), KV_OK);
    kv_pool_free(c->pool);
}

/* A key valid until ctx_done. */
static kv_key *K(tctx *c, const char *path)
{
    ck_assert_uint_lt(c->nkeys, MAXKEYS);
    kv_key *k = NULL;
    ck_assert_msg(kv_key_parse(&k, path) == KV_OK, "bad key %s", path);
    c->keys[c->nkeys++] = k;
    return k;
}

static bool val_is(const kv_record *r, const char *s)
{
    return r != NULL && r->len == strlen(s) &&
           (r->len == 0 || memcmp(r->val, s, r->len) == 0);
}

static uint64_t put_(tctx *c, const char *key, const char *val, uint64_t tok,
                     int want, int line)
{
    kv_record r = {K(c, key), (void *)val, strlen(val), tok};
    kv_fut *f = tu_await(kv_put(c->s, &r, NULL), want, "kv_put", line);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    if (want == KV_OK)
        ck_assert_msg(t != 0, "line %d: put returned token 0", line);
    return t;
}
#define PUT(c, key, val, tok) put_((c), (key), (val), (tok), KV_OK, __LINE__)
#define PUT_FAILS(c, key, val, tok, want)                                      \
    put_((c), (key), (val), (tok), (want), __LINE__)

/* Get key: its token, asserting its value (NULL: asserting it is absent). */
static uint64_t get_(tctx *c, const char *key, const char *val, int line)
{
    kv_fut *f = tu_await(kv_get(c->s, K(c, key), NULL),
                        val ? KV_OK : KV_ENOTFOUND, "kv_get", line);
    uint64_t t = 0;
    if (val != NULL) {
        const kv_record *r = kv_fut_record(f);
        ck_assert_msg(val_is(r, val), "line %d: %s: value differs", line,
                      key);
        ck_assert_msg(kv_key_equal(r->key, K(c, key)), "line %d: key", line);
        t = r->token;
        ck_assert_msg(t != 0, "line %d: token 0", line);
    }
    kv_fut_free(f);
    return t;
}
#define GET(c, key, val) get_((c), (key), (val), __LINE__)

static bool has_(tctx *c, const char *key)
{
    kv_fut *f = AWAIT(kv_has(c->s, K(c, key)), KV_OK);
    bool b = kv_fut_bool(f);
    kv_fut_free(f);
    return b;
}

/* Does keys[0..n) hold exactly the ids listed (any order)? */
static bool keys_are(const kv_key *const *keys, size_t n, const char *const *ids,
                     size_t nids)
{
    if (n != nids)
        return false;
    for (size_t i = 0; i < nids; i++) {
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(kv_key_id(keys[j]), ids[i]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static bool fut_keys_are(const kv_fut *f, const char *const *ids, size_t nids)
{
    size_t n = 0;
    const kv_key *const *keys = kv_fut_keys(f, &n);
    return keys_are(keys, n, ids, nids);
}
#define IDS(...) ((const char *const[]){__VA_ARGS__})
#define NIDS(...) (sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))
#define KEYS_ARE(f, ...) fut_keys_are((f), IDS(__VA_ARGS__), NIDS(__VA_ARGS__))

/* Run the whole query with next calls; ids of the results in order. */
static size_t query_ids(tctx *c, const kv_query *q, char ids[][64],
                        size_t max)
{
    kv_fut *of = AWAIT(kv_query_open(c->s, q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    ck_assert_ptr_nonnull(it);
    kv_fut_free(of);
    size_t n = 0;
    for (;;) {
        ck_assert(!kv_iter_finished(it));
        kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
        const kv_record *r = kv_fut_record(f);
        if (r == NULL) {
            kv_fut_free(f);
            break;
        }
        ck_assert_uint_lt(n, max);
        snprintf(ids[n++], 64, "%s", kv_key_id(r->key));
        ck_assert(r->token != 0);
        if (!q->value) {
            ck_assert_ptr_null(r->val);
            ck_assert_uint_eq(r->len, 0);
        }
        kv_fut_free(f);
    }
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_dispose(it), KV_OK);
    kv_iter_free(it);
    return n;
}

/* The ids sorted by kv_key_cmp (the expected ASC order). */
static int cmp_ids(const void *a, const void *b)
{
    kv_key *ka = NULL, *kb = NULL;
    ck_assert_int_eq(kv_key_parse(&ka, *(const char *const *)a), KV_OK);
    ck_assert_int_eq(kv_key_parse(&kb, *(const char *const *)b), KV_OK);
    int r = kv_key_cmp(ka, kb);
    kv_key_free(ka);
    kv_key_free(kb);
    return r;
}

static void put_all(tctx *c, const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        PUT(c, ids[i], ids[i], 0);
}

/* A callback that counts completions (and frees the future). */
typedef struct counted {
    int calls;
    int status;
} counted;

static void on_count(kv_fut *f, void *arg)
{
    counted *n = arg;
    n->calls++;
    n->status = kv_fut_status(f);
    kv_fut_free(f);
}

/* ======================================================================== */
/* Typed records: a codec for "name:age" persons                             */
/* ======================================================================== */

typedef struct person {
    char name[32];
    int age;
} person;

typedef struct pctx {
    int live; /* decoded objects not yet freed */
} pctx;

static int p_encode(const void *obj, kv_buf *out, void *ctx)
{
    (void)ctx;
    const person *p = obj;
    if (p->age < 0)
        return KV_ERROR; /* encode failure on purpose */
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, "%s:%d", p->name, p->age);
    return kv_buf_append(out, tmp, (size_t)n);
}

static int p_decode(const void *bytes, size_t len, void **out, void *ctx)
{
    pctx *pc = ctx;
    char tmp[64];
    if (len >= sizeof tmp || (len >= 3 && memcmp(bytes, "BAD", 3) == 0))
        return KV_ECORRUPT;
    memcpy(tmp, bytes, len);
    tmp[len] = '\0';
    char *colon = strchr(tmp, ':');
    if (colon == NULL)
        return KV_ECORRUPT;
    person *p = calloc(1, sizeof *p);
    *colon = '\0';
    snprintf(p->name, sizeof p->name, "%.31s", tmp);
    p->age = atoi(colon + 1);
    pc->live++;
    *out = p;
    return KV_OK;
}

static void p_free(void *obj, void *ctx)
{
    pctx *pc = ctx;
    pc->live--;
    free(obj);
}

static kv_codec person_codec(pctx *pc)
{
    kv_codec c = {p_encode, p_decode, p_free, pc};
    return c;
}

/* ======================================================================== */
/* Single-record operations                                                 */
/* ======================================================================== */

START_TEST(test_put_get_has)
{
    OPEN(c);
    ck_assert_str_eq(kv_store_backend(c->s),
                     strncmp(c->b->name, "sqlite", 6) == 0 ? "sqlite"
                     : strncmp(c->b->name, "model", 5) == 0 ? "model"
                     : strncmp(c->b->name, "fs", 2) == 0    ? "fs"
                                                            : c->b->name);
    ck_assert(!has_(c, "/a"));
    uint64_t t = PUT(c, "/a", "hello", 0);
    ck_assert_uint_eq(GET(c, "/a", "hello"), t);
    ck_assert(has_(c, "/a"));
    ck_assert(!has_(c, "/a/b"));
    ck_assert(!has_(c, "/b"));
    /* Empty values are values. */
    PUT(c, "/e", "", 0);
    GET(c, "/e", "");
    /* KV_ENOTFOUND names the key. */
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/missing/key"), NULL), KV_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/missing/key"));
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert(kv_err_is(kv_fut_status(f), KV_EBACKEND));
    kv_fut_free(f);
    /* put_value: insert only. */
    const char *v = "xyz";
    EXPECT(kv_put_value(c->s, K(c, "/pv"), v, 3, NULL), KV_OK);
    GET(c, "/pv", "xyz");
    EXPECT(kv_put_value(c->s, K(c, "/pv"), v, 2, NULL), KV_ECONFLICT);
    GET(c, "/pv", "xyz");
    ctx_done(c);
}
END_TEST

START_TEST(test_put_tokens)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/k", "v1", 0);
    /* correct token: replaces, new token */
    uint64_t t2 = PUT(c, "/k", "v2", t1);
    ck_assert_uint_ne(t1, t2);
    ck_assert_uint_eq(GET(c, "/k", "v2"), t2);
    /* stale token */
    kv_fut *f = AWAIT(
        kv_put(c->s, &(kv_record){K(c, "/k"), "v3", 2, t1}, NULL),
        KV_ECONFLICT);
    ck_assert_uint_eq(kv_fut_token(f), 0);
    ck_assert(kv_err_is(kv_fut_status(f), KV_ERROR));
    kv_fut_free(f);
    /* token 0 on an existing key */
    PUT_FAILS(c, "/k", "v3", 0, KV_ECONFLICT);
    GET(c, "/k", "v2");
    /* a non-zero token on a missing key */
    PUT_FAILS(c, "/nokey", "v", t2, KV_ECONFLICT);
    PUT_FAILS(c, "/nokey", "v", 12345, KV_ECONFLICT);
    GET(c, "/nokey", NULL);
    ctx_done(c);
}
END_TEST

START_TEST(test_delete_tokens)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/d", "v1", 0);
    uint64_t t2 = PUT(c, "/d", "v2", t1);
    EXPECT(kv_delete(c->s, K(c, "/d"), t1), KV_ECONFLICT); /* stale */
    EXPECT(kv_delete(c->s, K(c, "/d"), 0), KV_ECONFLICT);  /* zero */
    GET(c, "/d", "v2");
    EXPECT(kv_delete(c->s, K(c, "/d"), t2), KV_OK);
    ck_assert(!has_(c, "/d"));
    EXPECT(kv_delete(c->s, K(c, "/d"), t2), KV_ECONFLICT); /* missing */
    EXPECT(kv_delete(c->s, K(c, "/never"), 1), KV_ECONFLICT);
    EXPECT(kv_delete(c->s, K(c, "/never"), 0), KV_ECONFLICT);
    ctx_done(c);
}
END_TEST

START_TEST(test_bad_arguments)
{
    OPEN(c);
    kv_key *root = K(c, "/");
    kv_store *s = c->s;
    ck_assert_uint_eq(kv_key_len(root), 0);
    EXPECT(kv_has(s, root), KV_EINVAL);
    EXPECT(kv_has(s, NULL), KV_EINVAL);
    EXPECT(kv_get(s, root, NULL), KV_EINVAL);
    EXPECT(kv_get(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, root, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, NULL, "v", 1, NULL), KV_EINVAL);
    EXPECT(kv_put_value(s, K(c, "/a"), NULL, 3, NULL), KV_EINVAL);
    EXPECT(kv_put(s, NULL, NULL), KV_EINVAL);
    EXPECT(kv_delete(s, root, 1), KV_EINVAL);
    EXPECT(kv_delete(s, NULL, 1), KV_EINVAL);
    /* NULL arrays with n > 0; and with n == 0, a valid empty batch */
    EXPECT(kv_has_many(s, NULL, 2), KV_EINVAL);
    EXPECT(kv_get_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_put_many(s, NULL, 1, NULL), KV_EINVAL);
    EXPECT(kv_delete_many(s, NULL, 1), KV_EINVAL);
    EXPECT(kv_drop_prefix(s, NULL, 1), KV_EINVAL);
    kv_fut *f = AWAIT(kv_has_many(s, NULL, 0), KV_OK);
    size_t n = 99;
    ck_assert_ptr_null(kv_fut_keys(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    f = AWAIT(kv_get_many(s, NULL, 0, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    EXPECT(kv_put_many(s, NULL, 0, NULL), KV_OK);
    EXPECT(kv_delete_many(s, NULL, 0), KV_OK);
    EXPECT(kv_drop_prefix(s, NULL, 0), KV_OK);
    /* a NULL or empty key inside a batch, with the index in the message */
    const kv_key *ks[] = {K(c, "/a"), NULL};
    f = AWAIT(kv_has_many(s, ks, 2), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "[1]"));
    kv_fut_free(f);
    kv_record rs[] = {{K(c, "/a"), "x", 1, 0}, {root, "y", 1, 0}};
    EXPECT(kv_put_many(s, rs, 2, NULL), KV_EINVAL);
    ck_assert(!has_(c, "/a"));
    /* codecs lacking what the call needs */
    kv_codec noenc = {NULL, p_decode, p_free, NULL};
    kv_codec nodec = {p_encode, NULL, p_free, NULL};
    person p = {"x", 1};
    EXPECT(kv_put_value(s, K(c, "/a"), &p, 0, &noenc), KV_EINVAL);
    EXPECT(kv_get(s, K(c, "/a"), &nodec), KV_EINVAL);
    /* a NULL store: still a future, never NULL */
    f = kv_get(NULL, K(c, "/a"), NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    EXPECT(kv_close(NULL), KV_EINVAL);
    ck_assert(!kv_supports_atomic_batch(NULL));
    kv_store_free(NULL);
    ctx_done(c);
}
END_TEST

START_TEST(test_cancel_and_free_pending)
{
    OPEN(c);
    PUT(c, "/a", "v", 0);
    /* A cancelled read completes KV_ECANCELED, exactly once. */
    kv_fut *f = kv_get(c->s, K(c, "/a"), NULL);
    kv_fut_cancel(f);
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    /* Freeing pending futures is safe; the work goes on. */
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "/f/%d", i);
        kv_fut_free(kv_put_value(c->s, K(c, key), "v", 1, NULL));
        kv_fut_free(kv_get(c->s, K(c, "/a"), NULL));
    }
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < 20; i++) {
        char key[32];
        snprintf(key, sizeof key, "/f/%d", i);
        GET(c, key, "v");
    }
    /* A cancelled write either happened or not, never half. */
    f = kv_put_value(c->s, K(c, "/cw"), "whole", 5, NULL);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    f = kv_get(c->s, K(c, "/cw"), NULL);
    int rc = kv_wait(f);
    ck_assert(rc == KV_ENOTFOUND ||
              (rc == KV_OK && val_is(kv_fut_record(f), "whole")));
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Batches                                                                  */
/* ======================================================================== */

START_TEST(test_batch_skipped)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/a", "a0", 0);
    uint64_t tb = PUT(c, "/b", "b0", 0);
    kv_record recs[] = {
        {K(c, "/a"), "a1", 2, ta},      /* ok */
        {K(c, "/b"), "b1", 2, ta + tb}, /* stale: skipped */
        {K(c, "/c"), "c1", 2, 0},       /* insert: ok */
        {K(c, "/d"), "d1", 2, 77},      /* missing with a token: skipped */
        {K(c, "/a/x"), "ax", 2, 0},     /* ok */
    };
    if (ta + tb == ta || ta + tb == tb)
        recs[1].token = tb + 1000;
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 5, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/b", "/d"));
    kv_fut_free(f);
    uint64_t ta1 = GET(c, "/a", "a1");
    GET(c, "/b", "b0");
    uint64_t tc = GET(c, "/c", "c1");
    GET(c, "/d", NULL);
    GET(c, "/a/x", "ax");
    /* delete_many: stale, zero, missing are skipped */
    kv_record dels[] = {
        {K(c, "/a"), NULL, 0, ta1},  /* ok */
        {K(c, "/b"), NULL, 0, 0},    /* zero: skipped */
        {K(c, "/c"), NULL, 0, ta},   /* stale (ta != tc) */
        {K(c, "/zz"), NULL, 0, tc},  /* missing */
    };
    ck_assert_uint_ne(ta, tc);
    f = AWAIT(kv_delete_many(c->s, dels, 4), KV_OK);
    ck_assert(KEYS_ARE(f, "/b", "/c", "/zz"));
    kv_fut_free(f);
    ck_assert(!has_(c, "/a"));
    ck_assert(has_(c, "/b"));
    ck_assert(has_(c, "/c"));
    /* no conflicts: an empty skipped list */
    kv_record ok[] = {{K(c, "/n1"), "1", 1, 0}, {K(c, "/n2"), "2", 1, 0}};
    f = AWAIT(kv_put_many(c->s, ok, 2, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST

START_TEST(test_batch_duplicate)
{
    OPEN(c);
    uint64_t t = PUT(c, "/x", "x0", 0);
    kv_record recs[] = {
        {K(c, "/new"), "1", 1, 0},
        {K(c, "/x"), "x1", 2, t},
        {K(c, "///new//"), "2", 1, 0}, /* the same key as /new */
    };
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 3, NULL), KV_EDUPLICATE);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/new"));
    kv_fut_free(f);
    GET(c, "/new", NULL);
    GET(c, "/x", "x0");
    EXPECT(kv_delete_many(c->s, recs, 3), KV_EDUPLICATE);
    GET(c, "/x", "x0");
    /* atomic ones too (where supported; else ENOTSUP first) */
    int want = kv_supports_atomic_batch(c->s) ? KV_EDUPLICATE : KV_ENOTSUP;
    EXPECT(kv_put_atomic(c->s, recs, 3, NULL), want);
    EXPECT(kv_delete_atomic(c->s, recs, 3), want);
    EXPECT(kv_try_put(c->s, recs, 3, 3, NULL, NULL, NULL), KV_EDUPLICATE);
    const kv_key *drop[] = {K(c, "/x"), K(c, "/x")};
    EXPECT(kv_drop_prefix(c->s, drop, 2), KV_EDUPLICATE);
    GET(c, "/x", "x0");
    GET(c, "/new", NULL);

    /* A large batch: duplicate detection is linear, nothing is written. */
    size_t big = 100000;
    kv_record *many = calloc(big, sizeof *many);
    kv_key **bk = calloc(big, sizeof *bk);
    for (size_t i = 0; i < big; i++) {
        char id[32];
        snprintf(id, sizeof id, "/big/%zu", i == big - 1 ? (size_t)7 : i);
        ck_assert_int_eq(kv_key_parse(&bk[i], id), KV_OK);
        many[i].key = bk[i];
        many[i].val = "v";
        many[i].len = 1;
    }
    f = AWAIT(kv_put_many(c->s, many, big, NULL), KV_EDUPLICATE);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/big/7"));
    kv_fut_free(f);
    GET(c, "/big/7", NULL);
    GET(c, "/big/0", NULL);
    for (size_t i = 0; i < big; i++)
        kv_key_free(bk[i]);
    free(bk);
    free(many);
    ctx_done(c);
}
END_TEST

START_TEST(test_read_batches)
{
    OPEN(c);
    PUT(c, "/r/1", "one", 0);
    PUT(c, "/r/2", "two", 0);
    const kv_key *keys[] = {K(c, "/r/1"), K(c, "/r/x"), K(c, "/r/2"),
                            K(c, "/r/1"), K(c, "/r/2/")};
    kv_fut *f = AWAIT(kv_has_many(c->s, keys, 5), KV_OK);
    ck_assert(KEYS_ARE(f, "/r/1", "/r/2"));
    kv_fut_free(f);
    f = AWAIT(kv_get_many(c->s, keys, 5, NULL), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        const char *id = kv_key_id(r[i].key);
        ck_assert(strcmp(id, "/r/1") == 0 ? val_is(&r[i], "one")
                                          : val_is(&r[i], "two"));
        ck_assert(r[i].token != 0);
    }
    /* kv_record_dup keeps a record beyond its future */
    kv_record *d = kv_record_dup(&r[0]);
    kv_fut_free(f);
    ck_assert_ptr_nonnull(d);
    ck_assert(val_is(d, strcmp(kv_key_id(d->key), "/r/1") == 0 ? "one"
                                                               : "two"));
    kv_record_free(d);
    kv_record_free(NULL);
    /* nothing exists */
    const kv_key *none[] = {K(c, "/n/1"), K(c, "/n/2")};
    f = AWAIT(kv_get_many(c->s, none, 2, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    f = AWAIT(kv_has_many(c->s, none, 2), KV_OK);
    ck_assert(KEYS_ARE(f, NULL) || (kv_fut_keys(f, &n) == NULL && n == 0));
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST

START_TEST(test_atomic_all_or_nothing)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/at/a", "a0", 0);
    kv_record good[] = {{K(c, "/at/a"), "a1", 2, ta},
                        {K(c, "/at/b"), "b1", 2, 0}};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_put_atomic(c->s, good, 2, NULL), KV_ENOTSUP);
        EXPECT(kv_delete_atomic(c->s, good, 2), KV_ENOTSUP);
        EXPECT(kv_put_atomic(c->s, good, 0, NULL), KV_ENOTSUP);
        GET(c, "/at/a", "a0");
        GET(c, "/at/b", NULL);
        ctx_done(c);
        return;
    }
    /* one conflict: nothing written, the conflicting key reported */
    kv_record bad[] = {{K(c, "/at/a"), "a1", 2, ta},
                       {K(c, "/at/b"), "b1", 2, 0},
                       {K(c, "/at/c"), "c1", 2, 999999}};
    kv_fut *f = AWAIT(kv_put_atomic(c->s, bad, 3, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/at/c"));
    kv_fut_free(f);
    GET(c, "/at/a", "a0");
    GET(c, "/at/b", NULL);
    /* all good: all written, no conflicts */
    f = AWAIT(kv_put_atomic(c->s, good, 2, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    uint64_t ta1 = GET(c, "/at/a", "a1");
    uint64_t tb1 = GET(c, "/at/b", "b1");
    /* delete_atomic: a stale token and a zero token conflict */
    kv_record dbad[] = {{K(c, "/at/a"), NULL, 0, ta1},
                        {K(c, "/at/b"), NULL, 0, ta},
                        {K(c, "/at/zz"), NULL, 0, 0}};
    f = AWAIT(kv_delete_atomic(c->s, dbad, 3), KV_OK);
    ck_assert(KEYS_ARE(f, "/at/b", "/at/zz"));
    kv_fut_free(f);
    GET(c, "/at/a", "a1");
    kv_record dgood[] = {{K(c, "/at/a"), NULL, 0, ta1},
                         {K(c, "/at/b"), NULL, 0, tb1}};
    f = AWAIT(kv_delete_atomic(c->s, dgood, 2), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ck_assert(!has_(c, "/at/a"));
    ck_assert(!has_(c, "/at/b"));
    EXPECT(kv_put_atomic(c->s, NULL, 0, NULL), KV_OK);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Queries and iterators                                                    */
/* ======================================================================== */

static const char *const qkeys[] = {
    "/a", "/a/b", "/a/c/d", "/ab", "/a-b", "/a:x", "/b", "/a:x/y", "/aa/a",
};
#define NQKEYS (sizeof qkeys / sizeof qkeys[0])

START_TEST(test_query_prefix)
{
    OPEN(c);
    put_all(c, qkeys, NQKEYS);
    char ids[64][64];
    kv_query q = kv_query_init(K(c, "/a"));
    ck_assert(q.value && q.sort == KV_SORT_ASC && q.offset == 0 &&
              q.limit == -1);
    size_t n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(ids[0], "/a");
    ck_assert_str_eq(ids[1], "/a/b");
    ck_assert_str_eq(ids[2], "/a/c/d");
    /* a field namespace is its own prefix */
    q = kv_query_init(K(c, "/a:x"));
    n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(ids[0], "/a:x");
    ck_assert_str_eq(ids[1], "/a:x/y");
    /* the empty key matches everything, in kv_key_cmp order */
    q = kv_query_init(K(c, "/"));
    n = query_ids(c, &q, ids, 64);
    ck_assert_uint_eq(n, NQKEYS);
    const char *sorted[NQKEYS];
    memcpy(sorted, qkeys, sizeof sorted);
    qsort(sorted, NQKEYS, sizeof sorted[0], cmp_ids);
    for (size_t i = 0; i < NQKEYS; i++)
        ck_assert_str_eq(ids[i], sorted[i]);
    /* values come along */
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    ck_assert_ptr_null(kv_fut_take_iter(of)); /* moved out once */
    kv_fut_free(of);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, NQKEYS);
    for (size_t i = 0; i < n; i++)
        ck_assert(val_is(&r[i], kv_key_id(r[i].key)));
    kv_fut_free(f);
    kv_iter_free(it);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_sort)
{
    OPEN(c);
    put_all(c, qkeys, NQKEYS);
    char asc[64][64], desc[64][64], none[64][64];
    kv_query q = kv_query_init(K(c, "/"));
    size_t na = query_ids(c, &q, asc, 64);
    q.sort = KV_SORT_DESC;
    size_t nd = query_ids(c, &q, desc, 64);
    q.sort = KV_SORT_NONE;
    size_t nn = query_ids(c, &q, none, 64);
    ck_assert_uint_eq(na, NQKEYS);
    ck_assert_uint_eq(nd, NQKEYS);
    ck_assert_uint_eq(nn, NQKEYS);
    for (size_t i = 0; i < na; i++) {
        ck_assert_str_eq(asc[i], desc[na - 1 - i]);
        bool found = false;
        for (size_t j = 0; j < nn; j++)
            found |= strcmp(asc[i], none[j]) == 0;
        ck_assert_msg(found, "%s missing from SORT_NONE", asc[i]);
    }
    /* a bad sort, offset or limit */
    q.sort = (kv_sort)7;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    q.sort = KV_SORT_ASC;
    q.offset = -1;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    q.offset = 0;
    q.limit = -2;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    EXPECT(kv_query_open(c->s, NULL, NULL), KV_EINVAL);
    q.limit = -1;
    q.key = NULL;
    EXPECT(kv_query_open(c->s, &q, NULL), KV_EINVAL);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_offset_limit)
{
    OPEN(c);
    const char *ks[] = {"/q/1", "/q/2", "/q/3", "/q/4", "/q/5"};
    put_all(c, ks, 5);
    char ids[16][64];
    kv_query q = kv_query_init(K(c, "/q"));
    q.offset = 1;
    q.limit = 2;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/q/2");
    ck_assert_str_eq(ids[1], "/q/3");
    q.sort = KV_SORT_DESC;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 2);
    ck_assert_str_eq(ids[0], "/q/4");
    ck_assert_str_eq(ids[1], "/q/3");
    q.sort = KV_SORT_ASC;
    q.limit = 0;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.limit = -1;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 4);
    q.offset = 0;
    q.limit = 5;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.limit = 100;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 5);
    q.offset = 5;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    q.offset = 1000;
    q.limit = -1;
    ck_assert_uint_eq(query_ids(c, &q, ids, 16), 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_no_value)
{
    OPEN(c);
    uint64_t t1 = PUT(c, "/v/1", "one", 0);
    uint64_t t2 = PUT(c, "/v/2", "two", 0);
    kv_query q = kv_query_init(K(c, "/v"));
    q.value = false;
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(kv_key_id(r[0].key), "/v/1");
    ck_assert_uint_eq(r[0].token, t1);
    ck_assert_uint_eq(r[1].token, t2);
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_null(r[i].val);
        ck_assert_uint_eq(r[i].len, 0);
    }
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_dispose(it), KV_OK);
    kv_iter_free(it);
    /* typed with value = false: nothing to decode */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f)->val);
    kv_fut_free(f);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_query_wildcards)
{
    OPEN(c);
    const char *ks[] = {"/w%",  "/w%/c", "/wx",  "/wxy", "/w_",  "/w_x",
                        "/w*",  "/w?",   "/w[",  "/w[a]", "/w\\", "/w\\x",
                        "/w%x", "/w'",   "/w\"", "/wa",
                        "/w\x01", "/w\x01x", "/w\xff", "/w\xff\xff",
                        "/w\xff/c", "/w b", "/w bb"};
    put_all(c, ks, sizeof ks / sizeof ks[0]);
    struct {
        const char *q;
        size_t n;
        const char *want[2];
    } cases[] = {
        {"/w%", 2, {"/w%", "/w%/c"}}, {"/w_", 1, {"/w_"}},
        {"/w*", 1, {"/w*"}},          {"/w?", 1, {"/w?"}},
        {"/w[", 1, {"/w["}},          {"/w[a]", 1, {"/w[a]"}},
        {"/w\\", 1, {"/w\\"}},        {"/w'", 1, {"/w'"}},
        {"/w\"", 1, {"/w\""}},        {"/w", 0, {NULL}},
        {"/w\x01", 1, {"/w\x01"}},    {"/w\xff", 2, {"/w\xff", "/w\xff/c"}},
        {"/w b", 1, {"/w b"}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char ids[32][64];
        kv_query q = kv_query_init(K(c, cases[i].q));
        size_t n = query_ids(c, &q, ids, 32);
        ck_assert_msg(n == cases[i].n, "query %s: %zu results, want %zu",
                      cases[i].q, n, cases[i].n);
        for (size_t j = 0; j < n; j++)
            ck_assert_str_eq(ids[j], cases[i].want[j]);
        GET(c, cases[i].n ? cases[i].want[0] : "/w", cases[i].n ? cases[i].want[0] : NULL);
    }
    ctx_done(c);
}
END_TEST

START_TEST(test_query_empty)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_query q = kv_query_init(K(c, "/nothing/here"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    ck_assert(!kv_iter_finished(it));
    kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f));
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);
    /* an empty store */
    const kv_key *one[] = {K(c, "/x")};
    EXPECT(kv_drop_prefix(c->s, one, 1), KV_OK);
    q = kv_query_init(K(c, "/"));
    char ids[4][64];
    ck_assert_uint_eq(query_ids(c, &q, ids, 4), 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_iter_rules)
{
    OPEN(c);
    const char *ks[] = {"/i/1", "/i/2"};
    put_all(c, ks, 2);
    kv_query q = kv_query_init(K(c, "/i"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    for (int i = 0; i < 2; i++) {
        ck_assert(!kv_iter_finished(it));
        kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
        ck_assert_str_eq(kv_key_id(kv_fut_record(f)->key), ks[i]);
        kv_fut_free(f);
    }
    /* the last record returned is not the end: finished only after NULL */
    ck_assert(!kv_iter_finished(it));
    kv_fut *f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_ptr_null(kv_fut_record(f));
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_next(it), KV_EITER);
    /* fetch_all on a finished iterator: nothing remains */
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 9;
    kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    /* dispose is idempotent; next after dispose fails */
    kv_fut *d1 = kv_iter_dispose(it);
    kv_fut *d2 = kv_iter_dispose(it);
    ck_assert_kv(kv_wait(d1), KV_OK);
    ck_assert_kv(kv_wait(d2), KV_OK);
    kv_fut_free(d1);
    kv_fut_free(d2);
    EXPECT(kv_iter_dispose(it), KV_OK);
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_fetch_all(it), KV_EITER);
    kv_iter_free(it);
    kv_iter_free(NULL);

    /* dispose before the end: next fails, finished stays false */
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    EXPECT(kv_iter_dispose(it), KV_OK);
    ck_assert(!kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);

    /* free without dispose, with a next pending: released asynchronously */
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = kv_iter_next(it);
    kv_iter_free(it);
    int rc = kv_wait(f);
    ck_assert(rc == KV_OK || rc == KV_EITER);
    kv_fut_free(f);
    /* the open future freed without taking the iterator */
    kv_fut_free(AWAIT(kv_query_open(c->s, &q, NULL), KV_OK));
    /* ... and freed while still pending */
    kv_fut_free(kv_query_open(c->s, &q, NULL));
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ctx_done(c);
}
END_TEST

typedef struct nextrec {
    int calls;
    int status;
    char id[64];
    bool end;
} nextrec;

static void on_next(kv_fut *f, void *arg)
{
    nextrec *r = arg;
    r->calls++;
    r->status = kv_fut_status(f);
    const kv_record *rec = kv_fut_record(f);
    r->end = r->status == KV_OK && rec == NULL;
    if (rec != NULL)
        snprintf(r->id, sizeof r->id, "%s", kv_key_id(rec->key));
    kv_fut_free(f);
}

START_TEST(test_iter_concurrent_next)
{
    OPEN(c);
    enum { N = 10, CALLS = 13 };
    const char *ks[N];
    char bufs[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof bufs[i], "/cn/%02d", i);
        ks[i] = bufs[i];
    }
    put_all(c, ks, N);
    kv_query q = kv_query_init(K(c, "/cn"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    nextrec recs[CALLS];
    memset(recs, 0, sizeof recs);
    for (int i = 0; i < CALLS; i++)
        ck_assert_int_eq(kv_fut_then(kv_iter_next(it), on_next, &recs[i]),
                         KV_OK);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < CALLS; i++)
        ck_assert_int_eq(recs[i].calls, 1);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(recs[i].status, KV_OK);
        ck_assert_str_eq(recs[i].id, ks[i]); /* each a different one, in order */
    }
    ck_assert(recs[N].end);
    for (int i = N + 1; i < CALLS; i++)
        ck_assert_int_eq(recs[i].status, KV_EITER);
    ck_assert(kv_iter_finished(it));
    /* pending nexts fail KV_EITER when the iterator is disposed */
    kv_iter_free(it);
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    memset(recs, 0, sizeof recs);
    kv_fut_then(kv_iter_next(it), on_next, &recs[0]);
    kv_fut_then(kv_iter_next(it), on_next, &recs[1]);
    kv_fut *d = kv_iter_dispose(it);
    ck_assert_kv(kv_wait(d), KV_OK);
    kv_fut_free(d);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(recs[i].calls, 1);
        ck_assert(recs[i].status == KV_OK || recs[i].status == KV_EITER);
    }
    kv_iter_free(it);
    ctx_done(c);
}
END_TEST

START_TEST(test_iter_streaming)
{
    OPEN(c);
    enum { N = 700 };
    kv_record *recs = calloc(N, sizeof *recs);
    char vals[N][16];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "/s/%04d", i);
        snprintf(vals[i], sizeof vals[i], "v%d", i);
        recs[i].key = K(c, id);
        recs[i].val = vals[i];
        recs[i].len = strlen(vals[i]);
    }
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, N, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    kv_query q = kv_query_init(K(c, "/s"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    /* a few by next, the rest by fetch_all */
    for (int i = 0; i < 5; i++) {
        f = AWAIT(kv_iter_next(it), KV_OK);
        ck_assert(val_is(kv_fut_record(f), vals[i]));
        kv_fut_free(f);
    }
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, N - 5);
    for (size_t i = 0; i < n; i++) {
        ck_assert(val_is(&r[i], vals[i + 5]));
        ck_assert(kv_key_equal(r[i].key, recs[i + 5].key));
    }
    kv_fut_free(f);
    ck_assert(kv_iter_finished(it));
    EXPECT(kv_iter_next(it), KV_EITER);
    kv_iter_free(it);
    free(recs);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Typed records                                                            */
/* ======================================================================== */

START_TEST(test_typed_roundtrip)
{
    OPEN(c);
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person alice = {"alice", 30}, bob = {"bob", 41};
    kv_fut *f = AWAIT(kv_put_value(c->s, K(c, "/p/alice"), &alice, 0, &codec),
                      KV_OK);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    /* raw bytes are the encoding */
    GET(c, "/p/alice", "alice:30");
    f = AWAIT(kv_get(c->s, K(c, "/p/alice"), &codec), KV_OK);
    const kv_record *r = kv_fut_record(f);
    const person *p = r->val;
    ck_assert_str_eq(p->name, "alice");
    ck_assert_int_eq(p->age, 30);
    ck_assert_uint_eq(r->len, 0);
    ck_assert_uint_eq(r->token, t);
    ck_assert_int_eq(pc.live, 1);
    /* a typed result's dup keeps key and token only */
    kv_record *d = kv_record_dup(r);
    ck_assert_ptr_null(d->val);
    ck_assert_uint_eq(d->token, t);
    kv_record_free(d);
    kv_fut_free(f);
    ck_assert_int_eq(pc.live, 0);
    /* typed put with CAS, put_many, get_many */
    alice.age = 31;
    EXPECT(kv_put(c->s, &(kv_record){K(c, "/p/alice"), &alice, 0, t}, &codec),
           KV_OK);
    kv_record recs[] = {{K(c, "/p/bob"), &bob, 0, 0}};
    f = AWAIT(kv_put_many(c->s, recs, 1, &codec), KV_OK);
    kv_fut_free(f);
    const kv_key *keys[] = {K(c, "/p/alice"), K(c, "/p/bob"), K(c, "/p/x")};
    f = AWAIT(kv_get_many(c->s, keys, 3, &codec), KV_OK);
    size_t n = 0;
    r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    int ages = 0;
    for (size_t i = 0; i < n; i++)
        ages += ((const person *)r[i].val)->age;
    ck_assert_int_eq(ages, 31 + 41);
    kv_fut_free(f);
    /* typed query, by next and fetch_all */
    kv_query q = kv_query_init(K(c, "/p"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    f = AWAIT(kv_iter_next(it), KV_OK);
    ck_assert_str_eq(((const person *)kv_fut_record(f)->val)->name, "alice");
    kv_fut_free(f);
    f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(((const person *)r[0].val)->name, "bob");
    kv_fut_free(f);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    ctx_done(c);
    ck_assert_int_eq(pc.live, 0);
}
END_TEST

START_TEST(test_typed_failures)
{
    OPEN(c);
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    PUT(c, "/t/good", "carol:22", 0);
    PUT(c, "/t/zbad", "BAD bytes", 0);
    /* decode failure: the codec's code */
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/t/zbad"), &codec), KV_ECORRUPT);
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/t/zbad"));
    kv_fut_free(f);
    const kv_key *keys[] = {K(c, "/t/good"), K(c, "/t/zbad")};
    EXPECT(kv_get_many(c->s, keys, 2, &codec), KV_ECORRUPT);
    ck_assert_int_eq(pc.live, 0); /* the good one, decoded, was freed */
    kv_query q = kv_query_init(K(c, "/t"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    EXPECT(kv_iter_next(it), KV_ECORRUPT);
    kv_iter_free(it);
    of = AWAIT(kv_query_open(c->s, &q, &codec), KV_OK);
    it = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_fetch_all(it), KV_ECORRUPT);
    kv_iter_free(it);
    ck_assert_int_eq(pc.live, 0);
    /* encode failure: the codec's code, nothing written */
    person neg = {"neg", -1}, ok = {"ok", 1};
    EXPECT(kv_put_value(c->s, K(c, "/t/neg"), &neg, 0, &codec), KV_ERROR);
    GET(c, "/t/neg", NULL);
    kv_record recs[] = {{K(c, "/t/ok"), &ok, 0, 0},
                        {K(c, "/t/neg"), &neg, 0, 0}};
    EXPECT(kv_put_many(c->s, recs, 2, &codec), KV_ERROR);
    GET(c, "/t/ok", NULL);
    ctx_done(c);
    ck_assert_int_eq(pc.live, 0);
}
END_TEST

/* ======================================================================== */
/* Move and drop                                                            */
/* ======================================================================== */

START_TEST(test_move_prefix)
{
    OPEN(c);
    uint64_t t = PUT(c, "/m/a", "a", 0);
    PUT(c, "/m/a/x", "ax", 0);
    PUT(c, "/m/a/y/z", "ayz", 0);
    PUT(c, "/m/ab", "ab", 0);
    PUT(c, "/m/c", "c", 0);
    const kv_key *from[] = {K(c, "/m/a")};
    const kv_key *to[] = {K(c, "/n/b")};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_move_prefix_atomic(c->s, from, to, 1), KV_ENOTSUP);
        GET(c, "/m/a", "a");
        ctx_done(c);
        return;
    }
    EXPECT(kv_move_prefix_atomic(c->s, from, to, 1), KV_OK);
    uint64_t t2 = GET(c, "/n/b", "a");
    ck_assert_uint_ne(t, t2); /* moved records get new tokens */
    GET(c, "/n/b/x", "ax");
    GET(c, "/n/b/y/z", "ayz");
    GET(c, "/m/a", NULL);
    GET(c, "/m/a/x", NULL);
    GET(c, "/m/ab", "ab"); /* not below /m/a */
    /* collision: nothing moves */
    PUT(c, "/dst/x", "occupied", 0);
    const kv_key *f2[] = {K(c, "/m/ab"), K(c, "/n/b")};
    const kv_key *t2k[] = {K(c, "/m/new"), K(c, "/dst")};
    EXPECT(kv_move_prefix_atomic(c->s, f2, t2k, 2), KV_ECONFLICT);
    GET(c, "/m/ab", "ab"); /* the first move was rolled back */
    GET(c, "/m/new", NULL);
    GET(c, "/n/b/x", "ax");
    GET(c, "/dst/x", "occupied");
    /* a destination that is itself moved away is no collision */
    const kv_key *f3[] = {K(c, "/m/c"), K(c, "/dst")};
    const kv_key *t3[] = {K(c, "/dst"), K(c, "/old")};
    EXPECT(kv_move_prefix_atomic(c->s, f3, t3, 2), KV_OK);
    GET(c, "/dst", "c");
    GET(c, "/old/x", "occupied");
    GET(c, "/dst/x", NULL);
    /* bad arguments */
    const kv_key *self[] = {K(c, "/dst")};
    EXPECT(kv_move_prefix_atomic(c->s, self, self, 1), KV_EINVAL);
    const kv_key *below[] = {K(c, "/dst/sub")};
    EXPECT(kv_move_prefix_atomic(c->s, self, below, 1), KV_EINVAL);
    const kv_key *root[] = {K(c, "/")};
    EXPECT(kv_move_prefix_atomic(c->s, root, self, 1), KV_EINVAL);
    EXPECT(kv_move_prefix_atomic(c->s, NULL, NULL, 0), KV_OK);
    ctx_done(c);
}
END_TEST

START_TEST(test_drop_prefix)
{
    OPEN(c);
    const char *ks[] = {"/dp/a", "/dp/a/b", "/dp/a/b/c", "/dp/ab", "/dp/b",
                        "/dp/c/1"};
    put_all(c, ks, 6);
    const kv_key *drop[] = {K(c, "/dp/a"), K(c, "/dp/c"), K(c, "/dp/none")};
    EXPECT(kv_drop_prefix(c->s, drop, 3), KV_OK);
    GET(c, "/dp/a", NULL);
    GET(c, "/dp/a/b", NULL);
    GET(c, "/dp/a/b/c", NULL);
    GET(c, "/dp/c/1", NULL);
    GET(c, "/dp/ab", "/dp/ab");
    GET(c, "/dp/b", "/dp/b");
    const kv_key *root[] = {K(c, "/")};
    EXPECT(kv_drop_prefix(c->s, root, 1), KV_EINVAL);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Helpers                                                                  */
/* ======================================================================== */

/* A middleware that refreshes tokens from the store (get_many). */
typedef struct refresh {
    tctx *c;
    int calls;
    size_t last_n;
    int fail_with; /* non-zero: fail the future with this */
    bool change_keys; /* atomic: return a different key set */
} refresh;

typedef struct refresh_job {
    kv_fut *out;
    kv_record *recs;
    size_t n;
} refresh_job;

static void refresh_done(kv_fut *g, void *arg)
{
    refresh_job *j = arg;
    size_t nf = 0;
    const kv_record *fresh = kv_fut_records(g, &nf);
    for (size_t i = 0; i < j->n; i++) {
        j->recs[i].token = 0;
        for (size_t k = 0; k < nf; k++)
            if (kv_key_equal(fresh[k].key, j->recs[i].key))
                j->recs[i].token = fresh[k].token;
    }
    kv_fut_complete_records(j->out, j->recs, j->n);
    for (size_t i = 0; i < j->n; i++) {
        kv_key_free(j->recs[i].key);
        free(j->recs[i].val);
    }
    free(j->recs);
    free(j);
    kv_fut_free(g);
}

static kv_fut *refresh_records(refresh *rf, const kv_record *recs, size_t n)
{
    rf->calls++;
    rf->last_n = n;
    kv_fut *out = kv_fut_new(rf->c->loop);
    if (rf->fail_with) {
        kv_fut_fail(out, rf->fail_with, "middleware gave up");
        return out;
    }
    refresh_job *j = calloc(1, sizeof *j);
    j->out = out;
    j->n = n;
    j->recs = calloc(n, sizeof *j->recs);
    const kv_key **keys = calloc(n, sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(kv_key_dup(&j->recs[i].key, recs[i].key), KV_OK);
        if (rf->change_keys && i == 0) {
            kv_key_free(j->recs[i].key);
            ck_assert_int_eq(kv_key_parse(&j->recs[i].key, "/other"), KV_OK);
        }
        j->recs[i].val = malloc(recs[i].len + 1);
        if (recs[i].len)
            memcpy(j->recs[i].val, recs[i].val, recs[i].len);
        j->recs[i].len = recs[i].len;
        keys[i] = j->recs[i].key;
    }
    kv_fut *g = kv_get_many(rf->c->s, keys, n, NULL);
    free(keys);
    kv_fut_then(g, refresh_done, j);
    return out;
}

static kv_fut *mw_refresh(const kv_record *failed, size_t n, void *arg)
{
    return refresh_records(arg, failed, n);
}

static kv_fut *amw_refresh(const kv_record *all, size_t n,
                           const kv_key *const *conflicts, size_t nconf,
                           void *arg)
{
    ck_assert_uint_gt(nconf, 0);
    ck_assert_ptr_nonnull(conflicts);
    return refresh_records(arg, all, n);
}

START_TEST(test_try_put)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/tp/a", "a0", 0);
    PUT(c, "/tp/b", "b0", 0);
    /* stale tokens: a middleware refreshing them succeeds */
    kv_record recs[] = {{K(c, "/tp/a"), "a1", 2, ta},
                        {K(c, "/tp/b"), "b1", 2, 12345},
                        {K(c, "/tp/c"), "c1", 2, 999}};
    PUT(c, "/tp/a", "a-other", ta); /* someone else wrote /tp/a */
    refresh rf = {c, 0, 0, 0, false};
    kv_fut *f = AWAIT(kv_try_put(c->s, recs, 3, 3, mw_refresh, &rf, NULL),
                      KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 3); /* all three were skipped */
    GET(c, "/tp/a", "a1");
    GET(c, "/tp/b", "b1");
    GET(c, "/tp/c", "c1");
    /* no middleware: the same records again, until attempts run out */
    kv_record stale[] = {{K(c, "/tp/a"), "x", 1, 1},
                         {K(c, "/tp/new"), "n", 1, 0}};
    f = AWAIT(kv_try_put(c->s, stale, 2, 3, NULL, NULL, NULL),
              KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/tp/a"));
    kv_fut_free(f);
    GET(c, "/tp/a", "a1");
    GET(c, "/tp/new", "n");
    /* zero attempts: KV_EMAXRETRIES at once, nothing written */
    kv_record z[] = {{K(c, "/tp/z"), "z", 1, 0}};
    f = AWAIT(kv_try_put(c->s, z, 1, 0, NULL, NULL, NULL), KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/tp/z"));
    kv_fut_free(f);
    GET(c, "/tp/z", NULL);
    /* a middleware returning nothing: success, no more attempts */
    rf.calls = 0;
    f = AWAIT(kv_try_put(c->s, stale, 1, 5, mw_refresh, &(refresh){c, 0, 0, 0,
                                                                     false},
                         NULL),
              KV_OK);
    kv_fut_free(f);
    /* a failing middleware aborts with its error */
    refresh bad = {c, 0, 0, KV_EBACKEND, false};
    f = AWAIT(kv_try_put(c->s, stale, 1, 5, mw_refresh, &bad, NULL),
              KV_EBACKEND);
    ck_assert_str_eq(kv_fut_errmsg(f), "middleware gave up");
    kv_fut_free(f);
    ck_assert_int_eq(bad.calls, 1);
    /* exhaustion with a middleware: attempts counted in all */
    refresh count = {c, 0, 0, 0, false};
    kv_record never[] = {{K(c, "/tp/a"), "q", 1, 0}}; /* refresh: token 0? */
    /* /tp/a exists; a refreshed token makes it succeed on attempt 2 */
    f = AWAIT(kv_try_put(c->s, never, 1, 2, mw_refresh, &count, NULL), KV_OK);
    kv_fut_free(f);
    ck_assert_int_eq(count.calls, 1);
    GET(c, "/tp/a", "q");
    /* typed */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person dan = {"dan", 5};
    kv_record tr[] = {{K(c, "/tp/dan"), &dan, 0, 0}};
    EXPECT(kv_try_put(c->s, tr, 1, 1, NULL, NULL, &codec), KV_OK);
    GET(c, "/tp/dan", "dan:5");
    ctx_done(c);
}
END_TEST

START_TEST(test_try_delete)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/td/a", "a", 0);
    PUT(c, "/td/b", "b", 0);
    kv_record dels[] = {{K(c, "/td/a"), NULL, 0, ta},
                        {K(c, "/td/b"), NULL, 0, 0}};
    refresh rf = {c, 0, 0, 0, false};
    EXPECT(kv_try_delete(c->s, dels, 2, 2, mw_refresh, &rf), KV_OK);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 1);
    ck_assert(!has_(c, "/td/a"));
    ck_assert(!has_(c, "/td/b"));
    /* without middleware: a zero token never succeeds */
    PUT(c, "/td/c", "c", 0);
    kv_record zero[] = {{K(c, "/td/c"), NULL, 0, 0}};
    kv_fut *f = AWAIT(kv_try_delete(c->s, zero, 1, 3, NULL, NULL),
                      KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/td/c"));
    kv_fut_free(f);
    ck_assert(has_(c, "/td/c"));
    EXPECT(kv_try_delete(c->s, zero, 1, 0, NULL, NULL), KV_EMAXRETRIES);
    EXPECT(kv_try_delete(c->s, NULL, 0, 1, NULL, NULL), KV_OK);
    ctx_done(c);
}
END_TEST

START_TEST(test_try_atomic)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/ta/a", "a0", 0);
    kv_record recs[] = {{K(c, "/ta/a"), "a1", 2, ta + 1000},
                        {K(c, "/ta/b"), "b1", 2, 0}};
    refresh rf = {c, 0, 0, 0, false};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &rf, NULL),
               KV_ENOTSUP);
        EXPECT(kv_try_delete_atomic(c->s, recs, 2, 3, amw_refresh, &rf),
               KV_ENOTSUP);
        ck_assert_int_eq(rf.calls, 0);
        ctx_done(c);
        return;
    }
    /* without middleware: KV_ECONFLICT with the conflicts, no retry */
    kv_fut *f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 3, NULL, NULL, NULL),
                      KV_ECONFLICT);
    ck_assert(KEYS_ARE(f, "/ta/a"));
    kv_fut_free(f);
    GET(c, "/ta/b", NULL);
    /* a middleware refreshing every token */
    f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &rf, NULL),
              KV_OK);
    kv_fut_free(f);
    ck_assert_int_eq(rf.calls, 1);
    ck_assert_uint_eq(rf.last_n, 2); /* it sees the whole batch */
    GET(c, "/ta/a", "a1");
    uint64_t tb = GET(c, "/ta/b", "b1");
    /* a middleware returning another key set: KV_EINVAL */
    refresh chg = {c, 0, 0, 0, true};
    EXPECT(kv_try_put_atomic(c->s, recs, 2, 3, amw_refresh, &chg, NULL),
           KV_EINVAL);
    GET(c, "/ta/a", "a1");
    /* exhaustion: KV_EMAXRETRIES with the conflicting keys */
    refresh rf1 = {c, 0, 0, 0, false};
    f = AWAIT(kv_try_put_atomic(c->s, recs, 2, 1, amw_refresh, &rf1, NULL),
              KV_EMAXRETRIES);
    ck_assert(KEYS_ARE(f, "/ta/a", "/ta/b"));
    kv_fut_free(f);
    ck_assert_int_eq(rf1.calls, 0);
    EXPECT(kv_try_put_atomic(c->s, recs, 2, 0, NULL, NULL, NULL),
           KV_EMAXRETRIES);
    /* delete atomic */
    kv_record dels[] = {{K(c, "/ta/a"), NULL, 0, 1},
                        {K(c, "/ta/b"), NULL, 0, tb}};
    f = AWAIT(kv_try_delete_atomic(c->s, dels, 2, 3, NULL, NULL),
              KV_ECONFLICT);
    ck_assert(KEYS_ARE(f, "/ta/a"));
    kv_fut_free(f);
    ck_assert(has_(c, "/ta/b"));
    refresh rd = {c, 0, 0, 0, false};
    EXPECT(kv_try_delete_atomic(c->s, dels, 2, 3, amw_refresh, &rd), KV_OK);
    ck_assert(!has_(c, "/ta/a"));
    ck_assert(!has_(c, "/ta/b"));
    ctx_done(c);
}
END_TEST

/* get_or_put producers */
typedef struct producer {
    tctx *c;
    int calls;
    const char *value;
    const char *race_value; /* non-NULL: another writer inserts it first */
    const person *obj;
    pctx *pc;      /* counts the objects it makes (typed) */
    kv_fut *hold;  /* non-NULL: the last future, left for the test */
    bool pending;  /* leave the future pending in hold */
} producer;

typedef struct race {
    kv_fut *out;
    producer *p;
} race;

static void race_written(kv_fut *w, void *arg)
{
    race *r = arg;
    ck_assert_int_eq(kv_fut_status(w), KV_OK);
    kv_fut_free(w);
    kv_fut_complete_bytes(r->out, r->p->value, strlen(r->p->value));
    free(r);
}

static kv_fut *produce(const kv_key *key, void *arg)
{
    producer *p = arg;
    p->calls++;
    kv_fut *out = kv_fut_new(p->c->loop);
    p->hold = out;
    if (p->pending)
        return out;
    if (p->obj != NULL) {
        person *o = malloc(sizeof *o);
        *o = *p->obj;
        if (p->pc != NULL)
            p->pc->live++;
        kv_fut_complete_obj(out, o);
        return out;
    }
    if (p->race_value != NULL && p->calls == 1) {
        race *r = malloc(sizeof *r);
        r->out = out;
        r->p = p;
        kv_fut *w = kv_put_value(p->c->s, key, p->race_value,
                                 strlen(p->race_value), NULL);
        kv_fut_then(w, race_written, r);
        return out;
    }
    kv_fut_complete_bytes(out, p->value, strlen(p->value));
    return out;
}

START_TEST(test_get_or_put)
{
    OPEN(c);
    producer p = {c, 0, "made", NULL, NULL, NULL, NULL, false};
    kv_fut *f = AWAIT(kv_get_or_put(c->s, K(c, "/g/1"), produce, &p, 3, NULL),
                      KV_OK);
    const kv_record *r = kv_fut_record(f);
    ck_assert(val_is(r, "made"));
    uint64_t t = r->token;
    ck_assert(t != 0);
    kv_fut_free(f);
    ck_assert_int_eq(p.calls, 1);
    ck_assert_uint_eq(GET(c, "/g/1", "made"), t);
    /* present: the producer is not called */
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/1"), produce, &p, 3, NULL), KV_OK);
    ck_assert(val_is(kv_fut_record(f), "made"));
    ck_assert_uint_eq(kv_fut_record(f)->token, t);
    kv_fut_free(f);
    ck_assert_int_eq(p.calls, 1);
    /* lost race: the winner's record */
    producer pr = {c, 0, "loser", "winner", NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/2"), produce, &pr, 3, NULL), KV_OK);
    ck_assert(val_is(kv_fut_record(f), "winner"));
    kv_fut_free(f);
    ck_assert_int_eq(pr.calls, 1);
    GET(c, "/g/2", "winner");
    /* bounds */
    EXPECT(kv_get_or_put(c->s, K(c, "/g/3"), produce, &p, 0, NULL),
           KV_EMAXRETRIES);
    EXPECT(kv_get_or_put(c->s, K(c, "/g/3"), NULL, &p, 3, NULL), KV_EINVAL);
    EXPECT(kv_get_or_put(c->s, K(c, "/"), produce, &p, 3, NULL), KV_EINVAL);
    /* one insert attempt, lost: the winner is still read and returned */
    producer racing1 = {c, 0, "loser", "winner", NULL, NULL, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/4"), produce, &racing1, 1, NULL),
              KV_OK);
    ck_assert(val_is(kv_fut_record(f), "winner"));
    kv_fut_free(f);
    ck_assert_int_eq(racing1.calls, 1);
    /* typed */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person eve = {"eve", 7};
    producer pt = {c, 0, NULL, NULL, &eve, &pc, NULL, false};
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/eve"), produce, &pt, 3, &codec),
              KV_OK);
    ck_assert_str_eq(((const person *)kv_fut_record(f)->val)->name, "eve");
    kv_fut_free(f);
    GET(c, "/g/eve", "eve:7");
    f = AWAIT(kv_get_or_put(c->s, K(c, "/g/eve"), produce, &pt, 3, &codec),
              KV_OK);
    ck_assert_int_eq(((const person *)kv_fut_record(f)->val)->age, 7);
    kv_fut_free(f);
    ck_assert_int_eq(pt.calls, 1);
    ck_assert_int_eq(pc.live, 0); /* the produced object went to free_obj */
    ctx_done(c);
}
END_TEST

/* A middleware that cancels the helper it serves and completes later. */
typedef struct cancel_mw {
    tctx *c;
    kv_fut *helper;
    kv_fut *out;
    int calls;
} cancel_mw;

static kv_fut *mw_cancel_helper(const kv_record *failed, size_t n, void *arg)
{
    (void)failed;
    (void)n;
    cancel_mw *m = arg;
    m->calls++;
    kv_fut_cancel(m->helper);
    m->out = kv_fut_new(m->c->loop);
    return m->out;
}

START_TEST(test_helper_cancel)
{
    OPEN(c);
    /* Cancel while the middleware's future is pending: the helper completes
     * KV_ECANCELED once, the middleware may still complete its future, and
     * no further attempt is made. */
    uint64_t t = PUT(c, "/hc", "v0", 0);
    kv_record stale = {K(c, "/hc"), "v1", 2, t + 1};
    cancel_mw m = {c, NULL, NULL, 0};
    counted done = {0, 0};
    m.helper = kv_try_put(c->s, &stale, 1, 5, mw_cancel_helper, &m, NULL);
    kv__fut_ref(m.helper); /* keep it for the check below */
    kv_fut_then(m.helper, on_count, &done);
    ck_assert_kv(kv_wait(m.helper), KV_ECANCELED);
    ck_assert_int_eq(m.calls, 1);
    kv_record fresh = {K(c, "/hc"), "v1", 2, t};
    kv_fut_complete_records(m.out, &fresh, 1);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(done.calls, 1);
    ck_assert_int_eq(done.status, KV_ECANCELED);
    kv_fut_free(m.helper);
    GET(c, "/hc", "v0");
    /* The same for get_or_put with its producer's future pending. */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person zed = {"zed", 3};
    producer p = {c, 0, NULL, NULL, &zed, &pc, NULL, true};
    kv_fut *f = kv_get_or_put(c->s, K(c, "/hc/g"), produce, &p, 3, &codec);
    while (p.calls == 0)
        ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_ONCE), 0);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    person *o = malloc(sizeof *o);
    *o = zed;
    pc.live++;
    kv_fut_complete_obj(p.hold, o); /* the library frees it via the codec */
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(pc.live, 0);
    GET(c, "/hc/g", NULL);
    /* Cancelling an attempt in flight. */
    f = kv_try_put(c->s, &stale, 1, 5, NULL, NULL, NULL);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    GET(c, "/hc", "v0");
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Close                                                                    */
/* ======================================================================== */

START_TEST(test_close_idempotent)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_fut *a = kv_close(c->s);
    kv_fut *b = kv_close(c->s);
    ck_assert_kv(kv_wait(b), KV_OK);
    ck_assert_kv(kv_wait(a), KV_OK);
    kv_fut_free(a);
    kv_fut_free(b);
    EXPECT(kv_close(c->s), KV_OK); /* after the close completed */
    kv_store_free(c->s);
    c->s = NULL;
    /* kv_store_free on an open store closes it */
    ck_assert_kv(c->b->open(&c->s, c->loop, c->pool, tmpdir, 0), KV_OK);
    kv_fut_free(kv_put_value(c->s, K(c, "/y"), "v", 1, NULL));
    kv_store_free(c->s);
    c->s = NULL;
    ctx_done(c);
}
END_TEST

START_TEST(test_ops_after_close)
{
    OPEN(c);
    PUT(c, "/x", "v", 0);
    kv_store *s = c->s;
    EXPECT(kv_close(s), KV_OK);
    const kv_key *k = K(c, "/x");
    const kv_key *ks[] = {k};
    kv_record rec = {K(c, "/x"), "v", 1, 0};
    kv_query q = kv_query_init(k);
    producer p = {c, 0, "v", NULL, NULL, NULL, NULL, false};
    /* KV_ECLOSED before every other error, bad arguments included */
    EXPECT(kv_has(s, k), KV_ECLOSED);
    EXPECT(kv_has(s, NULL), KV_ECLOSED);
    EXPECT(kv_has_many(s, ks, 1), KV_ECLOSED);
    EXPECT(kv_get(s, k, NULL), KV_ECLOSED);
    EXPECT(kv_get_many(s, NULL, 3, NULL), KV_ECLOSED);
    EXPECT(kv_put(s, &rec, NULL), KV_ECLOSED);
    EXPECT(kv_put(s, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_put_value(s, k, "v", 1, NULL), KV_ECLOSED);
    EXPECT(kv_put_many(s, &rec, 1, NULL), KV_ECLOSED);
    EXPECT(kv_delete(s, k, 1), KV_ECLOSED);
    EXPECT(kv_delete_many(s, &rec, 1), KV_ECLOSED);
    EXPECT(kv_put_atomic(s, &rec, 1, NULL), KV_ECLOSED);
    EXPECT(kv_delete_atomic(s, &rec, 1), KV_ECLOSED);
    EXPECT(kv_move_prefix_atomic(s, ks, ks, 1), KV_ECLOSED);
    EXPECT(kv_drop_prefix(s, ks, 1), KV_ECLOSED);
    EXPECT(kv_query_open(s, &q, NULL), KV_ECLOSED);
    EXPECT(kv_query_open(s, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_put(s, &rec, 1, 3, NULL, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_delete(s, &rec, 1, 0, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_put_atomic(s, &rec, 1, 3, NULL, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_try_delete_atomic(s, &rec, 1, 3, NULL, NULL), KV_ECLOSED);
    EXPECT(kv_get_or_put(s, k, produce, &p, 3, NULL), KV_ECLOSED);
    ck_assert_int_eq(p.calls, 0);
    ctx_done(c);
}
END_TEST

START_TEST(test_close_inflight)
{
    OPEN(c);
    PUT(c, "/base", "v", 0);
    enum { N = 60 };
    counted cs[N + 4];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "/cf/%d", i);
        kv_fut *f = i % 3 == 0   ? kv_get(c->s, K(c, "/base"), NULL)
                    : i % 3 == 1 ? kv_put_value(c->s, K(c, id), "v", 1, NULL)
                                 : kv_has(c->s, K(c, id));
        ck_assert_int_eq(kv_fut_then(f, on_count, &cs[i]), KV_OK);
    }
    kv_query q = kv_query_init(K(c, "/"));
    kv_fut_then(kv_query_open(c->s, &q, NULL), on_count, &cs[N]);
    kv_record rec = {K(c, "/cf/x"), "v", 1, 0};
    kv_fut_then(kv_try_put(c->s, &rec, 1, 3, NULL, NULL, NULL), on_count,
                &cs[N + 1]);
    producer p = {c, 0, "v", NULL, NULL, NULL, NULL, false};
    kv_fut_then(kv_get_or_put(c->s, K(c, "/cf/g"), produce, &p, 3, NULL),
                on_count, &cs[N + 2]);
    kv_fut *cf = kv_close(c->s);
    ck_assert_kv(kv_wait(cf), KV_OK);
    kv_fut_free(cf);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    int canceled = 0;
    for (int i = 0; i < N + 3; i++) {
        ck_assert_msg(cs[i].calls == 1, "future %d completed %d times", i,
                      cs[i].calls);
        ck_assert_msg(cs[i].status == KV_OK || cs[i].status == KV_ECANCELED ||
                          cs[i].status == KV_ECLOSED,
                      "future %d: %s", i, kv_err_name(cs[i].status));
        canceled += cs[i].status != KV_OK;
    }
    (void)canceled;
    ctx_done(c);
}
END_TEST

START_TEST(test_close_undisposed_iter)
{
    OPEN(c);
    const char *ks[] = {"/u/1", "/u/2", "/u/3", "/u/4", "/u/5"};
    put_all(c, ks, 5);
    kv_query q = kv_query_init(K(c, "/u"));
    kv_fut *of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    of = AWAIT(kv_query_open(c->s, &q, NULL), KV_OK);
    kv_iter *it2 = kv_fut_take_iter(of);
    kv_fut_free(of);
    EXPECT(kv_iter_next(it), KV_OK);
    kv_fut *pending = kv_iter_next(it2);
    EXPECT(kv_close(c->s), KV_OK);
    int rc = kv_wait(pending);
    ck_assert(rc == KV_OK || rc == KV_ECANCELED);
    kv_fut_free(pending);
    EXPECT(kv_iter_next(it), KV_EITER);
    EXPECT(kv_iter_fetch_all(it), KV_EITER);
    ck_assert(!kv_iter_finished(it));
    EXPECT(kv_iter_dispose(it), KV_OK);
    kv_iter_free(it);
    kv_store_free(c->s);
    c->s = NULL;
    /* an iterator may outlive its store's handle */
    EXPECT(kv_iter_next(it2), KV_EITER);
    kv_iter_free(it2);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Tokens, persistence, read-only                                           */
/* ======================================================================== */

static bool seen(const uint64_t *ts, size_t n, uint64_t t)
{
    for (size_t i = 0; i < n; i++)
        if (ts[i] == t)
            return true;
    return false;
}

START_TEST(test_tokens_never_repeat)
{
    OPEN(c);
    uint64_t ts[256];
    size_t n = 0;
    for (int round = 0; round < (c->b->reopenable ? 2 : 1); round++) {
        for (int i = 0; i < 20; i++) {
            uint64_t t = PUT(c, "/tok", "v", 0);
            ck_assert_msg(!seen(ts, n, t), "token %" PRIu64 " repeated", t);
            ts[n++] = t;
            uint64_t t2 = PUT(c, "/tok", "w", t);
            ck_assert_msg(!seen(ts, n, t2), "token %" PRIu64 " repeated", t2);
            ts[n++] = t2;
            EXPECT(kv_delete(c->s, K(c, "/tok"), t2), KV_OK);
        }
        if (c->b->reopenable)
            ctx_reopen(c, 0);
    }
    ctx_done(c);
}
END_TEST

START_TEST(test_persistence)
{
    OPEN(c);
    if (!c->b->reopenable) {
        ctx_done(c);
        return;
    }
    uint64_t t = PUT(c, "/p/a", "persist", 0);
    PUT(c, "/p/b", "", 0);
    kv_record recs[] = {{K(c, "/p/c/1"), "c1", 2, 0}, {K(c, "/p/c/2"), "c2", 2, 0}};
    EXPECT(kv_put_many(c->s, recs, 2, NULL), KV_OK);
    ctx_reopen(c, 0);
    ck_assert_uint_eq(GET(c, "/p/a", "persist"), t);
    GET(c, "/p/b", "");
    GET(c, "/p/c/2", "c2");
    char ids[8][64];
    kv_query q = kv_query_init(K(c, "/p"));
    ck_assert_uint_eq(query_ids(c, &q, ids, 8), 4);
    /* a write after reopen works with the token from before */
    PUT(c, "/p/a", "again", t);
    ctx_done(c);
}
END_TEST

START_TEST(test_readonly)
{
    OPEN(c);
    if (!c->b->reopenable) {
        ctx_done(c);
        return;
    }
    uint64_t t = PUT(c, "/ro", "v", 0);
    ctx_reopen(c, KV_READONLY);
    GET(c, "/ro", "v");
    ck_assert(has_(c, "/ro"));
    kv_record rec = {K(c, "/ro"), "w", 1, t};
    const kv_key *ks[] = {K(c, "/ro")};
    const kv_key *to[] = {K(c, "/ro2")};
    EXPECT(kv_put(c->s, &rec, NULL), KV_EREADONLY);
    EXPECT(kv_put_value(c->s, K(c, "/new"), "v", 1, NULL), KV_EREADONLY);
    EXPECT(kv_put_many(c->s, &rec, 1, NULL), KV_EREADONLY);
    EXPECT(kv_delete(c->s, K(c, "/ro"), t), KV_EREADONLY);
    EXPECT(kv_delete_many(c->s, &rec, 1), KV_EREADONLY);
    EXPECT(kv_put_atomic(c->s, &rec, 1, NULL), KV_EREADONLY);
    EXPECT(kv_delete_atomic(c->s, &rec, 1), KV_EREADONLY);
    EXPECT(kv_move_prefix_atomic(c->s, ks, to, 1), KV_EREADONLY);
    EXPECT(kv_drop_prefix(c->s, ks, 1), KV_EREADONLY);
    EXPECT(kv_try_put(c->s, &rec, 1, 3, NULL, NULL, NULL), KV_EREADONLY);
    EXPECT(kv_put(c->s, NULL, NULL), KV_EREADONLY); /* before EINVAL */
    GET(c, "/ro", "v");
    kv_query q = kv_query_init(K(c, "/"));
    char ids[4][64];
    ck_assert_uint_eq(query_ids(c, &q, ids, 4), 1);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Lost updates                                                             */
/* ======================================================================== */

enum { WRITERS = 8, INCREMENTS = 500 };

typedef struct incr {
    kv_store *s;
    const kv_key *key;
    int ok, conflicts, errors;
} incr;

static void incr_get(incr *w);

static void incr_on_put(kv_fut *f, void *arg)
{
    incr *w = arg;
    int st = kv_fut_status(f);
    kv_fut_free(f);
    if (st == KV_OK)
        w->ok++;
    else if (st == KV_ECONFLICT)
        w->conflicts++;
    else {
        w->errors++;
        return;
    }
    if (w->ok < INCREMENTS)
        incr_get(w);
}

static void incr_on_get(kv_fut *f, void *arg)
{
    incr *w = arg;
    if (kv_fut_status(f) != KV_OK) {
        w->errors++;
        kv_fut_free(f);
        return;
    }
    const kv_record *r = kv_fut_record(f);
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
    long v = strtol(buf, NULL, 10);
    int n = snprintf(buf, sizeof buf, "%ld", v + 1);
    kv_record rec = {r->key, buf, (size_t)n, r->token};
    kv_fut *p = kv_put(w->s, &rec, NULL);
    kv_fut_free(f);
    kv_fut_then(p, incr_on_put, w);
}

static void incr_get(incr *w)
{
    kv_fut_then(kv_get(w->s, w->key, NULL), incr_on_get, w);
}

static long counter_value(tctx *c)
{
    kv_fut *f = AWAIT(kv_get(c->s, K(c, "/counter"), NULL), KV_OK);
    const kv_record *r = kv_fut_record(f);
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
    kv_fut_free(f);
    return strtol(buf, NULL, 10);
}

/* 8 CAS read-modify-write loops in flight at once on one loop. */
START_TEST(test_lost_update_interleaved)
{
    OPEN(c);
    PUT(c, "/counter", "0", 0);
    incr w[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (incr){c->s, K(c, "/counter"), 0, 0, 0};
        incr_get(&w[i]);
    }
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    long total = 0, conflicts = 0;
    for (int i = 0; i < WRITERS; i++)
        conflicts += w[i].conflicts;
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "%s: interleaved: %d increments, %ld conflicts\n",
                c->b->name, WRITERS * INCREMENTS, conflicts);
    for (int i = 0; i < WRITERS; i++) {
        ck_assert_int_eq(w[i].errors, 0);
        ck_assert_int_eq(w[i].ok, INCREMENTS);
        total += w[i].ok;
    }
    ck_assert_int_eq(counter_value(c), total);
    ctx_done(c);
}
END_TEST

typedef struct thread_writer {
    const backend *b;
    kv_pool *pool;
    int ok, conflicts;
    int rc;
    char where[128];
} thread_writer;

static void *writer_thread(void *arg)
{
    thread_writer *t = arg;
    kv_loop *loop = NULL;
    kv_store *s = NULL;
    kv_key *key = NULL;
    t->rc = kv_loop_new(&loop, NULL);
    if (t->rc != KV_OK) {
        snprintf(t->where, sizeof t->where, "loop_new");
        return NULL;
    }
    t->rc = t->b->open(&s, loop, t->pool, tmpdir, 0);
    if (t->rc != KV_OK) {
        snprintf(t->where, sizeof t->where, "open: %s", kv_last_errmsg());
        kv_loop_free(loop);
        return NULL;
    }
    kv_key_parse(&key, "/counter");
    while (t->ok < INCREMENTS && t->rc == KV_OK) {
        kv_fut *g = kv_get(s, key, NULL);
        int rc = kv_wait(g);
        if (rc != KV_OK) {
            t->rc = rc;
            snprintf(t->where, sizeof t->where, "get: %s", kv_fut_errmsg(g));
            kv_fut_free(g);
            break;
        }
        const kv_record *r = kv_fut_record(g);
        char buf[32];
        snprintf(buf, sizeof buf, "%.*s", (int)r->len, (const char *)r->val);
        int n = snprintf(buf, sizeof buf, "%ld", strtol(buf, NULL, 10) + 1);
        kv_record rec = {key, buf, (size_t)n, r->token};
        kv_fut *p = kv_put(s, &rec, NULL);
        kv_fut_free(g);
        rc = kv_wait(p);
        if (rc == KV_OK)
            t->ok++;
        else if (rc == KV_ECONFLICT)
            t->conflicts++;
        else {
            t->rc = rc;
            snprintf(t->where, sizeof t->where, "put: %s", kv_fut_errmsg(p));
        }
        kv_fut_free(p);
    }
    kv_key_free(key);
    kv_fut *cf = kv_close(s);
    int rc = kv_wait(cf);
    if (t->rc == KV_OK && rc != KV_OK) {
        t->rc = rc;
        snprintf(t->where, sizeof t->where, "close");
    }
    kv_fut_free(cf);
    kv_store_free(s);
    rc = kv_loop_free(loop);
    if (t->rc == KV_OK && rc != KV_OK) {
        t->rc = rc;
        snprintf(t->where, sizeof t->where, "loop_free");
    }
    return NULL;
}

/* 8 threads, each with its own loop and store on the same data, one pool. */
START_TEST(test_lost_update_threads)
{
    OPEN(c);
    if (!c->b->shared) {
        ctx_done(c);
        return;
    }
    PUT(c, "/counter", "0", 0);
    thread_writer tw[WRITERS];
    pthread_t th[WRITERS];
    long conflicts = 0;
    for (int i = 0; i < WRITERS; i++) {
        tw[i] = (thread_writer){c->b, c->pool, 0, 0, KV_OK, ""};
        ck_assert_int_eq(pthread_create(&th[i], NULL, writer_thread, &tw[i]),
                         0);
    }
    long total = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(tw[i].rc == KV_OK, "writer %d: %s at %s", i,
                      kv_err_name(tw[i].rc), tw[i].where);
        total += tw[i].ok;
        conflicts += tw[i].conflicts;
    }
    if (getenv("KVT_VERBOSE"))
        fprintf(stderr, "%s: threads: %ld increments, %ld conflicts\n",
                c->b->name, total, conflicts);
    ck_assert_int_eq(total, WRITERS * INCREMENTS);
    ck_assert_int_eq(counter_value(c), total);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    struct {
        const char *name;
        const TTest *tests[16];
    } groups[] = {
        {"records",
         {test_put_get_has, test_put_tokens, test_delete_tokens,
          test_bad_arguments, test_cancel_and_free_pending}},
        {"batches",
         {test_batch_skipped, test_batch_duplicate, test_read_batches,
          test_atomic_all_or_nothing, test_move_prefix, test_drop_prefix}},
        {"queries",
         {test_query_prefix, test_query_sort, test_query_offset_limit,
          test_query_no_value, test_query_wildcards, test_query_empty,
          test_iter_rules, test_iter_concurrent_next, test_iter_streaming}},
        {"typed", {test_typed_roundtrip, test_typed_failures}},
        {"helpers",
         {test_try_put, test_try_delete, test_try_atomic, test_get_or_put,
          test_helper_cancel}},
        {"close",
         {test_close_idempotent, test_ops_after_close, test_close_inflight,
          test_close_undisposed_iter}},
        {"durability",
         {test_tokens_never_repeat, test_persistence, test_readonly}},
        {"concurrency", {test_lost_update_interleaved, test_lost_update_threads}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        TCase *tc = tcase_create(groups[g].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        for (size_t i = 0; i < 16 && groups[g].tests[i] != NULL; i++)
            tcase_add_loop_test(tc, groups[g].tests[i], 0, NBACKENDS);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return tu_run(store_suite());
}
