#!/usr/bin/env bash
# Session 18 call 3 (call 4 reran its ncu part alone, WICK_CALL_PART=ncu, and packed r/ into r.tgz:
# the call returns at most a few files): binary D (.device/binB/wick.xz: main with the predicated row loop and the
# one-round producer tasks). (1) Runtime knobs on the 135M proxy's adapters, twice each: default,
# WICK_ADAPTER_L2=0 (no persisting window), WICK_DECODE_MV_WARPS=4 / 16 (block size of every
# batch-1 mat-vec). (2) ncu, warm caches, eager launches: per-SASS-instruction warp-stall samples of
# one gate/up launch with LoRA and one without (qmv_q8x_swiglu_[lora_]q4_1), to see which
# instructions the adapter's extra time waits on.
set -u
S=/tmp/wick-device; mkdir -p $S/bin $OUT/r
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
R=$OUT/r
lora() { # tag env...
  local tag=$1; shift
  env "$@" timeout 100 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --out $R/lora-$tag.json > $R/lora-$tag.log 2>&1
  el "lora $tag rc=$? $(grep -E 'adapter/none' $R/lora-$tag.log | head -2 | tr '\n' ' ') $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: round(v, 1) for k, v in d["batch1_tokens_per_second"].items()}, {k: round(v, 1) for k, v in d["batchN_tokens_per_second"].items()})' $R/lora-$tag.json 2>/dev/null)"
}
[ "${WICK_CALL_PART:-}" = ncu ] || for i in 1 2; do
  lora default-$i X=1
  lora nol2-$i WICK_ADAPTER_L2=0
  lora w4-$i WICK_DECODE_MV_WARPS=4
  lora w16-$i WICK_DECODE_MV_WARPS=16
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
src() { # name regex
  WICK_CUDA_GRAPH=0 timeout 120 $NCU --clock-control none --cache-control none --section SourceCounters --section WarpStateStats \
    --warp-sampling-interval 0 -k "regex:$2" --launch-skip 40 --launch-count 1 \
    --page source --print-source sass --csv $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --batch 1 --compare 1 \
    --prompt-tokens 16 --decode-tokens 8 > $R/sass-$1.csv 2> $R/sass-$1.err
  el "ncu $1 rc=$? $(wc -l < $R/sass-$1.csv) lines"; tail -3 $R/sass-$1.err
  WICK_CUDA_GRAPH=0 timeout 120 $NCU --clock-control none --cache-control none --section WarpStateStats --section SpeedOfLight \
    -k "regex:$2" --launch-skip 40 --launch-count 5 $S/bin/wick bench decode-lora --model random:smollm2-135m --quant q4_1 --batch 1 --compare 1 \
    --prompt-tokens 16 --decode-tokens 8 > $R/stats-$1.txt 2>&1
  el "ncu stats $1 rc=$?"
}
src lora '^qmv_q8x_swiglu_lora_q4_1$'
src plain '^qmv_q8x_swiglu_q4_1$'
tar czf $OUT/r.tgz -C $OUT r && rm -rf $R
cat $OUT/summary.txt
