#!/bin/sh
# tools/bench.sh - regenerate docs/BENCHMARKS.md: kvstore's performance
# targets (issue 5), measured with kvbench (and fio, and loopbench) in one
# run on this machine, reported as ratios with the exact commands.
#
#   tools/bench.sh                 short run: 5 s per case
#   KVBENCH_RUNTIME=30 tools/bench.sh
#   tools/bench.sh redis           only some sections (loop durable fs reads
#                                  mem redis), reported on stdout unless
#                                  KVBENCH_OUT is set
#
# Environment:
#   KVBENCH_RUNTIME   seconds per measured case (default 5)
#   KVBENCH_KEYS      records for the point-read and memory cases (default
#                     1000000, as the targets say; loading them takes a while,
#                     the fs backend's load most of all)
#   KVBENCH_WKEYS     keys for the durable-write cases (default 100000)
#   KVBENCH_FSKEYS    keys for the fs write cases, 4 KiB each (default 20000)
#   KVBENCH_DIR       where the stores go (default /var/tmp); must be on the
#                     disk being measured, not tmpfs
#   KVBENCH_BUILD     build directory holding tools/kvbench (default: build/
#                     beside the sources, else kvbench from PATH)
#   KVBENCH_OUT       the file to write (default docs/BENCHMARKS.md; - for
#                     stdout, the default when only some sections run)
#   KVBENCH_SECTIONS  the sections to run (default all; arguments win)
#   KVBENCH_RKEYS     keys for the Redis cases (default 100000)
#   KVBENCH_ROUNDS    rounds of the interleaved A/B sections (shared;
#                     default 3): the variants alternate, medians reported
#   KVBENCH_SHKEYS    records for the shared-store section (default 100000)
#
#   KVBENCH_DKEYS     records for the depth sweep's reads (default 100000)
#   KVBENCH_DWKEYS    records for the depth sweep's durable writes (20000)
#   KVBENCH_DEPTHS    the depths swept (default "1 4 16 64 256")
#   KVBENCH_OKEYS     records for the latency-over-time case (100000)
#   KVBENCH_YKEYS     records per YCSB workload (default 100000)
#   KVBENCH_YFSKEYS   the same for fs, a file per record (default YKEYS)
#   KVBENCH_IMG       where the SVG charts go (default docs/img)
#
# Sections: loop durable fs reads mem redis (issue 5's targets), shared
# (one store shared by --numjobs jobs against one job at the same total
# depth, and what a forwarded call costs), depth (throughput and p99
# against --iodepth for each backend and peer, and latency percentiles),
# overtime (write latency over time in the mixed read/CAS case, from
# kvbench's fio-format latency logs), ycsb (YCSB A-F beside the peers),
# hiccup (how long the machine takes a CPU away from a thread that never
# sleeps: the floor under every latency tail above; KVBENCH_HICCUP_SECS,
# default 15).
# With gnuplot (apt-get install gnuplot-nox) the depth, overtime and ycsb
# sections are also drawn as SVG charts into $KVBENCH_IMG, which the report
# embeds; without it the report has the tables only.
#
# The Redis section starts its own servers when redis-server is installed
# (tests/redis_env.sh: one single server and a 3-master cluster on loopback
# ports, appendonly yes, appendfsync always, their files in the scratch
# directory) and is skipped with a note otherwise.
#
# Needs python3 (to read kvbench's JSON); fio is optional (apt-get install
# fio), so is GNU time (/usr/bin/time, for kvctl's peak RSS).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
RUNTIME=${KVBENCH_RUNTIME:-5}
KEYS=${KVBENCH_KEYS:-1000000}
WKEYS=${KVBENCH_WKEYS:-100000}
FSKEYS=${KVBENCH_FSKEYS:-20000}
RKEYS=${KVBENCH_RKEYS:-100000}
ROUNDS=${KVBENCH_ROUNDS:-3}
SHKEYS=${KVBENCH_SHKEYS:-100000}
DKEYS=${KVBENCH_DKEYS:-100000}
DWKEYS=${KVBENCH_DWKEYS:-20000}
DEPTHS=${KVBENCH_DEPTHS:-1 4 16 64 256}
OKEYS=${KVBENCH_OKEYS:-100000}
YKEYS=${KVBENCH_YKEYS:-100000}
YFSKEYS=${KVBENCH_YFSKEYS:-$YKEYS}
IMG=${KVBENCH_IMG:-$top/docs/img}
ALL_SECTIONS="loop durable fs reads mem redis shared depth overtime ycsb hiccup"
if [ $# -gt 0 ]; then
    SECTIONS="$*"
else
    SECTIONS=${KVBENCH_SECTIONS:-$ALL_SECTIONS}
fi
for sec in $SECTIONS; do
    case " $ALL_SECTIONS " in
    *" $sec "*) ;;
    *) echo "bench.sh: unknown section $sec (sections: $ALL_SECTIONS)" >&2
       exit 2 ;;
    esac
done
if [ "$SECTIONS" = "$ALL_SECTIONS" ]; then
    OUT=${KVBENCH_OUT:-$top/docs/BENCHMARKS.md}
else
    OUT=${KVBENCH_OUT:--}
fi
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

find_tool() { # name -> path
    for d in ${KVBENCH_BUILD:+"$KVBENCH_BUILD"} "$top/build" "$top"; do
        if [ -x "$d/tools/$1" ]; then
            echo "$d/tools/$1"
            return
        fi
    done
    command -v "$1" || true
}
KVBENCH=$(find_tool kvbench)
KVCTL=$(find_tool kvctl)
LOOPBENCH=$(find_tool loopbench)
HICCUP=$(find_tool hiccup)
HICCUP_SECS=${KVBENCH_HICCUP_SECS:-15}
if [ -z "$KVBENCH" ]; then
    echo "bench.sh: kvbench not found: build first, or set KVBENCH_BUILD" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "bench.sh: needs python3" >&2; exit 2; }

DIR=$(mktemp -d "${KVBENCH_DIR:-/var/tmp}/kvbench.XXXXXX")
RES="$DIR/results"
mkdir -p "$RES"
REDIS_PID=
cleanup() {
    if [ -n "$REDIS_PID" ]; then # stop the Redis servers first
        rm -f "$DIR/redis.hold"
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    echo "bench.sh: removing $DIR" >&2
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

peers=$("$KVBENCH" --version | sed -n 's/^peers: //p')
has_peer() { case " $peers " in *" $1 "*) return 0 ;; esac; return 1; }

# The peers this run leaves out, and how to get them: LMDB and RocksDB are
# compiled into kvbench when configure finds their -dev packages; fio is a
# program on PATH.  Said on stderr now and in the report (PEERS_MISSING).
PEERS_MISSING=
if want durable || want depth || want ycsb; then
    for p in lmdb rocksdb; do
        has_peer "$p" || PEERS_MISSING="$PEERS_MISSING $p"
    done
fi
if want fs && ! command -v fio >/dev/null; then
    PEERS_MISSING="$PEERS_MISSING fio"
fi
HAVE_GNUPLOT=
if command -v gnuplot >/dev/null; then
    HAVE_GNUPLOT=1
elif want depth || want overtime || want ycsb; then
    PEERS_MISSING="$PEERS_MISSING gnuplot"
