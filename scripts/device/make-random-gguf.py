#!/usr/bin/env python3
"""Writes a GGUF with seeded random weights at a real model's shapes, borrowing the tokenizer.

Speed at bigger sizes needs real shapes, not real weights (no hub is reachable). SmolLM2-360M and
SmolLM2-1.7B share the default model's (SmolLM2-135M-Instruct) tokenizer, so every `tokenizer.*`
field of the default GGUF is copied as is; Llama-3.1-8B's and Llama-3.2-1B's vocabulary is
llama.cpp's models/ggml-vocab-llama-bpe.gguf (the Llama 3 tokenizer, vocab-only, 128256 tokens),
Qwen2.5's is models/ggml-vocab-qwen2.gguf (151936 tokens, the model's padded vocabulary). The
`llama.*` / `qwen2.*` hyperparameters come from the shapes below (the models' config.json on the
hub); Qwen2 files get q/k/v biases (f32, N(0, 0.02)).

By default the weights are F16 (llama-quantize turns the file into Q4_K_M / Q4_1 / Q8_0). With
`--blocks q4_k_m` the blocks are written directly, no llama-quantize, in llama-quantize's choice of
types (src/llama-quant.cpp): Q4_K everywhere, Q6_K for the output (the token embedding when tied)
and for attn_v / ffn_down of the layers its use_more_bits picks (the first and last eighth, every
third between; sessions before 10 used every other layer), each block's
scales fixed (Q4_K: sub-block scale and min 1, d = 2a/15, dmin = a; Q6_K: scales 1, d = a/32) and
its 4/6-bit values random, so every weight lies in [-a, a] with a = 0.035 (std ~0.02): the same
bytes and the same dequantization work as a quantized checkpoint, in seconds for 8B. `--blocks
q4_1` / `--blocks q8_0` write every matrix in that format the same way (Q4_1: d = 2a/15, m = -a;
Q8_0: d = a/127), the output (tied embedding) Q6_K / Q8_0 as llama-quantize picks it, for speed
runs that need no llama-quantize: wick and llama.cpp then read the same file.

usage: make-random-gguf.py --tokenizer-from SmolLM2-135M.gguf --shape smollm2-1.7b --out x.f16.gguf
       make-random-gguf.py --tokenizer-from ggml-vocab-qwen2.gguf --shape qwen2.5-0.5b --out q.f16.gguf
       make-random-gguf.py --tokenizer-from ggml-vocab-llama-bpe.gguf --shape llama-3.1-8b \
           --blocks q4_k_m --out llama-3.1-8b.q4_k_m.gguf

Runs where llama.cpp's gguf-py is importable (PYTHONPATH=.../llama.cpp/gguf-py); numpy only.
Weights: N(0, 0.02) in blocks of a seeded 4M-value pool (tiled per tensor: generating 1.7e9 fresh
normals would take a minute and speed does not depend on them), norms 1.0.
"""
import argparse

import numpy as np
import gguf

# hidden, intermediate, layers, heads, kv heads, rope theta, context (the models' config.json files)
SHAPES = {
    "smollm2-135m": (576, 1536, 30, 9, 3, 100000.0, 8192),
    "smollm2-360m": (960, 2560, 32, 15, 5, 100000.0, 8192),
    "smollm2-1.7b": (2048, 8192, 24, 32, 32, 130000.0, 8192),
    # Llama-3.1-8B and Llama-3.2-1B without their llama3 RoPE scaling (speed does not depend on it).
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 500000.0, 131072),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 500000.0, 131072),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 1000000.0, 32768),
}
# Untied LM heads (output.weight); the others tie it to token_embd.
UNTIED = {"llama-3.1-8b"}
# Qwen2 shapes: llama.cpp's qwen2 architecture, with q/k/v biases (the others are llama).
QWEN2 = {"qwen2.5-0.5b"}
# Half-range of the --blocks weights.
BLOCK_RANGE = 0.035
# --blocks: (the format of most matrices, of the "more bits" attn_v / ffn_down, of the output or
# tied embedding, the file type's name), as llama-quantize picks them.
BLOCKS = {
    "q4_k_m": ("q4_k", "q6_k", "q6_k", "MOSTLY_Q4_K_M"),
    "q4_1": ("q4_1", "q4_1", "q6_k", "MOSTLY_Q4_1"),
    "q8_0": ("q8_0", "q8_0", "q8_0", "MOSTLY_Q8_0"),
}
# Weights per block and ggml type of each block kind.
BLOCK_WEIGHTS = {"q4_k": 256, "q6_k": 256, "q4_1": 32, "q8_0": 32}


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


