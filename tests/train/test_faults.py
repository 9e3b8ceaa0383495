"""`openchat train` under faults a user hits: kill -9 and SIGTERM of the command, a second
command on the same run folder, --resume with the default settings. Real processes throughout:
the command is started as a user would start it, its ranks are found in /proc, signals are
real, the catalog is the real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openchat_cli.lifeline import start_ticks
from openchat_cli.train.config import TrainConfig
from openchat_cli.train.run_files import latest_state_step, read_steps
from store.catalog import open_catalog
from tests.train.helpers import run_args

ROOT = Path(__file__).resolve().parents[2]
# 600 short conversations in 256-token steps: ~150 steps of some 20 ms each on the tiny model.
SETTINGS = ("--tokens-per-step", "256", "--lr", "3e-3", "--log-every", "5", "--seed", "5")


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failing test must not leave its training running into the next ones."""
    yield
    while _started:
        proc = _started.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def start_train(home: Path, *args: object) -> subprocess.Popen:
    """`openchat train ARGS` as its own process (its own session, so signals hit it alone)."""
    env = {**os.environ, "OPENCHAT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openchat_cli.app", "train", *map(str, args)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _started.append(proc)
    return proc


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"train exited {proc.returncode} before {what}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def all_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(start_ticks(p) is not None for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def test_resumable_state_is_saved_by_default():
    # --save-every 0 (the default) used to mean "nothing to resume from before the end".
    assert TrainConfig().save_every == 0 and 0 < TrainConfig().state_minutes <= 30


@pytest.mark.slow
def test_kill_9_takes_the_ranks_and_resume_continues_from_the_saved_step(
    cli, tiny_model_dir, color_data, tmp_path, openchat_home
):
    out = tmp_path / "killed"
    proc = start_train(
        openchat_home,
        *run_args(tiny_model_dir, color_data["train"], out),
        *SETTINGS,
        "--num-gpus",
        "2",
        "--state-minutes",
        "0.005",
    )
    # Kill once a state was saved and a step ran after it (that step must be redone, not lost).
    wait_for(
        lambda: (latest_state_step(out) or 0) >= 1 and len(read_steps(out)) > latest_state_step(out),
        proc,
        "resumable state",
    )
    ranks = children_of(proc.pid)
    assert len(ranks) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all_gone(ranks, timeout=30), "ranks outlived `openchat train`"
    steps_at_kill = read_steps(out)
    saved = latest_state_step(out)
    time.sleep(2)
    assert read_steps(out) == steps_at_kill and not (out / "final").exists()  # nothing written after

    run_id = json.loads((out / "run.json").read_text())["run_id"]
    listed = {r["id"]: r for r in cli("catalog", "list", "runs", "--json").json()}
    assert listed[run_id]["status"] == "interrupted"  # the next command saw its owner gone

    resumed = cli("train", "--out", out, "--resume")
    assert f"from its state saved at step {saved}" in resumed.stderr
    steps = read_steps(out)
    total = steps[-1]["step"]
    assert [s["step"] for s in steps] == list(range(1, total + 1))  # each step once, none from a race
    assert saved < total
    for before, after in zip(steps_at_kill, steps):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert open_catalog().get(run_id)["status"] == "completed"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written save left

    # The same run without the kill ends on the same weights.
    plain = tmp_path / "plain"
    cli(
        "train",
        *run_args(tiny_model_dir, color_data["train"], plain),
        *SETTINGS,
        "--num-gpus",
        "2",
        "--state-minutes",
        "0",
    )
    assert len(read_steps(plain)) == total
    a, b = final_weights(out), final_weights(plain)
    assert a.keys() == b.keys()
    for key in a:
        assert float((a[key] - b[key]).abs().max()) < 1e-4, key


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_folder_is_locked_meanwhile(
    cli, tiny_model_dir, color_data, tmp_path, openchat_home
):
    out = tmp_path / "termed"
    proc = start_train(
        openchat_home,
        *run_args(tiny_model_dir, color_data["train"], out),
        *SETTINGS,
        "--state-minutes",
        "0",
    )
    wait_for(lambda: len(read_steps(out)) >= 2, proc, "two steps")
    # Frozen (the command and its rank: one process group) while the checks below run, so the
    # run is still going when they and the SIGTERM come, however slow this process is.
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        # A second command on the same folder refuses, naming the holder; so does a --resume.
        second = cli(
            "train", "--model", tiny_model_dir, "--data", color_data["small"], "--out", out, "--force", expect=2
        )
        assert "in use by" in second.stderr and f"pid {proc.pid}" in second.stderr
        assert f"pid {proc.pid}" in cli("train", "--out", out, "--resume", expect=2).stderr
        ranks = children_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)  # delivered when the group goes on
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert all_gone(ranks, timeout=1)
    run = open_catalog().get(json.loads((out / "run.json").read_text())["run_id"])
    assert run["status"] == "interrupted" and run["finished_at"]
    stopped = read_steps(out)[-1]["step"]
    assert latest_state_step(out) == stopped  # nothing done before the stop is lost
    assert not (out / "final").exists()

    # Ctrl-C of the resumed run: the same clean stop, from where the first one stopped.
    proc = start_train(openchat_home, "--out", out, "--resume")
    wait_for(lambda: read_steps(out)[-1]["step"] >= stopped + 2, proc, "two more steps")
    os.kill(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert f"from its state saved at step {stopped}" in output and "stopped by SIGINT" in output
    assert open_catalog().get(run["id"])["status"] == "interrupted"
    assert latest_state_step(out) == read_steps(out)[-1]["step"] > stopped


def test_resume_drops_what_a_kill_cut_short(tmp_path):
    """A kill mid-save leaves temp folders and a state never marked latest: --resume's cleanup
    removes them and keeps the marked state and the user's own files."""
    from openchat_cli.train import run_files as ckpt

    out = tmp_path / "run"
    for name in ("state/step-5", "state/step-9", ".final.x1y2z3", ".step-000010.ab12cd"):
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_text("x")
    ckpt.mark_latest_state(out, 5)  # step-9 was being written when the kill came
    (out / ".steps.jsonl.q1w2.tmp").write_text("{")
    (out / ".notes").write_text("mine")
    (out / "run.lock").write_text("")
    removed = ckpt.remove_partial_saves(out)
    assert sorted(removed) == [".final.x1y2z3", ".step-000010.ab12cd", ".steps.jsonl.q1w2.tmp"]
    assert sorted(p.name for p in (out / "state").iterdir()) == ["latest", "step-5"]
    assert sorted(p.name for p in out.iterdir()) == [".notes", "run.lock", "state"]
    assert ckpt.latest_state_step(out) == 5


@pytest.mark.slow
def test_two_trains_started_together_on_one_folder_one_refuses(tiny_model_dir, color_data, tmp_path, openchat_home):
    out = tmp_path / "shared"
    args = ("--model", tiny_model_dir, "--data", color_data["small"], "--out", out, *SETTINGS)
    procs = [start_train(openchat_home, *args) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    refused = outputs[[p.returncode for p in procs].index(2)]
    assert "is in use by" in refused and "Traceback" not in refused
    steps = read_steps(out)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))  # one run's lines, once each
    (run,) = open_catalog().list("runs")
    assert run["status"] == "completed" and (out / "final" / "model.safetensors").exists()
