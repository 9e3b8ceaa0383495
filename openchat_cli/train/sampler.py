"""Multipack: whole sequences packed into fixed token budgets, balanced across ranks.

Each optimizer step gives every rank `micro_steps` micro-batches ("bins") of at most
`capacity` tokens. An epoch is planned up front from the sequence lengths alone:

1. shuffle the sequences (seed, epoch);
2. walk the shuffled order in chunks of about `chunk_bins` bins' worth of tokens and pack each
   chunk with best-fit decreasing (the least-filled bin of a chunk is handed to the next chunk,
   so only the last chunk can leave underfilled bins; they are put last);
3. shuffle the bins of each chunk, cut the bin list into steps of world x micro_steps bins and
   deal each step's bins to ranks largest-first onto the lightest rank (every rank gets the
   same number of bins, so collective ops line up; a short last step is filled with empty bins,
   which the loop runs as zero-weight dummies, instead of being dropped).

The plan depends only on (lengths, capacity, world, micro_steps, seed, epoch), so every rank
computes the same plan without talking to the others, and a resumed run continues at a step
index.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

import numpy as np

EMPTY = -1


@dataclass(frozen=True)
class PackSpec:
    capacity: int  # tokens per micro-batch
    world: int = 1  # ranks
    micro_steps: int = 1  # micro-batches per rank per step
    seed: int = 0
    shuffle: bool = True
    chunk_bins: int = 64


def best_fit_decreasing(lengths: np.ndarray, items: np.ndarray, capacity: int) -> list[list[int]]:
    """Pack `items` (row ids) into bins of `capacity` tokens: longest first, each into the
    fullest bin that still has room."""
    order = items[np.argsort(-lengths[items], kind="stable")]
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for item in order.tolist():
        need = int(lengths[item])
        pos = bisect.bisect_left(free, (need, -1))
        if pos == len(free):
            bins.append([item])
            bisect.insort(free, (capacity - need, len(bins) - 1))
        else:
            remaining, b = free.pop(pos)
            bins[b].append(item)
            bisect.insort(free, (remaining - need, b))
    return bins


def pack_epoch_bins(lengths: np.ndarray, spec: PackSpec, epoch: int) -> list[np.ndarray]:
    """The epoch's bins, in training order (before they are dealt to ranks)."""
    rng = np.random.default_rng([spec.seed, epoch])
    n = len(lengths)
    order = rng.permutation(n) if spec.shuffle else np.arange(n)
    budget = spec.chunk_bins * spec.capacity
    out: list[np.ndarray] = []
    carry: list[int] = []
    start = 0
    cumulative = np.cumsum(lengths[order])
    while start < n or carry:
        # Items of this chunk: the carried-over bin plus the next `budget` tokens' worth.
        done_before = cumulative[start - 1] if start else 0
        stop = int(np.searchsorted(cumulative, done_before + budget, side="right"))
        stop = max(stop, start + 1) if start < n else start
        items = np.concatenate([np.asarray(carry, dtype=np.int64), order[start:stop]])
        start = stop
        bins = best_fit_decreasing(lengths, items, spec.capacity)
        carry = []
        if start < n and len(bins) > 1:
            fills = [int(lengths[b].sum()) for b in bins]
            carry = bins.pop(int(np.argmin(fills)))
        if start >= n:  # the final chunk: fullest first, so its few underfilled bins share the last step(s)
            bins.sort(key=lambda b: -int(lengths[b].sum()))
        elif spec.shuffle:
            perm = rng.permutation(len(bins))
            bins = [bins[i] for i in perm]
        out += [np.asarray(b, dtype=np.int64) for b in bins]
    return out


def deal(bin_tokens: list[int], world: int, micro_steps: int) -> list[list[int]]:
    """Assign one step's bins (by position) to ranks: each gets exactly `micro_steps` slots,
    largest bin first onto the rank with the fewest tokens; EMPTY fills missing slots."""
    ranks: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for pos in sorted(range(len(bin_tokens)), key=lambda i: -bin_tokens[i]):
        rank = min((r for r in range(world) if len(ranks[r]) < micro_steps), key=lambda r: load[r])
        ranks[rank].append(pos)
        load[rank] += bin_tokens[pos]
    for r in ranks:
        r += [EMPTY] * (micro_steps - len(r))
    return ranks


