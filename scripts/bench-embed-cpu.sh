#!/usr/bin/env bash
# CPU embedding benchmark, wick beside sentence-transformers in one run: texts/s at batch 1 and 64 on
# 2 threads and peak memory, written to bench/results/embed-cpu.{md,json}.
#
#   PYTHON=/opt/refvenv/bin/python scripts/bench-embed-cpu.sh
#
# PYTHON must have torch and sentence-transformers (without them, only wick is measured).
# MODEL_DIR defaults to the default embedding model as wick fetches it (WICK_HOME/models/...).
# The same script runs on a GPU machine with DEVICE=cuda BATCH_SIZES=1,32,256 (then it writes
# bench/results/embed-cuda.{md,json}); wick must be built with --features cuda there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
BATCH_SIZES=${BATCH_SIZES:-1,64}
TEXTS=${TEXTS:-256}
REPEATS=${REPEATS:-3}
WICK=${WICK:-}
if [ -z "$WICK" ]; then
  cargo build --release --bin wick
  WICK=target/release/wick
fi
if [ -z "${MODEL_DIR:-}" ]; then
  "$WICK" embed --input <(echo warm-up) --output /dev/null >/dev/null 2>&1 || true
  MODEL_DIR="${WICK_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/wick}/models/all-minilm-l6-v2"
fi
[ -f "$MODEL_DIR/config.json" ] || { echo "no model at $MODEL_DIR (set MODEL_DIR)" >&2; exit 1; }

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
PEER_ARGS=()
PEER_JSON=$(mktemp)
if "$PYTHON" -c "import torch, sentence_transformers" 2>/dev/null; then
  "$PYTHON" scripts/bench_embed_st.py --model "$MODEL_DIR" --device "$DEVICE" --threads "$THREADS" \
    --batch-sizes "$BATCH_SIZES" --texts "$TEXTS" --repeats "$REPEATS" --out "$PEER_JSON"
  PEER_ARGS=(--peer "$PEER_JSON")
else
  echo "($PYTHON has no sentence-transformers: measuring wick alone)" >&2
fi
"$WICK" bench embed --model "$MODEL_DIR" --device "$DEVICE" --batch-sizes "$BATCH_SIZES" \
  --texts "$TEXTS" --repeats "$REPEATS" --out "bench/results/embed-${DEVICE%%:*}" "${PEER_ARGS[@]}"
rm -f "$PEER_JSON"
