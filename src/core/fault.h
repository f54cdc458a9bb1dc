/*
 * core/fault.h - the fault injector for ring operations (tests only).
 */
#ifndef KV_CORE_FAULT_H
#define KV_CORE_FAULT_H

#include "core/core.h"

/* ------------------------------------------------------------------------ */
/* fault.c: a test-only fault injector for ring operations (inert unless    */
/* armed; loop thread).  It exists only in builds with KV_TEST_HOOKS (the   */
/* library make check links); elsewhere loop.c's two hooks below are empty  */
/* inline functions and nothing else is declared.                           */
/* ------------------------------------------------------------------------ */
#ifdef KV_TEST_HOOKS
/*
 * Make the nth ring operation of kind opcode (IORING_OP_OPENAT (OPENAT2
 * too), WRITE (WRITEV), READ (READV), FSYNC, CLOSE, RENAMEAT, UNLINKAT,
 * STATX, MKDIRAT...) submitted on loop (NULL: any loop) from now on fail
 * with res (a negated errno, e.g. -EIO) or, with res >= 0, transfer at
 * most res bytes (a short read/write, always below the length asked).  The
 * rest of its IOSQE_IO_LINK chain completes -ECANCELED, as the kernel's
 * would.  nth 0 (or opcode -1) only counts operations (kv__fault_seen).
 * Operations with a reserved user_data (the loop's own) are never touched.
 */
void kv__fault_arm(kv_loop *loop, int opcode, unsigned long nth, int res);
void kv__fault_disarm(void);
/* Injections since the last arm. */
unsigned long kv__fault_hits(void);
/* Operations of opcode's kind submitted since the last arm. */
unsigned long kv__fault_seen(int opcode);

/*
 * Recording mode (the power-loss tests): while on, every file-system
 * operation submitted on loop (OPENAT/OPENAT2, WRITE/WRITEV, FSYNC,
 * RENAMEAT, UNLINKAT, MKDIRAT, CLOSE) is recorded with its arguments and,
 * once its CQE arrives, its result, in the order of the completions.  Each
 * descriptor argument is identified by its inode (fstat at submit), a new
 * descriptor or directory by the inode it names (at completion), and a
 * write keeps a copy of the bytes submitted.  Reads, statx and the loop's
 * own operations are not recorded.  Works with faults armed (an operation
 * made a NOP is not recorded).  Loop thread; global state, one loop.
 */
typedef struct kv__frec {
    int op;           /* canonical opcode (IORING_OP_OPENAT, _WRITE, ...) */
    int res;          /* the CQE's result (after any injected fault) */
    uint64_t seq;     /* submission order (0, 1, ...) */
    uint64_t nsub;    /* operations submitted when this one completed */
    uint64_t chain;   /* SQEs of one IOSQE_IO_LINK chain share it */
    int fd;           /* fd, or dirfd (OPENAT, UNLINKAT, MKDIRAT, RENAMEAT) */
    uint64_t ino;     /* its inode at submit (0: AT_FDCWD or unknown) */
    bool isdir;       /* fd is a directory */
    int fd2;          /* RENAMEAT: newdirfd */
    uint64_t ino2;
    char *path, *path2;  /* OPENAT/UNLINKAT/MKDIRAT path; RENAMEAT both */
    uint64_t flags;   /* open flags, rename flags, unlink flags, fsync flags */
    uint64_t off;     /* WRITE: offset */
    unsigned char *data; /* WRITE: the bytes submitted (len of them) */
    size_t len;
    uint64_t res_ino; /* OPENAT: inode of the new fd; MKDIRAT: of the dir */
} kv__frec;

/* Start recording anew (frees any previous trace); loop NULL: any loop.
 * KV_OK or KV_ENOMEM. */
int kv__fault_record_start(kv_loop *loop);
/* Stop recording (the trace stays readable; pending ones are dropped). */
void kv__fault_record_stop(void);
/* Completed operations recorded so far, and the ith of them (NULL past the
 * end); valid until the next start or kv__fault_record_free. */
size_t kv__fault_record_count(void);
const kv__frec *kv__fault_record_get(size_t i);
/* Operations submitted (recorded) so far. */
uint64_t kv__fault_record_submitted(void);
/* True if the trace is incomplete (out of memory while recording). */
bool kv__fault_record_lost(void);
/* Stop and free everything. */
void kv__fault_record_free(void);

/* loop.c's hooks: rewrite the SQEs about to be submitted; substitute the
 * result of a CQE whose SQE was rewritten. */
void kv__fault_before_submit(kv_loop *loop);
int kv__fault_cqe(kv_loop *loop, uint64_t ud, int res);
#else
static inline void kv__fault_before_submit(kv_loop *loop)
{
    (void)loop;
}

static inline int kv__fault_cqe(kv_loop *loop, uint64_t ud, int res)
{
    (void)loop;
    (void)ud;
    return res;
}
#endif
#endif /* KV_CORE_FAULT_H */
