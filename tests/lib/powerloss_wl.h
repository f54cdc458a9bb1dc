/*
 * powerloss_wl.h - the workload the power-loss tests run before a crash
 * (tests/reliability/check_powerloss.c on the fs backend,
 * check_sqlite_powerloss.c on SQLite): CAS puts over new and existing keys
 * and deletes of present ones, in several lanes (each lane one operation
 * in flight, never two on one key), with values whose bytes follow from a
 * seed so that a checker can rebuild them.  Deterministic from its seed
 * (pl_rng).  Loop thread of the store; the lanes' callbacks run in the
 * loop's runs, and check's ck_assert macros report a failed call.
 */
#ifndef KV_POWERLOSS_WL_H
#define KV_POWERLOSS_WL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <kvstore.h>

#include "powerloss.h"

#define PL_WL_MAXKEYS 32
#define PL_WL_MAXOPS 128
#define PL_WL_MAXLANES 8

typedef struct pl_wl_cfg {
    unsigned nkeys;  /* keys 0..nkeys-1 (<= PL_WL_MAXKEYS, > lanes) */
    unsigned nops;   /* operations started at most (<= PL_WL_MAXOPS) */
    unsigned lanes;  /* operations in flight (<= PL_WL_MAXLANES) */
    size_t vmax;     /* a value's length is 0..vmax */
    /* The path of key k. */
    void (*key_path)(int k, char *buf, size_t cap);
    /* A progress mark read when an operation starts and when it is
     * acknowledged (pl_op.start/ack), or NULL (both 0). */
    size_t (*mark)(void);
    /* True once nothing more may start (say, the store crashed), or NULL. */
    bool (*stop)(void);
} pl_wl_cfg;

typedef struct pl_op {
    int key;
    bool del;          /* a delete of the acknowledged token, else a put */
    uint64_t vseed;    /* the value's seed (put): pl_wl_value */
    size_t start;      /* cfg->mark() when it started */
    size_t ack;        /* ... when its acknowledgement arrived */
    int status;
    uint64_t token;    /* put acknowledged KV_OK: the token written */
    unsigned long seq; /* order of its KV_OK acknowledgement (1-based), 0 */
    bool done;         /* acknowledged (whatever the status) */
} pl_op;

typedef struct pl_wl pl_wl;

typedef struct pl_lane {
    pl_wl *w;
    size_t i; /* its operation in flight */
} pl_lane;

struct pl_wl {
    const pl_wl_cfg *cfg;
    kv_store *s;
    pl_rng rng;
    pl_op ops[PL_WL_MAXOPS];
    size_t nops, ndone, inflight;
    unsigned long acks;             /* KV_OK acknowledgements */
    bool busy[PL_WL_MAXKEYS];       /* an operation in flight */
    bool present[PL_WL_MAXKEYS];    /* as acknowledged */
    uint64_t tok[PL_WL_MAXKEYS];    /* the acknowledged token */
    pl_lane lanes[PL_WL_MAXLANES];
};

/* Reset w for a run on store s from seed (0 is taken as 1). */
void pl_wl_init(pl_wl *w, const pl_wl_cfg *cfg, kv_store *s, uint64_t seed);

/* Start one operation per lane; each lane starts its next operation when
 * the last is acknowledged, until cfg->nops have started or cfg->stop says
 * so.  Run the loop while w->inflight > 0. */
void pl_wl_start(pl_wl *w);

/* The key k, parsed (the caller frees it). */
kv_key *pl_wl_key(const pl_wl *w, int k);

/* The value of seed vseed into buf (cfg->vmax bytes): its length. */
size_t pl_wl_value(const pl_wl *w, uint64_t vseed, unsigned char *buf);

#endif /* KV_POWERLOSS_WL_H */
