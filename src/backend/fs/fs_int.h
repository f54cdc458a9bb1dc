/*
 * fs_int.h - what the files of the filesystem backend share.  Not
 * installed, not API.  The design (on-disk layout, record file, the put
 * chain, tokens, spare files, queries) is in docs/DESIGN.md, "backend/fs".
 *
 *   fs.c         the store: completion helpers, submit and cancel, close
 *                and destroy, open
 *   fs_layout.c  names, paths, bucket directories, entry kinds, .format
 *   fs_record.c  record header and .tokens codecs, CRC32C, blocking reads
 *   fs_dir.c     directory objects, group commit, spare files
 *   fs_kq.c      kop lifecycle: tokens, key queues, admission, submit,
 *                finish, cancel
 *   fs_kop.c     the record operation chains (has/get/put/delete)
 *   fs_query.c   queries and drop (pool jobs)
 *
 * Naming: fs__ for the functions one of these files defines for the others
 * (not static, hidden like kv__ names), plain names for statics.
 */
#ifndef KV_FS_INT_H
#define KV_FS_INT_H

#include "backend/fs/fs.h"
#include "util/list.h"

#include <dirent.h>
#include <linux/openat2.h>
#include <sys/types.h>
#include <sys/uio.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                */
/* ------------------------------------------------------------------------ */

#define HDR_SIZE 40u
#define REC_MAGIC 0x3152564bu /* "KVR1" */
#define REC_VERSION 1u
#define CHUNK 240u            /* longest name piece (+ ".kv" <= NAME_MAX) */
#define READ_FIRST 4096u      /* first read of a get */
#define TOKEN_BLOCK 4096u     /* tokens reserved per .tokens write */
#define TOK_MAGIC 0x4b54564bu /* "KVTK" */
#define TOK_SLOT 32u
#define TOK_SLOT_OFF 512u     /* slot i lives at i * 512 */
#define DIR_IDLE_MAX 256u     /* idle directory descriptors kept open, at
                                 most (fs->idle_max: fd_budget, fs.c) */
#define FETCH_MAX 128u        /* records per ITER_FETCH */
#define FETCH_BYTES (4u << 20)
#define MAX_RETRY 4
#define LOCK_NAME ".lock"
#define TOK_NAME ".tokens"
#define CLEAN_NAME ".clean" /* written by a clean close, removed at open */
#define TMP_PREFIX ".tmp-"
#define FORMAT_NAME ".format" /* the layout, written when a store is made */
#define FORMAT_TMP ".tmp-format"
#define FANOUT 16u            /* buckets per directory (KV_FS_FANOUT) */
#define SPARE_DIR_MAX 64u     /* spare files kept per directory */
#define SPARE_MAX 128u        /* spare files kept per store, at most (each
                                 may pin a directory descriptor:
                                 fs->spare_max: fd_budget, fs.c) */
#define FD_WAITS_MAX 64u      /* EMFILE waits of one kop before failing */
#define RUN_BACKOFF_MAX 6u    /* maxrun's growth after EMFILE waits at most
                                 2^6 rounds a step (fs_kq.c, "Admission") */
#define SPARE_BYTES (64u << 20) /* and their bytes at most (about) */
#define TMPNAME_SIZE 32u      /* ".tmp-" + 16 hex digits + NUL, rounded */
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1) /* linux/fs.h */
#endif
#define BUCKET_NAME_SIZE 8u   /* "0f.b" and its NUL, rounded up */
/* The only two contents of FORMAT_NAME this version knows. */
#define FORMAT_FLAT "kvstore-fs 1\nlayout flat\n"
#define FORMAT_FANOUT "kvstore-fs 1\nlayout fanout 16\n"

