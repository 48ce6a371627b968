#!/usr/bin/env bash
# Session 19 call 2: four binaries in .device/binAB/ab.tar.xz. A = session 18's final (c4c7b40
# kernels); L150 / L250 / L400 = A + the o and down LoRA rows' first xa look issued late
# (lora_xa_issue_late: the row's weight lines asked into L1, LOOK_DELAY clocks of spin, then the
# look, then the dot product), LOOK_DELAY 150 / 250 / 400. 135M batch 1 adapters (A and the three,
# three rounds), 1.7B Q8_0 (A, L250), gpu-check on L250.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
V="A L150 L250 L400"
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in $V; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
lora() { # variant tag args...
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag-$v.json 2>/dev/null)"
}
for round in 1 2 3; do for v in $V; do lora $v 135m-$round --model random:smollm2-135m --quant q4_1; done; done
for v in A L250; do lora $v 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
timeout 150 $S/binL250/wick bench gpu-check --out $R/gpu-check-L250.json > $R/gpu-check-L250.log 2>&1; el "gpu-check L250 rc=$? $(grep -E 'cases' $R/gpu-check-L250.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check-L250.log | grep -v "0 failed" | head -20 >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
