/*
 * redis_none.c - kv_redis_open when configure found no hiredis (built
 * instead of the backend's other files): it fails with KV_ENOTSUP.
 */
#include "config.h"

#include "store/backend.h"

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool, const char *uri,
                  unsigned flags)
{
    (void)out;
    (void)loop;
    (void)pool;
    (void)uri;
    (void)flags;
    kv__set_errmsg("kv_redis_open: kvstore was built without hiredis "
                   "(apt-get install libhiredis-dev and reconfigure)");
    return KV_ENOTSUP;
}
