"""Benchmark `openchat serve` on CPU: does batching scale, and what does HTTP cost?

Starts the real server (`openchat serve MODEL --port 0`) on a random "small" model (256 hidden,
4 layers; `--size tiny` for the test-sized one) or on --model,
then streams chat completions at concurrency 1, 8 and 32 (fixed-length replies: `ignore_eos`)
and reports aggregate generated tokens/s and time to first token. Finally it loads the same
engine in this process and generates with it directly at concurrency 1, so the HTTP layer's
overhead shows as a ratio.

    python benchmarks/bench_serve.py                 # small random model, 128 tokens per reply
    python benchmarks/bench_serve.py --size tiny --max-tokens 64
    python benchmarks/bench_serve.py --model path/to/checkpoint --levels 1,4,16

Prints a table and the ratios (tokens/s at 8 and 32 vs 1; HTTP vs in-process at 1).
Numbers depend on the machine and on what else runs on it: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is 12 plus 7? The answer is 19.",
    "Hello! How can I help you today? Please write a short poem about the sea.",
    "def add(a, b):\n    return a + b\n",
    "In mathematics, a prime number is a natural number greater than 1.",
    "Question: What is the capital of France? Answer: Paris.",
]
QUESTION = "Please write a short poem about the sea, and explain why the sky is blue."


def make_model(out: Path, size: str) -> Path:
    from openchat_cli.model.tiny import SIZES, random_llama, train_tokenizer
    from openchat_cli.model_dir import attach_template, tokenizer_hash, write_meta

    tokenizer = train_tokenizer(CORPUS * 20, SIZES[size].vocab_size)
    attach_template(tokenizer, "openchat_3.5")
    model = random_llama(tokenizer, SIZES[size], seed=0)
    eot = tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    model.generation_config.eos_token_id = [eot, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, template="openchat_3.5", size=size, tokenizer_hash=tokenizer_hash(tokenizer))
    return out


def start_server(model: Path, home: Path, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    import httpx

    env = dict(os.environ, OPENCHAT_HOME=str(home), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "openchat_cli.app", "serve", str(model),
                             "--port", "0", "--log-level", "warning", *extra],
                            cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{(home / 'server.log').read_text()}")
        found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", (home / "server.log").read_text())
        if found:
            url = f"http://127.0.0.1:{found.group(1)}"
            try:
                health = httpx.get(url + "/health", timeout=2)
                if health.status_code == 200:
                    return proc, url, health.json()["model"]
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in time")


async def one_stream(client, url: str, model: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 1.0,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if ttft is None and '"content":"' in line and '"content":""' not in line:
                ttft = time.perf_counter() - started
            if '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return (ttft if ttft is not None else total), total, tokens


async def http_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, model, 4)  # warm the connection pool and the server
        queue: asyncio.Queue = asyncio.Queue()
        for _ in range(requests):
            queue.put_nowait(None)
        results: list[tuple[float, float, int]] = []

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                results.append(await one_stream(client, url, model, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(r[0] for r in results),
            "ttft_mean_s": statistics.fmean(r[0] for r in results)}


async def inprocess_level(engine, prompt_ids: list[int], concurrency: int, requests: int,
                          max_tokens: int) -> dict:
    from openchat_cli.serve.engines.base import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)
    await engine.start()
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    counts: list[int] = []
    ttfts: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            n = 0
            async for event in engine.generate(prompt_ids, params, f"bench-{i}"):
                if n == 0:
                    ttfts.append(time.perf_counter() - t0)
                n += len(event.token_ids)
            counts.append(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": len(counts), "tokens": sum(counts), "wall_s": wall,
            "tokens_per_s": sum(counts) / wall, "ttft_p50_s": statistics.median(ttfts),
            "ttft_mean_s": statistics.fmean(ttfts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh random tiny model)")
    parser.add_argument("--size", default="small", choices=["tiny", "small"],
                        help="random model to make when --model is not given")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=3,
                        help="requests per level = rounds × concurrency (at least 8)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `openchat serve` argument (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model or make_model(work / "model", args.size)
    (work / "home").mkdir(exist_ok=True)
    print(f"model {model}  ·  {args.max_tokens} tokens per reply  ·  {os.cpu_count()} CPUs")
    proc, url, name = start_server(model, work / "home", args.server_arg)
    rows = []
    try:
        for c in levels:
            rows.append(asyncio.run(http_level(url, name, c, max(8, args.rounds * c), args.max_tokens)))
            r = rows[-1]
            print(f"  http  c={c:<3d} {r['tokens_per_s']:8.1f} tok/s   ttft p50 {r['ttft_p50_s'] * 1000:7.1f} ms"
                  f"   ({r['requests']} requests, {r['wall_s']:.1f}s)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    # The same engine, called directly (the server is stopped: it does not compete for CPU).
    from openchat_cli.model_dir import load_tokenizer, model_template
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import Conversation, get_template

    tokenizer = load_tokenizer(model)
    template = get_template(model_template(model))
    prompt_ids = template.encode_prompt(tokenizer, Conversation.from_dict(
        {"messages": [{"role": "user", "content": QUESTION}]}))
    engine = TransformersEngine(model, tokenizer=tokenizer)
    direct = {}
    for c in sorted({1, max(levels)}):
        asyncio.run(inprocess_level(engine, prompt_ids, c, 1, 4))  # warm-up
        direct[c] = asyncio.run(inprocess_level(engine, prompt_ids, c, max(8, args.rounds * c),
                                                args.max_tokens))
        r = direct[c]
        print(f"  direct c={c:<3d}{r['tokens_per_s']:8.1f} tok/s   ttft p50 {r['ttft_p50_s'] * 1000:7.1f} ms"
              f"   (engine in-process, no HTTP)", flush=True)

    by_c = {r["concurrency"]: r for r in rows}
    base = by_c[levels[0]]["tokens_per_s"]
    print("\nresults")
    print(f"  {'concurrency':>11} {'tok/s':>9} {'vs c=' + str(levels[0]):>8} {'ttft p50 ms':>12} {'ttft mean ms':>13}")
    for r in rows:
        print(f"  {r['concurrency']:>11} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / base:>7.2f}x "
              f"{r['ttft_p50_s'] * 1000:>12.1f} {r['ttft_mean_s'] * 1000:>13.1f}")
    print("\nratios")
    for c in levels[1:]:
        print(f"  batching: tokens/s at concurrency {c} / concurrency {levels[0]} = "
              f"{by_c[c]['tokens_per_s'] / base:.2f}x")
    if 1 in by_c:
        ratio = by_c[1]["tokens_per_s"] / direct[1]["tokens_per_s"]
        print(f"  HTTP layer: server tokens/s / in-process engine tokens/s at concurrency 1 = "
              f"{ratio:.2f} (1.00 = HTTP costs nothing)")
        top = max(levels)
        if top in direct and top in by_c:
            ratio_top = by_c[top]["tokens_per_s"] / direct[top]["tokens_per_s"]
            print(f"  HTTP layer at concurrency {top}: server / in-process = {ratio_top:.2f}")
    if args.json:
        print(json.dumps({"http": rows, "direct": list(direct.values())}, indent=2))


if __name__ == "__main__":
    main()
