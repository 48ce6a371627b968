#!/usr/bin/env python3
"""Summarizes `ncu --csv --page raw` output: per kernel name, the launches' mean duration, DRAM
throughput, achieved occupancy, registers, and the largest warp stall reasons (cycles per issued
instruction). usage: ncu_summary.py RAW.csv [more.csv ...]"""
import csv, sys, collections

def num(s):
    try:
        return float(str(s).replace(",", ""))
    except ValueError:
        return None

for path in sys.argv[1:]:
    rows = list(csv.reader(l for l in open(path, errors="replace") if l.startswith('"')))
    if len(rows) < 3:
        print(f"{path}: no rows"); continue
    head, data = rows[0], rows[2:]  # second row holds units
    col = {h: i for i, h in enumerate(head)}
    groups = collections.OrderedDict()
    for r in data:
        if len(r) != len(head):
            continue
        key = (r[col["Kernel Name"]], r[col.get("Grid Size", col["Kernel Name"])])
        groups.setdefault(key, []).append(r)
    print(f"== {path}")
    stall_cols = [h for h in head if "warps_issue_stalled" in h and h.endswith("per_issue_active.ratio")]
    for (name, grid), rs in groups.items():
        def mean(h):
            vals = [num(r[col[h]]) for r in rs if h in col]
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else float("nan")
        dur = mean("gpu__time_duration.sum")
        dram = mean("dram__throughput.avg.pct_of_peak_sustained_elapsed")
        occ = mean("sm__warps_active.avg.pct_of_peak_sustained_active")
        regs = mean("launch__registers_per_thread")
        stalls = sorted(((mean(h), h.split("stalled_")[1].split("_per_issue")[0]) for h in stall_cols), reverse=True)[:5]
        st = " ".join(f"{n}={v:.1f}" for v, n in stalls)
        print(f"{name[:40]:40s} grid {grid:>14s} n={len(rs):3d} dur {dur/1000 if dur==dur else 0:7.2f} us dram {dram:5.1f}% occ {occ:5.1f}% regs {regs:.0f} | {st}")
