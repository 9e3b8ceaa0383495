"""Wrapping a model for LoRA training (peft); folding an adapter back in is `model merge-lora`'s."""

from __future__ import annotations

from typing import Any

from openchat_cli.errors import OpenchatError


def apply_lora(
    model: Any, *, r: int, alpha: int, dropout: float, targets: str = "all-linear", task_type: str = "CAUSAL_LM"
) -> Any:
    """Wrap a model so only low-rank adapters on its linear layers train (SEQ_CLS: a reward
    model, whose scalar head then trains in full and is saved with the adapter)."""
    from peft import LoraConfig, get_peft_model

    modules: str | list[str] = (
        targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, task_type=task_type, bias="none"
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise OpenchatError(f"--lora-targets {targets}: {exc}") from None
