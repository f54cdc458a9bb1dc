/*
 * backend/sqlite/sqlite_job.c - what runs on the pool's worker threads: the
 * job of a connection (a reader's batch of point reads in one snapshot; the
 * writer's group commit, each request in its own savepoint; query cursors'
 * opens and fetches) and the background WAL checkpoint.  While a job runs
 * it owns its connection's handle and statements, the requests of its run
 * list and their cursors' statements; of the loop thread's state it reads
 * only what conn_start set for it (max_pages, ck_finish) and leaves
 * ncommits, wal_pages and s->ck_log for the done callback.
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define TOKEN_BLOCK 1024         /* tokens reserved per kv_meta write       */
#define FETCH_ROWS 256           /* rows per ITER_FETCH ...                */
#define FETCH_BYTES (1u << 20)   /* ... or about this many bytes            */

static char *dup_msg(const char *m)
{
    return m != NULL ? kv__strdup(m) : NULL;
}

static int bind_blob(sqlite3_stmt *st, int i, const void *p, size_t n)
{
    return sqlite3_bind_blob64(st, i, p != NULL ? p : (const void *)"",
                               (sqlite3_uint64)n, SQLITE_STATIC);
}

/* A readable form of an encoded key for messages (never NULL unless OOM). */
static char *key_text(const void *bytes, size_t len)
{
    kv_key *k = NULL;
    if (kv__key_decode(&k, bytes, len) != KV_OK)
        return kv__strdup("(undecodable key)");
    char *t = kv__strdup(kv_key_id(k));
    kv_key_free(k);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Reads                                                                    */
/* ------------------------------------------------------------------------ */

/* The token of column col: a positive integer, else KV_ECORRUPT. */
static int col_token(sqlite3_stmt *st, int col, uint64_t *out, char **msg)
{
    int64_t t = sqlite3_column_int64(st, col);
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER || t <= 0)
        return sqlite__fail_msg(
            KV_ECORRUPT, msg, "sqlite: stored token is not a positive integer");
    *out = (uint64_t)t;
    return KV_OK;
}

/* A copy of blob column col into *val and *len (kv__malloc). */
static int col_value(sqlite3_stmt *st, int col, void **val, size_t *len,
                     char **msg)
{
    if (sqlite3_column_type(st, col) != SQLITE_BLOB)
        return sqlite__fail_msg(KV_ECORRUPT, msg,
                                "sqlite: stored value is not a blob");
    const void *p = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (n < 0 || (n > 0 && p == NULL))
        return sqlite__fail_msg(KV_ENOMEM, msg,
                                "sqlite: out of memory reading a value");
    void *v = kv__malloc(n > 0 ? (size_t)n : 1);
    if (v == NULL)
        return KV_ENOMEM;
    if (n > 0)
        memcpy(v, p, (size_t)n);
    *val = v;
    *len = (size_t)n;
    return KV_OK;
}

/* HAS / GET: each item's status, token and (GET) value. */
static void run_get(conn *c, sreq *r)
{
    kv__req *q = r->req;
    bool val = q->op == KV__OP_GET && q->want_value;
    sqlite3_stmt *st;
    char *msg = NULL;
    int rc = prep(c, val ? ST_GET : ST_HAS, &st, &msg);
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        rc = encode(&c->kb, it->key);
        if (rc != KV_OK)
            break;
        int src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = sqlite3_step(st);
        if (src == SQLITE_ROW) {
            rc = col_token(st, 0, &it->token, &msg);
            if (rc == KV_OK && val)
                rc = col_value(st, 1, &it->val, &it->len, &msg);
            it->status = KV_OK;
        } else if (src == SQLITE_DONE) {
            it->status = KV_ENOTFOUND;
        } else {
            rc = sqlite__db_fail(c->db, src, "read", &msg);
        }
        (void)sqlite3_reset(st); /* repeats the step's error, handled */
    }
    if (rc != KV_OK)
        sreq_fail(r, rc, msg);
}

/* QUERY_OPEN: prepare the cursor's statement and step to its first row. */
static void run_open(conn *c, sreq *r)
{
    cursor *cu = r->cur;
    char *msg = NULL;
    cu->st = NULL;
    cu->row = false;
    if (cu->limit == 0)
        return; /* nothing to return: finished at once */
    char sql[160];
    sqlite__query_sql(sql, sizeof sql, cu);
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (src == SQLITE_OK && cu->has_lo)
        src = bind_blob(st, 1, cu->lo.data, cu->lo.len);
    if (src == SQLITE_OK && cu->has_hi)
        src = bind_blob(st, 2, cu->hi.data, cu->hi.len);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(st, 3, cu->limit);
    if (src == SQLITE_OK)
        src = sqlite3_bind_int64(st, 4, cu->offset);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        cu->st = st;
        cu->row = true;
        return;
    }
    if (src != SQLITE_DONE)
        sreq_fail(r, sqlite__db_fail(c->db, src, "query", &msg), msg);
    /* finalize repeats the step's error, handled above */
    (void)sqlite3_finalize(st);
}

