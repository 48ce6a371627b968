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
# --all-targets builds the lib, the binary, every test and every example (examples/*.rs), and runs
# the unit and integration tests; it does not run doctests, so they have their own step.
cargo test --all-targets

echo "== cargo test --doc (the crate-root example trains, generates and searches on tiny models)"
cargo test --doc

echo "== CUDA feature compile check (no GPU needed)"
if [ "${WICK_SKIP_CUDA_CHECK:-0}" = "1" ]; then
  echo "skipped (WICK_SKIP_CUDA_CHECK=1)"
else
  # A release build with --features cuda (nvcc compiles every kernel; the binary is linked against the
  # stubs and its libraries verified). Its target folder lives outside the checkout so that repeated
  # runs on one machine (CI's clean clones) reuse the compiled dependencies. `scripts/cuda-build.sh
  # --ci` (unoptimised, with the `nccl` feature) is the lighter alternative, not yet timed cold.
  CARGO_TARGET_DIR="${WICK_CUDA_TARGET_DIR:-$HOME/.cache/wick/cuda-target}" \
    bash scripts/cuda-build.sh --release
fi
