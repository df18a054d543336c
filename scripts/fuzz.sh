#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target, on the stable toolchain.
#
#   scripts/fuzz.sh                  # each target for FUZZ_SECONDS (default 60)
#   FUZZ_SECONDS=600 scripts/fuzz.sh # a longer run
#   FUZZ_TARGETS=client_hello scripts/fuzz.sh
#
# Builds each target as `cargo fuzz build -s none` would (libFuzzer through
# libfuzzer-sys, SanitizerCoverage, `--cfg fuzzing`, debug assertions), but
# with plain cargo and the fuzz crate's checked-in Cargo.lock (`--locked`),
# so neither cargo-fuzz nor a nightly toolchain is needed. AddressSanitizer
# needs nightly and is left out; the targets are safe Rust, where a panic —
# which libFuzzer reports as a crash — is the failure we look for.
#
# The checked-in seed corpus is read, never written: new inputs go to a
# scratch directory. A crash fails the script, names the target and prints
# the input as hex, and leaves the input under $FUZZ_WORK for
# `<binary> <input>` to replay. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
work=${FUZZ_WORK:-$(mktemp -d)}
mkdir -p "$work"

# crate directory, target name
all_targets=(
  "gateway/fuzz client_hello"
  "dns-plugin/fuzz request"
)

rustflags="-Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

status=0
for entry in "${all_targets[@]}"; do
  read -r dir name <<<"$entry"
  if [[ -n ${FUZZ_TARGETS:-} && " $FUZZ_TARGETS " != *" $name "* ]]; then
    continue
  fi
  echo "== fuzz $name ($dir): build"
  # --target keeps RUSTFLAGS away from build scripts and proc macros, as cargo-fuzz does.
  RUSTFLAGS=$(echo $rustflags) cargo build --locked --release --quiet \
    --manifest-path "$dir/Cargo.toml" --target "$triple" --target-dir "$target_dir" --bin "$name"
  bin=$target_dir/$triple/release/$name
  scratch=$work/$name
  mkdir -p "$scratch/new" "$scratch/artifacts"
  echo "== fuzz $name: ${seconds}s from the seed corpus $dir/corpus/$name"
  if "$bin" "$scratch/new" "$dir/corpus/$name" -max_total_time="$seconds" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$scratch/artifacts/" >"$scratch/log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/log" || true
    grep -m1 -E '^stat::peak_rss_mb' "$scratch/log" || true
  else
    status=1
    echo "!! fuzz target $name failed; its log ends:"
    tail -n 40 "$scratch/log"
    for input in "$scratch"/artifacts/*; do
      [[ -e $input ]] || continue
      echo "!! input $input (replay: $bin $input):"
      od -A x -t x1z -v "$input" | head -n 64
    done
  fi
done
exit "$status"
