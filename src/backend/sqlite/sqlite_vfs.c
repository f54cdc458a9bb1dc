/*
 * backend/sqlite/sqlite_vfs.c - the kvstore VFS over SQLite's default one,
 * with two features, each chosen by the name a connection opens with:
 * - WALBUF gathers the writes of a WAL file into one write per commit
 *   (SQLite makes two per frame), flushed before any other call on the
 *   file.  Safe with synchronous=FULL only: the writer of a
 *   KV_SQLITE_SYNC_FULL store uses it.  Why and why safe: docs/DESIGN.md,
 *   "backend/sqlite".
 * - MAP keeps the default VFS's memory map of the main database file
 *   (PRAGMA mmap_size) from one read transaction to the next: SQLite asks
 *   for the whole map to be dropped at every read transaction that follows
 *   a write, and remapping (and faulting every page in again) made mapped
 *   reads slower than pread under writes.  The map is dropped only when it
 *   no longer covers the file (a fetch past its end that the size limit
 *   allows).  Never an extra descriptor of the file: closing one would
 *   release the process's POSIX locks on it.
 * Any other file is the default VFS's own.  Threads: a file is used by one
 * connection, on one thread at a time; the counters are atomics for tests.
 */
#include "config.h"

#include "backend/sqlite/sqlite.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN (64u << 10)  /* first allocation of a file's run buffer */
#define BUF_MAX (2u << 20)   /* a run this long is flushed as it grows  */
/* The most the default VFS writes in one call: the unix VFS keeps only the
 * low 17 bits of a write's length (seekAndWrite), since SQLite itself never
 * writes more than a 64 KiB page at a time. */
#define WRITE_MAX (120u << 10)

typedef struct walfile {
    sqlite3_file base;       /* pMethods = &walbuf_io */
    sqlite3_file *real;      /* the default VFS's file, after this struct */
    bool gather;             /* a WAL file whose writes are gathered */
    bool mapped;             /* a main database file whose map is kept */
    bool remap;              /* ...and too small: drop it at the next ask */
    sqlite3_int64 map_max;   /* the size limit SQLite set for the map */
    unsigned char *buf;      /* the run: bytes [off, off + len) */
    size_t len, cap;
    sqlite3_int64 off;
} walfile;

/* Rounded so that the default VFS's file that follows is aligned. */
#define WALFILE_SIZE \
    ((sizeof(walfile) + _Alignof(max_align_t) - 1) & \
     ~(size_t)(_Alignof(max_align_t) - 1))

/* One VFS per non-empty set of features: vfs_tab[features - 1]. */
#define NVFS 3
static sqlite3_vfs vfs_tab[NVFS];
static const char *const vfs_names[NVFS] = {
    "kvstore-walbuf", "kvstore-map", "kvstore-walbuf-map"};
static bool vfs_ok[NVFS];
static sqlite3_vfs *base_vfs;
static pthread_once_t walbuf_once = PTHREAD_ONCE_INIT;

static atomic_ulong n_writes;  /* writes SQLite made to wrapped files */
static atomic_ulong n_flushes; /* writes those became                  */
static atomic_ulong n_fetched; /* pages SQLite read in place in a map   */
static atomic_long fail_nth;   /* test hook: fail the nth flush (0: off) */
static atomic_int fail_rc;

static sqlite3_file *real_of(sqlite3_file *f)
{
    return ((walfile *)f)->real;
}

/* Write the run to the file; the run is empty afterwards either way. */
static int flush(walfile *w)
{
    if (w->len == 0)
        return SQLITE_OK;
    size_t len = w->len;
    w->len = 0;
    atomic_fetch_add_explicit(&n_flushes, 1, memory_order_relaxed);
    long nth = atomic_load_explicit(&fail_nth, memory_order_relaxed);
    if (nth > 0 && atomic_fetch_sub_explicit(&fail_nth, 1,
                                             memory_order_relaxed) == 1)
        return atomic_load_explicit(&fail_rc, memory_order_relaxed);
    int rc = SQLITE_OK;
    for (size_t done = 0; rc == SQLITE_OK && done < len; done += WRITE_MAX) {
        size_t n = len - done < WRITE_MAX ? len - done : WRITE_MAX;
        rc = w->real->pMethods->xWrite(w->real, w->buf + done, (int)n,
                                       w->off + (sqlite3_int64)done);
    }
    return rc;
}

/* Room for need bytes in the run buffer (need <= BUF_MAX). */
static int reserve(walfile *w, size_t need)
{
    if (need <= w->cap)
        return SQLITE_OK;
    size_t cap = w->cap > 0 ? w->cap : BUF_MIN;
    while (cap < need)
        cap *= 2;
    unsigned char *p = kv__realloc(w->buf, cap);
    if (p == NULL)
        return SQLITE_NOMEM;
    w->buf = p;
    w->cap = cap;
    return SQLITE_OK;
}

