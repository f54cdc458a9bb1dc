/*
 * kvctl - look inside a kvstore store from the command line.
 *
 *   kvctl [--sync=MODE] STORE COMMAND [ARGS...]
 *
 * STORE is a URI as kvbench's --backend takes it: sqlite:PATH,
 * sqlite:memory, fs:PATH.  Commands: get, put, delete, query, dump, load,
 * stats, verify.  dump writes JSON lines {"key": ..., "value": <base64>, "token": N};
 * load reads them back into any backend.  Exit codes are listed in usage()
 * and kvctl(1).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "toolutil.h"

/* Exit codes. */
enum {
    EX_OK = 0,
    EX_ERROR = 1,    /* backend or I/O failure */
    EX_USAGE = 2,    /* bad command line */
    EX_NOTFOUND = 3, /* no such record */
    EX_CONFLICT = 4, /* token mismatch, or the key already exists */
    EX_BADKEY = 5,   /* the key is not a valid kvstore key */
    EX_BADINPUT = 6, /* load: malformed input line */
    EX_OPEN = 7      /* the store cannot be opened (missing, locked, not a store) */
};

#define WINDOW 64 /* operations in flight for query/dump/load */

static const char *prog = "kvctl";

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvctl [--sync=full|normal|none] STORE COMMAND [ARGS]\n"
            "\n"
            "STORE: sqlite:PATH | sqlite:memory | fs:PATH |\n"
            "       redis://[USER:PASS@]HOST[:PORT][,HOST[:PORT]...][/prefix][?opts]\n"
            "\n"
            "commands:\n"
            "  get KEY [--token|--json]     print the value (or its token, or a JSON line)\n"
            "  put KEY VALUE|- [--token N|--force]\n"
            "                               write (- reads the value from stdin); token 0\n"
            "                               (default) inserts only if absent, --force writes\n"
            "                               whatever is there; prints the new token\n"
            "  delete KEY TOKEN|--force     delete if the record's token is TOKEN\n"
            "                               (--force: whatever is there, if anything)\n"
            "  query PREFIX [--desc] [--limit N] [--offset N] [--after KEY]\n"
            "        [--keys-only] [--json]\n"
            "        [--skip-corrupt]       records at or below PREFIX: KEY<TAB>TOKEN<TAB>VALUE\n"
            "  dump [PREFIX] [--after KEY] [--skip-corrupt]\n"
            "                               JSON lines: {\"key\",\"value\" (base64),\"token\"}\n"
            "                               (--skip-corrupt: go past corrupt records, list\n"
            "                               them on stderr, exit 1)\n"
            "  load [FILE|-] [--replace] [--keep-going]\n"
            "                               insert the records of a dump (tokens are new)\n"
            "  stats [PREFIX] [--skip-corrupt]\n"
            "                               record count, key and value bytes, disk usage\n"
            "  verify                       read every record and check every checksum and\n"
            "                               the store's metadata; list what is bad\n"
            "\n"
            "exit status: 0 ok, 1 error, 2 usage, 3 not found, 4 conflict,\n"
            "             5 invalid key, 6 malformed load input, 7 cannot open the store\n"
            "verify: 0 all is well, 1 something is bad, 2 usage or cannot open\n");
}

static int die_usage(const char *msg, const char *arg)
{
    fprintf(stderr, "%s: %s%s%s\n", prog, msg, arg ? ": " : "", arg ? arg : "");
    fprintf(stderr, "Try '%s --help'.\n", prog);
    return EX_USAGE;
}

/* Map a failed operation to an exit code, with a message. */
static int fail_code(int st)
{
    if (st == KV_ENOTFOUND)
        return EX_NOTFOUND;
    if (st == KV_ECONFLICT || st == KV_EDUPLICATE)
        return EX_CONFLICT;
    if (st == KV_EINVAL)
        return EX_BADKEY;
    return EX_ERROR;
}

static int fut_fail(kv_fut *f, const char *what, const char *key)
{
    int st = kv_fut_status(f);
    const char *m = kv_fut_errmsg(f);
    fprintf(stderr, "%s: %s%s%s: %s%s%s\n", prog, what, key ? " " : "",
            key ? key : "", kv_strerror(st), *m && strcmp(m, kv_strerror(st)) ? ": " : "",
            *m && strcmp(m, kv_strerror(st)) ? m : "");
    return fail_code(st);
}

/* Parse a record key: exits 5 on a bad or empty key. */
static int parse_key(const char *s, kv_key **out, bool allow_root)
{
    int rc = kv_key_parse(out, s);
    if (rc != KV_OK) {
        const char *m = kv_last_errmsg();
        fprintf(stderr, "%s: invalid key '%s'%s%s\n", prog, s, *m ? ": " : "", m);
        return rc == KV_ENOMEM ? EX_ERROR : EX_BADKEY;
    }
    if (!allow_root && kv_key_len(*out) == 0) {
        fprintf(stderr, "%s: invalid key '%s': the empty key names no record\n",
                prog, s);
        kv_key_free(*out);
        *out = NULL;
        return EX_BADKEY;
    }
    return EX_OK;
}

