/*
 * fs_query.c - the filesystem backend's pool jobs: queries (a cursor walks
 * the tree depth-first, reading each logical directory whole with its
 * continuations and buckets, sorted into kv_key_cmp order, and fetches
 * records by name) and drop (deleting keys and everything below them).
 * The submit functions run on the loop thread, the work on the pool.
 */
#include "config.h"

#include "fs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Queries: a depth-first walk on the pool                                  */
/* ------------------------------------------------------------------------ */

/* The next entry of dir: 1 with *de set, 0 at the end, or -errno. */
static int dir_next(DIR *dir, struct dirent **de)
{
    errno = 0;
    *de = readdir(dir);
    if (*de != NULL)
        return 1;
    return errno != 0 ? -errno : 0;
}

/* The record file name of the escaped piece base: base ".kv". */
#define REC_NAME_SIZE (CHUNK + 4)
static void rec_name(char out[REC_NAME_SIZE], const char *base)
{
    snprintf(out, REC_NAME_SIZE, "%s.kv", base);
}

typedef struct qent {
    char *id;   /* decoded namespace id */
    char *base; /* its last escaped piece */
    int rdir;   /* frame directory holding base.kv, or -1 */
    int sdir;   /* frame directory holding base/, or -1 */
} qent;

/*
 * One physical directory of a logical one.  A piece (the directory itself
 * or a continuation) stays open (d) while its frame lives.  A bucket (the
 * fan-out layout) is read once when the frame is made and closed; its
 * descriptor (fd) is opened again when a record in it is read, and closed
 * when the walk descends below the frame, so that a deep walk holds no
 * more than one frame's buckets open.
 */
typedef struct qdir {
    DIR *d;          /* a piece; NULL for a bucket */
    int fd;          /* a bucket's descriptor, or -1 */
    size_t parent;   /* a bucket: the piece that holds it */
    unsigned bucket; /* a bucket: its number */
} qdir;

/* One logical directory: its physical directories and its sorted
 * entries. */
typedef struct qframe {
    qdir *dirs;
    size_t ndirs;
    qent *ents;
    size_t n, cap, pos;
    int phase;
    kv_key *key; /* the entries are this key's children */
} qframe;

struct cursor {
    fs_state *fs;
    kv_iter *iter;
    kv_key *qkey;
    kv_key *after; /* kv_query.after (a copy), or NULL */
    bool value, desc, started, eof, busy, disposed;
    int64_t skip, left;
    qframe *st;
    size_t nst, capst;
    kv__list link; /* in fs->cursors */
};

/* arr (n elements of sz bytes, room for *cap) with room for one more: the
 * same or a reallocated array (*cap updated; the first holds first), or
 * NULL without memory (arr unchanged). */
static void *grow(void *arr, size_t *cap, size_t n, size_t sz, size_t first)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : first;
    void *na = kv__realloc(arr, nc * sz);
    if (na != NULL)
        *cap = nc;
    return na;
}

/* Close the descriptors of f's buckets (reopened when needed). */
static void frame_close_buckets(qframe *f)
{
    for (size_t i = 0; i < f->ndirs; i++)
        if (f->dirs[i].d == NULL && f->dirs[i].fd >= 0) {
            close(f->dirs[i].fd);
            f->dirs[i].fd = -1;
        }
}

static void frame_fini(qframe *f)
{
    frame_close_buckets(f);
    for (size_t i = 0; i < f->ndirs; i++)
        if (f->dirs[i].d != NULL)
            closedir(f->dirs[i].d);
    kv__free(f->dirs);
    for (size_t i = 0; i < f->n; i++) {
        kv__free(f->ents[i].id);
        kv__free(f->ents[i].base);
    }
    kv__free(f->ents);
    kv_key_free(f->key);
    memset(f, 0, sizeof *f);
}

/* Add a piece (d, taken on success) or, with d NULL, bucket b of piece
 * parent; *idx gets its index. */
static int frame_add_dir(qframe *f, DIR *d, size_t parent, unsigned b,
                         size_t *idx)
{
    qdir *nd = kv__realloc(f->dirs, (f->ndirs + 1) * sizeof *nd);
    if (nd == NULL)
        return KV_ENOMEM;
    f->dirs = nd;
    f->dirs[f->ndirs] = (qdir){d, -1, parent, b};
    if (idx != NULL)
        *idx = f->ndirs;
    f->ndirs++;
    return KV_OK;
}

