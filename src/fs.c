/*
 * fs.c - the filesystem backend: one file per record under a root
 * directory, every file operation of has/get/put/delete submitted to the
 * loop's io_uring.
 *
 * ON-DISK LAYOUT
 *
 *   <root>/.lock            lock file (an OFD write lock while open)
 *   <root>/.format          the layout, "kvstore-fs 1\nlayout flat\n" or
 *                           "kvstore-fs 1\nlayout fanout 16\n"
 *   <root>/.tokens          token high-water mark, two 32-byte slots
 *   <root>/.clean           left by a clean close: no temp files to remove
 *   <dir>/<E>.kv            the record of the namespace whose name is E
 *   <dir>/<E>/              the directory of that namespace's children
 *   <dir>/<C>.+/            continuation of a long name (see below)
 *   <dir>/.tmp-<hex>        a put in progress (removed at open)
 *
 * FAN-OUT LAYOUT (KV_FS_FANOUT when the store is made): the record files
 * of a directory live in FANOUT (16) bucket subdirectories of it,
 *
 *   <dir>/<hh>.b/<E>.kv     hh = bucket_of(E), two lower-case hex digits
 *   <dir>/<hh>.b/.tmp-<hex> a put in progress
 *
 * while children and continuation directories stay in <dir> itself; with
 * a long name, the bucket is in the innermost continuation, beside where
 * the record file would be.  bucket_of is FNV-1a 64 of the whole escaped
 * name E, folded (h ^ h >> 32), mod 16.  Creates, renames and unlinks of
 * one prefix then take 16 directory locks instead of one, and the group
 * commit fsyncs a bucket.  (16, not 64: measured here, 64 buckets were no
 * faster for one prefix and, with 64 namespaces, 4096 directories made
 * ext4's inode allocation three times slower.)  Queries read a directory and its buckets and
 * sort them together.  A store keeps the layout it was made with
 * (open_layout); ".b" names are buckets only in this layout.
 *
 * Each namespace id ("field:value" or "value") is one path segment, E, by
 * this reversible, injective escape: bytes [A-Za-z0-9_-] are kept, every
 * other byte (':' '.' '%' ' ' control bytes, non-ASCII...) becomes %XX with
 * two upper-case hex digits.  E therefore never contains '.', never starts
 * with '.', and is never "." or "..": every name that has a '.' belongs to
 * the store itself (".kv" records, ".+" continuations, dot-files), so a
 * record "/a" (a.kv) and its children "/a/b" (a/b.kv) coexist, and temp,
 * lock and token files can never be mistaken for records.  An E longer
 * than CHUNK (240) bytes is cut into CHUNK-byte pieces: every piece but the
 * last names a continuation directory "<piece>.+", and the last piece is
 * used as above inside the innermost one.  Decoding concatenates the pieces
 * and unescapes; a name that does not re-encode to itself is ignored.
 *
 * A key deeper than the store's depth is KV_EINVAL.  Every directory is
 * opened relative to its parent's descriptor with one path component and
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (IORING_OP_OPENAT2; O_NOFOLLOW where
 * that opcode is missing), every record operation is relative to its
 * directory's descriptor with one component, and mkdirat runs in the parent
 * descriptor: a symlink planted anywhere below the root makes the
 * operation fail (ELOOP), never reach outside the root.  Paths are never
 * longer than one component, so deep or long keys have no PATH_MAX limit.
 *
 * RECORD FILE: a 40-byte header then the value.
 *
 *   0  u32 magic "KVR1"     4  u16 version (1)    6  u16 header size (40)
 *   8  u64 token           16  u64 value length   24  u32 CRC32C(value)
 *   28 u32 flags (0)       32  u32 reserved (0)   36  u32 CRC32C(bytes 0..35)
 *
 * All little-endian.  The header CRC covers the value CRC, so together they
 * check header and value; a file that fails (short, long, bad magic or CRC)
 * is KV_ECORRUPT and never returned as data.  CAS checks and value=false
 * queries read and check the header only.
 *
 * PUT (token T): through the per-key FIFO queue, then
 *   [dir] open the record's directory (mkdirat missing ones through the
 *         ring, each made durable by an fsync of its parent)
 *   [cas] openat(record) -> read(header) -> close: current token (0 if
 *         absent) must equal T, else KV_ECONFLICT
 *   [tmp] openat(.tmp-N, O_CREAT|O_EXCL|O_WRONLY), or openat(spare,
 *         O_WRONLY) to overwrite a spare file of the directory (see
 *         "Spare files": replaced record files reused while puts run)
 *   [chain] writev -> fsync (fdatasync over a spare) -> close ->
 *         renameat(tmp, record) (RENAME_EXCHANGE to leave the replaced
 *         file as a spare), linked with IOSQE_IO_LINK (never HARDLINK: a
 *         failed fsync must cancel the rename); a short write cancels the
 *         rest, which is resumed
 *   [dsync] fsync of the directory, shared: renames that complete while a
 *         directory fsync is in flight wait for the next one, which covers
 *         them all (group commit).  The put completes after it.
 * Any failure before the rename closes and unlinks the temp file and keeps
 * the old record; an fsync error is final (never retried).  DELETE is
 * [dir] [cas] unlinkat [dsync].  GET is openat -> read... -> close, HAS is
 * openat -> read(header) -> close.  KV_NO_FSYNC drops every fsync.
 *
 * TOKENS: a store-wide counter.  A block of TOKEN_BLOCK tokens is reserved
 * durably (written to .tokens and fsynced) before any of it is handed out,
 * at open and then through the ring, so tokens never repeat for any key,
 * across delete/re-insert and reopen, and are never 0.
 *
 * Queries walk directories on the pool, read each directory whole (with
 * its continuations and buckets), sort its decoded entries by namespace
 * id (descending for KV_SORT_DESC) and descend depth-first, a record
 * before its children (after them for DESC): that is kv_key_cmp order.
 * DROP runs on the pool.
 */
#include "config.h"

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                */
/* ------------------------------------------------------------------------ */

#define HDR_SIZE 40u
#define REC_MAGIC 0x3152564bu /* "KVR1" */
#define REC_VERSION 1u
#define CHUNK 240u            /* longest name piece (+ ".kv" <= NAME_MAX) */
#define READ_FIRST 4096u      /* first read of a get */
#define TOKEN_BLOCK 4096u     /* tokens reserved per .tokens write */
#define TOK_MAGIC 0x4b54564bu /* "KVTK" */
#define TOK_SLOT 32u
#define TOK_SLOT_OFF 512u     /* slot i lives at i * 512 */
#define DIR_IDLE_MAX 256u     /* idle directory descriptors kept open */
#define FETCH_MAX 128u        /* records per ITER_FETCH */
#define FETCH_BYTES (4u << 20)
#define MAX_RETRY 4
#define LOCK_NAME ".lock"
#define TOK_NAME ".tokens"
#define CLEAN_NAME ".clean" /* written by a clean close, removed at open */
#define TMP_PREFIX ".tmp-"
#define FORMAT_NAME ".format" /* the layout, written when a store is made */
#define FORMAT_TMP ".tmp-format"
#define FANOUT 16u            /* buckets per directory (KV_FS_FANOUT) */
#define SPARE_DIR_MAX 64u     /* spare files kept per directory */
#define SPARE_MAX 128u        /* spare files kept per store (each may pin
                                 a directory descriptor: with the running
                                 kops and DIR_IDLE_MAX, under 1024) */
#define SPARE_BYTES (64u << 20) /* and their bytes at most (about) */
#define TMPNAME_SIZE 32u      /* ".tmp-" + 16 hex digits + NUL, rounded */
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1) /* linux/fs.h */
#endif
#define BUCKET_NAME_SIZE 8u   /* "0f.b" and its NUL, rounded up */
/* The only two contents of FORMAT_NAME this version knows. */
#define FORMAT_FLAT "kvstore-fs 1\nlayout flat\n"
#define FORMAT_FANOUT "kvstore-fs 1\nlayout fanout 16\n"

/* ------------------------------------------------------------------------ */
/* Little-endian helpers and CRC32C                                         */
/* ------------------------------------------------------------------------ */

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* CRC32C (Castagnoli, reflected 0x82F63B78): slice-by-8 tables, or the
 * SSE4.2 instruction when the CPU has it.  Any thread. */
static uint32_t crc_tab[8][256];
static bool crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^
                            crc_tab[0][crc_tab[t - 1][i] & 0xff];
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw_run(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n-- > 0)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

static uint32_t crc32c(const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    uint32_t c = 0xffffffffu;
#if defined(__x86_64__) && defined(__GNUC__)
    if (crc_hw)
        return ~crc_hw_run(c, p, n);
#endif
    while (n >= 8) {
        uint32_t lo = c ^ get32(p);
        uint32_t hi = get32(p + 4);
        c = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^
            crc_tab[5][(lo >> 16) & 0xff] ^ crc_tab[4][lo >> 24] ^
            crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
            crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0)
        c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xff];
    return ~c;
}

/* ------------------------------------------------------------------------ */
/* Record header                                                            */
/* ------------------------------------------------------------------------ */

static void hdr_make(unsigned char h[HDR_SIZE], uint64_t token,
                     const void *val, size_t len)
{
    memset(h, 0, HDR_SIZE);
    put32(h, REC_MAGIC);
    put16(h + 4, REC_VERSION);
    put16(h + 6, HDR_SIZE);
    put64(h + 8, token);
    put64(h + 16, len);
    put32(h + 24, crc32c(val, len));
    put32(h + 36, crc32c(h, 36));
}

/* Check a header alone; on success set the token, value length and value
 * CRC.  False if it is not a valid header. */
static bool hdr_parse(const unsigned char h[HDR_SIZE], uint64_t *token,
                      uint64_t *vlen, uint32_t *vcrc)
{
    if (get32(h) != REC_MAGIC || get16(h + 4) != REC_VERSION ||
        get16(h + 6) != HDR_SIZE || get32(h + 36) != crc32c(h, 36))
        return false;
    /* Flags and reserved bits this version does not know: a record this
     * reader cannot interpret, not one to return as if they were 0. */
    if (get32(h + 28) != 0 || get32(h + 32) != 0)
        return false;
    uint64_t t = get64(h + 8);
    uint64_t l = get64(h + 16);
    /* No record holds more than KV_MAX_VALUE_SIZE: a larger length is
     * corruption, not a reason to allocate that much. */
    if (t == 0 || l > KV_MAX_VALUE_SIZE)
        return false;
    *token = t;
    *vlen = l;
    *vcrc = get32(h + 24);
    return true;
}

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
 * is not the canonical escape of a valid, canonical namespace id, or
 * KV_ENOMEM.  Any thread. */
