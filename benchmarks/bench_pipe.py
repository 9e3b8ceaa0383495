"""What the path from the engine process to an HTTP client costs: the same load on the engine
process alone and through `openchat serve`, side by side, with each process's CPU per token.

Two ways to run the same streamed, fixed-length generations (`ignore_eos`, ShareGPT-like prompt
lengths, a closed loop of `c` requests in flight):

- engine: the engine process that `openchat serve` starts (`EngineProcessClient`), driven from
  this process over its socket: the model, batching and sampling, the wire, and nothing else
  (no HTTP, no detokenizing);
- server: `openchat serve` over HTTP, the engine process plus the API process (FastAPI, uvicorn,
  detokenizing, SSE), the client parsing every event.

Both run at once (an idle one costs nothing); each level is measured on one, then the other,
`--repeat` times alternating, and the medians are compared, so load from elsewhere hits both
alike. Every row also gives CPU milliseconds per generated token of the engine process, the API
process and this process (the client): on a shared machine those move far less than tokens/s,
and they say where time goes. server ÷ engine is what the pipe costs end to end; 1.0 means the
API and the client run entirely beside the engine.

    python benchmarks/bench_pipe.py                           # small random model, 1/8/32
    python benchmarks/bench_pipe.py --model DIR --levels 1,32 --json
    python benchmarks/bench_pipe.py --size tiny --max-tokens 16 --levels 1,4 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import (  # noqa: E402
    drive_engine,
    http_level,
    make_model,
    sharegpt_like_prompts,
    start_server,
)


def prompt_ids(model: Path, prompts: list[str]) -> tuple[object, list[list[int]]]:
    """The tokenizer and each chat prompt's ids, as the server's template builds them."""
    from openchat_cli.model_dir import load_tokenizer, model_template
    from openchat_cli.templates import Conversation, get_template

    tokenizer = load_tokenizer(model)
    template = get_template(model_template(model))
    ids = [
        template.encode_prompt(tokenizer, Conversation.from_dict({"messages": [{"role": "user", "content": p}]}))
        for p in prompts
    ]
    return tokenizer, ids


async def engine_level(engine, prompts: list[list[int]], concurrency: int, requests: int, max_tokens: int) -> dict:
    """The load of `http_level`, straight into an engine: tokens/s and time to first token."""
    counts, ttfts, wall = await drive_engine(engine, prompts, concurrency, requests, max_tokens)
    return {
        "tokens": sum(counts),
        "tokens_per_s": sum(counts) / wall,
        "ttft_p50_s": statistics.median(ttfts),
    }


def with_cpu(level, pids: dict[str, int | None]) -> dict:
    """Run one level (a coroutine) and add CPU ms per generated token of each process in `pids`
    (its own children excluded) and of this one (the client)."""

    def snapshot() -> dict[str, float]:
        return {name: own_cpu_seconds(pid) for name, pid in pids.items()}

    before, client = snapshot(), time.process_time()
    result = asyncio.run(level)
    after, client = snapshot(), time.process_time() - client
    tokens = result["tokens"]
    for name in pids:
        result[f"{name}_cpu_ms_per_token"] = (after[name] - before[name]) * 1000 / tokens if tokens else None
    result["client_cpu_ms_per_token"] = client * 1000 / tokens if tokens else None
    return result


def own_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of one process, without its children."""
    import psutil

    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def engine_pid(api_pid: int) -> int | None:
    """The engine process `openchat serve` started (its only Python child)."""
    import psutil

    children = psutil.Process(api_pid).children()
    return children[0].pid if children else None


