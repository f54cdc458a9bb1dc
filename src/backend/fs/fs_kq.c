/*
 * fs_kq.c - the life of the filesystem backend's record operations (loop
 * thread): the store-wide token counter and its refills through the ring,
 * the per-key FIFO queues, admission (at most fs->maxrun kops at once),
 * creating, finishing and freeing kops, submit and cancel.  The chains a
 * kop runs once started are in fs_kop.c.
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Tokens (refilled through the ring)                                       */
/* ------------------------------------------------------------------------ */

/* Per-request bookkeeping (req->bpriv). */
typedef struct freq {
    size_t remaining;
    int err;
    char *msg;
} freq;

static void tok_wake(fs_state *fs)
{
    kop *k = fs->tok_head;
    fs->tok_head = fs->tok_tail = NULL;
    while (k != NULL) {
        kop *next = k->gnext;
        k->gnext = NULL;
        fs__kop_token_ready(k);
        k = next;
    }
}

static void tok_cqe_common(fs_state *fs)
{
    fs->nsqe--;
    if (--fs->tok_pending > 0)
        return;
    fs->tok_refilling = false;
    int err = 0;
    if (fs->tok_wres < 0)
        err = fs->tok_wres;
    else if (fs->tok_wres != (int)TOK_SLOT)
        err = -EIO;
    else if (fs->tok_fres < 0)
        err = fs->tok_fres;
    if (err == 0) {
        fs->tok_hwm = fs->tok_new;
        fs->tok_gen++;
    } else if (!fs->closing) {
        /* The kops waiting for this block fail with the error. */
        fs->tok_err = fs__to_kv(err);
    }
    tok_wake(fs);
    /*
     * Not sticky: no token of the new block was handed out, the other slot
     * still holds the durable high-water mark, and the next refill rewrites
     * this whole slot (same generation) before fsyncing it again, so it can
     * retry safely; meanwhile the tokens already reserved are still good.
     */
    if (err != 0)
        fs->tok_err = KV_OK;
    fs__check_closed(fs);
}

void fs__tok_wcqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fs_state *fs = KV__CONTAINER_OF(op, fs_state, tok_wop);
    fs->tok_wres = res;
    tok_cqe_common(fs);
}

void fs__tok_fcqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fs_state *fs = KV__CONTAINER_OF(op, fs_state, tok_fop);
    fs->tok_fres = res;
    tok_cqe_common(fs);
}

/* Reserve the next block through the ring: write the other slot, fsync
 * (with KV_FS_NO_FSYNC too: tokens must never repeat after a crash). */
static int tok_refill(fs_state *fs)
{
    if (fs->tok_refilling)
        return KV_OK;
    if (fs->tok_err != KV_OK)
        return fs->tok_err;
    if (fs->tok_hwm > UINT64_MAX - TOKEN_BLOCK) {
        fs->tok_err = KV_ECORRUPT;
        return fs->tok_err;
    }
    struct io_uring_sqe *sq[2];
    int rc = fs__ring_get(fs, sq, 2);
    if (rc != KV_OK)
        return rc;
    uint64_t gen = fs->tok_gen + 1;
    fs->tok_new = fs->tok_hwm + TOKEN_BLOCK;
    fs__tok_slot_make(fs->tok_buf, gen, fs->tok_new);
    io_uring_prep_write(sq[0], fs->tokfd, fs->tok_buf, TOK_SLOT,
                        (gen & 1) * TOK_SLOT_OFF);
    io_uring_sqe_set_data64(sq[0], (uintptr_t)&fs->tok_wop);
    sq[0]->flags |= IOSQE_IO_LINK;
    io_uring_prep_fsync(sq[1], fs->tokfd, 0);
    io_uring_sqe_set_data64(sq[1], (uintptr_t)&fs->tok_fop);
    fs->stats[STAT_FILE_FSYNC]++;
    fs->tok_wres = fs->tok_fres = 0;
    fs->tok_pending = 2;
    fs->tok_refilling = true;
    return KV_OK;
}

/* 1 and a token, 0 if the caller must wait for tok_wake, or an error. */
int fs__tok_take(fs_state *fs, uint64_t *out)
{
    if (fs->tok_err != KV_OK)
        return fs->tok_err;
    if (fs->tok_next < fs->tok_hwm) {
        *out = fs->tok_next++;
        if (fs->tok_hwm - fs->tok_next < TOKEN_BLOCK / 2)
            (void)tok_refill(fs); /* retried by the next take on failure */
        return 1;
    }
    int rc = tok_refill(fs);
    return rc != KV_OK ? rc : 0;
}

