/*
 * fuzz_record.c - the fs backend's decoders of bytes read from disk: record
 * files (kv__fs_record_check, what a get accepts) and escaped directory
 * entry names (kv__fs_name_decode).
 *
 * Input layout: byte 0 selects what the rest is.
 *   bit 0 clear: the rest is a record file as read from disk;
 *   bit 0 set:   the same, but with both CRCs recomputed first, so that
 *                the fuzzer gets past the checksums to the fields behind
 *                them (length, token, version, flags);
 *   bit 1 set:   the rest is also tried as a directory entry name and as
 *                a namespace id to escape.
 * Laws: an accepted record is exactly what kv__fs_record_make writes for
 * its token and value (so every accepted byte is meaningful); a decoded
 * name is a valid, canonical namespace id whose escape is the name itself;
 * the escape of every valid id decodes back to it and holds no '.'.
 */
#include "config.h"

#include "fuzz.h"
#include "store/store_int.h"
#include "backend/fs/fs.h"

#include <string.h>

/* CRC32C, bitwise (the fs backend's may use the SSE4.2 instruction). */
static uint32_t crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
    }
    return ~c;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void record(const unsigned char *buf, size_t len)
{
    uint64_t tok = 0;
    size_t off = 0, vlen = 0;
    int rc = kv__fs_record_check(buf, len, &tok, &off, &vlen);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ECORRUPT);
    if (rc != KV_OK)
        return;
    FUZZ_CHECK(tok != 0);
    FUZZ_CHECK(off + vlen == len && vlen <= KV_MAX_VALUE_SIZE);
    kv_buf again = {NULL, 0, 0};
    rc = kv__fs_record_make(tok, buf + off, vlen, &again);
    FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
    if (rc == KV_OK)
        FUZZ_CHECK(again.len == len && memcmp(again.data, buf, len) == 0);
    kv__free(again.data);
}

static bool escape_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '%';
}

static void name(const char *s, size_t len)
{
    char *id = NULL;
    int rc = kv__fs_name_decode(s, len, &id);
    FUZZ_CHECK(rc == KV_OK || rc == KV_EINVAL || rc == KV_ENOMEM);
    if (rc == KV_OK) {
        kv_ns ns = {NULL, NULL};
        rc = kv_ns_parse(&ns, id);
        FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
        if (rc == KV_OK) {
            char *canon = kv_ns_id(&ns);
            FUZZ_CHECK(canon == NULL || strcmp(canon, id) == 0);
            kv__free(canon);
        }
        kv_ns_free(&ns);
        kv_buf e = {NULL, 0, 0};
        rc = kv__fs_name_encode(id, strlen(id), &e);
        FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
        if (rc == KV_OK)
            FUZZ_CHECK(e.len == len && memcmp(e.data, s, len) == 0);
        kv__free(e.data);
        kv__free(id);
    }

    /* the other way: escape the input as a namespace id */
    char *z = kv__strndup(s, len);
    if (z == NULL || memchr(s, 0, len) != NULL) {
        kv__free(z);
        return;
    }
    kv_ns ns = {NULL, NULL};
    if (kv_ns_parse(&ns, z) == KV_OK) {
        char *canon = kv_ns_id(&ns);
        kv_buf e = {NULL, 0, 0};
        /* the empty namespace is in no key, so it has no name */
        if (canon != NULL && canon[0] != '\0' &&
            kv__fs_name_encode(canon, strlen(canon), &e) == KV_OK) {
            for (size_t i = 0; i < e.len; i++)
                FUZZ_CHECK(escape_char_ok(e.data[i]));
            char *back = NULL;
            rc = kv__fs_name_decode((const char *)e.data, e.len, &back);
            FUZZ_CHECK(rc == KV_OK || rc == KV_ENOMEM);
            if (rc == KV_OK)
                FUZZ_CHECK(strcmp(back, canon) == 0);
            kv__free(back);
        }
        kv__free(e.data);
        kv__free(canon);
    }
    kv_ns_free(&ns);
    kv__free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > (1u << 20))
        return 0;
    unsigned mode = data[0];
    const unsigned char *p = data + 1;
    size_t n = size - 1;
    if (mode & 1u) {
        unsigned char *fix = malloc(n ? n : 1);
        if (fix == NULL)
            return 0;
        memcpy(fix, p, n);
        if (n >= 40) {
            put32(fix + 24, crc32c(fix + 40, n - 40)); /* the value */
            put32(fix + 36, crc32c(fix, 36));          /* the header */
        }
        record(fix, n);
        free(fix);
    } else {
        record(p, n);
    }
    if (mode & 2u)
        name((const char *)p, n);
    return 0;
}