@dataclass
class EpochPlan:
    bins: list[np.ndarray]
    steps: np.ndarray  # [steps, world, micro_steps] bin index or EMPTY
    bin_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def plan_epoch(lengths: np.ndarray, spec: PackSpec, epoch: int) -> EpochPlan:
    bins = pack_epoch_bins(lengths, spec, epoch)
    tokens = np.asarray([int(lengths[b].sum()) for b in bins], dtype=np.int64)
    per_step = spec.world * spec.micro_steps
    steps = []
    for first in range(0, len(bins), per_step):
        chunk = list(range(first, min(first + per_step, len(bins))))
        dealt = deal([int(tokens[i]) for i in chunk], spec.world, spec.micro_steps)
        steps.append([[chunk[p] if p != EMPTY else EMPTY for p in rank] for rank in dealt])
    return EpochPlan(bins, np.asarray(steps, dtype=np.int64).reshape(-1, spec.world, spec.micro_steps), tokens)


class MultipackSampler:
    """Every epoch's plan, addressed by a global step index (what `--resume` stores)."""

    def __init__(self, lengths: np.ndarray, spec: PackSpec, epochs: int = 1):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.spec = spec
        self.epochs = epochs
        too_long = int(self.lengths.max()) if len(self.lengths) else 0
        if too_long > spec.capacity:
            raise ValueError(f"a sequence of {too_long} tokens does not fit a micro-batch of {spec.capacity}")
        self.plans = [plan_epoch(self.lengths, spec, e) for e in range(epochs)]
        self.epoch_starts = np.cumsum([0] + [len(p.steps) for p in self.plans])

    def __len__(self) -> int:
        return int(self.epoch_starts[-1])

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within epoch) of a global step index."""
        epoch = int(np.searchsorted(self.epoch_starts, step, side="right") - 1)
        return epoch, step - int(self.epoch_starts[epoch])

    def batches(self, step: int, rank: int) -> list[np.ndarray]:
        """Row ids of each micro-batch of `rank` at global step `step` (an empty array = dummy)."""
        epoch, local = self.locate(step)
        plan = self.plans[epoch]
        return [plan.bins[b] if b != EMPTY else np.zeros(0, dtype=np.int64) for b in plan.steps[local, rank]]

    def step_tokens(self, step: int) -> np.ndarray:
        """Real tokens per rank at `step` ([world])."""
        epoch, local = self.locate(step)
        plan = self.plans[epoch]
        idx = plan.steps[local]
        return np.where(idx == EMPTY, 0, plan.bin_tokens[np.maximum(idx, 0)]).sum(axis=1)

    def step_efficiency(self, step: int) -> float:
        """Real tokens / token capacity of the step over all ranks."""
        return float(self.step_tokens(step).sum()) / (self.spec.capacity * self.spec.world * self.spec.micro_steps)

    def efficiency(self) -> float:
        total = sum(int(p.bin_tokens.sum()) for p in self.plans)
        return total / (len(self) * self.spec.capacity * self.spec.world * self.spec.micro_steps)

    def epoch_efficiency(self, epoch: int, last_step: bool = True) -> float:
        """Real tokens / capacity over one epoch's steps; `last_step=False` leaves out its final
        step, the only one that can be partly empty (how full the packing is where it can be)."""
        steps = range(int(self.epoch_starts[epoch]), int(self.epoch_starts[epoch + 1]) - (0 if last_step else 1))
        if not len(steps):
            return float("nan")
        return float(np.mean([self.step_efficiency(s) for s in steps]))

    def kept_tokens(self) -> int:
        """Tokens the plan trains on over all epochs (every token of every epoch: none dropped)."""
        return sum(int(p.bin_tokens.sum()) for p in self.plans)

    def fingerprint(self) -> str:
        """Changes when the data or the packing settings change (a resume must not cross that)."""
        h = hashlib.sha256(self.lengths.tobytes())
        h.update(repr((self.spec, self.epochs)).encode())
        return h.hexdigest()[:16]
