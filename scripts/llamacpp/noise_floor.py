#!/usr/bin/env python3
"""How far llama.cpp's logits sit from exact f32 maths on the default GGUF: the scale against which
tests/generate_matches_llamacpp.rs judges wick's quantized path.

Exact maths: tests/fixtures/transformers/smollm2_gguf_logits.json (HF transformers, weights
dequantized to f32, scripts/make_transformers_gguf_fixture.py). llama.cpp evaluates the same token
ids in one batch with three settings: f32 KV cache without flash attention, its default f16 KV cache
without and with flash attention. For each, the largest and mean |difference| over transformers'
top-8 logits at every position of the 7 prompts.

    /opt/llamacpp-venv/bin/python scripts/llamacpp/noise_floor.py --model SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import json

import llama_cpp
import numpy as np

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", default="tests/fixtures/transformers/smollm2_gguf_logits.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(args.reference) as f:
        reference = json.load(f)

    for kv, flash in [(GGML_TYPE_F32, False), (GGML_TYPE_F16, False), (GGML_TYPE_F16, True)]:
        llm = llama_cpp.Llama(
            model_path=args.model,
            n_ctx=512,
            n_batch=512,
            n_threads=args.threads,
            logits_all=True,
            verbose=False,
            flash_attn=flash,
            type_k=kv,
            type_v=kv,
        )
        diffs = []
        for case in reference["cases"]:
            llm.reset()
            llm.eval(case["ids"])
            for p, pos in enumerate(case["positions"]):
                row = np.array(llm.scores[p], dtype=np.float64)
                diffs.extend(abs(row[i] - v) for i, v in zip(pos["top_ids"], pos["top_logits"]))
        name = f"kv {'f32' if kv == GGML_TYPE_F32 else 'f16'}, flash attention {'on' if flash else 'off'}"
        print(f"llama.cpp {llama_cpp.__version__} ({name}) vs transformers f32: "
              f"largest {max(diffs):.3f}, mean {np.mean(diffs):.4f} over {len(diffs)} logits")


if __name__ == "__main__":
    main()
