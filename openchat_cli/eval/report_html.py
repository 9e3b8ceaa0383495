"""`openchat eval report … --html OUT.html`: the terminal report as one static, self-contained page.

The numbers are the ones `build_report` computed (eval/report.py), drawn as plotly charts and
repeated in tables; below them a verdict browser (runs → questions with flip markers → the
question, both answers side by side and every judge explanation) reads the same catalog rows the
TUI's verdicts screen reads, through store/ only, with pairs combined by store/verdicts.py.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from openchat_cli.eval.report import _ci, _num, _pct
from openchat_cli.eval.summaries import (
    GradeSummary,
    Interval,
    LoglikSummary,
    PairwiseSummary,
    PercentOfBaseline,
    Report,
    SingleSummary,
    SuiteCell,
)
from openchat_cli.html_page import figure_div, page, table, write_page
from store.catalog import Catalog, CatalogError
from store.verdicts import pairs_from

OUTCOME = {"A": "win", "B": "loss", "tie": "tie"}
MAX_BROWSED_TEXT = 20_000  # characters of one answer or judge explanation kept in the page

# A summary the page draws a bar or a row for.
Shown = Union[SingleSummary, PairwiseSummary, PercentOfBaseline, GradeSummary, LoglikSummary]


def _who(s: Shown) -> str:
    if isinstance(s, PercentOfBaseline):
        return f"{s.model} vs {s.baseline} ({s.single_run})"
    text = str(s.model) + (f" vs {s.baseline}" if isinstance(s, PairwiseSummary) and s.baseline_id else "")
    return f"{text} ({s.run_id})"


def _with_ci(value: str, ci: str) -> str:
    return value if ci == "-" else f"{value}\n{ci}"


def _error(value: float | None, ci: Interval | None, scale: float) -> tuple[float | None, float | None]:
    """Plotly's asymmetric error bar lengths (above, below) for a value and its CI."""
    if value is None or not ci:
        return None, None
    return (ci.high - value) * scale, (value - ci.low) * scale


# -- charts -------------------------------------------------------------------------------------