/* ------------------------------------------------------------------------ */
/* State                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct fs_state fs_state;
typedef struct kop kop;
typedef struct fsdir fsdir;
typedef struct spare spare;
typedef struct keyq keyq;
typedef struct cursor cursor;

/* Something waiting for a directory to open; fn(w, 0) or fn(w, -errno). */
typedef struct waiter waiter;
struct waiter {
    void (*fn)(waiter *w, int res);
    waiter *next;
    bool create; /* the waiter needs the directory made if missing */
};

enum dstate {
    D_CLOSED,
    D_WAITPARENT,
    D_OPENING,
    D_MKDIR,
    D_MKSYNC,
    D_OPEN,
    D_CLOSING
};

typedef struct dslot {
    kv__op op;
    fsdir *d;
} dslot;

/*
 * An intrusive chained hash table with power-of-two buckets: the directory
 * table and the per-key queues both use it.  fs__htab_reserve makes room for
 * one more entry (the only step that can fail), so fs__htab_link never fails.
 */
typedef struct hlink {
    struct hlink *next;
    uint64_t hash;
} hlink;

typedef struct htab {
    hlink **tab;
    size_t cap, n;
} htab;

/* An open (or opening) directory, shared by every operation inside it. */
struct fsdir {
    fs_state *fs;
    /* A directory is its parent and its name (one component): no object
     * holds its whole path, so a deep path costs memory and time linear in
     * its length, not its square (a key's continuation directories). */
    const char *name; /* its name in parent; "" for the root */
    char *namebuf;    /* owns name; NULL for the root */
    size_t namelen;
    hlink hl;      /* in fs->dirs, hashed by path (fs_dir.c, dir_hash) */
    fsdir *parent; /* holds one nobj reference on it */
    int fd;
    enum dstate state;
    unsigned users; /* holders that need fd open */
    unsigned nobj;  /* child objects whose parent this is */
    bool stale;     /* out of the table: never handed out again */
    bool in_lru;
    bool is_root;
    int tries;
    fsdir *lprev, *lnext;
    fsdir *all_prev, *all_next; /* every object, for teardown */
    waiter *wait_head, *wait_tail;
    waiter pw; /* this directory waiting for its parent */
    dslot s_open, s_mk, s_mksync, s_sync, s_close;
    struct open_how how;
    /* group commit */
    bool syncing;
    unsigned sync_pos; /* SQ tail just after the fsync's SQE */
    kop *ready_head, *ready_tail;
    kop *sync_head;
    /* spare files (see "Spare files"): each holds a user reference */
    spare *spares;
    unsigned nspares, nexch; /* kept; exchanges in flight that may add */
};

/*
 * A spare file: the file of a replaced record, left under a temp name by
 * the put that replaced it (RENAME_EXCHANGE), kept for a later put in the
 * same directory to overwrite.  In d->spares and in the store's FIFO.
 */
struct spare {
    kv__op op;       /* the unlinkat that removes it (fs__spare_drop) */
    fs_state *fs;
    fsdir *d;        /* its directory: one user reference while kept */
    spare *dnext;    /* d->spares */
    spare *fprev, *fnext; /* fs->sp_head..sp_tail, oldest first */
    uint64_t size;   /* its length: a whole record, HDR_SIZE + value */
    char name[TMPNAME_SIZE];
};

enum kkind { K_GET, K_HAS, K_PUT, K_DEL };

enum kstate {
    ST_NEW,
    ST_QUEUED,
    ST_ADMIT, /* waiting for a running slot (fs__kop_admit, fs_kq.c) */
    ST_DIR,
    ST_OPEN,
    ST_HDR,
    ST_READ,
    ST_TOKEN,
    ST_TMP,
    ST_WRITE,
    ST_RENAME, /* a plain rename after a refused exchange */
    ST_UNLINK,
    ST_DSYNC,
    ST_CLEAN,
    ST_DONE
};

enum { SL_OPEN, SL_READ, SL_WRITE, SL_FSYNC, SL_CLOSE, SL_NAME, SL_BG, SL_N };

