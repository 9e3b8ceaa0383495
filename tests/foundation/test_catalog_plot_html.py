"""`openchat catalog plot --html`: the PNG's curves as a self-contained plotly page, in a real browser."""

from __future__ import annotations

import re

import pytest

from openchat_cli.run_plot import build_figure, build_plotly_figure, run_series
from store.catalog import open_catalog
from tests.browser import browser_page
from tests.foundation.test_catalog_plot import two_runs  # noqa: F401  (the fixture)
from tests.serve.test_ui import screenshot


def test_html_holds_the_same_curves_as_the_png(two_runs):  # noqa: F811
    runs = run_series(open_catalog(), list(two_runs))
    png_lines = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for ax in build_figure(runs, ["loss", "eval_loss"]).axes
        for line in ax.get_lines()
    }
    html_traces = {t.name: (list(t.x), list(t.y)) for t in build_plotly_figure(runs, ["loss", "eval_loss"]).data}
    assert html_traces == png_lines and len(html_traces) == 3
    eval_trace = next(t for t in build_plotly_figure(runs, ["loss", "eval_loss"]).data if t.name.endswith("eval loss"))
    assert eval_trace.line.dash == "dash"
    # One panel per metric group, as the PNG.
    fig = build_plotly_figure(runs[1:], ["loss", "lr", "rewards/margins"])
    assert [fig.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in (1, 2, 3)] == ["loss", "lr", "rewards/margins"]


def test_plot_html_from_the_cli(cli, two_runs, tmp_path):  # noqa: F811
    a, b = two_runs
    out = tmp_path / "curves.html"
    result = cli("catalog", "plot", a, b, "--html", out, "--json").json()
    assert result["html"] == str(out) and result["output"] is None
    text = out.read_text()
    assert not re.search(r"<script[^>]+src=", text) and "Plotly.newPlot" in text
    said = " ".join(cli("catalog", "plot", a, "--html", tmp_path / "b.html").stdout.split())
    assert f"→ {tmp_path / 'b.html'}" in said
    assert "--html" in cli("catalog", "plot", a, expect=2).stderr


@pytest.mark.slow
def test_plot_html_in_a_browser(cli, two_runs, tmp_path):  # noqa: F811
    out = tmp_path / "curves.html"
    cli("catalog", "plot", *two_runs, "--html", out)
    with browser_page(1100, 800) as (page, errors):
        page.goto(out.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg")
        assert page.evaluate("document.getElementById('curves').data.length") == 3
        assert page.evaluate("document.getElementById('curves').data.reduce((n, t) => n + t.x.length, 0)") == 3 + 3 + 2
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 3
        screenshot(page, "catalog-plot.png")
        assert errors == []
