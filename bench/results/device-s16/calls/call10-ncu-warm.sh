#!/usr/bin/env bash
# Session 16 call 10 (call 9 again with --cache-control none: caches kept between launches, as in the graph): ncu on the batch-1 adapter step's mat-vecs (final binary .device/binB, 73e9857),
# eager launches (WICK_CUDA_GRAPH=0), clocks left alone: duration, occupancy, registers and warp
# stall reasons per issued instruction of the gate/up and q/k/v kernels with and without LoRA
# (bench/results/device-s13/calls/ncu_summary.py groups them), to see where the adapter's
# ~1.4 us a gate/up launch goes.
set -u
export WICK_CUDA_GRAPH=0
S=/tmp/wick-device; mkdir -p $S/bin $OUT/r
xz -dc .device/binB/wick.xz > $S/bin/wick && chmod +x $S/bin/wick
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu=$NCU"
M="gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size"
for s in long_scoreboard short_scoreboard barrier wait membar lg_throttle mio_throttle math_pipe_throttle not_selected selected no_instruction sleeping branch_resolving dispatch_stall drain imc_miss tex_throttle; do
  M="$M,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"
done
prof() { # name regex
  timeout 150 $NCU --clock-control none --cache-control none --metrics $M -k "regex:$2" --launch-skip 61 --launch-count 122 \
    --csv --page raw $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --batch 1 --compare 1 \
    --prompt-tokens 16 --decode-tokens 8 > $OUT/r/$1.csv 2> $OUT/r/$1.err
  echo "$1 rc=$? $(wc -l < $OUT/r/$1.csv) lines"; tail -2 $OUT/r/$1.err
}
prof plain '^qmv_q8x_(swiglu_)?q4_1$'
prof lora '^qmv_q8x_(swiglu_)?lora_q4_1$'
python3 bench/results/device-s13/calls/ncu_summary.py $OUT/r/plain.csv $OUT/r/lora.csv | tee $OUT/ncu-summary.txt | head -40
