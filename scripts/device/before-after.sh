#!/usr/bin/env bash
# Runs ON the GPU machine: the same benchmarks with two wick binaries in one call, alternating
# (old, new, old, new) so drift of the machine hits both alike. Issue 13, done-when 6: "behaviour
# and all figures unchanged" by the redesign, measured as old/new ratios on one GPU.
#
# usage: WICK_OLD=/path/to/old/wick bash scripts/device/before-after.sh [ROUNDS]
#   BA_CHECK=0 skips the two gpu-check runs, BA_TRAIN=0 the training benchmarks.
#   $WICK (the new binary, staged by on-device.sh) and $WICK_OLD (made here from
#   .device/old/wick-old.xz when unset), $WICK_SMOLLM2_GGUF (the default GGUF, staged), $OUT.
# Writes $OUT/before-after/{old,new}-{decode,batch8,train512,train2048}-R.json and the gpu-check
# logs of both binaries; scripts/before-after-summary.py turns them into the table.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
rounds=${1:-2}
gguf=${WICK_SMOLLM2_GGUF:?the default GGUF must be staged}
new=${WICK:-$stage/bin/wick}
old=${WICK_OLD:-$stage/bin/wick-old}
if [[ ! -x $old ]]; then
  python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
    "$repo/.device/old/wick-old.xz" "$old" && chmod +x "$old" || exit 1
fi
dir=$OUT/before-after
mkdir -p "$dir"
rc=0
for which in old new; do
  [[ ${BA_CHECK:-1} == 0 ]] && break
  bin=$old; [[ $which == new ]] && bin=$new
  "$bin" --version
  "$bin" bench gpu-check --out "$dir/$which-gpu-check.json" >"$dir/$which-gpu-check.log" 2>&1 || rc=1
  tail -1 "$dir/$which-gpu-check.log"
done
for r in $(seq "$rounds"); do
  for which in old new; do
    bin=$old; [[ $which == new ]] && bin=$new
    "$bin" bench decode --model "$gguf" --device cuda --prompt-tokens 512 --decode-tokens 128 \
      --out "$dir/$which-decode-$r.json" >/dev/null 2>&1 || rc=1
    "$bin" bench decode-batch --model "$gguf" --device cuda --batch 8 --prompt-tokens 512 \
      --decode-tokens 128 --out "$dir/$which-batch8-$r.json" >/dev/null 2>&1 || rc=1
    [[ ${BA_TRAIN:-1} == 0 ]] || for seq in 512 2048; do
      "$bin" bench train --model "$gguf" --device cuda --seq-len $seq --batch-size 8 --rank 16 \
        --warmup-steps 3 --steps 20 >"$dir/$which-train$seq-$r.json" 2>/dev/null || rc=1
    done
    echo "round $r $which done"
  done
done
exit $rc
