#!/usr/bin/env python3
"""Writes a vocab-only GGUF (every tokenizer.* field of SRC, no tensors), like llama.cpp's
models/ggml-vocab-*.gguf files.

The default GGUF (89 MiB) takes two device calls to carry; its tokenizer alone is ~2 MB, enough for
`make-random-gguf.py --tokenizer-from` to write SmolLM2-360M/1.7B shapes in a call that carries
nothing else.

usage: vocab-only-gguf.py SmolLM2-135M-Instruct.Q4_1.gguf smollm2-vocab.gguf
Runs where llama.cpp's gguf-py is importable (PYTHONPATH=.../llama.cpp/gguf-py).
"""
import sys

import gguf

from importlib import util
from pathlib import Path

spec = util.spec_from_file_location("make_random_gguf", Path(__file__).with_name("make-random-gguf.py"))
make_random_gguf = util.module_from_spec(spec)
spec.loader.exec_module(make_random_gguf)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1:]
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    vocab = make_random_gguf.copy_tokenizer(reader, writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out}: {vocab} tokens from {src}")


if __name__ == "__main__":
    main()
