/*
 * redis.c - the Redis (and Redis Cluster) backend: kv_redis_open and
 * kv__redis_ops.
 *
 * The backend is a Redis client on the store's io_uring loop.  hiredis is
 * used only to parse replies (redisReader); commands are formatted here and
 * every socket operation after kv_redis_open (connect, send, recv) is an
 * io_uring SQE whose CQE comes back to this file: no thread, no blocking
 * call on the loop thread.  kv_redis_open itself blocks (like
 * kv_sqlite_open): it connects to the seeds with ordinary blocking sockets,
 * reads CLUSTER SLOTS and loads the Lua scripts on every master, then hands
 * the sockets to the ring.
 *
 * Nodes.  One connection per node (struct rnode), pipelined: commands are
 * appended to qbuf, sent by one SEND at a time (short sends resumed; sbuf
 * stays untouched while the kernel owns it), and replies are matched to the
 * FIFO of sent commands in order.  A RECV is outstanding only while replies
 * are due, so an idle store keeps nothing in flight on the loop.  When a
 * connection fails, every command waiting for a reply on it fails with
 * KV_EBACKEND ("outcome unknown": it may or may not have run), the socket is
 * shut down and closed once its SQEs are back, and the node is retried
 * after a back-off (50 ms doubling to 2 s) by the next command for it.
 * A watchdog timer runs while any node connects or owes replies: a connect
 * that has not completed, or a connection that has sent nothing back while
 * replies are due, for the URI's timeout (default 10 s) fails the same way
 * (a peer that vanished without a reset would otherwise hold its commands
 * for the kernel's TCP timeouts, minutes).
 *
 * Cluster.  Slot map from CLUSTER SLOTS (a single, non-cluster server
 * answers with an error and serves every slot); MOVED updates the slot and
 * refreshes the whole map, ASK resends once with ASKING; after a node
 * failure the map is refreshed too (a promoted replica takes the slots).
 * A command the server refused without running it because of a transient
 * state (TRYAGAIN: a script whose keys are split between the two nodes of
 * a slot being migrated; LOADING, CLUSTERDOWN, MASTERDOWN) waits in a retry
 * queue and is routed again through the slot map after 5 ms, doubling to
 * 500 ms, about 3 s in all, then fails KV_EBACKEND ("not applied").
 *
 * Layout.  A store has a prefix P (URI path, default "kv").  Every Redis
 * key of a hash slot S carries one hash tag {N}, a number chosen so that
 * CRC16(N) mod 16384 == S (table made once), so the keys of one slot are
 * all addressable from one Lua script:
 *   P{N} <kv__key_encode bytes>   a hash: v (value), t (token)
 *   P{N} \0 c                     the slot's token counter
 *   P{N} \0 i                     the slot's index: a sorted set of the
 *                                 encoded keys stored in the slot
 *   P{M} \0 s                     shard=key, M the slot of P itself: the
 *                                 store's slot directory, a bitmap of
 *                                 16384 bits, bit S set before the first
 *                                 record of slot S is written
 * The counter and the index carry the slot's tag, so they move with the
 * slot when it is migrated (the tokens go on from the migrated counter).
 * Placement (URI ?shard=): "key" (default) puts each record in the slot of
 * its encoded key, or of the bytes between the first '{' and the next '}'
 * of its id when it has such a tag; "store" puts the whole store in one
 * slot (one master; every atomic operation and move works).
 *
 * Writes are Lua scripts (EVALSHA; resent as EVAL on NOSCRIPT) that check
 * the token and write value, token and index entry together.  Tokens come
 * from the slot's counter, advanced to at least the server's clock in
 * microseconds, so a key never sees a token twice (not across delete and
 * re-insert, nor after a failover lost the counter's last writes).
 *
 * Queries read the index: one ZRANGEBYLEX per slot that may hold matches,
 * keys merged and sorted here, then values fetched in chunks with HMGET.
 * The matching keys (not the values) are held in memory for the life of
 * the iterator.  With shard=store that is one slot.  With shard=key a
 * query (or drop) first GETs the slot directory (2 KiB) and then reads
 * only the slots whose bit is set, pipelined over the masters; without a
 * directory (nothing written yet, or the key was lost) it reads all 16384.
 * The directory is written ahead: before a put sends its script to a slot
 * this client has not yet seen in the directory (a cache, seeded at open
 * and by every query), it SETBITs the slot and waits for the reply.  So a
 * record exists only in slots whose bit is set, whatever other clients do
 * concurrently, and a query sees every record whose put completed before
 * the query began.  Bits are never cleared (a concurrent writer may be
 * about to use the slot): the directory only grows, at most to every slot.
 * It is one key: its migration is followed by ASK and MOVED like any other.
 */
#include "config.h"

#include "store/backend.h"

#ifndef HAVE_HIREDIS

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                  const char *uri, unsigned flags)
{
    (void)out;
    (void)loop;
    (void)pool;
    (void)uri;
    (void)flags;
    kv__set_errmsg("kv_redis_open: kvstore was built without hiredis "
                   "(apt-get install libhiredis-dev and reconfigure)");
    return KV_ENOTSUP;
}

#else /* HAVE_HIREDIS */

#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NSLOTS 16384
#define RBUF_SIZE 65536
#define FETCH_CHUNK 128
#define MAX_REDIRECTS 8
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000

/* Delays before resending a command the server did not run because of a
 * transient state (TRYAGAIN: a multi-key command on a slot being migrated;
 * LOADING; CLUSTERDOWN; MASTERDOWN): about 3 s in all, then KV_EBACKEND. */
static const unsigned retry_ms[] = {5,   10,  20,  40,  80,  160,
                                    320, 500, 500, 500, 500, 500};
#define RETRY_MAX (sizeof retry_ms / sizeof retry_ms[0])

/* Default deadline (URI timeout=MS) for a connect to complete, and for a
 * node with commands awaiting replies to send back any bytes at all. */
#define TIMEOUT_DEFAULT_MS 10000

/* ------------------------------------------------------------------------ */
/* CRC16 (XMODEM) and the slot tags                                          */
/* ------------------------------------------------------------------------ */

static uint16_t crc16(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(b[i] << 8);
        for (int k = 0; k < 8; k++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021)
                                 : (uint16_t)(crc << 1);
    }
    return crc;
}

static unsigned slot_of(const void *p, size_t n)
{
    return crc16(p, n) & (NSLOTS - 1);
}

/* slot_tag[s]: the smallest number whose decimal form hashes to slot s. */
static uint32_t slot_tag[NSLOTS];
static pthread_once_t slot_tag_once = PTHREAD_ONCE_INIT;

