/*
 * kvserver_epoll.c - a TCP key-value server on a plain epoll loop that also
 * drives kvstore: kv_loop_fd sits in the same epoll set as the sockets, and
 * kv_loop_timeout bounds every wait.  One thread; no call ever blocks on
 * the store.  The protocol is in kvproto.h.
 *
 *   kvserver_epoll DBFILE [PORT]    (PORT 0 or absent: any free port)
 *
 * It listens on 127.0.0.1, prints "PORT n" on stdout once it accepts
 * connections, and stops on SHUTDOWN, SIGINT or SIGTERM, closing the store.
 */
#define _GNU_SOURCE /* vasprintf, strdup, accept4 */
#include "kvproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* What an epoll event points at. */
enum { T_LISTEN, T_KV, T_SIGNAL, T_CLIENT };

typedef struct client {
    int type; /* T_CLIENT; first, as in every epoll target */
    int fd;
    int ep;
    bool want_out; /* EPOLLOUT registered */
    kvp_conn *conn;
    struct client *prev, *next; /* every open client */
} client;

static client *clients;

typedef struct target {
    int type;
} target;

static target t_listen = {T_LISTEN}, t_kv = {T_KV}, t_signal = {T_SIGNAL};

static int ep_ctl(int ep, int op, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events};
    ev.data.ptr = ptr;
    return epoll_ctl(ep, op, fd, &ev);
}

static void client_close(client *cl)
{
    (void)epoll_ctl(cl->ep, EPOLL_CTL_DEL, cl->fd, NULL);
    close(cl->fd);
    if (cl->prev != NULL)
        cl->prev->next = cl->next;
    else
        clients = cl->next;
    if (cl->next != NULL)
        cl->next->prev = cl->prev;
    kvp_conn_close(cl->conn); /* freed once its operations finish */
    free(cl);
}

/*
 * Send what is ready; wait for EPOLLOUT only while some is left.  On a
 * send error the client is closed (and false returned) only if may_close:
 * from kvproto's wake it is not (kvproto is in the middle of a call on the
 * connection), and the error shows up again as EPOLLERR/EPOLLHUP.
 */
static bool client_write(client *cl, bool may_close)
{
    size_t len;
    const char *p = kvp_conn_output(cl->conn, &len);
    while (len > 0) {
        ssize_t w = send(cl->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w < 0) {
            if (may_close)
                client_close(cl);
            return !may_close;
        }
        kvp_conn_sent(cl->conn, (size_t)w);
        p = kvp_conn_output(cl->conn, &len);
    }
    bool want = len > 0;
    if (want != cl->want_out &&
        ep_ctl(cl->ep, EPOLL_CTL_MOD, cl->fd, EPOLLIN | (want ? EPOLLOUT : 0),
               cl) == 0)
        cl->want_out = want;
    return true;
}

/* kvproto's wake: replies are ready (runs inside kv_loop_run). */
static void client_wake(void *io)
{
    client *cl = io;
    (void)client_write(cl, false);
}

static void client_read(client *cl)
{
    char buf[4096];
    for (;;) {
        ssize_t r = recv(cl->fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            client_close(cl);
            return;
        }
        kvp_conn_input(cl->conn, buf, (size_t)r);
    }
}

static void accept_all(int lfd, int ep, kvp_server *srv)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("accept4");
            return;
        }
        client *cl = calloc(1, sizeof *cl);
        kvp_conn *conn = NULL;
        if (cl != NULL)
            conn = kvp_conn_new(srv, client_wake, cl);
        if (conn == NULL) {
            free(cl);
            close(fd);
            continue;
        }
        cl->type = T_CLIENT;
        cl->fd = fd;
        cl->ep = ep;
        cl->conn = conn;
        if (ep_ctl(ep, EPOLL_CTL_ADD, fd, EPOLLIN, cl) != 0) {
            perror("epoll_ctl");
            close(fd);
            kvp_conn_close(conn);
            free(cl);
            continue;
        }
        cl->next = clients;
        if (clients != NULL)
            clients->prev = cl;
        clients = cl;
    }
}

static int listen_on(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    printf("PORT %u\n", (unsigned)ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DBFILE [PORT]\n", argv[0]);
        return 2;
    }
    unsigned port = argc == 3 ? (unsigned)strtoul(argv[2], NULL, 10) : 0;
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
        perror("sigprocmask");
        return 1;
    }
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || ep < 0) {
        perror("signalfd/epoll_create1");
        return 1;
    }

    kv_loop *loop;
    kvp_server *srv;
    int rc = kv_loop_new(&loop, NULL);
    if (rc != KV_OK) {
        fprintf(stderr, "kv_loop_new: %s\n", kv_strerror(rc));
        return 1;
    }
    rc = kvp_server_open(&srv, loop, argv[1]);
    if (rc != KV_OK) {
        fprintf(stderr, "open %s: %s (%s)\n", argv[1], kv_strerror(rc),
                kv_last_errmsg());
        kv_loop_free(loop);
        return 1;
    }
    int lfd = listen_on(port);
    if (lfd < 0 || ep_ctl(ep, EPOLL_CTL_ADD, lfd, EPOLLIN, &t_listen) != 0 ||
        ep_ctl(ep, EPOLL_CTL_ADD, sfd, EPOLLIN, &t_signal) != 0 ||
        /* kvstore's descriptor, level-triggered like the others */
        ep_ctl(ep, EPOLL_CTL_ADD, kv_loop_fd(loop), EPOLLIN, &t_kv) != 0) {
        perror("listen/epoll_ctl");
        return 1;
    }

    /* Serve until told to stop, then until the store is closed. */
    bool closing = false;
    for (;;) {
        if (kvp_server_stopping(srv) && !closing) {
            closing = true;
            (void)epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
            close(lfd);
            kvp_server_close(srv);
        }
        if (closing && !kv_loop_alive(loop))
            break; /* the close is done; clients may linger: drop them */
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, kv_loop_timeout(loop));
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            target *t = evs[i].data.ptr;
            if (t->type == T_LISTEN && !closing) {
                accept_all(lfd, ep, srv);
            } else if (t->type == T_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                    kvp_server_close(srv); /* marks it stopping */
            } else if (t->type == T_CLIENT) {
                client *cl = (client *)t;
                if ((evs[i].events & EPOLLOUT) && !client_write(cl, true))
                    continue;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    client_read(cl);
            }
            /* T_KV: nothing to do here but run the loop, below. */
        }
        /* Completions, then the replies their callbacks queued. */
        rc = kv_loop_run(loop, KV_RUN_NOWAIT);
        if (rc < 0) {
            fprintf(stderr, "kv_loop_run: %s\n", kv_strerror(rc));
            break;
        }
    }
    /* Connections still open: drop them (their requests are all done). */
    while (clients != NULL)
        client_close(clients);
    if (!kvp_server_free(srv))
        fprintf(stderr, "kvserver: clients still connected at exit\n");
    rc = kv_loop_free(loop);
    close(ep);
    close(sfd);
    return rc == KV_OK ? 0 : 1;
}
