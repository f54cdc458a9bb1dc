/*
 * check_fut.c - futures: callbacks, completion, results, cancel, wait.
 *
 * Every test ends with kv_loop_free() == KV_OK (nothing left alive).
 */
#include "config.h"

#include "testutil.h"

#include <pthread.h>

#include "store/store_int.h"

static kv_loop *loop;

static void setup(void)
{
    int rc = kv_loop_new(&loop, NULL);
    ck_assert_msg(rc == KV_OK, "kv_loop_new: %s", kv_last_errmsg());
}

static void teardown(void)
{
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_kv(kv_loop_free(loop), KV_OK);
    loop = NULL;
    kv__alloc_fail_at(0, false);
}

/* Callbacks append their tag here. */
static int trace[16];
static int ntrace;

static void trace_cb(kv_fut *f, void *arg)
{
    (void)f;
    trace[ntrace++] = (int)(intptr_t)arg;
}

static void reset_trace(void)
{
    ntrace = 0;
    memset(trace, 0, sizeof trace);
}

/* ------------------------------------------------------------------------ */
/* Callbacks                                                                */
/* ------------------------------------------------------------------------ */

START_TEST(test_then_order)
{
    reset_trace();
    kv_fut *f = kv_fut_new(loop);
    ck_assert_ptr_nonnull(f);
    for (int i = 1; i <= 5; i++) /* more than the inline slots */
        ck_assert_int_eq(kv_fut_then(f, trace_cb, (void *)(intptr_t)i), KV_OK);
    kv_fut_complete(f);
    ck_assert_int_eq(ntrace, 0);
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(ntrace, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(trace[i], i + 1);
    kv_fut_free(f);
}
END_TEST

START_TEST(test_then_order_across_futures)
{
    /* Futures run in the order they completed. */
    reset_trace();
    kv_fut *a = kv_fut_new(loop), *b = kv_fut_new(loop);
    kv_fut_then(a, trace_cb, (void *)1);
    kv_fut_then(b, trace_cb, (void *)2);
    kv_fut_complete(b);
    kv_fut_complete(a);
    kv_loop_run(loop, KV_RUN_NOWAIT);
    ck_assert_int_eq(ntrace, 2);
    ck_assert_int_eq(trace[0], 2);
    ck_assert_int_eq(trace[1], 1);
    kv_fut_free(a);
    kv_fut_free(b);
}
END_TEST

START_TEST(test_then_not_reentrant)
{
    reset_trace();
    kv_fut *f = kv_fut_new(loop);
    kv_fut_complete(f);
    ck_assert_int_eq(kv_fut_then(f, trace_cb, (void *)1), KV_OK);
    ck_assert_int_eq(ntrace, 0); /* not inside kv_fut_then */
    ck_assert(kv_loop_alive(loop));
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert_int_eq(ntrace, 1);
    /* A second registration later runs once more, alone. */
    ck_assert_int_eq(kv_fut_then(f, trace_cb, (void *)2), KV_OK);
    ck_assert_int_eq(ntrace, 1);
    kv_loop_run(loop, KV_RUN_NOWAIT);
    ck_assert_int_eq(ntrace, 2);
    ck_assert_int_eq(trace[1], 2);
    kv_fut_free(f);
}
END_TEST

static int nested_calls;
static void nested_cb(kv_fut *f, void *arg)
{
    nested_calls++;
    int before = ntrace;
    ck_assert_int_eq(kv_fut_then(f, trace_cb, arg), KV_OK);
    ck_assert_int_eq(ntrace, before); /* not inside the registering call */
}

START_TEST(test_then_inside_callback)
{
    reset_trace();
    nested_calls = 0;
    kv_fut *f = kv_fut_new(loop);
    kv_fut_then(f, nested_cb, (void *)7);
    kv_fut_complete(f);
    /* nested_cb, then (after it returned) the callback it registered. */
    ck_assert_int_eq(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(nested_calls, 1);
    ck_assert_int_eq(ntrace, 1);
    ck_assert_int_eq(trace[0], 7);
    kv_fut_free(f);
}
END_TEST

START_TEST(test_then_args)
{
    kv_fut *f = kv_fut_new(loop);
    ck_assert_int_eq(kv_fut_then(NULL, trace_cb, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_fut_then(f, NULL, NULL), KV_EINVAL);
    ck_assert_ptr_null(kv_fut_new(NULL));
    ck_assert_ptr_eq(kv_fut_loop(f), loop);
    kv_fut_free(f);
    kv_fut_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Completion                                                               */
/* ------------------------------------------------------------------------ */

START_TEST(test_pending_state)
{
    kv_fut *f = kv_fut_new(loop);
    ck_assert(!kv_fut_done(f));
    ck_assert_kv(kv_fut_status(f), KV_EBUSY);
    ck_assert_str_eq(kv_fut_errmsg(f), "");
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert(!kv_loop_alive(loop)); /* a user future is not loop work */
    kv_fut_free(f);                  /* freeing a pending future is fine */
}
END_TEST

START_TEST(test_first_completion_wins)
{
    kv_fut *f = kv_fut_new(loop);
    kv_fut_complete_bytes(f, "abc", 3);
    kv_fut_fail(f, KV_EBACKEND, "late");
    kv_fut_complete_bytes(f, "zz", 2);
    kv_fut_cancel(f);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    size_t len = 0;
    ck_assert_mem_eq(kv_fut_bytes(f, &len), "abc", 3);
    ck_assert_uint_eq(len, 3);
    ck_assert_str_eq(kv_fut_errmsg(f), "");
    kv_fut_free(f);

    f = kv_fut_new(loop);
    kv_fut_fail(f, KV_ECONFLICT, "first");
    kv_fut_complete(f);
    kv_fut_complete_bytes(f, "x", 1);
    ck_assert_kv(kv_fut_status(f), KV_ECONFLICT);
    ck_assert_str_eq(kv_fut_errmsg(f), "first");
    ck_assert_ptr_null(kv_fut_bytes(f, &len));
    ck_assert_uint_eq(len, 0);
    ck_assert(!kv__fut_finish(f, KV_OK, NULL));
    kv_fut_free(f);
}
END_TEST

START_TEST(test_fail_message)
{
    kv_fut *f = kv_fut_new(loop);
    kv_fut_fail(f, KV_ENOTFOUND, "no such key: /a/b");
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_fut_status(f), KV_ENOTFOUND);
    ck_assert_str_eq(kv_fut_errmsg(f), "no such key: /a/b");
    kv_fut_free(f);

    /* Without a message: kv_strerror's text. */
    f = kv_fut_new(loop);
    kv_fut_fail(f, KV_ECONFLICT, NULL);
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(KV_ECONFLICT));
    kv_fut_free(f);

    f = kv_fut_new(loop);
    kv_fut_fail(f, KV_EBACKEND, "");
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(KV_EBACKEND));
    kv_fut_free(f);

    /* A negated errno works too; a non-negative code becomes KV_ERROR. */
    f = kv_fut_new(loop);
    kv_fut_fail(f, -2, NULL);
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(-2));
    kv_fut_free(f);
    f = kv_fut_new(loop);
    kv_fut_fail(f, 0, "zero");
    ck_assert_kv(kv_fut_status(f), KV_ERROR);
    kv_fut_free(f);

    /* Internal: printf messages, and the failed-future constructor. */
    f = kv__fut_failed(loop, KV_EINVAL, "bad key %s (%d)", "/x", 3);
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_fut_status(f), KV_EINVAL);
    ck_assert_str_eq(kv_fut_errmsg(f), "bad key /x (3)");
    kv_fut_free(f);
}
END_TEST

