/*
 * hist.h - a log-bucketed latency histogram (HdrHistogram-like) for kvbench.
 *
 * Values (nanoseconds) below 2^HIST_SUB_BITS are kept exactly; above that,
 * each power-of-two range is split into 2^(HIST_SUB_BITS-1) linear buckets,
 * so every recorded value is known to within 1/2^(HIST_SUB_BITS-1) of
 * itself (0.8% with 8 bits).  Min, max, sum and sum of squares are exact.
 * One histogram per thread: no locking.  Merge them afterwards.
 */
#ifndef KV_HIST_H
#define KV_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 8
#define HIST_SUB (1u << HIST_SUB_BITS)   /* exact range: [0, 256)        */
#define HIST_HALF (HIST_SUB / 2)          /* buckets per power of two     */
#define HIST_NBUCKETS (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_HALF)

typedef struct hist {
    uint64_t count;
    uint64_t min, max;
    double sum, sumsq;
    uint64_t b[HIST_NBUCKETS];
} hist;

void hist_init(hist *h);
void hist_record(hist *h, uint64_t v);
/* dst += src. */
void hist_merge(hist *dst, const hist *src);
double hist_mean(const hist *h);
double hist_stddev(const hist *h);
/*
 * The value at percentile p (0 < p <= 100): the highest value equivalent to
 * the bucket holding the ceil(p/100 * count)-th smallest sample, clamped to
 * [min, max].  0 when empty.
 */
uint64_t hist_percentile(const hist *h, double p);

/* For tests: the bucket index of v, and the lowest/highest value of a bucket. */
unsigned hist_index(uint64_t v);
uint64_t hist_bucket_low(unsigned idx);
uint64_t hist_bucket_high(unsigned idx);

#endif /* KV_HIST_H */
