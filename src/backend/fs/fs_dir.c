/*
 * fs_dir.c - the filesystem backend's directory objects (loop thread):
 * one shared, reference-counted object per directory, opened (and made,
 * with an fsync of its parent) through the ring, kept open while idle up to
 * fs->idle_max, and the group commit (one directory fsync covers every
 * rename or unlink that completed before it started).  Also the spare
 * files (replaced record files kept for later puts to overwrite).
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/*
 * The table's hash of a directory is FNV-1a 64 of its path relative to the
 * root ("a/b.+/c"), computed one component at a time from its parent's:
 * dir_hash(parent hash, name) hashes "/" (unless parent is the root) and
 * then name.
 */
#define FNV_BASIS 1469598103934665603ull
#define FNV_PRIME 1099511628211ull

static uint64_t dir_hash(uint64_t h, bool parent_is_root, const char *name,
                         size_t len)
{
    if (!parent_is_root)
        h = (h ^ (unsigned char)'/') * FNV_PRIME;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * FNV_PRIME;
    return h;
}

/* ------------------------------------------------------------------------ */
/* Directories                                                              */
/* ------------------------------------------------------------------------ */

static void dir_start(fsdir *d);
static void dir_submit_open(fsdir *d);

/* The live object named name (len bytes) in p, or NULL. */
static fsdir *dir_lookup(fs_state *fs, const fsdir *p, const char *name,
                         size_t len, uint64_t h)
{
    for (hlink *l = fs__htab_bucket(&fs->dirs, h); l != NULL; l = l->next) {
        fsdir *d = KV__CONTAINER_OF(l, fsdir, hl);
        if (l->hash == h && d->parent == p && d->namelen == len &&
            memcmp(d->name, name, len) == 0)
            return d;
    }
    return NULL;
}

static void dir_table_remove(fs_state *fs, fsdir *d)
{
    fs__htab_unlink(&fs->dirs, &d->hl);
}

static void lru_remove(fs_state *fs, fsdir *d)
{
    if (!d->in_lru)
        return;
    if (d->lprev)
        d->lprev->lnext = d->lnext;
    else
        fs->lru_head = d->lnext;
    if (d->lnext)
        d->lnext->lprev = d->lprev;
    else
        fs->lru_tail = d->lprev;
    d->lprev = d->lnext = NULL;
    d->in_lru = false;
    fs->nidle--;
}

static void lru_push(fs_state *fs, fsdir *d)
{
    d->lprev = NULL;
    d->lnext = fs->lru_head;
    if (fs->lru_head)
        fs->lru_head->lprev = d;
    else
        fs->lru_tail = d;
    fs->lru_head = d;
    d->in_lru = true;
    fs->nidle++;
}

/* Free d (and then its parent) once nothing refers to it. */
static void dir_maybe_free(fsdir *d)
{
    while (d != NULL && !d->is_root && d->users == 0 && d->nobj == 0 &&
           d->state == D_CLOSED && d->wait_head == NULL && !d->syncing &&
           d->ready_head == NULL && !d->in_lru) {
        fs_state *fs = d->fs;
        fsdir *p = d->parent;
        if (!d->stale)
            dir_table_remove(fs, d);
        if (d->all_prev)
            d->all_prev->all_next = d->all_next;
        else
            fs->dirs_all = d->all_next;
        if (d->all_next)
            d->all_next->all_prev = d->all_prev;
        kv__free(d->namebuf);
        kv__free(d);
        p->nobj--;
        d = p;
    }
}

/* The directory whose slot op completed (its SQE uncounted). */
static fsdir *dir_of_cqe(kv__op *op)
{
    fsdir *d = ((dslot *)(void *)op)->d;
    d->fs->nsqe--;
    return d;
}

static void d_close_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)res; /* a directory close error loses nothing */
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    d->fd = -1;
    d->state = D_CLOSED;
    if (d->wait_head != NULL)
        dir_start(d);
    else
        dir_maybe_free(d);
    fs__fd_released(fs);
    fs__check_closed(fs);
}