static int dec_name(const char *s, size_t len, char **out)
{
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

/* ------------------------------------------------------------------------ */
/* Test hooks: the decoders of untrusted bytes, for the fuzz targets        */
/* ------------------------------------------------------------------------ */

int kv__fs_record_make(uint64_t token, const void *val, size_t len,
                       kv_buf *out)
{
    if (out == NULL || (val == NULL && len > 0) || len > KV_MAX_VALUE_SIZE)
        return KV_EINVAL;
    unsigned char h[HDR_SIZE];
    hdr_make(h, token, val != NULL ? val : "", len);
    int rc = kv_buf_append(out, h, HDR_SIZE);
    if (rc == KV_OK)
        rc = kv_buf_append(out, val, len);
    return rc;
}

int kv__fs_record_check(const void *buf, size_t len, uint64_t *token,
                        size_t *voff, size_t *vlen)
{
    if (buf == NULL && len > 0)
        return KV_EINVAL;
    uint64_t tok = 0, l = 0;
    uint32_t vcrc = 0;
    const unsigned char *b = buf;
    /* What a get accepts (on_read): a valid header, then exactly the
     * value it announces, whose CRC matches. */
    if (len < HDR_SIZE || !hdr_parse(b, &tok, &l, &vcrc) ||
        len - HDR_SIZE != l || crc32c(b + HDR_SIZE, (size_t)l) != vcrc)
        return KV_ECORRUPT;
    if (token != NULL)
        *token = tok;
    if (voff != NULL)
        *voff = HDR_SIZE;
    if (vlen != NULL)
        *vlen = (size_t)l;
    return KV_OK;
}

int kv__fs_name_decode(const char *name, size_t len, char **id)
{
    if (name == NULL || id == NULL)
        return KV_EINVAL;
    return dec_name(name, len, id);
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
static void bucket_name(char out[BUCKET_NAME_SIZE], unsigned b)
{
    snprintf(out, BUCKET_NAME_SIZE, "%02x.b", b % FANOUT);
}

/*
 * The relative directory of key's entry ("" for the root), its base name
 * (its children directory is base in that directory; so is its record,
 * base + ".kv", in the flat layout) and, if bucket is not NULL, the bucket
 * of its record in the fan-out layout (the subdirectory bucket_name() of
 * that directory).  key must not be empty.  KV_OK or KV_ENOMEM.  Any
 * thread.
 */
static int key_paths(const kv_key *key, char **dir_out, char **base_out,
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
static char *child_dir_path(const char *dir, const char *base)
{
    return dir[0] == '\0' ? kv__strdup(base)
                          : kv__asprintf("%s/%s", dir, base);
}

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct fs_state fs_state;
typedef struct kop kop;
typedef struct fsdir fsdir;
typedef struct spare spare;
typedef struct keyq keyq;
typedef struct cursor cursor;

/* Something waiting for a directory to open; fn(w, 0) or fn(w, -errno). */
typedef struct waiter waiter;
struct waiter {
    void (*fn)(waiter *w, int res);
    waiter *next;
    bool create; /* the waiter needs the directory made if missing */
};

enum dstate {
    D_CLOSED,
    D_WAITPARENT,
    D_OPENING,
    D_MKDIR,
    D_MKSYNC,
    D_OPEN,
    D_CLOSING
};

typedef struct dslot {
    kv__op op;
    fsdir *d;
} dslot;

/*
 * An intrusive chained hash table with power-of-two buckets: the directory
 * table and the per-key queues both use it.  htab_reserve makes room for one
 * more entry (the only step that can fail), so htab_link never fails.
 */
typedef struct hlink {
    struct hlink *next;
    uint64_t hash;
} hlink;

typedef struct htab {
    hlink **tab;
    size_t cap, n;
} htab;

/* The first entry of h's bucket (walk with ->next, compare ->hash). */
static hlink *htab_bucket(const htab *t, uint64_t h)
{
    return t->cap == 0 ? NULL : t->tab[h & (t->cap - 1)];
}

static int htab_reserve(htab *t)
{
    if (t->n + 1 <= t->cap)
        return KV_OK;
    size_t cap = t->cap ? t->cap * 2 : 64;
    hlink **tab = kv__calloc(cap, sizeof *tab);
    if (tab == NULL)
        return KV_ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        hlink *l = t->tab[i];
        while (l != NULL) {
            hlink *next = l->next;
            l->next = tab[l->hash & (cap - 1)];
            tab[l->hash & (cap - 1)] = l;
            l = next;
        }
    }
    kv__free(t->tab);
    t->tab = tab;
    t->cap = cap;
    return KV_OK;
}

/* Link l (l->hash set) after a successful htab_reserve. */
static void htab_link(htab *t, hlink *l)
{
    l->next = t->tab[l->hash & (t->cap - 1)];
    t->tab[l->hash & (t->cap - 1)] = l;
    t->n++;
}

static void htab_unlink(htab *t, hlink *l)
{
    hlink **pp = &t->tab[l->hash & (t->cap - 1)];
    while (*pp != NULL && *pp != l)
        pp = &(*pp)->next;
    if (*pp == l) {
        *pp = l->next;
        t->n--;
    }
    l->next = NULL;
}

/* An open (or opening) directory, shared by every operation inside it. */
struct fsdir {
    fs_state *fs;
    char *path;       /* relative to the root, "" for the root */
    const char *name; /* last component, inside path */
    hlink hl;      /* in fs->dirs, hashed by path */
    fsdir *parent; /* holds one nobj reference on it */
    int fd;
    enum dstate state;
    unsigned users; /* holders that need fd open */
    unsigned nobj;  /* child objects whose parent this is */
    bool stale;     /* out of the table: never handed out again */
    bool in_lru;
    bool is_root;
    int tries;
    fsdir *lprev, *lnext;
    fsdir *all_prev, *all_next; /* every object, for teardown */
    waiter *wait_head, *wait_tail;
    waiter pw; /* this directory waiting for its parent */
    dslot s_open, s_mk, s_mksync, s_sync, s_close;
    struct open_how how;
    /* group commit */
    bool syncing;
    unsigned sync_pos; /* SQ tail just after the fsync's SQE */
    kop *ready_head, *ready_tail;
    kop *sync_head;
    /* spare files (see "Spare files"): each holds a user reference */
    spare *spares;
    unsigned nspares, nexch; /* kept; exchanges in flight that may add */
};

/*
 * A spare file: the file of a replaced record, left under a temp name by
 * the put that replaced it (RENAME_EXCHANGE), kept for a later put in the
 * same directory to overwrite.  In d->spares and in the store's FIFO.
 */
struct spare {
    kv__op op;       /* the unlinkat that removes it (spare_drop) */
    fs_state *fs;
    fsdir *d;        /* its directory: one user reference while kept */
    spare *dnext;    /* d->spares */
    spare *fprev, *fnext; /* fs->sp_head..sp_tail, oldest first */
    uint64_t size;   /* its length: a whole record, HDR_SIZE + value */
    char name[TMPNAME_SIZE];
};

enum kkind { K_GET, K_HAS, K_PUT, K_DEL };

enum kstate {
    ST_NEW,
    ST_QUEUED,
    ST_ADMIT, /* waiting for a running slot (see kop_admit) */
    ST_DIR,
    ST_OPEN,
    ST_HDR,
    ST_READ,
    ST_TOKEN,
    ST_TMP,
    ST_WRITE,
    ST_RENAME, /* a plain rename after a refused exchange */
    ST_UNLINK,
    ST_DSYNC,
    ST_CLEAN,
    ST_DONE
};

enum { SL_OPEN, SL_READ, SL_WRITE, SL_FSYNC, SL_CLOSE, SL_NAME, SL_BG, SL_N };

typedef struct kslot {
    kv__op op;
    kop *k;
    int res;
    bool busy;
} kslot;

/* Per-request bookkeeping (req->bpriv). */
typedef struct freq {
    size_t remaining;
    int err;
    char *msg;
} freq;

/* One record operation: one item of a has/get/put/delete request. */
struct kop {
    fs_state *fs;
    kv__req *req;
    kv__item *it;
    enum kkind kind;
    enum kstate state;
    bool want_value;
    bool canceled;
    bool done;
    bool fsync_in_chain;
    unsigned pending; /* CQEs still to come */
    kslot sl[SL_N];
    char *dirpath;
    char *fname; /* base + ".kv" */
    char tmpname[TMPNAME_SIZE];
    fsdir *dir; /* held (users) while set */
    waiter dw;
    int fd;
    bool tmp_exists;
    int retries;
    struct open_how how;
    unsigned char rhdr[HDR_SIZE];
    unsigned char whdr[HDR_SIZE];
    uint64_t new_token;
    uint64_t cur_size;  /* the record's length when its header was read */
    spare *sp;          /* the spare reused, or kept for the one made */
    spare *sp_made;     /* the file its exchange replaced, until synced */
    uint64_t foreign_mark; /* fs->foreign_gen when the exchange was sent */
    bool foreign;       /* runs outside a key queue (counted in nforeign) */
    bool reused;        /* tmpname is a spare being overwritten */
    bool no_spare;      /* opening a spare failed: create a temp file */
    bool exch;          /* the rename is a RENAME_EXCHANGE (reserved) */
    bool put_counted;   /* counted in fs->nputs */
    struct iovec iov[2];
    uint64_t woff, wtotal;
    unsigned char *rbuf;
    size_t rcap, rgot, rreq;
    int err;
    char *errmsg;
    keyq *kq;
    kop *qnext; /* key queue */
    kop *gnext; /* directory sync / token wait lists */
    kop *anext, *aprev; /* every live kop */
    kop *dnext, *dprev; /* fs->adm_head queue while ST_ADMIT */
    bool admitted;      /* counted in fs->nrun */
};

struct keyq {
    hlink hl;          /* in fs->keyqs, hashed by key */
    const kv_key *key; /* borrowed from the head kop */
    kop *head, *tail;
};

/* A deferred completion (NOP through the ring, or a pool job). */
typedef struct fdefer {
    kv__op op;
    kv__job job;
    fs_state *fs;
    kv__req *req;
    int status;
    char *msg;
    bool is_close;
} fdefer;

/* A pool job of the backend (query fetch, dispose, drop). */
typedef struct fjob {
    kv__job job;
    fs_state *fs;
    kv__req *req;
    cursor *c;
    int status;
    char msg[256];
    kv__item *items;
    size_t n;
    bool eof;
    struct fjob *next, *prev;
} fjob;

struct fs_state {
    kv_store *store;
    kv_loop *loop;
    kv_pool *pool;
    char *root;
    int rootfd, lockfd, tokfd;
    unsigned depth, flags;
    bool nofsync, readonly, use_openat2;
    bool fanout; /* records in FANOUT bucket directories (KV_FS_FANOUT) */
    /* tokens */
    uint64_t tok_next, tok_hwm, tok_gen, tok_new;
    bool tok_refilling;
    int tok_err;
    unsigned tok_pending;
    int tok_wres, tok_fres;
    unsigned char tok_buf[TOK_SLOT];
    kv__op tok_wop, tok_fop;
    kop *tok_head, *tok_tail;
    /* key queues */
    htab keyqs;
    /* directories */
    htab dirs;
    fsdir *rootdir;
    fsdir *dirs_all;
    fsdir *lru_head, *lru_tail;
    size_t nidle;
    /* accounting */
    size_t nsqe, njobs, nkops;
    kop *kops;
    fjob *jobs;
    cursor *cursors;
    uint64_t tmp_seq;
    bool in_submit, in_close;
    /* spare files: kept while puts run (nputs > 0), oldest first */
    spare *sp_head, *sp_tail;
    unsigned nspares;
    uint64_t spare_bytes;
    size_t nputs;       /* puts started and not finished */
    /* Readers outside the key queues (query fetches, kops run unordered
     * after an allocation failure): running now, and started ever.  A
     * replaced file is kept as a spare only if none ran during its
     * exchange. */
    unsigned nforeign;
    uint64_t foreign_gen;
    unsigned ndrops;    /* drop jobs in flight */
    bool no_exchange;   /* the file system refused RENAME_EXCHANGE */
    /* Admission: at most maxrun kops run at once (descriptors). */
    size_t nrun, maxrun;
    kop *adm_head, *adm_tail;
    bool admitting;
    /* Completions defer_any could not allocate for (see there). */
    kv__req *oom_ok, *oom_err;
    kv__job oom_job;
    bool oom_busy;
    bool closing, closed;
    kv__req *close_req;
    uint64_t stats[16]; /* STAT_* */
};

/* stats[] indices, read by kv__fs_stats */
enum {
    STAT_PUTS,
    STAT_DELS,
    STAT_GETS,
    STAT_FILE_FSYNC,
    STAT_DIR_FSYNC,
    STAT_MKDIR,
    STAT_SHORT_WRITES,
    STAT_TMP_LEAKS,
    STAT_RECYCLED, /* puts that overwrote a spare file */
    STAT_EXCHANGED, /* puts that left the replaced file as a spare */
    STAT_N
};

/* For tests and benchmarks: the counters above (KV__FS_NSTATS values). */
#define KV__FS_NSTATS 10
_Static_assert(STAT_N == KV__FS_NSTATS && STAT_N <= 16,
               "kv__fs_stats fills STAT_N values");
void kv__fs_stats(const kv_store *s, uint64_t out[KV__FS_NSTATS]);

/* ------------------------------------------------------------------------ */
/* Ring, completion and request helpers                                     */
/* ------------------------------------------------------------------------ */

static void fs_check_closed(fs_state *fs);

/* A negated errno or a KV code, as a KV code. */
static int to_kv(int res)
{
    if (res <= KV_ERROR && res >= KV_ENOMEM)
        return res;
    return kv__from_errno(res);
}

/* n SQEs; each must be armed so that its CQE decrements nsqe. */
static int ring_get(fs_state *fs, struct io_uring_sqe **sqes, unsigned n)
{
    int rc = kv__loop_sqes(fs->loop, sqes, n);
    if (rc == KV_OK)
        fs->nsqe += n;
    return rc;
}

/* openat2(dfd, name) with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or openat
 * with O_NOFOLLOW where the kernel lacks IORING_OP_OPENAT2.  how must live
 * until the CQE. */
static void prep_open(fs_state *fs, struct io_uring_sqe *sqe, int dfd,
                      const char *name, int flags, mode_t mode,
                      struct open_how *how)
{
    flags |= O_NOFOLLOW | O_CLOEXEC;
    if (fs->use_openat2) {
        memset(how, 0, sizeof *how);
        how->flags = (uint64_t)(unsigned)flags;
        how->mode = (flags & O_CREAT) ? mode : 0;
        how->resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        io_uring_prep_openat2(sqe, dfd, name, how);
    } else {
        io_uring_prep_openat(sqe, dfd, name, flags, mode);
    }
}

static void req_finish(kv__req *req, int status, const char *msg)
{
    if (msg != NULL && msg[0] != '\0')
        kv__req_done(req, status, "%s", msg);
    else
        kv__req_done(req, status, NULL);
}

/* Complete d's request (its NOP or job already uncounted).  After the
 * close request completes, fs may be gone: touch it no more. */
static void defer_fire(fdefer *d)
{
    fs_state *fs = d->fs;
    bool last = d->is_close;
    kv__req *req = d->req;
    int st = d->status;
    char *msg = d->msg;
    kv__free(d);
    req_finish(req, st, msg);
    kv__free(msg);
    if (!last)
        fs_check_closed(fs);
}

static void defer_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    fdefer *d = KV__CONTAINER_OF(op, fdefer, op);
    d->fs->nsqe--;
    defer_fire(d);
}

static void defer_work(kv__job *job)
{
    (void)job;
}

static void defer_job_done(kv__job *job, int status)
{
    (void)status;
    fdefer *d = KV__CONTAINER_OF(job, fdefer, job);
    d->fs->njobs--;
    defer_fire(d);
}

/*
 * The fallback of defer_any without memory: req waits on one of two lists
 * (linked through req->bpriv, free by then) for the embedded oom_job, which
 * completes it with KV_OK or, for any other status, KV_ENOMEM (the message
 * is lost too).  The close request completes last: fs may be gone after.
 */
static void defer_oom_done(kv__job *job, int status)
{
    (void)status;
    fs_state *fs = KV__CONTAINER_OF(job, fs_state, oom_job);
    kv__req *lists[2] = {fs->oom_ok, fs->oom_err};
    fs->oom_ok = fs->oom_err = NULL;
    fs->oom_busy = false;
    fs->njobs--;
    kv__req *close_req = NULL;
    int close_st = KV_OK;
    for (int i = 0; i < 2; i++) {
        while (lists[i] != NULL) {
            kv__req *req = lists[i];
            lists[i] = req->bpriv;
            req->bpriv = NULL;
            if (req->op == KV__OP_CLOSE) {
                close_req = req;
                close_st = i == 0 ? KV_OK : KV_ENOMEM;
                continue;
            }
            req_finish(req, i == 0 ? KV_OK : KV_ENOMEM, NULL);
        }
    }
    if (close_req != NULL) {
        req_finish(close_req, close_st, NULL);
        return;
    }
    fs_check_closed(fs);
}

static void defer_oom(fs_state *fs, kv__req *req, int status)
{
    kv__req **list = status == KV_OK ? &fs->oom_ok : &fs->oom_err;
    req->bpriv = *list;
    *list = req;
    if (fs->oom_busy)
        return;
    fs->oom_busy = true;
    memset(&fs->oom_job, 0, sizeof fs->oom_job);
    fs->oom_job.work = defer_work;
    fs->oom_job.done = defer_oom_done;
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &fs->oom_job);
}

/*
 * Complete req later, from a CQE (a NOP) or, if the ring refuses, a pool
 * job: submit, cancel and close must not complete a request themselves.
 * msg is owned (may be NULL).
 */
static void defer_any(fs_state *fs, kv__req *req, int status, char *msg,
                      bool is_close)
{
    fdefer *d = kv__calloc(1, sizeof *d);
    if (d == NULL) {
        /* Out of memory: still never inline (the caller may be inside
         * kv_iter_free, which must not see its iterator freed under it). */
        kv__free(msg);
        defer_oom(fs, req, status);
        return;
    }
    d->fs = fs;
    d->req = req;
    d->status = status;
    d->msg = msg;
    d->is_close = is_close;
    d->op.cb = defer_cqe;
    struct io_uring_sqe *sqe;
    if (ring_get(fs, &sqe, 1) == KV_OK) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, (uintptr_t)&d->op);
        return;
    }
    d->job.work = defer_work;
    d->job.done = defer_job_done;
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &d->job);
}

static void defer_done(fs_state *fs, kv__req *req, int status, char *msg)
{
    defer_any(fs, req, status, msg, false);
}

/* Finish a whole request: inline from CQE and job callbacks, deferred from
 * inside submit / cancel / close. */
static void req_end(fs_state *fs, kv__req *req, int status, char *msg)
{
    if (fs->in_submit || fs->in_close)
        defer_done(fs, req, status, msg);
    else {
        req_finish(req, status, msg);
        kv__free(msg);
    }
}

/* ------------------------------------------------------------------------ */
/* Tokens                                                                   */
/* ------------------------------------------------------------------------ */

static void tok_slot_make(unsigned char b[TOK_SLOT], uint64_t gen,
                          uint64_t hwm)
{
    memset(b, 0, TOK_SLOT);
    put32(b, TOK_MAGIC);
    put32(b + 4, 1);
    put64(b + 8, gen);
    put64(b + 16, hwm);
    put32(b + 24, crc32c(b, 24));
}

static bool tok_slot_parse(const unsigned char b[TOK_SLOT], uint64_t *gen,
                           uint64_t *hwm)
{
    if (get32(b) != TOK_MAGIC || get32(b + 4) != 1 ||
        get32(b + 24) != crc32c(b, 24))
        return false;
    *gen = get64(b + 8);
    *hwm = get64(b + 16);
    return true;
}

static void kop_token_ready(kop *k);

static void tok_wake(fs_state *fs)
{
    kop *k = fs->tok_head;
    fs->tok_head = fs->tok_tail = NULL;
    while (k != NULL) {
        kop *next = k->gnext;
        k->gnext = NULL;
        kop_token_ready(k);
        k = next;
    }
}

static void tok_cqe_common(fs_state *fs)
{
    fs->nsqe--;
    if (--fs->tok_pending > 0)
        return;
    fs->tok_refilling = false;
    int err = 0;
    if (fs->tok_wres < 0)
        err = fs->tok_wres;
    else if (fs->tok_wres != (int)TOK_SLOT)
        err = -EIO;
    else if (!fs->nofsync && fs->tok_fres < 0)
        err = fs->tok_fres;
    if (err == 0) {
        fs->tok_hwm = fs->tok_new;
        fs->tok_gen++;
    } else if (!fs->closing) {
        /* The kops waiting for this block fail with the error. */
        fs->tok_err = to_kv(err);
    }
    tok_wake(fs);
    /*
     * Not sticky: no token of the new block was handed out, the other slot
     * still holds the durable high-water mark, and the next refill rewrites
     * this whole slot (same generation) before fsyncing it again, so it can
     * retry safely; meanwhile the tokens already reserved are still good.
     */
    if (err != 0)
        fs->tok_err = KV_OK;
    fs_check_closed(fs);
}

static void tok_wcqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fs_state *fs = KV__CONTAINER_OF(op, fs_state, tok_wop);
    fs->tok_wres = res;
    tok_cqe_common(fs);
}

static void tok_fcqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fs_state *fs = KV__CONTAINER_OF(op, fs_state, tok_fop);
    fs->tok_fres = res;
    tok_cqe_common(fs);
}

/* Reserve the next block through the ring: write the other slot, fsync. */
static int tok_refill(fs_state *fs)
{
    if (fs->tok_refilling)
        return KV_OK;
    if (fs->tok_err != KV_OK)
        return fs->tok_err;
    if (fs->tok_hwm > UINT64_MAX - TOKEN_BLOCK) {
        fs->tok_err = KV_ECORRUPT;
        return fs->tok_err;
    }
    unsigned n = fs->nofsync ? 1 : 2;
    struct io_uring_sqe *sq[2];
    int rc = ring_get(fs, sq, n);
    if (rc != KV_OK)
        return rc;
    uint64_t gen = fs->tok_gen + 1;
    fs->tok_new = fs->tok_hwm + TOKEN_BLOCK;
    tok_slot_make(fs->tok_buf, gen, fs->tok_new);
    io_uring_prep_write(sq[0], fs->tokfd, fs->tok_buf, TOK_SLOT,
                        (gen & 1) * TOK_SLOT_OFF);
    io_uring_sqe_set_data64(sq[0], (uintptr_t)&fs->tok_wop);
    if (n == 2) {
        sq[0]->flags |= IOSQE_IO_LINK;
        io_uring_prep_fsync(sq[1], fs->tokfd, 0);
        io_uring_sqe_set_data64(sq[1], (uintptr_t)&fs->tok_fop);
        fs->stats[STAT_FILE_FSYNC]++;
    }
    fs->tok_wres = fs->tok_fres = 0;
    fs->tok_pending = n;
    fs->tok_refilling = true;
    return KV_OK;
}

/* 1 and a token, 0 if the caller must wait for tok_wake, or an error. */
static int tok_take(fs_state *fs, uint64_t *out)
{
    if (fs->tok_err != KV_OK)
        return fs->tok_err;
    if (fs->tok_next < fs->tok_hwm) {
        *out = fs->tok_next++;
        if (fs->tok_hwm - fs->tok_next < TOKEN_BLOCK / 2)
            (void)tok_refill(fs); /* retried by the next take on failure */
        return 1;
    }
    int rc = tok_refill(fs);
    return rc != KV_OK ? rc : 0;
}

/* ------------------------------------------------------------------------ */
/* Directories                                                              */
/* ------------------------------------------------------------------------ */

static void dir_start(fsdir *d);
static void dir_submit_open(fsdir *d);
static bool dir_use(fsdir *d, waiter *w, bool create);
static void kop_synced(kop *k, int res);

static fsdir *dir_lookup(fs_state *fs, const char *path, uint64_t h)
{
    for (hlink *l = htab_bucket(&fs->dirs, h); l != NULL; l = l->next) {
        fsdir *d = KV__CONTAINER_OF(l, fsdir, hl);
        if (l->hash == h && strcmp(d->path, path) == 0)
            return d;
    }
    return NULL;
}

