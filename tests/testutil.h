/*
 * testutil.h - shared helpers for the check suites.
 */
#ifndef KV_TESTUTIL_H
#define KV_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvstore.h"

/* Assert a kvstore call returned code, printing both names on failure. */
#define ck_assert_kv(expr, code)                                              \
    do {                                                                      \
        int kv_rc_ = (expr);                                                  \
        ck_assert_msg(kv_rc_ == (code), "%s: got %s (%d: %s), want %s",       \
                      #expr, kv_err_name(kv_rc_), kv_rc_, kv_strerror(kv_rc_), \
                      kv_err_name(code));                                     \
    } while (0)

/* Make a temporary directory (mkdtemp under $TMPDIR or /tmp).  Caller frees. */
static inline char *tu_mkdtemp(void)
{
    const char *base = getenv("TMPDIR");
    char *path = malloc(4096);
    if (path == NULL)
        return NULL;
    snprintf(path, 4096, "%s/kvstore-test-XXXXXX", base ? base : "/tmp");
    if (mkdtemp(path) == NULL) {
        free(path);
        return NULL;
    }
    return path;
}

/* rm -rf path (test directories only). */
static inline void tu_rmrf(const char *path)
{
    char cmd[4200];
    if (path == NULL || strncmp(path, "/tmp/", 5) != 0) {
        const char *base = getenv("TMPDIR");
        if (path == NULL || base == NULL || strncmp(path, base, strlen(base)))
            return;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

/* Run a suite; returns the process exit status. */
static inline int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
