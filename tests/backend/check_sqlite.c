/*
 * check_sqlite.c - what only the SQLite backend promises: persistence,
 * read-only stores, refusal of foreign files, synchronous=FULL, group commit
 * (and how groups form), two opens of one file, the token counter (its
 * reservations and its end), WAL restarts under a light load, streaming
 * queries, the snapshot of a reader connection, the writer's gathered WAL
 * writes under KV_SQLITE_SYNC_FULL, reads through the file's map.  The behaviour every backend
 * shares is in the conformance suite (tests/conformance/).
 */
#include "config.h"

#include "store/store_int.h"
#include "backend/sqlite/sqlite.h"
#include "util/time.h"
#include "testutil.h"

#include <inttypes.h>
#include <semaphore.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

static kv_loop *loop;
static kv_pool *pool;
static char *dir;
static char dbpath[4200];

/* Keys made with K() live until teardown. */
static kv_key *keys[256];
static size_t nkeys;

static void setup(void)
{
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&pool, 2), KV_OK);
    tu_tmpdir_new(&dir);
    snprintf(dbpath, sizeof dbpath, "%s/store.db", dir);
    nkeys = 0;
}

static void teardown(void)
{
    for (size_t i = 0; i < nkeys; i++)
        kv_key_free(keys[i]);
    nkeys = 0;
    kv_pool_free(pool);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    tu_tmpdir_free(&dir);
}

static const kv_key *K(const char *path)
{
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, path), KV_OK);
    ck_assert_uint_lt(nkeys, KV__ARRAY_SIZE(keys));
    keys[nkeys++] = k;
    return k;
}

static kv_store *open_store(const char *path, unsigned flags)
{
    kv_store *s = NULL;
    int rc = kv_sqlite_open(&s, loop, pool, path, flags);
    ck_assert_msg(rc == KV_OK, "open %s: %s: %s", path, kv_err_name(rc),
                  kv_last_errmsg());
    return s;
}

static void close_store(kv_store *s)
{
    kv_fut *f = kv_close(s);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(s);
}

/* Put val (a string) with token; returns the new token. */
static uint64_t put(kv_store *s, const char *key, const char *val,
                    uint64_t token)
{
    kv_record r = {(kv_key *)K(key), (void *)val, strlen(val), token};
    kv_fut *f = kv_put(s, &r, NULL);
    int rc = kv_wait(f);
    ck_assert_msg(rc == KV_OK, "put %s: %s: %s", key, kv_err_name(rc),
                  kv_fut_errmsg(f));
    uint64_t t = kv_fut_token(f);
    ck_assert_uint_ne(t, 0);
    kv_fut_free(f);
    return t;
}

static int put_rc(kv_store *s, const char *key, const char *val,
                  uint64_t token)
{
    kv_record r = {(kv_key *)K(key), (void *)val, strlen(val), token};
    kv_fut *f = kv_put(s, &r, NULL);
    int rc = kv_wait(f);
    kv_fut_free(f);
    return rc;
}

/* Get key: its value must be want (NULL: absent); returns the token. */
static uint64_t get_is(kv_store *s, const char *key, const char *want)
{
    kv_fut *f = kv_get(s, K(key), NULL);
    int rc = kv_wait(f);
    if (want == NULL) {
        ck_assert_kv(rc, KV_ENOTFOUND);
        kv_fut_free(f);
        return 0;
    }
    ck_assert_msg(rc == KV_OK, "get %s: %s: %s", key, kv_err_name(rc),
                  kv_fut_errmsg(f));
    const kv_record *r = kv_fut_record(f);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->len, strlen(want));
    ck_assert(memcmp(r->val, want, r->len) == 0);
    uint64_t t = r->token;
    kv_fut_free(f);
    return t;
}

static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "?");
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

static struct kv__sqlite_stats stats(kv_store *s)
{
    struct kv__sqlite_stats st;
    ck_assert_kv(kv__sqlite_stats(s, &st), KV_OK);
    return st;
}

/* Close s and open path again with flags. */
static kv_store *reopen(kv_store *s, const char *path, unsigned flags)
{
    close_store(s);
    return open_store(path, flags);
}

/* Wait for f and free it; returns its status. */
static int settle(kv_fut *f)
{
    int rc = kv_wait(f);
    kv_fut_free(f);
    return rc;
}

/* Wait for the batch write f, which must succeed with no key skipped, and
 * free it. */
static void batch_ok(kv_fut *f)
{
    ck_assert_msg(kv_wait(f) == KV_OK, "batch: %s", kv_fut_errmsg(f));
    size_t nskip = 0;
    kv_fut_keys(f, &nskip);
    ck_assert_uint_eq(nskip, 0);
    kv_fut_free(f);
}

/* Move everything below from to below to, atomically; returns the status. */
static int move(kv_store *s, const char *from, const char *to)
{
    const kv_key *f1[] = {K(from)}, *t1[] = {K(to)};
    return settle(kv_move_prefix_atomic(s, f1, t1, 1));
}

/* Open q on s (which must succeed) and take its iterator. */
static kv_iter *open_iter(kv_store *s, const kv_query *q)
{
    kv_fut *f = kv_query_open(s, q, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    ck_assert_ptr_nonnull(it);
    kv_fut_free(f);
    return it;
}

/* Fetch the rest of it, count the records into *n, free it; returns the
 * fetch's status. */
static int drain(kv_iter *it, size_t *n)
{
    kv_fut *f = kv_iter_fetch_all(it);
    int rc = kv_wait(f);
    if (rc == KV_OK)
        kv_fut_records(f, n);
    kv_fut_free(f);
    kv_iter_free(it);
    return rc;
}

/* Records below root (itself included), values and all; returns the
 * fetch's status. */
static int query_all_rc(kv_store *s, const char *root, size_t *n)
{
    kv_query q = kv_query_init(K(root));
    return drain(open_iter(s, &q), n);
}

/* The integer of the one row sql returns, through a read-only connection
 * of its own to path. */
static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL),
                     SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK,
                  "%s: %s", sql, sqlite3_errmsg(db));
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    ck_assert_int_eq(sqlite3_finalize(st), SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    return v;
}

/* The token counter in kv_meta. */
static int64_t token_counter(const char *path)
{
    return sql_int(path, "SELECT value FROM kv_meta WHERE name = 'token'");
}

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

START_TEST(test_open_args)
{
    kv_store *s = NULL;
    ck_assert_kv(kv_sqlite_open(NULL, loop, pool, dbpath, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, NULL, pool, dbpath, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, NULL, dbpath, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, NULL, 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, "", 0), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0x100), KV_EINVAL);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath,
                                KV_SQLITE_SYNC_FULL | KV_SQLITE_SYNC_OFF),
                 KV_EINVAL);
    /* Another backend's flag is refused, not ignored, and named. */
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, KV_FS_NO_FSYNC),
                 KV_EINVAL);
    ck_assert_msg(strstr(kv_last_errmsg(), "KV_FS_NO_FSYNC") != NULL &&
                      strstr(kv_last_errmsg(), "fs") != NULL,
                  "%s", kv_last_errmsg());
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, KV_FS_FANOUT),
                 KV_EINVAL);
    {
        char fsroot[4300];
        snprintf(fsroot, sizeof fsroot, "%s.fsroot", dbpath);
        ck_assert_kv(kv_fs_open(&s, loop, pool, fsroot, 0,
                                KV_SQLITE_SYNC_FULL),
                     KV_EINVAL);
        ck_assert_msg(strstr(kv_last_errmsg(), "KV_SQLITE_SYNC_FULL") != NULL,
                      "%s", kv_last_errmsg());
        ck_assert_kv(kv_redis_open(&s, loop, pool, "redis://127.0.0.1:1",
                                   KV_FS_NO_FSYNC),
                     KV_EINVAL);
        ck_assert_msg(strstr(kv_last_errmsg(), "KV_FS_NO_FSYNC") != NULL,
                      "%s", kv_last_errmsg());
    }
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, KV_SQLITE_MEMORY,
                                KV_READONLY),
                 KV_EINVAL);
    ck_assert_ptr_null(s);
    ck_assert(access(dbpath, F_OK) != 0); /* nothing was created */
}
END_TEST

START_TEST(test_open_not_a_database)
{
    FILE *fp = fopen(dbpath, "w");
    ck_assert_ptr_nonnull(fp);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database, just some text\n", fp);
    fclose(fp);
    for (int ro = 0; ro < 2; ro++) {
        kv_store *s = NULL;
        int rc = kv_sqlite_open(&s, loop, pool, dbpath, ro ? KV_READONLY : 0);
        ck_assert_kv(rc, KV_EBACKEND); /* as kvstore.h documents */
        ck_assert_ptr_null(s);
        ck_assert_msg(strstr(kv_last_errmsg(), "not a database") != NULL,
                      "message: %s", kv_last_errmsg());
    }
}
END_TEST

START_TEST(test_open_foreign_database)
{
    sql_exec(dbpath, "CREATE TABLE other(x); INSERT INTO other VALUES(1);");
    for (int ro = 0; ro < 2; ro++) {
        kv_store *s = NULL;
        int rc = kv_sqlite_open(&s, loop, pool, dbpath, ro ? KV_READONLY : 0);
        ck_assert_kv(rc, KV_EBACKEND);
        ck_assert_msg(strstr(kv_last_errmsg(), "not a kvstore database") !=
                          NULL,
                      "message: %s", kv_last_errmsg());
    }
    /* It was left alone. */
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM "
                                            "sqlite_master",
                                        -1, &st, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 1);
    ck_assert_int_eq(sqlite3_finalize(st), SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}
END_TEST

START_TEST(test_open_future_format)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/a", "1", 0);
    close_store(s);
    sql_exec(dbpath, "UPDATE kv_meta SET value = 2 WHERE name = 'format'");
    s = NULL;
    int rc = kv_sqlite_open(&s, loop, pool, dbpath, 0);
    ck_assert_kv(rc, KV_EBACKEND);
    ck_assert_msg(strstr(kv_last_errmsg(), "format 2") != NULL, "message: %s",
                  kv_last_errmsg());
    sql_exec(dbpath, "DELETE FROM kv_meta WHERE name = 'token'");
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_EBACKEND);
    sql_exec(dbpath, "UPDATE kv_meta SET value = 1 WHERE name = 'format'");
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_ECORRUPT);
}
END_TEST

