"""The ASGI guard in front of the API: what is checked before FastAPI reads anything.

In order: the `Host` header (a page on another site must not drive a local server through DNS
rebinding), the per-client lockout after wrong API keys (429 + Retry-After; a request with no
key at all is a plain 401, not a guess), the Bearer key
(everything but /health when keys are set: the schema, the docs and the metrics too), and the
body (size limit 413, read deadline 408, JSON content type for /v1). It also sees every
completion request's outcome, so the request log gets a line for each one, refusals and
crashes included, not only the ones a route finished.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]

#: Routes whose every request goes to the request log.
AUDITED = frozenset({"/v1/chat/completions", "/v1/completions"})
#: Set in the ASGI scope by a route that logged its request itself.
LOGGED = "openchat.logged"
#: Open without a key: load balancers and `openchat` itself probe it.
OPEN_PATHS = frozenset({"/health"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def error_body(
    status: int, message: str, code: str | None, *, type: str | None = None, param: str | None = None
) -> bytes:
    """An error in OpenAI's shape, as bytes (ASCII-safe whatever the message holds)."""
    kind = type or ("server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def host_name(value: bytes) -> str:
    """The host part of a Host header, lower case: 'LocalHost:8000' -> 'localhost',
    '[::1]:80' -> '[::1]'."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        return text[: end + 1] if end > 0 else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AuthFailures:
    """Wrong API keys per client address in a sliding window; past the limit the address is
    refused (429) until its oldest failure leaves the window. Bounded memory: the least
    recently failing addresses are forgotten first."""

    def __init__(
        self,
        limit: int = 10,
        window_s: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit, self.window, self.max_clients, self.clock = limit, window_s, max_clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try a key again (0: now)."""
        times = self._recent(client)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    def failed(self, client: str) -> None:
        times = self._recent(client) or deque()
        times.append(self.clock())
        self._failures[client] = times
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


class GuardMiddleware:
    """Host check, key lockout, auth, body limits; and an audit line for every completion
    request that no route logged (refused, invalid, crashed)."""

    def __init__(
        self,
        app: Any,
        *,
        api_keys: tuple[str, ...],
        max_body_bytes: int,
        body_timeout_s: float,
        allowed_hosts: tuple[str, ...] | None,
        auth_failures: AuthFailures,
        on_reject: Callable[[str, int], None],
        audit: Callable[[dict, int, str | None, Any], None],
    ):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_body = max_body_bytes
        self.body_timeout = body_timeout_s
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}
        self.failures = auth_failures
        self.on_reject = on_reject
        self.audit = audit

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            token = b""
        token = token.strip()
        # Compare against every key, always: the time taken does not depend on which matched.
        results = [hmac.compare_digest(token, key) for key in self.keys]
        return any(results)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        audited = path in AUDITED
        outcome: dict[str, Any] = {"status": None, "error": None, "request": None}
        error_chunks: list[bytes] = []

        async def watched_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            elif (
                audited
                and message["type"] == "http.response.body"
                and (outcome["status"] or 0) >= 400
                and sum(map(len, error_chunks)) < 65536
            ):
                error_chunks.append(message.get("body", b""))
            await send(message)

        async def reply(status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
            self.on_reject(path, status)
            body = error_body(status, message, code)
            await watched_send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *headers,
                    ],
                }
            )
            await watched_send({"type": "http.response.body", "body": body})

        try:
            await self._guard(scope, receive, watched_send, reply, outcome, path)
        except Exception as exc:  # the crash itself is answered (500) by FastAPI's handler
            if audited and outcome["status"] is None:
                outcome["status"], outcome["error"] = 500, f"internal error: {type(exc).__name__}"
            raise
        finally:
            if audited and not scope.get(LOGGED) and not outcome.get("scope", {}).get(LOGGED):
                status = outcome["status"] or 499  # no reply at all: the client went away
                error = outcome["error"]
                if error is None and status >= 400:
                    error = _error_message(b"".join(error_chunks)) or f"HTTP {status}"
                self.audit(scope, status, error, outcome["request"])

    async def _guard(
        self, scope: dict, receive: Receive, send: Send, reply: Callable, outcome: dict[str, Any], path: str
    ) -> None:
        headers = dict(scope.get("headers") or [])
        if self.allowed is not None and host_name(headers.get(b"host", b"")) not in self.allowed:
            given = headers.get(b"host", b"").decode("latin-1")[:200]
            await reply(
                400,
                f"Invalid Host header '{given}': this server answers to "
                f"{', '.join(sorted(self.allowed))} (see --allowed-hosts)",
                "invalid_host",
                [(b"connection", b"close")],
            )
            return
        if self.keys and path not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            client = (scope.get("client") or ("?",))[0]
            given = b"authorization" in headers  # only a key sent is a guess
            wait = self.failures.retry_after(client) if given else 0.0
            if wait > 0:
                seconds = max(1, int(wait + 0.999))
                await reply(
                    429,
                    f"Too many requests with a wrong API key from {client}: retry in {seconds} s",
                    "too_many_auth_failures",
                    [(b"retry-after", str(seconds).encode())],
                )
                return
            if not self._authorized(headers):
                if given:
                    self.failures.failed(client)
                msg = (
                    "Incorrect API key provided."
                    if given
                    else "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
                )
                await reply(401, msg, "invalid_api_key", [(b"www-authenticate", b"Bearer")])
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        too_big = f"Request body too large: the limit is {self.max_body} bytes"
        if declared > self.max_body:
            await reply(413, too_big, "request_too_large", [(b"connection", b"close")])
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await reply(413, too_big, "request_too_large", [(b"connection", b"close")])
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await reply(
                408,
                f"The request body did not arrive within {self.body_timeout:g} s",
                "request_timeout",
                [(b"connection", b"close")],
            )
            return
        body = b"".join(chunks)
        outcome["request"] = body  # parsed by the log's thread, not on the event loop
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if path.startswith("/v1"):
            # OpenAI clients send JSON; so do `curl -d` users who forget the header.
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
            outcome["scope"] = scope  # a route marks this copy when it logged the request
        await self.app(scope, replay, send)


def request_for_log(body: bytes) -> Any:
    """The body as the log keeps it: the JSON value when it parses, else the text."""
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    try:
        json.dumps(value)  # nested too deep to write back: keep the text as it came
    except (ValueError, RecursionError):
        return text
    return value


def _error_message(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500] or None
