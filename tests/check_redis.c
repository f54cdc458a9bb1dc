/*
 * check_redis.c - what the conformance suite cannot show about the Redis
 * backend: URI errors, shard=key placement over a cluster (spread, queries
 * merged across slots, atomic batches by {tag}), and a master stopped and
 * restarted mid-run.  Servers come from tests/redis_env.sh; without them
 * the server tests are skipped (they pass doing nothing).
 */
#include "config.h"

#include "testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

static char prefix[64];
static int seq;

static void setup(void)
{
    snprintf(prefix, sizeof prefix, "cr%ld-%d", (long)getpid(), ++seq);
}

typedef struct ctx {
    kv_loop *loop;
    kv_store *s;
    kv_key *keys[8192];
    size_t nkeys;
} ctx;

static bool open_ctx_(ctx *c, const char *env, const char *opts,
                      const char *test)
{
    memset(c, 0, sizeof *c);
    const char *base = getenv(env);
    if (base == NULL) {
        fprintf(stderr, "check_redis: %s not set (tests/redis_env.sh sets "
                        "it when redis-server is installed): %s skipped\n",
                env, test);
        return false;
    }
    char uri[512];
    snprintf(uri, sizeof uri, "%s/%s%s", base, prefix, opts);
    ck_assert_kv(kv_loop_new(&c->loop, NULL), KV_OK);
    int rc = kv_redis_open(&c->s, c->loop, NULL, uri, 0);
    ck_assert_msg(rc == KV_OK, "open %s: %s (%s)", uri, kv_err_name(rc),
                  kv_last_errmsg());
    return true;
}

#define open_ctx(c, env, opts) open_ctx_(c, env, opts, __func__)

static void close_ctx(ctx *c)
{
    kv_fut *f = kv_close(c->s);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(c->s);
    ck_assert_int_ge(kv_loop_run(c->loop, KV_RUN_DEFAULT), 0);
    for (size_t i = 0; i < c->nkeys; i++)
        kv_key_free(c->keys[i]);
    ck_assert_kv(kv_loop_free(c->loop), KV_OK);
}

static kv_key *K(ctx *c, const char *path)
{
    ck_assert_uint_lt(c->nkeys, 8192);
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, path), KV_OK);
    c->keys[c->nkeys++] = k;
    return k;
}

/* Wait for f; return its status (f freed unless keep). */
static int wait_free(kv_fut *f)
{
    int rc = kv_wait(f);
    kv_fut_free(f);
    return rc;
}

static uint64_t put(ctx *c, const char *key, const char *val, uint64_t tok,
                    int *rc_out, char *msg, size_t msglen)
{
    kv_record r = {K(c, key), (void *)val, strlen(val), tok};
    kv_fut *f = kv_put(c->s, &r, NULL);
    int rc = kv_wait(f);
    uint64_t t = kv_fut_token(f);
    if (msg != NULL)
        snprintf(msg, msglen, "%s", kv_fut_errmsg(f));
    kv_fut_free(f);
    *rc_out = rc;
    return t;
}

/* The client port of node name (c1, f4...) of tests/redis_env.sh. */
static int node_port(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/port", dir, name);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    int port = 0;
    ck_assert_int_eq(fscanf(f, "%d", &port), 1);
    fclose(f);
    return port;
}

static long node_dbsize(const char *dir, int n)
{
    char name[8], cmd[128];
    snprintf(name, sizeof name, "c%d", n);
    snprintf(cmd, sizeof cmd, "redis-cli -p %d dbsize", node_port(dir, name));
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    long v = -1;
    if (fscanf(p, "%ld", &v) != 1)
        v = -1;
    pclose(p);
    return v;
}

/* ------------------------------------------------------------------------ */

