/*
 * store/backend.h - everything a backend needs from the store layer and
 * nothing else: the request and item types, the backend operation table,
 * kv__req_done, the store and iterator handles, and the storage encoding
 * of keys.  A backend includes this header (and the core's, through it).
 */
#ifndef KV_STORE_BACKEND_H
#define KV_STORE_BACKEND_H

#include "core/core.h"

/* ------------------------------------------------------------------------ */
/* key.c: the storage encoding of keys, shared by backends.                  */
/* ------------------------------------------------------------------------ */

/*
 * Encode key as the bytes of each namespace id followed by 0x00.  memcmp
 * order of encodings (shorter first on a common prefix) equals kv_key_cmp
 * order, and every key below k has k's encoding as a prefix.  Appends to
 * out.  KV_OK or KV_ENOMEM.
 */
int kv__key_encode(const kv_key *key, kv_buf *out);
/* Decode what kv__key_encode made.  KV_ECORRUPT on malformed bytes. */
int kv__key_decode(kv_key **out, const void *bytes, size_t len);
/*
 * The key limits of kvstore.h ("Keys") on an encoding (a move's destination
 * keys are built as bytes): its kv_key_id is exactly as long as the
 * encoding, its depth is its number of 0x00 bytes (a move never changes a
 * namespace, so KV_NS_MAX_LEN holds).  NULL if within the limits, else the
 * name of the limit passed.
 */
#define KV__LIMIT_STR_(x) #x
#define KV__LIMIT_STR(x) KV__LIMIT_STR_(x)
static inline const char *kv__key_enc_limit(const void *enc, size_t len)
{
    if (len > KV_KEY_MAX_LEN)
        return "KV_KEY_MAX_LEN (" KV__LIMIT_STR(KV_KEY_MAX_LEN) " bytes)";
    size_t depth = 0;
    for (const unsigned char *p = enc, *e = p + len; p < e; p++)
        depth += *p == 0;
    return depth > KV_KEY_MAX_DEPTH
               ? "KV_KEY_MAX_DEPTH (" KV__LIMIT_STR(KV_KEY_MAX_DEPTH)
                 " namespaces)"
               : NULL;
}

/* ------------------------------------------------------------------------ */
/* store.c: the generic layer and the backend contract                      */
/* ------------------------------------------------------------------------ */

typedef enum kv__opcode {
    KV__OP_HAS = 1,       /* items: key -> status OK / ENOTFOUND, token     */
    KV__OP_GET,           /* items: key -> status, val/len (if want_value), token */
    KV__OP_PUT,           /* items: key,val,len,token -> status OK/ECONFLICT, token */
    KV__OP_DELETE,        /* items: key,token -> status OK/ECONFLICT (token 0 never matches) */
    /* Token KV_TOKEN_ANY (item.any): PUT writes whatever is there (OK, the
     * new token); DELETE removes it (OK) or finds none (ENOTFOUND; ECONFLICT
     * is read the same way).  Never a conflict, in atomic requests too. */
    KV__OP_PUT_ATOMIC,    /* as PUT; on any conflict nothing is written      */
    KV__OP_DELETE_ATOMIC, /* as DELETE; on any conflict nothing is written   */
    KV__OP_MOVE,          /* items: key -> key2; req status ECONFLICT on collision */
    KV__OP_DROP,          /* items: key; deletes key and all below it        */
    KV__OP_QUERY_OPEN,    /* iter: open a cursor for iter->q                 */
    KV__OP_ITER_FETCH,    /* iter: fill items (status OK) with the next rows; eof.
                           * A row the backend cannot read is an item with
                           * status KV_ECORRUPT, its key, and as val an
                           * optional NUL-terminated message (len its length)
                           * saying why; iter.c reports or skips it. */
    KV__OP_ITER_DISPOSE,  /* iter: release the cursor                        */
    KV__OP_CLOSE          /* the request given to ops->close                 */
} kv__opcode;

typedef struct kv__item {
    kv_key *key;   /* owned by the item */
    kv_key *key2;  /* MOVE destination, else NULL */
    void *val;     /* PUT input / GET and FETCH output (kv__malloc'd); owned */
    size_t len;
    uint64_t token; /* input CAS token; output stored/new token */
    int status;     /* output: KV_OK, KV_ECONFLICT or KV_ENOTFOUND */
    bool any;       /* input token was KV_TOKEN_ANY (set by the store) */
} kv__item;

/* Allocate n zeroed items; free n items with their keys and values. */
kv__item *kv__items_new(size_t n);
void kv__items_free(kv__item *items, size_t n);

typedef struct kv__req kv__req;
struct kv__req {
    kv__opcode op;
    kv_store *store;
    kv__item *items;   /* inputs and outputs; FETCH: the backend allocates */
    size_t n;
    bool want_value;   /* GET/FETCH: false -> do not read values */
    bool eof;          /* FETCH output: no rows after these */
    bool canceled;     /* set by the store layer when the future was cancelled */
    bool forwarded;    /* made on another thread and handed to this loop:
                        * its outcome travels back to that thread, whose
                        * next call comes a round trip later */
    kv_iter *iter;     /* QUERY_OPEN, ITER_FETCH, ITER_DISPOSE */
    void *bpriv;       /* free for the backend */
    /* store.c private below */
    kv_fut *fut;
    kv__list link;     /* the store's in-flight list (linked while in it) */
    int kind;
    kv_codec codec;
    bool typed;
    bool counted;      /* in the store's operations in flight (admission) */
    /* completion hook for iterator and close requests (NULL: generic) */
    void (*done)(kv__req *req, int status, const char *msg);
};

