/*
 * node.c - the Redis backend's node connections: one pipelined connection
 * per node on the store's io_uring loop (connect, send, receive as SQEs),
 * replies matched to the FIFO of sent commands, MOVED/ASK/NOSCRIPT and
 * transient errors handled, failures and the back-off before a reconnect,
 * and the routing of a command to the node of its slot.
 */
#include "backend/redis/redis_int.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void recv_cb(kv__op *op, int res, uint32_t flags);
static void send_cb(kv__op *op, int res, uint32_t flags);
static void connect_cb(kv__op *op, int res, uint32_t flags);

void redis__cmd_free(rcmd *c)
{
    if (c->then != NULL) /* never sent: its request must still hear */
        redis__cmd_fail(c->then, KV_ECANCELED, "store closed");
    kv__free(c->tail.data);
    kv__free(c);
}

void redis__cmd_fail(rcmd *c, int err, const char *msg)
{
    if (c->cb != NULL)
        c->cb(c, NULL, err, msg);
    redis__cmd_free(c);
}

static rnode *node_find(rstore *st, const char *ip, int port)
{
    char name[64];
    snprintf(name, sizeof name, "%s:%d", ip, port);
    for (rnode *n = st->nodes; n != NULL; n = n->next)
        if (strcmp(n->name, name) == 0)
            return n;
    return NULL;
}

bool redis__addr_ok(const char *ip, int port)
{
    struct in_addr a;
    return port > 0 && port <= 65535 && inet_pton(AF_INET, ip, &a) == 1;
}

rnode *redis__node_get(rstore *st, const char *ip, int port)
{
    rnode *n = node_find(st, ip, port);
    if (n != NULL)
        return n;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
        return NULL;
    n = kv__calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    /* zeroed: the kernel fills it through the ring, which valgrind
     * cannot see (it would report the replies as uninitialised) */
    n->rbuf = kv__calloc(1, RBUF_SIZE);
    n->rd = redisReaderCreate();
    if (n->rbuf == NULL || n->rd == NULL) {
        kv__free(n->rbuf);
        if (n->rd)
            redisReaderFree(n->rd);
        kv__free(n);
        return NULL;
    }
    snprintf(n->name, sizeof n->name, "%s:%d", ip, port);
    n->sa = sa;
    n->fd = -1;
    n->st = st;
    n->rop.cb = recv_cb;
    n->sop.cb = send_cb;
    n->cop.cb = connect_cb;
    n->next = st->nodes;
    st->nodes = n;
    return n;
}

void redis__node_free(rnode *n)
{
    if (n->fd >= 0)
        close(n->fd);
    if (n->rd != NULL)
        redisReaderFree(n->rd);
    kv__free(n->rbuf);
    kv__free(n->sbuf.data);
    kv__free(n->qbuf.data);
    kv__free(n->lasterr);
    kv__free(n);
}

void redis__node_set_err(rnode *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = kv__vasprintf(fmt, ap);
    va_end(ap);
    kv__free(n->lasterr);
    n->lasterr = m;
}

/* Once a failing node has no SQE in flight: close and back off. */
static void node_settle(rnode *n)
{
    if (n->state != N_FAILING || n->nops > 0)
        return;
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
    n->state = N_DOWN;
    n->sbuf.len = n->qbuf.len = 0;
    n->soff = 0;
    if (n->nomem) {
        /* nothing wrong with the node: the next operation reconnects */
        n->nomem = false;
        n->retry_at = 0;
        return;
    }
    n->backoff = n->backoff == 0                   ? BACKOFF_MIN_MS
                 : n->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                   : n->backoff * 2;
    n->retry_at = kv__now_ms() + n->backoff;
}

void redis__fail_list(rcmd *c, int err, const char *msg)
{
    while (c != NULL) {
        rcmd *next = c->next;
        redis__cmd_fail(c, err, msg);
        c = next;
    }
}

/* The connection broke (or the store closes): fail what it carried, with
 * err (KV_EBACKEND; KV_ENOMEM when the socket operation itself had no
 * memory, as the fallback mode's emulated ring can report). */
