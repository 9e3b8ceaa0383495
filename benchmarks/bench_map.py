"""Benchmark `openchat data map`'s stages on generated conversations: the TF-IDF + SVD embedding
pass, k-means, and UMAP fitted on a sample (--fit-limit) with the rest placed by `transform`
against UMAP fitted on every point (what `data map` does up to its --fit-limit, 200k).

    python benchmarks/bench_map.py --full                # 50k conversations, both UMAP ways (~7 min)
    python benchmarks/bench_map.py --n 20000 --full

Measured on 2 cores shared with other jobs (50k, 780 characters each): TF-IDF + SVD 76 s (657
conv/s); UMAP fitted on a 10k sample + transform of the rest 145 s; UMAP fitted on all 50k 68 s
(0.47x): so `data map` fits on every point by default (~2.5 min for 50k, plus a one-off 10-60 s
of numba compilation on a machine's first run, cached afterwards).

Prints conversations per second for each stage and the ratios side by side (absolute numbers
move with the machine's load; the ratios are what to compare).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [[f"{t}{i}" for i in range(40)] for t in ("code", "cook", "trip", "math", "poem", "law", "med", "game")]
COMMON = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "for",
    "on",
    "with",
    "as",
    "are",
    "this",
    "be",
]


def conversations(n: int, seed: int = 0) -> list[str]:
    """Texts with a topic vocabulary each (so clusters exist) and shared filler words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        words = [rng.choice(topic) if rng.random() < 0.4 else rng.choice(COMMON) for _ in range(rng.randint(30, 300))]
        out.append(" ".join(words))
    return out


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="conversations")
    parser.add_argument("--fit-limit", type=int, default=10_000, help="UMAP fit sample (as data map --fit-limit)")
    parser.add_argument("--full", action="store_true", help="also fit UMAP on every point (slow past ~20k)")
    parser.add_argument("--clusters", type=int, default=12)
    args = parser.parse_args()

    import numpy as np

    from openchat_cli.data.embed import tfidf_svd
    from openchat_cli.data.map import layout

    texts = conversations(args.n)
    emb, t_embed = timed(tfidf_svd, texts, dims=64)
    # Warm numba's compiled functions once on a small set, so the timings below are steady-state
    # (a first run on a machine also pays ~10-60 s of one-off JIT compilation, cached afterwards).
    timed(layout, emb[:600], clusters=args.clusters, fit_limit=args.fit_limit)
    timed(layout, emb[:600], clusters=args.clusters, fit_limit=300)  # the transform path too
    _, t_sampled = timed(layout, emb, clusters=args.clusters, fit_limit=args.fit_limit)
    rows = [
        ("TF-IDF + SVD embedding", t_embed),
        (f"UMAP fit on {min(args.n, args.fit_limit):,} + transform, k-means", t_sampled),
    ]
    if args.full and args.n > args.fit_limit:
        _, t_full = timed(layout, emb, clusters=args.clusters, fit_limit=args.n)
        rows.append((f"UMAP fit on all {args.n:,}, k-means", t_full))
    total = t_embed + t_sampled
    print(f"\n{args.n:,} conversations, {np.mean([len(t) for t in texts]):.0f} characters on average")
    print(f"{'stage':<48}{'seconds':>10}{'conv/s':>10}{'x sampled':>12}")
    for name, seconds in rows:
        print(f"{name:<48}{seconds:>10.1f}{args.n / seconds:>10.0f}{seconds / t_sampled:>12.2f}")
    print(f"{'embedding + sampled layout':<48}{total:>10.1f}{args.n / total:>10.0f}")
    if args.full and args.n > args.fit_limit:
        print(
            f"{'embedding + full layout (data map default)':<48}{t_embed + t_full:>10.1f}"
            f"{args.n / (t_embed + t_full):>10.0f}"
        )


if __name__ == "__main__":
    main()
