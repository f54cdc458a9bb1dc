/*
 * crashutil.h - the kill -9 test shared by check_fs and check_sqlite_fault.
 *
 * A round: a child process (this program run again, "<exe> child <mode>
 * <path> <seed> <fd>") writes to the store as fast as it can, CU_LANES
 * puts and deletes in flight over the keys /crash/<k % 4>/k<k>; it reports
 * each operation's intent through a pipe before it starts, and its
 * acknowledgement (with the new token) once it succeeded.  The parent kills
 * the child with SIGKILL at a random moment, reopens the store and checks
 * every key: it holds what was last acknowledged, or what the operation in
 * flight on it intended; nothing else.  The state carries over to the next
 * round, which starts from what the store holds.
 *
 * The caller fills a cu_crash, runs the child half (cu_child_run) when it is
 * started as "child <mode>", and drives the rounds with cu_run, its round
 * function calling cu_child_round, reopening the store, calling
 * cu_check_keys and checking what else it wants.  The child half never
 * calls ck_assert: it _exits on any error.
 */
#ifndef KV_CRASHUTIL_H
#define KV_CRASHUTIL_H

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>

#include "testutil.h"

#define CU_KEYS_MAX 64
#define CU_LANES 8
#define CU_VALUE_MAX 6000 /* the largest value cu_crash.value may make */

enum { CU_INTENT = 1, CU_ACK, CU_FAIL };
enum { CU_PUT = 1, CU_DEL };

/* What the child writes to the pipe. */
typedef struct cu_msg {
    uint32_t kind; /* CU_INTENT, CU_ACK, CU_FAIL */
    uint32_t key;
    uint32_t op; /* CU_PUT, CU_DEL */
    int32_t status;
    uint64_t token;
    uint64_t seed;
    uint64_t extra; /* CU_ACK: cu_crash.ack_extra's count, else 0 */
} cu_msg;

/* What the parent knows of a key. */
typedef struct cu_state {
    bool present; /* as last acknowledged, with token and seed */
    uint64_t token, seed;
    bool pending; /* an operation pop (value pseed) was in flight */
    uint32_t pop;
    uint64_t pseed;
} cu_state;

typedef struct cu_crash cu_crash;
struct cu_crash {
    /* Set by the caller, the same in the parent and the child. */
    const char *exe;  /* this program */
    const char *mode; /* the child's mode argument */
    const char *path; /* the store's path argument */
    uint32_t nkeys;   /* at most CU_KEYS_MAX, a multiple of CU_LANES */
    bool lane_keys;   /* lane i takes keys i, i + CU_LANES, ... only;
                       * else any key no lane holds */
    bool token_grows; /* a put's token is larger than the one it replaced
                       * (else only different) */
    /* The value of a seed (at most CU_VALUE_MAX bytes). */
    size_t (*value)(uint64_t seed, unsigned char *buf, size_t cap);
    /* Child, may be NULL: a count sent with each acknowledgement. */
    uint64_t (*ack_extra)(kv_store *s);
    /* Parent, may be NULL: called for each acknowledgement. */
    void (*on_ack)(cu_crash *c, const cu_msg *m);
    void *arg; /* the caller's */
    /* Kept by the parent across rounds. */
    cu_state st[CU_KEYS_MAX];
};

static inline uint64_t cu_rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static inline int cu_key(kv_key **key, uint32_t k)
{
    char p[32];
    snprintf(p, sizeof p, "/crash/%u/k%u", k % 4, k);
    *key = NULL;
    return kv_key_parse(key, p);
}

static inline bool cu_value_is(const cu_crash *c, const void *v, size_t n,
                               uint64_t seed)
{
    unsigned char buf[CU_VALUE_MAX];
    size_t m = c->value(seed, buf, sizeof buf);
    return m == n && (n == 0 || memcmp(v, buf, n) == 0);
}

/* ------------------------------------------------------------------------ */
/* The child                                                                */
/* ------------------------------------------------------------------------ */

typedef struct cu_child cu_child;

typedef struct cu_lane {
    cu_child *c;
    int lane;
    uint32_t key, op;
    uint64_t seed;
} cu_lane;

struct cu_child {
    const cu_crash *cfg;
    kv_store *s;
    int wfd;
    uint64_t rng;
    uint64_t tokens[CU_KEYS_MAX];
    bool busy[CU_KEYS_MAX];
    cu_lane lanes[CU_LANES];
};

static inline void cu_send(int fd, const cu_msg *m)
{
    if (tu_write_all(fd, m, sizeof *m) != 0)
        _exit(20);
}

static inline void cu_lane_go(cu_lane *l);