/* ------------------------------------------------------------------------ */
/* Per-key FIFO queues                                                      */
/* ------------------------------------------------------------------------ */

static keyq *kq_find(fs_state *fs, const kv_key *key, uint64_t h)
{
    for (hlink *l = fs__htab_bucket(&fs->keyqs, h); l != NULL; l = l->next) {
        keyq *q = KV__CONTAINER_OF(l, keyq, hl);
        if (l->hash == h && kv_key_equal(q->key, key))
            return q;
    }
    return NULL;
}

static int kq_add(fs_state *fs, keyq *q)
{
    int rc = fs__htab_reserve(&fs->keyqs);
    if (rc == KV_OK)
        fs__htab_link(&fs->keyqs, &q->hl);
    return rc;
}

static void kq_remove(fs_state *fs, keyq *q)
{
    fs__htab_unlink(&fs->keyqs, &q->hl);
    kv__free(q);
}


/*
 * Admission.  Every running kop holds a descriptor (record or temp file)
 * and pins its directory's, so a batch of 100,000 records (or as many
 * single operations in flight) must not start at once: it would hit
 * RLIMIT_NOFILE (EMFILE).  At most fs->maxrun kops run; the others wait,
 * in order, in a FIFO, and each finished kop admits the next.
 *
 * maxrun starts at maxrun_cap, which fd_budget (fs.c) sized from the
 * limit.  A kop that meets EMFILE or ENFILE anyway (the application holds
 * more descriptors than the store left it) lowers maxrun to the kops
 * still running (fs__kop_park).  The shortage may pass (the application
 * held many files for a moment), so maxrun grows back: additive increase
 * after that decrease (AIMD), with a backoff.  A round is maxrun admitted
 * kops finished while others waited for admission (a store that runs
 * fewer kops than maxrun allows has no use for a step, and proves none
 * safe); the rule (fs__fd_short, run_grow):
 *
 *   - after 2^run_backoff rounds with no EMFILE (counted in run_done,
 *     which any EMFILE sets back to 0), maxrun grows by one: a step, up
 *     to maxrun_cap;
 *   - an EMFILE before the next step (the step was too far: run_probe)
 *     adds one to run_backoff (at most RUN_BACKOFF_MAX); a step made
 *     after a step (that one held) takes one off; reaching maxrun_cap
 *     sets run_backoff back to 0.
 *
 * A step lets one kop more run than the level that just ran with no
 * EMFILE, so a shortage that lasts costs an EMFILE per step (or the few
 * kops that were opening at that moment), one every 64 rounds at most
 * once the backoff is full: never a storm of them.  Once descriptors are
 * back, maxrun climbs from 1 to the cap in about cap rounds (a round
 * lasts about one kop while kops queue for admission) plus about
 * 3 x 2^run_backoff rounds to undo the backoff, meeting no EMFILE on the
 * way (the cap is the budget's).
 */
static void adm_unlink(fs_state *fs, kop *k)
{
    if (k->dprev != NULL)
        k->dprev->dnext = k->dnext;
    else
        fs->adm_head = k->dnext;
    if (k->dnext != NULL)
        k->dnext->dprev = k->dprev;
    else
        fs->adm_tail = k->dprev;
    k->dnext = k->dprev = NULL;
}

static void admit_waiting(fs_state *fs);

/* True if k may run now; else k waits in the FIFO. */
bool fs__kop_admit(kop *k)
{
    fs_state *fs = k->fs;
    if (k->admitted)
        return true;
    if (fs->nrun >= fs->maxrun || (fs->adm_head != NULL && !fs->admitting)) {
        k->state = ST_ADMIT;
        k->dprev = fs->adm_tail;
        k->dnext = NULL;
        if (fs->adm_tail != NULL)
            fs->adm_tail->dnext = k;
        else
            fs->adm_head = k;
        fs->adm_tail = k;
        return false;
    }
    k->admitted = true;
    fs->nrun++;
    return true;
}

/*
 * Whether a kop that met EMFILE (holding its directory, maybe, and no
 * other descriptor) may wait for one: some descriptor of the store will
 * come free without it.  Another kop runs (it frees its own when it
 * finishes), idle directories or spare files (which pin directories) are
 * kept (fs__kop_park lets them go), or a close is in flight (nrel).  The
 * last two matter when the kop runs alone: the store's caches and its
 * closes still in flight (the fallback mode's pool may run an open before
 * a close sent earlier) can hold the descriptors it lacks.
 */
bool fs__fd_can_wait(const fs_state *fs)
{
    return fs->nrun > 1 || fs->nidle > 0 || fs->nspares > 0 || fs->nrel > 0;
}

