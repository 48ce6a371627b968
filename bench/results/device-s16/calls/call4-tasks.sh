#!/usr/bin/env bash
# Session 16 call 4: two binaries in one xz stream (.device/binAB/ab.tar.xz). A = f84d4e6 (L2 window
# where an adapter fits the set-aside, one-wave grids for the four-warps-a-row LoRA kernels, the
# producers inlined as before); B = A + batch-1 producer tasks of a warp or two at k <= 4096 (one
# task a block above), a one-warp task storing without a barrier. gpu-check on B; adapters at the
# 135M proxy (A B alternating twice) and SmolLM2-1.7B Q8_0 batch 1 / 4.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in A B; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check B rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in A B A B; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
for v in A B; do lora $v 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