static inline void cu_lane_cb(kv_fut *f, void *arg)
{
    cu_lane *l = arg;
    cu_child *c = l->c;
    int st = kv_fut_status(f);
    uint64_t extra = c->cfg->ack_extra != NULL ? c->cfg->ack_extra(c->s) : 0;
    cu_msg m = {CU_ACK, l->key, l->op, st, 0, l->seed, extra};
    if (st != KV_OK) {
        m.kind = CU_FAIL;
        cu_send(c->wfd, &m);
        _exit(21);
    }
    if (l->op == CU_PUT)
        c->tokens[l->key] = m.token = kv_fut_token(f);
    else
        c->tokens[l->key] = 0;
    kv_fut_free(f);
    c->busy[l->key] = false;
    cu_send(c->wfd, &m);
    cu_lane_go(l);
}

static inline void cu_lane_go(cu_lane *l)
{
    cu_child *c = l->c;
    const cu_crash *cfg = c->cfg;
    uint32_t k;
    if (cfg->lane_keys) {
        /* One operation per key at once: lane i owns keys i + LANES j. */
        k = (uint32_t)(l->lane +
                       CU_LANES * (int)(cu_rnd(&c->rng) %
                                        (cfg->nkeys / CU_LANES)));
    } else {
        do
            k = (uint32_t)(cu_rnd(&c->rng) % cfg->nkeys);
        while (c->busy[k]);
    }
    c->busy[k] = true;
    l->key = k;
    l->op = c->tokens[k] != 0 && cu_rnd(&c->rng) % 4 == 0 ? CU_DEL : CU_PUT;
    l->seed = cu_rnd(&c->rng);
    cu_msg m = {CU_INTENT, k, l->op, 0, 0, l->seed, 0};
    cu_send(c->wfd, &m);
    kv_key *key;
    if (cu_key(&key, k) != KV_OK)
        _exit(22);
    kv_fut *f;
    if (l->op == CU_PUT) {
        unsigned char buf[CU_VALUE_MAX];
        size_t n = cfg->value(l->seed, buf, sizeof buf);
        kv_record r = {key, buf, n, c->tokens[k]};
        f = kv_put(c->s, &r, NULL);
    } else {
        f = kv_delete(c->s, key, c->tokens[k]);
    }
    kv_key_free(key);
    if (kv_fut_then(f, cu_lane_cb, l) != KV_OK)
        _exit(23);
}

/* The child half: write to s (on loop) and report to wfd until killed. */
static inline void cu_child_run(const cu_crash *cfg, kv_loop *loop,
                                kv_store *s, int wfd, uint64_t seed)
{
    static cu_child c;
    memset(&c, 0, sizeof c);
    c.cfg = cfg;
    c.s = s;
    c.wfd = wfd;
    c.rng = seed | 1;
    /* Start from what the store holds. */
    for (uint32_t k = 0; k < cfg->nkeys; k++) {
        kv_key *key;
        if (cu_key(&key, k) != KV_OK)
            _exit(31);
        kv_fut *f = kv_get(s, key, NULL);
        kv_key_free(key);
        int rc = kv_wait(f);
        if (rc != KV_OK && rc != KV_ENOTFOUND)
            _exit(32);
        c.tokens[k] = rc == KV_OK ? kv_fut_record(f)->token : 0;
        kv_fut_free(f);
    }
    for (int i = 0; i < CU_LANES; i++) {
        c.lanes[i].c = &c;
        c.lanes[i].lane = i;
        cu_lane_go(&c.lanes[i]);
    }
    for (;;)
        if (kv_loop_run(loop, KV_RUN_ONCE) < 0)
            _exit(33);
}

/* ------------------------------------------------------------------------ */
/* The parent                                                               */
/* ------------------------------------------------------------------------ */

/* Take in the child's messages in buf (have bytes); returns the bytes
 * used and counts the acknowledgements in *acked. */
static inline size_t cu_take(cu_crash *c, const unsigned char *buf,
                             size_t have, size_t *acked)
{
    size_t used = 0;
    while (have - used >= sizeof(cu_msg)) {
        cu_msg m;
        memcpy(&m, buf + used, sizeof m);
        used += sizeof m;
        ck_assert_uint_lt(m.key, c->nkeys);
        cu_state *s = &c->st[m.key];
        ck_assert_msg(m.kind != CU_FAIL, "child: op on key %u failed: %s",
                      m.key, kv_err_name(m.status));
        if (m.kind == CU_INTENT) {
            s->pending = true;
            s->pop = m.op;
            s->pseed = m.seed;
        } else {
            ck_assert(s->pending && s->pseed == m.seed);
            s->pending = false;
            s->present = m.op == CU_PUT;
            s->token = m.token;
            s->seed = m.seed;
            (*acked)++;
            if (c->on_ack != NULL)
                c->on_ack(c, &m);
        }
    }
    return used;
}

/*
 * Run a child on seed, kill it with SIGKILL after delay_ms and take in all
 * it reported (it must have been killed, not have ended).  Returns the
 * operations acknowledged.
 */
