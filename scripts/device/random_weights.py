#!/usr/bin/env python3
"""Writes a safetensors file with the tensor names, shapes and dtypes of another one's header, filled
with seeded random values (GPU calls carry 64 MiB; all-MiniLM-L6-v2's 87 MiB of f32 weights do not
fit beside the default GGUF). Throughput (texts/s) depends on the shapes, not on the values; both wick
and sentence-transformers then load the same file.

    python3 random_weights.py HEADER OUT.safetensors
HEADER is the first 8 + n bytes of the real file (the little-endian u64 n, then n bytes of JSON),
cut by scripts/device/make-extras.sh. Values: N(0, 0.02) for weights and biases, 1 + N(0, 0.02) for
LayerNorm weights, 0..len-1 for I64 position ids.
"""
import json
import struct
import sys

import torch
from safetensors.torch import save_file


def main():
    header_path, out = sys.argv[1], sys.argv[2]
    with open(header_path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info["shape"]
        if info["dtype"] == "I64":
            count = 1
            for d in shape:
                count *= d
            tensors[name] = torch.arange(count, dtype=torch.int64).reshape(shape)
        elif info["dtype"] == "F32":
            t = torch.randn(shape, generator=gen) * 0.02
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                t += 1.0
            tensors[name] = t
        else:
            sys.exit(f"{name}: dtype {info['dtype']} not handled")
    save_file(tensors, out, metadata=header.get("__metadata__"))
    print(f"wrote {out}: {len(tensors)} tensors with random values", file=sys.stderr)


if __name__ == "__main__":
    main()