/* End a cursor's statement (worker). */
void sqlite__cursor_finish(cursor *cu)
{
    if (cu->st != NULL) {
        /* finalize returns the statement's last error, already reported */
        (void)sqlite3_finalize(cu->st);
        cu->st = NULL;
    }
    cu->row = false;
}

/* ITER_FETCH: up to FETCH_ROWS rows or about FETCH_BYTES into req->items. */
static void run_fetch(conn *c, sreq *r)
{
    cursor *cu = r->cur;
    kv__req *q = r->req;
    char *msg = NULL;
    q->items = NULL;
    q->n = 0;
    q->eof = false;
    if (cu->st == NULL) {
        if (cu->err != KV_OK)
            sreq_fail(r, cu->err,
                      kv__strdup("sqlite: the query failed earlier"));
        else
            q->eof = true;
        return;
    }
    kv__item *items = kv__items_new(FETCH_ROWS);
    if (items == NULL) {
        sreq_fail(r, KV_ENOMEM, NULL);
        return;
    }
    size_t n = 0, bytes = 0;
    int rc = KV_OK;
    while (cu->row && n < FETCH_ROWS && bytes < FETCH_BYTES) {
        kv__item *it = &items[n];
        sqlite3_stmt *st = cu->st;
        if (sqlite3_column_type(st, 0) != SQLITE_BLOB) {
            rc = sqlite__fail_msg(KV_ECORRUPT, &msg,
                                  "sqlite: stored key is not a blob");
            break;
        }
        const void *kp = sqlite3_column_blob(st, 0);
        int kn = sqlite3_column_bytes(st, 0);
        if (kn <= 0 || kp == NULL) {
            /* A valid encoding is never empty; NULL otherwise is OOM. */
            rc = kn == 0 ? sqlite__fail_msg(KV_ECORRUPT, &msg,
                                            "sqlite: stored key is empty")
                         : KV_ENOMEM;
            break;
        }
        rc = kv__key_decode(&it->key, kp, (size_t)kn);
        if (rc == KV_ECORRUPT)
            sqlite__fail_msg(rc, &msg, "sqlite: stored key is malformed");
        if (rc == KV_OK)
            rc = col_token(st, 1, &it->token, &msg);
        if (rc == KV_OK && cu->value)
            rc = col_value(st, 2, &it->val, &it->len, &msg);
        n++; /* items[n - 1] is freed with the others on failure */
        if (rc == KV_ECORRUPT && it->key != NULL) {
            /* A readable key with a bad token or value: a row of its own
             * (iter.c fails or skips it). */
            kv__free(it->val);
            it->val = kv__asprintf("%s (record %s)",
                                   msg != NULL ? msg : "sqlite: corrupt row",
                                   kv_key_id(it->key));
            it->len = it->val != NULL ? strlen(it->val) : 0;
            kv__free(msg);
            msg = NULL;
            rc = KV_OK;
            it->status = KV_ECORRUPT;
        } else if (rc != KV_OK) {
            break;
        } else {
            it->status = KV_OK;
        }
        bytes += it->len + (size_t)kn + sizeof *it;
        int src = sqlite3_step(st);
        if (src == SQLITE_DONE) {
            sqlite__cursor_finish(cu);
        } else if (src != SQLITE_ROW) {
            rc = sqlite__db_fail(c->db, src, "query", &msg);
            break;
        }
    }
    if (rc != KV_OK) {
        kv__items_free(items, n);
        cu->err = rc;
        sqlite__cursor_finish(cu);
        sreq_fail(r, rc, msg);
        return;
    }
    if (n == 0) {
        kv__items_free(items, 0);
        items = NULL;
    }
    q->items = items;
    q->n = n;
    q->eof = cu->st == NULL;
}

/* ------------------------------------------------------------------------ */
/* Writes                                                                   */
/* ------------------------------------------------------------------------ */