static void slot_tag_init(void)
{
    size_t left = NSLOTS;
    static bool seen[NSLOTS];
    for (uint32_t v = 0; left > 0; v++) {
        char b[16];
        int n = snprintf(b, sizeof b, "%u", v);
        unsigned s = slot_of(b, (size_t)n);
        if (!seen[s]) {
            seen[s] = true;
            slot_tag[s] = v;
            left--;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Lua scripts                                                              */
/* ------------------------------------------------------------------------ */

enum { SC_PUT, SC_DEL, SC_MOVE, SC_DROP, NSCRIPTS };

/* Lua: the next token of a slot: one more than its counter, and at least
 * the server's clock in microseconds, so that a counter that went back
 * (a failover that lost writes not yet replicated) still hands out tokens
 * above every token it gave before, unless the new master's clock is
 * behind the old one's by more than the failover took.  Stored with %d:
 * Lua 5.1 would print a number this large in exponent form. */
#define LUA_NEXTTOK                                                         \
    "local function nexttok(k)\n"                                           \
    "  local c = tonumber(redis.call('GET', k) or '0')\n"                   \
    "  local tm = redis.call('TIME')\n"                                     \
    "  local t = tonumber(tm[1]) * 1000000 + tonumber(tm[2])\n"             \
    "  if t <= c then t = c + 1 end\n"                                      \
    "  local ts = string.format('%d', t)\n"                                 \
    "  redis.call('SET', k, ts)\n"                                          \
    "  return t, ts\n"                                                      \
    "end\n"

/* KEYS: counter, index, records.  ARGV: atomic, then token, value, member
 * per record.  Returns per record its new token, 0 on conflict (1 for an
 * unwritten record of an atomic batch that had a conflict). */
static const char script_put[] =
    LUA_NEXTTOK
    "local n = #KEYS - 2\n"
    "local res = {}\n"
    "local bad = false\n"
    "for i = 1, n do\n"
    "  local cur = redis.call('HGET', KEYS[i+2], 't')\n"
    "  local want = ARGV[3*i-1]\n"
    "  if (cur == false and want == '0') or cur == want then res[i] = 1\n"
    "  else res[i] = 0; bad = true end\n"
    "end\n"
    "if bad and ARGV[1] == '1' then return res end\n"
    "for i = 1, n do\n"
    "  if res[i] == 1 then\n"
    "    local t, ts = nexttok(KEYS[1])\n"
    "    redis.call('HSET', KEYS[i+2], 'v', ARGV[3*i], 't', ts)\n"
    "    redis.call('ZADD', KEYS[2], 0, ARGV[3*i+1])\n"
    "    res[i] = t\n"
    "  end\n"
    "end\n"
    "return res\n";

/* KEYS: counter, index, records.  ARGV: atomic, then token, member. */
static const char script_del[] =
    "local n = #KEYS - 2\n"
    "local res = {}\n"
    "local bad = false\n"
    "for i = 1, n do\n"
    "  local cur = redis.call('HGET', KEYS[i+2], 't')\n"
    "  if cur ~= false and cur == ARGV[2*i] then res[i] = 1\n"
    "  else res[i] = 0; bad = true end\n"
    "end\n"
    "if bad and ARGV[1] == '1' then return res end\n"
    "for i = 1, n do\n"
    "  if res[i] == 1 then\n"
    "    redis.call('DEL', KEYS[i+2])\n"
    "    redis.call('ZREM', KEYS[2], ARGV[2*i+1])\n"
    "  end\n"
    "end\n"
    "return res\n";

/* KEYS: counter, index.  ARGV: base, then from, to (encoded prefixes). */
static const char script_move[] =
    LUA_NEXTTOK
    "local base = ARGV[1]\n"
    "local moving = {}\n"
    "local plan = {}\n"
    "for i = 2, #ARGV, 2 do\n"
    "  local f, t = ARGV[i], ARGV[i+1]\n"
    "  local ms = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. f,\n"
    "                        '(' .. string.sub(f, 1, -2) .. '\\001')\n"
    "  for _, m in ipairs(ms) do\n"
    "    moving[m] = true\n"
    "    plan[#plan+1] = {m, t .. string.sub(m, #f + 1)}\n"
    "  end\n"
    "end\n"
    "for _, p in ipairs(plan) do\n"
    "  if not moving[p[2]] and redis.call('ZSCORE', KEYS[2], p[2]) then\n"
    "    return 0\n"
    "  end\n"
    "end\n"
    "local vals = {}\n"
    "for i, p in ipairs(plan) do\n"
    "  vals[i] = redis.call('HGET', base .. p[1], 'v')\n"
    "  redis.call('DEL', base .. p[1])\n"
    "  redis.call('ZREM', KEYS[2], p[1])\n"
    "end\n"
    "for i, p in ipairs(plan) do\n"
    "  local t, ts = nexttok(KEYS[1])\n"
    "  redis.call('HSET', base .. p[2], 'v', vals[i], 't', ts)\n"
    "  redis.call('ZADD', KEYS[2], 0, p[2])\n"
    "end\n"
    "return 1\n";

/* KEYS: index.  ARGV: base, then encoded prefixes. */
static const char script_drop[] =
    "local base = ARGV[1]\n"
    "local cnt = 0\n"
    "for i = 2, #ARGV do\n"
    "  local lo = '[' .. ARGV[i]\n"
    "  local hi = '(' .. string.sub(ARGV[i], 1, -2) .. '\\001'\n"
    "  local ms = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi)\n"
    "  for _, m in ipairs(ms) do\n"
    "    redis.call('DEL', base .. m)\n"
    "    cnt = cnt + 1\n"
    "  end\n"
    "  if #ms > 0 then redis.call('ZREMRANGEBYLEX', KEYS[1], lo, hi) end\n"
    "end\n"
    "return cnt\n";

static const char *const scripts[NSCRIPTS] = {script_put, script_del,
                                               script_move, script_drop};

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct rstore rstore;
typedef struct rnode rnode;
typedef struct rcmd rcmd;
typedef struct rreq rreq;

/* A command's completion: reply (NULL on failure, then err/msg set). */
typedef void (*rcmd_cb)(rcmd *c, redisReply *r, int err, const char *msg);

struct rcmd {
    rcmd *next;
    int slot;      /* target slot, or -1 for node */
    rnode *node;   /* fixed target (slot -1) or the ASK target */
    int script;    /* -1: a plain command */
    bool eval;     /* send the script body (after NOSCRIPT) */
    bool asking;   /* precede with ASKING */
    int redirects;
    unsigned tries; /* resends after a transient error */
    uint64_t due;   /* in the retry queue: when to resend (ms) */
    int nargs;     /* arguments in tail */
    kv_buf tail;   /* the formatted arguments (after EVALSHA sha) */
    rcmd_cb cb;    /* NULL: reply ignored (ASKING) */
    rreq *rq;
    size_t idx;
    rcmd *then;    /* a directory SETBIT: the write it must precede */
};

enum { N_DOWN = 0, N_CONNECTING, N_UP, N_FAILING };

struct rnode {
    rnode *next;
    rstore *st;
    char name[64]; /* "ip:port" */
    struct sockaddr_in sa;
    int fd;
    int state;
    unsigned nops;         /* SQEs in flight */
    kv__op rop, sop, cop;  /* recv, send, connect */
    bool recving, sending;
    redisReader *rd;
    char *rbuf;
    kv_buf sbuf, qbuf;
    size_t soff;
    rcmd *fifo, *fifo_tail; /* sent, awaiting a reply */
    rcmd *wait, *wait_tail; /* waiting for the connection */
    uint64_t retry_at;      /* ms, CLOCK_MONOTONIC */
    uint64_t since;         /* connect started, or last sign of life while
                               replies are due (the watchdog's clock) */
    unsigned backoff;
    bool nomem;             /* failed for want of memory: no back-off */
    char *lasterr;
};

/* One request's state (req->bpriv). */
struct rreq {
    kv__req *req;
    size_t pending; /* commands (plus one while submit runs) */
    int err;
    char *msg;
    rreq *dnext;   /* deferred completion list */
    /* queries and drops over the slot directory: the encoded prefixes */
    kv_buf *encs;
    size_t nencs;
    /* queries */
    struct rmember *m;
    size_t nm, capm;
    /* fetch */
    size_t fetched;
};

typedef struct rmember {
    char *p;
    size_t len;
} rmember;

/* A timer of the retry queue (one per distinct wake-up time). */
typedef struct rtimer {
    kv__op op;
    struct __kernel_timespec ts;
    bool watchdog; /* the I/O deadline check, not a retry wake-up */
    bool removing; /* a TIMEOUT_REMOVE for it is queued */
    uint64_t due;
    struct rtimer *next;
    rstore *st;
} rtimer;

/* The iterator cursor (iter->bpriv): sorted members and a position. */
typedef struct rcursor {
    rmember *m;
    size_t n, pos;
    struct rcursor *prev, *next; /* the store's cursors (freed at destroy) */
    rstore *st;
} rcursor;

struct rstore {
    kv_store *s;
    kv_loop *loop;
    char *prefix;
    size_t plen;
    bool keymode;  /* shard=key */
    bool cluster;
    unsigned store_slot;
    rnode *nodes;
    rnode *slots[NSLOTS];
    char sha[NSCRIPTS][41];
    bool refreshing;
    bool refresh_again;
    /* deferred completions */
    kv__op dop;
    bool dpending;
    rreq *defer, *defer_tail;
    kv__req *close_req;
    bool closing, closed;
    rcursor *cursors; /* live query cursors */
    kv__req *oom;     /* requests that could not get state (bpriv chain) */
    rcmd *retryq;     /* commands waiting to be resent */
    /* shard=key: the slots known to be in the store's slot directory */
    unsigned char dirbits[NSLOTS / 8];
    rtimer *timers;   /* armed timers (retry queue and watchdog) */
    rtimer *wd;       /* the watchdog timer, when armed (among them) */
    unsigned timeout_ms; /* I/O deadline, 0: none */
    unsigned long stats_redirects;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------------ */
/* RESP formatting                                                          */
/* ------------------------------------------------------------------------ */

static int buf_fmt(kv_buf *b, const char *fmt, ...) KV__PRINTF(2, 3);
static int buf_fmt(kv_buf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return KV_EINVAL;
    return kv_buf_append(b, tmp, (size_t)n);
}

/* Append one bulk string. */
static int arg(kv_buf *b, const void *p, size_t n)
{
    int rc = buf_fmt(b, "$%zu\r\n", n);
    if (rc == KV_OK && n > 0)
        rc = kv_buf_append(b, p, n);
    if (rc == KV_OK)
        rc = kv_buf_append(b, "\r\n", 2);
    return rc;
}

static int args(kv_buf *b, const char *s)
{
    return arg(b, s, strlen(s));
}

static int argu(kv_buf *b, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    return arg(b, t, (size_t)n);
}

/* A Redis key: P{tag(slot)} followed by what (len bytes). */
static int arg_key(rstore *st, kv_buf *b, unsigned slot, const void *what,
                   size_t len)
{
    char t[24];
    int n = snprintf(t, sizeof t, "{%u}", slot_tag[slot]);
    int rc = buf_fmt(b, "$%zu\r\n", st->plen + (size_t)n + len);
    if (rc == KV_OK)
        rc = kv_buf_append(b, st->prefix, st->plen);
    if (rc == KV_OK)
        rc = kv_buf_append(b, t, (size_t)n);
    if (rc == KV_OK && len > 0)
        rc = kv_buf_append(b, what, len);
    if (rc == KV_OK)
        rc = kv_buf_append(b, "\r\n", 2);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Keys and slots                                                           */
/* ------------------------------------------------------------------------ */

/* The slot of a record (its encoded key enc). */
static unsigned key_slot(const rstore *st, const kv_key *key,
                         const kv_buf *enc)
{
    if (!st->keymode)
        return st->store_slot;
    const char *id = kv_key_id(key);
    const char *o = strchr(id, '{');
    if (o != NULL) {
        const char *c = strchr(o + 1, '}');
        if (c != NULL && c > o + 1)
            return slot_of(o + 1, (size_t)(c - o - 1));
    }
    return slot_of(enc->data, enc->len);
}

/* ------------------------------------------------------------------------ */
/* Request completion                                                       */
/* ------------------------------------------------------------------------ */

static void defer_cb(kv__op *op, int res, uint32_t flags);
static void maybe_closed(rstore *st);

static void rreq_free(rreq *rq)
{
    for (size_t i = 0; i < rq->nencs; i++)
        kv__free(rq->encs[i].data);
    kv__free(rq->encs);
    for (size_t i = 0; i < rq->nm; i++)
        kv__free(rq->m[i].p);
    kv__free(rq->m);
    kv__free(rq->msg);
    kv__free(rq);
}

static void defer_kick(rstore *st)
{
    if (st->dpending || (st->defer == NULL && st->oom == NULL))
        return;
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(st->loop, &sqe, 1) != KV_OK)
        return; /* retried at the next CQE of this store */
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&st->dop);
    st->dpending = true;
}

/* Record a failure on rq (the first one wins). */
static void rreq_fail(rreq *rq, int err, const char *msg)
{
    if (rq->err != KV_OK)
        return;
    rq->err = err;
    rq->msg = msg ? kv__strdup(msg) : NULL;
}

static void req_complete(rstore *st, rreq *rq);

/* Drop one pending count; complete later (never inside submit). */
static void rreq_put(rstore *st, rreq *rq, bool defer)
{
    if (--rq->pending > 0)
        return;
    if (defer) {
        rq->dnext = NULL;
        if (st->defer_tail)
            st->defer_tail->dnext = rq;
        else
            st->defer = rq;
        st->defer_tail = rq;
        defer_kick(st);
        return;
    }
    req_complete(st, rq);
}

static void defer_cb(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rstore *st = KV__CONTAINER_OF(op, rstore, dop);
    st->dpending = false;
    rreq *list = st->defer;
    st->defer = st->defer_tail = NULL;
    kv__req *oom = st->oom;
    st->oom = NULL;
    while (oom != NULL) {
        kv__req *req = oom;
        oom = req->bpriv;
        req->bpriv = NULL;
        kv__req_done(req, KV_ENOMEM, NULL);
    }
    while (list != NULL) {
        rreq *rq = list;
        list = rq->dnext;
        if (rq->req == NULL) { /* the close request */
            kv__req *cr = st->close_req;
            st->close_req = NULL;
            kv__free(rq);
            st->closed = true;
            kv__req_done(cr, KV_OK, NULL);
            continue;
        }
        req_complete(st, rq);
    }
    defer_kick(st);
    maybe_closed(st);
}

/* ------------------------------------------------------------------------ */
/* Nodes                                                                    */
/* ------------------------------------------------------------------------ */

static void node_send_cmd(rnode *n, rcmd *c);
static void cmd_route(rstore *st, rcmd *c);
static void recv_cb(kv__op *op, int res, uint32_t flags);
static void send_cb(kv__op *op, int res, uint32_t flags);
static void connect_cb(kv__op *op, int res, uint32_t flags);
static void refresh_map(rstore *st);
static void retry_later(rstore *st, rcmd *c, const char *why);
static void watchdog_arm(rstore *st);
static void watchdog_idle(rstore *st);

static void cmd_fail(rcmd *c, int err, const char *msg);

static void cmd_free(rcmd *c)
{
    if (c->then != NULL) /* never sent: its request must still hear */
        cmd_fail(c->then, KV_ECANCELED, "store closed");
    kv__free(c->tail.data);
    kv__free(c);
}

static void cmd_fail(rcmd *c, int err, const char *msg)
{
    if (c->cb != NULL)
        c->cb(c, NULL, err, msg);
    cmd_free(c);
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

/* A numeric IPv4 address and a port that node_get accepts. */
static bool addr_ok(const char *ip, int port)
{
    struct in_addr a;
    return port > 0 && port <= 65535 && inet_pton(AF_INET, ip, &a) == 1;
}

/* The node of ip:port, made if new; NULL for a bad address (see addr_ok)
 * or out of memory. */
static rnode *node_get(rstore *st, const char *ip, int port)
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

static void node_set_err(rnode *n, const char *fmt, ...) KV__PRINTF(2, 3);
static void node_set_err(rnode *n, const char *fmt, ...)
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
    n->backoff = n->backoff == 0 ? BACKOFF_MIN_MS
                 : n->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                   : n->backoff * 2;
    n->retry_at = now_ms() + n->backoff;
}

static void fail_list(rcmd *c, int err, const char *msg)
{
    while (c != NULL) {
        rcmd *next = c->next;
        cmd_fail(c, err, msg);
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
    node_set_err(n, "%s", why);
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
    fail_list(fifo, err, st->closing ? "store closed" : m1);
    fail_list(wait, err, st->closing ? "store closed" : m2);
    kv__free(m1);
    kv__free(m2);
    node_settle(n);
    if (!st->closing)
        refresh_map(st);
    watchdog_idle(st);
}

static void node_fail(rnode *n, const char *why)
{
    node_fail_err(n, why, KV_EBACKEND);
}

/* The status of the commands an I/O failure fails: KV_ENOMEM for a
 * memory shortage, KV_EBACKEND for anything else.  rc is a socket
 * operation's negative result (a CQE's negated errno; -ENOMEM from the
 * fallback mode's emulated ring, or from sync_connect) or a ring call's
 * failure (kv__loop_sqes: KV_ENOMEM, another kv code, or
 * io_uring_submit's negated errno). */
static int io_err(int rc)
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
        node_fail_err(n, "cannot queue a receive on the ring", io_err(rc));
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
        node_fail_err(n, "cannot queue a send on the ring", io_err(rc));
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
        maybe_closed(n->st);
        return;
    }
    if (res < 0) {
        char m[128];
        snprintf(m, sizeof m, "send: %s", strerror(-res));
        node_fail_err(n, m, io_err(res));
    } else {
        n->soff += (size_t)res;
        if (n->soff >= n->sbuf.len) {
            n->sbuf.len = 0;
            n->soff = 0;
        }
        start_send(n);
    }
    maybe_closed(n->st);
}

static bool reply_is_err(const redisReply *r, const char *pfx)
{
    return r->type == REDIS_REPLY_ERROR && r->str != NULL &&
           strncmp(r->str, pfx, strlen(pfx)) == 0;
}

/* "MOVED 3999 127.0.0.1:6381": the node, or NULL. */
static rnode *redirect_node(rstore *st, const char *s, int *slot)
{
    const char *sp = strchr(s, ' ');
    if (sp == NULL)
        return NULL;
    *slot = atoi(sp + 1);
    sp = strchr(sp + 1, ' ');
    if (sp == NULL)
        return NULL;
    const char *colon = strrchr(sp + 1, ':');
    if (colon == NULL || colon - (sp + 1) >= 48)
        return NULL;
    char ip[48];
    memcpy(ip, sp + 1, (size_t)(colon - (sp + 1)));
    ip[colon - (sp + 1)] = '\0';
    return node_get(st, ip, atoi(colon + 1));
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
        cmd_free(c);
        return;
    }
    bool moved = reply_is_err(r, "MOVED ");
    bool ask = reply_is_err(r, "ASK ");
    if ((moved || ask) && c->redirects < MAX_REDIRECTS) {
        int slot = -1;
        rnode *to = redirect_node(st, r->str, &slot);
        if (to != NULL && slot >= 0 && slot < NSLOTS) {
            c->redirects++;
            st->stats_redirects++;
            if (moved) {
                st->slots[slot] = to;
                c->node = NULL;
                c->asking = false;
                refresh_map(st);
                cmd_route(st, c);
            } else {
                c->node = to;
                c->asking = true;
                node_send_cmd(to, c);
            }
            return;
        }
    }
    if (reply_is_err(r, "NOSCRIPT") && c->script >= 0 && !c->eval) {
        c->eval = true;
        if (c->slot >= 0 && c->node == NULL) {
            cmd_route(st, c);
        } else {
            c->asking = c->slot >= 0; /* a slot command with a node: ASK */
            node_send_cmd(c->node, c);
        }
        return;
    }
    if (c->slot >= 0 &&
        (reply_is_err(r, "TRYAGAIN") || reply_is_err(r, "LOADING") ||
         reply_is_err(r, "CLUSTERDOWN") || reply_is_err(r, "MASTERDOWN"))) {
        retry_later(st, c, r->str);
        return;
    }
    c->cb(c, r, KV_OK, NULL);
    cmd_free(c);
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
        maybe_closed(st);
        return;
    }
    if (res <= 0) {
        char m[128];
        snprintf(m, sizeof m, "%s",
                 res == 0 ? "connection closed by the server"
                          : strerror(-res));
        node_fail_err(n, m, res == 0 ? KV_EBACKEND : io_err(res));
        maybe_closed(st);
        return;
    }
    n->since = now_ms(); /* alive */
    if (n->rd == NULL || redisReaderFeed(n->rd, n->rbuf, (size_t)res) !=
                             REDIS_OK) {
        node_fail(n, "cannot parse the reply stream");
        maybe_closed(st);
        return;
    }
    for (;;) {
        void *rep = NULL;
        if (redisReaderGetReply(n->rd, &rep) != REDIS_OK) {
            node_fail(n, "protocol error in a reply");
            break;
        }
        if (rep == NULL)
            break;
        if (n->fifo == NULL) {
            freeReplyObject(rep);
            node_fail(n, "a reply nobody asked for");
            break;
        }
        handle_reply(n, rep);
        freeReplyObject(rep);
        if (n->state != N_UP)
            break;
    }
    start_recv(n);
    watchdog_idle(st);
    maybe_closed(st);
}

