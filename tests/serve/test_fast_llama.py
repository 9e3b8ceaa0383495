"""The serving-only fast forward for Llama-shaped models (engines/fast_llama.py): its logits equal the
transformers ragged forward's through a packed prefill of ragged prompts and several decode steps
(fp32 tight, bf16 within bf16 rounding), for Llama, Qwen2 (q/k/v bias) and Mistral; the engine's
greedy and seeded replies are the same with it on and off; models it does not cover, the env switch
and routed LoRA rows fall back to the transformers forward."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import torch

from openchat_cli.serve.engines import fast_llama
from openchat_cli.serve.engines.base import SamplingParams
from openchat_cli.serve.engines.kv_cache import RaggedCache, SequenceKV
from openchat_cli.serve.engines.prefill import pack

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21], list(range(30, 70)), [50]]
# Max |fast - transformers| allowed, times (1 + max |logit|): fp32 differs by accumulation order
# only; bf16 rounds every op's output to 8 mantissa bits, and fused ops round at other places.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _engine(model_dir: Path, **kwargs):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model_dir, tokenizer=load_tokenizer(model_dir), max_batch_size=16, **kwargs)


def _variant(tiny_model_dir: Path, out: Path, model_type: str, **config) -> Path:
    """The tiny model's tokenizer with a random model of another Llama-shaped architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    base = LlamaConfig.from_pretrained(str(tiny_model_dir)).to_dict()
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    keep += ("intermediate_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    settings = {k: base[k] for k in keep} | {"tie_word_embeddings": True} | config
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings), attn_implementation="sdpa")
    shutil.copytree(tiny_model_dir, out)
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(out)
    return out


def _logits_per_step(forward, layers: int, steps: int, keep_all: bool) -> list[torch.Tensor]:
    """A packed prefill of PROMPTS, then `steps` decode steps feeding fixed tokens; each forward's logits."""
    grown = []
    rows = [SequenceKV(layers, len(p) + 2) for p in PROMPTS]  # little room: buffers grow mid-way
    batch = pack(PROMPTS, "cpu", None, torch.float32)
    out = []
    with torch.inference_mode():
        cache = RaggedCache(rows, batch.segments)
        out.append(forward(cache, batch.input_ids, batch.position_ids, 0 if keep_all else batch.last_positions))
        cache.finish()
        for step in range(steps):
            ids = torch.tensor([[(13 * i + step) % 300 + 4] for i in range(len(PROMPTS))])
            positions = torch.tensor([[len(p) + step] for p in PROMPTS])
            cache = RaggedCache(rows)
            out.append(forward(cache, ids, positions, 1))
            cache.finish()
            grown.append(rows[0].keys[0].shape[1] > len(PROMPTS[0]) + 2)
    assert any(grown) or steps < 3  # the decode steps did write past the first buffers
    return [x.float() for x in out]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], dtype: torch.dtype) -> None:
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, (step, a.shape, b.shape)
        diff = float((a - b).abs().max())
        assert diff <= TOLERANCE[dtype] * (1 + float(b.abs().max())), (step, diff)


@pytest.fixture(scope="module")
def variants(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-variants")
    return {
        "llama": tiny_model_dir,
        "qwen2": _variant(tiny_model_dir, root / "qwen2", "qwen2", use_sliding_window=False),
        "mistral": _variant(tiny_model_dir, root / "mistral", "mistral", sliding_window=None, head_dim=16),
    }


@pytest.mark.parametrize(
    "arch,dtype,packed",
    [
        ("llama", torch.float32, True),
        ("llama", torch.float32, False),  # OPENCHAT_PACKED_LINEAR=0: the fused weights on F.linear
        ("llama", torch.bfloat16, True),
        ("qwen2", torch.float32, True),
        ("mistral", torch.float32, True),
    ],
)
def test_fast_logits_equal_the_transformers_forward(variants, arch, dtype, packed):
    engine = _engine(variants[arch], dtype=str(dtype).removeprefix("torch."), packed_linear=packed)
    assert (engine._fast.layers[0].qkv.packed is not None) == (packed and bool(engine.packing.packed))
    fast = engine._fast
    assert fast is not None and engine.describe()["fast_forward"] is True
    layers = len(fast.layers)
    if arch == "qwen2":
        assert fast.layers[0].qkv.bias is not None  # q/k/v biases fused too
    for keep_all in (False, True):  # last positions only, and every position (prompt logprobs)
        want = _logits_per_step(engine._transformers_forward, layers, 6, keep_all)
        got = _logits_per_step(fast.forward, layers, 6, keep_all)
        assert got[0].shape[0] == (sum(map(len, PROMPTS)) if keep_all else len(PROMPTS))
        _assert_close(got, want, dtype)


def test_fast_decode_without_the_attention_kernel_writes_through_the_ragged_cache(tiny_model_dir, monkeypatch):
    """OPENCHAT_ATTENTION_KERNEL=0: the fast forward's decode falls back to `RaggedCache.update` and
    torch attention, with the same logits."""
    from openchat_cli.serve.engines import ragged_attention

    engine = _engine(tiny_model_dir)
    monkeypatch.setenv(ragged_attention.ENV_SWITCH, "0")
    assert ragged_attention.fast_decode_kernel(torch.float32) is None
    layers = len(engine._fast.layers)
    _assert_close(
        _logits_per_step(engine._fast.forward, layers, 4, False),
        _logits_per_step(engine._transformers_forward, layers, 4, False),
        torch.float32,
    )


def test_fused_weights_are_views_and_load_weights_reaches_them(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    attn = engine.model.model.layers[0].self_attn
    fused = engine._fast.layers[0].qkv.weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()  # a view: no second copy
    assert attn.k_proj.weight.data_ptr() == fused.data_ptr() + attn.q_proj.weight.numel() * fused.element_size()
    layers = len(engine._fast.layers)
    new = {name: value * 0.5 for name, value in engine.model.state_dict().items() if "k_proj" in name}
    engine.load_weights(new)
    assert torch.equal(fused[attn.q_proj.weight.shape[0] :][: attn.k_proj.weight.shape[0]], attn.k_proj.weight)
    _assert_close(
        _logits_per_step(engine._fast.forward, layers, 2, False),
        _logits_per_step(engine._transformers_forward, layers, 2, False),
        torch.float32,
    )


async def _replies(engine, prompts, params_list) -> list[list[int]]:
    await engine.start()

    async def one(i, prompt, params):
        tokens = []
        async for event in engine.generate(prompt, params, f"r{i}"):
            tokens += event.token_ids
        return tokens

    try:
        return await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(zip(prompts, params_list))))
    finally:
        await engine.shutdown()