/* A kop met EMFILE or ENFILE (whether it waits or fails): the round of
 * maxrun's growth starts over, and a step just made backs off (above). */
void fs__fd_short(fs_state *fs)
{
    fs->nemfile++;
    fs->run_done = 0;
    if (fs->run_probe) {
        fs->run_probe = false;
        if (fs->run_backoff < RUN_BACKOFF_MAX)
            fs->run_backoff++;
    }
}

/* An admitted kop finished (not parked): maxrun grows at the end of a
 * round (above).  Only while kops wait for admission: with none waiting
 * maxrun held nothing back, and a step would be taken on no evidence
 * that one kop more finds its descriptors. */
static void run_grow(fs_state *fs)
{
    if (fs->maxrun >= fs->maxrun_cap || fs->adm_head == NULL)
        return;
    if (++fs->run_done < fs->maxrun << fs->run_backoff)
        return;
    fs->run_done = 0;
    if (fs->run_probe && fs->run_backoff > 0)
        fs->run_backoff--; /* the last step held for a round */
    fs->maxrun++;
    fs->run_probe = fs->maxrun < fs->maxrun_cap;
    if (!fs->run_probe)
        fs->run_backoff = 0;
}

/*
 * Descriptors ran out (EMFILE: the application uses more than the store
 * left it; fs__fd_can_wait was true, or the store let descriptors go
 * since k's open: k_fd_wait): k, holding no descriptor now, gives up its
 * running slot and waits at the head of the FIFO; the running cap drops
 * to the kops still running, each of which frees descriptors when it
 * finishes (the cap grows back later: run_grow).  Idle directories are
 * closed; if no other kop runs, the spare files are dropped too.  k
 * starts again when a kop finishes or a close sent here or earlier
 * completes (fs__fd_released).
 */
void fs__kop_park(kop *k)
{
    fs_state *fs = k->fs;
    if (k->admitted) {
        k->admitted = false;
        fs->nrun--;
    }
    if (fs->maxrun > fs->nrun && fs->nrun > 0)
        fs->maxrun = fs->nrun;
    k->fd_waits++;
    k->state = ST_ADMIT;
    k->dprev = NULL;
    k->dnext = fs->adm_head;
    if (fs->adm_head != NULL)
        fs->adm_head->dprev = k;
    else
        fs->adm_tail = k;
    fs->adm_head = k;
    fs__dirs_close_idle(fs);
    if (fs->nrun == 0) {
        fs__spares_drain(fs);
        if (fs->nrel == 0)
            admit_waiting(fs); /* the ring refused: all closed at once */
    }
}

/* Start waiting kops while slots are free (never recursively: a kop that
 * finishes at once would otherwise nest one call per waiting kop). */
static void admit_waiting(fs_state *fs)
{
    if (fs->admitting)
        return;
    fs->admitting = true;
    while (fs->adm_head != NULL && fs->nrun < fs->maxrun) {
        kop *k = fs->adm_head;
        adm_unlink(fs, k);
        k->state = ST_NEW;
        fs__kop_start(k);
    }
    fs->admitting = false;
}

/* A close counted in nrel completed: kops waiting for a descriptor (and
 * room to run) start again. */
void fs__fd_released(fs_state *fs)
{
    fs->nrel--;
    fs->fd_gen++;
    admit_waiting(fs);
}

static kop *kop_new(fs_state *fs, kv__req *req, kv__item *it,
                    enum kkind kind)
{
    kop *k = kv__calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    char *base = NULL;
    unsigned b = 0;
    if (fs__key_paths(it->key, &k->dirpath, &base, &b) != KV_OK) {
        kv__free(k);
        return NULL;
    }
    k->fname = kv__asprintf("%s.kv", base);
    kv__free(base);
    if (k->fname != NULL && fs->fanout) {
        /* The record's directory is its bucket. */
        char bn[BUCKET_NAME_SIZE];
        fs__bucket_name(bn, b);
        char *bp = fs__child_dir_path(k->dirpath, bn);
        kv__free(k->dirpath);
        k->dirpath = bp;
    }
    if (k->fname == NULL || k->dirpath == NULL) {
        kv__free(k->fname);
        kv__free(k->dirpath);
        kv__free(k);
        return NULL;
    }
    k->fs = fs;
    k->req = req;
    k->it = it;
    k->kind = kind;
    k->state = ST_NEW;
    k->want_value = req->want_value;
    k->fd = -1;
    for (int i = 0; i < SL_N; i++) {
        k->sl[i].op.cb = fs__kop_cqe;
        k->sl[i].k = k;
    }
    k->anext = fs->kops;
    if (fs->kops)
        fs->kops->aprev = k;
    fs->kops = k;
    fs->nkops++;
    return k;
}

