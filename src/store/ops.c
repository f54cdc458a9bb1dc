/*
 * ops.c - the record operations of the public API (kv_put ... kv_drop_prefix):
 * check the arguments, copy the inputs into a request and start it.
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Argument checks and input copies                                         */
/* ------------------------------------------------------------------------ */

/* Check one key of a record operation: KV_OK or a failed future. */
static kv_fut *check_key(kv_store *s, const kv_key *key, const char *what,
                         size_t i, bool single)
{
    if (key == NULL) {
        if (single)
            return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s is NULL", what);
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s[%zu] is NULL", what, i);
    }
    if (kv_key_len(key) == 0) {
        if (single)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "%s is the empty key", what);
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "%s[%zu] is the empty key",
                              what, i);
    }
    /* The limits of every backend (kvstore.h, "Keys"): one check here. */
    size_t n = kv_key_len(key), idlen = strlen(kv_key_id(key));
    const char *why = NULL;
    size_t lim = 0;
    if (n > KV_KEY_MAX_DEPTH) {
        why = "namespaces";
        lim = KV_KEY_MAX_DEPTH;
    } else if (idlen > KV_KEY_MAX_LEN) {
        why = "bytes";
        lim = KV_KEY_MAX_LEN;
    }
    for (size_t j = 0; why == NULL && j < n; j++) {
        const kv_ns *ns = kv_key_ns(key, j);
        size_t fl = strlen(ns->field);
        if (fl + (fl > 0) + strlen(ns->value) > KV_NS_MAX_LEN) {
            why = "bytes in a namespace";
            lim = KV_NS_MAX_LEN;
        }
    }
    if (why != NULL && single)
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "%s has more than %zu %s (the key limits "
                              "of kvstore.h)", what, lim, why);
    if (why != NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL,
                              "%s[%zu] has more than %zu %s (the key limits "
                              "of kvstore.h)", what, i, lim, why);
    return NULL;
}

static kv_fut *check_codec(kv_store *s, const kv_codec *codec, bool enc,
                           bool dec)
{
    if (codec == NULL)
        return NULL;
    if (enc && codec->encode == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "codec has no encode");
    if (dec && codec->decode == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "codec has no decode");
    return NULL;
}

kv_fut *kv__check_records(kv_store *s, const kv_record *recs, size_t n,
                          const kv_codec *codec, bool values, bool atomic,
                          bool single)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (atomic && !s->ops->atomic_batch)
        return kv__fut_failed(kv__floop(s), KV_ENOTSUP,
                              "the %s backend has no atomic batches",
                              s->ops->name);
    if (recs == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "records array is NULL");
    if (values && (f = check_codec(s, codec, true, false)) != NULL)
        return f;
    for (size_t i = 0; i < n; i++) {
        if ((f = check_key(s, recs[i].key, single ? "key" : "recs.key", i,
                           single)) != NULL)
            return f;
        if (values && codec == NULL && recs[i].val == NULL && recs[i].len > 0)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "the value of %s is NULL with length %zu",
                                  kv_key_id(recs[i].key), recs[i].len);
        if (values && codec == NULL && recs[i].len > KV_MAX_VALUE_SIZE)
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "the value of %s is %zu bytes, more than "
                                  "KV_MAX_VALUE_SIZE",
                                  kv_key_id(recs[i].key), recs[i].len);
    }
    return NULL;
}

/* Fail KV_EDUPLICATE if keys (key_at(i)) name one key twice. */
static kv_fut *check_dups(kv_store *s, const void *base, size_t stride,
                          size_t off, size_t n)
{
    if (n < 2)
        return NULL;
    kv__keyset ks;
    if (kv__keyset_init(&ks, n) != KV_OK)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    const char *p = base;
    for (size_t i = 0; i < n; i++) {
        const kv_key *k = *(const kv_key *const *)(const void *)(p + i * stride + off);
        if (!kv__keyset_add(&ks, k)) {
            kv__keyset_free(&ks);
            return kv__fut_failed(kv__floop(s), KV_EDUPLICATE,
                                  "the batch names %s twice", kv_key_id(k));
        }
    }
    kv__keyset_free(&ks);
    return NULL;
}