START_TEST(test_file_is_wal)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/a", "1", 0);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st,
                                        NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    ck_assert_int_eq(sqlite3_finalize(st), SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    s = reopen(s, dbpath, 0);
    ck_assert_str_eq(kv_store_backend(s), "sqlite");
    close_store(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Persistence and tokens                                                   */
/* ------------------------------------------------------------------------ */

START_TEST(test_persistence)
{
    kv_store *s = open_store(dbpath, 0);
    uint64_t ta = put(s, "/a", "alpha", 0);
    uint64_t tb = put(s, "/a/b", "beta", 0);
    uint64_t tc = put(s, "/c", "gamma", 0);
    ta = put(s, "/a", "alpha2", ta);
    s = reopen(s, dbpath, 0);
    ck_assert_uint_eq(get_is(s, "/a", "alpha2"), ta);
    ck_assert_uint_eq(get_is(s, "/a/b", "beta"), tb);
    ck_assert_uint_eq(get_is(s, "/c", "gamma"), tc);
    /* Tokens keep growing after a reopen. */
    uint64_t td = put(s, "/d", "delta", 0);
    ck_assert_uint_gt(td, ta);
    ck_assert_uint_gt(td, tc);
    /* The old token of /a is stale, the current one works. */
    ck_assert_kv(put_rc(s, "/a", "x", ta - 1), KV_ECONFLICT);
    put(s, "/a", "alpha3", ta);
    close_store(s);
}
END_TEST

START_TEST(test_tokens_never_repeat)
{
    uint64_t seen[64];
    size_t nseen = 0;
    kv_store *s = open_store(dbpath, 0);
    for (int round = 0; round < 8; round++) {
        uint64_t t = put(s, "/k", "v", 0);
        for (size_t i = 0; i < nseen; i++)
            ck_assert_uint_ne(seen[i], t);
        seen[nseen++] = t;
        t = put(s, "/k", "w", t);
        for (size_t i = 0; i < nseen; i++)
            ck_assert_uint_ne(seen[i], t);
        seen[nseen++] = t;
        ck_assert_kv(settle(kv_delete(s, K("/k"), t)), KV_OK);
        if (round % 2 == 1) /* and across reopen */
            s = reopen(s, dbpath, 0);
    }
    close_store(s);
}
END_TEST

START_TEST(test_sync_full)
{
    kv_store *s = open_store(dbpath, KV_SQLITE_SYNC_FULL);
    uint64_t t = put(s, "/durable", "yes", 0);
    s = reopen(s, dbpath, KV_SQLITE_SYNC_FULL);
    ck_assert_uint_eq(get_is(s, "/durable", "yes"), t);
    s = reopen(s, dbpath, KV_SQLITE_SYNC_OFF);
    put(s, "/fast", "yes", 0);
    close_store(s);
}
END_TEST

START_TEST(test_token_overflow)
{
    kv_store *s = open_store(dbpath, 0);
    uint64_t t = put(s, "/a", "1", 0);
    close_store(s);
    char sql[128];
    snprintf(sql, sizeof sql,
             "UPDATE kv_meta SET value = %" PRId64 " WHERE name = 'token'",
             INT64_MAX - 1);
    sql_exec(dbpath, sql);

    s = open_store(dbpath, 0);
    uint64_t t2 = put(s, "/a", "2", t); /* takes INT64_MAX */
    ck_assert_uint_eq(t2, (uint64_t)INT64_MAX);
    kv_record r = {(kv_key *)K("/a"), "3", 1, t2};
    kv_fut *f = kv_put(s, &r, NULL);
    ck_assert_kv(kv_wait(f), KV_ECORRUPT);
    ck_assert_msg(strstr(kv_fut_errmsg(f), "INT64_MAX") != NULL, "%s",
                  kv_fut_errmsg(f));
    kv_fut_free(f);
    ck_assert_kv(put_rc(s, "/b", "new", 0), KV_ECORRUPT);
    /* Nothing was written, reads and deletes still work. */
    ck_assert_uint_eq(get_is(s, "/a", "2"), t2);
    get_is(s, "/b", NULL);
    ck_assert_kv(settle(kv_delete(s, K("/a"), t2)), KV_OK);
    ck_assert_kv(put_rc(s, "/a", "again", 0), KV_ECORRUPT); /* no wrap */
    close_store(s);
}
END_TEST

/* A counter below 0 or of the wrong type is corruption, not a reset. */
START_TEST(test_token_counter_corrupt)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/a", "1", 0);
    close_store(s);
    sql_exec(dbpath, "UPDATE kv_meta SET value = -5 WHERE name = 'token'");
    s = NULL;
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_ECORRUPT);
}
END_TEST

/* Every stored token is distinct and at most the counter in kv_meta. */
static void check_tokens(const char *path)
{
    ck_assert_int_eq(sql_int(path, "SELECT count(*) - count(DISTINCT token) "
                                   "FROM kv"),
                     0);
    ck_assert_int_le(sql_int(path, "SELECT ifnull(max(token), 0) FROM kv"),
                     token_counter(path));
}

/*
 * The writer reserves tokens in blocks: kv_meta is not rewritten by every
 * commit (a put alone in its commit writes one page, not two), yet the
 * counter stays at least every committed token; another open of the file
 * hands out tokens above this one's reservation, and this one then above
 * the other's; a reopen goes on above the counter.
 */
START_TEST(test_token_reservation)
{
    kv_store *a = open_store(dbpath, 0);
    uint64_t last = put(a, "/a/0", "x", 0);
    int64_t counter = token_counter(dbpath);
    ck_assert_int_ge(counter, (int64_t)last);
    for (int i = 1; i < 20; i++) { /* each put its own commit */
        char name[32];
        snprintf(name, sizeof name, "/a/%d", i);
        uint64_t t = put(a, name, "x", 0);
        ck_assert_uint_gt(t, last);
        ck_assert_uint_le(t, (uint64_t)counter);
        last = t;
    }
    ck_assert_int_eq(token_counter(dbpath), counter);
    kv_store *b = open_store(dbpath, 0);
    for (int i = 0; i < 10; i++) {
        char name[32];
        snprintf(name, sizeof name, "/b/%d", i);
        uint64_t t = put(i % 2 == 0 ? b : a, name, "x", 0);
        ck_assert_uint_gt(t, last);
        ck_assert_int_ge(token_counter(dbpath), (int64_t)t);
        last = t;
    }
    close_store(b);
    a = reopen(a, dbpath, 0);
    ck_assert_uint_gt(put(a, "/after", "x", 0), last);
    close_store(a);
    check_tokens(dbpath);
}
END_TEST

/* Rows that kvstore never writes are reported as corruption. */
START_TEST(test_corrupt_rows)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/good", "1", 0);
    close_store(s);
    /* "/bad" (62 61 64 00) with a text token; "/zz" without its 00. */
    sql_exec(dbpath, "INSERT INTO kv(key, val, token) VALUES "
                     "(x'62616400', x'00', 'seven'), (x'7a7a', x'00', 3)");
    s = open_store(dbpath, 0);
    get_is(s, "/good", "1");
    ck_assert_kv(settle(kv_get(s, K("/bad"), NULL)), KV_ECORRUPT);
    size_t n = 0;
    ck_assert_kv(query_all_rc(s, "/bad", &n), KV_ECORRUPT);
    ck_assert_kv(query_all_rc(s, "/", &n), KV_ECORRUPT);
    ck_assert_kv(query_all_rc(s, "/good", &n), KV_OK);
    ck_assert_uint_eq(n, 1);
    close_store(s);
    sql_exec(dbpath, "DELETE FROM kv WHERE key <> x'676f6f6400';"
                     "INSERT INTO kv(key, val, token) VALUES (x'', x'', 9)");
    s = open_store(dbpath, 0);
    ck_assert_kv(query_all_rc(s, "/", &n), KV_ECORRUPT);
    ck_assert_kv(move(s, "/good", "/fine"), KV_OK);
    get_is(s, "/fine", "1");
    close_store(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Read-only                                                                */
/* ------------------------------------------------------------------------ */

/* A key of n namespaces, each the byte c repeated seg times (freed at
 * teardown). */
static const kv_key *key_rep(size_t n, size_t seg, char c)
{
    char *p = malloc(n * (seg + 1) + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        p[o++] = '/';
        memset(p + o, c, seg);
        o += seg;
    }
    p[o] = '\0';
    const kv_key *k = K(p);
    free(p);
    return k;
}

/* Put, get, has and delete of k all give want (KV_OK: k is then gone). */
static void limit_ops(kv_store *s, const kv_key *k, int want)
{
    kv_record r = {(kv_key *)k, "v", 1, 0};
    kv_fut *f = kv_put(s, &r, NULL);
    ck_assert_kv(kv_wait(f), want);
    uint64_t tok = want == KV_OK ? kv_fut_token(f) : 0;
    kv_fut_free(f);
    f = kv_get(s, k, NULL);
    ck_assert_kv(kv_wait(f), want);
    kv_fut_free(f);
    f = kv_has(s, k);
    ck_assert_kv(kv_wait(f), want);
    kv_fut_free(f);
    f = kv_delete(s, k, tok);
    ck_assert_kv(kv_wait(f), want);
    kv_fut_free(f);
}

/* The key limits of kvstore.h, the same as on fs (check_fs has the same
 * test): SQLite could hold more, but a dump must load into any backend. */
START_TEST(test_key_limits)
{
    kv_store *s = open_store(dbpath, 0);
    limit_ops(s, key_rep(KV_KEY_MAX_DEPTH, 1, 'n'), KV_OK);
    limit_ops(s, key_rep(KV_KEY_MAX_DEPTH + 1, 1, 'n'), KV_EINVAL);
    limit_ops(s, key_rep(1000, 1, 'n'), KV_EINVAL);
    limit_ops(s, key_rep(1, KV_NS_MAX_LEN, '%'), KV_OK);
    limit_ops(s, key_rep(1, KV_NS_MAX_LEN + 1, '%'), KV_EINVAL);
    /* a field counts with its ':' */
    char id[KV_NS_MAX_LEN + 3];
    memset(id, 'f', sizeof id);
    id[0] = '/';
    id[100] = ':';
    id[KV_NS_MAX_LEN + 1] = '\0';
    limit_ops(s, K(id), KV_OK);
    id[KV_NS_MAX_LEN + 1] = 'f';
    id[KV_NS_MAX_LEN + 2] = '\0';
    limit_ops(s, K(id), KV_EINVAL);
    /* the whole id: 4 namespaces of 1023 bytes and their '/' is 4096 */
    const kv_key *k = key_rep(4, KV_KEY_MAX_LEN / 4 - 1, 'k');
    ck_assert_uint_eq(strlen(kv_key_id(k)), KV_KEY_MAX_LEN);
    limit_ops(s, k, KV_OK);
    const kv_key *k1 = K("/x");
    kv_key *over = NULL;
    const kv_key *parts[2] = {k, k1};
    ck_assert_kv(kv_key_concat(&over, parts, 2), KV_OK);
    limit_ops(s, over, KV_EINVAL);
    /* moves check both keys */
    put(s, "/x", "x", 0);
    const kv_key *from[1] = {k1}, *to[1] = {over};
    kv_fut *f = kv_move_prefix_atomic(s, from, to, 1);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    kv_fut_free(f);
    get_is(s, "/x", "x");
    kv_key_free(over);
    close_store(s);
}
END_TEST

START_TEST(test_readonly)
{
    kv_store *s = open_store(dbpath, 0);
    uint64_t t = put(s, "/a", "1", 0);
    put(s, "/a/b", "2", 0);
    close_store(s);

    kv_store *ro = open_store(dbpath, KV_READONLY);
    ck_assert_uint_eq(get_is(ro, "/a", "1"), t);
    kv_fut *f = kv_has(ro, K("/a/b"));
    ck_assert_kv(kv_wait(f), KV_OK);
    ck_assert(kv_fut_bool(f));
    kv_fut_free(f);

    ck_assert_kv(put_rc(ro, "/a", "x", t), KV_EREADONLY);
    ck_assert_kv(put_rc(ro, "/new", "x", 0), KV_EREADONLY);
    ck_assert_kv(settle(kv_delete(ro, K("/a"), t)), KV_EREADONLY);
    const kv_key *drop[] = {K("/a")};
    ck_assert_kv(settle(kv_drop_prefix(ro, drop, 1)), KV_EREADONLY);

    size_t n = 0;
    ck_assert_kv(query_all_rc(ro, "/", &n), KV_OK);
    ck_assert_uint_eq(n, 2);
    close_store(ro);

    /* Nothing changed. */
    s = open_store(dbpath, 0);
    ck_assert_uint_eq(get_is(s, "/a", "1"), t);
    close_store(s);
}
END_TEST

START_TEST(test_readonly_missing)
{
    kv_store *s = NULL;
    int rc = kv_sqlite_open(&s, loop, pool, dbpath, KV_READONLY);
    ck_assert_kv(rc, KV_EREADONLY);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(kv_last_errmsg(), "store.db") != NULL, "message: %s",
                  kv_last_errmsg());
    ck_assert(access(dbpath, F_OK) != 0);
}
END_TEST

/* A read-only store sees what a writer commits meanwhile. */
START_TEST(test_readonly_sees_writer)
{
    kv_store *w = open_store(dbpath, 0);
    put(w, "/a", "1", 0);
    kv_store *ro = open_store(dbpath, KV_READONLY);
    get_is(ro, "/a", "1");
    uint64_t t = put(w, "/b", "2", 0);
    ck_assert_uint_eq(get_is(ro, "/b", "2"), t);
    close_store(ro);
    close_store(w);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Group commit                                                             */
/* ------------------------------------------------------------------------ */

/* Writes submitted while the loop does not run form one group. */
static void group_commit(const char *path)
{
    enum { N = 1000 };
    kv_store *s = open_store(path, 0);
    struct kv__sqlite_stats before = stats(s);
    kv_fut *fs[N];
    for (int i = 0; i < N; i++) {
        char name[32], val[32];
        snprintf(name, sizeof name, "/g/%04d", i);
        snprintf(val, sizeof val, "v%d", i);
        kv_key *k = NULL;
        ck_assert_kv(kv_key_parse(&k, name), KV_OK);
        fs[i] = kv_put_value(s, k, val, strlen(val), NULL);
        kv_key_free(k);
    }
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(fs[i]), KV_OK);
        uint64_t t = kv_fut_token(fs[i]);
        ck_assert_uint_gt(t, last); /* in submission order */
        last = t;
        kv_fut_free(fs[i]);
    }
    struct kv__sqlite_stats after = stats(s);
    ck_assert_uint_eq(after.write_reqs - before.write_reqs, N);
    ck_assert_uint_eq(after.groups - before.groups, 1);
    ck_assert_uint_eq(after.commits - before.commits, 1);
    ck_assert_uint_eq(after.max_group, N);
    /* Each put kept its own result: every value is there. */
    ck_assert_uint_eq(tu_query_count(s, K("/g")), N);
    close_store(s);
}

