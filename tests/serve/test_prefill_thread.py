"""The engine's prefill thread (transformers_engine.py, `overlapped`): newcomers are prefilled beside
the decode steps, with the same tokens as the one-thread scheduler, and its failures, cancels and
shutdowns reach the right sequences."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from openchat_cli.serve.engines.base import SamplingParams

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], [50], [60, 61, 62]]


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    """The tiny model on the prefill thread, and on the scheduler thread alone."""
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    overlapped = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=16, prefill_thread=True)
    inline = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=16, prefill_thread=False)
    assert overlapped.overlapped and overlapped.describe()["prefill_thread"]
    assert not inline.overlapped and not inline.describe()["prefill_thread"]
    return overlapped, inline


async def collect(engine, prompt, params, rid="r", delay=0.0):
    await asyncio.sleep(delay)
    tokens, reason, error = [], None, None
    async for event in engine.generate(prompt, params, rid):
        tokens += event.token_ids
        reason, error = event.finish_reason, event.error or error
    return tokens, reason, error


def run(engine, coro_fn):
    """Start the engine, run the scenario, shut the engine down (its threads end)."""

    async def main():
        await engine.start()
        try:
            return await coro_fn()
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def _mixed_requests():
    return [
        SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=9, temperature=1.0, top_k=20, seed=11, ignore_eos=True),
        SamplingParams(max_tokens=17, temperature=0.8, repetition_penalty=1.3, seed=5, ignore_eos=True),
        SamplingParams(max_tokens=6, temperature=1.2, presence_penalty=0.7, seed=3, ignore_eos=True),
        SamplingParams(max_tokens=11, temperature=0.0, logit_bias=((7, 2.0),), ignore_eos=True),
    ]


def test_same_tokens_as_the_one_thread_scheduler_with_staggered_arrivals(engines):
    """Greedy and seeded rows arriving while others decode: every reply equals the one-thread
    engine's, and each one alone."""
    overlapped, inline = engines
    params = _mixed_requests()

    async def staggered(engine):
        return await asyncio.gather(
            *(collect(engine, p, sp, f"r{i}", delay=0.004 * i) for i, (p, sp) in enumerate(zip(PROMPTS, params)))
        )

    got = run(overlapped, lambda: staggered(overlapped))
    want = run(inline, lambda: staggered(inline))
    assert got == want
    assert all(reason == "length" and len(t) == sp.max_tokens for (t, reason, _), sp in zip(got, params))
    alone = [run(overlapped, lambda p=p, sp=sp: collect(overlapped, p, sp)) for p, sp in zip(PROMPTS, params)]
    assert alone == got
    assert overlapped.stats().running == 0 and overlapped.stats().waiting == 0


def test_decode_rows_keep_stepping_while_a_pack_prefills(engines, monkeypatch):
    """A running reply gets tokens while a newcomer's prefill is in flight (the one-thread engine
    stalls its whole batch for it)."""
    during = {}
    long = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    for engine in engines:
        original = engine._prefill

        def slow_prefill(seqs, engine=engine, original=original):
            if any(s.request_id == "late" for s in seqs):
                decoded = [len(s.generated) for s in engine._running]  # the early reply, decoding
                time.sleep(0.4)  # a long pack (the sleep, like a GEMM, lets go of the GIL)
                during[engine.overlapped] = sum(len(s.generated) for s in engine._running) - sum(decoded)
            return original(seqs)

        monkeypatch.setattr(engine, "_prefill", slow_prefill)

        async def scenario(engine=engine):
            stream = engine.generate(PROMPTS[0], long, "early")
            await stream.__anext__()
            tokens, reason, _ = await collect(engine, PROMPTS[2], short, "late")
            await stream.aclose()
            return len(tokens), reason

        assert run(engine, scenario) == (3, "length")
        monkeypatch.undo()
    assert during[True] >= 5
    assert during[False] == 0


def test_a_failing_prefill_fails_its_wave_only(engines, monkeypatch):
    overlapped, _ = engines
    original = overlapped._prefill

    def failing(seqs):
        if any(s.request_id == "doomed" for s in seqs):
            raise RuntimeError("prefill exploded")
        return original(seqs)

    monkeypatch.setattr(overlapped, "_prefill", failing)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)

    async def scenario():
        survivor = asyncio.create_task(collect(overlapped, PROMPTS[0], params, "survivor"))
        while not overlapped._running:  # decoding: the doomed prompt comes in a wave of its own
            await asyncio.sleep(0.001)
        doomed = await collect(overlapped, PROMPTS[1], params, "doomed")
        return await survivor, doomed

    (tokens, reason, _), (doomed_tokens, doomed_reason, error) = run(overlapped, scenario)
    assert (len(tokens), reason) == (30, "length")
    assert (doomed_tokens, doomed_reason) == ([], "error") and "prefill exploded" in error
    assert overlapped.stats().running == 0


def test_cancel_and_shutdown_reach_sequences_the_prefill_thread_holds(engines, monkeypatch):
    overlapped, _ = engines
    original = overlapped._prefill
    release = threading.Event()

    def held(seqs):
        release.wait(5)
        return original(seqs)

    monkeypatch.setattr(overlapped, "_prefill", held)
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)

    async def until(condition):
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def scenario():
        await overlapped.start()
        cancelled = overlapped.generate(PROMPTS[0], params, "cancelled")
        first = asyncio.create_task(cancelled.__anext__())
        await until(lambda: overlapped.stats().running == 1)  # in the prefill thread's hands
        kept = asyncio.create_task(collect(overlapped, PROMPTS[1], params, "kept"))
        await until(lambda: overlapped.stats().waiting == 1)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await cancelled.aclose()  # the client went away mid-prefill
        release.set()
        tokens, reason, _ = await kept
        await until(lambda: overlapped.stats().running == 0)
        running_after = overlapped.stats().running
        # Shutting down with a request whose prefill has not finished fails it, and the threads end.
        release.clear()
        stuck = asyncio.create_task(collect(overlapped, PROMPTS[2], params, "stuck"))
        await until(lambda: overlapped.stats().running == 1)
        threads = (overlapped._thread, overlapped._prefiller)
        shutdown = asyncio.create_task(overlapped.shutdown())
        await asyncio.sleep(0.05)
        release.set()
        await shutdown
        return tokens, reason, running_after, await stuck, threads

    tokens, reason, running_after, stuck, threads = asyncio.run(scenario())
    assert (len(tokens), reason, running_after) == (50, "length", 0)
    stuck_tokens, stuck_reason, stuck_error = stuck
    # Its prefill finished while shutting down: it may have its first token, never a full reply.
    assert stuck_reason == "error" and "shutting down" in stuck_error and len(stuck_tokens) <= 1
    assert not any(t.is_alive() for t in threads)


def test_only_the_ragged_path_without_lora_prefills_on_its_own_thread(tiny_model_dir, monkeypatch):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    padded = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, kv_cache="padded", prefill_thread=True)
    assert not padded.overlapped  # the padded batch merges caches on the scheduler thread
    assert not TransformersEngine(tiny_model_dir, tokenizer=tokenizer).overlapped  # off by default
    monkeypatch.setenv("OPENCHAT_PREFILL_THREAD", "1")
    assert TransformersEngine(tiny_model_dir, tokenizer=tokenizer).overlapped
    assert not TransformersEngine(tiny_model_dir, tokenizer=tokenizer, kv_cache="padded").overlapped
