"""Per-forward thread counts (widening.py): the chooser on a scripted clock, and the engine with
widening forced on giving the same tokens and log-probabilities as with it off."""

from __future__ import annotations

import asyncio

import pytest

from openchat_cli.serve.engines import widening
from openchat_cli.serve.engines.base import SamplingParams
from openchat_cli.serve.engines.widening import FIRST_PROBE_GAP_S, MAX_PROBE_GAP_S, Widths


class Clock:
    """A clock that moves only when a forward 'runs' or the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig():
    clock = Clock()
    calls: list[int] = []
    widths = Widths(1, 2, clock=clock, set_threads=calls.append)
    return widths, clock, calls


def run_forward(widths: Widths, clock: Clock, kind: str, tokens: int, cost: dict[int, float]) -> int:
    """One forward that takes cost[width] seconds per token on the scripted clock."""
    with widths.forward(kind, tokens) as width:
        clock.now += cost[width] * tokens
    return width


def test_narrow_first_then_wide_probed_and_kept_when_faster(rig):
    widths, clock, calls = rig
    cost = {1: 0.002, 2: 0.001}
    assert run_forward(widths, clock, "decode", 32, cost) == 1
    assert calls == []  # the narrow width is the engine's own: nothing to set
    assert run_forward(widths, clock, "decode", 32, cost) == 2  # first probe is due at once
    assert calls == [2, 1]  # widened for the forward, narrowed after it
    for _ in range(5):
        assert run_forward(widths, clock, "decode", 32, cost) == 2
    assert widths.last == {"decode": 2}
    group = widths.describe()["groups"]["decode 32-63 tokens"]
    assert group["using"] == 2 and group["forwards"] == {"1": 1, "2": 6}
    assert group["ms_per_token"] == {"1": 2.0, "2": 1.0}


def test_slower_wide_is_dropped_and_its_probes_back_off_to_the_cap(rig):
    widths, clock, _ = rig
    cost = {1: 0.001, 2: 0.004}
    run_forward(widths, clock, "decode", 8, cost)
    assert run_forward(widths, clock, "decode", 8, cost) == 2  # the probe, which loses
    probes_at = []
    for _ in range(1000):
        if run_forward(widths, clock, "decode", 8, cost) == 2:
            probes_at.append(clock.now)
        clock.now += 0.05
    gaps = [b - a for a, b in zip(probes_at, probes_at[1:])]
    assert len(probes_at) >= 4
    # Each lost probe doubles the wait: 1 s, 2 s, 4 s, 8 s, then 10 s apart (plus a step's jitter).
    assert all(later >= earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[0] >= 2 * FIRST_PROBE_GAP_S
    assert MAX_PROBE_GAP_S <= gaps[-1] < MAX_PROBE_GAP_S + 0.2
    assert widths.describe()["groups"]["decode 8-15 tokens"]["using"] == 1


def test_a_change_of_load_moves_the_choice_both_ways(rig):
    widths, clock, _ = rig
    quiet = {1: 0.002, 2: 0.001}
    busy = {1: 0.002, 2: 0.010}  # another process took the second core
    for _ in range(5):
        run_forward(widths, clock, "decode", 32, quiet)
    assert widths.last["decode"] == 2
    # The running width's average crosses the narrow one within a few forwards.
    used = [run_forward(widths, clock, "decode", 32, busy) for _ in range(6)]
    assert used[-1] == 1 and used.count(2) <= 3
    # Back to quiet: the next probe finds wide faster again and keeps it.
    clock.now += MAX_PROBE_GAP_S
    used = [run_forward(widths, clock, "decode", 32, quiet) for _ in range(4)]
    assert used == [2, 2, 2, 2]


def test_kinds_and_sizes_are_timed_apart(rig):
    widths, clock, _ = rig
    # Wide pays off for long prefills only; decode of 1 row is faster narrow.
    cost_decode = {1: 0.001, 2: 0.003}
    cost_prefill = {1: 0.002, 2: 0.001}
    for _ in range(4):
        run_forward(widths, clock, "decode", 1, cost_decode)
        run_forward(widths, clock, "prefill", 600, cost_prefill)
    groups = widths.describe()["groups"]
    assert groups["decode 1-1 tokens"]["using"] == 1
    assert groups["prefill 512-1023 tokens"]["using"] == 2
    # A new size starts on narrow, whatever the others chose.
    assert widths.choose("prefill", 3) == 1


def test_a_forward_that_raises_restores_the_narrow_count_and_records_nothing(rig):
    widths, clock, calls = rig
    run_forward(widths, clock, "decode", 4, {1: 0.001, 2: 0.001})
    with pytest.raises(RuntimeError):
        with widths.forward("decode", 4) as width:
            assert width == 2
            raise RuntimeError("boom")
    assert calls == [2, 1]
    assert widths.describe()["groups"]["decode 4-7 tokens"]["forwards"] == {"1": 1}


def test_env_switch(monkeypatch):
    monkeypatch.delenv(widening.ENV_SWITCH, raising=False)
    assert widening.enabled_by_env()
    monkeypatch.setenv(widening.ENV_SWITCH, "0")
    assert not widening.enabled_by_env()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], [50], [60, 61, 62]]
PARAMS = [
    SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=3),
    SamplingParams(max_tokens=9, temperature=1.0, top_k=20, seed=11, ignore_eos=True, logprobs=1),
    SamplingParams(max_tokens=15, temperature=0.8, top_p=0.9, seed=5, ignore_eos=True),
    SamplingParams(max_tokens=6, temperature=1.2, min_p=0.05, seed=3, ignore_eos=True),
    SamplingParams(max_tokens=10, temperature=0.7, repetition_penalty=1.3, seed=8, ignore_eos=True),
]


def _replies(engine):
    async def one(prompt, params, rid):
        tokens, logprobs = [], []
        async for event in engine.generate(prompt, params, rid):
            tokens += event.token_ids
            logprobs += [(lp.token_id, lp.logprob, lp.top) for lp in event.logprobs or ()]
        return tokens, logprobs

    async def main():
        await engine.start()
        try:
            return await asyncio.gather(*(one(p, sp, f"r{i}") for i, (p, sp) in enumerate(zip(PROMPTS, PARAMS))))
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def test_widened_forwards_give_bitwise_equal_replies(tiny_model_dir, monkeypatch):
    """Narrow 1, wide 2 with probes due at every forward (so decode and prefill forwards alternate
    widths) against an engine without widening: equal tokens and bitwise equal log-probabilities."""
    import torch

    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    monkeypatch.delenv(widening.ENV_SWITCH, raising=False)
    monkeypatch.setattr(widening, "FIRST_PROBE_GAP_S", 0.0)
    monkeypatch.setattr(widening, "MAX_PROBE_GAP_S", 0.0)
    tokenizer = load_tokenizer(tiny_model_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=8, prefill_thread=False)
        wide = TransformersEngine(
            tiny_model_dir, tokenizer=tokenizer, max_batch_size=8, prefill_thread=False, wide_threads=2
        )
        assert plain.describe()["wide_threads"] is None
        assert wide.describe()["threads"] == 1 and wide.describe()["wide_threads"] == 2
        want = _replies(plain)
        got = _replies(wide)
        assert got == want
        assert _replies(wide) == want  # the prefill group again: its wide probe this time
        assert all(len(tokens) == sp.max_tokens for (tokens, _), sp in zip(got, PARAMS))
        groups = wide._widths.describe()["groups"]
        for kind in ("decode", "prefill"):
            ran = {w for name, g in groups.items() if name.startswith(kind) for w in map(int, g["forwards"])}
            assert ran == {1, 2}, (kind, groups)
        assert set(wide.stats().extra["threads"]) == {"decode", "prefill"}
        assert torch.get_num_threads() == 1  # every widened forward narrowed again
    finally:
        torch.set_num_threads(before)


def test_no_widening_beside_the_prefill_thread_or_when_switched_off(tiny_model_dir, monkeypatch):
    import torch

    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    monkeypatch.delenv(widening.ENV_SWITCH, raising=False)
    tokenizer = load_tokenizer(tiny_model_dir)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        beside = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, prefill_thread=True, wide_threads=2)
        assert beside.describe()["wide_threads"] is None
        monkeypatch.setenv(widening.ENV_SWITCH, "off")
        off = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, prefill_thread=False, wide_threads=2)
        assert off.describe()["wide_threads"] is None and "threads" not in off.stats().extra
        monkeypatch.delenv(widening.ENV_SWITCH)
        assert off.describe()["threads"] == 1
        not_wider = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, prefill_thread=False, wide_threads=1)
        assert not_wider.describe()["wide_threads"] is None
    finally:
        torch.set_num_threads(before)
