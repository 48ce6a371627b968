#!/usr/bin/env bash
# Session 10 call 2: mat-vec variants at SmolLM2-1.7B / 135M shapes (random blocks), binary A (HEAD
# before the change) vs B (new Q4_K/Q6_K loaders, unroll 8; WICK_MV_MAX_BLOCKS experiment), and B's
# gpu-check. Results in $OUT/exp.tgz and $OUT/summary.txt.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
mkdir -p $S/binA && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binA/wick.xz $S/binA/wick && chmod +x $S/binA/wick
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-1.7b q4_1 r17-q4_1 & mk smollm2-1.7b q8_0 r17-q8_0 & mk smollm2-1.7b q4_k_m r17-q4_k_m & mk smollm2-135m q4_1 r135-q4_1 &
( timeout 240 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; echo "gpu-check rc=$?" >> $R/gc.rc ) &
wait
cat $R/gc.rc >> $OUT/summary.txt; grep -E "cases|failed|FAIL" $R/gpu-check.log | tail -8 >> $OUT/summary.txt
dec() { # tag binary model [env]
  local tag=$1 bin=$2 m=$3; shift 3
  env "$@" timeout 120 $bin bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 4 --prefill-reps 2 --out $R/dec-$tag-$m.json > $R/dec-$tag-$m.log 2>&1
  echo "$tag $m rc=$? $(grep -E 'CUDA graph.*prefill +1 tok' $R/dec-$tag-$m.log | sed 's/.*decode/decode/') | pp512 $(grep -E 'CUDA graph.*prefill +512 tok' $R/dec-$tag-$m.log | awk '{print $9}')" >> $OUT/summary.txt
}
for m in r17-q4_1 r17-q8_0 r17-q4_k_m r135-q4_1; do
  dec A $S/binA/wick $m
  dec B $S/bin/wick $m
  dec B2112 $S/bin/wick $m WICK_MV_MAX_BLOCKS=2112
  dec A2 $S/binA/wick $m
done
tar czf $OUT/exp.tgz -C $OUT r
cat $OUT/summary.txt
