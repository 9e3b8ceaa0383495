"""Verdicts: eval runs → the questions of one run → one question with both answers and every
judge explanation.

Reads only the catalog (the tables `openchat eval` writes); see tui/verdicts_data.py.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Checkbox, DataTable, Select, Static

from store.catalog import CatalogError
from tui.literal import cell, plain
from tui.markdown_text import with_line_breaks
from tui.verdicts_data import (
    ALL,
    VERDICT_CHOICES,
    QuestionDetail,
    Row,
    RunData,
    list_runs,
    load_question,
    load_run,
    pairwise_summary,
)
from tui.widgets.flush_markdown import FlushMarkdown
from tui.widgets.keybar import KeyBar

STYLE = {
    "win": "bold green",
    "loss": "bold red",
    "tie": "yellow",
    "error": "bold magenta",
    "incomplete": "dim",
    "correct": "bold green",
    "incorrect": "bold red",
}
FLIP = "⇄"


def styled(value: str | None) -> Text:
    if value is None:
        return Text("–", style="dim")
    return Text(value, style=STYLE.get(value, ""))


def score_text(value: str) -> Text:
    if value == "error":
        return styled(value)
    score = float(value)
    return Text(value, style="bold green" if score >= 8 else "red" if score < 4 else "yellow")


class RunsScreen(Screen):
    """Every judge and grade run in the catalog, newest first."""

    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("ctrl+t", "app.toggle_mode", "Chat"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("Eval runs · judge and grade runs in the catalog", id="topbar", markup=False)
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="empty", markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        table.add_columns("run", "mode", "result", "models", "judge", "Qs", "created")
        self.action_refresh()
        table.focus()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear()
        runs = list_runs(self.app.catalog)
        for run in runs:
            mode = "grade" if run.kind == "grade" else run.mode
            result = run.summary if run.status in ("completed", "") else f"{run.status} · {run.summary}"
            table.add_row(
                *map(
                    cell,
                    (
                        run.id,
                        mode,
                        result,
                        run.compared,
                        run.judge or "–",
                        run.questions,
                        run.created_at.replace("T", " "),
                    ),
                ),
                key=run.id,
            )
        empty = self.query_one("#empty", Static)
        empty.display = not runs
        table.display = bool(runs)
        if not runs:
            empty.update(
                "No judge or grade runs in the catalog yet.\n\n"
                "Answer questions with `openchat eval answer …`, judge them with "
                "`openchat eval judge …`, then come back here (ctrl+r refreshes).\n\n"
                "ctrl+t goes back to the chat."
            )
        self.query_one("#topbar", Static).update(
            f"Eval runs · {len(runs)} judge/grade run{'s' if len(runs) != 1 else ''} · enter opens one"
        )

    @on(DataTable.RowSelected, "#runs")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.open_run(str(event.row_key.value))

    def action_open(self) -> None:
        table = self.query_one("#runs", DataTable)
        if table.row_count:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
            self.open_run(str(key.value))

    def open_run(self, run_id: str) -> None:
        try:
            data = load_run(self.app.catalog, run_id)
        except CatalogError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.push_screen(RunScreen(data))


class RunScreen(Screen):
    """The questions of one run, with filters."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("f", "focus_filters", "Filters"),
        Binding("d", "toggle_disagreements", "Disagreements"),
        Binding("ctrl+t", "app.toggle_mode", "Chat"),
    ]

    def __init__(self, data: RunData) -> None:
        super().__init__()
        self.data = data
        self.rows: list[Row] = []

    def compose(self) -> ComposeResult:
        yield Static(self.header_text(), id="topbar", markup=False)
        with Horizontal(id="filters"):
            yield Select(
                [("all categories", ALL)] + [(plain(c), c) for c in self.data.categories],
                value=ALL,
                allow_blank=False,
                id="category",
            )
            yield Select(
                [("all verdicts", ALL)] + [(v, v) for v in VERDICT_CHOICES[self.data.mode]],
                value=ALL,
                allow_blank=False,
                id="verdict",
            )
            label = "flipped on swap" if self.data.mode == "pairwise" else "disagreements"
            yield Checkbox(f"only {label}", id="disagree")
        yield DataTable(id="questions", cursor_type="row", zebra_stripes=True)
        yield Static("", id="count", markup=False)
        yield KeyBar()

    def header_text(self) -> str:
        run, d = self.data.run, self.data
        if d.mode == "pairwise":
            what = f"pairwise · A={d.model_a} vs B={d.model_b}"
        elif d.mode == "single":
            what = f"single · {d.model_a}"
        else:
            what = f"grade · {d.model_a}"
        judge = f" · judge {run['model']}" if run.get("model") and d.mode != "exact" else ""
        return f"{run['id']} · {what}{judge}"

    def on_mount(self) -> None:
        table = self.query_one("#questions", DataTable)
        cols = ["question"]
        if self.data.multi_turn:
            cols.append("turn")
        cols.append("category")
        if self.data.mode == "pairwise":
            cols += ["AB", "BA", "result", "swap"]
        elif self.data.mode == "single":
            cols += ["score", "verdicts"]
        else:
            cols += ["verdict", "answer", "expected"]
        table.add_columns(*cols)
        self.refill()
        table.focus()

    def refill(self) -> None:
        table = self.query_one("#questions", DataTable)
        category = self.query_one("#category", Select).value
        verdict = self.query_one("#verdict", Select).value
        only = self.query_one("#disagree", Checkbox).value
        self.rows = self.data.filtered(str(category), str(verdict), only)
        table.clear()
        for row in self.rows:
            cells: list = [row.question_id]
            if self.data.multi_turn:
                cells.append(str(row.turn))
            cells.append(row.category or "–")
            if self.data.mode == "pairwise":
                cells += [
                    styled(row.order_verdict("AB")),
                    styled(row.order_verdict("BA")),
                    styled(row.outcome),
                    Text(f"{FLIP} flip", style="bold magenta") if row.flipped else Text(""),
                ]
            elif self.data.mode == "single":
                cells += [
                    score_text(row.outcome),
                    Text(", ".join(str(j.get("verdict")) for j in row.judgments), style="dim"),
                ]
            else:
                j = row.judgments[-1]
                meta = j.get("meta") if isinstance(j.get("meta"), dict) else {}
                cells += [styled(row.outcome), _short(j.get("raw")), _short(meta.get("expected"))]
            table.add_row(*map(cell, cells), key=f"{row.question_id}\x00{row.turn}")
        total = len(self.data.rows)
        flips = sum(r.flipped for r in self.data.rows)
        text = f"{len(self.rows)} of {total} rows · enter opens a question"
        if self.data.mode == "pairwise":  # the run's counts per pair, as `eval report` counts them
            text = (
                f"{len(self.rows)} of {total} rows · {pairwise_summary(self.data.pair_counts)} · "
                f"{flips} flipped · enter opens"
            )
        self.query_one("#count", Static).update(text)

    @on(Select.Changed)
    @on(Checkbox.Changed)
    def filters_changed(self) -> None:
        self.refill()

    @on(DataTable.RowSelected, "#questions")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        if self.rows:
            self.app.push_screen(QuestionScreen(self.data, self.rows, event.cursor_row))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_focus_filters(self) -> None:
        self.query_one("#category", Select).focus()

    def action_toggle_disagreements(self) -> None:
        box = self.query_one("#disagree", Checkbox)
        box.value = not box.value