/* The next token (not yet consumed), or KV_ECORRUPT at the end of int64. */
static int peek_token(conn *c, int64_t *t, char **msg)
{
    if (c->tok == INT64_MAX)
        return sqlite__fail_msg(KV_ECORRUPT, msg,
                                "sqlite: the token counter reached INT64_MAX");
    *t = c->tok + 1;
    return KV_OK;
}

/* Step a write statement to DONE; *changed = one row changed. */
static int step_write(conn *c, sqlite3_stmt *st, bool *changed, char **msg)
{
    int src = sqlite3_step(st);
    int rc = KV_OK;
    if (src == SQLITE_DONE)
        *changed = sqlite3_changes(c->db) == 1;
    else
        rc = sqlite__db_fail(c->db, src, "write", msg);
    (void)sqlite3_reset(st); /* repeats the step's error, handled */
    return rc;
}

/* PUT / PUT_ATOMIC.  *rollback is set when an atomic batch conflicts. */
static int do_put(conn *c, kv__req *q, bool atomic, bool *rollback, char **msg)
{
    sqlite3_stmt *ins, *upd, *ups;
    int rc = prep(c, ST_INSERT, &ins, msg);
    if (rc == KV_OK)
        rc = prep(c, ST_UPDATE, &upd, msg);
    if (rc == KV_OK)
        rc = prep(c, ST_UPSERT, &ups, msg);
    int64_t *newtok = NULL;
    if (rc == KV_OK && atomic && q->n > 0 &&
        (newtok = kv__calloc(q->n, sizeof *newtok)) == NULL)
        rc = KV_ENOMEM;
    size_t nconf = 0;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        int64_t t = 0;
        bool ok = false;
        rc = encode(&c->kb, it->key);
        if (rc == KV_OK)
            rc = peek_token(c, &t, msg);
        if (rc != KV_OK)
            break;
        sqlite3_stmt *st = it->any ? ups : it->token == 0 ? ins : upd;
        int src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = bind_blob(st, 2, it->val, it->len);
        if (src == SQLITE_OK)
            src = sqlite3_bind_int64(st, 3, t);
        /* > INT64_MAX never matches: tokens are below 2^63 */
        if (src == SQLITE_OK && st == upd)
            src = sqlite3_bind_int64(st, 4, (sqlite3_int64)it->token);
        if (src != SQLITE_OK) {
            rc = sqlite__db_fail(c->db, src, "bind", msg);
            break;
        }
        rc = step_write(c, st, &ok, msg);
        if (rc != KV_OK)
            break;
        if (ok) {
            c->tok = t;
            it->status = KV_OK;
            if (atomic)
                newtok[i] = t;
            else
                it->token = (uint64_t)t;
        } else {
            it->status = KV_ECONFLICT;
            nconf++;
        }
    }
    if (rc == KV_OK && atomic) {
        if (nconf > 0)
            *rollback = true; /* conflicting items say so; others unchanged */
        else
            for (size_t i = 0; i < q->n; i++)
                q->items[i].token = (uint64_t)newtok[i];
    }
    kv__free(newtok);
    return rc;
}

/* DELETE / DELETE_ATOMIC. */
static int do_delete(conn *c, kv__req *q, bool atomic, bool *rollback,
                     char **msg)
{
    sqlite3_stmt *cas, *any;
    int rc = prep(c, ST_DELETE, &cas, msg);
    if (rc == KV_OK)
        rc = prep(c, ST_DELETE_ANY, &any, msg);
    size_t nconf = 0;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        sqlite3_stmt *st = it->any ? any : cas;
        bool ok = false;
        if (it->token != 0) {
            rc = encode(&c->kb, it->key);
            if (rc != KV_OK)
                break;
            int src = bind_blob(st, 1, c->kb.data, c->kb.len);
            if (src == SQLITE_OK && !it->any)
                src = sqlite3_bind_int64(st, 2, (sqlite3_int64)it->token);
            if (src != SQLITE_OK) {
                rc = sqlite__db_fail(c->db, src, "bind", msg);
                break;
            }
            rc = step_write(c, st, &ok, msg);
            if (rc != KV_OK)
                break;
        }
        /* An unconditional delete that found nothing is no conflict. */
        it->status = ok ? KV_OK : it->any ? KV_ENOTFOUND : KV_ECONFLICT;
        if (!ok && !it->any)
            nconf++;
    }
    if (rc == KV_OK && atomic && nconf > 0)
        *rollback = true;
    return rc;
}