static void dir_table_remove(fs_state *fs, fsdir *d)
{
    htab_unlink(&fs->dirs, &d->hl);
}

static void lru_remove(fs_state *fs, fsdir *d)
{
    if (!d->in_lru)
        return;
    if (d->lprev)
        d->lprev->lnext = d->lnext;
    else
        fs->lru_head = d->lnext;
    if (d->lnext)
        d->lnext->lprev = d->lprev;
    else
        fs->lru_tail = d->lprev;
    d->lprev = d->lnext = NULL;
    d->in_lru = false;
    fs->nidle--;
}

static void lru_push(fs_state *fs, fsdir *d)
{
    d->lprev = NULL;
    d->lnext = fs->lru_head;
    if (fs->lru_head)
        fs->lru_head->lprev = d;
    else
        fs->lru_tail = d;
    fs->lru_head = d;
    d->in_lru = true;
    fs->nidle++;
}

/* Free d (and then its parent) once nothing refers to it. */
static void dir_maybe_free(fsdir *d)
{
    while (d != NULL && !d->is_root && d->users == 0 && d->nobj == 0 &&
           d->state == D_CLOSED && d->wait_head == NULL && !d->syncing &&
           d->ready_head == NULL && !d->in_lru) {
        fs_state *fs = d->fs;
        fsdir *p = d->parent;
        if (!d->stale)
            dir_table_remove(fs, d);
        if (d->all_prev)
            d->all_prev->all_next = d->all_next;
        else
            fs->dirs_all = d->all_next;
        if (d->all_next)
            d->all_next->all_prev = d->all_prev;
        kv__free(d->path);
        kv__free(d);
        p->nobj--;
        d = p;
    }
}

/* The directory whose slot op completed (its SQE uncounted). */
static fsdir *dir_of_cqe(kv__op *op)
{
    fsdir *d = ((dslot *)(void *)op)->d;
    d->fs->nsqe--;
    return d;
}

static void d_close_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)res; /* a directory close error loses nothing */
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    d->fd = -1;
    d->state = D_CLOSED;
    if (d->wait_head != NULL)
        dir_start(d);
    else
        dir_maybe_free(d);
    fs_check_closed(fs);
}

static void dir_close_ring(fsdir *d)
{
    fs_state *fs = d->fs;
    struct io_uring_sqe *sqe;
    d->state = D_CLOSING;
    if (ring_get(fs, &sqe, 1) != KV_OK) {
        /* Ring refused: a directory close does not block.  The object
         * is freed later (its next release, or teardown). */
        close(d->fd);
        d->fd = -1;
        d->state = D_CLOSED;
        return;
    }
    io_uring_prep_close(sqe, d->fd);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&d->s_close.op);
}

static void dir_evict(fs_state *fs)
{
    while (fs->nidle > DIR_IDLE_MAX && fs->lru_tail != NULL) {
        fsdir *d = fs->lru_tail;
        lru_remove(fs, d);
        dir_close_ring(d);
    }
}

static void dir_release(fsdir *d)
{
    d->users--;
    if (d->users > 0 || d->is_root)
        return;
    if (d->state == D_OPEN) {
        if (d->stale || d->fs->closing) {
            if (!d->fs->closing)
                dir_close_ring(d);
        } else {
            lru_push(d->fs, d);
            dir_evict(d->fs);
        }
    } else {
        dir_maybe_free(d);
    }
}

/* Take d out of the table: later lookups make a fresh object. */
static void dir_invalidate(fsdir *d)
{
    if (d->is_root || d->stale)
        return;
    fs_state *fs = d->fs;
    dir_table_remove(fs, d);
    d->stale = true;
    if (d->in_lru) {
        lru_remove(fs, d);
        dir_close_ring(d);
    }
}

static void dir_cqe_open(kv__op *op, int res, uint32_t flags);
static void dir_cqe_mk(kv__op *op, int res, uint32_t flags);
static void dir_cqe_mksync(kv__op *op, int res, uint32_t flags);
static void dir_cqe_sync(kv__op *op, int res, uint32_t flags);

/* The object for path, made (with its parents) if needed.  NULL on OOM. */
static fsdir *dir_get(fs_state *fs, const char *path)
{
    if (path[0] == '\0')
        return fs->rootdir;
    uint64_t h = str_hash(path);
    fsdir *d = dir_lookup(fs, path, h);
    if (d != NULL)
        return d;
    const char *slash = strrchr(path, '/');
    char *ppath = kv__strndup(path, slash ? (size_t)(slash - path) : 0);
    if (ppath == NULL)
        return NULL;
    fsdir *p = dir_get(fs, ppath);
    kv__free(ppath);
    if (p == NULL)
        return NULL;
    if (htab_reserve(&fs->dirs) != KV_OK)
        goto oom;
    d = kv__calloc(1, sizeof *d);
    if (d == NULL)
        goto oom;
    d->path = kv__strdup(path);
    if (d->path == NULL) {
        kv__free(d);
        goto oom;
    }
    d->fs = fs;
    d->name = slash ? d->path + (slash - path) + 1 : d->path;
    d->hl.hash = h;
    d->fd = -1;
    d->state = D_CLOSED;
    d->parent = p;
    p->nobj++;
    d->s_open.op.cb = dir_cqe_open;
    d->s_mk.op.cb = dir_cqe_mk;
    d->s_mksync.op.cb = dir_cqe_mksync;
    d->s_sync.op.cb = dir_cqe_sync;
    d->s_close.op.cb = d_close_cqe;
    d->s_open.d = d->s_mk.d = d->s_mksync.d = d->s_sync.d = d->s_close.d = d;
    htab_link(&fs->dirs, &d->hl);
    d->all_next = fs->dirs_all;
    if (fs->dirs_all)
        fs->dirs_all->all_prev = d;
    fs->dirs_all = d;
    return d;
oom:
    dir_maybe_free(p);
    return NULL;
}

static bool dir_wants_create(const fsdir *d)
{
    for (const waiter *w = d->wait_head; w; w = w->next)
        if (w->create)
            return true;
    return false;
}

/*
 * Wake d's waiters with res (only those that do not need creation if
 * only_plain).  Each loses its user reference first when res < 0.
 */
static void dir_wake(fsdir *d, int res, bool only_plain)
{
    waiter *list = NULL, **tail = &list;
    waiter **pp = &d->wait_head;
    d->wait_tail = NULL;
    while (*pp != NULL) {
        waiter *w = *pp;
        if (only_plain && w->create) {
            d->wait_tail = w;
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = NULL;
        *tail = w;
        tail = &w->next;
    }
    d->users++; /* pin d while waking */
    while (list != NULL) {
        waiter *w = list;
        list = w->next;
        w->next = NULL;
        if (res < 0)
            d->users--;
        w->fn(w, res);
    }
    dir_release(d); /* unpin */
}

static void dir_fail(fsdir *d, int res)
{
    d->fd = -1;
    d->state = D_CLOSED;
    dir_wake(d, res, false);
}

/* d's open or creation failed with res while d held its parent. */
static void dir_abort(fsdir *d, int res)
{
    dir_release(d->parent);
    dir_fail(d, res);
}

static void dir_parent_ready(waiter *w, int res)
{
    fsdir *d = KV__CONTAINER_OF(w, fsdir, pw);
    if (res < 0) {
        dir_fail(d, res);
        return;
    }
    if (d->fs->closing) {
        dir_abort(d, KV_ECANCELED);
        return;
    }
    dir_submit_open(d);
}

static void dir_start(fsdir *d)
{
    d->state = D_WAITPARENT;
    d->tries = 0;
    d->pw.fn = dir_parent_ready;
    d->pw.next = NULL;
    bool create = dir_wants_create(d);
    if (d->fs->closing) {
        dir_fail(d, KV_ECANCELED);
        return;
    }
    if (dir_use(d->parent, &d->pw, create))
        dir_parent_ready(&d->pw, 0);
}

/*
 * Take a user reference on d for w.  True if d is open now (w->fn is not
 * called); otherwise w->fn(w, res) runs later (or at once on a synchronous
 * failure): with res 0 the reference is held, with res < 0 it was dropped.
 */
static bool dir_use(fsdir *d, waiter *w, bool create)
{
    d->users++;
    lru_remove(d->fs, d);
    if (d->state == D_OPEN)
        return true;
    w->create = create;
    w->next = NULL;
    if (d->wait_tail)
        d->wait_tail->next = w;
    else
        d->wait_head = w;
    d->wait_tail = w;
    if (create)
        for (fsdir *x = d; x->state == D_WAITPARENT && !x->pw.create;
             x = x->parent)
            x->pw.create = true;
    if (d->state == D_CLOSED)
        dir_start(d);
    return false;
}

/* The SQE of d's next step (opening or creating it, d holding its
 * parent), or NULL after d failed (the ring refused). */
static struct io_uring_sqe *dir_sqe(fsdir *d)
{
    struct io_uring_sqe *sqe;
    int rc = ring_get(d->fs, &sqe, 1);
    if (rc != KV_OK) {
        dir_abort(d, rc);
        return NULL;
    }
    return sqe;
}

/* Point sqe (prepared) at slot s of d, which enters state st. */
static void dir_arm(fsdir *d, struct io_uring_sqe *sqe, dslot *s,
                    enum dstate st)
{
    io_uring_sqe_set_data64(sqe, (uintptr_t)&s->op);
    d->state = st;
}

static void dir_submit_open(fsdir *d)
{
    struct io_uring_sqe *sqe = dir_sqe(d);
    if (sqe == NULL)
        return;
    prep_open(d->fs, sqe, d->parent->fd, d->name, O_RDONLY | O_DIRECTORY,
              0, &d->how);
    dir_arm(d, sqe, &d->s_open, D_OPENING);
}

static void dir_cqe_open(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res >= 0) {
        d->fd = res;
        d->state = D_OPEN;
        dir_release(d->parent);
        dir_wake(d, 0, false);
    } else if (res == -ENOENT && !fs->closing && !fs->readonly &&
               dir_wants_create(d) && d->tries++ < MAX_RETRY) {
        /* Readers learn now that it is missing; creators wait for mkdir. */
        dir_wake(d, -ENOENT, true);
        struct io_uring_sqe *sqe = dir_sqe(d);
        if (sqe != NULL) {
            io_uring_prep_mkdirat(sqe, d->parent->fd, d->name, 0755);
            dir_arm(d, sqe, &d->s_mk, D_MKDIR);
        }
    } else {
        dir_abort(d, res);
    }
    fs_check_closed(fs);
}

static void dir_cqe_mk(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res == 0)
        fs->stats[STAT_MKDIR]++;
    if (res != 0 && res != -EEXIST) {
        dir_abort(d, res);
    } else if (fs->nofsync) {
        dir_submit_open(d);
    } else {
        /* EEXIST too: whoever made it may not have made it durable yet.
         * The new entry is durable once its parent is fsynced. */
        struct io_uring_sqe *sqe = dir_sqe(d);
        if (sqe != NULL) {
            io_uring_prep_fsync(sqe, d->parent->fd, 0);
            dir_arm(d, sqe, &d->s_mksync, D_MKSYNC);
            fs->stats[STAT_DIR_FSYNC]++;
        }
    }
    fs_check_closed(fs);
}

static void dir_cqe_mksync(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res < 0)
        dir_abort(d, res);
    else
        dir_submit_open(d);
    fs_check_closed(fs);
}

/* Deliver res to every kop of a directory fsync's list. */
static void dir_synced_list(kop *k, int res)
{
    while (k != NULL) {
        kop *next = k->gnext;
        k->gnext = NULL;
        kop_synced(k, res);
        k = next;
    }
}

/* Group commit: one fsync of d covers every kop queued before it starts. */
static void dir_sync_start(fsdir *d)
{
    fs_state *fs = d->fs;
    struct io_uring_sqe *sqe;
    d->sync_head = d->ready_head;
    d->ready_head = d->ready_tail = NULL;
    d->syncing = true;
    int rc = ring_get(fs, &sqe, 1);
    if (rc != KV_OK) {
        kop *k = d->sync_head;
        d->sync_head = NULL;
        d->syncing = false;
        dir_synced_list(k, rc);
        return;
    }
    io_uring_prep_fsync(sqe, d->fd, 0);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&d->s_sync.op);
    d->sync_pos = kv__loop_ring(fs->loop)->sq.sqe_tail;
    fs->stats[STAT_DIR_FSYNC]++;
}

/*
 * True while d's fsync SQE still sits in the SQ, not yet flushed to the
 * kernel: it cannot have started, so it will cover every rename whose CQE
 * was already seen.  (liburing advances sq.sqe_head past an SQE when it
 * flushes it for io_uring_enter.)
 */
static bool dir_sync_unflushed(const fsdir *d)
{
    const struct io_uring *ring = kv__loop_ring(d->fs->loop);
    return (int)(d->sync_pos - ring->sq.sqe_head) > 0;
}

static void dir_sync_add(fsdir *d, kop *k)
{
    k->gnext = NULL;
    if (d->syncing && dir_sync_unflushed(d)) {
        /* Join the fsync that is about to be issued. */
        k->gnext = d->sync_head;
        d->sync_head = k;
        return;
    }
    if (d->ready_tail)
        d->ready_tail->gnext = k;
    else
        d->ready_head = k;
    d->ready_tail = k;
    if (!d->syncing)
        dir_sync_start(d);
}

static void dir_cqe_sync(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    kop *k = d->sync_head;
    d->sync_head = NULL;
    d->syncing = false;
    /* Start the next round first: its kops hold d open. */
    if (d->ready_head != NULL)
        dir_sync_start(d);
    dir_synced_list(k, res);
    fs_check_closed(fs);
}

/* ------------------------------------------------------------------------ */
/* Spare files                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Replacing a record by a new file frees the old file's inode and blocks
 * and allocates new ones for the next put: measured here that was half of
 * a durable put's CPU (ext4 without a journal discards freed blocks
 * synchronously and scans for an inode not recently freed).  So while
 * several puts run, a put that replaces a record renames with
 * RENAME_EXCHANGE: the new file takes the record's name and the old one
 * its temp name, and is kept as a spare of the directory.  A later put in
 * that directory opens a spare no bigger than its record instead of
 * creating a temp file, overwrites it from offset 0 (growing it if need
 * be) and fdatasyncs it: the file is not new, so its directory entry needs
 * no sync, and with the same length neither does its inode.  Then it
 * exchanges it in turn.
 *
 * Why this is safe:
 *  - A spare is a temp file (TMP_PREFIX): never read as a record, removed
 *    by the open after a crash like any temp file.  The exchange is as
 *    atomic as a rename and is followed by the same directory fsync.
 *  - A spare is overwritten only once the exchange that made it is
 *    durable: it becomes available when the directory fsync covering the
 *    exchange succeeds (kop_synced).  Before that a crash could bring back
 *    the record's old name on that very file, which must then still hold
 *    the old record.  (So KV_NO_FSYNC stores, which never sync the
 *    directory, do not recycle.)
 *  - Nothing reads a spare's old contents while it is overwritten.  Every
 *    record operation on its old key is ordered by the key queue, and
 *    closed its descriptor (or finished reading) before the put that made
 *    the spare started.  Query fetches read records by name on the pool:
 *    a file is kept as a spare only if no fetch ran at any time between
 *    the exchange's submission and its completion (foreign_gen,
 *    nforeign); later fetches find the new file under the record's name.
 *  - Spares exist only while puts run: one is kept only if another put is
 *    running, and the last put to finish removes them all (spares_drain),
 *    as do close and drop.  So a store at rest holds no temp file.
 *  - Bounded: SPARE_DIR_MAX per directory, SPARE_MAX and SPARE_BYTES per
 *    store (the oldest are removed to keep a new one; records bigger than
 *    SPARE_BYTES / 4 are not kept).  A directory with spares keeps its
 *    descriptor open.
 * Deletes and puts of new keys are unchanged (a put of a new key may still
 * use a spare, which then becomes the record).
 */

static void spare_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    spare *sp = KV__CONTAINER_OF(op, spare, op);
    fs_state *fs = sp->fs;
    fs->nsqe--;
    if (res < 0 && res != -ENOENT)
        fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
    dir_release(sp->d);
    kv__free(sp);
    fs_check_closed(fs);
}

/* Take sp out of its directory's list and the store's FIFO (its directory
 * reference stays with sp). */
static void spare_unlink(fs_state *fs, spare *sp)
{
    fsdir *d = sp->d;
    for (spare **pp = &d->spares; *pp != NULL; pp = &(*pp)->dnext)
        if (*pp == sp) {
            *pp = sp->dnext;
            break;
        }
    sp->dnext = NULL;
    d->nspares--;
    if (sp->fprev)
        sp->fprev->fnext = sp->fnext;
    else
        fs->sp_head = sp->fnext;
    if (sp->fnext)
        sp->fnext->fprev = sp->fprev;
    else
        fs->sp_tail = sp->fprev;
    sp->fprev = sp->fnext = NULL;
    fs->nspares--;
    fs->spare_bytes -= sp->size;
}

/* Remove sp's file (not in any list; holds a reference on sp->d, open). */
static void spare_drop(fs_state *fs, spare *sp)
{
    struct io_uring_sqe *sqe;
    sp->fs = fs;
    sp->op.cb = spare_cqe;
    if (ring_get(fs, &sqe, 1) != KV_OK) {
        fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
        dir_release(sp->d);
        kv__free(sp);
        return;
    }
    io_uring_prep_unlinkat(sqe, sp->d->fd, sp->name, 0);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&sp->op);
}

