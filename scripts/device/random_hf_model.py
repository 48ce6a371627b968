#!/usr/bin/env python3
"""Writes an HF model directory with seeded random weights at the shapes of a committed config, for
`wick bench train --model DIR` on the GPU machine (real checkpoints don't fit a device call; training
throughput and memory depend on the shapes, not on the values).

    python3 random_hf_model.py CONFIG.json TOKENIZER.json OUT_DIR

CONFIG.json: an HF config (model_type llama or qwen2; keys starting with "_" are dropped), e.g.
benches/anchors/qwen2.5_0.5b_config.json. TOKENIZER.json `wordlevel` writes a WordLevel tokenizer
of the config's vocab_size instead (tokens w0 .. w{vocab-1}, whitespace pre-tokenizer), so the
directory's tokenizer and embedding agree in size (decode benchmarks). The model is built by transformers from that config (its
own initialisation, seed 0) on the GPU when there is one, in bf16, and saved as one
model.safetensors with the HF tensor names (the tied lm_head left out, as HF saves it). TOKENIZER.json
is copied as tokenizer.json: wick opens an HF directory only with one, and the benchmark feeds
random token ids, so any valid tokenizer serves (tests/fixtures/peft/tiny-llama/tokenizer.json).
"""
import json
import os
import shutil
import sys
import time

import torch
import transformers
from safetensors.torch import save_file


def write_wordlevel(vocab: int, path: str) -> None:
    """A WordLevel tokenizer of `vocab` tokens w0 .. w{vocab-1} (unknown words: w0), in the
    tokenizers library's JSON format."""
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {f"w{i}": i for i in range(vocab)}, "unk_token": "w0"},
    }
    with open(path, "w") as f:
        json.dump(tokenizer, f)


def main():
    config_path, tokenizer, out = sys.argv[1:4]
    with open(config_path) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    family = cfg["model_type"]
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    start = time.perf_counter()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        options = {k: v for k, v in cfg.items() if k != "torch_dtype"}
        model = model_class(config_class(**options)).to(torch.bfloat16)
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        state[name] = t.detach().to("cpu").contiguous()
    os.makedirs(out, exist_ok=True)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    if tokenizer == "wordlevel":
        write_wordlevel(cfg["vocab_size"], os.path.join(out, "tokenizer.json"))
    else:
        shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))
    params = sum(t.numel() for t in state.values())
    print(f"wrote {out}: {len(state)} tensors, {params / 1e6:.1f}M parameters (bf16) "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