/* Format c onto n's queue and expect its reply. */
static int node_write(rnode *n, rcmd *c)
{
    rstore *st = n->st;
    kv_buf *b = &n->qbuf;
    size_t mark = b->len;
    int rc = KV_OK;
    if (c->asking)
        rc = kv_buf_append(b, "*1\r\n$6\r\nASKING\r\n", 16);
    if (rc == KV_OK && c->script >= 0) {
        rc = buf_fmt(b, "*%d\r\n", c->nargs + 2);
        if (rc == KV_OK && c->eval)
            rc = args(b, "EVAL");
        if (rc == KV_OK && c->eval)
            rc = args(b, scripts[c->script]);
        if (rc == KV_OK && !c->eval)
            rc = args(b, "EVALSHA");
        if (rc == KV_OK && !c->eval)
            rc = arg(b, st->sha[c->script], 40);
    } else if (rc == KV_OK) {
        rc = buf_fmt(b, "*%d\r\n", c->nargs);
    }
    if (rc == KV_OK)
        rc = kv_buf_append(b, c->tail.data, c->tail.len);
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
        n->since = now_ms(); /* replies are due from now */
    if (n->fifo_tail)
        n->fifo_tail->next = c;
    else
        n->fifo = c;
    n->fifo_tail = c;
    watchdog_arm(st);
    return KV_OK;
}

