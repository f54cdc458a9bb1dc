/*
 * fs_layout.c - where the filesystem backend puts things (see "On-disk
 * layout" to "Names" in docs/DESIGN.md): the escape of namespace ids into
 * path segments, the paths of a key (continuations, bucket directories),
 * what a directory entry is, blocking path walks that refuse symlinks, and
 * the .format file that records the layout of a store.  Any thread unless
 * noted (the .format code runs in kv_fs_open).
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Names                                                                    */
/* ------------------------------------------------------------------------ */

static bool keep_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static const char hexd[] = "0123456789ABCDEF";

/* Append the escape of id[0..len) to b. */
static int enc_append(kv_buf *b, const char *id, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        int rc;
        if (keep_byte(c)) {
            rc = kv_buf_append(b, &c, 1);
        } else {
            char e[3] = {'%', hexd[c >> 4], hexd[c & 15]};
            rc = kv_buf_append(b, e, 3);
        }
        if (rc != KV_OK)
            return rc;
    }
    return KV_OK;
}

/* The value of hex digit c whose letters start at a ('A' or 'a'), or -1. */
static int hex_digit(char c, char a)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= a && c <= a + 5)
        return c - a + 10;
    return -1;
}

/* Decode an escaped name: KV_OK with *out (a heap string), KV_EINVAL if it
 * is not the canonical escape of a valid, canonical namespace id of a key
 * (so not of the empty namespace: "" names nothing), or KV_ENOMEM.  An
 * empty value after a field is fine: "f:" is "f%3A".  Any thread. */
int fs__dec_name(const char *s, size_t len, char **out)
{
    if (len == 0)
        return KV_EINVAL;
    char *id = kv__malloc(len + 1);
    if (id == NULL)
        return KV_ENOMEM;
    int rc = KV_EINVAL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (keep_byte(c)) {
            id[o++] = (char)c;
            continue;
        }
        if (c != '%' || i + 2 >= len)
            goto out;
        int hi = hex_digit(s[i + 1], 'A'), lo = hex_digit(s[i + 2], 'A');
        if (hi < 0 || lo < 0)
            goto out;
        unsigned char b = (unsigned char)(hi << 4 | lo);
        if (b == 0 || b == '/' || keep_byte(b))
            goto out;
        id[o++] = (char)b;
        i += 2;
    }
    id[o] = '\0';
    /* The id must be canonical: parsing it gives it back. */
    kv_ns ns = {NULL, NULL};
    rc = kv_ns_parse(&ns, id);
    if (rc == KV_OK) {
        char *again = kv_ns_id(&ns);
        if (again == NULL)
            rc = KV_ENOMEM;
        else if (strcmp(again, id) != 0)
            rc = KV_EINVAL;
        kv__free(again);
    }
    kv_ns_free(&ns);
out:
    if (rc == KV_OK)
        *out = id;
    else
        kv__free(id);
    return rc;
}

int kv__fs_name_decode(const char *name, size_t len, char **id)
{
    if (name == NULL || id == NULL)
        return KV_EINVAL;
    return fs__dec_name(name, len, id);
}

int kv__fs_name_encode(const char *id, size_t len, kv_buf *out)
{
    if (id == NULL || out == NULL)
        return KV_EINVAL;
    return enc_append(out, id, len);
}

/* Append one path component to a '/'-joined path. */
static int path_add(kv_buf *p, const char *comp, size_t len, const char *sfx)
{
    int rc = KV_OK;
    if (p->len > 0)
        rc = kv_buf_append(p, "/", 1);
    if (rc == KV_OK)
        rc = kv_buf_append(p, comp, len);
    if (rc == KV_OK && sfx != NULL)
        rc = kv_buf_append(p, sfx, strlen(sfx));
    return rc;
}

/*
 * The bucket of a record in the fan-out layout: FNV-1a (64-bit) of the
 * whole escaped name E of the key's last namespace (before it is cut into
 * CHUNK pieces), folded to h ^ (h >> 32), modulo FANOUT.  This is part of
 * the on-disk format: a store made with it finds its records by it.
 */
static unsigned bucket_of(const char *e, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)e[i]) * 1099511628211ull;
    return (unsigned)((h ^ (h >> 32)) % FANOUT);
}

/* The name of bucket b: two lower-case hex digits and ".b". */
void fs__bucket_name(char out[BUCKET_NAME_SIZE], unsigned b)
{
    snprintf(out, BUCKET_NAME_SIZE, "%02x.b", b % FANOUT);
}

/*
 * The relative directory of key's entry ("" for the root), its base name
 * (its children directory is base in that directory; so is its record,
 * base + ".kv", in the flat layout) and, if bucket is not NULL, the bucket
 * of its record in the fan-out layout (the subdirectory fs__bucket_name() of
 * that directory).  key must not be empty.  KV_OK or KV_ENOMEM.  Any
 * thread.
 */
