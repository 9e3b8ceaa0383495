"""The typed numbers `eval report` hands on: one frozen dataclass per summary kind.

eval/report.py (and eval/reward_score.py, eval/loglik.py) build these; the terminal tables, the
plot and the HTML page read their attributes. Their JSON shape is a contract: `to_dict()` gives
exactly the keys, order and values `eval report --json` prints and the catalog stores as a run's
metrics (CIs as [low, high] lists, turn numbers as string keys, a grade run's extras only when
set), and `from_dict()` reads such a dict back. Rates are fractions in [0, 1]; `None` where
there was nothing to count.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal, NamedTuple, Self, Union, get_args, get_origin, get_type_hints

from openchat_cli.errors import OpenchatError


class Interval(NamedTuple):
    """A 95% confidence interval (bootstrap percentiles), on the scale of its value."""

    low: float
    high: float

    @classmethod
    def of(cls, bounds: list[float] | tuple[float, float] | None, scale: float = 1.0) -> Interval | None:
        """From `cluster_bootstrap`'s [low, high] (or None), optionally rescaled."""
        return None if not bounds else cls(scale * bounds[0], scale * bounds[1])


OMIT_IF_NONE = {"omit_if_none": True}  # field metadata: the key is absent from the JSON while unset


def _plain(value: Any) -> Any:
    """JSON-ready: summaries as dicts, intervals as lists, mapping keys as strings."""
    if isinstance(value, Summary):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _typed(value: Any, hint: Any) -> Any:
    """`value` read from JSON as the annotated type `hint` (the inverse of `_plain`)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return _typed(value, inner)
    if origin is dict:
        key_type, value_type = get_args(hint)
        return {key_type(k): _typed(v, value_type) for k, v in value.items()}
    if origin is list:
        (item_type,) = get_args(hint)
        return [_typed(v, item_type) for v in value]
    if hint is Interval:
        return Interval(*value)
    if isinstance(hint, type) and is_dataclass(hint):
        return hint.from_dict(value)
    return value  # str, int, float, Literal, Any


class Summary:
    """Shared `to_dict` / `from_dict` for the dataclasses below: fields map to JSON keys by name,
    in field order."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Read a `to_dict()` dict back: optional keys it lacks take their defaults, unknown keys
        are ignored, a missing required key is an error that names it."""
        hints = get_type_hints(cls)
        known = [f for f in fields(cls) if f.init]  # type: ignore[arg-type]
        missing = [f.name for f in known if f.name not in data and f.default is MISSING]
        if missing:
            raise OpenchatError(f"a stored {cls.__name__} lacks {', '.join(missing)} (written by another version?)")
        return cls(**{f.name: _typed(data[f.name], hints[f.name]) for f in known if f.name in data})


# -- judge runs (single-answer ratings and pairwise comparisons) ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleReliability(Summary):
    """How often the judge's rating could not be parsed."""

    parse_failure_rate: float | None
    parse_failures: int
    judgments: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleSummary(Summary):
    """A single-mode judge run, as MT-bench scores it: ratings 1-10 per turn, overall and per
    category (means over parsed ratings); `average_ci` resamples questions."""

    run_id: str
    mode: Literal["single"] = "single"
    status: str | None
    answer_id: str | None
    model: str  # the judged answer run's name
    judge_model: str | None
    questions: int  # questions with at least one parsed rating
    turns: dict[int, float | None]  # mean rating by turn number
    average: float | None
    average_ci: Interval | None
    categories: dict[str, float | None]  # mean rating by question category
    judgments: int
    parse_failures: int
    reliability: SingleReliability


@dataclass(frozen=True, slots=True, kw_only=True)
class LcCoefficients(Summary):
    """The length-controlled fit's weights: logit of A's win = intercept + length·tanh(Δlen/σ)
    + position·(+1 when A was shown first)."""

    intercept: float
    length: float
    position: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LcFit(Summary):
    """A length-controlled win-rate fit: sigmoid(intercept) and the weights it came from."""

    value: float
    coefficients: LcCoefficients


@dataclass(frozen=True, slots=True, kw_only=True)
class PairwiseReliability(Summary):
    """How far a pairwise judge can be trusted: flips on swap, position and length bias, parse
    failures (see eval/report.py for each rate's definition)."""

    flip_rate: float | None
    flipped: int
    swapped_pairs: int
    first_position_win_rate: float | None
    decisive: int
    longer_answer_win_rate: float | None
    decided_with_length_difference: int
    parse_failure_rate: float | None
    parse_failures: int
    judgments: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PairwiseSummary(Summary):
    """A pairwise judge run, A (the judged run) against B (the baseline): pair counts, win
    rates with CIs, AlpacaEval and length-controlled win rates, and the judge's reliability."""

    run_id: str
    mode: Literal["pairwise"] = "pairwise"
    status: str | None
    answer_id: str | None
    baseline_id: str | None
    model: str
    baseline: str
    judge_model: str | None
    pairs: int  # (question, turn) pairs judged in both orders, both parsed
    win: int
    loss: int
    tie: int
    inconsistent: int  # pairs whose two orders disagreed (counted as ties)
    unparsed_pairs: int
    incomplete_pairs: int
    win_rate: float | None
    loss_rate: float | None
    tie_rate: float | None
    adjusted_win_rate: float | None  # (win + tie / 2) / pairs
    adjusted_win_rate_ci: Interval | None
    alpaca_eval_win_rate: float | None
    alpaca_eval_win_rate_ci: Interval | None
    annotations: int  # parsed single-order judgments
    lc_win_rate: float | None
    lc_win_rate_ci: Interval | None  # None when stored by `eval judge` (the refits are slow)
    lc_coefficients: LcCoefficients | None
    categories: dict[str, float | None]  # adjusted win rate by question category
    judgments: int
    reliability: PairwiseReliability


