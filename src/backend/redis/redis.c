/*
 * redis.c - the Redis (and Redis Cluster) backend: kv_redis_open and the
 * operation tables.  The backend is a Redis client on the store's io_uring
 * loop (hiredis only parses replies); kv_redis_open itself blocks: it
 * connects to the seeds, reads CLUSTER SLOTS and loads the Lua scripts on
 * every master, then hands the sockets to the ring.  The design, and the
 * map of the backend's files, are in docs/DESIGN.md ("backend/redis");
 * redis_int.h lists what the files share.  Without hiredis, redis_none.c
 * is built instead.
 */
#include "backend/redis/redis_int.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
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
        if (n->fd >= 0)
            close(n->fd);
        n->fd = -1;
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

/* Send wire and read one reply on a blocking socket.  NULL on failure,
 * *err then KV_ENOMEM (no reader, or it ran out of memory) or KV_EBACKEND
 * (with *why: what failed). */
static redisReply *sync_cmd(int fd, redisReader *rd, const kv_buf *wire,
                            int *err, const char **why)
{
    *err = KV_EBACKEND;
    *why = "no reply";
    if (rd == NULL) {
        *err = KV_ENOMEM;
        return NULL;
    }
    size_t off = 0;
    while (off < wire->len) {
        ssize_t w = send(fd, wire->data + off, wire->len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            *why = w < 0 ? strerror(errno) : "send failed";
            return NULL;
        }
        off += (size_t)w;
    }
    char buf[16384];
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(rd, &rep) != REDIS_OK) {
            if (rd->err == REDIS_ERR_OOM)
                *err = KV_ENOMEM;
            *why = "protocol error";
            return NULL;
        }
        if (rep != NULL)
            return rep;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *why = r < 0 ? (errno == EAGAIN ? "no reply within 5 s"
                                            : strerror(errno))
                         : "connection closed by the server";
            return NULL;
        }
        if (redisReaderFeed(rd, buf, (size_t)r) != REDIS_OK) {
            if (rd->err == REDIS_ERR_OOM)
                *err = KV_ENOMEM;
            *why = "protocol error";
            return NULL;
        }
    }
}

/* A node whose blocking exchange failed: closed, with a fresh reader (the
 * old one may hold half a reply), to be connected again through the ring. */
static void sync_abandon(rnode *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
    n->state = N_DOWN;
    n->retry_at = 0;
    redisReaderFree(n->rd);
    n->rd = redisReaderCreate(); /* NULL on OOM: checked before use */
}

