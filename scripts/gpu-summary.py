#!/usr/bin/env python3
"""Writes bench/results/gpu-summary.json: every "done when" figure of issues 8, 14 and 15 from the
latest device run, as a list of {figure, goal, wick, anchor, anchor_engine, ratio, unit, met, device, date, command,
source}. `goal` is `>= N` or `<= N` (against `wick`) or `>= Nx` (against `ratio`); a figure whose
files are missing has "status": "not measured" and null numbers. Rows with goal null are context
(the other anchors, other sequence lengths and batch sizes).

    python3 scripts/gpu-summary.py [PATH ...] [--out bench/results/gpu-summary.json]

PATHs (default bench/results) are files or folders of what the device calls brought back:
  e2e-*.json        bundles of scripts/device/e2e.sh (llama.cpp, PEFT and sentence-transformers
                    anchors, wick bench decode/train/embed, cold start; bigger-models.sh's
                    {wick,llamacpp}-big-<type>.json, train-shapes.sh's wick-train-<shape>-<seq>.json and
                    anchors-train-<shape>.jsonl, wick-lora-<model>.json from wick bench decode-lora);
                    later bundles win per file
  overhead*.json    `wick bench overhead` (64x64 f32 matmul pipelined and inside a graph)
  dispatch*.json    `wick bench dispatch` (fallback for the 64x64 figures; 4096^3 bf16 through the
                    dispatch)
  anchors-matmul*.json   benches/anchors/matmul_torch.py (PyTorch's F.linear at the same shapes, same
                    call as dispatch and overhead)
`ratio` is how many times faster wick is (wick rate / anchor rate, anchor time / wick time); for
memory, wick / anchor.
Standard library only.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def gather(paths):
    """Returns (e2e files by name, other JSON documents by kind), latest date first wins."""
    found = []
    for p in paths:
        if os.path.isdir(p):
            found += sorted(glob.glob(os.path.join(p, "*.json")) + glob.glob(os.path.join(p, "*.jsonl")))
        elif os.path.exists(p):
            found.append(p)
    e2e, docs = {}, {"overhead": [], "dispatch": [], "torch": [], "device": []}
    bundles = []
    for path in found:
        if os.path.basename(path) == "gpu-summary.json":
            continue
        try:
            doc = load(path)
        except (ValueError, OSError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
            bundles.append((doc.get("date") or "", path, doc))
        elif isinstance(doc, dict) and "rows" in doc and "graphs" in doc:
            docs["overhead"].append((doc.get("date") or "", path, doc))
        elif isinstance(doc, dict) and "shapes" in doc and "graphs" in doc:
            docs["dispatch"].append((doc.get("date") or "", path, doc))
        elif isinstance(doc, dict) and "torch" in doc and any(
                isinstance(t, dict) and t.get("op") == "linear" for t in doc.get("timings", [])):
            docs["torch"].append((doc.get("date") or "", path, doc))
        elif isinstance(doc, dict) and "steps" in doc and "driver" in doc:
            docs["device"].append((doc.get("date") or "", path, doc))
    BUNDLES[:] = sorted(bundles, key=lambda b: b[0])
    for date, path, doc in sorted(bundles, key=lambda b: b[0]):
        for name, value in doc["files"].items():
            e2e[name] = {"value": value, "source": os.path.basename(path), "date": date,
                         "device": doc.get("device")}
    for kind in docs:
        docs[kind].sort(key=lambda d: d[0], reverse=True)
    return e2e, docs


def row(figure, goal, unit, wick=None, anchor=None, anchor_engine=None, ratio=None, device=None,
        date=None, command=None, source=None, note=None):
    if ratio is None and wick and anchor:
        # How many times faster wick is: rate / rate, or time / time inverted; memory: wick / anchor.
        ratio = anchor / wick if unit in ("us", "s") else wick / anchor
    met = None
    if goal:
        m = re.fullmatch(r"(>=|<=) ([0-9.]+)(x?)", goal)
        value = ratio if m.group(3) else wick
        if value is not None:
            bound = float(m.group(2))
            met = value >= bound if m.group(1) == ">=" else value <= bound
    measured = (ratio if goal and goal.endswith("x") else wick) is not None
    r = {"figure": figure, "goal": goal, "wick": wick, "anchor": anchor, "anchor_engine": anchor_engine,
         "ratio": ratio, "unit": unit, "met": met, "status": "measured" if measured else "not measured",
         "device": device, "date": date, "command": command, "source": source}
    if note:
        r["note"] = note
    return r


# Every bundle read, oldest first: (date, path, doc).
BUNDLES = []


def same_call(*names):
    """The files `names` from the latest bundle (one device call) that holds all of them, each as
    e2e_get returns it: a ratio of two engines is only formed within one call."""
    for date, path, doc in reversed(BUNDLES):
        if all(n in doc["files"] for n in names):
            return [(doc["files"][n], {"value": doc["files"][n], "source": os.path.relpath(path),
                                       "date": date, "device": doc.get("device")}) for n in names]
    return [(None, {}) for _ in names]


def e2e_get(e2e, name):
    item = e2e.get(name)
    return (item["value"], item) if item else (None, {})


def matmul_rows(docs):
    rows = []
    # 1. 64x64 f32: `wick bench overhead` (fully cured rows), else `wick bench dispatch`.
    pipelined = graph = None
    meta = {}
    if docs["overhead"]:
        date, path, doc = docs["overhead"][0]
        labels = [r["cures"] for r in doc["rows"] if r["op"] == "matmul 64x64x64 f32"]
        if labels:
            last = labels[-1]
            pipelined = min(r["pipelined_us"] for r in doc["rows"]
                            if r["op"] == "matmul 64x64x64 f32" and r["cures"] == last)
        g = [x["timing"]["us_per_kernel"] for x in doc["graphs"]
             if x["timing"].get("dtype") == "f32" and x["timing"].get("m") == 64]
        graph = min(g) if g else None
        meta = {"device": doc.get("device"), "date": date, "command": doc.get("command"),
                "source": os.path.basename(path)}
    if (pipelined is None or graph is None) and docs["dispatch"]:
        date, path, doc = docs["dispatch"][0]
        if pipelined is None:
            for s in doc["shapes"]:
                if s["dtype"] == "f32" and s["m"] == s["n"] == s["k"] == 64:
                    pipelined = min(p["us_per_call"] for p in s["paths"])
        if graph is None:
            g = [x["us_per_kernel"] for x in doc["graphs"] if x["dtype"] == "f32" and x["m"] == 64]
            graph = min(g) if g else None
        meta = meta or {"device": doc.get("device"), "date": date, "command": doc.get("command"),
                        "source": os.path.basename(path)}
    torch_lin = {}
    if docs["torch"]:
        _, torch_path, doc = docs["torch"][0]
        for t in doc["timings"]:
            if t.get("op") == "linear":
                key = (t["dtype"], t["m"], t["n"], t["k"], t["mode"])
                torch_lin[key] = min(t["us_per_call"], torch_lin.get(key, float("inf")))
    note = None
    if docs["overhead"]:
        doc = docs["overhead"][0][2]
        best = min((r for r in doc["rows"] if r["op"] == "matmul 64x64x64 f32" and r.get("pipelined_us")),
                   key=lambda r: r["pipelined_us"], default=None)
        alloc = {a["cures"]: a["stages"] for a in doc.get("allocating", [])}
        if best:
            note = f"fastest: {best['path']} with cures {best['cures']}"
            stages = alloc.get(best["cures"])
            if stages:
                note += (f"; the allocating dispatch::linear pipelined {stages['dispatch_linear_pipelined_us']:.2f} us, "
                         f"linear_into pipelined {stages['launch_into_pipelined_us']:.2f} us, a raw cuLaunchKernel "
                         f"{stages['raw_launch_us']:.2f} us (the host's floor)")
    rows.append(row("matmul 64x64x64 f32 through wick, per call pipelined", "<= 4", "us", wick=pipelined,
                    anchor=torch_lin.get(("f32", 64, 64, 64, "eager-pipelined-wall")),
                    anchor_engine="PyTorch eager F.linear, pipelined", note=note, **meta))
    rows.append(row("matmul 64x64x64 f32 through wick, per kernel inside a CUDA graph", "<= 2.5", "us",
                    wick=graph, anchor=torch_lin.get(("f32", 64, 64, 64, "cuda-graph-per-kernel")),
                    anchor_engine="PyTorch CUDA graph of 100 products", **meta))
    # 2. 4096^3 bf16 through the dispatch vs PyTorch in the same call (speed ratio = time ratio).
    wick_us = torch_us = None
    meta = {}
    if docs["dispatch"]:
        date, path, doc = docs["dispatch"][0]
        for s in doc["shapes"]:
            if s["dtype"] == "bf16" and s["m"] == s["n"] == s["k"] == 4096:
                wick_us = next(p["us_per_call"] for p in s["paths"] if p["path"] == s["best"])
        meta = {"device": doc.get("device"), "date": date, "command": doc.get("command"),
                "source": os.path.basename(path)}
    # Like for like: wick's dispatch figure is pipelined wall time per call, so PyTorch's is too.
    torch_us = torch_lin.get(("bf16", 4096, 4096, 4096, "eager-pipelined-wall"))
    if docs["torch"] and meta:
        meta["source"] += " + " + os.path.basename(torch_path)
    rows.append(row("matmul 4096^3 bf16 through the dispatch, speed vs PyTorch", ">= 0.97x", "us",
                    wick=wick_us, anchor=torch_us, anchor_engine="PyTorch eager F.linear, pipelined (same call)",
                    ratio=torch_us / wick_us if wick_us and torch_us else None, **meta,
                    note="wick/anchor in microseconds per product; ratio = PyTorch time / wick time"))
    return rows


def llamacpp_rates(bench):
    """llama-bench JSON: (prefill tok/s for pp512, decode tok/s for tg128)."""
    pp = tg = None
    for r in bench or []:
        if r.get("n_prompt") and not r.get("n_gen"):
            pp = r["avg_ts"]
        elif r.get("n_gen") and not r.get("n_prompt"):
            tg = r["avg_ts"]
    return pp, tg


def decode_rows(e2e):
    rows = []
    bench, item_l = e2e_get(e2e, "llamacpp-bench.json")
    batched, item_b = e2e_get(e2e, "llamacpp-batched.jsonl")
    dec, item_w = e2e_get(e2e, "wick-decode.json")
    pp_l, tg_l = llamacpp_rates(bench if isinstance(bench, list) else None)
    wick_tg = wick_pp = candle_tg = candle_pp = None
    wick_path = prefill_path = None
    if isinstance(dec, dict) and "timings" in dec:
        for t in dec["timings"]:
            pp = t["prompt_tokens"] / (t["prefill_ms"] / 1e3) if t.get("prefill_ms") else None
            if t["path"].startswith("candle"):
                candle_tg, candle_pp = t["decode_tokens_per_second"], pp
            elif wick_tg is None or t["decode_tokens_per_second"] > wick_tg:
                wick_tg, wick_path = t["decode_tokens_per_second"], t["path"]
            if pp and (wick_pp is None or pp > wick_pp):
                wick_pp, prefill_path = pp, t["path"]
    device = item_w.get("device") or item_l.get("device")
    date = item_w.get("date") or item_l.get("date")
    src = " + ".join(x["source"] for x in (item_w, item_l) if x)
    cmd_w = "wick bench decode --device cuda --prompt-tokens 512 --decode-tokens 128 (scripts/device/e2e.sh decode)"
    cmd_l = "llama-bench -m GGUF -p 512 -n 128 -ngl 99 -r 5 -o json (CUDA sm_90 build; scripts/device/e2e.sh llamacpp)"
    # Which file: the default GGUF, or (session 10) random weights at its shapes and tensor types.
    model = os.path.basename(dec.get("model", "")) if isinstance(dec, dict) else ""
    of = "" if not model or "SmolLM2-135M" in model else \
        f"; model {model}: random weights at the default GGUF's shapes and tensor types, both engines read it"
    rows.append(row("decode SmolLM2-135M Q4_1, batch 1, vs llama.cpp CUDA (issue 14.3)", ">= 1.4x", "tokens/s",
                    wick=wick_tg, anchor=tg_l, anchor_engine="llama.cpp CUDA (llama-bench tg128)",
                    device=device, date=date, command=f"{cmd_w}; {cmd_l}", source=src,
                    note=f"wick path: {wick_path}{of}" if wick_path else None))
    rows.append(row("prefill 512 tokens vs llama.cpp CUDA (issue 14.3)", ">= 1.4x", "tokens/s", wick=wick_pp,
                    anchor=pp_l, anchor_engine="llama.cpp CUDA (llama-bench pp512)", device=device,
                    date=date, command=f"{cmd_w}; {cmd_l}", source=src,
                    note=f"wick path: {prefill_path}{of}" if prefill_path else None))
    rows.append(row("decode batch 1 vs plain Candle (ops + QMatMul, same process)", None, "tokens/s",
                    wick=wick_tg, anchor=candle_tg, anchor_engine="Candle 0.11 quantized ops", device=device,
                    date=date, command=cmd_w, source=item_w.get("source")))
    b8 = next((r for r in batched or [] if r.get("pl") == 8), None) if isinstance(batched, list) else None
    dec8, item_8 = e2e_get(e2e, "wick-decode-batch8.json")
    wick8 = None
    if isinstance(dec8, dict) and dec8.get("ok"):
        wick8 = max((t["decode_tokens_per_second"] for t in dec8.get("timings", [])), default=None)
    rows.append(row("decode batch 8 (aggregate) vs llama.cpp CUDA (issue 14.3)", ">= 1.2x", "tokens/s", wick=wick8,
                    anchor=b8["speed_tg"] if b8 else None,
                    anchor_engine="llama.cpp CUDA (llama-batched-bench -npp 512 -ntg 128 -npl 8)",
                    device=item_8.get("device") or device, date=item_8.get("date") or date,
                    command="wick bench decode-batch --batch 8 --prompt-tokens 512 --decode-tokens 128 "
                            "(scripts/device/e2e.sh decode); scripts/device/e2e.sh llamacpp",
                    source=" + ".join(x["source"] for x in (item_8, item_b) if x),
                    note=(of.lstrip("; ") or None) if wick8 else "wick batch-8 run missing or failed its check"))
    return rows


def adapter_rows(e2e):
    """Issue 14.1/14.2: `wick bench decode-lora` (adapters vs none, batch 1 and batch N, same call)."""
    rows = []
    # The goal rows take the newer of the default GGUF's run and the run on random weights at its
    # shapes and tensor types (speed does not depend on the weights' values; since session 10 the
    # calls carry the vocabulary only, not the default model).
    dates = {n: (e2e_get(e2e, f"wick-lora-{n}.json")[1].get("date") or "") for n in ("default", "135m-q4_1")}
    goal_name = max(dates, key=lambda n: (dates[n], n == "default"))
    for name, model in (("default", "SmolLM2-135M-Instruct Q4_1 (the default GGUF)"),
                        ("135m-q4_1", "SmolLM2-135M shapes Q4_1 (random weights)"),
                        ("360m-q4_k_m", "SmolLM2-360M shapes Q4_K_M (random weights)"),
                        ("1.7b-q8_0", "SmolLM2-1.7B shapes Q8_0 (random weights)")):
        d, item = e2e_get(e2e, f"wick-lora-{name}.json")
        d = d if isinstance(d, dict) else {}
        b1, bn = d.get("batch1_tokens_per_second") or {}, d.get("batchN_tokens_per_second") or {}
        main = name == goal_name
        meta = {"device": item.get("device"), "date": item.get("date"), "source": item.get("source"),
                "command": f"wick bench decode-lora --model {d.get('model', name)} --rank 16 --batch {d.get('batch', 8)}"}
        rows.append(row(f"decode with a rank-16 all-linear adapter vs without, batch 1, {model}"
                        + (" (issue 14.1)" if main else ""), ">= 0.9x" if main else None, "tokens/s",
                        wick=b1.get("adapter"), anchor=b1.get("none"), anchor_engine="wick without the adapter",
                        **meta))
        rows.append(row(f"decode batch {d.get('batch', 8)} with as many different adapters vs none, {model}"
                        + (" (issue 14.2)" if main else ""), ">= 0.85x" if main else None, "tokens/s",
                        wick=bn.get("adapters"), anchor=bn.get("none"),
                        anchor_engine="wick batch engine without adapters", **meta,
                        note="batch vs alone: %s" % json.dumps(d.get("batch_vs_alone")) if d else None))
    return rows


def serve_rows(e2e):
    """Issue 16.3: wick serve --device cuda, 64 streams over 8 adapters vs the same load on the base
    (e2e.sh serve) and on llama-server (e2e.sh llamaserver), scripts/device/serve_load.py."""
    lora, item_l = e2e_get(e2e, "wick-serve-adapters.json")
    base, item_b = e2e_get(e2e, "wick-serve-base.json")
    (lora_s, item_ls), (ls, item_s) = same_call("wick-serve-adapters.json", "llamaserver-adapters.json")
    lora = lora if isinstance(lora, dict) else {}
    base = base if isinstance(base, dict) else {}
    lora_s = lora_s if isinstance(lora_s, dict) else {}
    ls = ls if isinstance(ls, dict) else {}
    meta = {"device": item_l.get("device"), "date": item_l.get("date"),
            "source": " + ".join(x["source"] for x in (item_l, item_b) if x),
            "command": "scripts/device/e2e.sh serve (wick serve --device cuda --max-batch 8, 8 rank-16 adapters; "
                       "serve_load.py --streams 64 --max-tokens 128, ~125-token prompts, ignore_eos)"}
    ttft = lambda d: "TTFT p50 %s s, p99 %s s, errors %s, alone == under load: %s" % (
        d.get("ttft_p50_s"), d.get("ttft_p99_s"), d.get("errors"),
        all(c.get("equal") for c in d.get("alone_equal", [])) if d else None)
    return [
        row("serve 64 streams over 8 adapters vs the same load on the base model (issue 16.3)", ">= 0.85x",
            "tokens/s", wick=lora.get("decode_tokens_per_s"), anchor=base.get("decode_tokens_per_s"),
            anchor_engine="wick serve, base model, same load", **meta, note=ttft(lora) if lora else None),
        row("serve 64 streams over 8 adapters vs llama-server -np 64 with --lora (issue 16.3)", ">= 2x", "tokens/s",
            wick=lora_s.get("decode_tokens_per_s"), anchor=ls.get("decode_tokens_per_s"),
            anchor_engine="llama-server -np 64, 8 LoRA GGUFs, per-request lora (e2e.sh llamaserver)",
            **{**meta, "date": item_ls.get("date"), "source": item_ls.get("source")},
            note=("wick %s; llama-server %s (same call)" % (ttft(lora_s), ttft(ls))) if ls else
            "not measured: e2e.sh llamaserver not run yet"),
    ]


def pair_meta(item_w, item_l, command):
    """Device, date and sources of a wick result beside its anchor (bundle items of one call)."""
    return {"device": item_w.get("device") or item_l.get("device"), "date": item_w.get("date") or item_l.get("date"),
            "source": " + ".join(x["source"] for x in (item_w, item_l) if x), "command": command}


def engine_rates(dec):
    """(decode, prefill) tokens/s of a `wick bench decode` report: the best engine row of each (the
    1-token prompt's decode is llama-bench tg128's shape)."""
    tg = pp = None
    for r in (dec or {}).get("timings", []) if isinstance(dec, dict) else []:
        if r["path"].startswith("candle"):
            continue
        tg = max(tg or 0, r["decode_tokens_per_second"])
        if r.get("prefill_ms"):
            pp = max(pp or 0, r["prompt_tokens"] / (r["prefill_ms"] / 1e3))
    return tg, pp


def big_decode_rows(e2e):
    """Issue 14.4: SmolLM2-1.7B shapes in three file types, wick vs llama-bench in the same call;
    issue 14.5: HF bf16 directories vs llama.cpp on an F16 GGUF of the same shapes."""
    rows = []
    for t in ("q4_k_m", "q4_1", "q8_0"):
        bench, item_l = e2e_get(e2e, f"llamacpp-big-{t}.json")
        dec, item_w = e2e_get(e2e, f"wick-big-{t}.json")
        pp_l, tg_l = llamacpp_rates(bench if isinstance(bench, list) else None)
        tg, pp = engine_rates(dec)
        # Files of random blocks written directly (make-blocks, session 10 on) or llama-quantize'd (make).
        made = "make-blocks" if item_w.get("source", "").startswith("e2e-s1") else "make"
        meta = pair_meta(item_w, item_l, f"scripts/device/bigger-models.sh {made} && bench (wick bench decode "
                         "--prompt-tokens 512 --decode-tokens 128; llama-bench -p 512 -n 128 -ngl 99 -r 3)")
        note = None
        # Session 11's call 3 ran the 1.7B files also with WICK_DECODE_INT8=all. For Q4_K_M (every
        # tensor a K-quant) that is launch for launch the committed default (Int8Policy::Auto: int8
        # on every K-quant launch), which call 3's default run (a rows cutoff, since replaced) was not.
        alt, item_a = e2e_get(e2e, f"int8all-big-{t}.json")
        if t == "q4_k_m" and isinstance(alt, dict):
            tg_a, _ = engine_rates(alt)
            if tg_a and (tg is None or tg_a > tg):
                tg = tg_a
                note = ("decode: the WICK_DECODE_INT8=all run (int8-activation mat-vecs on every launch = the "
                        "default Int8Policy::Auto for an all-K-quant file); ")
        decode_note = note
        if isinstance(dec, dict) and "max_abs_logit_diff_int8" in dec:
            decode_note = (decode_note or "") + (
                f"steps on int8 activations: logits vs dense f32 Candle {dec['max_abs_logit_diff_int8']:.2f} "
                f"(f32-activation steps {dec['max_abs_logit_diff']:.1e})")
        if isinstance(dec, dict) and "max_abs_logit_diff_tf32" in dec:
            note = (f"prefill products on TF32 tensor cores: logits vs dense f32 Candle "
                    f"{dec['max_abs_logit_diff_tf32']:.1e} (full-f32 runs {dec['max_abs_logit_diff']:.1e})")
        rows.append(row(f"decode SmolLM2-1.7B shapes {t.upper()} vs llama.cpp tg128 (issue 14.4)", ">= 1.2x",
                        "tokens/s", wick=tg, anchor=tg_l, anchor_engine="llama.cpp CUDA (llama-bench tg128)",
                        note=decode_note, **meta))
        rows.append(row(f"prefill 512 SmolLM2-1.7B shapes {t.upper()} vs llama.cpp pp512 (issue 14.4)", ">= 1.2x",
                        "tokens/s", wick=pp, anchor=pp_l, anchor_engine="llama.cpp CUDA (llama-bench pp512)",
                        note=note, **meta))
    for shape, label in (("qwen2.5-0.5b", "Qwen2.5-0.5B (biases)"), ("llama-3.2-1b", "Llama-3.2-1B")):
        bench, item_l = e2e_get(e2e, f"llamacpp-dense-{shape}.json")
        dec, item_w = e2e_get(e2e, f"wick-dense-{shape}.json")
        pp_l, tg_l = llamacpp_rates(bench if isinstance(bench, list) else None)
        tg, pp = engine_rates(dec)
        meta = pair_meta(item_w, item_l, "scripts/device/dense-models.sh make && bench (wick bench decode "
                         "--model HF_DIR --prompt-tokens 512 --decode-tokens 128; llama-bench -m F16.gguf -p 512 "
                         "-n 128 -ngl 99 -r 3)")
        note = None
        if isinstance(dec, dict):
            note = "engine on the directory's bf16 weights (%.0f MB per token), logits vs dense f32 Candle %.1e; " \
                   "prefill 512: wick %s tok/s, llama.cpp pp512 %s tok/s" % (
                       dec.get("weight_mb_per_step", 0), dec.get("max_abs_logit_diff", float("nan")),
                       round(pp) if pp else None, round(pp_l) if pp_l else None)
        rows.append(row(f"decode HF bf16 directory at {label} shapes on the engine vs llama.cpp F16 GGUF (issue 14.5)",
                        ">= 1.0x", "tokens/s", wick=tg, anchor=tg_l, anchor_engine="llama.cpp CUDA (llama-bench tg128, F16 GGUF)",
                        **meta, note=note))
    return rows


def train_shape_rows(e2e):
    """Issue 15.1/15.2: train-shapes.sh at real shapes (random weights), PEFT + Liger in the same call."""
    rows = []
    for name, label, item_no in (("qwen2.5_0.5b", "Qwen2.5-0.5B", "15.1"), ("qwen2.5_1.5b", "Qwen2.5-1.5B", "15.1"),
                                 ("llama3.2_1b", "Llama-3.2-1B", "15.2")):
        w, item_w = e2e_get(e2e, f"wick-train-{name}-2048.json")
        w = w if isinstance(w, dict) and "tokens_per_s" in w else None
        anchors, item_a = e2e_get(e2e, f"anchors-train-{name}.jsonl")
        liger = next((a for a in reversed(anchors if isinstance(anchors, list) else [])
                      if a.get("mode") == "liger" and a.get("status") == "ok"), None)
        meta = {"device": item_w.get("device") or item_a.get("device"), "date": item_w.get("date") or item_a.get("date"),
                "source": " + ".join(x["source"] for x in (item_w, item_a) if x),
                "command": f"scripts/device/train-shapes.sh {name}_config.json 2048 4 10"}
        rows.append(row(f"LoRA training {label} shapes, seq 2048 batch 4, vs PEFT + Liger (issue {item_no})",
                        ">= 1.5x", "tokens/s", wick=w and w["tokens_per_s"], anchor=liger and liger["tokens_per_s"],
                        anchor_engine="PEFT + Liger kernels", **meta))
        in_use = liger and liger.get("device_used_end_gib")
        rows.append(row(f"LoRA training {label} shapes peak device memory vs PEFT + Liger's in use (issue {item_no})",
                        "<= 0.6x", "GiB", wick=gpu_peak(w) if w else None, anchor=in_use,
                        anchor_engine="PEFT + Liger, device memory in use at the end (mem_get_info)", **meta,
                        note=("Liger max_memory_allocated %.2f GiB" % liger["peak_gpu_memory_gib"]) if liger else None))
    rows.extend(qlora_rows(e2e))
    return rows


def qlora_rows(e2e):
    """Issue 15.4: scripts/device/qlora-8b.sh, QLoRA at Llama-3.1-8B shapes (Q4_K_M-like random blocks)
    beside PEFT eager bf16 LoRA in the same call; the longest batch-1 sequence beside PEFT + Liger + GC."""
    rows = []
    anchors, item_a = e2e_get(e2e, "anchors-train-llama3.1_8b.jsonl")
    eager = next((a for a in reversed(anchors if isinstance(anchors, list) else [])
                  if a.get("mode") == "eager" and a.get("status") == "ok"), None)
    modes = [("", "")]
    for name in sorted(e2e):
        # -checkpointed[-N] (--checkpoint-activations / --checkpoint-layers N), -mlp-M
        # (--recompute-mlp-layers M), or both.
        m = re.fullmatch(r"wick-qlora-llama3\.1_8b-2048(-checkpointed(-(\d+))?)?(-mlp-(\d+))?\.json", name)
        if m and (m.group(1) or m.group(4)):
            label = ""
            if m.group(1):
                label = (f", first {m.group(3)} of 32 layers checkpointed" if m.group(3)
                         else ", every layer checkpointed")
            if m.group(4):
                label += f", the MLP of {m.group(5)} {'more ' if m.group(1) else ''}layers recomputed"
            modes.append((name[len("wick-qlora-llama3.1_8b-2048"):-len(".json")], label))
    for suffix, label in modes:
        w, item_w = e2e_get(e2e, f"wick-qlora-llama3.1_8b-2048{suffix}.json")
        w = w if isinstance(w, dict) and "tokens_per_s" in w else None
        meta = {"device": item_w.get("device") or item_a.get("device"),
                "date": item_w.get("date") or item_a.get("date"),
                "source": " + ".join(x["source"] for x in (item_w, item_a) if x),
                "command": "scripts/device/qlora-8b.sh make; qlora-8b.sh wick 2048 2 MODE; qlora-8b.sh anchors eager:2048"}
        rows.append(row(f"LoRA training Llama-3.1-8B shapes, QLoRA on Q4_K/Q6_K blocks{label}, seq 2048 batch 2, "
                        "vs PEFT eager bf16 LoRA (issue 15.4)", ">= 2x", "tokens/s", wick=w and w["tokens_per_s"],
                        anchor=eager and eager["tokens_per_s"], anchor_engine="PEFT + transformers eager, bf16 base",
                        **meta))
        rows.append(row(f"LoRA training Llama-3.1-8B shapes, QLoRA{label}, peak device memory vs PEFT eager's in "
                        "use (issue 15.4)", "<= 0.3x", "GiB", wick=gpu_peak(w) if w else None,
                        anchor=eager and eager.get("device_used_end_gib"),
                        anchor_engine="PEFT eager, device memory in use at the end (mem_get_info)", **meta,
                        note=("PEFT eager max_memory_allocated %.2f GiB" % eager["peak_gpu_memory_gib"])
                        if eager else None))
    # Both sides from one call: the latest bundle holding PEFT's longest-sequence runs.
    longest, peft, item_p = {}, None, {}
    for date, path, doc in reversed(BUNDLES):
        if "anchors-longest-llama3.1_8b.jsonl" in doc["files"]:
            meta = {"source": os.path.relpath(path), "date": date, "device": doc.get("device")}
            peft, item_p = doc["files"]["anchors-longest-llama3.1_8b.jsonl"], meta
            for name, value in doc["files"].items():
                m = re.fullmatch(r"wick-longest-llama3\.1_8b-(\d+)\.json", name)
                if m and isinstance(value, dict) and "tokens_per_s" in value:
                    longest[int(m.group(1))] = meta
            break
    peft_ok = [a["seq_len"] for a in (peft if isinstance(peft, list) else [])
               if a.get("mode") == "liger-gc" and a.get("status") == "ok"]
    # A run that could not start (liger-kernel not installed) says nothing about the length.
    peft_failed = [a["seq_len"] for a in (peft if isinstance(peft, list) else [])
                   if a.get("mode") == "liger-gc" and a.get("status") != "ok"
                   and "ModuleNotFoundError" not in str(a.get("error"))]
    wick_seq = max(longest) if longest else None
    item_w = longest.get(wick_seq, {})
    rows.append(row("Longest sequence that trains at batch 1, Llama-3.1-8B shapes: wick QLoRA (checkpointed) vs "
                    "PEFT + Liger + gradient checkpointing (issue 15.4)", ">= 8x", "tokens",
                    wick=wick_seq, anchor=max(peft_ok) if peft_ok else None,
                    anchor_engine="PEFT + Liger + gradient checkpointing, bf16 base",
                    device=item_w.get("device") or item_p.get("device"), date=item_w.get("date") or item_p.get("date"),
                    source=" + ".join(x["source"] for x in (item_w, item_p) if x),
                    command="scripts/device/qlora-8b.sh longest SEQ...",
                    note=f"tried: wick {sorted(longest)}, PEFT ok {sorted(peft_ok)}, PEFT failed {sorted(peft_failed)}; "
                         "the model's context (max_position_embeddings) is 131072"))
    return rows


def flash_rows(e2e):
    """Issue 15.5: the fused causal attention's TFLOP/s beside PyTorch SDPA on the same shapes, same call
    (benches/flash_attention/run.sh; 16k tokens a call, hidden 2048, causal FLOPs)."""
    lines, item = e2e_get(e2e, "flash-attention.jsonl")
    lines = lines if isinstance(lines, list) else []
    meta = {"device": item.get("device"), "date": item.get("date"), "source": item.get("source"),
            "command": "bash benches/flash_attention/run.sh (fa_bench, then benches/flash_attention/sdpa.py)"}
    checks = [l for l in lines if l.get("check")]
    rows = [row("flash attention: forward/backward vs f64 on odd shapes (issue 15.5; also gpu-check "
                "trn_flash_attention*)", None, "-", **meta,
                note=f"{sum(1 for c in checks if c.get('ok'))}/{len(checks)} shapes within tolerance" if checks
                else "not measured")]
    ours = {(l["S"], l["hd"], l["G"]): l for l in lines if l.get("bench") == "wick_flash"}
    sdpa = {(l["S"], l["hd"], l["G"]): l for l in lines if l.get("bench") == "torch_sdpa"}
    for key in sorted(ours):
        seq, hd, groups = key
        for pass_ in ("fwd", "bwd"):
            w, a = ours[key].get(f"{pass_}_tflops"), sdpa.get(key, {}).get(f"{pass_}_tflops")
            rows.append(row(f"flash attention {pass_} TFLOP/s, causal, seq {seq}, hd {hd}"
                            + (f", GQA {groups}" if groups > 1 else "") + " vs PyTorch SDPA (issue 15.5 table)",
                            None, "TFLOP/s", wick=w, anchor=a, anchor_engine="torch SDPA (flash backend)", **meta))
    return rows


def gpu_peak(record):
    for key, value in record.items():
        if isinstance(value, (int, float)) and re.search(r"peak", key) and re.search(r"gpu|device|cuda|vram", key):
            return float(value) / (2**30 if "bytes" in key else 1024 if key.endswith("mib") else 1)
    return None


def train_rows(e2e):
    rows = []
    anchors, item_a = [], {}
    same_device = {"ok": True}

    def anchor(mode, seq):
        # A ratio only between figures of one device (the anchors of an older call on another GPU
        # would make it meaningless).
        if not same_device["ok"]:
            return None
        return next((a for a in reversed(anchors) if a.get("mode") == mode and a.get("seq_len") == seq
                     and a.get("status") == "ok"), None)

    for seq in (512, 2048):
        # train-shapes.sh at the 135M shapes (random weights) or e2e.sh train (the GGUF): the later.
        pairs = [(f"wick-train-smollm2_135m-{seq}.json", "anchors-train-smollm2_135m.jsonl"),
                 (f"wick-train-{seq}.json", "anchors-train.jsonl")]
        name_w, name_a = max(pairs, key=lambda pr: (e2e.get(pr[0]) or {}).get("date") or "")
        anchors, item_a = e2e_get(e2e, name_a)
        anchors = anchors if isinstance(anchors, list) else []
        w, item_w = e2e_get(e2e, name_w)
        same_device["ok"] = not (item_w and item_a) or item_w.get("device") == item_a.get("device")
        w = w if isinstance(w, dict) and "tokens_per_s" in w else None
        wick_tps = w["tokens_per_s"] if w else None
        warm = None
        if w and w.get("step_seconds") is not None:
            n_warm = len(w["step_seconds"]) - w.get("timed_steps", 0)
            warm = sum(w["step_seconds"][:n_warm])
        peak = gpu_peak(w) if w else None
        device = item_w.get("device") or item_a.get("device")
        date = item_w.get("date") or item_a.get("date")
        cmd_w = (f"wick bench train --device cuda --seq-len {seq} --batch-size 8 --rank 16 --warmup-steps 3 "
                 + ("--steps 10 on the 135M shapes, random weights (scripts/device/train-shapes.sh "
                    f"smollm2_135m_config.json {seq} 8 10 reduce-overhead)" if "smollm2_135m" in name_w
                    else "--steps 20 (scripts/device/e2e.sh train)"))
        src = " + ".join(x["source"] for x in (item_w, item_a) if x)

        def cmd(mode):
            a = anchor(mode, seq)
            return f"{cmd_w}; benches/anchors/train_peft.py {a['command'] if a and a.get('command') else '--one ' + mode}"

        ro, liger = anchor("reduce-overhead", seq), anchor("liger", seq)
        if seq == 512:
            rows.append(row("LoRA training seq 512 vs PEFT torch.compile reduce-overhead (issue 15.3)", ">= 1.4x",
                            "tokens/s", wick=wick_tps, anchor=ro and ro["tokens_per_s"],
                            anchor_engine="PEFT + torch.compile(mode='reduce-overhead')", device=device,
                            date=date, command=cmd("reduce-overhead"), source=src,
                            note="anchor warm-up %s s" % (round(ro["warmup_s"], 1) if ro else "?")))
            rows.append(row("LoRA training warm-up (3 untimed steps), seq 512", "<= 10", "s", wick=warm,
                            anchor=ro and ro["warmup_s"],
                            anchor_engine="PEFT + torch.compile reduce-overhead warm-up", device=device,
                            date=date, command=cmd("reduce-overhead"), source=src))
            limit = liger and liger.get("peak_gpu_memory_gib")
            rows.append(row("LoRA training peak GPU memory, seq 512, vs PEFT + Liger",
                            f"<= {limit:.2f}" if limit else "<= 4.1", "GiB", wick=peak, anchor=limit,
                            anchor_engine="PEFT + Liger kernels, torch.cuda.max_memory_allocated",
                            device=device, date=date, command=cmd("liger"), source=src,
                            note=("wick: cuMemGetInfo total - free, polled (context and pool included); "
                                  "anchor: max_memory_allocated; the anchor's total - free at its end: "
                                  f"{liger.get('device_used_end_gib')} GiB") if limit else
                            "Liger not measured: goal from ANCHORS.md (~4.1 GiB)"))
        for mode, label in (("eager", "PEFT eager"), ("compile", "PEFT torch.compile default"),
                            ("reduce-overhead", "PEFT torch.compile reduce-overhead"),
                            ("liger", "PEFT + Liger")):
            if seq == 512 and mode == "reduce-overhead":
                continue
            a = anchor(mode, seq)
            goal = ">= 1.2x" if (seq, mode) == (2048, "reduce-overhead") else None
            figure = f"LoRA training seq {seq} vs {label}" + (" (issue 15.3)" if goal else "")
            rows.append(row(figure, goal, "tokens/s", wick=wick_tps,
                            anchor=a and a["tokens_per_s"], anchor_engine=label, device=device, date=date,
                            command=cmd(mode), source=src,
                            note=(f"anchor warm-up {a['warmup_s']:.1f} s, peak {a['peak_gpu_memory_gib']:.2f} GiB; "
                                  f"wick warm-up {warm if warm is None else round(warm, 1)} s, peak "
                                  f"{peak if peak is None else round(peak, 2)} GiB") if a else None))
    return rows


def embed_rows(e2e):
    rows = []
    st, item_s = e2e_get(e2e, "anchors-embed.json")
    for dtype, st_dtype in (("f32", "fp32"), ("f16", "fp16")):
        w, item_w = e2e_get(e2e, f"wick-embed-{dtype}.json")
        for batch in (256, 32, 1):
            wr = next((r["texts_per_s"] for r in (w or {}).get("results", []) if r["batch_size"] == batch), None)
            ar = next((r["texts_per_s"] for r in (st or {}).get("results", [])
                       if r["batch_size"] == batch and r["dtype"] == st_dtype), None)
            rows.append(row(f"embeddings all-MiniLM-L6-v2 {st_dtype}, batch {batch}, vs sentence-transformers",
                            ">= 1.5x" if batch == 256 else None, "texts/s", wick=wr, anchor=ar,
                            anchor_engine=f"sentence-transformers {st_dtype}" + (f" ({st['engine']})" if st else ""),
                            device=item_w.get("device") or item_s.get("device"),
                            date=item_w.get("date") or item_s.get("date"),
                            command=(f"wick bench embed --device cuda --dtype {dtype} --batch-sizes 1,32,256 "
                                     "--texts 1024; benches/anchors/embed_st.py --dtypes fp32,fp16 (scripts/device/e2e.sh embed)"),
                            source=" + ".join(x["source"] for x in (item_w, item_s) if x),
                            note="random weights with the model's shapes and real tokenizer (scripts/device/random_weights.py)"))
    return rows


def coldstart_rows(e2e):
    runs, item = e2e_get(e2e, "coldstart.jsonl")
    runs = runs if isinstance(runs, list) else []
    warm = [r["first_token_s"] for r in runs if r.get("jit_cache") == "warm" and r.get("first_token_s")]
    cold = [r["first_token_s"] for r in runs if r.get("jit_cache") == "cold" and r.get("first_token_s")]
    meta = {"device": item.get("device"), "date": item.get("date"), "source": item.get("source"),
            "command": "wick generate --device cuda --raw --max-tokens 8, fresh process, CUDA_CACHE_PATH "
                       "empty then warm (scripts/device/e2e.sh coldstart)"}
    return [
        row("warm start: first token after the model file is opened (JIT cache present)", "<= 1", "s",
            wick=statistics.median(warm) if warm else None, **meta),
        row("cold start: first token with an empty CUDA JIT cache", None, "s",
            wick=cold[0] if cold else None, anchor_engine=None, **meta,
            note="to be stated in the README"),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", default=["bench/results"])
    p.add_argument("--out", default="bench/results/gpu-summary.json")
    args = p.parse_args()
    e2e, docs = gather(args.paths)
    rows = (matmul_rows(docs) + decode_rows(e2e) + adapter_rows(e2e) + serve_rows(e2e) + big_decode_rows(e2e) + train_rows(e2e)
            + train_shape_rows(e2e) + flash_rows(e2e) + embed_rows(e2e) + coldstart_rows(e2e))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    for r in rows:
        if r["goal"] is None and r["status"] != "measured":
            continue
        fmt = lambda v: "-" if v is None else f"{v:.3g}"
        print(f"{'MET ' if r['met'] else 'miss' if r['met'] is False else '  - '} {r['goal'] or '':>9} "
              f"wick {fmt(r['wick']):>8} anchor {fmt(r['anchor']):>8} ratio {fmt(r['ratio']):>6} "
              f"{r['unit']:<9} {r['figure']}")
    sys.stdout.flush()
    print(f"wrote {args.out}: {len(rows)} rows, {sum(r['goal'] is not None for r in rows)} goals, "
          f"{sum(r['met'] is True for r in rows)} met", file=sys.stderr)


if __name__ == "__main__":
    main()
