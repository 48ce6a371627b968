#!/usr/bin/env bash
# Session 19 call 3: one diagnostic binary S in .device/binAB/ab.tar.xz = A + each batch-1 mat-vec
# launch's span (first row block past its PDL wait to the last row block's end, %globaltimer),
# summed per kind and LoRA (call3-span/span-diag.patch, not committed). Where the adapter step's
# 70 us go, launch kind by launch kind.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
mkdir -p $S/binS && mv $S/ab/S/wick $S/binS/wick && chmod +x $S/binS/wick
for i in 1 2; do
  timeout 150 $S/binS/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$i.json > $R/lora-$i.log 2>&1
  el "run $i rc=$? $(grep -E 'adapter/none' $R/lora-$i.log | head -1)"
  grep SPAN $R/lora-$i.log | tail -24 >> $OUT/summary.txt
done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
