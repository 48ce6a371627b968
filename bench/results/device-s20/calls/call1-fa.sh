#!/usr/bin/env bash
# device-s20 call 1: flash-attention candidates (fa_bench built here by run.sh build [NAME], carried
# in .device/fa) checked and timed beside PyTorch SDPA; ncu of the current kernels at the 8B shape.
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for n in base ldsm ldsm1; do echo "== $n"; .device/fa/fa_bench_$n | sed "s/^{/{\"variant\":\"$n\",/" | tee -a $OUT/fa.jsonl; done
python3 benches/flash_attention/sdpa.py | tee -a $OUT/fa.jsonl
ncu --clock-control none -k regex:"fa_(forward|backward)" --launch-skip 39 --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  .device/fa/fa_bench_base one 2048 128 4 > $OUT/ncu-base.txt 2>&1; tail -5 $OUT/ncu-base.txt
