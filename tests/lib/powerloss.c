/*
 * powerloss.c - crash states from a recorded trace (see powerloss.h).
 *
 * The model: inodes (files with their durable and current bytes and the
 * writes not yet covered by an fsync; directories), the directory entries
 * of the checkpoint, and the list of namespace operations (create, mkdir,
 * unlink, rename, exchange) with, for each, whether fsyncs of every
 * directory it touches have covered it.  Inodes of the trace are found by
 * the inode number fault.c recorded for each descriptor (the checkpoint's
 * from the snapshot, new ones from the open or mkdir that made them).
 */
#include "config.h"

#include "powerloss.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PL_NOINO (-1)

typedef struct pw { /* a write not yet covered by an fsync */
    const kv__frec *r; /* NULL: an O_TRUNC */
    uint64_t seq, nsub, chain;
} pw;

typedef struct ino {
    bool dir;
    uint64_t real; /* st_ino, 0 if unknown */
    unsigned char *dur, *cur;
    size_t durlen, curlen;
    pw *pend;
    size_t npend, cappend;
    /* materialisation */
    char *made; /* first path written */
} ino;

typedef struct ent {
    int dir;
    char *name;
    int ino;
} ent;

enum { M_CREATE = 1, M_MKDIR, M_UNLINK, M_RENAME, M_EXCH };

typedef struct meta {
    int kind;
    int d1, d2;      /* directories touched (d2: rename/exchange target) */
    const char *a, *b;
    int i1, i2;      /* inodes placed (i1 at d2/b for a rename, at d1/a for
                        create/mkdir; exchange: i1 from a, i2 from b) */
    bool s1, s2;     /* d1 / d2 covered by an fsync */
    uint64_t seq, nsub, chain;
} meta;

struct pl_base {
    ino *inos;
    size_t ninos;
    ent *ents;
    size_t nents;
    int root;
};

/* The replay's working state. */
typedef struct world {
    ino *inos;
    size_t ninos, capinos;
    ent *vol; /* the entries as the running system sees them */
    size_t nvol, capvol;
    meta *metas;
    size_t nmetas, capmetas;
    int root;
    char *err;
    size_t cap;
} world;

static int fail(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

const char *pl_opname(int op)
{
    switch (op) {
    case IORING_OP_OPENAT:
        return "openat";
    case IORING_OP_WRITE:
        return "write";
    case IORING_OP_FSYNC:
        return "fsync";
    case IORING_OP_CLOSE:
        return "close";
    case IORING_OP_RENAMEAT:
        return "renameat";
    case IORING_OP_UNLINKAT:
        return "unlinkat";
    case IORING_OP_MKDIRAT:
        return "mkdirat";
    default:
        return "op";
    }
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * size);
    if (q != NULL)
        *cap = n;
    return q;
}

/* ------------------------------------------------------------------------ */
/* Snapshot                                                                 */
/* ------------------------------------------------------------------------ */

static void ino_clear(ino *i)
{
    free(i->dur);
    free(i->cur);
    free(i->pend);
    free(i->made);
    memset(i, 0, sizeof *i);
}

void pl_base_free(pl_base *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->ninos; i++)
        ino_clear(&b->inos[i]);
    for (size_t i = 0; i < b->nents; i++)
        free(b->ents[i].name);
    free(b->inos);
    free(b->ents);
    free(b);
}

typedef struct snap {
    pl_base *b;
    size_t capinos, capents;
    char *err;
    size_t cap;
} snap;

static int snap_ino(snap *s, bool dir, uint64_t real)
{
    pl_base *b = s->b;
    void *p = grow(b->inos, &s->capinos, b->ninos + 1, sizeof *b->inos);
    if (p == NULL)
        return fail(s->err, s->cap, "out of memory");
    b->inos = p;
    ino *i = &b->inos[b->ninos];
    memset(i, 0, sizeof *i);
    i->dir = dir;
    i->real = real;
    return (int)b->ninos++;
}

static int read_file(int dfd, const char *name, unsigned char **out,
                     size_t *len)
{
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t cap = 4096, n = 0;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        if (n == cap) {
            unsigned char *q = realloc(buf, cap * 2);
            if (q == NULL)
                break;
            buf = q;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        if (r == 0) {
            close(fd);
            *out = buf;
            *len = n;
            return 0;
        }
        n += (size_t)r;
    }
    free(buf);
    close(fd);
    return -1;
}