START_TEST(test_errmsg_fallback)
{
    kv_fut *f = kv_fut_new(loop);
    ck_assert_str_eq(kv_fut_errmsg(f), "");
    kv_fut_complete(f);
    ck_assert_str_eq(kv_fut_errmsg(f), ""); /* success */
    kv_fut_free(f);
    f = kv__fut_new(loop);
    kv__fut_finish(f, KV_EREADONLY, NULL);
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(KV_EREADONLY));
    kv_fut_free(f);
    ck_assert_str_eq(kv_fut_errmsg(NULL), "");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Results                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(test_complete_plain)
{
    kv_fut *f = kv_fut_new(loop);
    kv_fut_complete(f);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    size_t n = 99;
    ck_assert_ptr_null(kv_fut_record(f));
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    n = 99;
    ck_assert_ptr_null(kv_fut_keys(f, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert(!kv_fut_bool(f));
    ck_assert_uint_eq(kv_fut_token(f), 0);
    ck_assert_ptr_null(kv_fut_bytes(f, NULL));
    ck_assert_ptr_null(kv_fut_obj(f));
    ck_assert_ptr_null(kv_fut_take_iter(f));
    kv_fut_free(f);
}
END_TEST

START_TEST(test_complete_records)
{
    kv_key *k1 = NULL, *k2 = NULL;
    ck_assert_kv(kv_key_parse(&k1, "/a/b"), KV_OK);
    ck_assert_kv(kv_key_parse(&k2, "/a/c"), KV_OK);
    char v1[] = "hello";
    kv_record in[3] = {
        {.key = k1, .val = v1, .len = 5, .token = 11},
        {.key = k2, .val = NULL, .len = 0, .token = 12},
        {.key = k1, .val = v1, .len = 0, .token = 13},
    };
    kv_fut *f = kv_fut_new(loop);
    ck_assert_ptr_null(kv_fut_records(f, NULL)); /* pending */
    kv_fut_complete_records(f, in, 3);
    v1[0] = 'J'; /* the future holds copies */
    kv_key_free(k1);
    kv_key_free(k2);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_ptr_eq(kv_fut_record(f), &r[0]);
    ck_assert_str_eq(kv_key_id(r[0].key), "/a/b");
    ck_assert_uint_eq(r[0].len, 5);
    ck_assert_mem_eq(r[0].val, "hello", 5);
    ck_assert_uint_eq(r[0].token, 11);
    ck_assert_str_eq(kv_key_id(r[1].key), "/a/c");
    ck_assert_ptr_null(r[1].val);
    ck_assert_uint_eq(r[1].token, 12);
    ck_assert_ptr_nonnull(r[2].val);
    ck_assert_uint_eq(r[2].len, 0);
    kv_fut_free(f);

    /* Empty: success, no records. */
    f = kv_fut_new(loop);
    kv_fut_complete_records(f, NULL, 0);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    n = 5;
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(kv_fut_record(f));
    kv_fut_free(f);

    f = kv_fut_new(loop);
    kv_fut_complete_records(f, NULL, 2);
    ck_assert_kv(kv_fut_status(f), KV_EINVAL);
    kv_fut_free(f);
}
END_TEST

START_TEST(test_complete_bytes_obj)
{
    kv_fut *f = kv_fut_new(loop);
    kv_fut_complete_bytes(f, "\0\1\2", 3);
    size_t len = 0;
    const unsigned char *b = kv_fut_bytes(f, &len);
    ck_assert_uint_eq(len, 3);
    ck_assert_int_eq(b[2], 2);
    ck_assert_ptr_null(kv_fut_obj(f));
    kv_fut_free(f);

    f = kv_fut_new(loop);
    kv_fut_complete_bytes(f, NULL, 0);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    ck_assert_ptr_nonnull(kv_fut_bytes(f, &len));
    ck_assert_uint_eq(len, 0);
    kv_fut_free(f);

    static int obj = 42;
    f = kv_fut_new(loop);
    kv_fut_complete_obj(f, &obj);
    ck_assert_ptr_eq(kv_fut_obj(f), &obj);
    ck_assert_ptr_eq(kv__fut_take_obj(f), &obj);
    ck_assert_ptr_null(kv_fut_obj(f));
    ck_assert_ptr_null(kv__fut_take_obj(f));
    kv_fut_free(f);
}
END_TEST

START_TEST(test_internal_setters)
{
    kv_fut *f = kv__fut_new(loop);
    kv__fut_set_bool(f, true);
    kv__fut_set_token(f, 1234);
    ck_assert(!kv_fut_bool(f)); /* pending: nothing visible yet */
    ck_assert_uint_eq(kv_fut_token(f), 0);
    kv_key **keys = kv__calloc(2, sizeof *keys);
    ck_assert_kv(kv_key_parse(&keys[0], "/x"), KV_OK);
    ck_assert_kv(kv_key_parse(&keys[1], "/y:z"), KV_OK);
    kv__fut_set_keys(f, keys, 2);
    ck_assert(kv__fut_finish(f, KV_EMAXRETRIES, "gave up"));
    /* A failed future may carry results (e.g. skipped keys). */
    ck_assert(kv_fut_bool(f));
    ck_assert_uint_eq(kv_fut_token(f), 1234);
    size_t n = 0;
    const kv_key *const *k = kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(kv_key_id(k[1]), "/y:z");
    /* Set after completion: freed, never shown. */
    kv__fut_set_token(f, 99);
    ck_assert_uint_eq(kv_fut_token(f), 1234);
    kv__fut_set_bytes(f, kv__malloc(10), 10);
    ck_assert_ptr_null(kv_fut_bytes(f, NULL));
    kv__fut_set_iter(f, NULL);
    ck_assert_ptr_null(kv_fut_take_iter(f));
    kv_fut_free(f);
}
END_TEST

/* A codec whose free_obj counts. */
static int objs_freed;
static void count_free(void *obj, void *ctx)
{
    (void)ctx;
    objs_freed++;
    free(obj);
}

START_TEST(test_typed_records_freed)
{
    kv_codec codec = {.free_obj = count_free};
    objs_freed = 0;
    kv_fut *f = kv__fut_new(loop);
    kv_record *recs = kv__calloc(3, sizeof *recs);
    for (int i = 0; i < 3; i++) {
        ck_assert_kv(kv_key_parse(&recs[i].key, "/k"), KV_OK);
        recs[i].val = malloc(8);
    }
    kv__fut_set_records(f, recs, 3, &codec);
    codec.free_obj = NULL; /* the future copied the codec */
    kv__fut_finish(f, KV_OK, NULL);
    ck_assert_ptr_eq(kv_fut_records(f, NULL), recs);
    kv_fut_free(f);
    ck_assert_int_eq(objs_freed, 3);

    /* Taken records are the taker's. */
    f = kv__fut_new(loop);
    recs = kv__calloc(1, sizeof *recs);
    recs[0].val = kv__malloc(4);
    kv__fut_set_records(f, recs, 1, NULL);
    kv__fut_finish(f, KV_OK, NULL);
    size_t n = 0;
    kv_record *t = kv__fut_take_records(f, &n);
    ck_assert_ptr_eq(t, recs);
    ck_assert_uint_eq(n, 1);
    size_t left = 9;
    ck_assert_ptr_null(kv_fut_records(f, &left));
    ck_assert_uint_eq(left, 0);
    kv_fut_free(f);
    kv__records_free(t, n, NULL);

    /* Set on a cancelled future: freed at once. */
    codec.free_obj = count_free;
    objs_freed = 0;
    f = kv__fut_new(loop);
    kv_fut_cancel(f);
    recs = kv__calloc(2, sizeof *recs);
    recs[0].val = malloc(1);
    recs[1].val = malloc(1);
    kv__fut_set_records(f, recs, 2, &codec);
    ck_assert_int_eq(objs_freed, 2);
    ck_assert_ptr_null(kv_fut_records(f, NULL));
    kv_fut_free(f);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Cancel                                                                   */
/* ------------------------------------------------------------------------ */

static int hook_calls;
static void hook(kv_fut *f, void *arg)
{
    ck_assert(!kv_fut_done(f)); /* runs before the future completes */
    hook_calls++;
    *(int *)arg += 1;
}

START_TEST(test_cancel)
{
    reset_trace();
    hook_calls = 0;
    int hook_arg = 0;
    kv_fut *f = kv__fut_new(loop);
    kv__fut_ref(f); /* a producer's reference */
    kv__fut_on_cancel(f, hook, &hook_arg);
    kv_fut_then(f, trace_cb, (void *)1);
    kv_fut_cancel(f);
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    ck_assert_int_eq(hook_calls, 1);
    ck_assert_int_eq(hook_arg, 1);
    ck_assert_int_eq(ntrace, 0); /* on the next turn */
    kv_fut_cancel(f);            /* no-op on a done future */
    ck_assert_int_eq(hook_calls, 1);
    /* The producer's late completion is refused. */
    ck_assert(!kv__fut_finish(f, KV_OK, NULL));
    kv__fut_unref(f);
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    kv_loop_run(loop, KV_RUN_NOWAIT);
    ck_assert_int_eq(ntrace, 1);
    kv_fut_free(f);

    /* Completed futures lose their cancel hook. */
    f = kv__fut_new(loop);
    kv__fut_on_cancel(f, hook, &hook_arg);
    kv__fut_finish(f, KV_OK, NULL);
    kv_fut_cancel(f);
    ck_assert_int_eq(hook_calls, 1);
    ck_assert_kv(kv_fut_status(f), KV_OK);
    kv_fut_free(f);

    /* A user future: cancel completes it; complete is then ignored. */
    f = kv_fut_new(loop);
    kv_fut_cancel(f);
    kv_fut_complete_bytes(f, "a", 1);
    ck_assert_kv(kv_fut_status(f), KV_ECANCELED);
    ck_assert_ptr_null(kv_fut_bytes(f, NULL));
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(KV_ECANCELED));
    kv_fut_free(f);
    kv_fut_cancel(NULL);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Lifetime                                                                 */
/* ------------------------------------------------------------------------ */

START_TEST(test_free_pending_with_producer)
{
    reset_trace();
    kv_fut *f = kv__fut_new(loop);
    kv__fut_ref(f); /* the producer keeps a pointer */
    kv_fut_then(f, trace_cb, (void *)3);
    kv_fut_free(f); /* the caller lets go while pending */
    kv__fut_set_bool(f, true);
    ck_assert(kv__fut_finish(f, KV_OK, NULL)); /* still valid */
    kv__fut_unref(f);                          /* the queue still holds it */
    ck_assert_int_eq(ntrace, 0);
    kv_loop_run(loop, KV_RUN_NOWAIT);
    ck_assert_int_eq(ntrace, 1); /* registered callbacks still run */
}
END_TEST

START_TEST(test_oom_failed_future)
{
    reset_trace();
    kv__alloc_fail_at(1, true);
    kv_fut *f = kv__fut_failed(loop, KV_EBACKEND, "x %d", 1);
    kv_fut *g = kv_sleep(loop, 1);
    kv__alloc_fail_at(0, false);
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(g);
    ck_assert(kv_fut_done(f));
    ck_assert_kv(kv_fut_status(f), KV_ENOMEM);
    ck_assert_kv(kv_fut_status(g), KV_ENOMEM);
    ck_assert_kv(kv_wait(f), KV_ENOMEM);
    ck_assert_int_eq(kv_fut_then(f, trace_cb, NULL), KV_ENOMEM);
    ck_assert_str_eq(kv_fut_errmsg(f), kv_strerror(KV_ENOMEM));
    kv_fut_cancel(f);
    kv__fut_ref(f);
    kv__fut_unref(f);
    kv_fut_free(f);
    kv_fut_free(f); /* the shared future ignores frees */
    kv_fut_free(g);
    ck_assert(!kv_loop_alive(loop));

    /* kv_fut_new reports OOM as NULL; then fails without side effects. */
    kv__alloc_fail_at(1, false);
    ck_assert_ptr_null(kv_fut_new(loop));
    kv_fut *h = kv_fut_new(loop);
    kv_fut_then(h, trace_cb, NULL); /* inline slot: no allocation */
    kv__alloc_fail_at(1, false);
    kv_fut_complete_bytes(h, "abc", 3);
    ck_assert_kv(kv_fut_status(h), KV_ENOMEM);
    kv_fut_free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* kv_wait                                                                  */
/* ------------------------------------------------------------------------ */

START_TEST(test_wait_done)
{
    kv_fut *f = kv_fut_new(loop);
    kv_fut_complete(f);
    ck_assert_kv(kv_wait(f), KV_OK);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    f = kv_fut_new(loop);
    kv_fut_fail(f, KV_ECORRUPT, "bad");
    ck_assert_kv(kv_wait(f), KV_ECORRUPT);
    kv_fut_free(f);
    ck_assert_kv(kv_wait(NULL), KV_EINVAL);
}
END_TEST

START_TEST(test_wait_never_completes)
{
    kv_fut *f = kv_fut_new(loop);
    kv__set_errmsg("%s", "");
    ck_assert_kv(kv_wait(f), KV_EINVAL); /* would block forever */
    ck_assert_msg(strstr(kv_last_errmsg(), "kv_wait") != NULL,
                  "message: \"%s\"", kv_last_errmsg());
    ck_assert(!kv_fut_done(f));
    /* Pending loop work that cannot complete f: EINVAL once it is done. */
    kv_fut *s = kv_sleep(loop, 5);
    ck_assert_kv(kv_wait(f), KV_EINVAL);
    ck_assert(kv_fut_done(s));
    kv_fut_free(s);
    kv_fut_complete(f);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
}
END_TEST

static void complete_other(kv_fut *f, void *arg)
{
    (void)f;
    kv_fut_complete_bytes(arg, "done", 4);
}

START_TEST(test_wait_completed_by_callback)
{
    /* A user future completed by another future's callback. */
    kv_fut *u = kv_fut_new(loop);
    kv_fut *s = kv_sleep(loop, 10);
    kv_fut_then(s, complete_other, u);
    ck_assert_kv(kv_wait(u), KV_OK);
    size_t len;
    ck_assert_mem_eq(kv_fut_bytes(u, &len), "done", 4);
    kv_fut_free(s);
    kv_fut_free(u);
}
END_TEST

static int inner_rc;
static char inner_msg[512];
static void wait_inside(kv_fut *f, void *arg)
{
    (void)f;
    kv__set_errmsg("%s", "");
    inner_rc = kv_wait(arg);
    snprintf(inner_msg, sizeof inner_msg, "%s", kv_last_errmsg());
}

START_TEST(test_wait_inside_callback)
{
    kv_fut *a = kv_fut_new(loop);
    kv_fut *b = kv_sleep(loop, 1000);
    kv_fut_then(a, wait_inside, b);
    kv_fut_complete(a);
    inner_rc = 0;
    kv_loop_run(loop, KV_RUN_NOWAIT);
    ck_assert_kv(inner_rc, KV_EINVAL); /* refused, not re-entered */
    ck_assert_msg(strstr(inner_msg, "kv_wait") != NULL &&
                      strstr(inner_msg, "callback") != NULL,
                  "message: \"%s\"", inner_msg);
    kv_fut_cancel(b);
    kv_fut_free(a);
    kv_fut_free(b);
}
END_TEST

typedef struct offwait {
    kv_fut *f;
    int rc;
    char msg[512];
} offwait;

static void *wait_off_thread(void *arg)
{
    offwait *w = arg;
    w->rc = kv_wait(w->f);
    snprintf(w->msg, sizeof w->msg, "%s", kv_last_errmsg());
    return NULL;
}

START_TEST(test_wait_off_thread)
{
    /* A pending future waited for on a thread that does not run its loop:
     * refused at once (that thread cannot run the loop), with a message. */
    offwait w = {.f = kv_sleep(loop, 1000), .rc = 0};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, wait_off_thread, &w), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_kv(w.rc, KV_EINVAL);
    ck_assert_msg(strstr(w.msg, "kv_wait") != NULL &&
                      strstr(w.msg, "thread") != NULL,
                  "message: \"%s\"", w.msg);
    ck_assert(!kv_fut_done(w.f));
    kv_fut_cancel(w.f);
    kv_fut_free(w.f);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fut");

    TCase *tc = tcase_create("callbacks");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_then_order);
    tcase_add_test(tc, test_then_order_across_futures);
    tcase_add_test(tc, test_then_not_reentrant);
    tcase_add_test(tc, test_then_inside_callback);
    tcase_add_test(tc, test_then_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("completion");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_pending_state);
    tcase_add_test(tc, test_first_completion_wins);
    tcase_add_test(tc, test_fail_message);
    tcase_add_test(tc, test_errmsg_fallback);
    suite_add_tcase(s, tc);

    tc = tcase_create("results");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_complete_plain);
    tcase_add_test(tc, test_complete_records);
    tcase_add_test(tc, test_complete_bytes_obj);
    tcase_add_test(tc, test_internal_setters);
    tcase_add_test(tc, test_typed_records_freed);
    suite_add_tcase(s, tc);

    tc = tcase_create("cancel_and_lifetime");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_free_pending_with_producer);
    tcase_add_test(tc, test_oom_failed_future);
    suite_add_tcase(s, tc);

    tc = tcase_create("wait");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_wait_done);
    tcase_add_test(tc, test_wait_never_completes);
    tcase_add_test(tc, test_wait_completed_by_callback);
    tcase_add_test(tc, test_wait_inside_callback);
    tcase_add_test(tc, test_wait_off_thread);
    suite_add_tcase(s, tc);

    return tu_run(s);
}
