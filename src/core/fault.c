/*
 * fault.c - a test-only fault injector for ring operations.
 *
 * Compiled only into the test library (KV_TEST_HOOKS, see Makefile.am);
 * there it is inert unless armed (one relaxed atomic load per submit and
 * per CQE), and the installed library has none of it.
 * kv__fault_arm(loop, opcode, nth, res) makes the nth operation of a kind
 * submitted from then on (on loop, or on any loop if NULL) fail with res
 * (a negated errno) or, with res >= 0, transfer at most res bytes (a short
 * read/write).
 *
 * It works on the SQ array itself, right before the loop submits: every
 * SQE between liburing's sqe_head (the first one not yet flushed to the
 * kernel) and sqe_tail is inspected, so the injection does not depend on
 * who executes the SQEs (the kernel or an emulation reading the same
 * array).
 *  - A failure rewrites the SQE into an IORING_OP_NOP with the same
 *    user_data and link flags and remembers user_data -> res; its CQE's
 *    res is then substituted at dispatch (kv__fault_cqe).  A CLOSE is
 *    left to run (close(2) releases the descriptor even when it reports
 *    an error) and only its result is substituted.
 *  - A failed op in an IOSQE_IO_LINK chain cancels the rest, and so does
 *    a short read/write (measured: see MEASURED.md): the following linked
 *    SQEs become NOPs reported as -ECANCELED.  IOSQE_IO_HARDLINK chains go
 *    on, as the kernel's do.
 *  - A short count shortens sqe->len (READV/WRITEV become READ/WRITE of
 *    the first iovec, shortened), so the kernel really transfers fewer
 *    bytes at the same offset.
 * Reserved user_data (< 4096: the loop's eventfd read, cancels, ...) is
 * never counted nor touched.
 *
 * Recording mode (kv__fault_record_start) looks at the same SQEs, after any
 * injection, and keeps the file-system operations among them with their
 * arguments (a copy of the bytes of a write, the inode behind each
 * descriptor) until their CQEs give their results; the power-loss tests
 * rebuild from that trace the states a crash may leave.  Its memory comes
 * from plain malloc, not kv__malloc, so that recording never shifts the
 * allocation counts the allocation-failure tests rely on.
 *
 * Loop thread only (the armed loop's); the state is global, for tests.
 */
#include "config.h"

#ifndef KV_TEST_HOOKS
#error "fault.c belongs to the test library only (KV_TEST_HOOKS)"
#endif

#include "core/core_int.h"
#include "core/fault.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

#define UD_RESERVED_MAX ((uint64_t)4095)
#define NSUBST 256

typedef struct subst {
    kv_loop *loop;
    uint64_t ud;
    int res;
    bool nop; /* the SQE became a NOP: a -ECANCELED from the kernel stays */
    bool used;
} subst;

static struct {
    atomic_bool active; /* armed, or substitutions pending */
    bool armed;
    kv_loop *loop;      /* NULL: any loop */
    int kind;           /* canonical opcode, -1: count only */
    unsigned long nth;
    int res;
    unsigned long seen[256]; /* per canonical opcode, since arm */
    unsigned long hits;      /* injections since arm */
    subst subs[NSUBST];
    size_t nsubs;
    kv_loop *last_loop;
    unsigned scanned; /* SQ position scanned up to on last_loop */
} F;

/* OPENAT2 counts as OPENAT, READV/READ_FIXED as READ, and so on. */
static int canon(int op)
{
    switch (op) {
    case IORING_OP_OPENAT2:
        return IORING_OP_OPENAT;
    case IORING_OP_READV:
    case IORING_OP_READ_FIXED:
        return IORING_OP_READ;
    case IORING_OP_WRITEV:
    case IORING_OP_WRITE_FIXED:
        return IORING_OP_WRITE;
    default:
        return op;
    }
}

/* The recorder's state (loop thread). */
typedef struct pend {
    kv_loop *loop;
    uint64_t ud;
    kv__frec r;
} pend;

static struct {
    bool on;
    bool lost;      /* an allocation failed: the trace is incomplete */
    kv_loop *loop;  /* NULL: any loop */
    uint64_t nsub;  /* operations recorded at submit */
    uint64_t chain; /* the current chain's number */
    bool linked;    /* the previous SQE links to the next one */
    pend *pend;     /* submitted, CQE not seen yet */
    size_t npend, cappend;
    kv__frec *done; /* completed, in CQE order */
    size_t ndone, capdone;
} R;

