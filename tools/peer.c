/*
 * peer.c - kvbench's peer engines (sqlite-raw, lmdb, rocksdb).  See peer.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "peer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>
#ifdef HAVE_LMDB
#include <lmdb.h>
#endif
#ifdef HAVE_ROCKSDB
#include <rocksdb/c.h>
#endif

struct peer {
    tu_backend kind;
    peer_sync sync;
    char *path;
    long long mmap_size; /* sqlite-raw ?mmap=BYTES: PRAGMA mmap_size */
    atomic_uint_fast64_t next_token;
    char desc[512];
#ifdef HAVE_LMDB
    MDB_env *env;
    MDB_dbi dbi;
#endif
#ifdef HAVE_ROCKSDB
    rocksdb_options_t *ropts;
    rocksdb_optimistictransactiondb_t *odb;
    rocksdb_t *rdb; /* base db, for plain reads and iterators */
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *readopts;
    rocksdb_optimistictransaction_options_t *topts;
#endif
};

struct peer_conn {
    peer *p;
    char err[512];
    unsigned char *buf; /* value copies and token-prefixed values */
    size_t bufcap;
    /* sqlite-raw */
    sqlite3 *db;
    sqlite3_stmt *st_get, *st_ins, *st_upd, *st_scan, *st_begin, *st_commit,
        *st_rollback;
#ifdef HAVE_LMDB
    MDB_txn *rtxn; /* reset/renewed read transaction */
#endif
#ifdef HAVE_ROCKSDB
    rocksdb_transaction_t *txn; /* reused transaction object */
#endif
};

static uint64_t new_token(peer *p)
{
    return atomic_fetch_add_explicit(&p->next_token, 1, memory_order_relaxed);
}

static int grow(peer_conn *c, size_t n)
{
    if (n <= c->bufcap)
        return 0;
    size_t cap = c->bufcap ? c->bufcap : 256;
    while (cap < n)
        cap *= 2;
    unsigned char *b = realloc(c->buf, cap);
    if (!b) {
        snprintf(c->err, sizeof c->err, "out of memory");
        return -1;
    }
    c->buf = b;
    c->bufcap = cap;
    return 0;
}

