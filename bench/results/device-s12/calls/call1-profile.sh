#!/usr/bin/env bash
# Session 12 call 1: where an adapter's cost and batch 8's time sit. `bench decode-lora
# --profile-reps 5` on the 135M proxy (random weights, Q4_1): GPU us per kernel kind of one eager step
# for batch 1 / batch 8, without and with adapters; at the e2e defaults (32-token prompt) and at the
# batch-8 goal's shape (512-token prompt, 128 decoded).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > $R/gpu.txt
timeout 120 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --profile-reps 5 --out $R/lora-135m.json > $R/lora-135m.log 2>&1
echo "lora rc=$?" >> $OUT/summary.txt
timeout 150 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --prompt-tokens 512 --decode-tokens 128 --profile-reps 5 --out $R/lora-135m-p512.json > $R/lora-135m-p512.log 2>&1
echo "lora p512 rc=$?" >> $OUT/summary.txt
timeout 150 $S/bin/wick bench decode-lora --model random:smollm2-1.7b --quant q4_1 --batch 4 --decode-tokens 128 --profile-reps 3 --out $R/lora-17b.json > $R/lora-17b.log 2>&1
echo "lora 1.7b rc=$?" >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt; grep -v '^{' $R/lora-135m.log $R/lora-135m-p512.log $R/lora-17b.log | tail -80
