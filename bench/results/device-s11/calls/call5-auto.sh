#!/usr/bin/env bash
# Session 11 call 5: the final binary (call 3's kernels, split-K reverted, Int8Policy::Auto as the
# default): `bench decode` on the 135M proxy and on SmolLM2-1.7B Q4_1 (the graph on f32 activations
# beside the default in each report), `bench decode-lora` at 135M. No llama.cpp in this call: the
# anchors are call 3's.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_1 r17-q4_1 & wait
for m in r135-q4_1 r17-q4_1; do
  timeout 60 $S/bin/wick bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 4 --prefill-reps 2 --out $R/dec-$m.json > $R/dec-$m.log 2>&1
  echo "== $m rc=$?" >> $OUT/summary.txt
  grep -E "^wick engine \(|max \|logit diff\|" $R/dec-$m.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' >> $OUT/summary.txt
done
timeout 100 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-135m.json > $R/lora-135m.log 2>&1
echo "lora rc=$? $(grep -E 'adapter/none' $R/lora-135m.log | head -2)" >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
