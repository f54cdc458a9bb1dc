/*
 * resolve.c - host names of the Redis backend: getaddrinfo, run on the
 * store's pool when a node reconnects (node.c), or on a helper thread the
 * open waits for no longer than its deadline.  Every address returned is
 * kept (up to NADDRS) and tried in turn.
 */
#include "config.h"

#include "backend/redis/resolve.h"
#include "store/backend.h"
#include "util/time.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#ifdef KV_TEST_HOOKS
static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;
static char hook_name[HOST_LEN], hook_list[NADDRS * 48];

void kv__redis_test_resolve(const char *name, const char *list)
{
    pthread_mutex_lock(&hook_mu);
    snprintf(hook_name, sizeof hook_name, "%s", name != NULL ? name : "");
    snprintf(hook_list, sizeof hook_list, "%s", list != NULL ? list : "");
    pthread_mutex_unlock(&hook_mu);
}

/* The hook's answer for host: true if it has one (then KV_OK or
 * KV_EBACKEND in *rc). */
static bool hook_resolve(const char *host, int port,
                         struct sockaddr_storage *addrs, socklen_t *lens,
                         unsigned *n, int *rc)
{
    char list[sizeof hook_list];
    pthread_mutex_lock(&hook_mu);
    bool mine = hook_name[0] != '\0' && strcasecmp(hook_name, host) == 0;
    memcpy(list, hook_list, sizeof list);
    pthread_mutex_unlock(&hook_mu);
    if (!mine)
        return false;
    *n = 0;
    char *save = NULL;
    for (char *a = strtok_r(list, ",", &save); a != NULL && *n < NADDRS;
         a = strtok_r(NULL, ",", &save)) {
        struct sockaddr_storage *sa = &addrs[*n];
        memset(sa, 0, sizeof *sa);
        struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
        if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            s4->sin_port = htons((uint16_t)port);
            lens[(*n)++] = sizeof *s4;
        } else if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)port);
            lens[(*n)++] = sizeof *s6;
        }
    }
    *rc = *n > 0 ? KV_OK : KV_EBACKEND;
    return true;
}
#endif

int redis__resolve(const char *host, int port, struct sockaddr_storage *addrs,
                   socklen_t *lens, unsigned *n, char *err, size_t errlen)
{
#ifdef KV_TEST_HOOKS
    int hrc;
    if (hook_resolve(host, port, addrs, lens, n, &hrc)) {
        if (hrc != KV_OK)
            snprintf(err, errlen, "cannot resolve %s: the test hook "
                     "gave no address", host);
        return hrc;
    }
#endif
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    *n = 0;
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host,
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return rc == EAI_MEMORY ? KV_ENOMEM : KV_EBACKEND;
    }
    for (struct addrinfo *a = res; a != NULL && *n < NADDRS; a = a->ai_next) {
        if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
            a->ai_addrlen > sizeof addrs[0])
            continue;
        memcpy(&addrs[*n], a->ai_addr, a->ai_addrlen);
        lens[*n] = a->ai_addrlen;
        (*n)++;
    }
    freeaddrinfo(res);
    if (*n == 0) {
        snprintf(err, errlen, "cannot resolve %s: no IPv4 or IPv6 address",
                 host);
        return KV_EBACKEND;
    }
    return KV_OK;
}

/* A look-up on a helper thread: whichever of the thread and the waiter
 * lets go last frees it. */
typedef struct tresolve {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool done;
    int rc;
    int port;
    char host[HOST_LEN];
    struct sockaddr_storage addrs[NADDRS];
    socklen_t lens[NADDRS];
    unsigned n;
    char err[HOST_LEN + 96];
} tresolve;

static void tresolve_put(tresolve *t)
{
    pthread_mutex_lock(&t->mu);
    bool last = --t->refs == 0;
    pthread_mutex_unlock(&t->mu);
    if (last) {
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        kv__free(t);
    }
}

static void *tresolve_main(void *arg)
{
    tresolve *t = arg;
    int rc = redis__resolve(t->host, t->port, t->addrs, t->lens, &t->n, t->err,
                            sizeof t->err);
    pthread_mutex_lock(&t->mu);
    t->rc = rc;
    t->done = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    tresolve_put(t);
    return NULL;
}

int redis__resolve_until(const char *host, int port, uint64_t deadline,
                         struct sockaddr_storage *addrs, socklen_t *lens,
                         unsigned *n, char *err, size_t errlen)
{
    tresolve *t = kv__calloc(1, sizeof *t);
    if (t == NULL)
        return KV_ENOMEM;
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        kv__free(t);
        return KV_ENOMEM;
    }
    if (pthread_cond_init(&t->cv, NULL) != 0) {
        pthread_mutex_destroy(&t->mu);
        kv__free(t);
        return KV_ENOMEM;
    }
    snprintf(t->host, sizeof t->host, "%s", host);
    t->port = port;
    t->refs = 2;
    pthread_attr_t at;
    pthread_t th;
    int e = pthread_attr_init(&at);
    if (e == 0) {
        (void)pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        e = pthread_create(&th, &at, tresolve_main, t);
        pthread_attr_destroy(&at);
    }
    if (e != 0) {
        t->refs = 1;
        tresolve_put(t);
        snprintf(err, errlen, "cannot resolve %s: no thread for the look-up "
                 "(%s)", host, strerror(e));
        return e == ENOMEM || e == EAGAIN ? KV_ENOMEM : KV_EBACKEND;
    }
    pthread_mutex_lock(&t->mu);
    while (!t->done) {
        if (deadline == 0) {
            pthread_cond_wait(&t->cv, &t->mu);
            continue;
        }
        uint64_t now = kv__now_ms();
        if (now >= deadline)
            break;
        /* the condition's clock is CLOCK_REALTIME: wait in short steps
         * against the monotonic deadline */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t step = deadline - now < 100 ? deadline - now : 100;
        ts.tv_nsec += (long)(step * 1000000);
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        (void)pthread_cond_timedwait(&t->cv, &t->mu, &ts);
    }
    int rc;
    if (!t->done) {
        snprintf(err, errlen, "cannot resolve %s: no answer before the "
                 "open's deadline", host);
        rc = KV_EBACKEND;
    } else {
        rc = t->rc;
        if (rc == KV_OK) {
            memcpy(addrs, t->addrs, sizeof t->addrs);
            memcpy(lens, t->lens, sizeof t->lens);
            *n = t->n;
        } else {
            snprintf(err, errlen, "%s", t->err);
        }
    }
    pthread_mutex_unlock(&t->mu);
    tresolve_put(t);
    return rc;
}
