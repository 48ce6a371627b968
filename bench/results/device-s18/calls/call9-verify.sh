#!/usr/bin/env bash
# Session 18 call 9: the committed tree (c4c7b40: call 8's kernels and engine, the producer task
# split moved into matvec_grid with a unit test, docs) on the device: gpu-check, adapters at the
# 135M proxy three times and SmolLM2-1.7B Q8_0 once. A verification, not the gpu-summary source.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R $S/bin
python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
timeout 120 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
lora() { # tag args...
  local tag=$1; shift
  timeout 150 $S/bin/wick bench decode-lora "$@" --out $R/lora-$tag.json > $R/lora-$tag.log 2>&1
  el "lora $tag rc=$? $(grep -E 'adapter/none' $R/lora-$tag.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag.json 2>/dev/null)"
}
for i in 1 2 3; do lora 135m-$i --model random:smollm2-135m --quant q4_1; done
lora 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