static int snap_dir(snap *s, int dfd, int dirid)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fail(s->err, s->cap, "snapshot: %s", strerror(errno));
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return fail(s->err, s->cap, "snapshot: %s", strerror(errno));
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            rc = fail(s->err, s->cap, "snapshot: %s: %s", de->d_name,
                      strerror(errno));
            break;
        }
        if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
            continue; /* not part of the model */
        int id = snap_ino(s, S_ISDIR(st.st_mode), (uint64_t)st.st_ino);
        if (id < 0) {
            rc = -1;
            break;
        }
        pl_base *b = s->b;
        void *p = grow(b->ents, &s->capents, b->nents + 1, sizeof *b->ents);
        char *nm = strdup(de->d_name);
        if (p == NULL || nm == NULL) {
            if (p != NULL)
                b->ents = p;
            free(nm);
            rc = fail(s->err, s->cap, "out of memory");
            break;
        }
        b->ents = p;
        b->ents[b->nents++] = (ent){dirid, nm, id};
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dfd, de->d_name,
                             O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                rc = fail(s->err, s->cap, "snapshot: %s: %s", de->d_name,
                          strerror(errno));
                break;
            }
            rc = snap_dir(s, sub, id);
            close(sub);
        } else {
            ino *i = &b->inos[id];
            if (read_file(dfd, de->d_name, &i->dur, &i->durlen) != 0)
                rc = fail(s->err, s->cap, "snapshot: read %s: %s",
                          de->d_name, strerror(errno));
        }
    }
    closedir(d);
    return rc;
}

int pl_snapshot(pl_base **out, const char *root, char *err, size_t cap)
{
    snap s = {calloc(1, sizeof(pl_base)), 0, 0, err, cap};
    if (s.b == NULL)
        return fail(err, cap, "out of memory");
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        pl_base_free(s.b);
        return fail(err, cap, "snapshot: %s: %s", root, strerror(e));
    }
    s.b->root = snap_ino(&s, true, (uint64_t)st.st_ino);
    int rc = s.b->root < 0 ? -1 : snap_dir(&s, fd, s.b->root);
    close(fd);
    if (rc != 0) {
        pl_base_free(s.b);
        return -1;
    }
    *out = s.b;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Replay                                                                   */
/* ------------------------------------------------------------------------ */

static void world_free(world *w)
{
    for (size_t i = 0; i < w->ninos; i++)
        ino_clear(&w->inos[i]);
    for (size_t i = 0; i < w->nvol; i++)
        free(w->vol[i].name);
    free(w->inos);
    free(w->vol);
    free(w->metas);
}

static int new_ino(world *w, bool dir, uint64_t real)
{
    void *p = grow(w->inos, &w->capinos, w->ninos + 1, sizeof *w->inos);
    if (p == NULL)
        return fail(w->err, w->cap, "out of memory");
    w->inos = p;
    /* A reused inode number now names the new inode only. */
    for (size_t i = 0; real != 0 && i < w->ninos; i++)
        if (w->inos[i].real == real)
            w->inos[i].real = 0;
    ino *i = &w->inos[w->ninos];
    memset(i, 0, sizeof *i);
    i->dir = dir;
    i->real = real;
    return (int)w->ninos++;
}

static int by_real(world *w, uint64_t real, bool dir, const char *what)
{
    for (size_t i = 0; real != 0 && i < w->ninos; i++)
        if (w->inos[i].real == real) {
            if (w->inos[i].dir != dir)
                return fail(w->err, w->cap, "%s: inode %llu is %sa directory",
                            what, (unsigned long long)real, dir ? "not " : "");
            return (int)i;
        }
    return fail(w->err, w->cap, "%s: descriptor of unknown inode %llu", what,
                (unsigned long long)real);
}

static ent *vol_find(world *w, int dir, const char *name)
{
    for (size_t i = 0; i < w->nvol; i++)
        if (w->vol[i].dir == dir && !strcmp(w->vol[i].name, name))
            return &w->vol[i];
    return NULL;
}

static int vol_set(world *w, int dir, const char *name, int id)
{
    ent *e = vol_find(w, dir, name);
    if (e != NULL) {
        e->ino = id;
        return 0;
    }
    void *p = grow(w->vol, &w->capvol, w->nvol + 1, sizeof *w->vol);
    char *nm = strdup(name);
    if (p == NULL || nm == NULL) {
        if (p != NULL)
            w->vol = p;
        free(nm);
        return fail(w->err, w->cap, "out of memory");
    }
    w->vol = p;
    w->vol[w->nvol++] = (ent){dir, nm, id};
    return 0;
}

