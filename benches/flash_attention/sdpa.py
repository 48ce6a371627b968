"""PyTorch SDPA (causal, bf16) on the shapes of fa_bench.cu, timed the same way: one JSON line per
shape with forward and backward ms and TFLOP/s (causal FLOPs: half of 4 B H S^2 hd forward, 2.5x
that backward). Run beside fa_bench in the same device call."""
import json

import torch
import torch.nn.functional as F


def bench(seq, hd, groups=1, tokens=16384, hidden=2048, iters=20):
    b, h = tokens // seq, hidden // hd
    dev = torch.device("cuda")
    q = torch.randn(b, h, seq, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, h // groups, seq, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, h // groups, seq, hd, device=dev, dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(b, h, seq, hd, device=dev, dtype=torch.bfloat16)

    def fwd():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=groups > 1)

    def fwd_bwd():
        fwd().backward(do)

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        for _ in range(2):
            fn()
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            out[name] = start.elapsed_time(end) / iters
    flops = 4.0 * b * h * seq * seq * hd / 2
    bwd = out["fwd_bwd"] - out["fwd"]
    print(json.dumps({
        "bench": "torch_sdpa", "S": seq, "hd": hd, "B": b, "H": h, "G": groups,
        "fwd_ms": round(out["fwd"], 4), "bwd_ms": round(bwd, 4),
        "fwd_tflops": round(flops / out["fwd"] * 1e-9, 1), "bwd_tflops": round(2.5 * flops / bwd * 1e-9, 1),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(),
    }), flush=True)


if __name__ == "__main__":
    for hd in (64, 128):
        for seq in (2048, 4096, 8192):
            bench(seq, hd)
    bench(2048, 64, groups=4)
