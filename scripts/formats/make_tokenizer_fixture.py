#!/usr/bin/env python3
"""Makes tests/fixtures/formats/smollm2_llamacpp_tokens.json: llama.cpp's tokenization of a set of
strings with the tokenizer embedded in a GGUF file, for tests/formats_tokenizer.rs.

Needs llama-cpp-python (0.3.36 was used: scripts/llamacpp/install-python.sh). Loads the vocabulary
only (no weights).

    $PYTHON scripts/formats/make_tokenizer_fixture.py \
        --model SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures/formats/smollm2_llamacpp_tokens.json

For each text it records llama.cpp's ids with special-token parsing on (so `<|im_start|>` is one id)
and without BOS (`add_bos` says whether the GGUF asks for one), and llama.cpp's detokenization.
"""

import argparse
import datetime
import hashlib
import json

import llama_cpp

TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces and trailing  ",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "Unicode: héllo wörld, naïve café, 日本語のテキスト, emoji 🎉🚀, Ελληνικά",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "It's we're they've I'd you'll CAPITALS MiXeD",
    "a  b   c    d",
    "<|endoftext|>after end",
    "https://example.com/path?query=1&x=2 #hashtag @user",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    cases = []
    for text in TEXTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        detok = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append({"text": text, "ids": ids, "decoded": detok})
    out = {
        "made_by": "scripts/formats/make_tokenizer_fixture.py",
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": args.model.split("/")[-1],
        "model_sha256": sha256(args.model),
        "add_bos": bool(llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"),
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
