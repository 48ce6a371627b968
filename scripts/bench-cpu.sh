#!/usr/bin/env bash
# CPU prefill/decode benchmark of wick beside llama.cpp on the default model (issue 2, done-when 4).
# Builds llama.cpp's llama-bench from the llama-cpp-python 0.3.36 sdist if it is not there yet
# (scripts/llamacpp/build-llama-bench.sh native, a few minutes on 2 cores), builds wick in release,
# and writes bench/results/cpu-decode-prefill.{md,json}.
#
#   scripts/bench-cpu.sh [extra `wick bench cpu` options, e.g. --rounds 7]
#
# Env: LLAMA_BENCH (path to an existing llama-bench), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
LLAMA_BENCH=${LLAMA_BENCH:-/tmp/llamacpp-sdist/build-native/bin/llama-bench}
if [ ! -x "$LLAMA_BENCH" ]; then
  scripts/llamacpp/build-llama-bench.sh native
fi
cargo build --release --bin wick
CANDLE_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS target/release/wick bench cpu \
  --model default --prompt-tokens 128 --gen-tokens 64 --threads "$THREADS" \
  --llama-bench "$LLAMA_BENCH" --out bench/results/cpu-decode-prefill "$@"
