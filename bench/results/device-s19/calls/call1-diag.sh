#!/usr/bin/env bash
# Session 19 call 1: two binaries in .device/binAB/ab.tar.xz. A = session 18's final (c4c7b40
# kernels); D = A + a diagnostic counter in the batch-1 LoRA rows (kernels/quant_matvec.cu, not
# committed: rows, rows whose first xa look found XA_PENDING, their wait in clocks; printed from
# the lm_head launch every 256 steps). Where the adapter step's time goes: do the rows lose the
# race with their launch's producers inside the captured graph?
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in A D; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
lora D 135m --model random:smollm2-135m --quant q4_1
grep XADIAG $R/lora-135m-D.log | tail -8 >> $OUT/summary.txt
lora D 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128
grep XADIAG $R/lora-1.7b-q8_0-D.log | tail -8 >> $OUT/summary.txt
for v in A A; do lora $v 135m --model random:smollm2-135m --quant q4_1; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
