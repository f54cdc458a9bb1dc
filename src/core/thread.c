/*
 * thread.c - the calling thread's loop: the first loop a thread creates is
 * its own; a thread without one that calls a store from another thread
 * gets a small private loop, made on first use and freed at thread exit.
 * The threading model is in docs/DESIGN.md ("core": threads).
 */
#include "config.h"

#include "core/core_int.h"

#include <pthread.h>

/* Ring size of a private loop: it only waits for forwarded results. */
#define PRIVATE_SQ 8u

static _Thread_local kv_loop *tl_loop; /* this thread's own loop, or NULL */
static _Thread_local bool tl_private;  /* tl_loop was made here */

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t key; /* holds a private loop, for its destructor */
static bool key_ok;

/*
 * Thread exit with a private loop: run it until nothing is pending (a
 * forwarded call still in flight posts its result into the loop, so the
 * loop must wait for it), then free it.
 */
static void private_loop_exit(void *p)
{
    kv_loop *loop = p;
    tl_loop = loop; /* kv_loop_free forgets it again */
    tl_private = true;
    while (kv_loop_alive(loop))
        if (kv_loop_run(loop, KV_RUN_DEFAULT) < 0)
            break;
    if (kv_loop_free(loop) != KV_OK) {
        /* A store opened on it is still open: leak the loop, not crash. */
        tl_loop = NULL;
        tl_private = false;
    }
}

static void make_key(void)
{
    key_ok = pthread_key_create(&key, private_loop_exit) == 0;
}

void kv__thread_adopt(kv_loop *loop)
{
    if (tl_loop != NULL)
        return;
    tl_loop = loop;
    tl_private = false;
}

void kv__thread_disown(kv_loop *loop)
{
    if (tl_loop != loop)
        return;
    if (tl_private && key_ok)
        (void)pthread_setspecific(key, NULL);
    tl_loop = NULL;
    tl_private = false;
}

kv_loop *kv__thread_loop(void)
{
    if (tl_loop != NULL)
        return tl_loop;
    pthread_once(&key_once, make_key);
    if (!key_ok) {
        kv__set_errmsg("pthread_key_create failed: no private loop");
        return NULL;
    }
    kv_loop_opts o = {.sq_entries = PRIVATE_SQ};
    kv_loop *loop = NULL;
    if (kv_loop_new(&loop, &o) != KV_OK)
        return NULL; /* kv_last_errmsg says why */
    /* kv_loop_new adopted it (the thread had no loop). */
    tl_private = true;
    if (pthread_setspecific(key, loop) != 0) {
        tl_loop = NULL;
        tl_private = false;
        (void)kv_loop_free(loop);
        kv__set_errmsg("pthread_setspecific failed: no private loop");
        return NULL;
    }
    return loop;
}

kv_loop *kv__thread_loop_peek(void)
{
    return tl_loop;
}

kv_loop *kv_thread_loop(void)
{
    return kv__thread_loop();
}
