/*
 * timer.c - the Redis backend's timers: the retry queue (commands the
 * server did not run because of a transient state, resent through the slot
 * map after a growing delay) and the watchdog (fails a connect or a
 * connection that stays silent past the URI's timeout).  Both are io_uring
 * TIMEOUTs, armed only while there is something to wait for.
 */
#include "backend/redis/redis_int.h"
#include "util/time.h"

#include <stdio.h>

/* Delays before resending a command the server did not run because of a
 * transient state (TRYAGAIN: a multi-key command on a slot being migrated;
 * LOADING; CLUSTERDOWN; MASTERDOWN): about 3 s in all, then KV_EBACKEND. */
static const unsigned retry_ms[] = {5,   10,  20,  40,  80,  160,
                                    320, 500, 500, 500, 500, 500};
#define RETRY_MAX (sizeof retry_ms / sizeof retry_ms[0])

static void retry_arm(rstore *st);

void redis__retry_run(rstore *st)
{
    uint64_t now = kv__now_ms();
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
            redis__cmd_fail(c, KV_ECANCELED, "store closed");
        else
            redis__cmd_route(st, c);
    }
    retry_arm(st);
}

/* Fail the connections that missed their deadline (redis__node_fail shuts
 * the socket down, which ends the SQEs in flight), then watch on. */
static void watchdog_check(rstore *st)
{
    if (st->closing)
        return;
    uint64_t now = kv__now_ms();
    for (rnode *n = st->nodes; n != NULL; n = n->next) {
        if (now - n->since < st->timeout_ms)
            continue;
        char m[192];
        if (n->state == N_CONNECTING) {
            /* the deadline covers the whole connect: every address of a
             * name tried so far, the last one still unanswered */
            snprintf(m, sizeof m, "%s: no answer within %u ms",
                     n->hs ? "TLS handshake" : "cannot connect",
                     st->timeout_ms);
            redis__addr_note(n, n->addri + 1, m, sizeof m);
            redis__node_fail(n, m);
        } else if (n->state == N_UP && n->fifo != NULL) {
            snprintf(m, sizeof m, "no reply within %u ms", st->timeout_ms);
            redis__node_fail(n, m);
        }
    }
    redis__watchdog_arm(st);
}

static void timer_cb(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    rtimer *t = KV__CONTAINER_OF(op, rtimer, op);
    rstore *st = t->st;
    kv__list_remove(&t->link);
    bool wd = t->watchdog;
    kv__free(t);
    if (wd) {
        st->wd = NULL;
        watchdog_check(st);
    } else {
        redis__retry_run(st);
    }
    redis__maybe_closed(st);
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
    for (kv__list *p = st->timers.next; p != &st->timers; p = p->next)
        if (KV__LIST_ENTRY(p, rtimer, link)->due <= first)
            return; /* it fires first and arms the next */
    rtimer *t = kv__calloc(1, sizeof *t);
    struct io_uring_sqe *sqe = NULL;
    int rc = t == NULL ? KV_ENOMEM : kv__loop_sqes(st->loop, &sqe, 1);
    if (rc != KV_OK) {
        /* no timer: fail what waits rather than leave it hanging */
        kv__free(t);
        rcmd *q = st->retryq;
        st->retryq = NULL;
        redis__fail_list(q, redis__io_err(rc),
                         "redis: cannot arm a timer to resend a command");
        return;
    }
    uint64_t now = kv__now_ms(), wait = first > now ? first - now : 1;
    t->op.cb = timer_cb;
    t->st = st;
    t->due = first;
    t->ts = kv__ms_to_kts(wait);
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&t->op);
    kv__list_push_front(&st->timers, &t->link);
}

static bool watchdog_busy(const rstore *st)
{
    for (const rnode *n = st->nodes; n != NULL; n = n->next)
        if (n->state == N_CONNECTING || (n->state == N_UP && n->fifo != NULL))
            return true;
    return false;
}

void redis__watchdog_arm(rstore *st)
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
    t->ts = kv__ms_to_kts(tick);
    io_uring_prep_timeout(sqe, &t->ts, 0, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&t->op);
    kv__list_push_front(&st->timers, &t->link);
    st->wd = t;
}

/* Nothing to watch any more: take the watchdog timer off the ring, so
 * that an idle store keeps nothing pending on the loop (its CQE comes back
 * -ECANCELED through timer_cb, which arms it again if work came back). */
void redis__watchdog_idle(rstore *st)
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

void redis__retry_later(rstore *st, rcmd *c, const char *why)
{
    if (c->tries >= RETRY_MAX || st->closing) {
        unsigned total = 0;
        for (size_t i = 0; i < RETRY_MAX; i++)
            total += retry_ms[i];
        char *m = kv__asprintf(
            "redis: %s (hash slot %d, still after %u resends over %.1f s); "
            "not applied",
            why, c->slot, c->tries, (double)total / 1000.0);
        redis__cmd_fail(c, st->closing ? KV_ECANCELED : KV_EBACKEND,
                        st->closing ? "store closed" : m);
        kv__free(m);
        return;
    }
    c->due = kv__now_ms() + retry_ms[c->tries++];
    c->node = NULL; /* route afresh: the slot may have moved meanwhile */
    c->asking = false;
    c->redirects = 0;
    c->next = st->retryq;
    st->retryq = c;
    retry_arm(st);
}

void redis__timers_remove(rstore *st)
{
    for (kv__list *p = st->timers.next; p != &st->timers; p = p->next) {
        rtimer *t = KV__LIST_ENTRY(p, rtimer, link);
        struct io_uring_sqe *sqe;
        if (kv__loop_sqes(st->loop, &sqe, 1) != KV_OK)
            break; /* they fire soon anyway */
        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&t->op, 0);
        io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    }
}
