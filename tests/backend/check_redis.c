/*
 * check_redis.c - what the conformance suite cannot show about the Redis
 * backend: URI errors, shard=key placement over a cluster (spread, queries
 * merged across slots, atomic batches by {tag}), a master stopped and
 * restarted mid-run, and, through a proxy of the test's own in front of
 * the single server, a connect that is never answered and the transient
 * errors a server refuses commands with.  Servers come from
 * tests/redis_env.sh; without them the server tests are skipped (they pass
 * doing nothing).
 */
#include "config.h"

#include "testutil.h"

#ifdef HAVE_HIREDIS
#include <hiredis/hiredis.h>

#include "backend/redis/resolve.h" /* kv__redis_test_resolve */
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
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
    char name[16], cmd[128];
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

/* URIs refused before any connection: KV_EINVAL, with a message naming
 * what is wrong (and never the password). */
START_TEST(test_uri_errors)
{
    kv_loop *loop = NULL;
    kv_store *s = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    static char longhost[400], longuser[400], longpass[700], longpre[300],
        manyhosts[2000];
    memset(longhost, 'a', 270);
    memcpy(longhost, "redis://", 8);
    memset(longuser, 'u', 300);
    memcpy(longuser, "redis://", 8);
    memcpy(longuser + 300, ":p@h", 5);
    memset(longpass, 'p', 600);
    memcpy(longpass, "redis://u:", 10);
    memcpy(longpass + 600, "@h", 3);
    snprintf(longpre, sizeof longpre, "redis://h/%0270d", 7);
    longpre[10] = 'x';
    size_t o = (size_t)snprintf(manyhosts, sizeof manyhosts, "redis://h0");
    for (int i = 1; i <= 64; i++)
        o += (size_t)snprintf(manyhosts + o, sizeof manyhosts - o, ",h%d", i);
    static const struct {
        const char *uri, *msg;
    } bad[] = {
        {"http://127.0.0.1:1", "redis://"},
        {"redis://", "no host"},
        {"redis://127.0.0.1:0", "bad port"},
        {"redis://127.0.0.1:65536", "bad port"},
        {"redis://127.0.0.1:99999999999", "bad port"},
        {"redis://127.0.0.1:", "bad port"},
        {"redis://127.0.0.1:6x", "bad port"},
        {"redis://127.0.0.1:1/a b", "prefix"},
        {"redis://127.0.0.1:1/1", "not a database number"},
        {"redis://127.0.0.1:1/0042?shard=key", "not a database number"},
        {"redis://h,/p", "empty host"},
        {"redis://h,,h2/p", "empty host"},
        {"redis://h/p?shard=nope", "shard="},
        {"redis://h/p?timeout=", "timeout="},
        {"redis://h/p?timeout=-1", "timeout="},
        {"redis://h/p?timeout=5s", "timeout="},
        {"redis://h/p?timeout=3600001", "timeout="},
        {"redis://h/p?timeout=99999999999999999999999", "timeout="},
        {"redis://h/p?shard=key&x=1", "unknown URI option x"},
        {"redis://h/p?db=2", "unknown URI option db"},
        {"redis://h/p?shard", "no value"},
        {"redis://h/p?shard=key&", "empty URI option"},
        {"redis://h/p?&shard=key", "empty URI option"},
        {"redis://h/p?verify=2", "verify="},
        {"redis://h/p?cacert=/x", "TLS only"},
        {"redis://h/p?verify=0", "TLS only"},
        {"rediss://h/p?cert=/x", "go together"},
        {"rediss://h/p?sni=a%20b", "bad sni="},
        {"rediss://h/p?cacert=", "empty"},
        {"redis://h/p#frag", "fragment"},
        {"redis://::1:6379/p", "bracketed"},
        {"redis://[::1/p", "closing"},
        {"redis://[::g]:1/p", "not an IPv6"},
        {"redis://[::1]x/p", "':port'"},
        {"redis://[]/p", "IPv6"},
        {"redis://h_/p?password_file=/x&x", "no value"},
        {"redis://u:p%4@h/p", "percent escape"},
        {"redis://u:p%zz@h/p", "percent escape"},
        {"redis://u:p%00x@h/p", "percent escape"},
        {"redis://u%2@h/p", "percent escape"},
        {"redis://u:pass word@h/p", "control character"},
        {"redis://user@h/p", "no password"},
        {"redis://u:secret@h/p?password_file=/x", "both"},
        {"redis://-h/p", "bad host"},
        {"redis://h$/p", "bad host"},
        {"redis://:secret@/p", "no host"},
        {"redis://h/p?password_file=/nonexistent/kvpw", "cannot open"},
        {longhost, "bad host"},
        {longuser, "user name is too long"},
        {longpass, "password is too long"},
        {longpre, "longer than"},
        {manyhosts, "more than 64 hosts"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = kv_redis_open(&s, loop, NULL, bad[i].uri, 0);
#ifdef HAVE_HIREDIS
        ck_assert_msg(rc == KV_EINVAL, "%s: %s (%s)", bad[i].uri,
                      kv_err_name(rc), kv_last_errmsg());
        ck_assert_msg(strstr(kv_last_errmsg(), bad[i].msg) != NULL,
                      "%s: message %s", bad[i].uri, kv_last_errmsg());
        ck_assert_msg(strstr(kv_last_errmsg(), "secret") == NULL &&
                          strstr(kv_last_errmsg(), "pass word") == NULL,
                      "%s: the password in %s", bad[i].uri,
                      kv_last_errmsg());
#else
        ck_assert(rc == KV_EINVAL || rc == KV_ENOTSUP);
#endif
    }
    ck_assert_kv(kv_redis_open(NULL, loop, NULL, "redis://127.0.0.1:1", 0),
                 KV_EINVAL);
    /* accepted by the parser: nothing listens on port 1 (KV_EBACKEND), or
     * the name does not resolve; the message names the node, never the
     * password */
    static const char *const good[] = {
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:1/",
        "redis://127.0.0.1:1/p1?timeout=200",
        "redis://u:s%40cr%3Aet%2F@127.0.0.1:1/p?shard=store&timeout=0",
        "redis://:secret@127.0.0.1:1/p",
        "redis://user:secret@127.0.0.1:1,127.0.0.1:2/p?shard=key",
        "redis://[::1]:1/p",
        "redis://localhost:1/a.b:c-d_e",
        "redis://no-such-host.invalid:1/p",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int rc = kv_redis_open(&s, loop, NULL, good[i], 0);
        ck_assert_msg(rc == KV_EBACKEND || rc == KV_ENOTSUP, "%s: %s (%s)",
                      good[i], kv_err_name(rc), kv_last_errmsg());
        if (rc == KV_ENOTSUP) {
            ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "hiredis"));
            continue;
        }
        ck_assert_msg(strstr(kv_last_errmsg(), ":1") != NULL,
                      "%s: %s", good[i], kv_last_errmsg());
        ck_assert_msg(strstr(kv_last_errmsg(), "secret") == NULL &&
                          strstr(kv_last_errmsg(), "cr:et") == NULL,
                      "%s: the password in %s", good[i], kv_last_errmsg());
    }
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
    kv_iter *it;
    f = tu_query_fetch(c.s, &q, &it);
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
    f = tu_query_fetch(c.s, &q, &it);
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
    f = tu_query_fetch(c.s, &all, &it);
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

static void store_close(kv_store *s)
{
    kv_fut *f = kv_close(s);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(s);
}

#ifdef HAVE_HIREDIS /* its users: the tests with the test's own connections */
/* Close s while f (one of its operations) still waits: the close completes
 * within max_ms and f is KV_ECANCELED.  Frees f and s. */
static void close_cancels(kv_store *s, kv_fut *f, uint64_t max_ms)
{
    uint64_t t0 = mono_ms();
    kv_fut *fc = kv_close(s);
    ck_assert_kv(kv_wait(fc), KV_OK);
    kv_fut_free(fc);
    ck_assert_uint_lt(mono_ms() - t0, max_ms);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    kv_store_free(s);
}
#endif

/* Run the loop for ms (the library's own retries go on meanwhile). */
static void spin(ctx *c, uint64_t ms)
{
    ck_assert_kv(wait_free(kv_sleep(c->loop, ms)), KV_OK);
}

/* How node_cli runs redis-cli (the TLS tests add --tls and a password). */
static char cli_cmd[1024] = "redis-cli";

/* The first line of redis-cli's answer to cmd on node name. */
static void node_cli(const char *dir, const char *name, const char *cmd,
                     char *out, size_t outlen)
{
    char line[1600];
    snprintf(line, sizeof line, "%s -p %d %s", cli_cmd, node_port(dir, name),
             cmd);
    FILE *p = popen(line, "r");
    ck_assert_ptr_nonnull(p);
    out[0] = '\0';
    if (fgets(out, (int)outlen, p) != NULL)
        out[strcspn(out, "\r\n")] = '\0';
    pclose(p);
}

/* A failover cluster (f1..f3, f4 a replica of f1; or t1..t4 over TLS):
 * stop master m1 with writes in flight.  Every write succeeds or fails
 * KV_EBACKEND; a failure whose outcome is unknown is resolved by reading
 * (the value is the attempted one with a newer token, or the old one with
 * the old token: never anything else); tokens only grow; the store works
 * again once replica r1 has taken over;
 * and a put retried after an unknown outcome with its old token conflicts
 * instead of overwriting the newer write. */