static void node_fail_err(rnode *n, const char *why, int err)
{
    rstore *st = n->st;
    if (n->state == N_UP || n->state == N_CONNECTING) {
        if (n->fd >= 0)
            shutdown(n->fd, SHUT_RDWR); /* completes the SQEs in flight */
        n->state = N_FAILING;
    }
    redis__node_set_err(n, "%s", why);
    redisReaderFree(n->rd);
    n->rd = redisReaderCreate(); /* NULL on OOM: checked before use */
    rcmd *fifo = n->fifo, *wait = n->wait;
    n->fifo = n->fifo_tail = n->wait = n->wait_tail = NULL;
    if (st->closing)
        err = KV_ECANCELED;
    else if (err == KV_ENOMEM)
        n->nomem = true;
    char *m1 = kv__asprintf("redis node %s: %s; the operation may or may "
                            "not have been applied",
                            n->name, why);
    char *m2 = kv__asprintf("redis node %s: %s", n->name, why);
    redis__fail_list(fifo, err, st->closing ? "store closed" : m1);
    redis__fail_list(wait, err, st->closing ? "store closed" : m2);
    kv__free(m1);
    kv__free(m2);
    node_settle(n);
    if (!st->closing)
        redis__refresh_map(st);
    redis__watchdog_idle(st);
}

void redis__node_fail(rnode *n, const char *why)
{
    node_fail_err(n, why, KV_EBACKEND);
}

/* The status of the commands an I/O failure fails: KV_ENOMEM for a
 * memory shortage, KV_EBACKEND for anything else.  rc is a socket
 * operation's negative result (a CQE's negated errno; -ENOMEM from the
 * fallback mode's emulated ring, or from sync_connect) or a ring call's
 * failure (kv__loop_sqes: KV_ENOMEM, another kv code, or
 * io_uring_submit's negated errno). */
int redis__io_err(int rc)
{
    return rc == -ENOMEM || rc == KV_ENOMEM ? KV_ENOMEM : KV_EBACKEND;
}

static void start_recv(rnode *n)
{
    if (n->recving || n->state != N_UP || n->fifo == NULL)
        return;
    struct io_uring_sqe *sqe;
    int rc = kv__loop_sqes(n->st->loop, &sqe, 1);
    if (rc != KV_OK) {
        node_fail_err(n, "cannot queue a receive on the ring",
                      redis__io_err(rc));
        return;
    }
    io_uring_prep_recv(sqe, n->fd, n->rbuf, RBUF_SIZE, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&n->rop);
    n->recving = true;
    n->nops++;
}

static void start_send(rnode *n)
{
    if (n->sending || n->state != N_UP)
        return;
    if (n->sbuf.len == 0) {
        if (n->qbuf.len == 0)
            return;
        kv_buf t = n->sbuf;
        n->sbuf = n->qbuf;
        n->qbuf = t;
        n->qbuf.len = 0;
        n->soff = 0;
    }
    struct io_uring_sqe *sqe;
    int rc = kv__loop_sqes(n->st->loop, &sqe, 1);
    if (rc != KV_OK) {
        node_fail_err(n, "cannot queue a send on the ring", redis__io_err(rc));
        return;
    }
    io_uring_prep_send(sqe, n->fd, n->sbuf.data + n->soff,
                       n->sbuf.len - n->soff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&n->sop);
    n->sending = true;
    n->nops++;
}

static void send_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rnode *n = KV__CONTAINER_OF(op, rnode, sop);
    n->sending = false;
    n->nops--;
    if (n->state != N_UP) {
        node_settle(n);
        redis__maybe_closed(n->st);
        return;
    }
    if (res < 0) {
        char m[128];
        snprintf(m, sizeof m, "send: %s", strerror(-res));
        node_fail_err(n, m, redis__io_err(res));
    } else {
        n->soff += (size_t)res;
        if (n->soff >= n->sbuf.len) {
            n->sbuf.len = 0;
            n->soff = 0;
        }
        start_send(n);
    }
    redis__maybe_closed(n->st);
}

