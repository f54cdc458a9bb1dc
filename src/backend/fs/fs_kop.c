/*
 * fs_kop.c - the filesystem backend's record operations once started (loop
 * thread, every file operation through the ring): each kop is stepped by
 * its CQEs through the chains described under "Put" in docs/DESIGN.md.
 * Creating, queueing, admitting, finishing and cancelling kops, and the
 * token counter, are in fs_kq.c.
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
/* Record operations (loop thread, every file operation through the ring)   */
/* ------------------------------------------------------------------------ */

static void kop_step(kop *k);

void fs__kop_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)flags;
    kslot *sl = (kslot *)(void *)op;
    kop *k = sl->k;
    fs_state *fs = k->fs;
    sl->res = res;
    sl->busy = false;
    fs->nsqe--;
    bool rel = sl == &k->sl[SL_BG]; /* k may be freed below */
    if (--k->pending == 0)
        kop_step(k);
    if (rel)
        fs__fd_released(fs);
    fs__check_closed(fs);
}

/* Point sqe at slot s of k; link it to the next SQE if link. */
static void k_arm(kop *k, struct io_uring_sqe *sqe, int s, bool link)
{
    io_uring_sqe_set_data64(sqe, (uintptr_t)&k->sl[s].op);
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    k->sl[s].busy = true;
    k->sl[s].res = 0;
    k->pending++;
    k->fd_gen = k->fs->fd_gen;
}
static void k_msg(kop *k, const char *what, int res)
{
    if (k->errmsg != NULL || k->it == NULL)
        return;
    k->errmsg = kv__asprintf("fs: %s %s: %s", what, kv_key_id(k->it->key),
                             kv_strerror(res));
}

/* Close in the background; k stays alive until the CQE. */
static void k_bg_close(kop *k)
{
    if (k->fd < 0)
        return;
    struct io_uring_sqe *sqe;
    if (fs__ring_get(k->fs, &sqe, 1) != KV_OK) {
        close(k->fd);
    } else {
        io_uring_prep_close(sqe, k->fd);
        k_arm(k, sqe, SL_BG, false);
        k->fs->nrel++;
    }
    k->fd = -1;
}

/* Fail: close the descriptor, unlink the temp file, then finish. */
static void k_cleanup(kop *k, int status)
{
    k->err = status;
    unsigned n = (k->fd >= 0) + (k->tmp_exists && k->dir != NULL);
    if (n == 0) {
        fs__kop_finish(k, status);
        return;
    }
    struct io_uring_sqe *sq[2];
    if (fs__ring_get(k->fs, sq, n) != KV_OK) {
        if (k->fd >= 0)
            close(k->fd);
        k->fd = -1;
        if (k->tmp_exists)
            k->fs->stats[STAT_TMP_LEAKS]++; /* removed at the next open */
        k->tmp_exists = false;
        fs__kop_finish(k, status);
        return;
    }
    unsigned i = 0;
    if (k->fd >= 0) {
        io_uring_prep_close(sq[i], k->fd);
        k_arm(k, sq[i++], SL_CLOSE, false);
    }
    if (k->tmp_exists && k->dir != NULL) {
        io_uring_prep_unlinkat(sq[i], k->dir->fd, k->tmpname, 0);
        k_arm(k, sq[i], SL_NAME, false);
    }
    k->state = ST_CLEAN;
}

static void k_fail(kop *k, const char *what, int res)
{
    k_msg(k, what, res);
    k_cleanup(k, fs__to_kv(res));
}

static bool k_stop(const kop *k)
{
    return k->fs->closing || k->canceled;
}

/* If k must stop (close, cancel): release what it holds, finish it with
 * KV_ECANCELED and return true. */
static bool k_canceled(kop *k)
{
    if (!k_stop(k))
        return false;
    k_cleanup(k, KV_ECANCELED);
    return true;
}

/* n SQEs for k's next step; false after failing k if the ring refuses. */
static bool k_sqes(kop *k, struct io_uring_sqe **sq, unsigned n)
{
    int rc = fs__ring_get(k->fs, sq, n);
    if (rc != KV_OK) {
        k_fail(k, "submit", rc);
        return false;
    }
    return true;
}