int fs__key_paths(const kv_key *key, char **dir_out, char **base_out,
                  unsigned *bucket)
{
    kv_buf dir = {NULL, 0, 0}, e = {NULL, 0, 0};
    char *base = NULL;
    int rc = KV_OK;
    size_t n = kv_key_len(key);
    const char *id = kv_key_id(key) + 1;
    for (size_t i = 0; i < n && rc == KV_OK; i++) {
        const char *end = strchr(id, '/');
        size_t len = end != NULL ? (size_t)(end - id) : strlen(id);
        e.len = 0;
        rc = enc_append(&e, id, len);
        if (rc != KV_OK)
            break;
        const char *s = (const char *)e.data;
        size_t el = e.len;
        if (i + 1 == n && bucket != NULL)
            *bucket = bucket_of(s, el);
        while (el > CHUNK && rc == KV_OK) {
            rc = path_add(&dir, s, CHUNK, ".+");
            s += CHUNK;
            el -= CHUNK;
        }
        if (rc != KV_OK)
            break;
        if (i + 1 < n) {
            rc = path_add(&dir, s, el, NULL);
        } else {
            base = kv__strndup(s, el);
            if (base == NULL)
                rc = KV_ENOMEM;
        }
        id = end != NULL ? end + 1 : id + len;
    }
    if (rc == KV_OK)
        rc = kv_buf_append(&dir, "", 1);
    kv__free(e.data);
    if (rc != KV_OK) {
        kv__free(dir.data);
        kv__free(base);
        return rc;
    }
    *dir_out = (char *)dir.data;
    *base_out = base;
    return KV_OK;
}

/* The children directory of a non-empty key: dir/base.  Also the bucket
 * directory of a record: dir/<bucket name>. */
char *fs__child_dir_path(const char *dir, const char *base)
{
    return dir[0] == '\0' ? kv__strdup(base)
                          : kv__asprintf("%s/%s", dir, base);
}

/* ------------------------------------------------------------------------ */
/* Blocking helpers for the pool and for open                               */
/* ------------------------------------------------------------------------ */

/* A new descriptor of the directory dfd, or -1 with errno set. */
int fs__dir_dup(int dfd)
{
    return openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Open the directory name in dfd, refusing a symlink: a new descriptor,
 * or -1 with errno set. */
int fs__subdir_open(int dfd, const char *name)
{
    return openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* A stream over a new descriptor of dfd (which stays usable for *at
 * calls): 0 and *out, or -errno. */
int fs__dir_stream(int dfd, DIR **out)
{
    int fd = fs__dir_dup(dfd);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = -errno;
        close(fd);
        return e;
    }
    *out = d;
    return 0;
}

/* Open a relative directory path one component at a time, refusing
 * symlinks.  A new descriptor or -errno. */
static int open_dir_path(int rootfd, const char *path)
{
    int fd = fs__dir_dup(rootfd);
    if (fd < 0)
        return -errno;
    const char *p = path;
    char comp[NAME_MAX + 1];
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || len > NAME_MAX) {
            close(fd);
            return -ENAMETOOLONG;
        }
        memcpy(comp, p, len);
        comp[len] = '\0';
        int nfd = fs__subdir_open(fd, comp);
        int e = errno;
        close(fd);
        if (nfd < 0)
            return -e;
        fd = nfd;
        p += len;
        if (*p == '/')
            p++;
    }
    return fd;
}

/* The number of the bucket nm names (exactly what fs__bucket_name() makes),
 * or -1. */
int fs__bucket_num(const char *nm)
{
    int hi = hex_digit(nm[0], 'a'), lo = hi >= 0 ? hex_digit(nm[1], 'a') : -1;
    if (lo < 0 || strcmp(nm + 2, ".b") != 0 ||
        (unsigned)(hi << 4 | lo) >= FANOUT)
        return -1;
    return hi << 4 | lo;
}

/* Classify a name; *bl gets the length of its escaped piece.  Bucket
 * directories exist (and are E_BUCKET) only in the fan-out layout. */
int fs__entry_kind(const char *nm, size_t *bl, bool fanout)
{
    size_t nl = strlen(nm);
    int kind;
    if (nm[0] == '.')
        return E_NONE;
    if (fanout && fs__bucket_num(nm) >= 0) {
        *bl = 0;
        return E_BUCKET;
    }
    if (nl > 3 && memcmp(nm + nl - 3, ".kv", 3) == 0) {
        kind = E_REC;
        *bl = nl - 3;
    } else if (nl > 2 && memcmp(nm + nl - 2, ".+", 2) == 0) {
        kind = E_CONT;
        *bl = nl - 2;
    } else {
        kind = E_SUB;
        *bl = nl;
    }
    if (*bl == 0 || *bl > CHUNK || memchr(nm, '.', *bl) != NULL)
        return E_NONE;
    if (kind == E_CONT && *bl != CHUNK)
        return E_NONE;
    return kind;
}

/*
 * Open the directory of key's entry (fs__key_paths; key not empty): a new
 * descriptor with *base and *bucket set, or a KV code or -errno (*base
 * NULL).  Any thread.
 */
int fs__key_dir_open(int rootfd, const kv_key *key, char **base,
                     unsigned *bucket)
{
    char *dir = NULL;
    int rc = fs__key_paths(key, &dir, base, bucket);
    if (rc != KV_OK)
        return rc;
    int fd = open_dir_path(rootfd, dir);
    kv__free(dir);
    if (fd < 0) {
        kv__free(*base);
        *base = NULL;
    }
    return fd;
}