/* A descriptor of f's directory i (owned by f), or -errno. */
static int frame_dirfd(qframe *f, size_t i)
{
    qdir *q = &f->dirs[i];
    if (q->d != NULL)
        return dirfd(q->d);
    if (q->fd < 0) {
        char bn[BUCKET_NAME_SIZE];
        fs__bucket_name(bn, q->bucket);
        q->fd = fs__subdir_open(dirfd(f->dirs[q->parent].d), bn);
        if (q->fd < 0)
            return -errno;
    }
    return q->fd;
}

static int frame_add_ent(qframe *f, char *id, const char *base, size_t bl,
                         int kind, int di)
{
    qent *ne = grow(f->ents, &f->cap, f->n, sizeof *ne, 16);
    if (ne == NULL)
        return KV_ENOMEM;
    f->ents = ne;
    qent *e = &f->ents[f->n];
    e->base = kv__strndup(base, bl);
    if (e->base == NULL)
        return KV_ENOMEM;
    e->id = id;
    e->rdir = kind == E_REC ? di : -1;
    e->sdir = kind == E_SUB ? di : -1;
    f->n++;
    return KV_OK;
}

/* Decode prefix + the piece and add it as an entry of kind in frame
 * directory di; a name that is not ours is ignored. */
static int frame_add_name(qframe *f, kv_buf *prefix, const char *nm,
                          size_t bl, int kind, size_t di)
{
    size_t plen = prefix->len;
    int rc = kv_buf_append(prefix, nm, bl);
    if (rc == KV_OK) {
        char *id = NULL;
        rc = fs__dec_name((const char *)prefix->data, prefix->len, &id);
        if (rc == KV_OK) {
            rc = frame_add_ent(f, id, nm, bl, kind, (int)di);
            if (rc != KV_OK)
                kv__free(id);
        } else if (rc == KV_EINVAL) {
            rc = KV_OK; /* not ours: ignore */
        }
    }
    prefix->len = plen;
    return rc;
}

/* Read a bucket (dir, not kept) of f, index bi: its records only. */
static int frame_scan_bucket(qframe *f, DIR *dir, size_t bi, kv_buf *prefix)
{
    int rc = KV_OK, more = 0;
    struct dirent *de;
    while (rc == KV_OK && (more = dir_next(dir, &de)) > 0) {
        size_t bl;
        if (fs__entry_kind(de->d_name, &bl, true) == E_REC &&
            (de->d_type == DT_REG || de->d_type == DT_UNKNOWN))
            rc = frame_add_name(f, prefix, de->d_name, bl, E_REC, bi);
    }
    return rc != KV_OK ? rc : more;
}

/* Read piece di of f (prefix: the escaped pieces above).  In the fan-out
 * layout the records are read from the piece's buckets. */
static int frame_scan(qframe *f, size_t di, kv_buf *prefix, unsigned level,
                      bool fanout)
{
    DIR *dir = f->dirs[di].d;
    int rc = KV_OK, more = 0;
    struct dirent *de;
    while (rc == KV_OK && (more = dir_next(dir, &de)) > 0) {
        size_t bl;
        int kind = fs__entry_kind(de->d_name, &bl, fanout);
        if (kind == E_NONE || (kind == E_REC && fanout))
            continue;
        unsigned char t = de->d_type;
        if (kind == E_REC && t != DT_REG && t != DT_UNKNOWN)
            continue;
        if (kind != E_REC && t != DT_DIR && t != DT_UNKNOWN)
            continue;
        if (kind == E_CONT || kind == E_BUCKET) {
            if (level >= 100000)
                continue;
            int fd = fs__subdir_open(dirfd(dir), de->d_name);
            if (fd < 0)
                continue; /* gone, or not ours (a file, a symlink) */
            DIR *sub = fdopendir(fd);
            if (sub == NULL) {
                rc = -errno;
                close(fd);
                break;
            }
            size_t idx = 0;
            if (kind == E_BUCKET) {
                /* Read now, reopened by frame_dirfd when needed. */
                rc = frame_add_dir(f, NULL, di,
                                   (unsigned)fs__bucket_num(de->d_name), &idx);
                if (rc == KV_OK)
                    rc = frame_scan_bucket(f, sub, idx, prefix);
                closedir(sub);
            } else {
                size_t plen = prefix->len;
                rc = kv_buf_append(prefix, de->d_name, bl);
                if (rc == KV_OK)
                    rc = frame_add_dir(f, sub, 0, 0, &idx);
                if (rc != KV_OK)
                    closedir(sub);
                else
                    rc = frame_scan(f, idx, prefix, level + 1, fanout);
                prefix->len = plen;
            }
        } else {
            rc = frame_add_name(f, prefix, de->d_name, bl, kind, di);
        }
    }
    return rc != KV_OK ? rc : more;
}

