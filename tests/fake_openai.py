"""The one loopback server under every scripted OpenAI-compatible stand-in of the tests and
benchmarks: the TUI's (tests/tui/fake_server.py), the eval's (tests/eval/scripted.py) and the
fixed-latency judge of benchmarks/bench_eval.py. Each says what its routes answer; this module
owns running an aiohttp app on 127.0.0.1 in a background thread, and OpenAI's response shapes.
`RequestHold` makes requests wait until the test says go (instead of racing a timer), and
`HoldingProxy` puts such a hold in front of a real server.

Stand-ins are only for what a test cannot reach (a paid judge, a model that misbehaves on
cue); the real server is tests/conftest.py's `tiny_server`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openai_error(
    status: int,
    message: str,
    code: str | int | None,
    param: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's shape: {"error": {message, type, param, code}}."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status, headers=headers
    )


def chat_completion(
    model: str, text: str, usage: dict[str, int], finish_reason: str = "stop", completion_id: str = "chatcmpl-scripted"
) -> web.Response:
    """A non-streamed chat completion with one choice."""
    return web.json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        }
    )


def model_list(*cards: dict[str, Any]) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"object": "model", "created": 0, "owned_by": "tests", **card} for card in cards]}
    )


class RequestHold:
    """Holds requests at a point a test chooses, instead of racing a timer: after the next
    `after` requests pass, the rest wait until `release()` (or until `until_waiting` wait at
    once). A test can then stop a client that certainly has work left, or make two clients
    overlap, however slow the machine is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._after: int | None = None  # requests still let through before holding; None: no hold
        self._until_waiting: int | None = None
        self._waiting = 0
        self._released = threading.Event()
        self._released.set()

    def hold(self, after: int = 0, until_waiting: int | None = None) -> None:
        with self._lock:
            self._after = after
            self._until_waiting = until_waiting
            self._released.clear()

    def release(self) -> None:
        """Let the held requests, and every later one, through."""
        with self._lock:
            self._after = None
            self._until_waiting = None
            self._released.set()

    @property
    def waiting(self) -> int:
        """How many requests wait at the hold now."""
        with self._lock:
            return self._waiting

    async def passage(self) -> None:
        """Called by a handler: returns at once, or once the hold is released."""
        with self._lock:
            if self._after is None:
                return
            if self._after > 0:
                self._after -= 1
                return
            self._waiting += 1
            if self._until_waiting is not None and self._waiting >= self._until_waiting:
                self._after = None
                self._released.set()
        try:
            while not self._released.is_set():
                await asyncio.sleep(0.01)
        finally:
            with self._lock:
                self._waiting -= 1


class LoopbackServer:
    """An aiohttp app on 127.0.0.1 (port 0: a free one) served from a background thread.
    Subclasses add their handlers in `routes`."""

    def __init__(self, port: int = 0):
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def make_app(self) -> web.Application:
        app = web.Application()
        self.routes(app)
        return app

    def start(self):
        self._thread = threading.Thread(target=self._serve, daemon=True, name=type(self).__name__)
        self._thread.start()
        if not self._ready.wait(60):  # a loaded machine may take a while to start a thread's loop
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024, shutdown_timeout=0.5)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


class HoldingProxy(LoopbackServer):
    """A pass-through to a real server (e.g. the tiny `openchat serve`) whose POSTs can be held
    with `gate` (a `RequestHold`): the real replies, at a moment the test chooses."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target.rstrip("/")  # http://127.0.0.1:PORT
        self.gate = RequestHold()

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._forward)

    async def _forward(self, request: web.Request) -> web.Response:
        import aiohttp

        body = await request.read()
        if request.method == "POST":
            await self.gate.passage()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                request.method, self.target + request.rel_url.path_qs, data=body, headers=headers
            ) as reply:
                content = await reply.read()
                return web.Response(
                    status=reply.status, body=content, content_type=reply.content_type, charset=reply.charset
                )