static int parse_token(const char *s, uint64_t *tok)
{
    if (tu_parse_u64(s, tok) || *tok == KV_TOKEN_ANY) {
        fprintf(stderr, "%s: bad token '%s': expected a non-negative integer "
                        "below 2^64 - 1 (--force writes unconditionally)\n",
                prog, s);
        return EX_USAGE;
    }
    return EX_OK;
}

/* ------------------------------------------------------------------------ */
/* Output helpers                                                           */
/* ------------------------------------------------------------------------ */

/* Write one record as a dump line. */
static void json_line(FILE *out, const kv_record *r, bool with_value)
{
    const char *id = kv_key_id(r->key);
    size_t idl = strlen(id);
    if (tu_utf8_valid(id, idl)) {
        fputs("{\"key\": ", out);
        tu_json_str(out, id, idl);
    } else {
        /* JSON strings are UTF-8: keys that are not go out as base64. */
        char *b = malloc(tu_b64_len(idl) + 1);
        if (!b) {
            fprintf(stderr, "%s: out of memory\n", prog);
            exit(EX_ERROR);
        }
        tu_b64_encode(b, id, idl);
        fprintf(out, "{\"key_base64\": \"%s\"", b);
        free(b);
    }
    if (with_value) {
        char *b = malloc(tu_b64_len(r->len) + 1);
        if (!b) {
            fprintf(stderr, "%s: out of memory\n", prog);
            exit(EX_ERROR);
        }
        tu_b64_encode(b, r->val, r->len);
        fprintf(out, ", \"value\": \"%s\"", b);
        free(b);
    }
    fprintf(out, ", \"token\": %" PRIu64 "}\n", r->token);
}

/*
 * Bytes with C-style escapes for control bytes, tab, newline and backslash;
 * bytes >= 0x80 are escaped too unless the whole string is valid UTF-8.
 */
static void escaped(FILE *out, const void *p, size_t n)
{
    const unsigned char *s = p;
    bool high = !tu_utf8_valid(p, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\\')
            fputs("\\\\", out);
        else if (c == '\t')
            fputs("\\t", out);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\r')
            fputs("\\r", out);
        else if (c < 0x20 || c == 0x7F || (high && c >= 0x80))
            fprintf(out, "\\x%02x", c);
        else
            putc(c, out);
    }
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct ctx {
    kv_loop *loop;
    kv_pool *pool;
    kv_store *store;
    tu_uri uri;
} ctx;

static int cmd_get(ctx *c, int argc, char **argv)
{
    const char *key = NULL;
    bool tok = false, json = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--token"))
            tok = true;
        else if (!strcmp(argv[i], "--json"))
            json = true;
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            return die_usage("get: unknown option", argv[i]);
        else if (!key)
            key = argv[i];
        else
            return die_usage("get: too many arguments", argv[i]);
    }
    if (!key)
        return die_usage("get: missing KEY", NULL);
    kv_key *k;
    int rc = parse_key(key, &k, false);
    if (rc)
        return rc;
    kv_fut *f = kv_get(c->store, k, NULL);
    int st = kv_wait(f);
    if (st == KV_OK) {
        const kv_record *r = kv_fut_record(f);
        if (json)
            json_line(stdout, r, true);
        else if (tok)
            printf("%" PRIu64 "\n", r->token);
        else if (r->len && fwrite(r->val, 1, r->len, stdout) != r->len)
            rc = EX_ERROR;
    } else {
        rc = st == KV_ENOTFOUND
                 ? (fprintf(stderr, "%s: %s: not found\n", prog, kv_key_id(k)),
                    EX_NOTFOUND)
                 : fut_fail(f, "get", kv_key_id(k));
    }
    kv_fut_free(f);
    kv_key_free(k);
    return rc;
}

static int read_all(FILE *in, tu_sbuf *b)
{
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (tu_sbuf_put(b, buf, n))
            return -1;
    return ferror(in) ? -1 : 0;
}

static int cmd_put(ctx *c, int argc, char **argv)
{
    const char *key = NULL, *val = NULL;
    uint64_t token = 0;
    bool force = false, have_tok = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--token")) {
            if (i + 1 >= argc)
                return die_usage("put: --token needs a value", NULL);
            if (parse_token(argv[++i], &token))
                return EX_USAGE;
            have_tok = true;
        } else if (!strncmp(argv[i], "--token=", 8)) {
            if (parse_token(argv[i] + 8, &token))
                return EX_USAGE;
            have_tok = true;
        } else if (!strcmp(argv[i], "--force")) {
            force = true;
        } else if (argv[i][0] == '-' && argv[i][1] == '-' && argv[i][2]) {
            return die_usage("put: unknown option", argv[i]);
        } else if (!key) {
            key = argv[i];
        } else if (!val) {
            val = argv[i];
        } else {
            return die_usage("put: too many arguments", argv[i]);
        }
    }
    if (!key || !val)
        return die_usage("put: expected KEY and VALUE (or - for stdin)", NULL);
    if (force && have_tok)
        return die_usage("put: --force and --token exclude each other", NULL);
    kv_key *k;
    int rc = parse_key(key, &k, false);
    if (rc)
        return rc;
    tu_sbuf b = {0};
    const void *data = val;
    size_t len = strlen(val);
    if (!strcmp(val, "-")) {
        if (read_all(stdin, &b)) {
            fprintf(stderr, "%s: reading stdin: %s\n", prog, strerror(errno));
            kv_key_free(k);
            tu_sbuf_free(&b);
            return EX_ERROR;
        }
        data = b.p ? b.p : "";
        len = b.len;
    }
    /* --force: an unconditional put (it also replaces a corrupt record). */
    kv_record rec = {k, (void *)data, len, force ? KV_TOKEN_ANY : token};
    kv_fut *f = kv_put(c->store, &rec, NULL);
    int st = kv_wait(f);
    if (st == KV_OK) {
        printf("%" PRIu64 "\n", kv_fut_token(f));
        rc = EX_OK;
    } else if (st == KV_ECONFLICT) {
        fprintf(stderr, "%s: put %s: %s\n", prog, kv_key_id(k),
                token == 0 ? "the key already exists (give its token "
                             "with --token N, or use --force)"
                           : "conflict: the record's token is not that "
                             "one (or the record is gone)");
        rc = EX_CONFLICT;
    } else {
        rc = fut_fail(f, "put", kv_key_id(k));
    }
    kv_fut_free(f);
    tu_sbuf_free(&b);
    kv_key_free(k);
    return rc;
}

