#!/usr/bin/env python3
"""Writes COUNT PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors) with seeded random
A and B on all seven projections of a SmolLM2 (or Qwen2.5-0.5B) shape, for serving loads on the GPU machine (no hub
there, and the values do not change the cost). B is not zero (PEFT's init), so every adapter changes
the output and a server that dropped one would be seen.

    python3 random_peft_adapters.py OUT_DIR [--count 8] [--rank 16] [--shape smollm2-135m]
Writes OUT_DIR/a0 .. OUT_DIR/a{COUNT-1}.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

# hidden, ffn, layers, heads, kv heads, head dim (the models' config.json)
SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 64),
    "smollm2-360m": (960, 2560, 32, 15, 5, 64),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 64),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 64),
}


def projections(hidden, ffn, heads, kv, hd):
    """(module, in, out) of one layer, PEFT's module paths."""
    return [
        ("self_attn.q_proj", hidden, heads * hd),
        ("self_attn.k_proj", hidden, kv * hd),
        ("self_attn.v_proj", hidden, kv * hd),
        ("self_attn.o_proj", heads * hd, hidden),
        ("mlp.gate_proj", hidden, ffn),
        ("mlp.up_proj", hidden, ffn),
        ("mlp.down_proj", ffn, hidden),
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    a = p.parse_args()
    hidden, ffn, layers, heads, kv, hd = SHAPES[a.shape]
    for n in range(a.count):
        gen = torch.Generator().manual_seed(1000 + n)
        tensors = {}
        for layer in range(layers):
            for module, inp, out in projections(hidden, ffn, heads, kv, hd):
                key = f"base_model.model.model.layers.{layer}.{module}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(a.rank, inp, generator=gen) / inp**0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(out, a.rank, generator=gen) * 0.02
        d = os.path.join(a.out, f"a{n}")
        os.makedirs(d, exist_ok=True)
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": a.rank,
            "lora_alpha": 2 * a.rank,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": [m.split(".")[1] for m, _, _ in projections(hidden, ffn, heads, kv, hd)],
            "base_model_name_or_path": a.shape,
        }
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    print(f"wrote {a.count} adapters of rank {a.rank} at {a.shape} shapes under {a.out}")


if __name__ == "__main__":
    main()