/* Remove every spare file (no put runs, close, drop). */
static void spares_drain(fs_state *fs)
{
    while (fs->sp_head != NULL) {
        spare *sp = fs->sp_head;
        spare_unlink(fs, sp);
        spare_drop(fs, sp);
    }
}

/* Keep sp (name and size set; holding a reference on d) as a spare of d,
 * removing the store's oldest spare if the store has SPARE_MAX. */
static void spare_keep(fs_state *fs, fsdir *d, spare *sp)
{
    while (fs->sp_head != NULL &&
           (fs->nspares >= SPARE_MAX ||
            fs->spare_bytes + sp->size > SPARE_BYTES)) {
        spare *old = fs->sp_head;
        spare_unlink(fs, old);
        spare_drop(fs, old);
    }
    sp->fs = fs;
    sp->d = d;
    sp->dnext = d->spares;
    d->spares = sp;
    d->nspares++;
    sp->fnext = NULL;
    sp->fprev = fs->sp_tail;
    if (fs->sp_tail)
        fs->sp_tail->fnext = sp;
    else
        fs->sp_head = sp;
    fs->sp_tail = sp;
    fs->nspares++;
    fs->spare_bytes += sp->size;
}

/* A spare of d to overwrite with a record of need bytes (one of that
 * length if any, else a shorter one), out of the lists; the caller takes
 * over its file and the directory reference is dropped (the caller holds
 * its own).  NULL if none fits. */
static spare *spare_take(fs_state *fs, fsdir *d, uint64_t need)
{
    spare *best = NULL;
    for (spare *sp = d->spares; sp != NULL; sp = sp->dnext) {
        if (sp->size == need) {
            best = sp;
            break;
        }
        if (sp->size < need && best == NULL)
            best = sp;
    }
    if (best != NULL) {
        spare_unlink(fs, best);
        dir_release(d);
    }
    return best;
}

/* Whether k (a put replacing a record, about to send its rename) should
 * exchange and keep the replaced file as a spare; reserves its place. */
static bool exch_want(kop *k)
{
    fs_state *fs = k->fs;
    fsdir *d = k->dir;
    if (k->cur_size == 0 || k->cur_size > SPARE_BYTES / 4 ||
        fs->nofsync || fs->no_exchange || fs->closing || fs->nputs < 2 ||
        fs->nforeign > 0 || fs->ndrops > 0 || d->stale ||
        d->nspares + d->nexch >= SPARE_DIR_MAX)
        return false;
    if (k->sp == NULL && (k->sp = kv__calloc(1, sizeof *k->sp)) == NULL)
        return false;
    d->nexch++;
    k->foreign_mark = fs->foreign_gen;
    return true;
}

static void exch_release(kop *k)
{
    if (k->exch) {
        k->exch = false;
        k->dir->nexch--;
    }
}

/* Whether a spare of d may be kept now. */
static bool spare_keepable(fs_state *fs, fsdir *d)
{
    return !fs->closing && fs->nputs > 1 && fs->ndrops == 0 && !d->stale &&
           d->nspares < SPARE_DIR_MAX;
}

/* k's exchange succeeded: its temp name now holds the replaced record's
 * file.  It may become a spare once the exchange is durable (spare_synced)
 * if no reader outside the key queues could have it open; else remove
 * it. */
static void spare_made(kop *k)
{
    fs_state *fs = k->fs;
    fsdir *d = k->dir;
    spare *sp = k->sp;
    k->sp = NULL;
    exch_release(k);
    fs->stats[STAT_EXCHANGED]++;
    memcpy(sp->name, k->tmpname, sizeof sp->name);
    sp->size = k->cur_size;
    sp->d = d;
    d->users++; /* the spare's reference (k holds one: d stays open) */
    if (fs->nforeign == 0 && fs->foreign_gen == k->foreign_mark &&
        spare_keepable(fs, d))
        k->sp_made = sp;
    else
        spare_drop(fs, sp);
}

/* k's directory fsync completed with res: keep the file its exchange
 * replaced as a spare (the exchange is durable), or remove it. */
static void spare_synced(kop *k, int res)
{
    spare *sp = k->sp_made;
    if (sp == NULL)
        return;
    k->sp_made = NULL;
    if (res >= 0 && spare_keepable(k->fs, sp->d))
        spare_keep(k->fs, sp->d, sp);
    else
        spare_drop(k->fs, sp);
}

/* ------------------------------------------------------------------------ */
/* Per-key FIFO queues                                                      */
/* ------------------------------------------------------------------------ */

static keyq *kq_find(fs_state *fs, const kv_key *key, uint64_t h)
{
    for (hlink *l = htab_bucket(&fs->keyqs, h); l != NULL; l = l->next) {
        keyq *q = KV__CONTAINER_OF(l, keyq, hl);
        if (l->hash == h && kv_key_equal(q->key, key))
            return q;
    }
    return NULL;
}

static int kq_add(fs_state *fs, keyq *q)
{
    int rc = htab_reserve(&fs->keyqs);
    if (rc == KV_OK)
        htab_link(&fs->keyqs, &q->hl);
    return rc;
}

static void kq_remove(fs_state *fs, keyq *q)
{
    htab_unlink(&fs->keyqs, &q->hl);
    kv__free(q);
}

/* ------------------------------------------------------------------------ */
/* Record operations (loop thread, every file operation through the ring)  */
/* ------------------------------------------------------------------------ */

static void kop_start(kop *k);
static void kop_step(kop *k);

static void k_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    kslot *sl = (kslot *)(void *)op;
    kop *k = sl->k;
    fs_state *fs = k->fs;
    sl->res = res;
    sl->busy = false;
    fs->nsqe--;
    if (--k->pending == 0)
        kop_step(k);
    fs_check_closed(fs);
}

/* Point sqe at slot s of k; link it to the next SQE if link. */
static void k_arm(kop *k, struct io_uring_sqe *sqe, int s, bool link)
{
    io_uring_sqe_set_data64(sqe, (uintptr_t)&k->sl[s].op);
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    k->sl[s].busy = true;
    k->sl[s].res = 0;
    k->pending++;
}

/*
 * Admission.  Every running kop holds a descriptor (record or temp file)
 * and pins its directory's, so a batch of 100,000 records (or as many
 * single operations in flight) must not start at once: it would hit
 * RLIMIT_NOFILE (EMFILE).  At most fs->maxrun kops run; the others wait,
 * in order, in a FIFO, and each finished kop admits the next.
 */
static void adm_unlink(fs_state *fs, kop *k)
{
    if (k->dprev != NULL)
        k->dprev->dnext = k->dnext;
    else
        fs->adm_head = k->dnext;
    if (k->dnext != NULL)
        k->dnext->dprev = k->dprev;
    else
        fs->adm_tail = k->dprev;
    k->dnext = k->dprev = NULL;
}

/* True if k may run now; else k waits in the FIFO. */
static bool kop_admit(kop *k)
{
    fs_state *fs = k->fs;
    if (k->admitted)
        return true;
    if (fs->nrun >= fs->maxrun || (fs->adm_head != NULL && !fs->admitting)) {
        k->state = ST_ADMIT;
        k->dprev = fs->adm_tail;
        k->dnext = NULL;
        if (fs->adm_tail != NULL)
            fs->adm_tail->dnext = k;
        else
            fs->adm_head = k;
        fs->adm_tail = k;
        return false;
    }
    k->admitted = true;
    fs->nrun++;
    return true;
}

/* Start waiting kops while slots are free (never recursively: a kop that
 * finishes at once would otherwise nest one call per waiting kop). */
static void admit_waiting(fs_state *fs)
{
    if (fs->admitting)
        return;
    fs->admitting = true;
    while (fs->adm_head != NULL && fs->nrun < fs->maxrun) {
        kop *k = fs->adm_head;
        adm_unlink(fs, k);
        k->state = ST_NEW;
        kop_start(k);
    }
    fs->admitting = false;
}

static kop *kop_new(fs_state *fs, kv__req *req, kv__item *it,
                    enum kkind kind)
{
    kop *k = kv__calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    char *base = NULL;
    unsigned b = 0;
    if (key_paths(it->key, &k->dirpath, &base, &b) != KV_OK) {
        kv__free(k);
        return NULL;
    }
    k->fname = kv__asprintf("%s.kv", base);
    kv__free(base);
    if (k->fname != NULL && fs->fanout) {
        /* The record's directory is its bucket. */
        char bn[BUCKET_NAME_SIZE];
        bucket_name(bn, b);
        char *bp = child_dir_path(k->dirpath, bn);
        kv__free(k->dirpath);
        k->dirpath = bp;
    }
    if (k->fname == NULL || k->dirpath == NULL) {
        kv__free(k->fname);
        kv__free(k->dirpath);
        kv__free(k);
        return NULL;
    }
    k->fs = fs;
    k->req = req;
    k->it = it;
    k->kind = kind;
    k->state = ST_NEW;
    k->want_value = req->want_value;
    k->fd = -1;
    for (int i = 0; i < SL_N; i++) {
        k->sl[i].op.cb = k_cqe;
        k->sl[i].k = k;
    }
    k->anext = fs->kops;
    if (fs->kops)
        fs->kops->aprev = k;
    fs->kops = k;
    fs->nkops++;
    return k;
}

static void kop_free(kop *k)
{
    fs_state *fs = k->fs;
    if (k->aprev)
        k->aprev->anext = k->anext;
    else
        fs->kops = k->anext;
    if (k->anext)
        k->anext->aprev = k->aprev;
    fs->nkops--;
    kv__free(k->sp);
    kv__free(k->rbuf);
    kv__free(k->dirpath);
    kv__free(k->fname);
    kv__free(k->errmsg);
    kv__free(k);
}

static void k_msg(kop *k, const char *what, int res)
{
    if (k->errmsg != NULL || k->it == NULL)
        return;
    k->errmsg = kv__asprintf("fs: %s %s: %s", what, kv_key_id(k->it->key),
                             kv_strerror(res));
}

/* Deliver k's result, advance its key queue, maybe complete its request. */
static void kop_finish(kop *k, int status)
{
    fs_state *fs = k->fs;
    if (k->done)
        return;
    k->done = true;
    k->state = ST_DONE;
    kv__req *req = k->req;
    kv__item *it = k->it;
    freq *fr = req->bpriv;
    if (fs->closing && status == KV_OK)
        status = KV_ECANCELED;
    it->status = status;
    if (status == KV_OK) {
        if (k->kind == K_PUT) {
            it->token = k->new_token;
            fs->stats[STAT_PUTS]++;
        } else if (k->kind == K_DEL) {
            fs->stats[STAT_DELS]++;
        } else {
            fs->stats[STAT_GETS]++;
        }
    } else if (status != KV_ECONFLICT && status != KV_ENOTFOUND) {
        if (fr->err == KV_OK) {
            fr->err = status;
            fr->msg = k->errmsg;
            k->errmsg = NULL;
        }
    }
    if (k->dir != NULL) {
        exch_release(k);
        if (k->sp_made != NULL)
            spare_synced(k, -ECANCELED); /* (not reached: safety) */
        dir_release(k->dir);
        k->dir = NULL;
    }
    kv__free(k->sp); /* an unused spare record (its file is gone or ours) */
    k->sp = NULL;
    if (k->admitted) {
        k->admitted = false;
        fs->nrun--;
    }
    if (k->put_counted) {
        k->put_counted = false;
        fs->nputs--;
    }
    if (k->foreign) {
        k->foreign = false;
        fs->nforeign--;
    }
    kop *next = NULL;
    keyq *q = k->kq;
    if (q != NULL) {
        k->kq = NULL;
        q->head = k->qnext;
        if (q->head == NULL) {
            q->tail = NULL;
            kq_remove(fs, q);
        } else {
            q->key = q->head->it->key;
            next = q->head;
        }
    }
    k->qnext = NULL;
    k->req = NULL;
    k->it = NULL;
    bool last = --fr->remaining == 0;
    if (k->pending == 0)
        kop_free(k);
    if (next != NULL)
        kop_start(next);
    admit_waiting(fs);
    if (fs->nputs == 0 && fs->sp_head != NULL)
        spares_drain(fs); /* no put left to use them */
    /* Last: completing a request may re-enter submit (iterators). */
    if (last) {
        req->bpriv = NULL;
        int err = fr->err;
        char *msg = fr->msg;
        kv__free(fr);
        req_end(fs, req, err, msg);
    }
}

/* Close in the background; k stays alive until the CQE. */
static void k_bg_close(kop *k)
{
    if (k->fd < 0)
        return;
    struct io_uring_sqe *sqe;
    if (ring_get(k->fs, &sqe, 1) != KV_OK) {
        close(k->fd);
    } else {
        io_uring_prep_close(sqe, k->fd);
        k_arm(k, sqe, SL_BG, false);
    }
    k->fd = -1;
}

/* Fail: close the descriptor, unlink the temp file, then finish. */
static void k_cleanup(kop *k, int status)
{
    k->err = status;
    unsigned n = (k->fd >= 0) + (k->tmp_exists && k->dir != NULL);
    if (n == 0) {
        kop_finish(k, status);
        return;
    }
    struct io_uring_sqe *sq[2];
    if (ring_get(k->fs, sq, n) != KV_OK) {
        if (k->fd >= 0)
            close(k->fd);
        k->fd = -1;
        if (k->tmp_exists)
            k->fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
        k->tmp_exists = false;
        kop_finish(k, status);
        return;
    }
    unsigned i = 0;
    if (k->fd >= 0) {
        io_uring_prep_close(sq[i], k->fd);
        k_arm(k, sq[i++], SL_CLOSE, false);
    }
    if (k->tmp_exists && k->dir != NULL) {
        io_uring_prep_unlinkat(sq[i], k->dir->fd, k->tmpname, 0);
        k_arm(k, sq[i], SL_NAME, false);
    }
    k->state = ST_CLEAN;
}

static void k_fail(kop *k, const char *what, int res)
{
    k_msg(k, what, res);
    k_cleanup(k, to_kv(res));
}

static bool k_stop(const kop *k)
{
    return k->fs->closing || k->canceled;
}

/* If k must stop (close, cancel): release what it holds, finish it with
 * KV_ECANCELED and return true. */
static bool k_canceled(kop *k)
{
    if (!k_stop(k))
        return false;
    k_cleanup(k, KV_ECANCELED);
    return true;
}

/* n SQEs for k's next step; false after failing k if the ring refuses. */
static bool k_sqes(kop *k, struct io_uring_sqe **sq, unsigned n)
{
    int rc = ring_get(k->fs, sq, n);
    if (rc != KV_OK) {
        k_fail(k, "submit", rc);
        return false;
    }
    return true;
}

/* Read the record's header from k->rgot on, then close it (linked). */
static void k_read_hdr(kop *k, struct io_uring_sqe *sq[2])
{
    io_uring_prep_read(sq[0], k->fd, k->rhdr + k->rgot,
                       (unsigned)(HDR_SIZE - k->rgot), k->rgot);
    k_arm(k, sq[0], SL_READ, true);
    io_uring_prep_close(sq[1], k->fd);
    k_arm(k, sq[1], SL_CLOSE, false);
}

/* A directory vanished under k (a drop): forget it and its parents. */
static void dir_invalidate_up(fsdir *d)
{
    for (fsdir *x = d; x != NULL; x = x->parent)
        dir_invalidate(x);
}

static void k_open_record(kop *k)
{
    struct io_uring_sqe *sqe;
    if (!k_sqes(k, &sqe, 1))
        return;
    prep_open(k->fs, sqe, k->dir->fd, k->fname, O_RDONLY | O_NONBLOCK, 0,
              &k->how);
    k_arm(k, sqe, SL_OPEN, false);
    k->state = ST_OPEN;
}

static void k_dir_ready(waiter *w, int res)
{
    kop *k = KV__CONTAINER_OF(w, kop, dw);
    if (res < 0) {
        fsdir *d = k->dir; /* alive while its waiters run */
        k->dir = NULL;
        if (k_stop(k)) {
            kop_finish(k, KV_ECANCELED);
        } else if (res == -ENOENT && k->kind != K_PUT) {
            kop_finish(k, k->kind == K_DEL ? KV_ECONFLICT : KV_ENOTFOUND);
        } else if (res == -ENOENT && k->retries++ < MAX_RETRY) {
            dir_invalidate_up(d); /* then retry */
            kop_start(k);
        } else if (res == -ELOOP || res == -ENOTDIR) {
            k_msg(k, "a path component is a symlink or not a directory:",
                  res);
            kop_finish(k, KV_EBACKEND);
        } else {
            k_msg(k, "open directory of", res);
            kop_finish(k, to_kv(res));
        }
        return;
    }
    if (!k_canceled(k))
        k_open_record(k);
}

static void kop_start(kop *k)
{
    fs_state *fs = k->fs;
    if (k_canceled(k) || !kop_admit(k))
        return;
    if (k->kind == K_PUT && !k->put_counted) {
        k->put_counted = true;
        fs->nputs++;
    }
    fsdir *d = dir_get(fs, k->dirpath);
    if (d == NULL) {
        kop_finish(k, KV_ENOMEM);
        return;
    }
    k->state = ST_DIR;
    k->dir = d;
    k->dw.fn = k_dir_ready;
    if (dir_use(d, &k->dw, k->kind == K_PUT))
        k_dir_ready(&k->dw, 0);
}