static int cmd_delete(ctx *c, int argc, char **argv)
{
    if (argc != 2)
        return die_usage("delete: expected KEY TOKEN or KEY --force", NULL);
    /* --force: an unconditional delete (also of a corrupt record); exit 0
     * when the key was already absent, as rm -f. */
    bool force = !strcmp(argv[1], "--force");
    uint64_t token = KV_TOKEN_ANY;
    if (!force && parse_token(argv[1], &token))
        return EX_USAGE;
    kv_key *k;
    int rc = parse_key(argv[0], &k, false);
    if (rc)
        return rc;
    kv_fut *f = kv_delete(c->store, k, token);
    int st = kv_wait(f);
    if (st == KV_OK) {
        rc = EX_OK;
    } else if (st == KV_ECONFLICT) {
        /* Tell a missing record from a stale token. */
        kv_fut *h = kv_has(c->store, k);
        if (kv_wait(h) == KV_OK && !kv_fut_bool(h)) {
            fprintf(stderr, "%s: delete %s: not found\n", prog, kv_key_id(k));
            rc = EX_NOTFOUND;
        } else {
            fprintf(stderr, "%s: delete %s: conflict: token %" PRIu64
                            " is not the record's token\n",
                    prog, kv_key_id(k), token);
            rc = EX_CONFLICT;
        }
        kv_fut_free(h);
    } else {
        rc = fut_fail(f, "delete", kv_key_id(k));
    }
    kv_fut_free(f);
    kv_key_free(k);
    return rc;
}

/* Stream a query: cb(record) for each, with WINDOW kv_iter_next in flight.
 * With q->skip_corrupt the keys of the corrupt records passed over are
 * listed on stderr and counted in *ncorrupt, and any makes it EX_ERROR. */
typedef int (*rec_cb)(const kv_record *r, void *arg);

/* List the iterator's corrupt keys (on stderr; verify's on stdout, its
 * report); their count. */
static size_t report_corrupt(const kv_iter *it, const char *what)
{
    size_t n = 0;
    const kv_key *const *keys = kv_iter_corrupt(it, &n);
    bool verify = strcmp(what, "verify") == 0;
    FILE *out = verify ? stdout : stderr;
    for (size_t i = 0; i < n; i++) {
        const char *id = kv_key_id(keys[i]);
        if (verify)
            fputs("bad: corrupt record ", out);
        else
            fprintf(out, "%s: %s: corrupt record: ", prog, what);
        escaped(out, id, strlen(id));
        putc('\n', out);
    }
    if (n > 0 && !verify)
        fprintf(stderr, "%s: %s: %zu corrupt record%s skipped\n", prog, what,
                n, n == 1 ? "" : "s");
    return n;
}

static int stream(ctx *c, const kv_query *q, rec_cb cb, void *arg,
                  const char *what, size_t *ncorrupt)
{
    kv_fut *of = kv_query_open(c->store, q, NULL);
    if (kv_wait(of) != KV_OK) {
        int rc = fut_fail(of, "query", kv_key_id(q->key));
        kv_fut_free(of);
        return rc;
    }
    kv_iter *it = kv_fut_take_iter(of);
    kv_fut_free(of);
    kv_fut *ring[WINDOW];
    size_t head = 0, n = 0;
    bool end = false;
    int rc = EX_OK;
    while (!end || n > 0) {
        while (!end && rc == EX_OK && n < WINDOW) {
            ring[(head + n) % WINDOW] = kv_iter_next(it);
            n++;
        }
        if (n == 0)
            break;
        kv_fut *f = ring[head];
        head = (head + 1) % WINDOW;
        n--;
        int st = kv_wait(f);
        if (end || rc != EX_OK) {
            /* Past the end (KV_EITER) or after an error: just drain. */
        } else if (st != KV_OK) {
            rc = fut_fail(f, "query", kv_key_id(q->key));
            end = true;
        } else {
            const kv_record *r = kv_fut_record(f);
            if (!r)
                end = true;
            else if ((rc = cb(r, arg)) != EX_OK)
                end = true;
        }
        kv_fut_free(f);
    }
    if (q->skip_corrupt) {
        size_t nc = report_corrupt(it, what);
        if (ncorrupt != NULL)
            *ncorrupt = nc;
        if (nc > 0 && rc == EX_OK)
            rc = EX_ERROR;
    }
    kv_fut *d = kv_iter_dispose(it);
    kv_wait(d);
    kv_fut_free(d);
    kv_iter_free(it);
    return rc;
}

