"""What `openchat train` shows while its ranks work: it follows rank 0's OUT/events.jsonl
(train/report.py) and hands each event to the views and trackers (train/trackers.py).

Three views of the same events:
- `LiveView` (stderr is a terminal): a rich progress bar with step/total, epoch, smoothed loss,
  lr, tokens/s, packing efficiency and ETA, plus a line with any other metric the training
  method reports (rewards/margins, kl, …); notes (evals, saves) scroll above it.
- `PlainView` (not a terminal): one line per curve point (every --log-every steps), and notes.
- `JsonView` (`--json`): one JSON object per line on stdout, for scripts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from openchat_cli.train.report import RAW_KEYS

# Shown in the main line of the views (in this order); every other numeric key goes in the extras.
MAIN_KEYS = ("step", "epoch", "loss", "lr", "tokens_per_s", "packing_efficiency")
SMOOTHING = 0.9  # exponential moving average of the per-step loss in the live view (debiased)


class EventSink(Protocol):
    def handle(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def extras(record: dict[str, Any]) -> dict[str, float]:
    """The metrics a view shows after the main ones: a training method's own (rewards/chosen, kl)."""
    return {
        k: v
        for k, v in record.items()
        if k not in MAIN_KEYS
        and k not in RAW_KEYS
        and k != "event"
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


def format_value(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}"


def format_extras(record: dict[str, Any]) -> str:
    return "  ".join(f"{k} {format_value(v)}" for k, v in extras(record).items())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Pace:
    """ETA from this invocation's own steps (a resumed run's earlier steps took no time here)."""

    def __init__(self) -> None:
        self.total = 0
        self.first: tuple[int, float] | None = None

    def start(self, event: dict[str, Any]) -> None:
        self.total = int(event.get("total") or 0)
        self.first = (int(event.get("start") or 0), time.monotonic())

    def eta(self, step: int) -> float | None:
        if self.first is None or step <= self.first[0]:
            return None
        done, t0 = self.first
        return (time.monotonic() - t0) / (step - done) * max(0, self.total - step)


def epoch_text(epoch: Any, epochs: Any) -> str:
    return f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"


class PlainView:
    """One line per curve point and per note on a console that is not a terminal (logs, CI)."""

    def __init__(self, console: Console):
        self.console = console
        self.pace = Pace()
        self.epochs: int | None = None

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.pace.start(event)
            self.epochs = event.get("epochs")
        elif kind == "point":
            parts = [f"step {event['step']}/{self.pace.total}"]
            if "epoch" in event:
                parts.append(epoch_text(event["epoch"], self.epochs))
            if "loss" in event:
                parts.append(f"loss {event['loss']:.4f}")
            if "lr" in event:
                parts.append(f"lr {event['lr']:.2e}")
            if "tokens_per_s" in event:
                parts.append(f"{event['tokens_per_s']:,.0f} tok/s")
            if "packing_efficiency" in event:
                parts.append(f"packing {event['packing_efficiency']:.1%}")
            more = format_extras(event)
            if more:
                parts.append(more)
            parts.append(f"ETA {format_duration(self.pace.eta(event['step']))}")
            self.console.print("  ".join(parts), highlight=False, soft_wrap=True)
        elif kind == "eval":
            self.console.print(eval_text(event), highlight=False, soft_wrap=True)
        elif kind == "note":
            self.console.print(event["text"], highlight=False, soft_wrap=True)

    def close(self) -> None:
        pass


def eval_text(event: dict[str, Any]) -> str:
    """'eval loss (initial): 5.1234', then any other held-out figure the method reported."""
    tag = str(event.get("tag") or "")
    name = tag.removeprefix("eval_loss_").replace("_", " ") or f"step {event.get('step')}"
    more = format_extras({k: v for k, v in event.items() if k not in ("eval_loss", "tag")})
    return f"eval loss ({name}): {event['eval_loss']:.4f}" + (f"  {more}" if more else "")


class _TrainProgress(Progress):
    """A progress bar with one more line under it: the training method's extra metrics."""

    extra_line: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.extra_line:
            yield Text("  " + self.extra_line, style="dim")


class LiveView:
    """The rich live view for a terminal: bar, step/total, ETA and the run's figures."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = _TrainProgress(
            TextColumn("[bold]train"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.epochs: int | None = None
        self.smoothed: float | None = None
        self.seen = 0  # steps averaged into `smoothed` (for the debiasing)
        self.last_eval: float | None = None
        self.last_step: dict[str, Any] = {}

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.epochs = event.get("epochs")
            if self.task is None:
                self.task = self.progress.add_task(
                    "train", total=event.get("total") or None, completed=event.get("start") or 0, info=""
                )
                self.progress.start()
        elif kind == "step" and self.task is not None:
            if "loss" in event:
                self.seen += 1
                prev = self.smoothed if self.smoothed is not None else 0.0
                self.smoothed = SMOOTHING * prev + (1 - SMOOTHING) * event["loss"]
            self.last_step = event
            self.progress.update(self.task, completed=event["step"], info=self._info(event))
            self.progress.extra_line = format_extras(event)
        elif kind == "eval":
            self.last_eval = event["eval_loss"]
            if self.task is not None:
                self.progress.update(self.task, info=self._info(self.last_step))
            self.progress.console.print(eval_text(event), highlight=False, soft_wrap=True)
        elif kind == "note":
            self.progress.console.print(event["text"], highlight=False, soft_wrap=True)

    def _info(self, step: dict[str, Any]) -> str:
        parts = []
        if "epoch" in step:
            parts.append(epoch_text(step["epoch"], self.epochs))
        if self.smoothed is not None:
            parts.append(f"loss {self.smoothed / (1 - SMOOTHING**self.seen):.4f}")
        if self.last_eval is not None:
            parts.append(f"eval {self.last_eval:.4f}")
        if "lr" in step:
            parts.append(f"lr {step['lr']:.2e}")
        if "tokens_per_s" in step:
            parts.append(f"{step['tokens_per_s']:,.0f} tok/s")
        if "packing_efficiency" in step:
            parts.append(f"pack {step['packing_efficiency']:.0%}")
        return "  ".join(parts)

    def close(self) -> None:
        self.progress.stop()


class JsonView:
    """`--json`: the run's start, curve points (with an ETA), evals and notes as JSON lines."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.pace = Pace()

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            self.pace.start(event)
        elif kind == "point":
            eta = self.pace.eta(event["step"])
            event = {**event, "total": self.pace.total, "eta_s": None if eta is None else round(eta, 1)}
        elif kind not in ("eval", "note"):
            return
        self.stream.write(json.dumps(event, default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def choose_view(as_json: bool) -> EventSink:
    """JSON lines for --json; the live view on a terminal; plain lines otherwise."""
    import sys

    from openchat_cli.console import err_console

    if as_json:
        return JsonView(sys.stdout)
    if err_console.is_terminal:
        return LiveView(err_console)
    return PlainView(err_console)


class EventFollower:
    """Reads new lines of OUT/events.jsonl as rank 0 appends them (a thread polling the file)
    and gives each event to every sink. A sink that raises is reported once and dropped, so a
    broken tracker never stops a run."""

    POLL_S = 0.1

    def __init__(self, path: Path, sinks: list[EventSink], warn: Any = None):
        self.path = Path(path)
        self.sinks = list(sinks)
        self.warn = warn or (lambda text: None)
        self.offset = 0
        self.pending = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-events", daemon=True)

    def __enter__(self) -> EventFollower:
        self.path.write_bytes(b"")  # this invocation's events only
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self.poll()

    def poll(self) -> None:
        """Dispatch the complete lines written since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        lines = (self.pending + chunk).split(b"\n")
        self.pending = lines.pop()  # an incomplete last line waits for the rest
        for line in lines:
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.dispatch(event)

    def dispatch(self, event: dict[str, Any]) -> None:
        for sink in list(self.sinks):
            try:
                sink.handle(event)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must not end the run
                self.sinks.remove(sink)
                self.warn(f"{type(sink).__name__} stopped: {exc}")

    def close(self) -> None:
        """Stop the thread, read what is left, and close every sink."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.poll()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                self.warn(f"{type(sink).__name__} did not close cleanly: {exc}")
        self.sinks = []