static void failover_run(ctx *c, const char *dir, const char *m1,
                         const char *r1, const char *test)
{
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
        keys[i] = K(c, ids[i]);
        toks[i] = put(c, ids[i], vals[i], 0, &rc, NULL, 0);
        ck_assert_kv(rc, KV_OK);
    }
    char cmd[600], role[64];
    node_cli(dir, r1, "role", role, sizeof role);
    ck_assert_str_eq(role, "slave");
    snprintf(cmd, sizeof cmd, "sh '%s/%s/stop' >/dev/null 2>&1 &", dir, m1);
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
            kv_fut *f = kv_get(c->s, keys[i], NULL);
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
            fs[i] = kv_put(c->s, &r, NULL);
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
            ck_assert_kv(wait_free(kv_sleep(c->loop, 20)), KV_OK);
    }
    fprintf(stderr,
            "%s: %d rounds, %.1f s from the stop to recovery: %d "
            "puts ok, %d failed (%d with an unknown outcome, %d of those "
            "applied)\n",
            test, round - 1, (double)(mono_ms() - start) / 1000.0, nok, nfail,
            nunknown, napplied);
    ck_assert_int_gt(nfail, 0);
    node_cli(dir, r1, "role", role, sizeof role);
    ck_assert_str_eq(role, "master");
    /* every record holds its last acknowledged value and token */
    for (int i = 0; i < N; i++) {
        kv_fut *f = kv_get(c->s, keys[i], NULL);
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
        put(c, ids[i], "stale", old, &rc, NULL, 0);
        ck_assert_kv(rc, KV_ECONFLICT);
    }
    close_ctx(c);
}

START_TEST(test_failover)
{
    ctx c;
    const char *dir = open_nodes(&c, "KV_TEST_REDIS_FAILOVER", "");
    if (dir == NULL)
        return;
    failover_run(&c, dir, "f1", "f4", "test_failover");
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
    kv_iter *it;
    kv_fut *f = tu_query_fetch(c.s, &q, &it);
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
        close_cancels(s2, f2, 400);
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

/* ------------------------------------------------------------------------ */
/* A proxy in front of the single server, for the failures a real server   */
/* cannot be made to show on demand                                        */
/* ------------------------------------------------------------------------ */

/* A thread of the test listens on a loopback port (backlog 0) and, per
 * connection, parses the client's requests (hiredis's reader reads RESP
 * requests as it reads replies) and handles them one at a time: forwarded
 * to the server, its reply passed back byte for byte, or, while the test
 * has set an error, answered with that error (a cluster's transient states
 * without a cluster).  Dark, it drops its connections and stops accepting;
 * the test then fills its listen queue, so a connect gets no answer at all
 * (the kernel drops a SYN to a full queue) until the proxy accepts again. */
typedef struct pconn {
    int fd, up;           /* the client's connection, the server's */
    redisReader *rd, *urd; /* requests, replies */
} pconn;

typedef struct proxy {
    int lfd, port, upport;
    int wake[2]; /* the test's writes wake the thread */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    char err[128];  /* answer every request with -err when set */
    long answered;  /* requests answered with err */
    long forwarded; /* requests passed to the server */
    bool dark, stop;
    unsigned req, ack; /* the thread has seen the test's change req */
    /* the thread's own */
    pconn conns[16];
    int nconns;
    /* the test's own: connections filling the listen queue */
    int fill[8];
    int nfill;
} proxy;

static void pconn_close(pconn *c)
{
    close(c->fd);
    if (c->up >= 0)
        close(c->up);
    redisReaderFree(c->rd);
    redisReaderFree(c->urd);
}

static bool send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* One request: answered with the error, or forwarded and its reply passed
 * back.  False when the connection is to be dropped. */
static bool proxy_request(proxy *p, pconn *c, const redisReply *req)
{
    if (req->type != REDIS_REPLY_ARRAY)
        return false;
    char line[160];
    pthread_mutex_lock(&p->mu);
    bool err = p->err[0] != '\0';
    if (err) {
        snprintf(line, sizeof line, "-%s\r\n", p->err);
        p->answered++;
    } else {
        p->forwarded++;
    }
    pthread_mutex_unlock(&p->mu);
    if (err)
        return send_all(c->fd, line, strlen(line));
    snprintf(line, sizeof line, "*%zu\r\n", req->elements);
    if (!send_all(c->up, line, strlen(line)))
        return false;
    for (size_t i = 0; i < req->elements; i++) {
        const redisReply *e = req->element[i];
        if (e->type != REDIS_REPLY_STRING)
            return false;
        snprintf(line, sizeof line, "$%zu\r\n", e->len);
        if (!send_all(c->up, line, strlen(line)) ||
            !send_all(c->up, e->str, e->len) || !send_all(c->up, "\r\n", 2))
            return false;
    }
    /* one request outstanding: every byte until a whole reply is its */
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(c->urd, &rep) != REDIS_OK)
            return false;
        if (rep != NULL) {
            freeReplyObject(rep);
            return true;
        }
        char buf[16384];
        ssize_t r = recv(c->up, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || redisReaderFeed(c->urd, buf, (size_t)r) != REDIS_OK ||
            !send_all(c->fd, buf, (size_t)r))
            return false;
    }
}

/* What the client sent: false when the connection is to be dropped. */
static bool proxy_input(proxy *p, pconn *c)
{
    char buf[16384];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR)
        return true;
    if (r <= 0 || redisReaderFeed(c->rd, buf, (size_t)r) != REDIS_OK)
        return false;
    for (;;) {
        void *req = NULL;
        if (redisReaderGetReply(c->rd, &req) != REDIS_OK)
            return false;
        if (req == NULL)
            return true;
        bool ok = proxy_request(p, c, req);
        freeReplyObject(req);
        if (!ok)
            return false;
    }
}

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *proxy_main(void *arg)
{
    proxy *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        bool stop = p->stop, dark = p->dark;
        if (dark || stop) {
            for (int i = 0; i < p->nconns; i++)
                pconn_close(&p->conns[i]);
            p->nconns = 0;
        }
        p->ack = p->req;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
        struct pollfd pfd[18];
        int np = 0;
        pfd[np++] = (struct pollfd){p->wake[0], POLLIN, 0};
        if (!dark && p->nconns < 16)
            pfd[np++] = (struct pollfd){p->lfd, POLLIN, 0};
        int first = np;
        for (int i = 0; i < p->nconns; i++)
            pfd[np++] = (struct pollfd){p->conns[i].fd, POLLIN, 0};
        if (poll(pfd, (nfds_t)np, -1) < 0)
            continue; /* EINTR */
        if (pfd[0].revents != 0) {
            char b[64];
            (void)read(p->wake[0], b, sizeof b);
            continue; /* the flags first */
        }
        /* the connections before a new one (the indices hold) */
        for (int i = p->nconns - 1; i >= 0; i--) {
            if (pfd[first + i].revents == 0)
                continue;
            if (!proxy_input(p, &p->conns[i])) {
                pconn_close(&p->conns[i]);
                p->conns[i] = p->conns[--p->nconns];
            }
        }
        if (first == 2 && pfd[1].revents != 0) {
            int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                continue;
            pconn *c = &p->conns[p->nconns];
            c->fd = fd;
            c->up = connect_port(p->upport);
            c->rd = redisReaderCreate();
            c->urd = redisReaderCreate();
            if (c->up < 0 || c->rd == NULL || c->urd == NULL)
                pconn_close(c); /* the client sees it closed */
            else
                p->nconns++;
        }
    }
}

/* A proxy to the single server of KV_TEST_REDIS, or NULL (the test
 * skips). */
static proxy *proxy_new_(const char *test)
{
    const char *base = getenv("KV_TEST_REDIS");
    if (base == NULL) {
        fprintf(stderr, "check_redis: KV_TEST_REDIS not set "
                        "(tests/redis_env.sh sets it when redis-server is "
                        "installed): %s skipped\n",
                test);
        return NULL;
    }
    const char *colon = strrchr(base, ':');
    ck_assert_ptr_nonnull(colon);
    proxy *p = calloc(1, sizeof *p);
    ck_assert_ptr_nonnull(p);
    p->upport = atoi(colon + 1);
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(p->lfd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(p->lfd, 0), 0);
    ck_assert_int_eq(getsockname(p->lfd, (struct sockaddr *)&sa, &len), 0);
    p->port = ntohs(sa.sin_port);
    ck_assert_int_eq(pipe2(p->wake, O_CLOEXEC | O_NONBLOCK), 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    ck_assert_int_eq(pthread_create(&p->th, NULL, proxy_main, p), 0);
    return p;
}

#define proxy_new() proxy_new_(__func__)

/* Wake the thread and wait until it has seen the change made under mu
 * (called with mu held; returns with it released). */
static void proxy_sync_unlock(proxy *p)
{
    unsigned want = ++p->req;
    ck_assert_int_eq(write(p->wake[1], "w", 1), 1);
    while (p->ack < want)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Answer every request with -err from now on (NULL: forward again). */
static void proxy_error(proxy *p, const char *err)
{
    pthread_mutex_lock(&p->mu);
    snprintf(p->err, sizeof p->err, "%s", err ? err : "");
    p->answered = 0;
    pthread_mutex_unlock(&p->mu);
}

static long proxy_answered(proxy *p)
{
    pthread_mutex_lock(&p->mu);
    long n = p->answered;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* Dark: every connection dropped, nothing accepted, the listen queue full
 * (a connect is never answered).  Lit again: the queue drained, connections
 * accepted and served. */
static void proxy_dark(proxy *p, bool dark)
{
    pthread_mutex_lock(&p->mu);
    p->dark = dark;
    proxy_sync_unlock(p);
    if (!dark) {
        for (int i = 0; i < p->nfill; i++)
            close(p->fill[i]); /* the proxy accepts them and sees EOF */
        p->nfill = 0;
        return;
    }
    /* connect until one is not answered within 300 ms: the queue is full
     * (backlog 0 admits one or two, depending on the kernel) */
    for (;;) {
        ck_assert_int_lt(p->nfill, 8);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        0);
        ck_assert_int_ge(fd, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)p->port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        ck_assert(rc == 0 || errno == EINPROGRESS);
        struct pollfd pfd = {fd, POLLOUT, 0};
        if (rc != 0 && poll(&pfd, 1, 300) == 0) {
            close(fd);
            return;
        }
        int e = 0;
        socklen_t len = sizeof e;
        ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len), 0);
        ck_assert_int_eq(e, 0);
        p->fill[p->nfill++] = fd;
    }
}

