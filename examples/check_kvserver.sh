#!/bin/sh
# check_kvserver.sh - make check's test of the example servers: start each
# (kvserver_epoll; kvserver_uv when configure found libuv) on a free
# loopback port with a fresh SQLite file, run kvclient against it (it ends
# with SHUTDOWN), and require a clean exit of both.
set -u
b="${top_builddir:-.}/examples"
ext="${EXEEXT:-}"
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvserver-XXXXXX") || exit 99
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail=0
ran=0
for name in kvserver_epoll kvserver_uv; do
    server="$b/$name$ext"
    if [ ! -x "$server" ]; then
        echo "$name: not built (libuv1-dev missing?): skipped"
        continue
    fi
    ran=$((ran + 1))
    rm -f "$dir/db" "$dir/db-wal" "$dir/db-shm" "$dir/out"
    # Port 0: the kernel picks a free one; the server prints it.
    "$server" "$dir/db" 0 > "$dir/out" 2> "$dir/err" &
    pid=$!
    port=
    tries=0
    while [ -z "$port" ] && [ $tries -lt 300 ]; do
        port=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$dir/out")
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
        tries=$((tries + 1))
    done
    if [ -z "$port" ]; then
        echo "FAIL: $name did not start"; cat "$dir/err"
        kill "$pid" 2>/dev/null; wait "$pid"; pid=
        fail=1
        continue
    fi
    ok=1
    if ! "$b/kvclient$ext" "$port"; then
        echo "FAIL: kvclient against $name"
        ok=0
        kill "$pid" 2>/dev/null
    fi
    wait "$pid"
    rc=$?
    pid=
    if [ $rc -ne 0 ]; then
        echo "FAIL: $name exited with status $rc"; cat "$dir/err"
        ok=0
    elif [ -s "$dir/err" ]; then
        echo "FAIL: $name wrote to stderr:"; cat "$dir/err"
        ok=0
    fi
    if [ $ok = 1 ]; then
        echo "PASS: $name (port $port)"
    else
        fail=1
    fi
done
[ $ran -gt 0 ] || exit 77
exit $fail
