"""`openchat data pairs`: preference pairs from pairwise judge runs of scripted models and judges
on loopback (tests/eval/scripted.py), with lineage back to the judge and both answer runs."""

from __future__ import annotations

import pytest

from store.catalog import open_catalog
from tests.data.helpers import read_jsonl
from tests.eval.conftest import MTBENCH, write_jsonl
from tests.eval.scripted import ScriptedServer


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedServer().start()
    yield server
    server.stop()


def _runs(cli, scripted, tmp_path, judge: str, questions=MTBENCH):
    path = write_jsonl(tmp_path / "question.jsonl", questions)
    runs = [
        cli("eval", "answer", path, "-e", scripted.base_url, "-m", model, "--json").json()["run_id"]
        for model in ("long-model", "short-model")
    ]
    judged = cli(
        "eval",
        "judge",
        runs[0],
        "--baseline",
        runs[1],
        "--mode",
        "pairwise",
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        judge,
        "--retry-wait",
        "0.01",
        "--json",
    ).json()[0]
    return runs, judged["run_id"]


def test_pairs_from_a_consistent_judge_with_lineage(cli, scripted, tmp_path):
    (long_run, short_run), judge_run = _runs(cli, scripted, tmp_path, "fair-judge")
    out = tmp_path / "pairs.jsonl"
    res = cli("data", "pairs", judge_run, "-o", out, "--json").json()
    counts = res["counts"]
    # 4 questions × 2 turns: the fair judge prefers the long model in both orders; the second turns
    # follow different first replies, so they share no prompt and are left out.
    assert counts["judged_pairs"] == 8 and counts["kept"] == 4
    assert counts["dropped"] == {"context_differs": 4} and counts["chosen_from"] == {"answer_run": 4}
    pairs = read_jsonl(out)
    assert {p["id"].split(":", 2)[1] for p in pairs} == {str(q["question_id"]) for q in MTBENCH}
    for p in pairs:
        question = next(q for q in MTBENCH if str(q["question_id"]) == p["id"].split(":")[1])
        assert p["prompt"] == [{"role": "user", "content": question["turns"][0], "weight": 0.0}]
        assert p["chosen"][0]["content"].startswith("[long-model]") and p["chosen"][0]["weight"] == 1.0
        assert p["rejected"][0]["content"].startswith("[short-model]")
        assert p["source"] == judge_run
    cat = open_catalog()
    row = cat.get(res["id"])
    assert row["format"] == "pairs" and row["num_records"] == 4 and row["parent_id"] == judge_run
    ancestors = {a["id"] for a in cat.lineage(res["id"])["ancestors"]}
    assert {judge_run, long_run, short_run} <= ancestors
    shown = cli("catalog", "lineage", res["id"]).stdout
    assert judge_run in shown and long_run in shown and short_run in shown


def test_flips_are_dropped_and_nothing_is_registered(cli, scripted, tmp_path):
    """A judge that always says [[A]] flips with the display order: no pair agrees in both."""
    _, judge_run = _runs(cli, scripted, tmp_path, "biased-judge")
    out = tmp_path / "pairs.jsonl"
    res = cli("data", "pairs", judge_run, "-o", out, expect=2)
    assert "flipped 8" in res.stderr and not out.exists()
    assert not [d for d in open_catalog().list("datasets") if d["format"] == "pairs"]


def test_unparsed_verdicts_counted(cli, scripted, tmp_path):
    questions = MTBENCH[:2] + [{"question_id": 999, "category": "writing", "turns": ["MALFORMED request here"]}]
    _, judge_run = _runs(cli, scripted, tmp_path, "messy-judge", questions)
    counts = cli("data", "pairs", judge_run, "-o", tmp_path / "p.jsonl", "--json").json()["counts"]
    assert counts["kept"] == 2 and counts["dropped"] == {"unparsed": 1, "context_differs": 2}


def test_refuses_what_is_not_a_pairwise_judge_run(cli, scripted, tmp_path):
    (long_run, _short_run), _ = _runs(cli, scripted, tmp_path, "fair-judge")
    single = cli(
        "eval",
        "judge",
        long_run,
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        "fair-judge",
        "--retry-wait",
        "0.01",
        "--json",
    ).json()[0]["run_id"]
    assert "single-answer judge run" in cli("data", "pairs", single, expect=2).stderr
    assert "is not a judge run" in cli("data", "pairs", long_run, expect=2).stderr
