"""Learning rate: OpenChat's automatic rule, linear warmup, cosine decay to a floor."""

from __future__ import annotations

import math

# OpenChat's rule (Llama-style hyperparameters): 3e-4 at a 4M-token batch, scaled by the square
# root of the supervised tokens per optimizer step.
BASE_LR = 3e-4
BASE_BATCH_TOKENS = 4_000_000


def auto_lr(tokens_per_step: int, world: int, supervised_ratio: float) -> float:
    """lr = 3e-4 * sqrt(supervised tokens per step / 4M), as OpenChat computes it."""
    supervised = tokens_per_step * world * supervised_ratio
    return BASE_LR * math.sqrt(max(supervised, 1.0) / BASE_BATCH_TOKENS)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(total: int, ratio: float) -> int:
    return int(round(total * ratio))


def make_scheduler(optimizer, total: int, warmup_ratio: float, min_ratio: float):
    """A LambdaLR (its state goes into DeepSpeed checkpoints, so a resume continues the curve)."""
    from torch.optim.lr_scheduler import LambdaLR

    warmup = warmup_steps(total, warmup_ratio)
    return LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, min_ratio))