START_TEST(test_uri_errors)
{
    kv_loop *loop = NULL;
    kv_store *s = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    const char *bad[] = {"http://127.0.0.1:1", "redis://", "redis://x.y:1",
                         "redis://127.0.0.1:0", "redis://127.0.0.1:1/a b",
                         "redis://127.0.0.1:1/p?shard=nope"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = kv_redis_open(&s, loop, NULL, bad[i], 0);
        ck_assert_msg(rc == KV_EINVAL, "%s: %s", bad[i], kv_err_name(rc));
        ck_assert(kv_last_errmsg()[0] != '\0');
    }
    ck_assert_kv(kv_redis_open(NULL, loop, NULL, "redis://127.0.0.1:1", 0),
                 KV_EINVAL);
    /* nothing listens on port 1 */
    int rc = kv_redis_open(&s, loop, NULL, "redis://127.0.0.1:1", 0);
    ck_assert_msg(rc == KV_EBACKEND || rc == KV_ENOTSUP, "%s",
                  kv_err_name(rc));
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), rc == KV_EBACKEND
                                                       ? "127.0.0.1:1"
                                                       : "hiredis"));
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* shard=key over the cluster: spread, merged queries, atomic by {tag}. */
START_TEST(test_cluster_keymode)
{
    ctx c;
    if (!open_ctx(&c, "KV_TEST_REDIS_CLUSTER", ""))
        return;
    const char *dir = getenv("KV_TEST_REDIS_DIR");
    ck_assert_str_eq(kv_store_backend(c.s), "redis-cluster");
    enum { N = 300 };
    kv_record recs[N];
    char ids[N][32];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "/q/%03d", i);
        recs[i] = (kv_record){K(&c, ids[i]), ids[i], strlen(ids[i]), 0};
    }
    kv_fut *f = kv_put_many(c.s, recs, N, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    /* every master holds some of them */
    if (dir != NULL)
        for (int m = 1; m <= 3; m++)
            ck_assert_int_gt(node_dbsize(dir, m), 10);
    /* a prefix query merges the slots in order */
    kv_query q = kv_query_init(K(&c, "/q"));
    q.offset = 10;
    q.limit = 200;
    f = kv_query_open(c.s, &q, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    f = kv_iter_fetch_all(it);
    ck_assert_kv(kv_wait(f), KV_OK);
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 200);
    for (size_t i = 0; i < n; i++) {
        ck_assert_str_eq(kv_key_id(r[i].key), ids[i + 10]);
        ck_assert_uint_eq(r[i].len, strlen(ids[i + 10]));
    }
    kv_fut_free(f);
    kv_iter_free(it);
    /* atomic across slots: KV_ENOTSUP saying why */
    kv_record two[] = {{K(&c, "/x/a"), "1", 1, 0}, {K(&c, "/x/b"), "2", 1, 0}};
    f = kv_put_atomic(c.s, two, 2, NULL);
    ck_assert_kv(kv_wait(f), KV_ENOTSUP);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "hash slot"));
    kv_fut_free(f);
    /* with a common {tag}: atomic */
    kv_record tagged[] = {{K(&c, "/u{7}/a"), "1", 1, 0},
                          {K(&c, "/u{7}/b"), "2", 1, 0},
                          {K(&c, "/u{7}/c"), "3", 1, 12345}};
    f = kv_put_atomic(c.s, tagged, 3, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 1);
    kv_fut_free(f);
    f = kv_has(c.s, K(&c, "/u{7}/a"));
    ck_assert_kv(kv_wait(f), KV_OK);
    ck_assert(!kv_fut_bool(f));
    kv_fut_free(f);
    f = kv_put_atomic(c.s, tagged, 2, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    /* move needs shard=store */
    const kv_key *from[] = {K(&c, "/q")}, *to[] = {K(&c, "/r")};
    ck_assert_kv(wait_free(kv_move_prefix_atomic(c.s, from, to, 1)),
                 KV_ENOTSUP);
    /* drop across slots, /q1 style neighbours untouched */
    int rc;
    put(&c, "/q0", "keep", 0, &rc, NULL, 0);
    ck_assert_kv(rc, KV_OK);
    const kv_key *drop[] = {K(&c, "/q")};
    ck_assert_kv(wait_free(kv_drop_prefix(c.s, drop, 1)), KV_OK);
    kv_query all = kv_query_init(K(&c, "/"));
    all.value = false;
    f = kv_query_open(c.s, &all, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    it = kv_fut_take_iter(f);
    kv_fut_free(f);
    f = kv_iter_fetch_all(it);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 3); /* /q0, /u{7}/a, /u{7}/b */
    kv_fut_free(f);
    kv_iter_free(it);
    close_ctx(&c);
}
END_TEST

