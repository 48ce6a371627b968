#!/usr/bin/env bash
# device-s20 call 2: the dq-fused backward candidate (dk/dv kernel adds dq into an f32
# accumulator by red.global.add.v2.f32; no dq kernel) beside the old kernel (base) and the ldsm
# kernel (now the product's), then SDPA; all fa_bench binaries built here by run.sh build [NAME].
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for n in base ldsm dqfused; do echo "== $n"; .device/fa/fa_bench_$n | sed "s/^{/{\"variant\":\"$n\",/" | tee -a $OUT/fa.jsonl; done
for n in ldsm dqfused; do .device/fa/fa_bench_$n one 2048 128 4 | sed "s/^{/{\"variant\":\"$n\",/" | grep bench | tee -a $OUT/fa.jsonl; done
python3 benches/flash_attention/sdpa.py | tee -a $OUT/fa.jsonl
