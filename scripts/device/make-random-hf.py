#!/usr/bin/env python3
"""Writes a Hugging Face model directory with seeded random weights at a real model's shapes.

No hub is reachable, and speed depends on shapes, not values: transformers builds the model from the
published config with `from_config`, saves it as safetensors (sharded above 5 GB, as the hub's files
are), and a WordLevel tokenizer of the right vocabulary size stands in for the real one (token i is
the word `t<i>`, so any text of such words round-trips).

usage: make-random-hf.py --shape qwen2.5-0.5b|qwen2.5-1.5b|llama-3.2-1b|llama-3.1-8b --out DIR
                         [--dtype bfloat16] [--seed 0]
Runs where torch, transformers and tokenizers are installed (the GPU machine).
"""
import argparse
import json
import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM

LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
# The published config.json values that set the shapes and the maths.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         max_position_embeddings=32768),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=131072, rope_scaling=dict(LLAMA3_ROPE, factor=32.0)),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=131072, rope_scaling=dict(LLAMA3_ROPE, factor=8.0)),
}


def write_tokenizer(out: str, vocab_size: int) -> None:
    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<unk>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
                   "eos_token": "t0", "bos_token": None, "model_max_length": 131072}, f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", required=True, choices=sorted(SHAPES))
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    shape = dict(SHAPES[args.shape])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=None, eos_token_id=0)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        try:  # transformers >= 4.56 names it dtype; older ones torch_dtype
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="5GB")
    write_tokenizer(args.out, config.vocab_size)
    n = sum(t.numel() for t in model.parameters())
    print(f"wrote {args.out}: {args.shape}, {n / 1e9:.2f}B parameters, {args.dtype}")


if __name__ == "__main__":
    main()
