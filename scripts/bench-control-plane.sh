#!/usr/bin/env bash
# Control-plane scale benchmark (issue 3): 1k/10k services (5 endpoints each)
# × 100/1,000 simulated ADS sidecars, with the default 100 ms debounce and
# with the debounce off (to show generation and push cost on their own).
# Endpoint-only changes use the ADS endpoint debounce (10 ms, at most the
# debounce); pass e.g. XDS_BENCH_ARGS="--endpoint-debounce-ms 100 --push-throttle 50"
# to try others.
#
# Each case runs once per protocol in PROTOCOLS, back to back: state-of-the-world
# ADS ("sotw") and incremental ADS ("delta": the sidecars speak
# DeltaAggregatedResources, `xds_bench --delta`).
#
# Usage: scripts/bench-control-plane.sh [results.jsonl]
#   QUICK=1            only the 100- and 1k-service cases (about 8 minutes)
#   PROTOCOLS="sotw delta"  which variants to run (default both)
#   MAX_RSS_MIB=8192   stop a control plane whose RSS passes this (default 8 GiB)
#   SCOPED=0           leave out the 10k × 1,000 case with Sidecar scoping
#
# Prints the machine, one table per run, and a Markdown summary (the table
# in docs/benchmarks/control-plane.md). Raw JSON lines go to the results file
# (default target/bench/control-plane.jsonl, overwritten).
# Not part of CI: it takes about 16 minutes on a 2-core machine (both protocols).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench/control-plane.jsonl}
max_rss=${MAX_RSS_MIB:-8192}
protocols=${PROTOCOLS:-sotw delta}
mkdir -p "$(dirname "$out")"
: >"$out"

# Each sidecar is one TCP connection (two descriptors on this machine).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo | sed 's/^model name\s*:\s*/cpu: /'
echo "cpu family/model: $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs)/$(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs)$(grep -qw hypervisor /proc/cpuinfo && echo ', virtualised')"
grep -m1 MemTotal /proc/meminfo | sed 's/^MemTotal:\s*/memory: /'
echo "kernel: $(uname -r)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "open files limit: $(ulimit -n)"
rustc --version
dirty=$(git status --porcelain -- api/src config/src control-plane/src 2>/dev/null | head -1)
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+ (with uncommitted changes in the measured crates)}"

echo "== build"
cargo build --release --locked -p isthmus-control-plane --example xds_bench
bench=target/release/examples/xds_bench

run_one() {
  echo "== $*"
  # shellcheck disable=SC2086 # extra flags split on purpose
  "$bench" --json-out "$out" --max-server-rss-mib "$max_rss" ${XDS_BENCH_ARGS:-} "$@" ||
    echo "== that case failed (exit $?); going on"
}

# One case with each protocol, back to back (same load).
run() {
  for p in $protocols; do
    case $p in
      sotw) run_one "$@" ;;
      delta) run_one --delta "$@" ;;
      *) echo "unknown protocol $p in PROTOCOLS (sotw, delta)" >&2; exit 2 ;;
    esac
  done
}

# services clients changes(debounce 100) changes(debounce 0)
# (100 services: a reference where generation is cheap and the debounce shows.)
cases=(
  "100 100 20 20"
  "1000 100 20 20"
  "1000 1000 10 5"
)
if [[ -z "${QUICK:-}" ]]; then
  cases+=(
    "10000 100 5 5"
    "10000 1000 3 0"
  )
fi

started=$SECONDS
for c in "${cases[@]}"; do
  read -r services clients changes changes_fast <<<"$c"
  run --services "$services" --clients "$clients" --changes "$changes" --debounce-ms 100
  if ((changes_fast > 0)); then
    run --services "$services" --clients "$clients" --changes "$changes_fast" --debounce-ms 0
  fi
done

# With Istio `Sidecar` resources scoping every proxy to its namespace plus a
# few services (`xds_bench --scoped`): what a large mesh is expected to run.
# SCOPED=0 leaves these cases out.
if [[ ${SCOPED:-1} != 0 && -z "${QUICK:-}" ]]; then
  run --services 10000 --clients 1000 --changes 3 --debounce-ms 100 --scoped
fi

# The listener as `isthmus control-plane` binds it (tokio's default backlog, 128):
# what 1,000 sidecars connecting at once meet. Full push only.
run --services 1000 --clients 1000 --changes 0 --listen-backlog 128

echo "== summary ($((SECONDS - started)) s; raw results in $out)"
"$bench" --summarize "$out"
