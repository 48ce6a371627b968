#!/usr/bin/env bash
# Runs ON the GPU machine, after `e2e.sh setup` and the llama.cpp build (build-llamacpp-cuda.sh builds
# llama-quantize beside llama-bench): decode and prefill at SmolLM2-1.7B shapes in the file types
# users download, wick beside llama.cpp in the same call (issue 14, done-when 4).
#
# usage: bash scripts/device/bigger-models.sh STEP
#   make     random-weight F16 GGUF at SmolLM2-1.7B shapes with the default model's tokenizer
#            (make-random-gguf.py, llama.cpp's gguf-py), then llama-quantize to Q4_K_M, Q4_1, Q8_0
#   make-blocks  the same three files with random blocks written directly in llama-quantize's
#            choice of types (make-random-gguf.py --blocks; no llama.cpp build needed): the
#            tokenizer from $WICK_VOCAB_GGUF (vocab-only-gguf.py of the default GGUF) or the default GGUF
#   bench    for each file: llama-bench -p 512 -n 128 -ngl 99 and wick bench decode (512-token prompt,
#            128 tokens), results in $stage/results/{llamacpp,wick}-big-<type>.json
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
results=$stage/results
big=$stage/big
bin=$stage/llamacpp/build/bin
wick=${WICK:-$stage/bin/wick}
gguf=${WICK_SMOLLM2_GGUF:-}
types=${WICK_BIG_TYPES:-Q4_K_M Q4_1 Q8_0}
mkdir -p "$results" "$big"

case "${1:-}" in
  make)
    [[ -n $gguf && -f $gguf ]] || { echo "bigger-models: the default GGUF is not staged"; exit 1; }
    bash "$repo/scripts/device/build-llamacpp-cuda.sh" wait 420 >/dev/null || { echo "no llama.cpp build"; exit 1; }
    f16=$big/smollm2-1.7b.f16.gguf
    if [[ ! -f $f16 ]]; then
      PYTHONPATH=$stage/e2e/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH} python3 \
        "$repo/scripts/device/make-random-gguf.py" --tokenizer-from "$gguf" --shape smollm2-1.7b --out "$f16" || exit 1
    fi
    for type in $types; do
      out=$big/smollm2-1.7b.$(echo "$type" | tr 'A-Z' 'a-z').gguf
      [[ -f $out ]] || "$bin/llama-quantize" "$f16" "$out" "$type" "$(nproc)" >"$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
      ls -la "$out"
    done
    ;;
  make-blocks)
    vocab=${WICK_VOCAB_GGUF:-$gguf}
    [[ -n $vocab && -f $vocab ]] || { echo "bigger-models: no tokenizer GGUF (WICK_VOCAB_GGUF)"; exit 1; }
    pids=()
    for type in $types; do
      name=$(echo "$type" | tr 'A-Z' 'a-z')
      out=$big/smollm2-1.7b.$name.gguf
      [[ -f $out ]] && continue
      PYTHONPATH=$stage/e2e/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH} python3 \
        "$repo/scripts/device/make-random-gguf.py" --tokenizer-from "$vocab" --shape smollm2-1.7b \
        --blocks "$name" --out "$out" >"$out.log" 2>&1 &
      pids+=($!)
    done
    rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    ls -la "$big"
    exit $rc
    ;;
  bench)
    rc=0
    for type in $types; do
      name=$(echo "$type" | tr 'A-Z' 'a-z')
      file=$big/smollm2-1.7b.$name.gguf
      [[ -f $file ]] || { echo "missing $file"; rc=1; continue; }
      "$bin/llama-bench" -m "$file" -p 512 -n 128 -ngl 99 -r 3 -o json >"$results/llamacpp-big-$name.json" || rc=1
      "$wick" bench decode --model "$file" --device cuda --prompt-tokens 512 --decode-tokens 128 \
        --out "$results/wick-big-$name.json" || rc=1
    done
    exit $rc
    ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