/* DROP: delete each key's range. */
static int do_drop(conn *c, kv__req *q, char **msg)
{
    int rc = KV_OK;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        kv__item *it = &q->items[i];
        sqlite3_stmt *st;
        rc = encode(&c->kb, it->key);
        if (rc == KV_OK)
            rc = range_hi(&c->kb, &c->kb2);
        if (rc == KV_OK)
            rc = prep(c, c->kb.len > 0 ? ST_DROP_RANGE : ST_DROP_ALL, &st,
                      msg);
        if (rc != KV_OK)
            break;
        int src = SQLITE_OK;
        if (c->kb.len > 0) {
            src = bind_blob(st, 1, c->kb.data, c->kb.len);
            if (src == SQLITE_OK)
                src = bind_blob(st, 2, c->kb2.data, c->kb2.len);
        }
        if (src != SQLITE_OK) {
            rc = sqlite__db_fail(c->db, src, "bind", msg);
            break;
        }
        rc = step_done(c->db, st, "drop", msg);
        if (rc == KV_OK)
            it->status = KV_OK;
    }
    return rc;
}

/* The rows a MOVE renames: rowid and destination key. */
typedef struct moveset {
    int64_t *ids;
    size_t *off;  /* dst of row k: dst.data[off[k] .. off[k + 1]) */
    size_t n, cap;
    kv_buf dst;
} moveset;

static int moveset_add(moveset *m, int64_t id, const kv_buf *to,
                       const unsigned char *rest, size_t nrest)
{
    if (m->n + 1 >= m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        int64_t *ids = kv__realloc(m->ids, cap * sizeof *ids);
        if (ids == NULL)
            return KV_ENOMEM;
        m->ids = ids;
        size_t *off = kv__realloc(m->off, cap * sizeof *off);
        if (off == NULL)
            return KV_ENOMEM;
        m->off = off;
        m->cap = cap;
        if (m->n == 0)
            m->off[0] = 0;
    }
    int rc = kv_buf_append(&m->dst, to->data, to->len);
    if (rc == KV_OK && nrest > 0)
        rc = kv_buf_append(&m->dst, rest, nrest);
    if (rc != KV_OK)
        return rc;
    m->ids[m->n++] = id;
    m->off[m->n] = m->dst.len;
    return KV_OK;
}

/* Collect the rows below from (encoded in c->kb) with their new keys. */
static int move_collect(conn *c, moveset *m, const kv_buf *to, char **msg)
{
    sqlite3_stmt *st;
    bool all = c->kb.len == 0;
    int rc = range_hi(&c->kb, &c->kb2);
    if (rc == KV_OK)
        rc = prep(c, all ? ST_MOVE_SEL_ALL : ST_MOVE_SEL, &st, msg);
    if (rc != KV_OK)
        return rc;
    int src = SQLITE_OK;
    if (!all) {
        src = bind_blob(st, 1, c->kb.data, c->kb.len);
        if (src == SQLITE_OK)
            src = bind_blob(st, 2, c->kb2.data, c->kb2.len);
    }
    while (src == SQLITE_OK || src == SQLITE_ROW) {
        src = sqlite3_step(st);
        if (src != SQLITE_ROW)
            break;
        const unsigned char *k = sqlite3_column_blob(st, 1);
        int kn = sqlite3_column_bytes(st, 1);
        if (sqlite3_column_type(st, 1) != SQLITE_BLOB || kn <= 0 ||
            k == NULL || (size_t)kn < c->kb.len ||
            (c->kb.len > 0 && memcmp(k, c->kb.data, c->kb.len) != 0)) {
            rc = sqlite__fail_msg(KV_ECORRUPT, msg,
                                  "sqlite: stored key is malformed");
            break;
        }
        rc = moveset_add(m, sqlite3_column_int64(st, 0), to,
                         k + c->kb.len, (size_t)kn - c->kb.len);
        if (rc != KV_OK)
            break;
    }
    if (rc == KV_OK && src != SQLITE_DONE)
        rc = sqlite__db_fail(c->db, src, "move", msg);
    (void)sqlite3_reset(st); /* repeats the step's error, handled */
    return rc;
}

/*
 * MOVE: rename every key below items[i].key to lie below items[i].key2.
 * All sources are collected first; then every moved row gets a placeholder
 * key (0x00 + rowid: a valid encoding never starts with 0x00), so rows that
 * move onto each other's old keys never collide; then each gets its
 * destination and a fresh token.  A UNIQUE failure there means a destination
 * exists that is not being moved away (or two rows land on one key): the
 * request fails KV_ECONFLICT and its savepoint is rolled back.
 */
