"""`openchat quickstart` chains real commands end to end (small sizes; the full run is the README's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from openchat_cli.quickstart.tasks import generate


def test_generated_task_has_bad_records_and_disjoint_heldout(tmp_path):
    files = generate(tmp_path, train_size=200, eval_size=20, seed=1)
    records = json.loads(files["train"].read_text())
    heldout = [json.loads(line) for line in files["heldout"].read_text().splitlines()]
    train_questions = {r["conversations"][0]["value"] for r in records if r["conversations"]}
    assert len(heldout) == 20 and not train_questions & {q["question"] for q in heldout}
    assert any(r["id"].endswith("-dup") for r in records)
    assert any(not r["conversations"] for r in records)
    for q in heldout:  # labels are right
        a, b = map(int, [w.strip("?,") for w in q["question"].split() if w.strip("?,").isdigit()])
        assert int(q["label"]) == (max(a, b) if q["category"] == "larger" else min(a, b))


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_records_lineage(tmp_path, openchat_home):
    env = {**os.environ, "OPENCHAT_HOME": str(openchat_home)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openchat_cli.app",
            "quickstart",
            "--dir",
            str(tmp_path / "qs"),
            "--train-size",
            "200",
            "--eval-size",
            "6",
            "--epochs",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(proc.stdout)  # --json: stdout holds only the JSON; the story is on stderr
    grades = {g["model"]: g for g in result["report"]["grade"]}
    assert set(grades) == {"base", "trained"}
    assert all(g["graded"] == 6 for g in grades.values())
    for step in ("1/7 clean", "3/7 tokenize", "4/7 fine-tune", "before / after"):
        assert step in proc.stderr
    # the trained checkpoint's lineage reaches back to the cleaned and the raw data
    from store.catalog import open_catalog

    catalog = open_catalog()
    trained = catalog.find_by_path("checkpoints", result["trained"])
    kinds = {catalog.table_of(n["id"]) for n in catalog.lineage(trained["id"])["ancestors"]}
    assert {"runs", "datasets", "checkpoints"} <= kinds
    formats = {
        catalog.get(n["id"])["format"] for n in catalog.lineage(trained["id"])["ancestors"] if n["id"].startswith("ds-")
    }
    assert {"tokenized", "conversations"} <= formats


def _descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, grandchildren, …), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_quickstart(tmp_path, home):
    env = {**os.environ, "OPENCHAT_HOME": str(home)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openchat_cli.app",
            "quickstart",
            "--dir",
            str(tmp_path / "qs"),
            "--train-size",
            "60",
            "--eval-size",
            "5",
            "--epochs",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_server(proc) -> None:
    import time

    deadline = time.monotonic() + 300
    while not [p for p in _descendants(proc.pid) if " serve " in _cmdline(p)]:
        assert proc.poll() is None, f"quickstart exited {proc.returncode} before serving"
        assert time.monotonic() < deadline, "quickstart started no server within 300 s"
        time.sleep(0.1)


def _left(pids: list[int], timeout: float) -> list[int]:
    import time

    from openchat_cli.lifeline import start_ticks

    deadline = time.monotonic() + timeout
    while any(start_ticks(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if start_ticks(p)]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_stopping_quickstart_takes_its_server_with_it(tmp_path, openchat_home, how):
    import signal

    proc = _start_quickstart(tmp_path, openchat_home)
    try:
        _wait_for_server(proc)
        everything = _descendants(proc.pid)
        os.kill(proc.pid, getattr(signal, how))
        _, stderr = proc.communicate(timeout=120)
        assert not _left(everything, timeout=30), f"children outlived quickstart ({how})"
        if how == "SIGTERM":  # a clean stop: one line, the signal's exit code
            assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr
            assert "Traceback" not in stderr
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left (on failure), not leaked into other tests
        except ProcessLookupError:
            pass