/* Read the record's header from k->rgot on, then close it (linked). */
static void k_read_hdr(kop *k, struct io_uring_sqe *sq[2])
{
    io_uring_prep_read(sq[0], k->fd, k->rhdr + k->rgot,
                       (unsigned)(HDR_SIZE - k->rgot), k->rgot);
    k_arm(k, sq[0], SL_READ, true);
    io_uring_prep_close(sq[1], k->fd);
    k_arm(k, sq[1], SL_CLOSE, false);
}

static void k_open_record(kop *k)
{
    struct io_uring_sqe *sqe;
    if (!k_sqes(k, &sqe, 1))
        return;
    fs__prep_open(k->fs, sqe, k->dir->fd, k->fname, O_RDONLY | O_NONBLOCK, 0,
                  &k->how);
    k_arm(k, sqe, SL_OPEN, false);
    k->state = ST_OPEN;
}

/*
 * A descriptor could not be had (res -EMFILE or -ENFILE): if one of the
 * store's will come free without k (fs__fd_can_wait: other kops run, the
 * store keeps idle directories or spares, or a close is in flight), or
 * some came free since k submitted the open (fd_gen: the open ran before
 * closes whose completions came first, so the EMFILE may be stale), wait
 * for it and start again (fs__kop_park), and return true; k holds no
 * descriptor here but maybe its directory, which it lets go.
 */
static bool k_fd_wait(kop *k, int res)
{
    fs_state *fs = k->fs;
    if ((res != -EMFILE && res != -ENFILE) || k_stop(k))
        return false;
    fs__fd_short(fs);
    if (k->fd_waits >= FD_WAITS_MAX || k->fd >= 0 ||
        (!fs__fd_can_wait(fs) && k->fd_gen == fs->fd_gen))
        return false;
    if (k->dir != NULL) {
        fs__dir_release(k->dir);
        k->dir = NULL;
    }
    fs__kop_park(k);
    return true;
}

static void k_dir_ready(waiter *w, int res)
{
    kop *k = KV__CONTAINER_OF(w, kop, dw);
    if (res < 0) {
        fsdir *d = k->dir; /* alive while its waiters run */
        k->dir = NULL;
        if (k_stop(k)) {
            fs__kop_finish(k, KV_ECANCELED);
        } else if (k_fd_wait(k, res)) {
            return;
        } else if (res == -ENOENT && k->kind != K_PUT) {
            fs__kop_finish(k, k->kind == K_DEL && !k->it->any ? KV_ECONFLICT
                                                              : KV_ENOTFOUND);
        } else if (res == -ENOENT && k->retries++ < MAX_RETRY) {
            fs__dir_invalidate_up(d); /* then retry */
            fs__kop_start(k);
        } else if (res == -ELOOP || res == -ENOTDIR) {
            k_msg(k, "a path component is a symlink or not a directory:",
                  res);
            fs__kop_finish(k, KV_EBACKEND);
        } else {
            k_msg(k, "open directory of", res);
            fs__kop_finish(k, fs__to_kv(res));
        }
        return;
    }
    if (!k_canceled(k))
        k_open_record(k);
}

void fs__kop_start(kop *k)
{
    fs_state *fs = k->fs;
    if (k_canceled(k) || !fs__kop_admit(k))
        return;
    k->fd_gen = fs->fd_gen;
    if (k->kind == K_PUT && !k->put_counted) {
        k->put_counted = true;
        fs->nputs++;
    }
    fsdir *d = fs__dir_get(fs, k->dirpath);
    if (d == NULL) {
        fs__kop_finish(k, KV_ENOMEM);
        return;
    }
    k->state = ST_DIR;
    k->dir = d;
    k->dw.fn = k_dir_ready;
    if (fs__dir_use(d, &k->dw, k->kind == K_PUT))
        k_dir_ready(&k->dw, 0);
}

static void put_tmp(kop *k);
static void put_rename(kop *k);

