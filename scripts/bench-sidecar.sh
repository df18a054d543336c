#!/usr/bin/env bash
# Sidecar benchmark (issue 4): three paths to the same app (nginx serving a
# 1 KiB body), in one run, on loopback:
#
#   direct   client → app
#   mesh     client → sidecar → mTLS (HTTP/1.1, as the app speaks) → sidecar → app
#   nginx    client → nginx → TLS (mutual, keep-alive) → nginx → app
#
# each at a fixed 1,000 requests/s over 16 connections (sidecar/examples/
# loadgen.rs: open loop, no coordinated omission) and at maximum throughput
# (wrk, 16 connections, 2 threads; ROUNDS rounds alternating the paths, the
# median round reported, so bursts of other load on a shared machine hit
# every path alike). The control plane carries
# 100 services besides the benchmark's, so the sidecars' memory is measured
# with 100 services of config. Reports p50/p90/p99, the latency each proxy
# path adds over direct, requests/s, proxy CPU per 1,000 requests/s and RSS.
#
# Usage: scripts/bench-sidecar.sh [results.md]
#   SECONDS_FIXED=20 SECONDS_MAX=8 ROUNDS=3 RATE=1000 CONNECTIONS=16 SERVICES=100
#   CONCURRENCY=2 (sidecar worker threads)  BUILD=0 (use the binaries already built)
#   LTO=1 (isthmus-sidecar from the `dist` profile, as the image ships it:
#          fat LTO, one codegen unit; a smaller binary maps less memory; ~10 min)
#   MESH_HOP=http2 (DestinationRule h2UpgradePolicy: UPGRADE: HTTP/2 on the
#                   mTLS hop instead of the default, the app's HTTP/1.1)
#   PROFILE=1 (perf record both sidecars during the mesh max-throughput run,
#              into perf-client.data / perf-server.data next to the results)
#   KEEP_LOGS=dir (copy the processes' logs there at the end)
#   SIDECAR_BIN=path, LOADGEN_BIN=path (other builds, e.g. a baseline's, with BUILD=0)
#   BASELINE_BIN=path (A/B in one run: a second sidecar pair of that build, the
#                      path "mesh-base", measured in the same alternating rounds;
#                      its service adds one to the config)
# Installs nginx, wrk and nghttp2-client with apt when missing. Runs about
# 3 minutes after the release build. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

fixed_secs=${SECONDS_FIXED:-20}
max_secs=${SECONDS_MAX:-8}
max_rounds=${ROUNDS:-3}
rate=${RATE:-1000}
conns=${CONNECTIONS:-16}
services=${SERVICES:-100}
concurrency=${CONCURRENCY:-2}
target=${CARGO_TARGET_DIR:-target}
out=${1:-$target/bench/sidecar.md}
mkdir -p "$(dirname "$out")"

need() {
  command -v "$1" >/dev/null && return
  echo "== installing $2"
  apt-get install -y -qq "$2" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "$2" >/dev/null; }
}
need nginx nginx
need wrk wrk
need h2load nghttp2-client
need openssl openssl

echo "== machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*:\s*/cpu: /'
grep -m1 MemTotal /proc/meminfo | sed 's/^MemTotal:\s*/memory: /'
echo "kernel: $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "nginx: $(nginx -v 2>&1 | sed 's/.*\///'); wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
dirty=$(git status --porcelain -- sidecar proxy-core identity 2>/dev/null | head -1 || true)
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ (with uncommitted changes)}"

if [[ ${BUILD:-1} != 0 ]]; then
  echo "== build (release)"
  cargo build --release -q -p isthmus-cli
  cargo build --release -q -p isthmus-sidecar --bin isthmus-sidecar --example loadgen
  if [[ -n ${LTO:-} ]]; then
    echo "== build isthmus-sidecar with the dist profile (fat LTO, one codegen unit)"
    cargo build --profile dist -q -p isthmus-sidecar --bin isthmus-sidecar
  fi
