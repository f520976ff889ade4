#!/usr/bin/env bash
# The long fuzzing runs (not CI; CI replays the committed corpora and findings through
# tests/fuzz_replay.rs). Every target in targets.rs runs under cargo-fuzz (libFuzzer, on the
# nightly toolchain this script installs) for SECONDS seconds, from
# its committed corpus plus what earlier runs found (work/, not committed), with a 2 GiB RSS
# limit, a 10 s per-input timeout and the 1 GiB heap budget of budget.rs. Crashes land in
# artifacts/TARGET/; each is fixed and kept in findings/TARGET/ as a regression input.
# Statistics (seconds actually run: a crash or Ctrl-C ends a run early; executions, coverage,
# features) go to stats.tsv and logs/.
#
# FUZZ_SANITIZER picks the build: `none` (default: Tastebud's loaders are safe Rust, and
# without AddressSanitizer a run makes 2-3x the executions; overflows, panics, hangs and
# over-allocation are still caught) or `address` (for the unsafe code in dependencies).
#
#   [FUZZ_SANITIZER=address] tests/fuzz/run.sh [SECONDS=600] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/tastebud/fuzz-target}
sanitizer=${FUZZ_SANITIZER:-none}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^    ("\([a-z_]*\)", [a-z_]*),$/\1/p' targets.rs)
fi
cargo +nightly fuzz build --fuzz-dir . --sanitizer "$sanitizer"
mkdir -p logs
[ -f stats.tsv ] || printf 'date\ttarget\tsanitizer\tseconds\texecutions\tcoverage\tfeatures\tcorpus\tcrashes\n' > stats.tsv
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="logs/$t.log"
  touch "logs/$t.start" # crashes are counted from this run only
  status=0
  started=$SECONDS
  cargo +nightly fuzz run --fuzz-dir . --sanitizer "$sanitizer" "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" > "$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "work/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f -newer "logs/$t.start" | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$t" "$sanitizer" "$((SECONDS - started))" "${execs:-0}" \
    "${cov:-0}" "${ft:-0}" "$corpus" "$crashes" | tee -a stats.tsv
  [ "$status" -eq 0 ] || echo "$t: the fuzzer stopped with status $status (see $log and artifacts/$t/)"
done
