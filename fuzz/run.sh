#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, from the
# checked-in seeds (fuzz/seeds/<target>) plus the corpus grown so far
# (fuzz/corpus/<target>, not checked in; FUZZ_CORPUS=tmp starts from the
# seeds alone and throws new inputs away, as `make test`'s smoke does).
# Prints executions per target; exits 1 on the first crash (its input is
# in fuzz/artifacts/<target>/, reproduce with
# `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>`).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^meshguard-fuzz$')}
LOG_DIR=${FUZZ_LOG_DIR:-target/fuzz-logs}
mkdir -p "$LOG_DIR"
# Built once, then each binary is run directly (no rebuild check per target:
# the crate's build script rebuilds it whenever git HEAD moves).
# FUZZ_PROFILE=release (default, `make fuzz`): optimised, with debug
# assertions (integer overflow is a finding). FUZZ_PROFILE=dev (`make
# fuzz-smoke`): unoptimised, debug assertions too; several times quicker to
# build, slower to run, which a few seconds per target do not mind.
if [ "${FUZZ_PROFILE:-release}" = dev ]; then
  BUILD_FLAGS=(--dev); BIN=target/x86_64-unknown-linux-gnu/debug
else
  BUILD_FLAGS=(-O -a); BIN=target/x86_64-unknown-linux-gnu/release
fi
if ! cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >"$LOG_DIR/build.log" 2>&1; then
  tail -40 "$LOG_DIR/build.log"; exit 1
fi
total=0
for t in $TARGETS; do
  if [ "${FUZZ_CORPUS:-}" = tmp ]; then
    corpus=$(mktemp -d); trap 'rm -rf "$corpus"' EXIT
  else
    corpus=corpus/$t; mkdir -p "$corpus"
  fi
  log=$LOG_DIR/$t.log
  mkdir -p "artifacts/$t"
  if ! "$BIN/$t" "$corpus" "seeds/$t" -artifact_prefix="artifacts/$t/" \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz $t: CRASH (log $PWD/$log, input in $PWD/artifacts/$t/)"
    grep -m1 -A12 -E "panicked|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" || tail -30 "$log"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "fuzz $t: ${runs:-0} executions in ${SECONDS_EACH}s, coverage ${cov:-?} edges, no crash"
  total=$((total + ${runs:-0}))
  [ "${FUZZ_CORPUS:-}" = tmp ] || echo "$(date -u +%FT%TZ) $t ${runs:-0} ${SECONDS_EACH}s ${cov:-?}" >> "$LOG_DIR/history"
  if [ "${FUZZ_CORPUS:-}" = tmp ]; then rm -rf "$corpus"; trap - EXIT; fi
done
echo "fuzz: $total executions, no crash"
