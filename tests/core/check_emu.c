/*
 * check_emu.c - the loop's fallback mode (src/uring_emu.c): ring operations
 * emulated as blocking system calls on worker threads, when io_uring is
 * blocked or KV_IO_URING=0.
 *
 * Raw SQEs go through kv__loop_sqes on a loop forced into fallback mode;
 * each CQE is recorded (user_data order) and checked against what the
 * kernel answers.  Then kv_sleep, cancellation, and the fs backend in a
 * child whose seccomp filter blocks io_uring_setup.
 */
#include "config.h"

#include "testutil.h"

#include "store/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static kv_loop *emu_loop(void)
{
    kv_loop *loop = NULL;
    kv_loop_opts o;
    memset(&o, 0, sizeof o);
    o.flags = KV_LOOP_FORCE_FALLBACK;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_OK);
    ck_assert_str_eq(kv_loop_backend(loop), "fallback");
    return loop;
}

/* A CQE recorder: one op per SQE, its result and the completion order. */
#define NREC 80
typedef struct rec {
    kv__op op;
    int res;
    int order; /* 1-based; 0: not completed */
    int *counter;
} rec;

static void rec_cb(kv__op *op, int res, uint32_t flags)
{
    rec *r = (rec *)(void *)op;
    ck_assert_uint_eq(flags, 0);
    ck_assert_int_eq(r->order, 0); /* exactly one CQE */
    r->res = res;
    r->order = ++*r->counter;
}

static void rec_init(rec *r, size_t n, int *counter)
{
    memset(r, 0, n * sizeof *r);
    for (size_t i = 0; i < n; i++) {
        r[i].op.cb = rec_cb;
        r[i].counter = counter;
    }
}

static void set_ud(struct io_uring_sqe *sqe, rec *r)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)&r->op);
}