static void connect_cb(kv__op *op, int res, uint32_t flags);

static void node_connect(rnode *n)
{
    n->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        node_set_err(n, "socket: %s", strerror(errno));
        n->retry_at = now_ms() + BACKOFF_MIN_MS;
        return;
    }
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(n->st->loop, &sqe, 1) != KV_OK) {
        close(n->fd);
        n->fd = -1;
        node_set_err(n, "cannot queue a connect on the ring");
        return;
    }
    io_uring_prep_connect(sqe, n->fd, (struct sockaddr *)&n->sa,
                          sizeof n->sa);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&n->cop);
    n->nops++;
    n->state = N_CONNECTING;
    n->since = now_ms();
    watchdog_arm(n->st);
}

static void connect_cb(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    rnode *n = KV__CONTAINER_OF(op, rnode, cop);
    rstore *st = n->st;
    n->nops--;
    if (n->state != N_CONNECTING) {
        node_settle(n);
        maybe_closed(st);
        return;
    }
    if (res < 0) {
        char m[128];
        snprintf(m, sizeof m, "cannot connect: %s", strerror(-res));
        node_fail_err(n, m, io_err(res));
        maybe_closed(st);
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
        node_send_cmd(n, w);
        w = next;
    }
    maybe_closed(st);
}

/* Send c to n, connecting first if needed; failures go to c's callback. */
static void node_send_cmd(rnode *n, rcmd *c)
{
    rstore *st = n->st;
    c->next = NULL;
    if (st->closing) {
        cmd_fail(c, KV_ECANCELED, "store closed");
        return;
    }
    if (n->state == N_DOWN) {
        uint64_t now = now_ms();
        if (now < n->retry_at) {
            char *m = kv__asprintf(
                "redis node %s is unreachable (%s); retrying in %llu ms",
                n->name, n->lasterr ? n->lasterr : "down",
                (unsigned long long)(n->retry_at - now));
            cmd_fail(c, KV_EBACKEND, m);
            kv__free(m);
            return;
        }
        node_connect(n);
        if (n->state != N_CONNECTING) {
            char *m = kv__asprintf("redis node %s: %s", n->name,
                                   n->lasterr ? n->lasterr : "down");
            cmd_fail(c, KV_EBACKEND, m);
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
        cmd_fail(c, n->nomem ? KV_ENOMEM : KV_EBACKEND, m);
        kv__free(m);
        return;
    }
    if (node_write(n, c) != KV_OK) {
        cmd_fail(c, KV_ENOMEM, NULL);
        return;
    }
    start_send(n);
    start_recv(n);
}

static void cmd_route(rstore *st, rcmd *c)
{
    rnode *n = c->node;
    if (c->slot >= 0 && (n == NULL || !c->asking))
        n = st->slots[c->slot];
    if (n == NULL) {
        char m[96];
        snprintf(m, sizeof m, "no redis node serves hash slot %d", c->slot);
        refresh_map(st);
        cmd_fail(c, KV_EBACKEND, m);
        return;
    }
    node_send_cmd(n, c);
}

/* ------------------------------------------------------------------------ */
/* The retry queue                                                          */
/* ------------------------------------------------------------------------ */

static void retry_arm(rstore *st);

/* Resend every due command (all of them, failed, when the store closes). */
static void retry_run(rstore *st)
{
    uint64_t now = now_ms();
    rcmd *due = NULL, **dt = &due, **pp = &st->retryq;
    while (*pp != NULL) {
        rcmd *c = *pp;
        if (st->closing || c->due <= now) {
            *pp = c->next;
            c->next = NULL;
            *dt = c;
            dt = &c->next;
        } else {
            pp = &c->next;
        }
    }
    while (due != NULL) {
        rcmd *c = due;
        due = c->next;
        c->next = NULL;
        if (st->closing)
            cmd_fail(c, KV_ECANCELED, "store closed");
        else
            cmd_route(st, c);
    }
    retry_arm(st);
}

/* Fail the connections that missed their deadline (node_fail shuts the
 * socket down, which ends the SQEs in flight), then watch on. */
static void watchdog_check(rstore *st)
{
    if (st->closing)
        return;
    uint64_t now = now_ms();
    for (rnode *n = st->nodes; n != NULL; n = n->next) {
        if (now - n->since < st->timeout_ms)
            continue;
        char m[96];
        if (n->state == N_CONNECTING) {
            snprintf(m, sizeof m, "cannot connect: no answer within %u ms",
                     st->timeout_ms);
            node_fail(n, m);
        } else if (n->state == N_UP && n->fifo != NULL) {
            snprintf(m, sizeof m, "no reply within %u ms", st->timeout_ms);
            node_fail(n, m);
        }
    }
    watchdog_arm(st);
}

static void timer_cb(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rtimer *t = KV__CONTAINER_OF(op, rtimer, op);
    rstore *st = t->st;
    rtimer **pp = &st->timers;
    while (*pp != t)
        pp = &(*pp)->next;
    *pp = t->next;
    bool wd = t->watchdog;
    kv__free(t);
    if (wd) {
        st->wd = NULL;
        watchdog_check(st);
    } else {
        retry_run(st);
    }
    maybe_closed(st);
}

/* Make sure a timer fires by the earliest due time of the queue. */
static void retry_arm(rstore *st)
{
    if (st->retryq == NULL || st->closing)
        return;
    uint64_t first = UINT64_MAX;
    for (rcmd *c = st->retryq; c != NULL; c = c->next)
        if (c->due < first)
            first = c->due;
    for (rtimer *t = st->timers; t != NULL; t = t->next)
        if (t->due <= first)
            return; /* it fires first and arms the next */
    rtimer *t = kv__calloc(1, sizeof *t);
    struct io_uring_sqe *sqe = NULL;
    int rc = t == NULL ? KV_ENOMEM : kv__loop_sqes(st->loop, &sqe, 1);
    if (rc != KV_OK) {
        /* no timer: fail what waits rather than leave it hanging */
        kv__free(t);
        rcmd *q = st->retryq;
        st->retryq = NULL;
        fail_list(q, io_err(rc),
                  "redis: cannot arm a timer to resend a command");
        return;
    }
    uint64_t now = now_ms(), wait = first > now ? first - now : 1;
    t->op.cb = timer_cb;
    t->st = st;
    t->due = first;
    t->ts.tv_sec = (long long)(wait / 1000);
    t->ts.tv_nsec = (long long)(wait % 1000) * 1000000;
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&t->op);
    t->next = st->timers;
    st->timers = t;
}

static bool watchdog_busy(const rstore *st)
{
    for (const rnode *n = st->nodes; n != NULL; n = n->next)
        if (n->state == N_CONNECTING || (n->state == N_UP && n->fifo != NULL))
            return true;
    return false;
}

