"""Benchmark `serve --quantize`: weight memory, decode tokens/s and greedy agreement vs float32.

Loads the same model once per method into the serve engine (in this process, one at a time) and
runs the same fixed prompts greedily at concurrency 1 and N: prints weight MiB, tok/s and their
ratios to float32 side by side, and how often the quantized replies equal float32's (whole reply,
and the share of tokens before the first difference).

    python benchmarks/bench_serve.py --save-model /tmp/m40 --size 40m  # once: a 40M random model
    python benchmarks/bench_quantize.py --model /tmp/m40
    python benchmarks/bench_quantize.py --size tiny --max-tokens 16       # quick

Numbers depend on the machine and what else runs on it: compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "What color is the sky?",
    "Name three colors.",
    "Hello! How can I help you today?",
    "def add(a, b):",
    "The quick brown fox jumps over",
    "What is 12 plus 7?",
    "Write a short poem about the sea.",
    "In mathematics, a prime number is",
    "Tell me a story about a dog.",
    "Translate 'good morning'.",
    "Why is the sea salty?",
    "List the planets.",
    "How do I sort a list in Python?",
    "What is the capital of France?",
    "Explain gravity simply.",
    "Give me a recipe for bread.",
]


async def _run(engine, prompts: list[list[int]], max_tokens: int, concurrency: int) -> tuple[list[list[int]], float]:
    from openchat_cli.serve.engines.base import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    replies: list[list[int]] = [[] for _ in prompts]
    queue = list(range(len(prompts)))

    async def worker() -> None:
        while queue:
            i = queue.pop(0)
            async for event in engine.generate(prompts[i], params, f"b{i}"):
                replies[i].extend(event.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies, sum(len(r) for r in replies) / (time.perf_counter() - start)


def measure(model: Path, method: str, prompts: list[list[int]], max_tokens: int, levels: list[int]) -> dict:
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model, tokenizer=load_tokenizer(model), quantize=method, max_batch_size=64)

    async def go() -> dict:
        await engine.start()
        try:
            out = {}
            for level in levels:
                replies, tps = await _run(engine, prompts, max_tokens, level)
                out[level] = tps
            return {"replies": replies, "tok_s": out}
        finally:
            await engine.shutdown()

    result = asyncio.run(go())
    result.update(method=method, used=engine.quantized or "float32", weight_mib=engine.weight_bytes / 2**20)
    engine.model = None  # free the weights before the next method loads its own
    gc.collect()
    return result


def agreement(ref: list[list[int]], got: list[list[int]]) -> tuple[float, float]:
    """(share of replies identical, share of tokens before each reply's first difference)."""
    same = sum(a == b for a, b in zip(ref, got)) / len(ref)
    prefix = 0
    for a, b in zip(ref, got):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefix += n
    return same, prefix / max(1, sum(len(a) for a in ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: a random one of --size)")
    parser.add_argument("--size", default="40m", choices=["tiny", "small", "40m"])
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: none,int8, and "
        "int8-weight-only when torchao, the [torchao] extra, is installed)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--levels", default="1,16", help="concurrency levels (comma-separated)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from benchmarks.bench_serve import make_model

        model = make_model(Path(tempfile.mkdtemp(prefix="bench-quantize-")), args.size)
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.templates import Conversation, get_template

    tokenizer = load_tokenizer(model)
    template = get_template("openchat_3.5")
    prompts = [
        template.encode_prompt(tokenizer, Conversation.from_dict({"messages": [{"role": "user", "content": p}]}))
        for p in PROMPTS
    ]
    levels = [int(x) for x in args.levels.split(",")]
    import importlib.util

    default = "none,int8" + (",int8-weight-only" if importlib.util.find_spec("torchao") else "")
    methods = [m.strip() for m in (args.methods or default).split(",")]
    results = [measure(model, m, prompts, args.max_tokens, levels) for m in methods]
    base = results[0]
    rows = []
    for r in results:
        same, prefix = agreement(base["replies"], r["replies"])
        row = {
            "method": r["method"],
            "path": r["used"],
            "weight_mib": round(r["weight_mib"], 1),
            "memory_ratio": round(r["weight_mib"] / base["weight_mib"], 3),
            "greedy_same_reply": round(same, 3),
            "greedy_same_tokens": round(prefix, 3),
        }
        for level in levels:
            row[f"tok_s@{level}"] = round(r["tok_s"][level], 1)
            row[f"ratio@{level}"] = round(r["tok_s"][level] / base["tok_s"][level], 2)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    keys = list(rows[0])
    print(f"model {model} · {len(PROMPTS)} prompts · {args.max_tokens} greedy tokens each · vs {methods[0]}")
    print("  ".join(f"{k:>18}" for k in keys))
    for row in rows:
        print("  ".join(f"{str(row[k]):>18}" for k in keys))


if __name__ == "__main__":
    main()
