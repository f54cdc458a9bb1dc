#!/bin/sh
# The shared library must export exactly the public kv_* functions listed in
# tests/exports.txt (jansson's check-exports): nothing internal leaks out.
# And the installed-form library must hold no test hook (KV_TEST_HOOKS, see
# Makefile.am): no fault injector, no allocation counter, no SQLite failure
# hook, in libkvstore.so nor in the objects of libkvstore_core.a -- unless
# configure was told --enable-test-hooks.
set -eu
lib="$top_builddir/.libs/libkvstore.so"
core="$top_builddir/.libs/libkvstore_core.a"
if [ ! -f "$lib" ]; then
    echo "SKIP: $lib not built (static-only build)"; exit 77
fi
command -v nm >/dev/null 2>&1 || { echo "SKIP: nm missing"; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort > "$tmp/actual"
sort "$top_srcdir/tests/exports.txt" > "$tmp/expected"
if ! cmp -s "$tmp/expected" "$tmp/actual"; then
    echo "exported symbols differ from tests/exports.txt (-expected +actual):"
    diff -u "$tmp/expected" "$tmp/actual" || true
    exit 1
fi
echo "exports: $(wc -l < "$tmp/actual") symbols match"

if grep -q '^#define KV_TEST_HOOKS 1' "$top_builddir/config.h" 2>/dev/null; then
    echo "test hooks: configured in (--enable-test-hooks), not checked"
    exit 0
fi
# The hooks' functions.  kv__malloc, kv__calloc, kv__realloc and loop.c's
# two fault hooks are static inline without the switch (a local symbol in
# an unoptimised build), so they count only as global definitions of the
# objects; in the .so every internal is local, so only the names that have
# no inline form are looked for there.
hooks='kv__fault_arm|kv__fault_disarm|kv__fault_hits|kv__fault_seen|kv__alloc_fail_at|kv__sqlite_walbuf_fail|kv__sqlite_set_max_pages'
inline='kv__malloc|kv__calloc|kv__realloc|kv__fault_before_submit|kv__fault_cqe'
nm "$lib" 2>/dev/null | awk '{print $NF}' |
    grep -E "^($hooks)\$" > "$tmp/in-so" || true
if [ -s "$tmp/in-so" ]; then
    echo "test hooks in $lib:"; cat "$tmp/in-so"; exit 1
fi
if [ -f "$core" ]; then
    nm --defined-only "$core" | awk '$2 ~ /^[A-Z]$/ {print $3}' |
        grep -E "^($hooks|$inline)\$" > "$tmp/in-core" || true
    if [ -s "$tmp/in-core" ]; then
        echo "test hooks in $core:"; sort -u "$tmp/in-core"; exit 1
    fi
fi
echo "test hooks: none in the installed-form library"
