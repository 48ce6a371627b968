#!/usr/bin/env bash
# Session 16 call 2: one binary (.device/binB/wick.xz, commit 2e6411a). The batched mat-vecs' grid
# sized to one wave of the kernel's resident blocks (occupancy API, rows balanced over the blocks)
# against WICK_DECODE_BATCH_GRID=waves (the grid before: a block per 4 rows up to 1056 blocks);
# the adapter L2 window (on where one adapter fits the set-aside) against WICK_ADAPTER_L2=0 at
# SmolLM2-360M Q4_K_M (34.7 MB an adapter). gpu-check first.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R $S/binB
xz -dc .device/binB/wick.xz > $S/binB/wick && chmod +x $S/binB/wick
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
lora() { # grid l2 tag args...
  local g=$1 l=$2 tag=$3; shift 3
  WICK_DECODE_BATCH_GRID=$g WICK_ADAPTER_L2=$l timeout 150 $S/binB/wick bench decode-lora "$@" --out $R/lora-$tag-$g-$l.json > $R/lora-$tag-$g-$l.log 2>&1
  el "lora $tag grid=$g l2=$l rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$g-$l.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()})' $R/lora-$tag-$g-$l.json 2>/dev/null)"
}
for g in waves wave waves wave; do lora $g 1 135m --model random:smollm2-135m --quant q4_1; done
lora wave 1 135m-prof --model random:smollm2-135m --quant q4_1 --profile-reps 3
for g in waves wave; do lora $g 1 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
for l in 0 1; do lora wave $l 360m-q4_k_m --model random:smollm2-360m --quant q4_k_m; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
