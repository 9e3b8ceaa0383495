"""Linear layers on prepacked oneDNN weights (engines/packed_linear.py): the same outputs as
F.linear (fp32 within 1e-5 relative: accumulation order only; bf16 within one bf16 step, 2^-8
relative, since both round their fp32 sums to 8 mantissa bits), tied embeddings untouched, LoRA
hooks still running, a clean fallback, the env switch, and the engine's greedy replies unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from openchat_cli.serve.engines import packed_linear
from openchat_cli.serve.engines.base import SamplingParams
from openchat_cli.serve.engines.packed_linear import PackedLinear, pack_linears, repack, unpack_linears

needs_onednn = pytest.mark.skipif(not packed_linear._op_available(), reason="torch built without oneDNN")
RELATIVE = {torch.float32: 1e-5, torch.bfloat16: 2**-7}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> bool:
    scale = 1 + float(want.float().abs().max())
    return float((got.float() - want.float()).abs().max()) <= RELATIVE[dtype] * scale


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear(dtype, bias):
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(48, 96, bias=bias), nn.Linear(96, 40, bias=bias)).to(dtype)
    reference = [(m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()) for m in layers]
    report = pack_linears(layers, enabled=True)
    assert report.path == "onednn-prepacked" and report.packed == 2 and report.kept == 0
    assert report.extra_bytes == sum(m.weight.numel() * m.weight.element_size() for m in layers)
    assert all(type(m) is PackedLinear and isinstance(m, nn.Linear) for m in layers)
    with torch.inference_mode():
        for shape in [(1, 1, 48), (1, 5, 48), (3, 7, 48), (33, 48), (1, 200, 48)]:  # decode rows, prefill
            x = torch.randn(*shape).to(dtype)
            want = F.linear(F.linear(x, *reference[0]), *reference[1])
            got = layers(x)
            assert got.dtype == dtype and got.shape == want.shape
            assert _close(got, want, dtype), (shape, float((got.float() - want.float()).abs().max()))
        strided = torch.randn(4, 60).to(dtype)[:, :48]  # not contiguous
        assert _close(layers[0](strided), F.linear(strided, *reference[0]), dtype)
    assert set(layers.state_dict()) == {k for k in nn.Sequential(*layers).state_dict()}  # no new entries


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_lm_head_keeps_the_embedding_reading_the_original_weight(tiny_model_dir, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype).eval()
    config = LlamaConfig(**{**base.config.to_dict(), "tie_word_embeddings": True})
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).to(dtype).eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    report = pack_linears(model, enabled=True)
    assert type(model.lm_head) is PackedLinear and report.packed == 1 + 7 * config.num_hidden_layers
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still one Parameter
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    assert _close(got, want, dtype), float((got.float() - want.float()).abs().max())
    with torch.no_grad():  # the embedding reads the original weight: a change shows in both...
        model.get_input_embeddings().weight[5] += 1.0
    repack(model)  # ...and the head's packed copy follows after repack (what load_weights does)
    with torch.inference_mode():
        moved = model(input_ids=ids).logits
        unpack_linears(model)
        plain = model(input_ids=ids).logits
    assert type(model.lm_head) is nn.Linear
    assert not torch.equal(moved, got) and _close(moved, plain, dtype)


@needs_onednn
def test_forward_hooks_such_as_lora_rows_still_run_on_packed_layers():
    layer = nn.Linear(16, 8)
    layer.register_forward_hook(lambda _m, _inputs, output: output + 100.0)
    pack_linears(layer, enabled=True)
    assert type(layer) is PackedLinear
    with torch.inference_mode():
        x = torch.randn(3, 16)
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias) + 100.0, atol=1e-4)


def test_falls_back_to_f_linear_when_the_op_is_missing_or_a_check_fails(monkeypatch):
    layers = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    monkeypatch.setattr(packed_linear, "_op_available", lambda: False)
    report = pack_linears(layers, enabled=True)
    assert report.path == "F.linear" and "oneDNN" in report.reason
    assert all(type(m) is nn.Linear for m in layers)
    monkeypatch.undo()
    if not packed_linear._op_available():
        pytest.skip("torch built without oneDNN")
    calls = []

    def second_fails(module, packed):
        calls.append(module)
        return (len(calls) != 2, 0.5)

    monkeypatch.setattr(packed_linear, "_matches", second_fails)
    report = pack_linears(layers, enabled=True)
    assert report.path == "onednn-prepacked" and report.packed == 1 and report.kept == 1
    assert type(layers[0]) is PackedLinear and type(layers[1]) is nn.Linear
    monkeypatch.setattr(packed_linear, "_matches", lambda module, packed: (False, 0.5))
    unpack_linears(layers)
    report = pack_linears(layers, enabled=True)
    assert report.path == "F.linear" and report.kept == 2 and report.reason
    assert all(type(m) is nn.Linear for m in layers)


def test_env_switch_turns_it_off(monkeypatch):
    layers = nn.Sequential(nn.Linear(16, 8))
    for value in ("0", "off", "false"):
        monkeypatch.setenv(packed_linear.ENV_SWITCH, value)
        report = pack_linears(layers)
        assert report.path == "F.linear" and packed_linear.ENV_SWITCH in report.reason
        assert type(layers[0]) is nn.Linear


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    packed = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=8, packed_linear=True)
    plain = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=8, packed_linear=False)
    return packed, plain


def test_engine_env_switch_and_describe(tiny_model_dir, monkeypatch):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    monkeypatch.setenv(packed_linear.ENV_SWITCH, "0")
    engine = TransformersEngine(tiny_model_dir, tokenizer=load_tokenizer(tiny_model_dir), max_batch_size=2)
    assert engine.describe()["linear"]["path"] == "F.linear"
    assert not any(isinstance(m, PackedLinear) for m in engine.model.modules())


def _greedy(engine, monkeypatch, prompts: list[list[int]], max_tokens: int) -> tuple[dict, dict]:
    """Greedy replies of all prompts decoded together, and every step's logits, by request id."""
    from openchat_cli.serve.engines.transformers_engine import _Seq

    logits_seen: dict[str, list[torch.Tensor]] = {}
    original = engine._sample

    def recording(logits, seqs):
        for row, seq in zip(logits, seqs):
            logits_seen.setdefault(seq.request_id, []).append(row.float().clone())
        return original(logits, seqs)

    monkeypatch.setattr(engine, "_sample", recording)
    monkeypatch.setattr(engine, "_deliver", lambda items: None)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seqs = [_Seq(request_id=f"r{i}", prompt=p, params=params, queue=None, key=i) for i, p in enumerate(prompts)]
    with torch.inference_mode():
        engine._step(seqs[:3])
        engine._step(seqs[3:])  # joins mid-way: some steps have 3 rows, some 4, the last ones 1
        while engine._running:
            engine._step([])
    return {s.request_id: s.generated for s in seqs}, logits_seen