/* Copy (or encode) a value into an item.  KV_OK or an error code. */
static int item_set_value(kv__item *it, const void *val, size_t len,
                          const kv_codec *codec)
{
    if (codec != NULL) {
        kv_buf b = {NULL, 0, 0};
        int rc = codec->encode(val, &b, codec->ctx);
        if (rc != KV_OK) {
            kv__free(b.data);
            return rc < 0 ? rc : KV_ERROR;
        }
        if (b.len > KV_MAX_VALUE_SIZE) {
            kv__free(b.data);
            return KV_EINVAL; /* the encoding is too large to store */
        }
        if (b.data == NULL) {
            b.data = kv__malloc(1);
            if (b.data == NULL)
                return KV_ENOMEM;
        }
        it->val = b.data;
        it->len = b.len;
        return KV_OK;
    }
    it->val = kv__memdup(val, len);
    if (it->val == NULL)
        return KV_ENOMEM;
    it->len = len;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* Writes                                                                   */
/* ------------------------------------------------------------------------ */

static kv_fut *write_records(kv_store *s, int kind, kv__opcode op,
                             const kv_record *recs, size_t n,
                             const kv_codec *codec, bool values, bool atomic,
                             bool single)
{
    kv_fut *f = kv__check_records(s, recs, n, codec, values, atomic, single);
    if (f != NULL)
        return f;
    if ((f = check_dups(s, recs, sizeof *recs, offsetof(kv_record, key), n)))
        return f;
    if (kind == KV__K_DELETE && recs[0].token == 0)
        return kv__fut_failed(kv__floop(s), KV_ECONFLICT,
                              "token conflict on %s: token 0 never matches a "
                              "stored record",
                              kv_key_id(recs[0].key));
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);

    kv__req *req = kv__req_new(s, op);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = kind;
    for (size_t i = 0; i < n; i++) {
        kv__item *it = &req->items[i];
        int rc = kv_key_dup(&it->key, recs[i].key);
        if (rc == KV_OK && values)
            rc = item_set_value(it, recs[i].val, recs[i].len, codec);
        if (rc != KV_OK) {
            kv__req_free(req);
            if (codec != NULL && rc != KV_ENOMEM)
                return kv__fut_failed(kv__floop(s), rc,
                                      "cannot encode the value of %s: %s",
                                      kv_key_id(recs[i].key), kv_strerror(rc));
            return kv__fut_failed(kv__floop(s), rc, NULL);
        }
        it->token = recs[i].token;
        it->any = recs[i].token == KV_TOKEN_ANY;
    }
    return kv__req_start(req);
}

kv_fut *kv_put(kv_store *s, const kv_record *rec, const kv_codec *codec)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (rec == NULL)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "record is NULL");
    return write_records(s, KV__K_PUT, KV__OP_PUT, rec, 1, codec, true, false,
                         true);
}

kv_fut *kv_put_value(kv_store *s, const kv_key *key, const void *val,
                     size_t len, const kv_codec *codec)
{
    kv_record r = {(kv_key *)key, (void *)val, len, 0};
    return kv_put(s, &r, codec);
}

kv_fut *kv_put_many(kv_store *s, const kv_record *recs, size_t n,
                    const kv_codec *codec)
{
    return write_records(s, KV__K_PUT_MANY, KV__OP_PUT, recs, n, codec, true,
                         false, false);
}

kv_fut *kv_put_atomic(kv_store *s, const kv_record *recs, size_t n,
                      const kv_codec *codec)
{
    return write_records(s, KV__K_PUT_ATOMIC, KV__OP_PUT_ATOMIC, recs, n, codec,
                         true, true, false);
}

kv_fut *kv_delete(kv_store *s, const kv_key *key, uint64_t token)
{
    kv_record r = {(kv_key *)key, NULL, 0, token};
    return write_records(s, KV__K_DELETE, KV__OP_DELETE, &r, 1, NULL, false, false,
                         true);
}

kv_fut *kv_delete_many(kv_store *s, const kv_record *recs, size_t n)
{
    return write_records(s, KV__K_DELETE_MANY, KV__OP_DELETE, recs, n, NULL, false,
                         false, false);
}

kv_fut *kv_delete_atomic(kv_store *s, const kv_record *recs, size_t n)
{
    return write_records(s, KV__K_DELETE_ATOMIC, KV__OP_DELETE_ATOMIC, recs, n,
                         NULL, false, true, false);
}

/* ------------------------------------------------------------------------ */
/* Reads                                                                    */
/* ------------------------------------------------------------------------ */