START_TEST(test_group_commit_file) { group_commit(dbpath); }
END_TEST

START_TEST(test_group_commit_memory) { group_commit(KV_SQLITE_MEMORY); }
END_TEST

/* A writer that puts again from each put's callback (a closed loop, as a
 * server or kvbench at some depth runs). */
typedef struct chain {
    kv_store *s;
    int id, round, rounds;
    int errors;
} chain;

static void chain_put(chain *c);

static void chain_done(kv_fut *f, void *arg)
{
    chain *c = arg;
    if (kv_fut_status(f) != KV_OK)
        c->errors++;
    kv_fut_free(f);
    if (++c->round < c->rounds && c->errors == 0)
        chain_put(c);
}

static void chain_put(chain *c)
{
    char name[48];
    snprintf(name, sizeof name, "/chain/%d/%d", c->id, c->round);
    kv_key *k = NULL;
    ck_assert_kv(kv_key_parse(&k, name), KV_OK);
    kv_fut *f = kv_put_value(c->s, k, "v", 1, NULL);
    kv_key_free(k);
    ck_assert_kv(kv_fut_then(f, chain_done, c), KV_OK);
}

/*
 * When a group completes, the puts its callbacks submit form the next group
 * whole: the writer starts once the loop has run those callbacks, not on
 * the first of them (which made a group of one, then one of the rest: two
 * commits, and under KV_SQLITE_SYNC_FULL two fsyncs, per round).
 */
static void group_rounds(const char *path)
{
    enum { W = 16, ROUNDS = 6 };
    kv_store *s = open_store(path, KV_SQLITE_SYNC_OFF);
    struct kv__sqlite_stats before = stats(s);
    chain c[W];
    for (int i = 0; i < W; i++) {
        c[i] = (chain){.s = s, .id = i, .rounds = ROUNDS};
        chain_put(&c[i]);
    }
    /* Run the loop until it has nothing left to do. */
    int r;
    while ((r = kv_loop_run(loop, KV_RUN_ONCE)) > 0)
        ;
    ck_assert_int_eq(r, 0);
    for (int i = 0; i < W; i++) {
        ck_assert_int_eq(c[i].errors, 0);
        ck_assert_int_eq(c[i].round, ROUNDS);
    }
    struct kv__sqlite_stats after = stats(s);
    ck_assert_uint_eq(after.write_reqs - before.write_reqs, W * ROUNDS);
    ck_assert_uint_eq(after.groups - before.groups, ROUNDS);
    ck_assert_uint_eq(after.commits - before.commits, ROUNDS);
    ck_assert_uint_eq(after.max_group, W);
    ck_assert_uint_eq(tu_query_count(s, K("/chain")), W * ROUNDS);
    close_store(s);
}

START_TEST(test_group_rounds_file) { group_rounds(dbpath); }
END_TEST

START_TEST(test_group_rounds_memory) { group_rounds(KV_SQLITE_MEMORY); }
END_TEST

/*
 * Writes made on another thread: their outcomes go back to that thread, and
 * its callbacks' next writes come a round trip later, one by one.  The
 * writer waits for as many as the last group held (or a timeout), so the
 * rounds form whole groups.  The first round may split (nothing is
 * expected yet: its group starts at the first arrivals), its pieces then
 * run a round apart and the last rounds end piece by piece: measured 40
 * to 43 groups for 40 rounds, also with four copies of the test at once.
 * Without the wait the store's loop started a group at the first arrivals
 * of every round: 86 to 212 groups.
 */
enum { FW_W = 64, FW_ROUNDS = 40 };

/* In a thread's function over a context c with ok and why: note the first
 * failure (check's assertions belong to the test's own thread). */
#define ANY_EXPECT(cond, ...)                                              \
    do {                                                                   \
        if (!(cond) && c->ok) {                                            \
            c->ok = false;                                                 \
            snprintf(c->why, sizeof c->why, __VA_ARGS__);                  \
        }                                                                  \
    } while (0)


typedef struct fwd_ctx fwd_ctx;
struct fwd_ctx {
    kv_store *s;
    void (*body)(fwd_ctx *c); /* run on the thread, its loop made (tl) */
    kv_loop *tl;
    chain c[FW_W];
    int n;            /* fwd_lone: puts in its first wave */
    sem_t done;
    bool ok;
    char why[160];
};

/* Another thread: its own loop, c->body, then done (and the store's loop,
 * which waits in KV_RUN_WAIT, woken). */
static void *fwd_thread(void *arg)
{
    fwd_ctx *c = arg;
    c->ok = kv_loop_new(&c->tl, NULL) == KV_OK;
    if (c->ok) {
        c->body(c);
        ANY_EXPECT(kv_loop_free(c->tl) == KV_OK, "kv_loop_free: %s",
                   kv_last_errmsg());
    } else {
        snprintf(c->why, sizeof c->why, "kv_loop_new failed");
    }
    sem_post(&c->done);
    kv_loop_wake(kv_store_loop(c->s));
    return NULL;
}

/* FW_W chains of FW_ROUNDS forwarded puts. */
static void fwd_chains(fwd_ctx *c)
{
    for (int i = 0; i < FW_W; i++) {
        c->c[i] = (chain){.s = c->s, .id = i, .rounds = FW_ROUNDS};
        chain_put(&c->c[i]);
    }
    int r;
    while ((r = kv_loop_run(c->tl, KV_RUN_ONCE)) > 0)
        ;
    ANY_EXPECT(r == 0, "kv_loop_run: %s", kv_err_name(r));
    for (int i = 0; i < FW_W; i++)
        ANY_EXPECT(c->c[i].errors == 0 && c->c[i].round == FW_ROUNDS,
                   "chain %d: %d errors, round %d", i, c->c[i].errors,
                   c->c[i].round);
}

/* Run body (n: its c->n) on another thread against s, whose writer waits
 * gather_ns for forwarded writes, serving s's loop (this thread's) until
 * body is done; the groups and the writes it made. */
static struct kv__sqlite_stats fwd_run(kv_store *s, void (*body)(fwd_ctx *),
                                       int n, uint64_t gather_ns)
{
    ck_assert_kv(kv__sqlite_set_gather_ns(s, gather_ns), KV_OK);
    struct kv__sqlite_stats before = stats(s);
    static fwd_ctx c;
    memset(&c, 0, sizeof c);
    c.s = s;
    c.body = body;
    c.n = n;
    pthread_t t;
    ck_assert_int_eq(sem_init(&c.done, 0, 0), 0);
    ck_assert_int_eq(pthread_create(&t, NULL, fwd_thread, &c), 0);
    while (sem_trywait(&c.done) != 0)
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_WAIT), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    sem_destroy(&c.done);
    ck_assert_msg(c.ok, "%s", c.why);
    struct kv__sqlite_stats after = stats(s);
    after.groups -= before.groups;
    after.write_reqs -= before.write_reqs;
    return after;
}

START_TEST(test_group_rounds_forwarded)
{
    kv_store *s = open_store(dbpath, 0);
    /* Arrivals end the wait here, not the timeout (as a loaded run's
     * preempted thread would), except where the pieces of a split first
     * round end (their last puts wait for writes that will not come):
     * 0.2 s. */
    struct kv__sqlite_stats d = fwd_run(s, fwd_chains, 0, 200000000u);
    ck_assert_uint_eq(d.write_reqs, FW_W * FW_ROUNDS);
    ck_assert_uint_le(d.groups, FW_ROUNDS * 3 / 2);
    ck_assert_uint_eq(tu_query_count(s, K("/chain")), FW_W * FW_ROUNDS);
    close_store(s);
}
END_TEST

/* Puts /lone/<from> .. /lone/<to - 1> together and waits for them. */
static void fwd_wave(fwd_ctx *c, int from, int to)
{
    kv_fut *fs[FW_W];
    for (int i = from; i < to; i++) {
        char name[32];
        snprintf(name, sizeof name, "/lone/%d", i);
        kv_key *k = NULL;
        ANY_EXPECT(kv_key_parse(&k, name) == KV_OK, "key %s", name);
        fs[i - from] = kv_put_value(c->s, k, "v", 1, NULL);
        kv_key_free(k);
    }
    for (int i = from; i < to; i++) {
        int rc = kv_wait(fs[i - from]);
        ANY_EXPECT(rc == KV_OK, "put %d: %s", i, kv_err_name(rc));
        kv_fut_free(fs[i - from]);
    }
}

/* c->n forwarded puts, then one more. */
static void fwd_lone(fwd_ctx *c)
{
    fwd_wave(c, 0, c->n);
    fwd_wave(c, c->n, c->n + 1);
}

/* A caller that does not come back as expected (n forwarded puts, then
 * one): the writer's wait ends by its timeout, and the lone put completes
 * in a group of its own. */
START_TEST(test_group_forwarded_timeout)
{
    kv_store *s = open_store(dbpath, 0);
    struct kv__sqlite_stats d = fwd_run(s, fwd_lone, 8, 50000000u);
    ck_assert_uint_eq(d.write_reqs, 9);
    ck_assert_uint_eq(tu_query_count(s, K("/lone")), 9);
    close_store(s);
}
END_TEST

/* In one group: a conflicting atomic batch rolls back alone, and each
 * request keeps its own result. */
START_TEST(test_group_mixed_results)
{
    kv_store *s = open_store(dbpath, 0);
    uint64_t t = put(s, "/x", "0", 0);
    kv_record ok1 = {(kv_key *)K("/y"), "y", 1, 0};
    kv_record stale = {(kv_key *)K("/x"), "bad", 3, t + 1000};
    kv_record atomic[2] = {{(kv_key *)K("/z1"), "z", 1, 0},
                           {(kv_key *)K("/x"), "z", 1, 0}};
    kv_record ok2 = {(kv_key *)K("/x"), "1", 1, t};
    kv_fut *f1 = kv_put(s, &ok1, NULL);
    kv_fut *f2 = kv_put(s, &stale, NULL);
    kv_fut *f3 = kv_put_atomic(s, atomic, 2, NULL);
    kv_fut *f4 = kv_put(s, &ok2, NULL);
    ck_assert_kv(kv_wait(f1), KV_OK);
    ck_assert_kv(kv_wait(f2), KV_ECONFLICT);
    ck_assert_kv(kv_wait(f3), KV_OK);
    size_t n = 0;
    const kv_key *const *conf = kv_fut_keys(f3, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(kv_key_id(conf[0]), "/x");
    ck_assert_kv(kv_wait(f4), KV_OK);
    kv_fut_free(f1);
    kv_fut_free(f2);
    kv_fut_free(f3);
    kv_fut_free(f4);
    get_is(s, "/z1", NULL); /* rolled back */
    get_is(s, "/x", "1");
    get_is(s, "/y", "y");
    close_store(s);
}
END_TEST

/* A write cancelled while it waits in the writer's queue is never run. */
START_TEST(test_cancel_queued_write)
{
    enum { N = 200, VICTIM = 150 };
    kv_store *s = open_store(dbpath, 0);
    kv_fut *fs[N];
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%03d", i);
        fs[i] = kv_put_value(s, K(name), "v", 1, NULL);
    }
    /* The loop has not run: every put waits in the writer's queue on the
     * loop thread (the writer starts at the loop's next turn). */
    kv_fut_cancel(fs[VICTIM]);
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(fs[i]), i == VICTIM ? KV_ECANCELED : KV_OK);
        kv_fut_free(fs[i]);
    }
    get_is(s, "/w/149", "v");
    get_is(s, "/w/150", NULL);
    get_is(s, "/w/151", "v");
    close_store(s);
}
END_TEST

