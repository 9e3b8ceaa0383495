"""Rank 0's account of a run: the loss curve, the catalog row, and the event stream the
`openchat train` process turns into the live view and tracker logs (train/watch.py).

Rank 0 never draws anything itself: it appends one JSON event per line to OUT/events.jsonl and
the command that launched the ranks follows that file. A file, not a pipe, so a slow terminal
or tracker never stalls training, and it works the same through the deepspeed launcher.

Events: `start` (total, start, epochs), `step` (every optimizer step: every numeric scalar the
training method reported), `point` (a point of the stored curve, every --log-every steps),
`eval` (a held-out loss), `note` (a line of text), `end`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openchat_cli.train import run_files as ckpt

CATALOG_EVERY_S = 30.0
EVENTS_FILE = "events.jsonl"
# Per-step inputs of the throughput figures: folded into tokens_per_s / packing_efficiency in a
# curve point instead of being averaged themselves.
RAW_KEYS = frozenset({"tokens", "seconds", "capacity", "weight"})
# Keys of a curve point that are not averaged over the window.
LAST_KEYS = ("step", "epoch", "lr")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric scalars of a record (lists, strings and bools are not metrics)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key] = value
    return out


def summarize(window: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One curve point from the steps since the last: step/epoch/lr of the last step, throughput
    from summed tokens and seconds, and the mean of every other numeric key (loss, and any
    method's extras such as rewards/margins or kl) over the steps that reported it."""
    w = [scalars(r) for r in window]
    point: dict[str, Any] = {k: w[-1][k] for k in LAST_KEYS if k in w[-1]}
    tokens = [r["tokens"] for r in w if "tokens" in r]
    seconds = sum(r.get("seconds", 0.0) for r in w)
    capacity = sum(r.get("capacity", 0) for r in w)
    if tokens and seconds > 0:
        point["tokens_per_s"] = sum(tokens) / seconds
    if tokens and capacity > 0:
        point["packing_efficiency"] = sum(tokens) / capacity
    keys = dict.fromkeys(k for r in w for k in r)  # first-seen order
    for key in keys:
        if key in point or key in RAW_KEYS or key in LAST_KEYS:
            continue
        values = [r[key] for r in w if key in r]
        point[key] = sum(values) / len(values)
    return point


class Reporter:
    """Collects per-step numbers; every `log_every` steps adds one averaged point to the loss
    curve, which goes to the catalog at most every 30 s (and at checkpoints and the end).
    Everything it hears also goes to OUT/events.jsonl for the live view and the trackers."""

    def __init__(
        self,
        out: Path,
        run_id: str | None,
        total: int,
        start: int,
        log_every: int,
        curve: list[dict[str, Any]] | None = None,
        epochs: int | None = None,
    ):
        self.out = Path(out)
        self.run_id = run_id
        self.total = total
        self.log_every = log_every
        self.curve: list[dict[str, Any]] = list(curve or [])
        self.window: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.events = open(self.out / EVENTS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
        self.emit("start", total=total, start=start, epochs=epochs, log_every=log_every, run_id=run_id)

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event; flushed at once so the launching process sees it within its poll."""
        self.events.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.events.flush()

    def step(self, record: dict[str, Any]) -> None:
        ckpt.append_step(self.out, record)
        self.window.append(record)
        self.emit("step", **scalars(record))
        # Points at multiples of log_every, so a resumed run's curve has the same x values.
        if record["step"] % self.log_every == 0 or record["step"] == self.total:
            self._close_window()

    def _close_window(self) -> None:
        if not self.window:
            return
        point = summarize(self.window)
        self.curve.append(point)
        self.window = []
        self.emit("point", **point)
        if time.monotonic() - self.last_flush > CATALOG_EVERY_S:
            self.flush()

    def eval(self, step: int, loss: float, tag: str, **metrics: float) -> None:
        """A held-out loss at `step` (0: before training); `tag` says which (initial, step_N, final).
        `metrics`: a method's other held-out figures (e.g. rewards/accuracies), logged as eval/NAME."""
        self.emit("eval", step=step, eval_loss=loss, tag=tag, **scalars(metrics))

    def note(self, text: str) -> None:
        self.emit("note", text=text)

    def flush(self) -> None:
        """Write the loss curve so far to the run's catalog row."""
        self.last_flush = time.monotonic()
        if self.run_id:
            from store.catalog import open_catalog

            catalog = open_catalog()
            try:
                catalog.update("runs", self.run_id, loss_curve=self.curve)
            finally:
                catalog.close()

    def close(self) -> None:
        self._close_window()
        if not self.events.closed:
            self.emit("end")
            self.events.close()
