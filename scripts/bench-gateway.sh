#!/usr/bin/env bash
# East-west gateway benchmark: the Isthmus gateway vs HAProxy (`req.ssl_sni`)
# vs nginx (`stream` + `ssl_preread`), all SNI passthrough to the same TLS
# backend, under the same load, one after the other.
#
# The backend is two nginx https servers of one worker each, on
# 127.0.0.1 and 127.0.0.2, and every proxy balances round robin across
# them. One nginx with two workers let its accept decide the bulk figure:
# when all four bulk connections landed in one worker (nginx's accept
# wakes one worker, which takes a burst), that worker's core bound the
# rate, 0.8-1.1 GB/s against 1.4-1.5 with two and two, whichever proxy
# was in between (docs/benchmarks/gateway.md, run B1).
#
#   scripts/bench-gateway.sh                     # builds, 2 rounds, DURATION=10 CONC=32
#   LTO=1 ROUNDS=3 DURATION=8 scripts/bench-gateway.sh
#
# Figures per proxy (and for the backend direct, as the baseline), with the
# load from gateway/bench-load (rustls, full handshakes, no resumption):
#   new TLS connections/s  CONC clients, one request per connection (`Connection: close`)
#   bulk MB/s              4 keep-alive connections downloading 32 MiB objects
#   p50/p99 latency        8 keep-alive connections, 64-byte responses
#   RSS                    peak VmHWM of the proxy's processes over its turn
# Every proxy gets 2 worker threads/processes (one with PIN=1) and is started fresh for its
# turn (so each peak RSS covers the same load). Rounds alternate the order
# of the targets; each round prints its table and its ratios to HAProxy.
#
# Options (environment):
#   DURATION, CONC, ROUNDS   seconds per figure, clients for conns/s, rounds (2)
#   GATEWAYS  the gateway variants, `;`-separated `name=binary flags`, binary
#             `multi` (isthmus gateway), `thin` (isthmus-gateway) or a path to
#             an isthmus-gateway binary; default:
#             "isthmus=thin;isthmus-splice=thin --zero-copy on"
#   LTO=1     isthmus-gateway from the `dist` profile (fat LTO, one codegen
#             unit; a smaller binary maps less memory; ~10 min to build)
#   BUILD=0   use the binaries as they are (ISTHMUS_BIN, GATEWAY_BIN)
#   FIGURES   which figures to run, a subset of `conns bulk latency` (all);
#             e.g. FIGURES=latency ROUNDS=10 for a steadier p99
#   SYSCALLS=1  one more 5 s run of the conns and latency loads per proxy
#             with `strace -c -f` attached: system calls per new connection
#             and per small request (ptrace slows the path, so only the
#             counts per request mean anything)
#   PIN=1     the proxy under test on CPU 1 with one thread (HAProxy
#             nbthread 1, nginx one worker, the gateway --threads 1), the
#             load generator and the backend on CPU 0: the proxy's own cost
#             without the scheduler mixing it with the load's (a steadier
#             p99; handshakes and bulk are then bound by CPU 0)
set -euo pipefail

DURATION=${DURATION:-10}
CONC=${CONC:-32}
FIGURES=${FIGURES:-conns bulk latency}
ROUNDS=${ROUNDS:-2}
GATEWAYS=${GATEWAYS:-"isthmus=thin;isthmus-splice=thin --zero-copy on"}
PIN_LOAD=() PIN_PROXY=() PROXY_THREADS=2
if [[ -n ${PIN:-} ]]; then
    PIN_LOAD=(taskset -c 0) PIN_PROXY=(taskset -c 1) PROXY_THREADS=1
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${ISTHMUS_BIN:-$TARGET/release/isthmus}
PROFILE_DIR=release
[[ -n ${LTO:-} ]] && PROFILE_DIR=dist
GATEWAY_BIN=${GATEWAY_BIN:-$TARGET/$PROFILE_DIR/isthmus-gateway}
LOAD=${TLS_LOAD_BIN:-$TARGET/bench-load/release/isthmus-tls-load}
WORK=$(mktemp -d /tmp/bench-gateway.XXXXXX)
SNI=outbound_.19443_._.bench.sample.svc.cluster.local
BACKEND=19443 BACKEND_HOSTS=(127.0.0.1 127.0.0.2) BACKEND_PIDS=() CP=25010 CP_DEBUG=25014 ISTHMUS=25443 ADMIN=25000 HAPROXY=26443 NGINX=27443
PIDS=()

