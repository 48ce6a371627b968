#!/usr/bin/env python3
"""Makes tests/fixtures/llamacpp/greedy_parity.json: llama.cpp's greedy continuations of 54 prompts
(prose, code, lists, numbers, multilingual, chat) on the default GGUF, from two CPU builds, with
llama.cpp's top-2 logit margin at every position, for tests/greedy_parity_llamacpp.rs.

Needs numpy, jinja2, diskcache, typing-extensions, the llama-cpp-python 0.3.36 sources (its sdist's
llama_cpp/ on PYTHONPATH, or the package installed) and two libllama.so builds of the llama.cpp it
vendors (scripts/llamacpp/build-llama-bench.sh native and avx2):

    PYTHONPATH=/work/llamacpp/llama_cpp_python-0.3.36 python scripts/llamacpp/make_parity_fixture.py \\
        --model ~/.cache/wick/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --lib /work/llamacpp/build-native/bin --second-lib /work/llamacpp/build-avx2/bin \\
        --out tests/fixtures/llamacpp/greedy_parity.json

For every prompt and build: the prompt's token ids, N_GENERATE greedy tokens (argmax of llama.cpp's
logits, one token evaluated at a time after the prompt in one batch, llama.cpp's defaults otherwise:
f16 KV cache, 2 threads), and at every position llama.cpp's top-3 ids and logits. Raw prompts are
tokenized as llama.cpp does (BOS only where the GGUF asks for it); chat prompts are one user message
rendered with the GGUF's own chat template (jinja2) plus the assistant header, tokenized with special
tokens parsed. Nothing is filtered: the test decides which prompts count.
"""

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys

N_GENERATE = 32
TOP_K = 3

PROMPTS = [
    # prose
    ("prose", "The old lighthouse keeper climbed the stairs every evening because"),
    ("prose", "In the middle of the night, the city"),
    ("prose", "She opened the letter and read the first line:"),
    ("prose", "The history of the printing press begins"),
    ("prose", "Rain fell softly on the roof of the small cottage, and"),
    ("prose", "The best way to learn a new language is"),
    ("prose", "Scientists have recently discovered that"),
    ("prose", "The village was quiet until the day the stranger arrived."),
    ("prose", "Climate change affects farmers in many ways. For example,"),
    ("prose", "My favourite season is autumn because"),
    ("prose", "The museum's new exhibition explores"),
    ("prose", "When the train finally stopped, the passengers"),
    # code
    ("code", "def quicksort(arr):\n"),
    ("code", "import os\nimport sys\n\ndef main():\n"),
    ("code", "class Stack:\n    def __init__(self):\n"),
    ("code", "function add(a, b) {\n"),
    ("code", "SELECT name, age FROM users WHERE"),
    ("code", "#include <iostream>\n\nint main() {\n"),
    ("code", "fn main() {\n    let v = vec![1, 2, 3];\n"),
    ("code", "<!DOCTYPE html>\n<html>\n<body>\n"),
    ("code", "for (let i = 0; i < 10; i++) {\n"),
    ("code", "def is_prime(n):\n    \"\"\"Return True if n is prime.\"\"\"\n"),
    # lists
    ("list", "Shopping list:\n1. Milk\n2. Eggs\n3."),
    ("list", "The planets of the solar system are Mercury, Venus,"),
    ("list", "Things to pack for a beach trip:\n-"),
    ("list", "The days of the week are Monday,"),
    ("list", "Top five programming languages:\n1. Python\n2."),
    ("list", "Ingredients for pancakes: flour,"),
    ("list", "The colors of the rainbow are red, orange,"),
    ("list", "Steps to change a tire:\nStep 1:"),
    # numbers
    ("numbers", "2, 4, 6, 8, 10,"),
    ("numbers", "The square root of 144 is"),
    ("numbers", "1, 1, 2, 3, 5, 8, 13,"),
    ("numbers", "In 1969, the first humans"),
    ("numbers", "100, 90, 80, 70,"),
    ("numbers", "The year 2000 was"),
    ("numbers", "3.14159 is the value of"),
    ("numbers", "Question: What is 12 times 12?\nAnswer:"),
    # multilingual
    ("multilingual", "La capitale de la France est"),
    ("multilingual", "Der schnelle braune Fuchs"),
    ("multilingual", "El perro corre por el parque y"),
    ("multilingual", "Il était une fois une petite fille qui"),
    ("multilingual", "Ich habe heute Morgen"),
    ("multilingual", "Mi nombre es Juan y vivo en"),
    ("multilingual", "Oggi è una bella giornata per"),
    ("multilingual", "Bom dia! Hoje vamos"),
    # chat (one user message through the GGUF's chat template)
    ("chat", "What is the capital of Japan?"),
    ("chat", "Write a haiku about the sea."),
    ("chat", "How do I reverse a list in Python?"),
    ("chat", "Give me three tips for better sleep."),
    ("chat", "What is photosynthesis?"),
    ("chat", "Translate 'good morning' into French."),
    ("chat", "Explain what a black hole is in one sentence."),
    ("chat", "What is 15 plus 27?"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def chat_text(llm, user):
    import jinja2

    template = llm.metadata["tokenizer.chat_template"]
    env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user}], add_generation_prompt=True, bos_token="", eos_token=""
    )


