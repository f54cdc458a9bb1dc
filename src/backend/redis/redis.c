/*
 * redis.c - the Redis (and Redis Cluster) backend: kv_redis_open and the
 * operation tables.  The backend is a Redis client on the store's io_uring
 * loop (hiredis only parses replies); kv_redis_open itself blocks, for
 * at most the URI's timeout= in all: it resolves and connects to the
 * seeds, authenticates, reads CLUSTER SLOTS and loads the Lua scripts on
 * every master, then hands the sockets to the ring.  Over rediss:// each
 * connection's TLS handshake runs right after its connect, on the same
 * deadline, and the session goes to the ring with the socket.  The URI
 * parser is in uri.c, host-name look-ups in resolve.c, TLS in tls.c.  The design, and the
 * map of the backend's files, are in docs/DESIGN.md ("backend/redis");
 * redis_int.h lists what the files share.  Without hiredis, redis_none.c
 * is built instead.
 */
#include "backend/redis/redis_int.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void r_cancel(kv_store *s, kv__req *req)
{
    /* Commands already sent run to completion; the store layer drops the
     * result of a cancelled future. */
    (void)s;
    (void)req;
}

void redis__maybe_closed(rstore *st)
{
    if (!st->closing || st->closed || st->close_req == NULL)
        return;
    if (st->s->ninflight > 0 || st->defer != NULL || st->oom != NULL ||
        st->dpending || !kv__list_empty(&st->timers))
        return;
    for (rnode *n = st->nodes; n != NULL; n = n->next)
        if (n->nops > 0)
            return;
    for (rnode *n = st->nodes; n != NULL; n = n->next) {
        redis__node_close(n);
        n->state = N_DOWN;
    }
    /* Complete the close from a NOP: never inside close itself. */
    rreq *mark = kv__calloc(1, sizeof *mark);
    if (mark == NULL) {
        kv__req *cr = st->close_req;
        st->close_req = NULL;
        st->closed = true;
        kv__req_done(cr, KV_OK, NULL);
        return;
    }
    mark->pending = 1;
    st->closed = true; /* no second mark */
    redis__rreq_put(st, mark, true);
}

static void r_close(kv_store *s, kv__req *req)
{
    rstore *st = s->backend;
    st->closing = true;
    st->close_req = req;
    for (rnode *n = st->nodes; n != NULL; n = n->next)
        if (n->state == N_UP || n->state == N_CONNECTING)
            redis__node_fail(n, "store closed");
    redis__retry_run(st); /* fails the queue */
    redis__timers_remove(st);
    redis__maybe_closed(st);
}

static void r_destroy(kv_store *s)
{
    rstore *st = s->backend;
    kv__list *first;
    while ((first = kv__list_first(&st->cursors)) != NULL) /* never disposed */
        redis__cursor_free(KV__LIST_ENTRY(first, rcursor, link));
    rnode *n = st->nodes;
    while (n != NULL) {
        rnode *next = n->next;
        redis__node_free(n);
        n = next;
    }
    kv__free(st->prefix);
    kv__free(st->sni);
    redis__tls_ctx_free(st->tlsctx);
    if (st->user != NULL) {
        explicit_bzero(st->user, strlen(st->user));
        kv__free(st->user);
    }
    if (st->pass != NULL) {
        explicit_bzero(st->pass, strlen(st->pass));
        kv__free(st->pass);
    }
    kv__free(st);
}

static const struct kv_backend_ops kv__redis_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "redis",
    .atomic_batch = true,
    .submit = redis__submit,
    .cancel = r_cancel,
    .close = r_close,
    .destroy = r_destroy,
};
/* The same over a Redis Cluster (only the name differs). */
static const struct kv_backend_ops kv__redis_cluster_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "redis-cluster",
    .atomic_batch = true,
    .submit = redis__submit,
    .cancel = r_cancel,
    .close = r_close,
    .destroy = r_destroy,
};