/* Keep a watchdog tick armed while a node connects or owes replies. */
static void watchdog_arm(rstore *st)
{
    if (st->wd != NULL || st->closing || st->timeout_ms == 0 ||
        !watchdog_busy(st))
        return;
    rtimer *t = kv__calloc(1, sizeof *t);
    struct io_uring_sqe *sqe = NULL;
    if (t == NULL || kv__loop_sqes(st->loop, &sqe, 1) != KV_OK) {
        kv__free(t); /* unwatched until the next command tries again */
        return;
    }
    /* a tick of a quarter of the deadline (at most 1 s): a connection is
     * failed between 1 and 1.25 deadlines after its last sign of life */
    unsigned tick = st->timeout_ms / 4 > 1000 ? 1000 : st->timeout_ms / 4;
    if (tick == 0)
        tick = 1;
    t->op.cb = timer_cb;
    t->st = st;
    t->watchdog = true;
    t->due = UINT64_MAX; /* never a retry wake-up */
    t->ts.tv_sec = (long long)(tick / 1000);
    t->ts.tv_nsec = (long long)(tick % 1000) * 1000000;
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&t->op);
    t->next = st->timers;
    st->timers = t;
    st->wd = t;
}

/* Nothing to watch any more: take the watchdog timer off the ring, so
 * that an idle store keeps nothing pending on the loop (its CQE comes back
 * -ECANCELED through timer_cb, which arms it again if work came back). */
static void watchdog_idle(rstore *st)
{
    if (st->wd == NULL || st->wd->removing || watchdog_busy(st))
        return;
    struct io_uring_sqe *sqe;
    if (kv__loop_sqes(st->loop, &sqe, 1) != KV_OK)
        return; /* it fires within a tick anyway */
    io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&st->wd->op, 0);
    io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    st->wd->removing = true;
}

/* The server did not run c (why: its error): resend it later through the
 * slot map, or fail it once the retries are spent. */
static void retry_later(rstore *st, rcmd *c, const char *why)
{
    if (c->tries >= RETRY_MAX || st->closing) {
        unsigned total = 0;
        for (size_t i = 0; i < RETRY_MAX; i++)
            total += retry_ms[i];
        char *m = kv__asprintf(
            "redis: %s (hash slot %d, still after %u resends over %.1f s); "
            "not applied",
            why, c->slot, c->tries, (double)total / 1000.0);
        cmd_fail(c, st->closing ? KV_ECANCELED : KV_EBACKEND,
                 st->closing ? "store closed" : m);
        kv__free(m);
        return;
    }
    c->due = now_ms() + retry_ms[c->tries++];
    c->node = NULL; /* route afresh: the slot may have moved meanwhile */
    c->asking = false;
    c->redirects = 0;
    c->next = st->retryq;
    st->retryq = c;
    retry_arm(st);
}

/* ------------------------------------------------------------------------ */
/* The slot map                                                             */
/* ------------------------------------------------------------------------ */

/* Apply a CLUSTER SLOTS reply.  seed_ip replaces an empty address. */
static int apply_slots(rstore *st, const redisReply *r, const char *seed_ip)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return KV_EBACKEND;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 ||
            e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            return KV_EBACKEND;
        long long a = e->element[0]->integer, b = e->element[1]->integer;
        const char *ip = e->element[2]->element[0]->str;
        if (ip[0] == '\0')
            ip = seed_ip;
        long long port = e->element[2]->element[1]->integer;
        if (port <= 0 || port > 65535 || !addr_ok(ip, (int)port))
            return KV_EBACKEND;
        rnode *n = node_get(st, ip, (int)port);
        if (n == NULL)
            return KV_ENOMEM;
        for (long long s = a; s <= b && s < NSLOTS; s++)
            if (s >= 0)
                st->slots[s] = n;
    }
    return KV_OK;
}

static void refresh_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    (void)msg;
    rstore *st = c->node->st;
    st->refreshing = false;
    if (err == KV_OK && r->type == REDIS_REPLY_ARRAY)
        (void)apply_slots(st, r, "127.0.0.1");
    if (st->refresh_again && !st->closing) {
        st->refresh_again = false;
        refresh_map(st);
    }
}

static void refresh_map(rstore *st)
{
    if (!st->cluster || st->closing)
        return;
    if (st->refreshing) {
        st->refresh_again = true;
        return;
    }
    rnode *pick = NULL;
    uint64_t now = now_ms();
    for (rnode *n = st->nodes; n != NULL; n = n->next) {
        if (n->state == N_UP) {
            pick = n;
            break;
        }
        if (pick == NULL && n->state == N_DOWN && now >= n->retry_at)
            pick = n;
    }
    if (pick == NULL)
        return;
    rcmd *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->slot = -1;
    c->script = -1;
    c->node = pick;
    c->nargs = 2;
    c->cb = refresh_cb;
    if (args(&c->tail, "CLUSTER") != KV_OK || args(&c->tail, "SLOTS") != KV_OK) {
        cmd_free(c);
        return;
    }
    st->refreshing = true;
    node_send_cmd(pick, c);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static rcmd *cmd_new(rreq *rq, int slot, int script, size_t idx, rcmd_cb cb)
{
    rcmd *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->slot = slot;
    c->script = script;
    c->rq = rq;
    c->idx = idx;
    c->cb = cb;
    return c;
}

/* Route c for rq (rq->pending counts it). */
static void rq_send(rstore *st, rreq *rq, rcmd *c)
{
    rq->pending++;
    cmd_route(st, c);
}

/* The common tail of a command callback. */
static rstore *cb_store(rcmd *c)
{
    return c->rq->req->store->backend;
}

static bool cb_check(rcmd *c, redisReply *r, int err, const char *msg)
{
    if (err != KV_OK) {
        rreq_fail(c->rq, err, msg);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char *m = kv__asprintf("redis: %s", r->str ? r->str : "error");
        rreq_fail(c->rq, KV_EBACKEND, m);
        kv__free(m);
        return false;
    }
    return true;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

/* --- reads ---------------------------------------------------------------- */

/* HMGET v t (or HGET t) of item idx. */
static void read_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = cb_store(c);
    if (cb_check(c, r, err, msg)) {
        kv__item *it = &rq->req->items[c->idx];
        const redisReply *tr = r, *vr = NULL;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            vr = r->element[0];
            tr = r->element[1];
        }
        if (tr->type == REDIS_REPLY_NIL) {
            it->status = KV_ENOTFOUND;
        } else if (tr->type != REDIS_REPLY_STRING ||
                   !parse_u64(tr->str, tr->len, &it->token) ||
                   it->token == 0 ||
                   (vr != NULL && vr->type != REDIS_REPLY_STRING)) {
            it->status = KV_ECORRUPT;
            rreq_fail(rq, KV_ECORRUPT, "redis: a record hash without a "
                                       "valid token or value");
        } else {
            it->status = KV_OK;
            if (vr != NULL) {
                kv__free(it->val);
                it->val = kv__memdup(vr->str, vr->len);
                it->len = vr->len;
                if (it->val == NULL)
                    rreq_fail(rq, KV_ENOMEM, NULL);
            }
        }
    }
    rreq_put(st, rq, false);
}

static int send_read(rstore *st, rreq *rq, size_t i, const kv_key *key,
                     bool value, kv_buf *enc)
{
    enc->len = 0;
    int rc = kv__key_encode(key, enc);
    if (rc != KV_OK)
        return rc;
    unsigned slot = key_slot(st, key, enc);
    rcmd *c = cmd_new(rq, (int)slot, -1, i, read_cb);
    if (c == NULL)
        return KV_ENOMEM;
    if (value) {
        c->nargs = 4;
        rc = args(&c->tail, "HMGET");
        if (rc == KV_OK)
            rc = arg_key(st, &c->tail, slot, enc->data, enc->len);
        if (rc == KV_OK)
            rc = args(&c->tail, "v");
    } else {
        c->nargs = 3;
        rc = args(&c->tail, "HGET");
        if (rc == KV_OK)
            rc = arg_key(st, &c->tail, slot, enc->data, enc->len);
    }
    if (rc == KV_OK)
        rc = args(&c->tail, "t");
    if (rc != KV_OK) {
        cmd_free(c);
        return rc;
    }
    rq_send(st, rq, c);
    return KV_OK;
}

/* --- the slot directory (shard=key) --------------------------------------- */

static bool dir_has(const rstore *st, unsigned slot)
{
    return (st->dirbits[slot >> 3] & (0x80u >> (slot & 7))) != 0;
}

static void dir_set(rstore *st, unsigned slot)
{
    st->dirbits[slot >> 3] |= (unsigned char)(0x80u >> (slot & 7));
}

/* SETBIT acknowledged: the write may go. */
static void dirset_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rcmd *w = c->then;
    c->then = NULL;
    rstore *st = cb_store(c);
    if (err == KV_OK && r->type == REDIS_REPLY_INTEGER) {
        dir_set(st, (unsigned)w->slot);
        cmd_route(st, w);
        return;
    }
    char *m = kv__asprintf(
        "redis: cannot record hash slot %d in the store's slot directory "
        "(%s); not applied",
        w->slot,
        err != KV_OK ? (msg ? msg : kv_strerror(err))
                     : (r->type == REDIS_REPLY_ERROR && r->str ? r->str
                                                               : "bad reply"));
    cmd_fail(w, err != KV_OK ? err : KV_EBACKEND, m);
    kv__free(m);
}

/* Send w (rq->pending already counts it) once its slot is in the
 * directory: SETBIT first, unless this client saw the bit set already. */
