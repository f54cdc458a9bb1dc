/*
 * core/core_int.h - what the files of the core share among themselves and
 * no layer above needs: the fallback ring emulation.
 */
#ifndef KV_CORE_INT_H
#define KV_CORE_INT_H

#include "core/core.h"
#include "util/list.h"

/* ------------------------------------------------------------------------ */
/* uring_emu.c: the fallback mode (io_uring blocked, or KV_IO_URING=0).     */
/* loop.c calls these; the backends see only SQEs and CQEs, as with a ring.  */
/* ------------------------------------------------------------------------ */

typedef struct kv__emu kv__emu;
/*
 * Make the emulator of loop and turn ring into a fake one whose SQ is the
 * emulator's array (sq entries, a power of two; cq is only reported), so
 * io_uring_get_sqe / io_uring_sq_ready / sq.sqe_head..sqe_tail work as
 * with a ring.  Starts a private pool.  KV_OK, KV_ENOMEM or KV_ERROR.
 */
int kv__emu_new(kv__emu **out, kv_loop *loop, struct io_uring *ring,
                unsigned sq, unsigned cq);
void kv__emu_free(kv__emu *e); /* the loop must be idle (not alive) */
/* Set the opcodes the emulator runs in a kv__loop_has_op bitmap. */
void kv__emu_probe(unsigned char ops[32]);
/*
 * Take every SQE prepared since the last submit (chains whole): pool jobs,
 * timers, socket waits or local completions; a chain whose request cannot
 * be allocated completes -ENOMEM (-ECANCELED after its first SQE) through
 * kv__emu_reap.  Never dispatches.  Returns the number taken, or -EAGAIN
 * if none could be (the ring of such completions is full).
 */
int kv__emu_submit(kv__emu *e);
/* Dispatch completions that are due (timers, sockets, local).  True if any. */
bool kv__emu_reap(kv__emu *e);
/* True if completions wait to be dispatched (the loop must not block). */
bool kv__emu_pending_local(const kv__emu *e);
/*
 * Block until efd (the loop's eventfd, drained here), a timer or a socket
 * is ready, or timeout_ms (0: no limit) passes.  1 if the eventfd was
 * signalled (and drained), else KV_OK, or a negated errno.
 */
int kv__emu_wait(kv__emu *e, int efd, unsigned timeout_ms);
/*
 * Host-driven loops (kv_loop_fd): bring the epoll set epfd in step with
 * the sockets the emulator waits on (EPOLLIN for a RECV, EPOLLOUT for a
 * SEND; level-triggered), adding, modifying and deleting registrations.
 * A socket that cannot be registered makes kv__emu_timeout_ms poll (1 ms).
 */
void kv__emu_host_sync(kv__emu *e, int epfd);
/* Milliseconds to the next timer (rounded up; 0 if due), or -1 if none. */
int kv__emu_timeout_ms(const kv__emu *e);
/* loop.c: dispatch a synthetic CQE exactly as a ring CQE. */
void kv__loop_dispatch(kv_loop *loop, uint64_t ud, int res, uint32_t flags);

/* ------------------------------------------------------------------------ */
/* The ready FIFO: loop.c owns it, fut.c fills and runs it.                  */
/* ------------------------------------------------------------------------ */

/*
 * The loop's FIFO of futures whose callbacks are due: fut.c links its
 * futures through their own kv__list node (and holds a reference while one
 * is queued); loop.c only tests it for emptiness (alive, stalled, block).
 */
kv__list *kv__loop_ready(kv_loop *loop);
/* True while a kv_loop_run of loop is in progress (so its callbacks are
 * running).  Loop thread (kv_wait refuses to re-enter it). */
bool kv__loop_running(const kv_loop *loop);
/*
 * Run the loop's ready futures (those queued when the call starts;
 * callbacks that make more futures ready run next turn).  Returns true if
 * any callback ran.  loop.c calls it each turn.
 */
bool kv__fut_run_ready(kv_loop *loop);

/* thread.c: loop.c's kv_loop_new names the new loop the thread's own (if it
 * has none yet); kv_loop_free forgets it. */
void kv__thread_adopt(kv_loop *loop);
void kv__thread_disown(kv_loop *loop);
#endif /* KV_CORE_INT_H */
