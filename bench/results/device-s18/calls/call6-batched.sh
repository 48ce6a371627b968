#!/usr/bin/env bash
# Session 18 call 6: two binaries in .device/binAB/ab.tar.xz. F = call 5's F; G = F with the
# batched LoRA rows back on the plain xa test (F's ordered test spilled there: batch 8 0.882x ->
# 0.868x). gpu-check on G; adapters at the 135M proxy (F G twice); ncu as in call 4 on G's
# gate/up LoRA launch (the next stalls once rows no longer wait for xa before their loads).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in F G; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
timeout 120 $S/binG/wick bench gpu-check --out $R/gpu-check-G.json > $R/gpu-check-G.log 2>&1; el "gpu-check G rc=$? $(grep -E 'cases' $R/gpu-check-G.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-G.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in F G F G; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
WICK_CUDA_GRAPH=0 timeout 120 $NCU --clock-control none --cache-control none --section SourceCounters --section WarpStateStats \
  --warp-sampling-interval 0 -k "regex:^qmv_q8x_swiglu_lora_q4_1$" --launch-skip 40 --launch-count 1 \
  --page source --print-source sass --csv $S/binG/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --batch 1 --compare 1 \
  --prompt-tokens 16 --decode-tokens 8 > $R/sass-lora-G.csv 2> $R/sass-lora-G.err; el "ncu rc=$?"
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