static void proxy_free(proxy *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    proxy_sync_unlock(p);
    ck_assert_int_eq(pthread_join(p->th, NULL), 0);
    for (int i = 0; i < p->nfill; i++)
        close(p->fill[i]);
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

/* Open a store on loop through p (opts: the URI's ?options). */
static kv_store *proxy_open(proxy *p, kv_loop *loop, const char *opts)
{
    char uri[256];
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/%s%s", p->port, prefix,
             opts);
    kv_store *s = NULL;
    int rc = kv_redis_open(&s, loop, NULL, uri, 0);
    ck_assert_msg(rc == KV_OK, "open %s: %s (%s)", uri, kv_err_name(rc),
                  kv_last_errmsg());
    return s;
}

/* A connect that is never answered (the proxy dark, its listen queue full):
 * with timeout=MS the operation fails KV_EBACKEND within about MS, saying
 * so, while a store with the default timeout still waits; a store closes
 * at once with its connect hanging (the operation cancelled); once the
 * node answers again the store works; no descriptor is left behind. */
START_TEST(test_connect_timeout)
{
    int fds0 = tu_count_fds();
    proxy *p = proxy_new();
    if (p == NULL)
        return;
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    kv_store *s = proxy_open(p, loop, "?timeout=500");
    kv_store *s2 = proxy_open(p, loop, ""); /* 10 s */
    kv_key *ka = NULL, *kb = NULL;
    ck_assert_kv(kv_key_parse(&ka, "/ct/a"), KV_OK);
    ck_assert_kv(kv_key_parse(&kb, "/ct/b"), KV_OK);
    EXPECT(kv_put_value(s, ka, "a", 1, NULL), KV_OK);
    EXPECT(kv_put_value(s2, kb, "b", 1, NULL), KV_OK);

    proxy_dark(p, true);
    /* the connections were dropped under the stores: the next operation
     * on each finds out (or is refused during the back-off) */
    kv_fut *f = kv_has(s, ka), *f2 = kv_has(s2, kb);
    ck_assert_kv(kv_wait(f), KV_EBACKEND);
    ck_assert_kv(kv_wait(f2), KV_EBACKEND);
    kv_fut_free(f);
    kv_fut_free(f2);
    ck_assert_kv(wait_free(kv_sleep(loop, 300)), KV_OK); /* the back-off */

    /* now each connects, and the connect hangs */
    uint64_t t0 = mono_ms();
    f = kv_get(s, ka, NULL);
    f2 = kv_has(s2, kb);
    int rc = kv_wait(f);
    uint64_t waited = mono_ms() - t0;
    ck_assert_msg(rc == KV_EBACKEND, "%s (%s)", kv_err_name(rc),
                  kv_fut_errmsg(f));
    char node[64];
    snprintf(node, sizeof node, "redis node 127.0.0.1:%d: ", p->port);
    ck_assert_msg(strstr(kv_fut_errmsg(f), node) != NULL &&
                      strstr(kv_fut_errmsg(f), "cannot connect: no answer "
                                               "within 500 ms") != NULL,
                  "message: %s", kv_fut_errmsg(f));
    fprintf(stderr, "test_connect_timeout: failed after %" PRIu64 " ms: %s\n",
            waited, kv_fut_errmsg(f));
    ck_assert_uint_ge(waited, 450);
    ck_assert_uint_lt(waited, 3000);
    kv_fut_free(f);
    /* the default deadline has not passed: still waiting */
    ck_assert(!kv_fut_done(f2));
    close_cancels(s2, f2, 2000);

    /* the node answers again: s works again (after its back-off) */
    proxy_dark(p, false);
    int round;
    for (round = 0; round < 100; round++) {
        f = kv_get(s, ka, NULL);
        rc = kv_wait(f);
        if (rc == KV_OK) {
            const kv_record *r = kv_fut_record(f);
            ck_assert(r->len == 1 && memcmp(r->val, "a", 1) == 0);
            kv_fut_free(f);
            break;
        }
        ck_assert_msg(rc == KV_EBACKEND, "%s (%s)", kv_err_name(rc),
                      kv_fut_errmsg(f));
        kv_fut_free(f);
        ck_assert_kv(wait_free(kv_sleep(loop, 100)), KV_OK);
    }
    ck_assert_int_lt(round, 100);
    EXPECT(kv_put_value(s, kb, "b2", 2, NULL), KV_ECONFLICT);
    store_close(s);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_key_free(ka);
    kv_key_free(kb);
    proxy_free(p);
    ck_assert_int_eq(tu_count_fds(), fds0);
}
END_TEST

/* The transient states a server refuses a command in without running it,
 * each from its own proxy. */
static const char *const transient[] = {
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "LOADING Redis is loading the dataset in memory",
    "CLUSTERDOWN The cluster is down",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is no",
};
#define NTRANSIENT (sizeof transient / sizeof transient[0])

/* A proxy per transient error, a loop, the key and, behind each proxy p[i],
 * a store of its own prefix holding key = "v0" (its token in tok[i]); then
 * p[i] answers every command with transient[i].  false: no test server
 * (proxy_new said why; the test skips). */
static bool transient_setup(proxy **p, kv_loop **loop, kv_key **k,
                            const char *key, kv_store **s, uint64_t *tok)
{
    for (size_t i = 0; i < NTRANSIENT; i++)
        if ((p[i] = proxy_new()) == NULL)
            return false;
    ck_assert_kv(kv_loop_new(loop, NULL), KV_OK);
    ck_assert_kv(kv_key_parse(k, key), KV_OK);
    for (size_t i = 0; i < NTRANSIENT; i++) {
        char opts[32];
        snprintf(opts, sizeof opts, "-%zu?shard=store", i); /* own prefix */
        s[i] = proxy_open(p[i], *loop, opts);
        kv_fut *f = AWAIT(kv_put_value(s[i], *k, "v0", 2, NULL), KV_OK);
        tok[i] = kv_fut_token(f);
        kv_fut_free(f);
        proxy_error(p[i], transient[i]);
    }
    return true;
}

/* Close what transient_setup made. */
static void transient_teardown(proxy **p, kv_loop *loop, kv_key *k,
                               kv_store **s)
{
    for (size_t i = 0; i < NTRANSIENT; i++) {
        store_close(s[i]);
        proxy_free(p[i]);
    }
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_key_free(k);
}

/* Into fs[i]: the write of "v1" over k with tok[i] on s[i]. */
static void transient_puts(kv_store **s, kv_key *k, const uint64_t *tok,
                           kv_fut **fs)
{
    for (size_t i = 0; i < NTRANSIENT; i++) {
        kv_record r = {k, "v1", 2, tok[i]};
        fs[i] = kv_put(s[i], &r, NULL);
    }
}

/* Run loop until every future of fs is done (at most 20 s); when[i]: ms
 * from t0 to the first look that found fs[i] done. */
static void wait_all(kv_loop *loop, kv_fut **fs, size_t n, uint64_t t0,
                     uint64_t *when)
{
    for (size_t i = 0; i < n; i++)
        when[i] = 0;
    for (size_t left = n; left > 0;) {
        ck_assert_uint_lt(mono_ms() - t0, 20000);
        ck_assert_kv(wait_free(kv_sleep(loop, 10)), KV_OK);
        for (size_t i = 0; i < n; i++)
            if (when[i] == 0 && kv_fut_done(fs[i])) {
                when[i] = mono_ms() - t0;
                left--;
            }
    }
}

/* A node that answers TRYAGAIN, LOADING, CLUSTERDOWN or MASTERDOWN to
 * every command: a write (and a read beside it) is resent for about 3 s,
 * then fails KV_EBACKEND saying it was not applied (and it was not: the
 * record is unchanged and its token still valid). */
