#!/bin/sh
# What kvstore.pc gives a user's build: `pkg-config --cflags kvstore` is the
# include directory only (no dependency's -I or -D: kvstore.h includes only
# standard headers, and -D_FILE_OFFSET_BITS=64 from liburing's .pc would
# change off_t in the user's program); --libs is -lkvstore; --static --libs
# adds what a static link needs (liburing, sqlite3, hiredis if built).
set -eu
pc="$top_builddir/kvstore.pc"
[ -f "$pc" ] || { echo "FAIL: $pc not made by configure"; exit 1; }
command -v pkg-config >/dev/null 2>&1 || { echo "SKIP: pkg-config missing"; exit 77; }
export PKG_CONFIG_PATH="$top_builddir"
unset PKG_CONFIG_LIBDIR PKG_CONFIG_SYSROOT_DIR 2>/dev/null || true
fail=0
includedir=$(pkg-config --variable=includedir kvstore)
for static in "" --static; do
    cflags=$(pkg-config $static --cflags kvstore)
    # Exactly -I<includedir> (pkg-config may drop it if it is a system dir).
    for f in $cflags; do
        if [ "$f" != "-I$includedir" ]; then
            echo "FAIL: pkg-config $static --cflags kvstore gives '$f' ($cflags)"
            fail=1
        fi
    done
done
libs=$(pkg-config --libs kvstore)
case " $libs " in
*" -lkvstore "*) ;;
*) echo "FAIL: pkg-config --libs kvstore lacks -lkvstore ($libs)"; fail=1 ;;
esac
case " $libs " in
*" -luring "*|*" -lsqlite3 "*|*" -lhiredis "*)
    echo "FAIL: pkg-config --libs kvstore names private libraries ($libs)"
    fail=1 ;;
esac
slibs=$(pkg-config --static --libs kvstore)
for l in -lkvstore -luring -lsqlite3; do
    case " $slibs " in
    *" $l "*) ;;
    *) echo "FAIL: pkg-config --static --libs kvstore lacks $l ($slibs)"; fail=1 ;;
    esac
done
if grep -q '^#define HAVE_HIREDIS 1' "$top_builddir/config.h"; then
    case " $slibs " in
    *" -lhiredis "*) ;;
    *) echo "FAIL: --static --libs lacks -lhiredis ($slibs)"; fail=1 ;;
    esac
fi
[ "$fail" = 0 ] || exit 1
echo "kvstore.pc: cflags '$(pkg-config --cflags kvstore)', static libs '$slibs'"
