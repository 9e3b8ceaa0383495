"""`eval report --html`: the terminal report's numbers as one self-contained page, and the page
itself in a real headless Chromium (charts drawn, verdict browser rows, no console errors)."""

from __future__ import annotations

import json
import re

import pytest

from tests.browser import browser_page
from tests.eval.test_report import seeded  # noqa: F401  (the fixture: pairwise + single runs)
from tests.serve.test_ui import screenshot


def _page_data(text: str) -> dict:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.DOTALL)
    return json.loads(found.group(1))


def test_html_holds_the_report_numbers_offline(cli, seeded, tmp_path):  # noqa: F811
    out = tmp_path / "report.html"
    rep = cli(
        "eval",
        "report",
        seeded["pair"],
        seeded["a2"],
        seeded["b2"],
        "--baseline",
        seeded["b2"],
        "--html",
        out,
        "--json",
    ).json()
    assert rep["html"] == str(out)
    text = out.read_text()
    # Self-contained: plotly.js inlined, nothing fetched from elsewhere.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", text)
    assert "Plotly" in text and len(text) > 1_000_000
    # The same numbers as the terminal report, as its tables show them.
    assert len(rep["pairwise"]) == 1
    pairwise_table = re.search(r'<table id="pairwise-table">.*?</table>', text, re.DOTALL).group(0)
    assert "1/1/3" in pairwise_table and "20.0%" in pairwise_table and "50.0%" in pairwise_table
    reliability = re.search(r'<table id="reliability-table">.*?</table>', text, re.DOTALL).group(0)
    assert "2/5 (40.0%)" in reliability and "62.5% of 8" in reliability and "37.5% of 8" in reliability
    assert "130.0%" in text  # percent of baseline
    single = re.search(r'<table id="single-table">.*?</table>', text, re.DOTALL).group(0)
    assert "7.00" in single
    # The verdict browser's data: three runs, the pairwise one with its six questions and two flips.
    data = _page_data(text)
    assert sorted(r["id"] for r in data["runs"]) == sorted([seeded["pair"], seeded["sa"], seeded["sb"]])
    pair = next(r for r in data["runs"] if r["id"] == seeded["pair"])
    assert [r["question_id"] for r in pair["rows"]] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert [r["question_id"] for r in pair["rows"] if r["flipped"]] == ["q2", "q6"]
    assert [r["outcome"] for r in pair["rows"]] == ["win", "tie", "loss", "tie", "error", "tie"]
    assert data["questions"][f"{seeded['a']}|{seeded['b']}|q1"]["b"] == ["x" * 10]


def test_html_report_refuses_an_unwritable_path(cli, seeded, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("")
    result = cli("eval", "report", seeded["pair"], "--html", tmp_path / "file" / "r.html", expect=2)
    assert "cannot write" in result.stderr and "r.html" in result.stderr


@pytest.mark.slow
def test_html_report_in_a_browser(cli, seeded, tmp_path):  # noqa: F811
    out = tmp_path / "report.html"
    cli("eval", "report", seeded["pair"], seeded["a2"], seeded["b2"], "--html", out)
    with browser_page(1400, 900) as (page, errors):
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        charts = page.locator("main > .plotly-graph-div, main div.plotly-graph-div")
        assert charts.count() >= 5
        assert page.locator(".js-plotly-plot .main-svg").count() >= 5  # drawn, not just placed
        assert page.locator("#runs li").count() == 3
        page.click(f"#runs li[data-run='{seeded['pair']}']")
        assert page.locator("#questions tbody tr").count() == 6
        assert page.locator("#questions td.flip:text('⇄')").count() == 2
        page.check("#only-flips")
        assert page.locator("#questions tbody tr").count() == 2
        page.click("#questions tr[data-question='q2']")
        detail = page.locator("#detail")
        assert detail.locator(".judgment").count() == 2
        assert "order AB · verdict A" in detail.inner_text() and "order BA · verdict B" in detail.inner_text()
        assert detail.locator(".answers > div").count() == 2
        page.locator("h2:text('Verdict browser')").scroll_into_view_if_needed()
        screenshot(page, "eval-report.png")
        assert errors == []


def test_suite_tables_follow_the_terminal_report():
    from dataclasses import replace

    from openchat_cli.eval.report_html import charts_and_tables
    from openchat_cli.eval.summaries import GradeSummary, Interval, Report, SuiteCell, SuiteSummary

    cell = SuiteCell(questions=4, accuracy=0.75, unmatched=0.25, lenient_accuracy=1.0, lenient_unmatched=0.0)
    grade = GradeSummary(
        run_id="ev-1",
        status="completed",
        answer_id="ev-0",
        model="m",
        graded=4,
        correct=3,
        incorrect=0,
        no_answer=1,
        accuracy=0.75,
        accuracy_ci=Interval(0.5, 1.0),
        no_answer_rate=0.25,
        categories={"math": 0.75},
        methods={"suite": 4},
        suite=SuiteSummary(
            task_types={"zs/math": cell},
            tasks={"zs/math/a": cell, "zs/math/b": replace(cell, accuracy=0.5)},
        ),
    )
    report = Report(single=[], pairwise=[], percent_of_baseline=[], grade=[grade], loglik=[], reward=[])
    text = "".join(charts_and_tables(report))
    suite = re.search(r'<table id="suite-table">.*?</table>', text, re.DOTALL).group(0)
    assert "zs/math" in suite and "75.0%<br>unmatched 25.0%<br>lenient 100.0%" in suite
    assert "<h3>zs/math by task</h3>" in text and "50.0%<br>unmatched" in text