static void vol_del(world *w, int dir, const char *name)
{
    ent *e = vol_find(w, dir, name);
    if (e == NULL)
        return;
    free(e->name);
    *e = w->vol[--w->nvol];
}

/* Resolve path relative to directory dir: its parent and last component
 * (a pointer into path). */
static int resolve(world *w, int dir, const char *path, int *parent,
                   const char **leaf)
{
    char comp[256];
    const char *p = path;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (slash == NULL)
            break;
        size_t n = (size_t)(slash - p);
        if (n >= sizeof comp)
            return fail(w->err, w->cap, "path too long: %s", path);
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            memcpy(comp, p, n);
            comp[n] = '\0';
            ent *e = vol_find(w, dir, comp);
            if (e == NULL || !w->inos[e->ino].dir)
                return fail(w->err, w->cap, "cannot resolve %s", path);
            dir = e->ino;
        }
        p = slash + 1;
    }
    if (*p == '\0' || !strcmp(p, ".") || !strcmp(p, ".."))
        return fail(w->err, w->cap, "unsupported path %s", path);
    *parent = dir;
    *leaf = p;
    return 0;
}

static int add_meta(world *w, const kv__frec *r, meta m)
{
    void *p = grow(w->metas, &w->capmetas, w->nmetas + 1, sizeof *w->metas);
    if (p == NULL)
        return fail(w->err, w->cap, "out of memory");
    w->metas = p;
    m.seq = r->seq;
    m.nsub = r->nsub;
    m.chain = r->chain;
    w->metas[w->nmetas++] = m;
    return 0;
}

static int add_pw(world *w, int id, const kv__frec *r)
{
    ino *i = &w->inos[id];
    void *p = grow(i->pend, &i->cappend, i->npend + 1, sizeof *i->pend);
    if (p == NULL)
        return fail(w->err, w->cap, "out of memory");
    i->pend = p;
    i->pend[i->npend++] = (pw){r, r->seq, r->nsub, r->chain};
    return 0;
}

/* Write len bytes at off into *buf (zero-filling a gap). */
static int apply_write(unsigned char **buf, size_t *blen, uint64_t off,
                       const unsigned char *data, size_t len)
{
    if (len == 0)
        return 0;
    size_t end = (size_t)off + len;
    if (end > *blen) {
        unsigned char *q = realloc(*buf, end);
        if (q == NULL)
            return -1;
        memset(q + *blen, 0, end - *blen);
        *buf = q;
        *blen = end;
    }
    if (len > 0) /* an empty write may come with no buffer */
        memcpy(*buf + off, data, len);
    return 0;
}

/* The bytes of a recorded write that reached the file. */
static size_t wlen(const kv__frec *r)
{
    return r->res < 0 ? 0 : (size_t)r->res < r->len ? (size_t)r->res : r->len;
}

/* Does fsync f (recorded) cover an operation (seq, nsub, chain)? */
static bool covers(const kv__frec *f, uint64_t seq, uint64_t nsub,
                   uint64_t chain)
{
    return f->seq >= nsub || (f->chain == chain && f->seq > seq);
}

static int do_fsync(world *w, const kv__frec *r, int id)
{
    ino *i = &w->inos[id];
    if (i->dir) {
        for (size_t k = 0; k < w->nmetas; k++) {
            meta *m = &w->metas[k];
            if (!covers(r, m->seq, m->nsub, m->chain))
                continue;
            if (m->d1 == id)
                m->s1 = true;
            if (m->d2 == id)
                m->s2 = true;
        }
        return 0;
    }
    size_t keep = 0;
    for (size_t k = 0; k < i->npend; k++) {
        pw *p = &i->pend[k];
        if (!covers(r, p->seq, p->nsub, p->chain)) {
            i->pend[keep++] = *p;
            continue;
        }
        if (p->r->op == IORING_OP_OPENAT) {
            i->durlen = 0;
        } else if (apply_write(&i->dur, &i->durlen, p->r->off, p->r->data,
                               wlen(p->r)) != 0) {
            return fail(w->err, w->cap, "out of memory");
        }
    }
    i->npend = keep;
    return 0;
}

