"""Engine token logprobs → the API's shapes: the legacy completions `logprobs` object
(`LogprobsBuilder`) and chat completions' `logprobs.content` list (`ChatLogprobsBuilder`).

Completions:
`{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, one entry per token: the
prompt's tokens first when `echo` is set (the first has no logprob: nothing predicts it), then
the generated ones. As in vLLM, a token's text is that token decoded on its own (a piece of a
multi-byte character shows as U+FFFD), `top_logprobs` maps the k most likely tokens' texts to
their logprobs and always includes the token itself, and `text_offset` is where the token starts
in the returned text: the tokenizer's character offsets for a text prompt, running sums of the
token texts for token-id prompts and generated tokens.
"""

from __future__ import annotations

import re
from typing import Any

from openchat_cli.serve.engines.base import TokenLogprob
from openchat_cli.serve.protocol import ChatTokenLogprob, ChatTopLogprob


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character → the byte it stands for (GPT-2's scheme:
    printable Latin-1 bytes stand for themselves, the others are shifted past U+0100)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in keep}
    shift = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + shift)] = b
            shift += 1
    return table


BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenTexts:
    """Token id → its text as the API shows it (a single-token decode, cached), and its raw
    bytes (chat logprobs' `bytes`: a piece of a multi-byte character has its own bytes even
    though its text alone is U+FFFD)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = _byte_level_alphabet() if "ByteLevel" in repr(decoder) else None
        self._special = set(getattr(tokenizer, "all_special_ids", ()) or ())

    def bytes(self, token_id: int) -> list[int]:
        found = self._bytes.get(token_id)
        if found is None:
            found = self._bytes[token_id] = self._raw_bytes(token_id)
        return found

    def _raw_bytes(self, token_id: int) -> list[int]:
        text = self(token_id)
        if token_id in self._special:
            return list(text.encode("utf-8"))
        try:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
        except Exception:
            piece = None
        if isinstance(piece, str):
            fallback = BYTE_FALLBACK.fullmatch(piece)
            if fallback:
                return [int(fallback.group(1), 16)]
            table = self._byte_level
            if table is not None and piece and all(ch in table for ch in piece):
                return [table[ch] for ch in piece]
        return list(text.encode("utf-8"))

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            try:
                text = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            except Exception:  # an id past the tokenizer (padded embedding rows)
                text = ""
            self._cache[token_id] = text
        return text


def prompt_offsets(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[list[int], list[int] | None]:
    """A text prompt's token ids and, from a fast tokenizer, each token's start in `text`."""
    if not text:
        return [], []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [int(start) for start, _end in enc["offset_mapping"]]
    return tokenizer.encode(text, add_special_tokens=add_special_tokens), None


class LogprobsBuilder:
    """Collects one choice's logprobs; `take()` hands out what was added since the last call
    (one streamed chunk), `result()` everything (the non-streamed response)."""

    def __init__(self, texts: TokenTexts):
        self.texts = texts
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []
        self.next_offset = 0  # where the next generated token starts in the returned text
        self._taken = 0

    def _add(self, token_id: int, entry: TokenLogprob | None, offset: int) -> None:
        self.tokens.append(self.texts(token_id))
        self.text_offset.append(offset)
        if entry is None:
            self.token_logprobs.append(None)
            self.top_logprobs.append(None)
            return
        self.token_logprobs.append(entry.logprob)
        top = {self.texts(t): lp for t, lp in entry.top}
        top.setdefault(self.texts(entry.token_id), entry.logprob)
        self.top_logprobs.append(top)

    def add_prompt(
        self, prompt_ids: list[int], scores: list[TokenLogprob | None], offsets: list[int] | None, text_length: int
    ) -> None:
        """The echoed prompt: `scores[i]` is prompt token i's logprob (None for the first)."""
        running = 0
        for i, token_id in enumerate(prompt_ids):
            if offsets is not None and i < len(offsets):
                offset = offsets[i]
            else:
                offset = min(running, text_length)
                running += len(self.texts(token_id))
            self._add(token_id, scores[i] if i < len(scores) else None, offset)
        self.next_offset = text_length

    def start_generation_at(self, offset: int) -> None:
        self.next_offset = offset

    def add_generated(self, entries: list[TokenLogprob]) -> None:
        for entry in entries:
            self._add(entry.token_id, entry, self.next_offset)
            self.next_offset += len(self.tokens[-1])

    @property
    def pending(self) -> bool:
        return self._taken < len(self.tokens)

    def _slice(self, start: int) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }

    def take(self) -> dict[str, Any]:
        out = self._slice(self._taken)
        self._taken = len(self.tokens)
        return out

    def result(self) -> dict[str, Any]:
        return self._slice(0)


class ChatLogprobsBuilder:
    """One chat choice's `logprobs.content`: `{token, logprob, bytes, top_logprobs: [{token,
    logprob, bytes}]}` per generated token, the `top` most likely first (OpenAI's shape; as in
    vLLM, a token's text is the token decoded alone; `bytes` are its raw bytes). End-of-turn tokens
    are not part of the message and are left out, as the text leaves them out."""

    def __init__(self, texts: TokenTexts, top: int, skip_token_ids: tuple[int, ...] = ()):
        self.texts, self.top, self.skip = texts, top, frozenset(skip_token_ids)
        self.content: list[ChatTokenLogprob] = []
        self._taken = 0

    def _entry(self, token_id: int, logprob: float) -> ChatTopLogprob:
        return ChatTopLogprob(token=self.texts(token_id), logprob=logprob, bytes=self.texts.bytes(token_id))

    def add_generated(self, entries: list[TokenLogprob]) -> None:
        for entry in entries:
            if entry.token_id in self.skip:
                continue
            alternatives = [self._entry(t, lp) for t, lp in entry.top[: self.top]]
            own = self._entry(entry.token_id, entry.logprob)
            self.content.append(
                ChatTokenLogprob(token=own.token, logprob=own.logprob, bytes=own.bytes, top_logprobs=alternatives)
            )

    @property
    def pending(self) -> bool:
        return self._taken < len(self.content)

    def take(self) -> list[ChatTokenLogprob]:
        out = self.content[self._taken :]
        self._taken = len(self.content)
        return out

    def result(self) -> list[ChatTokenLogprob]:
        return list(self.content)