static void dir_close_ring(fsdir *d)
{
    fs_state *fs = d->fs;
    struct io_uring_sqe *sqe;
    d->state = D_CLOSING;
    if (fs__ring_get(fs, &sqe, 1) != KV_OK) {
        /* Ring refused: a directory close does not block.  The object
         * is freed later (its next release, or teardown). */
        close(d->fd);
        d->fd = -1;
        d->state = D_CLOSED;
        return;
    }
    io_uring_prep_close(sqe, d->fd);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&d->s_close.op);
    fs->nrel++;
}

static void dir_evict(fs_state *fs)
{
    while (fs->nidle > fs->idle_max && fs->lru_tail != NULL) {
        fsdir *d = fs->lru_tail;
        lru_remove(fs, d);
        dir_close_ring(d);
    }
}

/* Close every idle directory (descriptors ran out: EMFILE). */
void fs__dirs_close_idle(fs_state *fs)
{
    while (fs->lru_tail != NULL) {
        fsdir *d = fs->lru_tail;
        lru_remove(fs, d);
        dir_close_ring(d);
    }
}

void fs__dir_release(fsdir *d)
{
    d->users--;
    if (d->users > 0 || d->is_root)
        return;
    if (d->state == D_OPEN) {
        if (d->stale || d->fs->closing) {
            if (!d->fs->closing)
                dir_close_ring(d);
        } else {
            lru_push(d->fs, d);
            dir_evict(d->fs);
        }
    } else {
        dir_maybe_free(d);
    }
}

/* Take d out of the table: later lookups make a fresh object. */
static void dir_invalidate(fsdir *d)
{
    if (d->is_root || d->stale)
        return;
    fs_state *fs = d->fs;
    dir_table_remove(fs, d);
    d->stale = true;
    if (d->in_lru) {
        lru_remove(fs, d);
        dir_close_ring(d);
    }
}

static void dir_cqe_open(kv__op *op, int res, uint32_t flags);
static void dir_cqe_mk(kv__op *op, int res, uint32_t flags);
static void dir_cqe_mksync(kv__op *op, int res, uint32_t flags);

/* A new object for name (len bytes) in p, hashed h; NULL on OOM. */
static fsdir *dir_new(fs_state *fs, fsdir *p, const char *name, size_t len,
                      uint64_t h)
{
    if (fs__htab_reserve(&fs->dirs) != KV_OK)
        return NULL;
    fsdir *d = kv__calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->namebuf = kv__strndup(name, len);
    if (d->namebuf == NULL) {
        kv__free(d);
        return NULL;
    }
    d->fs = fs;
    d->name = d->namebuf;
    d->namelen = len;
    d->hl.hash = h;
    d->fd = -1;
    d->state = D_CLOSED;
    d->parent = p;
    p->nobj++;
    d->s_open.op.cb = dir_cqe_open;
    d->s_mk.op.cb = dir_cqe_mk;
    d->s_mksync.op.cb = dir_cqe_mksync;
    d->s_sync.op.cb = fs__dir_cqe_sync;
    d->s_close.op.cb = d_close_cqe;
    d->s_open.d = d->s_mk.d = d->s_mksync.d = d->s_sync.d = d->s_close.d = d;
    fs__htab_link(&fs->dirs, &d->hl);
    d->all_next = fs->dirs_all;
    if (fs->dirs_all)
        fs->dirs_all->all_prev = d;
    fs->dirs_all = d;
    return d;
}

/*
 * The object for path (relative to the root, components joined by '/'),
 * made with its missing parents if needed; NULL on OOM.  One pass over
 * path: each component is looked up (or made) in the object of the one
 * before it.
 */
fsdir *fs__dir_get(fs_state *fs, const char *path)
{
    fsdir *p = fs->rootdir;
    uint64_t h = FNV_BASIS;
    const char *s = path;
    while (*s != '\0') {
        const char *slash = strchr(s, '/');
        size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
        h = dir_hash(h, p->is_root, s, len);
        fsdir *d = dir_lookup(fs, p, s, len, h);
        if (d == NULL && (d = dir_new(fs, p, s, len, h)) == NULL) {
            dir_maybe_free(p); /* the parents made for nothing */
            return NULL;
        }
        p = d;
        s = slash != NULL ? slash + 1 : s + len;
    }
    return p;
}

