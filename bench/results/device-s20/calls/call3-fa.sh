#!/usr/bin/env bash
# device-s20 call 3: heads-major grids (every head's longest tiles start first) for the product
# kernel (ord = ldsm + ordering) and the dq-fused candidate (dqord), beside ldsm and dqfused of
# call 2; the 8B training shape (B 2, 32 heads, 8 kv heads, seq 2048, hd 128) and seq 16k.
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for n in ord dqord; do .device/fa/fa_bench_$n | sed "s/^{/{\"variant\":\"$n\",/" | tee -a $OUT/fa.jsonl | grep -v '"ok":true'; done
for n in ord dqord; do
  for shape in "2 32 4 2048 128" "1 32 4 16384 128" "4 14 7 2048 64"; do
    .device/fa/fa_bench_$n shape $shape | grep bench | sed "s/^{/{\"variant\":\"$n\",/" | tee -a $OUT/fa.jsonl
  done
done
