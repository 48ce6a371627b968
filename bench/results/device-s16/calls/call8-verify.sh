#!/usr/bin/env bash
# Session 16 call 8: the committed tree after a host-side refactor (LoraEpilogue holding the
# kernel's LoraArgs and the L2 window; no kernel change): gpu-check and the 135M adapter bench.
set -u
S=/tmp/wick-device; mkdir -p $S/bin
xz -dc .device/binB/wick.xz > $S/bin/wick && chmod +x $S/bin/wick
timeout 200 $S/bin/wick bench gpu-check --out $OUT/gpu-check.json > $OUT/gpu-check.log 2>&1
echo "gpu-check rc=$? $(grep -E 'cases' $OUT/gpu-check.log | tail -1)"
grep FAIL $OUT/gpu-check.log
timeout 120 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $OUT/lora-135m.json > $OUT/lora-135m.log 2>&1
echo "lora rc=$? $(grep -E 'adapter/none' $OUT/lora-135m.log | head -2 | tr '\n' ' ')"