#if defined(HAVE_LMDB) || defined(HAVE_ROCKSDB)
static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int mkdir_p(const char *path, char *err, size_t errlen)
{
    char *tmp = strdup(path);
    if (!tmp) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (char *s = tmp + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
                snprintf(err, errlen, "mkdir %s: %s", tmp, strerror(errno));
                free(tmp);
                return -1;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(tmp);
    return 0;
}

#endif /* HAVE_LMDB || HAVE_ROCKSDB */

bool peer_available(tu_backend kind)
{
    switch (kind) {
    case TU_SQLITE_RAW: return true;
#ifdef HAVE_LMDB
    case TU_LMDB: return true;
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB: return true;
#endif
    default: return false;
    }
}

#if defined(HAVE_LMDB) || defined(HAVE_ROCKSDB)
static const char *sync_name(peer_sync s)
{
    return s == PEER_SYNC_FULL ? "full" : s == PEER_SYNC_NORMAL ? "normal" : "none";
}
#endif

/* ------------------------------------------------------------------------ */
/* sqlite-raw                                                               */
/* ------------------------------------------------------------------------ */

static int sq_fail(peer_conn *c, const char *what)
{
    snprintf(c->err, sizeof c->err, "sqlite %s: %s", what,
             c->db ? sqlite3_errmsg(c->db) : "no connection");
    return KV_EBACKEND;
}

static int sq_exec(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite: %s: %s", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static int sq_conn_open(peer *p, peer_conn *c, char *err, size_t errlen)
{
    if (sqlite3_open_v2(p->path, &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, errlen, "sqlite open %s: %s", p->path,
                 c->db ? sqlite3_errmsg(c->db) : "out of memory");
        return -1;
    }
    /* Long: 64 threads of autocommit writers under synchronous=FULL queue
       for the write lock far longer than kvstore's 5 s. */
    sqlite3_busy_timeout(c->db, 120000);
    const char *sync = p->sync == PEER_SYNC_FULL     ? "PRAGMA synchronous=FULL"
                       : p->sync == PEER_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
                                                     : "PRAGMA synchronous=OFF";
    char mmap_sql[64];
    snprintf(mmap_sql, sizeof mmap_sql, "PRAGMA mmap_size=%lld", p->mmap_size);
    if (sq_exec(c->db, "PRAGMA journal_mode=WAL", err, errlen) ||
        sq_exec(c->db, sync, err, errlen) ||
        (p->mmap_size > 0 && sq_exec(c->db, mmap_sql, err, errlen)) ||
        sq_exec(c->db,
                "CREATE TABLE IF NOT EXISTS kv(id INTEGER PRIMARY KEY, "
                "key BLOB NOT NULL UNIQUE, val BLOB NOT NULL, "
                "token INTEGER NOT NULL)",
                err, errlen))
        return -1;
    static const struct {
        size_t off;
        const char *sql;
    } stmts[] = {
        {offsetof(peer_conn, st_get), "SELECT val, token FROM kv WHERE key = ?1"},
        {offsetof(peer_conn, st_ins),
         "INSERT INTO kv(key, val, token) VALUES(?1, ?2, ?3) "
         "ON CONFLICT(key) DO NOTHING"},
        {offsetof(peer_conn, st_upd),
         "UPDATE kv SET val = ?2, token = ?3 WHERE key = ?1 AND token = ?4"},
        {offsetof(peer_conn, st_scan),
         "SELECT key, val, token FROM kv WHERE key >= ?1 AND key < ?2 "
         "ORDER BY key LIMIT ?3"},
        {offsetof(peer_conn, st_begin), "BEGIN IMMEDIATE"},
        {offsetof(peer_conn, st_commit), "COMMIT"},
        {offsetof(peer_conn, st_rollback), "ROLLBACK"},
    };
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
        sqlite3_stmt **sp = (sqlite3_stmt **)(void *)((char *)c + stmts[i].off);
        if (sqlite3_prepare_v2(c->db, stmts[i].sql, -1, sp, NULL) != SQLITE_OK) {
            snprintf(err, errlen, "sqlite prepare: %s", sqlite3_errmsg(c->db));
            return -1;
        }
    }
    return 0;
}

static void sq_conn_close(peer_conn *c)
{
    sqlite3_stmt *all[] = {c->st_get,   c->st_ins,    c->st_upd,
                           c->st_scan,  c->st_begin,  c->st_commit,
                           c->st_rollback};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    sqlite3_close(c->db);
    c->db = NULL;
}

static int sq_step_done(peer_conn *c, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sq_fail(c, what);
    return KV_OK;
}

static int sq_get(peer_conn *c, const char *key, size_t klen, uint64_t *token,
                  size_t *vlen)
{
    sqlite3_stmt *st = c->st_get;
    sqlite3_bind_blob(st, 1, key, (int)klen, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return KV_ENOTFOUND;
    }
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return sq_fail(c, "get");
    }
    const void *v = sqlite3_column_blob(st, 0);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    /* Copy the value out, as kvstore does into its future. */
    if (grow(c, n + 1)) {
        sqlite3_reset(st);
        return KV_ENOMEM;
    }
    if (n)
        memcpy(c->buf, v, n);
    *vlen = n;
    *token = (uint64_t)sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return KV_OK;
}

/* One conditional write, inside or outside a transaction. */
static int sq_put1(peer_conn *c, const char *key, size_t klen, const void *val,
                   size_t vlen, uint64_t expect, uint64_t *newtok)
{
    uint64_t tok = new_token(c->p);
    sqlite3_stmt *st = expect ? c->st_upd : c->st_ins;
    sqlite3_bind_blob(st, 1, key, (int)klen, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, val, (int)vlen, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)tok);
    if (expect)
        sqlite3_bind_int64(st, 4, (sqlite3_int64)expect);
    int rc = sq_step_done(c, st, expect ? "update" : "insert");
    if (rc != KV_OK)
        return rc;
    if (sqlite3_changes(c->db) == 0)
        return KV_ECONFLICT;
    *newtok = tok;
    return KV_OK;
}

