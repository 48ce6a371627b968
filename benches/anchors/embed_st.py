#!/usr/bin/env python3
"""sentence-transformers anchor for `wick bench embed` on the GPU (issue 8): texts/s of
all-MiniLM-L6-v2 per batch size and precision, on the texts wick embeds (the 250 lines of
tests/fixtures/embed/search_corpus.txt, cycled to --texts). Each pass is one `encode` call over all
texts at that batch size (sentence-transformers sorts by length and pads per batch, as wick does),
embeddings copied to the host; the median of --repeats passes after one warm-up is reported.
fp16 is the model cast with .half(), as `SentenceTransformer(..., model_kwargs={"torch_dtype": ...})`
or `.half()` gives a user.

Needs torch with CUDA and sentence-transformers.
    python3 embed_st.py --model DIR --out FILE.json [--dtypes fp32,fp16] [--batch-sizes 1,32,256]
Writes {"engine", "command", "device", "date", "results": [{dtype, batch_size, texts_per_s, ...}]}.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "tests", "fixtures", "embed", "search_corpus.txt")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="sentence-transformers model directory")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp32,fp16")
    p.add_argument("--batch-sizes", default="1,32,256")
    p.add_argument("--texts", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    with open(CORPUS, encoding="utf-8") as f:
        corpus = [line.rstrip("\n") for line in f if line.strip()]
    texts = [corpus[i % len(corpus)] for i in range(args.texts)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    results = []
    for dtype in args.dtypes.split(","):
        model = SentenceTransformer(args.model, device=args.device)
        if dtype == "fp16":
            model = model.half()
        elif dtype == "bf16":
            model = model.bfloat16()
        elif dtype != "fp32":
            sys.exit(f"--dtypes: {dtype!r} is not fp32, fp16 or bf16")
        model.eval()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            with torch.inference_mode():
                model.encode(texts[: max(batch, 8)], batch_size=batch)
                sync()
                rates = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model.encode(texts, batch_size=batch, convert_to_numpy=True)
                    sync()
                    rates.append(len(texts) / (time.perf_counter() - start))
            rates.sort()
            rate = statistics.median(rates)
            print(f"sentence-transformers {dtype} batch {batch:>4}: {rate:9.1f} texts/s", file=sys.stderr)
            results.append({"dtype": dtype, "batch_size": batch, "texts_per_s": rate,
                            "passes_texts_per_s": rates})
        if args.device.startswith("cuda"):
            results[-1]["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del model
    out = {
        "benchmark": "embed",
        "engine": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "command": " ".join(["benches/anchors/embed_st.py"] + sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": os.path.abspath(args.model),
        "texts_per_pass": len(texts),
        "repeats": args.repeats,
        "results": results,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
