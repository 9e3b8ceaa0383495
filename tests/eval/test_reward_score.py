"""`eval score` batches conversations (padded, grouped by length): each batched score must equal
the one-at-a-time score, read by the model's own pooling on an unpadded sequence."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(scope="module")
def reward_model():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(config).eval()


def test_batched_scores_equal_one_at_a_time(reward_model):
    from openchat_cli.eval.reward_score import score_sequences

    rng = random.Random(0)
    # varied lengths, and token 0 (the pad id) inside some sequences: pads are found by length, not by id
    # (each ends in a real token: the model's own pooling, the reference here, looks for the last non-pad id)
    sequences = [
        [rng.randrange(0, 300) for _ in range(rng.randint(0, 89))] + [rng.randrange(1, 300)] for _ in range(23)
    ]
    with torch.no_grad():
        alone = [float(reward_model(input_ids=torch.tensor([s])).logits[0, 0]) for s in sequences]
    for batch_size in (1, 4, 8, 32):
        batched = score_sequences(reward_model, sequences, batch_size)
        assert batched == pytest.approx(alone, abs=1e-5), batch_size
    assert len(set(round(a, 4) for a in alone)) > 20  # the scores differ, so a mix-up would show


def test_batch_size_must_be_positive(reward_model):
    from openchat_cli.eval.reward_score import score_sequences

    with pytest.raises(ValueError, match="batch_size"):
        score_sequences(reward_model, [[1, 2]], 0)


def test_batches_hold_similar_lengths_within_the_token_cap(reward_model, monkeypatch):
    from openchat_cli.eval import reward_score

    monkeypatch.setattr(reward_score, "BATCH_TOKENS", 100)
    lengths = [5, 90, 20, 60, 10, 200, 30, 40]
    sequences = [[1 + (k % 200)] * n for k, n in enumerate(lengths)]
    batches = reward_score._batches(sequences, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * longest <= 100)
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)  # shortest first
    with torch.no_grad():
        alone = [float(reward_model(input_ids=torch.tensor([s])).logits[0, 0]) for s in sequences]
    assert reward_score.score_sequences(reward_model, sequences, 3) == pytest.approx(alone, abs=1e-5)