static void dir_then_send(rstore *st, rcmd *w)
{
    if (!st->keymode || dir_has(st, (unsigned)w->slot)) {
        cmd_route(st, w);
        return;
    }
    rcmd *c = cmd_new(w->rq, (int)st->store_slot, -1, 0, dirset_cb);
    int rc = c == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK) {
        c->nargs = 4;
        rc = args(&c->tail, "SETBIT");
        if (rc == KV_OK)
            rc = arg_key(st, &c->tail, st->store_slot, "\0s", 2);
        if (rc == KV_OK)
            rc = argu(&c->tail, (uint64_t)w->slot);
        if (rc == KV_OK)
            rc = args(&c->tail, "1");
    }
    if (rc != KV_OK) {
        if (c != NULL)
            cmd_free(c);
        cmd_fail(w, rc, NULL);
        return;
    }
    c->then = w;
    cmd_route(st, c);
}

static int send_range(rstore *st, rreq *rq, unsigned slot, const kv_buf *enc);
static int send_prefix_script(rstore *st, rreq *rq, unsigned slot,
                              int script, kv_buf *encs, size_t nencs);

/* The directory's bitmap: fan the query or drop out to its slots (to
 * every slot when there is no directory). */
static void dirget_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = cb_store(c);
    if (cb_check(c, r, err, msg)) {
        if (r->type != REDIS_REPLY_NIL && r->type != REDIS_REPLY_STRING) {
            rreq_fail(rq, KV_EBACKEND, "redis: unexpected reply to GET of "
                                       "the slot directory");
        } else {
            bool all = r->type == REDIS_REPLY_NIL;
            bool query = rq->req->op == KV__OP_QUERY_OPEN;
            for (unsigned s = 0; s < NSLOTS && rq->err == KV_OK; s++) {
                if (!all && ((s >> 3) >= r->len ||
                             !((unsigned char)r->str[s >> 3] &
                               (0x80u >> (s & 7)))))
                    continue;
                if (!all)
                    dir_set(st, s);
                int rc = query ? send_range(st, rq, s, &rq->encs[0])
                               : send_prefix_script(st, rq, s, SC_DROP,
                                                    rq->encs, rq->nencs);
                if (rc != KV_OK)
                    rreq_fail(rq, rc, NULL);
            }
        }
    }
    rreq_put(st, rq, false);
}

/* Read the directory for rq (a query or drop; prefixes in rq->encs). */
static int dir_read(rstore *st, rreq *rq)
{
    rcmd *c = cmd_new(rq, (int)st->store_slot, -1, 0, dirget_cb);
    if (c == NULL)
        return KV_ENOMEM;
    c->nargs = 2;
    int rc = args(&c->tail, "GET");
    if (rc == KV_OK)
        rc = arg_key(st, &c->tail, st->store_slot, "\0s", 2);
    if (rc != KV_OK) {
        cmd_free(c);
        return rc;
    }
    rq_send(st, rq, c);
    return KV_OK;
}

/* --- writes ------------------------------------------------------------- */

/* A put/delete script reply for items [idx, idx + count). */
typedef struct wctx {
    size_t count;
    bool atomic;
} wctx;

static void write_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = cb_store(c);
    kv__req *req = rq->req;
    bool atomic = req->op == KV__OP_PUT_ATOMIC ||
                  req->op == KV__OP_DELETE_ATOMIC;
    bool put = req->op == KV__OP_PUT || req->op == KV__OP_PUT_ATOMIC;
    if (cb_check(c, r, err, msg)) {
        size_t count = atomic ? req->n : 1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != count) {
            rreq_fail(rq, KV_EBACKEND, "redis: unexpected script reply");
        } else {
            bool bad = false;
            for (size_t k = 0; k < count; k++)
                if (r->element[k]->type != REDIS_REPLY_INTEGER ||
                    r->element[k]->integer == 0)
                    bad = true;
            for (size_t k = 0; k < count; k++) {
                kv__item *it = &req->items[c->idx + k];
                const redisReply *e = r->element[k];
                if (e->type != REDIS_REPLY_INTEGER || e->integer < 0) {
                    rreq_fail(rq, KV_EBACKEND, "redis: bad script result");
                } else if (e->integer == 0) {
                    it->status = KV_ECONFLICT;
                } else {
                    it->status = KV_OK;
                    if (put && !(atomic && bad))
                        it->token = (uint64_t)e->integer;
                }
            }
        }
    }
    rreq_put(st, rq, false);
}

/* One script call writing items [i, i + count) (all in slot). */
static int send_write(rstore *st, rreq *rq, size_t i, size_t count,
                      unsigned slot, kv_buf *encs)
{
    kv__req *req = rq->req;
    bool put = req->op == KV__OP_PUT || req->op == KV__OP_PUT_ATOMIC;
    bool atomic = req->op == KV__OP_PUT_ATOMIC ||
                  req->op == KV__OP_DELETE_ATOMIC;
    rcmd *c = cmd_new(rq, (int)slot, put ? SC_PUT : SC_DEL, i, write_cb);
    if (c == NULL)
        return KV_ENOMEM;
    kv_buf *b = &c->tail;
    c->nargs = (int)(1 + 2 + count + 1 + count * (put ? 3 : 2));
    int rc = argu(b, 2 + count);
    if (rc == KV_OK)
        rc = arg_key(st, b, slot, "\0c", 2);
    if (rc == KV_OK)
        rc = arg_key(st, b, slot, "\0i", 2);
    for (size_t k = 0; k < count && rc == KV_OK; k++)
        rc = arg_key(st, b, slot, encs[k].data, encs[k].len);
    if (rc == KV_OK)
        rc = args(b, atomic ? "1" : "0");
    for (size_t k = 0; k < count && rc == KV_OK; k++) {
        kv__item *it = &req->items[i + k];
        rc = argu(b, it->token);
        if (rc == KV_OK && put)
            rc = arg(b, it->val, it->len);
        if (rc == KV_OK)
            rc = arg(b, encs[k].data, encs[k].len);
    }
    if (rc != KV_OK) {
        cmd_free(c);
        return rc;
    }
    if (!put) { /* a record to delete was put first: its slot is known */
        rq_send(st, rq, c);
        return KV_OK;
    }
    rq->pending++;
    dir_then_send(st, c);
    return KV_OK;
}

/* --- move and drop -------------------------------------------------------- */

static void one_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = cb_store(c);
    if (cb_check(c, r, err, msg)) {
        if (r->type != REDIS_REPLY_INTEGER)
            rreq_fail(rq, KV_EBACKEND, "redis: unexpected script reply");
        else if (rq->req->op == KV__OP_MOVE && r->integer == 0)
            rreq_fail(rq, KV_ECONFLICT,
                      "a destination of the move already exists");
    }
    rreq_put(st, rq, false);
}

/* A script over the counter/index of slot: base and encoded prefixes. */
static int send_prefix_script(rstore *st, rreq *rq, unsigned slot,
                              int script, kv_buf *encs, size_t nencs)
{
    rcmd *c = cmd_new(rq, (int)slot, script, 0, one_cb);
    if (c == NULL)
        return KV_ENOMEM;
    kv_buf *b = &c->tail;
    int nkeys = script == SC_MOVE ? 2 : 1;
    c->nargs = (int)(1 + nkeys + 1 + nencs);
    int rc = argu(b, (uint64_t)nkeys);
    if (rc == KV_OK && script == SC_MOVE)
        rc = arg_key(st, b, slot, "\0c", 2);
    if (rc == KV_OK)
        rc = arg_key(st, b, slot, "\0i", 2);
    if (rc == KV_OK)
        rc = arg_key(st, b, slot, "", 0); /* base */
    for (size_t k = 0; k < nencs && rc == KV_OK; k++)
        rc = arg(b, encs[k].data, encs[k].len);
    if (rc != KV_OK) {
        cmd_free(c);
        return rc;
    }
    rq_send(st, rq, c);
    return KV_OK;
}

/* --- queries -------------------------------------------------------------- */

static int member_cmp(const void *a, const void *b)
{
    const rmember *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static void range_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    rreq *rq = c->rq;
    rstore *st = cb_store(c);
    if (cb_check(c, r, err, msg)) {
        if (r->type != REDIS_REPLY_ARRAY) {
            rreq_fail(rq, KV_EBACKEND, "redis: unexpected ZRANGEBYLEX reply");
        } else if (rq->err == KV_OK) {
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *e = r->element[i];
                if (e->type != REDIS_REPLY_STRING)
                    continue;
                if (rq->nm == rq->capm) {
                    size_t cap = rq->capm ? rq->capm * 2 : 64;
                    rmember *m = kv__realloc(rq->m, cap * sizeof *m);
                    if (m == NULL) {
                        rreq_fail(rq, KV_ENOMEM, NULL);
                        break;
                    }
                    rq->m = m;
                    rq->capm = cap;
                }
                char *p = kv__memdup(e->str, e->len);
                if (p == NULL) {
                    rreq_fail(rq, KV_ENOMEM, NULL);
                    break;
                }
                rq->m[rq->nm].p = p;
                rq->m[rq->nm].len = e->len;
                rq->nm++;
            }
        }
    }
    rreq_put(st, rq, false);
}

