#!/bin/sh
# redis_env.sh PROGRAM [ARGS...] - run a test program with Redis servers.
#
# For the conformance programs (tests/conformance/check_*), check_redis,
# check_stress, check_alloc, check_hostile, check_hostloop and check_corrupt
# (other programs run as they are, unless KV_REDIS_ENV_FORCE is set:
# tools/bench.sh uses that), when redis-server is installed and
# KV_TEST_REDIS is not already set: start, in a temporary directory, on
# free loopback ports (127.0.0.1 only; see pick_port),
#   - one single server                  -> KV_TEST_REDIS
#   - a 3-master Redis Cluster (no replicas, cluster-require-full-coverage
#     no)                                -> KV_TEST_REDIS_CLUSTER
#   - for check_redis only, a second cluster for the failover test: three
#     masters f1..f3 and f4, a replica of f1 (cluster-node-timeout 1000)
#                                        -> KV_TEST_REDIS_FAILOVER
#   - for check_redis only, servers that need a password (host lists only,
#     no credentials in the variables):
#       a single server                  -> KV_TEST_REDIS_AUTH
#       a 3-master cluster               -> KV_TEST_REDIS_AUTH_CLUSTER
#     both with requirepass p@ss:w/rd%x (URI-encoded: p%40ss%3Aw%2Frd%25x)
#     for the default user, and ACL user kvuser (password kv-pw) allowed
#     only the keys ~kvacl* and the commands the store sends (see
#     kvstore-redis(3)); the cluster's nodes also authenticate to each
#     other (masterauth).  The conformance programs get the single one.
#   - for check_redis and the conformance programs, when the openssl
#     command is installed and redis-server has TLS (--tls-port): TLS
#     servers (rediss://) with the same password and ACL user, their
#     certificates made here in $KV_TEST_REDIS_DIR/tls (see make_certs):
#       a single server, TLS only         -> KV_TEST_REDIS_TLS
#       a 3-master cluster, tls-cluster yes and tls-replication yes
#       (for check_redis t4 is a replica of t1, for the failover test)
#                                         -> KV_TEST_REDIS_TLS_CLUSTER
#       the CA that signed their certificates -> KV_TEST_REDIS_TLS_CA
#     and for check_redis only, by port file: tx (a single server whose
#     certificate has expired) and tm (one that requires a client
#     certificate, tls-auth-clients yes).  For check_alloc, check_stress
#     and check_hostile only the single TLS server (their rediss rows).
# every one with appendonly yes / appendfsync always; KV_TEST_REDIS_DIR
# holds c1..c3 (and f1..f4) /start and /stop scripts and /port files for
# the failure tests.  The servers are killed when the program ends, whatever
# happens (trap), and each runs under timeout(1) so none outlives an hour
# even if this shell is killed.
#
# A set-up that fails (a port taken between the check and the bind, a
# cluster that does not form) is torn down and made again once, on fresh
# ports.  If it fails twice the program is not run and this script exits 99
# (a hard error for the automake harness): a broken Redis set-up must not
# pass as skipped tests.  Without redis-server the program runs without
# Redis (its redis tests skip, saying so); KV_TEST_REDIS=skip does the same
# on a machine that has it.
set -u
prog=$1
case "$prog" in
*conformance/check_*|*check_redis*|*check_stress*|*check_alloc*|*check_hostile*|*check_hostloop*|*check_corrupt*) ;;
*) [ -n "${KV_REDIS_ENV_FORCE:-}" ] || exec "$@" ;;
esac
if [ "${KV_TEST_REDIS:-}" = skip ]; then
    echo "redis_env.sh: KV_TEST_REDIS=skip: running $prog without Redis" >&2
    unset KV_TEST_REDIS KV_TEST_REDIS_CLUSTER KV_TEST_REDIS_DIR \
        KV_TEST_REDIS_FAILOVER KV_TEST_REDIS_AUTH KV_TEST_REDIS_AUTH_CLUSTER \
        KV_TEST_REDIS_TLS KV_TEST_REDIS_TLS_CLUSTER KV_TEST_REDIS_TLS_CA
    exec "$@"
