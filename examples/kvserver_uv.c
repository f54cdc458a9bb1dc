/*
 * kvserver_uv.c - the same TCP key-value server as kvserver_epoll.c, on
 * libuv: kvstore's loop is driven by a uv_poll_t on kv_loop_fd, a
 * uv_prepare_t that asks kv_loop_timeout before libuv waits, and a
 * uv_timer_t for that timeout.  One thread.  The protocol is in kvproto.h.
 *
 *   kvserver_uv DBFILE [PORT]    (PORT 0 or absent: any free port)
 *
 * It listens on 127.0.0.1, prints "PORT n" on stdout once it accepts
 * connections, and stops on SHUTDOWN, SIGINT or SIGTERM, closing the store.
 */
#define _GNU_SOURCE /* vasprintf, strdup, accept4 */
#include "kvproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct uclient {
    uv_tcp_t tcp;
    kvp_conn *conn;
    bool closing;
    struct uclient *prev, *next;
} uclient;

typedef struct wreq {
    uv_write_t w;
    char data[];
} wreq;

static uv_loop_t *uv;
static kv_loop *kloop;
static kvp_server *srv;
static uv_tcp_t listener;
static uv_poll_t kv_poll;   /* kv_loop_fd readable */
static uv_prepare_t kv_prep; /* before libuv waits: kv_loop_timeout */
static uv_timer_t kv_timer;  /* ... and its timer */
static uv_signal_t sig_int, sig_term;
static uclient *clients;
static bool closing;
static int status;

static void kv_run(void)
{
    int rc = kv_loop_run(kloop, KV_RUN_NOWAIT);
    if (rc < 0) {
        fprintf(stderr, "kv_loop_run: %s\n", kv_strerror(rc));
        status = 1;
        uv_stop(uv);
    }
}

static void on_kv_readable(uv_poll_t *h, int st, int events)
{
    (void)h;
    (void)events;
    if (st < 0)
        fprintf(stderr, "kv poll: %s\n", uv_strerror(st));
    kv_run();
}

static void on_kv_timer(uv_timer_t *t)
{
    (void)t;
    kv_run();
}

static void on_client_closed(uv_handle_t *h)
{
    uclient *c = h->data;
    kvp_conn_close(c->conn); /* freed once its operations finish */
    free(c);
}

static void client_close(uclient *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        clients = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
}

static void stop_all(void)
{
    while (clients != NULL)
        client_close(clients);
    uv_close((uv_handle_t *)&kv_poll, NULL);
    uv_close((uv_handle_t *)&kv_prep, NULL);
    uv_close((uv_handle_t *)&kv_timer, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
}

/* Before libuv blocks: stop when asked, and bound the wait by kvstore's. */
static void on_prepare(uv_prepare_t *p)
{
    (void)p;
    if (kvp_server_stopping(srv) && !closing) {
        closing = true;
        uv_close((uv_handle_t *)&listener, NULL);
        kvp_server_close(srv);
    }
    if (closing && !kv_loop_alive(kloop)) {
        stop_all(); /* the store is closed: let uv_run end */
        return;
    }
    int ms = kv_loop_timeout(kloop);
    if (ms >= 0)
        uv_timer_start(&kv_timer, on_kv_timer, (uint64_t)ms, 0);
    else
        uv_timer_stop(&kv_timer);
}

static void on_written(uv_write_t *w, int st)
{
    (void)st; /* an error shows up again on the read side */
    free(w);
}

/* kvproto's wake: replies are ready. */
static void client_wake(void *io)
{
    uclient *c = io;
    size_t len;
    const char *p = kvp_conn_output(c->conn, &len);
    if (len == 0 || c->closing)
        return;
    wreq *w = malloc(sizeof *w + len);
    if (w == NULL) {
        fprintf(stderr, "kvserver_uv: out of memory: dropping a client\n");
        client_close(c);
        return;
    }
    memcpy(w->data, p, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->w, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0) {
        free(w);
        return; /* the read side sees the error and closes */
    }
    kvp_conn_sent(c->conn, len);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(suggested);
    b->len = b->base != NULL ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    uclient *c = s->data;
    if (n > 0 && !c->closing)
        kvp_conn_input(c->conn, b->base, (size_t)n);
    else if (n < 0)
        client_close(c);
    free(b->base);
}

static void on_connection(uv_stream_t *l, int st)
{
    if (st < 0 || closing)
        return;
    uclient *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->conn = kvp_conn_new(srv, client_wake, c);
    if (c->conn == NULL || uv_tcp_init(uv, &c->tcp) != 0) {
        if (c->conn != NULL)
            kvp_conn_close(c->conn);
        free(c);
        return;
    }
    c->tcp.data = c;
    c->next = clients;
    if (clients != NULL)
        clients->prev = c;
    clients = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        client_close(c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    kvp_server_close(srv); /* marks it stopping; on_prepare goes on */
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DBFILE [PORT]\n", argv[0]);
        return 2;
    }
    int port = argc == 3 ? atoi(argv[2]) : 0;
    uv = uv_default_loop();
    int rc = kv_loop_new(&kloop, NULL);
    if (rc != KV_OK) {
        fprintf(stderr, "kv_loop_new: %s\n", kv_strerror(rc));
        return 1;
    }
    rc = kvp_server_open(&srv, kloop, argv[1]);
    if (rc != KV_OK) {
        fprintf(stderr, "open %s: %s (%s)\n", argv[1], kv_strerror(rc),
                kv_last_errmsg());
        kv_loop_free(kloop);
        return 1;
    }
    struct sockaddr_in a;
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    int e;
    if ((e = uv_ip4_addr("127.0.0.1", port, &a)) != 0 ||
        (e = uv_tcp_init(uv, &listener)) != 0 ||
        (e = uv_tcp_bind(&listener, (struct sockaddr *)&a, 0)) != 0 ||
        (e = uv_listen((uv_stream_t *)&listener, 64, on_connection)) != 0 ||
        (e = uv_tcp_getsockname(&listener, (struct sockaddr *)&bound,
                                &blen)) != 0 ||
        (e = uv_poll_init(uv, &kv_poll, kv_loop_fd(kloop))) != 0 ||
        (e = uv_poll_start(&kv_poll, UV_READABLE, on_kv_readable)) != 0 ||
        (e = uv_prepare_init(uv, &kv_prep)) != 0 ||
        (e = uv_prepare_start(&kv_prep, on_prepare)) != 0 ||
        (e = uv_timer_init(uv, &kv_timer)) != 0 ||
        (e = uv_signal_init(uv, &sig_int)) != 0 ||
        (e = uv_signal_start(&sig_int, on_signal, SIGINT)) != 0 ||
        (e = uv_signal_init(uv, &sig_term)) != 0 ||
        (e = uv_signal_start(&sig_term, on_signal, SIGTERM)) != 0) {
        fprintf(stderr, "libuv set-up: %s\n", uv_strerror(e));
        return 1;
    }
    printf("PORT %d\n", ntohs(((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);

    uv_run(uv, UV_RUN_DEFAULT);

    /* Run once more so every close callback has run. */
    uv_run(uv, UV_RUN_NOWAIT);
    if (!kvp_server_free(srv)) {
        fprintf(stderr, "kvserver_uv: the store is not closed at exit\n");
        status = 1;
    } else if (kv_loop_free(kloop) != KV_OK) {
        status = 1;
    }
    if (uv_loop_close(uv) != 0)
        fprintf(stderr, "kvserver_uv: libuv handles left open\n");
    return status;
}
