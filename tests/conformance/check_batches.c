/*
 * check_batches.c - the conformance suite, group "batches": batches:
 * skipped and duplicate items, read batches, atomic all-or-nothing,
 * moving and dropping a prefix, unconditional (KV_TOKEN_ANY) records in
 * batches, the tokens of put batches, moves that would pass a key limit.
 *
 * Every test runs against every row of the backends table
 * (tests/lib/conformance.c); KVT_BACKEND=name runs one row only.
 */
#include "config.h"

#include "conformance.h"
#include "store/store_int.h"

/* ======================================================================== */
/* Batches                                                                  */
/* ======================================================================== */

START_TEST(test_batch_skipped)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/a", "a0", 0);
    uint64_t tb = PUT(c, "/b", "b0", 0);
    kv_record recs[] = {
        {K(c, "/a"), "a1", 2, ta},      /* ok */
        {K(c, "/b"), "b1", 2, ta + tb}, /* stale: skipped */
        {K(c, "/c"), "c1", 2, 0},       /* insert: ok */
        {K(c, "/d"), "d1", 2, 77},      /* missing with a token: skipped */
        {K(c, "/a/x"), "ax", 2, 0},     /* ok */
    };
    if (ta + tb == ta || ta + tb == tb)
        recs[1].token = tb + 1000;
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 5, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/b", "/d"));
    kv_fut_free(f);
    uint64_t ta1 = GET(c, "/a", "a1");
    GET(c, "/b", "b0");
    uint64_t tc = GET(c, "/c", "c1");
    GET(c, "/d", NULL);
    GET(c, "/a/x", "ax");
    /* delete_many: stale, zero, missing are skipped */
    kv_record dels[] = {
        {K(c, "/a"), NULL, 0, ta1},  /* ok */
        {K(c, "/b"), NULL, 0, 0},    /* zero: skipped */
        {K(c, "/c"), NULL, 0, ta},   /* stale (ta != tc) */
        {K(c, "/zz"), NULL, 0, tc},  /* missing */
    };
    ck_assert_uint_ne(ta, tc);
    f = AWAIT(kv_delete_many(c->s, dels, 4), KV_OK);
    ck_assert(KEYS_ARE(f, "/b", "/c", "/zz"));
    kv_fut_free(f);
    ck_assert(!has_(c, "/a"));
    ck_assert(has_(c, "/b"));
    ck_assert(has_(c, "/c"));
    /* no conflicts: an empty skipped list */
    kv_record ok[] = {{K(c, "/n1"), "1", 1, 0}, {K(c, "/n2"), "2", 1, 0}};
    f = AWAIT(kv_put_many(c->s, ok, 2, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST

START_TEST(test_batch_duplicate)
{
    OPEN(c);
    uint64_t t = PUT(c, "/x", "x0", 0);
    kv_record recs[] = {
        {K(c, "/new"), "1", 1, 0},
        {K(c, "/x"), "x1", 2, t},
        {K(c, "///new//"), "2", 1, 0}, /* the same key as /new */
    };
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 3, NULL), KV_EDUPLICATE);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/new"));
    kv_fut_free(f);
    GET(c, "/new", NULL);
    GET(c, "/x", "x0");
    EXPECT(kv_delete_many(c->s, recs, 3), KV_EDUPLICATE);
    GET(c, "/x", "x0");
    /* atomic ones too (where supported; else ENOTSUP first) */
    int want = kv_supports_atomic_batch(c->s) ? KV_EDUPLICATE : KV_ENOTSUP;
    EXPECT(kv_put_atomic(c->s, recs, 3, NULL), want);
    EXPECT(kv_delete_atomic(c->s, recs, 3), want);
    EXPECT(kv_try_put(c->s, recs, 3, 3, NULL, NULL, NULL), KV_EDUPLICATE);
    const kv_key *drop[] = {K(c, "/x"), K(c, "/x")};
    EXPECT(kv_drop_prefix(c->s, drop, 2), KV_EDUPLICATE);
    GET(c, "/x", "x0");
    GET(c, "/new", NULL);

    /* A large batch: duplicate detection is linear, nothing is written. */
    size_t big = 100000;
    kv_record *many = calloc(big, sizeof *many);
    kv_key **bk = calloc(big, sizeof *bk);
    for (size_t i = 0; i < big; i++) {
        char id[32];
        snprintf(id, sizeof id, "/big/%zu", i == big - 1 ? (size_t)7 : i);
        ck_assert_int_eq(kv_key_parse(&bk[i], id), KV_OK);
        many[i].key = bk[i];
        many[i].val = "v";
        many[i].len = 1;
    }
    f = AWAIT(kv_put_many(c->s, many, big, NULL), KV_EDUPLICATE);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "/big/7"));
    kv_fut_free(f);
    GET(c, "/big/7", NULL);
    GET(c, "/big/0", NULL);
    for (size_t i = 0; i < big; i++)
        kv_key_free(bk[i]);
    free(bk);
    free(many);
    ctx_done(c);
}
END_TEST

