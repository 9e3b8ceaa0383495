"""The engine's attention function: ragged decode and per-segment packed prefill, no dense masks.

Why: with one left-padded [B, Hkv, T_max, D] decode cache and a 2-D mask, most of a 32-row
batch's attention columns were padding (about 28% real with ShareGPT-like prompts), and the packed
prefill built a pack x pack block-diagonal mask (N^2 work, not the sum of L_i^2). Here:

- decode: the `RaggedCache` (kv_cache.py) hands each row's own exact-length K/V views over, and
  `ragged_attention.decode_attention` attends each row over them;
- packed prefill: `ragged_attention.prefill_attention`, causal attention per prompt on its slice
  of the pack (no mask); the cache has already copied each prompt's K/V into its sequence's
  buffers.

`RAGGED` is registered in transformers' `AttentionInterface` and, with transformers' own sdpa
mask function, in `AttentionMaskInterface`. A forward signals "ragged" by passing the
`RaggedCache` as the `ragged` keyword (transformers carries unknown keywords down to the
attention function); any other forward (prompt scoring, warm-up) is handed to transformers'
`sdpa` unchanged, so a model switched to `RAGGED` stays correct everywhere.
"""

from __future__ import annotations

from typing import Any

import torch

from openchat_cli.serve.engines.kv_cache import RaggedCache
from openchat_cli.serve.engines.ragged_attention import decode_attention, prefill_attention

RAGGED = "openchat_ragged"


def register() -> None:
    """Make `RAGGED` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if RAGGED not in AttentionInterface._global_mapping:
        AttentionInterface.register(RAGGED, ragged_attention)
        AttentionMaskInterface.register(RAGGED, sdpa_mask)


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: Any,
    value: Any,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    ragged: RaggedCache | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, Hq, Q, D] -> ([B, Q, Hq, D], None), as transformers' attention functions return.
    Ragged decode: key/value are the rows' lists of [Hkv, L_i, D] views. Ragged prefill: key/value
    are the packed [1, Hkv, N, D] tensors."""
    if ragged is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if ragged.decoding:
        batch, heads, _, dim = query.shape
        out = decode_attention(query.reshape(batch, heads, dim), key, value, scaling)
        return out.view(batch, 1, heads, dim), None
    return segment_attention(query, key, value, ragged.segments, scaling), None


def segment_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: list[tuple[int, int]], scale: float
) -> torch.Tensor:
    """Causal attention within each (start, length) segment of one packed row: query [1, Hq, N, D],
    key/value [1, Hkv, N, D] -> [1, N, Hq, D]."""
    starts, lengths = [s for s, _ in segments], [n for _, n in segments]
    return prefill_attention(query[0], key[0], value[0], starts, lengths, scale)[None]


def enable(model: Any) -> bool:
    """Switch a loaded model from `sdpa` to `RAGGED` (models on other attention implementations keep
    theirs, and the engine keeps its padded path for them). Returns whether it switched."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    try:
        model.set_attn_implementation(RAGGED)
    except (ValueError, KeyError, AttributeError):
        return False
    return True


def disable(model: Any) -> None:
    """Back to transformers' `sdpa` (a model the ragged path turned out not to fit)."""
    model.set_attn_implementation("sdpa")
