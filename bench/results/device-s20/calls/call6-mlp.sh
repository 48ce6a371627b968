#!/usr/bin/env bash
# device-s20 call 6 (the gpu-summary source for issue 15.4): the binary with the new
# flash-attention kernels (.device/binD) on Llama-3.1-8B shapes, QLoRA on Q4_K/Q6_K random blocks
# (scripts/device/qlora-8b.sh make; gguf-py from .device/ggufpy, llama.cpp's Llama 3 vocabulary
# from .device/llamavocab), seq 2048 batch 2: every activation saved, the MLP of 21 / 22 layers
# recomputed, 14, 15, 16 and all layers checkpointed (every mode of call 4 again, so no row pairs two calls); PEFT + transformers eager bf16 in the same call; gpu-check.
# Bundled as e2e-s20-mlp.json (the flash-attention table stays call 4's).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
unxz() { python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$1" "$2"; }
mkdir -p $S/bin && unxz .device/binD/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/ggufpy.tar.xz $S
unxz .device/llamavocab/ggml-vocab-llama-bpe.gguf.xz $S/ggml-vocab-llama-bpe.gguf
export WICK_LLAMA3_VOCAB=$S/ggml-vocab-llama-bpe.gguf
res=$S/results; mkdir -p $res
bash scripts/device/qlora-8b.sh make > $res/make.log 2>&1 &
timeout 150 $S/bin/wick bench gpu-check --out $res/gpu-check.json > $res/gpu-check.log 2>&1; el "gpu-check rc=$? $(grep -E 'cases' $res/gpu-check.log | tail -1)"
wait; el "made: $(tail -1 $res/make.log)"
timeout 330 bash scripts/device/qlora-8b.sh wick 2048 2 "plain m21 m22 14 15 16 all" > $res/qlora-wick.log 2>&1; el "wick rc=$?"
ANCHOR_DEADLINE_S=150 timeout 200 bash scripts/device/qlora-8b.sh anchors eager:2048 > $res/qlora-anchors.log 2>&1; el "anchors rc=$?"
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s20-mlp.json
tar czf $OUT/results.tgz -C $S results
cat $res/qlora-wick.log >> $OUT/summary.txt
grep -h tokens_per_s $res/anchors-train-llama3.1_8b.jsonl | cut -c1-300 >> $OUT/summary.txt
cat $OUT/summary.txt