static bool reply_is_err(const redisReply *r, const char *pfx)
{
    return r->type == REDIS_REPLY_ERROR && r->str != NULL &&
           strncmp(r->str, pfx, strlen(pfx)) == 0;
}

/* One reply for the head of n's FIFO. */
static void handle_reply(rnode *n, redisReply *r)
{
    rstore *st = n->st;
    rcmd *c = n->fifo;
    n->fifo = c->next;
    if (n->fifo == NULL)
        n->fifo_tail = NULL;
    c->next = NULL;
    if (c->cb == NULL) { /* ASKING */
        redis__cmd_free(c);
        return;
    }
    bool moved = reply_is_err(r, "MOVED ");
    bool ask = reply_is_err(r, "ASK ");
    if ((moved || ask) && c->redirects < MAX_REDIRECTS) {
        int slot = -1;
        rnode *to = redis__redirect_node(st, r->str, &slot);
        if (to != NULL && slot >= 0 && slot < NSLOTS) {
            c->redirects++;
            st->stats_redirects++;
            if (moved) {
                st->slots[slot] = to;
                c->node = NULL;
                c->asking = false;
                redis__refresh_map(st);
                redis__cmd_route(st, c);
            } else {
                c->node = to;
                c->asking = true;
                redis__node_send(to, c);
            }
            return;
        }
    }
    if (reply_is_err(r, "NOSCRIPT") && c->script >= 0 && !c->eval) {
        c->eval = true;
        if (c->slot >= 0 && c->node == NULL) {
            redis__cmd_route(st, c);
        } else {
            c->asking = c->slot >= 0; /* a slot command with a node: ASK */
            redis__node_send(c->node, c);
        }
        return;
    }
    if (c->slot >= 0 &&
        (reply_is_err(r, "TRYAGAIN") || reply_is_err(r, "LOADING") ||
         reply_is_err(r, "CLUSTERDOWN") || reply_is_err(r, "MASTERDOWN"))) {
        redis__retry_later(st, c, r->str);
        return;
    }
    c->cb(c, r, KV_OK, NULL);
    redis__cmd_free(c);
}

static void recv_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rnode *n = KV__CONTAINER_OF(op, rnode, rop);
    rstore *st = n->st;
    n->recving = false;
    n->nops--;
    if (n->state != N_UP) {
        node_settle(n);
        redis__maybe_closed(st);
        return;
    }
    if (res <= 0) {
        char m[128];
        snprintf(m, sizeof m, "%s",
                 res == 0 ? "connection closed by the server" : strerror(-res));
        node_fail_err(n, m, res == 0 ? KV_EBACKEND : redis__io_err(res));
        redis__maybe_closed(st);
        return;
    }
    n->since = kv__now_ms(); /* alive */
    if (n->rd == NULL ||
        redisReaderFeed(n->rd, n->rbuf, (size_t)res) != REDIS_OK) {
        redis__node_fail(n, "cannot parse the reply stream");
        redis__maybe_closed(st);
        return;
    }
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(n->rd, &rep) != REDIS_OK) {
            redis__node_fail(n, "protocol error in a reply");
            break;
        }
        if (rep == NULL)
            break;
        if (n->fifo == NULL) {
            freeReplyObject(rep);
            redis__node_fail(n, "a reply nobody asked for");
            break;
        }
        handle_reply(n, rep);
        freeReplyObject(rep);
        if (n->state != N_UP)
            break;
    }
    start_recv(n);
    redis__watchdog_idle(st);
    redis__maybe_closed(st);
}

/* Format c onto n's queue and expect its reply. */
static int node_write(rnode *n, rcmd *c)
{
    rstore *st = n->st;
    kv_buf *b = &n->qbuf;
    size_t mark = b->len;
    int rc = redis__cmd_format(st, c, b);
    rcmd *ask = NULL;
    if (rc == KV_OK && c->asking && (ask = kv__calloc(1, sizeof *ask)) == NULL)
        rc = KV_ENOMEM;
    if (rc != KV_OK) {
        b->len = mark;
        return rc;
    }
    if (ask != NULL) {
        ask->script = -1;
        ask->slot = -1;
        if (n->fifo_tail)
            n->fifo_tail->next = ask;
        else
            n->fifo = ask;
        n->fifo_tail = ask;
    }
    c->asking = false;
    c->next = NULL;
    if (n->fifo == NULL)
        n->since = kv__now_ms(); /* replies are due from now */
    if (n->fifo_tail)
        n->fifo_tail->next = c;
    else
        n->fifo = c;
    n->fifo_tail = c;
    redis__watchdog_arm(st);
    return KV_OK;
}

