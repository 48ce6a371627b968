#!/usr/bin/env bash
# Session 16 call 3: one binary (.device/binB/wick.xz, commit in the commit log after 2e6411a: LoRA
# producers called instead of inlined (no spills in the rows' path), batch-1 producer tasks of a
# warp or two at small k, the batched one-wave grid only for the four-warps-a-row kernels, the
# batch-1 grid as before). WICK_LORA_TASKS=block (one producer task a block at batch 1, as before)
# against the default, alternating; SmolLM2-1.7B Q8_0 batch 1 / 4 both ways. gpu-check first.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R $S/binB
xz -dc .device/binB/wick.xz > $S/binB/wick && chmod +x $S/binB/wick
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
lora() { # tasks tag args...
  local t=$1 tag=$2; shift 2
  WICK_LORA_TASKS=$t timeout 150 $S/binB/wick bench decode-lora "$@" --out $R/lora-$tag-$t.json > $R/lora-$tag-$t.log 2>&1
  el "lora $tag tasks=$t rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$t.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$t.json 2>/dev/null)"
}
for t in block split block split; do lora $t 135m --model random:smollm2-135m --quant q4_1; done
lora split 135m-prof --model random:smollm2-135m --quant q4_1 --profile-reps 3
for t in block split; do lora $t 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