static int step(world *w, const kv__frec *r, const pl_opts *o,
                unsigned long *ndirsync, pl_stats *st)
{
    if (r->res < 0)
        return 0; /* failed: no effect modelled */
    int d, d2, id;
    const char *leaf, *leaf2;
    switch (r->op) {
    case IORING_OP_OPENAT: {
        if ((d = by_real(w, r->ino, true, "openat")) < 0 ||
            resolve(w, d, r->path, &d, &leaf) != 0)
            return -1;
        ent *e = vol_find(w, d, leaf);
        bool isdir = (r->flags & O_DIRECTORY) != 0;
        if (e != NULL) {
            id = e->ino;
            if (w->inos[id].real != r->res_ino)
                return fail(w->err, w->cap, "openat %s: inode mismatch",
                            r->path);
            if ((r->flags & O_TRUNC) && !w->inos[id].dir) {
                w->inos[id].curlen = 0;
                if (add_pw(w, id, r) != 0)
                    return -1;
            }
            return 0;
        }
        if (!(r->flags & O_CREAT) || isdir)
            return fail(w->err, w->cap, "openat %s: not in the model",
                        r->path);
        if ((id = new_ino(w, false, r->res_ino)) < 0)
            return -1;
        if (vol_set(w, d, leaf, id) != 0)
            return -1;
        return add_meta(w, r, (meta){.kind = M_CREATE, .d1 = d, .d2 = -1,
                                     .a = leaf, .i1 = id});
    }
    case IORING_OP_WRITE: {
        if ((id = by_real(w, r->ino, false, "write")) < 0)
            return -1;
        if (r->off == UINT64_MAX)
            return fail(w->err, w->cap, "write at the file position");
        ino *i = &w->inos[id];
        if (apply_write(&i->cur, &i->curlen, r->off, r->data, wlen(r)) != 0)
            return fail(w->err, w->cap, "out of memory");
        return add_pw(w, id, r);
    }
    case IORING_OP_FSYNC:
        if ((id = by_real(w, r->ino, r->isdir, "fsync")) < 0)
            return -1;
        if (r->isdir && ++*ndirsync == o->skip_dirsync) {
            st->dirsyncs_skipped++;
            return 0;
        }
        return do_fsync(w, r, id);
    case IORING_OP_CLOSE:
        return 0;
    case IORING_OP_UNLINKAT: {
        if ((d = by_real(w, r->ino, true, "unlinkat")) < 0 ||
            resolve(w, d, r->path, &d, &leaf) != 0)
            return -1;
        ent *e = vol_find(w, d, leaf);
        if (e == NULL)
            return fail(w->err, w->cap, "unlinkat %s: not in the model",
                        r->path);
        id = e->ino;
        vol_del(w, d, leaf);
        return add_meta(w, r, (meta){.kind = M_UNLINK, .d1 = d, .d2 = -1,
                                     .a = leaf, .i1 = id});
    }
    case IORING_OP_MKDIRAT:
        if ((d = by_real(w, r->ino, true, "mkdirat")) < 0 ||
            resolve(w, d, r->path, &d, &leaf) != 0)
            return -1;
        if ((id = new_ino(w, true, r->res_ino)) < 0 ||
            vol_set(w, d, leaf, id) != 0)
            return -1;
        return add_meta(w, r, (meta){.kind = M_MKDIR, .d1 = d, .d2 = -1,
                                     .a = leaf, .i1 = id});
    case IORING_OP_RENAMEAT: {
        if ((d = by_real(w, r->ino, true, "renameat")) < 0 ||
            (d2 = by_real(w, r->ino2, true, "renameat")) < 0 ||
            resolve(w, d, r->path, &d, &leaf) != 0 ||
            resolve(w, d2, r->path2, &d2, &leaf2) != 0)
            return -1;
        ent *a = vol_find(w, d, leaf), *b = vol_find(w, d2, leaf2);
        if (a == NULL)
            return fail(w->err, w->cap, "renameat %s: not in the model",
                        r->path);
        int ia = a->ino;
        if (r->flags & RENAME_EXCHANGE) {
            if (b == NULL)
                return fail(w->err, w->cap, "exchange %s: not in the model",
                            r->path2);
            int ib = b->ino;
            a->ino = ib;
            b->ino = ia;
            return add_meta(w, r, (meta){.kind = M_EXCH, .d1 = d, .d2 = d2,
                                         .a = leaf, .b = leaf2, .i1 = ia,
                                         .i2 = ib});
        }
        if (r->flags & ~(uint64_t)RENAME_NOREPLACE)
            return fail(w->err, w->cap, "renameat flags %#llx unsupported",
                        (unsigned long long)r->flags);
        if (vol_set(w, d2, leaf2, ia) != 0)
            return -1;
        vol_del(w, d, leaf);
        return add_meta(w, r, (meta){.kind = M_RENAME, .d1 = d, .d2 = d2,
                                     .a = leaf, .b = leaf2, .i1 = ia});
    }
    default:
        return fail(w->err, w->cap, "operation %d not modelled", r->op);
    }
}

