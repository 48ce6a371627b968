#!/usr/bin/env bash
# Session 19 call 4: diagnostic binaries (call3-span/span-modes.patch, not committed), all with
# call 3's per-launch spans (M1 was built but left out: the 64 MiB tree limit): S = call 3's; M1 = batch-1 LoRA rows without their epilogue (slot -1:
# no B / xa loads, no delta; producers run); M2 = producers that store 0 at once (no loads; rows
# as in S); M3 = S + each row's B line asked into L2 before the PDL wait. M1 and M2 give wrong
# batch-1 results (timing only). 135M q4_1, twice each.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
V="S M2 M3"
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in $V; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
for i in 1 2; do for v in $V; do
  timeout 150 $S/bin$v/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$v-$i.json > $R/lora-$v-$i.log 2>&1
  el "$v run $i rc=$? $(grep -E 'adapter/none' $R/lora-$v-$i.log | head -1 | cut -c1-60) $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()})' $R/lora-$v-$i.json 2>/dev/null)"
  grep SPAN $R/lora-$v-$i.log | tail -12 | grep -v "lora 0 kind 4\|collisions" | tr '\n' ';' >> $OUT/summary.txt; echo >> $OUT/summary.txt
done; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