/* Another connection holds the write lock past the busy timeout: the whole
 * group fails KV_EBUSY, reads go on meanwhile, writes work again after. */
START_TEST(test_write_lock_busy)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/r", "readable", 0);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(dbpath, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL),
                     SQLITE_OK);
    kv_fut *fs[3];
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "/locked/%d", i);
        fs[i] = kv_put_value(s, K(name), "v", 1, NULL);
    }
    /* The writer waits for the lock; a reader does not. */
    kv_fut *g = kv_get(s, K("/r"), NULL);
    ck_assert_kv(kv_wait(g), KV_OK);
    ck_assert(!kv_fut_done(fs[0]));
    kv_fut_free(g);
    for (int i = 0; i < 3; i++) {
        ck_assert_kv(kv_wait(fs[i]), KV_EBUSY);
        ck_assert_msg(strstr(kv_fut_errmsg(fs[i]), "locked") != NULL, "%s",
                      kv_fut_errmsg(fs[i]));
        kv_fut_free(fs[i]);
    }
    ck_assert_int_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    put(s, "/locked/0", "v", 0);
    get_is(s, "/locked/1", NULL);
    close_store(s);
}
END_TEST

/* The database's page size. */
static long page_size(const char *path)
{
    long page = (long)sql_int(path, "PRAGMA page_size");
    ck_assert_int_gt(page, 0);
    return page;
}

/* The WAL's size in frames (its header is 32 bytes, each frame has 24). */
static long wal_frames(const char *path, long page)
{
    char wal[4300];
    snprintf(wal, sizeof wal, "%s-wal", path);
    struct stat stb;
    if (stat(wal, &stb) != 0)
        return 0;
    return stb.st_size > 32 ? (long)(stb.st_size - 32) / (page + 24) : 0;
}

/*
 * Updates of one record, one at a time (each its own commit), on a store
 * using pool p: returns how many commits the WAL took to restart (the
 * first put after which the file did not grow: until a restart every
 * commit appends), or -1 if it did not within n.
 */
static int light_load(kv_pool *p, int n)
{
    kv_store *s = NULL;
    ck_assert_kv(kv_sqlite_open(&s, loop, p, dbpath, KV_SQLITE_SYNC_OFF), KV_OK);
    const kv_key *key = K("/wal");
    uint64_t t = put(s, "/wal", "0", 0);
    long page = page_size(dbpath);
    long last = wal_frames(dbpath, page);
    int restart = -1;
    for (int i = 1; i <= n && restart < 0; i++) {
        char val[16];
        snprintf(val, sizeof val, "%d", i);
        kv_record r = {(kv_key *)key, val, strlen(val), t};
        kv_fut *f = kv_put(s, &r, NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        t = kv_fut_token(f);
        kv_fut_free(f);
        long frames = wal_frames(dbpath, page);
        if (frames <= last)
            restart = i;
        last = frames;
    }
    close_store(s);
    return restart;
}

/*
 * Under a light load the WAL restarts after about a thousand commits, so
 * the file stops growing early and later commits overwrite its blocks (a
 * commit that appends makes its fsync write the inode too).  With a pool
 * of one thread the background checkpoint and the writer take turns and
 * the checkpoint catches up: what restarts the WAL this early is that a
 * checkpoint is due by commits, not only every 4000 pages (4000 commits
 * here).  With two threads the checkpoint runs beside the writer and never
 * quite catches up; the writer copies the few pages it left, where the WAL
 * would otherwise grow until 16000 pages.
 */
static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/*
 * The WAL stays under its bound (KV_SQLITE_WAL_MAX, here 1 MiB) across a
 * write burst of several times that: the writer checkpoints before it.
 * (Before the bound, the WAL grew to ~64 MiB before a forced checkpoint;
 * this burst left it at several MiB.)
 */
START_TEST(test_wal_bounded)
{
    enum { ROUNDS = 400, BATCH = 16, VLEN = 1000 };
    const long bound = 1L << 20;
    char walpath[4300];
    snprintf(walpath, sizeof walpath, "%s-wal", dbpath);
    /* a bad value is refused */
    kv_store *s = NULL;
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "1X", 1), 0);
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_EINVAL);
    ck_assert_ptr_null(s);
    ck_assert_str_eq(kv_last_errmsg(),
                     "sqlite: KV_SQLITE_WAL_MAX=\"1X\" is not a size from "
                     "256K to 1024G (bytes, or with K, M or G)");
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "100K", 1), 0); /* < 256K */
    ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_EINVAL);
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "1M", 1), 0);
    s = open_store(dbpath, 0);
    ck_assert_int_eq(unsetenv("KV_SQLITE_WAL_MAX"), 0);
    char val[VLEN];
    memset(val, 'v', sizeof val);
    long most = 0;
    size_t total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        kv_record recs[BATCH];
        kv_key *ks[BATCH];
        for (int i = 0; i < BATCH; i++) {
            char name[32];
            snprintf(name, sizeof name, "/b/%04d/%02d", r, i);
            ck_assert_kv(kv_key_parse(&ks[i], name), KV_OK);
            recs[i] = (kv_record){ks[i], val, sizeof val, 0};
        }
        kv_fut *f = kv_put_many(s, recs, BATCH, NULL);
        ck_assert_kv(kv_wait(f), KV_OK);
        kv_fut_free(f);
        for (int i = 0; i < BATCH; i++)
            kv_key_free(ks[i]);
        total += BATCH * VLEN;
        long w = file_size(walpath);
        if (w > most)
            most = w;
    }
    ck_assert_uint_gt(total, 5 * (size_t)bound);
    ck_assert_msg(most <= bound, "the WAL reached %ld bytes (bound %ld)",
                  most, bound);
    kv_fut *g = kv_get(s, K("/b/0000/00"), NULL);
    ck_assert_kv(kv_wait(g), KV_OK);
    ck_assert_uint_eq(kv_fut_record(g)->len, VLEN);
    kv_fut_free(g);
    close_store(s);
}
END_TEST

START_TEST(test_wal_restarts_light_load)
{
    enum { N = 3000, BY = 1300 };
    kv_pool *one = NULL;
    ck_assert_kv(kv_pool_new(&one, 1), KV_OK);
    int at = light_load(one, N);
    kv_pool_free(one);
    ck_assert_msg(at > 0 && at <= BY, "pool of 1: WAL restart after %d puts",
                  at);
    tu_rmrf(dir);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    at = light_load(pool, N);
    ck_assert_msg(at > 0 && at <= BY, "pool of 2: WAL restart after %d puts",
                  at);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Two opens of one file: CAS increments lose nothing                      */
/* ------------------------------------------------------------------------ */

typedef struct incr {
    kv_store *s;
    const kv_key *key;
    int left;      /* increments still to make */
    int conflicts;
    int errors;
    uint64_t token;
    long value;
} incr;

static void incr_get(incr *w);

static void incr_put_done(kv_fut *f, void *arg)
{
    incr *w = arg;
    int rc = kv_fut_status(f);
    kv_fut_free(f);
    if (rc == KV_OK)
        w->left--;
    else if (rc == KV_ECONFLICT)
        w->conflicts++;
    else
        w->errors++;
    if (w->left > 0 && w->errors == 0)
        incr_get(w);
}

static void incr_get_done(kv_fut *f, void *arg)
{
    incr *w = arg;
    const kv_record *r = kv_fut_record(f);
    if (kv_fut_status(f) != KV_OK || r == NULL) {
        w->errors++;
        kv_fut_free(f);
        return;
    }
    char buf[32];
    size_t n = r->len < sizeof buf - 1 ? r->len : sizeof buf - 1;
    memcpy(buf, r->val, n);
    buf[n] = '\0';
    long v = strtol(buf, NULL, 10) + 1;
    kv_record nr = {(kv_key *)w->key, buf, 0, r->token};
    snprintf(buf, sizeof buf, "%ld", v);
    nr.len = strlen(buf);
    kv_fut *pf = kv_put(w->s, &nr, NULL);
    kv_fut_free(f);
    ck_assert_kv(kv_fut_then(pf, incr_put_done, w), KV_OK);
}

static void incr_get(incr *w)
{
    kv_fut *f = kv_get(w->s, w->key, NULL);
    ck_assert_kv(kv_fut_then(f, incr_get_done, w), KV_OK);
}

START_TEST(test_two_opens_no_lost_update)
{
    enum { WORKERS = 8, EACH = 60 };
    /* Run 1: KV_SQLITE_SYNC_FULL, both writers on the WAL-gathering VFS, each
     * reading the other's commits. */
    unsigned flags = _i == 1 ? KV_SQLITE_SYNC_FULL : 0;
    kv_store *a = open_store(dbpath, flags);
    kv_store *b = open_store(dbpath, flags);
    put(a, "/counter", "0", 0);
    incr w[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].s = i % 2 ? b : a;
        w[i].key = K("/counter");
        w[i].left = EACH;
        incr_get(&w[i]);
    }
    while (kv_loop_run(loop, KV_RUN_ONCE) > 0) {
        bool busy = false;
        for (int i = 0; i < WORKERS; i++)
            busy |= w[i].left > 0 && w[i].errors == 0;
        if (!busy)
            break;
    }
    int conflicts = 0;
    for (int i = 0; i < WORKERS; i++) {
        ck_assert_int_eq(w[i].errors, 0);
        ck_assert_int_eq(w[i].left, 0);
        conflicts += w[i].conflicts;
    }
    char want[32];
    snprintf(want, sizeof want, "%d", WORKERS * EACH);
    get_is(a, "/counter", want);
    get_is(b, "/counter", want);
    /* Tokens from both opens come from one counter: none repeats. */
    uint64_t ta = put(a, "/t1", "x", 0), tb = put(b, "/t2", "x", 0);
    ck_assert_uint_ne(ta, tb);
    close_store(a);
    close_store(b);
    (void)conflicts;
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Streaming queries                                                        */
/* ------------------------------------------------------------------------ */

static void fill(kv_store *s, const char *prefix, int n)
{
    enum { BATCH = 1000 };
    kv_record *recs = calloc(BATCH, sizeof *recs);
    char (*vals)[32] = calloc(BATCH, sizeof *vals);
    ck_assert_ptr_nonnull(recs);
    ck_assert_ptr_nonnull(vals);
    for (int base = 0; base < n; base += BATCH) {
        int m = n - base < BATCH ? n - base : BATCH;
        for (int i = 0; i < m; i++) {
            char name[64];
            snprintf(name, sizeof name, "%s/%07d", prefix, base + i);
            ck_assert_kv(kv_key_parse(&recs[i].key, name), KV_OK);
            snprintf(vals[i], sizeof vals[i], "value-%d", base + i);
            recs[i].val = vals[i];
            recs[i].len = strlen(vals[i]);
            recs[i].token = 0;
        }
        batch_ok(kv_put_many(s, recs, (size_t)m, NULL));
        for (int i = 0; i < m; i++)
            kv_key_free(recs[i].key);
    }
    free(recs);
    free(vals);
}

static void stream(const char *path, int n)
{
    kv_store *s = open_store(path, KV_SQLITE_SYNC_OFF);
    fill(s, "/big", n);
    put(s, "/bigger", "not below /big", 0);
    struct kv__sqlite_stats before = stats(s);
    for (int desc = 0; desc < 2; desc++) {
        kv_query q = kv_query_init(K("/big"));
        q.sort = desc ? KV_SORT_DESC : KV_SORT_ASC;
        kv_iter *it = open_iter(s, &q);
        int i = 0;
        for (;;) {
            kv_fut *f = kv_iter_next(it);
            ck_assert_kv(kv_wait(f), KV_OK);
            const kv_record *r = kv_fut_record(f);
            if (r == NULL) {
                kv_fut_free(f);
                break;
            }
            int idx = desc ? n - 1 - i : i;
            char want[64];
            snprintf(want, sizeof want, "/big/%07d", idx);
            ck_assert_str_eq(kv_key_id(r->key), want);
            snprintf(want, sizeof want, "value-%d", idx);
            ck_assert_uint_eq(r->len, strlen(want));
            ck_assert(memcmp(r->val, want, r->len) == 0);
            kv_fut_free(f);
            i++;
        }
        ck_assert_int_eq(i, n);
        ck_assert(kv_iter_finished(it));
        kv_iter_free(it);
    }
    struct kv__sqlite_stats after = stats(s);
    /* Fetched in chunks: at least n / 256 fetches per pass. */
    ck_assert_uint_ge(after.fetches - before.fetches, 2 * (uint64_t)n / 256);
    close_store(s);
}

START_TEST(test_stream_file) { stream(dbpath, 100000); }
END_TEST

START_TEST(test_stream_memory) { stream(KV_SQLITE_MEMORY, 20000); }
END_TEST

/* A cursor's snapshot never leaks into later reads, and reads run while
 * a query holds its connection. */
START_TEST(test_cursor_isolation)
{
    kv_store *s = open_store(dbpath, 0);
    fill(s, "/q", 1000);
    kv_query q = kv_query_init(K("/q"));
    kv_iter *it = open_iter(s, &q);
    kv_fut *f = kv_iter_next(it);
    ck_assert_kv(kv_wait(f), KV_OK);
    ck_assert_str_eq(kv_key_id(kv_fut_record(f)->key), "/q/0000000");
    kv_fut_free(f);
    /* Writes after the cursor opened are visible to plain reads at once. */
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof name, "/new/%d", i);
        uint64_t t = put(s, name, "fresh", 0);
        ck_assert_uint_eq(get_is(s, name, "fresh"), t);
    }
    /* The iterator goes on to its end. */
    size_t n = 0;
    ck_assert_kv(drain(it, &n), KV_OK);
    ck_assert_uint_eq(n, 999);
    close_store(s);
}
END_TEST

