#!/usr/bin/env bash
# Session 19 call 7 (the gpu-summary source): the final binary (.device/binB, c871173) against llama.cpp CUDA
# built in this call from the same sdist: issue 14.4 (SmolLM2-1.7B shapes Q4_K_M / Q4_1 / Q8_0,
# random blocks in llama-quantize's type choice), the 135M proxy (14.3: decode, prefill, batch 8),
# adapters (14.1/14.2: 135M, and 1.7B Q8_0 batch 4), gpu-check. Session 18's call 8 with
# e2e-s19-final.json; the extras come from .device/extrasmin (no Liger wheel, no MiniLM files).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
mkdir -p $S/bin && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extrasmin/e2e-extras.tar.xz $S
bash scripts/device/build-llamacpp-cuda.sh bg > /dev/null 2>&1
# The call carries the vocab xz'd and extras without the wheels and MiniLM files (the working tree's
# 64 MiB limit): unpacked here.
mkdir -p .device/vocab && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/vocabxz/smollm2-vocab.gguf.xz .device/vocab/smollm2-vocab.gguf
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; res=$S/results; mkdir -p $big $res
bash scripts/device/bigger-models.sh make-blocks > $res/make.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $res/make135.log 2>&1 &
timeout 200 $S/bin/wick bench gpu-check --out $res/gpu-check.json > $res/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $res/gpu-check.log | tail -1)"
wait; el "made"
for t in q4_k_m q4_1 q8_0; do
  timeout 90 $S/bin/wick bench decode --model $big/smollm2-1.7b.$t.gguf --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --compare 8 --prefill-reps 3 --out $res/wick-big-$t.json > $res/wick-big-$t.log 2>&1; el "wick $t rc=$?"
done
WICK_DECODE_INT8=all timeout 90 $S/bin/wick bench decode --model $big/smollm2-1.7b.q4_k_m.gguf --device cuda --prompt-tokens 512 \
  --decode-tokens 128 --compare 4 --prefill-reps 2 --out $res/int8all-big-q4_k_m.json > $res/int8all-big-q4_k_m.log 2>&1; el "wick all q4_k_m rc=$?"
export WICK_SMOLLM2_GGUF=$big/r135-q4_1.gguf
timeout 120 bash scripts/device/e2e.sh decode > $res/e2e-decode.log 2>&1; el "e2e decode rc=$?"
timeout 250 bash scripts/device/e2e.sh lora "135m-q4_1 1.7b-q8_0" > $res/e2e-lora.log 2>&1; el "e2e lora rc=$?"
bash scripts/device/build-llamacpp-cuda.sh wait 400 > $res/llamacpp-wait.log 2>&1; el "llama.cpp build rc=$?"
bin=$S/llamacpp/build/bin
for t in q4_k_m q4_1 q8_0; do
  timeout 60 $bin/llama-bench -m $big/smollm2-1.7b.$t.gguf -p 512 -n 128 -ngl 99 -r 3 -o json > $res/llamacpp-big-$t.json 2> $res/llamacpp-big-$t.log
done; el "llama-bench big"
timeout 90 bash scripts/device/e2e.sh llamacpp 10 > $res/e2e-llamacpp.log 2>&1; el "e2e llamacpp rc=$?"
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s19-final.json
tar czf $OUT/results.tgz -C $S results
for f in $res/wick-big-*.log $res/int8all-*.log; do echo "== $f"; grep -E "^wick engine \(" $f | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/'; done >> $OUT/summary.txt
grep -hE '"avg_ts"|n_prompt|n_gen' $res/llamacpp-big-*.json | tr -s ' ' | paste - - - | head -12 >> $OUT/summary.txt
grep -hE "adapter/none" $res/e2e-lora.log | tail -4 >> $OUT/summary.txt
tail -4 $res/e2e-llamacpp.log >> $OUT/summary.txt
cat $OUT/summary.txt
