"""Pairwise verdicts read one way everywhere: how the two display orders of a pair combine.

A pairwise judge run asks about every (question, turn) twice, the judged run's answer shown
first (order AB) and second (BA); each stored verdict is already mapped back to the models
('A' = the judged run won, 'B' = the baseline won, 'tie', or 'error' when unparseable). One rule
turns the two orders into the pair's result, MT-bench's:

- both orders parsed and agreeing → that verdict;
- both parsed, disagreeing → a tie, and the pair counts as inconsistent (flipped on swap);
- either order unparseable → no result; the pair counts as unparsed;
- an order not judged (yet) → no result; the pair counts as incomplete.

`openchat eval report` and the TUI's verdicts browser both read pairs through this module, so
their counts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from store.catalog import Catalog

VERDICTS = ("A", "B", "tie")
ORDERS = ("AB", "BA")


def order_verdict(judgment: dict[str, Any]) -> str:
    """One stored judgment as 'A' | 'B' | 'tie', or 'error' when it was not parsed."""
    verdict = judgment.get("verdict")
    return verdict if judgment.get("parse_ok") and verdict in VERDICTS else "error"


@dataclass(frozen=True)
class Pair:
    """One (question, turn) of a pairwise run: its verdict in each order, combined."""

    question_id: str
    turn: int
    ab: str | None  # 'A' | 'B' | 'tie' | 'error'; None when not judged in that order
    ba: str | None

    @property
    def status(self) -> str:
        """'combined' when the pair has a result, else why not: 'incomplete' | 'unparsed'."""
        if self.ab is None or self.ba is None:
            return "incomplete"
        if "error" in (self.ab, self.ba):
            return "unparsed"
        return "combined"

    @property
    def verdict(self) -> str | None:
        """'A' | 'B' | 'tie' for the judged run, or None when the pair is left out."""
        if self.status != "combined":
            return None
        return self.ab if self.ab == self.ba else "tie"

    @property
    def inconsistent(self) -> bool:
        """Both orders parsed and they disagree (flipped on swap)."""
        return self.status == "combined" and self.ab != self.ba


@dataclass(frozen=True)
class PairCounts:
    win: int = 0
    loss: int = 0
    tie: int = 0
    inconsistent: int = 0  # of the ties, those from disagreeing orders
    unparsed: int = 0  # pairs left out: an order's verdict unparseable
    incomplete: int = 0  # pairs left out: an order not judged

    @property
    def pairs(self) -> int:
        """Pairs with a result (both orders parsed)."""
        return self.win + self.loss + self.tie


def pairs_from(judgments: Iterable[dict[str, Any]]) -> list[Pair]:
    """Pairs from judgment rows (question_id, turn, order, verdict, parse_ok), in the order each
    pair first appears. Should an order hold two verdicts, the first one counts (the catalog
    keeps one per unit since migration m004)."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for j in judgments:
        orders = found.setdefault((str(j["question_id"]), int(j.get("turn") or 1)), {})
        order = j.get("order") or "AB"
        if order in ORDERS:
            orders.setdefault(order, order_verdict(j))
    return [Pair(qid, turn, orders.get("AB"), orders.get("BA")) for (qid, turn), orders in found.items()]


def count(pairs: Iterable[Pair]) -> PairCounts:
    win = loss = tie = inconsistent = unparsed = incomplete = 0
    for pair in pairs:
        verdict = pair.verdict
        win += verdict == "A"
        loss += verdict == "B"
        tie += verdict == "tie"
        inconsistent += pair.inconsistent
        unparsed += pair.status == "unparsed"
        incomplete += pair.status == "incomplete"
    return PairCounts(win, loss, tie, inconsistent, unparsed, incomplete)


def load_pairs(cat: Catalog, eval_id: str) -> list[Pair]:
    """The pairs of one pairwise judge run, as stored."""
    return pairs_from(
        cat.query(
            'select question_id, turn, "order", verdict, parse_ok from judgments where eval_id = ? order by id',
            [eval_id],
        )
    )