/* ------------------------------------------------------------------------ */
/* Open: blocking setup                                                     */
/* ------------------------------------------------------------------------ */

/* The open's deadline: the URI's timeout= for the whole open (0: none). */
typedef struct odl {
    uint64_t end; /* ms, CLOCK_MONOTONIC; 0: no deadline */
    unsigned ms;
} odl;

/* Wait until fd is ready for ev or the deadline passes: 1 ready, 0 the
 * deadline passed, -errno. */
static int wait_fd(int fd, short ev, const odl *d)
{
    for (;;) {
        int left = -1;
        if (d->end != 0) {
            uint64_t now = kv__now_ms();
            if (now >= d->end)
                return 0;
            left = (int)(d->end - now);
        }
        struct pollfd pfd = {fd, ev, 0};
        int pr = poll(&pfd, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return -errno;
        if (pr > 0)
            return 1;
    }
}

/* Send p..p+len on a non-blocking socket within the deadline: KV_OK, or
 * KV_EBACKEND with why set. */
static int sync_send(int fd, const unsigned char *p, size_t len, const odl *d,
                     char *why, size_t whylen)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, p + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int wr = wait_fd(fd, POLLOUT, d);
            if (wr == 1)
                continue;
            if (wr == 0)
                snprintf(why, whylen, "no progress within the open's "
                         "timeout (%u ms)", d->ms);
            else
                snprintf(why, whylen, "poll: %s", strerror(-wr));
            return KV_EBACKEND;
        }
        if (w <= 0) {
            snprintf(why, whylen, "send: %s",
                     w < 0 ? strerror(errno) : "nothing sent");
            return KV_EBACKEND;
        }
        off += (size_t)w;
    }
    return KV_OK;
}

/* Receive some bytes within the deadline: how many (> 0), or KV_EBACKEND
 * with why set (what = "reply", "TLS handshake": what was awaited). */
static long sync_recv(int fd, void *buf, size_t cap, const odl *d,
                      const char *what, char *why, size_t whylen)
{
    for (;;) {
        ssize_t r = recv(fd, buf, cap, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int wr = wait_fd(fd, POLLIN, d);
            if (wr == 1)
                continue;
            if (wr == 0)
                snprintf(why, whylen, "no %s within the open's timeout "
                         "(%u ms)", what, d->ms);
            else
                snprintf(why, whylen, "poll: %s", strerror(-wr));
            return KV_EBACKEND;
        }
        if (r <= 0) {
            snprintf(why, whylen, "%s",
                     r < 0 ? strerror(errno)
                           : "connection closed by the server");
            return KV_EBACKEND;
        }
        return (long)r;
    }
}

/* TLS: send what n's session has to send.  KV_OK or an error, why set. */
static int sync_tls_flush(rnode *n, const odl *d, char *why, size_t whylen)
{
    kv_buf out = {NULL, 0, 0};
    int rc = redis__tls_take(n->tls, &out);
    if (rc != KV_OK)
        snprintf(why, whylen, "out of memory");
    else if (out.len > 0)
        rc = sync_send(n->fd, out.data, out.len, d, why, whylen);
    kv__free(out.data);
    return rc;
}

/* TLS: n's handshake, within the deadline.  KV_OK or an error, why set
 * (a failed verification says what and which name). */
static int sync_handshake(rnode *n, const odl *d, char *why, size_t whylen)
{
    int rc = redis__node_tls_new(n, why, whylen);
    if (rc != KV_OK)
        return rc;
    char buf[16384];
    for (;;) {
        int h = redis__tls_handshake(n->tls, why, whylen);
        if (h < 0)
            return h;
        rc = sync_tls_flush(n, d, why, whylen);
        if (rc != KV_OK || h == 1) {
            /* a TLS 1.3 server that wants a client certificate (or rejects
             * the one given) finishes the handshake, then resets the
             * connection: the first command meets a reset or an end
             * instead of the server's alert (redis__tls_reset_hint) */
            n->fresh = rc == KV_OK;
            return rc;
        }
        long r = sync_recv(n->fd, buf, sizeof buf, d, "TLS handshake", why,
                           whylen);
        if (r < 0)
            return (int)r;
        if (redis__tls_feed(n->tls, buf, (size_t)r) != KV_OK) {
            snprintf(why, whylen, "out of memory");
            return KV_ENOMEM;
        }
    }
}

