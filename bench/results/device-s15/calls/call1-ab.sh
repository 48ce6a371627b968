#!/usr/bin/env bash
# Session 15 call 1: three binaries in one xz stream (.device/binAB/ab.tar.xz). A = session 14's
# final binary (c3333be); C = A + decode attention reworked (84601c7: first chunk staged and
# angles computed before the PDL wait, one active split writes the output itself, 8 threads a
# score for one-head groups, one acq_rel add before the combine); D = C + batch-1 Q4_K/Q6_K
# mat-vecs on int8 x in 32-weight lane units. gpu-check on D; decode at SmolLM2-1.7B shapes
# (Q4_1, Q4_K_M, Q8_0) and the 135M proxy, A C D alternating twice; 135M at a 2000-token prompt
# (A, D); adapters at the 135M proxy (A, D).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in A C D; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; mkdir -p $big
bash scripts/device/bigger-models.sh make-blocks > $R/make.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $R/make135.log 2>&1 &
timeout 200 $S/binD/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check D rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
wait; el made
dec() { # variant model tag [prompt]
  local v=$1 m=$2 tag=$3 p=${4:-512}
  timeout 60 $S/bin$v/wick bench decode --model $m --device cuda --prompt-tokens $p \
    --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$tag-$v-$p.json > $R/dec-$tag-$v-$p.log 2>&1
  el "dec $tag $v rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$tag-$v-$p.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ' ')"
}
for t in q4_k_m q4_1 q8_0; do
  for v in A C D A C D; do dec $v $big/smollm2-1.7b.$t.gguf $t; done
done
for v in A C D A C D; do dec $v $big/r135-q4_1.gguf r135; done
for v in A D; do dec $v $big/r135-q4_1.gguf r135 2000; done
lora() { # variant
  timeout 150 $S/bin$1/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$1.json > $R/lora-$1.log 2>&1
  el "lora $1 rc=$? $(grep -E 'adapter/none' $R/lora-$1.log | head -2 | tr '\n' ' ')"
}
lora A; lora D
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