void fs__kop_free(kop *k)
{
    fs_state *fs = k->fs;
    if (k->aprev)
        k->aprev->anext = k->anext;
    else
        fs->kops = k->anext;
    if (k->anext)
        k->anext->aprev = k->aprev;
    fs->nkops--;
    kv__free(k->sp);
    kv__free(k->rbuf);
    kv__free(k->dirpath);
    kv__free(k->fname);
    kv__free(k->errmsg);
    kv__free(k);
}

/* Deliver k's result, advance its key queue, maybe complete its request. */
void fs__kop_finish(kop *k, int status)
{
    fs_state *fs = k->fs;
    if (k->done)
        return;
    k->done = true;
    k->state = ST_DONE;
    kv__req *req = k->req;
    kv__item *it = k->it;
    freq *fr = req->bpriv;
    if (fs->closing && status == KV_OK)
        status = KV_ECANCELED;
    it->status = status;
    if (status == KV_OK) {
        if (k->kind == K_PUT) {
            it->token = k->new_token;
            fs->stats[STAT_PUTS]++;
        } else if (k->kind == K_DEL) {
            fs->stats[STAT_DELS]++;
        } else {
            fs->stats[STAT_GETS]++;
        }
    } else if (status != KV_ECONFLICT && status != KV_ENOTFOUND) {
        if (fr->err == KV_OK) {
            fr->err = status;
            fr->msg = k->errmsg;
            k->errmsg = NULL;
        }
    }
    if (k->dir != NULL) {
        fs__exch_release(k);
        if (k->sp_made != NULL)
            fs__spare_synced(k, -ECANCELED); /* (not reached: safety) */
        fs__dir_release(k->dir);
        k->dir = NULL;
    }
    kv__free(k->sp); /* an unused spare record (its file is gone or ours) */
    k->sp = NULL;
    if (k->admitted) {
        k->admitted = false;
        fs->nrun--;
        fs->fd_gen++;
        run_grow(fs);
    }
    if (k->put_counted) {
        k->put_counted = false;
        fs->nputs--;
    }
    if (k->foreign) {
        k->foreign = false;
        fs->nforeign--;
    }
    kop *next = NULL;
    keyq *q = k->kq;
    if (q != NULL) {
        k->kq = NULL;
        q->head = k->qnext;
        if (q->head == NULL) {
            q->tail = NULL;
            kq_remove(fs, q);
        } else {
            q->key = q->head->it->key;
            next = q->head;
        }
    }
    k->qnext = NULL;
    k->req = NULL;
    k->it = NULL;
    bool last = --fr->remaining == 0;
    if (k->pending == 0)
        fs__kop_free(k);
    if (next != NULL)
        fs__kop_start(next);
    admit_waiting(fs);
    if (fs->nputs == 0 && fs->sp_head != NULL)
        fs__spares_drain(fs); /* no put left to use them */
    /* Last: completing a request may re-enter submit (iterators). */
    if (last) {
        req->bpriv = NULL;
        int err = fr->err;
        char *msg = fr->msg;
        kv__free(fr);
        fs__req_end(fs, req, err, msg);
    }
}

/* ------------------------------------------------------------------------ */
/* Submit and cancel                                                        */
/* ------------------------------------------------------------------------ */

