#!/usr/bin/env bash
# Runs ON the GPU machine, as an `sh:` step of scripts/device/on-device.sh: LoRA training at a real
# model's shapes with random weights, wick's CUDA training engine beside PEFT + transformers (eager)
# and PEFT + Liger in the same call (issue 15's table).
#
# usage: bash scripts/device/train-shapes.sh CONFIG [SEQ BATCH STEPS RUNS]
#   CONFIG   an HF config under benches/anchors (e.g. qwen2.5_0.5b_config.json)
#   SEQ, BATCH, STEPS   default 2048, 4, 10 (3 untimed warm-up steps first, on both sides)
#   RUNS     PEFT setups, default eager,liger (train_peft.py modes)
# scripts/device/random_hf_model.py writes the HF directory ($stage/hf/<config name>); `wick bench
# train` reads it (r 16 on every linear layer, bf16, the engine); benches/anchors/train_peft.py runs
# each PEFT setup in its own process. liger-kernel is installed into $stage/site from the wheel in
# $LIGER_WHEEL_DIR (default: the repository's .whl) unless it imports already. Results:
# $stage/results/wick-train-<name>.json and anchors-train-<name>.jsonl (`e2e.sh bundle` gathers them).
# TRAIN_MATERIALIZED=1 also runs wick with WICK_TRAIN_FLASH=0 (attention with materialized scores,
# the engine's path before the fused kernels) into wick-train-<name>-<seq>-materialized.json.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
results=$stage/results
mkdir -p "$results"
config=$repo/benches/anchors/${1:?usage: train-shapes.sh CONFIG [SEQ BATCH STEPS RUNS]}
seq=${2:-2048} batch=${3:-4} steps=${4:-10} runs=${5:-eager,liger}
name=$(basename "$config" _config.json)
wick=${WICK:-$stage/bin/wick}
export PYTHONPATH=$stage/site${PYTHONPATH:+:$PYTHONPATH}
rc=0

if ! python3 -c 'import liger_kernel' 2>/dev/null; then
  wheels=$(compgen -G "${LIGER_WHEEL_DIR:-$repo/.whl}/liger_kernel-*.whl" | head -n1)
  [[ -n $wheels ]] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$stage/site" "$wheels"
fi
dir=$stage/hf/$name
if [[ ! -f $dir/model.safetensors ]]; then
  python3 "$repo/scripts/device/random_hf_model.py" "$config" \
    "$repo/tests/fixtures/peft/tiny-llama/tokenizer.json" "$dir" || exit 1
fi
# stdout is the JSON record; the step lines go to stderr.
"$wick" bench train --model "$dir" --device cuda --seq-len "$seq" --batch-size "$batch" --rank 16 \
  --warmup-steps 3 --steps "$steps" >"$results/wick-train-$name-$seq.json" || rc=1
cat "$results/wick-train-$name-$seq.json"
if [[ ${TRAIN_MATERIALIZED:-0} == 1 ]]; then
  WICK_TRAIN_FLASH=0 "$wick" bench train --model "$dir" --device cuda --seq-len "$seq" \
    --batch-size "$batch" --rank 16 --warmup-steps 3 --steps "$steps" \
    >"$results/wick-train-$name-$seq-materialized.json" || rc=1
  cat "$results/wick-train-$name-$seq-materialized.json"
fi
[[ $runs == none ]] && exit $rc
list=$(tr ',' '\n' <<<"$runs" | sed "s/\$/:$seq/" | paste -sd,)
python3 "$repo/benches/anchors/train_peft.py" --config "$config" --runs "$list" --batch "$batch" \
  --steps "$steps" --warmup 3 --deadline-s "${ANCHOR_DEADLINE_S:-240}" \
  --out "$results/anchors-train-$name.jsonl" || rc=1
exit $rc
