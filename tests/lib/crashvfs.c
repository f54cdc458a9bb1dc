/*
 * crashvfs.c - an SQLite VFS that keeps a record of unsynced writes and, at
 * a crash, rewrites each file as a power loss may leave it.  The model and
 * its limits: crashvfs.h and docs/RELIABILITY.md ("Power loss").
 */
#include "config.h"

#include "crashvfs.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTOR 512u

typedef struct cv_op {
    sqlite3_int64 off;   /* write: offset; truncate: the new size */
    size_t len;          /* write: bytes (0: a truncate)          */
    unsigned char *data; /* write: a copy of the bytes            */
} cv_op;

/* One file by name: its durable content and what came after. */
typedef struct cv_node {
    struct cv_node *next;
    char *path;
    unsigned char *dur; /* the content the last xSync made durable */
    size_t dlen, dcap;
    cv_op *ops;         /* writes and truncates since, in order */
    size_t nops, capops;
    bool deleted;
} cv_node;

typedef struct cv_file {
    sqlite3_file base;
    sqlite3_file *real; /* the real VFS's file, after this struct */
    cv_node *node;      /* NULL: not recorded (temporary files) */
} cv_file;

#define CVFILE_SIZE                                                            \
    ((sizeof(cv_file) + _Alignof(max_align_t) - 1) &                          \
     ~(size_t)(_Alignof(max_align_t) - 1))

static sqlite3_vfs *real_vfs;
static sqlite3_vfs crash_vfs;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static cv_node *nodes;
static bool recording, crashed, ignore_sync;
static unsigned long events, crash_at;
static unsigned long synced_writes, db_writes;

/* ------------------------------------------------------------------------ */
/* Records (under mu)                                                       */
/* ------------------------------------------------------------------------ */

static void node_free(cv_node *n)
{
    for (size_t i = 0; i < n->nops; i++)
        free(n->ops[i].data);
    free(n->ops);
    free(n->dur);
    free(n->path);
    free(n);
}

static void nodes_free(void)
{
    while (nodes != NULL) {
        cv_node *n = nodes;
        nodes = n->next;
        node_free(n);
    }
}

static cv_node *node_find(const char *path)
{
    for (cv_node *n = nodes; n != NULL; n = n->next)
        if (strcmp(n->path, path) == 0)
            return n;
    return NULL;
}

/* Make room for len bytes in buf (*cap updated): 0 or -1. */
static int room(unsigned char **buf, size_t *cap, size_t len)
{
    if (len <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < len)
        nc *= 2;
    unsigned char *p = realloc(*buf, nc);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = nc;
    return 0;
}

/* Apply a write or truncate to an image of *len bytes. */
static int apply(unsigned char **buf, size_t *len, size_t *cap,
                 const cv_op *op, const unsigned char *mask)
{
    if (op->len == 0) { /* truncate (or extend with zeros) */
        size_t sz = (size_t)op->off;
        if (room(buf, cap, sz) != 0)
            return -1;
        if (sz > *len)
            memset(*buf + *len, 0, sz - *len);
        *len = sz;
        return 0;
    }
    size_t off = (size_t)op->off, end = off + op->len;
    if (room(buf, cap, end) != 0)
        return -1;
    if (off > *len)
        memset(*buf + *len, 0, off - *len);
    for (size_t p = off; p < end;) {
        /* sectors are aligned to the file, not to the write */
        size_t s = p / SECTOR, send = (s + 1) * SECTOR;
        if (send > end)
            send = end;
        if (mask == NULL || mask[s - off / SECTOR]) {
            memcpy(*buf + p, op->data + (p - off), send - p);
            if (send > *len)
                *len = send;
        } else if (send > *len) {
            /* a dropped sector past the end: the file may still be that
             * long (a later sector was kept); zeros until then */
            memset(*buf + p, 0, send - p);
        }
        p = send;
    }
    return 0;
}