cleanup() {
    for pid in ${PROXY_PID:-} "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need haproxy || ! need nginx || ! need openssl || ! need curl || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream openssl curl >/dev/null
fi
if [[ -n ${SYSCALLS:-} ]] && ! need strace; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
fi
if [[ ${BUILD:-1} != 0 ]]; then
    echo "== build (release)" >&2
    (cd "$ROOT" && cargo build --release -q -p isthmus-cli -p isthmus-gateway --bins)
    if [[ -n ${LTO:-} ]]; then
        echo "== build isthmus-gateway with the dist profile (fat LTO, one codegen unit)" >&2
        (cd "$ROOT" && cargo build --profile dist -q -p isthmus-gateway --bin isthmus-gateway)
    fi
fi
[ -x "$BIN" ] || { echo "no isthmus binary at $BIN (cargo build --release -p isthmus-cli)" >&2; exit 1; }
[ -x "$GATEWAY_BIN" ] || { echo "no isthmus-gateway binary at $GATEWAY_BIN" >&2; exit 1; }
if [[ ${BUILD:-1} != 0 || ! -x $LOAD ]]; then
    (cd "$ROOT/gateway/bench-load" && CARGO_TARGET_DIR=$TARGET/bench-load cargo build --release -q)
fi
echo "isthmus: $BIN ($(du -h "$BIN" | cut -f1)); isthmus-gateway: $GATEWAY_BIN ($(du -h "$GATEWAY_BIN" | cut -f1))"
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); nproc: $(nproc); kernel: $(uname -r)"
echo "DURATION=$DURATION CONC=$CONC ROUNDS=$ROUNDS GATEWAYS=\"$GATEWAYS\"${LTO:+ LTO=1}"

wait_port() {  # port [host]
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/"${2:-127.0.0.1}"/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2; exit 1
}

# --- backend: two nginx https, one worker each, ECDSA P-256, TLS 1.3 ---------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/www" "$WORK/nginx-proxy"
chmod 755 "$WORK"  # nginx workers run as www-data
head -c 64 /dev/zero | tr '\0' x > "$WORK/www/small"
head -c $((32 << 20)) /dev/urandom > "$WORK/www/bulk"
for host in "${BACKEND_HOSTS[@]}"; do
    mkdir -p "$WORK/backend-$host"
    cat > "$WORK/backend-$host/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend-$host/nginx.pid;
error_log $WORK/backend-$host/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen $host:$BACKEND ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        root $WORK/www;
    }
}
EOF
    "${PIN_LOAD[@]}" nginx -p "$WORK/backend-$host" -c "$WORK/backend-$host/nginx.conf" -g 'daemon off;' &
    PIDS+=($!) BACKEND_PIDS+=($!)
done
# The backend direct: the load's clients split across both, as round robin splits them.
DIRECT=$(IFS=,; echo "${BACKEND_HOSTS[*]/%/:$BACKEND}")

# --- isthmus: control plane (directory config) + gateway ---------------------
mkdir -p "$WORK/config"
cat > "$WORK/config/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench, namespace: sample}
spec:
  hosts: [bench.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: $BACKEND, name: tls, protocol: TLS}]
  workloadSelector: {labels: {app: bench}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bench-a, namespace: sample}
spec: {address: ${BACKEND_HOSTS[0]}, labels: {app: bench}, serviceAccount: bench}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bench-b, namespace: sample}
spec: {address: ${BACKEND_HOSTS[1]}, labels: {app: bench}, serviceAccount: bench}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench, namespace: sample}
spec:
  host: bench.sample.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: bench, namespace: sample}
EOF
echo "tok: {namespace: sample, serviceAccount: bench}" > "$WORK/tokens.yaml"
ISTHMUS_LOG=warn "$BIN" control-plane --cluster bench --config-dir "$WORK/config" \
    --bootstrap-tokens "$WORK/tokens.yaml" \
    --listen 127.0.0.1:$CP --debug-listen 127.0.0.1:$CP_DEBUG 2>"$WORK/cp.log" &
PIDS+=($!)
wait_port $CP

# --- HAProxy: req.ssl_sni ----------------------------------------------------
cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread $PROXY_THREADS
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend eastwest
    bind 127.0.0.1:$HAPROXY
    tcp-request inspect-delay 10s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend bench if { req.ssl_sni -i $SNI }
