"""The verdicts browser on runs made by the real `openchat eval` (answer + judge) against the
scripted server, which answers judge prompts with parseable verdicts. Checks that the TUI reads
what the eval stage writes, not only the hand-seeded rows."""

from __future__ import annotations

import asyncio
import json

import pytest
from textual.widgets import DataTable

from tests.tui.conftest import wait_for
from tui.screens.verdicts import QuestionScreen, RunScreen
from tui.verdicts_data import list_runs, load_question, load_run

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2+2?"], "reference": ["4"]},
    {"question_id": 3, "category": "coding", "turns": ["Print hello in Python."]},
]


def _run_id(result) -> str:
    data = result.json()
    data = data[0] if isinstance(data, list) else data
    return data["run_id"]


@pytest.mark.slow
def test_verdicts_of_a_real_eval_run(cli, catalog, fake_server, tmp_path, make_app):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    url = fake_server.base_url
    run_a = _run_id(cli("eval", "answer", questions, "-e", url, "-m", "fake-model", "--name", "A", "--json"))
    run_b = _run_id(cli("eval", "answer", questions, "-e", url, "-m", "other-model", "--name", "B", "--json"))
    judge = _run_id(
        cli(
            "eval",
            "judge",
            run_a,
            "--mode",
            "pairwise",
            "--baseline",
            run_b,
            "--judge-endpoint",
            url,
            "--judge-model",
            "fake-model",
            "--json",
        )
    )

    [summary] = [r for r in list_runs(catalog) if r.id == judge]
    assert (summary.mode, summary.model_a, summary.model_b, summary.questions) == ("pairwise", "A", "B", 3)
    data = load_run(catalog, judge)
    assert [(r.question_id, r.turn, r.category) for r in data.rows] == [
        ("1", 1, "writing"),
        ("1", 2, "writing"),
        ("2", 1, "math"),
        ("3", 1, "coding"),
    ]
    assert all(r.order_verdict("AB") in ("win", "loss", "tie") for r in data.rows)
    assert all(r.order_verdict("BA") in ("win", "loss", "tie") for r in data.rows)
    detail = load_question(catalog, data, "2")
    assert detail.turns == ["What is 2+2?"] and detail.reference == ["4"]
    assert detail.answer_a and detail.answer_b and len(detail.judgments) == 2

    async def drive():
        app = make_app(verdicts=judge)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
            table = pilot.app.screen.query_one("#questions", DataTable)
            await wait_for(pilot, lambda: table.row_count == 4)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, QuestionScreen))
            await pilot.pause()
            assert len(pilot.app.screen.query(".judgment")) == 4
            assert [a.border_title for a in pilot.app.screen.query(".answer")] == ["A · A", "B · B"]

    asyncio.run(drive())