def test_engine_replies_are_the_same_with_the_fast_forward_on_and_off(tiny_model_dir):
    on, off = _engine(tiny_model_dir), _engine(tiny_model_dir, fast_forward=False)
    assert on._fast is not None and off._fast is None and off.describe()["kv_cache"] == "ragged"
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    params = [greedy, seeded, greedy, greedy]
    got = asyncio.run(_replies(on, PROMPTS, params))
    want = asyncio.run(_replies(off, PROMPTS, params))
    assert got == want and all(len(t) == 12 for t in got)


def test_models_it_does_not_cover_fall_back(tiny_model_dir, tmp_path, monkeypatch, caplog):
    dynamic = _variant(
        tiny_model_dir, tmp_path / "dynamic", "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}
    )
    with caplog.at_level("INFO", logger="openchat.serve.engine"):
        engine = _engine(dynamic)
    assert engine._fast is None and engine.describe()["kv_cache"] == "ragged"
    assert "rope type dynamic" in caplog.text
    assert _engine(tiny_model_dir, kv_cache="padded")._fast is None  # no ragged cache: nothing to fit
    monkeypatch.setenv(fast_llama.ENV_SWITCH, "0")
    assert _engine(tiny_model_dir)._fast is None


def test_routed_lora_rows_take_the_transformers_forward(tiny_model_dir, monkeypatch):
    engine = _engine(tiny_model_dir)
    calls = []
    monkeypatch.setattr(engine, "_transformers_forward", lambda *a: calls.append(1) or torch.zeros(len(PROMPTS), 1, 8))
    routed = type("Router", (), {"routed": True})()
    cache = RaggedCache([SequenceKV(2, 8) for _ in PROMPTS])
    monkeypatch.setattr(engine, "lora", routed)
    engine._ragged_forward(
        cache, torch.zeros(len(PROMPTS), 1, dtype=torch.long), torch.zeros(len(PROMPTS), 1, dtype=torch.long), 1
    )
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 64, 24])
def test_rope_append_decode_kernel_equals_torch(dtype, head_dim):
    """The fused decode call (rotary, cache write, attention) against the same steps in torch:
    rotate_half rotary, the column written into each row's buffer, sdpa over the row's cache."""
    from openchat_cli.serve.engines import ragged_attention

    kernel = ragged_attention.fast_decode_kernel(dtype)
    if kernel is None:
        pytest.skip(f"no attention kernel here ({ragged_attention.kernel_status()})")
    gen = torch.Generator().manual_seed(head_dim)
    hq, hkv, D, lengths = 6, 2, head_dim, [5, 1, 17]
    B = len(lengths)
    qkv = torch.randn(B, (hq + 2 * hkv) * D, generator=gen).to(dtype)  # a fused projection's rows
    qk, v = qkv[:, : (hq + hkv) * D].view(B, hq + hkv, D), qkv[:, (hq + hkv) * D :].view(B, hkv, D)
    angles = torch.arange(40, dtype=torch.float32)[:, None] * torch.rand(D // 2, generator=gen)[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rope = torch.stack([cos, torch.cat([-sin[:, : D // 2], sin[:, D // 2 :]], -1)], 1).to(dtype).contiguous()
    positions = torch.tensor([n - 1 + 3 for n in lengths])  # any positions: rotary does not read the cache
    buffers = [
        (torch.randn(hkv, n + 4, D, generator=gen).to(dtype), torch.randn(hkv, n + 4, D, generator=gen).to(dtype))
        for n in lengths
    ]
    before = [(k.clone(), vv.clone()) for k, vv in buffers]
    table = __import__("array").array(
        "q",
        [k.data_ptr() for k, _ in buffers]
        + [vv.data_ptr() for _, vv in buffers]
        + lengths
        + [k.stride(0) for k, _ in buffers]
        + [vv.stride(0) for _, vv in buffers],
    )
    got = ragged_attention.rope_append_decode_attention(kernel, qk, v, rope, positions, table, D**-0.5)

    def rotate(x, p):  # transformers' rotate_half form, in fp32
        c, s = cos[p].float(), sin[p].float()
        x = x.float()
        return x * c + torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1) * s

    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for b, n in enumerate(lengths):
        q, k = rotate(qk[b, :hq], positions[b]), rotate(qk[b, hq:], positions[b])
        keys, values = before[b][0].float(), before[b][1].float()
        keys[:, n - 1], values[:, n - 1] = k, v[b].float()
        assert torch.allclose(buffers[b][0][:, n - 1].float(), k, atol=tolerance * 4)  # the new column, rotated
        assert torch.equal(buffers[b][1][:, n - 1], v[b])
        assert torch.equal(buffers[b][0][:, : n - 1], before[b][0][:, : n - 1])  # nothing else written
        assert torch.equal(buffers[b][0][:, n:], before[b][0][:, n:])
        want = torch.nn.functional.scaled_dot_product_attention(
            q[:, None], keys[:, :n], values[:, :n], scale=D**-0.5, enable_gqa=True
        )[:, 0]
        assert torch.allclose(got[b].float(), want, atol=tolerance * 4, rtol=tolerance), float(
            (got[b].float() - want).abs().max()
        )


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def _pageout_supported() -> bool:
    import ctypes
    import mmap

    scratch = mmap.mmap(-1, mmap.PAGESIZE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(scratch))
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    ok = madvise(address, mmap.PAGESIZE, 21) == 0  # MADV_PAGEOUT (Linux 5.4+)
    del address
    return ok


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_fusing_weights_loaded_from_safetensors_does_not_grow_the_process(tiny_model_dir, tmp_path):
    """The loaded weights are slices of the safetensors file's mapping, which stays mapped while any
    weight uses it: the fused copies must not leave the replaced q/k/v and gate/up pages resident
    too (before: RSS grew by their bytes, ~70% of the model)."""
    if not _pageout_supported():
        pytest.skip("madvise(MADV_PAGEOUT) not supported by this kernel")
    model_dir = _variant(tiny_model_dir, tmp_path / "wide", "llama", hidden_size=256, intermediate_size=768)
    weights = next(model_dir.glob("*.safetensors")).resolve()
    with open(weights, "rb") as fh:  # just written: dirty page-cache pages cannot be reclaimed until written
        os.fsync(fh.fileno())
    engine = _engine(model_dir, fast_forward=False)
    fused = sum(
        m.weight.numel() * m.weight.element_size()
        for layer in engine.model.model.layers
        for m in (
            *(getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj")),
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
        )
    )
    before = _mapped_kib(weights)
    assert before * 1024 >= fused  # the loaded weights are resident pages of the file's mapping
    engine._fast = fast_llama.attach(engine)
    assert engine._fast is not None
    assert (before - _mapped_kib(weights)) * 1024 >= 0.8 * fused
    want = _logits_per_step(engine._transformers_forward, 2, 3, False)  # the fused views still hold the weights
    _assert_close(_logits_per_step(engine._fast.forward, 2, 3, False), want, torch.float32)


def test_a_forward_keeps_its_rotary_table_when_another_forward_swaps_it(tiny_model_dir, monkeypatch):
    """The prefill thread (OPENCHAT_PREFILL_THREAD) runs forwards beside the decode steps: one may grow
    the shared cos/sin table for its positions between another's growth and its layers. A forward must
    keep reading the table it grew for its own positions (before: the kernel rejected the positions
    past the swapped-in table, and every sequence in the batch errored)."""
    from openchat_cli.serve.engines import ragged_attention

    if ragged_attention.fast_decode_kernel(torch.float32) is None:
        pytest.skip(f"no attention kernel here ({ragged_attention.kernel_status()})")
    engine = _engine(tiny_model_dir)
    fast, layers = engine._fast, len(engine._fast.layers)
    want = _logits_per_step(engine._transformers_forward, layers, 3, False)

    class SwapsTheTable:
        """Layer 0's q/k/v projection, and meanwhile another forward's (smaller) table lands."""

        def __init__(self, qkv):
            self.qkv = qkv

        def __call__(self, x):
            fast._cos_sin = fast._rope_table(4)
            return self.qkv(x)

    monkeypatch.setattr(fast.layers[0], "qkv", SwapsTheTable(fast.layers[0].qkv))
    fast._cos_sin = fast._rope_table(4)
    _assert_close(_logits_per_step(fast.forward, layers, 3, False), want, torch.float32)
