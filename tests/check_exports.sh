#!/bin/sh
# The shared library must export exactly the public kv_* functions listed in
# tests/exports.txt (jansson's check-exports): nothing internal leaks out.
set -eu
lib="$top_builddir/.libs/libkvstore.so"
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
