/*
 * fs.c - the filesystem backend: one file per record under a root
 * directory, every file operation of has/get/put/delete submitted to the
 * loop's io_uring.
 *
 * The design (on-disk layout, fan-out, escapes, record file, the put chain,
 * tokens, queries) is in docs/DESIGN.md, "backend/fs".
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Hash tables (the directory table, the key queues)                        */
/* ------------------------------------------------------------------------ */

/* The first entry of h's bucket (walk with ->next, compare ->hash). */
hlink *fs__htab_bucket(const htab *t, uint64_t h)
{
    return t->cap == 0 ? NULL : t->tab[h & (t->cap - 1)];
}

int fs__htab_reserve(htab *t)
{
    if (t->n + 1 <= t->cap)
        return KV_OK;
    size_t cap = t->cap ? t->cap * 2 : 64;
    hlink **tab = kv__calloc(cap, sizeof *tab);
    if (tab == NULL)
        return KV_ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        hlink *l = t->tab[i];
        while (l != NULL) {
            hlink *next = l->next;
            l->next = tab[l->hash & (cap - 1)];
            tab[l->hash & (cap - 1)] = l;
            l = next;
        }
    }
    kv__free(t->tab);
    t->tab = tab;
    t->cap = cap;
    return KV_OK;
}

/* Link l (l->hash set) after a successful fs__htab_reserve. */
void fs__htab_link(htab *t, hlink *l)
{
    l->next = t->tab[l->hash & (t->cap - 1)];
    t->tab[l->hash & (t->cap - 1)] = l;
    t->n++;
}

void fs__htab_unlink(htab *t, hlink *l)
{
    hlink **pp = &t->tab[l->hash & (t->cap - 1)];
    while (*pp != NULL && *pp != l)
        pp = &(*pp)->next;
    if (*pp == l) {
        *pp = l->next;
        t->n--;
    }
    l->next = NULL;
}

/* ------------------------------------------------------------------------ */
/* Ring, completion and request helpers                                     */
/* ------------------------------------------------------------------------ */

/* A deferred completion (NOP through the ring, or a pool job). */
typedef struct fdefer {
    kv__op op;
    kv__job job;
    fs_state *fs;
    kv__req *req;
    int status;
    char *msg;
    bool is_close;
} fdefer;

/* A negated errno or a KV code, as a KV code. */
int fs__to_kv(int res)
{
    if (res <= KV_ERROR && res >= KV_ENOMEM)
        return res;
    return kv__from_errno(res);
}

/* n SQEs; each must be armed so that its CQE decrements nsqe. */
int fs__ring_get(fs_state *fs, struct io_uring_sqe **sqes, unsigned n)
{
    int rc = kv__loop_sqes(fs->loop, sqes, n);
    if (rc == KV_OK)
        fs->nsqe += n;
    return rc;
}

/* openat2(dfd, name) with RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or openat
 * with O_NOFOLLOW where the kernel lacks IORING_OP_OPENAT2.  how must live
 * until the CQE. */
void fs__prep_open(fs_state *fs, struct io_uring_sqe *sqe, int dfd,
                   const char *name, int flags, mode_t mode,
                   struct open_how *how)
{
    flags |= O_NOFOLLOW | O_CLOEXEC;
    if (fs->use_openat2) {
        memset(how, 0, sizeof *how);
        how->flags = (uint64_t)(unsigned)flags;
        how->mode = (flags & O_CREAT) ? mode : 0;
        how->resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
        io_uring_prep_openat2(sqe, dfd, name, how);
    } else {
        io_uring_prep_openat(sqe, dfd, name, flags, mode);
    }
}

static void req_finish(kv__req *req, int status, const char *msg)
{
    if (msg != NULL && msg[0] != '\0')
        kv__req_done(req, status, "%s", msg);
    else
        kv__req_done(req, status, NULL);
}

/* Complete d's request (its NOP or job already uncounted).  After the
 * close request completes, fs may be gone: touch it no more. */
static void defer_fire(fdefer *d)
{
    fs_state *fs = d->fs;
    bool last = d->is_close;
    kv__req *req = d->req;
    int st = d->status;
    char *msg = d->msg;
    kv__free(d);
    req_finish(req, st, msg);
    kv__free(msg);
    if (!last)
        fs__check_closed(fs);
}

static void defer_cqe(kv__op *op, int res, uint32_t flags)
{
    (void)res;
    (void)flags;
    fdefer *d = KV__CONTAINER_OF(op, fdefer, op);
    d->fs->nsqe--;
    defer_fire(d);
}