backend bench
    balance roundrobin
    server a ${BACKEND_HOSTS[0]}:$BACKEND
    server b ${BACKEND_HOSTS[1]}:$BACKEND
EOF

# --- nginx stream + ssl_preread ---------------------------------------------
cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $PROXY_THREADS;
pid $WORK/nginx-proxy/nginx.pid;
error_log $WORK/nginx-proxy/error.log;
events { worker_connections 16384; }
stream {
    map_hash_bucket_size 128;
    # Round robin shared by the workers (zone), as HAProxy's threads share theirs.
    upstream bench {
        zone bench 64k;
        server ${BACKEND_HOSTS[0]}:$BACKEND;
        server ${BACKEND_HOSTS[1]}:$BACKEND;
    }
    map \$ssl_preread_server_name \$upstream {
        $SNI bench;
    }
    server {
        listen 127.0.0.1:$NGINX;
        ssl_preread on;
        preread_timeout 10s;
        proxy_pass \$upstream;
    }
}
EOF

for host in "${BACKEND_HOSTS[@]}"; do wait_port $BACKEND "$host"; done

# --- the proxies, one at a time ------------------------------------------------
declare -A GW_KIND GW_FLAGS
GW_NAMES=()
IFS=';' read -r -a gw_specs <<<"$GATEWAYS"
for spec in "${gw_specs[@]}"; do
    name=${spec%%=*}; rest=${spec#*=}
    GW_NAMES+=("$name"); GW_KIND[$name]=${rest%% *}
    GW_FLAGS[$name]=
    if [[ $rest == *" "* ]]; then GW_FLAGS[$name]=${rest#* }; fi
done

PROXY_PID=''
PROXY_PORT='' PROXY_ADDR=''
start_proxy() {  # name: sets PROXY_PID, PROXY_PORT and PROXY_ADDR (where the load goes)
    local name=$1
    case $name in
        direct) PROXY_PID=; PROXY_PORT=$BACKEND; PROXY_ADDR=$DIRECT; return ;;
        haproxy)
            "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy.cfg" 2>>"$WORK/haproxy.log" &
            PROXY_PID=$!; PROXY_PORT=$HAPROXY ;;
        nginx)
            "${PIN_PROXY[@]}" nginx -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf" -g 'daemon off;' &
            PROXY_PID=$!; PROXY_PORT=$NGINX ;;
        *)
            local cmd
            case ${GW_KIND[$name]} in
                multi) cmd=("$BIN" gateway) ;;
                thin) cmd=("$GATEWAY_BIN") ;;
                *) cmd=("${GW_KIND[$name]}") ;;
            esac
            # As many worker threads as HAProxy's nbthread, unless the variant says otherwise.
            local threads=(--threads "$PROXY_THREADS")
            [[ ${GW_FLAGS[$name]} == *--threads* ]] && threads=()
            # shellcheck disable=SC2086 # the flags are words
            ISTHMUS_LOG=warn "${PIN_PROXY[@]}" "${cmd[@]}" --cluster bench --control-plane 127.0.0.1:$CP \
                --listen 127.0.0.1:$ISTHMUS --admin 127.0.0.1:$ADMIN "${threads[@]}" \
                ${GW_FLAGS[$name]} 2>>"$WORK/gateway-$name.log" &
            PROXY_PID=$!; PROXY_PORT=$ISTHMUS ;;
    esac
    PROXY_ADDR=127.0.0.1:$PROXY_PORT
    wait_port "$PROXY_PORT"
    if [[ -n ${GW_KIND[$name]:-} ]]; then
        # The gateway routes once the control plane's config arrived.
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:$ADMIN/routes" 2>/dev/null | grep -q "$SNI" && break
            sleep 0.1
        done
    fi
}

stop_proxy() {
    [[ -n $PROXY_PID ]] || return 0
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
    for _ in $(seq 50); do  # until the port is free for the next one
        (exec 3<>/dev/tcp/127.0.0.1/"$PROXY_PORT") 2>/dev/null || break
        sleep 0.1
    done
}

# --- load --------------------------------------------------------------------
# Debian's h2load and wrk take the SNI from the URI host and reject `_` in it,
# so the load comes from our own small rustls client (gateway/bench-load).
get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

tree_pids() {  # a process and its children (nginx's workers)
    echo "$1" $(pgrep -P "$1" || true)
}

