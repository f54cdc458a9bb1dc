/*
 * conformance.h - the harness of the store conformance suite
 * (tests/conformance/check_*.c, one program per group of tests).
 *
 * Every behaviour of the store API (include/kvstore.h, API.md) is one
 * START_TEST, run against every backend in the backends[] table with
 * tcase_add_loop_test.  A new backend is tested by adding one row.
 *
 * Rows: the real backends, plus "model" and "model-noatomic": a small
 * in-memory reference backend (model.c) written against the backend
 * contract, which pins the store layer's own behaviour independently of
 * any real backend and covers a backend without atomic batches.
 *
 * Each test makes a loop and a pool, opens its store in the fixture's
 * mkdtemp directory, runs, closes, frees the store and checks that the loop
 * frees cleanly (nothing live: catches leaked futures and requests).
 * KVT_BACKEND=name runs one row only.
 */
#ifndef KV_TEST_CONFORMANCE_H
#define KV_TEST_CONFORMANCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "testutil.h"

/* ======================================================================== */
/* Backend table                                                            */
/* ======================================================================== */

typedef struct backend {
    const char *name;
    int (*open)(kv_store **out, kv_loop *loop, kv_pool *pool, const char *dir,
                unsigned flags);
    bool reopenable; /* data survives close and reopen */
    bool shared;     /* several stores may open the same data at once */
    const char *env; /* skipped unless this variable is set (servers) */
    bool remote;     /* also run in the two remote modes (see tmode) */
} backend;

/*
 * How a test reaches its store.  Every test of the suite runs unchanged in
 * each mode; the rows of the remote modes are "name+remote" and
 * "name+noloop" (KVT_BACKEND matches the row or the backend's name;
 * KVT_MODE=local|remote|noloop runs one mode).
 *  - TM_LOCAL:  the store is opened on the test thread's own loop.
 *  - TM_REMOTE: the store is opened on the loop of a driver thread that
 *    does nothing but run it; the test thread has its own loop (c->loop),
 *    so every call is forwarded and completes there.
 *  - TM_NOLOOP: the same driver, and the test thread has no loop of its
 *    own: c->loop is its private loop (kv_thread_loop), which kv_wait
 *    runs.
 */
typedef enum tmode { TM_LOCAL = 0, TM_REMOTE, TM_NOLOOP } tmode;

extern const backend backends[];

/* Run the tests as the test case group of suite "store", each against
 * every row of backends[] (the test's _i is the row). */
int tu_conformance_run(const char *group, const TTest *const *tests,
                       size_t ntests);

/* ======================================================================== */
/* Harness                                                                  */
/* ======================================================================== */

/* The test's temporary directory (the fixture makes and removes it). */
extern char *tmpdir;

void setup(void);
void teardown(void);

#define MAXKEYS 4096

typedef struct tctx {
    const backend *b;
    tmode mode;
    kv_loop *loop;  /* the test thread's loop (its futures complete there) */
    kv_pool *pool;
    kv_store *s;
    /* Remote modes: the driver thread and the store's loop (it owns it). */
    pthread_t driver;
    kv_loop *sloop;
    atomic_bool stop;
    int driver_rc; /* its kv_loop_new, then kv_loop_free of sloop */
    void *sloop_ready; /* sem_t: sloop is made */
    kv_key *keys[MAXKEYS];
    size_t nkeys;
} tctx;

/* Open row i's store in tmpdir with a new loop and pool; false: the row is
 * skipped (KVT_BACKEND names another, or its server is not set). */
bool ctx_init(tctx *c, int i);

#define OPEN(c)                                                                \
    tctx c##_storage;                                                          \
    tctx *c = &c##_storage;                                                    \
    if (!ctx_init(c, _i))                                                      \
    return

/* Close and reopen the store with flags (reopenable backends). */
void ctx_reopen(tctx *c, unsigned flags);
/* Open the row's store with flags as the mode wants (on the driver's loop
 * in the remote modes): the backend's open code. */
int ctx_open(tctx *c, kv_store **out, unsigned flags);
/* Close and free the store, the keys, the loop (which must be clean) and
 * the pool. */
void ctx_done(tctx *c);

/* A key valid until ctx_done. */
kv_key *K(tctx *c, const char *path);
/* Does r hold the value s? */
bool val_is(const kv_record *r, const char *s);

/* Put key=val with token tok, wanting status want: the new token. */
uint64_t put_(tctx *c, const char *key, const char *val, uint64_t tok, int want,
              int line);
#define PUT(c, key, val, tok) put_((c), (key), (val), (tok), KV_OK, __LINE__)
#define PUT_FAILS(c, key, val, tok, want)                                      \
    put_((c), (key), (val), (tok), (want), __LINE__)

/* Get key: its token, asserting its value (NULL: asserting it is absent). */
uint64_t get_(tctx *c, const char *key, const char *val, int line);
#define GET(c, key, val) get_((c), (key), (val), __LINE__)

bool has_(tctx *c, const char *key);

/* Does the future's key list hold exactly the ids listed (any order)? */
bool fut_keys_are(const kv_fut *f, const char *const *ids, size_t nids);
#define IDS(...) ((const char *const[]){__VA_ARGS__})
#define NIDS(...) (sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))
#define KEYS_ARE(f, ...) fut_keys_are((f), IDS(__VA_ARGS__), NIDS(__VA_ARGS__))

/* Run the whole query with next calls; ids of the results in order. */
size_t query_ids(tctx *c, const kv_query *q, char ids[][64], size_t max);
/* The ids sorted by kv_key_cmp (the expected ASC order): a qsort compare. */
int cmp_ids(const void *a, const void *b);
/* Put every id with its id as value. */
void put_all(tctx *c, const char *const *ids, size_t n);

/* A callback that counts completions (and frees the future). */
typedef struct counted {
    int calls;
    int status;
} counted;

void on_count(kv_fut *f, void *arg);

/* ======================================================================== */
/* Typed records: a codec for "name:age" persons                             */
/* ======================================================================== */

typedef struct person {
    char name[32];
    int age;
} person;

typedef struct pctx {
    atomic_int live; /* decoded objects not yet freed (decoded on the
                    * store's thread, freed on the test's in remote rows) */
} pctx;

/* The codec's three functions: encode "name:age" (a negative age fails on
 * purpose); decode, failing on values starting "BAD" and counting live
 * objects in its pctx; free. */
int p_encode(const void *obj, kv_buf *out, void *ctx);
int p_decode(const void *bytes, size_t len, void **out, void *ctx);
void p_free(void *obj, void *ctx);
/* The codec of persons, counting in pc. */
kv_codec person_codec(pctx *pc);

/* ======================================================================== */
/* get_or_put producers                                                     */
/* ======================================================================== */

typedef struct producer {
    tctx *c;
    int calls;
    const char *value;
    const char *race_value; /* non-NULL: another writer inserts it first */
    const person *obj;
    pctx *pc;     /* counts the objects it makes (typed) */
    kv_fut *hold; /* non-NULL: the last future, left for the test */
    bool pending; /* leave the future pending in hold */
} producer;

/* A kv_get_or_put producer (arg: a producer): value, obj, or, with
 * race_value, another writer's insert first. */
kv_fut *produce(const kv_key *key, void *arg);

#endif
