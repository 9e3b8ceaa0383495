"""The transformers engine on its own: batching, per-request sampling, seeds, cancellation."""

from __future__ import annotations

import asyncio
import time

from openchat_cli.serve.engines.base import SamplingParams, pick_engine_kind

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], [50]]


async def collect(engine, prompt, params, rid="r"):
    tokens, reason = [], None
    async for event in engine.generate(prompt, params, rid):
        tokens += event.token_ids
        reason = event.finish_reason
    return tokens, reason


def run(engine, coro_fn):
    async def main():
        await engine.start()
        return await coro_fn()

    return asyncio.run(main())


def test_greedy_batched_equals_alone(tiny_engine):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    async def alone():
        return [await collect(tiny_engine, p, params) for p in PROMPTS]

    async def together():
        return await asyncio.gather(*(collect(tiny_engine, p, params, f"b{i}") for i, p in enumerate(PROMPTS)))

    solo = run(tiny_engine, alone)
    batched = run(tiny_engine, together)
    assert [t for t, _ in solo] == [t for t, _ in batched]
    assert all(len(t) == 12 and r == "length" for t, r in batched)
    assert tiny_engine.steps > 0


def test_seeded_sampling_is_reproducible_in_any_batch(tiny_engine):
    seeded = SamplingParams(
        max_tokens=16, temperature=1.0, top_p=0.9, min_p=0.01, repetition_penalty=1.2, seed=1234, ignore_eos=True
    )
    others = [
        SamplingParams(max_tokens=8, temperature=0.0, logit_bias=((7, 3.0),), ignore_eos=True),
        SamplingParams(max_tokens=20, temperature=1.5, top_k=5, min_p=0.1, ignore_eos=True),
        SamplingParams(
            max_tokens=10,
            temperature=0.7,
            presence_penalty=1.0,
            frequency_penalty=0.5,
            repetition_penalty=0.8,
            seed=7,
            ignore_eos=True,
        ),
    ]

    async def alone():
        return await collect(tiny_engine, PROMPTS[0], seeded)

    async def crowded():
        results = await asyncio.gather(
            collect(tiny_engine, PROMPTS[0], seeded, "s"),
            *(collect(tiny_engine, PROMPTS[i + 1], p, f"o{i}") for i, p in enumerate(others)),
        )
        return results[0]

    first = run(tiny_engine, alone)
    assert run(tiny_engine, crowded) == first
    different = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99, ignore_eos=True)
    assert run(tiny_engine, lambda: collect(tiny_engine, PROMPTS[0], different)) != first


def test_stop_tokens_and_penalties(tiny_engine):
    greedy = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    tokens, _ = run(tiny_engine, lambda: collect(tiny_engine, PROMPTS[1], greedy))
    # Make the first greedy token a stop token: generation ends right there, with "stop".
    stopping = SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=(tokens[0],))
    assert run(tiny_engine, lambda: collect(tiny_engine, PROMPTS[1], stopping)) == ([tokens[0]], "stop")
    # A strong frequency penalty forbids repeating what greedy decoding repeats.
    penalized = SamplingParams(
        max_tokens=10, temperature=0.0, frequency_penalty=2.0, presence_penalty=2.0, ignore_eos=True
    )
    plain, _ = run(tiny_engine, lambda: collect(tiny_engine, [20, 20, 20], greedy))
    pen, _ = run(tiny_engine, lambda: collect(tiny_engine, [20, 20, 20], penalized))
    assert len(set(pen)) > len(set(plain))


def test_cancelled_sequence_leaves_the_batch(tiny_engine):
    long = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    short = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)

    async def scenario():
        agen = tiny_engine.generate(PROMPTS[0], long, "long")
        await agen.__anext__()
        assert tiny_engine.stats().running == 1
        other = asyncio.create_task(collect(tiny_engine, PROMPTS[1], short, "short"))
        await agen.aclose()  # like a client going away
        tokens, reason = await other
        deadline = time.monotonic() + 30  # the scheduler thread may be slow to get a turn on a loaded box
        while tiny_engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return tokens, reason, tiny_engine.stats()

    tokens, reason, stats = run(tiny_engine, scenario)
    assert (len(tokens), reason) == (5, "length")
    assert stats.running == 0 and stats.waiting == 0


def test_context_limit_ends_with_length(tiny_engine):
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    prompt = [40] * (tiny_engine.context_length - 3)
    tokens, reason = run(tiny_engine, lambda: collect(tiny_engine, prompt, params))
    assert reason == "length" and len(prompt) + len(tokens) == tiny_engine.context_length


def test_auto_engine_is_transformers_without_gpu():
    assert pick_engine_kind("auto") == "transformers"


