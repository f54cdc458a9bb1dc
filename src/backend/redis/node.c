/*
 * node.c - the Redis backend's node connections: one pipelined connection
 * per node on the store's io_uring loop (connect, send, receive as SQEs),
 * replies matched to the FIFO of sent commands, MOVED/ASK/NOSCRIPT and
 * transient errors handled, failures and the back-off before a reconnect,
 * and the routing of a command to the node of its slot.  Over rediss://
 * the same SQEs carry ciphertext: a received buffer goes into the node's
 * TLS session (tls.c) and comes out as plaintext for the reply parser,
 * and what the session has to send is sent from sbuf.
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
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static void recv_cb(kv__op *op, int res, uint32_t flags);
static void send_cb(kv__op *op, int res, uint32_t flags);
static void connect_cb(kv__op *op, int res, uint32_t flags);
static void buf_wipe(kv_buf *b);

/* A host-name look-up on the store's pool (node_connect). */
typedef struct rresolve {
    kv__job job;
    rnode *n; /* NULL: the node is gone */
    char host[HOST_LEN];
    int port;
    int rc;
    struct sockaddr_storage addrs[NADDRS];
    socklen_t lens[NADDRS];
    unsigned naddrs;
    char err[HOST_LEN + 96];
} rresolve;


void redis__cmd_free(rcmd *c)
{
    if (c->then != NULL) /* never sent: its request must still hear */
        redis__cmd_fail(c->then, KV_ECANCELED, "store closed");
    if (c->secret)
        buf_wipe(&c->tail);
    kv__free(c->tail.data);
    kv__free(c);
}

void redis__cmd_fail(rcmd *c, int err, const char *msg)
{
    if (c->cb != NULL)
        c->cb(c, NULL, err, msg);
    redis__cmd_free(c);
}

/* The node's name: "host:port", "[v6]:port". */
static void node_name(char *out, size_t len, const char *host, int port)
{
    snprintf(out, len, strchr(host, ':') != NULL ? "[%s]:%d" : "%s:%d", host,
             port);
}

static rnode *node_find(rstore *st, const char *host, int port)
{
    char name[HOST_LEN + 16];
    node_name(name, sizeof name, host, port);
    for (rnode *n = st->nodes; n != NULL; n = n->next)
        if (strcasecmp(n->name, name) == 0)
            return n;
    return NULL;
}

/* An address literal into sa: its length, or 0 if host is none. */
static socklen_t literal(const char *host, int port,
                         struct sockaddr_storage *sa)
{
    memset(sa, 0, sizeof *sa);
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        return sizeof *s4;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        return sizeof *s6;
    }
    return 0;
}