def _short(value, width: int = 24) -> str:
    if value is None:
        return "–"
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


class QuestionScreen(Screen):
    """One question: its turns, both answers side by side, each judge explanation."""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("n", "step(1)", "Next"),
        Binding("p", "step(-1)", "Previous"),
        Binding("ctrl+t", "app.toggle_mode", "Chat"),
    ]

    def __init__(self, data: RunData, rows: list[Row], index: int) -> None:
        super().__init__()
        self.data = data
        # One entry per question (rows are per question and turn).
        seen: list[str] = []
        for row in rows:
            if row.question_id not in seen:
                seen.append(row.question_id)
        self.questions = seen
        current = rows[index].question_id if rows else None
        self.index = seen.index(current) if current in seen else 0

    def compose(self) -> ComposeResult:
        yield Static("", id="topbar", markup=False)
        yield VerticalScroll(id="detail")
        yield KeyBar()

    async def on_mount(self) -> None:
        await self.show()

    async def show(self) -> None:
        qid = self.questions[self.index]
        detail = load_question(self.app.catalog, self.data, qid)
        rows = [r for r in self.data.rows if r.question_id == qid]
        flags = []
        if any(r.flipped for r in rows):
            flags.append(f"{FLIP} flipped on swap")
        if any(r.has_error for r in rows):
            flags.append("unparsed verdict")
        self.query_one("#topbar", Static).update(
            f"Question {qid} · {detail.category or 'no category'} · {self.index + 1}/"
            f"{len(self.questions)}" + (" · " + " · ".join(flags) if flags else "")
        )
        container = self.query_one("#detail", VerticalScroll)
        await container.remove_children()
        await container.mount_all(list(self.build(detail, rows)))
        container.scroll_home(animate=False)
        container.focus()

    def build(self, detail: QuestionDetail, rows: list[Row]):
        d = self.data
        question = Vertical(classes="section")
        question.border_title = "question"
        turns = detail.turns or ["(question text not in the catalog)"]
        parts = []
        for i, text in enumerate(turns, 1):
            parts.append(f"**Turn {i}.** {with_line_breaks(text)}" if len(turns) > 1 else with_line_breaks(text))
        if detail.reference:
            parts.append("**Reference:** " + " / ".join(detail.reference))
        question.compose_add_child(FlushMarkdown("\n\n".join(parts)))
        yield question

        answers = Horizontal(classes="answers")
        columns = [(f"A · {d.model_a}", detail.answer_a)]
        if d.mode == "pairwise":
            columns.append((f"B · {d.model_b}", detail.answer_b or []))
        for title, turns_ in columns:
            col = Vertical(classes="answer")
            col.border_title = plain(title)
            if not turns_:
                text = "(no answer stored)"
            elif len(turns_) == 1:
                text = with_line_breaks(turns_[0])
            else:
                text = "\n\n".join(f"**Turn {i}.**  \n{with_line_breaks(t)}" for i, t in enumerate(turns_, 1))
            col.compose_add_child(FlushMarkdown(text))
            answers.compose_add_child(col)
        yield answers

        for j in detail.judgments:
            box = Vertical(classes="judgment")
            box.border_title = plain(self.judgment_title(j))
            verdict = self.verdict_line(j)
            box.border_subtitle = plain(verdict.plain)
            box.compose_add_child(Static(verdict, classes="verdict"))
            box.compose_add_child(Static(j.get("raw") or "(no text)", markup=False, classes="raw"))
            if not j.get("parse_ok", 1):
                box.add_class("-error")
            yield box

    def judgment_title(self, j: dict) -> str:
        bits = [f"turn {j.get('turn') or 1}"]
        if j.get("mode") == "pairwise":
            order = j.get("order") or "AB"
            bits.append(f"{order} ({'A' if order == 'AB' else 'B'} shown first)")
        if j.get("judge_model"):
            bits.append(str(j["judge_model"]))
        if j.get("prompt_name"):
            bits.append(str(j["prompt_name"]))
        return " · ".join(bits)

    def verdict_line(self, j: dict) -> Text:
        verdict = j.get("verdict")
        mode = j.get("mode")
        d = self.data
        if verdict == "error" or not j.get("parse_ok", 1):
            return Text("verdict: could not be parsed (raw text below)", style="bold magenta")
        if mode == "pairwise":
            if verdict == "A":
                return Text(f"verdict: A — {d.model_a} wins", style="bold green")
            if verdict == "B":
                return Text(f"verdict: B — {d.model_b} wins", style="bold red")
            return Text("verdict: tie", style="yellow")
        if mode == "exact":
            meta = j.get("meta") if isinstance(j.get("meta"), dict) else {}
            how = f" via {meta['method']}" if meta.get("method") else ""
            return Text(
                f"{verdict}: answered {j.get('raw')!s}, expected {meta.get('expected')!s}{how}",
                style=STYLE.get(str(verdict), ""),
            )
        score = j.get("score")
        return Text(f"score: {score:g}/10" if score is not None else f"verdict: {verdict}", style="bold")

    async def action_step(self, delta: int) -> None:
        index = self.index + delta
        if 0 <= index < len(self.questions):
            self.index = index
            await self.show()
        else:
            self.notify("No more questions in this list." if delta > 0 else "This is the first.", timeout=2)

    def action_back(self) -> None:
        self.app.pop_screen()
