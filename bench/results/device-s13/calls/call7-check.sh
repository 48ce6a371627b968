#!/usr/bin/env bash
# Session 13 call 7: the final tree's binary (the LoRA producers' shared helpers): gpu-check, and
# the 135M adapter ratios once (decode-lora).
set -u
S=/tmp/wick-device; R=$OUT/r; mkdir -p $R $S/bin
python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $R/info.log 2>&1
timeout 120 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; echo "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)" | tee -a $OUT/summary.txt
timeout 60 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora.json > $R/lora.log 2>&1; echo "lora rc=$? $(grep adapter/none $R/lora.log)" | tee -a $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
