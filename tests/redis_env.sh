#!/bin/sh
# redis_env.sh PROGRAM [ARGS...] - run a test program with Redis servers.
#
# For check_store, check_redis, check_stress and check_alloc (other programs
# run as they are), when
# redis-server and redis-cli are installed and KV_TEST_REDIS is not already
# set: start, in a temporary directory, on free loopback ports (127.0.0.1
# only, 30000 and up),
#   - one single server                  -> KV_TEST_REDIS
#   - a 3-master Redis Cluster (no replicas, cluster-require-full-coverage
#     no)                                -> KV_TEST_REDIS_CLUSTER
# every one with appendonly yes / appendfsync always; KV_TEST_REDIS_DIR
# holds c1..c3/start and c1..c3/stop scripts for failure tests.  The servers
# are killed when the program ends, whatever happens (trap), and each runs
# under timeout(1) so none outlives an hour even if this shell is killed.
set -u
prog=$1
case "$prog" in
*check_store*|*check_redis*|*check_stress*|*check_alloc*) ;;
*) exec "$@" ;;
esac
if [ -n "${KV_TEST_REDIS:-}" ] || ! command -v redis-server >/dev/null 2>&1 ||
    ! command -v redis-cli >/dev/null 2>&1; then
    exec "$@"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/kvredis-XXXXXX") || exec "$@"
cleanup() {
    for f in "$dir"/*/pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
    done
    sleep 0.2
    for f in "$dir"/*/pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

port_free() {
    ! redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1 &&
        ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Each instance of this script walks its own block of 50 ports (make -j runs
# check_store and check_redis at once, and sequential picks from nearby bases
# collided).  Client ports stay in 30000-39999, so the cluster bus ports
# (port + 10000) are in 40000-49999 and one instance's client port can never
# be another's bus port; both must be free.
next=$((30000 + ($$ % 199) * 50))
pick_port() {
    while :; do
        next=$((next + 1))
        [ "$next" -gt 39999 ] && next=30001
        if port_free "$next" && port_free "$((next + 10000))"; then
            port=$next
            return
        fi
    done
}

# make_node NAME PORT [extra redis-server args...]
make_node() {
    name=$1 p=$2
    shift 2
    mkdir -p "$dir/$name"
    {
        echo "cd '$dir/$name' || exit 1"
        echo "timeout 3600 redis-server --bind 127.0.0.1 --port $p --dir '$dir/$name' \\"
        echo "  --appendonly yes --appendfsync always --save '' --protected-mode no \\"
        echo "  --logfile '$dir/$name/log' $* >/dev/null 2>&1 &"
        echo "echo \$! > '$dir/$name/pid'"
        echo "i=0; while [ \$i -lt 400 ]; do"
        echo "  redis-cli -h 127.0.0.1 -p $p ping >/dev/null 2>&1 && exit 0"
        echo "  i=\$((i + 1)); sleep 0.05; done; exit 1"
    } > "$dir/$name/start"
    {
        echo "[ -f '$dir/$name/pid' ] && kill \$(cat '$dir/$name/pid') 2>/dev/null"
        echo "i=0; while [ \$i -lt 100 ]; do"
        echo "  redis-cli -h 127.0.0.1 -p $p ping >/dev/null 2>&1 || exit 0"
        echo "  i=\$((i + 1)); sleep 0.05; done; exit 1"
    } > "$dir/$name/stop"
    sh "$dir/$name/start"
}

# start_node NAME [args...]: start on a free port (set in $port), trying a
# few ports: another process may take a port between the check and the bind.
start_node() {
    sname=$1
    shift
    for try in 1 2 3 4 5; do
        pick_port
        if make_node "$sname" "$port" "$@"; then
            return 0
        fi
        [ -f "$dir/$sname/pid" ] && kill -9 "$(cat "$dir/$sname/pid")" 2>/dev/null
        rm -rf "${dir:?}/$sname"
        echo "redis_env.sh: $sname did not start on port $port (try $try)" >&2
    done
    return 1
}

start_node single || {
    echo "redis_env.sh: cannot start redis-server" >&2
    exit 99
}
single=$port
cports=
for n in 1 2 3; do
    start_node "c$n" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --cluster-require-full-coverage no || {
        echo "redis_env.sh: cannot start cluster node c$n" >&2
        exit 99
    }
    cports="$cports $port"
done
set -- "$@"
hosts=
for p in $cports; do hosts="$hosts 127.0.0.1:$p"; done
# shellcheck disable=SC2086
if ! redis-cli --cluster create $hosts --cluster-yes >"$dir/create.log" 2>&1; then
    echo "redis_env.sh: redis-cli --cluster create failed:" >&2
    cat "$dir/create.log" >&2
    exit 99
fi
ok=0
for i in $(seq 1 100); do
    all=1
    for p in $cports; do
        redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null |
            grep -q 'cluster_state:ok' || all=0
    done
    if [ "$all" = 1 ]; then
        ok=1
        break
    fi
    sleep 0.1
done
[ "$ok" = 1 ] || { echo "redis_env.sh: cluster not ok" >&2; exit 99; }

KV_TEST_REDIS="redis://127.0.0.1:$single"
KV_TEST_REDIS_CLUSTER="redis://$(echo $hosts | tr ' ' ',')"
KV_TEST_REDIS_DIR=$dir
export KV_TEST_REDIS KV_TEST_REDIS_CLUSTER KV_TEST_REDIS_DIR
"$@"
