/*
 * redis_int.h - what the files of the Redis backend share.  Not installed,
 * not API.  The design (nodes, cluster, layout, scripts, the slot
 * directory) is in docs/DESIGN.md, section "backend/redis".
 *
 *   redis.c    the operation tables, close and destroy, the blocking open
 *   resp.c     RESP formatting: bulk strings, keys, a command's wire form
 *   slots.c    CRC16, slot tags, a record's slot, the slot map
 *   scripts.c  the Lua scripts
 *   node.c     node connections: connect, send, receive, replies, routing
 *   timer.c    the retry queue and the watchdog (the store's timers)
 *   request.c  requests: completion, submit, reads, writes, move, drop,
 *              the slot directory
 *   query.c    queries: index ranges, the sorted cursor, fetches
 *   uri.c      the URI parser (hosts, user and password, options)
 *   resolve.c  host-name look-ups (resolve.h)
 *   tls.c      TLS over memory BIOs (tls.h; tls_none.c without OpenSSL)
 *   redis_none.c  kv_redis_open without hiredis (KV_ENOTSUP)
 *
 * Naming: redis__ for the functions one of these files defines for the
 * others (not static, hidden like kv__ names), plain names for statics.
 */
#ifndef KV_REDIS_INT_H
#define KV_REDIS_INT_H

#include "config.h"

#include "store/backend.h"
#include "util/list.h"
#include "backend/redis/resolve.h"
#include "backend/redis/tls.h"

#include <hiredis/hiredis.h>

#include <netinet/in.h>

#define NSLOTS 16384
#define RBUF_SIZE 65536
#define FETCH_CHUNK 128
#define MAX_REDIRECTS 8
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000

/* Default deadline (URI timeout=MS) for a connect to complete, and for a
 * node with commands awaiting replies to send back any bytes at all. */
#define TIMEOUT_DEFAULT_MS 10000

/* The Lua scripts (scripts.c), by index. */
enum { SC_PUT, SC_DEL, SC_MOVE, SC_DROP, NSCRIPTS };

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
    int slot;    /* target slot, or -1 for node */
    rnode *node; /* fixed target (slot -1) or the ASK target */
    int script;  /* -1: a plain command */
    bool eval;   /* send the script body (after NOSCRIPT) */
    bool asking; /* precede with ASKING */
    int redirects;
    unsigned tries; /* resends after a transient error */
    uint64_t due;   /* in the retry queue: when to resend (ms) */
    int nargs;      /* arguments in tail */
    kv_buf tail;    /* the formatted arguments (after EVALSHA sha) */
    rcmd_cb cb;     /* NULL: reply ignored (ASKING) */
    rreq *rq;
    size_t idx;
    rcmd *then; /* a directory SETBIT: the write it must precede */
    bool secret; /* AUTH: tail wiped when freed */
};

enum { N_DOWN = 0, N_CONNECTING, N_UP, N_FAILING };

struct rnode {
    rnode *next;
    rstore *st;
    char host[HOST_LEN]; /* a DNS name or an address literal */
    int port;
    char name[HOST_LEN + 16]; /* "host:port", "[v6]:port" */
    struct sockaddr_storage addrs[NADDRS]; /* resolved (numeric: one) */
    socklen_t addrlen[NADDRS];
    unsigned naddrs, addri; /* how many, the one to try next */
    bool numeric;           /* host is an address literal */
    bool resolving;         /* a look-up on the pool is under way */
    struct rresolve *rj;    /* that look-up */
    int fd;
    int state;
    unsigned nops;        /* SQEs in flight */
    kv__op rop, sop, cop; /* recv, send, connect */
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
    bool nomem; /* failed for want of memory: no back-off */
    char *lasterr;
    /* rediss://: the session (NULL: plain TCP).  With it, sbuf holds
     * ciphertext (what the session left to send) and qbuf plaintext, and
     * the node stays N_CONNECTING while hs (the handshake) runs. */
    rtls *tls;
    bool hs;
    /* the handshake with addrs[addri] failed: once the SQEs in flight end,
     * connect the next address (node.c, next_addr) */
    bool hop;
    /* lasterr holds the failure of an earlier address of this connect */
    bool hoperr;
    /* TLS: the handshake is done and no reply has come yet (a reset now
     * is the server refusing the client's certificate, or its absence) */
    bool fresh;
};

/* One request's state (req->bpriv). */
struct rreq {
    kv__req *req;
    size_t pending; /* commands (plus one while submit runs) */
    int err;
    char *msg;
    rreq *dnext; /* deferred completion list */
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
    kv__list link; /* in the store's timers */
    rstore *st;
} rtimer;

/* The iterator cursor (iter->bpriv): sorted members and a position. */
typedef struct rcursor {
    rmember *m;
    size_t n, pos;
    kv__list link; /* in the store's cursors (freed at destroy) */
    rstore *st;
} rcursor;

