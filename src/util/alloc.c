/*
 * alloc.c - the allocator every module uses: the helpers built on
 * kv__malloc (duplicates, printf), kv_buf_append and kv_buf_free, and, in
 * test builds only (KV_TEST_HOOKS), the counting, failing
 * kv__malloc/calloc/realloc.
 */
#include "config.h"

#include "util/util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef KV_TEST_HOOKS
/*
 * Failure injection (test builds only): fail_at counts down with each
 * allocation; when it reaches 0 the allocation fails (and, if sticky, every
 * later one).  Relaxed atomics: tests set the hook while no other thread
 * allocates, and allocations on workers only need a coherent counter.
 */
static atomic_ulong fail_at;
static atomic_bool fail_sticky;
static atomic_bool failing;
static atomic_ulong count;

static bool should_fail(void)
{
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    if (atomic_load_explicit(&failing, memory_order_relaxed))
        return true;
    unsigned long n = atomic_load_explicit(&fail_at, memory_order_relaxed);
    if (n == 0)
        return false;
    if (atomic_fetch_sub_explicit(&fail_at, 1, memory_order_relaxed) == 1) {
        if (atomic_load_explicit(&fail_sticky, memory_order_relaxed))
            atomic_store_explicit(&failing, true, memory_order_relaxed);
        return true;
    }
    return false;
}

unsigned long kv__alloc_fail_at(unsigned long nth, bool sticky)
{
    atomic_store(&failing, false);
    atomic_store(&fail_sticky, sticky);
    atomic_store(&fail_at, nth);
    return atomic_exchange(&count, 0);
}

void *kv__malloc(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *kv__calloc(size_t count_, size_t size)
{
    if (should_fail())
        return NULL;
    if (count_ == 0 || size == 0)
        count_ = size = 1;
    return calloc(count_, size);
}

void *kv__realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

void *kv__zalloc_aligned(size_t align, size_t size)
{
    if (should_fail())
        return NULL;
    return kv__zalloc_aligned_libc(align, size);
}
#endif /* KV_TEST_HOOKS */

void *kv__memdup(const void *p, size_t n)
{
    void *q = kv__malloc(n ? n : 1);
    if (q != NULL && n > 0)
        memcpy(q, p, n);
    return q;
}

char *kv__strndup(const char *s, size_t n)
{
    char *q = kv__malloc(n + 1);
    if (q == NULL)
        return NULL;
    memcpy(q, s, n);
    q[n] = '\0';
    return q;
}

char *kv__strdup(const char *s)
{
    return kv__strndup(s, strlen(s));
}

char *kv__vasprintf(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = kv__malloc((size_t)n + 1);
    if (s != NULL)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *kv__asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = kv__vasprintf(fmt, ap);
    va_end(ap);
    return s;
}

int kv_buf_append(kv_buf *buf, const void *data, size_t len)
{
    if (buf == NULL || (data == NULL && len > 0))
        return KV_EINVAL;
    if (len == 0)
        return KV_OK;
    if (len > SIZE_MAX - buf->len)
        return KV_ENOMEM;
    if (buf->len + len > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + len)
            cap = cap > SIZE_MAX / 2 ? buf->len + len : cap * 2;
        unsigned char *d = kv__realloc(buf->data, cap);
        if (d == NULL)
            return KV_ENOMEM;
        buf->data = d;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    return KV_OK;
}

void kv_buf_free(kv_buf *buf)
{
    if (buf == NULL)
        return;
    kv__free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}
