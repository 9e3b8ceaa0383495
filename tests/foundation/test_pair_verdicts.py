"""store/verdicts.py: the one rule that combines a pair's two orders, for report and TUI alike."""

from __future__ import annotations

import pytest

from store.verdicts import PairCounts, count, pairs_from


def _row(qid: str, order: str, verdict: str, turn: int = 1) -> dict:
    return {
        "question_id": qid,
        "turn": turn,
        "order": order,
        "verdict": verdict,
        "parse_ok": int(verdict in ("A", "B", "tie")),
    }


@pytest.mark.parametrize(
    "ab, ba, verdict, status, inconsistent",
    [
        ("A", "A", "A", "combined", False),
        ("B", "B", "B", "combined", False),
        ("tie", "tie", "tie", "combined", False),
        ("A", "B", "tie", "combined", True),  # flipped on swap
        ("A", "tie", "tie", "combined", True),  # a split verdict is a tie, not half a win
        ("tie", "B", "tie", "combined", True),
        ("A", "error", None, "unparsed", False),
        ("error", "error", None, "unparsed", False),
        ("A", None, None, "incomplete", False),
    ],
)
def test_two_orders_combine_by_one_rule(ab, ba, verdict, status, inconsistent):
    rows = [_row("1", "AB", ab)] + ([_row("1", "BA", ba)] if ba is not None else [])
    (pair,) = pairs_from(rows)
    assert (pair.verdict, pair.status, pair.inconsistent) == (verdict, status, inconsistent)


def test_counts_and_first_verdict_of_an_order_wins():
    rows = [
        _row("1", "AB", "A"),
        _row("1", "BA", "A"),
        _row("1", "BA", "B"),  # a stray second BA
        _row("1", "AB", "B", turn=2),
        _row("1", "BA", "A", turn=2),
        _row("2", "AB", "tie"),
        _row("2", "BA", "error"),
        _row("3", "AB", "B"),
        _row("3", "BA", "B"),
        _row("4", "BA", "A"),
    ]
    # an unparsed row is 'error' whatever its verdict column says
    rows.append({"question_id": "5", "turn": 1, "order": "AB", "verdict": "A", "parse_ok": 0})
    rows.append(_row("5", "BA", "A"))
    pairs = pairs_from(rows)
    assert [(p.question_id, p.turn) for p in pairs] == [("1", 1), ("1", 2), ("2", 1), ("3", 1), ("4", 1), ("5", 1)]
    assert count(pairs) == PairCounts(win=1, loss=1, tie=1, inconsistent=1, unparsed=2, incomplete=1)
    assert count(pairs).pairs == 3
