"""Shared record types for `openchat data`: where a record came from, and why one was dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Location:
    """Where a raw record sits: file, 1-based line (when known) and 1-based record number."""

    file: str
    record: int
    line: int | None = None

    def __str__(self) -> str:
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
        return f"{text} (record {self.record})"


@dataclass
class RawItem:
    """One record read from an input: parsed JSON (or None) and, if unreadable, why."""

    loc: Location
    data: Any = None
    error: str | None = None  # set when the record could not be parsed at all
    container: str = "json"  # json | jsonl | html (values of html pages are rendered HTML)


class Malformed(Exception):
    """A record that is not what its format promises (missing field, wrong type)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        base = super().__str__()
        return f"field '{self.field}': {base}" if self.field else base


class Drop(Exception):
    """A conversation removed by a cleaning step; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


# Every reason a conversation can be dropped, in report order, with a one-line explanation.
REASONS: dict[str, str] = {
    "malformed": "record unreadable or missing required fields",
    "unknown_role": "a message has a role other than user/assistant/system",
    "model_filtered": "model not selected by --keep-model",
    "source_filtered": "source not selected by --keep-source",
    "empty": "no messages",
    "misplaced_system": "a system message after the conversation started",
    "empty_message": "a message with no text",
    "leading_assistant": "starts with an assistant turn",
    "trailing_user": "ends with an unanswered user turn",
    "one_turn": "a single message, nothing to learn from",
    "non_alternating": "two user or two assistant turns in a row",
    "too_short": "less text than --min-chars",
    "blocked_word": "contains a blocked word",
    "no_trainable_reply": "every assistant reply has weight 0",
    "duplicate": "exact duplicate of an earlier conversation",
    "near_duplicate": "near-duplicate (MinHash) of an earlier conversation",
}

# Reasons only a preference pair is dropped for (the others above apply to pairs, too).
PAIR_REASONS: dict[str, str] = {
    "tie": "the two replies are rated equally: no preference to learn",
    "identical_replies": "chosen and rejected are the same text",
    "prompt_not_user": "the prompt does not end with a user turn (or the replies do not start with the assistant)",
}
ALL_REASONS: dict[str, str] = {**REASONS, **PAIR_REASONS}

# Structure checks that `--skip-check` may switch off.
SKIPPABLE = (
    "empty_message",
    "leading_assistant",
    "trailing_user",
    "one_turn",
    "non_alternating",
    "too_short",
    "misplaced_system",
    "no_trainable_reply",
)


@dataclass
class Conv:
    """A normalised conversation on its way through `clean` (the JSONL contract plus bookkeeping)."""

    id: str
    source: str
    messages: list[dict[str, Any]]  # {"role", "content", "weight"?, "input"?}; may include system
    system: str | None = None
    condition: str | None = None
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return record_json(self, "messages")


@dataclass
class Pair:
    """A normalised preference pair on its way through `clean` (the pairs JSONL contract).

    `prompt` holds the shared turns (ending with a user turn), `chosen` and `rejected` the two
    continuations (starting with an assistant turn); messages as in `Conv`."""

    id: str
    source: str
    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    system: str | None = None
    condition: str | None = None
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return record_json(self, "prompt", "chosen", "rejected")


def record_json(record: Conv | Pair, *turns: str) -> dict[str, Any]:
    """A record's JSONL object: id, source, system, condition, its lists of turns, then `model`
    only where the source named one."""
    out: dict[str, Any] = {
        "id": record.id,
        "source": record.source,
        "system": record.system,
        "condition": record.condition,
    }
    out.update((name, getattr(record, name)) for name in turns)
    if record.model is not None:
        out["model"] = record.model
    return out
