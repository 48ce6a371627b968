#!/usr/bin/env python3
"""PEFT anchors for `wick bench train` (issue 8): LoRA training tokens/s, warm-up time and peak GPU
memory of SmolLM2-135M, r 16, alpha 32, every linear layer (PEFT's "all-linear": lm_head excluded),
bf16 base, AdamW (lr 1e-4), batch 8, random token ids as inputs and labels, in four setups:

  eager            PEFT + transformers, as a user writes it
  compile          torch.compile(peft_model)                      (inductor, default mode)
  reduce-overhead  torch.compile(peft_model, mode="reduce-overhead")  (inductor + CUDA graphs)
  liger            apply_liger_kernel_to_llama(rope, rms_norm, swiglu, fused_linear_cross_entropy)
                   before the model is built, then as eager
  liger-gc         liger plus transformers' gradient checkpointing (non-reentrant, every decoder
                   layer): the least memory PEFT offers, for the longest sequence that trains

The model is LlamaForCausalLM built from smollm2_135m_config.json (the GGUF's metadata), or the
model of another --config (model_type llama or qwen2: Qwen2ForCausalLM and Liger's qwen2 patch), with
random weights: throughput and memory depend on the shapes only, and no 98 MB checkpoint has to travel.
wick's side (`wick bench train --warmup-steps 3 --steps 20`) dequantizes the real GGUF to the same
shapes.

Each (setup, seq) runs in its own process with fresh TorchInductor and Triton caches, so the warm-up is
what a user sees the first time. Timing: WARMUP untimed steps (their wall time, synchronized, is the
warm-up), then STEPS timed steps between two synchronizations. Peak memory is
torch.cuda.max_memory_allocated() over the whole process (weights included).

Needs torch with CUDA, transformers, peft; liger-kernel for "liger" (PYTHONPATH may point at it).
Usage (driver: runs the setups in turn, each in a child process, within a deadline):
    python3 train_peft.py --runs eager:512,reduce-overhead:512 --deadline-s 500 --out FILE.jsonl
  FILE.jsonl gets one JSON object per run; runs already in it with status ok/error/timeout are skipped
  (so a second device call can finish the list). One run alone, printing its JSON:
    python3 train_peft.py --one eager --seq 512
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("eager", "compile", "reduce-overhead", "liger", "liger-gc")
# Rough seconds a run needs on an H100 (ANCHORS.md: 139 s of compilation for reduce-overhead at
# seq 512); a run is not started with less time left than this before the deadline.
EXPECT_S = {"eager": 25, "liger": 50, "liger-gc": 60, "compile": 120, "reduce-overhead": 170}
LIMIT_S = {"eager": 150, "liger": 200, "liger-gc": 300, "compile": 330, "reduce-overhead": 400}


def one(args):
    import torch
    import transformers
    import peft

    device = args.device
    on_cuda = device.startswith("cuda")
    liger_version = None
    with open(args.config) as f:
        # torch_dtype: the checkpoint's storage type, not a model option (the model is cast below).
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_") and k != "torch_dtype"}
    if args.layers:
        cfg["num_hidden_layers"] = args.layers
    # The model family decides the classes and Liger's patch: llama (LlamaForCausalLM) or qwen2
    # (Qwen2ForCausalLM, q/k/v biases).
    family = cfg.get("model_type", "llama")
    if family not in ("llama", "qwen2"):
        sys.exit(f"{args.config}: model_type {family!r} is not llama or qwen2")
    if args.one in ("liger", "liger-gc"):
        import importlib.metadata

        import liger_kernel.transformers as liger

        patch = getattr(liger, f"apply_liger_kernel_to_{family}")
        patch(rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=True)
        liger_version = importlib.metadata.version("liger-kernel")

    config_class, model_class = {
        "llama": (transformers.LlamaConfig, "LlamaForCausalLM"),
        "qwen2": (transformers.Qwen2Config, "Qwen2ForCausalLM"),
    }[family]
    config = config_class(**cfg)
    config.use_cache = False
    torch.manual_seed(0)
    t_load = time.perf_counter()
    # Built on the device in bf16 (the same initialisation; an 8B model built on the CPU in f32
    # first would take minutes).
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = getattr(transformers, model_class)(config)
    torch.set_default_dtype(default_dtype)
    model = model.to(device=device, dtype=torch.bfloat16)
    if args.one == "liger-gc":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_dtype = str(next(p.dtype for p in model.parameters() if p.requires_grad))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    forward = model
    if args.one == "compile":
        forward = torch.compile(model)
    elif args.one == "reduce-overhead":
        forward = torch.compile(model, mode="reduce-overhead")
    if on_cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t_load

    gen = torch.Generator(device="cpu").manual_seed(1)
    total = args.warmup + args.steps
    batches = [torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
               for _ in range(total)]

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    def step(ids):
        if args.one == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    step_s = []
    for i in range(args.warmup):
        t = time.perf_counter()
        step(batches[i])
        sync()
        step_s.append(time.perf_counter() - t)
        print(f"{args.one} seq {args.seq}: warm-up step {i + 1}/{args.warmup}: {step_s[-1]:.2f} s",
              file=sys.stderr, flush=True)
    sync()
    t = time.perf_counter()
    for i in range(args.warmup, total):
        loss = step(batches[i])
    sync()
    timed_s = time.perf_counter() - t
    final_loss = float(loss.float().item())
    tokens_per_s = args.steps * args.batch * args.seq / timed_s
    record = {
        "benchmark": "train",
        "engine": "peft-" + args.one,
        "mode": args.one,
        "status": "ok",
        "seq_len": args.seq,
        "batch_size": args.batch,
        "rank": args.rank,
        "lora_alpha": 2 * args.rank,
        "targets": "all-linear",
        "dtype": "bf16",
        "lora_dtype": lora_dtype,
        "trainable_params": trainable,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "tokens_per_s": tokens_per_s,
        "seconds_per_step": timed_s / args.steps,
        "warmup_s": sum(step_s),
        "warmup_step_s": step_s,
        "load_s": load_s,
        "final_loss": final_loss,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if on_cuda else None,
        # total - free at the end (CUDA context + the caching allocator's pool): the measure of
        # wick's device_peak_used_gib (cuMemGetInfo), which cannot see inside an allocator.
        "device_used_end_gib": (lambda f, t: (t - f) / 2**30)(*torch.cuda.mem_get_info()) if on_cuda else None,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "device": torch.cuda.get_device_name() if on_cuda else device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "liger_kernel": liger_version,
        "layers": config.num_hidden_layers,
        "weights": f"random ({os.path.basename(args.config)})",
    }
    print("RESULT " + json.dumps(record), flush=True)


def done_runs(path):
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r.get("status") in ("ok", "error", "timeout"):
                        done.add((r["mode"], r["seq_len"]))
    return done


def driver(args):
    deadline = time.monotonic() + args.deadline_s
    done = done_runs(args.out)
    for item in args.runs.split(","):
        mode, seq = item.split(":")
        seq = int(seq)
        if mode not in MODES:
            sys.exit(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        if (mode, seq) in done:
            print(f"== {mode} seq {seq}: already in {args.out}", file=sys.stderr)
            continue
        left = deadline - time.monotonic()
        if left < EXPECT_S[mode]:
            print(f"== {mode} seq {seq}: skipped, {left:.0f} s left before the deadline "
                  f"(needs ~{EXPECT_S[mode]} s); a later call can run it", file=sys.stderr)
            continue
        limit = min(LIMIT_S[mode], left)
        cache = tempfile.mkdtemp(prefix=f"peft-{mode}-{seq}-")
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"),
                   TRITON_CACHE_DIR=os.path.join(cache, "triton"), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, os.path.abspath(__file__), "--one", mode, "--seq", str(seq),
               "--batch", str(args.batch), "--rank", str(args.rank), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device]
        cmd += ["--config", args.config]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        print(f"== {mode} seq {seq} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
        start = time.monotonic()
        base = {"benchmark": "train", "engine": "peft-" + mode, "mode": mode, "seq_len": seq,
                "batch_size": args.batch, "rank": args.rank, "command": " ".join(cmd[1:])}
        # Own session, so that a timeout also ends Inductor's compile workers.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=limit)
            sys.stderr.write(stderr[-4000:])
            lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode == 0 and lines:
                record = {**base, **json.loads(lines[-1][len("RESULT "):])}
            else:
                record = {**base, "status": "error", "returncode": proc.returncode,
                          "error": (stderr or stdout)[-1500:]}
        except subprocess.TimeoutExpired:
            # Killed at the run's own limit: recorded (not retried). Killed by the call's deadline:
            # not recorded, so the next call runs it again.
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            sys.stderr.write(err[-2000:])
            if limit < LIMIT_S[mode]:
                print(f"== {mode} seq {seq}: stopped at the call's deadline after {limit:.0f} s; "
                      "not recorded", file=sys.stderr)
                continue
            record = {**base, "status": "timeout", "limit_s": limit, "error": err[-1500:]}
        record["wall_s"] = time.monotonic() - start
        record["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        summary = (f"{record['tokens_per_s']:.0f} tok/s, warm-up {record['warmup_s']:.1f} s, "
                   f"peak {record['peak_gpu_memory_gib']} GiB" if record["status"] == "ok"
                   else record["status"])
        print(f"== {mode} seq {seq}: {summary} ({record['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="eager:512,liger:512,compile:512,reduce-overhead:512,"
                   "eager:2048,liger:2048,reduce-overhead:2048,compile:2048")
    p.add_argument("--one", choices=MODES, help="run one setup in this process and print its JSON")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=0, help="override the layer count (for a quick test)")
    p.add_argument("--config", default=os.path.join(HERE, "smollm2_135m_config.json"),
                   help="HF config JSON of the model shapes (model_type llama or qwen2)")
    p.add_argument("--deadline-s", type=float, default=540)
    p.add_argument("--out", help="JSON lines file (driver mode)")
    args = p.parse_args()
    if args.one:
        one(args)
    else:
        if not args.out:
            p.error("--out is needed unless --one is given")
        driver(args)


if __name__ == "__main__":
    main()
