"""How long a sequence a model takes, and how to make it take longer (RoPE scaling).

OpenChat-8192 raised a Llama's context from 2,048 to 8,192 by extrapolation: the same rotary
frequencies, positions simply allowed to run further (`none` here). The alternatives rescale
the rotary embedding through transformers' `rope_parameters`:
- `linear`: position interpolation; every position is divided by the factor, short texts too.
- `dynamic`: NTK-aware scaling that only changes the frequencies once a sequence grows past the
  original length. transformers (and vLLM) read the *original* length from
  `max_position_embeddings` for this type, so that field keeps the old value and the longer
  context is recorded in openchat.json's `context_length`.
- `yarn`: YaRN; `original_max_position_embeddings` goes into the rope parameters.

Every stage asks `context_length(model_dir)`, so a dynamic-scaled model is served and its data
tokenized to the new length even though its config still names the old one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

ROPE_SCALINGS = ("none", "linear", "dynamic", "yarn")
CONTEXT_KEY = "context_length"  # openchat.json: the context the model was extended to


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of config.json that holds the decoder's settings (multimodal configs nest it)."""
    return config.get("text_config") or config


def config_positions(config: dict[str, Any]) -> int | None:
    value = _text_config(config).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def context_length(model_dir: Path | str) -> int | None:
    """The longest sequence the model is meant to take: openchat.json's `context_length` when
    extend-context set it, else config.json's `max_position_embeddings` (None when neither)."""
    model_dir = Path(model_dir)
    try:
        meta = json.loads((model_dir / "openchat.json").read_text())
    except (OSError, ValueError):
        meta = {}
    value = meta.get(CONTEXT_KEY) if isinstance(meta, dict) else None
    if isinstance(value, int) and value > 0:
        return value
    try:
        return config_positions(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError):
        return None


def extended_config(config: dict[str, Any], max_len: int, scaling: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json rewritten for a `max_len` context with the given RoPE scaling.

    Returns (new config, facts for openchat.json). The input is not modified."""
    if scaling not in ROPE_SCALINGS:
        raise OpenchatError(f"unknown --rope-scaling '{scaling}': choose one of {', '.join(ROPE_SCALINGS)}")
    new = copy.deepcopy(config)
    text = _text_config(new)
    old = config_positions(config)
    if old is None:
        raise OpenchatError("config.json has no max_position_embeddings: not a RoPE decoder this command knows")
    params = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    current_type = params.get("rope_type", params.get("type", "default"))
    if current_type not in ("default", None):
        raise OpenchatError(f"the model already uses '{current_type}' RoPE scaling; extend from its base model")
    if max_len <= old:
        raise OpenchatError(f"--max-len {max_len} is not longer than the model's context ({old})")
    theta = params.get("rope_theta", text.get("rope_theta", 10000.0))
    factor = max_len / old
    if scaling == "none":
        params = {"rope_type": "default", "rope_theta": theta}
        text["max_position_embeddings"] = max_len
    elif scaling == "linear":
        params = {"rope_type": "linear", "rope_theta": theta, "factor": factor}
        text["max_position_embeddings"] = max_len
    elif scaling == "dynamic":
        params = {"rope_type": "dynamic", "rope_theta": theta, "factor": factor}  # positions stay the old length
    else:
        params = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": old}
        text["max_position_embeddings"] = max_len
    text.pop("rope_scaling", None)
    text.pop("rope_theta", None)
    text["rope_parameters"] = params
    facts = {
        CONTEXT_KEY: max_len,
        "original_context_length": old,
        "rope_scaling": scaling,
        "rope_factor": round(factor, 6),
    }
    return new, facts