START_TEST(test_transient_give_up)
{
    enum { N = 2 * NTRANSIENT };
    proxy *p[NTRANSIENT];
    kv_store *s[NTRANSIENT];
    kv_fut *fs[N];
    uint64_t tok[NTRANSIENT], when[N];
    kv_loop *loop = NULL;
    kv_key *k = NULL;
    if (!transient_setup(p, &loop, &k, "/tr/k", s, tok))
        return;
    uint64_t t0 = mono_ms();
    transient_puts(s, k, tok, fs);
    for (size_t i = 0; i < NTRANSIENT; i++)
        fs[NTRANSIENT + i] = kv_get(s[i], k, NULL);
    wait_all(loop, fs, N, t0, when);
    for (size_t i = 0; i < NTRANSIENT; i++)
        fprintf(stderr, "test_transient_give_up: %.11s: failed after %" PRIu64
                        " ms, %ld answers\n",
                transient[i], when[i], proxy_answered(p[i]));
    for (size_t j = 0; j < N; j++) {
        size_t i = j % NTRANSIENT;
        const char *msg = kv_fut_errmsg(fs[j]);
        int rc = kv_wait(fs[j]);
        ck_assert_msg(rc == KV_EBACKEND, "%s: %s (%s)", transient[i],
                      kv_err_name(rc), msg);
        ck_assert_msg(strstr(msg, "not applied") != NULL &&
                          strstr(msg, transient[i]) != NULL &&
                          strstr(msg, "may or may not") == NULL,
                      "message: %s", msg);
        ck_assert_msg(when[j] >= 2500 && when[j] < 6000,
                      "%s: failed after %" PRIu64 " ms", transient[i],
                      when[j]);
        kv_fut_free(fs[j]);
    }
    for (size_t i = 0; i < NTRANSIENT; i++) {
        /* each resent, not held: 13 answers each for the put and the get */
        ck_assert_int_ge(proxy_answered(p[i]), 10);
        /* the node recovers: nothing was written */
        proxy_error(p[i], NULL);
        kv_fut *f = AWAIT(kv_get(s[i], k, NULL), KV_OK);
        const kv_record *r = kv_fut_record(f);
        ck_assert(r->len == 2 && memcmp(r->val, "v0", 2) == 0);
        ck_assert_uint_eq(r->token, tok[i]);
        kv_fut_free(f);
        kv_record w = {k, "v2", 2, tok[i]};
        f = AWAIT(kv_put(s[i], &w, NULL), KV_OK);
        ck_assert_uint_gt(kv_fut_token(f), tok[i]);
        kv_fut_free(f);
        EXPECT(kv_delete(s[i], k, tok[i]), KV_ECONFLICT);
    }
    transient_teardown(p, loop, k, s);
}
END_TEST

/* The same states cleared after about 1 s (a CLUSTERDOWN while the cluster
 * heals, a LOADING while the server loads...): the resent write succeeds,
 * once. */
START_TEST(test_transient_clears)
{
    proxy *p[NTRANSIENT];
    kv_store *s[NTRANSIENT];
    kv_fut *fs[NTRANSIENT];
    uint64_t tok[NTRANSIENT], when[NTRANSIENT];
    long tries[NTRANSIENT];
    kv_loop *loop = NULL;
    kv_key *k = NULL;
    if (!transient_setup(p, &loop, &k, "/tc/k", s, tok))
        return;
    uint64_t t0 = mono_ms();
    transient_puts(s, k, tok, fs);
    ck_assert_kv(wait_free(kv_sleep(loop, 1000)), KV_OK);
    for (size_t i = 0; i < NTRANSIENT; i++) {
        ck_assert_msg(!kv_fut_done(fs[i]), "%s: done after 1 s (%s)",
                      transient[i], kv_fut_errmsg(fs[i]));
        tries[i] = proxy_answered(p[i]);
        proxy_error(p[i], NULL);
    }
    wait_all(loop, fs, NTRANSIENT, t0, when);
    for (size_t i = 0; i < NTRANSIENT; i++) {
        ck_assert_msg(kv_wait(fs[i]) == KV_OK, "%s: %s (%s)", transient[i],
                      kv_err_name(kv_wait(fs[i])), kv_fut_errmsg(fs[i]));
        ck_assert_int_ge(tries[i], 2);
        uint64_t t = kv_fut_token(fs[i]);
        ck_assert_uint_gt(t, tok[i]);
        kv_fut_free(fs[i]);
        kv_fut *f = AWAIT(kv_get(s[i], k, NULL), KV_OK);
        const kv_record *r = kv_fut_record(f);
        ck_assert(r->len == 2 && memcmp(r->val, "v1", 2) == 0);
        ck_assert_uint_eq(r->token, t);
        kv_fut_free(f);
    }
    transient_teardown(p, loop, k, s);
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

/* ------------------------------------------------------------------------ */
/* Authentication (the servers of KV_TEST_REDIS_AUTH*, see redis_env.sh)    */
/* ------------------------------------------------------------------------ */

#define AUTH_PASS_URI "p%40ss%3Aw%2Frd%25x" /* p@ss:w/rd%x */

/* env's host list with cred@ put in front of the hosts, then /path. */
static bool auth_uri_(char *out, size_t len, const char *env,
                      const char *cred, const char *path, const char *test)
{
    const char *base = getenv(env);
    if (base == NULL) {
        fprintf(stderr, "check_redis: %s not set (tests/redis_env.sh sets "
                        "it when redis-server is installed): %s skipped\n",
                env, test);
        return false;
    }
    const char *hosts = strstr(base, "://");
    ck_assert_ptr_nonnull(hosts);
    snprintf(out, len, "%.*s%s%s%s/%s", (int)(hosts + 3 - base), base, cred,
             cred[0] ? "@" : "", hosts + 3, path);
    return true;
}

#define auth_uri(out, env, cred, path)                                       \
    auth_uri_(out, sizeof out, env, cred, path, __func__)

static int try_open(kv_loop *loop, kv_pool *pool, const char *uri,
                    kv_store **s)
{
    *s = NULL;
    return kv_redis_open(s, loop, pool, uri, 0);
}

/* Writes, reads, a query and a delete through s (under dir). */
static void workload(kv_store *s, int n, const char *dir)
{
    kv_key *ks[64];
    uint64_t tok[64];
    char id[32];
    ck_assert_int_le(n, 64);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s/k%d", dir, i);
        ck_assert_kv(kv_key_parse(&ks[i], id), KV_OK);
        kv_fut *f = AWAIT(kv_put_value(s, ks[i], id, strlen(id), NULL),
                          KV_OK);
        tok[i] = kv_fut_token(f);
        kv_fut_free(f);
    }
    for (int i = 0; i < n; i++) {
        kv_fut *f = AWAIT(kv_get(s, ks[i], NULL), KV_OK);
        snprintf(id, sizeof id, "%s/k%d", dir, i);
        ck_assert(kv_fut_record(f)->len == strlen(id) &&
                  memcmp(kv_fut_record(f)->val, id, strlen(id)) == 0);
        kv_fut_free(f);
    }
    kv_key *w = NULL;
    ck_assert_kv(kv_key_parse(&w, dir), KV_OK);
    ck_assert_uint_eq(tu_query_count(s, w), (size_t)n);
    kv_key_free(w);
    EXPECT(kv_delete(s, ks[0], tok[0]), KV_OK);
    for (int i = 0; i < n; i++)
        kv_key_free(ks[i]);
}

/* Kill every client connection of the servers in env's host list but
 * redis-cli's own (authenticated with the default user's password). */
static void kill_clients(const char *env)
{
    const char *h = strstr(getenv(env), "://") + 3;
    const char *ca = getenv("KV_TEST_REDIS_TLS_CA");
    char tls[600] = "";
    if (strncmp(getenv(env), "rediss:", 7) == 0 && ca != NULL)
        snprintf(tls, sizeof tls, "--tls --cacert '%s' ", ca);
    while (*h != '\0') {
        const char *colon = strchr(h, ':');
        int port = atoi(colon + 1);
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "REDISCLI_AUTH='p@ss:w/rd%%x' redis-cli %s-p %d client "
                 "kill type normal skipme yes >/dev/null 2>&1",
                 tls, port);
        ck_assert_int_eq(system(cmd), 0);
        h = strchr(colon, ',');
        if (h == NULL)
            break;
        h++;
    }
}

/* Operations after every connection was cut: the first may fail
 * (KV_EBACKEND), then the store reconnects (and authenticates). */
static void recovers(kv_loop *loop, kv_store *s)
{
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, "/w/k1"), KV_OK);
    int round, rc = KV_EBACKEND;
    for (round = 0; round < 100; round++) {
        kv_fut *f = kv_get(s, k, NULL);
        rc = kv_wait(f);
        ck_assert_msg(rc == KV_OK || rc == KV_EBACKEND, "%s (%s)",
                      kv_err_name(rc), kv_fut_errmsg(f));
        ck_assert_msg(strstr(kv_fut_errmsg(f), "NOAUTH") == NULL,
                      "a reconnect without AUTH: %s", kv_fut_errmsg(f));
        kv_fut_free(f);
        if (rc == KV_OK)
            break;
        ck_assert_kv(wait_free(kv_sleep(loop, 50)), KV_OK);
    }
    ck_assert_kv(rc, KV_OK);
    kv_key_free(k);
}

/* The default user's password (percent-encoded in the URI, or in
 * password_file=): every operation works, on the single server and on the
 * cluster from one seed (the other masters are learned from CLUSTER SLOTS
 * and authenticated too), and again after every connection was cut. */