def test_sliding_window_model_batches_correctly(tmp_path, tiny_tokenizer):
    """Mistral-style sliding-window attention: batched replies equal HF generate's, past the window."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        max_position_embeddings=256,
    )
    model = MistralForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    engine = TransformersEngine(tmp_path, tokenizer=tiny_tokenizer, max_batch_size=8)
    assert engine.describe()["max_batch_size"] == 8
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    expected = []
    for p in PROMPTS:
        out = model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=3)
        expected.append(out[0, len(p) :].tolist())

    async def together():
        return await asyncio.gather(*(collect(engine, p, params, f"m{i}") for i, p in enumerate(PROMPTS)))

    got = run(engine, together)
    assert [t for t, _ in got] == expected


def test_prompt_scoring_batches_and_matches_a_forward_pass(tiny_engine, tiny_model_dir):
    """max_tokens 0 with prompt_logprobs: scored together in shared forwards without joining the
    batch, each row as a lone unpadded forward would score it; a generating request with
    prompt_logprobs beside them gets the same prompt numbers plus its token's logprob."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def reference(ids):
        with torch.inference_mode():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    score = SamplingParams(max_tokens=0, prompt_logprobs=2)
    generate = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, logprobs=1, prompt_logprobs=0)

    async def events(prompt, params, rid):
        return [e async for e in tiny_engine.generate(prompt, params, rid)]

    async def together():
        return await asyncio.gather(
            *(events(p, score, f"s{i}") for i, p in enumerate(PROMPTS * 3)), events(PROMPTS[2], generate, "g")
        )

    before = tiny_engine.scoring_forwards
    *scored, generated = run(tiny_engine, together)
    assert tiny_engine.scoring_forwards - before < len(PROMPTS) * 3  # batched, not one by one
    for prompt, evs in zip(PROMPTS * 3, scored):
        (event,) = evs
        assert event.token_ids == [] and event.finish_reason == "length"
        scores = reference(prompt)
        lps = event.prompt_logprobs
        assert len(lps) == len(prompt) and lps[0] is None
        for j, lp in enumerate(lps[1:]):
            assert lp.token_id == prompt[j + 1]
            assert abs(lp.logprob - float(scores[j, prompt[j + 1]])) <= 1e-4
            values, indices = scores[j].topk(2)
            assert [t for t, _ in lp.top] == indices.tolist()
            assert all(abs(v - float(w)) <= 1e-4 for (_, v), w in zip(lp.top, values))
    (event,) = generated
    scores = reference(PROMPTS[2])
    assert len(event.prompt_logprobs) == len(PROMPTS[2]) and event.prompt_logprobs[0] is None
    assert all(
        abs(a.logprob - float(scores[j, PROMPTS[2][j + 1]])) <= 1e-4 for j, a in enumerate(event.prompt_logprobs[1:])
    )
    (token,) = event.token_ids
    assert token == int(scores[-1].argmax()) and event.logprobs[0].token_id == token
    assert abs(event.logprobs[0].logprob - float(scores[-1, token])) <= 1e-4
    assert event.logprobs[0].top[0][0] == token
    assert tiny_engine.stats().running == 0


def test_prompt_scoring_splits_batches_to_bound_logits_memory(tiny_engine, monkeypatch):
    import torch

    from openchat_cli.serve.engines import transformers_engine
    from openchat_cli.serve.engines.transformers_engine import _Seq

    params = SamplingParams(max_tokens=0, prompt_logprobs=0)

    def score_all():
        seqs = [_Seq(request_id=f"s{i}", prompt=p, params=params, queue=None) for i, p in enumerate(PROMPTS)]
        before = tiny_engine.scoring_forwards
        with torch.inference_mode():
            events = {seq.request_id: event for seq, event in tiny_engine._score(seqs)}
        return tiny_engine.scoring_forwards - before, [events[f"s{i}"] for i in range(len(PROMPTS))]

    forwards, wide = score_all()
    assert forwards == 1
    # Room for one 12-token row of logits at a time: every prompt gets its own forward.
    monkeypatch.setattr(transformers_engine, "MAX_SCORING_LOGITS", 12 * tiny_engine.vocab_size)
    forwards, narrow = score_all()
    assert forwards == len(PROMPTS)
    for a, b in zip(wide, narrow):
        assert len(a.prompt_logprobs) == len(b.prompt_logprobs)
        assert all(
            x is None and y is None or abs(x.logprob - y.logprob) <= 1e-4
            for x, y in zip(a.prompt_logprobs, b.prompt_logprobs)
        )


def test_ragged_prompts_prefill_packed_like_one_at_a_time(tiny_model_dir):
    """The padded batch's packed prefill (masked, then cut into left-padded rows; the ragged path's
    is in test_ragged_kv.py) computes exactly the prompts' tokens (no padding), and each row's
    next-token logits and KV cache equal a lone prefill of that prompt."""
    import torch

    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine, _Seq

    tiny_engine = TransformersEngine(tiny_model_dir, tokenizer=load_tokenizer(tiny_model_dir), kv_cache="padded")
    assert tiny_engine.packable
    params = SamplingParams(max_tokens=4, temperature=0.0)

    def seqs(prompts):
        return [_Seq(request_id=f"p{i}", prompt=p, params=params, queue=None) for i, p in enumerate(prompts)]

    with torch.inference_mode():
        before = tiny_engine.prefill_tokens
        logits, cache, mask, _ = tiny_engine._prefill(seqs(PROMPTS))
        assert tiny_engine.prefill_tokens - before == sum(len(p) for p in PROMPTS)
        width = max(len(p) for p in PROMPTS)
        assert mask.shape == (len(PROMPTS), width)
        for i, prompt in enumerate(PROMPTS):
            alone_logits, alone_cache, _, _ = tiny_engine._prefill(seqs([prompt]))
            assert torch.allclose(logits[i], alone_logits[0], atol=1e-4)
            assert mask[i].tolist() == [0] * (width - len(prompt)) + [1] * len(prompt)
            for packed_layer, alone_layer in zip(cache.layers, alone_cache.layers):
                assert torch.allclose(packed_layer.keys[i, :, width - len(prompt) :], alone_layer.keys[0], atol=1e-5)
                assert torch.allclose(
                    packed_layer.values[i, :, width - len(prompt) :], alone_layer.values[0], atol=1e-5
                )
