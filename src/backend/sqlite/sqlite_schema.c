/*
 * backend/sqlite/sqlite_schema.c - the SQLite backend's tables: creating
 * and checking them, and the SQL of every statement it runs on them.
 * Pure SQL on a handle the caller owns: kv_sqlite_open's thread for the
 * schema, any thread for the statements' text.
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"

#include <stdio.h>
#include <string.h>

#define SCHEMA_FORMAT 1          /* kv_meta('format'); bump on layout change */

const char *const sqlite__sql[ST_COUNT] = {
    [ST_BEGIN_IMM] = "BEGIN IMMEDIATE",
    [ST_BEGIN] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT kv_req",
    [ST_RELEASE] = "RELEASE kv_req",
    [ST_ROLLBACK_TO] = "ROLLBACK TO kv_req",
    [ST_TOK_GET] = "SELECT value FROM kv_meta WHERE name = 'token'",
    [ST_TOK_SET] = "UPDATE kv_meta SET value = ?1 WHERE name = 'token'",
    [ST_HAS] = "SELECT token FROM kv WHERE key = ?1",
    [ST_GET] = "SELECT token, val FROM kv WHERE key = ?1",
    [ST_INSERT] = "INSERT INTO kv(key, val, token) VALUES(?1, ?2, ?3) "
                  "ON CONFLICT(key) DO NOTHING",
    [ST_UPDATE] = "UPDATE kv SET val = ?2, token = ?3 "
                  "WHERE key = ?1 AND token = ?4",
    [ST_DELETE] = "DELETE FROM kv WHERE key = ?1 AND token = ?2",
    [ST_UPSERT] = "INSERT INTO kv(key, val, token) VALUES(?1, ?2, ?3) "
                  "ON CONFLICT(key) DO UPDATE SET val = excluded.val, "
                  "token = excluded.token",
    [ST_DELETE_ANY] = "DELETE FROM kv WHERE key = ?1",
    [ST_DROP_RANGE] = "DELETE FROM kv WHERE key >= ?1 AND key < ?2",
    [ST_DROP_ALL] = "DELETE FROM kv",
    [ST_MOVE_SEL] = "SELECT id, key FROM kv WHERE key >= ?1 AND key < ?2",
    [ST_MOVE_SEL_ALL] = "SELECT id, key FROM kv",
    [ST_SETKEY] = "UPDATE kv SET key = ?2 WHERE id = ?1",
    [ST_SETKEY_TOK] = "UPDATE kv SET key = ?2, token = ?3 WHERE id = ?1",
};

/* Read one integer from a single-row query; *found false if no row. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, bool *found,
                     bool *is_int, char **msg)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sqlite__db_fail(db, rc, sql, msg);
    rc = sqlite3_step(st);
    int code = KV_OK;
    *found = false;
    if (rc == SQLITE_ROW) {
        *found = true;
        *is_int = sqlite3_column_type(st, 0) == SQLITE_INTEGER;
        *out = sqlite3_column_int64(st, 0);
    } else if (rc != SQLITE_DONE) {
        code = sqlite__db_fail(db, rc, sql, msg);
    }
    /* finalize repeats the step's error, handled above */
    (void)sqlite3_finalize(st);
    return code;
}

