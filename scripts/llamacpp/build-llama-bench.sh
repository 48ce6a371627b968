#!/usr/bin/env bash
# Builds llama.cpp's llama-bench (and libllama.so) from the source vendored in the PyPI sdist of
# llama-cpp-python 0.3.36, the same llama.cpp that install-python.sh compiles. Nothing is committed:
# the source and build live under $WORK (default /tmp/llamacpp-sdist).
#
#   scripts/llamacpp/build-llama-bench.sh native     -> $WORK/build-native/bin/llama-bench
#   scripts/llamacpp/build-llama-bench.sh generic    -> $WORK/build-generic/bin/libllama.so
#   scripts/llamacpp/build-llama-bench.sh avx2       -> $WORK/build-avx2/bin/libllama.so
#
# "native" is -march=native without AMX (what the speed comparison uses). "generic" is a second, deliberately
# different build (no native tuning, AVX2/FMA kernels off, so the Q4_1 dot products sum in another
# order) used by make_fixture.py --second-lib to keep only prompts where two builds agree.
# Needs: the venv from install-python.sh (for pip, cmake, ninja), a C/C++ compiler, PyPI access.
set -euo pipefail
FLAVOUR=${1:-native}
VENV=${VENV:-/opt/llamacpp-venv}
WORK=${WORK:-/tmp/llamacpp-sdist}
JOBS=${JOBS:-2}
export PATH="$VENV/bin:$PATH"
mkdir -p "$WORK"
cd "$WORK"
if [ ! -d llama_cpp_python-0.3.36 ]; then
  pip download --no-deps --no-binary=:all: --no-build-isolation llama-cpp-python==0.3.36
  tar xzf llama_cpp_python-0.3.36.tar.gz
fi
SRC=$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp
NATIVE_NO_AMX="-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
case "$FLAVOUR" in
  # -march=native without AMX: a VM whose CPU reports AMX may not enable its tile state, and
  # ggml's AMX code then dies of SIGILL (an Intel Xeon VM, bench/results/cpu-decode-prefill-s17.md).
  # GGML_NATIVE=ON would append its own -march=native after these flags and bring AMX back.
  native) FLAGS=(-DGGML_NATIVE=OFF "-DCMAKE_C_FLAGS=$NATIVE_NO_AMX" "-DCMAKE_CXX_FLAGS=$NATIVE_NO_AMX")
          TARGETS=(${NATIVE_TARGETS:-llama-bench llama llama-quantize}) ;;
  avx2) FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
               -DGGML_AVX512=OFF) ; TARGETS=(llama) ;;
  generic) FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_BMI2=OFF) ; TARGETS=(llama) ;;
  *) echo "unknown flavour $FLAVOUR (native|generic|avx2)" >&2; exit 2 ;;
esac
cmake -S "$SRC" -B "$WORK/build-$FLAVOUR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "${FLAGS[@]}"
nice cmake --build "$WORK/build-$FLAVOUR" -j "$JOBS" --target "${TARGETS[@]}"
ls -la "$WORK/build-$FLAVOUR/bin"
