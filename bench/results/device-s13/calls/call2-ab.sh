#!/usr/bin/env bash
# Session 13 call 2: A/B in one call. A = .device/call1 (GPU code of session 12's final tree);
# B = .device/binB: batched mat-vecs two warps a row (each on half the sequences), LoRA producers
# read the slot and ask for their A row before the PDL wait, int8 prologue in one pass (the
# RMSNorm's scale applied to each row's sum). gpu-check on B; decode 135M proxy and SmolLM2-1.7B
# Q4_1 / Q4_K_M (random blocks), batch 8, adapters (decode-lora, kind profile), A and B alternating.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1; mkdir -p $S/binA && cp $S/bin/wick $S/binA/wick
mkdir -p $S/binB && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/binB/wick && chmod +x $S/binB/wick
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_1 r17-q4_1 & mk smollm2-1.7b q4_k_m r17-q4_k_m &
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check B rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
wait; el made
dec() { # variant model
  local w=$S/bin$1/wick tag=$2-$1
  timeout 70 $w bench decode --model $big/$2.gguf --prompt-tokens 512 --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$tag.json > $R/dec-$tag.log 2>&1
  el "decode $tag rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$tag.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ';')"
}
b8() {
  timeout 60 $S/bin$1/wick bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --prompt-tokens 512 --decode-tokens 128 --out $R/batch8-$1.json > $R/batch8-$1.log 2>&1
  el "batch8 $1 rc=$? $(grep -E '^graph' $R/batch8-$1.log | tail -1)"
}
lora() {
  timeout 120 $S/bin$1/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --profile-reps 3 --out $R/lora-$1.json > $R/lora-$1.log 2>&1
  el "lora $1 rc=$? $(grep -E 'adapter/none|ratio' $R/lora-$1.log | head -3 | tr '\n' ';')"
}
for v in A B; do dec $v r135-q4_1; done
for v in A B; do b8 $v; done
for v in A B; do lora $v; done
for v in A B; do dec $v r17-q4_1; done
for v in A B; do dec $v r17-q4_k_m; done
for v in B A; do b8 $v; done
for v in B A; do dec $v r135-q4_1; done
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
