#!/usr/bin/env python3
"""Bundles one device call's result files (a results/ folder returned as results.tgz) in
`scripts/device/e2e.sh bundle`'s format, for scripts/gpu-summary.py: {device, date, files: {name:
parsed JSON}}. Files also present, byte for byte, in PREVIOUS (the folder an earlier call on the same
warm machine returned) are left out, so each call's bundle holds only what that call made. JSON-lines
files keep the lines that parse (benches/flash_attention/run.sh prints one nvidia-smi line first).

usage: bundle-results.py RESULTS_DIR DEVICE_JSON OUT.json [PREVIOUS_RESULTS_DIR]
  DEVICE_JSON: the call's on-device.sh record (device, date)
"""
import filecmp
import json
import os
import sys


def main():
    results, device_json, out = sys.argv[1:4]
    previous = sys.argv[4] if len(sys.argv) > 4 else None
    meta = json.load(open(device_json))
    bundle = {"device": meta.get("device"), "date": meta.get("date"), "files": {}}
    for name in sorted(os.listdir(results)):
        path = os.path.join(results, name)
        if name.endswith(".log") or not os.path.isfile(path):
            continue
        if previous and os.path.exists(os.path.join(previous, name)) and \
                filecmp.cmp(os.path.join(previous, name), path, shallow=False):
            continue
        text = open(path).read()
        if name.endswith(".jsonl"):
            value = []
            for line in text.splitlines():
                try:
                    value.append(json.loads(line))
                except ValueError:
                    pass
        else:
            try:
                value = json.loads(text)
            except ValueError:
                value = {"unparsed": text[-4000:]}
        bundle["files"][name] = value
    json.dump(bundle, open(out, "w"), indent=1)
    print(f"wrote {out}: {', '.join(bundle['files'])}")


if __name__ == "__main__":
    main()
