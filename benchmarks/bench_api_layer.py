"""The API layer's own cost: streamed chat tokens per CPU second through the FastAPI app with
an engine that does no model work (it replays token ids), so only parsing, templating,
detokenizing, chunk rendering and the event loop are measured (the in-process httpx client's
share included, the same for every tree).

    python benchmarks/bench_api_layer.py [--requests 64] [--tokens 256] [--concurrency 16]
    python benchmarks/bench_api_layer.py --baseline main   # the same load on another git revision

With `--baseline REV` the revision's tree is exported (`git archive`) to a temporary folder and
the same measurement runs there, alternating with this tree's, each in a fresh process,
`--repeat` times; the best run of each counts. The table prints both and their ratio (absolute
numbers move with the machine's load; the ratio is what counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("plain", {}), ("logprobs", {"logprobs": True, "top_logprobs": 2})]


def measure(requests: int, tokens: int, concurrency: int) -> dict[str, float | None]:
    """Tokens per second through the app for each case (run in the tree on sys.path)."""
    import gc

    import httpx

    from openchat_cli.model.tiny import train_tokenizer
    from openchat_cli.serve.app import ServerConfig, create_app
    from openchat_cli.serve.engines.base import Engine, EngineStats, TokenEvent, TokenLogprob
    from openchat_cli.templates import get_template

    corpus = ["The quick brown fox jumps over the lazy dog, then naps under 3 trees."] * 50
    tokenizer = train_tokenizer(corpus, 400)
    template = get_template("openchat_3.5")
    eot = tokenizer.convert_tokens_to_ids(template.eot_token)
    reply = tokenizer.encode(" the quick brown fox jumps over the lazy dog", add_special_tokens=False)

    class ReplayEngine(Engine):
        kind = "replay"
        context_length = 4096

        def __init__(self):
            self.tokenizer = tokenizer

        async def generate(self, prompt_ids, params, request_id):
            for i in range(params.max_tokens):
                token = reply[i % len(reply)]
                lp = None
                if params.logprobs is not None:
                    top = tuple((reply[(i + j) % len(reply)], -1.0 - j) for j in range(params.logprobs))
                    lp = [TokenLogprob(token, -1.0, top)]
                await asyncio.sleep(0)
                yield TokenEvent([token], "length" if i == params.max_tokens - 1 else None, logprobs=lp)

        def stats(self):
            return EngineStats()

    gc.collect()
    gc.freeze()  # the imports' objects: full collections would scan them in every case alike

    async def run(extra: dict) -> float:
        app = create_app(ReplayEngine(), ServerConfig(model_name="m", template=template, stop_token_ids=(eot,)))
        body = {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Tell me about foxes."},
            ],
            "max_tokens": tokens,
            "stream": True,
            "ignore_eos": True,
            **extra,
        }
        gate = asyncio.Semaphore(concurrency)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:

                async def one() -> int:
                    async with gate:
                        count = 0
                        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                            if resp.status_code != 200:  # a tree without this feature
                                raise LookupError(resp.status_code)
                            async for line in resp.aiter_lines():
                                count += line.startswith("data: {")
                        return count

                await one()  # warm up
                # CPU seconds of this process (client and server share it): on a machine shared
                # with other work, wall time mostly measures the others.
                started = time.process_time()
                await asyncio.gather(*(one() for _ in range(requests)))
                return requests * tokens / (time.process_time() - started)

    results: dict[str, float | None] = {}
    for name, extra in CASES:
        try:
            results[name] = asyncio.run(run(extra))
        except LookupError:
            results[name] = None
    return results


def run_in(tree: Path, args: argparse.Namespace) -> dict[str, float | None]:
    """One measurement in a fresh process importing the code of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--raw",
            "--requests",
            str(args.requests),
            "--tokens",
            str(args.tokens),
            "--concurrency",
            str(args.concurrency),
        ],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def best(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per case, the fastest of the runs (the one least disturbed by other work)."""
    return {name: max((r[name] for r in runs if r.get(name) is not None), default=None) for name in runs[0]}


def compare(rev: str, args: argparse.Namespace) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """This tree and `rev`, measured alternately `--repeat` times each."""
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        ours, other = [], []
        for _ in range(args.repeat):
            ours.append(run_in(ROOT, args))
            other.append(run_in(Path(tmp), args))
        return best(ours), best(other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--baseline", help="a git revision to measure the same way, for the ratio")
    parser.add_argument("--repeat", type=int, default=3, help="alternate runs per tree; the best counts")
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(measure(args.requests, args.tokens, args.concurrency)))
        return
    if args.baseline:
        ours, other = compare(args.baseline, args)
    else:
        ours, other = best([run_in(ROOT, args) for _ in range(args.repeat)]), {}
    print(
        f"streamed chat tokens per CPU second through the API layer ({args.requests} requests x {args.tokens} tokens, "
        f"concurrency {args.concurrency}, an engine that does no work)"
    )
    print(f"{'case':<10} {'this tree':>10} " + (f"{args.baseline:>10} {'ratio':>6}" if other else ""))

    def cell(value: float | None) -> str:
        return f"{value:>10.0f}" if value is not None else f"{'(n/a)':>10}"

    for name, value in ours.items():
        row = f"{name:<10} {cell(value)} "
        if other:
            base = other.get(name)
            row += cell(base) + (f" {value / base:>6.2f}" if value and base else "")
        print(row)


if __name__ == "__main__":
    main()