fi
isthmus=$target/release/isthmus
sidecar_bin=$target/release/isthmus-sidecar
[[ -n ${LTO:-} ]] && sidecar_bin=$target/dist/isthmus-sidecar
# Another build of the sidecar (e.g. a baseline commit's) with BUILD=0.
sidecar_bin=${SIDECAR_BIN:-$sidecar_bin}
loadgen=${LOADGEN_BIN:-$target/release/examples/loadgen}
echo "sidecar binary: $sidecar_bin ($(du -h "$sidecar_bin" | cut -f1))"

work=$(mktemp -d /tmp/bench-sidecar.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for conf in "$work"/nginx-*.conf; do
    [[ -f $conf ]] && nginx -c "$conf" -s stop 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [[ -n ${KEEP_LOGS:-} ]]; then
    mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

net=127.0.77
app=$net.111:8080        # the app (nginx, 1 KiB)
front=$net.50:8081       # nginx proxy the client talks to
back=$net.51:8443        # nginx proxy in front of the app (TLS)
cp_addr=$net.1:15010
host=bench.sample.svc.cluster.local

# --- the app and the nginx pair -------------------------------------------
mkdir -p "$work/www" "$work/tls"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/index.html"
(
  cd "$work/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
  for who in front back; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
      -keyout $who.key -out $who.csr 2>/dev/null
    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
      -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth' $who) \
      -out $who.pem 2>/dev/null
  done
)
nginx_conf() { # name, server block
  cat >"$work/nginx-$1.conf" <<EOF
user root;
worker_processes 2;
pid $work/nginx-$1.pid;
error_log $work/nginx-$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/tmp-$1;
  proxy_temp_path $work/tmp-$1;
  fastcgi_temp_path $work/tmp-$1;
  uwsgi_temp_path $work/tmp-$1;
  scgi_temp_path $work/tmp-$1;
  $2
}
EOF
  nginx -c "$work/nginx-$1.conf"
}
nginx_conf app "server { listen $app; root $work/www; location / { try_files /index.html =404; } }"
nginx_conf back "
  upstream app { server $app; keepalive 64; }
  server {
    listen $back ssl;
    ssl_certificate $work/tls/back.pem; ssl_certificate_key $work/tls/back.key;
    ssl_client_certificate $work/tls/ca.pem; ssl_verify_client on;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
nginx_conf front "
  upstream back { server $back; keepalive 64; }
  server {
    listen $front;
    location / {
      proxy_pass https://back; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_certificate $work/tls/front.pem; proxy_ssl_certificate_key $work/tls/front.key;
      proxy_ssl_trusted_certificate $work/tls/ca.pem; proxy_ssl_verify on; proxy_ssl_name back;
      proxy_ssl_session_reuse on;
    }
  }"

# --- control plane and sidecars ---------------------------------------------
mkdir -p "$work/config"
printf 'tok-client: {namespace: sample, serviceAccount: client}\ntok-bench: {namespace: sample, serviceAccount: bench}\n' >"$work/tokens.yaml"
echo tok-client >"$work/client.token"
echo tok-bench >"$work/bench.token"
cat >"$work/config/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench, namespace: sample}
spec:
  hosts: [$host]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: bench}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bench, namespace: sample}
spec: {address: $net.11, labels: {app: bench}, serviceAccount: bench}
EOF
if [[ -n ${BASELINE_BIN:-} ]]; then
  cat >>"$work/config/bench.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-base, namespace: sample}
spec:
  hosts: [base.$host]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http}]
  workloadSelector: {labels: {app: bench-base}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: bench-base, namespace: sample}
spec: {address: $net.12, labels: {app: bench-base}, serviceAccount: bench}
EOF
fi
if [[ ${MESH_HOP:-} == http2 ]]; then
  cat >>"$work/config/bench.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench, namespace: sample}
spec:
  host: $host
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
EOF
fi
for i in $(seq 1 "$services"); do
  cat <<EOF
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc-$i, namespace: sample}
spec:
  hosts: [svc-$i.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http}, {number: 9090, name: grpc}]
  endpoints:
  - {address: 10.1.$((i / 200)).$((i % 200 + 1)), labels: {app: svc-$i}, serviceAccount: svc-$i}
  - {address: 10.2.$((i / 200)).$((i % 200 + 1)), labels: {app: svc-$i}, serviceAccount: svc-$i}
EOF
done >"$work/config/services.yaml"