@needs_onednn
def test_engine_greedy_replies_equal_with_packing_on_and_off(engines, monkeypatch):
    """Same tokens; logits within 1e-4 (fp32: only the GEMMs' accumulation order differs)."""
    packed, plain = engines
    assert packed.describe()["linear"]["path"] == "onednn-prepacked"
    assert packed.describe()["linear"]["packed_layers"] > 0 and packed.describe()["linear"]["extra_bytes"] > 0
    assert plain.describe()["linear"]["path"] == "F.linear"
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], list(range(30, 70)), [50, 51, 52]]
    got, got_logits = _greedy(packed, monkeypatch, prompts, 12)
    want, want_logits = _greedy(plain, monkeypatch, prompts, 12)
    assert got == want and all(len(v) == 12 for v in got.values())
    for request_id, rows in want_logits.items():
        for a, b in zip(got_logits[request_id], rows):
            assert torch.allclose(a, b, atol=1e-4, rtol=0), (request_id, float((a - b).abs().max()))


@needs_onednn
def test_engine_load_weights_repacks(engines):
    packed, _ = engines
    # o_proj: q/k/v and gate/up are fused and packed by the fast forward instead (test_fast_llama.py)
    name = "model.layers.0.self_attn.o_proj"
    layer = packed.model.get_submodule(name)
    assert type(layer) is PackedLinear
    x = torch.randn(3, layer.in_features)
    old, new = layer.weight.detach().clone(), torch.randn_like(layer.weight)
    packed.load_weights({name + ".weight": new})
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.linear(x, new), atol=1e-4)
    packed.load_weights({name + ".weight": old})


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_row_inputs_take_gemv_only_for_small_fp32_weights_and_prefill_takes_f_linear(dtype, monkeypatch):
    """A lone decode row: small fp32 weights run MKL's GEMV (F.linear), large ones and bf16 the
    packed call; both paths give F.linear's result."""
    small, large = nn.Linear(64, 64).to(dtype), nn.Linear(512, packed_linear.GEMV_MAX_WEIGHT // 512).to(dtype)
    pack_linears(small, enabled=True)
    pack_linears(large, enabled=True)
    assert type(small) is PackedLinear and type(large) is PackedLinear
    plain_linear = F.linear
    used = []
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: used.append(a[1].shape) or plain_linear(*a))
    with torch.inference_mode():
        for layer in (small, large):
            x = torch.randn(1, 1, layer.in_features).to(dtype)
            got = layer(x)
            assert _close(got, plain_linear(x, layer.weight, layer.bias), dtype)
            layer(torch.randn(2, layer.in_features).to(dtype))  # two rows: always packed
    assert used == ([small.weight.shape] if dtype == torch.float32 else [])
    with torch.inference_mode():  # prefill-sized inputs: F.linear (new shapes cost oneDNN a primitive each)
        x = torch.randn(packed_linear.PACKED_MAX_ROWS + 1, small.in_features).to(dtype)
        assert _close(small(x), plain_linear(x, small.weight, small.bias), dtype)
    assert used[-1] == small.weight.shape
