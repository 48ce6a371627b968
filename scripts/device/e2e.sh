#!/usr/bin/env bash
# Runs ON the GPU machine, as `sh:` steps of scripts/device/on-device.sh: the end-to-end benchmarks of
# issue 8, each beside its anchor, results gathered in $WICK_DEVICE_STAGE/results (outlives a call on a
# warm machine) and bundled into $OUT by `bundle`. docs/CUDA.md ("End-to-end benchmarks") has the two
# calls; scripts/gpu-summary.py turns the bundles into bench/results/gpu-summary.json.
#
# usage: bash scripts/device/e2e.sh STEP [ARGS]
#   setup                   unpack e2e-extras.tar.xz, install liger-kernel into $stage/site, write the
#                           all-MiniLM-L6-v2 directory with random weights ($stage/minilm)
#   llamacpp-bg             start the llama.cpp CUDA build in the background (build-llamacpp-cuda.sh)
#   train-anchors S [RUNS]  PEFT runs (benches/anchors/train_peft.py) within S seconds (and within 560 s
#                           of the call's start); runs already done are skipped, so the next call
#                           finishes the list
#   llamacpp [S]            wait up to S s for the build, then llama-bench -p 512 -n 128 -ngl 99 (batch
#                           1) and llama-batched-bench (decode at batch 1 and 8) on $WICK_SMOLLM2_GGUF
#   decode                  wick bench decode, prompt 512, 128 tokens; wick bench decode-batch, 8 sequences
#   lora [MODELS]           wick bench decode-lora (rank-16 adapters on all 7 projections vs none, batch 1
#                           and batch 8 with 8 adapters, same process) on the default GGUF and on random
#                           models (default: default 135m-q4_1 360m-q4_k_m 1.7b-q8_0), wick-lora-<m>.json
#   serve                   wick serve --device cuda, 8 random adapters: 64 streams over them, then on the
#                           base (scripts/device/serve_load.py), wick-serve-{adapters,base}.json
#   llamaserver             the serve step's load on llama-server (-np 64, the 8 adapters converted with
#                           convert_lora_to_gguf.py, per-request `lora`), llamaserver-{adapters,base}.json
#   train                   wick bench train, seq 512 and 2048, batch 8, r 16, 3 warm-up + 20 steps
#                           (CUDA training engine), and seq 512 through Candle's autograd
#   train-parity            wick train on the CUDA training engine vs the CPU (f32), vs Candle's autograd
#                           (bf16), and resumed vs straight (f32): scripts/compare-train-curves.py verdicts
#   embed                   sentence-transformers fp32/fp16 and wick f32/f16 at batch 1, 32, 256
#   coldstart               wick generate in fresh processes: empty CUDA JIT cache, then warm
#   bundle                  $OUT/e2e-$WICK_RUN_TAG.json: every result file, the llama.cpp build log tail
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
results=$stage/results
mkdir -p "$results"
export PYTHONPATH=$stage/site${PYTHONPATH:+:$PYTHONPATH}
wick=${WICK:-$stage/bin/wick}
gguf=${WICK_SMOLLM2_GGUF:-}

need_gguf() {
  [[ -n $gguf && -f $gguf ]] || { echo "e2e: the GGUF is not staged yet (its parts come in two calls)"; exit 1; }
}

case "${1:-}" in
  setup)
    if [[ ! -d $stage/e2e ]]; then
      # Python's tarfile: the image may have no xz binary.
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$stage/files/e2e-extras.tar.xz" "$stage" || exit 1
    fi
    if [[ ! -d $stage/site/liger_kernel ]]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$stage/site" \
        "$stage"/e2e/wheels/*.whl || exit 1
    fi
    python3 -c 'import liger_kernel, importlib.metadata as m; print("liger-kernel", m.version("liger-kernel"))'
    if [[ ! -f $stage/minilm/model.safetensors ]]; then
      mkdir -p "$stage/minilm"
      cp -r "$stage"/e2e/minilm/. "$stage/minilm/"
      python3 "$repo/scripts/device/random_weights.py" "$stage/minilm/model.safetensors.header" \
        "$stage/minilm/model.safetensors" || exit 1
      rm -f "$stage/minilm/model.safetensors.header"
    fi
    python3 -c 'import torch, transformers, peft, sentence_transformers, triton
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "sentence-transformers", sentence_transformers.__version__, "triton", triton.__version__)'
    ;;
  llamacpp-bg) bash "$repo/scripts/device/build-llamacpp-cuda.sh" bg ;;
  train-anchors)
    deadline=${2:?train-anchors SECONDS [RUNS]}
    # Never past 560 s after the call started (on-device.sh's WICK_RUN_DATE): a call has 600 s.
    deadline=$(python3 -c 'import datetime as d, os, sys
start = os.environ.get("WICK_RUN_DATE")
left = 560.0
if start:
    t0 = d.datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=d.timezone.utc)
    left -= (d.datetime.now(d.timezone.utc) - t0).total_seconds()
