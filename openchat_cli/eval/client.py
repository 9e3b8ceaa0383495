"""An async OpenAI-compatible chat client for many concurrent requests.

The `openai` SDK with its aiohttp transport (`DefaultAioHttpClient`) does the HTTP; retries are
ours (the SDK's are turned off) so that 429 / 5xx / connection failures back off the same way
everywhere, honour `Retry-After`, and end in one clear `EndpointError` when they run out.

Requests that do not fit the model's context are fitted, not failed: `max_tokens` is clamped to
the context learnt from /v1/models (`max_model_len`, as vLLM and `openchat serve` report it)
and, when the server still answers "context length exceeded", to the room its message reports,
or, when it gives no numbers, the request is sent once more without `max_tokens` so the server
fills the rest. Only a prompt that alone fills the context raises `ContextLengthExceeded`.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from openchat_cli.endpoints import normalize_base_url, server_message
from openchat_cli.errors import OpenchatError
from openchat_cli.eval.context_limit import ContextOverflow, parse_context_overflow

DEFAULT_RETRIES = 6
DEFAULT_RETRY_WAIT_S = 1.0
MAX_RETRY_WAIT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0


class EndpointError(OpenchatError):
    """The endpoint failed for good (retries spent, or an error retrying cannot fix)."""

    def __init__(
        self, message: str, *, fatal: bool = True, status: int | None = None, overflow: ContextOverflow | None = None
    ):
        super().__init__(message, exit_code=1)
        self.fatal = fatal  # False: only this request is bad (e.g. 400 prompt too long)
        self.status = status
        self.overflow = overflow  # set when the server said the request exceeds the context


class ContextLengthExceeded(EndpointError):
    """The prompt alone fills the model's context: no completion is possible for it."""

    def __init__(self, message: str, *, context_length: int | None, prompt_tokens: int | None):
        super().__init__(message, fatal=False, status=400)
        self.context_length = context_length
        self.prompt_tokens = prompt_tokens


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    requested_max_tokens: int | None = None  # what the caller asked for
    max_tokens: int | None = None  # what the answered request carried (None: server's choice)

    @property
    def clamped(self) -> bool:
        """The context, not the caller, set the completion budget."""
        return self.requested_max_tokens is not None and self.max_tokens != self.requested_max_tokens