static bool dir_wants_create(const fsdir *d)
{
    for (const waiter *w = d->wait_head; w; w = w->next)
        if (w->create)
            return true;
    return false;
}

/*
 * Wake d's waiters with res (only those that do not need creation if
 * only_plain).  Each loses its user reference first when res < 0.
 */
static void dir_wake(fsdir *d, int res, bool only_plain)
{
    waiter *list = NULL, **tail = &list;
    waiter **pp = &d->wait_head;
    d->wait_tail = NULL;
    while (*pp != NULL) {
        waiter *w = *pp;
        if (only_plain && w->create) {
            d->wait_tail = w;
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->next = NULL;
        *tail = w;
        tail = &w->next;
    }
    d->users++; /* pin d while waking */
    while (list != NULL) {
        waiter *w = list;
        list = w->next;
        w->next = NULL;
        if (res < 0)
            d->users--;
        w->fn(w, res);
    }
    fs__dir_release(d); /* unpin */
}

static void dir_fail(fsdir *d, int res)
{
    d->fd = -1;
    d->state = D_CLOSED;
    dir_wake(d, res, false);
}

/* d's open or creation failed with res while d held its parent. */
static void dir_abort(fsdir *d, int res)
{
    fs__dir_release(d->parent);
    dir_fail(d, res);
}

static void dir_parent_ready(waiter *w, int res)
{
    fsdir *d = KV__CONTAINER_OF(w, fsdir, pw);
    if (res < 0) {
        dir_fail(d, res);
        return;
    }
    if (d->fs->closing) {
        dir_abort(d, KV_ECANCELED);
        return;
    }
    dir_submit_open(d);
}

static void dir_start(fsdir *d)
{
    d->state = D_WAITPARENT;
    d->tries = 0;
    d->pw.fn = dir_parent_ready;
    d->pw.next = NULL;
    bool create = dir_wants_create(d);
    if (d->fs->closing) {
        dir_fail(d, KV_ECANCELED);
        return;
    }
    if (fs__dir_use(d->parent, &d->pw, create))
        dir_parent_ready(&d->pw, 0);
}

/*
 * Take a user reference on d for w.  True if d is open now (w->fn is not
 * called); otherwise w->fn(w, res) runs later (or at once on a synchronous
 * failure): with res 0 the reference is held, with res < 0 it was dropped.
 */
bool fs__dir_use(fsdir *d, waiter *w, bool create)
{
    d->users++;
    lru_remove(d->fs, d);
    if (d->state == D_OPEN)
        return true;
    w->create = create;
    w->next = NULL;
    if (d->wait_tail)
        d->wait_tail->next = w;
    else
        d->wait_head = w;
    d->wait_tail = w;
    if (create)
        for (fsdir *x = d; x->state == D_WAITPARENT && !x->pw.create;
             x = x->parent)
            x->pw.create = true;
    if (d->state == D_CLOSED)
        dir_start(d);
    return false;
}

/* The SQE of d's next step (opening or creating it, d holding its
 * parent), or NULL after d failed (the ring refused). */
static struct io_uring_sqe *dir_sqe(fsdir *d)
{
    struct io_uring_sqe *sqe;
    int rc = fs__ring_get(d->fs, &sqe, 1);
    if (rc != KV_OK) {
        dir_abort(d, rc);
        return NULL;
    }
    return sqe;
}

/* Point sqe (prepared) at slot s of d, which enters state st. */
static void dir_arm(fsdir *d, struct io_uring_sqe *sqe, dslot *s,
                    enum dstate st)
{
    io_uring_sqe_set_data64(sqe, (uintptr_t)&s->op);
    d->state = st;
}

static void dir_submit_open(fsdir *d)
{
    struct io_uring_sqe *sqe = dir_sqe(d);
    if (sqe == NULL)
        return;
    fs__prep_open(d->fs, sqe, d->parent->fd, d->name, O_RDONLY | O_DIRECTORY, 0,
                  &d->how);
    dir_arm(d, sqe, &d->s_open, D_OPENING);
}

static void dir_cqe_open(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res >= 0) {
        d->fd = res;
        d->state = D_OPEN;
        fs__dir_release(d->parent);
        dir_wake(d, 0, false);
    } else if (res == -ENOENT && !fs->closing && !fs->readonly &&
               dir_wants_create(d) && d->tries++ < MAX_RETRY) {
        /* Readers learn now that it is missing; creators wait for mkdir. */
        dir_wake(d, -ENOENT, true);
        struct io_uring_sqe *sqe = dir_sqe(d);
        if (sqe != NULL) {
            io_uring_prep_mkdirat(sqe, d->parent->fd, d->name, 0755);
            dir_arm(d, sqe, &d->s_mk, D_MKDIR);
        }
    } else {
        dir_abort(d, res);
    }
    fs__check_closed(fs);
}