static void defer_work(kv__job *job)
{
    (void)job;
}

static void defer_job_done(kv__job *job, int status)
{
    (void)status;
    fdefer *d = KV__CONTAINER_OF(job, fdefer, job);
    d->fs->njobs--;
    defer_fire(d);
}

/*
 * The fallback of defer_any without memory: req waits on one of two lists
 * (linked through req->bpriv, free by then) for the embedded oom_job, which
 * completes it with KV_OK or, for any other status, KV_ENOMEM (the message
 * is lost too).  The close request completes last: fs may be gone after.
 */
static void defer_oom_done(kv__job *job, int status)
{
    (void)status;
    fs_state *fs = KV__CONTAINER_OF(job, fs_state, oom_job);
    kv__req *lists[2] = {fs->oom_ok, fs->oom_err};
    fs->oom_ok = fs->oom_err = NULL;
    fs->oom_busy = false;
    fs->njobs--;
    kv__req *close_req = NULL;
    int close_st = KV_OK;
    for (int i = 0; i < 2; i++) {
        while (lists[i] != NULL) {
            kv__req *req = lists[i];
            lists[i] = req->bpriv;
            req->bpriv = NULL;
            if (req->op == KV__OP_CLOSE) {
                close_req = req;
                close_st = i == 0 ? KV_OK : KV_ENOMEM;
                continue;
            }
            req_finish(req, i == 0 ? KV_OK : KV_ENOMEM, NULL);
        }
    }
    if (close_req != NULL) {
        req_finish(close_req, close_st, NULL);
        return;
    }
    fs__check_closed(fs);
}

static void defer_oom(fs_state *fs, kv__req *req, int status)
{
    kv__req **list = status == KV_OK ? &fs->oom_ok : &fs->oom_err;
    req->bpriv = *list;
    *list = req;
    if (fs->oom_busy)
        return;
    fs->oom_busy = true;
    memset(&fs->oom_job, 0, sizeof fs->oom_job);
    fs->oom_job.work = defer_work;
    fs->oom_job.done = defer_oom_done;
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &fs->oom_job);
}

/*
 * Complete req later, from a CQE (a NOP) or, if the ring refuses, a pool
 * job: submit, cancel and close must not complete a request themselves.
 * msg is owned (may be NULL).
 */
static void defer_any(fs_state *fs, kv__req *req, int status, char *msg,
                      bool is_close)
{
    fdefer *d = kv__calloc(1, sizeof *d);
    if (d == NULL) {
        /* Out of memory: still never inline (the caller may be inside
         * kv_iter_free, which must not see its iterator freed under it). */
        kv__free(msg);
        defer_oom(fs, req, status);
        return;
    }
    d->fs = fs;
    d->req = req;
    d->status = status;
    d->msg = msg;
    d->is_close = is_close;
    d->op.cb = defer_cqe;
    struct io_uring_sqe *sqe;
    if (fs__ring_get(fs, &sqe, 1) == KV_OK) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, (uintptr_t)&d->op);
        return;
    }
    d->job.work = defer_work;
    d->job.done = defer_job_done;
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &d->job);
}

void fs__defer_done(fs_state *fs, kv__req *req, int status, char *msg)
{
    defer_any(fs, req, status, msg, false);
}

/* Finish a whole request: inline from CQE and job callbacks, deferred from
 * inside submit / cancel / close. */
void fs__req_end(fs_state *fs, kv__req *req, int status, char *msg)
{
    if (fs->in_submit || fs->in_close)
        fs__defer_done(fs, req, status, msg);
    else {
        req_finish(req, status, msg);
        kv__free(msg);
    }
}

/* ------------------------------------------------------------------------ */
/* Submit and cancel                                                        */
/* ------------------------------------------------------------------------ */