static int ent_cmp(const void *a, const void *b)
{
    const qent *x = a, *y = b;
    return strcmp(x->id, y->id); /* unsigned bytes: kv_key_cmp order */
}

/* Sort, merge record + children entries of one id, reverse for DESC. */
static void frame_sort(qframe *f, bool desc)
{
    if (f->n == 0)
        return;
    qsort(f->ents, f->n, sizeof *f->ents, ent_cmp);
    size_t o = 0;
    for (size_t i = 0; i < f->n; i++) {
        if (o > 0 && strcmp(f->ents[o - 1].id, f->ents[i].id) == 0) {
            qent *p = &f->ents[o - 1];
            if (p->rdir < 0)
                p->rdir = f->ents[i].rdir;
            if (p->sdir < 0)
                p->sdir = f->ents[i].sdir;
            kv__free(f->ents[i].id);
            kv__free(f->ents[i].base);
            continue;
        }
        f->ents[o++] = f->ents[i];
    }
    f->n = o;
    if (desc)
        for (size_t i = 0; i < o / 2; i++) {
            qent t = f->ents[i];
            f->ents[i] = f->ents[o - 1 - i];
            f->ents[o - 1 - i] = t;
        }
}

/* The bytes of namespace i of key's id (i < kv_key_len(key)). */
static void key_ns_id(const kv_key *key, size_t i, const char **p, size_t *n)
{
    const char *s = kv_key_id(key) + 1; /* "/a:b/c": ids never hold a '/' */
    for (; i > 0; i--)
        s = strchr(s, '/') + 1;
    const char *e = strchr(s, '/');
    *p = s;
    *n = e != NULL ? (size_t)(e - s) : strlen(s);
}

/* An entry's id against the id p[0..n) in ent_cmp's order. */
static int id_cmp(const char *id, const char *p, size_t n)
{
    size_t l = strlen(id), m = l < n ? l : n;
    int c = m > 0 ? memcmp(id, p, m) : 0;
    if (c != 0)
        return c;
    return l < n ? -1 : l > n;
}

/*
 * Keyset pagination: start a new frame f (sorted) strictly after c->after
 * in the query's order, skipping whole entries (a record and everything
 * below it) that lie before it: their directories are never opened.
 * Every entry of f lies strictly below f->key.  If after is not below
 * f->key, they all lie on the same side of it as f->key does (or after
 * it, when after is f->key or above it).  Otherwise after's namespace at
 * f's depth, aid, splits the entries: those before aid in the frame's
 * order are skipped; the entry aid itself is a record at or above after
 * (ASC: before it, so only its children may follow; DESC: after is the
 * record itself, skipped whole, or below it, and its children are
 * positioned again when pushed).
 */