/* Send wire and read one reply on n's non-blocking socket (through its
 * TLS session if it has one), within the open's deadline.  NULL on
 * failure, *err then KV_ENOMEM (no reader, or it ran out of memory) or
 * KV_EBACKEND (with why: what failed). */
static redisReply *sync_cmd(rnode *n, const kv_buf *wire, const odl *d,
                            int *err, char *why, size_t whylen)
{
    redisReader *rd = n->rd;
    *err = KV_EBACKEND;
    snprintf(why, whylen, "no reply");
    if (rd == NULL) {
        *err = KV_ENOMEM;
        return NULL;
    }
    int rc;
    if (n->tls != NULL) {
        rc = redis__tls_write(n->tls, wire->data, wire->len, why, whylen);
        if (rc == KV_OK)
            rc = sync_tls_flush(n, d, why, whylen);
    } else {
        rc = sync_send(n->fd, wire->data, wire->len, d, why, whylen);
    }
    if (rc != KV_OK) {
        *err = rc == KV_ENOMEM ? KV_ENOMEM : KV_EBACKEND;
        if (rc != KV_ENOMEM)
            redis__tls_reset_hint(n, why, whylen);
        return NULL;
    }
    char buf[16384];
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(rd, &rep) != REDIS_OK) {
            if (rd->err == REDIS_ERR_OOM)
                *err = KV_ENOMEM;
            snprintf(why, whylen, "protocol error");
            return NULL;
        }
        if (rep != NULL) {
            n->fresh = false; /* the server took the connection */
            return rep;
        }
        long r = 0;
        if (n->tls != NULL) {
            /* plaintext the session already holds, else more ciphertext */
            r = redis__tls_read(n->tls, buf, sizeof buf, why, whylen);
            if (r == 0) {
                r = sync_recv(n->fd, buf, sizeof buf, d, "reply", why, whylen);
                if (r > 0 && redis__tls_feed(n->tls, buf, (size_t)r) != KV_OK)
                    r = KV_ENOMEM;
                if (r > 0)
                    continue;
            }
        } else {
            r = sync_recv(n->fd, buf, sizeof buf, d, "reply", why, whylen);
        }
        if (r < 0) {
            if (r == KV_ENOMEM) {
                *err = KV_ENOMEM;
                snprintf(why, whylen, "out of memory");
            } else {
                redis__tls_reset_hint(n, why, whylen);
            }
            return NULL;
        }
        if (redisReaderFeed(rd, buf, (size_t)r) != REDIS_OK) {
            if (rd->err == REDIS_ERR_OOM)
                *err = KV_ENOMEM;
            snprintf(why, whylen, "protocol error");
            return NULL;
        }
    }
}

/* A node whose blocking exchange failed: closed, with a fresh reader (the
 * old one may hold half a reply), to be connected again through the ring. */
static void sync_abandon(rnode *n)
{
    redis__node_close(n);
    n->state = N_DOWN;
    n->retry_at = 0;
    redisReaderFree(n->rd);
    n->rd = redisReaderCreate(); /* NULL on OOM: checked before use */
}

/* Connect to one address, non-blocking, within the deadline: the socket
 * or -errno (-ETIMEDOUT when the deadline passed). */