START_TEST(test_read_batches)
{
    OPEN(c);
    PUT(c, "/r/1", "one", 0);
    PUT(c, "/r/2", "two", 0);
    const kv_key *keys[] = {K(c, "/r/1"), K(c, "/r/x"), K(c, "/r/2"),
                            K(c, "/r/1"), K(c, "/r/2/")};
    kv_fut *f = AWAIT(kv_has_many(c->s, keys, 5), KV_OK);
    ck_assert(KEYS_ARE(f, "/r/1", "/r/2"));
    kv_fut_free(f);
    f = AWAIT(kv_get_many(c->s, keys, 5, NULL), KV_OK);
    size_t n = 0;
    const kv_record *r = kv_fut_records(f, &n);
    ck_assert_uint_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        const char *id = kv_key_id(r[i].key);
        ck_assert(strcmp(id, "/r/1") == 0 ? val_is(&r[i], "one")
                                          : val_is(&r[i], "two"));
        ck_assert(r[i].token != 0);
    }
    /* kv_record_dup keeps a record beyond its future */
    kv_record *d = kv_record_dup(&r[0]);
    kv_fut_free(f);
    ck_assert_ptr_nonnull(d);
    ck_assert(val_is(d, strcmp(kv_key_id(d->key), "/r/1") == 0 ? "one"
                                                               : "two"));
    kv_record_free(d);
    kv_record_free(NULL);
    /* nothing exists */
    const kv_key *none[] = {K(c, "/n/1"), K(c, "/n/2")};
    f = AWAIT(kv_get_many(c->s, none, 2, NULL), KV_OK);
    ck_assert_ptr_null(kv_fut_records(f, &n));
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    f = AWAIT(kv_has_many(c->s, none, 2), KV_OK);
    ck_assert(KEYS_ARE(f, NULL) || (kv_fut_keys(f, &n) == NULL && n == 0));
    kv_fut_free(f);
    ctx_done(c);
}
END_TEST

