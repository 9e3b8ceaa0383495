"""What a judge run judges: its matches, and which of them are already judged.

A match is one unit of judging (FastChat's MatchSingle / MatchPair): one turn of one answer to
rate, or one turn of two answers in one display order. Pairwise runs judge each pair in both
orders (AB: the judged run's answer shown first; BA: the baseline's). Planning only reads the
catalog; asking the judge and storing verdicts happen elsewhere (judging.py, judge.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from openchat_cli.eval.questions import Question
from store.catalog import Catalog

UnitKey = tuple[str, int, Union[str, None]]  # (question id, turn, order or None)


@dataclass(frozen=True, eq=False)
class SingleMatch:
    """One turn of the judged run's answer, to be rated 1-10."""

    question: Question
    turn: int
    answer: list[str]  # the judged run's replies, one per turn

    order: ClassVar[None] = None  # single matches have no display order

    @property
    def key(self) -> UnitKey:
        return (self.question.question_id, self.turn, None)


@dataclass(frozen=True, eq=False)
class PairMatch:
    """One turn of the judged run's and the baseline's answers, shown in `order`."""

    question: Question
    turn: int
    order: str  # AB | BA
    answer: list[str]  # the judged run's replies (model A)
    baseline: list[str]  # the baseline run's replies (model B)

    @property
    def key(self) -> UnitKey:
        return (self.question.question_id, self.turn, self.order)

    @property
    def shown(self) -> tuple[list[str], list[str]]:
        """The replies in display order: (shown first, shown second)."""
        return (self.answer, self.baseline) if self.order == "AB" else (self.baseline, self.answer)


Match = Union[SingleMatch, PairMatch]


def unit_name(key: UnitKey) -> str:
    """A unit key as one string (for claims): '81|2|BA', '81|1|'."""
    qid, turn, order = key
    return f"{qid}|{turn}|{order or ''}"


@dataclass
class MatchPlan:
    matches: list[Match]  # every match of the run, judged or not
    notes: list[str]  # what was left out and why, to show the user


def _answers(cat: Catalog, run_id: str) -> dict[str, list[str]]:
    return {r["question_id"]: list(r["turns"] or []) for r in cat.answers(run_id)}


def _questions(cat: Catalog, run_id: str) -> dict[str, Question]:
    return {r["question_id"]: Question.from_row(r) for r in cat.questions(run_id)}


def plan_matches(cat: Catalog, answer_run_id: str, baseline_run_id: str | None = None) -> MatchPlan:
    """Every match of judging `answer_run_id` (alone, or against `baseline_run_id`)."""
    notes: list[str] = []
    questions = _questions(cat, answer_run_id)
    answers = _answers(cat, answer_run_id)
    baseline = _answers(cat, baseline_run_id) if baseline_run_id else None
    baseline_questions = _questions(cat, baseline_run_id) if baseline_run_id else {}
    matches: list[Match] = []
    mismatched = 0
    for qid, question in questions.items():
        replies = answers.get(qid)
        if not replies:
            continue
        if baseline is None:
            for turn in range(1, min(len(question.turns), len(replies)) + 1):
                matches.append(SingleMatch(question, turn, replies))
            continue
        other = baseline.get(qid)
        if not other:
            continue
        other_question = baseline_questions.get(qid)
        if other_question is not None and other_question.turns != question.turns:
            mismatched += 1
            continue
        for turn in range(1, min(len(question.turns), len(replies), len(other)) + 1):
            matches.append(PairMatch(question, turn, "AB", replies, other))
            matches.append(PairMatch(question, turn, "BA", replies, other))
    missing = sum(1 for qid in questions if qid not in answers)
    if missing:
        notes.append(
            f"{missing} of {len(questions)} questions have no answer in {answer_run_id} yet; "
            f"judge again after answering them"
        )
    if baseline is not None:
        only_a = sum(1 for qid in answers if qid in questions and qid not in baseline)
        if only_a:
            notes.append(f"{only_a} answered questions have no baseline answer in {baseline_run_id}; skipped")
    if mismatched:
        notes.append(f"{mismatched} questions differ in text between the two runs; skipped")
    return MatchPlan(matches, notes)


def judged_units(cat: Catalog, judge_run_id: str) -> set[UnitKey]:
    """The units a judge run holds a verdict for."""
    return cat.judged_units(judge_run_id)


def is_judged(cat: Catalog, judge_run_id: str, key: UnitKey) -> bool:
    return cat.has_judgment(judge_run_id, key)