def median_row(runs: list[dict]) -> dict:
    """Per figure, the median over the alternating runs (None where a run had none)."""
    keys = [k for k in runs[0] if k != "tokens"]
    row = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row["tokens"] = runs[0]["tokens"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh random model of --size)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "40m"])
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = max(8, rounds × concurrency)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per level (medians)")
    parser.add_argument("--prompt-seed", type=int, default=None, help="seed of the prompts (default: new each run)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `openchat serve` argument")
    parser.add_argument("--json", action="store_true", help="print the table as JSON too")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    seed = args.prompt_seed if args.prompt_seed is not None else int.from_bytes(os.urandom(4), "little")

    from openchat_cli.serve.cli import _engine_options
    from openchat_cli.serve.engines.process_client import EngineProcessClient

    work = Path(tempfile.mkdtemp(prefix="bench-pipe-"))
    model = args.model or make_model(work / "model", args.size)
    print(
        f"model {model}  ·  {args.max_tokens} tokens per reply  ·  {len(os.sched_getaffinity(0))} CPUs"
        f"  ·  prompt seed {seed}",
        flush=True,
    )
    home = work / "server"
    home.mkdir()
    options = _engine_options(
        "transformers",
        name="bench",
        engine_arg=None,
        dtype=next((a.split("=", 1)[1] for a in args.server_arg if a.startswith("--dtype=")), "auto"),
        device="auto",
        gpu_memory_utilization=None,
        tensor_parallel_size=1,
        max_model_len=None,
        max_batch_size=64,
        threads=None,
    )
    all_prompts = sharegpt_like_prompts(max(8, args.rounds * max(levels)) * len(levels) * args.repeat * 2, seed)
    tokenizer, _ = prompt_ids(model, all_prompts[:1])
    # Both load their model at once. The engine process is started from this thread: it gets
    # SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG), a pool thread would not do.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_server, model, home, list(args.server_arg))
        engine = EngineProcessClient("transformers", model, tokenizer=tokenizer, options=options)
        try:
            server, url, name = starting.result()
        except BaseException:
            asyncio.run(engine.shutdown())
            raise
    rows = []
    try:
        used = 0
        pids = {"server": {"engine": engine_pid(server.pid), "api": server.pid}, "engine": {"engine": engine.pid}}
        for c in levels:
            requests = max(8, args.rounds * c)
            runs: dict[str, list[dict]] = {"engine": [], "server": []}
            for _ in range(args.repeat):
                for mode in ("engine", "server"):
                    # Fresh prompts for every run: no server sees a prompt twice.
                    texts = all_prompts[used : used + requests]
                    used += requests
                    if mode == "engine":
                        _, ids = prompt_ids(model, texts)
                        asyncio.run(engine_level(engine, ids[:1], 1, 1, 4))  # warm up
                        level = engine_level(engine, ids, c, requests, args.max_tokens)
                    else:
                        level = http_level(url, name, c, requests, args.max_tokens, texts)
                    runs[mode].append(with_cpu(level, pids[mode]))
            row = {"concurrency": c, "requests": requests}
            for mode in ("engine", "server"):
                m = median_row(runs[mode])
                row[mode] = {
                    "tok_s": round(m["tokens_per_s"], 1),
                    "ttft_p50_ms": round(m["ttft_p50_s"] * 1000, 1),
                    "engine_cpu_ms_per_token": _round(m.get("engine_cpu_ms_per_token")),
                    "api_cpu_ms_per_token": _round(m.get("api_cpu_ms_per_token")),
                    "client_cpu_ms_per_token": _round(m.get("client_cpu_ms_per_token")),
                    "tokens": m["tokens"],
                }
            row["ratio"] = round(row["server"]["tok_s"] / row["engine"]["tok_s"], 3)
            rows.append(row)
            _print_row(row)
    finally:
        asyncio.run(engine.shutdown())
        server.terminate()
        server.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        print(json.dumps({"model": str(model), "max_tokens": args.max_tokens, "prompt_seed": seed, "rows": rows}))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _print_row(row: dict) -> None:
    def cpu(value: float | None) -> str:
        return "   -  " if value is None else f"{value:6.3f}"

    for mode in ("engine", "server"):
        r = row[mode]
        print(
            f"  {mode:<7}c={row['concurrency']:<3d}{r['tok_s']:8.1f} tok/s   ttft p50 {r['ttft_p50_ms']:7.1f} ms"
            f"   cpu ms/token engine {cpu(r['engine_cpu_ms_per_token'])}  api {cpu(r['api_cpu_ms_per_token'])}"
            f"  client {cpu(r['client_cpu_ms_per_token'])}",
            flush=True,
        )
    print(f"  server ÷ engine at c={row['concurrency']}: {row['ratio']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
