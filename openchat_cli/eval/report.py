"""`openchat eval report`: scores, win rates and accuracies with bootstrap CIs, and how far the
judge can be trusted. Each run's numbers come back as a dataclass of eval/summaries.py, whose
`to_dict()` is what `--json` prints and the catalog stores.

All rates are fractions in [0, 1] (tables print them as percentages); "percent of baseline" is
a percentage. Confidence intervals are 95% percentile bootstrap intervals that resample
*questions* (all turns and both orders of a question move together), 1000 resamples, seed 0.

Pairwise definitions (A = the judged run, B = the baseline):
- a pair is one (question, turn) judged in both orders; its verdict is the two orders' common
  verdict, or a tie when they disagree (counted as `inconsistent` too). Pairs with an
  unparseable verdict in either order, or not yet judged in both orders, are left out (and
  counted as `unparsed_pairs` / `incomplete_pairs`). The rule lives in store/verdicts.py, which
  the TUI's verdicts browser reads too.
- win rate = wins / pairs; adjusted win rate = (wins + ties / 2) / pairs.
- AlpacaEval-style win rate: every single judgment (each order) is one annotation worth 1 for a
  win of A, 0.5 for a tie, 0 for a loss; the mean over parsed annotations.
- length-controlled win rate: a logistic regression of those annotations on
  tanh(length difference / its std) and the display position (+1 when A was shown first), with
  a small L2 penalty on those two slopes; the LC win rate is sigmoid(intercept): the predicted
  win rate with equal lengths and no position effect.
- reliability: flip rate = pairs whose two orders disagree / pairs with both orders parsed;
  first-position win rate = decisive annotations won by the answer shown first; longer-answer
  win rate = decisive annotations (different lengths) won by the longer answer; parse-failure
  rate = unparseable judgments / judgments.
Single mode: turn means and the average over every parsed rating (as MT-bench); "percent of
baseline" = 100 × (sum of A's ratings) / (sum of B's ratings) over the (question, turn) units
both runs have a parsed rating for, from single-mode judge runs by the same judge model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.runs import eval_row
from openchat_cli.eval.summaries import (
    GradeSummary,
    Interval,
    JudgeSummary,
    LcCoefficients,
    LcFit,
    LoglikCategory,
    LoglikSummary,
    PairwiseReliability,
    PairwiseSummary,
    PercentOfBaseline,
    Report,
    RewardSummary,
    SingleReliability,
    SingleSummary,
    SuiteCell,
    SuiteSummary,
)
from store.catalog import Catalog
from store.verdicts import count, order_verdict, pairs_from

N_BOOT = 1000
SEED = 0
LC_L2 = 1.0  # penalty on the length and position slopes
LC_L2_INTERCEPT = 1e-3  # keeps the intercept finite when every annotation agrees


# -- statistics ---------------------------------------------------------------------------------


def cluster_bootstrap(
    num: Iterable[float], den: Iterable[float], n_boot: int = N_BOOT, seed: int = SEED, alpha: float = 0.05
) -> list[float] | None:
    """Percentile CI of sum(num)/sum(den) resampling clusters (questions) with replacement."""
    num = np.asarray(list(num), dtype=float)
    den = np.asarray(list(den), dtype=float)
    k = len(num)
    if k == 0 or den.sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats: list[np.ndarray] = []
    chunk = max(1, min(n_boot, 2_000_000 // max(1, k)))
    remaining = n_boot
    while remaining > 0:
        size = min(chunk, remaining)
        idx = rng.integers(0, k, size=(size, k))
        n, d = num[idx].sum(axis=1), den[idx].sum(axis=1)
        keep = d > 0
        stats.append(n[keep] / d[keep])
        remaining -= size
    values = np.concatenate(stats)
    if values.size == 0:
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: np.ndarray, iters: int = 100) -> np.ndarray:
    """Weights minimising the cross-entropy of soft targets y ∈ [0, 1] plus ½·Σ l2·w² (Newton)."""
    w = np.zeros(X.shape[1])
    for _ in range(iters):
        p = _sigmoid(X @ w)
        grad = X.T @ (p - y) + l2 * w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + np.diag(l2) + 1e-9 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def lc_design(len_diff: np.ndarray, first: np.ndarray) -> np.ndarray:
    scale = float(np.std(len_diff)) or 1.0
    return np.column_stack([np.ones(len(len_diff)), np.tanh(len_diff / scale), first])


def lc_win_rate(len_diff: Iterable[float], first: Iterable[float], y: Iterable[float]) -> LcFit | None:
    len_diff = np.asarray(list(len_diff), dtype=float)
    first = np.asarray(list(first), dtype=float)
    y = np.asarray(list(y), dtype=float)
    if len(y) == 0:
        return None
    X = lc_design(len_diff, first)
    w = fit_logistic(X, y, np.array([LC_L2_INTERCEPT, LC_L2, LC_L2]))
    return LcFit(
        value=float(_sigmoid(np.array([w[0]]))[0]),
        coefficients=LcCoefficients(intercept=float(w[0]), length=float(w[1]), position=float(w[2])),
    )


def lc_bootstrap(
    clusters: list[list[tuple[float, float, float]]], n_boot: int = 200, seed: int = SEED
) -> list[float] | None:
    """CI of the LC win rate, resampling questions (each a list of (len_diff, first, y))."""
    if not clusters:
        return None
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(c, dtype=float) for c in clusters]
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(arrays), size=len(arrays))
        data = np.concatenate([arrays[i] for i in pick])
        fit = lc_win_rate(data[:, 0], data[:, 1], data[:, 2])
        if fit is not None:
            values.append(fit.value)
    if not values:
        return None
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [float(lo), float(hi)]


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


# -- loading ------------------------------------------------------------------------------------


def _judgments(cat: Catalog, run_id: str) -> list[dict[str, Any]]:
    return cat.judgments(run_id)


def _lengths(cat: Catalog, answer_run_id: str | None) -> dict[str, list[int]]:
    if not answer_run_id:
        return {}
    return {r["question_id"]: [len(t or "") for t in (r["turns"] or [])] for r in cat.answers(answer_run_id)}


def _categories(cat: Catalog, answer_run_id: str | None) -> dict[str, str]:
    if not answer_run_id:
        return {}
    return {qid: category or "(none)" for qid, category in cat.question_categories(answer_run_id).items()}


def _label(cat: Catalog, answer_run_id: str | None) -> str:
    if not answer_run_id:
        return "?"
    try:
        row = cat.get(answer_run_id)
    except Exception:  # removed from the catalog
        return answer_run_id
    return row.get("name") or row.get("model") or answer_run_id


# -- summaries ----------------------------------------------------------------------------------


def single_summary(cat: Catalog, run: dict[str, Any]) -> SingleSummary:
    rows = _judgments(cat, run["id"])
    answer_run_id = run.get("parent_id")
    cats = _categories(cat, answer_run_id)
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_cat: dict[str, list[float]] = defaultdict(list)
    by_question: dict[str, list[float]] = defaultdict(list)
    failures = 0
    for r in rows:
        if not r["parse_ok"] or r["score"] is None:
            failures += 1
            continue
        score = float(r["score"])
        by_turn[int(r["turn"])].append(score)
        by_cat[cats.get(r["question_id"]) or (r.get("meta") or {}).get("category") or "(none)"].append(score)
        by_question[r["question_id"]].append(score)
    scores = [s for v in by_turn.values() for s in v]
    return SingleSummary(
        run_id=run["id"],
        status=run.get("status"),
        answer_id=answer_run_id,
        model=_label(cat, answer_run_id),
        judge_model=run.get("model"),
        questions=len(by_question),
        turns={t: _mean(v) for t, v in sorted(by_turn.items())},
        average=_mean(scores),
        average_ci=Interval.of(
            cluster_bootstrap([sum(v) for v in by_question.values()], [len(v) for v in by_question.values()])
        ),
        categories={c: _mean(v) for c, v in sorted(by_cat.items())},
        judgments=len(rows),
        parse_failures=failures,
        reliability=SingleReliability(
            parse_failure_rate=_rate(failures, len(rows)), parse_failures=failures, judgments=len(rows)
        ),
    )


def pairwise_summary(cat: Catalog, run: dict[str, Any], lc_ci: bool = True) -> PairwiseSummary:
    rows = _judgments(cat, run["id"])
    answer_run_id, baseline_run_id = run.get("parent_id"), run.get("baseline_id")
    len_a, len_b = _lengths(cat, answer_run_id), _lengths(cat, baseline_run_id)
    cats = _categories(cat, answer_run_id)

    def lengths(r: dict[str, Any]) -> tuple[float, float]:
        t = int(r["turn"]) - 1
        meta = r.get("meta") or {}
        a = len_a.get(r["question_id"], [])
        b = len_b.get(r["question_id"], [])
        la = a[t] if t < len(a) else meta.get("len_a", 0)
        lb = b[t] if t < len(b) else meta.get("len_b", 0)
        return float(la or 0), float(lb or 0)

    valid = [r for r in rows if order_verdict(r) != "error"]
    failures = len(rows) - len(valid)
    value = {"A": 1.0, "tie": 0.5, "B": 0.0}

    # Pairs: (question, turn) with both orders, combined by the one rule in store/verdicts.py.
    pairs_found = pairs_from(rows)
    counts = count(pairs_found)
    win, loss, tie, inconsistent = counts.win, counts.loss, counts.tie, counts.inconsistent
    swapped = counts.pairs  # pairs with both orders parsed
    per_question: dict[str, list[float]] = defaultdict(list)
    per_cat: dict[str, list[float]] = defaultdict(list)
    for pair in pairs_found:
        if pair.verdict is None:
            continue
        per_question[pair.question_id].append(value[pair.verdict])
        per_cat[cats.get(pair.question_id, "(none)")].append(value[pair.verdict])
    pairs = counts.pairs

    # Annotations (each order on its own).
    ann_by_q: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    first_wins = decisive = longer_wins = decided_by_length = 0
    for r in valid:
        la, lb = lengths(r)
        first = 1.0 if r["order"] == "AB" else -1.0
        y = value[r["verdict"]]
        ann_by_q[r["question_id"]].append((la - lb, first, y))
        if r["verdict"] in ("A", "B"):
            decisive += 1
            first_wins += (r["verdict"] == "A") == (r["order"] == "AB")
            if la != lb:
                decided_by_length += 1
                longer_wins += (r["verdict"] == "A") == (la > lb)
    annotations = [a for v in ann_by_q.values() for a in v]
    alpaca = _mean([a[2] for a in annotations])
    lc = lc_win_rate([a[0] for a in annotations], [a[1] for a in annotations], [a[2] for a in annotations])

    return PairwiseSummary(
        run_id=run["id"],
        status=run.get("status"),
        answer_id=answer_run_id,
        baseline_id=baseline_run_id,
        model=_label(cat, answer_run_id),
        baseline=_label(cat, baseline_run_id),
        judge_model=run.get("model"),
        pairs=pairs,
        win=win,
        loss=loss,
        tie=tie,
        inconsistent=inconsistent,
        unparsed_pairs=counts.unparsed,
        incomplete_pairs=counts.incomplete,
        win_rate=_rate(win, pairs),
        loss_rate=_rate(loss, pairs),
        tie_rate=_rate(tie, pairs),
        adjusted_win_rate=(win + 0.5 * tie) / pairs if pairs else None,
        adjusted_win_rate_ci=Interval.of(
            cluster_bootstrap([sum(v) for v in per_question.values()], [len(v) for v in per_question.values()])
        ),
        alpaca_eval_win_rate=alpaca,
        alpaca_eval_win_rate_ci=Interval.of(
            cluster_bootstrap([sum(a[2] for a in v) for v in ann_by_q.values()], [len(v) for v in ann_by_q.values()])
        ),
        annotations=len(annotations),
        lc_win_rate=lc.value if lc else None,
        lc_win_rate_ci=Interval.of(lc_bootstrap(list(ann_by_q.values()))) if lc and lc_ci else None,
        lc_coefficients=lc.coefficients if lc else None,
        categories={c: _mean(v) for c, v in sorted(per_cat.items())},
        judgments=len(rows),
        reliability=PairwiseReliability(
            flip_rate=_rate(inconsistent, swapped),
            flipped=inconsistent,
            swapped_pairs=swapped,
            first_position_win_rate=_rate(first_wins, decisive),
            decisive=decisive,
            longer_answer_win_rate=_rate(longer_wins, decided_by_length),
            decided_with_length_difference=decided_by_length,
            parse_failure_rate=_rate(failures, len(rows)),
            parse_failures=failures,
            judgments=len(rows),
        ),
    )


def grade_summary(cat: Catalog, run_id: str) -> GradeSummary:
    run = cat.get(run_id)
    rows = _judgments(cat, run_id)
    cats = _categories(cat, run.get("parent_id"))
    correct = sum(1 for r in rows if r["verdict"] == "correct")
    # No answer found: an 'error' verdict, or (suites) the reference rule did not match.
    errors = sum(1 for r in rows if r["verdict"] == "error" or not r["parse_ok"])
    by_cat: dict[str, list[float]] = defaultdict(list)
    methods: dict[str, int] = defaultdict(int)
    for r in rows:
        by_cat[cats.get(r["question_id"], "(none)")].append(1.0 if r["verdict"] == "correct" else 0.0)
        methods[(r.get("meta") or {}).get("method") or r.get("prompt_name") or "?"] += 1
    scores = [1.0 if r["verdict"] == "correct" else 0.0 for r in rows]
    return GradeSummary(
        run_id=run_id,
        status=run.get("status"),
        answer_id=run.get("parent_id"),
        model=_label(cat, run.get("parent_id")),
        graded=len(rows),
        correct=correct,
        incorrect=sum(1 for r in rows if r["verdict"] == "incorrect" and r["parse_ok"]),
        no_answer=errors,
        accuracy=_rate(correct, len(rows)),
        accuracy_ci=Interval.of(cluster_bootstrap(scores, [1.0] * len(scores))),
        no_answer_rate=_rate(errors, len(rows)),
        categories={c: _mean(v) for c, v in sorted(by_cat.items())},
        methods=dict(methods),
        suite=suite_summary(rows),
    )


def _suite_cell(rows: list[dict[str, Any]]) -> SuiteCell:
    lenient = [(r.get("meta") or {}).get("lenient") for r in rows]
    scored = [v for v in lenient if v is not None]
    return SuiteCell(
        questions=len(rows),
        accuracy=_rate(sum(r["verdict"] == "correct" for r in rows), len(rows)),
        unmatched=_rate(sum(not r["parse_ok"] for r in rows), len(rows)),
        lenient_accuracy=_rate(sum(v == "correct" for v in scored), len(scored)),
        lenient_unmatched=_rate(sum(v == "error" for v in scored), len(scored)),
    )


def suite_summary(rows: list[dict[str, Any]]) -> SuiteSummary | None:
    """Per task type and per task, as the suite's reference viewer tables them: accuracy and
    unmatched (format-failure) rate by the reference rules, plus our lenient extraction's accuracy
    as a separate column. Means over questions. None when no row comes from a suite."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        meta = r.get("meta") or {}
        if meta.get("task_type"):
            by_type[meta["task_type"]].append(r)
            by_task[meta["task_name"]].append(r)
    if not by_type:
        return None
    return SuiteSummary(
        task_types={t: _suite_cell(v) for t, v in sorted(by_type.items())},
        tasks={t: _suite_cell(v) for t, v in sorted(by_task.items())},
    )


