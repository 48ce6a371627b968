#!/usr/bin/env python3
"""Makes tests/fixtures/llamacpp/gguf_export.json (and, with --make-adapter, the deterministic LoRA
adapter in tests/fixtures/llamacpp/export-adapter/) for tests/merge_gguf_matches_llamacpp.rs:
wick merges the adapter into the default GGUF and exports GGUF files in three mixes (f16, q8_0, q4_1); llama.cpp loads
each file and decodes greedily; the fixture keeps each file's sha256 and llama.cpp's tokens, so the
test can check that wick re-exports the same bytes and decodes the same tokens.

llama.cpp decodes each file twice: with its default f16 KV cache (`greedy_ids`, `margins`) and with
an f32 one (`greedy_ids_f32kv`, `margins_f32kv`). On the q4_1 export the two runs pick different
tokens at near-ties (bench/results/q4_1-export-investigation.md), so a single run's margin does not
bound llama.cpp's own noise; `comparable` is the number of leading tokens on which both runs agree
and the smaller margin, less the two runs' difference in margin, stays >= MIN_MARGIN (the two-run
rule of tests/greedy_parity_llamacpp.rs's fixture, widened by the spread the KV cache type causes),
and the test compares wick's tokens with llama.cpp's only over that prefix. `--runs-cache` keeps the
llama.cpp runs, so the prompt choice can be changed without redoing them.

Needs numpy, jinja2, diskcache, typing-extensions, the gguf-py and llama-cpp-python 0.3.36 sources
(on PYTHONPATH) and a build of the llama.cpp it vendors (scripts/llamacpp/build-llama-bench.sh
native: libllama.so and llama-quantize), and a wick binary:

    PYTHONPATH=/work/llamacpp/llama_cpp_python-0.3.36:/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py \\
    python scripts/llamacpp/make_export_fixture.py \\
        --model ~/.cache/wick/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --wick target/release/wick --lib /work/llamacpp/build-native/bin \\
        --out tests/fixtures/llamacpp/gguf_export.json

The adapter (--make-adapter) is LoRA rank 1 on q_proj, k_proj and v_proj of all 30 layers, alpha 2,
with A and B drawn from a seeded normal distribution and stored in f16, so merging it changes the
model's greedy output. The script also quantizes wick's f16 export with llama-quantize into each
quantized mix and records whether every tensor got the type wick chose (`llama_quantize_types`).
"""

import argparse
import datetime
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

