"""Constrained decoding for `response_format` (`json_object`, `json_schema`) with llguidance.

Why llguidance: it is maintained (vLLM and SGLang use it), compiles a JSON schema to a grammar
in milliseconds, runs on CPU and gives a token bitmask per step from the same fast tokenizer
transformers loads, so it slots into the batched sampler as one more mask.

Two halves: `JsonGuide` is what a request asks for (checked at the API, engine-independent, the
value of `SamplingParams.guide`); `GuideState` is one sequence's position in the grammar, made by
the engine's `GuideFactory` when the sequence is admitted (so `n` choices each get their own).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("openchat.serve.guided")


class GuideError(ValueError):
    """A response_format the server cannot enforce; `param` names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class JsonGuide:
    """The reply must be JSON: any object (`schema` None) or one matching `schema`."""

    grammar: str  # llguidance's grammar, compiled from the schema
    schema_json: str | None = None  # the schema as sent (vLLM's adapter passes it on)
    name: str | None = None


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a dependency; kept for a clear message
        raise GuideError(
            "response_format needs the llguidance package (pip install llguidance)", "response_format"
        ) from None
    return llguidance


def json_guide(response_format: dict[str, Any] | None) -> JsonGuide | None:
    """The guide for an OpenAI `response_format`, None for plain text. Raises GuideError naming the
    field at fault."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    llguidance = _llguidance()
    if kind == "json_object":
        schema: dict[str, Any] = {"type": "object"}
        name = None
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise GuideError(
                "response_format.json_schema must be an object with a 'schema'", "response_format.json_schema"
            )
        name = spec.get("name")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise GuideError(
                "response_format.json_schema.schema must be a JSON object", "response_format.json_schema.schema"
            )
    else:
        raise GuideError(
            f"response_format type '{kind}' is not supported (text, json_object or json_schema)", "response_format.type"
        )
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except (ValueError, TypeError) as exc:
        raise GuideError(f"invalid JSON schema: {exc}", "response_format.json_schema.schema") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise GuideError(f"invalid JSON schema: {error}", "response_format.json_schema.schema")
    return JsonGuide(grammar, json.dumps(schema) if kind == "json_schema" else None, name)


class GuideState:
    """One sequence inside its grammar: which tokens may come next, and what came."""

    def __init__(self, matcher: Any, eos_id: int | None, stop_ids: tuple[int, ...]):
        self.matcher = matcher
        self.eos_id = eos_id
        self.stop_ids = tuple(stop_ids)

    def allowed(self, vocab: int):
        """A bool tensor [vocab]: True where the grammar accepts the token. Where the grammar
        is complete (or broken), only the request's stop tokens."""
        import numpy as np
        import torch

        mask = torch.zeros(vocab, dtype=torch.bool)
        if self.matcher.is_error():
            log.warning("constrained decoding failed: %s", self.matcher.get_error())
        elif not self.matcher.is_stopped():
            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")[
                :vocab
            ]
            mask[: len(bits)] = torch.from_numpy(bits.astype(bool))
            if self.eos_id is None or self.eos_id >= vocab or not bool(mask[self.eos_id]):
                return mask if bool(mask.any()) else self._stops(mask)
        return self._stops(mask)

    def _stops(self, mask):
        for token in self.stop_ids + ((self.eos_id,) if self.eos_id is not None else ()):
            if 0 <= token < mask.shape[0]:
                mask[token] = True
        return mask

    def consume(self, token: int) -> None:
        if token in self.stop_ids and token != self.eos_id:
            token = self.eos_id if self.eos_id is not None else token
        if not self.matcher.is_stopped() and not self.matcher.is_error():
            self.matcher.consume_token(token)


class GuideFactory:
    """Builds GuideStates for one engine's tokenizer (the llguidance tokenizer takes ~1 s to
    build, so it is made once, on the first constrained request)."""

    def __init__(self, tokenizer: Any, vocab: int):
        self.tokenizer = tokenizer
        self.vocab = vocab
        self._ll_tokenizer = None

    def start(self, guide: JsonGuide, stop_ids: tuple[int, ...]) -> GuideState:
        llguidance = _llguidance()
        if self._ll_tokenizer is None:
            import llguidance.hf

            self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab)
        matcher = llguidance.LLMatcher(self._ll_tokenizer, guide.grammar, log_level=0)
        return GuideState(matcher, getattr(self.tokenizer, "eos_token_id", None), stop_ids)
