#!/usr/bin/env bash
# Session 15 call 5: two binaries in one xz stream (.device/binAB/ab.tar.xz). I = call 4's I
# (2b896e2: slots read before the PDL wait); J = I + the batch-1 LoRA mat-vecs loading B of a
# warp's first row before the wait and each next row's one row ahead. gpu-check on J; adapters at
# the 135M proxy (I J alternating twice) and SmolLM2-1.7B Q8_0 batch 4 (J).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in I J; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 200 $S/binJ/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check J rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ')"
}
for v in I J I J; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
lora J 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
