/*
 * fs_record.c - the filesystem backend's on-disk codecs and blocking
 * reads: little-endian helpers, CRC32C, the 40-byte record header (see
 * "Record file" in docs/DESIGN.md), the fuzz-target hooks that make and
 * check record bytes, the two slots of .tokens (see "Tokens"), and the
 * reads of a whole record file used on the pool and at open.  Any thread.
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

uint32_t fs__crc32c(const void *data, size_t n)
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

void fs__hdr_make(unsigned char h[HDR_SIZE], uint64_t token, const void *val,
                  size_t len)
{
    memset(h, 0, HDR_SIZE);
    put32(h, REC_MAGIC);
    put16(h + 4, REC_VERSION);
    put16(h + 6, HDR_SIZE);
    put64(h + 8, token);
    put64(h + 16, len);
    put32(h + 24, fs__crc32c(val, len));
    put32(h + 36, fs__crc32c(h, 36));
}

/* Check a header alone; on success set the token, value length and value
 * CRC.  False if it is not a valid header. */
bool fs__hdr_parse(const unsigned char h[HDR_SIZE], uint64_t *token,
                   uint64_t *vlen, uint32_t *vcrc)
{
    if (get32(h) != REC_MAGIC || get16(h + 4) != REC_VERSION ||
        get16(h + 6) != HDR_SIZE || get32(h + 36) != fs__crc32c(h, 36))
        return false;
    /* Flags and reserved bits this version does not know: a record this
     * reader cannot interpret, not one to return as if they were 0. */
    if (get32(h + 28) != 0 || get32(h + 32) != 0)
        return false;
    uint64_t t = get64(h + 8);
    uint64_t l = get64(h + 16);
    /* No record holds more than KV_MAX_VALUE_SIZE: a larger length is
     * corruption, not a reason to allocate that much. */
    if (t == 0 || t == KV_TOKEN_ANY || l > KV_MAX_VALUE_SIZE)
        return false; /* (the counter never hands out either token) */
    *token = t;
    *vlen = l;
    *vcrc = get32(h + 24);
    return true;
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
    fs__hdr_make(h, token, val != NULL ? val : "", len);
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
    /* What a get accepts (on_read in fs_kop.c): a valid header, then
     * exactly the value it announces, whose CRC matches. */
    if (len < HDR_SIZE || !fs__hdr_parse(b, &tok, &l, &vcrc) ||
        len - HDR_SIZE != l || fs__crc32c(b + HDR_SIZE, (size_t)l) != vcrc)
        return KV_ECORRUPT;
    if (token != NULL)
        *token = tok;
    if (voff != NULL)
        *voff = HDR_SIZE;
    if (vlen != NULL)
        *vlen = (size_t)l;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* .tokens slots                                                            */
/* ------------------------------------------------------------------------ */

void fs__tok_slot_make(unsigned char b[TOK_SLOT], uint64_t gen, uint64_t hwm)
{
    memset(b, 0, TOK_SLOT);
    put32(b, TOK_MAGIC);
    put32(b + 4, 1);
    put64(b + 8, gen);
    put64(b + 16, hwm);
    put32(b + 24, fs__crc32c(b, 24));
}

bool fs__tok_slot_parse(const unsigned char b[TOK_SLOT], uint64_t *gen,
                        uint64_t *hwm)
{
    if (get32(b) != TOK_MAGIC || get32(b + 4) != 1 ||
        get32(b + 24) != fs__crc32c(b, 24))
        return false;
    *gen = get64(b + 8);
    *hwm = get64(b + 16);
    return true;
}

/* ------------------------------------------------------------------------ */
/* Blocking reads (the pool and open)                                       */
/* ------------------------------------------------------------------------ */

/* pread until n bytes or EOF; bytes read or -errno. */
ssize_t fs__pread_full(int fd, void *buf, size_t n, off_t off)
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

/*
 * Read the record name in dfd: KV_OK with token (and the value if want),
 * -ENOENT if it is gone, KV_ECORRUPT, or another error.  Any thread.
 */
int fs__read_record(int dfd, const char *name, bool want, void **val,
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
    ssize_t r = fs__pread_full(fd, h, HDR_SIZE, 0);
    if (r < 0) {
        rc = (int)r;
        goto out;
    }
    if ((size_t)r < HDR_SIZE || !fs__hdr_parse(h, token, &vlen, &vcrc) ||
        (uint64_t)st.st_size != HDR_SIZE + vlen)
        goto out;
    if (want) {
        buf = kv__malloc(vlen > 0 ? (size_t)vlen : 1);
        if (buf == NULL) {
            rc = KV_ENOMEM;
            goto out;
        }
        r = fs__pread_full(fd, buf, (size_t)vlen, HDR_SIZE);
        if (r < 0) {
            rc = (int)r;
            goto out;
        }
        if ((uint64_t)r != vlen || fs__crc32c(buf, (size_t)vlen) != vcrc)
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
