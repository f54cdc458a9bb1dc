#!/bin/sh
# tools/check_tools.sh - end-to-end checks of kvctl and kvbench: exit codes,
# dump/load round trips between backends, malformed load input, job files
# and the JSON report.  Runs from a build directory:
#
#   top_builddir=/path/to/build sh tools/check_tools.sh
#
# (automake's TESTS passes top_builddir).  Exit 77 (skip) if io_uring is not
# available here; a failing check prints what it expected and exits 1.
set -u

b=${top_builddir:-.}
KVCTL="$b/tools/kvctl"
KVBENCH="$b/tools/kvbench"
for t in "$KVCTL" "$KVBENCH"; do
    [ -x "$t" ] || { echo "check_tools: $t not built" >&2; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/check_tools.XXXXXX")
rs= # a Redis server of the SIGTERM checks, stopped (SIGSTOP) at times
trap 'if [ -n "$rs" ]; then kill -CONT "$rs"; kill "$rs"; fi 2> /dev/null
    rm -rf "$tmp"' EXIT INT TERM
fails=0

# expect CODE DESCRIPTION CMD...: run CMD, check its exit status.
expect() {
    want=$1 what=$2
    shift 2
    "$@" > "$tmp/out" 2> "$tmp/err"
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: $what: exit $got, expected $want" >&2
        sed 's/^/  | /' "$tmp/err" >&2
        fails=$((fails + 1))
    fi
}

# same DESCRIPTION FILE1 FILE2
same() {
    if ! cmp -s "$2" "$3"; then
        echo "FAIL: $1: $2 and $3 differ" >&2
        diff "$2" "$3" | head -n 10 >&2
        fails=$((fails + 1))
    fi
}

S="sqlite:$tmp/a.db"
if ! "$KVCTL" "$S" put /probe x > /dev/null 2> "$tmp/err"; then
    if grep -q -i 'io_uring' "$tmp/err"; then
        echo "check_tools: io_uring unavailable here: skip" >&2
        exit 77
    fi
fi

# kvctl: exit codes
expect 0 "get" "$KVCTL" "$S" get /probe
expect 4 "insert over an existing key" "$KVCTL" "$S" put /probe y
expect 3 "get a missing key" "$KVCTL" "$S" get /missing
expect 5 "invalid key" "$KVCTL" "$S" get 'a:b:c'
expect 5 "the empty key" "$KVCTL" "$S" get /
expect 2 "unknown command" "$KVCTL" "$S" frobnicate
expect 2 "bad token" "$KVCTL" "$S" delete /probe -1
expect 7 "missing store, read" "$KVCTL" "sqlite:$tmp/none.db" get /a
expect 4 "stale token" "$KVCTL" "$S" put /probe y --token 999999
"$KVCTL" "$S" get /probe --token > "$tmp/tok"
expect 0 "put with the token" "$KVCTL" "$S" put /probe z --token "$(cat "$tmp/tok")"
expect 0 "put --force" "$KVCTL" "$S" put /probe w --force
expect 3 "delete a missing key" "$KVCTL" "$S" delete /nope 1
expect 4 "delete with a stale token" "$KVCTL" "$S" delete /probe 1
expect 2 "the reserved token" "$KVCTL" "$S" put /probe v --token 18446744073709551615
expect 0 "put --force over a missing key" "$KVCTL" "$S" put /forced v --force
expect 0 "delete --force" "$KVCTL" "$S" delete /forced --force
expect 3 "deleted by --force" "$KVCTL" "$S" get /forced
expect 0 "delete --force of a missing key" "$KVCTL" "$S" delete /forced --force
# fs: a record whose header is corrupt is replaced and removed by --force
F="fs:$tmp/fs"
"$KVCTL" "$F" put /bad v > /dev/null
printf 'XX' | dd of="$tmp/fs/bad.kv" bs=1 seek=2 conv=notrunc 2> /dev/null
expect 1 "get a corrupt record" "$KVCTL" "$F" get /bad
expect 1 "put over a corrupt record" "$KVCTL" "$F" put /bad w --token 1
expect 0 "put --force over a corrupt record" "$KVCTL" "$F" put /bad w --force
"$KVCTL" "$F" get /bad > "$tmp/out" 2>&1
[ "$(cat "$tmp/out")" = w ] || { echo "FAIL: put --force over a corrupt record: got $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
printf 'XX' | dd of="$tmp/fs/bad.kv" bs=1 seek=2 conv=notrunc 2> /dev/null
expect 0 "delete --force of a corrupt record" "$KVCTL" "$F" delete /bad --force
expect 3 "the corrupt record is gone" "$KVCTL" "$F" get /bad

# values: binary from stdin, byte for byte
printf 'a\000b\377\n' > "$tmp/bin"
"$KVCTL" "$S" put /bin/x - < "$tmp/bin" > /dev/null
"$KVCTL" "$S" get /bin/x > "$tmp/bin2"
same "binary value" "$tmp/bin" "$tmp/bin2"
"$KVCTL" "$S" put '/u/é t:x' 'tab	and \ backslash' > /dev/null

# dump -> load into every backend -> dump again: same keys and values
"$KVCTL" "$S" dump | cut -d, -f1-2 > "$tmp/d0"
"$KVCTL" "$S" dump > "$tmp/dump"
"$KVCTL" --sync=none "fs:$tmp/fs" load "$tmp/dump" 2> /dev/null
"$KVCTL" "fs:$tmp/fs" dump | cut -d, -f1-2 > "$tmp/d1"
same "sqlite -> fs round trip" "$tmp/d0" "$tmp/d1"
"$KVCTL" "fs:$tmp/fs" dump | "$KVCTL" "sqlite:$tmp/b.db" load 2> /dev/null
"$KVCTL" "sqlite:$tmp/b.db" dump | cut -d, -f1-2 > "$tmp/d2"
same "fs -> sqlite round trip" "$tmp/d0" "$tmp/d2"
expect 4 "load over existing keys" "$KVCTL" "sqlite:$tmp/b.db" load "$tmp/dump"
expect 0 "load --replace" "$KVCTL" "sqlite:$tmp/b.db" load --replace "$tmp/dump"

# malformed load input: line numbers, --keep-going
cat > "$tmp/bad" <<'EOF'
{"key": "/ok/1", "value": "aGk="}
{"key": "/ok/2", "value": "aGk"}
{"key": "/ok/3", "value": "aGk=", "extra": [1, {"a": null}]}
not json
EOF
expect 6 "malformed line" "$KVCTL" sqlite:memory load "$tmp/bad"
grep -q ':2:' "$tmp/err" || { echo "FAIL: no line number in: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 6 "keep going" "$KVCTL" sqlite:memory load --keep-going "$tmp/bad"
grep -q ':4:' "$tmp/err" || { echo "FAIL: --keep-going stopped early" >&2; fails=$((fails + 1)); }
grep -q 'loaded 2 records' "$tmp/err" || { echo "FAIL: --keep-going loaded: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }

# load without --keep-going stops at the first failing line: the records
# before it are written, and so are the writes after it that were already
# in flight (at most the window of 64 minus the failing one); kvctl says
# how many, and reads nothing further.
C="sqlite:$tmp/c.db"
"$KVCTL" "$C" put /l/0005 taken > /dev/null
awk 'BEGIN { for (i = 1; i <= 300; i++)
    printf "{\"key\": \"/l/%04d\", \"value\": \"\"}\n", i }' > "$tmp/lines"
expect 4 "load stops at a conflict" "$KVCTL" "$C" load "$tmp/lines"
after=$(sed -n 's/.*stopped at line 5, .*; \([0-9][0-9]*\) records\{0,1\} after it.*/\1/p' "$tmp/err")
have=$("$KVCTL" "$C" query /l --keys-only | wc -l)
if [ -z "$after" ] || [ "$after" -gt 63 ] || [ "$have" -ne $((5 + after)) ] ||
    ! grep -q "loaded $((4 + after)) record" "$tmp/err"; then
    echo "FAIL: load after a conflict at line 5: $have records, 'after' is" \
        "'$after':" >&2
    sed 's/^/  | /' "$tmp/err" >&2
    fails=$((fails + 1))
fi
# a malformed line is found before its write: nothing after it is written
sed '5s/.*/not json/' "$tmp/lines" > "$tmp/lines5"
expect 6 "load stops at a malformed line" "$KVCTL" sqlite:memory load "$tmp/lines5"
grep -q 'loaded 4 records' "$tmp/err" &&
    grep -q 'stopped at line 5, .*; 0 records after it' "$tmp/err" ||
    { echo "FAIL: load at a malformed line 5: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }

# query options
"$KVCTL" "$S" put /q/1 a > /dev/null
"$KVCTL" "$S" put /q/2 b > /dev/null
"$KVCTL" "$S" put /q/3 c > /dev/null
"$KVCTL" "$S" put /qq x > /dev/null
"$KVCTL" "$S" query /q --desc --offset 1 --limit 1 --keys-only | cut -f1 > "$tmp/q"
echo /q/2 > "$tmp/q2"
same "query --desc --offset --limit" "$tmp/q2" "$tmp/q"
"$KVCTL" "$S" query /q --after /q/1 --keys-only | cut -f1 > "$tmp/q"
printf '/q/2\n/q/3\n' > "$tmp/q23"
same "query --after" "$tmp/q23" "$tmp/q"
"$KVCTL" "$S" query /q --desc --after=/q/3 --limit 1 --keys-only | cut -f1 > "$tmp/q"
same "query --desc --after --limit" "$tmp/q2" "$tmp/q"
expect 5 "query --after a bad key" "$KVCTL" "$S" query /q --after 'a:b:c'

# a corrupt record (issue 16): dump stops at it; --skip-corrupt prints the
# rest, names it and fails; verify names it (exit 1); a clean store, 0
awk 'BEGIN { for (i = 0; i < 300; i++)
    printf "{\"key\": \"/r/%03d\", \"value\": \"dmFsdWU=\"}\n", i }' > "$tmp/r300"
F="fs:$tmp/cfs"
"$KVCTL" --sync=none "$F" load "$tmp/r300" 2> /dev/null
expect 0 "verify a clean fs store" "$KVCTL" "$F" verify
grep -q 'fs: 300 records read whole, 0 corrupt' "$tmp/out" ||
    { echo "FAIL: verify clean: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 0 "verify a clean sqlite store" "$KVCTL" "$S" verify
grep -q 'ok: .*integrity_check' "$tmp/out" ||
    { echo "FAIL: verify sqlite: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
# one value byte of /r/150 ("value" is at offset 40): the checksum fails
printf 'Z' | dd of="$tmp/cfs/r/150.kv" bs=1 seek=42 conv=notrunc 2> /dev/null
expect 1 "dump stops at a corrupt record" "$KVCTL" "$F" dump
grep -q '/r/150' "$tmp/err" ||
    { echo "FAIL: dump error does not name /r/150: $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
[ "$(wc -l < "$tmp/out")" -eq 150 ] ||
    { echo "FAIL: dump printed $(wc -l < "$tmp/out") records before /r/150" >&2; fails=$((fails + 1)); }
expect 1 "dump --skip-corrupt" "$KVCTL" "$F" dump --skip-corrupt
[ "$(wc -l < "$tmp/out")" -eq 299 ] && ! grep -q '/r/150' "$tmp/out" &&
    grep -q 'corrupt record: /r/150' "$tmp/err" &&
    grep -q '1 corrupt record skipped' "$tmp/err" ||
    { echo "FAIL: dump --skip-corrupt: $(wc -l < "$tmp/out") lines;" \
        "$(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 1 "query --skip-corrupt" "$KVCTL" "$F" query /r --skip-corrupt
[ "$(wc -l < "$tmp/out")" -eq 299 ] ||
    { echo "FAIL: query --skip-corrupt: $(wc -l < "$tmp/out") lines" >&2; fails=$((fails + 1)); }
expect 1 "stats stops at a corrupt record" "$KVCTL" "$F" stats /r
expect 1 "stats --skip-corrupt" "$KVCTL" "$F" stats /r --skip-corrupt
grep -q '^records: 299$' "$tmp/out" && grep -q '^corrupt_records: 1$' "$tmp/out" &&
    grep -q 'corrupt record: /r/150' "$tmp/err" ||
    { echo "FAIL: stats --skip-corrupt: $(cat "$tmp/out") $(cat "$tmp/err")" >&2; fails=$((fails + 1)); }
expect 1 "verify a corrupt record" "$KVCTL" "$F" verify
grep -q 'bad: corrupt record /r/150' "$tmp/out" &&
    grep -q '299 records read whole, 1 corrupt' "$tmp/out" ||
    { echo "FAIL: verify: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
# a header byte of another record: keys-only listings see it too
printf 'Z' | dd of="$tmp/cfs/r/007.kv" bs=1 seek=2 conv=notrunc 2> /dev/null
expect 1 "verify two corrupt records" "$KVCTL" "$F" verify
[ "$(grep -c '^bad: corrupt record' "$tmp/out")" -eq 2 ] ||
    { echo "FAIL: verify two: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
printf 'junk\n' > "$tmp/cfs/.format"
expect 1 "verify a bad .format" "$KVCTL" "$F" verify
grep -q 'bad: .*\.format' "$tmp/out" ||
    { echo "FAIL: verify .format: $(cat "$tmp/out")" >&2; fails=$((fails + 1)); }
expect 2 "verify a missing store" "$KVCTL" "fs:$tmp/nostore" verify
expect 2 "verify with an argument" "$KVCTL" "$S" verify /r

# kvbench: usage errors, a job file, the JSON report
expect 2 "kvbench unknown option" "$KVBENCH" --frobnicate=1
expect 2 "kvbench bad value" "$KVBENCH" --rw=sideways
cat > "$tmp/jobs.fio" <<EOF
[global]
backend=sqlite:$tmp/bench.db
keys=2000
number_ios=3000
load

[mixed]
rw=randrw
iodepth=8

[cas]
rw=cas
iodepth=4
random_distribution=zipf:0.9
EOF
expect 0 "kvbench job file" "$KVBENCH" --output-format=json "$tmp/jobs.fio"
if command -v python3 > /dev/null; then
    python3 - "$tmp/out" <<'PY' || fails=$((fails + 1))
import json, sys
d = json.load(open(sys.argv[1]))
jobs = {j["jobname"]: j for j in d["jobs"]}
assert set(jobs) == {"mixed", "cas"}, jobs.keys()
m = jobs["mixed"]["ops"]
assert m["read"]["total_ios"] + m["write"]["total_ios"] == 3000, m
assert m["read"]["lat_ns"]["percentile"]["99.000000"] > 0
c = jobs["cas"]["ops"]["cas"]
assert c["total_ios"] == 3000 and c["errors"] == 0, c
PY
fi
expect 0 "kvbench fs, batches" "$KVBENCH" --backend="fs:$tmp/bfs" --sync=none \
    --rw=randwrite --batch=10 --keys=500 --number_ios=1000 --iodepth=4
# kvbench --numjobs on one shared store (the default): two jobs on one fs
# root and on one SQLite file, each its own --number_ios; no KV_EBUSY, no
# error, the counts add up, and the report names the one store.
for be in "fs:$tmp/shfs" "sqlite:$tmp/shared.db"; do
    expect 0 "kvbench --numjobs=2 on $be" "$KVBENCH" --backend="$be" \
        --output-format=json --rw=randrw --numjobs=2 --iodepth=8 \
        --keys=1000 --number_ios=1500 --load --sync=none
    if command -v python3 > /dev/null; then
        python3 - "$tmp/out" "$be" <<'PY' || fails=$((fails + 1))
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]
o = j["ops"]
n = o["read"]["total_ios"] + o["write"]["total_ios"]
assert n == 3000, (sys.argv[2], n)
assert j["error"] == 0 and o["read"]["errors"] == 0 and o["write"]["errors"] == 0, j
assert j["store"] == sys.argv[2], j["store"]
assert "one store shared by the jobs" in j["driver"], j["driver"]
PY
    fi
done
# Jobs of a shared store that end at different times: the store's thread
# waits in KV_RUN_WAIT and must be woken by the last job's release, never
# left asleep (a lost wake-up hangs the run: timeout fails it).
if command -v timeout > /dev/null; then
    i=0
    while [ "$i" -lt 10 ]; do
        expect 0 "kvbench shared store, jobs ending (round $i)" \
            timeout -k 5 60 "$KVBENCH" --backend=sqlite:memory --rw=randread \
            --numjobs=3 --keys=100 --number_ios=$((20 + i * 7)) --load
        i=$((i + 1))
    done
fi
# kvbench and SIGTERM: the first signal stops the run (the jobs issue
# nothing more and cancel what is in flight, the store closes, the report
# of what completed is printed, exit 1), however the jobs share the store;
# a second one ends the process at once (by that signal).
# signalled DESCRIPTION WANT MODE CMD...: run CMD in the background, then
#   MODE run: once the run is going (the first line of --status_interval in
#     the report; CMD must ask for it), run the command $on_run and send
#     CMD SIGTERM;
#   MODE twice: send SIGTERM after 1 s, and again half a second later if
#     CMD still runs;
# and check that CMD ends within 20 s (generous for a loaded machine; it
# is killed then) with status WANT and, for WANT 1, the report printed.
on_run=:
signalled() {
    what=$1 want=$2 mode=$3
    shift 3
    rm -f "$tmp/out" # not the last run's report, read before CMD opens it
    "$@" > "$tmp/out" 2> "$tmp/err" &
    spid=$!
    if [ "$mode" = run ]; then
        n=0
        while ! grep -q 'status at' "$tmp/out" 2> /dev/null &&
            kill -0 "$spid" 2> /dev/null &&
            [ "$n" -lt 200 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        eval "$on_run"
        kill -TERM "$spid" 2> /dev/null
    else
        sleep 1
        kill -TERM "$spid" 2> /dev/null
        sleep 0.5
        kill -TERM "$spid" 2> /dev/null
    fi
    n=0
    while kill -0 "$spid" 2> /dev/null && [ "$n" -lt 100 ]; do
        sleep 0.2
        n=$((n + 1))
    done
    if kill -0 "$spid" 2> /dev/null; then
        echo "FAIL: $what: still running 20 s after SIGTERM" >&2
        kill -KILL "$spid" 2> /dev/null
        wait "$spid" 2> /dev/null
        fails=$((fails + 1))
        return
    fi
    wait "$spid"
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: $what: exit $got, expected $want" >&2
        sed 's/^/  | /' "$tmp/err" >&2
        fails=$((fails + 1))
    elif [ "$want" -eq 1 ] && { ! grep -q 'Run status group 0' "$tmp/out" ||
        ! grep -q 'kvbench: interrupted' "$tmp/err"; }; then
        echo "FAIL: $what: no report of the interrupted run" >&2
        sed 's/^/  | /' "$tmp/out" "$tmp/err" >&2
        fails=$((fails + 1))
    fi
}
signalled "kvbench SIGTERM, --numjobs=2 on one sqlite store" 1 run \
    "$KVBENCH" --backend="sqlite:$tmp/sig.db" --rw=randrw --numjobs=2 \
    --keys=1000 --load --sync=none --runtime=60 --time_based \
    --status_interval=100ms
# A store that hangs: a Redis server stopped (SIGSTOP) under the run, with
# no timeout (timeout=0), so the operations in flight never complete; the
# stop must cancel them in every arrangement of jobs and store.
if command -v redis-server > /dev/null && command -v redis-cli > /dev/null &&
    command -v timeout > /dev/null; then
    # on a free port (a few tries), ours once the server that answers
    # there has the pid of our pid file; under timeout(1) so that it never
    # outlives an hour, and stopped by its own pid, not timeout's
    rpid= rport=
    mkdir -p "$tmp/redis"
    for try in 1 2 3 4 5; do
        rport=$((20000 + ($$ * 7 + try * 7919) % 40000))
        rm -f "$tmp/redis/pid"
        timeout 3600 redis-server --bind 127.0.0.1 --port "$rport" \
            --dir "$tmp/redis" --pidfile "$tmp/redis/pid" --save '' \
            --appendonly no > "$tmp/redis.log" 2>&1 &
        tpid=$!
        n=0
        while [ "$n" -lt 50 ] && kill -0 "$tpid" 2> /dev/null &&
            { [ ! -s "$tmp/redis/pid" ] ||
            ! redis-cli -p "$rport" info server 2> /dev/null | tr -d '\r' |
            grep -qx "process_id:$(cat "$tmp/redis/pid")"; }; do
            sleep 0.1
            n=$((n + 1))
        done
        if kill -0 "$tpid" 2> /dev/null && [ "$n" -lt 50 ]; then
            rpid=$(cat "$tmp/redis/pid")
            rs=$rpid
            break
        fi
        kill "$tpid" 2> /dev/null
        wait "$tpid" 2> /dev/null
    done
    if [ -z "$rpid" ]; then
        echo "FAIL: kvbench SIGTERM: no Redis server started" >&2
        sed 's/^/  | /' "$tmp/redis.log" >&2
        fails=$((fails + 1))
    else
        R="redis://127.0.0.1:$rport/kvbsig?timeout=0"
        # the server stopped once the run is going, then the signal
        on_run='kill -STOP "$rpid"; sleep 0.3'
        for arr in "--numjobs=2" "--numjobs=1" "--numjobs=1 --store_thread" \
            "--numjobs=2 --store_per_job"; do
            # shellcheck disable=SC2086
            signalled "kvbench SIGTERM, the store hangs, $arr" 1 run \
                "$KVBENCH" --backend="$R" --rw=randrw --keys=200 --load \
                --runtime=60 --time_based --status_interval=100ms $arr
            kill -CONT "$rpid"
        done
        on_run=:
        # a store that hangs in its open (which the first signal does not
        # interrupt): the second signal ends the process at once
        kill -STOP "$rpid"
        signalled "kvbench, a second SIGTERM" 143 twice "$KVBENCH" \
            --backend="$R" --rw=randread --keys=200 --runtime=60 --time_based
        kill -CONT "$rpid"
        kill "$rpid"
        wait "$tpid" 2> /dev/null
        rs=
    fi
else
    echo "check_tools: redis-server, redis-cli or timeout missing: the" \
        "SIGTERM checks with a store that hangs skipped" >&2
fi
expect 0 "kvbench --store_per_job fs" "$KVBENCH" --backend="fs:$tmp/pjfs" \
    --rw=randwrite --numjobs=2 --keys=200 --number_ios=300 --sync=none --store_per_job
grep -q "job0..job1 (one store per job)" "$tmp/out" ||
    { echo "FAIL: --store_per_job: $(grep store "$tmp/out")" >&2; fails=$((fails + 1)); }
# fio's logs: one entry per operation (two jobs: NAME_lat.1.log and .2.log,
# one line per operation), then averaged over 50 ms windows with the max.
expect 0 "kvbench --write_lat_log" "$KVBENCH" --backend=sqlite:memory \
    --rw=randrw --numjobs=2 --iodepth=4 --keys=500 --number_ios=1500 --load \
    --write_lat_log="$tmp/lg" --write_iops_log="$tmp/lg"
expect 0 "kvbench --log_avg_msec" "$KVBENCH" --backend=sqlite:memory \
    --rw=cas --iodepth=4 --keys=500 --runtime=300ms --load \
    --write_lat_log="$tmp/la" --write_iops_log="$tmp/la" --log_avg_msec=50 \
    --log_max_value
if command -v python3 > /dev/null; then
    python3 - "$tmp" <<'PY' || fails=$((fails + 1))
import os, sys
d = sys.argv[1]
def parse(name, positive=True):
    rows, last = [], -1
    for n, line in enumerate(open(os.path.join(d, name)), 1):
        f = [x.strip() for x in line.split(",")]
        assert len(f) == 5, (name, n, line)
        t, v, dd, bs, off = (int(x) for x in f)
        assert t >= last, (name, n, "time goes back")
        assert (v > 0) if positive else (v >= 0), (name, n, line)
        assert dd in (0, 1) and bs > 0 and off == 0, (name, n, line)
        last = t
        rows.append((t, v, dd))
    assert rows, name + " is empty"
    return rows
lat = parse("lg_lat.1.log") + parse("lg_lat.2.log")
assert len(lat) == 3000, len(lat)
assert {r[2] for r in lat} == {0, 1}, "both directions"
iops = parse("lg_iops.1.log") + parse("lg_iops.2.log")
assert len(iops) == 3000 and all(r[1] == 1 for r in iops)
assert not os.path.exists(os.path.join(d, "lg_lat.3.log"))
al = parse("la_lat.1.log")
ai = parse("la_iops.1.log", positive=False)
assert all(r[0] % 50 == 0 for r in al + ai), "window ends"
assert {r[2] for r in al} == {1}, "cas is a write"
assert sum(r[1] for r in ai) > 0
PY
fi
expect 0 "kvbench sqlite-raw scan" "$KVBENCH" --backend="sqlite-raw:$tmp/raw.db" \
    --workload=ycsb-e --keys=500 --number_ios=500
# a preset's settings yield to the options given with it, in either order
for order in before after; do
    if [ $order = before ]; then
        set -- --load=0 --workload=ycsb-c
    else
        set -- --workload=ycsb-c --load=0
    fi
    expect 0 "kvbench --load=0 $order --workload" "$KVBENCH" \
        --backend=sqlite:memory "$@" --keys=100 --number_ios=50
    grep -q "calls=50, not-found=50," "$tmp/out" || {
        echo "FAIL: --load=0 $order --workload: the store was loaded" >&2
        fails=$((fails + 1))
    }
done
# sqlite ?map=0 (pread) and the plain peer's ?mmap=BYTES read the same store
expect 0 "kvbench sqlite ?map=0" "$KVBENCH" --backend="sqlite:$tmp/map.db?map=0" \
    --rw=randrw --keys=500 --number_ios=1000
[ -f "$tmp/map.db" ] || { echo "FAIL: ?map=0 is not part of the path" >&2; fails=$((fails + 1)); }
expect 0 "kvctl sqlite ?map=0" "$KVCTL" "sqlite:$tmp/map.db?map=0" put /m x
expect 0 "kvctl sqlite mapped" "$KVCTL" "sqlite:$tmp/map.db?map=1" get /m
expect 2 "sqlite ?map=2" "$KVCTL" "sqlite:$tmp/map.db?map=2" get /m
grep -q "map takes 0 or 1" "$tmp/err" || { echo "FAIL: ?map=2 message" >&2; fails=$((fails + 1)); }
expect 0 "kvbench sqlite-raw ?mmap" "$KVBENCH" --backend="sqlite-raw:$tmp/raw.db?mmap=268435456" \
    --rw=randread --keys=500 --load=0 --number_ios=500
grep -q "mmap_size=268435456" "$tmp/out" || { echo "FAIL: sqlite-raw ?mmap not applied" >&2; fails=$((fails + 1)); }
expect 1 "kvbench sqlite-raw ?mmap=x" "$KVBENCH" --backend="sqlite-raw:$tmp/raw.db?mmap=x" \
    --rw=randread --keys=500 --load=0 --number_ios=500

# hiccup: one line per online CPU, bad usage exits 2
if [ -x "$b/tools/hiccup" ]; then
    expect 0 "hiccup 0.2" "$b/tools/hiccup" 0.2
    n=$(grep -c '^cpu[0-9]*: [0-9.]* s, gaps over 1 ms: [0-9]*, over 5 ms: [0-9]*, over 10 ms: [0-9]*, longest [0-9.]* ms, time lost in gaps over 1 ms: [0-9.]*%; unseen by the guest: [0-9]* over 1 ms, [0-9]* over 5 ms$' "$tmp/out")
    [ "$n" -eq "$(getconf _NPROCESSORS_ONLN)" ] || {
        echo "FAIL: hiccup: $n lines of the expected form, one per CPU wanted" >&2
        sed 's/^/  | /' "$tmp/out" >&2
        fails=$((fails + 1))
    }
    expect 2 "hiccup 0" "$b/tools/hiccup" 0
    expect 2 "hiccup 1x" "$b/tools/hiccup" 1x
    expect 2 "hiccup two arguments" "$b/tools/hiccup" 1 2
else
    echo "FAIL: $b/tools/hiccup not built" >&2
    fails=$((fails + 1))
fi

if [ "$fails" -ne 0 ]; then
    echo "check_tools: $fails check(s) failed" >&2
    exit 1
fi
echo "check_tools: all passed"
