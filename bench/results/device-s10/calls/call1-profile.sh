#!/usr/bin/env bash
# Call 1 of session 10: SmolLM2-1.7B shapes (random blocks, no llama.cpp), TF32 prefill + decode
# profile. Runs in the repository root on the device.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
bash scripts/device/on-device.sh stage > $OUT/stage.log 2>&1
W=$S/bin/wick
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
t0=$(date +%s)
for b in ${TYPES:-q4_1 q8_0 q4_k_m}; do
  PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf \
    --shape smollm2-1.7b --blocks $b --out $big/r17-$b.gguf > $OUT/make-$b.log 2>&1 &
done
wait
echo "make: $(( $(date +%s) - t0 )) s" | tee -a $OUT/summary.txt
ls -la $big >> $OUT/summary.txt
for b in ${TYPES:-q4_1 q8_0 q4_k_m}; do
  t0=$(date +%s)
  timeout 150 $W bench decode --model $big/r17-$b.gguf --prompt-tokens 512 --decode-tokens 128 --prefill-reps 3 --out $OUT/decode-$b.json > $OUT/decode-$b.log 2>&1
  echo "decode $b rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
  grep -E "tok/s|max \|logit|prefill of" $OUT/decode-$b.log | head -20 >> $OUT/summary.txt
  t0=$(date +%s)
  timeout 100 $W bench overhead --iters 50 --decode-model $big/r17-$b.gguf --decode-position 64 --out $OUT/overhead-$b.json --markdown $OUT/overhead-$b.md > $OUT/overhead-$b.log 2>&1
  echo "overhead $b rc=$? $(( $(date +%s) - t0 )) s" >> $OUT/summary.txt
done
if [[ -n ${NCU:-} ]]; then
  timeout 150 ncu --kernel-name regex:'qmv|rope_attention|embed|argmax|rms' --launch-skip 300 --launch-count 12 \
    --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem \
    --csv $W bench overhead --iters 5 --decode-model $big/r17-q4_1.gguf --decode-reps 2 > $OUT/ncu-q4_1.csv 2> $OUT/ncu.err
  echo "ncu rc=$?" >> $OUT/summary.txt
fi
cat $OUT/summary.txt
