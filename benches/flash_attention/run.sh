#!/usr/bin/env bash
# On the device: the flash-attention kernels' checks and TFLOP/s (fa_bench, built here by
# `build` with the local nvcc), then PyTorch SDPA on the same shapes, in one call.
#   here:    bash benches/flash_attention/run.sh build [NAME]  -> .device/fa/fa_bench, against
#            kernels/flash_attention.cu or benches/flash_attention/candidates/flash_attention_NAME.cu
#   device:  bash benches/flash_attention/run.sh             (prints JSON lines)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ "${1:-}" == build ]]; then
  nvcc=${NVCC:-$HOME/.cache/wick/cuda-13.0/toolkit/nvidia/cu13/bin/nvcc}
  mkdir -p "$repo/.device/fa"
  kernel=$repo/kernels/flash_attention.cu
  [[ -n ${2:-} ]] && kernel=$repo/benches/flash_attention/candidates/flash_attention_$2.cu
  "$nvcc" -arch=sm_90 -O3 -std=c++17 -I"$repo/kernels" -DFA_KERNEL="\"$kernel\"" -cudart static \
    -L"$(dirname "$nvcc")/../lib" -o "$repo/.device/fa/fa_bench" "$repo/benches/flash_attention/fa_bench.cu"
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$repo/.device/fa/fa_bench" "$@"
[[ "${1:-}" == check ]] || python3 "$repo/benches/flash_attention/sdpa.py"
