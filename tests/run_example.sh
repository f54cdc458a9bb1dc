#!/bin/sh
# Build-and-run check for examples/: they must keep working against the
# public API (they link the shared library, as a user's program would).
set -eu
"$top_builddir/examples/quickstart$EXEEXT"