bool redis__addr_ok(const char *host, int port)
{
    size_t n = strlen(host);
    if (port <= 0 || port > 65535 || n == 0 || n >= HOST_LEN)
        return false;
    struct sockaddr_storage sa;
    if (literal(host, port, &sa) != 0)
        return true;
    if (host[0] == '-' || host[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

rnode *redis__node_get(rstore *st, const char *host, int port)
{
    if (!redis__addr_ok(host, port))
        return NULL;
    rnode *n = node_find(st, host, port);
    if (n != NULL)
        return n;
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
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    node_name(n->name, sizeof n->name, host, port);
    n->addrlen[0] = literal(host, port, &n->addrs[0]);
    n->numeric = n->addrlen[0] != 0;
    n->naddrs = n->numeric ? 1 : 0;
    n->fd = -1;
    n->st = st;
    n->rop.cb = recv_cb;
    n->sop.cb = send_cb;
    n->cop.cb = connect_cb;
    n->next = st->nodes;
    st->nodes = n;
    return n;
}

/* Wipe a buffer that may have carried an AUTH command. */
static void buf_wipe(kv_buf *b)
{
    if (b->data != NULL)
        explicit_bzero(b->data, b->cap);
}

int redis__auth_format(const rstore *st, kv_buf *b, int *nargs)
{
    *nargs = st->user != NULL ? 3 : 2;
    int rc = redis__args(b, "AUTH");
    if (rc == KV_OK && st->user != NULL)
        rc = redis__args(b, st->user);
    if (rc == KV_OK)
        rc = redis__args(b, st->pass);
    return rc;
}

int redis__node_tls_new(rnode *n, char *why, size_t whylen)
{
    redis__tls_free(n->tls);
    n->tls = NULL;
    n->hs = false;
    return redis__tls_new(&n->tls, n->st->tlsctx, n->host, n->st->sni, why,
                          whylen);
}

void redis__tls_reset_hint(const rnode *n, char *why, size_t whylen)
{
    if (n->tls == NULL || !n->fresh || strstr(why, "cert=") != NULL ||
        (strstr(why, "reset") == NULL && strstr(why, "closed") == NULL &&
         strstr(why, "Broken pipe") == NULL))
        return;
    size_t l = strlen(why);
    if (l + 1 < whylen)
        snprintf(why + l, whylen - l, " (after the TLS handshake: a server "
                 "that requires a client certificate does this; give cert= "
                 "and key=)");
}

void redis__addr_text(const rnode *n, unsigned i, char *out, size_t len)
{
    const struct sockaddr_storage *sa = &n->addrs[i];
    bool v6 = sa->ss_family == AF_INET6;
    const void *a =
        v6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
           : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    unsigned port =
        ntohs(v6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                 : ((const struct sockaddr_in *)sa)->sin_port);
    char t[INET6_ADDRSTRLEN];
    if (inet_ntop(sa->ss_family, a, t, sizeof t) == NULL)
        snprintf(t, sizeof t, "?");
    snprintf(out, len, v6 ? "[%s]:%u" : "%s:%u", t, port);
}

void redis__addr_note(const rnode *n, unsigned tried, char *why,
                      size_t whylen)
{
    if (n->numeric || n->resolving || n->naddrs == 0 || tried == 0)
        return;
    if (tried > n->naddrs)
        tried = n->naddrs;
    char a[ADDR_TEXT_LEN];
    redis__addr_text(n, tried - 1, a, sizeof a);
    size_t l = strlen(why);
    if (l + 1 >= whylen)
        return;
    if (n->naddrs > 1)
        snprintf(why + l, whylen - l, " (address %s; %u of %u addresses "
                 "tried)", a, tried, n->naddrs);
    else
        snprintf(why + l, whylen - l, " (address %s)", a);
}

void redis__node_close(rnode *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
    redis__tls_free(n->tls);
    n->tls = NULL;
    n->hs = false;
    n->fresh = false;
}

void redis__node_free(rnode *n)
{
    if (n->rj != NULL)
        n->rj->n = NULL; /* its done frees it */
    redis__node_close(n);
    if (n->rd != NULL)
        redisReaderFree(n->rd);
    kv__free(n->rbuf);
    buf_wipe(&n->sbuf);
    buf_wipe(&n->qbuf);
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

static void connect_addr(rnode *n);

/* Once a failing node has no SQE in flight: close and back off.  (Once a
 * node leaving an address (hop) has none: connect the next one.) */
static void node_settle(rnode *n)
{
    if (n->hop && n->state == N_CONNECTING && n->nops == 0) {
        n->hop = false;
        redis__node_close(n);
        n->addri++;
        connect_addr(n);
        return;
    }
    if (n->state != N_FAILING || n->nops > 0)
        return;
    redis__node_close(n);
    n->state = N_DOWN;
    if (n->st->pass != NULL) {
        buf_wipe(&n->sbuf);
        buf_wipe(&n->qbuf);
    }
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
    n->hop = false;
    if (n->state == N_UP || n->state == N_CONNECTING) {
        if (n->fd >= 0)
            shutdown(n->fd, SHUT_RDWR); /* completes the SQEs in flight */
        n->state = N_FAILING;
    }
    if (n->hoperr && n->state == N_FAILING && n->lasterr != NULL &&
        strstr(why, "TLS") == NULL) {
        /* the last address gave less to go on than an earlier one's TLS
         * failure: say both */
        char *m = kv__asprintf("%s; before it, %s", why, n->lasterr);
        if (m != NULL) {
            kv__free(n->lasterr);
            n->lasterr = m;
        } else {
            redis__node_set_err(n, "%s", why);
        }
    } else {
        redis__node_set_err(n, "%s", why);
    }
    n->hoperr = false;
    why = n->lasterr != NULL ? n->lasterr : why;
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

/* TLS: the handshake with n's address addri failed (why, err).  When the
 * name has another address, leave this one (its SQEs end, node_settle then
 * connects the next) and return true, why kept to report if every address
 * fails; false: fail n as usual.  Within the connect's deadline: the
 * watchdog still times the whole connect. */
static bool next_addr(rnode *n, const char *why, int err)
{
    if (err == KV_ENOMEM || n->state != N_CONNECTING || n->st->closing ||
        n->addri + 1 >= n->naddrs)
        return false;
    char a[ADDR_TEXT_LEN];
    redis__addr_text(n, n->addri, a, sizeof a);
    redis__node_set_err(n, "address %s: %s", a, why);
    n->hoperr = true;
    n->hs = false; /* no traffic: the callbacks settle */
    n->hop = true;
    if (n->fd >= 0)
        shutdown(n->fd, SHUT_RDWR); /* completes the SQEs in flight */
    node_settle(n);
    return true;
}

/* A failure of n's connection (why, err): during a TLS handshake, the next
 * address if there is one; else n fails. */
static void conn_fail(rnode *n, char *why, size_t whylen, int err)
{
    if (n->state == N_CONNECTING && n->hs && next_addr(n, why, err))
        return;
    if (n->state == N_UP)
        redis__tls_reset_hint(n, why, whylen);
    node_fail_err(n, why, err);
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

/* Whether n's socket carries traffic: up, or in its TLS handshake. */
static bool io_ok(const rnode *n)
{
    return n->state == N_UP || (n->state == N_CONNECTING && n->hs);
}

/* A receive is outstanding only while replies are due, or while the TLS
 * handshake waits for the server. */
static void start_recv(rnode *n)
{
    if (n->recving || !io_ok(n) || (n->state == N_UP && n->fifo == NULL))
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

/* TLS: encrypt the queued commands (once the handshake is done) and take
 * what the session has to send into sbuf (empty, not in flight).  False
 * if it failed the node. */
static bool tls_fill(rnode *n)
{
    char why[320];
    if (!n->hs && n->qbuf.len > 0) {
        int rc = redis__tls_write(n->tls, n->qbuf.data, n->qbuf.len, why,
                                  sizeof why);
        if (n->st->pass != NULL) /* may hold AUTH */
            explicit_bzero(n->qbuf.data, n->qbuf.len);
        n->qbuf.len = 0;
        if (rc != KV_OK) {
            node_fail_err(n, why, redis__io_err(rc));
            return false;
        }
    }
    n->soff = 0;
    if (redis__tls_take(n->tls, &n->sbuf) != KV_OK) {
        node_fail_err(n, "no memory for TLS output", KV_ENOMEM);
        return false;
    }
    return true;
}

static void start_send(rnode *n)
{
    if (n->sending || !io_ok(n))
        return;
    if (n->sbuf.len == 0 && n->tls != NULL) {
        if (!tls_fill(n) || n->sbuf.len == 0)
            return;
    } else if (n->sbuf.len == 0) {
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
    if (!io_ok(n)) {
        node_settle(n);
        redis__maybe_closed(n->st);
        return;
    }
    if (res < 0) {
        char m[320];
        snprintf(m, sizeof m, "send: %s", strerror(-res));
        conn_fail(n, m, sizeof m, redis__io_err(res));
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

static void node_ready(rnode *n);

/* TLS: res bytes of ciphertext arrived in rbuf.  During the handshake,
 * take it a step on (and, once done, make the node ready); after it,
 * decrypt everything into the reply parser.  True when replies may be
 * there to parse; false when there are none or it failed the node. */
static bool tls_in(rnode *n, int res)
{
    char why[320];
    if (redis__tls_feed(n->tls, n->rbuf, (size_t)res) != KV_OK) {
        node_fail_err(n, "no memory for TLS input", KV_ENOMEM);
        return false;
    }
    if (n->hs) {
        int h = redis__tls_handshake(n->tls, why, sizeof why);
        if (h < 0) {
            conn_fail(n, why, sizeof why, redis__io_err(h));
            return false;
        }
        start_send(n); /* the handshake's next flight, if any */
        if (h == 0) {
            start_recv(n);
            return false;
        }
        n->hs = false;
        n->fresh = true; /* until the first reply */
        node_ready(n);
        return false;
    }
    if (n->rd == NULL) {
        redis__node_fail(n, "cannot parse the reply stream");
        return false;
    }
    /* rbuf's ciphertext is in the session now: reuse it for plaintext */
    for (;;) {
        long got = redis__tls_read(n->tls, n->rbuf, RBUF_SIZE, why,
                                   sizeof why);
        if (got < 0) {
            conn_fail(n, why, sizeof why, redis__io_err((int)got));
            return false;
        }
        if (got == 0)
            break;
        if (redisReaderFeed(n->rd, n->rbuf, (size_t)got) != REDIS_OK) {
            redis__node_fail(n, "cannot parse the reply stream");
            return false;
        }
    }
    if (redis__tls_has_output(n->tls))
        start_send(n); /* a post-handshake message to answer */
    return n->state == N_UP;
}

static void recv_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rnode *n = KV__CONTAINER_OF(op, rnode, rop);
    rstore *st = n->st;
    n->recving = false;
    n->nops--;
    if (!io_ok(n)) {
        node_settle(n);
        redis__maybe_closed(st);
        return;
    }
    if (res <= 0) {
        char m[320];
        snprintf(m, sizeof m, "%s",
                 res == 0 ? "connection closed by the server" : strerror(-res));
        conn_fail(n, m, sizeof m, res == 0 ? KV_EBACKEND : redis__io_err(res));
        redis__maybe_closed(st);
        return;
    }
    n->since = kv__now_ms(); /* alive */
    if (n->tls != NULL) {
        if (!tls_in(n, res)) {
            redis__maybe_closed(st);
            return;
        }
    } else if (n->rd == NULL ||
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
        n->fresh = false; /* the server took the connection */
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

static void resolve_work(kv__job *job)
{
    rresolve *r = KV__CONTAINER_OF(job, rresolve, job);
    r->rc = redis__resolve(r->host, r->port, r->addrs, r->lens, &r->naddrs,
                           r->err, sizeof r->err);
}

static void resolve_done(kv__job *job, int status)
{
    rresolve *r = KV__CONTAINER_OF(job, rresolve, job);
    rnode *n = r->n;
    if (n == NULL) {
        kv__free(r);
        return;
    }
    rstore *st = n->st;
    n->rj = NULL;
    n->resolving = false;
    n->nops--;
    if (n->state != N_CONNECTING) {
        kv__free(r);
        node_settle(n);
        redis__maybe_closed(st);
        return;
    }
    if (status != KV_OK || r->rc != KV_OK) {
        /* a failed look-up: the addresses known before, if any */
        if (n->naddrs == 0) {
            char m[sizeof r->err];
            snprintf(m, sizeof m, "%s",
                     status != KV_OK ? "host-name look-up cancelled" : r->err);
            int err = status == KV_OK && r->rc == KV_ENOMEM ? KV_ENOMEM
                                                             : KV_EBACKEND;
            kv__free(r);
            node_fail_err(n, m, err);
            redis__maybe_closed(st);
            return;
        }
    } else {
        memcpy(n->addrs, r->addrs, sizeof n->addrs);
        memcpy(n->addrlen, r->lens, sizeof n->addrlen);
        n->naddrs = r->naddrs;
    }
    kv__free(r);
    n->addri = 0;
    connect_addr(n);
    redis__maybe_closed(st);
}

/* Connect n to its address addri (the state is N_CONNECTING). */
static void connect_addr(rnode *n)
{
    const struct sockaddr_storage *sa = &n->addrs[n->addri];
    n->fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        int e = errno;
        char m[96];
        snprintf(m, sizeof m, "socket: %s", strerror(e));
        node_fail_err(n, m, redis__io_err(-e));
        return;
    }
    struct io_uring_sqe *sqe;
    int rc = kv__loop_sqes(n->st->loop, &sqe, 1);
    if (rc != KV_OK) {
        node_fail_err(n, "cannot queue a connect on the ring",
                      redis__io_err(rc));
        return;
    }
    io_uring_prep_connect(sqe, n->fd, (const struct sockaddr *)sa,
                          n->addrlen[n->addri]);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&n->cop);
    n->nops++;
}

/* Start connecting n: a host name is looked up again first (on the pool;
 * a failover behind a name moves it), then each address is tried in
 * turn.  Without a pool a name keeps the addresses of the open. */
static void node_connect(rnode *n)
{
    rstore *st = n->st;
    n->state = N_CONNECTING;
    n->since = kv__now_ms();
    n->addri = 0;
    n->hoperr = false;
    redis__watchdog_arm(st);
    if (!n->numeric && st->pool != NULL) {
        rresolve *r = kv__calloc(1, sizeof *r);
        if (r == NULL) {
            node_fail_err(n, "no memory for a host-name look-up", KV_ENOMEM);
            return;
        }
        r->n = n;
        snprintf(r->host, sizeof r->host, "%s", n->host);
        r->port = n->port;
        r->job.work = resolve_work;
        r->job.done = resolve_done;
        n->rj = r;
        n->resolving = true;
        n->nops++;
        kv__pool_submit(st->pool, st->loop, &r->job);
        return;
    }
    if (n->naddrs == 0) {
        node_fail_err(n, "a host name to look up, and no pool to do it on "
                         "(kv_redis_open's pool is NULL)",
                      KV_EBACKEND);
        return;
    }
    connect_addr(n);
}

/* The AUTH a connection sends first: a failure fails the node. */
static void auth_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    (void)msg;
    if (err != KV_OK || r->type != REDIS_REPLY_ERROR)
        return;
    char m[256];
    snprintf(m, sizeof m, "AUTH failed: %.200s", r->str ? r->str : "error");
    redis__node_fail(c->node, m);
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
    if (res < 0 && res != -ENOMEM && n->addri + 1 < n->naddrs) {
        /* the next address of the name */
        close(n->fd);
        n->fd = -1;
        n->addri++;
        connect_addr(n);
        redis__maybe_closed(st);
        return;
    }
    if (res < 0) {
        char m[192];
        snprintf(m, sizeof m, "cannot connect: %s", strerror(-res));
        redis__addr_note(n, n->addri + 1, m, sizeof m);
        node_fail_err(n, m, redis__io_err(res));
        redis__maybe_closed(st);
        return;
    }
    int one = 1;
    (void)setsockopt(n->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (st->tlsctx != NULL) {
        /* rediss://: the handshake first (still N_CONNECTING, so commands
         * wait and the watchdog's connect deadline covers it) */
        char why[320];
        int rc = redis__node_tls_new(n, why, sizeof why);
        if (rc == KV_OK) {
            n->hs = true;
            int h = redis__tls_handshake(n->tls, why, sizeof why);
            rc = h < 0 ? h : KV_OK;
        }
        if (rc != KV_OK) {
            node_fail_err(n, why, redis__io_err(rc));
            redis__maybe_closed(st);
            return;
        }
        start_send(n); /* ClientHello */
        start_recv(n);
        redis__maybe_closed(st);
        return;
    }
    node_ready(n);
    redis__maybe_closed(st);
}

/* n is connected (and its TLS handshake done): authenticate, then send
 * what waited for the connection. */
static void node_ready(rnode *n)
{
    rstore *st = n->st;
    n->state = N_UP;
    n->backoff = 0;
    if (st->pass != NULL) {
        /* authenticate before anything else goes out */
        rcmd *a = kv__calloc(1, sizeof *a);
        int rc = a == NULL ? KV_ENOMEM : KV_OK;
        if (a != NULL) {
            a->slot = -1;
            a->script = -1;
            a->node = n;
            a->secret = true;
            a->cb = auth_cb;
            rc = redis__auth_format(st, &a->tail, &a->nargs);
        }
        if (rc == KV_OK)
            rc = node_write(n, a);
        if (rc != KV_OK) {
            if (a != NULL)
                redis__cmd_free(a);
            node_fail_err(n, "no memory to authenticate", KV_ENOMEM);
            return;
        }
    }
    rcmd *w = n->wait;
    n->wait = n->wait_tail = NULL;
    while (w != NULL) {
        rcmd *next = w->next;
        redis__node_send(n, w);
        w = next;
    }
    if (st->pass != NULL) {
        start_send(n);
        start_recv(n);
    }
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
