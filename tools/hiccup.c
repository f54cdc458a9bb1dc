/*
 * tools/hiccup.c - how long this machine takes a CPU away from a thread
 * that never sleeps.
 *
 *   hiccup [SECONDS]
 *
 * One thread per online CPU, each pinned to its CPU, reads CLOCK_MONOTONIC
 * in a loop for SECONDS (default 10) and counts the gaps between two reads
 * longer than 1, 5 and 10 ms: the time the thread did not run although it
 * always wanted to.  On an idle machine a gap is an interrupt, another task
 * of this system or, on a virtual machine, the host running something else
 * on the vCPU (which the guest cannot see or schedule around).  Run it under
 * SCHED_FIFO (chrt -f 50, with /proc/sys/kernel/sched_rt_runtime_us at -1
 * for the run, or RT throttling adds its own 50 ms gaps) to leave out the
 * guest's other tasks.  A latency tail cannot be shorter than these gaps:
 * docs/PERF.md ("Write stalls") and bench.sh's hiccup section.
 *
 * Each gap is also told apart by the thread's own CPU clock
 * (CLOCK_THREAD_CPUTIME_ID).  If the guest's scheduler ran another task,
 * that clock stopped during the gap.  If it ran on through most of the gap
 * (at least half), the guest believed the thread was running: the host
 * took the vCPU (a VM without steal-time accounting charges that time to
 * whatever task was on the vCPU) or an interrupt ran in its place.  Those
 * are counted as "unseen by the guest": no tuning of the guest's
 * scheduling removes them.
 *
 * Output: one line per CPU, then exit 0; 2 on bad usage, 1 if a thread
 * could not be started or pinned.  Uses no kvstore code.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct spinner {
    pthread_t t;
    int cpu;
    uint64_t ns;        /* how long to spin */
    unsigned long over1, over5, over10;
    unsigned long unseen1, unseen5; /* gaps the thread's CPU clock ran on */
    uint64_t max, lost; /* the longest gap, and the gaps over 1 ms summed */
    int err;            /* pthread_setaffinity_np's error, 0 if pinned */
} spinner;

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        abort(); /* EINVAL/EFAULT only: cannot happen */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *spin(void *arg)
{
    spinner *s = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(s->cpu, &set);
    s->err = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (s->err != 0)
        return NULL;
    uint64_t last = clock_ns(CLOCK_MONOTONIC), end = last + s->ns;
    uint64_t cpu_last = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    while (last < end) {
        uint64_t t = clock_ns(CLOCK_MONOTONIC), gap = t - last;
        uint64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        if (gap > 1000000u) {
            bool unseen = (cpu - cpu_last) * 2 >= gap;
            s->over1++;
            s->lost += gap;
            s->over5 += gap > 5000000u;
            s->over10 += gap > 10000000u;
            s->unseen1 += unseen;
            s->unseen5 += unseen && gap > 5000000u;
            if (gap > s->max)
                s->max = gap;
        }
        last = t;
        cpu_last = cpu;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double secs = 10;
    char *end = NULL;
    if (argc == 2)
        secs = strtod(argv[1], &end);
    if (argc > 2 || (end != NULL && (end == argv[1] || *end != '\0')) ||
        !(secs > 0 && secs <= 3600)) {
        fprintf(stderr, "usage: hiccup [SECONDS]  (0 < SECONDS <= 3600)\n");
        return 2;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    spinner *sp = calloc((size_t)n, sizeof *sp);
    if (sp == NULL) {
        fprintf(stderr, "hiccup: out of memory\n");
        return 1;
    }
    int rc = 0;
    long started = 0;
    for (long i = 0; i < n; i++) {
        sp[i].cpu = (int)i;
        sp[i].ns = (uint64_t)(secs * 1e9);
        int e = pthread_create(&sp[i].t, NULL, spin, &sp[i]);
        if (e != 0) {
            fprintf(stderr, "hiccup: pthread_create: %s\n", strerror(e));
            rc = 1;
            break;
        }
        started++;
    }
    for (long i = 0; i < started; i++) {
        int e = pthread_join(sp[i].t, NULL);
        if (e != 0) {
            fprintf(stderr, "hiccup: pthread_join: %s\n", strerror(e));
            rc = 1;
            continue;
        }
        if (sp[i].err != 0) {
            fprintf(stderr, "hiccup: cpu%d: cannot pin a thread: %s\n",
                    sp[i].cpu, strerror(sp[i].err));
            rc = 1;
            continue;
        }
        printf("cpu%d: %g s, gaps over 1 ms: %lu, over 5 ms: %lu, "
               "over 10 ms: %lu, longest %.2f ms, time lost in gaps over "
               "1 ms: %.1f%%; unseen by the guest: %lu over 1 ms, %lu over "
               "5 ms\n",
               sp[i].cpu, secs, sp[i].over1, sp[i].over5, sp[i].over10,
               (double)sp[i].max / 1e6,
               100.0 * (double)sp[i].lost / (double)sp[i].ns, sp[i].unseen1,
               sp[i].unseen5);
    }
    free(sp);
    if (fflush(stdout) != 0)
        rc = 1;
    return rc;
}
