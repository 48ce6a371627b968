#!/usr/bin/env bash
# CPU LoRA training benchmark (issue 3, done-when 7): SmolLM2-135M-Instruct (the default model, GGUF
# dequantized to f32), r 16 on every linear layer, sequence 256, batch 4. Writes
# bench/results/train-cpu.{json,md}. Usage: scripts/bench-train-cpu.sh [extra `wick bench train` args]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
./target/release/wick bench train --model default --rank 16 --seq-len 256 --batch-size 4 \
  --steps "${STEPS:-3}" --warmup-steps 1 --device cpu --out bench/results/train-cpu "$@"