static void fs_submit(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    bool outer = !fs->in_submit;
    fs->in_submit = true;
    if (fs->closing) {
        fs__defer_done(fs, req, KV_ECLOSED, NULL);
    } else {
        switch (req->op) {
        case KV__OP_HAS:
            fs__rec_submit(fs, req, K_HAS);
            break;
        case KV__OP_GET:
            fs__rec_submit(fs, req, K_GET);
            break;
        case KV__OP_PUT:
            fs__rec_submit(fs, req, K_PUT);
            break;
        case KV__OP_DELETE:
            fs__rec_submit(fs, req, K_DEL);
            break;
        case KV__OP_DROP:
            fs__drop_submit(fs, req);
            break;
        case KV__OP_QUERY_OPEN:
            fs__query_submit(fs, req);
            break;
        case KV__OP_ITER_FETCH:
            fs__fetch_submit(fs, req);
            break;
        case KV__OP_ITER_DISPOSE:
            fs__dispose_submit(fs, req);
            break;
        case KV__OP_PUT_ATOMIC:
        case KV__OP_DELETE_ATOMIC:
        case KV__OP_MOVE:
            fs__defer_done(fs, req, KV_ENOTSUP,
                           kv__strdup("fs: atomic batches are not supported"));
            break;
        default:
            fs__defer_done(fs, req, KV_EINVAL, NULL);
            break;
        }
    }
    if (outer)
        fs->in_submit = false;
}

static void fs_cancel(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    bool outer = !fs->in_submit;
    fs->in_submit = true;
    fs__cancel_kops(fs, req, false);
    if (outer)
        fs->in_submit = false;
}

/* ------------------------------------------------------------------------ */
/* Close and destroy                                                        */
/* ------------------------------------------------------------------------ */

static void fs_teardown(fs_state *fs)
{
    fs__cursors_free(fs);
    while (fs->sp_head != NULL) {
        /* Never closed: the files stay (no .clean marker), removed at
         * the next open. */
        spare *sp = fs->sp_head;
        fs__spare_unlink(fs, sp);
        kv__free(sp);
    }
    fsdir *d = fs->dirs_all;
    while (d != NULL) {
        fsdir *next = d->all_next;
        if (d->fd >= 0)
            close(d->fd);
        kv__free(d->namebuf);
        kv__free(d);
        d = next;
    }
    fs->dirs_all = NULL;
    fs->lru_head = fs->lru_tail = NULL;
    fs->nidle = 0;
    kv__free(fs->dirs.tab);
    fs->dirs = (htab){0};
    kv__free(fs->rootdir);
    fs->rootdir = NULL;
    for (size_t i = 0; i < fs->keyqs.cap; i++)
        while (fs->keyqs.tab[i] != NULL) {
            hlink *l = fs->keyqs.tab[i];
            fs->keyqs.tab[i] = l->next;
            kv__free(KV__CONTAINER_OF(l, keyq, hl));
        }
    kv__free(fs->keyqs.tab);
    fs->keyqs = (htab){0};
    if (fs->tokfd >= 0)
        close(fs->tokfd);
    if (fs->closing && !fs->readonly && fs->rootfd >= 0 &&
        fs->stats[STAT_TMP_LEAKS] == 0) {
        /* Every temp file of this session is gone: skip the next walk. */
        int fd = openat(fs->rootfd, CLEAN_NAME,
                        O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd >= 0)
            close(fd);
    }
    if (fs->lockfd >= 0)
        close(fs->lockfd); /* releases the OFD lock */
    if (fs->rootfd >= 0)
        close(fs->rootfd);
    fs->tokfd = fs->lockfd = fs->rootfd = -1;
}

void fs__check_closed(fs_state *fs)
{
    if (!fs->closing || fs->closed || fs->nkops > 0 || fs->nsqe > 0 ||
        fs->njobs > 0)
        return;
    fs->closed = true;
    fs_teardown(fs);
    kv__req *req = fs->close_req;
    fs->close_req = NULL;
    defer_any(fs, req, KV_OK, NULL, true);
}

static void fs_close(kv_store *s, kv__req *req)
{
    fs_state *fs = s->backend;
    if (fs->closing) {
        /* The store layer closes once; be safe anyway. */
        fs__defer_done(fs, req, KV_OK, NULL);
        return;
    }
    fs->in_close = true;
    fs->closing = true;
    fs->close_req = req;
    fs__cancel_kops(fs, NULL, true);
    fs__spares_drain(fs);
    fs__cursors_close(fs);
    fs__check_closed(fs);
    fs->in_close = false;
}

static void fs_destroy(kv_store *s)
{
    fs_state *fs = s->backend;
    if (fs == NULL)
        return;
    if (!fs->closed)
        fs_teardown(fs); /* never closed: release what can be released */
    kv__free(fs->root);
    kv__free(fs);
    s->backend = NULL;
}

static const struct kv_backend_ops fs_ops = {
    .version = KV__BACKEND_VERSION,
    .name = "fs",
    .atomic_batch = false,
    .submit = fs_submit,
    .cancel = fs_cancel,
    .close = fs_close,
    .destroy = fs_destroy,
};