void fs__kop_token_ready(kop *k)
{
    if (k_canceled(k))
        return;
    int rc = fs__tok_take(k->fs, &k->new_token);
    if (rc == 1) {
        put_tmp(k);
    } else if (rc == 0) {
        k->state = ST_TOKEN;
        k->gnext = NULL;
        if (k->fs->tok_tail)
            k->fs->tok_tail->gnext = k;
        else
            k->fs->tok_head = k;
        k->fs->tok_tail = k;
    } else {
        k_msg(k, "reserve a token for", rc);
        fs__kop_finish(k, rc);
    }
}

/* The current token is cur (0: absent; an unconditional put ignores it). */
static void put_cas(kop *k, uint64_t cur)
{
    if (!k->it->any && k->it->token != cur) {
        fs__kop_finish(k, KV_ECONFLICT);
        return;
    }
    if (k->new_token != 0)
        put_tmp(k); /* kept from an earlier attempt */
    else
        fs__kop_token_ready(k);
}

static void put_tmp(kop *k)
{
    fs_state *fs = k->fs;
    if (k_canceled(k))
        return;
    int flags = O_WRONLY | O_CREAT | O_EXCL;
    spare *sp = k->no_spare ? NULL
                            : fs__spare_take(fs, k->dir,
                                             HDR_SIZE + (uint64_t)k->it->len);
    k->reused = sp != NULL;
    if (sp != NULL) {
        /* Overwrite a spare file (see "Spare files"). */
        kv__free(k->sp);
        k->sp = sp;
        memcpy(k->tmpname, sp->name, sizeof k->tmpname);
        flags = O_WRONLY;
    } else {
        snprintf(k->tmpname, sizeof k->tmpname, TMP_PREFIX "%016" PRIx64,
                 fs->tmp_seq++);
    }
    struct io_uring_sqe *sqe;
    int rc = fs__ring_get(fs, &sqe, 1);
    if (rc != KV_OK) {
        /* (A spare taken is gone from the lists, its file left over.) */
        if (k->reused)
            fs->stats[STAT_TMP_LEAKS]++;
        k->reused = false;
        k_fail(k, "submit", rc);
        return;
    }
    fs__prep_open(fs, sqe, k->dir->fd, k->tmpname, flags, 0644, &k->how);
    k_arm(k, sqe, SL_OPEN, false);
    k->state = ST_TMP;
}

/* writev -> fsync -> close -> renameat, linked, from woff on. */
static void put_chain(kop *k)
{
    fs_state *fs = k->fs;
    uint64_t off = k->woff;
    unsigned niov;
    if (off < HDR_SIZE) {
        k->iov[0].iov_base = k->whdr + off;
        k->iov[0].iov_len = HDR_SIZE - off;
        k->iov[1].iov_base = k->it->val;
        k->iov[1].iov_len = k->it->len;
        niov = k->it->len > 0 ? 2 : 1;
    } else {
        k->iov[0].iov_base = (char *)k->it->val + (off - HDR_SIZE);
        k->iov[0].iov_len = k->it->len - (off - HDR_SIZE);
        niov = 1;
    }
    unsigned n = fs->nofsync ? 3 : 4, i = 0;
    struct io_uring_sqe *sq[4];
    if (!k_sqes(k, sq, n))
        return;
    io_uring_prep_writev(sq[i], k->fd, k->iov, niov, off);
    k_arm(k, sq[i++], SL_WRITE, true);
    k->fsync_in_chain = !fs->nofsync;
    if (k->fsync_in_chain) {
        /* A spare is not a new file: fdatasync writes its data and, if
         * it grew, its length; no directory entry, no timestamps. */
        io_uring_prep_fsync(sq[i], k->fd,
                            k->reused ? IORING_FSYNC_DATASYNC : 0);
        k_arm(k, sq[i++], SL_FSYNC, true);
    }
    io_uring_prep_close(sq[i], k->fd);
    k_arm(k, sq[i++], SL_CLOSE, true);
    io_uring_prep_renameat(sq[i], k->dir->fd, k->tmpname, k->dir->fd,
                           k->fname, k->exch ? RENAME_EXCHANGE : 0);
    k_arm(k, sq[i], SL_NAME, false);
    k->state = ST_WRITE;
}

