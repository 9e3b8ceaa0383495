"""An async OpenAI-compatible chat client for many concurrent requests.

The `openai` SDK with its aiohttp transport (`DefaultAioHttpClient`) does the HTTP; retries are
ours (the SDK's are turned off) so that 429 / 5xx / connection failures back off the same way
everywhere, honour `Retry-After`, and end in one clear `EndpointError` when they run out.
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

DEFAULT_RETRIES = 6
DEFAULT_RETRY_WAIT_S = 1.0
MAX_RETRY_WAIT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0


class EndpointError(OpenchatError):
    """The endpoint failed for good (retries spent, or an error retrying cannot fix)."""

    def __init__(self, message: str, *, fatal: bool = True, status: int | None = None):
        super().__init__(message, exit_code=1)
        self.fatal = fatal  # False: only this request is bad (e.g. 400 prompt too long)
        self.status = status


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)





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

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 concurrency: int = 32, retries: int = DEFAULT_RETRIES,
                 retry_wait_s: float = DEFAULT_RETRY_WAIT_S, timeout_s: float = DEFAULT_TIMEOUT_S):
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

    async def __aenter__(self) -> "ChatClient":
        import httpx2

        limits = httpx2.Limits(max_connections=max(100, self.concurrency * 2),
                               max_keepalive_connections=max(20, self.concurrency))
        http_client = openai.DefaultAioHttpClient(
            limits=limits, timeout=httpx2.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)))
        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                                          http_client=http_client, timeout=self.timeout_s)
        self._semaphore = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _backoff(self, attempt: int, exc: Exception) -> float:
        hinted = _retry_after(exc)
        wait = self.retry_wait_s * (2 ** attempt)
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
                raise EndpointError(f"{self.base_url}/models answered {exc.status_code}: "
                                    f"{server_message(exc)}", status=exc.status_code) from None
        raise EndpointError(f"could not reach {self.base_url} after {self.retries + 1} attempts: {last}")

    async def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0,
                       max_tokens: int | None = None, **extra: Any) -> Completion:
        """One chat completion, retried with exponential backoff on 429 / 5xx / connection errors."""
        assert self._client is not None and self._semaphore is not None, "use `async with ChatClient(...)`"
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        kwargs.update({k: v for k, v in extra.items() if v is not None})
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
                        raise EndpointError(
                            f"{self.base_url} refused the request ({exc.status_code}): {server_message(exc)}",
                            fatal=fatal, status=exc.status_code) from None
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
                        latency_s=latency, finish_reason=choice.finish_reason, attempts=attempt + 1,
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
