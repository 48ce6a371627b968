#!/usr/bin/env python3
"""Makes tests/fixtures/llamacpp/chat_quantized.json: what llama.cpp answers, greedily, to the chat
prompt that wick's quantized CPU path was once thought to get wrong (tests/quantized_matches_dense.rs).

llama.cpp multiplies Q4_1 weights by activations rounded to Q8_1 blocks, as wick's CPU kernel does;
dense f32 weights skip that rounding, so the quantized file's own answer can differ from the dense
one on near-tied logits. This fixture records the quantized answer from llama.cpp itself.

Needs llama-cpp-python 0.3.36 (scripts/llamacpp/install-python.sh); with --second-lib the greedy run
is repeated on a second libllama.so build (scripts/llamacpp/build-llama-bench.sh generic), and the
number of leading tokens both builds agree on is stored (different builds sum in different orders).

    /opt/llamacpp-venv/bin/python scripts/make_quantized_chat_fixture.py \
        --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --second-lib /tmp/llamacpp-sdist/build-generic/bin \
        --out tests/fixtures/llamacpp/chat_quantized.json
"""

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys

# SmolLM2-135M-Instruct's chat template for one user message (the template adds its default system
# message when none is given), with the assistant header: what `wick generate --chat` renders.
CHAT_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
N_GENERATE = 16
TOP_K = 5


def run_llama(model, threads):
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, seed=0, verbose=False)
    tokens = llm.tokenize(CHAT_TEXT.encode("utf-8"), add_bos=False, special=True)
    llm.eval(tokens)
    generated, steps = [], []
    for _ in range(N_GENERATE):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        order = np.argsort(-logits, kind="stable")
        top = [int(i) for i in order[:TOP_K]]
        steps.append({"top_ids": top, "top_logits": [float(logits[i]) for i in top],
                      "margin": float(logits[order[0]] - logits[order[1]])})
        generated.append(top[0])
        llm.eval([top[0]])
    return {
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
        "prompt_ids": [int(t) for t in tokens],
        "greedy_ids": generated,
        "greedy_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
        "steps": steps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--second-lib")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_json:
        json.dump(run_llama(args.model, args.threads), sys.stdout)
        return
    first = run_llama(args.model, args.threads)
    agree, second = None, None
    if args.second_lib:
        env = dict(os.environ, LLAMA_CPP_LIB_PATH=args.second_lib)
        second = json.loads(subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads), "--raw-json"],
            env=env, check=True, capture_output=True, text=True).stdout)
        agree = 0
        while agree < N_GENERATE and second["greedy_ids"][agree] == first["greedy_ids"][agree]:
            agree += 1
    with open(args.model, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    fixture = {
        "made_by": "scripts/make_quantized_chat_fixture.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_python": first["version"],
        "llama_cpp_system_info": first["system_info"],
        "second_build_system_info": second["system_info"] if second else None,
        "model_file": os.path.basename(args.model),
        "model_sha256": digest,
        "chat_text": CHAT_TEXT,
        "prompt_ids": first["prompt_ids"],
        "greedy_ids": first["greedy_ids"],
        "greedy_text": first["greedy_text"],
        "second_build_greedy_text": second["greedy_text"] if second else None,
        "second_build_agreeing_tokens": agree,
        "steps": first["steps"],
    }
    print(f"{first['greedy_text']!r}; second build: {fixture['second_build_greedy_text']!r}, agree on {agree}",
          file=sys.stderr)
    text = json.dumps(fixture, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
