#!/usr/bin/env python3
"""sentence-transformers side of `wick bench embed`: texts/s per batch size on the same texts
(tests/fixtures/embed/search_corpus.txt, cycled to --texts), each pass one `encode` call at that
batch size, median of --repeats passes after one warm-up, and peak RSS (ru_maxrss). Writes JSON that
`wick bench embed --peer FILE` sets beside its own numbers.

Needs torch and sentence-transformers (made with torch 2.15 CPU, sentence-transformers 6.2.0):
    $PYTHON scripts/bench_embed_st.py --model DIR --device cpu --threads 2 --out peer.json
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="sentence-transformers model directory")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(os.path.join(HERE, "..", "tests", "fixtures", "embed", "search_corpus.txt"), encoding="utf-8") as f:
        corpus = [l.rstrip("\n") for l in f if l.strip()]
    texts = [corpus[i % len(corpus)] for i in range(args.texts)]
    model = SentenceTransformer(args.model, device=args.device)
    model.eval()

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    results = []
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
        print(f"sentence-transformers batch {batch:>4}: {statistics.median(rates):9.1f} texts/s", file=sys.stderr)
        results.append({"batch_size": batch, "texts_per_s": statistics.median(rates), "passes_texts_per_s": rates})
    out = {
        "engine": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "command": " ".join(["scripts/bench_embed_st.py"] + sys.argv[1:]),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "results": results,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_average_after": os.getloadavg()[0],
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