static int do_move(conn *c, sreq *r, bool *rollback, char **msg)
{
    kv__req *q = r->req;
    moveset m;
    memset(&m, 0, sizeof m);
    kv_buf *from = kv__calloc(q->n ? q->n : 1, sizeof *from);
    kv_buf to;
    memset(&to, 0, sizeof to);
    int rc = from != NULL ? KV_OK : KV_ENOMEM;
    for (size_t i = 0; rc == KV_OK && i < q->n; i++)
        rc = encode(&from[i], q->items[i].key);
    /* Overlapping sources would move one row twice. */
    for (size_t i = 0; rc == KV_OK && i < q->n; i++)
        for (size_t j = 0; rc == KV_OK && j < q->n; j++)
            if (i != j && from[i].len <= from[j].len &&
                (from[i].len == 0 ||
                 memcmp(from[i].data, from[j].data, from[i].len) == 0))
                rc = sqlite__fail_msg(
                    KV_EINVAL, msg, "move: source %s contains source %s",
                    kv_key_id(q->items[i].key), kv_key_id(q->items[j].key));
    for (size_t i = 0; rc == KV_OK && i < q->n; i++) {
        rc = encode(&to, q->items[i].key2);
        if (rc == KV_OK) {
            c->kb.len = 0;
            rc = kv_buf_append(&c->kb, from[i].data, from[i].len);
        }
        if (rc == KV_OK)
            rc = move_collect(c, &m, &to, msg);
    }
    /* A moved key may not pass a key limit (kvstore.h, "Keys"). */
    for (size_t k = 0; rc == KV_OK && k < m.n && !*rollback; k++) {
        const unsigned char *d = m.dst.data + m.off[k];
        size_t dn = m.off[k + 1] - m.off[k];
        const char *lim = kv__key_enc_limit(d, dn);
        if (lim == NULL)
            continue;
        char *kt = key_text(d, dn);
        r->status = KV_EINVAL;
        kv__free(r->msg);
        r->msg = kv__asprintf("move: the moved key %.200s%s would pass "
                              "%s, a key limit of kvstore.h",
                              kt != NULL ? kt : "?",
                              kt != NULL && strlen(kt) > 200 ? "..." : "",
                              lim);
        kv__free(kt);
        *rollback = true;
    }
    sqlite3_stmt *st1 = NULL, *st2 = NULL;
    if (rc == KV_OK && !*rollback)
        rc = prep(c, ST_SETKEY, &st1, msg);
    if (rc == KV_OK && !*rollback)
        rc = prep(c, ST_SETKEY_TOK, &st2, msg);
    for (size_t k = 0; rc == KV_OK && !*rollback && k < m.n; k++) {
        unsigned char ph[9];
        uint64_t id = (uint64_t)m.ids[k];
        ph[0] = 0;
        for (int b = 0; b < 8; b++)
            ph[1 + b] = (unsigned char)(id >> (56 - 8 * b));
        bool ok = false;
        int src = sqlite3_bind_int64(st1, 1, m.ids[k]);
        if (src == SQLITE_OK)
            src = bind_blob(st1, 2, ph, sizeof ph);
        rc = src == SQLITE_OK ? step_write(c, st1, &ok, msg)
                              : sqlite__db_fail(c->db, src, "bind", msg);
    }
    for (size_t k = 0; rc == KV_OK && !*rollback && k < m.n; k++) {
        int64_t t = 0;
        rc = peek_token(c, &t, msg);
        if (rc != KV_OK)
            break;
        const unsigned char *d = m.dst.data + m.off[k];
        size_t dn = m.off[k + 1] - m.off[k];
        int src = sqlite3_bind_int64(st2, 1, m.ids[k]);
        if (src == SQLITE_OK)
            src = bind_blob(st2, 2, d, dn);
        if (src == SQLITE_OK)
            src = sqlite3_bind_int64(st2, 3, t);
        if (src == SQLITE_OK)
            src = sqlite3_step(st2);
        if (src == SQLITE_DONE) {
            c->tok = t;
        } else if ((src & 0xff) == SQLITE_CONSTRAINT) {
            char *kt = key_text(d, dn);
            r->status = KV_ECONFLICT;
            kv__free(r->msg);
            r->msg = kv__asprintf("move: destination %s already exists",
                                  kt != NULL ? kt : "?");
            kv__free(kt);
            *rollback = true;
            (void)sqlite3_reset(st2); /* the constraint error, handled */
            break;
        } else {
            rc = sqlite__db_fail(c->db, src, "move", msg);
        }
        (void)sqlite3_reset(st2); /* repeats the step's error, handled */
    }
    if (from != NULL)
        for (size_t i = 0; i < q->n; i++)
            kv__free(from[i].data);
    kv__free(from);
    kv__free(to.data);
    kv__free(m.ids);
    kv__free(m.off);
    kv__free(m.dst.data);
    if (rc == KV_OK && !*rollback)
        for (size_t i = 0; i < q->n; i++)
            q->items[i].status = KV_OK;
    return rc;
}

