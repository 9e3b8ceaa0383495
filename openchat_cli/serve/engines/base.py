"""What the HTTP layer needs from an inference engine, whichever one runs underneath.

An engine turns prompt token ids into a stream of generated token ids. Text is not its
business: detokenizing (without splitting UTF-8 characters), the template's leading separator
and the request's `stop` strings are handled once, for every engine, by
`openchat_cli.serve.detokenize`. That keeps the vLLM adapter thin and makes both engines behave
the same way at the API.

Contract of `Engine.generate(prompt_ids, params, request_id)`:
- an async iterator of `TokenEvent`s; each carries the token ids produced since the previous
  event (possibly several when the consumer was slower than the engine);
- the last event has `finish_reason` set: "stop" (an end-of-turn / eos token was produced; it is
  included in `token_ids` and counted), "length" (`max_tokens` or the context is reached),
  "error" (the engine failed; `error` says why);
- closing the iterator early (client went away, a stop string matched) aborts the sequence: it
  leaves the running batch at the engine's next step.

Log-probabilities (the completions API's `logprobs` and `echo`): when `params.logprobs` is set,
each event's `logprobs` holds one `TokenLogprob` per token in `token_ids` (the model's raw
distribution, before temperature, top-k/p or penalties, as vLLM reports them by default); when
`params.prompt_logprobs` is set, the first event's `prompt_logprobs` holds one entry per prompt
token, `None` for the first (nothing predicts it). `max_tokens == 0` scores the prompt only: one
event with no tokens, finish_reason "length".
"""

from __future__ import annotations

import abc
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling settings (one per choice; `n` is expanded by the caller)."""

    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability (0 = off)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's: prompt and output tokens; >1 discourages repeats
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    guide: Any = None  # constrained decoding (engines.guided.JsonGuide): what the reply must match
    stop_token_ids: tuple[int, ...] = ()  # end-of-turn / eos ids (finish_reason "stop")
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    logprobs: int | None = None  # top alternatives per generated token (0 = the token's own only)
    prompt_logprobs: int | None = None  # the same for every prompt token (echo)
    adapter: str | None = None  # the LoRA adapter (`serve --lora NAME=DIR`) this sequence runs with

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class TokenLogprob:
    """How likely the model found one token, and the tokens it found most likely there."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the k most likely (token id, logprob), best first


@dataclass
class TokenEvent:
    token_ids: list[int]
    finish_reason: str | None = None  # None | "stop" | "length" | "error"
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first event only, when asked for

    def merged(self, later: TokenEvent) -> TokenEvent:
        """This event followed by a later one, as one (the consumer fell behind)."""
        logprobs = None
        if self.logprobs is not None or later.logprobs is not None:
            logprobs = (self.logprobs or []) + (later.logprobs or [])
        return TokenEvent(
            self.token_ids + later.token_ids,
            later.finish_reason,
            later.error,
            logprobs,
            self.prompt_logprobs or later.prompt_logprobs,
        )


@dataclass
class EngineStats:
    waiting: int = 0  # queued, not yet in the batch
    running: int = 0  # sequences in the running batch
    extra: dict[str, Any] = field(default_factory=dict)


class EngineError(OpenchatError):
    """The engine could not start (a clean CLI error) or failed while serving."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class Engine(abc.ABC):
    """An inference backend behind the OpenAI API."""

    #: engine name shown in /health and /v1/models ("transformers" | "vllm")
    kind: str = "?"
    tokenizer: Any
    context_length: int
    model_dir: Path
    vocab_size: int | None = None  # rows of the embedding matrix, when known

    def max_token_id(self) -> int:
        """Largest token id a prompt may contain."""
        limit = len(self.tokenizer)
        if self.vocab_size:
            limit = min(limit, self.vocab_size)
        return limit - 1

    async def start(self) -> None:
        """Called once inside the server's event loop before the first request."""

    async def shutdown(self) -> None:
        """Called once when the server stops."""

    @abc.abstractmethod
    def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> AsyncIterator[TokenEvent]:
        """Stream generated tokens for one sequence (see the module docstring)."""

    def load_weights(self, weights: Any) -> None:
        """Replace the weights being served (name -> tensor; training syncs its policy here)."""
        raise EngineError(f"the {self.kind} engine cannot take new weights")

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Queue depth and batch size, for /metrics and /health."""

    def describe(self) -> dict[str, Any]:
        """A few facts for /health and the startup banner."""
        return {"engine": self.kind, "context_length": self.context_length}


def eos_token_ids(model_dir: Path, tokenizer: Any, eot_token: str | None) -> tuple[int, ...]:
    """Token ids that end a reply: the template's end-of-turn token, generation_config's eos ids
    (an int or a list) and the tokenizer's eos token."""
    import json

    ids: list[int] = []

    def add(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            for v in value:
                add(v)
            return
        if isinstance(value, int) and value >= 0 and value not in ids:
            ids.append(value)

    if eot_token:
        tok_id = tokenizer.convert_tokens_to_ids(eot_token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if tok_id is not None and tok_id != unk:
            add(int(tok_id))
    gen_path = Path(model_dir) / "generation_config.json"
    if gen_path.exists():
        try:
            add(json.loads(gen_path.read_text()).get("eos_token_id"))
        except ValueError:
            pass
    add(getattr(tokenizer, "eos_token_id", None))
    return tuple(ids)


def vllm_available() -> bool:
    """vLLM importable and a CUDA GPU present (what `--engine auto` needs to pick vLLM)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken torch installs
        return False


def pick_engine_kind(requested: str) -> str:
    if requested == "auto":
        return "vllm" if vllm_available() else "transformers"
    if requested not in ("vllm", "transformers"):
        raise EngineError(f"unknown engine '{requested}' (choose auto, vllm or transformers)")
    return requested