memory_kb() {  # peak RSS, RssAnon, RssFile of a process and its children (nginx workers), KiB
    local peak=0 anon=0 file=0 pid
    for pid in $(tree_pids "$1"); do
        read -r p a f < <(awk '/^VmHWM/ {p=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print p+0, a+0, f+0}' \
            "/proc/$pid/status" 2>/dev/null || echo "0 0 0")
        peak=$((peak + p)); anon=$((anon + a)); file=$((file + f))
    done
    echo "$peak $anon $file"
}

ctx_switches() {  # voluntary + involuntary context switches of a process's threads and its children's
    local total=0 pid
    [[ -n $1 ]] || { echo 0; return; }
    for pid in $(tree_pids "$1"); do
        total=$((total + $(cat /proc/"$pid"/task/*/status 2>/dev/null |
            awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }')))
    done
    echo "$total"
}

syscalls_per_request() {  # pid mode concurrency -> "<per request>: <top calls>" over a 5 s run under strace
    local pid tracers=() out
    for pid in $(tree_pids "$1"); do
        strace -c -f -q -p "$pid" -o "$WORK/strace-$pid.txt" &
        tracers+=($!)
    done
    sleep 1
    out=$("${PIN_LOAD[@]}" "$LOAD" "$PROXY_ADDR" "$SNI" "$2" 5 "$3")
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2>/dev/null || true
    cat "$WORK"/strace-*.txt | awk -v n="$(awk -v r="$(get rate "$out")" 'BEGIN { printf "%d", r * 5 }')" '
        $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { c[$NF] += $4 }
        END { t = 0; for (k in c) t += c[k]; printf "%.2f per request:", t / n
              for (k in c) if (c[k] / n >= 0.05) printf " %s %.2f", k, c[k] / n }'
    rm -f "$WORK"/strace-*.txt
}

cpu_ticks() {  # user + system clock ticks of a process and its children (nginx workers)
    local total=0 pid
    [[ -n $1 ]] || { echo 0; return; }
    for pid in $(tree_pids "$1"); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

backend_ticks() {  # CPU clock ticks of both backend nginx and their workers
    local total=0 pid
    for pid in "${BACKEND_PIDS[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}

per_unit_us() {  # cpu ticks before, rate per second -> proxy CPU µs per unit over the last $DURATION s
    awk -v d="$(( $(cpu_ticks "$PROXY_PID") - $1 ))" -v hz="$(getconf CLK_TCK)" -v r="$2" -v s="$DURATION" \
        'BEGIN { printf "%.1f", (r > 0 ? d / hz * 1e6 / (r * s) : 0) }'
}

bench_target() {  # round name -> one line into $WORK/results
    local round=$1 name=$2 conns bulk lat mem cpu0 cpu t0 t1
    start_proxy "$name"
    "${PIN_LOAD[@]}" "$LOAD" "$PROXY_ADDR" "$SNI" latency 1 4 >/dev/null  # warm up
    conns="rate=0" bulk="mbps=0" lat="p50_us=0 p99_us=0" cpu=0 cpu_conn=0 cpu_req=0
    if [[ " $FIGURES " == *" conns "* ]]; then
        cpu0=$(cpu_ticks "$PROXY_PID")
        conns=$("${PIN_LOAD[@]}" "$LOAD" "$PROXY_ADDR" "$SNI" conns "$DURATION" "$CONC")
        cpu_conn=$(per_unit_us "$cpu0" "$(get rate "$conns")")
        if [[ -n ${SYSCALLS:-} && -n $PROXY_PID ]]; then
            echo "  $name system calls per new connection: $(syscalls_per_request "$PROXY_PID" conns "$CONC")" >&2
        fi
    fi
    if [[ " $FIGURES " == *" bulk "* ]]; then
        local stat0 backend0 load_cpu
        stat0=$(head -1 /proc/stat) backend0=$(backend_ticks)
        cpu0=$(cpu_ticks "$PROXY_PID") t0=$(date +%s.%N)
        load_cpu=$( { TIMEFORMAT='%U %S'; time "${PIN_LOAD[@]}" "$LOAD" "$PROXY_ADDR" "$SNI" bulk "$DURATION" 4 >"$WORK/bulk.out"; } 2>&1 )
        bulk=$(cat "$WORK/bulk.out")
        t1=$(date +%s.%N)
        # Where the machine's CPU went per GB (the load's TLS client, the
        # backend's TLS server, the proxy) and its idle share: the two
        # cores are shared, so what one takes the others lack.
        echo "  $name: bulk $(get mbps "$bulk") MB/s; CPU ms per GB: load $(awk -v c="$load_cpu" -v m="$(get mbps "$bulk")" -v t0="$t0" -v t1="$t1" \
            'BEGIN { split(c, a, " "); gb = m * (t1 - t0) / 1000; printf "%.0f", (gb > 0 ? (a[1] + a[2]) * 1000 / gb : 0) }'), backend $(awk \
            -v d="$(( $(backend_ticks) - backend0 ))" -v hz="$(getconf CLK_TCK)" -v m="$(get mbps "$bulk")" -v t0="$t0" -v t1="$t1" \
            'BEGIN { gb = m * (t1 - t0) / 1000; printf "%.0f", (gb > 0 ? d / hz * 1000 / gb : 0) }'); machine idle $(printf '%s\n%s\n' "$stat0" "$(head -1 /proc/stat)" | awk '
            { t = 0; for (i = 2; i <= NF; i++) t += $i; tot[NR] = t; idle[NR] = $5 + $6 }
            END { printf "%.1f %%", 100 * (idle[2] - idle[1]) / (tot[2] - tot[1]) }')" >&2
        # CPU the proxy spent per GB of bulk (ms): what it takes from the
        # others on a shared machine, steadier than MB/s there.
        cpu=$(( ($(cpu_ticks "$PROXY_PID") - cpu0) * 1000 / $(getconf CLK_TCK) ))
        cpu=$(awk -v ms="$cpu" -v mbps="$(get mbps "$bulk")" -v t0="$t0" -v t1="$t1" \
            'BEGIN { gb = mbps * (t1 - t0) / 1000; printf "%.0f", (gb > 0 ? ms / gb : 0) }')
    fi
    if [[ " $FIGURES " == *" latency "* ]]; then
        local cs0 cs
        cs0=$(ctx_switches "$PROXY_PID") cpu0=$(cpu_ticks "$PROXY_PID")
        lat=$("${PIN_LOAD[@]}" "$LOAD" "$PROXY_ADDR" "$SNI" latency "$DURATION" 8)
        cpu_req=$(per_unit_us "$cpu0" "$(get rate "$lat")")
        cs=$(awk -v d="$(( $(ctx_switches "$PROXY_PID") - cs0 ))" -v r="$(get rate "$lat")" -v s="$DURATION" \
            'BEGIN { printf "%.2f", (r > 0 ? d / (r * s) : 0) }')
        echo "  $name: small-request rate $(get rate "$lat")/s, proxy context switches per request $cs" >&2
        if [[ -n ${SYSCALLS:-} && -n $PROXY_PID ]]; then
            echo "  $name system calls per small request: $(syscalls_per_request "$PROXY_PID" latency 8)" >&2
        fi
    fi
    mem="0 0 0"
    [[ -n $PROXY_PID ]] && mem=$(memory_kb "$PROXY_PID")
    if [[ -n ${GW_KIND[$name]:-} ]]; then
        echo "  $name smaps_rollup: $(grep -E '^(Rss|Anonymous|Pss_File|Pss_Anon):' "/proc/$PROXY_PID/smaps_rollup" | tr -s ' ' | tr '\n' ' ')" >&2
    fi
    stop_proxy
    echo "  $name: conns[$conns] bulk[$bulk] latency[$lat] memory[$mem]" >&2
    echo "$round $name $(get rate "$conns") $(get mbps "$bulk") $(get p50_us "$lat") $(get p99_us "$lat") $mem $(get errors "$conns")/$(get errors "$bulk")/$(get errors "$lat") $cpu $cpu_conn $cpu_req" >>"$WORK/results"
}

TARGETS=(direct haproxy nginx "${GW_NAMES[@]}")
: >"$WORK/results"
for round in $(seq "$ROUNDS"); do
    order=("${TARGETS[@]}")
    if ((round % 2 == 0)); then  # every other round backwards
        order=()
        for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do order+=("${TARGETS[$i]}"); done
    fi
    echo "== round $round: ${order[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    for name in "${order[@]}"; do bench_target "$round" "$name"; done
    echo "   load average after round $round: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

# --- tables ------------------------------------------------------------------
for round in $(seq "$ROUNDS"); do
    echo
    echo "Round $round:"
    echo
    awk -v round="$round" '
        function ratio(a, b) { return b > 0 ? sprintf("%.2f×", a / b) : "–" }
        $1 != round { next }
        { conns[$2] = $3; bulk[$2] = $4; p50[$2] = $5; p99[$2] = $6; peak[$2] = $7; anon[$2] = $8; file[$2] = $9; err[$2] = $10; cpu[$2] = $11; cc[$2] = $12; cr[$2] = $13; names[++n] = $2 }
        END {
            print "| target | new TLS conn/s | proxy CPU µs per conn | bulk MB/s | proxy CPU ms per GB bulk | p50 µs (added) | p99 µs (added) | proxy CPU µs per small request | peak RSS MiB (anon + file at end) | errors c/b/l |"
            print "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
            printf "| backend direct | %s | – | %s | – | %s | %s | – | – | %s |\n", conns["direct"], bulk["direct"], p50["direct"], p99["direct"], err["direct"]
            for (i = 1; i <= n; i++) {
                t = names[i]; if (t == "direct") continue
                printf "| %s | %s | %s | %s | %s | %s (%+d) | %s (%+d) | %s | %.1f (%.1f + %.1f) | %s |\n", t, conns[t], cc[t], bulk[t], cpu[t], \
                    p50[t], p50[t] - p50["direct"], p99[t], p99[t] - p99["direct"], cr[t], peak[t] / 1024, anon[t] / 1024, file[t] / 1024, err[t]
            }
            print ""
            print "| vs HAProxy | conn/s | bulk | CPU per GB (lower is better) | added p50 (lower is better) | peak RSS (lower is better) |"
            print "| --- | ---: | ---: | ---: | ---: | ---: |"
            hp = p50["haproxy"] - p50["direct"]
            for (i = 1; i <= n; i++) {
                t = names[i]; if (t == "direct" || t == "haproxy") continue
                a = p50[t] - p50["direct"]
                printf "| %s | %s | %s | %s | %s | %s |\n", t, ratio(conns[t], conns["haproxy"]), ratio(bulk[t], bulk["haproxy"]), \
                    ratio(cpu[t], cpu["haproxy"]), (hp > 0 ? ratio(a, hp) : "–"), ratio(peak[t], peak["haproxy"])
            }
        }' "$WORK/results"
done

# --- across rounds -------------------------------------------------------------
if ((ROUNDS > 1)); then
    echo
    echo "Medians over $ROUNDS rounds (figure, and the per-round ratio to HAProxy; raw p99, not added):"
    echo
    echo "| target | new TLS conn/s | bulk MB/s | p99 µs | conn/s vs HAProxy | bulk vs HAProxy | p99 vs HAProxy (lower is better) | CPU per conn vs HAProxy | CPU per small request vs HAProxy |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${TARGETS[@]}"; do
        [[ $name == direct ]] && continue
        awk -v t="$name" '
            function times(x) { return x > 0 ? sprintf("%.2f×", x) : "–" }  # – : figure not run
            function median(v, n,   i, j, x) {
                for (i = 2; i <= n; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
                return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            }
            $2 == "haproxy" { hc[$1] = $3; hb[$1] = $4; hp[$1] = $6; hcc[$1] = $12; hcr[$1] = $13 }
            $2 == t { c[$1] = $3; b[$1] = $4; p[$1] = $6; xc[$1] = $12; xr[$1] = $13; rounds[++n] = $1 }
            END {
                for (i = 1; i <= n; i++) {
                    r = rounds[i]; vc[i] = c[r]; vb[i] = b[r]; vp[i] = p[r]
                    rc[i] = hc[r] > 0 ? c[r] / hc[r] : 0; rb[i] = hb[r] > 0 ? b[r] / hb[r] : 0; rp[i] = hp[r] > 0 ? p[r] / hp[r] : 0
                    rcc[i] = hcc[r] > 0 ? xc[r] / hcc[r] : 0; rcr[i] = hcr[r] > 0 ? xr[r] / hcr[r] : 0
                }
                printf "| %s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s |\n", t, median(vc, n), median(vb, n), median(vp, n), \
                    times(median(rc, n)), times(median(rb, n)), times(median(rp, n)), times(median(rcc, n)), times(median(rcr, n))
            }' "$WORK/results"
    done
fi
