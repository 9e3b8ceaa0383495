"""The engine process: runs one engine and answers the API process over a Unix socket.

Started by `EngineProcessClient` as `python -m openchat_cli.serve.engines.engine_process FD`
with FD its end of a socket pair; the first message on it is the engine's kind, model folder
and options. Only token ids cross (see `wire`): the tokenizer is loaded here for the engine's
own needs (pad/eos ids), but prompts are tokenized and replies detokenized in the API process.

It lives exactly as long as the API process: the socket closing (the API process exited, even
by SIGKILL) or a "quit" message shuts it down; on Linux the kernel also sends it SIGTERM when
its parent dies. Ctrl-C in a terminal is the API process's business, not ours.

An engine that can take sequences by key (`submit`/`cancel`/`sink`: the transformers engine)
sends each step's events from its scheduler thread as one frame, with no asyncio task per
sequence here: at 32 streams that was 32 task wake-ups per step competing with the decode loop
for the GIL. Every frame leaves through one `FrameWriter`, so frames from the scheduler thread
and from this loop never interleave.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

STATS_INTERVAL_S = 0.25


def _die_with_parent() -> None:
    """Linux: ask the kernel for SIGTERM when the parent goes (belt to the socket's braces)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class FrameWriter:
    """Whole frames onto the (non-blocking) socket from any thread, one at a time; waits while
    the socket is full (the API process reads continuously), stops quietly once it is closed."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False

    def send(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view and not self.closed:
                try:
                    view = view[self.sock.send(view) :]
                except (BlockingIOError, InterruptedError):
                    try:
                        select.select([], [self.sock], [], 1.0)
                    except (OSError, ValueError):  # closed meanwhile (fileno -1)
                        self.closed = True
                except OSError:
                    self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.sock.fileno() < 0


class EngineServer:
    """Relays generate/abort messages to an engine and its token events back, batched: every
    event produced in one turn of the loop leaves in one frame."""

    def __init__(self, engine: Any, writer: FrameWriter):
        from openchat_cli.serve.engines import wire

        self.wire = wire
        self.engine = engine
        self.writer = writer
        self.keyed = callable(getattr(engine, "submit", None)) and hasattr(engine, "sink")
        if self.keyed:
            engine.sink = self.send_events
        self.tasks: dict[int, asyncio.Task] = {}
        self.outbox: list[list[Any]] = []
        self.last_stats: list[Any] | None = None

    def post(self, key: int, event: Any) -> None:
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append([key, self.wire.event_to_wire(event)])

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        if outbox and not self.writer.is_closing():
            self.last_stats = self.wire.stats_to_wire(self.engine.stats())
            self.writer.send(self.wire.pack(["events", outbox, self.last_stats]))

    def send_events(self, events: list[tuple[int, Any]]) -> None:
        """The engine's sink: one step's events, called from its scheduler thread."""
        if self.writer.is_closing():
            return
        to_wire = self.wire.event_to_wire
        self.last_stats = self.wire.stats_to_wire(self.engine.stats())
        self.writer.send(self.wire.pack(["events", [[k, to_wire(e)] for k, e in events], self.last_stats]))

    async def run_sequence(self, key: int, prompt_ids: list[int], params: Any) -> None:
        from openchat_cli.serve.engines.base import TokenEvent

        try:
            async for event in self.engine.generate(prompt_ids, params, f"seq-{key}"):
                self.post(key, event)
        except asyncio.CancelledError:
            pass  # aborted by the API process: closing the generator took it out of the batch
        except Exception as exc:  # an engine bug must fail this request, not the process
            self.post(key, TokenEvent([], "error", f"{type(exc).__name__}: {exc}"))
        finally:
            self.tasks.pop(key, None)

    def handle(self, message: list[Any]) -> bool:
        """Act on one message; False when the API process asked us to stop."""
        kind = message[0]
        if kind == "gen" and self.keyed:
            _, key, prompt_ids, params = message
            try:
                self.engine.submit(key, prompt_ids, self.wire.params_from_wire(params), f"seq-{key}")
            except Exception as exc:
                from openchat_cli.serve.engines.base import TokenEvent

                self.post(key, TokenEvent([], "error", f"{type(exc).__name__}: {exc}"))
        elif kind == "abort" and self.keyed:
            self.engine.cancel(message[1])
        elif kind == "gen":
            _, key, prompt_ids, params = message
            task = asyncio.create_task(self.run_sequence(key, prompt_ids, self.wire.params_from_wire(params)))
            self.tasks[key] = task
        elif kind == "abort":
            task = self.tasks.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "quit":
            return False
        return True

    async def report_stats(self) -> None:
        """Queue depth for /health and /metrics even while no tokens flow."""
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            stats = self.wire.stats_to_wire(self.engine.stats())
            if stats != self.last_stats and not self.writer.is_closing():
                self.last_stats = stats
                self.writer.send(self.wire.pack(["stats", stats]))

    async def serve(self, reader: asyncio.StreamReader, unpacker: Any) -> None:
        ticker = asyncio.create_task(self.report_stats())
        try:
            running = True
            while running:
                for message in unpacker:
                    if not self.handle(message):
                        running = False
                        break
                if not running:
                    break
                data = await reader.read(1 << 16)
                if not data:  # the API process is gone
                    break
                unpacker.feed(data)
        finally:
            ticker.cancel()
            for task in list(self.tasks.values()):
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def _read_setup(sock: socket.socket, unpacker: Any) -> list[Any]:
    while True:
        for message in unpacker:
            return message
        data = sock.recv(1 << 16)
        if not data:
            raise SystemExit(0)
        unpacker.feed(data)


async def _main(sock: socket.socket) -> int:
    from openchat_cli.serve.engines import wire
    from openchat_cli.serve.engines.factory import build_engine

    unpacker = wire.unpacker()
    setup = _read_setup(sock, unpacker)
    _, kind, model_dir, options = setup
    cores = len(os.sched_getaffinity(0))
    if kind == "transformers" and not options.get("threads") and cores >= 2:
        # Leave one core to the API process (HTTP, detokenizing), as vLLM's CPU engine does (it
        # reserves one and runs 1 OpenMP thread on a 2-CPU machine): torch's threads otherwise
        # contend with it, and every parallel op waits for whichever thread was preempted. On 2
        # busy CPUs a 32-row decode step of the small model took 16-22 ms with 1 thread and
        # 270-470 ms with 2.
        # Each forward may still run on every core where that measures faster (widening.py): at 32
        # streams the API process needs ~3% of its core.
        options = {**options, "threads": cores - 1, "wide_threads": cores}
    try:
        from openchat_cli.model_dir import load_tokenizer

        tokenizer = load_tokenizer(Path(model_dir))
        engine = build_engine(kind, Path(model_dir), tokenizer, options)
        await engine.start()
    except Exception as exc:
        message = getattr(exc, "message", None) or f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}"
        sock.sendall(wire.pack(["fail", message]))
        return 2
    facts = {
        "context_length": engine.context_length,
        "vocab_size": engine.vocab_size,
        "describe": engine.describe(),
        "pid": os.getpid(),
    }
    sock.sendall(wire.pack(["ready", facts]))
    reader, transport_writer = await asyncio.open_unix_connection(sock=sock)  # reads only
    frames = FrameWriter(sock)
    try:
        await EngineServer(engine, frames).serve(reader, unpacker)
    finally:
        await engine.shutdown()
        frames.closed = True
        transport_writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)
    return asyncio.run(_main(sock))


if __name__ == "__main__":
    sys.exit(main())
