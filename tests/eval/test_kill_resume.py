"""Killing an answer or judge run loses nothing: re-running continues without duplicates."""

import signal
import time

import pytest

from store.catalog import open_catalog
from tests.eval.conftest import answer_run, pairwise_judge_args, spawn_cli, write_jsonl

QUESTIONS = [{"question_id": i, "category": "writing", "turns": [f"Question number {i}?"]} for i in range(12)]


def _wait_rows(sql, at_least, proc, timeout=30.0):
    cat = open_catalog()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = cat.scalar(sql)
        if n >= at_least:
            return n
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for rows")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_answer_run_then_resume(cli, scripted, tmp_path, openchat_home, sig):
    path = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    scripted.hold(after=3)  # the rest wait: the signal lands with answers still to come, however slow the box
    proc = spawn_cli(
        ["eval", "answer", str(path), "-e", scripted.base_url, "-m", "slow-model", "-c", "2"], openchat_home
    )
    got = _wait_rows("select count(*) from answers", 3, proc)
    proc.send_signal(sig)
    proc.wait(60)
    cat = open_catalog()
    (run,) = cat.query("select * from evals where kind = 'answer'")
    kept = {r["question_id"] for r in cat.rows("answers", "eval_id = ?", [run["id"]])}
    assert got <= len(kept) < len(QUESTIONS)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and run["status"] == "interrupted"
    else:
        assert run["status"] == "running"

    scripted.reset()
    out = cli("eval", "answer", path, "-e", scripted.base_url, "-m", "slow-model", "-c", "8", "--json").json()
    assert out["run_id"] == run["id"] and out["already"] == len(kept)
    assert out["answered_now"] == len(QUESTIONS) - len(kept)
    asked = {r["messages"][0]["content"] for r in scripted.requests}
    assert asked == {f"Question number {i}?" for i in range(12) if str(i) not in kept}
    rows = cat.query(
        "select question_id, count(*) as n from answers where eval_id = ? group by question_id", [run["id"]]
    )
    assert len(rows) == len(QUESTIONS) and all(r["n"] == 1 for r in rows)
    assert cat.get(run["id"])["status"] == "completed"


def test_terminate_judge_run_then_resume(cli, scripted, tmp_path, openchat_home):
    path = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    a, b = answer_run(cli, scripted, path, "long-model"), answer_run(cli, scripted, path, "short-model")
    scripted.hold(after=4)  # the rest wait: SIGTERM lands with verdicts still to come
    args = pairwise_judge_args(a, b, scripted.base_url)
    proc = spawn_cli(args, openchat_home)
    _wait_rows("select count(*) from judgments", 4, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert proc.returncode == 130
    cat = open_catalog()
    (run,) = cat.query("select * from evals where kind = 'judge'")
    assert run["status"] == "interrupted"
    kept = cat.query('select question_id, turn, "order" from judgments where eval_id = ?', [run["id"]])
    assert 4 <= len(kept) < 24
    assert not cat.query("select * from unit_claims")  # a clean stop drops its claims

    scripted.reset()
    out = cli(*args[:-2], "-c", "8", "--json").json()[0]
    assert out["run_id"] == run["id"] and out["already"] == len(kept) and out["judged_now"] == 24 - len(kept)
    assert len(scripted.requests) == 24 - len(kept)
    dupes = cat.query(
        'select count(*) as n from judgments where eval_id = ? group by question_id, turn, "order" having n > 1',
        [run["id"]],
    )
    assert not dupes
    report = cli("eval", "report", run["id"], "--json").json()
    assert report["pairwise"][0]["win"] == 12 and report["pairwise"][0]["reliability"]["flip_rate"] == 0
