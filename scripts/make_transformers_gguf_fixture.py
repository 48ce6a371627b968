#!/usr/bin/env python3
"""Makes tests/fixtures/transformers/smollm2_gguf_logits.json: HF transformers' f32 logits for the
default GGUF file (transformers dequantizes every tensor to f32 on load), for
tests/gguf_matches_transformers.rs.

This pins wick's dense decoder to an implementation that is not ours, with no activation
quantization on either side, so the tolerance can be tight. (llama.cpp quantizes activations to
Q8_1 in every matrix product; that comparison is tests/generate_matches_llamacpp.rs.)

    PYTHON=/opt/refvenv/bin/python   # torch (CPU), transformers >= 4.46, gguf
    $PYTHON scripts/make_transformers_gguf_fixture.py \
        --model ~/.cache/wick/models/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out tests/fixtures/transformers/smollm2_gguf_logits.json

For each prompt (token ids from the llama.cpp fixture, so tokenization is not under test here) it
records, at every position, the top-8 token ids with their logits, and the logits of 8 fixed token
ids (so low-ranked logits are checked too), plus the log-sum-exp of the row.
"""

import argparse
import datetime
import hashlib
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

FIXED_IDS = [0, 1, 2, 198, 260, 1000, 20000, 49151]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts-from", default="tests/fixtures/llamacpp/greedy.json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.prompts_from) as f:
        source = json.load(f)
    directory, name = os.path.split(os.path.abspath(os.path.expanduser(args.model)))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()

    cases = []
    for case in source["prompts"]:
        # The prompt and llama.cpp's greedy continuation: long enough to cover many positions.
        ids = case["prompt_ids"] + case["greedy_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        positions = []
        for row in logits:
            top = row.topk(8)
            positions.append(
                {
                    "top_ids": top.indices.tolist(),
                    "top_logits": [round(v, 5) for v in top.values.tolist()],
                    "fixed_logits": [round(row[i].item(), 5) for i in FIXED_IDS],
                    "logsumexp": round(torch.logsumexp(row, 0).item(), 5),
                }
            )
        cases.append({"prompt": case["prompt"], "ids": ids, "positions": positions})

    out = {
        "made_by": "scripts/make_transformers_gguf_fixture.py",
        "date": datetime.date.today().isoformat(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model_file": name,
        "model_sha256": sha256(os.path.join(directory, name)),
        "fixed_ids": FIXED_IDS,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
