#!/usr/bin/env python3
"""Writes an F16 GGUF with seeded random weights at a real model's shapes, borrowing the tokenizer.

Speed at bigger sizes needs real shapes, not real weights (no hub is reachable). SmolLM2-360M and
SmolLM2-1.7B share the default model's (SmolLM2-135M-Instruct) tokenizer, so every `tokenizer.*`
field of the default GGUF is copied as is; the `llama.*` hyperparameters come from the shapes below
(the models' config.json on the hub). llama-quantize turns the file into Q4_K_M / Q4_1 / Q8_0.

usage: make-random-gguf.py --tokenizer-from SmolLM2-135M.gguf --shape smollm2-1.7b --out x.f16.gguf

Runs where llama.cpp's gguf-py is importable (PYTHONPATH=.../llama.cpp/gguf-py); numpy only.
Weights: N(0, 0.02) in blocks of a seeded 4M-value pool (tiled per tensor: generating 1.7e9 fresh
normals would take a minute and speed does not depend on them), norms 1.0.
"""
import argparse

import numpy as np
import gguf

# hidden, intermediate, layers, heads, kv heads, rope theta, context (SmolLM2 config.json files)
SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 100000.0, 8192),
    "smollm2-360m": (960, 2560, 32, 15, 5, 100000.0, 8192),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 130000.0, 8192),
}


def copy_tokenizer(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> int:
    """Copies every tokenizer.* field; returns the vocabulary size."""
    vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == "tokenizer.ggml.tokens":
            vocab = len(value)
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    if vocab == 0:
        raise SystemExit("the tokenizer GGUF has no tokenizer.ggml.tokens")
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-from", required=True)
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hidden, inter, layers, heads, kv_heads, theta, ctx = SHAPES[args.shape]
    head_dim = hidden // heads

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name(f"random-{args.shape}")
    vocab = copy_tokenizer(gguf.GGUFReader(args.tokenizer_from), writer)
    writer.add_vocab_size(vocab)
    writer.add_context_length(ctx)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    pool = (np.random.default_rng(args.seed).standard_normal(1 << 22) * 0.02).astype(np.float16)
    counter = [0]

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy [rows, cols] = ggml ne [cols, rows]: rows are output features, as llama.cpp writes them.
        counter[0] += 1
        flat = np.resize(np.roll(pool, counter[0] * 7919), rows * cols)
        return flat.reshape(rows, cols)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    # Tied embeddings (SmolLM2): no output.weight, llama.cpp uses token_embd for the head.
    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones(hidden))
        writer.add_tensor(p + "attn_q.weight", weight(heads * head_dim, hidden))
        writer.add_tensor(p + "attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(p + "attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(p + "attn_output.weight", weight(hidden, heads * head_dim))
        writer.add_tensor(p + "ffn_norm.weight", ones(hidden))
        writer.add_tensor(p + "ffn_gate.weight", weight(inter, hidden))
        writer.add_tensor(p + "ffn_up.weight", weight(inter, hidden))
        writer.add_tensor(p + "ffn_down.weight", weight(hidden, inter))
    writer.add_tensor("output_norm.weight", ones(hidden))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {args.out}: {args.shape}, vocab {vocab}, {layers} layers")


if __name__ == "__main__":
    main()
