"""The ragged KV cache and attention (kv_cache.py's SequenceKV/RaggedCache, engine_attention.py):
the same logits as the padded batch through joins and leaves, packed prefill per prompt equal to
lone prefills, and the padded path still serving models the ragged one does not fit."""

from __future__ import annotations

import pytest
import torch

from openchat_cli.serve.engines.base import SamplingParams

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], [50]]
LATE = [[60, 61, 62, 63, 64], [70, 71, 72], list(range(80, 120))]


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    ragged = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=16)
    padded = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=16, kv_cache="padded")
    assert ragged.describe()["kv_cache"] == "ragged" and padded.describe()["kv_cache"] == "padded"
    return ragged, padded


def _seq(request_id: str, prompt: list[int], max_tokens: int):
    from openchat_cli.serve.engines.transformers_engine import _Seq

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return _Seq(request_id=request_id, prompt=list(prompt), params=params, queue=None, key=request_id)


def _drive(engine, monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Run one schedule of joins, leaves and a cancel through `_step`, greedy; every row's logits
    at every step, by request id."""
    seen: dict[str, list[torch.Tensor]] = {}
    original = engine._sample

    def recording(logits, seqs):
        for row, seq in zip(logits, seqs):
            seen.setdefault(seq.request_id, []).append(row.float().clone())
        return original(logits, seqs)

    monkeypatch.setattr(engine, "_sample", recording)
    monkeypatch.setattr(engine, "_deliver", lambda items: None)
    first = [_seq(f"a{i}", p, n) for i, p in enumerate(PROMPTS) for n in [(3, 9, 14, 6)[i]]]
    late = [_seq(f"b{i}", p, n) for i, p in enumerate(LATE) for n in [(5, 12, 4)[i]]]
    joins = {0: first, 2: late[:2], 6: late[2:]}
    with torch.inference_mode():
        for step in range(16):
            if step == 5:
                first[1].cancelled = True  # leaves mid-reply
            engine._step(joins.get(step, []))
    assert not engine._running
    return seen


def test_ragged_decode_equals_the_padded_batch_through_joins_and_leaves(engines, monkeypatch):
    ragged, padded = engines
    got, expected = _drive(ragged, monkeypatch), _drive(padded, monkeypatch)
    assert got.keys() == expected.keys() and len(got) == len(PROMPTS) + len(LATE)
    steps = 0
    for request_id, rows in expected.items():
        assert len(got[request_id]) == len(rows), request_id
        for step, (a, b) in enumerate(zip(got[request_id], rows)):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (request_id, step, float((a - b).abs().max()))
            steps += 1
    assert steps > 40


def test_sequences_join_and_leave_without_copying_the_others(engines, monkeypatch):
    """A row's buffers stay the same tensors while others join and leave (no merge or trim copy)."""
    ragged, _ = engines
    monkeypatch.setattr(ragged, "_deliver", lambda items: None)
    long = _seq("long", PROMPTS[2], 30)
    others = [_seq(f"o{i}", p, 3) for i, p in enumerate(PROMPTS[:2] + LATE[:2])]
    with torch.inference_mode():
        ragged._step([long])
        pointers = {long.kv.keys[0].data_ptr()}
        for seq in others:
            ragged._step([seq])
            ragged._step([])
            pointers.add(long.kv.keys[0].data_ptr())
        assert long.kv.length == len(PROMPTS[2]) + 1 + 2 * len(others)  # prefill + one decode per step
        assert all(s.kv is None for s in others)  # finished rows give their buffers up
        long.cancelled = True
        ragged._step([])
    assert len(pointers) <= 2  # at most one regrowth of its own, never a copy for the others' sake
    assert not ragged._running


def test_packed_prefill_per_prompt_equals_lone_prefills(engines):
    """One packed forward, attention per prompt: each prompt's next-token logits and its own KV
    buffers equal transformers' plain forward of that prompt alone (its own DynamicCache)."""
    ragged, _ = engines
    seqs = [_seq(f"p{i}", p, 4) for i, p in enumerate(PROMPTS + LATE)]
    with torch.inference_mode():
        before = ragged.prefill_tokens
        logits, cache, mask, _ = ragged._prefill(seqs)
        assert cache is None and mask is None
        assert ragged.prefill_tokens - before == sum(len(s.prompt) for s in seqs)  # no padding
        for i, seq in enumerate(seqs):
            alone = ragged.model(input_ids=torch.tensor([seq.prompt]), use_cache=True)
            assert torch.allclose(logits[i], alone.logits[0, -1], atol=1e-5, rtol=0)
            assert seq.kv.length == len(seq.prompt)
            for layer, reference in enumerate(alone.cache.layers):
                keys, values = seq.kv.view(layer)
                assert torch.allclose(keys, reference.keys[0], atol=1e-5, rtol=0)
                assert torch.allclose(values, reference.values[0], atol=1e-5, rtol=0)


def test_decode_attention_matches_repeat_kv_attention():
    """The one decode-attention entry point against transformers' own GQA layout (repeat_kv) and
    a plain softmax, on views of buffers with room (head stride larger than length x dim)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    from openchat_cli.serve.engines.ragged_attention import decode_attention

    torch.manual_seed(0)
    heads, kv_heads, dim = 8, 4, 16
    lengths = [1, 7, 33, 2]
    buffers = [(torch.randn(kv_heads, n + 5, dim), torch.randn(kv_heads, n + 5, dim)) for n in lengths]
    keys = [k[:, :n] for (k, _), n in zip(buffers, lengths)]
    values = [v[:, :n] for (_, v), n in zip(buffers, lengths)]
    query = torch.randn(len(lengths), heads, dim)
    out = decode_attention(query, keys, values, 0.25)
    for i in range(len(lengths)):
        k = repeat_kv(keys[i][None], heads // kv_heads)[0]
        v = repeat_kv(values[i][None], heads // kv_heads)[0]
        weights = torch.softmax((query[i][:, None] @ k.transpose(1, 2)) * 0.25, dim=-1)
        assert torch.allclose(out[i], (weights @ v)[:, 0], atol=1e-5)


def _generate_all(engine, prompts, params) -> list[list[int]]:
    import asyncio

    async def together():
        await engine.start()
        try:

            async def one(p, rid):
                return [t async for e in engine.generate(p, params, rid) for t in e.token_ids]

            return await asyncio.gather(*(one(p, f"e{i}") for i, p in enumerate(prompts)))
        finally:
            await engine.shutdown()

    return asyncio.run(together())


def _tiny_llama(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    expected = []
    for p in PROMPTS:
        out = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=3)
        expected.append(out[0, len(p) :].tolist())
    return params, expected


def test_eager_model_keeps_the_padded_batch(tmp_path, tiny_tokenizer, monkeypatch):
    """A model on eager attention is not switched: the padded batch serves it, greedy batched
    replies equal transformers' generate."""
    import transformers

    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    params, expected = _tiny_llama(tmp_path, tiny_tokenizer)
    load = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: load(*a, attn_implementation="eager", **k)
    )
    engine = TransformersEngine(tmp_path, tokenizer=tiny_tokenizer, max_batch_size=8)
    assert engine.model.config._attn_implementation == "eager"
    assert engine.describe()["kv_cache"] == "padded"
    assert _generate_all(engine, PROMPTS, params) == expected


def test_a_model_the_ragged_path_misfits_falls_back_to_the_padded_batch(tmp_path, tiny_tokenizer, monkeypatch):
    """The warm-up check compares ragged logits with plain forwards: a wrong ragged attention is
    caught there, and the model is served (correctly) by the padded batch on stock sdpa."""
    from openchat_cli.serve.engines import engine_attention
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    params, expected = _tiny_llama(tmp_path, tiny_tokenizer)
    monkeypatch.setattr(engine_attention, "decode_attention", lambda query, keys, values, scale: query * 0)
    engine = TransformersEngine(tmp_path, tokenizer=tiny_tokenizer, max_batch_size=8)
    assert engine.describe()["kv_cache"] == "padded"
    assert engine.model.config._attn_implementation == "sdpa"
    assert _generate_all(engine, PROMPTS, params) == expected