static cv_node *node_new(const char *path, sqlite3_file *real)
{
    cv_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->path = strdup(path);
    if (n->path == NULL) {
        free(n);
        return NULL;
    }
    /* What is there already was there before the run: durable. */
    sqlite3_int64 sz = 0;
    if (real->pMethods->xFileSize(real, &sz) != SQLITE_OK || sz < 0 ||
        room(&n->dur, &n->dcap, (size_t)sz) != 0 ||
        (sz > 0 && real->pMethods->xRead(real, n->dur, (int)sz, 0) !=
                       SQLITE_OK)) {
        node_free(n);
        return NULL;
    }
    n->dlen = (size_t)sz;
    n->next = nodes;
    nodes = n;
    return n;
}

/* Append op to nd's records: 0 or -1 (no memory). */
static int push_op(cv_node *nd, const cv_op *op)
{
    if (nd->nops == nd->capops) {
        size_t nc = nd->capops ? nd->capops * 2 : 16;
        cv_op *p = realloc(nd->ops, nc * sizeof *p);
        if (p == NULL)
            return -1;
        nd->ops = p;
        nd->capops = nc;
    }
    nd->ops[nd->nops++] = *op;
    return 0;
}

/* Count an event; true if it is (or comes after) the crash. */
static bool event_crashes(void)
{
    if (crashed)
        return true;
    events++;
    if (crash_at != 0 && events >= crash_at) {
        crashed = true;
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* I/O methods                                                              */
/* ------------------------------------------------------------------------ */

static sqlite3_file *R(sqlite3_file *f)
{
    return ((cv_file *)f)->real;
}

static int cv_close(sqlite3_file *f)
{
    return R(f)->pMethods->xClose(R(f));
}

static int cv_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    return R(f)->pMethods->xRead(R(f), p, n, off);
}

static int cv_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    cv_file *c = (cv_file *)f;
    if (c->node != NULL) {
        pthread_mutex_lock(&mu);
        if (recording) {
            if (event_crashes()) {
                pthread_mutex_unlock(&mu);
                return SQLITE_IOERR_WRITE;
            }
            cv_op op = {off, (size_t)n, malloc(n > 0 ? (size_t)n : 1)};
            if (op.data == NULL || push_op(c->node, &op) != 0) {
                free(op.data);
                pthread_mutex_unlock(&mu);
                return SQLITE_IOERR_NOMEM;
            }
            memcpy(op.data, p, (size_t)n);
            size_t pl = strlen(c->node->path);
            db_writes += pl < 4 || strcmp(c->node->path + pl - 4, "-wal") != 0;
        }
        pthread_mutex_unlock(&mu);
    }
    return R(f)->pMethods->xWrite(R(f), p, n, off);
}

static int cv_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    cv_file *c = (cv_file *)f;
    if (c->node != NULL) {
        pthread_mutex_lock(&mu);
        if (recording) {
            if (event_crashes()) {
                pthread_mutex_unlock(&mu);
                return SQLITE_IOERR_TRUNCATE;
            }
            cv_op op = {size, 0, NULL};
            if (push_op(c->node, &op) != 0) {
                pthread_mutex_unlock(&mu);
                return SQLITE_IOERR_NOMEM;
            }
        }
        pthread_mutex_unlock(&mu);
    }
    return R(f)->pMethods->xTruncate(R(f), size);
}

static int cv_sync(sqlite3_file *f, int flags)
{
    cv_file *c = (cv_file *)f;
    if (c->node == NULL)
        return R(f)->pMethods->xSync(R(f), flags);
    pthread_mutex_lock(&mu);
    if (!recording) {
        pthread_mutex_unlock(&mu);
        return R(f)->pMethods->xSync(R(f), flags);
    }
    if (event_crashes()) {
        pthread_mutex_unlock(&mu);
        return SQLITE_IOERR_FSYNC;
    }
    cv_node *nd = c->node;
    int rc = SQLITE_OK;
    if (!ignore_sync) {
        for (size_t i = 0; i < nd->nops; i++) {
            if (apply(&nd->dur, &nd->dlen, &nd->dcap, &nd->ops[i], NULL) !=
                0) {
                rc = SQLITE_IOERR_NOMEM;
                break;
            }
            synced_writes += nd->ops[i].len > 0;
            free(nd->ops[i].data);
        }
        if (rc == SQLITE_OK)
            nd->nops = 0;
    }
    pthread_mutex_unlock(&mu);
    /* No real fsync while recording: the records decide what a crash
     * leaves, and the test runs on tmpfs anyway. */
    return rc;
}

