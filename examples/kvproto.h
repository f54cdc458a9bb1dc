/*
 * kvproto.h - the line protocol of the example servers (kvserver_epoll.c,
 * kvserver_uv.c), independent of the event loop that carries the bytes.
 *
 * One command per line, one reply line per command, in order:
 *
 *   GET key                 VALUE token value | NOTFOUND
 *   PUT key token value     OK newtoken | CONFLICT   (token 0: insert only)
 *   DEL key token           OK 0 | CONFLICT
 *   BATCH n                 OK n   (n records in one atomic put: real work)
 *   HOLD                    OK held   (a job holding a worker, as a stuck
 *                                      disk would, until RELEASE)
 *   RELEASE                 OK released
 *   SHUTDOWN                OK bye   (the server stops)
 *   anything else           ERR message
 *
 * Keys are kvstore key paths ("/users/alice"); values are one word.
 */
#ifndef KVPROTO_H
#define KVPROTO_H

#include <kvstore.h>

#include <stdbool.h>
#include <stddef.h>

typedef struct kvp_server kvp_server;
typedef struct kvp_conn kvp_conn;

/* Open the server's store (a SQLite file, durable puts) on loop. */
int kvp_server_open(kvp_server **out, kv_loop *loop, const char *dbpath);
/* True once a client asked for SHUTDOWN. */
bool kvp_server_stopping(const kvp_server *s);
/* Start closing the store: done when kvp_server_free returns true. */
void kvp_server_close(kvp_server *s);
/* Free the server once its store is closed and every connection gone:
 * false (nothing freed) while that is not the case yet. */
bool kvp_server_free(kvp_server *s);

/*
 * A connection: the I/O layer feeds it bytes and is told (wake) when reply
 * bytes are ready.  wake runs on the loop thread, from a kvstore callback.
 */
kvp_conn *kvp_conn_new(kvp_server *s, void (*wake)(void *io), void *io);
void kvp_conn_input(kvp_conn *c, const char *buf, size_t n);
/* The reply bytes ready to send (a view), and how many were sent. */
const char *kvp_conn_output(const kvp_conn *c, size_t *len);
void kvp_conn_sent(kvp_conn *c, size_t n);
/* The peer is gone: no more wake calls; freed once its requests finish. */
void kvp_conn_close(kvp_conn *c);

#endif
