"""Two identical `openchat eval answer` / `eval judge` commands started together: real processes
against the scripted server on loopback, slow enough per call that they overlap. They end up on
one run with one row per unit, and the report counts each unit once."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from store.catalog import open_catalog
from tests.eval.conftest import answer_run, pairwise_judge_args, spawn_cli, write_jsonl

QUESTIONS = [
    {"question_id": i, "category": "writing", "turns": [f"Question number {i}?", f"Follow-up {i}?"]} for i in range(12)
]
UNITS = len(QUESTIONS) * 2 * 2  # pairwise: 12 questions × 2 turns × 2 orders


def _together(args: list[str], home, n: int = 2) -> list[dict]:
    """Start `n` identical commands at once; their --json outputs once all have ended."""
    procs = [spawn_cli([*args, "--json"], home) for _ in range(n)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
        outs.append(json.loads(stdout))
    return outs


@pytest.mark.slow
def test_two_identical_judge_commands_share_one_run(cli, scripted, tmp_path, openchat_home):
    path = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    a, b = answer_run(cli, scripted, path, "long-model"), answer_run(cli, scripted, path, "short-model")
    scripted.reset()
    # Each command asks 2 at a time: no verdict comes back until 4 calls wait at once, so both
    # commands are working on the run together however late the second one starts.
    scripted.hold(until_waiting=4)
    scripted.latency_s = 0.05
    started = time.monotonic()
    outs = _together(pairwise_judge_args(a, b, scripted.base_url), openchat_home)
    elapsed = time.monotonic() - started
    (first,), (second,) = outs

    cat = open_catalog()
    runs = cat.query("select id from evals where kind = 'judge'")
    assert [r["id"] for r in runs] == [first["run_id"]] == [second["run_id"]]
    stored = cat.count("judgments")
    dupes = cat.query('select count(*) as n from judgments group by eval_id, question_id, turn, "order" having n > 1')
    assert stored == UNITS and not dupes
    # Each unit asked once, by one of them; both worked (they overlapped) and both saw it all done.
    assert len(scripted.requests) == UNITS
    assert first["judged_now"] + second["judged_now"] == UNITS
    assert first["judged_now"] > 0 and second["judged_now"] > 0, (first, second, elapsed)
    for out in (first, second):
        assert out["status"] == "completed" and out["already"] + out["judged_now"] + out["judged_elsewhere"] == UNITS
    assert not cat.query("select * from unit_claims")  # every claim dropped

    report = cli("eval", "report", "--json").json()
    (pair,) = report["pairwise"]
    assert (pair["judgments"], pair["pairs"], pair["win"], pair["tie"]) == (UNITS, UNITS // 2, UNITS // 2, 0)
    assert pair["reliability"]["flipped"] == 0


@pytest.mark.slow
def test_two_identical_answer_commands_share_one_run(scripted, tmp_path, openchat_home):
    path = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    scripted.latency_s = 0.2
    # A new run asks the endpoint's /health which checkpoint it serves: slow, so that both
    # commands are making their run at the same time (finding none, each made its own before).
    scripted.health_latency_s = 1.5
    outs = _together(
        ["eval", "answer", str(path), "-e", scripted.base_url, "-m", "long-model", "-c", "4"], openchat_home
    )
    cat = open_catalog()
    runs = cat.query("select id, status from evals where kind = 'answer'")
    assert [r["id"] for r in runs] == [outs[0]["run_id"]] == [outs[1]["run_id"]]
    assert runs[0]["status"] == "completed"
    answers = cat.count("answers")
    questions = cat.count("questions")
    assert answers == questions == len(QUESTIONS)
    assert sorted(o["resumed"] for o in outs) == [False, True]  # the second joined the first's run
    # each question asked once (2 turns each), by one of the two commands
    asked = [r for r in scripted.requests if r.get("messages")]
    assert len(asked) == 2 * len(QUESTIONS)
    assert len({r["messages"][0]["content"] for r in asked}) == len(QUESTIONS)
    assert not cat.query("select * from unit_claims")


@pytest.mark.slow
def test_claims_of_a_killed_judge_do_not_hold_up_the_next_one(cli, scripted, tmp_path, openchat_home):
    """SIGKILL leaves claims behind; their holder is gone, so the next command takes them at
    once instead of waiting out the lease."""
    path = write_jsonl(tmp_path / "q.jsonl", QUESTIONS[:4])
    a, b = answer_run(cli, scripted, path, "long-model"), answer_run(cli, scripted, path, "short-model")
    scripted.hold(after=2)  # two verdicts, then the next two calls wait: claimed, never answered
    args = pairwise_judge_args(a, b, scripted.base_url)
    proc = spawn_cli(args, openchat_home, output=subprocess.DEVNULL)
    cat = open_catalog()
    deadline = time.monotonic() + 120
    while not (cat.count("judgments") == 2 and scripted.held == 2 and cat.count("unit_claims") == 2):
        assert proc.poll() is None, f"judge exited {proc.returncode} early"
        assert time.monotonic() < deadline, (cat.count("judgments"), scripted.held, cat.count("unit_claims"))
        time.sleep(0.05)
    proc.kill()
    proc.wait(60)
    left = cat.query("select unit from unit_claims")
    assert len(left) == 2  # asked, never answered: still claimed by the dead process

    scripted.reset()
    started = time.monotonic()
    out = cli(*args, "--json").json()[0]
    stored = cat.count("judgments")
    assert out["status"] == "completed" and stored == 16 and out["already"] + out["judged_now"] == 16
    assert len(scripted.requests) == out["judged_now"]
    assert time.monotonic() - started < 45  # well within the 60 s lease
    assert not cat.query("select * from unit_claims")