static void update_active(void)
{
    atomic_store_explicit(&F.active, F.armed || F.nsubs > 0 || R.on,
                          memory_order_relaxed);
}

void kv__fault_arm(kv_loop *loop, int opcode, unsigned long nth, int res)
{
    F.armed = true;
    F.loop = loop;
    F.kind = opcode < 0 ? -1 : canon(opcode);
    F.nth = nth;
    F.res = res;
    memset(F.seen, 0, sizeof F.seen);
    F.hits = 0;
    update_active();
}

void kv__fault_disarm(void)
{
    F.armed = false;
    update_active();
}

unsigned long kv__fault_hits(void)
{
    return F.hits;
}

unsigned long kv__fault_seen(int opcode)
{
    int k = canon(opcode);
    return k >= 0 && k < 256 ? F.seen[k] : 0;
}

static void remember(kv_loop *loop, uint64_t ud, int res, bool nop)
{
    for (size_t i = 0; i < NSUBST; i++) {
        if (!F.subs[i].used) {
            F.subs[i] = (subst){loop, ud, res, nop, true};
            F.nsubs++;
            return;
        }
    }
    /* Table full (cannot happen with one injection at a time). */
}

static struct io_uring_sqe *sqe_at(struct io_uring *ring, unsigned pos)
{
    unsigned shift = (ring->flags & IORING_SETUP_SQE128) ? 1 : 0;
    return &ring->sq.sqes[(pos & ring->sq.ring_mask) << shift];
}

static void make_nop(struct io_uring_sqe *sqe)
{
    uint64_t ud = sqe->user_data;
    uint8_t flags = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK |
                                  IOSQE_IO_DRAIN | IOSQE_ASYNC);
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_NOP;
    sqe->flags = flags;
    sqe->user_data = ud;
}

/* Shorten a read/write to at most max bytes (and below its length).  False
 * if it cannot be made short (nothing to transfer). */
static bool make_short(struct io_uring_sqe *sqe, unsigned max)
{
    int k = canon(sqe->opcode);
    if (k != IORING_OP_READ && k != IORING_OP_WRITE)
        return false;
    if (sqe->opcode == IORING_OP_READV || sqe->opcode == IORING_OP_WRITEV) {
        const struct iovec *iov =
            (const struct iovec *)(uintptr_t)sqe->addr;
        size_t total = 0;
        for (unsigned i = 0; i < sqe->len; i++)
            total += iov[i].iov_len;
        if (sqe->len == 0 || total == 0)
            return false;
        size_t n = iov[0].iov_len;
        if (n > max)
            n = max;
        if (n >= total)
            n = total - 1;
        sqe->opcode = k == IORING_OP_READ ? IORING_OP_READ : IORING_OP_WRITE;
        sqe->addr = (uint64_t)(uintptr_t)iov[0].iov_base;
        sqe->len = (uint32_t)n;
        return true;
    }
    if (sqe->len == 0)
        return false;
    sqe->len = sqe->len - 1 < max ? sqe->len - 1 : max;
    return true;
}

static void inject(kv_loop *loop, struct io_uring *ring, unsigned pos,
                   unsigned tail)
{
    struct io_uring_sqe *sqe = sqe_at(ring, pos);
    F.hits++;
    bool cancels; /* the rest of its link chain */
    if (F.res >= 0) {
        if (!make_short(sqe, (unsigned)F.res))
            return; /* nothing to shorten: counted, not injected */
        cancels = (sqe->flags & IOSQE_IO_LINK) != 0;
    } else if (sqe->opcode == IORING_OP_CLOSE) {
        remember(loop, sqe->user_data, F.res, false);
        cancels = (sqe->flags & IOSQE_IO_LINK) != 0;
        sqe->flags &= (uint8_t)~(IOSQE_IO_LINK | IOSQE_IO_HARDLINK);
    } else {
        cancels = (sqe->flags & IOSQE_IO_LINK) != 0;
        remember(loop, sqe->user_data, F.res, true);
        make_nop(sqe);
    }
    /* The failed link cancels every following SQE of its chain. */
    while (cancels && pos + 1 != tail) {
        pos++;
        sqe = sqe_at(ring, pos);
        cancels = (sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) != 0;
        if (sqe->user_data > UD_RESERVED_MAX)
            remember(loop, sqe->user_data, -ECANCELED, true);
        make_nop(sqe);
    }
}

