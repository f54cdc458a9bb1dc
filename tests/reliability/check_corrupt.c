/*
 * check_corrupt.c - a corrupt record does not block a listing (issue 16,
 * item 1): kv_query.skip_corrupt and kv_iter_corrupt.
 *
 * fs: a 300-record store with one byte flipped in one record file (in its
 * header, or in its value).  Without skip_corrupt the listing fails
 * KV_ECORRUPT at that record (fetch_all), naming its key (kv_fut_keys),
 * and next goes on after it; with it, next and fetch_all return the 299
 * good records in order and kv_iter_corrupt lists the one key.
 * SQLite: a row whose token was damaged behind the store's back; Redis
 * (when tests/redis_env.sh has started a server): a record hash likewise.
 * Typed iterators (fs and SQLite): values the codec rejects with
 * KV_ECORRUPT are reported the same way.
 */
#include "config.h"

#include "testutil.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#ifdef HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif

enum { NREC = 300, BAD = 150 };

static char *tmpdir;

static void setup(void)
{
    tu_tmpdir_new(&tmpdir);
}

static void teardown(void)
{
    tu_tmpdir_free(&tmpdir);
}

static void env_new(tu_env *e)
{
    memset(e, 0, sizeof *e);
    ck_assert_kv(kv_loop_new(&e->loop, NULL), KV_OK);
    ck_assert_kv(kv_pool_new(&e->pool, 2), KV_OK);
}

static void open_fs(tu_env *e)
{
    char root[4200];
    snprintf(root, sizeof root, "%s/store", tmpdir);
    ck_assert_kv(kv_fs_open(&e->s, e->loop, e->pool, root, 0, KV_FS_NO_FSYNC),
                 KV_OK);
}

static void open_sqlite(tu_env *e)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/store.db", tmpdir);
    ck_assert_kv(kv_sqlite_open(&e->s, e->loop, e->pool, path, 0), KV_OK);
}

static void key_id(char out[32], int i)
{
    snprintf(out, 32, "/r/%03d", i);
}

/* Put NREC records /r/000.. with values "value of /r/NNN" (or, for the
 * indexes in bad[], "BAD ..."). */
static void fill(tu_env *e, const int *bad, size_t nbad)
{
    kv_record *recs = calloc(NREC, sizeof *recs);
    char (*vals)[64] = calloc(NREC, sizeof *vals);
    ck_assert_ptr_nonnull(recs);
    ck_assert_ptr_nonnull(vals);
    for (int i = 0; i < NREC; i++) {
        char id[32];
        key_id(id, i);
        bool isbad = false;
        for (size_t j = 0; j < nbad; j++)
            isbad |= bad[j] == i;
        snprintf(vals[i], sizeof vals[i], "%s of %s", isbad ? "BAD" : "value",
                 id);
        ck_assert_kv(kv_key_parse(&recs[i].key, id), KV_OK);
        recs[i].val = vals[i];
        recs[i].len = strlen(vals[i]);
    }
    EXPECT(kv_put_many(e->s, recs, NREC, NULL), KV_OK);
    for (int i = 0; i < NREC; i++)
        kv_key_free(recs[i].key);
    free(recs);
    free(vals);
}

static void flip_byte(const char *file, off_t off)
{
    int fd = open(file, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, off), 1);
    b ^= 0x5a;
    ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
    ck_assert_int_eq(close(fd), 0);
}

static kv_iter *open_iter(tu_env *e, const kv_query *q, const kv_codec *codec)
{
    kv_fut *f = AWAIT(kv_query_open(e->s, q, codec), KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    ck_assert_ptr_nonnull(it);
    kv_fut_free(f);
    return it;
}

/* Does the record list hold every /r/NNN but the skipped ones, in order? */
static void check_good(const kv_record *r, size_t n, const int *skip,
                       size_t nskip, bool desc)
{
    ck_assert_uint_eq(n, (size_t)NREC - nskip);
    size_t k = 0;
    for (int j = 0; j < NREC; j++) {
        int i = desc ? NREC - 1 - j : j;
        bool skipped = false;
        for (size_t s = 0; s < nskip; s++)
            skipped |= skip[s] == i;
        if (skipped)
            continue;
        char id[32];
        key_id(id, i);
        ck_assert_str_eq(kv_key_id(r[k].key), id);
        k++;
    }
}

/* kv_iter_corrupt lists exactly the keys of idx[]. */
static void check_corrupt_list(const kv_iter *it, const int *idx, size_t n)
{
    size_t m = 99;
    const kv_key *const *keys = kv_iter_corrupt(it, &m);
    ck_assert_uint_eq(m, n);
    if (n == 0) {
        ck_assert_ptr_null(keys);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char id[32];
        key_id(id, idx[i]);
        ck_assert_str_eq(kv_key_id(keys[i]), id);
    }
}

/* Without skip_corrupt: fetch_all fails KV_ECORRUPT naming the first bad
 * key (message and kv_fut_keys). */
static void expect_fetch_all_fails(tu_env *e, const kv_query *q,
                                   const kv_codec *codec, int first)
{
    char id[32];
    key_id(id, first);
    kv_iter *it = open_iter(e, q, codec);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_ECORRUPT);
    size_t n = 0;
    ck_assert_ptr_null(kv_fut_records(f, &n));
    const kv_key *const *keys = kv_fut_keys(f, &n);
    ck_assert_msg(n == 1, "keys %zu: %s", n, kv_fut_errmsg(f));
    ck_assert_str_eq(kv_key_id(keys[0]), id);
    ck_assert_msg(strstr(kv_fut_errmsg(f), id) != NULL, "message: %s",
                  kv_fut_errmsg(f));
    kv_fut_free(f);
    check_corrupt_list(it, NULL, 0);
    kv_iter_free(it);
}