fi
[ -n "${KV_TEST_REDIS:-}" ] && exec "$@" # servers given by the caller
# The build's config.h (make check runs in the build directory): without
# hiredis there is no Redis backend, so no servers (the redis rows and
# tests skip); without OpenSSL no TLS servers.
have_redis=yes have_openssl=yes
if [ -f config.h ]; then
    grep -q '^#define HAVE_HIREDIS 1' config.h || have_redis=no
    grep -q '^#define HAVE_OPENSSL 1' config.h || have_openssl=no
fi
if [ $have_redis = no ]; then
    echo "redis_env.sh: kvstore was built without hiredis: $prog runs" \
        "without Redis" >&2
    exec "$@"
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis_env.sh: redis-server is not installed: $prog runs" \
        "without Redis (apt-get install redis-server)" >&2
    exec "$@"
fi
if ! command -v redis-cli >/dev/null 2>&1; then
    echo "redis_env.sh: redis-server is installed but redis-cli is not" \
        "(apt-get install redis-tools)" >&2
    exit 99
fi

if ! dir=$(mktemp -d "${TMPDIR:-/tmp}/kvredis-XXXXXX") ||
    ! dir=$(cd "$dir" && pwd -P); then
    echo "redis_env.sh: cannot make a temporary directory" >&2
    exit 99
fi

