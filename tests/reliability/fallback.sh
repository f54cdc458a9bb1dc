#!/bin/sh
# fallback.sh - the conformance and reliability suites again in the loop's
# fallback mode (KV_IO_URING=0: ring operations emulated on worker threads,
# as where seccomp or the kernel.io_uring_disabled sysctl blocks io_uring).
#
# check_loop, check_fs, the conformance programs (tests/conformance/),
# check_alloc, check_stress and check_hostile; the last four through
# redis_env.sh, so that their redis rows run too when redis-server is
# installed.  Excluded: check_fs's "loop-thread" case, which bans read(2)
# on the loop thread (in fallback mode the loop thread reads its eventfd;
# file syscalls still run on the workers only).
set -u
: "${top_builddir:=.}" "${top_srcdir:=.}" "${EXEEXT:=}"
KV_IO_URING=0
export KV_IO_URING
rc=0
# The conformance programs, one per tests/conformance/check_*.c.
conformance=
for src in "$top_srcdir"/tests/conformance/check_*.c; do
    name=${src##*/}
    conformance="$conformance conformance/${name%.c}"
done
for t in core/check_loop backend/check_fs $conformance \
    reliability/check_alloc reliability/check_stress reliability/check_hostile; do
    prog="$top_builddir/tests/$t$EXEEXT"
    if [ ! -x "$prog" ]; then
        echo "fallback.sh: $prog not built, skipped"
        continue
    fi
    echo "fallback.sh: $t with KV_IO_URING=0"
    case $t in
    */check_fs)
        # check has no way to exclude a case: run the others one by one.
        cases=$(sed -n 's/.*tcase_create("\([^"]*\)").*/\1/p' \
            "$top_srcdir/tests/$t.c")
        [ -n "$cases" ] || rc=1
        for c in $cases; do
            [ "$c" = loop-thread ] && continue
            CK_RUN_CASE=$c "$prog" || rc=1
        done ;;
    conformance/*)
        # The local rows: the remote and noloop rows test the hand-off
        # between threads, which is the same in both modes (make check
        # runs them with io_uring).
        KVT_MODE=local sh "$top_srcdir/tests/redis_env.sh" "$prog" || rc=1 ;;
    */check_stress|*/check_alloc|*/check_hostile)
        sh "$top_srcdir/tests/redis_env.sh" "$prog" || rc=1 ;;
    *) "$prog" || rc=1 ;;
    esac
done
exit $rc