fi
PEERS_HOW=
for p in $PEERS_MISSING; do
    case $p in
    lmdb) PEERS_HOW="${PEERS_HOW:+$PEERS_HOW; }lmdb: apt-get install liblmdb-dev (or scripts/dev.sh bench-deps), then configure and build again" ;;
    rocksdb) PEERS_HOW="${PEERS_HOW:+$PEERS_HOW; }rocksdb: apt-get install librocksdb-dev (or scripts/dev.sh bench-deps), then configure and build again" ;;
    gnuplot) PEERS_HOW="${PEERS_HOW:+$PEERS_HOW; }gnuplot: apt-get install gnuplot-nox (charts; tables only without it)" ;;
    fio) PEERS_HOW="${PEERS_HOW:+$PEERS_HOW; }fio: apt-get install fio" ;;
    esac
done
if [ -n "$PEERS_MISSING" ]; then
    echo "bench.sh: peers left out of this run:$PEERS_MISSING" \
        "($PEERS_HOW)" >&2
fi
export PEERS_MISSING PEERS_HOW

# run CASE ARGS...: run kvbench with JSON output into $RES/CASE.json and keep
# the command line (with the scratch directory written as $DIR).
run() {
    name=$1; shift
    printf 'kvbench' > "$RES/$name.cmd"
    for a in "$@"; do printf ' %s' "$a" | sed "s|$DIR|\$DIR|g" >> "$RES/$name.cmd"; done
    echo >> "$RES/$name.cmd"
    echo "bench.sh: $name" >&2
    if ! "$KVBENCH" --output-format=json --output="$RES/$name.json" "$@" \
            2> "$RES/$name.err"; then
        echo "bench.sh: $name failed:" >&2
        cat "$RES/$name.err" >&2
    fi
}


# The engine's ceiling first: CPU only, before the disk cases leave
# writeback behind them.
LOOP_OUT=
if want loop && [ -n "$LOOPBENCH" ]; then
    echo "bench.sh: loopbench" >&2
    LOOP_OUT=$("$LOOPBENCH" 2>&1 || true)
fi

# The machine's own gaps: CPU only, nothing else of this script running.
HICCUP_OUT=
if want hiccup && [ -n "$HICCUP" ]; then
    echo "bench.sh: hiccup" >&2
    HICCUP_OUT=$("$HICCUP" "$HICCUP_SECS" 2>&1 || true)
fi

# 1. Durable writes: group commit, and the peers at the same depth.
if want durable; then
set -- --sync=full --rw=randwrite --keys="$WKEYS" --load \
    --runtime="$RUNTIME" --time_based --value_size=100 \
    --name=sqlite-qd1 --backend="sqlite:$DIR/w1.db" --iodepth=1 \
    --name=sqlite-qd64 --backend="sqlite:$DIR/w64.db" --iodepth=64 \
    --name=sqlite-raw-qd64 --backend="sqlite-raw:$DIR/wraw.db" --iodepth=64
if has_peer rocksdb; then
    set -- "$@" --name=rocksdb-qd64 --backend="rocksdb:$DIR/wrocks" --iodepth=64
fi
if has_peer lmdb; then
    set -- "$@" --name=lmdb-qd64 --backend="lmdb:$DIR/wlmdb" --iodepth=64
fi
run durable "$@"
rm -rf "$DIR"/w1.db* "$DIR"/w64.db* "$DIR"/wraw.db* "$DIR/wrocks" "$DIR/wlmdb"
fi

# 2. Filesystem backend, durable puts of 4 KiB (file + directory fsync).
FIO_CMD=
if want fs; then
run fs --rw=randwrite --keys="$FSKEYS" --value_size=4k --load \
    --runtime="$RUNTIME" --time_based \
    --name=fs-qd1 --backend="fs:$DIR/fs1" --iodepth=1 \
    --name=fs-qd64 --backend="fs:$DIR/fs64" --iodepth=64
rm -rf "$DIR/fs1" "$DIR/fs64"
if command -v fio >/dev/null; then
    mkdir -p "$DIR/fio"
    FIO_CMD="fio --name=fsync4k --directory=\$DIR/fio --ioengine=io_uring --rw=randwrite --bs=4k --size=256m --iodepth=64 --fsync=1 --runtime=$RUNTIME --time_based --output-format=json"
    echo "bench.sh: fio" >&2
    fio --name=fsync4k --directory="$DIR/fio" --ioengine=io_uring \
        --rw=randwrite --bs=4k --size=256m --iodepth=64 --fsync=1 \
        --runtime="$RUNTIME" --time_based --output-format=json \
        > "$RES/fio.json" 2> "$RES/fio.err" || true
    rm -rf "$DIR/fio"
fi
fi

# 3. Point reads over $KEYS records: the async layer against plain SQLite on
#    one thread.  Separate processes, so that each peak RSS is its own.
if want reads || want mem; then
run reads-sqlite --rw=randread --keys="$KEYS" --load \
    --runtime="$RUNTIME" --time_based --value_size=100 \
    --name=sqlite-qd64 --backend="sqlite:$DIR/r.db" --iodepth=64 \
    --name=sqlite-qd1 --backend="sqlite:$DIR/r.db" --iodepth=1 --load=0 \
    --name=sqlite-nomap-qd64 --backend="sqlite:$DIR/r.db?map=0" --iodepth=64 --load=0
run reads-raw --rw=randread --keys="$KEYS" --load \
    --runtime="$RUNTIME" --time_based --value_size=100 \
    --name=sqlite-raw-qd1 --backend="sqlite-raw:$DIR/raw.db" --iodepth=1 \
    --name=sqlite-raw-mmap-qd1 --backend="sqlite-raw:$DIR/raw.db?mmap=1073741824" --iodepth=1 --load=0
rm -rf "$DIR"/raw.db*
fi

# 4. Memory: kvbench over $KEYS records on the fs backend (sqlite: case 3),
#    and a full dump (a query of every record) through kvctl.
DUMP_SQLITE=''
DUMP_FS=''
if want mem; then
run mem-fs --rw=randrw --keys="$KEYS" --load \
    --runtime="$RUNTIME" --time_based --value_size=100 \
    --name=fs-qd64 --backend="fs:$DIR/m" --iodepth=64
if [ -n "$KVCTL" ] && [ -x /usr/bin/time ]; then
    echo "bench.sh: kvctl dump" >&2
    DUMP_SQLITE=$( { /usr/bin/time -f '%M' "$KVCTL" "sqlite:$DIR/r.db" dump > /dev/null; } 2>&1 | tail -n 1)
    DUMP_FS=$( { /usr/bin/time -f '%M' "$KVCTL" "fs:$DIR/m" dump > /dev/null; } 2>&1 | tail -n 1)
fi
fi
# (the fs store of $KEYS files goes with the scratch directory at exit:
# removing a million files takes minutes)