/* One write request, in a savepoint when it has more than one statement. */
static int write_req(conn *c, sreq *r, char **msg)
{
    kv__req *q = r->req;
    bool sp = !((q->op == KV__OP_PUT || q->op == KV__OP_DELETE) && q->n <= 1);
    bool rollback = false;
    int rc = sp ? exec_id(c, ST_SAVEPOINT, msg) : KV_OK;
    if (rc != KV_OK)
        return rc;
    switch (q->op) {
    case KV__OP_PUT:
    case KV__OP_PUT_ATOMIC:
        rc = do_put(c, q, q->op == KV__OP_PUT_ATOMIC, &rollback, msg);
        break;
    case KV__OP_DELETE:
    case KV__OP_DELETE_ATOMIC:
        rc = do_delete(c, q, q->op == KV__OP_DELETE_ATOMIC, &rollback, msg);
        break;
    case KV__OP_MOVE:
        rc = do_move(c, r, &rollback, msg);
        break;
    case KV__OP_DROP:
        rc = do_drop(c, q, msg);
        break;
    default:
        rc = sqlite__fail_msg(KV_EINVAL, msg, "sqlite: not a write (op %d)",
                              (int)q->op);
        break;
    }
    if (!sp || sqlite3_get_autocommit(c->db))
        return rc; /* no savepoint, or the whole transaction is gone */
    if (rc == KV_OK && !rollback)
        return exec_id(c, ST_RELEASE, msg);
    int rb = exec_id(c, ST_ROLLBACK_TO, msg);
    if (rb == KV_OK)
        rb = exec_id(c, ST_RELEASE, msg);
    if (rb != KV_OK) {
        /* The request may be half-applied: abandon the transaction. */
        (void)exec_id(c, ST_ROLLBACK, NULL);
        return rc != KV_OK ? rc : rb;
    }
    return rc;
}

/* BEGIN IMMEDIATE and read the token counter. */
static int tx_begin(conn *c, char **msg)
{
    int rc = exec_id(c, ST_BEGIN_IMM, msg);
    if (rc != KV_OK)
        return rc;
    sqlite3_stmt *st;
    rc = prep(c, ST_TOK_GET, &st, msg);
    if (rc == KV_OK) {
        int src = sqlite3_step(st);
        if (src == SQLITE_ROW) {
            int64_t v = sqlite3_column_int64(st, 0);
            if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || v < 0) {
                rc = sqlite__fail_msg(KV_ECORRUPT, msg,
                                      "sqlite: the token counter is invalid");
            } else if (v != c->tok_max || c->tok > v) {
                /* Not our reservation (first write, another writer, or
                 * a counter changed behind our back): start above it. */
                c->tok = v;
                c->tok_max = v;
            }
        } else if (src == SQLITE_DONE) {
            rc = sqlite__fail_msg(KV_ECORRUPT, msg,
                                  "sqlite: the token counter is missing");
        } else {
            rc = sqlite__db_fail(c->db, src, "token counter", msg);
        }
        (void)sqlite3_reset(st); /* repeats the step's error, handled */
    }
    if (rc != KV_OK && !sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL);
    return rc;
}

/* Store a new token reservation if this transaction went past the last
 * one, and COMMIT; on failure roll back (and forget the new reservation:
 * the next transaction reads the counter again). */
static int tx_commit(conn *c, char **msg)
{
    int rc = KV_OK;
    int64_t max = c->tok_max;
    if (c->tok > c->tok_max) {
        max = c->tok > INT64_MAX - TOKEN_BLOCK ? INT64_MAX
                                               : c->tok + TOKEN_BLOCK;
        sqlite3_stmt *st;
        rc = prep(c, ST_TOK_SET, &st, msg);
        if (rc == KV_OK) {
            int src = sqlite3_bind_int64(st, 1, max);
            rc = src == SQLITE_OK ? step_done(c->db, st, "token counter", msg)
                                  : sqlite__db_fail(c->db, src, "bind", msg);
        }
    }
    if (rc == KV_OK)
        rc = exec_id(c, ST_COMMIT, msg);
    if (rc == KV_OK) {
        c->tok_max = max;
        c->ncommits++;
        return KV_OK;
    }
    c->tok_max = -1;
    if (!sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL);
    return rc;
}