/* Close with live cursors on reader connections releases them. */
START_TEST(test_close_with_cursors)
{
    kv_store *s = open_store(dbpath, 0);
    fill(s, "/c", 2000);
    kv_iter *its[5];
    for (int i = 0; i < 5; i++) {
        kv_query q = kv_query_init(K("/c"));
        q.value = i % 2 == 0;
        its[i] = open_iter(s, &q);
        ck_assert_kv(settle(kv_iter_next(its[i])), KV_OK);
    }
    ck_assert_uint_ge(stats(s).connections, 6);
    ck_assert_kv(settle(kv_close(s)), KV_OK);
    ck_assert_kv(settle(kv_iter_next(its[0])), KV_EITER);
    for (int i = 0; i < 5; i++)
        kv_iter_free(its[i]);
    kv_store_free(s);
    /* The file is whole: reopen and count. */
    s = open_store(dbpath, 0);
    ck_assert_uint_eq(tu_query_count(s, K("/c")), 2000);
    close_store(s);
}
END_TEST

/* Close with a thousand writes in flight: each completes, OK or canceled,
 * and a write is all or nothing. */
START_TEST(test_close_in_flight)
{
    enum { N = 1000 };
    kv_store *s = open_store(dbpath, 0);
    kv_fut *fs[N];
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "/f/%04d", i);
        kv_record recs[2] = {{NULL, "a", 1, 0}, {NULL, "b", 1, 0}};
        ck_assert_kv(kv_key_parse(&recs[0].key, name), KV_OK);
        ck_assert_kv(kv_key_child_str(&recs[1].key, recs[0].key, "x"), KV_OK);
        fs[i] = kv_put_atomic(s, recs, 2, NULL);
        kv_key_free(recs[0].key);
        kv_key_free(recs[1].key);
    }
    ck_assert_kv(settle(kv_close(s)), KV_OK);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(kv_fut_done(fs[i]));
        int rc = kv_fut_status(fs[i]);
        ck_assert_msg(rc == KV_OK || rc == KV_ECANCELED, "got %s",
                      kv_err_name(rc));
        ok += rc == KV_OK;
        kv_fut_free(fs[i]);
    }
    kv_store_free(s);
    s = open_store(dbpath, 0);
    size_t n = tu_query_count(s, K("/f"));
    ck_assert_uint_eq(n % 2, 0); /* never half a batch */
    ck_assert_uint_ge(n, 2 * (size_t)ok);
    close_store(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Move                                                                     */
/* ------------------------------------------------------------------------ */

START_TEST(test_move_swap_and_overlap)
{
    kv_store *s = open_store(KV_SQLITE_MEMORY, 0);
    uint64_t ta = put(s, "/a", "A", 0);
    put(s, "/a/1", "A1", 0);
    put(s, "/b", "B", 0);
    put(s, "/b/2", "B2", 0);
    /* A swap: each destination is being moved away. */
    const kv_key *from[] = {K("/a"), K("/b")}, *to[] = {K("/b"), K("/a")};
    ck_assert_kv(settle(kv_move_prefix_atomic(s, from, to, 2)), KV_OK);
    get_is(s, "/a", "B");
    get_is(s, "/a/2", "B2");
    get_is(s, "/b/1", "A1");
    uint64_t tb = get_is(s, "/b", "A");
    ck_assert_uint_gt(tb, ta); /* a fresh token */
    get_is(s, "/a/1", NULL);
    /* Moving below itself is refused by the store layer. */
    ck_assert_kv(move(s, "/b", "/b/x"), KV_EINVAL);
    get_is(s, "/b", "A");
    /* A move onto a free prefix renames the whole subtree. */
    ck_assert_kv(move(s, "/b", "/d/e"), KV_OK);
    get_is(s, "/d/e", "A");
    get_is(s, "/d/e/1", "A1");
    get_is(s, "/b", NULL);
    /* A collision moves nothing. */
    put(s, "/c/2", "C2", 0);
    ck_assert_kv(move(s, "/a", "/c"), KV_ECONFLICT);
    get_is(s, "/a", "B");
    get_is(s, "/a/2", "B2");
    get_is(s, "/c", NULL);
    /* Overlapping sources are refused. */
    const kv_key *of[] = {K("/a"), K("/a/2")}, *ot[] = {K("/x"), K("/y")};
    ck_assert_kv(settle(kv_move_prefix_atomic(s, of, ot, 2)), KV_EINVAL);
    get_is(s, "/a/2", "B2");
    close_store(s);
}
END_TEST

/* Keys that look like patterns match only themselves; prefix ranges stop at
 * namespace boundaries. */
START_TEST(test_prefix_ranges)
{
    kv_store *s = open_store(dbpath, 0);
    const char *names[] = {"/a",   "/a/b", "/a-b", "/ab",  "/a%",
                           "/a_",  "/a*",  "/a?",  "/a[", "/a/%/x"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(names); i++)
        put(s, names[i], names[i], 0);
    struct {
        const char *q;
        size_t n;
    } cases[] = {{"/a", 3}, {"/a%", 1}, {"/a_", 1}, {"/a*", 1},
                 {"/a[", 1}, {"/", 10}, {"/a/%", 1}, {"/zz", 0}};
    for (size_t c = 0; c < KV__ARRAY_SIZE(cases); c++) {
        size_t n = 0;
        ck_assert_kv(query_all_rc(s, cases[c].q, &n), KV_OK);
        ck_assert_msg(n == cases[c].n, "query %s: %zu records, want %zu",
                      cases[c].q, n, cases[c].n);
    }
    const kv_key *drop[] = {K("/a")};
    ck_assert_kv(settle(kv_drop_prefix(s, drop, 1)), KV_OK);
    get_is(s, "/a/%/x", NULL);
    get_is(s, "/a-b", "/a-b");
    get_is(s, "/ab", "/ab");
    close_store(s);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Allocation failures                                                      */
/* ------------------------------------------------------------------------ */

/* Every operation once; returns the number of futures that failed. */
static int chaos_round(kv_store *s, const kv_key *const *k)
{
    const kv_key *clean[] = {k[3], k[4]};
    int failed = settle(kv_drop_prefix(s, clean, 2)) != KV_OK;
    kv_record recs[3] = {{(kv_key *)k[0], "a", 1, 0},
                         {(kv_key *)k[1], "b", 1, 0},
                         {(kv_key *)k[2], "c", 1, 0}};
    failed += settle(kv_put_many(s, recs, 3, NULL)) != KV_OK;
    failed += settle(kv_put_atomic(s, recs, 2, NULL)) != KV_OK;
    failed += settle(kv_get(s, k[0], NULL)) != KV_OK;
    failed += settle(kv_get_many(s, k, 3, NULL)) != KV_OK;
    failed += settle(kv_has_many(s, k, 3)) != KV_OK;
    kv_query q = kv_query_init(k[3]);
    kv_fut *f = kv_query_open(s, &q, NULL);
    if (kv_wait(f) == KV_OK) {
        kv_iter *it = kv_fut_take_iter(f);
        failed += settle(kv_iter_next(it)) != KV_OK;
        failed += settle(kv_iter_fetch_all(it)) != KV_OK;
        kv_iter_free(it);
    } else {
        failed++;
    }
    kv_fut_free(f);
    const kv_key *from[] = {k[3]}, *to[] = {k[4]};
    failed += settle(kv_move_prefix_atomic(s, from, to, 1)) != KV_OK;
    failed += settle(kv_drop_prefix(s, to, 1)) != KV_OK;
    return failed;
}

static void chaos(const char *path)
{
    const kv_key *k[] = {K("/p/a"), K("/p/b"), K("/p/c"), K("/p"), K("/moved")};
    unsigned long total = 0;
    for (unsigned long nth = 1;; nth++) {
        kv_store *s = open_store(path, KV_SQLITE_SYNC_OFF);
        kv__alloc_fail_at(nth, false);
        int failed = chaos_round(s, k);
        unsigned long used = kv__alloc_fail_at(0, false);
        if (nth == 1)
            total = used;
        /* Whatever failed, the store still works and closes cleanly. */
        ck_assert_int_eq(chaos_round(s, k), 0);
        close_store(s);
        if (used < nth) {
            ck_assert_int_eq(failed, 0);
            break;
        }
        if (strcmp(path, KV_SQLITE_MEMORY) != 0) {
            unlink(path);
            char aux[4300];
            snprintf(aux, sizeof aux, "%s-wal", path);
            unlink(aux);
            snprintf(aux, sizeof aux, "%s-shm", path);
            unlink(aux);
        }
    }
    ck_assert_uint_gt(total, 10);
}

START_TEST(test_alloc_failures_memory) { chaos(KV_SQLITE_MEMORY); }
END_TEST

START_TEST(test_alloc_failures_file) { chaos(dbpath); }
END_TEST

/* ------------------------------------------------------------------------ */
/* The writer's WAL writes (sqlite_vfs.c)                                   */
/* ------------------------------------------------------------------------ */

/* A value of len bytes that depends on i and len. */
static void pattern(unsigned char *buf, size_t len, unsigned i)
{
    uint32_t x = 2166136261u ^ i;
    for (size_t j = 0; j < len; j++) {
        x = x * 16777619u + (uint32_t)j;
        buf[j] = (unsigned char)(x >> 24);
    }
}

/* n puts of len-byte values below /w, submitted before the loop runs (one
 * group, one commit); each must succeed.  Keys /w/<base + i>. */
static void put_group(kv_store *s, unsigned base, unsigned n, size_t len)
{
    kv_fut **fs = calloc(n, sizeof *fs);
    unsigned char *val = malloc(len);
    ck_assert(fs != NULL && val != NULL);
    for (unsigned i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%06u", base + i);
        kv_key *k = NULL;
        ck_assert_kv(kv_key_parse(&k, name), KV_OK);
        pattern(val, len, base + i);
        fs[i] = kv_put_value(s, k, val, len, NULL);
        kv_key_free(k);
    }
    for (unsigned i = 0; i < n; i++) {
        ck_assert_msg(kv_wait(fs[i]) == KV_OK, "put %u: %s", base + i,
                      kv_fut_errmsg(fs[i]));
        kv_fut_free(fs[i]);
    }
    free(val);
    free(fs);
}

/* Every /w/<i> for i in [base, base + n) has its len-byte value (through
 * the store's readers), and no other record is below /w when all is set. */
static void check_group(kv_store *s, unsigned base, unsigned n, size_t len)
{
    unsigned char *want = malloc(len);
    ck_assert_ptr_nonnull(want);
    for (unsigned i = base; i < base + n; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%06u", i);
        kv_key *k = NULL;
        ck_assert_kv(kv_key_parse(&k, name), KV_OK);
        kv_fut *f = kv_get(s, k, NULL);
        ck_assert_msg(kv_wait(f) == KV_OK, "get %s: %s", name,
                      kv_fut_errmsg(f));
        const kv_record *r = kv_fut_record(f);
        pattern(want, len, i);
        ck_assert_uint_eq(r->len, len);
        ck_assert_msg(memcmp(r->val, want, len) == 0, "%s: wrong value", name);
        kv_fut_free(f);
        kv_key_free(k);
    }
    free(want);
}

/* PRAGMA integrity_check through a plain connection says "ok", and the kv
 * table holds rows rows. */
static void check_file(const char *path, int64_t rows)
{
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM pragma_integrity_check "
                                   "WHERE integrity_check <> 'ok'"),
                     0);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM kv"), rows);
}