/* ------------------------------------------------------------------------ */
/* Recording mode                                                           */
/* ------------------------------------------------------------------------ */

static void rec_free(kv__frec *r)
{
    free(r->path);
    free(r->path2);
    free(r->data);
    memset(r, 0, sizeof *r);
}

static void pend_clear(void)
{
    for (size_t i = 0; i < R.npend; i++)
        rec_free(&R.pend[i].r);
    R.npend = 0;
}

static void done_clear(void)
{
    for (size_t i = 0; i < R.ndone; i++)
        rec_free(&R.done[i]);
    R.ndone = 0;
}

/* The inode behind fd (0 for AT_FDCWD or a failed fstat); *isdir set. */
static uint64_t fd_ino(int fd, bool *isdir)
{
    struct stat st;
    if (isdir != NULL)
        *isdir = false;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 0;
    if (isdir != NULL)
        *isdir = S_ISDIR(st.st_mode);
    return (uint64_t)st.st_ino;
}

static bool dup_str(char **out, uint64_t addr)
{
    const char *p = (const char *)(uintptr_t)addr;
    *out = NULL;
    if (p == NULL)
        return true;
    *out = strdup(p);
    return *out != NULL;
}

/* Copy the bytes a WRITE/WRITEV would write. */
static bool copy_data(kv__frec *r, const struct io_uring_sqe *sqe)
{
    size_t total = 0;
    const struct iovec *iov = (const struct iovec *)(uintptr_t)sqe->addr;
    if (sqe->opcode == IORING_OP_WRITEV) {
        for (unsigned i = 0; i < sqe->len; i++)
            total += iov[i].iov_len;
    } else {
        total = sqe->len;
    }
    r->data = malloc(total > 0 ? total : 1);
    if (r->data == NULL)
        return false;
    r->len = total;
    if (sqe->opcode == IORING_OP_WRITEV) {
        size_t at = 0;
        for (unsigned i = 0; i < sqe->len; i++) {
            if (iov[i].iov_len > 0)
                memcpy(r->data + at, iov[i].iov_base, iov[i].iov_len);
            at += iov[i].iov_len;
        }
    } else if (total > 0) {
        memcpy(r->data, (const void *)(uintptr_t)sqe->addr, total);
    }
    return true;
}

static void record_sqe(kv_loop *loop, const struct io_uring_sqe *sqe)
{
    kv__frec r;
    memset(&r, 0, sizeof r);
    if (!R.linked)
        R.chain++;
    R.linked = (sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) != 0;
    r.chain = R.chain;
    r.fd = r.fd2 = -1;
    r.op = canon(sqe->opcode);
    bool ok = true;
    switch (sqe->opcode) {
    case IORING_OP_OPENAT:
    case IORING_OP_OPENAT2:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        ok = dup_str(&r.path, sqe->addr);
        if (sqe->opcode == IORING_OP_OPENAT2) {
            const struct open_how *how =
                (const struct open_how *)(uintptr_t)sqe->addr2;
            r.flags = how != NULL ? how->flags : 0;
        } else {
            r.flags = sqe->open_flags;
        }
        break;
    case IORING_OP_WRITE:
    case IORING_OP_WRITEV:
    case IORING_OP_WRITE_FIXED:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        r.off = sqe->off;
        ok = copy_data(&r, sqe);
        break;
    case IORING_OP_FSYNC:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        r.flags = sqe->fsync_flags;
        break;
    case IORING_OP_CLOSE:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        break;
    case IORING_OP_RENAMEAT:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        r.fd2 = (int)sqe->len;
        r.ino2 = fd_ino(r.fd2, NULL);
        r.flags = sqe->rename_flags;
        ok = dup_str(&r.path, sqe->addr) && dup_str(&r.path2, sqe->addr2);
        break;
    case IORING_OP_UNLINKAT:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        r.flags = sqe->unlink_flags;
        ok = dup_str(&r.path, sqe->addr);
        break;
    case IORING_OP_MKDIRAT:
        r.fd = sqe->fd;
        r.ino = fd_ino(sqe->fd, &r.isdir);
        ok = dup_str(&r.path, sqe->addr);
        break;
    default:
        return; /* reads, statx, timeouts, sockets: not recorded */
    }
    if (ok && R.npend == R.cappend) {
        size_t cap = R.cappend ? 2 * R.cappend : 64;
        pend *p = realloc(R.pend, cap * sizeof *p);
        if (p == NULL) {
            ok = false;
        } else {
            R.pend = p;
            R.cappend = cap;
        }
    }
    if (!ok) {
        R.lost = true;
        rec_free(&r);
        return;
    }
    r.seq = R.nsub++;
    R.pend[R.npend++] = (pend){loop, sqe->user_data, r};
}