void fs__kop_synced(kop *k, int res)
{
    fs__spare_synced(k, res);
    if (res < 0) {
        /* Final: the rename may not survive a crash; never retried. */
        k_msg(k, "fsync directory of", res);
        fs__kop_finish(k, fs__to_kv(res));
    } else {
        fs__kop_finish(k, KV_OK);
    }
}

/* The record was renamed / unlinked: sync its directory (group commit). */
static void k_committed(kop *k)
{
    if (k->fs->nofsync) {
        fs__kop_finish(k, KV_OK);
        return;
    }
    k->state = ST_DSYNC;
    fs__dir_sync_add(k->dir, k);
}

/* The current token is cur (0: absent).  An unconditional delete removes
 * whatever is there (KV_ENOTFOUND if nothing is). */
static void del_cas(kop *k, uint64_t cur)
{
    if (cur == 0 && k->it->any) {
        fs__kop_finish(k, KV_ENOTFOUND);
        return;
    }
    if (cur == 0 || (!k->it->any && k->it->token != cur)) {
        fs__kop_finish(k, KV_ECONFLICT);
        return;
    }
    struct io_uring_sqe *sqe;
    if (k_canceled(k) || !k_sqes(k, &sqe, 1))
        return;
    io_uring_prep_unlinkat(sqe, k->dir->fd, k->fname, 0);
    k_arm(k, sqe, SL_NAME, false);
    k->state = ST_UNLINK;
}

static void on_open(kop *k)
{
    int res = k->sl[SL_OPEN].res;
    if (res < 0) {
        if (res == -ENOENT) {
            k->cur_size = 0;
            if (k->kind == K_PUT)
                put_cas(k, 0);
            else if (k->kind == K_DEL)
                del_cas(k, 0);
            else
                fs__kop_finish(k, KV_ENOTFOUND);
        } else if (res == -ELOOP) {
            k_msg(k, "record file is a symlink:", res);
            fs__kop_finish(k, KV_ECORRUPT);
        } else if (k_fd_wait(k, res)) {
            return;
        } else {
            k_fail(k, "open", res);
        }
        return;
    }
    k->fd = res;
    if (k_canceled(k))
        return;
    bool whole = k->kind == K_GET && k->want_value;
    unsigned n = whole ? 1 : 2;
    if (whole) {
        k->rcap = READ_FIRST;
        /* Zeroed: tools that cannot see the ring's writes (valgrind) would
         * take the buffer for uninitialised. */
        k->rbuf = kv__calloc(1, k->rcap);
        if (k->rbuf == NULL) {
            k_fail(k, "read", KV_ENOMEM);
            return;
        }
    }
    struct io_uring_sqe *sq[2];
    if (!k_sqes(k, sq, n))
        return;
    k->rgot = 0;
    if (whole) {
        k->rreq = k->rcap;
        io_uring_prep_read(sq[0], k->fd, k->rbuf, (unsigned)k->rreq, 0);
        k_arm(k, sq[0], SL_READ, false);
        k->state = ST_READ;
    } else {
        k_read_hdr(k, sq);
        k->state = ST_HDR;
    }
}

static void on_hdr(kop *k)
{
    int r = k->sl[SL_READ].res, c = k->sl[SL_CLOSE].res;
    if (c != -ECANCELED)
        k->fd = -1; /* closed, even if close reported an error */
    uint64_t tok = 0, vlen;
    uint32_t vcrc;
    if (r < 0) {
        k_fail(k, "read", r);
        return;
    }
    k->rgot += (size_t)r;
    if (k->rgot < HDR_SIZE && r > 0 && k->fd >= 0 && !k_stop(k)) {
        /* A short read is not the end of the file (only a read of 0 bytes
         * is): read the rest; the linked close was cancelled. */
        struct io_uring_sqe *sq[2];
        if (k_sqes(k, sq, 2))
            k_read_hdr(k, sq);
        return;
    }
    if (k->rgot < HDR_SIZE || !fs__hdr_parse(k->rhdr, &tok, &vlen, &vcrc)) {
        if (k->it->any && (k->kind == K_PUT || k->kind == K_DEL)) {
            /* An unconditional write needs no token: replace or remove
             * the corrupt file (not kept as a spare: cur_size 0). */
            k_bg_close(k);
            k->cur_size = 0;
            if (k->kind == K_PUT)
                put_cas(k, 0);
            else
                del_cas(k, KV_TOKEN_ANY);
            return;
        }
        k_msg(k, "corrupt record header of", KV_ECORRUPT);
        k_cleanup(k, KV_ECORRUPT);
        return;
    }
    k_bg_close(k); /* only if the linked close did not run */
    k->cur_size = HDR_SIZE + vlen;
    switch (k->kind) {
    case K_PUT:
        put_cas(k, tok);
        break;
    case K_DEL:
        del_cas(k, tok);
        break;
    default:
        k->it->token = tok;
        fs__kop_finish(k, KV_OK);
        break;
    }
}