void fs__rec_submit(fs_state *fs, kv__req *req, enum kkind kind)
{
    if ((kind == K_PUT || kind == K_DEL) && fs->readonly) {
        fs__defer_done(fs, req, KV_EREADONLY, NULL);
        return;
    }
    for (size_t i = 0; i < req->n; i++) {
        const kv_key *key = req->items[i].key;
        size_t len = key != NULL ? kv_key_len(key) : 0;
        if (len == 0 || len > fs->depth) {
            fs__defer_done(fs, req, KV_EINVAL,
                           len == 0
                               ? kv__strdup("fs: empty or missing key")
                               : kv__asprintf("fs: key %s has %zu "
                                              "namespaces, more than the "
                                              "store's depth %u",
                                              kv_key_id(key), len, fs->depth));
            return;
        }
    }
    if (req->n == 0) {
        fs__defer_done(fs, req, KV_OK, NULL);
        return;
    }
    freq *fr = kv__calloc(1, sizeof *fr);
    kop **ks = kv__calloc(req->n, sizeof *ks);
    bool ok = fr != NULL && ks != NULL;
    for (size_t i = 0; ok && i < req->n; i++)
        ok = (ks[i] = kop_new(fs, req, &req->items[i], kind)) != NULL;
    if (!ok) {
        for (size_t i = 0; ks != NULL && i < req->n && ks[i]; i++)
            fs__kop_free(ks[i]);
        kv__free(ks);
        kv__free(fr);
        fs__defer_done(fs, req, KV_ENOMEM, NULL);
        return;
    }
    fr->remaining = req->n;
    req->bpriv = fr;
    /* Queue every kop before starting any: a synchronous failure of one
     * must not complete the request while others are still being set up. */
    for (size_t i = 0; i < req->n; i++) {
        kop *k = ks[i];
        const kv_key *key = k->it->key;
        uint64_t h = kv_key_hash(key);
        keyq *q = kq_find(fs, key, h);
        if (q != NULL) {
            q->tail->qnext = k;
            q->tail = k;
            k->kq = q;
            k->state = ST_QUEUED;
            ks[i] = NULL; /* started by its predecessor */
            continue;
        }
        q = kv__calloc(1, sizeof *q);
        if (q != NULL) {
            q->key = key;
            q->hl.hash = h;
        }
        if (q == NULL || kq_add(fs, q) != KV_OK) {
            kv__free(q);
            /* Not queued: it runs unordered (only on out-of-memory), so
             * it may read a file another put replaces. */
            k->foreign = true;
            fs->nforeign++;
            fs->foreign_gen++;
            continue;
        }
        q->head = q->tail = k;
        k->kq = q;
    }
    for (size_t i = 0; i < req->n; i++)
        if (ks[i] != NULL)
            fs__kop_start(ks[i]);
    kv__free(ks);
}

/* Remove k (not running, not a queue head) from its key queue. */
static void kq_unlink(fs_state *fs, kop *k)
{
    keyq *q = k->kq;
    if (q == NULL)
        return;
    kop *prev = NULL;
    for (kop *x = q->head; x != NULL && x != k; x = x->qnext)
        prev = x;
    if (prev == NULL)
        q->head = k->qnext;
    else
        prev->qnext = k->qnext;
    if (q->tail == k)
        q->tail = prev;
    if (q->head == NULL)
        kq_remove(fs, q);
    k->kq = NULL;
    k->qnext = NULL;
}

static void tok_unwait(fs_state *fs, kop *k)
{
    kop *prev = NULL;
    for (kop *x = fs->tok_head; x != NULL && x != k; x = x->gnext)
        prev = x;
    if (prev == NULL)
        fs->tok_head = k->gnext;
    else
        prev->gnext = k->gnext;
    if (fs->tok_tail == k)
        fs->tok_tail = prev;
    k->gnext = NULL;
}

/* Best effort: ask the kernel to cancel k's SQEs in flight (not closes). */
static void kop_cancel_ring(kop *k)
{
    static const int which[] = {SL_OPEN, SL_READ, SL_WRITE, SL_FSYNC,
                                SL_NAME};
    for (size_t i = 0; i < KV__ARRAY_SIZE(which); i++) {
        if (!k->sl[which[i]].busy)
            continue;
        struct io_uring_sqe *sqe;
        if (kv__loop_sqes(k->fs->loop, &sqe, 1) != KV_OK)
            return;
        io_uring_prep_cancel64(sqe, (uintptr_t)&k->sl[which[i]].op, 0);
        io_uring_sqe_set_data64(sqe, KV__UD_IGNORE);
    }
}

/*
 * Stop the kops of req (all of them if req is NULL) that are parked in a
 * key queue or waiting for a token; flag the others so that they stop at
 * their next step; cancel pool jobs that have not started.
 */
void fs__cancel_kops(fs_state *fs, kv__req *req, bool ring_cancel)
{
    kop *parked = NULL;
    for (kop *k = fs->kops; k != NULL; k = k->anext) {
        if (k->done || (req != NULL && k->req != req))
            continue;
        k->canceled = true;
        if (k->state == ST_QUEUED) {
            kq_unlink(fs, k);
        } else if (k->state == ST_ADMIT) {
            adm_unlink(fs, k);
        } else if (k->state == ST_TOKEN) {
            tok_unwait(fs, k);
        } else {
            if (ring_cancel)
                kop_cancel_ring(k);
            continue;
        }
        k->state = ST_NEW;
        k->gnext = parked;
        parked = k;
    }
    while (parked != NULL) {
        kop *k = parked;
        parked = k->gnext;
        k->gnext = NULL;
        fs__kop_finish(k, KV_ECANCELED);
    }
    kv__list *pos;
    KV__LIST_FOREACH(pos, &fs->jobs) {
        fjob *j = KV__LIST_ENTRY(pos, fjob, link);
        if (req == NULL || j->req == req)
            (void)kv__pool_cancel(fs->pool, &j->job);
    }
}
