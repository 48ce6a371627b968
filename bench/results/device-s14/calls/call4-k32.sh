#!/usr/bin/env bash
# Session 14 call 4: .device/binB = 32-warp blocks for the K-quant batch-1 mat-vecs (8 otherwise)
# against llama.cpp CUDA built in this call: SmolLM2-1.7B shapes Q4_K_M / Q4_1 / Q8_0 decode and
# prefill, Q4_K_M also with 16-warp blocks forced (call 3's default), alternating; gpu-check.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
mkdir -p $S/bin && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
bash scripts/device/build-llamacpp-cuda.sh bg > /dev/null 2>&1
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; res=$S/results; mkdir -p $big $res
bash scripts/device/bigger-models.sh make-blocks > $res/make.log 2>&1 &
timeout 150 $S/bin/wick bench gpu-check --out $res/gpu-check.json > $res/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $res/gpu-check.log | tail -1)"
wait; el "made"
dec() { # tag warps(or -) type reps
  local tag=$1 w=$2 t=$3
  WICK_DECODE_MV_WARPS=$w timeout 90 $S/bin/wick bench decode --model $big/smollm2-1.7b.$t.gguf --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --compare 4 --prefill-reps $4 --out $res/$tag-big-$t.json > $res/$tag-big-$t.log 2>&1
  el "$tag $t rc=$? $(grep -E '^wick engine \(CUDA graph\)' $res/$tag-big-$t.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ' ')"
}
dec wick - q4_k_m 3; dec w16 16 q4_k_m 1; dec again - q4_k_m 1; dec w16again 16 q4_k_m 1
dec wick - q4_1 3; dec wick - q8_0 3
bash scripts/device/build-llamacpp-cuda.sh wait 400 > $res/llamacpp-wait.log 2>&1; el "llama.cpp build rc=$?"
bin=$S/llamacpp/build/bin
for t in q4_k_m q4_1 q8_0; do
  timeout 60 $bin/llama-bench -m $big/smollm2-1.7b.$t.gguf -p 512 -n 128 -ngl 99 -r 3 -o json > $res/llamacpp-big-$t.json 2> $res/llamacpp-big-$t.log
done; el "llama-bench big"
rm -f $res/again-big-* $res/w16again-big-*.json
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s14-k32.json
tar czf $OUT/results.tgz -C $S results
grep -hE '"avg_ts"|n_prompt|n_gen' $res/llamacpp-big-*.json | tr -s ' ' | paste - - - | head -12 >> $OUT/summary.txt
cat $OUT/summary.txt