def judge_summary(cat: Catalog, run_id: str, lc_ci: bool = True) -> JudgeSummary:
    """The report's numbers for one judge run (stored as its metrics, without the LC CI's refits)."""
    run = cat.get(run_id)
    mode = (run.get("config") or {}).get("mode")
    return pairwise_summary(cat, run, lc_ci=lc_ci) if mode == "pairwise" else single_summary(cat, run)


def percent_of_baseline(cat: Catalog, single_a: dict[str, Any], single_b: dict[str, Any]) -> PercentOfBaseline | None:
    """100 × A's summed ratings / B's over the units both have parsed (same judge model)."""

    def scores(run_id: str) -> dict[tuple[str, int], float]:
        return {
            (r["question_id"], int(r["turn"])): float(r["score"])
            for r in _judgments(cat, run_id)
            if r["parse_ok"] and r["score"] is not None
        }

    a, b = scores(single_a["id"]), scores(single_b["id"])
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    per_q_a: dict[str, float] = defaultdict(float)
    per_q_b: dict[str, float] = defaultdict(float)
    for key in common:
        per_q_a[key[0]] += a[key]
        per_q_b[key[0]] += b[key]
    total_b = sum(per_q_b.values())
    if total_b <= 0:
        return None
    qids = list(per_q_a)
    ci = cluster_bootstrap([per_q_a[q] for q in qids], [per_q_b[q] for q in qids])
    return PercentOfBaseline(
        answer_id=single_a["parent_id"],
        baseline_id=single_b["parent_id"],
        model=_label(cat, single_a["parent_id"]),
        baseline=_label(cat, single_b["parent_id"]),
        judge_model=single_a.get("model"),
        single_run=single_a["id"],
        baseline_single_run=single_b["id"],
        units=len(common),
        questions=len(qids),
        percent=100.0 * sum(per_q_a.values()) / total_b,
        percent_ci=Interval.of(ci, scale=100.0),
    )