static int sq_put_batch(peer_conn *c, size_t n, const char *const *keys,
                        const size_t *klens, const void *val, size_t vlen,
                        const uint64_t *expect, uint64_t *newtok,
                        unsigned char *conflict, bool atomic)
{
    int rc = sq_step_done(c, c->st_begin, "begin");
    if (rc != KV_OK)
        return rc;
    size_t nconf = 0;
    for (size_t i = 0; i < n; i++) {
        rc = sq_put1(c, keys[i], klens[i], val, vlen, expect[i], &newtok[i]);
        conflict[i] = rc == KV_ECONFLICT;
        if (rc == KV_ECONFLICT) {
            nconf++;
            continue;
        }
        if (rc != KV_OK) {
            sq_step_done(c, c->st_rollback, "rollback");
            return rc;
        }
    }
    if (atomic && nconf)
        return sq_step_done(c, c->st_rollback, "rollback");
    rc = sq_step_done(c, c->st_commit, "commit");
    if (rc != KV_OK)
        sq_step_done(c, c->st_rollback, "rollback");
    return rc;
}

static int sq_scan(peer_conn *c, const char *prefix, size_t plen,
                   unsigned limit, size_t *count, uint64_t *bytes)
{
    if (grow(c, 2 * plen + 2))
        return KV_ENOMEM;
    char *lo = (char *)c->buf, *hi = lo + plen + 1;
    memcpy(lo, prefix, plen);
    lo[plen] = '/';
    memcpy(hi, prefix, plen);
    hi[plen] = '/' + 1;
    sqlite3_stmt *st = c->st_scan;
    sqlite3_bind_blob(st, 1, lo, (int)plen + 1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 2, hi, (int)plen + 1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, limit);
    size_t n = 0;
    uint64_t b = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        n++;
        b += (uint64_t)sqlite3_column_bytes(st, 1);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sq_fail(c, "scan");
    *count = n;
    *bytes = b;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* LMDB                                                                     */
/* ------------------------------------------------------------------------ */

#ifdef HAVE_LMDB
static int mdb_fail(peer_conn *c, const char *what, int rc)
{
    snprintf(c->err, sizeof c->err, "lmdb %s: %s", what, mdb_strerror(rc));
    return KV_EBACKEND;
}

static int lm_open(peer *p, unsigned maxconns, uint64_t data_bytes, char *err,
                   size_t errlen)
{
    int rc;
    const char *what = "mdb_env_create";
    if (mkdir_p(p->path, err, errlen))
        return -1;
    uint64_t map = data_bytes * 16;
    if (map < ((uint64_t)1 << 30))
        map = (uint64_t)1 << 30;
    if (map > ((uint64_t)64 << 30))
        map = (uint64_t)64 << 30;
    const char *env = getenv("KVBENCH_LMDB_MAPSIZE");
    uint64_t v;
    if (env && tu_parse_size(env, &v) == 0 && v > 0)
        map = v;
    if ((rc = mdb_env_create(&p->env)) != 0)
        goto fail;
    what = "mdb_env_set_mapsize";
    if ((rc = mdb_env_set_mapsize(p->env, (size_t)map)) != 0)
        goto fail;
    what = "mdb_env_set_maxreaders";
    if ((rc = mdb_env_set_maxreaders(p->env, maxconns + 16)) != 0)
        goto fail;
    unsigned flags = MDB_NOTLS;
    if (p->sync == PEER_SYNC_NORMAL)
        flags |= MDB_NOMETASYNC;
    else if (p->sync == PEER_SYNC_NONE)
        flags |= MDB_NOSYNC;
    what = "mdb_env_open";
    if ((rc = mdb_env_open(p->env, p->path, flags, 0644)) != 0)
        goto fail;
    what = "creating the database";
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(p->env, NULL, 0, &txn)) != 0)
        goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, MDB_CREATE, &p->dbi)) != 0) {
        mdb_txn_abort(txn);
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        goto fail;
    return 0;
fail:
    snprintf(err, errlen, "lmdb %s: %s: %s%s", p->path, what, mdb_strerror(rc),
             rc == EINVAL && !strcmp(what, "mdb_env_open")
                 ? " (map too large for this process? set KVBENCH_LMDB_MAPSIZE)"
                 : "");
    return -1;
}

