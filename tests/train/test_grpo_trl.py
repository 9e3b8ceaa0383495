"""GRPO's advantages and loss agree with TRL's GRPOTrainer on the same tiny batch (to 1e-5).

TRL (test-only dependency) scores the batch through its own `_generate_and_score_completions`
(completions handed in by a `rollout_func`, rewards by two reward functions, one of which
cannot score one completion) and `_compute_loss`; we compute ours with the packed forward the
training loop uses. Old and reference log-probs are set away from the current ones so that
clipping and the KL term both act.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

K = 3  # completions per prompt
PROMPT_LEN = 6  # every prompt this long: TRL would left-pad shorter ones (positions shift)
COMPLETION_LENGTHS = [5, 2, 7, 4, 4, 1]
# reward function 1 per completion (group 2 all equal: zero spread), function 2 (None: cannot score)
REWARDS_1 = [1.0, 0.0, 0.5, 0.25, 0.25, 0.25]
REWARDS_2 = [0.2, None, 0.9, 0.0, 0.0, 0.0]
WEIGHTS = [1.0, 0.5]


def _batch(tokenizer):
    gen = torch.Generator().manual_seed(0)
    specials = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in specials]

    def draw(n: int) -> list[int]:
        return [pool[int(j)] for j in torch.randint(len(pool), (n,), generator=gen)]

    prompts = [draw(PROMPT_LEN) for _ in range(2)]
    prompt_ids = [prompts[i // K] for i in range(2 * K)]
    completion_ids = [draw(n) for n in COMPLETION_LENGTHS]
    return prompt_ids, completion_ids


def _trl_trainer(model, tokenizer, prompt_ids, completion_ids, tmp_path, loss_type):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    by_completion = {tuple(c): i for i, c in enumerate(completion_ids)}

    def reward_1(prompts, completions, completion_ids, **kwargs):
        return [REWARDS_1[by_completion[tuple(c)]] for c in completion_ids]

    def reward_2(prompts, completions, completion_ids, **kwargs):
        return [REWARDS_2[by_completion[tuple(c)]] for c in completion_ids]

    def rollout(prompts, trainer):
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": [[0.0] * len(c) for c in completion_ids],
        }

    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=2 * K,
        num_generations=K,
        beta=0.04,
        epsilon=0.2,
        loss_type=loss_type,
        temperature=0.7,
        max_completion_length=8,
        reward_weights=WEIGHTS,
        use_cpu=True,
        report_to="none",
        bf16=False,
        logging_steps=1,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_1, reward_2],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "p"}] * (2 * K)),
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_advantages_and_loss_match_trl(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch, loss_type):
    from transformers import AutoModelForCausalLM

    from openchat_cli.train import attention
    from openchat_cli.train.grpo import PolicyLogps, pack_completions
    from openchat_cli.train.grpo_math import combine_rewards, group_advantages, policy_loss

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    tokenizer = tiny_tokenizer
    prompt_ids, completion_ids = _batch(tokenizer)
    trl_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trainer = _trl_trainer(trl_model, tokenizer, prompt_ids, completion_ids, tmp_path, loss_type)
    inputs = trainer._generate_and_score_completions([{"prompt": "p"}] * (2 * K))

    # advantages
    per_function = torch.tensor(
        [[a, float("nan") if b is None else b] for a, b in zip(REWARDS_1, REWARDS_2)], dtype=torch.float64
    )
    stats = group_advantages(combine_rewards(per_function, torch.tensor(WEIGHTS, dtype=torch.float64)), K)
    assert torch.allclose(stats.advantages.float(), inputs["advantages"].float(), atol=1e-5)
    assert stats.zero_std.tolist() == [False, True]
    assert abs(stats.advantages[5]) < 1e-9  # a group with one reward for all: nothing to learn

    # the same old/reference log-probs for both, away from the current ones (clipping and KL act)
    mask = inputs["completion_mask"].bool()
    gen = torch.Generator().manual_seed(1)
    old = torch.randn(mask.shape, generator=gen) * 0.3
    ref = torch.randn(mask.shape, generator=gen) * 0.3
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            mask.shape[1],
        )
    inputs["old_per_token_logps"] = current + old
    inputs["ref_per_token_logps"] = current + ref
    trl_model.zero_grad()
    trl_loss = trainer._compute_loss(trl_model, inputs)
    trl_loss.backward()
    trl_grad = trl_model.model.embed_tokens.weight.grad.clone()

    ours_model = AutoModelForCausalLM.from_pretrained(
        str(tiny_model_dir), dtype=torch.float32, attn_implementation=attention.choose(torch.device("cpu"))
    )
    policy = PolicyLogps(ours_model, attention.PACKED, temperature=0.7)
    batch, seq_index = pack_completions(prompt_ids, completion_ids, tokenizer.pad_token_id or 0)
    logps = policy(batch)
    assert torch.allclose(logps.detach(), current[mask], atol=1e-5)  # packed forward = TRL's padded one
    parts = policy_loss(
        logps,
        (current + old)[mask],
        (current + ref)[mask],
        stats.advantages.float(),
        seq_index,
        2 * K,
        beta=0.04,
        epsilon=0.2,
        loss_type=loss_type,
    )
    assert parts.clip_fraction > 0 and parts.kl > 0
    assert abs(float(parts.loss) - float(trl_loss)) < 1e-5, (float(parts.loss), float(trl_loss))
    parts.loss.backward()
    assert torch.allclose(ours_model.model.embed_tokens.weight.grad, trl_grad, atol=1e-5)
