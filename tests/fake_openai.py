"""The one loopback server under every scripted OpenAI-compatible stand-in of the tests and
benchmarks: the TUI's (tests/tui/fake_server.py), the eval's (tests/eval/scripted.py) and the
fixed-latency judge of benchmarks/bench_eval.py. Each says what its routes answer; this module
owns running an aiohttp app on 127.0.0.1 in a background thread, and OpenAI's response shapes.

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
        if not self._ready.wait(10):
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