/*
 * With KV_SQLITE_SYNC_FULL the writer's WAL frame writes are gathered: a group of
 * 64 puts of ~3 KiB (a page each, two writes per frame) reaches the file
 * in a few writes; readers, a plain connection and a reopen see all of it.
 * Without KV_SQLITE_SYNC_FULL nothing goes through the gathering VFS.
 */
START_TEST(test_walbuf_gathers_commit)
{
    enum { N = 64, LEN = 3000 };
    kv_store *s = open_store(dbpath, KV_SQLITE_SYNC_FULL);
    put_group(s, 0, 1, LEN); /* the WAL exists */
    unsigned long w0, f0, w1, f1;
    kv__sqlite_walbuf_counts(&w0, &f0);
    put_group(s, 1, N, LEN);
    kv__sqlite_walbuf_counts(&w1, &f1);
    ck_assert_uint_ge(w1 - w0, 2 * N); /* header + page per frame */
    ck_assert_uint_ge(f1 - f0, 1);
    /* ~64 * 4120 bytes in writes of at most 120 KiB, plus the commit. */
    ck_assert_uint_le(f1 - f0, 4);
    check_group(s, 0, N + 1, LEN);
    check_file(dbpath, N + 1);
    s = reopen(s, dbpath, KV_SQLITE_SYNC_FULL);
    check_group(s, 0, N + 1, LEN);
    close_store(s);

    s = open_store(dbpath, 0); /* synchronous=NORMAL: direct writes */
    kv__sqlite_walbuf_counts(&w0, &f0);
    put_group(s, 100, N, LEN);
    kv__sqlite_walbuf_counts(&w1, &f1);
    ck_assert_uint_eq(w1 - w0, 0);
    ck_assert_uint_eq(f1 - f0, 0);
    check_group(s, 0, N + 1, LEN);
    check_group(s, 100, N, LEN);
    close_store(s);
    check_file(dbpath, 2 * N + 1);
}
END_TEST

/*
 * With a 2 MiB WAL, 80 groups of 64 one-page records make background
 * checkpoints of hundreds of pages, each followed by its own database sync,
 * and the writer of this NORMAL store starts the writeback of its WAL
 * every 256 pages.  The store, a plain connection and a reopen then see
 * every record, and the file is intact.
 */
START_TEST(test_ckwb_checkpoints)
{
    enum { N = 64, ROUNDS = 40, LEN = 3000 };
    ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", "2M", 1), 0);
    kv_store *s = open_store(dbpath, 0);
    ck_assert_int_eq(unsetenv("KV_SQLITE_WAL_MAX"), 0);
    unsigned long w0 = kv__sqlite_wal_wb_count();
    for (int pass = 0; pass < 2; pass++)
        for (unsigned r = 0; r < ROUNDS; r++)
            put_group(s, r * N + (pass ? 100000 : 0), N, LEN);
    check_group(s, 0, ROUNDS * N, LEN);
    check_group(s, 100000, ROUNDS * N, LEN);
    close_store(s);
    ck_assert_uint_gt(kv__sqlite_wal_wb_count(), w0);
    check_file(dbpath, 2 * ROUNDS * N);
    s = open_store(dbpath, 0);
    check_group(s, 0, ROUNDS * N, LEN);
    check_group(s, 100000, ROUNDS * N, LEN);
    close_store(s);
}
END_TEST

/*
 * KV_SQLITE_CKPT_PAGES sets how many new WAL pages start a background
 * checkpoint: a value outside 16..1000000 (or not a number) fails the open
 * with KV_EINVAL and names the variable; at 64, 16 groups of 64 one-page
 * records (~1,100 WAL pages) start background checkpoints, and at 1000000
 * (capped at half the WAL's bound, ~1,780 pages) none, the same records
 * readable either way.
 */
START_TEST(test_ckpt_pages_env)
{
    enum { N = 64, ROUNDS = 16, LEN = 3000 };
    static const char *const bad[] = {"abc", "15", "1000001", "-64", "64x"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(bad); i++) {
        kv_store *s = NULL;
        ck_assert_int_eq(setenv("KV_SQLITE_CKPT_PAGES", bad[i], 1), 0);
        ck_assert_kv(kv_sqlite_open(&s, loop, pool, dbpath, 0), KV_EINVAL);
        ck_assert_ptr_null(s);
        ck_assert_msg(strstr(kv_last_errmsg(), "KV_SQLITE_CKPT_PAGES") != NULL &&
                          strstr(kv_last_errmsg(), "from 16 to 1000000") != NULL,
                      "%s: %s", bad[i], kv_last_errmsg());
    }
    static const char *const good[] = {"64", "1000000"};
    for (size_t i = 0; i < KV__ARRAY_SIZE(good); i++) {
        char path[4300];
        snprintf(path, sizeof path, "%s.%zu", dbpath, i);
        ck_assert_int_eq(setenv("KV_SQLITE_CKPT_PAGES", good[i], 1), 0);
        kv_store *s = open_store(path, KV_SQLITE_SYNC_FULL);
        ck_assert_int_eq(unsetenv("KV_SQLITE_CKPT_PAGES"), 0);
        for (unsigned r = 0; r < ROUNDS; r++)
            put_group(s, r * N, N, LEN);
        check_group(s, 0, ROUNDS * N, LEN);
        struct kv__sqlite_stats st;
        ck_assert_kv(kv__sqlite_stats(s, &st), KV_OK);
        if (i == 0)
            ck_assert_uint_ge(st.checkpoints, 1);
        else
            ck_assert_uint_eq(st.checkpoints, 0);
        close_store(s);
        s = open_store(path, 0);
        check_group(s, 0, ROUNDS * N, LEN);
        close_store(s);
    }
}
END_TEST

/* Sleep ms milliseconds (the rest again after a signal). */
static void nap_ms(uint64_t ms)
{
    struct timespec ts = kv__ms_to_timespec(ms);
    while (nanosleep(&ts, &ts) != 0)
        ck_assert_int_eq(errno, EINTR);
}

/*
 * Under synchronous=NORMAL the WAL's bound is 256 MiB and the writer
 * restarts it at most once a second below half of that; under FULL (and
 * OFF) the bound is 16 MiB and the writer restarts it as soon as a
 * background checkpoint left little to copy; KV_SQLITE_WAL_MAX sets the
 * bound either way.  With the time rule off (the test hook), 100 small
 * groups with pauses between them, a few background checkpoints' worth,
 * never make the writer checkpoint to restart the WAL (SQLite still
 * restarts it by itself once a checkpoint copied all of it); with the
 * rule at 0 (FULL's) the same writes soon do.  Every record reads back,
 * and the file is intact.
 */
START_TEST(test_restart_paced)
{
    enum { N = 16, ROUNDS = 100, MORE = 400, LEN = 3000 };
    static const struct {
        unsigned flags;
        const char *env;
        uint64_t wal_max, restart_ns;
    } want[] = {
        {0, NULL, 256u << 20, 1000000000u},
        {KV_SQLITE_SYNC_FULL, NULL, 16u << 20, 0},
        {KV_SQLITE_SYNC_OFF, NULL, 16u << 20, 0},
        {0, "1M", 1u << 20, 1000000000u},
        {KV_SQLITE_SYNC_FULL, "64M", 64u << 20, 0},
    };
    for (size_t i = 0; i < KV__ARRAY_SIZE(want); i++) {
        if (want[i].env != NULL)
            ck_assert_int_eq(setenv("KV_SQLITE_WAL_MAX", want[i].env, 1), 0);
        kv_store *s = open_store(dbpath, want[i].flags);
        ck_assert_int_eq(unsetenv("KV_SQLITE_WAL_MAX"), 0);
        struct kv__sqlite_stats st = stats(s);
        ck_assert_uint_eq(st.wal_max, want[i].wal_max);
        ck_assert_uint_eq(st.restart_ns, want[i].restart_ns);
        close_store(s);
    }

    kv_store *s = open_store(dbpath, 0);
    ck_assert_kv(kv__sqlite_set_restart_ns(s, UINT64_MAX), KV_OK);
    unsigned r = 0;
    for (; r < ROUNDS; r++) {
        put_group(s, r * N, N, LEN);
        nap_ms(2);
    }
    struct kv__sqlite_stats st = stats(s);
    ck_assert_uint_ge(st.checkpoints, 3);
    ck_assert_uint_eq(st.finishes, 0);
    ck_assert_kv(kv__sqlite_set_restart_ns(s, 0), KV_OK);
    for (; r < ROUNDS + MORE && stats(s).finishes == 0; r++) {
        put_group(s, r * N, N, LEN);
        nap_ms(2);
    }
    ck_assert_uint_ge(stats(s).finishes, 1);
    check_group(s, 0, r * N, LEN);
    close_store(s);
    check_file(dbpath, r * N);
}
END_TEST

/*
 * The time rule itself: with restarts at most every 150 ms below half the
 * bound (the test hook), the writer checkpoints to restart the WAL only
 * once 150 ms have passed since the cycle began (kv__sqlite_stats'
 * cycle_ns, which SQLite's own restarts move too), and it does so within
 * a few seconds of small groups with pauses between them.
 */
START_TEST(test_restart_interval)
{
    enum { N = 16, LEN = 3000, ROUNDS_MAX = 1500 };
    const uint64_t gap = 150000000u;
    kv_store *s = open_store(dbpath, 0);
    ck_assert_kv(kv__sqlite_set_restart_ns(s, gap), KV_OK);
    struct kv__sqlite_stats prev = stats(s);
    unsigned r = 0;
    for (; r < ROUNDS_MAX && prev.finishes < 3; r++) {
        put_group(s, r * N, N, LEN);
        struct kv__sqlite_stats st = stats(s);
        uint64_t now = kv__now_ns();
        if (st.finishes > prev.finishes)
            ck_assert_msg(now >= prev.cycle_ns + gap,
                          "a restart checkpoint %" PRIu64 " ms into its cycle",
                          (now - prev.cycle_ns) / 1000000u);
        prev = st;
        nap_ms(2);
    }
    ck_assert_uint_ge(prev.finishes, 1);
    check_group(s, 0, r * N, LEN);
    close_store(s);
    check_file(dbpath, r * N);
}
END_TEST

/*
 * A transaction larger than the writer's page cache (SQLite writes pages to
 * the WAL before the commit, and reads them back) and than the gathering
 * buffer: one atomic batch of 2,500 records of 8 KiB (~20 MiB).
 */
START_TEST(test_walbuf_large_transaction)
{
    enum { N = 2500, LEN = 8192 };
    kv_store *s = open_store(dbpath, KV_SQLITE_SYNC_FULL);
    kv_record *recs = calloc(N, sizeof *recs);
    unsigned char *vals = malloc((size_t)N * LEN);
    ck_assert(recs != NULL && vals != NULL);
    for (unsigned i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%06u", i);
        ck_assert_kv(kv_key_parse(&recs[i].key, name), KV_OK);
        pattern(vals + (size_t)i * LEN, LEN, i);
        recs[i].val = vals + (size_t)i * LEN;
        recs[i].len = LEN;
    }
    batch_ok(kv_put_atomic(s, recs, N, NULL));
    for (unsigned i = 0; i < N; i++)
        kv_key_free(recs[i].key);
    free(recs);
    free(vals);
    check_group(s, 0, N, LEN);
    s = reopen(s, dbpath, KV_SQLITE_SYNC_FULL);
    check_group(s, 0, N, LEN);
    close_store(s);
    check_file(dbpath, N);
}
END_TEST

/*
 * A gathered write that fails (test hook: the commit's flush returns an
 * SQLite I/O error, as a failing pwrite would) fails that group's puts
 * KV_EBACKEND; the store goes on, and neither readers, a reopen nor a
 * plain connection ever see the lost group.
 */