/* The CQE of a recorded operation: complete it and append it. */
static void record_cqe(kv_loop *loop, uint64_t ud, int res)
{
    size_t i;
    for (i = 0; i < R.npend; i++)
        if (R.pend[i].loop == loop && R.pend[i].ud == ud)
            break;
    if (i == R.npend)
        return;
    kv__frec r = R.pend[i].r;
    R.pend[i] = R.pend[--R.npend];
    r.res = res;
    r.nsub = R.nsub;
    if (r.op == IORING_OP_OPENAT && res >= 0) {
        r.res_ino = fd_ino(res, NULL);
    } else if (r.op == IORING_OP_MKDIRAT && res == 0) {
        struct stat st;
        if (fstatat(r.fd, r.path, &st, AT_SYMLINK_NOFOLLOW) == 0)
            r.res_ino = (uint64_t)st.st_ino;
    }
    if (R.ndone == R.capdone) {
        size_t cap = R.capdone ? 2 * R.capdone : 256;
        kv__frec *d = realloc(R.done, cap * sizeof *d);
        if (d == NULL) {
            R.lost = true;
            rec_free(&r);
            return;
        }
        R.done = d;
        R.capdone = cap;
    }
    R.done[R.ndone++] = r;
}

int kv__fault_record_start(kv_loop *loop)
{
    pend_clear();
    done_clear();
    R.lost = false;
    R.nsub = 0;
    R.chain = 0;
    R.linked = false;
    R.loop = loop;
    R.on = true;
    update_active();
    return KV_OK;
}

void kv__fault_record_stop(void)
{
    R.on = false;
    pend_clear();
    update_active();
}

size_t kv__fault_record_count(void)
{
    return R.ndone;
}

const kv__frec *kv__fault_record_get(size_t i)
{
    return i < R.ndone ? &R.done[i] : NULL;
}

uint64_t kv__fault_record_submitted(void)
{
    return R.nsub;
}

bool kv__fault_record_lost(void)
{
    return R.lost;
}

void kv__fault_record_free(void)
{
    kv__fault_record_stop();
    done_clear();
    free(R.done);
    free(R.pend);
    R.done = NULL;
    R.pend = NULL;
    R.capdone = R.cappend = 0;
}

void kv__fault_before_submit(kv_loop *loop)
{
    if (!atomic_load_explicit(&F.active, memory_order_relaxed))
        return;
    bool inj = F.armed && (F.loop == NULL || F.loop == loop);
    bool rec = R.on && (R.loop == NULL || R.loop == loop);
    if (!inj && !rec)
        return;
    struct io_uring *ring = kv__loop_ring(loop);
    unsigned head = ring->sq.sqe_head, tail = ring->sq.sqe_tail;
    unsigned pos = head;
    /* Never look at an SQE twice (a submit that flushed nothing). */
    if (F.last_loop == loop && (int)(F.scanned - head) > 0 &&
        (int)(tail - F.scanned) >= 0)
        pos = F.scanned;
    for (; pos != tail; pos++) {
        struct io_uring_sqe *sqe = sqe_at(ring, pos);
        if (sqe->user_data <= UD_RESERVED_MAX)
            continue;
        int k = canon(sqe->opcode);
        if (k < 0 || k > 255)
            continue;
        if (inj) {
            F.seen[k]++;
            if (F.kind == k && F.nth != 0 && F.seen[k] == F.nth)
                inject(loop, ring, pos, tail);
        }
        if (rec)
            record_sqe(loop, sqe_at(ring, pos));
    }
    F.last_loop = loop;
    F.scanned = tail;
}

int kv__fault_cqe(kv_loop *loop, uint64_t ud, int res)
{
    if (!atomic_load_explicit(&F.active, memory_order_relaxed))
        return res;
    for (size_t i = 0; F.nsubs > 0 && i < NSUBST; i++) {
        subst *s = &F.subs[i];
        if (!s->used || s->loop != loop || s->ud != ud)
            continue;
        s->used = false;
        F.nsubs--;
        update_active();
        if (!(s->nop && res == -ECANCELED)) /* else: cancelled for real */
            res = s->res;
        break;
    }
    if (R.npend > 0)
        record_cqe(loop, ud, res);
    return res;
}
