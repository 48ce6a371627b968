#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run calls exactly this).
# CPU only: formatting, lints, every test, and a compile check of the CUDA feature
# (CI has no GPU; GPU tests run on the device machine through scripts/device-run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "== cargo test"
cargo test --all-targets

echo "== CUDA feature compile check (no GPU needed)"
if [ "${WICK_SKIP_CUDA_CHECK:-0}" = "1" ]; then
  echo "skipped (WICK_SKIP_CUDA_CHECK=1)"
else
  # A release build with --features cuda (a superset of a check: it also links against the stubs and
  # verifies the binary's libraries). Its target folder lives outside the checkout so that repeated
  # runs on one machine (CI's clean clones) reuse the compiled dependencies; cold, it takes ~10-45 min
  # on 2 cores depending on load (docs/CUDA.md).
  CARGO_TARGET_DIR="${WICK_CUDA_TARGET_DIR:-$HOME/.cache/wick/cuda-target}" \
    bash scripts/cuda-build.sh --release
fi