static int wb_close(sqlite3_file *f)
{
    walfile *w = (walfile *)f;
    int rc = flush(w);
    int crc = w->real->pMethods->xClose(w->real);
    kv__free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    return rc != SQLITE_OK ? rc : crc;
}

static int wb_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    walfile *w = (walfile *)f;
    int rc = flush(w);
    if (rc != SQLITE_OK)
        return rc;
    return w->real->pMethods->xRead(w->real, p, n, off);
}

static int wb_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    walfile *w = (walfile *)f;
    if (!w->gather)
        return w->real->pMethods->xWrite(w->real, p, n, off);
    atomic_fetch_add_explicit(&n_writes, 1, memory_order_relaxed);
    size_t un = n > 0 ? (size_t)n : 0;
    if (w->len > 0 && off >= w->off &&
        (sqlite3_uint64)(off - w->off) + un <= w->len) {
        memcpy(w->buf + (off - w->off), p, un); /* inside the run */
        return SQLITE_OK;
    }
    bool extends = w->len > 0 && off == w->off + (sqlite3_int64)w->len &&
                   w->len + un <= BUF_MAX;
    if (!extends) {
        int rc = flush(w);
        if (rc != SQLITE_OK)
            return rc;
        if (un > WRITE_MAX) /* too big to gather: straight through */
            return w->real->pMethods->xWrite(w->real, p, n, off);
        w->off = off;
    }
    if (reserve(w, w->len + un) != SQLITE_OK) {
        /* No memory for the run: write it and this one directly. */
        int rc = flush(w);
        return rc != SQLITE_OK ? rc
                               : w->real->pMethods->xWrite(w->real, p, n, off);
    }
    memcpy(w->buf + w->len, p, un);
    w->len += un;
    return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    int rc = flush((walfile *)f);
    return rc != SQLITE_OK ? rc
                           : real_of(f)->pMethods->xTruncate(real_of(f), size);
}

static int wb_sync(sqlite3_file *f, int flags)
{
    int rc = flush((walfile *)f);
    return rc != SQLITE_OK ? rc : real_of(f)->pMethods->xSync(real_of(f), flags);
}

static int wb_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    int rc = flush((walfile *)f);
    return rc != SQLITE_OK ? rc
                           : real_of(f)->pMethods->xFileSize(real_of(f), size);
}

static int wb_lock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xLock(real_of(f), lock);
}

static int wb_unlock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xUnlock(real_of(f), lock);
}

static int wb_check_reserved(sqlite3_file *f, int *out)
{
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}

static int wb_file_control(sqlite3_file *f, int op, void *arg)
{
    walfile *w = (walfile *)f;
    int rc = flush(w);
    if (rc != SQLITE_OK)
        return rc;
    if (op == SQLITE_FCNTL_MMAP_SIZE && w->mapped && arg != NULL &&
        *(sqlite3_int64 *)arg >= 0)
        w->map_max = *(sqlite3_int64 *)arg; /* the new limit, in */
    return w->real->pMethods->xFileControl(w->real, op, arg);
}

static int wb_sector_size(sqlite3_file *f)
{
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}

static int wb_device_chars(sqlite3_file *f)
{
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}

/* Shared memory belongs to the database file, not the WAL: forwarded for
 * completeness, refused when the default VFS's file lacks them. */
static int wb_shm_map(sqlite3_file *f, int pg, int pgsz, int extend,
                      void volatile **pp)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmMap == NULL)
        return SQLITE_IOERR_SHMMAP;
    return r->pMethods->xShmMap(r, pg, pgsz, extend, pp);
}

static int wb_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmLock == NULL)
        return SQLITE_IOERR_SHMLOCK;
    return r->pMethods->xShmLock(r, offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *f)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion >= 2 && r->pMethods->xShmBarrier != NULL)
        r->pMethods->xShmBarrier(r);
}

static int wb_shm_unmap(sqlite3_file *f, int del)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmUnmap == NULL)
        return SQLITE_OK;
    return r->pMethods->xShmUnmap(r, del);
}

static int wb_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    walfile *w = (walfile *)f;
    sqlite3_file *r = w->real;
    *pp = NULL; /* "no mapping": SQLite reads instead */
    int rc = flush(w);
    if (rc != SQLITE_OK || r->pMethods->iVersion < 3 ||
        r->pMethods->xFetch == NULL)
        return rc;
    rc = r->pMethods->xFetch(r, off, n, pp);
    if (w->mapped && rc == SQLITE_OK) {
        if (*pp != NULL)
            atomic_fetch_add_explicit(&n_fetched, 1, memory_order_relaxed);
        else if (off + n <= w->map_max)
            w->remap = true; /* the file grew past the map */
    }
    return rc;
}

