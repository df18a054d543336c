#!/usr/bin/env bash
# East-west gateway benchmark: the Isthmus gateway vs HAProxy (`req.ssl_sni`)
# vs nginx (`stream` + `ssl_preread`), all SNI passthrough to the same TLS
# backend (nginx https), under the same load, one after the other.
#
#   scripts/bench-gateway.sh            # release build of isthmus expected in target/release
#   ISTHMUS_BIN=/path/to/isthmus DURATION=10 scripts/bench-gateway.sh
#
# Figures per proxy (and for the backend direct, as the baseline), with the
# load from gateway/bench-load (rustls, full handshakes, no resumption):
#   new TLS connections/s  CONC clients, one request per connection (`Connection: close`)
#   bulk MB/s              4 keep-alive connections downloading 32 MiB objects
#   p50/p99 latency        8 keep-alive connections, 64-byte responses
#   RSS                    peak VmHWM of the proxy's processes after the runs
# Every proxy gets 2 worker threads/processes. Output: a Markdown table on stdout.
set -euo pipefail

DURATION=${DURATION:-10}
CONC=${CONC:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${ISTHMUS_BIN:-$ROOT/target/release/isthmus}
LOAD=${TLS_LOAD_BIN:-$ROOT/gateway/bench-load/target/release/isthmus-tls-load}
WORK=$(mktemp -d /tmp/bench-gateway.XXXXXX)
SNI=outbound_.19443_._.bench.sample.svc.cluster.local
BACKEND=19443 CP=25010 CP_DEBUG=25014 ISTHMUS=25443 ADMIN=25000 HAPROXY=26443 NGINX=27443
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need haproxy || ! need nginx || ! need openssl || ! need curl || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream openssl curl >/dev/null
fi
[ -x "$BIN" ] || { echo "no isthmus binary at $BIN (cargo build --release -p isthmus-cli)" >&2; exit 1; }
[ -x "$LOAD" ] || (cd "$ROOT/gateway/bench-load" && cargo build --release -q)

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2; exit 1
}

# --- backend: nginx https, ECDSA P-256, TLS 1.3 -----------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/www" "$WORK/backend" "$WORK/nginx-proxy"
chmod 755 "$WORK"  # nginx workers run as www-data
head -c 64 /dev/zero | tr '\0' x > "$WORK/www/small"
head -c $((32 << 20)) /dev/urandom > "$WORK/www/bulk"
cat > "$WORK/backend/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$BACKEND ssl;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        root $WORK/www;
    }
}
EOF
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

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
metadata: {name: bench, namespace: sample}
spec: {address: 127.0.0.1, labels: {app: bench}, serviceAccount: bench}
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
ISTHMUS_LOG=warn "$BIN" gateway --cluster bench --control-plane 127.0.0.1:$CP \
    --listen 127.0.0.1:$ISTHMUS --admin 127.0.0.1:$ADMIN --threads 2 2>"$WORK/gateway.log" &
GATEWAY_PID=$!
PIDS+=($GATEWAY_PID)

# --- HAProxy: req.ssl_sni ----------------------------------------------------
cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread 2
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
    server s1 127.0.0.1:$BACKEND
EOF
haproxy -db -f "$WORK/haproxy.cfg" 2>"$WORK/haproxy.log" &
HAPROXY_PID=$!
PIDS+=($HAPROXY_PID)

# --- nginx stream + ssl_preread ---------------------------------------------
cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
pid $WORK/nginx-proxy/nginx.pid;
error_log $WORK/nginx-proxy/error.log;
events { worker_connections 16384; }
stream {
    map_hash_bucket_size 128;
    map \$ssl_preread_server_name \$upstream {
        $SNI 127.0.0.1:$BACKEND;
    }
    server {
        listen 127.0.0.1:$NGINX;
        ssl_preread on;
        preread_timeout 10s;
        proxy_pass \$upstream;
    }
}
EOF
nginx -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=($NGINX_PID)

for p in $BACKEND $ISTHMUS $HAPROXY $NGINX; do wait_port "$p"; done
# The gateway routes once the control plane's config arrived.
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/routes" 2>/dev/null | grep -q "$SNI" && break
    sleep 0.1
done

# --- load --------------------------------------------------------------------
# Debian's h2load and wrk take the SNI from the URI host and reject `_` in it,
# so the load comes from our own small rustls client (gateway/bench-load).
bench_target() {  # name port
    local name=$1 port=$2 out conns bulk lat
    "$LOAD" 127.0.0.1:$port "$SNI" latency 1 4 >/dev/null  # warm up
    conns=$("$LOAD" 127.0.0.1:$port "$SNI" conns "$DURATION" "$CONC")
    bulk=$("$LOAD" 127.0.0.1:$port "$SNI" bulk "$DURATION" 4)
    lat=$("$LOAD" 127.0.0.1:$port "$SNI" latency "$DURATION" 8)
    echo "$WORK/$name: conns[$conns] bulk[$bulk] latency[$lat]" >&2
    get() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
    echo "$name $(get rate "$conns") $(get mbps "$bulk") $(get p50_us "$lat") $(get p99_us "$lat") $(get errors "$conns")/$(get errors "$bulk")/$(get errors "$lat")"
}

rss_kb() {  # peak RSS of a process and its children (nginx workers), KiB
    local total=0
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

declare -A RESULT
for target in direct:$BACKEND isthmus:$ISTHMUS haproxy:$HAPROXY nginx:$NGINX; do
    name=${target%%:*}; port=${target#*:}
    RESULT[$name]=$(bench_target "$name" "$port")
done
RSS_ISTHMUS=$(rss_kb $GATEWAY_PID)
RSS_HAPROXY=$(rss_kb $HAPROXY_PID)
RSS_NGINX=$(rss_kb $NGINX_PID)

read -r _ d_conns d_bulk d_p50 d_p99 d_err <<<"${RESULT[direct]}"
echo
echo "| target | new TLS conn/s | bulk MB/s | p50 µs (added) | p99 µs (added) | peak RSS MiB | errors c/b/l |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
echo "| backend direct | $d_conns | $d_bulk | $d_p50 | $d_p99 | – | $d_err |"
for name in isthmus haproxy nginx; do
    read -r _ conns bulk p50 p99 err <<<"${RESULT[$name]}"
    case $name in isthmus) rss=$RSS_ISTHMUS ;; haproxy) rss=$RSS_HAPROXY ;; nginx) rss=$RSS_NGINX ;; esac
    printf "| %s | %s | %s | %s (+%s) | %s (+%s) | %.1f | %s |\n" "$name" "$conns" "$bulk" \
        "$p50" "$((p50 - d_p50))" "$p99" "$((p99 - d_p99))" "$(echo "$rss / 1024" | bc -l)" "$err"
done
echo
echo "gateway rejections: $(curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -c '^isthmus_gateway_connections_rejected_total' || true) series"