static void dir_cqe_mk(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res == 0)
        fs->stats[STAT_MKDIR]++;
    if (res != 0 && res != -EEXIST) {
        dir_abort(d, res);
    } else if (fs->nofsync) {
        dir_submit_open(d);
    } else {
        /* EEXIST too: whoever made it may not have made it durable yet.
         * The new entry is durable once its parent is fsynced. */
        struct io_uring_sqe *sqe = dir_sqe(d);
        if (sqe != NULL) {
            io_uring_prep_fsync(sqe, d->parent->fd, 0);
            dir_arm(d, sqe, &d->s_mksync, D_MKSYNC);
            fs->stats[STAT_DIR_FSYNC]++;
        }
    }
    fs__check_closed(fs);
}

static void dir_cqe_mksync(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    if (res < 0)
        dir_abort(d, res);
    else
        dir_submit_open(d);
    fs__check_closed(fs);
}

/* Deliver res to every kop of a directory fsync's list. */
static void dir_synced_list(kop *k, int res)
{
    while (k != NULL) {
        kop *next = k->gnext;
        k->gnext = NULL;
        fs__kop_synced(k, res);
        k = next;
    }
}

/* Group commit: one fsync of d covers every kop queued before it starts. */
static void dir_sync_start(fsdir *d)
{
    fs_state *fs = d->fs;
    struct io_uring_sqe *sqe;
    d->sync_head = d->ready_head;
    d->ready_head = d->ready_tail = NULL;
    d->syncing = true;
    int rc = fs__ring_get(fs, &sqe, 1);
    if (rc != KV_OK) {
        kop *k = d->sync_head;
        d->sync_head = NULL;
        d->syncing = false;
        dir_synced_list(k, rc);
        return;
    }
    io_uring_prep_fsync(sqe, d->fd, 0);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&d->s_sync.op);
    d->sync_pos = kv__loop_ring(fs->loop)->sq.sqe_tail;
    fs->stats[STAT_DIR_FSYNC]++;
}

/*
 * True while d's fsync SQE still sits in the SQ, not yet flushed to the
 * kernel: it cannot have started, so it will cover every rename whose CQE
 * was already seen.  (liburing advances sq.sqe_head past an SQE when it
 * flushes it for io_uring_enter.)
 */
static bool dir_sync_unflushed(const fsdir *d)
{
    const struct io_uring *ring = kv__loop_ring(d->fs->loop);
    return (int)(d->sync_pos - ring->sq.sqe_head) > 0;
}

void fs__dir_sync_add(fsdir *d, kop *k)
{
    k->gnext = NULL;
    if (d->syncing && dir_sync_unflushed(d)) {
        /* Join the fsync that is about to be issued. */
        k->gnext = d->sync_head;
        d->sync_head = k;
        return;
    }
    if (d->ready_tail)
        d->ready_tail->gnext = k;
    else
        d->ready_head = k;
    d->ready_tail = k;
    if (!d->syncing)
        dir_sync_start(d);
}

