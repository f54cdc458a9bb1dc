/*
 * result.c - the store's results on futures: records (with the codec that
 * frees typed values), keys and an iterator, each one kind of the core
 * future's owned result slot (kv__fut_set_result), with their setters,
 * takers and public getters.
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

/* A typed result keeps a copy of its codec in the future's inline room. */
_Static_assert(sizeof(kv_codec) <= sizeof(kv__fut_aux),
               "kv__fut_aux must hold a kv_codec");

void kv__records_free(kv_record *recs, size_t n, const kv_codec *codec)
{
    if (recs == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        kv_key_free(recs[i].key);
        if (recs[i].val == NULL)
            continue;
        if (codec != NULL) {
            if (codec->free_obj != NULL)
                codec->free_obj(recs[i].val, codec->ctx);
        } else {
            kv__free(recs[i].val);
        }
    }
    kv__free(recs);
}

static void release_records(void *ptr, size_t n, const kv__fut_aux *aux)
{
    kv_codec codec;
    if (aux != NULL)
        memcpy(&codec, aux, sizeof codec);
    kv__records_free(ptr, n, aux != NULL ? &codec : NULL);
}

void kv__keys_free(kv_key **keys, size_t n)
{
    if (keys == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        kv_key_free(keys[i]);
    kv__free(keys);
}

static void release_keys(void *ptr, size_t n, const kv__fut_aux *aux)
{
    (void)aux;
    kv__keys_free(ptr, n);
}

static void release_iter(void *ptr, size_t n, const kv__fut_aux *aux)
{
    (void)n;
    (void)aux;
    kv_iter_free(ptr);
}

/* The result of a put batch: its skipped (or conflicting) keys and the
 * token of each record, parallel to the batch (kv__fut_set_writes). */
typedef struct wres {
    kv_key **keys;
    size_t nkeys;
    size_t ntok;
    uint64_t tok[];
} wres;

static void release_writes(void *ptr, size_t n, const kv__fut_aux *aux)
{
    (void)n;
    (void)aux;
    wres *w = ptr;
    if (w == NULL)
        return;
    kv__keys_free(w->keys, w->nkeys);
    kv__free(w);
}

static const kv__fut_kind records_kind = {release_records, false};
static const kv__fut_kind keys_kind = {release_keys, false};
static const kv__fut_kind writes_kind = {release_writes, false};
/* Freeing an iterator may start its dispose request: never inside the
 * setter of a cancelled future, always with the future. */
static const kv__fut_kind iter_kind = {release_iter, true};

/* ------------------------------------------------------------------------ */
/* Setters and takers (producers)                                           */
/* ------------------------------------------------------------------------ */

void kv__fut_set_records(kv_fut *f, kv_record *recs, size_t n,
                         const kv_codec *codec)
{
    kv__fut_aux aux;
    if (codec != NULL) {
        memset(&aux, 0, sizeof aux);
        memcpy(&aux, codec, sizeof *codec);
    }
    kv__fut_set_result(f, &records_kind, recs, n, codec != NULL ? &aux : NULL);
}

void kv__fut_set_keys(kv_fut *f, kv_key **keys, size_t n)
{
    kv__fut_set_result(f, &keys_kind, keys, n, NULL);
}

int kv__fut_set_writes(kv_fut *f, kv_key **keys, size_t nkeys,
                       const uint64_t *tokens, size_t ntok)
{
    wres *w = NULL;
    if (ntok <= (SIZE_MAX - sizeof *w) / sizeof(uint64_t))
        w = kv__malloc(sizeof *w + ntok * sizeof(uint64_t));
    if (w == NULL) {
        kv__keys_free(keys, nkeys);
        return KV_ENOMEM;
    }
    w->keys = keys;
    w->nkeys = nkeys;
    w->ntok = ntok;
    if (ntok > 0 && tokens != NULL)
        memcpy(w->tok, tokens, ntok * sizeof(uint64_t));
    else if (ntok > 0)
        memset(w->tok, 0, ntok * sizeof(uint64_t));
    kv__fut_set_result(f, &writes_kind, w, nkeys, NULL);
    return KV_OK;
}

void kv__fut_set_iter(kv_fut *f, kv_iter *it)
{
    kv__fut_set_result(f, &iter_kind, it, 0, NULL);
}

kv_record *kv__fut_take_records(kv_fut *f, size_t *n)
{
    return kv__fut_take_result(f, &records_kind, n);
}

/* ------------------------------------------------------------------------ */
/* Completion by the caller (kv_fut_new futures)                            */
/* ------------------------------------------------------------------------ */

void kv_fut_complete_records(kv_fut *fut, const kv_record *recs, size_t n)
{
    if (fut == NULL || kv_fut_done(fut)) /* the OOM future is done too */
        return;
    if (recs == NULL && n > 0) {
        kv__fut_finish(fut, KV_EINVAL, "kv_fut_complete_records: NULL recs");
        return;
    }
    kv_record *copy = NULL;
    if (n > 0) {
        copy = kv__calloc(n, sizeof *copy);
        if (copy == NULL)
            goto oom;
        for (size_t i = 0; i < n; i++) {
            if (recs[i].key != NULL &&
                kv_key_dup(&copy[i].key, recs[i].key) != KV_OK)
                goto oom;
            if (recs[i].val != NULL) {
                copy[i].val = kv__memdup(recs[i].val, recs[i].len);
                if (copy[i].val == NULL)
                    goto oom;
                copy[i].len = recs[i].len;
            }
            copy[i].token = recs[i].token;
        }
    }
    kv__fut_set_records(fut, copy, n, NULL);
    kv__fut_finish(fut, KV_OK, NULL);
    return;
oom:
    kv__records_free(copy, n, NULL); /* calloc'd: unset entries are NULL */
    kv__fut_finish(fut, KV_ENOMEM, "kv_fut_complete_records: out of memory");
}

/* ------------------------------------------------------------------------ */
/* Getters                                                                  */
/* ------------------------------------------------------------------------ */

const kv_record *kv_fut_record(const kv_fut *fut)
{
    size_t n;
    kv_record *recs = kv__fut_result(fut, &records_kind, &n);
    return n > 0 ? &recs[0] : NULL;
}

const kv_record *kv_fut_records(const kv_fut *fut, size_t *n)
{
    size_t m;
    kv_record *recs = kv__fut_result(fut, &records_kind, &m);
    if (n != NULL)
        *n = m;
    return m > 0 ? recs : NULL;
}

const kv_key *const *kv_fut_keys(const kv_fut *fut, size_t *n)
{
    size_t m;
    kv_key **keys = kv__fut_result(fut, &keys_kind, &m);
    if (keys == NULL) {
        const wres *w = kv__fut_result(fut, &writes_kind, &m);
        keys = w != NULL ? w->keys : NULL;
        m = w != NULL ? w->nkeys : 0;
    }
    if (n != NULL)
        *n = m;
    return m > 0 ? (const kv_key *const *)keys : NULL;
}

const uint64_t *kv_fut_tokens(const kv_fut *fut, size_t *n)
{
    size_t m;
    const wres *w = kv__fut_result(fut, &writes_kind, &m);
    size_t nt = w != NULL ? w->ntok : 0;
    if (n != NULL)
        *n = nt;
    return nt > 0 ? w->tok : NULL;
}

kv_iter *kv_fut_take_iter(kv_fut *fut)
{
    if (!kv_fut_done(fut))
        return NULL;
    return kv__fut_take_result(fut, &iter_kind, NULL);
}
