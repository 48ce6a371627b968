#!/usr/bin/env bash
# Runs ON the GPU machine: decode of HF bf16 directories on wick's engine beside llama.cpp on an F16
# GGUF of the same shapes, in the same call (issue 14, done-when 5). Random weights at real shapes:
# Qwen2.5-0.5B (q/k/v biases) and Llama-3.2-1B, both with tied embeddings.
#
# usage: bash scripts/device/dense-models.sh STEP
#   make     for each shape: an HF directory in bf16 (random_hf_model.py with the committed config in
#            benches/anchors, transformers' own initialisation, a WordLevel tokenizer of the model's
#            vocabulary) and an F16 GGUF (make-random-gguf.py with llama.cpp's vocabulary of that
#            model: ggml-vocab-qwen2.gguf / ggml-vocab-llama-bpe.gguf, paths in WICK_QWEN2_VOCAB /
#            WICK_LLAMA3_VOCAB; needs gguf-py on PYTHONPATH or in $stage/e2e/llama.cpp/gguf-py)
#   bench    for each shape: llama-bench -p 512 -n 128 -ngl 99 on the F16 GGUF, wick bench decode on
#            the HF directory and on the F16 GGUF (512-token prompt, 128 tokens); results in
#            $stage/results/{llamacpp,wick}-dense-<shape>[-gguf].json
#   generate `wick generate --device cuda` end to end on each HF directory (the registry's path: engine
#            attached at open, batched prefill, decode), without and with a random rank-16 PEFT adapter
#            (random_peft_adapters.py, Qwen2.5-0.5B shapes only), each beside WICK_CUDA_DECODE=candle
#            (Candle's path) for the greedy text; the engine's log lines are printed
# WICK_DENSE_SHAPES picks the shapes (default: qwen2.5-0.5b llama-3.2-1b).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
results=$stage/results
dense=$stage/dense
bin=$stage/llamacpp/build/bin
wick=${WICK:-$stage/bin/wick}
shapes=${WICK_DENSE_SHAPES:-qwen2.5-0.5b llama-3.2-1b}
mkdir -p "$results" "$dense"

config_of() { # the committed HF config of a shape
  case $1 in
    qwen2.5-0.5b) echo "$repo/benches/anchors/qwen2.5_0.5b_config.json" ;;
    llama-3.2-1b) echo "$repo/benches/anchors/llama3.2_1b_config.json" ;;
    *) return 1 ;;
  esac
}

vocab_of() { # llama.cpp's vocabulary GGUF of a shape
  case $1 in
    qwen2.5-0.5b) echo "${WICK_QWEN2_VOCAB:-}" ;;
    *) echo "${WICK_LLAMA3_VOCAB:-}" ;;
  esac
}

case "${1:-}" in
  make)
    for shape in $shapes; do
      hf=$dense/$shape-hf
      if [[ ! -f $hf/model.safetensors ]]; then
        python3 "$repo/scripts/device/random_hf_model.py" "$(config_of "$shape")" wordlevel "$hf" || exit 1
      fi
      f16=$dense/$shape.f16.gguf
      vocab=$(vocab_of "$shape")
      [[ -n $vocab && -f $vocab ]] || { echo "dense-models: no vocabulary GGUF for $shape"; exit 1; }
      if [[ ! -f $f16 ]]; then
        PYTHONPATH=$stage/e2e/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH} python3 \
          "$repo/scripts/device/make-random-gguf.py" --tokenizer-from "$vocab" --shape "$shape" --out "$f16" || exit 1
      fi
      ls -la "$hf" "$f16"
    done
    ;;
  bench)
    rc=0
    for shape in $shapes; do
      hf=$dense/$shape-hf
      f16=$dense/$shape.f16.gguf
      if [[ -x $bin/llama-bench && -f $f16 ]]; then
        "$bin/llama-bench" -m "$f16" -p 512 -n 128 -ngl 99 -r 3 -o json >"$results/llamacpp-dense-$shape.json" || rc=1
      else
        echo "dense-models: no llama-bench or no $f16"; rc=1
      fi
      "$wick" bench decode --model "$hf" --device cuda --prompt-tokens 512 --decode-tokens 128 \
        --out "$results/wick-dense-$shape.json" || rc=1
      [[ -f $f16 ]] && { "$wick" bench decode --model "$f16" --device cuda --prompt-tokens 512 --decode-tokens 128 \
        --out "$results/wick-dense-$shape-gguf.json" || rc=1; }
    done
    exit $rc
    ;;
  generate)
    rc=0
    prompt=$(python3 -c 'print(" ".join(f"w{i}" for i in range(1, 300)))')
    for shape in $shapes; do
      hf=$dense/$shape-hf
      adapters=("")
      if [[ $shape == qwen2.5-0.5b ]]; then
        [[ -d $dense/adapters/a0 ]] || python3 "$repo/scripts/device/random_peft_adapters.py" "$dense/adapters" \
          --count 1 --shape qwen2.5-0.5b || rc=1
        adapters+=("--adapter $dense/adapters/a0")
      fi
      for a in "${adapters[@]}"; do
        for path in engine candle; do
          env=""; [[ $path == candle ]] && env="WICK_CUDA_DECODE=candle"
          echo "== $shape $path ${a:-(no adapter)}"
          env $env RUST_LOG=wick=info "$wick" generate --model "$hf" --device cuda --raw --prompt "$prompt" \
            --max-tokens 48 --temperature 0 --seed 1 $a >"$results/gen-$shape-$path.txt" 2>"$results/gen-$shape-$path.err" || rc=1
          grep -iE "decode engine|prefill" "$results/gen-$shape-$path.err" | cut -c1-200 | head -5
          tail -c 300 "$results/gen-$shape-$path.txt"; echo
        done
      done
    done
    exit $rc
    ;;
  *) sed -n '2,/^# WICK_DENSE_SHAPES/p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