typedef struct kslot {
    kv__op op;
    kop *k;
    int res;
    bool busy;
} kslot;

/* One record operation: one item of a has/get/put/delete request. */
struct kop {
    fs_state *fs;
    kv__req *req;
    kv__item *it;
    enum kkind kind;
    enum kstate state;
    bool want_value;
    bool canceled;
    bool done;
    bool fsync_in_chain;
    unsigned pending; /* CQEs still to come */
    kslot sl[SL_N];
    char *dirpath;
    char *fname; /* base + ".kv" */
    char tmpname[TMPNAME_SIZE];
    fsdir *dir; /* held (users) while set */
    waiter dw;
    int fd;
    bool tmp_exists;
    int retries;
    unsigned fd_waits; /* times it waited for a descriptor (EMFILE) */
    uint64_t fd_gen;   /* fs->fd_gen when it last started or submitted */
    struct open_how how;
    unsigned char rhdr[HDR_SIZE];
    unsigned char whdr[HDR_SIZE];
    uint64_t new_token;
    uint64_t cur_size;  /* the record's length when its header was read */
    spare *sp;          /* the spare reused, or kept for the one made */
    spare *sp_made;     /* the file its exchange replaced, until synced */
    uint64_t foreign_mark; /* fs->foreign_gen when the exchange was sent */
    bool foreign;       /* runs outside a key queue (counted in nforeign) */
    bool reused;        /* tmpname is a spare being overwritten */
    bool no_spare;      /* opening a spare failed: create a temp file */
    bool exch;          /* the rename is a RENAME_EXCHANGE (reserved) */
    bool put_counted;   /* counted in fs->nputs */
    struct iovec iov[2];
    uint64_t woff, wtotal;
    unsigned char *rbuf;
    size_t rcap, rgot, rreq;
    int err;
    char *errmsg;
    keyq *kq;
    kop *qnext; /* key queue */
    kop *gnext; /* directory sync / token wait lists */
    kop *anext, *aprev; /* every live kop */
    kop *dnext, *dprev; /* fs->adm_head queue while ST_ADMIT */
    bool admitted;      /* counted in fs->nrun */
};

struct keyq {
    hlink hl;          /* in fs->keyqs, hashed by key */
    const kv_key *key; /* borrowed from the head kop */
    kop *head, *tail;
};

/* A pool job of the backend (query fetch, dispose, drop). */
typedef struct fjob {
    kv__job job;
    fs_state *fs;
    kv__req *req;
    cursor *c;
    int status;
    char msg[256];
    kv__item *items;
    size_t n;
    bool eof;
    kv__list link; /* in fs->jobs while submitted */
} fjob;

