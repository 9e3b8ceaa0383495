"""Rank 0's view of a run: the progress bar, the loss curve and the catalog row."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from openchat_cli.console import err_console, progress
from openchat_cli.train import checkpoint as ckpt

CATALOG_EVERY_S = 30.0


class Reporter:
    """Collects per-step numbers; every `log_every` steps adds one averaged point to the loss
    curve, which goes to the catalog at most every 30 s (and at checkpoints and the end)."""

    def __init__(self, out: Path, run_id: str | None, total: int, start: int, log_every: int,
                 curve: list[dict[str, Any]] | None = None):
        self.out = Path(out)
        self.run_id = run_id
        self.total = total
        self.log_every = log_every
        self.curve: list[dict[str, Any]] = list(curve or [])
        self.window: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.bar = progress()
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def step(self, record: dict[str, Any]) -> None:
        ckpt.append_step(self.out, record)
        self.window.append(record)
        info = (f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                f"{record['tokens_per_s']:,.0f} tok/s  pack {record['packing_efficiency']:.0%}"
                + (f"  reward {record['reward']:.3f}  kl {record['kl']:.4f}" if "reward" in record else ""))
        self.bar.update(self.task, completed=record["step"], info=info)
        # Points at multiples of log_every, so a resumed run's curve has the same x values.
        if record["step"] % self.log_every == 0 or record["step"] == self.total:
            self._close_window()

    def _close_window(self) -> None:
        if not self.window:
            return
        w = self.window
        point = {
            "step": w[-1]["step"], "epoch": w[-1]["epoch"],
            "loss": sum(r["loss"] for r in w) / len(w), "lr": w[-1]["lr"],
            "tokens_per_s": sum(r["tokens"] for r in w) / max(1e-9, sum(r["seconds"] for r in w)),
            "packing_efficiency": sum(r["tokens"] for r in w) / sum(r["capacity"] for r in w),
        }
        # Other numbers a method reports (GRPO's reward, kl, …): averaged over the window too.
        for key, value in w[-1].items():
            if key not in point and key not in ("tokens", "seconds", "capacity", "weight") and \
                    isinstance(value, (int, float)) and not isinstance(value, bool):
                values = [r[key] for r in w if isinstance(r.get(key), (int, float))]
                point[key] = sum(values) / len(values)
        self.curve.append(point)
        self.window = []
        if self.bar.disable:  # no live bar (not a terminal): one plain line per point instead
            err_console.print(f"step {point['step']}/{self.total}  loss {point['loss']:.4f}  "
                              f"lr {point['lr']:.2e}  {point['tokens_per_s']:,.0f} tok/s  "
                              f"packing {point['packing_efficiency']:.1%}"
                              + (f"  reward {point['reward']:.3f}  kl {point['kl']:.4f}" if "reward" in point else ""),
                              highlight=False)
        if time.monotonic() - self.last_flush > CATALOG_EVERY_S:
            self.flush()

    def note(self, text: str) -> None:
        self.bar.console.print(text, highlight=False)

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
        self.bar.stop()
