#!/usr/bin/env python3
"""Seeds of the fuzz targets fuzz/fuzz_targets/{hf_dir,config,tokenizer,adapter,dataset}.rs, written to
fuzz/seeds-<target>/ (the GGUF target's seeds stay in fuzz/seeds/, made by make_fuzz_gguf_seeds.py).

Real small files from the repository's fixtures (the tiny LLaMA and its PEFT adapters, the tiny
sentence-transformers encoders, the quickstart dataset) and a few small ones made here with the
`tokenizers` and `safetensors` packages (a byte-level BPE and a Metaspace BPE tokenizer with a
Llama-3-like and a Mistral-like chat template, a three-tensor bf16 safetensors file). Two-file seeds
(tokenizer.json + tokenizer_config.json, adapter_config.json + adapter_model.safetensors) are joined by
the separator of fuzz/fuzz_targets/common.rs.

Needs: tokenizers, safetensors, numpy (PYTHON=/tmp/venv/bin/python; see make_dora_fixtures.py).
"""
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
FUZZ = os.path.join(ROOT, "fuzz")
FIX = os.path.join(ROOT, "tests", "fixtures")
SPLIT = b"\n--wick-fuzz-split--\n"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello wörld, 12 tokens! Café crème brûlée.",
    "東京は日本の首都です。 🎉 def add(a, b): return a + b",
    "<|start_header_id|>user<|end_header_id|> [INST] hi [/INST]",
]


def read(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


def write(target, name, data):
    out = os.path.join(FUZZ, f"seeds-{target}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def bpe_tokenizer(kind):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bytelevel":
        specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "add_bos_token": False,
                  "chat_template": LLAMA3_TEMPLATE}
    else:
        specials = ["<unk>", "<s>", "</s>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials)
        config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
                  "chat_template": [{"name": "default", "template": MISTRAL_TEMPLATE}]}
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok.to_str().encode(), json.dumps(config, ensure_ascii=False).encode()


def small_safetensors():
    tensors = load_file(os.path.join(FIX, "peft", "tiny-llama", "model.safetensors"))
    keep = ["model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.k_proj.weight"]
    import torch  # bf16 needs torch's writer

    from safetensors.torch import save as save_torch

    return save_torch({k: torch.from_numpy(tensors[k]).to(torch.bfloat16) for k in keep}, metadata={"format": "pt"})


def main():
    tiny = os.path.join(FIX, "peft", "tiny-llama")
    e5 = os.path.join(FIX, "embed", "tiny", "e5-mean")
    xlmr = os.path.join(FIX, "embed", "tiny", "xlmr")
    # hf_dir: whole weight files and a small three-tensor one.
    write("hf_dir", "tiny_llama.safetensors", read(tiny, "model.safetensors"))
    write("hf_dir", "e5_mean.safetensors", read(e5, "model.safetensors"))
    write("hf_dir", "three_tensors_bf16.safetensors", small_safetensors())
    # config: decoder and encoder configs.
    write("config", "tiny_llama.json", read(tiny, "config.json"))
    write("config", "llama.json", read(FIX, "tiny_decoders", "llama", "config.json"))
    write("config", "qwen2.json", read(FIX, "tiny_decoders", "qwen2", "config.json"))
    write("config", "e5_bert.json", read(e5, "config.json"))
    write("config", "xlmr.json", read(xlmr, "config.json"))
    # tokenizer: tokenizer.json + SPLIT + tokenizer_config.json.
    write("tokenizer", "tiny_llama_chatml", read(tiny, "tokenizer.json") + SPLIT + read(tiny, "tokenizer_config.json"))
    write("tokenizer", "e5_wordpiece", read(e5, "tokenizer.json") + SPLIT + read(e5, "tokenizer_config.json"))
    for kind in ["bytelevel", "metaspace"]:
        tok, config = bpe_tokenizer(kind)
        write("tokenizer", f"{kind}_bpe", tok + SPLIT + config)
    # adapter: adapter_config.json + SPLIT + adapter_model.safetensors.
    for name in ["adapter-peft", "adapter-peft-rslora", "adapter-wick", "adapter-peft-dora"]:
        d = os.path.join(FIX, "peft", name)
        write("adapter", name, read(d, "adapter_config.json") + SPLIT + read(d, "adapter_model.safetensors"))
    # dataset: the quickstart data and one file with every record kind, ids, blank and long lines.
    write("dataset", "quickstart.jsonl", read(ROOT, "data", "quickstart.jsonl"))
    mixed = [
        {"text": "Plain text to train on."},
        {"prompt": "Q: 2+2?", "completion": " 4", "id": 7},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"id": "doc-1", "text": ""},
        {"prompt": "x" * 80, "completion": "y"},
    ]
    lines = [json.dumps(m, ensure_ascii=False) for m in mixed]
    write("dataset", "mixed.jsonl", ("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\r\n").encode())
    print("seeds written under", FUZZ)


if __name__ == "__main__":
    main()
