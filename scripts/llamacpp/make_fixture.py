#!/usr/bin/env python3
"""Makes tests/fixtures/llamacpp/greedy.json: llama.cpp's tokens, greedy continuations and logits
for raw prompts on one GGUF file, for tests/generate_matches_llamacpp.rs.

Needs llama-cpp-python 0.3.36 (scripts/llamacpp/install-python.sh) and, for the cross-build check,
a second build of libllama.so (scripts/llamacpp/build-llama-bench.sh generic).

    /opt/llamacpp-venv/bin/python scripts/llamacpp/make_fixture.py \
        --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --second-lib /tmp/llamacpp-sdist/build-generic/bin \
        --out tests/fixtures/llamacpp/greedy.json

For every candidate prompt it records, from the llama-cpp-python build:
  - the prompt token ids (BOS added only where the GGUF metadata asks for it, as llama.cpp does),
  - the first N greedy token ids (argmax of llama.cpp's logits, one token evaluated at a time),
  - at every generated position, llama.cpp's top-5 token ids with their logits (the logits that
    chose the token: logits_all=True), so a test can compare logits teacher-forced,
  - llama.cpp's own noise floor: the largest and mean difference of those logits when the same
    tokens are evaluated in one batch instead of one at a time (up to ~0.9 on this model).
With --second-lib the greedy run is repeated in a subprocess on the other build
(LLAMA_CPP_LIB_PATH); a 135M model has near-tied logits and a different summation order flips
some of them, so only prompts whose N tokens agree on both builds, and whose top-2 margin stays
above --min-margin at every step, are kept for the greedy check.
"""

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys

# Raw prompts (no chat template). The fixture keeps the ones both builds agree on.
CANDIDATES = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "def fibonacci(n):\n    ",
    "The three primary colors are",
    "Water boils at a temperature of",
    "The quick brown fox",
    "In 1492, Christopher Columbus",
    "Photosynthesis is the process by which",
    "1, 2, 3, 4, 5,",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
    "Machine learning is a field of",
    "The Eiffel Tower is located in",
    "The chemical symbol for gold is",
    "Monday, Tuesday, Wednesday,",
    "The first president of the United States was",
    "A triangle has three",
    "The sun rises in the",
    "January, February, March,",
    "Python is a programming language that",
    "The human heart has four",
    "Shakespeare wrote the play",
    "import numpy as np\nimport",
    "The speed of light is",
    "one, two, three, four,",
    "10, 20, 30, 40,",
    "A, B, C, D, E,",
    "for i in range(10):\n   ",
    "<html>\n<head>\n",
    "Q: What is 2 + 2?\nA:",
    "red, orange, yellow, green,",
    "#include <stdio.h>\n\nint main",
]

N_GENERATE = 16
TOP_K = 5


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_llama(model, prompts, n_generate, threads):
    """Greedy continuations and per-position top-k logits from the loaded llama.cpp build."""
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=512,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        seed=0,
        verbose=False,
    )
    out = []
    for prompt in prompts:
        # add_bos=True means "add the special tokens the model's metadata asks for" in
        # llama_tokenize; for SmolLM2 the GGUF says add_bos_token = false.
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(tokens)
        generated, steps = [], []
        for _ in range(n_generate):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits, kind="stable")
            top = [int(i) for i in order[:TOP_K]]
            steps.append(
                {
                    "top_ids": top,
                    "top_logits": [float(logits[i]) for i in top],
                    "margin": float(logits[order[0]] - logits[order[1]]),
                }
            )
            token = top[0]
            generated.append(token)
            llm.eval([token])
        # llama.cpp against itself: the same tokens in one batch (its prefill kernels) instead of
        # one at a time (its decode kernels). The difference is its own noise floor, the scale
        # against which a second implementation's logits can be judged.
        sequential = [np.array(llm.scores[len(tokens) - 1 + i], dtype=np.float64) for i in range(n_generate)]
        llm.reset()
        llm.eval(tokens + generated[:-1])
        batch_diffs = []
        for i, step in enumerate(steps):
            batched = np.array(llm.scores[len(tokens) - 1 + i], dtype=np.float64)
            batch_diffs.extend(abs(batched[t] - sequential[i][t]) for t in step["top_ids"])
        out.append(
            {
                "prompt": prompt,
                "prompt_ids": [int(t) for t in tokens],
                "add_bos": bool(llm._model.add_bos_token()) if hasattr(llm, "_model") else None,
                "greedy_ids": generated,
                "greedy_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
                "steps": steps,
                "self_batch_vs_sequential_max": float(max(batch_diffs)),
                "self_batch_vs_sequential_mean": float(np.mean(batch_diffs)),
            }
        )
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    return {"version": llama_cpp.__version__, "system_info": info.strip(), "prompts": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the GGUF file")
    ap.add_argument("--out", help="fixture JSON to write")
    ap.add_argument("--second-lib", help="directory of a second libllama.so build for the cross-build check")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=int, default=8, help="prompts to keep")
    ap.add_argument(
        "--min-margin",
        type=float,
        default=0.2,
        help="keep only prompts whose top-2 logit margin stays above this at every greedy step",
    )
    ap.add_argument("--raw-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.raw_json:  # subprocess mode: greedy run on whatever LLAMA_CPP_LIB_PATH points at
        json.dump(run_llama(args.model, CANDIDATES, N_GENERATE, args.threads), sys.stdout)
        return

    first = run_llama(args.model, CANDIDATES, N_GENERATE, args.threads)
    second = None
    if args.second_lib:
        env = dict(os.environ, LLAMA_CPP_LIB_PATH=args.second_lib)
        raw = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads), "--raw-json"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout
        second = json.loads(raw)

    kept, report = [], []
    for i, entry in enumerate(first["prompts"]):
        agree = None
        if second is not None:
            other = second["prompts"][i]
            same = 0
            while same < N_GENERATE and other["greedy_ids"][same] == entry["greedy_ids"][same]:
                same += 1
            agree = same
            entry["second_build_agreeing_tokens"] = same
        entry["min_margin"] = min(s["margin"] for s in entry["steps"])
        report.append((entry["prompt"], agree, entry["min_margin"], entry["greedy_text"]))
        stable = entry["min_margin"] >= args.min_margin
        if (agree is None or agree == N_GENERATE) and stable and len(kept) < args.keep:
            kept.append(entry)

    for prompt, agree, margin, text in report:
        print(f"{prompt!r}: builds agree on {agree} tokens, min top-2 margin {margin:.4f} -> {text!r}", file=sys.stderr)
    if len(kept) < 5:
        sys.exit(f"only {len(kept)} prompts agree across builds with margin >= {args.min_margin}; add candidates")

    fixture = {
        "made_by": "scripts/llamacpp/make_fixture.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_python": first["version"],
        "llama_cpp_system_info": first["system_info"],
        "second_build_system_info": second["system_info"] if second else None,
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "n_generate": N_GENERATE,
        "threads": args.threads,
        "min_margin": args.min_margin,
        "prompts": kept,
        "candidates_report": [
            {"prompt": p, "second_build_agreeing_tokens": a, "min_margin": m} for p, a, m, _ in report
        ],
    }
    text = json.dumps(fixture, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
