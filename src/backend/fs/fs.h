/*
 * backend/fs/fs.h - the fs backend's decoders that the fuzz targets call
 * (kv_fs_open, its entry point, is public: kvstore.h).
 */
#ifndef KV_BACKEND_FS_H
#define KV_BACKEND_FS_H

#include "store/backend.h"

/*
 * fs.c test hooks: the decoders of bytes read from disk, for the fuzz
 * targets (any thread).  kv__fs_record_make appends a record file's bytes
 * (header and value) to out.  kv__fs_record_check checks buf[0..len) as a
 * whole record file, as a get does: KV_OK with the token and where the
 * value lies, or KV_ECORRUPT.  kv__fs_name_decode turns an escaped path
 * piece back into a namespace id (a heap string): KV_OK, KV_EINVAL (not the
 * canonical escape of a valid id) or KV_ENOMEM; kv__fs_name_encode appends
 * the escape of id[0..len) to out.
 */
int kv__fs_record_make(uint64_t token, const void *val, size_t len,
                       kv_buf *out);
int kv__fs_record_check(const void *buf, size_t len, uint64_t *token,
                        size_t *voff, size_t *vlen);
int kv__fs_name_decode(const char *name, size_t len, char **id);
int kv__fs_name_encode(const char *id, size_t len, kv_buf *out);

/*
 * fs.c test hook (on the store's loop thread, between operations): how
 * many kops store s lets run at once now (maxrun), the cap fd_budget set
 * at open (maxrun never exceeds it), and how many times a kop met EMFILE
 * or ENFILE since the open (fs_kq.c, "Admission"); zeros for a store of
 * another backend.
 */
void kv__fs_admission(const kv_store *s, size_t *maxrun, size_t *cap,
                      uint64_t *emfiles);
#endif /* KV_BACKEND_FS_H */
