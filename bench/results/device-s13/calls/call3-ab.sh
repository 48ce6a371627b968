#!/usr/bin/env bash
# Session 13 call 3: A/B in one call. A = .device/binA (call 2's B, commit 02b34f4); B = .device/binB:
# the LoRA rows load their first row's B values before the PDL wait and each next row's during the
# current row's product; producer blocks of the batched launches take several tasks (k / 512 warps
# each). gpu-check on B; adapters (decode-lora with the kind profile), batch 8, decode 135M proxy and
# SmolLM2-1.7B Q4_1 (random blocks), A and B alternating.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
unxz() { mkdir -p $S/bin$1 && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/bin$1/wick.xz $S/bin$1/wick && chmod +x $S/bin$1/wick; }
unxz A & unxz B & wait
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_1 r17-q4_1 &
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
lora() { # variant tag [args]
  local v=$1 tag=$2; shift 2
  timeout 120 $S/bin$v/wick bench decode-lora --model random:smollm2-135m --quant q4_1 "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -1)"
}
for v in A B; do lora $v prof --profile-reps 3; done
for v in B A; do lora $v plain; done
for v in A B; do b8 $v; done
for v in A B; do dec $v r135-q4_1; done
for v in A B; do dec $v r17-q4_1; done
for v in A B; do lora $v plain; done
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