START_TEST(test_walbuf_flush_fails)
{
    enum { N = 32, LEN = 3000 };
    kv_store *s = open_store(dbpath, KV_SQLITE_SYNC_FULL);
    put_group(s, 0, N, LEN);
    kv__sqlite_walbuf_fail(1, SQLITE_IOERR_WRITE);
    kv_fut *fs[N];
    unsigned char val[LEN];
    for (unsigned i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%06u", 1000 + i);
        kv_key *k = NULL;
        ck_assert_kv(kv_key_parse(&k, name), KV_OK);
        pattern(val, LEN, 1000 + i);
        fs[i] = kv_put_value(s, k, val, LEN, NULL);
        kv_key_free(k);
    }
    for (unsigned i = 0; i < N; i++) {
        ck_assert_kv(kv_wait(fs[i]), KV_EBACKEND);
        kv_fut_free(fs[i]);
    }
    kv__sqlite_walbuf_fail(0, 0);
    ck_assert_uint_eq(tu_query_count(s, K("/w")), N);
    put_group(s, 2000, N, LEN); /* the store goes on */
    check_group(s, 0, N, LEN);
    check_group(s, 2000, N, LEN);
    ck_assert_uint_eq(tu_query_count(s, K("/w")), 2 * N);
    s = reopen(s, dbpath, KV_SQLITE_SYNC_FULL);
    ck_assert_uint_eq(tu_query_count(s, K("/w")), 2 * N);
    get_is(s, "/w/001000", NULL);
    close_store(s);
    check_file(dbpath, 2 * N);
}
END_TEST


/*
 * Reads through the file's map (sqlite_vfs.c's MAP): a store's readers
 * read a checkpointed database in place in the map (the process's count of
 * pages fetched grows) and get every value right, in a file that grew
 * since it was first mapped too; with KV_SQLITE_NO_MAP no page comes from a
 * map, and the values are the same.
 */
START_TEST(test_map_reads)
{
    enum { N = 1500, LEN = 3000 };
    kv_store *s = open_store(dbpath, 0); /* mapped while still small */
    put_group(s, 0, N, LEN);
    s = reopen(s, dbpath, 0); /* closing checkpointed everything */
    unsigned long m0 = kv__sqlite_map_fetches();
    check_group(s, 0, N, LEN);
    ck_assert_uint_ge(kv__sqlite_map_fetches() - m0, N);
    close_store(s);

    s = open_store(dbpath, KV_SQLITE_NO_MAP);
    m0 = kv__sqlite_map_fetches();
    check_group(s, 0, N, LEN);
    put_group(s, N, 10, LEN);
    check_group(s, N, 10, LEN);
    ck_assert_uint_eq(kv__sqlite_map_fetches() - m0, 0);
    close_store(s);
    check_file(dbpath, N + 10);
}
END_TEST

/* The flag is SQLite's: another backend refuses it, naming it. */
START_TEST(test_map_flag_is_sqlites)
{
    kv_store *s = NULL;
    ck_assert_kv(kv_fs_open(&s, loop, pool, dir, 0, KV_SQLITE_NO_MAP), KV_EINVAL);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(kv_last_errmsg(), "KV_SQLITE_NO_MAP"));
    s = open_store(KV_SQLITE_MEMORY, KV_SQLITE_NO_MAP); /* nothing to map */
    close_store(s);
}
END_TEST

/*
 * Two stores on one file: closing the first leaves the second reading its
 * map, and writing on.
 */
START_TEST(test_map_shared_by_two_stores)
{
    enum { N = 400, LEN = 3000 };
    kv_store *a = open_store(dbpath, 0);
    put_group(a, 0, N, LEN);
    a = reopen(a, dbpath, 0);
    kv_store *b = open_store(dbpath, 0);
    check_group(a, 0, N, LEN);
    check_group(b, 0, N, LEN);
    close_store(a);
    unsigned long m0 = kv__sqlite_map_fetches();
    check_group(b, 0, N, LEN);
    put_group(b, N, N, LEN);
    check_group(b, 0, 2 * N, LEN);
    ck_assert_uint_gt(kv__sqlite_map_fetches() - m0, 0);
    close_store(b);
}
END_TEST

/*
 * Another connection shrinks the file under an open store (deletes most
 * records, VACUUM, a truncating checkpoint): the store then reads the
 * records left, and misses the deleted ones, without reading past the
 * file's new end.
 */
START_TEST(test_map_file_shrinks)
{
    enum { N = 2000, LEN = 3000, KEEP = 10 };
    kv_store *s = open_store(dbpath, 0);
    put_group(s, 0, N, LEN);
    s = reopen(s, dbpath, 0);
    check_group(s, 0, N, LEN); /* every page of the file read once */
    struct stat before, after;
    ck_assert_int_eq(stat(dbpath, &before), 0);
    char sql[128];
    snprintf(sql, sizeof sql,
             "DELETE FROM kv WHERE key >= (SELECT key FROM kv ORDER BY key "
             "LIMIT 1 OFFSET %d)",
             KEEP);
    sql_exec(dbpath, sql);
    sql_exec(dbpath, "VACUUM; PRAGMA wal_checkpoint(TRUNCATE)");
    ck_assert_int_eq(stat(dbpath, &after), 0);
    ck_assert_int_lt(after.st_size, before.st_size / 4);
    check_group(s, 0, KEEP, LEN);
    get_is(s, "/w/000011", NULL);
    get_is(s, "/w/001999", NULL);
    put_group(s, N, KEEP, LEN); /* and the store writes on */
    check_group(s, N, KEEP, LEN);
    close_store(s);
    check_file(dbpath, 2 * KEEP);
}
END_TEST


/* Hold pool one's only worker (tu_hold_worker) until release_worker; the
 * hold's future. */
static kv_fut *hold_worker(kv_pool *one, tu_gate *g)
{
    ck_assert_int_eq(sem_init(&g->in, 0, 0), 0);
    ck_assert_int_eq(sem_init(&g->go, 0, 0), 0);
    kv_fut *held = kv_pool_work(loop, one, tu_hold_worker, g);
    while (sem_wait(&g->in) != 0)
        ;
    return held;
}

/* Let hold_worker's worker go and collect its hold. */
static void release_worker(tu_gate *g, kv_fut *held)
{
    sem_post(&g->go);
    ck_assert_kv(kv_wait(held), KV_OK);
    kv_fut_free(held);
}

/* Close and free a store opened on a held pool (the pool, the gate). */
static void held_store_free(kv_store *s, kv_pool *one, tu_gate *g)
{
    close_store(s);
    kv_pool_free(one);
    sem_destroy(&g->in);
    sem_destroy(&g->go);
}

/*
 * Point reads submitted one by one while a reader job runs are handed out
 * together at the end of the loop turn: with the pool's one worker held, a
 * first get takes a job at once, and the 30 submitted after it in the same
 * turn go in one more job (two jobs for 31 gets), not the first of them in
 * a job of its own and the rest in a third.
 */
START_TEST(test_reads_batched_per_turn)
{
    enum { N = 30 };
    kv_store *s = open_store(dbpath, 0);
    put_group(s, 0, N + 1, 100);
    close_store(s);
    kv_pool *one = NULL;
    ck_assert_kv(kv_pool_new(&one, 1), KV_OK);
    ck_assert_kv(kv_sqlite_open(&s, loop, one, dbpath, 0), KV_OK);
    tu_gate g;
    kv_fut *held = hold_worker(one, &g);
    uint64_t j0 = stats(s).read_jobs;
    kv_fut *fs[N + 1];
    for (unsigned i = 0; i <= N; i++) {
        char name[32];
        snprintf(name, sizeof name, "/w/%06u", i);
        fs[i] = kv_get(s, K(name), NULL);
    }
    ck_assert_uint_eq(stats(s).read_jobs - j0, 1); /* the first get's */
    for (int i = 0; i < 1000 && stats(s).read_jobs - j0 < 2; i++)
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert_uint_eq(stats(s).read_jobs - j0, 2); /* the turn's 30 */
    release_worker(&g, held);
    for (unsigned i = 0; i <= N; i++) {
        ck_assert_kv(kv_wait(fs[i]), KV_OK);
        ck_assert_uint_eq(kv_fut_record(fs[i])->len, 100);
        kv_fut_free(fs[i]);
    }
    ck_assert_uint_eq(stats(s).read_jobs - j0, 2);
    held_store_free(s, one, &g);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Point reads from other threads: straight to the pool (sqlite_any.c)      */
/* ------------------------------------------------------------------------ */

typedef struct any_ctx {
    kv_store *s;
    const kv_key *k[3]; /* /a, /b: stored ("1", "22"); /none: absent */
    sem_t done, submitted, closing;
    int n;          /* futures to submit (close and cancel tests) */
    int rc[16];     /* their outcomes */
    int after;      /* a get made after close started */
    bool ok;        /* the reads test saw what it expected */
    char why[160];
} any_ctx;

static void any_ctx_init(any_ctx *c, kv_store *s)
{
    memset(c, 0, sizeof *c);
    c->s = s;
    c->k[0] = K("/a");
    c->k[1] = K("/b");
    c->k[2] = K("/none");
    ck_assert_int_eq(sem_init(&c->done, 0, 0), 0);
    ck_assert_int_eq(sem_init(&c->submitted, 0, 0), 0);
    ck_assert_int_eq(sem_init(&c->closing, 0, 0), 0);
}

static void any_ctx_fini(any_ctx *c)
{
    sem_destroy(&c->done);
    sem_destroy(&c->submitted);
    sem_destroy(&c->closing);
}

/* Another thread, its own loop: get, get a missing key, has, get_many. */
static void *any_reads_thread(void *arg)
{
    any_ctx *c = arg;
    kv_loop *tl = NULL;
    c->ok = kv_loop_new(&tl, NULL) == KV_OK;
    if (!c->ok) {
        snprintf(c->why, sizeof c->why, "kv_loop_new failed");
        sem_post(&c->done);
        return NULL;
    }
    kv_fut *f = kv_get(c->s, c->k[0], NULL);
    int rc = kv_wait(f);
    ANY_EXPECT(rc == KV_OK && kv_fut_record(f)->len == 1 &&
                   memcmp(kv_fut_record(f)->val, "1", 1) == 0,
               "get /a: %s", kv_err_name(rc));
    kv_fut_free(f);
    f = kv_get(c->s, c->k[2], NULL);
    rc = kv_wait(f);
    ANY_EXPECT(rc == KV_ENOTFOUND, "get /none: %s", kv_err_name(rc));
    kv_fut_free(f);
    f = kv_has(c->s, c->k[1]);
    rc = kv_wait(f);
    ANY_EXPECT(rc == KV_OK && kv_fut_bool(f), "has /b: %s", kv_err_name(rc));
    kv_fut_free(f);
    f = kv_has(c->s, c->k[2]);
    rc = kv_wait(f);
    ANY_EXPECT(rc == KV_OK && !kv_fut_bool(f), "has /none: %s",
               kv_err_name(rc));
    kv_fut_free(f);
    f = kv_get_many(c->s, c->k, 3, NULL);
    rc = kv_wait(f);
    size_t n = 0;
    const kv_record *rs = rc == KV_OK ? kv_fut_records(f, &n) : NULL;
    ANY_EXPECT(rc == KV_OK && n == 2 && rs[0].len + rs[1].len == 3,
               "get_many: %s, %zu records", kv_err_name(rc), n);
    kv_fut_free(f);
    ANY_EXPECT(kv_loop_free(tl) == KV_OK, "kv_loop_free: %s",
               kv_last_errmsg());
    sem_post(&c->done);
    return NULL;
}

/* Wait up to secs for sem; false on timeout. */
static bool sem_wait_secs(sem_t *sem, int secs)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += secs;
    int r;
    while ((r = sem_timedwait(sem, &ts)) != 0 && errno == EINTR)
        ;
    return r == 0;
}

/* Point reads made on another thread complete while the store's own loop
 * does not run: they never pass through it. */