# 6. One store shared by several jobs (threads): --numjobs=4 --iodepth=16
#    against --numjobs=1 --iodepth=64 on SQLite (KV_SQLITE_SYNC_FULL puts,
#    point reads; reads also --numjobs=2 --iodepth=32), fs with two jobs on
#    one root, and the cost of a forwarded
#    call (--store_thread: every call crosses to the store's thread).  The
#    variants alternate within each round (the order reversed every other
#    round); the report takes medians over $ROUNDS rounds.
if want shared; then
    r=1
    while [ "$r" -le "$ROUNDS" ]; do
        variants="put-j1 put-j4 get-j1 get-j2 get-j4 fs-j1 fs-j2 fwd-d1 fwd-f1 fwd-d64 fwd-f64"
        if [ $((r % 2)) -eq 0 ]; then
            variants=$(echo "$variants" | tr ' ' '\n' | tac | tr '\n' ' ')
        fi
        for v in $variants; do
            case $v in
            put-j*|get-j*)
                rw=randwrite; [ "${v%%-*}" = get ] && rw=randread
                case ${v#*-} in
                j1) jd="--numjobs=1 --iodepth=64" ;;
                j2) jd="--numjobs=2 --iodepth=32" ;;
                *) jd="--numjobs=4 --iodepth=16" ;;
                esac
                # shellcheck disable=SC2086
                run "shared-$v-r$r" --name="$v" --backend="sqlite:$DIR/sh.db" \
                    --sync=full --rw=$rw --keys="$SHKEYS" --load --value_size=100 \
                    --runtime="$RUNTIME" --time_based $jd
                rm -f "$DIR"/sh.db* ;;
            fs-j*)
                if [ "$v" = fs-j1 ]; then jd="--numjobs=1 --iodepth=64"; else jd="--numjobs=2 --iodepth=32"; fi
                # shellcheck disable=SC2086
                run "shared-$v-r$r" --name="$v" --backend="fs:$DIR/shfs" \
                    --rw=randwrite --keys="$FSKEYS" --load --value_size=4k \
                    --runtime="$RUNTIME" --time_based $jd
                rm -rf "$DIR/shfs" ;;
            fwd-*)
                case $v in fwd-?1) d=1 ;; *) d=64 ;; esac
                st=; case $v in fwd-f*) st=--store_thread ;; esac
                # shellcheck disable=SC2086
                run "shared-$v-r$r" --name="$v" --backend=sqlite:memory \
                    --rw=randread --keys="$SHKEYS" --load --value_size=100 \
                    --runtime="$RUNTIME" --time_based --iodepth=$d $st ;;
            esac
        done
        r=$((r + 1))
    done
fi

# 7. Depth sweep: point reads over $DKEYS records (loaded once per backend,
#    every depth on the same store), and durable writes over $DWKEYS records
#    (a fresh store per depth), for each kvstore backend and each peer.
uri_of() { # backend tag -> URI under $DIR
    case $1 in
    sqlite) echo "sqlite:$DIR/$2.db" ;;
    fs) echo "fs:$DIR/$2.fs" ;;
    sqlite-raw) echo "sqlite-raw:$DIR/$2.raw" ;;
    lmdb) echo "lmdb:$DIR/$2.lmdb" ;;
    rocksdb) echo "rocksdb:$DIR/$2.rocks" ;;
    esac
}
BACKENDS="sqlite fs sqlite-raw"
has_peer lmdb && BACKENDS="$BACKENDS lmdb"
has_peer rocksdb && BACKENDS="$BACKENDS rocksdb"
export BACKENDS DEPTHS DKEYS DWKEYS OKEYS YKEYS YFSKEYS
if want depth; then
    for b in $BACKENDS; do
        set -- --rw=randread --keys="$DKEYS" --value_size=100 \
            --runtime="$RUNTIME" --time_based --backend="$(uri_of "$b" dr)"
        first=--load
        for d in $DEPTHS; do
            set -- "$@" --name="qd$d" --iodepth="$d" "$first"
            first=--load=0
        done
        run "depth-read-$b" "$@"
        rm -rf "$DIR"/dr.*
        set -- --rw=randwrite --sync=full --keys="$DWKEYS" --value_size=100 \
            --runtime="$RUNTIME" --time_based --load
        for d in $DEPTHS; do
            set -- "$@" --name="qd$d" --iodepth="$d" --backend="$(uri_of "$b" "dw$d")"
        done
        run "depth-write-$b" "$@"
        rm -rf "$DIR"/dw*
    done
fi

# 8. Latency over time: 50% reads / 50% CAS writes (read, then put with its
#    token) at depth 64 over $OKEYS uniform keys, every write's latency
#    logged (--write_lat_log) and cut into 100 ms windows by the report.
if want overtime; then
    for v in sqlite-normal sqlite-full fs; do
        case $v in
        sqlite-normal) be="sqlite:$DIR/ot.db" sy=normal ;;
        sqlite-full) be="sqlite:$DIR/ot.db" sy=full ;;
        fs) be="fs:$DIR/ot.fs" sy=full ;;
        esac
        run "overtime-$v" --name="$v" --backend="$be" --sync=$sy \
            --workload=ycsb-f --random_distribution=uniform --keys="$OKEYS" \
            --value_size=100 --iodepth=64 --runtime="$RUNTIME" --time_based \
            --write_lat_log="$RES/overtime-$v"
        rm -rf "$DIR"/ot.*
    done
fi

# 9. YCSB A-F (kvbench's presets: zipfian keys, latest for D, scans for
#    E), each workload on a freshly loaded store of $YKEYS records
#    ($YFSKEYS for fs, whose load writes a file per record), 32
#    operations in flight (a peer: 32 threads).  Durability as YCSB's
#    bindings leave it by default: no fsync per operation (SQLite and
#    sqlite-raw synchronous=NORMAL, fs KV_FS_NO_FSYNC, RocksDB WAL not
#    fsynced, LMDB MDB_NOMETASYNC).
if want ycsb; then
    for b in sqlite fs rocksdb lmdb; do
        case " $BACKENDS " in *" $b "*) ;; *) continue ;; esac
        sy=normal; k=$YKEYS
        [ "$b" = fs ] && { sy=none; k=$YFSKEYS; }
        for wl in a b c d e f; do
            run "ycsb-$b-$wl" --name="$b-$wl" --backend="$(uri_of "$b" y)" \
                --workload="ycsb-$wl" --keys="$k" --value_size=100 \
                --sync=$sy --iodepth=32 --runtime="$RUNTIME" --time_based
            rm -rf "$DIR"/y.*
        done
    done
fi

# 5. Redis: a single server and a 3-master cluster, durable (appendfsync
#    always), started through tests/redis_env.sh in the background: it
#    writes the URIs to redis.env and keeps the servers while redis.hold
#    exists, then stops them whatever happens.
REDIS_NOTE=
REDIS_VERSION=
if want redis; then
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        REDIS_NOTE="skipped: redis-server is not installed (apt-get install redis-server)"
    elif [ ! -f "$top/tests/redis_env.sh" ]; then
        REDIS_NOTE="skipped: tests/redis_env.sh is missing"
    else
        echo "bench.sh: starting Redis servers" >&2
        REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
        : > "$DIR/redis.hold"
        KV_TEST_REDIS='' KV_REDIS_ENV_FORCE=1 TMPDIR="$DIR" \
            sh "$top/tests/redis_env.sh" sh -c \
            'echo "$KV_TEST_REDIS $KV_TEST_REDIS_CLUSTER" > "$1.tmp" &&
             mv "$1.tmp" "$1"
             while [ -f "$2" ]; do sleep 0.2; done' \
            sh "$DIR/redis.env" "$DIR/redis.hold" 2> "$RES/redis-env.err" &
        REDIS_PID=$!
        while [ ! -f "$DIR/redis.env" ] && kill -0 "$REDIS_PID" 2>/dev/null; do
            sleep 0.2
        done
        if [ -f "$DIR/redis.env" ]; then
            read -r RSINGLE RCLUSTER < "$DIR/redis.env"
            for dep in single cluster; do
                if [ $dep = single ]; then uri=$RSINGLE; else uri=$RCLUSTER; fi
                run "redis-$dep" --keys="$RKEYS" --value_size=100 \
                    --runtime="$RUNTIME" --time_based --load \
                    --name="$dep-write-qd32" --backend="$uri/bench" --rw=randwrite --iodepth=32 \
                    --name="$dep-write-qd64" --backend="$uri/bench" --rw=randwrite --iodepth=64 --load=0 \
                    --name="$dep-read-qd32" --backend="$uri/bench" --rw=randread --iodepth=32 --load=0 \
                    --name="$dep-read-qd64" --backend="$uri/bench" --rw=randread --iodepth=64 --load=0
                sed -i -e "s|$RCLUSTER|redis://\$CLUSTER|g" \
                    -e "s|$RSINGLE|redis://\$SINGLE|g" "$RES/redis-$dep.cmd"
            done
        else
            REDIS_NOTE="failed: the Redis servers did not start: $(tail -n 3 "$RES/redis-env.err" | tr '\n' ' ')"
            echo "bench.sh: $REDIS_NOTE" >&2
        fi
        rm -f "$DIR/redis.hold"
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    fi
fi