struct fs_state {
    kv_store *store;
    kv_loop *loop;
    kv_pool *pool;
    char *root;
    int rootfd, lockfd, tokfd;
    unsigned depth, flags;
    bool nofsync, readonly, use_openat2;
    bool fanout; /* records in FANOUT bucket directories (KV_FS_FANOUT) */
    /* tokens */
    uint64_t tok_next, tok_hwm, tok_gen, tok_new;
    bool tok_refilling;
    int tok_err;
    unsigned tok_pending;
    int tok_wres, tok_fres;
    unsigned char tok_buf[TOK_SLOT];
    kv__op tok_wop, tok_fop;
    kop *tok_head, *tok_tail;
    /* key queues */
    htab keyqs;
    /* directories */
    htab dirs;
    fsdir *rootdir;
    fsdir *dirs_all;
    fsdir *lru_head, *lru_tail;
    size_t nidle;
    /* accounting */
    size_t nsqe, njobs, nkops;
    kop *kops;
    kv__list jobs;    /* fjob.link: pool jobs submitted, newest first */
    kv__list cursors; /* cursor.link: every open cursor, newest first */
    uint64_t tmp_seq;
    bool in_submit, in_close;
    /* spare files: kept while puts run (nputs > 0), oldest first */
    spare *sp_head, *sp_tail;
    unsigned nspares;
    uint64_t spare_bytes;
    size_t nputs;       /* puts started and not finished */
    /* Readers outside the key queues (query fetches, kops run unordered
     * after an allocation failure): running now, and started ever.  A
     * replaced file is kept as a spare only if none ran during its
     * exchange. */
    unsigned nforeign;
    uint64_t foreign_gen;
    unsigned ndrops;    /* drop jobs in flight */
    bool no_exchange;   /* the file system refused RENAME_EXCHANGE */
    /* Admission: at most maxrun kops run at once (descriptors).  EMFILE
     * lowers maxrun; it grows back to maxrun_cap, fd_budget's, a step each
     * maxrun << run_backoff kops finished (run_done) since the last EMFILE
     * or step; run_probe: the last change was a step (fs_kq.c,
     * "Admission"). */
    size_t nrun, maxrun, maxrun_cap;
    size_t run_done;
    unsigned run_backoff;
    bool run_probe;
    uint64_t nemfile;   /* EMFILE or ENFILE met (kv__fs_admission) */
    /* Ring operations in flight whose completion lets a descriptor of the
     * store go (a directory's close, a kop's background close, a spare's
     * unlink, which then releases its directory): each CQE restarts kops
     * that wait for a descriptor (fs__fd_released). */
    size_t nrel;
    /* Times the store let descriptors go since the open: a close counted
     * in nrel completed, or a kop finished (k_fd_wait: an EMFILE met
     * before may be stale). */
    uint64_t fd_gen;
    /* Descriptor caches, sized from RLIMIT_NOFILE at open (fd_budget). */
    size_t idle_max, spare_max;
    kop *adm_head, *adm_tail;
    bool admitting;
    /* Completions defer_any could not allocate for (see there, fs.c). */
    kv__req *oom_ok, *oom_err;
    kv__job oom_job;
    bool oom_busy;
    bool closing, closed;
    kv__req *close_req;
    uint64_t stats[16]; /* STAT_* */
};

/* stats[] indices, read by kv__fs_stats */
enum {
    STAT_PUTS,
    STAT_DELS,
    STAT_GETS,
    STAT_FILE_FSYNC,
    STAT_DIR_FSYNC,
    STAT_MKDIR,
    STAT_SHORT_WRITES,
    STAT_TMP_LEAKS,
    STAT_RECYCLED, /* puts that overwrote a spare file */
    STAT_EXCHANGED, /* puts that left the replaced file as a spare */
    STAT_N
};

/* For tests and benchmarks: the counters above (KV__FS_NSTATS values). */
#define KV__FS_NSTATS 10
_Static_assert(STAT_N == KV__FS_NSTATS && STAT_N <= 16,
               "kv__fs_stats fills STAT_N values");
void kv__fs_stats(const kv_store *s, uint64_t out[KV__FS_NSTATS]);

/* Kinds of directory entries. */
enum { E_NONE, E_REC, E_SUB, E_CONT, E_BUCKET };

/* fs.c */
hlink *fs__htab_bucket(const htab *t, uint64_t h);
int fs__htab_reserve(htab *t);
void fs__htab_link(htab *t, hlink *l);
void fs__htab_unlink(htab *t, hlink *l);
int fs__to_kv(int res);
int fs__ring_get(fs_state *fs, struct io_uring_sqe **sqes, unsigned n);
void fs__prep_open(fs_state *fs, struct io_uring_sqe *sqe, int dfd,
                   const char *name, int flags, mode_t mode,
                   struct open_how *how);
void fs__defer_done(fs_state *fs, kv__req *req, int status, char *msg);
void fs__req_end(fs_state *fs, kv__req *req, int status, char *msg);
void fs__check_closed(fs_state *fs);

/* fs_record.c */
uint32_t fs__crc32c(const void *data, size_t n);
void fs__hdr_make(unsigned char h[HDR_SIZE], uint64_t token, const void *val,
                  size_t len);
