"""Two DeepSpeed ranks on CPU (gloo), a run killed mid-way and resumed.

The reference is plain single-process PyTorch on the same packed bins (AdamW, the same
schedule, global-norm clipping): the weighted loss is normalised over the whole global step,
so two ranks must reproduce it step for step. A run killed with SIGKILL resumes from its last
checkpoint, redoes only the unsaved steps, and ends on the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openchat_cli.train.run_files import latest_state_step
from store.catalog import open_catalog

ROOT = Path(__file__).resolve().parents[2]
COMMON = ("--tokens-per-step", "256", "--lr", "3e-3", "--log-every", "5", "--seed", "11")


def steps_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def reference_losses(run_dir: Path, world: int, steps: int) -> tuple[list[float], int]:
    """The first `steps` global-step losses computed without DeepSpeed, and the run's length."""
    import torch
    from transformers import AutoModelForCausalLM

    from openchat_cli.train.collate import pack
    from openchat_cli.train.dataset import load
    from openchat_cli.train.loop import param_groups
    from openchat_cli.train.loss import PackedLM
    from openchat_cli.train.sampler import MultipackSampler, PackSpec
    from openchat_cli.train.schedule import make_scheduler

    spec = json.loads((run_dir / "run.json").read_text())
    cfg = spec["config"]
    data = load(Path(spec["data_path"]))
    sampler = MultipackSampler(data.lengths, PackSpec(cfg["tokens_per_step"], world, 1, cfg["seed"]))
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], attn_implementation="sdpa")
    packed_lm = PackedLM(model, "sdpa")
    opt = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=spec["lr"], betas=(0.9, 0.95), eps=1e-5)
    sched = make_scheduler(opt, len(sampler), cfg["warmup_ratio"], cfg["min_lr_ratio"])
    losses = []
    for step in range(steps):
        batches = [pack(data, rows) for rank in range(world) for rows in sampler.batches(step, rank)]
        total_weight = sum(b.weight_sum for b in batches)
        step_loss = 0.0
        for batch in batches:
            loss = packed_lm(batch) / total_weight
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(step_loss)
    return losses, len(sampler)


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_match_plain_pytorch(cli, tiny_model_dir, color_data, tmp_path, openchat_home):
    # Two ranks, started as a user would, killed (SIGKILL, whole process group) once a
    # checkpoint exists.
    out = tmp_path / "two"
    env = {**os.environ, "OPENCHAT_HOME": str(openchat_home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openchat_cli.app",
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(color_data["train"]),
            "--out",
            str(out),
            *COMMON,
            "--num-gpus",
            "2",
            "--save-every",
            "10",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while (latest_state_step(out) or 0) < 10:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before_kill = steps_of(out)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    assert open_catalog().get(run_id)["status"] == "running"  # nobody was left to record the kill

    cli("train", "--out", out, "--resume")
    steps = steps_of(out)
    reference, total = reference_losses(out, world=2, steps=30)
    assert 10 <= len(before_kill) < total

    # Every step exactly once, in order: steps after the checkpoint were redone, not repeated,
    # and redone identically.
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    for old, new in zip(before_kill, steps):
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-5)
    # Two DeepSpeed ranks = one process of plain PyTorch over the same global batches.
    assert [s["loss"] for s in steps[:30]] == pytest.approx(reference, rel=1e-4)
    assert steps[-1]["loss"] < steps[0]["loss"] / 4  # and it trains
    # Both ranks got work every step, balanced to within a short sequence.
    for s in steps[:-1]:
        assert len(s["rank_tokens"]) == 2 and max(s["rank_tokens"]) - min(s["rank_tokens"]) <= 64
        assert min(s["rank_tokens"]) > 256 * 0.7

    catalog = open_catalog()
    run = catalog.get(run_id)
    assert run["status"] == "completed" and run["config"]["num_gpus"] == 2
    curve_steps = [p["step"] for p in run["loss_curve"]]
    assert curve_steps == sorted(set(curve_steps)) and curve_steps[-1] == total
    names = sorted(r["name"] for r in catalog.list("checkpoints") if r["run_id"] == run_id)
    # a step saved both before and after the kill is one catalog row
    assert names == sorted([f"step-{s:06d}" for s in range(10, total, 10)] + ["final"])
    assert (out / "final" / "model.safetensors").exists()
