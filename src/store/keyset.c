/*
 * keyset.c - a set of borrowed keys (open addressing on kv_key_hash), for
 * duplicate checks and the helpers' conflict sets.
 */
#include "config.h"

#include "store/store_int.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Key sets                                                                 */
/* ------------------------------------------------------------------------ */

int kv__keyset_init(kv__keyset *ks, size_t n)
{
    ks->slots = NULL;
    ks->cap = 0;
    if (n == 0)
        return KV_OK;
    size_t cap = 8;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4)
            return KV_ENOMEM;
        cap *= 2;
    }
    ks->slots = kv__calloc(cap, sizeof *ks->slots);
    if (ks->slots == NULL)
        return KV_ENOMEM;
    ks->cap = cap;
    return KV_OK;
}

/* The slot holding key, or the empty slot where it would go. */
static size_t keyset_find(const kv__keyset *ks, const kv_key *key)
{
    size_t mask = ks->cap - 1;
    size_t i = (size_t)kv_key_hash(key) & mask;
    while (ks->slots[i] != NULL && !kv_key_equal(ks->slots[i], key))
        i = (i + 1) & mask;
    return i;
}

bool kv__keyset_add(kv__keyset *ks, const kv_key *key)
{
    size_t i = keyset_find(ks, key);
    if (ks->slots[i] != NULL)
        return false;
    ks->slots[i] = key;
    return true;
}

bool kv__keyset_has(const kv__keyset *ks, const kv_key *key)
{
    if (ks->cap == 0)
        return false;
    return ks->slots[keyset_find(ks, key)] != NULL;
}

void kv__keyset_free(kv__keyset *ks)
{
    kv__free(ks->slots);
    ks->slots = NULL;
    ks->cap = 0;
}
