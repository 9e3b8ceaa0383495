"""Report summaries as dataclasses: `eval report --json` and the metrics stored on runs keep the
JSON shape they had as dicts (key order included), and stored summaries read back equal."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.eval import report as R
from openchat_cli.eval.loglik import loglik_metrics
from openchat_cli.eval.summaries import (
    GradeSummary,
    PairwiseSummary,
    Report,
    SingleSummary,
    judge_summary_from_dict,
)
from tests.eval.test_report import seeded  # noqa: F401  (the fixture: pairwise + single runs)

# `eval report --json` of every summary kind, written by the dict-building report before the
# dataclasses came in (run ids replaced by the fixture's names). OPENCHAT_UPDATE_GOLDEN=1 rewrites it.
GOLDEN = Path(__file__).parent / "golden" / "report.json"


def _grade_run(cat, answer_run: str) -> str:
    """A suite grade run: two task types, one with two tasks, lenient extraction on some rows."""
    run = cat.add_eval(kind="grade", parent_id=answer_run, model="alpha")
    rows = [
        ("q1", "correct", True, "zs/math", "zs/math/a", "correct"),
        ("q2", "incorrect", True, "zs/math", "zs/math/b", "correct"),
        ("q3", "error", False, "zs/math", "zs/math/b", "error"),
        ("q4", "correct", True, "fs/code", "fs/code/x", None),
        ("q5", "incorrect", False, "fs/code", "fs/code/x", "incorrect"),
    ]
    for qid, verdict, parsed, task_type, task_name, lenient in rows:
        meta = {"method": "suite", "task_type": task_type, "task_name": task_name}
        if lenient is not None:
            meta["lenient"] = lenient
        cat.insert(
            "judgments",
            {
                "eval_id": run,
                "question_id": qid,
                "turn": 1,
                "mode": "exact",
                "answer_run_id": answer_run,
                "verdict": verdict,
                "score": 1.0 if verdict == "correct" else 0.0,
                "parse_ok": int(parsed),
                "meta": meta,
            },
        )
    cat.update("evals", run, status="completed")
    return run


def _reward_run(cat, answer_run: str) -> str:
    run = cat.add_eval(kind="score", parent_id=answer_run, model="rm-x", config={"template": "openchat_3.5"})
    for qid, reward, category in [("q1", 1.5, "math"), ("q2", -0.5, "writing"), ("q3", 0.25, "math")]:
        cat.insert(
            "judgments",
            {
                "eval_id": run,
                "question_id": qid,
                "turn": 1,
                "mode": "reward",
                "answer_run_id": answer_run,
                "judge_model": "rm-x",
                "prompt_name": "reward-model",
                "raw": f"{reward:.6f}",
                "verdict": "scored",
                "score": reward,
                "parse_ok": 1,
                "meta": {"category": category},
            },
        )
    cat.update("evals", run, status="completed")
    return run


def _loglik_run(cat) -> str:
    run = cat.add_eval(
        kind="loglik",
        name="tiny-loglik",
        model="tiny",
        endpoint="http://x/v1",
        questions_path="/task.jsonl",
        questions_hash="t",
        config={"task_format": "mmlu"},
    )
    items = [("m1", "math", 1, 1, 0), ("m2", "math", 0, 1, 1), ("h1", "history", 1, 0, 1), ("h2", "history", 0, 0, 0)]
    for qid, category, acc, acc_norm, acc_bytes in items:
        cat.insert("questions", {"eval_id": run, "question_id": qid, "category": category, "turns": ["ctx"]})
        meta = {"pred": 0, "acc": float(acc), "acc_norm": float(acc_norm), "acc_bytes": float(acc_bytes)}
        cat.insert("answers", {"eval_id": run, "question_id": qid, "model": "tiny", "turns": ["a"], "meta": meta})
    cat.update("evals", run, status="completed", metrics=loglik_metrics(cat, run, total=5, errors=1))
    return run


@pytest.fixture
def every_kind(seeded):  # noqa: F811
    """The seeded judge runs plus a suite grade, a reward-model score and a loglik run."""
    cat = seeded["cat"]
    return {
        **seeded,
        "grade": _grade_run(cat, seeded["a"]),
        "reward": _reward_run(cat, seeded["a"]),
        "loglik": _loglik_run(cat),
    }


def _names(runs: dict[str, Any]) -> dict[str, str]:
    return {v: f"<{k}>" for k, v in runs.items() if isinstance(v, str)}


def _named(value: Any, names: dict[str, str]) -> Any:
    """The value with run ids replaced by the fixture's names for them (ids are random)."""
    if isinstance(value, dict):
        return {k: _named(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_named(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


def _same_shape(got: Any, want: Any, where: str = "") -> None:
    """Equal keys in the same order, equal types and values (floats to 1e-9: BLAS may round)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            _same_shape(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same_shape(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {got}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def _stored(cat, runs) -> dict[str, Any]:
    """What `eval judge` stores as a judge run's metrics (no LC CI), per mode."""
    return {
        "stored_pairwise": R.judge_summary(cat, runs["pair"], lc_ci=False).to_dict(),
        "stored_single": R.judge_summary(cat, runs["sa"], lc_ci=False).to_dict(),
    }


def test_report_json_keeps_the_dict_shape(cli, every_kind):
    runs = every_kind
    got = {
        "report": cli("eval", "report", "--baseline", runs["b2"], "--json").json(),
        **_stored(runs["cat"], runs),
    }
    got = _named(got, _names(runs))
    if os.environ.get("OPENCHAT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    # every kind is in there, so no part of the shape goes untested
    assert all(want["report"][kind] for kind in ("single", "pairwise", "percent_of_baseline", "grade", "loglik"))
    assert want["report"]["reward"] and want["report"]["grade"][0]["suite"]["tasks"]
    assert want["report"]["loglik"][0]["categories"] and want["stored_pairwise"]["lc_coefficients"]
    _same_shape(got, want)


def test_summaries_read_back_equal(every_kind):
    cat = every_kind["cat"]
    report = R.build_report(cat, [], [every_kind["b2"]])
    assert isinstance(report, Report) and Report.from_dict(report.to_dict()) == report
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()  # plain JSON, nothing lost
    pair, single = R.judge_summary(cat, every_kind["pair"]), R.judge_summary(cat, every_kind["sa"])
    assert isinstance(pair, PairwiseSummary) and isinstance(single, SingleSummary)
    assert judge_summary_from_dict(pair.to_dict()) == pair and judge_summary_from_dict(single.to_dict()) == single
    with pytest.raises(OpenchatError, match="PairwiseSummary lacks win, reliability"):
        judge_summary_from_dict({k: v for k, v in pair.to_dict().items() if k not in ("win", "reliability")})
    assert single.turns == {1: pytest.approx(20 / 3), 2: pytest.approx(7.5)}  # turn numbers, not strings
    assert pair.reliability.flipped == 2 and pair.lc_coefficients is not None
    assert report.grade[0].suite is not None and report.grade[0].suite.tasks["zs/math/b"].questions == 2
    assert report.loglik[0].categories["math"].n == 2


def test_grade_result_extras_only_when_set(every_kind):
    """`eval grade` stores and prints the summary plus unanswered (and skipped task types)."""
    summary = R.grade_summary(every_kind["cat"], every_kind["grade"])
    assert "unanswered" not in summary.to_dict() and "skipped" not in summary.to_dict()
    graded = GradeSummary.from_dict({**summary.to_dict(), "unanswered": 3, "skipped": {"coding": "no sandbox"}})
    assert list(graded.to_dict())[-2:] == ["unanswered", "skipped"] and graded.unanswered == 3
