/*
 * check_redis.c - what the conformance suite cannot show about the Redis
 * backend: URI errors, shard=key placement over a cluster (spread, queries
 * merged across slots, atomic batches by {tag}), and a master stopped and
 * restarted mid-run.  Servers come from tests/redis_env.sh; without them
 * the server tests are skipped (they pass doing nothing).
 */
#include "config.h"

#include "testutil.h"

#ifdef HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

#include <errno.h>
#include <signal.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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

/* open_ctx for a test that also reaches the nodes of tests/redis_env.sh:
 * their directory (KV_TEST_REDIS_DIR), or NULL (the test skips). */
static const char *open_nodes_(ctx *c, const char *env, const char *opts,
                               const char *test)
{
    const char *dir = getenv("KV_TEST_REDIS_DIR");
    return dir != NULL && open_ctx_(c, env, opts, test) ? dir : NULL;
}

#define open_nodes(c, env, opts) open_nodes_(c, env, opts, __func__)

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
                         "redis://127.0.0.1:1/p?shard=nope",
                         "redis://127.0.0.1:1/p?timeout=",
                         "redis://127.0.0.1:1/p?timeout=-1",
                         "redis://127.0.0.1:1/p?timeout=5s",
                         "redis://127.0.0.1:1/p?timeout=3600001",
                         "redis://127.0.0.1:1/p?shard=key&x=1"};
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
    /* descending, offset and limit: each slot gives at most offset + limit
     * keys from its end */
    q.sort = KV_SORT_DESC;
    q.offset = 5;
    q.limit = 20;
    f = kv_query_open(c.s, &q, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    it = kv_fut_take_iter(f);
    kv_fut_free(f);
    f = kv_iter_fetch_all(it);
    ck_assert_kv(kv_wait(f), KV_OK);
    r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 20);
    for (size_t i = 0; i < n; i++)
        ck_assert_str_eq(kv_key_id(r[i].key), ids[N - 1 - 5 - i]);
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
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_CLUSTER", "");
    if (dir == NULL)
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

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Run the loop for ms (the library's own retries go on meanwhile). */
static void spin(ctx *c, uint64_t ms)
{
    ck_assert_kv(wait_free(kv_sleep(c->loop, ms)), KV_OK);
}

/* The first line of redis-cli's answer to cmd on node name. */
static void node_cli(const char *dir, const char *name, const char *cmd,
                     char *out, size_t outlen)
{
    char line[512];
    snprintf(line, sizeof line, "redis-cli -p %d %s", node_port(dir, name),
             cmd);
    FILE *p = popen(line, "r");
    ck_assert_ptr_nonnull(p);
    out[0] = '\0';
    if (fgets(out, (int)outlen, p) != NULL)
        out[strcspn(out, "\r\n")] = '\0';
    pclose(p);
}

/* The failover cluster (f1..f3, f4 a replica of f1): stop f1 with writes
 * in flight.  Every write succeeds or fails KV_EBACKEND; a failure whose
 * outcome is unknown is resolved by reading (the value is the attempted one
 * with a newer token, or the old one with the old token: never anything
 * else); tokens only grow; the store works again once f4 has taken over;
 * and a put retried after an unknown outcome with its old token conflicts
 * instead of overwriting the newer write. */
START_TEST(test_failover)
{
    ctx c;
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_FAILOVER", "");
    if (dir == NULL)
        return;
    enum { N = 150 };
    static char ids[N][32], vals[N][32], tried[N][32];
    static uint64_t toks[N], sent[N], unk_tok[N];
    static bool unknown[N], had_unknown[N];
    static kv_fut *fs[N];
    kv_key *keys[N];
    for (int i = 0; i < N; i++) {
        int rc;
        snprintf(ids[i], sizeof ids[i], "/fo/%d", i);
        snprintf(vals[i], sizeof vals[i], "v0-%d", i);
        keys[i] = K(&c, ids[i]);
        toks[i] = put(&c, ids[i], vals[i], 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    char cmd[600], role[64];
    node_cli(dir, "f4", "role", role, sizeof role);
    ck_assert_str_eq(role, "slave");
    snprintf(cmd, sizeof cmd, "sh '%s/f1/stop' >/dev/null 2>&1 &", dir);
    ck_assert_int_eq(system(cmd), 0);
    uint64_t start = mono_ms();
    int nok = 0, nfail = 0, nunknown = 0, napplied = 0, clean = 0, round;
    for (round = 1; clean < 2; round++) {
        ck_assert_msg(mono_ms() - start < 60000,
                      "the store did not recover within 60 s of the stop "
                      "(round %d, %d failures)",
                      round, nfail);
        /* resolve the unknown outcomes of the last round by reading */
        for (int i = 0; i < N; i++) {
            if (!unknown[i])
                continue;
            kv_fut *f = kv_get(c.s, keys[i], NULL);
            int rc = kv_wait(f);
            if (rc == KV_OK) {
                const kv_record *r = kv_fut_record(f);
                if (r->len == strlen(tried[i]) &&
                    memcmp(r->val, tried[i], r->len) == 0) {
                    ck_assert_uint_gt(r->token, toks[i]); /* applied once */
                    toks[i] = r->token;
                    memcpy(vals[i], tried[i], sizeof vals[i]);
                    napplied++;
                } else {
                    ck_assert_msg(r->len == strlen(vals[i]) &&
                                      memcmp(r->val, vals[i], r->len) == 0,
                                  "%s: neither the old nor the tried value",
                                  ids[i]);
                    ck_assert_uint_eq(r->token, toks[i]);
                }
                unknown[i] = false;
            } else {
                ck_assert_msg(rc == KV_EBACKEND, "get %s: %s (%s)", ids[i],
                              kv_err_name(rc), kv_fut_errmsg(f));
            }
            kv_fut_free(f);
        }
        /* one put per key, all in flight at once */
        for (int i = 0; i < N; i++) {
            fs[i] = NULL;
            if (unknown[i])
                continue;
            snprintf(tried[i], sizeof tried[i], "r%d-%d", round, i);
            kv_record r = {keys[i], tried[i], strlen(tried[i]), toks[i]};
            sent[i] = toks[i];
            fs[i] = kv_put(c.s, &r, NULL);
        }
        int failed = 0;
        for (int i = 0; i < N; i++) {
            if (fs[i] == NULL) {
                failed++;
                continue;
            }
            int rc = kv_wait(fs[i]);
            const char *msg = kv_fut_errmsg(fs[i]);
            if (rc == KV_OK) {
                uint64_t t = kv_fut_token(fs[i]);
                ck_assert_uint_gt(t, toks[i]);
                toks[i] = t;
                memcpy(vals[i], tried[i], sizeof vals[i]);
                nok++;
            } else {
                /* never a conflict: a failure said not applied was not */
                ck_assert_msg(rc == KV_EBACKEND, "put %s: %s (%s)", ids[i],
                              kv_err_name(rc), msg);
                ck_assert_msg(strstr(msg, "redis") != NULL, "message: %s",
                              msg);
                if (strstr(msg, "may or may not") != NULL) {
                    unknown[i] = had_unknown[i] = true;
                    unk_tok[i] = sent[i];
                    nunknown++;
                }
                nfail++;
                failed++;
            }
            kv_fut_free(fs[i]);
        }
        clean = failed == 0 && nfail > 0 ? clean + 1 : 0;
        if (failed > 0)
            ck_assert_kv(wait_free(kv_sleep(c.loop, 20)), KV_OK);
    }
    fprintf(stderr,
            "test_failover: %d rounds, %.1f s from the stop to recovery: %d "
            "puts ok, %d failed (%d with an unknown outcome, %d of those "
            "applied)\n",
            round - 1, (double)(mono_ms() - start) / 1000.0, nok, nfail,
            nunknown, napplied);
    ck_assert_int_gt(nfail, 0);
    node_cli(dir, "f4", "role", role, sizeof role);
    ck_assert_str_eq(role, "master");
    /* every record holds its last acknowledged value and token */
    for (int i = 0; i < N; i++) {
        kv_fut *f = kv_get(c.s, keys[i], NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        const kv_record *r = kv_fut_record(f);
        ck_assert_uint_eq(r->token, toks[i]);
        ck_assert(r->len == strlen(vals[i]) &&
                  memcmp(r->val, vals[i], r->len) == 0);
        kv_fut_free(f);
    }
    /* retried with the token it was sent with, a put of unknown outcome
     * conflicts: newer writes went on since (a key with no unknown outcome
     * uses its token from before the stop) */
    for (int i = 0; i < N; i++) {
        int rc;
        uint64_t old = had_unknown[i] ? unk_tok[i] : 0;
        if (!had_unknown[i]) {
            if (i % 10 != 0)
                continue;
            old = toks[i] - 1; /* older than the last write */
        }
        put(&c, ids[i], "stale", old, &rc, NULL, 0);
        ck_assert_kv(rc, KV_ECONFLICT);
    }
    close_ctx(&c);
}
END_TEST

#ifdef HAVE_HIREDIS
/* The test's own blocking connections to the nodes (hiredis sync API: only
 * here, never in the library). */
static redisContext *rconnect(const char *dir, const char *name)
{
    redisContext *r = redisConnect("127.0.0.1", node_port(dir, name));
    ck_assert_msg(r != NULL && r->err == 0, "connect %s: %s", name,
                  r ? r->errstr : "out of memory");
    return r;
}

/* A command (redisCommand format) that must not fail; the reply. */
static redisReply *rcall(redisContext *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r, fmt, ap);
    va_end(ap);
    ck_assert_msg(rep != NULL, "%s: %s", fmt, r->errstr);
    ck_assert_msg(rep->type != REDIS_REPLY_ERROR, "%s: %s", fmt, rep->str);
    return rep;
}

static long long rcall_int(redisContext *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r, fmt, ap);
    va_end(ap);
    ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_INTEGER, "%s: %s",
                  fmt, rep ? (rep->str ? rep->str : "not an integer")
                           : r->errstr);
    long long v = rep->integer;
    freeReplyObject(rep);
    return v;
}

/* calls=N of one command in INFO commandstats (0 if never called). */
static long long cmd_calls(redisContext *r, const char *name)
{
    redisReply *rep = rcall(r, "INFO commandstats");
    char pat[64];
    snprintf(pat, sizeof pat, "cmdstat_%s:calls=", name);
    const char *p = strstr(rep->str, pat);
    long long v = p ? atoll(p + strlen(pat)) : 0;
    freeReplyObject(rep);
    return v;
}

/* count=N of one error prefix in INFO errorstats (0 if never). */
static long long err_count(redisContext *r, const char *name)
{
    redisReply *rep = rcall(r, "INFO errorstats");
    char pat[64];
    snprintf(pat, sizeof pat, "errorstat_%s:count=", name);
    const char *p = strstr(rep->str, pat);
    long long v = p ? atoll(p + strlen(pat)) : 0;
    freeReplyObject(rep);
    return v;
}

/* MIGRATE the keys of slot that satisfy pick (of their name) src -> dst. */
static int migrate_keys(redisContext *src, int dport, int slot,
                        bool (*pick)(const char *k, size_t len))
{
    redisReply *ks = rcall(src, "CLUSTER GETKEYSINSLOT %d 10000", slot);
    ck_assert_int_eq(ks->type, REDIS_REPLY_ARRAY);
    const char **argv = calloc(ks->elements + 8, sizeof *argv);
    size_t *lens = calloc(ks->elements + 8, sizeof *lens);
    ck_assert(argv != NULL && lens != NULL);
    char port[16];
    snprintf(port, sizeof port, "%d", dport);
    const char *head[] = {"MIGRATE", "127.0.0.1", port, "", "0", "10000",
                          "KEYS"};
    int argc = 0;
    for (; argc < 7; argc++) {
        argv[argc] = head[argc];
        lens[argc] = strlen(head[argc]);
    }
    for (size_t i = 0; i < ks->elements; i++) {
        if (pick(ks->element[i]->str, ks->element[i]->len)) {
            argv[argc] = ks->element[i]->str;
            lens[argc++] = ks->element[i]->len;
        }
    }
    int moved = argc - 7;
    if (moved > 0) {
        redisReply *rep = redisCommandArgv(src, argc, argv, lens);
        ck_assert_msg(rep != NULL && rep->type == REDIS_REPLY_STATUS,
                      "MIGRATE: %s",
                      rep ? (rep->str ? rep->str : "?") : src->errstr);
        freeReplyObject(rep);
    }
    free(argv);
    free(lens);
    freeReplyObject(ks);
    return moved;
}

/* Which keys go first: the records of /mg{m}/k0../mg{m}/k9 (their Redis
 * key ends with the encoded "k<digit>\0"; no other key name does). */
static bool pick_first(const char *k, size_t len)
{
    return len >= 3 && k[len - 3] == 'k' && k[len - 2] >= '0' &&
           k[len - 2] <= '9' && k[len - 1] == '\0';
}

static bool pick_all(const char *k, size_t len)
{
    (void)k;
    (void)len;
    return true;
}

/* A hash slot moved from one master to another with the commands redis-cli
 * --cluster reshard uses (SETSLOT IMPORTING / MIGRATING, MIGRATE, SETSLOT
 * NODE), records being read and written meanwhile: reads of moved keys
 * follow ASK, scripts that find their keys split between the nodes are
 * resent until they can run (TRYAGAIN), everything follows MOVED once the
 * slot is the other node's; the slot's token counter and index move with
 * the records (one hash tag), so tokens never repeat and queries see every
 * record throughout. */
START_TEST(test_migration)
{
    ctx c;
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_CLUSTER", "");
    if (dir == NULL)
        return;
    enum { N = 30 };
    char ids[N][32];
    uint64_t toks[N];
    static uint64_t seen[8 * N];
    size_t nseen = 0;
    for (int i = 0; i < N; i++) {
        int rc;
        snprintf(ids[i], sizeof ids[i], "/mg{m}/k%d", i);
        toks[i] = put(&c, ids[i], ids[i], 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
        seen[nseen++] = toks[i];
    }
    /* the slot of tag m, its master (src) and another (dst) */
    redisContext *rc1 = rconnect(dir, "c1");
    int slot = (int)rcall_int(rc1, "CLUSTER KEYSLOT m");
    redisFree(rc1);
    const char *names[] = {"c1", "c2", "c3"};
    redisContext *r[3];
    int src = -1;
    for (int m = 0; m < 3; m++) {
        r[m] = rconnect(dir, names[m]);
        long long n = rcall_int(r[m], "CLUSTER COUNTKEYSINSLOT %d", slot);
        if (n > 0) {
            /* the records, the slot's token counter and its index: the
             * same hash slot */
            ck_assert_int_eq(n, N + 2);
            src = m;
        }
    }
    ck_assert_int_ge(src, 0);
    int dst = (src + 1) % 3, other = (src + 2) % 3;
    char sid[64], did[64];
    redisReply *rep = rcall(r[src], "CLUSTER MYID");
    snprintf(sid, sizeof sid, "%s", rep->str);
    freeReplyObject(rep);
    rep = rcall(r[dst], "CLUSTER MYID");
    snprintf(did, sizeof did, "%s", rep->str);
    freeReplyObject(rep);
    int dport = node_port(dir, names[dst]);
    long long asking0 = cmd_calls(r[dst], "asking");

    /* 1. migrating: the records k0..k9 moved, the rest, the counter and
     * the index still on src */
    freeReplyObject(
        rcall(r[dst], "CLUSTER SETSLOT %d IMPORTING %s", slot, sid));
    freeReplyObject(
        rcall(r[src], "CLUSTER SETSLOT %d MIGRATING %s", slot, did));
    ck_assert_int_eq(migrate_keys(r[src], dport, slot, pick_first), 10);
    for (int i = 0; i < N; i++) { /* reads: k0..k9 through ASK */
        kv_fut *f = kv_get(c.s, K(&c, ids[i]), NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        ck_assert_uint_eq(kv_fut_record(f)->token, toks[i]);
        kv_fut_free(f);
    }
    ck_assert_int_gt(cmd_calls(r[dst], "asking"), asking0);
    int rc;
    uint64_t t = put(&c, ids[20], "a", toks[20], &rc, NULL, 0); /* on src */
    ck_assert_kv(rc, KV_OK);
    ck_assert_uint_gt(t, toks[20]);
    toks[20] = seen[nseen++] = t;
    /* a query: the index is read on src, the values wherever they are */
    kv_query q = kv_query_init(K(&c, "/mg{m}"));
    kv_fut *f = kv_query_open(c.s, &q, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    f = kv_iter_fetch_all(it);
    ck_assert_kv(kv_wait(f), KV_OK);
    size_t n = 0;
    kv_fut_records(f, &n);
    ck_assert_uint_eq(n, N);
    kv_fut_free(f);
    kv_iter_free(it);
    /* k3's record is on dst, its counter on src: the script cannot run
     * yet (TRYAGAIN) and is resent */
    kv_record w3 = {K(&c, ids[3]), "b", 1, toks[3]};
    kv_fut *f3 = kv_put(c.s, &w3, NULL);
    spin(&c, 30);
    ck_assert(!kv_fut_done(f3));
    ck_assert_int_gt(err_count(r[src], "TRYAGAIN"), 0);

    /* 2. everything moved, the slot not handed over yet: scripts follow
     * ASK to dst, where every key they name now is */
    ck_assert_int_eq(migrate_keys(r[src], dport, slot, pick_all), N - 10 + 2);
    ck_assert_int_eq(rcall_int(r[src], "CLUSTER COUNTKEYSINSLOT %d", slot),
                     0);
    ck_assert_kv(kv_wait(f3), KV_OK);
    t = kv_fut_token(f3);
    kv_fut_free(f3);
    ck_assert_uint_gt(t, toks[3]);
    toks[3] = seen[nseen++] = t;
    t = put(&c, ids[20], "c", toks[20], &rc, NULL, 0);
    ck_assert_kv(rc, KV_OK);
    ck_assert_uint_gt(t, toks[20]);
    toks[20] = seen[nseen++] = t;
    /* a new key: its record exists nowhere, so dst answers TRYAGAIN until
     * the slot is its own */
    kv_record wn = {K(&c, "/mg{m}/new"), "n", 1, 0};
    kv_fut *fn = kv_put(c.s, &wn, NULL);
    spin(&c, 30);
    ck_assert(!kv_fut_done(fn));
    ck_assert_int_gt(err_count(r[dst], "TRYAGAIN"), 0);
    {
        /* a store closed while a command waits to be resent: the command
         * is cancelled, the close does not wait for the retry timer */
        kv_store *s2 = NULL;
        char uri[512];
        snprintf(uri, sizeof uri, "%s/%s", getenv("KV_TEST_REDIS_CLUSTER"),
                 prefix);
        ck_assert_kv(kv_redis_open(&s2, c.loop, NULL, uri, 0), KV_OK);
        kv_record w2 = {K(&c, "/mg{m}/other"), "o", 1, 0};
        kv_fut *f2 = kv_put(s2, &w2, NULL);
        spin(&c, 30);
        ck_assert(!kv_fut_done(f2));
        uint64_t t0 = mono_ms();
        kv_fut *fc = kv_close(s2);
        ck_assert_kv(kv_wait(fc), KV_OK);
        kv_fut_free(fc);
        ck_assert_uint_lt(mono_ms() - t0, 400);
        ck_assert_kv(kv_wait(f2), KV_ECANCELED);
        kv_fut_free(f2);
        kv_store_free(s2);
    }

    /* 3. the slot handed over: MOVED, and a new map */
    long long slots0 = 0;
    for (int m = 0; m < 3; m++)
        slots0 += cmd_calls(r[m], "cluster|slots");
    freeReplyObject(rcall(r[dst], "CLUSTER SETSLOT %d NODE %s", slot, did));
    freeReplyObject(rcall(r[src], "CLUSTER SETSLOT %d NODE %s", slot, did));
    freeReplyObject(
        rcall(r[other], "CLUSTER SETSLOT %d NODE %s", slot, did));
    ck_assert_kv(kv_wait(fn), KV_OK);
    seen[nseen++] = kv_fut_token(fn);
    kv_fut_free(fn);
    for (int i = 0; i < N; i++) {
        t = put(&c, ids[i], "d", toks[i], &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
        ck_assert_uint_gt(t, toks[i]);
        toks[i] = seen[nseen++] = t;
    }
    long long slots1 = 0;
    for (int m = 0; m < 3; m++)
        slots1 += cmd_calls(r[m], "cluster|slots");
    ck_assert_int_gt(slots1, slots0); /* the map was read again */
    ck_assert_int_eq(rcall_int(r[dst], "CLUSTER COUNTKEYSINSLOT %d", slot),
                     N + 3);
    /* no token was handed out twice in the slot (so never twice for a
     * key), and the counter went on from where it was on src */
    for (size_t i = 0; i < nseen; i++)
        for (size_t j = i + 1; j < nseen; j++)
            ck_assert_uint_ne(seen[i], seen[j]);
    for (size_t i = N; i < nseen; i++)
        for (size_t j = 0; j < N; j++)
            ck_assert_uint_gt(seen[i], seen[j]);
    for (int m = 0; m < 3; m++)
        redisFree(r[m]);
    close_ctx(&c);
}
END_TEST

/* Records of the query of prefix on s (kv_fut_records count). */
static size_t count_query(ctx *c, kv_store *s, const char *prefix_id)
{
    return tu_query_count(s, K(c, prefix_id));
}

/* Calls of a command summed over c1..c3. */
static long long calls3(redisContext **r, const char *name)
{
    long long v = 0;
    for (int m = 0; m < 3; m++)
        v += cmd_calls(r[m], name);
    return v;
}

/* shard=key queries and drops visit only the slots in the store's slot
 * directory (a bitmap written before the first record of a slot): another
 * client's records are found, a client that never saw a slot marks it
 * before writing there (once), and without a directory every slot is
 * read. */
START_TEST(test_slot_directory)
{
    ctx c;
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_CLUSTER", "");
    if (dir == NULL)
        return;
    char uri[512];
    snprintf(uri, sizeof uri, "%s/%s", getenv("KV_TEST_REDIS_CLUSTER"),
             prefix);
    kv_store *b = NULL; /* a second client, opened before any write */
    ck_assert_kv(kv_redis_open(&b, c.loop, NULL, uri, 0), KV_OK);
    const char *names[] = {"c1", "c2", "c3"};
    redisContext *r[3];
    for (int m = 0; m < 3; m++)
        r[m] = rconnect(dir, names[m]);
    int rc;
    const char *ids[] = {"/d/a", "/d/b", "/d/c", "/d/d", "/d/e"};
    for (int i = 0; i < 5; i++) {
        put(&c, ids[i], "v", 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    long long z0 = calls3(r, "zrangebylex"), g0 = calls3(r, "get");
    ck_assert_uint_eq(count_query(&c, b, "/d"), 5);
    long long dz = calls3(r, "zrangebylex") - z0;
    ck_assert_int_ge(dz, 1);
    ck_assert_int_le(dz, 5); /* one per slot holding records */
    ck_assert_int_eq(calls3(r, "get") - g0, 1);
    /* b writes into a slot it never saw: SETBIT first, once */
    long long s0 = calls3(r, "setbit");
    kv_record f1 = {K(&c, "/d/f"), "1", 1, 0};
    kv_fut *f = kv_put(b, &f1, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    f1.token = kv_fut_token(f);
    kv_fut_free(f);
    long long ds = calls3(r, "setbit") - s0;
    ck_assert_int_le(ds, 1); /* 0 if the query showed b the slot */
    f = kv_put(b, &f1, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    ck_assert_int_eq(calls3(r, "setbit") - s0, ds);
    ck_assert_uint_eq(count_query(&c, c.s, "/d"), 6);
    /* the directory deleted by hand: every slot is read, nothing missed */
    redisReply *rep = rcall(r[0], "CLUSTER KEYSLOT %s", prefix);
    long long sslot = rep->integer;
    freeReplyObject(rep);
    int deleted = 0;
    for (int m = 0; m < 3; m++) {
        redisReply *ks = rcall(r[m], "CLUSTER GETKEYSINSLOT %lld 100", sslot);
        for (size_t i = 0; i < ks->elements; i++) {
            const redisReply *k = ks->element[i];
            if (k->len > 2 && memcmp(k->str + k->len - 2, "\0s", 2) == 0 &&
                strncmp(k->str, prefix, strlen(prefix)) == 0)
                deleted += (int)rcall_int(r[m], "DEL %b", k->str, k->len);
        }
        freeReplyObject(ks);
    }
    ck_assert_int_eq(deleted, 1);
    z0 = calls3(r, "zrangebylex");
    ck_assert_uint_eq(count_query(&c, c.s, "/d"), 6);
    ck_assert_int_eq(calls3(r, "zrangebylex") - z0, 16384);
    /* a drop, still without a directory: every slot (the writer's cache
     * holds the slot of /d/g, so it sends no SETBIT) */
    kv_record g1 = {K(&c, "/d/g"), "1", 1, 0};
    f = kv_put(c.s, &g1, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    const kv_key *drop[] = {K(&c, "/d")};
    ck_assert_kv(wait_free(kv_drop_prefix(b, drop, 1)), KV_OK);
    ck_assert_uint_eq(count_query(&c, c.s, "/d"), 0);
    for (int m = 0; m < 3; m++)
        redisFree(r[m]);
    f = kv_close(b);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(b);
    close_ctx(&c);
}
END_TEST

/* A failover that lost the last writes of a slot leaves the new master
 * with an older token counter.  The tokens it hands out next must still be
 * new for every key (a client holding an older token must conflict, not
 * succeed): simulated by setting the counter back by hand. */
START_TEST(test_token_counter_back)
{
    ctx c;
    if (!open_ctx(&c, "KV_TEST_REDIS", ""))
        return;
    const char *uri = getenv("KV_TEST_REDIS");
    const char *colon = strrchr(uri, ':');
    ck_assert_ptr_nonnull(colon);
    redisContext *r = redisConnect("127.0.0.1", atoi(colon + 1));
    ck_assert_msg(r != NULL && r->err == 0, "connect %s", uri);

    int rc;
    uint64_t toks[6];
    toks[0] = put(&c, "/tb", "v0", 0, &rc, NULL, 0);
    ck_assert_kv(rc, KV_OK);

    /* the slot's counter: the store's key ending in "\0c" */
    redisReply *keys = rcall(r, "KEYS %s*", prefix);
    ck_assert_int_eq(keys->type, REDIS_REPLY_ARRAY);
    const char *ckey = NULL;
    size_t cklen = 0;
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *e = keys->element[i];
        if (e->len >= 2 && e->str[e->len - 2] == '\0' &&
            e->str[e->len - 1] == 'c') {
            ck_assert_ptr_null(ckey); /* one slot in use: one counter */
            ckey = e->str;
            cklen = e->len;
        }
    }
    ck_assert_ptr_nonnull(ckey);
    redisReply *saved = rcall(r, "GET %b", ckey, cklen);
    ck_assert_int_eq(saved->type, REDIS_REPLY_STRING);

    for (int i = 1; i < 6; i++) {
        toks[i] = put(&c, "/tb", "v", toks[i - 1], &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
        ck_assert_uint_gt(toks[i], toks[i - 1]);
    }
    /* the failover: the counter as it was after the first put */
    freeReplyObject(rcall(r, "SET %b %b", ckey, cklen, saved->str,
                          saved->len));
    struct timespec ms = {0, 2000000};
    nanosleep(&ms, NULL);

    /* a client still holding the second token must conflict */
    put(&c, "/tb", "stale", toks[1], &rc, NULL, 0);
    ck_assert_kv(rc, KV_ECONFLICT);
    uint64_t t = put(&c, "/tb", "after", toks[5], &rc, NULL, 0);
    ck_assert_kv(rc, KV_OK);
    for (int i = 0; i < 6; i++)
        ck_assert_uint_ne(t, toks[i]);
    ck_assert_uint_gt(t, toks[5]);
    /* ... and a delete and re-insert gets a new token too */
    kv_fut *f = kv_delete(c.s, K(&c, "/tb"), t);
    ck_assert_kv(wait_free(f), KV_OK);
    uint64_t t2 = put(&c, "/tb", "again", 0, &rc, NULL, 0);
    ck_assert_kv(rc, KV_OK);
    ck_assert_uint_gt(t2, t);

    freeReplyObject(saved);
    freeReplyObject(keys);
    redisFree(r);
    close_ctx(&c);
}
END_TEST
#endif

/* A node that stops answering (SIGSTOP: its connections stay open and no
 * reply comes): the commands waiting on it fail KV_EBACKEND, outcome
 * unknown, once the URI's timeout passes, while the other masters' keys
 * go on; when it runs again the store uses it again. */
START_TEST(test_hung_node)
{
    ctx c;
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_CLUSTER", "?timeout=300");
    if (dir == NULL)
        return;
    enum { N = 60 };
    char ids[N][32];
    uint64_t toks[N];
    kv_fut *fs[N];
    for (int i = 0; i < N; i++) {
        int rc;
        snprintf(ids[i], sizeof ids[i], "/h/%d", i);
        toks[i] = put(&c, ids[i], "v0", 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/c1/redis.pid", dir);
    FILE *pf = fopen(path, "r");
    ck_assert_msg(pf != NULL, "%s: %s", path, strerror(errno));
    long pid = 0;
    ck_assert_int_eq(fscanf(pf, "%ld", &pid), 1);
    fclose(pf);
    ck_assert_int_eq(kill((pid_t)pid, SIGSTOP), 0);
    uint64_t t0 = mono_ms();
    for (int i = 0; i < N; i++) {
        kv_record r = {K(&c, ids[i]), "v1", 2, toks[i]};
        fs[i] = kv_put(c.s, &r, NULL);
    }
    int ok = 0, timed_out = 0, other = 0;
    char bad[256] = "";
    for (int i = 0; i < N; i++) {
        int rc = kv_wait(fs[i]);
        const char *msg = kv_fut_errmsg(fs[i]);
        if (rc == KV_OK)
            ok++;
        else if (rc == KV_EBACKEND && strstr(msg, "no reply within 300 ms") &&
                 strstr(msg, "may or may not"))
            timed_out++;
        else if (other++ == 0)
            snprintf(bad, sizeof bad, "%s: %s", kv_err_name(rc), msg);
        kv_fut_free(fs[i]);
    }
    uint64_t waited = mono_ms() - t0;
    /* let it run again before any assertion can end the test */
    ck_assert_int_eq(kill((pid_t)pid, SIGCONT), 0);
    ck_assert_msg(other == 0, "%d unexpected results, first %s", other, bad);
    ck_assert_int_gt(ok, 0);
    ck_assert_int_gt(timed_out, 0);
    ck_assert_uint_ge(waited, 300);
    ck_assert_uint_lt(waited, 3000);
    /* every key writable again (after the node's back-off) */
    int round;
    for (round = 0; round < 100; round++) {
        int failed = 0;
        for (int i = 0; i < N; i++) {
            kv_fut *f = kv_get(c.s, K(&c, ids[i]), NULL);
            if (kv_wait(f) == KV_OK)
                toks[i] = kv_fut_record(f)->token;
            else
                failed++;
            kv_fut_free(f);
        }
        if (failed == 0)
            break;
        spin(&c, 100);
    }
    ck_assert_int_lt(round, 100);
    for (int i = 0; i < N; i++) {
        int rc;
        put(&c, ids[i], "v2", toks[i], &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    close_ctx(&c);
}
END_TEST

/* Many requests in flight on one connection, replies matched in order. */
START_TEST(test_pipelined)
{
    ctx c;
    if (!open_ctx(&c, "KV_TEST_REDIS", "?timeout=5000&shard=store"))
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
    /* idle, the store keeps nothing pending on the loop (no watchdog tick
     * left behind: it is 1 s here) */
    uint64_t t0 = mono_ms();
    ck_assert_int_ge(kv_loop_run(c.loop, KV_RUN_DEFAULT), 0);
    ck_assert_uint_lt(mono_ms() - t0, 500);
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
#ifdef HAVE_HIREDIS
    tcase_add_test(tc, test_migration);
    tcase_add_test(tc, test_slot_directory);
    tcase_add_test(tc, test_token_counter_back);
#endif
    tcase_add_test(tc, test_hung_node);
    tcase_add_test(tc, test_master_down);
    tcase_add_test(tc, test_failover);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(redis_suite());
}
