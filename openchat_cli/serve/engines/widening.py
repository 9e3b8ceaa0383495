"""How many threads each forward runs on: the engine's own count (narrow) or every CPU the engine
process may use (wide), chosen by measuring both, per kind of forward and batch size.

Why: the engine process runs 1 torch thread on a 2-CPU box so that the API process keeps a core
(engine_process.py), but at 32 streams the API process uses about 3% of that core and the other
97% sits idle. On a quiet machine the 40M model's decode steps ran 1.6x faster on 2 threads and
its prefill 1.9x (fp32, 32 rows). On a busy machine a 2-thread forward waits for whichever thread
was preempted: a 32-row step of the small model once took 270-470 ms where 1 thread took 16-22 ms.
Neither fixed count is right, so both are timed and the faster one runs.

How: forwards are grouped by kind ("decode", "prefill") and size (the power of two of their tokens).
Each group keeps a moving average of seconds per token for each width. The faster width runs; the
other is tried again when the kind's probe comes due: 0.5 s after a probe that won, twice as long
after each one that lost (at most MAX_PROBE_GAP_S), so a width that has turned very slow costs
one forward of each kind per 10 s.

Results do not depend on the width: torch's GEMMs (MKL, oneDNN) split the output's rows and
columns across threads, not the sum along the inner dimension, and the attention kernels give each
thread whole rows and heads, so the logits are bitwise equal and seeded replies repeat (tested).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from openchat_cli.serve.engines.switches import env_switch

log = logging.getLogger("openchat.serve.engine")
ENV_SWITCH = "OPENCHAT_WIDE_THREADS"
FIRST_PROBE_GAP_S = 0.5
MAX_PROBE_GAP_S = 10.0
# Weight of a new sample in the running width's average: a few forwards follow a change of load.
SMOOTHING = 0.3


def enabled_by_env() -> bool:
    """False when OPENCHAT_WIDE_THREADS is 0/false/off/no."""
    return env_switch(ENV_SWITCH, True)


@dataclass
class _Group:
    """One kind and size of forward: seconds per token and forwards run, by width."""

    seconds: dict[int, float] = field(default_factory=dict)
    forwards: dict[int, int] = field(default_factory=dict)


@dataclass
class _Probes:
    """When a kind of forward next tries its slower width. One schedule per kind, not per size:
    sizes seen rarely (a prefill pack of an unusual length) would each pay for their own probes."""

    due: float = 0.0
    gap: float = FIRST_PROBE_GAP_S


class Widths:
    """Chooses each forward's thread count (see the module doc). Used from one thread, the
    scheduler's: torch's thread count is per thread."""

    def __init__(
        self,
        narrow: int,
        wide: int,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.narrow, self.wide = int(narrow), int(wide)
        self._clock = clock
        self._set_threads = set_threads
        self._groups: dict[tuple[str, int], _Group] = {}
        self._probes: dict[str, _Probes] = {}
        self.last: dict[str, int] = {}  # kind -> the width its latest forward ran on

    def _group(self, kind: str, tokens: int) -> _Group:
        return self._groups.setdefault((kind, max(1, int(tokens)).bit_length()), _Group())

    def _faster(self, group: _Group) -> int:
        """The width with the lower seconds per token; narrow on a tie or until wide is timed."""
        narrow, wide = group.seconds.get(self.narrow), group.seconds.get(self.wide)
        if narrow is not None and wide is not None and wide < narrow:
            return self.wide
        return self.narrow

    def choose(self, kind: str, tokens: int) -> int:
        """The width for a forward of `tokens` tokens: narrow until its group has a number for it,
        then the faster one, except when the kind's probe is due (then the other one)."""
        group = self._group(kind, tokens)
        if self.narrow not in group.seconds:
            return self.narrow
        faster = self._faster(group)
        if self._clock() >= self._probes.setdefault(kind, _Probes()).due:
            return self.wide if faster == self.narrow else self.narrow
        return faster

    def record(self, kind: str, tokens: int, width: int, seconds: float) -> None:
        """A forward's wall time. The running width's average moves by SMOOTHING; a probe's sample
        replaces the probed width's number (it is from another time) and sets the next probe."""
        group = self._group(kind, tokens)
        probes = self._probes.setdefault(kind, _Probes())
        per_token = seconds / max(1, int(tokens))
        was_faster = self._faster(group)
        old = group.seconds.get(width)
        probing = width != was_faster
        if old is None or probing:
            group.seconds[width] = per_token
        else:
            group.seconds[width] = old + SMOOTHING * (per_token - old)
        group.forwards[width] = group.forwards.get(width, 0) + 1
        self.last[kind] = width
        faster = self._faster(group)
        if probing:  # a win brings the next probe close again; each loss pushes it twice as far
            probes.gap = FIRST_PROBE_GAP_S if faster == width else min(2 * probes.gap, MAX_PROBE_GAP_S)
            probes.due = self._clock() + probes.gap
        elif faster != was_faster:  # the load changed: the other width leads now
            probes.gap = FIRST_PROBE_GAP_S
            probes.due = self._clock() + probes.gap
        if faster != was_faster:
            log.debug(
                "%s forwards of %d tokens now run on %d threads (ms per token: %s)",
                kind,
                tokens,
                faster,
                {w: round(v * 1000, 3) for w, v in group.seconds.items()},
            )

    @contextmanager
    def forward(self, kind: str, tokens: int) -> Iterator[int]:
        """Run the block (one forward) on the chosen width and time it."""
        width = self.choose(kind, tokens)
        if width != self.narrow:
            self._set_threads(width)
        started = self._clock()
        try:
            yield width
        finally:
            elapsed = self._clock() - started
            if width != self.narrow:
                self._set_threads(self.narrow)
        self.record(kind, tokens, width, elapsed)

    def describe(self) -> dict:
        """What /health-style views show: the widths and, per group, ms per token for each and
        the forwards run on each."""
        groups = {}
        for (kind, bits), group in sorted(self._groups.items()):
            low = 1 << (bits - 1)
            groups[f"{kind} {low}-{2 * low - 1} tokens"] = {
                "ms_per_token": {str(w): round(s * 1000, 4) for w, s in sorted(group.seconds.items())},
                "forwards": {str(w): n for w, n in sorted(group.forwards.items())},
                "using": self._faster(group),
            }
        return {"narrow": self.narrow, "wide": self.wide, "groups": groups}