static void on_read(kop *k)
{
    int r = k->sl[SL_READ].res;
    if (r < 0) {
        k_fail(k, "read", r);
        return;
    }
    k->rgot += (size_t)r;
    bool eof = (size_t)r < k->rreq;
    uint64_t tok = 0, vlen = 0;
    uint32_t vcrc = 0;
    bool hdr_ok =
        k->rgot >= HDR_SIZE && fs__hdr_parse(k->rbuf, &tok, &vlen, &vcrc);
    /* A short read is not the end of the file (a read of 0 bytes is):
     * before the record's announced end, read on. */
    if (eof && r > 0 && k->rgot < HDR_SIZE + (hdr_ok ? vlen : 0))
        eof = false;
    if (!hdr_ok && (eof || k->rgot >= HDR_SIZE))
        goto corrupt;
    if (!eof) {
        size_t total = HDR_SIZE + (size_t)vlen;
        if (k->rgot > total)
            goto corrupt; /* more bytes than the header says */
        if (k->rgot == k->rcap) {
            /* Room for the whole record and one byte more (to see EOF). */
            unsigned char *nb = kv__realloc(k->rbuf, total + 1);
            if (nb == NULL) {
                k_fail(k, "read", KV_ENOMEM);
                return;
            }
            memset(nb + k->rcap, 0, total + 1 - k->rcap);
            k->rbuf = nb;
            k->rcap = total + 1;
        }
        size_t want = k->rcap - k->rgot;
        k->rreq = want > (1u << 30) ? (1u << 30) : want;
        struct io_uring_sqe *sqe;
        if (!k_sqes(k, &sqe, 1))
            return;
        io_uring_prep_read(sqe, k->fd, k->rbuf + k->rgot, (unsigned)k->rreq,
                           k->rgot);
        k_arm(k, sqe, SL_READ, false);
        return;
    }
    if (k->rgot != HDR_SIZE + vlen ||
        fs__crc32c(k->rbuf + HDR_SIZE, (size_t)vlen) != vcrc)
        goto corrupt;
    memmove(k->rbuf, k->rbuf + HDR_SIZE, (size_t)vlen);
    k->it->val = k->rbuf;
    k->it->len = (size_t)vlen;
    k->it->token = tok;
    k->rbuf = NULL;
    k_bg_close(k);
    fs__kop_finish(k, KV_OK);
    return;
corrupt:
    k_msg(k, "corrupt record", KV_ECORRUPT);
    k_cleanup(k, KV_ECORRUPT);
}

static void on_tmp(kop *k)
{
    int res = k->sl[SL_OPEN].res;
    if (res >= 0) {
        k->fd = res;
        k->tmp_exists = true;
        if (k_canceled(k))
            return;
        if (k->reused)
            k->fs->stats[STAT_RECYCLED]++;
        fs__hdr_make(k->whdr, k->new_token, k->it->val, k->it->len);
        k->woff = 0;
        k->wtotal = HDR_SIZE + (uint64_t)k->it->len;
        k->exch = fs__exch_want(k);
        put_chain(k);
    } else if (k->reused) {
        /* The spare cannot be opened: remove it (if it is still there)
         * and create a temp file instead. */
        spare *sp = k->sp;
        k->sp = NULL;
        sp->d = k->dir;
        k->dir->users++; /* fs__spare_drop's reference */
        fs__spare_drop(k->fs, sp);
        k->reused = false;
        k->no_spare = true;
        put_tmp(k);
    } else if (res == -EEXIST && k->retries++ < MAX_RETRY) {
        put_tmp(k);
    } else if (k_fd_wait(k, res)) {
        return;
    } else if (res == -ENOENT && k->retries++ < MAX_RETRY) {
        /* The directory was removed (drop) after we opened it. */
        fs__dir_invalidate_up(k->dir);
        fs__dir_release(k->dir);
        k->dir = NULL;
        fs__kop_start(k);
    } else {
        k_fail(k, "create temp file for", res);
    }
}