def _latest_single(cat: Catalog, answer_run_id: str, judge_model: str | None) -> dict[str, Any] | None:
    for row in cat.evals("judge", parent_id=answer_run_id):
        if (row.get("config") or {}).get("mode") == "single" and (judge_model is None or row["model"] == judge_model):
            return row
    return None


# -- selecting runs -----------------------------------------------------------------------------


def select_runs(cat: Catalog, refs: list[str]) -> list[dict[str, Any]]:
    """Judge and grade runs to report: those named, and those of named answer runs (as the
    judged run or as the baseline); every judge and grade run when nothing is named."""
    if not refs:
        return cat.evals(("judge", "grade", "loglik", "score"), newest_first=False)
    out: dict[str, dict[str, Any]] = {}
    for ref in refs:
        row = eval_row(cat, ref)
        if row["kind"] in ("judge", "grade", "loglik", "score"):
            out.setdefault(row["id"], row)
            continue
        found = cat.evals(("judge", "grade", "score"), involving=row["id"], newest_first=False)
        if not found:
            raise OpenchatError(
                f"answer run {row['id']} has not been judged or graded yet "
                f"(run `openchat eval judge {row['id']} …` or `openchat eval grade {row['id']}`)"
            )
        for r in found:
            out.setdefault(r["id"], r)
    return list(out.values())


