/*
 * kvproto.c - the example servers' line protocol over one kvstore store
 * (see kvproto.h).  Everything here runs on the loop thread: commands
 * start kvstore operations, whose callbacks queue the replies in request
 * order.
 */
#define _GNU_SOURCE /* vasprintf, strdup, accept4 */
#include "kvproto.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE 4096
#define MAX_BATCH 100000

struct kvp_server {
    kv_loop *loop;
    kv_pool *pool;
    kv_store *store;
    kv_fut *closing;
    unsigned nconns;
    unsigned batches;
    bool stopping;
    /* HOLD's gate: a worker waits on it until RELEASE (or close). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool released;
};

typedef struct req {
    struct req *next;
    kvp_conn *c;
    char *reply; /* NULL while the operation runs */
} req;

struct kvp_conn {
    kvp_server *s;
    void (*wake)(void *io);
    void *io;
    req *head, *tail; /* requests in arrival order */
    char in[MAX_LINE];
    size_t inlen;
    char *out;
    size_t olen, ooff, ocap;
    bool closed;
};

static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *p = NULL;
    if (vasprintf(&p, f, ap) < 0)
        p = NULL;
    va_end(ap);
    return p;
}

int kvp_server_open(kvp_server **out, kv_loop *loop, const char *dbpath)
{
    kvp_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        return KV_ENOMEM;
    s->loop = loop;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int rc = kv_pool_new(&s->pool, 4);
    if (rc == KV_OK) {
        rc = kv_sqlite_open(&s->store, loop, s->pool, dbpath,
                            KV_SQLITE_SYNC_FULL);
        if (rc != KV_OK)
            kv_pool_free(s->pool);
    }
    if (rc != KV_OK) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return rc;
    }
    *out = s;
    return KV_OK;
}

bool kvp_server_stopping(const kvp_server *s)
{
    return s->stopping;
}

