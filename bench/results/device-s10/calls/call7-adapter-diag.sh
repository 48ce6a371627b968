#!/usr/bin/env bash
# Session 10 diagnostic: the engine's adapter path at Qwen2.5-0.5B shapes (HF bf16 directory, random
# rank-16 PEFT adapter on all seven projections) against Candle f32 with the adapter attached:
# wick bench decode --adapter (engine prefill TF32 and f32, engine steps, Candle handoff).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
d=$S/dense; mkdir -p $d
t0=$(date +%s)
python3 scripts/device/random_hf_model.py benches/anchors/qwen2.5_0.5b_config.json wordlevel $d/qwen2.5-0.5b-hf > $OUT/make.log 2>&1
python3 scripts/device/random_peft_adapters.py $d/adapters --count 1 --shape qwen2.5-0.5b >> $OUT/make.log 2>&1
echo "made in $(( $(date +%s) - t0 )) s"
timeout 150 $S/bin/wick bench decode --model $d/qwen2.5-0.5b-hf --adapter $d/adapters/a0 --prompt-tokens 299 \
  --decode-tokens 48 --compare 48 --prefill-reps 1 --out $OUT/decode-adapter.json > $OUT/decode-adapter.log 2>&1
echo "bench rc=$? after $(( $(date +%s) - t0 )) s"
grep -E "max \|logit|adapter|tok/s" $OUT/decode-adapter.log | head -30
