#!/usr/bin/env bash
# Session 12 call 2: programmatic dependent launch (PDL) for the decode step's kernels, A/B in one
# call (WICK_DECODE_PDL=0 vs the default): gpu-check with PDL on, `bench decode` on the 135M proxy
# and SmolLM2-1.7B Q4_1 shapes (random blocks), `bench decode-batch` batch 8 (512-token prompts),
# `bench decode-lora` at 135M Q4_1.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_1 r17-q4_1 &
timeout 200 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
wait; el made
for pdl in 0 1; do
  for m in r135-q4_1 r17-q4_1; do
    WICK_DECODE_PDL=$pdl timeout 60 $S/bin/wick bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 4 --prefill-reps 2 --out $R/dec-$m-pdl$pdl.json > $R/dec-$m-pdl$pdl.log 2>&1
    el "decode $m pdl=$pdl rc=$? $(grep -E '^wick engine \(' $R/dec-$m-pdl$pdl.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ';')"
  done
  WICK_DECODE_PDL=$pdl timeout 60 $S/bin/wick bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --prompt-tokens 512 --decode-tokens 128 --out $R/batch8-pdl$pdl.json > $R/batch8-pdl$pdl.log 2>&1
  el "batch8 pdl=$pdl rc=$? $(grep -iE 'tok/s' $R/batch8-pdl$pdl.log | tail -3 | tr '\n' ';')"
  WICK_DECODE_PDL=$pdl timeout 100 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-pdl$pdl.json > $R/lora-pdl$pdl.log 2>&1
  el "lora pdl=$pdl rc=$? $(grep -E 'adapter/none' $R/lora-pdl$pdl.log | head -1)"
done
tar czf $OUT/r.tgz -C $OUT r