JudgeSummary = Union[SingleSummary, PairwiseSummary]


def judge_summary_from_dict(data: dict[str, Any]) -> JudgeSummary:
    """A judge run's stored metrics read back, by their mode."""
    return (PairwiseSummary if data.get("mode") == "pairwise" else SingleSummary).from_dict(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class PercentOfBaseline(Summary):
    """100 × A's summed single ratings / B's, over the (question, turn) units both runs have a
    parsed rating for, from single-mode runs by the same judge model."""

    answer_id: str
    baseline_id: str
    model: str
    baseline: str
    judge_model: str | None
    single_run: str  # A's single-mode judge run
    baseline_single_run: str  # B's
    units: int
    questions: int
    percent: float
    percent_ci: Interval | None  # in percent, like `percent`


# -- exact-answer grading, reward models, log-likelihood ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteCell(Summary):
    """One task type's or task's row in the suite tables: rates over its questions."""

    questions: int
    accuracy: float | None  # by the suite's reference rules
    unmatched: float | None  # no answer in the reference format
    lenient_accuracy: float | None  # our lenient extraction (not part of the accuracy)
    lenient_unmatched: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteSummary(Summary):
    """A suite grade run as the suite's reference viewer tables it: per task type ("zs/math")
    and per task ("zs/math/algebra")."""

    task_types: dict[str, SuiteCell]
    tasks: dict[str, SuiteCell]


@dataclass(frozen=True, slots=True, kw_only=True)
class GradeSummary(Summary):
    """An exact-answer grade run: accuracy with its CI, answers not found, per category and per
    extraction method; suite tables when its questions came from a suite. `eval grade` adds
    `unanswered` (and the task types it could not grade, `skipped`) to what it stores."""

    run_id: str
    mode: Literal["exact"] = "exact"
    status: str | None
    answer_id: str | None
    model: str
    graded: int
    correct: int
    incorrect: int
    no_answer: int  # an 'error' verdict, or (suites) the reference rule did not match
    accuracy: float | None
    accuracy_ci: Interval | None
    no_answer_rate: float | None
    categories: dict[str, float | None]  # accuracy by question category
    methods: dict[str, int]  # graded answers by extraction method
    suite: SuiteSummary | None = field(default=None, metadata=OMIT_IF_NONE)
    unanswered: int | None = field(default=None, metadata=OMIT_IF_NONE)  # gradable questions with no answer
    skipped: dict[str, str] | None = field(default=None, metadata=OMIT_IF_NONE)  # task type → why


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardSummary(Summary):
    """A reward model's scores of an answer run (`eval score`): mean with a CI, per category."""

    run_id: str
    mode: Literal["reward"] = "reward"
    status: str | None
    answer_id: str | None
    model: str
    reward_model: str | None
    scored: int
    mean: float | None
    mean_ci: Interval | None
    categories: dict[str, float]  # mean reward by question category


@dataclass(frozen=True, slots=True, kw_only=True)
class LoglikCategory(Summary):
    """Log-likelihood accuracies over one category's questions."""

    n: int
    acc: float
    acc_norm: float
    acc_bytes: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LoglikSummary(Summary):
    """A multiple-choice run scored by log-likelihood (as lm-evaluation-harness): acc (raw sum),
    acc_norm (per character), acc_bytes (per byte), each with its standard error and CI. Counts
    and rates are None on a run that has not stored metrics yet."""

    run_id: str
    model: str | None
    status: str | None
    task: str | None  # the task file
    task_format: str | None
    questions: int | None
    scored: int | None
    errors: int | None
    acc: float | None
    acc_norm: float | None
    acc_bytes: float | None
    acc_stderr: float | None
    acc_norm_stderr: float | None
    acc_bytes_stderr: float | None
    acc_ci: Interval | None
    acc_norm_ci: Interval | None
    acc_bytes_ci: Interval | None
    categories: dict[str, LoglikCategory]  # only when the task has more than one category


# -- the whole report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Report(Summary):
    """What `eval report` shows, one list per kind of run; `plot` and `html` name the files it
    wrote (absent from the JSON when none was asked for)."""

    single: list[SingleSummary]
    pairwise: list[PairwiseSummary]
    percent_of_baseline: list[PercentOfBaseline]
    grade: list[GradeSummary]
    loglik: list[LoglikSummary]
    reward: list[RewardSummary]
    plot: str | None = field(default=None, metadata=OMIT_IF_NONE)
    html: str | None = field(default=None, metadata=OMIT_IF_NONE)