static void put_tmp(kop *k);
static void put_rename(kop *k);

static void kop_token_ready(kop *k)
{
    if (k_canceled(k))
        return;
    int rc = tok_take(k->fs, &k->new_token);
    if (rc == 1) {
        put_tmp(k);
    } else if (rc == 0) {
        k->state = ST_TOKEN;
        k->gnext = NULL;
        if (k->fs->tok_tail)
            k->fs->tok_tail->gnext = k;
        else
            k->fs->tok_head = k;
        k->fs->tok_tail = k;
    } else {
        k_msg(k, "reserve a token for", rc);
        kop_finish(k, rc);
    }
}

/* The current token is cur (0: absent). */
static void put_cas(kop *k, uint64_t cur)
{
    if (k->it->token != cur) {
        kop_finish(k, KV_ECONFLICT);
        return;
    }
    if (k->new_token != 0)
        put_tmp(k); /* kept from an earlier attempt */
    else
        kop_token_ready(k);
}

static void put_tmp(kop *k)
{
    fs_state *fs = k->fs;
    if (k_canceled(k))
        return;
    int flags = O_WRONLY | O_CREAT | O_EXCL;
    spare *sp = k->no_spare ? NULL
                            : spare_take(fs, k->dir,
                                         HDR_SIZE + (uint64_t)k->it->len);
    k->reused = sp != NULL;
    if (sp != NULL) {
        /* Overwrite a spare file (see "Spare files"). */
        kv__free(k->sp);
        k->sp = sp;
        memcpy(k->tmpname, sp->name, sizeof k->tmpname);
        flags = O_WRONLY;
    } else {
        snprintf(k->tmpname, sizeof k->tmpname, TMP_PREFIX "%016" PRIx64,
                 fs->tmp_seq++);
    }
    struct io_uring_sqe *sqe;
    int rc = ring_get(fs, &sqe, 1);
    if (rc != KV_OK) {
        /* (A spare taken is gone from the lists, its file left over.) */
        if (k->reused)
            fs->stats[STAT_TMP_LEAKS]++;
        k->reused = false;
        k_fail(k, "submit", rc);
        return;
    }
    prep_open(fs, sqe, k->dir->fd, k->tmpname, flags, 0644, &k->how);
    k_arm(k, sqe, SL_OPEN, false);
    k->state = ST_TMP;
}

/* writev -> fsync -> close -> renameat, linked, from woff on. */
static void put_chain(kop *k)
{
    fs_state *fs = k->fs;
    uint64_t off = k->woff;
    unsigned niov;
    if (off < HDR_SIZE) {
        k->iov[0].iov_base = k->whdr + off;
        k->iov[0].iov_len = HDR_SIZE - off;
        k->iov[1].iov_base = k->it->val;
        k->iov[1].iov_len = k->it->len;
        niov = k->it->len > 0 ? 2 : 1;
    } else {
        k->iov[0].iov_base = (char *)k->it->val + (off - HDR_SIZE);
        k->iov[0].iov_len = k->it->len - (off - HDR_SIZE);
        niov = 1;
    }
    unsigned n = fs->nofsync ? 3 : 4, i = 0;
    struct io_uring_sqe *sq[4];
    if (!k_sqes(k, sq, n))
        return;
    io_uring_prep_writev(sq[i], k->fd, k->iov, niov, off);
    k_arm(k, sq[i++], SL_WRITE, true);
    k->fsync_in_chain = !fs->nofsync;
    if (k->fsync_in_chain) {
        /* A spare is not a new file: fdatasync writes its data and, if
         * it grew, its length; no directory entry, no timestamps. */
        io_uring_prep_fsync(sq[i], k->fd,
                            k->reused ? IORING_FSYNC_DATASYNC : 0);
        k_arm(k, sq[i++], SL_FSYNC, true);
    }
    io_uring_prep_close(sq[i], k->fd);
    k_arm(k, sq[i++], SL_CLOSE, true);
    io_uring_prep_renameat(sq[i], k->dir->fd, k->tmpname, k->dir->fd,
                           k->fname, k->exch ? RENAME_EXCHANGE : 0);
    k_arm(k, sq[i], SL_NAME, false);
    k->state = ST_WRITE;
}

static void kop_synced(kop *k, int res)
{
    spare_synced(k, res);
    if (res < 0) {
        /* Final: the rename may not survive a crash; never retried. */
        k_msg(k, "fsync directory of", res);
        kop_finish(k, to_kv(res));
    } else {
        kop_finish(k, KV_OK);
    }
}

/* The record was renamed / unlinked: sync its directory (group commit). */
static void k_committed(kop *k)
{
    if (k->fs->nofsync) {
        kop_finish(k, KV_OK);
        return;
    }
    k->state = ST_DSYNC;
    dir_sync_add(k->dir, k);
}

static void del_cas(kop *k, uint64_t cur)
{
    if (cur == 0 || k->it->token != cur) {
        kop_finish(k, KV_ECONFLICT);
        return;
    }
    struct io_uring_sqe *sqe;
    if (k_canceled(k) || !k_sqes(k, &sqe, 1))
        return;
    io_uring_prep_unlinkat(sqe, k->dir->fd, k->fname, 0);
    k_arm(k, sqe, SL_NAME, false);
    k->state = ST_UNLINK;
}

static void on_open(kop *k)
{
    int res = k->sl[SL_OPEN].res;
    if (res < 0) {
        if (res == -ENOENT) {
            k->cur_size = 0;
            if (k->kind == K_PUT)
                put_cas(k, 0);
            else
                kop_finish(k, k->kind == K_DEL ? KV_ECONFLICT
                                               : KV_ENOTFOUND);
        } else if (res == -ELOOP) {
            k_msg(k, "record file is a symlink:", res);
            kop_finish(k, KV_ECORRUPT);
        } else {
            k_fail(k, "open", res);
        }
        return;
    }
    k->fd = res;
    if (k_canceled(k))
        return;
    bool whole = k->kind == K_GET && k->want_value;
    unsigned n = whole ? 1 : 2;
    if (whole) {
        k->rcap = READ_FIRST;
        /* Zeroed: tools that cannot see the ring's writes (valgrind) would
         * take the buffer for uninitialised. */
        k->rbuf = kv__calloc(1, k->rcap);
        if (k->rbuf == NULL) {
            k_fail(k, "read", KV_ENOMEM);
            return;
        }
    }
    struct io_uring_sqe *sq[2];
    if (!k_sqes(k, sq, n))
        return;
    k->rgot = 0;
    if (whole) {
        k->rreq = k->rcap;
        io_uring_prep_read(sq[0], k->fd, k->rbuf, (unsigned)k->rreq, 0);
        k_arm(k, sq[0], SL_READ, false);
        k->state = ST_READ;
    } else {
        k_read_hdr(k, sq);
        k->state = ST_HDR;
    }
}

static void on_hdr(kop *k)
{
    int r = k->sl[SL_READ].res, c = k->sl[SL_CLOSE].res;
    if (c != -ECANCELED)
        k->fd = -1; /* closed, even if close reported an error */
    uint64_t tok = 0, vlen;
    uint32_t vcrc;
    if (r < 0) {
        k_fail(k, "read", r);
        return;
    }
    k->rgot += (size_t)r;
    if (k->rgot < HDR_SIZE && r > 0 && k->fd >= 0 && !k_stop(k)) {
        /* A short read is not the end of the file (only a read of 0 bytes
         * is): read the rest; the linked close was cancelled. */
        struct io_uring_sqe *sq[2];
        if (k_sqes(k, sq, 2))
            k_read_hdr(k, sq);
        return;
    }
    if (k->rgot < HDR_SIZE || !hdr_parse(k->rhdr, &tok, &vlen, &vcrc)) {
        k_msg(k, "corrupt record header of", KV_ECORRUPT);
        k_cleanup(k, KV_ECORRUPT);
        return;
    }
    k_bg_close(k); /* only if the linked close did not run */
    k->cur_size = HDR_SIZE + vlen;
    switch (k->kind) {
    case K_PUT:
        put_cas(k, tok);
        break;
    case K_DEL:
        del_cas(k, tok);
        break;
    default:
        k->it->token = tok;
        kop_finish(k, KV_OK);
        break;
    }
}

static void on_read(kop *k)
{
    int r = k->sl[SL_READ].res;
    if (r < 0) {
        k_fail(k, "read", r);
        return;
    }
    k->rgot += (size_t)r;
    bool eof = (size_t)r < k->rreq;
    uint64_t tok = 0, vlen = 0;
    uint32_t vcrc = 0;
    bool hdr_ok =
        k->rgot >= HDR_SIZE && hdr_parse(k->rbuf, &tok, &vlen, &vcrc);
    /* A short read is not the end of the file (a read of 0 bytes is):
     * before the record's announced end, read on. */
    if (eof && r > 0 && k->rgot < HDR_SIZE + (hdr_ok ? vlen : 0))
        eof = false;
    if (!hdr_ok && (eof || k->rgot >= HDR_SIZE))
        goto corrupt;
    if (!eof) {
        size_t total = HDR_SIZE + (size_t)vlen;
        if (k->rgot > total)
            goto corrupt; /* more bytes than the header says */
        if (k->rgot == k->rcap) {
            /* Room for the whole record and one byte more (to see EOF). */
            unsigned char *nb = kv__realloc(k->rbuf, total + 1);
            if (nb == NULL) {
                k_fail(k, "read", KV_ENOMEM);
                return;
            }
            memset(nb + k->rcap, 0, total + 1 - k->rcap);
            k->rbuf = nb;
            k->rcap = total + 1;
        }
        size_t want = k->rcap - k->rgot;
        k->rreq = want > (1u << 30) ? (1u << 30) : want;
        struct io_uring_sqe *sqe;
        if (!k_sqes(k, &sqe, 1))
            return;
        io_uring_prep_read(sqe, k->fd, k->rbuf + k->rgot, (unsigned)k->rreq,
                           k->rgot);
        k_arm(k, sqe, SL_READ, false);
        return;
    }
    if (k->rgot != HDR_SIZE + vlen ||
        crc32c(k->rbuf + HDR_SIZE, (size_t)vlen) != vcrc)
        goto corrupt;
    memmove(k->rbuf, k->rbuf + HDR_SIZE, (size_t)vlen);
    k->it->val = k->rbuf;
    k->it->len = (size_t)vlen;
    k->it->token = tok;
    k->rbuf = NULL;
    k_bg_close(k);
    kop_finish(k, KV_OK);
    return;
corrupt:
    k_msg(k, "corrupt record", KV_ECORRUPT);
    k_cleanup(k, KV_ECORRUPT);
}

static void on_tmp(kop *k)
{
    int res = k->sl[SL_OPEN].res;
    if (res >= 0) {
        k->fd = res;
        k->tmp_exists = true;
        if (k_canceled(k))
            return;
        if (k->reused)
            k->fs->stats[STAT_RECYCLED]++;
        hdr_make(k->whdr, k->new_token, k->it->val, k->it->len);
        k->woff = 0;
        k->wtotal = HDR_SIZE + (uint64_t)k->it->len;
        k->exch = exch_want(k);
        put_chain(k);
    } else if (k->reused) {
        /* The spare cannot be opened: remove it (if it is still there)
         * and create a temp file instead. */
        spare *sp = k->sp;
        k->sp = NULL;
        sp->d = k->dir;
        k->dir->users++; /* spare_drop's reference */
        spare_drop(k->fs, sp);
        k->reused = false;
        k->no_spare = true;
        put_tmp(k);
    } else if (res == -EEXIST && k->retries++ < MAX_RETRY) {
        put_tmp(k);
    } else if (res == -ENOENT && k->retries++ < MAX_RETRY) {
        /* The directory was removed (drop) after we opened it. */
        dir_invalidate_up(k->dir);
        dir_release(k->dir);
        k->dir = NULL;
        kop_start(k);
    } else {
        k_fail(k, "create temp file for", res);
    }
}

static void on_write(kop *k)
{
    fs_state *fs = k->fs;
    int w = k->sl[SL_WRITE].res;
    int f = k->fsync_in_chain ? k->sl[SL_FSYNC].res : 0;
    int c = k->sl[SL_CLOSE].res, r = k->sl[SL_NAME].res;
    if (c != -ECANCELED)
        k->fd = -1;
    if (k->fsync_in_chain && f != -ECANCELED)
        fs->stats[STAT_FILE_FSYNC]++;
    if (w < 0) {
        k_fail(k, "write", w);
        return;
    }
    k->woff += (uint64_t)w;
    if (k->woff < k->wtotal) {
        /* Short write: the rest of the chain was cancelled; resume. */
        fs->stats[STAT_SHORT_WRITES]++;
        if (w == 0 || k->fd < 0)
            k_fail(k, "write", -EIO);
        else if (!k_canceled(k))
            put_chain(k);
        return;
    }
    if (f < 0) {
        k_fail(k, "fsync", f); /* final: never retried */
        return;
    }
    if (c < 0) {
        k_fail(k, "close", c);
        return;
    }
    if (r < 0 && k->exch &&
        (r == -ENOENT || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOSYS)) {
        /* The record is gone (a drop), or the file system cannot
         * exchange: the file is complete and synced, rename it. */
        if (r != -ENOENT)
            fs->no_exchange = true;
        exch_release(k);
        put_rename(k);
        return;
    }
    if (r < 0) {
        k_fail(k, "rename", r);
        return;
    }
    k->tmp_exists = false;
    if (k->exch)
        spare_made(k);
    k_committed(k);
}

/* A plain rename of the synced temp file (after a refused exchange). */
static void put_rename(kop *k)
{
    struct io_uring_sqe *sqe;
    if (k_canceled(k) || !k_sqes(k, &sqe, 1))
        return;
    io_uring_prep_renameat(sqe, k->dir->fd, k->tmpname, k->dir->fd,
                           k->fname, 0);
    k_arm(k, sqe, SL_NAME, false);
    k->state = ST_RENAME;
}

static void on_rename(kop *k)
{
    int r = k->sl[SL_NAME].res;
    if (r < 0) {
        k_fail(k, "rename", r);
        return;
    }
    k->tmp_exists = false;
    k_committed(k);
}

static void on_unlink(kop *k)
{
    int r = k->sl[SL_NAME].res;
    if (r == 0)
        k_committed(k);
    else if (r == -ENOENT)
        kop_finish(k, KV_ECONFLICT);
    else
        k_fail(k, "unlink", r);
}

static void on_clean(kop *k)
{
    if (k->fd >= 0)
        k->fd = -1; /* the close ran (an error still releases the fd) */
    if (k->tmp_exists) {
        int r = k->sl[SL_NAME].res;
        if (r < 0 && r != -ENOENT)
            k->fs->stats[STAT_TMP_LEAKS]++;
        k->tmp_exists = false;
    }
    kop_finish(k, k->err);
}

