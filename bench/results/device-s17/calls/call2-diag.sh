#!/usr/bin/env bash
# Session 17 call 2: three binaries (.device/binAB/ab.tar.xz). N = the tree after call 1 (batch-1
# LoRA entry points at __maxnreg__(80) but the K-quants', which keep 64; grids from occupancy).
# Two diagnostic builds of N, wrong results by design, to split the 135M batch-1 adapter cost:
# D = the rows never poll xa (use whatever the pre-dot load saw), E = the producers skip their
# loads and dot products (store 0 right after the PDL wait). gpu-check on N; adapters at the 135M
# proxy (N D E twice); 1.7B Q4_K_M and Q8_0 batch 1 on N.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in N D E; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
timeout 200 $S/binN/wick bench gpu-check --out $R/gpu-check-N.json > $R/gpu-check-N.log 2>&1; el "gpu-check N rc=$? $(grep -E 'cases' $R/gpu-check-N.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-N.log | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in N D E N D E; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
lora N 1.7b-q4_k_m --model random:smollm2-1.7b --quant q4_k_m --batch 4 --decode-tokens 128
lora N 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
