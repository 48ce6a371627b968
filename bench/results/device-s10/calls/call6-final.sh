#!/usr/bin/env bash
# Session 10 final call (fresh machine): issue 14.4 (SmolLM2-1.7B shapes Q4_K_M / Q4_1 / Q8_0, random
# blocks in llama-quantize's type choice, one file read by both engines) wick vs llama.cpp built in
# this call; the 135M proxy (random weights at the default GGUF's shapes and types) for 14.3;
# gpu-check; `wick generate` end to end on HF bf16 directories (dense-models.sh generate).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
bash scripts/device/build-llamacpp-cuda.sh bg > /dev/null 2>&1
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
for v in qwen2 llama-bpe; do python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/qlora/ggml-vocab-$v.gguf.xz $S/ggml-vocab-$v.gguf; done
export WICK_QWEN2_VOCAB=$S/ggml-vocab-qwen2.gguf WICK_LLAMA3_VOCAB=$S/ggml-vocab-llama-bpe.gguf
big=$S/big; res=$S/results; mkdir -p $big $res
bash scripts/device/bigger-models.sh make-blocks > $res/make.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $res/make135.log 2>&1 &
bash scripts/device/dense-models.sh make > $res/dense-make.log 2>&1 &
timeout 200 $S/bin/wick bench gpu-check --out $res/gpu-check.json > $res/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $res/gpu-check.log | tail -1)"
wait; el "made"
for t in q4_k_m q4_1 q8_0; do
  timeout 90 $S/bin/wick bench decode --model $big/smollm2-1.7b.$t.gguf --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --out $res/wick-big-$t.json > $res/wick-big-$t.log 2>&1; el "wick $t rc=$?"
done
export WICK_SMOLLM2_GGUF=$big/r135-q4_1.gguf
timeout 120 bash scripts/device/e2e.sh decode > $res/e2e-decode.log 2>&1; el "e2e decode rc=$?"
timeout 150 bash scripts/device/dense-models.sh generate > $res/dense-generate.log 2>&1; el "dense generate rc=$?"
bash scripts/device/build-llamacpp-cuda.sh wait 330 > $res/llamacpp-wait.log 2>&1; el "llama.cpp build rc=$?"
bin=$S/llamacpp/build/bin
for t in q4_k_m q4_1 q8_0; do
  timeout 60 $bin/llama-bench -m $big/smollm2-1.7b.$t.gguf -p 512 -n 128 -ngl 99 -r 3 -o json > $res/llamacpp-big-$t.json 2> $res/llamacpp-big-$t.log
done; el "llama-bench big"
timeout 90 bash scripts/device/e2e.sh llamacpp 10 > $res/e2e-llamacpp.log 2>&1; el "e2e llamacpp rc=$?"
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s10-final2.json
tar czf $OUT/results.tgz -C $S results