static void node_connect(rnode *n)
{
    n->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        redis__node_set_err(n, "socket: %s", strerror(errno));
        n->retry_at = kv__now_ms() + BACKOFF_MIN_MS;
        return;
    }
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(n->st->loop, &sqe, 1) != KV_OK) {
        close(n->fd);
        n->fd = -1;
        redis__node_set_err(n, "cannot queue a connect on the ring");
        return;
    }
    io_uring_prep_connect(sqe, n->fd, (struct sockaddr *)&n->sa, sizeof n->sa);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&n->cop);
    n->nops++;
    n->state = N_CONNECTING;
    n->since = kv__now_ms();
    redis__watchdog_arm(n->st);
}

static void connect_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rnode *n = KV__CONTAINER_OF(op, rnode, cop);
    rstore *st = n->st;
    n->nops--;
    if (n->state != N_CONNECTING) {
        node_settle(n);
        redis__maybe_closed(st);
        return;
    }
    if (res < 0) {
        char m[128];
        snprintf(m, sizeof m, "cannot connect: %s", strerror(-res));
        node_fail_err(n, m, redis__io_err(res));
        redis__maybe_closed(st);
        return;
    }
    int one = 1;
    (void)setsockopt(n->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    n->state = N_UP;
    n->backoff = 0;
    rcmd *w = n->wait;
    n->wait = n->wait_tail = NULL;
    while (w != NULL) {
        rcmd *next = w->next;
        redis__node_send(n, w);
        w = next;
    }
    redis__maybe_closed(st);
}

void redis__node_send(rnode *n, rcmd *c)
{
    rstore *st = n->st;
    c->next = NULL;
    if (st->closing) {
        redis__cmd_fail(c, KV_ECANCELED, "store closed");
        return;
    }
    if (n->state == N_DOWN) {
        uint64_t now = kv__now_ms();
        if (now < n->retry_at) {
            char *m = kv__asprintf(
                "redis node %s is unreachable (%s); retrying in %llu ms",
                n->name, n->lasterr ? n->lasterr : "down",
                (unsigned long long)(n->retry_at - now));
            redis__cmd_fail(c, KV_EBACKEND, m);
            kv__free(m);
            return;
        }
        node_connect(n);
        if (n->state != N_CONNECTING) {
            char *m = kv__asprintf("redis node %s: %s", n->name,
                                   n->lasterr ? n->lasterr : "down");
            redis__cmd_fail(c, KV_EBACKEND, m);
            kv__free(m);
            return;
        }
    }
    if (n->state == N_CONNECTING) {
        if (n->wait_tail)
            n->wait_tail->next = c;
        else
            n->wait = c;
        n->wait_tail = c;
        return;
    }
    if (n->state == N_FAILING) {
        char *m = kv__asprintf("redis node %s: connection lost (%s)", n->name,
                               n->lasterr ? n->lasterr : "?");
        redis__cmd_fail(c, n->nomem ? KV_ENOMEM : KV_EBACKEND, m);
        kv__free(m);
        return;
    }
    if (node_write(n, c) != KV_OK) {
        redis__cmd_fail(c, KV_ENOMEM, NULL);
        return;
    }
    start_send(n);
    start_recv(n);
}

void redis__cmd_route(rstore *st, rcmd *c)
{
    rnode *n = c->node;
    if (c->slot >= 0 && (n == NULL || !c->asking))
        n = st->slots[c->slot];
    if (n == NULL) {
        char m[96];
        snprintf(m, sizeof m, "no redis node serves hash slot %d", c->slot);
        redis__refresh_map(st);
        redis__cmd_fail(c, KV_EBACKEND, m);
        return;
    }
    redis__node_send(n, c);
}