bool fs__hdr_parse(const unsigned char h[HDR_SIZE], uint64_t *token,
                   uint64_t *vlen, uint32_t *vcrc);
void fs__tok_slot_make(unsigned char b[TOK_SLOT], uint64_t gen, uint64_t hwm);
bool fs__tok_slot_parse(const unsigned char b[TOK_SLOT], uint64_t *gen,
                        uint64_t *hwm);
ssize_t fs__pread_full(int fd, void *buf, size_t n, off_t off);
int fs__read_record(int dfd, const char *name, bool want, void **val,
                    size_t *len, uint64_t *token);

/* fs_layout.c */
int fs__dec_name(const char *s, size_t len, char **out);
void fs__bucket_name(char out[BUCKET_NAME_SIZE], unsigned b);
int fs__key_paths(const kv_key *key, char **dir_out, char **base_out,
                  unsigned *bucket);
char *fs__child_dir_path(const char *dir, const char *base);
int fs__dir_dup(int dfd);
int fs__subdir_open(int dfd, const char *name);
int fs__dir_stream(int dfd, DIR **out);
int fs__bucket_num(const char *nm);
int fs__entry_kind(const char *nm, size_t *bl, bool fanout);
int fs__key_dir_open(int rootfd, const kv_key *key, char **base,
                     unsigned *bucket);
int fs__open_layout(fs_state *fs, bool want_fanout, char *msg, size_t msglen);

/* fs_dir.c */
void fs__dir_release(fsdir *d);
fsdir *fs__dir_get(fs_state *fs, const char *path);
bool fs__dir_use(fsdir *d, waiter *w, bool create);
void fs__dir_sync_add(fsdir *d, kop *k);
void fs__dir_cqe_sync(kv__op *op, int res, uint32_t flags);
void fs__spare_unlink(fs_state *fs, spare *sp);
void fs__spare_drop(fs_state *fs, spare *sp);
void fs__spares_drain(fs_state *fs);
spare *fs__spare_take(fs_state *fs, fsdir *d, uint64_t need);
bool fs__exch_want(kop *k);
void fs__exch_release(kop *k);
void fs__spare_made(kop *k);
void fs__spare_synced(kop *k, int res);
void fs__dir_invalidate_up(fsdir *d);
void fs__dir_invalidate_below(fs_state *fs, const char *path);
void fs__dirs_close_idle(fs_state *fs);

/* fs_kq.c */
void fs__tok_wcqe(kv__op *op, int res, uint32_t flags);
void fs__tok_fcqe(kv__op *op, int res, uint32_t flags);
int fs__tok_take(fs_state *fs, uint64_t *out);
bool fs__kop_admit(kop *k);
bool fs__fd_can_wait(const fs_state *fs);
void fs__fd_short(fs_state *fs);
void fs__kop_park(kop *k);
void fs__fd_released(fs_state *fs);
void fs__kop_finish(kop *k, int status);
void fs__kop_free(kop *k);
void fs__rec_submit(fs_state *fs, kv__req *req, enum kkind kind);
void fs__cancel_kops(fs_state *fs, kv__req *req, bool ring_cancel);

/* fs_kop.c */
void fs__kop_cqe(kv__op *op, int res, uint32_t flags);
void fs__kop_start(kop *k);
void fs__kop_token_ready(kop *k);
void fs__kop_synced(kop *k, int res);

/* fs_query.c */
void fs__cursors_free(fs_state *fs);
void fs__cursors_close(fs_state *fs);
void fs__query_submit(fs_state *fs, kv__req *req);
void fs__fetch_submit(fs_state *fs, kv__req *req);
void fs__dispose_submit(fs_state *fs, kv__req *req);
void fs__drop_submit(fs_state *fs, kv__req *req);

#endif /* KV_FS_INT_H */
