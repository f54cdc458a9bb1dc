/*
 * redis_none.c - kv_redis_open when configure found no hiredis (built
 * instead of the backend's other files): it fails with KV_ENOTSUP.
 */
#include "config.h"

#include "backend/redis/tls.h"
#include "store/backend.h"

#ifdef KV_TEST_HOOKS
int kv__redis_tls_test_alloc(void)
{
    return KV_ENOTSUP;
}

void kv__redis_tls_test_thread_stop(void)
{
}
#endif

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool, const char *uri,
                  unsigned flags)
{
    (void)pool;
    (void)flags;
    if (out == NULL || loop == NULL || uri == NULL) {
        kv__set_errmsg("kv_redis_open: out, loop and uri are required");
        return KV_EINVAL;
    }
    kv__set_errmsg("kv_redis_open: kvstore was built without hiredis "
                   "(apt-get install libhiredis-dev and reconfigure)");
    return KV_ENOTSUP;
}
