/*
 * backend/sqlite/sqlite_conn.c - SQLite connections: opening and
 * configuring them (the store's first one on kv_sqlite_open's thread,
 * readers and the checkpointer on a worker in their first job), the cached
 * statements' slow path, closing them all, and SQLite's errors as kvstore
 * codes and messages.
 */
#include "config.h"

#include "backend/sqlite/sqlite_int.h"
#include "util/time.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The writer's page cache (KiB; SQLite's default is 2 MiB, kept by readers):
 * random puts miss pages with the default (docs/DESIGN.md). */
#define WRITER_CACHE_KIB 16384

/* PRAGMA mmap_size of a connection on the MAP VFS: as large as SQLite
 * allows (it lowers it to its SQLITE_MAX_MMAP_SIZE, 2 GiB on Linux). */
#define MAP_PRAGMA_SIZE "68719476736"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Map an SQLite result code to a kvstore code. */
static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return KV_OK;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return KV_ECORRUPT;
    case SQLITE_NOMEM:
        return KV_ENOMEM;
    case SQLITE_READONLY:
        return KV_EREADONLY;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return KV_EBUSY;
    default:
        return KV_EBACKEND;
    }
}

/*
 * An SQLite call on db failed with rc: keep the first message of the
 * operation in *msg ("sqlite: what: errmsg") and return the kvstore code.
 * Call it before sqlite3_reset, which may change the connection's message.
 */
int sqlite__db_fail(sqlite3 *db, int rc, const char *what, char **msg)
{
    if (msg != NULL && *msg == NULL)
        *msg = kv__asprintf("sqlite: %s: %s", what,
                            db != NULL ? sqlite3_errmsg(db)
                                       : sqlite3_errstr(rc));
    return map_rc(rc);
}

/* A non-SQLite failure with a message (first one wins). */
int sqlite__fail_msg(int code, char **msg, const char *fmt, ...)
{
    if (msg != NULL && *msg == NULL) {
        va_list ap;
        va_start(ap, fmt);
        *msg = kv__vasprintf(fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Run one-off SQL (open and close time). */
int sqlite__exec_sql(sqlite3 *db, const char *sql, char **msg)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        if (msg != NULL && *msg == NULL)
            *msg = kv__asprintf("sqlite: %s: %s", sql,
                                err != NULL ? err : sqlite3_errstr(rc));
        sqlite3_free(err);
        return map_rc(rc);
    }
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Opening connections                                                      */
/* ------------------------------------------------------------------------ */

/* Open path with flags, busy timeout and extended codes, on the VFS named
 * vfs (NULL: the default one).  Any thread. */
static int db_open_vfs(sqlite3 **out, const char *path, int flags,
                       const char *vfs, char **msg)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db,
                             flags | SQLITE_OPEN_NOMUTEX |
                                 SQLITE_OPEN_PRIVATECACHE,
                             vfs);
    if (rc == SQLITE_OK)
        rc = sqlite3_extended_result_codes(db, 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        int code = sqlite__db_fail(db, rc, path, msg);
        if (db == NULL && code == KV_EBACKEND)
            code = KV_ENOMEM; /* open_v2 leaves db NULL only on OOM */
        if (db != NULL && sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db); /* no statements: cannot happen */
        return code;
    }
    *out = db;
    return KV_OK;
}

/* The VFS of s's connections: the kvstore VFS reading the file's map
 * unless KV_SQLITE_NO_MAP (or unless it cannot: *mapped says); the writer
 * of a durable file store also gathers each commit's WAL frames into one
 * write (sqlite_vfs.c: safe with synchronous=FULL only).  NULL: the
 * default VFS. */
static const char *vfs_of(const sq *s, bool writer, bool *mapped)
{
    unsigned feat = s->map ? KV__VFS_MAP : 0;
    if (writer && !s->memory && !s->readonly && strcmp(s->sync, "FULL") == 0)
        feat |= KV__VFS_WALBUF;
    const char *name = feat != 0 ? kv__sqlite_vfs(feat) : NULL;
    if (name == NULL && (feat & KV__VFS_MAP)) {
        feat &= ~KV__VFS_MAP;
        name = feat != 0 ? kv__sqlite_vfs(feat) : NULL;
    }
    *mapped = name != NULL && (feat & KV__VFS_MAP);
    return name;
}