static int lm_rtxn(peer_conn *c)
{
    int rc = c->rtxn ? mdb_txn_renew(c->rtxn)
                     : mdb_txn_begin(c->p->env, NULL, MDB_RDONLY, &c->rtxn);
    return rc ? mdb_fail(c, "read txn", rc) : KV_OK;
}

static int lm_get(peer_conn *c, const char *key, size_t klen, uint64_t *token,
                  size_t *vlen)
{
    int rc = lm_rtxn(c);
    if (rc != KV_OK)
        return rc;
    MDB_val k = {klen, (void *)key}, v;
    int mrc = mdb_get(c->rtxn, c->p->dbi, &k, &v);
    if (mrc == 0 && v.mv_size >= 8) {
        if (grow(c, v.mv_size)) {
            mdb_txn_reset(c->rtxn);
            return KV_ENOMEM;
        }
        memcpy(c->buf, v.mv_data, v.mv_size);
        *token = get_le64(c->buf);
        *vlen = v.mv_size - 8;
        rc = KV_OK;
    } else if (mrc == MDB_NOTFOUND) {
        rc = KV_ENOTFOUND;
    } else {
        rc = mrc ? mdb_fail(c, "get", mrc) : (snprintf(c->err, sizeof c->err, "lmdb: short value"), KV_ECORRUPT);
    }
    mdb_txn_reset(c->rtxn);
    return rc;
}

/* Read-compare-put inside the write transaction txn. */
static int lm_put1(peer_conn *c, MDB_txn *txn, const char *key, size_t klen,
                   const void *val, size_t vlen, uint64_t expect,
                   uint64_t *newtok)
{
    MDB_val k = {klen, (void *)key}, cur;
    int mrc = mdb_get(txn, c->p->dbi, &k, &cur);
    if (mrc == MDB_NOTFOUND) {
        if (expect != 0)
            return KV_ECONFLICT;
    } else if (mrc == 0) {
        if (cur.mv_size < 8 || get_le64(cur.mv_data) != expect || !expect)
            return KV_ECONFLICT;
    } else {
        return mdb_fail(c, "get", mrc);
    }
    uint64_t tok = new_token(c->p);
    MDB_val v = {vlen + 8, NULL};
    mrc = mdb_put(txn, c->p->dbi, &k, &v, MDB_RESERVE);
    if (mrc)
        return mdb_fail(c, "put", mrc);
    put_le64(v.mv_data, tok);
    if (vlen)
        memcpy((unsigned char *)v.mv_data + 8, val, vlen);
    *newtok = tok;
    return KV_OK;
}

static int lm_put_batch(peer_conn *c, size_t n, const char *const *keys,
                        const size_t *klens, const void *val, size_t vlen,
                        const uint64_t *expect, uint64_t *newtok,
                        unsigned char *conflict, bool atomic)
{
    MDB_txn *txn;
    int mrc = mdb_txn_begin(c->p->env, NULL, 0, &txn);
    if (mrc)
        return mdb_fail(c, "write txn", mrc);
    size_t nconf = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = lm_put1(c, txn, keys[i], klens[i], val, vlen, expect[i],
                         &newtok[i]);
        conflict[i] = rc == KV_ECONFLICT;
        if (rc == KV_ECONFLICT) {
            nconf++;
        } else if (rc != KV_OK) {
            mdb_txn_abort(txn);
            return rc;
        }
    }
    if (atomic && nconf) {
        mdb_txn_abort(txn);
        return KV_OK;
    }
    mrc = mdb_txn_commit(txn);
    return mrc ? mdb_fail(c, "commit", mrc) : KV_OK;
}

