"""`data pairs`: preference pairs from our own pairwise judge runs.

A pairwise judge run (`eval judge A --baseline B --mode pairwise`) asked about every (question,
turn) in both display orders. A pair is kept only when both orders parsed and agree (store/
verdicts.py, the read model `eval report` uses): the winner's reply is `chosen`, the other's
`rejected`. Left out, each counted: `flipped` (the orders disagree: position bias), `tie` (both
orders say tie), `unparsed` (an order's verdict unreadable), `incomplete` (an order not judged, or
a run without that turn), `empty_reply` (a reply left empty, e.g. the context was full) and
`identical_replies`.

Later turns (the multi-turn rule). For turn t the judge read each answer run's own conversation
(its own earlier replies) and compared only the two replies to turn t (MT-bench's multi-turn
pairwise prompt). A pair says what that verdict says: `prompt` is what the two conversations
share (the first user turn, and any earlier turns whose replies are the same in both runs);
`chosen` and `rejected` are each run's own conversation from where they part through turn t, the
earlier replies and user turns in it as context (weight 0) and only the judged reply trained on
(weight 1). So a turn-2 pair whose first replies differ is
`prompt [u1]`, `chosen [a1 (0), u2, a2 (1)]`, `rejected [b1 (0), u2, b2 (1)]`; when the first replies
agree, it is `prompt [u1, a1, u2]`, `chosen [a2]`, `rejected [b2]`. A turn's pair does not depend on
the earlier turns' verdicts: they have pairs of their own.

The answer runs' system prompt goes with the pairs when both used the same one. Reads go through
the store's read API.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from openchat_cli.errors import OpenchatError
from store.catalog import Catalog
from store.verdicts import load_pairs

DROP_REASONS = ("flipped", "tie", "unparsed", "incomplete", "empty_reply", "identical_replies")


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


Messages = list[dict[str, Any]]


def split_conversations(users: list[str], win: list[str], lose: list[str]) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen, rejected) for the last of `users`' turns: the prompt holds the turns both
    runs share (up to the first reply that differs); each side holds its own run's conversation
    from there, earlier replies as context (weight 0), the last reply trained on (weight 1)."""
    shared = 0  # earlier turns whose replies are the same in both runs
    while shared < len(users) - 1 and win[shared] == lose[shared]:
        shared += 1
    prompt: Messages = []
    for i in range(shared):
        prompt += [_message("user", users[i]), _message("assistant", win[i])]
    prompt.append(_message("user", users[shared]))

    def side(replies: list[str]) -> Messages:
        out: Messages = []
        for i in range(shared, len(users)):
            if i > shared:
                out.append(_message("user", users[i]))
            out.append(_message("assistant", replies[i], 1.0 if i == len(users) - 1 else 0.0))
        return out

    return prompt, side(win), side(lose)


def _message(role: str, content: str, weight: float = 0.0) -> dict[str, Any]:
    return {"role": role, "content": content, "weight": weight}


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
        win, lose = (a, b) if verdict == "A" else (b, a)
        if not win[turn - 1].strip() or not lose[turn - 1].strip():
            out.dropped["empty_reply"] += 1
            continue
        if " ".join(win[turn - 1].split()) == " ".join(lose[turn - 1].split()):
            out.dropped["identical_replies"] += 1
            continue
        prompt, chosen, rejected = split_conversations([str(t) for t in turns[:turn]], win[:turn], lose[:turn])
        out.chosen_from["answer_run" if verdict == "A" else "baseline"] += 1
        out.records.append(
            {
                "id": f"{row['id']}:{pair.question_id}:{turn}",
                "source": row["id"],
                "system": system,
                "condition": None,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "category": (question or {}).get("category"),
            }
        )
    return out
