#!/usr/bin/env python3
"""Writes tiny valid GGUF files as seeds for the `gguf` cargo-fuzz target (fuzz/seeds/).

Needs the `gguf` package (llama.cpp's writer) and numpy: run with $PYTHON (e.g. /opt/refvenv/bin/python).
Each seed is a whole (random-weight) model small enough for libFuzzer to mutate quickly: a 1-layer
decoder with hidden 32 (quantized matrices: a row is one block) or 8 (f16/bf16), 2 heads (1 KV head),
vocab 12, and a GGUF tokenizer (gpt2 BPE or llama SentencePiece),
so mutations reach the config, tokenizer, tensor validation and `Llama::load`, not only the header.
"""
import os
import sys
import zlib

import numpy as np
import gguf

OUT = os.path.join(os.path.dirname(__file__), "..", "fuzz", "seeds")
HEADS, KV_HEADS, VOCAB = 2, 1, 12


def quant(arr, qtype):
    return gguf.quants.quantize(arr.astype(np.float32), qtype)


def write(name, arch, tokenizer, qtype, tied, hidden, bias=False):
    HIDDEN = FFN = hidden
    HEAD_DIM = HIDDEN // HEADS
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    path = os.path.join(OUT, name)
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_block_count(1)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    tokens = ["<unk>", "<s>", "</s>"] + list("helo wrd") + ["he"]
    if tokenizer == "gpt2":
        tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "H", "e", "l", "o", "Ġ", "w", "r", "d", "He"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_merges(["H e"])
    else:
        tokens = ["<unk>", "<s>", "</s>", "▁", "H", "e", "l", "o", "w", "r", "d", "▁H"]
        w.add_tokenizer_model("llama")
        w.add_token_scores([0.0, 0.0, 0.0] + [-float(i) for i in range(VOCAB - 3)])
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")

    def add(tname, shape, qt=None):
        arr = rng.standard_normal(shape).astype(np.float32)
        qt = qtype if qt is None else qt
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(tname, arr)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(tname, arr.astype(np.float16))
        else:
            w.add_tensor(tname, quant(arr, qt), raw_shape=quant(arr, qt).shape, raw_dtype=qt)

    f32 = gguf.GGMLQuantizationType.F32
    add("token_embd.weight", (VOCAB, HIDDEN))
    if not tied:
        add("output.weight", (VOCAB, HIDDEN))
    add("output_norm.weight", (HIDDEN,), f32)
    add("blk.0.attn_norm.weight", (HIDDEN,), f32)
    add("blk.0.ffn_norm.weight", (HIDDEN,), f32)
    add("blk.0.attn_q.weight", (HIDDEN, HIDDEN))
    add("blk.0.attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN))
    add("blk.0.attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN))
    if bias:
        add("blk.0.attn_q.bias", (HIDDEN,), f32)
        add("blk.0.attn_k.bias", (KV_HEADS * HEAD_DIM,), f32)
        add("blk.0.attn_v.bias", (KV_HEADS * HEAD_DIM,), f32)
    add("blk.0.attn_output.weight", (HIDDEN, HIDDEN))
    add("blk.0.ffn_gate.weight", (FFN, HIDDEN))
    add("blk.0.ffn_up.weight", (FFN, HIDDEN))
    add("blk.0.ffn_down.weight", (HIDDEN, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{path}: {os.path.getsize(path)} bytes", file=sys.stderr)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    Q = gguf.GGMLQuantizationType
    write("llama_gpt2_q4_0.gguf", "llama", "gpt2", Q.Q4_0, tied=True, hidden=32)
    write("llama_spm_f16.gguf", "llama", "llama", Q.F16, tied=False, hidden=8)
    write("qwen2_gpt2_f16_bias.gguf", "qwen2", "gpt2", Q.F16, tied=True, hidden=8, bias=True)
    write("mistral_spm_bf16.gguf", "mistral", "llama", Q.BF16, tied=True, hidden=8)
