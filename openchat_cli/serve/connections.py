"""Connection deadlines uvicorn lacks: a client must finish its request headers in time.

uvicorn (h11) only times out idle keep-alive connections, and any byte re-arms nothing: a
client that sends one header byte every few seconds (slowloris) holds its connection for good,
and a few hundred of them hold the server's sockets. Here every connection gets a deadline for
the headers of each request, counted from the connection (or the previous response); a request
whose headers arrived is in the app's hands, where the body has its own deadline (guard.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are late."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:  # still waiting for headers
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete
            self._disarm()

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm()  # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request on this connection: idle keep-alive time plus the header deadline.
            self._arm(self.timeout_keep_alive + self.header_timeout_s)


def protocol_with(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """A protocol class with this header deadline (uvicorn takes a class, not an instance)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app: Any, *, header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, **options: Any) -> Any:
    """uvicorn's Config for our app: h11 with the header deadline."""
    import uvicorn

    options.setdefault("timeout_keep_alive", 30)
    return uvicorn.Config(app, http=protocol_with(header_timeout_s), **options)
