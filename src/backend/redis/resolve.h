/*
 * resolve.h - host-name look-ups of the Redis backend (resolve.c), apart
 * from redis_int.h because <netdb.h> declares a function rcmd, the name of
 * the backend's command type.
 */
#ifndef KV_REDIS_RESOLVE_H
#define KV_REDIS_RESOLVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A node's host name (a DNS name or an address literal) and the addresses
 * it resolved to (tried in turn). */
#define HOST_LEN 254
#define NADDRS 8

/* getaddrinfo(host, port) into addrs (at most NADDRS; blocking): KV_OK,
 * or KV_EBACKEND/KV_ENOMEM with err saying why. */
int redis__resolve(const char *host, int port, struct sockaddr_storage *addrs,
                   socklen_t *lens, unsigned *n, char *err, size_t errlen);
/* The same on a helper thread, waited for until deadline (ms,
 * CLOCK_MONOTONIC; 0: no deadline; then KV_EBACKEND).  For the open. */
int redis__resolve_until(const char *host, int port, uint64_t deadline,
                         struct sockaddr_storage *addrs, socklen_t *lens,
                         unsigned *n, char *err, size_t errlen);

#ifdef KV_TEST_HOOKS /* the test library only (Makefile.am) */
/* Test hook (any thread): look-ups of name (case-insensitive) answer the
 * address literals of list (comma-separated, in that order, at most
 * NADDRS) instead of asking the resolver; a name the machine could not
 * make resolve to a dead address first.  name NULL: no such answer. */
void kv__redis_test_resolve(const char *name, const char *list);
#endif

#endif /* KV_REDIS_RESOLVE_H */