void kv__fs_stats(const kv_store *s, uint64_t out[KV__FS_NSTATS])
{
    const fs_state *fs = s != NULL && s->ops == &fs_ops ? s->backend
                                                             : NULL;
    for (int i = 0; i < KV__FS_NSTATS; i++)
        out[i] = fs != NULL ? fs->stats[i] : 0;
}

void kv__fs_admission(const kv_store *s, size_t *maxrun, size_t *cap,
                      uint64_t *emfiles)
{
    const fs_state *fs = s != NULL && s->ops == &fs_ops ? s->backend
                                                             : NULL;
    *maxrun = fs != NULL ? fs->maxrun : 0;
    *cap = fs != NULL ? fs->maxrun_cap : 0;
    *emfiles = fs != NULL ? fs->nemfile : 0;
}

/* ------------------------------------------------------------------------ */
/* Open                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Walk the tree at open: remove temp files left by a crash (cleanup) and
 * find the largest token in use (scan, when .tokens is missing or bad).
 */
static void open_walk(int dfd, bool fanout, bool cleanup, bool scan,
                      uint64_t *maxtok, unsigned level)
{
    DIR *d = NULL;
    if (fs__dir_stream(dfd, &d) != 0)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (cleanup && strncmp(nm, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            (void)unlinkat(dfd, nm, 0); /* retried at the next open */
            continue;
        }
        size_t bl;
        int kind = fs__entry_kind(nm, &bl, fanout);
        if (kind == E_NONE)
            continue;
        if (kind == E_REC) {
            if (scan) {
                void *v = NULL;
                size_t len;
                uint64_t tok;
                if (fs__read_record(dfd, nm, false, &v, &len, &tok) == KV_OK &&
                    tok > *maxtok)
                    *maxtok = tok;
            }
            continue;
        }
        if (level > 100000)
            continue;
        int sub = fs__subdir_open(dfd, nm);
        if (sub < 0)
            continue;
        open_walk(sub, fanout, cleanup, scan, maxtok, level + 1);
        close(sub);
    }
    closedir(d);
}

static int open_fail(fs_state *fs, int code, const char *fmt, ...)
    KV__PRINTF(3, 4);

static int open_fail(fs_state *fs, int code, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kv__set_errmsg("%s", buf);
    if (fs != NULL) {
        if (fs->tokfd >= 0)
            close(fs->tokfd);
        if (fs->lockfd >= 0)
            close(fs->lockfd);
        if (fs->rootfd >= 0)
            close(fs->rootfd);
        kv__free(fs->rootdir);
        kv__free(fs->root);
        kv__free(fs);
    }
    return code;
}

/* Read .tokens, reserve the first block durably. */
static int open_tokens(fs_state *fs)
{
    fs->tokfd = openat(fs->rootfd, TOK_NAME,
                       O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fs->tokfd < 0)
        return -errno;
    uint64_t gen = 0, hwm = 0, g, h;
    bool found = false;
    for (unsigned i = 0; i < 2; i++) {
        unsigned char b[TOK_SLOT];
        ssize_t r = fs__pread_full(fs->tokfd, b, TOK_SLOT, i * TOK_SLOT_OFF);
        if (r < 0)
            return (int)r;
        if ((size_t)r == TOK_SLOT && fs__tok_slot_parse(b, &g, &h) &&
            (!found || g > gen)) {
            gen = g;
            hwm = h;
            found = true;
        }
    }
    uint64_t next = hwm;
    if (!found) {
        /* New store, or the counter was lost: never reuse a token. */
        uint64_t maxtok = 0;
        open_walk(fs->rootfd, fs->fanout, false, true, &maxtok, 0);
        next = maxtok + 1;
    }
    if (next == 0)
        next = 1;
    if (next > UINT64_MAX - TOKEN_BLOCK)
        return KV_ECORRUPT;
    unsigned char b[TOK_SLOT];
    gen++;
    fs__tok_slot_make(b, gen, next + TOKEN_BLOCK);
    ssize_t w = pwrite(fs->tokfd, b, TOK_SLOT, (gen & 1) * TOK_SLOT_OFF);
    if (w < 0)
        return -errno;
    if ((size_t)w != TOK_SLOT)
        return -EIO;
    if (fsync(fs->tokfd) != 0) /* always: the store's metadata */
        return -errno;
    fs->stats[STAT_FILE_FSYNC]++;
    fs->tok_gen = gen;
    fs->tok_next = next;
    fs->tok_hwm = next + TOKEN_BLOCK;
    return KV_OK;
}

