"""LoRA adapters (peft): folding a trained adapter back into its base model (training wraps in train/lora.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

ADAPTER_CONFIG = "adapter_config.json"


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

    from openchat_cli.model_dir import load_tokenizer

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
