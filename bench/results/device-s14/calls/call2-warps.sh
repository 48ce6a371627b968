#!/usr/bin/env bash
# Session 14 call 2: one binary (.device/binB), the batch-1 mat-vecs in blocks of 4 (as before),
# 8 or 16 warps (WICK_DECODE_MV_WARPS; one warp a row, a wave of 32 warps an SM either way): fewer,
# bigger blocks normalize/quantize x fewer times (every block reads all of x and the norm
# weights: 16 MB of L2 reads per launch for SmolLM2-1.7B's down projection in 512 blocks) and give
# a LoRA producer task more warps. gpu-check at 16 and 8 warps; decode at the 135M proxy and
# SmolLM2-1.7B shapes, alternating; adapters at the 135M proxy.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R $S/bin
python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; mkdir -p $big
bash scripts/device/bigger-models.sh make-blocks > $R/make.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $R/make135.log 2>&1 &
for w in 16 8; do
  WICK_DECODE_MV_WARPS=$w timeout 150 $S/bin/wick bench gpu-check --out $R/gpu-check-$w.json > $R/gpu-check-$w.log 2>&1; el "gpu-check w$w rc=$? $(grep -E 'cases' $R/gpu-check-$w.log | tail -1)"
done
wait; el made
dec() { # warps model tag
  local w=$1 m=$2 tag=$3
  WICK_DECODE_MV_WARPS=$w timeout 60 $S/bin/wick bench decode --model $m --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$tag-w$w.json > $R/dec-$tag-w$w.log 2>&1
  el "dec $tag w$w rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$tag-w$w.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ' ')"
}
for t in q4_1 q4_k_m q8_0; do
  for w in 4 8 16 4 8 16; do dec $w $big/smollm2-1.7b.$t.gguf $t; done
done
for w in 4 8 16 4 8 16; do dec $w $big/r135-q4_1.gguf r135; done
lora() { # warps
  WICK_DECODE_MV_WARPS=$1 timeout 150 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-w$1.json > $R/lora-w$1.log 2>&1
  el "lora w$1 rc=$? $(grep -E 'adapter/none' $R/lora-w$1.log | head -2 | tr '\n' ' ')"
}
for w in 4 8 16 4 8 16; do lora $w; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
