#!/usr/bin/env bash
# Session 13 call 6: the producer-block count passed by the host (LoraEpi.producers) instead of two
# integer divisions in every block. A = .device/binA (call 5's binary), B = .device/binB (final).
# gpu-check on B; adapters at the 135M proxy, A and B alternating; B's run through e2e.sh lora
# (bundled for gpu-summary: issue 14.1/14.2 rows).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; res=$S/results; mkdir -p $R $res
unxz() { mkdir -p $S/bin$1 && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/bin$1/wick.xz $S/bin$1/wick && chmod +x $S/bin$1/wick; }
unxz A & unxz B & wait
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 200 $S/binB/wick bench gpu-check --out $res/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check B rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
lora() { timeout 100 $S/bin$1/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$1-$2.json > $R/lora-$1-$2.log 2>&1; el "lora $1 rc=$? $(grep -E 'adapter/none' $R/lora-$1-$2.log | head -1)"; }
lora A 1; lora B 1; lora A 2
WICK=$S/binB/wick timeout 100 bash scripts/device/e2e.sh lora 135m-q4_1 > $R/e2e-lora.log 2>&1; el "e2e lora B rc=$? $(grep adapter/none $R/e2e-lora.log)"
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s13-lora.json
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
