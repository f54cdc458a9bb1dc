/*
 * powerloss.h - the states a power loss may leave, built from a recorded
 * trace of file-system operations (src/core/fault.c's recording mode).
 *
 * pl_snapshot reads a directory tree (the checkpoint: everything in it is
 * taken as durable) and the inodes of its entries.  pl_crash then replays
 * the first n operations of a trace over it, tracking what each fsync made
 * durable, and writes into a fresh directory one state a power loss right
 * after them may leave:
 *  - a file's data: what its last covering fsync saw, plus each later
 *    write kept whole, dropped, or torn (a prefix of it);
 *  - a directory: each create, rename (or exchange), unlink or mkdir in it
 *    that no later fsync of the directory covers kept or undone (each as a
 *    unit, in trace order), the covered ones always kept.
 * An fsync covers an operation that completed before it was submitted, or
 * that precedes it in one IOSQE_IO_LINK chain (which the kernel runs in
 * order); an fsync merely completed after it covers nothing.
 * The choices come from the caller's random generator (pl_rand).
 */
#ifndef KV_POWERLOSS_H
#define KV_POWERLOSS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/fault.h"

/* xorshift64*: deterministic from its seed (never 0). */
typedef struct pl_rng {
    uint64_t s;
} pl_rng;

static inline uint64_t pl_rand(pl_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

/* Uniform in [0, n) (n > 0). */
static inline uint64_t pl_below(pl_rng *r, uint64_t n)
{
    return pl_rand(r) % n;
}

typedef struct pl_base pl_base;

/* What pl_crash did (summed by the caller over states). */
typedef struct pl_stats {
    unsigned long writes_kept, writes_dropped, writes_torn;
    unsigned long meta_kept, meta_undone, meta_durable;
    unsigned long dirsyncs_skipped;
} pl_stats;

typedef struct pl_opts {
    /* Ignore the nth directory fsync of the trace (1-based; 0: none), as
     * if the backend had not issued it: the self-test of the checker. */
    unsigned long skip_dirsync;
} pl_opts;

/*
 * Read the tree at root (regular files and directories only).  0, or -1
 * with a message in err.
 */
int pl_snapshot(pl_base **out, const char *root, char *err, size_t cap);
void pl_base_free(pl_base *b);

/*
 * Replay trace[0..n) over base and write one crash state into outdir
 * (which must not exist).  0, or -1 with a message in err (an operation
 * the model does not know, an inode it cannot place, an I/O error).
 */
int pl_crash(const pl_base *base, const kv__frec *const *trace, size_t n,
             const pl_opts *opts, pl_rng *rng, const char *outdir,
             pl_stats *st, char *err, size_t cap);

/* Remove the tree at path (a crash state): 0, or -1 with errno. */
int pl_rmtree(const char *path);

/* Operation name for messages. */
const char *pl_opname(int op);

#endif /* KV_POWERLOSS_H */