struct rstore {
    kv_store *s;
    kv_loop *loop;
    char *prefix;
    size_t plen;
    bool keymode; /* shard=key */
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
    kv__list cursors; /* live query cursors (rcursor.link) */
    kv__req *oom;     /* requests that could not get state (bpriv chain) */
    rcmd *retryq;     /* commands waiting to be resent */
    /* shard=key: the slots known to be in the store's slot directory */
    unsigned char dirbits[NSLOTS / 8];
    kv__list timers;     /* armed timers, rtimer.link (retry queue, watchdog) */
    rtimer *wd;          /* the watchdog timer, when armed (among them) */
    unsigned timeout_ms; /* I/O deadline, 0: none */
    kv_pool *pool;       /* host-name look-ups on reconnect (may be NULL) */
    char *user, *pass;   /* AUTH (wiped when freed) */
    rtls_ctx *tlsctx;    /* rediss:// (NULL: plain TCP) */
    char *sni;           /* sni=: the name every node's cert is checked for */
    unsigned long stats_redirects;
};

/* ------------------------------------------------------------------------ */
/* uri.c: the URI                                                           */
/* ------------------------------------------------------------------------ */

typedef struct ruri_host {
    char host[HOST_LEN]; /* without brackets */
    int port;
    bool v6; /* was bracketed */
} ruri_host;

typedef struct ruri {
    bool tls;           /* rediss:// */
    char *user, *pass;  /* decoded; NULL when absent */
    ruri_host *hosts;
    size_t nhosts;
    char *prefix;       /* "kv" by default */
    bool keymode;       /* shard=key (default) */
    unsigned timeout_ms;
    bool verify;        /* verify=1 (default) */
    char *password_file, *cacert, *cert, *key, *sni;
} ruri;

/* Parse uri into u: KV_OK, KV_ENOMEM or KV_EINVAL (kv_last_errmsg says
 * why, never quoting the URI's user-info).  u is empty on failure. */
int redis__uri_parse(ruri *u, const char *uri);
/* password_file=: read its first line into u->pass (KV_EINVAL, saying
 * why, when it cannot). */
int redis__uri_read_password(ruri *u);
/* Free u's strings (the user and password wiped first). */
void redis__uri_free(ruri *u);

/* ------------------------------------------------------------------------ */
/* resp.c: RESP formatting                                                  */
/* ------------------------------------------------------------------------ */

/* Append printf output (at most 63 bytes) to b. */
int redis__fmt(kv_buf *b, const char *fmt, ...) KV__PRINTF(2, 3);
/* Append one bulk string: n bytes at p, a C string, a decimal number. */
int redis__arg(kv_buf *b, const void *p, size_t n);
int redis__args(kv_buf *b, const char *s);
int redis__argu(kv_buf *b, uint64_t v);
/* A Redis key: P{tag(slot)} followed by what (len bytes). */
int redis__arg_key(rstore *st, kv_buf *b, unsigned slot, const void *what,
                   size_t len);
/* Append c's wire form to b (ASKING first if asked; EVALSHA, or EVAL after
 * NOSCRIPT, for a script): KV_OK, or an error with b's tail undefined. */
int redis__cmd_format(const rstore *st, const rcmd *c, kv_buf *b);

/* ------------------------------------------------------------------------ */
/* slots.c: hash slots and the slot map                                     */
/* ------------------------------------------------------------------------ */

unsigned redis__slot_of(const void *p, size_t n);
/* Build the slot tag table (once per process; any thread). */
void redis__slot_tags_init(void);
/* The smallest number whose decimal form hashes to slot. */
uint32_t redis__slot_tag(unsigned slot);
/* The slot of a record (its encoded key enc). */
unsigned redis__key_slot(const rstore *st, const kv_key *key,
                         const kv_buf *enc);
/* Apply a CLUSTER SLOTS reply.  seed_ip replaces an empty address. */
int redis__apply_slots(rstore *st, const redisReply *r, const char *seed_ip);
/* Ask a live node for CLUSTER SLOTS again (a cluster; once at a time). */
void redis__refresh_map(rstore *st);
/* "MOVED 3999 127.0.0.1:6381": the node, or NULL. */
rnode *redis__redirect_node(rstore *st, const char *s, int *slot);

/* ------------------------------------------------------------------------ */
/* scripts.c                                                                */
/* ------------------------------------------------------------------------ */

extern const char *const redis__scripts[NSCRIPTS];

/* ------------------------------------------------------------------------ */
/* node.c: connections and commands                                         */
/* ------------------------------------------------------------------------ */

void redis__cmd_free(rcmd *c);
/* Complete c with a failure (its callback hears err and msg), free it. */
void redis__cmd_fail(rcmd *c, int err, const char *msg);
void redis__fail_list(rcmd *c, int err, const char *msg);
/* A host (a DNS name, an IPv4 or IPv6 literal) and a port that
 * redis__node_get accepts. */
bool redis__addr_ok(const char *host, int port);
/* The node of host:port, made if new (an address literal is its address;
 * a name is resolved when the node connects); NULL for a bad host (see
 * redis__addr_ok) or out of memory. */
