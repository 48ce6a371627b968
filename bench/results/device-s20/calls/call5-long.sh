#!/usr/bin/env bash
# device-s20 call 5 (same binary as call 4, .device/binC): Llama-3.1-8B shapes QLoRA with the
# first 15 of 32 layers checkpointed (seq 2048 batch 2; the fewest that keep memory under 0.3x
# PEFT eager's 61.95 GiB of call 4), and one batch-1 step at the model's 131,072-token context,
# every layer checkpointed; PEFT eager in the same call for the 15-layer ratio (session 8: 1,138 tokens/s with the previous attention kernels; PEFT +
# Liger + gradient checkpointing 2,261).
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
unxz() { python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$1" "$2"; }
mkdir -p $S/bin && unxz .device/binC/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/ggufpy/ggufpy.tar.xz $S
unxz .device/llamavocab/ggml-vocab-llama-bpe.gguf.xz $S/ggml-vocab-llama-bpe.gguf
export WICK_LLAMA3_VOCAB=$S/ggml-vocab-llama-bpe.gguf
res=$S/results; mkdir -p $res
bash scripts/device/qlora-8b.sh make > $res/make.log 2>&1; el "made"
timeout 90 bash scripts/device/qlora-8b.sh wick 2048 2 15 > $res/qlora-wick-15.log 2>&1; el "wick 15 rc=$?"
ANCHOR_DEADLINE_S=120 timeout 150 bash scripts/device/qlora-8b.sh anchors eager:2048 > $res/qlora-anchors.log 2>&1; el "anchors rc=$?"
timeout 300 $S/bin/wick bench train --model $S/big/llama-3.1-8b.q4_k_m.gguf --device cuda --quantized-base \
  --checkpoint-activations --seq-len 131072 --batch-size 1 --rank 16 --warmup-steps 0 --steps 1 \
  > $res/wick-long-131072.json 2> $res/wick-long-131072.log; el "131k rc=$?"
# Not an e2e-*.json bundle: gpu-summary keeps call 4's rows (this call has one configuration).
cp $res/wick-qlora-llama3.1_8b-2048-checkpointed-15.json $res/wick-long-131072.json $res/anchors-train-llama3.1_8b.jsonl $res/*.log $OUT/ 2>/dev/null
grep -hE '"(tokens_per_s|device_peak_used_gib)"' $res/wick-qlora-llama3.1_8b-2048-checkpointed-15.json $res/wick-long-131072.json >> $OUT/summary.txt
cat $OUT/summary.txt