typedef struct qout {
    bool keys_only, json;
} qout;

static int print_rec(const kv_record *r, void *arg)
{
    const qout *o = arg;
    if (o->json) {
        json_line(stdout, r, !o->keys_only);
    } else {
        const char *id = kv_key_id(r->key);
        escaped(stdout, id, strlen(id));
        printf("\t%" PRIu64, r->token);
        if (!o->keys_only) {
            putchar('\t');
            escaped(stdout, r->val, r->len);
        }
        putchar('\n');
    }
    return ferror(stdout) ? EX_ERROR : EX_OK;
}

static int parse_i64(const char *opt, const char *s, int64_t *out, int64_t lo)
{
    uint64_t v;
    if (!s || tu_parse_u64(s, &v) || v > INT64_MAX || (int64_t)v < lo) {
        fprintf(stderr, "%s: %s needs a non-negative integer\n", prog, opt);
        return EX_USAGE;
    }
    *out = (int64_t)v;
    return EX_OK;
}

static int cmd_query(ctx *c, int argc, char **argv, bool dump)
{
    const char *prefix = NULL, *after = NULL;
    qout o = {false, dump};
    kv_query q = kv_query_init(NULL);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!dump && !strcmp(a, "--desc")) {
            q.sort = KV_SORT_DESC;
        } else if (!dump && !strcmp(a, "--keys-only")) {
            o.keys_only = true;
        } else if (!dump && !strcmp(a, "--json")) {
            o.json = true;
        } else if (!dump && (!strcmp(a, "--limit") || !strcmp(a, "--offset"))) {
            if (parse_i64(a, i + 1 < argc ? argv[i + 1] : NULL,
                          a[2] == 'l' ? &q.limit : &q.offset, 0))
                return EX_USAGE;
            i++;
        } else if (!strcmp(a, "--skip-corrupt")) {
            q.skip_corrupt = true;
        } else if (!strcmp(a, "--after")) {
            if (i + 1 >= argc)
                return die_usage("--after needs a KEY", NULL);
            after = argv[++i];
        } else if (!strncmp(a, "--after=", 8)) {
            after = a + 8;
        } else if (!dump && (!strncmp(a, "--limit=", 8) || !strncmp(a, "--offset=", 9))) {
            const char *eq = strchr(a, '=');
            if (parse_i64(a, eq + 1, a[2] == 'l' ? &q.limit : &q.offset, 0))
                return EX_USAGE;
        } else if (a[0] == '-' && a[1] == '-') {
            return die_usage(dump ? "dump: unknown option" : "query: unknown option", a);
        } else if (!prefix) {
            prefix = a;
        } else {
            return die_usage("too many arguments", a);
        }
    }
    if (!prefix) {
        if (!dump)
            return die_usage("query: missing PREFIX (use / for everything)", NULL);
        prefix = "/";
    }
    kv_key *k;
    int rc = parse_key(prefix, &k, true);
    if (rc)
        return rc;
    kv_key *ak = NULL;
    if (after != NULL && (rc = parse_key(after, &ak, true)) != 0) {
        kv_key_free(k);
        return rc;
    }
    q.key = k;
    q.after = ak;
    q.value = !o.keys_only;
    rc = stream(c, &q, print_rec, &o, dump ? "dump" : "query", NULL);
    kv_key_free(ak);
    kv_key_free(k);
    if (fflush(stdout) != 0 && rc == EX_OK) {
        fprintf(stderr, "%s: writing output: %s\n", prog, strerror(errno));
        rc = EX_ERROR;
    }
    return rc;
}

/* stats */
typedef struct stat_acc {
    uint64_t n, kbytes, vbytes, vmax;
} stat_acc;

static int acc_rec(const kv_record *r, void *arg)
{
    stat_acc *a = arg;
    a->n++;
    a->kbytes += strlen(kv_key_id(r->key));
    a->vbytes += r->len;
    if (r->len > a->vmax)
        a->vmax = r->len;
    return EX_OK;
}

static uint64_t du_bytes, du_files;

static int du_cb(const char *path, const struct stat *st, int type,
                 struct FTW *ftw)
{
    (void)path;
    (void)ftw;
    if (type == FTW_F) {
        du_files++;
        du_bytes += (uint64_t)st->st_blocks * 512;
    } else if (type == FTW_D || type == FTW_DP) {
        du_bytes += (uint64_t)st->st_blocks * 512;
    }
    return 0;
}

