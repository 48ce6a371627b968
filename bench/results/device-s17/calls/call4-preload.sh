#!/usr/bin/env bash
# Session 17 call 4: N = call 2's N; Q = N + batch-1 producers holding their A columns (times the
# norm weights) in registers, loaded before the PDL wait, so that after it only x's loads (issued
# together) stand before the stored xa; task warps at batch 1 so that a lane holds at most 6
# float4 columns. gpu-check on Q (new batch-1 LoRA shapes: k 1536 two-warp tasks, k 6400 the
# loop fallback); adapters at the 135M proxy (N Q three times), 1.7B Q8_0 and Q4_K_M on Q.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in N Q; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
timeout 200 $S/binQ/wick bench gpu-check --out $R/gpu-check-Q.json > $R/gpu-check-Q.log 2>&1; el "gpu-check Q rc=$? $(grep -E 'cases' $R/gpu-check-Q.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-Q.log | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in N Q N Q N Q; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
lora Q 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128
lora Q 1.7b-q4_k_m --model random:smollm2-1.7b --quant q4_k_m --batch 4 --decode-tokens 128
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