# Requests re-sent to fit the context, at most (a lower-bound prompt count can take two).
MAX_FIT_ATTEMPTS = 4


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        value = response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class ChatClient:
    """Use as `async with ChatClient(...) as client: await client.complete(messages)`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 32,
        retries: int = DEFAULT_RETRIES,
        retry_wait_s: float = DEFAULT_RETRY_WAIT_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.api_key = api_key or "EMPTY"
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.retry_wait_s = max(0.0, float(retry_wait_s))
        self.timeout_s = timeout_s
        self._client: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.retried = 0  # requests re-sent after a retryable failure
        self.refitted = 0  # requests re-sent with a smaller (or no) max_tokens to fit the context
        self.context_length: int | None = None  # learnt from /v1/models or an error message
        self._context_probed = False
        self._probe_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> ChatClient:
        import httpx2

        limits = httpx2.Limits(
            max_connections=max(100, self.concurrency * 2), max_keepalive_connections=max(20, self.concurrency)
        )
        http_client = openai.DefaultAioHttpClient(
            limits=limits, timeout=httpx2.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        )
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, max_retries=0, http_client=http_client, timeout=self.timeout_s
        )
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._probe_lock = asyncio.Lock()
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _backoff(self, attempt: int, exc: Exception) -> float:
        hinted = _retry_after(exc)
        wait = self.retry_wait_s * (2**attempt)
        wait = min(MAX_RETRY_WAIT_S, wait) * (0.75 + 0.5 * random.random())
        if hinted is not None:
            wait = max(wait, min(MAX_RETRY_WAIT_S, hinted))
        return wait

    async def list_models(self) -> list[str]:
        assert self._client is not None, "use `async with ChatClient(...)`"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                page = await self._client.models.list()
                return [m.id for m in page.data]
            except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as exc:
                last = exc
                if attempt < self.retries:
                    await asyncio.sleep(self._backoff(attempt, exc))
            except openai.APIStatusError as exc:
                raise EndpointError(
                    f"{self.base_url}/models answered {exc.status_code}: {server_message(exc)}", status=exc.status_code
                ) from None
        raise EndpointError(_describe_failure(self.base_url, last, self.retries + 1))

    async def learn_context_length(self) -> int | None:
        """The served model's context from /v1/models (`max_model_len`), asked once; best effort."""
        assert self._client is not None and self._probe_lock is not None, "use `async with ChatClient(...)`"
        async with self._probe_lock:
            if self._context_probed:
                return self.context_length
            self._context_probed = True
            try:
                page = await self._client.models.list()
            except openai.OpenAIError:
                return self.context_length
            for card in page.data:
                if card.id == self.model or len(page.data) == 1:
                    value = getattr(card, "max_model_len", None)
                    if isinstance(value, int) and value > 0 and self.context_length is None:
                        self.context_length = value
        return self.context_length

    def _fit(self, max_tokens: int | None, prompt_floor: int) -> int | None:
        """`max_tokens` clamped to what the known context leaves after at least `prompt_floor`
        prompt tokens; unchanged when the context is unknown or the estimate leaves nothing."""
        if not max_tokens or self.context_length is None:
            return max_tokens
        room = self.context_length - max(1, prompt_floor)
        return min(max_tokens, room) if room >= 1 else max_tokens

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        prompt_floor: int = 0,
        **extra: Any,
    ) -> Completion:
        """One chat completion that fits the model's context (see the module doc).

        `prompt_floor`: tokens the prompt has at least (e.g. the previous turn's prompt and
        reply), used to clamp `max_tokens` before asking. Raises `ContextLengthExceeded` when
        the prompt alone does not fit.
        """
        if max_tokens and not self._context_probed:
            await self.learn_context_length()
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        fitted = self._fit(max_tokens, prompt_floor)
        if fitted:
            kwargs["max_tokens"] = fitted
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        dropped = False
        for _ in range(MAX_FIT_ATTEMPTS):
            try:
                result = await self._create(kwargs)
            except EndpointError as exc:
                if exc.overflow is None:
                    raise
                dropped = self._refit(kwargs, exc, dropped)
                self.refitted += 1
                continue
            result.requested_max_tokens = max_tokens or None
            result.max_tokens = kwargs.get("max_tokens")
            return result
        raise ContextLengthExceeded(
            f"{self.base_url}: the request still exceeds the context after {MAX_FIT_ATTEMPTS} attempts to fit it",
            context_length=self.context_length,
            prompt_tokens=None,
        )

    def _refit(self, kwargs: dict[str, Any], exc: EndpointError, dropped: bool) -> bool:
        """Shrink (or drop) max_tokens in `kwargs` after a context error; raise when the prompt
        alone cannot fit. Returns whether max_tokens has been dropped."""
        overflow = exc.overflow
        assert overflow is not None
        if overflow.context_length:
            self.context_length = overflow.context_length
        room = overflow.room
        current = kwargs.get("max_tokens")
        if room is not None and room <= 0:
            raise ContextLengthExceeded(
                exc.message, context_length=overflow.context_length, prompt_tokens=overflow.prompt_tokens
            )
        if room is not None and (current is None or room < current) and not dropped:
            kwargs["max_tokens"] = room
            return dropped
        if current is not None and not dropped:
            del kwargs["max_tokens"]  # no numbers: let the server use what the context leaves
            return True
        raise ContextLengthExceeded(
            exc.message, context_length=overflow.context_length, prompt_tokens=overflow.prompt_tokens
        )

    async def _create(self, kwargs: dict[str, Any]) -> Completion:
        """One chat completion, retried with exponential backoff on 429 / 5xx / connection errors."""
        assert self._client is not None and self._semaphore is not None, "use `async with ChatClient(...)`"
        last: Exception | None = None
        async with self._semaphore:
            for attempt in range(self.retries + 1):
                start = time.perf_counter()
                try:
                    response = await self._client.chat.completions.create(**kwargs)
                except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                    last = exc
                except openai.APIStatusError as exc:
                    if exc.status_code >= 500 or exc.status_code in (408, 409, 425):
                        last = exc
                    else:
                        fatal = exc.status_code in (401, 403, 404)
                        message = server_message(exc)
                        raise EndpointError(
                            f"{self.base_url} refused the request ({exc.status_code}): {message}",
                            fatal=fatal,
                            status=exc.status_code,
                            overflow=parse_context_overflow(exc.status_code, getattr(exc, "code", None), message),
                        ) from None
                else:
                    latency = time.perf_counter() - start
                    if not response.choices:
                        raise EndpointError(f"{self.base_url} returned no choices", fatal=False)
                    choice = response.choices[0]
                    usage = response.usage
                    return Completion(
                        text=choice.message.content or "",
                        prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
                        completion_tokens=(usage.completion_tokens or 0) if usage else 0,
                        latency_s=latency,
                        finish_reason=choice.finish_reason,
                        attempts=attempt + 1,
                    )
                if attempt < self.retries:
                    self.retried += 1
                    await asyncio.sleep(self._backoff(attempt, last))
        raise EndpointError(_describe_failure(self.base_url, last, self.retries + 1))


def _describe_failure(base_url: str, exc: Exception | None, attempts: int) -> str:
    if isinstance(exc, openai.RateLimitError):
        what = f"kept rate-limiting (429): {server_message(exc)}"
    elif isinstance(exc, openai.APIStatusError):
        what = f"kept failing ({exc.status_code}): {server_message(exc)}"
    elif isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        what = f"could not be reached ({type(cause).__name__}: {cause})"
    else:
        what = f"failed: {exc}"
    return f"endpoint {base_url} {what}; gave up after {attempts} attempts"
