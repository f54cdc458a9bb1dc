/*
 * backend/sqlite/sqlite_map.c - one read-only shared mapping of a database
 * file for every connection of this process that reads it through the
 * kvstore VFS (sqlite_vfs.c), so that reading a page is a copy out of the
 * map instead of a pread(2): on a virtual machine a system call costs more
 * than the copy (docs/PERF.md, "Point reads").
 *
 * The map is made once per file (device and inode) and kept until the last
 * connection closes; it reserves more address space than the file holds,
 * so that the file grows into it without a new map (and pointers into it
 * never move).  A read is served from it only below `valid`, a size the
 * file is known to have: set from every file-size query (SQLite asks once
 * per read transaction), raised by writes through the VFS, lowered before
 * a truncation through it, each under the map's update lock, so that a
 * size read before a truncation is never stored after it.  Any other read
 * goes to the file.
 *
 * What a map cannot protect against: another program truncating the file
 * (a VACUUM that shrinks it) below a page a reader then copies, and a disk
 * read error, both of which raise SIGBUS instead of an error, as with
 * SQLite's own mmap_size.  KV_SQLITE_NO_MAP opens a store without it.
 *
 * Threads: get/put take the table's mutex (connection open and close);
 * size updates take the map's own (kv__sqlite_map_lock); reads take none.
 */
#include "config.h"

#include "backend/sqlite/sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Address space reserved per file: files up to this size are read from the
 * map alone; the rest of a larger file is read with pread.  A smaller
 * reserve is tried if the process may not map this much (RLIMIT_AS,
 * valgrind). */
#define RESERVE_BIG ((uint64_t)64 << 30)
#define RESERVE_MIN ((uint64_t)256 << 20)

struct kv__sqlite_map {
    dev_t dev;
    ino_t ino;
    unsigned refs;            /* under map_lock                          */
    pthread_mutex_t update;   /* orders the size updates                 */
    unsigned char *base;
    uint64_t reserve;         /* bytes mapped from offset 0              */
    _Atomic uint64_t valid;   /* the file has at least these bytes      */
    struct kv__sqlite_map *next;
};

static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kv__sqlite_map *maps; /* under map_lock */
static atomic_ulong n_mapped_reads; /* test counter */

static uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + to - 1) / to * to;
}

/* Map fd's file: the big reserve, else twice the file (at least the
 * minimum), else none.  NULL with *reserve 0 when it cannot be mapped. */
static unsigned char *map_file(int fd, uint64_t size, uint64_t *reserve)
{
    uint64_t tries[2] = {RESERVE_BIG, round_up(size * 2, RESERVE_MIN)};
    if (tries[0] < tries[1])
        tries[0] = tries[1];
    for (int i = 0; i < 2; i++) {
        if (tries[i] > SIZE_MAX / 2)
            continue; /* a 32-bit process: no room for it */
        void *p = mmap(NULL, (size_t)tries[i], PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            /* Point reads touch pages at random: no read-ahead. */
            (void)madvise(p, (size_t)tries[i], MADV_RANDOM);
            *reserve = tries[i];
            return p;
        }
    }
    *reserve = 0;
    return NULL;
}

kv__sqlite_map *kv__sqlite_map_get(const char *path)
{
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return NULL; /* SQLite's own open reports why, if it fails too */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0) {
        (void)close(fd);
        return NULL;
    }
    (void)pthread_mutex_lock(&map_lock);
    kv__sqlite_map *m = maps;
    while (m != NULL && (m->dev != st.st_dev || m->ino != st.st_ino))
        m = m->next;
    if (m != NULL) {
        m->refs++;
    } else if ((m = kv__calloc(1, sizeof *m)) != NULL) {
        m->base = map_file(fd, (uint64_t)st.st_size, &m->reserve);
        if (m->base == NULL || pthread_mutex_init(&m->update, NULL) != 0) {
            if (m->base != NULL)
                (void)munmap(m->base, (size_t)m->reserve);
            kv__free(m);
            m = NULL;
        } else {
            m->dev = st.st_dev;
            m->ino = st.st_ino;
            m->refs = 1;
            kv__sqlite_map_size(m, st.st_size);
            m->next = maps;
            maps = m;
        }
    }
    (void)pthread_mutex_unlock(&map_lock);
    (void)close(fd); /* the map keeps the file */
    return m;
}

void kv__sqlite_map_put(kv__sqlite_map *m)
{
    if (m == NULL)
        return;
    (void)pthread_mutex_lock(&map_lock);
    bool last = --m->refs == 0;
    if (last) {
        kv__sqlite_map **pp = &maps;
        while (*pp != m)
            pp = &(*pp)->next;
        *pp = m->next;
    }
    (void)pthread_mutex_unlock(&map_lock);
    if (last) {
        (void)munmap(m->base, (size_t)m->reserve); /* cannot fail: ours */
        (void)pthread_mutex_destroy(&m->update);
        kv__free(m);
    }
}

void *kv__sqlite_map_at(kv__sqlite_map *m, int n, int64_t off)
{
    if (m == NULL || n <= 0 || off < 0)
        return NULL;
    uint64_t end = (uint64_t)off + (uint64_t)n;
    if (end > atomic_load_explicit(&m->valid, memory_order_acquire))
        return NULL;
    atomic_fetch_add_explicit(&n_mapped_reads, 1, memory_order_relaxed);
    return m->base + off;
}

bool kv__sqlite_map_read(kv__sqlite_map *m, void *p, int n, int64_t off)
{
    const void *at = kv__sqlite_map_at(m, n, off);
    if (at == NULL)
        return false;
    memcpy(p, at, (size_t)n);
    return true;
}

void kv__sqlite_map_lock(kv__sqlite_map *m)
{
    if (m != NULL)
        (void)pthread_mutex_lock(&m->update);
}

void kv__sqlite_map_unlock(kv__sqlite_map *m)
{
    if (m != NULL)
        (void)pthread_mutex_unlock(&m->update);
}

void kv__sqlite_map_size(kv__sqlite_map *m, int64_t size)
{
    if (m == NULL)
        return;
    uint64_t v = size < 0 ? 0 : (uint64_t)size;
    atomic_store_explicit(&m->valid, v < m->reserve ? v : m->reserve,
                          memory_order_release);
}

void kv__sqlite_map_shrink(kv__sqlite_map *m, int64_t size)
{
    if (m == NULL)
        return;
    uint64_t v = size < 0 ? 0 : (uint64_t)size;
    if (v < atomic_load_explicit(&m->valid, memory_order_relaxed))
        atomic_store_explicit(&m->valid, v, memory_order_release);
}

void kv__sqlite_map_grow(kv__sqlite_map *m, int64_t end)
{
    if (m == NULL || end <= 0)
        return;
    uint64_t v = (uint64_t)end < m->reserve ? (uint64_t)end : m->reserve;
    if (v > atomic_load_explicit(&m->valid, memory_order_relaxed))
        atomic_store_explicit(&m->valid, v, memory_order_release);
}

unsigned long kv__sqlite_map_reads(void)
{
    return atomic_load_explicit(&n_mapped_reads, memory_order_relaxed);
}