static int cv_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return R(f)->pMethods->xFileSize(R(f), size);
}

static int cv_lock(sqlite3_file *f, int lock)
{
    return R(f)->pMethods->xLock(R(f), lock);
}

static int cv_unlock(sqlite3_file *f, int lock)
{
    return R(f)->pMethods->xUnlock(R(f), lock);
}

static int cv_check_reserved(sqlite3_file *f, int *out)
{
    return R(f)->pMethods->xCheckReservedLock(R(f), out);
}

static int cv_file_control(sqlite3_file *f, int op, void *arg)
{
    return R(f)->pMethods->xFileControl(R(f), op, arg);
}

static int cv_sector_size(sqlite3_file *f)
{
    return R(f)->pMethods->xSectorSize(R(f));
}

static int cv_device_chars(sqlite3_file *f)
{
    return R(f)->pMethods->xDeviceCharacteristics(R(f));
}

static int cv_shm_map(sqlite3_file *f, int pg, int pgsz, int extend,
                      void volatile **pp)
{
    return R(f)->pMethods->xShmMap(R(f), pg, pgsz, extend, pp);
}

static int cv_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return R(f)->pMethods->xShmLock(R(f), offset, n, flags);
}

static void cv_shm_barrier(sqlite3_file *f)
{
    R(f)->pMethods->xShmBarrier(R(f));
}

static int cv_shm_unmap(sqlite3_file *f, int del)
{
    return R(f)->pMethods->xShmUnmap(R(f), del);
}

static int cv_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    *pp = NULL; /* no memory-mapped reads: every read goes through xRead */
    (void)f;
    (void)off;
    (void)n;
    return SQLITE_OK;
}

static int cv_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    (void)f;
    (void)off;
    (void)p;
    return SQLITE_OK;
}

static const sqlite3_io_methods crash_io = {
    3,
    cv_close,
    cv_read,
    cv_write,
    cv_truncate,
    cv_sync,
    cv_file_size,
    cv_lock,
    cv_unlock,
    cv_check_reserved,
    cv_file_control,
    cv_sector_size,
    cv_device_chars,
    cv_shm_map,
    cv_shm_lock,
    cv_shm_barrier,
    cv_shm_unmap,
    cv_fetch,
    cv_unfetch,
};

/* ------------------------------------------------------------------------ */
/* VFS methods: the real VFS's, called with the real VFS (the backend's     */
/* WAL VFS calls these with its own struct, a copy of ours)                 */
/* ------------------------------------------------------------------------ */

