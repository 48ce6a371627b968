#!/usr/bin/env bash
# Runs ON the GPU machine, as `sh:` steps of scripts/device/on-device.sh after `e2e.sh setup` (gguf-py
# and liger-kernel from the carried extras): issue 15.4, QLoRA at Llama-3.1-8B shapes, wick beside
# PEFT in the same call.
#
# usage: bash scripts/device/qlora-8b.sh STEP [ARGS]
#   make            the random-block Q4_K_M-like GGUF at Llama-3.1-8B shapes (make-random-gguf.py
#                   --blocks q4_k_m; the Llama 3 vocabulary from $WICK_LLAMA3_VOCAB, llama.cpp's
#                   models/ggml-vocab-llama-bpe.gguf)
#   wick [SEQ B [MODE...]]  wick bench train --quantized-base, r 16 all-linear, 3 warm-up + 10 steps
#                   (default seq 2048, batch 2) per MODE: plain, all (--checkpoint-activations), N
#                   (--checkpoint-layers N), mM (--recompute-mlp-layers M) or NmM (both);
#                   default "plain all"
#   anchors [RUNS]  PEFT + transformers at the same shapes, bf16 base (benches/anchors/train_peft.py
#                   --config llama3.1_8b_config.json; default RUNS eager:2048), batch 2
#   longest SEQ...  batch 1, one step at each SEQ: wick (quantized base, checkpointed) and PEFT + Liger
#                   + gradient checkpointing (liger-gc); a failure (out of memory) is recorded
# Results in $stage/results: wick-qlora-llama3.1_8b-<seq>[-checkpointed[-N]].json,
# anchors-train-llama3.1_8b.jsonl, wick-longest-llama3.1_8b-<seq>.json, anchors-longest-llama3.1_8b.jsonl.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
results=$stage/results
big=$stage/big
wick=${WICK:-$stage/bin/wick}
gguf=$big/llama-3.1-8b.q4_k_m.gguf
config=$repo/benches/anchors/llama3.1_8b_config.json
export PYTHONPATH=$stage/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$results" "$big"

case "${1:-}" in
  make)
    vocab=${WICK_LLAMA3_VOCAB:?WICK_LLAMA3_VOCAB: llama.cpp models/ggml-vocab-llama-bpe.gguf}
    [[ -f $gguf ]] && exit 0
    PYTHONPATH=$stage/e2e/llama.cpp/gguf-py:$PYTHONPATH python3 "$repo/scripts/device/make-random-gguf.py" \
      --tokenizer-from "$vocab" --shape llama-3.1-8b --blocks q4_k_m --out "$gguf.part" && mv "$gguf.part" "$gguf"
    ls -la "$gguf"
    ;;
  wick)
    seq=${2:-2048} batch=${3:-2} rc=0
    shift $(( $# < 3 ? $# : 3 ))
    for mode in "${@:-plain all}"; do
      for m in $mode; do
        extra=() suffix=""
        case $m in
          plain) ;;
          all) extra=(--checkpoint-activations) suffix=-checkpointed ;;
          m*) extra=(--recompute-mlp-layers "${m#m}") suffix=-mlp-${m#m} ;;
          *m*) extra=(--checkpoint-layers "${m%m*}" --recompute-mlp-layers "${m#*m}")
               suffix=-checkpointed-${m%m*}-mlp-${m#*m} ;;
          *) extra=(--checkpoint-layers "$m") suffix=-checkpointed-$m ;;
        esac
        "$wick" bench train --model "$gguf" --device cuda --quantized-base --seq-len "$seq" \
          --batch-size "$batch" --rank 16 --warmup-steps 3 --steps 10 "${extra[@]}" \
          >"$results/wick-qlora-llama3.1_8b-$seq$suffix.json" || rc=1
        grep -E '"(tokens_per_s|device_peak_used_gib)"' "$results/wick-qlora-llama3.1_8b-$seq$suffix.json"
      done
    done
    exit $rc
    ;;
  anchors)
    python3 "$repo/benches/anchors/train_peft.py" --config "$config" --runs "${2:-eager:2048}" --batch 2 \
      --steps 10 --warmup 3 --deadline-s "${ANCHOR_DEADLINE_S:-240}" \
      --out "$results/anchors-train-llama3.1_8b.jsonl"
    ;;
  longest)
    shift
    rc=0
    for seq in "$@"; do
      out=$results/wick-longest-llama3.1_8b-$seq.json
      "$wick" bench train --model "$gguf" --device cuda --quantized-base --checkpoint-activations \
        --seq-len "$seq" --batch-size 1 --rank 16 --warmup-steps 0 --steps 1 >"$out" 2>"$out.log" \
        || { rc=1; tail -3 "$out.log"; }
      cat "$out"
      python3 "$repo/benches/anchors/train_peft.py" --config "$config" --runs "liger-gc:$seq" --batch 1 \
        --steps 1 --warmup 0 --deadline-s "${ANCHOR_DEADLINE_S:-300}" \
        --out "$results/anchors-longest-llama3.1_8b.jsonl" || rc=1
    done
    exit $rc
    ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
