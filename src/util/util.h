/*
 * util/util.h - the bottom layer: allocation, error messages, small macros.
 * Depends on nothing of the library but the public header (for kv_buf and
 * the error codes).  Not installed, not API.
 *
 * Naming: kv__ for internal symbols that are not static (hidden by
 * -fvisibility=hidden and the export list), plain names for statics.
 */
#ifndef KV_UTIL_H
#define KV_UTIL_H

#include "kvstore.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define KV__PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KV__UNUSED __attribute__((unused))
#else
#define KV__PRINTF(a, b)
#define KV__UNUSED
#endif

#define KV__ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KV__CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
/* ------------------------------------------------------------------------ */
/* alloc.c: every allocation goes through these.  Any thread.              */
/* ------------------------------------------------------------------------ */

/*
 * Built with KV_TEST_HOOKS (the library that make check links, see
 * Makefile.am), kv__malloc, kv__calloc and kv__realloc are functions that
 * count allocations and fail on demand (kv__alloc_fail_at).  Without it (the
 * installed library) they are these inline calls of the C library: no
 * counter, no test, no call in the hot paths.  A size of 0 asks for 1 byte
 * either way, so a NULL result always means out of memory.
 */
/*
 * kv__zalloc_aligned(align, size): size bytes, zeroed, at a multiple of
 * align (a power of two); kv__free releases them.  This is its C library
 * part, rounded up to aligned_alloc's rule (a multiple of align, at least
 * one).
 */
static inline void *kv__zalloc_aligned_libc(size_t align, size_t size)
{
    size = size == 0 ? align : (size + align - 1) & ~(align - 1);
    void *p = aligned_alloc(align, size);
    if (p != NULL)
        memset(p, 0, size);
    return p;
}

#ifdef KV_TEST_HOOKS
void *kv__malloc(size_t n);
void *kv__calloc(size_t count, size_t size);
void *kv__realloc(void *p, size_t n);

/*
 * Test hook: make the nth allocation from now fail (1 = the next one), and
 * every one after it if sticky; 0 turns failures off.  Returns how many
 * allocations were made since the last call.
 */
unsigned long kv__alloc_fail_at(unsigned long nth, bool sticky);
void *kv__zalloc_aligned(size_t align, size_t size);
#else
static inline void *kv__malloc(size_t n)
{
    return malloc(n ? n : 1);
}

static inline void *kv__calloc(size_t count, size_t size)
{
    if (count == 0 || size == 0)
        count = size = 1;
    return calloc(count, size);
}

static inline void *kv__realloc(void *p, size_t n)
{
    return realloc(p, n ? n : 1);
}

static inline void *kv__zalloc_aligned(size_t align, size_t size)
{
    return kv__zalloc_aligned_libc(align, size);
}
#endif
static inline void kv__free(void *p)
{
    free(p);
}
char *kv__strdup(const char *s);
char *kv__strndup(const char *s, size_t n);
void *kv__memdup(const void *p, size_t n); /* n == 0 gives a valid 1-byte block */
/* Printf into a new heap string; NULL on OOM. */
char *kv__asprintf(const char *fmt, ...) KV__PRINTF(1, 2);
char *kv__vasprintf(const char *fmt, va_list ap);

/* ------------------------------------------------------------------------ */
/* error.c                                                                  */
/* ------------------------------------------------------------------------ */

/* Set this thread's kv_last_errmsg(). */
void kv__set_errmsg(const char *fmt, ...) KV__PRINTF(1, 2);
/* Map a negated errno to a kvstore code (ENOMEM -> KV_ENOMEM, else KV_EBACKEND). */
int kv__from_errno(int neg_errno);
#endif /* KV_UTIL_H */
