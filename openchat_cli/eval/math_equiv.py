"""Are two MATH answers the same value? Equivalence through math-verify (a maintained LaTeX/sympy
answer checker), so 0.5, \\frac{1}{2} and \\dfrac12 agree, instead of comparing strings.

`strict=True` mirrors the reference harness's habit of grading the *whole* extracted string:
a candidate that still holds prose ("144 because …") is not an answer, even when it contains one.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

MAX_CANDIDATE_CHARS = 256  # the reference grades at most this much (it keeps sympy from hanging)
_LATEX_COMMAND = re.compile(r"\\(?:begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
_TEXT_BLOCK = re.compile(r"\\(?:text|mbox|mathrm)\s*\{[^{}]*\}")
_WORD = re.compile(r"[A-Za-z]{3,}")
_UNIT_WORDS = {
    "degree",
    "degrees",
    "units",
    "unit",
    "inches",
    "inch",
    "feet",
    "foot",
    "meters",
    "meter",
    "cm",
    "dollars",
    "cents",
    "hours",
    "minutes",
    "seconds",
    "days",
    "sqrt",
    "pi",
    "infty",
}


def is_bare_answer(candidate: str) -> bool:
    """True when `candidate` is a math answer on its own, not a sentence that contains one."""
    text = _TEXT_BLOCK.sub(" ", candidate)
    text = _LATEX_COMMAND.sub(" ", text)
    words = [w.lower() for w in _WORD.findall(text)]
    return all(w in _UNIT_WORDS for w in words)


@lru_cache(maxsize=4096)
def _parsed(text: str):
    from math_verify import parse

    return parse(text, parsing_timeout=_timeout())


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse_answer(text: str):
    """The answer in `text`; text without math delimiters is read as one whole expression."""
    text = text.strip()
    if "$" in text or "\\boxed" in text or "\\[" in text:
        return _parsed(text)
    return _parsed(f"$\\boxed{{{text}}}$") or _parsed(text)


def math_equal(candidate: str | None, gold: str, *, strict: bool = False) -> bool:
    """Whether `candidate` (a reply's answer text) equals `gold` (the reference \\boxed{} content)."""
    if candidate is None:
        return False
    candidate = candidate[:MAX_CANDIDATE_CHARS].strip()
    if not candidate:
        return False
    if strict and not is_bare_answer(candidate):
        return False
    return _equivalent(candidate, gold)


@lru_cache(maxsize=4096)
def _equivalent(candidate: str, gold: str) -> bool:
    """Cached: the reference and lenient columns often compare the same candidate."""
    if _plain(candidate) == _plain(gold):
        return True
    from math_verify import verify

    gold_parsed = _parsed(f"$\\boxed{{{gold}}}$")
    answer = _parse_answer(candidate)
    if not gold_parsed or not answer:
        return False
    try:
        return bool(verify(gold_parsed, answer, timeout_seconds=_timeout()))
    except Exception:  # math-verify raises on inputs sympy cannot handle: not equal
        return False


def _plain(text: str) -> str:
    text = _TEXT_BLOCK.sub(lambda m: m.group(0).split("{", 1)[1][:-1], text)
    return re.sub(r"[\s$]", "", text).rstrip(".").lower()
