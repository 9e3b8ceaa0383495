"""Multipack sampler: full, balanced, deterministic, nothing dropped."""

from __future__ import annotations

import numpy as np
import pytest

from openchat_cli.train.sampler import MultipackSampler, PackSpec, best_fit_decreasing


def skewed_lengths(n: int, seed: int = 0, cap: int = 1024) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(4.5, 1.0, n).astype(np.int64), 4, cap)


def all_rows(sampler: MultipackSampler, epoch: int) -> list[int]:
    rows = []
    start, stop = sampler.epoch_starts[epoch], sampler.epoch_starts[epoch + 1]
    for step in range(start, stop):
        for rank in range(sampler.spec.world):
            for batch in sampler.batches(step, rank):
                rows += batch.tolist()
    return rows


def test_every_sequence_once_per_epoch_and_bins_fit():
    lengths = skewed_lengths(3000)
    sampler = MultipackSampler(lengths, PackSpec(capacity=2048, world=2, micro_steps=2, seed=1), epochs=2)
    for epoch in range(2):
        rows = all_rows(sampler, epoch)
        assert sorted(rows) == list(range(len(lengths)))  # nothing dropped, nothing twice
    for step in range(len(sampler)):
        for rank in range(2):
            batches = sampler.batches(step, rank)
            assert len(batches) == 2  # every rank runs the same number of micro-batches
            assert all(lengths[b].sum() <= 2048 for b in batches)


def test_packing_is_efficient_and_beats_padded_batches():
    lengths = skewed_lengths(4000)
    sampler = MultipackSampler(lengths, PackSpec(capacity=4096, world=1, seed=0))
    assert sampler.efficiency() > 0.95
    # Naive: batches of the same average token budget, padded to their longest sequence.
    per_batch = int(4096 // lengths.mean())
    order = np.random.default_rng(0).permutation(len(lengths))
    batches = [lengths[order[i : i + per_batch]] for i in range(0, len(order), per_batch)]
    padded = sum(b.sum() for b in batches) / sum(len(b) * b.max() for b in batches)
    assert sampler.efficiency() > padded + 0.3


def test_ranks_are_balanced():
    lengths = skewed_lengths(4000, seed=3)
    sampler = MultipackSampler(lengths, PackSpec(capacity=2048, world=4, seed=0))
    spreads = []
    for step in range(len(sampler) - 1):  # the last step may be partial
        tokens = sampler.step_tokens(step)
        spreads.append((tokens.max() - tokens.min()) / 2048)
    assert np.median(spreads) < 0.01 and max(spreads) < 0.05


def test_deterministic_per_seed_and_epoch():
    lengths = skewed_lengths(1000)
    spec = PackSpec(capacity=1024, world=2, seed=7)
    a, b = MultipackSampler(lengths, spec, epochs=2), MultipackSampler(lengths, spec, epochs=2)
    assert a.fingerprint() == b.fingerprint()
    for step in range(len(a)):
        for rank in range(2):
            assert [x.tolist() for x in a.batches(step, rank)] == [x.tolist() for x in b.batches(step, rank)]
    assert all_rows(a, 0) != all_rows(a, 1)  # a new shuffle each epoch
    other = MultipackSampler(lengths, PackSpec(capacity=1024, world=2, seed=8))
    assert all_rows(other, 0) != all_rows(a, 0)
    assert other.fingerprint() != a.fingerprint()


def test_last_partial_step_is_kept_with_empty_slots():
    lengths = np.full(5, 100)
    sampler = MultipackSampler(lengths, PackSpec(capacity=200, world=2, seed=0))
    # 3 bins of <= 2 sequences over 2 ranks: 2 steps, the second has one empty slot.
    assert len(sampler) == 2
    last = [sampler.batches(1, r)[0] for r in range(2)]
    assert sorted(len(b) for b in last) == [0, 1]  # the underfilled bin comes last
    assert sorted(all_rows(sampler, 0)) == list(range(5))


def test_sequence_longer_than_capacity_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        MultipackSampler(np.array([10, 300]), PackSpec(capacity=256))


def test_best_fit_decreasing_fills_bins():
    lengths = np.array([6, 5, 4, 3, 2, 2, 1, 1])
    bins = best_fit_decreasing(lengths, np.arange(len(lengths)), capacity=8)
    assert len(bins) == 3 and sorted(sum(lengths[b]) for b in bins) == [8, 8, 8]


def test_epoch_efficiency_with_and_without_the_final_partial_step():
    lengths = np.full(5, 100)
    sampler = MultipackSampler(lengths, PackSpec(capacity=200, world=2, seed=0), epochs=2)
    # per epoch: step 1 holds 2 full bins (400 of 400), step 2 one bin of 100 (100 of 400)
    for epoch in range(2):
        assert sampler.epoch_efficiency(epoch) == pytest.approx(500 / 800)
        assert sampler.epoch_efficiency(epoch, last_step=False) == pytest.approx(1.0)
    assert sampler.kept_tokens() == 2 * 500  # every token of every epoch


def test_sharegpt_lengths_keep_every_token_at_4096():
    rng = np.random.default_rng(4)
    lengths = np.clip(rng.lognormal(7.05, 0.95, 3000), 16, 4096).astype(np.int64)
    sampler = MultipackSampler(lengths, PackSpec(capacity=4096, world=8, seed=0))
    assert sampler.kept_tokens() == int(lengths.sum())
    assert sampler.epoch_efficiency(0, last_step=False) > 0.97