static void on_write(kop *k)
{
    fs_state *fs = k->fs;
    int w = k->sl[SL_WRITE].res;
    int f = k->fsync_in_chain ? k->sl[SL_FSYNC].res : 0;
    int c = k->sl[SL_CLOSE].res, r = k->sl[SL_NAME].res;
    if (c != -ECANCELED)
        k->fd = -1;
    if (k->fsync_in_chain && f != -ECANCELED)
        fs->stats[STAT_FILE_FSYNC]++;
    if (w < 0) {
        k_fail(k, "write", w);
        return;
    }
    k->woff += (uint64_t)w;
    if (k->woff < k->wtotal) {
        /* Short write: the rest of the chain was cancelled; resume. */
        fs->stats[STAT_SHORT_WRITES]++;
        if (w == 0 || k->fd < 0)
            k_fail(k, "write", -EIO);
        else if (!k_canceled(k))
            put_chain(k);
        return;
    }
    if (f < 0) {
        k_fail(k, "fsync", f); /* final: never retried */
        return;
    }
    if (c < 0) {
        k_fail(k, "close", c);
        return;
    }
    if (r < 0 && k->exch &&
        (r == -ENOENT || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOSYS)) {
        /* The record is gone (a drop), or the file system cannot
         * exchange: the file is complete and synced, rename it. */
        if (r != -ENOENT)
            fs->no_exchange = true;
        fs__exch_release(k);
        put_rename(k);
        return;
    }
    if (r < 0) {
        k_fail(k, "rename", r);
        return;
    }
    k->tmp_exists = false;
    if (k->exch)
        fs__spare_made(k);
    k_committed(k);
}

/* A plain rename of the synced temp file (after a refused exchange). */
static void put_rename(kop *k)
{
    struct io_uring_sqe *sqe;
    if (k_canceled(k) || !k_sqes(k, &sqe, 1))
        return;
    io_uring_prep_renameat(sqe, k->dir->fd, k->tmpname, k->dir->fd,
                           k->fname, 0);
    k_arm(k, sqe, SL_NAME, false);
    k->state = ST_RENAME;
}

static void on_rename(kop *k)
{
    int r = k->sl[SL_NAME].res;
    if (r < 0) {
        k_fail(k, "rename", r);
        return;
    }
    k->tmp_exists = false;
    k_committed(k);
}

static void on_unlink(kop *k)
{
    int r = k->sl[SL_NAME].res;
    if (r == 0)
        k_committed(k);
    else if (r == -ENOENT)
        fs__kop_finish(k, k->it->any ? KV_ENOTFOUND : KV_ECONFLICT);
    else
        k_fail(k, "unlink", r);
}

static void on_clean(kop *k)
{
    if (k->fd >= 0)
        k->fd = -1; /* the close ran (an error still releases the fd) */
    if (k->tmp_exists) {
        int r = k->sl[SL_NAME].res;
        if (r < 0 && r != -ENOENT)
            k->fs->stats[STAT_TMP_LEAKS]++;
        k->tmp_exists = false;
    }
    fs__kop_finish(k, k->err);
}

static void kop_step(kop *k)
{
    switch (k->state) {
    case ST_OPEN:
        on_open(k);
        break;
    case ST_HDR:
        on_hdr(k);
        break;
    case ST_READ:
        on_read(k);
        break;
    case ST_TMP:
        on_tmp(k);
        break;
    case ST_WRITE:
        on_write(k);
        break;
    case ST_RENAME:
        on_rename(k);
        break;
    case ST_UNLINK:
        on_unlink(k);
        break;
    case ST_CLEAN:
        on_clean(k);
        break;
    case ST_DONE:
        fs__kop_free(k);
        break;
    default:
        break;
    }
}
