"""Generated token ids → reply text, safe to stream: whole characters only, the template's
leading separator removed, `stop` strings honoured even when they straddle token boundaries.

Three things are held back until they are certain:
- bytes of a character split across tokens (byte-level BPE): text is emitted only when its
  decoding does not end in U+FFFD (the incremental scheme of vLLM and TGI: decode a short
  window of already-emitted tokens plus the new ones and emit the difference);
- the start of the reply, until it is clear whether it begins with the template's separator
  (`template.clean_reply` strips it: " Hello" → "Hello");
- a tail that could be the beginning of a stop string ("Answer: 4\\n" while stop is "\\n\\n").

When a stop string matches, the text before it is the reply and `stopped` turns true; the
caller then drops the sequence from the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

REPLACEMENT = "\ufffd"

try:  # tokenizers >= 0.21
    from tokenizers.decoders import DecodeStream as _DecodeStream
except ImportError:  # pragma: no cover - older tokenizers: the window scheme below
    _DecodeStream = None


class ReplyStream:
    def __init__(
        self,
        tokenizer: Any,
        *,
        stop: Iterable[str] = (),
        clean: Callable[[str], str] | None = None,
        strip_prefix: str = "",
        skip_token_ids: Iterable[int] = (),
    ):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.clean = clean
        self.strip_prefix = strip_prefix  # held back until the reply is known not to start with it
        self.skip_token_ids = set(skip_token_ids)
        self.ids: list[int] = []
        self.num_tokens = 0  # every token pushed (usage counts them all, stop tokens included)
        self._prefix_offset = 0
        self._read_offset = 0
        self.raw = ""  # decoded text of the tokens so far (complete characters only)
        self.emitted = ""  # what the client has been sent
        self.stopped = False  # a stop string matched
        self.finished = False
        self._searched = 0  # position in the cleaned text up to which stop strings were searched
        self._max_stop = max((len(s) for s in self.stop), default=0)
        # Fast path: the tokenizers library's incremental decoder (Rust; holds partial UTF-8).
        self._backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        self._stream = None
        if _DecodeStream is not None and self._backend is not None:
            self._stream = _DecodeStream(skip_special_tokens=True)

    # -- decoding ------------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _decode_new(self) -> None:
        if self._read_offset >= len(self.ids):
            return
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.raw += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)

    def _step(self, tok: int) -> None:
        """Feed one token to the incremental decoder (fast path)."""
        try:
            piece = self._stream.step(self._backend, tok)
        except Exception:  # a tokenizer the stream decoder cannot handle: use the window scheme
            self._stream = None
            self._prefix_offset = self._read_offset = len(self.ids) - 1
            self._resync()
            return
        if piece:
            self.raw += piece
        self._read_offset = self._prefix_offset = len(self.ids)

    def _resync(self) -> None:
        """After leaving the fast path: re-derive the emitted text from all tokens so far."""
        full = self._decode(self.ids[: self._read_offset])
        if full.startswith(self.raw) and not full.endswith(REPLACEMENT):
            self.raw = full

    def _decode_rest(self) -> None:
        """At the end: whatever is left, even an incomplete character (shown as U+FFFD)."""
        if self._stream is not None:
            full = self._decode(self.ids)
            if full.startswith(self.raw):
                self.raw = full
            return
        if self._read_offset < len(self.ids):
            prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
            full = self._decode(self.ids[self._prefix_offset :])
            if full.startswith(prefix):
                self.raw += full[len(prefix) :]
            self._prefix_offset = self._read_offset = len(self.ids)

    # -- the visible text ----------------------------------------------------------------------
    def _cleaned(self, final: bool) -> str | None:
        """The reply so far without the leading separator, or None while that is undecided."""
        if (
            self.strip_prefix
            and not final
            and len(self.raw) < len(self.strip_prefix)
            and self.strip_prefix.startswith(self.raw)
        ):
            return None
        return self.clean(self.raw) if self.clean else self.raw

    def _advance(self, final: bool) -> str:
        text = self._cleaned(final)
        if text is None:
            return ""
        if self.stop:
            start = max(0, self._searched - self._max_stop + 1)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                cut = min(hits)
                self.stopped = True
                self.finished = True
                return self._emit(text[:cut])
            self._searched = len(text)
            if not final:
                text = text[: len(text) - self._held_tail(text)]
        return self._emit(text)

    def _held_tail(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _emit(self, text: str) -> str:
        if not text.startswith(self.emitted):  # cannot happen with prefix-only cleaning
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta

    # -- public --------------------------------------------------------------------------------
    def push(self, token_ids: Iterable[int]) -> str:
        """Add generated tokens; returns the text that is now safe to send (maybe "")."""
        if self.finished:
            return ""
        for tok in token_ids:
            self.num_tokens += 1
            if tok in self.skip_token_ids:
                continue
            self.ids.append(tok)
            if self._stream is not None:
                self._step(tok)
        if self._stream is None:
            self._decode_new()
        return self._advance(final=False)

    def close(self) -> str:
        """The generation ended: flush everything still held (unless a stop string cut it)."""
        if self.finished:
            return ""
        self._decode_rest()
        delta = self._advance(final=True)
        self.finished = True
        return delta

    @property
    def text(self) -> str:
        return self.emitted
