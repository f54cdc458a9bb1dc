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
