/*
 * backend/sqlite/sqlite_ckvfs.c - a VFS over SQLite's default one for the
 * background checkpoint's connection: every WRITEBACK_BYTES written to the
 * main database file it starts their writeback (sync_file_range with
 * SYNC_FILE_RANGE_WRITE, which waits for nothing), so the checkpoint's
 * pages reach the device as it copies them instead of all at once in its
 * fdatasync.  That fdatasync, a flush of the device, is what the writer's
 * own WAL fsyncs queue behind (docs/PERF.md, "Write stalls").  Durability
 * is unchanged: every sync SQLite asks for is still made.  Any other file
 * (the WAL, journals) is the default VFS's own.  Threads: a file is used
 * by one connection on one thread at a time; the counter is an atomic for
 * tests.
 */
#include "config.h"

#include "backend/sqlite/sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* Bytes written between two writebacks: 128 pages of 4 KiB. */
#define WRITEBACK_BYTES (512 << 10)

typedef struct ckfile {
    sqlite3_file base;     /* pMethods = &ck_io */
    sqlite3_file *real;    /* the default VFS's file, after this struct */
    int fd;                /* our descriptor of the same file (-1: none) */
    sqlite3_int64 pending; /* bytes written since the last writeback */
} ckfile;

#define CKFILE_SIZE \
    ((sizeof(ckfile) + _Alignof(max_align_t) - 1) & \
     ~(size_t)(_Alignof(max_align_t) - 1))

static sqlite3_vfs ck_vfs;
static sqlite3_vfs *base_vfs;
static pthread_once_t ck_once = PTHREAD_ONCE_INIT;
static bool ck_ok;
static atomic_ulong n_writebacks; /* writebacks started, process-wide */

static sqlite3_file *real_of(sqlite3_file *f)
{
    return ((ckfile *)f)->real;
}

/* Start writing back every dirty page of the file (best effort: a failure
 * leaves the pages to the fdatasync, as without this VFS). */
static void writeback(ckfile *c)
{
    c->pending = 0;
#ifdef SYNC_FILE_RANGE_WRITE
    if (c->fd < 0)
        return;
    int rc;
    do
        rc = sync_file_range(c->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    while (rc != 0 && errno == EINTR);
    if (rc == 0) {
        atomic_fetch_add_explicit(&n_writebacks, 1, memory_order_relaxed);
    } else { /* ENOSYS, EINVAL (not a regular file's fs)...: stop trying */
        (void)close(c->fd);
        c->fd = -1;
    }
#endif
}

static int ck_close(sqlite3_file *f)
{
    ckfile *c = (ckfile *)f;
    if (c->fd >= 0) {
        (void)close(c->fd); /* read-only descriptor: nothing to lose */
        c->fd = -1;
    }
    return c->real->pMethods->xClose(c->real);
}

static int ck_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    return real_of(f)->pMethods->xRead(real_of(f), p, n, off);
}

static int ck_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    ckfile *c = (ckfile *)f;
    int rc = c->real->pMethods->xWrite(c->real, p, n, off);
    if (rc == SQLITE_OK && n > 0 && (c->pending += n) >= WRITEBACK_BYTES)
        writeback(c);
    return rc;
}

static int ck_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return real_of(f)->pMethods->xTruncate(real_of(f), size);
}

static int ck_sync(sqlite3_file *f, int flags)
{
    ((ckfile *)f)->pending = 0; /* the sync writes them */
    return real_of(f)->pMethods->xSync(real_of(f), flags);
}

static int ck_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return real_of(f)->pMethods->xFileSize(real_of(f), size);
}

static int ck_lock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xLock(real_of(f), lock);
}

static int ck_unlock(sqlite3_file *f, int lock)
{
    return real_of(f)->pMethods->xUnlock(real_of(f), lock);
}

static int ck_check_reserved(sqlite3_file *f, int *out)
{
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}

static int ck_file_control(sqlite3_file *f, int op, void *arg)
{
    return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}

static int ck_sector_size(sqlite3_file *f)
{
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}

static int ck_device_chars(sqlite3_file *f)
{
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}

