"""The catalog lookups the stages share, typed, so SQL lives in store/ and nowhere else.

A mixin of `Catalog`: each lookup is built on `Catalog.query`/`one`/`scalar`/`exists`, which
run under the store's lock, wait out other processes' locks and report a damaged file in one
line. Callers say what they want (`cat.latest_eval("grade", parent_id=run)`), not how to get it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

# Columns an eval can be matched on in `evals()` / `latest_eval()`.
EVAL_MATCH_COLUMNS = ("parent_id", "baseline_id", "questions_hash", "endpoint", "model")

UnitKey = tuple[str, int, str]  # (question_id, turn, order) of one judge verdict


class AnswerTotals(NamedTuple):
    """Sums over the answers of one answer run."""

    answered: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_s: float | None
    truncated: int


class RunCurve(NamedTuple):
    """What a training run has recorded over its steps."""

    id: str
    status: str
    output_path: str | None
    points: list[dict[str, Any]]  # the stored curve: {step, epoch, loss, lr, …, a method's own keys}
    evals: list[tuple[int, float]]  # held-out losses by step (0: before training)


def eval_points(metrics: dict[str, Any], last_step: int | None) -> list[tuple[int, float]]:
    """Held-out losses by step from a run's metrics: eval_loss_initial (step 0),
    eval_loss_step_N (step N) and eval_loss_final (the last step)."""
    found: dict[int, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key == "eval_loss_initial":
            found[0] = float(value)
        elif key.startswith("eval_loss_step_") and key.removeprefix("eval_loss_step_").isdigit():
            found[int(key.removeprefix("eval_loss_step_"))] = float(value)
        elif key == "eval_loss_final" and last_step is not None:
            found[last_step] = float(value)
    return sorted(found.items())


class CatalogReads:
    """Typed read helpers; `Catalog` provides the primitives they use."""

    # provided by Catalog
    def query(self, sql: str, params: Iterable[Any] | dict | None = None) -> list[dict[str, Any]]: ...
    def one(self, sql: str, params: Iterable[Any] | dict | None = None) -> dict[str, Any] | None: ...
    def scalar(self, sql: str, params: Iterable[Any] | dict | None = None) -> Any: ...
    def exists(self, sql: str, params: Iterable[Any] | dict | None = None) -> bool: ...

    # -- eval runs ---------------------------------------------------------------------------
    def evals(
        self,
        kinds: str | Sequence[str],
        *,
        newest_first: bool = True,
        involving: str | None = None,
        **match: str | None,
    ) -> list[dict[str, Any]]:
        """Eval runs of `kinds`, newest first (or oldest first), whose columns equal `match`
        (None matches a column left empty); `involving` keeps those judging or grading that
        run, as the judged run (parent_id) or as the baseline."""
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = set(match) - set(EVAL_MATCH_COLUMNS)
        if unknown:
            raise TypeError(f"evals() cannot match on {sorted(unknown)}")
        where = [f"kind in ({', '.join('?' * len(kinds))})"]
        params: list[Any] = list(kinds)
        for column, value in match.items():
            if value is None:
                where.append(f"coalesce({column}, '') = ''")
            else:
                where.append(f"{column} = ?")
                params.append(value)
        if involving is not None:
            where.append("(parent_id = ? or baseline_id = ?)")
            params += [involving, involving]
        order = "desc" if newest_first else "asc"
        return self.query(
            f"select * from evals where {' and '.join(where)} order by created_at {order}, rowid {order}", params
        )

    def latest_eval(self, kinds: str | Sequence[str], **match: str | None) -> dict[str, Any] | None:
        """The newest eval run `evals(kinds, **match)` finds, or None."""
        found = self.evals(kinds, **match)
        return found[0] if found else None

    # -- questions ---------------------------------------------------------------------------
    def questions(self, eval_id: str) -> list[dict[str, Any]]:
        """The questions of a run, in the order they were stored."""
        return self.query("select * from questions where eval_id = ? order by rowid", [eval_id])

    def question(self, eval_id: str, question_id: str) -> dict[str, Any] | None:
        return self.one("select * from questions where eval_id = ? and question_id = ?", [eval_id, question_id])

    def question_categories(self, eval_id: str) -> dict[str, str | None]:
        """question_id -> category (None when the question has none) for one run."""
        return {
            r["question_id"]: r["category"]
            for r in self.query("select question_id, category from questions where eval_id = ?", [eval_id])
        }

    # -- answers -----------------------------------------------------------------------------
    def answers(self, eval_id: str) -> list[dict[str, Any]]:
        """The answers of a run (in the order SQLite finds them: callers key them by question)."""
        return self.query("select * from answers where eval_id = ?", [eval_id])

    def answer(self, eval_id: str, question_id: str) -> dict[str, Any] | None:
        return self.one("select * from answers where eval_id = ? and question_id = ?", [eval_id, question_id])

    def answered_ids(self, eval_id: str) -> set[str]:
        """The questions a run holds an answer for (what a resumed run skips)."""
        return {r["question_id"] for r in self.query("select question_id from answers where eval_id = ?", [eval_id])}

    def has_answer(self, eval_id: str, question_id: str) -> bool:
        return self.exists("select 1 from answers where eval_id = ? and question_id = ?", [eval_id, question_id])

    def answer_totals(self, eval_id: str) -> AnswerTotals:
        row = self.one(
            "select count(*) as answered, coalesce(sum(prompt_tokens), 0) as prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) as completion_tokens, "
            "avg(latency_s) as mean_latency_s, "
            "coalesce(sum(coalesce(json_extract(meta, '$.truncated'), 0)), 0) as truncated "
            "from answers where eval_id = ?",
            [eval_id],
        )
        return AnswerTotals(**row)

    def answers_with_category(self, eval_id: str) -> list[dict[str, Any]]:
        """(meta, category) of every answer of a run, category from its question."""
        return self.query(
            "select a.meta, q.category from answers a left join questions q on "
            "q.eval_id = a.eval_id and q.question_id = a.question_id where a.eval_id = ?",
            [eval_id],
        )

    # -- judge verdicts ----------------------------------------------------------------------
    def judgments(self, eval_id: str, *, by_unit: bool = False) -> list[dict[str, Any]]:
        """Every verdict of a judge or grade run, as stored, or by question, turn and order."""
        order = 'question_id, turn, "order", id' if by_unit else "id"
        return self.query(f"select * from judgments where eval_id = ? order by {order}", [eval_id])

    def judged_units(self, eval_id: str) -> set[UnitKey]:
        """The units a judge run holds a verdict for."""
        return {
            (r["question_id"], r["turn"], r["order"])
            for r in self.query('select question_id, turn, "order" from judgments where eval_id = ?', [eval_id])
        }

    def has_judgment(self, eval_id: str, key: UnitKey) -> bool:
        question_id, turn, order = key
        return self.exists(
            "select 1 from judgments where eval_id = ? and question_id = ? and turn = ? "
            "and coalesce(\"order\", '') = ?",
            [eval_id, question_id, turn, order or ""],
        )

    def verdict_tallies(self) -> list[dict[str, Any]]:
        """Verdicts counted per (eval_id, mode, verdict) over every run: rows with `n`."""
        return self.query("select eval_id, mode, verdict, count(*) as n from judgments group by eval_id, mode, verdict")

    def judged_question_stats(self) -> list[dict[str, Any]]:
        """Per judge run: questions judged (`q`) and the mean score (`mean`)."""
        return self.query(
            "select eval_id, count(distinct question_id) as q, avg(score) as mean from judgments group by eval_id"
        )

    # -- training runs -----------------------------------------------------------------------
    def run_curve(self, run_id: str) -> RunCurve | None:
        """The loss curve and held-out losses of a training run (None when there is no such run)."""
        row = self.one("select id, status, output_path, loss_curve, metrics from runs where id = ?", [run_id])
        if row is None:
            return None
        points = [
            p
            for p in (row["loss_curve"] if isinstance(row["loss_curve"], list) else [])
            if isinstance(p, dict) and "step" in p
        ]
        metrics = row["metrics"] if isinstance(row["metrics"], dict) else {}
        return RunCurve(
            row["id"],
            row["status"],
            row["output_path"],
            points,
            eval_points(metrics, points[-1]["step"] if points else None),
        )

    # -- chats -------------------------------------------------------------------------------
    def recent_chats(self) -> list[dict[str, Any]]:
        """Saved chats, most recently updated first (id, title, model, updated_at)."""
        return self.query("select id, title, model, updated_at from chats order by updated_at desc, rowid desc")
