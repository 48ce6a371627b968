#!/usr/bin/env python3
"""DoRA fixtures for tests/lora_dora_interop.rs: PEFT <-> wick DoRA adapters on the tiny random LLaMA
of tests/fixtures/peft/tiny-llama (made by scripts/make_peft_fixtures.py).

Needs torch (the CPU is enough), transformers, peft, safetensors. Made with a PyPI venv:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft safetensors
    /tmp/venv/bin/python scripts/make_dora_fixtures.py             # stage 1
    cargo test --test lora_dora_interop -- --ignored write_wick_dora_fixture
    /tmp/venv/bin/python scripts/make_dora_fixtures.py --wick-side # stage 2

Stage 1 (PEFT -> wick) writes under tests/fixtures/peft/
  adapter-peft-dora/      a PEFT DoRA adapter (use_dora, r=4, alpha=8, all 7 projections) with random
                          non-zero B and magnitudes moved +-10% off their initial row norms, so that
                          both the direction and the magnitude matter
  dora_expected.safetensors
      peft_dora_logits        logits [2, 12, 128] of PEFT with the adapter (eval) on expected's input_ids
      peft_dora_merged_logits logits of PEFT's merge_and_unload() model on the same ids
      loss                    [1] the causal-LM loss (labels = input_ids) in train mode, dropout 0
      grad.<module>.lora_A / .lora_B / .lora_magnitude_vector
                              the gradients of that loss (PEFT detaches the row norm ||W + s B A||)

Stage 2 (wick -> PEFT, after the ignored test wrote tests/fixtures/peft/adapter-wick-dora/ with a DoRA
adapter trained by wick's trainer and wick's logits in adapter-wick-dora/wick_logits.safetensors):
loads it with PeftModel.from_pretrained, checks that every magnitude PEFT holds is the file's (not
re-initialised from the weights), computes PEFT's logits into wick_dora_adapter_peft_logits.safetensors
and records the comparison in wick_dora_to_peft.json.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "peft")
BASE = os.path.join(OUT, "tiny-llama")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_model():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def relative_base_path(adapter_dir):
    """PEFT records the absolute base path; the fixture names it relative to tests/fixtures/peft."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = "tiny-llama"
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def wick_name(peft_name):
    """base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight -> model.layers.0.mlp.up_proj.lora_A"""
    name = peft_name.removeprefix("base_model.model.")
    for part in ["lora_A", "lora_B", "lora_magnitude_vector"]:
        marker = f".{part}.default.weight"
        if name.endswith(marker):
            return name[: -len(marker)] + "." + part
    raise ValueError(peft_name)


def stage1():
    from peft import LoraConfig, get_peft_model

    input_ids = load_file(os.path.join(OUT, "expected.safetensors"))["input_ids"]
    torch.manual_seed(3)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True,
                        target_modules=TARGETS)
    model = get_peft_model(base_model(), config)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude_vector" in name:
                p.mul_(0.9 + 0.2 * torch.rand(p.shape, generator=g))
    adapter_dir = os.path.join(OUT, "adapter-peft-dora")
    model.save_pretrained(adapter_dir)
    relative_base_path(adapter_dir)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    print("saved keys (first 3):", sorted(saved)[:3])

    out = {}
    model.eval()
    with torch.no_grad():
        out["peft_dora_logits"] = model(input_ids).logits.float()
    model.train()
    model.zero_grad()
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    out["loss"] = loss.detach().reshape(1).float()
    for name, p in model.named_parameters():
        if p.requires_grad:
            out["grad." + wick_name(name)] = p.grad.detach().float().contiguous()
    model.eval()
    merged = model.merge_and_unload()
    with torch.no_grad():
        out["peft_dora_merged_logits"] = merged(input_ids).logits.float()
    diff = (out["peft_dora_merged_logits"] - out["peft_dora_logits"]).abs().max().item()
    print(f"loss {loss.item():.6f}; {sum(k.startswith('grad.') for k in out)} gradients; merged vs adapter {diff:.2e}")
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "dora_expected.safetensors"))


def stage2():
    import peft
    import transformers
    from peft import PeftModel

    wick_dir = os.path.join(OUT, "adapter-wick-dora")
    input_ids = load_file(os.path.join(OUT, "expected.safetensors"))["input_ids"]
    base_logits = None
    with torch.no_grad():
        base_logits = base_model()(input_ids).logits.float()
    wick = load_file(os.path.join(wick_dir, "wick_logits.safetensors"))
    files = load_file(os.path.join(wick_dir, "adapter_model.safetensors"))
    model = PeftModel.from_pretrained(base_model(), wick_dir).eval()
    magnitudes = 0
    for name, p in model.named_parameters():
        if "lora_magnitude_vector" in name:
            key = "base_model.model." + wick_name(name)
            assert torch.equal(p.detach(), files[key]), f"PEFT did not take {key} from the file"
            magnitudes += 1
    with torch.no_grad():
        logits = model(input_ids).logits.float()
    save_file({"logits": logits.contiguous()}, os.path.join(OUT, "wick_dora_adapter_peft_logits.safetensors"))
    diff = (logits - wick["logits"]).abs().max().item()
    moved = (logits - base_logits).abs().max().item()
    result = {
        "what": "adapter-wick-dora (trained and saved by wick) loaded with PeftModel.from_pretrained; logits vs wick's",
        "magnitudes_loaded_from_file": magnitudes,
        "max_abs_diff": diff,
        "max_abs_adapter_effect": moved,
        "tolerance": 1e-4,
        "ok": diff <= 1e-4 and moved > 1e-3 and magnitudes > 0,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, "wick_dora_to_peft.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    stage2() if "--wick-side" in sys.argv else stage1()
