#!/usr/bin/env bash
# Session 17 call 3: N = call 2's N; P = N + the producers' shrink loop issuing each lane's loads
# predicated four columns at a time (the unrolled strided loop had left remainder iterations one
# round trip each) and WICK_LORA_TASK_K (inputs a producer warp takes on: 512 default = one warp a
# task at k 576; 256 = two; 128 = four). Call 2's diagnostic E (producers doing nothing) put the
# 135M batch-1 step at 0.906x: the producers end the launch. gpu-check on P; 135M adapters.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in N P; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
timeout 200 $S/binP/wick bench gpu-check --out $R/gpu-check-P.json > $R/gpu-check-P.log 2>&1; el "gpu-check P rc=$? $(grep -E 'cases' $R/gpu-check-P.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-P.log | head -20 >> $OUT/summary.txt
lora() { # variant tag task_k args...
  local v=$1 tag=$2 tk=$3; shift 3
  WICK_LORA_TASK_K=$tk timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v-$tk.json > $R/lora-$tag-$v-$tk.log 2>&1
  el "lora $tag $v task_k=$tk rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v-$tk.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v-$tk.json 2>/dev/null)"
}
for rep in 1 2; do
  lora N 135m 512 --model random:smollm2-135m --quant q4_1
  for tk in 512 256 128; do lora P 135m $tk --model random:smollm2-135m --quant q4_1; done
done
for tk in 512 256; do lora P 1.7b-q8_0 $tk --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