START_TEST(test_atomic_all_or_nothing)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/at/a", "a0", 0);
    kv_record good[] = {{K(c, "/at/a"), "a1", 2, ta},
                        {K(c, "/at/b"), "b1", 2, 0}};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_put_atomic(c->s, good, 2, NULL), KV_ENOTSUP);
        EXPECT(kv_delete_atomic(c->s, good, 2), KV_ENOTSUP);
        EXPECT(kv_put_atomic(c->s, good, 0, NULL), KV_ENOTSUP);
        GET(c, "/at/a", "a0");
        GET(c, "/at/b", NULL);
        ctx_done(c);
        return;
    }
    /* one conflict: nothing written, the conflicting key reported */
    kv_record bad[] = {{K(c, "/at/a"), "a1", 2, ta},
                       {K(c, "/at/b"), "b1", 2, 0},
                       {K(c, "/at/c"), "c1", 2, 999999}};
    kv_fut *f = AWAIT(kv_put_atomic(c->s, bad, 3, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/at/c"));
    kv_fut_free(f);
    GET(c, "/at/a", "a0");
    GET(c, "/at/b", NULL);
    /* all good: all written, no conflicts */
    f = AWAIT(kv_put_atomic(c->s, good, 2, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    uint64_t ta1 = GET(c, "/at/a", "a1");
    uint64_t tb1 = GET(c, "/at/b", "b1");
    /* delete_atomic: a stale token and a zero token conflict */
    kv_record dbad[] = {{K(c, "/at/a"), NULL, 0, ta1},
                        {K(c, "/at/b"), NULL, 0, ta},
                        {K(c, "/at/zz"), NULL, 0, 0}};
    f = AWAIT(kv_delete_atomic(c->s, dbad, 3), KV_OK);
    ck_assert(KEYS_ARE(f, "/at/b", "/at/zz"));
    kv_fut_free(f);
    GET(c, "/at/a", "a1");
    kv_record dgood[] = {{K(c, "/at/a"), NULL, 0, ta1},
                         {K(c, "/at/b"), NULL, 0, tb1}};
    f = AWAIT(kv_delete_atomic(c->s, dgood, 2), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    ck_assert(!has_(c, "/at/a"));
    ck_assert(!has_(c, "/at/b"));
    EXPECT(kv_put_atomic(c->s, NULL, 0, NULL), KV_OK);
    ctx_done(c);
}
END_TEST


/* ======================================================================== */
/* Move and drop                                                            */
/* ======================================================================== */

START_TEST(test_move_prefix)
{
    OPEN(c);
    uint64_t t = PUT(c, "/m/a", "a", 0);
    PUT(c, "/m/a/x", "ax", 0);
    PUT(c, "/m/a/y/z", "ayz", 0);
    PUT(c, "/m/ab", "ab", 0);
    PUT(c, "/m/c", "c", 0);
    const kv_key *from[] = {K(c, "/m/a")};
    const kv_key *to[] = {K(c, "/n/b")};
    if (!kv_supports_atomic_batch(c->s)) {
        EXPECT(kv_move_prefix_atomic(c->s, from, to, 1), KV_ENOTSUP);
        GET(c, "/m/a", "a");
        ctx_done(c);
        return;
    }
    EXPECT(kv_move_prefix_atomic(c->s, from, to, 1), KV_OK);
    uint64_t t2 = GET(c, "/n/b", "a");
    ck_assert_uint_ne(t, t2); /* moved records get new tokens */
    GET(c, "/n/b/x", "ax");
    GET(c, "/n/b/y/z", "ayz");
    GET(c, "/m/a", NULL);
    GET(c, "/m/a/x", NULL);
    GET(c, "/m/ab", "ab"); /* not below /m/a */
    /* collision: nothing moves */
    PUT(c, "/dst/x", "occupied", 0);
    const kv_key *f2[] = {K(c, "/m/ab"), K(c, "/n/b")};
    const kv_key *t2k[] = {K(c, "/m/new"), K(c, "/dst")};
    EXPECT(kv_move_prefix_atomic(c->s, f2, t2k, 2), KV_ECONFLICT);
    GET(c, "/m/ab", "ab"); /* the first move was rolled back */
    GET(c, "/m/new", NULL);
    GET(c, "/n/b/x", "ax");
    GET(c, "/dst/x", "occupied");
    /* a destination that is itself moved away is no collision */
    const kv_key *f3[] = {K(c, "/m/c"), K(c, "/dst")};
    const kv_key *t3[] = {K(c, "/dst"), K(c, "/old")};
    EXPECT(kv_move_prefix_atomic(c->s, f3, t3, 2), KV_OK);
    GET(c, "/dst", "c");
    GET(c, "/old/x", "occupied");
    GET(c, "/dst/x", NULL);
    /* bad arguments */
    const kv_key *self[] = {K(c, "/dst")};
    EXPECT(kv_move_prefix_atomic(c->s, self, self, 1), KV_EINVAL);
    const kv_key *below[] = {K(c, "/dst/sub")};
    EXPECT(kv_move_prefix_atomic(c->s, self, below, 1), KV_EINVAL);
    const kv_key *root[] = {K(c, "/")};
    EXPECT(kv_move_prefix_atomic(c->s, root, self, 1), KV_EINVAL);
    EXPECT(kv_move_prefix_atomic(c->s, NULL, NULL, 0), KV_OK);
    ctx_done(c);
}
END_TEST

START_TEST(test_drop_prefix)
{
    OPEN(c);
    const char *ks[] = {"/dp/a", "/dp/a/b", "/dp/a/b/c", "/dp/ab", "/dp/b",
                        "/dp/c/1"};
    put_all(c, ks, 6);
    const kv_key *drop[] = {K(c, "/dp/a"), K(c, "/dp/c"), K(c, "/dp/none")};
    EXPECT(kv_drop_prefix(c->s, drop, 3), KV_OK);
    GET(c, "/dp/a", NULL);
    GET(c, "/dp/a/b", NULL);
    GET(c, "/dp/a/b/c", NULL);
    GET(c, "/dp/c/1", NULL);
    GET(c, "/dp/ab", "/dp/ab");
    GET(c, "/dp/b", "/dp/b");
    const kv_key *root[] = {K(c, "/")};
    EXPECT(kv_drop_prefix(c->s, root, 1), KV_EINVAL);
    ctx_done(c);
}
END_TEST

/* ======================================================================== */
/* Unconditional records and the tokens of batches                          */
/* ======================================================================== */

/* Do the future's tokens equal what kv_get reads for each key of recs
 * (0: the key must not hold a record written by this batch: skip it)? */
static void tokens_match(tctx *c, kv_fut *f, const kv_record *recs, size_t n)
{
    size_t nt = 99;
    const uint64_t *tok = kv_fut_tokens(f, &nt);
    ck_assert_uint_eq(nt, n);
    ck_assert_ptr_nonnull(tok);
    for (size_t i = 0; i < n; i++) {
        if (tok[i] == 0)
            continue;
        ck_assert_uint_ne(tok[i], KV_TOKEN_ANY);
        kv_fut *g = AWAIT(kv_get(c->s, recs[i].key, NULL), KV_OK);
        ck_assert_uint_eq(kv_fut_record(g)->token, tok[i]);
        kv_fut_free(g);
    }
}

START_TEST(test_batch_any)
{
    OPEN(c);
    uint64_t ta = PUT(c, "/a", "a0", 0);
    PUT(c, "/b", "b0", 0);
    PUT(c, "/s", "s0", 0);
    kv_record recs[] = {
        {K(c, "/a"), "a1", 2, ta},           /* CAS: ok */
        {K(c, "/b"), "b1", 2, KV_TOKEN_ANY}, /* over an existing record */
        {K(c, "/c"), "c1", 2, KV_TOKEN_ANY}, /* over a missing key */
        {K(c, "/s"), "s1", 2, ta + 7777},    /* stale: skipped */
        {K(c, "/n"), "n1", 2, 0},            /* insert */
    };
    kv_fut *f = AWAIT(kv_put_many(c->s, recs, 5, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/s"));
    size_t nt = 0;
    const uint64_t *tok = kv_fut_tokens(f, &nt);
    ck_assert_uint_eq(nt, 5);
    ck_assert_ptr_nonnull(tok);
    ck_assert_uint_eq(tok[3], 0);
    for (size_t i = 0; i < 5; i++)
        if (i != 3)
            ck_assert_uint_ne(tok[i], 0);
    tokens_match(c, f, recs, 5);
    kv_fut_free(f);
    GET(c, "/a", "a1");
    GET(c, "/b", "b1");
    GET(c, "/c", "c1");
    GET(c, "/s", "s0");
    GET(c, "/n", "n1");
    /* a token from the batch is good for the next CAS */
    uint64_t tc = GET(c, "/c", "c1");
    PUT(c, "/c", "c2", tc);
    /* delete_many: unconditional records over existing and missing keys
     * are never skipped; CAS records keep their rules */
    uint64_t ts = GET(c, "/s", "s0");
    kv_record dels[] = {
        {K(c, "/a"), NULL, 0, KV_TOKEN_ANY},  /* existing */
        {K(c, "/zz"), NULL, 0, KV_TOKEN_ANY}, /* missing: not skipped */
        {K(c, "/b"), NULL, 0, ts + 5555},     /* stale: skipped */
        {K(c, "/s"), NULL, 0, ts},            /* CAS: ok */
    };
    f = AWAIT(kv_delete_many(c->s, dels, 4), KV_OK);
    ck_assert(KEYS_ARE(f, "/b"));
    size_t n0 = 9;
    ck_assert_ptr_null(kv_fut_tokens(f, &n0));
    ck_assert_uint_eq(n0, 0);
    kv_fut_free(f);
    GET(c, "/a", NULL);
    GET(c, "/b", "b1");
    GET(c, "/s", NULL);
    GET(c, "/zz", NULL);
    /* typed put_many: tokens as well */
    pctx pc = {0};
    kv_codec codec = person_codec(&pc);
    person p1 = {"p", 1}, p2 = {"q", 2};
    kv_record typed[] = {{K(c, "/t1"), &p1, 0, KV_TOKEN_ANY},
                         {K(c, "/t2"), &p2, 0, 0}};
    f = AWAIT(kv_put_many(c->s, typed, 2, &codec), KV_OK);
    tokens_match(c, f, typed, 2);
    ck_assert_uint_ne(kv_fut_tokens(f, &nt)[0], 0);
    ck_assert_uint_ne(kv_fut_tokens(f, &nt)[1], 0);
    kv_fut_free(f);
    GET(c, "/t1", "p:1");
    ctx_done(c);
}
END_TEST

START_TEST(test_atomic_any)
{
    OPEN(c);
    if (!kv_supports_atomic_batch(c->s)) {
        kv_record r[] = {{K(c, "/x"), "x", 1, KV_TOKEN_ANY}};
        EXPECT(kv_put_atomic(c->s, r, 1, NULL), KV_ENOTSUP);
        ctx_done(c);
        return;
    }
    uint64_t ta = PUT(c, "/{t}a", "a0", 0);
    PUT(c, "/{t}b", "b0", 0);
    /* unconditional records never conflict: all written, all tokens */
    kv_record good[] = {{K(c, "/{t}a"), "a1", 2, KV_TOKEN_ANY},
                        {K(c, "/{t}b"), "b1", 2, KV_TOKEN_ANY},
                        {K(c, "/{t}c"), "c1", 2, KV_TOKEN_ANY},
                        {K(c, "/{t}d"), "d1", 2, 0}};
    kv_fut *f = AWAIT(kv_put_atomic(c->s, good, 4, NULL), KV_OK);
    size_t n = 9;
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    tokens_match(c, f, good, 4);
    for (size_t i = 0; i < 4; i++)
        ck_assert_uint_ne(kv_fut_tokens(f, &n)[i], 0);
    kv_fut_free(f);
    uint64_t ta1 = GET(c, "/{t}a", "a1");
    ck_assert_uint_ne(ta1, ta);
    GET(c, "/{t}c", "c1");
    /* one stale CAS record: only it conflicts, nothing is written, every
     * token 0 */
    kv_record bad[] = {{K(c, "/{t}a"), "a2", 2, KV_TOKEN_ANY},
                       {K(c, "/{t}b"), "b2", 2, ta}, /* stale */
                       {K(c, "/{t}e"), "e2", 2, KV_TOKEN_ANY}};
    f = AWAIT(kv_put_atomic(c->s, bad, 3, NULL), KV_OK);
    ck_assert(KEYS_ARE(f, "/{t}b"));
    const uint64_t *tok = kv_fut_tokens(f, &n);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < 3; i++)
        ck_assert_uint_eq(tok[i], 0);
    kv_fut_free(f);
    GET(c, "/{t}a", "a1");
    GET(c, "/{t}e", NULL);
    /* delete_atomic: unconditional over existing and missing keys, with a
     * CAS record */
    uint64_t tb = GET(c, "/{t}b", "b1");
    kv_record dels[] = {{K(c, "/{t}a"), NULL, 0, KV_TOKEN_ANY},
                        {K(c, "/{t}zz"), NULL, 0, KV_TOKEN_ANY},
                        {K(c, "/{t}b"), NULL, 0, tb}};
    f = AWAIT(kv_delete_atomic(c->s, dels, 3), KV_OK);
    kv_fut_keys(f, &n);
    ck_assert_uint_eq(n, 0);
    kv_fut_free(f);
    GET(c, "/{t}a", NULL);
    GET(c, "/{t}b", NULL);
    /* a conflicting CAS delete keeps the unconditional ones from running */
    kv_record dbad[] = {{K(c, "/{t}c"), NULL, 0, KV_TOKEN_ANY},
                        {K(c, "/{t}d"), NULL, 0, 1}};
    f = AWAIT(kv_delete_atomic(c->s, dbad, 2), KV_OK);
    ck_assert(KEYS_ARE(f, "/{t}d"));
    kv_fut_free(f);
    GET(c, "/{t}c", "c1");
    ctx_done(c);
}
END_TEST

/* A key of depth namespaces below prefix ("/p/n1/n2/..."). */
static kv_key *deep_key(tctx *c, const char *prefix, int depth, size_t seglen)
{
    char *path = malloc(strlen(prefix) + (size_t)depth * (seglen + 2) + 1);
    strcpy(path, prefix);
    size_t at = strlen(path);
    for (int i = 0; i < depth; i++) {
        path[at++] = '/';
        for (size_t j = 0; j < seglen; j++)
            path[at++] = (char)('a' + (i + (int)j) % 26);
    }
    path[at] = '\0';
    kv_key *k = K(c, path);
    free(path);
    return k;
}

START_TEST(test_move_key_limits)
{
    OPEN(c);
    if (!kv_supports_atomic_batch(c->s)) {
        ctx_done(c);
        return;
    }
    /* depth: /ml/a + 29 namespaces = 31; moved below /x/y/z/w it is 33 */
    kv_key *deep = deep_key(c, "/ml/a", 29, 1);
    ck_assert_uint_eq(kv_key_len(deep), 31);
    EXPECT(kv_put(c->s, &(kv_record){deep, "d", 1, 0}, NULL), KV_OK);
    PUT(c, "/ml/a/b", "b", 0);
    const kv_key *from[] = {K(c, "/ml/a")};
    const kv_key *to3[] = {K(c, "/x/y/z/w")};
    kv_fut *f = AWAIT(kv_move_prefix_atomic(c->s, from, to3, 1), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "KV_KEY_MAX_DEPTH"));
    kv_fut_free(f);
    GET(c, "/ml/a/b", "b"); /* nothing moved */
    GET(c, "/x/y/z/w/b", NULL);
    /* to a prefix of the same depth: fine */
    const kv_key *to2[] = {K(c, "/x/y")};
    EXPECT(kv_move_prefix_atomic(c->s, from, to2, 1), KV_OK);
    GET(c, "/x/y/b", "b");
    /* length: a key of ~4 KiB; a longer destination prefix passes
     * KV_KEY_MAX_LEN */
    kv_key *longk = deep_key(c, "/ml/l", 4, 1000);
    ck_assert_uint_le(strlen(kv_key_id(longk)), KV_KEY_MAX_LEN);
    ck_assert_uint_gt(strlen(kv_key_id(longk)), KV_KEY_MAX_LEN - 100);
    EXPECT(kv_put(c->s, &(kv_record){longk, "l", 1, 0}, NULL), KV_OK);
    PUT(c, "/ml/l/short", "s", 0);
    char dst[200];
    memset(dst, 'q', sizeof dst - 1);
    dst[0] = '/';
    dst[sizeof dst - 1] = '\0';
    const kv_key *lfrom[] = {K(c, "/ml/l")};
    const kv_key *lto[] = {K(c, dst)};
    f = AWAIT(kv_move_prefix_atomic(c->s, lfrom, lto, 1), KV_EINVAL);
    ck_assert_ptr_nonnull(strstr(kv_fut_errmsg(f), "KV_KEY_MAX_LEN"));
    kv_fut_free(f);
    GET(c, "/ml/l/short", "s");
    ck_assert(has_(c, kv_key_id(longk)));
    ctx_done(c);
}
END_TEST

/* ======================================================================== */

int main(void)
{
    const TTest *tests[] = {test_batch_skipped, test_batch_duplicate,
                            test_read_batches,  test_atomic_all_or_nothing,
                            test_move_prefix,   test_drop_prefix,
                            test_batch_any,     test_atomic_any,
                            test_move_key_limits};
    return tu_conformance_run("batches", tests, sizeof tests / sizeof tests[0]);
}
