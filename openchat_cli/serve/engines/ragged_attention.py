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
