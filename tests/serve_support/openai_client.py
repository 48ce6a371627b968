"""Drives `wick serve` with the real `openai` Python client (PyPI), for tests/serve_openai.rs.

Usage: openai_client.py BASE_URL API_KEY COMMAND JSON_ARGS
Prints one JSON object on stdout with what the Rust test checks. Every call is greedy
(temperature 0) so outputs can be compared with `wick generate`.
"""

import concurrent.futures
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import openai


def client(base, key, retries=0):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=retries, timeout=120)


def stream_chat(c, model, content, max_tokens):
    """A streamed chat completion: the concatenated deltas, the finish reason and the chunk count."""
    stream = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, chunks, usage, first = "", None, 0, None, None
    started = time.time()
    for chunk in stream:
        chunks += 1
        if first is None and any(ch.delta.content for ch in chunk.choices):
            first = time.time() - started
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": text, "finish": finish, "chunks": chunks, "completion_tokens": usage,
            "ttft": first, "seconds": time.time() - started}


def raw_post(base, key, path, body, headers=None):
    """POST raw bytes; (status, body text, headers: case-insensitive .get)."""
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    req = urllib.request.Request(base + path, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.read().decode()


def metric(base, name):
    """A value of /metrics by its full name (labels included), 0 when absent."""
    values = {}
    for line in get(base, "/metrics").splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values.get(name, 0.0)


def outcome(base, which):
    return metric(base, 'wick_requests_total{outcome="%s"}' % which)


def wait_for(predicate, what, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + what)


def basics(base, key, args):
    c = client(base, key)
    out = {}
    out["chat"] = stream_chat(c, args["chat_model"], args["chat"], args["max_tokens"])
    comp = c.completions.create(
        model=args["completion_model"], prompt=args["prompt"], max_tokens=args["max_tokens"],
        temperature=0, logprobs=2,
    )
    out["completion"] = {
        "text": comp.choices[0].text,
        "finish": comp.choices[0].finish_reason,
        "completion_tokens": comp.usage.completion_tokens,
        "logprob_tokens": len(comp.choices[0].logprobs.token_logprobs),
        "top_len": len(comp.choices[0].logprobs.top_logprobs[0]),
    }
    chat = c.chat.completions.create(
        model="base", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": args["chat"]},
                                {"role": "assistant", "content": "Paris."},
                                {"role": "user", "content": "And of Italy?"}],
        max_tokens=args["max_tokens"], temperature=0, logprobs=True, top_logprobs=3,
    )
    lp = chat.choices[0].logprobs.content
    out["multi_turn"] = {"text": chat.choices[0].message.content, "logprobs": len(lp),
                         "top": len(lp[0].top_logprobs), "first_logprob": lp[0].logprob}
    emb = c.embeddings.create(model=args["embed_model"], input=["a cat sat", "the dog ran"])
    out["embeddings"] = [len(d.embedding) for d in emb.data]
    out["embedding_norm"] = sum(x * x for x in emb.data[0].embedding) ** 0.5
    out["models"] = sorted(m.id for m in c.models.list().data)
    return out


