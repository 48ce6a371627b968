#!/usr/bin/env python3
"""Makes tests/fixtures/llamacpp/quantize_reference.safetensors: seeded rows of f32 weights and the
bytes ggml's own quantizers make of them (ggml_quantize_chunk without an importance matrix, i.e.
quantize_row_*_ref, what llama-quantize and convert_hf_to_gguf.py run), for
tests/gguf_quantize_matches_ggml.rs, which checks that wick's quantizers give the same bytes.

Needs numpy and a libggml-base.so of llama.cpp as vendored in llama-cpp-python 0.3.36
(scripts/llamacpp/build-llama-bench.sh native builds it):

    python scripts/llamacpp/make_quant_fixture.py \\
        --lib /work/llamacpp/build-native/bin/libggml-base.so \\
        --out tests/fixtures/llamacpp/quantize_reference.safetensors

The safetensors file holds `input` (F32, [rows, 512]) and one U8 tensor per type (`f16`, `q8_0`,
`q4_1`, `q5_0`, `q4_k`, `q6_k`, [rows, row bytes]); its metadata names the library and seed.
"""

import argparse
import ctypes
import json
import struct

import numpy as np

# ggml type ids (ggml.h) and bytes per 512 weights.
TYPES = {"f16": (1, 1024), "q4_1": (3, 320), "q5_0": (6, 352), "q8_0": (8, 544), "q4_k": (12, 288), "q6_k": (14, 420)}
ROW = 512
SEED = 17


def rows(rng):
    """Rows that exercise every branch: scales of many magnitudes, skew, outliers, zeros, ties."""
    out = []
    for scale in [1e-3, 0.02, 0.05, 1.0, 30.0]:
        out.append(rng.normal(0, scale, ROW))
    out.append(rng.uniform(-1, 1, ROW))
    out.append(rng.uniform(0.1, 2.0, ROW))  # all positive: Q4_K's min clamps to 0
    out.append(-rng.uniform(0.1, 2.0, ROW))  # all negative
    out.append(rng.standard_t(2, ROW) * 0.05)  # heavy tails
    r = rng.normal(0, 0.02, ROW)
    r[rng.integers(0, ROW, 6)] = [0.9, -1.3, 0.5, 2.0, -0.7, 1.1]  # outliers
    out.append(r)
    r = rng.normal(0, 0.05, ROW)
    r[64:128] = 0.0  # all-zero blocks and sub-blocks
    r[300:310] = 1e-20  # below GROUP_MAX_EPS
    out.append(r)
    out.append(np.round(rng.normal(0, 3, ROW)) / 4)  # many exact ties at half steps
    out.append(np.full(ROW, 0.37))  # constant: max == min
    out.append(np.concatenate([rng.normal(0, 1e-6, ROW // 2), rng.normal(0, 1.0, ROW // 2)]))
    return np.stack(out).astype(np.float32)


def quantize(lib, type_id, row_bytes, x):
    n_rows = x.shape[0]
    dst = ctypes.create_string_buffer(n_rows * row_bytes)
    src = np.ascontiguousarray(x)
    size = lib.ggml_quantize_chunk(
        type_id, src.ctypes.data_as(ctypes.c_void_p), dst, 0, n_rows, ROW, None
    )
    assert size == n_rows * row_bytes, (size, n_rows * row_bytes)
    return np.frombuffer(dst.raw, dtype=np.uint8).reshape(n_rows, row_bytes)


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, arr in tensors.items():
        data = arr.tobytes()
        dtype = {np.float32: "F32", np.uint8: "U8"}[arr.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="libggml-base.so")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    x = rows(np.random.default_rng(SEED))
    tensors = {"input": x}
    for name, (type_id, row_bytes) in TYPES.items():
        tensors[name] = quantize(lib, type_id, row_bytes, x)
    write_safetensors(args.out, tensors, {
        "made_by": "scripts/llamacpp/make_quant_fixture.py",
        "library": "libggml-base.so of llama.cpp vendored in llama-cpp-python 0.3.36",
        "seed": str(SEED),
    })
    print(f"wrote {args.out}: {x.shape[0]} rows of {ROW}, types {', '.join(TYPES)}")


if __name__ == "__main__":
    main()
