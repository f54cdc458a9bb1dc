/*
 * kvclient.c - the test client of the example servers (kvproto.h): puts,
 * gets, compare-and-swap conflicts, and a held operation (a worker stuck as
 * on a slow disk) that must not stall the other clients, then SHUTDOWN.
 * Ordering is asserted, never timing.
 *
 *   kvclient PORT      exit status 0 if every check passed
 */
#define _GNU_SOURCE /* vasprintf, strdup, accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A reply that takes longer than this means the server hangs. */
#define HANG_MS 60000

typedef struct conn {
    const char *name;
    int fd;
    char buf[8192];
    size_t len;
} conn;

static int failures;

static void die(const char *what)
{
    fprintf(stderr, "kvclient: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void connect_to(conn *c, const char *name, unsigned port)
{
    c->name = name;
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
}

static void sendf(conn *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line - 1) {
        fprintf(stderr, "kvclient: command too long\n");
        exit(1);
    }
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = send(c->fd, line + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            die("send");
        off += (int)w;
    }
}

/* True if a whole reply line is already there or arrives within ms. */
static bool line_ready(conn *c, int ms)
{
    for (;;) {
        if (memchr(c->buf, '\n', c->len) != NULL)
            return true;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("poll");
        if (r == 0)
            return false;
        if (c->len == sizeof c->buf) {
            fprintf(stderr, "kvclient: %s: reply too long\n", c->name);
            exit(1);
        }
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("recv");
        if (n == 0) {
            fprintf(stderr, "kvclient: %s: server closed the connection\n",
                    c->name);
            exit(1);
        }
        c->len += (size_t)n;
    }
}

/* The next reply line (static buffer). */
static const char *reply(conn *c)
{
    static char line[8192];
    if (!line_ready(c, HANG_MS)) {
        fprintf(stderr, "kvclient: %s: no reply in %d ms: server hangs\n",
                c->name, HANG_MS);
        exit(1);
    }
    char *nl = memchr(c->buf, '\n', c->len);
    size_t n = (size_t)(nl - c->buf);
    memcpy(line, c->buf, n);
    line[n] = '\0';
    memmove(c->buf, nl + 1, c->len - n - 1);
    c->len -= n + 1;
    return line;
}

/* Check that the next reply starts with want; returns it. */
static const char *expect(conn *c, const char *want, int line)
{
    const char *r = reply(c);
    if (strncmp(r, want, strlen(want)) != 0) {
        fprintf(stderr, "kvclient:%d: %s: got \"%s\", want \"%s...\"\n", line,
                c->name, r, want);
        failures++;
    }
    return r;
}
#define EXPECT(c, want) expect((c), (want), __LINE__)

static unsigned long long token_of(const char *r)
{
    const char *sp = strchr(r, ' ');
    return sp != NULL ? strtoull(sp + 1, NULL, 10) : 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    unsigned port = (unsigned)strtoul(argv[1], NULL, 10);
    conn a, b, c;
    connect_to(&a, "client A", port);
    connect_to(&b, "client B", port);
    connect_to(&c, "client C", port);

    /* Puts, gets and compare-and-swap. */
    sendf(&a, "PUT /k/a 0 one");
    unsigned long long t1 = token_of(EXPECT(&a, "OK "));
    sendf(&a, "GET /k/a");
    char want[64];
    snprintf(want, sizeof want, "VALUE %llu one", t1);
    EXPECT(&a, want);
    sendf(&a, "PUT /k/a 0 two"); /* insert-only: the key exists */
    EXPECT(&a, "CONFLICT");
    sendf(&b, "PUT /k/a %llu two", t1);
    unsigned long long t2 = token_of(EXPECT(&b, "OK "));
    sendf(&a, "PUT /k/a %llu three", t1); /* A's token is stale now */
    EXPECT(&a, "CONFLICT");
    sendf(&a, "DEL /k/a %llu", t1);
    EXPECT(&a, "CONFLICT");
    sendf(&a, "GET /k/a");
    snprintf(want, sizeof want, "VALUE %llu two", t2);
    EXPECT(&a, want);
    sendf(&a, "DEL /k/a %llu", t2);
    EXPECT(&a, "OK 0");
    sendf(&a, "GET /k/a");
    EXPECT(&a, "NOTFOUND");
    sendf(&a, "FROB x");
    EXPECT(&a, "ERR");
    sendf(&a, "PUT / 0 v"); /* the empty key */
    EXPECT(&a, "ERR");

    /*
     * A held operation: A's HOLD occupies a worker until RELEASE, and A
     * pipelines a GET behind it.  Meanwhile C's large atomic batch and B's
     * puts and gets must all be answered: the server's one thread is not
     * stalled.  A gets nothing before RELEASE, then its replies in order.
     */
    sendf(&a, "HOLD");
    sendf(&a, "GET /k/a"); /* deleted above */
    sendf(&c, "BATCH 2000");
    for (int i = 0; i < 20; i++) {
        sendf(&b, "PUT /k/b%d 0 v%d", i, i);
        EXPECT(&b, "OK ");
        sendf(&b, "GET /k/b%d", i);
        snprintf(want, sizeof want, "v%d", i);
        const char *r = EXPECT(&b, "VALUE ");
        const char *v = strrchr(r, ' ');
        if (v == NULL || strcmp(v + 1, want) != 0) {
            fprintf(stderr, "kvclient: B: got \"%s\" for /k/b%d\n", r, i);
            failures++;
        }
    }
    EXPECT(&c, "OK batch");
    if (line_ready(&a, 0)) {
        fprintf(stderr, "kvclient: A answered before RELEASE: %s\n",
                reply(&a));
        failures++;
    }
    sendf(&b, "RELEASE");
    EXPECT(&b, "OK released");
    EXPECT(&a, "OK held");
    EXPECT(&a, "NOTFOUND"); /* the pipelined GET, after HOLD's reply */

    sendf(&b, "SHUTDOWN");
    EXPECT(&b, "OK bye");
    close(a.fd);
    close(b.fd);
    close(c.fd);
    if (failures > 0) {
        fprintf(stderr, "kvclient: %d check(s) failed\n", failures);
        return 1;
    }
    printf("kvclient: all checks passed\n");
    return 0;
}