/*
 * The backend contract.  Every callback runs on the loop thread.  submit
 * starts req and must call kv__req_done exactly once for it, never inside
 * submit itself (complete from a CQE or pool done callback).  cancel (may be
 * NULL) is a best-effort hint that req's future was cancelled.  close stops
 * new work, completes every outstanding req (KV_ECANCELED is fine),
 * releases cursors, descriptors and locks, then calls kv__req_done(req).
 * destroy frees the backend state after close completed.
 */
#define KV__BACKEND_VERSION 1
struct kv_backend_ops {
    int version;
    const char *name;
    bool atomic_batch;
    void (*submit)(kv_store *s, kv__req *req);
    void (*cancel)(kv_store *s, kv__req *req);
    void (*close)(kv_store *s, kv__req *req);
    void (*destroy)(kv_store *s);
    /*
     * Optional, for stores whose read_any is set: a HAS or GET made on a
     * thread other than the store's loop, taken without the loop.  Runs on
     * that thread; caller is its loop, on which the backend calls
     * kv__req_done (never inside submit_any).  KV_OK: req is taken.  Else
     * (KV_ECLOSED once close started, KV_ENOMEM) req is not taken and the
     * call fails with that code.  close must wait until every req taken
     * has been handed back (kv__req_release_store first), but not for the
     * callers' loops: a caller may be waiting for the close.
     */
    int (*submit_any)(kv_store *s, kv__req *req, kv_loop *caller);
};

/*
 * Backend completion: status KV_OK (see items) or a negative code for the
 * whole request, with an optional printf message.  Loop thread (a request
 * taken by submit_any: its caller's loop thread).
 */
void kv__req_done(kv__req *req, int status, const char *fmt, ...)
    KV__PRINTF(3, 4);
/*
 * A request taken by submit_any, whose outcome is ready: drop what it holds
 * of its store (the admission count) and its store pointer, so that the
 * store may close and be freed while the completion travels to the
 * caller's loop.  Any thread; call it before handing req over.
 */
void kv__req_release_store(kv__req *req);

/* The store handle.  Backends read the public part. */
struct kv_store {
    const struct kv_backend_ops *ops;
    void *backend;       /* the backend's state */
    kv_loop *loop;
    kv_pool *pool;
    unsigned flags;      /* KV_READONLY, ... */
    bool read_any;       /* set by the backend at open: point reads from
                          * other threads go to ops->submit_any */
    /* store.c private below */
    _Atomic int state;   /* read by any thread (the argument checks) */
    kv__list inflight;   /* kv__req.link, newest first */
    size_t ninflight;
    kv__list iters;      /* live iterators (kv_iter.link), newest first */
    kv_fut *close_fut;
    kv__req *close_req;  /* allocated up front: close never fails on OOM */
    atomic_size_t nops;  /* operations accepted, not completed (any thread) */
    atomic_size_t max_ops; /* 0: no limit */
    bool free_when_closed; /* kv_store_free from another thread */
    kv__call free_call;  /* that free, forwarded to the loop thread */
    atomic_size_t transit; /* calls forwarded here, not yet arrived */
    bool free_when_arrived; /* freed: the handle goes when transit is 0 */
};

/* Make a store over a backend (called by kv_sqlite_open / kv_fs_open). */
int kv__store_new(kv_store **out, const struct kv_backend_ops *ops,
                  void *backend, kv_loop *loop, kv_pool *pool, unsigned flags);

/* The iterator.  Backends read q and use bpriv; the rest is store.c's. */
struct kv_iter {
    kv_store *store;
    kv_query q;          /* q.key is an owned copy */
    void *bpriv;         /* backend cursor */
    /* store.c private below */
    kv__list link;       /* the store's iters */
    int state;
    kv_codec codec;
    bool typed;
    kv__item *buf;       /* fetched, not yet returned */
    size_t nbuf, pos;
    bool eof;
    bool fetching;
    struct kv__waiter *waiters, *waiters_tail;
    kv_loop *loop;       /* survives kv_store_free */
    _Atomic bool finished; /* a next returned the end (kv_iter_finished reads
                            * it from any thread) */
    bool freed;          /* kv_iter_free called: free when idle */
    bool disposing;      /* ITER_DISPOSE in flight */
    kv_fut *dispose_fut; /* internal; user dispose futures relay it */
    kv__req *dispose_req; /* allocated at open: dispose never fails on OOM */
    kv__call free_call;  /* kv_iter_free from another thread */
    kv_key **corrupt;    /* skip_corrupt: the keys passed over (kv_iter_corrupt) */
    size_t ncorrupt, capcorrupt;
};

/*
 * flags.c: the open flags check every kv_*_open makes first.  KV_OK if
 * flags has no bit outside allowed; else KV_EINVAL, with kv_last_errmsg
 * "kv_<backend>_open: ..." naming each foreign flag, the backend it belongs
 * to, any unknown bits, and the flags backend accepts.  backend is the name
 * in kv_<backend>_open ("sqlite", "fs", "redis").
 */
int kv__check_open_flags(const char *backend, unsigned flags,
                         unsigned allowed);
#endif /* KV_STORE_BACKEND_H */
