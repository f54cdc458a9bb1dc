/*
 * hist.c - log-bucketed latency histogram.  See hist.h.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "hist.h"

#include <math.h>
#include <string.h>

void hist_init(hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= HIST_SUB_BITS */
    unsigned shift = msb - (HIST_SUB_BITS - 1);        /* >= 1 */
    unsigned sub = (unsigned)(v >> shift);             /* [HALF, SUB) */
    return HIST_SUB + (shift - 1) * HIST_HALF + (sub - HIST_HALF);
}

uint64_t hist_bucket_low(unsigned idx)
{
    if (idx < HIST_SUB)
        return idx;
    unsigned shift = (idx - HIST_SUB) / HIST_HALF + 1;
    uint64_t sub = (idx - HIST_SUB) % HIST_HALF + HIST_HALF;
    return sub << shift;
}

uint64_t hist_bucket_high(unsigned idx)
{
    if (idx < HIST_SUB)
        return idx;
    unsigned shift = (idx - HIST_SUB) / HIST_HALF + 1;
    uint64_t sub = (idx - HIST_SUB) % HIST_HALF + HIST_HALF;
    uint64_t hi = ((sub + 1) << shift) - 1;
    return hi < (sub << shift) ? UINT64_MAX : hi; /* top bucket overflow */
}

void hist_record(hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->count++;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    double d = (double)v;
    h->sum += d;
    h->sumsq += d * d;
}

void hist_merge(hist *dst, const hist *src)
{
    if (!src->count)
        return;
    for (unsigned i = 0; i < HIST_NBUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->sum += src->sum;
    dst->sumsq += src->sumsq;
}

double hist_mean(const hist *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}

double hist_stddev(const hist *h)
{
    if (h->count < 2)
        return 0.0;
    double n = (double)h->count;
    double m = h->sum / n;
    double var = (h->sumsq - n * m * m) / (n - 1);
    return var > 0 ? sqrt(var) : 0.0;
}

uint64_t hist_percentile(const hist *h, double p)
{
    if (!h->count)
        return 0;
    if (p <= 0)
        return h->min;
    if (p >= 100)
        return h->max;
    double t = ceil(p / 100.0 * (double)h->count);
    uint64_t target = t < 1 ? 1 : (uint64_t)t;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_NBUCKETS; i++) {
        seen += h->b[i];
        if (seen >= target) {
            uint64_t v = hist_bucket_high(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}
