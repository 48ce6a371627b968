#!/usr/bin/env bash
# Session 16 call 1: one binary (.device/binB/wick.xz, commit in summary). The adapter pool's A and
# B as one extent per (layer, group), each LoRA launch marking its group's extent persisting in the
# L2 (access-policy window; set-aside = min(device limit, pool bytes)) against the same binary with
# WICK_ADAPTER_L2=0 (no window, no set-aside), alternating. gpu-check; adapters at the 135M proxy
# (batch 1 and 8) and SmolLM2-1.7B Q8_0 (batch 1 and 4); one eager kind profile each way.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
R=$OUT/r; mkdir -p $R $S/binB
xz -dc .device/binB/wick.xz > $S/binB/wick && chmod +x $S/binB/wick
bash scripts/device/on-device.sh info > $R/info.log 2>&1
python3 - >> $OUT/summary.txt <<'PY'
import ctypes
cu = ctypes.CDLL("libcuda.so.1"); cu.cuInit(0); d = ctypes.c_int(); cu.cuDeviceGet(ctypes.byref(d), 0)
for name, a in [("l2 bytes", 38), ("max persisting l2", 108), ("max window", 109)]:
    v = ctypes.c_int(); cu.cuDeviceGetAttribute(ctypes.byref(v), a, d); print(name, v.value)
PY
timeout 200 $S/binB/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $R/gpu-check.log | tail -1)"
grep -E "FAIL|failed" $R/gpu-check.log | head -20 >> $OUT/summary.txt
lora() { # l2(0/1) tag args...
  local l=$1 tag=$2; shift 2
  WICK_ADAPTER_L2=$l timeout 150 $S/binB/wick bench decode-lora "$@" --out $R/lora-$tag-l2$l.json > $R/lora-$tag-l2$l.log 2>&1
  el "lora $tag l2=$l rc=$? $(grep -E 'adapter/none' $R/lora-$tag-l2$l.log | head -2 | tr '\n' ' ')"
}
for l in 0 1 0 1; do lora $l 135m --model random:smollm2-135m --quant q4_1; done
for l in 0 1; do lora $l 135m-prof --model random:smollm2-135m --quant q4_1 --profile-reps 3; done
for l in 0 1; do lora $l 1.7b-q8_0 --model random:smollm2-1.7b --quant q8_0 --batch 4 --decode-tokens 128; done
tar czf $OUT/r.tgz -C $OUT r
rm -rf $R
cat $OUT/summary.txt