def build_report(cat: Catalog, refs: list[str], baselines: list[str] | None = None) -> Report:
    runs = select_runs(cat, refs)
    if not runs:
        raise OpenchatError("nothing to report: no judge, grade or loglik runs in the catalog yet")
    single: list[SingleSummary] = []
    pairwise: list[PairwiseSummary] = []
    grade: list[GradeSummary] = []
    loglik: list[LoglikSummary] = []
    reward: list[RewardSummary] = []
    singles: list[dict[str, Any]] = []
    pair_keys: list[tuple[str, str, str | None]] = []
    for run in runs:
        if run["kind"] == "grade":
            grade.append(grade_summary(cat, run["id"]))
            continue
        if run["kind"] == "score":  # a reward model's scores (`eval score`)
            from openchat_cli.eval.reward_score import score_summary

            reward.append(score_summary(cat, run["id"]))
            continue
        if run["kind"] == "loglik":
            from openchat_cli.eval.loglik import loglik_summary

            loglik.append(loglik_summary(cat, run["id"]))
            continue
        mode = (run.get("config") or {}).get("mode")
        if mode == "pairwise":
            pairwise.append(pairwise_summary(cat, run))
            pair_keys.append((run["parent_id"], run["baseline_id"], run["model"]))
        else:
            single.append(single_summary(cat, run))
            singles.append(run)
    # Percent of baseline: for every pairwise comparison, and every single run vs --baseline.
    wanted: list[tuple[str, str, str | None]] = list(pair_keys)
    for ref in baselines or []:
        base = eval_row(cat, ref, "answer")["id"]
        wanted += [(s["parent_id"], base, s["model"]) for s in singles if s["parent_id"] != base]
    seen = set()
    percents: list[PercentOfBaseline] = []
    for a_id, b_id, judge_model in wanted:
        if (a_id, b_id, judge_model) in seen:
            continue
        seen.add((a_id, b_id, judge_model))
        single_a, single_b = _latest_single(cat, a_id, judge_model), _latest_single(cat, b_id, judge_model)
        if single_a and single_b:
            found = percent_of_baseline(cat, single_a, single_b)
            if found:
                percents.append(found)
    return Report(
        single=single, pairwise=pairwise, percent_of_baseline=percents, grade=grade, loglik=loglik, reward=reward
    )


