#!/usr/bin/env bash
# Session 17 call 6: which of the batch-1 producers' loads cost the 135M adapter step. N = the
# final binary (80fb01b's kernels); two diagnostic builds of it (wrong results by design): F = the
# producers skip their A loads (A taken as 1), G = the producers skip their x loads (x taken as
# 0.5; they still wait for the previous kernel). Call 2's E (no loads at all) measured 0.906x
# against N's 0.886x. 135M adapters, N F G twice.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in N F G; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 100 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for v in N F G N F G; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