ISTHMUS_LOG=warn "$isthmus" control-plane --cluster bench --config-dir "$work/config" \
  --bootstrap-tokens "$work/tokens.yaml" --trust-domain bench.local \
  --listen "$cp_addr" --debug-listen "$net.1:15014" >"$work/cp.log" 2>&1 &
pids+=($!)
sidecar() { # name, ip, extra args
  ISTHMUS_LOG=warn "${bin:-$sidecar_bin}" --concurrency "$concurrency" --control-plane "$cp_addr" --workload "sample/$1" \
    --cluster bench --ip "$2" --token-file "$work/${1%-base}.token" --service-account "${1%-base}" \
    --admin "$2:15000" --outbound "$2:15001" "${@:3}" >"$work/$1.log" 2>&1 &
  pids+=($!)
}
sidecar client $net.21 --label app=client
client_pid=${pids[-1]}
sidecar bench $net.11 --label app=bench --app-ip $net.111
server_pid=${pids[-1]}
paths="direct mesh nginx"
if [[ -n ${BASELINE_BIN:-} ]]; then
  bin=$BASELINE_BIN sidecar client-base $net.22 --label app=client
  client_base_pid=${pids[-1]}
  bin=$BASELINE_BIN sidecar bench-base $net.12 --label app=bench-base --app-ip $net.111
  server_base_pid=${pids[-1]}
  paths="direct mesh mesh-base nginx"
fi