# ------------------------------------------------------------------------
# The report.
mkdir -p "$(dirname "$OUT")"
export RES RUNTIME KEYS WKEYS FSKEYS RKEYS FIO_CMD DUMP_SQLITE DUMP_FS LOOP_OUT
export HICCUP_OUT HICCUP_SECS
export SECTIONS REDIS_NOTE REDIS_VERSION ROUNDS SHKEYS HAVE_GNUPLOT IMG
LOAD_BEFORE=${LOAD_BEFORE:-}
export LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
export LOOPBENCH_CMD="${LOOPBENCH:+tools/loopbench}"
MACHINE="$(nproc) CPUs ($(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)), $(free -m | awk '/^Mem:/ {print $2}') MiB RAM, Linux $(uname -r), $(df -T "${KVBENCH_DIR:-/var/tmp}" | awk 'NR==2 {print $2 " on " $1}')"
VERSION=$("$KVBENCH" --version | head -n 1)
COMMIT=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
WHEN=$(date -u '+%Y-%m-%d %H:%M UTC')
export MACHINE VERSION COMMIT WHEN
python3 - "$OUT" <<'PY'
import json, os, sys

res = os.environ["RES"]
out = sys.argv[1]
sections = os.environ.get("SECTIONS", "").split()

def want(name):
    return name in sections