/*
 * Size the store's descriptor use from the soft RLIMIT_NOFILE n, read at
 * open.  A quarter of n plus 16 is left to the application (its own files,
 * the loop, other stores); of the rest, avail, a running kop holds at most
 * three (its file, its directory, and the parent of a directory being
 * opened), an idle directory one and a spare file's directory one, so
 *   maxrun    = avail / 6   (kops running at once, 1..4096)
 *   idle_max  = avail / 4   (idle directories kept open, 1..DIR_IDLE_MAX)
 *   spare_max = avail / 12  (spare files, 1..SPARE_MAX)
 * use at most 3/4 of avail, plus the root, .tokens and .lock.  At n = 64:
 * 5 kops, 8 idle directories, 2 spares.  A limit the application uses up
 * anyway (EMFILE) makes kops wait for others to finish, or for the idle
 * directories, spares and closes in flight to let theirs go (fs__kop_park),
 * and lowers maxrun; maxrun_cap keeps the value set here, to which maxrun
 * grows back a step at a time once kops run without EMFILE again (fs_kq.c,
 * "Admission").
 */
static void fd_budget(fs_state *fs)
{
    struct rlimit rl;
    rlim_t n = 1 << 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < n)
        n = rl.rlim_cur;
    rlim_t reserve = 16 + n / 4;
    size_t avail = n > reserve ? (size_t)(n - reserve) : 0;
    size_t run = avail / 6, idle = avail / 4, nsp = avail / 12;
    fs->maxrun = fs->maxrun_cap = run < 1 ? 1 : run > 4096 ? 4096 : run;
    fs->idle_max = idle < 1 ? 1 : idle > DIR_IDLE_MAX ? DIR_IDLE_MAX : idle;
    fs->spare_max = nsp < 1 ? 1 : nsp > SPARE_MAX ? SPARE_MAX : nsp;
}

