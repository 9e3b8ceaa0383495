"""The judge: a model with its prompt set, turning one match into one verdict.

`Judge` renders a match into chat messages (picking the prompt slot: single or pairwise, first
or later turn, reference-guided where the category has a reference answer, as MT-bench does) and
reads the judge's text back into a verdict. `judge_match` is the one call in between. Neither
knows about runs or the catalog (judge.py plans, stores and orchestrates).

- Pairwise verdicts are mapped back to the models: 'A' = the judged run won, whatever the
  display order; the verdict about display positions is kept in meta as `shown`.
- The judge's raw text is always kept; an unparseable verdict is 'error', never a score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from openchat_cli.eval.client import ChatClient, EndpointError
from openchat_cli.eval.judge_prompts import JudgePrompt, PromptSet, load_prompts
from openchat_cli.eval.matches import Match, PairMatch
from openchat_cli.eval.questions import Question

# Categories judged against the reference answer when the question has one (as MT-bench does).
REFERENCE_CATEGORIES = {"math", "reasoning", "coding", "arena-hard-200"}
DEFAULT_JUDGE_MAX_TOKENS = 2048

PAIR_RE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
RATING_RE = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
RATING_LINE_RE = re.compile(r"rating\s*[:=]\s*\**\s*\[?\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?", re.IGNORECASE)
RATING_BACKUP_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*\]")


# -- reading the judge's text ---------------------------------------------------------------------


def parse_pairwise(text: str | None) -> str:
    """'A', 'B', 'tie' (for [[C]] or [[tie]]) or 'error' when no verdict, or conflicting ones."""
    found = {m.upper() for m in PAIR_RE.findall(text or "")}
    found = {"tie" if m in ("C", "TIE") else m for m in found}
    return found.pop() if len(found) == 1 else "error"


def parse_rating(text: str | None) -> float | None:
    """The 1-10 rating: the last `[[x]]`, else the last `Rating: x`, else the last `[x]`.
    None when there is none or it is out of range."""
    text = text or ""
    for pattern in (RATING_RE, RATING_LINE_RE, RATING_BACKUP_RE):
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def map_back(shown: str, order: str) -> str:
    """A verdict about the display positions → a verdict about the models (A = judged run)."""
    if order == "BA" and shown in ("A", "B"):
        return "B" if shown == "A" else "A"
    return shown


# -- filling prompts ------------------------------------------------------------------------------


def conversation_text(turns: list[str], replies: list[str], upto: int) -> str:
    parts = []
    for i in range(upto):
        parts.append(f"### User (turn {i + 1}):\n{turns[i]}")
        parts.append(f"### Assistant (turn {i + 1}):\n{replies[i] if i < len(replies) else ''}")
    return "\n\n".join(parts)


def needs_reference(question: Question, turn: int) -> bool:
    ref = question.reference or []
    return (
        (question.category or "").lower() in REFERENCE_CATEGORIES
        and len(ref) >= turn
        and bool(str(ref[turn - 1]).strip())
    )


def variables(
    question: Question, turn: int, replies_a: list[str], replies_b: list[str] | None = None
) -> dict[str, Any]:
    """Every placeholder a prompt may use, FastChat's names and ours (for `replies_b`: pairwise)."""
    turns = question.turns
    ref = question.reference or []
    out: dict[str, Any] = {
        "turn": turn,
        "question": turns[turn - 1],
        "reference": ref[turn - 1] if len(ref) >= turn else "",
    }
    for i, text in enumerate(turns, start=1):
        out[f"question_{i}"] = text
    for i, text in enumerate(ref, start=1):
        out[f"ref_answer_{i}"] = text
    if replies_b is None:
        out["answer"] = replies_a[turn - 1]
        for i, text in enumerate(replies_a, start=1):
            out[f"answer_{i}"] = text
        out["conversation"] = conversation_text(turns, replies_a, turn)
    else:
        out["answer_a"] = replies_a[turn - 1]
        out["answer_b"] = replies_b[turn - 1]
        for i, text in enumerate(replies_a, start=1):
            out[f"answer_a_{i}"] = text
        for i, text in enumerate(replies_b, start=1):
            out[f"answer_b_{i}"] = text
        out["conversation_a"] = conversation_text(turns, replies_a, turn)
        out["conversation_b"] = conversation_text(turns, replies_b, turn)
    return out


# -- the judge ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the judge said about one match (stored as one judgments row)."""

    match: Match
    prompt_name: str
    raw: str  # the judge's text, or why the request was refused
    verdict: str  # pairwise: A | B | tie | error (about the models); single: the rating or error
    score: float | None  # single: the 1-10 rating
    parse_ok: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judge:
    """A judge model with its prompt set (FastChat's Judge)."""

    model: str
    mode: str  # single | pairwise
    prompts: PromptSet
    max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS

    def prompt_for(self, match: Match) -> JudgePrompt:
        ref = needs_reference(match.question, match.turn)
        prompt = self.prompts[(self.mode, match.turn > 1, ref)]
        if match.turn > 2 and not prompt.uses_conversation:
            # FastChat templates name question_1/question_2 only: later turns use the built-in one.
            prompt = load_prompts(None)[(self.mode, True, ref)]
        return prompt

    def messages(self, match: Match) -> list[dict[str, str]]:
        prompt = self.prompt_for(match)
        if isinstance(match, PairMatch):
            first, second = match.shown
            return prompt.render(variables(match.question, match.turn, first, second))
        return prompt.render(variables(match.question, match.turn, match.answer))

    def read(
        self, match: Match, text: str | None, refused: str | None = None, latency_s: float | None = None
    ) -> Verdict:
        """The verdict in the judge's `text` (None with `refused`: the request was refused)."""
        q, turn = match.question, match.turn
        meta: dict[str, Any] = {
            "category": q.category,
            "reference": needs_reference(q, turn),
            "refused": refused is not None,
            "latency_s": round(latency_s, 4) if latency_s is not None else None,
            "len_a": len(match.answer[turn - 1]),
        }
        raw = f"[request refused: {refused}]" if refused is not None else (text or "")
        name = self.prompt_for(match).name
        if isinstance(match, PairMatch):
            shown = parse_pairwise(raw) if refused is None else "error"
            meta.update(shown=shown, len_b=len(match.baseline[turn - 1]))
            return Verdict(match, name, raw, map_back(shown, match.order), None, shown != "error", meta)
        score = parse_rating(raw) if refused is None else None
        return Verdict(match, name, raw, "error" if score is None else f"{score:g}", score, score is not None, meta)


async def judge_match(client: ChatClient, judge: Judge, match: Match) -> Verdict:
    """Ask the judge about one match. A request the judge refuses (e.g. too long) is a verdict
    that failed, with the reason kept; a fatal endpoint error propagates."""
    try:
        result = await client.complete(judge.messages(match), temperature=0.0, max_tokens=judge.max_tokens)
    except EndpointError as exc:
        if exc.fatal:
            raise
        return judge.read(match, None, refused=exc.message)
    return judge.read(match, result.text, latency_s=result.latency_s)