void fs__dir_cqe_sync(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    fsdir *d = dir_of_cqe(op);
    fs_state *fs = d->fs;
    kop *k = d->sync_head;
    d->sync_head = NULL;
    d->syncing = false;
    /* Start the next round first: its kops hold d open. */
    if (d->ready_head != NULL)
        dir_sync_start(d);
    dir_synced_list(k, res);
    fs__check_closed(fs);
}

/* ------------------------------------------------------------------------ */
/* Spare files                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Replaced record files kept, while puts run, for later puts to overwrite
 * instead of creating a temp file; why it is fast and why it is safe: see
 * "Spare files" in docs/DESIGN.md, "backend/fs".
 */

static void spare_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    spare *sp = KV__CONTAINER_OF(op, spare, op);
    fs_state *fs = sp->fs;
    fs->nsqe--;
    if (res < 0 && res != -ENOENT)
        fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
    fs__dir_release(sp->d);
    kv__free(sp);
    fs__fd_released(fs);
    fs__check_closed(fs);
}

/* Take sp out of its directory's list and the store's FIFO (its directory
 * reference stays with sp). */
void fs__spare_unlink(fs_state *fs, spare *sp)
{
    fsdir *d = sp->d;
    for (spare **pp = &d->spares; *pp != NULL; pp = &(*pp)->dnext)
        if (*pp == sp) {
            *pp = sp->dnext;
            break;
        }
    sp->dnext = NULL;
    d->nspares--;
    if (sp->fprev)
        sp->fprev->fnext = sp->fnext;
    else
        fs->sp_head = sp->fnext;
    if (sp->fnext)
        sp->fnext->fprev = sp->fprev;
    else
        fs->sp_tail = sp->fprev;
    sp->fprev = sp->fnext = NULL;
    fs->nspares--;
    fs->spare_bytes -= sp->size;
}

/* Remove sp's file (not in any list; holds a reference on sp->d, open). */
void fs__spare_drop(fs_state *fs, spare *sp)
{
    struct io_uring_sqe *sqe;
    sp->fs = fs;
    sp->op.cb = spare_cqe;
    if (fs__ring_get(fs, &sqe, 1) != KV_OK) {
        fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
        fs__dir_release(sp->d);
        kv__free(sp);
        return;
    }
    io_uring_prep_unlinkat(sqe, sp->d->fd, sp->name, 0);
    io_uring_sqe_set_data64(sqe, (uintptr_t)&sp->op);
    fs->nrel++;
}

/* Remove every spare file (no put runs, close, drop). */
void fs__spares_drain(fs_state *fs)
{
    while (fs->sp_head != NULL) {
        spare *sp = fs->sp_head;
        fs__spare_unlink(fs, sp);
        fs__spare_drop(fs, sp);
    }
}

/* Keep sp (name and size set; holding a reference on d) as a spare of d,
 * removing the store's oldest spare if the store has fs->spare_max. */
static void spare_keep(fs_state *fs, fsdir *d, spare *sp)
{
    while (fs->sp_head != NULL &&
           (fs->nspares >= fs->spare_max ||
            fs->spare_bytes + sp->size > SPARE_BYTES)) {
        spare *old = fs->sp_head;
        fs__spare_unlink(fs, old);
        fs__spare_drop(fs, old);
    }
    sp->fs = fs;
    sp->d = d;
    sp->dnext = d->spares;
    d->spares = sp;
    d->nspares++;
    sp->fnext = NULL;
    sp->fprev = fs->sp_tail;
    if (fs->sp_tail)
        fs->sp_tail->fnext = sp;
    else
        fs->sp_head = sp;
    fs->sp_tail = sp;
    fs->nspares++;
    fs->spare_bytes += sp->size;
}

/* A spare of d to overwrite with a record of need bytes (one of that
 * length if any, else a shorter one), out of the lists; the caller takes
 * over its file and the directory reference is dropped (the caller holds
 * its own).  NULL if none fits. */
spare *fs__spare_take(fs_state *fs, fsdir *d, uint64_t need)
{
    spare *best = NULL;
    for (spare *sp = d->spares; sp != NULL; sp = sp->dnext) {
        if (sp->size == need) {
            best = sp;
            break;
        }
        if (sp->size < need && best == NULL)
            best = sp;
    }
    if (best != NULL) {
        fs__spare_unlink(fs, best);
        fs__dir_release(d);
    }
    return best;
}