static void kop_step(kop *k)
{
    switch (k->state) {
    case ST_OPEN:
        on_open(k);
        break;
    case ST_HDR:
        on_hdr(k);
        break;
    case ST_READ:
        on_read(k);
        break;
    case ST_TMP:
        on_tmp(k);
        break;
    case ST_WRITE:
        on_write(k);
        break;
    case ST_RENAME:
        on_rename(k);
        break;
    case ST_UNLINK:
        on_unlink(k);
        break;
    case ST_CLEAN:
        on_clean(k);
        break;
    case ST_DONE:
        kop_free(k);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Blocking helpers for the pool and for open                               */
/* ------------------------------------------------------------------------ */

/* A new descriptor of the directory dfd, or -1 with errno set. */
static int dir_dup(int dfd)
{
    return openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* Open the directory name in dfd, refusing a symlink: a new descriptor,
 * or -1 with errno set. */
static int subdir_open(int dfd, const char *name)
{
    return openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* A stream over a new descriptor of dfd (which stays usable for *at
 * calls): 0 and *out, or -errno. */
static int dir_stream(int dfd, DIR **out)
{
    int fd = dir_dup(dfd);
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

/* The next entry of dir: 1 with *de set, 0 at the end, or -errno. */
static int dir_next(DIR *dir, struct dirent **de)
{
    errno = 0;
    *de = readdir(dir);
    if (*de != NULL)
        return 1;
    return errno != 0 ? -errno : 0;
}

/* The record file name of the escaped piece base: base ".kv". */
#define REC_NAME_SIZE (CHUNK + 4)
static void rec_name(char out[REC_NAME_SIZE], const char *base)
{
    snprintf(out, REC_NAME_SIZE, "%s.kv", base);
}

/* pread until n bytes or EOF; bytes read or -errno. */
static ssize_t pread_full(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Open a relative directory path one component at a time, refusing
 * symlinks.  A new descriptor or -errno. */
static int open_dir_path(int rootfd, const char *path)
{
    int fd = dir_dup(rootfd);
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
        int nfd = subdir_open(fd, comp);
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

/*
 * Read the record name in dfd: KV_OK with token (and the value if want),
 * -ENOENT if it is gone, KV_ECORRUPT, or another error.  Any thread.
 */
static int read_record(int dfd, const char *name, bool want, void **val,
                       size_t *len, uint64_t *token)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
                                   O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT
                               : (errno == ELOOP ? KV_ECORRUPT : -errno);
    int rc = KV_ECORRUPT;
    unsigned char h[HDR_SIZE];
    uint64_t vlen = 0;
    uint32_t vcrc = 0;
    struct stat st;
    unsigned char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode))
        goto out;
    ssize_t r = pread_full(fd, h, HDR_SIZE, 0);
    if (r < 0) {
        rc = (int)r;
        goto out;
    }
    if ((size_t)r < HDR_SIZE || !hdr_parse(h, token, &vlen, &vcrc) ||
        (uint64_t)st.st_size != HDR_SIZE + vlen)
        goto out;
    if (want) {
        buf = kv__malloc(vlen > 0 ? (size_t)vlen : 1);
        if (buf == NULL) {
            rc = KV_ENOMEM;
            goto out;
        }
        r = pread_full(fd, buf, (size_t)vlen, HDR_SIZE);
        if (r < 0) {
            rc = (int)r;
            goto out;
        }
        if ((uint64_t)r != vlen || crc32c(buf, (size_t)vlen) != vcrc)
            goto out;
        *val = buf;
        buf = NULL;
    }
    *len = want ? (size_t)vlen : 0;
    rc = KV_OK;
out:
    kv__free(buf);
    close(fd);
    return rc;
}

/* Kinds of directory entries. */
enum { E_NONE, E_REC, E_SUB, E_CONT, E_BUCKET };

/* The number of the bucket nm names (exactly what bucket_name() makes),
 * or -1. */
static int bucket_num(const char *nm)
{
    int hi = hex_digit(nm[0], 'a'), lo = hi >= 0 ? hex_digit(nm[1], 'a') : -1;
    if (lo < 0 || strcmp(nm + 2, ".b") != 0 ||
        (unsigned)(hi << 4 | lo) >= FANOUT)
        return -1;
    return hi << 4 | lo;
}

/* Classify a name; *bl gets the length of its escaped piece.  Bucket
 * directories exist (and are E_BUCKET) only in the fan-out layout. */
static int entry_kind(const char *nm, size_t *bl, bool fanout)
{
    size_t nl = strlen(nm);
    int kind;
    if (nm[0] == '.')
        return E_NONE;
    if (fanout && bucket_num(nm) >= 0) {
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

/* ------------------------------------------------------------------------ */
/* Queries: a depth-first walk on the pool                                  */
/* ------------------------------------------------------------------------ */

typedef struct qent {
    char *id;   /* decoded namespace id */
    char *base; /* its last escaped piece */
    int rdir;   /* frame directory holding base.kv, or -1 */
    int sdir;   /* frame directory holding base/, or -1 */
} qent;

/*
 * One physical directory of a logical one.  A piece (the directory itself
 * or a continuation) stays open (d) while its frame lives.  A bucket (the
 * fan-out layout) is read once when the frame is made and closed; its
 * descriptor (fd) is opened again when a record in it is read, and closed
 * when the walk descends below the frame, so that a deep walk holds no
 * more than one frame's buckets open.
 */
typedef struct qdir {
    DIR *d;          /* a piece; NULL for a bucket */
    int fd;          /* a bucket's descriptor, or -1 */
    size_t parent;   /* a bucket: the piece that holds it */
    unsigned bucket; /* a bucket: its number */
} qdir;

/* One logical directory: its physical directories and its sorted
 * entries. */
typedef struct qframe {
    qdir *dirs;
    size_t ndirs;
    qent *ents;
    size_t n, cap, pos;
    int phase;
    kv_key *key; /* the entries are this key's children */
} qframe;

struct cursor {
    fs_state *fs;
    kv_iter *iter;
    kv_key *qkey;
    bool value, desc, started, eof, busy, disposed;
    int64_t skip, left;
    qframe *st;
    size_t nst, capst;
    cursor *next, *prev;
};

/* arr (n elements of sz bytes, room for *cap) with room for one more: the
 * same or a reallocated array (*cap updated; the first holds first), or
 * NULL without memory (arr unchanged). */
static void *grow(void *arr, size_t *cap, size_t n, size_t sz, size_t first)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : first;
    void *na = kv__realloc(arr, nc * sz);
    if (na != NULL)
        *cap = nc;
    return na;
}

/* Close the descriptors of f's buckets (reopened when needed). */
static void frame_close_buckets(qframe *f)
{
    for (size_t i = 0; i < f->ndirs; i++)
        if (f->dirs[i].d == NULL && f->dirs[i].fd >= 0) {
            close(f->dirs[i].fd);
            f->dirs[i].fd = -1;
        }
}

static void frame_fini(qframe *f)
{
    frame_close_buckets(f);
    for (size_t i = 0; i < f->ndirs; i++)
        if (f->dirs[i].d != NULL)
            closedir(f->dirs[i].d);
    kv__free(f->dirs);
    for (size_t i = 0; i < f->n; i++) {
        kv__free(f->ents[i].id);
        kv__free(f->ents[i].base);
    }
    kv__free(f->ents);
    kv_key_free(f->key);
    memset(f, 0, sizeof *f);
}

/* Add a piece (d, taken on success) or, with d NULL, bucket b of piece
 * parent; *idx gets its index. */
static int frame_add_dir(qframe *f, DIR *d, size_t parent, unsigned b,
                         size_t *idx)
{
    qdir *nd = kv__realloc(f->dirs, (f->ndirs + 1) * sizeof *nd);
    if (nd == NULL)
        return KV_ENOMEM;
    f->dirs = nd;
    f->dirs[f->ndirs] = (qdir){d, -1, parent, b};
    if (idx != NULL)
        *idx = f->ndirs;
    f->ndirs++;
    return KV_OK;
}

/* A descriptor of f's directory i (owned by f), or -errno. */
static int frame_dirfd(qframe *f, size_t i)
{
    qdir *q = &f->dirs[i];
    if (q->d != NULL)
        return dirfd(q->d);
    if (q->fd < 0) {
        char bn[BUCKET_NAME_SIZE];
        bucket_name(bn, q->bucket);
        q->fd = subdir_open(dirfd(f->dirs[q->parent].d), bn);
        if (q->fd < 0)
            return -errno;
    }
    return q->fd;
}

static int frame_add_ent(qframe *f, char *id, const char *base, size_t bl,
                         int kind, int di)
{
    qent *ne = grow(f->ents, &f->cap, f->n, sizeof *ne, 16);
    if (ne == NULL)
        return KV_ENOMEM;
    f->ents = ne;
    qent *e = &f->ents[f->n];
    e->base = kv__strndup(base, bl);
    if (e->base == NULL)
        return KV_ENOMEM;
    e->id = id;
    e->rdir = kind == E_REC ? di : -1;
    e->sdir = kind == E_SUB ? di : -1;
    f->n++;
    return KV_OK;
}

/* Decode prefix + the piece and add it as an entry of kind in frame
 * directory di; a name that is not ours is ignored. */
static int frame_add_name(qframe *f, kv_buf *prefix, const char *nm,
                          size_t bl, int kind, size_t di)
{
    size_t plen = prefix->len;
    int rc = kv_buf_append(prefix, nm, bl);
    if (rc == KV_OK) {
        char *id = NULL;
        rc = dec_name((const char *)prefix->data, prefix->len, &id);
        if (rc == KV_OK) {
            rc = frame_add_ent(f, id, nm, bl, kind, (int)di);
            if (rc != KV_OK)
                kv__free(id);
        } else if (rc == KV_EINVAL) {
            rc = KV_OK; /* not ours: ignore */
        }
    }
    prefix->len = plen;
    return rc;
}

/* Read a bucket (dir, not kept) of f, index bi: its records only. */
static int frame_scan_bucket(qframe *f, DIR *dir, size_t bi, kv_buf *prefix)
{
    int rc = KV_OK, more = 0;
    struct dirent *de;
    while (rc == KV_OK && (more = dir_next(dir, &de)) > 0) {
        size_t bl;
        if (entry_kind(de->d_name, &bl, true) == E_REC &&
            (de->d_type == DT_REG || de->d_type == DT_UNKNOWN))
            rc = frame_add_name(f, prefix, de->d_name, bl, E_REC, bi);
    }
    return rc != KV_OK ? rc : more;
}

/* Read piece di of f (prefix: the escaped pieces above).  In the fan-out
 * layout the records are read from the piece's buckets. */
static int frame_scan(qframe *f, size_t di, kv_buf *prefix, unsigned level,
                      bool fanout)
{
    DIR *dir = f->dirs[di].d;
    int rc = KV_OK, more = 0;
    struct dirent *de;
    while (rc == KV_OK && (more = dir_next(dir, &de)) > 0) {
        size_t bl;
        int kind = entry_kind(de->d_name, &bl, fanout);
        if (kind == E_NONE || (kind == E_REC && fanout))
            continue;
        unsigned char t = de->d_type;
        if (kind == E_REC && t != DT_REG && t != DT_UNKNOWN)
            continue;
        if (kind != E_REC && t != DT_DIR && t != DT_UNKNOWN)
            continue;
        if (kind == E_CONT || kind == E_BUCKET) {
            if (level >= 100000)
                continue;
            int fd = subdir_open(dirfd(dir), de->d_name);
            if (fd < 0)
                continue; /* gone, or not ours (a file, a symlink) */
            DIR *sub = fdopendir(fd);
            if (sub == NULL) {
                rc = -errno;
                close(fd);
                break;
            }
            size_t idx = 0;
            if (kind == E_BUCKET) {
                /* Read now, reopened by frame_dirfd when needed. */
                rc = frame_add_dir(f, NULL, di,
                                   (unsigned)bucket_num(de->d_name), &idx);
                if (rc == KV_OK)
                    rc = frame_scan_bucket(f, sub, idx, prefix);
                closedir(sub);
            } else {
                size_t plen = prefix->len;
                rc = kv_buf_append(prefix, de->d_name, bl);
                if (rc == KV_OK)
                    rc = frame_add_dir(f, sub, 0, 0, &idx);
                if (rc != KV_OK)
                    closedir(sub);
                else
                    rc = frame_scan(f, idx, prefix, level + 1, fanout);
                prefix->len = plen;
            }
        } else {
            rc = frame_add_name(f, prefix, de->d_name, bl, kind, di);
        }
    }
    return rc != KV_OK ? rc : more;
}

static int ent_cmp(const void *a, const void *b)
{
    const qent *x = a, *y = b;
    return strcmp(x->id, y->id); /* unsigned bytes: kv_key_cmp order */
}

/* Sort, merge record + children entries of one id, reverse for DESC. */
static void frame_sort(qframe *f, bool desc)
{
    if (f->n == 0)
        return;
    qsort(f->ents, f->n, sizeof *f->ents, ent_cmp);
    size_t o = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (o > 0 && strcmp(f->ents[o - 1].id, f->ents[i].id) == 0) {
            qent *p = &f->ents[o - 1];
            if (p->rdir < 0)
                p->rdir = f->ents[i].rdir;
            if (p->sdir < 0)
                p->sdir = f->ents[i].sdir;
            kv__free(f->ents[i].id);
            kv__free(f->ents[i].base);
            continue;
        }
        f->ents[o++] = f->ents[i];
    }
    f->n = o;
    if (desc)
        for (size_t i = 0; i < o / 2; i++) {
            qent t = f->ents[i];
            f->ents[i] = f->ents[o - 1 - i];
            f->ents[o - 1 - i] = t;
        }
}

static int cursor_push(cursor *c, qframe *nf)
{
    qframe *ns = grow(c->st, &c->capst, c->nst, sizeof *ns, 8);
    if (ns == NULL)
        return KV_ENOMEM;
    c->st = ns;
    c->st[c->nst++] = *nf;
    return KV_OK;
}

/* Push the logical directory fd (taken) whose entries are key's children
 * (key taken). */
static int cursor_push_dir(cursor *c, int fd, kv_key *key)
{
    qframe f;
    memset(&f, 0, sizeof f);
    f.key = key;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = -errno;
        close(fd);
        frame_fini(&f);
        return e;
    }
    int rc = frame_add_dir(&f, d, 0, 0, NULL);
    if (rc != KV_OK) {
        closedir(d);
        frame_fini(&f);
        return rc;
    }
    kv_buf prefix = {NULL, 0, 0};
    rc = frame_scan(&f, 0, &prefix, 0, c->fs->fanout);
    kv__free(prefix.data);
    if (rc == KV_OK) {
        frame_sort(&f, c->desc);
        rc = cursor_push(c, &f);
    }
    if (rc != KV_OK)
        frame_fini(&f);
    return rc;
}

/* The key of entry e of f. */
static int ent_key(const qframe *f, const qent *e, kv_key **out)
{
    kv_ns ns = {NULL, NULL};
    int rc = kv_ns_parse(&ns, e->id);
    if (rc == KV_OK)
        rc = kv_key_child(out, f->key, &ns, 1);
    kv_ns_free(&ns);
    return rc;
}

/*
 * Open the directory of key's entry (key_paths; key not empty): a new
 * descriptor with *base and *bucket set, or a KV code or -errno (*base
 * NULL).  Any thread.
 */
static int key_dir_open(int rootfd, const kv_key *key, char **base,
                        unsigned *bucket)
{
    char *dir = NULL;
    int rc = key_paths(key, &dir, base, bucket);
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

/* Set up the first frame: the whole root, or the query key's entry. */
static int cursor_begin(cursor *c)
{
    fs_state *fs = c->fs;
    c->started = true;
    if (kv_key_len(c->qkey) == 0) {
        int fd = dir_dup(fs->rootfd);
        if (fd < 0)
            return -errno;
        kv_key *k = NULL;
        int rc = kv_key_dup(&k, c->qkey);
        if (rc != KV_OK) {
            close(fd);
            return rc;
        }
        return cursor_push_dir(c, fd, k);
    }
    char *base = NULL;
    unsigned b = 0;
    int rc;
    int fd = key_dir_open(fs->rootfd, c->qkey, &base, &b);
    if (fd < 0) {
        if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP) {
            c->eof = true;
            return KV_OK;
        }
        return fd;
    }
    qframe f;
    memset(&f, 0, sizeof f);
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        rc = -errno;
        close(fd);
        kv__free(base);
        return rc;
    }
    const char *id = strrchr(kv_key_id(c->qkey), '/') + 1;
    char *idc = kv__strdup(id);
    rc = frame_add_dir(&f, d, 0, 0, NULL);
    if (rc != KV_OK)
        closedir(d);
    size_t rdi = 0; /* where the record is: the piece, or its bucket */
    if (rc == KV_OK && fs->fanout)
        rc = frame_add_dir(&f, NULL, 0, b, &rdi);
    if (rc == KV_OK && idc == NULL)
        rc = KV_ENOMEM;
    if (rc == KV_OK)
        rc = kv_key_parent(&f.key, c->qkey);
    if (rc == KV_OK) {
        rc = frame_add_ent(&f, idc, base, strlen(base), E_REC, (int)rdi);
        if (rc == KV_OK)
            idc = NULL;
    }
    if (rc == KV_OK) {
        /* Offsets count records, so know whether this one exists. */
        struct stat st;
        char name[REC_NAME_SIZE];
        rec_name(name, base);
        int rfd = frame_dirfd(&f, rdi);
        if (rfd < 0 && rfd != -ENOENT && rfd != -ENOTDIR && rfd != -ELOOP)
            rc = rfd;
        else if (rfd < 0 ||
                 fstatat(rfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                 !S_ISREG(st.st_mode))
            f.ents[0].rdir = -1;
    }
    if (rc == KV_OK) {
        struct stat st;
        if (fstatat(fd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISDIR(st.st_mode))
            f.ents[0].sdir = 0;
        rc = cursor_push(c, &f);
    }
    kv__free(idc);
    kv__free(base);
    if (rc != KV_OK)
        frame_fini(&f);
    return rc;
}

/*
 * Advance to the next record: 1 with *fi / *ei naming it (frame index and
 * entry), 0 at the end, or an error.
 */
static int cursor_next(cursor *c, size_t *fi, size_t *ei)
{
    fs_state *fs = c->fs;
    while (c->nst > 0) {
        qframe *f = &c->st[c->nst - 1];
        if (f->pos >= f->n) {
            frame_fini(f);
            c->nst--;
            continue;
        }
        qent *e = &f->ents[f->pos];
        int phase = f->phase++;
        bool rec_now = c->desc ? phase == 1 : phase == 0;
        bool sub_now = c->desc ? phase == 0 : phase == 1;
        if (phase >= 2) {
            f->pos++;
            f->phase = 0;
            continue;
        }
        if (rec_now && e->rdir >= 0) {
            *fi = c->nst - 1;
            *ei = f->pos;
            return 1;
        }
        if (sub_now && e->sdir >= 0 && kv_key_len(f->key) + 1 < fs->depth) {
            /* Below this frame, its buckets are not needed. */
            frame_close_buckets(f);
            int fd = subdir_open(dirfd(f->dirs[e->sdir].d), e->base);
            if (fd < 0) {
                if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                    continue;
                return -errno;
            }
            kv_key *k = NULL;
            int rc = ent_key(f, e, &k);
            if (rc != KV_OK) {
                close(fd);
                return rc;
            }
            rc = cursor_push_dir(c, fd, k); /* f may move */
            if (rc != KV_OK)
                return rc;
        }
    }
    return 0;
}

static void cursor_free(cursor *c)
{
    fs_state *fs = c->fs;
    for (size_t i = 0; i < c->nst; i++)
        frame_fini(&c->st[i]);
    kv__free(c->st);
    kv_key_free(c->qkey);
    if (c->iter != NULL && c->iter->bpriv == c)
        c->iter->bpriv = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        fs->cursors = c->next;
    if (c->next)
        c->next->prev = c->prev;
    kv__free(c);
}

static void fetch_work(kv__job *job)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    cursor *c = j->c;
    size_t cap = FETCH_MAX, n = 0, bytes = 0;
    kv__item *items = kv__items_new(cap);
    int rc = items == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK && !c->started && !c->eof)
        rc = cursor_begin(c);
    while (rc == KV_OK && n < cap && bytes < FETCH_BYTES) {
        if (c->eof || c->left == 0) {
            c->eof = true;
            break;
        }
        size_t fi = 0, ei = 0;
        rc = cursor_next(c, &fi, &ei);
        if (rc == 0) {
            c->eof = true;
            break;
        }
        if (rc < 0)
            break;
        rc = KV_OK;
        if (c->skip > 0) {
            c->skip--;
            continue;
        }
        qframe *f = &c->st[fi];
        qent *e = &f->ents[ei];
        char name[REC_NAME_SIZE];
        rec_name(name, e->base);
        kv__item *it = &items[n];
        int dfd = frame_dirfd(f, (size_t)e->rdir);
        if (dfd == -ENOTDIR || dfd == -ELOOP)
            dfd = -ENOENT; /* a bucket replaced since: not ours */
        rc = dfd < 0 ? dfd
                     : read_record(dfd, name, c->value, &it->val, &it->len,
                                   &it->token);
        if (rc == -ENOENT) {
            rc = KV_OK; /* deleted since the directory was read */
            continue;
        }
        kv_key *k = NULL;
        int krc = ent_key(f, e, &k);
        if (rc != KV_OK) {
            snprintf(j->msg, sizeof j->msg, "fs: query: record %s: %s",
                     krc == KV_OK ? kv_key_id(k) : e->base, kv_strerror(rc));
            kv_key_free(k);
            break;
        }
        if (krc != KV_OK) {
            kv__free(it->val);
            it->val = NULL;
            rc = krc;
            break;
        }
        it->key = k;
        it->status = KV_OK;
        bytes += it->len + 64;
        n++;
        if (c->left > 0)
            c->left--;
    }
    if (rc != KV_OK) {
        if (j->msg[0] == '\0')
            snprintf(j->msg, sizeof j->msg, "fs: query: %s",
                     kv_strerror(rc));
        j->status = to_kv(rc);
        if (items != NULL)
            kv__items_free(items, n);
        return;
    }
    if (n == 0) {
        kv__items_free(items, 0);
        items = NULL;
    }
    j->items = items;
    j->n = n;
    j->eof = c->eof;
}

static void job_unlink(fs_state *fs, fjob *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        fs->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    fs->njobs--;
}

/* A job of req running work then done, or NULL after completing req
 * with KV_ENOMEM. */
static fjob *job_new(fs_state *fs, kv__req *req, void (*work)(kv__job *),
                     void (*done)(kv__job *, int))
{
    fjob *j = kv__calloc(1, sizeof *j);
    if (j == NULL) {
        defer_done(fs, req, KV_ENOMEM, NULL);
        return NULL;
    }
    j->fs = fs;
    j->req = req;
    j->job.work = work;
    j->job.done = done;
    return j;
}

static void job_submit(fs_state *fs, fjob *j)
{
    j->next = fs->jobs;
    if (fs->jobs)
        fs->jobs->prev = j;
    fs->jobs = j;
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &j->job);
}

static void fetch_done(kv__job *job, int status)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    fs_state *fs = j->fs;
    cursor *c = j->c;
    kv__req *req = j->req;
    job_unlink(fs, j);
    fs->nforeign--;
    c->busy = false;
    if (c->disposed)
        cursor_free(c);
    /* Completing may re-enter submit (a dispose): c is not touched after. */
    if (status != KV_OK) {
        req_end(fs, req, status, NULL);
    } else if (j->status != KV_OK) {
        req_end(fs, req, j->status, kv__strdup(j->msg));
    } else {
        req->items = j->items;
        req->n = j->n;
        req->eof = j->eof;
        req_end(fs, req, KV_OK, NULL);
    }
    kv__free(j);
    fs_check_closed(fs);
}

