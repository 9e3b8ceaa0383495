"""Reading eval runs, answers and judge verdicts from the catalog for the verdicts screens.

Pure functions over a `Catalog`, so they are tested without a terminal. The layout of the
tables is the one `openchat eval` writes (see store/migrations.py m002):

- judge runs (kind 'judge'): judgments with mode 'single' (score 1-10) or 'pairwise'
  (verdict 'A'|'B'|'tie'|'error' mapped back to the models: 'A' = the run in answer_run_id
  won, whatever the display order; order 'AB' or 'BA');
- grade runs (kind 'grade'): judgments with mode 'exact' (verdict 'correct'|'incorrect'|'error').

Pairwise results and counts come from store/verdicts.py, the read model `openchat eval report`
uses too: a (question, turn) wins only when both orders say so, disagreeing orders make a tie
("flipped on swap"), and a pair with an unparseable or missing order has no result.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from store.catalog import Catalog, CatalogError
from store.verdicts import Pair, PairCounts, count, load_pairs, pairs_from

# What a pairwise verdict means for model A, the judged run.
OUTCOME = {"A": "win", "B": "loss", "tie": "tie"}
ALL = "all"


@dataclass
class RunSummary:
    id: str
    kind: str  # judge | grade
    mode: str  # single | pairwise | exact
    judge: str
    model_a: str
    model_b: str | None
    questions: int
    judgments: int
    status: str
    created_at: str
    summary: str

    @property
    def compared(self) -> str:
        return f"{self.model_a} vs {self.model_b}" if self.model_b else self.model_a


@dataclass
class Row:
    """One (question, turn) of a run, with every verdict the judge gave on it."""

    question_id: str
    turn: int
    category: str
    judgments: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "pairwise"

    # -- pairwise --------------------------------------------------------------------------
    @property
    def pair(self) -> Pair:
        """Both orders of this (question, turn), combined by the shared rule."""
        found = pairs_from(self.judgments)
        return found[0] if found else Pair(self.question_id, self.turn, None, None)

    def order_verdict(self, order: str) -> str | None:
        """'win' / 'loss' / 'tie' / 'error' for model A in one display order, or None."""
        pair = self.pair
        verdict = pair.ab if order == "AB" else pair.ba
        return None if verdict is None else OUTCOME.get(verdict, "error")

    @property
    def flipped(self) -> bool:
        """AB and BA verdicts (same turn) differ (an unparseable verdict is no flip)."""
        return self.mode == "pairwise" and self.pair.inconsistent

    @property
    def has_error(self) -> bool:
        return any(j.get("verdict") == "error" or not j.get("parse_ok", 1) for j in self.judgments)

    @property
    def disagreement(self) -> bool:
        """Verdicts on this (question, turn) disagree: flipped on swap for pairwise, differing
        repeated verdicts otherwise."""
        if self.mode == "pairwise":
            return self.flipped
        verdicts = {str(j.get("verdict")) for j in self.judgments}
        return len(verdicts) > 1

    @property
    def scores(self) -> list[float]:
        return [float(j["score"]) for j in self.judgments if j.get("score") is not None]

    @property
    def outcome(self) -> str:
        """The row's result: win/loss/tie (pairwise, both orders combined; 'error' when an
        order is unparseable, 'incomplete' when one is missing), the mean score (single),
        correct/incorrect (exact), or 'error'."""
        if self.mode == "pairwise":
            pair = self.pair
            if pair.verdict is not None:
                return OUTCOME[pair.verdict]
            return "error" if pair.status == "unparsed" else "incomplete"
        if self.mode == "single":
            scores = self.scores
            if not scores:
                return "error"
            mean = sum(scores) / len(scores)
            return f"{mean:g}" if mean == int(mean) else f"{mean:.1f}"
        verdicts = [j.get("verdict") for j in self.judgments]
        if "correct" in verdicts and "incorrect" not in verdicts:
            return "correct"
        if "incorrect" in verdicts:
            return "incorrect"
        return "error"

    @property
    def verdict_class(self) -> str:
        """The bucket the verdict filter uses."""
        out = self.outcome
        if self.mode == "single" and out != "error":
            score = float(out)
            return "high (8-10)" if score >= 8 else "low (1-3)" if score < 4 else "mid (4-7)"
        return out


VERDICT_CHOICES = {
    "pairwise": ["win", "loss", "tie", "error", "incomplete"],
    "single": ["high (8-10)", "mid (4-7)", "low (1-3)", "error"],
    "exact": ["correct", "incorrect", "error"],
}


@dataclass
class RunData:
    run: dict[str, Any]
    mode: str
    model_a: str
    model_b: str | None
    answer_a: str | None  # answer run ids
    answer_b: str | None
    rows: list[Row]

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.rows if r.category})

    @property
    def pair_counts(self) -> PairCounts:
        """Wins, losses and ties of a pairwise run, counted as the report counts them."""
        return count(row.pair for row in self.rows if row.mode == "pairwise")

    @property
    def multi_turn(self) -> bool:
        return any(r.turn != 1 for r in self.rows)

    def filtered(self, category: str = ALL, verdict: str = ALL, only_disagreements: bool = False) -> list[Row]:
        out = []
        for row in self.rows:
            if category != ALL and row.category != category:
                continue
            if verdict != ALL and row.verdict_class != verdict:
                continue
            if only_disagreements and not row.disagreement:
                continue
            out.append(row)
        return out


def _label(cat: Catalog, eval_id: str | None) -> str:
    if not eval_id:
        return "?"
    try:
        row = cat.get(eval_id)
    except CatalogError:
        return eval_id
    return row.get("name") or row.get("model") or eval_id


def _mode_of(run: dict[str, Any], modes: Iterable[str]) -> str:
    modes = [m for m in modes if m]
    if modes:
        return modes[0]
    if run.get("kind") == "grade":
        return "exact"
    config = run.get("config") or {}
    return config.get("mode", "single") if isinstance(config, dict) else "single"


def pairwise_summary(counts: PairCounts) -> str:
    """A pairwise run in one line: results per pair (both orders combined), pairs left out."""
    text = f"win {counts.win} · loss {counts.loss} · tie {counts.tie}"
    if counts.unparsed:
        text += f" · {counts.unparsed} unparsed"
    if counts.incomplete:
        text += f" · {counts.incomplete} incomplete"
    return text


def _summary(mode: str, counts: dict[str, int], mean_score: float | None) -> str:
    total = sum(counts.values())
    if not total:
        return "no verdicts yet"
    if mode == "exact":
        ok = counts.get("correct", 0)
        graded = ok + counts.get("incorrect", 0)
        text = f"accuracy {ok / graded:.0%} ({ok}/{graded})" if graded else "no grades"
    else:
        text = f"mean {mean_score:.2f}" if mean_score is not None else "no scores"
    errors = counts.get("error", 0)
    if errors:
        text += f" · {errors} unparsed"
    return text


def list_runs(cat: Catalog) -> list[RunSummary]:
    """Judge and grade runs, newest first, with a one-line result each."""
    runs = cat.evals(("judge", "grade"))
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: {"counts": {}, "modes": [], "questions": 0, "mean": None})
    for r in cat.verdict_tallies():
        s = stats[r["eval_id"]]
        s["counts"][r["verdict"] or "error"] = s["counts"].get(r["verdict"] or "error", 0) + r["n"]
        if r["mode"] not in s["modes"]:
            s["modes"].append(r["mode"])
    for r in cat.judged_question_stats():
        stats[r["eval_id"]]["questions"] = r["q"]
        stats[r["eval_id"]]["mean"] = r["mean"]
    out = []
    for run in runs:
        s = stats[run["id"]]
        mode = _mode_of(run, s["modes"])
        summary = _summary(mode, s["counts"], s["mean"])
        if mode == "pairwise" and s["counts"]:
            summary = pairwise_summary(count(load_pairs(cat, run["id"])))
        out.append(
            RunSummary(
                id=run["id"],
                kind=run["kind"],
                mode=mode,
                judge=run.get("model") or "",
                model_a=_label(cat, run.get("parent_id")),
                model_b=_label(cat, run.get("baseline_id")) if run.get("baseline_id") else None,
                questions=s["questions"],
                judgments=sum(s["counts"].values()),
                status=run.get("status") or "",
                created_at=(run.get("created_at") or "")[:16],
                summary=summary,
            )
        )
    return out


def load_run(cat: Catalog, ref: str) -> RunData:
    """One judge/grade run with its verdicts grouped per (question, turn)."""
    run = cat.get(ref)
    if cat.table_of(run["id"]) != "evals":
        raise CatalogError(f"'{ref}' is not an eval run")
    if run.get("kind") not in ("judge", "grade"):
        raise CatalogError(f"'{run['id']}' is an {run.get('kind')} run; open a judge or grade run to see verdicts")
    judgments = cat.judgments(run["id"], by_unit=True)
    mode = _mode_of(run, [j["mode"] for j in judgments])
    answer_a = run.get("parent_id") or next((j["answer_run_id"] for j in judgments if j.get("answer_run_id")), None)
    answer_b = run.get("baseline_id") or next(
        (j["baseline_run_id"] for j in judgments if j.get("baseline_run_id")), None
    )
    categories = {}
    if answer_a:
        categories = {qid: category or "" for qid, category in cat.question_categories(answer_a).items()}
    rows: dict[tuple[str, int], Row] = {}
    for j in judgments:
        key = (j["question_id"], int(j.get("turn") or 1))
        if key not in rows:
            meta = j.get("meta") if isinstance(j.get("meta"), dict) else {}
            rows[key] = Row(
                question_id=key[0],
                turn=key[1],
                mode=mode,
                category=categories.get(key[0]) or meta.get("category") or "",
            )
        rows[key].judgments.append(j)
    ordered = sorted(rows.values(), key=lambda r: (_natural(r.question_id), r.turn))
    return RunData(
        run=run,
        mode=mode,
        model_a=_label(cat, answer_a),
        model_b=_label(cat, answer_b) if answer_b else None,
        answer_a=answer_a,
        answer_b=answer_b,
        rows=ordered,
    )


def _natural(text: str) -> tuple:
    """Sort '2' before '10' and still order non-numeric ids."""
    return (0, int(text), "") if str(text).isdigit() else (1, 0, str(text))


@dataclass
class QuestionDetail:
    question_id: str
    category: str
    turns: list[str]
    reference: list[str] | None
    answer_a: list[str]
    answer_b: list[str] | None
    judgments: list[dict[str, Any]]


def _turns(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def load_question(cat: Catalog, data: RunData, question_id: str) -> QuestionDetail:
    """The question, both answers and every verdict on it."""
    question = None
    for eval_id in (data.answer_a, data.answer_b):
        if eval_id and question is None:
            question = cat.question(eval_id, question_id)
    question = question or {}

    def answer(eval_id: str | None) -> list[str] | None:
        if not eval_id:
            return None
        found = cat.answer(eval_id, question_id)
        return _turns(found["turns"]) if found else []

    judgments = [j for r in data.rows if r.question_id == question_id for j in r.judgments]
    reference = question.get("reference")
    return QuestionDetail(
        question_id=question_id,
        category=question.get("category") or "",
        turns=_turns(question.get("turns")),
        reference=_turns(reference) if reference else None,
        answer_a=answer(data.answer_a) or [],
        answer_b=answer(data.answer_b),
        judgments=judgments,
    )
