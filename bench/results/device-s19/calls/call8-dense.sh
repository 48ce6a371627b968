#!/usr/bin/env bash
# Session 19 call 8: issue 14.5 again with the final binary (.device/binB, c871173): HF bf16
# directories at Qwen2.5-0.5B (biases) and Llama-3.2-1B shapes on the engine beside llama.cpp CUDA
# (built in this call from the llama-cpp-python 0.3.36 sdist) on F16 GGUFs of the same shapes
# (scripts/device/dense-models.sh make + bench); the vocabularies from the sdist's models/ xz'd in
# .device/densevocab. Bundled as e2e-s19-dense.json.
set -u
export WICK_DEVICE_STAGE=/tmp/wick-device S=/tmp/wick-device
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a $OUT/summary.txt; }
mkdir -p $S/bin && python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/binB/wick.xz $S/bin/wick && chmod +x $S/bin/wick
bash scripts/device/on-device.sh info > $OUT/info.log 2>&1
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/extrasmin/e2e-extras.tar.xz $S
bash scripts/device/build-llamacpp-cuda.sh bg > /dev/null 2>&1
for v in qwen2 llama-bpe; do python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' .device/densevocab/ggml-vocab-$v.gguf.xz $S/ggml-vocab-$v.gguf; done
export WICK_QWEN2_VOCAB=$S/ggml-vocab-qwen2.gguf WICK_LLAMA3_VOCAB=$S/ggml-vocab-llama-bpe.gguf
res=$S/results; mkdir -p $res
timeout 200 bash scripts/device/dense-models.sh make > $res/dense-make.log 2>&1; el "dense make rc=$?"
bash scripts/device/build-llamacpp-cuda.sh wait 420 > $res/llamacpp-wait.log 2>&1; el "llama.cpp build rc=$?"
timeout 150 bash scripts/device/dense-models.sh bench > $res/dense-bench.log 2>&1; el "dense bench rc=$?"
python3 scripts/device/bundle-results.py $res $OUT/device-*.json $OUT/e2e-s19-dense.json
tar czf $OUT/results.tgz -C $S results
grep -hE "^wick engine \(CUDA graph\)" $res/dense-bench.log >> $OUT/summary.txt
grep -hE '"avg_ts"|n_prompt|n_gen|model_type' $res/llamacpp-dense-*.json | tr -s ' ' | head -12 >> $OUT/summary.txt
tail -5 $res/dense-make.log >> $OUT/summary.txt
cat $OUT/summary.txt
