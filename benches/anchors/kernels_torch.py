#!/usr/bin/env python3
"""PyTorch anchors for `wick bench kernels`: the same kernels at the same shapes, timed in eager mode
and replayed from a CUDA graph, with CUDA events around loops of many calls.

Needs: torch with CUDA. Usage: python kernels_torch.py --out FILE [--target-ms 200]
Writes {"command", "device", "date", "torch", "timings": [{kernel, implementation, dtype, shape,
us_per_call (median of 11 loops), us_best, gb_per_s, tflop_per_s, iters, loops}]} with implementation
"torch-eager", "torch-cuda-graph" (one call per graph replay), "torch-cuda-graph-x20" (20 calls per
graph, few-token LoRA) or "torch-clone" (copy bandwidth).
"""
import argparse
import datetime
import json
import os
import sys

import torch


def time_call(fn, target_ms, loops=11, calls_per_fn=1):
    """Microseconds per call: the median (and best) of `loops` event-bracketed loops, together sized to
    ~target_ms; `fn` issues `calls_per_fn` calls. Same statistic as `wick bench kernels`."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one_ms = max(start.elapsed_time(end), 1e-3)
    iters = int(min(max(target_ms / loops / one_ms, 20), 20000))
    per_call = []
    for _ in range(loops):
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / (iters * calls_per_fn))
    per_call.sort()
    return per_call[len(per_call) // 2], per_call[0], iters * calls_per_fn, loops


def graphed(fn, calls=1):
    """`calls` calls of fn captured in one CUDA graph (after a warm-up on a side stream); returns the
    replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
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
        us, us_best, iters, loops = result
        rec = dict(kernel=kernel, implementation=imp, dtype=names[dtype], shape=shape, us_per_call=us,
                   us_best=us_best, gb_per_s=None if nbytes is None else nbytes / us / 1e3,
                   tflop_per_s=None if flops is None else flops / us / 1e6, iters=iters, loops=loops)
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
            if t <= 8:
                # 20 calls per graph: time per call without one graph launch each (as wick-graph).
                push("lora_linear", "torch-cuda-graph-x20", dtype, shape,
                     time_call(graphed(lora, 20), args.target_ms, calls_per_fn=20), nbytes, flops)

    for (rows, n) in [(1, 576), (128, 576), (4096, 4096), (8, 49152)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, n, device=dev, dtype=dtype, generator=g) * 4
            w = torch.randn(n, device=dev, dtype=dtype, generator=g)
            nbytes = 2 * rows * n * x.element_size()
            shape = f"{rows}x{n}"
            push("copy", "torch-clone", dtype, shape, time_call(lambda x=x: x.clone(), args.target_ms), nbytes)
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
