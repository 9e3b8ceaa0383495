"""The `data clean` steps for preference pairs, the same guarantees as for conversations.

Order: model / source filter; HTML to Markdown and trimming (every message); structure (system
prompt, empty messages, a prompt ending with a user turn and replies starting with the
assistant, alternation, `--min-chars` on prompt + chosen, chosen ≠ rejected); blocked words in
the system prompt, prompt and chosen reply (a rejected reply may hold them: that is what the
model learns to avoid); weights (prompt 0, reply turns the class weight; unwanted phrases are
not applied: zeroing a chosen reply would leave nothing to prefer); exact / near dedup on the
whole pair.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from openchat_cli.data.dedup import normalized_hash, normalized_text
from openchat_cli.data.records import Conv, Drop, Malformed, Pair

if TYPE_CHECKING:
    from openchat_cli.data.clean import Cleaner

SIDES = ("prompt", "chosen", "rejected")


def _shim(pair: Pair, messages: list[dict[str, Any]] | None = None) -> Conv:
    """A `Conv` view of a pair for the steps shared with conversations (filters, text, class)."""
    return Conv(
        id=pair.id,
        source=pair.source,
        messages=messages or [],
        system=pair.system,
        condition=pair.condition,
        model=pair.model,
    )


def clean_pair(cleaner: Cleaner, pair: Pair, shape: str) -> Pair:
    """The cleaned pair, or Drop / Malformed."""
    cleaner._filter(_shim(pair))
    shim = _shim(pair, pair.prompt + pair.chosen + pair.rejected)  # the same dicts: edited in place
    cleaner._text(shim, shape)
    pair.system = shim.system
    trimmed = _structure(cleaner, pair)
    _words(cleaner, pair)
    _weights(cleaner, pair)
    _dedup(cleaner, pair)
    if trimmed:
        cleaner.result.fixes["trimmed_pairs"] += 1
    return pair


def _structure(cleaner: Cleaner, pair: Pair) -> int:
    skip = cleaner.skip
    prompt = pair.prompt
    while prompt and prompt[0]["role"] == "system":
        text = prompt.pop(0)["content"]
        if text:
            pair.system = text if pair.system is None else pair.system + "\n\n" + text
    for side in SIDES:
        msgs = getattr(pair, side)
        if any(m["role"] == "system" for m in msgs):
            if "misplaced_system" not in skip:
                i = next(i for i, m in enumerate(msgs) if m["role"] == "system")
                raise Drop("misplaced_system", f"{side} message {i} is a system message")
            msgs[:] = [m for m in msgs if m["role"] != "system"]
        if "empty_message" not in skip:
            for i, m in enumerate(msgs):
                if not m["content"]:
                    raise Drop("empty_message", f"{side} message {i} ({m['role']}) is empty")
        else:
            msgs[:] = [m for m in msgs if m["content"]]
    trimmed = 0
    if cleaner.o.trim_ends:
        while prompt and prompt[0]["role"] == "assistant" and "leading_assistant" not in skip:
            prompt.pop(0)
            trimmed += 1
        for side in ("chosen", "rejected"):
            msgs = getattr(pair, side)
            while msgs and msgs[-1]["role"] == "user" and "trailing_user" not in skip:
                msgs.pop()
                trimmed += 1
    for side in SIDES:
        if not getattr(pair, side):
            raise Drop("empty", f"no {side} messages" + (" left after trimming" if trimmed else ""))
    if prompt[0]["role"] == "assistant" and "leading_assistant" not in skip:
        raise Drop("leading_assistant", "the prompt starts with an assistant turn")
    if prompt[-1]["role"] != "user":
        raise Drop("prompt_not_user", f"the prompt ends with a {prompt[-1]['role']} turn")
    for side in ("chosen", "rejected"):
        msgs = getattr(pair, side)
        if msgs[0]["role"] != "assistant":
            raise Drop("prompt_not_user", f"the {side} reply starts with a {msgs[0]['role']} turn")
        if msgs[-1]["role"] == "user" and "trailing_user" not in skip:
            raise Drop("trailing_user", f"the {side} reply ends with a user turn")
    if "non_alternating" not in skip:
        for side in ("chosen", "rejected"):
            msgs = prompt + getattr(pair, side)
            for i in range(1, len(msgs)):
                if msgs[i]["role"] == msgs[i - 1]["role"]:
                    raise Drop("non_alternating", f"{side}: messages {i - 1} and {i} are both {msgs[i]['role']}")
    if cleaner.o.min_chars > 0 and "too_short" not in skip:
        total = sum(len(m["content"]) for m in prompt + pair.chosen)
        if total < cleaner.o.min_chars:
            raise Drop("too_short", f"prompt + chosen: {total} characters < --min-chars {cleaner.o.min_chars}")
    if normalized_text(None, pair.chosen) == normalized_text(None, pair.rejected):
        raise Drop("identical_replies", "chosen and rejected have the same text")
    return trimmed


def _words(cleaner: Cleaner, pair: Pair) -> None:
    if cleaner.blocked is None:
        return
    for text in [pair.system or ""] + [m["content"] for m in pair.prompt + pair.chosen]:
        word = cleaner.blocked.search(text)
        if word:
            raise Drop("blocked_word", f"contains '{word}'")


def _weights(cleaner: Cleaner, pair: Pair) -> None:
    cls = cleaner._class(_shim(pair))
    pair.condition = cls if cls is not None else pair.condition
    class_weight = cleaner.o.weights.get(cls, cleaner.o.default_weight) if cls is not None else cleaner.o.default_weight
    for m in pair.prompt:
        m["weight"] = 0.0  # the prompt is context on both sides, never trained on
    for side in ("chosen", "rejected"):
        for i, m in enumerate(getattr(pair, side)):
            if m["role"] != "assistant":
                m["weight"] = 0.0
                continue
            weight = float(m.get("weight", 1.0)) * class_weight
            if not math.isfinite(weight):
                raise Malformed(
                    f"weight {m.get('weight')} × class weight {class_weight} is not a finite number",
                    f"{side}[{i}].weight",
                )
            m["weight"] = weight
        if "no_trainable_reply" not in cleaner.skip and not any(
            m["role"] == "assistant" and m["weight"] > 0 for m in getattr(pair, side)
        ):
            raise Drop("no_trainable_reply", f"every {side} reply turn has weight 0")


def _tagged(pair: Pair) -> list[dict[str, Any]]:
    """Every message with its side in the role, so the same text as prompt and as reply differ."""
    return [{"role": f"{side}:{m['role']}", "content": m["content"]} for side in SIDES for m in getattr(pair, side)]


def _dedup(cleaner: Cleaner, pair: Pair) -> None:
    if cleaner.exact is None and cleaner.near is None:
        return
    messages = _tagged(pair)
    if cleaner.near is None:
        if cleaner.exact.check_and_add_hash(normalized_hash(pair.system, messages)):
            raise Drop("duplicate", "same prompt and replies as an earlier pair")
        return
    text = normalized_text(pair.system, messages)
    if cleaner.exact is not None and cleaner.exact.check_and_add(text):
        raise Drop("duplicate", "same prompt and replies as an earlier pair")
    if cleaner.near.check_and_add(text):
        raise Drop("near_duplicate", f"similar to an earlier pair (≥ {cleaner.o.near_dup_threshold})")
