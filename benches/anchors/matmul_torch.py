#!/usr/bin/env python3
"""PyTorch anchors for the overhead issue's matmul goals, measured the way `wick bench dispatch` and
`wick bench overhead` measure wick: y = F.linear(x, W) (x: [m, k], W: [n, k]) at

  - 64x64x64 f32: eager, pipelined (N calls back to back, one synchronize, wall clock per call, as
    wick's "pipelined"), eager timed by CUDA events, and 100 products captured in one CUDA graph
    (replay time / 100: wick's "per kernel inside a graph");
  - 64x64x64 bf16 and 1x1024x1024 bf16 in a graph (wick's other graph figures);
  - 4096x4096x4096 bf16 and f32, eager (the "4096^3 bf16 >= 0.97x PyTorch" goal).

f32 products run without TF32 (torch.backends.cuda.matmul.allow_tf32 = False, PyTorch's default),
as wick's do. Needs: torch with CUDA.
Usage: python matmul_torch.py --out FILE
Writes {"command", "device", "date", "torch", "timings": [{op, dtype, m, n, k, mode, us_per_call,
tflop_per_s, iters}]}, mode one of "eager-pipelined-wall", "eager-events", "cuda-graph-per-kernel".
"""
import argparse
import datetime
import json
import sys
import time

import torch
import torch.nn.functional as F


def sync():
    torch.cuda.synchronize()


def wall_per_call(fn, iters):
    """Best of 3: N calls then one synchronize, host wall clock per call (wick's pipelined figure)."""
    best = float("inf")
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e6


def events_per_call(fn, iters):
    """Best of 3: CUDA events around N calls, per call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        sync()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        sync()
        best = min(best, start.elapsed_time(end) * 1e3 / iters)
    return best


def iters_for(fn, target_ms=20.0, lo=10, hi=2000):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t0, 1e-7)
    return int(min(max(target_ms / 1e3 / one, lo), hi))


def graph_per_kernel(x, w, kernels=100, replays=20):
    """`kernels` products captured into one graph (as wick's time_graph_matmul); us per product."""
    y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.matmul(x, w.t(), out=y)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(kernels):
            torch.matmul(x, w.t(), out=y)
    g.replay()
    sync()
    ref = F.linear(x.float(), w.float())
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    best = float("inf")
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(replays):
            g.replay()
        sync()
        best = min(best, (time.perf_counter() - t0) / (replays * kernels))
    return best * 1e6, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(7)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

    def rand(shape, dtype):
        return (torch.rand(shape, generator=gen) * 2 - 1).to(dev, dtypes[dtype])

    timings = []

    def push(dtype, m, n, k, mode, us, iters, extra=None):
        rec = {"op": "linear", "dtype": dtype, "m": m, "n": n, "k": k, "mode": mode, "us_per_call": us,
               "tflop_per_s": 2 * m * n * k / (us * 1e-6) / 1e12, "iters": iters}
        if extra:
            rec.update(extra)
        timings.append(rec)
        print(f"{dtype:>5} {m:>5} {n:>5} {k:>5} {mode:>22} {us:10.2f} us", flush=True)

    for dtype, (m, n, k) in [("f32", (64, 64, 64)), ("bf16", (64, 64, 64)), ("f16", (64, 64, 64)),
                             ("bf16", (4096, 4096, 4096)), ("f32", (4096, 4096, 4096)),
                             ("bf16", (1, 1024, 1024))]:
        x, w = rand((m, k), dtype), rand((n, k), dtype)
        fn = lambda: F.linear(x, w)
        for _ in range(5):
            fn()
        iters = iters_for(fn)
        push(dtype, m, n, k, "eager-pipelined-wall", wall_per_call(fn, iters), iters)
        push(dtype, m, n, k, "eager-events", events_per_call(fn, iters), iters)
        if m * n * k <= 16777216:
            us, err = graph_per_kernel(x, w)
            push(dtype, m, n, k, "cuda-graph-per-kernel", us, 100, {"max_rel_err": err})

    out = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "timings": timings,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