/*
 * Open a connection of s: on its VFS (vfs_of), and, when that reads the
 * map, with SQLite's memory-mapped I/O on, so that SQLite reads pages in
 * place in it (pages past SQLite's size limit are read with pread).
 */
static int conn_open(const sq *s, sqlite3 **out, int flags, bool writer,
                     char **msg)
{
    bool mapped;
    const char *vfs = vfs_of(s, writer, &mapped);
    int rc = db_open_vfs(out, s->path, flags, vfs, msg);
    if (rc == KV_OK && mapped) {
        rc = sqlite__exec_sql(*out, "PRAGMA mmap_size=" MAP_PRAGMA_SIZE, msg);
        if (rc != KV_OK) {
            if (sqlite3_close(*out) != SQLITE_OK)
                (void)sqlite3_close_v2(*out);
            *out = NULL;
        }
    }
    return rc;
}

/* A reader's first job opens it (worker). */
int sqlite__reader_open(conn *c, char **msg)
{
    return conn_open(c->s, &c->db, SQLITE_OPEN_READONLY, false, msg);
}

/*
 * Read the database header: a file that is not a database is KV_EBACKEND
 * with SQLite's message (as kvstore.h documents for kv_sqlite_open), not
 * the KV_ECORRUPT that SQLITE_NOTADB means for a store already open.
 */
static int probe_header(sqlite3 *db, const char *path, char **msg)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, "PRAGMA schema_version", -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    int rc = KV_OK;
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = sqlite__db_fail(db, src, path, msg);
        if ((src & 0xff) == SQLITE_NOTADB)
            rc = KV_EBACKEND;
    }
    (void)sqlite3_finalize(st); /* repeats the step's error, handled */
    return rc;
}

/* The value of the environment variable name, or NULL if unset or empty. */
static const char *env_value(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Parse v as a decimal count (with units: or a K, M or G suffix, powers of
 * 1024) into *out: false if it is not one (a sign, anything after it, or
 * too large). */
static bool parse_count(const char *v, bool units, unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    unsigned shift = 0;
    if (units && end != v) {
        if (*end == 'k' || *end == 'K')
            shift = 10;
        else if (*end == 'm' || *end == 'M')
            shift = 20;
        else if (*end == 'g' || *end == 'G')
            shift = 30;
    }
    if (shift != 0)
        end++;
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-' ||
        n > ULLONG_MAX >> shift)
        return false;
    *out = n << shift;
    return true;
}

/* n in buf: with units, in the largest of G, M or K (powers of 1024) that
 * divides it, as parse_count reads it back. */
static void fmt_count(char *buf, size_t size, unsigned long long n,
                      bool units)
{
    static const char suffix[] = "KMG";
    int u = -1;
    while (units && u < 2 && n >= 1024 && n % 1024 == 0) {
        n /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, size, "%llu", n);
    else
        snprintf(buf, size, "%llu%c", n, suffix[u]);
}

/* *out: the count in the environment variable name if it is set, else
 * left as it is; KV_EINVAL if it is not one from min to max, the message
 * naming what it must be (what: "a size", "a number of pages"). */
static int env_count(const char *name, bool units, unsigned long long min,
                     unsigned long long max, const char *what,
                     unsigned long long *out, char **msg)
{
    const char *v = env_value(name);
    unsigned long long n = 0;
    if (v == NULL)
        return KV_OK;
    if (!parse_count(v, units, &n) || n < min || n > max) {
        char lo[32], hi[32];
        fmt_count(lo, sizeof lo, min, units);
        fmt_count(hi, sizeof hi, max, units);
        return sqlite__fail_msg(KV_EINVAL, msg,
                                "sqlite: %s=\"%.32s\" is not %s from %s to "
                                "%s%s",
                                name, v, what, lo, hi,
                                units ? " (bytes, or with K, M or G)" : "");
    }
    *out = n;
    return KV_OK;
}

