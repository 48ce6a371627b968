#!/usr/bin/env bash
# Session 15 call 3: two binaries in one xz stream (.device/binAB/ab.tar.xz). F = 66a4c50 (decode
# attention capped at 48 registers, __launch_bounds__(256, 5); no down-shrink change); G = the
# same without the cap (56 registers). Decode at SmolLM2-1.7B shapes Q4_K_M and the 135M proxy,
# F G alternating twice; adapters at the 135M proxy (F, G).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
mkdir -p $S/ab && python3 -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' .device/binAB/ab.tar.xz $S/ab
for v in F G; do mkdir -p $S/bin$v && mv $S/ab/$v/wick $S/bin$v/wick && chmod +x $S/bin$v/wick; done
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/gguf-py.tar.xz $S
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; mkdir -p $big
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-1.7b --blocks q4_k_m --out $big/smollm2-1.7b.q4_k_m.gguf > $R/make17.log 2>&1 &
PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from $WICK_VOCAB_GGUF \
  --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf > $R/make135.log 2>&1 &
lora() { # variant
  timeout 150 $S/bin$1/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$1.json > $R/lora-$1.log 2>&1
  el "lora $1 rc=$? $(grep -E 'adapter/none' $R/lora-$1.log | head -2 | tr '\n' ' ')"
}
lora F; lora G
wait; el made
dec() { # variant model tag [prompt]
  local v=$1 m=$2 tag=$3 p=${4:-512}
  timeout 60 $S/bin$v/wick bench decode --model $m --device cuda --prompt-tokens $p \
    --decode-tokens 128 --compare 2 --prefill-reps 1 --out $R/dec-$tag-$v-$p.json > $R/dec-$tag-$v-$p.log 2>&1
  el "dec $tag $v rc=$? $(grep -E '^wick engine \(CUDA graph\)' $R/dec-$tag-$v-$p.log | sed -E 's/ +prefill +([0-9]+) tok.*decode +128 tok +([0-9.]+) tok\/s.*/ p\1 \2/' | tr '\n' ' ')"
}
for v in F G F G; do dec $v $big/smollm2-1.7b.q4_k_m.gguf q4_k_m; done
for v in F G F G; do dec $v $big/r135-q4_1.gguf r135; done
for v in F G; do dec $v $big/r135-q4_1.gguf r135 2000; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