def errors(base, key, args):
    c = client(base, key)
    out = {}
    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        out["unknown_model"] = None
    except openai.NotFoundError as e:
        out["unknown_model"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
    status, body, _ = raw_post(base, key, "/v1/chat/completions", b'{"model": "base", "messages": [')
    out["bad_json"] = [status, json.loads(body)["error"]["type"]]
    try:
        c.completions.create(model="base", prompt="hi", max_tokens=10_000_000)
        out["too_many_tokens"] = None
    except openai.BadRequestError as e:
        out["too_many_tokens"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
    try:
        c.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], n=2)
        out["n2"] = None
    except openai.BadRequestError as e:
        out["n2"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
    try:
        client(base, "wrong-key").models.list()
        out["wrong_key"] = None
    except openai.AuthenticationError as e:
        out["wrong_key"] = e.status_code
    status, _, _ = raw_post(base, None, "/v1/completions", b'{"model": "base", "prompt": "hi"}')
    out["no_key"] = status
    # Odd input must not crash the server: nonsense types, huge numbers, deep nesting.
    for body in [b'[]', b'null', b'{"model": 5}', b'{"model": "base", "messages": "x"}',
                 b'{"model": "base", "prompt": "x", "max_tokens": 1e300}',
                 b'{"model": "base", "prompt": "x", "temperature": "hot"}',
                 b'[' * 10000, '{"model": "base", "prompt": "\xff\ud800"}'.encode("utf-8", "surrogatepass")]:
        status, _, _ = raw_post(base, key, "/v1/completions", body)
        out.setdefault("odd_statuses", []).append(status)
    out["health"] = get(base, "/health")
    # Load and unload at run time (vLLM's endpoints), then use the loaded one.
    status, _, _ = raw_post(base, key, "/v1/load_lora_adapter",
                            json.dumps({"lora_name": "late", "lora_path": args["late_path"]}).encode())
    out["load"] = status
    out["late"] = c.completions.create(model="late", prompt="Hello", max_tokens=4, temperature=0).choices[0].text
    out["evictions"] = metric(base, "wick_adapter_evictions_total")
    status, _, _ = raw_post(base, key, "/v1/unload_lora_adapter", json.dumps({"lora_name": "late"}).encode())
    out["unload"] = status
    status, _, _ = raw_post(base, key, "/v1/unload_lora_adapter", json.dumps({"lora_name": "late"}).encode())
    out["unload_again"] = status
    # A client that leaves mid-stream frees its slot.
    before = outcome(base, "cancelled")
    stream = c.chat.completions.create(model=args["chat_model"], messages=[{"role": "user", "content": "Tell me a long story."}],
                                       max_tokens=2000, temperature=0, stream=True, extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i >= 3:
            break
    stream.close()
    wait_for(lambda: outcome(base, "cancelled") >= before + 1, "the cancelled outcome")
    wait_for(lambda: metric(base, "wick_running_sequences") == 0, "an empty batch")
    out["cancelled"] = outcome(base, "cancelled") - before
    # Chat requests on one model share the chat template's system prompt: read once, then reused.
    out["prefix_cached"] = metric(base, "wick_prefix_cache_tokens_total")
    return out


def queue_full(base, key, args):
    """Server started with --max-batch 1 --max-queue 1: one running, one queued, the third gets 429."""
    c = client(base, key)
    long = dict(model="base", messages=[{"role": "user", "content": "Count to one thousand."}],
                max_tokens=3000, temperature=0, stream=True, extra_body={"ignore_eos": True})
    first = c.chat.completions.create(**long)
    next(iter(first))
    wait_for(lambda: metric(base, "wick_running_sequences") == 1, "the first request running")
    # The second waits in the queue behind the first (a daemon thread: it must not hold the exit).
    second = threading.Thread(target=lambda: c.chat.completions.create(**dict(long, stream=False, max_tokens=3)),
                              daemon=True)
    second.start()
    wait_for(lambda: metric(base, "wick_queue_depth") == 1, "the second request queued")
    out = {}
    status, body, headers = raw_post(base, key, "/v1/chat/completions",
                                     json.dumps(dict(long, stream=False, max_tokens=2)).encode())
    out["third"] = [status, headers.get("Retry-After")]
    out["rejected"] = metric(base, 'wick_requests_total{outcome="rejected"}')
    first.close()
    second.join(timeout=60)
    out["second_done"] = not second.is_alive()
    return out


def context_limit(base, key, args):
    """Server started with --max-context N: a request that fits gets its tokens, one whose prompt plus
    max_tokens exceeds N gets 400 naming max_tokens."""
    c = client(base, key)
    out = {}
    fits = c.completions.create(model="base", prompt="Hello", max_tokens=args["fits"], temperature=0,
                                extra_body={"ignore_eos": True})
    out["fits_tokens"] = fits.usage.completion_tokens if fits.usage else None
    try:
        c.completions.create(model="base", prompt="Hello", max_tokens=args["too_many"], temperature=0)
        out["too_many"] = None
    except openai.APIStatusError as e:
        out["too_many"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]
    return out


def load_adapter(base, key, args):
    status, body, _ = raw_post(base, key, "/v1/load_lora_adapter",
                               json.dumps({"lora_name": args["name"], "lora_path": args["path"]}).encode())
    return {"status": status, "body": body}


def load(base, key, args):
    """32 concurrent streaming clients across the adapters; references from single requests first."""
    c = client(base, key, retries=0)
    combos = [(m, p) for m in args["models"] for p in args["prompts"]]
    refs = {}
    for m, p in combos:
        refs[(m, p)] = stream_chat(c, m, p, args["max_tokens"])["text"]
    jobs = [combos[i % len(combos)] for i in range(args["clients"])]
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(stream_chat, c, m, p, args["max_tokens"]) for m, p in jobs]
        results, timings = [], []
        for f in futures:
            try:
                r = f.result()
                results.append(r["text"])
                timings.append(r)
            except Exception as e:  # counted, not raised: the test reports every error
                results.append({"error": repr(e)})
    elapsed = time.time() - started
    ttfts = sorted(t["ttft"] for t in timings if t["ttft"] is not None)
    tokens = sum(t["completion_tokens"] or 0 for t in timings)

    def pct(q):
        return ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] if ttfts else None
    errors = [r for r in results if isinstance(r, dict)]
    mismatches = [[j[0], j[1], r, refs[j]] for j, r in zip(jobs, results)
                  if not isinstance(r, dict) and r != refs[j]]
    distinct = len(set(refs.values()))
    return {"errors": errors, "mismatches": mismatches, "clients": len(jobs), "seconds": elapsed,
            "tokens": tokens, "tokens_per_second": tokens / elapsed, "ttft_p50": pct(0.5), "ttft_p99": pct(0.99),
            "distinct_references": distinct, "references": [[m, p, t] for (m, p), t in refs.items()]}


if __name__ == "__main__":
    base, key, command, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    result = {"basics": basics, "errors": errors, "queue_full": queue_full, "load": load,
              "load_adapter": load_adapter, "context_limit": context_limit}[command](base, key, args)
    print(json.dumps(result))