/* Fail every write of the current transaction with rc (it was lost). */
static void tx_lost(conn *c, sreq *upto, int rc, const char *msg)
{
    for (sreq *p = q_first(&c->run); p != NULL && p != upto;
         p = q_next(&c->run, p)) {
        if (!p->in_tx)
            continue;
        p->in_tx = false;
        sreq_fail(p, rc,
                  kv__asprintf("sqlite: transaction rolled back: %s",
                               msg != NULL ? msg : kv_strerror(rc)));
    }
}

/*
 * The writer's WAL hook (worker, after each commit): replaces SQLite's
 * autocheckpoint.  Past s->ck_hard the writer checkpoints (PASSIVE: it
 * never waits for readers) before its next transaction, so the WAL
 * restarts before it reaches s->wal_max.  While a background checkpoint
 * holds the checkpoint lock (SQLITE_BUSY) it waits, 1 ms at a time, up to
 * BUSY_TIMEOUT_MS: the writes wait for the WAL instead of growing it.  A
 * reader's snapshot that the checkpoint cannot pass still lets it grow.
 */
/*
 * Under synchronous=NORMAL commits do not sync the WAL: its pages stay in
 * the page cache until the checkpoint that restarts the WAL syncs them
 * all, ~16 MiB in one fdatasync while every write waits.  Start their
 * writeback as they come instead (sync_file_range waits for nothing).
 * Best effort: on any failure the WAL is synced as before, and nothing
 * about what is durable changes.
 */
static atomic_ulong n_wal_writebacks; /* test hook: writebacks started */

unsigned long kv__sqlite_wal_wb_count(void)
{
    return atomic_load_explicit(&n_wal_writebacks, memory_order_relaxed);
}

static void wal_writeback(sq *s, int pages)
{
    if (pages < s->wal_wb_pages) /* restarted */
        s->wal_wb_pages = 0;
    if (s->wal_wb_off || pages - s->wal_wb_pages < WAL_WRITEBACK_PAGES)
        return;
    s->wal_wb_pages = pages;
#ifdef SYNC_FILE_RANGE_WRITE
    if (s->wal_fd < 0) {
        char *wal = kv__asprintf("%s-wal", s->path);
        if (wal != NULL) {
            do
                s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
            while (s->wal_fd < 0 && errno == EINTR);
            kv__free(wal);
        }
        if (s->wal_fd < 0) {
            s->wal_wb_off = true;
            return;
        }
    }
    int rc;
    do
        rc = sync_file_range(s->wal_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    while (rc != 0 && errno == EINTR);
    if (rc == 0)
        atomic_fetch_add_explicit(&n_wal_writebacks, 1, memory_order_relaxed);
    else
        s->wal_wb_off = true; /* not supported here: stop trying */
#else
    s->wal_wb_off = true;
#endif
}

int sqlite__wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    conn *c = arg;
    c->wal_pages = pages;
    if (c->s->sync[0] == 'N') /* NORMAL */
        wal_writeback(c->s, pages);
    if (pages < c->s->ck_hard)
        return SQLITE_OK;
    for (int waited = 0; waited < BUSY_TIMEOUT_MS; waited++) {
        if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE,
                                      NULL, NULL) != SQLITE_BUSY)
            break;
        (void)sqlite3_sleep(1);
    }
    return SQLITE_OK;
}

/* A background checkpoint (worker): best effort, errors are ignored (the
 * writer's inline checkpoint and close still checkpoint).  s->ck and
 * s->ck_log are the job's while it runs (ck_busy), like a conn's handle. */