static int sync_connect(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {5, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
        int e = errno;
        if (e == EINTR) {
            /* interrupted (a signal, or io_uring task work: with a send
             * timeout the kernel does not restart it); the connect goes on
             * in the background: wait for it (5 s) and take its result */
            struct pollfd pfd = {fd, POLLOUT, 0};
            int pr;
            uint64_t end = kv__now_ms() + 5000, now;
            do {
                now = kv__now_ms();
                pr = now < end ? poll(&pfd, 1, (int)(end - now)) : 0;
            } while (pr < 0 && errno == EINTR);
            socklen_t len = sizeof e;
            if (pr < 0)
                e = errno;
            else if (pr == 0)
                e = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
                e = errno;
        }
        if (e != 0) {
            close(fd);
            return -e;
        }
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void sync_done(int fd)
{
    struct timeval tv = {0, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Connect n (blocking) and load the scripts; marks it up or down. */
static int open_node(rstore *st, rnode *n, bool learn_sha)
{
    if (n->fd < 0) {
        int fd = sync_connect(&n->sa);
        if (fd < 0) {
            redis__node_set_err(n, "cannot connect: %s", strerror(-fd));
            n->retry_at = 0;
            return redis__io_err(fd);
        }
        n->fd = fd;
    }
    for (int i = 0; i < NSCRIPTS; i++) {
        kv_buf w = {NULL, 0, 0};
        int rc = redis__fmt(&w, "*3\r\n");
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
        const char *why;
        redisReply *r = sync_cmd(n->fd, n->rd, &w, &err, &why);
        kv__free(w.data);
        if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
            if (r == NULL && err == KV_ENOMEM) {
                sync_abandon(n);
                return KV_ENOMEM;
            }
            kv__set_errmsg(
                "kv_redis_open: SCRIPT LOAD on %s failed: %s", n->name,
                r == NULL                                ? why
                : r->type == REDIS_REPLY_ERROR && r->str ? r->str
                                                         : "bad reply");
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
static void dir_seed(rstore *st)
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
    struct timeval tv = {5, 0};
    (void)setsockopt(n->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    (void)setsockopt(n->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int err;
    const char *why;
    redisReply *r = sync_cmd(n->fd, n->rd, &w, &err, &why);
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

/* Parse "redis://ip:port[,ip:port...][/prefix][?opt[&opt]]", options
 * shard=key|store and timeout=MS. */
static int parse_uri(rstore *st, const char *uri)
{
    static const char scheme[] = "redis://";
    if (strncmp(uri, scheme, sizeof scheme - 1) != 0) {
        kv__set_errmsg("kv_redis_open: the URI must start with redis://");
        return KV_EINVAL;
    }
    const char *p = uri + sizeof scheme - 1;
    size_t hl = strcspn(p, "/?");
    const char *rest = p + hl;
    /* hosts */
    const char *h = p;
    while (h < p + hl) {
        size_t l = strcspn(h, ",/?");
        if (l == 0 || l >= 64) {
            kv__set_errmsg("kv_redis_open: bad host list in %s", uri);
            return KV_EINVAL;
        }
        char hp[64];
        memcpy(hp, h, l);
        hp[l] = '\0';
        char *colon = strrchr(hp, ':');
        int port = 6379;
        if (colon != NULL) {
            *colon = '\0';
            char *end;
            long v = strtol(colon + 1, &end, 10);
            if (*end != '\0' || v <= 0 || v > 65535) {
                kv__set_errmsg("kv_redis_open: bad port in %s", uri);
                return KV_EINVAL;
            }
            port = (int)v;
        }
        if (strcmp(hp, "localhost") == 0)
            snprintf(hp, sizeof hp, "127.0.0.1");
        if (!redis__addr_ok(hp, port)) {
            kv__set_errmsg("kv_redis_open: %s is not a numeric IPv4 "
                           "address",
                           hp);
            return KV_EINVAL;
        }
        if (redis__node_get(st, hp, port) == NULL)
            return KV_ENOMEM;
        h += l;
        if (*h == ',')
            h++;
    }
    if (st->nodes == NULL) {
        kv__set_errmsg("kv_redis_open: no host in %s", uri);
        return KV_EINVAL;
    }
    const char *pre = "kv";
    size_t pl = 2;
    if (*rest == '/') {
        rest++;
        pl = strcspn(rest, "?");
        pre = rest;
        rest += pl;
        if (pl == 0) {
            pre = "kv";
            pl = 2;
        }
    }
    for (size_t i = 0; i < pl; i++) {
        char ch = pre[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.' ||
              ch == ':')) {
            kv__set_errmsg("kv_redis_open: the prefix may hold only "
                           "[A-Za-z0-9_.:-]");
            return KV_EINVAL;
        }
    }
    st->prefix = kv__strndup(pre, pl);
    if (st->prefix == NULL)
        return KV_ENOMEM;
    st->plen = pl;
    st->keymode = true;
    st->timeout_ms = TIMEOUT_DEFAULT_MS;
    if (*rest == '?') {
        rest++;
        while (*rest != '\0') {
            size_t ol = strcspn(rest, "&");
            char *end = NULL;
            if (ol == 11 && strncmp(rest, "shard=store", ol) == 0) {
                st->keymode = false;
            } else if (ol == 9 && strncmp(rest, "shard=key", ol) == 0) {
                st->keymode = true;
            } else if (ol > 8 && strncmp(rest, "timeout=", 8) == 0 &&
                       rest[8] >= '0' && rest[8] <= '9') {
                unsigned long v = strtoul(rest + 8, &end, 10);
                if (end != rest + ol || v > 3600000) {
                    kv__set_errmsg("kv_redis_open: bad timeout in %s "
                                   "(milliseconds, 0 to 3600000)",
                                   uri);
                    return KV_EINVAL;
                }
                st->timeout_ms = (unsigned)v;
            } else {
                kv__set_errmsg("kv_redis_open: unknown option %.*s in %s "
                               "(shard=key, shard=store, timeout=MS)",
                               (int)ol, rest, uri);
                return KV_EINVAL;
            }
            rest += ol;
            if (*rest == '&')
                rest++;
        }
    } else if (*rest != '\0') {
        kv__set_errmsg("kv_redis_open: bad URI %s", uri);
        return KV_EINVAL;
    }
    return KV_OK;
}

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool, const char *uri,
                  unsigned flags)
{
    if (out == NULL || loop == NULL || uri == NULL) {
        kv__set_errmsg("kv_redis_open: out, loop and uri are required");
        return KV_EINVAL;
    }
    if ((flags & ~(KV_READONLY | KV_NO_FSYNC | KV_SYNC_FULL)) != 0) {
        kv__set_errmsg("kv_redis_open: bad flags 0x%x", flags);
        return KV_EINVAL;
    }
    redis__slot_tags_init();
    rstore *st = kv__calloc(1, sizeof *st);
    if (st == NULL)
        return KV_ENOMEM;
    kv__list_init(&st->cursors);
    kv__list_init(&st->timers);
    st->loop = loop;
    st->dop.cb = redis__defer_cb;
    int rc = parse_uri(st, uri);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    st->store_slot = redis__slot_of(st->prefix, st->plen);
    /* Find a seed that answers CLUSTER SLOTS (or says it is no cluster). */
    rnode *seed = NULL;
    redisReply *slots = NULL;
    char errs[512] = "";
    for (rnode *n = st->nodes; n != NULL && seed == NULL; n = n->next) {
        int fd = sync_connect(&n->sa);
        if (fd < 0) {
            size_t l = strlen(errs);
            snprintf(errs + l, sizeof errs - l, "%s%s: %s", l ? "; " : "",
                     n->name, strerror(-fd));
            continue;
        }
        n->fd = fd;
        kv_buf w = {NULL, 0, 0};
        rc = redis__fmt(&w, "*2\r\n");
        if (rc == KV_OK)
            rc = redis__args(&w, "CLUSTER");
        if (rc == KV_OK)
            rc = redis__args(&w, "SLOTS");
        int err = rc;
        const char *why = "out of memory";
        slots = rc == KV_OK ? sync_cmd(fd, n->rd, &w, &err, &why) : NULL;
        kv__free(w.data);
        if (slots == NULL) {
            sync_abandon(n);
            if (err == KV_ENOMEM) {
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
        kv__set_errmsg("kv_redis_open: cannot reach any redis node (%s)", errs);
        rstore_free(st);
        return KV_EBACKEND;
    }
    if (slots->type == REDIS_REPLY_ERROR) {
        /* not a cluster: the seed serves everything */
        for (unsigned s = 0; s < NSLOTS; s++)
            st->slots[s] = seed;
    } else {
        st->cluster = true;
        char ip[48];
        inet_ntop(AF_INET, &seed->sa.sin_addr, ip, sizeof ip);
        rc = redis__apply_slots(st, slots, ip);
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
    rc = open_node(st, seed, true);
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
                if (n != seed && n->fd >= 0) {
                    close(n->fd);
                    n->fd = -1;
                }
                continue;
            }
            (void)open_node(st, n, false); /* a down master: retried later */
        }
        if (st->keymode)
            dir_seed(st);
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