static int cv_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
                   int flags, int *out_flags)
{
    (void)vfs;
    cv_file *c = (cv_file *)f;
    memset(c, 0, sizeof *c);
    c->real = (sqlite3_file *)((char *)f + CVFILE_SIZE);
    c->real->pMethods = NULL;
    pthread_mutex_lock(&mu);
    bool rec = recording, dead = crashed;
    pthread_mutex_unlock(&mu);
    if (rec && dead)
        return SQLITE_CANTOPEN;
    int rc = real_vfs->xOpen(real_vfs, name, c->real, flags, out_flags);
    if (c->real->pMethods == NULL)
        return rc; /* SQLite calls xClose only when pMethods is set */
    c->base.pMethods = &crash_io;
    if (rc != SQLITE_OK || name == NULL ||
        (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL |
                  SQLITE_OPEN_MAIN_JOURNAL)) == 0)
        return rc;
    pthread_mutex_lock(&mu);
    if (recording) {
        cv_node *n = node_find(name);
        if (n == NULL || n->deleted) {
            if (n != NULL)
                n->deleted = false; /* made again: empty, durable */
            else
                n = node_new(name, c->real);
        }
        c->node = n;
        if (n == NULL)
            rc = SQLITE_IOERR_NOMEM;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

static int cv_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void)vfs;
    pthread_mutex_lock(&mu);
    if (recording) {
        if (crashed) {
            pthread_mutex_unlock(&mu);
            return SQLITE_IOERR_DELETE;
        }
        cv_node *n = node_find(name);
        if (n != NULL) {
            n->deleted = true;
            for (size_t i = 0; i < n->nops; i++)
                free(n->ops[i].data);
            n->nops = 0;
            n->dlen = 0;
        }
    }
    pthread_mutex_unlock(&mu);
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}

static int cv_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    (void)vfs;
    return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int cv_full_pathname(sqlite3_vfs *vfs, const char *name, int n,
                            char *out)
{
    (void)vfs;
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static void *cv_dlopen(sqlite3_vfs *vfs, const char *name)
{
    (void)vfs;
    return real_vfs->xDlOpen(real_vfs, name);
}

static void cv_dlerror(sqlite3_vfs *vfs, int n, char *out)
{
    (void)vfs;
    real_vfs->xDlError(real_vfs, n, out);
}

static void (*cv_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    (void)vfs;
    return real_vfs->xDlSym(real_vfs, h, sym);
}

static void cv_dlclose(sqlite3_vfs *vfs, void *h)
{
    (void)vfs;
    real_vfs->xDlClose(real_vfs, h);
}

static int cv_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    (void)vfs;
    return real_vfs->xRandomness(real_vfs, n, out);
}

static int cv_sleep(sqlite3_vfs *vfs, int us)
{
    (void)vfs;
    return real_vfs->xSleep(real_vfs, us);
}

static int cv_current_time(sqlite3_vfs *vfs, double *out)
{
    (void)vfs;
    return real_vfs->xCurrentTime(real_vfs, out);
}

static int cv_last_error(sqlite3_vfs *vfs, int n, char *out)
{
    (void)vfs;
    return real_vfs->xGetLastError(real_vfs, n, out);
}

