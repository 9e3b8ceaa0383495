"""benchmarks/bench_pipe.py --json: both paths ran the whole load, and the figures it prints
are consistent with each other (the ratio is server ÷ engine, CPU only where a process exists)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_pipe_runs_the_same_load_on_the_engine_alone_and_through_the_server(tiny_model_dir: Path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_pipe.py"),
            "--model",
            str(tiny_model_dir),
            "--levels",
            "2",
            "--max-tokens",
            "6",
            "--rounds",
            "1",
            "--repeat",
            "1",
            "--prompt-seed",
            "7",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["prompt_seed"] == 7 and result["max_tokens"] == 6
    rows = result["rows"]
    assert [r["concurrency"] for r in rows] == [2]
    for row in rows:
        engine, server = row["engine"], row["server"]
        # ignore_eos: every request generated exactly max_tokens, on both paths
        assert engine["tokens"] == server["tokens"] == row["requests"] * 6
        assert engine["tok_s"] > 0 and server["tok_s"] > 0
        assert row["ratio"] == pytest.approx(server["tok_s"] / engine["tok_s"], abs=0.002)
        assert engine["api_cpu_ms_per_token"] is None  # no API process on the engine path
        assert server["api_cpu_ms_per_token"] > 0
        assert engine["engine_cpu_ms_per_token"] > 0 and server["engine_cpu_ms_per_token"] > 0
        assert engine["client_cpu_ms_per_token"] > 0 and server["client_cpu_ms_per_token"] > 0