# Kill every server started so far (SIGTERM, then SIGKILL after 3 s).
kill_all() {
    for f in "$dir"/*/pid "$dir"/*/redis.pid; do
        [ -f "$f" ] && kill "$(cat "$f" 2>/dev/null)" 2>/dev/null
    done
    i=0
    while [ $i -lt 30 ]; do
        alive=0
        for f in "$dir"/*/redis.pid; do
            [ -f "$f" ] && kill -0 "$(cat "$f" 2>/dev/null)" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
        i=$((i + 1))
    done
    for f in "$dir"/*/pid "$dir"/*/redis.pid; do
        [ -f "$f" ] && kill -9 "$(cat "$f" 2>/dev/null)" 2>/dev/null
    done
}
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    kill_all
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# A port is free when no socket uses it, listening or connected (an
# outgoing connection's ephemeral port blocks a bind as well), and no Redis
# answers on it.
port_free() {
    if command -v ss >/dev/null 2>&1; then
        [ -z "$(ss -Htan "sport = :$1" 2>/dev/null)" ] || return 1
    fi
    ! redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1
}

# Ports.  Below the kernel's ephemeral range when it starts at 32768 or up
# (the default): client ports 20000-25999, cluster bus ports (set with
# cluster-port) 6000 above, 26000-31999, so no outgoing connection (ours or
# anyone's) can take a port between the check and the bind or while a test
# has a node stopped.  Otherwise client ports 30000-39999 with the bus at
# +10000.  Either way one instance's client port is never another's bus
# port.  Each instance of this script starts in its own block of 30 ports
# (make -j runs several redis test programs at once, and sequential picks
# from nearby bases collided).
eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 0)
if [ "${eph:-0}" -ge 32768 ] 2>/dev/null; then
    plo=20000 phi=25999 bus=6000
else
    plo=30000 phi=39999 bus=10000
fi
next=$((plo + ($$ % ((phi - plo) / 30)) * 30))
pick_port() {
    while :; do
        next=$((next + 1))
        [ "$next" -gt "$phi" ] && next=$((plo + 1))
        if port_free "$next" && port_free "$((next + bus))"; then
            port=$next
            return
        fi
    done
}

# make_node NAME PORT [extra redis-server args...]: write NAME's start and
# stop scripts and run start.  start succeeds once the server on PORT
# answers with NAME's directory (not some other server that took the port),
# and fails at once if the server exits.
# With NODE_CONF set the server reads that file first; with NODE_AUTH set
# redis-cli authenticates with it (REDISCLI_AUTH).  With NODE_TLS set (the
# server's TLS arguments) PORT is a TLS port (--port 0: no plain one) and
# redis-cli uses $CLI_TLS.
make_node() {
    name=$1 p=$2
    shift 2
    nd=$dir/$name
    conf=${NODE_CONF:+"'$NODE_CONF' "}
    auth=${NODE_AUTH:+"REDISCLI_AUTH='$NODE_AUTH' "}
    listen="--port $p"
    cli=redis-cli
    if [ -n "${NODE_TLS:-}" ]; then
        listen="--port 0 --tls-port $p $NODE_TLS"
        cli="redis-cli $CLI_TLS"
    fi
    cport=
    case " $* " in
    *" --cluster-enabled yes "*) cport="--cluster-port $((p + bus))" ;;
    esac
    mkdir -p "$nd"
    echo "$p" > "$nd/port"
    {
        echo "cd '$nd' || exit 1"
        echo "rm -f '$nd/redis.pid'"
        echo "timeout 3600 redis-server $conf--bind 127.0.0.1 $listen --dir '$nd' \\"
        echo "  --pidfile '$nd/redis.pid' --appendonly yes --appendfsync always \\"
        echo "  --save '' --protected-mode no --logfile '$nd/log' $* $cport \\"
        echo "  >/dev/null 2>&1 &"
        echo "echo \$! > '$nd/pid'"
        echo "i=0; while [ \$i -lt 400 ]; do"
        echo "  d=\$(${auth}$cli -h 127.0.0.1 -p $p config get dir 2>/dev/null | sed -n 2p)"
        echo "  [ \"\$d\" = '$nd' ] && exit 0"
        echo "  kill -0 \$(cat '$nd/pid') 2>/dev/null || exit 1"
        echo "  i=\$((i + 1)); sleep 0.05; done; exit 1"
    } > "$nd/start"
    {
        echo "[ -f '$nd/pid' ] && kill \$(cat '$nd/pid') 2>/dev/null"
        echo "i=0; while [ \$i -lt 300 ]; do"
        echo "  ${auth}$cli -h 127.0.0.1 -p $p ping 2>/dev/null | grep -q . || exit 0"
        echo "  i=\$((i + 1)); sleep 0.05; done; exit 1"
    } > "$nd/stop"
    sh "$nd/start"
}

# Show the end of a node's log (why it did not start or join).
show_log() {
    if [ -f "$dir/$1/log" ]; then
        echo "redis_env.sh: last lines of $1's log:" >&2
        tail -n 8 "$dir/$1/log" | sed 's/^/    /' >&2
    fi
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
        echo "redis_env.sh: $sname did not start on port $port (try $try)" >&2
        show_log "$sname"
        [ -f "$dir/$sname/pid" ] && kill -9 "$(cat "$dir/$sname/pid")" 2>/dev/null
        [ -f "$dir/$sname/redis.pid" ] &&
            kill -9 "$(cat "$dir/$sname/redis.pid")" 2>/dev/null
        rm -rf "${dir:?}/$sname"
    done
    echo "redis_env.sh: cannot start $sname" >&2
    return 1
}

# wait_cluster NODES...: every node sees the cluster ok, every slot served,
# and as many nodes as given (at most 20 s).
wait_cluster() {
    want=$#
    i=0
    while [ $i -lt 200 ]; do
        all=1
        for n in "$@"; do
            info=$(redis-cli ${CLI:-} -h 127.0.0.1 -p "$(cat "$dir/$n/port")" \
                cluster info 2>/dev/null | tr -d '\r')
            case "$info" in
            *cluster_state:ok*) ;;
            *) all=0 ;;
            esac
            echo "$info" | grep -qx 'cluster_slots_ok:16384' || all=0
            echo "$info" | grep -qx "cluster_known_nodes:$want" || all=0
        done
        [ $all = 1 ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "redis_env.sh: the cluster of $* did not become ok in 20 s:" >&2
    for n in "$@"; do
        echo "  $n:" >&2
        redis-cli ${CLI:-} -h 127.0.0.1 -p "$(cat "$dir/$n/port")" cluster info \
            2>&1 | grep -E 'cluster_(state|slots_ok|known_nodes)' |
            sed 's/^/    /' >&2
        show_log "$n"
    done
    return 1
}

# make_cluster NAME TIMEOUT_MS NODES...: start the nodes and join them as
# masters with redis-cli --cluster create.
make_cluster() {
    cname=$1 nto=$2
    shift 2
    hosts=
    for n in "$@"; do
        start_node "$n" --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout "$nto" \
            --cluster-require-full-coverage no \
            --cluster-replica-validity-factor 0 \
            --repl-diskless-sync-delay 0 ${CLUSTER_EXTRA:-} || return 1
        hosts="$hosts 127.0.0.1:$port"
    done
    # shellcheck disable=SC2086
    if ! redis-cli ${CLI:-} --cluster create $hosts --cluster-yes \
        >"$dir/$cname.log" 2>&1; then
        echo "redis_env.sh: redis-cli --cluster create ($cname) failed:" >&2
        sed 's/^/    /' "$dir/$cname.log" >&2
        return 1
    fi
    wait_cluster "$@"
}

# A failover cluster NAME: masters $2..$4 ($2..$4 and $5 are node names),
# $5 a replica of $2 (default: f1..f3 and f4).
make_failover() {
    fname=${1:-failover} m1=${2:-f1} m2=${3:-f2} m3=${4:-f3} r1=${5:-f4}
    make_cluster "$fname" 1000 "$m1" "$m2" "$m3" || return 1
    start_node "$r1" --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 1000 --cluster-require-full-coverage no \
        --cluster-replica-validity-factor 0 \
        --repl-diskless-sync-delay 0 ${CLUSTER_EXTRA:-} || return 1
    p1=$(cat "$dir/$m1/port")
    p4=$(cat "$dir/$r1/port")
    id1=$(redis-cli ${CLI:-} -h 127.0.0.1 -p "$p1" cluster myid | tr -d '\r')
    if ! redis-cli ${CLI:-} --cluster add-node "127.0.0.1:$p4" \
        "127.0.0.1:$p1" --cluster-slave --cluster-master-id "$id1" \
        >"$dir/$fname-add.log" 2>&1; then
        echo "redis_env.sh: redis-cli --cluster add-node (replica) failed:" >&2
        sed 's/^/    /' "$dir/$fname-add.log" >&2
        return 1
    fi
    wait_cluster "$m1" "$m2" "$m3" "$r1" || return 1
    # the replica in sync with its master, and known as its replica by
    # every master (they vote for it when the master fails)
    id4=$(redis-cli ${CLI:-} -h 127.0.0.1 -p "$p4" cluster myid | tr -d '\r')
    i=0
    while [ $i -lt 200 ]; do
        ok=1
        redis-cli ${CLI:-} -h 127.0.0.1 -p "$p4" info replication \
            2>/dev/null | tr -d '\r' | grep -qx 'master_link_status:up' || ok=0
        for n in "$m1" "$m2" "$m3"; do
            redis-cli ${CLI:-} -h 127.0.0.1 -p "$(cat "$dir/$n/port")" \
                cluster nodes 2>/dev/null | grep "^$id4 " |
                grep -q " slave $id1 " || ok=0
        done
        [ $ok = 1 ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "redis_env.sh: $r1 did not become $m1's replica in 20 s" >&2
    show_log "$r1"
    return 1
}

# The servers that need a password: their configuration file.
AUTH_PASS='p@ss:w/rd%x'
write_auth_conf() {
    # shellcheck disable=SC2016 # literal ACL rules
    {
        echo "requirepass \"$AUTH_PASS\""
        echo "masterauth \"$AUTH_PASS\""
        echo 'user kvuser on >kv-pw ~kvacl* resetchannels -@all +auth +ping' \
            '+cluster|slots +asking +script|load +evalsha +eval +get +set' \
            '+setbit +hget +hmget +hset +del +zadd +zrem +zscore' \
            '+zrangebylex +zrevrangebylex +zremrangebylex +time'
    } > "$dir/auth.conf"
}

# make_auth [cluster]: the single server with a password, and with
# "cluster" the cluster too.
make_auth() {
    write_auth_conf
    NODE_CONF=$dir/auth.conf NODE_AUTH=$AUTH_PASS
    REDISCLI_AUTH=$AUTH_PASS
    export REDISCLI_AUTH
    ok=0
    if start_node asingle; then
        asingle=$port
        ok=1
        if [ "${1:-}" = cluster ]; then
            CLUSTER_EXTRA='--cluster-announce-hostname localhost
                --cluster-preferred-endpoint-type hostname'
            make_cluster acluster 2000 a1 a2 a3 || ok=0
            CLUSTER_EXTRA=
        fi
    fi
    unset NODE_CONF NODE_AUTH REDISCLI_AUTH
    [ $ok = 1 ] || return 1
    KV_TEST_REDIS_AUTH="redis://127.0.0.1:$asingle"
    export KV_TEST_REDIS_AUTH
    [ "${1:-}" = cluster ] || return 0
    aports=
    for n in a1 a2 a3; do
        aports="$aports${aports:+,}127.0.0.1:$(cat "$dir/$n/port")"
    done
    KV_TEST_REDIS_AUTH_CLUSTER="redis://$aports"
    export KV_TEST_REDIS_AUTH_CLUSTER
}

# Whether redis-server and redis-cli were built with TLS (Debian's are):
# a server given only a TLS port of 0 says it listens nowhere instead of
# refusing the option.
tls_supported() {
    command -v openssl >/dev/null 2>&1 || {
        echo "redis_env.sh: no openssl command: TLS tests skipped" >&2
        return 1
    }
    out=$(cd "$dir" && timeout 10 redis-server --port 0 --tls-port 0 \
        --save '' --appendonly no 2>&1)
    case "$out" in
    *"not listen anywhere"*) ;;
    *)
        echo "redis_env.sh: redis-server has no TLS: TLS tests skipped" \
            "($(echo "$out" | grep -m1 -iE 'tls|error|bad'))" >&2
        return 1
        ;;
    esac
    if redis-cli --tls -p 1 ping 2>&1 | grep -q Unrecognized; then
        echo "redis_env.sh: redis-cli has no --tls: TLS tests skipped" >&2
        return 1
    fi
    return 0
}

# The certificates of the TLS servers, in $dir/tls (EC P-256 keys):
#   ca.pem         the test CA
#   other-ca.pem   a second, unrelated CA
#   server.pem     signed by ca.pem for DNS:localhost, IP:127.0.0.1, IP:::1
#   expired.pem    the same key and names, valid only in January 2020
#                  (made with `openssl ca -startdate/-enddate`: OpenSSL 3.0's
#                  x509 -req cannot date a certificate in the past)
#   client.pem     a client certificate (clientAuth) signed by ca.pem
make_certs() {
    t=$dir/tls
    mkdir -p "$t" || return 1
    (
        set -e
        cd "$t"
        key() { openssl genpkey -algorithm EC \
            -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
        key ca.key
        openssl req -x509 -new -key ca.key -sha256 -days 3650 \
            -subj "/CN=kvstore test CA" -out ca.pem
        key other-ca.key
        openssl req -x509 -new -key other-ca.key -sha256 -days 3650 \
            -subj "/CN=kvstore other CA" -out other-ca.pem
        key server.key
        openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n' > san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key \
            -CAcreateserial -days 3650 -sha256 -extfile san.ext \
            -out server.pem 2>/dev/null
        printf '[ca]\ndefault_ca=c\n[c]\ndatabase=%s/index.txt\n' "$t" > ca.cnf
        printf 'new_certs_dir=%s\nserial=%s/serial\ndefault_md=sha256\n' \
            "$t" "$t" >> ca.cnf
        printf 'policy=p\n[p]\ncommonName=supplied\n' >> ca.cnf
        : > index.txt
        echo 1000 > serial
        openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key \
            -in server.csr -startdate 20200101000000Z \
            -enddate 20200131000000Z -extfile san.ext -out expired.pem \
            >/dev/null 2>&1
        key client.key
        openssl req -new -key client.key -subj "/CN=kvstore client" \
            -out client.csr
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key \
            -CAcreateserial -days 3650 -sha256 -extfile client.ext \
            -out client.pem 2>/dev/null
    ) > "$dir/certs.log" 2>&1 || {
        echo "redis_env.sh: making the test certificates failed:" >&2
        sed 's/^/    /' "$dir/certs.log" >&2
        return 1
    }
}

# make_tls [full|single]: the TLS servers (see the top); "full"
# (check_redis): t4 a replica of t1, and tx and tm; "single": no cluster.
make_tls() {
    make_certs || return 1
    t=$dir/tls
    # (one line each: they go into the start scripts' command line)
    tls_args="--tls-cert-file $t/server.pem --tls-key-file $t/server.key"
    tls_args="$tls_args --tls-ca-cert-file $t/ca.pem"
    CLI_TLS="--tls --cacert $t/ca.pem"
    write_auth_conf
    NODE_CONF=$dir/auth.conf NODE_AUTH=$AUTH_PASS
    REDISCLI_AUTH=$AUTH_PASS
    export REDISCLI_AUTH
    NODE_TLS="$tls_args --tls-auth-clients no"
    CLI=$CLI_TLS
    CLUSTER_EXTRA='--tls-cluster yes --tls-replication yes'
    ok=0
    if start_node tsingle; then
        tsingle=$port
        if [ "${1:-}" = full ]; then
            make_failover tcluster t1 t2 t3 t4 && ok=1
        elif [ "${1:-}" = single ]; then
            ok=1
        else
            make_cluster tcluster 2000 t1 t2 t3 && ok=1
        fi
    fi
    CLUSTER_EXTRA=
    unset NODE_CONF NODE_AUTH REDISCLI_AUTH
    if [ $ok = 1 ] && [ "${1:-}" = full ]; then
        ok=0
        NODE_TLS="--tls-cert-file $t/expired.pem --tls-key-file $t/server.key"
        NODE_TLS="$NODE_TLS --tls-ca-cert-file $t/ca.pem --tls-auth-clients no"
        CLI="$CLI_TLS --insecure"
        CLI_TLS=$CLI
        if start_node tx; then
            NODE_TLS="$tls_args --tls-auth-clients yes"
            CLI_TLS="--tls --cacert $t/ca.pem --cert $t/client.pem --key $t/client.key"
            start_node tm && ok=1
        fi
    fi
    NODE_TLS= CLI= CLI_TLS=
    [ $ok = 1 ] || return 1
    KV_TEST_REDIS_TLS="rediss://127.0.0.1:$tsingle"
    KV_TEST_REDIS_TLS_CA=$t/ca.pem
    export KV_TEST_REDIS_TLS KV_TEST_REDIS_TLS_CA
    [ "${1:-}" = single ] && return 0
    tports=
    for n in t1 t2 t3; do
        tports="$tports${tports:+,}127.0.0.1:$(cat "$dir/$n/port")"
    done
    KV_TEST_REDIS_TLS_CLUSTER="rediss://$tports"
    export KV_TEST_REDIS_TLS_CLUSTER
}

setup() {
    # also on [::1] when the machine has IPv6 on loopback (- : optional)
    start_node single --bind 127.0.0.1 -::1 || return 1
    single=$port
    make_cluster cluster 2000 c1 c2 c3 || return 1
    cports=
    for n in c1 c2 c3; do
        cports="$cports${cports:+,}127.0.0.1:$(cat "$dir/$n/port")"
    done
    KV_TEST_REDIS="redis://127.0.0.1:$single"
    KV_TEST_REDIS_CLUSTER="redis://$cports"
    case "$prog" in
    *check_redis*)
        make_failover || return 1
        fports=
        for n in f1 f2 f3; do
            fports="$fports${fports:+,}127.0.0.1:$(cat "$dir/$n/port")"
        done
        KV_TEST_REDIS_FAILOVER="redis://$fports"
        export KV_TEST_REDIS_FAILOVER
        make_auth cluster || return 1
        if [ "$tls" = yes ]; then make_tls full || return 1; fi
        ;;
    *conformance/check_*)
        make_auth || return 1
        if [ "$tls" = yes ]; then make_tls || return 1; fi
        ;;
    *check_alloc*|*check_stress*|*check_hostile*)
        if [ "$tls" = yes ]; then make_tls single || return 1; fi
        ;;
    esac
    return 0
}

tls=no
case "$prog" in
*check_redis*|*conformance/check_*|*check_alloc*|*check_stress*|*check_hostile*)
    if [ $have_openssl = no ]; then
        echo "redis_env.sh: kvstore was built without OpenSSL: no TLS" \
            "servers" >&2
    elif tls_supported; then
        tls=yes
    fi
    ;;
esac
attempt=1
until setup; do
    kill_all
    rm -rf "${dir:?}"/*
    if [ $attempt -ge 2 ]; then
        echo "redis_env.sh: the Redis set-up failed twice; $prog not run" \
            "(KV_TEST_REDIS=skip runs it without Redis)" >&2
        exit 99
    fi
    attempt=$((attempt + 1))
    echo "redis_env.sh: making the whole Redis set-up again on fresh ports" >&2
done

KV_TEST_REDIS_DIR=$dir
export KV_TEST_REDIS KV_TEST_REDIS_CLUSTER KV_TEST_REDIS_DIR
"$@"
status=$?
exit $status