/*
 * What the tree below dfd holds, for a store without FORMAT_NAME: *any if
 * it has a store entry at all, *bucket if it has a bucket directory (the
 * walk stops there).  0, or -errno if dfd cannot be read.
 */
static int layout_probe(int dfd, bool *any, bool *bucket, unsigned level)
{
    DIR *d = NULL;
    int rc = fs__dir_stream(dfd, &d);
    if (rc != 0)
        return rc;
    struct dirent *de;
    while (!*bucket && (de = readdir(d)) != NULL) {
        size_t bl;
        int kind = fs__entry_kind(de->d_name, &bl, true);
        if (kind == E_NONE)
            continue;
        *any = true;
        if (kind == E_REC || level > 100000)
            continue;
        int sub = fs__subdir_open(dfd, de->d_name);
        if (sub < 0)
            continue; /* not a directory: not ours */
        if (kind == E_BUCKET)
            *bucket = true;
        else
            (void)layout_probe(sub, any, bucket, level + 1);
        close(sub);
    }
    closedir(d);
    return 0;
}

/* Write FORMAT_NAME for fs->fanout: a temp file, fsync, rename.  The
 * rename is made durable by open's fsync of the root.  Always, with
 * KV_FS_NO_FSYNC too: a store whose .format a crash lost or tore cannot be
 * opened.  0 or -errno. */
static int write_format(fs_state *fs)
{
    const char *txt = fs->fanout ? FORMAT_FANOUT : FORMAT_FLAT;
    size_t n = strlen(txt);
    int fd = openat(fs->rootfd, FORMAT_TMP,
                    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                    0644);
    if (fd < 0)
        return -errno;
    int e = 0;
    ssize_t w = pwrite(fd, txt, n, 0);
    if (w < 0)
        e = -errno;
    else if ((size_t)w != n)
        e = -EIO;
    else if (fsync(fd) != 0)
        e = -errno;
    else
        fs->stats[STAT_FILE_FSYNC]++;
    if (close(fd) != 0 && e == 0)
        e = -errno;
    if (e == 0 && renameat(fs->rootfd, FORMAT_TMP, fs->rootfd,
                           FORMAT_NAME) != 0)
        e = -errno;
    if (e != 0)
        (void)unlinkat(fs->rootfd, FORMAT_TMP, 0); /* or at the next open */
    return e;
}

/*
 * Settle the layout: FORMAT_NAME says it.  A store without that file is
 * new (nothing in it: the layout asked for) or was made before the file
 * existed (flat, unless a bucket directory shows it is not); the file is
 * then written, unless read-only.  KV_FS_FANOUT on a flat store is
 * KV_EINVAL: the layout is chosen when a store is made.  KV_OK or a KV
 * code with msg set.
 */
int fs__open_layout(fs_state *fs, bool want_fanout, char *msg, size_t msglen)
{
    int fd = openat(fs->rootfd, FORMAT_NAME,
                    O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        ssize_t r = fs__pread_full(fd, buf, sizeof buf, 0);
        close(fd);
        if (r < 0) {
            snprintf(msg, msglen, "read %s/%s: %s", fs->root, FORMAT_NAME,
                     strerror((int)-r));
            return kv__from_errno((int)r);
        }
        if ((size_t)r == strlen(FORMAT_FLAT) &&
            memcmp(buf, FORMAT_FLAT, (size_t)r) == 0) {
            fs->fanout = false;
        } else if ((size_t)r == strlen(FORMAT_FANOUT) &&
                   memcmp(buf, FORMAT_FANOUT, (size_t)r) == 0) {
            fs->fanout = true;
        } else {
            snprintf(msg, msglen,
                     "%s/%s does not name a layout this version knows",
                     fs->root, FORMAT_NAME);
            return KV_ECORRUPT;
        }
    } else if (errno == ENOENT) {
        bool any = false, bucket = false;
        int rc = layout_probe(fs->rootfd, &any, &bucket, 0);
        if (rc < 0) {
            snprintf(msg, msglen, "read %s: %s", fs->root, strerror(-rc));
            return kv__from_errno(rc);
        }
        fs->fanout = any ? bucket : want_fanout;
        /* (A refused open writes nothing.) */
        if (!fs->readonly && !(want_fanout && !fs->fanout) &&
            (rc = write_format(fs)) < 0) {
            snprintf(msg, msglen, "write %s/%s: %s", fs->root, FORMAT_NAME,
                     strerror(-rc));
            return kv__from_errno(rc);
        }
    } else {
        int e = errno;
        snprintf(msg, msglen, "open %s/%s: %s", fs->root, FORMAT_NAME,
                 strerror(e));
        return e == ELOOP ? KV_ECORRUPT : kv__from_errno(-e);
    }
    if (want_fanout && !fs->fanout) {
        snprintf(msg, msglen,
                 "%s has the flat layout: KV_FS_FANOUT only chooses the "
                 "layout of a new store",
                 fs->root);
        return KV_EINVAL;
    }
    return KV_OK;
}
