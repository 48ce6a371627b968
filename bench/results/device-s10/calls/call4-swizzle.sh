#!/usr/bin/env bash
# Session 10 call 3: x swizzle in the mat-vecs (B) vs A (before the session's kernel changes):
# decode at SmolLM2-1.7B / 135M shapes, batch 8, adapters; B's gpu-check.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
mkdir -p $S/binA && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binA/wick.xz $S/binA/wick && chmod +x $S/binA/wick
[[ -d $S/e2e ]] || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
# The llama.cpp build for the next call (detached, outlives this call on the warm machine).
[[ -f $S/llamacpp/build.rc ]] || bash scripts/device/build-llamacpp-cuda.sh bg > $R/llamacpp-bg.log 2>&1
big=$S/big; mkdir -p $big
mk() { [[ -f $big/$3.gguf ]] || PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-1.7b q4_1 r17-q4_1 & mk smollm2-1.7b q8_0 r17-q8_0 & mk smollm2-1.7b q4_k_m r17-q4_k_m & mk smollm2-135m q4_1 r135-q4_1 &
( timeout 240 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; echo "gpu-check rc=$?" >> $R/gc.rc ) &
wait
cat $R/gc.rc >> $OUT/summary.txt; grep -E "cases|failed|FAIL" $R/gpu-check.log | tail -8 >> $OUT/summary.txt
dec() { # tag binary model
  local tag=$1 bin=$2 m=$3
  timeout 120 $bin bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 4 --prefill-reps 2 --out $R/dec-$tag-$m.json > $R/dec-$tag-$m.log 2>&1
  echo "$tag $m rc=$? $(grep -E 'CUDA graph.*prefill +1 tok' $R/dec-$tag-$m.log | sed 's/.*decode/decode/')" >> $OUT/summary.txt
}
for m in r17-q4_1 r17-q8_0 r17-q4_k_m r135-q4_1; do
  dec A $S/binA/wick $m; dec B $S/bin/wick $m; dec A2 $S/binA/wick $m; dec B2 $S/bin/wick $m
done
for tag in A B; do
  bin=$S/bin/wick; [[ $tag == A ]] && bin=$S/binA/wick
  timeout 100 $bin bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --out $R/batch-$tag.json > $R/batch-$tag.log 2>&1
  echo "batch8 $tag rc=$? $(grep -iE 'tok/s' $R/batch-$tag.log | tail -3 | tr '\n' ' ')" >> $OUT/summary.txt
  timeout 150 $bin bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$tag.json > $R/lora-$tag.log 2>&1
  echo "lora $tag rc=$? $(grep -iE 'x of|ratio|tok/s' $R/lora-$tag.log | tail -4 | tr '\n' ' ')" >> $OUT/summary.txt
done
tar czf $OUT/exp2.tgz -C $OUT r
cat $OUT/summary.txt