static void frame_seek(const cursor *c, qframe *f)
{
    const kv_key *a = c->after;
    if (a == NULL || f->n == 0)
        return;
    if (!kv_key_is_ancestor(f->key, a)) {
        int cmp = kv_key_cmp(f->key, a);
        if (c->desc ? cmp >= 0 : cmp < 0)
            f->pos = f->n;
        return;
    }
    size_t depth = kv_key_len(f->key), n = 0;
    const char *aid = NULL;
    key_ns_id(a, depth, &aid, &n);
    /* The first entry not before aid in the frame's order. */
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = id_cmp(f->ents[mid].id, aid, n);
        if (c->desc ? cmp > 0 : cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    f->pos = lo;
    if (lo < f->n && id_cmp(f->ents[lo].id, aid, n) == 0) {
        if (!c->desc)
            f->phase = 1; /* its children only */
        else if (kv_key_len(a) == depth + 1)
            f->pos++; /* after itself and its children */
    }
}

static int cursor_push(cursor *c, qframe *nf)
{
    qframe *ns = grow(c->st, &c->capst, c->nst, sizeof *ns, 8);
    if (ns == NULL)
        return KV_ENOMEM;
    c->st = ns;
    c->st[c->nst++] = *nf;
    return KV_OK;
}

/* Push the logical directory fd (taken) whose entries are key's children
 * (key taken). */
static int cursor_push_dir(cursor *c, int fd, kv_key *key)
{
    qframe f;
    memset(&f, 0, sizeof f);
    f.key = key;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = -errno;
        close(fd);
        frame_fini(&f);
        return e;
    }
    int rc = frame_add_dir(&f, d, 0, 0, NULL);
    if (rc != KV_OK) {
        closedir(d);
        frame_fini(&f);
        return rc;
    }
    kv_buf prefix = {NULL, 0, 0};
    rc = frame_scan(&f, 0, &prefix, 0, c->fs->fanout);
    kv__free(prefix.data);
    if (rc == KV_OK) {
        frame_sort(&f, c->desc);
        frame_seek(c, &f);
        rc = cursor_push(c, &f);
    }
    if (rc != KV_OK)
        frame_fini(&f);
    return rc;
}

/* The key of entry e of f. */
static int ent_key(const qframe *f, const qent *e, kv_key **out)
{
    kv_ns ns = {NULL, NULL};
    int rc = kv_ns_parse(&ns, e->id);
    if (rc == KV_OK)
        rc = kv_key_child(out, f->key, &ns, 1);
    kv_ns_free(&ns);
    return rc;
}

