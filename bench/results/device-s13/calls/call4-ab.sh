#!/usr/bin/env bash
# Session 13 call 4: A/B in one call. A = .device/binA (commit 02b34f4: batched mat-vecs two warps a
# row); B = .device/binB: four warps a row (16-warp blocks, at most 64 registers), producer blocks
# of the batched launches take several tasks (k / 512 warps each). gpu-check on B; adapters
# (decode-lora 135M with the kind profile, 1.7B Q8_0 batch 4), batch 8, A and B alternating.
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
mk smollm2-135m q4_1 r135-q4_1 &
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check B rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
wait; el made
b8() {
  timeout 60 $S/bin$1/wick bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --prompt-tokens 512 --decode-tokens 128 --out $R/batch8-$1.json > $R/batch8-$1.log 2>&1
  el "batch8 $1 rc=$? $(grep -E '^graph' $R/batch8-$1.log | tail -1)"
}
lora() { # variant tag [args]
  local v=$1 tag=$2; shift 2
  timeout 150 $S/bin$v/wick bench decode-lora "$@" --out $R/lora-$tag-$v.json > $R/lora-$tag-$v.log 2>&1
  el "lora $tag $v rc=$? $(grep -E 'adapter/none' $R/lora-$tag-$v.log | head -1)"
}
for v in A B; do lora $v prof --model random:smollm2-135m --quant q4_1 --profile-reps 3; done
for v in A B; do b8 $v; done
for v in B A; do lora $v plain --model random:smollm2-135m --quant q4_1; done
for v in A B; do lora $v 17b --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
for v in B A; do b8 $v; done
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