/* ------------------------------------------------------------------------ */
/* Drop: delete keys and everything below them, on the pool                 */
/* ------------------------------------------------------------------------ */

/* Remove every record and store directory inside dfd (not dot-files: temp
 * files of puts in flight stay, and their directories with them). */
static int drop_tree(int dfd, bool nofsync, bool fanout, unsigned level);

/* Empty the store directory name in dfd (drop_tree) and remove it: *changed
 * if it went, the first error kept in *rc. */
static void drop_dir(int dfd, const char *name, bool nofsync, bool fanout,
                     unsigned level, int *rc, bool *changed)
{
    int sub = subdir_open(dfd, name);
    if (sub < 0)
        return; /* gone, or not ours (a file, a symlink) */
    int r = drop_tree(sub, nofsync, fanout, level);
    close(sub);
    if (r != KV_OK && *rc == KV_OK)
        *rc = r;
    if (unlinkat(dfd, name, AT_REMOVEDIR) == 0)
        *changed = true;
}

static int drop_tree(int dfd, bool nofsync, bool fanout, unsigned level)
{
    DIR *d = NULL;
    int rc = dir_stream(dfd, &d);
    if (rc != 0)
        return rc;
    bool changed = false;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t bl;
        int kind = entry_kind(de->d_name, &bl, fanout);
        if (kind == E_NONE)
            continue;
        if (kind == E_REC) {
            if (unlinkat(dfd, de->d_name, 0) == 0)
                changed = true;
            else if (errno != ENOENT && rc == KV_OK)
                rc = -errno;
            continue;
        }
        if (level <= 100000)
            drop_dir(dfd, de->d_name, nofsync, fanout, level + 1, &rc,
                     &changed);
    }
    closedir(d);
    if (changed && !nofsync && fsync(dfd) != 0 && rc == KV_OK)
        rc = -errno;
    return rc;
}

static int drop_key(fs_state *fs, const kv_key *key)
{
    if (kv_key_len(key) == 0)
        return drop_tree(fs->rootfd, fs->nofsync, fs->fanout, 0);
    char *base = NULL;
    unsigned b = 0;
    int dfd = key_dir_open(fs->rootfd, key, &base, &b);
    if (dfd < 0)
        return dfd == -ENOENT ? KV_OK : dfd;
    int rc = KV_OK;
    bool changed = false;
    char name[REC_NAME_SIZE];
    rec_name(name, base);
    if (fs->fanout) {
        /* The record is in its bucket, which stays (shared). */
        char bn[BUCKET_NAME_SIZE];
        bucket_name(bn, b);
        int bfd = subdir_open(dfd, bn);
        if (bfd >= 0) {
            if (unlinkat(bfd, name, 0) == 0) {
                if (!fs->nofsync && fsync(bfd) != 0)
                    rc = -errno;
            } else if (errno != ENOENT) {
                rc = -errno;
            }
            close(bfd);
        } else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP) {
            rc = -errno; /* (a symlink or a file there is not ours) */
        }
    } else if (unlinkat(dfd, name, 0) == 0) {
        changed = true;
    } else if (errno != ENOENT) {
        rc = -errno;
    }
    drop_dir(dfd, base, fs->nofsync, fs->fanout, 0, &rc, &changed);
    if (changed && !fs->nofsync && fsync(dfd) != 0 && rc == KV_OK)
        rc = -errno;
    close(dfd);
    kv__free(base);
    return rc;
}

static void drop_work(kv__job *job)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    kv__req *req = j->req;
    for (size_t i = 0; i < req->n; i++) {
        int rc = drop_key(j->fs, req->items[i].key);
        if (rc != KV_OK && j->status == KV_OK) {
            j->status = to_kv(rc);
            snprintf(j->msg, sizeof j->msg, "fs: drop %s: %s",
                     kv_key_id(req->items[i].key), kv_strerror(rc));
        }
    }
}

/* Forget cached directories at or below path ("" is everything). */
static void dir_invalidate_below(fs_state *fs, const char *path)
{
    size_t pl = strlen(path);
    fsdir *d = fs->dirs_all;
    /* dir_invalidate may free idle objects via a ring close later, never
     * now, so walking the list while invalidating is safe. */
    while (d != NULL) {
        fsdir *next = d->all_next;
        if (!d->is_root &&
            (pl == 0 || (strncmp(d->path, path, pl) == 0 &&
                         (d->path[pl] == '\0' || d->path[pl] == '/'))))
            dir_invalidate(d);
        d = next;
    }
}

static void drop_done(kv__job *job, int status)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    fs_state *fs = j->fs;
    kv__req *req = j->req;
    job_unlink(fs, j);
    fs->ndrops--;
    if (status == KV_OK) {
        for (size_t i = 0; i < req->n; i++) {
            const kv_key *key = req->items[i].key;
            if (kv_key_len(key) == 0) {
                dir_invalidate_below(fs, "");
                continue;
            }
            char *dir = NULL, *base = NULL;
            if (key_paths(key, &dir, &base, NULL) == KV_OK) {
                char *p = child_dir_path(dir, base);
                if (p != NULL)
                    dir_invalidate_below(fs, p);
                kv__free(p);
            }
            kv__free(dir);
            kv__free(base);
        }
    }
    if (status != KV_OK)
        req_end(fs, req, status, NULL);
    else
        req_end(fs, req, j->status,
                j->status != KV_OK ? kv__strdup(j->msg) : NULL);
    kv__free(j);
    fs_check_closed(fs);
}

/* ------------------------------------------------------------------------ */
/* Submit and cancel                                                        */
/* ------------------------------------------------------------------------ */

static void rec_submit(fs_state *fs, kv__req *req, enum kkind kind)
{
    if ((kind == K_PUT || kind == K_DEL) && fs->readonly) {
        defer_done(fs, req, KV_EREADONLY, NULL);
        return;
    }
    for (size_t i = 0; i < req->n; i++) {
        const kv_key *key = req->items[i].key;
        size_t len = key != NULL ? kv_key_len(key) : 0;
        if (len == 0 || len > fs->depth) {
            defer_done(fs, req, KV_EINVAL,
                       len == 0 ? kv__strdup("fs: empty or missing key")
                                : kv__asprintf("fs: key %s has %zu "
                                               "namespaces, more than the "
                                               "store's depth %u",
                                               kv_key_id(key), len,
                                               fs->depth));
            return;
        }
    }
    if (req->n == 0) {
        defer_done(fs, req, KV_OK, NULL);
        return;
    }
    freq *fr = kv__calloc(1, sizeof *fr);
    kop **ks = kv__calloc(req->n, sizeof *ks);
    bool ok = fr != NULL && ks != NULL;
    for (size_t i = 0; ok && i < req->n; i++)
        ok = (ks[i] = kop_new(fs, req, &req->items[i], kind)) != NULL;
    if (!ok) {
        for (size_t i = 0; ks != NULL && i < req->n && ks[i]; i++)
            kop_free(ks[i]);
        kv__free(ks);
        kv__free(fr);
        defer_done(fs, req, KV_ENOMEM, NULL);
        return;
    }
    fr->remaining = req->n;
    req->bpriv = fr;
    /* Queue every kop before starting any: a synchronous failure of one
     * must not complete the request while others are still being set up. */
    for (size_t i = 0; i < req->n; i++) {
        kop *k = ks[i];
        const kv_key *key = k->it->key;
        uint64_t h = kv_key_hash(key);
        keyq *q = kq_find(fs, key, h);
        if (q != NULL) {
            q->tail->qnext = k;
            q->tail = k;
            k->kq = q;
            k->state = ST_QUEUED;
            ks[i] = NULL; /* started by its predecessor */
            continue;
        }
        q = kv__calloc(1, sizeof *q);
        if (q != NULL) {
            q->key = key;
            q->hl.hash = h;
        }
        if (q == NULL || kq_add(fs, q) != KV_OK) {
            kv__free(q);
            /* Not queued: it runs unordered (only on out-of-memory), so
             * it may read a file another put replaces. */
            k->foreign = true;
            fs->nforeign++;
            fs->foreign_gen++;
            continue;
        }
        q->head = q->tail = k;
        k->kq = q;
    }
    for (size_t i = 0; i < req->n; i++)
        if (ks[i] != NULL)
            kop_start(ks[i]);
    kv__free(ks);
}

static void query_submit(fs_state *fs, kv__req *req)
{
    kv_iter *it = req->iter;
    const kv_query *q = &it->q;
    size_t len = q->key != NULL ? kv_key_len(q->key) : 0;
    if (len > fs->depth) {
        defer_done(fs, req, KV_EINVAL,
                   kv__asprintf("fs: query key %s is deeper than the "
                                "store's depth %u",
                                kv_key_id(q->key), fs->depth));
        return;
    }
    cursor *c = kv__calloc(1, sizeof *c);
    int rc = c == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK) {
        if (q->key != NULL)
            rc = kv_key_dup(&c->qkey, q->key);
        else
            rc = kv_key_parse(&c->qkey, "/");
    }
    if (rc != KV_OK) {
        kv__free(c);
        defer_done(fs, req, rc, NULL);
        return;
    }
    c->fs = fs;
    c->iter = it;
    c->value = q->value;
    c->desc = q->sort == KV_SORT_DESC;
    c->skip = q->offset > 0 ? q->offset : 0;
    c->left = q->limit < 0 ? -1 : q->limit;
    c->next = fs->cursors;
    if (fs->cursors)
        fs->cursors->prev = c;
    fs->cursors = c;
    it->bpriv = c;
    defer_done(fs, req, KV_OK, NULL);
}

static void fetch_submit(fs_state *fs, kv__req *req)
{
    cursor *c = req->iter != NULL ? req->iter->bpriv : NULL;
    if (c == NULL || c->disposed || c->busy) {
        defer_done(fs, req, c == NULL || c->disposed ? KV_EITER : KV_EBUSY,
                   NULL);
        return;
    }
    if (c->eof) {
        req->items = NULL;
        req->n = 0;
        req->eof = true;
        defer_done(fs, req, KV_OK, NULL);
        return;
    }
    fjob *j = job_new(fs, req, fetch_work, fetch_done);
    if (j == NULL)
        return;
    j->c = c;
    c->busy = true;
    fs->nforeign++; /* it reads records by name (see "Spare files") */
    fs->foreign_gen++;
    job_submit(fs, j);
}

static void dispose_submit(fs_state *fs, kv__req *req)
{
    cursor *c = req->iter != NULL ? req->iter->bpriv : NULL;
    if (c != NULL) {
        req->iter->bpriv = NULL;
        c->iter = NULL;
        if (c->busy)
            c->disposed = true; /* freed when its fetch returns */
        else
            cursor_free(c);
    }
    defer_done(fs, req, KV_OK, NULL);
}

static void drop_submit(fs_state *fs, kv__req *req)
{
    if (fs->readonly) {
        defer_done(fs, req, KV_EREADONLY, NULL);
        return;
    }
    for (size_t i = 0; i < req->n; i++)
        if (req->items[i].key == NULL ||
            kv_key_len(req->items[i].key) > fs->depth) {
            defer_done(fs, req, KV_EINVAL,
                       kv__strdup("fs: drop: key missing or deeper than "
                                  "the store's depth"));
            return;
        }
    fjob *j = job_new(fs, req, drop_work, drop_done);
    if (j == NULL)
        return;
    fs->ndrops++; /* no spare is kept until it is done */
    spares_drain(fs);
    job_submit(fs, j);
}

static void fs_submit(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    bool outer = !fs->in_submit;
    fs->in_submit = true;
    if (fs->closing) {
        defer_done(fs, req, KV_ECLOSED, NULL);
    } else {
        switch (req->op) {
        case KV__OP_HAS:
            rec_submit(fs, req, K_HAS);
            break;
        case KV__OP_GET:
            rec_submit(fs, req, K_GET);
            break;
        case KV__OP_PUT:
            rec_submit(fs, req, K_PUT);
            break;
        case KV__OP_DELETE:
            rec_submit(fs, req, K_DEL);
            break;
        case KV__OP_DROP:
            drop_submit(fs, req);
            break;
        case KV__OP_QUERY_OPEN:
            query_submit(fs, req);
            break;
        case KV__OP_ITER_FETCH:
            fetch_submit(fs, req);
            break;
        case KV__OP_ITER_DISPOSE:
            dispose_submit(fs, req);
            break;
        case KV__OP_PUT_ATOMIC:
        case KV__OP_DELETE_ATOMIC:
        case KV__OP_MOVE:
            defer_done(fs, req, KV_ENOTSUP,
                       kv__strdup("fs: atomic batches are not supported"));
            break;
        default:
            defer_done(fs, req, KV_EINVAL, NULL);
            break;
        }
    }
    if (outer)
        fs->in_submit = false;
}

/* Remove k (not running, not a queue head) from its key queue. */
static void kq_unlink(fs_state *fs, kop *k)
{
    keyq *q = k->kq;
    if (q == NULL)
        return;
    kop *prev = NULL;
    for (kop *x = q->head; x != NULL && x != k; x = x->qnext)
        prev = x;
    if (prev == NULL)
        q->head = k->qnext;
    else
        prev->qnext = k->qnext;
    if (q->tail == k)
        q->tail = prev;
    if (q->head == NULL)
        kq_remove(fs, q);
    k->kq = NULL;
    k->qnext = NULL;
}

static void tok_unwait(fs_state *fs, kop *k)
{
    kop *prev = NULL;
    for (kop *x = fs->tok_head; x != NULL && x != k; x = x->gnext)
        prev = x;
    if (prev == NULL)
        fs->tok_head = k->gnext;
    else
        prev->gnext = k->gnext;
    if (fs->tok_tail == k)
        fs->tok_tail = prev;
    k->gnext = NULL;
}