int kv_fs_open(kv_store **out, kv_loop *loop, kv_pool *pool,
               const char *root, unsigned depth, unsigned flags)
{
    if (out == NULL || loop == NULL || pool == NULL || root == NULL ||
        root[0] == '\0')
        return open_fail(NULL, KV_EINVAL, "kv_fs_open: NULL or empty "
                                          "argument");
    if (depth > KV_KEY_MAX_DEPTH)
        return open_fail(NULL, KV_EINVAL, "kv_fs_open: depth %u is more "
                                          "than KV_KEY_MAX_DEPTH (%u)",
                         depth, (unsigned)KV_KEY_MAX_DEPTH);
    int frc = kv__check_open_flags(
        "fs", flags, KV_READONLY | KV_FS_NO_FSYNC | KV_FS_FANOUT);
    if (frc != KV_OK)
        return frc; /* kv_last_errmsg names the flag */
    static const int need[] = {IORING_OP_OPENAT,   IORING_OP_READ,
                               IORING_OP_WRITEV,   IORING_OP_FSYNC,
                               IORING_OP_CLOSE,    IORING_OP_RENAMEAT,
                               IORING_OP_UNLINKAT, IORING_OP_MKDIRAT,
                               IORING_OP_NOP,      IORING_OP_WRITE,
                               IORING_OP_ASYNC_CANCEL};
    for (size_t i = 0; i < KV__ARRAY_SIZE(need); i++)
        if (!kv__loop_has_op(loop, need[i]))
            return open_fail(NULL, KV_ENOTSUP,
                             "kv_fs_open: the kernel's io_uring lacks "
                             "opcode %d (Linux 5.15 or later is needed)",
                             need[i]);
    fs_state *fs = kv__calloc(1, sizeof *fs);
    if (fs == NULL)
        return open_fail(NULL, KV_ENOMEM, "kv_fs_open: out of memory");
    kv__list_init(&fs->jobs);
    kv__list_init(&fs->cursors);
    fs->rootfd = fs->lockfd = fs->tokfd = -1;
    fs->loop = loop;
    fs->pool = pool;
    fs->depth = depth != 0 ? depth : KV_FS_DEFAULT_DEPTH;
    fd_budget(fs);
    fs->flags = flags;
    fs->readonly = (flags & KV_READONLY) != 0;
    fs->nofsync = (flags & KV_FS_NO_FSYNC) != 0;
    fs->use_openat2 = kv__loop_has_op(loop, IORING_OP_OPENAT2);
    fs->tok_wop.cb = fs__tok_wcqe;
    fs->tok_fop.cb = fs__tok_fcqe;
    fs->root = kv__strdup(root);
    fs->rootdir = kv__calloc(1, sizeof *fs->rootdir);
    if (fs->root == NULL || fs->rootdir == NULL)
        return open_fail(fs, KV_ENOMEM, "kv_fs_open: out of memory");

    if (!fs->readonly) {
        if (mkdir(root, 0755) == 0) {
            /* Make the new root's entry durable: fsync its parent. */
            char *parent = kv__strdup(root);
            if (parent == NULL)
                return open_fail(fs, KV_ENOMEM, "kv_fs_open: out of memory");
            char *slash = strrchr(parent, '/');
            const char *pp = slash == NULL ? "." : parent;
            if (slash == parent)
                parent[1] = '\0';
            else if (slash != NULL)
                *slash = '\0';
            int pfd = open(pp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (pfd >= 0) {
                /* best effort: the parent is not ours */
                if (fsync(pfd) == 0)
                    fs->stats[STAT_DIR_FSYNC]++;
                close(pfd);
            }
            kv__free(parent);
        } else if (errno != EEXIST) {
            return open_fail(fs, kv__from_errno(-errno),
                             "kv_fs_open: mkdir %s: %s", root,
                             strerror(errno));
        }
    }
    fs->rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs->rootfd < 0) {
        int e = errno;
        return open_fail(fs,
                         e == ENOENT && fs->readonly ? KV_EREADONLY
                                                     : kv__from_errno(-e),
                         "kv_fs_open: open %s: %s", root, strerror(e));
    }

    /* The lock: an OFD lock conflicts with every other open file
     * description, in this process too. */
    bool rw = true;
    fs->lockfd = openat(fs->rootfd, LOCK_NAME,
                        O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fs->lockfd < 0 && fs->readonly) {
        rw = false;
        fs->lockfd = openat(fs->rootfd, LOCK_NAME,
                            O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fs->lockfd < 0)
        return open_fail(fs, kv__from_errno(-errno),
                         "kv_fs_open: lock file in %s: %s", root,
                         strerror(errno));
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = rw ? F_WRLCK : F_RDLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fs->lockfd, F_OFD_SETLK, &fl) != 0) {
        int e = errno;
        if (e == EAGAIN || e == EACCES)
            return open_fail(fs, KV_EBUSY,
                             "kv_fs_open: %s is in use by another open "
                             "store",
                             root);
        return open_fail(fs, kv__from_errno(-e), "kv_fs_open: lock %s: %s",
                         root, strerror(e));
    }

    char msg[512];
    int lrc = fs__open_layout(fs, (flags & KV_FS_FANOUT) != 0, msg, sizeof msg);
    if (lrc != KV_OK)
        return open_fail(fs, lrc, "kv_fs_open: %s", msg);

    if (!fs->readonly) {
        /* Temp files are only left by a crash: a clean close leaves a
         * marker, and then the walk is not needed.  (Should the removal of
         * the marker be lost to a machine crash, the price is temp files
         * left until a later open: they are never read as records.) */
        if (unlinkat(fs->rootfd, CLEAN_NAME, 0) != 0)
            open_walk(fs->rootfd, fs->fanout, true, false, NULL, 0);
        int rc = open_tokens(fs);
        if (rc != KV_OK)
            return open_fail(fs, fs__to_kv(rc),
                             "kv_fs_open: token counter in %s: %s", root,
                             kv_strerror(rc));
        /* The entries of .lock, .format and .tokens (a lost .tokens would
         * be rebuilt from the records, missing tokens of deleted ones).
         * Metadata is synced with KV_FS_NO_FSYNC too: only records skip
         * their syncs. */
        if (fsync(fs->rootfd) != 0)
            return open_fail(fs, kv__from_errno(-errno),
                             "kv_fs_open: fsync %s: %s", root,
                             strerror(errno));
        fs->stats[STAT_DIR_FSYNC]++;
    }

    fsdir *r = fs->rootdir;
    r->fs = fs;
    r->namebuf = NULL;
    r->name = "";
    r->fd = fs->rootfd;
    r->state = D_OPEN;
    r->is_root = true;
    r->s_sync.op.cb = fs__dir_cqe_sync;
    r->s_sync.d = r;

    int rc = kv__store_new(out, &fs_ops, fs, loop, pool, flags);
    if (rc != KV_OK)
        return open_fail(fs, rc, "kv_fs_open: %s", kv_strerror(rc));
    fs->store = *out;
    return KV_OK;
}
