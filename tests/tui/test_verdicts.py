"""The verdicts browser: data layer over the catalog, and the screens driven with Pilot."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from textual.widgets import Checkbox, DataTable, Select

from tests.tui import seed
from tests.tui.conftest import wait_for
from tui.screens.verdicts import QuestionScreen, RunScreen, RunsScreen
from tui.verdicts_data import ALL, list_runs, load_question, load_run


# -- data layer --------------------------------------------------------------------------------
def test_list_runs_summaries(catalog, seeded):
    runs = {r.id: r for r in list_runs(catalog)}
    assert list(runs) == [seed.GRADE, seed.SINGLE, seed.PAIRWISE]  # newest first; no answer runs
    pair = runs[seed.PAIRWISE]
    assert (pair.mode, pair.model_a, pair.model_b, pair.questions) == ("pairwise", "tiny-sft", "baseline", 5)
    # per pair, both orders combined as `eval report` combines them (see test below)
    assert pair.summary == "win 2 · loss 0 · tie 3 · 1 unparsed"
    assert runs[seed.SINGLE].summary == "mean 8.00 · 1 unparsed"
    assert runs[seed.GRADE].summary == "accuracy 50% (1/2)"


def test_pairwise_rows_flips_and_filters(catalog, seeded):
    data = load_run(catalog, seed.PAIRWISE)
    table = {
        (r.question_id, r.turn): (r.order_verdict("AB"), r.order_verdict("BA"), r.outcome, r.flipped) for r in data.rows
    }
    assert table == {
        ("81", 1): ("win", "win", "win", False),
        ("81", 2): ("win", "loss", "tie", True),
        ("82", 1): ("win", "tie", "tie", True),  # orders disagree: a tie, as the report counts it
        ("101", 1): ("win", "win", "win", False),
        ("102", 1): ("loss", "win", "tie", True),
        ("121", 1): ("tie", "error", "error", False),  # an unparseable order: no result, no flip
    }
    assert data.multi_turn and data.categories == ["coding", "math", "writing"]
    assert [(r.question_id, r.turn) for r in data.filtered(only_disagreements=True)] == [
        ("81", 2),
        ("82", 1),
        ("102", 1),
    ]
    assert [r.question_id for r in data.filtered(category="math")] == ["101", "102"]
    assert [r.question_id for r in data.filtered(category="math", verdict="tie")] == ["102"]
    assert data.filtered(verdict="win", only_disagreements=True) == []
    assert [r.question_id for r in data.filtered(verdict="tie", only_disagreements=True)] == ["81", "82", "102"]
    assert [r.question_id for r in data.filtered(verdict="error")] == ["121"]
    assert data.filtered(ALL, ALL, False) == data.rows

    detail = load_question(catalog, data, "81")
    assert detail.turns == ["Write a haiku about the sea.", "Now make it rhyme."]
    assert detail.answer_a[0].startswith("Waves fold") and detail.answer_b == seed.ANSWERS_B["81"]
    assert [(j["turn"], j["order"], j["verdict"]) for j in detail.judgments] == [
        (1, "AB", "A"),
        (1, "BA", "A"),
        (2, "AB", "A"),
        (2, "BA", "B"),
    ]


def test_pairwise_counts_match_the_report(cli, catalog, seeded, make_app):
    """One read model: the browser's results per pair add up to the report's counts, in the
    data layer, the runs list and on screen (the seeded run has agreeing, split, flipped and
    unparseable pairs)."""
    (report,) = cli("eval", "report", seed.PAIRWISE, "--json").json()["pairwise"]
    assert (report["win"], report["loss"], report["tie"], report["inconsistent"]) == (2, 0, 3, 3)
    data = load_run(catalog, seed.PAIRWISE)
    outcomes = Counter(r.outcome for r in data.rows)
    assert (outcomes["win"], outcomes["loss"], outcomes["tie"]) == (report["win"], report["loss"], report["tie"])
    assert sum(r.flipped for r in data.rows) == report["reliability"]["flipped"] == report["inconsistent"]
    assert outcomes["error"] == report["unparsed_pairs"] == 1
    counts = data.pair_counts
    assert (counts.win, counts.loss, counts.tie, counts.pairs) == (
        report["win"],
        report["loss"],
        report["tie"],
        report["pairs"],
    )
    [summary] = [r for r in list_runs(catalog) if r.id == seed.PAIRWISE]
    assert summary.summary.startswith(f"win {report['win']} · loss {report['loss']} · tie {report['tie']}")

    async def drive() -> None:
        app = make_app(verdicts=seed.PAIRWISE)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
            table = pilot.app.screen.query_one("#questions", DataTable)
            await wait_for(pilot, lambda: table.row_count == 6)
            shown = Counter(str(table.get_row_at(i)[5]) for i in range(table.row_count))
            assert (shown["win"], shown["loss"], shown["tie"]) == (report["win"], report["loss"], report["tie"])
            text = str(pilot.app.screen.query_one("#count").render())
            assert f"win {report['win']} · loss {report['loss']} · tie {report['tie']}" in text
            assert f"{report['inconsistent']} flipped" in text

    asyncio.run(drive())


def test_single_and_grade_rows(catalog, seeded):
    single = load_run(catalog, seed.SINGLE)
    assert single.mode == "single" and single.model_b is None
    assert {(r.question_id, r.turn): r.outcome for r in single.rows}["121", 1] == "error"
    assert [r.question_id for r in single.filtered(verdict="high (8-10)")] == ["81", "101", "102"]
    grade = load_run(catalog, seed.GRADE)
    assert [(r.question_id, r.outcome) for r in grade.rows] == [("101", "correct"), ("102", "incorrect")]
    detail = load_question(catalog, grade, "101")
    assert detail.reference == ["19"] and detail.answer_b is None


def test_answer_run_is_refused(catalog, seeded):
    from store.catalog import CatalogError

    with pytest.raises(CatalogError, match="judge or grade"):
        load_run(catalog, seed.ANSWER_A)


# -- screens -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_browse_a_judged_run(make_app, seeded):
    app = make_app(verdicts="")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
        runs = pilot.app.screen.query_one("#runs", DataTable)
        assert runs.row_count == 3
        await pilot.press("down", "down", "enter")  # the pairwise run (third, oldest)
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
        run_screen = pilot.app.screen
        assert run_screen.data.run["id"] == seed.PAIRWISE
        table = run_screen.query_one("#questions", DataTable)
        assert table.row_count == 6
        assert [str(c) for c in table.get_row_at(1)] == ["81", "2", "writing", "win", "loss", "tie", "⇄ flip"]

        await pilot.press("d")  # only disagreements (flipped on swap)
        await pilot.pause()
        assert run_screen.query_one("#disagree", Checkbox).value
        assert [r.question_id for r in run_screen.rows] == ["81", "82", "102"]
        run_screen.query_one("#category", Select).value = "math"
        await pilot.pause()
        assert table.row_count == 1 and "1 of 6 rows" in str(run_screen.query_one("#count").render())
        run_screen.query_one("#category", Select).value = ALL
        run_screen.query_one("#verdict", Select).value = "tie"
        await pilot.pause()
        assert [(r.question_id, r.turn) for r in run_screen.rows] == [("81", 2), ("82", 1), ("102", 1)]

        table.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, QuestionScreen))
        question = pilot.app.screen
        await pilot.pause()
        top = str(question.query_one("#topbar").render())
        assert "Question 81" in top and "flipped on swap" in top
        answers = question.query(".answer")
        assert [a.border_title for a in answers] == ["A · tiny-sft", "B · baseline"]
        judgments = question.query(".judgment")
        assert len(judgments) == 4
        assert judgments[3].border_title == "turn 2 · BA (B shown first) · judge-model · pair-v2-multi-turn"
        assert judgments[3].border_subtitle == "verdict: B — baseline wins"
        assert "Final verdict: [[A]]" in str(judgments[3].query_one(".raw").render())

        await pilot.press("n")  # next question in the filtered list
        await pilot.pause()
        assert "Question 82" in str(question.query_one("#topbar").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: pilot.app.screen is run_screen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: pilot.app.current_mode == "chat")


@pytest.mark.asyncio
async def test_open_run_by_id_grade_and_single(make_app, seeded):
    app = make_app(verdicts=seed.GRADE)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
        table = pilot.app.screen.query_one("#questions", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2)
        assert [str(c) for c in table.get_row_at(1)] == ["102", "math", "incorrect", "41", "42"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, QuestionScreen))
        await pilot.pause()
        judgment = pilot.app.screen.query_one(".judgment")
        assert judgment.border_subtitle == "correct: answered 19, expected 19 via number"
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
        runs = pilot.app.screen.query_one("#runs", DataTable)
        await pilot.press("down", "enter")  # the single-answer run
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunScreen))
        table = pilot.app.screen.query_one("#questions", DataTable)
        await wait_for(pilot, lambda: table.row_count == 6)
        assert [str(c) for c in table.get_row_at(0)][:4] == ["81", "1", "writing", "9"]
        assert runs.row_count == 3


@pytest.mark.asyncio
async def test_empty_catalog_says_what_to_do(make_app):
    app = make_app(verdicts="")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsScreen))
        assert "openchat eval judge" in str(pilot.app.screen.query_one("#empty").render())