void sqlite__ck_work(kv__job *job)
{
    sq *s = KV__CONTAINER_OF(job, sq, ck_job);
    s->ck_log = -1;
    if (s->ck == NULL && (s->ck = sqlite__ck_open(s)) == NULL)
        return;
    int nlog = -1, nckpt = -1;
    if (sqlite3_wal_checkpoint_v2(s->ck, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                  &nlog, &nckpt) != SQLITE_OK)
        return;
    s->ck_log = nckpt;
    /* SQLite syncs the database only in a checkpoint that reaches the end
     * of the WAL: a partial one leaves its pages in the page cache, and
     * the writer's checkpoint that restarts the WAL had to write all of
     * them out (every page of the cycle, 20-40 ms) in its fdatasync while
     * the writes waited.  Writing them out here, off the writer's path,
     * leaves that fdatasync only the pages copied since (docs/PERF.md).
     * Only adds a sync: what is durable and when does not change.  (nlog
     * is this connection's snapshot of the WAL, so nckpt == nlog even
     * when the writer appended meanwhile and SQLite did not sync.) */
    if (nckpt > 0 && strcmp(s->sync, "OFF") != 0) {
        sqlite3_file *f = NULL;
        if (sqlite3_file_control(s->ck, "main", SQLITE_FCNTL_FILE_POINTER,
                                 &f) == SQLITE_OK &&
            f != NULL && f->pMethods != NULL)
            (void)f->pMethods->xSync(f, SQLITE_SYNC_NORMAL); /* best effort,
                                        like the checkpoint */
    }
}

/* ------------------------------------------------------------------------ */
/* The job of a connection                                                  */
/* ------------------------------------------------------------------------ */

void sqlite__conn_work(kv__job *job)
{
    conn *c = KV__CONTAINER_OF(job, conn, job);
    c->ncommits = 0;
    if (c->max_pages > 0 && c->db != NULL) { /* test hook, writer only */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld",
                 (long long)c->max_pages);
        (void)sqlite__exec_sql(c->db, sql, NULL);
    }
    if (c->db == NULL) {
        char *msg = NULL;
        int rc = sqlite__reader_open(c, &msg);
        if (rc != KV_OK) {
            for (sreq *r = q_first(&c->run); r != NULL; r = q_next(&c->run, r))
                sreq_fail(r, rc, dup_msg(msg));
            kv__free(msg);
            return;
        }
    }
    /* A batch of point reads on a reader: one snapshot for all. */
    bool rtx = false;
    if (c->reader) {
        size_t items = 0;
        for (sreq *r = q_first(&c->run); r != NULL; r = q_next(&c->run, r))
            if (r->req->op == KV__OP_HAS || r->req->op == KV__OP_GET)
                items += r->req->n;
        rtx = items > 1 && exec_id(c, ST_BEGIN, NULL) == KV_OK;
    }
    bool wtx = false;
    int begin_rc = KV_OK;
    char *begin_msg = NULL;
    for (sreq *r = q_first(&c->run); r != NULL; r = q_next(&c->run, r)) {
        switch (r->req->op) {
        case KV__OP_HAS:
        case KV__OP_GET:
            run_get(c, r);
            continue;
        case KV__OP_QUERY_OPEN:
            run_open(c, r);
            continue;
        case KV__OP_ITER_FETCH:
            run_fetch(c, r);
            continue;
        case KV__OP_ITER_DISPOSE:
            sqlite__cursor_finish(r->cur);
            continue;
        default:
            break;
        }
        if (begin_rc != KV_OK) {
            sreq_fail(r, begin_rc, dup_msg(begin_msg));
            continue;
        }
        char *msg = NULL;
        if (!wtx) {
            begin_rc = tx_begin(c, &begin_msg);
            if (begin_rc != KV_OK) {
                sreq_fail(r, begin_rc, dup_msg(begin_msg));
                continue;
            }
            wtx = true;
        }
        r->in_tx = true;
        int rc = write_req(c, r, &msg);
        if (rc != KV_OK) {
            if (sqlite3_get_autocommit(c->db)) {
                /* SQLite rolled the whole transaction back. */
                tx_lost(c, r, rc, msg);
                wtx = false;
            }
            r->in_tx = false;
            sreq_fail(r, rc, msg);
        }
    }
    kv__free(begin_msg);
    if (wtx) {
        char *msg = NULL;
        int rc = tx_commit(c, &msg);
        if (rc != KV_OK)
            tx_lost(c, NULL, rc, msg);
        kv__free(msg);
        for (sreq *r = q_first(&c->run); r != NULL; r = q_next(&c->run, r))
            r->in_tx = false;
        /* Best effort, like the background checkpoint: a failure or a busy
         * reader just leaves the WAL to the usual thresholds. */
        if (rc == KV_OK && c->ck_finish)
            (void)sqlite3_wal_checkpoint_v2(c->db, NULL,
                                            SQLITE_CHECKPOINT_PASSIVE, NULL,
                                            NULL);
    }
    if (rtx && exec_id(c, ST_COMMIT, NULL) != KV_OK &&
        !sqlite3_get_autocommit(c->db))
        (void)exec_id(c, ST_ROLLBACK, NULL); /* a read: nothing to lose */
}