/* Set up the first frame: the whole root, or the query key's entry. */
static int cursor_begin(cursor *c)
{
    fs_state *fs = c->fs;
    c->started = true;
    if (kv_key_len(c->qkey) == 0) {
        int fd = fs__dir_dup(fs->rootfd);
        if (fd < 0)
            return -errno;
        kv_key *k = NULL;
        int rc = kv_key_dup(&k, c->qkey);
        if (rc != KV_OK) {
            close(fd);
            return rc;
        }
        return cursor_push_dir(c, fd, k);
    }
    char *base = NULL;
    unsigned b = 0;
    int rc;
    int fd = fs__key_dir_open(fs->rootfd, c->qkey, &base, &b);
    if (fd < 0) {
        if (fd == -ENOENT || fd == -ENOTDIR || fd == -ELOOP) {
            c->eof = true;
            return KV_OK;
        }
        return fd;
    }
    qframe f;
    memset(&f, 0, sizeof f);
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        rc = -errno;
        close(fd);
        kv__free(base);
        return rc;
    }
    const char *id = strrchr(kv_key_id(c->qkey), '/') + 1;
    char *idc = kv__strdup(id);
    rc = frame_add_dir(&f, d, 0, 0, NULL);
    if (rc != KV_OK)
        closedir(d);
    size_t rdi = 0; /* where the record is: the piece, or its bucket */
    if (rc == KV_OK && fs->fanout)
        rc = frame_add_dir(&f, NULL, 0, b, &rdi);
    if (rc == KV_OK && idc == NULL)
        rc = KV_ENOMEM;
    if (rc == KV_OK)
        rc = kv_key_slice(&f.key, c->qkey, 0, kv_key_len(c->qkey) - 1);
    if (rc == KV_OK) {
        rc = frame_add_ent(&f, idc, base, strlen(base), E_REC, (int)rdi);
        if (rc == KV_OK)
            idc = NULL;
    }
    if (rc == KV_OK) {
        /* Offsets count records, so know whether this one exists. */
        struct stat st;
        char name[REC_NAME_SIZE];
        rec_name(name, base);
        int rfd = frame_dirfd(&f, rdi);
        if (rfd < 0 && rfd != -ENOENT && rfd != -ENOTDIR && rfd != -ELOOP)
            rc = rfd;
        else if (rfd < 0 ||
                 fstatat(rfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                 !S_ISREG(st.st_mode))
            f.ents[0].rdir = -1;
    }
    if (rc == KV_OK) {
        struct stat st;
        if (fstatat(fd, base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISDIR(st.st_mode))
            f.ents[0].sdir = 0;
        frame_seek(c, &f);
        rc = cursor_push(c, &f);
    }
    kv__free(idc);
    kv__free(base);
    if (rc != KV_OK)
        frame_fini(&f);
    return rc;
}

/*
 * Advance to the next record: 1 with *fi / *ei naming it (frame index and
 * entry), 0 at the end, or an error.
 */
static int cursor_next(cursor *c, size_t *fi, size_t *ei)
{
    fs_state *fs = c->fs;
    while (c->nst > 0) {
        qframe *f = &c->st[c->nst - 1];
        if (f->pos >= f->n) {
            frame_fini(f);
            c->nst--;
            continue;
        }
        qent *e = &f->ents[f->pos];
        int phase = f->phase++;
        bool rec_now = c->desc ? phase == 1 : phase == 0;
        bool sub_now = c->desc ? phase == 0 : phase == 1;
        if (phase >= 2) {
            f->pos++;
            f->phase = 0;
            continue;
        }
        if (rec_now && e->rdir >= 0) {
            *fi = c->nst - 1;
            *ei = f->pos;
            return 1;
        }
        if (sub_now && e->sdir >= 0 && kv_key_len(f->key) + 1 < fs->depth) {
            /* Below this frame, its buckets are not needed. */
            frame_close_buckets(f);
            int fd = fs__subdir_open(dirfd(f->dirs[e->sdir].d), e->base);
            if (fd < 0) {
                if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                    continue;
                return -errno;
            }
            kv_key *k = NULL;
            int rc = ent_key(f, e, &k);
            if (rc != KV_OK) {
                close(fd);
                return rc;
            }
            rc = cursor_push_dir(c, fd, k); /* f may move */
            if (rc != KV_OK)
                return rc;
        }
    }
    return 0;
}

static void cursor_free(cursor *c)
{
    for (size_t i = 0; i < c->nst; i++)
        frame_fini(&c->st[i]);
    kv__free(c->st);
    kv_key_free(c->qkey);
    kv_key_free(c->after);
    if (c->iter != NULL && c->iter->bpriv == c)
        c->iter->bpriv = NULL;
    kv__list_remove(&c->link);
    kv__free(c);
}

/* At teardown: free every cursor, busy or not. */
void fs__cursors_free(fs_state *fs)
{
    while (!kv__list_empty(&fs->cursors))
        cursor_free(KV__LIST_ENTRY(fs->cursors.next, cursor, link));
}

/* At close: detach every cursor from its iterator and free it, or flag it
 * for its fetch in flight to free. */
void fs__cursors_close(fs_state *fs)
{
    kv__list *pos, *tmp;
    KV__LIST_FOREACH_SAFE(pos, tmp, &fs->cursors) {
        cursor *c = KV__LIST_ENTRY(pos, cursor, link);
        if (c->iter != NULL && c->iter->bpriv == c)
            c->iter->bpriv = NULL;
        c->iter = NULL;
        if (c->busy)
            c->disposed = true;
        else
            cursor_free(c);
    }
}

static void fetch_work(kv__job *job)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    cursor *c = j->c;
    size_t cap = FETCH_MAX, n = 0, bytes = 0;
    kv__item *items = kv__items_new(cap);
    int rc = items == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK && !c->started && !c->eof)
        rc = cursor_begin(c);
    while (rc == KV_OK && n < cap && bytes < FETCH_BYTES) {
        if (c->eof || c->left == 0) {
            c->eof = true;
            break;
        }
        size_t fi = 0, ei = 0;
        rc = cursor_next(c, &fi, &ei);
        if (rc == 0) {
            c->eof = true;
            break;
        }
        if (rc < 0)
            break;
        rc = KV_OK;
        if (c->skip > 0) {
            c->skip--;
            continue;
        }
        qframe *f = &c->st[fi];
        qent *e = &f->ents[ei];
        char name[REC_NAME_SIZE];
        rec_name(name, e->base);
        kv__item *it = &items[n];
        int dfd = frame_dirfd(f, (size_t)e->rdir);
        if (dfd == -ENOTDIR || dfd == -ELOOP)
            dfd = -ENOENT; /* a bucket replaced since: not ours */
        rc = dfd < 0 ? dfd
                     : fs__read_record(dfd, name, c->value, &it->val, &it->len,
                                       &it->token);
        if (rc == -ENOENT) {
            rc = KV_OK; /* deleted since the directory was read */
            continue;
        }
        kv_key *k = NULL;
        int krc = ent_key(f, e, &k);
        if (rc == KV_ECORRUPT && krc == KV_OK) {
            /* Reported as a row of its own (iter.c fails or skips it). */
            it->val = kv__asprintf("fs: query: record %s: %s", kv_key_id(k),
                                   kv_strerror(rc));
            it->len = it->val != NULL ? strlen(it->val) : 0;
            it->key = k;
            it->status = KV_ECORRUPT;
            bytes += 64;
            n++;
            if (c->left > 0)
                c->left--;
            rc = KV_OK;
            continue;
        }
        if (rc != KV_OK) {
            snprintf(j->msg, sizeof j->msg, "fs: query: record %s: %s",
                     krc == KV_OK ? kv_key_id(k) : e->base, kv_strerror(rc));
            kv_key_free(k);
            break;
        }
        if (krc != KV_OK) {
            kv__free(it->val);
            it->val = NULL;
            rc = krc;
            break;
        }
        it->key = k;
        it->status = KV_OK;
        bytes += it->len + 64;
        n++;
        if (c->left > 0)
            c->left--;
    }
    if (rc != KV_OK) {
        if (j->msg[0] == '\0')
            snprintf(j->msg, sizeof j->msg, "fs: query: %s",
                     kv_strerror(rc));
        j->status = fs__to_kv(rc);
        if (items != NULL)
            kv__items_free(items, n);
        return;
    }
    if (n == 0) {
        kv__items_free(items, 0);
        items = NULL;
    }
    j->items = items;
    j->n = n;
    j->eof = c->eof;
}

