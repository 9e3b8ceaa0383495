"""benchmarks/bench_train.py --json: the figures a script checks are there and consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench_json(*args: str) -> dict:
    """benchmarks/bench_train.py --json --no-memory ARGS, run as a script; its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--json", "--no-memory", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_bench_train_json_holds_the_three_paths_and_their_ratios():
    result = bench_json("--sequences", "300", "--capacity", "2048", "--seconds", "3")
    tps = result["useful_tokens_per_s"]
    assert set(tps) == {"packed", "packed_masked", "padded"} and all(v > 0 for v in tps.values())
    assert result["ratio_packed_vs_padded"] == pytest.approx(tps["packed"] / tps["padded"])
    assert result["ratio_packed_vs_packed_masked"] == pytest.approx(tps["packed"] / tps["packed_masked"])
    eff = result["packing_efficiency"]
    assert eff["dropped_tokens"] == 0
    assert all(full >= whole for full, whole in zip(eff["per_epoch_full_steps"], eff["per_epoch"]))
    assert result["data"]["max"] <= 2048 and result["lengths"] == "sharegpt"


@pytest.mark.slow
def test_bench_train_dpo_json_compares_packed_and_padded_pairs():
    result = bench_json("--dpo", "--pairs", "60", "--capacity", "2048", "--seconds", "2")
    pairs = result["pairs_per_s"]
    assert set(pairs) == {"packed", "padded"} and all(v > 0 for v in pairs.values())
    assert result["ratio_pairs_per_s_packed_vs_padded"] == pytest.approx(pairs["packed"] / pairs["padded"])
    assert all(v > 0 for v in result["useful_tokens_per_s"].values())
