#!/bin/sh
# Regenerate tests/exports.txt from the KV_EXTERN declarations of the header.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
sed -e 's:/\*.*\*/::g' "$top/include/kvstore.h" | tr '\n' ' ' |
    grep -o 'KV_EXTERN [^;(]*(' | sed -e 's/[[:space:]]*($//' -e 's/.*[ *]//' |
    grep '^kv_' | sort -u > "$top/tests/exports.txt"
wc -l < "$top/tests/exports.txt"