START_TEST(test_auth_password)
{
    char uri[1024];
    const char *envs[] = {"KV_TEST_REDIS_AUTH", "KV_TEST_REDIS_AUTH_CLUSTER"};
    for (int e = 0; e < 2; e++) {
        char path[96];
        snprintf(path, sizeof path, "%s-pw", prefix);
        if (!auth_uri(uri, envs[e], ":" AUTH_PASS_URI, path))
            return;
        if (e == 1)
            *strchr(uri + 8, ',') = '\0', strcat(uri, "/"), strcat(uri, path);
        kv_loop *loop = NULL;
        ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
        /* the cluster's nodes announce the name localhost: with a pool the
         * store looks it up again at each reconnect */
        kv_pool *pool = NULL;
        if (e == 1)
            ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
        kv_store *s;
        int rc = try_open(loop, pool, uri, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s", kv_err_name(rc),
                      kv_last_errmsg());
        workload(s, 40, "/w");
        kill_clients(envs[e]);
        recovers(loop, s);
        workload(s, 40, "/w2");
        store_close(s);

        /* password_file=: the first line */
        char *dir = tu_mkdtemp(), pf[4200];
        ck_assert_ptr_nonnull(dir);
        snprintf(pf, sizeof pf, "%s/pw", dir);
        FILE *f = fopen(pf, "w");
        ck_assert_ptr_nonnull(f);
        fputs("p@ss:w/rd%x\nsecond line\n", f);
        ck_assert_int_eq(fclose(f), 0);
        char uri2[4400];
        ck_assert(auth_uri(uri2, envs[e], "", path));
        strcat(uri2, "?password_file=");
        strcat(uri2, pf);
        rc = try_open(loop, pool, uri2, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s", kv_err_name(rc),
                      kv_last_errmsg());
        workload(s, 10, "/w3");
        store_close(s);
        ck_assert_int_eq(unlink(pf), 0);
        ck_assert_int_eq(rmdir(dir), 0);
        free(dir);
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
        ck_assert_kv(kv_loop_free(loop), KV_OK);
        if (pool != NULL)
            kv_pool_free(pool);
    }
}
END_TEST

/* An ACL user allowed only ~kvacl* and the commands the store sends: a
 * store under kvacl... works (single server, cluster with shard=key and
 * shard=store); a store elsewhere opens but its writes fail KV_EBACKEND
 * with the server's NOPERM. */
START_TEST(test_auth_acl_user)
{
    char uri[1024], path[128];
    const char *envs[] = {"KV_TEST_REDIS_AUTH", "KV_TEST_REDIS_AUTH_CLUSTER",
                          "KV_TEST_REDIS_AUTH_CLUSTER"};
    const char *opts[] = {"", "", "?shard=store"};
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    for (int e = 0; e < 3; e++) {
        snprintf(path, sizeof path, "kvacl%s-%d%s", prefix, e, opts[e]);
        if (!auth_uri(uri, envs[e], "kvuser:kv-pw", path))
            break;
        kv_store *s;
        int rc = try_open(loop, NULL, uri, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s (%s)", uri, kv_err_name(rc),
                      kv_last_errmsg());
        workload(s, 30, "/w");
        store_close(s);
        /* outside the user's keys */
        snprintf(path, sizeof path, "%s-noacl%s", prefix, opts[e]);
        ck_assert(auth_uri(uri, envs[e], "kvuser:kv-pw", path));
        rc = try_open(loop, NULL, uri, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s (%s)", uri, kv_err_name(rc),
                      kv_last_errmsg());
        kv_key *k = NULL;
        ck_assert_kv(kv_key_parse(&k, "/x"), KV_OK);
        kv_fut *f = AWAIT(kv_put_value(s, k, "v", 1, NULL), KV_EBACKEND);
        ck_assert_msg(strstr(kv_fut_errmsg(f), "NOPERM") != NULL,
                      "message: %s", kv_fut_errmsg(f));
        kv_fut_free(f);
        kv_key_free(k);
        store_close(s);
    }
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* A wrong password, an unknown user, and no password at all: the open
 * fails KV_EBACKEND with the server's error (WRONGPASS, NOAUTH) and what
 * to check, never the password. */
START_TEST(test_auth_refused)
{
    static const struct {
        const char *cred, *err;
    } cases[] = {
        {":wrong-Secret", "WRONGPASS"},
        {"kvuser:wrong-Secret", "WRONGPASS"},
        {"nouser:wrong-Secret", "WRONGPASS"},
        {"", "NOAUTH"},
    };
    const char *envs[] = {"KV_TEST_REDIS_AUTH", "KV_TEST_REDIS_AUTH_CLUSTER"};
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    for (int e = 0; e < 2; e++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char uri[1024];
            if (!auth_uri(uri, envs[e], cases[i].cred, prefix))
                goto out;
            kv_store *s;
            int rc = try_open(loop, NULL, uri, &s);
            const char *m = kv_last_errmsg();
            fprintf(stderr, "test_auth_refused: %s\n", m);
            ck_assert_msg(rc == KV_EBACKEND, "%s: %s (%s)", cases[i].cred,
                          kv_err_name(rc), m);
            ck_assert_msg(strstr(m, cases[i].err) != NULL &&
                              strstr(m, "authentication failed") != NULL &&
                              (strstr(m, "check the URI") != NULL ||
                               strstr(m, "requires a password") != NULL),
                          "%s: message %s", cases[i].cred, m);
            ck_assert_msg(strstr(m, "Secret") == NULL, "the password: %s", m);
        }
    }
out:
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* The single server reached as localhost, 127.0.0.1 and [::1] (when the
 * machine has IPv6 on loopback; redis_env.sh binds ::1 when it can). */
START_TEST(test_host_forms)
{
    const char *base = getenv("KV_TEST_REDIS");
    if (base == NULL) {
        fprintf(stderr, "check_redis: KV_TEST_REDIS not set: %s skipped\n",
                __func__);
        return;
    }
    int port = atoi(strrchr(base, ':') + 1);
    /* is the server reachable on [::1]? */
    bool v6 = false;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6,
                                  .sin6_port = htons((uint16_t)port)};
        sa.sin6_addr = in6addr_loopback;
        v6 = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (!v6)
            fprintf(stderr, "test_host_forms: [::1] row skipped: no server "
                            "on [::1]:%d (%s): no IPv6 on loopback here?\n",
                    port, strerror(errno));
        close(fd);
    } else {
        fprintf(stderr, "test_host_forms: [::1] row skipped: no IPv6 socket "
                        "(%s)\n",
                strerror(errno));
    }
    const char *hosts[] = {"localhost", "127.0.0.1", "[::1]"};
    kv_loop *loop = NULL;
    kv_pool *pool = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    for (int i = 0; i < 3; i++) {
        if (i == 2 && !v6)
            continue;
        char uri[256];
        snprintf(uri, sizeof uri, "redis://%s:%d/%s-h%d", hosts[i], port,
                 prefix, i);
        kv_store *s;
        int rc = try_open(loop, i == 0 ? pool : NULL, uri, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s (%s)", uri, kv_err_name(rc),
                      kv_last_errmsg());
        workload(s, 10, "/w");
        store_close(s);
    }
    /* a name that does not resolve: KV_EBACKEND saying so */
    kv_store *s;
    int rc = try_open(loop, NULL, "redis://no-such-host.invalid:6379/p", &s);
    ck_assert_kv(rc, KV_EBACKEND);
    ck_assert_msg(strstr(kv_last_errmsg(), "cannot resolve "
                                           "no-such-host.invalid") != NULL,
                  "%s", kv_last_errmsg());
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
}
END_TEST

/* kv_redis_open against a node that never answers (the proxy dark: its
 * connect hangs) returns within the URI's timeout= for the whole open, not
 * 5 s a step; the message says so. */
#ifdef HAVE_HIREDIS /* the proxy */
START_TEST(test_open_timeout)
{
    int fds0 = tu_count_fds();
    proxy *p = proxy_new();
    if (p == NULL)
        return;
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    proxy_dark(p, true);
    char uri[256];
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/%s?timeout=300", p->port,
             prefix);
    kv_store *s = NULL;
    uint64_t t0 = mono_ms();
    int rc = kv_redis_open(&s, loop, NULL, uri, 0);
    uint64_t waited = mono_ms() - t0;
    fprintf(stderr, "test_open_timeout: failed after %" PRIu64 " ms: %s\n",
            waited, kv_last_errmsg());
    ck_assert_kv(rc, KV_EBACKEND);
    ck_assert_msg(strstr(kv_last_errmsg(), "within the open's timeout "
                                           "(300 ms)") != NULL,
                  "%s", kv_last_errmsg());
    /* before: 5 s (the connect's own timeout); generous for a busy box */
    ck_assert_uint_lt(waited, 4000);
    ck_assert_ptr_null(s);
    proxy_dark(p, false);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    proxy_free(p);
    ck_assert_int_eq(tu_count_fds(), fds0);
}
END_TEST

/* A listener on [::1]:port that never accepts, its queue filled (fill,
 * *nfill: the connections that fill it), so that a connect to it gets no
 * answer, as the dark proxy's.  -1 if there is no IPv6 loopback here or
 * the port is taken on it. */
