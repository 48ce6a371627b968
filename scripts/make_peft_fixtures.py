#!/usr/bin/env python3
"""Fixtures for tests/lora_peft_interop.rs: PEFT <-> wick adapters on a tiny random LLaMA.

Needs torch, transformers, peft, safetensors, tokenizers (e.g. PYTHON=/opt/refvenv/bin/python).

Stage 1 (default): writes under tests/fixtures/peft/
  tiny-llama/            a random 2-layer LLaMA as an HF directory (config.json, model.safetensors,
                         a 128-token character tokenizer.json and a ChatML tokenizer_config.json)
  adapter-peft/          a PEFT LoRA adapter (r=4, alpha=8, all 7 projections, random non-zero B)
  adapter-peft-rslora/   a PEFT adapter with use_rslora, r=2, alpha=6, targets q_proj and v_proj only
  expected.safetensors   input_ids [2, 12] and the logits [2, 12, 128] of the base model and of PEFT
                         with each adapter (f32)

Stage 2 (--wick-side, after `cargo test --test lora_peft_interop -- --ignored write_wick_adapter_fixture`
wrote tests/fixtures/peft/adapter-wick/): loads wick's adapter in PEFT, computes its logits on the same
inputs into wick_adapter_peft_logits.safetensors, and records the comparison with the logits wick
computed (adapter-wick/wick_logits.safetensors) in wick_to_peft.json.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "peft")
BASE = os.path.join(OUT, "tiny-llama")

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(path):
    """128 tokens: 5 specials, printable ASCII and newline, one character per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    for i in range(len(vocab), 128):
        vocab[f"<extra_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "add_bos_token": False,
                "chat_template": CHATML,
                "model_max_length": 64,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            f,
            indent=2,
        )


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


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32).eval()


def stage1():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=3,
        # Larger than the 0.02 default so the frozen LM head can express confident predictions: the
        # training test (tests/train_lora.rs) needs the loss of a memorised answer to fall far.
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config).eval()
    # Norm weights away from 1 so a missing norm would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    os.makedirs(BASE, exist_ok=True)
    model.save_pretrained(BASE, safe_serialization=True)
    make_tokenizer(BASE)

    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 101, (2, 12), generator=g)
    expected = {"input_ids": input_ids.to(torch.int64)}
    with torch.no_grad():
        expected["base_logits"] = base_model()(input_ids).logits.float()

    variants = {
        "adapter-peft": dict(r=4, lora_alpha=8, use_rslora=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        "adapter-peft-rslora": dict(r=2, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    }
    for name, kw in variants.items():
        torch.manual_seed(2)
        peft_model = get_peft_model(base_model(), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kw))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(0.05 * torch.randn_like(p))  # PEFT starts B at zero: make the adapter matter
        peft_model.eval()
        peft_model.save_pretrained(os.path.join(OUT, name))
        relative_base_path(os.path.join(OUT, name))
        with torch.no_grad():
            logits = peft_model(input_ids).logits.float()
        key = name.replace("adapter-", "").replace("-", "_") + "_logits"
        expected[key] = logits
        print(name, "max |peft - base| =", (logits - expected["base_logits"]).abs().max().item())
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))


def stage2():
    from peft import PeftModel
    import peft, transformers

    wick_dir = os.path.join(OUT, "adapter-wick")
    expected = load_file(os.path.join(OUT, "expected.safetensors"))
    wick = load_file(os.path.join(wick_dir, "wick_logits.safetensors"))
    model = PeftModel.from_pretrained(base_model(), wick_dir).eval()
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits.float()
    save_file({"logits": logits.contiguous()}, os.path.join(OUT, "wick_adapter_peft_logits.safetensors"))
    diff = (logits - wick["logits"]).abs().max().item()
    moved = (logits - expected["base_logits"]).abs().max().item()
    result = {
        "what": "adapter-wick (saved by wick) loaded with PeftModel.from_pretrained; logits vs wick's",
        "max_abs_diff": diff,
        "max_abs_adapter_effect": moved,
        "tolerance": 1e-4,
        "ok": diff <= 1e-4 and moved > 1e-3,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    with open(os.path.join(OUT, "wick_to_peft.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    stage2() if "--wick-side" in sys.argv else stage1()
