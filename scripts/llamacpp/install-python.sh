#!/usr/bin/env bash
# Installs llama-cpp-python 0.3.36 from PyPI into a virtualenv outside the repo. pip compiles the
# llama.cpp it vendors (about 10 minutes on 2 cores). The fixture script make_fixture.py runs in it.
#
#   scripts/llamacpp/install-python.sh [VENV]      (default /opt/llamacpp-venv)
#
# Needs: python3 with venv, a C/C++ compiler, network access to PyPI.
# JOBS (default 2) caps the compile parallelism: the developers' machine has 2 shared cores.
set -euo pipefail
VENV=${1:-/opt/llamacpp-venv}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# cmake and ninja from PyPI: the build needs them and the machine may not have them.
"$VENV/bin/pip" install -q cmake ninja scikit-build-core numpy
# The multimodal library (LLAVA_BUILD) is not needed for text models and roughly doubles the build.
CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS PATH="$VENV/bin:$PATH" \
  nice "$VENV/bin/pip" install --no-build-isolation --no-cache-dir llama-cpp-python==0.3.36
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
