#!/usr/bin/env python3
"""The table of scripts/device/before-after.sh's results: each figure for the old and the new
binary (median over the rounds), new/old ratio, and both gpu-check verdicts.

usage: python3 scripts/before-after-summary.py DIR > DIR/summary.md
"""
import glob
import json
import os
import statistics
import sys


def decode(path, prompt, field):
    for t in json.load(open(path))["timings"]:
        if t["path"] == "wick engine (CUDA graph)" and t["prompt_tokens"] == prompt:
            return t[field]
    raise SystemExit(f"{path}: no CUDA-graph timing at prompt {prompt}")


def batch8(path):
    for t in json.load(open(path))["timings"]:
        if t["path"].startswith("wick batch engine (Graph"):
            return t["decode_tokens_per_second"]
    raise SystemExit(f"{path}: no graph timing")


FIGURES = [
    ("decode tok/s, batch 1, after 1 prompt token", "decode", lambda p: decode(p, 1, "decode_tokens_per_second")),
    ("decode tok/s, batch 1, after 512 prompt tokens", "decode", lambda p: decode(p, 512, "decode_tokens_per_second")),
    ("prefill tok/s, 512 tokens", "decode", lambda p: decode(p, 512, "prefill_tokens_per_second")),
    ("decode tok/s, batch 8 aggregate", "batch8", batch8),
    ("training tok/s, seq 512 batch 8", "train512", lambda p: json.load(open(p))["tokens_per_s"]),
    ("training peak GiB, seq 512", "train512", lambda p: json.load(open(p))["device_peak_used_gib"]),
    ("training tok/s, seq 2048 batch 8", "train2048", lambda p: json.load(open(p))["tokens_per_s"]),
    ("training peak GiB, seq 2048", "train2048", lambda p: json.load(open(p))["device_peak_used_gib"]),
]


def main():
    d = sys.argv[1]
    print("| figure | old (median) | new (median) | new / old | rounds |")
    print("|---|---|---|---|---|")
    for label, stem, get in FIGURES:
        vals = {}
        for which in ("old", "new"):
            files = sorted(glob.glob(os.path.join(d, f"{which}-{stem}-*.json")))
            vals[which] = [get(f) for f in files]
        if not vals["old"] or not vals["new"]:
            continue  # not run this time (BA_TRAIN=0)
        o, n = statistics.median(vals["old"]), statistics.median(vals["new"])
        print(f"| {label} | {o:.4g} | {n:.4g} | {n / o:.3f} | {len(vals['old'])} |")
    for which in ("old", "new"):
        log = os.path.join(d, f"{which}-gpu-check.log")
        if not os.path.exists(log):
            continue  # BA_CHECK=0
        last = [l for l in open(log) if "cases," in l]
        print(f"\n{which} gpu-check: {last[-1].strip() if last else '(no verdict)'}")


if __name__ == "__main__":
    main()
