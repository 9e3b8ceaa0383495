"""`data pairs`: preference pairs from our own pairwise judge runs.

A pairwise judge run (`eval judge A --baseline B --mode pairwise`) asked about every (question,
turn) in both display orders. A pair is kept only when both orders parsed and agree (store/
verdicts.py, the read model `eval report` uses): the winner's reply is `chosen`, the other's
`rejected`. Left out, each counted: `flipped` (the orders disagree: position bias), `tie` (both
orders say tie), `unparsed` (an order's verdict unreadable), `incomplete` (an order not judged),
`context_differs` (a later turn whose earlier replies differ between the two runs, so the two
replies do not share a prompt), `empty_reply` (a reply left empty, e.g. the context was full) and
`identical_replies`.

The prompt is the question's turns (and, for a later turn, the shared earlier replies), with the
answer runs' system prompt when both used the same one. Reads go through the store's read API.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from openchat_cli.errors import OpenchatError
from store.catalog import Catalog
from store.verdicts import load_pairs

DROP_REASONS = ("flipped", "tie", "unparsed", "incomplete", "context_differs", "empty_reply", "identical_replies")


@dataclass
class JudgePairs:
    judge_run: dict[str, Any]
    answer_run_id: str
    baseline_run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)  # pairs JSONL records
    dropped: Counter = field(default_factory=Counter)
    chosen_from: Counter = field(default_factory=Counter)  # answer_run | baseline
    judged: int = 0  # (question, turn) units of the run
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "judged_pairs": self.judged,
            "kept": len(self.records),
            "dropped": {r: self.dropped[r] for r in DROP_REASONS if self.dropped.get(r)},
            "dropped_total": sum(self.dropped.values()),
            "chosen_from": dict(self.chosen_from),
        }


def judge_run_row(cat: Catalog, ref: str) -> dict[str, Any]:
    """The pairwise judge run `ref` names, or OpenchatError saying what it is instead."""
    row = cat.get(ref)  # an unknown or ambiguous id: CatalogError, reported by the app
    if cat.table_of(row["id"]) != "evals" or row.get("kind") != "judge":
        raise OpenchatError(
            f"{ref} is not a judge run ({cat.summary(row['id'])}); give the ev-… id of "
            f"`openchat eval judge A --baseline B --mode pairwise`"
        )
    if (row.get("config") or {}).get("mode") != "pairwise" or not row.get("baseline_id"):
        raise OpenchatError(
            f"{row['id']} is a single-answer judge run (1-10 ratings): pairs need a pairwise run "
            f"(`openchat eval judge A --baseline B --mode pairwise`)"
        )
    return row


def _replies(cat: Catalog, run_id: str) -> dict[str, list[str]]:
    return {str(r["question_id"]): [str(t or "") for t in (r.get("turns") or [])] for r in cat.answers(run_id)}


def _system(cat: Catalog, run_id: str) -> str | None:
    return ((cat.get(run_id).get("config") or {}).get("system")) or None


def pairs_from_judge_run(cat: Catalog, ref: str) -> JudgePairs:
    """Every pair of a pairwise judge run whose two orders agree, as pairs JSONL records."""
    row = judge_run_row(cat, ref)
    answer_id, baseline_id = row["parent_id"], row["baseline_id"]
    out = JudgePairs(row, answer_id, baseline_id)
    questions = {str(q["question_id"]): q for q in cat.questions(answer_id)}
    replies = {"A": _replies(cat, answer_id), "B": _replies(cat, baseline_id)}
    system_a, system_b = _system(cat, answer_id), _system(cat, baseline_id)
    system = system_a if system_a == system_b else None
    if system_a != system_b:
        out.notes.append("the two answer runs used different system prompts; the pairs carry none")
    for pair in load_pairs(cat, row["id"]):
        out.judged += 1
        verdict = pair.verdict
        if verdict is None:
            out.dropped[pair.status] += 1
            continue
        if verdict == "tie":
            out.dropped["flipped" if pair.inconsistent else "tie"] += 1
            continue
        question = questions.get(pair.question_id)
        a, b = replies["A"].get(pair.question_id, []), replies["B"].get(pair.question_id, [])
        turn = pair.turn
        turns = list((question or {}).get("turns") or [])
        if isinstance((question or {}).get("turns"), str):
            turns = [question["turns"]]
        if question is None or len(turns) < turn or len(a) < turn or len(b) < turn:
            out.dropped["incomplete"] += 1
            continue
        if a[: turn - 1] != b[: turn - 1]:
            out.dropped["context_differs"] += 1
            continue
        win, lose = (a, b) if verdict == "A" else (b, a)
        if not win[turn - 1].strip() or not lose[turn - 1].strip():
            out.dropped["empty_reply"] += 1
            continue
        if " ".join(win[turn - 1].split()) == " ".join(lose[turn - 1].split()):
            out.dropped["identical_replies"] += 1
            continue
        prompt: list[dict[str, Any]] = []
        for i in range(turn):
            prompt.append({"role": "user", "content": str(turns[i]), "weight": 0.0})
            if i < turn - 1:
                prompt.append({"role": "assistant", "content": a[i], "weight": 0.0})
        out.chosen_from["answer_run" if verdict == "A" else "baseline"] += 1
        out.records.append(
            {
                "id": f"{row['id']}:{pair.question_id}:{turn}",
                "source": row["id"],
                "system": system,
                "condition": None,
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": win[turn - 1], "weight": 1.0}],
                "rejected": [{"role": "assistant", "content": lose[turn - 1], "weight": 1.0}],
                "category": (question or {}).get("category"),
            }
        )
    return out
