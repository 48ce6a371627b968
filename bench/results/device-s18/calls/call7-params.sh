#!/usr/bin/env bash
# Session 18 call 7: two binaries in .device/binAB/ab.tar.xz. G = call 6's G; H = G with LoraEpi's
# fields reordered (what a row block reads first, A's fields after), so that a LoRA mat-vec's
# parameters touch two 64-byte lines of the parameter bank before its loads instead of three
# (ncu, call 6: two serial constant-cache misses at the LoRA kernels' start against one).
# gpu-check on H; adapters at the 135M proxy (G H three times) and SmolLM2-1.7B Q8_0 (G H).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in G H; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
timeout 120 $S/binH/wick bench gpu-check --out $R/gpu-check-H.json > $R/gpu-check-H.log 2>&1; el "gpu-check H rc=$? $(grep -E 'cases' $R/gpu-check-H.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-H.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in G H G H G H; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
for v in G H; do lora $v 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