static int cv_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out)
{
    (void)vfs;
    return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

int crashvfs_install(void)
{
    pthread_mutex_lock(&mu);
    int rc = 0;
    if (real_vfs == NULL) {
        sqlite3_vfs *def = sqlite3_vfs_find(NULL);
        if (def == NULL || def->iVersion < 2) {
            rc = -1;
        } else {
            real_vfs = def;
            memset(&crash_vfs, 0, sizeof crash_vfs);
            crash_vfs.iVersion = 2;
            crash_vfs.szOsFile = (int)CVFILE_SIZE + def->szOsFile;
            crash_vfs.mxPathname = def->mxPathname;
            crash_vfs.zName = "crashvfs";
            crash_vfs.xOpen = cv_open;
            crash_vfs.xDelete = cv_delete;
            crash_vfs.xAccess = cv_access;
            crash_vfs.xFullPathname = cv_full_pathname;
            crash_vfs.xDlOpen = cv_dlopen;
            crash_vfs.xDlError = cv_dlerror;
            crash_vfs.xDlSym = cv_dlsym;
            crash_vfs.xDlClose = cv_dlclose;
            crash_vfs.xRandomness = cv_randomness;
            crash_vfs.xSleep = cv_sleep;
            crash_vfs.xCurrentTime = cv_current_time;
            crash_vfs.xGetLastError = cv_last_error;
            crash_vfs.xCurrentTimeInt64 = cv_current_time64;
            if (sqlite3_vfs_register(&crash_vfs, 1) != SQLITE_OK) {
                real_vfs = NULL;
                rc = -1;
            }
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Runs and crashes                                                         */
/* ------------------------------------------------------------------------ */

void crashvfs_begin(unsigned long at, bool ignore)
{
    pthread_mutex_lock(&mu);
    nodes_free();
    events = 0;
    synced_writes = 0;
    db_writes = 0;
    crash_at = at;
    crashed = false;
    ignore_sync = ignore;
    recording = true;
    pthread_mutex_unlock(&mu);
}

void crashvfs_crash_now(void)
{
    pthread_mutex_lock(&mu);
    crashed = true;
    pthread_mutex_unlock(&mu);
}

bool crashvfs_crashed(void)
{
    pthread_mutex_lock(&mu);
    bool c = crashed;
    pthread_mutex_unlock(&mu);
    return c;
}

unsigned long crashvfs_events(void)
{
    pthread_mutex_lock(&mu);
    unsigned long e = events;
    pthread_mutex_unlock(&mu);
    return e;
}

void crashvfs_end(void)
{
    pthread_mutex_lock(&mu);
    recording = false;
    nodes_free();
    pthread_mutex_unlock(&mu);
}

/* splitmix64 */
static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int write_file(const char *path, const unsigned char *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        done += (size_t)w;
    }
    return close(fd);
}

int crashvfs_materialize(uint64_t seed, crashvfs_stats *st)
{
    pthread_mutex_lock(&mu);
    crashed = true;
    crashvfs_stats s = {0};
    s.events = events;
    s.synced_writes = synced_writes;
    s.db_writes = db_writes;
    int rc = 0;
    uint64_t r = seed;
    for (cv_node *n = nodes; rc == 0 && n != NULL; n = n->next) {
        char shm[4200];
        snprintf(shm, sizeof shm, "%s-shm", n->path);
        if (unlink(shm) != 0 && errno != ENOENT)
            rc = -1;
        if (n->deleted) {
            if (unlink(n->path) != 0 && errno != ENOENT)
                rc = -1;
            continue;
        }
        unsigned char *img = NULL;
        size_t len = 0, cap = 0;
        if (room(&img, &cap, n->dlen) != 0) {
            rc = -1;
            break;
        }
        if (n->dlen > 0)
            memcpy(img, n->dur, n->dlen);
        len = n->dlen;
        for (size_t i = 0; rc == 0 && i < n->nops; i++) {
            const cv_op *op = &n->ops[i];
            unsigned choice = (unsigned)(rnd(&r) % 100);
            if (op->len == 0) {
                if (choice < 50) {
                    s.truncs_kept++;
                    rc = apply(&img, &len, &cap, op, NULL);
                } else {
                    s.truncs_dropped++;
                }
                continue;
            }
            if (choice < 45) {
                s.writes_kept++;
                rc = apply(&img, &len, &cap, op, NULL);
            } else if (choice < 80) {
                s.writes_dropped++;
            } else {
                /* torn: each sector it touches kept or not */
                s.writes_torn++;
                size_t first = (size_t)op->off / SECTOR,
                       last = ((size_t)op->off + op->len - 1) / SECTOR;
                unsigned char *mask = malloc(last - first + 1);
                if (mask == NULL) {
                    rc = -1;
                    break;
                }
                for (size_t k = 0; k <= last - first; k++)
                    mask[k] = (unsigned char)(rnd(&r) & 1);
                rc = apply(&img, &len, &cap, op, mask);
                free(mask);
            }
        }
        if (rc == 0)
            rc = write_file(n->path, img, len);
        free(img);
    }
    recording = false;
    nodes_free();
    pthread_mutex_unlock(&mu);
    if (st != NULL) {
        st->events += s.events;
        st->synced_writes += s.synced_writes;
        st->db_writes += s.db_writes;
        st->writes_kept += s.writes_kept;
        st->writes_dropped += s.writes_dropped;
        st->writes_torn += s.writes_torn;
        st->truncs_kept += s.truncs_kept;
        st->truncs_dropped += s.truncs_dropped;
    }
    return rc;
}
