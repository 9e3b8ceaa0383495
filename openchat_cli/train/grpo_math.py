"""GRPO's numbers: group-relative advantages and the clipped, KL-regularised policy loss.

Kept apart from the loop so they can be checked against TRL's `GRPOTrainer` on one batch
(tests/train/test_grpo_trl.py). Completions are packed end to end (no padding): per-token
tensors are flat, and `seq_index[j]` says which completion token j belongs to.

- Advantages (TRL's "sum_then_normalize", scale_rewards="group"): A_i = (r_i - mean_g) / (std_g +
  1e-4) within each group of `group_size` completions of one prompt, std with Bessel's
  correction. A reward of NaN (no reward function could score it) is left out of its group's
  mean and std, and gets advantage 0.
- Loss per token: -min(ρ A, clip(ρ, 1-ε, 1+ε) A) + β ρ KL, ρ = exp(logp - logp_old), KL the k3
  estimator exp(ref - logp) - (ref - logp) - 1 (times ρ: TRL's `use_bias_correction_kl`). `grpo`
  averages over each completion's tokens, then over completions; `dapo` averages over all
  completion tokens of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4  # TRL's: advantages = (r - mean) / (std + 1e-4)


@dataclass
class GroupStats:
    advantages: torch.Tensor  # [N]
    group_std: torch.Tensor  # [N / group_size]
    zero_std: torch.Tensor  # [N / group_size] bool: every completion of the group got the same reward


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sample std (Bessel) ignoring NaNs; NaN where fewer than two values."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return var.sqrt().squeeze(dim)


def group_advantages(rewards: torch.Tensor, group_size: int) -> GroupStats:
    """Advantages of `rewards` laid out group after group (group_size completions per prompt)."""
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1)
    std = _nanstd(grouped, dim=1)
    advantages = (grouped - mean[:, None]) / (std[:, None] + STD_EPS)
    zero_std = torch.isclose(std, torch.zeros_like(std))
    return GroupStats(torch.nan_to_num(advantages.reshape(-1), nan=0.0), std, zero_std)


def combine_rewards(per_function: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, F] rewards (NaN: that function could not score it) -> [N] weighted sums; NaN where
    no function scored the completion."""
    total = (per_function * weights[None, :]).nansum(dim=1)
    return torch.where(torch.isnan(per_function).all(dim=1), torch.full_like(total, float("nan")), total)


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar, what backward runs on
    kl: float  # mean per-token KL to the reference (0 without a reference)
    clip_fraction: float  # tokens whose ratio was clipped where it mattered


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    seq_index: torch.Tensor,
    num_seqs: int,
    *,
    beta: float,
    epsilon: float,
    loss_type: str = "grpo",
    token_normalizer: float | None = None,
) -> LossParts:
    """GRPO loss over flat completion tokens. `old_logps` None: the batch was sampled from the
    current weights (ratio 1, its gradient still flows). `token_normalizer` (dapo): the token
    count to divide by, when it spans more than this call's tokens (several ranks)."""
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages[seq_index]
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl_value = 0.0
    if beta != 0.0 and ref_logps is not None:
        delta = ref_logps - logps
        per_token_kl = torch.exp(delta) - delta - 1
        kl_value = float(per_token_kl.detach().mean()) if len(per_token_kl) else 0.0
        # Weighted by the ratio (with its gradient): the unbiased reverse-KL gradient when the
        # batch was sampled from older weights (DeepSeek-V3.2; TRL's default since 1.x).
        per_token = per_token + beta * per_token_kl * ratio
    elif ref_logps is not None:  # beta 0: still report how far the policy moved
        delta = (ref_logps - logps).detach()
        kl_value = float((torch.exp(delta) - delta - 1).mean()) if len(delta) else 0.0
    if loss_type == "grpo":
        sums = torch.zeros(num_seqs, dtype=per_token.dtype, device=per_token.device).index_add(0, seq_index, per_token)
        counts = torch.zeros(num_seqs, dtype=per_token.dtype, device=per_token.device).index_add(
            0, seq_index, torch.ones_like(per_token)
        )
        loss = (sums / counts.clamp(min=1.0)).mean()
    elif loss_type == "dapo":
        loss = per_token.sum() / max(1.0, token_normalizer if token_normalizer is not None else float(len(per_token)))
    else:
        raise ValueError(f"unknown GRPO loss type {loss_type!r}")
    with torch.no_grad():
        was_clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
        clip_fraction = float(was_clipped.float().mean()) if len(ratio) else 0.0
    return LossParts(loss, kl_value, clip_fraction)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(label) under softmax(logits / temperature), in fp32 (TRL scores with the sampling
    temperature too)."""
    scores = torch.log_softmax(logits.float() / temperature, dim=-1)
    return scores.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