/* ------------------------------------------------------------------------ */
/* The crash                                                                */
/* ------------------------------------------------------------------------ */

/* The entries after the crash: the checkpoint's, then the namespace
 * operations, the covered ones always, the others with probability
 * pkeep/4. */
static int crash_entries(world *w, const pl_base *b, pl_rng *rng,
                         unsigned pkeep, pl_stats *st, ent **out, size_t *n)
{
    world c = {0};
    c.err = w->err;
    c.cap = w->cap;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < b->nents; i++)
        rc = vol_set(&c, b->ents[i].dir, b->ents[i].name, b->ents[i].ino);
    for (size_t k = 0; rc == 0 && k < w->nmetas; k++) {
        meta *m = &w->metas[k];
        bool durable = m->s1 && (m->d2 < 0 || m->d2 == m->d1 || m->s2);
        if (durable) {
            st->meta_durable++;
        } else if (pl_below(rng, 4) < pkeep) {
            st->meta_kept++;
        } else {
            st->meta_undone++;
            continue;
        }
        switch (m->kind) {
        case M_CREATE:
        case M_MKDIR:
            rc = vol_set(&c, m->d1, m->a, m->i1);
            break;
        case M_UNLINK:
            vol_del(&c, m->d1, m->a);
            break;
        case M_RENAME:
            vol_del(&c, m->d1, m->a);
            rc = vol_set(&c, m->d2, m->b, m->i1);
            break;
        case M_EXCH:
            rc = vol_set(&c, m->d1, m->a, m->i2);
            if (rc == 0)
                rc = vol_set(&c, m->d2, m->b, m->i1);
            break;
        }
    }
    free(c.inos);
    free(c.metas);
    if (rc != 0) {
        for (size_t i = 0; i < c.nvol; i++)
            free(c.vol[i].name);
        free(c.vol);
        return -1;
    }
    *out = c.vol;
    *n = c.nvol;
    return 0;
}

/* A file's bytes after the crash: durable ones, then each uncovered write
 * kept, dropped or torn (mode 0: all kept, 1: all dropped, 2: random). */
static int crash_bytes(const ino *i, pl_rng *rng, unsigned mode,
                       pl_stats *st, unsigned char **out, size_t *len)
{
    unsigned char *buf = malloc(i->durlen ? i->durlen : 1);
    if (buf == NULL)
        return -1;
    if (i->durlen)
        memcpy(buf, i->dur, i->durlen);
    size_t n = i->durlen;
    for (size_t k = 0; k < i->npend; k++) {
        const kv__frec *r = i->pend[k].r;
        unsigned c = mode == 0 ? 0 : mode == 1 ? 1 : (unsigned)pl_below(rng, 3);
        if (c == 1) {
            st->writes_dropped++;
            continue;
        }
        if (r->op == IORING_OP_OPENAT) { /* O_TRUNC */
            n = 0;
            continue;
        }
        size_t l = wlen(r);
        if (c == 2 && l > 0) {
            l = (size_t)pl_below(rng, l); /* a strict prefix */
            st->writes_torn++;
        } else {
            st->writes_kept++;
        }
        if (apply_write(&buf, &n, r->off, r->data, l) != 0) {
            free(buf);
            return -1;
        }
    }
    *out = buf;
    *len = n;
    return 0;
}

