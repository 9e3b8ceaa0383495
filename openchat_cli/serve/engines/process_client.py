"""An `Engine` that runs the real one in a child process (as vLLM runs its engine core).

The API process keeps HTTP, tokenization and detokenization; the engine process keeps the
model, batching and sampling. They share no GIL, so a busy HTTP loop never delays a decode
step and a long forward never delays a response. The channel is a Unix socket pair carrying
msgpack frames (`wire`); the engine process sends every event of one loop turn in one frame.

If the engine process dies, every open stream ends with an error event (the API answers 500
"generation failed: the engine process stopped …"), later requests get the same, and
`on_death` is called: `openchat serve` then stops with a non-zero exit so a supervisor restarts
it (vLLM's server does the same on EngineDeadError). `shutdown()` asks the process to quit,
waits, then terminates or kills it: no orphan is left behind.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from openchat_cli.serve.engines import wire
from openchat_cli.serve.engines.base import Engine, EngineError, EngineStats, SamplingParams, TokenEvent

log = logging.getLogger("openchat.serve.engine_process")

STARTUP_TIMEOUT_S = 600.0
SHUTDOWN_TIMEOUT_S = 15.0


class EngineProcessClient(Engine):
    """Proxy for an engine of `kind` built in a child process from `options` (see
    `factory.build_engine`). Construction blocks until the model is loaded there."""

    def __init__(
        self,
        kind: str,
        model_dir: Path,
        *,
        tokenizer: Any,
        options: dict[str, Any],
        on_death: Callable[[str], None] | None = None,
        python: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ):
        self.kind = kind
        self.model_dir = Path(model_dir)
        self.tokenizer = tokenizer
        self.on_death = on_death
        self._keys = itertools.count(1)
        self._streams: dict[int, asyncio.Queue] = {}
        self._stats = EngineStats()
        self._dead: str | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox = bytearray()
        self._unpacker = wire.unpacker()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        root = Path(__file__).resolve().parents[3]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        try:
            # Its own session: a terminal's Ctrl-C goes to the API process, which shuts it down.
            self.process = subprocess.Popen(
                [python or sys.executable, "-m", "openchat_cli.serve.engines.engine_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                start_new_session=True,
            )
        finally:
            theirs.close()
        try:
            ours.sendall(wire.pack(["setup", kind, str(self.model_dir), options]))
            facts = self._wait_ready(startup_timeout)
        except BaseException:
            self._kill()
            raise
        self.context_length = int(facts["context_length"])
        self.vocab_size = facts.get("vocab_size")
        self._describe = dict(facts.get("describe") or {})
        self.pid = int(facts["pid"])

    # -- startup and shutdown ------------------------------------------------------------------
    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        self._sock.settimeout(0.5)
        try:
            while True:
                for message in self._unpacker:
                    if message[0] == "ready":
                        return message[1]
                    if message[0] == "fail":
                        raise EngineError(message[1])
                if time.monotonic() > deadline:
                    raise EngineError(f"the engine process did not load the model in {timeout:.0f}s")
                try:
                    data = self._sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    code = self.process.wait(timeout=10)
                    raise EngineError(
                        f"the engine process exited with code {code} while loading "
                        f"{self.model_dir} (its output is above)"
                    )
                self._unpacker.feed(data)
        finally:
            self._sock.settimeout(None)

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._sock.close()

    async def start(self) -> None:
        """Watch the channel from the running loop (a later loop takes over: tests run several)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._detach()
        self._loop = loop
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._on_readable)

    async def shutdown(self) -> None:
        self._closing = True
        self._send(["quit"])
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            log.warning("the engine process did not stop in %.0fs; terminating it", SHUTDOWN_TIMEOUT_S)
        self._detach()
        await loop.run_in_executor(None, self._kill)
        self._fail_all("the server is shutting down")

    def _detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed() and self._sock.fileno() >= 0:
            loop.remove_reader(self._sock.fileno())
            loop.remove_writer(self._sock.fileno())

    # -- the channel: non-blocking socket calls from the loop, never a wait on the engine ------
    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._detach()
            if not self._closing:
                asyncio.ensure_future(self._on_eof())
            return
        self._unpacker.feed(data)
        for message in self._unpacker:
            self._dispatch(message)

    async def _on_eof(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            code = await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), 5)
        except TimeoutError:
            code = None
        self._died(f"the engine process stopped (exit code {code})")

    def _dispatch(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == "events":
            for key, data in message[1]:
                queue = self._streams.get(key)
                if queue is not None:
                    queue.put_nowait(wire.event_from_wire(data))
            self._stats = wire.stats_from_wire(message[2])
        elif kind == "stats":
            self._stats = wire.stats_from_wire(message[1])

    def _fail_all(self, reason: str) -> None:
        for queue in self._streams.values():
            queue.put_nowait(TokenEvent([], "error", reason))

    def _died(self, reason: str) -> None:
        self._dead = reason
        log.error("%s", reason)
        self._fail_all(reason)
        if self.on_death is not None:
            self.on_death(reason)

    def _send(self, message: list[Any]) -> None:
        """Queue a frame; what the socket does not take now goes out when it is writable."""
        if self._dead or self._sock.fileno() < 0:
            return
        data = wire.pack(message)
        if self._outbox:
            self._outbox += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # the reader sees the end of the channel and reports it
        if sent < len(data):
            self._outbox = bytearray(data[sent:])
            if self._loop is not None and not self._loop.is_closed():
                self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            sent = len(self._outbox)
        del self._outbox[:sent]
        if not self._outbox and self._loop is not None:
            self._loop.remove_writer(self._sock.fileno())

    # -- Engine --------------------------------------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        if self._dead or self._closing:
            yield TokenEvent([], "error", self._dead or "the server is shutting down")
            return
        if self._loop is None:
            raise EngineError("engine not started")
        key = next(self._keys)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[key] = queue
        self._send(["gen", key, list(prompt_ids), wire.params_to_wire(params)])
        finished = False
        try:
            while True:
                event = await queue.get()
                while event.finish_reason is None and not queue.empty():
                    event = event.merged(queue.get_nowait())
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            self._streams.pop(key, None)
            if not finished:
                self._send(["abort", key])

    def stats(self) -> EngineStats:
        return self._stats

    def describe(self) -> dict[str, Any]:
        facts = {**self._describe, "engine_process": self.pid}
        if self._dead:
            facts["engine_error"] = self._dead
        return facts