print(max(0, min(float(sys.argv[1]), left)))' "$deadline")
    echo "train-anchors: $deadline s"
    runs=${3:-eager:512,liger:512,compile:512,reduce-overhead:512,eager:2048,liger:2048,reduce-overhead:2048,compile:2048}
    python3 "$repo/benches/anchors/train_peft.py" --runs "$runs" --deadline-s "$deadline" \
      --out "$results/anchors-train.jsonl"
    ;;
  llamacpp)
    need_gguf
    bash "$repo/scripts/device/build-llamacpp-cuda.sh" wait "${2:-420}" || exit 1
    bin=$stage/llamacpp/build/bin
    "$bin/llama-bench" -m "$gguf" -p 512 -n 128 -ngl 99 -r 5 -o json >"$results/llamacpp-bench.json" || exit 1
    cat "$results/llamacpp-bench.json"
    if [[ -x $bin/llama-batched-bench ]]; then
      "$bin/llama-batched-bench" -m "$gguf" -ngl 99 -c 8192 -npp 512 -ntg 128 -npl 1,8 \
        --output-format jsonl | grep '^{"n_kv_max"' >"$results/llamacpp-batched.jsonl" || true
      cat "$results/llamacpp-batched.jsonl"
    fi
    ;;
  decode)
    need_gguf
    rc=0
    "$wick" bench decode --model "$gguf" --device cuda --prompt-tokens 512 --decode-tokens 128 \
      --out "$results/wick-decode.json" || rc=1
    "$wick" bench decode-batch --model "$gguf" --device cuda --batch 8 --prompt-tokens 512 \
      --decode-tokens 128 --out "$results/wick-decode-batch8.json" || rc=1
    exit $rc
    ;;
  lora)
    rc=0
    for m in ${2:-default 135m-q4_1 360m-q4_k_m 1.7b-q8_0}; do
      case $m in
        default) need_gguf; args=(--model "$gguf") ;;
        1.7b-*) args=(--model random:smollm2-1.7b --quant "${m#*-}" --batch 4 --decode-tokens 128) ;;
        *) args=(--model "random:smollm2-${m%%-*}" --quant "${m#*-}") ;;
      esac
      # stdout has the JSON record too; the table lines are what the log needs.
      timeout 150 "$wick" bench decode-lora "${args[@]}" --out "$results/wick-lora-$m.json" | grep -v '^{' || rc=1
    done
    exit $rc
    ;;
  serve)
    # wick serve --device cuda on the default GGUF with 8 random rank-16 adapters: 64 streams of 128
    # tokens over the 8 adapters, then the same load on the base model (issue 16, done-when 3);
    # scripts/device/serve_load.py also checks 4 requests alone against their text under load.
    need_gguf
    python3 "$repo/scripts/device/random_peft_adapters.py" "$stage/adapters" --count 8 --rank 16 || exit 1
    adapters=() names=()
    for i in 0 1 2 3 4 5 6 7; do adapters+=(--adapter "a$i=$stage/adapters/a$i"); names+=("a$i"); done
    log=$results/wick-serve.log
    "$wick" serve --device cuda --model "$gguf" "${adapters[@]}" --port 8091 --max-batch 8 \
      --max-queue 128 >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do grep -q "listening on" "$log" && break; sleep 1; done
    grep -q "listening on" "$log" || { tail -20 "$log"; kill $pid; exit 1; }
    rc=0
    list=$(IFS=,; echo "${names[*]}")
    python3 "$repo/scripts/device/serve_load.py" http://127.0.0.1:8091 --models "$list" --streams 64 \
      --label "wick serve, 8 adapters" --out "$results/wick-serve-adapters.json" || rc=1
    python3 "$repo/scripts/device/serve_load.py" http://127.0.0.1:8091 --models base --streams 64 \
      --label "wick serve, base" --out "$results/wick-serve-base.json" || rc=1
    kill $pid; wait $pid 2>/dev/null
    tail -3 "$log"
    exit $rc
    ;;
  llamaserver)
    # The same load on llama-server (built by build-llamacpp-cuda.sh from the same sdist): the 8
    # adapters of the serve step converted with llama.cpp's convert_lora_to_gguf.py (the base's
    # config from benches/anchors), loaded with --lora-init-without-apply and picked per request
    # with the `lora` field, -np 64 slots; then the base alone (issue 16, done-when 3).
    need_gguf
    bash "$repo/scripts/device/build-llamacpp-cuda.sh" wait 420 >/dev/null || { echo "no llama.cpp build"; exit 1; }
    server=$stage/llamacpp/build/bin/llama-server
    [[ -x $server ]] || { echo "no llama-server in the build"; exit 1; }
    [[ -d $stage/adapters/a7 ]] ||
      python3 "$repo/scripts/device/random_peft_adapters.py" "$stage/adapters" --count 8 --rank 16 || exit 1
    base=$stage/smollm2-135m-config
    mkdir -p "$base" && cp "$repo/benches/anchors/smollm2_135m_config.json" "$base/config.json"
    loras=() names=()
    for i in 0 1 2 3 4 5 6 7; do
      out=$stage/adapters/a$i.gguf
      [[ -f $out ]] || PYTHONPATH=$stage/e2e/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH} python3 \
        "$stage/e2e/llama.cpp/convert_lora_to_gguf.py" --base "$base" --outtype f16 --outfile "$out" \
        "$stage/adapters/a$i" >"$out.log" 2>&1 || { tail -5 "$out.log"; exit 1; }
      loras+=("$out") names+=("a$i")
    done
    log=$results/llamaserver.log
    "$server" -m "$gguf" --lora "$(IFS=,; echo "${loras[*]}")" --lora-init-without-apply -ngl 99 \
      -np 64 -c $((64 * 512)) --host 127.0.0.1 --port 8092 >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:8092/health >/dev/null && break; sleep 1; done
    curl -sf http://127.0.0.1:8092/health >/dev/null || { tail -20 "$log"; kill $pid; exit 1; }
    rc=0
    python3 "$repo/scripts/device/serve_load.py" http://127.0.0.1:8092 --lora-field \
      --models "$(IFS=,; echo "${names[*]}")" --streams 64 --label "llama-server, 8 adapters" \
      --out "$results/llamaserver-adapters.json" || rc=1
    python3 "$repo/scripts/device/serve_load.py" http://127.0.0.1:8092 --lora-field --models base \
      --streams 64 --label "llama-server, base" --out "$results/llamaserver-base.json" || rc=1
    kill $pid; wait $pid 2>/dev/null
    exit $rc
    ;;
  train)
    need_gguf
    rc=0
    # seq 512 and 2048 on the CUDA training engine (the default path on CUDA), and seq 512 through
    # Candle's autograd (--engine off: the path of session 2, for the record).
    for run in 512: 2048: 512:--engine=off; do
      seq=${run%%:*} extra=${run#*:} name=wick-train-$seq${extra:+-autograd}
      # stdout is the JSON record; the step lines go to stderr (the log).
      "$wick" bench train --model "$gguf" --device cuda --seq-len $seq --batch-size 8 --rank 16 \
        --warmup-steps 3 --steps 20 $extra >"$results/$name.json" || rc=1
      cat "$results/$name.json"
    done
    exit $rc
    ;;
  train-parity)
    # The CUDA training engine against the CPU (f32, step by step), against Candle's autograd on the
    # GPU (bf16, same curve shape), and resumed from a checkpoint against the straight run.
    need_gguf
    rc=0
    common=(--model "$gguf" --data "$repo/data/quickstart.jsonl" --batch-size 4 --max-seq-len 128 --seed 7)
    run() {  # NAME STEPS ARGS...
      local name=$1 steps=$2; shift 2
      rm -rf "/tmp/tp-$name"
      "$wick" train "${common[@]}" --steps "$steps" --out "/tmp/tp-$name" "$@" >/dev/null 2>"/tmp/tp-$name.err" \
        || { tail -5 "/tmp/tp-$name.err"; rc=1; }
      cp "/tmp/tp-$name/metrics.jsonl" "$results/train-curve-$name.jsonl" 2>/dev/null || rc=1
    }
    run cpu-f32 20 --device cpu --dtype f32
    run cuda-f32-engine 20 --device cuda --dtype f32
    run cuda-bf16-engine 20 --device cuda --dtype bf16
    run cuda-bf16-autograd 20 --device cuda --dtype bf16 --engine off
    run cuda-f32-straight 6 --device cuda --dtype f32 --save-every 3
    rm -rf /tmp/tp-cuda-f32-resumed
    "$wick" train --resume /tmp/tp-cuda-f32-straight/checkpoint-3 --out /tmp/tp-cuda-f32-resumed \
      --model "$gguf" --data "$repo/data/quickstart.jsonl" --device cuda --dtype f32 >/dev/null 2>/tmp/tp-resume.err \
      || { tail -5 /tmp/tp-resume.err; rc=1; }
    cp /tmp/tp-cuda-f32-resumed/metrics.jsonl "$results/train-curve-cuda-f32-resumed.jsonl" || rc=1
    grep -h "CUDA training engine\|training on" /tmp/tp-*.err | sort | uniq -c
    c="python3 $repo/scripts/compare-train-curves.py"
    $c "$results/train-curve-cpu-f32.jsonl" "$results/train-curve-cuda-f32-engine.jsonl" \
      --json "$results/parity-train-engine-f32.json" || rc=1
    $c "$results/train-curve-cuda-bf16-autograd.jsonl" "$results/train-curve-cuda-bf16-engine.jsonl" \
      --mode mixed-dtype --json "$results/parity-train-engine-bf16.json" || rc=1
    $c "$results/train-curve-cuda-f32-straight.jsonl" "$results/train-curve-cuda-f32-resumed.jsonl" \
      --abs-tol 1e-5 --json "$results/parity-train-engine-resume.json" || rc=1
    exit $rc
    ;;
  embed)
    rc=0
    python3 "$repo/benches/anchors/embed_st.py" --model "$stage/minilm" --dtypes fp32,fp16 \
      --batch-sizes 1,32,256 --texts 1024 --repeats 3 --out "$results/anchors-embed.json" || rc=1
    for dtype in f32 f16; do
      "$wick" bench embed --model "$stage/minilm" --device cuda --dtype $dtype --batch-sizes 1,32,256 \
        --texts 1024 --repeats 3 --out "$results/wick-embed-$dtype" || rc=1
      rm -f "$results/wick-embed-$dtype.md"
    done
    exit $rc
    ;;
  coldstart)
    need_gguf
    cache=$(mktemp -d)
    rc=0
    : >"$results/coldstart.jsonl"
    # 1: empty JIT cache (the driver compiles every PTX module wick loads); 2, 3: the same cache, warm.
    # CUDA_CACHE_MAXSIZE: the default 256 MiB may be too small to keep everything.
    for run in cold warm warm; do
      start=$(date +%s.%N)
      CUDA_CACHE_PATH=$cache CUDA_CACHE_MAXSIZE=4294967296 "$wick" generate --model "$gguf" --device cuda \
        --prompt "The capital of France is" --raw --max-tokens 8 --temperature 0 >/dev/null 2>"$cache.err" || rc=1
      wall=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 3))")
      cat "$cache.err"
      python3 - "$run" "$wall" "$cache.err" "$(du -sk "$cache" | cut -f1)" >>"$results/coldstart.jsonl" <<'EOF'