static int lm_put(peer_conn *c, const char *key, size_t klen, const void *val,
                  size_t vlen, uint64_t expect, uint64_t *newtok)
{
    unsigned char conf = 0;
    const char *keys[1] = {key};
    int rc = lm_put_batch(c, 1, keys, &klen, val, vlen, &expect, newtok, &conf,
                          true);
    if (rc == KV_OK && conf)
        return KV_ECONFLICT;
    return rc;
}

static int lm_scan(peer_conn *c, const char *prefix, size_t plen,
                   unsigned limit, size_t *count, uint64_t *bytes)
{
    if (grow(c, plen + 1))
        return KV_ENOMEM;
    char *lo = (char *)c->buf;
    memcpy(lo, prefix, plen);
    lo[plen] = '/';
    int rc = lm_rtxn(c);
    if (rc != KV_OK)
        return rc;
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(c->rtxn, c->p->dbi, &cur);
    if (mrc) {
        mdb_txn_reset(c->rtxn);
        return mdb_fail(c, "cursor", mrc);
    }
    MDB_val k = {plen + 1, lo}, v;
    size_t n = 0;
    uint64_t b = 0;
    mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && n < limit && k.mv_size > plen &&
           memcmp(k.mv_data, prefix, plen) == 0 &&
           ((const char *)k.mv_data)[plen] == '/') {
        n++;
        b += v.mv_size >= 8 ? v.mv_size - 8 : 0;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    mdb_txn_reset(c->rtxn);
    if (mrc && mrc != MDB_NOTFOUND)
        return mdb_fail(c, "cursor", mrc);
    *count = n;
    *bytes = b;
    return KV_OK;
}
#endif /* HAVE_LMDB */

/* ------------------------------------------------------------------------ */
/* RocksDB                                                                  */
/* ------------------------------------------------------------------------ */

#ifdef HAVE_ROCKSDB
static int rk_fail(peer_conn *c, const char *what, char *msg)
{
    snprintf(c->err, sizeof c->err, "rocksdb %s: %s", what, msg ? msg : "?");
    rocksdb_free(msg);
    return KV_EBACKEND;
}

static int rk_open(peer *p, char *err, size_t errlen)
{
    char *msg = NULL;
    if (mkdir_p(p->path, err, errlen))
        return -1;
    p->ropts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(p->ropts, 1);
    rocksdb_options_increase_parallelism(p->ropts, 2);
    p->odb = rocksdb_optimistictransactiondb_open(p->ropts, p->path, &msg);
    if (msg) {
        snprintf(err, errlen, "rocksdb open %s: %s", p->path, msg);
        rocksdb_free(msg);
        return -1;
    }
    p->rdb = rocksdb_optimistictransactiondb_get_base_db(p->odb);
    p->wopts = rocksdb_writeoptions_create();
    if (p->sync == PEER_SYNC_FULL)
        rocksdb_writeoptions_set_sync(p->wopts, 1);
    else if (p->sync == PEER_SYNC_NONE)
        rocksdb_writeoptions_disable_WAL(p->wopts, 1);
    p->readopts = rocksdb_readoptions_create();
    p->topts = rocksdb_optimistictransaction_options_create();
    return 0;
}

static void rk_close(peer *p)
{
    if (p->rdb)
        rocksdb_optimistictransactiondb_close_base_db(p->rdb);
    if (p->odb)
        rocksdb_optimistictransactiondb_close(p->odb);
    if (p->wopts)
        rocksdb_writeoptions_destroy(p->wopts);
    if (p->readopts)
        rocksdb_readoptions_destroy(p->readopts);
    if (p->topts)
        rocksdb_optimistictransaction_options_destroy(p->topts);
    if (p->ropts)
        rocksdb_options_destroy(p->ropts);
}

