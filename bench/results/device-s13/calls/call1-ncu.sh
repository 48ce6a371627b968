#!/usr/bin/env bash
# Session 13 call 1: ncu on the decode steps whose ratios miss their goals: the 135M batch-8 step
# (14.3), the batch-1 adapter step (14.1), SmolLM2-1.7B Q4_K_M and Q4_1 batch-1 steps (14.4).
# Eager steps (WICK_CUDA_GRAPH=0), clocks left alone; per kernel name: duration, DRAM throughput,
# occupancy, registers, top stall reasons (calls/ncu_summary.py).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device WICK_CUDA_GRAPH=0
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
el "ncu=$NCU"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
mk() { PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-135m q4_1 r135-q4_1 & mk smollm2-1.7b q4_k_m r17-q4_k_m & mk smollm2-1.7b q4_1 r17-q4_1 &
wait; el made
M="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size"
for s in long_scoreboard short_scoreboard barrier wait membar lg_throttle mio_throttle math_pipe_throttle not_selected selected no_instruction sleeping branch_resolving dispatch_stall drain imc_miss tex_throttle; do
  M="$M,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"
done
prof() { # name skip count regex -- wick args
  local name=$1 skip=$2 count=$3 re=$4; shift 5
  timeout 170 $NCU --clock-control none --metrics $M -k "regex:$re" --launch-skip $skip --launch-count $count \
    --csv --page raw $S/bin/wick "$@" > $R/$name.csv 2> $R/$name.err
  el "$name rc=$? $(wc -l < $R/$name.csv) lines"
}
prof b8 320 160 'qmvb|rope_attention' -- bench decode-batch --model $big/r135-q4_1.gguf --batch 8 --prompt-tokens 32 --decode-tokens 8
prof lora1 300 130 '_lora_|rope_attention' -- bench decode-lora --model $big/r135-q4_1.gguf --batch 1 --compare 1 --prompt-tokens 16 --decode-tokens 8
prof base1 320 160 '^qmv|rope_attention' -- bench decode --model $big/r135-q4_1.gguf --device cuda --prompt-tokens 16 --decode-tokens 8 --compare 0 --prefill-reps 1
prof k17 250 125 '^qmv|rope_attention' -- bench decode --model $big/r17-q4_k_m.gguf --device cuda --prompt-tokens 512 --decode-tokens 8 --compare 0 --prefill-reps 1
prof q17 250 125 '^qmv|rope_attention' -- bench decode --model $big/r17-q4_1.gguf --device cuda --prompt-tokens 512 --decode-tokens 8 --compare 0 --prefill-reps 1
python3 bench/results/device-s13/calls/ncu_summary.py $R/*.csv > $OUT/ncu-summary.txt 2>&1
tail -3 $R/*.err >> $OUT/summary.txt
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt $OUT/ncu-summary.txt | head -150
