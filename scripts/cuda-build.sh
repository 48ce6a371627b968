#!/usr/bin/env bash
# Builds wick with `--features cuda` on a machine with or without a CUDA toolkit and GPU driver.
#
# usage: scripts/cuda-build.sh [--release | --ci | --check | --env | --cargo ARGS...]
#   --release (default)  cargo build --release --features cuda      -> target/cuda/release/wick
#   --ci                 what CI runs (scripts/test.sh): every target type-checked with
#                        `--features cuda,nccl` and the binary linked against the stubs, in the
#                        unoptimised `cuda-ci` profile; nvcc compiles every kernel as in a release
#   --check              cargo check --features cuda --all-targets  (no link)
#   --env                print the environment as `export` lines (eval it to run cargo yourself)
#   --cargo ARGS...      cargo ARGS with the environment set, e.g.
#                        --cargo test --release --features cuda --no-run --test gpu
#
# Toolkit: a system CUDA 13.0 (nvcc on PATH, or /usr/local/cuda/bin/nvcc) is used where present.
# Otherwise the CUDA 13.0 compiler comes from NVIDIA's PyPI wheels (versions below, verified on the
# H100 machine's 580 driver: newer PTX is rejected by it), downloaded with pip once into the cache and
# unpacked there. Set WICK_CUDA_TOOLKIT=wheels to use the wheels even where a system toolkit exists.
#
# Libraries: candle and cudarc link libcuda, libcublas, libcublasLt, libcurand, libnvrtc and libcudart
# dynamically. libcudart is the real one from the runtime wheel; the others are link-time stubs with
# the real SONAMEs, generated from cudarc's bindings (scripts/cuda-stubs/make-stubs.sh). On the GPU
# machine the real libraries load from LD_LIBRARY_PATH (see docs/CUDA.md).
#
# Environment:
#   WICK_CUDA_CACHE    wheel cache and unpacked toolkit (default ${XDG_CACHE_HOME:-~/.cache}/wick/cuda-13.0);
#                      keep it outside the repo so it survives fresh clones and CI runs
#   CUDA_COMPUTE_CAP   GPU architecture to compile for (default 90: H100)
#   CARGO_TARGET_DIR   default target/cuda, so the CUDA build never fights the CPU build's artifacts
#   PYTHON             python with pip, used to download the wheels (default python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${WICK_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wick/cuda-13.0}
python=${PYTHON:-python3}

# The CUDA 13.0 compiler, from PyPI. cccl (CUB/Thrust/libcu++ headers), crt (host_config.h and the
# link stubs) and nvvm (cicc, libdevice) are split into their own wheels since 13.0.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
)

mode=release
cargo_args=()
case "${1:-}" in
  "" | --release) mode=release ;;
  --ci) mode=ci ;;
  --check) mode=check ;;
  --env) mode=env ;;
  --cargo)
    mode=cargo
    shift
    cargo_args=("$@")
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "cuda-build: unknown option '$1' (try --help)" >&2
    exit 2
    ;;
esac

log() { echo "cuda-build: $*" >&2; }

