"""Decode attention over ragged KV caches: one query token per sequence, each sequence against its
own exact-length keys and values (no padding, no mask).

Why one function: the engine's decode step calls only this (through `engine_attention.py`), so a
faster kernel can replace the body without the engine changing. This is the pure-torch version:
one unmasked `sdpa` per sequence over that sequence's own K/V views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decode_attention(
    query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float
) -> torch.Tensor:
    """query [B, Hq, D] (contiguous); keys[i]/values[i] [Hkv, L_i, D] with stride(-1) == 1 and
    stride(-2) == D (views of buffers with room: the head stride may be larger) -> [B, Hq, D].
    Query head h reads kv head h // (Hq // Hkv), as transformers' `repeat_kv` does."""
    batch, heads, dim = query.shape
    out = torch.empty_like(query)
    # 4-D operands (CPU sdpa takes its fused kernel for them, the math path for 3-D), the query
    # heads grouped by their kv head: [1, Hkv, Hq // Hkv, D] against [1, Hkv, L_i, D].
    for i in range(batch):
        k, v = keys[i], values[i]
        q = query[i].view(1, k.shape[0], heads // k.shape[0], dim)
        out[i] = F.scaled_dot_product_attention(q, k[None], v[None], scale=scale).view(heads, dim)
    return out


def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_starts: list[int],
    seq_lengths: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal attention within each segment of one packed row of prompts: query [Hq, N, D],
    key/value [Hkv, N, D] (any strides); segment i is positions seq_starts[i] ..
    seq_starts[i] + seq_lengths[i] - 1 and attends only to its own earlier tokens. Returns
    [N, Hq, D] contiguous (zero outside every segment). Pure torch: `sdpa(is_causal=True)` per
    segment (the fused kernel, no mask)."""
    heads, total, dim = query.shape
    out = query.new_zeros(total, heads, dim)
    gqa = heads != key.shape[0]
    for start, length in zip(seq_starts, seq_lengths):
        if length <= 0:
            continue
        end = start + length
        part = F.scaled_dot_product_attention(
            query[None, :, start:end],
            key[None, :, start:end],
            value[None, :, start:end],
            scale=scale,
            is_causal=True,
            enable_gqa=gqa,
        )  # [1, Hq, L, D]
        out[start:end] = part[0].transpose(0, 1)
    return out