START_TEST(test_any_reads_skip_the_loop)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/a", "1", 0);
    put(s, "/b", "22", 0);
    any_ctx ctx;
    any_ctx_init(&ctx, s);
    uint64_t r0 = stats(s).any_reads;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, any_reads_thread, &ctx), 0);
    /* This thread runs no loop meanwhile. */
    bool alone = sem_wait_secs(&ctx.done, 30);
    if (!alone) /* let forwarded calls finish before failing */
        while (sem_trywait(&ctx.done) != 0)
            ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_msg(alone, "reads from another thread waited for the "
                         "store's loop");
    ck_assert_msg(ctx.ok, "%s", ctx.why);
    ck_assert_uint_eq(stats(s).any_reads - r0, 5);
    /* This thread's reads still take the loop's path. */
    get_is(s, "/a", "1");
    ck_assert_uint_eq(stats(s).any_reads - r0, 5);
    any_ctx_fini(&ctx);
    close_store(s);
}
END_TEST

/* A store holding /a = "1" and /b = "22" on a pool of one thread, held
 * (tu_hold_worker: sem_post(&g->go) lets it go), so that reads queue. */
static kv_store *held_store(kv_pool **one, tu_gate *g, kv_fut **held)
{
    kv_store *s = open_store(dbpath, 0);
    put(s, "/a", "1", 0);
    put(s, "/b", "22", 0);
    close_store(s);
    ck_assert_kv(kv_pool_new(one, 1), KV_OK);
    ck_assert_kv(kv_sqlite_open(&s, loop, *one, dbpath, 0), KV_OK);
    *held = hold_worker(*one, g);
    return s;
}

/* Submit c->n gets, tell the test, wait for close to start, collect them,
 * then one more get. */
static void *any_close_thread(void *arg)
{
    any_ctx *c = arg;
    kv_loop *tl = NULL;
    if (kv_loop_new(&tl, NULL) != KV_OK) {
        c->n = -1;
        sem_post(&c->submitted);
        return NULL;
    }
    kv_fut *fs[16];
    for (int i = 0; i < c->n; i++)
        fs[i] = kv_get(c->s, c->k[i % 2], NULL);
    sem_post(&c->submitted);
    while (sem_wait(&c->closing) != 0)
        ;
    for (int i = 0; i < c->n; i++) {
        c->rc[i] = kv_wait(fs[i]);
        kv_fut_free(fs[i]);
    }
    kv_fut *f = kv_get(c->s, c->k[0], NULL);
    c->after = kv_wait(f);
    kv_fut_free(f);
    (void)kv_loop_free(tl);
    return NULL;
}

/* Close cancels the other threads' reads that have not run and refuses
 * new ones, without waiting for the reading thread to run its loop;
 * nothing leaks (the sanitizer and valgrind runs). */
START_TEST(test_any_reads_close)
{
    kv_pool *one;
    tu_gate g;
    kv_fut *held;
    kv_store *s = held_store(&one, &g, &held);
    any_ctx ctx;
    any_ctx_init(&ctx, s);
    ctx.n = 10;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, any_close_thread, &ctx), 0);
    while (sem_wait(&ctx.submitted) != 0)
        ;
    ck_assert_int_eq(ctx.n, 10);
    kv_fut *cf = kv_close(s); /* the reads wait behind the held worker */
    release_worker(&g, held);
    /* The reading thread runs no loop until the close is done: the close
     * must not wait for it. */
    ck_assert_kv(kv_wait(cf), KV_OK);
    kv_fut_free(cf);
    sem_post(&ctx.closing);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    for (int i = 0; i < ctx.n; i++)
        ck_assert_msg(ctx.rc[i] == KV_ECANCELED, "get %d: %s", i,
                      kv_err_name(ctx.rc[i]));
    ck_assert_kv(ctx.after, KV_ECLOSED);
    kv_store_free(s);
    kv_pool_free(one);
    any_ctx_fini(&ctx);
    sem_destroy(&g.in);
    sem_destroy(&g.go);
}
END_TEST

/* A cancelled read from another thread completes KV_ECANCELED at once;
 * the read still runs, its result is dropped, and the thread's loop is
 * left with nothing pending. */
static void *any_cancel_thread(void *arg)
{
    any_ctx *c = arg;
    kv_loop *tl = NULL;
    c->ok = kv_loop_new(&tl, NULL) == KV_OK;
    if (!c->ok) {
        sem_post(&c->submitted);
        return NULL;
    }
    kv_fut *f = kv_get(c->s, c->k[0], NULL);
    kv_fut_cancel(f);
    ANY_EXPECT(kv_fut_done(f) && kv_fut_status(f) == KV_ECANCELED,
               "cancelled get: %s", kv_err_name(kv_fut_status(f)));
    kv_fut_free(f);
    sem_post(&c->submitted);
    f = kv_get(c->s, c->k[1], NULL); /* queued behind the first */
    int rc = kv_wait(f);
    ANY_EXPECT(rc == KV_OK && kv_fut_record(f)->len == 2, "get /b: %s",
               kv_err_name(rc));
    kv_fut_free(f);
    ANY_EXPECT(kv_loop_run(tl, KV_RUN_DEFAULT) >= 0, "run");
    ANY_EXPECT(kv_loop_free(tl) == KV_OK, "kv_loop_free: %s",
               kv_last_errmsg());
    return NULL;
}

START_TEST(test_any_reads_cancel)
{
    kv_pool *one;
    tu_gate g;
    kv_fut *held;
    kv_store *s = held_store(&one, &g, &held);
    any_ctx ctx;
    any_ctx_init(&ctx, s);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, any_cancel_thread, &ctx), 0);
    while (sem_wait(&ctx.submitted) != 0)
        ;
    release_worker(&g, held);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_msg(ctx.ok, "%s", ctx.why);
    ck_assert_uint_eq(stats(s).any_reads, 2);
    held_store_free(s, one, &g);
    any_ctx_fini(&ctx);
}
END_TEST

/* Submit c->n gets (/a, /b in turn) while the worker is held, tell the
 * test, then collect them. */
static void *any_batch_thread(void *arg)
{
    any_ctx *c = arg;
    kv_loop *tl = NULL;
    c->ok = kv_loop_new(&tl, NULL) == KV_OK;
    if (!c->ok) {
        snprintf(c->why, sizeof c->why, "kv_loop_new failed");
        sem_post(&c->submitted);
        return NULL;
    }
    kv_fut *fs[16];
    for (int i = 0; i < c->n; i++)
        fs[i] = kv_get(c->s, c->k[i % 2], NULL);
    sem_post(&c->submitted);
    for (int i = 0; i < c->n; i++) {
        int rc = kv_wait(fs[i]);
        size_t want = i % 2 == 0 ? 1 : 2;
        ANY_EXPECT(rc == KV_OK && kv_fut_record(fs[i])->len == want,
                   "get %d: %s", i, kv_err_name(rc));
        kv_fut_free(fs[i]);
    }
    ANY_EXPECT(kv_loop_free(tl) == KV_OK, "kv_loop_free: %s",
               kv_last_errmsg());
    return NULL;
}

/* One batch holding the reads of two threads hands each thread its
 * completions in one push to its loop (so at most one wake), not one push
 * per read; every read gets its own record. */
START_TEST(test_any_reads_one_push_per_loop)
{
    kv_pool *one;
    tu_gate g;
    kv_fut *held;
    kv_store *s = held_store(&one, &g, &held);
    any_ctx a, b;
    any_ctx_init(&a, s);
    any_ctx_init(&b, s);
    a.n = b.n = 8;
    struct kv__sqlite_stats before = stats(s);
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, any_batch_thread, &a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, any_batch_thread, &b), 0);
    while (sem_wait(&a.submitted) != 0)
        ;
    while (sem_wait(&b.submitted) != 0)
        ;
    release_worker(&g, held); /* all 16 wait for the one reader: one batch */
    ck_assert_int_eq(pthread_join(ta, NULL), 0);
    ck_assert_int_eq(pthread_join(tb, NULL), 0);
    ck_assert_msg(a.ok, "%s", a.why);
    ck_assert_msg(b.ok, "%s", b.why);
    struct kv__sqlite_stats after = stats(s);
    ck_assert_uint_eq(after.any_reads - before.any_reads, 16);
    ck_assert_uint_eq(after.any_batches - before.any_batches, 1);
    ck_assert_uint_eq(after.any_posts - before.any_posts, 2);
    held_store_free(s, one, &g);
    any_ctx_fini(&a);
    any_ctx_fini(&b);
}
END_TEST

/* In-memory stores read on their one connection: the loop's path. */
START_TEST(test_any_reads_memory_forwarded)
{
    kv_store *s = open_store(KV_SQLITE_MEMORY, 0);
    put(s, "/a", "1", 0);
    put(s, "/b", "22", 0);
    any_ctx ctx;
    any_ctx_init(&ctx, s);
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, any_reads_thread, &ctx), 0);
    while (sem_trywait(&ctx.done) != 0)
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_msg(ctx.ok, "%s", ctx.why);
    ck_assert_uint_eq(stats(s).any_reads, 0);
    any_ctx_fini(&ctx);
    close_store(s);
}
END_TEST

/* ------------------------------------------------------------------------ */

int main(void)
{
    Suite *su = suite_create("sqlite");
    TCase *tc = tcase_create("open");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_open_args);
    tcase_add_test(tc, test_key_limits);
    tcase_add_test(tc, test_open_not_a_database);
    tcase_add_test(tc, test_open_foreign_database);
    tcase_add_test(tc, test_open_future_format);
    tcase_add_test(tc, test_file_is_wal);
    suite_add_tcase(su, tc);

    tc = tcase_create("persistence");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_persistence);
    tcase_add_test(tc, test_tokens_never_repeat);
    tcase_add_test(tc, test_sync_full);
    tcase_add_test(tc, test_token_overflow);
    tcase_add_test(tc, test_token_counter_corrupt);
    tcase_add_test(tc, test_token_reservation);
    tcase_add_test(tc, test_corrupt_rows);
    suite_add_tcase(su, tc);

    tc = tcase_create("readonly");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_readonly);
    tcase_add_test(tc, test_readonly_missing);
    tcase_add_test(tc, test_readonly_sees_writer);
    suite_add_tcase(su, tc);

    tc = tcase_create("concurrency");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_group_commit_file);
    tcase_add_test(tc, test_group_commit_memory);
    tcase_add_test(tc, test_group_rounds_file);
    tcase_add_test(tc, test_group_rounds_memory);
    tcase_add_test(tc, test_group_rounds_forwarded);
    tcase_add_test(tc, test_group_forwarded_timeout);
    tcase_add_test(tc, test_wal_restarts_light_load);
    tcase_add_test(tc, test_wal_bounded);
    tcase_add_test(tc, test_group_mixed_results);
    tcase_add_loop_test(tc, test_two_opens_no_lost_update, 0, 2);
    tcase_add_test(tc, test_close_in_flight);
    tcase_add_test(tc, test_cancel_queued_write);
    tcase_add_test(tc, test_write_lock_busy);
    suite_add_tcase(su, tc);

    tc = tcase_create("query");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_stream_file);
    tcase_add_test(tc, test_stream_memory);
    tcase_add_test(tc, test_cursor_isolation);
    tcase_add_test(tc, test_close_with_cursors);
    tcase_add_test(tc, test_move_swap_and_overlap);
    tcase_add_test(tc, test_prefix_ranges);
    suite_add_tcase(su, tc);

    tc = tcase_create("walbuf");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_walbuf_gathers_commit);
    tcase_add_test(tc, test_walbuf_large_transaction);
    tcase_add_test(tc, test_ckwb_checkpoints);
    tcase_add_test(tc, test_ckpt_pages_env);
    tcase_add_test(tc, test_restart_paced);
    tcase_add_test(tc, test_restart_interval);
    tcase_add_test(tc, test_walbuf_flush_fails);
    suite_add_tcase(su, tc);

    tc = tcase_create("reads");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_map_reads);
    tcase_add_test(tc, test_map_flag_is_sqlites);
    tcase_add_test(tc, test_map_shared_by_two_stores);
    tcase_add_test(tc, test_map_file_shrinks);
    tcase_add_test(tc, test_reads_batched_per_turn);
    tcase_add_test(tc, test_any_reads_skip_the_loop);
    tcase_add_test(tc, test_any_reads_close);
    tcase_add_test(tc, test_any_reads_cancel);
    tcase_add_test(tc, test_any_reads_one_push_per_loop);
    tcase_add_test(tc, test_any_reads_memory_forwarded);
    suite_add_tcase(su, tc);

    tc = tcase_create("alloc");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_alloc_failures_memory);
    tcase_add_test(tc, test_alloc_failures_file);
    suite_add_tcase(su, tc);
    return tu_run(su);
}