/* Per page: released.  The whole map (off 0, p NULL, asked at a read
 * transaction after a write): kept unless it has become too small. */
static int wb_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    walfile *w = (walfile *)f;
    sqlite3_file *r = w->real;
    if (r->pMethods->iVersion < 3 || r->pMethods->xUnfetch == NULL)
        return SQLITE_OK;
    if (p == NULL && w->mapped) {
        if (!w->remap)
            return SQLITE_OK;
        w->remap = false;
    }
    return r->pMethods->xUnfetch(r, off, p);
}

static const sqlite3_io_methods walbuf_io = {
    3,
    wb_close,
    wb_read,
    wb_write,
    wb_truncate,
    wb_sync,
    wb_file_size,
    wb_lock,
    wb_unlock,
    wb_check_reserved,
    wb_file_control,
    wb_sector_size,
    wb_device_chars,
    wb_shm_map,
    wb_shm_lock,
    wb_shm_barrier,
    wb_shm_unmap,
    wb_fetch,
    wb_unfetch,
};

/* The features of vfs, one of vfs_tab. */
static unsigned features_of(const sqlite3_vfs *vfs)
{
    for (unsigned i = 0; i < NVFS; i++)
        if (vfs == &vfs_tab[i])
            return i + 1;
    return 0;
}

/* xOpen: with WALBUF, the WAL of a writable connection is wrapped and
 * gathers its writes; with MAP, the main database file is wrapped and read
 * from its map (unwrapped if it cannot be mapped).  Any other file is the
 * default VFS's own (opened in place, its methods unchanged). */
static int wb_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
                   int flags, int *out_flags)
{
    unsigned feat = features_of(vfs);
    bool gather = (feat & KV__VFS_WALBUF) && (flags & SQLITE_OPEN_WAL) &&
                  !(flags & SQLITE_OPEN_READONLY);
    bool map = (feat & KV__VFS_MAP) && (flags & SQLITE_OPEN_MAIN_DB);
    if (!gather && !map)
        return base_vfs->xOpen(base_vfs, name, f, flags, out_flags);
    walfile *w = (walfile *)f;
    memset(w, 0, sizeof *w);
    w->gather = gather;
    w->mapped = map;
    w->real = (sqlite3_file *)((char *)f + WALFILE_SIZE);
    w->real->pMethods = NULL;
    int rc = base_vfs->xOpen(base_vfs, name, w->real, flags, out_flags);
    /* SQLite calls xClose on a failed open whose pMethods is set. */
    w->base.pMethods = w->real->pMethods != NULL ? &walbuf_io : NULL;
    return rc;
}

static void walbuf_init(void)
{
    if (sqlite3_initialize() != SQLITE_OK)
        return;
    base_vfs = sqlite3_vfs_find(NULL);
    if (base_vfs == NULL || base_vfs->iVersion < 1)
        return;
    /* Keeping a map across transactions is known to be safe with the unix
     * VFSes' xFetch (their whole-map unfetch only releases the mapping);
     * another default VFS may need the call. */
    bool can_map = strncmp(base_vfs->zName, "unix", 4) == 0;
    for (unsigned i = 0; i < NVFS; i++) {
        if (((i + 1) & KV__VFS_MAP) && !can_map)
            continue;
        /* The default VFS's methods, handed our struct: the unix VFS reads
         * only fields copied here (pAppData, mxPathname, szOsFile). */
        vfs_tab[i] = *base_vfs;
        vfs_tab[i].pNext = NULL;
        vfs_tab[i].zName = vfs_names[i];
        vfs_tab[i].szOsFile = (int)WALFILE_SIZE + base_vfs->szOsFile;
        vfs_tab[i].xOpen = wb_open;
        vfs_ok[i] = sqlite3_vfs_register(&vfs_tab[i], 0) == SQLITE_OK;
    }
}

const char *kv__sqlite_vfs(unsigned features)
{
    if (features == 0 || features > NVFS)
        return NULL;
    (void)pthread_once(&walbuf_once, walbuf_init);
    return vfs_ok[features - 1] ? vfs_names[features - 1] : NULL;
}

unsigned long kv__sqlite_map_fetches(void)
{
    return atomic_load_explicit(&n_fetched, memory_order_relaxed);
}

void kv__sqlite_walbuf_counts(unsigned long *writes, unsigned long *flushes)
{
    *writes = atomic_load_explicit(&n_writes, memory_order_relaxed);
    *flushes = atomic_load_explicit(&n_flushes, memory_order_relaxed);
}

#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
void kv__sqlite_walbuf_fail(long nth, int sqlite_rc)
{
    atomic_store_explicit(&fail_rc, sqlite_rc, memory_order_relaxed);
    atomic_store_explicit(&fail_nth, nth, memory_order_relaxed);
}
#endif