nvcc_release() { "$1" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p'; }

# Prints the toolkit root (the folder holding bin/nvcc) of a usable system CUDA 13.0, or nothing.
system_toolkit() {
  [[ ${WICK_CUDA_TOOLKIT:-} == wheels ]] && return 0
  local nvcc
  nvcc=$(command -v nvcc || true)
  [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  [[ -z $nvcc ]] && return 0
  # Skip our own wheel toolkit if the caller's PATH already has it.
  [[ $nvcc == "$cache"/* ]] && return 0
  local release
  release=$(nvcc_release "$nvcc")
  if [[ $release != 13.0 ]]; then
    log "ignoring system nvcc $nvcc (CUDA $release): the GPU machine's driver needs CUDA 13.0"
    return 0
  fi
  dirname "$(dirname "$(readlink -f "$nvcc")")"
}

# Downloads and unpacks the wheels once; prints the toolkit root.
wheel_toolkit() {
  local root="$cache/toolkit/nvidia/cu13"
  local stamp="$cache/toolkit/.unpacked"
  local want
  want=$(printf '%s\n' "${wheels[@]}")
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    local missing=()
    for spec in "${wheels[@]}"; do
      local file_prefix="${spec%%==*}"
      file_prefix="${file_prefix//-/_}-${spec##*==}-"
      compgen -G "$cache/wheels/$file_prefix*.whl" >/dev/null || missing+=("$spec")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
      log "downloading ${missing[*]} into $cache/wheels"
      "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$cache/wheels" "${missing[@]}" >&2
    fi
    log "unpacking the CUDA 13.0 wheels into $cache/toolkit"
    rm -rf "$cache/toolkit.partial"
    mkdir -p "$cache/toolkit.partial"
    for spec in "${wheels[@]}"; do
      local file_prefix="${spec%%==*}"
      file_prefix="${file_prefix//-/_}-${spec##*==}-"
      local whl
      whl=$(compgen -G "$cache/wheels/$file_prefix*.whl" | head -n1)
      "$python" -m zipfile -e "$whl" "$cache/toolkit.partial"
    done
    # Zip archives drop the executable bit.
    find "$cache/toolkit.partial/nvidia/cu13/bin" "$cache/toolkit.partial/nvidia/cu13/nvvm/bin" \
      -type f -exec chmod +x {} +
    rm -rf "$cache/toolkit"
    mv "$cache/toolkit.partial" "$cache/toolkit"
    echo "$want" >"$stamp"
  fi
  local need
  for need in bin/nvcc bin/ptxas bin/fatbinary bin/cudafe++ nvvm/bin/cicc nvvm/libdevice \
    include/cuda_runtime.h include/crt/host_config.h include/cccl/cub lib/libcudart.so.13; do
    if [[ ! -e $root/$need ]]; then
      log "$root/$need is missing: remove $cache/toolkit and run again"
      exit 1
    fi
  done
  echo "$root"
}

# The cudarc crate's source folder (its bindings list the symbols the stubs must define).
cudarc_source() {
  local manifest
  manifest=$(cd "$repo" && cargo metadata --format-version 1 --features cuda 2>/dev/null |
    "$python" -c 'import json,sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "cudarc"))')
  dirname "$manifest"
}

# Link folder: stubs for the driver and the math libraries, libcudart.so pointing at the real runtime.
link_dir() {
  local toolkit=$1 cudarc_src version dir
  cudarc_src=$(cudarc_source)
  version=$(basename "$cudarc_src")
  dir="$cache/link/$version/lib"
  if [[ ! -f $dir/.complete || $dir/.complete -ot $repo/scripts/cuda-stubs/make-stubs.sh ]]; then
    log "generating link stubs from $cudarc_src into $dir"
    rm -rf "$dir"
    bash "$repo/scripts/cuda-stubs/make-stubs.sh" "$cudarc_src" "$dir" >&2
    touch "$dir/.complete"
  fi
  local cudart
  cudart=$(compgen -G "$toolkit/lib/libcudart.so.13" || compgen -G "$toolkit/lib64/libcudart.so.13" ||
    compgen -G "$toolkit/targets/x86_64-linux/lib/libcudart.so.13" || true)
  if [[ -z $cudart ]]; then
    log "libcudart.so.13 not found under $toolkit"
    exit 1
  fi
  ln -sfn "$cudart" "$dir/libcudart.so"
  ln -sfn "$cudart" "$dir/libcudart.so.13"
  echo "$dir"
}

toolkit=$(system_toolkit)
if [[ -n $toolkit ]]; then
  log "using the system CUDA toolkit at $toolkit"
else
  toolkit=$(wheel_toolkit)
fi
link=$(link_dir "$toolkit")

export PATH="$toolkit/bin:$PATH"
# cudaforge (candle-kernels' build) finds nvcc on PATH or under CUDA_HOME; cudarc's build reads the
# version from `nvcc --version` and adds <root>/lib (and lib64, targets/...) of every one of CUDA_HOME,
# CUDA_PATH, CUDA_ROOT, CUDA_TOOLKIT_ROOT_DIR to the link search path: the toolkit first (real
# libraries win where a system toolkit has them), then the stub folder.
export CUDA_HOME="$toolkit"
export CUDA_PATH="$toolkit"
export CUDA_ROOT="$(dirname "$link")"
unset CUDA_TOOLKIT_ROOT_DIR
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/cuda}
# For running the built binaries here (ldd, --help); the GPU machine sets its own.
export WICK_CUDA_LINK_DIR="$link"

# Checks that the binary $1 needs the CUDA libraries (and the libraries named after it) and that
# the link folder resolves every library it needs.
check_libs() {
  local bin=$1 needed lib
  shift
  needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 "$@"; do
    if ! grep -qx "$lib" <<<"$needed"; then
      log "$bin does not need $lib; NEEDED is: $(echo $needed)"
      exit 1
    fi
  done
  if LD_LIBRARY_PATH="$link" ldd "$bin" | grep -q 'not found'; then
    log "unresolved libraries in $bin:"
    LD_LIBRARY_PATH="$link" ldd "$bin" | grep 'not found' >&2
    exit 1
  fi
  log "built $bin ($(du -h "$bin" | cut -f1)); NEEDED: $(echo $needed)"
}

cd "$repo"
case $mode in
  env)
    for var in PATH CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_COMPUTE_CAP CARGO_TARGET_DIR WICK_CUDA_LINK_DIR; do
      printf 'export %s=%q\n' "$var" "${!var}"
    done
    ;;
  check)
    start=$SECONDS
    nice cargo check --features cuda --all-targets
    log "cargo check --features cuda --all-targets: $((SECONDS - start)) s"
    ;;
  cargo)
    nice cargo "${cargo_args[@]}"
    ;;
  ci)
    # One profile for the link and the check, so the build scripts (candle-kernels' and wick's
    # nvcc work, most of the time) run once.
    start=$SECONDS
    nice cargo build --profile cuda-ci --features cuda,nccl --bin wick
    log "cargo build --profile cuda-ci --features cuda,nccl --bin wick: $((SECONDS - start)) s"
    check_libs "$CARGO_TARGET_DIR/cuda-ci/wick" libnccl.so.2
    start=$SECONDS
    nice cargo check --profile cuda-ci --features cuda,nccl --all-targets
    log "cargo check --profile cuda-ci --features cuda,nccl --all-targets: $((SECONDS - start)) s"
    ;;
  release)
    start=$SECONDS
    nice cargo build --release --features cuda --bin wick
    log "cargo build --release --features cuda: $((SECONDS - start)) s"
    check_libs "$CARGO_TARGET_DIR/release/wick"
    ;;
esac
