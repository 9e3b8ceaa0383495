"""LoRA adapters (peft): wrapping a model for training, and folding an adapter back in."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

ADAPTER_CONFIG = "adapter_config.json"


def apply_lora(model: Any, *, r: int, alpha: int, dropout: float, targets: str = "all-linear",
               task_type: str = "CAUSAL_LM") -> Any:
    """Wrap a model so only low-rank adapters on its linear layers train (SEQ_CLS: a reward
    model, whose scalar head then trains in full and is saved with the adapter)."""
    from peft import LoraConfig, get_peft_model

    modules: str | list[str] = targets if targets == "all-linear" else [
        t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                        task_type=task_type, bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise OpenchatError(f"--lora-targets {targets}: {exc}") from None


def adapter_base(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        raise OpenchatError(f"{adapter_dir} is not a LoRA adapter (no {ADAPTER_CONFIG})")
    try:
        return json.loads(path.read_text()).get("base_model_name_or_path")
    except ValueError as exc:
        raise OpenchatError(f"{path}: not valid JSON ({exc})") from None


def merge_adapter(adapter_dir: Path, base_dir: Path, tmp_out: Path) -> Any:
    """Load base + adapter, fold the low-rank update into the weights, save a plain model dir.

    Returns the tokenizer saved with it (the adapter's, which carries the chat_template)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openchat_cli.checkpoint import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        except (OSError, ValueError, RuntimeError) as exc:
            raise OpenchatError(f"cannot apply adapter {adapter_dir} to {base_dir}: {exc}") from None
        merged = model.merge_and_unload()
    merged.save_pretrained(tmp_out, safe_serialization=True)
    has_tokenizer = any((Path(adapter_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(adapter_dir if has_tokenizer else base_dir)
    tokenizer.save_pretrained(tmp_out)
    return tokenizer