static void job_unlink(fs_state *fs, fjob *j)
{
    kv__list_remove(&j->link);
    fs->njobs--;
}

/* A job of req running work then done, or NULL after completing req
 * with KV_ENOMEM. */
static fjob *job_new(fs_state *fs, kv__req *req, void (*work)(kv__job *),
                     void (*done)(kv__job *, int))
{
    fjob *j = kv__calloc(1, sizeof *j);
    if (j == NULL) {
        fs__defer_done(fs, req, KV_ENOMEM, NULL);
        return NULL;
    }
    j->fs = fs;
    j->req = req;
    j->job.work = work;
    j->job.done = done;
    return j;
}

static void job_submit(fs_state *fs, fjob *j)
{
    kv__list_push_front(&fs->jobs, &j->link);
    fs->njobs++;
    kv__pool_submit(fs->pool, fs->loop, &j->job);
}

static void fetch_done(kv__job *job, int status)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    fs_state *fs = j->fs;
    cursor *c = j->c;
    kv__req *req = j->req;
    job_unlink(fs, j);
    fs->nforeign--;
    c->busy = false;
    if (c->disposed)
        cursor_free(c);
    /* Completing may re-enter submit (a dispose): c is not touched after. */
    if (status != KV_OK) {
        fs__req_end(fs, req, status, NULL);
    } else if (j->status != KV_OK) {
        fs__req_end(fs, req, j->status, kv__strdup(j->msg));
    } else {
        req->items = j->items;
        req->n = j->n;
        req->eof = j->eof;
        fs__req_end(fs, req, KV_OK, NULL);
    }
    kv__free(j);
    fs__check_closed(fs);
}

/* ------------------------------------------------------------------------ */
/* Drop: delete keys and everything below them, on the pool                 */
/* ------------------------------------------------------------------------ */

/* Remove every record and store directory inside dfd (not dot-files: temp
 * files of puts in flight stay, and their directories with them). */