/* With skip_corrupt: fetch_all gives the good records, the list the bad. */
static void expect_fetch_all_skips(tu_env *e, const kv_query *q,
                                   const kv_codec *codec, const int *bad,
                                   size_t nbad)
{
    kv_iter *it = open_iter(e, q, codec);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    check_good(r, n, bad, nbad, q->sort == KV_SORT_DESC);
    ck_assert(kv_iter_finished(it));
    kv_fut_free(f);
    check_corrupt_list(it, bad, nbad);
    kv_iter_free(it);
}

/* next, one by one: with skip_corrupt the good records then the end;
 * without, a KV_ECORRUPT call (with the key) where each bad one is, and
 * the records after it. */
static void expect_next(tu_env *e, const kv_query *q, const kv_codec *codec,
                        const int *bad, size_t nbad)
{
    kv_iter *it = open_iter(e, q, codec);
    size_t good = 0, failed = 0;
    for (;;) {
        kv_fut *f = kv_iter_next(it);
        int rc = kv_wait(f);
        if (rc == KV_ECORRUPT) {
            ck_assert(!q->skip_corrupt);
            size_t n = 0;
            const kv_key *const *keys = kv_fut_keys(f, &n);
            ck_assert_uint_eq(n, 1);
            char id[32];
            key_id(id, bad[failed]);
            ck_assert_str_eq(kv_key_id(keys[0]), id);
            failed++;
            kv_fut_free(f);
            continue;
        }
        ck_assert_msg(rc == KV_OK, "next: %s", kv_fut_errmsg(f));
        const kv_record *r = kv_fut_record(f);
        if (r == NULL) {
            kv_fut_free(f);
            break;
        }
        for (size_t j = 0; j < nbad; j++) {
            char id[32];
            key_id(id, bad[j]);
            ck_assert_str_ne(kv_key_id(r->key), id);
        }
        good++;
        kv_fut_free(f);
    }
    ck_assert_uint_eq(good, (size_t)NREC - nbad);
    ck_assert_uint_eq(failed, q->skip_corrupt ? 0 : nbad);
    check_corrupt_list(it, bad, q->skip_corrupt ? nbad : 0);
    kv_iter_free(it);
}

/*
 * The store under e holds the records of fill with record BAD corrupt: a
 * listing fails there by default (next goes on after it), and with
 * skip_corrupt passes over it and reports it, with and without values.
 */
static void expect_one_bad(tu_env *e)
{
    const int bad[] = {BAD};
    kv_key *all = NULL;
    ck_assert_kv(kv_key_parse(&all, "/"), KV_OK);
    kv_query q = kv_query_init(all);
    expect_fetch_all_fails(e, &q, NULL, BAD);
    expect_next(e, &q, NULL, bad, 1);
    q.skip_corrupt = true;
    expect_fetch_all_skips(e, &q, NULL, bad, 1);
    expect_next(e, &q, NULL, bad, 1);
    q.value = false;
    expect_fetch_all_skips(e, &q, NULL, bad, 1);
    kv_key_free(all);
}

/* ------------------------------------------------------------------------ */
/* fs: a flipped byte in the header or the value of one record file          */
/* ------------------------------------------------------------------------ */

