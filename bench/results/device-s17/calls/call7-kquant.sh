#!/usr/bin/env bash
# Session 17 call 7: N = the final binary (K-quant LoRA kernels at 64 registers in 16-warp
# blocks, spilling 12-16 B a thread); K = N + the K-quants' batch-1 LoRA kernels at 80 registers
# too, launched in 8-warp blocks (three an SM) whenever a launch has adapters. SmolLM2-1.7B shapes
# Q4_K_M batch 1, N K N K; then gpu-check on K.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in N K; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 60 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in N K N K; do lora $v 1.7b-q4_k_m --model random:smollm2-1.7b --quant q4_k_m --batch 1 --decode-tokens 128; done
timeout 70 $S/binK/wick bench gpu-check --out $R/gpu-check-K.json > $R/gpu-check-K.log 2>&1; el "gpu-check K rc=$? $(grep -E 'cases' $R/gpu-check-K.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-K.log | head -20 >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