N_GENERATE = 32
# q4_k_m is left out of the fixture to keep the fixture run (about 3 min per mix with a dev-profile
# wick on the shared 2-core box) and the test short (issue 17 asks for f16 and q8_0 at least);
# tests/gguf_quantize_matches_ggml.rs checks the K-quant blocks against ggml's.
QUANTS = ["f16", "q8_0", "q4_1"]
LLAMA_QUANTIZE_NAMES = {"q8_0": "Q8_0", "q4_1": "Q4_1"}
# Candidates, in order; the 5 with the longest comparable prefix (see `comparable`) over the exported
# files are kept (a 135M model has near-tied logits: a different summation order flips them, in
# llama.cpp itself between builds and between KV cache types).
CANDIDATES = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):\n    ",
    "The three primary colors are",
    "Water boils at a temperature of",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
    "Machine learning is a field of",
    "1, 2, 3, 4, 5,",
    "The first president of the United States was",
    "import numpy as np\nimport",
    "Monday, Tuesday, Wednesday,",
    # Added after the first twelve: only one of them kept a margin >= 0.1 over 32 tokens of every
    # merged file (the random adapter makes the model less sure); counting and listing prompts do.
    "1 2 3 4 5 6 7 8",
    "10, 20, 30, 40, 50,",
    "A, B, C, D, E, F,",
    "a b c d e f g h",
    "January, February, March, April,",
    "one, two, three, four, five,",
    "2, 4, 6, 8, 10, 12,",
    "5, 10, 15, 20, 25,",
    "100, 200, 300, 400,",
    "for i in range(10):\n    print(i)\nfor i in range(10):\n",
    "red, green, blue, red, green, blue,",
    "1. First\n2. Second\n3. Third\n4.",
    "x = 1\ny = 2\nz = 3\n",
    "The alphabet: A B C D E F G",
    "Mon Tue Wed Thu Fri",
    "0 1 2 3 4 5 6 7 8 9",
    "11, 12, 13, 14, 15,",
    "<html>\n<head>\n",
    "Hello! Hello! Hello!",
    "Sunday, Monday, Tuesday,",
    "zero, one, two, three,",
    "3, 6, 9, 12, 15,",
    "int a = 0;\nint b = 1;\nint c = 2;\n",
    "North, South, East,",
]
MIN_MARGIN = 0.1
ADAPTER_DIR = "tests/fixtures/llamacpp/export-adapter"
SEED = 2024


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_adapter(out_dir):
    """Rank-1 LoRA on q/k/v of SmolLM2-135M (hidden 576, 3 kv heads of 64), seeded, in f16."""
    rng = np.random.default_rng(SEED)
    shapes = {"q_proj": 576, "k_proj": 192, "v_proj": 192}
    tensors = {}
    for layer in range(30):
        for module, out_features in shapes.items():
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.15, (1, 576)).astype(np.float16)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.15, (out_features, 1)).astype(np.float16)
    os.makedirs(out_dir, exist_ok=True)
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = tensors[name].tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 2, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj"], "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "base_model_name_or_path": "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def greedy(model, prompts, threads, kv_type=None):
    """llama.cpp's greedy tokens and top-2 margins for each prompt (raw, BOS as the GGUF asks), with
    its default (f16) KV cache or, given a GGML type, that one for both K and V."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, seed=0, verbose=False,
                          type_k=kv_type, type_v=kv_type)
    out = []
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(tokens)
        ids, margins = [], []
        for _ in range(N_GENERATE):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits, kind="stable")
            ids.append(int(order[0]))
            margins.append(round(float(logits[order[0]] - logits[order[1]]), 4))
            llm.eval([ids[-1]])
        out.append({"prompt": prompt, "prompt_ids": [int(t) for t in tokens], "greedy_ids": ids,
                    "margins": margins,
                    "greedy_text": llm.detokenize(ids).decode("utf-8", errors="replace")})
    return out


def comparable(case):
    """Leading tokens on which both KV cache runs pick the same token and the smaller margin, less
    the two runs' difference in margin, stays >= MIN_MARGIN. At the first step that fails llama.cpp's
    own choice is within its noise, and later tokens follow from it. (On the quantized files the
    KV cache type alone moves a margin by up to 0.23 nats, e.g. q8_0 "5, 10, 15, 20, 25," step 6:
    0.355 vs 0.122, where wick picks the runner-up; a flat 0.1 does not bound that.)"""
    n = 0
    for a, b, ma, mb in zip(case["greedy_ids"], case["greedy_ids_f32kv"], case["margins"], case["margins_f32kv"]):
        if a != b or min(ma, mb) - abs(ma - mb) < MIN_MARGIN:
            break
        n += 1
    return n


def greedy_two_kv(model, prompts, threads):
    """greedy() with the f16 and the f32 KV cache, merged per prompt (see the module doc)."""
    import llama_cpp

    f16kv = greedy(model, prompts, threads)
    f32kv = greedy(model, prompts, threads, llama_cpp.GGML_TYPE_F32)
    for a, b in zip(f16kv, f32kv):
        a["greedy_ids_f32kv"], a["margins_f32kv"] = b["greedy_ids"], b["margins"]
    return f16kv


def tensor_types(path):
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def compare_with_llama_quantize(lib, f16_path, exported, work):
    """llama-quantize of wick's f16 export into each mix: do its tensor types equal wick's?"""
    report = {}
    for quant, name in LLAMA_QUANTIZE_NAMES.items():
        out = os.path.join(work, f"llama-quantize-{quant}.gguf")
        subprocess.run([os.path.join(lib, "llama-quantize"), f16_path, out, name, "2"], check=True,
                       capture_output=True)
        theirs, ours = tensor_types(out), tensor_types(exported[quant])
        differ = sorted(n for n in ours if theirs.get(n) != ours[n])
        report[quant] = {"tensors": len(ours), "types_differ": differ,
                         "type_counts": {t: list(ours.values()).count(t) for t in sorted(set(ours.values()))}}
    return report


def export_and_run(args, run_greedy):
    """Exports each mix with wick, runs llama.cpp on it (and on the base) and llama-quantize."""
    with tempfile.TemporaryDirectory() as work:
        exported, files = {}, {}
        for quant in QUANTS:
            path = os.path.join(work, f"merged-{quant}.gguf")
            subprocess.run([args.wick, "merge", "--model", args.model, "--adapter", ADAPTER_DIR,
                            "--format", "gguf", "--quant", quant, "--out", path], check=True)
            exported[quant] = path
            files[quant] = {"sha256": sha256(path), "bytes": os.path.getsize(path), "prompts": run_greedy(path)}
        base = run_greedy(args.model)
        quantize_report = compare_with_llama_quantize(args.lib, exported["f16"], exported, work)
    return files, base, quantize_report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the default GGUF (SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--wick", default="target/release/wick")
    ap.add_argument("--lib", required=True, help="directory of the llama.cpp build (libllama.so, llama-quantize)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--make-adapter", action="store_true", help=f"(re)write {ADAPTER_DIR}")
    ap.add_argument("--runs-cache", help="JSON of the exports' hashes and llama.cpp runs: read if it exists "
                    "(to change the prompt choice without the ~6 min of runs), else written")
    ap.add_argument("--raw-json", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_json:  # subprocess mode: one model file, the candidate prompts
        json.dump(greedy_two_kv(args.raw_json[0], CANDIDATES, args.threads), sys.stdout)
        return
    if args.make_adapter:
        make_adapter(ADAPTER_DIR)

    def run_greedy(path):
        env = dict(os.environ, LLAMA_CPP_LIB_PATH=args.lib)
        cmd = [sys.executable, __file__, "--model", args.model, "--lib", args.lib, "--out", "-",
               "--threads", str(args.threads), "--raw-json", path]
        return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)

    if args.runs_cache and os.path.exists(args.runs_cache):
        with open(args.runs_cache) as f:
            files, base, quantize_report = json.load(f)
    else:
        files, base, quantize_report = export_and_run(args, run_greedy)
        if args.runs_cache:
            with open(args.runs_cache, "w") as f:
                json.dump([files, base, quantize_report], f)
    for q in QUANTS:
        for case in files[q]["prompts"]:
            case["comparable"] = comparable(case)

    lows, ranks = [], []
    for i, prompt in enumerate(CANDIDATES):
        low = min(min(files[q]["prompts"][i]["margins"]) for q in QUANTS)
        spans = [files[q]["prompts"][i]["comparable"] for q in QUANTS]
        # Mixes whose comparable tokens already differ from the unmerged base's: there the test
        # checks the merged weights, not only what the base model says anyway.
        changed = sum(files[q]["prompts"][i]["greedy_ids"][:n] != base[i]["greedy_ids"][:n]
                      for q, n in zip(QUANTS, spans))
        print(f"{prompt!r}: smallest f16-KV margin over the {len(QUANTS)} files {low:.4f}, comparable "
              f"tokens {spans}, {changed} of them differ from the base", file=sys.stderr)
        lows.append(low)
        # Changed mixes first, then the shortest comparable prefix over the mixes (every mix needs
        # compared tokens), then their sum.
        ranks.append((changed, min(spans), sum(spans)))
    # The 5 candidates with the best rank (in candidate order on ties). With this adapter few
    # prompts keep >= MIN_MARGIN over all 32 tokens, so the test compares each up to its
    # comparable prefix.
    keep = sorted(sorted(range(len(CANDIDATES)), key=lambda i: tuple(-r for r in ranks[i]))[:5])
    for q in QUANTS:
        total = sum(files[q]["prompts"][i]["comparable"] for i in keep)
        print(f"{q}: {total} of {len(keep) * N_GENERATE} kept tokens comparable", file=sys.stderr)
    os.environ.setdefault("LLAMA_CPP_LIB_PATH", args.lib)  # llama_cpp loads libllama.so on import
    import llama_cpp

    fixture = {
        "made_by": "scripts/llamacpp/make_export_fixture.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "adapter": ADAPTER_DIR,
        "n_generate": N_GENERATE,
        "min_margin": MIN_MARGIN,
        "kv_cache_types": ["f16 (greedy_ids, margins)", "f32 (greedy_ids_f32kv, margins_f32kv)"],
        "candidates_kept": [CANDIDATES[i] for i in keep],
        "kept_smallest_margins": [round(lows[i], 4) for i in keep],
        "base_greedy_ids": [base[i]["greedy_ids"] for i in keep],
        "llama_quantize_types": quantize_report,
        "exports": {q: {"sha256": files[q]["sha256"], "bytes": files[q]["bytes"],
                        "prompts": [files[q]["prompts"][i] for i in keep]} for q in QUANTS},
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for q in QUANTS:
        same = sum(files[q]["prompts"][i]["greedy_ids"] == base[i]["greedy_ids"] for i in keep)
        print(f"{q}: sha256 {files[q]['sha256'][:16]}..., {same} of 5 kept prompts decode as the unmerged base",
              file=sys.stderr)
    print(json.dumps(quantize_report, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