static kv_fut *read_keys(kv_store *s, int kind, kv__opcode op,
                         const kv_key *const *keys, size_t n,
                         const kv_codec *codec, bool single)
{
    kv_fut *f = kv__store_check(s, false);
    if (f != NULL)
        return f;
    if (keys == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "keys array is NULL");
    if ((f = check_codec(s, codec, false, true)) != NULL)
        return f;
    for (size_t i = 0; i < n; i++)
        if ((f = check_key(s, keys[i], single ? "key" : "keys", i, single)))
            return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);

    /* Read batches deduplicate: one item per distinct key. */
    kv__keyset ks;
    if (kv__keyset_init(&ks, n) != KV_OK)
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    kv__req *req = kv__req_new(s, op);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        kv__keyset_free(&ks);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->kind = kind;
    req->want_value = op == KV__OP_GET;
    if (codec != NULL) {
        req->codec = *codec;
        req->typed = true;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (n > 1 && !kv__keyset_add(&ks, keys[i]))
            continue;
        if (kv_key_dup(&req->items[m].key, keys[i]) != KV_OK) {
            req->n = m;
            kv__req_free(req);
            kv__keyset_free(&ks);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
        m++;
    }
    req->n = m;
    kv__keyset_free(&ks);
    return kv__req_start(req);
}

kv_fut *kv_has(kv_store *s, const kv_key *key)
{
    return read_keys(s, KV__K_HAS, KV__OP_HAS, &key, 1, NULL, true);
}

kv_fut *kv_has_many(kv_store *s, const kv_key *const *keys, size_t n)
{
    return read_keys(s, KV__K_HAS_MANY, KV__OP_HAS, keys, n, NULL, false);
}

kv_fut *kv_get(kv_store *s, const kv_key *key, const kv_codec *codec)
{
    return read_keys(s, KV__K_GET, KV__OP_GET, &key, 1, codec, true);
}

kv_fut *kv_get_many(kv_store *s, const kv_key *const *keys, size_t n,
                    const kv_codec *codec)
{
    return read_keys(s, KV__K_GET_MANY, KV__OP_GET, keys, n, codec, false);
}

/* ------------------------------------------------------------------------ */
/* Prefix operations                                                        */
/* ------------------------------------------------------------------------ */

kv_fut *kv_move_prefix_atomic(kv_store *s, const kv_key *const *from,
                              const kv_key *const *to, size_t n)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (!s->ops->atomic_batch)
        return kv__fut_failed(kv__floop(s), KV_ENOTSUP,
                              "the %s backend has no atomic batches",
                              s->ops->name);
    if ((from == NULL || to == NULL) && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "key array is NULL");
    for (size_t i = 0; i < n; i++) {
        if ((f = check_key(s, from[i], "from", i, false)) != NULL ||
            (f = check_key(s, to[i], "to", i, false)) != NULL)
            return f;
        if (kv_key_equal(from[i], to[i]) ||
            kv_key_is_ancestor(from[i], to[i]))
            return kv__fut_failed(kv__floop(s), KV_EINVAL,
                                  "cannot move %s into itself (%s)",
                                  kv_key_id(from[i]), kv_key_id(to[i]));
    }
    if ((f = check_dups(s, from, sizeof *from, 0, n)) != NULL ||
        (f = check_dups(s, to, sizeof *to, 0, n)) != NULL)
        return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);
    kv__req *req = kv__req_new(s, KV__OP_MOVE);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = KV__K_MOVE;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&req->items[i].key, from[i]) != KV_OK ||
            kv_key_dup(&req->items[i].key2, to[i]) != KV_OK) {
            kv__req_free(req);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
    }
    return kv__req_start(req);
}

kv_fut *kv_drop_prefix(kv_store *s, const kv_key *const *keys, size_t n)
{
    kv_fut *f = kv__store_check(s, true);
    if (f != NULL)
        return f;
    if (keys == NULL && n > 0)
        return kv__fut_failed(kv__floop(s), KV_EINVAL, "keys array is NULL");
    for (size_t i = 0; i < n; i++)
        if ((f = check_key(s, keys[i], "keys", i, false)) != NULL)
            return f;
    if ((f = check_dups(s, keys, sizeof *keys, 0, n)) != NULL)
        return f;
    if (n == 0)
        return kv__fut_done_now(kv__floop(s), KV_OK);
    kv__req *req = kv__req_new(s, KV__OP_DROP);
    if (req == NULL || (req->items = kv__items_new(n)) == NULL) {
        kv__free(req);
        return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
    }
    req->n = n;
    req->kind = KV__K_DROP;
    for (size_t i = 0; i < n; i++) {
        if (kv_key_dup(&req->items[i].key, keys[i]) != KV_OK) {
            kv__req_free(req);
            return kv__fut_failed(kv__floop(s), KV_ENOMEM, NULL);
        }
    }
    return kv__req_start(req);
}
