#!/bin/sh
# dev.sh - one entry point for a fresh Debian machine.
#
#   scripts/dev.sh run         install what is missing, build, run kvbench on
#                              the embedded default (SQLite in a temp file)
#   scripts/dev.sh test        install what is missing, build, make check
#   scripts/dev.sh sanitizers  the same suite in an ASan+UBSan build
#   scripts/dev.sh deps        only install the Debian packages
#   scripts/dev.sh bench-deps  install the optional benchmark packages
#                              (PKGS_BENCH: kvbench's LMDB and RocksDB peers,
#                              fio, gnuplot for tools/bench.sh's charts), then
#                              reconfigure build/ so kvbench links the peers
#
# Builds go to build/ (and build-san/) beside the sources; nothing is
# installed system-wide except Debian packages.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

# Debian packages: building, testing, and optional extras the suite uses.
PKGS_BUILD="gcc make autoconf automake libtool pkg-config liburing-dev libsqlite3-dev check libhiredis-dev libssl-dev libuv1-dev"
PKGS_TEST="valgrind strace redis-server redis-tools openssl"
# Optional, for tools/bench.sh only (it names what is missing when it runs).
PKGS_BENCH="liblmdb-dev librocksdb-dev fio gnuplot-nox"

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_deps() {
    missing=""
    for p in $PKGS_BUILD $PKGS_TEST ${1:-}; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $p"
        fi
    done
    if [ -n "$missing" ]; then
        echo "dev.sh: installing:$missing"
        need_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # shellcheck disable=SC2086
        need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    fi
}

configure_in() {
    dir=$1; shift
    if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ]; then
        (cd "$top" && autoreconf -fi)
    fi
    mkdir -p "$dir"
    if [ ! -f "$dir/Makefile" ]; then
        (cd "$dir" && "$top/configure" --enable-werror "$@")
    fi
}

build() {
    dir=$1; shift
    configure_in "$dir" "$@"
    make -C "$dir" -j"$jobs"
}

run_check() {
    dir=$1; shift
    build "$dir" "$@"
    if ! make -C "$dir" -j"$jobs" check; then
        # Test logs sit next to their programs, in tests/ and its folders.
        for f in $(find "$dir/tests" -name '*.log' 2>/dev/null); do
            case "$f" in */test-suite.log) continue ;; esac
            if grep -qE '^:test-result: (FAIL|ERROR)' "${f%.log}.trs" 2>/dev/null; then
                echo "=== $f"; tail -n 60 "$f"
            fi
        done
        exit 1
    fi
}

cmd=${1:-test}
case "$cmd" in
deps)
    install_deps ;;
bench-deps)
    install_deps "$PKGS_BENCH"
    rm -f "$top/build/config.status" "$top/build/Makefile" # configure again: the peers
    build "$top/build" ;;
run)
    install_deps
    build "$top/build"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    if [ -x "$top/build/tools/kvbench" ]; then
        "$top/build/tools/kvbench" --name=quick --backend="sqlite:$tmp/bench.db" \
            --rw=randrw --rwmixread=50 --keys=100000 --value-size=100 --load \
            --iodepth=64 --runtime=5 --time_based
    else
        "$top/build/examples/quickstart"
    fi ;;
test)
    install_deps
    run_check "$top/build" ;;
sanitizers)
    install_deps
    run_check "$top/build-san" --enable-sanitizers ;;
*)
    echo "usage: $0 run|test|sanitizers|deps|bench-deps" >&2
    exit 2 ;;
esac