static int cmd_stats(ctx *c, int argc, char **argv)
{
    const char *prefix = NULL;
    bool skip = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--skip-corrupt"))
            skip = true;
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            return die_usage("stats: unknown option", argv[i]);
        else if (prefix == NULL)
            prefix = argv[i];
        else
            return die_usage("stats: too many arguments", argv[i]);
    }
    kv_key *k;
    int rc = parse_key(prefix != NULL ? prefix : "/", &k, true);
    if (rc)
        return rc;
    kv_query q = kv_query_init(k);
    q.sort = KV_SORT_NONE;
    q.skip_corrupt = skip;
    stat_acc a = {0};
    size_t ncorrupt = 0;
    rc = stream(c, &q, acc_rec, &a, "stats", &ncorrupt);
    /* With --skip-corrupt the figures of the good records are printed
     * even when corrupt ones were found (and the exit status is 1). */
    if (rc == EX_OK || (skip && ncorrupt > 0 && rc == EX_ERROR)) {
        printf("backend: %s\n", kv_store_backend(c->store));
        printf("prefix: %s\n", kv_key_id(k));
        printf("records: %" PRIu64 "\n", a.n);
        printf("key_bytes: %" PRIu64 "\n", a.kbytes);
        printf("value_bytes: %" PRIu64 "\n", a.vbytes);
        printf("largest_value: %" PRIu64 "\n", a.vmax);
        if (skip)
            printf("corrupt_records: %zu\n", ncorrupt);
        if (c->uri.kind == TU_SQLITE) {
            static const char *const sfx[] = {"", "-wal", "-shm"};
            uint64_t tot = 0;
            for (size_t i = 0; i < 3; i++) {
                char p[4200];
                struct stat st;
                snprintf(p, sizeof p, "%s%s", c->uri.path, sfx[i]);
                if (stat(p, &st) == 0)
                    tot += (uint64_t)st.st_size;
            }
            printf("disk_bytes: %" PRIu64 " (database, -wal and -shm files)\n", tot);
        } else if (c->uri.kind == TU_FS) {
            du_bytes = du_files = 0;
            if (nftw(c->uri.path, du_cb, 32, FTW_PHYS) == 0)
                printf("disk_bytes: %" PRIu64 " (allocated, %" PRIu64
                       " files under the root)\n",
                       du_bytes, du_files);
        }
    }
    kv_key_free(k);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* load: JSON lines                                                         */
/* ------------------------------------------------------------------------ */

typedef struct lslot {
    kv_fut *f;
    kv_key *key;
    unsigned char *val;
    size_t len;
    unsigned long line;
} lslot;

/*
 * Without --keep-going, load stops reading at the first failing line.  A
 * malformed line or key fails before its write; a put fails when it is
 * reaped, by which time up to WINDOW - 1 later lines are in flight: those
 * are waited for (and usually written) and counted in after, which the
 * final message reports.  Puts are reaped in line order.
 */
typedef struct loadst {
    ctx *c;
    const char *src;
    bool replace, keep_going;
    uint64_t ok, replaced, failed;
    uint64_t after;           /* written lines after first_line */
    unsigned long first_line; /* the first failing line, 0: none yet */
    int rc;                   /* its exit code */
} loadst;

static void load_note(loadst *ls, int code, unsigned long line)
{
    ls->failed++;
    if (ls->first_line == 0 || line < ls->first_line) {
        ls->first_line = line;
        ls->rc = code;
    }
}

/* Wait for a slot's put and account for it. */
static void load_reap(loadst *ls, lslot *s)
{
    int st = kv_wait(s->f);
    if (st == KV_ECONFLICT && ls->replace) {
        /* Replace the existing record: read its token, write again. */
        for (int attempt = 0; attempt < 10 && st == KV_ECONFLICT; attempt++) {
            kv_fut *g = kv_get(ls->c->store, s->key, NULL);
            int gs = kv_wait(g);
            uint64_t tok = gs == KV_OK ? kv_fut_record(g)->token : 0;
            kv_fut_free(g);
            if (gs != KV_OK && gs != KV_ENOTFOUND) {
                st = gs;
                break;
            }
            kv_record rec = {s->key, s->val, s->len, tok};
            kv_fut_free(s->f);
            s->f = kv_put(ls->c->store, &rec, NULL);
            st = kv_wait(s->f);
            if (st == KV_OK)
                ls->replaced++;
        }
    }
    if (st == KV_OK) {
        ls->ok++;
        if (ls->first_line != 0 && s->line > ls->first_line)
            ls->after++;
    } else if (st == KV_ECONFLICT) {
        fprintf(stderr, "%s: %s:%lu: %s already exists (use --replace)\n",
                prog, ls->src, s->line, kv_key_id(s->key));
        load_note(ls, EX_CONFLICT, s->line);
    } else {
        const char *m = kv_fut_errmsg(s->f);
        fprintf(stderr, "%s: %s:%lu: put %s: %s%s%s\n", prog, ls->src, s->line,
                kv_key_id(s->key), kv_strerror(st), *m ? ": " : "", m);
        load_note(ls, fail_code(st), s->line);
    }
    kv_fut_free(s->f);
    kv_key_free(s->key);
    free(s->val);
    memset(s, 0, sizeof *s);
}