static void release_gate(kvp_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->released = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void kvp_server_close(kvp_server *s)
{
    s->stopping = true;
    release_gate(s); /* a HOLD must not keep a worker forever */
    if (s->closing == NULL)
        s->closing = kv_close(s->store);
}

bool kvp_server_free(kvp_server *s)
{
    if (s->closing == NULL || !kv_fut_done(s->closing) || s->nconns > 0)
        return false;
    if (kv_fut_status(s->closing) != KV_OK)
        fprintf(stderr, "close: %s\n", kv_fut_errmsg(s->closing));
    kv_fut_free(s->closing);
    kv_store_free(s->store);
    kv_pool_free(s->pool);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return true;
}

/* ------------------------------------------------------------------------ */
/* Replies, in request order                                                */
/* ------------------------------------------------------------------------ */

static void conn_free(kvp_conn *c)
{
    c->s->nconns--;
    free(c->out);
    free(c);
}

static void out_append(kvp_conn *c, const char *p)
{
    size_t n = strlen(p);
    if (c->olen + n + 1 > c->ocap) {
        size_t cap = c->ocap ? c->ocap : 256;
        while (cap < c->olen + n + 1)
            cap *= 2;
        char *o = realloc(c->out, cap);
        if (o == NULL) {
            fprintf(stderr, "kvproto: out of memory: a reply is lost\n");
            return;
        }
        c->out = o;
        c->ocap = cap;
    }
    memcpy(c->out + c->olen, p, n);
    c->out[c->olen + n] = '\n';
    c->olen += n + 1;
}

/* Move the finished replies at the head of the queue to the output. */
static void conn_flush(kvp_conn *c)
{
    bool any = false;
    while (c->head != NULL && c->head->reply != NULL) {
        req *r = c->head;
        c->head = r->next;
        if (c->head == NULL)
            c->tail = NULL;
        if (!c->closed)
            out_append(c, r->reply);
        free(r->reply);
        free(r);
        any = true;
    }
    if (c->closed && c->head == NULL)
        conn_free(c);
    else if (any && !c->closed)
        c->wake(c->io);
}

static void finish(req *r, char *reply)
{
    r->reply = reply != NULL ? reply : strdup("ERR out of memory");
    if (r->reply == NULL)
        abort(); /* an example: a real server would drop the client */
    conn_flush(r->c);
}

static req *req_new(kvp_conn *c)
{
    req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->c = c;
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */
/* ------------------------------------------------------------------------ */

static char *fail_reply(kv_fut *f)
{
    int st = kv_fut_status(f);
    if (st == KV_ECONFLICT)
        return strdup("CONFLICT");
    if (st == KV_ENOTFOUND)
        return strdup("NOTFOUND");
    return fmt("ERR %s", kv_fut_errmsg(f));
}

static void on_get(kv_fut *f, void *arg)
{
    const kv_record *rec = kv_fut_record(f);
    char *reply = kv_fut_status(f) == KV_OK && rec != NULL
                      ? fmt("VALUE %" PRIu64 " %.*s", rec->token,
                            (int)rec->len, (const char *)rec->val)
                      : fail_reply(f);
    kv_fut_free(f);
    finish(arg, reply);
}

static void on_put(kv_fut *f, void *arg)
{
    char *reply = kv_fut_status(f) == KV_OK
                      ? fmt("OK %" PRIu64, kv_fut_token(f))
                      : fail_reply(f);
    kv_fut_free(f);
    finish(arg, reply);
}

static void on_del(kv_fut *f, void *arg)
{
    char *reply = kv_fut_status(f) == KV_OK ? strdup("OK 0") : fail_reply(f);
    kv_fut_free(f);
    finish(arg, reply);
}

static void on_batch(kv_fut *f, void *arg)
{
    size_t nconf = 0;
    (void)kv_fut_keys(f, &nconf);
    char *reply = kv_fut_status(f) != KV_OK ? fail_reply(f)
                  : nconf > 0               ? strdup("CONFLICT")
                                            : strdup("OK batch");
    kv_fut_free(f);
    finish(arg, reply);
}

static void on_hold(kv_fut *f, void *arg)
{
    char *reply =
        kv_fut_status(f) == KV_OK ? strdup("OK held") : fail_reply(f);
    kv_fut_free(f);
    finish(arg, reply);
}

/* HOLD's job, on a worker: wait for RELEASE, as a stuck write would. */
static int hold_work(void *arg)
{
    kvp_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->released)
        pthread_cond_wait(&s->cv, &s->mu);
    s->released = false;
    pthread_mutex_unlock(&s->mu);
    return KV_OK;
}

/* Start fut and answer with cb, or answer now if it cannot take one. */
static void start(req *r, kv_fut *f, kv_fut_cb cb)
{
    if (kv_fut_then(f, cb, r) != KV_OK) {
        kv_fut_free(f);
        finish(r, strdup("ERR out of memory"));
    }
}

static bool parse_u64(const char *p, uint64_t *out)
{
    char *end;
    if (p == NULL || *p < '0' || *p > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

/* BATCH: NULL once started, else the immediate reply. */
static char *cmd_batch(kvp_conn *c, req *r, const char *arg)
{
    uint64_t n;
    if (!parse_u64(arg, &n) || n == 0 || n > MAX_BATCH)
        return fmt("ERR BATCH takes a count in [1, %d]", MAX_BATCH);
    kv_record *recs = calloc((size_t)n, sizeof *recs);
    if (recs == NULL)
        return strdup("ERR out of memory");
    unsigned id = ++c->s->batches;
    size_t made = 0;
    char path[64];
    for (; made < n; made++) {
        kv_key *k;
        snprintf(path, sizeof path, "/batch/%u/%zu", id, made);
        if (kv_key_parse(&k, path) != KV_OK)
            break;
        recs[made].key = k;
        recs[made].val = "x";
        recs[made].len = 1;
    }
    if (made == n) /* the records are copied by the call */
        start(r, kv_put_atomic(c->s->store, recs, made, NULL), on_batch);
    for (size_t i = 0; i < made; i++)
        kv_key_free((kv_key *)recs[i].key);
    free(recs);
    return made == n ? NULL : strdup("ERR out of memory");
}

/* Run one command line: start its operation, or answer it now. */
static void command(kvp_conn *c, char *line)
{
    req *r = req_new(c);
    if (r == NULL) {
        fprintf(stderr, "kvproto: out of memory: a command is dropped\n");
        return;
    }
    char *save = NULL;
    char *cmd = strtok_r(line, " \t\r", &save);
    char *a1 = strtok_r(NULL, " \t\r", &save);
    char *a2 = strtok_r(NULL, " \t\r", &save);
    char *a3 = strtok_r(NULL, " \t\r", &save);
    char *extra = strtok_r(NULL, " \t\r", &save);
    kvp_server *s = c->s;
    kv_key *k = NULL;
    uint64_t tok = 0;
    char *now = NULL; /* an immediate reply */
    if (cmd == NULL) {
        now = strdup("ERR empty command");
    } else if (s->stopping) {
        now = strdup("ERR shutting down");
    } else if (strcmp(cmd, "GET") == 0 || strcmp(cmd, "PUT") == 0 ||
               strcmp(cmd, "DEL") == 0) {
        bool put = cmd[0] == 'P', get = cmd[0] == 'G';
        unsigned want = get ? 1 : put ? 3 : 2;
        unsigned got = (a1 != NULL) + (a2 != NULL) + (a3 != NULL);
        if (got != want || extra != NULL)
            now = fmt("ERR %s takes %u argument%s", cmd, want,
                      want > 1 ? "s" : "");
        else if (kv_key_parse(&k, a1) != KV_OK)
            now = fmt("ERR bad key: %s", kv_last_errmsg());
        else if (!get && !parse_u64(a2, &tok))
            now = strdup("ERR bad token");
        else if (get)
            start(r, kv_get(s->store, k, NULL), on_get);
        else if (put) {
            kv_record rec = {k, a3, strlen(a3), tok};
            start(r, kv_put(s->store, &rec, NULL), on_put);
        } else
            start(r, kv_delete(s->store, k, tok), on_del);
        kv_key_free(k);
    } else if (strcmp(cmd, "BATCH") == 0) {
        now = cmd_batch(c, r, a1);
    } else if (strcmp(cmd, "HOLD") == 0) {
        start(r, kv_pool_work(s->loop, s->pool, hold_work, s), on_hold);
    } else if (strcmp(cmd, "RELEASE") == 0) {
        release_gate(s);
        now = strdup("OK released");
    } else if (strcmp(cmd, "SHUTDOWN") == 0) {
        s->stopping = true;
        now = strdup("OK bye");
    } else {
        now = strdup("ERR unknown command");
    }
    if (now != NULL)
        finish(r, now);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

kvp_conn *kvp_conn_new(kvp_server *s, void (*wake)(void *io), void *io)
{
    kvp_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->s = s;
    c->wake = wake;
    c->io = io;
    s->nconns++;
    return c;
}

void kvp_conn_input(kvp_conn *c, const char *buf, size_t n)
{
    for (size_t i = 0; i < n && !c->closed; i++) {
        if (buf[i] != '\n') {
            if (c->inlen < MAX_LINE - 1)
                c->in[c->inlen++] = buf[i];
            continue; /* an overlong line is cut (an example) */
        }
        c->in[c->inlen] = '\0';
        c->inlen = 0;
        command(c, c->in);
    }
}

const char *kvp_conn_output(const kvp_conn *c, size_t *len)
{
    *len = c->olen - c->ooff;
    return c->out + c->ooff;
}

void kvp_conn_sent(kvp_conn *c, size_t n)
{
    c->ooff += n;
    if (c->ooff == c->olen)
        c->ooff = c->olen = 0;
}

void kvp_conn_close(kvp_conn *c)
{
    c->closed = true;
    if (c->head == NULL)
        conn_free(c);
}
