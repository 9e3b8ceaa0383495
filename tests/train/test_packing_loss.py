"""Padding-free packing keeps sequences apart; the weighted loss is exactly sum(w*CE)/sum(w)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openchat_cli.train.collate import pack
from openchat_cli.train.dataset import TokenizedData, load
from openchat_cli.train.loss import PackedLM


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    return m.eval()


def make_data(seqs: list[list[int]], weights: list[list[float]]) -> TokenizedData:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return TokenizedData(
        None, np.concatenate(seqs).astype(np.int64), np.concatenate(weights).astype(np.float32), offsets, {}
    )


def random_data(n: int = 5, seed: int = 0) -> TokenizedData:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(5, 400, rng.integers(3, 40)).tolist() for _ in range(n)]
    weights = [np.where(rng.random(len(s)) < 0.6, rng.choice([1.0, 0.1], len(s)), 0.0).tolist() for s in seqs]
    return make_data(seqs, weights)


def test_packed_logits_equal_per_sequence_logits(model):
    data = random_data()
    batch = pack(data, np.arange(len(data)))
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        alone = torch.cat(
            [
                model(input_ids=torch.from_numpy(data.row(i)[0])[None], use_cache=False).logits[0]
                for i in range(len(data))
            ]
        )
        # The pitfall this guards against: with a KV cache (the default), sdpa gets a plain causal
        # mask and packed sequences silently attend to each other.
        leaky = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_collate_positions_and_shifted_targets():
    data = make_data([[1, 10, 11, 12], [1, 20, 21]], [[0, 0, 1, 0.5], [0.7, 0, 2]])
    batch = pack(data, np.array([0, 1]))
    assert batch.input_ids.tolist() == [[1, 10, 11, 12, 1, 20, 21]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch.cu_seqlens.tolist() == [0, 4, 7] and batch.max_seqlen == 4
    # logits at j predict token j+1; a sequence's first token is predicted by nothing (its
    # weight 0.7 is ignored) and the last token of sequence 0 does not predict sequence 1.
    assert batch.target_pos.tolist() == [1, 2, 5]
    assert batch.labels.tolist() == [11, 12, 21]
    assert batch.label_weights.tolist() == pytest.approx([1.0, 0.5, 2.0])
    assert batch.num_tokens == 7 and batch.num_sequences == 2


def reference_loss(model, data: TokenizedData, rows) -> tuple[float, float]:
    """sum(w * CE) and sum(w), one unpacked sequence at a time with full logits."""
    num = den = 0.0
    for i in rows:
        ids, w = data.row(int(i))
        logits = model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0, :-1]
        ce = F.cross_entropy(logits, torch.from_numpy(ids[1:]), reduction="none")
        num += float((ce * torch.from_numpy(w[1:])).sum())
        den += float(w[1:].sum())
    return num, den


def test_weighted_loss_over_micro_batches_matches_reference(model):
    data = random_data(8, seed=1)
    micro = [np.array([0, 3, 5]), np.array([1, 2]), np.array([4, 6, 7])]
    with torch.no_grad():
        num = sum(float(PackedLM(model, "sdpa")(pack(data, rows))) for rows in micro)
        ref_num, ref_den = reference_loss(model, data, range(8))
    den = sum(pack(data, rows).weight_sum for rows in micro)
    assert den == pytest.approx(ref_den)
    assert num / den == pytest.approx(ref_num / ref_den, rel=1e-5)


def test_chunked_supervised_head_matches_full_logits_with_gradients(model):
    data = random_data(6, seed=2)
    batch = pack(data, np.arange(6))
    assert len(batch.target_pos) > 40
    chunked = PackedLM(model, "sdpa", chunk_elements=16 * model.config.vocab_size)  # 16 rows per chunk
    assert chunked.plain_head and chunked.chunk == 16
    unchunked = PackedLM(model, "sdpa")  # via the model's own forward with logits_to_keep
    unchunked.plain_head = False
    full = PackedLM(model, "sdpa", supervised_only=False)
    results = []
    for lm in (chunked, unchunked, full):
        model.zero_grad()
        loss = lm(batch)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (a, ga) = results[0]
    for b, gb in results[1:]:
        assert a == pytest.approx(b, rel=1e-6)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(ga, gb))
    model.zero_grad()


def test_dummy_batch_scores_nothing_but_backpropagates(model):
    batch = pack(random_data(), np.zeros(0, dtype=np.int64), pad_id=0)
    assert batch.num_tokens == 0 and batch.weight_sum == 0
    loss = PackedLM(model, "sdpa")(batch)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.zero_grad()


def test_load_reads_the_parquet_contract(tiny_tokenizer, color_data):
    from openchat_cli.templates import get_template
    from tests.train.helpers import color_task

    data = load(color_data["train"], vocab_size=len(tiny_tokenizer))
    first = get_template("openchat_3.5").encode(tiny_tokenizer, color_task(600, seed=1)[0])
    ids, weights = data.row(0)
    assert ids.tolist() == first.input_ids and weights.tolist() == pytest.approx(first.weights)
    assert len(data) == 600 and 0 < data.supervised_ratio() < 1
