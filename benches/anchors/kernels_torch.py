#!/usr/bin/env python3
"""PyTorch anchors for `wick bench kernels`: the same kernels at the same shapes, timed in eager mode
and replayed from a CUDA graph, with CUDA events around loops of many calls.

Needs: torch with CUDA. Usage: python kernels_torch.py --out FILE [--target-ms 200]
Writes {"command", "device", "date", "torch", "timings": [{kernel, implementation, dtype, shape,
us_per_call, gb_per_s, tflop_per_s, iters}]} with implementation "torch-eager" or "torch-cuda-graph".
"""
import argparse
import datetime
import json
import os
import sys

import torch


def time_call(fn, target_ms):
    """Microseconds per call: best of 3 event-bracketed loops sized to ~target_ms."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one_ms = max(start.elapsed_time(end), 1e-3)
    iters = int(min(max(target_ms / one_ms, 20), 20000))
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / iters)
    return best, iters


def graphed(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream); returns the replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-ms", type=float, default=200)
    args = ap.parse_args()
    dev = "cuda"
    timings = []
    names = {torch.float32: "f32", torch.bfloat16: "bf16"}

    def push(kernel, imp, dtype, shape, result, nbytes=None, flops=None):
        us, iters = result
        rec = dict(kernel=kernel, implementation=imp, dtype=names[dtype], shape=shape, us_per_call=us,
                   gb_per_s=None if nbytes is None else nbytes / us / 1e3,
                   tflop_per_s=None if flops is None else flops / us / 1e6, iters=iters)
        print(f"{kernel:<14} {imp:<16} {rec['dtype']:>5} {shape:>22} {us:>10.2f} us", flush=True)
        timings.append(rec)

    g = torch.Generator(device=dev).manual_seed(0)
    for (t, d, r) in [(1, 1024, 8), (1, 1024, 16), (128, 1024, 8), (128, 1024, 16), (2048, 1024, 8),
                      (2048, 1024, 16), (8192, 4096, 16)]:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(t, d, device=dev, dtype=dtype, generator=g)
            w = torch.randn(d, d, device=dev, dtype=dtype, generator=g) * 0.05
            a = torch.randn(r, d, device=dev, dtype=dtype, generator=g) * 0.05
            b = torch.randn(d, r, device=dev, dtype=dtype, generator=g) * 0.05

            def lora(x=x, w=w, a=a, b=b):
                # PEFT's Linear.forward without dropout: base + (x A^T) B^T * scale
                return torch.nn.functional.linear(x, w) + torch.nn.functional.linear(
                    torch.nn.functional.linear(x, a), b) * 2.0

            flops = 2.0 * (t * d * d + 2 * t * d * r)
            nbytes = x.element_size() * (d * d + 2 * t * d + 2 * d * r)
            shape = f"t{t} d{d} r{r}"
            push("lora_linear", "torch-eager", dtype, shape, time_call(lora, args.target_ms), nbytes, flops)
            push("lora_linear", "torch-cuda-graph", dtype, shape, time_call(graphed(lora), args.target_ms),
                 nbytes, flops)

    for (rows, n) in [(1, 576), (128, 576), (4096, 4096), (8, 49152)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, n, device=dev, dtype=dtype, generator=g) * 4
            w = torch.randn(n, device=dev, dtype=dtype, generator=g)
            nbytes = 2 * rows * n * x.element_size()
            shape = f"{rows}x{n}"
            sm = lambda x=x: torch.softmax(x, dim=-1)
            push("softmax", "torch-eager", dtype, shape, time_call(sm, args.target_ms), nbytes)
            push("softmax", "torch-cuda-graph", dtype, shape, time_call(graphed(sm), args.target_ms), nbytes)
            rn = lambda x=x, w=w: torch.nn.functional.rms_norm(x, (n,), w, 1e-6)
            push("rms_norm", "torch-eager", dtype, shape, time_call(rn, args.target_ms), nbytes)
            push("rms_norm", "torch-cuda-graph", dtype, shape, time_call(graphed(rn), args.target_ms), nbytes)

    out = dict(command=" ".join([os.path.basename(sys.executable)] + sys.argv),
               device=os.environ.get("WICK_DEVICE_NAME", torch.cuda.get_device_name()),
               date=os.environ.get("WICK_RUN_DATE", datetime.datetime.utcnow().strftime("%Y-%m-%d")),
               torch=torch.__version__, timings=timings)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