/* Check kv_meta: the format we know and a sane token counter. */
int sqlite__schema_check(sqlite3 *db, const char *path, char **msg)
{
    int64_t v = 0;
    bool found = false, is_int = false;
    int rc = query_int(db,
                       "SELECT count(*) FROM sqlite_master WHERE type = "
                       "'table' AND name IN ('kv', 'kv_meta')",
                       &v, &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (v != 2)
        return sqlite__fail_msg(KV_EBACKEND, msg,
                                "sqlite: %s: not a kvstore database (no kv and "
                                "kv_meta tables)",
                                path);
    rc = query_int(db, "SELECT value FROM kv_meta WHERE name = 'format'", &v,
                   &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (!found || !is_int)
        return sqlite__fail_msg(KV_ECORRUPT, msg,
                                "sqlite: %s: kv_meta has no format row", path);
    if (v != SCHEMA_FORMAT)
        return sqlite__fail_msg(
            KV_EBACKEND, msg,
            "sqlite: %s: unsupported kvstore format %lld (this "
            "library reads format %d)",
            path, (long long)v, SCHEMA_FORMAT);
    rc = query_int(db, sqlite__sql[ST_TOK_GET], &v, &found, &is_int, msg);
    if (rc != KV_OK)
        return rc;
    if (!found || !is_int || v < 0)
        return sqlite__fail_msg(
            KV_ECORRUPT, msg,
            "sqlite: %s: kv_meta token counter is missing or "
            "invalid",
            path);
    return KV_OK;
}

/* Create the schema of a new database; leave an existing one alone. */
int sqlite__schema_create(sqlite3 *db, const char *path, char **msg)
{
    int rc = sqlite__exec_sql(db, "BEGIN IMMEDIATE", msg);
    if (rc != KV_OK)
        return rc;
    int64_t n = 0;
    bool found = false, is_int = false;
    rc = query_int(db,
                   "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                   "AND name IN ('kv', 'kv_meta')",
                   &n, &found, &is_int, msg);
    int64_t other = 0;
    if (rc == KV_OK && n == 0)
        rc = query_int(db,
                       "SELECT count(*) FROM sqlite_master WHERE type = "
                       "'table' AND substr(name, 1, 7) <> 'sqlite_'",
                       &other, &found, &is_int, msg);
    if (rc == KV_OK && n == 0 && other > 0)
        rc =
            sqlite__fail_msg(KV_EBACKEND, msg,
                             "sqlite: %s: not a kvstore database (it has other "
                             "tables and no kv and kv_meta tables)",
                             path);
    if (rc == KV_OK && n == 0)
        rc = sqlite__exec_sql(
            db,
            "CREATE TABLE kv_meta(name TEXT PRIMARY KEY NOT NULL, "
            "value INTEGER NOT NULL);"
            "INSERT INTO kv_meta(name, value) VALUES('format', 1), "
            "('token', 0);"
            /* rowid table + UNIQUE key: measured 2-4x faster than WITHOUT
             * ROWID for 1-4 KiB values (MEASURED.md, and again here). */
            "CREATE TABLE kv(id INTEGER PRIMARY KEY, key BLOB NOT NULL "
            "UNIQUE, val BLOB NOT NULL, token INTEGER NOT NULL);",
            msg);
    if (rc == KV_OK)
        rc = sqlite__exec_sql(db, "COMMIT", msg);
    if (rc != KV_OK) {
        if (!sqlite3_get_autocommit(db))
            (void)sqlite__exec_sql(db, "ROLLBACK", NULL); /* best effort */
        return rc;
    }
    return KV_OK;
}

void sqlite__query_sql(char *buf, size_t size, const cursor *cu)
{
    snprintf(buf, size, "SELECT key, token%s FROM kv%s%s%s%s%s LIMIT ?3 "
             "OFFSET ?4",
             cu->value ? ", val" : "",
             cu->has_lo || cu->has_hi ? " WHERE " : "",
             cu->has_lo ? "key >= ?1" : "",
             cu->has_lo && cu->has_hi ? " AND " : "",
             cu->has_hi ? "key < ?2" : "",
             cu->sort == KV_SORT_ASC    ? " ORDER BY key ASC"
             : cu->sort == KV_SORT_DESC ? " ORDER BY key DESC"
                                        : "");
}

/* memcmp order of blobs, a shorter one first on a common prefix (SQLite's
 * BLOB order). */
static int blob_cmp(const kv_buf *a, const kv_buf *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n > 0 ? memcmp(a->data, b->data, n) : 0;
    if (c != 0)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

int sqlite__cursor_range(cursor *cu, const kv_query *q)
{
    int rc = encode(&cu->lo, q->key);
    if (rc == KV_OK)
        rc = range_hi(&cu->lo, &cu->hi);
    if (rc != KV_OK)
        return rc;
    cu->has_lo = cu->has_hi = cu->lo.len > 0; /* the empty key: everything */
    if (q->after == NULL)
        return KV_OK;
    kv_buf a = {NULL, 0, 0};
    rc = encode(&a, q->after);
    if (rc == KV_OK && q->sort == KV_SORT_ASC)
        rc = kv_buf_append(&a, "", 1); /* the successor of after's encoding */
    if (rc != KV_OK) {
        kv__free(a.data);
        return rc;
    }
    /* The tighter bound wins: one lower and one upper bound, so SQLite
     * seeks the index with both. */
    kv_buf *b = q->sort == KV_SORT_ASC ? &cu->lo : &cu->hi;
    bool *has = q->sort == KV_SORT_ASC ? &cu->has_lo : &cu->has_hi;
    int c = *has ? blob_cmp(&a, b) : 0;
    if (!*has || (q->sort == KV_SORT_ASC ? c > 0 : c < 0)) {
        kv__free(b->data);
        *b = a;
        *has = true;
    } else {
        kv__free(a.data);
    }
    return KV_OK;
}
