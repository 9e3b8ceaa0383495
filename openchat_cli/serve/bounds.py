"""Lower bounds on a prompt's token count, known before tokenizing it.

A request can hold far more text than the context (100,000 short messages fit in 4 MiB);
tokenizing it all only to refuse it costs seconds of CPU. No token covers more characters than
the longest one in the vocabulary, and every message adds the template's control tokens, so
either bound above the context length refuses the request at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from openchat_cli.templates import Message, content_text


@dataclass(frozen=True)
class PromptBounds:
    max_token_chars: int  # the most characters one token can stand for
    tokens_per_message: int  # control tokens every message gets from the template (at least)

    @classmethod
    def of(cls, template: Any, vocab: dict[str, int]) -> PromptBounds:
        longest = max((len(t) for t in vocab), default=1)
        per_message = 0
        try:
            condition = getattr(template, "default_condition", "") or ""
            counts = [
                sum(1 for piece in template.message_pieces(Message(role, ""), condition) if piece.special)
                for role in ("user", "assistant")
            ]
            per_message = min(counts)
        except Exception:  # an unusual template: fall back to the character bound alone
            per_message = 0
        return cls(max_token_chars=max(1, longest), tokens_per_message=per_message)

    def text_floor(self, text: str) -> int:
        """Fewest tokens `text` can become."""
        return math.ceil(len(text) / self.max_token_chars)

    def chat_floor(self, messages: list[dict[str, Any]], condition: str | None) -> int:
        """Fewest tokens the conversation's prompt can have."""
        chars = sum(len(content_text(m.get("content"))) for m in messages) + len(condition or "")
        turns = sum(1 for m in messages if m.get("role") != "system")  # system: the prefix
        return max(math.ceil(chars / self.max_token_chars), turns * self.tokens_per_message)
