"""`eval score` throughput: conversations scored per second, one at a time vs padded batches.

Scores the same conversations (lengths drawn like chat answers: many short, a long tail) with a
random reward model of the `small` quickstart size (a Llama sequence-classification model) through
`openchat_cli.eval.reward_score.score_sequences` at each batch size, and prints conversations/s,
the ratio to batch size 1, and the largest score difference from batch size 1 (the batched scores
must equal the unbatched ones; the test checks 1e-5). The batch sizes take turns for `--repeats`
rounds and each keeps its fastest round, so load from other processes hits them alike.

    python benchmarks/bench_reward_score.py [--conversations 256] [--batch-sizes 1,8,32] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reward_model(size: str):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from openchat_cli.model.tiny import SIZES

    s = SIZES[size]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=s.max_positions,
        num_labels=1,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config).eval(), s.vocab_size


def conversations(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Token ids of lengths like chat exchanges (log-normal, 16 to 1024 tokens)."""
    rng = random.Random(seed)
    lengths = [min(1024, max(16, int(rng.lognormvariate(5.0, 0.8)))) for _ in range(n)]
    return [[rng.randrange(1, vocab) for _ in range(length)] for length in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from openchat_cli.eval.reward_score import score_sequences

    model, vocab = reward_model(args.size)
    seqs = conversations(args.conversations, vocab)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    best = {b: float("inf") for b in sizes}
    scores: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        for batch_size in sizes:
            start = time.perf_counter()
            scores[batch_size] = score_sequences(model, seqs, batch_size)
            best[batch_size] = min(best[batch_size], time.perf_counter() - start)
    reference = scores[sizes[0]]
    results = [
        {
            "batch_size": b,
            "conversations_per_s": len(seqs) / best[b],
            "max_abs_diff_vs_first": max(abs(x - y) for x, y in zip(scores[b], reference)),
        }
        for b in sizes
    ]
    base = results[0]["conversations_per_s"]
    for r in results:
        r["ratio"] = r["conversations_per_s"] / base
    if args.json:
        print(json.dumps({"conversations": len(seqs), "tokens": sum(map(len, seqs)), "results": results}))
        return
    print(f"{len(seqs)} conversations, {sum(map(len, seqs)):,} tokens, model size {args.size}")
    for r in results:
        print(
            f"batch {r['batch_size']:>3}: {r['conversations_per_s']:8.1f} conversations/s  "
            f"x{r['ratio']:.2f}  max |score diff| vs batch {sizes[0]}: {r['max_abs_diff_vs_first']:.2e}"
        )


if __name__ == "__main__":
    main()
