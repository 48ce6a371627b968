#!/usr/bin/env bash
# Session 14 call 1: A/B in one call (.device/binAB/ab.tar.xz). A = session 13's final binary; B:
# batch-1 mat-vecs with 2^s warps a row where the grid has room (row_split.rs; s capped by
# WICK_DECODE_ROW_SPLIT) and the warp's next rows asked into L2. gpu-check on B; decode at the
# 135M proxy and SmolLM2-1.7B shapes (Q4_1, Q4_K_M, Q8_0): A, B, B capped at 1 and 2 warps a row,
# alternating; adapters at the 135M proxy (A, B).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
# Both binaries (stripped) in one xz stream with a dictionary larger than a binary: B compresses
# against A, so that the two fit the call's 64 MiB with the tracked tree.
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in A B; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; mkdir -p $big
bash scripts/device/bigger-models.sh make-blocks > $R/make.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $R/make135.log 2>&1 &
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check B rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
wait; el made
dec() { # variant split model tag
  local v=$1 sp=$2 m=$3 tag=$4
  WICK_DECODE_ROW_SPLIT=$sp timeout 60 $S/bin$v/wick bench decode --model $m --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$tag-$v$sp.json > $R/dec-$tag-$v$sp.log 2>&1
  el "dec $tag $v$sp rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$tag-$v$sp.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ' ')"
}
for t in q4_1 q4_k_m q8_0; do
  for vs in A:4 B:4 B:1 B:2 A:4 B:4; do dec ${vs%:*} ${vs#*:} $big/smollm2-1.7b.$t.gguf $t; done
done
for vs in A:4 B:4 B:1 B:2 A:4 B:4; do dec ${vs%:*} ${vs#*:} $big/r135-q4_1.gguf r135; done
lora() { # variant
  timeout 150 $S/bin$1/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$1.json > $R/lora-$1.log 2>&1
  el "lora $1 rc=$? $(grep -E 'adapter/none' $R/lora-$1.log | head -2 | tr '\n' ' ')"
}
lora A; lora B
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