START_TEST(test_fs_flipped_byte)
{
    /* _i 0: the header's magic; 1: a value byte (past the 40-byte header) */
    bool header = _i == 0;
    tu_env e;
    env_new(&e);
    open_fs(&e);
    fill(&e, NULL, 0);
    char file[4300];
    snprintf(file, sizeof file, "%s/store/r/%03d.kv", tmpdir, BAD);
    flip_byte(file, header ? 2 : 40 + 5);

    const int bad[] = {BAD};
    kv_key *all = NULL;
    ck_assert_kv(kv_key_parse(&all, "/"), KV_OK);
    kv_query q = kv_query_init(all);
    ck_assert(!q.skip_corrupt);
    /* The old behaviour, kept by default: the listing fails there. */
    expect_fetch_all_fails(&e, &q, NULL, BAD);
    expect_next(&e, &q, NULL, bad, 1);
    /* skip_corrupt: 299 good records, the one key reported. */
    q.skip_corrupt = true;
    expect_fetch_all_skips(&e, &q, NULL, bad, 1);
    expect_next(&e, &q, NULL, bad, 1);
    q.sort = KV_SORT_DESC;
    expect_fetch_all_skips(&e, &q, NULL, bad, 1);
    /* Keys only: fs reads the header alone, so only a header flip shows. */
    q.sort = KV_SORT_ASC;
    q.value = false;
    expect_fetch_all_skips(&e, &q, NULL, bad, header ? 1 : 0);
    /* A corrupt record counts toward the limit. */
    q.value = true;
    q.offset = BAD - 1;
    q.limit = 3;
    kv_iter *it = open_iter(&e, &q, NULL);
    kv_fut *f = AWAIT(kv_iter_fetch_all(it), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(kv_key_id(r[0].key), "/r/149");
    ck_assert_str_eq(kv_key_id(r[1].key), "/r/151");
    kv_fut_free(f);
    check_corrupt_list(it, bad, 1);
    kv_iter_free(it);
    kv_key_free(all);
    tu_env_close(&e, true);
}
END_TEST

/* fs: many corrupt records, across fetch chunks, with concurrent nexts. */
START_TEST(test_fs_many_corrupt)
{
    tu_env e;
    env_new(&e);
    open_fs(&e);
    fill(&e, NULL, 0);
    const int bad[] = {0, 1, 63, 64, 65, 128, 200, 299};
    size_t nbad = sizeof bad / sizeof bad[0];
    for (size_t i = 0; i < nbad; i++) {
        char file[4300];
        snprintf(file, sizeof file, "%s/store/r/%03d.kv", tmpdir, bad[i]);
        flip_byte(file, i % 2 ? 2 : 45);
    }
    kv_key *all = NULL;
    ck_assert_kv(kv_key_parse(&all, "/r"), KV_OK);
    kv_query q = kv_query_init(all);
    expect_fetch_all_fails(&e, &q, NULL, bad[0]);
    expect_next(&e, &q, NULL, bad, nbad);
    q.skip_corrupt = true;
    expect_fetch_all_skips(&e, &q, NULL, bad, nbad);
    expect_next(&e, &q, NULL, bad, nbad);
    /* Many nexts at once: each gets a different good record, in order. */
    kv_iter *it = open_iter(&e, &q, NULL);
    kv_fut *fs[NREC + 1];
    for (size_t i = 0; i <= NREC - nbad; i++)
        fs[i] = kv_iter_next(it);
    size_t k = 0;
    for (int i = 0; i < NREC; i++) {
        bool skipped = false;
        for (size_t j = 0; j < nbad; j++)
            skipped |= bad[j] == i;
        if (skipped)
            continue;
        ck_assert_kv(kv_wait(fs[k]), KV_OK);
        char id[32];
        key_id(id, i);
        ck_assert_str_eq(kv_key_id(kv_fut_record(fs[k])->key), id);
        kv_fut_free(fs[k]);
        k++;
    }
    ck_assert_kv(kv_wait(fs[k]), KV_OK);
    ck_assert_ptr_null(kv_fut_record(fs[k]));
    kv_fut_free(fs[k]);
    check_corrupt_list(it, bad, nbad);
    kv_iter_free(it);
    kv_key_free(all);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* SQLite: a row damaged behind the store's back                            */
/* ------------------------------------------------------------------------ */

static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "?");
    sqlite3_free(err);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

START_TEST(test_sqlite_bad_row)
{
    tu_env e;
    env_new(&e);
    open_sqlite(&e);
    fill(&e, NULL, 0);
    tu_env_close_store(&e, true);
    char path[4200];
    snprintf(path, sizeof path, "%s/store.db", tmpdir);
    /* Keys are stored as each namespace id and a 0 byte: "r\0NNN\0". */
    char sql[256];
    snprintf(sql, sizeof sql,
             "UPDATE kv SET token = -5 WHERE hex(key) = "
             "'7200' || hex('%03d') || '00';",
             BAD);
    sql_exec(path, sql);
    /* (the update must have hit one row: checked by the listing below) */
    open_sqlite(&e);
    expect_one_bad(&e);
    tu_env_close(&e, true);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Redis: a record hash damaged behind the store's back                     */
/* ------------------------------------------------------------------------ */

START_TEST(test_redis_bad_hash)
{
#ifndef HAVE_HIREDIS
    return;
#else
    const char *base = getenv("KV_TEST_REDIS");
    if (base == NULL || strncmp(base, "redis://", 8) != 0) {
        fprintf(stderr, "check_corrupt: KV_TEST_REDIS not set (tests/"
                        "redis_env.sh sets it): test_redis_bad_hash "
                        "skipped\n");
        return;
    }
    char host[256];
    int port = 0;
    ck_assert_int_eq(sscanf(base + 8, "%255[^:]:%d", host, &port), 2);
    char prefix[128], uri[512];
    snprintf(prefix, sizeof prefix, "corrupt-%ld-%s", (long)getpid(),
             strrchr(tmpdir, '/') + 1);
    snprintf(uri, sizeof uri, "%s/%s?shard=store", base, prefix);
    tu_env e;
    env_new(&e);
    ck_assert_kv(kv_redis_open(&e.s, e.loop, e.pool, uri, 0), KV_OK);
    fill(&e, NULL, 0);
    /* The record hash of /r/150: prefix{N} then "r\0" "150\0". */
    redisContext *rc = redisConnect(host, port);
    ck_assert_msg(rc != NULL && rc->err == 0, "connect %s:%d", host, port);
    char want[16];
    size_t wl = (size_t)snprintf(want, sizeof want, "r%c%03d%c", 0, BAD, 0);
    char cursor[32] = "0";
    bool hit = false;
    do {
        redisReply *r = redisCommand(rc, "SCAN %s MATCH %s{* COUNT 1000",
                                     cursor, prefix);
        ck_assert_ptr_nonnull(r);
        ck_assert_int_eq(r->type, REDIS_REPLY_ARRAY);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *k = keys->element[i];
            if (k->len > wl && memcmp(k->str + k->len - wl, want, wl) == 0) {
                redisReply *h =
                    redisCommand(rc, "HSET %b t notanumber", k->str, k->len);
                ck_assert_ptr_nonnull(h);
                freeReplyObject(h);
                hit = true;
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    ck_assert(hit);
    expect_one_bad(&e);
    /* clean up the server */
    kv_key *r = NULL;
    ck_assert_kv(kv_key_parse(&r, "/r"), KV_OK);
    EXPECT(kv_drop_prefix(e.s, (const kv_key *const *)&r, 1), KV_OK);
    kv_key_free(r);
    redisFree(rc);
    tu_env_close(&e, true);
#endif
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Typed iterators: values the codec cannot decode                          */
/* ------------------------------------------------------------------------ */

static int s_encode(const void *obj, kv_buf *out, void *ctx)
{
    (void)ctx;
    return kv_buf_append(out, obj, strlen(obj));
}

/* Values starting "BAD" are corrupt; others become strings. */
static int s_decode(const void *bytes, size_t len, void **out, void *ctx)
{
    (void)ctx;
    if (len >= 3 && memcmp(bytes, "BAD", 3) == 0)
        return KV_ECORRUPT;
    char *s = malloc(len + 1);
    if (s == NULL)
        return KV_ENOMEM;
    memcpy(s, bytes, len);
    s[len] = '\0';
    *out = s;
    return KV_OK;
}

static void s_free(void *obj, void *ctx)
{
    (void)ctx;
    free(obj);
}

START_TEST(test_typed_decode)
{
    tu_env e;
    env_new(&e);
    if (_i == 0)
        open_fs(&e);
    else
        open_sqlite(&e);
    const int bad[] = {3, BAD, NREC - 1};
    fill(&e, bad, 3);
    const kv_codec codec = {s_encode, s_decode, s_free, NULL};
    kv_key *all = NULL;
    ck_assert_kv(kv_key_parse(&all, "/"), KV_OK);
    kv_query q = kv_query_init(all);
    expect_fetch_all_fails(&e, &q, &codec, bad[0]);
    expect_next(&e, &q, &codec, bad, 3);
    q.skip_corrupt = true;
    expect_fetch_all_skips(&e, &q, &codec, bad, 3);
    expect_next(&e, &q, &codec, bad, 3);
    kv_key_free(all);
    tu_env_close(&e, true);
}
END_TEST

START_TEST(test_null_iter)
{
    size_t n = 7;
    ck_assert_ptr_null(kv_iter_corrupt(NULL, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(kv_iter_corrupt(NULL, NULL));
    kv_query q = kv_query_init(NULL);
    ck_assert(!q.skip_corrupt);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("corrupt");
    TCase *tc = tcase_create("corrupt");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_fs_flipped_byte, 0, 2);
    tcase_add_test(tc, test_fs_many_corrupt);
    tcase_add_test(tc, test_sqlite_bad_row);
    tcase_add_test(tc, test_redis_bad_hash);
    tcase_add_loop_test(tc, test_typed_decode, 0, 2);
    tcase_add_test(tc, test_null_iter);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