def load(name):
    try:
        with open(os.path.join(res, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def cmd(name):
    try:
        with open(os.path.join(res, name + ".cmd")) as f:
            return f.read().strip()
    except OSError:
        return "(not run)"

def job(doc, name):
    if not doc:
        return None
    for j in doc["jobs"]:
        if j["jobname"] == name:
            return j
    return None

def op(doc, name, o):
    j = job(doc, name)
    if not j or j.get("error"):
        return None
    return j["ops"].get(o)

def iops(doc, name, o):
    x = op(doc, name, o)
    return x["iops"] if x else None

def p99(doc, name, o):
    x = op(doc, name, o)
    return x["lat_ns"]["percentile"].get("99.000000") if x else None

def cell(doc, name, o):
    j = job(doc, name)
    if j is None:
        return "not run"
    if j.get("error"):
        return "failed: " + j.get("errmsg", "")
    return fmt(iops(doc, name, o))

def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"

def us(ns):
    if ns is None:
        return "n/a"
    return f"{ns / 1000:.1f} us" if ns < 10000 else f"{ns / 1000:,.0f} us"

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

def rx(r):
    return "not measured" if r is None else f"**{r:.2f}x**"

def verdict(r, need):
    if r is None:
        return "not measured"
    return f"**{r:.2f}x** (target {need}x: {'met' if r >= need else 'NOT met'})"

def rss(doc, name):
    j = job(doc, name)
    return None if not j else j.get("peak_rss_kib", 0) / 1024

lines = []
w = lines.append
w("# kvstore benchmarks")
w("")
w("Generated by `tools/bench.sh` (do not edit by hand); "
  f"{os.environ['WHEN']}, {os.environ['VERSION']}, commit {os.environ['COMMIT']}.")
w("")
w(f"Machine: {os.environ['MACHINE']}.")
w("")
if os.environ.get("PEERS_MISSING", "").strip():
    w(f"Peers left out of this run: {os.environ['PEERS_MISSING'].strip()} "
      f"({os.environ['PEERS_HOW']}).")
    w("")
w(f"Each case ran {os.environ['RUNTIME']} s (`KVBENCH_RUNTIME`). Figures move from run "
  "to run on a shared virtual machine: compare the ratios, which come from one "
  "run of this script. `$DIR` is the scratch directory on the disk under test.")
w("")

# 1. durable writes
if want("durable"):
    d = load("durable")
    w("## Durable writes: group commit")
    w("")
    w("SQLite backend with `--sync=full` (synchronous=FULL: every put durable before "
      "it completes), 100-byte values, uniform keys over "
      f"{int(os.environ['WKEYS']):,} loaded records, one job. Peers at the same depth "
      "and job count; a peer's `--iodepth=64` is 64 threads each making one "
      "blocking call at a time (with sync on: RocksDB WAL fsync per commit, "
      "LMDB's default durable commit, sqlite-raw synchronous=FULL).")
    w("")
    w("| job | puts/s | p99 latency | vs sqlite iodepth 1 |")
    w("|---|---|---|---|")
    base = iops(d, "sqlite-qd1", "write")
    for name in ["sqlite-qd1", "sqlite-qd64", "sqlite-raw-qd64", "rocksdb-qd64", "lmdb-qd64"]:
        if job(d, name) is None:
            continue
        if job(d, name).get("error"):
            w(f"| {name} | failed: {job(d, name)['errmsg']} | | |")
            continue
        v = iops(d, name, "write")
        r = ratio(v, base)
        w(f"| {name} | {fmt(v)} | {us(p99(d, name, 'write'))} | {'n/a' if r is None else f'{r:.1f}x'} |")
    w("")
    q64 = iops(d, "sqlite-qd64", "write")
    w(f"- sqlite iodepth 64 / iodepth 1: {verdict(ratio(q64, base), 20)}")
    for peer in ["rocksdb-qd64", "lmdb-qd64"]:
        if job(d, peer) is not None:
            w(f"- sqlite iodepth 64 / {peer}: {verdict(ratio(q64, iops(d, peer, 'write')), 1)}")
    w("")
    w("What bounds the depth-64 / depth-1 ratio: at depth 64 every group commit "
      "holds all 64 puts. Its WAL fsync (about 0.27 ms here) cannot overlap the "
      "next group's work: SQLite makes a commit visible only after that fsync, and "
      "the next 64 puts are submitted only when this group's futures complete "
      "(publishing before the fsync would let readers see writes a crash can "
      "still undo). The rest of a group is the writer's B-tree and WAL work for 64 "
      "puts (with KV_SQLITE_SYNC_FULL the writer's WAL frames go to the file in one write "
      "per commit, not two per page) and the hand-off through the loop. A depth-1 "
      "put is one fsync plus its statements, about 175 us. At 88k puts/s a group "
      "takes about 0.72 ms, so the ratio is about 64 x 0.175 / 0.72 = 15x; 20x "
      "would need groups under about 0.56 ms, i.e. the writer's work and hand-off "
      "for 64 puts in about 0.29 ms (4.5 us per put), when SQLite's own code alone "
      "takes about 3.5 us per put here (perf: B-tree search, records, WAL "
      "checksums), before the kernel's copies of WAL bytes, the loop and the "
      "callbacks. Without any fsync "
      "(synchronous=NORMAL) the same workload reached about 97k puts/s. Plain "
      "SQLite reached about 58k puts/s with synchronous=FULL and batches of 1,000 "
      "on one thread. Tried without gain: workers spinning before they sleep; a "
      "smaller page size trades 4 KiB values for 100 B ones. Contention slows "
      "depth 1 more than depth 64, so a run on a loaded machine shows a higher "
      "ratio.")
    w("")
    w("```sh")
    w(cmd("durable"))
    w("```")
    w("")

# 2. fs
if want("fs"):
    f = load("fs")
    w("## Filesystem backend: durable puts")
    w("")
    w("4 KiB values; every put writes a temporary file, fsyncs it, renames it into "
      "place and fsyncs the directory. Keys spread over 64 directories "
      f"(`--key_dirs`, the default), {int(os.environ['FSKEYS']):,} loaded records (overwrites).")
    w("")
    w("| job | puts/s | p99 latency |")
    w("|---|---|---|")
    for name in ["fs-qd1", "fs-qd64"]:
        w(f"| {name} | {cell(f, name, 'write')} | {us(p99(f, name, 'write'))} |")
    fio_iops = None
    try:
        with open(os.path.join(res, "fio.json")) as fh:
            fj = json.load(fh)
        fio_iops = fj["jobs"][0]["write"]["iops"]
        w(f"| fio: 4 KiB write + fsync, iodepth 64 | {fmt(fio_iops)} | "
          f"{us(fj['jobs'][0]['write']['clat_ns']['percentile'].get('99.000000'))} |")
    except (OSError, ValueError, KeyError, IndexError):
        w("| fio | not run (`apt-get install fio`) | |")
    w("")
    fs64, fs1 = iops(f, "fs-qd64", "write"), iops(f, "fs-qd1", "write")
    w(f"- fs iodepth 64 / iodepth 1: {verdict(ratio(fs64, fs1), 3)}")
    w(f"- fs iodepth 64 / fio: {verdict(ratio(fs64, fio_iops), 0.5)}")
    w("")
    w("```sh")
    w(cmd("fs"))
    if os.environ.get("FIO_CMD"):
        w(os.environ["FIO_CMD"])
    w("```")
    w("")

# 3. reads
if want("reads"):
    rs, rr = load("reads-sqlite"), load("reads-raw")
    w("## Point reads")
    w("")
    w(f"{int(os.environ['KEYS']):,} records of 100 bytes, uniform random gets. "
      "kvstore's SQLite backend runs every SQLite call on its pool (reader "
      "connections in parallel, WAL) and reads the file in place in a memory map "
      "(`?map=0`: pread, KV_SQLITE_NO_MAP); sqlite-raw makes plain blocking sqlite3 "
      "calls on the calling thread, with SQLite's defaults (pread) or its own "
      "`PRAGMA mmap_size` (`?mmap=`).")
    w("")
    w("| job | gets/s | p99 latency |")
    w("|---|---|---|")
    for doc, name in [(rs, "sqlite-qd64"), (rs, "sqlite-qd1"), (rs, "sqlite-nomap-qd64"),
                      (rr, "sqlite-raw-qd1"), (rr, "sqlite-raw-mmap-qd1")]:
        w(f"| {name} | {cell(doc, name, 'read')} | {us(p99(doc, name, 'read'))} |")
    w("")
    w(f"- sqlite iodepth 64 / sqlite-raw on one thread (defaults): "
      f"{verdict(ratio(iops(rs, 'sqlite-qd64', 'read'), iops(rr, 'sqlite-raw-qd1', 'read')), 1.5)}")
    w(f"- on equal terms, both mapped (sqlite-qd64 / sqlite-raw-mmap-qd1): "
      f"{rx(ratio(iops(rs, 'sqlite-qd64', 'read'), iops(rr, 'sqlite-raw-mmap-qd1', 'read')))}; "
      f"both with pread (sqlite-nomap-qd64 / sqlite-raw-qd1): "
      f"{rx(ratio(iops(rs, 'sqlite-nomap-qd64', 'read'), iops(rr, 'sqlite-raw-qd1', 'read')))}")
    w("")
    w("```sh")
    w(cmd("reads-sqlite"))
    w(cmd("reads-raw"))
    w("```")
    w("")

# 4. memory
if want("mem"):
    rs = load("reads-sqlite")
    m = load("mem-fs")
    w("## Memory")
    w("")
    w(f"Peak RSS (getrusage) of the whole kvbench process over {int(os.environ['KEYS']):,} "
      "records, load included (kvbench keeps an 8-byte token per key: "
      f"{int(os.environ['KEYS']) * 8 / 1048576:.1f} MiB of it). The SQLite backend's page "
      "cache: 16 MiB for the writer connection, SQLite's default (`cache_size` -2000, "
      "about 2 MiB) for each reader (up to two per pool thread, so four here). "
      "kvctl's figure is a dump of every record: a query that must stream.")
    w("")
    w("| process | peak RSS |")
    w("|---|---|")
    w(f"| kvbench, sqlite file (case 3) | {fmt(rss(rs, 'sqlite-qd64'), ' MiB')} |")
    w(f"| kvbench, fs | {fmt(rss(m, 'fs-qd64'), ' MiB')} |")
    for label, v in [("sqlite", os.environ.get("DUMP_SQLITE")), ("fs", os.environ.get("DUMP_FS"))]:
        try:
            w(f"| kvctl dump, {label} | {int(v) / 1024:.1f} MiB |")
        except (TypeError, ValueError):
            w(f"| kvctl dump, {label} | not measured |")
    w("")
    for label, v in [("sqlite", rss(rs, "sqlite-qd64")), ("fs", rss(m, "fs-qd64"))]:
        w(f"- {label}: " + ("not measured" if v is None else
          f"{v:.1f} MiB: target under 64 MiB above the page cache: {'met' if v < 64 else 'NOT met'}"))
    w("")
    w("```sh")
    w(cmd("mem-fs"))
    w("kvctl sqlite:$DIR/r.db dump > /dev/null   # under /usr/bin/time -f %M")
    w("kvctl fs:$DIR/m dump > /dev/null")
    w("```")
    w("")

# 5. redis
if want("redis"):
    w("## Redis backend")
    w("")
    note = os.environ.get("REDIS_NOTE", "")
    if note:
        w(f"Not measured: {note}.")
        w("")
    else:
        w(f"kvstore's Redis backend against redis-server {os.environ.get('REDIS_VERSION') or ''} "
          "started by this script on loopback (`tests/redis_env.sh`): one single "
          "server, and a 3-master Redis Cluster without replicas, the store spread over "
          "it by key (`shard=key`). Every server runs with `appendonly yes` and "
          "`appendfsync always` (each write fsynced to the append-only file, in the "
          "scratch directory on the disk under test, before the server replies; Redis "
          "fsyncs once per event-loop pass, so writes that arrive together share one "
          "fsync) and `save ''`. 100-byte values, uniform keys over "
          f"{int(os.environ['RKEYS']):,} loaded records, one job, one connection per "
          "node; a put is a compare-and-swap (one Lua script: token check, value, "
          "token counter and the slot's index), a get one HMGET. The servers, the "
          "benchmark and its loop share the machine's CPUs.")
        w("")
        w("| job | ops/s | p99 latency |")
        w("|---|---|---|")
        for dep in ["single", "cluster"]:
            doc = load("redis-" + dep)
            for kind, o in [("write", "write"), ("read", "read")]:
                for qd in [32, 64]:
                    name = f"{dep}-{kind}-qd{qd}"
                    w(f"| redis {name} | {cell(doc, name, o)} | {us(p99(doc, name, o))} |")
        w("")
        w("Beside the embedded backends (from the sections above when they ran "
          "in the same run; the record counts differ):")
        w("")
        w("| durable puts/s at depth 64 | point reads/s at depth 64 |")
        w("|---|---|")
        rows = []
        ds, rd = load("durable"), load("reads-sqlite")
        fsd = load("fs")
        rows.append((f"SQLite, sync=full: {fmt(iops(ds, 'sqlite-qd64', 'write'))}",
                     f"SQLite: {fmt(iops(rd, 'sqlite-qd64', 'read'))}"))
        rows.append((f"filesystem (4 KiB): {fmt(iops(fsd, 'fs-qd64', 'write'))}", ""))
        rs1, rc1 = load("redis-single"), load("redis-cluster")
        rows.append((f"Redis single: {fmt(iops(rs1, 'single-write-qd64', 'write'))}",
                     f"Redis single: {fmt(iops(rs1, 'single-read-qd64', 'read'))}"))
        rows.append((f"Redis cluster: {fmt(iops(rc1, 'cluster-write-qd64', 'write'))}",
                     f"Redis cluster: {fmt(iops(rc1, 'cluster-read-qd64', 'read'))}"))
        for a, b in rows:
            w(f"| {a} | {b} |")
        w("")
        w("```sh")
        w(cmd("redis-single"))
        w(cmd("redis-cluster"))
        w("```")
        w("")
        w("`$SINGLE` and `$CLUSTER` are the servers' loopback addresses "
          "(`127.0.0.1:PORT`, three of them for the cluster).")
        w("")

def tool_output(var, tool, command):
    """A tool's captured output (environment variable var) as a code block
    and the command that made it, or how to build the tool."""
    out = os.environ.get(var, "")
    if out:
        w("```")
        w(out.rstrip())
        w("```")
        w("")
        w(f"Command: {command}")
    else:
        w(f"{tool} was not found (build it: `make tools/{tool}`).")
    w("")

# 5. loop
if want("loop"):
    w("## The loop's ceiling")
    w("")
    w("Pool jobs completed per second through the eventfd path, and io_uring NOP "
      "round trips per second: the most any backend can get through one loop.")
    w("")
    tool_output("LOOP_OUT", "loopbench",
                f"`{os.environ.get('LOOPBENCH_CMD') or 'loopbench'}` (defaults).")

# the machine's gaps
if want("hiccup"):
    w("## The machine's own stalls")
    w("")
    w("One thread per CPU, pinned, reads the monotonic clock in a loop and counts "
      "the gaps between two reads: time it did not run although it never sleeps "
      "(an interrupt, another task, or on a virtual machine the host taking the "
      "vCPU). No latency tail measured on this machine can be shorter than these "
      "gaps when they hit a thread on the path of an operation in flight.")
    w("")
    tool_output("HICCUP_OUT", "hiccup",
                f"`tools/hiccup {os.environ.get('HICCUP_SECS', '15')}` "
                "(normal priority; docs/PERF.md has a SCHED_FIFO run).")

# 6. shared store
if want("shared"):
    import statistics
    rounds = int(os.environ.get("ROUNDS", "3"))
    def series(v, o, f):
        xs = []
        for r in range(1, rounds + 1):
            d = load(f"shared-{v}-r{r}")
            x = op(d, v, o)
            if x:
                xs.append(f(x))
        return xs
    def med(xs):
        return statistics.median(xs) if xs else None
    def mean_ns(x):
        return x["lat_ns"]["mean"]
    def tput(x):
        return x["iops"]
    w("## One store shared by several threads")
    w("")
    w("`--numjobs=N` jobs are N threads, each with its own kv_loop and its own "
      "`--iodepth` operations in flight, all on one store: a thread of its own opens "
      "it and serves it, and every job's calls are forwarded to that thread's loop, "
      "except point reads on a SQLite file store, which the calling job queues "
      "straight for the store's pool; every future completes on its job's own loop "
      "(kvstore.h, \"Threads\"). Against one job calling its store directly, at the "
      "same total depth. The variants alternate within each round (order "
      f"reversed every other round); medians of {rounds} rounds of "
      f"{os.environ['RUNTIME']} s, each on a fresh store of "
      f"{int(os.environ['SHKEYS']):,} records (fs: {int(os.environ['FSKEYS']):,} of 4 KiB). "
      f"Load average when the report was written: {os.environ.get('LOADAVG', '?')}.")
    w("")
    w("| case | one job, depth 64 | shared store | ratio | per round (ops/s) |")
    w("|---|---|---|---|---|")
    for label, a, b, o, bl in [
            ("SQLite KV_SQLITE_SYNC_FULL puts", "put-j1", "put-j4", "write", "4 jobs x depth 16"),
            ("SQLite point reads", "get-j1", "get-j2", "read", "2 jobs x depth 32"),
            ("SQLite point reads", "get-j1", "get-j4", "read", "4 jobs x depth 16"),
            ("fs durable puts, 4 KiB, one root", "fs-j1", "fs-j2", "write", "2 jobs x depth 32")]:
        xa, xb = series(a, o, tput), series(b, o, tput)
        ma, mb = med(xa), med(xb)
        r = ratio(mb, ma)
        per = "; ".join(f"{fmt(p)} / {fmt(q)}" for p, q in zip(xa, xb))
        w(f"| {label} | {fmt(ma)} | {fmt(mb)} ({bl}) | "
          f"{'n/a' if r is None else f'{r:.2f}x'} | {per} |")
    w("")
    r1 = ratio(med(series("put-j4", "write", tput)), med(series("put-j1", "write", tput)))
    r2 = ratio(med(series("get-j4", "read", tput)), med(series("get-j1", "read", tput)))
    r3 = ratio(med(series("get-j2", "read", tput)), med(series("get-j1", "read", tput)))
    w(f"- SQLite durable puts, 4 x 16 shared / 1 x 64: {verdict(r1, 0.9)}")
    w(f"- SQLite point reads, 4 x 16 shared / 1 x 64: {verdict(r2, 0.9)}")
    w(f"- SQLite point reads, 2 x 32 shared / 1 x 64 (no slower than one job): "
      f"{verdict(r3, 1.0)}")
    w("")
    w("What a forwarded call costs: point reads on `sqlite:memory` with the store "
      "on the job's own loop (direct) and on a thread of its own "
      "(`--store_thread`: the call is copied, handed to the store's loop through its "
      "lock-free list and eventfd, made there, and its result posted back to the "
      "job's loop). Lone: one call in flight, mean latency; pipelined: 64 in "
      "flight, the time per call (1/throughput).")
    w("")
    w("| | direct | forwarded | cost of forwarding |")
    w("|---|---|---|---|")
    d1, f1 = med(series("fwd-d1", "read", mean_ns)), med(series("fwd-f1", "read", mean_ns))
    d64, f64 = med(series("fwd-d64", "read", tput)), med(series("fwd-f64", "read", tput))
    def p50(x):
        return x["lat_ns"]["percentile"].get("50.000000")
    e1, g1 = med(series("fwd-d1", "read", p50)), med(series("fwd-f1", "read", p50))
    if e1 and g1:
        w(f"| lone call (median latency) | {e1 / 1000:.1f} us | {g1 / 1000:.1f} us | "
          f"**{(g1 - e1) / 1000:+.1f} us** |")
    if d1 and f1:
        w(f"| lone call (mean latency) | {d1 / 1000:.1f} us | {f1 / 1000:.1f} us | "
          f"**{(f1 - d1) / 1000:+.1f} us** |")
    if d64 and f64:
        w(f"| pipelined, depth 64 (per call) | {1e6 / d64:.2f} us ({fmt(d64)}/s) | "
          f"{1e6 / f64:.2f} us ({fmt(f64)}/s) | **{1e6 / f64 - 1e6 / d64:+.2f} us** |")
    w("")
    w("```sh")
    for v in ["put-j1", "put-j4", "get-j1", "get-j2", "get-j4", "fs-j1", "fs-j2",
              "fwd-d1", "fwd-f1", "fwd-d64", "fwd-f64"]:
        w(cmd(f"shared-{v}-r1"))
    w("```")
    w("")

# Charts: data files for gnuplot (rendered after this script, when gnuplot
# is installed) in $RES/plot; the report embeds the SVGs it will make.
plotdir = os.path.join(res, "plot")
os.makedirs(plotdir, exist_ok=True)
charts = bool(os.environ.get("HAVE_GNUPLOT"))
img = os.environ.get("IMG", "docs/img")
def embed(name, alt):
    if charts:
        rel = os.path.relpath(os.path.join(img, name), os.path.dirname(os.path.abspath(out)) if out != "-" else os.getcwd())
        w(f"![{alt}]({rel})")
        w("")
backends = os.environ.get("BACKENDS", "").split()
depths = [int(x) for x in os.environ.get("DEPTHS", "1 4 16 64 256").split()]
PCTS = ["50.000000", "90.000000", "99.000000", "99.900000", "99.990000"]

# 7. depth sweep
if want("depth"):
    w("## Throughput and p99 against depth")
    w("")
    w(f"Point reads over {int(os.environ['DKEYS']):,} records of 100 bytes (uniform keys; "
      "one store per backend, loaded once, every depth on it), and durable writes "
      f"over {int(os.environ['DWKEYS']):,} records (`--sync=full`: SQLite "
      "synchronous=FULL, fs fsync of file and directory, sqlite-raw FULL, RocksDB WAL "
      "fsync per commit, LMDB fsync per commit; a fresh store per depth), one job. "
      "kvstore's backends keep `--iodepth` futures in flight on one loop; a peer's "
      "`--iodepth` is that many threads each making blocking calls.")
    w("")
    for kind, o in [("read", "read"), ("write", "write")]:
        w(f"| {kind}s | " + " | ".join(f"depth {d}" for d in depths) + " |")
        w("|---|" + "---|" * len(depths))
        with open(os.path.join(plotdir, f"depth-{kind}.dat"), "w") as fh:
            fh.write("# depth " + " ".join(f"{b}_iops {b}_p99us" for b in backends) + "\n")
            rows = {}
            for b in backends:
                doc = load(f"depth-{kind}-{b}")
                cells = []
                for d in depths:
                    v, p = iops(doc, f"qd{d}", o), p99(doc, f"qd{d}", o)
                    rows.setdefault(d, []).append((v, p))
                    cells.append(f"{fmt(v)} / {us(p)}")
                w(f"| {b} | " + " | ".join(cells) + " |")
            for d in depths:
                fh.write(f"{d} " + " ".join(
                    f"{'NaN' if v is None else v} {'NaN' if p is None else p / 1000}"
                    for v, p in rows[d]) + "\n")
        w("")
        w("(ops/s / p99 latency)")
        w("")
        embed(f"depth-{kind}.svg", f"{kind}s: throughput and p99 against iodepth")
    w("Latency percentiles at depth 64:")
    w("")
    w("| | " + " | ".join(f"p{float(p):g}" for p in PCTS) + " |")
    w("|---|" + "---|" * len(PCTS))
    with open(os.path.join(plotdir, "pcts.dat"), "w") as fh:
        fh.write("# pct " + " ".join(f"{b}_read {b}_write" for b in backends) + "\n")
        table = {}
        for kind in ["read", "write"]:
            for b in backends:
                x = op(load(f"depth-{kind}-{b}"), "qd64", kind)
                vals = [x["lat_ns"]["percentile"].get(p) if x else None for p in PCTS]
                table[(b, kind)] = vals
                w(f"| {b} {kind}s | " + " | ".join(us(v) for v in vals) + " |")
        for i, p in enumerate(PCTS):
            fh.write(f"{float(p):g} " + " ".join(
                " ".join("NaN" if table[(b, k)][i] is None else str(table[(b, k)][i] / 1000)
                         for k in ["read", "write"]) for b in backends) + "\n")
    w("")
    embed("percentiles.svg", "latency percentiles at depth 64")
    w("```sh")
    for b in backends:
        w(cmd(f"depth-read-{b}"))
        w(cmd(f"depth-write-{b}"))
    w("```")
    w("")

# 8. latency over time
if want("overtime"):
    w("## Write latency over time: 50% reads, 50% CAS writes")
    w("")
    w(f"Depth 64, {int(os.environ['OKEYS']):,} records of 100 bytes, uniform keys; a "
      "CAS write is a get and a put with its token (retried on a conflict), its "
      "latency the whole of it. Every write's latency comes from kvbench's "
      "`--write_lat_log` (fio's format), cut here into 100 ms windows: the chart "
      "shows each window's p99 and maximum. The last column is the longest "
      "stretch in which no write completed (the log counts whole milliseconds): "
      "a stall holds every write in flight, and shows there.")
    w("")
    w("| case | writes/s | write p50 | p99 | p99.9 | max | p99.9 / p50 | 100 ms windows with a write over 10 ms | longest time with no write completing |")
    w("|---|---|---|---|---|---|---|---|---|")
    for v in ["sqlite-normal", "sqlite-full", "fs"]:
        doc = load(f"overtime-{v}")
        x = op(doc, v, "cas")
        lats = []
        try:
            with open(os.path.join(res, f"overtime-{v}_lat.1.log")) as fh:
                for line in fh:
                    f = line.split(",")
                    if int(f[2]) == 1:
                        lats.append((int(f[0]), int(f[1])))
        except (OSError, ValueError, IndexError):
            pass
        wins = {}
        for t, l in lats:
            wins.setdefault(t // 100, []).append(l)
        over = sum(1 for k in wins if max(wins[k]) > 10_000_000)
        ts = sorted(t for t, _ in lats)
        still = max((b - a for a, b in zip(ts, ts[1:])), default=0)
        with open(os.path.join(plotdir, f"overtime-{v}.dat"), "w") as fh:
            fh.write("# t_s p99_ms max_ms\n")
            for k in sorted(wins):
                ls = sorted(wins[k])
                fh.write(f"{(k + 1) / 10:.1f} {ls[min(len(ls) - 1, int(len(ls) * 0.99))] / 1e6:.3f} {ls[-1] / 1e6:.3f}\n")
        if not x:
            w(f"| {v} | {cell(doc, v, 'cas')} | | | | | | | |")
            continue
        pc = x["lat_ns"]["percentile"]
        p50, p999 = pc.get("50.000000"), pc.get("99.900000")
        w(f"| {v} | {fmt(x['iops'])} | {us(p50)} | {us(pc.get('99.000000'))} | {us(p999)} | "
          f"{us(x['lat_ns']['max'])} | {'n/a' if not p50 else f'{p999 / p50:.1f}x'} | "
          f"{over} of {len(wins)} | {still} ms |")
    w("")
    embed("overtime.svg", "write latency over time, p99 and max per 100 ms")
    w("```sh")
    for v in ["sqlite-normal", "sqlite-full", "fs"]:
        w(cmd(f"overtime-{v}"))
    w("```")
    w("")

# 9. YCSB
if want("ycsb"):
    yb = [b for b in ["sqlite", "fs", "rocksdb", "lmdb"] if b in backends]
    yfs = ""
    if "fs" in yb and os.environ["YFSKEYS"] != os.environ["YKEYS"]:
        yfs = f" (fs: {int(os.environ['YFSKEYS']):,}, a file per record)"
    w("## YCSB A-F")
    w("")
    w(f"kvbench's YCSB presets (A 50/50 read/update, B 95/5, C read only, D 95% "
      "read latest / 5% insert, E 95% short scans / 5% insert, F 50% read / 50% "
      "read-modify-write; zipfian keys, theta 0.99), each on a freshly loaded store "
      f"of {int(os.environ['YKEYS']):,} records of 100 bytes{yfs}, 32 operations in flight "
      "(peers: 32 threads). No fsync per operation, as YCSB's bindings run by "
      "default: SQLite synchronous=NORMAL, fs `KV_FS_NO_FSYNC`, RocksDB WAL "
      "not fsynced, LMDB `MDB_NOMETASYNC`. As YCSB reports them: throughput "
      "(ops/s), then the 99th percentile latency of each operation.")
    w("")
    w("| workload | " + " | ".join(yb) + " |")
    w("|---|" + "---|" * len(yb))
    names = {"read": "READ", "write": "UPDATE", "insert": "INSERT", "scan": "SCAN", "cas": "RMW"}
    with open(os.path.join(plotdir, "ycsb.dat"), "w") as fh:
        fh.write("workload " + " ".join(yb) + "\n")
        for wl in "abcdef":
            cells, vals = [], []
            for b in yb:
                doc = load(f"ycsb-{b}-{wl}")
                j = job(doc, f"{b}-{wl}")
                if j is None:
                    cells.append("not run"); vals.append("NaN"); continue
                if j.get("error"):
                    cells.append("failed: " + j.get("errmsg", "")[:60]); vals.append("NaN"); continue
                # YCSB counts a scan as one operation (kvbench's iops
                # counts the records it returned): calls per second.
                tot = sum(v["calls"] / (v["runtime"] / 1000) if o == "scan" and v["runtime"]
                          else v["iops"] for o, v in j["ops"].items())
                parts = [f"**{fmt(tot)}**"]
                for o, v in j["ops"].items():
                    if v["total_ios"]:
                        parts.append(f"{names.get(o, o)} {us(v['lat_ns']['percentile'].get('99.000000'))}")
                cells.append(", ".join(parts))
                vals.append(f"{tot:.0f}")
            w(f"| {wl.upper()} | " + " | ".join(cells) + " |")
            fh.write(wl.upper() + " " + " ".join(vals) + "\n")
    w("")
    embed("ycsb.svg", "YCSB A-F throughput")
    w("```sh")
    for b in yb:
        w(cmd(f"ycsb-{b}-a") + "   # and -b .. -f alike")
    w("```")
    w("")

if out == "-":
    sys.stdout.write("\n".join(lines) + "\n")
else:
    with open(out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"bench.sh: wrote {out}", file=sys.stderr)
PY

# The charts (gnuplot, SVG), from the data files the report wrote.
if [ -n "$HAVE_GNUPLOT" ] && { want depth || want overtime || want ycsb; }; then
    mkdir -p "$IMG"
    P="$RES/plot"
    {
        echo 'set terminal svg size 900,420 dynamic font "sans,11" background rgb "white"'
        echo "set grid; set key outside right top; set style data linespoints; set format y '%g'"
        if want depth; then
            for kind in read write; do
                echo "set output '$IMG/depth-$kind.svg'"
                echo 'set multiplot layout 1,2'
                echo "set logscale x 2; set xlabel 'iodepth'; set ylabel '${kind}s/s'; set title 'throughput'; unset logscale y"
                printf 'plot '; i=0
                for b in $BACKENDS; do
                    [ $i -gt 0 ] && printf ', '
                    printf "'%s' using 1:%d title '%s'" "$P/depth-$kind.dat" $((2 + 2 * i)) "$b"
                    i=$((i + 1))
                done; echo
                echo "set ylabel 'p99 latency (us)'; set title 'p99 latency'; set logscale y"
                printf 'plot '; i=0
                for b in $BACKENDS; do
                    [ $i -gt 0 ] && printf ', '
                    printf "'%s' using 1:%d title '%s'" "$P/depth-$kind.dat" $((3 + 2 * i)) "$b"
                    i=$((i + 1))
                done; echo
                echo 'unset multiplot; unset logscale'
            done
            echo "set output '$IMG/percentiles.svg'"
            echo "set multiplot layout 1,2; set logscale y; set xlabel 'percentile'; set ylabel 'latency (us)'"
            echo "set xtics ('p50' 1, 'p90' 2, 'p99' 3, 'p99.9' 4, 'p99.99' 5)"
            for k in 0 1; do
                if [ $k -eq 0 ]; then echo "set title 'reads, depth 64'"; else echo "set title 'durable writes, depth 64'"; fi
                printf 'plot '; i=0
                for b in $BACKENDS; do
                    [ $i -gt 0 ] && printf ', '
                    printf "'%s' using 0:%d title '%s'" "$P/pcts.dat" $((2 + 2 * i + k)) "$b"
                    i=$((i + 1))
                done; echo
            done
            echo 'unset multiplot; unset logscale; set xtics autofreq'
        fi
        if want overtime; then
            echo "set output '$IMG/overtime.svg'"
            echo "set xlabel 'time (s)'; set ylabel 'write latency (ms)'; set logscale y"
            echo "set title 'CAS writes, 50/50 read/CAS, depth 64: p99 and max per 100 ms'"
            printf 'plot '; i=0
            for v in sqlite-normal sqlite-full fs; do
                [ $i -gt 0 ] && printf ', '
                printf "'%s' using 1:2 with lines lc %d lw 2 title '%s p99', '%s' using 1:3 with lines lc %d dashtype 2 title '%s max'" \
                    "$P/overtime-$v.dat" $((i + 1)) "$v" "$P/overtime-$v.dat" $((i + 1)) "$v"
                i=$((i + 1))
            done; echo
            echo 'unset logscale'
        fi
        if want ycsb; then
            echo "set output '$IMG/ycsb.svg'"
            echo "set style data histogram; set style histogram clustered gap 1; set style fill solid 0.8 border -1"
            echo "set xlabel 'YCSB workload'; set ylabel 'ops/s'; set title 'YCSB A-F throughput'; set logscale y"
            n=$(head -n 1 "$P/ycsb.dat" | wc -w)
            printf "plot for [c=2:%d] '%s' using c:xtic(1) title columnheader(c)\n" "$n" "$P/ycsb.dat"
        fi
    } > "$P/charts.gp"
    if gnuplot "$P/charts.gp" 2> "$RES/gnuplot.err"; then
        echo "bench.sh: charts in $IMG" >&2
    else
        echo "bench.sh: gnuplot failed:" >&2
        cat "$RES/gnuplot.err" >&2
    fi
elif want depth || want overtime || want ycsb; then
    echo "bench.sh: gnuplot is not installed: tables only (apt-get install gnuplot-nox, or scripts/dev.sh bench-deps)" >&2
fi