static int drop_tree(int dfd, bool nofsync, bool fanout, unsigned level);

/* Empty the store directory name in dfd (drop_tree) and remove it: *changed
 * if it went, the first error kept in *rc. */
static void drop_dir(int dfd, const char *name, bool nofsync, bool fanout,
                     unsigned level, int *rc, bool *changed)
{
    int sub = fs__subdir_open(dfd, name);
    if (sub < 0)
        return; /* gone, or not ours (a file, a symlink) */
    int r = drop_tree(sub, nofsync, fanout, level);
    close(sub);
    if (r != KV_OK && *rc == KV_OK)
        *rc = r;
    if (unlinkat(dfd, name, AT_REMOVEDIR) == 0)
        *changed = true;
}

static int drop_tree(int dfd, bool nofsync, bool fanout, unsigned level)
{
    DIR *d = NULL;
    int rc = fs__dir_stream(dfd, &d);
    if (rc != 0)
        return rc;
    bool changed = false;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t bl;
        int kind = fs__entry_kind(de->d_name, &bl, fanout);
        if (kind == E_NONE)
            continue;
        if (kind == E_REC) {
            if (unlinkat(dfd, de->d_name, 0) == 0)
                changed = true;
            else if (errno != ENOENT && rc == KV_OK)
                rc = -errno;
            continue;
        }
        if (level <= 100000)
            drop_dir(dfd, de->d_name, nofsync, fanout, level + 1, &rc,
                     &changed);
    }
    closedir(d);
    if (changed && !nofsync && fsync(dfd) != 0 && rc == KV_OK)
        rc = -errno;
    return rc;
}

static int drop_key(fs_state *fs, const kv_key *key)
{
    if (kv_key_len(key) == 0)
        return drop_tree(fs->rootfd, fs->nofsync, fs->fanout, 0);
    char *base = NULL;
    unsigned b = 0;
    int dfd = fs__key_dir_open(fs->rootfd, key, &base, &b);
    if (dfd < 0)
        return dfd == -ENOENT ? KV_OK : dfd;
    int rc = KV_OK;
    bool changed = false;
    char name[REC_NAME_SIZE];
    rec_name(name, base);
    if (fs->fanout) {
        /* The record is in its bucket, which stays (shared). */
        char bn[BUCKET_NAME_SIZE];
        fs__bucket_name(bn, b);
        int bfd = fs__subdir_open(dfd, bn);
        if (bfd >= 0) {
            if (unlinkat(bfd, name, 0) == 0) {
                if (!fs->nofsync && fsync(bfd) != 0)
                    rc = -errno;
            } else if (errno != ENOENT) {
                rc = -errno;
            }
            close(bfd);
        } else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP) {
            rc = -errno; /* (a symlink or a file there is not ours) */
        }
    } else if (unlinkat(dfd, name, 0) == 0) {
        changed = true;
    } else if (errno != ENOENT) {
        rc = -errno;
    }
    drop_dir(dfd, base, fs->nofsync, fs->fanout, 0, &rc, &changed);
    if (changed && !fs->nofsync && fsync(dfd) != 0 && rc == KV_OK)
        rc = -errno;
    close(dfd);
    kv__free(base);
    return rc;
}

static void drop_work(kv__job *job)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    kv__req *req = j->req;
    for (size_t i = 0; i < req->n; i++) {
        int rc = drop_key(j->fs, req->items[i].key);
        if (rc != KV_OK && j->status == KV_OK) {
            j->status = fs__to_kv(rc);
            snprintf(j->msg, sizeof j->msg, "fs: drop %s: %s",
                     kv_key_id(req->items[i].key), kv_strerror(rc));
        }
    }
}

