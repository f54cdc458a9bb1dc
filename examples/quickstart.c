/*
 * quickstart.c - the README's first program: open an in-memory SQLite
 * store, insert, read, update with the version token, see a conflict, run a
 * prefix query, close.
 *
 *   cc quickstart.c $(pkg-config --cflags --libs kvstore) -o quickstart
 */
#include <kvstore.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Print the error and exit: a real program would handle it. */
static void check(int rc, const char *what)
{
    if (rc != KV_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, kv_strerror(rc),
                kv_last_errmsg());
        exit(1);
    }
}

/* Wait for fut, exit on failure unless its status is `allowed`. */
static int await(kv_fut *fut, const char *what, int allowed)
{
    int rc = kv_wait(fut);
    if (rc != KV_OK && rc != allowed) {
        fprintf(stderr, "%s: %s (%s)\n", what, kv_strerror(rc),
                kv_fut_errmsg(fut));
        exit(1);
    }
    return rc;
}

int main(void)
{
    kv_loop *loop;
    kv_pool *pool;
    kv_store *store;

    check(kv_loop_new(&loop, NULL), "kv_loop_new");
    check(kv_pool_new(&pool, 2), "kv_pool_new");
    check(kv_sqlite_open(&store, loop, pool, KV_SQLITE_MEMORY, 0),
          "kv_sqlite_open");

    kv_key *alice;
    check(kv_key_parse(&alice, "/users/alice"), "kv_key_parse");

    /* Token 0: insert only if the key is absent. */
    const char *hello = "Hello, World!";
    kv_fut *f = kv_put_value(store, alice, hello, strlen(hello), NULL);
    await(f, "put", KV_OK);
    kv_fut_free(f);

    /* Read it back: the record carries its version token. */
    f = kv_get(store, alice, NULL);
    await(f, "get", KV_OK);
    const kv_record *rec = kv_fut_record(f);
    printf("%s = %.*s (token %llu)\n", kv_key_id(rec->key), (int)rec->len,
           (const char *)rec->val, (unsigned long long)rec->token);
    uint64_t token = rec->token;
    kv_fut_free(f);

    /* Update with the token we read: compare-and-swap. */
    kv_record upd = {alice, "Updated!", 8, token};
    f = kv_put(store, &upd, NULL);
    await(f, "put with token", KV_OK);
    printf("updated, new token %llu\n", (unsigned long long)kv_fut_token(f));
    kv_fut_free(f);

    /* The old token is stale now: the write is refused, nothing is lost. */
    f = kv_put(store, &upd, NULL);
    int rc = await(f, "stale put", KV_ECONFLICT);
    printf("stale put: %s\n", kv_err_name(rc));
    kv_fut_free(f);

    /* A few more records, then a prefix query in key order. */
    const char *names[] = {"/users/bob", "/users/carol", "/groups/admins"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        kv_key *k;
        check(kv_key_parse(&k, names[i]), "kv_key_parse");
        f = kv_put_value(store, k, "x", 1, NULL);
        await(f, "put", KV_OK);
        kv_fut_free(f);
        kv_key_free(k);
    }
    kv_key *users;
    check(kv_key_parse(&users, "/users"), "kv_key_parse");
    kv_query q = kv_query_init(users);
    f = kv_query_open(store, &q, NULL);
    await(f, "query", KV_OK);
    kv_iter *it = kv_fut_take_iter(f);
    kv_fut_free(f);
    for (;;) {
        f = kv_iter_next(it);
        await(f, "next", KV_OK);
        rec = kv_fut_record(f);
        if (rec == NULL) {
            kv_fut_free(f);
            break;
        }
        printf("  %s\n", kv_key_id(rec->key));
        kv_fut_free(f);
    }
    f = kv_iter_dispose(it);
    await(f, "dispose", KV_OK);
    kv_fut_free(f);
    kv_iter_free(it);
    kv_key_free(users);
    kv_key_free(alice);

    f = kv_close(store);
    await(f, "close", KV_OK);
    kv_fut_free(f);
    kv_store_free(store);
    kv_pool_free(pool);
    check(kv_loop_free(loop), "kv_loop_free");
    return 0;
}
