/*
 * conformance.c - the harness of the store conformance suite
 * (tests/conformance/): the backends table (one row per backend, the model
 * backend's two included), the per-test fixture, and the helpers the tests
 * share: see conformance.h.
 */
#include "config.h"

#include "conformance.h"
#include "core/core.h" /* kv__loop_call: commands to the driver thread */
#include "model.h"

#include <semaphore.h>
#include <string.h>

/* ======================================================================== */
/* Backend table                                                            */
/* ======================================================================== */

static int open_model(kv_store **out, kv_loop *loop, kv_pool *pool,
                      const char *dir, unsigned flags)
{
    (void)dir;
    return tu_model_open(out, loop, pool, flags, true);
}

static int open_model_noatomic(kv_store **out, kv_loop *loop, kv_pool *pool,
                               const char *dir, unsigned flags)
{
    (void)dir;
    return tu_model_open(out, loop, pool, flags, false);
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

/*
 * Redis rows with AUTH, on the servers with a password of
 * tests/redis_env.sh (KV_TEST_REDIS_AUTH; over TLS KV_TEST_REDIS_TLS and
 * KV_TEST_REDIS_TLS_CLUSTER, their CA in KV_TEST_REDIS_TLS_CA): the ACL
 * user kvuser, allowed only the keys kvacl* and the store's commands, so
 * the prefix starts with kvacl.  Without OpenSSL the TLS rows' variable is
 * one nobody sets: they are skipped.
 */
static int open_redis_user(kv_store **out, kv_loop *loop, kv_pool *pool,
                           const char *dir, unsigned flags, const char *env,
                           const char *opts)
{
    const char *uri = getenv(env);
    const char *hosts = uri != NULL ? strstr(uri, "://") : NULL;
    const char *base = strrchr(dir, '/');
    const char *ca = getenv("KV_TEST_REDIS_TLS_CA");
    bool tls = uri != NULL && strncmp(uri, "rediss:", 7) == 0;
    char full[4400];
    snprintf(full, sizeof full, "%s://kvuser:kv-pw@%s/kvacl%s%s%s%s",
             tls ? "rediss" : "redis", hosts ? hosts + 3 : "127.0.0.1:1",
             base ? base + 1 : dir, opts,
             !tls ? "" : opts[0] ? "&cacert=" : "?cacert=",
             tls && ca ? ca : "");
    return kv_redis_open(out, loop, pool, full, flags);
}

static int open_redis_auth(kv_store **out, kv_loop *loop, kv_pool *pool,
                           const char *dir, unsigned flags)
{
    return open_redis_user(out, loop, pool, dir, flags, "KV_TEST_REDIS_AUTH",
                           "");
}

static int open_rediss(kv_store **out, kv_loop *loop, kv_pool *pool,
                       const char *dir, unsigned flags)
{
    return open_redis_user(out, loop, pool, dir, flags, "KV_TEST_REDIS_TLS",
                           "");
}

static int open_rediss_cluster(kv_store **out, kv_loop *loop, kv_pool *pool,
                               const char *dir, unsigned flags)
{
    return open_redis_user(out, loop, pool, dir, flags,
                           "KV_TEST_REDIS_TLS_CLUSTER", "?shard=store");
}

#ifdef HAVE_OPENSSL
#define TLS_ENV(name) name
#else
#define TLS_ENV(name) "KV_TEST_REDIS_TLS_NEEDS_OPENSSL"
#endif

const backend backends[] = {
    {"sqlite-memory", open_sqlite_memory, false, false, NULL, true},
    {"sqlite-file", open_sqlite_file, true, true, NULL, true},
    {"fs", open_fs, true, false, NULL, true},
    {"fs-fanout", open_fs_fanout, true, false, NULL, false},
    {"model", open_model, false, false, NULL, true},
    {"model-noatomic", open_model_noatomic, false, false, NULL, false},
    {"redis", open_redis, true, true, "KV_TEST_REDIS", true},
    {"redis-cluster", open_redis_cluster, true, true, "KV_TEST_REDIS_CLUSTER",
     false},
    {"redis-auth", open_redis_auth, true, true, "KV_TEST_REDIS_AUTH", false},
    {"rediss", open_rediss, true, true, TLS_ENV("KV_TEST_REDIS_TLS"), true},
    {"rediss-cluster", open_rediss_cluster, true, true,
     TLS_ENV("KV_TEST_REDIS_TLS_CLUSTER"), false},
};
#define NBACKENDS ((int)(sizeof backends / sizeof backends[0]))

/* The rows: every backend locally, then the remote ones in both modes. */
typedef struct trow {
    int b;
    tmode mode;
} trow;
static trow rows[3 * NBACKENDS];
static int nrows;

static void make_rows(void)
{
    nrows = 0;
    for (int m = TM_LOCAL; m <= TM_NOLOOP; m++)
        for (int i = 0; i < NBACKENDS; i++)
            if (m == TM_LOCAL || backends[i].remote)
                rows[nrows++] = (trow){i, (tmode)m};
}

static const char *const mode_names[] = {"local", "remote", "noloop"};

/* ======================================================================== */
/* Harness                                                                  */
/* ======================================================================== */

char *tmpdir;

void setup(void)
{
    tu_tmpdir_new(&tmpdir);
}

void teardown(void)
{
    tu_tmpdir_free(&tmpdir);
}

/* ------------------------------------------------------------------------ */
/* The driver thread of the remote modes                                    */
/* ------------------------------------------------------------------------ */

/* A command run on the driver thread (a call forwarded to its loop). */
typedef struct command {
    kv__call call;
    tctx *c;
    kv_store **out;
    unsigned flags;
    int rc;
    char msg[512];
    sem_t done;
} command;

static void run_open(kv__call *call)
{
    command *cmd = (command *)(void *)call;
    tctx *c = cmd->c;
    cmd->rc = c->b->open(cmd->out, c->sloop, c->pool, tmpdir, cmd->flags);
    snprintf(cmd->msg, sizeof cmd->msg, "%s", kv_last_errmsg());
    sem_post(&cmd->done);
}

/* Set stop on the driver's own thread: set from the test thread, the
 * driver could see it, exit and free its loop before the wake-up call
 * reached the loop. */
static void run_stop(kv__call *call)
{
    command *cmd = (command *)(void *)call;
    atomic_store(&cmd->c->stop, true);
    sem_post(&cmd->done);
}

/* Run fn on the driver thread and wait for it. */
static void driver_do(tctx *c, command *cmd, void (*fn)(kv__call *))
{
    cmd->c = c;
    cmd->call.run = fn;
    ck_assert_int_eq(sem_init(&cmd->done, 0, 0), 0);
    kv__loop_call(c->sloop, &cmd->call);
    while (sem_wait(&cmd->done) != 0)
        ; /* EINTR */
    sem_destroy(&cmd->done);
}

/*
 * The driver: makes the store's loop and runs it until told to stop.  A
 * long timer keeps kv_loop_run blocking (with nothing of its own in flight
 * it would return at once); forwarded calls wake it through the eventfd.
 */
static void *driver_main(void *arg)
{
    tctx *c = arg;
    sem_t *ready = c->sloop_ready;
    c->driver_rc = kv_loop_new(&c->sloop, NULL);
    sem_post(ready);
    if (c->driver_rc != KV_OK)
        return NULL;
    kv_fut *keep = kv_sleep(c->sloop, 24ull * 3600 * 1000);
    while (!atomic_load(&c->stop))
        if (kv_loop_run(c->sloop, KV_RUN_ONCE) < 0)
            break;
    kv_fut_cancel(keep);
    kv_fut_free(keep);
    while (kv_loop_alive(c->sloop))
        if (kv_loop_run(c->sloop, KV_RUN_DEFAULT) < 0)
            break;
    c->driver_rc = kv_loop_free(c->sloop);
    return NULL;
}

static void driver_start(tctx *c)
{
    sem_t ready;
    ck_assert_int_eq(sem_init(&ready, 0, 0), 0);
    c->sloop_ready = &ready;
    atomic_init(&c->stop, false);
    ck_assert_int_eq(pthread_create(&c->driver, NULL, driver_main, c), 0);
    while (sem_wait(&ready) != 0)
        ;
    sem_destroy(&ready);
    ck_assert_msg(c->driver_rc == KV_OK, "driver: kv_loop_new: %s",
                  kv_err_name(c->driver_rc));
}

static void driver_stop(tctx *c)
{
    command cmd;
    driver_do(c, &cmd, run_stop);
    ck_assert_int_eq(pthread_join(c->driver, NULL), 0);
    ck_assert_msg(c->driver_rc == KV_OK,
                  "the store's loop did not free cleanly: %s",
                  kv_err_name(c->driver_rc));
}

int ctx_open(tctx *c, kv_store **out, unsigned flags)
{
    if (c->mode == TM_LOCAL)
        return c->b->open(out, c->loop, c->pool, tmpdir, flags);
    command cmd;
    cmd.out = out;
    cmd.flags = flags;
    driver_do(c, &cmd, run_open);
    if (cmd.rc != KV_OK)
        fprintf(stderr, "%s: open on the driver: %s\n", c->b->name, cmd.msg);
    return cmd.rc;
}

bool ctx_init(tctx *c, int i)
{
    memset(c, 0, sizeof *c);
    if (nrows == 0)
        make_rows();
    ck_assert_int_lt(i, nrows);
    c->b = &backends[rows[i].b];
    c->mode = rows[i].mode;
    char rowname[64];
    snprintf(rowname, sizeof rowname, "%s%s%s", c->b->name,
             c->mode == TM_LOCAL ? "" : "+", c->mode == TM_LOCAL ? ""
                                           : mode_names[c->mode]);
    const char *only = getenv("KVT_BACKEND");
    if (only != NULL && only[0] != '\0' && strcmp(only, c->b->name) != 0 &&
        strcmp(only, rowname) != 0)
        return false;
    const char *mode = getenv("KVT_MODE");
    if (mode != NULL && mode[0] != '\0' && strcmp(mode, mode_names[c->mode]))
        return false;
    if (c->b->env != NULL && getenv(c->b->env) == NULL)
        return false; /* no server: skipped */
    if (c->mode == TM_NOLOOP) {
        c->loop = kv_thread_loop(); /* the test thread's private loop */
        ck_assert_ptr_nonnull(c->loop);
    } else {
        ck_assert_kv(kv_loop_new(&c->loop, NULL), KV_OK);
    }
    ck_assert_kv(kv_pool_new(&c->pool, 2), KV_OK);
    if (c->mode != TM_LOCAL)
        driver_start(c);
    int rc = ctx_open(c, &c->s, 0);
    ck_assert_msg(rc == KV_OK, "%s: open: %s (%s)", rowname, kv_err_name(rc),
                  kv_last_errmsg());
    ck_assert(kv_store_loop(c->s) == (c->mode == TM_LOCAL ? c->loop : c->sloop));
    return true;
}

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
void ctx_reopen(tctx *c, unsigned flags)
{
    store_close_free(c->s);
    c->s = NULL;
    int rc = ctx_open(c, &c->s, flags);
    ck_assert_msg(rc == KV_OK, "reopen: %s (%s)", kv_err_name(rc),
                  kv_last_errmsg());
}

void ctx_done(tctx *c)
{
    if (c->s != NULL)
        store_close_free(c->s);
    c->s = NULL;
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    if (c->mode != TM_LOCAL)
        driver_stop(c); /* after the forwarded free: calls run in order */
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (size_t i = 0; i < c->nkeys; i++)
        kv_key_free(c->keys[i]);
    ck_assert_kv(kv_loop_free(c->loop), KV_OK);
    kv_pool_free(c->pool);
}

/* A key valid until ctx_done. */
kv_key *K(tctx *c, const char *path)
{
    ck_assert_uint_lt(c->nkeys, MAXKEYS);
    kv_key *k = NULL;
    ck_assert_msg(kv_key_parse(&k, path) == KV_OK, "bad key %s", path);
    c->keys[c->nkeys++] = k;
    return k;
}

bool val_is(const kv_record *r, const char *s)
{
    return r != NULL && r->len == strlen(s) &&
           (r->len == 0 || memcmp(r->val, s, r->len) == 0);
}

uint64_t put_(tctx *c, const char *key, const char *val, uint64_t tok, int want,
              int line)
{
    kv_record r = {K(c, key), (void *)val, strlen(val), tok};
    kv_fut *f = tu_await(kv_put(c->s, &r, NULL), want, "kv_put", line);
    /* Every mode: the future completes on the test thread's loop. */
    ck_assert_msg(kv_fut_loop(f) == c->loop, "line %d: future's loop", line);
    uint64_t t = kv_fut_token(f);
    kv_fut_free(f);
    if (want == KV_OK)
        ck_assert_msg(t != 0, "line %d: put returned token 0", line);
    return t;
}
/* Get key: its token, asserting its value (NULL: asserting it is absent). */
uint64_t get_(tctx *c, const char *key, const char *val, int line)
{
    kv_fut *f = tu_await(kv_get(c->s, K(c, key), NULL),
                         val ? KV_OK : KV_ENOTFOUND, "kv_get", line);
    uint64_t t = 0;
    if (val != NULL) {
        const kv_record *r = kv_fut_record(f);
        ck_assert_msg(val_is(r, val), "line %d: %s: value differs", line, key);
        ck_assert_msg(kv_key_equal(r->key, K(c, key)), "line %d: key", line);
        t = r->token;
        ck_assert_msg(t != 0, "line %d: token 0", line);
    }
    kv_fut_free(f);
    return t;
}

bool has_(tctx *c, const char *key)
{
    kv_fut *f = AWAIT(kv_has(c->s, K(c, key)), KV_OK);
    bool b = kv_fut_bool(f);
    kv_fut_free(f);
    return b;
}

/* Does keys[0..n) hold exactly the ids listed (any order)? */
static bool keys_are(const kv_key *const *keys, size_t n,
                     const char *const *ids, size_t nids)
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

bool fut_keys_are(const kv_fut *f, const char *const *ids, size_t nids)
{
    size_t n = 0;
    const kv_key *const *keys = kv_fut_keys(f, &n);
    return keys_are(keys, n, ids, nids);
}
/* Run the whole query with next calls; ids of the results in order. */
size_t query_ids(tctx *c, const kv_query *q, char ids[][64], size_t max)
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
int cmp_ids(const void *a, const void *b)
{
    kv_key *ka = NULL, *kb = NULL;
    ck_assert_int_eq(kv_key_parse(&ka, *(const char *const *)a), KV_OK);
    ck_assert_int_eq(kv_key_parse(&kb, *(const char *const *)b), KV_OK);
    int r = kv_key_cmp(ka, kb);
    kv_key_free(ka);
    kv_key_free(kb);
    return r;
}

void put_all(tctx *c, const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        PUT(c, ids[i], ids[i], 0);
}

/* A callback that counts completions (and frees the future). */
void on_count(kv_fut *f, void *arg)
{
    counted *n = arg;
    n->calls++;
    n->status = kv_fut_status(f);
    kv_fut_free(f);
}
/* ======================================================================== */
/* Typed records: a codec for "name:age" persons                             */
/* ======================================================================== */

int p_encode(const void *obj, kv_buf *out, void *ctx)
{
    (void)ctx;
    const person *p = obj;
    if (p->age < 0)
        return KV_ERROR; /* encode failure on purpose */
    char tmp[64];
    int n = snprintf(tmp, sizeof tmp, "%s:%d", p->name, p->age);
    return kv_buf_append(out, tmp, (size_t)n);
}

int p_decode(const void *bytes, size_t len, void **out, void *ctx)
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

void p_free(void *obj, void *ctx)
{
    pctx *pc = ctx;
    pc->live--;
    free(obj);
}

kv_codec person_codec(pctx *pc)
{
    kv_codec c = {p_encode, p_decode, p_free, pc};
    return c;
}

/* ======================================================================== */
/* get_or_put producers                                                     */
/* ======================================================================== */

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

kv_fut *produce(const kv_key *key, void *arg)
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

/* ======================================================================== */
/* Runner                                                                   */
/* ======================================================================== */

int tu_conformance_run(const char *group, const TTest *const *tests,
                       size_t ntests)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create(group);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    make_rows();
    for (size_t i = 0; i < ntests; i++)
        tcase_add_loop_test(tc, tests[i], 0, nrows);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