rnode *redis__node_get(rstore *st, const char *host, int port);
/* Format the AUTH command (user and password of st) onto b. */
int redis__auth_format(const rstore *st, kv_buf *b, int *nargs);
/* Start n's TLS session (st->tlsctx): KV_OK or an error with why set. */
int redis__node_tls_new(rnode *n, char *why, size_t whylen);
/* A connection that broke with why: with TLS, right after the handshake
 * (n->fresh), and why a reset or an end, add the hint that the server may
 * want a client certificate (the open and the ring's reconnects alike). */
void redis__tls_reset_hint(const rnode *n, char *why, size_t whylen);
/* Address i of n as text with its port, for messages: "192.0.2.1:6379",
 * "[2001:db8::1]:6379" (ADDR_TEXT_LEN bytes hold any). */
#define ADDR_TEXT_LEN (INET6_ADDRSTRLEN + 8)
void redis__addr_text(const rnode *n, unsigned i, char *out, size_t len);
/* Append to why (a connect's failure) which address it was, when that is
 * not plain from the node's name (a host name, not an address literal):
 * " (address A; T of N addresses tried)", T the addresses tried so far
 * (the last, A, included), or " (address A)" when the name has one.
 * Nothing while the name is still being looked up. */
void redis__addr_note(const rnode *n, unsigned tried, char *why,
                      size_t whylen);
/* Close n's socket and free its TLS session (if any). */
void redis__node_close(rnode *n);
/* Free a node of a store that is being destroyed. */
void redis__node_free(rnode *n);
void redis__node_set_err(rnode *n, const char *fmt, ...) KV__PRINTF(2, 3);
/* The connection broke (or the store closes): fail what it carried. */
void redis__node_fail(rnode *n, const char *why);
/* The status of the commands an I/O failure fails (rc: a socket
 * operation's negative result or a ring call's failure). */
int redis__io_err(int rc);
/* Send c to n, connecting first if needed; failures go to c's callback. */
void redis__node_send(rnode *n, rcmd *c);
/* Send c to the node of its slot (or its fixed node). */
void redis__cmd_route(rstore *st, rcmd *c);

/* ------------------------------------------------------------------------ */
/* timer.c: the retry queue and the watchdog                                */
/* ------------------------------------------------------------------------ */

/* The server did not run c (why: its error): resend it later through the
 * slot map, or fail it once the retries are spent. */
void redis__retry_later(rstore *st, rcmd *c, const char *why);
/* Resend every due command (all of them, failed, when the store closes). */
void redis__retry_run(rstore *st);
/* Keep a watchdog tick armed while a node connects or owes replies. */
void redis__watchdog_arm(rstore *st);
/* Nothing to watch any more: take the watchdog timer off the ring. */
void redis__watchdog_idle(rstore *st);
/* The store closes: queue a TIMEOUT_REMOVE for every armed timer. */
void redis__timers_remove(rstore *st);

/* ------------------------------------------------------------------------ */
/* request.c: requests                                                      */
/* ------------------------------------------------------------------------ */

void redis__submit(kv_store *s, kv__req *req);
/* The deferred-completion NOP's callback (st->dop). */
void redis__defer_cb(kv__op *op, int res, uint32_t flags);
/* Record a failure on rq (the first one wins). */
void redis__rreq_fail(rreq *rq, int err, const char *msg);
/* Drop one pending count; complete later (never inside submit). */
void redis__rreq_put(rstore *st, rreq *rq, bool defer);
rcmd *redis__cmd_new(rreq *rq, int slot, int script, size_t idx, rcmd_cb cb);
/* Route c for rq (rq->pending counts it). */
void redis__rq_send(rstore *st, rreq *rq, rcmd *c);
/* The common head of a command callback: its store, and whether the reply
 * is one to read (else the failure is recorded on the request). */
rstore *redis__cb_store(rcmd *c);
bool redis__cb_check(rcmd *c, redisReply *r, int err, const char *msg);
/* Read item i (its token, and its value if value). */
int redis__send_read(rstore *st, rreq *rq, size_t i, const kv_key *key,
                     bool value, kv_buf *enc);
/* Read the slot directory for rq (a query or drop; prefixes in rq->encs). */
int redis__dir_read(rstore *st, rreq *rq);

/* ------------------------------------------------------------------------ */
/* query.c: queries                                                         */
/* ------------------------------------------------------------------------ */

int redis__submit_query(rstore *st, rreq *rq);
/* Ask slot for the index members under the query's prefix enc. */
int redis__send_range(rstore *st, rreq *rq, unsigned slot, const kv_buf *enc);
/* QUERY_OPEN gathered every member: sort, cut, make the cursor. */
int redis__query_finish(rreq *rq);
void redis__cursor_free(rcursor *cur);
void redis__fetch_start(rstore *st, rreq *rq);
/* A fetch chunk came back: false if it started the next one instead. */
bool redis__fetch_finish(rstore *st, rreq *rq);

/* ------------------------------------------------------------------------ */
/* redis.c                                                                  */
/* ------------------------------------------------------------------------ */

/* Complete the close once nothing is in flight any more. */
void redis__maybe_closed(rstore *st);

#endif /* KV_REDIS_INT_H */