import json, re, sys
run, wall, err, cache_kib = sys.argv[1:]
text = open(err).read()
m = re.search(r"first token ([0-9.]+) s after the model file was opened", text)
load = re.search(r"loaded .* in ([0-9.]+) s", text)
print(json.dumps({"benchmark": "coldstart", "jit_cache": run, "first_token_s": float(m.group(1)) if m else None,
                  "load_s": float(load.group(1)) if load else None, "process_wall_s": float(wall),
                  "jit_cache_kib_after": int(cache_kib)}))
EOF
    done
    cat "$results/coldstart.jsonl"
    exit $rc
    ;;
  bundle)
    python3 - "$results" "$OUT/e2e-${WICK_RUN_TAG:-run}.json" "$stage/llamacpp/build.log" <<'EOF'
import json, os, sys
results, out, build_log = sys.argv[1:]
bundle = {"device": os.environ.get("WICK_DEVICE_NAME"), "date": os.environ.get("WICK_RUN_DATE"),
          "files": {}}
for name in sorted(os.listdir(results)):
    text = open(os.path.join(results, name)).read()
    try:
        if name.endswith(".jsonl"):
            value = [json.loads(l) for l in text.splitlines() if l.strip()]
        else:
            value = json.loads(text)
    except ValueError:
        value = {"unparsed": text[-4000:]}
    bundle["files"][name] = value
if os.path.exists(build_log):
    bundle["llamacpp_build_log_tail"] = open(build_log).read()[-3000:]
json.dump(bundle, open(out, "w"), indent=1)
print(f"wrote {out}: {', '.join(bundle['files'])}")
EOF
    ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
