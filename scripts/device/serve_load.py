#!/usr/bin/env python3
"""A bounded streaming load on an OpenAI-compatible server (wick serve, llama-server): STREAMS
concurrent streamed /v1/completions (greedy, `ignore_eos`, MAX_TOKENS new tokens each) spread over
MODELS round-robin, all started at once. Prints and writes JSON: aggregate decode tokens/s (completion
tokens of all streams / wall time from the first request to the last token), time to first token
(p50, p99), errors; then CHECK of the requests again one at a time, whose texts must equal what they
gave under load (greedy output does not depend on the batch).

    python3 serve_load.py URL --models a0,a1 [--streams 64] [--prompt-words 120] [--max-tokens 128]
                          [--check 4] [--lora-field] [--out FILE]
--lora-field: llama-server's form, every request to model "base" with `"lora": [{"id": i, "scale": 1}]`
for the i-th model name instead of naming the adapter as the model.
Standard library only (urllib + threads): the GPU machine has no network for pip.
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

WORDS = ("the of and to in is was for on that with as by at from his it an were are which this be "
         "or has had first one their its new after but who not they have her she two been other when "
         "there all during into school time may years more most only over city some world would where "
         "later up such used many can state about national out known university united then made").split()


def prompt(i, words):
    return f"Story {i}: " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words))


def body(args, i, model_index, stream):
    b = {
        "prompt": prompt(i, args.prompt_words),
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        b["stream_options"] = {"include_usage": True}
    name = args.models[model_index]
    if args.lora_field:
        b["model"] = "base"
        if name != "base":
            b["lora"] = [{"id": model_index, "scale": 1.0}]
    else:
        b["model"] = name
    return b


def post(url, payload, timeout):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def run_stream(args, i, out, barrier):
    mi = i % len(args.models)
    rec = {"stream": i, "model": args.models[mi], "text": "", "tokens": 0, "error": None}
    barrier.wait()
    t0 = time.perf_counter()
    try:
        with post(args.url, body(args, i, mi, True), 600) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for c in chunk.get("choices", []):
                    if c.get("text"):
                        if "ttft" not in rec:
                            rec["ttft"] = time.perf_counter() - t0
                        rec["text"] += c["text"]
                usage = chunk.get("usage")
                if usage:
                    rec["tokens"] = usage.get("completion_tokens", 0)
                    rec["prompt_tokens"] = usage.get("prompt_tokens", 0)
    except Exception as e:  # every failure is counted and reported, never dropped
        rec["error"] = repr(e)
    rec["end"] = time.perf_counter()
    out[i] = rec


def alone(args, i):
    mi = i % len(args.models)
    with post(args.url, body(args, i, mi, False), 600) as r:
        return json.loads(r.read())["choices"][0]["text"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--models", required=True, type=lambda s: s.split(","))
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=120)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--check", type=int, default=4)
    p.add_argument("--lora-field", action="store_true")
    p.add_argument("--label", default="")
    p.add_argument("--out")
    args = p.parse_args()
    out = [None] * args.streams
    barrier = threading.Barrier(args.streams + 1)
    threads = [threading.Thread(target=run_stream, args=(args, i, out, barrier)) for i in range(args.streams)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in out) - start
    errors = [r for r in out if r["error"]]
    tokens = sum(r["tokens"] for r in out)
    ttft = sorted(r["ttft"] for r in out if "ttft" in r)
    q = lambda f: ttft[min(len(ttft) - 1, int(f * len(ttft)))] if ttft else None
    checks = []
    for i in range(min(args.check, args.streams)):
        try:
            text = alone(args, i)
            checks.append({"stream": i, "model": out[i]["model"], "equal": text == out[i]["text"]})
        except Exception as e:
            checks.append({"stream": i, "error": repr(e), "equal": False})
    result = {
        "label": args.label,
        "url": args.url,
        "models": args.models,
        "streams": args.streams,
        "max_tokens": args.max_tokens,
        "prompt_tokens_median": statistics.median(r.get("prompt_tokens", 0) for r in out),
        "completion_tokens": tokens,
        "wall_s": wall,
        "decode_tokens_per_s": tokens / wall if wall > 0 else None,
        "ttft_p50_s": q(0.5),
        "ttft_p99_s": q(0.99),
        "errors": len(errors),
        "first_error": errors[0]["error"] if errors else None,
        "short_streams": sum(1 for r in out if not r["error"] and r["tokens"] != args.max_tokens),
        "alone_equal": checks,
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
