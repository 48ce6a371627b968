#!/usr/bin/env bash
# Session 16 call 7: gpu-check on the final binary with the bf16 step-2 loss judged against Candle
# f32 at the engine's own step-1 parameters (.device/binB; kernels as call 5's).
set -u
S=/tmp/wick-device; mkdir -p $S/bin
xz -dc .device/binB/wick.xz > $S/bin/wick && chmod +x $S/bin/wick
timeout 200 $S/bin/wick bench gpu-check --out $OUT/gpu-check.json > $OUT/gpu-check.log 2>&1
echo "rc=$? $(grep -E 'cases' $OUT/gpu-check.log | tail -1)"
grep -E "trn_engine_(loss|grad_norm) .*step 2" $OUT/gpu-check.log
grep FAIL $OUT/gpu-check.log