def _bars_with_ci(
    title: str,
    runs: Sequence[Shown],
    metrics: list[tuple[str, str, str]],
    scale: float,
    axis: str,
    reference: float | None = None,
):
    """Horizontal grouped bars (one group per run, one bar per metric: a (legend name, value
    attribute, CI attribute) triple) with CI whiskers."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [_who(s) for s in runs]
    for name, key, ci_key in metrics:
        values = [None if getattr(s, key) is None else getattr(s, key) * scale for s in runs]
        errors = [_error(getattr(s, key), getattr(s, ci_key), scale) for s in runs]
        fig.add_bar(
            name=name,
            y=labels,
            x=values,
            orientation="h",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [e[0] for e in errors],
                "arrayminus": [e[1] for e in errors],
            },
            hovertemplate="%{y}<br>" + name + ": %{x:.2f}<extra></extra>",
        )
    if reference is not None:
        fig.add_vline(x=reference, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title=axis,
        legend_orientation="h",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis_automargin=True,
    )
    return fig


def _by_category(
    title: str,
    runs: Sequence[SingleSummary | PairwiseSummary | GradeSummary],
    scale: float,
    axis: str,
    reference: float | None = None,
):
    import plotly.graph_objects as go

    categories = sorted({c for s in runs for c in s.categories})
    fig = go.Figure()
    for s in runs:
        fig.add_bar(
            name=_who(s),
            x=categories,
            y=[None if (v := s.categories.get(c)) is None else v * scale for c in categories],
        )
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=title,
        barmode="group",
        yaxis_title=axis,
        legend_orientation="h",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def _reliability(pairwise: list[PairwiseSummary]):
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [_who(p) for p in pairwise]
    for name, key in (
        ("flipped on swap", "flip_rate"),
        ("first shown wins", "first_position_win_rate"),
        ("longer answer wins", "longer_answer_win_rate"),
        ("parse failures", "parse_failure_rate"),
    ):
        fig.add_bar(
            name=name,
            y=labels,
            orientation="h",
            x=[None if (v := getattr(p.reliability, key)) is None else 100 * v for p in pairwise],
        )
    fig.add_vline(x=50, line_dash="dash", line_color="grey")
    fig.update_layout(
        title="Judge reliability (50% = no position or length bias)",
        barmode="group",
        xaxis_title="%",
        xaxis_range=[0, 100],
        legend_orientation="h",
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        yaxis_automargin=True,
    )
    return fig


def _height(rows: int) -> int:
    return 160 + 60 * rows


def charts_and_tables(report: Report) -> list[str]:
    """HTML sections: each chart followed by the table of the same numbers."""
    sections: list[str] = []
    n = 0

    def chart(fig, height: int) -> str:
        nonlocal n
        n += 1
        return figure_div(fig, f"chart-{n}", height=height)

    single = report.single
    if single:
        max_turn = max((t for s in single for t in s.turns), default=1)
        rows = [
            [
                _who(s),
                *[_num(s.turns.get(t)) for t in range(1, max_turn + 1)],
                _with_ci(_num(s.average), _ci(s.average_ci)),
                s.questions,
                f"{s.parse_failures}/{s.judgments} ({_pct(s.reliability.parse_failure_rate)})",
            ]
            for s in single
        ]
        sections.append(
            "<h2>MT-bench-style scores (1-10, single-answer grading)</h2>"
            + chart(
                _bars_with_ci("Average score, 95% CI", single, [("average", "average", "average_ci")], 1.0, "score"),
                _height(len(single)),
            )
            + table(
                [
                    "model",
                    *[f"turn {t}" for t in range(1, max_turn + 1)],
                    "average (95% CI)",
                    "questions",
                    "parse failures",
                ],
                rows,
                table_id="single-table",
            )
            + chart(_by_category("Score by category", single, 1.0, "score"), 380)
        )
    pob = report.percent_of_baseline
    if pob:
        rows = [[_who(p), _with_ci(f"{p.percent:.1f}%", _ci(p.percent_ci, digits=1)), p.units] for p in pob]
        sections.append(
            "<h2>Percent of baseline score</h2>"
            + chart(
                _bars_with_ci(
                    "% of baseline, 95% CI", pob, [("% of baseline", "percent", "percent_ci")], 1.0, "%", reference=100
                ),
                _height(len(pob)),
            )
            + table(["model", "% of baseline (95% CI)", "rated turns"], rows)
        )
    pairwise = report.pairwise
    if pairwise:
        rows = [
            [
                _who(p) + f"\njudge {p.judge_model}",
                f"{p.win}/{p.loss}/{p.tie}",
                _pct(p.win_rate),
                _with_ci(_pct(p.adjusted_win_rate), _ci(p.adjusted_win_rate_ci, 100, 1)),
                _with_ci(_pct(p.alpaca_eval_win_rate), _ci(p.alpaca_eval_win_rate_ci, 100, 1)),
                _with_ci(_pct(p.lc_win_rate), _ci(p.lc_win_rate_ci, 100, 1)),
            ]
            for p in pairwise
        ]
        rel_rows = [
            [
                _who(p),
                f"{r.flipped}/{r.swapped_pairs} ({_pct(r.flip_rate)})",
                f"{_pct(r.first_position_win_rate)} of {r.decisive}",
                f"{_pct(r.longer_answer_win_rate)} of {r.decided_with_length_difference}",
                f"{r.parse_failures}/{r.judgments} ({_pct(r.parse_failure_rate)})",
            ]
            for p in pairwise
            for r in [p.reliability]
        ]
        sections.append(
            "<h2>Pairwise win rates (both orders per pair, disagreement = tie)</h2>"
            + chart(
                _bars_with_ci(
                    "Win rates, 95% CI",
                    pairwise,
                    [
                        ("adjusted", "adjusted_win_rate", "adjusted_win_rate_ci"),
                        ("AlpacaEval", "alpaca_eval_win_rate", "alpaca_eval_win_rate_ci"),
                        ("length-controlled", "lc_win_rate", "lc_win_rate_ci"),
                    ],
                    100.0,
                    "%",
                    reference=50,
                ),
                _height(3 * len(pairwise)),
            )
            + table(
                [
                    "comparison",
                    "win/loss/tie",
                    "win rate",
                    "adjusted win rate (95% CI)",
                    "AlpacaEval win rate",
                    "length-controlled",
                ],
                rows,
                table_id="pairwise-table",
            )
            + chart(_by_category("Adjusted win rate by category", pairwise, 100.0, "%", reference=50), 380)
            + "<h2>Judge reliability</h2>"
            + chart(_reliability(pairwise), _height(4 * len(pairwise)))
            + table(
                ["comparison", "flipped on swap", "first shown wins", "longer answer wins", "parse failures"],
                rel_rows,
                table_id="reliability-table",
            )
        )
    grade = report.grade
    if grade:
        rows = [
            [
                _who(g),
                _with_ci(_pct(g.accuracy), _ci(g.accuracy_ci, 100, 1)),
                g.correct,
                g.graded,
                f"{g.no_answer} ({_pct(g.no_answer_rate)})",
            ]
            for g in grade
        ]
        sections.append(
            "<h2>Accuracy (exact-answer grading)</h2>"
            + chart(
                _bars_with_ci("Accuracy, 95% CI", grade, [("accuracy", "accuracy", "accuracy_ci")], 100.0, "%"),
                _height(len(grade)),
            )
            + table(
                ["model", "accuracy (95% CI)", "correct", "graded", "no answer found"], rows, table_id="grade-table"
            )
            + chart(_by_category("Accuracy by category", grade, 100.0, "%"), 380)
        )
        if any(g.suite for g in grade):
            sections.append(_suite_tables(grade))
    loglik = report.loglik
    if loglik:
        rows = [
            [
                _who(r),
                _with_ci(_pct(r.acc), _ci(r.acc_ci, 100, 1)),
                _with_ci(_pct(r.acc_norm), _ci(r.acc_norm_ci, 100, 1)),
                f"{r.scored or 0}/{r.questions or 0}",
                r.task_format or "-",
            ]
            for r in loglik
        ]
        sections.append(
            "<h2>Multiple choice by log-likelihood</h2>"
            + chart(
                _bars_with_ci(
                    "Accuracy, 95% CI",
                    loglik,
                    [("acc", "acc", "acc_ci"), ("acc_norm", "acc_norm", "acc_norm_ci")],
                    100.0,
                    "%",
                ),
                _height(2 * len(loglik)),
            )
            + table(["model", "acc (95% CI)", "acc_norm (95% CI)", "scored", "format"], rows)
        )
    return sections


def _suite_cell(cell: SuiteCell | None) -> str:
    if not cell:
        return "-"
    text = f"{_pct(cell.accuracy)}\nunmatched {_pct(cell.unmatched)}"
    if cell.lenient_accuracy is not None:
        text += f"\nlenient {_pct(cell.lenient_accuracy)}"
    return text


def _suite_tables(grades: list[GradeSummary]) -> str:
    """The suite tables of the terminal report: per task type, then per task (grade runs
    without a suite are left out)."""
    suites = [(g, g.suite) for g in grades if g.suite is not None]
    types = sorted({t for _, suite in suites for t in suite.task_types})
    parts = [
        "<h2>Suite accuracy by task type (reference rules)</h2>",
        table(
            ["task type", *[_who(g) for g, _ in suites]],
            [[t, *[_suite_cell(suite.task_types.get(t)) for _, suite in suites]] for t in types],
            table_id="suite-table",
        ),
    ]
    for t in types:
        tasks = sorted({n for _, suite in suites for n in suite.tasks if n.rpartition("/")[0] == t})
        if len(tasks) > 1:
            parts += [
                f"<h3>{html.escape(t)} by task</h3>",
                table(
                    ["task", *[_who(g) for g, _ in suites]],
                    [[n.rpartition("/")[2], *[_suite_cell(suite.tasks.get(n)) for _, suite in suites]] for n in tasks],
                ),
            ]
    return "".join(parts)


# -- the verdict browser's data -----------------------------------------------------------------


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_BROWSED_TEXT else text[:MAX_BROWSED_TEXT] + " …[cut]"


def _turns(value: Any) -> list[str]:
    if value is None:
        return []
    return [_clip(v) for v in value] if isinstance(value, list) else [_clip(value)]


def _label(cat: Catalog, eval_id: str | None) -> str | None:
    if not eval_id:
        return None
    try:
        row = cat.get(eval_id)
    except CatalogError:
        return eval_id
    return row.get("name") or row.get("model") or eval_id


def _row_outcome(mode: str, judgments: list[dict[str, Any]]) -> tuple[str, bool]:
    """(outcome shown in the questions list, flipped on swap) for one (question, turn)."""
    if mode == "pairwise":
        pair = pairs_from(judgments)[0]
        if pair.verdict is not None:
            return OUTCOME[pair.verdict], pair.inconsistent
        return ("error" if pair.status == "unparsed" else "incomplete"), False
    if mode == "single":
        scores = [float(j["score"]) for j in judgments if j.get("parse_ok") and j.get("score") is not None]
        return (f"{sum(scores) / len(scores):g}" if scores else "error"), False
    verdicts = {j.get("verdict") for j in judgments}
    return ("incorrect" if "incorrect" in verdicts else "correct" if "correct" in verdicts else "error"), False


def browser_data(cat: Catalog, run_ids: list[str]) -> dict[str, Any]:
    """Runs, their (question, turn) rows with every judgment, and the questions with both answers."""
    runs, questions = [], {}
    for run_id in run_ids:
        run = cat.get(run_id)
        if run.get("kind") not in ("judge", "grade"):
            continue
        judgments = cat.judgments(run_id, by_unit=True)
        mode = "exact" if run["kind"] == "grade" else (run.get("config") or {}).get("mode") or "single"
        answer_a, answer_b = run.get("parent_id"), run.get("baseline_id")
        categories = cat.question_categories(answer_a) if answer_a else {}
        units: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for j in judgments:
            units.setdefault((str(j["question_id"]), int(j.get("turn") or 1)), []).append(j)
        rows = []
        for (qid, turn), found in units.items():
            outcome, flipped = _row_outcome(mode, found)
            rows.append(
                {
                    "question_id": qid,
                    "turn": turn,
                    "category": categories.get(qid) or "",
                    "outcome": outcome,
                    "flipped": flipped,
                    "judgments": [
                        {
                            "order": j.get("order"),
                            "verdict": j.get("verdict"),
                            "score": j.get("score"),
                            "parse_ok": bool(j.get("parse_ok")),
                            "judge": j.get("judge_model"),
                            "prompt": j.get("prompt_name"),
                            "text": _clip(j.get("raw")),
                        }
                        for j in found
                    ],
                }
            )
        rows.sort(
            key=lambda r: (
                (0, int(r["question_id"]), "") if r["question_id"].isdigit() else (1, 0, r["question_id"]),
                r["turn"],
            )
        )
        for qid in {r["question_id"] for r in rows}:
            key = f"{answer_a}|{answer_b}|{qid}"
            if key in questions:
                continue
            question = (cat.question(answer_a, qid) if answer_a else None) or {}
            a = cat.answer(answer_a, qid) if answer_a else None
            b = cat.answer(answer_b, qid) if answer_b else None
            questions[key] = {
                "turns": _turns(question.get("turns")),
                "reference": _turns(question.get("reference")),
                "a": _turns(a["turns"]) if a else [],
                "b": _turns(b["turns"]) if b else None,
            }
        runs.append(
            {
                "id": run_id,
                "mode": mode,
                "judge": run.get("model"),
                "answer_a": answer_a,
                "answer_b": answer_b,
                "model_a": _label(cat, answer_a),
                "model_b": _label(cat, answer_b),
                "rows": rows,
            }
        )
    return {"runs": runs, "questions": questions}


BROWSER_HTML = """
<h2>Verdict browser</h2>
<div id="browser">
  <div class="pane"><h3>Runs</h3><ul id="runs"></ul></div>
  <div class="pane"><h3>Questions <label><input type="checkbox" id="only-flips"> only flipped</label></h3>
    <table id="questions"><thead><tr><th>question</th><th>turn</th><th>category</th><th>result</th><th>flip</th></tr>
    </thead><tbody></tbody></table></div>
  <div class="pane wide" id="detail"><p class="hint">Pick a question.</p></div>
