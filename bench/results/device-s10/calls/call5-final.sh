#!/usr/bin/env bash
# Session 10 final call (right after exp2.sh on the warm machine: its llama.cpp build and random
# files are reused). Issue 14.4: SmolLM2-1.7B shapes Q4_K_M / Q4_1 / Q8_0 (random blocks in
# llama-quantize's type choice, one file read by both) wick vs llama.cpp; 14.3 proxy: a random file
# of the default GGUF's shapes and types (not the default model: it takes three calls to carry).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
[[ -d $S/e2e ]] || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extras/e2e-extras.tar.xz $S
[[ -f $S/llamacpp/build.rc || -f $S/llamacpp/build.log ]] || bash scripts/device/build-llamacpp-cuda.sh bg
export WICK_VOCAB_GGUF=$PWD/.device/vocab/smollm2-vocab.gguf
big=$S/big; mkdir -p $big $S/results
for t in q4_1 q8_0 q4_k_m; do [[ -f $big/r17-$t.gguf ]] && ln -sf $big/r17-$t.gguf $big/smollm2-1.7b.$t.gguf; done
bash scripts/device/bigger-models.sh make-blocks > $S/results/make.log 2>&1
[[ -f $big/r135-q4_1.gguf ]] || PYTHONPATH=$S/e2e/llama.cpp/gguf-py python3 scripts/device/make-random-gguf.py \
  --tokenizer-from $WICK_VOCAB_GGUF --shape smollm2-135m --blocks q4_1 --out $big/r135-q4_1.gguf
# wick while llama.cpp finishes building (the GPU is idle meanwhile)
for t in q4_k_m q4_1 q8_0; do
  timeout 90 $S/bin/wick bench decode --model $big/smollm2-1.7b.$t.gguf --device cuda --prompt-tokens 512 \
    --decode-tokens 128 --out $S/results/wick-big-$t.json > $S/results/wick-big-$t.log 2>&1
done
export WICK_SMOLLM2_GGUF=$big/r135-q4_1.gguf
timeout 120 bash scripts/device/e2e.sh decode > $S/results/e2e-decode.log 2>&1
bash scripts/device/build-llamacpp-cuda.sh wait 300 > $S/results/llamacpp-wait.log 2>&1
bin=$S/llamacpp/build/bin
for t in q4_k_m q4_1 q8_0; do
  timeout 60 $bin/llama-bench -m $big/smollm2-1.7b.$t.gguf -p 512 -n 128 -ngl 99 -r 3 -o json > $S/results/llamacpp-big-$t.json 2> $S/results/llamacpp-big-$t.log
done
timeout 120 bash scripts/device/e2e.sh llamacpp 10 > $S/results/e2e-llamacpp.log 2>&1
python3 scripts/device/bundle-results.py $S/results $OUT/device-*.json $OUT/e2e-s10-final.json
tar czf $OUT/results.tgz -C $S results
python3 - <<'P' $S/results
import json, sys, glob, os
d = sys.argv[1]
for t in ["q4_k_m", "q4_1", "q8_0"]:
    try:
        w = json.load(open(f"{d}/wick-big-{t}.json"))
        l = json.load(open(f"{d}/llamacpp-big-{t}.json"))
        tg = next(r["avg_ts"] for r in l if r["n_gen"] > 0); pp = next(r["avg_ts"] for r in l if r["n_prompt"] > 0)
        wt = [r for r in w["timings"] if r["path"] == "wick engine (CUDA graph)"]
        wd = next(r["decode_tokens_per_second"] for r in wt if r["prompt_tokens"] == 1)
        wp = next(r["prefill_tokens_per_second"] for r in wt if r["prompt_tokens"] == 512)
        print(f"{t}: decode {wd:.1f} vs tg128 {tg:.1f} = {wd/tg:.3f}x; prefill {wp:.0f} vs pp512 {pp:.0f} = {wp/pp:.3f}x; ok {w['ok']}")
    except Exception as e:
        print(t, "error", e)
P
