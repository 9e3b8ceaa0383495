"""DPO and reward-model losses equal TRL's own computations (DPOTrainer / RewardTrainer, TRL as a
test-only reference) on the same tiny model and batch; packed DPO equals unpacked DPO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from openchat_cli.templates import Message
from openchat_cli.train import attention
from openchat_cli.train.pairs import load_pairs
from openchat_cli.train.preference import PreferenceLM, pack_pairs
from tests.train.pairs_helpers import color_pairs, write_pairs

TOL = 1e-5


def _pairs() -> list:
    """Pairs of different lengths, one with a two-turn prompt."""
    pairs = color_pairs(4, seed=11)
    pairs.append(
        (
            [Message("user", "Hello!"), Message("assistant", "Hi."), Message("user", "What color is the sea?")],
            "The sea is blue, as the sky is.",
            "Green.",
        )
    )
    return pairs


@pytest.fixture()
def pair_data(tmp_path: Path, tiny_tokenizer):
    return load_pairs(write_pairs(tmp_path / "pairs.parquet", tiny_tokenizer, _pairs()))


def _policy_and_reference(model_dir: Path, cls=None, **kwargs):
    """The starting model (reference) and a policy that moved away from it (seeded noise), fp64."""
    from transformers import AutoModelForCausalLM

    cls = cls or AutoModelForCausalLM
    impl = attention.choose(torch.device("cpu"))
    torch.manual_seed(0)
    ref = cls.from_pretrained(str(model_dir), attn_implementation=impl, **kwargs).double()
    torch.manual_seed(0)
    policy = cls.from_pretrained(str(model_dir), attn_implementation=impl, **kwargs).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return policy, ref, impl


def _trl_examples(data) -> list[dict]:
    """TRL's pre-tokenized form: shared prompt ids, then each completion (weights are 1 exactly
    on the completion, so TRL's completion mask is our weight mask)."""
    out = []
    for i in range(len(data) // 2):
        (c_ids, c_w), (r_ids, r_w) = data.row(2 * i), data.row(2 * i + 1)
        start = int(np.flatnonzero(c_w)[0])
        assert start == int(np.flatnonzero(r_w)[0]) and (c_w[start:] == 1).all() and (r_w[start:] == 1).all()
        assert (c_ids[:start] == r_ids[:start]).all()
        out.append(
            {
                "prompt_ids": c_ids[:start].tolist(),
                "chosen_ids": c_ids[start:].tolist(),
                "rejected_ids": r_ids[start:].tolist(),
            }
        )
    return out


def _text_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": "What color is the fox?", "chosen": "Red.", "rejected": "Blue."}])


def _ours_dpo(policy, ref, impl, data, **loss):
    pairs = np.arange(len(data) // 2)
    with torch.no_grad():
        refs = PreferenceLM(ref, impl, "dpo")(pack_pairs(data, pairs, output="logps")).view(-1, 2).numpy()
    module = PreferenceLM(policy, impl, "dpo", **loss)
    total = module(pack_pairs(data, pairs, ref_logps=refs))
    n = len(pairs)
    return float(total.detach()) / n, {k: v / n for k, v in module.reset_totals().items()}


@pytest.mark.parametrize(
    "loss",
    [
        dict(beta=0.1),
        dict(beta=0.5, loss_type="ipo"),
        dict(beta=0.2, label_smoothing=0.2),
        dict(beta=0.1, rpo_alpha=0.7),
    ],
    ids=["sigmoid", "ipo", "cdpo", "rpo"],
)
def test_dpo_matches_trl(loss, pair_data, tiny_model_dir, tiny_tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    policy, ref, impl = _policy_and_reference(tiny_model_dir)
    ours, metrics = _ours_dpo(policy, ref, impl, pair_data, **loss)

    examples = _trl_examples(pair_data)
    # TRL 1.16's "sigmoid" has no label smoothing; its "aot" loss is conservative DPO on the
    # batch-sorted log-ratios, which for a one-pair batch is exactly cDPO: compare pair by pair.
    # RPO is TRL's ["sigmoid", "sft"] weighted [1, alpha]; its "sft" term averages over the batch's
    # chosen tokens, ours per pair (the RPO paper's): the same for one-pair batches.
    cdpo = bool(loss.get("label_smoothing"))
    rpo = loss.get("rpo_alpha")
    loss_types = ["aot" if cdpo else loss.get("loss_type", "sigmoid")] + (["sft"] if rpo else [])
    trl_policy, trl_ref, _ = _policy_and_reference(tiny_model_dir)
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=loss["beta"],
        loss_type=loss_types,
        loss_weights=[1.0, rpo] if rpo else None,
        label_smoothing=loss.get("label_smoothing", 0.0),
        report_to="none",
        per_device_train_batch_size=len(examples),
        bf16=False,
        use_cpu=True,
    )
    trainer = DPOTrainer(
        model=trl_policy, ref_model=trl_ref, args=args, train_dataset=_text_dataset(), processing_class=tiny_tokenizer
    )
    trainer.model.train()
    batches = [[e] for e in examples] if cdpo or rpo else [examples]
    losses = [float(trainer._compute_loss(trainer.model, trainer.data_collator(b), False)) * len(b) for b in batches]
    trl_metrics = {
        k: np.average(v, weights=[len(b) for b in batches])
        for k, v in trainer._metrics["train"].items()
        if k.startswith(("rewards/", "logps/"))
    }

    assert abs(ours - sum(losses) / len(examples)) < TOL
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert abs(metrics[key] - trl_metrics[key]) < TOL, key
    assert abs(metrics["rewards/margins"]) > 1e-3  # the policy really differs from the reference
    if rpo:  # the NLL term is really in the loss: it moves the loss by alpha times the logged NLL
        plain, _ = _ours_dpo(policy, ref, impl, pair_data, beta=loss["beta"])
        assert metrics["nll_loss"] > 0.1 and abs(ours - plain - rpo * metrics["nll_loss"]) < TOL


def test_reward_model_loss_matches_trl(pair_data, tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    kwargs = dict(num_labels=1, pad_token_id=tiny_tokenizer.pad_token_id)
    model, _, impl = _policy_and_reference(tiny_model_dir, AutoModelForSequenceClassification, **kwargs)
    pairs = np.arange(len(pair_data) // 2)
    module = PreferenceLM(model, impl, "rm")
    ours = float(module(pack_pairs(pair_data, pairs))) / len(pairs)
    rewards = module(pack_pairs(pair_data, pairs, output="rewards")).detach().double()

    trl_model, _, _ = _policy_and_reference(tiny_model_dir, AutoModelForSequenceClassification, **kwargs)
    args = RewardConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=len(pairs),
    )
    trainer = RewardTrainer(
        model=trl_model,
        args=args,
        train_dataset=_text_dataset().remove_columns("prompt"),
        processing_class=tiny_tokenizer,
    )
    examples = [
        {"chosen_ids": pair_data.row(2 * i)[0].tolist(), "rejected_ids": pair_data.row(2 * i + 1)[0].tolist()}
        for i in pairs
    ]
    inputs = trainer.data_collator(examples)
    trainer.model.train()
    theirs = float(trainer.compute_loss(trainer.model, dict(inputs)))
    with torch.no_grad():
        trl_rewards = trainer.model(**{k: v for k, v in inputs.items() if k != "margin"}).logits.squeeze(-1).double()
    assert abs(ours - theirs) < TOL
    assert torch.allclose(rewards[0::2], trl_rewards[: len(pairs)], atol=TOL)
    assert torch.allclose(rewards[1::2], trl_rewards[len(pairs) :], atol=TOL)


def test_packed_dpo_equals_unpacked(pair_data, tiny_model_dir):
    """All pairs in one packed row give the same loss and gradients as each pair alone."""
    policy, ref, impl = _policy_and_reference(tiny_model_dir)
    pairs = np.arange(len(pair_data) // 2)
    with torch.no_grad():
        refs = PreferenceLM(ref, impl, "dpo")(pack_pairs(pair_data, pairs, output="logps")).view(-1, 2).numpy()
    module = PreferenceLM(policy, impl, "dpo", beta=0.3)
    packed = module(pack_pairs(pair_data, pairs, ref_logps=refs))
    packed.backward()
    packed_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    alone = sum(module(pack_pairs(pair_data, [i], ref_logps=refs)) for i in pairs)
    alone.backward()
    assert abs(float(packed) - float(alone)) < TOL
    for a, b in zip(packed_grads, (p.grad for p in policy.parameters())):
        assert torch.allclose(a, b, atol=TOL)
    # and the packed per-sequence log-probs equal a plain padded forward's
    logps = PreferenceLM(policy, impl, "dpo")(pack_pairs(pair_data, pairs, output="logps"))
    for row in range(len(pair_data)):
        ids, w = pair_data.row(row)
        with torch.no_grad():
            logits = policy(input_ids=torch.from_numpy(ids).view(1, -1)).logits[0, :-1].float()
        token = torch.log_softmax(logits, -1).gather(1, torch.from_numpy(ids[1:]).view(-1, 1)).squeeze(1)
        assert abs(float((token * torch.from_numpy(w[1:]).double()).sum()) - float(logps[row])) < TOL
