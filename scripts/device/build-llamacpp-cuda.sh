#!/usr/bin/env bash
# Runs ON the GPU machine: builds llama.cpp's llama-bench and llama-batched-bench with CUDA (sm_90) from the source in the
# carried e2e-extras.tar.xz (scripts/device/make-extras.sh), outside the tree in
# $WICK_DEVICE_STAGE/llamacpp, so a second call on the warm machine can use it.
#
#   build-llamacpp-cuda.sh bg          start the build detached (setsid: it outlives the call) and return
#   build-llamacpp-cuda.sh build       build in the foreground
#   build-llamacpp-cuda.sh wait [S]    wait up to S seconds (default 420) for a build started with bg;
#                                      prints the tail of its log; exit 0 only if llama-bench exists
#
# Options as ANCHORS.md ran them: -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90, Release, CUDA graphs
# (llama.cpp's default), flash attention kernels (default), GGML_NATIVE for the CPU side; no curl,
# OpenSSL, tests or examples; llama-server without its web UI (the load of e2e.sh's llamaserver step). The build runs under `nice -n 19` so that benchmarks running
# beside it in the same call keep their CPU (~5 min on 16 idle cores).
set -uo pipefail
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
src=$stage/e2e/llama.cpp
build=$stage/llamacpp/build
log=$stage/llamacpp/build.log
done_file=$stage/llamacpp/build.rc
bench=$build/bin/llama-bench

extract() {
  if [[ ! -d $src ]]; then
    local tarball=$stage/files/e2e-extras.tar.xz
    [[ -f $tarball ]] || { echo "no $tarball: pack with scripts/device-run.sh pack --first \$(scripts/device/make-extras.sh)"; return 1; }
    mkdir -p "$stage" && python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$tarball" "$stage" || return 1
  fi
}

do_build() {
  extract || return 1
  local cuda
  for cuda in /usr/local/cuda-13.0 /usr/local/cuda; do
    [[ -x $cuda/bin/nvcc ]] && { export PATH=$cuda/bin:$PATH CUDACXX=$cuda/bin/nvcc; break; }
  done
  command -v nvcc >/dev/null || { echo "no nvcc"; return 1; }
  nvcc --version | tail -n2
  local start=$SECONDS
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DBUILD_SHARED_LIBS=OFF || return 1
  nice -n 19 cmake --build "$build" -j "${LLAMACPP_BUILD_JOBS:-$(( $(nproc) > 4 ? $(nproc) - 4 : 1 ))}" \
    --target llama-bench llama-batched-bench llama-quantize llama-server || return 1
  echo "llama-bench built in $((SECONDS - start)) s: $bench"
}

case "${1:-}" in
  build) mkdir -p "$stage/llamacpp"; do_build ;;
  bg)
    mkdir -p "$stage/llamacpp"
    if [[ -x $bench ]]; then echo "already built: $bench"; exit 0; fi
    if [[ -f $stage/llamacpp/build.pid ]] && kill -0 "$(cat "$stage/llamacpp/build.pid")" 2>/dev/null; then
      echo "a build is already running"; exit 0
    fi
    rm -f "$done_file"
    setsid nohup bash -c '"$0" build >"$1" 2>&1; echo $? >"$2"' "$0" "$log" "$done_file" </dev/null >/dev/null 2>&1 &
    echo $! >"$stage/llamacpp/build.pid"
    echo "llama.cpp CUDA build started in the background (log: $log)"
    ;;
  wait)
    limit=${2:-420}
    start=$SECONDS
    while [[ ! -f $done_file ]] && kill -0 "$(cat "$stage/llamacpp/build.pid" 2>/dev/null)" 2>/dev/null; do
      ((SECONDS - start >= limit)) && { echo "still building after $limit s of waiting"; break; }
      sleep 5
    done
    echo "waited $((SECONDS - start)) s; build rc: $(cat "$done_file" 2>/dev/null || echo none)"
    tail -n 15 "$log" 2>/dev/null
    [[ -x $bench ]]
    ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