static int rk_get(peer_conn *c, const char *key, size_t klen, uint64_t *token,
                  size_t *vlen)
{
    char *msg = NULL;
    size_t n = 0;
    char *v = rocksdb_get(c->p->rdb, c->p->readopts, key, klen, &n, &msg);
    if (msg)
        return rk_fail(c, "get", msg);
    if (!v)
        return KV_ENOTFOUND;
    int rc = KV_OK;
    if (n < 8) {
        snprintf(c->err, sizeof c->err, "rocksdb: short value");
        rc = KV_ECORRUPT;
    } else {
        *token = get_le64((const unsigned char *)v);
        *vlen = n - 8;
    }
    rocksdb_free(v);
    return rc;
}

static bool rk_is_conflict(const char *msg)
{
    return strstr(msg, "Busy") || strstr(msg, "busy") ||
           strstr(msg, "TryAgain") || strstr(msg, "Try again");
}

static int rk_put_batch(peer_conn *c, size_t n, const char *const *keys,
                        const size_t *klens, const void *val, size_t vlen,
                        const uint64_t *expect, uint64_t *newtok,
                        unsigned char *conflict, bool atomic)
{
    peer *p = c->p;
    char *msg = NULL;
    c->txn = rocksdb_optimistictransaction_begin(p->odb, p->wopts, p->topts,
                                                 c->txn);
    if (grow(c, vlen + 8))
        return KV_ENOMEM;
    size_t nconf = 0;
    for (size_t i = 0; i < n; i++) {
        size_t cn = 0;
        char *cur = rocksdb_transaction_get_for_update(
            c->txn, p->readopts, keys[i], klens[i], &cn, 1, &msg);
        if (msg) {
            if (rk_is_conflict(msg)) {
                rocksdb_free(msg);
                msg = NULL;
                conflict[i] = 1;
                nconf++;
                continue;
            }
            rocksdb_transaction_rollback(c->txn, NULL);
            return rk_fail(c, "get_for_update", msg);
        }
        uint64_t have = cur && cn >= 8 ? get_le64((unsigned char *)cur) : 0;
        bool exists = cur != NULL;
        rocksdb_free(cur);
        if (exists ? (have != expect[i] || !expect[i]) : expect[i] != 0) {
            conflict[i] = 1;
            nconf++;
            continue;
        }
        conflict[i] = 0;
        uint64_t tok = new_token(p);
        put_le64(c->buf, tok);
        if (vlen)
            memcpy(c->buf + 8, val, vlen);
        rocksdb_transaction_put(c->txn, keys[i], klens[i], (char *)c->buf,
                                vlen + 8, &msg);
        if (msg) {
            rocksdb_transaction_rollback(c->txn, NULL);
            return rk_fail(c, "put", msg);
        }
        newtok[i] = tok;
    }
    if (atomic && nconf) {
        rocksdb_transaction_rollback(c->txn, &msg);
        return msg ? rk_fail(c, "rollback", msg) : KV_OK;
    }
    rocksdb_transaction_commit(c->txn, &msg);
    if (msg) {
        if (rk_is_conflict(msg)) {
            /* Another writer committed one of our keys first: the whole
               transaction failed, so every record conflicts. */
            rocksdb_free(msg);
            for (size_t i = 0; i < n; i++)
                conflict[i] = 1;
            return KV_OK;
        }
        return rk_fail(c, "commit", msg);
    }
    return KV_OK;
}

static int rk_put(peer_conn *c, const char *key, size_t klen, const void *val,
                  size_t vlen, uint64_t expect, uint64_t *newtok)
{
    unsigned char conf = 0;
    const char *keys[1] = {key};
    int rc = rk_put_batch(c, 1, keys, &klen, val, vlen, &expect, newtok,
                          &conf, true);
    if (rc == KV_OK && conf)
        return KV_ECONFLICT;
    return rc;
}