/* Best effort: ask the kernel to cancel k's SQEs in flight (not closes). */
static void kop_cancel_ring(kop *k)
{
    static const int which[] = {SL_OPEN, SL_READ, SL_WRITE, SL_FSYNC,
                                SL_NAME};
    for (size_t i = 0; i < KV__ARRAY_SIZE(which); i++) {
        if (!k->sl[which[i]].busy)
            continue;
        struct io_uring_sqe *sqe;
        if (kv__loop_sqes(k->fs->loop, &sqe, 1) != KV_OK)
            return;
        io_uring_prep_cancel64(sqe, (uintptr_t)&k->sl[which[i]].op, 0);
        io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    }
}

/*
 * Stop the kops of req (all of them if req is NULL) that are parked in a
 * key queue or waiting for a token; flag the others so that they stop at
 * their next step; cancel pool jobs that have not started.
 */
static void cancel_kops(fs_state *fs, kv__req *req, bool ring_cancel)
{
    kop *parked = NULL;
    for (kop *k = fs->kops; k != NULL; k = k->anext) {
        if (k->done || (req != NULL && k->req != req))
            continue;
        k->canceled = true;
        if (k->state == ST_QUEUED) {
            kq_unlink(fs, k);
        } else if (k->state == ST_ADMIT) {
            adm_unlink(fs, k);
        } else if (k->state == ST_TOKEN) {
            tok_unwait(fs, k);
        } else {
            if (ring_cancel)
                kop_cancel_ring(k);
            continue;
        }
        k->state = ST_NEW;
        k->gnext = parked;
        parked = k;
    }
    while (parked != NULL) {
        kop *k = parked;
        parked = k->gnext;
        k->gnext = NULL;
        kop_finish(k, KV_ECANCELED);
    }
    for (fjob *j = fs->jobs; j != NULL; j = j->next)
        if (req == NULL || j->req == req)
            (void)kv__pool_cancel(fs->pool, &j->job);
}

static void fs_cancel(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    bool outer = !fs->in_submit;
    fs->in_submit = true;
    cancel_kops(fs, req, false);
    if (outer)
        fs->in_submit = false;
}

/* ------------------------------------------------------------------------ */
/* Close and destroy                                                        */
/* ------------------------------------------------------------------------ */

static void fs_teardown(fs_state *fs)
{
    while (fs->cursors != NULL)
        cursor_free(fs->cursors);
    while (fs->sp_head != NULL) {
        /* Never closed: the files stay (no .clean marker), removed at
         * the next open. */
        spare *sp = fs->sp_head;
        spare_unlink(fs, sp);
        kv__free(sp);
    }
    fsdir *d = fs->dirs_all;
    while (d != NULL) {
        fsdir *next = d->all_next;
        if (d->fd >= 0)
            close(d->fd);
        kv__free(d->path);
        kv__free(d);
        d = next;
    }
    fs->dirs_all = NULL;
    fs->lru_head = fs->lru_tail = NULL;
    fs->nidle = 0;
    kv__free(fs->dirs.tab);
    fs->dirs = (htab){0};
    kv__free(fs->rootdir);
    fs->rootdir = NULL;
    for (size_t i = 0; i < fs->keyqs.cap; i++)
        while (fs->keyqs.tab[i] != NULL) {
            hlink *l = fs->keyqs.tab[i];
            fs->keyqs.tab[i] = l->next;
            kv__free(KV__CONTAINER_OF(l, keyq, hl));
        }
    kv__free(fs->keyqs.tab);
    fs->keyqs = (htab){0};
    if (fs->tokfd >= 0)
        close(fs->tokfd);
    if (fs->closing && !fs->readonly && fs->rootfd >= 0 &&
        fs->stats[STAT_TMP_LEAKS] == 0) {
        /* Every temp file of this session is gone: skip the next walk. */
        int fd = openat(fs->rootfd, CLEAN_NAME,
                        O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd >= 0)
            close(fd);
    }
    if (fs->lockfd >= 0)
        close(fs->lockfd); /* releases the OFD lock */
    if (fs->rootfd >= 0)
        close(fs->rootfd);
    fs->tokfd = fs->lockfd = fs->rootfd = -1;
}

static void fs_check_closed(fs_state *fs)
{
    if (!fs->closing || fs->closed || fs->nkops > 0 || fs->nsqe > 0 ||
        fs->njobs > 0)
        return;
    fs->closed = true;
    fs_teardown(fs);
    kv__req *req = fs->close_req;
    fs->close_req = NULL;
    defer_any(fs, req, KV_OK, NULL, true);
}

static void fs_close(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    if (fs->closing) {
        /* The store layer closes once; be safe anyway. */
        defer_done(fs, req, KV_OK, NULL);
        return;
    }
    fs->in_close = true;
    fs->closing = true;
    fs->close_req = req;
    cancel_kops(fs, NULL, true);
    spares_drain(fs);
    for (cursor *c = fs->cursors, *next; c != NULL; c = next) {
        next = c->next;
        if (c->iter != NULL && c->iter->bpriv == c)
            c->iter->bpriv = NULL;
        c->iter = NULL;
        if (c->busy)
            c->disposed = true;
        else
            cursor_free(c);
    }
    fs_check_closed(fs);
    fs->in_close = false;
}

static void fs_destroy(kv_store *s)
{
    fs_state *fs = s->backend;
    if (fs == NULL)
        return;
    if (!fs->closed)
        fs_teardown(fs); /* never closed: release what can be released */
    kv__free(fs->root);
    kv__free(fs);
    s->backend = NULL;
}

const struct kv_backend_ops kv__fs_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "fs",
    .atomic_batch = false,
    .submit = fs_submit,
    .cancel = fs_cancel,
    .close = fs_close,
    .destroy = fs_destroy,
};

void kv__fs_stats(const kv_store *s, uint64_t out[KV__FS_NSTATS])
{
    const fs_state *fs = s != NULL && s->ops == &kv__fs_ops ? s->backend
                                                             : NULL;
    for (int i = 0; i < KV__FS_NSTATS; i++)
        out[i] = fs != NULL ? fs->stats[i] : 0;
}

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Walk the tree at open: remove temp files left by a crash (cleanup) and
 * find the largest token in use (scan, when .tokens is missing or bad).
 */
static void open_walk(int dfd, bool fanout, bool cleanup, bool scan,
                      uint64_t *maxtok, unsigned level)
{
    DIR *d = NULL;
    if (dir_stream(dfd, &d) != 0)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (cleanup && strncmp(nm, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            (void)unlinkat(dfd, nm, 0); /* retried at the next open */
            continue;
        }
        size_t bl;
        int kind = entry_kind(nm, &bl, fanout);
        if (kind == E_NONE)
            continue;
        if (kind == E_REC) {
            if (scan) {
                void *v = NULL;
                size_t len;
                uint64_t tok;
                if (read_record(dfd, nm, false, &v, &len, &tok) == KV_OK &&
                    tok > *maxtok)
                    *maxtok = tok;
            }
            continue;
        }
        if (level > 100000)
            continue;
        int sub = subdir_open(dfd, nm);
        if (sub < 0)
            continue;
        open_walk(sub, fanout, cleanup, scan, maxtok, level + 1);
        close(sub);
    }
    closedir(d);
}

/*
 * What the tree below dfd holds, for a store without FORMAT_NAME: *any if
 * it has a store entry at all, *bucket if it has a bucket directory (the
 * walk stops there).  0, or -errno if dfd cannot be read.
 */
static int layout_probe(int dfd, bool *any, bool *bucket, unsigned level)
{
    DIR *d = NULL;
    int rc = dir_stream(dfd, &d);
    if (rc != 0)
        return rc;
    struct dirent *de;
    while (!*bucket && (de = readdir(d)) != NULL) {
        size_t bl;
        int kind = entry_kind(de->d_name, &bl, true);
        if (kind == E_NONE)
            continue;
        *any = true;
        if (kind == E_REC || level > 100000)
            continue;
        int sub = subdir_open(dfd, de->d_name);
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
 * rename is made durable by open's fsync of the root.  0 or -errno. */
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
    else if (!fs->nofsync && fsync(fd) != 0)
        e = -errno;
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
static int open_layout(fs_state *fs, bool want_fanout, char *msg,
                       size_t msglen)
{
    int fd = openat(fs->rootfd, FORMAT_NAME,
                    O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        ssize_t r = pread_full(fd, buf, sizeof buf, 0);
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

static int open_fail(fs_state *fs, int code, const char *fmt, ...)
    KV__PRINTF(3, 4);

static int open_fail(fs_state *fs, int code, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kv__set_errmsg("%s", buf);
    if (fs != NULL) {
        if (fs->tokfd >= 0)
            close(fs->tokfd);
        if (fs->lockfd >= 0)
            close(fs->lockfd);
        if (fs->rootfd >= 0)
            close(fs->rootfd);
        kv__free(fs->rootdir);
        kv__free(fs->root);
        kv__free(fs);
    }
    return code;
}

/* Read .tokens, reserve the first block durably. */
static int open_tokens(fs_state *fs)
{
    fs->tokfd = openat(fs->rootfd, TOK_NAME,
                       O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fs->tokfd < 0)
        return -errno;
    uint64_t gen = 0, hwm = 0, g, h;
    bool found = false;
    for (unsigned i = 0; i < 2; i++) {
        unsigned char b[TOK_SLOT];
        ssize_t r = pread_full(fs->tokfd, b, TOK_SLOT, i * TOK_SLOT_OFF);
        if (r < 0)
            return (int)r;
        if ((size_t)r == TOK_SLOT && tok_slot_parse(b, &g, &h) &&
            (!found || g > gen)) {
            gen = g;
            hwm = h;
            found = true;
        }
    }
    uint64_t next = hwm;
    if (!found) {
        /* New store, or the counter was lost: never reuse a token. */
        uint64_t maxtok = 0;
        open_walk(fs->rootfd, fs->fanout, false, true, &maxtok, 0);
        next = maxtok + 1;
    }
    if (next == 0)
        next = 1;
    if (next > UINT64_MAX - TOKEN_BLOCK)
        return KV_ECORRUPT;
    unsigned char b[TOK_SLOT];
    gen++;
    tok_slot_make(b, gen, next + TOKEN_BLOCK);
    ssize_t w = pwrite(fs->tokfd, b, TOK_SLOT, (gen & 1) * TOK_SLOT_OFF);
    if (w < 0)
        return -errno;
    if ((size_t)w != TOK_SLOT)
        return -EIO;
    if (!fs->nofsync && fsync(fs->tokfd) != 0)
        return -errno;
    fs->tok_gen = gen;
    fs->tok_next = next;
    fs->tok_hwm = next + TOKEN_BLOCK;
    return KV_OK;
}

/* How many kops may run at once (see kop_admit): a quarter of what
 * RLIMIT_NOFILE leaves after 64 descriptors, between 16 and 4096. */
static size_t max_running(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 4096;
    rlim_t n = rl.rlim_cur > 128 ? (rl.rlim_cur - 64) / 4 : 16;
    return n < 16 ? 16 : n > 4096 ? 4096 : (size_t)n;
}

int kv_fs_open(kv_store **out, kv_loop *loop, kv_pool *pool,
               const char *root, unsigned depth, unsigned flags)
{
    if (out == NULL || loop == NULL || pool == NULL || root == NULL ||
        root[0] == '\0')
        return open_fail(NULL, KV_EINVAL, "kv_fs_open: NULL or empty "
                                          "argument");
    if (flags & ~(KV_READONLY | KV_NO_FSYNC | KV_SYNC_FULL | KV_FS_FANOUT))
        return open_fail(NULL, KV_EINVAL, "kv_fs_open: unknown flags 0x%x",
                         flags);
    static const int need[] = {IORING_OP_OPENAT,   IORING_OP_READ,
                               IORING_OP_WRITEV,   IORING_OP_FSYNC,
                               IORING_OP_CLOSE,    IORING_OP_RENAMEAT,
                               IORING_OP_UNLINKAT, IORING_OP_MKDIRAT,
                               IORING_OP_NOP,      IORING_OP_WRITE,
                               IORING_OP_ASYNC_CANCEL};
    for (size_t i = 0; i < KV__ARRAY_SIZE(need); i++)
        if (!kv__loop_has_op(loop, need[i]))
            return open_fail(NULL, KV_ENOTSUP,
                             "kv_fs_open: the kernel's io_uring lacks "
                             "opcode %d (Linux 5.15 or later is needed)",
                             need[i]);
    fs_state *fs = kv__calloc(1, sizeof *fs);
    if (fs == NULL)
        return open_fail(NULL, KV_ENOMEM, "kv_fs_open: out of memory");
    fs->rootfd = fs->lockfd = fs->tokfd = -1;
    fs->loop = loop;
    fs->pool = pool;
    fs->depth = depth != 0 ? depth : KV_FS_DEFAULT_DEPTH;
    fs->maxrun = max_running();
    fs->flags = flags;
    fs->readonly = (flags & KV_READONLY) != 0;
    fs->nofsync = (flags & KV_NO_FSYNC) != 0;
    fs->use_openat2 = kv__loop_has_op(loop, IORING_OP_OPENAT2);
    fs->tok_wop.cb = tok_wcqe;
    fs->tok_fop.cb = tok_fcqe;
    fs->root = kv__strdup(root);
    fs->rootdir = kv__calloc(1, sizeof *fs->rootdir);
    if (fs->root == NULL || fs->rootdir == NULL)
        return open_fail(fs, KV_ENOMEM, "kv_fs_open: out of memory");

    if (!fs->readonly) {
        if (mkdir(root, 0755) == 0) {
            /* Make the new root's entry durable: fsync its parent. */
            char *parent = kv__strdup(root);
            if (parent == NULL)
                return open_fail(fs, KV_ENOMEM, "kv_fs_open: out of memory");
            char *slash = strrchr(parent, '/');
            const char *pp = slash == NULL ? "." : parent;
            if (slash == parent)
                parent[1] = '\0';
            else if (slash != NULL)
                *slash = '\0';
            int pfd = fs->nofsync ? -1 : open(pp, O_RDONLY | O_DIRECTORY |
                                                      O_CLOEXEC);
            if (pfd >= 0) {
                (void)fsync(pfd); /* best effort: the parent is not ours */
                close(pfd);
            }
            kv__free(parent);
        } else if (errno != EEXIST) {
            return open_fail(fs, kv__from_errno(-errno),
                             "kv_fs_open: mkdir %s: %s", root,
                             strerror(errno));
        }
    }
    fs->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs->rootfd < 0) {
        int e = errno;
        return open_fail(fs,
                         e == ENOENT && fs->readonly ? KV_EREADONLY
                                                     : kv__from_errno(-e),
                         "kv_fs_open: open %s: %s", root, strerror(e));
    }

    /* The lock: an OFD lock conflicts with every other open file
     * description, in this process too. */
    bool rw = true;
    fs->lockfd = openat(fs->rootfd, LOCK_NAME,
                        O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fs->lockfd < 0 && fs->readonly) {
        rw = false;
        fs->lockfd = openat(fs->rootfd, LOCK_NAME,
                            O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fs->lockfd < 0)
        return open_fail(fs, kv__from_errno(-errno),
                         "kv_fs_open: lock file in %s: %s", root,
                         strerror(errno));
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = rw ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fs->lockfd, F_OFD_SETLK, &fl) != 0) {
        int e = errno;
        if (e == EAGAIN || e == EACCES)
            return open_fail(fs, KV_EBUSY,
                             "kv_fs_open: %s is in use by another open "
                             "store",
                             root);
        return open_fail(fs, kv__from_errno(-e), "kv_fs_open: lock %s: %s",
                         root, strerror(e));
    }

    char msg[512];
    int lrc = open_layout(fs, (flags & KV_FS_FANOUT) != 0, msg, sizeof msg);
    if (lrc != KV_OK)
        return open_fail(fs, lrc, "kv_fs_open: %s", msg);

    if (!fs->readonly) {
        /* Temp files are only left by a crash: a clean close leaves a
         * marker, and then the walk is not needed.  (Should the removal of
         * the marker be lost to a machine crash, the price is temp files
         * left until a later open: they are never read as records.) */
        if (unlinkat(fs->rootfd, CLEAN_NAME, 0) != 0)
            open_walk(fs->rootfd, fs->fanout, true, false, NULL, 0);
        int rc = open_tokens(fs);
        if (rc != KV_OK)
            return open_fail(fs, to_kv(rc),
                             "kv_fs_open: token counter in %s: %s", root,
                             kv_strerror(rc));
        /* The entries of .lock, .format and .tokens (a lost .tokens would
         * be rebuilt from the records, missing tokens of deleted ones). */
        if (!fs->nofsync && fsync(fs->rootfd) != 0)
            return open_fail(fs, kv__from_errno(-errno),
                             "kv_fs_open: fsync %s: %s", root,
                             strerror(errno));
    }

    fsdir *r = fs->rootdir;
    r->fs = fs;
    r->path = NULL;
    r->name = "";
    r->fd = fs->rootfd;
    r->state = D_OPEN;
    r->is_root = true;
    r->s_sync.op.cb = dir_cqe_sync;
    r->s_sync.d = r;

    int rc = kv__store_new(out, &kv__fs_ops, fs, loop, pool, flags);
    if (rc != KV_OK)
        return open_fail(fs, rc, "kv_fs_open: %s", kv_strerror(rc));
    fs->store = *out;
    return KV_OK;
}