</div>
"""

BROWSER_CSS = """
#browser { display: grid; grid-template-columns: 260px 360px 1fr; gap: 12px; align-items: start; }
.pane { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; max-height: 80vh; overflow: auto; }
.pane h3 { margin: 0 0 6px; font-size: 14px; }
#runs { list-style: none; margin: 0; padding: 0; }
#runs li { padding: 4px 6px; border-radius: 4px; cursor: pointer; font-size: 13px; }
#runs li.active, #questions tr.active { background: #ddf4ff; }
#questions { margin: 0; width: 100%; }
#questions tbody tr { cursor: pointer; }
.flip { color: #bc4c00; font-weight: bold; }
.win, .correct { color: #1a7f37; } .loss, .incorrect { color: #cf222e; } .error, .incomplete { color: #8c959f; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.answers > div, .judgment { border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 8px; }
.judgment { margin-top: 8px; }
.judgment .head { font-weight: bold; font-size: 12px; color: #57606a; }
"""

# Our own small script: every text goes in through textContent (answers and judge text are data).
BROWSER_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text); return e; };
  let run = null;
  function showRuns() {
    const list = document.getElementById("runs");
    data.runs.forEach((r, i) => {
      const li = el("li", "", r.id + " · " + r.mode + " · " + r.model_a + (r.model_b ? " vs " + r.model_b : "")
                    + (r.judge ? " · judge " + r.judge : ""));
      li.dataset.run = r.id;
      li.addEventListener("click", () => pickRun(i));
      list.append(li);
    });
    if (data.runs.length) pickRun(0);
  }
  function pickRun(i) {
    run = data.runs[i];
    document.querySelectorAll("#runs li").forEach((li, j) => li.classList.toggle("active", i === j));
    showQuestions();
    document.getElementById("detail").replaceChildren(el("p", "hint", "Pick a question."));
  }
  function showQuestions() {
    const only = document.getElementById("only-flips").checked;
    const body = document.querySelector("#questions tbody");
    body.replaceChildren();
    run.rows.forEach((row) => {
      if (only && !row.flipped) return;
      const tr = el("tr");
      tr.dataset.question = row.question_id;
      tr.append(el("td", "", row.question_id), el("td", "", row.turn), el("td", "", row.category),
                el("td", row.outcome, row.outcome), el("td", "flip", row.flipped ? "⇄" : ""));
      if (row.flipped) tr.title = "the verdict changed when the answers swapped places";
      tr.addEventListener("click", () => {
        body.querySelectorAll("tr").forEach((t) => t.classList.remove("active"));
        tr.classList.add("active");
        showDetail(row);
      });
      body.append(tr);
    });
  }
  function turnsBlock(title, turns) {
    const box = el("div");
    box.append(el("h4", "", title));
    (turns || []).forEach((t, i) => { if (turns.length > 1) box.append(el("div", "head", "turn " + (i + 1)));
                                      box.append(el("div", "text", t)); });
    if (!turns || !turns.length) box.append(el("div", "hint", "(none)"));
    return box;
  }
  function showDetail(row) {
    const q = data.questions[run.answer_a + "|" + run.answer_b + "|" + row.question_id] || {};
    const detail = document.getElementById("detail");
    detail.replaceChildren(el("h3", "", "Question " + row.question_id + " · turn " + row.turn
                              + (row.category ? " · " + row.category : "")));
    detail.append(turnsBlock("Question", q.turns));
    if (q.reference && q.reference.length) detail.append(turnsBlock("Reference", q.reference));
    const answers = el("div", "answers");
    answers.append(turnsBlock("A: " + run.model_a, q.a));
    if (q.b) answers.append(turnsBlock("B: " + run.model_b, q.b));
    detail.append(answers);
    row.judgments.forEach((j) => {
      const box = el("div", "judgment");
      const bits = [j.order ? "order " + j.order : null, "verdict " + j.verdict,
                    j.score !== null && j.score !== undefined ? "score " + j.score : null,
                    j.parse_ok ? null : "unparsed", j.judge ? "judge " + j.judge : null].filter(Boolean);
      box.append(el("div", "head", bits.join(" · ")), el("div", "text", j.text));
      detail.append(box);
    });
  }
  document.getElementById("only-flips").addEventListener("change", () => { if (run) showQuestions(); });
  showRuns();
  document.body.dataset.ready = "1";
})();
"""


def run_ids(report: Report) -> list[str]:
    """The runs whose verdicts the browser shows."""
    return [s.run_id for s in (*report.single, *report.pairwise, *report.grade)]


def write_report_html(cat: Catalog, report: Report, path: Path | str) -> Path:
    """The whole page for a report built by `build_report`; returns the path written."""
    sections = charts_and_tables(report)
    body = "\n".join(sections) + BROWSER_HTML
    runs = len(run_ids(report)) + len(report.loglik)
    document = page(
        "openchat eval report",
        body,
        css=BROWSER_CSS,
        data=browser_data(cat, run_ids(report)),
        subtitle=f"{runs} run{'s' if runs != 1 else ''} · rates with 95% bootstrap CIs over questions",
        scripts=[BROWSER_JS],
    )
    return write_page(path, document)
