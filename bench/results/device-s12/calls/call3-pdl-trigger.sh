#!/usr/bin/env bash
# Session 12 call 3: where the decode kernels let the next kernel be scheduled. Binary A (.device/call1,
# commit in its manifest): pdl_trigger at the start of every kernel (call 2's binary); binary B
# (.device/binB): no explicit trigger in the mat-vecs (they let the next kernel in as they exit),
# attention triggers after its chunk loop. Each with WICK_DECODE_PDL=0 as the anchor, same call:
# `bench decode` 135M proxy and SmolLM2-1.7B Q4_1 (512-token prompt), `decode-batch` batch 8.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1; mkdir -p $S/binA && cp $S/bin/wick $S/binA/wick
mkdir -p $S/binB && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/binB/wick && chmod +x $S/binB/wick
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_1 r17-q4_1 & wait; el made
run() { # variant pdl
  local w=$S/bin$1/wick tag=$1-pdl$2
  for m in r135-q4_1 r17-q4_1; do
    WICK_DECODE_PDL=$2 timeout 60 $w bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$m-$tag.json > $R/dec-$m-$tag.log 2>&1
    el "decode $m $tag rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$m-$tag.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ';')"
  done
  WICK_DECODE_PDL=$2 timeout 60 $w bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --prompt-tokens 512 --decode-tokens 128 --out $R/batch8-$tag.json > $R/batch8-$tag.log 2>&1
  el "batch8 $tag rc=$? $(grep -E '^graph' $R/batch8-$tag.log | tail -1)"
}
run A 0; run A 1; run B 1; run B 0; run B 1
tar czf $OUT/r.tgz -C $OUT r
