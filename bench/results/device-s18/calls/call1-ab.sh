#!/usr/bin/env bash
# Session 18 call 1: three binaries in one xz stream (.device/binAB/ab.tar.xz). A = c55e1ba (session
# 17's final kernels); B = 18fa429: batch-1 LoRA producers load a lane's columns in clamped rounds of
# 4, the step's argmax marks the next step's xa pending (no memset node), the engine's AdamW takes
# 1 - beta from the host; C = B + the predicated batch-1 row loop
# (bench/results/device-s17/rowdot-predicated.patch). gpu-check on B and C; adapters (ratio and the
# base's tok/s) at the 135M proxy (A B C three times), SmolLM2-1.7B Q8_0 and Q4_K_M.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in A B C; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
for v in B C; do
  timeout 120 $S/bin$v/wick bench gpu-check --out $R/gpu-check-$v.json > $R/gpu-check-$v.log 2>&1; el "gpu-check $v rc=$? $(grep -E 'cases' $R/gpu-check-$v.log | tail -1)"
  grep -E "FAIL|failed" $R/gpu-check-$v.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in A B C A B C A B C; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
for v in A B C; do lora $v 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
for v in A C; do lora $v 1.7b-q4_k_m --model random:smollm2-1.7b --quant q4_k_m --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