static void drop_done(kv__job *job, int status)
{
    fjob *j = KV__CONTAINER_OF(job, fjob, job);
    fs_state *fs = j->fs;
    kv__req *req = j->req;
    job_unlink(fs, j);
    fs->ndrops--;
    if (status == KV_OK) {
        for (size_t i = 0; i < req->n; i++) {
            const kv_key *key = req->items[i].key;
            if (kv_key_len(key) == 0) {
                fs__dir_invalidate_below(fs, "");
                continue;
            }
            char *dir = NULL, *base = NULL;
            if (fs__key_paths(key, &dir, &base, NULL) == KV_OK) {
                char *p = fs__child_dir_path(dir, base);
                if (p != NULL)
                    fs__dir_invalidate_below(fs, p);
                kv__free(p);
            }
            kv__free(dir);
            kv__free(base);
        }
    }
    if (status != KV_OK)
        fs__req_end(fs, req, status, NULL);
    else
        fs__req_end(fs, req, j->status,
                    j->status != KV_OK ? kv__strdup(j->msg) : NULL);
    kv__free(j);
    fs__check_closed(fs);
}

void fs__query_submit(fs_state *fs, kv__req *req)
{
    kv_iter *it = req->iter;
    const kv_query *q = &it->q;
    size_t len = q->key != NULL ? kv_key_len(q->key) : 0;
    if (len > fs->depth) {
        fs__defer_done(fs, req, KV_EINVAL,
                       kv__asprintf("fs: query key %s is deeper than the "
                                    "store's depth %u",
                                    kv_key_id(q->key), fs->depth));
        return;
    }
    cursor *c = kv__calloc(1, sizeof *c);
    int rc = c == NULL ? KV_ENOMEM : KV_OK;
    if (rc == KV_OK) {
        if (q->key != NULL)
            rc = kv_key_dup(&c->qkey, q->key);
        else
            rc = kv_key_parse(&c->qkey, "/");
    }
    if (rc == KV_OK && q->after != NULL)
        rc = kv_key_dup(&c->after, q->after);
    if (rc != KV_OK) {
        if (c != NULL)
            kv_key_free(c->qkey);
        kv__free(c);
        fs__defer_done(fs, req, rc, NULL);
        return;
    }
    c->fs = fs;
    c->iter = it;
    c->value = q->value;
    c->desc = q->sort == KV_SORT_DESC;
    c->skip = q->offset > 0 ? q->offset : 0;
    c->left = q->limit < 0 ? -1 : q->limit;
    kv__list_push_front(&fs->cursors, &c->link);
    it->bpriv = c;
    fs__defer_done(fs, req, KV_OK, NULL);
}

void fs__fetch_submit(fs_state *fs, kv__req *req)
{
    cursor *c = req->iter != NULL ? req->iter->bpriv : NULL;
    if (c == NULL || c->disposed || c->busy) {
        fs__defer_done(fs, req, c == NULL || c->disposed ? KV_EITER : KV_EBUSY,
                       NULL);
        return;
    }
    if (c->eof) {
        req->items = NULL;
        req->n = 0;
        req->eof = true;
        fs__defer_done(fs, req, KV_OK, NULL);
        return;
    }
    fjob *j = job_new(fs, req, fetch_work, fetch_done);
    if (j == NULL)
        return;
    j->c = c;
    c->busy = true;
    fs->nforeign++; /* it reads records by name (see "Spare files") */
    fs->foreign_gen++;
    job_submit(fs, j);
}

void fs__dispose_submit(fs_state *fs, kv__req *req)
{
    cursor *c = req->iter != NULL ? req->iter->bpriv : NULL;
    if (c != NULL) {
        req->iter->bpriv = NULL;
        c->iter = NULL;
        if (c->busy)
            c->disposed = true; /* freed when its fetch returns */
        else
            cursor_free(c);
    }
    fs__defer_done(fs, req, KV_OK, NULL);
}

void fs__drop_submit(fs_state *fs, kv__req *req)
{
    if (fs->readonly) {
        fs__defer_done(fs, req, KV_EREADONLY, NULL);
        return;
    }
    for (size_t i = 0; i < req->n; i++)
        if (req->items[i].key == NULL ||
            kv_key_len(req->items[i].key) > fs->depth) {
            fs__defer_done(fs, req, KV_EINVAL,
                           kv__strdup("fs: drop: key missing or deeper than "
                                      "the store's depth"));
            return;
        }
    fjob *j = job_new(fs, req, drop_work, drop_done);
    if (j == NULL)
        return;
    fs->ndrops++; /* no spare is kept until it is done */
    fs__spares_drain(fs);
    job_submit(fs, j);
}
