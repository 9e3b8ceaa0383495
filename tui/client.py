"""Talking to an OpenAI-compatible server (`openchat serve`, vLLM, a hosted API) for the TUI.

Only the `openai` SDK is used, so the TUI works against anything that speaks the API. Errors
are turned into one `ChatError` with a kind and a sentence a person can act on; the screens
never show a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai

from tui.endpoints import DEFAULT_ENDPOINT, normalize_base_url, server_message

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0


class ChatError(Exception):
    """A failed request, classified: unreachable | auth | not_found | context | bad_request |
    server | stream (broken mid-reply)."""

    def __init__(self, kind: str, message: str, hint: str = "", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in {"unreachable", "server", "stream", "timeout"}

    def __str__(self) -> str:
        return self.message


CONTEXT_WORDS = ("context", "too long", "maximum length", "max_model_len", "prompt is longer", "tokens, but")


def classify(exc: BaseException, endpoint: str, model: str | None) -> ChatError:
    """One `ChatError` for any exception the SDK raises."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ChatError("timeout", f"The server at {endpoint} did not answer in time.", "Press ctrl+r to retry.")
    if isinstance(exc, openai.APIConnectionError):
        return ChatError(
            "unreachable",
            f"Cannot reach the server at {endpoint}.",
            "Is `openchat serve` running there? Press ctrl+r to retry.",
        )
    if isinstance(exc, openai.AuthenticationError):
        return ChatError(
            "auth",
            f"The server refused the API key (401): {server_message(exc)}",
            "Restart with --api-key KEY (or set OPENAI_API_KEY / OPENCHAT_API_KEY).",
            status=401,
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return ChatError("auth", f"Permission denied (403): {server_message(exc)}", "Check the API key.", status=403)
    if isinstance(exc, openai.NotFoundError):
        return ChatError(
            "not_found",
            f"Model '{model}' is not served at {endpoint} (404): {server_message(exc)}",
            "Press ctrl+l to pick another model.",
            status=404,
        )
    if isinstance(exc, openai.APIStatusError):
        text = server_message(exc)
        status = exc.status_code
        if status in (400, 413, 422) and any(w in text.lower() for w in CONTEXT_WORDS):
            return ChatError(
                "context",
                f"The conversation is too long for the model: {text}",
                "Start a new chat (ctrl+n) or lower max tokens (ctrl+o).",
                status=status,
            )
        if status >= 500:
            return ChatError("server", f"The server failed ({status}): {text}", "Press ctrl+r to retry.", status=status)
        if status == 429:
            return ChatError("server", f"The server is busy (429): {text}", "Press ctrl+r to retry.", status=status)
        return ChatError(
            "bad_request",
            f"The server rejected the request ({status}): {text}",
            "Check the settings (ctrl+o).",
            status=status,
        )
    if isinstance(exc, openai.APIError):
        return ChatError("stream", f"The reply broke off: {exc}", "Press ctrl+r to retry.")
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return ChatError("unreachable", f"Cannot reach the server at {endpoint}: {exc}", "Press ctrl+r to retry.")
    return ChatError("stream", f"Unexpected error: {type(exc).__name__}: {exc}", "Press ctrl+r to retry.")


@dataclass
class ReplyInfo:
    """What the server said about a finished (or stopped) reply."""

    model: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    latency_s: float | None = None

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "finish_reason": self.finish_reason}
        if self.usage:
            out["usage"] = self.usage
        if self.first_token_s is not None:
            out["first_token_s"] = round(self.first_token_s, 3)
        if self.latency_s is not None:
            out["latency_s"] = round(self.latency_s, 3)
        return out


class ChatClient:
    """An `AsyncOpenAI` client for one endpoint, with the TUI's error handling."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, api_key: str | None = None):
        self.endpoint = normalize_base_url(endpoint)
        self.api_key = api_key
        self._client = openai.AsyncOpenAI(
            base_url=self.endpoint,
            # Servers without auth accept any key; the SDK insists on having one.
            api_key=api_key or "openchat-no-key",
            max_retries=0,
            timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    async def models(self) -> list[str]:
        """Ids from GET /v1/models."""
        try:
            page = await self._client.models.list()
            return [m.id for m in page.data]
        except openai.NotFoundError:
            raise ChatError(
                "not_found",
                f"No OpenAI-compatible API at {self.endpoint} (GET /models answered 404).",
                "Check --endpoint: it usually ends in /v1.",
                status=404,
            ) from None
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ChatError
            raise classify(exc, self.endpoint, None) from None

    async def stream_chat(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        temperature: float | None = None,
        max_tokens: int | None = None,
        condition: str | None = None,
        info: ReplyInfo | None = None,
    ) -> AsyncIterator[str]:
        """Yield content deltas of a streamed chat completion.

        Cancelling the consumer (Esc in the UI) closes the HTTP stream, so the server frees
        the request's slot at once.
        """
        info = info if info is not None else ReplyInfo()
        info.model = model
        kwargs: dict[str, Any] = {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        extra_body = {"condition": condition} if condition else None
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, self.endpoint, model) from None
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None):
                    info.usage = chunk.usage.model_dump(exclude_none=True)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.finish_reason:
                    info.finish_reason = choice.finish_reason
                text = choice.delta.content if choice.delta else None
                if text:
                    if info.first_token_s is None:
                        info.first_token_s = time.monotonic() - info.started
                    yield text
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001
            raise classify(exc, self.endpoint, model) from None
        finally:
            info.latency_s = time.monotonic() - info.started
            try:
                await asyncio.shield(stream.close())
            except BaseException:  # noqa: BLE001 - closing is best effort
                pass

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception:  # noqa: BLE001
            pass
