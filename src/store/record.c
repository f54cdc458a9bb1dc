/*
 * record.c - records (kv_buf_append lives in alloc.c).
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

kv_record *kv_record_dup(const kv_record *r)
{
    if (r == NULL)
        return NULL;
    kv_record *d = kv__calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    if (r->key != NULL && kv_key_dup(&d->key, r->key) != KV_OK) {
        kv__free(d);
        return NULL;
    }
    d->token = r->token;
    /*
     * A typed result has an object in val and len 0; its bytes are not
     * ours to copy, so only key and token come along.  A raw record with an
     * empty value keeps a valid (1-byte) block so val is non-NULL as in the
     * source.
     */
    if (r->val != NULL && r->len > 0) {
        d->val = kv__memdup(r->val, r->len);
        if (d->val == NULL) {
            kv_key_free(d->key);
            kv__free(d);
            return NULL;
        }
        d->len = r->len;
    }
    return d;
}

void kv__record_clear(kv_record *r, const kv_codec *codec)
{
    kv_key_free(r->key);
    if (r->val != NULL) {
        if (codec == NULL)
            kv__free(r->val);
        else if (codec->free_obj != NULL)
            codec->free_obj(r->val, codec->ctx);
    }
    memset(r, 0, sizeof *r);
}

void kv_record_free(kv_record *r)
{
    if (r == NULL)
        return;
    kv_key_free(r->key);
    kv__free(r->val);
    kv__free(r);
}