static int dark_v6(int port, int *fill, int *nfill)
{
    *nfill = 0;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6,
                              .sin6_port = htons((uint16_t)port)};
    sa.sin6_addr = in6addr_loopback;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(fd, 0) != 0) {
        close(fd);
        return -1;
    }
    for (;;) {
        ck_assert_int_lt(*nfill, 8);
        int c = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                       0);
        ck_assert_int_ge(c, 0);
        int rc = connect(c, (struct sockaddr *)&sa, sizeof sa);
        ck_assert(rc == 0 || errno == EINPROGRESS);
        struct pollfd pfd = {c, POLLOUT, 0};
        if (rc != 0 && poll(&pfd, 1, 300) == 0) {
            close(c);
            return fd;
        }
        fill[(*nfill)++] = c;
    }
}

/* Operations on s (key k) until one fails with a message that holds each
 * of has (NULL-terminated): true then, that message in out. */
static bool fails_saying(kv_loop *loop, kv_store *s, const kv_key *k,
                         const char *const *has, char *out, size_t outlen)
{
    out[0] = '\0';
    for (int round = 0; round < 60; round++) {
        kv_fut *f = kv_get(s, k, NULL);
        int rc = kv_wait(f);
        bool found = rc != KV_OK;
        if (found)
            snprintf(out, outlen, "%s", kv_fut_errmsg(f));
        for (size_t i = 0; found && has[i] != NULL; i++)
            found = strstr(out, has[i]) != NULL;
        kv_fut_free(f);
        if (found)
            return true;
        ck_assert_kv(wait_free(kv_sleep(loop, 100)), KV_OK);
    }
    return false;
}

/* A name whose addresses (the resolver's test hook) refuse at once or do
 * not answer: when the connect times out, the ring's message says which
 * address was the last (address:port, an IPv6 one in brackets) and how
 * many of the name's were tried; so does the open's, without the
 * password. */
START_TEST(test_connect_timeout_addresses)
{
    int fds0 = tu_count_fds();
    proxy *p = proxy_new();
    if (p == NULL)
        return;
    kv_loop *loop = NULL;
    kv_pool *pool = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK); /* the ring's look-ups */
    char uri[512], want[160], m[1024];
    kv__redis_test_resolve("kvdark.test", "127.0.0.1");
    snprintf(uri, sizeof uri, "redis://kvdark.test:%d/%s?timeout=500",
             p->port, prefix);
    kv_store *s = NULL;
    int rc = kv_redis_open(&s, loop, pool, uri, 0);
    ck_assert_msg(rc == KV_OK, "open %s: %s (%s)", uri, kv_err_name(rc),
                  kv_last_errmsg());
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, "/cta/a"), KV_OK);
    EXPECT(kv_put_value(s, k, "a", 1, NULL), KV_OK);

    /* 127.0.0.2 refuses (the proxy listens on 127.0.0.1 only), then the
     * dark proxy does not answer */
    kv__redis_test_resolve("kvdark.test", "127.0.0.2,127.0.0.1");
    proxy_dark(p, true);
    snprintf(want, sizeof want, "(address 127.0.0.1:%d; 2 of 2 addresses "
             "tried)", p->port);
    bool ok = fails_saying(loop, s, k,
                           (const char *const[]){"redis node kvdark.test:",
                                                 "cannot connect: no answer "
                                                 "within 500 ms",
                                                 want, NULL},
                           m, sizeof m);
    fprintf(stderr, "test_connect_timeout_addresses: %s\n", m);
    ck_assert_msg(ok, "the last failure: %s", m);

    /* an IPv6 address last, which does not answer either */
    int fill[8], nfill = 0, v6 = dark_v6(p->port, fill, &nfill);
    if (v6 < 0) {
        fprintf(stderr, "test_connect_timeout_addresses: no listener on "
                        "[::1]:%d here: the IPv6 address skipped\n",
                p->port);
    } else {
        kv__redis_test_resolve("kvdark.test", "127.0.0.2,127.0.0.3,::1");
        snprintf(want, sizeof want, "(address [::1]:%d; 3 of 3 addresses "
                 "tried)", p->port);
        ok = fails_saying(loop, s, k,
                          (const char *const[]){"no answer within 500 ms",
                                                want, NULL},
                          m, sizeof m);
        fprintf(stderr, "test_connect_timeout_addresses: %s\n", m);
        ck_assert_msg(ok, "the last failure: %s", m);
        for (int i = 0; i < nfill; i++)
            close(fill[i]);
        close(v6);
    }
    store_close(s);
    kv_key_free(k);

    /* the open (its own deadline), with a password it never shows */
    kv__redis_test_resolve("kvdark.test", "127.0.0.2,127.0.0.1");
    snprintf(uri, sizeof uri, "redis://kvuser:Secret-pw@kvdark.test:%d/%s"
             "?timeout=300", p->port, prefix);
    s = NULL;
    rc = kv_redis_open(&s, loop, NULL, uri, 0);
    snprintf(m, sizeof m, "%s", kv_last_errmsg());
    fprintf(stderr, "test_connect_timeout_addresses: the open: %s\n", m);
    ck_assert_kv(rc, KV_EBACKEND);
    ck_assert_ptr_null(s);
    snprintf(want, sizeof want, "cannot connect within the open's timeout "
             "(300 ms) (address 127.0.0.1:%d; 2 of 2 addresses tried)",
             p->port);
    ck_assert_msg(strstr(m, want) != NULL, "no '%s' in: %s", want, m);
    ck_assert_msg(strstr(m, "Secret") == NULL, "the password: %s", m);

    kv__redis_test_resolve(NULL, NULL);
    proxy_dark(p, false);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
    proxy_free(p);
    ck_assert_int_eq(tu_count_fds(), fds0);
}
END_TEST
#endif

/* ------------------------------------------------------------------------ */
/* TLS (rediss://): the servers and certificates of tests/redis_env.sh      */
/* ------------------------------------------------------------------------ */

#ifdef HAVE_OPENSSL
/* The test certificate file name into out (KV_TEST_REDIS_DIR/tls/name). */
static void tls_file(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/tls/%s", getenv("KV_TEST_REDIS_DIR"), name);
}

/* The TLS servers are there (else the test skips, saying why). */
static bool tls_env(const char *test)
{
    if (getenv("KV_TEST_REDIS_TLS") == NULL ||
        getenv("KV_TEST_REDIS_TLS_CLUSTER") == NULL ||
        getenv("KV_TEST_REDIS_DIR") == NULL) {
        fprintf(stderr, "check_redis: KV_TEST_REDIS_TLS not set "
                        "(tests/redis_env.sh sets it when redis-server has "
                        "TLS and openssl is installed): %s skipped\n",
                test);
        return false;
    }
    return true;
}

/* rediss://localhost:PORT of node name (tx, tm), then /path?opts. */
static void node_tls_uri(char *out, size_t len, const char *name,
                         const char *path, const char *opts)
{
    snprintf(out, len, "rediss://localhost:%d/%s%s",
             node_port(getenv("KV_TEST_REDIS_DIR"), name), path, opts);
}

/* The open of uri fails with want, its message holding each of the
 * strings of has (NULL-terminated) and never the password. */
static void open_fails(kv_loop *loop, const char *uri, int want,
                       const char *const *has)
{
    kv_store *s;
    int rc = try_open(loop, NULL, uri, &s);
    const char *m = kv_last_errmsg();
    fprintf(stderr, "open_fails: %s\n", m);
    ck_assert_msg(rc == want, "%s: %s (%s)", uri, kv_err_name(rc), m);
    for (size_t i = 0; has[i] != NULL; i++)
        ck_assert_msg(strstr(m, has[i]) != NULL, "%s: no '%s' in: %s", uri,
                      has[i], m);
    ck_assert_msg(strstr(m, "Secret") == NULL, "the password: %s", m);
}

#define HAS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Over rediss:// with the ACL user: every operation works on the single
 * server (reached by address and by name) and on the TLS cluster from one
 * seed (the other masters learned from CLUSTER SLOTS, over TLS too), and
 * again after every connection was cut (the reconnects' handshakes run on
 * the ring). */
START_TEST(test_tls_open)
{
    if (!tls_env(__func__))
        return;
    char ca[600], uri[2048], path[128], opts[700];
    tls_file(ca, sizeof ca, "ca.pem");
    snprintf(opts, sizeof opts, "?cacert=%s", ca);
    const char *envs[] = {"KV_TEST_REDIS_TLS", "KV_TEST_REDIS_TLS",
                          "KV_TEST_REDIS_TLS_CLUSTER",
                          "KV_TEST_REDIS_TLS_CLUSTER"};
    for (int e = 0; e < 4; e++) {
        snprintf(path, sizeof path, "kvacl%s-tls%d", prefix, e);
        ck_assert(auth_uri(uri, envs[e], "kvuser:kv-pw", path));
        if (e == 1) { /* by name: verified against DNS:localhost */
            const char *h = strstr(uri, "@127.0.0.1:");
            ck_assert_ptr_nonnull(h);
            char tail[1024];
            snprintf(tail, sizeof tail, "%s", h + 10);
            snprintf(uri, sizeof uri, "rediss://kvuser:kv-pw@localhost%s",
                     tail);
        }
        if (e >= 2) /* one seed */
            *strchr(uri + 9, ',') = '\0', strcat(uri, "/"), strcat(uri, path);
        if (e == 3)
            strcat(uri, "?shard=store&cacert="), strcat(uri, ca);
        else
            strcat(uri, opts);
        kv_loop *loop = NULL;
        ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
        kv_store *s;
        int rc = try_open(loop, NULL, uri, &s);
        ck_assert_msg(rc == KV_OK, "%s: %s (%s)", uri, kv_err_name(rc),
                      kv_last_errmsg());
        workload(s, 40, "/w");
        kill_clients(envs[e]);
        recovers(loop, s);
        workload(s, 40, "/w2");
        store_close(s);
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
        ck_assert_kv(kv_loop_free(loop), KV_OK);
    }
}
END_TEST