# -- rendering ----------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ci(ci: Interval | None, scale: float = 1.0, digits: int = 2) -> str:
    """A CI as 'lo–hi' (scale 100 for rates shown as percentages)."""
    if not ci:
        return "-"
    return f"{ci.low * scale:.{digits}f}–{ci.high * scale:.{digits}f}"


def _with_ci(value: str, ci: str) -> str:
    return value if ci == "-" else f"{value}\n[dim]{ci}[/]"


def _who(s: SingleSummary | PairwiseSummary | GradeSummary | LoglikSummary, judge: bool = True) -> str:
    lines = [str(s.model)]
    if isinstance(s, PairwiseSummary) and s.baseline_id:
        lines.append(f"vs {s.baseline}")
    if judge and isinstance(s, (SingleSummary, PairwiseSummary)) and s.judge_model:
        lines.append(f"[dim]judge {s.judge_model}[/]")
    lines.append(f"[dim]{s.run_id}[/]")
    return "\n".join(lines)


def new_table(title: str, columns: list[str]):
    """A report table: who/what in the first column (left), numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title, header_style="bold cyan", show_lines=True)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def render(report: Report, console) -> None:
    """Rich tables that fit an 80-column terminal: who/what in the first column, CIs under values."""
    if report.single:
        max_turn = max((t for s in report.single for t in s.turns), default=1)
        table = new_table(
            "MT-bench-style scores (1-10, single-answer grading)",
            [
                "model",
                *[f"turn {t}" for t in range(1, max_turn + 1)],
                "average\n95% CI",
                "questions",
                "parse\nfailures",
            ],
        )
        for s in report.single:
            table.add_row(
                _who(s),
                *[_num(s.turns.get(t)) for t in range(1, max_turn + 1)],
                _with_ci(_num(s.average), _ci(s.average_ci)),
                str(s.questions),
                f"{s.parse_failures}/{s.judgments}\n{_pct(s.reliability.parse_failure_rate)}",
            )
        console.print(table)
        categories = sorted({c for s in report.single for c in s.categories})
        if len(categories) > 1 or len(report.single) > 1:
            table = new_table("Scores by category", ["category", *[_who(s, judge=False) for s in report.single]])
            for c in categories:
                table.add_row(c, *[_num(s.categories.get(c)) for s in report.single])
            console.print(table)

    if report.percent_of_baseline:
        table = new_table(
            "Percent of baseline score (single-answer ratings)", ["model", "% of baseline\n95% CI", "rated turns"]
        )
        for p in report.percent_of_baseline:
            table.add_row(
                f"{p.model}\nvs {p.baseline}\n[dim]judge {p.judge_model}[/]",
                _with_ci(f"{p.percent:.1f}%", _ci(p.percent_ci, digits=1)),
                str(p.units),
            )
        console.print(table)

    if report.pairwise:
        table = new_table(
            "Pairwise: both orders per pair, disagreement = tie",
            ["comparison", "win/loss/tie", "adjusted\nwin rate", "AlpacaEval\nwin rate", "length-\ncontrolled"],
        )
        for p in report.pairwise:
            table.add_row(
                _who(p),
                f"{p.win}/{p.loss}/{p.tie}\nwin {_pct(p.win_rate)}",
                _with_ci(_pct(p.adjusted_win_rate), _ci(p.adjusted_win_rate_ci, 100, 1)),
                _with_ci(_pct(p.alpaca_eval_win_rate), _ci(p.alpaca_eval_win_rate_ci, 100, 1)),
                _with_ci(_pct(p.lc_win_rate), _ci(p.lc_win_rate_ci, 100, 1)),
            )
        console.print(table)
        table = new_table(
            "Judge reliability (pairwise)",
            ["comparison", "flipped\non swap", "first shown\nwins", "longer answer\nwins", "parse\nfailures"],
        )
        for p in report.pairwise:
            rel = p.reliability
            table.add_row(
                _who(p),
                f"{rel.flipped}/{rel.swapped_pairs}\n{_pct(rel.flip_rate)}",
                f"{_pct(rel.first_position_win_rate)}\nof {rel.decisive}",
                f"{_pct(rel.longer_answer_win_rate)}\nof {rel.decided_with_length_difference}",
                f"{rel.parse_failures}/{rel.judgments}\n{_pct(rel.parse_failure_rate)}",
            )
        console.print(table)
        console.print(
            "[dim]flipped on swap: pairs whose verdict changed when the answers swapped places. "
            "first shown wins / longer answer wins: share of decisive verdicts (50% = no bias). "
            "CIs: 95% bootstrap over questions.[/]"
        )

    if report.reward:
        table = new_table(
            "Reward-model scores (no API judge)", ["model", "reward model", "mean reward\n95% CI", "scored"]
        )
        for r in report.reward:
            table.add_row(
                r.model,
                str(r.reward_model),
                _with_ci(_num(r.mean, 3), _ci(r.mean_ci, digits=3)),
                str(r.scored),
            )
        console.print(table)

    if report.grade:
        table = new_table(
            "Accuracy (exact-answer grading)", ["model", "accuracy\n95% CI", "correct", "graded", "no answer\nfound"]
        )
        for g in report.grade:
            table.add_row(
                _who(g),
                _with_ci(_pct(g.accuracy), _ci(g.accuracy_ci, 100, 1)),
                str(g.correct),
                str(g.graded),
                f"{g.no_answer}\n{_pct(g.no_answer_rate)}",
            )
        console.print(table)
        suites = [g for g in report.grade if g.suite]
        if suites:
            render_suites(suites, console)
        categories = sorted({c for g in report.grade if not g.suite for c in g.categories})
        if len(categories) > 1:
            table = new_table("Accuracy by category", ["category", *[_who(g) for g in report.grade]])
            for c in categories:
                table.add_row(c, *[_pct(g.categories.get(c)) for g in report.grade])
            console.print(table)

    if report.loglik:
        table = new_table(
            "Multiple choice by log-likelihood (as lm-evaluation-harness)",
            ["model", "acc\n95% CI", "acc_norm\n95% CI", "scored", "format"],
        )
        for r in report.loglik:
            table.add_row(
                _who(r, judge=False),
                _with_ci(_pct(r.acc), _ci(r.acc_ci, 100, 1)),
                _with_ci(_pct(r.acc_norm), _ci(r.acc_norm_ci, 100, 1)),
                f"{r.scored or 0}/{r.questions or 0}",
                r.task_format or "-",
            )
        console.print(table)
        categories = sorted({c for r in report.loglik for c in r.categories})
        if categories:
            table = new_table(
                "Log-likelihood accuracy by category (acc / acc_norm)",
                ["category", *[_who(r, judge=False) for r in report.loglik]],
            )
            for c in categories:
                table.add_row(c, *[_loglik_category_text(r.categories.get(c)) for r in report.loglik])
            console.print(table)


def _loglik_category_text(scores: LoglikCategory | None) -> str:
    return "- / -" if scores is None else f"{_pct(scores.acc)} / {_pct(scores.acc_norm)}"


def _suite_text(cell: SuiteCell | None) -> str:
    if not cell:
        return "-"
    text = f"{_pct(cell.accuracy)}\n[dim]unm. {_pct(cell.unmatched)}[/]"
    if cell.lenient_accuracy is not None:
        text += f"\n[dim]len. {_pct(cell.lenient_accuracy)}[/]"
    return text


def render_suites(grades: list[GradeSummary], console) -> None:
    """Suite tables as the reference viewer prints them: per task type, then per task (grade runs
    without a suite are left out)."""
    suites = [(g, g.suite) for g in grades if g.suite is not None]
    types = sorted({t for _, suite in suites for t in suite.task_types})
    table = new_table("Suite accuracy by task type (reference rules)", ["task type", *[_who(g) for g, _ in suites]])
    for t in types:
        table.add_row(t, *[_suite_text(suite.task_types.get(t)) for _, suite in suites])
    console.print(table)
    console.print(
        "[dim]unm.: unmatched, no answer in the suite's reference format (its fallback answer, if "
        "any, is still scored). len.: our lenient extraction, not part of the accuracy.[/]"
    )
    for t in types:
        tasks = sorted({n for _, suite in suites for n in suite.tasks if n.rpartition("/")[0] == t})
        if len(tasks) < 2:
            continue
        table = new_table(f"{t} by task", ["task", *[_who(g, judge=False) for g, _ in suites]])
        for n in tasks:
            table.add_row(n.rpartition("/")[2], *[_suite_text(suite.tasks.get(n)) for _, suite in suites])
        console.print(table)


def plot(report: Report, path: Path | str) -> Path:
    """Grouped bars by category, models side by side: scores, adjusted win rates, accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Sequence[SingleSummary | PairwiseSummary | GradeSummary], float, tuple[int, int]]] = []
    if report.single:
        panels.append(("Score by category (1-10)", report.single, 1.0, (0, 10)))
    if report.pairwise:
        panels.append(("Adjusted win rate by category (%)", report.pairwise, 100.0, (0, 100)))
    if report.grade:
        panels.append(("Accuracy by category (%)", report.grade, 100.0, (0, 100)))
    if not panels:
        raise OpenchatError("nothing to plot")
    width = max(6.0, 1.2 * max(len({c for s in runs for c in s.categories}) for _, runs, _, _ in panels) + 3)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.6 * len(panels)), squeeze=False)
    for ax, (title, runs, scale, ylim) in zip(axes[:, 0], panels):
        categories = sorted({c for s in runs for c in s.categories})
        x = np.arange(len(categories))
        bar = 0.8 / max(1, len(runs))
        for i, s in enumerate(runs):
            label = f"{s.model} vs {s.baseline}, {s.judge_model}" if isinstance(s, PairwiseSummary) else s.model
            values = [(s.categories.get(c) or 0.0) * scale for c in categories]
            ax.bar(x - 0.4 + bar * (i + 0.5), values, bar, label=f"{label} ({s.run_id})")
        ax.set_xticks(x)
        ax.set_xticklabels(categories, rotation=30, ha="right")
        ax.set_ylim(ylim[0], ylim[1] * 1.3)
        if scale == 100.0 and isinstance(runs[0], PairwiseSummary):
            ax.axhline(50, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title)
        ax.legend(fontsize="small", loc="upper left", ncol=min(2, len(runs)))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    from openchat_cli.figure_file import save_figure

    try:
        return save_figure(fig, path)  # appears whole or not at all
    finally:
        plt.close(fig)
