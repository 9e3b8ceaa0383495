"""Which attention kernel keeps packed sequences apart, and what it needs per batch.

- GPU with `flash_attn` installed: flash-attention 2 varlen, given the cumulative sequence
  lengths directly (no per-layer recomputation from position ids).
- Otherwise `sdpa`: transformers derives a block-diagonal causal mask from the position-id
  resets, but only when no attention mask and no KV cache are passed (`use_cache=False`);
  with a cache the sequences would silently attend to each other.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

FLASH = "flash_attention_2"
SDPA = "sdpa"


def choose(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return FLASH
    return SDPA


def forward_kwargs(batch: Any, implementation: str) -> dict[str, Any]:
    """Keyword arguments for the model's forward on a packed batch."""
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "position_ids": batch.position_ids,
                              "use_cache": False}
    if implementation == FLASH:
        kwargs.update(cu_seq_lens_q=batch.cu_seqlens, cu_seq_lens_k=batch.cu_seqlens,
                      max_length_q=batch.max_seqlen, max_length_k=batch.max_seqlen)
    return kwargs
