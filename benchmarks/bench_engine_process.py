"""Benchmark the engine process split: `openchat serve` with the transformers engine in its own
process (the default) against `--in-process`, the same load side by side.

Both servers run at once (an idle one costs nothing); each concurrency level is measured on
one, then on the other, --repeat times alternating, and the medians are compared, so load from
elsewhere on the machine hits both alike. The load is
bench_serve.py's: streamed chat completions with fixed-length replies (`ignore_eos`).

    python benchmarks/bench_engine_process.py                       # small model, 1/8/32
    python benchmarks/bench_engine_process.py --size tiny --max-tokens 32 --levels 1,8
    python benchmarks/bench_engine_process.py --json

Prints tokens/s and TTFT p50 per mode and level, and the ratio engine-process / in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import http_level, make_model, start_server  # noqa: E402

MODES = {"engine process": [], "in-process": ["--in-process"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model dir (default: a fresh random model of --size)")
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = max(8, rounds × concurrency)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per level (medians)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-engine-process-"))
    model = args.model or make_model(work / "model", args.size)
    print(f"model {model}  ·  {args.max_tokens} tokens per reply  ·  {os.cpu_count()} CPUs", flush=True)
    servers = {}
    try:
        for mode, extra in MODES.items():
            home = work / mode.replace(" ", "-")
            home.mkdir()
            servers[mode] = start_server(model, home, extra)
        rows = []
        for c in levels:
            runs: dict[str, list[dict]] = {mode: [] for mode in servers}
            for _ in range(args.repeat):
                for mode, (_, url, name) in servers.items():
                    r = asyncio.run(http_level(url, name, c, max(8, args.rounds * c), args.max_tokens))
                    runs[mode].append(r)
                    print(
                        f"  c={c:<3d} {mode:<15} {r['tokens_per_s']:8.1f} tok/s   ttft p50 "
                        f"{r['ttft_p50_s'] * 1000:7.1f} ms",
                        flush=True,
                    )
            row: dict = {"concurrency": c}
            for mode, results in runs.items():
                row[mode] = {
                    "tok_s": statistics.median(r["tokens_per_s"] for r in results),
                    "ttft_p50_ms": statistics.median(r["ttft_p50_s"] for r in results) * 1000,
                }
            row["ratio"] = row["engine process"]["tok_s"] / row["in-process"]["tok_s"]
            rows.append(row)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"\nmedians of {args.repeat} alternating runs (tokens/s; ratio = engine process / in-process)")
    print(f"  {'concurrency':>11} {'engine proc':>12} {'in-process':>11} {'ratio':>7} {'ttft p50 ms (proc / in)':>26}")
    for row in rows:
        a, b = row["engine process"], row["in-process"]
        print(
            f"  {row['concurrency']:>11} {a['tok_s']:>12.1f} {b['tok_s']:>11.1f} {row['ratio']:>6.2f}x "
            f"{a['ttft_p50_ms']:>13.1f} / {b['ttft_p50_ms']:.1f}"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [
                        {
                            "concurrency": r["concurrency"],
                            "engine_process_tok_s": r["engine process"]["tok_s"],
                            "in_process_tok_s": r["in-process"]["tok_s"],
                            "ratio": r["ratio"],
                            "engine_process_ttft_p50_ms": r["engine process"]["ttft_p50_ms"],
                            "in_process_ttft_p50_ms": r["in-process"]["ttft_p50_ms"],
                        }
                        for r in rows
                    ]
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
