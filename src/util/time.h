/*
 * util/time.h - milliseconds to timespecs and the monotonic clock.
 */
#ifndef KV_UTIL_TIME_H
#define KV_UTIL_TIME_H

#include "util/util.h"

#include <linux/time_types.h>
#include <stdlib.h>
#include <time.h>

/* ms as the kernel's timespec (io_uring timeouts). */
static inline struct __kernel_timespec kv__ms_to_kts(uint64_t ms)
{
    struct __kernel_timespec ts;
    ts.tv_sec = (long long)(ms / 1000);
    ts.tv_nsec = (long long)(ms % 1000) * 1000000;
    return ts;
}

/* ms as libc's timespec (poll, futex, nanosleep). */
static inline struct timespec kv__ms_to_timespec(uint64_t ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000;
    return ts;
}

/* CLOCK_MONOTONIC in nanoseconds.  It cannot fail with a valid pointer
 * (its only errors are EINVAL and EFAULT), so a failure aborts. */
static inline uint64_t kv__now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        abort();
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t kv__now_ms(void)
{
    return kv__now_ns() / 1000000u;
}

#endif /* KV_UTIL_TIME_H */