/* The WAL index (shared memory) belongs to the database file. */
static int ck_shm_map(sqlite3_file *f, int pg, int pgsz, int extend,
                      void volatile **pp)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmMap == NULL)
        return SQLITE_IOERR_SHMMAP;
    return r->pMethods->xShmMap(r, pg, pgsz, extend, pp);
}

static int ck_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmLock == NULL)
        return SQLITE_IOERR_SHMLOCK;
    return r->pMethods->xShmLock(r, offset, n, flags);
}

static void ck_shm_barrier(sqlite3_file *f)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion >= 2 && r->pMethods->xShmBarrier != NULL)
        r->pMethods->xShmBarrier(r);
}

static int ck_shm_unmap(sqlite3_file *f, int del)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 2 || r->pMethods->xShmUnmap == NULL)
        return SQLITE_OK;
    return r->pMethods->xShmUnmap(r, del);
}

static int ck_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    sqlite3_file *r = real_of(f);
    *pp = NULL; /* "no mapping": SQLite reads instead */
    if (r->pMethods->iVersion < 3 || r->pMethods->xFetch == NULL)
        return SQLITE_OK;
    return r->pMethods->xFetch(r, off, n, pp);
}

static int ck_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    sqlite3_file *r = real_of(f);
    if (r->pMethods->iVersion < 3 || r->pMethods->xUnfetch == NULL)
        return SQLITE_OK;
    return r->pMethods->xUnfetch(r, off, p);
}

static const sqlite3_io_methods ck_io = {
    3,
    ck_close,
    ck_read,
    ck_write,
    ck_truncate,
    ck_sync,
    ck_file_size,
    ck_lock,
    ck_unlock,
    ck_check_reserved,
    ck_file_control,
    ck_sector_size,
    ck_device_chars,
    ck_shm_map,
    ck_shm_lock,
    ck_shm_barrier,
    ck_shm_unmap,
    ck_fetch,
    ck_unfetch,
};

/* xOpen: the main database file of a writable connection is wrapped, any
 * other file is the default VFS's own (opened in place). */
static int ck_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
                   int flags, int *out_flags)
{
    (void)vfs;
    if ((flags & SQLITE_OPEN_MAIN_DB) == 0 || (flags & SQLITE_OPEN_READONLY) ||
        name == NULL)
        return base_vfs->xOpen(base_vfs, name, f, flags, out_flags);
    ckfile *c = (ckfile *)f;
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->real = (sqlite3_file *)((char *)f + CKFILE_SIZE);
    c->real->pMethods = NULL;
    int rc = base_vfs->xOpen(base_vfs, name, c->real, flags, out_flags);
    /* SQLite calls xClose on a failed open whose pMethods is set. */
    c->base.pMethods = c->real->pMethods != NULL ? &ck_io : NULL;
    if (rc == SQLITE_OK) {
        /* Ours, for sync_file_range only; without it (EMFILE...) the
         * file works as the default VFS's. */
        do
            c->fd = open(name, O_RDONLY | O_CLOEXEC);
        while (c->fd < 0 && errno == EINTR);
    }
    return rc;
}

static void ck_init(void)
{
    if (sqlite3_initialize() != SQLITE_OK)
        return;
    base_vfs = sqlite3_vfs_find(NULL);
    if (base_vfs == NULL || base_vfs->iVersion < 1)
        return;
    /* The default VFS's methods, handed our struct: the unix VFS reads only
     * fields copied here (pAppData, mxPathname, szOsFile). */
    ck_vfs = *base_vfs;
    ck_vfs.pNext = NULL;
    ck_vfs.zName = KV__SQLITE_VFS_CKWB;
    ck_vfs.szOsFile = (int)CKFILE_SIZE + base_vfs->szOsFile;
    ck_vfs.xOpen = ck_open;
    ck_ok = sqlite3_vfs_register(&ck_vfs, 0) == SQLITE_OK;
}

const char *kv__sqlite_vfs_ckwb(void)
{
    (void)pthread_once(&ck_once, ck_init);
    return ck_ok ? KV__SQLITE_VFS_CKWB : NULL;
}

unsigned long kv__sqlite_ckwb_count(void)
{
    return atomic_load_explicit(&n_writebacks, memory_order_relaxed);
}