int sqlite__env_tunables(sq *s, char **msg)
{
    bool normal = strcmp(s->sync, "NORMAL") == 0;
    unsigned long long wal = normal ? WAL_MAX_NORMAL : WAL_MAX_DEFAULT;
    unsigned long long ck = CKPT_PAGES;
    int rc = env_count(WAL_MAX_ENV, true, WAL_MAX_MIN, WAL_MAX_MAX, "a size",
                       &wal, msg);
    if (rc == KV_OK)
        rc = env_count(CKPT_PAGES_ENV, false, CKPT_PAGES_MIN, CKPT_PAGES_MAX,
                       "a number of pages", &ck, msg);
    s->wal_max = (int64_t)wal;
    s->ckpt_pages = (int)ck;
    s->restart_ns = normal ? (uint64_t)RESTART_MS * 1000000u : 0;
    return rc;
}

void sqlite__restart_rule(sq *s, uint64_t ns)
{
    s->restart_ns = ns;
    s->ck_restart = ns > 0 ? s->ck_hard / 2 : s->ck_pages;
    s->ck_late = s->ck_restart + (s->ck_hard - s->ck_restart) / 2;
}

/*
 * Bound the WAL of s's writer db to s->wal_max bytes: frames of page_size
 * + 24 bytes after a 32-byte header.  The writer checkpoints inline once
 * the WAL holds ck_hard pages, leaving room for one group commit (an
 * eighth of the bound, at most 1024 pages) before the bound; background
 * checkpoints start every s->ckpt_pages new pages, or at half of ck_hard
 * if that is less.  With s->restart_ns the WAL restarts by time below half
 * of ck_hard, else as soon as it can.  journal_size_limit makes the WAL's
 * restart truncate the file back to the bound after a larger transaction.
 */
static int wal_bound(sq *s, sqlite3 *db, char **msg)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL);
    int page = 0;
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        page = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    (void)sqlite3_finalize(st); /* its error is handled below */
    if (rc != SQLITE_OK)
        return sqlite__db_fail(db, rc, s->path, msg);
    if (page < 512)
        page = 512;
    int64_t frames = (s->wal_max - 32) / (page + 24);
    int64_t room = frames / 8 < 1024 ? frames / 8 : 1024;
    int64_t hard = frames - room;
    if (hard > INT32_MAX / 2)
        hard = INT32_MAX / 2;
    s->ck_hard = hard < 8 ? 8 : (int)hard;
    s->ck_pages = s->ck_hard / 2 < s->ckpt_pages ? s->ck_hard / 2
                                                 : s->ckpt_pages;
    s->ck_min_pages = s->ck_hard / 8 < CKPT_MIN_PAGES ? s->ck_hard / 8
                                                        : CKPT_MIN_PAGES;
    sqlite__restart_rule(s, s->restart_ns);
    s->ck_cycle_ns = kv__now_ns();
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit=%lld",
             (long long)s->wal_max);
    return sqlite__exec_sql(db, sql, msg);
}