static int rk_scan(peer_conn *c, const char *prefix, size_t plen,
                   unsigned limit, size_t *count, uint64_t *bytes)
{
    if (grow(c, plen + 1))
        return KV_ENOMEM;
    char *lo = (char *)c->buf;
    memcpy(lo, prefix, plen);
    lo[plen] = '/';
    rocksdb_iterator_t *it = rocksdb_create_iterator(c->p->rdb, c->p->readopts);
    rocksdb_iter_seek(it, lo, plen + 1);
    size_t n = 0;
    uint64_t b = 0;
    while (n < limit && rocksdb_iter_valid(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl <= plen || memcmp(k, lo, plen + 1) != 0)
            break;
        (void)rocksdb_iter_value(it, &vl);
        n++;
        b += vl >= 8 ? vl - 8 : 0;
        rocksdb_iter_next(it);
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    rocksdb_iter_destroy(it);
    if (msg)
        return rk_fail(c, "iterator", msg);
    *count = n;
    *bytes = b;
    return KV_OK;
}
#endif /* HAVE_ROCKSDB */

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

int peer_open(peer **out, tu_backend kind, const char *path, peer_sync sync,
              unsigned maxconns, uint64_t data_bytes, char *err,
              size_t errlen)
{
    if (!peer_available(kind)) {
        snprintf(err, errlen,
                 "%s: this kvbench was built without it (install %s and "
                 "reconfigure)",
                 tu_backend_name(kind),
                 kind == TU_LMDB ? "liblmdb-dev" : "librocksdb-dev");
        return KV_ENOTSUP;
    }
    peer *p = calloc(1, sizeof *p);
    if (!p || !(p->path = strdup(path))) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    p->kind = kind;
    p->sync = sync;
    atomic_init(&p->next_token, tu_wall_ns());
    int rc = 0;
    switch (kind) {
    case TU_SQLITE_RAW: {
        /* sqlite-raw:PATH?mmap=BYTES: SQLite's own map of the file. */
        char *q = strrchr(p->path, '?');
        if (q != NULL && strncmp(q, "?mmap=", 6) == 0) {
            char *end = NULL;
            errno = 0;
            p->mmap_size = strtoll(q + 6, &end, 10);
            if (errno != 0 || end == q + 6 || *end != '\0' ||
                p->mmap_size < 0) {
                snprintf(err, errlen, "sqlite-raw:%s: mmap takes a size in "
                         "bytes", path);
                rc = KV_EINVAL;
                break;
            }
            *q = '\0';
        }
        /* Create the schema once up front so that connections do not race
           to create it. */
        peer_conn c0;
        memset(&c0, 0, sizeof c0);
        c0.p = p;
        rc = sq_conn_open(p, &c0, err, errlen);
        sq_conn_close(&c0);
        snprintf(p->desc, sizeof p->desc,
                 "sqlite-raw (SQLite %s): blocking sqlite3 calls on the job's "
                 "threads (one connection each); rowid table, key BLOB "
                 "UNIQUE; CAS by conditional UPDATE/INSERT; WAL, "
                 "synchronous=%s; each write its own transaction; "
                 "mmap_size=%lld",
                 sqlite3_libversion(),
                 sync == PEER_SYNC_FULL     ? "FULL"
                 : sync == PEER_SYNC_NORMAL ? "NORMAL"
                                            : "OFF",
                 p->mmap_size);
        break;
    }
#ifdef HAVE_LMDB
    case TU_LMDB:
        rc = lm_open(p, maxconns, data_bytes, err, errlen);
        snprintf(p->desc, sizeof p->desc,
                 "lmdb (%s): blocking calls on the job's threads; CAS = "
                 "mdb_get + compare + mdb_put in one write txn (one writer "
                 "at a time); sync=%s (%s)",
                 mdb_version(NULL, NULL, NULL), sync_name(sync),
                 sync == PEER_SYNC_FULL     ? "fsync per commit"
                 : sync == PEER_SYNC_NORMAL ? "MDB_NOMETASYNC"
                                            : "MDB_NOSYNC");
        break;
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB:
        rc = rk_open(p, err, errlen);
        snprintf(p->desc, sizeof p->desc,
                 "rocksdb: blocking calls on the job's threads; CAS = "
                 "OptimisticTransactionDB GetForUpdate + compare + Put, "
                 "commit fails Busy on a race; sync=%s (%s)",
                 sync_name(sync),
                 sync == PEER_SYNC_FULL     ? "WAL fsync per commit, group commit across threads"
                 : sync == PEER_SYNC_NORMAL ? "WAL written, not fsynced"
                                            : "WAL disabled");
        break;
#endif
    default: break;
    }
    (void)maxconns;
    (void)data_bytes;
    if (rc) {
        peer_close(p);
        return KV_EBACKEND;
    }
    *out = p;
    return KV_OK;
}

const char *peer_describe(const peer *p)
{
    return p->desc;
}

void peer_close(peer *p)
{
    if (!p)
        return;
#ifdef HAVE_LMDB
    if (p->env)
        mdb_env_close(p->env);
#endif
#ifdef HAVE_ROCKSDB
    rk_close(p);
#endif
    free(p->path);
    free(p);
}

int peer_conn_open(peer *p, peer_conn **out, char *err, size_t errlen)
{
    peer_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    c->p = p;
    if (p->kind == TU_SQLITE_RAW && sq_conn_open(p, c, err, errlen)) {
        peer_conn_close(c);
        return KV_EBACKEND;
    }
    *out = c;
    return KV_OK;
}

void peer_conn_close(peer_conn *c)
{
    if (!c)
        return;
    if (c->p->kind == TU_SQLITE_RAW)
        sq_conn_close(c);
#ifdef HAVE_LMDB
    if (c->rtxn)
        mdb_txn_abort(c->rtxn);
#endif
#ifdef HAVE_ROCKSDB
    if (c->txn)
        rocksdb_transaction_destroy(c->txn);
#endif
    free(c->buf);
    free(c);
}

const char *peer_errmsg(const peer_conn *c)
{
    return c->err;
}

int peer_get(peer_conn *c, const char *key, size_t klen, uint64_t *token,
             size_t *vlen)
{
    switch (c->p->kind) {
    case TU_SQLITE_RAW: return sq_get(c, key, klen, token, vlen);
#ifdef HAVE_LMDB
    case TU_LMDB: return lm_get(c, key, klen, token, vlen);
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB: return rk_get(c, key, klen, token, vlen);
#endif
    default: return KV_ENOTSUP;
    }
}

int peer_put(peer_conn *c, const char *key, size_t klen, const void *val,
             size_t vlen, uint64_t expect, uint64_t *newtok)
{
    switch (c->p->kind) {
    case TU_SQLITE_RAW: return sq_put1(c, key, klen, val, vlen, expect, newtok);
#ifdef HAVE_LMDB
    case TU_LMDB: return lm_put(c, key, klen, val, vlen, expect, newtok);
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB: return rk_put(c, key, klen, val, vlen, expect, newtok);
#endif
    default: return KV_ENOTSUP;
    }
}

int peer_put_batch(peer_conn *c, size_t n, const char *const *keys,
                   const size_t *klens, const void *val, size_t vlen,
                   const uint64_t *expect, uint64_t *newtok,
                   unsigned char *conflict, bool atomic)
{
    switch (c->p->kind) {
    case TU_SQLITE_RAW:
        return sq_put_batch(c, n, keys, klens, val, vlen, expect, newtok,
                            conflict, atomic);
#ifdef HAVE_LMDB
    case TU_LMDB:
        return lm_put_batch(c, n, keys, klens, val, vlen, expect, newtok,
                            conflict, atomic);
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB:
        return rk_put_batch(c, n, keys, klens, val, vlen, expect, newtok,
                            conflict, atomic);
#endif
    default: return KV_ENOTSUP;
    }
}

int peer_scan(peer_conn *c, const char *prefix, size_t plen, unsigned limit,
              size_t *count, uint64_t *bytes)
{
    switch (c->p->kind) {
    case TU_SQLITE_RAW: return sq_scan(c, prefix, plen, limit, count, bytes);
#ifdef HAVE_LMDB
    case TU_LMDB: return lm_scan(c, prefix, plen, limit, count, bytes);
#endif
#ifdef HAVE_ROCKSDB
    case TU_ROCKSDB: return rk_scan(c, prefix, plen, limit, count, bytes);
#endif
    default: return KV_ENOTSUP;
    }
}