typedef struct mat {
    world *w;
    ent *ents;
    size_t nents;
    pl_rng *rng;
    unsigned mode;
    pl_stats *st;
    bool *seen;
} mat;

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int mat_dir(mat *m, int dir, const char *path)
{
    world *w = m->w;
    char sub[4096];
    for (size_t k = 0; k < m->nents; k++) {
        ent *e = &m->ents[k];
        if (e->dir != dir)
            continue;
        ino *i = &w->inos[e->ino];
        if (snprintf(sub, sizeof sub, "%s/%s", path, e->name) >=
            (int)sizeof sub)
            return fail(w->err, w->cap, "path too long");
        if (i->dir) {
            if (m->seen[e->ino])
                continue; /* a directory placed twice: once is enough */
            m->seen[e->ino] = true;
            if (mkdir(sub, 0755) != 0)
                return fail(w->err, w->cap, "mkdir %s: %s", sub,
                            strerror(errno));
            if (mat_dir(m, e->ino, sub) != 0)
                return -1;
            continue;
        }
        if (i->made != NULL) { /* a second name of one inode */
            if (link(i->made, sub) != 0)
                return fail(w->err, w->cap, "link %s: %s", sub,
                            strerror(errno));
            continue;
        }
        unsigned char *buf;
        size_t len;
        if (crash_bytes(i, m->rng, m->mode, m->st, &buf, &len) != 0)
            return fail(w->err, w->cap, "out of memory");
        int fd = open(sub, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        int rc = fd < 0 ? -1 : write_all(fd, buf, len);
        int e2 = errno;
        if (fd >= 0 && close(fd) != 0 && rc == 0) {
            rc = -1;
            e2 = errno;
        }
        free(buf);
        if (rc != 0)
            return fail(w->err, w->cap, "write %s: %s", sub, strerror(e2));
        if ((i->made = strdup(sub)) == NULL)
            return fail(w->err, w->cap, "out of memory");
    }
    return 0;
}

int pl_crash(const pl_base *base, const kv__frec *const *trace, size_t n,
             const pl_opts *opts, pl_rng *rng, const char *outdir,
             pl_stats *st, char *err, size_t cap)
{
    world w = {0};
    w.err = err;
    w.cap = cap;
    w.root = base->root;
    int rc = 0;
    /* The checkpoint: every inode durable, the entries as they were. */
    w.inos = calloc(base->ninos ? base->ninos : 1, sizeof *w.inos);
    if (w.inos == NULL)
        return fail(err, cap, "out of memory");
    w.capinos = base->ninos;
    for (size_t i = 0; i < base->ninos; i++) {
        const ino *s = &base->inos[i];
        ino *d = &w.inos[w.ninos++];
        d->dir = s->dir;
        d->real = s->real;
        d->durlen = d->curlen = s->durlen;
        d->dur = malloc(s->durlen ? s->durlen : 1);
        d->cur = malloc(s->durlen ? s->durlen : 1);
        if (d->dur == NULL || d->cur == NULL) {
            world_free(&w);
            return fail(err, cap, "out of memory");
        }
        if (s->durlen > 0) { /* s->dur may be NULL when empty */
            memcpy(d->dur, s->dur, s->durlen);
            memcpy(d->cur, s->dur, s->durlen);
        }
    }
    for (size_t i = 0; rc == 0 && i < base->nents; i++)
        rc = vol_set(&w, base->ents[i].dir, base->ents[i].name,
                     base->ents[i].ino);
    unsigned long ndirsync = 0;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        rc = step(&w, trace[k], opts, &ndirsync, st);
        if (rc != 0) {
            size_t l = strlen(err);
            snprintf(err + l, cap - l, " (operation %zu: %s)", k,
                     pl_opname(trace[k]->op));
        }
    }
    ent *ents = NULL;
    size_t nents = 0;
    unsigned pkeep = (unsigned)pl_below(rng, 5); /* 0..4 quarters */
    if (rc == 0)
        rc = crash_entries(&w, base, rng, pkeep, st, &ents, &nents);
    if (rc == 0) {
        mat m = {&w, ents, nents, rng, (unsigned)pl_below(rng, 3), st,
                 calloc(w.ninos, sizeof(bool))};
        if (m.seen == NULL)
            rc = fail(err, cap, "out of memory");
        else if (mkdir(outdir, 0755) != 0)
            rc = fail(err, cap, "mkdir %s: %s", outdir, strerror(errno));
        else
            rc = mat_dir(&m, w.root, outdir);
        free(m.seen);
    }
    for (size_t i = 0; i < nents; i++)
        free(ents[i].name);
    free(ents);
    world_free(&w);
    return rc;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) == 0 ? 0 : -1;
}

int pl_rmtree(const char *path)
{
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