def block_pool(kind: str, seed: int, blocks: int = 1 << 16) -> np.ndarray:
    """`blocks` random blocks of `kind` (q4_k, q6_k, q4_1, q8_0) as bytes [blocks, block bytes]."""
    rng = np.random.default_rng(seed)
    a = BLOCK_RANGE
    if kind == "q4_1":  # f16 d, f16 m, qs[16]: w = d * q + m
        head = np.tile(np.array([2 * a / 15, -a], dtype=np.float16).view(np.uint8), (blocks, 1))
        return np.concatenate([head, rng.integers(0, 256, (blocks, 16), dtype=np.uint8)], 1)
    if kind == "q8_0":  # f16 d, i8 qs[32]: w = d * q
        head = np.tile(np.array([a / 127], dtype=np.float16).view(np.uint8), (blocks, 1))
        return np.concatenate([head, rng.integers(0, 256, (blocks, 32), dtype=np.uint8)], 1)
    if kind == "q4_k":  # f16 d, f16 dmin, scales[12], qs[128]: w = d * 1 * q - dmin * 1
        head = np.array([2 * a / 15, a], dtype=np.float16).view(np.uint8)
        scales = np.array([1] * 8 + [0x11] * 4, dtype=np.uint8)
        body = rng.integers(0, 256, (blocks, 128), dtype=np.uint8)
        return np.concatenate([np.tile(head, (blocks, 1)), np.tile(scales, (blocks, 1)), body], 1)
    # q6_k: ql[128], qh[64], scales[16] (i8), f16 d: w = d * 1 * (q - 32)
    low = rng.integers(0, 256, (blocks, 192), dtype=np.uint8)
    scales = np.ones((blocks, 16), dtype=np.uint8)
    d = np.tile(np.array([a / 32], dtype=np.float16).view(np.uint8), (blocks, 1))
    return np.concatenate([low, scales, d], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer-from", required=True)
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", choices=sorted(BLOCKS), help="write random blocks directly")
    args = parser.parse_args()
    hidden, inter, layers, heads, kv_heads, theta, ctx = SHAPES[args.shape]
    head_dim = hidden // heads
    untied = args.shape in UNTIED

    qwen2 = args.shape in QWEN2
    writer = gguf.GGUFWriter(args.out, "qwen2" if qwen2 else "llama")
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
    quant = gguf.GGMLQuantizationType
    file_type = gguf.LlamaFileType
    kinds_of = BLOCKS[args.blocks] if args.blocks else ("f16", "f16", "f16", "MOSTLY_F16")
    main_kind, more_kind, output_kind, type_name = kinds_of
    writer.add_file_type(getattr(file_type, type_name))

    pool = (np.random.default_rng(args.seed).standard_normal(1 << 22) * 0.02).astype(np.float16)
    if args.blocks and hidden % BLOCK_WEIGHTS[output_kind]:
        output_kind = "q8_0"  # llama-quantize's choice for an output whose rows are not whole blocks
    kinds = sorted({main_kind, more_kind, output_kind}) if args.blocks else []
    pools = {k: block_pool(k, args.seed + i) for i, k in enumerate(kinds)}
    counter = [0]

    def weight(rows: int, cols: int, kind: str) -> None | np.ndarray:
        # numpy [rows, cols] = ggml ne [cols, rows]: rows are output features, as llama.cpp writes them.
        counter[0] += 1
        if not args.blocks:
            flat = np.resize(np.roll(pool, counter[0] * 7919), rows * cols)
            return flat.reshape(rows, cols)
        if cols % BLOCK_WEIGHTS[kind]:
            raise SystemExit(f"{args.shape}: rows of {cols} weights are not whole {kind} blocks")
        blocks = np.roll(pools[kind], counter[0] * 7919, axis=0)
        per_row = cols // BLOCK_WEIGHTS[kind]
        return np.resize(blocks, (rows * per_row, blocks.shape[1])).reshape(rows, -1)

    def add(name: str, rows: int, cols: int, kind: str = main_kind) -> None:
        w = weight(rows, cols, kind)
        raw = getattr(quant, kind.upper()) if args.blocks else None
        writer.add_tensor(name, w, raw_dtype=raw)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    # Tied embeddings (SmolLM2): no output.weight, llama.cpp uses token_embd for the head and
    # quantizes it as the output.
    add("token_embd.weight", vocab, hidden, main_kind if untied else output_kind)
    for i in range(layers):
        p = f"blk.{i}."
        # llama-quantize's use_more_bits(i_layer, n_layers).
        n8 = layers // 8
        more_bits = more_kind if i < n8 or i >= 7 * layers // 8 or (i - n8) % 3 == 2 else main_kind
        writer.add_tensor(p + "attn_norm.weight", ones(hidden))
        add(p + "attn_q.weight", heads * head_dim, hidden)
        add(p + "attn_k.weight", kv_heads * head_dim, hidden)
        add(p + "attn_v.weight", kv_heads * head_dim, hidden, more_bits)
        if qwen2:
            for name, rows in [("q", heads), ("k", kv_heads), ("v", kv_heads)]:
                bias = np.resize(np.roll(pool, (counter[0] + rows) * 31), rows * head_dim)
                writer.add_tensor(p + f"attn_{name}.bias", bias.astype(np.float32))
        add(p + "attn_output.weight", hidden, heads * head_dim)
        writer.add_tensor(p + "ffn_norm.weight", ones(hidden))
        add(p + "ffn_gate.weight", inter, hidden)
        add(p + "ffn_up.weight", inter, hidden)
        add(p + "ffn_down.weight", hidden, inter, more_bits)
    writer.add_tensor("output_norm.weight", ones(hidden))
    if untied:
        add("output.weight", vocab, hidden, output_kind)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {args.out}: {args.shape}, vocab {vocab}, {layers} layers")


if __name__ == "__main__":
    main()