static int send_range(rstore *st, rreq *rq, unsigned slot, const kv_buf *enc)
{
    /* Each slot is asked for at most offset + limit members, from the end
     * the query's order starts at: the merge needs no more from any.  No
     * LIMIT (0 here) when the sum is past INT64_MAX: Redis reads the count
     * as a signed 64-bit integer and refuses a larger one ("value is not
     * an integer or out of range"), and no slot holds that many anyway. */
    const kv_query *q = &rq->req->iter->q;
    bool desc = q->sort == KV_SORT_DESC;
    uint64_t want = 0;
    if (q->limit >= 0) {
        uint64_t off = q->offset > 0 ? (uint64_t)q->offset : 0;
        uint64_t lim = (uint64_t)q->limit;
        want = lim > (uint64_t)INT64_MAX - off ? 0 : off + lim;
    }
    rcmd *c = cmd_new(rq, (int)slot, -1, 0, range_cb);
    if (c == NULL)
        return KV_ENOMEM;
    kv_buf *b = &c->tail;
    c->nargs = want > 0 ? 7 : 4;
    int rc = args(b, desc ? "ZREVRANGEBYLEX" : "ZRANGEBYLEX");
    if (rc == KV_OK)
        rc = arg_key(st, b, slot, "\0i", 2);
    for (int end = 0; end < 2 && rc == KV_OK; end++) {
        bool low = (end == 0) != desc; /* ZREVRANGEBYLEX: max first */
        if (enc->len == 0) {
            rc = args(b, low ? "-" : "+");
        } else if (low) { /* [prefix */
            rc = buf_fmt(b, "$%zu\r\n[", enc->len + 1);
            if (rc == KV_OK)
                rc = kv_buf_append(b, enc->data, enc->len);
            if (rc == KV_OK)
                rc = kv_buf_append(b, "\r\n", 2);
        } else { /* (prefix without its final 0x00, then 0x01 */
            rc = buf_fmt(b, "$%zu\r\n(", enc->len + 1);
            if (rc == KV_OK)
                rc = kv_buf_append(b, enc->data, enc->len - 1);
            if (rc == KV_OK)
                rc = kv_buf_append(b, "\1\r\n", 3);
        }
    }
    if (rc == KV_OK && want > 0) {
        rc = args(b, "LIMIT");
        if (rc == KV_OK)
            rc = args(b, "0");
        if (rc == KV_OK)
            rc = argu(b, want);
    }
    if (rc != KV_OK) {
        cmd_free(c);
        return rc;
    }
    rq_send(st, rq, c);
    return KV_OK;
}

/* QUERY_OPEN gathered every member: sort, cut, make the cursor. */
static int open_finish(rreq *rq)
{
    kv__req *req = rq->req;
    const kv_query *q = &req->iter->q;
    if (rq->nm > 1)
        qsort(rq->m, rq->nm, sizeof *rq->m, member_cmp);
    if (q->sort == KV_SORT_DESC)
        for (size_t i = 0, j = rq->nm; i + 1 < j; i++, j--) {
            rmember t = rq->m[i];
            rq->m[i] = rq->m[j - 1];
            rq->m[j - 1] = t;
        }
    size_t off = q->offset > 0 ? (size_t)q->offset : 0;
    if (off > rq->nm)
        off = rq->nm;
    size_t end = rq->nm;
    if (q->limit >= 0 && (uint64_t)q->limit < end - off)
        end = off + (size_t)q->limit;
    rcursor *cur = kv__calloc(1, sizeof *cur);
    if (cur == NULL)
        return KV_ENOMEM;
    size_t n = end - off;
    cur->m = kv__malloc((n ? n : 1) * sizeof *cur->m);
    if (cur->m == NULL) {
        kv__free(cur);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < rq->nm; i++) {
        if (i >= off && i < end) {
            cur->m[i - off] = rq->m[i];
        } else {
            kv__free(rq->m[i].p);
        }
    }
    kv__free(rq->m);
    rq->m = NULL;
    rq->nm = rq->capm = 0;
    cur->n = n;
    rstore *st = req->store->backend;
    cur->st = st;
    cur->next = st->cursors;
    if (st->cursors != NULL)
        st->cursors->prev = cur;
    st->cursors = cur;
    req->iter->bpriv = cur;
    return KV_OK;
}

static void cursor_free(rcursor *cur)
{
    if (cur == NULL)
        return;
    if (cur->prev != NULL)
        cur->prev->next = cur->next;
    else
        cur->st->cursors = cur->next;
    if (cur->next != NULL)
        cur->next->prev = cur->prev;
    for (size_t i = cur->pos; i < cur->n; i++)
        kv__free(cur->m[i].p);
    kv__free(cur->m);
    kv__free(cur);
}

static void fetch_start(rstore *st, rreq *rq);

/* A fetch chunk came back: drop records deleted since the query opened. */
static bool fetch_finish(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    rcursor *cur = req->iter->bpriv;
    size_t k = 0;
    for (size_t i = 0; i < req->n; i++) {
        kv__item *it = &req->items[i];
        if (it->status == KV_OK) {
            if (k != i) {
                req->items[k] = *it;
                memset(it, 0, sizeof *it);
            }
            k++;
        } else {
            kv_key_free(it->key);
            kv__free(it->val);
            memset(it, 0, sizeof *it);
        }
    }
    req->n = k;
    req->eof = cur->pos >= cur->n;
    if (k == 0 && !req->eof) {
        kv__items_free(req->items, FETCH_CHUNK);
        req->items = NULL;
        fetch_start(st, rq); /* all gone: the next chunk */
        return false;
    }
    return true;
}

static void fetch_start(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    rcursor *cur = req->iter->bpriv;
    size_t n = cur->n - cur->pos;
    if (n > FETCH_CHUNK)
        n = FETCH_CHUNK;
    req->n = 0;
    req->items = kv__items_new(FETCH_CHUNK);
    rq->pending++;
    if (req->items == NULL) {
        rreq_fail(rq, KV_ENOMEM, NULL);
        rreq_put(st, rq, true);
        return;
    }
    kv_buf enc = {NULL, 0, 0};
    for (size_t i = 0; i < n; i++) {
        rmember *m = &cur->m[cur->pos];
        kv__item *it = &req->items[i];
        int rc = kv__key_decode(&it->key, m->p, m->len);
        if (rc != KV_OK) {
            rreq_fail(rq, rc, "redis: an index entry is not a valid key");
            break;
        }
        req->n = i + 1;
        it->status = KV_ENOTFOUND;
        cur->pos++;
        kv__free(m->p);
        m->p = NULL;
        if ((rc = send_read(st, rq, i, it->key, req->want_value, &enc)) !=
            KV_OK) {
            rreq_fail(rq, rc, NULL);
            break;
        }
    }
    kv__free(enc.data);
    rreq_put(st, rq, true);
}

/* ------------------------------------------------------------------------ */
/* Submit                                                                   */
/* ------------------------------------------------------------------------ */

static void req_complete(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    if (rq->err == KV_OK && req->op == KV__OP_QUERY_OPEN) {
        int rc = open_finish(rq);
        if (rc != KV_OK)
            rreq_fail(rq, rc, NULL);
    }
    if (rq->err == KV_OK && req->op == KV__OP_ITER_FETCH) {
        if (!fetch_finish(st, rq))
            return;
    }
    if (rq->err != KV_OK && req->op == KV__OP_ITER_FETCH) {
        kv__items_free(req->items, req->items ? FETCH_CHUNK : 0);
        req->items = NULL;
        req->n = 0;
    }
    int err = rq->err;
    char *msg = rq->msg;
    rq->msg = NULL;
    req->bpriv = NULL;
    rreq_free(rq);
    if (err != KV_OK)
        kv__req_done(req, err, msg ? "%s" : NULL, msg);
    else
        kv__req_done(req, KV_OK, NULL);
    kv__free(msg);
    maybe_closed(st);
}

static int submit_writes(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    bool atomic = req->op == KV__OP_PUT_ATOMIC ||
                  req->op == KV__OP_DELETE_ATOMIC;
    kv_buf *encs = kv__calloc(req->n, sizeof *encs);
    if (encs == NULL)
        return KV_ENOMEM;
    int rc = KV_OK;
    unsigned slot0 = 0;
    for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
        rc = kv__key_encode(req->items[i].key, &encs[i]);
        if (rc != KV_OK)
            break;
        unsigned slot = key_slot(st, req->items[i].key, &encs[i]);
        if (!atomic) {
            rc = send_write(st, rq, i, 1, slot, &encs[i]);
        } else if (i == 0) {
            slot0 = slot;
        } else if (slot != slot0) {
            char *m = kv__asprintf(
                "redis: an atomic batch must keep every key in one hash "
                "slot, but %s is in slot %u and %s in slot %u (give the "
                "keys a common {tag})",
                kv_key_id(req->items[0].key), slot0,
                kv_key_id(req->items[i].key), slot);
            rreq_fail(rq, KV_ENOTSUP, m);
            kv__free(m);
            rc = KV_ENOTSUP;
        }
    }
    if (rc == KV_OK && atomic)
        rc = send_write(st, rq, 0, req->n, slot0, encs);
    for (size_t i = 0; i < req->n; i++)
        kv__free(encs[i].data);
    kv__free(encs);
    return rc;
}

