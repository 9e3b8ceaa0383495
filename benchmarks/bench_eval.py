"""Judge calls per second at concurrency 1 vs 32 against a local endpoint with fixed latency.

Runs the real `openchat eval judge` pipeline (pairwise: prompt rendering, the openai SDK on its
aiohttp transport, verdict parsing, one catalog write per judgment) against a judge server in a
separate process that answers every request after a fixed delay (default 50 ms). Prints calls/s
at each concurrency and the ratio. With a 50 ms judge, concurrency 1 cannot exceed 20 calls/s;
the ratio shows how much of the ideal 32x the client side delivers.

    python benchmarks/bench_eval.py [--latency-ms 50] [--calls 48] [--calls-32 640] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(latency_s: float) -> None:
    """The fixed-latency judge: every chat completion answers '[[A]]' after `latency_s`."""
    import asyncio
    import threading

    from aiohttp import web

    from tests.fake_openai import LoopbackServer, chat_completion

    class FixedLatencyJudge(LoopbackServer):
        def routes(self, app: web.Application) -> None:
            app.router.add_post("/v1/chat/completions", self.chat)

        async def chat(self, request: web.Request) -> web.Response:
            body = await request.json()
            await asyncio.sleep(latency_s)
            return chat_completion(
                body.get("model", "judge"),
                "Both are fine, A is clearer. [[A]]",
                {"prompt_tokens": 100, "completion_tokens": 10},
                completion_id="bench",
            )

    server = FixedLatencyJudge().start()
    print(server.port, flush=True)
    threading.Event().wait()


def seed(cat, questions: int) -> tuple[str, str]:
    """Two answer runs over the same `questions` single-turn questions."""
    runs = []
    for name in ("model-a", "model-b"):
        run = cat.add_eval(kind="answer", name=name, model=name, endpoint="http://bench/v1", questions_hash="bench")
        cat.insert_many(
            "questions",
            [
                {
                    "eval_id": run,
                    "question_id": str(i),
                    "category": "writing",
                    "turns": [f"Write a short note number {i}."],
                    "meta": {"format": "plain"},
                }
                for i in range(questions)
            ],
        )
        cat.insert_many(
            "answers",
            [
                {"eval_id": run, "question_id": str(i), "model": name, "turns": [f"{name} says hello {i}. " * 20]}
                for i in range(questions)
            ],
        )
        cat.update("evals", run, status="completed")
        runs.append(run)
    return runs[0], runs[1]


def measure(cat, url: str, calls: int, concurrency: int) -> dict:
    from openchat_cli.eval.judge import JudgeOptions, run_judge

    a, b = seed(cat, (calls + 1) // 2)  # pairwise: 2 calls (both orders) per question
    opts = JudgeOptions(
        judge_endpoint=url,
        judge_model="bench-judge",
        mode="pairwise",
        baseline=b,
        concurrency=concurrency,
        new=True,
        retry_wait_s=0.05,
    )
    start = time.perf_counter()
    result = run_judge(cat, a, opts)
    elapsed = time.perf_counter() - start
    n = result.judged_now
    return {
        "concurrency": concurrency,
        "calls": n,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(n / elapsed, 2),
        "parse_failures": result.parse_failures_now,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--calls", type=int, default=48, help="judge calls at concurrency 1")
    parser.add_argument("--calls-32", type=int, default=640, help="judge calls at concurrency 32")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.latency_ms / 1000)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as home:
            os.environ["OPENCHAT_HOME"] = home
            from store.catalog import open_catalog

            cat = open_catalog()
            measure(cat, url, 8, 8)  # warm-up: imports, connections
            one = measure(cat, url, args.calls, 1)
            many = measure(cat, url, args.calls_32, 32)
    finally:
        server.terminate()
        server.wait(10)

    ideal_1 = 1000.0 / args.latency_ms
    ratio = many["calls_per_s"] / one["calls_per_s"]
    result = {
        "latency_ms": args.latency_ms,
        "concurrency_1": one,
        "concurrency_32": many,
        "ratio_32_vs_1": round(ratio, 2),
        "ideal_calls_per_s_at_1": ideal_1,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"judge endpoint latency: {args.latency_ms:.0f} ms (ideal at concurrency 1: {ideal_1:.1f} calls/s)")
    for row in (one, many):
        print(
            f"  concurrency {row['concurrency']:>2}: {row['calls']:>4} calls in {row['seconds']:6.2f} s "
            f"= {row['calls_per_s']:7.1f} calls/s"
        )
    print(f"ratio (32 vs 1): {ratio:.1f}x")


if __name__ == "__main__":
    main()