/* Stop one master mid-run: its keys fail clearly, the rest work; after a
 * restart everything works again; a stale retry conflicts. */
START_TEST(test_master_down)
{
    ctx c;
    const char *dir = getenv("KV_TEST_REDIS_DIR");
    if (dir == NULL || !open_ctx(&c, "KV_TEST_REDIS_CLUSTER", ""))
        return;
    enum { N = 60 };
    char ids[N][32];
    uint64_t toks[N];
    for (int i = 0; i < N; i++) {
        int rc;
        snprintf(ids[i], sizeof ids[i], "/f/%d", i);
        toks[i] = put(&c, ids[i], "v0", 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "sh '%s/c2/stop'", dir);
    ck_assert_int_eq(system(cmd), 0);
    int ok = 0, failed = 0;
    for (int i = 0; i < N; i++) {
        int rc;
        char msg[256];
        uint64_t t = put(&c, ids[i], "v1", toks[i], &rc, msg, sizeof msg);
        if (rc == KV_OK) {
            toks[i] = t;
            ok++;
        } else {
            ck_assert_msg(rc == KV_EBACKEND, "%s: %s (%s)", ids[i],
                          kv_err_name(rc), msg);
            ck_assert_msg(strstr(msg, "redis node") != NULL, "message: %s",
                          msg);
            failed++;
        }
    }
    ck_assert_int_gt(ok, 0);
    ck_assert_int_gt(failed, 0);
    snprintf(cmd, sizeof cmd, "sh '%s/c2/start'", dir);
    ck_assert_int_eq(system(cmd), 0);
    /* wait (at most 20 s) until every key answers again */
    int round;
    for (round = 0; round < 100; round++) {
        int bad = 0;
        for (int i = 0; i < N; i++) {
            kv_fut *f = kv_get(c.s, K(&c, ids[i]), NULL);
            int rc = kv_wait(f);
            if (rc == KV_OK)
                toks[i] = kv_fut_record(f)->token;
            else
                bad++;
            kv_fut_free(f);
        }
        if (bad == 0)
            break;
        ck_assert_kv(wait_free(kv_sleep(c.loop, 200)), KV_OK);
    }
    ck_assert_int_lt(round, 100);
    /* everything writable again; a retry with the token from before the
     * last write conflicts instead of overwriting it */
    for (int i = 0; i < N; i++) {
        int rc;
        uint64_t old = toks[i];
        uint64_t t = put(&c, ids[i], "v2", old, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
        ck_assert_uint_ne(t, old);
        put(&c, ids[i], "stale", old, &rc, NULL, 0);
        ck_assert_kv(rc, KV_ECONFLICT);
    }
    close_ctx(&c);
}
END_TEST

/* Many requests in flight on one connection, replies matched in order. */
START_TEST(test_pipelined)
{
    ctx c;
    if (!open_ctx(&c, "KV_TEST_REDIS", ""))
        return;
    enum { N = 2000 };
    kv_fut *fs[N];
    char vals[N][16];
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "/p/%d", i);
        snprintf(vals[i], sizeof vals[i], "v%d", i);
        kv_record r = {K(&c, id), vals[i], strlen(vals[i]), 0};
        fs[i] = kv_put(c.s, &r, NULL);
    }
    for (int i = 0; i < N; i++)
        ck_assert_kv(wait_free(fs[i]), KV_OK);
    for (int i = 0; i < N; i++)
        fs[i] = kv_get(c.s, c.keys[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(fs[i]), KV_OK);
        const kv_record *r = kv_fut_record(fs[i]);
        ck_assert(r->len == strlen(vals[i]) &&
                  memcmp(r->val, vals[i], r->len) == 0);
        kv_fut_free(fs[i]);
    }
    close_ctx(&c);
}
END_TEST

static Suite *redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *tc = tcase_create("redis");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_uri_errors);
    tcase_add_test(tc, test_pipelined);
    tcase_add_test(tc, test_cluster_keymode);
    tcase_add_test(tc, test_master_down);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(redis_suite());
}
