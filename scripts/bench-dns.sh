#!/usr/bin/env bash
# DNS benchmark: dnsperf against the Isthmus DNS server and against unbound
# serving the same names (as local-data), same query file, one run each.
#
# The Isthmus server gets its names the real way: a control plane reads
# $SERVICES ServiceEntries (`svc-N.bench.global`, explicit addresses so both
# servers give identical answers) from a directory and streams them over the
# DNS feed. Every server runs with one thread; dnsperf has the other core.
# Two Isthmus servers are measured: the default (UDP fast path on) and
# `--udp-fast-path off` (every query through hickory-server's own listener).
#
# Reports, per server: max QPS (saturated, dnsperf's own average latency),
# the server's CPU per query during that run (user+system time / answers:
# the figure that does not depend on whether dnsperf or the server is the
# bottleneck), and latency percentiles at a fixed offered load ($RATE qps,
# per-query latencies from `dnsperf -v`); then the ratios to unbound.
#
# Usage: scripts/bench-dns.sh            (env: SERVICES DURATION RATE CLIENTS OUT)
set -euo pipefail

SERVICES=${SERVICES:-10000}
DURATION=${DURATION:-20}
RATE=${RATE:-20000}
CLIENTS=${CLIENTS:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/bench-dns.XXXXXX)
OUT=${OUT:-$WORK/results.txt}
CP_PORT=25010 CP_DEBUG=25014 DNS_PORT=25053 DNS_ADMIN=25054 UNBOUND_PORT=25153
HICKORY_PORT=25063 HICKORY_ADMIN=25064

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need dnsperf || ! need unbound || ! need dig; then
    echo "== installing dnsperf, unbound, dig (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf unbound bind9-dnsutils >/dev/null
fi

echo "== building isthmus (release)"
(cd "$ROOT" && cargo build --release --locked -p isthmus-cli)
ISTHMUS=$TARGET/release/isthmus

echo "== generating $SERVICES services"
mkdir -p "$WORK/config"
python3 - "$SERVICES" "$WORK" <<'PY'
import sys
n, work = int(sys.argv[1]), sys.argv[2]
se, local, queries = [], [], []
for i in range(n):
    a = i + 1
    vip = f"240.240.{a >> 8}.{a & 255}"
    ep = f"10.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
    se.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}, namespace: bench}}
spec: {{hosts: [svc-{i}.bench.global], addresses: [{vip}], location: MESH_INTERNAL, resolution: STATIC,
  ports: [{{number: 80, name: http}}], endpoints: [{{address: {ep}, labels: {{topology.istio.io/cluster: bench}}}}]}}
