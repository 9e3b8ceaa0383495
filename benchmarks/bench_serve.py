"""Benchmark `openchat serve` on CPU: does batching scale, what does HTTP cost, and how does it
compare with another OpenAI-compatible server (vLLM's CPU build) under the same load?

Starts the real server (`openchat serve MODEL --port 0`) on a random "small" model (256 hidden,
4 layers; `--size tiny` for the test-sized one, `--size 40m` for a 40M model with a 32k
vocabulary) or on --model, then streams chat completions at concurrency 1, 8 and 32
(fixed-length replies: `ignore_eos`; prompts of ShareGPT-like, ragged lengths, the same list for
every server; each level gets prompts no server has seen before, from a seed drawn per run
(`--prompt-seed` fixes it), so a prefix cache, such as vLLM's, on by default, never hits one) and reports aggregate generated tokens/s and time to first token.

`--vs-url URL` drives that server too, level by level right after ours, and prints ours vs
other tok/s, their ratio and both TTFT p50s side by side. `--vs-ref REF` also serves the same
model from this repository at git REF (before/after a change), in the same alternation. Each
row also says how much CPU time each server (its whole process tree) spent per generated token:
on a shared, loaded machine that moves far less than tokens/s. Without --vs-url, the same engine is also
run in this process at concurrency 1 and the top level, so the HTTP layer's overhead shows.

    python benchmarks/bench_serve.py                 # small random model, 128 tokens per reply
    python benchmarks/bench_serve.py --size tiny --max-tokens 64
    python benchmarks/bench_serve.py --model DIR --vs-url http://127.0.0.1:8001 --json
    python benchmarks/bench_serve.py --model DIR --vs-url http://127.0.0.1:8001 --vs-ref HEAD~3
    python benchmarks/bench_serve.py --save-model DIR --size 40m   # make the model, then exit

Numbers depend on the machine and on what else runs on it: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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
# 40M parameters with a 32k vocabulary (the vocabulary is what makes sampling cost).
SIZE_40M = {
    "vocab_size": 32000,
    "hidden_size": 512,
    "layers": 8,
    "heads": 8,
    "kv_heads": 4,
    "intermediate_size": 1408,
    "max_positions": 4096,
}


def sharegpt_like_prompts(count: int, seed: int = 0) -> list[str]:
    """User turns with ShareGPT's spread of lengths (log-normal, median ~70 words, a long tail
    clipped at 600), built from the corpus words; the same list for every server."""
    import random

    rng = random.Random(seed)
    words = " ".join(CORPUS + [QUESTION]).split()
    prompts = []
    for i in range(count):
        n = int(min(600, max(8, rng.lognormvariate(4.25, 0.9))))
        prompts.append(f"[{i}] " + " ".join(rng.choice(words) for _ in range(n)))
    return prompts


def make_model(out: Path, size: str) -> Path:
    from openchat_cli.model.tiny import SIZES, ModelSize, random_llama, train_tokenizer
    from openchat_cli.model_dir import attach_template, tokenizer_hash, write_meta

    spec = ModelSize(**SIZE_40M) if size == "40m" else SIZES[size]
    tokenizer = train_tokenizer(CORPUS * 20, min(spec.vocab_size, 2048))
    attach_template(tokenizer, "openchat_3.5")
    model = random_llama(tokenizer, spec, seed=0)
    if spec.vocab_size > len(tokenizer):  # rows past the tokenizer: never sampled, still computed
        model.resize_token_embeddings(spec.vocab_size, mean_resizing=False)
    eot = tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    model.generation_config.eos_token_id = [eot, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, template="openchat_3.5", size=size, tokenizer_hash=tokenizer_hash(tokenizer))
    return out


def start_server(model: Path, home: Path, extra: list[str], root: Path = ROOT) -> tuple[subprocess.Popen, str, str]:
    import httpx

    env = dict(
        os.environ,
        OPENCHAT_HOME=str(home),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    )
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openchat_cli.app",
            "serve",
            str(model),
            "--port",
            "0",
            "--log-level",
            "warning",
            *extra,
        ],
        cwd=str(root),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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


async def one_stream(client, url: str, model: str, max_tokens: int, prompt: str = QUESTION) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one streamed chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 1.0,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        buffer = b""
        async for data in resp.aiter_bytes():
            # Split on \n only: aiter_lines also splits inside JSON strings at U+2028 and the like,
            # which a random model emits and servers that do not escape non-ASCII send raw.
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode().rstrip("\r")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                if ttft is None and delta.get("content"):
                    ttft = time.perf_counter() - started
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return (ttft if ttft is not None else total), total, tokens


async def http_level(
    url: str, model: str, concurrency: int, requests: int, max_tokens: int, prompts: list[str] | None = None
) -> dict:
    import httpx

    prompts = prompts or [QUESTION]
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, model, 4)  # warm the connection pool and the server
        queue: asyncio.Queue = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(prompts[i % len(prompts)])
        results: list[tuple[float, float, int]] = []

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                results.append(await one_stream(client, url, model, max_tokens, prompt))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(r[0] for r in results),
        "ttft_mean_s": statistics.fmean(r[0] for r in results),
    }


async def drive_engine(
    engine, prompts: list[list[int]], concurrency: int, requests: int, max_tokens: int
) -> tuple[list[int], list[float], float]:
    """`requests` replies of `max_tokens` (prompts taken in turn) through `concurrency` workers
    straight into an engine: each reply's token count, each time to first token, the wall time."""
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
            async for event in engine.generate(prompts[i % len(prompts)], params, f"bench-{i}"):
                if n == 0 and event.token_ids:
                    ttfts.append(time.perf_counter() - t0)
                n += len(event.token_ids)
            counts.append(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, ttfts, time.perf_counter() - started


async def inprocess_level(engine, prompt_ids: list[int], concurrency: int, requests: int, max_tokens: int) -> dict:
    counts, ttfts, wall = await drive_engine(engine, [prompt_ids], concurrency, requests, max_tokens)
    return {
        "concurrency": concurrency,
        "requests": len(counts),
        "tokens": sum(counts),
        "wall_s": wall,
        "tokens_per_s": sum(counts) / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_mean_s": statistics.fmean(ttfts),
    }


def checkout(ref: str, into: Path) -> Path:
    """This repository's tree at git `ref`, extracted into `into` (a server runs from it)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and all its children (0 when unknown)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def server_pid(url: str) -> int | None:
    """The process listening on a loopback URL's port (to count its CPU time), if visible."""
    import psutil

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def measured(pid: int | None, level) -> dict:
    """Run one level (a coroutine) and add the server's CPU milliseconds per generated token."""
    before = cpu_seconds(pid)
    result = asyncio.run(level)
    spent = cpu_seconds(pid) - before
    result["cpu_ms_per_token"] = spent * 1000 / result["tokens"] if pid and result["tokens"] else None
    return result


def served_model(url: str) -> str:
    """The first model another OpenAI server lists."""
    import httpx

    return httpx.get(url.rstrip("/") + "/v1/models", timeout=10).json()["data"][0]["id"]


def direct_levels(model: Path, levels: list[int], rounds: int, max_tokens: int) -> dict[int, dict]:
    """The same engine called in this process (the server is stopped: no CPU competition)."""
    from openchat_cli.model_dir import load_tokenizer, model_template
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import Conversation, get_template

    tokenizer = load_tokenizer(model)
    template = get_template(model_template(model))
    prompt_ids = template.encode_prompt(
        tokenizer, Conversation.from_dict({"messages": [{"role": "user", "content": QUESTION}]})
    )
    engine = TransformersEngine(model, tokenizer=tokenizer)
    direct = {}
    for c in sorted({1, max(levels)}):
        asyncio.run(inprocess_level(engine, prompt_ids, c, 1, 4))  # warm-up
        direct[c] = asyncio.run(inprocess_level(engine, prompt_ids, c, max(8, rounds * c), max_tokens))
        r = direct[c]
        print(
            f"  direct c={c:<3d}{r['tokens_per_s']:8.1f} tok/s   ttft p50 {r['ttft_p50_s'] * 1000:7.1f} ms"
            f"   (engine in-process, no HTTP)",
            flush=True,
        )
    return direct


def table_rows(ours: list[dict], other: list[dict] | None, ref: list[dict] | None = None) -> list[dict]:
    """The side-by-side rows (`--json`'s `rows`)."""
    rows = []
    for i, r in enumerate(ours):
        o = other[i] if other else None
        b = ref[i] if ref else None
        rows.append(
            {
                "concurrency": r["concurrency"],
                "requests": r["requests"],
                "ours_tok_s": round(r["tokens_per_s"], 1),
                "other_tok_s": round(o["tokens_per_s"], 1) if o else None,
                "ratio": round(r["tokens_per_s"] / o["tokens_per_s"], 3) if o else None,
                "ttft_p50_ms": round(r["ttft_p50_s"] * 1000, 1),
                "other_ttft_p50_ms": round(o["ttft_p50_s"] * 1000, 1) if o else None,
                "ttft_mean_ms": round(r["ttft_mean_s"] * 1000, 1),
                "other_ttft_mean_ms": round(o["ttft_mean_s"] * 1000, 1) if o else None,
                "ours_cpu_ms_per_token": r.get("cpu_ms_per_token"),
                "other_cpu_ms_per_token": o.get("cpu_ms_per_token") if o else None,
                **(
                    {
                        "ref_tok_s": round(b["tokens_per_s"], 1),
                        "ref_ratio": round(b["tokens_per_s"] / o["tokens_per_s"], 3) if o else None,
                        "ref_ttft_p50_ms": round(b["ttft_p50_s"] * 1000, 1),
                        "ref_cpu_ms_per_token": b.get("cpu_ms_per_token"),
                    }
                    if b
                    else {}
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh random model)")
    parser.add_argument(
        "--size",
        default="small",
        choices=["tiny", "small", "40m"],
        help="random model to make when --model is not given",
    )
    parser.add_argument("--save-model", type=Path, help="make the random model here and exit")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=3, help="requests per level = rounds × concurrency (at least 8)")
    parser.add_argument(
        "--prompts",
        default="sharegpt",
        choices=["sharegpt", "fixed"],
        help="ragged ShareGPT-like prompt lengths, or one short prompt for all",
    )
    parser.add_argument(
        "--prompt-seed",
        type=int,
        default=None,
        help="seed of the ShareGPT-like prompts (default: a new one each run, printed, so a server's "
        "prefix cache holds none of them from an earlier run)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `openchat serve` argument (repeatable), e.g. --server-arg=--dtype=bfloat16",
    )
    parser.add_argument("--vs-url", help="another OpenAI-compatible server to drive with the same load")
    parser.add_argument("--vs-model", help="model name on --vs-url (default: the first it lists)")
    parser.add_argument("--vs-ref", help="also serve from this repository at this git ref (before/after)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON too")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    if args.save_model:
        make_model(args.save_model, args.size)
        print(f"model saved to {args.save_model}")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model or make_model(work / "model", args.size)
    (work / "home").mkdir(exist_ok=True)
    # Every level gets its own prompts (a level reusing an earlier level's would be served from a
    # prefix cache); the servers see the same ones, each for the first time.
    seed = args.prompt_seed if args.prompt_seed is not None else random.SystemRandom().randrange(2**31)
    level_prompts: dict[int, list[str] | None] = {}
    if args.prompts == "sharegpt":
        pool = sharegpt_like_prompts(sum(max(8, args.rounds * c) for c in levels), seed=seed)
        for c in levels:
            level_prompts[c], pool = pool[: max(8, args.rounds * c)], pool[max(8, args.rounds * c) :]
    else:
        level_prompts = dict.fromkeys(levels)
    other_url = args.vs_url.rstrip("/") if args.vs_url else None
    other_name = (args.vs_model or served_model(other_url)) if other_url else None
    print(
        f"model {model}  ·  {args.max_tokens} tokens per reply  ·  {args.prompts} prompts  ·  "
        f"{os.cpu_count()} CPUs"
        + (f"  ·  vs {other_url}" if other_url else "")
        + (f"  ·  prompt seed {seed}" if args.prompts == "sharegpt" else "")
    )
    proc, url, name = start_server(model, work / "home", args.server_arg)
    servers = [proc]
    other_pid = server_pid(other_url) if other_url else None
    ref_url = None
    ours, other, ref = [], [], []
    try:
        if args.vs_ref:
            (work / "ref-home").mkdir()
            ref_proc, ref_url, ref_name = start_server(
                model, work / "ref-home", args.server_arg, root=checkout(args.vs_ref, work / "ref")
            )
            servers.append(ref_proc)
        for c in levels:
            requests = max(8, args.rounds * c)
            sides = [("ours", ours, proc.pid, url, name)]
            if ref_url:
                sides.append((args.vs_ref, ref, ref_proc.pid, ref_url, ref_name))
            if other_url:
                sides.append(("other", other, other_pid, other_url, other_name))
            for label, results, pid, side_url, side_name in sides:
                results.append(
                    measured(pid, http_level(side_url, side_name, c, requests, args.max_tokens, level_prompts[c]))
                )
                r = results[-1]
                cpu = f"   cpu {r['cpu_ms_per_token']:.2f} ms/token" if r["cpu_ms_per_token"] else ""
                print(
                    f"  {label:<8} c={c:<3d} {r['tokens_per_s']:8.1f} tok/s   ttft p50 "
                    f"{r['ttft_p50_s'] * 1000:7.1f} ms   ({r['requests']} requests, {r['wall_s']:.1f}s){cpu}",
                    flush=True,
                )
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()

    rows = table_rows(ours, other or None, ref or None)
    print("\nresults" + (f" (ref = {args.vs_ref})" if ref else ""))
    if other_url:

        def cpu(value):
            return f"{value:.2f}" if value else "?"

        print(
            f"  {'concurrency':>11} {'ours tok/s':>11} {'other tok/s':>12} {'ratio':>7} "
            f"{'ttft p50 ms':>12} {'other ttft p50':>15} {'cpu ms/tok ours/other':>22}"
            + (f" {'ref tok/s':>10} {'ref ratio':>10} {'ref ttft':>9}" if ref else "")
        )
        for r in rows:
            print(
                f"  {r['concurrency']:>11} {r['ours_tok_s']:>11.1f} {r['other_tok_s']:>12.1f} "
                f"{r['ratio']:>6.2f}x {r['ttft_p50_ms']:>12.1f} {r['other_ttft_p50_ms']:>15.1f} "
                f"{cpu(r['ours_cpu_ms_per_token']) + ' / ' + cpu(r['other_cpu_ms_per_token']):>22}"
                + (f" {r['ref_tok_s']:>10.1f} {r['ref_ratio']:>9.2f}x {r['ref_ttft_p50_ms']:>9.1f}" if ref else "")
            )
    else:
        base = ours[0]["tokens_per_s"]
        print(
            f"  {'concurrency':>11} {'tok/s':>9} {'vs c=' + str(levels[0]):>8} {'ttft p50 ms':>12} {'ttft mean ms':>13}"
        )
        for r in ours:
            print(
                f"  {r['concurrency']:>11} {r['tokens_per_s']:>9.1f} {r['tokens_per_s'] / base:>7.2f}x "
                f"{r['ttft_p50_s'] * 1000:>12.1f} {r['ttft_mean_s'] * 1000:>13.1f}"
            )
        direct = direct_levels(model, levels, args.rounds, args.max_tokens)
        by_c = {r["concurrency"]: r for r in ours}
        print("\nratios")
        for c in levels[1:]:
            print(
                f"  batching: tokens/s at concurrency {c} / concurrency {levels[0]} = "
                f"{by_c[c]['tokens_per_s'] / base:.2f}x"
            )
        for c in sorted(set(direct) & set(by_c)):
            print(
                f"  HTTP layer at concurrency {c}: server / in-process tokens/s = "
                f"{by_c[c]['tokens_per_s'] / direct[c]['tokens_per_s']:.2f} (1.00 = HTTP costs nothing)"
            )
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