static inline size_t cu_child_round(cu_crash *c, uint64_t seed, int delay_ms)
{
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    fcntl(pfd[0], F_SETPIPE_SZ, 1 << 20);
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    char a_seed[32], a_fd[16];
    snprintf(a_seed, sizeof a_seed, "%" PRIu64, seed);
    snprintf(a_fd, sizeof a_fd, "%d", pfd[1]);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char *argv[] = {(char *)c->exe, "child", (char *)c->mode,
                        (char *)c->path, a_seed, a_fd, NULL};
        execv(c->exe, argv);
        _exit(127);
    }
    close(pfd[1]);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned char buf[sizeof(cu_msg) * 256];
    size_t have = 0, acked = 0;
    bool killed = false;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long el = (now.tv_sec - t0.tv_sec) * 1000 +
                  (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (!killed && el >= delay_ms) {
            kill(pid, SIGKILL);
            killed = true;
        }
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, killed ? 1000 : 1) == 0)
            continue;
        ssize_t r = read(pfd[0], buf + have, sizeof buf - have);
        if (r <= 0)
            break;
        have += (size_t)r;
        size_t used = cu_take(c, buf, have, &acked);
        memmove(buf, buf + used, have - used);
        have -= used;
    }
    close(pfd[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "child ended on its own: status %d", status);
    return acked;
}

/*
 * After the reopen: every key of s holds what was acknowledged last, or
 * what the operation in flight on it intended (which then counts as
 * acknowledged).  seed and delay_ms are the round's, for the message.
 */
static inline void cu_check_keys(cu_crash *c, kv_store *s, uint64_t seed,
                                 int delay_ms)
{
    for (uint32_t k = 0; k < c->nkeys; k++) {
        kv_key *key;
        ck_assert_kv(cu_key(&key, k), KV_OK);
        kv_fut *f = kv_get(s, key, NULL);
        kv_key_free(key);
        int rc = kv_wait(f);
        const kv_record *r = rc == KV_OK ? kv_fut_record(f) : NULL;
        uint64_t tok = r != NULL ? r->token : 0;
        cu_state *st = &c->st[k];
        ck_assert_msg(rc == KV_OK || rc == KV_ENOTFOUND,
                      "key %u: get failed %s", k, kv_err_name(rc));
        bool as_acked = st->present ? r != NULL && tok == st->token &&
                                          cu_value_is(c, r->val, r->len,
                                                      st->seed)
                                    : rc == KV_ENOTFOUND;
        bool newer = c->token_grows ? tok > st->token : tok != st->token;
        bool as_intended = false;
        if (st->pending)
            as_intended = st->pop == CU_PUT
                              ? r != NULL && newer &&
                                    cu_value_is(c, r->val, r->len, st->pseed)
                              : rc == KV_ENOTFOUND;
        ck_assert_msg(as_acked || as_intended,
                      "key %u: state lost (seed %" PRIu64
                      ", delay %d ms): rc %s, token %" PRIu64
                      ", acked present %d token %" PRIu64 ", pending %d",
                      k, seed, delay_ms, kv_err_name(rc), tok, st->present,
                      st->token, st->pending);
        if (as_intended && !as_acked) {
            st->present = st->pop == CU_PUT;
            st->token = tok;
            st->seed = st->pseed;
        }
        st->pending = false;
        kv_fut_free(f);
    }
}

/* The keys present as acknowledged. */
static inline size_t cu_present(const cu_crash *c)
{
    size_t n = 0;
    for (uint32_t k = 0; k < c->nkeys; k++)
        n += c->st[k].present;
    return n;
}

/* The rounds the environment variable var asks for (def if unset). */
static inline int cu_rounds(const char *var, int def)
{
    const char *v = getenv(var);
    return v != NULL ? atoi(v) : def;
}

/*
 * Run rounds rounds from a fresh state, each killing its child after
 * delay_min + [0, delay_span) ms: round(c, child seed, delay) runs it
 * (cu_child_round), reopens and checks (cu_check_keys), and returns the
 * operations acknowledged.  Some must be.  Returns their total; *seed is
 * the test's seed, for the report.
 */
static inline size_t cu_run(cu_crash *c, int rounds, int delay_min,
                            int delay_span,
                            size_t (*round)(cu_crash *c, uint64_t seed,
                                            int delay_ms),
                            uint64_t *seed)
{
    memset(c->st, 0, sizeof c->st);
    *seed = (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    uint64_t x = *seed | 1;
    size_t total = 0;
    for (int r = 0; r < rounds; r++) {
        int delay = delay_min + (int)(cu_rnd(&x) % (uint64_t)delay_span);
        total += round(c, cu_rnd(&x), delay);
    }
    ck_assert_msg(total > 0, "no operation was acknowledged");
    return total;
}

#endif