def run_llama(model, threads):
    """Greedy continuations and per-position top-k logits from the loaded llama.cpp build."""
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, seed=0, verbose=False)
    out = []
    for kind, prompt in PROMPTS:
        if kind == "chat":
            text = chat_text(llm, prompt)
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        else:
            text = prompt
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(tokens)
        generated, steps = [], []
        for _ in range(N_GENERATE):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits, kind="stable")
            top = [int(i) for i in order[:TOP_K]]
            steps.append({"top_ids": top, "top_logits": [round(float(logits[i]), 4) for i in top]})
            generated.append(top[0])
            llm.eval([top[0]])
        out.append({
            "kind": kind,
            "prompt": prompt,
            "text": text,
            "prompt_ids": [int(t) for t in tokens],
            "greedy_ids": generated,
            "greedy_text": llm.detokenize(generated).decode("utf-8", errors="replace"),
            "steps": steps,
        })
    info = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    return {"version": llama_cpp.__version__, "system_info": info, "prompts": out}


def run_build(lib, model, threads):
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=lib)
    raw = subprocess.run([sys.executable, __file__, "--model", model, "--threads", str(threads), "--raw-json",
                          "--lib", lib, "--second-lib", lib, "--out", "-"],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the GGUF file")
    ap.add_argument("--lib", required=True, help="directory of the first libllama.so build (native)")
    ap.add_argument("--second-lib", required=True, help="directory of the second build (avx2)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--raw-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_json:
        json.dump(run_llama(args.model, args.threads), sys.stdout)
        return

    first = run_build(args.lib, args.model, args.threads)
    second = run_build(args.second_lib, args.model, args.threads)
    prompts = []
    for a, b in zip(first["prompts"], second["prompts"]):
        assert a["prompt_ids"] == b["prompt_ids"], a["prompt"]
        common = 0
        while common < N_GENERATE and a["greedy_ids"][common] == b["greedy_ids"][common]:
            common += 1
        entry = dict(a)
        entry["second_build_steps"] = b["steps"]
        entry["second_build_greedy_ids"] = b["greedy_ids"]
        entry["common_prefix"] = common
        prompts.append(entry)
        print(f"[{a['kind']}] {a['prompt']!r}: builds agree on {common} tokens -> {a['greedy_text']!r}",
              file=sys.stderr)
    fixture = {
        "made_by": "scripts/llamacpp/make_parity_fixture.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "llama_cpp_python": first["version"],
        "first_build_system_info": first["system_info"],
        "second_build_system_info": second["system_info"],
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "n_generate": N_GENERATE,
        "threads": args.threads,
        "prompts": prompts,
    }
    with open(args.out, "w") as f:
        # One prompt per line: readable diffs, a third of the indented size.
        f.write("{\n")
        head = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items() if k != "prompts"]
        f.write(",\n".join(head) + ',\n "prompts": [\n')
        f.write(",\n".join("  " + json.dumps(p, ensure_ascii=False) for p in prompts))
        f.write("\n ]\n}\n")


if __name__ == "__main__":
    main()