/* The server's certificate checked: an untrusted CA (another CA, or the
 * system's store, which does not know the test CA), a name the
 * certificate does not carry (sni=), an expired certificate: the open
 * fails KV_EBACKEND saying which check failed and against what; verify=0
 * connects anyway.  Files that cannot be loaded are KV_EINVAL. */
START_TEST(test_tls_verify)
{
    if (!tls_env(__func__))
        return;
    char ca[600], other[600], bad[600], uri[4096], opts[800];
    tls_file(ca, sizeof ca, "ca.pem");
    tls_file(other, sizeof other, "other-ca.pem");
    tls_file(bad, sizeof bad, "san.ext");
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    const char *cred = "kvuser:kv-pw-Secret"; /* never reached: no AUTH */

    snprintf(opts, sizeof opts, "%s?cacert=%s", prefix, other);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", cred, opts));
    open_fails(loop, uri, KV_EBACKEND,
               HAS("certificate verify failed", "address 127.0.0.1",
                   "cacert="));
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", cred, prefix));
    open_fails(loop, uri, KV_EBACKEND,
               HAS("certificate verify failed", "cacert="));
    snprintf(opts, sizeof opts, "%s?cacert=%s&sni=wrong.example", prefix, ca);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", cred, opts));
    open_fails(loop, uri, KV_EBACKEND,
               HAS("hostname mismatch", "name wrong.example"));
    /* the cluster: the seed's certificate is checked the same way */
    snprintf(opts, sizeof opts, "%s?cacert=%s", prefix, other);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS_CLUSTER", cred, opts));
    open_fails(loop, uri, KV_EBACKEND, HAS("certificate verify failed"));
    snprintf(opts, sizeof opts, "?cacert=%s", ca);
    node_tls_uri(uri, sizeof uri, "tx", prefix, opts);
    open_fails(loop, uri, KV_EBACKEND,
               HAS("certificate has expired", "name localhost"));
    /* files that cannot be used */
    snprintf(opts, sizeof opts, "%s?cacert=%s/none.pem", prefix, ca);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", cred, opts));
    open_fails(loop, uri, KV_EINVAL, HAS("cacert=", "none.pem"));
    snprintf(opts, sizeof opts, "%s?cacert=%s", prefix, bad);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", cred, opts));
    open_fails(loop, uri, KV_EINVAL, HAS("cacert="));

    /* verify=0: the untrusted CA and the expired certificate are accepted */
    char path[96];
    snprintf(path, sizeof path, "kvacl%s-nv?verify=0", prefix);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS", "kvuser:kv-pw", path));
    kv_store *s;
    int rc = try_open(loop, NULL, uri, &s);
    ck_assert_msg(rc == KV_OK, "%s (%s)", kv_err_name(rc), kv_last_errmsg());
    workload(s, 10, "/w");
    store_close(s);
    node_tls_uri(uri, sizeof uri, "tx", prefix, "?verify=0");
    rc = try_open(loop, NULL, uri, &s);
    ck_assert_msg(rc == KV_OK, "%s (%s)", kv_err_name(rc), kv_last_errmsg());
    workload(s, 10, "/w");
    store_close(s);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* A server that requires a client certificate (tls-auth-clients yes):
 * cert= and key= get in; without them the open fails KV_EBACKEND saying
 * the server may want one; a key that is not the certificate's, or a
 * missing file, is KV_EINVAL. */
START_TEST(test_tls_client_cert)
{
    if (!tls_env(__func__))
        return;
    char ca[600], cert[600], key[600], skey[600], uri[4096], opts[2000];
    tls_file(ca, sizeof ca, "ca.pem");
    tls_file(cert, sizeof cert, "client.pem");
    tls_file(key, sizeof key, "client.key");
    tls_file(skey, sizeof skey, "server.key");
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    snprintf(opts, sizeof opts, "?cacert=%s", ca);
    node_tls_uri(uri, sizeof uri, "tm", prefix, opts);
    open_fails(loop, uri, KV_EBACKEND, HAS("certificate", "cert="));
    snprintf(opts, sizeof opts, "?cacert=%s&cert=%s&key=%s", ca, cert, skey);
    node_tls_uri(uri, sizeof uri, "tm", prefix, opts);
    open_fails(loop, uri, KV_EINVAL, HAS("does not match"));
    snprintf(opts, sizeof opts, "?cacert=%s&cert=%s.none&key=%s", ca, cert,
             key);
    node_tls_uri(uri, sizeof uri, "tm", prefix, opts);
    open_fails(loop, uri, KV_EINVAL, HAS("cert=", "client.pem.none"));
    snprintf(opts, sizeof opts, "?cacert=%s&cert=%s&key=%s", ca, cert, key);
    node_tls_uri(uri, sizeof uri, "tm", prefix, opts);
    kv_store *s;
    int rc = try_open(loop, NULL, uri, &s);
    ck_assert_msg(rc == KV_OK, "%s (%s)", kv_err_name(rc), kv_last_errmsg());
    workload(s, 20, "/w");
    store_close(s);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* A wrong password over TLS: WRONGPASS (or NOAUTH without one), never the
 * password, on the single server and the cluster. */
START_TEST(test_tls_auth_refused)
{
    if (!tls_env(__func__))
        return;
    char ca[600], uri[2048], path[800];
    tls_file(ca, sizeof ca, "ca.pem");
    snprintf(path, sizeof path, "%s?cacert=%s", prefix, ca);
    const char *envs[] = {"KV_TEST_REDIS_TLS", "KV_TEST_REDIS_TLS_CLUSTER"};
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    for (int e = 0; e < 2; e++) {
        ck_assert(auth_uri(uri, envs[e], ":wrong-Secret", path));
        open_fails(loop, uri, KV_EBACKEND,
                   HAS("WRONGPASS", "authentication failed"));
        ck_assert(auth_uri(uri, envs[e], "kvuser:wrong-Secret", path));
        open_fails(loop, uri, KV_EBACKEND, HAS("WRONGPASS"));
        ck_assert(auth_uri(uri, envs[e], "", path));
        open_fails(loop, uri, KV_EBACKEND, HAS("NOAUTH"));
    }
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST

/* test_failover over TLS with a password: the TLS cluster (t1..t3, t4 a
 * replica of t1, tls-cluster and tls-replication on) loses t1; the
 * reconnects to the promoted replica make their handshakes and AUTH. */
START_TEST(test_failover_tls)
{
    if (!tls_env(__func__))
        return;
    const char *dir = getenv("KV_TEST_REDIS_DIR");
    char ca[600], uri[2048], path[800];
    tls_file(ca, sizeof ca, "ca.pem");
    snprintf(path, sizeof path, "%s?cacert=%s", prefix, ca);
    ck_assert(auth_uri(uri, "KV_TEST_REDIS_TLS_CLUSTER", ":" AUTH_PASS_URI,
                       path));
    snprintf(cli_cmd, sizeof cli_cmd,
             "REDISCLI_AUTH='p@ss:w/rd%%x' redis-cli --tls --cacert '%s'", ca);
    ctx c;
    memset(&c, 0, sizeof c);
    ck_assert_kv(kv_loop_new(&c.loop, NULL), KV_OK);
    int rc = kv_redis_open(&c.s, c.loop, NULL, uri, 0);
    ck_assert_msg(rc == KV_OK, "%s (%s)", kv_err_name(rc), kv_last_errmsg());
    failover_run(&c, dir, "t1", "t4", "test_failover_tls");
}
END_TEST

/* Operations on s until one fails with a message holding each of has
 * (the ring reconnecting meanwhile, past its back-off): that message's
 * copy in out.  False if none did within ~10 s. */
static bool fails_with(kv_loop *loop, kv_store *s, const char *const *has,
                       char *out, size_t outlen)
{
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, "/w/k1"), KV_OK);
    bool found = false;
    out[0] = '\0';
    for (int round = 0; round < 100 && !found; round++) {
        kv_fut *f = kv_get(s, k, NULL);
        int rc = kv_wait(f);
        if (rc != KV_OK) {
            snprintf(out, outlen, "%s", kv_fut_errmsg(f));
            found = true;
            for (size_t i = 0; has[i] != NULL; i++)
                found = found && strstr(out, has[i]) != NULL;
        }
        kv_fut_free(f);
        if (!found)
            ck_assert_kv(wait_free(kv_sleep(loop, 100)), KV_OK);
    }
    kv_key_free(k);
    return found;
}

#ifdef HAVE_HIREDIS /* the resolver's test hook */
/* A listener on addr:port that is no TLS server: it reads what a client
 * sends first, answers a line of plain text and closes, so a TLS handshake
 * with it fails.  It counts the connections it took. */
typedef struct imposter {
    int fd, stop[2];
    pthread_t th;
    int accepted; /* atomic */
} imposter;

static void *imposter_main(void *arg)
{
    imposter *im = arg;
    for (;;) {
        struct pollfd p[2] = {{im->fd, POLLIN, 0}, {im->stop[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents != 0)
            break;
        int c = accept(im->fd, NULL, NULL);
        if (c < 0)
            continue; /* EINTR, ECONNABORTED, EAGAIN: poll again */
        __atomic_add_fetch(&im->accepted, 1, __ATOMIC_SEQ_CST);
        struct pollfd pc = {c, POLLIN, 0};
        char buf[4096];
        if (poll(&pc, 1, 5000) > 0)
            (void)recv(c, buf, sizeof buf, 0); /* the ClientHello */
        static const char m[] = "-ERR this is no TLS server\r\n";
        (void)send(c, m, sizeof m - 1, MSG_NOSIGNAL);
        close(c);
    }
    return NULL;
}

/* Start an imposter on addr:port: false (the test skips, saying why) if
 * the address cannot be bound here. */
static bool imposter_start(imposter *im, const char *addr, int port)
{
    memset(im, 0, sizeof *im);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    ck_assert_int_eq(inet_pton(AF_INET, addr, &sa.sin_addr), 1);
    im->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(im->fd, 0);
    if (bind(im->fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(im->fd, 16) != 0) {
        fprintf(stderr, "imposter: cannot listen on %s:%d (%s): skipped\n",
                addr, port, strerror(errno));
        close(im->fd);
        return false;
    }
    ck_assert_int_eq(pipe2(im->stop, O_CLOEXEC), 0);
    ck_assert_int_eq(pthread_create(&im->th, NULL, imposter_main, im), 0);
    return true;
}

static int imposter_count(imposter *im)
{
    return __atomic_load_n(&im->accepted, __ATOMIC_SEQ_CST);
}

static void imposter_stop(imposter *im)
{
    ck_assert_int_eq(write(im->stop[1], "x", 1), 1);
    ck_assert_int_eq(pthread_join(im->th, NULL), 0);
    close(im->stop[0]);
    close(im->stop[1]);
    close(im->fd);
}

/* A name that resolves to several addresses (the resolver's test hook):
 * one that refuses the connection, one whose TLS handshake fails (an
 * imposter that is no TLS server), then the TLS server.  The open, and the
 * ring's reconnects after every connection was cut, go past the first two
 * to the server.  When none works the failure names the addresses and
 * keeps the TLS failure of the imposter (the most telling one), never the
 * password. */
START_TEST(test_tls_next_address)
{
    if (!tls_env(__func__))
        return;
    const char *base = getenv("KV_TEST_REDIS_TLS");
    int port = atoi(strrchr(base, ':') + 1);
    imposter im;
    if (!imposter_start(&im, "127.0.0.3", port))
        return;
    char ca[600], uri[2048];
    tls_file(ca, sizeof ca, "ca.pem");
    kv_loop *loop = NULL;
    kv_pool *pool = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 1), KV_OK);
    kv__redis_test_resolve("kvmulti.test", "127.0.0.2,127.0.0.3,127.0.0.1");
    snprintf(uri, sizeof uri, "rediss://kvuser:kv-pw@kvmulti.test:%d/"
             "kvacl%s-na?cacert=%s&sni=localhost", port, prefix, ca);
    kv_store *s;
    int rc = try_open(loop, pool, uri, &s);
    ck_assert_msg(rc == KV_OK, "%s: %s (%s)", uri, kv_err_name(rc),
                  kv_last_errmsg());
    ck_assert_int_eq(imposter_count(&im), 1);
    workload(s, 10, "/w");
    /* the ring: the name looked up again on the pool, the same order */
    kill_clients("KV_TEST_REDIS_TLS");
    recovers(loop, s);
    workload(s, 10, "/w2");
    ck_assert_int_eq(imposter_count(&im), 2);
    /* the ring, no address left: the refusal, and the imposter's failure */
    kv__redis_test_resolve("kvmulti.test", "127.0.0.3,127.0.0.2");
    kill_clients("KV_TEST_REDIS_TLS");
    char m[1024];
    bool ok = fails_with(loop, s,
                         HAS("TLS handshake", "address 127.0.0.3",
                             "address 127.0.0.2", "refused"),
                         m, sizeof m);
    fprintf(stderr, "test_tls_next_address: the ring: %s\n", m);
    ck_assert_msg(ok, "the last failure: %s", m);
    store_close(s);
    /* the open, no address left */
    snprintf(uri, sizeof uri, "rediss://kvuser:kv-pw-Secret@kvmulti.test:%d/"
             "kvacl%s-nb?cacert=%s&sni=localhost", port, prefix, ca);
    open_fails(loop, uri, KV_EBACKEND,
               HAS("TLS handshake", "address 127.0.0.3", "address 127.0.0.2",
                   "refused"));
    kv__redis_test_resolve("kvmulti.test", "127.0.0.3");
    open_fails(loop, uri, KV_EBACKEND, HAS("TLS handshake"));
    kv__redis_test_resolve(NULL, NULL);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    kv_pool_free(pool);
    imposter_stop(&im);
}
END_TEST
#endif /* HAVE_HIREDIS */

/* A server that starts requiring client certificates while a store without
 * one is connected (tm with tls-auth-clients turned off, then on again):
 * once its connections are cut, the ring's reconnect makes its handshake,
 * the server resets the connection, and the failure says the server may
 * want a client certificate, as the open says. */
START_TEST(test_tls_reconnect_cert_hint)
{
    if (!tls_env(__func__))
        return;
    const char *dir = getenv("KV_TEST_REDIS_DIR");
    char ca[300], cert[300], key[300], uri[4096], opts[700], out[256];
    tls_file(ca, sizeof ca, "ca.pem");
    tls_file(cert, sizeof cert, "client.pem");
    tls_file(key, sizeof key, "client.key");
    snprintf(cli_cmd, sizeof cli_cmd,
             "redis-cli --tls --cacert '%s' --cert '%s' --key '%s'", ca, cert,
             key);
    node_cli(dir, "tm", "config set tls-auth-clients no", out, sizeof out);
    ck_assert_str_eq(out, "OK");
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    snprintf(opts, sizeof opts, "?cacert=%s", ca);
    node_tls_uri(uri, sizeof uri, "tm", prefix, opts);
    kv_store *s;
    int rc = try_open(loop, NULL, uri, &s);
    ck_assert_msg(rc == KV_OK, "%s (%s)", kv_err_name(rc), kv_last_errmsg());
    workload(s, 5, "/w");
    node_cli(dir, "tm", "config set tls-auth-clients yes", out, sizeof out);
    ck_assert_str_eq(out, "OK");
    node_cli(dir, "tm", "client kill type normal skipme yes", out,
             sizeof out);
    char m[1024];
    bool ok = fails_with(loop, s, HAS("cert="), m, sizeof m);
    fprintf(stderr, "test_tls_reconnect_cert_hint: %s\n", m);
    ck_assert_msg(ok, "no hint in: %s", m);
    store_close(s);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST
#else
/* Built without OpenSSL: rediss:// fails KV_ENOTSUP, saying so. */
START_TEST(test_tls_notsup)
{
    kv_loop *loop = NULL;
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    kv_store *s = NULL;
    int rc = kv_redis_open(&s, loop, NULL, "rediss://127.0.0.1:1/x", 0);
    ck_assert_kv(rc, KV_ENOTSUP);
    ck_assert_msg(strstr(kv_last_errmsg(), "OpenSSL") != NULL ||
                      strstr(kv_last_errmsg(), "hiredis") != NULL,
                  "%s", kv_last_errmsg());
    ck_assert_kv(kv_loop_free(loop), KV_OK);
}
END_TEST
#endif

static Suite *redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *tc = tcase_create("redis");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_uri_errors);
    tcase_add_test(tc, test_auth_password);
    tcase_add_test(tc, test_auth_acl_user);
    tcase_add_test(tc, test_auth_refused);
    tcase_add_test(tc, test_host_forms);
#ifdef HAVE_HIREDIS
    tcase_add_test(tc, test_open_timeout);
    tcase_add_test(tc, test_connect_timeout_addresses);
#endif
    tcase_add_test(tc, test_pipelined);
    tcase_add_test(tc, test_cluster_keymode);
#ifdef HAVE_HIREDIS
    tcase_add_test(tc, test_migration);
    tcase_add_test(tc, test_slot_directory);
    tcase_add_test(tc, test_token_counter_back);
    tcase_add_test(tc, test_connect_timeout);
    tcase_add_test(tc, test_transient_give_up);
    tcase_add_test(tc, test_transient_clears);
#endif
    tcase_add_test(tc, test_hung_node);
    tcase_add_test(tc, test_master_down);
    tcase_add_test(tc, test_failover);
#ifdef HAVE_OPENSSL
    tcase_add_test(tc, test_tls_open);
    tcase_add_test(tc, test_tls_verify);
    tcase_add_test(tc, test_tls_client_cert);
    tcase_add_test(tc, test_tls_auth_refused);
#ifdef HAVE_HIREDIS
    tcase_add_test(tc, test_tls_next_address);
#endif
    tcase_add_test(tc, test_tls_reconnect_cert_hint);
    tcase_add_test(tc, test_failover_tls); /* last: t1 stays down */
#else
    tcase_add_test(tc, test_tls_notsup);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(redis_suite());
}
