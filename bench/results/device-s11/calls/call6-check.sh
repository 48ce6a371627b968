#!/usr/bin/env bash
# Session 11 call 6: `wick bench gpu-check` on the final binary (the Q4_K/Q6_K part decoders shared
# by the f32 and the int8 dot products).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
bash scripts/device/on-device.sh stage > $OUT/stage.log 2>&1
timeout 150 $S/bin/wick bench gpu-check --out $OUT/gpu-check.json > $OUT/gpu-check.log 2>&1
echo "gpu-check rc=$? $(grep -E 'cases' $OUT/gpu-check.log | tail -1)" | tee $OUT/summary.txt
grep -E "FAIL" $OUT/gpu-check.log | head -20
