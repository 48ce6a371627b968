#!/usr/bin/env bash
# Runs ON the GPU machine: `wick bench decode-lora` on random models at real shapes with two wick
# binaries in one call, alternating, so a kernel change is judged against the binary before it on
# the same GPU. No GGUF needs staging (random weights, `--model random:...`).
#
# usage: bash scripts/device/lora-ab.sh PREV_XZ [ROUNDS]
#   PREV_XZ: the earlier binary, xz-compressed (carried in the call); $WICK: the new one (staged by
#   on-device.sh). Writes $OUT/lora-ab/{prev,new}-<model>-R.json. LORA_AB_MODELS=135m runs the
#   SmolLM2-135M shapes alone.
set -uo pipefail
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
prev_xz=${1:?PREV_XZ}
rounds=${2:-2}
new=${WICK:-$stage/bin/wick}
prev=$stage/bin/wick-prev
python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
  "$prev_xz" "$prev" && chmod +x "$prev" || exit 1
dir=$OUT/lora-ab
mkdir -p "$dir"
rc=0
models=("random:smollm2-135m q4_1 8 256" "random:smollm2-360m q4_k_m 8 256" "random:smollm2-1.7b q8_0 4 128")
[[ ${LORA_AB_MODELS:-} == 135m ]] && models=("${models[0]}")
for r in $(seq "$rounds"); do
  for which in prev new; do
    bin=$prev; [[ $which == new ]] && bin=$new
    for m in "${models[@]}"; do
      read -r model quant batch tokens <<<"$m"
      name=${model#random:smollm2-}-$quant
      timeout 120 "$bin" bench decode-lora --model "$model" --quant "$quant" --batch "$batch" \
        --decode-tokens "$tokens" --out "$dir/$which-$name-$r.json" 2>&1 | tail -1 || rc=1
    done
  done
done
exit $rc