static int cmd_load(ctx *c, int argc, char **argv)
{
    loadst ls = {.c = c, .src = "-"};
    const char *file = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--replace"))
            ls.replace = true;
        else if (!strcmp(argv[i], "--keep-going"))
            ls.keep_going = true;
        else if (argv[i][0] == '-' && argv[i][1] == '-')
            return die_usage("load: unknown option", argv[i]);
        else if (!file)
            file = argv[i];
        else
            return die_usage("load: too many arguments", argv[i]);
    }
    FILE *in = stdin;
    if (file && strcmp(file, "-")) {
        in = fopen(file, "r");
        if (!in) {
            fprintf(stderr, "%s: %s: %s\n", prog, file, strerror(errno));
            return EX_ERROR;
        }
        ls.src = file;
    } else {
        ls.src = "<stdin>";
    }
    lslot ring[WINDOW];
    memset(ring, 0, sizeof ring);
    size_t head = 0, n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    unsigned long lineno = 0;
    tu_jrec r;
    memset(&r, 0, sizeof r);
    while ((got = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (ls.rc && !ls.keep_going)
            break;
        if (tu_jl_blank(line, (size_t)got))
            continue; /* blank line */
        if ((size_t)got != strlen(line)) {
            fprintf(stderr, "%s: %s:%lu: NUL byte in the line\n", prog, ls.src, lineno);
            load_note(&ls, EX_BADINPUT, lineno);
            continue;
        }
        size_t err_at = 0;
        char err[160];
        if (tu_jl_parse(line, (size_t)got, &r, &err_at, err, sizeof err)) {
            fprintf(stderr, "%s: %s:%lu:%zu: %s\n", prog, ls.src, lineno,
                    err_at + 1, err);
            load_note(&ls, EX_BADINPUT, lineno);
            continue;
        }
        kv_key *k = NULL;
        if (kv_key_parse(&k, r.key.p) != KV_OK || kv_key_len(k) == 0) {
            const char *m = kv_last_errmsg();
            if (k && kv_key_len(k) == 0) {
                kv_key_free(k);
                m = "the empty key names no record";
            }
            fprintf(stderr, "%s: %s:%lu: invalid key '%s'%s%s\n", prog, ls.src,
                    lineno, r.key.p, *m ? ": " : "", m);
            load_note(&ls, EX_BADKEY, lineno);
            continue;
        }
        if (n == WINDOW) {
            load_reap(&ls, &ring[head]);
            head = (head + 1) % WINDOW;
            n--;
            if (ls.rc && !ls.keep_going) {
                kv_key_free(k); /* this line's put is not started */
                break;
            }
        }
        lslot *s = &ring[(head + n) % WINDOW];
        n++;
        s->key = k;
        s->val = r.val;
        s->len = r.len;
        s->line = lineno;
        r.val = NULL;
        kv_record rec = {k, s->val, s->len, 0};
        s->f = kv_put(c->store, &rec, NULL);
    }
    bool rerr = ferror(in);
    while (n > 0) {
        load_reap(&ls, &ring[head]);
        head = (head + 1) % WINDOW;
        n--;
    }
    free(line);
    tu_jrec_free(&r);
    if (in != stdin)
        fclose(in);
    if (rerr) {
        fprintf(stderr, "%s: reading %s: %s\n", prog, ls.src, strerror(errno));
        if (!ls.rc)
            ls.rc = EX_ERROR;
    }
    fprintf(stderr, "%s: loaded %" PRIu64 " record%s%s", prog, ls.ok,
            ls.ok == 1 ? "" : "s", ls.replace ? "" : "\n");
    if (ls.replace)
        fprintf(stderr, " (%" PRIu64 " replaced)\n", ls.replaced);
    if (ls.failed && ls.keep_going)
        fprintf(stderr, "%s: %" PRIu64 " line%s failed\n", prog, ls.failed,
                ls.failed == 1 ? "" : "s");
    else if (ls.failed)
        fprintf(stderr,
                "%s: %" PRIu64 " line%s failed; stopped at line %lu, the "
                "first failure; %" PRIu64 " record%s after it, already in "
                "flight, %s written too\n",
                prog, ls.failed, ls.failed == 1 ? "" : "s", ls.first_line,
                ls.after, ls.after == 1 ? "" : "s",
                ls.after == 1 ? "was" : "were");
    return ls.rc;
}

/* ------------------------------------------------------------------------ */
/* verify                                                                   */
/* ------------------------------------------------------------------------ */

/* Exit codes of verify (its own, like fsck's). */
enum { VX_OK = 0, VX_BAD = 1, VX_USAGE = 2 };

typedef struct vstate {
    unsigned long bad;   /* problems found */
    uint64_t records;    /* records read whole */
    uint64_t maxtok;     /* largest record token */
    bool have_hwm;       /* fs: .tokens has a valid slot */
    uint64_t hwm;        /* its high-water mark */
} vstate;

static void vbad(vstate *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vbad(vstate *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "bad: ");
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    v->bad++;
}

/* CRC32C (Castagnoli, reflected), bit by bit: the fs .tokens slots. */
static uint32_t crc32c(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1u)));
    }
    return ~c;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Read up to len bytes of root/name: bytes read, or -1 with errno. */
static ssize_t read_meta(const char *root, const char *name, void *buf,
                         size_t len, off_t off)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", root, name) >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return (ssize_t)got;
}

/*
 * fs metadata, read before the store is opened (a bad .format would stop
 * the open): .format names a layout this version knows (an older store
 * has none: its layout is inferred); .tokens has a valid slot (two of 32
 * bytes at 0 and 512: "KVTK", version 1, generation, high-water mark,
 * CRC32C).  The record tokens are checked against the mark afterwards.
 * false if the store must not be opened (.format bad).
 */
