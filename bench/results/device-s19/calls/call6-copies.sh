#!/usr/bin/env bash
# Session 19 call 6: two binaries in .device/binAB/ab.tar.xz. A = session 18's final (c4c7b40
# kernels); C = A + XA_COPIES: a batch-1 launch's producers store each xa value 8 times and each
# row block reads its own copy (calls 3-5: the rows' epilogue, gate/up +800 ns, queued on one
# line). 135M batch 1 adapters (A, C, three rounds), 1.7B Q8_0 and Q4_K_M (A, C), gpu-check on C.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
V="A C"
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in $V; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for round in 1 2 3; do for v in $V; do lora $v 135m-$round --model random:smollm2-135m --quant q4_1; done; done
for v in A C; do lora $v 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
for v in A C; do lora $v 1.7b-q4_k_m --model random:smollm2-1.7b --quant q4_k_m --batch 4 --decode-tokens 128; done
timeout 150 $S/binC/wick bench gpu-check --out $R/gpu-check-C.json > $R/gpu-check-C.log 2>&1; el "gpu-check C rc=$? $(grep -E 'cases' $R/gpu-check-C.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-C.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
