/*
 * toolutil.h - helpers shared by kvbench and kvctl (not part of the library).
 *
 * Store URIs, number/size/time parsing, base64, and JSON string
 * writing/reading.  Everything here is plain C on top of kvstore.h.
 */
#ifndef KV_TOOLUTIL_H
#define KV_TOOLUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvstore.h"

/* ------------------------------------------------------------------------ */
/* Store URIs: sqlite:memory, sqlite:PATH, fs:PATH, and kvbench's peers.    */
/* ------------------------------------------------------------------------ */

typedef enum tu_backend {
    TU_SQLITE_MEM, /* sqlite:memory (also sqlite::memory:)            */
    TU_SQLITE,     /* sqlite:PATH                                     */
    TU_FS,         /* fs:PATH[?fanout=1]                              */
    TU_SQLITE_RAW, /* sqlite-raw:PATH  (kvbench peer, not kvstore)    */
    TU_LMDB,       /* lmdb:PATH        (kvbench peer)                 */
    TU_ROCKSDB,    /* rocksdb:PATH     (kvbench peer)                 */
    TU_REDIS       /* redis[s]://[USER[:PASS]@]HOST[:PORT][,...]
                      [/prefix][?options] (kvstore-redis(3))          */
} tu_backend;

typedef struct tu_uri {
    tu_backend kind;
    char *path;     /* heap copy; NULL for sqlite:memory */
    unsigned flags; /* kv_*_open flags the URI asks for (KV_FS_FANOUT,
                       KV_SQLITE_NO_MAP) */
} tu_uri;

/*
 * uri as it may be shown: the password of a scheme://user:password@
 * URI (Redis's) replaced by "***" (a
 * password must never reach a terminal, a log or a report).  Into out.
 */
const char *tu_uri_shown(const char *uri, char *out, size_t len);

/*
 * Parse uri.  0 on success; -1 with a message in err otherwise.  fs URIs
 * take "?fanout=1" (KV_FS_FANOUT: a new store gets the fan-out layout) or
 * "?fanout=0", sqlite file URIs "?map=0" (KV_SQLITE_NO_MAP: pread, not the
 * file's map) or "?map=1"; a '?' followed by anything else is part of the
 * path.
 */
int tu_uri_parse(tu_uri *out, const char *uri, char *err, size_t errlen);
void tu_uri_free(tu_uri *u);
/* True for backends reached through the kvstore API. */
bool tu_uri_is_kvstore(const tu_uri *u);
/* "sqlite", "sqlite-raw", ... */
const char *tu_backend_name(tu_backend k);

/*
 * Open a kvstore store for u (sqlite, sqlite:memory or fs) with flags and
 * u->flags.
 * Returns a kvstore code; on failure err holds a message that includes
 * kv_last_errmsg().
 */
int tu_open_store(kv_store **out, kv_loop *loop, kv_pool *pool,
                  const tu_uri *u, unsigned flags, char *err, size_t errlen);

/* ------------------------------------------------------------------------ */
/* Numbers                                                                  */
/* ------------------------------------------------------------------------ */

/* Decimal count with optional k/m/g (x1000) suffix, e.g. "1m" = 10^6. */
int tu_parse_count(const char *s, uint64_t *out);
/* Byte size with optional k/m/g (x1024) and optional "b"/"ib", e.g. "4k". */
int tu_parse_size(const char *s, uint64_t *out);
/* Duration: plain number = seconds; suffixes us, ms, s, m, h. Result in ns. */
int tu_parse_duration(const char *s, uint64_t *out_ns);
/* Unsigned 64-bit decimal, whole string, no sign. */
int tu_parse_u64(const char *s, uint64_t *out);
/* Finite double, whole string. */
int tu_parse_double(const char *s, double *out);

/* Monotonic and wall clocks, in nanoseconds. */
uint64_t tu_now_ns(void);
uint64_t tu_wall_ns(void);

/* ------------------------------------------------------------------------ */
/* base64 (RFC 4648, standard alphabet, padded)                             */
/* ------------------------------------------------------------------------ */

/* Encoded length for n bytes (without NUL). */
size_t tu_b64_len(size_t n);
/* Write the encoding of src[0..n) to dst (tu_b64_len(n) bytes + NUL). */
void tu_b64_encode(char *dst, const void *src, size_t n);
/*
 * Decode len characters of src into dst (at least len/4*3 bytes).  Returns
 * the decoded length, or -1 with *bad set to the offset of the first
 * offending character (or len when the length/padding is wrong).
 */
long tu_b64_decode(unsigned char *dst, const char *src, size_t len,
                   size_t *bad);

/* ------------------------------------------------------------------------ */
/* JSON strings                                                             */
/* ------------------------------------------------------------------------ */

/* True if s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool tu_utf8_valid(const void *s, size_t n);
/* Write s[0..n) as a JSON string literal with quotes. s must be UTF-8. */
void tu_json_str(FILE *f, const char *s, size_t n);

/* A growable char buffer. */
typedef struct tu_sbuf {
    char *p;
    size_t len, cap;
} tu_sbuf;
int tu_sbuf_put(tu_sbuf *b, const void *data, size_t n);
void tu_sbuf_free(tu_sbuf *b);

/* ------------------------------------------------------------------------ */
/* JSON lines: the records kvctl dump writes and kvctl load reads           */
/* ------------------------------------------------------------------------ */

/*
 * One line, {"key": "...", "value": "<base64>", "token": N|null} (or
 * "key_base64" instead of "key"; other members are skipped).  r is reused
 * from line to line: zero it once, tu_jrec_free it at the end.
 */
typedef struct tu_jrec {
    tu_sbuf key;        /* the key, decoded and NUL-terminated */
    unsigned char *val; /* the value, decoded (malloc'd; len bytes) */
    size_t len;
    bool has_key, has_val, has_tok;
} tu_jrec;

/* True if line[0..n) holds JSON whitespace only. */
bool tu_jl_blank(const char *line, size_t n);
/*
 * Parse line[0..n) (a trailing newline is whitespace).  0, or -1 with the
 * 0-based offset of the problem in *err_at and a message in err.  A key
 * with a NUL byte, or a missing key or value, is an error.
 */
int tu_jl_parse(const char *line, size_t n, tu_jrec *r, size_t *err_at,
                char *err, size_t errlen);
void tu_jrec_free(tu_jrec *r);

#endif /* KV_TOOLUTIL_H */