static bool verify_fs_meta(const char *root, vstate *v)
{
    char fmt[128];
    ssize_t r = read_meta(root, ".format", fmt, sizeof fmt - 1, 0);
    if (r < 0 && errno != ENOENT) {
        vbad(v, "%s/.format: %s", root, strerror(errno));
        return false;
    }
    if (r < 0) {
        printf("note: %s has no .format (an older store: the layout is "
               "inferred)\n", root);
    } else {
        fmt[r] = '\0';
        if (strcmp(fmt, "kvstore-fs 1\nlayout flat\n") != 0 &&
            strcmp(fmt, "kvstore-fs 1\nlayout fanout 16\n") != 0) {
            vbad(v, "%s/.format does not name a layout this version knows",
                 root);
            return false;
        }
    }
    unsigned valid = 0;
    uint64_t gen = 0;
    for (int i = 0; i < 2; i++) {
        unsigned char b[32];
        r = read_meta(root, ".tokens", b, sizeof b, (off_t)i * 512);
        if (r < 0) {
            if (errno == ENOENT)
                vbad(v, "%s/.tokens is missing (the token counter)", root);
            else
                vbad(v, "%s/.tokens: %s", root, strerror(errno));
            return true;
        }
        if (r == (ssize_t)sizeof b && le(b, 4) == 0x4b54564bu &&
            le(b + 4, 4) == 1 && le(b + 24, 4) == crc32c(b, 24)) {
            uint64_t g = le(b + 8, 8);
            if (valid == 0 || g > gen) {
                gen = g;
                v->hwm = le(b + 16, 8);
            }
            valid++;
        } else {
            bool unused = true; /* never written: short, or zeros */
            for (ssize_t j = 0; j < r; j++)
                unused = unused && b[j] == 0;
            if (!unused)
                printf("note: %s/.tokens slot %d does not check (a torn "
                       "update; the other slot is used)\n", root, i);
        }
    }
    if (valid == 0)
        vbad(v, "%s/.tokens has no valid slot (the next writable open "
                "rebuilds it by reading every record)", root);
    v->have_hwm = valid > 0;
    return true;
}

/* SQLite: PRAGMA integrity_check on a read-only connection of its own. */
static void verify_sqlite_file(const char *path, vstate *v)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    if (rc != SQLITE_OK) {
        vbad(v, "%s: cannot open for integrity_check: %s", path,
             db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return;
    }
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    bool ok = false;
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        if (t != NULL && strcmp((const char *)t, "ok") == 0)
            ok = true;
        else
            vbad(v, "%s: integrity_check: %s", path, t ? (const char *)t : "?");
        rc = SQLITE_OK;
    }
    if (rc != SQLITE_DONE)
        vbad(v, "%s: integrity_check: %s", path, sqlite3_errmsg(db));
    else if (ok)
        printf("ok: %s: integrity_check\n", path);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static int verify_rec(const kv_record *r, void *arg)
{
    vstate *v = arg;
    v->records++;
    if (r->token > v->maxtok)
        v->maxtok = r->token;
    return EX_OK;
}