static int submit_prefix(rstore *st, rreq *rq)
{
    kv__req *req = rq->req;
    bool move = req->op == KV__OP_MOVE;
    if (move && st->keymode) {
        rreq_fail(rq, KV_ENOTSUP,
                  "redis: kv_move_prefix_atomic needs every record in one "
                  "hash slot: open the store with ?shard=store");
        return KV_ENOTSUP;
    }
    size_t nencs = move ? req->n * 2 : req->n;
    kv_buf *encs = kv__calloc(nencs, sizeof *encs);
    if (encs == NULL)
        return KV_ENOMEM;
    int rc = KV_OK;
    for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
        if (move) {
            rc = kv__key_encode(req->items[i].key, &encs[2 * i]);
            if (rc == KV_OK)
                rc = kv__key_encode(req->items[i].key2, &encs[2 * i + 1]);
        } else {
            rc = kv__key_encode(req->items[i].key, &encs[i]);
        }
    }
    if (rc == KV_OK && st->keymode) {
        rq->encs = encs; /* for the fan-out once the directory is read */
        rq->nencs = nencs;
        return dir_read(st, rq);
    }
    if (rc == KV_OK)
        rc = send_prefix_script(st, rq, st->store_slot,
                                move ? SC_MOVE : SC_DROP, encs, nencs);
    for (size_t i = 0; i < nencs; i++)
        kv__free(encs[i].data);
    kv__free(encs);
    return rc;
}

static int submit_query(rstore *st, rreq *rq)
{
    kv_buf enc = {NULL, 0, 0};
    int rc = KV_OK;
    const kv_key *k = rq->req->iter->q.key;
    if (k != NULL && kv_key_len(k) > 0)
        rc = kv__key_encode(k, &enc);
    if (rc == KV_OK && rq->req->iter->q.limit == 0) {
        kv__free(enc.data);
        return KV_OK;
    }
    if (rc == KV_OK && st->keymode) {
        rq->encs = kv__calloc(1, sizeof *rq->encs);
        if (rq->encs == NULL) {
            kv__free(enc.data);
            return KV_ENOMEM;
        }
        rq->encs[0] = enc;
        rq->nencs = 1;
        return dir_read(st, rq);
    }
    if (rc == KV_OK)
        rc = send_range(st, rq, st->store_slot, &enc);
    kv__free(enc.data);
    return rc;
}

static void r_submit(kv_store *s, kv__req *req)
{
    rstore *st = s->backend;
    rreq *rq = kv__calloc(1, sizeof *rq);
    if (rq == NULL) {
        /* Out of memory: park req (chained through bpriv) and fail it
         * from the deferred NOP, never inside submit. */
        req->bpriv = st->oom;
        st->oom = req;
        defer_kick(st);
        return;
    }
    rq->req = req;
    rq->pending = 1;
    req->bpriv = rq;
    int rc = KV_OK;
    kv_buf enc = {NULL, 0, 0};
    switch (req->op) {
    case KV__OP_HAS:
    case KV__OP_GET:
        for (size_t i = 0; i < req->n && rc == KV_OK; i++) {
            req->items[i].status = KV_ENOTFOUND;
            rc = send_read(st, rq, i, req->items[i].key,
                           req->op == KV__OP_GET && req->want_value, &enc);
        }
        break;
    case KV__OP_PUT:
    case KV__OP_DELETE:
    case KV__OP_PUT_ATOMIC:
    case KV__OP_DELETE_ATOMIC:
        rc = submit_writes(st, rq);
        break;
    case KV__OP_MOVE:
    case KV__OP_DROP:
        rc = submit_prefix(st, rq);
        break;
    case KV__OP_QUERY_OPEN:
        rc = submit_query(st, rq);
        break;
    case KV__OP_ITER_FETCH:
        if (req->iter->bpriv == NULL) {
            req->eof = true;
            req->n = 0;
        } else {
            fetch_start(st, rq);
        }
        break;
    case KV__OP_ITER_DISPOSE:
        cursor_free(req->iter->bpriv);
        req->iter->bpriv = NULL;
        break;
    default:
        rc = KV_EINVAL;
        break;
    }
    kv__free(enc.data);
    if (rc != KV_OK)
        rreq_fail(rq, rc, NULL);
    rreq_put(st, rq, true);
}

static void r_cancel(kv_store *s, kv__req *req)
{
    /* Commands already sent run to completion; the store layer drops the
     * result of a cancelled future. */
    (void)s;
    (void)req;
}

static void maybe_closed(rstore *st)
{
    if (!st->closing || st->closed || st->close_req == NULL)
        return;
    if (st->s->ninflight > 0 || st->defer != NULL || st->oom != NULL ||
        st->dpending || st->timers != NULL)
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
    rreq_put(st, mark, true);
}

static void r_close(kv_store *s, kv__req *req)
{
    rstore *st = s->backend;
    st->closing = true;
    st->close_req = req;
    for (rnode *n = st->nodes; n != NULL; n = n->next)
        if (n->state == N_UP || n->state == N_CONNECTING)
            node_fail(n, "store closed");
    retry_run(st); /* fails the queue */
    for (rtimer *t = st->timers; t != NULL; t = t->next) {
        struct io_uring_sqe *sqe;
        if (kv__loop_sqes(st->loop, &sqe, 1) != KV_OK)
            break; /* they fire soon anyway */
        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&t->op, 0);
        io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    }
    maybe_closed(st);
}

static void r_destroy(kv_store *s)
{
    rstore *st = s->backend;
    while (st->cursors != NULL)
        cursor_free(st->cursors); /* iterators never disposed */
    rnode *n = st->nodes;
    while (n != NULL) {
        rnode *next = n->next;
        if (n->fd >= 0)
            close(n->fd);
        if (n->rd != NULL)
            redisReaderFree(n->rd);
        kv__free(n->rbuf);
        kv__free(n->sbuf.data);
        kv__free(n->qbuf.data);
        kv__free(n->lasterr);
        kv__free(n);
        n = next;
    }
    kv__free(st->prefix);
    kv__free(st);
}

static const struct kv_backend_ops kv__redis_ops = {
    KV__BACKEND_VERSION, "redis", true, r_submit, r_cancel, r_close,
    r_destroy,
};
/* The same over a Redis Cluster (only the name differs). */
static const struct kv_backend_ops kv__redis_cluster_ops = {
    KV__BACKEND_VERSION, "redis-cluster", true, r_submit, r_cancel, r_close,
    r_destroy,
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
            uint64_t end = now_ms() + 5000, now;
            do {
                now = now_ms();
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
            node_set_err(n, "cannot connect: %s", strerror(-fd));
            n->retry_at = 0;
            return io_err(fd);
        }
        n->fd = fd;
    }
    for (int i = 0; i < NSCRIPTS; i++) {
        kv_buf w = {NULL, 0, 0};
        int rc = buf_fmt(&w, "*3\r\n");
        if (rc == KV_OK)
            rc = args(&w, "SCRIPT");
        if (rc == KV_OK)
            rc = args(&w, "LOAD");
        if (rc == KV_OK)
            rc = args(&w, scripts[i]);
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
            kv__set_errmsg("kv_redis_open: SCRIPT LOAD on %s failed: %s",
                           n->name,
                           r == NULL ? why
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
    int rc = buf_fmt(&w, "*2\r\n");
    if (rc == KV_OK)
        rc = args(&w, "GET");
    if (rc == KV_OK)
        rc = arg_key(st, &w, st->store_slot, "\0s", 2);
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
        if (!addr_ok(hp, port)) {
            kv__set_errmsg("kv_redis_open: %s is not a numeric IPv4 "
                           "address",
                           hp);
            return KV_EINVAL;
        }
        if (node_get(st, hp, port) == NULL)
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
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
              ch == '.' || ch == ':')) {
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

int kv_redis_open(kv_store **out, kv_loop *loop, kv_pool *pool,
                  const char *uri, unsigned flags)
{
    if (out == NULL || loop == NULL || uri == NULL) {
        kv__set_errmsg("kv_redis_open: out, loop and uri are required");
        return KV_EINVAL;
    }
    if ((flags & ~(KV_READONLY | KV_NO_FSYNC | KV_SYNC_FULL)) != 0) {
        kv__set_errmsg("kv_redis_open: bad flags 0x%x", flags);
        return KV_EINVAL;
    }
    pthread_once(&slot_tag_once, slot_tag_init);
    rstore *st = kv__calloc(1, sizeof *st);
    if (st == NULL)
        return KV_ENOMEM;
    st->loop = loop;
    st->dop.cb = defer_cb;
    int rc = parse_uri(st, uri);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    st->store_slot = slot_of(st->prefix, st->plen);
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
        rc = buf_fmt(&w, "*2\r\n");
        if (rc == KV_OK)
            rc = args(&w, "CLUSTER");
        if (rc == KV_OK)
            rc = args(&w, "SLOTS");
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
        kv__set_errmsg("kv_redis_open: cannot reach any redis node (%s)",
                       errs);
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
        rc = apply_slots(st, slots, ip);
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
    rc = kv__store_new(out, st->cluster ? &kv__redis_cluster_ops : &kv__redis_ops,
                       st, loop, pool, flags);
    if (rc != KV_OK) {
        rstore_free(st);
        return rc;
    }
    st->s = *out;
    return KV_OK;
}

#endif /* HAVE_HIREDIS */