wait_ok() { # url, what
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null --max-time 1 "$1" -H "host: ${3:-x}" 2>/dev/null && return
    sleep 0.1
  done
  echo "$2 not ready; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}
wait_ok "http://$net.21:15000/ready" "client sidecar"
wait_ok "http://$net.11:15000/ready" "server sidecar"
wait_ok "http://$net.21:15001/" "mesh path" "$host:8080"
wait_ok "http://$front/" "nginx path"
if [[ -n ${BASELINE_BIN:-} ]]; then
  wait_ok "http://$net.22:15000/ready" "baseline client sidecar"
  wait_ok "http://$net.12:15000/ready" "baseline server sidecar"
  wait_ok "http://$net.22:15001/" "baseline mesh path" "base.$host:8080"
fi

# --- measurement -------------------------------------------------------------
ticks=$(getconf CLK_TCK)
cpu_of() { # pids... → clock ticks (user + system)
  local t=0
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
sys_of() { # pids... → clock ticks in the kernel alone
  local t=0
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
per_krps() { # clock ticks over the fixed run → vCPU per 1,000 rps
  awk -v d="$1" -v t="$ticks" -v s="$fixed_secs" -v r="$rate" \
    'BEGIN { printf "%.3f", d / t / (s + 1) / (r / 1000) }'
}
rss_of() { # pids... → KiB
  local k=0
  for p in "$@"; do
    [[ -r /proc/$p/status ]] && k=$((k + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$k"
}
nginx_pids() { # name → master and workers
  local m
  m=$(cat "$work/nginx-$1.pid")
  echo "$m $(pgrep -P "$m" | tr '\n' ' ')"
}

declare -A url hdr proc
url[direct]="http://$app/";   hdr[direct]="$app";       proc[direct]=""
url[mesh]="http://$net.21:15001/"; hdr[mesh]="$host:8080"; proc[mesh]="$client_pid $server_pid"
url[mesh-base]="http://$net.22:15001/"; hdr[mesh-base]="base.$host:8080"
proc[mesh-base]="${client_base_pid:-} ${server_base_pid:-}"
url[nginx]="http://$front/";  hdr[nginx]="$front";      proc[nginx]="$(nginx_pids front) $(nginx_pids back)"

declare -A fixed max cpu sys_cpu rss
for path in $paths; do
  echo "== $path: fixed $rate rps, $conns connections, ${fixed_secs}s"
  # shellcheck disable=SC2086
  before=$(cpu_of ${proc[$path]})
  # shellcheck disable=SC2086
  sys_before=$(sys_of ${proc[$path]})
  client_before=$(cpu_of "$client_pid")
  server_before=$(cpu_of "$server_pid")
  fixed[$path]=$("$loadgen" "${url[$path]}" --host "${hdr[$path]}" --rate "$rate" \
    --connections "$conns" --seconds "$fixed_secs")
  # shellcheck disable=SC2086
  after=$(cpu_of ${proc[$path]})
  # shellcheck disable=SC2086
  sys_after=$(sys_of ${proc[$path]})
  echo "${fixed[$path]}"
  # vCPU per 1,000 rps for the whole proxy path (both proxies).
  cpu[$path]=$(per_krps $((after - before)))
  sys_cpu[$path]=$(per_krps $((sys_after - sys_before)))
  if [[ $path == mesh-base ]]; then
    cpu_base=$(per_krps $((after - before)))
  fi
  if [[ $path == mesh ]]; then
    cpu_client=$(per_krps $(($(cpu_of "$client_pid") - client_before)))
    cpu_server=$(per_krps $(($(cpu_of "$server_pid") - server_before)))
  fi
  # shellcheck disable=SC2086
  rss[$path]=$(rss_of ${proc[$path]})
done

# Maximum throughput: rounds alternating the paths, so a burst of other load
# on a shared machine hits every path alike; each path's median round counts.
declare -A rounds
for round in $(seq 1 "$max_rounds"); do
  for path in $paths; do
    echo "== round $round, $path: max throughput (wrk, $conns connections, 2 threads, ${max_secs}s)"
    if [[ -n ${PROFILE:-} && $path == mesh && $round == 1 ]]; then
      # perf profiles of both sidecars during the first max-throughput run.
      for who in client server; do
        pid_var=${who}_pid
        perf record -F 999 -g -o "$(dirname "$out")/perf-$who.data" -p "${!pid_var}" \
          -- sleep "$max_secs" >/dev/null 2>&1 &
      done
    fi
    w=$(wrk -t2 -c"$conns" -d"${max_secs}s" --latency -H "Host: ${hdr[$path]}" "${url[$path]}")
    echo "$w" | grep -E 'Requests/sec|50%|99%|Socket errors|Non-2xx' || true
    rounds[$path]+="$(echo "$w" | awk '/Requests\/sec/ {printf "%.0f", $2}') "
    echo "$w" >"$work/wrk-$path-$round.txt"
  done
done
# System calls per request (SYSCALLS=1): one more, shorter wrk run per proxy
# path with `strace -c` attached to every proxy process. ptrace slows the
# path down, so only the counts per request mean anything, not the rate.
declare -A syscalls
if [[ -n ${SYSCALLS:-} ]]; then
  for path in $paths; do
    [[ $path == direct ]] && continue
    tracers=()
    for pid in ${proc[$path]}; do
      strace -c -f -q -p "$pid" -o "$work/strace-$path-$pid.txt" &
      tracers+=($!)
    done
    sleep 1
    w=$(wrk -t2 -c"$conns" -d5s -H "Host: ${hdr[$path]}" "${url[$path]}")
    kill -INT "${tracers[@]}"
    wait "${tracers[@]}" 2>/dev/null || true
    requests=$(echo "$w" | awk '/requests in/ {print $1}')
    syscalls[$path]=$(cat "$work"/strace-"$path"-*.txt | awk -v n="$requests" '
      $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { c[$NF] += $4 }
      END { t = 0; for (k in c) t += c[k]; printf "%.2f per request (%d requests):", t / n, n
            for (k in c) if (c[k] / n >= 0.05) printf " %s %.2f", k, c[k] / n }')
    echo "== $path system calls: ${syscalls[$path]}"
  done
fi

for path in $paths; do
  # The median round (by requests/s) gives the row's figures.
  median_round=$(for r in $(seq 1 "$max_rounds"); do
    echo "$(echo "${rounds[$path]}" | cut -d' ' -f"$r") $r"
  done | sort -n | awk -v n="$max_rounds" 'NR == int((n + 1) / 2) {print $2}')
  max[$path]=$(cat "$work/wrk-$path-$median_round.txt")
done
mem() { # pid → "RSS x MiB (peak y; private z; PSS w)"
  awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} /^RssAnon/ {a=$2}
       END {printf "RSS %.1f MiB (peak %.1f, anonymous %.1f", r/1024, h/1024, a/1024}' "/proc/$1/status"
  awk '/^Pss:/ {printf ", PSS %.1f)", $2/1024}' "/proc/$1/smaps_rollup"
}
breakdown() { # pid → resident MiB by mapping: the binary, other files, heap, anonymous
  awk -v bin="$(readlink "/proc/$1/exe")" '
    /^[0-9a-f]+-[0-9a-f]+ / {
      kind = "anonymous (arenas, stacks)"
      if ($6 == bin) kind = "binary"
      else if ($6 == "[heap]") kind = "brk heap"
      else if ($6 ~ /^\//) kind = "other files"
      else if ($6 != "") kind = $6
    }
    /^Rss:/ { r[kind] += $2 }
    END { sep = ""; for (k in r) if (r[k] >= 64) { printf "%s%s %.1f", sep, k, r[k] / 1024; sep = ", " } }
  ' "/proc/$1/smaps"
}
client_mem=$(mem "$client_pid")
server_mem=$(mem "$server_pid")
client_maps=$(breakdown "$client_pid")
server_maps=$(breakdown "$server_pid")
clusters=$(curl -fsS "http://$net.21:15000/clusters" | grep -o '"outbound|[^"]*": *{' | wc -l)

# --- report ----------------------------------------------------------------------
field() { echo "$1" | sed -E "s/.*\"$2\":([0-9.]+).*/\1/"; }
ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", (a - b) / 1000 }'; }
wrk_rps() { echo "$1" | awk '/Requests\/sec/ {printf "%.0f", $2}'; }
wrk_pct() { echo "$1" | awk -v p="$2" '$1 == p {print $2}'; }
{
  echo "| path | p50 ms | p90 ms | p99 ms | added p50 / p90 / p99 ms | errors | proxy vCPU per 1k rps | max rps (wrk) | wrk p50 / p99 | proxy RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for path in $paths; do
    f=${fixed[$path]}
    d=${fixed[direct]}
    if [[ $path == direct ]]; then add="—"; else
      add="$(added "$(field "$f" p50_us)" "$(field "$d" p50_us)") / $(added "$(field "$f" p90_us)" "$(field "$d" p90_us)") / $(added "$(field "$f" p99_us)" "$(field "$d" p99_us)")"
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n' "$path" \
      "$(ms "$(field "$f" p50_us)")" "$(ms "$(field "$f" p90_us)")" "$(ms "$(field "$f" p99_us)")" \
      "$add" "$(field "$f" errors)" "$([[ $path == direct ]] && echo — || echo "${cpu[$path]}")" \
      "$(wrk_rps "${max[$path]}")" "$(wrk_pct "${max[$path]}" 50%)" "$(wrk_pct "${max[$path]}" 99%)" \
      "$([[ $path == direct ]] && echo — || awk -v k="${rss[$path]}" 'BEGIN { printf "%.1f", k / 1024 }')"
  done
  echo
  echo "Max-throughput rounds (requests/s): direct ${rounds[direct]}; mesh ${rounds[mesh]}; nginx ${rounds[nginx]}."
  if [[ -n ${BASELINE_BIN:-} ]]; then
    echo "Baseline sidecars ($BASELINE_BIN): max-throughput rounds ${rounds[mesh-base]}; vCPU per 1k rps (pair) $cpu_base;" \
      "RSS after the runs client $(mem "$client_base_pid"), server $(mem "$server_base_pid");" \
      "resident MiB by mapping: client $(breakdown "$client_base_pid"); server $(breakdown "$server_base_pid")."
  fi
  for path in "${!syscalls[@]}"; do
    echo "System calls of the $path proxies: ${syscalls[$path]}."
  done
  echo "Mesh path CPU per 1,000 rps: client sidecar $cpu_client vCPU, server sidecar $cpu_server vCPU."
  echo -n "Of the proxy CPU at the fixed rate, in the kernel (vCPU per 1k rps):"
  for path in $paths; do
    [[ $path == direct ]] || echo -n " $path ${sys_cpu[$path]} of ${cpu[$path]};"
  done
  echo
  echo "Sidecar memory after the runs ($clusters outbound clusters from $services services and the benchmark's):" \
    "client $client_mem; server $server_mem."
  echo "Resident MiB by mapping: client $client_maps; server $server_maps."
} | tee "$out"