static int cmd_verify(ctx *c, int argc, char **argv, vstate *v)
{
    if (argc > 0)
        return die_usage("verify: too many arguments", argv[0]);
    if (c->uri.kind == TU_SQLITE)
        verify_sqlite_file(c->uri.path, v);
    /* Every record, values and all: fs checks each file's header, length
     * and checksum; SQLite each row's token and value; Redis each hash. */
    kv_key *root;
    if (kv_key_parse(&root, "/") != KV_OK) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return VX_BAD;
    }
    kv_query q = kv_query_init(root);
    q.sort = KV_SORT_NONE;
    q.skip_corrupt = true;
    size_t nc = 0;
    int rc = stream(c, &q, verify_rec, v, "verify", &nc);
    kv_key_free(root);
    v->bad += nc;
    if (rc != EX_OK && nc == 0) {
        /* stream said why: a read that could not go on */
        vbad(v, "the records could not be read through");
    }
    printf("%s: %" PRIu64 " records read whole, %zu corrupt\n",
           kv_store_backend(c->store), v->records, nc);
    if (c->uri.kind == TU_FS && v->have_hwm && v->records > 0 &&
        v->maxtok >= v->hwm)
        vbad(v, ".tokens high-water mark %" PRIu64 " is not above the "
                "largest record token %" PRIu64 " (tokens could be reused)",
             v->hwm, v->maxtok);
    return v->bad > 0 ? VX_BAD : VX_OK;
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    int sync = -1; /* -1: backend default */
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return EX_OK;
        }
        if (!strcmp(a, "--version")) {
            printf("kvctl (kvstore %s)\n", kv_version_string());
            return EX_OK;
        }
        if (!strncmp(a, "--sync=", 7)) {
            const char *v = a + 7;
            sync = !strcmp(v, "full") ? 2 : !strcmp(v, "normal") ? 1 : !strcmp(v, "none") ? 0 : -2;
            if (sync == -2)
                return die_usage("--sync takes full, normal or none", v);
            continue;
        }
        if (a[0] == '-' && a[1] == '-')
            return die_usage("unknown option", a);
        break;
    }
    if (argc - i < 2) {
        usage(stderr);
        return EX_USAGE;
    }
    const char *store = argv[i], *cmd = argv[i + 1];
    int cargc = argc - i - 2;
    char **cargv = argv + i + 2;
    enum { C_GET, C_PUT, C_DELETE, C_QUERY, C_DUMP, C_LOAD, C_STATS,
           C_VERIFY } which;
    if (!strcmp(cmd, "get"))
        which = C_GET;
    else if (!strcmp(cmd, "put"))
        which = C_PUT;
    else if (!strcmp(cmd, "delete") || !strcmp(cmd, "del"))
        which = C_DELETE;
    else if (!strcmp(cmd, "query"))
        which = C_QUERY;
    else if (!strcmp(cmd, "dump"))
        which = C_DUMP;
    else if (!strcmp(cmd, "load"))
        which = C_LOAD;
    else if (!strcmp(cmd, "stats"))
        which = C_STATS;
    else if (!strcmp(cmd, "verify"))
        which = C_VERIFY;
    else
        return die_usage("unknown command", cmd);

    ctx c;
    memset(&c, 0, sizeof c);
    char err[1200];
    if (tu_uri_parse(&c.uri, store, err, sizeof err))
        return die_usage(err, NULL);
    if (!tu_uri_is_kvstore(&c.uri)) {
        fprintf(stderr, "%s: %s: kvctl opens kvstore stores only (sqlite:, fs:, redis:)\n",
                prog, store);
        tu_uri_free(&c.uri);
        return EX_USAGE;
    }
    bool reader = which == C_GET || which == C_QUERY || which == C_DUMP ||
                  which == C_STATS || which == C_VERIFY;
    unsigned flags = 0;
    if (reader && c.uri.kind != TU_SQLITE_MEM)
        flags |= KV_READONLY;
    if (c.uri.kind == TU_FS && sync == 0)
        flags |= KV_FS_NO_FSYNC;
    if ((c.uri.kind == TU_SQLITE || c.uri.kind == TU_SQLITE_MEM) &&
        sync == 2)
        flags |= KV_SQLITE_SYNC_FULL; /* the other backends take no sync flag */
    if (reader && c.uri.path && c.uri.kind != TU_REDIS) {
        struct stat st;
        if (stat(c.uri.path, &st) != 0) {
            fprintf(stderr, "%s: %s: no such store (%s)\n", prog, store,
                    strerror(errno));
            tu_uri_free(&c.uri);
            return which == C_VERIFY ? VX_USAGE : EX_OPEN;
        }
    }
    vstate vs;
    memset(&vs, 0, sizeof vs);
    if (which == C_VERIFY && c.uri.kind == TU_FS &&
        !verify_fs_meta(c.uri.path, &vs)) {
        tu_uri_free(&c.uri);
        return VX_BAD; /* not opened: the store would refuse it */
    }

    int rc = kv_loop_new(&c.loop, NULL);
    if (rc != KV_OK) {
        fprintf(stderr, "%s: kv_loop_new: %s: %s\n", prog, kv_strerror(rc),
                kv_last_errmsg());
        tu_uri_free(&c.uri);
        return EX_ERROR;
    }
    rc = kv_pool_new(&c.pool, 2);
    if (rc != KV_OK) {
        fprintf(stderr, "%s: kv_pool_new: %s\n", prog, kv_strerror(rc));
        kv_loop_free(c.loop);
        tu_uri_free(&c.uri);
        return EX_ERROR;
    }
    rc = tu_open_store(&c.store, c.loop, c.pool, &c.uri, flags, err, sizeof err);
    int ex;
    if (rc != KV_OK) {
        fprintf(stderr, "%s: %s%s\n", prog, err,
                rc == KV_EBUSY ? " (another process has it open)" : "");
        ex = which == C_VERIFY ? VX_USAGE : EX_OPEN;
    } else {
        switch (which) {
        case C_GET: ex = cmd_get(&c, cargc, cargv); break;
        case C_PUT: ex = cmd_put(&c, cargc, cargv); break;
        case C_DELETE: ex = cmd_delete(&c, cargc, cargv); break;
        case C_QUERY: ex = cmd_query(&c, cargc, cargv, false); break;
        case C_DUMP: ex = cmd_query(&c, cargc, cargv, true); break;
        case C_LOAD: ex = cmd_load(&c, cargc, cargv); break;
        case C_STATS: ex = cmd_stats(&c, cargc, cargv); break;
        case C_VERIFY: ex = cmd_verify(&c, cargc, cargv, &vs); break;
        default: ex = EX_USAGE;
        }
        kv_fut *f = kv_close(c.store);
        int st = kv_wait(f);
        if (st != KV_OK && ex == EX_OK) {
            ex = fut_fail(f, "close", NULL);
            if (ex == EX_BADKEY)
                ex = EX_ERROR;
        }
        kv_fut_free(f);
        kv_store_free(c.store);
    }
    kv_loop_run(c.loop, KV_RUN_DEFAULT);
    kv_pool_free(c.pool);
    kv_loop_free(c.loop);
    tu_uri_free(&c.uri);
    if (fflush(stdout) != 0 && ex == EX_OK) {
        fprintf(stderr, "%s: writing output: %s\n", prog, strerror(errno));
        ex = EX_ERROR;
    }
    return ex;
}
