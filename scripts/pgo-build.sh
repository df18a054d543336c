#!/usr/bin/env bash
# Profile-guided build of the two proxies, `isthmus-sidecar` and
# `isthmus-gateway`, from the `dist` profile (fat LTO, one codegen unit):
#
#   1. build them instrumented (-Cprofile-generate), in target/pgo-gen;
#   2. train: run the benchmarks' loads through the instrumented binaries
#      (scripts/bench-sidecar.sh with the HTTP/1.1 and the HTTP/2 mTLS hop,
#      scripts/bench-gateway.sh: handshakes, bulk, small requests); each
#      process writes its counters when it exits on the scripts' SIGTERM;
#   3. merge the counters with the llvm-profdata of rustc's own LLVM major
#      (Debian's llvm-<major>, installed with apt when missing);
#   4. build them again with -Cprofile-use, in target/pgo-use, and copy
#      them to target/pgo/ (PGO_DIR).
#
#   scripts/pgo-build.sh            # ~25 min on two cores from a cold target dir
#   TRAIN=0 scripts/pgo-build.sh    # step 4 only, from the profile of the last run
#   PGO_DIR=dir                     # profiles and binaries there (target/pgo)
#   TRAIN_SECONDS=5                 # seconds per load in the training runs
#
# The profile is of this machine's loopback benchmarks, so it favours the
# paths they take: HTTP/1.1 and HTTP/2 over mTLS for the sidecar, TLS
# passthrough for the gateway. Code the training did not run is optimised
# as cold (for size), which is what keeps start-up, xDS decoding and the
# admin endpoints small. Results: docs/benchmarks/sidecar.md and
# gateway.md, "Profile-guided builds". Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-$PWD/target}
target=$(cd "$target" 2>/dev/null && pwd || echo "$target")
work=${PGO_DIR:-$target/pgo}
triple=$(rustc -vV | sed -n 's/^host: //p')
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=/usr/lib/llvm-$llvm/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
  echo "== installing llvm-$llvm (llvm-profdata for rustc's LLVM $llvm)"
  apt-get install -y -qq "llvm-$llvm" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "llvm-$llvm" >/dev/null; }
fi
bins=(-p isthmus-sidecar -p isthmus-gateway --bin isthmus-sidecar --bin isthmus-gateway)
mkdir -p "$work"

if [[ ${TRAIN:-1} != 0 ]]; then
  echo "== build instrumented (dist profile, -Cprofile-generate)"
  rm -rf "$work/raw"
  mkdir -p "$work/raw"
  # --target keeps the flags off build scripts and proc macros.
  RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/raw" \
    cargo build --profile dist --locked -q --target "$triple" \
    --target-dir "$target/pgo-gen" "${bins[@]}"
  gen=$target/pgo-gen/$triple/dist

  echo "== build the benchmarks' control plane and load generators (release)"
  cargo build --release --locked -q -p isthmus-cli --bin isthmus
  cargo build --release --locked -q -p isthmus-sidecar --example loadgen

  echo "== train the sidecar: HTTP/1.1 mTLS hop"
  BUILD=0 ROUNDS=1 SECONDS_FIXED=${TRAIN_SECONDS:-5} SECONDS_MAX=${TRAIN_SECONDS:-5} \
    SIDECAR_BIN="$gen/isthmus-sidecar" scripts/bench-sidecar.sh "$work/train-sidecar-h1.md" >/dev/null
  echo "== train the sidecar: HTTP/2 mTLS hop"
  BUILD=0 ROUNDS=1 SECONDS_FIXED=${TRAIN_SECONDS:-5} SECONDS_MAX=${TRAIN_SECONDS:-5} MESH_HOP=http2 \
    SIDECAR_BIN="$gen/isthmus-sidecar" scripts/bench-sidecar.sh "$work/train-sidecar-h2.md" >/dev/null
  echo "== train the gateway"
  BUILD=0 ROUNDS=1 DURATION=${TRAIN_SECONDS:-5} GATEWAYS="train=$gen/isthmus-gateway" \
    scripts/bench-gateway.sh >"$work/train-gateway.txt"

  shopt -s nullglob
  raw=("$work"/raw/*.profraw)
  shopt -u nullglob
  # One file per binary: the processes of one binary merge their counters
  # into it as they exit (the runtime's default_%m pattern).
  if ((${#raw[@]} < 2)); then
    echo "pgo-build: expected a profile from each of the two binaries, found ${#raw[@]} in $work/raw" >&2
    exit 1
  fi
  echo "== merge ${#raw[@]} profiles"
  "$profdata" merge -o "$work/merged.profdata" "${raw[@]}"
fi

[[ -f $work/merged.profdata ]] || { echo "pgo-build: no $work/merged.profdata; run with TRAIN=1" >&2; exit 1; }
echo "== build with the profile (dist profile, -Cprofile-use)"
# keep-text-section-prefix: lld keeps the code the profile marks hot
# (.text.hot.*) together, and the cold (.text.unlikely.*) apart, so the
# request path touches fewer pages (the sidecar's RSS is mostly its code).
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/merged.profdata -Clink-arg=-Wl,-z,keep-text-section-prefix" \
  cargo build --profile dist --locked -q --target "$triple" \
  --target-dir "$target/pgo-use" "${bins[@]}"
cp "$target/pgo-use/$triple/dist/isthmus-sidecar" "$target/pgo-use/$triple/dist/isthmus-gateway" "$work/"
ls -l "$work/isthmus-sidecar" "$work/isthmus-gateway"