/* Whether k (a put replacing a record, about to send its rename) should
 * exchange and keep the replaced file as a spare; reserves its place. */
bool fs__exch_want(kop *k)
{
    fs_state *fs = k->fs;
    fsdir *d = k->dir;
    if (k->cur_size == 0 || k->cur_size > SPARE_BYTES / 4 ||
        fs->nofsync || fs->no_exchange || fs->closing || fs->nputs < 2 ||
        fs->nforeign > 0 || fs->ndrops > 0 || d->stale ||
        d->nspares + d->nexch >= SPARE_DIR_MAX)
        return false;
    if (k->sp == NULL && (k->sp = kv__calloc(1, sizeof *k->sp)) == NULL)
        return false;
    d->nexch++;
    k->foreign_mark = fs->foreign_gen;
    return true;
}

void fs__exch_release(kop *k)
{
    if (k->exch) {
        k->exch = false;
        k->dir->nexch--;
    }
}

/* Whether a spare of d may be kept now. */
static bool spare_keepable(fs_state *fs, fsdir *d)
{
    return !fs->closing && fs->nputs > 1 && fs->ndrops == 0 && !d->stale &&
           d->nspares < SPARE_DIR_MAX;
}

/* k's exchange succeeded: its temp name now holds the replaced record's
 * file.  It may become a spare once the exchange is durable (fs__spare_synced)
 * if no reader outside the key queues could have it open; else remove
 * it. */
void fs__spare_made(kop *k)
{
    fs_state *fs = k->fs;
    fsdir *d = k->dir;
    spare *sp = k->sp;
    k->sp = NULL;
    fs__exch_release(k);
    fs->stats[STAT_EXCHANGED]++;
    memcpy(sp->name, k->tmpname, sizeof sp->name);
    sp->size = k->cur_size;
    sp->d = d;
    d->users++; /* the spare's reference (k holds one: d stays open) */
    if (fs->nforeign == 0 && fs->foreign_gen == k->foreign_mark &&
        spare_keepable(fs, d))
        k->sp_made = sp;
    else
        fs__spare_drop(fs, sp);
}

/* k's directory fsync completed with res: keep the file its exchange
 * replaced as a spare (the exchange is durable), or remove it. */
void fs__spare_synced(kop *k, int res)
{
    spare *sp = k->sp_made;
    if (sp == NULL)
        return;
    k->sp_made = NULL;
    if (res >= 0 && spare_keepable(k->fs, sp->d))
        spare_keep(k->fs, sp->d, sp);
    else
        fs__spare_drop(k->fs, sp);
}

/* A directory vanished under k (a drop): forget it and its parents. */
void fs__dir_invalidate_up(fsdir *d)
{
    for (fsdir *x = d; x != NULL; x = x->parent)
        dir_invalidate(x);
}

/* True if x's path relative to the root is path[0, len). */
static bool dir_is_path(const fsdir *x, const char *path, size_t len)
{
    size_t end = len;
    for (; !x->is_root; x = x->parent) {
        if (x->namelen > end ||
            memcmp(path + end - x->namelen, x->name, x->namelen) != 0)
            return false;
        end -= x->namelen;
        if (x->parent->is_root)
            return end == 0;
        if (end == 0 || path[end - 1] != '/')
            return false;
        end--;
    }
    return len == 0;
}

/* Forget cached directories at or below path ("" is everything). */
void fs__dir_invalidate_below(fs_state *fs, const char *path)
{
    size_t pl = strlen(path);
    fsdir *d = fs->dirs_all;
    /* dir_invalidate may free idle objects via a ring close later, never
     * now, so walking the list while invalidating is safe. */
    while (d != NULL) {
        fsdir *next = d->all_next;
        bool below = pl == 0;
        for (const fsdir *x = d; !below && !x->is_root; x = x->parent)
            below = dir_is_path(x, path, pl);
        if (!d->is_root && below)
            dir_invalidate(d);
        d = next;
    }
}