""")
    for name in (f"svc-{i}.bench.global.", f"svc-{i}.bench.svc.clusterset.local."):
        local.append(f'  local-data: "{name} 5 IN A {vip}"\n')
        queries.append(f"{name} A\n")
open(f"{work}/config/services.yaml", "w").write("---\n".join(se))
open(f"{work}/local-data.conf", "w").write("".join(local))
import random
random.seed(1)
random.shuffle(queries)
open(f"{work}/queries.txt", "w").write("".join(queries))
PY
echo "tok: {namespace: bench, serviceAccount: bench}" > "$WORK/tokens.yaml"

echo "== starting control plane and isthmus dns"
"$ISTHMUS" control-plane --cluster bench --config-dir "$WORK/config" --bootstrap-tokens "$WORK/tokens.yaml" \
    --listen 127.0.0.1:$CP_PORT --debug-listen 127.0.0.1:$CP_DEBUG >"$WORK/control-plane.log" 2>&1 &
pids+=($!)
ISTHMUS_LOG=warn "$ISTHMUS" dns --cluster bench --control-plane 127.0.0.1:$CP_PORT \
    --listen 127.0.0.1:$DNS_PORT --admin 127.0.0.1:$DNS_ADMIN --threads 1 --udp-sockets 1 >"$WORK/dns.log" 2>&1 &
pids+=($!)
isthmus_pid=$!
ISTHMUS_LOG=warn "$ISTHMUS" dns --cluster bench --control-plane 127.0.0.1:$CP_PORT --udp-fast-path off \
    --listen 127.0.0.1:$HICKORY_PORT --admin 127.0.0.1:$HICKORY_ADMIN --threads 1 --udp-sockets 1 >"$WORK/dns-hickory.log" 2>&1 &
pids+=($!)
hickory_pid=$!
for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$HICKORY_ADMIN/ready" 2>/dev/null | grep -q "with $SERVICES services"; then break; fi
    sleep 0.5
done
for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$DNS_ADMIN/ready" 2>/dev/null | grep -q "with $SERVICES services"; then break; fi
    sleep 0.5
done
curl -sf "http://127.0.0.1:$DNS_ADMIN/ready" | grep "with $SERVICES services" || { echo "DNS server never got $SERVICES services"; cat "$WORK/dns.log"; exit 1; }

echo "== starting unbound"
cat >"$WORK/unbound.conf" <<EOF
server:
  interface: 127.0.0.1@$UNBOUND_PORT
  port: $UNBOUND_PORT
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$WORK"
  pidfile: "$WORK/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "global." static
  local-zone: "clusterset.local." static
  include: "$WORK/local-data.conf"
remote-control:
  control-enable: no
EOF
unbound -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
pids+=($!)
unbound_pid=$!
for _ in $(seq 1 60); do
    dig +short +time=1 +tries=1 -p $UNBOUND_PORT @127.0.0.1 svc-0.bench.global A | grep -q . && break
    sleep 0.5
done

echo "== same answers?"
for name in svc-0.bench.global svc-$((SERVICES - 1)).bench.svc.clusterset.local nope.bench.global; do
    ours=$(dig +short -p $DNS_PORT @127.0.0.1 "$name" A)
    plain=$(dig +short -p $HICKORY_PORT @127.0.0.1 "$name" A)
    theirs=$(dig +short -p $UNBOUND_PORT @127.0.0.1 "$name" A)
    echo "  $name: isthmus=[$ours] isthmus-hickory=[$plain] unbound=[$theirs]"
    [ "$ours" = "$theirs" ] && [ "$plain" = "$theirs" ] || { echo "answers differ"; exit 1; }
done

# CPU time (user + system) of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# $1 label, $2 port, $3 server pid → "qps avg_latency_ms cpu/query"; then percentiles at $RATE qps.
run() {
    local label=$1 port=$2 pid=$3 t0 t1
    t0=$(ticks "$pid")
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -l "$DURATION" -c "$CLIENTS" -T 1 -q 1000 \
        >"$WORK/$label.max.txt" 2>&1
    t1=$(ticks "$pid")
    local qps avg lost answers cpu
    qps=$(awk '/Queries per second/ {print $4}' "$WORK/$label.max.txt")
    answers=$(awk '/Queries completed/ {print $3}' "$WORK/$label.max.txt")
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$answers" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    avg=$(awk '/Average Latency/ {printf "%.3f", $4 * 1000}' "$WORK/$label.max.txt")
    lost=$(awk '/Queries lost/ {print $3}' "$WORK/$label.max.txt")
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -l "$DURATION" -c "$CLIENTS" -T 1 -Q "$RATE" -v \
        >"$WORK/$label.rate.txt" 2>&1
    # -v lines: "> NOERROR <name> A <latency seconds>" (one per answered query).
    local pct
    pct=$(awk '$1 == ">" {print $NF * 1e6}' "$WORK/$label.rate.txt" | sort -n | awk '
        { v[NR] = $1 }
        END { if (NR == 0) { print "n/a"; exit }
              printf "p50 %d µs, p90 %d µs, p99 %d µs, p99.9 %d µs, max %d µs (%d answers)",
                v[int(NR*0.5)+0], v[int(NR*0.9)], v[int(NR*0.99)], v[int(NR*0.999)], v[NR], NR }')
    printf '%-15s max %10s qps (avg latency %s ms, lost %s, server CPU %s µs/query) | at %s qps: %s\n' \
        "$label" "$qps" "$avg" "$lost" "$cpu" "$RATE" "$pct" | tee -a "$OUT"
    eval "${label}_qps=$qps"
}

echo "== dnsperf: $DURATION s per run, $CLIENTS clients, $((SERVICES * 2)) names" | tee "$OUT"
echo "   $(nproc) cores; each server 1 thread; $(uname -r); load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
run isthmus $DNS_PORT "$isthmus_pid"
run unbound $UNBOUND_PORT "$unbound_pid"
run hickory $HICKORY_PORT "$hickory_pid"
# shellcheck disable=SC2154 # set by run via eval
awk -v a="$isthmus_qps" -v h="$hickory_qps" -v b="$unbound_qps" 'BEGIN {
    printf "ratio isthmus/unbound: %.2fx (with --udp-fast-path off: %.2fx)\n", a / b, h / b }' | tee -a "$OUT"
echo "isthmus metrics after the run:" >>"$OUT"
curl -s "http://127.0.0.1:$DNS_ADMIN/metrics" | grep -E '^isthmus_dns_(queries_total|zone_services)' >>"$OUT" || true
echo "results in $OUT (raw dnsperf output in $WORK)"
