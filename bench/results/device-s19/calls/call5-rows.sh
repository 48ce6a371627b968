#!/usr/bin/env bash
# Session 19 call 5: call 4's S and M1 (batch-1 LoRA rows without their epilogue: slot -1, no B /
# xa loads; producers run; wrong batch-1 results, timing only), and S with WICK_ADAPTER_L2=0 (the
# LoRA launches without their L2 access-policy window). Per-launch spans as in call 3.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in S M1; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
one() { # tag variant [env...]
  local tag=$1 v=$2; shift 2
  env "$@" timeout 150 $S/bin$v/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$tag.json > $R/lora-$tag.log 2>&1
  el "$tag rc=$? $(grep -E 'adapter/none' $R/lora-$tag.log | head -1 | cut -c1-60) $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()})' $R/lora-$tag.json 2>/dev/null)"
  grep SPAN $R/lora-$tag.log | tail -12 | grep -v "lora 0 kind 4\|collisions" | tr '\n' ';' >> $OUT/summary.txt; echo >> $OUT/summary.txt
}
for i in 1 2; do one S-$i S; one M1-$i M1; one S-noL2-$i S WICK_ADAPTER_L2=0; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
