#!/usr/bin/env bash
# Session 11 call 2: the int8-activation prologue fused (x quantized straight from global memory),
# B (the int8 row loop unrolled 4) and B2 (unrolled 8, .device/binB2):
# gpu-check (the new dec_qmv_q8x_* / dec_lora_qmv_q8x_* / dec_engine_q8x_* records), and
# `bench decode` at SmolLM2-1.7B shapes (Q4_1, Q8_0, Q4_K_M) and the 135M proxy: B's report has the
# graph on int8 activations and on f32 ones side by side. Per-kind step profile (bench overhead) on int8 and f32 activations.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
R=$OUT/r; mkdir -p $R
bash scripts/device/on-device.sh stage > $R/stage.log 2>&1
[[ -d $S/e2e ]] || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
big=$S/big; mkdir -p $big
mk() { [[ -f $big/$3.gguf ]] || PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py --tokenizer-from .device/vocab/smollm2-vocab.gguf --shape $1 --blocks $2 --out $big/$3.gguf > $R/make-$3.log 2>&1; }
mk smollm2-1.7b q4_1 r17-q4_1 & mk smollm2-1.7b q8_0 r17-q8_0 & mk smollm2-1.7b q4_k_m r17-q4_k_m & mk smollm2-135m q4_1 r135-q4_1 &
( timeout 240 $S/bin/wick bench gpu-check --out $R/gpu-check.json > $R/gpu-check.log 2>&1; echo "gpu-check rc=$?" >> $R/gc.rc ) &
wait
cat $R/gc.rc >> $OUT/summary.txt; grep -E "cases|failed|FAIL" $R/gpu-check.log | tail -8 >> $OUT/summary.txt
python3 - $R/gpu-check.json >> $OUT/summary.txt <<'PY'
import json, sys
rs = json.load(open(sys.argv[1]))
rs = rs if isinstance(rs, list) else rs.get("records", rs)
bad = [r for r in rs if not r.get("ok")]
print("records", len(rs), "failed", len(bad))
for r in bad[:30]: print("FAIL", r.get("kernel"), r.get("shape"), r.get("max_rel_err"), r.get("tolerance"))
for r in rs:
    if "q8x" in r.get("kernel", ""): print(r["kernel"], r.get("shape"), "%.2e" % r["max_rel_err"], r["tolerance"])
PY
dec() { # tag binary model
  local tag=$1 bin=$2 m=$3
  timeout 120 $bin bench decode --model $big/$m.gguf --prompt-tokens 512 --decode-tokens 128 --compare 4 --prefill-reps 2 --out $R/dec-$tag-$m.json > $R/dec-$tag-$m.log 2>&1
  echo "$tag $m rc=$? $(grep -E 'CUDA graph.*prefill +1 tok' $R/dec-$tag-$m.log | sed 's/.*decode/decode/' | tr '\n' ' ')" >> $OUT/summary.txt
  grep -E "max \|logit diff\|" $R/dec-$tag-$m.log | head -1 >> $OUT/summary.txt
}
mkdir -p $S/binB2 && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB2/wick.xz $S/binB2/wick && chmod +x $S/binB2/wick
for m in r17-q4_1 r17-q8_0 r17-q4_k_m r135-q4_1; do dec B $S/bin/wick $m; dec B2 $S/binB2/wick $m; done
for mode in 1 0; do
  WICK_DECODE_INT8=$mode timeout 120 $S/bin/wick bench overhead --iters 5 --decode-model $big/r17-q4_1.gguf --out $R/ov-int8-$mode.json --markdown $R/ov-int8-$mode.md > $R/ov-int8-$mode.log 2>&1
  echo "overhead WICK_DECODE_INT8=$mode rc=$?" >> $OUT/summary.txt; grep -E "^\| (qmv|rope|embed|argmax|GPU|total)" $R/ov-int8-$mode.md | head -12 >> $OUT/summary.txt
done
tar czf $OUT/r.tgz -C $OUT r
cat $OUT/summary.txt
