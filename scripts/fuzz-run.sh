#!/usr/bin/env bash
# Runs one cargo-fuzz target (fuzz/fuzz_targets/<target>.rs) for SECONDS on one core, the way the runs
# in bench/results/fuzz-<target>.md were made: seeds from fuzz/seeds-<target> (fuzz/seeds for gguf),
# the growing corpus in fuzz/corpus/<target>, crashes in fuzz/artifacts/<target> (both git-ignored).
# libFuzzer's log goes to fuzz/fuzz-0.log (the -jobs=1 convention), copied to fuzz/logs/<target>.log.
#
#   scripts/fuzz-run.sh dataset 600
#   MAX_LEN=4096 scripts/fuzz-run.sh dataset 600    # cap the input size (default: the largest seed)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); stable rustc works with RUSTC_BOOTSTRAP=1.
set -euo pipefail
target=${1:?usage: fuzz-run.sh TARGET [SECONDS]}
seconds=${2:-600}
cd "$(dirname "$0")/../fuzz"
seeds=seeds-$target
[ "$target" = gguf ] && seeds=seeds
mkdir -p "corpus/$target" "artifacts/$target" logs
export RUSTC_BOOTSTRAP=1
cargo fuzz run ${FUZZ_TARGET_DIR:+--target-dir "$FUZZ_TARGET_DIR"} "$target" "corpus/$target" "$seeds" -- \
  -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 -timeout=20 \
  -artifact_prefix="artifacts/$target/" ${MAX_LEN:+-max_len=$MAX_LEN} || true
cp fuzz-0.log "logs/$target.log"
tail -5 "logs/$target.log"