static int sync_connect_one(const struct sockaddr_storage *sa, socklen_t len,
                            const odl *d)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    0);
    if (fd < 0)
        return -errno;
    int e = 0;
    if (connect(fd, (const struct sockaddr *)sa, len) != 0) {
        e = errno;
        if (e == EINPROGRESS || e == EINTR) {
            int wr = wait_fd(fd, POLLOUT, d);
            socklen_t el = sizeof e;
            if (wr < 0)
                e = -wr;
            else if (wr == 0)
                e = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
                e = errno;
        }
    }
    if (e != 0) {
        close(fd);
        return -e;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Connect n (resolving its name first if it has no address yet), trying
 * each address in turn until one connects and, over rediss://, completes
 * its TLS handshake: KV_OK with n->fd (and n->tls) set, or an error with
 * why set.  All within the open's deadline.  When every address fails, why
 * is the last failure; for a host name it names the address and how many
 * were tried (redis__addr_note), and an earlier address's TLS failure is
 * added to a last one that only could not connect (the most telling of
 * them). */
static int sync_connect(rnode *n, const odl *d, char *why, size_t whylen)
{
    if (n->naddrs == 0) {
        int rc = redis__resolve_until(n->host, n->port, d->end, n->addrs,
                                      n->addrlen, &n->naddrs, why, whylen);
        if (rc != KV_OK)
            return rc;
    }
    char hs[512] = ""; /* an earlier address's TLS failure */
    char a[ADDR_TEXT_LEN] = "";
    int rc = KV_EBACKEND, fd = -ENOENT;
    unsigned i;
    for (i = 0; i < n->naddrs; i++) {
        if (n->naddrs > 1)
            redis__addr_text(n, i, a, sizeof a);
        fd = sync_connect_one(&n->addrs[i], n->addrlen[i], d);
        if (fd == -ENOMEM || fd == -ETIMEDOUT)
            break;
        if (fd < 0)
            continue;
        n->addri = i;
        n->fd = fd;
        if (n->st->tlsctx == NULL)
            return KV_OK;
        rc = sync_handshake(n, d, why, whylen);
        if (rc == KV_OK || rc == KV_ENOMEM)
            return rc;
        /* the handshake failed: the next address, if any */
        redis__node_close(n);
        if (n->naddrs > 1) {
            char m[sizeof hs];
            snprintf(m, sizeof m, "address %s: %s", a, why);
            memcpy(hs, m, sizeof hs);
        }
        if (i + 1 == n->naddrs || (d->end != 0 && kv__now_ms() >= d->end)) {
            if (n->naddrs > 1)
                snprintf(why, whylen, "%s%s", hs,
                         i + 1 < n->naddrs ? " (no time left for the "
                                             "other addresses)"
                                           : "");
            return rc;
        }
        fd = -ENOENT;
    }
    if (fd == -ETIMEDOUT)
        snprintf(why, whylen, "cannot connect within the open's timeout "
                 "(%u ms)", d->ms);
    else
        snprintf(why, whylen, "cannot connect: %s", strerror(-fd));
    /* the addresses tried: up to the one that timed out, or all */
    redis__addr_note(n, i < n->naddrs ? i + 1 : n->naddrs, why, whylen);
    if (hs[0] != '\0') {
        size_t l = strlen(why);
        snprintf(why + l, whylen - l, "; before it, %s", hs);
    }
    return redis__io_err(fd);
}

/* The socket goes to the ring: blocking again (the ring waits itself). */
static void sync_done(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* Hint that goes with a server's authentication error. */
static const char *auth_hint(const char *err)
{
    if (strncmp(err, "NOAUTH", 6) == 0)
        return " (the server requires a password: give user:password@ in "
               "the URI, or password_file=)";
    if (strncmp(err, "WRONGPASS", 9) == 0 || strncmp(err, "ERR AUTH", 8) == 0 ||
        strncmp(err, "ERR invalid password", 20) == 0 ||
        strncmp(err, "ERR Client sent AUTH", 20) == 0)
        return " (check the URI's user and password, or password_file=, "
               "against the server's requirepass or ACL users)";
    if (strncmp(err, "NOPERM", 6) == 0)
        return " (the ACL user lacks a command or key pattern the store "
               "needs: see kvstore-redis(3))";
    return "";
}

/* Send AUTH on n's fresh connection: KV_OK, or an error with why set
 * (the server's error, never the password). */
static int sync_auth(rstore *st, rnode *n, const odl *d, char *why,
                     size_t whylen, const char **hint)
{
    if (st->pass == NULL)
        return KV_OK;
    kv_buf w = {NULL, 0, 0};
    int nargs = 0;
    int rc = redis__fmt(&w, "*%d\r\n", st->user != NULL ? 3 : 2);
    if (rc == KV_OK)
        rc = redis__auth_format(st, &w, &nargs);
    int err = rc;
    redisReply *r = rc == KV_OK ? sync_cmd(n, &w, d, &err, why,
                                           whylen)
                                : NULL;
    if (w.data != NULL)
        explicit_bzero(w.data, w.cap);
    kv__free(w.data);
    if (r == NULL) {
        if (err == KV_ENOMEM)
            snprintf(why, whylen, "out of memory");
        return err;
    }
    rc = KV_OK;
    if (r->type == REDIS_REPLY_ERROR) {
        const char *e = r->str ? r->str : "error";
        snprintf(why, whylen, "AUTH failed: %.200s", e);
        *hint = auth_hint(e);
        rc = KV_EBACKEND;
    }
    freeReplyObject(r);
    return rc;
}

/* Connect n if needed, authenticate and load the scripts; marks it up, or
 * down with kv_last_errmsg set. */
static int open_node(rstore *st, rnode *n, bool learn_sha, const odl *d)
{
    char why[512];
    int rc;
    if (n->fd < 0) {
        const char *hint = "";
        rc = sync_connect(n, d, why, sizeof why);
        if (rc == KV_OK)
            rc = sync_auth(st, n, d, why, sizeof why, &hint);
        if (rc != KV_OK) {
            redis__node_set_err(n, "%s", why);
            kv__set_errmsg("kv_redis_open: %s: %s%s", n->name, why, hint);
            sync_abandon(n);
            return rc;
        }
    }
    for (int i = 0; i < NSCRIPTS; i++) {
        kv_buf w = {NULL, 0, 0};
        rc = redis__fmt(&w, "*3\r\n");
        if (rc == KV_OK)
            rc = redis__args(&w, "SCRIPT");
        if (rc == KV_OK)
            rc = redis__args(&w, "LOAD");
        if (rc == KV_OK)
            rc = redis__args(&w, redis__scripts[i]);
        if (rc != KV_OK) {
            kv__free(w.data);
            sync_abandon(n);
            return rc;
        }
        int err;
        redisReply *r = sync_cmd(n, &w, d, &err, why, sizeof why);
        kv__free(w.data);
        if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
            if (r == NULL && err == KV_ENOMEM) {
                sync_abandon(n);
                return KV_ENOMEM;
            }
            const char *e = r == NULL                                ? why
                            : r->type == REDIS_REPLY_ERROR && r->str ? r->str
                                                                     : "bad "
                                                                       "reply";
            kv__set_errmsg("kv_redis_open: SCRIPT LOAD on %s failed: %s%s",
                           n->name, e, r != NULL ? auth_hint(e) : "");
            if (r)
                freeReplyObject(r);
            sync_abandon(n);
            return KV_EBACKEND;
        }
        if (learn_sha)
            memcpy(st->sha[i], r->str, 40);
        freeReplyObject(r);
    }
    sync_done(n->fd);
    n->state = N_UP;
    return KV_OK;
}

/* Seed the directory cache (shard=key) from the master of the store's
 * slot: fewer SETBITs before first writes.  Best effort; a node whose
 * exchange failed is closed (its reader may hold half a reply). */
static void dir_seed(rstore *st, const odl *d)
{
    rnode *n = st->slots[st->store_slot];
    if (n == NULL || n->state != N_UP || n->fd < 0)
        return;
    kv_buf w = {NULL, 0, 0};
    int rc = redis__fmt(&w, "*2\r\n");
    if (rc == KV_OK)
        rc = redis__args(&w, "GET");
    if (rc == KV_OK)
        rc = redis__arg_key(st, &w, st->store_slot, "\0s", 2);
    if (rc != KV_OK) {
        kv__free(w.data);
        return;
    }
    int fl = fcntl(n->fd, F_GETFL);
    if (fl < 0 || fcntl(n->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        kv__free(w.data);
        return;
    }
    int err;
    char why[256];
    redisReply *r = sync_cmd(n, &w, d, &err, why, sizeof why);
    kv__free(w.data);
    if (r == NULL) {
        sync_abandon(n);
        return;
    }
    sync_done(n->fd);
    if (r->type == REDIS_REPLY_STRING)
        memcpy(st->dirbits, r->str,
               r->len < sizeof st->dirbits ? r->len : sizeof st->dirbits);
    freeReplyObject(r);
}

static void rstore_free(rstore *st)
{
    kv_store fake;
    memset(&fake, 0, sizeof fake);
    fake.backend = st;
    r_destroy(&fake);
}

/* The URI into st (its seeds made nodes); u is emptied. */
static int take_uri(rstore *st, ruri *u)
{
    if (u->tls) {
        char why[PATH_MAX + 400];
        rtls_opts o = {u->cacert, u->cert, u->key, u->verify};
        int rc = redis__tls_ctx_new(&st->tlsctx, &o, why, sizeof why);
        if (rc != KV_OK) {
            kv__set_errmsg("kv_redis_open: %s", why);
            return rc;
        }
        st->sni = u->sni;
        u->sni = NULL;
    }
    int rc = redis__uri_read_password(u);
    if (rc != KV_OK)
        return rc;
    if (u->user != NULL && u->pass == NULL) {
        kv__set_errmsg("kv_redis_open: user %s has no password in the URI "
                       "(user:password@, or password_file=)",
                       u->user);
        return KV_EINVAL;
    }
    st->user = u->user;
    st->pass = u->pass;
    st->prefix = u->prefix;
    u->user = u->pass = u->prefix = NULL;
    st->plen = strlen(st->prefix);
    st->keymode = u->keymode;
    st->timeout_ms = u->timeout_ms;
    /* in the URI's order (node_get puts each new node first) */
    for (size_t i = u->nhosts; i-- > 0;)
        if (redis__node_get(st, u->hosts[i].host, u->hosts[i].port) == NULL)
            return KV_ENOMEM;
    return KV_OK;
}

/* A CLUSTER SLOTS error that is no "this is not a cluster". */
static bool slots_refused(const char *e)
{
    return strncmp(e, "NOAUTH", 6) == 0 || strncmp(e, "NOPERM", 6) == 0 ||
           strncmp(e, "WRONGPASS", 9) == 0 || strncmp(e, "LOADING", 7) == 0;
}

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool, const char *uri,
                  unsigned flags)
{
    if (out == NULL || loop == NULL || uri == NULL) {
        kv__set_errmsg("kv_redis_open: out, loop and uri are required");
        return KV_EINVAL;
    }
    int frc = kv__check_open_flags("redis", flags, KV_READONLY);
    if (frc != KV_OK)
        return frc;
    ruri u;
    int rc = redis__uri_parse(&u, uri);
    if (rc != KV_OK)
        return rc;
    redis__slot_tags_init();
    rstore *st = kv__calloc(1, sizeof *st);
    if (st == NULL) {
        redis__uri_free(&u);
        return KV_ENOMEM;
    }
    kv__list_init(&st->cursors);
    kv__list_init(&st->timers);
    st->loop = loop;
    st->pool = pool;
    st->dop.cb = redis__defer_cb;
    rc = take_uri(st, &u);
    redis__uri_free(&u);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    odl d = {st->timeout_ms ? kv__now_ms() + st->timeout_ms : 0,
             st->timeout_ms};
    st->store_slot = redis__slot_of(st->prefix, st->plen);
    /* Find a seed that answers CLUSTER SLOTS (or says it is no cluster). */
    rnode *seed = NULL;
    redisReply *slots = NULL;
    char errs[1024] = "";
    bool auth_err = false;
    const char *hint = "";
    for (rnode *n = st->nodes; n != NULL && seed == NULL; n = n->next) {
        char why[512];
        int err = sync_connect(n, &d, why, sizeof why);
        if (err == KV_OK) {
            err = sync_auth(st, n, &d, why, sizeof why, &hint);
            auth_err = auth_err || (err == KV_EBACKEND &&
                                    strncmp(why, "AUTH failed", 11) == 0);
        }
        if (err == KV_OK) {
            kv_buf w = {NULL, 0, 0};
            err = redis__fmt(&w, "*2\r\n");
            if (err == KV_OK)
                err = redis__args(&w, "CLUSTER");
            if (err == KV_OK)
                err = redis__args(&w, "SLOTS");
            if (err == KV_OK)
                slots = sync_cmd(n, &w, &d, &err, why, sizeof why);
            kv__free(w.data);
            if (slots != NULL && slots->type == REDIS_REPLY_ERROR &&
                slots->str != NULL && slots_refused(slots->str)) {
                snprintf(why, sizeof why, "CLUSTER SLOTS: %.200s",
                         slots->str);
                hint = auth_hint(slots->str);
                auth_err = auth_err || strncmp(slots->str, "NO", 2) == 0;
                freeReplyObject(slots);
                slots = NULL;
                err = KV_EBACKEND;
            } else if (slots != NULL) {
                err = KV_OK;
            }
        }
        if (err != KV_OK) {
            sync_abandon(n);
            if (err == KV_ENOMEM) {
                kv__set_errmsg("kv_redis_open: out of memory");
                rstore_free(st);
                return KV_ENOMEM;
            }
            size_t l = strlen(errs);
            snprintf(errs + l, sizeof errs - l, "%s%s: %s", l ? "; " : "",
                     n->name, why);
            continue;
        }
        seed = n;
    }
    if (seed == NULL) {
        kv__set_errmsg("kv_redis_open: %s (%s)%s",
                       auth_err ? "authentication failed"
                                : "cannot reach any redis node",
                       errs, hint);
        rstore_free(st);
        return KV_EBACKEND;
    }
    if (slots->type == REDIS_REPLY_ERROR) {
        /* not a cluster: the seed serves everything */
        for (unsigned s = 0; s < NSLOTS; s++)
            st->slots[s] = seed;
    } else {
        st->cluster = true;
        rc = redis__apply_slots(st, slots, seed->host);
        if (rc != KV_OK) {
            freeReplyObject(slots);
            if (rc != KV_ENOMEM)
                kv__set_errmsg("kv_redis_open: cannot read CLUSTER SLOTS "
                               "from %s",
                               seed->name);
            rstore_free(st);
            return rc;
        }
    }
    freeReplyObject(slots);
    if (!st->cluster)
        st->keymode = false; /* one server: nothing to spread over */
    rc = open_node(st, seed, true, &d);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    if (st->cluster) {
        for (rnode *n = st->nodes; n != NULL; n = n->next) {
            bool master = false;
            for (unsigned s = 0; s < NSLOTS && !master; s++)
                master = st->slots[s] == n;
            if (n == seed || !master) {
                if (n != seed)
                    redis__node_close(n);
                continue;
            }
            /* a down master is retried later; a wrong password fails */
            rc = open_node(st, n, false, &d);
            if (rc == KV_EBACKEND && n->lasterr != NULL &&
                strncmp(n->lasterr, "AUTH failed", 11) == 0) {
                rstore_free(st);
                return rc;
            }
            if (rc == KV_ENOMEM) {
                rstore_free(st);
                return rc;
            }
        }
        if (st->keymode)
            dir_seed(st, &d);
    }
    rc = kv__store_new(out,
                       st->cluster ? &kv__redis_cluster_ops : &kv__redis_ops,
                       st, loop, pool, flags);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    st->s = *out;
    return KV_OK;
}