/* Open the first connection of a store (the caller's thread). */
int sqlite__primary_open(sq *s, sqlite3 **out, char **msg)
{
    int flags = s->readonly ? SQLITE_OPEN_READONLY
                            : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    if (s->readonly) {
        struct stat stb;
        if (stat(s->path, &stb) != 0 && errno == ENOENT)
            return sqlite__fail_msg(
                KV_EREADONLY, msg,
                "sqlite: %s: no such database, and a read-only "
                "store cannot create one",
                s->path);
    }
    sqlite3 *db = NULL;
    int rc = conn_open(s, &db, flags, true, msg);
    if (rc != KV_OK)
        return rc;
    rc = probe_header(db, s->path, msg);
    if (rc == KV_OK && !s->memory && !s->readonly) {
        sqlite3_stmt *st = NULL;
        int src = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st,
                                     NULL);
        /*
         * Switching a new database to WAL reads, then writes: if another
         * connection (another process opening the same new file) does the
         * same, SQLite answers SQLITE_BUSY at once instead of calling the
         * busy handler (a reader waiting to write could deadlock).  Retry
         * for as long as the busy timeout would have waited.
         */
        for (int waited = 0; src == SQLITE_OK; waited += 2) {
            src = sqlite3_step(st);
            if ((src & 0xff) != SQLITE_BUSY || waited >= BUSY_TIMEOUT_MS)
                break;
            (void)sqlite3_reset(st);
            sqlite3_sleep(2);
            src = SQLITE_OK;
        }
        if (src == SQLITE_ROW) {
            const unsigned char *m = sqlite3_column_text(st, 0);
            if (m == NULL || strcmp((const char *)m, "wal") != 0)
                rc = sqlite__fail_msg(
                    KV_EBACKEND, msg,
                    "sqlite: %s: cannot use WAL mode (journal "
                    "mode is %s)",
                    s->path, m != NULL ? (const char *)m : "?");
        } else {
            rc = sqlite__db_fail(db, src, s->path, msg);
        }
        (void)sqlite3_finalize(st); /* its error is handled above */
        if (rc == KV_OK) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", s->sync);
            rc = sqlite__exec_sql(db, sql, msg);
        }
        if (rc == KV_OK) {
            char sql[64];
            snprintf(sql, sizeof sql, "PRAGMA cache_size=-%d",
                     WRITER_CACHE_KIB);
            rc = sqlite__exec_sql(db, sql, msg);
        }
        if (rc == KV_OK)
            rc = wal_bound(s, db, msg);
    }
    if (rc == KV_OK && !s->readonly)
        rc = sqlite__schema_create(db, s->path, msg);
    if (rc == KV_OK)
        rc = sqlite__schema_check(db, s->path, msg);
    if (rc != KV_OK) {
        if (sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db);
        return rc;
    }
    *out = db;
    return KV_OK;
}

sqlite3 *sqlite__ck_open(const sq *s)
{
    sqlite3 *db = NULL;
    if (conn_open(s, &db, SQLITE_OPEN_READWRITE, false, NULL) != KV_OK)
        return NULL;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", s->sync);
    /* schema_version reads the header: the connection opens the WAL.
     * NO_CKPT_ON_CLOSE: its close must not try the exclusive lock (the
     * writer's close checkpoints). */
    if (sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1,
                          (int *)NULL) != SQLITE_OK ||
        sqlite__exec_sql(db, sql, NULL) != KV_OK ||
        sqlite__exec_sql(db, "PRAGMA schema_version", NULL) != KV_OK) {
        if (sqlite3_close(db) != SQLITE_OK)
            (void)sqlite3_close_v2(db);
        return NULL;
    }
    return db;
}

conn *sqlite__conn_new(sq *s, bool reader)
{
    conn *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->s = s;
    c->reader = reader;
    q_init(&c->wait);
    q_init(&c->run);
    c->next = s->conns;
    s->conns = c;
    s->stats.connections++;
    return c;
}

/* ------------------------------------------------------------------------ */
/* Statements and closing                                                   */
/* ------------------------------------------------------------------------ */

int sqlite__prepare(conn *c, int id, char **msg)
{
    int rc = sqlite3_prepare_v3(c->db, sqlite__sql[id], -1,
                                SQLITE_PREPARE_PERSISTENT, &c->st[id], NULL);
    if (rc != SQLITE_OK) {
        c->st[id] = NULL;
        return sqlite__db_fail(c->db, rc, sqlite__sql[id], msg);
    }
    return KV_OK;
}

void sqlite__close_conns(sq *s)
{
    if (s->ck != NULL) { /* before the writer: its close checkpoints last */
        if (sqlite3_close(s->ck) != SQLITE_OK)
            (void)sqlite3_close_v2(s->ck); /* no statements: cannot happen */
        s->ck = NULL;
    }
    for (conn *c = s->conns; c != NULL; c = c->next) {
        for (int i = 0; i < ST_COUNT; i++) {
            if (c->st[i] == NULL)
                continue;
            /* finalize returns the statement's last error, reported then */
            (void)sqlite3_finalize(c->st[i]);
            c->st[i] = NULL;
        }
        if (c->db == NULL)
            continue;
        int rc = sqlite3_close(c->db);
        if (rc != SQLITE_OK) {
            if (s->close_status == KV_OK)
                s->close_status =
                    sqlite__db_fail(c->db, rc, "close", &s->close_msg);
            (void)sqlite3_close_v2(c->db); /* freed once unused */
        }
        c->db = NULL;
    }
}