static char *tmpfile_in(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* A file "f" in a new temporary directory *dir (at *path), open
 * read-write: its descriptor.  rm_tmpfile removes both. */
static int new_tmpfile(char **dir, char **path)
{
    *dir = tu_mkdtemp();
    *path = tmpfile_in(*dir, "f");
    int fd = open(*path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    ck_assert_int_ge(fd, 0);
    return fd;
}

static void rm_tmpfile(char *dir, char *path)
{
    tu_rmrf(dir);
    free(path);
    free(dir);
}

/* write "abcd" at 0 -> fsync -> nop on fd, linked, completing in r[0..2]. */
static void prep_chain3(kv_loop *loop, int fd, rec *r)
{
    struct io_uring_sqe *sq[3];
    ck_assert_kv(kv__loop_sqes(loop, sq, 3), KV_OK);
    io_uring_prep_write(sq[0], fd, "abcd", 4, 0);
    io_uring_prep_fsync(sq[1], fd, 0);
    io_uring_prep_nop(sq[2]);
    for (int i = 0; i < 3; i++) {
        if (i < 2)
            sq[i]->flags |= IOSQE_IO_LINK;
        set_ud(sq[i], &r[i]);
    }
}

/* ------------------------------------------------------------------------ */

START_TEST(test_mode_selection)
{
    kv_loop *loop = NULL;
    ck_assert_ptr_null(kv_loop_backend(NULL));
    /* The environment variable forces it too. */
    ck_assert_int_eq(setenv("KV_IO_URING", "0", 1), 0);
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    ck_assert_str_eq(kv_loop_backend(loop), "fallback");
    ck_assert(kv__loop_has_op(loop, IORING_OP_WRITEV));
    ck_assert(kv__loop_has_op(loop, IORING_OP_TIMEOUT));
    ck_assert(!kv__loop_has_op(loop, IORING_OP_LINK_TIMEOUT));
    tu_finish_loop(loop);
    unsetenv("KV_IO_URING");
    /* Without it, io_uring where the kernel allows it. */
    ck_assert_kv(kv_loop_new(&loop, NULL), KV_OK);
    const char *b = kv_loop_backend(loop);
    ck_assert(strcmp(b, "io_uring") == 0 || strcmp(b, "fallback") == 0);
    tu_finish_loop(loop);
    /* The fake ring reports the sizes asked. */
    kv_loop_opts o;
    memset(&o, 0, sizeof o);
    o.sq_entries = 5;
    o.flags = KV_LOOP_FORCE_FALLBACK;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_OK);
    ck_assert_uint_eq(kv__loop_ring(loop)->sq.ring_entries, 8);
    ck_assert_uint_ge(kv__loop_ring(loop)->cq.ring_entries, 16);
    tu_finish_loop(loop);
}
END_TEST

/* openat, write (offset and current position), read, statx, fsync,
 * mkdirat, renameat, unlinkat, close: the kernel's results. */
START_TEST(test_fs_ops)
{
    char *dir = tu_mkdtemp();
    kv_loop *loop = emu_loop();
    int count = 0;
    rec r[16];
    rec_init(r, 16, &count);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(dfd, 0);
    struct io_uring_sqe *sq[8];

    /* mkdirat, then openat inside it (a chain). */
    ck_assert_kv(kv__loop_sqes(loop, sq, 2), KV_OK);
    io_uring_prep_mkdirat(sq[0], dfd, "sub", 0755);
    sq[0]->flags |= IOSQE_IO_LINK;
    set_ud(sq[0], &r[0]);
    io_uring_prep_openat(sq[1], dfd, "sub/f", O_CREAT | O_RDWR | O_CLOEXEC,
                         0644);
    set_ud(sq[1], &r[1]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[0].res, 0);
    ck_assert_int_ge(r[1].res, 0);
    ck_assert_int_lt(r[0].order, r[1].order);
    int fd = r[1].res;

    /* pwrite at 0, write at the current position (-1) twice, read back. */
    static char buf[32];
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    ck_assert_kv(kv__loop_sqes(loop, sq, 6), KV_OK);
    io_uring_prep_write(sq[0], fd, "0123456789", 10, 0);
    io_uring_prep_write(sq[1], fd, "ab", 2, (uint64_t)-1);
    io_uring_prep_write(sq[2], fd, "cd", 2, (uint64_t)-1);
    io_uring_prep_read(sq[3], fd, buf, sizeof buf, 0);
    io_uring_prep_fsync(sq[4], fd, IORING_FSYNC_DATASYNC);
    io_uring_prep_statx(sq[5], dfd, "sub/f", 0, STATX_SIZE, &stx);
    for (int i = 0; i < 5; i++) {
        sq[i]->flags |= IOSQE_IO_LINK;
        set_ud(sq[i], &r[2 + i]);
    }
    set_ud(sq[5], &r[7]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[2].res, 10);
    ck_assert_int_eq(r[3].res, 2);
    ck_assert_int_eq(r[4].res, 2);
    ck_assert_int_eq(r[5].res, 10 /* short: 10 < 32 */);
    ck_assert_mem_eq(buf, "abcd456789", 10);
    /* The short read broke the chain: fsync and statx were cancelled. */
    ck_assert_int_eq(r[6].res, -ECANCELED);
    ck_assert_int_eq(r[7].res, -ECANCELED);
    for (int i = 2; i < 7; i++)
        ck_assert_int_lt(r[i].order, r[i + 1].order);

    /* statx alone; rename; close; unlink; unlinkat(AT_REMOVEDIR). */
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_statx(sq[0], dfd, "sub/f", 0, STATX_SIZE, &stx);
    set_ud(sq[0], &r[8]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[8].res, 0);
    ck_assert_uint_eq(stx.stx_size, 10);
    ck_assert_kv(kv__loop_sqes(loop, sq, 4), KV_OK);
    io_uring_prep_renameat(sq[0], dfd, "sub/f", dfd, "sub/g", 0);
    io_uring_prep_close(sq[1], fd);
    io_uring_prep_unlinkat(sq[2], dfd, "sub/g", 0);
    io_uring_prep_unlinkat(sq[3], dfd, "sub", AT_REMOVEDIR);
    for (int i = 0; i < 3; i++)
        sq[i]->flags |= IOSQE_IO_LINK;
    for (int i = 0; i < 4; i++)
        set_ud(sq[i], &r[9 + i]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    for (int i = 9; i < 13; i++)
        ck_assert_int_eq(r[i].res, 0);
    struct stat st;
    ck_assert_int_ne(fstatat(dfd, "sub", &st, 0), 0);
    /* Errors are negated errnos; an unknown opcode is -EINVAL. */
    ck_assert_kv(kv__loop_sqes(loop, sq, 2), KV_OK);
    io_uring_prep_openat(sq[0], dfd, "missing", O_RDONLY, 0);
    set_ud(sq[0], &r[13]);
    io_uring_prep_nop(sq[1]);
    sq[1]->opcode = IORING_OP_LINK_TIMEOUT;
    set_ud(sq[1], &r[14]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[13].res, -ENOENT);
    ck_assert_int_eq(r[14].res, -EINVAL);
    close(dfd);
    tu_finish_loop(loop);
    tu_rmrf(dir);
    free(dir);
}
END_TEST

/* A failing op in the middle of a chain cancels the rest; HARDLINK does
 * not; a short write breaks the chain. */
START_TEST(test_links)
{
    char *dir, *path;
    int fd = new_tmpfile(&dir, &path);
    kv_loop *loop = emu_loop();
    int count = 0;
    rec r[12];
    rec_init(r, 12, &count);
    struct io_uring_sqe *sq[4];

    /* write -> fsync(bad fd) -> write -> nop: 4, -EBADF, -ECANCELED x2 */
    ck_assert_kv(kv__loop_sqes(loop, sq, 4), KV_OK);
    io_uring_prep_write(sq[0], fd, "abcd", 4, 0);
    io_uring_prep_fsync(sq[1], 9999, 0);
    io_uring_prep_write(sq[2], fd, "XXXX", 4, 0);
    io_uring_prep_nop(sq[3]);
    for (int i = 0; i < 4; i++) {
        if (i < 3)
            sq[i]->flags |= IOSQE_IO_LINK;
        set_ud(sq[i], &r[i]);
    }
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[0].res, 4);
    ck_assert_int_eq(r[1].res, -EBADF);
    ck_assert_int_eq(r[2].res, -ECANCELED);
    ck_assert_int_eq(r[3].res, -ECANCELED);
    char b[8];
    ck_assert_int_eq(pread(fd, b, sizeof b, 0), 4);
    ck_assert_mem_eq(b, "abcd", 4); /* the cancelled write never ran */

    /* HARDLINK goes on after a failure. */
    ck_assert_kv(kv__loop_sqes(loop, sq, 2), KV_OK);
    io_uring_prep_fsync(sq[0], 9999, 0);
    sq[0]->flags |= IOSQE_IO_HARDLINK;
    set_ud(sq[0], &r[4]);
    io_uring_prep_nop(sq[1]);
    set_ud(sq[1], &r[5]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[4].res, -EBADF);
    ck_assert_int_eq(r[5].res, 0);

    /* A short write (a non-blocking pipe with one page free) breaks the
     * chain: the kernel's io_uring does the same. */
    int p[2];
    ck_assert_int_eq(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    int cap = fcntl(p[1], F_GETPIPE_SZ);
    ck_assert_int_gt(cap, 8192);
    static char big[1 << 20];
    ck_assert_int_eq(write(p[1], big, (size_t)cap - 4096), cap - 4096);
    ck_assert_kv(kv__loop_sqes(loop, sq, 2), KV_OK);
    io_uring_prep_write(sq[0], p[1], big, 16384, (uint64_t)-1);
    sq[0]->flags |= IOSQE_IO_LINK;
    set_ud(sq[0], &r[6]);
    io_uring_prep_fsync(sq[1], fd, 0);
    set_ud(sq[1], &r[7]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_gt(r[6].res, 0);
    ck_assert_int_lt(r[6].res, 16384);
    ck_assert_int_eq(r[7].res, -ECANCELED);
    close(p[0]);
    close(p[1]);
    close(fd);
    tu_finish_loop(loop);
    rm_tmpfile(dir, path);
}
END_TEST

/* Timers: kv_sleep, TIMEOUT_REMOVE, cancellation of a sleep. */
START_TEST(test_timeouts)
{
    kv_loop *loop = emu_loop();
    double t0 = tu_now_ms();
    kv_fut *f = kv_sleep(loop, 30);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    ck_assert_double_ge(tu_now_ms() - t0, 29.0);

    /* A long sleep cancelled completes at once. */
    t0 = tu_now_ms();
    f = kv_sleep(loop, 10000);
    kv_fut *g = kv_sleep(loop, 5);
    ck_assert_kv(kv_wait(g), KV_OK);
    kv_fut_cancel(f);
    ck_assert_kv(kv_wait(f), KV_ECANCELED);
    kv_fut_free(f);
    kv_fut_free(g);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_double_lt(tu_now_ms() - t0, 5000.0);

    /* Raw: a timeout removed (0, target -ECANCELED); removing an unknown
     * one is -ENOENT; timers fire in deadline order. */
    int count = 0;
    rec r[6];
    rec_init(r, 6, &count);
    struct __kernel_timespec long_ts = {.tv_sec = 10, .tv_nsec = 0};
    struct __kernel_timespec t20 = {.tv_sec = 0, .tv_nsec = 20000000};
    struct __kernel_timespec t5 = {.tv_sec = 0, .tv_nsec = 5000000};
    struct io_uring_sqe *sq[3];
    ck_assert_kv(kv__loop_sqes(loop, sq, 3), KV_OK);
    io_uring_prep_timeout(sq[0], &long_ts, 0, 0);
    set_ud(sq[0], &r[0]);
    io_uring_prep_timeout(sq[1], &t20, 0, 0);
    set_ud(sq[1], &r[1]);
    io_uring_prep_timeout(sq[2], &t5, 0, 0);
    set_ud(sq[2], &r[2]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert_kv(kv__loop_sqes(loop, sq, 2), KV_OK);
    io_uring_prep_timeout_remove(sq[0], (uint64_t)(uintptr_t)&r[0].op, 0);
    set_ud(sq[0], &r[3]);
    io_uring_prep_timeout_remove(sq[1], 0x123456789ull, 0);
    set_ud(sq[1], &r[4]);
    t0 = tu_now_ms();
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_double_lt(tu_now_ms() - t0, 5000.0);
    ck_assert_int_eq(r[0].res, -ECANCELED);
    ck_assert_int_eq(r[1].res, -ETIME);
    ck_assert_int_eq(r[2].res, -ETIME);
    ck_assert_int_eq(r[3].res, 0);
    ck_assert_int_eq(r[4].res, -ENOENT);
    ck_assert_int_lt(r[2].order, r[1].order);
    tu_finish_loop(loop);
}
END_TEST

/* ASYNC_CANCEL: a queued job is removed (-ECANCELED, cancel 0); a running
 * one is -EALREADY; an unknown user_data -ENOENT. */
START_TEST(test_async_cancel)
{
    kv_loop *loop = emu_loop();
    int count = 0;
    enum { N = 40 };
    static rec r[N + 3];
    rec_init(r, N + 3, &count);
    int p[2];
    ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0); /* blocking reads */
    static char b[N];
    struct io_uring_sqe *sq[1];
    for (int i = 0; i < N; i++) {
        ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
        io_uring_prep_read(sq[0], p[0], &b[i], 1, (uint64_t)-1);
        set_ud(sq[0], &r[i]);
    }
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    /* The workers (fewer than N) block in read: the last job is queued. */
    usleep(20000);
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_cancel64(sq[0], (uint64_t)(uintptr_t)&r[N - 1].op, 0);
    set_ud(sq[0], &r[N]);
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_cancel64(sq[0], (uint64_t)(uintptr_t)&r[0].op, 0);
    set_ud(sq[0], &r[N + 1]);
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_cancel64(sq[0], 0x987654321ull, 0);
    set_ud(sq[0], &r[N + 2]);
    while (r[N + 2].order == 0 || r[N - 1].order == 0)
        ck_assert_int_ge(kv_loop_run(loop, KV_RUN_ONCE), 0);
    ck_assert_int_eq(r[N].res, 0);
    ck_assert_int_eq(r[N - 1].res, -ECANCELED);
    ck_assert_int_eq(r[N + 1].res, -EALREADY);
    ck_assert_int_eq(r[N + 2].res, -ENOENT);
    /* Release the others: one byte each, then EOF. */
    static char bytes[N];
    ck_assert_int_eq(write(p[1], bytes, N - 1), N - 1);
    close(p[1]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    for (int i = 0; i < N - 1; i++)
        ck_assert_int_eq(r[i].res, 1);
    close(p[0]);
    tu_finish_loop(loop);
}
END_TEST

/*
 * Out of memory in the emulator's submit (no request for a chain): the
 * chain completes at once, its first SQE -ENOMEM and the rest -ECANCELED,
 * nothing of it runs, and the loop neither blocks nor retries.  A lone
 * NOP, ASYNC_CANCEL or TIMEOUT_REMOVE needs no memory and is decided as
 * usual.  Afterwards the same loop works.
 */
START_TEST(test_oom_chain)
{
    char *dir, *path;
    int fd = new_tmpfile(&dir, &path);
    kv_loop *loop = emu_loop();
    int count = 0;
    rec r[12];
    rec_init(r, 12, &count);
    struct io_uring_sqe *sq[3];
    struct __kernel_timespec long_ts = {.tv_sec = 10, .tv_nsec = 0};

    /* A long timer, started while memory is there. */
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_timeout(sq[0], &long_ts, 0, 0);
    set_ud(sq[0], &r[0]);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_NOWAIT), 0);
    ck_assert_int_eq(r[0].order, 0);

    /* write -> fsync -> nop, a lone timeout, a NOP, a cancel of the timer
     * and one of nothing: all submitted with every allocation failing. */
    prep_chain3(loop, fd, &r[1]);
    ck_assert_kv(kv__loop_sqes(loop, sq, 3), KV_OK);
    io_uring_prep_timeout(sq[0], &long_ts, 0, 0);
    set_ud(sq[0], &r[4]);
    io_uring_prep_nop(sq[1]);
    set_ud(sq[1], &r[5]);
    io_uring_prep_cancel64(sq[2], (uint64_t)(uintptr_t)&r[0].op, 0);
    set_ud(sq[2], &r[6]);
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_cancel64(sq[0], 0x987654321ull, 0);
    set_ud(sq[0], &r[7]);
    double t0 = tu_now_ms();
    kv__alloc_fail_at(1, true);
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    unsigned long tried = kv__alloc_fail_at(0, false);
    ck_assert_int_ge(rc, 0);
    ck_assert_uint_ge(tried, 2); /* the chain's and the timeout's request */
    ck_assert_double_lt(tu_now_ms() - t0, 5000.0); /* the timer did not run */
    ck_assert_int_eq(r[1].res, -ENOMEM);
    ck_assert_int_eq(r[2].res, -ECANCELED);
    ck_assert_int_eq(r[3].res, -ECANCELED);
    ck_assert_int_lt(r[1].order, r[2].order);
    ck_assert_int_lt(r[2].order, r[3].order);
    ck_assert_int_eq(r[4].res, -ENOMEM);
    ck_assert_int_eq(r[5].res, 0);
    ck_assert_int_eq(r[0].res, -ECANCELED); /* cancelled without memory */
    ck_assert_int_eq(r[6].res, 0);
    ck_assert_int_lt(r[0].order, r[6].order);
    ck_assert_int_eq(r[7].res, -ENOENT);
    struct stat st;
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert_int_eq(st.st_size, 0); /* the failed chain never ran */

    /* The same chain with memory: it runs. */
    rec_init(r, 3, &count);
    prep_chain3(loop, fd, r);
    ck_assert_int_ge(kv_loop_run(loop, KV_RUN_DEFAULT), 0);
    ck_assert_int_eq(r[0].res, 4);
    ck_assert_int_eq(r[1].res, 0);
    ck_assert_int_eq(r[2].res, 0);
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert_int_eq(st.st_size, 4);
    ck_assert_int_eq(close(fd), 0);
    tu_finish_loop(loop);
    rm_tmpfile(dir, path);
}
END_TEST

/*
 * The completions of chains failed for memory wait in a ring of the
 * loop's cq_entries.  A handler that keeps preparing SQEs while every
 * allocation fails fills it: kv__loop_sqes then answers KV_EBUSY (as when
 * the kernel's CQ overflows) instead of blocking or losing a completion,
 * and every SQE it did accept completes once, -ENOMEM.
 */
typedef struct flood {
    kv__op op;
    kv_loop *loop;
    int fd;
    int accepted, refused;
    rec *r;
} flood;

static void flood_cb(kv__op *op, int res, uint32_t flags)
{
    flood *fl = (flood *)(void *)op;
    (void)flags;
    ck_assert_int_eq(res, 0); /* a NOP: decided without memory */
    for (int i = 0; i < 64; i++) {
        struct io_uring_sqe *sqe;
        int rc = kv__loop_sqes(fl->loop, &sqe, 1);
        if (rc != KV_OK) {
            ck_assert_kv(rc, KV_EBUSY);
            fl->refused++;
            break;
        }
        io_uring_prep_fsync(sqe, fl->fd, 0);
        set_ud(sqe, &fl->r[fl->accepted++]);
    }
}

START_TEST(test_oom_ring_full)
{
    kv_loop *loop = NULL;
    kv_loop_opts o;
    memset(&o, 0, sizeof o);
    o.flags = KV_LOOP_FORCE_FALLBACK;
    o.sq_entries = 8;
    o.cq_entries = 16;
    ck_assert_kv(kv_loop_new(&loop, &o), KV_OK);
    int count = 0;
    static rec r[64];
    rec_init(r, 64, &count);
    flood fl = {.op.cb = flood_cb, .loop = loop, .r = r};
    fl.fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(fl.fd, 0);
    struct io_uring_sqe *sq[1];
    ck_assert_kv(kv__loop_sqes(loop, sq, 1), KV_OK);
    io_uring_prep_nop(sq[0]);
    io_uring_sqe_set_data64(sq[0], (uint64_t)(uintptr_t)&fl.op);
    kv__alloc_fail_at(1, true);
    int rc = kv_loop_run(loop, KV_RUN_DEFAULT);
    kv__alloc_fail_at(0, false);
    ck_assert_int_ge(rc, 0);
    /* 16 completions in the ring and 8 SQEs queued, then no room. */
    ck_assert_int_eq(fl.accepted, 24);
    ck_assert_int_eq(fl.refused, 1);
    for (int i = 0; i < fl.accepted; i++) {
        ck_assert_int_eq(r[i].res, -ENOMEM);
        ck_assert_int_eq(r[i].order, i + 1);
    }
    ck_assert_int_eq(close(fl.fd), 0);
    tu_finish_loop(loop);
}
END_TEST

/*
 * Through the public API: a sleep and an fs put whose SQEs are submitted
 * while every allocation fails complete KV_ENOMEM at once; the store and
 * the loop go on working.
 */
START_TEST(test_oom_store)
{
    char *dir = tu_mkdtemp();
    char *root = tmpfile_in(dir, "store");
    kv_loop *loop = emu_loop();
    kv_pool *pool = NULL;
    kv_store *s = NULL;
    kv_key *k = NULL;
    ck_assert_kv(kv_pool_new(&pool, 2), KV_OK);
    ck_assert_kv(kv_fs_open(&s, loop, pool, root, 0, 0), KV_OK);
    ck_assert_kv(kv_key_parse(&k, "/a/b"), KV_OK);
    kv_fut *f = kv_put_value(s, k, "one", 3, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    uint64_t tok = kv_fut_token(f);
    kv_fut_free(f);

    double t0 = tu_now_ms();
    kv_fut *sl = kv_sleep(loop, 10000);
    kv_record nr = {.key = k, .val = "two", .len = 3, .token = tok};
    f = kv_put(s, &nr, NULL);
    /* Both are queued, not yet submitted: the next turn's submit is the
     * first allocation from here on. */
    ck_assert_uint_ge(io_uring_sq_ready(kv__loop_ring(loop)), 2);
    kv__alloc_fail_at(1, true);
    int st_sleep = kv_wait(sl);
    int st_put = kv_wait(f);
    ck_assert_uint_gt(kv__alloc_fail_at(0, false), 0);
    ck_assert_kv(st_sleep, KV_ENOMEM);
    ck_assert_kv(st_put, KV_ENOMEM);
    ck_assert_double_lt(tu_now_ms() - t0, 5000.0);
    kv_fut_free(sl);
    kv_fut_free(f);

    /* Nothing was written; the store works. */
    f = kv_get(s, k, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    ck_assert_uint_eq(kv_fut_record(f)->len, 3);
    ck_assert_mem_eq(kv_fut_record(f)->val, "one", 3);
    ck_assert_uint_eq(kv_fut_record(f)->token, tok);
    kv_fut_free(f);
    f = kv_put(s, &nr, NULL);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    f = kv_close(s);
    ck_assert_kv(kv_wait(f), KV_OK);
    kv_fut_free(f);
    kv_store_free(s);
    kv_key_free(k);
    tu_finish_loop(loop);
    kv_pool_free(pool);
    tu_rmrf(dir);
    free(root);
    free(dir);
}
END_TEST

/* The fs backend through the emulation: put, get, overwrite, delete. */
static int fs_roundtrip(kv_loop *loop, const char *dir)
{
    kv_pool *pool = NULL;
    kv_store *s = NULL;
    kv_key *k = NULL;
    int rc = kv_pool_new(&pool, 2);
    if (rc != KV_OK)
        return 10;
    if (kv_fs_open(&s, loop, pool, dir, 0, 0) != KV_OK)
        return 11;
    if (kv_key_parse(&k, "/a/b") != KV_OK)
        return 12;
    kv_fut *f = kv_put_value(s, k, "hello", 5, NULL);
    if (kv_wait(f) != KV_OK)
        return 13;
    uint64_t tok = kv_fut_token(f);
    kv_fut_free(f);
    f = kv_get(s, k, NULL);
    if (kv_wait(f) != KV_OK)
        return 14;
    const kv_record *got = kv_fut_record(f);
    if (got == NULL || got->len != 5 || memcmp(got->val, "hello", 5) != 0 ||
        got->token != tok)
        return 15;
    kv_fut_free(f);
    kv_record nr = {.key = k, .val = "world!", .len = 6, .token = tok};
    f = kv_put(s, &nr, NULL);
    if (kv_wait(f) != KV_OK)
        return 16;
    kv_fut_free(f);
    f = kv_put(s, &nr, NULL); /* stale token */
    if (kv_wait(f) != KV_ECONFLICT)
        return 17;
    kv_fut_free(f);
    f = kv_get(s, k, NULL);
    if (kv_wait(f) != KV_OK || kv_fut_record(f)->len != 6)
        return 18;
    kv_fut_free(f);
    kv_key_free(k);
    f = kv_close(s);
    if (kv_wait(f) != KV_OK)
        return 19;
    kv_fut_free(f);
    kv_store_free(s);
    kv_pool_free(pool);
    return 0;
}

START_TEST(test_fs_store)
{
    char *dir = tu_mkdtemp();
    char *root = tmpfile_in(dir, "store");
    kv_loop *loop = emu_loop();
    ck_assert_int_eq(fs_roundtrip(loop, root), 0);
    tu_finish_loop(loop);
    tu_rmrf(dir);
    free(root);
    free(dir);
}
END_TEST

/*
 * io_uring blocked by a seccomp filter (as in Docker): kv_loop_new picks
 * the fallback by itself, says why, and the fs backend works.  In a child:
 * the filter stays.
 */
START_TEST(test_seccomp)
{
    char *dir = tu_mkdtemp();
    char *root = tmpfile_in(dir, "store");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (tu_block_io_uring() != 0)
            _exit(77);
        unsetenv("KV_IO_URING");
        kv_loop *l = NULL;
        if (kv_loop_new(&l, NULL) != KV_OK || l == NULL)
            _exit(1);
        if (strcmp(kv_loop_backend(l), "fallback") != 0)
            _exit(2);
        const char *m = kv_last_errmsg();
        if (strstr(m, "io_uring_setup") == NULL || strstr(m, "seccomp") == NULL)
            _exit(3);
        int rc = fs_roundtrip(l, root);
        if (rc != 0)
            _exit(rc);
        if (kv_loop_run(l, KV_RUN_DEFAULT) < 0 || kv_loop_free(l) != KV_OK)
            _exit(4);
        _exit(0);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    tu_rmrf(dir);
    free(root);
    free(dir);
    ck_assert(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77)
        return; /* seccomp unavailable here: nothing to check */
    ck_assert_msg(WEXITSTATUS(st) == 0, "child check %d failed",
                  WEXITSTATUS(st));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("emu");
    TCase *tc = tcase_create("fallback");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mode_selection);
    tcase_add_test(tc, test_fs_ops);
    tcase_add_test(tc, test_links);
    tcase_add_test(tc, test_timeouts);
    tcase_add_test(tc, test_async_cancel);
    tcase_add_test(tc, test_fs_store);
    tcase_add_test(tc, test_oom_chain);
    tcase_add_test(tc, test_oom_ring_full);
    tcase_add_test(tc, test_oom_store);
    tcase_add_test(tc, test_seccomp);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
