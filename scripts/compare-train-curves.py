#!/usr/bin/env python3
"""Compare two LoRA training curves (metrics.jsonl from `wick train`) step by step and print a verdict.

Usage:
  python3 scripts/compare-train-curves.py REFERENCE.jsonl CANDIDATE.jsonl [--mode same-dtype|mixed-dtype]
                                          [--abs-tol X] [--rel-tol X] [--grad-tol X] [--window N]
                                          [--json OUT]

Both files hold one JSON object per line; the lines with "kind": "train" (or no "kind") and a "step"
and a "loss" are compared, matched by step. Needs only the Python standard library.

Modes and their default tolerances (loss is the mean token cross-entropy, ~3 at the start):

  same-dtype   (CPU f32 vs CUDA f32): at every step |loss_c - loss_r| <= abs_tol + rel_tol * |loss_r|,
               abs_tol 2e-3, rel_tol 0. Same data order and seed, so only the summation order differs:
               the forward agrees to ~1e-5 relative (gpu-check: f32 kernels within 1e-5), and 20 AdamW
               steps of lr 2e-4 move the adapter too little for that to grow past ~1e-4 in the loss.
               2e-3 leaves a 10x margin over that and is still 50x below the 0.1-0.4 gap a wrong
               backward (or a bf16 base) produces. AdamW normalises each gradient element, so a
               gradient wrong by a constant factor would not show in the loss: the step-1 gradient
               norms (same weights, same batch on both sides) must also agree to grad_tol (1e-4
               relative; f32 reductions in another order differ by ~1e-6).
  mixed-dtype  (CUDA bf16 vs CPU/CUDA f32): the base weights are rounded to bf16 (8 bits of mantissa),
               so the curves are not expected to agree step by step. The verdict asks that the
               candidate "lowers the loss like the reference": the mean loss over the last `window`
               steps is within rel_tol (default 0.15) of the reference's, and the candidate's drop
               from the first to the last window is at least half of the reference's drop.
"""

import argparse
import json
import math
import sys


def load(path):
    curve = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            if rec.get("kind", "train") != "train" or "step" not in rec or "loss" not in rec:
                continue
            curve[int(rec["step"])] = rec
    if not curve:
        sys.exit(f"{path}: no training records (lines with step and loss)")
    return curve


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--mode", choices=["same-dtype", "mixed-dtype"], default="same-dtype")
    p.add_argument("--abs-tol", type=float, default=None)
    p.add_argument("--rel-tol", type=float, default=None)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--grad-tol", type=float, default=1e-4,
                   help="same-dtype: largest relative difference of the step-1 gradient norms")
    p.add_argument("--json", help="write the comparison here as JSON")
    a = p.parse_args()

    ref, cand = load(a.reference), load(a.candidate)
    steps = sorted(set(ref) & set(cand))
    if not steps:
        sys.exit("no common steps")
    missing = sorted(set(ref) ^ set(cand))

    rows = []
    print(f"{'step':>5} {'reference':>10} {'candidate':>10} {'diff':>10} {'gnorm rel':>10}")
    for s in steps:
        lr, lc = float(ref[s]["loss"]), float(cand[s]["loss"])
        gr, gc = ref[s].get("grad_norm"), cand[s].get("grad_norm")
        grel = abs(gc - gr) / abs(gr) if gr and gc is not None else float("nan")
        rows.append({"step": s, "reference": lr, "candidate": lc, "diff": lc - lr, "grad_norm_rel_diff": grel})
        print(f"{s:>5} {lr:>10.5f} {lc:>10.5f} {lc - lr:>+10.2e} {grel:>10.2e}")

    result = {"reference": a.reference, "candidate": a.candidate, "mode": a.mode, "steps": len(steps),
              "steps_missing_from_one_side": missing, "rows": rows}
    ok = not any(math.isnan(r["candidate"]) for r in rows)
    if a.mode == "same-dtype":
        abs_tol = 2e-3 if a.abs_tol is None else a.abs_tol
        rel_tol = 0.0 if a.rel_tol is None else a.rel_tol
        worst = max(rows, key=lambda r: abs(r["diff"]) - rel_tol * abs(r["reference"]))
        bad = [r["step"] for r in rows if not abs(r["diff"]) <= abs_tol + rel_tol * abs(r["reference"])]
        # Step 1 runs both sides on identical weights and batch: its gradient norm checks the
        # gradients themselves (AdamW hides a wrongly scaled gradient from the loss curve).
        g1 = rows[0]["grad_norm_rel_diff"] if rows[0]["step"] == 1 else float("nan")
        g1_ok = math.isnan(g1) or g1 <= a.grad_tol
        ok = ok and not bad and g1_ok
        result.update(abs_tol=abs_tol, rel_tol=rel_tol, max_abs_diff=abs(worst["diff"]), worst_step=worst["step"],
                      steps_out_of_tolerance=bad, step1_grad_norm_rel_diff=g1, grad_tol=a.grad_tol)
        print(f"tolerance per step: |diff| <= {abs_tol:g} + {rel_tol:g} * |reference|")
        print(f"largest |diff| {abs(worst['diff']):.3e} at step {worst['step']}; out of tolerance: {bad or 'none'}")
        print(f"step 1 gradient norm relative difference {g1:.2e} (tolerance {a.grad_tol:g})")
    else:
        rel_tol = 0.15 if a.rel_tol is None else a.rel_tol
        w = max(1, min(a.window, len(steps) // 2))
        mean = lambda key, sl: sum(r[key] for r in sl) / len(sl)
        ref_first, ref_last = mean("reference", rows[:w]), mean("reference", rows[-w:])
        cand_first, cand_last = mean("candidate", rows[:w]), mean("candidate", rows[-w:])
        last_rel = abs(cand_last - ref_last) / abs(ref_last)
        ref_drop, cand_drop = ref_first - ref_last, cand_first - cand_last
        drop_ok = ref_drop > 0 and cand_drop >= 0.5 * ref_drop
        ok = ok and last_rel <= rel_tol and drop_ok
        result.update(window=w, rel_tol=rel_tol, reference_first=ref_first, reference_last=ref_last,
                      candidate_first=cand_first, candidate_last=cand_last, last_window_rel_diff=last_rel,
                      reference_drop=ref_drop, candidate_drop=cand_drop)
        print(f"mean loss over the first/last {w} steps: reference {ref_first:.4f} -> {ref_last:.4f}, "
              f"candidate {cand_first:.4f} -> {cand_last:.4f}")
        print(f"last window relative difference {last_rel:.3f} (tolerance {rel_tol:g}); "
              f"drop {cand_drop:.4f} vs reference {ref_drop:.4f} (needs >= half)")
    if missing:
        print(f"steps present in only one file: {missing}")
    result["ok"] = ok
    print(f"verdict: {'PASS' if ok else 'FAIL'} ({a.mode})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
