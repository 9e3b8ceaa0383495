"""Reading "the request does not fit the model's context" answers from OpenAI-compatible servers.

Servers say it in prose, each its own way; the numbers are what matter. Recognised shapes:

- vLLM / OpenAI: "This model's maximum context length is 2048 tokens. However, you requested
  2100 tokens (1076 in the messages, 1024 in the completion). …"
- newer vLLM: "… you requested 1024 output tokens and your prompt contains at least 1025 input
  tokens, for a total of at least 2049 tokens." and "'max_tokens' … is too large: 1024. This
  model's maximum context length is 2048 tokens and your request has 1500 input tokens …"
- openchat serve: "… maximum context length is 512 tokens, but the prompt has 530 tokens (no room
  to generate)."
- vLLM: "The decoder prompt (length 3000) is longer than the maximum model length of 2048."

A message with the error code `context_length_exceeded` but no numbers is still recognised;
the caller then retries without `max_tokens` and lets the server use what the context leaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTEXT_CODE = "context_length_exceeded"

_CONTEXT = [
    re.compile(p, re.I)
    for p in (
        r"maximum context length is (\d+)",
        r"maximum (?:model|sequence) length (?:is |of )?(\d+)",
        r"context (?:length|window) (?:is |of )(\d+)",
    )
]
_PROMPT = [
    re.compile(p, re.I)
    for p in (
        r"\((\d+) in the (?:messages|prompt|input)",
        r"prompt (?:contains|has) (?:at least )?(\d+)",
        r"request has (?:at least )?(\d+) input tokens",
        r"prompt \(length (\d+)\)",
        r"messages resulted in (\d+) tokens",  # OpenAI, when it gives no breakdown
    )
]
_HINTS = re.compile(
    r"maximum context length|maximum model length|context length|context window"
    r"|too many tokens|prompt is too long|input is too long",
    re.I,
)


@dataclass(frozen=True)
class ContextOverflow:
    """What a too-long-request error told us; None where it did not say."""

    context_length: int | None
    prompt_tokens: int | None
    at_least: bool  # the prompt count is a lower bound ("at least N input tokens")

    @property
    def room(self) -> int | None:
        """Tokens left for the completion, when both numbers are known (<= 0: no room)."""
        if self.context_length is None or self.prompt_tokens is None:
            return None
        return self.context_length - self.prompt_tokens


def _first(patterns: list[re.Pattern], text: str) -> int | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    return None


def parse_context_overflow(status: int, code: object, message: str) -> ContextOverflow | None:
    """A `ContextOverflow` when a 400/413/422 error means "longer than the context", else None."""
    if status not in (400, 413, 422):
        return None
    if code != CONTEXT_CODE and not _HINTS.search(message or ""):
        return None
    text = message or ""
    return ContextOverflow(
        context_length=_first(_CONTEXT, text), prompt_tokens=_first(_PROMPT, text), at_least="at least" in text.lower()
    )
