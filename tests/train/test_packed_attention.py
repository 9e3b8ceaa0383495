"""Per-document attention over packed sequences: logits and gradients equal per-sequence ones,
across the Llama / Mistral / Qwen2 / Gemma families, with no scores across documents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openchat_cli.train import attention
from openchat_cli.train.collate import pack
from openchat_cli.train.dataset import TokenizedData
from openchat_cli.train.loss import PackedLM

VOCAB = 300


def tiny(family: str, **extra):
    """A randomly initialised two-layer model of one family, loaded with the packed attention."""
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    configs = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 7}),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {"head_dim": 16}),
        "gemma2": (
            transformers.Gemma2Config,
            transformers.Gemma2ForCausalLM,
            {"head_dim": 16, "sliding_window": 6, "attn_logit_softcapping": 5.0, "query_pre_attn_scalar": 16},
        ),
    }
    config_cls, model_cls, own = configs[family]
    torch.manual_seed(0)
    config = config_cls(**(common | own | extra))
    return model_cls(config).to(torch.float64)


def to_packed(model):
    """The same weights seen through the per-document attention function."""
    model.config._attn_implementation = attention.choose(torch.device("cpu"))
    return model


def data_of(lengths: list[int], seed: int = 0) -> TokenizedData:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(5, VOCAB, n) for n in lengths]
    weights = [np.where(rng.random(n) < 0.7, 1.0, 0.0) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedData(
        None, np.concatenate(seqs).astype(np.int64), np.concatenate(weights).astype(np.float32), offsets, {}
    )


def per_sequence(model, data: TokenizedData) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference: each sequence alone through stock sdpa (eager where logits are softcapped, which
    sdpa refuses); logits concatenated, and the gradients of the sum over sequences of sum(w * CE)
    (the same loss the packed batch computes)."""
    model.config._attn_implementation = "eager" if getattr(model.config, "attn_logit_softcapping", None) else "sdpa"
    model.zero_grad()
    logits, total = [], 0.0
    for i in range(len(data)):
        ids, w = data.row(i)
        out = model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0]
        logits.append(out.detach())
        ce = torch.nn.functional.cross_entropy(out[:-1], torch.from_numpy(ids[1:]), reduction="none")
        total = total + (ce * torch.from_numpy(w[1:]).to(ce.dtype)).sum()
    total.backward()
    return torch.cat(logits), [p.grad.clone() for p in model.parameters()]


def packed(model, data: TokenizedData) -> tuple[torch.Tensor, list[torch.Tensor]]:
    to_packed(model)
    batch = pack(data, np.arange(len(data)))
    lm = PackedLM(model, attention.PACKED)
    model.zero_grad()
    with torch.no_grad():
        logits = model(**attention.forward_kwargs(batch, attention.PACKED)).logits[0]
    lm(batch).backward()
    return logits, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gemma2"])
def test_packed_logits_and_gradients_equal_per_sequence(family):
    model = tiny(family)
    data = data_of([13, 1, 30, 8, 21])  # a one-token document, and documents past the window
    ref_logits, ref_grads = per_sequence(model, data)
    got_logits, got_grads = packed(model, data)
    assert torch.allclose(got_logits, ref_logits, atol=1e-5)
    assert len(got_grads) == len(ref_grads)
    for got, ref in zip(got_grads, ref_grads):
        assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())


def test_no_score_crosses_a_document():
    """Changing one document's tokens leaves every other document's logits untouched."""
    model = to_packed(tiny("llama"))
    data = data_of([10, 12, 9])
    batch = pack(data, np.arange(3))
    with torch.no_grad():
        before = model(**attention.forward_kwargs(batch, attention.PACKED)).logits[0]
        batch.input_ids[0, 10:22] = torch.randint(5, VOCAB, (12,))
        after = model(**attention.forward_kwargs(batch, attention.PACKED)).logits[0]
    assert torch.equal(before[:10], after[:10]) and torch.equal(before[22:], after[22:])
    assert not torch.allclose(before[10:22], after[10:22])


def test_boundaries_from_position_ids_alone():
    """Without cu_seq_lens (e.g. a plain `model(input_ids, position_ids)` call) the documents
    are found where the position ids restart."""
    model = to_packed(tiny("qwen2"))
    data = data_of([7, 15, 4], seed=3)
    batch = pack(data, np.arange(3))
    with torch.no_grad():
        with_bounds = model(**attention.forward_kwargs(batch, attention.PACKED)).logits
        from_positions = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    assert torch.equal(with_bounds, from_positions)


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_padding_and_generation_fall_back_to_masked_attention(family):
    """A padded batch and cached generation are not packed forwards: they must still match the
    stock implementation (sdpa; eager for softcapped logits)."""
    model = tiny(family)
    ids = torch.randint(5, VOCAB, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        model.config._attn_implementation = "eager" if family == "gemma2" else "sdpa"
        ref = model(input_ids=ids, attention_mask=mask).logits
        ref_gen = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
        to_packed(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        got_gen = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False)
    assert torch.allclose(got[0], ref[0], atol=1e-9)
    assert torch.allclose(got[1, :8], ref[1, :8], atol=1e-9)
    assert torch.equal(got_gen, ref_gen)


def test_training_model_loads_with_it_and_saves_without_it(tiny_model_dir, tmp_path):
    """from_pretrained accepts the registered name; a saved checkpoint does not depend on it
    (serve loads checkpoints in other processes, where it is not registered)."""
    from transformers import AutoModelForCausalLM

    impl = attention.choose(torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=impl)
    assert model.config._attn_implementation == attention.PACKED
    model.save_pretrained(tmp_path)
    assert attention.PACKED not in (tmp_path / "config.json").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"


def test_kernel_choice_follows_device_dtype_and_install(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert attention.uses_flash(cuda, torch.bfloat16) and attention.uses_flash(cuda, torch.float16)
    assert not attention.uses_flash(cuda, torch.float32)  # the kernel has no fp32
    assert not attention.uses_flash(cpu, torch.bfloat16)
    assert attention.describe(cuda, torch.bfloat16) == "flash-attention varlen"
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    assert not attention.uses_flash(cuda, torch.bfloat16)
    assert attention.describe(cpu, torch.float32) == "per-document sdpa"


def test_rows_of_packed_documents_in_one_batch():
    """A [2, T] batch whose rows each hold packed documents (boundaries from each row's position
    ids) equals every document run alone."""
    model = to_packed(tiny("llama"))
    data = data_of([5, 11, 9, 7], seed=5)  # row 0: documents 0+1, row 1: documents 2+3
    ids = torch.from_numpy(data.ids).view(2, 16)
    positions = torch.tensor([list(range(5)) + list(range(11)), list(range(9)) + list(range(7))])
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=positions, use_cache=False).logits.reshape(32, -1)
        model.config._attn_implementation = "sdpa"
        ref = torch.cat([model(input_ids=torch.from_numpy(data.row(i)[0])[None]).logits[0] for i in range(4)])
    assert torch.allclose(got, ref, atol=1e-9)
