/*
 * store/store_int.h - what the files of the store layer share; backends
 * need none of it.
 */
#ifndef KV_STORE_INT_H
#define KV_STORE_INT_H

#include "store/backend.h"

/* store.c: a store's state (kv_store.state). */
enum { KV__ST_OPEN = 0, KV__ST_CLOSING, KV__ST_CLOSED };

/* req->kind: which public call a request serves, for the generic
 * completion (req.c) and the admission limit's message. */
enum {
    KV__K_NONE = 0,
    KV__K_HAS,
    KV__K_HAS_MANY,
    KV__K_GET,
    KV__K_GET_MANY,
    KV__K_PUT,
    KV__K_PUT_MANY,
    KV__K_DELETE,
    KV__K_DELETE_MANY,
    KV__K_PUT_ATOMIC,
    KV__K_DELETE_ATOMIC,
    KV__K_MOVE,
    KV__K_DROP
};

/* req.c: finish f with status and msg (NULL or empty: no message). */
void kv__fut_fail_msg(kv_fut *f, int status, const char *msg);
/* req.c: a request with op set and no items; NULL on OOM. */
kv__req *kv__req_new(kv_store *s, kv__opcode op);
/* req.c: link req in the in-flight list and call ops->submit. */
void kv__req_submit(kv__req *req);
/*
 * Give req a new future (the caller's reference plus one the request holds
 * until kv__req_free), make kv_fut_cancel on it reach ops->cancel, and submit
 * it.  Returns the future (a failed one on OOM, req freed).
 */
kv_fut *kv__req_start(kv__req *req);
/* NULL if s is open (and writable if write), else a failed future. */
kv_fut *kv__store_check(kv_store *s, bool write);
/*
 * Check the arguments of a write of n records (closed/read-only state first,
 * then atomic support, the array, the codec's encode when values are
 * written, each key and raw value): NULL when they are fine, else a failed
 * future.  Duplicates are not checked here.  Used by store.c and helpers.c.
 */
kv_fut *kv__check_records(kv_store *s, const kv_record *recs, size_t n,
                          const kv_codec *codec, bool values, bool atomic,
                          bool single);
/* Free req's items, drop its future reference, free it. */
void kv__req_free(kv__req *req);
/* iter.c: make *dst a copy of *src that owns its key and after (each
 * duplicated): KV_OK, or KV_ENOMEM with nothing owned. */
int kv__query_copy(kv_query *dst, const kv_query *src);
/* iter.c: free what kv__query_copy duplicated (NULL pointers are fine) and
 * clear them. */
void kv__query_clear(kv_query *q);
/* iter.c: on close, mark every iterator closed; on free, detach them. */
void kv__iters_store_closing(kv_store *s);
void kv__iters_store_freed(kv_store *s);
/*
 * Move an item's key, value and token into a record, decoding the value
 * through codec (NULL: raw bytes).  value false: no value (val NULL).  On a
 * decode error returns the codec's code, out is zeroed and the item keeps
 * what it had.
 */
int kv__item_to_record(kv__item *item, kv_record *out, const kv_codec *codec,
                       bool value);
/* record.c: free one record's key and value (via codec if typed; the
 * record itself is not freed) and zero it. */
void kv__record_clear(kv_record *r, const kv_codec *codec);

/*
 * result.c: the store's results on futures (the core future's owned result
 * slot; see kv__fut_set_result for the ownership rules).  typed records
 * hold codec objects in val, freed with codec->free_obj (the future keeps a
 * copy of the codec).  An iterator set on a done future is freed with the
 * future unless taken.
 */
void kv__fut_set_records(kv_fut *f, kv_record *recs, size_t n,
                         const kv_codec *codec);
void kv__fut_set_keys(kv_fut *f, kv_key **keys, size_t n);
/* Free n keys and the array holding them (NULL: nothing). */
void kv__keys_free(kv_key **keys, size_t n);
/* A put batch's result: its skipped keys (owned, may be NULL with nkeys 0;
 * kv_fut_keys) and ntok tokens (copied, or all 0 when tokens is NULL;
 * kv_fut_tokens).  KV_OK, or KV_ENOMEM with keys freed and nothing set. */
int kv__fut_set_writes(kv_fut *f, kv_key **keys, size_t nkeys,
                       const uint64_t *tokens, size_t ntok);
void kv__fut_set_iter(kv_fut *f, kv_iter *it);
/* Take records out of f (caller owns them afterwards). */
kv_record *kv__fut_take_records(kv_fut *f, size_t *n);
/* Free the key and val of n records (val via codec if typed) and then the
 * array itself (never pass an element). */
void kv__records_free(kv_record *recs, size_t n, const kv_codec *codec);

/*
 * Threads.  The loop of the futures a call returns: the store's loop on its
 * own thread, else the calling thread's (kv__thread_loop; NULL if none can
 * be made, and the future then only reports its failure).
 */
static inline kv_loop *kv__floop(const kv_store *s)
{
    return kv__loop_on_thread(s->loop) ? s->loop : kv__thread_loop();
}
/* req.c: start req on the store's thread: KV_ECLOSED if the store closed
 * since the caller checked it (req freed), else as kv__req_start. */
kv_fut *kv__req_start_here(kv__req *req);
/*
 * remote.c: calls from a thread other than the store's loop thread.  Each
 * returns a future on caller (the calling thread's loop) that completes
 * with the outcome of the call made on the store's loop thread.
 *  - a request built on the calling thread (kv__req_start's forward);
 *  - whole calls of loop-thread state: close, query open (q and codec are
 *    copied here), and the iterator calls.
 */
kv_fut *kv__forward_req(kv__req *req, kv_loop *caller);
kv_fut *kv__forward_close(kv_store *s, kv_loop *caller);
kv_fut *kv__forward_query_open(kv_store *s, const kv_query *q,
                               const kv_codec *codec, kv_loop *caller);
enum { KV__ITER_NEXT, KV__ITER_FETCH_ALL, KV__ITER_DISPOSE };
kv_fut *kv__forward_iter(kv_iter *it, int what, kv_loop *caller);
/*
 * store.c: a call forwarded to s is on its way (any thread, before it is
 * handed over), or has arrived and been made (s's thread, the call's last
 * touch of s).  A call may wait in its thread's outbox (core.h) until that
 * thread's turn ends, after a kv_close and kv_store_free that other
 * threads made meanwhile: the handle is freed once every call on its way
 * has arrived (and failed KV_ECLOSED).
 */
void kv__store_sent(kv_store *s);
void kv__store_arrived(kv_store *s);

/* keyset.c: a set of borrowed keys (open addressing on kv_key_hash). */
typedef struct kv__keyset {
    const kv_key **slots;
    size_t cap; /* a power of two, 0 if empty */
} kv__keyset;
/* Room for n keys.  KV_OK or KV_ENOMEM. */
int kv__keyset_init(kv__keyset *ks, size_t n);
/* Add key: true if it was new, false if already present. */
bool kv__keyset_add(kv__keyset *ks, const kv_key *key);
bool kv__keyset_has(const kv__keyset *ks, const kv_key *key);
void kv__keyset_free(kv__keyset *ks);
#endif /* KV_STORE_INT_H */
