#!/usr/bin/env python3
"""Makes tiny random-weight decoders and HF transformers' logits for them, for
tests/decoder_matches_transformers.rs.

Needs torch and transformers (tested with torch 2.15, transformers 5.24):
    PYTHON=/opt/refvenv/bin/python; $PYTHON scripts/make_tiny_decoder_fixtures.py

Writes, under tests/fixtures/tiny_decoders/<name>/:
    config.json          hub-style config (rope_theta / rope_scaling, as models on the hub ship them)
    model.safetensors    f32 weights with HF names (no lm_head.weight when embeddings are tied)
    reference.safetensors
        input_ids [batch, seq] i64, logits [batch, seq, vocab] f32 from transformers' forward

Models (f32, seed fixed, weights drawn wider than HF's init so attention is not uniform):
    qwen2:  q/k/v bias, tied embeddings, GQA 4/2, rope_theta 1e6
    llama:  untied lm_head, GQA 8/2, head_dim 16 != hidden/heads, llama3 rope scaling with an original
            context of 32 so that every branch of the scaling (kept, divided, blended) is used and the
            40-token input runs past the original context.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny_decoders")

MODELS = {
    "qwen2": {
        "config": {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        },
        "batch": 2,
        "seq": 24,
        "seed": 1234,
    },
    "llama": {
        "config": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": 256,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_act": "silu",
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": [2, 3],
            "torch_dtype": "float32",
        },
        "batch": 1,
        "seq": 40,
        "seed": 5678,
    },
}


def randomize(model, seed):
    """Weights ~ N(0, 0.15^2), norm weights ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def make(name, spec):
    out_dir = os.path.join(ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path, "w") as f:
        json.dump(spec["config"], f, indent=2)
        f.write("\n")

    config = AutoConfig.from_pretrained(out_dir)
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    randomize(model, spec["seed"])
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    input_ids = torch.randint(0, config.vocab_size, (spec["batch"], spec["seq"]), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    save_file(
        {"input_ids": input_ids.to(torch.int64).contiguous(), "logits": logits.contiguous()},
        os.path.join(out_dir, "reference.safetensors"),
    )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    print(f"{name}: logits {tuple(logits.shape)} std {logits.std():.3f}; rope {rope}", file=sys.stderr)


def main():
    torch.use_deterministic_algorithms(True)
    for name, spec in MODELS.items():
        make(name, spec)


if __name__ == "__main__":
    main()
